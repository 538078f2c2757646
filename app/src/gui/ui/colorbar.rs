//! The colour bar of the point colour modes: the same maps the shader applies
//! (`shaders/points.wgsl`), with what their ends mean.

use super::super::state::{ColorMode, LoadedScene};
use bevy_egui::egui;

/// Turbo (Google's polynomial approximation, as the shader has it).
pub fn turbo(x: f32) -> [f32; 3] {
    let x = x.clamp(0.0, 1.0);
    let v = [1.0, x, x * x, x * x * x];
    let v2 = [v[2] * v[2], v[3] * v[2]];
    let dot4 = |c: [f32; 4]| v[0] * c[0] + v[1] * c[1] + v[2] * c[2] + v[3] * c[3];
    let r = dot4([0.13572138, 4.61539260, -42.66032258, 132.13108234]) + v2[0] * -152.94239396 + v2[1] * 59.28637943;
    let g = dot4([0.09140261, 2.19418839, 4.84296658, -14.18503333]) + v2[0] * 4.27729857 + v2[1] * 2.82956604;
    let b = dot4([0.10667330, 12.64194608, -60.58204836, 110.36276771]) + v2[0] * -89.90310912 + v2[1] * 27.34824973;
    [r.clamp(0.0, 1.0), g.clamp(0.0, 1.0), b.clamp(0.0, 1.0)]
}

/// The frame-index hue wheel (as the shader's `hue`).
pub fn hue(h: f32) -> [f32; 3] {
    let c = |k: f32| (((h + k / 6.0).fract() * 6.0 - 3.0).abs() - 1.0).clamp(0.0, 1.0) * 0.85 + 0.1;
    [c(5.0), c(3.0), c(1.0)]
}

fn color(c: [f32; 3]) -> egui::Color32 {
    egui::Color32::from_rgb((c[0] * 255.0) as u8, (c[1] * 255.0) as u8, (c[2] * 255.0) as u8)
}

/// (title, map from 0..1 to a colour, label at the low end, label at the high end) of a mode.
fn legend(mode: ColorMode, scene: &LoadedScene) -> Option<(String, Box<dyn Fn(f32) -> [f32; 3]>, String, String)> {
    match mode {
        ColorMode::Confidence => Some((
            "confidence (percentile of the shown points)".into(),
            Box::new(turbo),
            format!("low ({:.3})", scene.quantiles.threshold(0.1)),
            format!("high ({:.3})", scene.quantiles.threshold(100.0)),
        )),
        ColorMode::Depth => Some((
            "distance from the frame's camera (scene units)".into(),
            Box::new(|t| turbo(1.0 - t)),
            format!("{:.2}", scene.index.depth_range.0),
            format!("{:.2}", scene.index.depth_range.1),
        )),
        ColorMode::FrameIndex => {
            let first = scene.source_frames.first().copied().unwrap_or(0);
            let last = scene.source_frames.last().copied().unwrap_or(0);
            Some(("frame".into(), Box::new(|t| hue(t * 0.8)), format!("{first}"), format!("{last}")))
        }
        ColorMode::Image | ColorMode::FirstCoveringPick => None,
    }
}

/// Draws the bar at the bottom-left of the 3D view.
pub fn show(ctx: &egui::Context, view: egui::Rect, mode: ColorMode, scene: &LoadedScene) {
    let Some((title, map, low, high)) = legend(mode, scene) else { return };
    // Under every window, like the scene badge.
    egui::Area::new("colour bar".into()).order(egui::Order::Background).fixed_pos(view.left_bottom() + egui::vec2(10.0, -62.0)).show(ctx, |ui| {
        egui::Frame::new().fill(egui::Color32::from_black_alpha(170)).inner_margin(6.0).corner_radius(4.0).show(ui, |ui| {
            ui.label(egui::RichText::new(title).small());
            let (rect, _) = ui.allocate_exact_size(egui::vec2(220.0, 12.0), egui::Sense::hover());
            let steps = 64;
            for i in 0..steps {
                let t = i as f32 / (steps - 1) as f32;
                let x0 = rect.left() + rect.width() * i as f32 / steps as f32;
                let x1 = rect.left() + rect.width() * (i + 1) as f32 / steps as f32;
                ui.painter().rect_filled(egui::Rect::from_x_y_ranges(x0..=x1, rect.y_range()), 0.0, color(map(t)));
            }
            ui.horizontal(|ui| {
                ui.label(egui::RichText::new(low).small());
                ui.add_space((200.0 - ui.min_rect().width()).max(4.0));
                ui.label(egui::RichText::new(high).small());
            });
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bar's maps are the shader's: the same functions, written twice, checked at their
    /// ends and middle against values computed from the shader's polynomial by hand.
    #[test]
    fn the_maps_match_the_shader() {
        let wgsl = include_str!("../../../../shaders/points.wgsl");
        for constant in ["0.13572138", "4.61539260", "-42.66032258", "132.13108234", "-152.94239396", "59.28637943", "12.64194608", "27.34824973"] {
            assert!(wgsl.contains(constant), "the shader's turbo no longer has {constant}");
        }
        let t0 = turbo(0.0);
        assert!((t0[0] - 0.1357).abs() < 1e-3 && (t0[2] - 0.1067).abs() < 1e-3, "{t0:?}");
        let t1 = turbo(1.0);
        assert!((t1[0] - 0.5).abs() < 0.1 && t1[2] < 0.1, "{t1:?}");
        // The frame hue wheel is the one the picks' colours come from.
        for (rank, count) in [(0, 16), (5, 16), (15, 16)] {
            let h = hue(rank as f32 / count as f32 * 0.8).map(|c| (c * 255.0) as u8);
            assert_eq!(h, super::super::super::tasks::pick_colour(rank, count));
        }
    }
}
