//! Saved states: File > Save state writes what the user has (the source, its geometry, the
//! settings that make the picks, the view, the 3D camera, the frame, the chat) to one `.svstate`
//! file (see [`crate::pipeline::state_file`]); opening one puts all of it back.
//!
//! Settings are stored under the names scripts use for them (`set` controls), so a state and a
//! script speak the same language and every control is restored by the same code that sets it.

use super::camera::OrbitCamera;
use super::player::Player;
use super::script::apply_control;
use super::state::*;
use super::tasks::{Job, Worker};
use crate::pipeline::source::{Source, SourceId};
use bevy::prelude::*;
use serde_json::{Value, json};

/// What is restored once the geometry of the reopened source is on screen (the camera and the
/// frame would otherwise be reset by its arrival).
#[derive(Resource, Default)]
struct PendingRestore(Option<Pending>);

/// Pins, scale and region of a reopened state, restored once that source's geometry is shown.
#[derive(Resource, Default)]
struct PendingInspect(Option<(SourceId, Value)>);

/// Pins, scale, region, tool and overlay as a saved state keeps them.
fn inspect_state(inspection: &Inspection) -> Value {
    use crate::pipeline::inspect::RegionOrigin;
    json!({
        "pins": inspection.measuring.pins.iter().map(|p| json!({"position": p.position, "frame": p.frame, "pixel": p.pixel})).collect::<Vec<_>>(),
        "scale": inspection.measuring.scale,
        "region": inspection.region.as_ref().map(|r| match r.region.origin {
            RegionOrigin::Rect { frame, rect } => json!({"frame": frame, "rect": rect}),
            RegionOrigin::Box { min, max, threshold } => json!({"box": {"min": min, "max": max, "threshold": threshold}}),
        }),
        "tool": format!("{:?}", inspection.tool),
        "overlay": format!("{:?}", inspection.overlay),
    })
}

/// Puts saved pins, scale and region back on the geometry they were made on.
fn restore_inspection(
    inspection: &mut Inspection,
    geometry: &Geometry,
    v: &Value,
) -> Result<(), String> {
    let floats = |v: &Value| -> Option<Vec<f32>> {
        v.as_array()?
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect()
    };
    inspection.measuring.pins = v["pins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let pos = floats(&p["position"]).filter(|a| a.len() == 3)?;
            let pixel = p["pixel"]
                .as_array()
                .filter(|a| a.len() == 2)
                .and_then(|a| Some([a[0].as_u64()? as usize, a[1].as_u64()? as usize]));
            Some(crate::pipeline::inspect::Pin {
                position: [pos[0], pos[1], pos[2]],
                frame: p["frame"].as_u64().map(|f| f as usize),
                pixel,
            })
        })
        .collect();
    inspection.measuring.scale = v["scale"]
        .as_f64()
        .map(|s| s as f32)
        .filter(|s| s.is_finite() && *s > 0.0);
    inspection.tool = [InspectTool::Look, InspectTool::Measure, InspectTool::Region]
        .into_iter()
        .find(|t| v["tool"] == format!("{t:?}"))
        .unwrap_or_default();
    inspection.overlay = VideoOverlay::ALL
        .into_iter()
        .find(|o| v["overlay"] == format!("{o:?}"))
        .unwrap_or_default();
    let region = &v["region"];
    if let Some(b) = region.get("box") {
        let (min, max) = (
            floats(&b["min"])
                .filter(|a| a.len() == 3)
                .ok_or("a saved region box has no min")?,
            floats(&b["max"])
                .filter(|a| a.len() == 3)
                .ok_or("a saved region box has no max")?,
        );
        let threshold = b["threshold"]
            .as_f64()
            .map_or(f32::NEG_INFINITY, |t| t as f32);
        super::inspect::select_box_with(inspection, geometry, [min[0], min[1], min[2]], [max[0], max[1], max[2]], threshold)?;
    } else if let (Some(frame), Some(rect)) = (
        region["frame"].as_u64(),
        region["rect"].as_array().filter(|a| a.len() == 4),
    ) {
        let rect: Vec<i64> = rect.iter().filter_map(Value::as_i64).collect();
        if rect.len() == 4 {
            super::inspect::select_rect(
                inspection,
                geometry,
                frame as usize,
                [rect[0], rect[1], rect[2], rect[3]],
            )?;
        }
    }
    Ok(())
}

fn finish_inspect(
    mut pending: ResMut<PendingInspect>,
    opened: Res<Opened>,
    geometry: Res<Geometry>,
    mut inspection: ResMut<Inspection>,
    mut status: ResMut<StatusLine>,
) {
    let Some((id, _)) = &pending.0 else { return };
    if *id != opened.id {
        pending.0 = None;
        return;
    }
    if geometry.scene.as_ref().is_none_or(|s| s.source_id != *id) {
        return;
    }
    if let Some((_, v)) = pending.0.take()
        && let Err(e) = restore_inspection(&mut inspection, &geometry, &v)
    {
        status.error(format!("the saved measurements could not be restored: {e}"));
    }
}

struct Pending {
    source_id: SourceId,
    wait_for_geometry: bool,
    camera: Option<OrbitCamera>,
    look_through: Option<usize>,
    frame: usize,
    /// What the sampling panel said about the reconstruction.
    vggt_last_run: Option<String>,
    /// Frames the restored camera has been applied for (the camera controls reset the view in
    /// the frame after new geometry arrives; applying it for a few frames wins over that).
    applied: u32,
}

/// The settings, as `(control, value)` pairs in the order they are applied.
fn controls(view: &ViewSettings, sampler: &SamplerSettings, vggt: &VggtState, chat: &ChatSettings, player: &Player) -> Vec<(&'static str, Value)> {
    let question_frames = match chat.frame_choice {
        FrameChoice::Sampled => json!("sampled"),
        FrameChoice::Uniform => json!(chat.frames),
    };
    vec![
        ("point_size", json!(view.point_size)),
        ("color_mode", json!(view.color_mode.name())),
        ("conf_percentile", json!(view.conf_percentile)),
        ("frame_filter", view.frame_filter.map_or(json!("all"), |f| json!(f))),
        ("show_cameras", json!(view.show_cameras)),
        (
            "cameras",
            match view.cameras {
                CameraSubset::All => json!("all"),
                CameraSubset::Picks => json!("picks"),
                CameraSubset::EveryNth(n) => json!(n),
            },
        ),
        ("camera_scale", json!(view.camera_scale)),
        ("point_budget", json!(view.point_budget)),
        ("point_source", json!(view.source.name())),
        ("sampler", json!(if sampler.mode == SamplerMode::Uniform { "uniform" } else { "space-aware" })),
        ("k", json!(sampler.k)),
        ("sample_conf_percentile", json!(sampler.conf_percentile)),
        ("compare_uniform", json!(sampler.compare_uniform)),
        ("vggt_frames", json!(vggt.frames)),
        ("vggt_width", json!(vggt.width)),
        ("speed", json!(player.speed)),
        (
            "question_format",
            json!(match chat.format {
                AnswerFormat::Free => "free",
                AnswerFormat::Numeric => "numeric",
                AnswerFormat::MultipleChoice => "mc",
            }),
        ),
        ("question_options", json!(chat.options)),
        // The count first (it also selects uniform frames), then the choice.
        ("question_frames", json!(chat.frames)),
        ("question_frames", question_frames),
        ("spatial", json!(chat.use_spatial)),
        ("max_new_tokens", json!(chat.max_new_tokens)),
        ("temperature", json!(chat.temperature)),
    ]
}

/// A weights spec as it will still mean the same files from another working directory.
fn absolute_spec(spec: &Option<String>) -> Value {
    match spec {
        None => Value::Null,
        Some(s) => match std::fs::canonicalize(s) {
            Ok(p) => json!(p),
            Err(_) => json!(s),
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn save(
    mut requests: MessageReader<SaveState>,
    (opened, geometry, view, sampler, sampled): (
        Res<Opened>,
        Res<Geometry>,
        Res<ViewSettings>,
        Res<SamplerSettings>,
        Res<SampledFrames>,
    ),
    (orbit, look, player, chat, vggt): (
        Res<OrbitCamera>,
        Res<LookThrough>,
        Res<Player>,
        Res<ChatState>,
        Res<VggtState>,
    ),
    inspection: Res<Inspection>,
    mut worker: ResMut<Worker>,
    mut activity: ResMut<Activity>,
    mut status: ResMut<StatusLine>,
) {
    for SaveState(path) in requests.read() {
        let Some(source) = opened.source.clone() else {
            status.error("nothing to save: open a video, a folder of frames or the demo first");
            continue;
        };
        if let Err(e) = crate::pipeline::fsio::check_writable(path) {
            status.error(format!("cannot save the state: {e:#}"));
            continue;
        }
        let scene = geometry.scene.as_ref().filter(|s| s.source_id == opened.id);
        // Geometry that is the source itself (the demo, a saved reconstruction) is reopened from
        // the source; VGGT's geometry of a video or folder is embedded.
        let rec = scene.filter(|_| !matches!(source, Source::Geometry(_))).map(|s| s.rec.clone());
        let messages: Vec<Value> = chat
            .messages
            .iter()
            .map(|m| {
                // An answer still streaming is saved as what it is so far.
                let state = if m.state == AnswerState::Streaming { AnswerState::Cancelled } else { m.state };
                json!({"from_user": m.from_user, "text": m.text, "state": state.name(), "frames": m.frames, "note": m.note})
            })
            .collect();
        let state = json!({
            "controls": controls(&view, &sampler, &vggt, &chat.settings, &player).into_iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "frame": player.current,
            "camera": {"focus": orbit.focus.to_array(), "yaw": orbit.yaw, "pitch": orbit.pitch, "distance": orbit.distance, "fov_y": orbit.fov_y, "roll": orbit.roll},
            "look_through": look.0,
            "vggt_last_run": vggt.last_run,
            "geometry": scene.map(|s| json!({"label": s.label, "frames": s.rec.frames})),
            "picks": {"frames": sampled.frames, "label": sampled.label, "compare": sampled.compare},
            "chat": messages,
            "weights": {"vggt": absolute_spec(&vggt.spec), "mllm": absolute_spec(&chat.spec)},
            "inspect": inspect_state(&inspection),
        });
        status.info(format!("saving the state to {}...", path.display()));
        worker.submit(&mut activity, Job::SaveState { path: path.clone(), state, source, rec });
    }
}

fn parse_camera(v: &Value) -> Option<OrbitCamera> {
    let f = |k: &str| v[k].as_f64().map(|x| x as f32);
    let focus = v["focus"].as_array().filter(|a| a.len() == 3)?;
    let focus = Vec3::new(focus[0].as_f64()? as f32, focus[1].as_f64()? as f32, focus[2].as_f64()? as f32);
    Some(OrbitCamera { focus, yaw: f("yaw")?, pitch: f("pitch")?, distance: f("distance")?, fov_y: f("fov_y")?, roll: f("roll").unwrap_or(0.0) })
}

/// Settings and the chat come back at once; the camera and the frame once the geometry is shown.
#[allow(clippy::too_many_arguments)]
fn restore(
    mut opened_msgs: MessageReader<SourceOpened>,
    (mut pending, mut pending_inspect): (ResMut<PendingRestore>, ResMut<PendingInspect>),
    (mut view, mut sampler, mut vggt, mut chat, mut player): (
        ResMut<ViewSettings>,
        ResMut<SamplerSettings>,
        ResMut<VggtState>,
        ResMut<ChatState>,
        ResMut<Player>,
    ),
    mut load_vggt: MessageWriter<LoadVggt>,
    mut load_mllm: MessageWriter<LoadMllm>,
    mut status: ResMut<StatusLine>,
) {
    for SourceOpened(source, restore) in opened_msgs.read() {
        let Some(r) = restore else {
            pending.0 = None;
            pending_inspect.0 = None;
            continue;
        };
        let state = &r.state;
        pending_inspect.0 = state
            .get("inspect")
            .filter(|v| v.is_object())
            .map(|v| (source.id(), v.clone()));
        let mut problems = Vec::new();
        for pair in state["controls"].as_array().into_iter().flatten() {
            let (Some(name), Some(value)) = (pair[0].as_str(), pair.get(1)) else { continue };
            if let Err(e) = apply_control(name, value, &mut view, &mut player, &mut sampler, &mut vggt, &mut chat.settings) {
                problems.push(format!("{e:#}"));
            }
        }
        chat.messages = state["chat"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| ChatMessage {
                from_user: m["from_user"].as_bool().unwrap_or(false),
                text: m["text"].as_str().unwrap_or_default().to_string(),
                state: [AnswerState::Done, AnswerState::Cancelled, AnswerState::Failed].into_iter().find(|s| m["state"] == s.name()).unwrap_or(AnswerState::Done),
                frames: m["frames"].as_array().into_iter().flatten().filter_map(|f| f.as_u64().map(|f| f as usize)).collect(),
                note: m["note"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        // The models the answers came from, unless they are loaded already.
        if let Some(spec) = state["weights"]["mllm"].as_str().filter(|s| chat.spec.as_deref() != Some(*s)) {
            load_mllm.write(LoadMllm(spec.to_string()));
        }
        if let Some(spec) = state["weights"]["vggt"].as_str().filter(|s| vggt.spec.as_deref() != Some(*s)) {
            load_vggt.write(LoadVggt(spec.to_string()));
        }
        let wait_for_geometry = r.rec.is_some() || matches!(source, Source::Geometry(_));
        pending.0 = Some(Pending {
            source_id: source.id(),
            wait_for_geometry,
            camera: parse_camera(&state["camera"]),
            look_through: state["look_through"].as_u64().map(|f| f as usize),
            frame: state["frame"].as_u64().unwrap_or(0) as usize,
            vggt_last_run: state["vggt_last_run"].as_str().map(String::from),
            applied: 0,
        });
        if let Some(w) = &r.warning {
            problems.insert(0, w.clone());
        }
        if problems.is_empty() {
            status.info(format!("reopened {}", r.path.display()));
        } else {
            status.error(format!("{}: reopened, but {}", r.path.display(), problems.join("; ")));
        }
    }
}

fn finish_restore(
    mut pending: ResMut<PendingRestore>,
    opened: Res<Opened>,
    geometry: Res<Geometry>,
    mut player: ResMut<Player>,
    mut orbit: ResMut<OrbitCamera>,
    mut look: ResMut<LookThrough>,
    mut vggt: ResMut<VggtState>,
) {
    let Some(p) = &mut pending.0 else { return };
    if opened.id != p.source_id || player.frame_count == 0 {
        return;
    }
    if p.wait_for_geometry && geometry.scene.as_ref().is_none_or(|s| s.source_id != p.source_id) {
        return;
    }
    player.seek(p.frame);
    if let Some(c) = p.camera {
        *orbit = c;
    }
    look.0 = p.look_through;
    if p.vggt_last_run.is_some() {
        vggt.last_run = p.vggt_last_run.clone();
    }
    p.applied += 1;
    if p.applied >= 3 {
        pending.0 = None;
    }
}

pub struct SessionPlugin;

impl Plugin for SessionPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<PendingRestore>()
            .init_resource::<PendingInspect>()
            .add_systems(Update, (save, restore))
            .add_systems(PostUpdate, (finish_restore, finish_inspect));
    }
}
