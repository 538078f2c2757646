//! Camera head: the last layer's camera token, refined in `iterations` adaLN-conditioned passes
//! through a transformer trunk that attends across frames. Emits pose encodings
//! `[t(3), quat xyzw(4), fov_h, fov_w]` (absT_quaR_FoV), one per iteration.

use super::config::VggtConfig;
use crate::nn::{Block, Mlp, layer_norm, layer_norm_plain, linear};
use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

pub const POSE_ENCODING_DIM: usize = 9;

#[derive(Debug, Clone)]
pub struct CameraHead {
    token_norm: candle_nn::LayerNorm,
    trunk: Vec<Block>,
    trunk_norm: candle_nn::LayerNorm,
    empty_pose_tokens: Tensor,
    embed_pose: crate::nn::Linear,
    pose_ln_modulation: crate::nn::Linear,
    pose_branch: Mlp,
    iterations: usize,
}

impl CameraHead {
    /// `vb` supplies the head (f32, as upstream runs it); `trunk_vb` the trunk blocks, which may be
    /// a narrower dtype on the CPU (the fused blocks widen them per call and compute in f32):
    /// they are 4/5 of the head's 0.25 B parameters.
    pub fn new(cfg: &VggtConfig, vb: VarBuilder, trunk_vb: VarBuilder) -> Result<Self> {
        let dim = cfg.head_dim_in();
        let c = &cfg.camera_head;
        let trunk = (0..c.trunk_depth)
            .map(|i| Block::new(dim, c.num_heads, c.mlp_ratio, false, 1e-5, trunk_vb.pp("trunk").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_norm: layer_norm(dim, 1e-5, vb.pp("token_norm"))?,
            trunk,
            trunk_norm: layer_norm(dim, 1e-5, vb.pp("trunk_norm"))?,
            empty_pose_tokens: vb.get((1, 1, POSE_ENCODING_DIM), "empty_pose_tokens")?,
            embed_pose: linear(POSE_ENCODING_DIM, dim, vb.pp("embed_pose"))?,
            pose_ln_modulation: linear(dim, 3 * dim, vb.pp("poseLN_modulation").pp(1))?,
            pose_branch: Mlp::new(dim, dim / 2, POSE_ENCODING_DIM, vb.pp("pose_branch"))?,
            iterations: c.iterations,
        })
    }

    /// last_layer: [S, T, 2C] -> one activated pose encoding [S, 9] per iteration.
    pub fn forward(&self, last_layer: &Tensor) -> Result<Vec<Tensor>> {
        let dtype = self.token_norm.weight().dtype();
        let tokens = last_layer.narrow(1, 0, 1)?.to_dtype(dtype)?.transpose(0, 1)?.contiguous()?; // [1, S, 2C]
        let tokens = self.token_norm.forward(&tokens)?;
        let (_, s, _) = tokens.dims3()?;
        let mut pred: Option<Tensor> = None;
        let mut outputs = Vec::with_capacity(self.iterations);
        for _ in 0..self.iterations {
            let conditioning = match &pred {
                None => self.embed_pose.forward(&self.empty_pose_tokens.broadcast_as((1, s, POSE_ENCODING_DIM))?.contiguous()?)?,
                Some(p) => self.embed_pose.forward(p)?,
            };
            let modulation = self.pose_ln_modulation.forward(&candle_nn::ops::silu(&conditioning)?)?;
            let chunks = modulation.chunk(3, D::Minus1)?;
            let (shift, scale, gate) = (&chunks[0], &chunks[1], &chunks[2]);
            let normed = layer_norm_plain(&tokens, 1e-6)?;
            let modulated = normed.mul(&(scale + 1.0)?)?.add(shift)?;
            let mut x = gate.mul(&modulated)?.add(&tokens)?;
            for block in &self.trunk {
                x = block.forward(&x, None)?;
            }
            let delta = self.pose_branch.forward(&self.trunk_norm.forward(&x)?)?;
            let next = match &pred {
                None => delta,
                Some(p) => (p + delta)?,
            };
            outputs.push(activate_pose(&next.squeeze(0)?)?);
            pred = Some(next);
        }
        Ok(outputs)
    }
}

/// Translation and quaternion linear, field of view through ReLU.
fn activate_pose(enc: &Tensor) -> Result<Tensor> {
    let tq = enc.narrow(D::Minus1, 0, 7)?;
    let fov = enc.narrow(D::Minus1, 7, 2)?.relu()?;
    Tensor::cat(&[&tq, &fov], D::Minus1)?.to_dtype(DType::F32)
}
