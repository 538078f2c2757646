//! Products in bf16 on the CPU, opt-in (`--dtype bf16-products`): the activations rounded to bf16
//! (nearest even) and the sums kept in f32, as a GPU computes the released bf16 checkpoints. The
//! default for bf16 weights stays the exact f32 product of their values
//! ([`crate::cpu::linear_half_weights`]).
//!
//! On CPUs with AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids) one
//! `vdpbf16ps` multiplies 32 bf16 pairs into 16 f32 sums: twice an f32 FMA's multiply-adds per
//! cycle (Zen 4: 234 against 117 GFLOP/s on one core). The attention's two products then run on
//! it too (`cpu_attention::attend_block_bf16`). Elsewhere the same rounded activations go
//! through the f32 product of the widened weights (the same results up to summation order, at
//! f32 speed) and the attention stays f32.

use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

static BF16_PRODUCTS: AtomicBool = AtomicBool::new(false);

/// Turns bf16 products on or off for every bf16 weight in this process (the app has one precision
/// setting for all its models).
pub fn set_bf16_products(on: bool) {
    BF16_PRODUCTS.store(on, Ordering::Relaxed);
}

/// Whether products with bf16 weights round their activations to bf16 ([`set_bf16_products`]).
pub fn bf16_products() -> bool {
    BF16_PRODUCTS.load(Ordering::Relaxed)
}

/// Whether this CPU multiplies bf16 pairs itself (AVX512-BF16), within `SPATIAL_SIMD`'s cap.
pub fn has_bf16_dot_product() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| crate::multiversion::simd_level() == crate::multiversion::SimdLevel::Avx512 && std::is_x86_feature_detected!("avx512bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// f32 to bf16 bits as `vcvtne2ps2bf16` rounds: to nearest, ties to even; subnormals to zero of
/// their sign (the instruction implies DAZ/FTZ); NaN stays NaN (quieted).
pub fn round_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if bits & 0x7f80_0000 == 0 {
        return ((bits >> 16) & 0x8000) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// `x` with every value rounded to bf16 (kept as f32): what the bf16 products multiply.
pub(crate) fn rounded_to_bf16(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(o, x)| {
        for (o, v) in o.iter_mut().zip(x) {
            *o = f32::from_bits((round_to_bf16(*v) as u32) << 16);
        }
    });
    out
}

/// Rows of x per micro-tile: 14 rows x 2 vectors of 16 sums hold 28 of the 32 vector registers,
/// two more the weight pairs.
const TILE_ROWS: usize = 14;
/// Output columns per micro-tile (two vectors of 16 f32 sums).
const TILE_COLS: usize = 32;
/// Depth pairs per pass: a 32-column weight panel of this depth is 32 KiB, the 14-row activation
/// panel 14 KiB. On one Zen 4 core: 176-184 GFLOP/s against 164-173 at 64 pairs and 173-178 at
/// 128 (the kernel alone, on data in L1: 231 of the instruction's 234).
const DEPTH_PAIRS: usize = 256;
/// Output columns per task: their weight block (DEPTH_PAIRS deep) is 512 KiB, in the L2.
const TASK_COLS: usize = 512;

/// Rows per task: all of them where the columns give every thread work (each task packs its
/// weight block again, so fewer row splits pack less), else split evenly in whole tiles.
fn task_rows(rows: usize, n: usize) -> usize {
    let column_tasks = n.div_ceil(TASK_COLS);
    let wanted = (4 * rayon::current_num_threads()).div_ceil(column_tasks);
    let tiles = rows.div_ceil(TILE_ROWS);
    tiles.div_ceil(wanted.clamp(1, tiles)) * TILE_ROWS
}

/// `y[rows, n] = bf16(x)[rows, k] · w[n, k]^T` with f32 sums, w the bits of a row-major bf16
/// weight, on all of rayon's threads. None when the CPU has no bf16 dot product
/// ([`has_bf16_dot_product`]). A cancelled run ([`crate::nn::cancellable`]) stops it within one
/// depth pass of a task (milliseconds) with the cancel error.
pub fn matmul_bf16(x: &[f32], rows: usize, k: usize, w: &[u16], n: usize) -> candle_core::Result<Option<Vec<f32>>> {
    if !has_bf16_dot_product() {
        return Ok(None);
    }
    assert_eq!(x.len(), rows * k, "x is [rows, k]");
    assert_eq!(w.len(), n * k, "w is [n, k]");
    if rows == 0 || n == 0 || k == 0 {
        return Ok(Some(vec![0f32; rows * n]));
    }
    let cancel = crate::nn::cancel_flag();
    let cancelled = || cancel.as_ref().is_some_and(|f| f.load(Ordering::Relaxed));
    // Every element is written by the first depth pass: no zeroing first.
    let mut y = crate::cpu::Unwritten::new(rows * n);
    #[cfg(target_arch = "x86_64")]
    {
        let pairs = k.div_ceil(2);
        let activations = pack_activations(x, rows, k);
        let task_rows = task_rows(rows, n);
        let tasks: Vec<(usize, usize)> = (0..rows.div_ceil(task_rows)).flat_map(|r| (0..n.div_ceil(TASK_COLS)).map(move |c| (r * task_rows, c * TASK_COLS))).collect();
        let out = crate::cpu::SharedMut(y.as_mut_ptr());
        tasks.into_par_iter().for_each_init(
            || vec![0u32; TASK_COLS.div_ceil(TILE_COLS) * TILE_COLS * DEPTH_PAIRS],
            |panel, (r0, c0)| {
                let out = &out;
                let (r1, c1) = ((r0 + task_rows).min(rows), (c0 + TASK_COLS).min(n));
                for p0 in (0..pairs).step_by(DEPTH_PAIRS) {
                    if cancelled() {
                        return;
                    }
                    let depth = DEPTH_PAIRS.min(pairs - p0);
                    pack_weights(w, k, c0, c1, p0, depth, panel);
                    for t0 in (r0..r1).step_by(TILE_ROWS) {
                        let tile_rows = TILE_ROWS.min(r1 - t0);
                        // Tile t0 / TILE_ROWS of the packed activations, depth pairs from p0.
                        let a = &activations[(t0 / TILE_ROWS) * pairs * TILE_ROWS + p0 * TILE_ROWS..];
                        for j0 in (c0..c1).step_by(TILE_COLS) {
                            let b = &panel[((j0 - c0) / TILE_COLS) * TILE_COLS * depth..];
                            // SAFETY: the CPU has AVX512-BF16 (checked above); a holds depth x
                            // TILE_ROWS pairs, b depth x TILE_COLS; rows t0..t0+tile_rows and
                            // columns j0..j0+cols of y are this task's alone.
                            unsafe {
                                let c = out.ptr().add(t0 * n + j0);
                                tile(tile_rows, depth, a.as_ptr(), b.as_ptr(), c, n, (c1 - j0).min(TILE_COLS), p0 > 0);
                            }
                        }
                    }
                }
            },
        );
    }
    if cancelled() {
        // Tasks stopped part-way: y is not all written and is dropped unread.
        return Err(candle_core::Error::Msg(crate::nn::CANCELLED.into()));
    }
    // SAFETY: the first depth pass (p0 = 0) of the task covering each row and column stored it.
    Ok(Some(unsafe { y.into_vec() }))
}

/// Two bf16 values as one 32-bit pair, the first in the low half (the order `vdpbf16ps` pairs
/// them in).
fn pair(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

/// x rounded to bf16 and laid out tile by tile: tile t holds rows 14t.. as [pair][row], so the
/// micro-kernel broadcasts one 32-bit pair per row from consecutive addresses. Rows past the end
/// and the depth's odd tail are zero.
fn pack_activations(x: &[f32], rows: usize, k: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let mut packed = vec![0u32; rows.div_ceil(TILE_ROWS) * pairs * TILE_ROWS];
    packed.par_chunks_mut(pairs * TILE_ROWS).enumerate().for_each_init(
        || vec![0u32; pairs],
        |row_pairs, (t, tile)| {
            for i in 0..TILE_ROWS.min(rows - t * TILE_ROWS) {
                let row = &x[(t * TILE_ROWS + i) * k..(t * TILE_ROWS + i + 1) * k];
                // SAFETY: only called where the CPU has AVX512-BF16 (matmul_bf16 checks).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    round_pairs(row, row_pairs)
                };
                for (p, v) in row_pairs.iter().enumerate() {
                    tile[p * TILE_ROWS + i] = *v;
                }
            }
        },
    );
    packed
}

/// `row` rounded to bf16 as pairs (`out[p]` = values 2p and 2p + 1, the odd tail paired with 0),
/// 32 values per instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn round_pairs(row: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    let mut chunks = row.chunks_exact(32);
    let mut slots = out.chunks_exact_mut(16);
    for (c, o) in (&mut chunks).zip(&mut slots) {
        // SAFETY: 32 floats in, 16 pairs out.
        unsafe {
            let (lo, hi) = (_mm512_loadu_ps(c.as_ptr()), _mm512_loadu_ps(c.as_ptr().add(16)));
            // The second operand fills the low half: values in order.
            let bf: __m512bh = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(o.as_mut_ptr().cast(), std::mem::transmute::<__m512bh, __m512i>(bf));
        }
    }
    let tail = chunks.remainder();
    let done = row.len() - tail.len();
    for (p, two) in tail.chunks(2).enumerate() {
        out[done / 2 + p] = pair(round_to_bf16(two[0]), two.get(1).map_or(0, |v| round_to_bf16(*v)));
    }
}

/// Weight rows c0..c1, depth pairs p0..p0+depth, as 32-column panels of [pair][column]; columns
/// past c1 and the depth's odd tail are zero.
fn pack_weights(w: &[u16], k: usize, c0: usize, c1: usize, p0: usize, depth: usize, panel: &mut [u32]) {
    for (pi, j0) in (c0..c1).step_by(TILE_COLS).enumerate() {
        let dst = &mut panel[pi * TILE_COLS * depth..(pi + 1) * TILE_COLS * depth];
        for c in 0..TILE_COLS {
            let j = j0 + c;
            if j >= c1 {
                dst.chunks_exact_mut(TILE_COLS).for_each(|d| d[c] = 0);
                continue;
            }
            let row = &w[j * k + 2 * p0..((j + 1) * k).min(j * k + 2 * (p0 + depth))];
            let mut twos = row.chunks_exact(2);
            let mut slots = dst.chunks_exact_mut(TILE_COLS);
            // Pairs first: zip asks its first iterator first, and a slot taken past the last pair
            // would be lost to the odd tail.
            for (two, d) in (&mut twos).zip(&mut slots) {
                d[c] = pair(two[0], two[1]);
            }
            if let ([last], Some(d)) = (twos.remainder(), slots.next()) {
                d[c] = pair(*last, 0);
            }
        }
    }
}

/// One micro-tile for `rows` (1..=14) rows: picks the kernel compiled for that many.
///
/// # Safety
/// AVX512-BF16; `a` holds `depth` x 14 pairs, `b` `depth` x 32; `c` has `rows` rows of `cols`
/// (1..=32) writable columns, `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(rows: usize, depth: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, cols: usize, accumulate: bool) {
    crate::cpu_packed::by_tile_rows!(micro_kernel, rows, depth, a, b, c, ldc, cols, accumulate)
}

/// `c[R, cols] (+)= a · b` over `depth` pairs: 2R sums of 16 lanes stay in registers, each step
/// loads two 16-column weight vectors and broadcasts one activation pair per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_kernel<const R: usize>(depth: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, cols: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    let mut sums = [[_mm512_setzero_ps(); 2]; R];
    // SAFETY: the packed panels hold `depth` pairs of R rows and of 32 columns, per the caller.
    unsafe { accumulate_pairs(&mut sums, a, 1, TILE_ROWS, b, TILE_COLS, depth) };
    crate::cpu_packed::store_tile!(sums, c, ldc, cols, accumulate);
}

/// `sums[r][c] += sum over pairs i of a(r, i) . b(i, 16c..16c + 16)` with `vdpbf16ps`: R rows x
/// NC vectors of 16 f32 sums held in registers, a(r, i) the bf16 pair at `a[r * a_row + i *
/// a_pair]` broadcast to every lane, b(i, ..) 16 pairs at `b[i * b_pair + 16c]`. The inner loop
/// of the linear kernel and of the attention kernel's two products.
///
/// # Safety
/// AVX512-BF16; the addresses above are readable for r < R, i < pairs, c < NC.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
pub(crate) unsafe fn accumulate_pairs<const R: usize, const NC: usize>(sums: &mut [[std::arch::x86_64::__m512; NC]; R], a: *const u32, a_row: usize, a_pair: usize, b: *const u32, b_pair: usize, pairs: usize) {
    use std::arch::x86_64::*;
    for i in 0..pairs {
        // SAFETY (all loads): inside the operands, per the caller.
        let w: [__m512bh; NC] = std::array::from_fn(|c| bh(unsafe { _mm512_loadu_si512(b.add(i * b_pair + 16 * c).cast()) }));
        for (r, row) in sums.iter_mut().enumerate() {
            let x = bh(_mm512_set1_epi32(unsafe { *a.add(r * a_row + i * a_pair) } as i32));
            for (sum, w) in row.iter_mut().zip(&w) {
                *sum = _mm512_dpbf16_ps(*sum, x, *w);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn bh(v: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512bh {
    // SAFETY: both are 512 bits of plain data.
    unsafe { std::mem::transmute(v) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 sums of the rounded values: what the bf16 products approximate, to f32's rounding.
    fn reference(x: &[f32], rows: usize, k: usize, w: &[u16], n: usize) -> Vec<f64> {
        let xr: Vec<f64> = x.iter().map(|&v| f32::from_bits((round_to_bf16(v) as u32) << 16) as f64).collect();
        let wf: Vec<f64> = w.iter().map(|&b| f32::from_bits((b as u32) << 16) as f64).collect();
        let mut y = vec![0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                y[r * n + j] = (0..k).map(|e| xr[r * k + e] * wf[j * k + e]).sum();
            }
        }
        y
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn bf16_products_match_the_rounded_values_summed_exactly() {
        if !has_bf16_dot_product() {
            eprintln!("this CPU has no AVX512-BF16: the kernel is not run (the rounding is tested below)");
            return;
        }
        // Odd depths, columns and rows that fill no tile, more than one task and depth pass.
        for (rows, k, n) in [(1, 1, 1), (15, 3, 33), (29, 257, 47), (450, 300, 530), (13, 700, 1030)] {
            let x = values(rows * k, 1 + rows as u64);
            let w: Vec<u16> = values(n * k, 7 + n as u64).iter().map(|&v| round_to_bf16(v)).collect();
            let got = matmul_bf16(&x, rows, k, &w, n).unwrap().unwrap();
            let want = reference(&x, rows, k, &w, n);
            // f32 sums of k products of magnitude up to 4: rounding error well under 1e-5 * k.
            let bound = 1e-5 * k as f64 + 1e-6;
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!((*g as f64 - e).abs() <= bound, "[{rows}x{k}]x[{n}x{k}]^T at ({}, {}): {g} vs {e}", i / n, i % n);
            }
        }
    }

    #[test]
    fn a_cancelled_run_stops_the_product_with_the_cancel_error() {
        if !has_bf16_dot_product() {
            return;
        }
        let (rows, k, n) = (64, 96, 80);
        let (x, w) = (values(rows * k, 5), values(n * k, 6).iter().map(|&v| round_to_bf16(v)).collect::<Vec<_>>());
        let flag = std::sync::Arc::new(AtomicBool::new(false));
        let done = crate::nn::cancellable(flag.clone(), || Ok(matmul_bf16(&x, rows, k, &w, n)?)).unwrap();
        assert!(done.is_some_and(|y| y.is_some()), "not cancelled: the product");
        flag.store(true, Ordering::Relaxed);
        let cancelled = crate::nn::cancellable(flag, || Ok(matmul_bf16(&x, rows, k, &w, n)?)).unwrap();
        assert!(cancelled.is_none(), "a cancelled run's product ends as cancelled");
    }

    #[test]
    fn rounding_matches_the_instruction() {
        let mut x = values(4096, 3);
        x.extend([0.0, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, 1e-40, -1e-40, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        // Ties: 1 + 2^-8 rounds down to 1 (even), 1 + 3 * 2^-8 up to 1 + 2^-6.
        x.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0]);
        let rounded: Vec<u16> = x.iter().map(|&v| round_to_bf16(v)).collect();
        let n = x.len();
        assert_eq!(&rounded[n - 2..], &[0x3f80, 0x3f82]);
        assert_eq!((rounded[n - 7], rounded[n - 6]), (0, 0x8000), "subnormals flush to zero of their sign");
        assert!(f32::from_bits((rounded[n - 3] as u32) << 16).is_nan());
        #[cfg(target_arch = "x86_64")]
        if has_bf16_dot_product() {
            // SAFETY: the CPU has AVX512-BF16.
            let hardware = unsafe { hardware_rounding(&x) };
            assert_eq!(rounded, hardware);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn hardware_rounding(x: &[f32]) -> Vec<u16> {
        use std::arch::x86_64::*;
        x.iter()
            .map(|&v| {
                let r: __m256bh = _mm512_cvtneps_pbh(_mm512_set1_ps(v));
                let bits: [u16; 16] = unsafe { std::mem::transmute(r) };
                bits[0]
            })
            .collect()
    }
}
