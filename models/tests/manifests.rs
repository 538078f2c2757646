//! The model asks for exactly the tensors of the released checkpoints, with their shapes.

mod common;
use common::*;

use spatial_models::checkpoint::compare;
use spatial_models::vggt::{VggtConfig, VggtParts, expected_tensors};
use std::collections::BTreeMap;

fn manifest(name: &str) -> BTreeMap<String, Vec<usize>> {
    let text = std::fs::read_to_string(fixture(&format!("manifests/{name}"))).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()))
        .collect()
}

#[test]
fn vggt_1b_requests_exactly_the_released_tensors() {
    let released = manifest("vggt-1b.json");
    let requested = expected_tensors(&VggtConfig::vggt_1b(), VggtParts::Full).unwrap();
    let report = compare(&requested, &released, &["track_head."]);
    assert!(report.missing.is_empty(), "missing: {:?}", report.missing);
    assert!(report.mismatched.is_empty(), "mismatched: {:?}", report.mismatched);
    assert!(report.unexpected.is_empty(), "unused non-track tensors: {:?}", report.unexpected);
    assert_eq!(report.matched + report.ignored.len(), released.len());
    let params: usize = requested.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(params, 1_190_596_120, "VGGT-1B without the track head");
}

#[test]
fn spatial_mllm_vggt_aggregator_is_found_under_its_prefix() {
    let released = manifest("spatial-mllm-v1.1.json");
    let prefix = "spatial_encoder.vggt_model.";
    let inner: BTreeMap<String, Vec<usize>> = released
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
        .collect();
    let requested = expected_tensors(&VggtConfig::vggt_1b(), VggtParts::AggregatorOnly).unwrap();
    let report = compare(&requested, &inner, &["camera_head.", "depth_head.", "point_head.", "track_head."]);
    assert!(report.loads(), "{report:?}");
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
}

#[test]
fn tiny_fixture_config_changes_every_shape() {
    let cfg = VggtConfig::from_json(&std::fs::read_to_string(fixture("vggt-tiny/config.json")).unwrap()).unwrap();
    let requested = expected_tensors(&cfg, VggtParts::Full).unwrap();
    let dir = spatial_models::checkpoint::CheckpointDir::open(&fixture("vggt-tiny")).unwrap();
    let present: BTreeMap<String, Vec<usize>> = dir.tensors().unwrap().into_iter().map(|(k, v)| (k, v.shape)).collect();
    let report = compare(&requested, &present, &[]);
    assert!(report.loads() && report.unexpected.is_empty(), "{report:?}");
    // The default (1B) config must not fit the tiny checkpoint: shapes are read from config.json.
    let wrong = compare(&expected_tensors(&VggtConfig::vggt_1b(), VggtParts::Full).unwrap(), &present, &[]);
    assert!(!wrong.loads());
}

fn manifest_config(name: &str) -> spatial_models::qwen2_5_vl::Qwen25VlConfig {
    let text = std::fs::read_to_string(fixture(&format!("manifests/{name}"))).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    spatial_models::qwen2_5_vl::Qwen25VlConfig::from_value(json["config"].clone()).unwrap()
}

#[test]
fn qwen2_5_vl_3b_requests_exactly_the_released_tensors() {
    let released = manifest("qwen2_5_vl-3b.json");
    let cfg = manifest_config("qwen2_5_vl-3b.json");
    assert_eq!(cfg, spatial_models::qwen2_5_vl::Qwen25VlConfig { model_type: Some("qwen2_5_vl".into()), ..Default::default() }, "defaults are the 3B");
    let requested = spatial_models::spatial_mllm::expected_tensors(&cfg, false).unwrap();
    let report = compare(&requested, &released, &[]);
    assert!(report.loads(), "{report:?}");
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert_eq!(report.matched, released.len());
}

#[test]
fn spatial_mllm_v1_1_requests_exactly_the_released_tensors_heads_optional() {
    let released = manifest("spatial-mllm-v1.1.json");
    let cfg = manifest_config("spatial-mllm-v1.1.json");
    let requested = spatial_models::spatial_mllm::expected_tensors(&cfg, true).unwrap();
    let heads = ["spatial_encoder.vggt_model.camera_head.", "spatial_encoder.vggt_model.depth_head.", "spatial_encoder.vggt_model.point_head.", "spatial_encoder.vggt_model.track_head."];
    let report = compare(&requested, &released, &heads);
    assert!(report.loads(), "missing {:?} mismatched {:?}", report.missing, report.mismatched);
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    // Nothing requested lives in the heads, so a checkpoint without them loads too.
    assert!(requested.keys().all(|k| !heads.iter().any(|h| k.starts_with(h))));
    assert_eq!(requested["connector.mlp.0.weight"], vec![16384, 16384]);
    // Without the spatial branch the same checkpoint serves as plain Qwen2.5-VL.
    let plain = spatial_models::spatial_mllm::expected_tensors(&cfg, false).unwrap();
    assert!(compare(&plain, &released, &["spatial_encoder.", "connector."]).loads());
}
