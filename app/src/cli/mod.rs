//! Headless subcommands: thin adapters from arguments to the pipeline. Each returns the process
//! exit code.

pub mod ask;
pub mod bench;
mod bench_ask;
mod bench_backend;
pub mod eval;
pub mod export;
pub mod reconstruct;
pub mod sample;
pub mod video;
pub mod weights;

use crate::pipeline::device::{self, Compute, DTypeRequest, DeviceRequest};
use crate::pipeline::threads::Cancel;
use crate::pipeline::weights::{WeightsKind, WeightsSpec};
use std::path::PathBuf;

/// `--device` and `--dtype`, on every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ComputeArgs {
    /// auto (the first of CUDA, Metal, CPU this build supports), cpu, cuda[:N] or metal.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// auto (on the CPU: f32, but a bf16/f16 Spatial-MLLM checkpoint keeps its precision in memory
    /// with f32 activations; bf16 on a GPU), f32, bf16, f16, or bf16-products (bf16 weights and
    /// products with bf16-rounded activations and f32 sums, as on a GPU: faster on CPUs with
    /// AVX512-BF16).
    #[arg(long, default_value = "auto")]
    pub dtype: DTypeRequest,
}

impl ComputeArgs {
    /// The device and dtype to run on; a device that cannot be had is reported and the CPU used.
    pub fn resolve(&self) -> Compute {
        let c = device::resolve(self.device, self.dtype);
        if let Some(why) = &c.fallback {
            eprintln!("warning: {why}");
        }
        c
    }
}

/// A weights folder or Hugging Face repo id, resolved to a local folder (downloading what the
/// cache lacks, with a progress line, when the machine is online).
pub fn resolve_weights(text: &str, kind: WeightsKind) -> anyhow::Result<PathBuf> {
    let spec = WeightsSpec::parse(text);
    let line = ProgressLine::new("download");
    let mut last = std::time::Instant::now();
    let mut progress = |file: &str, done: u64, total: u64| {
        if last.elapsed().as_millis() >= 200 || done == total {
            last = std::time::Instant::now();
            line.bytes(file, done, total);
        }
    };
    let dir = crate::pipeline::weights::resolve(&spec, kind, &mut progress, &Cancel::new())?;
    if let WeightsSpec::Repo { .. } = spec {
        eprintln!("{spec}: {}", dir.display());
    }
    Ok(dir)
}

/// A one-line progress display on stderr ("stage  k/n  elapsed  ETA").
pub struct ProgressLine {
    start: std::time::Instant,
    label: String,
}

impl ProgressLine {
    pub fn new(label: &str) -> Self {
        Self { start: std::time::Instant::now(), label: label.to_string() }
    }

    fn bar(fraction: f64) -> String {
        let width = 30;
        let filled = ((fraction.clamp(0.0, 1.0) * width as f64) as usize).min(width);
        format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
    }

    pub fn update(&self, done: usize, total: usize) {
        let elapsed = self.start.elapsed().as_secs_f64();
        // No ETA until a step has finished to time it by.
        let eta = if done > 0 { format!("{:.1}s", elapsed / done as f64 * total.saturating_sub(done) as f64) } else { "...".to_string() };
        let fraction = if total > 0 { done as f64 / total as f64 } else { 0.0 };
        eprint!("\r\x1b[K{} {} {done}/{total}  {elapsed:.1}s elapsed, ETA {eta}   ", self.label, Self::bar(fraction));
        if done == total {
            eprintln!();
        }
    }

    /// A stage with a fraction and an ETA (from the pipeline's progress).
    pub fn stage(&self, stage: &str, fraction: f64, eta_s: f64) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = if eta_s.is_finite() { format!("{eta_s:.0}s") } else { "...".to_string() };
        eprint!("\r\x1b[K{} {} {:3.0}%  {elapsed:.1}s elapsed, ETA {eta}  {stage}", self.label, Self::bar(fraction), fraction * 100.0);
    }

    pub fn bytes(&self, file: &str, done: u64, total: u64) {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let fraction = if total > 0 { done as f64 / total as f64 } else { 0.0 };
        eprint!("\r\x1b[K{} {} {:.1}/{:.1} MiB  {file}", self.label, Self::bar(fraction), mib(done), mib(total));
        if done >= total {
            eprintln!();
        }
    }

    pub fn finish(&self) {
        eprintln!();
    }
}
