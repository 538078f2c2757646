//! Exports read back by the tools people use, installed from PyPI for the test (pycolmap, trimesh,
//! plyfile in a virtual environment), and compared with what the app holds: the demo scene's
//! ground truth, exported as safetensors beside them.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::viewer;

use common::text;

/// A virtual environment with the readers, made once per target folder.
fn python() -> PathBuf {
    common::python_venv("readers-venv", &["pycolmap==4.2.1", "trimesh==5.2.0", "plyfile==1.1.5", "numpy<3"])
}

fn tmp(name: &str) -> common::ScratchDir {
    common::tmp_dir("exports", name)
}

fn export(format: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["export", "--demo", "--format", format, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = viewer(&args);
    assert!(o.status.success(), "export {format}: {}", text(&o));
}

#[test]
fn exports_read_back_with_colmap_trimesh_and_plyfile() {
    let dir = tmp("all");
    let reference = dir.join("demo.safetensors");
    export("safetensors", &reference, &[]);
    export("colmap", &dir.join("colmap"), &["--conf-percentile", "0"]);
    export("colmap-text", &dir.join("colmap-text"), &["--conf-percentile", "0"]);
    export("glb", &dir.join("scene.glb"), &["--conf-percentile", "30"]);
    export("ply", &dir.join("points.ply"), &["--conf-percentile", "30"]);
    export("depth", &dir.join("maps"), &[]);
    let py = python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/read_exports.py");
    let o = Command::new(&py).arg(&script).arg(dir.join("colmap")).arg(dir.join("colmap-text")).arg(dir.join("scene.glb")).arg(dir.join("points.ply")).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let seen: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();

    // What the app holds.
    let t = candle_core::safetensors::load(&reference, &candle_core::Device::Cpu).unwrap();
    let extr: Vec<Vec<Vec<f32>>> = t["extrinsic"].to_vec3().unwrap();
    let intr: Vec<Vec<Vec<f32>>> = t["intrinsic"].to_vec3().unwrap();
    let frames: Vec<i64> = t["frame_indices"].to_vec1().unwrap();
    let (s, _, h, w) = t["images"].dims4().unwrap();
    for key in ["colmap", "colmap_text"] {
        let c = &seen[key];
        let images = c["images"].as_array().unwrap();
        assert_eq!(images.len(), s, "{key}");
        for (f, image) in images.iter().enumerate() {
            assert_eq!(image["name"], format!("frame_{:06}.png", frames[f]));
            assert!(dir.join(if key == "colmap" { "colmap" } else { "colmap-text" }).join("images").join(image["name"].as_str().unwrap()).is_file());
            let cam = &c["cameras"][image["camera_id"].to_string()];
            assert_eq!(cam["model"], "PINHOLE");
            assert_eq!((cam["width"].as_u64(), cam["height"].as_u64()), (Some(w as u64), Some(h as u64)));
            let p: Vec<f64> = cam["params"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let k = &intr[f];
            // COLMAP's pixel centres are VGGT's plus half a pixel.
            for (got, want) in p.iter().zip([k[0][0] as f64, k[1][1] as f64, k[0][2] as f64 + 0.5, k[1][2] as f64 + 0.5]) {
                assert!((got - want).abs() < 1e-6, "{key} frame {f}: intrinsics {p:?} vs {k:?}");
            }
            let r: Vec<Vec<f64>> = image["rotation"].as_array().unwrap().iter().map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()).collect();
            let tr: Vec<f64> = image["translation"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            for i in 0..3 {
                for j in 0..3 {
                    assert!((r[i][j] - extr[f][i][j] as f64).abs() < 1e-6, "{key} frame {f}: rotation");
                }
                assert!((tr[i] - extr[f][i][3] as f64).abs() < 1e-6, "{key} frame {f}: translation");
            }
        }
        assert!(c["points"].as_u64().unwrap() > 1000, "{c}");
        assert!(c["min_track"].as_u64().unwrap() >= 2, "every track must have at least two observations: {c}");
        assert!(c["max_reprojection_error"].as_f64().unwrap() < 1.0, "{c}");
    }
    assert_eq!(seen["colmap"]["points"], seen["colmap_text"]["points"]);

    // GLB: every frame's frustum (the picks marked), and the filtered points.
    let glb = &seen["glb"];
    assert_eq!(glb["frustums"], s);
    assert_eq!(glb["picks"], 16);
    let ply = &seen["ply"];
    assert_eq!(glb["points"], ply["count"]);
    assert_eq!(ply["properties"], serde_json::json!(["x", "y", "z", "red", "green", "blue", "confidence", "frame"]));
    let conf: Vec<f32> = t["depth_conf"].flatten_all().unwrap().to_vec1().unwrap();
    let mut sorted: Vec<f32> = conf.iter().copied().filter(|c| *c > 1e-5).collect();
    sorted.sort_by(f32::total_cmp);
    // The filter is numpy's 30th percentile of all confidences.
    let n = ply["count"].as_u64().unwrap() as f64;
    assert!((n / conf.len() as f64 - 0.7).abs() < 0.02, "{n} of {} points", conf.len());
    assert_eq!(ply["frames"].as_array().unwrap().len(), s);

    // Depth maps: 16-bit PNGs whose values times the sidecar's scale are the depths.
    let sidecar: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("maps/maps.json")).unwrap()).unwrap();
    let scale = sidecar["depth"]["scale"].as_f64().unwrap();
    let depth: Vec<f32> = t["depth"].flatten_all().unwrap().to_vec1().unwrap();
    for f in [0, s / 2, s - 1] {
        let img = image::open(dir.join(format!("maps/depth/frame_{:06}.png", frames[f]))).unwrap().into_luma16();
        assert_eq!(img.dimensions(), (w as u32, h as u32));
        for (i, px) in img.pixels().enumerate().step_by(97) {
            let want = depth[f * w * h + i] as f64;
            assert!((px[0] as f64 * scale - want).abs() <= scale, "frame {f} pixel {i}: {} vs {want}", px[0] as f64 * scale);
        }
    }
}
