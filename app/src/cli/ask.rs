//! `ask`: a question about a video (or folder of frames) answered by Spatial-MLLM, streamed to
//! stdout; `--base-model` runs plain Qwen2.5-VL on the same frames.

use super::ProgressLine;
use crate::question::{FrameCount, FrameSource, load_mllm, uniform_question_indices};
use anyhow::{Context, Result, bail};
use clap::Args;
use spatial_models::reconstruction::Reconstruction;
use spatial_models::sampling::{SamplingParams, space_aware_sampling, uniform_indices};
use spatial_models::spatial_mllm::processor::{DEFAULT_SYSTEM, QuestionFormat, format_question};
use spatial_models::spatial_mllm::{AskEvent, AskRequest, GenerationParams, StopReason};
use spatial_models::vggt::preprocess::{ResizeMode, preprocess_frames};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AskArgs {
    /// Spatial-MLLM or Qwen2.5-VL folder: config.json, safetensors (single or sharded), tokenizer.json.
    #[arg(long)]
    pub weights: PathBuf,
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
    /// VGGT checkpoint for space-aware sampling (run on up to --candidates frames at 518 px).
    #[arg(long)]
    pub vggt: Option<PathBuf>,
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
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// auto: f32 on CPU (the fastest there: candle's bf16 matmuls are slower on CPU; costs twice
    /// the memory of the bf16 checkpoint), bf16 on CUDA/Metal (the released weights as they are).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
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
    let device = spatial_models::open_device(&a.device)?;
    let dtype = match a.dtype.as_str() {
        "auto" if device.is_cpu() => candle_core::DType::F32,
        "auto" => candle_core::DType::BF16,
        other => spatial_models::parse_dtype(other)?,
    };
    let mut loaded = load_mllm(&a.weights, a.base_model, dtype, &device).with_context(|| format!("{}: cannot load the question-answering model", a.weights.display()))?;
    eprintln!("{}: {} loaded ({dtype:?} on {})", a.weights.display(), if loaded.model.has_spatial() { "Spatial-MLLM" } else { "Qwen2.5-VL" }, a.device);
    let source = FrameSource::open(&a.input)?;
    if source.len() == 0 {
        bail!("{}: has no frames to ask about", a.input.display());
    }

    let indices = match a.sampling.as_str() {
        "uniform" => uniform_question_indices(source.len(), count)?,
        "space-aware" | "sa" => space_aware_indices(&a, &source, count, &device)?,
        other => bail!("--sampling '{other}': expected uniform or space-aware"),
    };
    eprintln!("{}: {} frames, asking about {} of them: {:?}", a.input.display(), source.len(), indices.len(), indices);
    let frames = source.frames(&indices)?;
    let limits = source.limits(indices.len());

    let request = AskRequest {
        frames,
        limits,
        resize,
        user_text: format_question(&a.question, &format),
        system: if a.system.is_empty() { DEFAULT_SYSTEM.to_string() } else { a.system.clone() },
        use_spatial: !a.base_model,
        params: GenerationParams { max_new_tokens: a.max_new_tokens, temperature: a.temperature, top_p: a.top_p, seed: a.seed },
    };
    let mut stage_line: Option<(String, ProgressLine)> = None;
    let mut stdout = std::io::stdout();
    let mut events = |e: AskEvent| {
        match e {
            AskEvent::Stage(name, done, total) => {
                if stage_line.as_ref().is_none_or(|(n, _)| n != name) {
                    stage_line = Some((name.to_string(), ProgressLine::new(name)));
                }
                if let (true, Some((_, line))) = (total > 1 && name != "prefill", &stage_line) {
                    line.update(done, total);
                } else if done == 0 {
                    eprintln!("{name}...");
                }
            }
            AskEvent::Token { text, .. } => {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
        }
        true
    };
    let result = loaded.model.ask(&loaded.tokenizer, request, &mut events)?.context("the question was cancelled")?;
    println!();
    let g = &result.generation;
    eprintln!(
        "{} frames at {}x{} -> {} video tokens; encoders {:.2} s; prefill {} tokens in {:.2} s ({:.1} tok/s); decode {} tokens in {:.2} s ({:.2} tok/s){}",
        result.grid.t * 2,
        result.frame_size.0,
        result.frame_size.1,
        result.grid.merged_tokens(loaded.model.config.vision_config.spatial_merge_size),
        result.encode_secs,
        g.prompt_tokens,
        g.prefill_secs,
        g.prefill_tokens_per_sec(),
        g.generated_ids.len(),
        g.decode_secs,
        g.decode_tokens_per_sec(),
        match g.stop {
            StopReason::EndOfText => "",
            StopReason::MaxTokens => " (stopped at --max-new-tokens)",
            StopReason::Cancelled => " (cancelled)",
        }
    );
    if let Some(path) = &a.dump {
        dump(path, &result, &indices)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(0)
}

fn space_aware_indices(a: &AskArgs, source: &FrameSource, count: FrameCount, device: &candle_core::Device) -> Result<Vec<usize>> {
    let k = match count {
        FrameCount::Count(n) => n,
        FrameCount::All => bail!("--sampling space-aware picks a number of frames; --frames all means no sampling"),
    };
    let rec = match (&a.geometry, &a.vggt) {
        (Some(g), _) => Reconstruction::load(g)?,
        (None, Some(vggt_dir)) => {
            let picks = uniform_indices(source.len(), a.candidates.min(source.len()));
            eprintln!("space-aware sampling: VGGT on {} candidate frames", picks.len());
            let frames = match source {
                // The candidates only feed VGGT at 518 px: decode them small.
                FrameSource::Video(v) => v.decode(&picks, Some(518))?,
                FrameSource::Folder(_) | FrameSource::Geometry(_) => source.frames(&picks)?,
            };
            let names: Vec<String> = picks.iter().map(|i| format!("{} frame {i}", a.input.display())).collect();
            let images = preprocess_frames(&frames, &names, ResizeMode::Crop, device)?;
            drop(frames);
            let model = super::reconstruct::load_vggt(vggt_dir, candle_core::DType::F32, device)?;
            let progress = ProgressLine::new("VGGT");
            let mut cb = |done: usize, total: usize| {
                progress.update(done, total);
                true
            };
            let out = model.forward_with_progress(&images, Some(&mut cb))?.context("VGGT was cancelled")?;
            Reconstruction::from_vggt(&images, &out, picks.iter().map(|&i| i as i64).collect())?
        }
        (None, None) => bail!("--sampling space-aware needs --vggt DIR (a VGGT checkpoint) or --geometry FILE (from `reconstruct`)"),
    };
    let params = SamplingParams { k, ..Default::default() };
    let r = space_aware_sampling(&rec.world_points, &rec.world_points_conf, rec.frames, &params)?;
    let mut picks: Vec<usize> = r.selected.iter().map(|&i| rec.frame_indices[i] as usize).collect();
    if let Some(&bad) = picks.iter().find(|&&i| i >= source.len()) {
        bail!("the geometry names frame {bad}, but {} has {} frames (was it made from another input?)", a.input.display(), source.len());
    }
    picks.sort_unstable();
    eprintln!("space-aware sampling picked {:?} (voxel {:.4}, {} of {} voxels covered)", picks, r.voxel_size, r.covered_voxels, r.total_voxels);
    Ok(picks)
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
    candle_core::safetensors::save(&map, path).with_context(|| format!("{}: cannot write", path.display()))
}
