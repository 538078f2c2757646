//! The VSI-Bench results browser: a run's scores per task, its questions in a table (filtered by
//! task, correctness, a search, or "changed" against a second run), and a click on a question
//! opens its video with the frames the model was given marked as the picks (timeline, frustums,
//! and what a follow-up question in the chat looks at), beside the prompt, the answer and the truth.

use super::state::*;
use crate::pipeline::eval::browse::{RunSummary, changed, matches};
use crate::pipeline::source::{SourceId, SourceSpec};
use bevy::prelude::*;
use bevy_egui::{EguiContexts, EguiPrimaryContextPass, egui};
use crossbeam_channel::{Receiver, unbounded};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

/// Which answers the table lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Correctness {
    #[default]
    All,
    Correct,
    Wrong,
    /// Answered differently in the compared run.
    Changed,
}

impl Correctness {
    pub const ALL: [Correctness; 4] = [Self::All, Self::Correct, Self::Wrong, Self::Changed];
    pub fn name(&self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Correct => "correct",
            Self::Wrong => "wrong",
            Self::Changed => "changed",
        }
    }
}

type Loaded = Result<(Arc<RunSummary>, Option<Arc<RunSummary>>), String>;

#[derive(Resource, Default)]
pub struct ResultsBrowser {
    pub open: bool,
    pub run: Option<Arc<RunSummary>>,
    pub compare: Option<Arc<RunSummary>>,
    pub task: Option<String>,
    pub correctness: Correctness,
    pub search: String,
    /// The selected question's key ([`RunSummary::key`]).
    pub selected: Option<String>,
    pub error: Option<String>,
    /// Where each listed question's row was drawn last frame (logical pixels: x, y, w, h), for
    /// tests that click them.
    pub row_rects: Vec<(String, [f32; 4])>,
    /// Where the browser's window was drawn last frame (x, y, w, h), for the same tests.
    pub window_rect: Option<[f32; 4]>,
    loading: Option<Receiver<Loaded>>,
    /// The rows the filters let through, and the filters they are for (recomputed only when
    /// a filter or a run changes, not every frame).
    shown_cache: Option<(FilterKey, Vec<usize>)>,
}

#[derive(Clone, PartialEq)]
struct FilterKey {
    task: Option<String>,
    correctness: Correctness,
    search: String,
    runs: (usize, usize),
}

impl ResultsBrowser {
    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// Positions (in the run's results) of the questions the filters let through, in row order.
    pub fn shown(&mut self) -> &[usize] {
        let ptr = |r: &Option<Arc<RunSummary>>| r.as_ref().map_or(0, |r| Arc::as_ptr(r) as usize);
        let key = FilterKey { task: self.task.clone(), correctness: self.correctness, search: self.search.clone(), runs: (ptr(&self.run), ptr(&self.compare)) };
        if self.shown_cache.as_ref().is_none_or(|(k, _)| *k != key) {
            let rows = match &self.run {
                None => Vec::new(),
                Some(run) => {
                    let correct = match self.correctness {
                        Correctness::Correct => Some(true),
                        Correctness::Wrong => Some(false),
                        _ => None,
                    };
                    let compare = self.compare.as_deref();
                    (0..run.results.len())
                        .filter(|&i| {
                            let r = &run.results[i];
                            matches(r, self.task.as_deref(), correct, &self.search)
                                && (self.correctness != Correctness::Changed || changed(r, compare.and_then(|c| c.get(&RunSummary::key(r)))))
                        })
                        .collect()
                }
            };
            self.shown_cache = Some((key, rows));
        }
        &self.shown_cache.as_ref().expect("filled above").1
    }

    pub fn selected_result(&self) -> Option<&Value> {
        let key = self.selected.as_ref()?;
        self.run.as_ref()?.results.iter().find(|r| RunSummary::key(r) == *key)
    }
}

fn load(mut requests: MessageReader<OpenEvalRun>, mut browser: ResMut<ResultsBrowser>, mut status: ResMut<StatusLine>) {
    for OpenEvalRun { path, compare } in requests.read() {
        let (tx, rx) = unbounded();
        let (path, compare) = (path.clone(), compare.clone());
        status.info(format!("reading the evaluation run {}...", path.display()));
        // Thousands of results parse in a moment, but not on the UI thread.
        std::thread::spawn(move || {
            let read = |p: &PathBuf| RunSummary::load(p).map(Arc::new).map_err(|e| format!("{e:#}"));
            let loaded = read(&path).and_then(|run| Ok((run, compare.as_ref().map(read).transpose()?)));
            let _ = tx.send(loaded);
        });
        browser.loading = Some(rx);
        browser.open = true;
    }
    let Some(rx) = &browser.loading else { return };
    let loaded = match rx.try_recv() {
        Ok(l) => l,
        Err(crossbeam_channel::TryRecvError::Empty) => return,
        // The reading thread panicked: say so rather than wait for ever.
        Err(crossbeam_channel::TryRecvError::Disconnected) => Err("reading the evaluation run failed unexpectedly (the reader crashed)".to_string()),
    };
    browser.loading = None;
    match loaded {
        Ok((run, compare)) => {
            status.info(format!("{}: {} results", run.dir.display(), run.results.len()));
            browser.run = Some(run);
            browser.compare = compare;
            browser.selected = None;
            browser.error = None;
        }
        Err(e) => {
            status.error(e.clone());
            browser.error = Some(e);
        }
    }
}

/// Opens the selected question's video and marks its frames.
pub fn select(browser: &mut ResultsBrowser, key: String, opened: &Opened, open: &mut MessageWriter<OpenRequest>, frames: &mut QuestionFrames) -> Result<(), String> {
    browser.selected = Some(key.clone());
    let r = browser.selected_result().ok_or_else(|| format!("no question {key} in the run"))?;
    let video = r["video"].as_str().map(PathBuf::from).ok_or_else(|| format!("{key} names no video (results of another tool)"))?;
    if !video.exists() {
        return Err(format!("{}: the video of {key} is not there any more", video.display()));
    }
    let used: Vec<usize> = r["frames_used"].as_array().map(|a| a.iter().filter_map(|f| f.as_u64().map(|f| f as usize)).collect()).unwrap_or_default();
    let label = format!("frames used by question {} ({}, {})", r["sample"]["id"], r["sample"]["question_type"].as_str().unwrap_or("?"), key);
    let id = SourceId::of_path(&video);
    frames.0 = Some((id.clone(), used, label));
    if opened.id != id {
        open.write(OpenRequest(SourceSpec::Path(video)));
    }
    Ok(())
}

fn short(v: &Value) -> String {
    let s = v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
    if s.chars().count() > 40 { format!("{}...", s.chars().take(40).collect::<String>()) } else { s }
}

fn window(mut contexts: EguiContexts, mut browser: ResMut<ResultsBrowser>, opened: Res<Opened>, mut open: MessageWriter<OpenRequest>, mut frames: ResMut<QuestionFrames>, mut status: ResMut<StatusLine>) -> Result {
    if !browser.open {
        return Ok(());
    }
    let ctx = contexts.ctx_mut()?.clone();
    let mut keep_open = true;
    let mut clicked: Option<String> = None;
    // Over the 3D view, leaving the video panel and the chat visible.
    let shown = egui::Window::new("VSI-Bench results").open(&mut keep_open).default_pos([305.0, 30.0]).default_size([650.0, 560.0]).resizable(true).show(&ctx, |ui| {
        if browser.is_loading() {
            ui.label("reading...");
            return;
        }
        if let Some(e) = &browser.error {
            ui.colored_label(egui::Color32::from_rgb(255, 120, 110), e);
        }
        let Some(run) = browser.run.clone() else { return };
        let compare = browser.compare.clone();
        ui.label(format!("{} ({} questions)", run.dir.display(), run.results.len()));
        if let Some(c) = &compare {
            ui.label(format!("compared with {} ({} questions)", c.dir.display(), c.results.len()));
        }
        egui::CollapsingHeader::new("scores").default_open(true).show(ui, |ui| {
            egui::Grid::new("scores").striped(true).show(ui, |ui| {
                ui.strong("task");
                ui.strong("score");
                if compare.is_some() {
                    ui.strong("compared");
                    ui.strong("change");
                }
                ui.strong("questions");
                ui.end_row();
                let fmt = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{:.2}", s * 100.0));
                let rows: Vec<(String, Option<f64>, Option<f64>, u64)> = match &compare {
                    Some(c) => run.compare_types(c),
                    None => run.question_types().into_iter().map(|t| {
                        let m = &run.metrics["per_question_type"][&t];
                        (t.clone(), m["score"].as_f64(), None, m["count"].as_u64().unwrap_or(0))
                    }).collect(),
                };
                for (t, a, b, n) in rows {
                    ui.label(&t);
                    ui.label(fmt(a));
                    if compare.is_some() {
                        ui.label(fmt(b));
                        let delta = a.zip(b).map(|(a, b)| (a - b) * 100.0);
                        let color = match delta {
                            Some(d) if d > 0.0 => egui::Color32::from_rgb(120, 220, 120),
                            Some(d) if d < 0.0 => egui::Color32::from_rgb(255, 120, 110),
                            _ => ui.visuals().text_color(),
                        };
                        ui.colored_label(color, delta.map_or("-".into(), |d| format!("{d:+.2}")));
                    }
                    ui.label(n.to_string());
                    ui.end_row();
                }
                for k in ["acc", "mra", "all"] {
                    for avg in ["micro", "macro"] {
                        ui.strong(format!("{k} ({avg})"));
                        let a = run.metrics[k][avg].as_f64();
                        ui.strong(fmt(a));
                        if let Some(c) = &compare {
                            let b = c.metrics[k][avg].as_f64();
                            ui.strong(fmt(b));
                            ui.strong(a.zip(b).map_or("-".into(), |(a, b)| format!("{:+.2}", (a - b) * 100.0)));
                        }
                        ui.label("");
                        ui.end_row();
                    }
                }
            });
        });
        ui.separator();
        ui.horizontal(|ui| {
            let mut task = browser.task.clone();
            egui::ComboBox::from_label("task").selected_text(task.clone().unwrap_or_else(|| "all tasks".into())).show_ui(ui, |ui| {
                ui.selectable_value(&mut task, None, "all tasks");
                for t in run.question_types() {
                    ui.selectable_value(&mut task, Some(t.clone()), t);
                }
            });
            if task != browser.task {
                browser.task = task;
            }
            for c in Correctness::ALL {
                if c == Correctness::Changed && compare.is_none() {
                    continue;
                }
                ui.radio_value(&mut browser.correctness, c, c.name());
            }
            ui.add(egui::TextEdit::singleline(&mut browser.search).hint_text("search").desired_width(140.0));
        });
        let shown: Vec<usize> = browser.shown().to_vec();
        ui.label(format!("{} of {} questions", shown.len(), run.results.len()));
        ui.label(egui::RichText::new(format!("{:<12}{:<28}{:<9}{:<11}{}", "", "task", "truth", "answer", "reward")).monospace().weak());
        let mut rects = Vec::new();
        let row_height = ui.text_style_height(&egui::TextStyle::Body) + 4.0;
        egui::ScrollArea::vertical().id_salt("questions").max_height(200.0).auto_shrink([false, true]).show_rows(ui, row_height, shown.len(), |ui, range| {
            for r in shown[range].iter().map(|&i| &run.results[i]) {
                let key = RunSummary::key(r);
                let mark = if r["correct"].as_bool() == Some(true) { "ok " } else { "-- " };
                let then = compare.as_ref().and_then(|o| o.get(&key)).filter(|o| changed(r, Some(o))).map(|o| format!("  (was {})", short(&o["cleaned_model_output"]))).unwrap_or_default();
                let text = format!(
                    "{mark}{key:>7}  {:<27} {:<8} {:<10} {:.2}{then}",
                    r["sample"]["question_type"].as_str().unwrap_or("?"),
                    short(&r["cleaned_gt_answer"]),
                    short(&r["cleaned_model_output"]),
                    r["reward"].as_f64().unwrap_or(0.0)
                );
                let selected = browser.selected.as_deref() == Some(key.as_str());
                // One line per question (the rows are drawn lazily at a fixed height).
                let row = ui.add(egui::Button::selectable(selected, egui::RichText::new(text).monospace()).wrap_mode(egui::TextWrapMode::Truncate));
                rects.push((key.clone(), [row.rect.min.x, row.rect.min.y, row.rect.width(), row.rect.height()]));
                if row.clicked() {
                    clicked = Some(key);
                }
            }
        });
        browser.row_rects = rects;
        ui.separator();
        if let Some(r) = browser.selected_result() {
            egui::ScrollArea::vertical().id_salt("question").show(ui, |ui| {
                ui.strong(format!("{} {} in {}/{}", RunSummary::key(r), r["sample"]["question_type"].as_str().unwrap_or("?"), r["sample"]["dataset"].as_str().unwrap_or("?"), r["sample"]["scene_name"].as_str().unwrap_or("?")));
                ui.label(r["prompt"].as_str().or(r["sample"]["question"].as_str()).unwrap_or_default().replace("<|im_start|>", "").replace("<|im_end|>", ""));
                ui.label(format!("truth: {}", r["sample"]["ground_truth"].as_str().unwrap_or_default()));
                ui.label(format!("answer: {}", r["model_output"].as_str().unwrap_or_default()));
                ui.label(format!("reward {:.3}, frames used {}", r["reward"].as_f64().unwrap_or(0.0), r["frames_used"]));
                if let Some(o) = compare.as_ref().and_then(|o| o.get(&RunSummary::key(r))) {
                    ui.label(format!("compared run: {} (reward {:.3})", o["model_output"].as_str().unwrap_or_default(), o["reward"].as_f64().unwrap_or(0.0)));
                }
            });
        }
    });
    browser.window_rect = shown.map(|s| [s.response.rect.min.x, s.response.rect.min.y, s.response.rect.width(), s.response.rect.height()]);
    if !keep_open {
        browser.open = false;
    }
    if let Some(key) = clicked {
        if let Err(e) = select(&mut browser, key, &opened, &mut open, &mut frames) {
            status.error(e);
        }
    }
    Ok(())
}

pub struct ResultsBrowserPlugin;

impl Plugin for ResultsBrowserPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<ResultsBrowser>().add_systems(Update, load).add_systems(EguiPrimaryContextPass, window);
    }
}
