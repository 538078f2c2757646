//! `export`: geometry to files other tools read. The geometry comes from a saved reconstruction,
//! the demo scene, or VGGT run on a video or folder.

use super::{ComputeArgs, ProgressLine};
use crate::pipeline::export::{ExportFormat, export};
use crate::pipeline::points::{PointFilter, PointSource, confidence_threshold, points_of};
use crate::pipeline::reconstruct::{LoadedVggt, ReconstructPlan, reconstruct};
use crate::pipeline::source::{Source, SourceSpec};
use crate::pipeline::threads::Cancel;
use crate::pipeline::weights::WeightsKind;
use anyhow::{Context, Result, bail};
use clap::Args;
use spatial_models::reconstruction::Reconstruction;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A reconstruction written by `reconstruct` or the viewer (safetensors).
    #[arg(long, conflicts_with_all = ["input", "demo"])]
    pub geometry: Option<PathBuf>,
    /// A video or folder of frames, reconstructed with --vggt first.
    #[arg(long, requires = "vggt")]
    pub input: Option<PathBuf>,
    /// The built-in demo scene (ground-truth geometry).
    #[arg(long)]
    pub demo: bool,
    /// VGGT weights (folder or repo id) for --input.
    #[arg(long)]
    pub vggt: Option<String>,
    /// Frames of --input to reconstruct, spread evenly.
    #[arg(long, default_value_t = 16)]
    pub frames: usize,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// colmap (a sparse model with tracks, and the frames, in the folder --out), colmap-text, glb
    /// (points and camera frustums), ply (points with confidence and frame), depth (16-bit depth
    /// and confidence maps with a JSON sidecar, in a folder) or safetensors (upstream's names).
    #[arg(long)]
    pub format: ExportFormat,
    /// Space-aware picks marked in a GLB (K).
    #[arg(long, default_value_t = 16)]
    pub picks: usize,
    /// Keep points at or above this percentile of the confidences (the viewer's default).
    #[arg(long, default_value_t = 25.0)]
    pub conf_percentile: f64,
    /// depth (depth unprojected with the cameras) or pointmap (the point head's map).
    #[arg(long, default_value = "depth")]
    pub points: String,
    /// Only the points of this geometry frame.
    #[arg(long)]
    pub frame: Option<usize>,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: ExportArgs) -> Result<i32> {
    crate::pipeline::fsio::check_writable(&a.out)?;
    if !(0.0..=100.0).contains(&a.conf_percentile) {
        bail!("--conf-percentile {}: expected 0 to 100", a.conf_percentile);
    }
    let source = match a.points.as_str() {
        "depth" => PointSource::DepthAndCamera,
        "pointmap" => PointSource::PointMap,
        other => bail!("--points {other}: expected depth or pointmap"),
    };
    let rec = match (&a.geometry, &a.input, a.demo) {
        (Some(g), _, _) => Reconstruction::load(g)?,
        (None, _, true) => match Source::open(&SourceSpec::Demo)? {
            Source::Geometry(g) => (*g.rec).clone(),
            _ => unreachable!("the demo is geometry"),
        },
        (None, Some(input), false) => {
            let src = Source::open(&SourceSpec::Path(input.clone()))?;
            let weights = super::resolve_weights(a.vggt.as_deref().context("--input needs --vggt")?, WeightsKind::Vggt)?;
            let vggt = LoadedVggt::load(&weights, &a.compute.resolve())?;
            let plan = ReconstructPlan::candidates(&src, a.frames);
            eprintln!("VGGT on {}", plan.describe(&src));
            let line = ProgressLine::new("VGGT");
            let mut progress = |p: crate::pipeline::reconstruct::Progress| line.stage(&p.stage, p.fraction, p.eta_s);
            let done = reconstruct(&vggt, &src, &plan, None, &Cancel::new(), &mut progress)?.context("cancelled")?;
            line.finish();
            done.rec
        }
        (None, None, false) => bail!("say what to export: --geometry FILE, --input VIDEO_OR_FOLDER --vggt WEIGHTS, or --demo"),
    };
    if let Some(f) = a.frame.filter(|&f| f >= rec.frames) {
        bail!("--frame {f}: the geometry has {} frames", rec.frames);
    }
    let (_, conf) = points_of(&rec, source);
    let filter = PointFilter { source, threshold: confidence_threshold(conf, a.conf_percentile), frame: a.frame };
    // The space-aware picks (upstream's settings, K below the frame count) are marked in a GLB.
    let picks = if a.format == ExportFormat::Glb && rec.frames > 1 {
        let params = spatial_models::sampling::SamplingParams { k: a.picks.min(rec.frames - 1), ..Default::default() };
        spatial_models::sampling::space_aware_sampling(&rec.world_points, &rec.world_points_conf, rec.frames, &params).map(|r| r.selected).unwrap_or_default()
    } else {
        Vec::new()
    };
    println!("{}", export(&rec, a.format, &filter, &picks, &a.out)?);
    Ok(0)
}
