//! egui panels: menu bar, scene controls and video (left), chat (right), timeline and status bar
//! (bottom), the badge naming the geometry's origin, hover labels and the F1 help overlay.
//! The 3D camera renders into whatever rectangle the panels leave.

pub mod colorbar;
pub(crate) mod live_texture;
mod open_window;
mod panels;

use super::player::Player;
use super::state::*;
use crate::pipeline::device::{DTypeRequest, DeviceRequest};
use crate::pipeline::source::SourceSpec;
use bevy::camera::{CameraOutputMode, visibility::RenderLayers};
use bevy::prelude::*;
use bevy::render::render_resource::BlendState;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured};
use bevy::window::{FileDragAndDrop, PrimaryWindow};
use bevy_egui::{EguiContexts, EguiGlobalSettings, EguiPrimaryContextPass, PrimaryEguiContext, egui};
use crossbeam_channel::{Receiver, Sender, unbounded};
use open_window::{OpenChoice, OpenKind, OpenWindow};
use panels::ERROR_RED;
use std::path::PathBuf;
use std::sync::Arc;

pub const SHORTCUTS: [(&str, &str); 15] = [
    ("Ctrl+O", "open a file or folder (path with Tab completion, recent files)"),
    ("Left drag", "orbit"),
    ("Right / middle drag", "pan"),
    ("Wheel", "zoom"),
    ("W A S D", "fly forward / left / back / right"),
    ("Q / E", "fly down / up (Shift: faster)"),
    ("R", "reset the view"),
    ("C", "look through the current frame's camera"),
    ("Click a camera", "jump to its frame"),
    ("Space", "play / pause"),
    ("Left / Right", "step one frame"),
    ("Click / drag the timeline", "seek"),
    ("F12", "screenshot (PNG, path in the status bar)"),
    ("F1", "this help"),
    ("Drop a file or folder", "open it"),
];

#[derive(Resource, Default)]
pub struct UiState {
    pub show_help: bool,
    /// The video frame on screen, and which decoded buffer is in it (a scrub preview and the
    /// exact frame share an index but not a buffer).
    frame_texture: Option<(usize, live_texture::LiveTexture)>,
    /// The device and dtype chosen in the settings (applied with "Apply").
    device_choice: Option<(DeviceRequest, DTypeRequest)>,
    open_window: OpenWindow,
    show_settings: bool,
    /// The cache's size and entries, and when they were read.
    cache_usage: Option<(std::time::Instant, u64, usize)>,
    /// The length typed for "set scale", in metres.
    scale_text: String,
}

/// Results of file dialogs, which run on their own thread so the UI never blocks on them.
#[derive(Resource)]
struct Dialogs {
    tx: Sender<DialogResult>,
    rx: Receiver<DialogResult>,
}

enum DialogResult {
    Open(PathBuf),
    Model(PathBuf),
    Vggt(PathBuf),
    Export(PathBuf),
}

#[derive(Clone, Copy, PartialEq)]
enum DialogKind {
    Export,
    OpenVideo,
    OpenFolder,
    Model,
    Vggt,
}

fn setup(mut commands: Commands, mut egui_settings: ResMut<EguiGlobalSettings>) {
    // egui gets its own overlay camera so the 3D camera's viewport can shrink freely.
    egui_settings.auto_create_primary_context = false;
    commands.spawn((
        PrimaryEguiContext,
        Camera2d,
        RenderLayers::none(),
        Camera {
            order: 1,
            output_mode: CameraOutputMode::Write { blend_state: Some(BlendState::ALPHA_BLENDING), clear_color: ClearColorConfig::None },
            clear_color: ClearColorConfig::Custom(Color::NONE),
            ..default()
        },
    ));
    let (tx, rx) = unbounded();
    commands.insert_resource(Dialogs { tx, rx });
    let (tx, rx) = unbounded();
    commands.insert_resource(ScreenshotResults { tx, rx });
}

fn spawn_dialog(tx: &Sender<DialogResult>, kind: DialogKind) {
    let tx = tx.clone();
    std::thread::spawn(move || {
        let picked = if kind == DialogKind::Export {
            rfd::FileDialog::new().add_filter("geometry", &["safetensors", "ply"]).set_file_name("reconstruction.safetensors").save_file()
        } else if kind == DialogKind::OpenVideo {
            rfd::FileDialog::new().add_filter("video", &["mp4", "mov", "mkv", "webm", "avi"]).pick_file()
        } else {
            rfd::FileDialog::new().pick_folder()
        };
        if let Some(p) = picked {
            let _ = tx.send(match kind {
                DialogKind::OpenVideo | DialogKind::OpenFolder => DialogResult::Open(p),
                DialogKind::Model => DialogResult::Model(p),
                DialogKind::Vggt => DialogResult::Vggt(p),
                DialogKind::Export => DialogResult::Export(p),
            });
        }
    });
}

/// Where F12 puts screenshots: `~/Pictures/spatial-viewer/` (whatever folder the app was started
/// from), else the temporary folder.
fn screenshot_path() -> PathBuf {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let dir = std::env::var_os("HOME").map(|h| PathBuf::from(h).join("Pictures").join("spatial-viewer")).unwrap_or_else(std::env::temp_dir);
    dir.join(format!("spatial-viewer-{ms}.png"))
}

/// egui's fonts cover Latin, Greek and Cyrillic: a CJK fallback after them, so answers and file
/// names in Chinese, Japanese or Korean are text, not boxes.
fn add_cjk_font(mut contexts: EguiContexts, mut done: Local<bool>) {
    if *done {
        return;
    }
    let Ok(ctx) = contexts.ctx_mut() else { return };
    ctx.add_font(cjk_font());
    *done = true;
}

fn cjk_font() -> egui::epaint::text::FontInsert {
    let data = egui::FontData::from_static(include_bytes!("../../../../assets/fonts/wqy-microhei.ttc"));
    let families = [egui::FontFamily::Proportional, egui::FontFamily::Monospace]
        .map(|family| egui::epaint::text::InsertFontFamily { family, priority: egui::epaint::text::FontPriority::Lowest })
        .to_vec();
    egui::epaint::text::FontInsert::new("WenQuanYi Micro Hei", data, families)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chinese, Japanese and Korean text has glyphs (egui's own fonts have none: boxes).
    #[test]
    fn cjk_text_has_glyphs() {
        let ctx = egui::Context::default();
        let text = "房间里有几把椅子？ソファ 의자";
        let pass = |ctx: &egui::Context| ctx.run_ui(egui::RawInput::default(), |_| {}).textures_delta.clear();
        pass(&ctx);
        let font = egui::FontId::proportional(14.0);
        assert!(!ctx.fonts_mut(|f| f.has_glyphs(&font, text)), "egui's default fonts already cover CJK?");
        ctx.add_font(cjk_font());
        pass(&ctx);
        pass(&ctx);
        let missing: String = text.chars().filter(|&c| !ctx.fonts_mut(|f| f.has_glyph(&font, c))).collect();
        assert!(missing.is_empty(), "no glyphs for {missing:?}");
        let mono = egui::FontId::monospace(12.0);
        let missing: String = text.chars().filter(|c| !c.is_whitespace()).filter(|&c| !ctx.fonts_mut(|f| f.has_glyph(&mono, c))).collect();
        assert!(missing.is_empty(), "no monospace glyphs for {missing:?}");
    }
}

/// Screenshots as they are written (or why not), from the capture observers.
#[derive(Resource)]
struct ScreenshotResults {
    tx: Sender<(PathBuf, Result<(), String>)>,
    rx: Receiver<(PathBuf, Result<(), String>)>,
}

/// The captured window as a PNG, written atomically (complete or not at all).
fn save_png(image: &bevy::image::Image, path: &std::path::Path) -> anyhow::Result<()> {
    let rgb = image.clone().try_into_dynamic().map_err(|e| anyhow::anyhow!("the captured image cannot be converted ({e})"))?.to_rgb8();
    crate::pipeline::fsio::write_atomic(path, |w| Ok(rgb.write_to(w, image::ImageFormat::Png)?))
}

fn take_screenshots(mut requests: MessageReader<ScreenshotRequest>, mut commands: Commands, mut status: ResMut<StatusLine>, keys: Res<ButtonInput<KeyCode>>, results: Res<ScreenshotResults>) {
    let mut paths: Vec<PathBuf> = requests.read().map(|r| r.0.clone()).collect();
    if keys.just_pressed(KeyCode::F12) {
        paths.push(screenshot_path());
    }
    for path in paths {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir_all(parent) {
                status.error(format!("{}: cannot create the folder ({})", parent.display(), crate::pipeline::fsio::plain_io_error(&e)));
                continue;
            }
        }
        if let Err(e) = crate::pipeline::fsio::check_writable(&path) {
            status.error(format!("screenshot: {e:#}"));
            continue;
        }
        let tx = results.tx.clone();
        let target = path.clone();
        commands.spawn(Screenshot::primary_window()).observe(move |captured: On<ScreenshotCaptured>| {
            let _ = tx.send((target.clone(), save_png(&captured.image, &target).map_err(|e| format!("{e:#}"))));
        });
    }
    while let Ok((path, result)) = results.rx.try_recv() {
        match result {
            Ok(()) => status.info(format!("screenshot saved to {}", std::fs::canonicalize(&path).unwrap_or(path).display())),
            Err(e) => status.error(format!("screenshot: {e}")),
        }
    }
}

fn dropped_files(mut drops: MessageReader<FileDragAndDrop>, mut open: MessageWriter<OpenRequest>) {
    for d in drops.read() {
        if let FileDragAndDrop::DroppedFile { path_buf, .. } = d {
            open.write(OpenRequest(SourceSpec::Path(path_buf.clone())));
        }
    }
}

fn dialog_results(dialogs: Res<Dialogs>, mut open: MessageWriter<OpenRequest>, mut vggt: MessageWriter<LoadVggt>, mut mllm: MessageWriter<LoadMllm>, mut export: MessageWriter<ExportRequest>) {
    while let Ok(r) = dialogs.rx.try_recv() {
        match r {
            DialogResult::Open(p) => {
                open.write(OpenRequest(SourceSpec::Path(p)));
            }
            DialogResult::Vggt(p) => {
                vggt.write(LoadVggt(p.display().to_string()));
            }
            DialogResult::Export(p) => {
                export.write(ExportRequest { path: p, format: None });
            }
            DialogResult::Model(p) => {
                mllm.write(LoadMllm(p.display().to_string()));
            }
        }
    }
}

/// The timeline: ticks, the picks (orange) and the compared picks (blue), the frames that see the
/// selected region (green bars; picks among them ringed in green), the current frame.
fn timeline(ui: &mut egui::Ui, player: &Player, sampled: &SampledFrames, region: Option<&RegionSelection>, seek: &mut Option<usize>) {
    let n = player.frame_count;
    let (rect, response) = ui.allocate_exact_size(egui::vec2(ui.available_width(), 46.0), egui::Sense::click_and_drag());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 3.0, egui::Color32::from_gray(28));
    if n == 0 {
        painter.text(rect.center(), egui::Align2::CENTER_CENTER, "no frames", egui::FontId::proportional(13.0), egui::Color32::GRAY);
        return;
    }
    let x_of = |f: usize| rect.left() + 8.0 + (rect.width() - 16.0) * if n > 1 { f as f32 / (n - 1) as f32 } else { 0.5 };
    for f in 0..n {
        let x = x_of(f);
        let major = f % 10 == 0;
        let top = if major { rect.top() + 8.0 } else { rect.top() + 14.0 };
        painter.line_segment([egui::pos2(x, top), egui::pos2(x, rect.bottom() - 14.0)], egui::Stroke::new(1.0, egui::Color32::from_gray(if major { 150 } else { 90 })));
    }
    let region_frames: &[usize] = region.map_or(&[], |r| &r.source_frames);
    for &f in region_frames.iter().filter(|&&f| f < n) {
        let x = x_of(f);
        painter.line_segment([egui::pos2(x, rect.top() + 11.0), egui::pos2(x, rect.bottom() - 14.0)], egui::Stroke::new(3.0, REGION_GREEN));
    }
    for &f in &sampled.frames {
        let x = x_of(f);
        painter.circle_filled(egui::pos2(x, rect.bottom() - 7.0), 4.0, egui::Color32::from_rgb(255, 115, 25));
        if region_frames.contains(&f) {
            painter.circle_stroke(egui::pos2(x, rect.bottom() - 7.0), 5.5, egui::Stroke::new(1.5, REGION_GREEN));
        }
    }
    for &f in &sampled.compare {
        let x = x_of(f);
        painter.circle_filled(egui::pos2(x, rect.top() + 5.0), 3.0, egui::Color32::from_rgb(90, 160, 255));
    }
    let x = x_of(player.current);
    painter.line_segment([egui::pos2(x, rect.top()), egui::pos2(x, rect.bottom() - 12.0)], egui::Stroke::new(2.5, egui::Color32::from_rgb(255, 235, 50)));
    painter.add(egui::Shape::convex_polygon(
        vec![egui::pos2(x - 6.0, rect.top()), egui::pos2(x + 6.0, rect.top()), egui::pos2(x, rect.top() + 8.0)],
        egui::Color32::from_rgb(255, 235, 50),
        egui::Stroke::NONE,
    ));
    if let Some(pos) = response.interact_pointer_pos() {
        if response.clicked() || response.dragged() {
            let t = ((pos.x - rect.left() - 8.0) / (rect.width() - 16.0)).clamp(0.0, 1.0);
            *seek = Some((t * (n.max(1) - 1) as f32).round() as usize);
        }
    }
    if let Some(pos) = response.hover_pos() {
        let t = ((pos.x - rect.left() - 8.0) / (rect.width() - 16.0)).clamp(0.0, 1.0);
        response.on_hover_text(format!("frame {}", (t * (n.max(1) - 1) as f32).round() as usize));
    }
}

/// Device and dtype choices offered in the settings.
const DEVICES: [(&str, DeviceRequest); 4] = [("auto", DeviceRequest::Auto), ("cpu", DeviceRequest::Cpu), ("cuda:0", DeviceRequest::Cuda(0)), ("metal", DeviceRequest::Metal(0))];
const DTYPES: [&str; 5] = ["auto", "f32", "bf16", "bf16-products", "f16"];

#[allow(clippy::too_many_arguments)]
fn ui_system(
    mut contexts: EguiContexts,
    mut player: ResMut<Player>,
    (mut settings, geometry, sampled, opened): (ResMut<ViewSettings>, Res<Geometry>, Res<SampledFrames>, Res<Opened>),
    (status, hovered, activity): (Res<StatusLine>, Res<HoveredCamera>, Res<Activity>),
    (mut vggt, mut chat): (ResMut<VggtState>, ResMut<ChatState>),
    mut state: ResMut<UiState>,
    mut viewport: ResMut<ViewportRect>,
    window: Single<&Window, With<PrimaryWindow>>,
    dialogs: Res<Dialogs>,
    keys: Res<ButtonInput<KeyCode>>,
    (mut sampler, sampling_state, mut inspection, mut video_panel): (ResMut<SamplerSettings>, Res<SamplingState>, ResMut<Inspection>, ResMut<VideoPanel>),
    (mut open, mut seek, mut shots, mut camera_cmd, mut exit): (MessageWriter<OpenRequest>, MessageWriter<SeekRequest>, MessageWriter<ScreenshotRequest>, MessageWriter<CameraCommand>, MessageWriter<AppExit>),
    (mut asks_out, mut cancel_answer, mut reconstruct, mut cancel_run, mut set_compute): (
        MessageWriter<AskQuestion>,
        MessageWriter<CancelAnswer>,
        MessageWriter<Reconstruct>,
        MessageWriter<CancelReconstruction>,
        MessageWriter<SetCompute>,
    ),
    (opts, mut save_state, mut export_out, mut relocating_seen): (Res<StartupOptions>, MessageWriter<SaveState>, MessageWriter<ExportRequest>, Local<Option<PathBuf>>),
    (mut app_settings, shared_cache, mut load_vggt, mut load_mllm, mut images): (ResMut<Settings>, Res<SharedCache>, MessageWriter<LoadVggt>, MessageWriter<LoadMllm>, ResMut<Assets<Image>>),
) -> Result {
    let ctx = contexts.ctx_mut()?.clone();
    // A saved state whose source moved: the open window asks where it is now.
    if opened.relocating != *relocating_seen {
        *relocating_seen = opened.relocating.clone();
        if opened.relocating.is_some() {
            state.open_window.open(OpenKind::Source);
            state.open_window.note = Some(format!("{}\nWhere is it now? The path opened next is taken as its new location.", status.message));
        }
    }
    if keys.just_pressed(KeyCode::F1) {
        state.show_help = !state.show_help;
    }
    // Ctrl may already be released within a slow frame.
    let ctrl = [KeyCode::ControlLeft, KeyCode::ControlRight];
    if keys.just_pressed(KeyCode::KeyO) && (keys.any_pressed(ctrl) || keys.any_just_released(ctrl)) {
        state.open_window.open(OpenKind::Source);
    }
    let mut root = egui::Ui::new(ctx.clone(), "root".into(), egui::UiBuilder::new().layer_id(egui::LayerId::background()).max_rect(ctx.viewport_rect()));
    let mut seek_to: Option<usize> = None;

    egui::Panel::top("menu").show(&mut root, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open... (Ctrl+O)").on_hover_text("a path (with completion) or a recent file").clicked() {
                    state.open_window.open(OpenKind::Source);
                }
                if ui.button("Open video (system dialog)...").clicked() {
                    spawn_dialog(&dialogs.tx, DialogKind::OpenVideo);
                }
                if ui.button("Open folder of frames (system dialog)...").clicked() {
                    spawn_dialog(&dialogs.tx, DialogKind::OpenFolder);
                }
                if ui.button("Open demo scene").clicked() {
                    open.write(OpenRequest(SourceSpec::Demo));
                }
                ui.menu_button("Open recent", |ui| {
                    if app_settings.0.recent.is_empty() {
                        ui.label("nothing yet");
                    }
                    for p in app_settings.0.recent.clone() {
                        if ui.button(p.display().to_string()).clicked() {
                            open.write(OpenRequest(SourceSpec::Path(p)));
                        }
                    }
                });
                ui.separator();
                if ui.add_enabled(geometry.scene.is_some(), egui::Button::new("Export...")).on_hover_text("COLMAP, GLB, PLY, depth maps or safetensors, with the filter on screen").clicked() {
                    state.open_window.open(OpenKind::Export);
                }
                if ui.add_enabled(opened.source.is_some(), egui::Button::new("Save state...")).on_hover_text("one .svstate file that reopens the source, its geometry, the picks, the view and the chat").clicked() {
                    state.open_window.open(OpenKind::SaveState);
                }
                ui.separator();
                if ui.button("Load VGGT weights...").clicked() {
                    state.open_window.open(OpenKind::Vggt);
                }
                if ui.button("Load Spatial-MLLM weights...").clicked() {
                    state.open_window.open(OpenKind::Mllm);
                }
                if ui.button("Settings...").clicked() {
                    state.show_settings = true;
                }
                ui.separator();
                if ui.button("Screenshot (F12)").clicked() {
                    shots.write(ScreenshotRequest(screenshot_path()));
                }
                if ui.button("Quit").clicked() {
                    exit.write(AppExit::Success);
                }
            });
            ui.menu_button("View", |ui| {
                if ui.button("Reset view (R)").clicked() {
                    camera_cmd.write(CameraCommand::Reset);
                }
                if ui.button("Look through current camera (C)").clicked() {
                    camera_cmd.write(CameraCommand::LookThrough(player.current));
                }
                ui.checkbox(&mut state.show_help, "Shortcuts (F1)");
            });
        });
    });

    egui::Panel::bottom("status").exact_size(24.0).show(&mut root, |ui| {
        ui.horizontal_centered(|ui| {
            if !activity.is_idle() {
                ui.spinner();
            }
            if let Some(p) = vggt.progress.clone() {
                if ui.button("Cancel").clicked() {
                    cancel_run.write(CancelReconstruction);
                }
                ui.add(egui::ProgressBar::new(p.fraction as f32).desired_width(120.0).show_percentage());
                let eta = if p.eta_s.is_finite() { format!(", about {:.0} s left", p.eta_s) } else { String::new() };
                ui.label(format!("{}{eta}   |", p.stage));
            }
            ui.label(egui::RichText::new(format!("VGGT {} · chat {}", vggt.compute, chat.compute)).small()).on_hover_text("the device and dtype each model thread runs on");
            let color = if status.is_error { ERROR_RED } else { egui::Color32::from_gray(200) };
            ui.colored_label(color, &status.message);
        });
    });

    egui::Panel::bottom("timeline").exact_size(96.0).show(&mut root, |ui| {
        ui.horizontal(|ui| {
            let label = if player.playing { "Pause" } else { "Play" };
            // One width for both labels: the controls after it must not jump when it toggles.
            if ui.add(egui::Button::new(label).min_size(egui::vec2(44.0, 0.0))).clicked() {
                player.playing = !player.playing;
            }
            if ui.button("<").on_hover_text("previous frame").clicked() {
                seek_to = Some(player.current.saturating_sub(1));
            }
            if ui.button(">").on_hover_text("next frame").clicked() {
                seek_to = Some(player.current + 1);
            }
            ui.add(egui::Slider::new(&mut player.speed, 0.1..=4.0).text("speed").logarithmic(true));
            let t = player.time_of(player.current);
            ui.label(format!("frame {} of {}   {:.2} s", player.current, player.frame_count, t));
            ui.separator();
            ui.colored_label(egui::Color32::from_rgb(255, 235, 50), "| current");
            ui.colored_label(egui::Color32::from_rgb(255, 115, 25), format!("o sampled: {}", sampled.label));
            if !sampled.compare.is_empty() {
                ui.colored_label(egui::Color32::from_rgb(90, 160, 255), "o uniform (for comparison)");
            }
        });
        timeline(ui, &player, &sampled, inspection.region.as_ref(), &mut seek_to);
    });

    let mut vggt_actions = panels::VggtActions::default();
    egui::Panel::left("scene").default_size(300.0).resizable(true).show(&mut root, |ui| {
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.heading("Video");
            if let Some((idx, frame)) = player.shown.clone() {
                // Upload the frame only when it changes.
                let key = Arc::as_ptr(&frame) as usize;
                if state.frame_texture.as_ref().is_none_or(|(shown, _)| *shown != key) {
                    let mut slot = state.frame_texture.take().map(|(_, tex)| tex);
                    live_texture::LiveTexture::show(&mut slot, live_texture::Pixels::from_rgb(frame.width, frame.height, &frame.data), false, &mut contexts, &mut images);
                    state.frame_texture = slot.map(|tex| (key, tex));
                }
                if let Some((_, tex)) = &state.frame_texture {
                    let w = ui.available_width();
                    let h = w * frame.height as f32 / frame.width.max(1) as f32;
                    // Sensing drags keeps the panel from scrolling while a region is dragged on it.
                    let r = ui.add(egui::Image::new((tex.id(), egui::vec2(w, h))).sense(egui::Sense::click_and_drag())).rect;
                    let panel = VideoPanel { rect: Some((Vec2::new(r.min.x, r.min.y), Vec2::new(r.max.x, r.max.y))), frame: idx };
                    if *video_panel != panel {
                        *video_panel = panel;
                    }
                }
                // One line, whatever the state: the panel must not jump while playing.
                let caption = match (&player.frame_error, player.shows_current()) {
                    (Some((f, e)), _) if *f == player.current => format!("frame {f} cannot be shown ({e}); showing frame {idx}"),
                    (_, true) => format!("{}: frame {idx} of {}", player.label, player.frame_count),
                    (_, false) if player.shown_is_preview => format!("{}: frame {} (preview, decoding)", player.label, player.current),
                    (_, false) => format!("{}: frame {} (decoding; frame {idx} shown)", player.label, player.current),
                };
                let error = player.frame_error.as_ref().is_some_and(|(f, _)| *f == player.current);
                ui.add(egui::Label::new(egui::RichText::new(caption).color(if error { ERROR_RED } else { egui::Color32::from_gray(200) })).truncate());
            } else {
                if video_panel.rect.is_some() {
                    *video_panel = VideoPanel::default();
                }
                ui.label("no video open (File > Open..., or drop a file or folder)");
            }
            ui.separator();
            ui.heading("Scene");
            panels::scene_section(ui, &mut settings, &geometry, player.current);
            ui.horizontal(|ui| {
                if ui.button("Reset view").clicked() {
                    camera_cmd.write(CameraCommand::Reset);
                }
                if ui.button("Look through camera").clicked() {
                    camera_cmd.write(CameraCommand::LookThrough(player.current));
                }
            });
            if let Some(scene) = geometry.scene.clone() {
                ui.separator();
                egui::CollapsingHeader::new(egui::RichText::new("Inspect & measure").heading()).default_open(true).show(ui, |ui| {
                    panels::inspect_section(ui, &mut inspection, &scene, &mut state.scale_text);
                });
            }
            ui.separator();
            ui.heading("VGGT");
            panels::vggt_section(ui, &mut vggt, &opened, &mut vggt_actions);
            ui.separator();
            ui.heading("Frame sampling");
            let mut color_mode = settings.color_mode;
            panels::sampling_section(ui, &mut sampler, &sampling_state, &geometry, &mut color_mode);
            if color_mode != settings.color_mode {
                settings.color_mode = color_mode;
            }
        });
    });
    if vggt_actions.load {
        state.open_window.open(OpenKind::Vggt);
    }
    if vggt_actions.reconstruct {
        reconstruct.write(Reconstruct);
    }
    if vggt_actions.cancel {
        cancel_run.write(CancelReconstruction);
    }

    let mut chat_actions = panels::ChatActions::default();
    egui::Panel::right("chat").default_size(320.0).resizable(true).show(&mut root, |ui| {
        panels::chat_panel(ui, &mut chat, &mut chat_actions);
    });
    for q in chat_actions.asks {
        asks_out.write(AskQuestion(q));
    }
    if chat_actions.cancel {
        cancel_answer.write(CancelAnswer);
    }
    if chat_actions.load {
        state.open_window.open(OpenKind::Mllm);
    }
    match state.open_window.show(&ctx, &app_settings.0.recent, &app_settings.0.recent_weights) {
        Some(OpenChoice::Chosen(OpenKind::Source, p)) => {
            open.write(OpenRequest(SourceSpec::parse(std::path::Path::new(&p))));
        }
        Some(OpenChoice::Chosen(OpenKind::Vggt, w)) => {
            load_vggt.write(LoadVggt(w));
        }
        Some(OpenChoice::Chosen(OpenKind::Mllm, w)) => {
            load_mllm.write(LoadMllm(w));
        }
        Some(OpenChoice::Chosen(OpenKind::SaveState, p)) => {
            save_state.write(SaveState(PathBuf::from(p)));
        }
        Some(OpenChoice::Chosen(OpenKind::Export, p)) => {
            export_out.write(ExportRequest { path: PathBuf::from(p), format: Some(state.open_window.export_format) });
        }
        Some(OpenChoice::SystemDialog(kind)) => spawn_dialog(
            &dialogs.tx,
            match kind {
                OpenKind::Source => DialogKind::OpenVideo,
                OpenKind::Vggt => DialogKind::Vggt,
                OpenKind::Mllm => DialogKind::Model,
                OpenKind::SaveState | OpenKind::Export => DialogKind::Export,
            },
        ),
        None => {}
    }
    if state.show_settings {
        let mut open_flag = true;
        let (mut d, mut t) = state.device_choice.unwrap_or((opts.device, opts.dtype));
        let mut apply = false;
        egui::Window::new("Settings").open(&mut open_flag).collapsible(false).show(&ctx, |ui| {
            ui.heading("Compute");
            ui.label(format!("VGGT runs on {}, the chat model on {}", vggt.compute, chat.compute));
            for note in [&vggt.compute_note, &chat.compute_note].into_iter().flatten() {
                ui.colored_label(ERROR_RED, note);
            }
            ui.horizontal(|ui| {
                ui.label("device");
                for (name, req) in DEVICES {
                    ui.radio_value(&mut d, req, name);
                }
            });
            ui.horizontal(|ui| {
                ui.label("dtype");
                for name in DTYPES {
                    if let Ok(req) = name.parse::<DTypeRequest>() {
                        ui.radio_value(&mut t, req, name);
                    }
                }
            });
            apply = ui.button("Apply (loaded weights reload)").clicked();
            ui.separator();
            ui.heading("Reconstruction cache");
            match &shared_cache.0 {
                None => {
                    ui.label("no cache folder (HOME is not set)");
                }
                Some(cache) => {
                    let fresh = state.cache_usage.as_ref().is_some_and(|(t, _, _)| t.elapsed().as_secs_f32() < 2.0);
                    if !fresh {
                        let (bytes, n) = cache.usage();
                        state.cache_usage = Some((std::time::Instant::now(), bytes, n));
                    }
                    let (_, bytes, n) = state.cache_usage.unwrap_or((std::time::Instant::now(), 0, 0));
                    ui.label(format!("{}: {n} reconstructions, {:.1} MiB", cache.dir.display(), bytes as f64 / (1u64 << 20) as f64));
                    let mut cap = app_settings.0.cache_cap_mib;
                    ui.add(egui::Slider::new(&mut cap, 64..=65536).logarithmic(true).suffix(" MiB").text("size cap (least recently used go first)"));
                    if cap != app_settings.0.cache_cap_mib {
                        app_settings.0.cache_cap_mib = cap;
                        cache.set_cap(cap << 20);
                        state.cache_usage = None;
                    }
                    if ui.button("Clear the cache").clicked() {
                        cache.clear();
                        state.cache_usage = None;
                    }
                }
            }
        });
        state.device_choice = Some((d, t));
        if apply {
            set_compute.write(SetCompute(d, t));
        }
        state.show_settings = open_flag;
    }

    // What is left is the 3D viewport.
    let free = root.available_rect_before_wrap();
    let scale = window.scale_factor();
    let pos = UVec2::new((free.left() * scale) as u32, (free.top() * scale) as u32);
    let size = UVec2::new((free.width() * scale).max(1.0) as u32, (free.height() * scale).max(1.0) as u32);
    if viewport.0 != Some((pos, size)) {
        viewport.0 = Some((pos, size));
    }

    if let Some(scene) = &geometry.scene {
        colorbar::show(&ctx, free, settings.color_mode, scene);
        // Under every window (Background): a window opened over the 3D view's corner, like the
        // results browser, keeps its title bar visible and draggable.
        egui::Area::new("badge".into()).order(egui::Order::Background).fixed_pos(free.left_top() + egui::vec2(10.0, 10.0)).show(&ctx, |ui| {
            egui::Frame::new().fill(egui::Color32::from_black_alpha(170)).inner_margin(6.0).corner_radius(4.0).show(ui, |ui| {
                ui.colored_label(egui::Color32::from_rgb(140, 230, 140), &scene.label);
            });
        });
    }
    if let (Some(f), Some(pos)) = (hovered.0, ctx.pointer_hover_pos()) {
        egui::Area::new("hover".into()).fixed_pos(pos + egui::vec2(14.0, 8.0)).show(&ctx, |ui| {
            egui::Frame::new().fill(egui::Color32::from_black_alpha(200)).inner_margin(4.0).show(ui, |ui| {
                ui.label(format!("camera of frame {f} (click to jump)"));
            });
        });
    }
    if state.show_help {
        egui::Window::new("Shortcuts").collapsible(false).show(&ctx, |ui| {
            egui::Grid::new("keys").striped(true).show(ui, |ui| {
                for (k, what) in SHORTCUTS {
                    ui.strong(k);
                    ui.label(what);
                    ui.end_row();
                }
            });
        });
    }
    if let Some(f) = seek_to {
        player.playing = false;
        seek.write(SeekRequest(f));
    }
    Ok(())
}

/// The selected region's colour (timeline, video frame, 3D view).
pub const REGION_GREEN: egui::Color32 = egui::Color32::from_rgb(80, 255, 200);

/// The panels' layout (systems drawing over the panels run after it).
#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub struct UiSystems;

pub struct UiPlugin;

impl Plugin for UiPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<UiState>()
            .add_systems(Startup, setup)
            .add_systems(EguiPrimaryContextPass, (add_cjk_font, ui_system).chain().in_set(UiSystems))
            .add_systems(Update, (take_screenshots, dropped_files, dialog_results));
    }
}
