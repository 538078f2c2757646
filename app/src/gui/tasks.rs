//! Background work that is not a model: opening sources (probing videos, scanning folders, building
//! the demo scene, reading saved geometry), building point clouds, voxel sets and colours, exports,
//! on a worker thread; frame decoding on a decoder thread. The UI never waits on them; a panic
//! inside a job is caught and reported, and the thread lives on.

use super::cloud::{PointCloudBuffers, PointInstance, build_cloud};
use super::state::*;
use crate::pipeline::export::{ExportFormat, export};
use crate::pipeline::points::{PointFilter, PointSource};
use crate::pipeline::source::{Source, SourceId, SourceSpec};
use crate::pipeline::threads::{Ctx, ServiceThread, panic_message};
use crate::pipeline::video::DISPLAY_MAX_WIDTH;
use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender, unbounded};
use spatial_models::reconstruction::Reconstruction;
use spatial_models::sampling::{SamplingParams, VoxelSets};
use spatial_models::vggt::preprocess::RgbFrame;
use std::path::PathBuf;
use std::sync::Arc;

/// A frame the player wants: an image file, or frame N of a video.
#[derive(Clone)]
pub enum FrameRef {
    Image(PathBuf),
    Video(Arc<crate::pipeline::video::VideoInfo>, usize),
}

/// Work for the worker thread.
pub enum Job {
    Open(SourceSpec),
    /// A saved state, with its source at `relocated` when it moved.
    OpenState { state: PathBuf, relocated: Option<PathBuf> },
    /// A point cloud for geometry of a source.
    BuildScene { label: String, rec: Arc<Reconstruction>, source_id: SourceId, source_frames: Vec<usize>, budget: usize, point_source: PointSource },
    /// A synthetic cloud of N points (for `bench render`).
    Synthetic(usize),
    Export { rec: Arc<Reconstruction>, format: ExportFormat, filter: PointFilter, picks: Vec<usize>, path: PathBuf },
    /// A saved state: the viewer's JSON and the geometry to embed.
    SaveState { path: PathBuf, state: serde_json::Value, source: Source, rec: Option<Arc<Reconstruction>> },
    /// Space-aware sampling's voxel sets for the point map of a geometry.
    VoxelSets { rec: Arc<Reconstruction>, params: SamplingParams },
    /// The cloud recoloured by the space-aware pick that first covered each point's voxel.
    CoverageColours { cloud: Arc<PointCloudBuffers>, sets: Arc<VoxelSets>, picks: Vec<(usize, usize)>, key: u64 },
}

enum JobOutput {
    Opened(SourceSpec, Source, Option<Arc<Restore>>),
    /// A saved state whose source is missing: (state file, message).
    SourceMissing(SourceSpec, PathBuf, String),
    Scene(Arc<LoadedScene>),
    Exported(String),
    Voxels(Result<Arc<VoxelSets>, String>, usize),
    Coverage(Arc<PointCloudBuffers>, u64),
    Failed(String),
    /// A failed open (counted apart: opening has its own activity counter).
    OpenFailed(SourceSpec, String),
}

/// Handle to the worker and decoder threads.
#[derive(Resource)]
pub struct Worker {
    worker: ServiceThread<Job, JobOutput>,
    decode_requests: Option<Sender<(usize, FrameRef)>>,
    decoded: Receiver<Decoded>,
    decoder: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the decoder after the frame it is on (milliseconds).
        self.decode_requests = None;
        if let Some(h) = self.decoder.take() {
            let _ = h.join();
        }
    }
}

impl Worker {
    pub fn submit(&mut self, activity: &mut Activity, job: Job) {
        if matches!(job, Job::Open(_) | Job::OpenState { .. }) {
            activity.opening += 1;
        } else {
            activity.jobs += 1;
        }
        self.worker.send(job);
    }
    pub fn request_decode(&mut self, activity: &mut Activity, index: usize, frame: FrameRef) {
        activity.decodes += 1;
        if let Some(tx) = &self.decode_requests {
            let _ = tx.send((index, frame));
        }
    }
}

/// A point cloud for geometry of a source.
pub fn make_scene(label: String, rec: Arc<Reconstruction>, source_id: SourceId, source_frames: Vec<usize>, budget: usize, point_source: PointSource) -> LoadedScene {
    let (cloud, index, quantiles) = build_cloud(&rec, point_source, budget);
    LoadedScene { label, rec, source_id, source_frames, cloud: Arc::new(cloud), index, quantiles: Arc::new(quantiles), point_source }
}

fn run_job(job: Job) -> JobOutput {
    match job {
        Job::Open(SourceSpec::Path(p)) if crate::pipeline::state_file::is_state_path(&p) => open_state(SourceSpec::Path(p.clone()), &p, None),
        // Scripts and the UI wait for what they asked to open: the moved source's path.
        Job::OpenState { state, relocated } => open_state(SourceSpec::Path(relocated.clone().unwrap_or_else(|| state.clone())), &state, relocated),
        Job::Open(spec) => match Source::open(&spec) {
            Ok(Source::Folder(f)) if f.mixed_sizes.is_some() => JobOutput::OpenFailed(spec, f.mixed_sizes.clone().unwrap_or_default()),
            Ok(s) => JobOutput::Opened(spec, s, None),
            Err(e) => JobOutput::OpenFailed(spec, format!("{e:#}")),
        },
        Job::BuildScene { label, rec, source_id, source_frames, budget, point_source } => JobOutput::Scene(Arc::new(make_scene(label, rec, source_id, source_frames, budget, point_source))),
        Job::Synthetic(n) => JobOutput::Scene(Arc::new(synthetic_scene(n))),
        // The source's fingerprint reads its files: here, not on the UI thread.
        Job::SaveState { path, mut state, source, rec } => match crate::pipeline::state_file::source_record(&source).and_then(|record| {
            state["source"] = record;
            crate::pipeline::state_file::write(&path, &state, rec.as_deref())
        }) {
            Ok(()) => JobOutput::Exported(format!("saved the state to {}", path.display())),
            Err(e) => JobOutput::Failed(format!("{}: cannot save the state: {e:#}", path.display())),
        },
        Job::Export { rec, format, filter, picks, path } => match export(&rec, format, &filter, &picks, &path) {
            Ok(msg) => JobOutput::Exported(msg),
            Err(e) => JobOutput::Failed(format!("{e:#}")),
        },
        Job::VoxelSets { rec, params } => {
            let key = Arc::as_ptr(&rec) as usize;
            JobOutput::Voxels(VoxelSets::build(&rec.world_points, &rec.world_points_conf, rec.frames, &params).map(Arc::new).map_err(|e| format!("space-aware sampling: {e:#}")), key)
        }
        Job::CoverageColours { cloud, sets, picks, key } => JobOutput::Coverage(Arc::new(coverage_colours(&cloud, &sets, &picks)), key),
    }
}

/// Reads a saved state and opens its source (at `relocated` when it moved).
fn open_state(spec: SourceSpec, path: &std::path::Path, relocated: Option<PathBuf>) -> JobOutput {
    let loaded = match crate::pipeline::state_file::read(path) {
        Ok(l) => l,
        Err(e) => return JobOutput::OpenFailed(spec, format!("{e:#}")),
    };
    let mut warning = loaded.source_problem.clone();
    let source_spec = match relocated {
        Some(p) => {
            // The file at its new place is checked against the saved fingerprint too.
            warning = match crate::pipeline::state_file::fingerprint(&p) {
                Ok(f) if Some(f.as_str()) == loaded.state["source"]["fingerprint"].as_str() => None,
                Ok(_) => Some(format!("{}: not the content the state was saved with (edited, re-encoded, or another file)", p.display())),
                Err(e) => Some(format!("{e:#}")),
            };
            SourceSpec::Path(p)
        }
        None => {
            if let Some(problem) = loaded.source_problem.as_ref().filter(|_| matches!(&loaded.source, SourceSpec::Path(p) if !p.exists())) {
                return JobOutput::SourceMissing(spec, path.to_path_buf(), problem.clone());
            }
            loaded.source.clone()
        }
    };
    let source = match Source::open(&source_spec) {
        Ok(s) => s,
        Err(e) => return JobOutput::OpenFailed(spec, format!("{}: its source: {e:#}", path.display())),
    };
    if let Some(rec) = &loaded.rec {
        if let Err(e) = source.frames_of(rec) {
            return JobOutput::OpenFailed(spec, format!("{}: the geometry does not fit {} ({e:#})", path.display(), source.name()));
        }
    }
    let restore = Restore { state: loaded.state, rec: loaded.rec.map(Arc::new), path: path.to_path_buf(), warning };
    JobOutput::Opened(spec, source, Some(Arc::new(restore)))
}

/// The cloud recoloured for [`ColorMode::FirstCoveringPick`]: each point takes the colour of the
/// pick (in greedy order) that first covered its voxel; points in no picked frame's voxels, or in
/// no confident voxel at all, are dark grey.
pub fn coverage_colours(cloud: &PointCloudBuffers, sets: &VoxelSets, picks: &[(usize, usize)]) -> PointCloudBuffers {
    let first = sets.first_cover(picks);
    let palette: Vec<[u8; 3]> = (0..picks.len()).map(|r| pick_colour(r, picks.len())).collect();
    let points = cloud
        .points
        .iter()
        .map(|p| {
            // The cloud is in the viewer's axes; the voxels in the geometry's (OpenCV) ones.
            let world = super::cloud::to_view(p.position);
            let rgb = sets.voxel_of(world).and_then(|v| palette.get(first[v as usize] as usize)).copied().unwrap_or([60, 60, 64]);
            PointInstance { position: p.position, color_rank: [rgb[0], rgb[1], rgb[2], p.color_rank[3]] }
        })
        .collect();
    PointCloudBuffers {
        points,
        frame_starts: cloud.frame_starts.clone(),
        centers: cloud.centers.clone(),
        samples: cloud.samples.clone(),
    }
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

/// N points on a noisy shell, one frame, seen by one camera: the render benchmark's scene.
pub fn synthetic_scene(n: usize) -> LoadedScene {
    use spatial_models::vggt::Camera;
    let mut points = Vec::with_capacity(n);
    let golden = std::f32::consts::PI * (3.0 - 5f32.sqrt());
    for i in 0..n {
        let t = (i as f32 + 0.5) / n as f32;
        let y = 1.0 - 2.0 * t;
        let r = (1.0 - y * y).sqrt();
        let a = golden * i as f32;
        let shell = 1.0 + 0.15 * ((i % 13) as f32 / 13.0);
        points.push(PointInstance {
            position: [r * a.cos() * shell, y * shell, r * a.sin() * shell - 3.0],
            color_rank: [(128.0 + 127.0 * a.cos()) as u8, (255.0 * t) as u8, (255.0 * (1.0 - t)) as u8, 255 - (i * 255 / n.max(1)) as u8],
        });
    }
    let conf: Vec<f32> = (0..n).map(|i| 10.0 - 9.0 * i as f32 / n.max(1) as f32).collect();
    let camera = Camera { extrinsic: [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], intrinsic: [[100.0, 0.0, 64.0], [0.0, 100.0, 48.0], [0.0, 0.0, 1.0]] };
    let rec = Reconstruction {
        frames: 1,
        height: 96,
        width: 128,
        images: vec![128; 96 * 128 * 3],
        depth: vec![3.0; 96 * 128],
        depth_conf: vec![1.0; 96 * 128],
        world_points: vec![0.0; 96 * 128 * 3],
        world_points_conf: vec![1.0; 96 * 128],
        pose_enc: None,
        cameras: vec![camera],
        frame_indices: vec![0],
    };
    let quantiles = crate::pipeline::points::ConfidenceQuantiles::build(&conf);
    let index = super::cloud::CloudIndex {
        frame_conf: vec![conf],
        scene_scale: 2.3,
        extent: [2.3, 2.3, 0.35],
        depth_range: (1.8, 4.2),
        centers: vec![[0.0, 0.0, 0.0]],
    };
    let cloud = PointCloudBuffers {
        points,
        frame_starts: vec![0, n as u32],
        centers: vec![[0.0, 0.0, 0.0]],
        samples: (0..n as u32).collect(),
    };
    LoadedScene {
        label: format!("benchmark: {n} synthetic points"),
        rec: Arc::new(rec),
        source_id: SourceId("benchmark".into()),
        source_frames: vec![0],
        cloud: Arc::new(cloud),
        index,
        quantiles: Arc::new(quantiles),
        point_source: PointSource::DepthAndCamera,
    }
}

/// Decodes an image and scales it down to the display size.
pub fn decode_for_display(path: &std::path::Path) -> anyhow::Result<RgbFrame> {
    let frame = RgbFrame::open(path)?;
    if frame.width <= DISPLAY_MAX_WIDTH {
        return Ok(frame);
    }
    let h = (frame.height * DISPLAY_MAX_WIDTH / frame.width).max(1);
    frame.resize(DISPLAY_MAX_WIDTH, h)
}

/// What the decoder thread hands back: the frame asked for (or why not), or a frame decoded on the
/// way to it (for stepping backwards), which answers no request.
struct Decoded {
    index: usize,
    /// The file it came from (the video, or the folder's image).
    source: PathBuf,
    frame: Result<RgbFrame, String>,
    answers_request: bool,
}

/// Frames kept before a frame that needed a restart, once the user steps or scrubs backwards.
const DECODE_BEHIND: usize = 24;
/// Frames kept of those read on the way to a frame ahead (playback asks a few frames ahead).
const DECODE_AHEAD_KEPT: usize = 16;

fn spawn_decoder() -> (Sender<(usize, FrameRef)>, Receiver<Decoded>, std::thread::JoinHandle<()>) {
    let (dec_tx, dec_rx) = unbounded::<(usize, FrameRef)>();
    let (frame_tx, frame_rx) = unbounded();
    let handle = std::thread::Builder::new()
        .name("decoder".into())
        .spawn(move || {
            // One long-lived decoder for the open video (frame-exact seeks, cheap steps forward).
            let mut stream: Option<crate::pipeline::video::VideoStream> = None;
            // The video frame asked for last: a request just before it means stepping or
            // scrubbing backwards.
            let mut last_video_frame: Option<usize> = None;
            while let Ok(mut req) = dec_rx.recv() {
                // Scrubbing sends many requests: answer the skipped ones empty, decode the newest.
                while let Ok(newer) = dec_rx.try_recv() {
                    let _ = frame_tx.send(Decoded { index: req.0, source: PathBuf::new(), frame: Err(String::new()), answers_request: true });
                    req = newer;
                }
                let frame = req.1.clone();
                let source = match &frame {
                    FrameRef::Image(path) => path.clone(),
                    FrameRef::Video(info, _) => info.path.clone(),
                };
                let stream = &mut stream;
                let backwards = match &frame {
                    FrameRef::Video(_, n) => last_video_frame.replace(*n).is_some_and(|last| *n < last && last - n <= 2 * DECODE_BEHIND),
                    FrameRef::Image(_) => false,
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || match &frame {
                    FrameRef::Image(path) => decode_for_display(path).map(|f| vec![(0, f)]),
                    FrameRef::Video(info, n) => {
                        if stream.as_ref().is_none_or(|s| s.info.path != info.path) {
                            // Streams without per-frame timestamps fall back to one-pass decoding.
                            *stream = crate::pipeline::video::VideoStream::open((**info).clone(), Some(DISPLAY_MAX_WIDTH)).ok();
                        }
                        let one_pass = || info.decode(&[*n], Some(DISPLAY_MAX_WIDTH)).map(|mut v| vec![(*n, v.remove(0))]);
                        let frames = stream.as_mut().map(|s| if backwards { s.frame_with_preceding(*n, DECODE_BEHIND) } else { s.frames_through(*n, DECODE_AHEAD_KEPT) });
                        match frames {
                            Some(Ok(frames)) => Ok(frames),
                            // Containers whose timestamps do not seek exactly fall back to one pass.
                            Some(Err(_)) | None => one_pass(),
                        }
                    }
                }))
                .map_err(panic_message)
                .and_then(|r| r.map_err(|e| format!("{e:#}")));
                // The frames before the one asked for first, then the answer (last).
                let sent = match result {
                    Ok(mut frames) => {
                        let answer = frames.pop().map(|(_, f)| f).ok_or_else(|| "the decoder returned no frame".to_string());
                        frames.into_iter().all(|(index, f)| frame_tx.send(Decoded { index, source: source.clone(), frame: Ok(f), answers_request: false }).is_ok())
                            && frame_tx.send(Decoded { index: req.0, source, frame: answer, answers_request: true }).is_ok()
                    }
                    Err(e) => frame_tx.send(Decoded { index: req.0, source, frame: Err(e), answers_request: true }).is_ok(),
                };
                if !sent {
                    break;
                }
            }
        })
        .expect("spawn decoder thread");
    (dec_tx, frame_rx, handle)
}

pub(super) fn spawn_threads() -> Worker {
    let worker = ServiceThread::spawn("worker", (), |_: &mut (), job: Job, ctx: &Ctx<JobOutput>| ctx.send(run_job(job)), |m| JobOutput::Failed(format!("background job crashed: {m}")));
    let (dec_tx, decoded, handle) = spawn_decoder();
    Worker { worker, decode_requests: Some(dec_tx), decoded, decoder: Some(handle) }
}

/// A frame that failed to decode, for the player (it keeps the last good frame and says why).
#[derive(Message, Clone)]
pub struct DecodeFailed(pub usize, pub String);

#[allow(clippy::too_many_arguments)]
fn receive(
    worker: Res<Worker>,
    mut activity: ResMut<Activity>,
    mut status: ResMut<StatusLine>,
    mut open_state: ResMut<Opened>,
    mut opened: MessageWriter<SourceOpened>,
    mut scenes: MessageWriter<SceneLoaded>,
    mut frames: MessageWriter<FrameDecoded>,
    mut failed_frames: MessageWriter<DecodeFailed>,
    mut voxels: MessageWriter<VoxelsReady>,
    mut coverage: MessageWriter<CoverageReady>,
) {
    while let Ok(out) = worker.worker.events.try_recv() {
        match out {
            JobOutput::Opened(spec, s, restore) => {
                activity.opening = activity.opening.saturating_sub(1);
                open_state.last_result = Some((spec, Ok(())));
                open_state.relocating = None;
                opened.write(SourceOpened(s, restore));
            }
            JobOutput::SourceMissing(spec, state, problem) => {
                activity.opening = activity.opening.saturating_sub(1);
                open_state.last_result = Some((spec, Err(problem.clone())));
                open_state.relocating = Some(state);
                status.error(problem);
            }
            JobOutput::OpenFailed(spec, e) => {
                activity.opening = activity.opening.saturating_sub(1);
                open_state.last_result = Some((spec, Err(e.clone())));
                status.error(e);
            }
            other => {
                activity.jobs = activity.jobs.saturating_sub(1);
                match other {
                    JobOutput::Scene(s) => {
                        scenes.write(SceneLoaded(s));
                    }
                    JobOutput::Exported(msg) => status.info(msg),
                    JobOutput::Voxels(v, key) => {
                        voxels.write(VoxelsReady(v, key));
                    }
                    JobOutput::Coverage(cloud, key) => {
                        coverage.write(CoverageReady(cloud, key));
                    }
                    JobOutput::Failed(e) => status.error(e),
                    JobOutput::Opened(..) | JobOutput::OpenFailed(..) | JobOutput::SourceMissing(..) => unreachable!(),
                }
            }
        }
    }
    while let Ok(Decoded { index, source, frame: result, answers_request }) = worker.decoded.try_recv() {
        if answers_request {
            activity.decodes = activity.decodes.saturating_sub(1);
        }
        match result {
            Ok(frame) => {
                frames.write(FrameDecoded(index, Arc::new(frame), source));
            }
            Err(e) if e.is_empty() => {}
            Err(e) => {
                failed_frames.write(DecodeFailed(index, e.clone()));
                status.error(e);
            }
        }
    }
}

/// Opens what is asked for on the worker.
fn handle_open(
    mut requests: MessageReader<OpenRequest>,
    mut worker: ResMut<Worker>,
    mut activity: ResMut<Activity>,
    mut status: ResMut<StatusLine>,
    opened: Res<Opened>,
    mut eval_runs: MessageWriter<OpenEvalRun>,
) {
    for OpenRequest(spec) in requests.read() {
        // An evaluation run's folder goes to the results browser.
        if let SourceSpec::Path(p) = spec {
            if crate::pipeline::eval::browse::is_run_dir(p) {
                eval_runs.write(OpenEvalRun { path: p.clone(), compare: None });
                continue;
            }
        }
        status.info(match spec {
            SourceSpec::Demo => "building the demo scene...".to_string(),
            SourceSpec::Path(p) => format!("opening {}...", p.display()),
        });
        // While a saved state waits for its moved source, a path opened is that source.
        match (&opened.relocating, spec) {
            (Some(state), SourceSpec::Path(p)) if !crate::pipeline::state_file::is_state_path(p) => {
                worker.submit(&mut activity, Job::OpenState { state: state.clone(), relocated: Some(p.clone()) })
            }
            _ => worker.submit(&mut activity, Job::Open(spec.clone())),
        }
    }
}

/// A newly opened source becomes the one everything refers to; geometry that is the source
/// itself (the demo, a saved reconstruction) gets its cloud built.
fn on_opened(mut opened_msgs: MessageReader<SourceOpened>, mut opened: ResMut<Opened>, mut worker: ResMut<Worker>, mut activity: ResMut<Activity>, settings: Res<ViewSettings>, mut app_settings: ResMut<Settings>) {
    for SourceOpened(source, restore) in opened_msgs.read() {
        opened.id = source.id();
        opened.source = Some(source.clone());
        if let Some(p) = source.path() {
            app_settings.0.remember(p.to_path_buf());
        }
        if let Some(r) = restore {
            app_settings.0.remember(r.path.clone());
            // The saved geometry, with the saved label and the saved point settings.
            if let Some(rec) = &r.rec {
                let label = r.state["geometry"]["label"].as_str().map(String::from).unwrap_or_else(|| format!("saved state: {}", source.name()));
                let budget = r.state["view"]["point_budget"].as_u64().map_or(settings.point_budget, |b| b as usize);
                let point_source = if r.state["view"]["source"] == "pointmap" { PointSource::PointMap } else { PointSource::DepthAndCamera };
                let frames = source.frames_of(rec).unwrap_or_default();
                worker.submit(&mut activity, Job::BuildScene { label, rec: rec.clone(), source_id: opened.id.clone(), source_frames: frames, budget, point_source });
                continue;
            }
        }
        if let Source::Geometry(g) = source {
            let label = match &g.path {
                None => "demo scene: ground-truth geometry".to_string(),
                Some(_) => format!("saved geometry: {}", g.label),
            };
            let frames = (0..g.rec.frames).collect();
            worker.submit(&mut activity, Job::BuildScene { label, rec: g.rec.clone(), source_id: opened.id.clone(), source_frames: frames, budget: settings.point_budget, point_source: settings.source });
        }
    }
}

/// Exports the geometry on screen with the filter on screen (the format from the file name).
fn handle_export(
    mut requests: MessageReader<ExportRequest>,
    geometry: Res<Geometry>,
    settings: Res<ViewSettings>,
    sampled: Res<SampledFrames>,
    mut worker: ResMut<Worker>,
    mut activity: ResMut<Activity>,
    mut status: ResMut<StatusLine>,
) {
    for ExportRequest { path, format } in requests.read() {
        let Some(scene) = &geometry.scene else {
            status.error("nothing to export: no geometry is loaded");
            continue;
        };
        let Some(format) = format.or_else(|| ExportFormat::from_path(path)) else {
            status.error(format!("{}: export to .safetensors, .ply, .glb, or a folder name (COLMAP)", path.display()));
            continue;
        };
        let picks: Vec<usize> = (0..scene.rec.frames).filter(|&f| sampled.frames.contains(&scene.source_frames.get(f).copied().unwrap_or(f))).collect();
        let filter = PointFilter { source: scene.point_source, threshold: scene.quantiles.threshold(settings.conf_percentile as f64), frame: settings.frame_filter };
        status.info(format!("exporting to {}...", path.display()));
        worker.submit(&mut activity, Job::Export { rec: scene.rec.clone(), format, filter, picks, path: path.clone() });
    }
}

/// Writes the settings when they change (atomically; a failure is reported once).
fn save_settings(settings: Res<Settings>, mut status: ResMut<StatusLine>, mut last: Local<Option<crate::pipeline::settings::AppSettings>>) {
    if last.is_none() {
        *last = Some(settings.0.clone());
        return;
    }
    if last.as_ref() == Some(&settings.0) {
        return;
    }
    *last = Some(settings.0.clone());
    if let Err(e) = settings.0.save() {
        status.error(format!("settings not saved: {e:#}"));
    }
}

pub struct TasksPlugin;

impl Plugin for TasksPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(spawn_threads()).add_message::<DecodeFailed>().add_systems(PreUpdate, receive).add_systems(Update, ((handle_open, on_opened).chain(), handle_export, save_settings));
    }
}
