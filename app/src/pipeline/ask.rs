//! A question about frames of a source, answered by Spatial-MLLM (or plain Qwen2.5-VL): which
//! frames, the prompt format, decoding, the model call with streamed events and cancellation, and
//! what the answer cost.

use super::models::LoadedMllm;
use super::source::Source;
use super::threads::Cancel;
use anyhow::{Result, bail};
use spatial_models::spatial_mllm::processor::{DEFAULT_SYSTEM, QuestionFormat, format_question};
use spatial_models::spatial_mllm::{AskEvent, AskRequest, AskResult, GenerationParams, StopReason};

/// A question and how to ask it.
#[derive(Debug, Clone)]
pub struct Question {
    pub text: String,
    pub format: QuestionFormat,
    /// None: Qwen2.5-VL's default system prompt (what upstream uses).
    pub system: Option<String>,
    /// Use the spatial branch when the model has one (false: plain Qwen2.5-VL on the same frames).
    pub use_spatial: bool,
    pub params: GenerationParams,
    /// `qwen_vl_utils`' smart_resize (false: frames as they are, sides multiples of 28).
    pub resize: bool,
}

impl Question {
    /// The user turn's text: the question with the format's instruction (VSI-Bench's presets).
    pub fn user_text(&self) -> String {
        format_question(&self.text, &self.format)
    }
}

/// What a question streams while it is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerEvent {
    /// A named stage with progress inside it ("decoding 16 frames", "prefill" 120/3200, ...).
    Stage { name: String, done: usize, total: usize },
    /// The next piece of the answer's text.
    Token(String),
}

/// A finished answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub stop: StopReason,
    /// "16 frames at 644x476, 1,024 video tokens; encoders 3.1 s, prefill ..."
    pub summary: String,
    pub result: AskResult,
}

/// Asks `question` about `frames` (ascending) of `source`. Returns None when cancelled before the
/// answer started; a cancel during the answer keeps what was generated.
pub fn ask(model: &mut LoadedMllm, source: &Source, frames: &[usize], question: &Question, cancel: &Cancel, events: &mut dyn FnMut(AnswerEvent)) -> Result<Option<Answer>> {
    if question.text.trim().is_empty() {
        bail!("the question is empty");
    }
    if frames.is_empty() {
        bail!("a question needs at least one frame");
    }
    let use_spatial = question.use_spatial && model.model.has_spatial();
    events(AnswerEvent::Stage { name: format!("decoding {} frames", frames.len()), done: 0, total: frames.len() });
    // At most 1920 wide: the model's pixel cap is far below.
    let images = source.frames(frames, Some(1920))?;
    if cancel.is_cancelled() {
        return Ok(None);
    }
    let request = AskRequest {
        frames: images,
        limits: source.limits(frames.len()),
        resize: question.resize,
        user_text: question.user_text(),
        system: question.system.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_SYSTEM.to_string()),
        use_spatial,
        params: question.params.clone(),
    };
    let mut on_event = |e: AskEvent| {
        match e {
            AskEvent::Stage(name, done, total) => events(AnswerEvent::Stage { name: name.to_string(), done, total }),
            AskEvent::Token { text, .. } => {
                if !text.is_empty() {
                    events(AnswerEvent::Token(text.to_string()))
                }
            }
        }
        !cancel.is_cancelled()
    };
    // The encoders notice a cancel inside their layers; generation between tokens.
    let LoadedMllm { model: m, tokenizer, .. } = model;
    let result = spatial_models::nn::cancellable(cancel.flag(), || m.ask(tokenizer, request, &mut on_event))?;
    let Some(Some(result)) = result else { return Ok(None) };
    let g = &result.generation;
    let summary = format!(
        "{} frames at {}x{}, {} video tokens{}; encoders {:.1} s, prefill {} tokens {:.1} tok/s, decode {} tokens {:.1} tok/s",
        frames.len(),
        result.frame_size.0,
        result.frame_size.1,
        result.grid.merged_tokens(m.config.vision_config.spatial_merge_size),
        if use_spatial { "" } else { ", base model (no spatial branch)" },
        result.encode_secs,
        g.prompt_tokens,
        g.prefill_tokens_per_sec(),
        g.generated_ids.len(),
        g.decode_tokens_per_sec()
    );
    Ok(Some(Answer { text: g.text.clone(), stop: g.stop, summary, result }))
}
