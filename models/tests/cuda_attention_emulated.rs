//! The fused CUDA attention kernel (`src/attention.cu`), run on the CPU: its source is compiled as
//! C++ against a warp emulator (`tests/cuda_emulator/`: threads for CUDA threads, barriers for
//! `__syncthreads`/`__syncwarp`/shuffles, WMMA fragments in a scrambled element order) and compared
//! with a double-precision softmax attention. This checks the kernel's tiling, masks, grouped-query
//! heads, online softmax and shared-memory reuse on every machine; the GPU device check runs the
//! same kernel through candle on real hardware.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".to_string())
}

fn has_cxx() -> bool {
    Command::new(cxx()).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// Compiles the emulated kernel once per test process.
fn harness(dir: &Path) -> PathBuf {
    if !has_cxx() {
        // The same provisioning the app's video and GUI tests use (g++ is on its list).
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../app/tests/provision.sh");
        let status = Command::new("sh").arg(&script).status().expect("run app/tests/provision.sh");
        assert!(status.success() && has_cxx(), "a C++ compiler is needed to run the CUDA kernel under the emulator: apt-get install g++");
    }
    let source_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emulator");
    let binary = dir.join("attention-harness");
    let output = Command::new(cxx())
        .args(["-std=c++20", "-O2", "-pthread", "-fno-strict-aliasing", "-Wall", "-Werror"])
        .arg("-I")
        .arg(&source_dir)
        .arg(source_dir.join("harness.cpp"))
        .arg("-o")
        .arg(&binary)
        .output()
        .expect("run the C++ compiler");
    assert!(output.status.success(), "compiling src/attention.cu under the emulator failed:\n{}", String::from_utf8_lossy(&output.stderr));
    binary
}

struct Case {
    dtype: &'static str,
    head_size: usize,
    batch: usize,
    heads: usize,
    kv_heads: usize,
    t_q: usize,
    t_k: usize,
    causal: bool,
    q_offset: usize,
    scale: f32,
    misaligned: bool,
    ramp: bool,
}

/// Runs one case and returns (largest error, largest reference magnitude).
fn run(harness: &Path, case: &Case, seed: u32) -> (f64, f64) {
    let args = [
        case.dtype.to_string(),
        case.head_size.to_string(),
        case.batch.to_string(),
        case.heads.to_string(),
        case.kv_heads.to_string(),
        case.t_q.to_string(),
        case.t_k.to_string(),
        (case.causal as u8).to_string(),
        case.q_offset.to_string(),
        case.scale.to_string(),
        (case.misaligned as u8).to_string(),
        (case.ramp as u8).to_string(),
        seed.to_string(),
    ];
    let output = Command::new(harness).args(&args).output().expect("run the emulated kernel");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "harness {args:?} failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    let numbers: Vec<f64> = stdout.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(numbers.len(), 2, "unexpected harness output: {stdout}");
    (numbers[0], numbers[1])
}

#[test]
fn fused_cuda_attention_matches_softmax_attention_under_the_emulator() {
    let dir = tempfile::TempDir::new().unwrap();
    let harness = harness(dir.path());
    let base = Case {
        dtype: "bf16",
        head_size: 64,
        batch: 1,
        heads: 2,
        kv_heads: 2,
        t_q: 130,
        t_k: 130,
        causal: false,
        q_offset: 0,
        scale: 0.125,
        misaligned: false,
        ramp: false,
    };
    let cases = [
        // VGGT's frame attention: frames as the batch, a sequence that leaves partial tiles.
        Case { batch: 2, ..base },
        // Global attention with later keys far larger: later tiles raise every row's max.
        Case { heads: 1, kv_heads: 1, t_q: 300, t_k: 300, scale: 1.0, ramp: true, ..base },
        // The Qwen vision tower's head size, both element types, tensors off 16-byte boundaries.
        Case { head_size: 80, t_q: 97, t_k: 97, scale: 80f32.powf(-0.5), misaligned: true, ..base },
        Case { dtype: "f16", head_size: 80, t_q: 97, t_k: 97, scale: 80f32.powf(-0.5), misaligned: true, ..base },
        // The language model's causal prefill with grouped-query heads.
        Case { head_size: 128, heads: 4, kv_heads: 2, t_q: 150, t_k: 150, causal: true, scale: 128f32.powf(-0.5), ..base },
        Case { dtype: "f16", head_size: 128, heads: 4, kv_heads: 1, t_q: 150, t_k: 150, causal: true, scale: 0.5, ramp: true, ..base },
        // A prompt continued after a cached prefix, and one decoding step.
        Case { head_size: 128, heads: 2, kv_heads: 1, t_q: 40, t_k: 170, causal: true, q_offset: 130, scale: 0.3, ..base },
        Case { dtype: "f16", head_size: 128, heads: 2, kv_heads: 1, t_q: 1, t_k: 77, causal: true, q_offset: 76, scale: 0.3, ..base },
        // Cross-length (more keys than queries) and the other head sizes.
        Case { dtype: "f16", head_size: 32, t_q: 20, t_k: 200, ..base },
        // The tiny fixtures' head size (the CUDA parity tests), causal with grouped-query heads.
        Case { head_size: 16, heads: 2, kv_heads: 1, t_q: 70, t_k: 70, causal: true, scale: 0.25, ..base },
        Case { dtype: "f16", head_size: 96, heads: 3, kv_heads: 3, t_q: 65, t_k: 64, ..base },
    ];
    for (seed, case) in cases.iter().enumerate() {
        let (error, reference) = run(&harness, case, seed as u32 + 1);
        // Outputs are averages of values in [-1, 1]; the error is the probabilities' and the
        // output's rounding to the element type (8 significant bits for bf16, 11 for f16).
        let tolerance = if case.dtype == "bf16" { 1e-2 } else { 2e-3 };
        assert!(
            error <= tolerance && reference > 0.05,
            "{} head size {} ({} x {} queries of {} keys, causal {} from {}): error {error} (tolerance {tolerance}), reference max {reference}",
            case.dtype, case.head_size, case.batch * case.heads, case.t_q, case.t_k, case.causal, case.q_offset
        );
    }
}
