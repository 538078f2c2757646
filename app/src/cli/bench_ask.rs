//! `bench ask`: one Spatial-MLLM question at real shapes with constant weights, stage by stage
//! (the Qwen vision tower, the VGGT branch, the connector, prefill, decode), each with its time,
//! its estimated GFLOP/s next to the machine's measured sgemm peak, and its peak memory.
//! `models/benches/upstream_ask.py` asks the same question through upstream's code.

use super::bench::{cpu_model, peak_rss_mib};
use spatial_models::gpu_memory;
use anyhow::{Context, Result, ensure};
use candle_core::{Device, Tensor};
use spatial_models::qwen2_5_vl::{GridThw, KeyLayout, Qwen25VlConfig, text, vision};
use spatial_models::spatial_mllm::{AskEvent, GenerationParams, SpatialMllm, StopReason, processor};
use spatial_models::vggt::preprocess::RgbFrame;
use spatial_models::vggt::{VggtConfig, estimate_aggregator_flops};
use std::time::Instant;

/// What `bench ask` asks.
#[derive(Debug, Clone)]
pub struct AskShape {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// The prompt's length: the chat template and video tokens, padded with question text up to
    /// this many (a 16-frame 476x644 question is about 3,200).
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
}

/// A frame of the synthetic clip: smooth gradients that move with the frame index. The baseline
/// script draws the same pixels (same formula), so both sides see identical inputs.
pub fn synthetic_frame(index: usize, height: usize, width: usize) -> RgbFrame {
    let mut data = Vec::with_capacity(height * width * 3);
    for y in 0..height {
        for x in 0..width {
            for c in 0..3 {
                data.push(((x * (c + 1) + y * (3 - c) + index * 16 + c * 64) % 256) as u8);
            }
        }
    }
    RgbFrame { width, height, data }
}

/// Prompt ids laid out as Qwen2.5-VL's chat template lays out a video question (system turn,
/// user turn opening with the video, the question, the assistant turn), with stand-in ids for the
/// words: the length and the special tokens are what the model's cost depends on.
pub fn prompt_ids(cfg: &Qwen25VlConfig, video_tokens: usize, total: usize) -> Result<Vec<u32>> {
    const IM_START: u32 = 151644;
    const NEWLINE: u32 = 198;
    let words = |n: usize, seed: u32| (0..n as u32).map(move |i| 1000 + (i * 7 + seed) % 5000);
    // "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
    let mut ids = vec![IM_START];
    ids.extend(words(8, 1));
    ids.extend([cfg.eos_token_id, NEWLINE, IM_START]);
    ids.extend(words(2, 2));
    ids.push(cfg.vision_start_token_id);
    ids.extend(std::iter::repeat_n(cfg.video_token_id, video_tokens));
    ids.push(cfg.vision_end_token_id);
    // The question, then "<|im_end|>\n<|im_start|>assistant\n".
    let tail = 5;
    ensure!(total >= ids.len() + 1 + tail, "--prompt-tokens {total} is shorter than the template and the {video_tokens} video tokens ({} at least)", ids.len() + 1 + tail);
    let question = total - ids.len() - tail;
    ids.extend(words(question, 3));
    ids.extend([cfg.eos_token_id, NEWLINE, IM_START]);
    ids.extend(words(1, 4));
    ids.push(NEWLINE);
    Ok(ids)
}

/// Writes "5" to clear_refs, which resets the process's peak resident size (VmHWM), so each
/// stage's peak can be read on its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// OpenBLAS sgemm at 4096, best of three after a warm-up (the first product also pays for
/// OpenBLAS's thread start and fresh pages): the single-precision peak the stages are compared with.
fn sgemm_peak_gflops() -> Result<f64> {
    let n = 4096;
    let a = Tensor::full(0.5f32, (n, n), &Device::Cpu)?;
    let b = Tensor::full(0.25f32, (n, n), &Device::Cpu)?;
    spatial_models::blas::matmul(&a, &b)?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let c = spatial_models::blas::matmul(&a, &b)?;
        best = best.min(t.elapsed().as_secs_f64());
        ensure!((c.get(0)?.get(0)?.to_scalar::<f32>()? - n as f32 / 8.0).abs() < 1.0, "wrong product");
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

struct StageRow {
    name: String,
    secs: f64,
    flops: f64,
    peak_mib: f64,
    gpu_peak_mib: Option<f64>,
}

/// A stage boundary: its name, when, and the peaks (resident, device) of the stage it ends.
struct Mark {
    name: String,
    at: Instant,
    peak_mib: f64,
    gpu_peak_mib: Option<f64>,
}

pub fn bench_ask(shape: &AskShape, device: &str, dtype: &str) -> Result<i32> {
    ensure!(shape.frames >= 2 && shape.frames % 2 == 0, "--frames must be even and at least 2 (the vision tower groups frames in pairs)");
    ensure!(shape.height % 28 == 0 && shape.width % 28 == 0 && shape.height > 0 && shape.width > 0, "--height and --width must be positive multiples of 28 (the processor's sizes)");
    ensure!(shape.decode_tokens >= 1, "--decode-tokens must be at least 1");
    let device = spatial_models::open_device(device)?;
    let dtype_name = dtype;
    let dtype = super::bench::bench_dtype(dtype)?;
    let peak = if device.is_cpu() { Some(sgemm_peak_gflops()?) } else { None };
    let cfg = Qwen25VlConfig::qwen2_5_vl_3b();
    let vggt = VggtConfig::vggt_1b();
    let t0 = Instant::now();
    let constant = super::bench_backend::ConstantWeights(1e-3);
    let vb = candle_nn::VarBuilder::from_backend(Box::new(constant), dtype, device.clone());
    let mut model = SpatialMllm::new(&cfg, Some(&vggt), KeyLayout::Released, vb)?;
    // As `SpatialMllm::load` does: what building the weights freed (q/k/v stacked) goes back.
    spatial_models::release_freed_memory();
    let init = t0.elapsed().as_secs_f64();
    let weights_mib = peak_rss_mib().unwrap_or(f64::NAN);

    let frames: Vec<RgbFrame> = (0..shape.frames).map(|i| synthetic_frame(i, shape.height, shape.width)).collect();
    let v = &cfg.vision_config;
    let warmed_up = !device.is_cpu();
    if warmed_up {
        // A GPU's first question also loads (JIT-compiles) every kernel module and makes the BLAS
        // handles, once per process; a loaded app answers its second question like the timed one.
        let video = model.prepare_video(frames.clone(), processor::PixelLimits::video(shape.frames), false)?;
        let ids = prompt_ids(&cfg, video.grid.merged_tokens(v.spatial_merge_size), shape.prompt_tokens)?;
        let positions = processor::rope_index(&ids, &[video.grid], v.temporal_patch_size as f64 / 2.0, &cfg)?;
        let encoding = model.encode_video(&video, true, &mut |_| true)?.context("no cancel was asked for")?;
        let params = GenerationParams { max_new_tokens: 2, temperature: 0.0, ..Default::default() };
        model.generate(&ids, &positions, encoding.tokens(), &params, None, &mut |_| true, None)?;
        let _ = device.synchronize();
    }
    let total = Instant::now();
    let video = model.prepare_video(frames, processor::PixelLimits::video(shape.frames), false)?;
    let grid: GridThw = video.grid;
    let video_tokens = grid.merged_tokens(v.spatial_merge_size);
    let ids = prompt_ids(&cfg, video_tokens, shape.prompt_tokens)?;
    let positions = processor::rope_index(&ids, &[grid], v.temporal_patch_size as f64 / 2.0, &cfg)?;

    // Stage boundaries from the model's own progress events, with the peak memory of each. A GPU
    // runs ahead of the events, so each boundary waits for it.
    let mut marks: Vec<Mark> = Vec::new();
    let mark = |name: &str, marks: &mut Vec<Mark>| {
        if marks.last().is_some_and(|m| m.name == name) {
            return;
        }
        let _ = device.synchronize();
        let gpu_peak_mib = gpu_memory::peak_bytes(&device).map(|b| b as f64 / 1048576.0);
        marks.push(Mark { name: name.to_string(), at: Instant::now(), peak_mib: peak_rss_mib().unwrap_or(f64::NAN), gpu_peak_mib });
        reset_peak_rss();
        gpu_memory::reset_peak(&device);
    };
    reset_peak_rss();
    gpu_memory::reset_peak(&device);
    mark("preparing frames", &mut marks);
    let encoding = model
        .encode_video(&video, true, &mut |e| {
            if let AskEvent::Stage(name, _, _) = e {
                mark(name, &mut marks);
            }
            true
        })?
        .context("no cancel was asked for")?;
    let params = GenerationParams { max_new_tokens: shape.decode_tokens, temperature: 0.0, ..Default::default() };
    let generation = model.generate(
        &ids,
        &positions,
        encoding.tokens(),
        &params,
        None,
        &mut |e| {
            match e {
                AskEvent::Stage(name, _, _) => mark(name, &mut marks),
                AskEvent::Token { .. } => mark("decode", &mut marks),
            }
            true
        },
        None,
    )?;
    mark("done", &mut marks);
    let total_secs = total.elapsed().as_secs_f64();
    ensure!(generation.stop != StopReason::Cancelled, "the question was cancelled");
    let generated = generation.generated_ids.len();

    let names: Vec<&str> = marks.iter().map(|m| m.name.as_str()).collect();
    let expected = ["preparing frames", "Qwen vision tower", "VGGT spatial encoder", "connector", "prefill", "decode", "done"];
    ensure!(names == expected, "unexpected stages {names:?}");
    let secs = |i: usize| marks[i + 1].at.duration_since(marks[i].at).as_secs_f64();
    let peak_of = |i: usize| marks[i + 1].peak_mib;
    let gpu_of = |i: usize| marks[i + 1].gpu_peak_mib;
    let connector_flops = model.spatial.as_ref().map_or(0.0, |s| s.connector.estimate_flops(video_tokens));
    let rows = [
        StageRow { name: "Qwen vision tower".into(), secs: secs(1), flops: vision::estimate_flops(v, &[grid]), peak_mib: peak_of(1), gpu_peak_mib: gpu_of(1) },
        StageRow {
            name: "VGGT aggregator (spatial branch)".into(),
            secs: secs(2),
            flops: estimate_aggregator_flops(&vggt, shape.frames, shape.height, shape.width),
            peak_mib: peak_of(2),
            gpu_peak_mib: gpu_of(2),
        },
        StageRow { name: "connector".into(), secs: secs(3), flops: connector_flops, peak_mib: peak_of(3), gpu_peak_mib: gpu_of(3) },
        // The prefill stage ends when the first token is sampled (its logits come from the prefill).
        StageRow { name: format!("prefill, {} tokens", ids.len()), secs: secs(4), flops: text::estimate_prefill_flops(&cfg, ids.len()), peak_mib: peak_of(4), gpu_peak_mib: gpu_of(4) },
        StageRow {
            name: format!("decode, {} tokens", generated.saturating_sub(1)),
            secs: secs(5),
            flops: text::estimate_decode_flops(&cfg, ids.len(), generated.saturating_sub(1)),
            peak_mib: peak_of(5),
            gpu_peak_mib: gpu_of(5),
        },
    ];
    let peak_mib = rows.iter().map(|r| r.peak_mib).fold(weights_mib, f64::max);

    println!(
        "Spatial-MLLM question (Qwen2.5-VL-3B + VGGT-1B aggregator + connector, constant weights), device {device:?}, dtype {dtype_name}: {} frames of {}x{}, grid {}x{}x{}, {} video tokens, {} prompt tokens, {} generated{}",
        shape.frames,
        shape.width,
        shape.height,
        grid.t,
        grid.h,
        grid.w,
        video_tokens,
        ids.len(),
        generated,
        if warmed_up { " (timed after one warm-up question)" } else { "" }
    );
    if let Some(p) = peak {
        let fma = spatial_models::cpu_peak::fma_peak_gflops().map_or(String::new(), |f| format!(" ({:.0}% of the FMA peak, {f:.0} GFLOP/s)", 100.0 * p / f));
        println!("CPU: {}; BLAS: {}; SIMD: {}; sgemm peak (OpenBLAS, 4096): {p:.0} GFLOP/s{fma}", cpu_model(), spatial_models::blas::backend(), spatial_models::multiversion::simd_level().name());
        if spatial_models::cpu_bf16::bf16_products() {
            // The products then run on vdpbf16ps, whose peak is about twice the FMA's: shares of
            // the sgemm peak above 100% are that.
            match spatial_models::cpu_peak::bf16_dot_peak_gflops() {
                Some(b) => println!("bf16 products: vdpbf16ps peak {b:.0} GFLOP/s (the products' limit, the attention's included; softmax, norms and the rest stay f32)"),
                None => println!("bf16 products: this CPU has no AVX512-BF16, so they run as f32 products of the rounded values"),
            }
        }
    }
    println!("| stage | seconds | GFLOP | GFLOP/s | of sgemm peak | peak RSS MiB | peak GPU MiB |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let rate = r.flops / r.secs.max(1e-9) / 1e9;
        let share = peak.map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * rate / p));
        let gpu = r.gpu_peak_mib.map_or("-".to_string(), |m| format!("{m:.0}"));
        println!("| {} | {:.2} | {:.0} | {rate:.0} | {share} | {:.0} | {gpu} |", r.name, r.secs, r.flops / 1e9, r.peak_mib);
    }
    let decode_rate = generated.saturating_sub(1) as f64 / secs(5).max(1e-9);
    let bytes = text::decode_weight_bytes(&cfg, dtype);
    println!(
        "| **total** (frames ready to last token; weights loaded) | {total_secs:.2} | | | | {peak_mib:.0} | {} |\n\nprefill {:.1} tokens/s; decode {decode_rate:.2} tokens/s, reading {:.1} GB of weights per token = {:.1} GB/s; RSS after load {weights_mib:.0} MiB; init {init:.1} s",
        rows.iter().filter_map(|r| r.gpu_peak_mib).reduce(f64::max).map_or("-".to_string(), |m| format!("{m:.0}")),
        ids.len() as f64 / secs(4).max(1e-9),
        bytes / 1e9,
        bytes * decode_rate / 1e9
    );
    if device.is_cpu() {
        println!("{}", super::bench::decode_bandwidth_line(bytes, decode_rate));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_has_the_asked_length_and_one_run_of_video_tokens() {
        let cfg = Qwen25VlConfig::qwen2_5_vl_3b();
        let ids = prompt_ids(&cfg, 3128, 3200).unwrap();
        assert_eq!(ids.len(), 3200);
        let pads: Vec<usize> = ids.iter().enumerate().filter(|(_, id)| **id == cfg.video_token_id).map(|(i, _)| i).collect();
        assert_eq!(pads.len(), 3128);
        assert_eq!(pads.last().unwrap() - pads[0] + 1, 3128, "one consecutive run");
        assert_eq!(ids[pads[0] - 1], cfg.vision_start_token_id);
        assert_eq!(ids[pads[0] + 3128], cfg.vision_end_token_id);
        // Positions follow transformers' rule: the video spans its grid, text resumes after it.
        let grid = GridThw { t: 8, h: 34, w: 46 };
        let pos = processor::rope_index(&ids, &[grid], 1.0, &cfg).unwrap();
        assert_eq!(pos.len(), 3200);
        let err = prompt_ids(&cfg, 3128, 3000).unwrap_err().to_string();
        assert!(err.contains("--prompt-tokens 3000"), "{err}");
    }

    #[test]
    fn the_synthetic_frames_are_the_ones_the_baseline_draws() {
        // upstream_ask.py: ((x*(c+1) + y*(3-c) + index*16 + c*64) % 256), RGB interleaved.
        let f = synthetic_frame(3, 28, 56);
        let at = |x: usize, y: usize, c: usize| f.data[(y * 56 + x) * 3 + c];
        assert_eq!(at(0, 0, 0), 48);
        assert_eq!(at(10, 5, 1), ((10 * 2 + 5 * 2 + 48 + 64) % 256) as u8);
        assert_eq!(at(55, 27, 2), ((55 * 3 + 27 + 48 + 128) % 256) as u8);
    }
}
