//! `--dtype bf16-products` on the CPU: bf16 weights multiplying bf16-rounded activations with f32
//! sums (AVX512-BF16 where the CPU has it, else the same rounding at f32 speed), against the
//! upstream f32 outputs at the tolerances a GPU's bf16 is held to. Its own test binary: the
//! setting is process-wide, and the other parity tests rely on the exact default.

mod common;
use common::*;

use candle_core::{DType, Tensor};
use spatial_models::checkpoint::CheckpointDir;
use spatial_models::cpu_bf16::set_bf16_products;
use spatial_models::spatial_mllm::processor::{PixelLimits, rope_index};
use spatial_models::spatial_mllm::{AskEvent, GenerationParams, QwenTokenizer, SpatialMllm};
use spatial_models::vggt::preprocess::RgbFrame;
use spatial_models::vggt::{Vggt, VggtConfig, VggtParts};
use std::io::Read;
use std::sync::Mutex;

/// The tests here switch the process-wide setting: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn tokenizer() -> QwenTokenizer {
    let gz = std::fs::File::open(fixture("qwen-tokenizer/tokenizer.json.gz")).unwrap();
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut json).unwrap();
    QwenTokenizer::from_bytes(&json).unwrap()
}

/// The fixture's question through Spatial-MLLM with bf16 weights: fused embeddings, last logits
/// and greedy tokens.
fn ask(products: bool) -> (Tensor, Tensor, Vec<u32>) {
    set_bf16_products(products);
    let expected = load_expected("spatial-mllm-tiny/expected.safetensors");
    let dir = CheckpointDir::open(&fixture("spatial-mllm-tiny")).unwrap();
    let mut model = SpatialMllm::load(&dir, true, DType::BF16, &device()).unwrap();
    let f = &expected["frames_u8"];
    let (t, h, w, _) = f.dims4().unwrap();
    let frames = (0..t).map(|i| RgbFrame::new(w, h, f.get(i).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap())).collect();
    let video = model.prepare_video(frames, PixelLimits::video(4), false).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("spatial-mllm-tiny/meta.json")).unwrap()).unwrap();
    let tok = tokenizer();
    let input_ids = tok.prompt_ids(meta["prompt"].as_str().unwrap(), model.config.video_token_id, video.grid.merged_tokens(2)).unwrap();
    let positions = rope_index(&input_ids, &[video.grid], meta["second_per_grid_t"].as_f64().unwrap(), &model.config).unwrap();
    let mut always = |_: AskEvent| true;
    let enc = model.encode_video(&video, true, &mut always).unwrap().unwrap();
    let n_new = expected["generated_ids"].dim(0).unwrap();
    let params = GenerationParams { max_new_tokens: n_new, ..Default::default() };
    let out = model.generate(&input_ids, &positions, enc.tokens(), &params, None, &mut always, None).unwrap();
    (enc.fused_embeds.unwrap(), out.logits_last, out.generated_ids)
}

#[test]
fn spatial_mllm_with_bf16_products_stays_close_to_upstream() {
    if !device().is_cpu() {
        return; // a GPU's bf16 is checked by spatial_mllm_parity's bf16 test
    }
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let expected = load_expected("spatial-mllm-tiny/expected.safetensors");
    let (fused, logits, generated) = ask(true);
    eprintln!("bf16 products: fused_embeds {:.2e}, logits_last {:.2e}", max_scaled_diff(&fused, &expected["fused_embeds"]), max_scaled_diff(&logits, &expected["logits_last"]));
    // Within the GPU's bf16 tolerances (spatial_mllm_parity::bf16_weights_stay_close_to_f32:
    // 5e-2 and 0.15); here only the products' inputs are rounded, the rest stays f32, and the
    // fixture gives 1.3e-3 and 4.5e-2.
    assert_close("fused_embeds (bf16 products)", &fused, &expected["fused_embeds"], 1e-2);
    assert_close("logits_last (bf16 products)", &logits, &expected["logits_last"], 0.15);
    // The first greedy token has a margin of 1.2 in f32.
    let want: Vec<i64> = expected["generated_ids"].to_vec1::<i64>().unwrap();
    assert_eq!(generated[0] as i64, want[0]);
    // And the setting does something: the exact path (bf16 weights, f32 activations) differs.
    let (exact_fused, exact_logits, _) = ask(false);
    assert!(max_scaled_diff(&fused, &exact_fused) > 0.0 && max_scaled_diff(&logits, &exact_logits) > 0.0, "bf16 products gave the exact f32 results");
}

#[test]
fn vggt_with_bf16_products_stays_close_to_f32() {
    if !device().is_cpu() {
        return;
    }
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = VggtConfig::from_json(&std::fs::read_to_string(fixture("vggt-tiny/config.json")).unwrap()).unwrap();
    let load = |dtype| Vggt::load(&cfg, &[fixture("vggt-tiny/model.safetensors")], "", VggtParts::Full, dtype, &device()).unwrap();
    let images = &load_expected("vggt-tiny/expected.safetensors")["images"];
    set_bf16_products(false);
    let reference = load(DType::F32).forward(images).unwrap();
    let exact = load(DType::BF16).forward(images).unwrap();
    set_bf16_products(true);
    let out = load(DType::BF16).forward(images).unwrap();
    assert!(max_scaled_diff(&out.depth, &exact.depth) > 0.0, "bf16 products gave the exact path's depth");
    // The fixture gives depth and points 2.1-4.4e-3 with the AVX512-BF16 kernel and with the
    // f32 products of the rounded values (the exact path with bf16 weights: 0.4-1.4e-4, so the
    // rounded activations are most of the error). The pose encoding goes through the camera
    // head's four refinements, which amplify the products' summation order: 4.2e-3 with the
    // kernel, 1.4e-2 with OpenBLAS's order.
    for (name, a, b, bound) in [("pose_enc", &out.pose_enc, &reference.pose_enc, 5e-2), ("depth", &out.depth, &reference.depth, 1e-2), ("world_points", &out.world_points, &reference.world_points, 1e-2)] {
        let d = max_scaled_diff(a, b);
        eprintln!("bf16 products {name}: {d:.2e}");
        assert!(d <= bound, "bf16 products {name}: {d} > {bound}");
    }
}
