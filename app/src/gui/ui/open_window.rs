//! The in-app way to open and save things, which works on any desktop (a system file dialog needs
//! an xdg portal or zenity): a path field with completion (Tab, or a click on a suggestion), the
//! recent files, for weights the repos in the Hugging Face cache, and for exports the formats. A
//! system dialog is offered beside it.

use crate::pipeline::export::ExportFormat;
use crate::pipeline::weights::CachedRepo;
use bevy_egui::egui;
use std::path::{Path, PathBuf};

/// What the window opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenKind {
    Source,
    Vggt,
    Mllm,
    /// Where to save the state (`.svstate`).
    SaveState,
    /// Where to export the geometry, and in which format.
    Export,
}

impl OpenKind {
    fn title(&self) -> &'static str {
        match self {
            Self::Source => "Open a video, a folder of frames or saved geometry",
            Self::Vggt => "Load VGGT weights",
            Self::Mllm => "Load Spatial-MLLM / Qwen2.5-VL weights",
            Self::SaveState => "Save the state (source, geometry, picks, view, chat)",
            Self::Export => "Export the geometry on screen",
        }
    }
}

#[derive(Default)]
pub struct OpenWindow {
    pub kind: Option<OpenKind>,
    pub text: String,
    /// Cached repos, listed when the window opens (a directory scan, not every frame).
    repos: Vec<CachedRepo>,
    /// Suggestions for the text as it was last completed.
    suggestions: (String, Vec<String>),
    /// The path field takes the keyboard when the window opens.
    focus_pending: bool,
    /// The format chosen for an export.
    pub export_format: ExportFormat,
    /// Shown in red above the field (why the window opened by itself).
    pub note: Option<String>,
}

/// What the user chose.
pub enum OpenChoice {
    /// A path (or repo id) to open / load.
    Chosen(OpenKind, String),
    /// The system file dialog instead.
    SystemDialog(OpenKind),
}

/// Entries of the typed path's folder that start with its last part (folders end with '/').
pub fn completions(text: &str) -> Vec<String> {
    let expanded = expand_home(text);
    let (dir, prefix) = if expanded.ends_with('/') || expanded.is_empty() {
        (PathBuf::from(if expanded.is_empty() { "." } else { &expanded }), String::new())
    } else {
        let p = Path::new(&expanded);
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        (dir, p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
    };
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let base = if expanded.ends_with('/') || expanded.is_empty() { expanded.clone() } else { expanded[..expanded.len() - prefix.len()].to_string() };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) || (name.starts_with('.') && !prefix.starts_with('.')) {
                return None;
            }
            let dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false) || e.path().is_dir();
            Some(format!("{base}{name}{}", if dir { "/" } else { "" }))
        })
        .collect();
    out.sort();
    out.truncate(200);
    out
}

/// The longest prefix every suggestion shares (what Tab completes to).
pub fn common_prefix(options: &[String]) -> Option<String> {
    let first = options.first()?;
    let mut end = first.len();
    for o in &options[1..] {
        end = end.min(first.bytes().zip(o.bytes()).take_while(|(a, b)| a == b).count());
    }
    while !first.is_char_boundary(end) {
        end -= 1;
    }
    Some(first[..end].to_string())
}

fn expand_home(text: &str) -> String {
    match (text.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => text.to_string(),
    }
}

impl OpenWindow {
    pub fn open(&mut self, kind: OpenKind) {
        if self.kind != Some(kind) {
            self.note = None;
        }
        self.kind = Some(kind);
        self.repos = if matches!(kind, OpenKind::Vggt | OpenKind::Mllm) { crate::pipeline::weights::cached_repos() } else { Vec::new() };
        match kind {
            OpenKind::SaveState if self.text.is_empty() || !self.text.ends_with(".svstate") => self.text = "session.svstate".into(),
            OpenKind::Export => self.text = self.export_format.default_name().into(),
            _ => {}
        }
        self.suggestions = (String::from("\u{0}"), Vec::new());
        self.focus_pending = true;
    }

    /// Draws the window; returns the user's choice.
    pub fn show(&mut self, ctx: &egui::Context, recent: &[PathBuf], recent_weights: &[String]) -> Option<OpenChoice> {
        let kind = self.kind?;
        let mut choice = None;
        let mut keep_open = true;
        egui::Window::new(kind.title()).collapsible(false).open(&mut keep_open).default_width(520.0).show(ctx, |ui| {
            if let Some(note) = &self.note {
                ui.colored_label(egui::Color32::from_rgb(255, 120, 110), note);
            }
            if kind == OpenKind::Export {
                for f in ExportFormat::ALL {
                    if ui.radio_value(&mut self.export_format, f, f.describe()).changed() {
                        // The name follows the format unless the user typed their own folder.
                        let p = std::path::Path::new(&self.text);
                        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
                        self.text = dir.map_or_else(|| f.default_name().to_string(), |d| d.join(f.default_name()).display().to_string());
                    }
                }
                ui.separator();
            }
            let hint = match kind {
                OpenKind::Source => "a video, a folder of frames, a .safetensors reconstruction, a .svstate or a VSI-Bench run folder",
                OpenKind::SaveState => "/path/to/session.svstate",
                OpenKind::Export => "/path/to/a file or a new folder",
                _ => "a folder, or a Hugging Face repo id such as facebook/VGGT-1B",
            };
            // Focus stays on the field through Tab, which completes instead of moving on.
            let edit = ui.add(egui::TextEdit::singleline(&mut self.text).hint_text(hint).desired_width(f32::INFINITY).lock_focus(true).id(egui::Id::new("open path")));
            if std::mem::take(&mut self.focus_pending) {
                edit.request_focus();
            }
            if self.suggestions.0 != self.text {
                self.suggestions = (self.text.clone(), completions(&self.text));
            }
            let tab = edit.has_focus() && ui.input(|i| i.key_pressed(egui::Key::Tab));
            if tab {
                if let Some(p) = common_prefix(&self.suggestions.1) {
                    if p.len() > self.text.len() {
                        self.text = p;
                    }
                }
                edit.request_focus();
            }
            let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            ui.horizontal(|ui| {
                let action = match kind {
                    OpenKind::SaveState => "Save",
                    OpenKind::Export => "Export",
                    _ => "Open",
                };
                if (ui.button(action).clicked() || enter) && !self.text.trim().is_empty() {
                    choice = Some(OpenChoice::Chosen(kind, expand_home(self.text.trim())));
                }
                if matches!(kind, OpenKind::Source | OpenKind::Vggt | OpenKind::Mllm) && ui.button("System dialog...").on_hover_text("the desktop's file dialog (needs an xdg portal or zenity)").clicked() {
                    choice = Some(OpenChoice::SystemDialog(kind));
                }
            });
            if !self.suggestions.1.is_empty() && !self.text.is_empty() {
                ui.label(egui::RichText::new("matching (Tab completes)").small());
                egui::ScrollArea::vertical().id_salt("completions").max_height(140.0).show(ui, |ui| {
                    for s in self.suggestions.1.clone() {
                        if ui.selectable_label(false, &s).clicked() {
                            self.text = s;
                        }
                    }
                });
            }
            let recent_list: Vec<String> = match kind {
                OpenKind::Source => recent.iter().map(|p| p.display().to_string()).collect(),
                OpenKind::Vggt | OpenKind::Mllm => recent_weights.to_vec(),
                OpenKind::SaveState | OpenKind::Export => Vec::new(),
            };
            if !recent_list.is_empty() {
                ui.separator();
                ui.label("recent");
                for r in recent_list {
                    if ui.selectable_label(false, &r).clicked() {
                        choice = Some(OpenChoice::Chosen(kind, r));
                    }
                }
            }
            if matches!(kind, OpenKind::Vggt | OpenKind::Mllm) {
                ui.separator();
                ui.label(format!("in the Hugging Face cache ({})", crate::pipeline::weights::hub_cache_dir().display()));
                if self.repos.is_empty() {
                    ui.label(egui::RichText::new("none").small());
                }
                for r in &self.repos {
                    if ui.selectable_label(false, &r.id).on_hover_text(r.snapshot.display().to_string()).clicked() {
                        choice = Some(OpenChoice::Chosen(kind, r.id.clone()));
                    }
                }
            }
        });
        if !keep_open || choice.is_some() {
            self.kind = None;
        }
        choice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_lists_the_folder_entries_that_match() {
        let dir = tempfile::Builder::new().prefix("sv-unit-complete-").tempdir().unwrap();
        let dir = dir.path();
        std::fs::create_dir_all(dir.join("clips")).unwrap();
        std::fs::write(dir.join("clip-a.mp4"), b"").unwrap();
        std::fs::write(dir.join("clip-b.mp4"), b"").unwrap();
        std::fs::write(dir.join(".hidden"), b"").unwrap();
        let base = format!("{}/", dir.display());
        let got = completions(&format!("{base}cl"));
        assert_eq!(got, vec![format!("{base}clip-a.mp4"), format!("{base}clip-b.mp4"), format!("{base}clips/")]);
        assert_eq!(common_prefix(&got).unwrap(), format!("{base}clip"));
        assert_eq!(completions(&base).len(), 3);
        assert!(completions(&format!("{base}zzz")).is_empty());
    }
}
