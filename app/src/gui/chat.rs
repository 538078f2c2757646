//! The chat panel's back end: Spatial-MLLM on its own thread (crossbeam channels in and out).
//! A question is asked about the frames the sampler picked (or uniform frames of the open
//! source); the answer streams in token by token, can be cancelled between tokens, and a panic in
//! the thread is caught and reported while the thread carries on.

use super::StatusLine;
use super::player::{FrameSource as PlayerSource, Player};
use super::scene::SampledFrames;
use super::tasks::panic_message;
use crate::question::{FrameCount, FrameSource, load_mllm, uniform_question_indices};
use bevy::prelude::*;
use bevy_egui::egui;
use crossbeam_channel::{Receiver, Sender, unbounded};
use spatial_models::spatial_mllm::processor::{QuestionFormat, format_question, DEFAULT_SYSTEM};
use spatial_models::spatial_mllm::{AskEvent, AskRequest, GenerationParams, StopReason};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where an answer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerState {
    Streaming,
    Done,
    Cancelled,
    Failed,
}

impl AnswerState {
    pub fn name(&self) -> &'static str {
        match self {
            AnswerState::Streaming => "streaming",
            AnswerState::Done => "done",
            AnswerState::Cancelled => "cancelled",
            AnswerState::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChatMessage {
    pub from_user: bool,
    pub text: String,
    pub state: AnswerState,
    /// Source frames the question was asked about.
    pub frames: Vec<usize>,
    /// How the frames were chosen, and timings once done.
    pub note: String,
}

/// Which frames a question looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameChoice {
    /// The frames highlighted by the sampler (space-aware or uniform), when there are any.
    Sampled,
    /// `qwen_vl_utils`' uniform frames of the whole source.
    Uniform,
}

#[derive(Clone, Debug)]
pub struct ChatSettings {
    pub format: usize,
    /// Multiple-choice options, one per line ("A. ...").
    pub options: String,
    pub frame_choice: FrameChoice,
    pub frames: usize,
    pub use_spatial: bool,
    pub max_new_tokens: usize,
    pub temperature: f64,
}

pub const FORMATS: [&str; 3] = ["free text", "number / short answer", "multiple choice"];

impl Default for ChatSettings {
    fn default() -> Self {
        Self { format: 0, options: String::new(), frame_choice: FrameChoice::Sampled, frames: 16, use_spatial: true, max_new_tokens: 128, temperature: 0.0 }
    }
}

enum Request {
    Load(PathBuf),
    Ask { source: FrameSource, frames: Vec<usize>, request: Box<AskRequestParts>, cancel: Arc<AtomicBool> },
}

struct AskRequestParts {
    user_text: String,
    use_spatial: bool,
    params: GenerationParams,
}

enum Event {
    Loaded { desc: String, has_spatial: bool },
    Stage(String, usize, usize),
    Token(String),
    /// `text` None keeps what streamed (a cancel inside a layer ends without a final text).
    Done { text: Option<String>, stop: StopReason, note: String },
    Failed(String),
}

/// A loaded model, as the panel describes it.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub desc: String,
    pub has_spatial: bool,
}

#[derive(Resource)]
pub struct Chat {
    requests: Sender<Request>,
    events: Receiver<Event>,
    cancel: Option<Arc<AtomicBool>>,
    pub model: Option<ModelInfo>,
    pub loading: bool,
    pub messages: Vec<ChatMessage>,
    pub draft: String,
    pub settings: ChatSettings,
    pub stage: Option<(String, usize, usize)>,
}

impl Chat {
    pub fn is_idle(&self) -> bool {
        !self.loading && self.cancel.is_none()
    }
    pub fn answering(&self) -> bool {
        self.cancel.is_some()
    }
    pub fn cancel(&mut self) {
        if let Some(c) = &self.cancel {
            c.store(true, Ordering::Relaxed);
        }
    }
    fn say(&mut self, question: &str, answer: String, state: AnswerState) {
        self.messages.push(ChatMessage { from_user: true, text: question.to_string(), state: AnswerState::Done, frames: Vec::new(), note: String::new() });
        self.messages.push(ChatMessage { from_user: false, text: answer, state, frames: Vec::new(), note: String::new() });
    }
}

/// Load Spatial-MLLM (or Qwen2.5-VL) weights from a folder.
#[derive(Message, Clone, Debug)]
pub struct LoadMllm(pub PathBuf);

/// Ask a question about what is open.
#[derive(Message, Clone, Debug)]
pub struct AskQuestion(pub String);

/// Stop the answer being generated.
#[derive(Message, Clone, Copy, Debug)]
pub struct CancelAnswer;

fn run_ask(loaded: &mut crate::question::LoadedMllm, source: &FrameSource, frames: &[usize], parts: &AskRequestParts, cancel: &Arc<AtomicBool>, events: &Sender<Event>) -> anyhow::Result<Event> {
    let _ = events.send(Event::Stage(format!("decoding {} frames", frames.len()), 0, 1));
    let images = source.frames(frames)?;
    let request = AskRequest {
        frames: images,
        limits: source.limits(frames.len()),
        resize: true,
        user_text: parts.user_text.clone(),
        system: DEFAULT_SYSTEM.to_string(),
        use_spatial: parts.use_spatial,
        params: parts.params.clone(),
    };
    let mut on_event = |e: AskEvent| {
        match e {
            AskEvent::Stage(name, done, total) => {
                let _ = events.send(Event::Stage(name.to_string(), done, total));
            }
            AskEvent::Token { text, .. } => {
                if !text.is_empty() {
                    let _ = events.send(Event::Token(text.to_string()));
                }
            }
        }
        !cancel.load(Ordering::Relaxed)
    };
    // The encoders notice a cancel inside their layers; generation between tokens.
    let result = spatial_models::nn::cancellable(cancel.clone(), || loaded.model.ask(&loaded.tokenizer, request, &mut on_event))?;
    let Some(Some(result)) = result else {
        return Ok(Event::Done { text: None, stop: StopReason::Cancelled, note: String::new() });
    };
    let g = &result.generation;
    let note = format!(
        "{} frames at {}x{}, {} video tokens; encoders {:.1} s, prefill {} tokens {:.1} tok/s, decode {:.1} tok/s",
        frames.len(),
        result.frame_size.0,
        result.frame_size.1,
        result.grid.merged_tokens(loaded.model.config.vision_config.spatial_merge_size),
        result.encode_secs,
        g.prompt_tokens,
        g.prefill_tokens_per_sec(),
        g.decode_tokens_per_sec()
    );
    Ok(Event::Done { text: Some(g.text.clone()), stop: g.stop, note })
}

fn spawn() -> Chat {
    let (req_tx, req_rx) = unbounded::<Request>();
    let (ev_tx, ev_rx) = unbounded::<Event>();
    std::thread::Builder::new()
        .name("chat-inference".into())
        .spawn(move || {
            let mut model: Option<crate::question::LoadedMllm> = None;
            for req in req_rx {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match req {
                    Request::Load(dir) => {
                        // The old model is dropped first so two never sit in memory together.
                        model = None;
                        match load_mllm(&dir, false, candle_core::DType::F32, &candle_core::Device::Cpu) {
                            Ok(m) => {
                                let has_spatial = m.model.has_spatial();
                                let c = &m.model.config;
                                let desc = format!(
                                    "{} from {} ({} layers, hidden {}{})",
                                    if has_spatial { "Spatial-MLLM" } else { "Qwen2.5-VL" },
                                    dir.display(),
                                    c.num_hidden_layers,
                                    c.hidden_size,
                                    if has_spatial { ", VGGT spatial encoder" } else { "" }
                                );
                                model = Some(m);
                                Event::Loaded { desc, has_spatial }
                            }
                            Err(e) => Event::Failed(format!("{e:#}")),
                        }
                    }
                    Request::Ask { source, frames, request, cancel } => match model.as_mut() {
                        None => Event::Failed("no question-answering model is loaded (File > Load Spatial-MLLM weights...)".into()),
                        Some(m) => run_ask(m, &source, &frames, &request, &cancel, &ev_tx).unwrap_or_else(|e| Event::Failed(format!("{e:#}"))),
                    },
                }))
                .unwrap_or_else(|p| Event::Failed(format!("the chat thread caught a crash: {}", panic_message(p))));
                if ev_tx.send(result).is_err() {
                    break;
                }
            }
        })
        .expect("spawn the chat inference thread");
    Chat { requests: req_tx, events: ev_rx, cancel: None, model: None, loading: false, messages: Vec::new(), draft: String::new(), settings: ChatSettings::default(), stage: None }
}

/// The source frames a question looks at, and how they were chosen.
fn question_frames(settings: &ChatSettings, player: &Player, sampled: &SampledFrames) -> anyhow::Result<(Vec<usize>, String)> {
    if player.frame_count == 0 {
        anyhow::bail!("nothing is open: open a video or a folder of frames first");
    }
    if settings.frame_choice == FrameChoice::Sampled && !sampled.frames.is_empty() {
        let mut frames: Vec<usize> = sampled.frames.iter().copied().filter(|&f| f < player.frame_count).collect();
        frames.sort_unstable();
        frames.dedup();
        return Ok((frames, sampled.label.clone()));
    }
    let frames = uniform_question_indices(player.frame_count, FrameCount::Count(settings.frames.max(1)))?;
    Ok((frames, format!("{} uniform frames", settings.frames)))
}

fn user_text(question: &str, settings: &ChatSettings) -> String {
    let format = match settings.format {
        1 => QuestionFormat::Numeric,
        2 => QuestionFormat::MultipleChoice(settings.options.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()),
        _ => QuestionFormat::Free,
    };
    format_question(question, &format)
}

#[allow(clippy::too_many_arguments)]
fn handle(
    mut chat: ResMut<Chat>,
    mut loads: MessageReader<LoadMllm>,
    mut asks: MessageReader<AskQuestion>,
    mut cancels: MessageReader<CancelAnswer>,
    mut status: ResMut<StatusLine>,
    player: Res<Player>,
    sampled: Res<SampledFrames>,
) {
    for LoadMllm(dir) in loads.read() {
        chat.cancel();
        status.info(format!("loading Spatial-MLLM from {}...", dir.display()));
        chat.loading = true;
        let _ = chat.requests.send(Request::Load(dir.clone()));
    }
    for _ in cancels.read() {
        chat.cancel();
    }
    for AskQuestion(question) in asks.read() {
        let question = question.trim();
        if question.is_empty() {
            continue;
        }
        if chat.model.is_none() {
            let msg = if chat.loading { "The model is still loading; ask again in a moment." } else { "No model is loaded, so nothing can answer yet. Load Spatial-MLLM weights with File > Load Spatial-MLLM weights..." };
            chat.say(question, msg.into(), AnswerState::Failed);
            continue;
        }
        if chat.answering() {
            chat.say(question, "Still answering the previous question: cancel it first.".into(), AnswerState::Failed);
            continue;
        }
        let settings = chat.settings.clone();
        let (frames, how) = match question_frames(&settings, &player, &sampled) {
            Ok(f) => f,
            Err(e) => {
                chat.say(question, format!("{e:#}"), AnswerState::Failed);
                continue;
            }
        };
        let source = match &player.source {
            Some(PlayerSource::Demo(rec)) => FrameSource::Geometry(rec.clone()),
            Some(PlayerSource::Folder(info)) => FrameSource::Folder(info.files.clone()),
            Some(PlayerSource::Video(info)) => FrameSource::Video((**info).clone()),
            None => {
                chat.say(question, "nothing is open: open a video or a folder of frames first".into(), AnswerState::Failed);
                continue;
            }
        };
        let use_spatial = settings.use_spatial && chat.model.as_ref().is_some_and(|m| m.has_spatial);
        let parts = AskRequestParts {
            user_text: user_text(question, &settings),
            use_spatial,
            params: GenerationParams { max_new_tokens: settings.max_new_tokens.max(1), temperature: settings.temperature, ..Default::default() },
        };
        let note = format!("{how}{}", if use_spatial { "" } else { ", base model (no spatial branch)" });
        chat.messages.push(ChatMessage { from_user: true, text: question.to_string(), state: AnswerState::Done, frames: frames.clone(), note: note.clone() });
        chat.messages.push(ChatMessage { from_user: false, text: String::new(), state: AnswerState::Streaming, frames: frames.clone(), note: String::new() });
        let cancel = Arc::new(AtomicBool::new(false));
        chat.cancel = Some(cancel.clone());
        let _ = chat.requests.send(Request::Ask { source, frames, request: Box::new(parts), cancel });
    }
    while let Ok(ev) = chat.events.try_recv() {
        match ev {
            Event::Loaded { desc, has_spatial } => {
                chat.loading = false;
                status.info(format!("loaded {desc}"));
                chat.model = Some(ModelInfo { desc, has_spatial });
            }
            Event::Stage(name, done, total) => chat.stage = Some((name, done, total)),
            Event::Token(piece) => {
                if let Some(m) = chat.messages.last_mut().filter(|m| !m.from_user && m.state == AnswerState::Streaming) {
                    m.text.push_str(&piece);
                }
            }
            Event::Done { text, stop, note } => {
                chat.cancel = None;
                chat.stage = None;
                if let Some(m) = chat.messages.last_mut().filter(|m| !m.from_user) {
                    if let Some(text) = text {
                        m.text = text;
                    }
                    m.state = if stop == StopReason::Cancelled { AnswerState::Cancelled } else { AnswerState::Done };
                    m.note = if stop == StopReason::MaxTokens { format!("{note}; stopped at the token limit") } else { note };
                }
            }
            Event::Failed(e) => {
                let was_answering = chat.cancel.take().is_some();
                chat.stage = None;
                if chat.loading {
                    chat.loading = false;
                    status.error(e);
                } else if was_answering {
                    if let Some(m) = chat.messages.last_mut().filter(|m| !m.from_user) {
                        m.text = e.clone();
                        m.state = AnswerState::Failed;
                    }
                    status.error(e);
                } else {
                    status.error(e);
                }
            }
        }
    }
}

/// The chat panel's contents (drawn inside the right-hand panel by the UI plugin).
pub fn panel(ui: &mut egui::Ui, chat: &mut Chat, asks: &mut Vec<String>, cancel: &mut bool, load: &mut bool) {
    ui.heading("Ask about the scene");
    match (&chat.model, chat.loading) {
        (_, true) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("loading the model...");
            });
        }
        (Some(m), false) => {
            ui.label(egui::RichText::new(&m.desc).small());
        }
        (None, false) => {
            ui.horizontal_wrapped(|ui| {
                ui.label("No model loaded.");
                if ui.link("Load Spatial-MLLM weights...").clicked() {
                    *load = true;
                }
            });
        }
    }
    egui::CollapsingHeader::new("Question settings").default_open(false).show(ui, |ui| {
        let s = &mut chat.settings;
        egui::ComboBox::from_label("answer format").selected_text(FORMATS[s.format]).show_ui(ui, |ui| {
            for (i, f) in FORMATS.iter().enumerate() {
                ui.selectable_value(&mut s.format, i, *f);
            }
        });
        if s.format == 2 {
            ui.add(egui::TextEdit::multiline(&mut s.options).desired_rows(3).hint_text("A. ...\nB. ...\nC. ..."));
        }
        ui.horizontal(|ui| {
            ui.radio_value(&mut s.frame_choice, FrameChoice::Sampled, "sampled frames");
            ui.radio_value(&mut s.frame_choice, FrameChoice::Uniform, "uniform");
            ui.add(egui::DragValue::new(&mut s.frames).range(2..=64).suffix(" frames"));
        });
        ui.checkbox(&mut s.use_spatial, "spatial branch (VGGT); off = base Qwen2.5-VL");
        ui.horizontal(|ui| {
            ui.add(egui::DragValue::new(&mut s.max_new_tokens).range(1..=2048).prefix("max tokens "));
            ui.add(egui::DragValue::new(&mut s.temperature).range(0.0..=2.0).speed(0.01).prefix("temperature "));
        });
    });
    ui.separator();
    let bottom_height = 96.0;
    egui::ScrollArea::vertical().stick_to_bottom(true).max_height((ui.available_height() - bottom_height).max(60.0)).show(ui, |ui| {
        for m in &chat.messages {
            let (who, colour) = if m.from_user { ("You", egui::Color32::from_rgb(150, 200, 255)) } else { ("Model", egui::Color32::from_rgb(255, 210, 150)) };
            ui.label(egui::RichText::new(who).strong().color(colour));
            let mut text = m.text.clone();
            if m.state == AnswerState::Streaming {
                text.push('▌');
            }
            let rich = egui::RichText::new(text);
            ui.label(if m.state == AnswerState::Failed { rich.color(egui::Color32::from_rgb(255, 120, 110)) } else { rich });
            if m.from_user && !m.frames.is_empty() {
                ui.label(egui::RichText::new(format!("frames {:?} ({})", m.frames, m.note)).small().weak());
            } else if !m.from_user && !m.note.is_empty() {
                ui.label(egui::RichText::new(&m.note).small().weak());
            }
            if m.state == AnswerState::Cancelled {
                ui.label(egui::RichText::new("(cancelled)").small().italics());
            }
            ui.add_space(6.0);
        }
    });
    if let Some((stage, done, total)) = &chat.stage {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(if *total > 1 { format!("{stage} {done}/{total}") } else { stage.clone() });
        });
    }
    let edit = ui.add(egui::TextEdit::multiline(&mut chat.draft).desired_rows(2).desired_width(f32::INFINITY).hint_text("e.g. how far is the sofa from the TV?  (Enter sends)"));
    let enter = edit.has_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter) && !i.modifiers.shift);
    ui.horizontal(|ui| {
        let can_send = !chat.answering() && !chat.draft.trim().is_empty();
        if (ui.add_enabled(can_send, egui::Button::new("Send")).clicked() || (enter && can_send)) && can_send {
            asks.push(std::mem::take(&mut chat.draft).trim().to_string());
        }
        if chat.answering() && ui.button("Cancel").clicked() {
            *cancel = true;
        }
    });
}

fn startup_weights(opts: Res<super::StartupOptions>, mut loads: MessageWriter<LoadMllm>) {
    if let Some(dir) = &opts.mllm {
        loads.write(LoadMllm(dir.clone()));
    }
}

pub struct ChatPlugin;

impl Plugin for ChatPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(spawn())
            .add_message::<LoadMllm>()
            .add_message::<AskQuestion>()
            .add_message::<CancelAnswer>()
            .add_systems(Startup, startup_weights)
            .add_systems(Update, handle);
    }
}
