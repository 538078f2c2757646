//! The CPU's single-precision arithmetic peak, measured: every core running independent fused
//! multiply-adds at the widest vector width the kernels use. Benchmarks print it next to
//! OpenBLAS's sgemm peak, so a stage's GFLOP/s shows its distance to the hardware as well as to
//! the BLAS (OpenBLAS's Zen kernels reach 63-82% of it at 4096 on a Zen 3). And the memory's
//! read bandwidth, which bounds decoding (every token reads every weight once).

use crate::multiversion::{SimdLevel, simd_level};
use rayon::prelude::*;

/// Independent accumulators per core: more than the FMA latency (4 cycles) times the FMA units
/// (2), so the units never wait for a result, and few enough to stay in 16 vector registers.
pub const CHAINS: usize = 10;

/// Measured GFLOP/s of f32 fused multiply-adds on all of rayon's threads with the widest
/// instruction set [`simd_level`] allows, best of three runs of about 0.3 s (the first also wakes
/// the cores). `None` without AVX2+FMA (the generic build has no FMA to measure).
pub fn fma_peak_gflops() -> Option<f64> {
    (0..3).filter_map(|_| fma_gflops(100_000_000)).reduce(f64::max)
}

/// One measurement: `iterations` FMAs per accumulator and thread.
fn fma_gflops(iterations: usize) -> Option<f64> {
    let level = simd_level();
    if level == SimdLevel::Generic {
        return None;
    }
    let threads = rayon::current_num_threads().max(1);
    let start = std::time::Instant::now();
    let sums: Vec<f32> = (0..threads).into_par_iter().map(|_| fma_chains(level, iterations)).collect();
    let secs = start.elapsed().as_secs_f64();
    // Every chain stays near 1 (x * 0.999999 + 1e-6), so a wrong or skipped loop shows.
    if sums.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return None;
    }
    let lanes = if level == SimdLevel::Avx512 { 16 } else { 8 };
    Some((threads * iterations * CHAINS * lanes * 2) as f64 / secs / 1e9)
}

/// Measured GFLOP/s of `vdpbf16ps` (32 bf16 multiply-adds into 16 f32 sums) on all of rayon's
/// threads, best of three: the limit of [`crate::cpu_bf16`]'s products. `None` without
/// AVX512-BF16.
pub fn bf16_dot_peak_gflops() -> Option<f64> {
    if !crate::cpu_bf16::has_bf16_dot_product() {
        return None;
    }
    let iterations = 100_000_000;
    let threads = rayon::current_num_threads().max(1);
    (0..3)
        .filter_map(|_| {
            let start = std::time::Instant::now();
            // SAFETY: the CPU has AVX512-BF16 (checked above).
            #[cfg(target_arch = "x86_64")]
            let sums: Vec<f32> = (0..threads).into_par_iter().map(|_| unsafe { bf16_dot_chains(iterations) }).collect();
            #[cfg(not(target_arch = "x86_64"))]
            let sums: Vec<f32> = Vec::new();
            let secs = start.elapsed().as_secs_f64();
            // Each lane adds two products of 2^-16 per step until f32 stops absorbing them (at
            // 256 or 512, as the two are added one by one or together), so a loop that ran
            // leaves every sum there and a skipped one 0.
            let full = 256.0 * (CHAINS * 16) as f32;
            sums.iter().all(|s| s.is_finite() && *s >= full && *s <= 2.0 * full).then(|| (threads * iterations * CHAINS * 16 * 4) as f64 / secs / 1e9)
        })
        .reduce(f64::max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_dot_chains(iterations: usize) -> f32 {
    use std::arch::x86_64::*;
    // 2^-8 in bf16 (0x3b80) in every half.
    let v: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi16(std::hint::black_box(0x3b80))) };
    let mut acc = [_mm512_setzero_ps(); CHAINS];
    for _ in 0..iterations {
        for a in acc.iter_mut() {
            *a = _mm512_dpbf16_ps(*a, v, v);
        }
    }
    let total = acc.iter().fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a));
    _mm512_reduce_add_ps(total)
}

/// One thread's chains; returns their sum so the work is used.
fn fma_chains(level: SimdLevel, iterations: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `simd_level` only reports instruction sets this CPU has.
        unsafe {
            match level {
                SimdLevel::Avx512 => fma_chains_avx512(iterations),
                _ => fma_chains_avx2(iterations),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (level, iterations);
        0.0
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iterations: usize) -> f32 {
    use std::arch::x86_64::*;
    let (scale, add) = (_mm256_set1_ps(std::hint::black_box(0.999_999)), _mm256_set1_ps(std::hint::black_box(1e-6)));
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iterations {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, scale, add);
        }
    }
    let mut lanes = [0f32; 8];
    let total = acc.iter().fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a));
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn fma_chains_avx512(iterations: usize) -> f32 {
    use std::arch::x86_64::*;
    let (scale, add) = (_mm512_set1_ps(std::hint::black_box(0.999_999)), _mm512_set1_ps(std::hint::black_box(1e-6)));
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iterations {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, scale, add);
        }
    }
    _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a)))
}

/// Bytes the bandwidth measurement reads per pass: 16 times a 32 MiB L3, so the pass comes from
/// memory.
const BANDWIDTH_BYTES: usize = 512 << 20;

/// Measured memory read bandwidth in GB/s on all of rayon's threads: each sums its own contiguous
/// part of a 512 MiB buffer; best of three passes after one that faults the pages in. On the
/// project's shared 2-core machines it moves with the neighbours' load (28.6 to 63.3 GB/s within
/// two hours on a Zen 4), so a decoding rate is only comparable with the bandwidth measured in the
/// same run.
pub fn read_bandwidth_gbps() -> f64 {
    let values = vec![1f32; BANDWIDTH_BYTES / 4];
    let threads = rayon::current_num_threads().max(1);
    let part = values.len().div_ceil(threads);
    let pass = || {
        let start = std::time::Instant::now();
        let total: f64 = values.par_chunks(part).map(|p| crate::cpu::lane_sum(p, |v| v) as f64).sum();
        (start.elapsed().as_secs_f64(), total)
    };
    pass();
    (0..3)
        .map(|_| {
            let (secs, total) = pass();
            // Every value is 1: the total shows the pass read them (to f32's rounding of a part's
            // sum).
            let ones = values.len() as f64;
            assert!((total - ones).abs() <= 1e-6 * ones, "the bandwidth pass summed {total} of {ones} ones");
            BANDWIDTH_BYTES as f64 / secs / 1e9
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fma_chains_compute_the_recurrence() {
        // x -> 0.999999 x + 1e-6 from 1 stays 1: every lane of every chain sums to CHAINS.
        let level = simd_level();
        if level == SimdLevel::Generic {
            assert!(fma_gflops(10).is_none());
            return;
        }
        let lanes = if level == SimdLevel::Avx512 { 16.0 } else { 8.0 };
        let sum = fma_chains(level, 1000);
        assert!((sum - CHAINS as f32 * lanes).abs() < 1e-3 * CHAINS as f32 * lanes, "{sum}");
        let peak = fma_gflops(1_000_000).expect("a measured peak");
        assert!(peak.is_finite() && peak > 0.0, "{peak}");
    }
}
