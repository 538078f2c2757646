//! Loading the models for a device and dtype, after checking every tensor's name and shape
//! against what the config implies, so a wrong checkpoint gets a message naming the tensor (and the
//! file) rather than a loader error from deep inside.

use super::device::Compute;
use anyhow::{Context, Result, bail};
use spatial_models::checkpoint::{CheckReport, CheckpointDir, ModelKind, compare, detect_kind};
use spatial_models::spatial_mllm::{QwenTokenizer, SpatialMllm};
use spatial_models::vggt::{Vggt, VggtConfig, VggtParts, expected_tensors};
use std::path::Path;

/// Parses the VGGT part of a checkpoint's config. A folder without config.json is read with
/// VGGT-1B's sizes, and every message then says so.
pub fn vggt_config(dir: &CheckpointDir, json: &serde_json::Value, key: Option<&str>) -> Result<VggtConfig> {
    let section = match key {
        Some(k) => json.get(k).cloned().unwrap_or(serde_json::Value::Object(Default::default())),
        None => json.clone(),
    };
    let name = config_name(dir);
    let cfg: VggtConfig = serde_json::from_value(section).with_context(|| format!("{name}: fields do not fit the VGGT config"))?;
    cfg.validate().with_context(|| format!("{name}: inconsistent VGGT config"))?;
    Ok(cfg)
}

/// The config file's path, or a note that there is none and VGGT-1B's sizes were assumed.
fn config_name(dir: &CheckpointDir) -> String {
    match &dir.config {
        Some(p) => p.display().to_string(),
        None => format!("{} (no config.json, so VGGT-1B's sizes were assumed)", dir.dir.display()),
    }
}

/// Every tensor a VGGT checkpoint must hold, against what it holds.
pub fn check_vggt(dir: &CheckpointDir) -> Result<(VggtConfig, CheckReport)> {
    let json = dir.config_json()?;
    let tensors = dir.tensors()?;
    let names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    match detect_kind(&json, &names) {
        Some(ModelKind::Vggt) => {}
        Some(other) => bail!("{}: this is a {other} checkpoint; reconstruction needs a VGGT checkpoint (with the camera, depth and point heads)", dir.dir.display()),
        None => bail!("{}: no VGGT tensors (aggregator.*) found", dir.dir.display()),
    }
    let cfg = vggt_config(dir, &json, None)?;
    let present = tensors.iter().map(|(k, v)| (k.clone(), v.shape.clone())).collect();
    let report = compare(&expected_tensors(&cfg, VggtParts::Full)?, &present, &["track_head."]);
    Ok((cfg, report))
}

/// A VGGT checkpoint folder, checked tensor by tensor, then loaded on `compute`.
pub fn load_vggt(dir: &Path, compute: &Compute) -> Result<Vggt> {
    let ckpt = CheckpointDir::open(dir)?;
    let (cfg, report) = check_vggt(&ckpt)?;
    if !report.loads() && ckpt.config.is_none() {
        // The likeliest cause: a smaller model whose config.json was left behind.
        let total = report.missing.len() + report.matched + report.mismatched.len();
        let first = report.missing.first().map(|(n, s)| format!("{n} {s:?} is missing")).or_else(|| report.mismatched.first().map(|(n, want, got)| format!("{n} is {got:?}, not {want:?}"))).unwrap_or_default();
        bail!(
            "{}: has no config.json, so VGGT-1B's sizes were assumed (embed {}, {} block pairs); with those, {} of {total} tensors do not fit ({first}). Put the checkpoint's config.json beside its weights",
            dir.display(),
            cfg.embed_dim,
            cfg.depth,
            report.missing.len() + report.mismatched.len()
        );
    }
    if !report.loads() {
        let what = config_name(&ckpt);
        if let Some((name, shape)) = report.missing.first() {
            bail!(
                "{}: tensor {name} {shape:?} is missing ({} of {} missing in all; sizes from {what}; `spatial-viewer weights check` lists them)",
                dir.display(),
                report.missing.len(),
                report.missing.len() + report.matched + report.mismatched.len()
            );
        }
        if let Some((name, want, got)) = report.mismatched.first() {
            bail!("{}: tensor {name} has shape {got:?} but {what} implies {want:?}", dir.display());
        }
    }
    Vggt::load(&cfg, &ckpt.safetensors, "", VggtParts::Full, compute.dtype, &compute.device).with_context(|| format!("{}: loading VGGT failed", dir.display()))
}

/// Spatial-MLLM (or plain Qwen2.5-VL) with its tokenizer.
pub struct LoadedMllm {
    pub model: SpatialMllm,
    pub tokenizer: QwenTokenizer,
    /// Where it runs and the weights' dtype in memory (see [`Compute::for_stored_weights`]).
    pub compute: Compute,
}

impl LoadedMllm {
    /// "Spatial-MLLM (36 layers, hidden 2048, VGGT spatial encoder)".
    pub fn describe(&self) -> String {
        let c = &self.model.config;
        let spatial = self.model.has_spatial();
        format!(
            "{} ({} layers, hidden {}{})",
            if spatial { "Spatial-MLLM" } else { "Qwen2.5-VL" },
            c.num_hidden_layers,
            c.hidden_size,
            if spatial { ", VGGT spatial encoder" } else { "" }
        )
    }
}

/// Loads a Qwen2.5-VL / Spatial-MLLM folder: config.json, safetensors (checked by name and shape
/// first) and tokenizer.json. `base_model` leaves the spatial branch out.
pub fn load_mllm(dir: &Path, base_model: bool, compute: &Compute) -> Result<LoadedMllm> {
    let ckpt = CheckpointDir::open(dir)?;
    // The kind first (from the headers): a VGGT folder is the wrong model, not a missing tokenizer.
    let names: Vec<String> = ckpt.tensors()?.into_keys().collect();
    match detect_kind(&ckpt.config_json()?, &names.iter().map(String::as_str).collect::<Vec<_>>()) {
        Some(ModelKind::SpatialMllm | ModelKind::Qwen25Vl) | None => {}
        Some(other) => bail!("{}: this is a {other} checkpoint, not Qwen2.5-VL or Spatial-MLLM", dir.display()),
    }
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        bail!("{}: missing; questions need the checkpoint's tokenizer.json beside its weights", tokenizer_path.display());
    }
    let compute = compute.for_stored_weights(ckpt.stored_float_dtype()?);
    let model = SpatialMllm::load(&ckpt, !base_model, compute.dtype, &compute.device)?;
    let tokenizer = QwenTokenizer::from_file(&tokenizer_path)?;
    Ok(LoadedMllm { model, tokenizer, compute })
}
