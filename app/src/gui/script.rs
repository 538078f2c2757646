//! Scripted runs: `spatial-viewer --script steps.json` performs steps in the live window.
//! `{"steps": [{"open": "demo"}, {"seek": 10}, {"set": {"control": "point_size", "value": 4}},
//! {"wait_idle": 30}, {"screenshot": "shot.png"}, {"quit": true}]}`. A failing step ends the run
//! with exit code 1 and a message naming the step.

use super::player::Player;
use super::state::*;
use crate::pipeline::points::PointSource;
use crate::pipeline::source::SourceSpec;
use anyhow::{Context, Result, bail};
use bevy::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Open(PathBuf),
    Seek(usize),
    SelectCamera(usize),
    LookThrough(usize),
    ResetView,
    Set { control: String, value: Value },
    WaitFrames(u32),
    WaitIdle(f32),
    Screenshot(PathBuf),
    /// Asks the chat model; by default waits for the whole answer and fails if it failed.
    /// `{"ask": {"question": "...", "wait": false}}` returns once the answer starts streaming
    /// (or has ended, failures included: check them with `dump_state`).
    Ask { question: String, wait: bool },
    /// Cancels the answer being generated and waits until the thread stopped.
    CancelAnswer,
    /// Loads VGGT weights (`{"load_weights": {"vggt": DIR}}`; opened folders are then
    /// reconstructed in the background) and/or Spatial-MLLM weights (`{"mllm": DIR}`).
    LoadWeights { vggt: Option<PathBuf>, mllm: Option<PathBuf> },
    /// Exports the geometry on screen (safetensors, or PLY by extension) with the filter on screen.
    Export(PathBuf),
    /// Saves the state (`.svstate`) and waits until it is written.
    SaveState(PathBuf),
    /// Opens an evaluation run in the results browser (`{"path": DIR, "compare": DIR}` or DIR).
    OpenEvalRun { path: PathBuf, compare: Option<PathBuf> },
    /// Sets the browser's filters: `{"task": T or null, "correctness": "all"|"correct"|"wrong"|"changed", "search": S}`.
    EvalFilter { task: Option<String>, correctness: String, search: String },
    /// Selects a question (its row number) as a click does: opens its video, marks its frames.
    SelectQuestion(usize),
    /// Reconstructs the open source with VGGT again, with the current settings; by default waits
    /// for the result (`{"reconstruct": {"wait": false}}` returns at once).
    Reconstruct { wait: bool },
    /// Runs the model threads on another device / dtype (`{"set_device": {"device": "cuda",
    /// "dtype": "bf16"}}`); weights reload.
    SetDevice { device: String, dtype: String },
    /// Waits (up to 60 s) until VGGT is reconstructing (its progress is shown).
    WaitReconstructing,
    /// Cancels the reconstruction in progress.
    CancelReconstruction,
    /// Waits (up to 60 s) until a file exists: lets a test drive real input between steps.
    WaitForFile(PathBuf),
    /// Hovers a window pixel (logical) in the 3D view and waits for the GPU pick: `dump_state`'s
    /// `hovered` is then the point there (or null). Held until the mouse moves.
    Hover([f32; 2]),
    /// Pins a geometry sample (`{"frame": F, "pixel": [X, Y]}`) or the hovered point (`"hovered"`).
    Pin(Option<(usize, [usize; 2])>),
    /// Says the last measured segment is this many metres long.
    SetScale(f64),
    ClearPins,
    /// Selects the samples of a frame in a pixel rectangle (`{"frame": F, "rect": [X0, Y0, X1, Y1]}`)
    /// or the points in a world box (`{"box": {"min": [..], "max": [..]}}`), and the frames that see them.
    SelectRegion(RegionChoice),
    ClearRegion,
    /// What clicks do: "look", "measure" or "region".
    InspectTool(InspectTool),
    /// The video frame's overlay: "none", "depth", "confidence" or "covered".
    VideoOverlay(VideoOverlay),
    /// Writes JSON with the current frame, the viewport and every frustum projected to the window
    /// (logical pixels), so tests can check a screenshot against the projection.
    DumpState(PathBuf),
    Quit,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RegionChoice {
    Rect { frame: usize, rect: [i64; 4] },
    Box { min: [f32; 3], max: [f32; 3] },
}

#[derive(Debug, Clone)]
pub struct Script {
    pub steps: Vec<Step>,
}

impl Script {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the script", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}: invalid script", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let json: Value = serde_json::from_str(text).context("not valid JSON")?;
        let steps = json.get("steps").and_then(Value::as_array).context("expected {\"steps\": [...]}")?;
        let steps = steps.iter().enumerate().map(|(i, s)| parse_step(s).with_context(|| format!("step {} ({s})", i + 1))).collect::<Result<Vec<_>>>()?;
        Ok(Self { steps })
    }
}

fn parse_step(v: &Value) -> Result<Step> {
    let obj = v.as_object().context("a step is an object with one key")?;
    let (name, arg) = obj.iter().next().context("empty step")?;
    if obj.len() != 1 {
        bail!("a step has exactly one key");
    }
    let uint = |a: &Value| a.as_u64().map(|n| n as usize).with_context(|| format!("`{name}` takes a frame number"));
    Ok(match name.as_str() {
        "open" => Step::Open(PathBuf::from(arg.as_str().context("`open` takes a path (or \"demo\")")?)),
        "seek" => Step::Seek(uint(arg)?),
        "select_camera" => Step::SelectCamera(uint(arg)?),
        "look_through" => Step::LookThrough(uint(arg)?),
        "reset_view" => Step::ResetView,
        "set" => Step::Set {
            control: arg.get("control").and_then(Value::as_str).context("`set` takes {\"control\": NAME, \"value\": V}")?.to_string(),
            value: arg.get("value").cloned().context("`set` needs a value")?,
        },
        "wait_frames" => Step::WaitFrames(arg.as_u64().context("`wait_frames` takes a number")? as u32),
        "wait_idle" => Step::WaitIdle(arg.as_f64().context("`wait_idle` takes seconds")? as f32),
        "screenshot" => Step::Screenshot(PathBuf::from(arg.as_str().context("`screenshot` takes a path")?)),
        "ask" => match arg {
            Value::String(q) => Step::Ask { question: q.clone(), wait: true },
            _ => Step::Ask {
                question: arg.get("question").and_then(Value::as_str).context("`ask` takes the question text or {\"question\": TEXT, \"wait\": BOOL}")?.to_string(),
                wait: arg.get("wait").and_then(Value::as_bool).unwrap_or(true),
            },
        },
        "cancel_answer" => Step::CancelAnswer,
        "wait_for_file" => Step::WaitForFile(PathBuf::from(arg.as_str().context("`wait_for_file` takes a path")?)),
        "export" => Step::Export(PathBuf::from(arg.as_str().context("`export` takes a path")?)),
        "save_state" => Step::SaveState(PathBuf::from(arg.as_str().context("`save_state` takes a path")?)),
        "open_eval_run" => match arg {
            Value::String(p) => Step::OpenEvalRun { path: PathBuf::from(p), compare: None },
            _ => Step::OpenEvalRun {
                path: PathBuf::from(arg.get("path").and_then(Value::as_str).context("`open_eval_run` takes a folder or {\"path\": DIR, \"compare\": DIR}")?),
                compare: arg.get("compare").and_then(Value::as_str).map(PathBuf::from),
            },
        },
        "eval_filter" => {
            let correctness = arg.get("correctness").and_then(Value::as_str).unwrap_or("all").to_string();
            if !super::results::Correctness::ALL.iter().any(|c| c.name() == correctness) {
                bail!("`eval_filter`: correctness is all, correct, wrong or changed");
            }
            Step::EvalFilter { task: arg.get("task").and_then(Value::as_str).map(String::from), correctness, search: arg.get("search").and_then(Value::as_str).unwrap_or_default().to_string() }
        }
        "select_question" => Step::SelectQuestion(uint(arg)?),
        "reconstruct" => Step::Reconstruct { wait: arg.get("wait").and_then(Value::as_bool).unwrap_or(true) },
        "wait_reconstructing" => Step::WaitReconstructing,
        "cancel_reconstruction" => Step::CancelReconstruction,
        "set_device" => {
            let word = |k: &str, default: &str| arg.get(k).and_then(Value::as_str).unwrap_or(default).to_string();
            let (device, dtype) = (word("device", "auto"), word("dtype", "auto"));
            device.parse::<crate::pipeline::device::DeviceRequest>()?;
            dtype.parse::<crate::pipeline::device::DTypeRequest>()?;
            Step::SetDevice { device, dtype }
        }
        "load_weights" => {
            let path = |k: &str| arg.get(k).and_then(Value::as_str).map(PathBuf::from);
            let (vggt, mllm) = (path("vggt"), path("mllm"));
            if vggt.is_none() && mllm.is_none() {
                bail!("`load_weights` takes {{\"vggt\": DIR}} and/or {{\"mllm\": DIR}}");
            }
            Step::LoadWeights { vggt, mllm }
        }
        "hover" => {
            let xy = arg
                .as_array()
                .filter(|a| a.len() == 2)
                .and_then(|a| Some([a[0].as_f64()? as f32, a[1].as_f64()? as f32]))
                .context("`hover` takes a window pixel [X, Y]")?;
            Step::Hover(xy)
        }
        "pin" => match arg {
            Value::String(s) if s == "hovered" => Step::Pin(None),
            _ => {
                let frame = arg
                    .get("frame")
                    .and_then(Value::as_u64)
                    .context("`pin` takes {\"frame\": F, \"pixel\": [X, Y]} or \"hovered\"")?
                    as usize;
                let pixel = arg
                    .get("pixel")
                    .and_then(Value::as_array)
                    .filter(|a| a.len() == 2)
                    .and_then(|a| Some([a[0].as_u64()? as usize, a[1].as_u64()? as usize]))
                    .context("`pin`: pixel is [X, Y] (whole numbers)")?;
                Step::Pin(Some((frame, pixel)))
            }
        },
        "set_scale" => {
            let m = arg
                .as_f64()
                .context("`set_scale` takes the last segment's length in metres")?;
            if !(m.is_finite() && m > 0.0) {
                bail!("`set_scale` takes a positive length in metres, got {m}");
            }
            Step::SetScale(m)
        }
        "clear_pins" => Step::ClearPins,
        "clear_region" => Step::ClearRegion,
        "select_region" => {
            let xyz = |v: Option<&Value>| {
                v.and_then(Value::as_array)
                    .filter(|a| a.len() == 3)
                    .and_then(|a| {
                        Some([
                            a[0].as_f64()? as f32,
                            a[1].as_f64()? as f32,
                            a[2].as_f64()? as f32,
                        ])
                    })
            };
            if let Some(b) = arg.get("box") {
                let (min, max) = xyz(b.get("min"))
                    .zip(xyz(b.get("max")))
                    .context("`select_region`: box is {\"min\": [x, y, z], \"max\": [x, y, z]}")?;
                Step::SelectRegion(RegionChoice::Box { min, max })
            } else {
                let frame = arg.get("frame").and_then(Value::as_u64).context("`select_region` takes {\"frame\": F, \"rect\": [X0, Y0, X1, Y1]} or {\"box\": ...}")? as usize;
                let rect = arg
                    .get("rect")
                    .and_then(Value::as_array)
                    .filter(|a| a.len() == 4)
                    .and_then(|a| {
                        Some([
                            a[0].as_i64()?,
                            a[1].as_i64()?,
                            a[2].as_i64()?,
                            a[3].as_i64()?,
                        ])
                    })
                    .context("`select_region`: rect is [X0, Y0, X1, Y1] (whole pixels)")?;
                Step::SelectRegion(RegionChoice::Rect { frame, rect })
            }
        }
        "inspect_tool" => Step::InspectTool(match arg.as_str() {
            Some("look") => InspectTool::Look,
            Some("measure") => InspectTool::Measure,
            Some("region") => InspectTool::Region,
            _ => bail!("`inspect_tool` is \"look\", \"measure\" or \"region\""),
        }),
        "video_overlay" => Step::VideoOverlay(match arg.as_str() {
            Some("none") => VideoOverlay::None,
            Some("depth") => VideoOverlay::Depth,
            Some("confidence") => VideoOverlay::Confidence,
            Some("covered") => VideoOverlay::Covered,
            _ => bail!("`video_overlay` is \"none\", \"depth\", \"confidence\" or \"covered\""),
        }),
        "dump_state" => Step::DumpState(PathBuf::from(
            arg.as_str().context("`dump_state` takes a path")?,
        )),
        "quit" => Step::Quit,
        other => bail!(
            "unknown step `{other}` (known: open, seek, select_camera, look_through, reset_view, set, wait_frames, wait_idle, screenshot, ask, cancel_answer, load_weights, export, save_state, open_eval_run, eval_filter, select_question, reconstruct, wait_reconstructing, cancel_reconstruction, set_device, hover, pin, set_scale, clear_pins, select_region, clear_region, inspect_tool, video_overlay, wait_for_file, dump_state, quit)"
        ),
    })
}

/// Applies `set` to the view settings and player; the names are the ones the README lists.
pub fn apply_control(control: &str, value: &Value, settings: &mut ViewSettings, player: &mut Player, sampler: &mut SamplerSettings, vggt: &mut VggtState, chat: &mut ChatSettings) -> Result<()> {
    let num = || value.as_f64().with_context(|| format!("`{control}` takes a number, got {value}"));
    let flag = || value.as_bool().with_context(|| format!("`{control}` takes true or false, got {value}"));
    match control {
        "point_size" => settings.point_size = num()?.clamp(1.0, 64.0) as f32,
        "conf_percentile" => settings.conf_percentile = num()?.clamp(0.0, 100.0) as f32,
        "color_mode" => {
            settings.color_mode = match value {
                Value::String(s) => ColorMode::parse(s).with_context(|| format!("unknown colour mode `{s}` (known: {:?})", ColorMode::ALL.map(|m| m.name())))?,
                _ => ColorMode::ALL[(num()? as usize).min(ColorMode::ALL.len() - 1)],
            }
        }
        "frame_filter" => {
            settings.frame_filter = match value {
                Value::String(s) if s == "all" => None,
                _ => Some(num()? as usize),
            }
        }
        "show_cameras" => settings.show_cameras = flag()?,
        "cameras" => {
            settings.cameras = match value {
                Value::String(s) if s == "all" => CameraSubset::All,
                Value::String(s) if s == "picks" => CameraSubset::Picks,
                _ => CameraSubset::EveryNth((num().context("`cameras` is \"all\", \"picks\" or N (every N-th)")? as usize).max(1)),
            }
        }
        "camera_scale" => settings.camera_scale = num()?.clamp(0.05, 20.0) as f32,
        "point_budget" => settings.point_budget = (num()? as usize).max(1000),
        "point_source" => {
            settings.source = match value.as_str() {
                Some("depth") => PointSource::DepthAndCamera,
                Some("pointmap") => PointSource::PointMap,
                _ => bail!("`point_source` is \"depth\" or \"pointmap\""),
            }
        }
        "sampler" => {
            sampler.mode = match value.as_str() {
                Some("uniform") => SamplerMode::Uniform,
                Some("space-aware") => SamplerMode::SpaceAware,
                _ => bail!("`sampler` is \"uniform\" or \"space-aware\""),
            }
        }
        "k" => sampler.k = (num()? as usize).max(1),
        "sample_conf_percentile" => sampler.conf_percentile = num()?.clamp(0.0, 99.0),
        "compare_uniform" => sampler.compare_uniform = flag()?,
        "vggt_frames" => vggt.frames = (num()? as usize).clamp(1, 512),
        "vggt_width" => {
            let w = num()? as usize;
            if w == 0 || w % 14 != 0 {
                bail!("`vggt_width` is a multiple of 14 (upstream: 518), got {w}");
            }
            vggt.width = w;
        }
        "playing" => player.playing = flag()?,
        "speed" => player.speed = num()?.clamp(0.05, 8.0) as f32,
        "question_format" => {
            chat.format = match value.as_str() {
                Some("free") => AnswerFormat::Free,
                Some("numeric") => AnswerFormat::Numeric,
                Some("mc") => AnswerFormat::MultipleChoice,
                _ => bail!("`question_format` is \"free\", \"numeric\" or \"mc\""),
            }
        }
        "question_options" => chat.options = value.as_str().context("`question_options` takes the options, one per line")?.to_string(),
        "question_frames" => {
            chat.frame_choice = match value {
                Value::String(s) if s == "sampled" => FrameChoice::Sampled,
                _ => {
                    chat.frames = (num()? as usize).max(1);
                    FrameChoice::Uniform
                }
            }
        }
        "spatial" => chat.use_spatial = flag()?,
        "max_new_tokens" => chat.max_new_tokens = (num()? as usize).max(1),
        "temperature" => chat.temperature = num()?.max(0.0),
        other => bail!("unknown control `{other}` (known: point_size, color_mode, conf_percentile, frame_filter, show_cameras, cameras, camera_scale, point_budget, point_source, sampler, k, sample_conf_percentile, compare_uniform, vggt_frames, vggt_width, playing, speed, question_format, question_options, question_frames, spatial, max_new_tokens, temperature)"),
    }
    Ok(())
}

#[derive(Resource)]
struct ScriptRunner {
    steps: Vec<Step>,
    next: usize,
    /// Frames and seconds spent in the current step.
    frames_in_step: u32,
    started: f32,
    screenshot_sent: bool,
    status_before: String,
}

/// Seconds after start-up before the first screenshot: pipelines compile asynchronously and an
/// early frame is black.
const WARMUP_SECS: f32 = 2.5;

#[allow(clippy::too_many_arguments)]
fn run_script(
    runner: Option<ResMut<ScriptRunner>>,
    time: Res<Time<Real>>,
    (activity, status, geometry, opened): (Res<Activity>, Res<StatusLine>, Res<Geometry>, Res<Opened>),
    mut settings: ResMut<ViewSettings>,
    mut player: ResMut<Player>,
    (mut chat, mut sampler, sampled, mut vggt): (ResMut<ChatState>, ResMut<SamplerSettings>, Res<SampledFrames>, ResMut<VggtState>),
    (mut open, mut seek, mut load_vggt, mut reconstruct, mut set_compute): (MessageWriter<OpenRequest>, MessageWriter<SeekRequest>, MessageWriter<LoadVggt>, MessageWriter<Reconstruct>, MessageWriter<SetCompute>),
    (mut load_mllm, mut asks, mut cancels, mut export, mut cancel_run): (MessageWriter<LoadMllm>, MessageWriter<AskQuestion>, MessageWriter<CancelAnswer>, MessageWriter<ExportRequest>, MessageWriter<CancelReconstruction>),
    (mut shots, mut save): (MessageWriter<ScreenshotRequest>, MessageWriter<SaveState>),
    mut camera: MessageWriter<CameraCommand>,
    mut exit: MessageWriter<AppExit>,
    views: Query<(&Camera, &GlobalTransform), With<Camera3d>>,
    frustums: Query<&super::scene::Frustum>,
    (orbit, look): (Res<super::camera::OrbitCamera>, Res<LookThrough>),
    (mut browser, mut question_frames, mut eval_runs): (
        ResMut<super::results::ResultsBrowser>,
        ResMut<QuestionFrames>,
        MessageWriter<OpenEvalRun>,
    ),
    (mut inspection, mut pick_query, pick_results, video_panel): (
        ResMut<Inspection>,
        ResMut<super::picking::PickQuery>,
        Res<super::picking::PickResults>,
        Res<VideoPanel>,
    ),
) {
    let Some(mut r) = runner else { return };
    let now = time.elapsed_secs();
    let Some(step) = r.steps.get(r.next).cloned() else { return };
    if r.frames_in_step == 0 {
        r.started = now;
        r.status_before = status.message.clone();
        eprintln!("script: step {} {:?}", r.next + 1, step);
    }
    r.frames_in_step += 1;
    let waited = now - r.started;
    let first = r.frames_in_step == 1;
    // A playing video always has a frame on its way: its decoding is not work to wait for.
    let idle = activity.is_idle() || (player.playing && activity.is_idle_but_decoding());
    // Steps that hand work to a background thread finish once it is idle again, and fail if the
    // work reported an error meanwhile.
    let settled = |busy: bool, limit_s: f32, what: &str| -> Outcome {
        if r.frames_in_step < 3 || busy {
            if waited > limit_s { Outcome::Fail(format!("{what} took more than {limit_s} s")) } else { Outcome::Wait }
        } else if status.is_error && status.message != r.status_before {
            Outcome::Fail(status.message.clone())
        } else {
            Outcome::Done
        }
    };
    let outcome = match &step {
        Step::Open(p) => {
            let spec = SourceSpec::parse(p);
            if first {
                open.write(OpenRequest(spec));
                Outcome::Wait
            } else {
                // Done once the source is open; what follows (reconstructing) is `wait_idle`'s.
                match &opened.last_result {
                    Some((s, Err(e))) if *s == spec => Outcome::Fail(e.clone()),
                    Some((s, Ok(()))) if *s == spec && activity.opening == 0 => settled(false, 600.0, "opening"),
                    _ if waited > 600.0 => Outcome::Fail("opening took more than 600 s".into()),
                    _ => Outcome::Wait,
                }
            }
        }
        Step::LoadWeights { vggt: vggt_dir, mllm } => {
            if first {
                if let Some(dir) = vggt_dir {
                    load_vggt.write(LoadVggt(dir.display().to_string()));
                }
                if let Some(dir) = mllm {
                    load_mllm.write(LoadMllm(dir.display().to_string()));
                }
                Outcome::Wait
            } else {
                settled(activity.vggt > 0 || chat.loading, 600.0, "loading the weights")
            }
        }
        Step::Export(path) => match (&geometry.scene, first) {
            (None, _) => Outcome::Fail("nothing to export: no geometry is loaded".into()),
            (Some(_), true) => {
                export.write(ExportRequest { path: path.clone(), format: None });
                Outcome::Wait
            }
            (Some(_), false) => settled(activity.jobs > 0, 600.0, "exporting"),
        },
        Step::SaveState(path) => {
            if first {
                save.write(SaveState(path.clone()));
                Outcome::Wait
            } else {
                settled(activity.jobs > 0, 600.0, "saving the state")
            }
        }
        Step::OpenEvalRun { path, compare } => {
            if first {
                eval_runs.write(OpenEvalRun { path: path.clone(), compare: compare.clone() });
                Outcome::Wait
            } else if r.frames_in_step < 3 || browser.is_loading() {
                if waited > 120.0 { Outcome::Fail("reading the run took more than 120 s".into()) } else { Outcome::Wait }
            } else {
                match &browser.error {
                    Some(e) => Outcome::Fail(e.clone()),
                    None => Outcome::Done,
                }
            }
        }
        Step::EvalFilter { task, correctness, search } => {
            browser.task = task.clone();
            browser.correctness = super::results::Correctness::ALL.into_iter().find(|c| c.name() == correctness).unwrap_or_default();
            browser.search = search.clone();
            Outcome::Done
        }
        Step::SelectQuestion(row) => {
            if first {
                match super::results::select(&mut browser, format!("row {row}"), &opened, &mut open, &mut question_frames) {
                    Ok(()) => Outcome::Wait,
                    Err(e) => Outcome::Fail(e),
                }
            } else {
                let mine = question_frames.0.as_ref().is_some_and(|(id, _, _)| *id == opened.id);
                if mine && r.frames_in_step > 3 && activity.opening == 0 {
                    Outcome::Done
                } else if waited > 120.0 {
                    Outcome::Fail(format!("the video of row {row} did not open within 120 s"))
                } else {
                    Outcome::Wait
                }
            }
        }
        Step::Reconstruct { wait } => {
            if first {
                reconstruct.write(Reconstruct);
                Outcome::Wait
            } else {
                settled(*wait && activity.vggt > 0, 3600.0, "reconstructing")
            }
        }
        Step::SetDevice { device, dtype } => {
            if first {
                match (device.parse(), dtype.parse()) {
                    (Ok(d), Ok(t)) => {
                        set_compute.write(SetCompute(d, t));
                        Outcome::Wait
                    }
                    _ => Outcome::Fail(format!("`set_device`: unknown device {device} or dtype {dtype}")),
                }
            } else {
                // A device that cannot be had is reported in the status bar and dump_state; the
                // step itself succeeds once the threads settled.
                if r.frames_in_step < 3 || !activity.is_idle() { Outcome::Wait } else { Outcome::Done }
            }
        }
        Step::Seek(f) | Step::SelectCamera(f) => {
            if player.frame_count == 0 || *f >= player.frame_count {
                Outcome::Fail(format!("frame {f} is out of range (the source has {} frames)", player.frame_count))
            } else {
                if first {
                    seek.write(SeekRequest(*f));
                }
                match &player.frame_error {
                    // The panel keeps the last good frame; the step says the truth.
                    Some((e, why)) if e == f && player.current == *f => Outcome::Fail(format!("frame {f} cannot be shown: {why}")),
                    _ if player.current == *f && player.shows_current() => Outcome::Done,
                    _ if waited > 60.0 => Outcome::Fail(format!("frame {f} was not shown within 60 s")),
                    _ => Outcome::Wait,
                }
            }
        }
        Step::LookThrough(f) => {
            if geometry.scene.is_none() {
                Outcome::Fail(format!("no camera for frame {f}: no geometry is shown"))
            } else {
                // Looking through follows the video: the frame becomes the current one.
                seek.write(SeekRequest(*f));
                camera.write(CameraCommand::LookThrough(*f));
                Outcome::Done
            }
        }
        Step::ResetView => {
            camera.write(CameraCommand::Reset);
            Outcome::Done
        }
        Step::Set { control, value } => match apply_control(control, value, &mut settings, &mut player, &mut sampler, &mut vggt, &mut chat.settings) {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Fail(format!("{e:#}")),
        },
        Step::WaitFrames(n) => Outcome::done_if(r.frames_in_step > *n),
        Step::WaitIdle(max) => {
            if idle && r.frames_in_step > 2 {
                Outcome::Done
            } else if waited > *max {
                Outcome::Fail(format!("background work still running after {max} s"))
            } else {
                Outcome::Wait
            }
        }
        Step::Screenshot(path) => {
            if !r.screenshot_sent {
                if let Err(e) = crate::pipeline::fsio::check_writable(path) {
                    Outcome::Fail(format!("screenshot: {e:#}"))
                } else {
                    if now >= WARMUP_SECS && r.frames_in_step > 5 && idle {
                        // An older file of that name must not pass for the new screenshot.
                        let _ = std::fs::remove_file(path);
                        shots.write(ScreenshotRequest(path.clone()));
                        r.screenshot_sent = true;
                        r.started = now;
                        r.status_before = status.message.clone();
                    }
                    Outcome::Wait
                }
            } else if status.is_error && status.message != r.status_before && status.message.starts_with("screenshot") {
                r.screenshot_sent = false;
                Outcome::Fail(status.message.clone())
            } else if std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false) {
                r.screenshot_sent = false;
                Outcome::Done
            } else if waited > 30.0 {
                Outcome::Fail(format!("{}: the screenshot was not written within 30 s", path.display()))
            } else {
                Outcome::Wait
            }
        }
        Step::CancelReconstruction => {
            if first {
                cancel_run.write(CancelReconstruction);
                Outcome::Wait
            } else {
                settled(activity.vggt > 0, 5.0, "cancelling the reconstruction")
            }
        }
        Step::WaitReconstructing => {
            if vggt.progress.as_ref().is_some_and(|p| p.stage.starts_with("VGGT on")) {
                Outcome::Done
            } else if waited > 60.0 {
                Outcome::Fail("VGGT did not start reconstructing within 60 s".into())
            } else {
                Outcome::Wait
            }
        }
        Step::WaitForFile(path) => {
            if path.exists() {
                Outcome::Done
            } else if waited > 60.0 {
                Outcome::Fail(format!("{} did not appear within 60 s", path.display()))
            } else {
                Outcome::Wait
            }
        }
        Step::DumpState(path) => match views.single() {
            Err(_) => Outcome::Fail("no 3D camera".into()),
            Ok((camera, transform)) => {
                // Bevy's "viewport" coordinates are the window's (logical pixels).
                let project = |p: Vec3| camera.world_to_viewport(transform, p).ok().map(|v| [v.x, v.y]);
                let mut list: Vec<_> = frustums.iter().collect();
                list.sort_by_key(|f| f.frame);
                let shown_rows = browser.shown().to_vec();
                // What inspecting shows (its own object: one json! would pass the macro recursion limit).
                let inspected = serde_json::json!({
                    "hovered": inspection.hovered.map(|h| serde_json::json!({
                        "position": h.point.position,
                        "frame": h.point.frame,
                        "pixel": h.point.pixel,
                        "confidence": h.point.confidence,
                        "depth": h.point.depth,
                        "percentile": h.percentile,
                        "source_frame": h.source_frame,
                        "from": match h.from { HoverFrom::View3d => "3d", HoverFrom::Video => "video" },
                        "first_pick": h.coverage.and_then(|c| c.0),
                        "picks_seeing": h.coverage.map(|c| c.1),
                        "window": project(Vec3::from(super::cloud::to_view(h.point.position))),
                    })),
                    "pins": inspection.measuring.pins.iter().map(|p| serde_json::json!({"position": p.position, "frame": p.frame, "pixel": p.pixel, "window": project(Vec3::from(super::cloud::to_view(p.position)))})).collect::<Vec<_>>(),
                    "measurements": inspection.measuring.measurements().iter().map(|m| serde_json::json!({"from": m.from, "to": m.to, "length": m.length, "metres": m.metres})).collect::<Vec<_>>(),
                    "scale": inspection.measuring.scale,
                    "region": inspection.region.as_ref().map(|sel| {
                        let picks: Vec<usize> = sel.region.frames.iter().zip(&sel.source_frames).filter(|(_, s)| sampled.frames.contains(s)).map(|(g, _)| *g).collect();
                        serde_json::json!({"frames": sel.region.frames, "sampled_frames": picks, "source_frames": sel.source_frames, "points": sel.region.points.len(), "label": sel.region.label})
                    }),
                    "inspect_tool": format!("{:?}", inspection.tool).to_lowercase(),
                    "video_panel": video_panel.rect.map(|(min, max)| serde_json::json!({"rect": [min.x, min.y, max.x - min.x, max.y - min.y], "frame": video_panel.frame})),
                });
                let json = serde_json::json!({
                    "frame": player.current,
                    "playing": player.playing,
                    "frame_count": player.frame_count,
                    "scrub_previews": player.previews.len(),
                    "decoded_frames": player.cached_frames(),
                    "shown": player.shown.as_ref().map(|(i, f)| serde_json::json!({"frame": i, "preview": player.shown_is_preview, "width": f.width, "height": f.height})),
                    "geometry": geometry.scene.as_ref().map(|s| serde_json::json!({"label": s.label, "frames": s.rec.frames, "width": s.rec.width, "height": s.rec.height, "points": s.cloud.points.len(), "frame_indices": s.rec.frame_indices, "source_frames": s.source_frames, "source": s.source_id.0})),
                    "sampled": sampled.frames,
                    "sampled_label": sampled.label,
                    "compare": sampled.compare,
                    "model": chat.model.clone(),
                    "model_load_error": chat.load_error,
                    "vggt": vggt.weights.clone(),
                    "vggt_progress": vggt.progress.as_ref().map(|p| serde_json::json!({"stage": p.stage, "fraction": p.fraction})),
                    "vggt_last_run": vggt.last_run,
                    "vggt_last_error": vggt.last_error,
                    "compute": {"vggt": vggt.compute, "vggt_note": vggt.compute_note, "chat": chat.compute, "chat_note": chat.compute_note},
                    "status": {"message": status.message, "error": status.is_error},
                    "source": opened.source.as_ref().map(|s| serde_json::json!({"name": s.name(), "frames": s.len(), "id": opened.id.0})),
                    "frame_error": player.frame_error.as_ref().map(|(f, e)| serde_json::json!({"frame": f, "error": e})),
                    "chat": chat.messages.iter().map(|m| serde_json::json!({"from_user": m.from_user, "text": m.text, "state": m.state.name(), "frames": m.frames, "note": m.note})).collect::<Vec<_>>(),
                    "viewport": camera.logical_viewport_rect().map(|r| [r.min.x, r.min.y, r.width(), r.height()]),
                    "view": {"focus": orbit.focus.to_array(), "yaw": orbit.yaw, "pitch": orbit.pitch, "distance": orbit.distance, "fov_y": orbit.fov_y, "position": transform.translation().to_array()},
                    "look_through": look.0,
                    "relocating": opened.relocating,
                    "eval": browser.run.as_ref().map(|run| serde_json::json!({
                        "run": run.dir,
                        "results": run.results.len(),
                        "compare": browser.compare.as_ref().map(|c| c.dir.clone()),
                        "shown": shown_rows.iter().map(|&i| crate::pipeline::eval::browse::RunSummary::key(&run.results[i])).collect::<Vec<_>>(),
                        "selected": browser.selected,
                        "rows": browser.row_rects.iter().map(|(k, r)| serde_json::json!({"key": k, "rect": r})).collect::<Vec<_>>(),
                        "window_open": browser.open,
                        "window_rect": browser.window_rect,
                    })),
                    "frustums": list.iter().map(|f| serde_json::json!({
                        "frame": f.frame,
                        "source_frame": f.source_frame,
                        "shown": settings.show_cameras && look.0.is_none() && settings.cameras.shows(f.frame, f.source_frame, player.current, &sampled.frames),
                        "center": project(f.center),
                        "corners": f.scaled_corners(settings.camera_scale).iter().map(|c| project(*c)).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                });
                let mut json = json;
                if let (Some(all), serde_json::Value::Object(more)) =
                    (json.as_object_mut(), inspected)
                {
                    all.extend(more);
                }
                match std::fs::write(path, json.to_string()) {
                    Ok(()) => Outcome::Done,
                    Err(e) => Outcome::Fail(format!("{}: cannot write ({e})", path.display())),
                }
            }
        },
        Step::Ask { question, wait } => {
            if first {
                asks.write(AskQuestion(question.clone()));
                Outcome::Wait
            } else if r.frames_in_step < 3 {
                Outcome::Wait
            } else {
                let answer = chat.messages.last().filter(|m| !m.from_user).cloned();
                match answer {
                    None => Outcome::Fail("the question got no answer".into()),
                    Some(a) if a.state == AnswerState::Failed && *wait => Outcome::Fail(format!("the answer failed: {}", a.text)),
                    Some(a) if a.state == AnswerState::Streaming && (*wait || a.text.is_empty()) => {
                        if waited > 600.0 { Outcome::Fail("the answer took more than 600 s".into()) } else { Outcome::Wait }
                    }
                    Some(_) => Outcome::Done,
                }
            }
        }
        Step::CancelAnswer => {
            if first {
                cancels.write(CancelAnswer);
            }
            if !chat.answering && r.frames_in_step > 1 {
                Outcome::Done
            } else if waited > 5.0 {
                Outcome::Fail("the answer was still running 5 s after cancelling".into())
            } else {
                Outcome::Wait
            }
        }
        Step::Hover(xy) => {
            if first {
                inspection.script_hover = Some(Vec2::from(*xy));
                // Pick again even where the cursor already was.
                pick_query.serial += 1;
                Outcome::Wait
            } else if pick_results
                .last
                .is_some_and(|p| p.serial == pick_query.serial)
                && r.frames_in_step > 2
            {
                Outcome::Done
            } else if geometry.scene.is_none() {
                Outcome::Fail("nothing to hover: no geometry is shown".into())
            } else if waited > 20.0 {
                Outcome::Fail(format!("the pick at {xy:?} gave no result within 20 s"))
            } else {
                Outcome::Wait
            }
        }
        Step::Pin(target) => {
            let result = match target {
                Some((frame, [x, y])) => {
                    super::inspect::pin_sample(&mut inspection, &geometry, *frame, *x, *y)
                }
                None => match inspection.hovered {
                    Some(h) => {
                        inspection
                            .measuring
                            .pins
                            .push(crate::pipeline::inspect::Pin {
                                position: h.point.position,
                                frame: Some(h.point.frame),
                                pixel: Some(h.point.pixel),
                            });
                        Ok(())
                    }
                    None => Err("no point is hovered".to_string()),
                },
            };
            match result {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Fail(format!("pin: {e}")),
            }
        }
        Step::SetScale(m) => match inspection.measuring.set_scale(*m) {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Fail(format!("set_scale: {e}")),
        },
        Step::ClearPins => {
            inspection.measuring.pins.clear();
            Outcome::Done
        }
        Step::ClearRegion => {
            inspection.region = None;
            Outcome::Done
        }
        Step::SelectRegion(choice) => {
            let result = match choice {
                RegionChoice::Rect { frame, rect } => {
                    super::inspect::select_rect(&mut inspection, &geometry, *frame, *rect)
                }
                RegionChoice::Box { min, max } => {
                    let centre = [0, 1, 2].map(|a| (min[a] + max[a]) / 2.0);
                    let half = (0..3)
                        .map(|a| (max[a] - min[a]).abs() / 2.0)
                        .fold(0.0, f32::max);
                    super::inspect::select_box(&mut inspection, &geometry, &settings, centre, half)
                }
            };
            match result {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Fail(format!("select_region: {e}")),
            }
        }
        Step::InspectTool(t) => {
            inspection.tool = *t;
            Outcome::Done
        }
        Step::VideoOverlay(o) => {
            inspection.overlay = *o;
            Outcome::Done
        }
        Step::Quit => {
            exit.write(AppExit::Success);
            Outcome::Done
        }
    };
    match outcome {
        Outcome::Wait => {}
        Outcome::Done => {
            r.next += 1;
            r.frames_in_step = 0;
        }
        Outcome::Fail(msg) => {
            eprintln!("script: step {} ({:?}) failed: {msg}", r.next + 1, step);
            exit.write(AppExit::error());
            // Stop here: later steps must not run after a failure.
            r.next = r.steps.len();
        }
    }
}

/// What a step did this frame.
enum Outcome {
    Wait,
    Done,
    Fail(String),
}

impl Outcome {
    fn done_if(done: bool) -> Self {
        if done { Outcome::Done } else { Outcome::Wait }
    }
}

fn start(mut commands: Commands, opts: Res<StartupOptions>) {
    if let Some(path) = &opts.script {
        match Script::load(path) {
            Ok(s) => commands.insert_resource(ScriptRunner { steps: s.steps, next: 0, frames_in_step: 0, started: 0.0, screenshot_sent: false, status_before: String::new() }),
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
}

pub struct ScriptPlugin;

impl Plugin for ScriptPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Startup, start).add_systems(Last, run_script);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_step_and_rejects_unknown_ones() {
        let s = Script::parse(r#"{"steps": [{"open": "demo"}, {"seek": 3}, {"select_camera": 4}, {"set": {"control": "point_size", "value": 5}},
            {"wait_frames": 2}, {"wait_idle": 10}, {"screenshot": "a.png"}, {"ask": "how far?"}, {"quit": true}]}"#)
        .unwrap();
        assert_eq!(s.steps.len(), 9);
        assert_eq!(s.steps[1], Step::Seek(3));
        let err = format!("{:#}", Script::parse(r#"{"steps": [{"open": "demo"}, {"fly": 1}]}"#).unwrap_err());
        assert!(err.contains("step 2") && err.contains("unknown step `fly`"), "{err}");
        assert!(Script::parse("{").is_err());
        let s = Script::parse(r#"{"steps": [{"hover": [10, 20.5]}, {"pin": {"frame": 2, "pixel": [3, 4]}}, {"pin": "hovered"}, {"set_scale": 1.5},
            {"select_region": {"frame": 1, "rect": [0, 0, 5, 5]}}, {"select_region": {"box": {"min": [0, 0, 0], "max": [1, 1, 1]}}}, {"clear_pins": true},
            {"clear_region": true}, {"inspect_tool": "measure"}, {"video_overlay": "covered"}]}"#)
        .unwrap();
        assert_eq!(s.steps[1], Step::Pin(Some((2, [3, 4]))));
        assert_eq!(
            s.steps[4],
            Step::SelectRegion(RegionChoice::Rect {
                frame: 1,
                rect: [0, 0, 5, 5]
            })
        );
        for (bad, says) in [
            (r#"{"set_scale": -1}"#, "positive length"),
            (r#"{"set_scale": "big"}"#, "length in metres"),
            (r#"{"pin": {"frame": 1}}"#, "pixel is [X, Y]"),
            (r#"{"hover": [1]}"#, "window pixel"),
            (
                r#"{"select_region": {"frame": 1, "rect": [0, 0, 1]}}"#,
                "rect is [X0, Y0, X1, Y1]",
            ),
            (r#"{"inspect_tool": "lasso"}"#, "look"),
        ] {
            let err = format!(
                "{:#}",
                Script::parse(&format!(r#"{{"steps": [{bad}]}}"#)).unwrap_err()
            );
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn controls_are_validated() {
        let mut settings = ViewSettings::default();
        let mut player = Player::default();
        let mut sampler = SamplerSettings::default();
        let mut vggt = VggtState::default();
        let mut chat = ChatSettings::default();
        apply_control("color_mode", &Value::from("depth"), &mut settings, &mut player, &mut sampler, &mut vggt, &mut chat).unwrap();
        assert_eq!(settings.color_mode, ColorMode::Depth);
        apply_control("frame_filter", &Value::from("all"), &mut settings, &mut player, &mut sampler, &mut vggt, &mut chat).unwrap();
        assert_eq!(settings.frame_filter, None);
        assert!(apply_control("brightness", &Value::from(1), &mut settings, &mut player, &mut sampler, &mut vggt, &mut chat).is_err());
        assert!(apply_control("point_size", &Value::from("big"), &mut settings, &mut player, &mut sampler, &mut vggt, &mut chat).is_err());
        assert!(apply_control("vggt_width", &Value::from(300), &mut settings, &mut player, &mut sampler, &mut vggt, &mut chat).is_err());
    }
}
