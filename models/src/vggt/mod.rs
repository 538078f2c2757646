//! VGGT (Visual Geometry Grounded Transformer), ported from facebookresearch/vggt.
//!
//! `Vggt::forward` takes frames [S, 3, H, W] in [0, 1] (sides multiples of 14) and returns camera
//! pose encodings, depth and world point maps with their confidences, all in the first camera's
//! frame. The aggregator runs in the weights' dtype; the heads always run in f32, as upstream.

pub mod aggregator;
pub mod camera_head;
pub mod config;
pub mod dino;
pub mod dpt_head;
pub mod pose;
pub mod preprocess;
pub mod rope;

pub use aggregator::{Aggregator, AggregatorOutput};
pub use camera_head::CameraHead;
pub use config::VggtConfig;
pub use dpt_head::{DptActivation, DptHead};
pub use pose::Camera;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use std::collections::BTreeSet;

/// Everything one VGGT run predicts, for S frames of H x W.
#[derive(Debug, Clone)]
pub struct VggtOutput {
    /// [S, 9] from the last refinement.
    pub pose_enc: Tensor,
    /// One [S, 9] per camera-head iteration.
    pub pose_enc_list: Vec<Tensor>,
    /// [S, H, W, 1] z-depth.
    pub depth: Tensor,
    /// [S, H, W], >= 1.
    pub depth_conf: Tensor,
    /// [S, H, W, 3] in the first camera's frame.
    pub world_points: Tensor,
    /// [S, H, W], >= 1.
    pub world_points_conf: Tensor,
}

impl VggtOutput {
    /// Cameras (extrinsic, intrinsic) of every frame.
    pub fn cameras(&self, image_hw: (usize, usize)) -> Result<Vec<Camera>> {
        let enc: Vec<Vec<f32>> = self.pose_enc.to_dtype(DType::F32)?.to_vec2()?;
        Ok(enc.iter().map(|e| Camera::from_pose_encoding(e, image_hw)).collect())
    }
}

/// Which parts of VGGT a checkpoint provides / a run needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VggtParts {
    /// The aggregator alone (Spatial-MLLM's spatial encoder).
    AggregatorOnly,
    /// Aggregator, camera head, depth head, point head.
    Full,
}

#[derive(Debug, Clone)]
pub struct Vggt {
    pub aggregator: Aggregator,
    pub camera_head: Option<CameraHead>,
    pub depth_head: Option<DptHead>,
    pub point_head: Option<DptHead>,
    pub config: VggtConfig,
}

impl Vggt {
    /// Builds VGGT from `vb` (rooted where `aggregator.*` lives) in the aggregator dtype of `vb`;
    /// `heads_vb` supplies the heads (normally the same checkpoint in f32).
    pub fn new(cfg: &VggtConfig, vb: VarBuilder, heads_vb: Option<VarBuilder>) -> Result<Self> {
        cfg.validate().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let aggregator = Aggregator::new(cfg, vb.pp("aggregator"))?;
        let (camera_head, depth_head, point_head) = match heads_vb {
            Some(h) => {
                // On the CPU the camera trunk's blocks keep the aggregator's dtype (half the memory
                // with bf16/f16, still computed in f32 by the fused blocks); elsewhere f32.
                let trunk_vb = if vb.device().is_cpu() { vb.clone() } else { h.clone() };
                cfg.validate_heads().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                (
                Some(CameraHead::new(cfg, h.pp("camera_head"), trunk_vb.pp("camera_head"))?),
                Some(DptHead::new(cfg, 2, DptActivation::Exp, h.pp("depth_head"))?),
                Some(DptHead::new(cfg, 4, DptActivation::InvLog, h.pp("point_head"))?),
                )
            }
            None => (None, None, None),
        };
        Ok(Self { aggregator, camera_head, depth_head, point_head, config: cfg.clone() })
    }

    /// Loads from safetensors files (one or the shards of one checkpoint), read tensor by tensor.
    /// `prefix` is "" for a VGGT checkpoint and "spatial_encoder.vggt_model" inside Spatial-MLLM.
    pub fn load(cfg: &VggtConfig, files: &[std::path::PathBuf], prefix: &str, parts: VggtParts, dtype: DType, device: &Device) -> Result<Self> {
        let reader = std::sync::Arc::new(crate::checkpoint::CheckpointReader::open(files).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?);
        let root = |vb: VarBuilder<'static>| if prefix.is_empty() { vb } else { vb.pp(prefix) };
        let vb = root(reader.var_builder(dtype, device));
        let heads_vb = match parts {
            VggtParts::AggregatorOnly => None,
            VggtParts::Full => Some(root(reader.var_builder(DType::F32, device))),
        };
        let model = Self::new(cfg, vb, heads_vb)?;
        reader.verify_unchanged().map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        // Each tensor was read into a buffer and copied (or converted): return those pages.
        crate::release_freed_memory();
        Ok(model)
    }

    /// The aggregated layers the heads read (the DPT layers and the last one).
    pub fn needed_layers(&self) -> Vec<usize> {
        let mut set: BTreeSet<usize> = self.config.dpt_head.intermediate_layer_idx.iter().copied().collect();
        set.insert(self.config.depth - 1);
        set.into_iter().collect()
    }

    /// images: [S, 3, H, W] in [0, 1]. Returns None when `progress` asked to stop. `progress` is
    /// called with (done, depth + 3): after each aggregator block, then after the camera, depth and
    /// point heads (see [`VggtStage`]).
    pub fn forward_with_progress(&self, images: &Tensor, progress: Option<aggregator::Progress>) -> Result<Option<VggtOutput>> {
        Ok(self.forward_timed(images, progress)?.map(|(out, _)| out))
    }

    /// [`Self::forward_with_progress`], also returning how long each stage took (for
    /// `bench vggt`).
    pub fn forward_timed(&self, images: &Tensor, progress: Option<aggregator::Progress>) -> Result<Option<(VggtOutput, StageTimes)>> {
        let (_, _, h, w) = images.dims4()?;
        let p = self.config.patch_size;
        if h % p != 0 || w % p != 0 {
            candle_core::bail!("VGGT needs image sides that are multiples of {p}, got {w}x{h}");
        }
        let (camera_head, depth_head, point_head) = match (&self.camera_head, &self.depth_head, &self.point_head) {
            (Some(c), Some(d), Some(pt)) => (c, d, pt),
            _ => candle_core::bail!("this VGGT was loaded without its heads (aggregator only)"),
        };
        let clock = std::time::Instant::now();
        // A GPU runs ahead of the host: each stage's time waits for its work to finish.
        let device = images.device().clone();
        let lap = |since: &mut f64| {
            let _ = device.synchronize();
            let now = clock.elapsed().as_secs_f64();
            let d = now - *since;
            *since = now;
            d
        };
        let mut at = 0.0;
        // Progress counts the aggregator's blocks, then the camera, depth and point heads.
        let depth_n = self.config.depth;
        let total = depth_n + 3;
        let mut progress = progress;
        let mut report = |done: usize| progress.as_mut().is_none_or(|cb| cb(done, total));
        let mut blocks = |done: usize, _: usize| report(done);
        let Some(agg) = self.aggregator.forward(images, &self.needed_layers(), false, Some(&mut blocks))? else {
            return Ok(None);
        };
        let aggregator = lap(&mut at);
        let last = &agg.layers[&(self.config.depth - 1)];
        let pose_enc_list = camera_head.forward(last)?;
        let pose_enc = pose_enc_list.last().cloned().ok_or_else(|| candle_core::Error::Msg("camera head has 0 iterations".into()))?;
        let camera = lap(&mut at);
        if !report(depth_n + 1) {
            return Ok(None);
        }
        let (depth, depth_conf) = depth_head.forward(&agg.layers, agg.patch_start_idx, (h, w))?;
        let depth_s = lap(&mut at);
        if !report(depth_n + 2) {
            return Ok(None);
        }
        let (world_points, world_points_conf) = point_head.forward(&agg.layers, agg.patch_start_idx, (h, w))?;
        let points = lap(&mut at);
        if !report(total) {
            return Ok(None);
        }
        let times = StageTimes { aggregator, camera, depth: depth_s, points };
        Ok(Some((VggtOutput { pose_enc, pose_enc_list, depth, depth_conf, world_points, world_points_conf }, times)))
    }

    pub fn forward(&self, images: &Tensor) -> Result<VggtOutput> {
        self.forward_with_progress(images, None).map(|o| o.expect("no progress callback, so no cancellation"))
    }
}

/// The stage a VGGT forward is in, from the `done` count its progress callback last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VggtStage {
    /// Before the first report: DINO patch embedding and the first block.
    PatchEmbed,
    /// Inside aggregator block `n` (1-based) of `of`.
    Aggregator { block: usize, of: usize },
    CameraHead,
    DepthHead,
    PointHead,
    Done,
}

impl VggtStage {
    /// What runs after `done` of `depth + 3` steps were reported.
    pub fn after(done: usize, depth: usize) -> Self {
        match done {
            0 => Self::PatchEmbed,
            d if d < depth => Self::Aggregator { block: d + 1, of: depth },
            d if d == depth => Self::CameraHead,
            d if d == depth + 1 => Self::DepthHead,
            d if d == depth + 2 => Self::PointHead,
            _ => Self::Done,
        }
    }

    /// "aggregator block 3 of 24".
    pub fn describe(&self) -> String {
        match self {
            Self::PatchEmbed => "DINO patch embedding and aggregator block 1".into(),
            Self::Aggregator { block, of } => format!("aggregator block {block} of {of}"),
            Self::CameraHead => "camera head".into(),
            Self::DepthHead => "depth head".into(),
            Self::PointHead => "point head".into(),
            Self::Done => "done".into(),
        }
    }
}

/// Seconds spent in each stage of one forward.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    pub aggregator: f64,
    pub camera: f64,
    pub depth: f64,
    pub points: f64,
}

/// Every tensor (name -> shape) VGGT asks for with `cfg`, learned by building it on a recording
/// backend (no memory is allocated for the weights).
pub fn expected_tensors(cfg: &VggtConfig, parts: VggtParts) -> anyhow::Result<std::collections::BTreeMap<String, Vec<usize>>> {
    let backend = crate::checkpoint::RecordingBackend::default();
    let vb = backend.var_builder(DType::F32);
    let heads = matches!(parts, VggtParts::Full).then(|| vb.clone());
    Vggt::new(cfg, vb, heads)?;
    Ok(backend.requested())
}

/// Rough floating-point operation count of one VGGT forward over `frames` frames of `h x w`
/// (transformer matmuls and attention; the DPT heads add a few percent). Used for the ETA the app
/// shows before a run.
pub fn estimate_flops(cfg: &VggtConfig, frames: usize, h: usize, w: usize) -> f64 {
    let s = frames as f64;
    let c = cfg.embed_dim as f64;
    let cam = cfg.camera_head.iterations as f64 * cfg.camera_head.trunk_depth as f64 * transformer_block_flops(s, s, 2.0 * c, cfg.camera_head.mlp_ratio);
    (estimate_aggregator_flops(cfg, frames, h, w) + cam) * 1.08
}

/// The same count for the aggregator alone (DINOv2 patch embed and the frame/global blocks): what
/// Spatial-MLLM's spatial branch runs.
pub fn estimate_aggregator_flops(cfg: &VggtConfig, frames: usize, h: usize, w: usize) -> f64 {
    let p = (h / cfg.patch_size) * (w / cfg.patch_size);
    let c = cfg.embed_dim as f64;
    let s = frames as f64;
    let dino_t = (p + 1 + cfg.dino_registers()) as f64;
    let dino = cfg.dino_depth() as f64 * transformer_block_flops(s * dino_t, dino_t, c, cfg.dino_mlp_ratio());
    let t = (p + cfg.patch_start_idx()) as f64;
    dino + cfg.depth as f64 * (transformer_block_flops(s * t, t, c, cfg.mlp_ratio) + transformer_block_flops(s * t, s * t, c, cfg.mlp_ratio))
}

/// One pre-norm block (qkv, projection, a GELU MLP of `ratio`) over `tokens` tokens that each
/// attend to `ctx` keys.
fn transformer_block_flops(tokens: f64, ctx: f64, dim: f64, ratio: f64) -> f64 {
    tokens * (2.0 * (4.0 + 2.0 * ratio) * dim * dim + 4.0 * ctx * dim)
}

/// Effective f32 CPU throughput assumed for ETAs before the first measured run (FLOP/s): `bench
/// vggt` measures 85 (2 frames of 224) to 100 (8 of 518x294) on a 2-core Zen 3.
pub const CPU_FLOPS_GUESS: f64 = 90e9;
