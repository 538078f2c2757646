//! The side panels' sections: scene settings, VGGT, frame sampling, and the chat. Each draws from
//! and writes to the shared state only.

use super::super::state::*;
use super::super::tasks::pick_colour;
use crate::pipeline::inspect;
use crate::pipeline::points::PointSource;
use bevy_egui::egui;

pub const ERROR_RED: egui::Color32 = egui::Color32::from_rgb(255, 120, 110);

/// Point cloud settings.
pub fn scene_section(ui: &mut egui::Ui, settings: &mut ViewSettings, geometry: &Geometry, current: usize) {
    ui.add(egui::Slider::new(&mut settings.point_size, 1.0..=12.0).text("point size (px)"));
    egui::ComboBox::from_label("colour").selected_text(settings.color_mode.name()).show_ui(ui, |ui| {
        for mode in ColorMode::ALL {
            ui.selectable_value(&mut settings.color_mode, mode, mode.name());
        }
    });
    ui.add(egui::Slider::new(&mut settings.conf_percentile, 0.0..=100.0).text("confidence filter (%)"))
        .on_hover_text("hide points below this percentile of the geometry's confidences (exports follow it; space-aware sampling has its own, upstream's 50 %)");
    let frames = geometry.scene.as_ref().map(|s| s.rec.frames).unwrap_or(0);
    let mut only = settings.frame_filter.is_some();
    ui.horizontal(|ui| {
        ui.checkbox(&mut only, "points of frame");
        let mut f = settings.frame_filter.unwrap_or(current);
        ui.add_enabled(only, egui::DragValue::new(&mut f).range(0..=frames.saturating_sub(1)));
        settings.frame_filter = only.then_some(f);
        if !only {
            ui.label("(all)");
        }
    });
    ui.horizontal(|ui| {
        ui.checkbox(&mut settings.show_cameras, "cameras:");
        ui.add_enabled_ui(settings.show_cameras, |ui| {
            let every = match settings.cameras {
                CameraSubset::EveryNth(n) => n,
                _ => 5,
            };
            ui.radio_value(&mut settings.cameras, CameraSubset::All, "all");
            ui.radio_value(&mut settings.cameras, CameraSubset::Picks, "picks");
            ui.radio_value(&mut settings.cameras, CameraSubset::EveryNth(every), "every");
            if let CameraSubset::EveryNth(n) = &mut settings.cameras {
                ui.add(egui::DragValue::new(n).range(2..=100));
            }
        });
    });
    ui.add_enabled(settings.show_cameras, egui::Slider::new(&mut settings.camera_scale, 0.1..=8.0).logarithmic(true).text("camera size"));
    ui.horizontal(|ui| {
        ui.label("points from");
        ui.radio_value(&mut settings.source, PointSource::DepthAndCamera, "depth + camera");
        ui.radio_value(&mut settings.source, PointSource::PointMap, "point map");
    });
    ui.add(egui::Slider::new(&mut settings.point_budget, 10_000..=5_000_000).logarithmic(true).text("max points"));
    if let Some(scene) = &geometry.scene {
        ui.label(format!("{} frames at {}x{}, {} points uploaded", scene.rec.frames, scene.rec.width, scene.rec.height, scene.cloud.points.len()));
    }
}

/// What the VGGT section asks the UI to do.
#[derive(Default)]
pub struct VggtActions {
    pub load: bool,
    pub reconstruct: bool,
    pub cancel: bool,
}

pub fn vggt_section(ui: &mut egui::Ui, state: &mut VggtState, opened: &Opened, actions: &mut VggtActions) {
    match &state.weights {
        Some(w) => {
            ui.label(egui::RichText::new(w).small());
        }
        None => {
            if ui.link("Load VGGT weights...").on_hover_text("opened videos and folders are then reconstructed").clicked() {
                actions.load = true;
            }
        }
    }
    ui.add(egui::Slider::new(&mut state.frames, 2..=256).logarithmic(true).text("candidate frames"))
        .on_hover_text("frames spread evenly over the source that VGGT reconstructs and space-aware sampling chooses from (upstream: 128)");
    let mut width = state.width / 14;
    ui.add(egui::Slider::new(&mut width, 8..=37).text("width / 14")).on_hover_text("VGGT input width in patches of 14 px (upstream: 37, 518 px); smaller is faster on a CPU");
    state.width = width * 14;
    if let Some(source) = &opened.source {
        let plan = crate::pipeline::reconstruct::ReconstructPlan { width: state.width, ..crate::pipeline::reconstruct::ReconstructPlan::candidates(source, state.frames) };
        ui.label(egui::RichText::new(format!("next run: {} of {}", plan.describe(source), source.name())).small());
    }
    ui.horizontal(|ui| {
        let running = state.progress.is_some();
        if ui.add_enabled(state.weights.is_some() && opened.source.is_some() && !running, egui::Button::new("Reconstruct")).on_hover_text("run VGGT on the open source with these settings").clicked() {
            actions.reconstruct = true;
        }
        if running && ui.button("Cancel").clicked() {
            actions.cancel = true;
        }
    });
    if let Some(e) = &state.last_error {
        ui.colored_label(ERROR_RED, format!("last run: {e}"));
    } else if let Some(r) = &state.last_run {
        ui.label(egui::RichText::new(format!("last run: {r}")).small());
    }
}

/// The "Frame sampling" section.
pub fn sampling_section(ui: &mut egui::Ui, settings: &mut SamplerSettings, state: &SamplingState, geometry: &Geometry, color_mode: &mut ColorMode) {
    ui.horizontal(|ui| {
        ui.radio_value(&mut settings.mode, SamplerMode::SpaceAware, "space-aware");
        ui.radio_value(&mut settings.mode, SamplerMode::Uniform, "uniform (16)");
    });
    if settings.mode == SamplerMode::Uniform {
        return;
    }
    let Some(scene) = &geometry.scene else {
        ui.label("space-aware sampling needs geometry: load VGGT weights and reconstruct (VGGT section), or open the demo");
        return;
    };
    let frames = scene.rec.frames;
    ui.label(egui::RichText::new(format!("candidates: the {frames} frames of the geometry ({}x{})", scene.rec.width, scene.rec.height)).small());
    // K stays below the candidates (picking every candidate would be no choice at all); the
    // user's K is kept for a source with more candidates.
    let max_k = frames.saturating_sub(1).max(1);
    ui.add(egui::Slider::new(&mut settings.k, 1..=max_k).clamping(egui::SliderClamping::Edits).text("K frames"));
    if settings.k > max_k {
        ui.label(egui::RichText::new(format!("K is {max_k} here: below the {frames} candidates")).small());
    }
    ui.add(egui::Slider::new(&mut settings.conf_percentile, 0.0..=99.0).text("voxel conf. %")).on_hover_text("points below this percentile of the point map's confidences are not voxelised (upstream: 50)");
    ui.checkbox(&mut settings.compare_uniform, "also show the uniform picks (blue)");
    if let Some(e) = &state.error {
        ui.colored_label(ERROR_RED, e);
    }
    let Some(r) = &state.result else {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("building voxel sets...");
        });
        return;
    };
    ui.label(format!("voxel size {:.4} (1/20 of the shortest side), covered {} of {} voxels", r.voxel_size, r.covered_voxels, r.total_voxels));
    let mut by_cover = *color_mode == ColorMode::FirstCoveringPick;
    if ui.checkbox(&mut by_cover, "colour points by the pick that first covered them").on_hover_text("each point takes its voxel's first covering pick's colour (see the list); grey: covered by no pick").changed() {
        *color_mode = if by_cover { ColorMode::FirstCoveringPick } else { ColorMode::Image };
    }
    egui::CollapsingHeader::new(format!("picks in greedy order ({})", r.picks_in_order.len())).default_open(by_cover).show(ui, |ui| {
        egui::Grid::new("picks").striped(true).show(ui, |ui| {
            ui.strong("#");
            ui.strong("frame");
            ui.strong("new voxels");
            ui.strong("voxels seen");
            ui.end_row();
            for (i, &(f, gain)) in r.picks_in_order.iter().enumerate() {
                let [cr, cg, cb] = pick_colour(i, r.picks_in_order.len());
                ui.colored_label(egui::Color32::from_rgb(cr, cg, cb), format!("\u{25A0} {}", i + 1));
                ui.label(format!("{}", scene.source_frames.get(f).copied().unwrap_or(f)));
                ui.label(format!("{gain}"));
                ui.label(format!("{}", r.voxels_per_frame[f]));
                ui.end_row();
            }
        });
    });
}

/// What the chat panel asks the UI to do.
#[derive(Default)]
pub struct ChatActions {
    pub asks: Vec<String>,
    pub cancel: bool,
    pub load: bool,
}

pub fn chat_panel(ui: &mut egui::Ui, chat: &mut ChatState, actions: &mut ChatActions) {
    ui.heading("Ask about the scene");
    if chat.loading {
        ui.horizontal(|ui| {
            ui.spinner();
            match &chat.stage {
                Some((stage, done, total)) if stage.starts_with("downloading") => ui.label(format!("{stage}: {done} of {total} MiB")),
                _ => ui.label("loading the model..."),
            };
            if ui.button("Cancel").clicked() {
                actions.cancel = true;
            }
        });
    } else if let Some(m) = &chat.model {
        ui.label(egui::RichText::new(m).small());
    } else {
        if let Some(e) = &chat.load_error {
            ui.colored_label(ERROR_RED, format!("Loading the model failed: {e}"));
        }
        ui.horizontal_wrapped(|ui| {
            ui.label("No model loaded.");
            if ui.link("Load Spatial-MLLM weights...").clicked() {
                actions.load = true;
            }
        });
    }
    egui::CollapsingHeader::new("Question settings").default_open(false).show(ui, |ui| {
        let s = &mut chat.settings;
        egui::ComboBox::from_label("answer format").selected_text(s.format.name()).show_ui(ui, |ui| {
            for f in AnswerFormat::ALL {
                ui.selectable_value(&mut s.format, f, f.name());
            }
        });
        if s.format == AnswerFormat::MultipleChoice {
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
            ui.label(if m.state == AnswerState::Failed { rich.color(ERROR_RED) } else { rich });
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
            ui.label(match (stage.as_str(), *total) {
                ("generating", _) => format!("generating: {done} tokens"),
                (_, t) if t > 1 => format!("{stage} {done}/{t}"),
                _ => stage.clone(),
            });
        });
    }
    let edit = ui.add(egui::TextEdit::multiline(&mut chat.draft).desired_rows(2).desired_width(f32::INFINITY).hint_text("e.g. how far is the sofa from the TV?  (Enter sends)"));
    let enter = edit.has_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter) && !i.modifiers.shift);
    ui.horizontal(|ui| {
        let can_send = !chat.answering && !chat.draft.trim().is_empty();
        if (ui.add_enabled(can_send, egui::Button::new("Send")).clicked() || (enter && can_send)) && can_send {
            actions.asks.push(std::mem::take(&mut chat.draft).trim().to_string());
        }
        if chat.answering && ui.button("Cancel").clicked() {
            actions.cancel = true;
        }
    });
}

fn describe_hover(h: &HoveredPoint, m: &inspect::Measuring) -> String {
    let p = h.point.position;
    let mut s = format!(
        "({:.3}, {:.3}, {:.3})  depth {}\nconfidence {:.3} ({:.0}th percentile)\nframe {} (geometry {}), pixel ({}, {})",
        p[0],
        p[1],
        p[2],
        m.describe(h.point.depth),
        h.point.confidence,
        h.percentile,
        h.source_frame,
        h.point.frame,
        h.point.pixel[0],
        h.point.pixel[1]
    );
    match h.coverage {
        Some((Some(first), n)) => {
            s += &format!("\nfirst covered by pick {first}; {n} picks see its voxel")
        }
        Some((None, _)) => s += "\nno pick sees its voxel",
        None => {}
    }
    s
}

/// Inspect and measure: what clicks do, the video overlay, what is hovered, pins and lengths, the
/// scale, the region.
pub fn inspect_section(
    ui: &mut egui::Ui,
    inspection: &mut Inspection,
    scene: &LoadedScene,
    scale_text: &mut String,
) {
    {
        ui.horizontal(|ui| {
            ui.label("click:");
            ui.selectable_value(&mut inspection.tool, InspectTool::Look, "look").on_hover_text("orbit; hover shows the point under the cursor");
            ui.selectable_value(&mut inspection.tool, InspectTool::Measure, "measure").on_hover_text("a click in 3D or on the video frame pins the point");
            ui.selectable_value(&mut inspection.tool, InspectTool::Region, "region").on_hover_text("drag a rectangle on the video frame, or click a point in 3D for a box around it");
        });
        egui::ComboBox::from_label("video overlay")
            .selected_text(inspection.overlay.name())
            .show_ui(ui, |ui| {
                for o in VideoOverlay::ALL {
                    ui.selectable_value(&mut inspection.overlay, o, o.name());
                }
            });
        ui.separator();
        match &inspection.hovered {
            Some(h) => ui.label(
                egui::RichText::new(describe_hover(h, &inspection.measuring))
                    .small()
                    .monospace(),
            ),
            None => ui.label(
                egui::RichText::new("hover a point in 3D or a pixel of the video frame")
                    .small()
                    .weak(),
            ),
        };
        ui.separator();
        let measurements = inspection.measuring.measurements();
        ui.label(format!("{} pins", inspection.measuring.pins.len()));
        for m in &measurements {
            ui.label(format!(
                "{} → {}: {}",
                m.from + 1,
                m.to + 1,
                inspection.measuring.describe(m.length)
            ));
        }
        if measurements.len() > 1 {
            ui.label(format!(
                "path: {}",
                inspection.measuring.describe(inspection.measuring.total())
            ));
        }
        ui.horizontal(|ui| {
            ui.label("last segment is");
            ui.add(egui::TextEdit::singleline(scale_text).desired_width(50.0));
            ui.label("m");
            if ui
                .add_enabled(!measurements.is_empty(), egui::Button::new("set scale"))
                .clicked()
            {
                let r = scale_text
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| format!("`{}` is not a length in metres", scale_text.trim()))
                    .and_then(|m| inspection.measuring.set_scale(m));
                inspection.error = r.err();
            }
        });
        ui.horizontal(|ui| {
            if ui.button("undo pin").clicked() {
                inspection.measuring.pins.pop();
            }
            if ui.button("clear pins").clicked() {
                inspection.measuring.pins.clear();
            }
            if inspection.measuring.scale.is_some() && ui.button("clear scale").clicked() {
                inspection.measuring.scale = None;
            }
        });
        if let Some(scale) = inspection.measuring.scale {
            let e = scene.index.extent;
            ui.label(format!(
                "scene: {} x {} x {} (5th-95th percentile box)",
                inspect::format_metres(e[0] * scale),
                inspect::format_metres(e[1] * scale),
                inspect::format_metres(e[2] * scale)
            ));
            ui.label(format!(
                "camera path: {}  ({scale:.4} m per unit)",
                inspect::format_metres(inspect::camera_path_length(&scene.rec) * scale)
            ));
        }
        ui.separator();
        match &inspection.region {
            Some(sel) => {
                ui.label(format!(
                    "region: {}, {} points, seen by {} of {} frames",
                    sel.region.label,
                    sel.region.points.len(),
                    sel.region.frames.len(),
                    scene.rec.frames
                ));
                if ui.button("clear region").clicked() {
                    inspection.region = None;
                }
            }
            None => {
                ui.label(
                    egui::RichText::new("no region: choose the region tool")
                        .small()
                        .weak(),
                );
            }
        }
        if inspection.tool == InspectTool::Region {
            let mut half = inspection.box_half_for(scene.index.scene_scale);
            if ui
                .add(
                    egui::Slider::new(
                        &mut half,
                        0.001 * scene.index.scene_scale..=0.5 * scene.index.scene_scale,
                    )
                    .text("box half size")
                    .logarithmic(true),
                )
                .changed()
            {
                inspection.box_half = half;
            }
        }
        if let Some(e) = &inspection.error {
            ui.colored_label(ERROR_RED, e);
        }
    }
}
