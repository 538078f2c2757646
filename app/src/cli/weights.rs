//! `weights check DIR`: what a checkpoint folder holds and whether the model would load from it,
//! from config.json and the safetensors headers alone (no tensor data is read).

use crate::pipeline::models::check_vggt;
use crate::pipeline::weights::{WeightsKind, WeightsSpec, cached_repos, hub_cache_dir};
use anyhow::{Context, Result};
use clap::Subcommand;
use spatial_models::checkpoint::{CheckReport, CheckpointDir, ModelKind, detect_kind};
use spatial_models::qwen2_5_vl::Qwen25VlConfig;
use spatial_models::spatial_mllm::expected_tensors_for_checkpoint;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Report every missing, mis-shaped and unexpected tensor; exit 0 only if the model would load.
    /// Takes a folder or a Hugging Face repo id (resolved from the hub cache).
    Check { weights: String },
    /// Download a repo's weights into the Hugging Face cache (what `hf download` does), resuming
    /// partial files; prints the snapshot folder.
    Download {
        /// ORG/NAME or ORG/NAME@REVISION.
        repo: String,
    },
    /// The model repos in the Hugging Face cache.
    List,
}

pub fn run(cmd: WeightsCommand) -> Result<i32> {
    match cmd {
        WeightsCommand::Check { weights } => check(&super::resolve_weights(&weights, WeightsKind::Any)?),
        WeightsCommand::Download { repo } => {
            let spec = WeightsSpec::parse(&repo);
            if !matches!(spec, WeightsSpec::Repo { .. }) {
                anyhow::bail!("{repo}: not a repo id (ORG/NAME or ORG/NAME@REVISION)");
            }
            // The kind is unknown before the download: fetch what either model needs.
            let dir = super::resolve_weights(&repo, WeightsKind::Mllm).or_else(|_| super::resolve_weights(&repo, WeightsKind::Vggt))?;
            println!("{}", dir.display());
            Ok(0)
        }
        WeightsCommand::List => {
            println!("Hugging Face cache: {}", hub_cache_dir().display());
            for r in cached_repos() {
                println!("{}  {}", r.id, r.snapshot.display());
            }
            Ok(0)
        }
    }
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
            if ckpt.config.is_none() {
                println!("  no config.json: VGGT-1B's sizes were assumed");
            }
            let (_, report) = check_vggt(&ckpt)?;
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
            let report = spatial_models::checkpoint::compare(&requested, &all, &heads);
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
