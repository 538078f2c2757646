//! egui panels: menu bar, scene controls and video (left), chat (right), timeline and status bar
//! (bottom), the badge naming the geometry's origin, hover labels and the F1 help overlay.
//! The 3D camera renders into whatever rectangle the panels leave.

use super::camera::{CameraCommand, ViewportRect};
use super::cloud::PointSource;
use super::player::Player;
use super::scene::{COLOR_MODES, Geometry, HoveredCamera, SampledFrames, ViewSettings};
use super::tasks::Worker;
use super::{OpenRequest, ScreenshotRequest, SeekRequest, StatusLine};
use bevy::camera::{CameraOutputMode, visibility::RenderLayers};
use bevy::prelude::*;
use bevy::render::render_resource::BlendState;
use bevy::render::view::screenshot::{Screenshot, save_to_disk};
use bevy::window::{FileDragAndDrop, PrimaryWindow};
use bevy_egui::{EguiContexts, EguiGlobalSettings, EguiPrimaryContextPass, PrimaryEguiContext, egui};
use crossbeam_channel::{Receiver, Sender, unbounded};
use std::path::PathBuf;
use std::sync::Arc;

pub const SHORTCUTS: [(&str, &str); 14] = [
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
    ("Drop a folder", "open it"),
];

#[derive(Resource, Default)]
pub struct UiState {
    pub show_help: bool,
    frame_texture: Option<(usize, egui::TextureHandle)>,
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

fn screenshot_path() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    PathBuf::from("screenshots").join(format!("spatial-viewer-{secs}.png"))
}

fn take_screenshots(mut requests: MessageReader<ScreenshotRequest>, mut commands: Commands, mut status: ResMut<StatusLine>, keys: Res<ButtonInput<KeyCode>>) {
    let mut paths: Vec<PathBuf> = requests.read().map(|r| r.0.clone()).collect();
    if keys.just_pressed(KeyCode::F12) {
        paths.push(screenshot_path());
    }
    for path in paths {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir_all(parent) {
                status.error(format!("{}: cannot create folder ({e})", parent.display()));
                continue;
            }
        }
        let _ = std::fs::remove_file(&path);
        commands.spawn(Screenshot::primary_window()).observe(save_to_disk(path.clone()));
        status.info(format!("screenshot saved to {}", path.display()));
    }
}

fn dropped_files(mut drops: MessageReader<FileDragAndDrop>, mut open: MessageWriter<OpenRequest>) {
    for d in drops.read() {
        if let FileDragAndDrop::DroppedFile { path_buf, .. } = d {
            open.write(OpenRequest::Path(path_buf.clone()));
        }
    }
}

fn dialog_results(
    dialogs: Res<Dialogs>,
    mut open: MessageWriter<OpenRequest>,
    mut vggt: MessageWriter<super::inference::LoadVggt>,
    mut mllm: MessageWriter<super::chat::LoadMllm>,
    mut status: ResMut<StatusLine>,
    geometry: Res<Geometry>,
    mut worker: ResMut<Worker>,
) {
    while let Ok(r) = dialogs.rx.try_recv() {
        match r {
            DialogResult::Open(p) => {
                open.write(OpenRequest::Path(p));
            }
            DialogResult::Vggt(p) => {
                vggt.write(super::inference::LoadVggt(p));
            }
            DialogResult::Export(p) => match &geometry.scene {
                Some(scene) => worker.submit(super::tasks::Job::Export { rec: scene.rec.clone(), path: p }),
                None => status.error("nothing to export: no geometry is loaded"),
            },
            DialogResult::Model(p) => {
                mllm.write(super::chat::LoadMllm(p));
            }
        }
    }
}

fn timeline(ui: &mut egui::Ui, player: &Player, sampled: &SampledFrames, seek: &mut Option<usize>) {
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
    for &f in &sampled.frames {
        let x = x_of(f);
        painter.circle_filled(egui::pos2(x, rect.bottom() - 7.0), 4.0, egui::Color32::from_rgb(255, 115, 25));
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

#[allow(clippy::too_many_arguments)]
fn ui_system(
    mut contexts: EguiContexts,
    mut player: ResMut<Player>,
    mut settings: ResMut<ViewSettings>,
    geometry: Res<Geometry>,
    sampled: Res<SampledFrames>,
    status: Res<StatusLine>,
    hovered: Res<HoveredCamera>,
    (worker, mut inference): (Res<Worker>, ResMut<super::inference::Inference>),
    (mut chat, mut asks_out, mut cancel_out): (ResMut<super::chat::Chat>, MessageWriter<super::chat::AskQuestion>, MessageWriter<super::chat::CancelAnswer>),
    mut state: ResMut<UiState>,
    mut viewport: ResMut<ViewportRect>,
    window: Single<&Window, With<PrimaryWindow>>,
    dialogs: Res<Dialogs>,
    keys: Res<ButtonInput<KeyCode>>,
    (mut sampler, sampling_state): (ResMut<super::sampling::SamplerSettings>, Res<super::sampling::SamplingState>),
    (mut open, mut seek, mut shots, mut camera_cmd, mut exit): (
        MessageWriter<OpenRequest>,
        MessageWriter<SeekRequest>,
        MessageWriter<ScreenshotRequest>,
        MessageWriter<CameraCommand>,
        MessageWriter<AppExit>,
    ),
) -> Result {
    let ctx = contexts.ctx_mut()?.clone();
    if keys.just_pressed(KeyCode::F1) {
        state.show_help = !state.show_help;
    }
    let mut root = egui::Ui::new(ctx.clone(), "root".into(), egui::UiBuilder::new().layer_id(egui::LayerId::background()).max_rect(ctx.viewport_rect()));
    let mut seek_to: Option<usize> = None;

    egui::Panel::top("menu").show(&mut root, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open video...").clicked() {
                    spawn_dialog(&dialogs.tx, DialogKind::OpenVideo);
                }
                if ui.button("Open folder of frames...").clicked() {
                    spawn_dialog(&dialogs.tx, DialogKind::OpenFolder);
                }
                if ui.button("Open demo scene").clicked() {
                    open.write(OpenRequest::Demo);
                }
                ui.separator();
                if ui.add_enabled(geometry.scene.is_some(), egui::Button::new("Export reconstruction...")).on_hover_text("safetensors with upstream's names, or .ply of the confident points").clicked() {
                    spawn_dialog(&dialogs.tx, DialogKind::Export);
                }
                ui.separator();
                if ui.button("Load VGGT weights...").clicked() {
                    spawn_dialog(&dialogs.tx, DialogKind::Vggt);
                }
                if ui.button("Load Spatial-MLLM weights...").clicked() {
                    spawn_dialog(&dialogs.tx, DialogKind::Model);
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
            let busy = !worker.is_idle() || !inference.is_idle();
            if busy {
                ui.spinner();
            }
            if let Some((stage, done, total, eta)) = inference.progress.clone() {
                if ui.button("Cancel").clicked() {
                    inference.cancel_run();
                }
                ui.label(format!("{stage}: stage {done}/{total}, about {eta:.0} s left   |"));
            }
            let color = if status.is_error { egui::Color32::from_rgb(255, 110, 100) } else { egui::Color32::from_gray(200) };
            ui.colored_label(color, &status.message);
        });
    });

    egui::Panel::bottom("timeline").exact_size(96.0).show(&mut root, |ui| {
        ui.horizontal(|ui| {
            let label = if player.playing { "Pause" } else { "Play" };
            if ui.button(label).clicked() {
                player.playing = !player.playing;
            }
            if ui.button("<").on_hover_text("previous frame").clicked() {
                let c = player.current.saturating_sub(1);
                seek_to = Some(c);
            }
            if ui.button(">").on_hover_text("next frame").clicked() {
                seek_to = Some(player.current + 1);
            }
            ui.add(egui::Slider::new(&mut player.speed, 0.1..=4.0).text("speed").logarithmic(true));
            let t = player.time_of(player.current);
            ui.label(format!("frame {} / {}   {:.2} s", player.current, player.frame_count.saturating_sub(1), t));
            ui.separator();
            ui.colored_label(egui::Color32::from_rgb(255, 235, 50), "| current");
            ui.colored_label(egui::Color32::from_rgb(255, 115, 25), format!("o sampled: {}", sampled.label));
            if !sampled.compare.is_empty() {
                ui.colored_label(egui::Color32::from_rgb(90, 160, 255), "o uniform (for comparison)");
            }
        });
        timeline(ui, &player, &sampled, &mut seek_to);
    });

    egui::Panel::left("scene").default_size(300.0).resizable(true).show(&mut root, |ui| {
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.heading("Video");
            if let Some((idx, frame)) = player.shown.clone() {
                // Upload the frame only when it changes (a scrub preview and the exact frame
                // share an index but not a buffer).
                let key = Arc::as_ptr(&frame) as usize;
                let image = || egui::ColorImage::from_rgb([frame.width, frame.height], &frame.data);
                match &mut state.frame_texture {
                    Some((shown, tex)) if *shown != key => {
                        tex.set(image(), egui::TextureOptions::LINEAR);
                        *shown = key;
                    }
                    Some(_) => {}
                    None => state.frame_texture = Some((key, ctx.load_texture("current frame", image(), egui::TextureOptions::LINEAR))),
                }
                if let Some((_, tex)) = &state.frame_texture {
                    let w = ui.available_width();
                    let h = w * frame.height as f32 / frame.width as f32;
                    ui.image((tex.id(), egui::vec2(w, h)));
                }
                if player.shown_is_preview {
                    ui.label(format!("{}: frame {} of {} (preview of frame {idx}, decoding...)", player.label, player.current, player.frame_count));
                } else {
                    ui.label(format!("{}: frame {} of {}", player.label, idx, player.frame_count));
                }
            } else {
                ui.label("no video open (File > Open..., or drop a folder)");
            }
            ui.separator();
            ui.heading("Scene");
            ui.add(egui::Slider::new(&mut settings.point_size, 1.0..=12.0).text("point size (px)"));
            egui::ComboBox::from_label("colour").selected_text(COLOR_MODES[settings.color_mode as usize]).show_ui(ui, |ui| {
                for (i, name) in COLOR_MODES.iter().enumerate() {
                    ui.selectable_value(&mut settings.color_mode, i as u32, *name);
                }
            });
            ui.add(egui::Slider::new(&mut settings.conf_percentile, 0.0..=100.0).text("confidence filter (%)"))
                .on_hover_text("hide the points below this confidence percentile");
            let frames = geometry.scene.as_ref().map(|s| s.rec.frames).unwrap_or(0);
            let mut only = settings.frame_filter.is_some();
            ui.horizontal(|ui| {
                ui.checkbox(&mut only, "points of frame");
                let mut f = settings.frame_filter.unwrap_or(player.current);
                ui.add_enabled(only, egui::DragValue::new(&mut f).range(0..=frames.saturating_sub(1)));
                settings.frame_filter = only.then_some(f);
                if !only {
                    ui.label("(all)");
                }
            });
            ui.checkbox(&mut settings.show_cameras, "show cameras");
            ui.horizontal(|ui| {
                ui.label("points from");
                ui.radio_value(&mut settings.source, PointSource::DepthAndCamera, "depth + camera");
                ui.radio_value(&mut settings.source, PointSource::PointMap, "point map");
            });
            ui.add(egui::Slider::new(&mut settings.point_budget, 10_000..=5_000_000).logarithmic(true).text("max points"));
            ui.horizontal(|ui| {
                if ui.button("Reset view").clicked() {
                    camera_cmd.write(CameraCommand::Reset);
                }
                if ui.button("Look through camera").clicked() {
                    camera_cmd.write(CameraCommand::LookThrough(player.current));
                }
            });
            if let Some(scene) = &geometry.scene {
                ui.label(format!("{} frames at {}x{}, {} points uploaded", scene.rec.frames, scene.rec.width, scene.rec.height, scene.cloud.points.len()));
            }
            ui.separator();
            ui.heading("VGGT");
            match &inference.weights {
                Some(w) => ui.label(w),
                None => ui.label("no weights: File > Load VGGT weights... reconstructs opened videos and folders"),
            };
            ui.add(egui::Slider::new(&mut inference.max_frames, 2..=128).logarithmic(true).text("frames per run"))
                .on_hover_text("frames spread evenly over the folder; on a CPU each frame of VGGT-1B at 518 px costs tens of seconds");
            ui.separator();
            ui.heading("Frame sampling");
            super::sampling::sampling_panel(ui, &mut sampler, &sampling_state, frames, &mut settings.color_mode);
        });
    });

    egui::Panel::right("chat").default_size(320.0).resizable(true).show(&mut root, |ui| {
        let (mut asks, mut cancel, mut load) = (Vec::new(), false, false);
        super::chat::panel(ui, &mut chat, &mut asks, &mut cancel, &mut load);
        for q in asks {
            asks_out.write(super::chat::AskQuestion(q));
        }
        if cancel {
            cancel_out.write(super::chat::CancelAnswer);
        }
        if load {
            spawn_dialog(&dialogs.tx, DialogKind::Model);
        }
    });

    // What is left is the 3D viewport.
    let free = root.available_rect_before_wrap();
    let scale = window.scale_factor();
    let pos = UVec2::new((free.left() * scale) as u32, (free.top() * scale) as u32);
    let size = UVec2::new((free.width() * scale).max(1.0) as u32, (free.height() * scale).max(1.0) as u32);
    if viewport.0 != Some((pos, size)) {
        viewport.0 = Some((pos, size));
    }

    if let Some(scene) = &geometry.scene {
        egui::Area::new("badge".into()).fixed_pos(free.left_top() + egui::vec2(10.0, 10.0)).show(&ctx, |ui| {
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

pub struct UiPlugin;

impl Plugin for UiPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<UiState>()
            .add_systems(Startup, setup)
            .add_systems(EguiPrimaryContextPass, ui_system)
            .add_systems(Update, (take_screenshots, dropped_files, dialog_results));
    }
}
