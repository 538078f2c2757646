//! `eval run`: VSI-Bench questions asked of a model as upstream's `eval_vsibench.py` asks them
//! (the prompt, 16 frames, near-greedy decoding), scored as each finishes and journalled, so a run
//! can be killed and continued, and split into shards that merge into the same results.

use super::dataset::{BenchQuestion, load_questions};
use super::results::{JOURNAL, Journal, SETTINGS, read_journal, write_json, write_outputs};
use super::scoring::{AnswerKind, answer_kind, clean_text, vsi_reward};
use crate::pipeline::ask::{Question, ask};
use crate::pipeline::cache::ReconstructionCache;
use crate::pipeline::models::LoadedMllm;
use crate::pipeline::reconstruct::{LoadedVggt, ReconstructPlan, reconstruct};
use crate::pipeline::sample::space_aware;
use crate::pipeline::source::{FrameCount, Source, SourceSpec, question_frames};
use crate::pipeline::threads::Cancel;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use spatial_models::sampling::SamplingParams;
use spatial_models::spatial_mllm::GenerationParams;
use spatial_models::spatial_mllm::processor::{DEFAULT_SYSTEM, QuestionFormat, chat_prompt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Upstream's decoding: sampling at temperature 0.1 with top-p 0.001 (the top token in effect).
pub const TEMPERATURE: f64 = 0.1;
pub const TOP_P: f64 = 0.001;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    Uniform,
    SpaceAware,
}

/// What a run asks and how; everything here but the shard must match to continue or merge a run.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub dataset: PathBuf,
    /// Where `DATASET/SCENE.mp4` are (the dataset folder by default).
    pub videos: PathBuf,
    pub config: String,
    /// Resolved weights folders (the MLLM, and VGGT for space-aware sampling).
    pub weights: PathBuf,
    pub vggt: Option<PathBuf>,
    pub frames: usize,
    pub sampling: Sampling,
    /// Uniform candidates VGGT reconstructs for space-aware sampling (upstream: 128).
    pub candidates: usize,
    pub base_model: bool,
    pub question_types: Vec<String>,
    pub limit: Option<usize>,
    /// (index, count): this run's part of the questions.
    pub shard: (usize, usize),
    pub max_new_tokens: usize,
}

impl EvalSettings {
    fn record(&self) -> Value {
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        json!({
            "dataset": abs(&self.dataset), "videos": abs(&self.videos), "config": self.config,
            "weights": abs(&self.weights), "vggt": self.vggt.as_deref().map(abs),
            "frames": self.frames, "sampling": if self.sampling == Sampling::Uniform { "uniform" } else { "space-aware" },
            "candidates": self.candidates, "base_model": self.base_model, "question_types": self.question_types,
            "limit": self.limit, "max_new_tokens": self.max_new_tokens,
            "temperature": TEMPERATURE, "top_p": TOP_P,
            "shard": format!("{}/{}", self.shard.0, self.shard.1),
        })
    }
}

/// `I/N`: shard I (from 0) of N.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let (i, n) = s.split_once('/').with_context(|| format!("--shard {s}: expected I/N, e.g. 0/4"))?;
    let (i, n): (usize, usize) = (i.trim().parse().with_context(|| format!("--shard {s}: I is not a number"))?, n.trim().parse().with_context(|| format!("--shard {s}: N is not a number"))?);
    if n == 0 || i >= n {
        bail!("--shard {s}: I counts from 0 to N-1 (got {i} of {n})");
    }
    Ok((i, n))
}

/// Shard `i` of `n`: contiguous parts of sizes differing by at most one (like upstream's
/// `chunk_dataset` per GPU, but never an empty shard while questions remain).
pub fn shard_range(len: usize, (i, n): (usize, usize)) -> std::ops::Range<usize> {
    let (base, extra) = (len / n, len % n);
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

/// The questions of a run: the configuration's, of the asked types, the first `limit`, the shard.
pub fn select_questions(settings: &EvalSettings) -> Result<Vec<BenchQuestion>> {
    let all = load_questions(&settings.dataset, &settings.config)?;
    for t in &settings.question_types {
        if answer_kind(t).is_none() {
            bail!("--question-types: '{t}' is not a VSI-Bench question type");
        }
    }
    let mut chosen: Vec<BenchQuestion> = all.into_iter().filter(|q| settings.question_types.is_empty() || settings.question_types.iter().any(|t| t == q.question_type())).collect();
    if let Some(l) = settings.limit {
        chosen.truncate(l);
    }
    let range = shard_range(chosen.len(), settings.shard);
    Ok(chosen[range].to_vec())
}

/// How far a run is, for a progress line.
#[derive(Debug, Clone)]
pub struct EvalProgress {
    pub done: usize,
    pub total: usize,
    /// Done before this process started (a continued run).
    pub resumed: usize,
    pub questions_per_minute: f64,
    pub eta_s: f64,
    pub last: String,
}

/// The models a run uses, loaded once.
pub struct EvalModels {
    pub mllm: LoadedMllm,
    pub vggt: Option<LoadedVggt>,
}

/// Runs (or continues) the evaluation of `questions` (from [`select_questions`]) into `out`;
/// returns the metrics of all its results.
pub fn run(settings: &EvalSettings, questions: &[BenchQuestion], models: &mut EvalModels, out: &Path, cancel: &Cancel, progress: &mut dyn FnMut(EvalProgress)) -> Result<Value> {
    crate::pipeline::fsio::create_dir_all(out)?;
    let mut record = settings.record();
    // The precision the models run in (`--dtype bf16-products` answers differently from `bf16`):
    // a run continues only in the one it started with.
    record["compute"] = json!(models.mllm.compute.label());
    if let Some(vggt) = &models.vggt {
        record["vggt_compute"] = json!(vggt.compute.label());
    }
    let settings_path = out.join(SETTINGS);
    if let Ok(text) = std::fs::read_to_string(&settings_path) {
        let previous: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", settings_path.display()))?;
        // Runs from before the precision was recorded continue when everything else matches.
        let mut comparable = record.clone();
        for key in ["compute", "vggt_compute"] {
            if previous.get(key).is_none() {
                comparable.as_object_mut().expect("an object").remove(key);
            }
        }
        if previous != comparable {
            let mut keys: Vec<&String> = comparable.as_object().expect("an object").keys().collect();
            keys.extend(previous.as_object().map(|o| o.keys().filter(|k| comparable.get(k.as_str()).is_none()).collect::<Vec<_>>()).unwrap_or_default());
            let at = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
            let differ: Vec<String> = keys.into_iter().filter(|k| at(&previous, k) != at(&comparable, k)).map(|k| format!("{k}: {} there, {} here", at(&previous, k), at(&comparable, k))).collect();
            bail!("{} holds a run with other settings ({}); continue it with the same settings or choose another --out", out.display(), differ.join("; "));
        }
    } else {
        write_json(&settings_path, &record)?;
    }
    let journal_path = out.join(JOURNAL);
    let (mut results, good_end) = read_journal(&journal_path)?;
    let done_rows: std::collections::HashSet<u64> = results.iter().filter_map(|r| r["row"].as_u64()).collect();
    let mut journal = Journal::open(&journal_path, good_end)?;
    let resumed = questions.iter().filter(|q| done_rows.contains(&(q.row as u64))).count();
    let todo: Vec<&BenchQuestion> = questions.iter().filter(|q| !done_rows.contains(&(q.row as u64))).collect();
    let cache = ReconstructionCache::default_dir().map(|d| ReconstructionCache::open(d, crate::pipeline::cache::DEFAULT_CAP_BYTES));
    let start = Instant::now();
    let mut open: Option<(PathBuf, Source, Option<Vec<usize>>)> = None;
    for (n, q) in todo.iter().enumerate() {
        if cancel.is_cancelled() {
            break;
        }
        let t0 = Instant::now();
        let video = q.video(&settings.videos)?;
        if open.as_ref().is_none_or(|(p, _, _)| *p != video) {
            let source = Source::open(&SourceSpec::Path(video.clone())).with_context(|| format!("question {} (row {})", q.sample["id"], q.row))?;
            open = Some((video.clone(), source, None));
        }
        let (_, source, space_aware_frames) = open.as_mut().expect("opened above");
        let mut timings = serde_json::Map::new();
        let frames = match settings.sampling {
            // A folder of pre-sampled frames is used whole, as upstream does.
            _ if matches!(source, Source::Folder(_)) => (0..source.len()).collect(),
            Sampling::Uniform => question_frames(source.len(), FrameCount::Count(settings.frames))?,
            Sampling::SpaceAware => {
                if space_aware_frames.is_none() {
                    let vggt = models.vggt.as_ref().context("space-aware sampling needs VGGT weights (--vggt)")?;
                    let t = Instant::now();
                    let plan = ReconstructPlan::candidates(source, settings.candidates);
                    let done = reconstruct(vggt, source, &plan, cache.as_ref(), cancel, &mut |_| {})?.context("cancelled")?;
                    let picks = space_aware(source, &done.rec, &SamplingParams { k: settings.frames, ..Default::default() })?;
                    timings.insert("vggt_and_sampling_s".into(), json!(t.elapsed().as_secs_f64()));
                    *space_aware_frames = Some(picks.source_frames);
                }
                space_aware_frames.clone().unwrap_or_default()
            }
        };
        let format = match answer_kind(q.question_type()) {
            Some(AnswerKind::MultipleChoice) => {
                let options = q.options();
                if options.is_empty() {
                    bail!("question {} (row {}): a multiple-choice question without options", q.sample["id"], q.row);
                }
                QuestionFormat::MultipleChoice(options)
            }
            Some(AnswerKind::Numeric) => QuestionFormat::Numeric,
            None => bail!("question {} (row {}): unknown question type '{}'", q.sample["id"], q.row, q.question_type()),
        };
        let question = Question {
            text: q.field("question").to_string(),
            format,
            system: None,
            use_spatial: !settings.base_model,
            // One seed per question: shards and continued runs answer exactly as one run would.
            params: GenerationParams { max_new_tokens: settings.max_new_tokens, temperature: TEMPERATURE, top_p: TOP_P, seed: q.row as u64 },
            resize: true,
        };
        let prompt = chat_prompt(&question.user_text(), DEFAULT_SYSTEM);
        let answer = ask(&mut models.mllm, source, &frames, &question, cancel, &mut |_| {})?;
        let Some(answer) = answer else { break };
        if cancel.is_cancelled() {
            // A partial answer is not a result: the question is asked again next time.
            break;
        }
        timings.insert("question_s".into(), json!(t0.elapsed().as_secs_f64()));
        let gt = q.sample["ground_truth"].as_str().unwrap_or_default();
        let (clean_pred, clean_gt) = (clean_text(&answer.text), clean_text(gt));
        let reward = vsi_reward(&clean_gt, &clean_pred, q.question_type())?;
        let result = json!({
            "row": q.row,
            "sample": q.sample,
            "prompt": prompt,
            "model_output": answer.text,
            "cleaned_model_output": clean_pred,
            "cleaned_gt_answer": clean_gt,
            "reward": reward,
            "correct": reward == 1.0,
            "video": video,
            "frames_used": frames,
            "timings": timings,
            "summary": answer.summary,
            "device": models.mllm.compute.label(),
        });
        journal.append(&result)?;
        results.push(result);
        let elapsed = start.elapsed().as_secs_f64();
        let rate = (n + 1) as f64 / elapsed.max(1e-9);
        progress(EvalProgress {
            done: resumed + n + 1,
            total: questions.len(),
            resumed,
            questions_per_minute: rate * 60.0,
            eta_s: (todo.len() - n - 1) as f64 / rate,
            last: format!("row {} {}: {:?} (truth {:?}, reward {reward:.3})", q.row, q.question_type(), clean_pred, clean_gt),
        });
    }
    // The two files always describe what the journal holds (of this run's questions).
    let rows: std::collections::HashSet<u64> = questions.iter().map(|q| q.row as u64).collect();
    results.retain(|r| r["row"].as_u64().is_some_and(|row| rows.contains(&row)));
    write_outputs(out, &mut results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_questions() {
        for len in [0, 1, 5, 16, 17] {
            for n in 1..6 {
                let parts: Vec<_> = (0..n).map(|i| shard_range(len, (i, n))).collect();
                assert_eq!(parts.first().unwrap().start, 0);
                assert_eq!(parts.last().unwrap().end, len);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let sizes: Vec<usize> = parts.iter().map(|r| r.len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
            }
        }
        assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
        for bad in ["4/4", "1", "a/2", "0/0"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }
}
