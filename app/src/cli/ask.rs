//! `ask`: a question about a video (or folder of frames) answered by Spatial-MLLM, streamed to
//! stdout; `--base-model` runs plain Qwen2.5-VL on the same frames.

use super::{ComputeArgs, ProgressLine};
use crate::pipeline::ask::{AnswerEvent, Question, ask};
use crate::pipeline::fsio;
use crate::pipeline::models::load_mllm;
use crate::pipeline::reconstruct::{LoadedVggt, ReconstructPlan, reconstruct};
use crate::pipeline::sample::space_aware;
use crate::pipeline::source::{FrameCount, Source, SourceSpec, question_frames};
use crate::pipeline::threads::Cancel;
use crate::pipeline::weights::WeightsKind;
use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use spatial_models::reconstruction::Reconstruction;
use spatial_models::sampling::SamplingParams;
use spatial_models::spatial_mllm::processor::QuestionFormat;
use spatial_models::spatial_mllm::{GenerationParams, StopReason};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AskArgs {
    /// Spatial-MLLM or Qwen2.5-VL: a folder (config.json, safetensors single or sharded,
    /// tokenizer.json) or a Hugging Face repo id from the hub cache.
    #[arg(long)]
    pub weights: String,
    /// Video file or folder of frames (sorted by name).
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long)]
    pub question: String,
    /// free (as typed), numeric (VSI-Bench's single word or phrase), mc (with --option).
    #[arg(long, default_value = "free")]
    pub format: String,
    /// A multiple-choice option, already prefixed ("A. 1.2 m"); repeat for each.
    #[arg(long = "option")]
    pub options: Vec<String>,
    /// Frames to look at: a number (rounded to even) or 'all'.
    #[arg(long, default_value = "16")]
    pub frames: String,
    /// uniform (qwen_vl_utils' linspace) or space-aware (needs --vggt or --geometry).
    #[arg(long, default_value = "uniform")]
    pub sampling: String,
    /// VGGT checkpoint (folder or repo id) for space-aware sampling (run on up to --candidates
    /// frames at 518 px).
    #[arg(long)]
    pub vggt: Option<String>,
    /// Geometry written by `reconstruct` to pick space-aware frames from, instead of running VGGT.
    #[arg(long)]
    pub geometry: Option<PathBuf>,
    /// Uniform candidates for space-aware sampling.
    #[arg(long, default_value_t = 128)]
    pub candidates: usize,
    /// qwen: qwen_vl_utils' smart_resize; none: frames as they are (sides multiples of 28).
    #[arg(long, default_value = "qwen")]
    pub resize: String,
    /// Plain Qwen2.5-VL on the same frames (the spatial branch is not used).
    #[arg(long)]
    pub base_model: bool,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 = greedy (the default, as upstream in effect).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 299792458)]
    pub seed: u64,
    #[arg(long, default_value = "You are a helpful assistant.")]
    pub system: String,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Write input_ids, position_ids, video_embeds, fused_embeds, logits_last, generated_ids.
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

pub fn run(a: AskArgs) -> Result<i32> {
    if a.question.trim().is_empty() {
        bail!("--question is empty");
    }
    let format = match a.format.as_str() {
        "free" => QuestionFormat::Free,
        "numeric" => QuestionFormat::Numeric,
        "mc" | "multiple-choice" => {
            if a.options.is_empty() {
                bail!("--format mc needs its options (--option \"A. ...\" for each)");
            }
            QuestionFormat::MultipleChoice(a.options.clone())
        }
        other => bail!("--format '{other}': expected free, numeric or mc"),
    };
    let resize = match a.resize.as_str() {
        "qwen" => true,
        "none" => false,
        other => bail!("--resize '{other}': expected qwen or none"),
    };
    let count: FrameCount = a.frames.parse()?;
    ensure!(a.max_new_tokens >= 1, "--max-new-tokens 0: the answer needs at least one token");
    let params = GenerationParams { max_new_tokens: a.max_new_tokens, temperature: a.temperature, top_p: a.top_p, seed: a.seed };
    params.check().map_err(|e| anyhow::anyhow!("--{e}"))?;
    let sampling = a.sampling.as_str();
    if !matches!(sampling, "uniform" | "space-aware" | "sa") {
        bail!("--sampling '{sampling}': expected uniform or space-aware");
    }
    if sampling != "uniform" && a.geometry.is_none() && a.vggt.is_none() {
        bail!("--sampling space-aware needs --vggt DIR (a VGGT checkpoint) or --geometry FILE (from `reconstruct`)");
    }
    if let Some(dump) = &a.dump {
        fsio::check_writable(dump)?;
    }
    let source = Source::open(&SourceSpec::Path(a.input.clone()))?;
    if source.is_empty() {
        bail!("{}: has no frames to ask about", a.input.display());
    }
    let compute = a.compute.resolve();
    let weights = super::resolve_weights(&a.weights, WeightsKind::Mllm)?;
    let mut loaded = load_mllm(&weights, a.base_model, &compute).with_context(|| format!("{}: cannot load the question-answering model", weights.display()))?;
    eprintln!("{}: {} loaded on {}", weights.display(), loaded.describe(), loaded.compute.label());

    let indices = if sampling == "uniform" { question_frames(source.len(), count)? } else { space_aware_indices(&a, &source, count, &compute)? };
    eprintln!("{}: {} frames, asking about {} of them: {:?}", a.input.display(), source.len(), indices.len(), indices);
    let question = Question {
        text: a.question.clone(),
        format,
        system: Some(a.system.clone()),
        use_spatial: !a.base_model,
        params,
        resize,
    };
    let mut stage_line: Option<(String, ProgressLine)> = None;
    let mut stdout = std::io::stdout();
    let mut events = |e: AnswerEvent| match e {
        AnswerEvent::Stage { name, done, total } => {
            if stage_line.as_ref().is_none_or(|(n, _)| *n != name) {
                stage_line = Some((name.clone(), ProgressLine::new(&name)));
            }
            if let (true, Some((_, line))) = (total > 1 && name != "prefill" && !name.starts_with("decoding"), &stage_line) {
                line.update(done, total);
            } else if done == 0 {
                eprintln!("{name}...");
            }
        }
        AnswerEvent::Token(text) => {
            let _ = write!(stdout, "{text}");
            let _ = stdout.flush();
        }
    };
    let answer = ask(&mut loaded, &source, &indices, &question, &Cancel::new(), &mut events)?.context("the question was cancelled")?;
    println!();
    eprintln!(
        "{}{}",
        answer.summary,
        match answer.stop {
            StopReason::EndOfText => "",
            StopReason::MaxTokens => " (stopped at --max-new-tokens)",
            StopReason::Cancelled => " (cancelled)",
        }
    );
    if let Some(path) = &a.dump {
        dump(path, &answer.result, &indices)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(0)
}

fn space_aware_indices(a: &AskArgs, source: &Source, count: FrameCount, compute: &crate::pipeline::device::Compute) -> Result<Vec<usize>> {
    let k = match count {
        FrameCount::Count(n) => n,
        FrameCount::All => bail!("--sampling space-aware picks a number of frames; --frames all means no sampling"),
    };
    let rec = match (&a.geometry, &a.vggt) {
        (Some(g), _) => Reconstruction::load(g)?,
        (None, Some(vggt_dir)) => {
            let vggt = LoadedVggt::load(&super::resolve_weights(vggt_dir, WeightsKind::Vggt)?, compute)?;
            let plan = ReconstructPlan::candidates(source, a.candidates);
            eprintln!("space-aware sampling: VGGT on {}", plan.describe(source));
            let line = ProgressLine::new("VGGT");
            let mut progress = |p: crate::pipeline::reconstruct::Progress| line.stage(&p.stage, p.fraction, p.eta_s);
            let done = reconstruct(&vggt, source, &plan, None, &Cancel::new(), &mut progress)?.context("VGGT was cancelled")?;
            line.finish();
            done.rec
        }
        (None, None) => bail!("--sampling space-aware needs --vggt DIR (a VGGT checkpoint) or --geometry FILE (from `reconstruct`)"),
    };
    let params = SamplingParams { k, ..Default::default() };
    let picks = space_aware(source, &rec, &params).with_context(|| format!("space-aware sampling for {}", a.input.display()))?;
    let r = &picks.result;
    eprintln!("space-aware sampling picked {:?} (voxel {:.4}, {} of {} voxels covered)", picks.source_frames, r.voxel_size, r.covered_voxels, r.total_voxels);
    Ok(picks.source_frames)
}

fn dump(path: &std::path::Path, r: &spatial_models::spatial_mllm::AskResult, frames: &[usize]) -> Result<()> {
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let ids = |v: &[u32]| Tensor::from_vec(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), v.len(), &dev);
    let mut map = std::collections::HashMap::new();
    map.insert("input_ids".to_string(), ids(&r.input_ids)?);
    map.insert("position_ids".to_string(), r.positions.to_tensor(&dev)?);
    map.insert("video_embeds".to_string(), r.encoding.video_embeds.to_dtype(candle_core::DType::F32)?);
    if let Some(f) = &r.encoding.fused_embeds {
        map.insert("fused_embeds".to_string(), f.to_dtype(candle_core::DType::F32)?);
    }
    if let Some(c) = &r.encoding.connector_input {
        map.insert("connector_input".to_string(), c.to_dtype(candle_core::DType::F32)?);
    }
    map.insert("logits_last".to_string(), r.generation.logits_last.clone());
    map.insert("generated_ids".to_string(), ids(&r.generation.generated_ids)?);
    map.insert("video_grid_thw".to_string(), Tensor::new(&[[r.grid.t as i64, r.grid.h as i64, r.grid.w as i64]], &dev)?);
    map.insert("frame_indices".to_string(), Tensor::from_vec(frames.iter().map(|&i| i as i64).collect::<Vec<_>>(), frames.len(), &dev)?);
    let bytes = safetensors::serialize(&map, None).with_context(|| format!("{}: cannot serialise the dump", path.display()))?;
    fsio::write_atomic(path, |w| Ok(w.write_all(&bytes)?))
}
