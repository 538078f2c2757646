//! The headless commands: checkpoint checks, reconstruction and sampling with the tiny VGGT
//! fixture, and clear errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(p)
}

fn viewer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spatial-viewer")).args(args).output().expect("run spatial-viewer")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sv-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Rewrites a safetensors file without one tensor, or with one tensor's shape changed.
fn edit_checkpoint(src: &Path, dst: &Path, drop: Option<&str>, reshape: Option<(&str, Vec<usize>)>) {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    if let Some(name) = drop {
        header.remove(name).expect("tensor exists");
    }
    if let Some((name, shape)) = reshape {
        // Same byte count, different shape: a header-level mis-shape.
        header.get_mut(name).unwrap()["shape"] = serde_json::json!(shape);
    }
    let new_header = serde_json::to_vec(&header).unwrap();
    let mut out = (new_header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&new_header);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(dst, out).unwrap();
}

#[test]
fn weights_check_reports_kind_and_every_problem() {
    let ok = viewer(&["weights", "check", fixture("vggt-tiny").to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("VGGT checkpoint") && text(&ok).contains("OK"), "{}", text(&ok));

    let dir = tmp("weights");
    let broken = dir.join("broken");
    copy_dir(&fixture("vggt-tiny"), &broken);
    std::fs::remove_file(broken.join("expected.safetensors")).unwrap();
    edit_checkpoint(
        &fixture("vggt-tiny/model.safetensors"),
        &broken.join("model.safetensors"),
        Some("camera_head.trunk_norm.bias"),
        Some(("aggregator.frame_blocks.1.attn.proj.weight", vec![32, 128])),
    );
    let out = viewer(&["weights", "check", broken.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("missing") && t.contains("camera_head.trunk_norm.bias"), "{t}");
    assert!(t.contains("aggregator.frame_blocks.1.attn.proj.weight") && t.contains("[64, 64]") && t.contains("[32, 128]"), "{t}");

    // The same checkpoint refuses to load for reconstruction, naming the tensor.
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::copy(fixture("vggt-preprocess/bikes_1.png"), frames.join("a.png")).unwrap();
    let out = viewer(&["reconstruct", "--weights", broken.to_str().unwrap(), "--input", frames.to_str().unwrap(), "--out", dir.join("o.safetensors").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("camera_head.trunk_norm.bias"), "{}", text(&out));

    // config.json that does not parse names the file.
    let bad_cfg = dir.join("badcfg");
    copy_dir(&fixture("vggt-tiny"), &bad_cfg);
    std::fs::write(bad_cfg.join("config.json"), "{ not json").unwrap();
    let out = viewer(&["weights", "check", bad_cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("config.json") && text(&out).contains("JSON"), "{}", text(&out));

    // A pickle checkpoint is never loaded: the message says how to convert it.
    let pt = dir.join("pt");
    std::fs::create_dir_all(&pt).unwrap();
    std::fs::write(pt.join("model.pt"), b"PK").unwrap();
    let out = viewer(&["weights", "check", pt.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("model.pt") && text(&out).contains("safetensors"), "{}", text(&out));
}

#[test]
fn weights_check_knows_spatial_mllm() {
    let out = viewer(&["weights", "check", fixture("spatial-mllm-tiny").to_str().unwrap()]);
    let t = text(&out);
    assert!(t.contains("Spatial-MLLM checkpoint"), "{t}");
    assert!(t.contains("spatial encoder (VGGT aggregator)") && !t.contains("missing "), "{t}");
    // The question-answering part is not in this build, so it must not claim the model loads.
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("cannot load Qwen2.5-VL"), "{t}");
}

#[test]
fn reconstruct_then_sample_end_to_end() {
    let dir = tmp("recon");
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for (i, name) in ["bikes_1", "bikes_2", "carphone_1"].iter().enumerate() {
        std::fs::copy(fixture(&format!("vggt-preprocess/{name}.png")), frames.join(format!("{i:02}.png"))).unwrap();
    }
    let out_file = dir.join("geometry.safetensors");
    let ply = dir.join("points.ply");
    let out = viewer(&[
        "reconstruct", "--weights", fixture("vggt-tiny").to_str().unwrap(), "--input", frames.to_str().unwrap(), "--resize", "crop",
        "--out", out_file.to_str().unwrap(), "--ply", ply.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let t = candle_core::safetensors::load(&out_file, &candle_core::Device::Cpu).unwrap();
    // Mixed frame sizes are padded to the largest: 518 x 420.
    assert_eq!(t["images"].dims(), &[3, 3, 420, 518]);
    assert_eq!(t["depth"].dims(), &[3, 420, 518, 1]);
    assert_eq!(t["world_points"].dims(), &[3, 420, 518, 3]);
    assert_eq!(t["world_points_conf"].dims(), &[3, 420, 518]);
    assert_eq!(t["extrinsic"].dims(), &[3, 3, 4]);
    assert_eq!(t["intrinsic"].dims(), &[3, 3, 3]);
    assert_eq!(t["pose_enc"].dims(), &[3, 9]);
    assert_eq!(t["frame_indices"].to_vec1::<i64>().unwrap(), vec![0, 1, 2]);
    let conf: Vec<f32> = t["depth_conf"].flatten_all().unwrap().to_vec1().unwrap();
    assert!(conf.iter().all(|c| c.is_finite() && *c >= 1.0));
    let header = std::fs::read(&ply).unwrap();
    assert!(header.starts_with(b"ply\nformat binary_little_endian 1.0\nelement vertex "));

    let out = viewer(&["sample", "--geometry", out_file.to_str().unwrap(), "--k", "2", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let selected = json["selected"].as_array().unwrap();
    assert!(!selected.is_empty() && selected.len() <= 2);
    assert_eq!(json["voxels_per_frame"].as_array().unwrap().len(), 3);
    assert!(json["voxel_size"].as_f64().unwrap() > 0.0);

    // --max-frames picks evenly, both ends included.
    let out = viewer(&[
        "reconstruct", "--weights", fixture("vggt-tiny").to_str().unwrap(), "--input", frames.to_str().unwrap(), "--max-frames", "2",
        "--out", out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let t = candle_core::safetensors::load(&out_file, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["frame_indices"].to_vec1::<i64>().unwrap(), vec![0, 2]);
}

#[test]
fn sample_matches_the_upstream_fixture_through_the_cli() {
    let out = viewer(&["sample", "--geometry", fixture("sa-sampling/expected.safetensors").to_str().unwrap(), "--k", "8", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = candle_core::safetensors::load(fixture("sa-sampling/expected.safetensors"), &candle_core::Device::Cpu).unwrap()["selected_k8"].to_vec1::<i64>().unwrap();
    let got: Vec<i64> = json["selected"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(got, want);
}

#[test]
fn bad_inputs_get_clear_messages() {
    let dir = tmp("bad");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let w = fixture("vggt-tiny");
    let out = viewer(&["reconstruct", "--weights", w.to_str().unwrap(), "--input", empty.to_str().unwrap(), "--out", dir.join("o.safetensors").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("empty") && text(&out).contains("no PNG or JPEG"), "{}", text(&out));

    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::write(frames.join("000.png"), b"").unwrap();
    let out = viewer(&["reconstruct", "--weights", w.to_str().unwrap(), "--input", frames.to_str().unwrap(), "--out", dir.join("o.safetensors").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("000.png") && text(&out).contains("empty"), "{}", text(&out));

    std::fs::write(frames.join("000.png"), b"garbage").unwrap();
    let out = viewer(&["reconstruct", "--weights", w.to_str().unwrap(), "--input", frames.to_str().unwrap(), "--out", dir.join("o.safetensors").to_str().unwrap()]);
    assert!(text(&out).contains("000.png") && text(&out).contains("not a readable image"), "{}", text(&out));

    // --resize none needs multiples of 14.
    std::fs::copy(fixture("vggt-preprocess/bikes_1.png"), frames.join("000.png")).unwrap();
    let out = viewer(&["reconstruct", "--weights", w.to_str().unwrap(), "--input", frames.to_str().unwrap(), "--resize", "none", "--out", dir.join("o.safetensors").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("multiples of 14"), "{}", text(&out));

    let out = viewer(&["sample", "--geometry", dir.join("missing.safetensors").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("missing.safetensors"), "{}", text(&out));

    let out = viewer(&["reconstruct", "--weights", dir.to_str().unwrap(), "--input", frames.to_str().unwrap(), "--out", dir.join("o.safetensors").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no model.safetensors"), "{}", text(&out));
}
