//! `bench render`: time the app's per-frame CPU work with N points on the GPU.
//! The main-world schedules (First..Last) are timed: that is the CPU work per frame that could
//! grow with the point count. Under a software rasteriser the full frame also includes drawing,
//! which is reported separately.

use super::renderer::{LAST_UPLOAD_BYTES, LAST_UPLOAD_NS};
use super::state::{Activity, Geometry, OpenRequest, StartupOptions};
use super::tasks::{Job, Worker};
use bevy::prelude::*;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

const WARMUP_FRAMES: usize = 30;
static SAMPLES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(300);

/// Frames to time (default 300).
pub fn set_samples(n: usize) {
    SAMPLES.store(n.max(1), Relaxed);
}

#[derive(Resource)]
struct RenderBench {
    points: usize,
    frame_start: Option<Instant>,
    last_frame_end: Option<Instant>,
    warmup: usize,
    cpu_ms: Vec<f64>,
    wall_ms: Vec<f64>,
}

fn start(opts: Res<StartupOptions>, mut commands: Commands, mut worker: ResMut<Worker>, mut activity: ResMut<Activity>, mut open: MessageWriter<OpenRequest>) {
    if let Some(n) = opts.bench_points {
        // 0 points means the demo scene as it opens by default.
        if n == 0 {
            open.write(OpenRequest(crate::pipeline::source::SourceSpec::Demo));
        } else {
            worker.submit(&mut activity, Job::Synthetic(n));
        }
        commands.insert_resource(RenderBench { points: n, frame_start: None, last_frame_end: None, warmup: 0, cpu_ms: Vec::new(), wall_ms: Vec::new() });
    }
}

fn frame_begin(bench: Option<ResMut<RenderBench>>) {
    if let Some(mut b) = bench {
        b.frame_start = Some(Instant::now());
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn frame_end(bench: Option<ResMut<RenderBench>>, geometry: Res<Geometry>, activity: Res<Activity>, mut exit: MessageWriter<AppExit>) {
    let Some(mut b) = bench else { return };
    let now = Instant::now();
    let ready = geometry.scene.is_some() && activity.is_idle();
    if ready && b.warmup >= WARMUP_FRAMES {
        let cpu = now.duration_since(b.frame_start.unwrap_or(now)).as_secs_f64() * 1e3;
        b.cpu_ms.push(cpu);
        if let Some(last) = b.last_frame_end {
            b.wall_ms.push(now.duration_since(last).as_secs_f64() * 1e3);
        }
    } else if ready {
        b.warmup += 1;
    }
    b.last_frame_end = Some(now);
    if b.cpu_ms.len() >= SAMPLES.load(Relaxed) && !b.wall_ms.is_empty() {
        let max_cpu = b.cpu_ms.iter().copied().fold(0.0, f64::max);
        let cpu = median(&mut b.cpu_ms);
        let wall = median(&mut b.wall_ms);
        let points = geometry.scene.as_ref().map(|s| s.cloud.points.len()).unwrap_or(b.points);
        let bytes = LAST_UPLOAD_BYTES.load(Relaxed) as f64 / points.max(1) as f64;
        let upload = LAST_UPLOAD_NS.load(Relaxed) as f64 / 1e6;
        let name = if b.points == 0 { format!("demo scene ({points})") } else { points.to_string() };
        println!("| {name} | {cpu:.3} | {max_cpu:.2} | {wall:.1} | {bytes:.0} | {upload:.1} |");
        exit.write(AppExit::Success);
    }
}

pub struct RenderBenchPlugin;

impl Plugin for RenderBenchPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Startup, start).add_systems(First, frame_begin).add_systems(Last, frame_end);
    }
}

/// `bench render` without `--points`: each case in its own process (the demo scene, 10k, 1M, 5M
/// points), one table.
pub fn run_all(frames: usize) -> anyhow::Result<i32> {
    println!("Point-cloud rendering, 1280x800 window, median over {frames} frames after warm-up");
    println!("| points | app CPU ms/frame, median (main world) | max | frame wall ms, median (incl. rasterising) | GPU bytes/point | upload ms |");
    println!("|---|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    for n in [0usize, 10_000, 1_000_000, 5_000_000] {
        let status = std::process::Command::new(&exe).args(["bench", "render", "--points", &n.to_string(), "--frames", &frames.to_string()]).stderr(std::process::Stdio::null()).status()?;
        if !status.success() {
            anyhow::bail!("render benchmark with {n} points failed");
        }
    }
    Ok(0)
}
