//! The headless commands: checkpoint checks, reconstruction and sampling with the tiny VGGT
//! fixture, and clear errors for bad input.

use std::path::{Path, PathBuf};

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(p)
}

use common::viewer;

use common::text;

fn tmp(name: &str) -> common::ScratchDir {
    common::tmp_dir("cli", name)
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
fn weights_check_knows_spatial_mllm_without_a_tokenizer() {
    let out = viewer(&["weights", "check", fixture("spatial-mllm-tiny").to_str().unwrap()]);
    let t = text(&out);
    assert!(t.contains("Spatial-MLLM checkpoint"), "{t}");
    assert!(t.contains("Spatial-MLLM (Qwen2.5-VL + VGGT aggregator + connector)"), "{t}");
    // The fixture folder has every tensor but no tokenizer.json, so questions could not be asked.
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("tokenizer.json") && t.matches("missing").count() == 1, "{t}");
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
    let geometry = fixture("sa-sampling/expected.safetensors");
    for (args, said) in [(["--k", "0"], "--k 0"), (["--conf-percentile", "150"], "percentile 150: expected 0 to 100")] {
        let mut all = vec!["sample", "--geometry", geometry.to_str().unwrap()];
        all.extend_from_slice(&args);
        let out = viewer(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(said), "{args:?}: {}", text(&out));
    }

    let out = viewer(&["reconstruct", "--weights", dir.to_str().unwrap(), "--input", frames.to_str().unwrap(), "--out", dir.join("o.safetensors").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no model.safetensors"), "{}", text(&out));

    // A VGGT folder without its config.json: the message says so and which sizes were assumed.
    let no_config = dir.join("no-config");
    std::fs::create_dir_all(&no_config).unwrap();
    std::fs::copy(w.join("model.safetensors"), no_config.join("model.safetensors")).unwrap();
    let out = viewer(&["reconstruct", "--weights", no_config.to_str().unwrap(), "--input", frames.to_str().unwrap(), "--out", dir.join("o.safetensors").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("no config.json") && t.contains("VGGT-1B") && t.contains("embed 1024") && t.contains("do not fit"), "{t}");
    let out = viewer(&["weights", "check", no_config.to_str().unwrap()]);
    assert!(text(&out).contains("no config.json: VGGT-1B's sizes were assumed"), "{}", text(&out));
}

mod common;

fn dump_ids(path: &Path, key: &str) -> Vec<i64> {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    t[key].flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

#[test]
fn ask_answers_like_upstream_with_and_without_the_spatial_branch() {
    let dir = tmp("ask");
    let weights = common::mllm_weights(&dir);
    let frames = common::mllm_frames(&dir);
    let (w, f) = (weights.to_str().unwrap(), frames.to_str().unwrap());

    let check = viewer(&["weights", "check", w]);
    assert!(check.status.success() && text(&check).contains("Spatial-MLLM checkpoint") && text(&check).contains("OK"), "{}", text(&check));

    let dump = dir.join("dump.safetensors");
    let out = viewer(&["ask", "--weights", w, "--input", f, "--question", common::QUESTION, "--format", "numeric", "--frames", "all", "--max-new-tokens", "12", "--dump", dump.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dump_ids(&dump, "input_ids"), common::expected_ids("input_ids"));
    assert_eq!(dump_ids(&dump, "position_ids"), common::expected_ids("position_ids"));
    let generated = dump_ids(&dump, "generated_ids");
    assert_eq!(generated, common::expected_ids("generated_ids"));
    let dumped = candle_core::safetensors::load(&dump, &candle_core::Device::Cpu).unwrap();
    assert!(dumped.contains_key("fused_embeds") && dumped.contains_key("video_embeds") && dumped.contains_key("logits_last"));
    // The answer streams to stdout: it is the detokenised greedy tokens.
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    assert!(text(&out).contains("prefill") && text(&out).contains("tok/s"), "{}", text(&out));

    let base = dir.join("base.safetensors");
    let out = viewer(&["ask", "--weights", w, "--input", f, "--question", common::QUESTION, "--format", "numeric", "--frames", "all", "--max-new-tokens", "12", "--base-model", "--dump", base.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dump_ids(&base, "generated_ids"), common::expected_ids("qwen.generated_ids"));
    assert!(!candle_core::safetensors::load(&base, &candle_core::Device::Cpu).unwrap().contains_key("fused_embeds"));

    // Space-aware sampling picks 2 of the 4 frames with VGGT (the tiny fixture) and asks about them.
    let sa = dir.join("sa.safetensors");
    let vggt = fixture("vggt-tiny");
    let out = viewer(&["ask", "--weights", w, "--input", f, "--question", "how far?", "--frames", "2", "--sampling", "space-aware", "--vggt", vggt.to_str().unwrap(), "--max-new-tokens", "3", "--dump", sa.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("space-aware sampling picked"), "{}", text(&out));
    let picked = dump_ids(&sa, "frame_indices");
    assert_eq!(picked.len(), 2);
    assert!(picked.windows(2).all(|p| p[0] < p[1]) && picked.iter().all(|&i| i < 4), "{picked:?}");
}

#[test]
fn ask_rejects_bad_input_clearly() {
    let dir = tmp("ask-bad");
    let weights = common::mllm_weights(&dir);
    let frames = common::mllm_frames(&dir);
    let (w, f) = (weights.to_str().unwrap(), frames.to_str().unwrap());
    let ask = |args: &[&str]| {
        let mut all = vec!["ask", "--question", "how far?", "--max-new-tokens", "2"];
        all.extend_from_slice(args);
        viewer(&all)
    };
    // A VGGT folder is the wrong kind of model.
    let vggt = fixture("vggt-tiny");
    let out = ask(&["--weights", vggt.to_str().unwrap(), "--input", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("VGGT checkpoint, not Qwen2.5-VL or Spatial-MLLM"), "{}", text(&out));

    // No tokenizer.json.
    let no_tok = dir.join("no-tok");
    copy_dir(&weights, &no_tok);
    std::fs::remove_file(no_tok.join("tokenizer.json")).unwrap();
    let out = ask(&["--weights", no_tok.to_str().unwrap(), "--input", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("tokenizer.json") && text(&out).contains("missing"), "{}", text(&out));
    let check = viewer(&["weights", "check", no_tok.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));

    // No frames.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = ask(&["--weights", w, "--input", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no PNG or JPEG"), "{}", text(&out));

    // An empty question.
    let out = viewer(&["ask", "--weights", w, "--input", f, "--question", "  "]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--question is empty"), "{}", text(&out));

    // Generation settings no sampler can use are named before anything loads.
    for (args, said) in [
        (["--max-new-tokens", "0"], "--max-new-tokens 0"),
        (["--temperature=-1", "--seed=1"], "--temperature -1: expected 0 (greedy) or more"),
        (["--temperature", "NaN"], "--temperature NaN"),
        (["--top-p", "2"], "--top-p 2: expected more than 0 and at most 1"),
        (["--top-p", "0"], "--top-p 0"),
    ] {
        let mut all = vec!["ask", "--weights", w, "--input", f, "--question", "how far?"];
        all.extend_from_slice(&args);
        let out = viewer(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(said) && !text(&out).contains("loaded on"), "{args:?}: {}", text(&out));
    }

    // A prompt longer than the context.
    let short = dir.join("short-context");
    copy_dir(&weights, &short);
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(short.join("config.json")).unwrap()).unwrap();
    cfg["max_position_embeddings"] = serde_json::json!(20);
    std::fs::write(short.join("config.json"), cfg.to_string()).unwrap();
    let out = ask(&["--weights", short.to_str().unwrap(), "--input", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("context of 20 positions"), "{}", text(&out));

    // A mis-shaped tensor is named.
    let bad = dir.join("bad-shape");
    copy_dir(&weights, &bad);
    edit_checkpoint(&weights.join("model.safetensors"), &bad.join("model.safetensors"), None, Some(("connector.mlp.2.weight", vec![64, 512])));
    let out = ask(&["--weights", bad.to_str().unwrap(), "--input", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("connector.mlp.2.weight") && text(&out).contains("[64, 512]"), "{}", text(&out));

    // --resize none needs multiples of 28.
    let odd = dir.join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::copy(fixture("vggt-preprocess/bikes_1.png"), odd.join("a.png")).unwrap();
    let out = ask(&["--weights", w, "--input", odd.to_str().unwrap(), "--resize", "none"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("multiples of 28"), "{}", text(&out));

    // Space-aware sampling without geometry says what it needs.
    let out = ask(&["--weights", w, "--input", f, "--sampling", "space-aware"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--vggt"), "{}", text(&out));
}
