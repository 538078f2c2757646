//! DINOv2 ViT with register tokens, as VGGT's patch embedder (`aggregator.patch_embed.*`).
//! Tokens per frame are `[cls, registers, patches]`; the position table (square, with a cls slot)
//! is resized to the input grid with antialiased bicubic, as upstream.

use super::config::VggtConfig;
use crate::interp::resize_bicubic_aa;
use crate::nn::{Block, layer_norm};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct DinoPatchEmbed {
    /// Conv2d(3 -> C, kernel = stride = patch) as a matmul over flattened patches: [C, 3*p*p].
    proj_weight: Tensor,
    proj_bias: Tensor,
    cls_token: Tensor,
    register_tokens: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: candle_nn::LayerNorm,
    patch_size: usize,
    num_registers: usize,
    /// Side of the square position table (37 for 518/14).
    pos_grid: usize,
    eps: f64,
}

impl DinoPatchEmbed {
    pub fn new(cfg: &VggtConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.dino_embed_dim();
        let p = cfg.patch_size;
        let pos_grid = cfg.img_size / p;
        let proj_vb = vb.pp("patch_embed").pp("proj");
        let proj_weight = proj_vb.get((dim, 3, p, p), "weight")?.reshape((dim, 3 * p * p))?;
        let proj_bias = proj_vb.get(dim, "bias")?;
        let num_registers = cfg.dino_registers();
        // Present in the checkpoint but unused at inference; requested so loading is strict.
        let _mask_token = vb.get((1, dim), "mask_token")?;
        let blocks = (0..cfg.dino_depth())
            .map(|i| Block::new(dim, cfg.dino_num_heads(), cfg.dino_mlp_ratio(), false, 1e-6, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            proj_weight,
            proj_bias,
            cls_token: vb.get((1, 1, dim), "cls_token")?,
            register_tokens: vb.get((1, num_registers, dim), "register_tokens")?,
            pos_embed: vb.get((1, 1 + pos_grid * pos_grid, dim), "pos_embed")?,
            blocks,
            norm: layer_norm(dim, 1e-6, vb.pp("norm"))?,
            patch_size: p,
            num_registers,
            pos_grid,
            eps: 1e-6,
        })
    }

    /// Position table for a `grid_h x grid_w` patch grid: [1, 1 + grid_h*grid_w, C].
    fn interpolated_pos_embed(&self, grid_h: usize, grid_w: usize) -> Result<Tensor> {
        let m = self.pos_grid;
        if grid_h == m && grid_w == m {
            return Ok(self.pos_embed.clone());
        }
        let dim = self.pos_embed.dim(2)?;
        let table = self.pos_embed.to_dtype(DType::F32)?.squeeze(0)?;
        let cls = table.narrow(0, 0, 1)?;
        let patch: Vec<f32> = table.narrow(0, 1, m * m)?.flatten_all()?.to_vec1()?;
        let resized = resize_bicubic_aa(&patch, m, m, dim, grid_h, grid_w);
        let resized = Tensor::from_vec(resized, (grid_h * grid_w, dim), table.device())?;
        Tensor::cat(&[cls, resized], 0)?.unsqueeze(0)?.to_dtype(self.pos_embed.dtype())
    }

    /// images: [N, 3, H, W] (ImageNet-normalised) -> final-normed patch tokens [N, P, C].
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let (n, _c, h, w) = images.dims4()?;
        let (grid_h, grid_w) = (h / self.patch_size, w / self.patch_size);
        let p = self.patch_size;
        // [N, 3, gh, p, gw, p] -> [N, gh, gw, 3, p, p] -> [N, P, 3*p*p]
        let patches = images
            .narrow(2, 0, grid_h * p)?
            .narrow(3, 0, grid_w * p)?
            .reshape((n, 3, grid_h, p, grid_w, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n, grid_h * grid_w, 3 * p * p))?;
        // Activations may be wider than the weights (f32 tokens, bf16 weights on the CPU).
        let dtype = images.dtype();
        let x = patches.broadcast_matmul(&self.proj_weight.to_dtype(dtype)?.t()?)?.broadcast_add(&self.proj_bias.to_dtype(dtype)?)?; // [N, P, C]
        let dim = x.dim(2)?;
        let cls = self.cls_token.to_dtype(dtype)?.broadcast_as((n, 1, dim))?;
        let x = Tensor::cat(&[&cls, &x], 1)?;
        let x = x.broadcast_add(&self.interpolated_pos_embed(grid_h, grid_w)?.to_dtype(dtype)?)?;
        let registers = self.register_tokens.to_dtype(dtype)?.broadcast_as((n, self.num_registers, dim))?;
        let mut x = Tensor::cat(&[&x.narrow(1, 0, 1)?, &registers, &x.narrow(1, 1, grid_h * grid_w)?], 1)?;
        for block in &self.blocks {
            x = block.forward(&x, None)?;
        }
        let bias = self.norm.bias().ok_or_else(|| candle_core::Error::Msg("DINO's final norm has no bias".into()))?;
        let norm = candle_nn::LayerNorm::new(self.norm.weight().to_dtype(dtype)?, bias.to_dtype(dtype)?, self.eps);
        let x = norm.forward(&x)?;
        x.narrow(1, 1 + self.num_registers, grid_h * grid_w)
    }
}
