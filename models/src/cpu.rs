//! Fused f32 kernels for the CPU: the transformer block (LayerNorm, projections, per-head q/k
//! norm, 2D rotary, attention, LayerScale residuals, GELU MLP) and stride-1 convolutions, on raw
//! buffers with the products in OpenBLAS and everything elementwise in one multithreaded,
//! vectorised pass. Built op by op from candle tensors, the same block spent most of its time in
//! single-threaded elementwise passes, scalar `exp`/`erf`, and page faults on the short-lived
//! intermediates; here each intermediate is written once.
//!
//! The products go through [`crate::blas`] (OpenBLAS when the system has it, the `gemm` crate
//! otherwise); callers fall back to the candle ops on other devices and dtypes.

use crate::blas::sgemm_raw;
use candle_core::{Result, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// A raw pointer that rayon tasks may share because each writes a disjoint range.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole Sync wrapper, not the raw field).
    pub(crate) fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// The elements of a contiguous f32 CPU tensor, borrowed in place (the storage stays read-locked
/// while this lives).
pub(crate) struct F32View<G> {
    guard: G,
    start: usize,
    end: usize,
}

impl<G: std::ops::Deref<Target = Storage>> F32View<G> {
    pub(crate) fn slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(cpu) => &cpu.as_slice::<f32>().expect("checked f32")[self.start..self.end],
            _ => unreachable!("checked CPU"),
        }
    }
}

/// A view of `t` when it is a contiguous f32 CPU tensor.
pub(crate) fn f32_view(t: &Tensor) -> Option<F32View<impl std::ops::Deref<Target = Storage> + '_>> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return None };
    cpu.as_slice::<f32>().ok()?;
    let (start, end) = layout.contiguous_offsets()?;
    Some(F32View { guard: storage, start, end })
}

/// A CPU tensor's elements as f32: borrowed in place when it already is a contiguous f32 tensor,
/// else converted (bf16/f16 weights, in parallel), so reduced-precision checkpoints keep half the
/// weight memory and still compute in f32.
pub(crate) enum F32Data<G> {
    View(F32View<G>),
    Owned(Vec<f32>),
}

impl<G: std::ops::Deref<Target = Storage>> F32Data<G> {
    pub(crate) fn slice(&self) -> &[f32] {
        match self {
            F32Data::View(v) => v.slice(),
            F32Data::Owned(v) => v,
        }
    }
}

/// [`F32Data`] of a CPU tensor of a float dtype; None on other devices or dtypes.
pub(crate) fn f32_data(t: &Tensor) -> Option<F32Data<impl std::ops::Deref<Target = Storage> + '_>> {
    use candle_core::DType;
    if !t.device().is_cpu() {
        return None;
    }
    if t.dtype() == DType::F32 && t.is_contiguous() {
        return f32_view(t).map(F32Data::View);
    }
    let t = t.contiguous().ok()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return None };
    let (start, end) = layout.contiguous_offsets()?;
    let mut out = vec![0f32; end - start];
    const PIECE: usize = 1 << 16;
    match t.dtype() {
        DType::BF16 => {
            let src = &cpu.as_slice::<half::bf16>().ok()?[start..end];
            // bf16 is the top half of an f32: widening is a shift (exact, NaNs included), which
            // vectorises where `to_f32` does not.
            out.par_chunks_mut(PIECE).zip(src.par_chunks(PIECE)).for_each(|(o, s)| o.iter_mut().zip(s).for_each(|(o, s)| *o = f32::from_bits((s.to_bits() as u32) << 16)));
        }
        DType::F16 => {
            let src = &cpu.as_slice::<half::f16>().ok()?[start..end];
            out.par_chunks_mut(PIECE).zip(src.par_chunks(PIECE)).for_each(|(o, s)| o.iter_mut().zip(s).for_each(|(o, s)| *o = s.to_f32()));
        }
        DType::F32 => out.copy_from_slice(&cpu.as_slice::<f32>().ok()?[start..end]),
        _ => return None,
    }
    Some(F32Data::Owned(out))
}

/// A product's weight [n, k] as the fused block multiplies it: f32 values, f32 values packed at
/// load ([`crate::cpu_packed`]), or bf16 bits when bf16 products are on ([`crate::cpu_bf16`]).
#[derive(Clone, Copy)]
pub(crate) enum WeightRows<'a> {
    F32(&'a [f32]),
    Packed(&'a crate::cpu_packed::PackedWeight),
    Bf16(&'a [u16]),
}

/// The elements behind [`WeightRows`]: a bf16 CPU tensor's bits borrowed in place when bf16
/// products are on, else its values as f32 ([`F32Data`]).
pub(crate) enum ProductWeight<G> {
    F32(F32Data<G>),
    Bf16 { guard: G, start: usize, end: usize },
}

impl<G: std::ops::Deref<Target = Storage>> ProductWeight<G> {
    pub(crate) fn rows(&self) -> WeightRows<'_> {
        match self {
            ProductWeight::F32(d) => WeightRows::F32(d.slice()),
            ProductWeight::Bf16 { guard, start, end } => match &**guard {
                Storage::Cpu(cpu) => WeightRows::Bf16(cpu.as_slice::<half::bf16>().expect("checked bf16")[*start..*end].reinterpret_cast()),
                _ => unreachable!("checked CPU"),
            },
        }
    }
}

/// [`ProductWeight`] of a CPU tensor of a float dtype; None on other devices or dtypes.
pub(crate) fn product_weight(t: &Tensor) -> Option<ProductWeight<impl std::ops::Deref<Target = Storage> + '_>> {
    use candle_core::DType;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return None };
    if t.dtype() == DType::BF16 && crate::cpu_bf16::bf16_products() {
        if let Some((start, end)) = layout.contiguous_offsets() {
            return Some(ProductWeight::Bf16 { guard: storage, start, end });
        }
    }
    if cpu.as_slice::<f32>().is_ok() {
        if let Some((start, end)) = layout.contiguous_offsets() {
            return Some(ProductWeight::F32(F32Data::View(F32View { guard: storage, start, end })));
        }
    }
    drop(storage);
    match f32_data(t)? {
        F32Data::Owned(v) => Some(ProductWeight::F32(F32Data::Owned(v))),
        F32Data::View(v) => Some(ProductWeight::F32(F32Data::Owned(v.slice().to_vec()))),
    }
}

/// Whether the tensor can take the fused path (f32 on the CPU).
pub(crate) fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

// ---------------------------------------------------------------------------------------------
// Elementwise maths, written so the compiler vectorises it; each public kernel dispatches to an
// AVX2+FMA build of the same code when the CPU has it.

/// `exp(x)` to about 2 ulp (Cephes' polynomial), branch-free so it vectorises; inputs below
/// -87 give exp(-87), about 1.6e-38.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 5.000_000_1e-1;
    let y = p * z + r + 1.0;
    // SAFETY: n is finite and within [-126, 128] after the clamp; the unchecked conversion is a
    // single vector instruction where `as` (saturating) would be scalarised.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    y * f32::from_bits(((n + 127) << 23) as u32)
}

/// `erf(x)` to 1.5e-7 absolute (Abramowitz & Stegun 7.1.26).
#[inline(always)]
fn erf_approx(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_72) * t + 0.254_829_6) * t;
    let y = 1.0 - poly * exp_approx(-a * a);
    y.copysign(x)
}

/// Exact-form GELU, `x/2 (1 + erf(x/sqrt 2))` (PyTorch's default `nn.GELU`).
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_approx(x * std::f32::consts::FRAC_1_SQRT_2))
}

multiversion! {
    /// `out = silu(gate) * up` elementwise, silu(x) = x / (1 + exp(-x)).
    fn silu_mul_into(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
            *o = *g / (1.0 + exp_approx(-*g)) * u;
        }
    }
}

/// The SwiGLU activation `silu(gate) * up` of two equally long buffers, in one parallel,
/// vectorised pass (candle's `silu` is a scalar `exp` on one thread: 2% of a long prefill).
pub(crate) fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len(), "silu_mul needs equally long gate and up");
    let mut out = vec![0f32; gate.len()];
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(o, (g, u))| silu_mul_into(g, u, o));
    out
}

multiversion! {
    /// `y = gelu(y + bias)` over rows of `bias.len()`.
    fn bias_gelu(y: &mut [f32], bias: &[f32]) {
        for row in y.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = gelu(*v + b);
            }
        }
    }
}

multiversion! {
    /// `y += bias` over rows of `bias.len()`.
    fn add_bias_rows(y: &mut [f32], bias: &[f32]) {
        for row in y.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

/// `y = y + bias`, or `y = gelu(y + bias)` with `gelu`, over rows of `bias.len()`, in place and in
/// parallel: a product's output gets its bias (and activation) without another buffer of its size.
pub(crate) fn add_bias_in_place(y: &mut [f32], bias: &[f32], gelu: bool) {
    assert!(!bias.is_empty() && y.len() % bias.len() == 0, "add_bias_in_place: {} values are not rows of {}", y.len(), bias.len());
    let per = rows_per_task(y.len() / bias.len(), bias.len()) * bias.len();
    if gelu {
        y.par_chunks_mut(per).for_each(|rows| bias_gelu(rows, bias));
    } else {
        y.par_chunks_mut(per).for_each(|rows| add_bias_rows(rows, bias));
    }
}

multiversion! {
    /// `x += gamma * (y + bias)` over rows of `gamma.len()` (a LayerScale'd residual branch).
    fn residual_scaled(x: &mut [f32], y: &[f32], bias: &[f32], gamma: &[f32]) {
        let c = gamma.len();
        for (xr, yr) in x.chunks_exact_mut(c).zip(y.chunks_exact(c)) {
            for i in 0..c {
                xr[i] += gamma[i] * (yr[i] + bias[i]);
            }
        }
    }
}

/// Lanes of the row sums: independent accumulators (four AVX2 or two AVX-512 registers), so the
/// sums vectorise without fast-math and no add waits for the one before it. One running sum was a
/// chain of dependent adds: LayerNorm ran at a third of its speed, 1.8% of VGGT's forward at
/// 2 frames.
const SUM_LANES: usize = 32;

/// `sum(f(x))` over a row in [`SUM_LANES`] lanes, then the lanes and the tail.
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; SUM_LANES];
    let mut chunks = x.chunks_exact(SUM_LANES);
    for ch in &mut chunks {
        for i in 0..SUM_LANES {
            acc[i] += f(ch[i]);
        }
    }
    tree_sum(acc) + chunks.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

/// The sum of N lanes (a power of two), halves added together: the adds vectorise and the chain
/// is log2(N) adds deep. Summed left to right, 64 lanes were 64 dependent scalar adds (about 200
/// cycles) after each 2,048-wide decoding dot product. Decoding moved by no more than the
/// machine's noise: its pace is set by how fast the weights arrive (`bench mllm`).
#[inline(always)]
fn tree_sum<const N: usize>(mut lanes: [f32; N]) -> f32 {
    const { assert!(N.is_power_of_two()) };
    let mut half = N / 2;
    while half > 0 {
        for i in 0..half {
            lanes[i] += lanes[i + half];
        }
        half /= 2;
    }
    lanes[0]
}

/// A row's mean and 1 / sqrt(variance + eps) (in f32, two passes like PyTorch).
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let c = x.len() as f32;
    let mean = lane_sum(x, |v| v) / c;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / c;
    (mean, 1.0 / (var + eps).sqrt())
}

multiversion! {
    /// LayerNorm of each row of `x` into `out` (every element written).
    fn layer_norm_rows(x: &[f32], out: &mut [std::mem::MaybeUninit<f32>], weight: &[f32], bias: &[f32], eps: f32) {
        let c = weight.len();
        for (xr, or) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            let (mean, rstd) = row_stats(xr, eps);
            for (((o, v), w), b) in or.iter_mut().zip(xr).zip(weight).zip(bias) {
                o.write((v - mean) * rstd * w + b);
            }
        }
    }
}

multiversion! {
    /// One token's queries or keys or values for every head, out of its slice of the fused qkv
    /// row (`src`, [heads, d]): `out = src + bias`, then per head, where given, the head's
    /// LayerNorm (`norm`: weight, bias), the rotary embedding (`rope`: this position's cos and sin
    /// [d] and the rotated section's size) and `scale`. One vectorised pass per token: element by
    /// element in the calling closure (bounds checks, no AVX) it was 2% of VGGT's forward.
    fn prepare_heads(src: &[f32], bias: &[f32], d: usize, norm: Option<(&[f32], &[f32])>, rope: Option<(&[f32], &[f32], usize)>, scale: f32, out: &mut [f32]) {
        for ((head_src, head_bias), head_out) in src.chunks_exact(d).zip(bias.chunks_exact(d)).zip(out.chunks_exact_mut(d)) {
            for ((o, s), b) in head_out.iter_mut().zip(head_src).zip(head_bias) {
                *o = s + b;
            }
            if let Some((w, b)) = norm {
                let (mean, rstd) = row_stats(head_out, 1e-5);
                for ((v, w), b) in head_out.iter_mut().zip(w).zip(b) {
                    *v = (*v - mean) * rstd * w + b;
                }
            }
            if let Some((cos, sin, section)) = rope {
                rotate(head_out, cos, sin, section);
            }
            if scale != 1.0 {
                head_out.iter_mut().for_each(|v| *v *= scale);
            }
        }
    }
}

/// Rows per rayon task for the elementwise passes: big enough to amortise the scheduling.
fn rows_per_task(rows: usize, cols: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let min_rows = (16 * 1024 / cols.max(1)).max(1);
    rows.div_ceil(4 * threads).max(min_rows)
}

/// LayerNorm over rows of width `weight.len()`, in parallel.
pub(crate) fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let c = weight.len();
    let mut out = Unwritten::new(x.len());
    let per = rows_per_task(x.len() / c, c) * c;
    let dst = SharedMut(out.as_mut_ptr());
    x.par_chunks(per).enumerate().for_each(|(i, x)| {
        // SAFETY: this task's rows of the output, inside its room, written by no other task.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(i * per) as *mut std::mem::MaybeUninit<f32>, x.len()) };
        layer_norm_rows(x, o, weight, bias, eps);
    });
    // SAFETY: the tasks' rows cover the output.
    unsafe { out.into_vec() }
}

/// `x[rows, k] · w[n, k]^T` as the fused blocks run an f32 weight that is not packed: split over
/// rayon's threads, each piece one single-threaded OpenBLAS call (for `bench blas`: OpenBLAS's
/// own threads spin for a while after a call and would take a core from the next product).
pub fn blocks_f32_product(x: &[f32], k: usize, w: &[f32]) -> Vec<f32> {
    let _single = SingleThreadedBlas::new();
    linear_nobias(x, k, w)
}

/// `x[rows, k] · w[n, k]^T` (a Linear without its bias) into a new [rows, n] buffer.
pub(crate) fn linear_nobias(x: &[f32], k: usize, w: &[f32]) -> Vec<f32> {
    let rows = x.len() / k;
    let n = w.len() / k;
    if rows <= F32_WEIGHT_DOT_ROWS {
        return rows_times_weight_rows(rows, n, |j, out| dot_rows_f32(x, k, &w[j * k..(j + 1) * k], out));
    }
    let mut y = Unwritten::new(rows * n);
    // SAFETY: x is [rows, k], w is [n, k], y is [rows, n], all row-major and fully sized; with
    // beta 0 the product writes every element of y.
    unsafe {
        par_sgemm(false, true, rows, n, k, x.as_ptr(), k, w.as_ptr(), k, 0.0, y.as_mut_ptr(), n);
        y.into_vec()
    }
}

/// `x[rows, k] · w[n, k]^T` for a fused block's weight: [`linear_nobias`] for f32 values; bf16
/// products ([`crate::cpu_bf16`]) for bf16 bits: the kernel for more rows than the one-row
/// path's, else the rounded rows dotted with each weight row, or (a CPU without AVX512-BF16)
/// the rounded rows through the f32 product of the widened weight.
pub(crate) fn linear_weight_rows(x: &[f32], k: usize, w: WeightRows) -> Result<Vec<f32>> {
    let bits = match w {
        WeightRows::F32(w) => return Ok(linear_nobias(x, k, w)),
        WeightRows::Packed(w) => {
            return match crate::cpu_packed::matmul(x, x.len() / k, w)? {
                Some(y) => Ok(y),
                // Packed where the kernel runs, so only reached if that changed: laid out again.
                None => Ok(linear_nobias(x, k, &w.unpack())),
            };
        }
        WeightRows::Bf16(bits) => bits,
    };
    let (rows, n) = (x.len() / k, bits.len() / k);
    if rows > HALF_WEIGHT_DOT_ROWS {
        if let Some(y) = crate::cpu_bf16::matmul_bf16(x, rows, k, bits, n)? {
            return Ok(y);
        }
    }
    let rounded = crate::cpu_bf16::rounded_to_bf16(x);
    if rows <= HALF_WEIGHT_DOT_ROWS {
        return Ok(rows_times_weight_rows(rows, n, |j, out| dot_rows_bf16(&rounded, k, &bits[j * k..(j + 1) * k], out)));
    }
    let widened: Vec<f32> = bits.par_iter().map(|&b| f32::from_bits((b as u32) << 16)).collect();
    Ok(linear_nobias(&rounded, k, &widened))
}

/// Rows up to which a product with half-precision weights reads them straight from memory
/// (decoding: one token's row; the bandwidth of the weights is the limit there).
const HALF_WEIGHT_DOT_ROWS: usize = 8;
/// Rows up to which an f32 product reads each weight row once and dots it with every row of x
/// (VGGT's camera trunk: one token per frame). OpenBLAS packs the whole weight first, for rows it
/// then uses twice: the camera trunk's 64 products at 2 frames took 0.245 s through it against
/// 0.145 s this way (13 against 22 GB/s of weights; equal at 4 rows; Zen 3, both cores).
const F32_WEIGHT_DOT_ROWS: usize = 3;

/// `y[rows, n]` from `dot(j, out)`, which writes output column j for every row (`out[r]`), over
/// the weight's n rows in parallel: each weight row is read from memory once, whatever `rows`.
fn rows_times_weight_rows(rows: usize, n: usize, dot: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    // yt[j] holds output column j for every row; transposed into y afterwards.
    let mut yt = vec![0f32; n * rows];
    yt.par_chunks_mut(64 * rows.max(1)).enumerate().for_each(|(chunk, out)| {
        for (i, o) in out.chunks_exact_mut(rows.max(1)).enumerate() {
            dot(chunk * 64 + i, o);
        }
    });
    let mut y = vec![0f32; rows * n];
    for j in 0..n {
        for r in 0..rows {
            y[r * n + j] = yt[j * rows + r];
        }
    }
    y
}

/// `out[r] = x[r] · widen(w)` for the `rows` rows of `x` ([rows, k]) and one weight row `w` [k].
/// 64 lanes: independent accumulators, so the loop runs at the memory's pace rather than the
/// adder's latency. Inlined into each instruction set's build by the callers below.
#[inline(always)]
fn dot_rows<W: Copy>(x: &[f32], k: usize, w: &[W], widen: impl Fn(W) -> f32, out: &mut [f32]) {
    for (xr, o) in x.chunks_exact(k).zip(out.iter_mut()) {
        let mut acc = [0f32; 64];
        let mut xs = xr.chunks_exact(64);
        let mut ws = w.chunks_exact(64);
        for (a, b) in (&mut xs).zip(&mut ws) {
            for i in 0..64 {
                acc[i] += a[i] * widen(b[i]);
            }
        }
        let mut total = tree_sum(acc);
        for (a, b) in xs.remainder().iter().zip(ws.remainder()) {
            total += a * widen(*b);
        }
        *o = total;
    }
}

multiversion! {
    /// [`dot_rows`] with one f32 weight row.
    fn dot_rows_f32(x: &[f32], k: usize, w: &[f32], out: &mut [f32]) {
        dot_rows(x, k, w, |v| v, out)
    }
}
/// Bytes of weights widened to f32 at a time for larger products: half of a server's L3, so the
/// sgemm reads the widened block from cache. Smaller blocks re-pack the activations once per block
/// (OpenBLAS packs both operands per call): 256-row blocks cost the vision tower 15% (4 frames of
/// 476x644: 29.5-31 s vs 25.2 s at 16 MiB; 64 MiB blocks, read back from memory, slowed the
/// language model's 1,024-token prefill from 37 to 41-43 s; AMD EPYC Zen 4, 32 MiB L3).
const HALF_WEIGHT_BLOCK_BYTES: usize = 16 << 20;
/// The depth (k) a widened block keeps when a weight must also be split along k: OpenBLAS already
/// makes one pass over the output per 256-384 of depth, so blocks this deep add no pass of their
/// own, while each block as wide as it can be re-packs the activations fewer times. Full-depth
/// blocks of 16 MiB were 256 rows of the connector's 16,384-wide weight: the connector's
/// 51 MB of activations packed 64 times, 24% slower than f32 weights.
const HALF_WEIGHT_BLOCK_DEPTH: usize = 1024;

/// The widened block (output rows of the weight, depth) for an [n, k] weight within `block_bytes`
/// of f32: the whole width where a [`HALF_WEIGHT_BLOCK_DEPTH`]-deep slice of it fits (the
/// activations are then packed once), else that depth and as many rows as fit. Both sides are
/// split evenly, so no block is a sliver that costs a pass of its own.
fn half_weight_block(n: usize, k: usize, block_bytes: usize) -> (usize, usize) {
    let floats = (block_bytes / 4).max(16 * 16);
    if n * k <= floats {
        return (n, k);
    }
    let even = |len: usize, most: usize| len.div_ceil(len.div_ceil(most.max(1)));
    if n * k.min(HALF_WEIGHT_BLOCK_DEPTH) <= floats {
        return (n, even(k, floats / n));
    }
    let depth = even(k, HALF_WEIGHT_BLOCK_DEPTH);
    (even(n, (floats / depth).max(16)), depth)
}

multiversion! {
    /// [`dot_rows`] with one bf16 weight row, widened in registers (bf16 is the top half of an
    /// f32).
    fn dot_rows_bf16(x: &[f32], k: usize, w: &[u16], out: &mut [f32]) {
        dot_rows(x, k, w, |b| f32::from_bits((b as u32) << 16), out)
    }
}

/// `x[rows, k] · w[n, k]^T` for f32 `x` and bf16 or f16 weights `w` on the CPU (the checkpoint's
/// precision kept in memory, half the bytes): up to [`HALF_WEIGHT_DOT_ROWS`] rows read each weight
/// once, widening in registers (bf16); more rows widen [`HALF_WEIGHT_BLOCK_BYTES`] of weights at
/// a time for the sgemm, in blocks shaped by [`half_weight_block`]. Widening is exact, so the
/// result is the f32 product of the same values. None when `w` is not a half-precision CPU tensor.
///
/// With bf16 products on ([`crate::cpu_bf16::set_bf16_products`]) and bf16 weights, `x` is
/// rounded to bf16 first, and more rows than the one-row path's go through the bf16 dot-product
/// kernel where the CPU has one.
pub(crate) fn linear_half_weights(x: &[f32], k: usize, w: &Tensor) -> Result<Option<Vec<f32>>> {
    if w.dtype() == candle_core::DType::BF16 && crate::cpu_bf16::bf16_products() {
        let rows = x.len() / k.max(1);
        if rows > HALF_WEIGHT_DOT_ROWS && w.device().is_cpu() && w.rank() == 2 && w.dim(1)? == k {
            let w = w.contiguous()?;
            let (storage, layout) = w.storage_and_layout();
            if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
                let bits: &[u16] = cpu.as_slice::<half::bf16>()?[start..end].reinterpret_cast();
                if let Some(y) = crate::cpu_bf16::matmul_bf16(x, rows, k, bits, w.dim(0)?)? {
                    return Ok(Some(y));
                }
            }
        }
        return linear_half_weights_in_blocks(&crate::cpu_bf16::rounded_to_bf16(x), k, w, HALF_WEIGHT_BLOCK_BYTES);
    }
    linear_half_weights_in_blocks(x, k, w, HALF_WEIGHT_BLOCK_BYTES)
}

/// [`linear_half_weights`] widening `block_bytes` of weights at a time (at least 16 rows).
fn linear_half_weights_in_blocks(x: &[f32], k: usize, w: &Tensor, block_bytes: usize) -> Result<Option<Vec<f32>>> {
    use candle_core::DType;
    if !w.device().is_cpu() || !matches!(w.dtype(), DType::BF16 | DType::F16) || w.rank() != 2 || w.dim(1)? != k {
        return Ok(None);
    }
    let w = w.contiguous()?;
    let n = w.dim(0)?;
    let rows = x.len() / k.max(1);
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return Ok(None) };
    let Some((start, end)) = layout.contiguous_offsets() else { return Ok(None) };
    if w.dtype() == DType::BF16 && rows <= HALF_WEIGHT_DOT_ROWS {
        let bits: &[u16] = cpu.as_slice::<half::bf16>()?[start..end].reinterpret_cast();
        return Ok(Some(rows_times_weight_rows(rows, n, |j, out| dot_rows_bf16(x, k, &bits[j * k..(j + 1) * k], out))));
    }
    let mut y = vec![0f32; rows * n];
    let _single = SingleThreadedBlas::new();
    let (block_n, block_k) = half_weight_block(n, k, block_bytes);
    let mut block = vec![0f32; block_n * block_k];
    for j0 in (0..n).step_by(block_n) {
        let nb = block_n.min(n - j0);
        for k0 in (0..k).step_by(block_k) {
            crate::nn::check_cancelled()?;
            let kb = block_k.min(k - k0);
            let piece = &mut block[..nb * kb];
            // Weight row j0 + r, columns k0..k0 + kb.
            let src_row = |r: usize| start + (j0 + r) * k + k0..start + (j0 + r) * k + k0 + kb;
            match w.dtype() {
                DType::BF16 => {
                    let src = cpu.as_slice::<half::bf16>()?;
                    piece.par_chunks_mut(kb).enumerate().for_each(|(r, o)| o.iter_mut().zip(&src[src_row(r)]).for_each(|(o, s)| *o = f32::from_bits((s.to_bits() as u32) << 16)));
                }
                _ => {
                    let src = cpu.as_slice::<half::f16>()?;
                    piece.par_chunks_mut(kb).enumerate().for_each(|(r, o)| o.iter_mut().zip(&src[src_row(r)]).for_each(|(o, s)| *o = s.to_f32()));
                }
            }
            // The first slice of the depth writes the output, the others add to it.
            let beta = if k0 == 0 { 0.0 } else { 1.0 };
            // SAFETY: columns k0..k0+kb of x ([rows, k]); the block is [nb, kb]; columns j0..j0+nb of y ([rows, n]).
            unsafe { par_sgemm(false, true, rows, nb, kb, x.as_ptr().add(k0), k, piece.as_ptr(), kb, beta, y.as_mut_ptr().add(j0), n) };
        }
    }
    Ok(Some(y))
}

/// Single-threaded BLAS while in scope: the fused kernels split each product over rayon's
/// threads themselves ([`par_sgemm`]), so the whole block runs on one pool and OpenBLAS's own
/// workers are not left spinning (`sched_yield`) against it between products. The previous
/// thread count is restored on drop. (Process-wide: another thread's BLAS calls meanwhile run
/// single-threaded too, which costs speed, not correctness.)
pub(crate) struct SingleThreadedBlas(());

/// How many guards are alive (on any thread) and the thread count to restore when the last goes:
/// the VGGT worker and the chat thread (Spatial-MLLM's spatial encoder) may hold guards at once,
/// and the first one's saved count must be the one restored.
static BLAS_GUARDS: std::sync::Mutex<(usize, i32)> = std::sync::Mutex::new((0, 1));

impl SingleThreadedBlas {
    pub(crate) fn new() -> Self {
        let mut guards = BLAS_GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        if guards.0 == 0 {
            guards.1 = crate::blas::threads();
            crate::blas::set_threads(1);
        }
        guards.0 += 1;
        Self(())
    }
}

impl Drop for SingleThreadedBlas {
    fn drop(&mut self) {
        let mut guards = BLAS_GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        guards.0 -= 1;
        if guards.0 == 0 {
            crate::blas::set_threads(guards.1);
        }
    }
}

/// Row-major `C = op(A) op(B) + beta C` split over rayon's threads along C's longer side, each
/// piece one single-threaded OpenBLAS call (see [`SingleThreadedBlas`]). Every piece packs all of
/// the operand it shares, so sharing the smaller one packs least: split by rows, each thread
/// re-packed (and read from memory) the whole of a weight wider than the token count, 11% of
/// VGGT's cycles at 2 frames and the whole shifted image per convolution tap.
///
/// # Safety
/// As [`sgemm_raw`]: every element the leading dimensions address lies inside the buffers.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn par_sgemm(ta: bool, tb: bool, m: usize, n: usize, k: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, beta: f32, c: *mut f32, ldc: usize) {
    let threads = rayon::current_num_threads().max(1);
    let (a, b, c) = (a as usize, b as usize, c as usize);
    let f = std::mem::size_of::<f32>();
    let split = |len: usize| -> Vec<(usize, usize)> {
        let pieces = threads.min(len.div_ceil(32)).max(1);
        (0..pieces).map(|i| (len * i / pieces, len * (i + 1) / pieces)).filter(|(s, e)| e > s).collect()
    };
    if m >= n {
        split(m).into_par_iter().for_each(|(r0, r1)| {
            let a = a + f * if ta { r0 } else { r0 * lda };
            // SAFETY: rows r0..r1 of op(A) and C, inside the caller's buffers.
            unsafe { sgemm_raw(ta, tb, r1 - r0, n, k, 1.0, a as *const f32, lda, b as *const f32, ldb, beta, (c + f * r0 * ldc) as *mut f32, ldc, false) };
        });
    } else {
        split(n).into_par_iter().for_each(|(c0, c1)| {
            let b = b + f * if tb { c0 * ldb } else { c0 };
            // SAFETY: columns c0..c1 of op(B) and C, inside the caller's buffers.
            unsafe { sgemm_raw(ta, tb, m, c1 - c0, k, 1.0, a as *const f32, lda, b as *const f32, ldb, beta, (c + f * c0) as *mut f32, ldc, false) };
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The transformer block.

/// The weights of a pre-norm block with LayerScale, as f32 slices.
pub(crate) struct BlockWeights<'a> {
    pub norm1: (&'a [f32], &'a [f32], f32),
    pub qkv: (WeightRows<'a>, &'a [f32]),
    pub qk_norm: Option<((&'a [f32], &'a [f32]), (&'a [f32], &'a [f32]))>,
    pub proj: (WeightRows<'a>, &'a [f32]),
    pub gamma1: &'a [f32],
    pub norm2: (&'a [f32], &'a [f32], f32),
    pub fc1: (WeightRows<'a>, &'a [f32]),
    pub fc2: (WeightRows<'a>, &'a [f32]),
    pub gamma2: &'a [f32],
    pub num_heads: usize,
}

/// Rotary tables as slices: cos/sin [T, head_dim] and the rotate-half section size.
pub(crate) struct Rope<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub section: usize,
}

// Token chunks (bounding the [chunk, 4C] MLP intermediate, with a cancel check between them)
// are the op-by-op path's.
use crate::nn::TOKEN_CHUNK;

/// `x + ls1(attn(norm1(x)))`, then `+ ls2(mlp(norm2(.)))` for x [b, t, c] row-major.
pub(crate) fn block_forward(x: &[f32], b: usize, t: usize, w: &BlockWeights, rope: Option<&Rope>) -> Result<Vec<f32>> {
    let c = w.gamma1.len();
    let n = b * t;
    let heads = w.num_heads;
    let d = c / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let _blas = SingleThreadedBlas::new();
    // q, k, v in [b, heads, t, d], normed, rotated (and q scaled) on the way in.
    let mut q = Unwritten::cache_aligned(n * c);
    let mut k = Unwritten::cache_aligned(n * c);
    let mut v = Unwritten::cache_aligned(n * c);
    let (qp, kp, vp) = (SharedMut(q.as_mut_ptr()), SharedMut(k.as_mut_ptr()), SharedMut(v.as_mut_ptr()));
    let mut start = 0;
    while start < n {
        crate::nn::check_cancelled()?;
        let len = TOKEN_CHUNK.min(n - start);
        let xs = &x[start * c..(start + len) * c];
        let normed = layer_norm(xs, w.norm1.0, w.norm1.1, w.norm1.2);
        let qkv = linear_weight_rows(&normed, c, w.qkv.0)?;
        drop(normed);
        let per = rows_per_task(len, 3 * c);
        qkv.par_chunks(per * 3 * c).enumerate().for_each(|(task, rows)| {
            let mut prepared = vec![0f32; c];
            for (r, row) in rows.chunks_exact(3 * c).enumerate() {
                let token = start + task * per + r;
                let (bi, ti) = (token / t, token % t);
                for (which, ptr) in [(0usize, qp), (1, kp), (2, vp)] {
                    let off = which * c;
                    let norm = w.qk_norm.as_ref().filter(|_| which < 2).map(|(qn, kn)| if which == 0 { (qn.0, qn.1) } else { (kn.0, kn.1) });
                    let rotary = rope.filter(|_| which < 2).map(|rope| (&rope.cos[ti * d..(ti + 1) * d], &rope.sin[ti * d..(ti + 1) * d], rope.section));
                    let head_scale = if which == 0 { scale } else { 1.0 };
                    prepare_heads(&row[off..off + c], &w.qkv.1[off..off + c], d, norm, rotary, head_scale, &mut prepared);
                    for h in 0..heads {
                        let dst = ((bi * heads + h) * t + ti) * d;
                        // SAFETY: token (bi, ti) and head h own this d-element slot alone.
                        unsafe { std::ptr::copy_nonoverlapping(prepared.as_ptr().add(h * d), ptr.0.add(dst), d) };
                    }
                }
            }
        });
        start += len;
    }
    // SAFETY: every token's every head was written above.
    let (q, k, v) = unsafe { (q.into_cache_aligned(), k.into_cache_aligned(), v.into_cache_aligned()) };
    let attended = attention(&q, &k, &v, b, heads, t, d, 1.0)?;
    drop((q, k, v));

    let mut out = x.to_vec();
    let mut start = 0;
    while start < n {
        crate::nn::check_cancelled()?;
        let len = TOKEN_CHUNK.min(n - start);
        let range = start * c..(start + len) * c;
        let y = linear_weight_rows(&attended[range.clone()], c, w.proj.0)?;
        par_rows2(&mut out[range], &y, c, |o, y| residual_scaled(o, y, w.proj.1, w.gamma1));
        start += len;
    }
    drop(attended);

    let hidden = w.fc1.1.len();
    let mut start = 0;
    while start < n {
        crate::nn::check_cancelled()?;
        let len = TOKEN_CHUNK.min(n - start);
        let range = start * c..(start + len) * c;
        let normed = layer_norm(&out[range.clone()], w.norm2.0, w.norm2.1, w.norm2.2);
        let mut h = linear_weight_rows(&normed, c, w.fc1.0)?;
        drop(normed);
        add_bias_in_place(&mut h, w.fc1.1, true);
        let y = linear_weight_rows(&h, hidden, w.fc2.0)?;
        drop(h);
        par_rows2(&mut out[range], &y, c, |o, y| residual_scaled(o, y, w.fc2.1, w.gamma2));
        start += len;
    }
    Ok(out)
}

/// An f32 buffer that starts on a cache line (64 bytes), so vector loads of its rows never
/// straddle two lines: glibc's large allocations begin 16 bytes into a page, which put every
/// 64-float row of an attention head's values across a line boundary.
pub(crate) struct CacheAligned {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

/// f32s per cache line (64 bytes).
pub(crate) const CACHE_LINE_F32S: usize = 64 / std::mem::size_of::<f32>();

/// Where in `buf` (which holds CACHE_LINE_F32S - 1 spare elements) the first cache line begins.
pub(crate) fn cache_line_offset(buf: &[f32]) -> usize {
    buf.as_ptr().align_offset(64).min(CACHE_LINE_F32S - 1)
}

impl std::ops::Deref for CacheAligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for CacheAligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Room for `len` f32s that a kernel writes, every one of them, through [`Unwritten::as_mut_ptr`]
/// before anything reads them: no zeroing pass first. Zeroing each product's output, the
/// LayerNorms' and the attention's on the calling thread, while the other cores waited, was about
/// 2.4% of the wall time of VGGT's forward at 2 frames.
pub(crate) struct Unwritten {
    // Empty (len 0) until written; the room is its capacity.
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl Unwritten {
    pub(crate) fn new(len: usize) -> Self {
        Self { buf: Vec::with_capacity(len), start: 0, len }
    }

    /// Room whose first element starts a cache line (for [`CacheAligned`]).
    pub(crate) fn cache_aligned(len: usize) -> Self {
        let buf: Vec<f32> = Vec::with_capacity(len + CACHE_LINE_F32S - 1);
        let start = cache_line_offset(&buf);
        Self { buf, start, len }
    }

    /// Where element 0 goes; elements 0..len follow it.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        // In bounds: the capacity holds start + len elements.
        self.buf.as_mut_ptr().wrapping_add(self.start)
    }

    /// The written elements.
    ///
    /// # Safety
    /// All `len` elements were written through [`Unwritten::as_mut_ptr`].
    pub(crate) unsafe fn into_vec(mut self) -> Vec<f32> {
        assert_eq!(self.start, 0, "a cache-aligned buffer is taken with into_cache_aligned");
        // SAFETY: the caller wrote 0..len, within the capacity.
        unsafe { self.buf.set_len(self.len) };
        self.buf
    }

    /// The written elements, starting a cache line.
    ///
    /// # Safety
    /// All `len` elements were written through [`Unwritten::as_mut_ptr`].
    pub(crate) unsafe fn into_cache_aligned(mut self) -> CacheAligned {
        let p = self.buf.as_mut_ptr();
        // SAFETY: the padding before the written elements is zeroed, so all of 0..start + len is
        // initialised, within the capacity.
        unsafe {
            for i in 0..self.start {
                p.add(i).write(0.0);
            }
            self.buf.set_len(self.start + self.len);
        }
        CacheAligned { buf: self.buf, start: self.start, len: self.len }
    }
}

/// Runs `f` over matching row blocks of `a` (mutable) and `b`, both with rows of `c`.
fn par_rows2(a: &mut [f32], b: &[f32], c: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) {
    let per = rows_per_task(a.len() / c, c) * c;
    a.par_chunks_mut(per).zip(b.par_chunks(per)).for_each(|(a, b)| f(a, b));
}

/// Rotate-half rotary embedding within each `section` of the head: `x cos + rot(x) sin`.
#[inline(always)]
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], section: usize) {
    let half = section / 2;
    for ((xs, cs), ss) in x.chunks_exact_mut(section).zip(cos.chunks_exact(section)).zip(sin.chunks_exact(section)) {
        let (first, second) = xs.split_at_mut(half);
        let (cos_first, cos_second) = cs.split_at(half);
        let (sin_first, sin_second) = ss.split_at(half);
        for ((((a, b), (ca, cb)), sa), sb) in first.iter_mut().zip(second.iter_mut()).zip(cos_first.iter().zip(cos_second)).zip(sin_first).zip(sin_second) {
            let (x0, x1) = (*a, *b);
            *a = x0 * ca - x1 * sa;
            *b = x1 * cb + x0 * sb;
        }
    }
}

/// How the attention splits its work: `query_block` queries per work item (each item reads its
/// head's keys and values once, so bigger blocks read them fewer times) and `key_tile` keys per
/// step of the online softmax (the [query_block, key_tile] scores stay in the core's L2 however
/// long the sequence: VGGT's global attention at 16 frames scores 25k keys per query, and a whole
/// row block of 64 queries was 6.4 MB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionTiling {
    pub query_block: usize,
    pub key_tile: usize,
    pub kernel: AttentionKernel,
}

/// What computes each key tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// Register-tiled AVX-512/AVX2 micro-kernels (`cpu_attention`): the tile's keys transposed
    /// once, then a few query rows at a time through scores, softmax and values while the scores
    /// are in L1. Where the CPU or the head size does not allow them, `Blas` runs instead.
    Registers,
    /// Two OpenBLAS products per key tile (scores, then values) around the softmax.
    Blas,
}

impl AttentionTiling {
    /// Chosen with `spatial-viewer bench attention` (AMD EPYC Zen 4, 1 MB L2 per core): VGGT's
    /// global attention at 16 frames of 476x644 ran at 137 GFLOP/s against 112 for 64-query
    /// blocks of whole rows; frame and causal attention ran the same. 256 x 256 scores are 256 KB,
    /// within the L2 of older cores too.
    pub const DEFAULT: Self = Self { query_block: 256, key_tile: 256, kernel: AttentionKernel::Registers };

    /// This tiling for `queries` queries over at most `keys` keys: no bigger than they need.
    fn clamped(self, queries: usize, keys: usize) -> Self {
        Self { query_block: self.query_block.min(queries.max(1)), key_tile: self.key_tile.min(keys.max(1)), kernel: self.kernel }
    }
}

multiversion! {
    /// One key tile of an online softmax over each row of `x` ([rows, cols]): `exp(x - m)` in
    /// place, where `m` is the row's running max (`max`, updated); `sum` becomes
    /// `sum * rescale + the tile's sum` and `rescale` gets `exp(old max - new max)`, by which the
    /// caller scales what it accumulated from earlier tiles. Before the first tile, `max` is
    /// -inf and `sum` 0.
    fn softmax_tile(x: &mut [f32], cols: usize, max: &mut [f32], sum: &mut [f32], rescale: &mut [f32]) {
        for (r, row) in x.chunks_exact_mut(cols).enumerate() {
            // Eight independent lanes (max and sum) so the loops vectorise without fast-math.
            let mut lanes = [f32::NEG_INFINITY; 8];
            let mut chunks = row.chunks_exact(8);
            for ch in &mut chunks {
                for i in 0..8 {
                    lanes[i] = if ch[i] > lanes[i] { ch[i] } else { lanes[i] };
                }
            }
            let mut m = lanes.iter().fold(max[r], |m, &v| m.max(v));
            for &v in chunks.remainder() {
                m = m.max(v);
            }
            let mut acc = [0f32; 8];
            let mut chunks = row.chunks_exact_mut(8);
            for ch in &mut chunks {
                for i in 0..8 {
                    let e = exp_approx(ch[i] - m);
                    ch[i] = e;
                    acc[i] += e;
                }
            }
            let mut total: f32 = acc.iter().sum();
            for v in chunks.into_remainder() {
                *v = exp_approx(*v - m);
                total += *v;
            }
            // exp_approx(-inf) is 1.6e-38 rather than 0; the first tile's sum is 0 anyway.
            rescale[r] = exp_approx(max[r] - m);
            sum[r] = sum[r] * rescale[r] + total;
            max[r] = m;
        }
    }
}

/// One work item's buffers: the scores of one key tile and the running row max, sum and rescale.
struct AttendScratch {
    scores: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    rescale: Vec<f32>,
    kernel: AttentionKernel,
    registers: crate::cpu_attention::KernelScratch,
}

impl AttendScratch {
    fn new(rows: usize, tiling: AttentionTiling) -> Self {
        // The register kernels keep their own (smaller) score buffer.
        let scores = if tiling.kernel == AttentionKernel::Blas { vec![0.0; rows * tiling.key_tile] } else { Vec::new() };
        Self { scores, max: vec![0.0; rows], sum: vec![0.0; rows], rescale: vec![0.0; rows], kernel: tiling.kernel, registers: Default::default() }
    }
}

use crate::cpu_attention::Keys;

/// `rows` queries (row stride `q_stride`) against keys (and values) [0..keys.visible, d], key
/// tile by key tile with an online softmax: out rows (stride `out_stride`) = softmax(scale q k^T) v.
///
/// # Safety
/// q holds rows x d at its stride, k and v at least `keys.visible` rows of d, out rows x d at its
/// stride, written by no one else meanwhile; the scratch was made for at least `rows` rows.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_block(q: *const f32, q_stride: usize, rows: usize, k: *const f32, v: *const f32, d: usize, keys: Keys, scale: f32, out: *mut f32, out_stride: usize, key_tile: usize, scratch: &mut AttendScratch) {
    let AttendScratch { scores, max, sum, rescale, kernel, registers } = scratch;
    // The register kernels transpose each key tile, which pays off only over enough query rows
    // (one decoding step has one per head).
    if *kernel == AttentionKernel::Registers && rows >= crate::cpu_attention::MIN_ROWS {
        // With bf16 products on, the attention's two products are bf16 too where the CPU has
        // AVX512-BF16 (elsewhere it stays f32).
        if crate::cpu_bf16::bf16_products() {
            let state = crate::cpu_attention::RowState { max, sum, rescale };
            // SAFETY: the caller's contract is the kernel's.
            if unsafe { crate::cpu_attention::attend_block_bf16(q, q_stride, rows, k, v, d, keys, scale, out, out_stride, key_tile, state, registers) } {
                return;
            }
        }
        let state = crate::cpu_attention::RowState { max, sum, rescale };
        // SAFETY: the caller's contract is the kernel's.
        if unsafe { crate::cpu_attention::attend_block(crate::multiversion::simd_level(), q, q_stride, rows, k, v, d, keys, scale, out, out_stride, key_tile, state, registers) } {
            return;
        }
    }
    // Made lazily where the register kernels were meant to run.
    if scores.len() < rows * key_tile {
        scores.resize(rows * key_tile, 0.0);
    }
    max[..rows].fill(f32::NEG_INFINITY);
    sum[..rows].fill(0.0);
    let mut start = 0;
    while start < keys.visible {
        let n = key_tile.min(keys.visible - start);
        let s = &mut scores[..rows * n];
        unsafe { sgemm_raw(false, true, rows, n, d, scale, q, q_stride, k.add(start * d), d, 0.0, s.as_mut_ptr(), n, false) };
        if let Some(first_sees) = keys.causal_first_sees {
            for r in 0..rows {
                let sees = first_sees + r;
                if sees < start + n {
                    s[r * n + sees.saturating_sub(start)..(r + 1) * n].fill(f32::NEG_INFINITY);
                }
            }
        }
        softmax_tile(s, n, &mut max[..rows], &mut sum[..rows], &mut rescale[..rows]);
        if start > 0 {
            for (r, &f) in rescale[..rows].iter().enumerate() {
                if f != 1.0 {
                    let row = unsafe { std::slice::from_raw_parts_mut(out.add(r * out_stride), d) };
                    row.iter_mut().for_each(|x| *x *= f);
                }
            }
        }
        let beta = if start == 0 { 0.0 } else { 1.0 };
        unsafe { sgemm_raw(false, false, rows, d, n, 1.0, s.as_ptr(), n, v.add(start * d), d, beta, out, out_stride, false) };
        start += n;
    }
    for (r, total) in sum[..rows].iter().enumerate() {
        let row = unsafe { std::slice::from_raw_parts_mut(out.add(r * out_stride), d) };
        let inv = 1.0 / total;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Runs `f(scratch, batch_head, first_query, queries)` for every (batch x head, block of up to
/// `tiling.query_block` queries) of `batch_heads` heads over `tq` queries, spread over the cores
/// with one scratch per core; a cancel is noticed between groups of items.
fn for_each_query_block(batch_heads: usize, tq: usize, tiling: AttentionTiling, f: impl Fn(&mut AttendScratch, usize, usize, usize) + Sync) -> Result<()> {
    let block = tiling.query_block;
    let blocks = tq.div_ceil(block);
    let items = batch_heads * blocks;
    let group = 16 * rayon::current_num_threads().max(1);
    let _blas = SingleThreadedBlas::new();
    let mut first = 0;
    while first < items {
        crate::nn::check_cancelled()?;
        let last = (first + group).min(items);
        (first..last).into_par_iter().for_each_init(
            || AttendScratch::new(block, tiling),
            |scratch, item| {
                let (bh, qb) = (item / blocks, item % blocks);
                let q0 = qb * block;
                f(scratch, bh, q0, block.min(tq - q0));
            },
        );
        first = last;
    }
    Ok(())
}

/// Softmax attention `softmax(scale q k^T) v` for q, k, v in [b, heads, t, d]; returns
/// [b, t, heads*d].
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(q: &[f32], k: &[f32], v: &[f32], b: usize, heads: usize, t: usize, d: usize, scale: f32) -> Result<Vec<f32>> {
    attention_tiled(q, k, v, b, heads, t, d, scale, AttentionTiling::DEFAULT)
}

/// [`attention`] with a chosen tiling (the benchmark compares them).
#[allow(clippy::too_many_arguments)]
pub fn attention_tiled(q: &[f32], k: &[f32], v: &[f32], b: usize, heads: usize, t: usize, d: usize, scale: f32, tiling: AttentionTiling) -> Result<Vec<f32>> {
    let size = b * heads * t * d;
    if q.len() != size || k.len() != size || v.len() != size || tiling.query_block == 0 || tiling.key_tile == 0 {
        candle_core::bail!("attention: q, k, v of {}, {}, {} values for [{b}, {heads}, {t}, {d}], {tiling:?}", q.len(), k.len(), v.len());
    }
    let tiling = tiling.clamped(t, t);
    let c = heads * d;
    let mut out = Unwritten::new(b * t * c);
    let out_ptr = SharedMut(out.as_mut_ptr());
    for_each_query_block(b * heads, t, tiling, |scratch, bh, q0, len| {
        let (bi, h) = (bh / heads, bh % heads);
        let base = bh * t * d;
        let keys = Keys { visible: t, causal_first_sees: None };
        // SAFETY: the block's queries, this head's keys and values, and rows q0.. of batch bi in
        // head h's columns of the output, which no other item writes.
        unsafe { attend_block(q.as_ptr().add(base + q0 * d), d, len, k.as_ptr().add(base), v.as_ptr().add(base), d, keys, scale, out_ptr.ptr().add((bi * t + q0) * c + h * d), c, tiling.key_tile, scratch) };
    })?;
    // SAFETY: the items cover every (batch, head, query) once, and each writes its rows' outputs
    // (the first key tile overwrites, later ones accumulate).
    Ok(unsafe { out.into_vec() })
}

/// Causal softmax attention with grouped-query heads (the language model's): q [b, heads, tq, d],
/// k and v [b, kv_heads, tk, d]; query i sits at absolute position `q_offset + i` and sees keys
/// 0..=q_offset+i; head h reads kv head h / (heads / kv_heads). Returns [b, heads, tq, d]. Each
/// block of queries scores only the keys its last query can see and masks the rest.
#[allow(clippy::too_many_arguments)]
pub(crate) fn causal_attention(q: &[f32], k: &[f32], v: &[f32], b: usize, heads: usize, kv_heads: usize, tq: usize, tk: usize, d: usize, q_offset: usize, scale: f32) -> Result<Vec<f32>> {
    causal_attention_tiled(q, k, v, b, heads, kv_heads, tq, tk, d, q_offset, scale, AttentionTiling::DEFAULT)
}

/// [`causal_attention`] with a chosen tiling (the benchmark compares them).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_tiled(q: &[f32], k: &[f32], v: &[f32], b: usize, heads: usize, kv_heads: usize, tq: usize, tk: usize, d: usize, q_offset: usize, scale: f32, tiling: AttentionTiling) -> Result<Vec<f32>> {
    causal_attention_in_rooms(q, k, v, b, heads, kv_heads, tq, tk, tk, d, q_offset, scale, tiling)
}

/// [`causal_attention`] over a KV cache that keeps room for more tokens: each kv head's keys and
/// values are the first `tk` of `kv_rows` rows, so k and v are [b, kv_heads, kv_rows, d].
#[allow(clippy::too_many_arguments)]
pub(crate) fn causal_attention_cached(q: &[f32], k: &[f32], v: &[f32], heads: usize, kv_heads: usize, tq: usize, tk: usize, kv_rows: usize, d: usize, q_offset: usize, scale: f32) -> Result<Vec<f32>> {
    causal_attention_in_rooms(q, k, v, 1, heads, kv_heads, tq, tk, kv_rows, d, q_offset, scale, AttentionTiling::DEFAULT)
}

#[allow(clippy::too_many_arguments)]
fn causal_attention_in_rooms(q: &[f32], k: &[f32], v: &[f32], b: usize, heads: usize, kv_heads: usize, tq: usize, tk: usize, kv_rows: usize, d: usize, q_offset: usize, scale: f32, tiling: AttentionTiling) -> Result<Vec<f32>> {
    if kv_heads == 0 || heads % kv_heads != 0 || q_offset + tq > tk || tk > kv_rows || tiling.query_block == 0 || tiling.key_tile == 0 {
        candle_core::bail!("causal attention: {heads} heads over {kv_heads} kv heads, {tq} queries after {q_offset} of {tk} keys (room for {kv_rows}), {tiling:?}");
    }
    if q.len() != b * heads * tq * d || k.len() != b * kv_heads * kv_rows * d || v.len() != k.len() {
        candle_core::bail!("causal attention: q, k, v of {}, {}, {} values for {b} x {heads} heads x {tq} queries over {kv_heads} x {kv_rows} key rows of {d}", q.len(), k.len(), v.len());
    }
    let tiling = tiling.clamped(tq, tk);
    let rep = heads / kv_heads;
    let mut out = vec![0f32; b * heads * tq * d];
    let out_ptr = SharedMut(out.as_mut_ptr());
    for_each_query_block(b * heads, tq, tiling, |scratch, bh, q0, len| {
        let kv = bh / heads * kv_heads + bh % heads / rep;
        let q_base = (bh * tq + q0) * d;
        // The block's last query sees keys 0..visible; earlier rows are masked.
        let keys = Keys { visible: q_offset + q0 + len, causal_first_sees: Some(q_offset + q0 + 1) };
        // SAFETY: the block's queries and output rows (its own), this kv head's keys and values.
        unsafe { attend_block(q.as_ptr().add(q_base), d, len, k.as_ptr().add(kv * kv_rows * d), v.as_ptr().add(kv * kv_rows * d), d, keys, scale, out_ptr.ptr().add(q_base), d, tiling.key_tile, scratch) };
    })?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Convolution.

/// How a stride-1 convolution is computed on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// 3x3 kernels by Winograd's F(4x4, 3x3) (a quarter of the multiply-adds) on maps of at
    /// least [`WINOGRAD_MIN_PIXELS`] output pixels, everything else by shifted products.
    Winograd,
    /// One matrix product per kernel tap (the direct convolution's arithmetic).
    ShiftedProducts,
}

impl ConvAlgorithm {
    pub const DEFAULT: Self = Self::Winograd;
}

/// Output pixels below which a 3x3 convolution takes shifted products even under
/// [`ConvAlgorithm::Winograd`]: a few dozen 4x4 tiles do not repay transforming every filter
/// (`bench conv`: Winograd 0.5-0.8x at 16x16 and 19x11 maps, 1.2-1.6x at 37x21 and 32x32).
pub const WINOGRAD_MIN_PIXELS: usize = 512;

/// Stride-1 2D convolution with zero padding `pad` and a square kernel `k`.
/// x: [n, c_in, h, w], weight: [c_out, c_in, k, k] -> [n, c_out, h + 2 pad + 1 - k, w + 2 pad + 1 - k].
pub fn conv2d_stride1(x: &[f32], n: usize, c_in: usize, h: usize, w: usize, weight: &[f32], c_out: usize, k: usize, pad: usize, bias: Option<&[f32]>, algorithm: ConvAlgorithm) -> Vec<f32> {
    assert!(h + 2 * pad >= k && w + 2 * pad >= k && x.len() == n * c_in * h * w && weight.len() == c_out * c_in * k * k, "convolution shapes do not match");
    let out_pixels = (h + 2 * pad + 1 - k) * (w + 2 * pad + 1 - k);
    if k == 3 && algorithm == ConvAlgorithm::Winograd && out_pixels >= WINOGRAD_MIN_PIXELS {
        return crate::cpu_winograd::conv3x3(x, n, c_in, h, w, weight, c_out, pad, bias);
    }
    conv2d_shifted_products(x, n, c_in, h, w, weight, c_out, k, pad, bias)
}

/// Stride-1 2D convolution as one matrix product per kernel tap on a padded copy of the input:
/// each tap reads the padded image shifted by (dy, dx) as a [C_in, H_out x W_pad] matrix, so
/// nothing is unfolded (no im2col buffer); the W_pad - W_out extra columns per row are computed
/// and dropped.
fn conv2d_shifted_products(x: &[f32], n: usize, c_in: usize, h: usize, w: usize, weight: &[f32], c_out: usize, k: usize, pad: usize, bias: Option<&[f32]>) -> Vec<f32> {
    if k == 1 && pad == 0 {
        return conv1x1(x, n, c_in, h * w, weight, c_out, bias);
    }
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let (ho, wo) = (hp + 1 - k, wp + 1 - k);
    // The last tap reads up to (k-1) elements past the last padded row: one spare row each.
    let plane = (hp + 1) * wp;
    // Per-tap weights [c_out, c_in] (contiguous for BLAS).
    let taps: Vec<Vec<f32>> = (0..k * k)
        .map(|tap| (0..c_out * c_in).map(|i| weight[i * k * k + tap]).collect())
        .collect();
    let _blas = SingleThreadedBlas::new();
    let mut out = vec![0f32; n * c_out * ho * wo];
    let mut padded = vec![0f32; c_in * plane];
    let mut wide = vec![0f32; c_out * ho * wp];
    for img in 0..n {
        let src = &x[img * c_in * h * w..(img + 1) * c_in * h * w];
        padded.par_chunks_mut(plane).zip(src.par_chunks(h * w)).for_each(|(p, s)| {
            for y in 0..h {
                p[(y + pad) * wp + pad..(y + pad) * wp + pad + w].copy_from_slice(&s[y * w..(y + 1) * w]);
            }
        });
        for (tap, wt) in taps.iter().enumerate() {
            let (dy, dx) = (tap / k, tap % k);
            // SAFETY: tap weights [c_out, c_in]; the shifted view reads ho*wp elements of each
            // channel plane starting at dy*wp + dx, which stays inside the plane's spare row.
            unsafe {
                par_sgemm(false, false, c_out, ho * wp, c_in, wt.as_ptr(), c_in, padded.as_ptr().add(dy * wp + dx), plane, if tap == 0 { 0.0 } else { 1.0 }, wide.as_mut_ptr(), ho * wp)
            };
        }
        let dst = &mut out[img * c_out * ho * wo..(img + 1) * c_out * ho * wo];
        dst.par_chunks_mut(ho * wo).zip(wide.par_chunks(ho * wp)).enumerate().for_each(|(co, (o, src))| {
            let b = bias.map_or(0.0, |b| b[co]);
            for y in 0..ho {
                for xx in 0..wo {
                    o[y * wo + xx] = src[y * wp + xx] + b;
                }
            }
        });
    }
    out
}

/// 2D convolution with any stride (the DPT heads' stride-2 downsampling) as one product
/// [c_out, c_in k k] x [c_in k k, h_out w_out] per image over the unfolded input.
/// x: [n, c_in, h, w], weight: [c_out, c_in, k, k] -> [n, c_out, h_out, w_out] with
/// h_out = (h + 2 pad - k) / stride + 1.
pub(crate) fn conv2d_unfolded(x: &[f32], n: usize, c_in: usize, h: usize, w: usize, weight: &[f32], c_out: usize, k: usize, stride: usize, pad: usize, bias: Option<&[f32]>) -> Vec<f32> {
    assert!(stride > 0 && h + 2 * pad >= k && w + 2 * pad >= k, "convolution shapes do not match");
    let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
    let pixels = ho * wo;
    let mut columns = vec![0f32; c_in * k * k * pixels];
    let _blas = SingleThreadedBlas::new();
    let mut out = vec![0f32; n * c_out * pixels];
    for img in 0..n {
        let src = &x[img * c_in * h * w..(img + 1) * c_in * h * w];
        // Row (ci, dy, dx) of the unfolded input: input pixel (y stride + dy - pad, x stride + dx - pad).
        columns.par_chunks_mut(k * k * pixels).zip(src.par_chunks(h * w)).for_each(|(rows, plane)| {
            for (tap, row) in rows.chunks_exact_mut(pixels).enumerate() {
                let (dy, dx) = (tap / k, tap % k);
                for oy in 0..ho {
                    let y = (oy * stride + dy) as isize - pad as isize;
                    for ox in 0..wo {
                        let xx = (ox * stride + dx) as isize - pad as isize;
                        row[oy * wo + ox] = if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w { plane[y as usize * w + xx as usize] } else { 0.0 };
                    }
                }
            }
        });
        weights_times_planes(weight, &columns, pixels, bias, &mut out[img * c_out * pixels..(img + 1) * c_out * pixels]);
    }
    out
}

/// 1x1 convolution: one product per image straight into the output (no padded copy).
/// x: [n, c_in, pixels], weight: [c_out, c_in].
fn conv1x1(x: &[f32], n: usize, c_in: usize, pixels: usize, weight: &[f32], c_out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let _blas = SingleThreadedBlas::new();
    let mut out = vec![0f32; n * c_out * pixels];
    for img in 0..n {
        weights_times_planes(weight, &x[img * c_in * pixels..(img + 1) * c_in * pixels], pixels, bias, &mut out[img * c_out * pixels..(img + 1) * c_out * pixels]);
    }
    out
}

/// `out = weight x planes (+ bias per output plane)`: weight [c_out, depth], planes [depth,
/// pixels], out [c_out, pixels], with c_out and depth read off the lengths.
fn weights_times_planes(weight: &[f32], planes: &[f32], pixels: usize, bias: Option<&[f32]>, out: &mut [f32]) {
    let (c_out, depth) = (out.len() / pixels, planes.len() / pixels);
    assert!(c_out * pixels == out.len() && depth * pixels == planes.len() && weight.len() == c_out * depth, "product shapes do not match");
    // SAFETY: the three buffers hold exactly [c_out, depth], [depth, pixels] and [c_out, pixels].
    unsafe { par_sgemm(false, false, c_out, pixels, depth, weight.as_ptr(), depth, planes.as_ptr(), pixels, 0.0, out.as_mut_ptr(), pixels) };
    if let Some(bias) = bias {
        out.par_chunks_mut(pixels).zip(bias).for_each(|(plane, b)| plane.iter_mut().for_each(|v| *v += b));
    }
}

/// Transposed convolution whose stride equals its kernel (each input pixel paints its own k x k
/// output patch, no overlap): one product [C_out k k, C_in] x [C_in, h w] per image, then a
/// scatter. x: [n, c_in, h, w], weight: [c_in, c_out, k, k] -> [n, c_out, h k, w k].
pub(crate) fn conv_transpose_patch(x: &[f32], n: usize, c_in: usize, h: usize, w: usize, weight: &[f32], c_out: usize, k: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let (ho, wo) = (h * k, w * k);
    let mut out = vec![0f32; n * c_out * ho * wo];
    let mut cols = vec![0f32; c_out * k * k * h * w];
    let _blas = SingleThreadedBlas::new();
    for img in 0..n {
        // SAFETY: weight read as [c_in, c_out k k] transposed, x as [c_in, h w], cols [c_out k k, h w].
        unsafe { par_sgemm(true, false, c_out * k * k, h * w, c_in, weight.as_ptr(), c_out * k * k, x.as_ptr().add(img * c_in * h * w), h * w, 0.0, cols.as_mut_ptr(), h * w) };
        let dst = &mut out[img * c_out * ho * wo..(img + 1) * c_out * ho * wo];
        dst.par_chunks_mut(ho * wo).enumerate().for_each(|(co, o)| {
            let b = bias.map_or(0.0, |b| b[co]);
            for i in 0..k {
                for j in 0..k {
                    let src = &cols[((co * k + i) * k + j) * h * w..][..h * w];
                    for y in 0..h {
                        for xx in 0..w {
                            o[(y * k + i) * wo + xx * k + j] = src[y * w + xx] + b;
                        }
                    }
                }
            }
        });
    }
    out
}

/// Bilinear resize with `align_corners=True` (as `F.interpolate` in the DPT heads) of `planes`
/// [h, w] planes to [ho, wo], in parallel over the planes; `then(plane index, plane)` runs on
/// each resized plane while it is still in cache.
pub(crate) fn upsample_bilinear_align_corners(x: &[f32], planes: usize, h: usize, w: usize, ho: usize, wo: usize, then: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    // Source coordinate of each output index: index * (in - 1) / (out - 1), in f32 like PyTorch.
    let taps = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = if n_out > 1 { (n_in - 1) as f32 / (n_out - 1) as f32 } else { 0.0 };
        (0..n_out)
            .map(|o| {
                let src = scale * o as f32;
                let i0 = (src.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, ho), taps(w, wo));
    let mut out = vec![0f32; planes * ho * wo];
    out.par_chunks_mut(ho * wo).zip(x.par_chunks(h * w)).enumerate().for_each(|(plane, (o, p))| {
        for (oy, &(y0, y1, fy)) in ty.iter().enumerate() {
            let (r0, r1) = (&p[y0 * w..(y0 + 1) * w], &p[y1 * w..(y1 + 1) * w]);
            let row = &mut o[oy * wo..(oy + 1) * wo];
            for (v, &(x0, x1, fx)) in row.iter_mut().zip(&tx) {
                let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
                let bottom = r1[x0] + (r1[x1] - r1[x0]) * fx;
                *v = top + (bottom - top) * fy;
            }
        }
        then(plane, o);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attention's q/k/v buffers start a cache line, hold exactly what was asked and what was
    /// written into their room, and keep what is written through them later; plain rooms become
    /// the vector written.
    #[test]
    fn cache_aligned_buffers_start_a_line() {
        for len in [0usize, 1, 15, 16, 17, 1000, 1 << 20] {
            let mut room = Unwritten::cache_aligned(len);
            let p = room.as_mut_ptr();
            // SAFETY: the room holds len elements from p.
            (0..len).for_each(|i| unsafe { p.add(i).write(i as f32 * 0.5) });
            // SAFETY: all len elements were written.
            let mut buf = unsafe { room.into_cache_aligned() };
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % 64, 0, "length {len}");
            assert!(buf.iter().enumerate().all(|(i, &x)| x == i as f32 * 0.5));
            buf.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            assert!(buf.iter().enumerate().all(|(i, &x)| x == i as f32));

            let mut room = Unwritten::new(len);
            let p = room.as_mut_ptr();
            // SAFETY: as above.
            (0..len).for_each(|i| unsafe { p.add(i).write(-(i as f32)) });
            let v = unsafe { room.into_vec() };
            assert_eq!(v.len(), len);
            assert!(v.iter().enumerate().all(|(i, &x)| x == -(i as f32)));
        }
    }

    #[test]
    fn half_precision_weights_give_the_f32_product_of_their_values() {
        use candle_core::DType;
        let dev = candle_core::Device::Cpu;
        // Rows on both sides of the one-row path's limit; k and n not multiples of the 64 lanes;
        // widening blocks that split n (100 KB: 700 rows of k = 96 in three), k alone (20 rows of
        // k = 3000 in three slices of the depth, added up with beta = 1) and both (600 rows of
        // k = 2053: three slices of depth 685 by 17 blocks of rows).
        for (rows, k, n, block_bytes) in [(1usize, 70usize, 257usize, HALF_WEIGHT_BLOCK_BYTES), (3, 2053, 600, 100_000), (20, 2053, 600, 100_000), (8, 64, 1, 100_000), (9, 130, 513, HALF_WEIGHT_BLOCK_BYTES), (9, 130, 513, 100_000), (300, 96, 700, 100_000), (300, 96, 700, HALF_WEIGHT_BLOCK_BYTES), (17, 3000, 20, 100_000)] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev).unwrap();
            for dtype in [DType::BF16, DType::F16] {
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap().to_dtype(dtype).unwrap();
                // The reference: the same (rounded) weight values in f32, through candle.
                let want = x.matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let got = linear_half_weights_in_blocks(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), k, &w, block_bytes).unwrap().expect("half weights take this path");
                assert_eq!(got.len(), rows * n);
                let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0f32, f32::max);
                // Only the summation order differs from the f32 product.
                assert!(diff < 1e-4 * (k as f32).sqrt(), "{rows}x{k} by {n}x{k} {dtype:?} in {block_bytes}-byte blocks: {diff}");
            }
        }
        // f32 weights are not this path's.
        let w = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
        assert!(linear_half_weights(&[0.0; 8], 8, &w).unwrap().is_none());
    }

    /// The few-row path (each weight row read once) and the sgemm path give the same product:
    /// rows on both sides of [`F32_WEIGHT_DOT_ROWS`], k and n off the 64 lanes and chunks.
    #[test]
    fn f32_linear_is_x_times_w_transposed_at_any_row_count() {
        for (rows, k, n) in [(0usize, 64usize, 5usize), (1, 70, 257), (2, 2053, 65), (3, 64, 1), (4, 130, 129), (9, 33, 600)] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 104_729) % 19) as f32 / 9.0 - 1.0).collect();
            let got = linear_nobias(&x, k, &w);
            assert_eq!(got.len(), rows * n);
            for (i, g) in got.iter().enumerate() {
                let (r, j) = (i / n, i % n);
                let want: f64 = (0..k).map(|p| x[r * k + p] as f64 * w[j * k + p] as f64).sum();
                assert!((*g as f64 - want).abs() < 1e-5 * (k as f64), "{rows}x{k} by {n}x{k}, ({r}, {j}): {g} vs {want}");
            }
        }
    }

    #[test]
    fn half_weight_blocks_fit_and_pack_the_activations_few_times() {
        let floats = HALF_WEIGHT_BLOCK_BYTES / 4;
        // (n, k) of Spatial-MLLM's half-precision products: the connector's two layers, the
        // language model's up and down projections, the vision tower's MLP, a small one, and
        // shapes off every power of two.
        for (n, k) in [(16384, 16384), (2048, 16384), (11008, 2048), (2048, 11008), (3420, 1280), (1280, 3420), (256, 2048), (1, 5_000_000), (12345, 6789), (3, 7)] {
            let (bn, bk) = half_weight_block(n, k, HALF_WEIGHT_BLOCK_BYTES);
            assert!(bn >= 1 && bn <= n && bk >= 1 && bk <= k, "{n}x{k}: {bn}x{bk}");
            assert!(bn * bk <= floats.max(n.min(16) * k.min(HALF_WEIGHT_BLOCK_DEPTH)), "{n}x{k}: {bn}x{bk} past the budget");
            // Deep enough that slicing the depth adds no pass over the output of its own.
            assert!(bk >= k.min(HALF_WEIGHT_BLOCK_DEPTH) / 2, "{n}x{k}: depth {bk}");
            // Even splits: the last block is not a sliver.
            let (last_n, last_k) = (n - (n.div_ceil(bn) - 1) * bn, k - (k.div_ceil(bk) - 1) * bk);
            assert!(last_n * 2 >= bn.min(n) || n.div_ceil(bn) == 1, "{n}x{k}: last rows {last_n} of {bn}");
            assert!(last_k * 2 >= bk || k.div_ceil(bk) == 1, "{n}x{k}: last depth {last_k} of {bk}");
        }
        // The connector's [16384, 16384] weight: 4 blocks of rows, so its activations are packed
        // 4 times (full-depth 16 MiB blocks were 256 rows: 64 times); its [2048, 16384] second
        // layer and the language model's down projection keep the whole width (packed once).
        assert_eq!(half_weight_block(16384, 16384, HALF_WEIGHT_BLOCK_BYTES), (4096, 1024));
        assert_eq!(half_weight_block(2048, 16384, HALF_WEIGHT_BLOCK_BYTES), (2048, 2048));
        assert_eq!(half_weight_block(2048, 11008, HALF_WEIGHT_BLOCK_BYTES).0, 2048);
        assert_eq!(half_weight_block(256, 2048, HALF_WEIGHT_BLOCK_BYTES), (256, 2048));
    }

    /// softmax(scale q k^T + mask) v in f64, one query at a time: the reference for the tiled
    /// attention. q [heads, tq, d], k and v [kv_heads, tk, d]; query i sees keys 0..=offset+i
    /// when causal, all otherwise. Returns [heads, tq, d].
    #[allow(clippy::too_many_arguments)]
    fn naive_attention(q: &[f32], k: &[f32], v: &[f32], heads: usize, kv_heads: usize, tq: usize, tk: usize, d: usize, scale: f32, causal_offset: Option<usize>) -> Vec<f32> {
        let mut out = vec![0f32; heads * tq * d];
        for h in 0..heads {
            let kv = h / (heads / kv_heads);
            for i in 0..tq {
                let sees = causal_offset.map_or(tk, |o| o + i + 1);
                let qi = &q[(h * tq + i) * d..][..d];
                let scores: Vec<f64> = (0..sees).map(|j| qi.iter().zip(&k[(kv * tk + j) * d..][..d]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = p.iter().sum();
                for c in 0..d {
                    let x: f64 = p.iter().enumerate().map(|(j, p)| p * v[(kv * tk + j) * d + c] as f64).sum();
                    out[(h * tq + i) * d + c] = (x / total) as f32;
                }
            }
        }
        out
    }

    /// `n` values uniform in [-spread / 2, spread / 2).
    fn random(n: usize, spread: f32) -> Vec<f32> {
        Tensor::rand(-spread / 2.0, spread / 2.0, n, &candle_core::Device::Cpu).unwrap().to_vec1().unwrap()
    }

    /// Every tiling (one key at a time, sizes that do not divide the sequence, longer than the
    /// sequence) gives the softmax of the whole row: the online rescaling is exact up to
    /// rounding, also when a later tile raises the row max by far (spread 40: scores up to ~100).
    #[test]
    fn key_tiles_give_the_whole_row_softmax() {
        let (heads, d) = (3, 16);
        for (t, spread) in [(1usize, 1.0f32), (130, 1.0), (1100, 1.0), (300, 40.0)] {
            let (q, k, v) = (random(heads * t * d, spread), random(heads * t * d, spread), random(heads * t * d, 1.0));
            let want = naive_attention(&q, &k, &v, heads, heads, t, t, d, 0.7, None);
            for (query_block, key_tile) in [(64, 1usize), (5, 7), (64, 64), (1, 300), (usize::MAX, usize::MAX)] {
                for kernel in [AttentionKernel::Registers, AttentionKernel::Blas] {
                    let tile = AttentionTiling { query_block, key_tile, kernel };
                    let got = attention_tiled(&q, &k, &v, 1, heads, t, d, 0.7, tile).unwrap();
                    // got is [t, heads * d]; want [heads, t, d].
                    let diff = (0..heads * t * d).map(|i| (got[(i / d % t) * heads * d + i / (t * d) * d + i % d] - want[i]).abs()).fold(0f32, f32::max);
                    assert!(diff < 1e-4, "t {t} spread {spread} {tile:?}: {diff}");
                }
            }
        }
    }

    /// The same for the causal grouped-query attention, across query blocks, with a cache
    /// offset and with rows whose visible keys end inside, at and before a tile's start.
    #[test]
    fn causal_key_tiles_give_the_masked_softmax() {
        let (heads, kv_heads, d) = (4, 2, 8);
        for (tq, offset) in [(1usize, 0usize), (1, 40), (200, 0), (70, 500), (129, 7)] {
            let tk = offset + tq;
            let (q, k, v) = (random(heads * tq * d, 2.0), random(kv_heads * tk * d, 2.0), random(kv_heads * tk * d, 1.0));
            let want = naive_attention(&q, &k, &v, heads, kv_heads, tq, tk, d, 0.3, Some(offset));
            for (query_block, key_tile) in [(64, 1usize), (3, 5), (64, 64), (256, 7), (1, 1000)] {
                for kernel in [AttentionKernel::Registers, AttentionKernel::Blas] {
                    let tile = AttentionTiling { query_block, key_tile, kernel };
                    let got = causal_attention_tiled(&q, &k, &v, 1, heads, kv_heads, tq, tk, d, offset, 0.3, tile).unwrap();
                    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(diff < 1e-4, "tq {tq} offset {offset} {tile:?}: {diff}");
                }
            }
        }
        // Mismatched buffers are an error, not a read out of bounds.
        assert!(causal_attention_tiled(&[0.0; 8], &[0.0; 8], &[0.0; 8], 1, 2, 1, 1, 1, 8, 0, 1.0, AttentionTiling::DEFAULT).is_err());
        assert!(attention_tiled(&[0.0; 8], &[0.0; 16], &[0.0; 16], 1, 1, 2, 8, 1.0, AttentionTiling::DEFAULT).is_err());
    }

    #[test]
    fn bilinear_align_corners_equals_candle() {
        let dev = candle_core::Device::Cpu;
        for (h, w, ho, wo) in [(4usize, 5usize, 8usize, 10usize), (21, 37, 294, 518), (3, 3, 7, 5), (1, 4, 3, 9)] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap();
            let want = x.upsample_bilinear2d(ho, wo, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = upsample_bilinear_align_corners(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), 6, h, w, ho, wo, |_, _| {});
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "{h}x{w} -> {ho}x{wo}: {diff}");
        }
    }

    #[test]
    fn exp_and_erf_approximations_are_accurate() {
        for i in -8000..8000 {
            let x = i as f32 * 0.01;
            let e = exp_approx(x);
            assert!((e - x.exp()).abs() <= 4e-7 * x.exp().max(1e-30), "exp({x}) = {e} vs {}", x.exp());
            let g = gelu(x);
            let want = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / std::f64::consts::SQRT_2));
            assert!((g as f64 - want).abs() < 2e-6 * (1.0 + x.abs() as f64), "gelu({x})");
        }
        assert!(exp_approx(-1000.0) < 2e-38, "masked scores must vanish");
    }

    #[test]
    fn silu_mul_is_the_swiglu_activation() {
        // Past one parallel chunk, with large and small gates (silu saturates both ways).
        let n = 40_000;
        let gate: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.005).collect();
        let up: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let got = silu_mul(&gate, &up);
        for ((g, u), o) in gate.iter().zip(&up).zip(&got) {
            let want = *g as f64 / (1.0 + (-*g as f64).exp()) * *u as f64;
            assert!((*o as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "silu({g}) * {u} = {o}, want {want}");
        }
    }

    /// erf by its series/continued fraction in f64, for the test only.
    fn libm_erf(x: f64) -> f64 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)), converges fast for |x| < 3.
        if x.abs() > 5.0 {
            return x.signum();
        }
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..200 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn convolutions_equal_candle() {
        let dev = candle_core::Device::Cpu;
        // The last case is large enough for Winograd tiles (the others take shifted products).
        for (n, ci, co, h, w, k, pad) in [(2usize, 3usize, 5usize, 7usize, 9usize, 3usize, 1usize), (1, 4, 2, 5, 4, 1, 0), (1, 2, 3, 6, 6, 3, 0), (2, 5, 3, 23, 30, 3, 1)] {
            let x = Tensor::randn(0f32, 1.0, (n, ci, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (co, ci, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, co, &dev).unwrap();
            let want = x.conv2d(&wt, pad, 1, 1, 1).unwrap().broadcast_add(&b.reshape((1, co, 1, 1)).unwrap()).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ws = wt.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let bs = b.to_vec1::<f32>().unwrap();
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for algorithm in [ConvAlgorithm::ShiftedProducts, ConvAlgorithm::Winograd] {
                let got = conv2d_stride1(&xs, n, ci, h, w, &ws, co, k, pad, Some(&bs), algorithm);
                assert_eq!(got.len(), want.len());
                let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(diff < 1e-4, "{algorithm:?}: {diff}");
            }
            let got = conv2d_unfolded(&xs, n, ci, h, w, &ws, co, k, 1, pad, Some(&bs));
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "unfolded: {diff}");
            // Stride 2 (odd and even sizes: the last row and column are partly padding).
            let want = x.conv2d(&wt, pad, 2, 1, 1).unwrap().broadcast_add(&b.reshape((1, co, 1, 1)).unwrap()).unwrap();
            let got = conv2d_unfolded(&xs, n, ci, h, w, &ws, co, k, 2, pad, Some(&bs));
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got.len(), want.len());
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "stride 2: {diff}");
        }
    }

    #[test]
    fn patch_transposed_conv_equals_candle() {
        let dev = candle_core::Device::Cpu;
        for (n, ci, co, h, w, k) in [(2usize, 3usize, 4usize, 3usize, 5usize, 2usize), (1, 2, 3, 4, 2, 4)] {
            let x = Tensor::randn(0f32, 1.0, (n, ci, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (ci, co, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, co, &dev).unwrap();
            let want = x.conv_transpose2d(&wt, 0, 0, k, 1).unwrap().broadcast_add(&b.reshape((1, co, 1, 1)).unwrap()).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ws = wt.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = conv_transpose_patch(&xs, n, ci, h, w, &ws, co, k, Some(&b.to_vec1::<f32>().unwrap()));
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "{diff}");
        }
    }
}
