//! VGGT against the upstream PyTorch outputs on the tiny random-weight checkpoint.

mod common;
use common::*;

use candle_core::{DType, Device, Tensor};
use spatial_models::vggt::{Camera, Vggt, VggtConfig, VggtParts};

fn load_model(dtype: DType) -> Vggt {
    let cfg = VggtConfig::from_json(&std::fs::read_to_string(fixture("vggt-tiny/config.json")).unwrap()).unwrap();
    Vggt::load(&cfg, &[fixture("vggt-tiny/model.safetensors")], "", VggtParts::Full, dtype, &device()).unwrap()
}

#[test]
fn aggregator_matches_upstream_layer_by_layer() {
    let model = load_model(DType::F32);
    let expected = load_expected("vggt-tiny/expected.safetensors");
    let images = &expected["images"];
    let all: Vec<usize> = (0..model.config.depth).collect();
    let out = model.aggregator.forward(images, &all, true, None).unwrap().unwrap();
    assert_close("patch_tokens", out.patch_tokens.as_ref().unwrap(), &expected["patch_tokens"], 1e-3);
    for i in all {
        assert_close(&format!("aggregated.{i}"), &out.layers[&i], &expected[&format!("aggregated.{i}")], 1e-3);
    }
}

#[test]
fn heads_and_cameras_match_upstream() {
    let model = load_model(DType::F32);
    let expected = load_expected("vggt-tiny/expected.safetensors");
    let images = &expected["images"];
    let out = model.forward(images).unwrap();
    let list = Tensor::stack(&out.pose_enc_list, 0).unwrap();
    assert_close("pose_enc_list", &list, &expected["pose_enc_list"], 1e-3);
    assert_close("pose_enc", &out.pose_enc, &expected["pose_enc"], 1e-3);
    assert_close("depth", &out.depth, &expected["depth"], 1e-3);
    assert_close("depth_conf", &out.depth_conf, &expected["depth_conf"], 1e-3);
    assert_close("world_points", &out.world_points, &expected["world_points"], 1e-3);
    assert_close("world_points_conf", &out.world_points_conf, &expected["world_points_conf"], 1e-3);

    let (_, _, h, w) = images.dims4().unwrap();
    let cams = out.cameras((h, w)).unwrap();
    let extr: Vec<f32> = cams.iter().flat_map(|c| c.extrinsic.iter().flatten().copied().collect::<Vec<_>>()).collect();
    let intr: Vec<f32> = cams.iter().flat_map(|c| c.intrinsic.iter().flatten().copied().collect::<Vec<_>>()).collect();
    let s = cams.len();
    assert_close("extrinsic", &Tensor::from_vec(extr, (s, 3, 4), &Device::Cpu).unwrap(), &expected["extrinsic"], 1e-3);
    assert_close("intrinsic", &Tensor::from_vec(intr, (s, 3, 3), &Device::Cpu).unwrap(), &expected["intrinsic"], 1e-3);
}

#[test]
fn depth_unprojection_matches_upstream() {
    // Uses upstream's own depth and cameras, so this checks the geometry alone.
    let expected = load_expected("vggt-tiny/expected.safetensors");
    let depth: Vec<Vec<Vec<Vec<f32>>>> = expected["depth"].to_vec3::<f32>().map(|_| unreachable!()).unwrap_or_else(|_: candle_core::Error| {
        let (s, h, w, _) = expected["depth"].dims4().unwrap();
        let flat: Vec<f32> = expected["depth"].flatten_all().unwrap().to_vec1().unwrap();
        (0..s).map(|f| (0..h).map(|y| (0..w).map(|x| vec![flat[(f * h + y) * w + x]]).collect()).collect()).collect()
    });
    let (s, h, w, _) = expected["depth"].dims4().unwrap();
    let extr: Vec<Vec<Vec<f32>>> = expected["extrinsic"].to_vec3().unwrap();
    let intr: Vec<Vec<Vec<f32>>> = expected["intrinsic"].to_vec3().unwrap();
    let mut points = Vec::new();
    for f in 0..s {
        let mut cam = Camera { extrinsic: [[0.0; 4]; 3], intrinsic: [[0.0; 3]; 3] };
        for r in 0..3 {
            cam.extrinsic[r].copy_from_slice(&extr[f][r]);
            cam.intrinsic[r].copy_from_slice(&intr[f][r]);
        }
        let d: Vec<f32> = depth[f].iter().flatten().flatten().copied().collect();
        points.extend(cam.unproject(&d, h, w));
    }
    let points = Tensor::from_vec(points, (s, h, w, 3), &Device::Cpu).unwrap();
    assert_close("points_from_depth", &points, &expected["points_from_depth"], 1e-3);
}

#[test]
fn reduced_precision_stays_close_to_f32() {
    let expected = load_expected("vggt-tiny/expected.safetensors");
    let images = &expected["images"];
    let reference = load_model(DType::F32).forward(images).unwrap();
    // Every difference is printed before any is judged, so a failure shows the whole picture.
    let mut too_far = Vec::new();
    for dtype in [DType::BF16, DType::F16] {
        let out = load_model(dtype).forward(images).unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
        for (name, a, b) in [
            ("pose_enc", &out.pose_enc, &reference.pose_enc),
            ("depth", &out.depth, &reference.depth),
            ("world_points", &out.world_points, &reference.world_points),
        ] {
            let d = max_scaled_diff(a, b);
            eprintln!("{dtype:?} {name}: {d:.2e}");
            if d > 2e-2 {
                too_far.push(format!("{dtype:?} {name}: {d} > 2e-2"));
            }
        }
    }
    assert!(too_far.is_empty(), "{}", too_far.join("; "));
}

#[test]
fn spatial_mllm_checkpoint_provides_the_same_aggregator() {
    // spatial-mllm-tiny carries vggt-tiny's weights under `spatial_encoder.vggt_model.`; its
    // config names only img_size/patch_size/embed_dim, the rest comes from the tensor shapes.
    let dir = spatial_models::checkpoint::CheckpointDir::open(&fixture("spatial-mllm-tiny")).unwrap();
    let json = dir.config_json().unwrap();
    let mut cfg: VggtConfig = serde_json::from_value(json["spatial_config"].clone()).unwrap();
    let prefix = "spatial_encoder.vggt_model.";
    let shapes = dir.tensors().unwrap().into_iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.shape))).collect();
    cfg.infer_from_shapes(&shapes);
    let model = Vggt::load(&cfg, &dir.safetensors, "spatial_encoder.vggt_model", VggtParts::AggregatorOnly, DType::F32, &device()).unwrap();
    let expected = load_expected("vggt-tiny/expected.safetensors");
    let last = cfg.depth - 1;
    let out = model.aggregator.forward(&expected["images"], &[last], false, None).unwrap().unwrap();
    assert_close("aggregated (from Spatial-MLLM)", &out.layers[&last], &expected[&format!("aggregated.{last}")], 1e-3);

    // And on Spatial-MLLM's own frames (/255), its last layer as upstream computed it.
    let smllm = load_expected("spatial-mllm-tiny/expected.safetensors");
    let frames = (smllm["frames_u8"].to_dtype(DType::F32).unwrap().permute((0, 3, 1, 2)).unwrap() / 255.0).unwrap();
    let out = model.aggregator.forward(&frames, &[last], false, None).unwrap().unwrap();
    assert_close("spatial_last_layer", &out.layers[&last], &smllm["spatial_last_layer"], 1e-3);
}
