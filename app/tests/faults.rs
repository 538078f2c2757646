//! The command line under faults: full disks, bad destinations, odd file names, damaged and
//! changing files, long clips. Each failure ends in a message naming the file, never in lost data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

mod common;

fn viewer(args: &[&str]) -> Output {
    common::test_packages();
    Command::new(env!("CARGO_BIN_EXE_spatial-viewer")).args(args).output().expect("run spatial-viewer")
}

use common::text;

fn tmp(name: &str) -> common::ScratchDir {
    common::tmp_dir("faults", name)
}

fn ffmpeg(args: &[&str]) {
    common::test_packages();
    let out = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).output().expect("ffmpeg is needed (apt-get install ffmpeg)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(p)
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(".sv-tmp") || n.starts_with(".tmp")).collect()
}

/// A write that runs out of room (a file-size limit stands in for a full disk) fails with a
/// message naming the destination, leaves the previous export as it was and no partial file.
#[test]
fn a_full_disk_keeps_the_previous_export_and_leaves_nothing_behind() {
    let dir = tmp("full");
    let ply = dir.join("points.ply");
    let out = viewer(&["export", "--demo", "--format", "ply", "--out", ply.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let good = std::fs::read(&ply).unwrap();
    assert!(good.len() > 1 << 20, "the demo's PLY is {} bytes", good.len());
    // 50 blocks of 512 bytes: far less than the PLY.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -f 50 && exec '{}' export --demo --format ply --conf-percentile 10 --out '{}'", env!("CARGO_BIN_EXE_spatial-viewer"), ply.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("points.ply") && msg.contains("File too large") && !msg.contains(".sv-tmp"), "{msg}");
    assert_eq!(std::fs::read(&ply).unwrap(), good, "the previous export changed");
    assert!(leftovers(&dir).is_empty(), "left behind: {:?}", leftovers(&dir));
}

/// A destination that cannot be written is reported before any work, naming the path as given.
#[test]
fn bad_destinations_are_refused_before_the_work() {
    let dir = tmp("dest");
    std::fs::create_dir_all(dir.join("frames")).unwrap();
    for i in 0..3 {
        std::fs::copy(fixture("vggt-preprocess/bikes_1.png"), dir.join(format!("frames/{i}.png"))).unwrap();
    }
    let weights = fixture("vggt-tiny");
    for (out, why) in [
        (dir.join("missing/g.safetensors"), "does not exist"),
        (dir.join("frames"), "is a folder"),
        (PathBuf::from("/proc/g.safetensors"), "cannot write"),
    ] {
        let start = Instant::now();
        let o = viewer(&["reconstruct", "--weights", weights.to_str().unwrap(), "--input", dir.join("frames").to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let msg = text(&o);
        assert_eq!(o.status.code(), Some(1), "{msg}");
        assert!(msg.contains(&out.display().to_string()) && msg.contains(why), "{msg}");
        assert!(!msg.contains("VGGT on") && !msg.contains(".sv-tmp"), "the work started before the check: {msg}");
        assert!(start.elapsed().as_secs_f64() < 10.0);
    }
    // Temporaries of a killed run next to the output are removed; the output follows the umask.
    std::fs::write(dir.join(".sv-tmp-999999999-0-g.safetensors"), vec![0u8; 4096]).unwrap();
    let out = dir.join("g.safetensors");
    let o = viewer(&["reconstruct", "--weights", weights.to_str().unwrap(), "--input", dir.join("frames").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(leftovers(&dir).is_empty(), "left behind: {:?}", leftovers(&dir));
    use std::os::unix::fs::PermissionsExt;
    let reference = dir.join("reference");
    std::fs::write(&reference, b"").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), mode(&reference));
}

/// File names FFmpeg would read as an option or a protocol are read as files.
#[test]
fn odd_file_names_decode() {
    let dir = tmp("names");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10", "-frames:v", "12", "-c:v", "libx264", "-pix_fmt", "yuv420p", dir.join("plain.mp4").to_str().unwrap()]);
    for name in ["-v.mp4", "pipe:0.mp4", "concat:x.mp4", "a b ü.mp4"] {
        std::fs::copy(dir.join("plain.mp4"), dir.join(name)).unwrap();
        let path = dir.join(name);
        let o = viewer(&["video", "info", path.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(info["frames"], 12, "{name}");
        let png = dir.join("f.png");
        let o = viewer(&["video", "frame", path.to_str().unwrap(), "--index", "7", "--out", png.to_str().unwrap()]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        // Relative names, as a user types them in that folder, too (a leading '-' after `--`).
        let o = Command::new(env!("CARGO_BIN_EXE_spatial-viewer")).args(["video", "info", "--", name]).current_dir(&dir).output().unwrap();
        assert!(o.status.success(), "{name} (relative): {}", text(&o));
    }
}

/// A late frame of a long clip comes from a seek, not from decoding everything before it: within
/// twice the time `ffmpeg -ss` takes for the same frame (best of two, side by side).
#[test]
fn a_late_frame_of_a_long_clip_is_a_seek_away() {
    let dir = tmp("late");
    let clip = dir.join("long.mp4");
    // 60 s of 1080p with 250-frame GOPs.
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30", "-t", "60", "-c:v", "libx264", "-preset", "ultrafast", "-g", "250", "-bf", "2", "-pix_fmt", "yuv420p", clip.to_str().unwrap()]);
    let index = 1790;
    let (ours, theirs) = (dir.join("ours.png"), dir.join("theirs.png"));
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..2 {
        let t = Instant::now();
        let o = viewer(&["video", "frame", clip.to_str().unwrap(), "--index", &index.to_string(), "--out", ours.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        best.0 = best.0.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        // Half a frame before the frame's time: an accurate seek then outputs exactly that frame.
        ffmpeg(&["-ss", &format!("{:.4}", (index as f64 - 0.5) / 30.0), "-i", clip.to_str().unwrap(), "-frames:v", "1", theirs.to_str().unwrap()]);
        best.1 = best.1.min(t.elapsed().as_secs_f64());
    }
    assert!(best.0 <= 2.0 * best.1, "frame {index}: {:.2} s, ffmpeg -ss {:.2} s", best.0, best.1);
    let (a, b) = (image::open(&ours).unwrap().to_rgb8(), image::open(&theirs).unwrap().to_rgb8());
    let max = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (*x as i32 - *y as i32).abs()).max().unwrap_or(255);
    assert!(a.dimensions() == b.dimensions() && max <= 1, "not the frame ffmpeg -ss gives (max difference {max})");
}

/// A damaged reconstruction file is reported as such, not read as geometry full of garbage.
#[test]
fn a_damaged_reconstruction_is_named() {
    let dir = tmp("damaged");
    let g = dir.join("g.safetensors");
    let o = viewer(&["export", "--demo", "--format", "safetensors", "--out", g.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let mut bytes = std::fs::read(&g).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n / 2..n / 2 + 256] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    std::fs::write(&g, bytes).unwrap();
    let o = viewer(&["sample", "--geometry", g.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("g.safetensors") && text(&o).contains("checksum"), "{}", text(&o));
}
