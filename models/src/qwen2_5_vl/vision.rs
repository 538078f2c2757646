//! Qwen2.5-VL's vision tower: the Conv3d patch embed (as a matmul over flattened patches), blocks
//! with window attention (full attention at `fullatt_block_indexes`, still limited to one temporal
//! slice), 2D rotary embedding, RMSNorm and a SwiGLU MLP with biases, then the 2x2 merger.

use super::config::VisionConfig;
use crate::nn::{RmsNorm, RotaryTables, SwiGlu, attention, linear};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// One video's patch grid: temporal groups, patch rows, patch columns (`video_grid_thw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridThw {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl GridThw {
    pub fn patches(&self) -> usize {
        self.t * self.h * self.w
    }
    /// Tokens after the 2x2 merger (the number of `<|video_pad|>` tokens).
    pub fn merged_tokens(&self, merge: usize) -> usize {
        self.patches() / (merge * merge)
    }
}

#[derive(Debug, Clone)]
struct VisionAttention {
    qkv: crate::nn::Linear,
    proj: crate::nn::Linear,
    num_heads: usize,
}

impl VisionAttention {
    /// x: [N, C] in window order; `segments` are the [start, end) ranges that attend among
    /// themselves (windows, or whole temporal slices for full-attention blocks).
    fn forward(&self, x: &Tensor, rope: &RotaryTables, segments: &[(usize, usize)]) -> Result<Tensor> {
        let (n, c) = x.dims2()?;
        let head_dim = c / self.num_heads;
        let qkv = self.qkv.forward(x)?.reshape((n, 3, self.num_heads, head_dim))?.permute((1, 2, 0, 3))?;
        // [heads, N, d] each, with a leading batch of 1 for the rotary helper.
        let q = rope.apply(&qkv.get(0)?.unsqueeze(0)?.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?.squeeze(0)?;
        let k = rope.apply(&qkv.get(1)?.unsqueeze(0)?.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?.squeeze(0)?;
        let v = qkv.get(2)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut outs = Vec::new();
        // Runs of equal-length segments are batched into one attention call.
        let mut i = 0;
        while i < segments.len() {
            let (start, end) = segments[i];
            let len = end - start;
            let mut j = i + 1;
            while j < segments.len() && segments[j].1 - segments[j].0 == len && segments[j].0 == segments[j - 1].1 {
                j += 1;
            }
            let count = j - i;
            let take = |t: &Tensor| -> Result<Tensor> {
                t.narrow(1, start, count * len)?.reshape((self.num_heads, count, len, head_dim))?.transpose(0, 1)?.contiguous()
            };
            let out = attention(&take(&q)?, &take(&k)?, &take(&v)?, scale)?; // [count, heads, len, d]
            outs.push(out.transpose(1, 2)?.reshape((count * len, c))?);
            i = j;
        }
        let out = if outs.len() == 1 { outs.pop().unwrap() } else { Tensor::cat(&outs, 0)? };
        self.proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct VisionBlock {
    norm1: RmsNorm,
    attn: VisionAttention,
    norm2: RmsNorm,
    mlp: SwiGlu,
}

impl VisionBlock {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (c, m) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            norm1: RmsNorm::new(c, 1e-6, vb.pp("norm1"))?,
            attn: VisionAttention { qkv: linear(c, 3 * c, vb.pp("attn.qkv"))?, proj: linear(c, c, vb.pp("attn.proj"))?, num_heads: cfg.num_heads },
            norm2: RmsNorm::new(c, 1e-6, vb.pp("norm2"))?,
            mlp: SwiGlu::new(c, m, true, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, rope: &RotaryTables, segments: &[(usize, usize)]) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?, rope, segments)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}

/// `PatchMerger`: RMSNorm per patch, then the 2x2 neighbours concatenated, Linear, GELU, Linear.
#[derive(Debug, Clone)]
struct PatchMerger {
    ln_q: RmsNorm,
    fc1: crate::nn::Linear,
    fc2: crate::nn::Linear,
    merged_dim: usize,
}

impl PatchMerger {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let merged_dim = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        Ok(Self {
            ln_q: RmsNorm::new(cfg.hidden_size, 1e-6, vb.pp("ln_q"))?,
            fc1: linear(merged_dim, merged_dim, vb.pp("mlp.0"))?,
            fc2: linear(merged_dim, cfg.out_hidden_size, vb.pp("mlp.2"))?,
            merged_dim,
        })
    }
}

impl Module for PatchMerger {
    /// [N, C] -> [N / merge^2, out_hidden]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.ln_q.forward(x)?.reshape(((), self.merged_dim))?;
        self.fc2.forward(&self.fc1.forward_gelu(&x)?)
    }
}

/// The vision tower with its merger (`visual.*`).
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    /// The Conv3d as a Linear over flattened patches: [hidden, patch_dim].
    patch_embed: crate::nn::Linear,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    cfg: VisionConfig,
}

impl VisionTransformer {
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (p, tp) = (cfg.patch_size, cfg.temporal_patch_size);
        // Conv3d with kernel == stride over (C, T, kh, kw) is a matmul with the flattened kernel.
        let w = vb.get((cfg.hidden_size, cfg.in_chans, tp, p, p), "patch_embed.proj.weight")?;
        let patch_embed = crate::nn::Linear::new(w.reshape((cfg.hidden_size, cfg.patch_dim()))?, None);
        let blocks = (0..cfg.depth).map(|i| VisionBlock::new(cfg, vb.pp(format!("blocks.{i}")))).collect::<Result<Vec<_>>>()?;
        Ok(Self { patch_embed, blocks, merger: PatchMerger::new(cfg, vb.pp("merger"))?, cfg: cfg.clone() })
    }

    /// The hidden states' dtype (see [`crate::nn::stream_dtype`]).
    pub fn dtype(&self) -> DType {
        crate::nn::stream_dtype(self.patch_embed.dtype(), self.patch_embed.device())
    }

    /// pixel_values: [sum of t*h*w, patch_dim] in the processor's patch order; returns
    /// [sum of t*h*w / merge^2, out_hidden] in (t, h/2, w/2) raster order per video.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[GridThw]) -> Result<Tensor> {
        let total: usize = grids.iter().map(GridThw::patches).sum();
        let (n, dim) = pixel_values.dims2()?;
        if n != total || dim != self.cfg.patch_dim() {
            candle_core::bail!("pixel values are [{n}, {dim}], the grids need [{total}, {}]", self.cfg.patch_dim());
        }
        let device = pixel_values.device();
        let unit = self.cfg.spatial_merge_size * self.cfg.spatial_merge_size;
        let x = self.patch_embed.forward(&pixel_values.to_dtype(self.dtype())?)?;
        let layout = WindowLayout::new(&self.cfg, grids);
        let order = Tensor::from_vec(layout.window_index.iter().map(|&i| i as u32).collect::<Vec<_>>(), layout.window_index.len(), device)?;
        let c = self.cfg.hidden_size;
        let mut x = x.reshape((n / unit, unit, c))?.index_select(&order, 0)?.reshape((n, c))?;
        let rope = self.rotary(grids, &layout.window_index, device)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let segments = if self.cfg.fullatt_block_indexes.contains(&i) { &layout.slices } else { &layout.windows };
            x = block.forward(&x, &rope, segments)?;
        }
        let merged = self.merger.forward(&x)?;
        let mut inverse = vec![0u32; layout.window_index.len()];
        for (pos, &orig) in layout.window_index.iter().enumerate() {
            inverse[orig] = pos as u32;
        }
        let inverse = Tensor::from_vec(inverse, layout.window_index.len(), device)?;
        merged.index_select(&inverse, 0)
    }

    /// cos/sin tables [N, head_dim] in window order: the first quarter of the frequencies
    /// rotates by the patch row, the second by the column, duplicated for rotate-half.
    fn rotary(&self, grids: &[GridThw], window_index: &[usize], device: &Device) -> Result<RotaryTables> {
        let head_dim = self.cfg.head_dim();
        let quarter = head_dim / 4;
        let dim = head_dim / 2;
        let inv_freq: Vec<f32> = (0..quarter).map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / dim as f32)).collect();
        let m = self.cfg.spatial_merge_size;
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for g in grids {
            for _ in 0..g.t {
                for hh in 0..g.h / m {
                    for ww in 0..g.w / m {
                        for sh in 0..m {
                            for sw in 0..m {
                                rows.push((hh * m + sh, ww * m + sw));
                            }
                        }
                    }
                }
            }
        }
        let unit = m * m;
        let mut cos = Vec::with_capacity(rows.len() * head_dim);
        let mut sin = Vec::with_capacity(rows.len() * head_dim);
        for &wi in window_index {
            for &(h, w) in &rows[wi * unit..(wi + 1) * unit] {
                let mut angles: Vec<f32> = inv_freq.iter().map(|f| h as f32 * f).collect();
                angles.extend(inv_freq.iter().map(|f| w as f32 * f));
                for _ in 0..2 {
                    cos.extend(angles.iter().map(|a| a.cos()));
                    sin.extend(angles.iter().map(|a| a.sin()));
                }
            }
        }
        let n = rows.len();
        Ok(RotaryTables { cos: Tensor::from_vec(cos, (n, head_dim), device)?, sin: Tensor::from_vec(sin, (n, head_dim), device)?, section: head_dim })
    }
}

/// Floating-point operations of one vision-tower forward over `grids`: the patch embedding, each
/// block's projections and SwiGLU MLP, attention within its windows (or temporal slices for the
/// full-attention blocks), and the merger. For GFLOP/s in benchmarks.
pub fn estimate_flops(cfg: &VisionConfig, grids: &[GridThw]) -> f64 {
    let layout = WindowLayout::new(cfg, grids);
    let n: f64 = grids.iter().map(|g| g.patches() as f64).sum();
    let (d, i) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    // Each segment of length L costs L * L query-key pairs, 4 d operations each (scores and values).
    let pairs = |segments: &[(usize, usize)]| segments.iter().map(|&(a, b)| ((b - a) as f64).powi(2)).sum::<f64>();
    let (window_pairs, slice_pairs) = (pairs(&layout.windows), pairs(&layout.slices));
    let blocks: f64 = (0..cfg.depth)
        .map(|b| {
            let attended = if cfg.fullatt_block_indexes.contains(&b) { slice_pairs } else { window_pairs };
            n * 2.0 * (4.0 * d * d + 3.0 * d * i) + 4.0 * attended * d
        })
        .sum();
    let unit = (cfg.spatial_merge_size * cfg.spatial_merge_size) as f64;
    let merged_dim = d * unit;
    let merger = n / unit * 2.0 * (merged_dim * merged_dim + merged_dim * cfg.out_hidden_size as f64);
    n * 2.0 * cfg.patch_dim() as f64 * d + blocks + merger
}

/// Window bookkeeping (upstream `get_window_index`): merge units are regrouped window by window
/// (windows of `window_size` px, i.e. `window_size / 28` merge units per side, clipped at the
/// grid's edge), and attention segments are expressed in patches of that order.
struct WindowLayout {
    /// For each position in window order, the merge unit's index in raster order.
    window_index: Vec<usize>,
    /// Window segments [start, end) in patches (window order).
    windows: Vec<(usize, usize)>,
    /// One segment per temporal slice of each video (what the full-attention blocks see).
    slices: Vec<(usize, usize)>,
}

impl WindowLayout {
    fn new(cfg: &VisionConfig, grids: &[GridThw]) -> Self {
        let m = cfg.spatial_merge_size;
        let unit = m * m;
        let side = cfg.window_size / m / cfg.patch_size;
        let mut window_index = Vec::new();
        let mut windows = Vec::new();
        let mut slices = Vec::new();
        let mut base = 0;
        let mut patch_pos = 0;
        for g in grids {
            let (gh, gw) = (g.h / m, g.w / m);
            for t in 0..g.t {
                for wy in (0..gh).step_by(side) {
                    for wx in (0..gw).step_by(side) {
                        let start = patch_pos;
                        for y in wy..(wy + side).min(gh) {
                            for x in wx..(wx + side).min(gw) {
                                window_index.push(base + (t * gh + y) * gw + x);
                                patch_pos += unit;
                            }
                        }
                        windows.push((start, patch_pos));
                    }
                }
            }
            for _ in 0..g.t {
                let start = slices.last().map_or(0, |s: &(usize, usize)| s.1);
                slices.push((start, start + g.h * g.w));
            }
            base += g.t * gh * gw;
        }
        Self { window_index, windows, slices }
    }
}
