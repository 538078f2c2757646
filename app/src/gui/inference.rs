//! VGGT inside the app: a dedicated inference thread (crossbeam channels in and out) loads the
//! weights and reconstructs the open folder's frames, reporting progress with an ETA; a run can be
//! cancelled (checked after every aggregator stage), and a new folder or new weights cancel the
//! old run. A panic in a job is caught and reported, and the thread carries on.

use super::StatusLine;
use super::cloud::{PointSource, build_cloud};
use super::scene::ViewSettings;
use super::tasks::{FolderInfo, FolderOpened, LoadedScene, SceneLoaded, VideoOpened, panic_message};
use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender, unbounded};
use spatial_models::reconstruction::Reconstruction;
use spatial_models::sampling::uniform_indices;
use spatial_models::vggt::preprocess::{ResizeMode, RgbFrame, preprocess_frames};
use spatial_models::vggt::{CPU_FLOPS_GUESS, Vggt, estimate_flops};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Frames VGGT sees by default: CPU-sized (a 16-frame run at 518 px is minutes on a CPU with
/// VGGT-1B, upstream's 128 would be hours).
pub const DEFAULT_MAX_FRAMES: usize = 16;

/// Frames to reconstruct: a folder's images or a video's frames.
#[derive(Clone)]
pub enum FrameSet {
    Folder(Arc<FolderInfo>),
    Video(Arc<crate::video::VideoInfo>),
}

impl FrameSet {
    fn len(&self) -> usize {
        match self {
            FrameSet::Folder(f) => f.files.len(),
            FrameSet::Video(v) => v.frames,
        }
    }
    fn name(&self) -> String {
        let p = match self {
            FrameSet::Folder(f) => &f.path,
            FrameSet::Video(v) => &v.path,
        };
        p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    }
    /// Files whose contents and picks identify the input, for the cache key.
    fn stamp_files(&self, picks: &[usize]) -> (Vec<PathBuf>, String) {
        match self {
            FrameSet::Folder(f) => (picks.iter().map(|&i| f.files[i].clone()).collect(), String::new()),
            FrameSet::Video(v) => (vec![v.path.clone()], format!("{picks:?}")),
        }
    }
    fn load(&self, picks: &[usize]) -> anyhow::Result<(Vec<RgbFrame>, Vec<String>)> {
        match self {
            FrameSet::Folder(f) => Ok((
                picks.iter().map(|&i| RgbFrame::open(&f.files[i])).collect::<anyhow::Result<Vec<_>>>()?,
                picks.iter().map(|&i| f.files[i].display().to_string()).collect(),
            )),
            // At most 1920 wide: the model input is 518 wide.
            FrameSet::Video(v) => Ok((v.decode(picks, Some(1920))?, picks.iter().map(|i| format!("{} frame {i}", v.path.display())).collect())),
        }
    }
}

enum Request {
    Load(PathBuf),
    Reconstruct { folder: FrameSet, max_frames: usize, budget: usize, source: PointSource, cancel: Arc<AtomicBool> },
}

enum Event {
    Loaded(String),
    Progress { stage: String, done: usize, total: usize, eta_s: f64 },
    Done(Arc<LoadedScene>),
    Cancelled,
    Failed(String),
}

#[derive(Resource)]
pub struct Inference {
    requests: Sender<Request>,
    events: Receiver<Event>,
    cancel: Option<Arc<AtomicBool>>,
    pub weights: Option<String>,
    pub in_flight: usize,
    pub progress: Option<(String, usize, usize, f64)>,
    pub max_frames: usize,
    folder: Option<FrameSet>,
}

impl Inference {
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0
    }
    pub fn load(&mut self, dir: PathBuf) {
        self.cancel_run();
        self.in_flight += 1;
        let _ = self.requests.send(Request::Load(dir));
    }
    pub fn cancel_run(&mut self) {
        if let Some(c) = self.cancel.take() {
            c.store(true, Ordering::Relaxed);
        }
    }
    fn start_run(&mut self, settings: &ViewSettings) {
        let Some(folder) = self.folder.clone() else { return };
        if self.weights.is_none() {
            return;
        }
        self.cancel_run();
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancel = Some(cancel.clone());
        self.in_flight += 1;
        let _ = self.requests.send(Request::Reconstruct { folder, max_frames: self.max_frames, budget: settings.point_budget, source: settings.source, cancel });
    }
}


/// Where a reconstruction of (frames, weights, settings) is cached, so reopening is instant.
fn cache_path(files: &[PathBuf], extra: &str, weights: &std::path::Path) -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    let base = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // Bump when the output format or the preprocessing changes.
    "v1 crop f32".hash(&mut h);
    extra.hash(&mut h);
    let stamp = |p: &std::path::Path, h: &mut std::collections::hash_map::DefaultHasher| {
        std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).hash(h);
        if let Ok(m) = std::fs::metadata(p) {
            m.len().hash(h);
            m.modified().ok().hash(h);
        }
    };
    for f in files {
        stamp(f, &mut h);
    }
    if let Ok(ckpt) = spatial_models::checkpoint::CheckpointDir::open(weights) {
        for f in &ckpt.safetensors {
            stamp(f, &mut h);
        }
        if let Some(c) = &ckpt.config {
            stamp(c, &mut h);
        }
    }
    Some(base.join("spatial-viewer").join("reconstructions").join(format!("{:016x}.safetensors", h.finish())))
}

fn reconstruct(model: &Vggt, weights: &std::path::Path, folder: &FrameSet, max_frames: usize, budget: usize, source: PointSource, cancel: &Arc<AtomicBool>, events: &Sender<Event>) -> anyhow::Result<Option<LoadedScene>> {
    let total = folder.len();
    let picks = if total > max_frames { uniform_indices(total, max_frames) } else { (0..total).collect() };
    let name = folder.name();
    let (stamped, extra) = folder.stamp_files(&picks);
    let cache = cache_path(&stamped, &extra, weights);
    if let Some(rec) = cache.as_ref().filter(|p| p.is_file()).and_then(|p| Reconstruction::load(p).ok()) {
        let rec = Arc::new(rec);
        let (cloud, index) = build_cloud(&rec, source, budget);
        return Ok(Some(LoadedScene { label: format!("VGGT: {name} ({} of {total} frames, cached)", rec.frames), rec, cloud: Arc::new(cloud), index }));
    }
    let (frames, names) = folder.load(&picks)?;
    let images = preprocess_frames(&frames, &names, ResizeMode::Crop, &candle_core::Device::Cpu)?;
    drop(frames);
    let (s, _, h, w) = images.dims4()?;
    let total_flops = estimate_flops(&model.config, s, h, w);
    let _ = events.send(Event::Progress { stage: format!("VGGT on {s} frames at {w}x{h}"), done: 0, total: model.config.depth, eta_s: total_flops / CPU_FLOPS_GUESS });
    let start = std::time::Instant::now();
    let mut cb = |done: usize, total: usize| {
        let elapsed = start.elapsed().as_secs_f64();
        let eta_s = elapsed / done.max(1) as f64 * (total - done) as f64;
        let _ = events.send(Event::Progress { stage: format!("VGGT on {s} frames at {w}x{h}"), done, total, eta_s });
        !cancel.load(Ordering::Relaxed)
    };
    // Cancelling is noticed inside the layers too (attention and token chunks), within a second.
    let out = spatial_models::nn::cancellable(cancel.clone(), || Ok(model.forward_with_progress(&images, Some(&mut cb))?))?;
    let Some(Some(out)) = out else { return Ok(None) };
    let rec = Arc::new(Reconstruction::from_vggt(&images, &out, picks.iter().map(|&i| i as i64).collect())?);
    if let Some(path) = &cache {
        // A failed cache write only costs the next open a re-run.
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = rec.save(path);
    }
    let (cloud, index) = build_cloud(&rec, source, budget);
    Ok(Some(LoadedScene { label: format!("VGGT: {name} ({s} of {total} frames)"), rec, cloud: Arc::new(cloud), index }))
}

fn spawn() -> Inference {
    let (req_tx, req_rx) = unbounded::<Request>();
    let (ev_tx, ev_rx) = unbounded::<Event>();
    std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            let mut model: Option<(Arc<Vggt>, PathBuf)> = None;
            for req in req_rx {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match req {
                    Request::Load(dir) => match crate::cli::reconstruct::load_vggt(&dir, candle_core::DType::F32, &candle_core::Device::Cpu) {
                        Ok(m) => {
                            let desc = format!("VGGT from {} (embed {}, {} block pairs)", dir.display(), m.config.embed_dim, m.config.depth);
                            model = Some((Arc::new(m), dir.clone()));
                            Event::Loaded(desc)
                        }
                        Err(e) => Event::Failed(format!("{e:#}")),
                    },
                    Request::Reconstruct { folder, max_frames, budget, source, cancel } => match &model {
                        None => Event::Failed("no VGGT weights are loaded (File > Load VGGT weights...)".into()),
                        Some((m, dir)) => match reconstruct(m, dir, &folder, max_frames, budget, source, &cancel, &ev_tx) {
                            Ok(Some(scene)) => Event::Done(Arc::new(scene)),
                            Ok(None) => Event::Cancelled,
                            Err(e) => Event::Failed(format!("reconstruction failed: {e:#}")),
                        },
                    },
                }))
                .unwrap_or_else(|p| Event::Failed(format!("the inference thread caught a crash: {}", panic_message(p))));
                if ev_tx.send(result).is_err() {
                    break;
                }
            }
        })
        .expect("spawn inference thread");
    Inference { requests: req_tx, events: ev_rx, cancel: None, weights: None, in_flight: 0, progress: None, max_frames: DEFAULT_MAX_FRAMES, folder: None }
}

/// Weights chosen in the UI or by a script.
#[derive(Message, Clone, Debug)]
pub struct LoadVggt(pub PathBuf);

fn startup_weights(opts: Res<super::StartupOptions>, mut loads: MessageWriter<LoadVggt>) {
    if let Some(dir) = &opts.vggt {
        loads.write(LoadVggt(dir.clone()));
    }
}

fn handle(
    mut inference: ResMut<Inference>,
    mut loads: MessageReader<LoadVggt>,
    mut folders: MessageReader<FolderOpened>,
    mut videos: MessageReader<VideoOpened>,
    mut scenes: MessageWriter<SceneLoaded>,
    mut status: ResMut<StatusLine>,
    settings: Res<ViewSettings>,
) {
    for LoadVggt(dir) in loads.read() {
        status.info(format!("loading VGGT from {}...", dir.display()));
        inference.load(dir.clone());
    }
    for FolderOpened(info) in folders.read() {
        inference.folder = Some(FrameSet::Folder(info.clone()));
        inference.start_run(&settings);
    }
    for VideoOpened(info) in videos.read() {
        inference.folder = Some(FrameSet::Video(info.clone()));
        inference.start_run(&settings);
    }
    while let Ok(ev) = inference.events.try_recv() {
        match ev {
            Event::Loaded(desc) => {
                inference.in_flight = inference.in_flight.saturating_sub(1);
                status.info(desc.clone());
                inference.weights = Some(desc);
                inference.start_run(&settings);
            }
            Event::Progress { stage, done, total, eta_s } => {
                inference.progress = Some((stage, done, total, eta_s));
            }
            Event::Done(scene) => {
                inference.in_flight = inference.in_flight.saturating_sub(1);
                inference.progress = None;
                inference.cancel = None;
                scenes.write(SceneLoaded(scene));
            }
            Event::Cancelled => {
                inference.in_flight = inference.in_flight.saturating_sub(1);
                inference.progress = None;
                status.info("reconstruction cancelled");
            }
            Event::Failed(e) => {
                inference.in_flight = inference.in_flight.saturating_sub(1);
                inference.progress = None;
                status.error(e);
            }
        }
    }
}

pub struct InferencePlugin;

impl Plugin for InferencePlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(spawn()).add_message::<LoadVggt>().add_systems(Startup, startup_weights).add_systems(Update, handle.before(super::scene::SceneSystems));
    }
}
