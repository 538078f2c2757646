//! Spatial-MLLM's `MLPAddConnector` (connector_type `mlp_add`): VGGT tokens of 2 frames x 2x2
//! patches are merged into one vector, normalised, projected to the LLM width and added to the
//! Qwen merger's output for the same video token.

use crate::nn::{RmsNorm, linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct Connector {
    ln_q: RmsNorm,
    fc1: crate::nn::Linear,
    fc2: crate::nn::Linear,
    merged_dim: usize,
}

impl Connector {
    /// `vggt_dim` is the aggregator width C (each layer output is 2C wide); `merge` the spatial
    /// merge size and `temporal` the temporal patch size of the vision tower.
    pub fn new(vggt_dim: usize, merge: usize, temporal: usize, language_dim: usize, vb: VarBuilder) -> Result<Self> {
        let merged_dim = 2 * vggt_dim * temporal * merge * merge;
        Ok(Self {
            ln_q: RmsNorm::new(merged_dim, 1e-6, vb.pp("ln_q"))?,
            fc1: linear(merged_dim, merged_dim, vb.pp("mlp.0"))?,
            fc2: linear(merged_dim, language_dim, vb.pp("mlp.2"))?,
            merged_dim,
        })
    }

    pub fn merged_dim(&self) -> usize {
        self.merged_dim
    }

    /// Floating-point operations of projecting `tokens` merged tokens (for benchmarks).
    pub fn estimate_flops(&self, tokens: usize) -> f64 {
        let (m, out) = (self.merged_dim as f64, self.fc2.out_features().unwrap_or(0) as f64);
        tokens as f64 * 2.0 * (m * m + m * out)
    }

    /// [N, merged_dim] -> [N, language_dim]
    pub fn project(&self, merged: &Tensor) -> Result<Tensor> {
        let x = self.ln_q.forward(merged)?.to_dtype(crate::nn::stream_dtype(self.fc1.dtype(), self.fc1.device()))?;
        let hidden = self.fc1.forward_gelu(&x)?;
        drop(x); // [N, merged_dim]: 205 MB at 16 frames
        self.fc2.forward(&hidden)
    }
}

/// Upstream `preprocess_spatial_embeds` for one video: the last aggregator layer [S, P+start, D]
/// with the camera/register tokens (the first `patch_start_idx`) dropped, merged to
/// [S/2 * h/2 * w/2, D*2*2*2] with rows in (t, h/2, w/2) raster order and features in
/// (sh, sw, d, tt) order: index = ((sh*2 + sw)*D + d)*2 + tt.
pub fn merge_spatial_tokens(layer: &Tensor, patch_start_idx: usize, grid_h: usize, grid_w: usize, merge: usize, temporal: usize) -> Result<Tensor> {
    let (s, t, d) = layer.dims3()?;
    if t != patch_start_idx + grid_h * grid_w {
        candle_core::bail!("VGGT layer has {t} tokens per frame, expected {} + {grid_h}x{grid_w}", patch_start_idx);
    }
    if s % temporal != 0 || grid_h % merge != 0 || grid_w % merge != 0 {
        candle_core::bail!("VGGT tokens [{s} frames, {grid_h}x{grid_w}] do not split into {temporal} frames x {merge}x{merge} groups");
    }
    let patches = layer.narrow(1, patch_start_idx, grid_h * grid_w)?;
    // (t, tt, hh, sh, ww, sw, d) -> (t, hh, ww, sh, sw, d, tt)
    let x = patches.reshape(&[s / temporal, temporal, grid_h / merge, merge, grid_w / merge, merge, d][..])?;
    let x = x.permute(vec![0, 2, 4, 3, 5, 6, 1])?.contiguous()?;
    x.reshape((s / temporal * (grid_h / merge) * (grid_w / merge), merge * merge * d * temporal))
}
