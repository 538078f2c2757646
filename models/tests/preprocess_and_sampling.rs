//! VGGT preprocessing against upstream `load_and_preprocess_images`, and space-aware sampling
//! against upstream `compute_voxel_sets` + `maximum_coverage_sampling`.

mod common;
use common::*;

use candle_core::{DType, Device, Tensor};
use spatial_models::sampling::{SamplingParams, space_aware_sampling};
use spatial_models::vggt::preprocess::{ResizeMode, load_and_preprocess_images};

/// Max and mean |diff| in 1/255 units between our [S,3,H,W] f32 and upstream's u8 (value*255).
fn diff_255(ours: &Tensor, expected_u8: &Tensor) -> (f32, f32) {
    let ours: Vec<f32> = (ours * 255.0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let exp: Vec<f32> = expected_u8.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ours.len(), exp.len());
    let diffs: Vec<f32> = ours.iter().zip(&exp).map(|(a, b)| (a - b).abs()).collect();
    (diffs.iter().copied().fold(0.0, f32::max), diffs.iter().sum::<f32>() / diffs.len() as f32)
}

#[test]
fn preprocessing_matches_pillow_based_upstream() {
    let expected = load_expected("vggt-preprocess/expected.safetensors");
    let names = ["bikes_1", "bikes_2", "carphone_1", "portrait_1"];
    for (mode, tag) in [(ResizeMode::Crop, "crop"), (ResizeMode::Pad, "pad")] {
        for name in names {
            let path = fixture(&format!("vggt-preprocess/{name}.png"));
            let ours = load_and_preprocess_images(&[path], mode, &Device::Cpu).unwrap().squeeze(0).unwrap();
            let exp = &expected[&format!("{tag}.{name}")];
            assert_eq!(ours.dims(), exp.dims(), "{tag}.{name} shape");
            let (max, mean) = diff_255(&ours, exp);
            eprintln!("{tag}.{name}: max {max:.2}/255 mean {mean:.3}/255");
            // Upstream allows 2/255; the port reproduces Pillow byte for byte.
            assert!(max < 0.01 && mean < 0.01, "{tag}.{name}: max {max}/255, mean {mean}/255");
        }
    }
    let paths: Vec<_> = names.iter().map(|n| fixture(&format!("vggt-preprocess/{n}.png"))).collect();
    let ours = load_and_preprocess_images(&paths, ResizeMode::Crop, &Device::Cpu).unwrap();
    let exp = &expected["crop.all"];
    assert_eq!(ours.dims(), exp.dims());
    let (max, mean) = diff_255(&ours, exp);
    assert!(max <= 2.0 + 1e-3 && mean <= 0.5, "crop.all: max {max}/255, mean {mean}/255");
}

#[test]
fn bad_images_get_clear_errors() {
    let dir = tempfile::Builder::new().prefix("sv-bad-").tempdir().unwrap();
    let dir = dir.path();
    let empty = dir.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let err = load_and_preprocess_images(&[empty.clone()], ResizeMode::Crop, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("empty.png") && err.contains("empty"), "{err}");
    let junk = dir.join("junk.jpg");
    std::fs::write(&junk, b"this is not a jpeg").unwrap();
    let err = format!("{:#}", load_and_preprocess_images(&[junk], ResizeMode::Crop, &Device::Cpu).unwrap_err());
    assert!(err.contains("junk.jpg") && err.contains("not a readable image"), "{err}");
    let err = spatial_models::vggt::preprocess::list_image_files(&dir.join("nothing-here")).unwrap_err().to_string();
    assert!(err.contains("nothing-here"), "{err}");
    let sub = dir.join("no-images");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("notes.txt"), b"x").unwrap();
    let err = spatial_models::vggt::preprocess::list_image_files(&sub).unwrap_err().to_string();
    assert!(err.contains("no PNG or JPEG"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn space_aware_sampling_matches_upstream_for_every_k() {
    let expected = load_expected("sa-sampling/expected.safetensors");
    let points: Vec<f32> = expected["world_points"].flatten_all().unwrap().to_vec1().unwrap();
    let conf: Vec<f32> = expected["world_points_conf"].flatten_all().unwrap().to_vec1().unwrap();
    let frames = expected["world_points"].dim(0).unwrap();
    let voxels: Vec<i64> = expected["voxels_per_frame"].to_vec1().unwrap();
    let bbox: Vec<f32> = expected["bbox_min"].to_vec1().unwrap();
    let voxel_size: Vec<f32> = expected["voxel_size"].to_vec1().unwrap();
    for k in [4usize, 8, 16, 40] {
        let r = space_aware_sampling(&points, &conf, frames, &SamplingParams { k, ..Default::default() }).unwrap();
        let want: Vec<i64> = expected[&format!("selected_k{k}")].to_vec1().unwrap();
        let got: Vec<i64> = r.selected.iter().map(|&i| i as i64).collect();
        assert_eq!(got, want, "selected for K={k}");
        assert_eq!(r.voxels_per_frame.iter().map(|&v| v as i64).collect::<Vec<_>>(), voxels);
        assert!((r.voxel_size - voxel_size[0]).abs() <= 1e-6 * voxel_size[0].abs().max(1.0));
        for a in 0..3 {
            assert!((r.bbox_min[a] - bbox[a]).abs() <= 1e-6);
        }
    }
    // Every K from 1 to the frame count gives a prefix-consistent greedy order.
    let full = space_aware_sampling(&points, &conf, frames, &SamplingParams { k: frames, ..Default::default() }).unwrap();
    for k in 1..=frames {
        let r = space_aware_sampling(&points, &conf, frames, &SamplingParams { k, ..Default::default() }).unwrap();
        let mut prefix: Vec<usize> = full.picks_in_order.iter().take(k).map(|&(f, _)| f).collect();
        prefix.sort_unstable();
        assert_eq!(r.selected, prefix, "K={k}");
    }
    assert!(!full.selected.contains(&5), "frame 5 has no confident point and must never be picked");
}
