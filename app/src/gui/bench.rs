//! `bench render`: time the app's per-frame CPU work with N points on the GPU.
//! The main-world schedules (First..Last) are timed: that is the CPU work per frame that could
//! grow with the point count. Under a software rasteriser the full frame also includes drawing,
//! which is reported separately. The hover moves every frame, so each frame also asks for a GPU
//! pick: its latency and render-world CPU cost are reported too.

use super::picking::{LAST_PICK_NS, PickQuery, PickResults};
use super::renderer::{LAST_UPLOAD_BYTES, LAST_UPLOAD_NS};
use super::state::{Activity, Geometry, Inspection, OpenRequest, StartupOptions};
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
    /// Picks asked (serial, when) and answered: the hover moves every timed frame.
    asked: std::collections::VecDeque<(u64, Instant)>,
    pick_latency_ms: Vec<f64>,
    pick_encode_us: Vec<f64>,
    picks_before: Option<u64>,
    last_answer: Option<u64>,
}

fn start(opts: Res<StartupOptions>, mut commands: Commands, mut worker: ResMut<Worker>, mut activity: ResMut<Activity>, mut open: MessageWriter<OpenRequest>) {
    if let Some(n) = opts.bench_points {
        // 0 points means the demo scene as it opens by default.
        if n == 0 {
            open.write(OpenRequest(crate::pipeline::source::SourceSpec::Demo));
        } else {
            worker.submit(&mut activity, Job::Synthetic(n));
        }
        commands.insert_resource(RenderBench {
            points: n,
            frame_start: None,
            last_frame_end: None,
            warmup: 0,
            cpu_ms: Vec::new(),
            wall_ms: Vec::new(),
            asked: Default::default(),
            pick_latency_ms: Vec::new(),
            pick_encode_us: Vec::new(),
            picks_before: None,
            last_answer: None,
        });
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

/// Hovers the middle of the 3D view, one pixel further each frame, so every timed frame asks the
/// GPU for a pick (as a moving mouse does).
fn move_hover(
    bench: Option<Res<RenderBench>>,
    mut inspection: ResMut<Inspection>,
    cameras: Query<&Camera, With<Camera3d>>,
    mut frame: Local<u32>,
) {
    if bench.is_none() {
        return;
    }
    let Some(rect) = cameras
        .single()
        .ok()
        .and_then(|c| c.logical_viewport_rect())
    else {
        return;
    };
    *frame += 1;
    inspection.script_hover = Some(rect.center() + Vec2::new((*frame % 8) as f32, 0.0));
}

fn frame_end(
    bench: Option<ResMut<RenderBench>>,
    geometry: Res<Geometry>,
    activity: Res<Activity>,
    mut exit: MessageWriter<AppExit>,
    query: Res<PickQuery>,
    results: Res<PickResults>,
) {
    let Some(mut b) = bench else { return };
    let now = Instant::now();
    let ready = geometry.scene.is_some() && activity.is_idle();
    if ready && b.warmup >= WARMUP_FRAMES {
        if b.asked.back().is_none_or(|a| a.0 != query.serial) {
            b.asked.push_back((query.serial, now));
        }
        let answer = results.last.map(|r| r.serial);
        if answer != b.last_answer {
            b.last_answer = answer;
            while let Some(&(serial, at)) = b.asked.front() {
                if Some(serial) > answer {
                    break;
                }
                b.asked.pop_front();
                if Some(serial) == answer {
                    b.pick_latency_ms
                        .push(now.duration_since(at).as_secs_f64() * 1e3);
                    b.pick_encode_us
                        .push(LAST_PICK_NS.load(Relaxed) as f64 / 1e3);
                }
            }
        }
        b.picks_before.get_or_insert(results.received);
        let cpu = now
            .duration_since(b.frame_start.unwrap_or(now))
            .as_secs_f64()
            * 1e3;
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
        let name = if b.points == 0 {
            format!("demo scene ({points})")
        } else {
            points.to_string()
        };
        let frames = b.cpu_ms.len() as f64;
        let picks = (results.received - b.picks_before.unwrap_or(results.received)) as f64 / frames;
        let (latency, encode) = if b.pick_latency_ms.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (
                median(&mut b.pick_latency_ms),
                median(&mut b.pick_encode_us),
            )
        };
        println!(
            "| {name} | {cpu:.3} | {max_cpu:.2} | {wall:.1} | {bytes:.0} | {upload:.1} | {picks:.2} | {latency:.1} | {encode:.0} |"
        );
        exit.write(AppExit::Success);
    }
}

pub struct RenderBenchPlugin;

impl Plugin for RenderBenchPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Startup, start)
            .add_systems(First, frame_begin)
            .add_systems(Update, move_hover)
            .add_systems(Last, frame_end);
    }
}

/// `bench render` without `--points`: each case in its own process (the demo scene, 10k, 1M, 5M
/// points), one table.
pub fn run_all(frames: usize) -> anyhow::Result<i32> {
    println!("Point-cloud rendering, 1280x800 window, median over {frames} frames after warm-up");
    println!(
        "| points | app CPU ms/frame, median (main world) | max | frame wall ms, median (incl. rasterising) | GPU bytes/point | upload ms | picks answered per frame | pick latency ms, median | pick encode µs (render world CPU) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    for n in [0usize, 10_000, 1_000_000, 5_000_000] {
        let status = std::process::Command::new(&exe).args(["bench", "render", "--points", &n.to_string(), "--frames", &frames.to_string()]).stderr(std::process::Stdio::null()).status()?;
        if !status.success() {
            anyhow::bail!("render benchmark with {n} points failed");
        }
    }
    Ok(0)
}
