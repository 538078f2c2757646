//! `weights check DIR`: what a checkpoint folder holds and whether the model would load from it,
//! from config.json and the safetensors headers alone (no tensor data is read).

use anyhow::{Context, Result};
use clap::Subcommand;
use spatial_models::checkpoint::{CheckReport, CheckpointDir, ModelKind, compare, detect_kind};
use spatial_models::qwen2_5_vl::Qwen25VlConfig;
use spatial_models::spatial_mllm::expected_tensors_for_checkpoint;
use spatial_models::vggt::{VggtConfig, VggtParts, expected_tensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Report every missing, mis-shaped and unexpected tensor; exit 0 only if the model would load.
    Check { dir: PathBuf },
}

pub fn run(cmd: WeightsCommand) -> Result<i32> {
    match cmd {
        WeightsCommand::Check { dir } => check(&dir),
    }
}

/// Parses the VGGT part of a config, naming the file on error.
pub fn vggt_config(dir: &CheckpointDir, json: &serde_json::Value, key: Option<&str>) -> Result<VggtConfig> {
    let section = match key {
        Some(k) => json.get(k).cloned().unwrap_or(serde_json::Value::Object(Default::default())),
        None => json.clone(),
    };
    let name = dir.config.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_else(|| "(no config.json: VGGT-1B defaults)".into());
    let cfg: VggtConfig = serde_json::from_value(section).with_context(|| format!("{name}: fields do not fit the VGGT config"))?;
    cfg.validate().with_context(|| format!("{name}: inconsistent VGGT config"))?;
    Ok(cfg)
}

fn print_report(what: &str, report: &CheckReport) {
    println!("{what}: {} tensors match", report.matched);
    for (name, shape) in &report.missing {
        println!("  missing     {name} {shape:?}");
    }
    for (name, want, got) in &report.mismatched {
        println!("  wrong shape {name}: the model needs {want:?}, the checkpoint has {got:?}");
    }
    for name in &report.unexpected {
        println!("  unexpected  {name}");
    }
    if !report.ignored.is_empty() {
        println!("  ({} tensors present but not used by this app, e.g. {})", report.ignored.len(), report.ignored[0]);
    }
}

fn check(dir: &Path) -> Result<i32> {
    let ckpt = CheckpointDir::open(dir)?;
    let json = ckpt.config_json()?;
    let tensors = ckpt.tensors()?;
    let names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    let kind = detect_kind(&json, &names).with_context(|| format!("{}: cannot tell the model kind (no model_type in config.json and no known tensor prefix)", dir.display()))?;
    println!("{}: {kind} checkpoint, {} tensors in {} file(s)", dir.display(), tensors.len(), ckpt.safetensors.len());
    let bad_dtypes: Vec<_> = tensors.iter().filter(|(_, t)| !matches!(t.dtype.as_str(), "F32" | "BF16" | "F16")).collect();
    for (name, t) in &bad_dtypes {
        println!("  unsupported dtype {} for {name}", t.dtype);
    }
    let shapes = |prefix: &str| -> BTreeMap<String, Vec<usize>> {
        tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.shape.clone()))).collect()
    };
    let ok = match kind {
        ModelKind::Vggt => {
            let cfg = vggt_config(&ckpt, &json, None)?;
            let report = compare(&expected_tensors(&cfg, VggtParts::Full)?, &shapes(""), &["track_head."]);
            print_report("VGGT", &report);
            report.loads()
        }
        ModelKind::SpatialMllm | ModelKind::Qwen25Vl => {
            let name = ckpt.config.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_else(|| format!("{}/config.json", dir.display()));
            anyhow::ensure!(ckpt.config.is_some(), "{name}: missing; Qwen2.5-VL and Spatial-MLLM folders need their config.json");
            let cfg = Qwen25VlConfig::from_value(json.clone()).with_context(|| format!("{name}: does not parse as a Qwen2.5-VL config"))?;
            cfg.validate().with_context(|| format!("{name}: inconsistent config"))?;
            let all = shapes("");
            let spatial = kind == ModelKind::SpatialMllm;
            let requested = expected_tensors_for_checkpoint(&cfg, &all, spatial)?;
            let heads = ["spatial_encoder.vggt_model.camera_head.", "spatial_encoder.vggt_model.depth_head.", "spatial_encoder.vggt_model.point_head.", "spatial_encoder.vggt_model.track_head."];
            let report = compare(&requested, &all, &heads);
            print_report(if spatial { "Spatial-MLLM (Qwen2.5-VL + VGGT aggregator + connector)" } else { "Qwen2.5-VL" }, &report);
            let tokenizer = dir.join("tokenizer.json");
            let has_tokenizer = tokenizer.is_file();
            if !has_tokenizer {
                println!("  missing     {} (questions need the checkpoint's tokenizer)", tokenizer.display());
            }
            report.loads() && has_tokenizer
        }
    };
    let ok = ok && bad_dtypes.is_empty();
    println!("{}", if ok { "OK: the model would load" } else { "FAILED: the model would not load" });
    Ok(if ok { 0 } else { 1 })
}
