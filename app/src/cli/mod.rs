//! Headless subcommands. Each returns the process exit code.

pub mod ask;
pub mod bench;
mod bench_backend;
pub mod reconstruct;
pub mod sample;
pub mod video;
pub mod weights;

/// A one-line progress display on stderr ("stage  k/n  elapsed  ETA").
pub struct ProgressLine {
    start: std::time::Instant,
    label: String,
}

impl ProgressLine {
    pub fn new(label: &str) -> Self {
        Self { start: std::time::Instant::now(), label: label.to_string() }
    }
    pub fn update(&self, done: usize, total: usize) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = if done > 0 { elapsed / done as f64 * (total - done) as f64 } else { f64::NAN };
        let width = 30;
        let filled = if total > 0 { width * done / total } else { 0 };
        eprint!("\r{} [{}{}] {done}/{total}  {elapsed:.1}s elapsed, ETA {eta:.1}s   ", self.label, "#".repeat(filled), "-".repeat(width - filled));
        if done == total {
            eprintln!();
        }
    }
}
