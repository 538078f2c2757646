//! VGGT inside the app: its own thread (the pipeline's service thread) loads the weights on the
//! chosen device and reconstructs the open source through the pipeline, reporting named stages and
//! an ETA; a run can be cancelled (noticed inside the layers), a new source or new weights cancel
//! the old run, and a panic in a job is reported while the thread carries on.

use super::state::*;
use super::tasks::make_scene;
use crate::pipeline::cache::ReconstructionCache;
use crate::pipeline::device::{self, Compute, DTypeRequest, DeviceRequest};
use crate::pipeline::points::PointSource;
use crate::pipeline::reconstruct::{self as rc, LoadedVggt, ReconstructPlan, reconstruct};
use crate::pipeline::source::Source;
use crate::pipeline::threads::{Ctx, ServiceThread};
use crate::pipeline::weights::{WeightsKind, WeightsSpec};
use bevy::prelude::*;
use std::sync::Arc;

enum Request {
    Load { spec: String, device: DeviceRequest, dtype: DTypeRequest },
    /// `run` numbers the runs: one below the shared `superseded` mark is skipped when it comes up.
    Reconstruct { source: Source, plan: ReconstructPlan, budget: usize, point_source: PointSource, run: usize },
}

enum Event {
    Loaded { desc: String, compute: Compute },
    Progress(rc::Progress),
    Done { scene: Arc<LoadedScene>, note: Option<String>, summary: String },
    Cancelled,
    LoadFailed(String),
    RunFailed(String),
}

struct ThreadState {
    model: Option<LoadedVggt>,
    cache: Option<ReconstructionCache>,
    /// Runs numbered below this were cancelled or superseded while they waited in the queue.
    superseded: Arc<std::sync::atomic::AtomicUsize>,
}

fn serve(state: &mut ThreadState, req: Request, ctx: &Ctx<Event>) {
    match req {
        Request::Load { spec, device, dtype } => {
            // The old model goes first so two never sit in memory together.
            state.model = None;
            let compute = device::resolve(device, dtype);
            let mut progress = |file: &str, done: u64, total: u64| {
                ctx.send(Event::Progress(rc::Progress { stage: format!("downloading {file}"), fraction: if total > 0 { done as f64 / total as f64 } else { 0.0 }, elapsed_s: 0.0, eta_s: f64::NAN }))
            };
            let loaded = crate::pipeline::weights::resolve(&WeightsSpec::parse(&spec), WeightsKind::Vggt, &mut progress, ctx.cancel).and_then(|dir| LoadedVggt::load(&dir, &compute));
            match loaded {
                Ok(m) => {
                    let desc = m.describe();
                    state.model = Some(m);
                    ctx.send(Event::Loaded { desc, compute });
                }
                Err(e) => ctx.send(Event::LoadFailed(format!("{e:#}"))),
            }
        }
        Request::Reconstruct { source, plan, budget, point_source, run } => {
            if run < state.superseded.load(std::sync::atomic::Ordering::SeqCst) {
                return ctx.send(Event::Cancelled);
            }
            let Some(model) = &state.model else {
                return ctx.send(Event::RunFailed("no VGGT weights are loaded (File > Load VGGT weights...)".into()));
            };
            let mut progress = |p: rc::Progress| ctx.send(Event::Progress(p));
            match reconstruct(model, &source, &plan, state.cache.as_ref(), ctx.cancel, &mut progress) {
                Ok(Some(done)) => {
                    let frames = match source.frames_of(&done.rec) {
                        Ok(f) => f,
                        Err(e) => return ctx.send(Event::RunFailed(format!("{e:#}"))),
                    };
                    let name = source.name();
                    let cached = if done.from_cache { ", cached" } else { "" };
                    let label = format!("VGGT: {name} ({} of {} frames{cached})", done.rec.frames, source.len());
                    let summary = format!("{} reconstructed{cached}", plan.describe(&source));
                    let scene = make_scene(label, Arc::new(done.rec), source.id(), frames, budget, point_source);
                    ctx.send(Event::Done { scene: Arc::new(scene), note: done.cache_note, summary });
                }
                Ok(None) => ctx.send(Event::Cancelled),
                Err(e) => ctx.send(Event::RunFailed(format!("reconstruction failed: {e:#}"))),
            }
        }
    }
}

/// The VGGT thread and what it is doing.
#[derive(Resource)]
struct VggtThread {
    thread: ServiceThread<Request, Event>,
    /// The weights last asked for (reloaded when the device changes).
    spec: Option<String>,
    /// Loads and runs sent and not answered yet.
    loads: usize,
    runs: usize,
    /// The next run's number, and the mark below which queued runs are skipped.
    next_run: usize,
    superseded: Arc<std::sync::atomic::AtomicUsize>,
    started: Option<std::time::Instant>,
}

fn spawn(cache: Option<ReconstructionCache>) -> VggtThread {
    let superseded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let state = ThreadState { model: None, cache, superseded: superseded.clone() };
    let thread = ServiceThread::spawn("vggt-inference", state, serve, |m| Event::RunFailed(format!("the VGGT thread caught a crash: {m}")));
    VggtThread { thread, spec: None, loads: 0, runs: 0, next_run: 0, superseded, started: None }
}

impl VggtThread {
    /// Cancels the run in progress and every run still queued.
    fn cancel_runs(&mut self) {
        self.superseded.store(self.next_run, std::sync::atomic::Ordering::SeqCst);
        if self.runs > 0 {
            self.thread.cancel_current();
        }
    }
}

fn startup_weights(opts: Res<StartupOptions>, mut loads: MessageWriter<LoadVggt>, mut computes: MessageWriter<SetCompute>) {
    computes.write(SetCompute(opts.device, opts.dtype));
    if let Some(spec) = &opts.vggt {
        loads.write(LoadVggt(spec.clone()));
    }
}

/// The plan for `source` with the panel's settings.
/// The candidates, plus the frames an evaluation question used (so they show in 3D too).
fn plan_for(source: &Source, state: &VggtState, question: &QuestionFrames) -> ReconstructPlan {
    let mut plan = ReconstructPlan { width: state.width, ..ReconstructPlan::candidates(source, state.frames) };
    if let Some((_, frames, _)) = question.0.as_ref().filter(|(id, _, _)| *id == source.id()) {
        plan.frames.extend(frames.iter().copied().filter(|&f| f < source.len()));
        plan.frames.sort_unstable();
        plan.frames.dedup();
    }
    plan
}

#[allow(clippy::too_many_arguments)]
fn handle(
    mut vggt: ResMut<VggtThread>,
    mut state: ResMut<VggtState>,
    mut activity: ResMut<Activity>,
    opened: Res<Opened>,
    mut loads: MessageReader<LoadVggt>,
    mut sources: MessageReader<SourceOpened>,
    mut again: MessageReader<Reconstruct>,
    mut cancels: MessageReader<CancelReconstruction>,
    mut computes: MessageReader<SetCompute>,
    mut scenes: MessageWriter<SceneLoaded>,
    mut status: ResMut<StatusLine>,
    (settings, question): (Res<ViewSettings>, Res<QuestionFrames>),
    mut app_settings: ResMut<Settings>,
    mut requested: Local<(DeviceRequest, DTypeRequest)>,
    // The source whose geometry came from a saved state.
    mut restored: Local<Option<crate::pipeline::source::SourceId>>,
) {
    let mut start = false;
    // The source just opened (the message carries it: `Opened` may be updated later this frame).
    let mut newest: Option<Source> = None;
    for SetCompute(d, t) in computes.read() {
        *requested = (*d, *t);
        let c = device::resolve(*d, *t);
        state.compute = c.label();
        state.compute_note = c.fallback.clone();
        if let Some(why) = &c.fallback {
            status.error(why.clone());
        }
        // Candidate defaults follow the device: upstream's 128 at 518 px on a GPU.
        let (frames, width) = if c.device.is_cpu() { (rc::CPU_CANDIDATES, rc::CPU_CANDIDATE_WIDTH) } else { (rc::GPU_CANDIDATES, 518) };
        state.frames = frames;
        state.width = width;
        if let Some(spec) = vggt.spec.clone() {
            vggt.thread.cancel_current();
            vggt.loads += 1;
            vggt.thread.send(Request::Load { spec, device: *d, dtype: *t });
            start = true;
        }
    }
    for SourceOpened(source, restore) in sources.read() {
        // Runs for the previous source are of no use any more.
        vggt.cancel_runs();
        state.last_run = None;
        state.last_error = None;
        newest = Some(source.clone());
        // A restored state brings its geometry: nothing to run.
        start = restore.is_none();
        *restored = restore.as_ref().filter(|r| r.rec.is_some()).map(|_| source.id());
    }
    for LoadVggt(spec) in loads.read() {
        status.info(format!("loading VGGT from {spec}..."));
        app_settings.0.remember_weights(spec);
        vggt.thread.cancel_current();
        vggt.spec = Some(spec.clone());
        vggt.loads += 1;
        state.weights = None;
        state.spec = Some(spec.clone());
        vggt.thread.send(Request::Load { spec: spec.clone(), device: requested.0, dtype: requested.1 });
        // Weights loaded for a restored state do not replace the geometry it brought.
        let current = newest.as_ref().map_or(opened.id.clone(), Source::id);
        start |= restored.as_ref() != Some(&current);
    }
    for _ in cancels.read() {
        vggt.cancel_runs();
    }
    let explicit = again.read().count() > 0;
    if explicit {
        // A new run with new settings supersedes what runs or waits.
        vggt.cancel_runs();
    }
    if (start || explicit) && (state.weights.is_some() || vggt.loads > 0) {
        // Opened videos and folders are reconstructed by themselves; geometry sources (the demo, a
        // saved reconstruction) only when asked.
        if let Some(source) = newest.or_else(|| opened.source.clone()).filter(|s| explicit || !matches!(s, Source::Geometry(_))) {
            let plan = plan_for(&source, &state, &question);
            let run = vggt.next_run;
            vggt.next_run += 1;
            vggt.thread.send(Request::Reconstruct { source, plan, budget: settings.point_budget, point_source: settings.source, run });
            vggt.runs += 1;
            vggt.started = Some(std::time::Instant::now());
            state.last_error = None;
        }
    } else if explicit {
        status.error("no VGGT weights are loaded: File > Load VGGT weights... first");
    }
    while let Ok(ev) = vggt.thread.events.try_recv() {
        match ev {
            Event::Loaded { desc, compute } => {
                vggt.loads = vggt.loads.saturating_sub(1);
                status.info(desc.clone());
                state.weights = Some(desc);
                state.compute = compute.label();
                state.compute_note = compute.fallback;
                state.progress = None;
            }
            Event::LoadFailed(e) => {
                vggt.loads = vggt.loads.saturating_sub(1);
                state.progress = None;
                state.last_error = Some(e.clone());
                status.error(e);
            }
            Event::Progress(p) => state.progress = Some(p),
            Event::Done { scene, note, summary } => {
                vggt.runs = vggt.runs.saturating_sub(1);
                state.progress = None;
                let secs = vggt.started.take().map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
                state.last_run = Some(format!("{summary} in {secs:.0} s"));
                if let Some(n) = note {
                    status.error(n);
                }
                scenes.write(SceneLoaded(scene));
            }
            Event::Cancelled => {
                vggt.runs = vggt.runs.saturating_sub(1);
                if vggt.runs == 0 && vggt.next_run <= vggt.superseded.load(std::sync::atomic::Ordering::SeqCst) {
                    state.progress = None;
                    state.last_error = Some("cancelled".into());
                    status.info("reconstruction cancelled");
                }
            }
            Event::RunFailed(e) => {
                vggt.runs = vggt.runs.saturating_sub(1);
                state.progress = None;
                state.last_error = Some(e.clone());
                status.error(e);
            }
        }
    }
    // Loads and runs still queued or in flight.
    activity.vggt = vggt.loads + vggt.runs;
}

pub struct InferencePlugin;

impl Plugin for InferencePlugin {
    fn build(&self, app: &mut App) {
        let cache = app.world().get_resource::<SharedCache>().and_then(|c| c.0.clone());
        app.insert_resource(spawn(cache)).add_systems(Startup, startup_weights).add_systems(Update, handle.before(super::scene::SceneSystems));
    }
}
