//! Transformer building blocks shared by the VGGT parts (and later the Qwen vision tower):
//! LayerNorm / Linear loaded with the checkpoint's names, LayerScale, the pre-norm `Block`, and an
//! attention that never materialises more than a bounded slice of the score matrix.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    static CANCEL: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// The message of the error a cancelled run unwinds with.
pub const CANCELLED: &str = "cancelled";

/// Runs `f` so that the long loops inside (attention chunks, token chunks of the linear layers,
/// DPT frame chunks) stop within a fraction of a second once `flag` is set: they return an error
/// that this turns into `Ok(None)`. Calls on this thread only.
pub fn cancellable<T>(flag: Arc<AtomicBool>, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<Option<T>> {
    let previous = CANCEL.with(|c| c.borrow_mut().replace(flag));
    let result = f();
    CANCEL.with(|c| *c.borrow_mut() = previous);
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.chain().any(|c| c.to_string() == CANCELLED) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Fails with [`CANCELLED`] when the run this thread is doing was cancelled.
pub fn check_cancelled() -> Result<()> {
    if CANCEL.with(|c| c.borrow().as_ref().is_some_and(|f| f.load(Ordering::Relaxed))) {
        return Err(candle_core::Error::Msg(CANCELLED.into()));
    }
    Ok(())
}

/// The cancel flag of the run this thread is doing, for work it hands to other threads (rayon's
/// workers do not see this thread's flag).
pub(crate) fn cancel_flag() -> Option<Arc<AtomicBool>> {
    CANCEL.with(|c| c.borrow().clone())
}

/// Tokens per chunk for the token-wise layers of large inputs, so a cancel is noticed within
/// a fraction of a second even when one layer over all tokens takes seconds.
pub(crate) const TOKEN_CHUNK: usize = 2048;

/// Applies a token-wise function to x [B, T, C] in chunks of tokens (checking for cancellation
/// between chunks); small inputs go in one piece.
pub fn token_chunked(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    token_chunked_by(x, TOKEN_CHUNK, f)
}

/// [`token_chunked`] with an explicit chunk size (wide layers want smaller chunks).
pub fn token_chunked_by(x: &Tensor, chunk: usize, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    let n = b * t;
    let chunk = chunk.max(1);
    if n <= chunk {
        return f(x);
    }
    let flat = x.reshape((n, c))?;
    // Equal chunks (3,200 tokens in chunks of at most 2,048: two of 1,600, not 2,048 and 1,152).
    let pieces = n.div_ceil(chunk);
    let chunk = n.div_ceil(pieces);
    let mut parts = Vec::with_capacity(pieces);
    let mut start = 0;
    while start < n {
        check_cancelled()?;
        let len = chunk.min(n - start);
        parts.push(f(&flat.narrow(0, start, len)?.unsqueeze(0)?)?.squeeze(0)?);
        start += len;
    }
    let out = Tensor::cat(&parts, 0)?;
    let c_out = out.dim(1)?;
    out.reshape((b, t, c_out))
}

/// `nn.LayerNorm(dim, eps)` with weight and bias.
pub fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<candle_nn::LayerNorm> {
    let weight = vb.get(dim, "weight")?;
    let bias = vb.get(dim, "bias")?;
    Ok(candle_nn::LayerNorm::new(weight, bias, eps))
}

/// Layer norm without affine parameters (DiT's adaLN norm).
pub fn layer_norm_plain(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dim = x.dim(D::Minus1)?;
    let ones = Tensor::ones(dim, x.dtype(), x.device())?;
    let zeros = Tensor::zeros(dim, x.dtype(), x.device())?;
    candle_nn::ops::layer_norm(&x.contiguous()?, &ones, &zeros, eps as f32)
}

/// The dtype activations flow in for weights of `weights` on `device`: the weights' own on GPUs;
/// f32 on the CPU, where half-precision weights are widened as they are read (exact), so bf16
/// checkpoints take half the memory and give the f32 results.
pub fn stream_dtype(weights: DType, device: &candle_core::Device) -> DType {
    if device.is_cpu() { DType::F32 } else { weights }
}

/// `nn.Linear`: y = x W^T + b over the last dim, with the product through [`crate::blas`], or
/// through [`crate::cpu_packed`] for a weight packed at load ([`Linear::packed_for_cpu`]).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

/// A Linear's weight [out, in]: the tensor as loaded, or (f32 on a CPU with AVX-512) packed in
/// the product kernel's layout, which is then its only copy.
#[derive(Debug, Clone)]
enum LinearWeight {
    Dense(Tensor),
    Packed { weight: Arc<crate::cpu_packed::PackedWeight>, device: candle_core::Device },
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight: LinearWeight::Dense(weight), bias }
    }

    /// The weight [out, in] as a tensor: the loaded one, or a packed weight laid out again.
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(t) => Ok(t.clone()),
            LinearWeight::Packed { weight, device } => Tensor::from_vec(weight.unpack(), weight.dims(), device),
        }
    }

    /// The weight as loaded, unless it was packed.
    pub(crate) fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            LinearWeight::Dense(t) => Some(t),
            LinearWeight::Packed { .. } => None,
        }
    }

    /// The packed weight, if it was packed.
    pub(crate) fn packed_weight(&self) -> Option<&crate::cpu_packed::PackedWeight> {
        match &self.weight {
            LinearWeight::Packed { weight, .. } => Some(weight),
            LinearWeight::Dense(_) => None,
        }
    }

    /// The same layer with an f32 CPU weight packed for [`crate::cpu_packed`] (where that kernel
    /// runs: AVX-512 within `SPATIAL_SIMD`'s cap), so its products pack only their activations;
    /// other weights stay as they are. The packed weight replaces the loaded one (same memory).
    pub fn packed_for_cpu(self) -> Result<Self> {
        let LinearWeight::Dense(t) = &self.weight else { return Ok(self) };
        if !crate::cpu_packed::available() || !t.device().is_cpu() || t.dtype() != DType::F32 || t.rank() != 2 {
            return Ok(self);
        }
        let (n, k) = t.dims2()?;
        let Some(view) = crate::cpu::f32_view(t) else { return Ok(self) };
        let weight = Arc::new(crate::cpu_packed::PackedWeight::pack(view.slice(), n, k));
        drop(view);
        Ok(Self { weight: LinearWeight::Packed { weight, device: t.device().clone() }, bias: self.bias })
    }

    /// The weight's dtype (f32 when packed).
    pub fn dtype(&self) -> DType {
        match &self.weight {
            LinearWeight::Dense(t) => t.dtype(),
            LinearWeight::Packed { .. } => DType::F32,
        }
    }

    pub fn device(&self) -> &candle_core::Device {
        match &self.weight {
            LinearWeight::Dense(t) => t.device(),
            LinearWeight::Packed { device, .. } => device,
        }
    }

    /// Output features.
    pub fn out_features(&self) -> Result<usize> {
        match &self.weight {
            LinearWeight::Dense(t) => t.dim(0),
            LinearWeight::Packed { weight, .. } => Ok(weight.dims().0),
        }
    }

    /// Bias (and GELU, with `gelu`) added in place to the product `y` [rows, n].
    fn finish_in_place(&self, y: &mut [f32], n: usize, gelu: bool) -> Result<()> {
        match &self.bias {
            Some(b) => {
                let b = crate::cpu::f32_data(b).ok_or_else(|| candle_core::Error::Msg("a CPU linear's bias is not a float tensor".into()))?;
                crate::cpu::add_bias_in_place(y, b.slice(), gelu);
            }
            None if gelu => crate::cpu::add_bias_in_place(y, &vec![0f32; n], true),
            None => {}
        }
        Ok(())
    }

    /// An f32 stream through a packed weight ([`crate::cpu_packed`]), the bias (and GELU) in
    /// place. x: [rows, k].
    fn forward_packed(&self, x: &Tensor, gelu: bool) -> Result<Option<Tensor>> {
        let Some(w) = self.packed_weight() else { return Ok(None) };
        if x.dtype() != DType::F32 || !x.device().is_cpu() {
            return Ok(None);
        }
        let (rows, _) = x.dims2()?;
        let Some(data) = crate::cpu::f32_data(x) else { return Ok(None) };
        let Some(mut y) = crate::cpu_packed::matmul(data.slice(), rows, w)? else { return Ok(None) };
        let n = w.dims().0;
        self.finish_in_place(&mut y, n, gelu)?;
        Ok(Some(Tensor::from_vec(y, (rows, n), x.device())?))
    }

    /// An f32 stream through half-precision weights on the CPU: the product in f32 with the
    /// weights widened as they are read (see [`crate::cpu::linear_half_weights`]), then the bias
    /// (and GELU, with `gelu`) applied in place, so the output is the only buffer of its size.
    /// x: [rows, k].
    fn forward_half_weights(&self, x: &Tensor, gelu: bool) -> Result<Option<Tensor>> {
        let Some(weight) = self.dense_weight() else { return Ok(None) };
        if x.dtype() != DType::F32 || !x.device().is_cpu() || !matches!(weight.dtype(), DType::BF16 | DType::F16) {
            return Ok(None);
        }
        let (rows, k) = x.dims2()?;
        let Some(data) = crate::cpu::f32_data(x) else { return Ok(None) };
        let Some(mut y) = crate::cpu::linear_half_weights(data.slice(), k, weight)? else { return Ok(None) };
        let n = weight.dim(0)?;
        self.finish_in_place(&mut y, n, gelu)?;
        Ok(Some(Tensor::from_vec(y, (rows, n), x.device())?))
    }

    /// `gelu(self.forward(x))` with PyTorch's exact (erf) GELU; on the CPU with half-precision
    /// weights the bias and GELU are one in-place pass over the product (the connector's first
    /// layer at 16 frames: two 205 MB buffers fewer).
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, true)
    }

    fn forward_then(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().ok_or_else(|| candle_core::Error::Msg("Linear on a scalar".into()))?;
        let rows = x.elem_count() / k.max(1);
        let x2 = x.reshape((rows, k))?;
        let fast = match self.forward_packed(&x2, gelu)? {
            Some(y) => Some(y),
            None => self.forward_half_weights(&x2, gelu)?,
        };
        let y = match fast {
            Some(y) => y,
            None => {
                let weight = self.weight()?;
                let x2 = if x2.dtype() == weight.dtype() { x2 } else { x2.to_dtype(weight.dtype())? };
                let mut y = crate::blas::matmul(&x2, &weight.t()?)?;
                if let Some(b) = &self.bias {
                    y = y.broadcast_add(&b.to_dtype(y.dtype())?)?;
                }
                if gelu { y.gelu_erf()? } else { y }
            }
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1; // x has at least one dim: k came from it
        out_dims[last] = self.out_features()?;
        y.reshape(out_dims)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, false)
    }
}

/// `nn.Linear(in, out)` with bias.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Ok(Linear::new(weight, Some(bias)))
}

/// DINOv2's `LayerScale`: a learned per-channel gain.
#[derive(Debug, Clone)]
pub struct LayerScale {
    gamma: Tensor,
}

impl LayerScale {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { gamma: vb.get(dim, "gamma")? })
    }
}

impl Module for LayerScale {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.gamma)
    }
}

/// Two-layer MLP with exact (erf) GELU: `fc1 -> GELU -> fc2`.
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(in_dim: usize, hidden: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { fc1: linear(in_dim, hidden, vb.pp("fc1"))?.packed_for_cpu()?, fc2: linear(hidden, out_dim, vb.pp("fc2"))?.packed_for_cpu()? })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward_gelu(x)?)
    }
}

/// Rotary tables for a token sequence: `cos`/`sin` of shape [T, head_dim] laid out so that
/// `x * cos + rotate(x) * sin` applies the rotation (see [`crate::vggt::rope`]).
#[derive(Debug, Clone)]
pub struct RotaryTables {
    pub cos: Tensor,
    pub sin: Tensor,
    /// Size of each independently rotated section of the head (rotate-half within a section).
    pub section: usize,
}

impl RotaryTables {
    /// Applies the rotation to `x` of shape [B, heads, T, head_dim].
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let head_dim = x.dim(D::Minus1)?;
        let half = self.section / 2;
        let mut parts = Vec::with_capacity(2 * head_dim / self.section);
        for start in (0..head_dim).step_by(self.section) {
            parts.push(x.narrow(D::Minus1, start + half, half)?.neg()?);
            parts.push(x.narrow(D::Minus1, start, half)?);
        }
        let rotated = Tensor::cat(&parts, D::Minus1)?;
        let cos = self.cos.to_dtype(x.dtype())?;
        let sin = self.sin.to_dtype(x.dtype())?;
        x.broadcast_mul(&cos)?.add(&rotated.broadcast_mul(&sin)?)
    }
}

/// Upper bound on the number of attention scores held at once (per call), in elements.
/// 64M f32 scores = 256 MiB: global attention over many frames is computed in query chunks.
const MAX_SCORE_ELEMENTS: usize = 64 * 1024 * 1024;
/// The same bound on a GPU: chunks of a few hundred queries rather than tens, so 128 frames'
/// global attention is a thousand large products per layer, not thousands of small launches
/// (a few GB of scores at most, within the 20 GB that 128 frames in bf16 may take).
const MAX_SCORE_ELEMENTS_GPU: usize = 512 * 1024 * 1024;

fn max_score_elements(device: &candle_core::Device) -> usize {
    if device.is_cpu() { MAX_SCORE_ELEMENTS } else { MAX_SCORE_ELEMENTS_GPU }
}

/// Head sizes Metal's fused `sdpa` kernels take (candle-nn 0.11).
const METAL_SDPA_HEAD_DIMS: [usize; 8] = [32, 64, 72, 80, 96, 128, 256, 512];

/// Metal's fused attention (`candle_nn::ops::sdpa`) where it applies: the scores never reach
/// memory. `causal`: query i sees keys 0..=i (a whole prompt) or, for one query, every key.
fn metal_sdpa(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Result<Option<Tensor>> {
    let d = q.dim(D::Minus1)?;
    if !q.device().is_metal() || !METAL_SDPA_HEAD_DIMS.contains(&d) || (d == 512 && q.dtype() == DType::F32) {
        return Ok(None);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    // One query sees every key (the vector kernel); more queries take the causal flag.
    let causal = causal && q.dim(2)? > 1;
    Ok(Some(candle_nn::ops::sdpa(&q, &k, &v, None, causal, scale as f32, 1.0)?))
}

/// `kernel(q, k, v)` on the elements of q, k and v when all three are f32 CPU tensors (made
/// contiguous); None otherwise, for the callers' tensor paths.
fn with_cpu_f32_qkv<R>(q: &Tensor, k: &Tensor, v: &Tensor, kernel: impl FnOnce(&[f32], &[f32], &[f32]) -> Result<R>) -> Result<Option<R>> {
    if !(crate::cpu::is_cpu_f32(q) && crate::cpu::is_cpu_f32(k) && crate::cpu::is_cpu_f32(v)) {
        return Ok(None);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    match (crate::cpu::f32_view(&q), crate::cpu::f32_view(&k), crate::cpu::f32_view(&v)) {
        (Some(q), Some(k), Some(v)) => kernel(q.slice(), k.slice(), v.slice()).map(Some),
        _ => Ok(None),
    }
}

/// Softmax attention `softmax(q k^T * scale) v` for q, k, v of shape [B, heads, T, d]: on the CPU
/// in f32 the fused tiled kernel, on CUDA in bf16/f16 the fused kernel of `cuda_attention`, on
/// Metal `sdpa`, elsewhere in chunks of queries so memory stays bounded for long sequences. Scores
/// are accumulated in f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, t_q, _d) = q.dims4()?;
    let t_k = k.dim(2)?;
    if let Some(out) = metal_sdpa(q, k, v, scale, false)? {
        return Ok(out);
    }
    if let Some(out) = crate::cuda_attention::fused_attention(q, k, v, scale, None)? {
        return Ok(out);
    }
    if t_q == t_k {
        let d = q.dim(3)?;
        // The fused kernel's scores stay in cache; it writes [B, T, heads, d].
        if let Some(out) = with_cpu_f32_qkv(q, k, v, |qs, ks, vs| crate::cpu::attention(qs, ks, vs, b, h, t_q, d, scale as f32))? {
            return Tensor::from_vec(out, (b, t_q, h, d), q.device())?.transpose(1, 2);
        }
    }
    let in_dtype = q.dtype();
    // Scaling the queries costs one pass over [Tq, d] instead of one over the [Tq, Tk] scores.
    let q = &(q * scale)?;
    let k_t = k.transpose(2, 3)?.contiguous()?;
    let v = v.contiguous()?;
    let per_query = b * h * t_k;
    let chunk = (max_score_elements(q.device()) / per_query.max(1)).clamp(1, t_q.max(1));
    let mut outputs = Vec::with_capacity(t_q.div_ceil(chunk));
    let mut start = 0;
    while start < t_q {
        check_cancelled()?;
        let len = chunk.min(t_q - start);
        let q_chunk = q.narrow(2, start, len)?.contiguous()?;
        let scores = crate::blas::matmul(&q_chunk, &k_t)?;
        let probs = if in_dtype == DType::F32 {
            candle_nn::ops::softmax_last_dim(&scores)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(in_dtype)?
        };
        outputs.push(crate::blas::matmul(&probs, &v)?);
        start += len;
    }
    if outputs.len() == 1 { Ok(outputs.pop().unwrap()) } else { Tensor::cat(&outputs, 2) }
}

/// Multi-head self-attention with a fused qkv projection, optional per-head q/k LayerNorm and
/// optional rotary embedding (VGGT's `Attention`).
#[derive(Debug, Clone)]
pub struct SelfAttention {
    qkv: Linear,
    proj: Linear,
    qk_norm: Option<(candle_nn::LayerNorm, candle_nn::LayerNorm)>,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    pub fn new(dim: usize, num_heads: usize, qk_norm: bool, vb: VarBuilder) -> Result<Self> {
        let head_dim = dim / num_heads;
        let qk_norm = if qk_norm {
            Some((layer_norm(head_dim, 1e-5, vb.pp("q_norm"))?, layer_norm(head_dim, 1e-5, vb.pp("k_norm"))?))
        } else {
            None
        };
        Ok(Self {
            qkv: linear(dim, 3 * dim, vb.pp("qkv"))?.packed_for_cpu()?,
            proj: linear(dim, dim, vb.pp("proj"))?.packed_for_cpu()?,
            qk_norm,
            num_heads,
            head_dim,
        })
    }

    /// x: [B, T, C] -> [B, T, C].
    pub fn forward(&self, x: &Tensor, rope: Option<&RotaryTables>) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let qkv = token_chunked(x, |x| self.qkv.forward(x))?.reshape((b, t, 3, self.num_heads, self.head_dim))?.permute((2, 0, 3, 1, 4))?;
        let mut q = qkv.get(0)?;
        let mut k = qkv.get(1)?;
        let v = qkv.get(2)?;
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            q = q_norm.forward(&q.contiguous()?)?;
            k = k_norm.forward(&k.contiguous()?)?;
        }
        if let Some(rope) = rope {
            q = rope.apply(&q)?;
            k = rope.apply(&k)?;
        }
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = attention(&q, &k, &v, scale)?;
        let out = out.transpose(1, 2)?.reshape((b, t, c))?;
        token_chunked(&out, |x| self.proj.forward(x))
    }
}

/// Pre-norm transformer block with LayerScale:
/// `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`.
#[derive(Debug, Clone)]
pub struct Block {
    norm1: candle_nn::LayerNorm,
    attn: SelfAttention,
    ls1: LayerScale,
    norm2: candle_nn::LayerNorm,
    mlp: Mlp,
    ls2: LayerScale,
    /// The LayerNorms' epsilon, for the fused CPU path.
    eps: f64,
}

impl Block {
    pub fn new(dim: usize, num_heads: usize, mlp_ratio: f64, qk_norm: bool, eps: f64, vb: VarBuilder) -> Result<Self> {
        let hidden = (dim as f64 * mlp_ratio) as usize;
        Ok(Self {
            norm1: layer_norm(dim, eps, vb.pp("norm1"))?,
            attn: SelfAttention::new(dim, num_heads, qk_norm, vb.pp("attn"))?,
            ls1: LayerScale::new(dim, vb.pp("ls1"))?,
            norm2: layer_norm(dim, eps, vb.pp("norm2"))?,
            mlp: Mlp::new(dim, hidden, dim, vb.pp("mlp"))?,
            ls2: LayerScale::new(dim, vb.pp("ls2"))?,
            eps,
        })
    }

    /// x: [B, T, C] -> [B, T, C].
    pub fn forward(&self, x: &Tensor, rope: Option<&RotaryTables>) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype().is_float() {
            if let Some(out) = self.forward_fused(x, rope)? {
                return Ok(out);
            }
        }
        self.forward_ops(x, rope)
    }

    /// The block op by op (candle's tensors; the fused path's reference).
    fn forward_ops(&self, x: &Tensor, rope: Option<&RotaryTables>) -> Result<Tensor> {
        let h = self.attn.forward(&self.norm1.forward(x)?, rope)?;
        let x = (x + self.ls1.forward(&h)?)?;
        let h = token_chunked(&x, |x| self.ls2.forward(&self.mlp.forward(&self.norm2.forward(x)?)?))?;
        x + h
    }
}

impl Block {
    /// The same block through the fused CPU kernels ([`crate::cpu::block_forward`]), in f32
    /// whatever the weights' dtype (bf16/f16 weights are widened per call, the output is cast back
    /// to x's dtype); None when a bias is missing, so the op-by-op path runs.
    fn forward_fused(&self, x: &Tensor, rope: Option<&RotaryTables>) -> Result<Option<Tensor>> {
        use crate::cpu::{BlockWeights, Rope, block_forward, f32_data, f32_view, product_weight};
        let (b, t, c) = x.dims3()?;
        let attn = &self.attn;
        let (Some(n1b), Some(n2b), Some(qkv_b), Some(proj_b), Some(fc1_b), Some(fc2_b)) =
            (self.norm1.bias(), self.norm2.bias(), &attn.qkv.bias, &attn.proj.bias, &self.mlp.fc1.bias, &self.mlp.fc2.bias)
        else {
            return Ok(None);
        };
        // The products' weights: packed at load, read in place; else bf16 bits in place with bf16
        // products on, else f32 values.
        let linears = [&attn.qkv, &attn.proj, &self.mlp.fc1, &self.mlp.fc2];
        let dense: Vec<Option<_>> = linears.iter().map(|l| l.dense_weight().map(product_weight)).collect();
        if dense.iter().any(|d| matches!(d, Some(None))) {
            return Ok(None);
        }
        let p: Vec<crate::cpu::WeightRows> = linears
            .iter()
            .zip(&dense)
            .map(|(l, d)| match (l.packed_weight(), d) {
                (Some(packed), _) => crate::cpu::WeightRows::Packed(packed),
                (None, Some(Some(w))) => w.rows(),
                (None, _) => unreachable!("a Linear's weight is packed or dense"),
            })
            .collect();
        let mut tensors = vec![self.norm1.weight(), n1b, qkv_b, proj_b, &self.ls1.gamma, self.norm2.weight(), n2b, fc1_b, fc2_b, &self.ls2.gamma];
        if let Some((qn, kn)) = &attn.qk_norm {
            let (Some(qb), Some(kb)) = (qn.bias(), kn.bias()) else { return Ok(None) };
            tensors.extend([qn.weight(), qb, kn.weight(), kb]);
        }
        let rope_tables = match rope {
            Some(r) if r.cos.dims2()? == (t, c / attn.num_heads) => Some((r.cos.to_dtype(DType::F32)?.contiguous()?, r.sin.to_dtype(DType::F32)?.contiguous()?, r.section)),
            Some(_) => return Ok(None),
            None => None,
        };
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        tensors.push(&x32);
        let Some(views) = tensors.iter().map(|t| f32_data(t)).collect::<Option<Vec<_>>>() else { return Ok(None) };
        let w: Vec<&[f32]> = views.iter().map(|v| v.slice()).collect();
        let rope_views = match &rope_tables {
            Some((cos, sin, section)) => match (f32_view(cos), f32_view(sin)) {
                (Some(cv), Some(sv)) => Some((cv, sv, *section)),
                _ => return Ok(None),
            },
            None => None,
        };
        let rope = rope_views.as_ref().map(|(cv, sv, section)| Rope { cos: cv.slice(), sin: sv.slice(), section: *section });
        let eps = self.eps as f32;
        let weights = BlockWeights {
            norm1: (w[0], w[1], eps),
            qkv: (p[0], w[2]),
            qk_norm: attn.qk_norm.as_ref().map(|_| ((w[10], w[11]), (w[12], w[13]))),
            proj: (p[1], w[3]),
            gamma1: w[4],
            norm2: (w[5], w[6], eps),
            fc1: (p[2], w[7]),
            fc2: (p[3], w[8]),
            gamma2: w[9],
            num_heads: attn.num_heads,
        };
        let out = block_forward(w[w.len() - 1], b, t, &weights, rope.as_ref())?;
        Ok(Some(Tensor::from_vec(out, (b, t, c), x.device())?.to_dtype(x.dtype())?))
    }
}

/// Qwen2's `RMSNorm`: `weight * x / sqrt(mean(x^2) + eps)`, computed in f32 whatever the input
/// dtype (as upstream does), then cast back.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    /// The weight as loaded, for half-precision streams on a GPU.
    weight_as_loaded: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight_as_loaded = vb.get(dim, "weight")?;
        Ok(Self { weight: weight_as_loaded.to_dtype(DType::F32)?, weight_as_loaded, eps: eps as f32 })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        if !x.device().is_cpu() && dtype == self.weight_as_loaded.dtype() && dtype != DType::F32 {
            // candle's kernel accumulates a half-precision row in f32 and rounds once: one launch
            // instead of three (a GPU's decoding step is bound by launches).
            return candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight_as_loaded, self.eps);
        }
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        candle_nn::ops::rms_norm(&x32, &self.weight, self.eps)?.to_dtype(dtype)
    }
}

/// The SwiGLU MLP of the Qwen models: `down(silu(gate(x)) * up(x))`, with biases in the vision
/// tower and without in the language model.
#[derive(Debug, Clone)]
pub struct SwiGlu {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl SwiGlu {
    /// Loads `gate_proj`, `up_proj`, `down_proj` under `vb` (dim -> hidden -> dim).
    pub fn new(dim: usize, hidden: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let make = |i: usize, o: usize, name: &str| if bias { linear(i, o, vb.pp(name)) } else { linear_no_bias(i, o, vb.pp(name)) };
        Ok(Self { gate_proj: make(dim, hidden, "gate_proj")?, up_proj: make(dim, hidden, "up_proj")?, down_proj: make(hidden, dim, "down_proj")? })
    }
}

impl Module for SwiGlu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Each product of a 2,048-token chunk takes about half a second in f32 on 2 cores: a
        // cancel is checked between them.
        let gate = self.gate_proj.forward(x)?;
        check_cancelled()?;
        let up = self.up_proj.forward(x)?;
        check_cancelled()?;
        // f32_view: contiguous f32 CPU tensors only; anything else takes candle's ops.
        let fused = match (crate::cpu::f32_view(&gate), crate::cpu::f32_view(&up)) {
            (Some(g), Some(u)) => Some(crate::cpu::silu_mul(g.slice(), u.slice())),
            _ => None,
        };
        let hidden = match fused {
            Some(values) => Tensor::from_vec(values, gate.shape(), gate.device())?,
            None => (gate.silu()? * up)?,
        };
        self.down_proj.forward(&hidden)
    }
}

/// `nn.Linear(in, out, bias=False)`.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::new(vb.get((out_dim, in_dim), "weight")?, None))
}

/// Causal softmax attention with grouped-query heads: q [B, H, Tq, d] whose first query sits at
/// absolute position `q_offset`, k and v [B, KVH, Tk, d] (positions 0..Tk) with H a multiple of
/// KVH (head i reads kv head i / (H / KVH)); query i sees keys 0..=q_offset+i. The heads sharing a
/// kv head are attended together, so k and v are never copied per head; chunked over queries
/// like [`attention`], with the mask built per chunk (and skipped when every key is visible).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, q_offset: usize) -> Result<Tensor> {
    let (b, h, t_q, d) = q.dims4()?;
    let (_, kvh, t_k, _) = k.dims4()?;
    if kvh == 0 || h % kvh != 0 {
        candle_core::bail!("{h} query heads cannot share {kvh} key/value heads");
    }
    let rep = h / kvh;
    // Only where the causal alignment cannot be in doubt: a whole prompt, or one new token.
    if q_offset + t_q == t_k && (q_offset == 0 || t_q == 1) {
        if let Some(out) = metal_sdpa(q, k, v, scale, true)? {
            return Ok(out);
        }
    }
    if q_offset + t_q <= t_k {
        if let Some(out) = crate::cuda_attention::fused_attention(q, k, v, scale, Some(q_offset))? {
            return Ok(out);
        }
        if let Some(out) = with_cpu_f32_qkv(q, k, v, |qs, ks, vs| crate::cpu::causal_attention(qs, ks, vs, b, h, kvh, t_q, t_k, d, q_offset, scale as f32))? {
            return Tensor::from_vec(out, (b, h, t_q, d), q.device());
        }
    }
    let in_dtype = q.dtype();
    let q = &(q * scale)?;
    let k_t = k.transpose(2, 3)?.contiguous()?;
    let v = v.contiguous()?;
    let per_query = b * h * t_k;
    // At most 512 queries a chunk, so the masked triangle's key blocks are mostly skipped.
    let chunk = (max_score_elements(q.device()) / per_query.max(1)).clamp(1, t_q.max(1)).min(512);
    let mut outputs = Vec::with_capacity(t_q.div_ceil(chunk));
    let mut start = 0;
    while start < t_q {
        check_cancelled()?;
        let len = chunk.min(t_q - start);
        let q_chunk = q.narrow(2, start, len)?.contiguous()?.reshape((b, kvh, rep * len, d))?;
        // Keys after the chunk's last query are masked for every row: leave them out entirely.
        let visible = (q_offset + start + len).min(t_k);
        let scores = crate::blas::matmul(&q_chunk, &k_t.narrow(3, 0, visible)?)?.to_dtype(DType::F32)?;
        let scores = if q_offset + start + 1 >= visible {
            scores // even the chunk's first query sees every visible key
        } else {
            let mask: Vec<f32> = (0..len)
                .flat_map(|i| {
                    let last = q_offset + start + i;
                    (0..visible).map(move |j| if j <= last { 0.0 } else { f32::NEG_INFINITY })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (len, visible), q.device())?;
            scores.reshape((b, kvh, rep, len, visible))?.broadcast_add(&mask)?.reshape((b, kvh, rep * len, visible))?
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(in_dtype)?;
        outputs.push(crate::blas::matmul(&probs, &v.narrow(2, 0, visible)?)?.reshape((b, h, len, d))?);
        start += len;
    }
    if outputs.len() == 1 { Ok(outputs.pop().unwrap()) } else { Tensor::cat(&outputs, 2) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Attention in f32 on the CPU (the fused tiled kernel) equals the chunked tensor path in f64,
    /// for sequences shorter and longer than a tile and a batch of segments.
    #[test]
    fn cpu_attention_matches_the_tensor_path() {
        let dev = Device::Cpu;
        for (b, h, t, d) in [(1usize, 2usize, 1usize, 8usize), (3, 4, 64, 16), (1, 2, 700, 80)] {
            let q = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap();
            let got = attention(&q, &k, &v, 0.2).unwrap();
            assert_eq!(got.dims(), &[b, h, t, d]);
            let f64s = |x: &Tensor| x.to_dtype(DType::F64).unwrap();
            let want = attention(&f64s(&q), &f64s(&k), &f64s(&v), 0.2).unwrap().to_dtype(DType::F32).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "[{b}, {h}, {t}, {d}]: {diff}");
        }
    }

    /// A VGGT-style block (q/k LayerNorms, a 2-D rotary embedding) through the fused CPU kernels
    /// equals the same block op by op through candle: at widths off the LayerNorms' summing lanes
    /// (80 channels, heads of 40) and over more tokens than one task takes, for a batch of frames.
    #[test]
    fn fused_block_matches_the_op_path() {
        use std::collections::HashMap;
        let dev = Device::Cpu;
        let (dim, heads, frames) = (80usize, 2usize, 2usize);
        let (grid_h, grid_w, special) = (10usize, 14usize, 5usize);
        let t = special + grid_h * grid_w;
        let hidden = 4 * dim;
        let shapes: [(&str, Vec<usize>); 18] = [
            ("norm1.weight", vec![dim]), ("norm1.bias", vec![dim]),
            ("attn.qkv.weight", vec![3 * dim, dim]), ("attn.qkv.bias", vec![3 * dim]),
            ("attn.q_norm.weight", vec![dim / heads]), ("attn.q_norm.bias", vec![dim / heads]),
            ("attn.k_norm.weight", vec![dim / heads]), ("attn.k_norm.bias", vec![dim / heads]),
            ("attn.proj.weight", vec![dim, dim]), ("attn.proj.bias", vec![dim]), ("ls1.gamma", vec![dim]),
            ("norm2.weight", vec![dim]), ("norm2.bias", vec![dim]),
            ("mlp.fc1.weight", vec![hidden, dim]), ("mlp.fc1.bias", vec![hidden]),
            ("mlp.fc2.weight", vec![dim, hidden]), ("mlp.fc2.bias", vec![dim]), ("ls2.gamma", vec![dim]),
        ];
        let weights: HashMap<String, Tensor> = shapes
            .iter()
            .map(|(name, shape)| {
                // LayerNorm weights around 1, everything else small, so no activation saturates.
                let around = if name.ends_with("norm.weight") || name.ends_with("norm1.weight") || name.ends_with("norm2.weight") { 1.0 } else { 0.0 };
                (name.to_string(), Tensor::randn(around, 0.2f32, shape.as_slice(), &dev).unwrap())
            })
            .collect();
        let block = Block::new(dim, heads, 4.0, true, 1e-6, VarBuilder::from_tensors(weights, DType::F32, &dev)).unwrap();
        let positions = crate::vggt::rope::frame_positions(special, grid_h, grid_w);
        let rope = crate::vggt::rope::rope_2d_tables(&positions, dim / heads, 100.0, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (frames, t, dim), &dev).unwrap();
        let got = block.forward_fused(&x, Some(&rope)).unwrap().expect("the block takes the fused path");
        let want = block.forward_ops(&x, Some(&rope)).unwrap();
        assert_eq!(got.dims(), &[frames, t, dim]);
        let diff = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let size = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5 * size.max(1.0), "fused block vs ops: {diff} (values up to {size})");
    }

    /// An f32 linear layer packed at load ([`Linear::packed_for_cpu`], where AVX-512 runs it)
    /// gives candle's product of the loaded weight, bias and `gelu_erf` for one row, many rows,
    /// 3-D inputs, widths off the 32-column panels and no bias; its weight reads back exactly;
    /// and the transformer blocks pack theirs.
    #[test]
    fn packed_linear_matches_the_loaded_weight() {
        let dev = Device::Cpu;
        for (dims, k, n, with_bias) in [(vec![1usize], 70usize, 33usize, true), (vec![2, 150], 96, 70, true), (vec![37], 300, 64, false)] {
            let mut x_shape = dims.clone();
            x_shape.push(k);
            let x = Tensor::randn(0f32, 2.0, x_shape, &dev).unwrap();
            let w = Tensor::randn(0f32, 0.3, (n, k), &dev).unwrap();
            let b = with_bias.then(|| Tensor::randn(0f32, 1.0, n, &dev).unwrap());
            let linear = Linear::new(w.clone(), b.clone()).packed_for_cpu().unwrap();
            assert_eq!(linear.packed_weight().is_some(), crate::cpu_packed::available(), "packed exactly where the kernel runs");
            assert_eq!(linear.weight().unwrap().to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap(), "the weight as loaded");
            assert_eq!((linear.dtype(), linear.out_features().unwrap()), (DType::F32, n));
            let mut want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
            if let Some(b) = &b {
                want = want.broadcast_add(b).unwrap();
            }
            let want_gelu = want.gelu_erf().unwrap();
            for (got, want, what) in [(linear.forward(&x).unwrap(), &want, "forward"), (linear.forward_gelu(&x).unwrap(), &want_gelu, "forward_gelu")] {
                assert_eq!(got.dims(), want.dims(), "{what}");
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-4, "{what} [{k} -> {n}]: {diff}");
            }
        }
        let weights: std::collections::HashMap<String, Tensor> = [("fc1.weight", vec![64, 32]), ("fc1.bias", vec![64]), ("fc2.weight", vec![32, 64]), ("fc2.bias", vec![32])]
            .into_iter()
            .map(|(name, shape)| (name.to_string(), Tensor::randn(0f32, 0.2, shape, &dev).unwrap()))
            .collect();
        let mlp = Mlp::new(32, 64, 32, VarBuilder::from_tensors(weights, DType::F32, &dev)).unwrap();
        assert_eq!(mlp.fc1.packed_weight().is_some(), crate::cpu_packed::available(), "a block's MLP packs its f32 weights");
    }

    /// A linear layer with half-precision weights on the CPU adds its bias (and with
    /// `forward_gelu`, PyTorch's erf GELU) in place after the widened product: the same values as
    /// candle's product of the widened weights, bias and `gelu_erf`, for one row (decoding), many
    /// rows, 3-D inputs and no bias.
    #[test]
    fn half_weight_linear_applies_bias_and_gelu_like_candle() {
        let dev = Device::Cpu;
        for (dims, k, n, with_bias) in [(vec![1usize], 70usize, 33usize, true), (vec![2, 150], 96, 70, true), (vec![37], 200, 300, false)] {
            let mut x_shape = dims.clone();
            x_shape.push(k);
            let x = Tensor::randn(0f32, 2.0, x_shape, &dev).unwrap();
            for dtype in [DType::BF16, DType::F16] {
                let w = Tensor::randn(0f32, 0.3, (n, k), &dev).unwrap().to_dtype(dtype).unwrap();
                let b = with_bias.then(|| Tensor::randn(0f32, 1.0, n, &dev).unwrap().to_dtype(dtype).unwrap());
                let linear = Linear::new(w.clone(), b.clone());
                let mut want = x.broadcast_matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap();
                if let Some(b) = &b {
                    want = want.broadcast_add(&b.to_dtype(DType::F32).unwrap()).unwrap();
                }
                let want_gelu = want.gelu_erf().unwrap();
                for (got, want, what) in [(linear.forward(&x).unwrap(), &want, "forward"), (linear.forward_gelu(&x).unwrap(), &want_gelu, "forward_gelu")] {
                    assert_eq!(got.dims(), want.dims(), "{what}");
                    assert_eq!(got.dtype(), DType::F32, "{what}");
                    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(diff < 1e-4, "{what} {dims:?}x{k} by {n} {dtype:?} bias {with_bias}: {diff}");
                }
            }
        }
    }

    /// The chunked, key-skipping, grouped-query causal attention equals plain masked softmax
    /// attention with the K/V heads repeated, over several query chunks and with a cache offset.
    #[test]
    fn causal_attention_matches_the_naive_formula() {
        let dev = Device::Cpu;
        let (h, kvh, d) = (4, 2, 8);
        // One query (decoding), runs within and across query blocks, several key tiles.
        for (t_q, offset) in [(1100usize, 0usize), (1, 40), (300, 700), (64, 9), (65, 0)] {
            let t_k = offset + t_q;
            let q = Tensor::randn(0f32, 1.0, (1, h, t_q, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (1, kvh, t_k, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (1, kvh, t_k, d), &dev).unwrap();
            let got = causal_attention(&q, &k, &v, 0.3, offset).unwrap();
            let rep = |t: &Tensor| t.unsqueeze(2).unwrap().expand((1, kvh, h / kvh, t_k, d)).unwrap().reshape((1, h, t_k, d)).unwrap();
            let (k2, v2) = (rep(&k), rep(&v));
            let mask: Vec<f32> = (0..t_q).flat_map(|i| (0..t_k).map(move |j| if j <= offset + i { 0.0 } else { f32::NEG_INFINITY })).collect();
            let mask = Tensor::from_vec(mask, (t_q, t_k), &dev).unwrap();
            let scores = (q.matmul(&k2.t().unwrap()).unwrap() * 0.3).unwrap().broadcast_add(&mask).unwrap();
            let want = candle_nn::ops::softmax_last_dim(&scores).unwrap().matmul(&v2).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "t_q {t_q} offset {offset}: {diff}");
        }
    }
}
