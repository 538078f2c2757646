//! Register-tiled attention micro-kernels for the CPU (AVX-512 and AVX2+FMA), used by
//! `cpu::attend_block` when the head size is a multiple of the vector width.
//!
//! Why not two OpenBLAS calls per key tile (the portable path): with a head size of 64 the score
//! product has a depth of 64, so OpenBLAS re-packed the same 256 queries for every key tile and the
//! [256, 256] probabilities again for the value product; VGGT's global attention at 16 frames ran
//! at 75-80% of what those products reach. Here the keys of a tile are transposed once, and each
//! group of a few query rows goes score product -> online softmax -> value product while its
//! scores are in L1.

use crate::multiversion::SimdLevel;

/// Buffers of one work item: the tile's keys transposed ([d, keys rounded up to the vector
/// width]) and one row group's scores; for the bf16 kernel also the block's queries, the tile's
/// keys and values and a row group's probabilities as bf16 pairs.
#[derive(Default)]
pub(crate) struct KernelScratch {
    keys_t: Vec<f32>,
    scores: Vec<f32>,
    #[cfg(target_arch = "x86_64")]
    pairs: avx512_bf16::PairScratch,
}

/// The online-softmax state of a block's rows (running max and sum; the rescale of one step).
pub(crate) struct RowState<'a> {
    pub max: &'a mut [f32],
    pub sum: &'a mut [f32],
    pub rescale: &'a mut [f32],
}

/// The keys one block of queries attends to: 0..visible, and for a causal block the first
/// query's own position + 1 (row r sees keys 0..causal_first_sees + r; later ones are masked).
#[derive(Clone, Copy)]
pub(crate) struct Keys {
    pub visible: usize,
    pub causal_first_sees: Option<usize>,
}

/// Query rows from which a block goes through these kernels: each key tile is transposed once
/// per block (d scalar stores per key against about rows x d / 8 cycles of products per key), so
/// fewer rows (a decoding step's one) are left to OpenBLAS's matrix-vector products.
pub(crate) const MIN_ROWS: usize = 16;

/// Whether a micro-kernel at `level` runs head size `d`.
pub(crate) fn supports(level: SimdLevel, d: usize) -> bool {
    match level {
        SimdLevel::Avx512 => d % 16 == 0,
        SimdLevel::Avx2 => d % 8 == 0,
        SimdLevel::Generic => false,
    }
}

/// `rows` queries (stride `q_stride`) against keys and values [0..keys.visible, d] (row stride d),
/// in key tiles of `key_tile`: out rows (stride `out_stride`) = softmax(scale q k^T) v, normalised.
/// `level` picks the instruction set (at most [`crate::multiversion::simd_level`]). Returns false (and does nothing)
/// where [`supports`] is false.
///
/// # Safety
/// `level` is at most what this CPU has; q holds rows x d at its stride; k and v at least
/// `keys.visible` rows of d; out rows x d at its stride, written by no one else meanwhile; the
/// state's slices hold at least `rows` rows.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attend_block(level: SimdLevel, q: *const f32, q_stride: usize, rows: usize, k: *const f32, v: *const f32, d: usize, keys: Keys, scale: f32, out: *mut f32, out_stride: usize, key_tile: usize, state: RowState, scratch: &mut KernelScratch) -> bool {
    if !supports(level, d) || key_tile == 0 {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the module's features (the caller's `level`), the rest is the caller's
    // contract.
    unsafe {
        match level {
            SimdLevel::Avx512 => avx512::attend_block(q, q_stride, rows, k, v, d, keys, scale, out, out_stride, key_tile, state, scratch),
            SimdLevel::Avx2 => avx2::attend_block(q, q_stride, rows, k, v, d, keys, scale, out, out_stride, key_tile, state, scratch),
            SimdLevel::Generic => return false,
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One instruction set's kernels: `$rows` query rows x `$vecs` vectors of accumulators (24 of
/// AVX-512's 32 registers; 10 of AVX2's 16, leaving room for the loaded row and two broadcasts:
/// with 4 x 3 the compiler kept one accumulator on the stack, and its store and reload in every
/// iteration held Zen 3 to half the kernel's speed).
#[cfg(target_arch = "x86_64")]
macro_rules! attention_kernels {
    ($module:ident, $features:literal, $lanes:literal, $rows:literal, $vecs:literal, $zero:ident, $set1:ident, $load:ident, $store:ident, $fmadd:ident, $mul:ident, $add:ident, $sub:ident, $max:ident, $exp2:path) => {
        mod $module {
            use super::{KernelScratch, Keys, RowState};
            use crate::cpu::{CACHE_LINE_F32S as LINE, cache_line_offset};
            use std::arch::x86_64::*;

            const LANES: usize = $lanes;
            const ROWS: usize = $rows;
            const VECS: usize = $vecs;

            /// s[r, 0..NC*LANES] = scale * sum_i q[r, i] kt[i, 0..NC*LANES] for R rows.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn score_tile<const R: usize, const NC: usize>(q: *const f32, q_stride: usize, kt: *const f32, kt_stride: usize, d: usize, scale: f32, s: *mut f32, s_stride: usize) {
                unsafe {
                    let mut acc = [[$zero(); NC]; R];
                    for i in 0..d {
                        let mut key = [$zero(); NC];
                        for c in 0..NC {
                            key[c] = $load(kt.add(i * kt_stride + c * LANES));
                        }
                        for r in 0..R {
                            let qi = $set1(*q.add(r * q_stride + i));
                            for c in 0..NC {
                                acc[r][c] = $fmadd(qi, key[c], acc[r][c]);
                            }
                        }
                    }
                    let scale = $set1(scale);
                    for r in 0..R {
                        for c in 0..NC {
                            $store(s.add(r * s_stride + c * LANES), $mul(acc[r][c], scale));
                        }
                    }
                }
            }

            /// Scores of R rows against `width` transposed keys (a multiple of LANES).
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            unsafe fn score_rows<const R: usize>(q: *const f32, q_stride: usize, kt: *const f32, kt_stride: usize, width: usize, d: usize, scale: f32, s: *mut f32) {
                unsafe {
                    let mut c0 = 0;
                    while c0 + VECS * LANES <= width {
                        score_tile::<R, VECS>(q, q_stride, kt.add(c0), kt_stride, d, scale, s.add(c0), width);
                        c0 += VECS * LANES;
                    }
                    let (kt, s) = (kt.add(c0), s.add(c0));
                    match (width - c0) / LANES {
                        // (Arms for more vectors than a tile holds are never taken: the guards
                        // keep them out of the build.)
                        0 => {}
                        1 if VECS > 1 => score_tile::<R, 1>(q, q_stride, kt, kt_stride, d, scale, s, width),
                        2 if VECS > 2 => score_tile::<R, 2>(q, q_stride, kt, kt_stride, d, scale, s, width),
                        3 if VECS > 3 => score_tile::<R, 3>(q, q_stride, kt, kt_stride, d, scale, s, width),
                        _ => unreachable!("fewer than VECS vectors remain"),
                    }
                }
            }

            /// o[r, 0..NC*LANES] = o[r, ..] * rescale[r] (or 0 on the first tile) + sum_j p[r, j] v[j, ..].
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            unsafe fn value_tile<const R: usize, const NC: usize>(p: *const f32, p_stride: usize, v: *const f32, v_stride: usize, n: usize, rescale: *const f32, first: bool, o: *mut f32, o_stride: usize) {
                unsafe {
                    let mut acc = [[$zero(); NC]; R];
                    if !first {
                        for r in 0..R {
                            let f = $set1(*rescale.add(r));
                            for c in 0..NC {
                                acc[r][c] = $mul($load(o.add(r * o_stride + c * LANES)), f);
                            }
                        }
                    }
                    for j in 0..n {
                        let mut value = [$zero(); NC];
                        for c in 0..NC {
                            value[c] = $load(v.add(j * v_stride + c * LANES));
                        }
                        for r in 0..R {
                            let pj = $set1(*p.add(r * p_stride + j));
                            for c in 0..NC {
                                acc[r][c] = $fmadd(pj, value[c], acc[r][c]);
                            }
                        }
                    }
                    for r in 0..R {
                        for c in 0..NC {
                            $store(o.add(r * o_stride + c * LANES), acc[r][c]);
                        }
                    }
                }
            }

            /// The value product of R rows over the head size d (a multiple of LANES).
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            unsafe fn value_rows<const R: usize>(p: *const f32, p_stride: usize, v: *const f32, d: usize, n: usize, rescale: *const f32, first: bool, o: *mut f32, o_stride: usize) {
                unsafe {
                    let mut c0 = 0;
                    while c0 + VECS * LANES <= d {
                        value_tile::<R, VECS>(p, p_stride, v.add(c0), d, n, rescale, first, o.add(c0), o_stride);
                        c0 += VECS * LANES;
                    }
                    let (v, o) = (v.add(c0), o.add(c0));
                    match (d - c0) / LANES {
                        0 => {}
                        1 if VECS > 1 => value_tile::<R, 1>(p, p_stride, v, d, n, rescale, first, o, o_stride),
                        2 if VECS > 2 => value_tile::<R, 2>(p, p_stride, v, d, n, rescale, first, o, o_stride),
                        3 if VECS > 3 => value_tile::<R, 3>(p, p_stride, v, d, n, rescale, first, o, o_stride),
                        _ => unreachable!("fewer than VECS vectors remain"),
                    }
                }
            }

            /// One key tile's step of the online softmax of one row of scores in log2 units
            /// (`row.len()` a multiple of LANES): `2^(x - m)` in place with m the running max,
            /// `sum = sum * rescale + the tile's sum`, `rescale = 2^(old max - m)`.
            #[target_feature(enable = $features)]
            #[inline]
            pub(super) unsafe fn softmax_step(row: &mut [f32], max: &mut f32, sum: &mut f32, rescale: &mut f32) {
                let mut lanes = [0f32; LANES];
                let p = row.as_mut_ptr();
                unsafe {
                    let mut m = $set1(*max);
                    for c in (0..row.len()).step_by(LANES) {
                        m = $max(m, $load(p.add(c)));
                    }
                    $store(lanes.as_mut_ptr(), m);
                    let m = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    if m == f32::NEG_INFINITY {
                        // Nothing visible yet (only masked keys so far): nothing to add.
                        row.fill(0.0);
                        *rescale = 1.0;
                        return;
                    }
                    let (vm, mut total) = ($set1(m), $zero());
                    for c in (0..row.len()).step_by(LANES) {
                        let e = $exp2($sub($load(p.add(c)), vm));
                        $store(p.add(c), e);
                        total = $add(total, e);
                    }
                    $store(lanes.as_mut_ptr(), total);
                    // Before the first tile the max is -inf, so the rescale is 0 (of a sum of 0).
                    *rescale = (*max - m).exp2();
                    *sum = *sum * *rescale + lanes.iter().sum::<f32>();
                    *max = m;
                }
            }

            /// One group of R query rows against one key tile: scores, the online softmax step,
            /// the rescaled value product.
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            unsafe fn row_group<const R: usize>(q: *const f32, q_stride: usize, kt: *const f32, kt_stride: usize, width: usize, v: *const f32, d: usize, start: usize, n: usize, keys: Keys, first_row: usize, scale: f32, scores: &mut [f32], state: &mut RowState, out: *mut f32, out_stride: usize) {
                unsafe { score_rows::<R>(q, q_stride, kt, kt_stride, width, d, scale, scores.as_mut_ptr()) };
                for r in 0..R {
                    // Keys masked for this row, and the columns past the tile's last key (the
                    // transposed keys' zero padding), get no weight.
                    let i = first_row + r;
                    let seen = keys.causal_first_sees.map_or(n, |first_sees| (first_sees + i).saturating_sub(start).min(n));
                    let row = &mut scores[r * width..(r + 1) * width];
                    row[seen..].fill(f32::NEG_INFINITY);
                    unsafe { softmax_step(row, &mut state.max[i], &mut state.sum[i], &mut state.rescale[i]) };
                }
                unsafe { value_rows::<R>(scores.as_ptr(), width, v, d, n, state.rescale.as_ptr().add(first_row), start == 0, out, out_stride) };
            }

            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn attend_block(q: *const f32, q_stride: usize, rows: usize, k: *const f32, v: *const f32, d: usize, keys: Keys, scale: f32, out: *mut f32, out_stride: usize, key_tile: usize, mut state: RowState, scratch: &mut KernelScratch) {
                state.max[..rows].fill(f32::NEG_INFINITY);
                state.sum[..rows].fill(0.0);
                let tile_width = key_tile.div_ceil(LANES) * LANES;
                // Rows of the transposed keys one cache line apart from a power of two: 256 keys
                // (1 KB) apart, a tile's 64 rows fell into 4 of L1's 64 sets and evicted each
                // other, in the transposition and in every score product.
                // One cache line of padding, so that every row also starts a cache line and no
                // vector load straddles two (Zen 3 ran the kernel 5-10% faster so).
                let kt_stride = |width: usize| width + LINE;
                scratch.keys_t.resize(d * kt_stride(tile_width) + LINE, 0.0);
                scratch.scores.resize(ROWS * tile_width + LINE, 0.0);
                let (kt_off, s_off) = (cache_line_offset(&scratch.keys_t), cache_line_offset(&scratch.scores));
                // Scores in log2 units, so the softmax takes powers of two.
                let scale = scale * std::f32::consts::LOG2_E;
                let mut start = 0;
                while start < keys.visible {
                    let n = key_tile.min(keys.visible - start);
                    let width = n.div_ceil(LANES) * LANES;
                    // The tile's keys transposed, zero past n (their scores are never read).
                    let stride = kt_stride(width);
                    let kt = &mut scratch.keys_t[kt_off..kt_off + d * stride];
                    // SAFETY: keys start..start + n exist (n <= visible - start); kt holds d rows
                    // of `stride` >= n; d is a multiple of 8 (`supports`); AVX2 comes with both
                    // instruction sets.
                    unsafe { super::transpose_keys(k.add(start * d), d, n, kt.as_mut_ptr(), stride) };
                    if width > n {
                        for i in 0..d {
                            kt[i * stride + n..i * stride + width].fill(0.0);
                        }
                    }
                    let (kt, v) = (kt.as_ptr(), unsafe { v.add(start * d) });
                    let mut r0 = 0;
                    while r0 < rows {
                        let (qg, og) = unsafe { (q.add(r0 * q_stride), out.add(r0 * out_stride)) };
                        let s = &mut scratch.scores[s_off..];
                        unsafe {
                            match (rows - r0).min(ROWS) {
                                1 => row_group::<1>(qg, q_stride, kt, stride, width, v, d, start, n, keys, r0, scale, s, &mut state, og, out_stride),
                                2 if ROWS >= 2 => row_group::<2>(qg, q_stride, kt, stride, width, v, d, start, n, keys, r0, scale, s, &mut state, og, out_stride),
                                3 if ROWS >= 3 => row_group::<3>(qg, q_stride, kt, stride, width, v, d, start, n, keys, r0, scale, s, &mut state, og, out_stride),
                                4 if ROWS >= 4 => row_group::<4>(qg, q_stride, kt, stride, width, v, d, start, n, keys, r0, scale, s, &mut state, og, out_stride),
                                5 if ROWS >= 5 => row_group::<5>(qg, q_stride, kt, stride, width, v, d, start, n, keys, r0, scale, s, &mut state, og, out_stride),
                                6 if ROWS >= 6 => row_group::<6>(qg, q_stride, kt, stride, width, v, d, start, n, keys, r0, scale, s, &mut state, og, out_stride),
                                _ => unreachable!("at most ROWS rows per group"),
                            }
                        }
                        r0 += ROWS;
                    }
                    start += n;
                }
                for r in 0..rows {
                    let row = unsafe { std::slice::from_raw_parts_mut(out.add(r * out_stride), d) };
                    let inv = 1.0 / state.sum[r];
                    row.iter_mut().for_each(|x| *x *= inv);
                }
            }
        }
    };
}

/// kt[i * stride + j] = k[j * d + i] for keys j < n and i < d (a multiple of 8): 8x8 blocks
/// through registers (8 loads, 24 shuffles and 8 stores where scalar code took 64 loads and 64
/// stores; the transposition was 6% of the kernel's time on Zen 3), the last n % 8 keys one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_keys(k: *const f32, d: usize, n: usize, kt: *mut f32, stride: usize) {
    use std::arch::x86_64::*;
    debug_assert!(d % 8 == 0 && stride >= n);
    unsafe {
        let blocks = n / 8 * 8;
        for j0 in (0..blocks).step_by(8) {
            for i0 in (0..d).step_by(8) {
                let r: [__m256; 8] = std::array::from_fn(|r| _mm256_loadu_ps(k.add((j0 + r) * d + i0)));
                // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves.
                let t: [__m256; 8] = std::array::from_fn(|x| {
                    let (a, b) = (r[x / 2 * 2], r[x / 2 * 2 + 1]);
                    if x % 2 == 0 { _mm256_unpacklo_ps(a, b) } else { _mm256_unpackhi_ps(a, b) }
                });
                let q: [__m256; 8] = std::array::from_fn(|x| {
                    let base = x / 4 * 4 + x % 4 / 2;
                    let (a, b) = (t[base], t[base + 2]);
                    if x % 2 == 0 { _mm256_shuffle_ps::<0x44>(a, b) } else { _mm256_shuffle_ps::<0xEE>(a, b) }
                });
                for c in 0..4 {
                    _mm256_storeu_ps(kt.add((i0 + c) * stride + j0), _mm256_permute2f128_ps::<0x20>(q[c], q[c + 4]));
                    _mm256_storeu_ps(kt.add((i0 + c + 4) * stride + j0), _mm256_permute2f128_ps::<0x31>(q[c], q[c + 4]));
                }
            }
        }
        for j in blocks..n {
            for i in 0..d {
                *kt.add(i * stride + j) = *k.add(j * d + i);
            }
        }
    }
}

/// 2^f for f in [-1/2, 1/2] to 1e-7 relative in f32: a degree-6 polynomial fitted (minimax in
/// relative error) for that interval.
const EXP2_POLY: [f32; 7] = [1.0, 0.693_147_2, 0.240_226_46, 0.055_503_286, 0.009_618_489, 0.001_339_993_1, 0.000_153_458_11];

/// 2^x for each lane, x <= 0: below -126 it gives 2^-126 (negligible beside the row's max, 1).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp2_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-126.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm512_sub_ps(x, n);
    let mut p = _mm512_set1_ps(EXP2_POLY[6]);
    for &c in EXP2_POLY[..6].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// [`exp2_avx512`] with AVX2: the power of two built in the exponent bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp2_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_max_ps(x, _mm256_set1_ps(-126.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm256_sub_ps(x, n);
    let mut p = _mm256_set1_ps(EXP2_POLY[6]);
    for &c in EXP2_POLY[..6].iter().rev() {
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
    }
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
}

#[cfg(target_arch = "x86_64")]
attention_kernels!(avx512, "avx512f,avx2,fma", 16, 6, 4, _mm512_setzero_ps, _mm512_set1_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_add_ps, _mm512_sub_ps, _mm512_max_ps, super::exp2_avx512);
#[cfg(target_arch = "x86_64")]
attention_kernels!(avx2, "avx2,fma", 8, 5, 2, _mm256_setzero_ps, _mm256_set1_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_fmadd_ps, _mm256_mul_ps, _mm256_add_ps, _mm256_sub_ps, _mm256_max_ps, super::exp2_avx2);

/// [`attend_block`] with bf16 products (`--dtype bf16-products`, AVX512-BF16): q, k, v and the
/// unnormalised probabilities rounded to bf16 pairs, the scores, the softmax and the sums in f32,
/// as FlashAttention-2 computes a bf16 model. Head sizes that are multiples of 16. Returns false
/// (and does nothing) where the CPU lacks AVX512-BF16 or the head size does not fit.
///
/// # Safety
/// As [`attend_block`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attend_block_bf16(q: *const f32, q_stride: usize, rows: usize, k: *const f32, v: *const f32, d: usize, keys: Keys, scale: f32, out: *mut f32, out_stride: usize, key_tile: usize, state: RowState, scratch: &mut KernelScratch) -> bool {
    if !crate::cpu_bf16::has_bf16_dot_product() || d % 16 != 0 || key_tile == 0 {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX512-BF16 (checked); the rest is the caller's contract.
    unsafe {
        avx512_bf16::attend_block(q, q_stride, rows, k, v, d, keys, scale, out, out_stride, key_tile, state, scratch);
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The bf16 kernels: 6 query rows x 4 vectors of 16 sums (24 registers), `vdpbf16ps` taking the
/// depth two at a time: for the scores the head size's pairs (keys stored as [pair][key]), for
/// the values the keys' pairs (values stored as [key pair][column]).
#[cfg(target_arch = "x86_64")]
mod avx512_bf16 {
    use super::{KernelScratch, Keys, RowState};
    use crate::cpu_bf16::{accumulate_pairs, round_pairs};
    use std::arch::x86_64::*;

    const LANES: usize = 16;
    const ROWS: usize = 6;
    const VECS: usize = 4;

    /// The bf16-pair buffers (32-bit elements).
    #[derive(Default)]
    pub(super) struct PairScratch {
        queries: Vec<u32>,
        keys: Vec<u32>,
        values: Vec<u32>,
        probabilities: Vec<u32>,
    }

    /// out[c] = the bf16 pair (a[c], b[c]) for c < d (a multiple of 16); b absent is zeros.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn pair_rows(a: &[f32], b: Option<&[f32]>, out: &mut [u32]) {
        for c in (0..out.len()).step_by(LANES) {
            unsafe {
                let low = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(a.as_ptr().add(c)))));
                let high = match b {
                    Some(b) => _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(b.as_ptr().add(c)))))),
                    None => _mm512_setzero_si512(),
                };
                _mm512_storeu_si512(out.as_mut_ptr().add(c).cast(), _mm512_or_si512(low, high));
            }
        }
    }

    /// s[r, c*16..] = scale * q2[r] . kp[.., c*16..] over `pairs` pairs, R rows x NC vectors.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn score_tile<const R: usize, const NC: usize>(q2: *const u32, q2_stride: usize, kp: *const u32, kp_stride: usize, pairs: usize, scale: f32, s: *mut f32, s_stride: usize) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NC]; R];
            accumulate_pairs(&mut acc, q2, q2_stride, 1, kp, kp_stride, pairs);
            let scale = _mm512_set1_ps(scale);
            for r in 0..R {
                for c in 0..NC {
                    _mm512_storeu_ps(s.add(r * s_stride + c * LANES), _mm512_mul_ps(acc[r][c], scale));
                }
            }
        }
    }

    /// o[r, c*16..] = o * rescale[r] (0 on the first tile) + p2[r] . vp[.., c*16..] over
    /// `pairs` key pairs, R rows x NC vectors.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn value_tile<const R: usize, const NC: usize>(p2: *const u32, p2_stride: usize, vp: *const u32, vp_stride: usize, pairs: usize, rescale: *const f32, first: bool, o: *mut f32, o_stride: usize) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NC]; R];
            if !first {
                for r in 0..R {
                    let f = _mm512_set1_ps(*rescale.add(r));
                    for c in 0..NC {
                        acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(o.add(r * o_stride + c * LANES)), f);
                    }
                }
            }
            accumulate_pairs(&mut acc, p2, p2_stride, 1, vp, vp_stride, pairs);
            for r in 0..R {
                for c in 0..NC {
                    _mm512_storeu_ps(o.add(r * o_stride + c * LANES), acc[r][c]);
                }
            }
        }
    }

    /// `tile(c0, vectors)` over `len` columns (a multiple of LANES) in steps of VECS vectors, the
    /// rest in one call of fewer.
    #[inline(always)]
    fn by_vectors(len: usize, mut tile: impl FnMut(usize, usize)) {
        let mut c0 = 0;
        while c0 + VECS * LANES <= len {
            tile(c0, VECS);
            c0 += VECS * LANES;
        }
        if c0 < len {
            tile(c0, (len - c0) / LANES);
        }
    }

    /// One group of R query rows against one key tile: scores, the online softmax step, the
    /// probabilities rounded to pairs, the rescaled value product.
    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn row_group<const R: usize>(q2: *const u32, q2_stride: usize, kp: *const u32, kp_stride: usize, width: usize, vp: *const u32, d: usize, start: usize, n: usize, keys: Keys, first_row: usize, scale: f32, scores: &mut [f32], p2: &mut [u32], state: &mut RowState, out: *mut f32, out_stride: usize) {
        let s = scores.as_mut_ptr();
        by_vectors(width, |c0, nc| unsafe {
            let (kp, s) = (kp.add(c0), s.add(c0));
            match nc {
                4 => score_tile::<R, 4>(q2, q2_stride, kp, kp_stride, d / 2, scale, s, width),
                3 => score_tile::<R, 3>(q2, q2_stride, kp, kp_stride, d / 2, scale, s, width),
                2 => score_tile::<R, 2>(q2, q2_stride, kp, kp_stride, d / 2, scale, s, width),
                _ => score_tile::<R, 1>(q2, q2_stride, kp, kp_stride, d / 2, scale, s, width),
            }
        });
        let half = width / 2;
        for r in 0..R {
            let i = first_row + r;
            let seen = keys.causal_first_sees.map_or(n, |first_sees| (first_sees + i).saturating_sub(start).min(n));
            let row = &mut scores[r * width..(r + 1) * width];
            row[seen..].fill(f32::NEG_INFINITY);
            // SAFETY: the row is a multiple of 16 long; the CPU has AVX512-BF16 (and with it
            // the f32 kernel's features).
            unsafe {
                super::avx512::softmax_step(row, &mut state.max[i], &mut state.sum[i], &mut state.rescale[i]);
                round_pairs(row, &mut p2[r * half..(r + 1) * half]);
            }
        }
        let p2 = p2.as_ptr();
        by_vectors(d, |c0, nc| unsafe {
            let (vp, o) = (vp.add(c0), out.add(c0));
            let rescale = state.rescale.as_ptr().add(first_row);
            match nc {
                4 => value_tile::<R, 4>(p2, half, vp, d, half, rescale, start == 0, o, out_stride),
                3 => value_tile::<R, 3>(p2, half, vp, d, half, rescale, start == 0, o, out_stride),
                2 => value_tile::<R, 2>(p2, half, vp, d, half, rescale, start == 0, o, out_stride),
                _ => value_tile::<R, 1>(p2, half, vp, d, half, rescale, start == 0, o, out_stride),
            }
        });
    }

    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend_block(q: *const f32, q_stride: usize, rows: usize, k: *const f32, v: *const f32, d: usize, keys: Keys, scale: f32, out: *mut f32, out_stride: usize, key_tile: usize, mut state: RowState, scratch: &mut KernelScratch) {
        state.max[..rows].fill(f32::NEG_INFINITY);
        state.sum[..rows].fill(0.0);
        let pairs = d / 2;
        // Keys in pairs of 32 (16 value pairs fill a vector), padded by a cache line.
        let tile_width = key_tile.div_ceil(2 * LANES) * 2 * LANES;
        let kp_stride = tile_width + LANES;
        let KernelScratch { scores, pairs: buffers, .. } = scratch;
        let PairScratch { queries, keys: kp, values: vp, probabilities: p2 } = buffers;
        queries.resize(rows * pairs, 0);
        kp.resize(pairs * kp_stride, 0);
        vp.resize(tile_width / 2 * d, 0);
        p2.resize(ROWS * tile_width / 2, 0);
        scores.resize(ROWS * tile_width, 0.0);
        for r in 0..rows {
            unsafe { round_pairs(std::slice::from_raw_parts(q.add(r * q_stride), d), &mut queries[r * pairs..(r + 1) * pairs]) };
        }
        let mut key_pairs = vec![0u32; pairs];
        // Scores in log2 units, so the softmax takes powers of two.
        let scale = scale * std::f32::consts::LOG2_E;
        let mut start = 0;
        while start < keys.visible {
            let n = key_tile.min(keys.visible - start);
            let width = n.div_ceil(2 * LANES) * 2 * LANES;
            // The tile's keys as [pair][key] and values as [key pair][column], zero past n.
            for j in 0..width {
                if j < n {
                    unsafe { round_pairs(std::slice::from_raw_parts(k.add((start + j) * d), d), &mut key_pairs) };
                } else {
                    key_pairs.fill(0);
                }
                for (i, p) in key_pairs.iter().enumerate() {
                    kp[i * kp_stride + j] = *p;
                }
            }
            let value = |j: usize| (j < n).then(|| unsafe { std::slice::from_raw_parts(v.add((start + j) * d), d) });
            for j2 in 0..n.div_ceil(2) {
                unsafe { pair_rows(value(2 * j2).expect("j2 < n / 2"), value(2 * j2 + 1), &mut vp[j2 * d..(j2 + 1) * d]) };
            }
            vp[n.div_ceil(2) * d..width / 2 * d].fill(0);
            let mut r0 = 0;
            while r0 < rows {
                let (q2, og) = (queries[r0 * pairs..].as_ptr(), unsafe { out.add(r0 * out_stride) });
                unsafe {
                    match (rows - r0).min(ROWS) {
                        1 => row_group::<1>(q2, pairs, kp.as_ptr(), kp_stride, width, vp.as_ptr(), d, start, n, keys, r0, scale, scores, p2, &mut state, og, out_stride),
                        2 => row_group::<2>(q2, pairs, kp.as_ptr(), kp_stride, width, vp.as_ptr(), d, start, n, keys, r0, scale, scores, p2, &mut state, og, out_stride),
                        3 => row_group::<3>(q2, pairs, kp.as_ptr(), kp_stride, width, vp.as_ptr(), d, start, n, keys, r0, scale, scores, p2, &mut state, og, out_stride),
                        4 => row_group::<4>(q2, pairs, kp.as_ptr(), kp_stride, width, vp.as_ptr(), d, start, n, keys, r0, scale, scores, p2, &mut state, og, out_stride),
                        5 => row_group::<5>(q2, pairs, kp.as_ptr(), kp_stride, width, vp.as_ptr(), d, start, n, keys, r0, scale, scores, p2, &mut state, og, out_stride),
                        _ => row_group::<6>(q2, pairs, kp.as_ptr(), kp_stride, width, vp.as_ptr(), d, start, n, keys, r0, scale, scores, p2, &mut state, og, out_stride),
                    }
                }
                r0 += ROWS;
            }
            start += n;
        }
        for r in 0..rows {
            let row = unsafe { std::slice::from_raw_parts_mut(out.add(r * out_stride), d) };
            let inv = 1.0 / state.sum[r];
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multiversion::simd_level;

    /// softmax(scale q k^T) v per row in f64, with row r seeing keys 0..sees(r).
    fn naive(q: &[f32], k: &[f32], v: &[f32], rows: usize, d: usize, scale: f32, sees: impl Fn(usize) -> usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * d];
        for r in 0..rows {
            let n = sees(r);
            let scores: Vec<f64> = (0..n).map(|j| (0..d).map(|i| q[r * d + i] as f64 * k[j * d + i] as f64).sum::<f64>() * scale as f64).collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for i in 0..d {
                out[r * d + i] = ((0..n).map(|j| weights[j] * v[j * d + i] as f64).sum::<f64>() / total) as f32;
            }
        }
        out
    }

    /// A deterministic spread of values in [-spread / 2, spread / 2).
    fn values(n: usize, seed: u64, spread: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread
            })
            .collect()
    }

    /// Every instruction set this CPU has, every head size it takes (one and several vector
    /// columns, past a register tile), row counts off the row groups, key tiles off the vector
    /// width, keys that rise so later tiles raise the row max, and causal rows whose visible keys
    /// end inside, at and before a tile.
    #[test]
    fn register_kernels_give_the_softmax_attention() {
        let levels: Vec<SimdLevel> = [SimdLevel::Avx2, SimdLevel::Avx512].into_iter().filter(|&l| l <= simd_level()).collect();
        for &level in &levels {
            for d in [8usize, 16, 24, 48, 64, 80, 128] {
                if !supports(level, d) {
                    continue;
                }
                for (rows, keys, key_tile, spread) in [(1usize, 1usize, 256usize, 1.0f32), (7, 300, 256, 1.0), (13, 37, 5, 8.0), (6, 129, 64, 1.0), (25, 515, 100, 1.0)] {
                    let (q, v) = (values(rows * d, 1 + d as u64, spread), values(keys * d, 3, 1.0));
                    // Keys grow with their index, so later tiles hold larger scores.
                    let k: Vec<f32> = values(keys * d, 2, spread).iter().enumerate().map(|(i, x)| x + (i / d) as f32 * 0.01).collect();
                    for causal_first_sees in [None, Some(1), Some(keys.saturating_sub(rows) + 1)] {
                        if causal_first_sees.is_some_and(|f| f + rows - 1 > keys) {
                            continue;
                        }
                        let sees = |r: usize| causal_first_sees.map_or(keys, |f| f + r);
                        let visible = sees(rows - 1);
                        let want = naive(&q, &k, &v, rows, d, 0.3, sees);
                        let mut out = vec![f32::NAN; rows * d];
                        let (mut max, mut sum, mut rescale) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]);
                        let state = RowState { max: &mut max, sum: &mut sum, rescale: &mut rescale };
                        let mut scratch = KernelScratch::default();
                        let keys_seen = Keys { visible, causal_first_sees };
                        // SAFETY: the level is this CPU's at most; the buffers hold what the arguments say.
                        let ran = unsafe { attend_block(level, q.as_ptr(), d, rows, k.as_ptr(), v.as_ptr(), d, keys_seen, 0.3, out.as_mut_ptr(), d, key_tile, state, &mut scratch) };
                        assert!(ran, "{level:?} d {d}");
                        let diff = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                        assert!(diff < 2e-5, "{level:?} d {d} rows {rows} keys {keys} tile {key_tile} causal {causal_first_sees:?}: {diff}");
                    }
                }
            }
        }
        // Head sizes off the vector width are left to the portable path.
        assert!(!supports(SimdLevel::Avx512, 24) && !supports(SimdLevel::Avx2, 12) && !supports(SimdLevel::Generic, 64));
    }

    /// The bf16 kernel against the f64 softmax attention of the bf16-rounded q, k and v: what
    /// is left is its rounding of the probabilities (2^-9 of each) and f32 sums, far below what
    /// a wrong pairing or mask would give. Head sizes of one and several vector columns, rows off
    /// the row groups, key tiles off the pair width, causal rows.
    #[test]
    fn bf16_kernel_gives_the_softmax_attention_of_the_rounded_values() {
        if !crate::cpu_bf16::has_bf16_dot_product() {
            eprintln!("this CPU has no AVX512-BF16: the bf16 attention kernel is not run");
            return;
        }
        let round = |x: Vec<f32>| x.iter().map(|&v| f32::from_bits((crate::cpu_bf16::round_to_bf16(v) as u32) << 16)).collect::<Vec<f32>>();
        for d in [16usize, 64, 80, 128] {
            for (rows, keys, key_tile, spread) in [(1usize, 1usize, 256usize, 1.0f32), (7, 300, 256, 1.0), (13, 37, 5, 8.0), (25, 515, 100, 1.0)] {
                let (q, v) = (values(rows * d, 1 + d as u64, spread), values(keys * d, 3, 1.0));
                let k: Vec<f32> = values(keys * d, 2, spread).iter().enumerate().map(|(i, x)| x + (i / d) as f32 * 0.01).collect();
                for causal_first_sees in [None, Some(keys.saturating_sub(rows) + 1)] {
                    if causal_first_sees.is_some_and(|f| f + rows - 1 > keys) {
                        continue;
                    }
                    let sees = |r: usize| causal_first_sees.map_or(keys, |f| f + r);
                    let want = naive(&round(q.clone()), &round(k.clone()), &round(v.clone()), rows, d, 0.3, sees);
                    let mut out = vec![f32::NAN; rows * d];
                    let (mut max, mut sum, mut rescale) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]);
                    let state = RowState { max: &mut max, sum: &mut sum, rescale: &mut rescale };
                    let mut scratch = KernelScratch::default();
                    let keys_seen = Keys { visible: sees(rows - 1), causal_first_sees };
                    // SAFETY: the buffers hold what the arguments say.
                    let ran = unsafe { attend_block_bf16(q.as_ptr(), d, rows, k.as_ptr(), v.as_ptr(), d, keys_seen, 0.3, out.as_mut_ptr(), d, key_tile, state, &mut scratch) };
                    assert!(ran, "d {d}");
                    let diff = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    // The values are within 0.5: a probability's rounding moves an output by at
                    // most 2^-9 of its share.
                    assert!(diff < 2e-3, "d {d} rows {rows} keys {keys} tile {key_tile} causal {causal_first_sees:?}: {diff}");
                }
            }
        }
    }
}
