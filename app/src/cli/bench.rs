//! Benchmarks that print tables: `bench vggt` (VGGT-1B shapes, zero weights, CPU by default).

use anyhow::{Context, Result};
use clap::Subcommand;
use spatial_models::vggt::{Vggt, VggtConfig, estimate_flops};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Point-cloud rendering: main-thread CPU ms per frame (median of 300), GPU bytes per point,
    /// upload time. Needs a display (Xvfb works). Without --points: the demo scene, 10k, 1M, 5M.
    Render {
        /// Synthetic points to show (0 = the demo scene).
        #[arg(long)]
        points: Option<usize>,
        /// Frames to time (after 30 warm-up frames).
        #[arg(long, default_value_t = 300)]
        frames: usize,
    },
    /// VGGT-1B forward time and peak memory. Without --frames, runs the standard cases
    /// (2 frames at 224x224, 8 frames at 518x294), each in its own process so peaks are separate.
    Vggt {
        #[arg(long)]
        frames: Option<usize>,
        #[arg(long, default_value_t = 224)]
        height: usize,
        #[arg(long, default_value_t = 224)]
        width: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Timed repetitions after one warm-up.
        #[arg(long, default_value_t = 1)]
        repeats: usize,
    },
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn run(cmd: BenchCommand) -> Result<i32> {
    match cmd {
        BenchCommand::Render { points: Some(n), frames } => {
            crate::gui::bench::set_samples(frames);
            crate::gui::run(crate::gui::GuiOptions { input: None, script: None, bench_points: Some(n) })
        }
        BenchCommand::Render { points: None, frames } => {
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
        BenchCommand::Vggt { frames: Some(s), height, width, device, dtype, repeats } => {
            let device = spatial_models::open_device(&device)?;
            let dtype = spatial_models::parse_dtype(&dtype)?;
            let cfg = VggtConfig::vggt_1b();
            let t0 = std::time::Instant::now();
            let constant = super::bench_backend::ConstantWeights(1e-3);
            let vb = candle_nn::VarBuilder::from_backend(Box::new(constant), dtype, device.clone());
            let heads = candle_nn::VarBuilder::from_backend(Box::new(constant), candle_core::DType::F32, device.clone());
            let model = Vggt::new(&cfg, vb, Some(heads))?;
            let init = t0.elapsed().as_secs_f64();
            let weights_mib = peak_rss_mib().unwrap_or(0.0);
            let images = candle_core::Tensor::full(0.5f32, (s, 3, height, width), &device)?;
            if repeats > 1 {
                model.forward(&images)?; // warm-up (allocator, kernels)
            }
            let mut times = Vec::new();
            for _ in 0..repeats.max(1) {
                let t = std::time::Instant::now();
                let out = model.forward(&images)?;
                out.depth.sum_all()?.to_scalar::<f32>()?;
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let flops = estimate_flops(&cfg, s, height, width);
            println!(
                "| {s} | {width}x{height} | {dtype:?} | {median:.2} | {:.0} | {:.0} | {:.0} | {init:.1} |",
                flops / median / 1e9,
                weights_mib,
                peak_rss_mib().unwrap_or(f64::NAN)
            );
            Ok(0)
        }
        BenchCommand::Vggt { frames: None, device, dtype, repeats, .. } => {
            println!("VGGT-1B (constant weights, resident in memory), device {device}, dtype {dtype}, median of {repeats} run(s) (after a warm-up when more than one)");
            println!("| frames | size | dtype | seconds | GFLOP/s | RSS after load MiB | peak RSS MiB | init s |");
            println!("|---|---|---|---|---|---|---|---|");
            let exe = std::env::current_exe()?;
            for (s, h, w) in [(2usize, 224usize, 224usize), (8, 294, 518)] {
                let status = std::process::Command::new(&exe)
                    .args(["bench", "vggt", "--frames", &s.to_string(), "--height", &h.to_string(), "--width", &w.to_string()])
                    .args(["--device", &device, "--dtype", &dtype, "--repeats", &repeats.to_string()])
                    .status()
                    .context("spawning the benchmark case")?;
                if !status.success() {
                    anyhow::bail!("benchmark case {s} frames {w}x{h} failed");
                }
            }
            Ok(0)
        }
    }
}
