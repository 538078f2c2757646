//! The alternating-attention aggregator: DINO patch tokens plus a camera token and registers
//! per frame, then `depth` pairs of (frame attention, global attention) blocks.
//! Output `i` is `frame_out_i ‖ global_out_i`, [S, P+5, 2C]; only the layers a caller asks for
//! are kept (upstream kept all 24, which is what limited its frame count).

use super::config::VggtConfig;
use super::dino::DinoPatchEmbed;
use super::rope::{frame_positions, rope_2d_tables};
use crate::nn::Block;
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use std::collections::BTreeMap;

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Debug, Clone)]
pub struct Aggregator {
    patch_embed: DinoPatchEmbed,
    camera_token: Tensor,
    register_token: Tensor,
    frame_blocks: Vec<Block>,
    global_blocks: Vec<Block>,
    cfg: VggtConfig,
}

/// What the aggregator produced.
#[derive(Debug, Clone)]
pub struct AggregatorOutput {
    /// Layer index -> [S, P+5, 2C], for the layers that were asked for.
    pub layers: BTreeMap<usize, Tensor>,
    /// DINO patch tokens [S, P, C], when asked for (parity checks).
    pub patch_tokens: Option<Tensor>,
    pub patch_start_idx: usize,
    pub grid: (usize, usize),
}

/// Called after each aggregator stage with (stage, total); returning false stops the run.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize) -> bool;

impl Aggregator {
    pub fn new(cfg: &VggtConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.embed_dim;
        let blocks = |name: &str| {
            (0..cfg.depth)
                .map(|i| Block::new(dim, cfg.num_heads, cfg.mlp_ratio, true, 1e-5, vb.pp(name).pp(i)))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            patch_embed: DinoPatchEmbed::new(cfg, vb.pp("patch_embed"))?,
            camera_token: vb.get((1, 2, 1, dim), "camera_token")?,
            register_token: vb.get((1, 2, cfg.num_register_tokens, dim), "register_token")?,
            frame_blocks: blocks("frame_blocks")?,
            global_blocks: blocks("global_blocks")?,
            cfg: cfg.clone(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.camera_token.dtype()
    }

    /// Index 0 of a [1, 2, n, C] special token for the first frame, index 1 for the others:
    /// [S, n, C].
    fn special_tokens(token: &Tensor, frames: usize) -> Result<Tensor> {
        let (_, _, n, c) = token.dims4()?;
        let first = token.get(0)?.get(0)?.unsqueeze(0)?;
        if frames == 1 {
            return Ok(first);
        }
        let rest = token.get(0)?.get(1)?.unsqueeze(0)?.broadcast_as((frames - 1, n, c))?;
        Tensor::cat(&[&first, &rest], 0)
    }

    /// images: [S, 3, H, W] in [0, 1]; H and W multiples of the patch size.
    /// `keep` lists the layer indices to return.
    pub fn forward(&self, images: &Tensor, keep: &[usize], want_patch_tokens: bool, progress: Option<Progress>) -> Result<Option<AggregatorOutput>> {
        let (s, _c, h, w) = images.dims4()?;
        let p = self.cfg.patch_size;
        let (grid_h, grid_w) = (h / p, w / p);
        let device = images.device();
        // On the CPU the token stream stays f32 whatever the weights' dtype (the fused blocks
        // widen bf16/f16 weights per call), like upstream's autocast keeps its residual stream in
        // f32; on GPUs it runs in the weights' dtype.
        let dtype = if device.is_cpu() { DType::F32 } else { self.dtype() };
        let mean = Tensor::new(&IMAGENET_MEAN, device)?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&IMAGENET_STD, device)?.reshape((1, 3, 1, 1))?;
        let normalised = images.to_dtype(DType::F32)?.broadcast_sub(&mean)?.broadcast_div(&std)?.to_dtype(dtype)?;
        let patch_tokens = self.patch_embed.forward(&normalised)?; // [S, P, C]
        let dim = patch_tokens.dim(2)?;

        let camera = Self::special_tokens(&self.camera_token.to_dtype(dtype)?, s)?;
        let registers = Self::special_tokens(&self.register_token.to_dtype(dtype)?, s)?;
        let mut tokens = Tensor::cat(&[&camera, &registers, &patch_tokens], 1)?; // [S, T, C]
        // Held through the blocks only when asked for (98 MB at 16 frames of 476x644).
        let patch_tokens = want_patch_tokens.then_some(patch_tokens);
        let t = tokens.dim(1)?;
        let start = self.cfg.patch_start_idx();

        let head_dim = dim / self.cfg.num_heads;
        let positions = frame_positions(start, grid_h, grid_w);
        let frame_rope = rope_2d_tables(&positions, head_dim, self.cfg.rope_freq, device)?;
        let global_positions: Vec<_> = (0..s).flat_map(|_| positions.iter().copied()).collect();
        let global_rope = rope_2d_tables(&global_positions, head_dim, self.cfg.rope_freq, device)?;

        let mut layers = BTreeMap::new();
        let mut progress = progress;
        for i in 0..self.cfg.depth {
            tokens = self.frame_blocks[i].forward(&tokens, Some(&frame_rope))?;
            let frame_out = tokens.clone();
            tokens = self.global_blocks[i]
                .forward(&tokens.reshape((1, s * t, dim))?, Some(&global_rope))?
                .reshape((s, t, dim))?;
            if keep.contains(&i) {
                layers.insert(i, Tensor::cat(&[&frame_out, &tokens], 2)?);
            }
            if let Some(cb) = progress.as_mut() {
                if !cb(i + 1, self.cfg.depth) {
                    return Ok(None);
                }
            }
        }
        Ok(Some(AggregatorOutput {
            layers,
            patch_tokens,
            patch_start_idx: start,
            grid: (grid_h, grid_w),
        }))
    }
}
