// Fused softmax attention on CUDA: softmax(q k^T * scale) v without the scores ever reaching global
// memory (the FlashAttention-2 forward in its simplest form). One block takes 64 queries of one head
// (4 warps of 16 rows); the keys and values stream through shared memory 64 at a time; each warp
// computes its 16x64 scores with tensor cores (WMMA, bf16/f16 in, f32 accumulated), keeps a running
// row max and sum (online softmax, in log2 units), and accumulates the output in f32 fragments that
// are rescaled when a row's max grows.
//
// Layouts (contiguous): q and out [B, H, Tq, D]; k and v [B, KVH, Tk, D]; query head h reads key/value
// head h / (H / KVH) (grouped-query attention). Causal: query i sits at position q_offset + i and sees
// keys 0..=q_offset + i. Rows with no visible key are written as zeros.
//
// The kernel relies on nothing about WMMA's fragment layouts (they are unspecified): which row each
// accumulator element belongs to is found once by loading a fragment from a matrix of row numbers.
// tests/cuda_attention_emulated.rs runs this file on the CPU under a warp emulator
// (tests/cuda_emulator/) against a double-precision reference.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>

using namespace nvcuda;

namespace spatial_attention {

constexpr int WARPS = 4;
constexpr int ROWS = 16;                   // queries per warp: one WMMA tile's height
constexpr int BLOCK_QUERIES = WARPS * ROWS;
constexpr int KEY_TILE = 64;               // keys per step: four WMMA tiles wide
constexpr int KV_PAD = 8;                  // halves of padding per K/V row against bank conflicts
constexpr int SCORE_STRIDE = KEY_TILE + 4; // floats per score row (a multiple of 4, as WMMA needs)
constexpr int PROB_STRIDE = KEY_TILE + 8;  // halves per probability row (a multiple of 8)
constexpr int COLS_PER_LANE = KEY_TILE / 2; // two lanes per score row
constexpr unsigned FULL_MASK = 0xffffffffu;

// Bytes of dynamic shared memory a block of head size D takes (the host asks for the same).
__host__ __device__ constexpr int shared_bytes(int d) {
    return 2 * KEY_TILE * (d + KV_PAD) * 2 + WARPS * ROWS * SCORE_STRIDE * 4;
}

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }

// Copies `rows` rows of d halves starting at `src` (row stride d) into `dst` (row stride
// d + KV_PAD), zero-filling rows past `valid`. 16-byte vectors when the source is aligned to them
// (d is a multiple of 8, so every row then is), else one half at a time.
template <typename T>
__device__ __forceinline__ void load_rows(T* dst, const T* src, int rows, int valid, int d, int thread, int threads) {
    const int stride = d + KV_PAD;
    if ((reinterpret_cast<uintptr_t>(src) & 15) == 0) {
        const int vectors_per_row = d / 8;
        for (int i = thread; i < rows * vectors_per_row; i += threads) {
            const int r = i / vectors_per_row, c = (i % vectors_per_row) * 8;
            uint4 value = make_uint4(0, 0, 0, 0);
            if (r < valid) value = *reinterpret_cast<const uint4*>(src + (size_t)r * d + c);
            *reinterpret_cast<uint4*>(dst + r * stride + c) = value;
        }
    } else {
        const T zero = from_float<T>(0.0f);
        for (int i = thread; i < rows * d; i += threads) {
            const int r = i / d, c = i % d;
            dst[r * stride + c] = r < valid ? src[(size_t)r * d + c] : zero;
        }
    }
}

template <typename T, int D>
__device__ void attention(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                          int heads, int kv_heads, int t_q, int t_k, float scale_log2, int causal, int q_offset) {
    static_assert(D % 16 == 0 && D <= 128, "head size: a multiple of 16, at most 128");
    constexpr int D_TILES = D / 16;
    constexpr int KV_STRIDE = D + KV_PAD;
    using AFrag = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
    using KFrag = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
    using VFrag = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
    using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

    extern __shared__ __align__(128) unsigned char shared_raw[];
    T* keys = reinterpret_cast<T*>(shared_raw);
    T* values = keys + KEY_TILE * KV_STRIDE;
    float* warp_scores_all = reinterpret_cast<float*>(values + KEY_TILE * KV_STRIDE);

    const int thread = threadIdx.x, warp = thread / 32, lane = thread % 32;
    const int head = blockIdx.y, batch = blockIdx.z;
    const int kv_head = head / (heads / kv_heads);
    const int block_first = blockIdx.x * BLOCK_QUERIES;
    const int warp_first = block_first + warp * ROWS;
    const T* q_head = q + ((size_t)batch * heads + head) * t_q * D;
    const T* k_head = k + ((size_t)batch * kv_heads + kv_head) * t_k * D;
    const T* v_head = v + ((size_t)batch * kv_heads + kv_head) * t_k * D;
    T* out_head = out + ((size_t)batch * heads + head) * t_q * D;
    // The warp's 16 x SCORE_STRIDE floats: the row probe, the staged queries, the scores, the
    // probabilities (as T, in place) and the output on its way out, in turn.
    float* scores = warp_scores_all + warp * ROWS * SCORE_STRIDE;
    T* probs = reinterpret_cast<T*>(scores);

    // Which row each accumulator element holds: load a fragment from a matrix of row numbers.
    for (int i = lane; i < 16 * 16; i += 32) scores[(i / 16) * SCORE_STRIDE + i % 16] = (float)(i / 16);
    __syncwarp();
    Acc probe;
    wmma::load_matrix_sync(probe, scores, SCORE_STRIDE, wmma::mem_row_major);
    int row_of[Acc::num_elements];
    for (int i = 0; i < Acc::num_elements; ++i) row_of[i] = (int)probe.x[i];
    __syncwarp();

    // The warp's queries, staged through shared memory into A fragments kept for the whole loop
    // (16 x (D + KV_PAD) halves fit in the warp's score area for D <= 128).
    T* staged = reinterpret_cast<T*>(scores);
    const int warp_rows = max(0, min(ROWS, t_q - warp_first));
    load_rows(staged, q_head + (size_t)warp_first * D, ROWS, warp_rows, D, lane, 32);
    __syncwarp();
    AFrag query[D_TILES];
    for (int t = 0; t < D_TILES; ++t) wmma::load_matrix_sync(query[t], staged + t * 16, KV_STRIDE);
    __syncwarp();

    Acc output[D_TILES];
    for (int t = 0; t < D_TILES; ++t) wmma::fill_fragment(output[t], 0.0f);
    // Lanes 2r and 2r+1 hold row r's running max (log2 units) and sum; each takes half the columns.
    const int row = lane / 2, col0 = (lane % 2) * COLS_PER_LANE;
    const int query_index = warp_first + row;
    const int position = q_offset + query_index;
    float row_max = -INFINITY, row_sum = 0.0f;

    // Keys past the block's last query are masked for all its rows (causal): never loaded.
    int key_end = t_k;
    if (causal) key_end = min(t_k, q_offset + min(block_first + BLOCK_QUERIES, t_q));
    const int warp_last_position = q_offset + min(warp_first + ROWS, t_q) - 1;

    for (int tile = 0; tile < key_end; tile += KEY_TILE) {
        __syncthreads(); // every warp is done with the previous tile
        const int tile_keys = min(KEY_TILE, t_k - tile);
        load_rows(keys, k_head + (size_t)tile * D, KEY_TILE, tile_keys, D, thread, blockDim.x);
        load_rows(values, v_head + (size_t)tile * D, KEY_TILE, tile_keys, D, thread, blockDim.x);
        __syncthreads();
        if (warp_rows == 0 || (causal && tile > warp_last_position)) continue;

        // Scores: [16, D] x [D, 64], one 16x16 tile at a time, into shared memory.
        for (int n = 0; n < KEY_TILE / 16; ++n) {
            Acc s;
            wmma::fill_fragment(s, 0.0f);
            for (int t = 0; t < D_TILES; ++t) {
                KFrag key_fragment;
                wmma::load_matrix_sync(key_fragment, keys + n * 16 * KV_STRIDE + t * 16, KV_STRIDE);
                wmma::mma_sync(s, query[t], key_fragment, s);
            }
            wmma::store_matrix_sync(scores + n * 16, s, SCORE_STRIDE, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax over this tile's columns.
        float p[COLS_PER_LANE];
        float tile_max = -INFINITY;
        for (int c = 0; c < COLS_PER_LANE; ++c) {
            const int key = tile + col0 + c;
            const bool visible = key < t_k && (!causal || key <= position);
            p[c] = visible ? scores[row * SCORE_STRIDE + col0 + c] * scale_log2 : -INFINITY;
            tile_max = fmaxf(tile_max, p[c]);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(FULL_MASK, tile_max, 1));
        const float new_max = fmaxf(row_max, tile_max);
        // A row that has seen no visible key yet keeps max -inf: exponentiate against 0 instead.
        const float base = new_max == -INFINITY ? 0.0f : new_max;
        const float rescale = exp2f(row_max - base);
        float tile_sum = 0.0f;
        for (int c = 0; c < COLS_PER_LANE; ++c) {
            p[c] = exp2f(p[c] - base);
            tile_sum += p[c];
        }
        tile_sum += __shfl_xor_sync(FULL_MASK, tile_sum, 1);
        row_sum = row_sum * rescale + tile_sum;
        row_max = new_max;
        __syncwarp(); // every lane has read its scores before the probabilities overwrite them
        for (int c = 0; c < COLS_PER_LANE; ++c) probs[row * PROB_STRIDE + col0 + c] = from_float<T>(p[c]);
        __syncwarp();

        // Rescale the output rows whose max grew, then add probabilities x values.
        for (int i = 0; i < Acc::num_elements; ++i) {
            const float factor = __shfl_sync(FULL_MASK, rescale, row_of[i] * 2);
            for (int t = 0; t < D_TILES; ++t) output[t].x[i] *= factor;
        }
        AFrag prob_fragment[KEY_TILE / 16];
        for (int kk = 0; kk < KEY_TILE / 16; ++kk) wmma::load_matrix_sync(prob_fragment[kk], probs + kk * 16, PROB_STRIDE);
        for (int t = 0; t < D_TILES; ++t) {
            for (int kk = 0; kk < KEY_TILE / 16; ++kk) {
                VFrag value_fragment;
                wmma::load_matrix_sync(value_fragment, values + kk * 16 * KV_STRIDE + t * 16, KV_STRIDE);
                wmma::mma_sync(output[t], prob_fragment[kk], value_fragment, output[t]);
            }
        }
        __syncwarp(); // the probabilities are read before the next tile's scores overwrite them
    }

    if (warp_rows == 0) return;
    // Normalise and write: each 16x16 output tile goes through shared memory; column 32 of the
    // score area carries each row's 1 / sum.
    __syncwarp();
    if (lane % 2 == 0) scores[row * SCORE_STRIDE + 32] = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
    for (int t = 0; t < D_TILES; ++t) {
        wmma::store_matrix_sync(scores, output[t], SCORE_STRIDE, wmma::mem_row_major);
        __syncwarp();
        for (int i = lane; i < 16 * 16; i += 32) {
            const int r = i / 16, c = i % 16;
            if (r < warp_rows)
                out_head[(size_t)(warp_first + r) * D + t * 16 + c] =
                    from_float<T>(scores[r * SCORE_STRIDE + c] * scores[r * SCORE_STRIDE + 32]);
        }
        __syncwarp();
    }
}

} // namespace spatial_attention

// One entry point per element type and head size; the host picks by name.
#define SPATIAL_ATTENTION_KERNEL(NAME, T, D)                                                              \
    extern "C" __global__ void __launch_bounds__(spatial_attention::WARPS * 32)                          \
        NAME(const T* q, const T* k, const T* v, T* out, int heads, int kv_heads, int t_q, int t_k,       \
             float scale_log2, int causal, int q_offset) {                                                \
        spatial_attention::attention<T, D>(q, k, v, out, heads, kv_heads, t_q, t_k, scale_log2, causal,   \
                                           q_offset);                                                     \
    }

#define SPATIAL_ATTENTION_HEAD_SIZES(SUFFIX, T)                     \
    SPATIAL_ATTENTION_KERNEL(attention_##SUFFIX##_d16, T, 16)       \
    SPATIAL_ATTENTION_KERNEL(attention_##SUFFIX##_d32, T, 32)       \
    SPATIAL_ATTENTION_KERNEL(attention_##SUFFIX##_d64, T, 64)       \
    SPATIAL_ATTENTION_KERNEL(attention_##SUFFIX##_d80, T, 80)       \
    SPATIAL_ATTENTION_KERNEL(attention_##SUFFIX##_d96, T, 96)       \
    SPATIAL_ATTENTION_KERNEL(attention_##SUFFIX##_d128, T, 128)

SPATIAL_ATTENTION_HEAD_SIZES(f16, __half)
// bf16 tensor-core fragments need compute capability 8.0 (Ampere) or newer.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
SPATIAL_ATTENTION_HEAD_SIZES(bf16, __nv_bfloat16)
#endif
