//! Background work. Long jobs (building the demo scene, building point clouds, scanning folders)
//! run on a worker thread and frame decoding on a decoder thread, both fed by crossbeam channels,
//! so the UI never waits on them. A panic inside a job is caught, reported, and the thread lives on.

use super::StatusLine;
use super::cloud::{CloudIndex, PointSource, build_cloud};
use super::renderer::PointCloudBuffers;
use anyhow::Context;
use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender, unbounded};
use spatial_models::reconstruction::Reconstruction;
use spatial_models::vggt::preprocess::RgbFrame;
use std::path::PathBuf;
use std::sync::Arc;

/// Geometry with its GPU-ready point cloud.
pub struct LoadedScene {
    /// Shown in the title and badge, e.g. "demo scene: ground-truth geometry".
    pub label: String,
    pub rec: Arc<Reconstruction>,
    pub cloud: Arc<PointCloudBuffers>,
    pub index: CloudIndex,
}

/// A folder of frames, checked (every image readable, all the same size).
pub struct FolderInfo {
    pub path: PathBuf,
    pub files: Vec<PathBuf>,
    pub width: u32,
    pub height: u32,
}

/// Where a frame comes from, for the decoder thread.
#[derive(Clone)]
pub enum FrameRef {
    Image(PathBuf),
    Video(Arc<crate::video::VideoInfo>, usize),
}

/// An opened video (checked with ffprobe).
#[derive(Message, Clone)]
pub struct VideoOpened(pub Arc<crate::video::VideoInfo>);

pub enum Job {
    ProbeVideo(PathBuf),
    BuildDemo { frames: usize, budget: usize, source: PointSource },
    BuildCloud { label: String, rec: Arc<Reconstruction>, budget: usize, source: PointSource },
    ScanFolder(PathBuf),
    /// A synthetic cloud of N points (for `bench render`).
    Synthetic(usize),
    /// Writes a reconstruction: safetensors (upstream names) or, for `.ply`, confident points.
    Export { rec: Arc<Reconstruction>, path: PathBuf },
    /// Space-aware sampling's voxel sets for the point map of a geometry.
    VoxelSets { rec: Arc<Reconstruction>, params: spatial_models::sampling::SamplingParams },
    /// The cloud recoloured by the space-aware pick that first covered each point's voxel.
    CoverageColours { cloud: Arc<super::renderer::PointCloudBuffers>, sets: Arc<spatial_models::sampling::VoxelSets>, picks: Vec<(usize, usize)>, key: u64 },
}

enum JobOutput {
    Video(Arc<crate::video::VideoInfo>),
    Scene(Arc<LoadedScene>),
    Exported(String),
    Voxels(Result<Arc<spatial_models::sampling::VoxelSets>, String>),
    Coverage(Arc<super::renderer::PointCloudBuffers>, u64),
    Folder(Arc<FolderInfo>),
    Failed(String),
}

#[derive(Message, Clone)]
pub struct SceneLoaded(pub Arc<LoadedScene>);

#[derive(Message, Clone)]
pub struct FolderOpened(pub Arc<FolderInfo>);

#[derive(Message, Clone)]
pub struct VoxelsReady(pub Result<Arc<spatial_models::sampling::VoxelSets>, String>);

/// Handle to the worker and decoder threads.
#[derive(Resource)]
pub struct Worker {
    jobs: Sender<Job>,
    results: Receiver<JobOutput>,
    decode_requests: Sender<(usize, FrameRef)>,
    decoded: Receiver<Decoded>,
    /// Jobs sent and not yet answered.
    pub in_flight: usize,
    pub decodes_in_flight: usize,
}

impl Worker {
    pub fn submit(&mut self, job: Job) {
        self.in_flight += 1;
        self.jobs.send(job).expect("worker thread is alive");
    }
    pub fn request_decode(&mut self, index: usize, frame: FrameRef) {
        self.decodes_in_flight += 1;
        self.decode_requests.send((index, frame)).expect("decoder thread is alive");
    }
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.decodes_in_flight == 0
    }
}

/// Largest frame width kept for display; frames are decoded at this size, not full size.
pub const DISPLAY_MAX_WIDTH: usize = 640;

fn run_job(job: Job) -> JobOutput {
    match job {
        Job::BuildDemo { frames, budget, source } => {
            let rec = Arc::new(crate::demo::build_demo(frames));
            scene_output("demo scene: ground-truth geometry".into(), rec, budget, source)
        }
        Job::BuildCloud { label, rec, budget, source } => scene_output(label, rec, budget, source),
        Job::Synthetic(n) => JobOutput::Scene(Arc::new(synthetic_scene(n))),
        Job::ProbeVideo(path) => match crate::video::VideoInfo::probe(&path) {
            Ok(info) => JobOutput::Video(Arc::new(info)),
            Err(e) => JobOutput::Failed(format!("{e:#}")),
        },
        Job::Export { rec, path } => {
            let is_ply = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("ply"));
            let result = if is_ply {
                let points = rec.points_from_depth();
                rec.write_ply(&path, &points, &rec.depth_conf, 50.0).map(|n| format!("exported {n} points to {}", path.display()))
            } else {
                rec.save(&path).map(|_| format!("exported {} frames to {}", rec.frames, path.display()))
            };
            match result {
                Ok(msg) => JobOutput::Exported(msg),
                Err(e) => JobOutput::Failed(format!("{e:#}")),
            }
        }
        Job::VoxelSets { rec, params } => JobOutput::Voxels(
            spatial_models::sampling::VoxelSets::build(&rec.world_points, &rec.world_points_conf, rec.frames, &params).map(Arc::new).map_err(|e| format!("space-aware sampling: {e:#}")),
        ),
        Job::CoverageColours { cloud, sets, picks, key } => JobOutput::Coverage(Arc::new(super::sampling::coverage_colours(&cloud, &sets, &picks)), key),
        Job::ScanFolder(path) => match scan_folder(&path) {
            Ok(info) => JobOutput::Folder(Arc::new(info)),
            Err(e) => JobOutput::Failed(format!("{e:#}")),
        },
    }
}

fn scene_output(label: String, rec: Arc<Reconstruction>, budget: usize, source: PointSource) -> JobOutput {
    let (cloud, index) = build_cloud(&rec, source, budget);
    JobOutput::Scene(Arc::new(LoadedScene { label, rec, cloud: Arc::new(cloud), index }))
}

/// N points on a noisy shell, one frame, seen by one camera: the render benchmark's scene.
pub fn synthetic_scene(n: usize) -> LoadedScene {
    use super::renderer::PointInstance;
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
    let mut all = conf.clone();
    all.reverse();
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
    let index = CloudIndex { frame_conf: vec![conf], all_conf_sorted: all, scene_scale: 2.3, depth_range: (1.8, 4.2), centers: vec![[0.0, 0.0, 0.0]] };
    let cloud = PointCloudBuffers { points, frame_starts: vec![0, n as u32], centers: vec![[0.0, 0.0, 0.0]] };
    LoadedScene { label: format!("benchmark: {n} synthetic points"), rec: Arc::new(rec), cloud: Arc::new(cloud), index }
}

/// Lists a folder's images and checks each header: a clear error names the first bad file.
pub fn scan_folder(path: &std::path::Path) -> anyhow::Result<FolderInfo> {
    let files = spatial_models::vggt::preprocess::list_image_files(path)?;
    let mut size = None;
    for f in &files {
        if std::fs::metadata(f).map(|m| m.len() == 0).unwrap_or(true) {
            anyhow::bail!("{}: the image is empty (0 bytes)", f.display());
        }
        let dims = image::image_dimensions(f).map_err(|e| anyhow::anyhow!("{}: not a readable image ({e})", f.display()))?;
        match size {
            None => size = Some(dims),
            Some(first) if first != dims => anyhow::bail!(
                "{}: is {}x{}, but {} is {}x{}; all frames of a folder must have the same size",
                f.display(),
                dims.0,
                dims.1,
                files[0].display(),
                first.0,
                first.1
            ),
            _ => {}
        }
    }
    let (width, height) = size.context("no images")?;
    Ok(FolderInfo { path: path.to_path_buf(), files, width, height })
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

/// The message of a caught panic.
pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into())
}

pub(super) fn spawn_threads() -> Worker {
    let (job_tx, job_rx) = unbounded::<Job>();
    let (out_tx, out_rx) = unbounded::<JobOutput>();
    std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || {
            for job in job_rx {
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(job)))
                    .unwrap_or_else(|p| JobOutput::Failed(format!("background job crashed: {}", panic_message(p))));
                if out_tx.send(out).is_err() {
                    break;
                }
            }
        })
        .expect("spawn worker thread");
    let (dec_tx, dec_rx) = unbounded::<(usize, FrameRef)>();
    let (frame_tx, frame_rx) = unbounded();
    std::thread::Builder::new()
        .name("decoder".into())
        .spawn(move || {
            // One long-lived decoder for the open video (frame-exact seeks, cheap steps forward).
            let mut stream: Option<crate::video::VideoStream> = None;
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
                            *stream = crate::video::VideoStream::open((**info).clone(), Some(DISPLAY_MAX_WIDTH)).ok();
                        }
                        match stream.as_mut() {
                            Some(s) => s.frame_with_preceding(*n, if backwards { DECODE_BEHIND } else { 0 }),
                            None => info.decode(&[*n], Some(DISPLAY_MAX_WIDTH)).map(|mut v| vec![(*n, v.remove(0))]),
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
    Worker { jobs: job_tx, results: out_rx, decode_requests: dec_tx, decoded: frame_rx, in_flight: 0, decodes_in_flight: 0 }
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

/// A decoded frame for the player: index, frame, and the file it came from (so frames of a video
/// closed meanwhile are not taken for the new one's).
#[derive(Message, Clone)]
pub struct FrameDecoded(pub usize, pub Arc<RgbFrame>, pub PathBuf);

fn receive(
    mut worker: ResMut<Worker>,
    mut status: ResMut<StatusLine>,
    mut scenes: MessageWriter<SceneLoaded>,
    mut folders: MessageWriter<FolderOpened>,
    mut frames: MessageWriter<FrameDecoded>,
    mut voxels: MessageWriter<VoxelsReady>,
    mut videos: MessageWriter<VideoOpened>,
    mut coverage: MessageWriter<super::sampling::CoverageReady>,
) {
    while let Ok(out) = worker.results.try_recv() {
        worker.in_flight = worker.in_flight.saturating_sub(1);
        match out {
            JobOutput::Scene(s) => {
                scenes.write(SceneLoaded(s));
            }
            JobOutput::Folder(f) => {
                folders.write(FolderOpened(f));
            }
            JobOutput::Exported(msg) => status.info(msg),
            JobOutput::Video(info) => {
                videos.write(VideoOpened(info));
            }
            JobOutput::Voxels(v) => {
                voxels.write(VoxelsReady(v));
            }
            JobOutput::Coverage(cloud, key) => {
                coverage.write(super::sampling::CoverageReady(cloud, key));
            }
            JobOutput::Failed(e) => status.error(e),
        }
    }
    while let Ok(Decoded { index, source, frame: result, answers_request }) = worker.decoded.try_recv() {
        if answers_request {
            worker.decodes_in_flight = worker.decodes_in_flight.saturating_sub(1);
        }
        match result {
            Ok(frame) => {
                frames.write(FrameDecoded(index, Arc::new(frame), source));
            }
            Err(e) if e.is_empty() => {}
            Err(e) => status.error(e),
        }
    }
}

pub struct TasksPlugin;

impl Plugin for TasksPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(spawn_threads())
            .add_message::<SceneLoaded>()
            .add_message::<FolderOpened>()
            .add_message::<FrameDecoded>()
            .add_message::<VoxelsReady>()
            .add_message::<VideoOpened>()
            .add_systems(PreUpdate, receive);
    }
}
