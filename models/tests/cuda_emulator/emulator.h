// A CPU emulator for the subset of CUDA that models/src/attention.cu uses, so the kernel's logic
// (tiling, masks, the online softmax, the warp's shared-memory reuse) is checked without a GPU:
// every thread of a block is an OS thread; __syncthreads, __syncwarp and the shuffles are barriers;
// WMMA fragments hold their elements in a deliberately scrambled order, so a kernel that assumed
// a fragment layout would fail here. One block runs at a time, so dynamic shared memory is one
// global array. Compile with -std=c++20 -pthread (std::barrier).
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(n)

using std::max;
using std::min;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx;
inline dim3 blockIdx, blockDim, gridDim;

struct uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// Half-precision types: the bits, with round-to-nearest-even conversions.
struct __half {
    uint16_t bits;
};
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __half2float(__half h) {
    _Float16 f;
    std::memcpy(&f, &h.bits, 2);
    return (float)f;
}
inline __half __float2half(float x) {
    _Float16 f = (_Float16)x;
    __half h;
    std::memcpy(&h.bits, &f, 2);
    return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if (std::isnan(x)) return {0x7fc0};
    u += 0x7fff + ((u >> 16) & 1);
    return {(uint16_t)(u >> 16)};
}
inline float emulated_to_float(__half x) { return __half2float(x); }
inline float emulated_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float emulated_to_float(float x) { return x; }

// The block being run: its barriers and each warp's exchange area.
struct EmulatedBlock {
    explicit EmulatedBlock(int threads) : block(threads) {
        for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Warp>());
    }
    struct Warp {
        std::barrier<> barrier{32};
        float lanes[32];
        float a[256], b[256], c[256];
    };
    std::barrier<> block;
    std::vector<std::unique_ptr<Warp>> warps;
};
inline EmulatedBlock* emulated_block = nullptr;
inline EmulatedBlock::Warp& this_warp() { return *emulated_block->warps[threadIdx.x / 32]; }
inline int this_lane() { return threadIdx.x % 32; }

inline void __syncthreads() { emulated_block->block.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { this_warp().barrier.arrive_and_wait(); }
inline float __shfl_sync(unsigned, float value, int source) {
    auto& w = this_warp();
    w.lanes[this_lane()] = value;
    w.barrier.arrive_and_wait();
    const float result = w.lanes[source & 31];
    w.barrier.arrive_and_wait();
    return result;
}
inline float __shfl_xor_sync(unsigned mask, float value, int lane_mask) {
    return __shfl_sync(mask, value, this_lane() ^ lane_mask);
}

// Runs kernel() for every block of `grid`, `threads` threads per block.
inline void emulate_launch(dim3 grid, int threads, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = {(unsigned)threads, 1, 1};
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                EmulatedBlock block(threads);
                emulated_block = &block;
                std::vector<std::thread> pool;
                for (int t = 0; t < threads; ++t)
                    pool.emplace_back([t, &kernel] {
                        threadIdx = {(unsigned)t, 0, 0};
                        kernel();
                    });
                for (auto& th : pool) th.join();
                emulated_block = nullptr;
            }
}

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// Which element of the 16x16 tile a lane's i-th element is: a permutation (37 is prime to 256)
// that matches no real GPU's layout.
inline int element_index(int lane, int i) { return ((lane * 8 + i) * 37) % 256; }

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator has 16x16x16 tiles only");
    static constexpr int num_elements = 8;
    T x[8];
};

template <typename Frag, typename T>
inline void fill_fragment(Frag& f, T value) {
    for (auto& e : f.x) e = value;
}

template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
    __syncwarp();
    constexpr bool column_major = std::is_same_v<Layout, col_major>;
    for (int i = 0; i < 8; ++i) {
        const int e = element_index(this_lane(), i), r = e / 16, c = e % 16;
        f.x[i] = column_major ? p[c * ldm + r] : p[r * ldm + c];
    }
    __syncwarp();
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t layout) {
    __syncwarp();
    for (int i = 0; i < 8; ++i) {
        const int e = element_index(this_lane(), i), r = e / 16, c = e % 16;
        f.x[i] = layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c];
    }
    __syncwarp();
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout) {
    __syncwarp();
    for (int i = 0; i < 8; ++i) {
        const int e = element_index(this_lane(), i), r = e / 16, c = e % 16;
        (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[i];
    }
    __syncwarp();
}

// d = a b + c over the whole warp: every lane posts its elements, then computes its own.
template <typename T, typename LayoutA, typename LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
    auto& w = this_warp();
    __syncwarp();
    for (int i = 0; i < 8; ++i) {
        const int e = element_index(this_lane(), i);
        w.a[e] = emulated_to_float(a.x[i]);
        w.b[e] = emulated_to_float(b.x[i]);
        w.c[e] = c.x[i];
    }
    __syncwarp();
    for (int i = 0; i < 8; ++i) {
        const int e = element_index(this_lane(), i), r = e / 16, col = e % 16;
        float sum = w.c[e];
        for (int k = 0; k < 16; ++k) sum += w.a[r * 16 + k] * w.b[k * 16 + col];
        d.x[i] = sum;
    }
    __syncwarp();
}
} // namespace nvcuda::wmma
