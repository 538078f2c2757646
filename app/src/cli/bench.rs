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
        /// Instead of timing a run: cancel runs after each of these many seconds (comma-separated)
        /// and report how long each took to stop (the app's Cancel button does the same).
        #[arg(long, value_delimiter = ',')]
        cancel_after: Vec<f64>,
    },
    /// Space-aware sampling at upstream's size: 128 candidate frames of 518x392 point maps (a
    /// synthetic room seen from a loop) with smooth and with speckled confidences, voxel sets +
    /// greedy picks for K = 16.
    Sample {
        #[arg(long, default_value_t = 128)]
        frames: usize,
        #[arg(long, default_value_t = 392)]
        height: usize,
        #[arg(long, default_value_t = 518)]
        width: usize,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
    /// Video seeking for the player: random seeks, steps forward and the scrub previews, on VIDEO
    /// or (without one) a generated 1080p H.264 clip with B-frames and 250-frame GOPs.
    Seek {
        video: Option<std::path::PathBuf>,
        /// Random seeks to time.
        #[arg(long, default_value_t = 20)]
        seeks: usize,
    },
    /// The CPU attention kernels at Spatial-MLLM's sizes, for each query block and key tile of
    /// the online softmax (key tile 0 = whole rows), with the register micro-kernels and with
    /// OpenBLAS products: VGGT's global attention (all frames' tokens, 16 heads of 64) and frame
    /// attention (each frame alone), the vision tower's 64-token windows (16 heads of 80), and the
    /// language model's causal prefill and one decoding step over 36 layers (16 heads over 2 kv
    /// heads of 128); seconds and GFLOP/s, best of --repeats.
    Attention {
        #[arg(long, default_value_t = 16)]
        frames: usize,
        /// VGGT tokens per frame (476x644: 34x46 patches + camera and 4 register tokens).
        #[arg(long, default_value_t = 1569)]
        tokens_per_frame: usize,
        #[arg(long, default_value_t = 3200)]
        prompt_tokens: usize,
        #[arg(long, value_delimiter = ',', default_values_t = [64usize, 256])]
        query_blocks: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_values_t = [0usize, 256, 1024])]
        key_tiles: Vec<usize>,
        #[arg(long, default_value_t = 1)]
        repeats: usize,
        /// f32, or bf16-products (the register kernels' products in bf16, where the CPU has
        /// AVX512-BF16)
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// The DPT heads' stride-1 convolutions at one image size (each head runs them per frame),
    /// by the default (Winograd tiles) and by shifted products: seconds and GFLOP/s (direct-convolution
    /// arithmetic), best of --repeats, and the largest difference between the two.
    Conv {
        #[arg(long, default_value_t = 294)]
        height: usize,
        #[arg(long, default_value_t = 518)]
        width: usize,
        #[arg(long, default_value_t = 2)]
        repeats: usize,
    },
    /// Single-precision matrix products at sizes where the hardware peak shows: OpenBLAS (the
    /// kernel its DYNAMIC_ARCH picked) next to the gemm crate candle uses without it; GFLOP/s.
    /// Then one core's piece of the models' own products, OpenBLAS next to another BLAS (--other);
    /// then the models' products on weights packed at load (AVX-512) and with bf16 products
    /// (AVX512-BF16), each against OpenBLAS.
    Blas {
        #[arg(long, value_delimiter = ',', default_values_t = [1024usize, 2048, 4096])]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Another BLAS to compare on one core (a path or library name; Debian's BLIS by default)
        #[arg(long, default_value = "libblis.so.4")]
        other: String,
    },
    /// One whole Spatial-MLLM question with constant weights (16 frames of 476x644 from a
    /// synthetic clip: the vision tower, the VGGT aggregator, the connector, a prompt of about
    /// 3,200 tokens, 32 greedy tokens): seconds, GFLOP/s against the machine's sgemm peak and peak
    /// memory per stage. `models/benches/upstream_ask.py` is the same question upstream.
    Ask {
        #[arg(long, default_value_t = 16)]
        frames: usize,
        #[arg(long, default_value_t = 476)]
        height: usize,
        #[arg(long, default_value_t = 644)]
        width: usize,
        /// The prompt's length; question text fills what the template and video leave.
        #[arg(long, default_value_t = 3200)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 32)]
        decode_tokens: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Qwen2.5-VL-3B's language model (the LLM of Spatial-MLLM) with constant weights: prefill
    /// tokens/s over a prompt of --prompt-tokens (a 16-frame 476x644 question is about 3200) and
    /// greedy decode tokens/s with the KV cache; --vision-frames also times the vision tower.
    Mllm {
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 16)]
        decode_tokens: usize,
        /// Frames (even) at 476x644 through the vision tower; 0 skips it.
        #[arg(long, default_value_t = 0)]
        vision_frames: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
}

/// The device's peak memory since the last reset, in MiB ("-" on the CPU).
pub fn gpu_peak_mib(device: &candle_core::Device) -> String {
    spatial_models::gpu_memory::peak_bytes(device).map_or("-".into(), |b| format!("{:.0}", b as f64 / 1048576.0))
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
        BenchCommand::Render { .. } => anyhow::bail!("`bench render` runs the GUI (see main)"),
        BenchCommand::Vggt { frames: Some(s), height, width, device, dtype, cancel_after, .. } if !cancel_after.is_empty() => {
            let (_, model, _, device) = vggt_1b_constant(&device, &dtype)?;
            let images = candle_core::Tensor::full(0.5f32, (s, 3, height, width), &device)?;
            println!("| frames | size | cancelled after s | stopped within s |");
            println!("|---|---|---|---|");
            for after in cancel_after {
                let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let setter = {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(std::time::Duration::from_secs_f64(after));
                        flag.store(true, std::sync::atomic::Ordering::Relaxed);
                        std::time::Instant::now()
                    })
                };
                let result = spatial_models::nn::cancellable(flag, || Ok(model.forward(&images)?))?;
                let stopped = std::time::Instant::now();
                let set_at = setter.join().map_err(|_| anyhow::anyhow!("cancel thread panicked"))?;
                match result {
                    None => println!("| {s} | {width}x{height} | {after:.1} | {:.3} |", stopped.saturating_duration_since(set_at).as_secs_f64()),
                    Some(_) => println!("| {s} | {width}x{height} | {after:.1} | finished before the cancel |"),
                }
            }
            Ok(0)
        }
        BenchCommand::Vggt { frames: Some(s), height, width, device, dtype, repeats, .. } => {
            let t0 = std::time::Instant::now();
            let (cfg, model, dtype, device) = vggt_1b_constant(&device, &dtype)?;
            let init = t0.elapsed().as_secs_f64();
            let weights_mib = peak_rss_mib().unwrap_or(0.0);
            let images = candle_core::Tensor::full(0.5f32, (s, 3, height, width), &device)?;
            if repeats > 1 {
                model.forward(&images)?; // warm-up (allocator, kernels)
            } else if !device.is_cpu() {
                // A GPU's first forward loads (JIT-compiles) every kernel module and makes the BLAS
                // handles: two frames of the same size warm those without a second full run.
                model.forward(&images.narrow(0, 0, s.min(2))?)?;
            }
            spatial_models::gpu_memory::reset_peak(&device);
            let mut times = Vec::new();
            for _ in 0..repeats.max(1) {
                let t = std::time::Instant::now();
                let (out, stages) = model.forward_timed(&images, None)?.context("no progress callback, so no cancellation")?;
                out.depth.sum_all()?.to_scalar::<f32>()?;
                times.push((t.elapsed().as_secs_f64(), stages));
            }
            times.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (median, st) = times[times.len() / 2];
            let flops = estimate_flops(&cfg, s, height, width);
            println!(
                "| {s} | {width}x{height} | {dtype:?} | {} | {median:.2} | {:.2} / {:.2} / {:.2} / {:.2} | {:.0} | {:.0} | {:.0} | {} | {init:.1} |",
                spatial_models::multiversion::simd_level().name(),
                st.aggregator,
                st.camera,
                st.depth,
                st.points,
                flops / median / 1e9,
                weights_mib,
                peak_rss_mib().unwrap_or(f64::NAN),
                gpu_peak_mib(&device)
            );
            Ok(0)
        }
        BenchCommand::Seek { video, seeks } => bench_seek(video, seeks),
        BenchCommand::Blas { sizes, repeats, other } => bench_blas(&sizes, repeats, &other),
        BenchCommand::Conv { height, width, repeats } => bench_conv(height, width, repeats),
        BenchCommand::Attention { frames, tokens_per_frame, prompt_tokens, query_blocks, key_tiles, repeats, dtype } => {
            anyhow::ensure!(matches!(dtype.as_str(), "f32" | "bf16-products"), "--dtype {dtype}: the attention takes f32 or bf16-products");
            bench_dtype(&dtype)?;
            bench_attention(frames, tokens_per_frame, prompt_tokens, &query_blocks, &key_tiles, repeats)
        }
        BenchCommand::Ask { frames, height, width, prompt_tokens, decode_tokens, device, dtype } => {
            super::bench_ask::bench_ask(&super::bench_ask::AskShape { frames, height, width, prompt_tokens, decode_tokens }, &device, &dtype)
        }
        BenchCommand::Sample { frames, height, width, repeats } => bench_sample(frames, height, width, repeats),
        BenchCommand::Mllm { prompt_tokens, decode_tokens, vision_frames, device, dtype } => bench_mllm(prompt_tokens, decode_tokens, vision_frames, &device, &dtype),
        BenchCommand::Vggt { frames: None, device, dtype, repeats, .. } => {
            println!("VGGT-1B (constant weights, resident in memory), device {device}, dtype {dtype}, median of {repeats} run(s) (after a warm-up when more than one)");
            println!("CPU: {}; BLAS: {}", cpu_model(), spatial_models::blas::backend());
            println!("| frames | size | dtype | SIMD | seconds | aggregator / camera / depth / points s | GFLOP/s | RSS after load MiB | peak RSS MiB | peak GPU MiB | init s |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|");
            let exe = std::env::current_exe()?;
            // Each case at each vector width the CPU has, side by side in one run.
            let levels: &[&str] = match spatial_models::multiversion::simd_level() {
                spatial_models::multiversion::SimdLevel::Avx512 => &["avx2", "avx512"],
                _ => &["native"],
            };
            for (s, h, w) in [(2usize, 224usize, 224usize), (8, 294, 518)] {
                for level in levels {
                    let mut cmd = std::process::Command::new(&exe);
                    cmd.args(["bench", "vggt", "--frames", &s.to_string(), "--height", &h.to_string(), "--width", &w.to_string()]).args(["--device", &device, "--dtype", &dtype, "--repeats", &repeats.to_string()]);
                    if *level != "native" {
                        cmd.env("SPATIAL_SIMD", level);
                    }
                    let status = cmd.status().context("spawning the benchmark case")?;
                    if !status.success() {
                        anyhow::bail!("benchmark case {s} frames {w}x{h} failed");
                    }
                }
            }
            Ok(0)
        }
    }
}

fn bench_blas(sizes: &[usize], repeats: usize, other: &str) -> Result<i32> {
    use candle_core::{Device, Tensor};
    println!("f32 matrix products (M = N = K), best of {repeats}; CPU: {}", cpu_model());
    println!("OpenBLAS: {}", spatial_models::blas::backend());
    println!("| size | OpenBLAS GFLOP/s | gemm crate GFLOP/s |");
    println!("|---|---|---|");
    for &n in sizes {
        let a = Tensor::full(0.5f32, (n, n), &Device::Cpu)?;
        let b = Tensor::full(0.25f32, (n, n), &Device::Cpu)?;
        let best = |f: &dyn Fn() -> Result<Tensor>| -> Result<f64> {
            let mut best = f64::INFINITY;
            for _ in 0..repeats.max(1) {
                let t = std::time::Instant::now();
                let c = f()?;
                best = best.min(t.elapsed().as_secs_f64());
                // The product is used, so nothing is optimised away; every entry is n / 8.
                anyhow::ensure!((c.get(0)?.get(0)?.to_scalar::<f32>()? - n as f32 / 8.0).abs() < 1e-2 * n as f32, "wrong product");
            }
            Ok(2.0 * (n as f64).powi(3) / best / 1e9)
        };
        let blas = best(&|| Ok(spatial_models::blas::matmul(&a, &b)?))?;
        let gemm = best(&|| Ok(a.matmul(&b)?))?;
        println!("| {n} | {blas:.0} | {gemm:.0} |");
    }
    if let Some(fma) = spatial_models::cpu_peak::fma_peak_gflops() {
        println!("FMA peak ({} independent chains of fused multiply-adds on every core, {}): {fma:.0} GFLOP/s", spatial_models::cpu_peak::CHAINS, spatial_models::multiversion::simd_level().name());
    }
    bench_blas_model_shapes(repeats, other)?;
    bench_packed_weights(repeats)?;
    bench_bf16_products(repeats)?;
    Ok(0)
}

/// (product, tokens, output features, input features) of the models' products that `bench blas`
/// times.
const MODEL_PRODUCTS: [(&str, usize, usize, usize); 8] = [
    ("VGGT block, 2 frames of 224x224: q/k/v", 522, 3072, 1024),
    ("VGGT block, 2 frames of 224x224: attention output", 522, 1024, 1024),
    ("VGGT block, 2 frames of 224x224: MLP up", 522, 4096, 1024),
    ("VGGT block, 2 frames of 224x224: MLP down", 522, 1024, 4096),
    ("VGGT block, a 2,048-token chunk: MLP up", 2048, 4096, 1024),
    ("VGGT block, a 2,048-token chunk: MLP down", 2048, 1024, 4096),
    ("connector, 16 frames: one 1,024-deep slice of the first layer", 3128, 16384, 1024),
    ("language model, a 2,048-token chunk: MLP down", 2048, 2048, 11008),
];

/// The f32 kernel on weights packed at load (`spatial_models::cpu_packed`, what VGGT's blocks
/// use on AVX-512 CPUs) against OpenBLAS as the blocks call it for unpacked weights, at the
/// models' shapes, whole products on all cores, the two timed in turn, next to the FMA peak.
fn bench_packed_weights(repeats: usize) -> Result<()> {
    use spatial_models::cpu_packed::{PackedWeight, available, matmul};
    println!();
    if !available() {
        println!("f32 products on packed weights: this CPU has no AVX-512 (within SPATIAL_SIMD's cap), so the models' f32 products run on OpenBLAS alone");
        return Ok(());
    }
    let peak = spatial_models::cpu_peak::fma_peak_gflops();
    println!("f32 products on weights packed at load (14 x 32 AVX-512 tiles; the FMA peak: {}) against OpenBLAS as the blocks call it for unpacked weights (a single-threaded call per rayon thread), whole products on all cores, timed in turn, best of {repeats}", peak.map_or("-".to_string(), |p| format!("{p:.0} GFLOP/s")));
    println!("| product | m x n x k | OpenBLAS GFLOP/s | packed weights GFLOP/s | ratio | packed share of the FMA peak | packing the weight (once, at load) |");
    println!("|---|---|---|---|---|---|---|");
    for (name, m, n, k) in MODEL_PRODUCTS {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.125).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.125).collect();
        // Every entry of the product is the same sum.
        let expected: f64 = (0..k).map(|p| ((p % 7) as f64 * 0.125) * ((p % 5) as f64 * 0.125)).sum();
        let packing = std::time::Instant::now();
        let packed = PackedWeight::pack(&w, n, k);
        let packing = packing.elapsed().as_secs_f64();
        let (mut blas, mut ours) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..repeats.max(1) {
            // OpenBLAS as the blocks call it for a weight that is not packed (rayon's threads,
            // one single-threaded call each): with its own threads it was the whole-product
            // comparison, and those threads, spinning for a while after each call, took a core
            // from the packed product timed next (the smallest products then ran at half speed).
            for (best, product) in [(&mut blas, &(|| Ok(spatial_models::cpu::blocks_f32_product(&x, k, &w)[0])) as &dyn Fn() -> Result<f32>), (&mut ours, &|| Ok(matmul(&x, m, &packed)?.expect("checked above")[0]))] {
                let t = std::time::Instant::now();
                let first = product()?;
                *best = best.min(t.elapsed().as_secs_f64());
                anyhow::ensure!((first as f64 - expected).abs() <= 1e-4 * expected.max(1.0), "{name}: the product's first entry is {first}, expected {expected}");
            }
        }
        let rate = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
        let share = peak.map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * rate(ours) / p));
        println!("| {name} | {m} x {n} x {k} | {:.0} | {:.0} | {:.2}x | {share} | {:.1} ms, {:.1} GB/s |", rate(blas), rate(ours), rate(ours) / rate(blas), packing * 1e3, (n * k * 4) as f64 / packing / 1e9);
    }
    Ok(())
}

/// `--dtype bf16-products`' kernel against the f32 product as the blocks run it (OpenBLAS) at the
/// models' shapes, whole products on all cores, next to the measured peaks of both instructions.
fn bench_bf16_products(repeats: usize) -> Result<()> {
    use spatial_models::cpu_bf16::{matmul_bf16, round_to_bf16};
    println!();
    let Some(peak) = spatial_models::cpu_peak::bf16_dot_peak_gflops() else {
        println!("bf16 products: this CPU has no AVX512-BF16 (--dtype bf16-products rounds the same way and runs at the f32 products' speed)");
        return Ok(());
    };
    println!("bf16 products (--dtype bf16-products: vdpbf16ps, 32 bf16 multiply-adds per instruction; measured peak {peak:.0} GFLOP/s on every core) against f32 OpenBLAS, whole products on all cores, best of {repeats}");
    println!("| product | m x n x k | OpenBLAS f32 GFLOP/s | bf16 products GFLOP/s | ratio | bf16 share of its peak |");
    println!("|---|---|---|---|---|---|");
    for (name, m, n, k) in MODEL_PRODUCTS {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.125).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.125).collect();
        // Every entry of the product is the same sum (the values are exact in bf16).
        let expected: f64 = (0..k).map(|p| ((p % 7) as f64 * 0.125) * ((p % 5) as f64 * 0.125)).sum();
        let bits: Vec<u16> = w.iter().map(|&v| round_to_bf16(v)).collect();
        let best = |f: &dyn Fn() -> Result<f32>| -> Result<f64> {
            let mut best = f64::INFINITY;
            for _ in 0..repeats.max(1) {
                let t = std::time::Instant::now();
                let first = f()?;
                best = best.min(t.elapsed().as_secs_f64());
                anyhow::ensure!((first as f64 - expected).abs() <= 1e-4 * expected.max(1.0), "{name}: the product's first entry is {first}, expected {expected}");
            }
            Ok(2.0 * (m * n * k) as f64 / best / 1e9)
        };
        let f32_rate = best(&|| Ok(spatial_models::cpu::blocks_f32_product(&x, k, &w)[0]))?;
        let bf16_rate = best(&|| Ok(matmul_bf16(&x, m, k, &bits, n)?.expect("checked above")[0]))?;
        println!("| {name} | {m} x {n} x {k} | {f32_rate:.0} | {bf16_rate:.0} | {:.2}x | {:.0}% |", bf16_rate / f32_rate, 100.0 * bf16_rate / peak);
    }
    Ok(())
}

/// The models' products as each core computes its piece (the fused kernels split a product over
/// the cores along its longer side and run one single-threaded BLAS call per piece), timed on one
/// core through OpenBLAS and through `other`: whether another library's kernels would be faster
/// at the shapes that matter, not only at large squares.
fn bench_blas_model_shapes(repeats: usize, other: &str) -> Result<()> {
    use spatial_models::blas::{ComparedSgemm, OneCoreSgemm, product_pieces, sgemm_one_core};
    let other_lib = ComparedSgemm::load(other);
    let cores = product_pieces();
    let other_name = match &other_lib {
        Some(lib) => lib.name.clone(),
        None => format!("{other} (not loaded: Debian's BLIS is apt-get install libblis4-serial)"),
    };
    println!();
    println!("One core's piece of the models' products ({cores} cores split each along its longer side), best of {repeats}: OpenBLAS against {other_name}");
    println!("| product | whole m x n x k | one core's piece | OpenBLAS GFLOP/s | other GFLOP/s | other / OpenBLAS |");
    println!("|---|---|---|---|---|---|");
    for (name, m, n, k) in MODEL_PRODUCTS {
        let (pm, pn) = if m >= n { (m.div_ceil(cores), n) } else { (m, n.div_ceil(cores)) };
        let a: Vec<f32> = (0..pm * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..pn * k).map(|i| (i % 5) as f32 * 0.1).collect();
        // Every entry of the product is the same sum over the depth; both libraries must give it.
        let expected: f64 = (0..k).map(|p| ((p % 7) as f64 * 0.1) * ((p % 5) as f64 * 0.1)).sum();
        let mut c = vec![0f32; pm * pn];
        let mut time = |library: OneCoreSgemm| -> Result<Option<f64>> {
            let mut best = f64::INFINITY;
            for _ in 0..repeats.max(1) {
                c.fill(f32::NAN);
                let t = std::time::Instant::now();
                if !sgemm_one_core(library, pm, pn, k, &a, &b, &mut c) {
                    return Ok(None);
                }
                best = best.min(t.elapsed().as_secs_f64());
                let got = c[0] as f64;
                anyhow::ensure!((got - expected).abs() <= 1e-4 * expected.abs().max(1.0), "{name}: the product's first entry is {got}, expected {expected}");
            }
            Ok(Some(2.0 * (pm * pn * k) as f64 / best / 1e9))
        };
        let openblas = time(OneCoreSgemm::OpenBlas)?;
        let other_rate = match &other_lib {
            Some(lib) => time(OneCoreSgemm::Other(lib))?,
            None => None,
        };
        let show = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.1}"));
        let ratio = match (openblas, other_rate) {
            (Some(o), Some(x)) => format!("{:.2}x", x / o),
            _ => "-".into(),
        };
        println!("| {name} | {m} x {n} x {k} | {pm} x {pn} x {k} | {} | {} | {ratio} |", show(openblas), show(other_rate));
    }
    Ok(())
}

fn bench_conv(height: usize, width: usize, repeats: usize) -> Result<i32> {
    use spatial_models::cpu::{ConvAlgorithm, conv2d_stride1};
    const PATCH: usize = 14;
    anyhow::ensure!(height >= PATCH && width >= PATCH, "the image must be at least one {PATCH}-pixel patch on each side");
    let (gh, gw) = (height / PATCH, width / PATCH);
    // VGGT-1B's DPT head: features 256, out_channels [256, 512, 1024, 1024]; the four scales are
    // the patch grid x4, x2, x1 and /2 (stride-2, rounded up), fused upwards, then the output
    // convolutions at twice the finest scale and at the image size.
    let (f, oc) = (256usize, [256usize, 512, 1024, 1024]);
    let scales = [(gh * 4, gw * 4), (gh * 2, gw * 2), (gh, gw), (gh.div_ceil(2), gw.div_ceil(2))];
    let mut convs: Vec<(String, usize, usize, usize, usize, usize, usize)> = Vec::new();
    for (i, &(h, w)) in scales.iter().enumerate() {
        convs.push((format!("layer{}_rn", i + 1), 1, oc[i], f, h, w, 3));
    }
    for (i, &(h, w)) in scales.iter().enumerate().rev() {
        let units = if i == 3 { 2 } else { 4 };
        convs.push((format!("refinenet{} residual units", i + 1), units, f, f, h, w, 3));
        let (oh, ow) = if i == 0 { (2 * h, 2 * w) } else { scales[i - 1] };
        convs.push((format!("refinenet{} out_conv", i + 1), 1, f, f, oh, ow, 1));
    }
    convs.push(("output_conv1".into(), 1, f, f / 2, 8 * gh, 8 * gw, 3));
    convs.push(("output_conv2".into(), 1, f / 2, 32, gh * PATCH, gw * PATCH, 3));
    let values = |n: usize| -> Result<Vec<f32>> { Ok(candle_core::Tensor::rand(-1f32, 1.0, n, &candle_core::Device::Cpu)?.to_vec1()?) };
    println!("DPT head convolutions at {}x{} (one frame, one head), best of {repeats}; CPU: {}", gw * PATCH, gh * PATCH, cpu_model());
    println!("(the default, Winograd tiles, takes shifted products for maps under {} output pixels)", spatial_models::cpu::WINOGRAD_MIN_PIXELS);
    println!("| convolution | count x C_in -> C_out | map | kernel | shifted products s | GFLOP/s | default s | GFLOP/s | speedup | max difference / output scale |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let (mut total_direct, mut total_winograd) = (0.0, 0.0);
    for (name, count, c_in, c_out, h, w, k) in convs {
        let x = values(c_in * h * w)?;
        let weight: Vec<f32> = values(c_out * c_in * k * k)?.iter().map(|v| v / (c_in * k * k) as f32).collect();
        let bias = values(c_out)?;
        let pad = k / 2;
        let run = |algorithm: ConvAlgorithm| -> (f64, Vec<f32>) {
            let mut best = f64::INFINITY;
            let mut out = Vec::new();
            for _ in 0..repeats.max(1) {
                let t = std::time::Instant::now();
                out = conv2d_stride1(&x, 1, c_in, h, w, &weight, c_out, k, pad, Some(&bias), algorithm);
                best = best.min(t.elapsed().as_secs_f64());
            }
            (best * count as f64, out)
        };
        let (direct, want) = run(ConvAlgorithm::ShiftedProducts);
        let (winograd, got) = run(ConvAlgorithm::Winograd);
        let scale = (want.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / want.len() as f64).sqrt();
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max) / scale;
        let gflop = 2.0 * (count * c_out * c_in * k * k * h * w) as f64 / 1e9;
        total_direct += direct;
        total_winograd += winograd;
        println!("| {name} | {count} x {c_in} -> {c_out} | {w}x{h} | {k}x{k} | {direct:.3} | {:.0} | {winograd:.3} | {:.0} | {:.2}x | {worst:.1e} |", gflop / direct, gflop / winograd, direct / winograd);
    }
    println!("| all | | | | {total_direct:.3} | | {total_winograd:.3} | | {:.2}x | |", total_direct / total_winograd);
    Ok(0)
}

fn bench_attention(frames: usize, tokens_per_frame: usize, prompt_tokens: usize, query_blocks: &[usize], key_tiles: &[usize], repeats: usize) -> Result<i32> {
    use spatial_models::cpu::{AttentionKernel, AttentionTiling, attention_tiled, causal_attention_tiled};
    anyhow::ensure!(frames > 0 && tokens_per_frame > 0 && prompt_tokens > 0, "frames, tokens per frame and prompt tokens must be positive");
    anyhow::ensure!(!key_tiles.is_empty() && !query_blocks.is_empty(), "give at least one query block and key tile");
    anyhow::ensure!(!query_blocks.contains(&0), "a query block holds at least one query");
    // Key tile 0 stands for whole rows.
    // Each tiling with both kernels; whole rows only with OpenBLAS (the register kernels keep a
    // tile's transposed keys, which for whole rows is the whole head).
    let tilings: Vec<AttentionTiling> = query_blocks
        .iter()
        .flat_map(|&query_block| key_tiles.iter().map(move |&k| (query_block, k)))
        .flat_map(|(query_block, k)| {
            let key_tile = if k == 0 { usize::MAX } else { k };
            let kernels: &[AttentionKernel] = if k == 0 { &[AttentionKernel::Blas] } else { &[AttentionKernel::Registers, AttentionKernel::Blas] };
            kernels.iter().map(move |&kernel| AttentionTiling { query_block, key_tile, kernel })
        })
        .collect();
    let tiling_name = |t: &AttentionTiling| {
        let default = if *t == AttentionTiling::DEFAULT { " (default)" } else { "" };
        let kernel = match t.kernel {
            AttentionKernel::Registers => "register kernels",
            AttentionKernel::Blas => "OpenBLAS",
        };
        if t.key_tile == usize::MAX { format!("{} x whole row, {kernel}{default}", t.query_block) } else { format!("{} x {}, {kernel}{default}", t.query_block, t.key_tile) }
    };
    // Values in [-0.5, 0.5): scores vary (as trained ones do) so every exp is really computed.
    let values = |n: usize| -> Result<Vec<f32>> { Ok(candle_core::Tensor::rand(-0.5f32, 0.5, n, &candle_core::Device::Cpu)?.to_vec1()?) };
    let (vggt_heads, vggt_dim) = (16, 64);
    let (lm_heads, lm_kv_heads, lm_dim) = (16, 2, 128);
    let global_tokens = frames * tokens_per_frame;
    let products = if spatial_models::cpu_bf16::bf16_products() { ", bf16 products in the register kernels" } else { "" };
    println!("CPU attention{products}, best of {repeats}; CPU: {}", cpu_model());
    println!("| attention | shape | queries x keys per tile | seconds | GFLOP/s |");
    println!("|---|---|---|---|---|");
    let time = |run: &dyn Fn() -> candle_core::Result<Vec<f32>>| -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            let t = std::time::Instant::now();
            let out = run()?;
            best = best.min(t.elapsed().as_secs_f64());
            anyhow::ensure!(out.iter().all(|v| v.is_finite()), "attention gave a non-finite value");
        }
        Ok(best)
    };
    for (name, batch, t) in [("VGGT global", 1, global_tokens), ("VGGT frame", frames, tokens_per_frame)] {
        let n = batch * vggt_heads * t * vggt_dim;
        let (q, k, v) = (values(n)?, values(n)?, values(n)?);
        let scale = 1.0 / (vggt_dim as f32).sqrt();
        let gflop = 4.0 * (batch * vggt_heads * vggt_dim) as f64 * (t as f64).powi(2) / 1e9;
        for tiling in &tilings {
            let secs = time(&|| attention_tiled(&q, &k, &v, batch, vggt_heads, t, vggt_dim, scale, *tiling))?;
            println!("| {name} | {batch}x{vggt_heads} heads x {t} tokens x {vggt_dim} | {} | {secs:.2} | {:.0} |", tiling_name(tiling), gflop / secs);
        }
    }
    // The vision tower's window attention: windows of 8x8 patches (64 tokens), 16 heads of 80,
    // as many windows as the frames' temporal slices hold (VGGT's tokens per frame less its 5
    // camera and register tokens are the patches per frame).
    let (vision_heads, vision_dim, window) = (16, 80, 64);
    let windows = (frames / 2).max(1) * (tokens_per_frame.saturating_sub(5)).max(window) / window;
    let n = windows * vision_heads * window * vision_dim;
    let (q, k, v) = (values(n)?, values(n)?, values(n)?);
    let gflop = 4.0 * (windows * vision_heads * vision_dim) as f64 * (window as f64).powi(2) / 1e9;
    for tiling in &tilings {
        let secs = time(&|| attention_tiled(&q, &k, &v, windows, vision_heads, window, vision_dim, 1.0 / (vision_dim as f32).sqrt(), *tiling))?;
        println!("| vision windows | {windows}x{vision_heads} heads x {window} tokens x {vision_dim} | {} | {secs:.2} | {:.0} |", tiling_name(tiling), gflop / secs);
    }
    let t = prompt_tokens;
    let q = values(lm_heads * t * lm_dim)?;
    let (k, v) = (values(lm_kv_heads * t * lm_dim)?, values(lm_kv_heads * t * lm_dim)?);
    // What a causal mask leaves: query i scores i + 1 keys.
    let gflop = 4.0 * (lm_heads * lm_dim) as f64 * (t as f64) * (t as f64 + 1.0) / 2.0 / 1e9;
    let scale = 1.0 / (lm_dim as f32).sqrt();
    for tiling in &tilings {
        let secs = time(&|| causal_attention_tiled(&q, &k, &v, 1, lm_heads, lm_kv_heads, t, t, lm_dim, 0, scale, *tiling))?;
        println!("| LM causal prefill | {lm_heads} heads / {lm_kv_heads} kv x {t} tokens x {lm_dim} | {} | {secs:.2} | {gflop_s:.0} |", tiling_name(tiling), gflop_s = gflop / secs);
    }
    // Decoding: one query per head against the whole cache, once per layer (36 in the 3B model).
    let layers = 36;
    let gflop = 4.0 * (layers * lm_heads * lm_dim) as f64 * t as f64 / 1e9;
    let q = values(lm_heads * lm_dim)?;
    for tiling in &tilings {
        let secs = time(&|| {
            let mut last = Vec::new();
            for _ in 0..layers {
                last = causal_attention_tiled(&q, &k, &v, 1, lm_heads, lm_kv_heads, 1, t, lm_dim, t - 1, scale, *tiling)?;
            }
            Ok(last)
        })?;
        println!("| LM decode step, {layers} layers | {lm_heads} heads / {lm_kv_heads} kv x 1 query x {t} keys x {lm_dim} | {} | {secs:.3} | {gflop_s:.0} |", tiling_name(tiling), gflop_s = gflop / secs);
    }
    Ok(0)
}

/// The CPU's model name (`/proc/cpuinfo`), for benchmark tables.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()).unwrap_or_else(|| "unknown".into());
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    let simd = if flags.contains(" avx512f") { "AVX-512" } else if flags.contains(" avx2") { "AVX2" } else { "no AVX2" };
    format!("{name} ({cores} cores, {simd})")
}

/// A benchmark's `--dtype`: f32, bf16, f16, or bf16-products (bf16 weights whose products round
/// the activations to bf16 too, see `--dtype` of the other commands).
pub(super) fn bench_dtype(name: &str) -> Result<candle_core::DType> {
    let products = name == "bf16-products";
    spatial_models::cpu_bf16::set_bf16_products(products);
    if products { Ok(candle_core::DType::BF16) } else { spatial_models::parse_dtype(name).map_err(|e| anyhow::anyhow!("--dtype: {e} (or bf16-products)")) }
}

/// VGGT-1B with constant weights (aggregator in `dtype`, heads in f32, as `Vggt::load` does).
fn vggt_1b_constant(device: &str, dtype: &str) -> Result<(VggtConfig, Vggt, candle_core::DType, candle_core::Device)> {
    let device = spatial_models::open_device(device)?;
    let dtype = bench_dtype(dtype)?;
    let cfg = VggtConfig::vggt_1b();
    let constant = super::bench_backend::ConstantWeights(1e-3);
    let vb = candle_nn::VarBuilder::from_backend(Box::new(constant), dtype, device.clone());
    let heads = candle_nn::VarBuilder::from_backend(Box::new(constant), candle_core::DType::F32, device.clone());
    let model = Vggt::new(&cfg, vb, Some(heads))?;
    Ok((cfg, model, dtype, device))
}

fn bench_mllm(prompt_tokens: usize, decode_tokens: usize, vision_frames: usize, device: &str, dtype: &str) -> Result<i32> {
    use spatial_models::qwen2_5_vl::{GridThw, MropePositions, Qwen25VlConfig, TextModel, VisionTransformer};
    anyhow::ensure!(prompt_tokens > 0, "--prompt-tokens must be positive");
    let device = spatial_models::open_device(device)?;
    let dtype_name = dtype;
    let dtype = bench_dtype(dtype)?;
    let cfg = Qwen25VlConfig::qwen2_5_vl_3b();
    let constant = super::bench_backend::ConstantWeights(1e-3);
    let vb = candle_nn::VarBuilder::from_backend(Box::new(constant), dtype, device.clone());
    println!("Qwen2.5-VL-3B shapes (constant weights, resident), device {device:?}, dtype {dtype_name}");
    if vision_frames > 0 {
        let t0 = std::time::Instant::now();
        let visual = VisionTransformer::new(&cfg.vision_config, vb.pp("visual"))?;
        let init = t0.elapsed().as_secs_f64();
        let grid = GridThw { t: vision_frames.div_ceil(2), h: 476 / 14, w: 644 / 14 };
        let pixels = candle_core::Tensor::full(0.1f32, (grid.patches(), cfg.vision_config.patch_dim()), &device)?;
        if !device.is_cpu() {
            // Kernel modules and BLAS handles load on a GPU's first use: warm them on one frame pair.
            let small = GridThw { t: 1, ..grid };
            visual.forward(&pixels.narrow(0, 0, small.patches())?, &[small])?.sum_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        }
        let t = std::time::Instant::now();
        let out = visual.forward(&pixels, &[grid])?;
        out.sum_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let secs = t.elapsed().as_secs_f64();
        println!("| vision tower | {} frames 644x476 -> {} tokens | {secs:.2} s ({:.1} s per frame) | init {init:.1} s |", grid.t * 2, out.dim(0)?, secs / (grid.t * 2) as f64);
        drop(visual);
    }
    let t0 = std::time::Instant::now();
    let mut text = TextModel::new(&cfg, vb.pp("model"), vb.clone())?;
    let init = t0.elapsed().as_secs_f64();
    let weights_mib = peak_rss_mib().unwrap_or(0.0);
    let ids: Vec<u32> = (0..prompt_tokens as u32).map(|i| 1000 + i % 5000).collect();
    let embeds = text.embed(&ids, &device)?;
    if !device.is_cpu() {
        // As for the tower: a short prefill and one step warm the GPU's kernels, then are forgotten.
        let warm = text.forward_embeds(&embeds.narrow(0, 0, prompt_tokens.min(16))?, &MropePositions::text(0, prompt_tokens.min(16)))?;
        text.logits(&warm.narrow(0, warm.dim(0)? - 1, 1)?)?.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
        let e = text.embed(&[1000], &device)?;
        text.forward_embeds(&e, &MropePositions::text(prompt_tokens.min(16) as i64, 1))?.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        text.clear_cache();
    }
    let t = std::time::Instant::now();
    let hidden = text.forward_embeds(&embeds, &MropePositions::text(0, prompt_tokens))?;
    let logits = text.logits(&hidden.narrow(0, prompt_tokens - 1, 1)?)?;
    let mut next = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?[0];
    let prefill = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    for step in 0..decode_tokens {
        let e = text.embed(&[next], &device)?;
        let h = text.forward_embeds(&e, &MropePositions::text((prompt_tokens + step) as i64, 1))?;
        next = text.logits(&h)?.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?[0];
    }
    let decode = t.elapsed().as_secs_f64();
    println!("| prompt tokens | prefill s | prefill tok/s | decode tokens | decode s | decode tok/s | RSS after load MiB | peak RSS MiB | peak GPU MiB | init s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {prompt_tokens} | {prefill:.2} | {:.1} | {decode_tokens} | {decode:.2} | {:.2} | {weights_mib:.0} | {:.0} | {} | {init:.1} |",
        prompt_tokens as f64 / prefill,
        decode_tokens as f64 / decode.max(1e-9),
        peak_rss_mib().unwrap_or(f64::NAN),
        gpu_peak_mib(&device)
    );
    if device.is_cpu() && decode_tokens > 0 {
        // Measured after the peak RSS is read, so its buffer is not in it.
        println!("{}", decode_bandwidth_line(spatial_models::qwen2_5_vl::text::decode_weight_bytes(&cfg, dtype), decode_tokens as f64 / decode.max(1e-9)));
    }
    Ok(0)
}

/// What decoding reads against what the memory can give, both measured in this run: every token
/// reads every weight once, so the memory's read bandwidth bounds the rate.
pub(crate) fn decode_bandwidth_line(weight_bytes: f64, tokens_per_sec: f64) -> String {
    let read = weight_bytes * tokens_per_sec / 1e9;
    let bandwidth = spatial_models::cpu_peak::read_bandwidth_gbps();
    format!(
        "decode reads {:.1} GB of weights per token: {read:.1} GB/s, {:.0}% of this machine's memory read bandwidth measured right after ({bandwidth:.1} GB/s on all cores; the rate it allows: {:.2} tokens/s)",
        weight_bytes / 1e9,
        100.0 * read / bandwidth,
        bandwidth * 1e9 / weight_bytes
    )
}

fn bench_seek(video: Option<std::path::PathBuf>, seeks: usize) -> Result<i32> {
    use crate::pipeline::video::{DISPLAY_MAX_WIDTH, VideoInfo, VideoStream};
    use std::time::Instant;
    // The made clip's folder lives (and is removed) with `_clip_dir`.
    let (_clip_dir, path) = match video {
        Some(p) => (None, p),
        None => {
            let dir = tempfile::Builder::new().prefix("sv-bench-seek-").tempdir()?;
            let p = dir.path().join("1080p.mp4");
            eprintln!("encoding a 20 s 1080p30 H.264 clip (High, B-frames, GOP 250) to {}...", p.display());
            let ok = std::process::Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30", "-frames:v", "600", "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-bf", "3", "-g", "250", "-pix_fmt", "yuv420p"])
                .arg(&p)
                .status()?
                .success();
            anyhow::ensure!(ok, "ffmpeg could not make the test clip");
            (Some(dir), p)
        }
    };
    let info = VideoInfo::probe(&path)?;
    let t = Instant::now();
    let mut stream = VideoStream::open(info.clone(), Some(DISPLAY_MAX_WIDTH))?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    // A fixed pseudo-random sequence of seeks over the whole clip.
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut lat = Vec::new();
    for _ in 0..seeks {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state % info.frames as u64) as usize;
        let t = Instant::now();
        stream.frame(n)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut steps = Vec::new();
    // Playing forward from a third of the way in: the first is a seek, the rest are steps.
    stream.frame(info.frames / 3)?;
    for i in 1..=30 {
        let n = (info.frames / 3 + i).min(info.frames - 1);
        let t = Instant::now();
        stream.frame(n)?;
        steps.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Stepping back from the middle: the first step restarts and keeps up to 24 frames before it.
    let mut back = Vec::new();
    let mut kept = 0;
    for k in 0..5 {
        let n = info.frames / 2 + 37 * k;
        stream.frame(n)?;
        let t = Instant::now();
        kept += stream.frame_with_preceding(n - 1, 24)?.len() - 1;
        back.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (seek_med, seek_max) = stats(&mut lat);
    let (step_med, step_max) = stats(&mut steps);
    let (back_med, back_max) = stats(&mut back);
    let late = info.frames - 1;
    let t = Instant::now();
    info.decode(&[late], Some(DISPLAY_MAX_WIDTH))?;
    let one_pass_ms = t.elapsed().as_secs_f64() * 1e3;
    // Scrub previews: the app's background pass, then the frame under a random cursor.
    let t = Instant::now();
    let mut previews = crate::pipeline::previews::ScrubPreviews::start(&info);
    let mut first = None;
    while !previews.finished() {
        std::thread::sleep(std::time::Duration::from_millis(2));
        previews.receive();
        if previews.len() > 0 {
            first.get_or_insert(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let previews_s = t.elapsed().as_secs_f64();
    let mut scrub = Vec::new();
    let mut exact = 0;
    for _ in 0..seeks.max(1) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state % info.frames as u64) as usize;
        let t = Instant::now();
        if let Some((i, _)) = previews.nearest(n) {
            scrub.push(t.elapsed().as_secs_f64() * 1e3);
            exact += usize::from(i == n);
        }
    }
    let (scrub_med, scrub_max) = stats(&mut scrub);
    println!("{}: {} frames {}x{} {}, display decode at 640 px wide", path.display(), info.frames, info.width, info.height, info.codec);
    println!("| open (frame timestamps) ms | exact frame by random seek ms, median | max | step forward ms, median | max | first step back ms, median | max | frames kept for the next steps back | last frame by one-pass decode ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!("| {open_ms:.0} | {seek_med:.0} | {seek_max:.0} | {step_med:.1} | {step_max:.1} | {back_med:.0} | {back_max:.0} | {:.0} | {one_pass_ms:.0} |", kept as f64 / back.len() as f64);
    println!();
    println!("| scrub previews ({} px JPEG) | memory | first after ms | all after s | frame under a random cursor: preview ms, median | max | the exact frame's own preview |", crate::pipeline::previews::PREVIEW_WIDTH);
    println!("|---|---|---|---|---|---|---|");
    println!("| {}, every {} frame(s) | {:.1} MB | {:.0} | {previews_s:.1} | {scrub_med:.2} | {scrub_max:.2} | {exact} of {} |", previews.len(), previews.step(), previews.bytes() as f64 / 1e6, first.unwrap_or(f64::NAN), scrub.len());
    Ok(0)
}

fn bench_sample(frames: usize, height: usize, width: usize, repeats: usize) -> Result<i32> {
    use spatial_models::sampling::{SamplingParams, VoxelSets};
    use std::time::Instant;
    // Each frame looks at the walls of a 6 x 3 x 8 m room from a camera on a loop: ray-box hits.
    let (hw, hh, hd) = (3.0f32, 1.5f32, 4.0f32);
    let mut points = Vec::with_capacity(frames * height * width * 3);
    // Two confidence maps: smooth like VGGT's (high in the middle, falling towards the borders
    // and with distance) and speckled (a hash of the pixel: every 64-point block mixes kept and
    // dropped points, the worst case for the mask).
    let mut smooth = Vec::with_capacity(frames * height * width);
    let mut speckled = Vec::with_capacity(frames * height * width);
    for f in 0..frames {
        let a = f as f32 / frames as f32 * std::f32::consts::TAU;
        let (cx, cz) = (1.2 * a.cos(), 2.0 * a.sin());
        let yaw = a + std::f32::consts::FRAC_PI_2;
        for y in 0..height {
            for x in 0..width {
                let u = (x as f32 / width as f32 - 0.5) * 1.2;
                let v = (y as f32 / height as f32 - 0.5) * 0.9;
                let (dx, dz) = (yaw.cos() - u * yaw.sin(), yaw.sin() + u * yaw.cos());
                let dy = v;
                // Distance to the first wall along the ray.
                let t = [((if dx > 0.0 { hw } else { -hw }) - cx) / dx, ((if dy > 0.0 { hh } else { -hh }) - 0.0) / dy, ((if dz > 0.0 { hd } else { -hd }) - cz) / dz]
                    .into_iter()
                    .filter(|t| t.is_finite() && *t > 0.0)
                    .fold(f32::INFINITY, f32::min);
                points.extend([cx + t * dx, t * dy, cz + t * dz]);
                speckled.push(1.0 + ((x * 7 + y * 13 + f * 31) % 97) as f32 / 10.0);
                let centre = (x as f32 / width as f32 * std::f32::consts::PI).sin() * (y as f32 / height as f32 * std::f32::consts::PI).sin();
                smooth.push(1.0 + 8.0 * centre / (1.0 + 0.3 * t) + 0.5 * (a * 3.0).sin());
            }
        }
    }
    let params = SamplingParams { k: 16, ..Default::default() };
    println!("Space-aware sampling, {frames} frames of {width}x{height} point maps ({:.1} M points), K = 16, median of {} (and the fastest)", (frames * height * width) as f64 / 1e6, repeats.max(1));
    println!("| confidence | voxel sets ms (percentile, box, voxels) | greedy ms | total ms | voxels | picks |");
    println!("|---|---|---|---|---|---|");
    for (name, conf) in [("smooth", &smooth), ("speckled", &speckled)] {
        let mut build = Vec::new();
        let mut greedy = Vec::new();
        let mut picked = Vec::new();
        let mut voxels = 0;
        for _ in 0..repeats.max(1) {
            let t = Instant::now();
            let sets = VoxelSets::build(&points, conf, frames, &params)?;
            build.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            picked = sets.greedy(16).selected;
            greedy.push(t.elapsed().as_secs_f64() * 1e3);
            voxels = sets.total_voxels;
        }
        build.sort_by(f64::total_cmp);
        greedy.sort_by(f64::total_cmp);
        let (b, g) = (build[build.len() / 2], greedy[greedy.len() / 2]);
        println!("| {name} | {b:.1} ({:.1}) | {g:.2} | {:.1} | {voxels} | {picked:?} |", build[0], b + g);
    }
    Ok(0)
}
