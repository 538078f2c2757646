// Runs models/src/attention.cu under the CPU emulator on random inputs and compares it with a
// double-precision softmax attention on the same (rounded) inputs. Prints the largest absolute
// error and the largest reference magnitude; tests/cuda_attention_emulated.rs sets the tolerance.
//
//   harness DTYPE(bf16|f16) HEAD_SIZE BATCH HEADS KV_HEADS T_Q T_K CAUSAL Q_OFFSET SCALE MISALIGNED RAMP SEED
#include "emulator.h"

#include "../../src/attention.cu"

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

// The kernel's `extern __shared__` array (one block runs at a time): room for any head size.
namespace spatial_attention {
__attribute__((aligned(128))) unsigned char shared_raw[shared_bytes(128)];
}

template <typename T>
using Kernel = void (*)(const T*, const T*, const T*, T*, int, int, int, int, float, int, int);

template <typename T> T round_to(float x);
template <> __half round_to<__half>(float x) { return __float2half(x); }
template <> __nv_bfloat16 round_to<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

template <typename T>
int run(Kernel<T> kernel, int d, int batch, int heads, int kv_heads, int t_q, int t_k, bool causal, int q_offset,
        float scale, bool misaligned, bool ramp, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    // Misaligned: every tensor starts one element past a 16-byte boundary (the scalar load path).
    const int shift = misaligned ? 1 : 0;
    auto make = [&](size_t n, bool keys) {
        std::vector<T> storage(n + 8);
        for (size_t i = 0; i < n; ++i) {
            float value = uniform(rng);
            // Ramp: later keys grow, so later tiles raise each row's max far above the earlier ones.
            if (keys && ramp) value *= 1.0f + 6.0f * (float)((i / d) % t_k) / (float)t_k;
            storage[shift + i] = round_to<T>(value);
        }
        return storage;
    };
    const size_t q_len = (size_t)batch * heads * t_q * d, kv_len = (size_t)batch * kv_heads * t_k * d;
    std::vector<T> q = make(q_len, false), k = make(kv_len, true), v = make(kv_len, false);
    std::vector<T> out(q_len + 8, round_to<T>(12345.0f));
    const float scale_log2 = scale * 1.4426950408889634f;
    dim3 grid{(unsigned)((t_q + spatial_attention::BLOCK_QUERIES - 1) / spatial_attention::BLOCK_QUERIES), (unsigned)heads,
              (unsigned)batch};
    emulate_launch(grid, spatial_attention::WARPS * 32, [&] {
        kernel(q.data() + shift, k.data() + shift, v.data() + shift, out.data() + shift, heads, kv_heads, t_q, t_k, scale_log2,
               causal ? 1 : 0, q_offset);
    });

    double max_error = 0.0, max_reference = 0.0;
    const int group = heads / kv_heads;
    std::vector<double> scores(t_k);
    for (int b = 0; b < batch; ++b)
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < t_q; ++i) {
                const T* qi = q.data() + shift + (((size_t)b * heads + h) * t_q + i) * d;
                const size_t kv_base = ((size_t)b * kv_heads + h / group) * t_k;
                const int visible = causal ? std::min(t_k, q_offset + i + 1) : t_k;
                double row_max = -INFINITY;
                for (int j = 0; j < visible; ++j) {
                    const T* kj = k.data() + shift + (kv_base + j) * d;
                    double dot = 0.0;
                    for (int c = 0; c < d; ++c) dot += (double)emulated_to_float(qi[c]) * emulated_to_float(kj[c]);
                    scores[j] = dot * scale;
                    row_max = std::max(row_max, scores[j]);
                }
                double sum = 0.0;
                for (int j = 0; j < visible; ++j) sum += (scores[j] = std::exp(scores[j] - row_max));
                for (int c = 0; c < d; ++c) {
                    double expected = 0.0;
                    for (int j = 0; j < visible; ++j)
                        expected += scores[j] / sum * emulated_to_float(v[shift + (kv_base + j) * d + c]);
                    const double got = emulated_to_float(out[shift + (((size_t)b * heads + h) * t_q + i) * d + c]);
                    max_error = std::max(max_error, std::isfinite(got) ? std::fabs(got - expected) : INFINITY);
                    max_reference = std::max(max_reference, std::fabs(expected));
                }
            }
    // Nothing written past the output.
    for (int i = 0; i < 8 - shift; ++i)
        if (emulated_to_float(out[shift + q_len + i]) != emulated_to_float(round_to<T>(12345.0f))) {
            std::printf("wrote past the end of the output\n");
            return 1;
        }
    std::printf("max_abs_error %.9g max_reference %.9g\n", max_error, max_reference);
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 14) {
        std::fprintf(stderr, "usage: harness DTYPE HEAD_SIZE BATCH HEADS KV_HEADS T_Q T_K CAUSAL Q_OFFSET SCALE MISALIGNED RAMP SEED\n");
        return 2;
    }
    const std::string dtype = argv[1];
    const int d = std::atoi(argv[2]), batch = std::atoi(argv[3]), heads = std::atoi(argv[4]), kv_heads = std::atoi(argv[5]);
    const int t_q = std::atoi(argv[6]), t_k = std::atoi(argv[7]), causal = std::atoi(argv[8]), q_offset = std::atoi(argv[9]);
    const float scale = std::atof(argv[10]);
    const bool misaligned = std::atoi(argv[11]) != 0, ramp = std::atoi(argv[12]) != 0;
    const unsigned seed = (unsigned)std::atoi(argv[13]);
#define CASE(D)                                                                                                        \
    if (d == D && dtype == "bf16")                                                                                     \
        return run<__nv_bfloat16>(attention_bf16_d##D, d, batch, heads, kv_heads, t_q, t_k, causal, q_offset, scale,  \
                                  misaligned, ramp, seed);                                                             \
    if (d == D && dtype == "f16")                                                                                      \
        return run<__half>(attention_f16_d##D, d, batch, heads, kv_heads, t_q, t_k, causal, q_offset, scale, misaligned, \
                           ramp, seed);
    CASE(16) CASE(32) CASE(64) CASE(80) CASE(96) CASE(128)
    std::fprintf(stderr, "no kernel for %s with head size %d\n", dtype.c_str(), d);
    return 2;
}
