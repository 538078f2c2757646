//! `reconstruct`: VGGT on a folder of frames, geometry to safetensors (and optionally PLY).

use super::ProgressLine;
use anyhow::{Context, Result, bail};
use clap::Args;
use spatial_models::checkpoint::{CheckpointDir, ModelKind, compare, detect_kind};
use spatial_models::reconstruction::Reconstruction;
use spatial_models::sampling::uniform_indices;
use spatial_models::vggt::preprocess::{ResizeMode, RgbFrame, list_image_files, network_size, preprocess_frames};
use spatial_models::vggt::{CPU_FLOPS_GUESS, Vggt, VggtConfig, VggtParts, estimate_flops, expected_tensors};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ReconstructArgs {
    /// VGGT checkpoint folder (config.json + model.safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    /// Folder of frames (PNG/JPEG, sorted by name) or a video file.
    #[arg(long)]
    pub input: PathBuf,
    /// crop: width 518, centre-crop tall frames; pad: longest side 518, pad to square; none: as is.
    #[arg(long, default_value = "crop")]
    pub resize: String,
    /// Use at most this many frames, spread evenly (both ends included). Videos default to 16.
    #[arg(long)]
    pub max_frames: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Output safetensors with images, pose_enc, depth, world_points, cameras, frame_indices.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the confident points (depth unprojected with the cameras) as a binary PLY.
    #[arg(long)]
    pub ply: Option<PathBuf>,
    /// Confidence percentile for the PLY points.
    #[arg(long, default_value_t = 50.0)]
    pub ply_conf_percentile: f64,
}

/// Opens a VGGT checkpoint, checking every tensor's name and shape first so a bad checkpoint
/// gets a message naming the tensor rather than a loader error.
pub fn load_vggt(dir: &Path, dtype: candle_core::DType, device: &candle_core::Device) -> Result<Vggt> {
    let ckpt = CheckpointDir::open(dir)?;
    let json = ckpt.config_json()?;
    let tensors = ckpt.tensors()?;
    let names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    match detect_kind(&json, &names) {
        Some(ModelKind::Vggt) => {}
        Some(other) => bail!("{}: this is a {other} checkpoint; reconstruction needs a VGGT checkpoint (with the camera, depth and point heads)", dir.display()),
        None => bail!("{}: no VGGT tensors (aggregator.*) found", dir.display()),
    }
    let cfg: VggtConfig = super::weights::vggt_config(&ckpt, &json, None)?;
    let present = tensors.iter().map(|(k, v)| (k.clone(), v.shape.clone())).collect();
    let report = compare(&expected_tensors(&cfg, VggtParts::Full)?, &present, &["track_head."]);
    if let Some((name, shape)) = report.missing.first() {
        bail!("{}: tensor {name} {shape:?} is missing ({} missing in all; run `spatial-viewer weights check` for the list)", dir.display(), report.missing.len());
    }
    if let Some((name, want, got)) = report.mismatched.first() {
        bail!("{}: tensor {name} has shape {got:?} but config.json implies {want:?}", dir.display());
    }
    Vggt::load(&cfg, &ckpt.safetensors, "", VggtParts::Full, dtype, device).with_context(|| format!("{}: loading VGGT failed", dir.display()))
}

pub fn run(a: ReconstructArgs) -> Result<i32> {
    let mode: ResizeMode = a.resize.parse()?;
    let dtype = spatial_models::parse_dtype(&a.dtype)?;
    let device = spatial_models::open_device(&a.device)?;
    let (frames, names, picks) = if a.input.is_file() {
        let info = crate::video::VideoInfo::probe(&a.input)?;
        let picks = match a.max_frames {
            Some(0) => bail!("--max-frames must be at least 1"),
            Some(n) if n < info.frames => uniform_indices(info.frames, n),
            Some(_) => (0..info.frames).collect(),
            None => uniform_indices(info.frames, 16.min(info.frames)),
        };
        eprintln!("{}: {} frames ({}x{}, {}), using {}", a.input.display(), info.frames, info.width, info.height, info.codec, picks.len());
        // Decoded at most 1920 wide: the model input is 518 wide anyway.
        let frames = info.decode(&picks, Some(1920))?;
        let names = picks.iter().map(|i| format!("{} frame {i}", a.input.display())).collect::<Vec<_>>();
        (frames, names, picks)
    } else {
        let files = list_image_files(&a.input)?;
        let picks: Vec<usize> = match a.max_frames {
            Some(0) => bail!("--max-frames must be at least 1"),
            Some(n) if n < files.len() => uniform_indices(files.len(), n),
            _ => (0..files.len()).collect(),
        };
        let frames = picks.iter().map(|&i| RgbFrame::open(&files[i])).collect::<Result<Vec<_>>>()?;
        let names: Vec<String> = picks.iter().map(|&i| files[i].display().to_string()).collect();
        (frames, names, picks)
    };
    let images = preprocess_frames(&frames, &names, mode, &device)?;
    let (s, _, h, w) = images.dims4()?;

    let model = load_vggt(&a.weights, dtype, &device)?;
    let flops = estimate_flops(&model.config, s, h, w);
    let (nw, nh) = network_size(frames[0].width, frames[0].height, mode);
    eprintln!(
        "VGGT on {s} frames at {w}x{h} (first frame {}x{} -> {nw}x{nh}), {:.1} GFLOP, roughly {:.0} s on a CPU",
        frames[0].width,
        frames[0].height,
        flops / 1e9,
        flops / CPU_FLOPS_GUESS
    );
    let progress = ProgressLine::new("aggregator");
    let mut cb = |done: usize, total: usize| {
        progress.update(done, total);
        true
    };
    let out = model.forward_with_progress(&images, Some(&mut cb))?.expect("never cancelled");
    let rec = Reconstruction::from_vggt(&images, &out, picks.iter().map(|&i| i as i64).collect())?;
    rec.save(&a.out)?;
    println!("wrote {} ({s} frames, {w}x{h})", a.out.display());
    if let Some(ply) = &a.ply {
        let points = rec.points_from_depth();
        let n = rec.write_ply(ply, &points, &rec.depth_conf, a.ply_conf_percentile)?;
        println!("wrote {} ({n} points)", ply.display());
    }
    Ok(0)
}
