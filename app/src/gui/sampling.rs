//! Frame sampling in the viewer: Spatial-MLLM's uniform 16 frames, or space-aware sampling
//! (greedy maximum voxel coverage) on the geometry on screen. The voxel sets are built on the
//! worker once per geometry and confidence percentile; changing K re-runs only the greedy step.

use super::player::Player;
use super::scene::{Geometry, SampledFrames, spatial_mllm_uniform};
use super::tasks::{Job, SceneLoaded, VoxelsReady, Worker};
use bevy::prelude::*;
use spatial_models::sampling::{SamplingParams, SamplingResult, VoxelSets};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerMode {
    Uniform,
    SpaceAware,
}

#[derive(Resource, Debug, Clone, PartialEq)]
pub struct SamplerSettings {
    pub mode: SamplerMode,
    pub k: usize,
    pub conf_percentile: f64,
    /// Also mark the uniform picks (second row on the timeline) for comparison.
    pub compare_uniform: bool,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        Self { mode: SamplerMode::SpaceAware, k: 16, conf_percentile: 50.0, compare_uniform: true }
    }
}

/// The last space-aware result, for the panel.
#[derive(Resource, Default)]
pub struct SamplingState {
    pub voxels: Option<std::sync::Arc<spatial_models::sampling::VoxelSets>>,
    pub result: Option<SamplingResult>,
    pub error: Option<String>,
    /// Percentile the voxel sets were built with.
    built_for: Option<f64>,
}

fn request_voxels(mut loaded: MessageReader<SceneLoaded>, settings: Res<SamplerSettings>, geometry: Res<Geometry>, mut worker: ResMut<Worker>, mut state: ResMut<SamplingState>) {
    let new_scene = loaded.read().last().is_some();
    let Some(scene) = &geometry.scene else { return };
    let stale = state.built_for != Some(settings.conf_percentile);
    if (new_scene || stale) && settings.mode == SamplerMode::SpaceAware {
        state.built_for = Some(settings.conf_percentile);
        worker.submit(Job::VoxelSets { rec: scene.rec.clone(), params: SamplingParams { conf_percentile: settings.conf_percentile, ..Default::default() } });
    }
}

fn update_picks(
    mut ready: MessageReader<VoxelsReady>,
    settings: Res<SamplerSettings>,
    geometry: Res<Geometry>,
    player: Res<Player>,
    mut state: ResMut<SamplingState>,
    mut sampled: ResMut<SampledFrames>,
) {
    let mut changed = settings.is_changed() || geometry.is_changed();
    for VoxelsReady(result) in ready.read() {
        match result {
            Ok(v) => {
                state.voxels = Some(v.clone());
                state.error = None;
            }
            Err(e) => {
                state.voxels = None;
                state.error = Some(e.clone());
            }
        }
        changed = true;
    }
    if !changed {
        return;
    }
    // Uniform picks are over the whole video; space-aware ones over the geometry's frames, mapped
    // back to the video's frame numbers.
    let uniform = spatial_mllm_uniform(player.frame_count.max(geometry.scene.as_ref().map(|s| s.rec.frames).unwrap_or(0)));
    let geometry_frames = geometry.scene.as_ref().map(|s| s.rec.frames).unwrap_or(0);
    match (settings.mode, &state.voxels, &geometry.scene) {
        (SamplerMode::SpaceAware, Some(v), Some(scene)) if v.frame_sets.len() == geometry_frames => {
            let r = v.greedy(settings.k);
            *sampled = SampledFrames {
                frames: r.selected.iter().map(|&f| scene.rec.frame_indices.get(f).map(|&i| i as usize).unwrap_or(f)).collect(),
                label: format!("space-aware (K = {}, {} picked)", settings.k, r.selected.len()),
                compare: if settings.compare_uniform { uniform } else { Vec::new() },
            };
            state.result = Some(r);
        }
        _ => {
            *sampled = SampledFrames { frames: uniform, label: "uniform (Spatial-MLLM default: 16 frames, linspace)".into(), compare: Vec::new() };
            state.result = None;
        }
    }
}

/// The "Frame sampling" section of the left panel.
pub fn sampling_panel(ui: &mut bevy_egui::egui::Ui, settings: &mut SamplerSettings, state: &SamplingState, frames: usize, color_mode: &mut u32) {
    use bevy_egui::egui;
    ui.horizontal(|ui| {
        ui.radio_value(&mut settings.mode, SamplerMode::SpaceAware, "space-aware");
        ui.radio_value(&mut settings.mode, SamplerMode::Uniform, "uniform (16)");
    });
    if settings.mode == SamplerMode::Uniform {
        return;
    }
    if frames == 0 {
        // No geometry yet: a 1..=0 slider would clamp K.
        ui.label("space-aware sampling needs geometry (open the demo or reconstruct a video)");
        return;
    }
    // K may exceed this geometry's frame count (the greedy then stops at the frame count); not
    // clamping keeps the user's K when a longer video comes next.
    ui.add(egui::Slider::new(&mut settings.k, 1..=frames).clamping(egui::SliderClamping::Edits).text("K frames"));
    ui.add(egui::Slider::new(&mut settings.conf_percentile, 0.0..=99.0).text("confidence percentile"));
    ui.checkbox(&mut settings.compare_uniform, "also show the uniform picks (blue)");
    if let Some(e) = &state.error {
        ui.colored_label(egui::Color32::from_rgb(255, 110, 100), e);
    }
    let Some(r) = &state.result else {
        ui.label("building voxel sets...");
        return;
    };
    ui.label(format!("voxel size {:.4} (1/20 of the shortest side), covered {} of {} voxels", r.voxel_size, r.covered_voxels, r.total_voxels));
    let mut by_cover = *color_mode == super::scene::COVERAGE_MODE;
    if ui.checkbox(&mut by_cover, "colour points by the pick that first covered them").on_hover_text("each point takes its voxel's first covering pick's colour (see the list); grey: covered by no pick").changed() {
        *color_mode = if by_cover { super::scene::COVERAGE_MODE } else { 0 };
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
                ui.label(format!("{f}"));
                ui.label(format!("{gain}"));
                ui.label(format!("{}", r.voxels_per_frame[f]));
                ui.end_row();
            }
        });
    });
}

pub struct SamplingPlugin;

impl Plugin for SamplingPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<SamplerSettings>().init_resource::<SamplingState>().add_message::<CoverageReady>()
            .add_systems(Update, (request_voxels, update_picks, coverage_mode).chain().after(super::scene::SceneSystems));
    }
}

/// The cloud recoloured for [`super::scene::COVERAGE_MODE`]: each point takes the colour of the
/// pick (in greedy order) that first covered its voxel; points in no picked frame's voxels, or in
/// no confident voxel at all, are dark grey.
pub fn coverage_colours(cloud: &super::renderer::PointCloudBuffers, sets: &VoxelSets, picks: &[(usize, usize)]) -> super::renderer::PointCloudBuffers {
    let first = sets.first_cover(picks);
    let palette: Vec<[u8; 3]> = (0..picks.len()).map(|r| pick_colour(r, picks.len())).collect();
    let points = cloud
        .points
        .iter()
        .map(|p| {
            // The cloud is in the viewer's axes; the voxels in the geometry's (OpenCV) ones.
            let world = super::cloud::to_view(p.position);
            let rgb = sets.voxel_of(world).and_then(|v| palette.get(first[v as usize] as usize)).copied().unwrap_or([60, 60, 64]);
            super::renderer::PointInstance { position: p.position, color_rank: [rgb[0], rgb[1], rgb[2], p.color_rank[3]] }
        })
        .collect();
    super::renderer::PointCloudBuffers { points, frame_starts: cloud.frame_starts.clone(), centers: cloud.centers.clone() }
}

/// Distinct colours for the picks in greedy order (a hue wheel, as the frame-index mode uses).
pub fn pick_colour(rank: usize, count: usize) -> [u8; 3] {
    let h = rank as f32 / count.max(1) as f32 * 0.8;
    let c = |k: f32| {
        let p = ((h + k / 6.0).fract() * 6.0 - 3.0).abs();
        ((p - 1.0).clamp(0.0, 1.0) * 0.85 + 0.1) * 255.0
    };
    [c(5.0) as u8, c(3.0) as u8, c(1.0) as u8]
}

/// A recoloured cloud for the key it was asked for.
#[derive(Message, Clone)]
pub struct CoverageReady(pub std::sync::Arc<super::renderer::PointCloudBuffers>, pub u64);

/// Keeps the points coloured by first covering pick while that colour mode is on: the colours
/// are rebuilt on the worker when the picks or the geometry change, and the plain cloud comes
/// back when the mode is left.
fn coverage_mode(
    view: Res<super::scene::ViewSettings>,
    geometry: Res<Geometry>,
    state: Res<SamplingState>,
    mut worker: ResMut<Worker>,
    mut render: ResMut<super::renderer::PointCloudRender>,
    mut ready: MessageReader<CoverageReady>,
    mut last: Local<Option<u64>>,
) {
    use std::hash::{Hash, Hasher};
    let wanted = match (view.color_mode == super::scene::COVERAGE_MODE, &geometry.scene, &state.voxels, &state.result) {
        (true, Some(scene), Some(sets), Some(result)) if sets.frame_sets.len() == scene.rec.frames => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (std::sync::Arc::as_ptr(&scene.cloud) as usize, std::sync::Arc::as_ptr(sets) as usize, &result.picks_in_order).hash(&mut h);
            Some((h.finish(), scene, sets, result))
        }
        _ => None,
    };
    match wanted {
        Some((key, scene, sets, result)) => {
            if *last != Some(key) {
                *last = Some(key);
                worker.submit(Job::CoverageColours { cloud: scene.cloud.clone(), sets: sets.clone(), picks: result.picks_in_order.clone(), key });
            }
        }
        None => {
            if last.take().is_some() {
                if let Some(scene) = &geometry.scene {
                    render.data = Some(scene.cloud.clone());
                    render.version += 1;
                }
            }
        }
    }
    for CoverageReady(cloud, key) in ready.read() {
        if *last == Some(*key) {
            render.data = Some(cloud.clone());
            render.version += 1;
        }
    }
}
