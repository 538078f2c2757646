//! Inspecting and measuring: the point under the cursor (GPU pick in 3D, the sample under the
//! cursor on the video frame), pins and lengths with a scale in metres, regions and the frames that
//! see them, overlays on the video frame. The geometry work is `pipeline::inspect`; this plugin
//! turns input and script steps into it and draws the results over the views.

use super::picking::{PickAt, PickQuery, PickResults};
use super::renderer::PointCloudRender;
use super::state::*;
use super::ui::live_texture::{LiveTexture, Pixels};
use crate::pipeline::inspect::{self, Pin};
use bevy::prelude::*;
use bevy::window::PrimaryWindow;
use bevy_egui::{EguiContexts, EguiPrimaryContextPass, egui};

/// Everything hovering reports about geometry sample (`frame`, `x`, `y`).
pub fn hovered_point(
    scene: &LoadedScene,
    sampling: &SamplingState,
    frame: usize,
    x: usize,
    y: usize,
    from: HoverFrom,
) -> Option<HoveredPoint> {
    let point = inspect::sample_point(&scene.rec, scene.point_source, frame, x, y)?;
    let source_frame = scene.source_frames.get(frame).copied().unwrap_or(frame);
    let percentile = scene.quantiles.percentile_of(point.confidence);
    let coverage = match (&sampling.voxels, &sampling.result) {
        (Some(sets), Some(result)) if sets.frame_sets.len() == scene.rec.frames => {
            let i = (frame * scene.rec.height + y) * scene.rec.width + x;
            let wp = [
                scene.rec.world_points[i * 3],
                scene.rec.world_points[i * 3 + 1],
                scene.rec.world_points[i * 3 + 2],
            ];
            sets.voxel_of(wp).map(|v| {
                let seeing: Vec<usize> = result
                    .picks_in_order
                    .iter()
                    .map(|p| p.0)
                    .filter(|&f| {
                        sets.frame_sets
                            .get(f)
                            .is_some_and(|s| s.binary_search(&v).is_ok())
                    })
                    .collect();
                (
                    seeing
                        .first()
                        .map(|&f| scene.source_frames.get(f).copied().unwrap_or(f)),
                    seeing.len(),
                )
            })
        }
        _ => None,
    };
    Some(HoveredPoint {
        point,
        source_frame,
        from,
        percentile,
        coverage,
    })
}

/// Pins sample (`frame`, `x`, `y`) of the geometry on screen.
pub fn pin_sample(
    inspection: &mut Inspection,
    geometry: &Geometry,
    frame: usize,
    x: usize,
    y: usize,
) -> Result<(), String> {
    let scene = geometry
        .scene
        .as_ref()
        .ok_or("no geometry is shown: open a scene (or reconstruct one) first")?;
    if frame >= scene.rec.frames || x >= scene.rec.width || y >= scene.rec.height {
        return Err(format!(
            "pixel ({x}, {y}) of frame {frame} is outside the geometry ({} frames of {}x{})",
            scene.rec.frames, scene.rec.width, scene.rec.height
        ));
    }
    let p = inspect::sample_point(&scene.rec, scene.point_source, frame, x, y)
        .ok_or_else(|| format!("pixel ({x}, {y}) of frame {frame} has no usable depth"))?;
    inspection.measuring.pins.push(Pin {
        position: p.position,
        frame: Some(frame),
        pixel: Some([x, y]),
    });
    inspection.error = None;
    Ok(())
}

/// Selects the samples of `frame` in `rect` (pixels, inclusive) as the region.
pub fn select_rect(
    inspection: &mut Inspection,
    geometry: &Geometry,
    frame: usize,
    rect: [i64; 4],
) -> Result<(), String> {
    let scene = geometry
        .scene
        .as_ref()
        .ok_or("no geometry is shown: open a scene (or reconstruct one) first")?;
    let region = inspect::region_from_rect(&scene.rec, scene.point_source, frame, rect)?;
    set_region(inspection, scene, region);
    Ok(())
}

/// Selects the shown points in a cube of half side `half` around `centre` (world).
pub fn select_box(
    inspection: &mut Inspection,
    geometry: &Geometry,
    settings: &ViewSettings,
    centre: [f32; 3],
    half: f32,
) -> Result<(), String> {
    let scene = geometry.scene.as_ref().ok_or("no geometry is shown")?;
    let threshold = scene.quantiles.threshold(settings.conf_percentile as f64);
    select_box_with(inspection, geometry, centre.map(|c| c - half), centre.map(|c| c + half), threshold)
}

/// Selects the points of the cloud shown at confidence `threshold` inside a world box.
pub fn select_box_with(inspection: &mut Inspection, geometry: &Geometry, min: [f32; 3], max: [f32; 3], threshold: f32) -> Result<(), String> {
    let scene = geometry.scene.as_ref().ok_or("no geometry is shown")?;
    let region = inspect::region_in_box(&scene.rec, shown_points(scene, threshold), min, max, threshold)?;
    set_region(inspection, scene, region);
    Ok(())
}

/// The cloud's points at or above a confidence threshold, in world coordinates: what is drawn (at
/// most the point budget, so selecting in 3D costs the same whatever the geometry's size).
fn shown_points(scene: &LoadedScene, threshold: f32) -> impl Iterator<Item = [f32; 3]> + '_ {
    (0..scene.index.frame_conf.len()).flat_map(move |f| {
        let start = scene.cloud.frame_starts[f] as usize;
        let kept = scene.index.frame_conf[f].partition_point(|&c| c >= threshold);
        // The view's axes flip y and z; flipping again gives the world's.
        scene.cloud.points[start..start + kept].iter().map(|p| super::cloud::to_view(p.position))
    })
}

fn set_region(inspection: &mut Inspection, scene: &LoadedScene, region: inspect::Region) {
    let source_frames = region
        .frames
        .iter()
        .map(|&f| scene.source_frames.get(f).copied().unwrap_or(f))
        .collect();
    inspection.region = Some(RegionSelection {
        region,
        source_frames,
    });
    inspection.error = None;
}

/// What the chat says about a question's frames and the selected region: "the region (...) is
/// visible in 3 of the 16 frames used".
pub fn region_note(
    inspection: &Inspection,
    geometry: &Geometry,
    frames: &[usize],
) -> Option<String> {
    let sel = inspection.region.as_ref()?;
    let scene = geometry.scene.as_ref()?;
    let mut seen = 0;
    let mut unknown = 0;
    for f in frames {
        match scene.source_frames.iter().position(|s| s == f) {
            Some(g) => seen += usize::from(sel.region.frames.contains(&g)),
            None => unknown += 1,
        }
    }
    let mut note = format!(
        "the region ({}) is visible in {seen} of the {} frames used",
        sel.region.label,
        frames.len()
    );
    if unknown > 0 {
        note += &format!(" ({unknown} of them have no geometry to check)");
    }
    Some(note)
}

/// What the chat shows next to a numeric answer: the last measured length and the relative
/// accuracy of the answer against it (VSI-Bench's MRA). Centimetres when the question asks in them.
pub fn measured_note(inspection: &Inspection, question: &str, answer: &str) -> Option<String> {
    let last = inspection.measuring.measurements().last().copied()?;
    let pred = crate::pipeline::eval::scoring::normalize_number(
        &crate::pipeline::eval::scoring::clean_text(answer),
    )?;
    let (value, unit) = match last.metres {
        Some(m) if question.to_lowercase().contains("centimet") || answer.contains("cm") => {
            (m as f64 * 100.0, "cm")
        }
        Some(m) => (m as f64, "m"),
        None => (last.length as f64, "scene units (no scale set)"),
    };
    let mra = crate::pipeline::eval::scoring::mean_relative_accuracy(pred, value);
    Some(format!(
        "measured {value:.3} {unit}; MRA of the answer against it {mra:.2}"
    ))
}

/// Clears pins, region and hover when another geometry is shown (they belong to the old one).
fn follow_geometry(
    geometry: Res<Geometry>,
    mut inspection: ResMut<Inspection>,
    mut last: Local<usize>,
) {
    let key = geometry
        .scene
        .as_ref()
        .map_or(0, |s| std::sync::Arc::as_ptr(&s.rec) as usize);
    if key != *last {
        *last = key;
        let keep = (inspection.tool, inspection.overlay, inspection.box_half);
        *inspection = Inspection {
            tool: keep.0,
            overlay: keep.1,
            box_half: keep.2,
            ..default()
        };
    }
}

/// Whether the cursor acts on the 3D view (inside it, not over a panel or window).
fn cursor_in_view(cursor: Vec2, camera: &Camera, ctx: Option<&mut egui::Context>) -> bool {
    camera
        .logical_viewport_rect()
        .is_none_or(|r| r.contains(cursor))
        && ctx.is_none_or(|c| !c.is_pointer_over_egui())
}

/// Asks the GPU for the point under the cursor whenever the cursor, camera or cloud changes.
#[allow(clippy::too_many_arguments)]
fn ask_pick(
    windows: Query<&Window, With<PrimaryWindow>>,
    cameras: Query<(&Camera, &GlobalTransform), With<Camera3d>>,
    mut moves: MessageReader<CursorMoved>,
    mut inspection: ResMut<Inspection>,
    mut query: ResMut<PickQuery>,
    settings: Res<ViewSettings>,
    render: Res<PointCloudRender>,
    mut contexts: EguiContexts,
) {
    if moves.read().count() > 0 {
        inspection.script_hover = None;
    }
    let (Ok(window), Ok((camera, transform))) = (windows.single(), cameras.single()) else {
        return;
    };
    let cursor = match inspection.script_hover {
        Some(p) => Some(p),
        None => window
            .cursor_position()
            .filter(|&c| cursor_in_view(c, camera, contexts.ctx_mut().ok())),
    };
    let at = cursor
        .zip(camera.physical_viewport_rect())
        .filter(|_| render.data.is_some())
        .map(|(c, rect)| {
            let physical = c * window.scale_factor();
            PickAt {
                cursor: (physical - rect.min.as_vec2())
                    .max(Vec2::ZERO)
                    .as_uvec2()
                    .min(rect.size().saturating_sub(UVec2::ONE)),
                viewport: rect.size(),
                clip_from_world: camera.clip_from_view() * transform.to_matrix().inverse(),
                point_size: settings.point_size,
            }
        });
    query.ask(at);
}

/// Takes the GPU's answers: the hovered point in 3D (unless the video frame is hovered).
fn receive_picks(
    mut results: ResMut<PickResults>,
    query: Res<PickQuery>,
    render: Res<PointCloudRender>,
    geometry: Res<Geometry>,
    sampling: Res<SamplingState>,
    mut inspection: ResMut<Inspection>,
) {
    while let Ok(r) = results.rx.try_recv() {
        results.last = Some(r);
        results.received += 1;
        // While the cursor moves every frame, the newest answer is a frame or two old: still
        // shown (it is the point under where the cursor just was), unless the cursor left the view.
        if query.at.is_none()
            || inspection
                .hovered
                .is_some_and(|h| h.from == HoverFrom::Video)
        {
            if query.at.is_none()
                && inspection
                    .hovered
                    .is_some_and(|h| h.from == HoverFrom::View3d)
            {
                inspection.hovered = None;
            }
            continue;
        }
        let (Some(scene), Some(data)) = (&geometry.scene, &render.data) else {
            inspection.hovered = None;
            continue;
        };
        let sample = r
            .instance
            .filter(|_| r.version == render.version)
            .and_then(|i| data.samples.get(i as usize).copied());
        inspection.hovered = sample.and_then(|s| {
            let s = s as usize;
            let (n, w) = (scene.rec.width * scene.rec.height, scene.rec.width);
            if n == 0 {
                return None;
            }
            hovered_point(
                scene,
                &sampling,
                s / n,
                s % n % w,
                s % n / w,
                HoverFrom::View3d,
            )
        });
    }
}

/// Clicks in the 3D view: pin the hovered point (Measure) or select a box around it (Region).
fn click_in_view(
    buttons: Res<ButtonInput<MouseButton>>,
    windows: Query<&Window, With<PrimaryWindow>>,
    cameras: Query<&Camera, With<Camera3d>>,
    mut inspection: ResMut<Inspection>,
    geometry: Res<Geometry>,
    settings: Res<ViewSettings>,
    mut contexts: EguiContexts,
    mut press_at: Local<Option<Vec2>>,
) {
    let (Ok(window), Ok(camera)) = (windows.single(), cameras.single()) else {
        return;
    };
    let Some(cursor) = window.cursor_position() else {
        return;
    };
    if buttons.just_pressed(MouseButton::Left) {
        *press_at = cursor_in_view(cursor, camera, contexts.ctx_mut().ok()).then_some(cursor);
    }
    if !buttons.just_released(MouseButton::Left) {
        return;
    }
    // A click: press and release in place (a drag orbits).
    let Some(start) = press_at.take().filter(|s| s.distance(cursor) < 4.0) else {
        return;
    };
    let _ = start;
    let Some(h) = inspection.hovered.filter(|h| h.from == HoverFrom::View3d) else {
        return;
    };
    match inspection.tool {
        InspectTool::Look => {}
        InspectTool::Measure => inspection.measuring.pins.push(Pin {
            position: h.point.position,
            frame: Some(h.point.frame),
            pixel: Some(h.point.pixel),
        }),
        InspectTool::Region => {
            let Some(scene) = geometry.scene.clone() else {
                return;
            };
            let half = inspection.box_half_for(scene.index.scene_scale);
            if let Err(e) = select_box(
                &mut inspection,
                &geometry,
                &settings,
                h.point.position,
                half,
            ) {
                inspection.error = Some(e);
            }
        }
    }
}

/// The geometry frame showing source frame `frame`, if it was reconstructed.
fn geometry_frame(scene: &LoadedScene, frame: usize) -> Option<usize> {
    scene.source_frames.iter().position(|&s| s == frame)
}

/// The video frame: hover reports the sample under the cursor, a click pins it (Measure), a drag
/// selects a rectangle (Region); overlays and the rubber band are drawn over it.
#[allow(clippy::too_many_arguments)]
fn video_panel(
    mut contexts: EguiContexts,
    panel: Res<VideoPanel>,
    geometry: Res<Geometry>,
    sampling: Res<SamplingState>,
    mut inspection: ResMut<Inspection>,
    (mut overlay_key, mut overlay_texture, mut images): (Local<Option<(OverlayKey, (f32, f32))>>, Local<Option<LiveTexture>>, ResMut<Assets<Image>>),
    mut drag_from: Local<Option<egui::Pos2>>,
) -> Result {
    let ctx = contexts.ctx_mut()?.clone();
    let (Some((min, max)), Some(scene)) = (panel.rect, geometry.scene.clone()) else {
        if inspection
            .hovered
            .is_some_and(|h| h.from == HoverFrom::Video)
        {
            inspection.hovered = None;
        }
        return Ok(());
    };
    let rect = egui::Rect::from_min_max(egui::pos2(min.x, min.y), egui::pos2(max.x, max.y));
    // Only frames the geometry has (and its cameras): the frame's own depth, never a neighbour's.
    let frame = geometry_frame(&scene, panel.frame).filter(|&g| g < scene.rec.frames && g < scene.rec.cameras.len());
    let painter = ctx
        .layer_painter(egui::LayerId::new(
            egui::Order::Middle,
            egui::Id::new("video inspect"),
        ))
        .with_clip_rect(rect);
    // Overlay texture, rebuilt when the frame, mode, geometry or picks change.
    if let (Some(g), mode) = (frame, inspection.overlay)
        && mode != VideoOverlay::None
    {
        let key = OverlayKey {
            rec: std::sync::Arc::as_ptr(&scene.rec) as usize,
            frame: g,
            mode,
            picks: sampling
                .result
                .as_ref()
                .map(|r| r.picks_in_order.clone())
                .unwrap_or_default(),
        };
        if overlay_key.as_ref().is_none_or(|(k, _)| *k != key) {
            let (image, range) = overlay_image(&scene, &sampling, g, mode);
            LiveTexture::show(&mut overlay_texture, Pixels::from_color_image(&image), true, &mut contexts, &mut images);
            *overlay_key = Some((key, range));
        }
        if let (Some((_, range)), Some(tex)) = (overlay_key.as_ref(), overlay_texture.as_ref()) {
            painter.image(
                tex.id(),
                rect,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                egui::Color32::WHITE,
            );
            overlay_legend(&ctx, rect, mode, *range, &inspection);
        }
    }
    let pointer = ctx
        .input(|i| i.pointer.hover_pos())
        .filter(|p| rect.contains(*p));
    let to_pixel = |p: egui::Pos2| -> [usize; 2] {
        let x = ((p.x - rect.min.x) / rect.width() * scene.rec.width as f32)
            .floor()
            .clamp(0.0, scene.rec.width as f32 - 1.0);
        let y = ((p.y - rect.min.y) / rect.height() * scene.rec.height as f32)
            .floor()
            .clamp(0.0, scene.rec.height as f32 - 1.0);
        [x as usize, y as usize]
    };
    let to_screen = |px: [f32; 2]| {
        egui::pos2(
            rect.min.x + (px[0] + 0.5) / scene.rec.width as f32 * rect.width(),
            rect.min.y + (px[1] + 0.5) / scene.rec.height as f32 * rect.height(),
        )
    };
    match (pointer, frame) {
        (Some(p), Some(g)) => {
            let [x, y] = to_pixel(p);
            inspection.hovered = hovered_point(&scene, &sampling, g, x, y, HoverFrom::Video);
        }
        _ => {
            if inspection
                .hovered
                .is_some_and(|h| h.from == HoverFrom::Video)
            {
                inspection.hovered = None;
            }
        }
    }
    if pointer.is_some() && frame.is_none() {
        let nearest = scene
            .source_frames
            .iter()
            .min_by_key(|&&s| s.abs_diff(panel.frame))
            .copied();
        painter.text(
            rect.center_top() + egui::vec2(0.0, 14.0),
            egui::Align2::CENTER_CENTER,
            format!(
                "no geometry for frame {} (nearest: {})",
                panel.frame,
                nearest.map_or("none".into(), |n| n.to_string())
            ),
            egui::FontId::proportional(12.0),
            egui::Color32::YELLOW,
        );
    }
    // Clicks and drags on the frame, from the button events themselves: on a slow frame a whole
    // press-drag-release arrives at once, and each event has its own position.
    let buttons: Vec<(egui::Pos2, bool)> = ctx.input(|i| {
        i.events
            .iter()
            .filter_map(|e| match e {
                egui::Event::PointerButton {
                    pos,
                    button: egui::PointerButton::Primary,
                    pressed,
                    ..
                } => Some((*pos, *pressed)),
                _ => None,
            })
            .collect()
    });
    for (pos, pressed) in buttons {
        if pressed {
            *drag_from = rect.contains(pos).then_some(pos);
            continue;
        }
        let (Some(start), Some(g)) = (drag_from.take(), frame) else {
            continue;
        };
        let (a, b) = (to_pixel(start), to_pixel(pos.clamp(rect.min, rect.max)));
        let result = match inspection.tool {
            InspectTool::Measure if start.distance(pos) < 4.0 => {
                pin_sample(&mut inspection, &geometry, g, a[0], a[1])
            }
            InspectTool::Region if start.distance(pos) >= 4.0 => select_rect(
                &mut inspection,
                &geometry,
                g,
                [a[0] as i64, a[1] as i64, b[0] as i64, b[1] as i64],
            ),
            _ => Ok(()),
        };
        if let Err(e) = result {
            inspection.error = Some(e);
        }
    }
    if let (Some(start), Some(now), true) = (
        *drag_from,
        ctx.input(|i| i.pointer.hover_pos()),
        inspection.tool == InspectTool::Region,
    ) {
        painter.rect_stroke(
            egui::Rect::from_two_pos(start, now),
            0.0,
            egui::Stroke::new(1.5, REGION_COLOUR),
            egui::StrokeKind::Middle,
        );
    }
    // Pins of this frame, the region's points seen by it, and the hovered sample.
    if let Some(g) = frame {
        let camera = &scene.rec.cameras[g];
        for (i, pin) in inspection.measuring.pins.iter().enumerate() {
            if let Some((x, y)) = inspect::seen_at(&scene.rec, g, pin.position) {
                let at = to_screen([x as f32, y as f32]);
                painter.circle(
                    at,
                    4.0,
                    PIN_COLOUR,
                    egui::Stroke::new(1.0, egui::Color32::BLACK),
                );
                painter.text(
                    at + egui::vec2(6.0, -6.0),
                    egui::Align2::LEFT_BOTTOM,
                    format!("{}", i + 1),
                    egui::FontId::proportional(11.0),
                    PIN_COLOUR,
                );
            }
        }
        if let Some(sel) = inspection
            .region
            .as_ref()
            .filter(|s| s.region.frames.contains(&g))
        {
            let step = (sel.region.points.len() / 2000).max(1);
            for p in sel.region.points.iter().step_by(step) {
                if let Some((x, y)) = inspect::seen_at(&scene.rec, g, *p) {
                    painter.circle_filled(to_screen([x as f32, y as f32]), 1.2, REGION_COLOUR);
                }
            }
        }
        if let Some(h) = inspection.hovered
            && let Some((u, v, _)) = inspect::project(camera, h.point.position)
        {
            let at = to_screen([u, v]);
            painter.circle_stroke(at, 5.0, egui::Stroke::new(1.5, HOVER_COLOUR));
        }
    }
    Ok(())
}

pub const PIN_COLOUR: egui::Color32 = egui::Color32::from_rgb(255, 60, 200);
/// The region's colour: the timeline's.
const REGION_COLOUR: egui::Color32 = super::ui::REGION_GREEN;
pub const HOVER_COLOUR: egui::Color32 = egui::Color32::from_rgb(255, 255, 255);

#[derive(Clone, PartialEq)]
struct OverlayKey {
    rec: usize,
    frame: usize,
    mode: VideoOverlay,
    picks: Vec<(usize, usize)>,
}

/// The overlay of geometry frame `frame` (RGBA at the geometry's size) and the value range its
/// colours span.
fn overlay_image(
    scene: &LoadedScene,
    sampling: &SamplingState,
    frame: usize,
    mode: VideoOverlay,
) -> (egui::ColorImage, (f32, f32)) {
    let rec = &scene.rec;
    let (w, h) = (rec.width, rec.height);
    let n = w * h;
    let depth = &rec.depth[frame * n..(frame + 1) * n];
    let conf = &rec.depth_conf[frame * n..(frame + 1) * n];
    let turbo = |t: f32, a: u8| {
        let c = super::ui::colorbar::turbo(t);
        egui::Color32::from_rgba_unmultiplied(
            (c[0] * 255.0) as u8,
            (c[1] * 255.0) as u8,
            (c[2] * 255.0) as u8,
            a,
        )
    };
    let mut pixels = vec![egui::Color32::TRANSPARENT; n];
    let mut range = (0.0, 1.0);
    match mode {
        VideoOverlay::None => {}
        VideoOverlay::Depth => {
            let mut v: Vec<f32> = depth
                .iter()
                .copied()
                .filter(|d| *d > 0.0 && d.is_finite())
                .collect();
            v.sort_by(f32::total_cmp);
            if let (Some(&lo), Some(&hi)) = (
                v.get(v.len() / 50),
                v.get(v.len().saturating_sub(1) * 49 / 50),
            ) {
                range = (lo, hi.max(lo + 1e-6));
                for (p, d) in pixels.iter_mut().zip(depth) {
                    if *d > 0.0 && d.is_finite() {
                        *p = turbo(1.0 - (d - lo) / (range.1 - lo), 200);
                    }
                }
            }
        }
        VideoOverlay::Confidence => {
            range = (0.0, 100.0);
            for (p, c) in pixels.iter_mut().zip(conf) {
                *p = turbo(scene.quantiles.percentile_of(*c) / 100.0, 200);
            }
        }
        VideoOverlay::Covered => {
            if let (Some(sets), Some(result)) = (&sampling.voxels, &sampling.result) {
                let first = sets.first_cover(&result.picks_in_order);
                for (i, p) in pixels.iter_mut().enumerate() {
                    let j = frame * n + i;
                    let wp = [
                        rec.world_points[j * 3],
                        rec.world_points[j * 3 + 1],
                        rec.world_points[j * 3 + 2],
                    ];
                    *p = match sets.voxel_of(wp) {
                        Some(v) if first[v as usize] != u16::MAX => {
                            egui::Color32::from_rgba_unmultiplied(255, 140, 30, 150)
                        }
                        Some(_) => egui::Color32::from_rgba_unmultiplied(60, 110, 255, 170),
                        None => egui::Color32::from_rgba_unmultiplied(0, 0, 0, 120),
                    };
                }
            }
        }
    }
    (
        egui::ColorImage {
            size: [w, h],
            source_size: egui::vec2(w as f32, h as f32),
            pixels,
        },
        range,
    )
}

fn overlay_legend(
    ctx: &egui::Context,
    rect: egui::Rect,
    mode: VideoOverlay,
    range: (f32, f32),
    inspection: &Inspection,
) {
    egui::Area::new("video overlay legend".into())
        .fixed_pos(rect.left_bottom() + egui::vec2(4.0, -40.0))
        .order(egui::Order::Foreground)
        .show(ctx, |ui| {
            egui::Frame::new()
                .fill(egui::Color32::from_black_alpha(200))
                .inner_margin(4.0)
                .corner_radius(3.0)
                .show(ui, |ui| {
                    let (title, low, high) = match mode {
                        VideoOverlay::Depth => {
                            let unit = |d: f32| inspection.measuring.describe(d);
                            ("depth".to_string(), unit(range.0), unit(range.1))
                        }
                        VideoOverlay::Confidence => {
                            ("confidence percentile".into(), "0".into(), "100".into())
                        }
                        VideoOverlay::Covered => {
                            ui.horizontal(|ui| {
                                ui.colored_label(
                                    egui::Color32::from_rgb(255, 140, 30),
                                    "■ covered by the picks",
                                );
                                ui.colored_label(
                                    egui::Color32::from_rgb(60, 110, 255),
                                    "■ not covered",
                                );
                            });
                            return;
                        }
                        VideoOverlay::None => return,
                    };
                    ui.horizontal(|ui| {
                        ui.label(egui::RichText::new(low).small());
                        let (bar, _) =
                            ui.allocate_exact_size(egui::vec2(120.0, 10.0), egui::Sense::hover());
                        for i in 0..48 {
                            let t = i as f32 / 47.0;
                            let c = super::ui::colorbar::turbo(if mode == VideoOverlay::Depth {
                                1.0 - t
                            } else {
                                t
                            });
                            let x0 = bar.left() + bar.width() * i as f32 / 48.0;
                            ui.painter().rect_filled(
                                egui::Rect::from_min_max(
                                    egui::pos2(x0, bar.top()),
                                    egui::pos2(x0 + bar.width() / 48.0 + 0.5, bar.bottom()),
                                ),
                                0.0,
                                egui::Color32::from_rgb(
                                    (c[0] * 255.0) as u8,
                                    (c[1] * 255.0) as u8,
                                    (c[2] * 255.0) as u8,
                                ),
                            );
                        }
                        ui.label(egui::RichText::new(high).small());
                        ui.label(egui::RichText::new(title).small());
                    });
                });
        });
}

/// Pins, segments with their lengths, the hovered point (with its camera's ray when it comes from
/// the video) and the region, drawn over the 3D view.
fn draw_in_view(
    mut contexts: EguiContexts,
    cameras: Query<(&Camera, &GlobalTransform), With<Camera3d>>,
    inspection: Res<Inspection>,
    geometry: Res<Geometry>,
) -> Result {
    let ctx = contexts.ctx_mut()?.clone();
    let Ok((camera, transform)) = cameras.single() else {
        return Ok(());
    };
    let Some(view) = camera.logical_viewport_rect() else {
        return Ok(());
    };
    let clip = egui::Rect::from_min_max(
        egui::pos2(view.min.x, view.min.y),
        egui::pos2(view.max.x, view.max.y),
    );
    let painter = ctx
        .layer_painter(egui::LayerId::new(
            egui::Order::Background,
            egui::Id::new("3d inspect"),
        ))
        .with_clip_rect(clip);
    let project = |p: [f32; 3]| {
        camera
            .world_to_viewport(transform, Vec3::from(super::cloud::to_view(p)))
            .ok()
            .map(|v| egui::pos2(v.x, v.y))
    };
    let font = egui::FontId::proportional(13.0);
    if let Some(sel) = &inspection.region {
        let step = (sel.region.points.len() / 3000).max(1);
        for p in sel
            .region
            .points
            .iter()
            .step_by(step)
            .filter_map(|p| project(*p))
        {
            painter.circle_filled(p, 1.5, REGION_COLOUR);
        }
    }
    let pins: Vec<Option<egui::Pos2>> = inspection
        .measuring
        .pins
        .iter()
        .map(|p| project(p.position))
        .collect();
    for (m, seg) in inspection
        .measuring
        .measurements()
        .iter()
        .zip(pins.windows(2))
    {
        if let (Some(a), Some(b)) = (seg[0], seg[1]) {
            painter.line_segment([a, b], egui::Stroke::new(2.0, PIN_COLOUR));
            let label = inspection.measuring.describe(m.length);
            let mid = a + (b - a) * 0.5;
            let galley = painter.layout_no_wrap(label, font.clone(), egui::Color32::WHITE);
            let r = egui::Align2::CENTER_CENTER
                .anchor_size(mid, galley.size())
                .expand(3.0);
            painter.rect_filled(r, 3.0, egui::Color32::from_black_alpha(190));
            painter.galley(r.min + egui::vec2(3.0, 3.0), galley, egui::Color32::WHITE);
        }
    }
    for (i, p) in pins.iter().enumerate() {
        if let Some(p) = p {
            painter.circle(
                *p,
                5.0,
                PIN_COLOUR,
                egui::Stroke::new(1.0, egui::Color32::BLACK),
            );
            painter.text(
                *p + egui::vec2(7.0, -7.0),
                egui::Align2::LEFT_BOTTOM,
                format!("{}", i + 1),
                font.clone(),
                PIN_COLOUR,
            );
        }
    }
    if let Some(h) = inspection.hovered {
        if let Some(p) = project(h.point.position) {
            if h.from == HoverFrom::Video
                && let Some(c) = geometry
                    .scene
                    .as_ref()
                    .and_then(|s| s.rec.cameras.get(h.point.frame))
                    .and_then(|c| project(c.center()))
            {
                painter.line_segment(
                    [c, p],
                    egui::Stroke::new(
                        1.5,
                        egui::Color32::from_rgba_unmultiplied(255, 255, 255, 180),
                    ),
                );
            }
            painter.circle_stroke(p, 7.0, egui::Stroke::new(2.0, HOVER_COLOUR));
            painter.circle_stroke(p, 8.5, egui::Stroke::new(1.0, egui::Color32::BLACK));
            // A short label beside the point: what a researcher checks first.
            let label = format!(
                "depth {} · conf {:.2} ({:.0}%) · frame {} ({}, {})",
                inspection.measuring.describe(h.point.depth),
                h.point.confidence,
                h.percentile,
                h.source_frame,
                h.point.pixel[0],
                h.point.pixel[1]
            );
            let galley = painter.layout_no_wrap(label, egui::FontId::proportional(12.0), egui::Color32::WHITE);
            let r = egui::Rect::from_min_size(p + egui::vec2(12.0, 8.0), galley.size()).expand(3.0);
            // Kept inside the view.
            let r = r.translate(egui::vec2((clip.right() - r.right()).min(0.0), (clip.bottom() - r.bottom()).min(0.0)));
            painter.rect_filled(r, 3.0, egui::Color32::from_black_alpha(190));
            painter.galley(r.min + egui::vec2(3.0, 3.0), galley, egui::Color32::WHITE);
        }
    }
    Ok(())
}

pub struct InspectPlugin;

impl Plugin for InspectPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(
            Update,
            (follow_geometry, receive_picks, click_in_view)
                .chain()
                .after(super::scene::SceneSystems),
        )
        .add_systems(
            PostUpdate,
            ask_pick
                .after(bevy::camera::CameraUpdateSystems)
                .after(bevy::transform::TransformSystems::Propagate),
        )
        .add_systems(
            EguiPrimaryContextPass,
            (video_panel, draw_in_view)
                .chain()
                .after(super::ui::UiSystems),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::points::PointSource;
    use std::sync::Arc;

    fn demo_scene(frames: usize) -> Geometry {
        let rec = crate::pipeline::demo::build_demo(frames);
        let (cloud, index, quantiles) =
            super::super::cloud::build_cloud(&rec, PointSource::DepthAndCamera, 50_000);
        let scene = LoadedScene {
            label: "demo".into(),
            source_frames: (0..frames).map(|f| f * 2).collect(),
            rec: Arc::new(rec),
            source_id: crate::pipeline::source::SourceId("demo".into()),
            cloud: Arc::new(cloud),
            index,
            quantiles: Arc::new(quantiles),
            point_source: PointSource::DepthAndCamera,
        };
        Geometry {
            scene: Some(Arc::new(scene)),
        }
    }

    /// The chat's note counts the frames used that see the region (source frames through the
    /// geometry's), and says which have no geometry to check.
    #[test]
    fn the_region_note_counts_the_frames_that_see_it() {
        let geometry = demo_scene(12);
        let mut inspection = Inspection::default();
        assert_eq!(region_note(&inspection, &geometry, &[0, 2]), None);
        select_rect(&mut inspection, &geometry, 5, [150, 110, 160, 120]).unwrap();
        let sel = inspection.region.clone().unwrap();
        assert_eq!(
            sel.source_frames,
            sel.region.frames.iter().map(|f| f * 2).collect::<Vec<_>>()
        );
        let used: Vec<usize> = (0..12).map(|f| f * 2).collect();
        let note = region_note(&inspection, &geometry, &used).unwrap();
        assert!(
            note.ends_with(&format!(
                "is visible in {} of the 12 frames used",
                sel.region.frames.len()
            )),
            "{note}"
        );
        // Odd source frames have no geometry.
        let note = region_note(&inspection, &geometry, &[10, 3]).unwrap();
        assert!(
            note.contains(&format!(
                "visible in {} of the 2 frames used (1 of them have no geometry to check)",
                usize::from(sel.region.frames.contains(&5))
            )),
            "{note}"
        );
        assert!(
            pin_sample(&mut inspection, &geometry, 12, 0, 0)
                .unwrap_err()
                .contains("outside the geometry")
        );
        assert!(
            pin_sample(&mut inspection, &Geometry::default(), 0, 0, 0)
                .unwrap_err()
                .contains("no geometry")
        );
    }

    /// A numeric answer is compared with the last measured segment: metres once scaled,
    /// centimetres when the question asks in them, VSI-Bench's MRA between them.
    #[test]
    fn a_numeric_answer_is_compared_with_the_measurement() {
        let geometry = demo_scene(4);
        let mut inspection = Inspection::default();
        assert_eq!(
            measured_note(&inspection, "How long is the table?", "2"),
            None
        );
        pin_sample(&mut inspection, &geometry, 1, 100, 100).unwrap();
        pin_sample(&mut inspection, &geometry, 1, 200, 120).unwrap();
        let length = inspection.measuring.measurements()[0].length;
        let note = measured_note(&inspection, "How long is the table?", "1").unwrap();
        assert!(note.contains("scene units (no scale set)"), "{note}");
        inspection.measuring.set_scale(2.0).unwrap();
        assert!((inspection.measuring.scale.unwrap() * length - 2.0).abs() < 1e-5);
        assert_eq!(
            measured_note(&inspection, "How long is the table (in meters)?", "2.0").unwrap(),
            "measured 2.000 m; MRA of the answer against it 1.00"
        );
        // 1.5 m against 2 m: relative error 0.25, below 6 of the 10 thresholds.
        assert_eq!(
            measured_note(&inspection, "How long is the table?", "1.5").unwrap(),
            "measured 2.000 m; MRA of the answer against it 0.50"
        );
        assert_eq!(
            measured_note(&inspection, "What is the length in centimeters?", "200").unwrap(),
            "measured 200.000 cm; MRA of the answer against it 1.00"
        );
        assert_eq!(
            measured_note(&inspection, "How long is the table?", "no idea"),
            None
        );
    }
}
