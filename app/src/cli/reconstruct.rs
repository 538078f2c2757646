//! `reconstruct`: VGGT on a video or folder of frames, geometry to safetensors (and optionally PLY).

use super::{ComputeArgs, ProgressLine};
use crate::pipeline::export::{ExportFormat, export};
use crate::pipeline::points::{PointFilter, PointSource, confidence_threshold, points_of};
use crate::pipeline::reconstruct::{LoadedVggt, ReconstructPlan, reconstruct};
use crate::pipeline::source::{Source, SourceSpec, candidate_frames};
use crate::pipeline::threads::Cancel;
use crate::pipeline::weights::WeightsKind;
use crate::pipeline::{fsio, reconstruct as rc};
use anyhow::{Result, bail};
use clap::Args;
use spatial_models::vggt::preprocess::ResizeMode;
use spatial_models::vggt::{CPU_FLOPS_GUESS, estimate_flops};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReconstructArgs {
    /// VGGT checkpoint: a folder (config.json + model.safetensors) or a Hugging Face repo id
    /// (facebook/VGGT-1B) found in the hub cache.
    #[arg(long)]
    pub weights: String,
    /// Folder of frames (PNG/JPEG, sorted by name) or a video file.
    #[arg(long)]
    pub input: PathBuf,
    /// crop: width 518, centre-crop tall frames; pad: longest side 518, pad to square; none: as is.
    #[arg(long, default_value = "crop")]
    pub resize: ResizeMode,
    /// Use at most this many frames, spread evenly (both ends included). Videos default to 16.
    #[arg(long)]
    pub max_frames: Option<usize>,
    /// Network input width (multiples of 14; upstream's is 518).
    #[arg(long, default_value_t = 518)]
    pub width: usize,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Output safetensors with images, pose_enc, depth, world_points, cameras, frame_indices.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the confident points (depth unprojected with the cameras) as a binary PLY.
    #[arg(long)]
    pub ply: Option<PathBuf>,
    /// Confidence percentile for the PLY points (the viewer's default filter).
    #[arg(long, default_value_t = 25.0)]
    pub ply_conf_percentile: f64,
}

pub fn run(a: ReconstructArgs) -> Result<i32> {
    // Every output is checked before minutes of work.
    fsio::check_writable(&a.out)?;
    if let Some(ply) = &a.ply {
        fsio::check_writable(ply)?;
    }
    if a.width == 0 || a.width % 14 != 0 {
        bail!("--width {}: VGGT needs a positive multiple of 14 (upstream uses 518)", a.width);
    }
    let source = Source::open(&SourceSpec::Path(a.input.clone()))?;
    if source.is_empty() {
        bail!("{}: has no frames", a.input.display());
    }
    let count = match (a.max_frames, &source) {
        (Some(0), _) => bail!("--max-frames must be at least 1"),
        (Some(n), _) => n,
        (None, Source::Video(_)) => 16,
        (None, _) => source.len(),
    };
    let plan = ReconstructPlan { frames: candidate_frames(source.len(), count), resize: a.resize, width: a.width };
    eprintln!("{}: {} frames, using {}", a.input.display(), source.len(), plan.frames.len());
    let compute = a.compute.resolve();
    let weights = super::resolve_weights(&a.weights, WeightsKind::Vggt)?;
    let vggt = LoadedVggt::load(&weights, &compute)?;
    let (w, h) = source.frame_size();
    let (nw, nh) = spatial_models::vggt::preprocess::network_size_for(w, h, plan.resize, plan.width);
    let flops = estimate_flops(&vggt.model.config, plan.frames.len(), nh, nw);
    eprintln!(
        "VGGT on {} frames at {nw}x{nh} (frames {w}x{h}), {:.1} GFLOP, roughly {:.0} s on a CPU; {}",
        plan.frames.len(),
        flops / 1e9,
        flops / CPU_FLOPS_GUESS,
        vggt.describe()
    );
    let line = ProgressLine::new("VGGT");
    let mut progress = |p: rc::Progress| line.stage(&p.stage, p.fraction, p.eta_s);
    let done = reconstruct(&vggt, &source, &plan, None, &Cancel::new(), &mut progress)?.ok_or_else(|| anyhow::anyhow!("cancelled"))?;
    line.finish();
    let rec = done.rec;
    let filter = PointFilter { source: PointSource::DepthAndCamera, threshold: f32::NEG_INFINITY, frame: None };
    println!("{}", export(&rec, ExportFormat::Safetensors, &filter, &[], &a.out)?);
    if let Some(ply) = &a.ply {
        let (_, conf) = points_of(&rec, PointSource::DepthAndCamera);
        let filter = PointFilter { threshold: confidence_threshold(conf, a.ply_conf_percentile), ..filter };
        println!("{}", export(&rec, ExportFormat::Ply, &filter, &[], ply)?);
    }
    Ok(0)
}
