//! The Qwen2.5 language model of Qwen2.5-VL: grouped-query attention with q/k/v biases, M-RoPE
//! (the rotary frequencies split into temporal / height / width sections), RMSNorm, SwiGLU, tied
//! embeddings, and a KV cache for generation.

use super::config::Qwen25VlConfig;
use crate::nn::{RmsNorm, SwiGlu, causal_attention, linear_no_bias};
use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Multimodal rotary positions: one (t, h, w) triple per token, [3][L].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MropePositions {
    pub t: Vec<i64>,
    pub h: Vec<i64>,
    pub w: Vec<i64>,
}

impl MropePositions {
    pub fn len(&self) -> usize {
        self.t.len()
    }
    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }
    /// Plain text positions `start..start+len` on all three axes (what decoding uses).
    pub fn text(start: i64, len: usize) -> Self {
        let ids: Vec<i64> = (start..start + len as i64).collect();
        Self { t: ids.clone(), h: ids.clone(), w: ids }
    }
    pub fn max(&self) -> i64 {
        self.t.iter().chain(&self.h).chain(&self.w).copied().max().unwrap_or(-1)
    }
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let all: Vec<i64> = self.t.iter().chain(&self.h).chain(&self.w).copied().collect();
        Tensor::from_vec(all, (3, self.len()), device)
    }
}

/// cos/sin tables [L, head_dim / 2] for M-RoPE: frequency slot i takes the position of the axis
/// whose `mrope_section` contains i (rotate-half applies each slot to dims i and i + head_dim / 2).
fn mrope_tables(pos: &MropePositions, head_dim: usize, theta: f64, sections: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect();
    let axis_of: Vec<usize> = sections.iter().enumerate().flat_map(|(a, &n)| std::iter::repeat_n(a, n)).collect();
    let axes = [&pos.t, &pos.h, &pos.w];
    let l = pos.len();
    let mut cos = Vec::with_capacity(l * half);
    let mut sin = Vec::with_capacity(l * half);
    for j in 0..l {
        // Upstream computes the angles in f32 (inv_freq f32 times the position as f32).
        let angles = (0..half).map(|i| (inv_freq[i] as f32) * (axes[axis_of[i]][j] as f32));
        for a in angles {
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((Tensor::from_vec(cos, (l, half), device)?, Tensor::from_vec(sin, (l, half), device)?))
}

#[derive(Debug, Clone)]
struct Attention {
    /// q_proj, k_proj and v_proj as one product (their weights and biases stacked at load): a
    /// decoding step on a GPU is bound by how many kernels it launches, not by their arithmetic.
    qkv_proj: crate::nn::Linear,
    o_proj: crate::nn::Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    cache: Option<KvCache>,
}

/// Tokens of room a CPU KV cache adds when it fills: a decoding step then copies nothing, and the
/// unused room stays small (2 x 256 rows per kv head per layer: 19 MB for Qwen2.5-VL-3B in f32).
const KV_CACHE_ROOM: usize = 256;

/// One layer's keys and values so far.
#[derive(Debug, Clone)]
enum KvCache {
    /// On the CPU in f32 (batch 1): [kv_heads, rows, d] each, the first `len` rows written, the
    /// rest room for the next tokens. A decoding step writes its row in place; `Tensor::cat`
    /// copied the whole cache per token and layer (at a 3,200-token prompt, 476 MB of copying per
    /// token on one core).
    Cpu { k: Vec<f32>, v: Vec<f32>, len: usize, rows: usize },
    /// Elsewhere: the keys and values as tensors [1, kv_heads, len, d], concatenated per step.
    Tensors(Tensor, Tensor),
}

impl KvCache {
    /// Appends k, v ([kv_heads, l, d] row-major) to a CPU cache, growing its room (by
    /// [`KV_CACHE_ROOM`] tokens past what is needed) when it is full.
    fn append_cpu(cache: Option<Self>, k: &[f32], v: &[f32], kv_heads: usize, l: usize, d: usize) -> Self {
        let (mut ck, mut cv, len, mut rows) = match cache {
            Some(Self::Cpu { k, v, len, rows }) => (k, v, len, rows),
            _ => (Vec::new(), Vec::new(), 0, 0),
        };
        if len + l > rows {
            let new_rows = len + l + KV_CACHE_ROOM;
            let grow = |old: &[f32]| {
                let mut grown = vec![0f32; kv_heads * new_rows * d];
                for h in 0..kv_heads {
                    grown[h * new_rows * d..][..len * d].copy_from_slice(&old[h * rows * d..][..len * d]);
                }
                grown
            };
            (ck, cv, rows) = (grow(&ck), grow(&cv), new_rows);
        }
        for h in 0..kv_heads {
            ck[(h * rows + len) * d..][..l * d].copy_from_slice(&k[h * l * d..][..l * d]);
            cv[(h * rows + len) * d..][..l * d].copy_from_slice(&v[h * l * d..][..l * d]);
        }
        Self::Cpu { k: ck, v: cv, len: len + l, rows }
    }

    /// The cache as tensors [1, kv_heads, len, d] (a CPU cache copied out of its room).
    fn tensors(self, kv_heads: usize, d: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        match self {
            Self::Tensors(k, v) => Ok((k, v)),
            Self::Cpu { k, v, len, rows } => {
                let take = |buf: Vec<f32>| Tensor::from_vec(buf, (1, kv_heads, rows, d), device)?.narrow(2, 0, len)?.contiguous();
                Ok((take(k)?, take(v)?))
            }
        }
    }
}

impl Attention {
    fn new(cfg: &Qwen25VlConfig, vb: VarBuilder) -> Result<Self> {
        let (c, hd) = (cfg.hidden_size, cfg.head_dim());
        let kv = cfg.num_key_value_heads * hd;
        let (q, k, v) = (vb.pp("q_proj"), vb.pp("k_proj"), vb.pp("v_proj"));
        let weight = Tensor::cat(&[q.get((cfg.num_attention_heads * hd, c), "weight")?, k.get((kv, c), "weight")?, v.get((kv, c), "weight")?], 0)?;
        let bias = Tensor::cat(&[q.get(cfg.num_attention_heads * hd, "bias")?, k.get(kv, "bias")?, v.get(kv, "bias")?], 0)?;
        Ok(Self {
            qkv_proj: crate::nn::Linear::new(weight, Some(bias)),
            o_proj: linear_no_bias(cfg.num_attention_heads * hd, c, vb.pp("o_proj"))?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
            cache: None,
        })
    }

    /// x: [1, L, C]; cos/sin: [L, head_dim / 2] in x's dtype; the new tokens follow the cached ones.
    fn forward(&mut self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let shape = |t: Tensor, heads: usize| t.reshape((b, l, heads, self.head_dim))?.transpose(1, 2);
        let qkv = self.qkv_proj.forward(x)?;
        let (q_width, kv_width) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        let q = shape(qkv.narrow(D::Minus1, 0, q_width)?, self.num_heads)?;
        let k = shape(qkv.narrow(D::Minus1, q_width, kv_width)?, self.num_kv_heads)?;
        let v = shape(qkv.narrow(D::Minus1, q_width + kv_width, kv_width)?, self.num_kv_heads)?.contiguous()?;
        // One fused kernel per tensor: `x * cos + rotate_half(x) * sin` in x's dtype, as upstream
        // (a decoding step is bound by how many kernels it launches on a GPU).
        let q = candle_nn::rotary_emb::rope(&q.contiguous()?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k.contiguous()?, cos, sin)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (heads, kv_heads, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // CPU f32 tensors (the views) and batch 1 write in place; anything else keeps tensors.
        let in_place = b == 1 && !matches!(self.cache, Some(KvCache::Tensors(..)));
        let cpu_out = match (in_place, crate::cpu::f32_view(&q), crate::cpu::f32_view(&k), crate::cpu::f32_view(&v)) {
            (true, Some(qs), Some(ks), Some(vs)) => {
                let cache = KvCache::append_cpu(self.cache.take(), ks.slice(), vs.slice(), kv_heads, l, d);
                let KvCache::Cpu { k: ck, v: cv, len, rows } = &cache else { unreachable!("append_cpu returns a CPU cache") };
                let out = crate::cpu::causal_attention_cached(qs.slice(), ck, cv, heads, kv_heads, l, *len, *rows, d, len - l, scale as f32);
                self.cache = Some(cache);
                Some(Tensor::from_vec(out?, (b, heads, l, d), x.device())?)
            }
            _ => None,
        };
        let out = match cpu_out {
            Some(out) => out,
            None => {
                let (k, v) = match self.cache.take() {
                    Some(cache) => {
                        let (ck, cv) = cache.tensors(kv_heads, d, x.device())?;
                        (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?)
                    }
                    None => (k, v),
                };
                self.cache = Some(KvCache::Tensors(k.clone(), v.clone()));
                let offset = k.dim(2)? - l;
                causal_attention(&q, &k, &v, scale, offset)?
            }
        };
        let out = out.transpose(1, 2)?.reshape((b, l, heads * d))?;
        self.o_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: SwiGlu,
}

impl DecoderLayer {
    fn new(cfg: &Qwen25VlConfig, vb: VarBuilder) -> Result<Self> {
        let (c, m) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            input_layernorm: RmsNorm::new(c, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(c, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            mlp: SwiGlu::new(c, m, false, vb.pp("mlp"))?,
        })
    }

    fn forward(&mut self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        crate::nn::check_cancelled()?;
        let x = (x + self.self_attn.forward(&self.input_layernorm.forward(x)?, cos, sin)?)?;
        // A long prompt's MLP goes in token chunks, bounding its [chunk, 11008] intermediates.
        // Each chunk widens (half-precision weights) and packs every MLP weight once: chunks of
        // 2,048 rather than 512 made a 3,200-token prefill 1-5% faster. A cancel is still noticed
        // between the MLP's products and between widened weight blocks (under a second each).
        let h = crate::nn::token_chunked_by(&x, 2048, |x| self.mlp.forward(&self.post_attention_layernorm.forward(x)?))?;
        x + h
    }
}

/// Floating-point operations per token of the decoder layers' projections and MLPs.
fn per_token_linear_flops(cfg: &Qwen25VlConfig) -> f64 {
    let d = cfg.hidden_size as f64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim()) as f64;
    cfg.num_hidden_layers as f64 * 2.0 * (2.0 * d * d + 2.0 * d * kv + 3.0 * d * cfg.intermediate_size as f64)
}

/// Floating-point operations of a prefill of `tokens` tokens (causal attention, logits for the
/// last position only, as generation computes them). For GFLOP/s in benchmarks.
pub fn estimate_prefill_flops(cfg: &Qwen25VlConfig, tokens: usize) -> f64 {
    let (l, d) = (tokens as f64, cfg.hidden_size as f64);
    let attention = cfg.num_hidden_layers as f64 * 4.0 * d * l * (l + 1.0) / 2.0;
    l * per_token_linear_flops(cfg) + attention + 2.0 * d * cfg.vocab_size as f64
}

/// Floating-point operations of decoding `steps` tokens after a prompt of `prompt` tokens.
pub fn estimate_decode_flops(cfg: &Qwen25VlConfig, prompt: usize, steps: usize) -> f64 {
    let d = cfg.hidden_size as f64;
    (0..steps).map(|s| per_token_linear_flops(cfg) + cfg.num_hidden_layers as f64 * 4.0 * d * (prompt + s + 1) as f64 + 2.0 * d * cfg.vocab_size as f64).sum()
}

/// Bytes of weights one decode step reads (every layer's and the logits' weights), for the
/// memory-bandwidth bound of decoding.
pub fn decode_weight_bytes(cfg: &Qwen25VlConfig, dtype: DType) -> f64 {
    (per_token_linear_flops(cfg) / 2.0 + (cfg.hidden_size * cfg.vocab_size) as f64) * dtype.size_in_bytes() as f64
}

/// The language model (`model.*`, plus `lm_head` when not tied).
#[derive(Debug, Clone)]
pub struct TextModel {
    embed_tokens: candle_nn::Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    cfg: Qwen25VlConfig,
    /// Tokens already in the KV cache.
    cached: usize,
}

impl TextModel {
    /// `vb` is rooted where `embed_tokens`, `layers` and `norm` live; `lm_head_vb` at the top
    /// (only read when the embeddings are not tied).
    pub fn new(cfg: &Qwen25VlConfig, vb: VarBuilder, lm_head_vb: VarBuilder) -> Result<Self> {
        let embed = vb.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let layers = (0..cfg.num_hidden_layers).map(|i| DecoderLayer::new(cfg, vb.pp(format!("layers.{i}")))).collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_word_embeddings { embed.clone() } else { lm_head_vb.get((cfg.vocab_size, cfg.hidden_size), "lm_head.weight")? };
        Ok(Self {
            embed_tokens: candle_nn::Embedding::new(embed, cfg.hidden_size),
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?,
            lm_head,
            cfg: cfg.clone(),
            cached: 0,
        })
    }

    /// The hidden states' dtype (see [`crate::nn::stream_dtype`]).
    pub fn dtype(&self) -> DType {
        crate::nn::stream_dtype(self.lm_head.dtype(), self.lm_head.device())
    }

    /// ids: [L] -> embeddings [L, C] in the hidden states' dtype.
    pub fn embed(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        self.embed_tokens.forward(&Tensor::from_slice(ids, ids.len(), device)?)?.to_dtype(self.dtype())
    }

    /// Runs embeddings [L, C] at `positions` through the layers after what is cached; returns the
    /// final-normed hidden states [L, C] and extends the cache.
    pub fn forward_embeds(&mut self, embeds: &Tensor, positions: &MropePositions) -> Result<Tensor> {
        let (l, _) = embeds.dims2()?;
        if positions.len() != l {
            candle_core::bail!("{l} embeddings but {} positions", positions.len());
        }
        let (cos, sin) = mrope_tables(positions, self.cfg.head_dim(), self.cfg.rope_theta, &self.cfg.rope_scaling.mrope_section, embeds.device())?;
        let (cos, sin) = (cos.to_dtype(self.dtype())?, sin.to_dtype(self.dtype())?);
        let mut x = embeds.to_dtype(self.dtype())?.unsqueeze(0)?;
        for layer in &mut self.layers {
            x = layer.forward(&x, &cos, &sin)?;
        }
        self.cached += l;
        self.norm.forward(&x.squeeze(0)?)
    }

    /// Logits [L, vocab] (f32) for final hidden states [L, C].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        crate::nn::Linear::new(self.lm_head.clone(), None).forward(&hidden.to_dtype(self.dtype())?)?.to_dtype(DType::F32)
    }

    /// Tokens in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.cached
    }

    pub fn clear_cache(&mut self) {
        for layer in &mut self.layers {
            layer.self_attn.cache = None;
        }
        self.cached = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prompt, then one token at a time past the room the cache kept (so it grows): each step's
    /// attention over the in-place cache equals the causal attention over all keys so far laid
    /// out densely, and the cache read back as tensors holds exactly the keys and values given.
    #[test]
    fn the_cpu_kv_cache_grows_in_place_and_attends_like_the_dense_keys() {
        let (heads, kv_heads, d) = (4usize, 2usize, 8usize);
        let value = |seed: usize, i: usize| ((seed * 7919 + i * 104_729) % 97) as f32 / 48.0 - 1.0;
        let mut cache: Option<KvCache> = None;
        // Dense keys and values per kv head, as Tensor::cat would lay them out.
        let (mut dense_k, mut dense_v) = (vec![Vec::new(); kv_heads], vec![Vec::new(); kv_heads]);
        let steps = std::iter::once(300usize).chain(std::iter::repeat_n(1, KV_CACHE_ROOM + 5));
        let mut len = 0;
        for (step, l) in steps.enumerate() {
            let k: Vec<f32> = (0..kv_heads * l * d).map(|i| value(3 * step, i)).collect();
            let v: Vec<f32> = (0..kv_heads * l * d).map(|i| value(3 * step + 1, i)).collect();
            let q: Vec<f32> = (0..heads * l * d).map(|i| value(3 * step + 2, i)).collect();
            for h in 0..kv_heads {
                dense_k[h].extend_from_slice(&k[h * l * d..(h + 1) * l * d]);
                dense_v[h].extend_from_slice(&v[h * l * d..(h + 1) * l * d]);
            }
            cache = Some(KvCache::append_cpu(cache.take(), &k, &v, kv_heads, l, d));
            len += l;
            let Some(KvCache::Cpu { k: ck, v: cv, len: cached, rows }) = &cache else { panic!("not a CPU cache") };
            assert_eq!(*cached, len);
            assert!(*rows >= len && *rows <= len + KV_CACHE_ROOM, "{rows} rows of room for {len} tokens");
            let got = crate::cpu::causal_attention_cached(&q, ck, cv, heads, kv_heads, l, len, *rows, d, len - l, 0.3).unwrap();
            let want = crate::cpu::causal_attention(&q, &dense_k.concat(), &dense_v.concat(), 1, heads, kv_heads, l, len, d, len - l, 0.3).unwrap();
            assert_eq!(got, want, "step {step}");
        }
        let (k, v) = cache.unwrap().tensors(kv_heads, d, &Device::Cpu).unwrap();
        assert_eq!(k.dims(), &[1, kv_heads, len, d]);
        assert_eq!(k.flatten_all().unwrap().to_vec1::<f32>().unwrap(), dense_k.concat());
        assert_eq!(v.flatten_all().unwrap().to_vec1::<f32>().unwrap(), dense_v.concat());
    }
}
