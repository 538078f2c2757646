//! `eval`: VSI-Bench, scored as upstream scores it: `score` rescoring results, `run` asking a
//! model the benchmark's questions (resumable, shardable), `merge` combining shards.

use super::{ComputeArgs, ProgressLine};
use crate::pipeline::eval::results::merge;
use crate::pipeline::eval::run::{EvalModels, EvalSettings, Sampling, parse_shard, run};
use crate::pipeline::eval::score_file;
use crate::pipeline::models::load_mllm;
use crate::pipeline::reconstruct::{GPU_CANDIDATES, LoadedVggt};
use crate::pipeline::threads::Cancel;
use crate::pipeline::weights::WeightsKind;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Rescore results in upstream's layout (a list of {"sample", "model_output"}): writes
    /// OUT/results.json (with the cleaned answers, rewards, correctness) and OUT/metrics.json.
    Score {
        results: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Ask a model VSI-Bench's questions; results are journalled as each finishes, so a rerun with
    /// the same --out continues where a killed run stopped.
    Run(RunArgs),
    /// Combine the folders of shard runs into one results.json and metrics.json.
    Merge {
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// VSI-Bench as `hf download nyu-visionx/VSI-Bench --repo-type dataset` writes it.
    #[arg(long)]
    pub dataset: PathBuf,
    /// The configuration in the dataset card (full or debiased).
    #[arg(long, default_value = "full")]
    pub config: String,
    /// Where DATASET/SCENE.mp4 (or upstream's DATASET/SCENE/ frame folders) are; default --dataset.
    #[arg(long)]
    pub videos: Option<PathBuf>,
    /// Spatial-MLLM or Qwen2.5-VL (a folder or repo id).
    #[arg(long)]
    pub weights: String,
    /// Frames per question (upstream: 16).
    #[arg(long, default_value_t = 16)]
    pub frames: usize,
    /// uniform (qwen_vl_utils' linspace) or space-aware (VGGT once per video, cached; needs --vggt).
    #[arg(long, default_value = "uniform")]
    pub sampling: String,
    #[arg(long)]
    pub vggt: Option<String>,
    /// Uniform candidates VGGT reconstructs per video for space-aware sampling.
    #[arg(long, default_value_t = GPU_CANDIDATES)]
    pub candidates: usize,
    /// Plain Qwen2.5-VL on the same frames (the spatial branch is not used).
    #[arg(long)]
    pub base_model: bool,
    /// Only these question types (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub question_types: Vec<String>,
    /// Only the first N questions (after --question-types).
    #[arg(long)]
    pub limit: Option<usize>,
    /// I/N: the I-th (from 0) of N contiguous parts; `eval merge` combines them.
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[arg(long)]
    pub out: PathBuf,
}

fn print_metrics(m: &Value) {
    if let Some(per) = m["per_question_type"].as_object() {
        for (t, v) in per {
            eprintln!("  {t:<30} {:>8.4}  ({} questions)", v["score"].as_f64().unwrap_or(0.0), v["count"]);
        }
    }
    for k in ["acc", "mra", "all"] {
        eprintln!("  {k:<30} micro {:.4}  macro {:.4}", m[k]["micro"].as_f64().unwrap_or(0.0), m[k]["macro"].as_f64().unwrap_or(0.0));
    }
}

pub fn run_command(command: EvalCommand) -> Result<i32> {
    match command {
        EvalCommand::Score { results, out } => {
            let m = score_file(&results, &out)?;
            eprintln!("wrote {} and {}", out.join("results.json").display(), out.join("metrics.json").display());
            print_metrics(&m);
            Ok(0)
        }
        EvalCommand::Merge { runs, out } => {
            let (n, m) = merge(&runs, &out)?;
            eprintln!("merged {n} results from {} runs into {}", runs.len(), out.display());
            print_metrics(&m);
            Ok(0)
        }
        EvalCommand::Run(a) => run_eval(a),
    }
}

fn run_eval(a: RunArgs) -> Result<i32> {
    let sampling = match a.sampling.as_str() {
        "uniform" => Sampling::Uniform,
        "space-aware" | "sa" => Sampling::SpaceAware,
        other => bail!("--sampling '{other}': expected uniform or space-aware"),
    };
    if sampling == Sampling::SpaceAware && a.vggt.is_none() {
        bail!("--sampling space-aware needs --vggt (a VGGT checkpoint: folder or repo id)");
    }
    if a.frames == 0 || a.max_new_tokens == 0 || a.candidates == 0 {
        bail!("--frames, --candidates and --max-new-tokens must be at least 1");
    }
    let shard = parse_shard(&a.shard)?;
    let settings = EvalSettings {
        videos: a.videos.clone().unwrap_or_else(|| a.dataset.clone()),
        dataset: a.dataset.clone(),
        config: a.config.clone(),
        weights: super::resolve_weights(&a.weights, WeightsKind::Mllm)?,
        vggt: a.vggt.as_deref().map(|v| super::resolve_weights(v, WeightsKind::Vggt)).transpose()?,
        frames: a.frames,
        sampling,
        candidates: a.candidates,
        base_model: a.base_model,
        question_types: a.question_types.clone(),
        limit: a.limit,
        shard,
        max_new_tokens: a.max_new_tokens,
    };
    // The questions first: a wrong dataset is reported before minutes of loading.
    let questions = crate::pipeline::eval::run::select_questions(&settings)?;
    eprintln!("{} questions (shard {}/{}, config {})", questions.len(), shard.0, shard.1, a.config);
    let compute = a.compute.resolve();
    let mllm = load_mllm(&settings.weights, a.base_model, &compute).with_context(|| format!("{}: cannot load the model", settings.weights.display()))?;
    eprintln!("{}: {} on {}", settings.weights.display(), mllm.describe(), mllm.compute.label());
    let vggt = settings.vggt.as_ref().filter(|_| sampling == Sampling::SpaceAware).map(|d| LoadedVggt::load(d, &compute)).transpose()?;
    let mut models = EvalModels { mllm, vggt };
    let line = ProgressLine::new("VSI-Bench");
    let mut progress = |p: crate::pipeline::eval::run::EvalProgress| {
        line.stage(&format!("{}/{} ({} from before), {:.1} questions/min; {}", p.done, p.total, p.resumed, p.questions_per_minute, p.last), p.done as f64 / p.total.max(1) as f64, p.eta_s);
    };
    let metrics = run(&settings, &questions, &mut models, &a.out, &Cancel::new(), &mut progress)?;
    line.finish();
    eprintln!("wrote {} and {}", a.out.join("results.json").display(), a.out.join("metrics.json").display());
    print_metrics(&metrics);
    Ok(0)
}
