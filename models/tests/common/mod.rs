#![allow(dead_code)]
//! Helpers shared by the parity tests: fixture paths and tolerance checks.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// `SPATIAL_MODELS_DIR` points the tests at another copy of this crate's folder: on a GPU machine
/// the test binaries built elsewhere read the fixtures of the repository there.
pub fn fixture(path: &str) -> PathBuf {
    let crate_dir = std::env::var_os("SPATIAL_MODELS_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    crate_dir.join("tests/fixtures").join(path)
}

/// Where the parity tests run: the CPU, or the device `SPATIAL_TEST_DEVICE` names (`cuda`,
/// `metal`: a build with that feature). One device for the whole test binary, since tensors of
/// two CUDA devices opened separately do not mix.
pub fn device() -> Device {
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let name = std::env::var("SPATIAL_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
            spatial_models::open_device(&name).unwrap_or_else(|e| panic!("SPATIAL_TEST_DEVICE={name}: {e:#}"))
        })
        .clone()
}

/// The expected outputs (and inputs) of a fixture, on the test device.
pub fn load_expected(path: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(path), &device()).expect("fixture loads")
}

/// Largest |a - b| / max(1, |b|) over all elements (absolute below 1, relative above).
pub fn max_scaled_diff(actual: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "shape mismatch");
    let a: Vec<f32> = actual.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let e: Vec<f32> = expected.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    a.iter().zip(&e).map(|(a, e)| (a - e).abs() / e.abs().max(1.0)).fold(0.0, f32::max)
}

pub fn assert_close(name: &str, actual: &Tensor, expected: &Tensor, tol: f32) {
    let d = max_scaled_diff(actual, expected);
    assert!(d <= tol, "{name}: max scaled diff {d} > {tol}");
    eprintln!("{name}: max scaled diff {d:.2e}");
}
