//! VGGT on a source's frames: frame choice, decoding, preprocessing, the forward with named
//! stages, progress with an ETA, cancellation, and the on-disk cache. The CLI's `reconstruct`,
//! `ask --sampling space-aware`, evaluation runs and the GUI's VGGT thread all call this.

use super::cache::{CacheLookup, ReconstructionCache};
use super::device::Compute;
use super::source::{Source, candidate_frames};
use super::threads::Cancel;
use anyhow::{Context, Result};
use spatial_models::reconstruction::Reconstruction;
use spatial_models::vggt::preprocess::{ResizeMode, network_size_for, preprocess_frames_for};
use spatial_models::vggt::{CPU_FLOPS_GUESS, Vggt, VggtStage, estimate_flops};
use std::path::PathBuf;
use std::time::Instant;

/// Frames VGGT reconstructs by default on the CPU: VGGT-1B at 518 px costs tens of seconds per
/// frame there (upstream's 128 candidates would be hours).
pub const CPU_CANDIDATES: usize = 32;
/// Upstream's candidate count, the default on a GPU.
pub const GPU_CANDIDATES: usize = 128;
/// Frame width of the candidates on the CPU: fewer tokens per frame (VGGT's patches are 14 px), so
/// more candidates fit the same time.
pub const CPU_CANDIDATE_WIDTH: usize = 294;

/// What to reconstruct.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconstructPlan {
    /// Frames of the source (ascending).
    pub frames: Vec<usize>,
    pub resize: ResizeMode,
    /// Network input width (518 in upstream; multiples of 14).
    pub width: usize,
}

impl ReconstructPlan {
    /// Upstream's space-aware candidates: `min(count, len)` frames spread over the source, 518 px.
    pub fn candidates(source: &Source, count: usize) -> Self {
        Self { frames: candidate_frames(source.len(), count.max(1)), resize: ResizeMode::Crop, width: 518 }
    }

    /// "32 frames at 294x224".
    pub fn describe(&self, source: &Source) -> String {
        let (w, h) = source.frame_size();
        let (nw, nh) = network_size_for(w, h, self.resize, self.width);
        format!("{} frames at {nw}x{nh}", self.frames.len())
    }
}

/// Where a run stands, for a progress bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// "decoding frames", "aggregator block 3 of 24", ...
    pub stage: String,
    /// 0..=1 of the whole run (by estimated work).
    pub fraction: f64,
    pub elapsed_s: f64,
    /// Seconds left, from the work done so far (a guess before the first block ends).
    pub eta_s: f64,
}

/// A finished reconstruction.
pub struct Reconstructed {
    pub rec: Reconstruction,
    pub from_cache: bool,
    /// Set when a cache entry was found damaged and recomputed.
    pub cache_note: Option<String>,
}

/// A loaded VGGT, with where it came from (for cache keys and messages).
pub struct LoadedVggt {
    pub model: Vggt,
    pub dir: PathBuf,
    pub compute: Compute,
}

impl LoadedVggt {
    pub fn load(dir: &std::path::Path, compute: &Compute) -> Result<Self> {
        Ok(Self { model: super::models::load_vggt(dir, compute)?, dir: dir.to_path_buf(), compute: compute.clone() })
    }

    fn weight_files(&self) -> Vec<PathBuf> {
        let mut files = spatial_models::checkpoint::CheckpointDir::open(&self.dir).map(|c| c.safetensors).unwrap_or_default();
        files.push(self.dir.join("config.json"));
        files
    }

    /// "VGGT from DIR (embed 1024, 24 block pairs) on cpu f32".
    pub fn describe(&self) -> String {
        format!("VGGT from {} (embed {}, {} block pairs) on {}", self.dir.display(), self.model.config.embed_dim, self.model.config.depth, self.compute.label())
    }
}

/// Reconstructs `plan`'s frames of `source`, from the cache when it has them. Returns None when
/// cancelled.
pub fn reconstruct(vggt: &LoadedVggt, source: &Source, plan: &ReconstructPlan, cache: Option<&ReconstructionCache>, cancel: &Cancel, progress: &mut dyn FnMut(Progress)) -> Result<Option<Reconstructed>> {
    let start = Instant::now();
    // bf16 products give other numbers than the exact bf16-weight path: a key of their own.
    let products = if vggt.compute.bf16_products { " with bf16 products" } else { "" };
    let settings = format!("{:?} width {} dtype {:?}{products}", plan.resize, plan.width, vggt.compute.dtype);
    let inputs: Vec<PathBuf> = match source {
        Source::Folder(f) => plan.frames.iter().map(|&i| f.files[i].clone()).collect(),
        _ => source.path().map(|p| vec![p.to_path_buf()]).unwrap_or_default(),
    };
    let key = (!inputs.is_empty()).then(|| ReconstructionCache::key(&inputs, &plan.frames, &vggt.weight_files(), &settings));
    let mut cache_note = None;
    if let (Some(cache), Some(key)) = (cache, &key) {
        match cache.get(key) {
            CacheLookup::Hit(rec) if rec.frames == plan.frames.len() => return Ok(Some(Reconstructed { rec, from_cache: true, cache_note: None })),
            CacheLookup::Hit(_) | CacheLookup::Miss => {}
            CacheLookup::Damaged(why) => cache_note = Some(format!("a cached reconstruction was damaged and is recomputed ({why})")),
        }
    }
    let report = |stage: String, fraction: f64, eta_s: f64, progress: &mut dyn FnMut(Progress)| progress(Progress { stage, fraction, elapsed_s: start.elapsed().as_secs_f64(), eta_s });

    let (w, h) = source.frame_size();
    let (nw, nh) = network_size_for(w, h, plan.resize, plan.width);
    let flops = estimate_flops(&vggt.model.config, plan.frames.len(), nh, nw);
    let guess = if vggt.compute.device.is_cpu() { flops / CPU_FLOPS_GUESS } else { flops / 50e12 };
    report(format!("decoding {} frames", plan.frames.len()), 0.0, guess, progress);
    // At most 1920 wide: a 4K clip's frames would take 4x the memory for the same 518 px input.
    let frames = source.frames(&plan.frames, Some(1920))?;
    if cancel.is_cancelled() {
        return Ok(None);
    }
    let names: Vec<String> = plan.frames.iter().map(|&i| source.frame_name(i)).collect();
    let images = preprocess_frames_for(&frames, &names, plan.resize, plan.width, &candle_core::Device::Cpu).context("preprocessing the frames for VGGT")?;
    drop(frames);
    let images = images.to_device(&vggt.compute.device)?;
    let (s, _, ih, iw) = images.dims4()?;
    let depth = vggt.model.config.depth;
    // Work fractions per reported step: the aggregator's blocks share 85%, the heads the rest.
    let fraction_after = |done: usize| -> f64 {
        if done <= depth { 0.85 * done as f64 / depth as f64 } else { 0.85 + 0.05 * (done - depth).min(1) as f64 + 0.05 * (done - depth).saturating_sub(1).min(2) as f64 }
    };
    let compute_start = Instant::now();
    let mut on_step = |done: usize, _total: usize| {
        let frac = fraction_after(done);
        let elapsed = compute_start.elapsed().as_secs_f64();
        let eta = if frac > 0.0 { elapsed / frac * (1.0 - frac) } else { guess };
        report(format!("VGGT on {s} frames at {iw}x{ih}: {}", VggtStage::after(done, depth).describe()), frac, eta, progress);
        !cancel.is_cancelled()
    };
    on_step(0, depth + 3);
    let out = spatial_models::nn::cancellable(cancel.flag(), || Ok(vggt.model.forward_with_progress(&images, Some(&mut on_step))?))?;
    let Some(Some(out)) = out else { return Ok(None) };
    let rec = Reconstruction::from_vggt(&images, &out, plan.frames.iter().map(|&i| i as i64).collect())?;
    if let (Some(cache), Some(key)) = (cache, &key) {
        // A failed cache write only costs the next open a re-run.
        if let Err(e) = cache.put(key, &rec) {
            eprintln!("warning: the reconstruction was not cached: {e:#}");
        }
    }
    Ok(Some(Reconstructed { rec, from_cache: false, cache_note }))
}
