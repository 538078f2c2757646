//! The fused CUDA attention kernel on a real GPU (a `--features cuda` build with
//! `SPATIAL_TEST_DEVICE=cuda`, as tools/device-check.sh runs it): in bf16 and f16, at every head
//! size it is compiled for, against the exact chunked path in f32 on the same device. Without the
//! `cuda` feature this file has no tests (tests/cuda_attention_emulated.rs checks the same kernel
//! on the CPU).
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Tensor};
use spatial_models::cuda_attention::HEAD_SIZES;
use spatial_models::nn::{attention, causal_attention};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn fused_attention_matches_f32_on_the_device() {
    let device = common::device();
    assert!(device.is_cuda(), "run with SPATIAL_TEST_DEVICE=cuda (this test is the GPU's)");
    for d in HEAD_SIZES {
        // Uniform in [-1, 1): scores of a few units, as after VGGT's qk-norm and the 1/sqrt(d) scale.
        let rand = |shape: (usize, usize, usize, usize)| Tensor::rand(-1f32, 1f32, shape, &device).unwrap();
        let (q, k, v) = (rand((2, 4, 300, d)), rand((2, 4, 300, d)), rand((2, 4, 300, d)));
        let (kg, vg) = (rand((2, 2, 300, d)), rand((2, 2, 300, d)));
        let scale = 1.0 / (d as f64).sqrt() * 2.0;
        let exact = attention(&q, &k, &v, scale).unwrap();
        let exact_causal = causal_attention(&q.narrow(2, 0, 100).unwrap(), &kg, &vg, scale, 200).unwrap();
        for (dtype, tolerance) in [(DType::BF16, 2e-2), (DType::F16, 4e-3)] {
            let half = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let fused = attention(&half(&q), &half(&k), &half(&v), scale).unwrap();
            let fused_causal = causal_attention(&half(&q.narrow(2, 0, 100).unwrap()), &half(&kg), &half(&vg), scale, 200).unwrap();
            let (e, ec) = (max_abs_diff(&fused, &exact), max_abs_diff(&fused_causal, &exact_causal));
            println!("head size {d} {dtype:?}: attention {e:.2e}, causal with GQA and an offset {ec:.2e}");
            assert!(e <= tolerance && ec <= tolerance, "head size {d} {dtype:?}: {e} / {ec} > {tolerance}");
        }
    }
}
