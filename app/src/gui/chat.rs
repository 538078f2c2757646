//! The chat's back end: Spatial-MLLM on its own thread (the pipeline's service thread), on the
//! chosen device. A question is asked about the frames the sampler picked (or uniform frames of
//! the open source) through the pipeline; the answer streams in token by token, can be cancelled,
//! and a panic in the thread is reported while the thread carries on.

use super::state::*;
use crate::pipeline::ask::{AnswerEvent, Question, ask};
use crate::pipeline::device::{self, DTypeRequest, DeviceRequest};
use crate::pipeline::models::{LoadedMllm, load_mllm};
use crate::pipeline::source::{FrameCount, Source, question_frames};
use crate::pipeline::threads::{Ctx, ServiceThread};
use crate::pipeline::weights::{WeightsKind, WeightsSpec};
use bevy::prelude::*;
use spatial_models::spatial_mllm::processor::QuestionFormat;
use spatial_models::spatial_mllm::{GenerationParams, StopReason};

enum Request {
    Load { spec: String, device: DeviceRequest, dtype: DTypeRequest },
    Ask { source: Source, frames: Vec<usize>, question: Box<Question> },
}

enum Event {
    Loaded { desc: String, has_spatial: bool, compute: String, note: Option<String> },
    LoadFailed(String),
    Stage(String, usize, usize),
    Token(String),
    /// `text` None keeps what streamed (a cancel inside a layer ends without a final text).
    Done { text: Option<String>, stop: StopReason, note: String },
    AskFailed(String),
}

fn serve(model: &mut Option<LoadedMllm>, req: Request, ctx: &Ctx<Event>) {
    match req {
        Request::Load { spec, device: d, dtype } => {
            // The old model is dropped first so two never sit in memory together.
            *model = None;
            let compute = device::resolve(d, dtype);
            let mut progress = |file: &str, done: u64, total: u64| ctx.send(Event::Stage(format!("downloading {file}"), (done >> 20) as usize, (total >> 20).max(1) as usize));
            let loaded = crate::pipeline::weights::resolve(&WeightsSpec::parse(&spec), WeightsKind::Mllm, &mut progress, ctx.cancel).and_then(|dir| {
                let m = load_mllm(&dir, false, &compute)?;
                Ok((m, dir))
            });
            match loaded {
                Ok((m, dir)) => {
                    let label = m.compute.label();
                    let desc = format!("{} from {} on {label}", m.describe(), dir.display());
                    let has_spatial = m.model.has_spatial();
                    *model = Some(m);
                    ctx.send(Event::Loaded { desc, has_spatial, compute: label, note: compute.fallback });
                }
                Err(e) => ctx.send(Event::LoadFailed(format!("{e:#}"))),
            }
        }
        Request::Ask { source, frames, question } => {
            let Some(m) = model.as_mut() else {
                return ctx.send(Event::AskFailed("no question-answering model is loaded (File > Load Spatial-MLLM weights...)".into()));
            };
            let mut events = |e: AnswerEvent| match e {
                AnswerEvent::Stage { name, done, total } => ctx.send(Event::Stage(name, done, total)),
                AnswerEvent::Token(t) => ctx.send(Event::Token(t)),
            };
            match ask(m, &source, &frames, &question, ctx.cancel, &mut events) {
                Ok(Some(answer)) => ctx.send(Event::Done { text: Some(answer.text), stop: answer.stop, note: answer.summary }),
                Ok(None) => ctx.send(Event::Done { text: None, stop: StopReason::Cancelled, note: String::new() }),
                Err(e) => ctx.send(Event::AskFailed(format!("{e:#}"))),
            }
        }
    }
}

#[derive(Resource)]
struct ChatThread {
    thread: ServiceThread<Request, Event>,
    spec: Option<String>,
    requested: (DeviceRequest, DTypeRequest),
}

fn spawn() -> ChatThread {
    let thread = ServiceThread::spawn("chat-inference", None, serve, |m| Event::AskFailed(format!("the chat thread caught a crash: {m}")));
    ChatThread { thread, spec: None, requested: Default::default() }
}

/// The source frames a question looks at, and how they were chosen. The sampler's picks are used
/// only when they are frames of the open source.
fn frames_for_question(settings: &ChatSettings, opened: &Opened, sampled: &SampledFrames) -> anyhow::Result<(Vec<usize>, String)> {
    let n = opened.frame_count();
    if n == 0 {
        anyhow::bail!("nothing is open: open a video or a folder of frames first");
    }
    if settings.frame_choice == FrameChoice::Sampled && !sampled.frames.is_empty() && sampled.source_id == opened.id {
        let mut frames: Vec<usize> = sampled.frames.iter().copied().filter(|&f| f < n).collect();
        frames.sort_unstable();
        frames.dedup();
        return Ok((frames, sampled.label.clone()));
    }
    let frames = question_frames(n, FrameCount::Count(settings.frames.max(1)))?;
    Ok((frames, format!("{} uniform frames", settings.frames)))
}

fn question_of(text: &str, settings: &ChatSettings, use_spatial: bool) -> Question {
    let format = match settings.format {
        AnswerFormat::Numeric => QuestionFormat::Numeric,
        AnswerFormat::MultipleChoice => QuestionFormat::MultipleChoice(settings.options.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()),
        AnswerFormat::Free => QuestionFormat::Free,
    };
    Question {
        text: text.to_string(),
        format,
        system: None,
        use_spatial,
        params: GenerationParams { max_new_tokens: settings.max_new_tokens.max(1), temperature: settings.temperature, ..Default::default() },
        resize: true,
    }
}

fn startup_weights(opts: Res<StartupOptions>, mut loads: MessageWriter<LoadMllm>) {
    if let Some(spec) = &opts.mllm {
        loads.write(LoadMllm(spec.clone()));
    }
}

#[allow(clippy::too_many_arguments)]
fn handle(
    mut thread: ResMut<ChatThread>,
    mut chat: ResMut<ChatState>,
    mut activity: ResMut<Activity>,
    mut loads: MessageReader<LoadMllm>,
    mut asks: MessageReader<AskQuestion>,
    mut cancels: MessageReader<CancelAnswer>,
    mut computes: MessageReader<SetCompute>,
    mut status: ResMut<StatusLine>,
    opened: Res<Opened>,
    sampled: Res<SampledFrames>,
    mut app_settings: ResMut<Settings>,
    (inspection, geometry): (Res<Inspection>, Res<Geometry>),
) {
    for SetCompute(d, t) in computes.read() {
        thread.requested = (*d, *t);
        let c = device::resolve(*d, *t);
        chat.compute = c.label();
        chat.compute_note = c.fallback.clone();
        if let Some(spec) = thread.spec.clone() {
            thread.thread.cancel_current();
            chat.loading = true;
            chat.model = None;
            thread.thread.send(Request::Load { spec, device: *d, dtype: *t });
        }
    }
    for LoadMllm(spec) in loads.read() {
        thread.thread.cancel_current();
        status.info(format!("loading Spatial-MLLM from {spec}..."));
        app_settings.0.remember_weights(spec);
        chat.loading = true;
        chat.load_error = None;
        chat.model = None;
        thread.spec = Some(spec.clone());
        chat.spec = Some(spec.clone());
        let (device, dtype) = thread.requested;
        thread.thread.send(Request::Load { spec: spec.clone(), device, dtype });
    }
    for _ in cancels.read() {
        // An answer, or a load (a download is cancelled; reading local files finishes).
        if chat.answering || chat.loading {
            thread.thread.cancel_current();
        }
    }
    for AskQuestion(question) in asks.read() {
        let question = question.trim();
        if question.is_empty() {
            continue;
        }
        if chat.model.is_none() {
            let msg = if chat.loading {
                "The model is still loading; ask again in a moment.".to_string()
            } else if let Some(e) = &chat.load_error {
                format!("No model is loaded: the last load failed ({e}).")
            } else {
                "No model is loaded, so nothing can answer yet. Load Spatial-MLLM weights with File > Load Spatial-MLLM weights...".to_string()
            };
            chat.say(question, msg, AnswerState::Failed);
            continue;
        }
        if chat.answering {
            chat.say(question, "Still answering the previous question: cancel it first.".into(), AnswerState::Failed);
            continue;
        }
        let settings = chat.settings.clone();
        let (frames, how) = match frames_for_question(&settings, &opened, &sampled) {
            Ok(f) => f,
            Err(e) => {
                chat.say(question, format!("{e:#}"), AnswerState::Failed);
                continue;
            }
        };
        let Some(source) = opened.source.clone() else {
            chat.say(question, "nothing is open: open a video or a folder of frames first".into(), AnswerState::Failed);
            continue;
        };
        let use_spatial = settings.use_spatial && chat.has_spatial;
        let mut note = format!(
            "{how}{}",
            if use_spatial {
                ""
            } else {
                ", base model (no spatial branch)"
            }
        );
        // Whether the frames the model is given contain the region the user selected.
        if let Some(region) = super::inspect::region_note(&inspection, &geometry, &frames) {
            note = format!("{note}; {region}");
        }
        chat.messages.push(ChatMessage {
            from_user: true,
            text: question.to_string(),
            state: AnswerState::Done,
            frames: frames.clone(),
            note,
        });
        chat.messages.push(ChatMessage {
            from_user: false,
            text: String::new(),
            state: AnswerState::Streaming,
            frames: frames.clone(),
            note: String::new(),
        });
        chat.answering = true;
        thread.thread.send(Request::Ask { source, frames, question: Box::new(question_of(question, &settings, use_spatial)) });
    }
    while let Ok(ev) = thread.thread.events.try_recv() {
        match ev {
            Event::Loaded { desc, has_spatial, compute, note } => {
                chat.loading = false;
                status.info(format!("loaded {desc}"));
                chat.model = Some(desc);
                chat.has_spatial = has_spatial;
                chat.compute = compute;
                chat.compute_note = note;
                chat.stage = None;
            }
            Event::LoadFailed(e) => {
                chat.loading = false;
                chat.stage = None;
                chat.load_error = Some(e.clone());
                status.error(e);
            }
            Event::Stage(name, done, total) => chat.stage = Some((name, done, total)),
            Event::Token(piece) => {
                if let Some(m) = chat.messages.last_mut().filter(|m| !m.from_user && m.state == AnswerState::Streaming) {
                    m.text.push_str(&piece);
                }
                // Tokens streaming means prefill is over: the stage line says so.
                if let Some((name, done, _)) = chat.stage.as_mut() {
                    if name != "generating" {
                        *name = "generating".into();
                        *done = 0;
                    }
                    *done += 1;
                }
            }
            Event::Done { text, stop, note } => {
                chat.answering = false;
                chat.stage = None;
                if let Some(m) = chat.messages.last_mut().filter(|m| !m.from_user) {
                    if let Some(text) = text {
                        m.text = text;
                    }
                    m.state = if stop == StopReason::Cancelled { AnswerState::Cancelled } else { AnswerState::Done };
                    m.note = if stop == StopReason::MaxTokens { format!("{note}; stopped at the token limit") } else { note };
                }
                // A numeric answer next to what the user measured.
                let n = chat.messages.len();
                if n >= 2 && chat.messages[n - 1].state == AnswerState::Done {
                    if let Some(check) = super::inspect::measured_note(
                        &inspection,
                        &chat.messages[n - 2].text,
                        &chat.messages[n - 1].text,
                    ) {
                        let m = &mut chat.messages[n - 1];
                        m.note = if m.note.is_empty() {
                            check
                        } else {
                            format!("{}; {check}", m.note)
                        };
                    }
                }
            }
            Event::AskFailed(e) => {
                chat.answering = false;
                chat.stage = None;
                if let Some(m) = chat.messages.last_mut().filter(|m| !m.from_user && m.state == AnswerState::Streaming) {
                    m.text = e.clone();
                    m.state = AnswerState::Failed;
                }
                status.error(e);
            }
        }
    }
    activity.chat = usize::from(chat.loading) + usize::from(chat.answering);
}

pub struct ChatPlugin;

impl Plugin for ChatPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(spawn()).add_systems(Startup, startup_weights).add_systems(Update, handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::source::SourceId;

    /// A question never uses picks of another source (the demo's, after a video was opened).
    #[test]
    fn picks_of_another_source_are_not_asked_about() {
        let opened = Opened { source: Some(Source::demo()), id: SourceId("/videos/clip.mp4".into()), last_result: None, relocating: None };
        let settings = ChatSettings::default();
        let stale = SampledFrames { frames: vec![0, 7, 9, 95], label: "space-aware".into(), compare: vec![], source_id: SourceId("demo".into()) };
        let (frames, how) = frames_for_question(&settings, &opened, &stale).unwrap();
        assert_eq!(how, "16 uniform frames");
        assert_eq!(frames.len(), 16);
        let own = SampledFrames { source_id: opened.id.clone(), ..stale };
        assert_eq!(frames_for_question(&settings, &opened, &own).unwrap().0, vec![0, 7, 9, 95]);
    }
}
