//! The CPU products without OpenBLAS (a machine that does not have it): the `gemm` crate takes
//! over, and VGGT still matches upstream. Its own test binary, since the product library is chosen
//! once per process.

mod common;
use common::*;

use candle_core::{DType, Device, Tensor};
use spatial_models::vggt::{Vggt, VggtConfig, VggtParts};

#[test]
fn products_and_vggt_match_without_openblas() {
    // SAFETY: set before any product runs, in the only test of this binary.
    unsafe { std::env::set_var("SPATIAL_NO_OPENBLAS", "1") };
    assert!(spatial_models::blas::backend().starts_with("the gemm crate"), "{}", spatial_models::blas::backend());
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (2, 3, 7, 4), &dev).unwrap();
    for (x, y) in [(a.clone(), b.clone()), (a.transpose(2, 3).unwrap().contiguous().unwrap().transpose(2, 3).unwrap(), b.clone()), (a.narrow(2, 0, 1).unwrap(), b.clone())] {
        let want = x.matmul(&y).unwrap();
        let got = spatial_models::blas::matmul(&x, &y).unwrap();
        let diff = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{diff}");
    }
    if !device().is_cpu() {
        return;
    }
    let cfg = VggtConfig::from_json(&std::fs::read_to_string(fixture("vggt-tiny/config.json")).unwrap()).unwrap();
    let model = Vggt::load(&cfg, &[fixture("vggt-tiny/model.safetensors")], "", VggtParts::Full, DType::F32, &dev).unwrap();
    let expected = load_expected("vggt-tiny/expected.safetensors");
    let out = model.forward(&expected["images"]).unwrap();
    assert_close("depth", &out.depth, &expected["depth"], 1e-3);
    assert_close("world_points", &out.world_points, &expected["world_points"], 1e-3);
    assert_close("pose_enc", &out.pose_enc, &expected["pose_enc"], 1e-3);
}
