//! Frame sampling in the viewer: Spatial-MLLM's uniform 16 frames of the open source, or
//! space-aware sampling (greedy maximum voxel coverage) on the geometry on screen. The voxel sets
//! are built on the worker once per geometry and confidence percentile; changing K re-runs only the
//! greedy step. Picks always belong to the open source.

use super::renderer::PointCloudRender;
use super::scene::SceneSystems;
use super::state::*;
use super::tasks::{Job, Worker};
use crate::pipeline::source::{FrameCount, question_frames};
use bevy::prelude::*;
use spatial_models::sampling::SamplingParams;
use std::sync::Arc;

/// The uniform frames Spatial-MLLM feeds the model without space-aware sampling.
pub fn uniform_picks(frames: usize) -> Vec<usize> {
    question_frames(frames, FrameCount::Count(16)).unwrap_or_default()
}

/// K below the number of candidates, so the sampler always chooses.
pub fn effective_k(k: usize, candidates: usize) -> usize {
    k.min(candidates.saturating_sub(1)).max(1)
}

fn geometry_key(scene: &LoadedScene) -> usize {
    Arc::as_ptr(&scene.rec) as usize
}

fn request_voxels(settings: Res<SamplerSettings>, geometry: Res<Geometry>, mut worker: ResMut<Worker>, mut activity: ResMut<Activity>, mut state: ResMut<SamplingState>) {
    let Some(scene) = &geometry.scene else { return };
    let want = (geometry_key(scene), settings.conf_percentile);
    if settings.mode == SamplerMode::SpaceAware && state.built_for != Some(want) {
        state.built_for = Some(want);
        state.voxels = None;
        state.result = None;
        worker.submit(&mut activity, Job::VoxelSets { rec: scene.rec.clone(), params: SamplingParams { conf_percentile: settings.conf_percentile, ..Default::default() } });
    }
}

fn update_picks(
    mut ready: MessageReader<VoxelsReady>,
    settings: Res<SamplerSettings>,
    geometry: Res<Geometry>,
    opened: Res<Opened>,
    mut state: ResMut<SamplingState>,
    mut sampled: ResMut<SampledFrames>,
    question: Res<QuestionFrames>,
) {
    let mut changed = settings.is_changed() || geometry.is_changed() || opened.is_changed() || question.is_changed();
    for VoxelsReady(result, key) in ready.read() {
        // Voxel sets of geometry no longer on screen are dropped.
        if geometry.scene.as_ref().is_none_or(|s| geometry_key(s) != *key) {
            continue;
        }
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
    let uniform = uniform_picks(opened.frame_count());
    let scene = geometry.scene.as_ref().filter(|s| s.source_id == opened.id);
    let new = match (settings.mode, &state.voxels, scene) {
        // A question's frames (from an evaluation run) while its video is open.
        _ if question.0.as_ref().is_some_and(|(id, _, _)| *id == opened.id) => {
            let (_, frames, label) = question.0.clone().unwrap_or_default();
            SampledFrames { frames, label, compare: if settings.compare_uniform { uniform } else { Vec::new() }, source_id: opened.id.clone() }
        }
        (SamplerMode::SpaceAware, Some(v), Some(scene)) if v.frame_sets.len() == scene.rec.frames => {
            let r = v.greedy(effective_k(settings.k, scene.rec.frames));
            let mut frames: Vec<usize> = r.selected.iter().map(|&f| scene.source_frames.get(f).copied().unwrap_or(f)).collect();
            frames.sort_unstable();
            let out = SampledFrames {
                frames,
                label: format!("space-aware (K = {}, {} picked of {} reconstructed)", effective_k(settings.k, scene.rec.frames), r.selected.len(), scene.rec.frames),
                compare: if settings.compare_uniform { uniform } else { Vec::new() },
                source_id: opened.id.clone(),
            };
            state.result = Some(r);
            out
        }
        _ => {
            state.result = None;
            SampledFrames { frames: uniform, label: "uniform (Spatial-MLLM default: 16 frames, linspace)".into(), compare: Vec::new(), source_id: opened.id.clone() }
        }
    };
    if *sampled != new {
        *sampled = new;
    }
}

/// Keeps the points coloured by first covering pick while that colour mode is on: the colours
/// are rebuilt on the worker when the picks or the geometry change, and the plain cloud comes
/// back when the mode is left.
fn coverage_mode(
    view: Res<ViewSettings>,
    geometry: Res<Geometry>,
    state: Res<SamplingState>,
    mut worker: ResMut<Worker>,
    mut activity: ResMut<Activity>,
    mut render: ResMut<PointCloudRender>,
    mut ready: MessageReader<CoverageReady>,
    mut last: Local<Option<u64>>,
) {
    use std::hash::{Hash, Hasher};
    let wanted = match (view.color_mode == ColorMode::FirstCoveringPick, &geometry.scene, &state.voxels, &state.result) {
        (true, Some(scene), Some(sets), Some(result)) if sets.frame_sets.len() == scene.rec.frames => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (Arc::as_ptr(&scene.cloud) as usize, Arc::as_ptr(sets) as usize, &result.picks_in_order).hash(&mut h);
            Some((h.finish(), scene, sets, result))
        }
        _ => None,
    };
    match wanted {
        Some((key, scene, sets, result)) => {
            if *last != Some(key) {
                *last = Some(key);
                worker.submit(&mut activity, Job::CoverageColours { cloud: scene.cloud.clone(), sets: sets.clone(), picks: result.picks_in_order.clone(), key });
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

pub struct SamplingPlugin;

impl Plugin for SamplingPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Update, (request_voxels, update_picks, coverage_mode).chain().after(SceneSystems));
    }
}
