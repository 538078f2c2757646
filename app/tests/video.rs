//! Video decoding through FFmpeg: frames against ffmpeg's own decode of the same index, stream
//! facts, rotation, every codec family people record or datasets ship (H.264 with B-frames, HEVC,
//! VP9, AV1, MPEG-4 Part 2, MPEG-1/2), bad files, and VGGT on a video through the CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn viewer(args: &[&str]) -> Output {
    common::test_packages();
    Command::new(env!("CARGO_BIN_EXE_spatial-viewer")).args(args).output().expect("run spatial-viewer")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ffmpeg(args: &[&str]) {
    common::test_packages();
    let out = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).output().expect("ffmpeg is needed for the video tests (apt-get install ffmpeg)");
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn tmp(name: &str) -> common::ScratchDir {
    common::tmp_dir("video", name)
}

/// A clip of `frames` frames of ffmpeg's test pattern with the given encoder arguments.
fn make_clip(dir: &Path, name: &str, size: &str, frames: usize, codec: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut args = vec!["-f", "lavfi", "-i"];
    let src = format!("testsrc2=size={size}:rate=24");
    args.push(&src);
    let n = frames.to_string();
    args.extend(["-frames:v", &n]);
    args.extend(codec);
    args.push(path.to_str().unwrap());
    ffmpeg(&args);
    path
}

fn frame_via_cli(video: &Path, index: usize, dir: &Path) -> image::RgbImage {
    let out_png = dir.join(format!("ours_{index}.png"));
    let out = viewer(&["video", "frame", video.to_str().unwrap(), "--index", &index.to_string(), "--out", out_png.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    image::open(&out_png).unwrap().to_rgb8()
}

fn frame_via_ffmpeg(video: &Path, index: usize, dir: &Path) -> image::RgbImage {
    let out_png = dir.join(format!("ref_{index}.png"));
    let filter = format!("select=eq(n\\,{index})");
    ffmpeg(&["-i", video.to_str().unwrap(), "-vf", &filter, "-frames:v", "1", out_png.to_str().unwrap()]);
    image::open(&out_png).unwrap().to_rgb8()
}

#[test]
fn h264_with_b_frames_decodes_the_displayed_frame_exactly() {
    let dir = tmp("h264");
    let clip = make_clip(&dir, "high.mp4", "320x240", 48, &["-c:v", "libx264", "-profile:v", "high", "-bf", "3", "-pix_fmt", "yuv420p"]);
    let out = viewer(&["video", "info", clip.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["frames"], 48);
    assert_eq!((info["width"].as_u64(), info["height"].as_u64()), (Some(320), Some(240)));
    assert_eq!(info["codec"], "h264");
    assert!((info["fps"].as_f64().unwrap() - 24.0).abs() < 1e-6);
    for index in [0usize, 17, 47] {
        let ours = frame_via_cli(&clip, index, &dir);
        let reference = frame_via_ffmpeg(&clip, index, &dir);
        assert_eq!(ours.dimensions(), reference.dimensions());
        let max = ours.as_raw().iter().zip(reference.as_raw()).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(max <= 1, "frame {index}: max difference {max}");
    }
    // Neighbouring frames differ (the index really selects).
    assert_ne!(frame_via_cli(&clip, 16, &dir).as_raw(), frame_via_cli(&clip, 17, &dir).as_raw());
    let out = viewer(&["video", "frame", clip.to_str().unwrap(), "--index", "48", "--out", dir.join("x.png").to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("out of range"), "{}", text(&out));
}

#[test]
fn other_codecs_odd_sizes_and_rotation() {
    let dir = tmp("codecs");
    for (name, codec, want) in [
        ("vp9.webm", vec!["-c:v", "libvpx-vp9", "-b:v", "200k"], "vp9"),
        ("mpeg4.avi", vec!["-c:v", "mpeg4"], "mpeg4"),
        ("odd.mkv", vec!["-c:v", "libx264", "-pix_fmt", "yuv444p"], "h264"),
        ("hevc.mp4", vec!["-c:v", "libx265", "-x265-params", "log-level=error:bframes=3", "-pix_fmt", "yuv420p", "-tag:v", "hvc1"], "hevc"),
        ("av1.mkv", vec!["-c:v", "libaom-av1", "-cpu-used", "8", "-b:v", "200k"], "av1"),
        ("mpeg2.mpg", vec!["-c:v", "mpeg2video", "-bf", "2"], "mpeg2video"),
        ("mpeg1.mpg", vec!["-c:v", "mpeg1video"], "mpeg1video"),
    ] {
        let size = if name == "odd.mkv" { "173x97" } else { "160x120" };
        let clip = make_clip(&dir, name, size, 12, &codec);
        let out = viewer(&["video", "info", clip.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["codec"], want, "{name}");
        assert_eq!(info["frames"], 12, "{name}");
        let ours = frame_via_cli(&clip, 5, &dir);
        let reference = frame_via_ffmpeg(&clip, 5, &dir);
        assert_eq!(ours.dimensions(), reference.dimensions(), "{name}");
        let max = ours.as_raw().iter().zip(reference.as_raw()).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(max <= 1, "{name}: max difference {max}");
    }
    // Phone-style rotation metadata: the displayed frame is portrait.
    let clip = make_clip(&dir, "land.mp4", "320x240", 12, &["-c:v", "libx264", "-pix_fmt", "yuv420p"]);
    let rotated = dir.join("rotated.mp4");
    ffmpeg(&["-i", clip.to_str().unwrap(), "-c", "copy", "-metadata:s:v:0", "rotate=90", rotated.to_str().unwrap()]);
    let out = viewer(&["video", "info", rotated.to_str().unwrap(), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((info["width"].as_u64(), info["height"].as_u64()), (Some(240), Some(320)), "{info}");
    let ours = frame_via_cli(&rotated, 3, &dir);
    assert_eq!(ours.dimensions(), (240, 320));
    assert_eq!(ours.as_raw(), frame_via_ffmpeg(&rotated, 3, &dir).as_raw());
}

#[test]
fn bad_video_files_are_named() {
    let dir = tmp("bad");
    let junk = dir.join("junk.mp4");
    std::fs::write(&junk, b"this is not a video").unwrap();
    let out = viewer(&["video", "info", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("junk.mp4") && text(&out).contains("not a readable video"), "{}", text(&out));
    let out = viewer(&["video", "info", dir.join("missing.mp4").to_str().unwrap()]);
    assert!(text(&out).contains("missing.mp4") && text(&out).contains("no such file"), "{}", text(&out));
    // A clip cut short: the moov atom is written first (faststart), the frames then stop.
    let clip = make_clip(&dir, "full.mp4", "320x240", 96, &["-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]);
    let bytes = std::fs::read(&clip).unwrap();
    let cut = dir.join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let out = viewer(&["video", "frame", cut.to_str().unwrap(), "--index", "90", "--out", dir.join("x.png").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cut.mp4"), "{}", text(&out));
}

#[test]
fn vggt_reconstructs_a_video_through_the_cli() {
    let dir = tmp("recon");
    let clip = make_clip(&dir, "walk.mp4", "280x210", 40, &["-c:v", "libx264", "-bf", "2", "-pix_fmt", "yuv420p"]);
    let weights = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/vggt-tiny");
    let out_file = dir.join("g.safetensors");
    let out = viewer(&["reconstruct", "--weights", weights.to_str().unwrap(), "--input", clip.to_str().unwrap(), "--max-frames", "4", "--out", out_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let t = candle_core::safetensors::load(&out_file, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["frame_indices"].to_vec1::<i64>().unwrap(), vec![0, 13, 26, 39]);
    // 280x210 -> width 518, height round(388.5/14)*14 = 392.
    assert_eq!(t["images"].dims(), &[4, 3, 392, 518]);
}

mod common;

/// A real camera clip (from a registry package, see tests/fixtures/real-camera) through every
/// path a user takes: facts, frames against ffmpeg, reconstruction, sampling, a question.
#[test]
fn a_real_camera_clip_end_to_end() {
    let dir = tmp("real");
    let clip = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real-camera/bikes.mp4");
    let out = viewer(&["video", "info", clip.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((info["frames"].as_u64(), info["width"].as_u64(), info["height"].as_u64()), (Some(250), Some(640), Some(272)), "{info}");
    assert_eq!(info["codec"], "h264");
    for index in [0usize, 101, 249] {
        let ours = frame_via_cli(&clip, index, &dir);
        let reference = frame_via_ffmpeg(&clip, index, &dir);
        let max = ours.as_raw().iter().zip(reference.as_raw()).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(max <= 1, "frame {index}: max difference {max}");
    }
    let vggt = common::models_fixture("vggt-tiny");
    let geometry = dir.join("bikes.safetensors");
    let out = viewer(&["reconstruct", "--weights", vggt.to_str().unwrap(), "--input", clip.to_str().unwrap(), "--max-frames", "6", "--out", geometry.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = viewer(&["sample", "--geometry", geometry.to_str().unwrap(), "--k", "3", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let picks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!picks["selected"].as_array().unwrap().is_empty(), "{picks}");

    // Spatial-MLLM on 4 frames of it: 640x272 becomes 644x280 (qwen_vl_utils' smart_resize).
    let weights = common::mllm_weights(&dir);
    let dump = dir.join("ask.safetensors");
    let out = viewer(&["ask", "--weights", weights.to_str().unwrap(), "--input", clip.to_str().unwrap(), "--question", "How many cars are there?", "--frames", "4", "--max-new-tokens", "3", "--dump", dump.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let d = candle_core::safetensors::load(&dump, &candle_core::Device::Cpu).unwrap();
    assert_eq!(d["video_grid_thw"].flatten_all().unwrap().to_vec1::<i64>().unwrap(), vec![2, 20, 46]);
    assert_eq!(d["frame_indices"].to_vec1::<i64>().unwrap(), vec![0, 83, 166, 249]);
}
