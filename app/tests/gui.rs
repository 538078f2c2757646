//! The GUI for real: the app runs scripted steps in a window under Xvfb (software Vulkan) and
//! the screenshots are checked pixel by pixel against what the app says it drew.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Mutex;

/// GUI runs share 2 cores with the software rasteriser: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Xvfb {
    display: String,
    child: Child,
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM lets Xvfb remove its lock file and socket; SIGKILL would leave them behind.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        for _ in 0..50 {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let n = &self.display[1..];
        let _ = std::fs::remove_file(format!("/tmp/.X{n}-lock"));
        let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{n}"));
    }
}

fn start_xvfb() -> Xvfb {
    common::test_packages();
    for n in 0..100 {
        let display = format!(":{}", 140 + (std::process::id() as usize + n * 7) % 400);
        let lock = format!("/tmp/.X{}-lock", &display[1..]);
        let socket = format!("/tmp/.X11-unix/X{}", &display[1..]);
        if Path::new(&lock).exists() || Path::new(&socket).exists() {
            continue;
        }
        let mut child = Command::new("Xvfb")
            .args([display.as_str(), "-screen", "0", "1280x800x24", "-nolisten", "tcp"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("Xvfb is needed for the GUI tests (apt-get install xvfb mesa-vulkan-drivers)");
        for _ in 0..100 {
            if Path::new(&lock).exists() && Path::new(&socket).exists() {
                std::thread::sleep(std::time::Duration::from_millis(200));
                return Xvfb { display, child };
            }
            // Lost a race for this display number (another test run took it): try the next.
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("no X display could be started with Xvfb");
}

fn tmp_dir(name: &str) -> common::ScratchDir {
    common::tmp_dir("gui", name)
}

/// Runs a script (with extra command-line arguments) while `during` drives the live window (e.g.
/// with xdotool) on the same display; `during` gets the display and the viewer's process id.
fn run_viewer(dir: &Path, script: &str, args: &[&str], during: impl FnOnce(&str, u32)) -> Output {
    use std::os::unix::process::CommandExt;
    let path = dir.join("steps.json");
    std::fs::write(&path, script).unwrap();
    let xvfb = start_xvfb();
    let mut command = Command::new(env!("CARGO_BIN_EXE_spatial-viewer"));
    // Ctrl-C as a terminal's foreground job gets it: a test run started in the background
    // (`cmd &` in a script) inherits SIGINT ignored, and an app started so rightly keeps ignoring it.
    // SAFETY: only resets one signal's disposition in the child before it execs.
    unsafe {
        command.pre_exec(|| {
            unsafe extern "C" {
                fn signal(signum: i32, handler: usize) -> usize;
            }
            const SIGINT: i32 = 2;
            const SIG_DFL: usize = 0;
            signal(SIGINT, SIG_DFL);
            Ok(())
        });
    }
    let child = command
        .arg("--script")
        .arg(&path)
        .args(args)
        .env("DISPLAY", &xvfb.display)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the viewer");
    during(&xvfb.display, child.id());
    let out = child.wait_with_output().unwrap();
    drop(xvfb);
    out
}

fn run_script_with(dir: &Path, script: &str, during: impl FnOnce(&str)) -> Output {
    run_viewer(dir, script, &[], |display, _| during(display))
}

fn run_script(dir: &Path, script: &str) -> Output {
    run_script_with(dir, script, |_| {})
}

fn load_rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

fn near(p: &image::Rgb<u8>, c: [u8; 3], tol: i32) -> bool {
    (0..3).all(|i| (p[i] as i32 - c[i] as i32).abs() <= tol)
}

const CURRENT: [u8; 3] = [255, 235, 51];
const SAMPLED: [u8; 3] = [255, 115, 25];

#[test]
fn demo_scene_renders_with_cameras_timeline_and_picks() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("demo");
    let out = run_script(
        &dir,
        r#"{"steps": [{"open": "demo"}, {"wait_idle": 120}, {"dump_state": "space_aware.json"}, {"set": {"control": "sampler", "value": "uniform"}},
            {"select_camera": 30}, {"set": {"control": "point_budget", "value": 120000}},
            {"wait_idle": 120}, {"wait_frames": 10}, {"screenshot": "demo.png"}, {"dump_state": "state.json"},
            {"set": {"control": "color_mode", "value": "confidence"}}, {"set": {"control": "show_cameras", "value": false}},
            {"wait_frames": 5}, {"screenshot": "confidence.png"},
            {"set": {"control": "sampler", "value": "space-aware"}}, {"set": {"control": "color_mode", "value": "first covering pick"}},
            {"wait_idle": 60}, {"wait_frames": 10}, {"screenshot": "coverage.png"}, {"quit": true}]}"#,
    );
    assert!(out.status.success(), "viewer failed: {}", String::from_utf8_lossy(&out.stderr));
    // By default the demo's picks come from space-aware sampling on its ground truth: 16 distinct
    // frames, with the uniform picks shown alongside for comparison.
    let sa: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("space_aware.json")).unwrap()).unwrap();
    let picks: Vec<u64> = sa["sampled"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(sa["sampled_label"].as_str().unwrap().starts_with("space-aware"), "{sa}");
    assert_eq!(picks.len(), 16);
    assert!(picks.windows(2).all(|w| w[0] < w[1]) && *picks.last().unwrap() < 96);
    assert_eq!(sa["compare"].as_array().unwrap().len(), 16);

    let img = load_rgb(&dir.join("demo.png"));
    assert_eq!((img.width(), img.height()), (1280, 800));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["frame"], 30);
    let vp: Vec<f64> = state["viewport"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let (vx, vy, vw, vh) = (vp[0] as u32, vp[1] as u32, vp[2] as u32, vp[3] as u32);
    assert!(vw > 400 && vh > 400, "viewport {vp:?}");

    // The viewport is rendered: many distinct colours, not a cleared background.
    let mut colours = std::collections::HashSet::new();
    let mut background = 0;
    for y in vy..vy + vh {
        for x in vx..vx + vw {
            let p = img.get_pixel(x, y);
            colours.insert([p[0] >> 2, p[1] >> 2, p[2] >> 2]);
            if near(p, [23, 23, 28], 3) {
                background += 1;
            }
        }
    }
    assert!(colours.len() > 300, "only {} colours in the viewport", colours.len());
    // The first view frames the whole room (walls included), so the floor and walls fill much
    // of it but not all; a cleared viewport would be all background.
    assert!((background as f64) < 0.8 * (vw * vh) as f64, "viewport is mostly background");

    // The selected frame's frustum is drawn in the highlight colour where the projection says.
    let f30 = &state["frustums"][30];
    let pts: Vec<[f64; 2]> = std::iter::once(&f30["center"]).chain(f30["corners"].as_array().unwrap().iter()).filter_map(|p| p.as_array().map(|a| [a[0].as_f64().unwrap(), a[1].as_f64().unwrap()])).collect();
    assert_eq!(pts.len(), 5, "frustum 30 is not fully in front of the camera: {f30}");
    let mut hits = 0;
    for i in 1..5 {
        // Sample along the apex-to-corner edges.
        for k in 2..9 {
            let t = k as f64 / 10.0;
            let (x, y) = (pts[0][0] + t * (pts[i][0] - pts[0][0]), pts[0][1] + t * (pts[i][1] - pts[0][1]));
            let found = (-2i32..=2).any(|dy| (-2i32..=2).any(|dx| {
                let (px, py) = (x as i32 + dx, y as i32 + dy);
                px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() && near(img.get_pixel(px as u32, py as u32), CURRENT, 40)
            }));
            hits += found as u32;
        }
    }
    assert!(hits >= 20, "highlighted frustum edges found at only {hits}/28 projected samples");

    // Timeline: the current-frame marker and the 16 sampled-frame markers.
    let timeline = (img.height() - 110)..(img.height() - 24);
    let imgr = &img;
    let yellow_x: Vec<u32> = timeline.clone().flat_map(|y| (0..imgr.width()).filter(move |&x| near(imgr.get_pixel(x, y), CURRENT, 30))).collect();
    assert!(!yellow_x.is_empty(), "no current-frame marker on the timeline");
    let sampled_cols: std::collections::BTreeSet<u32> = timeline.flat_map(|y| (0..imgr.width()).filter(move |&x| near(imgr.get_pixel(x, y), SAMPLED, 30))).map(|x| x / 8).collect();
    assert!(sampled_cols.len() >= 16, "sampled markers in {} columns", sampled_cols.len());

    // Confidence colouring changes the picture.
    let conf = load_rgb(&dir.join("confidence.png"));
    let changed = (vy..vy + vh).step_by(4).flat_map(|y| (vx..vx + vw).step_by(4).map(move |x| (x, y))).filter(|&(x, y)| !near(imgr.get_pixel(x, y), conf.get_pixel(x, y).0, 10)).count();
    assert!(changed > 2000, "confidence colouring changed only {changed} samples");

    // Colour by first covering pick: most visible points take one of the 16 picks' colours
    // (a hue wheel over the greedy order), and several picks' colours show.
    let palette: Vec<[u8; 3]> = (0..16)
        .map(|r| {
            let h = r as f32 / 16.0 * 0.8;
            let c = |k: f32| ((((h + k / 6.0).fract() * 6.0 - 3.0).abs() - 1.0).clamp(0.0, 1.0) * 0.85 + 0.1) * 255.0;
            [c(5.0) as u8, c(3.0) as u8, c(1.0) as u8]
        })
        .collect();
    let cov = load_rgb(&dir.join("coverage.png"));
    let mut per_pick = vec![0usize; 16];
    let mut lit = 0;
    for y in (vy..vy + vh).step_by(2) {
        for x in (vx..vx + vw).step_by(2) {
            let p = cov.get_pixel(x, y);
            if near(p, [23, 23, 28], 3) {
                continue;
            }
            lit += 1;
            if let Some(i) = palette.iter().position(|c| near(p, *c, 6)) {
                per_pick[i] += 1;
            }
        }
    }
    let coloured: usize = per_pick.iter().sum();
    assert!(coloured * 2 > lit, "only {coloured} of {lit} point pixels have a pick's colour: {per_pick:?}");
    assert!(per_pick.iter().filter(|&&n| n > 200).count() >= 6, "too few picks' colours on screen: {per_pick:?}");
}

#[test]
fn folder_of_frames_plays_and_bad_folders_are_named() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("folder");
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    // Frame i is a flat colour, so the video panel tells which one is shown.
    for i in 0..6u8 {
        let img = image::RgbImage::from_pixel(160, 120, image::Rgb([40 * i, 200 - 30 * i, 90]));
        img.save(frames.join(format!("{i:03}.png"))).unwrap();
    }
    let out = run_script(&dir, r#"{"steps": [{"open": "frames"}, {"seek": 4}, {"wait_idle": 30}, {"wait_frames": 10}, {"screenshot": "folder.png"}, {"quit": true}]}"#);
    assert!(out.status.success(), "viewer failed: {}", String::from_utf8_lossy(&out.stderr));
    let img = load_rgb(&dir.join("folder.png"));
    let want = [160u8, 80, 90];
    let count = (30..300).flat_map(|y| (0..300).map(move |x| (x, y))).filter(|&(x, y)| near(img.get_pixel(x, y), want, 6)).count();
    assert!(count > 5000, "frame 4 is not in the video panel ({count} matching pixels)");

    // Mixed sizes: the message names the odd file, and the run fails at that step.
    image::RgbImage::new(100, 100).save(frames.join("007.png")).unwrap();
    let out = run_script(&dir, r#"{"steps": [{"open": "frames"}, {"quit": true}]}"#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("007.png") && err.contains("same size"), "{err}");

    // A folder without images.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = run_script(&dir, r#"{"steps": [{"open": "empty"}, {"quit": true}]}"#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("empty") && err.contains("no PNG or JPEG"), "{err}");
}

#[test]
fn vggt_reconstructs_an_opened_folder_in_the_background() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("vggt");
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..5u32 {
        let img = image::RgbImage::from_fn(168, 126, |x, y| image::Rgb([((x * 3 + i * 20) % 256) as u8, ((y * 2) % 256) as u8, ((x + y + i * 40) % 256) as u8]));
        img.save(frames.join(format!("{i:03}.png"))).unwrap();
    }
    let weights = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/vggt-tiny");
    let script = format!(
        r#"{{"steps": [{{"load_weights": {{"vggt": "{}"}}}}, {{"set": {{"control": "sampler", "value": "space-aware"}}}}, {{"set": {{"control": "vggt_width", "value": 518}}}}, {{"open": "frames"}}, {{"wait_idle": 120}},
            {{"wait_frames": 10}}, {{"dump_state": "state.json"}}, {{"select_camera": 4}}, {{"screenshot": "vggt.png"}},
            {{"export": "geometry.safetensors"}}, {{"export": "points.ply"}}, {{"quit": true}}]}}"#,
        weights.display()
    );
    let out = run_script(&dir, &script);
    assert!(out.status.success(), "viewer failed: {}", String::from_utf8_lossy(&out.stderr));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let g = &state["geometry"];
    assert!(g["label"].as_str().unwrap().starts_with("VGGT: frames (5 of 5 frames)"), "{state}");
    assert_eq!(g["frames"], 5);
    assert!(g["points"].as_u64().unwrap() > 1000, "{state}");
    assert_eq!(state["frustums"].as_array().unwrap().len(), 5);
    assert!(dir.join("vggt.png").exists());
    let exported = candle_core::safetensors::load(dir.join("geometry.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(exported["world_points"].dims(), &[5, 392, 518, 3]);
    assert_eq!(exported["frame_indices"].to_vec1::<i64>().unwrap(), vec![0, 1, 2, 3, 4]);
    assert!(std::fs::read(dir.join("points.ply")).unwrap().starts_with(b"ply\n"));

    // Reopening the same frames with the same weights comes from the cache.
    let out = run_script(&dir, &script);
    assert!(out.status.success(), "viewer failed: {}", String::from_utf8_lossy(&out.stderr));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    assert!(state["geometry"]["label"].as_str().unwrap().ends_with("cached)"), "{state}");

    // Weights that are not a checkpoint: the step fails, naming the folder.
    let out = run_script(&dir, r#"{"steps": [{"load_weights": {"vggt": "frames"}}, {"quit": true}]}"#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("frames") && err.contains("no model.safetensors"), "{err}");
}

#[test]
fn a_video_plays_and_is_reconstructed() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("video");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=224x168:rate=10", "-frames:v", "30", "-c:v", "libx264", "-bf", "2", "-pix_fmt", "yuv420p", "clip.mp4"])
        .current_dir(&dir)
        .status()
        .expect("ffmpeg is needed (apt-get install ffmpeg)");
    assert!(status.success());
    let weights = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/vggt-tiny");
    let script = format!(
        r#"{{"steps": [{{"load_weights": {{"vggt": "{}"}}}}, {{"set": {{"control": "vggt_frames", "value": 4}}}}, {{"open": "clip.mp4"}}, {{"wait_idle": 120}}, {{"seek": 20}}, {{"wait_idle": 30}},
            {{"wait_frames": 5}}, {{"dump_state": "state.json"}}, {{"screenshot": "video.png"}},
            {{"seek": 19}}, {{"wait_idle": 30}}, {{"wait_frames": 3}}, {{"dump_state": "stepped-back.json"}},
            {{"seek": 3}}, {{"wait_idle": 30}}, {{"wait_frames": 3}}, {{"dump_state": "jumped-back.json"}}, {{"quit": true}}]}}"#,
        weights.display()
    );
    let out = run_script(&dir, &script);
    assert!(out.status.success(), "viewer failed: {}", String::from_utf8_lossy(&out.stderr));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["frame_count"], 30);
    assert_eq!(state["frame"], 20);
    assert!(state["geometry"]["label"].as_str().unwrap().starts_with("VGGT: clip.mp4 (4 of 30 frames"), "{state}");
    // The exact frame is on screen (not a scrub preview), and every frame has a preview for scrubbing.
    assert_eq!(state["shown"]["frame"], 20, "{state}");
    assert_eq!(state["shown"]["preview"], false);
    assert_eq!((state["shown"]["width"].as_u64(), state["shown"]["height"].as_u64()), (Some(224), Some(168)));
    assert_eq!(state["scrub_previews"], 30, "{state}");
    // The frames read on the way to frame 20 are kept, so stepping back finds them ready.
    let back: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("stepped-back.json")).unwrap()).unwrap();
    assert_eq!((back["shown"]["frame"].as_u64(), back["shown"]["preview"].as_bool()), (Some(19), Some(false)), "{back}");
    let decoded: Vec<u64> = back["decoded_frames"].as_array().unwrap().iter().filter_map(|v| v.as_u64()).collect();
    assert!((8..=19).all(|i| decoded.contains(&i)), "decoded after stepping back: {decoded:?}");
    // A jump back past them restarts the decoder at the keyframe (frame 0 in this clip) and keeps
    // the frames before the one asked for, so the next steps back are ready too.
    let jumped: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("jumped-back.json")).unwrap()).unwrap();
    assert_eq!((jumped["shown"]["frame"].as_u64(), jumped["shown"]["preview"].as_bool()), (Some(3), Some(false)), "{jumped}");
    let decoded: Vec<u64> = jumped["decoded_frames"].as_array().unwrap().iter().filter_map(|v| v.as_u64()).collect();
    assert!((0..=19).all(|i| decoded.contains(&i)), "decoded after jumping back: {decoded:?}");
    // The video panel shows a decoded frame (the test pattern has many colours).
    let img = load_rgb(&dir.join("video.png"));
    let colours: std::collections::HashSet<[u8; 3]> = (40..250).flat_map(|y| (10..290).map(move |x| (x, y))).map(|(x, y)| img.get_pixel(x, y).0).collect();
    assert!(colours.len() > 200, "video panel has {} colours", colours.len());
}

/// Is point p inside the convex quad (projected corners, either winding)?
fn in_quad(p: [f64; 2], q: &[[f64; 2]]) -> bool {
    let signs: Vec<f64> = (0..4).map(|i| {
        let (a, b) = (q[i], q[(i + 1) % 4]);
        (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    }).collect();
    signs.iter().all(|s| *s > 0.0) || signs.iter().all(|s| *s < 0.0)
}

#[test]
fn clicking_a_camera_jumps_to_its_frame() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("click");
    let script = r#"{"steps": [{"open": "demo"}, {"wait_idle": 120}, {"set": {"control": "point_budget", "value": 50000}}, {"wait_idle": 60},
        {"wait_frames": 10}, {"dump_state": "before.json"}, {"wait_for_file": "clicked"}, {"wait_frames": 10}, {"dump_state": "after.json"}, {"quit": true}]}"#;
    let target = std::cell::Cell::new(None);
    let out = run_script_with(&dir, script, |display| {
        let before = dir.join("before.json");
        for _ in 0..600 {
            if before.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&before).unwrap()).unwrap();
        let vp: Vec<f64> = state["viewport"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        // Click the middle of a frustum's image plane well inside the viewport, away from frame 0.
        let quads: Vec<(u64, Vec<[f64; 2]>)> = state["frustums"].as_array().unwrap().iter().filter_map(|f| {
            let c: Option<Vec<[f64; 2]>> = f["corners"].as_array().unwrap().iter().map(|p| p.as_array().map(|a| [a[0].as_f64().unwrap(), a[1].as_f64().unwrap()])).collect();
            c.map(|c| (f["frame"].as_u64().unwrap(), c))
        }).collect();
        let (_, quad) = quads.iter().filter(|(f, _)| *f >= 10).find(|(_, q)| {
            let m = [q.iter().map(|p| p[0]).sum::<f64>() / 4.0, q.iter().map(|p| p[1]).sum::<f64>() / 4.0];
            m[0] > vp[0] + 80.0 && m[0] < vp[0] + vp[2] - 20.0 && m[1] > vp[1] + 60.0 && m[1] < vp[1] + vp[3] - 20.0
        }).expect("a frustum inside the viewport");
        let m = [quad.iter().map(|p| p[0]).sum::<f64>() / 4.0, quad.iter().map(|p| p[1]).sum::<f64>() / 4.0];
        let hit: Vec<u64> = quads.iter().filter(|(_, q)| in_quad(m, q)).map(|(f, _)| *f).collect();
        target.set(Some((m, hit)));
        let status = Command::new("xdotool")
            .args(["mousemove", &format!("{}", m[0].round()), &format!("{}", m[1].round()), "sleep", "0.3", "click", "1"])
            .env("DISPLAY", display)
            .status()
            .expect("xdotool is needed for the click test (apt-get install xdotool)");
        assert!(status.success());
        std::thread::sleep(std::time::Duration::from_millis(500));
        std::fs::write(dir.join("clicked"), b"").unwrap();
    });
    assert!(out.status.success(), "viewer failed: {}", String::from_utf8_lossy(&out.stderr));
    let (point, hit) = target.take().unwrap();
    let after: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("after.json")).unwrap()).unwrap();
    let frame = after["frame"].as_u64().unwrap();
    assert!(frame != 0 && hit.contains(&frame), "clicked at {point:?} over frustums {hit:?}, but the player is at frame {frame}");
}

#[test]
fn bad_scripts_fail_before_a_window_opens() {
    let dir = tmp_dir("badscript");
    let path = dir.join("s.json");
    std::fs::write(&path, r#"{"steps": [{"open": "demo"}, {"teleport": 3}]}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spatial-viewer")).arg("--script").arg(&path).env_remove("DISPLAY").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s.json") && err.contains("step 2") && err.contains("teleport"), "{err}");
}

mod common;

/// Pixels right of `x0` within `tol` of colour `c`.
fn count_near(img: &image::RgbImage, x0: u32, c: [u8; 3], tol: i32) -> usize {
    img.enumerate_pixels().filter(|(x, _, p)| *x >= x0 && near(p, c, tol)).count()
}

#[test]
fn chat_answers_like_upstream_streams_and_cancels() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("chat");
    let weights = common::mllm_weights(&dir);
    let frames = common::mllm_frames(&dir);
    let script = serde_json::json!({"steps": [
        {"open": frames}, {"wait_idle": 60},
        {"ask": {"question": "how far is the sofa?", "wait": false}},
        {"load_weights": {"mllm": weights}},
        {"set": {"control": "question_format", "value": "numeric"}}, {"set": {"control": "max_new_tokens", "value": 12}},
        {"ask": common::QUESTION}, {"screenshot": "chat.png"},
        {"set": {"control": "question_format", "value": "free"}}, {"set": {"control": "max_new_tokens", "value": 100000}},
        {"ask": {"question": "Describe the room.", "wait": false}}, {"wait_frames": 3}, {"cancel_answer": true},
        {"wait_idle": 30}, {"dump_state": "state.json"}, {"quit": true}]});
    let out = run_script(&dir, &script.to_string());
    assert!(out.status.success(), "viewer failed: {}", String::from_utf8_lossy(&out.stderr));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let chat = state["chat"].as_array().unwrap();
    assert_eq!(chat.len(), 6, "{state}");
    // Before a model is loaded the question gets a clear message, not an answer.
    assert_eq!(chat[1]["state"], "failed");
    assert!(chat[1]["text"].as_str().unwrap().contains("No model is loaded"), "{}", chat[1]);
    assert!(state["model"].as_str().unwrap().starts_with("Spatial-MLLM"), "{state}");
    // The answer is upstream's greedy answer for the same frames and prompt.
    let tok = spatial_models::spatial_mllm::QwenTokenizer::from_file(&weights.join("tokenizer.json")).unwrap();
    let ids: Vec<u32> = common::expected_ids("generated_ids").iter().map(|&i| i as u32).collect();
    assert_eq!(chat[3]["text"].as_str().unwrap(), tok.decode(&ids, true).unwrap());
    assert_eq!(chat[3]["state"], "done");
    assert_eq!(chat[2]["frames"], serde_json::json!([0, 1, 2, 3]));
    // The long answer streamed some tokens and then stopped on cancel.
    assert_eq!(chat[5]["state"], "cancelled", "{}", chat[5]);
    assert!(!chat[5]["text"].as_str().unwrap().is_empty(), "nothing streamed before the cancel");

    // The panel shows the conversation: "You"/"Model" labels in their colours on the right.
    let img = load_rgb(&dir.join("chat.png"));
    let right = img.width() * 2 / 3;
    assert!(count_near(&img, right, [150, 200, 255], 40) > 30, "no 'You' labels in the chat panel");
    assert!(count_near(&img, right, [255, 210, 150], 40) > 30, "no 'Model' labels in the chat panel");
    assert!(count_near(&img, right, [255, 120, 110], 40) > 20, "the no-model message is not shown in red");
}

#[test]
fn chat_asks_about_the_space_aware_picks_of_the_demo() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("chat-demo");
    let weights = common::mllm_weights(&dir);
    let script = serde_json::json!({"steps": [
        {"open": "demo"}, {"load_weights": {"mllm": weights}}, {"wait_idle": 120},
        {"set": {"control": "max_new_tokens", "value": 4}}, {"ask": "Where is the sofa?"},
        // A region selected: the question's note says how many of its frames see it.
        {"select_region": {"frame": 40, "rect": [20, 20, 40, 40]}},
        {"set": {"control": "spatial", "value": false}}, {"ask": "Where is the sofa?"},
        {"dump_state": "state.json"}, {"quit": true}]});
    let out = run_script(&dir, &script.to_string());
    assert!(out.status.success(), "viewer failed: {}", String::from_utf8_lossy(&out.stderr));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let chat = state["chat"].as_array().unwrap();
    assert_eq!(chat.len(), 4, "{state}");
    // The question looked at exactly the frames the sampler highlighted.
    assert_eq!(chat[0]["frames"], state["sampled"], "{state}");
    assert!(chat[0]["note"].as_str().unwrap().starts_with("space-aware"), "{}", chat[0]);
    assert_eq!(chat[1]["state"], "done");
    assert!(chat[1]["note"].as_str().unwrap().contains("16 frames"), "{}", chat[1]);
    // With the spatial branch off the same frames go to plain Qwen2.5-VL.
    assert!(
        chat[2]["note"].as_str().unwrap().contains("base model"),
        "{}",
        chat[2]
    );
    assert!(
        !chat[0]["note"].as_str().unwrap().contains("region"),
        "{}",
        chat[0]
    );
    let seeing: Vec<&serde_json::Value> = state["region"]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    let used = chat[2]["frames"].as_array().unwrap();
    let visible = used.iter().filter(|f| seeing.contains(f)).count();
    assert!(
        visible < used.len(),
        "pick a region some used frames miss: {state}"
    );
    let said = format!("is visible in {visible} of the {} frames used", used.len());
    assert!(
        chat[2]["note"].as_str().unwrap().contains(&said),
        "expected `{said}` in {}",
        chat[2]
    );
    assert_eq!(chat[3]["state"], "done");
}

/// A clip long enough that the tiny VGGT at 518 px takes many seconds on it (64 frames: global
/// attention over 66k tokens).
fn slow_clip(dir: &Path) -> PathBuf {
    let clip = dir.join("slow.mp4");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=518x392:rate=10", "-frames:v", "64", "-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&clip)
        .status()
        .expect("ffmpeg");
    assert!(status.success());
    clip
}

/// An H.264 test-pattern clip (`testsrc2`) written to `dir/name`, with extra encoder options.
fn test_pattern_clip(dir: &Path, name: &str, size: &str, rate: u32, frames: usize, options: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let source = format!("testsrc2=size={size}:rate={rate}");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", &source, "-frames:v", &frames.to_string(), "-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .args(options)
        .arg(&path)
        .status()
        .expect("ffmpeg is needed (apt-get install ffmpeg)");
    assert!(status.success(), "ffmpeg could not write {}", path.display());
    path
}

fn vggt_tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/vggt-tiny")
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// Quitting while VGGT reconstructs stops the model thread first and exits cleanly, every time
/// (it used to end in SIGSEGV inside OpenBLAS); Ctrl-C does the same with the shell's 130.
#[test]
fn quitting_mid_reconstruction_exits_cleanly() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("quit");
    let clip = slow_clip(&dir);
    let script = serde_json::json!({"steps": [
        {"load_weights": {"vggt": vggt_tiny()}}, {"set": {"control": "vggt_frames", "value": 64}}, {"set": {"control": "vggt_width", "value": 518}},
        {"open": clip}, {"wait_reconstructing": true}, {"wait_frames": 3}, {"dump_state": "running.json"}, {"quit": true}]});
    for run in 0..3 {
        let start = std::time::Instant::now();
        let out = run_script(&dir, &script.to_string());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "run {run}: {err}");
        assert!(!err.contains("panicked"), "run {run}: {err}");
        let state = read_json(&dir.join("running.json"));
        assert!(state["vggt_progress"].is_object(), "run {run}: VGGT was not running when the app quit: {state}");
        assert!(start.elapsed().as_secs() < 60, "run {run} took {:?}", start.elapsed());
    }
    // Ctrl-C in the terminal, mid-run.
    let script = serde_json::json!({"steps": [
        {"load_weights": {"vggt": vggt_tiny()}}, {"set": {"control": "vggt_frames", "value": 64}}, {"set": {"control": "vggt_width", "value": 518}},
        {"open": clip}, {"wait_reconstructing": true}, {"wait_frames": 3}, {"dump_state": "running.json"}, {"wait_for_file": "never"}]});
    let _ = std::fs::remove_file(dir.join("running.json"));
    let out = run_viewer(&dir, &script.to_string(), &[], |_, pid| {
        for _ in 0..600 {
            if dir.join("running.json").exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "Ctrl-C: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Resizing the window up and down while work runs never ends the app (a viewport reaching past a
/// window that just shrank used to be a fatal validation error).
#[test]
fn resizing_the_window_up_and_down_keeps_the_app_running() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("resize");
    let script = r#"{"steps": [{"open": "demo"}, {"wait_idle": 120}, {"wait_for_file": "resized"}, {"wait_frames": 20},
        {"screenshot": "after.png"}, {"dump_state": "state.json"}, {"quit": true}]}"#;
    let out = run_script_with(&dir, script, |display| {
        let xdo = |args: &[&str]| Command::new("xdotool").args(args).env("DISPLAY", display).output().expect("xdotool is needed (apt-get install xdotool)");
        let mut window = String::new();
        for _ in 0..300 {
            let found = xdo(&["search", "--name", "Spatial viewer"]);
            window = String::from_utf8_lossy(&found.stdout).lines().next().unwrap_or("").to_string();
            if !window.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(!window.is_empty(), "no viewer window");
        std::thread::sleep(std::time::Duration::from_secs(3));
        for (w, h) in [(1600, 1000), (1280, 800), (1024, 640), (1600, 1000), (800, 500), (1280, 800)] {
            xdo(&["windowsize", &window, &w.to_string(), &h.to_string()]);
            std::thread::sleep(std::time::Duration::from_millis(700));
        }
        std::fs::write(dir.join("resized"), b"").unwrap();
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the app did not survive resizing: {err}");
    assert!(!err.contains("Validation"), "{err}");
    let state = read_json(&dir.join("state.json"));
    let vp: Vec<f64> = state["viewport"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(vp[0] + vp[2] <= 1280.0 + 0.5 && vp[1] + vp[3] <= 800.0 + 0.5, "viewport {vp:?} outside the window");
    assert_eq!((load_rgb(&dir.join("after.png")).width(), load_rgb(&dir.join("after.png")).height()), (1280, 800));
}

/// A damaged cache entry is not shown as geometry: it is dropped, the frames are reconstructed
/// again, and the status bar says why.
#[test]
fn a_damaged_cache_entry_is_recomputed() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("cache");
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..3u32 {
        let img = image::RgbImage::from_fn(168, 126, |x, y| image::Rgb([((x * 3 + i * 20) % 256) as u8, ((y * 2) % 256) as u8, ((x + y + i * 40) % 256) as u8]));
        img.save(frames.join(format!("{i:03}.png"))).unwrap();
    }
    let script = serde_json::json!({"steps": [{"load_weights": {"vggt": vggt_tiny()}}, {"open": "frames"}, {"wait_idle": 120}, {"dump_state": "state.json"}, {"quit": true}]}).to_string();
    let out = run_script(&dir, &script);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entries: Vec<PathBuf> = std::fs::read_dir(dir.join("cache/spatial-viewer/reconstructions")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let first = read_json(&dir.join("state.json"));
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let mid = bytes.len() / 2;
    for (i, b) in bytes[mid..mid + 4096].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(17);
    }
    std::fs::write(&entries[0], bytes).unwrap();
    let out = run_script(&dir, &script);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let state = read_json(&dir.join("state.json"));
    let label = state["geometry"]["label"].as_str().unwrap();
    assert!(label.starts_with("VGGT: frames (3 of 3 frames") && !label.contains("cached"), "{state}");
    assert!(err.contains("damaged") && err.contains("checksum"), "the damage was not reported: {err}");
    assert_eq!(state["geometry"]["points"], first["geometry"]["points"]);
    // The recomputed entry is good again: the next open reads it.
    let out = run_script(&dir, &script);
    assert!(out.status.success());
    assert!(read_json(&dir.join("state.json"))["geometry"]["label"].as_str().unwrap().ends_with("cached)"));
}

/// Geometry, picks and questions belong to the source they came from: opening a video after the
/// demo clears the demo's geometry, and a question about "the sampled frames" uses the video's.
#[test]
fn a_question_is_about_the_open_video_not_the_previous_scene() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("wrong-video");
    let weights = common::mllm_weights(&dir);
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=112x84:rate=30", "-frames:v", "600", "-c:v", "libx264", "-pix_fmt", "yuv420p", "clip.mp4"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let script = serde_json::json!({"steps": [
        {"open": "demo"}, {"load_weights": {"mllm": weights}}, {"wait_idle": 120}, {"dump_state": "demo.json"},
        {"open": "clip.mp4"}, {"wait_idle": 120}, {"set": {"control": "question_frames", "value": "sampled"}},
        {"set": {"control": "max_new_tokens", "value": 2}}, {"ask": "How many cars?"}, {"dump_state": "state.json"}, {"quit": true}]});
    let out = run_script(&dir, &script.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let demo = read_json(&dir.join("demo.json"));
    assert!(demo["sampled_label"].as_str().unwrap().starts_with("space-aware"));
    let state = read_json(&dir.join("state.json"));
    assert!(state["geometry"].is_null(), "the demo's geometry is still shown for the video: {state}");
    assert_eq!(state["frame_count"], 600);
    let asked: Vec<u64> = state["chat"][0]["frames"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    // 16 frames over the whole 20 s clip (qwen_vl_utils' choice), not the demo's picks.
    assert_eq!(asked.len(), 16);
    assert_eq!((asked[0], asked[15]), (0, 599), "{asked:?}");
    assert_ne!(state["chat"][0]["frames"], demo["sampled"]);
}

/// Script steps say what really happened: a screenshot that cannot be written fails at once
/// with the cause; a seek to a frame that cannot be decoded fails, and the panel says so while it
/// keeps the last good frame.
#[test]
fn steps_report_unwritable_screenshots_and_undecodable_frames() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("steps");
    let start = std::time::Instant::now();
    let out = run_script(&dir, r#"{"steps": [{"open": "demo"}, {"wait_idle": 60}, {"screenshot": "/proc/shot.png"}, {"quit": true}]}"#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/proc/shot.png") && (err.contains("No such file") || err.contains("denied") || err.contains("Read-only")), "{err}");
    assert!(start.elapsed().as_secs() < 25, "the failure took {:?}", start.elapsed());

    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..4u8 {
        image::RgbImage::from_pixel(64, 48, image::Rgb([60 * i, 100, 100])).save(frames.join(format!("{i}.png"))).unwrap();
    }
    // Frame 2 is cut short after its header (its size still reads).
    let bytes = std::fs::read(frames.join("2.png")).unwrap();
    std::fs::write(frames.join("2.png"), &bytes[..bytes.len() / 2]).unwrap();
    let out = run_script(&dir, r#"{"steps": [{"open": "frames"}, {"seek": 1}, {"wait_idle": 30}, {"seek": 2}, {"quit": true}]}"#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "seeking to a damaged frame reported success: {err}");
    assert!(err.contains("frame 2 cannot be shown") && err.contains("2.png"), "{err}");
    let out = run_script(&dir, r#"{"steps": [{"open": "frames"}, {"seek": 1}, {"wait_idle": 30}, {"set": {"control": "playing", "value": false}}, {"seek": 3}, {"wait_idle": 30}, {"dump_state": "ok.json"}, {"quit": true}]}"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_json(&dir.join("ok.json"))["shown"]["frame"], 3);
}

/// `--device` everywhere: CUDA asked of a build without it is reported in the status bar and
/// `dump_state`, and everything runs on the CPU; `--device cpu` shows the device and dtype.
#[test]
fn the_device_each_model_thread_runs_on_is_shown() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("device");
    let script = serde_json::json!({"steps": [{"load_weights": {"vggt": vggt_tiny()}}, {"wait_idle": 60}, {"dump_state": "state.json"}, {"quit": true}]}).to_string();
    let out = run_viewer(&dir, &script, &["--device", "cuda"], |_, _| {});
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state = read_json(&dir.join("state.json"));
    if !state["compute"]["vggt"].as_str().unwrap().starts_with("cuda") {
        assert_eq!(state["compute"]["vggt"], "cpu f32", "{state}");
        let note = state["compute"]["vggt_note"].as_str().unwrap_or("");
        assert!(note.contains("CUDA") && note.contains("--features cuda"), "{state}");
        assert!(state["vggt"].as_str().unwrap().ends_with("on cpu f32"), "{state}");
    }
    let out = run_viewer(&dir, &script, &["--device", "cpu", "--dtype", "bf16"], |_, _| {});
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state = read_json(&dir.join("state.json"));
    // Half-precision weights on the CPU compute in f32, and the label says so.
    assert_eq!(state["compute"]["vggt"], "cpu bf16 weights, f32", "{state}");
    assert!(state["compute"]["vggt_note"].is_null());
    assert_eq!(state["compute"]["chat"], "cpu bf16 weights, f32");
    // bf16 products say so, and whether this CPU runs them at bf16 speed; the reconstruction
    // still loads and runs.
    let out = run_viewer(&dir, &script, &["--device", "cpu", "--dtype", "bf16-products"], |_, _| {});
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state = read_json(&dir.join("state.json"));
    let label = state["compute"]["vggt"].as_str().unwrap();
    assert!(label.starts_with("cpu bf16 weights, bf16 products"), "{state}");
    assert_eq!(label.contains("no AVX512-BF16"), !std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().contains(" avx512_bf16"), "{label}");
    assert!(state["vggt"].as_str().unwrap().ends_with(label), "{state}");
}

/// The viewer's X window, once it is mapped.
fn viewer_window(display: &str) -> String {
    for _ in 0..300 {
        let found = Command::new("xdotool").args(["search", "--name", "Spatial viewer"]).env("DISPLAY", display).output().expect("xdotool");
        if let Some(w) = String::from_utf8_lossy(&found.stdout).lines().next() {
            return w.to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("no viewer window on {display}");
}

fn xdotool(display: &str, args: &[&str]) {
    let out = Command::new("xdotool").args(args).env("DISPLAY", display).output().expect("xdotool is needed (apt-get install xdotool)");
    assert!(out.status.success(), "xdotool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn wait_for(path: &Path) {
    for _ in 0..600 {
        if path.exists() {
            std::thread::sleep(std::time::Duration::from_millis(300));
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{} did not appear", path.display());
}

/// Real input, as a user gives it: Ctrl+O and a typed path (Tab completes it) open a folder; the
/// wheel over the side panel scrolls the panel and leaves the 3D view alone; the wheel over the
/// 3D view zooms; dragging with absolute pointer positions orbits; a click near a camera's apex
/// (not on its image) jumps to that frame.
#[test]
fn real_input_opens_by_path_zooms_only_the_view_orbits_and_picks_by_lines() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("input");
    let frames = dir.join("my-frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..4u8 {
        image::RgbImage::from_pixel(80, 60, image::Rgb([50 * i, 120, 200])).save(frames.join(format!("{i}.png"))).unwrap();
    }
    let script = r#"{"steps": [{"open": "demo"}, {"wait_idle": 120}, {"wait_frames": 10}, {"dump_state": "s0.json"}, {"wait_for_file": "scrolled"}, {"wait_frames": 5},
        {"dump_state": "s1.json"}, {"wait_for_file": "zoomed"}, {"wait_frames": 5}, {"dump_state": "s2.json"}, {"wait_for_file": "orbited"}, {"wait_frames": 5},
        {"dump_state": "s3.json"}, {"wait_for_file": "clicked"}, {"wait_frames": 10}, {"dump_state": "s4.json"}, {"wait_for_file": "typed"}, {"wait_idle": 60},
        {"wait_frames": 5}, {"dump_state": "s5.json"}, {"quit": true}]}"#;
    let out = run_script_with(&dir, script, |display| {
        let window = viewer_window(display);
        wait_for(&dir.join("s0.json"));
        let s0 = read_json(&dir.join("s0.json"));
        let vp: Vec<f64> = s0["viewport"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        // The wheel over the left panel.
        xdotool(display, &["mousemove", "--window", &window, "150", "600", "click", "5", "click", "5", "click", "5"]);
        std::fs::write(dir.join("scrolled"), b"").unwrap();
        wait_for(&dir.join("s1.json"));
        // The wheel over the 3D view.
        let (cx, cy) = ((vp[0] + vp[2] / 2.0) as i32, (vp[1] + vp[3] / 2.0) as i32);
        xdotool(display, &["mousemove", "--window", &window, &cx.to_string(), &cy.to_string(), "click", "4", "click", "4"]);
        std::fs::write(dir.join("zoomed"), b"").unwrap();
        wait_for(&dir.join("s2.json"));
        // A drag made of absolute pointer positions (as VNC and VM tablets send them).
        xdotool(display, &["mousemove", "--window", &window, &cx.to_string(), &(cy + 60).to_string(), "mousedown", "1"]);
        for step in 1..=8 {
            std::thread::sleep(std::time::Duration::from_millis(60));
            xdotool(display, &["mousemove", "--window", &window, &(cx + step * 15).to_string(), &(cy + 60).to_string()]);
        }
        xdotool(display, &["mouseup", "1"]);
        std::fs::write(dir.join("orbited"), b"").unwrap();
        wait_for(&dir.join("s3.json"));
        // A click a few pixels off a camera's apex, away from every image plane.
        let s3 = read_json(&dir.join("s3.json"));
        let quads: Vec<(u64, [f64; 2], Vec<[f64; 2]>)> = s3["frustums"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| {
                let c = f["center"].as_array()?;
                let corners: Option<Vec<[f64; 2]>> = f["corners"].as_array()?.iter().map(|p| p.as_array().map(|a| [a[0].as_f64().unwrap(), a[1].as_f64().unwrap()])).collect();
                Some((f["source_frame"].as_u64()?, [c[0].as_f64()?, c[1].as_f64()?], corners?))
            })
            .collect();
        let inside_view = |p: [f64; 2]| p[0] > vp[0] + 40.0 && p[0] < vp[0] + vp[2] - 40.0 && p[1] > vp[1] + 40.0 && p[1] < vp[1] + vp[3] - 40.0;
        let target = quads.iter().find(|(f, apex, _)| *f > 5 && inside_view(*apex) && quads.iter().all(|(_, _, q)| !in_quad([apex[0] + 2.0, apex[1]], q)) && quads.iter().filter(|(g, a, _)| g != f && (a[0] - apex[0]).hypot(a[1] - apex[1]) < 12.0).count() == 0);
        let (frame, apex, _) = target.expect("an apex clear of image planes and other apexes");
        std::fs::write(dir.join("target"), frame.to_string()).unwrap();
        xdotool(display, &["mousemove", "--window", &window, &((apex[0] + 2.0).round() as i32).to_string(), &(apex[1].round() as i32).to_string(), "sleep", "0.3", "click", "1"]);
        std::thread::sleep(std::time::Duration::from_millis(400));
        std::fs::write(dir.join("clicked"), b"").unwrap();
        wait_for(&dir.join("s4.json"));
        // Ctrl+O, a partial path completed with Tab, Return.
        xdotool(display, &["windowfocus", "--sync", &window]);
        xdotool(display, &["mousemove", "--window", &window, "640", "300", "key", "ctrl+o"]);
        std::thread::sleep(std::time::Duration::from_millis(800));
        let partial = format!("{}/my-fr", dir.display());
        xdotool(display, &["type", "--delay", "20", &partial]);
        xdotool(display, &["key", "Tab"]);
        std::thread::sleep(std::time::Duration::from_millis(500));
        xdotool(display, &["key", "Return"]);
        std::thread::sleep(std::time::Duration::from_millis(500));
        std::fs::write(dir.join("typed"), b"").unwrap();
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let view = |n: u32| read_json(&dir.join(format!("s{n}.json")))["view"].clone();
    let distance = |n: u32| view(n)["distance"].as_f64().unwrap();
    assert_eq!(distance(1), distance(0), "the wheel over the side panel zoomed the 3D view");
    assert!(distance(2) < distance(1) * 0.95, "the wheel over the 3D view did not zoom: {} -> {}", distance(1), distance(2));
    assert!((view(3)["yaw"].as_f64().unwrap() - view(2)["yaw"].as_f64().unwrap()).abs() > 0.1, "absolute drags did not orbit");
    let target: u64 = std::fs::read_to_string(dir.join("target")).unwrap().parse().unwrap();
    assert_eq!(read_json(&dir.join("s4.json"))["frame"], target, "clicking near a camera's apex did not jump to its frame");
    let s5 = read_json(&dir.join("s5.json"));
    assert_eq!(s5["source"]["name"], "my-frames", "typing the path did not open the folder: {s5}");
    assert_eq!(s5["frame_count"], 4);
}

/// A model that cannot load at start-up says why in the chat panel (red), and questions say it too.
#[test]
fn a_startup_load_error_reaches_the_chat_panel() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("startup-error");
    std::fs::create_dir_all(dir.join("broken-model")).unwrap();
    let script = r#"{"steps": [{"wait_idle": 60}, {"ask": {"question": "Where is the sofa?", "wait": false}}, {"wait_frames": 5}, {"screenshot": "chat.png"}, {"dump_state": "state.json"}, {"quit": true}]}"#;
    let out = run_viewer(&dir, script, &["--mllm", "broken-model"], |_, _| {});
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state = read_json(&dir.join("state.json"));
    let err = state["model_load_error"].as_str().unwrap_or("");
    assert!(err.contains("broken-model") && err.contains("no model.safetensors"), "{state}");
    let answer = state["chat"][1]["text"].as_str().unwrap();
    assert!(answer.contains("the last load failed") && answer.contains("broken-model"), "{answer}");
    let img = load_rgb(&dir.join("chat.png"));
    assert!(count_near(&img, img.width() * 3 / 4, [255, 120, 110], 40) > 200, "the load error is not shown in red in the chat panel");
}

/// While a video plays the panel always shows a frame (the last good one until the next is
/// decoded), on screen and not only in the state: an egui-managed texture re-created for each new
/// frame drew nothing in the frame it changed, so a playing panel was blank in every screenshot.
#[test]
fn a_playing_video_never_blanks_the_panel() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("playing");
    test_pattern_clip(&dir, "clip.mp4", "640x360", 30, 300, &["-g", "60"]);
    let mut steps = vec![serde_json::json!({"open": "clip.mp4"}), serde_json::json!({"wait_idle": 60}), serde_json::json!({"set": {"control": "speed", "value": 4.0}}), serde_json::json!({"set": {"control": "playing", "value": true}})];
    for i in 0..12 {
        steps.push(serde_json::json!({"wait_frames": 2}));
        steps.push(serde_json::json!({"dump_state": format!("p{i}.json")}));
        if i % 3 == 2 {
            steps.push(serde_json::json!({"screenshot": format!("p{i}.png")}));
        }
    }
    steps.push(serde_json::json!({"quit": true}));
    let out = run_script(&dir, &serde_json::json!({"steps": steps}).to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut frames = Vec::new();
    for i in 0..12 {
        let s = read_json(&dir.join(format!("p{i}.json")));
        assert!(s["shown"].is_object(), "nothing shown while playing at dump {i}: {s}");
        frames.push(s["frame"].as_u64().unwrap());
        if i % 3 == 2 {
            // The test pattern has many colours; an empty panel has one.
            let [x, y, w, h] = json_vec(&s["video_panel"]["rect"])[..] else { panic!("no video panel at dump {i}: {s}") };
            let img = load_rgb(&dir.join(format!("p{i}.png")));
            let colours: std::collections::HashSet<[u8; 3]> = (y as u32 + 2..(y + h) as u32 - 2).flat_map(|py| (x as u32 + 2..(x + w) as u32 - 2).map(move |px| (px, py))).map(|(px, py)| img.get_pixel(px, py).0).collect();
            assert!(colours.len() > 200, "the video panel is blank while playing (screenshot {i}: {} colours)", colours.len());
        }
    }
    // Playing moves forward (and loops at the end: a fast machine can get there within the dumps).
    let forward = frames.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(forward * 2 >= frames.len(), "the video did not play: {frames:?}");
}

/// Playing into the broken end of a truncated video stops at its first undecodable frame, with
/// the last good frame on screen (exact) and the error named, instead of failing at every frame.
#[test]
fn playback_stops_at_the_first_broken_frame_of_a_truncated_video() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("truncated");
    test_pattern_clip(&dir, "whole.mp4", "320x240", 25, 200, &["-g", "250", "-movflags", "+faststart"]);
    // The index comes first (faststart), so cutting the file in half leaves a video whose later
    // frames are missing.
    let whole = std::fs::read(dir.join("whole.mp4")).unwrap();
    std::fs::write(dir.join("clip.mp4"), &whole[..whole.len() / 2]).unwrap();
    let probe = Command::new("ffprobe").args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", "clip.mp4"]).current_dir(&dir).output().unwrap();
    let decodable: u64 = String::from_utf8_lossy(&probe.stdout).trim().parse().unwrap_or_else(|e| panic!("ffprobe: {e}: {}", String::from_utf8_lossy(&probe.stdout)));
    assert!(decodable > 20 && decodable < 190, "{decodable} decodable frames");
    let script = serde_json::json!({"steps": [{"open": "clip.mp4"}, {"wait_idle": 60}, {"seek": decodable - 20}, {"wait_idle": 30},
        {"set": {"control": "speed", "value": 2.0}}, {"set": {"control": "playing", "value": true}}, {"wait_frames": 150}, {"dump_state": "state.json"}, {"quit": true}]});
    let out = run_script(&dir, &script.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state = read_json(&dir.join("state.json"));
    assert_eq!(state["frame_count"], 200, "{state}");
    assert_eq!(state["playing"], false, "{state}");
    assert_eq!(state["frame"], decodable, "{state}");
    assert_eq!(state["frame_error"]["frame"], decodable, "{state}");
    assert!(state["frame_error"]["error"].as_str().unwrap().contains("clip.mp4"), "{state}");
    assert_eq!((state["shown"]["frame"].as_u64(), state["shown"]["preview"].as_bool()), (Some(decodable - 1), Some(false)), "{state}");
    let errors = String::from_utf8_lossy(&out.stderr).matches("error: ").count();
    // A few superseded requests fail too; playing on would add one for every frame after the break.
    assert!(errors <= 10, "{errors} errors reported while playing into the break");
}

/// At normal speed the exact frames are on screen while a video plays, not their low-resolution
/// scrub previews: the frames due next are decoded before they are due. A script's `wait_idle`
/// does not wait for a playing video's decoding, which never pauses.
#[test]
fn a_playing_video_shows_its_exact_frames() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("playing-exact");
    test_pattern_clip(&dir, "clip.mp4", "640x360", 25, 500, &["-g", "250"]);
    let mut steps = vec![serde_json::json!({"open": "clip.mp4"}), serde_json::json!({"wait_idle": 60}), serde_json::json!({"set": {"control": "playing", "value": true}}), serde_json::json!({"wait_frames": 20}), serde_json::json!({"wait_idle": 10})];
    for i in 0..16 {
        steps.push(serde_json::json!({"wait_frames": 3}));
        steps.push(serde_json::json!({"dump_state": format!("p{i}.json")}));
    }
    steps.push(serde_json::json!({"quit": true}));
    let out = run_script(&dir, &serde_json::json!({"steps": steps}).to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let states: Vec<serde_json::Value> = (0..16).map(|i| read_json(&dir.join(format!("p{i}.json")))).collect();
    let exact = states.iter().filter(|s| s["shown"]["preview"] == false && s["shown"]["frame"] == s["frame"]).count();
    let frames: Vec<_> = states.iter().map(|s| (s["frame"].as_u64().unwrap(), s["shown"]["preview"].as_bool().unwrap())).collect();
    assert!(exact * 4 >= 3 * states.len(), "exact frames at {exact} of {} dumps while playing (frame, preview): {frames:?}", states.len());
    assert!(frames.last().unwrap().0 > frames[0].0, "the video did not play: {frames:?}");
}

/// Reconstruction on demand and a sampler with a choice: a video is reconstructed at more
/// candidates than K (CPU-sized: smaller frames), the picks are fewer than the candidates and the
/// panel says what was reconstructed; "reconstruct" reruns with new settings, also after a cancel.
#[test]
fn reconstruct_again_and_sample_among_more_candidates_than_k() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("candidates");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10", "-frames:v", "40", "-c:v", "libx264", "-pix_fmt", "yuv420p", "clip.mp4"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let clip = slow_clip(&dir);
    let script = serde_json::json!({"steps": [
        {"load_weights": {"vggt": vggt_tiny()}}, {"set": {"control": "sampler", "value": "space-aware"}},
        {"open": "clip.mp4"}, {"wait_idle": 300}, {"wait_frames": 5}, {"dump_state": "first.json"},
        {"set": {"control": "vggt_frames", "value": 6}}, {"reconstruct": true}, {"wait_idle": 300}, {"dump_state": "again.json"},
        // A long run, cancelled; then the action is still there.
        {"open": clip}, {"set": {"control": "vggt_frames", "value": 64}}, {"set": {"control": "vggt_width", "value": 518}}, {"reconstruct": {"wait": false}},
        {"wait_reconstructing": true}, {"cancel_reconstruction": true}, {"wait_idle": 60}, {"dump_state": "cancelled.json"},
        {"set": {"control": "vggt_frames", "value": 4}}, {"set": {"control": "vggt_width", "value": 294}}, {"reconstruct": true}, {"wait_idle": 300}, {"dump_state": "after.json"},
        {"quit": true}]});
    let out = run_script(&dir, &script.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = read_json(&dir.join("first.json"));
    // 32 candidates by default on the CPU, at 294 px wide: 40 frames give 32.
    assert_eq!(first["geometry"]["frames"], 32, "{first}");
    assert_eq!(first["geometry"]["width"], 294);
    let picks = first["sampled"].as_array().unwrap().len();
    assert!(picks > 0 && picks <= 16 && picks < 32, "{picks} picks of 32 candidates");
    assert!(first["sampled_label"].as_str().unwrap().contains("of 32 reconstructed"), "{first}");
    assert!(first["vggt_last_run"].as_str().unwrap().starts_with("32 frames at 294x224"), "{first}");
    let again = read_json(&dir.join("again.json"));
    assert_eq!(again["geometry"]["frames"], 6, "{again}");
    // K stays below the candidates.
    assert!(again["sampled"].as_array().unwrap().len() <= 5);
    let cancelled = read_json(&dir.join("cancelled.json"));
    assert_eq!(cancelled["vggt_last_error"], "cancelled", "{cancelled}");
    assert!(cancelled["geometry"].is_null());
    let after = read_json(&dir.join("after.json"));
    assert_eq!(after["geometry"]["frames"], 4, "{after}");
    assert!(after["geometry"]["label"].as_str().unwrap().starts_with("VGGT: slow.mp4 (4 of 64 frames"), "{after}");
}

/// Looking through a camera hides the frustums only meanwhile, follows the video when the frame
/// changes, and Reset (R) brings the orbit view and the frustums back; frustums can be shown all,
/// only the picks, or every N-th.
#[test]
fn looking_through_cameras_follows_the_video_and_cameras_can_be_thinned() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("look");
    let script = r#"{"steps": [{"open": "demo"}, {"wait_idle": 120}, {"look_through": 10}, {"wait_frames": 5}, {"dump_state": "l10.json"},
        {"seek": 40}, {"wait_frames": 5}, {"dump_state": "l40.json"}, {"reset_view": true}, {"wait_frames": 5}, {"dump_state": "reset.json"},
        {"set": {"control": "cameras", "value": "picks"}}, {"wait_frames": 3}, {"dump_state": "picks.json"},
        {"set": {"control": "cameras", "value": 10}}, {"wait_frames": 3}, {"dump_state": "every10.json"}, {"quit": true}]}"#;
    let out = run_script(&dir, script);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = |s: &serde_json::Value| s["frustums"].as_array().unwrap().iter().filter(|f| f["shown"] == true).count();
    let l10 = read_json(&dir.join("l10.json"));
    let l40 = read_json(&dir.join("l40.json"));
    assert_eq!(l10["look_through"], 10);
    assert_eq!(shown(&l10), 0, "frustums drawn while looking through a camera");
    assert_eq!(l40["look_through"], 40, "the view did not follow the video");
    assert_ne!(l10["view"]["position"], l40["view"]["position"]);
    let reset = read_json(&dir.join("reset.json"));
    assert!(reset["look_through"].is_null());
    assert_eq!(shown(&reset), 96, "reset did not bring the cameras back");
    let picks = read_json(&dir.join("picks.json"));
    let sampled = picks["sampled"].as_array().unwrap().len();
    assert!(shown(&picks) <= sampled + 1 && shown(&picks) >= sampled, "{} shown for {sampled} picks", shown(&picks));
    let every10 = read_json(&dir.join("every10.json"));
    assert!(shown(&every10) >= 10 && shown(&every10) <= 10 + sampled + 1, "{}", shown(&every10));
}

/// What a state must give back: everything `dump_state` reports about the source's frames, the
/// geometry, the picks, the view, the cameras and the chat (not the status line or the paths).
fn assert_same_session(a: &serde_json::Value, b: &serde_json::Value) {
    for key in [
        "frame",
        "frame_count",
        "sampled",
        "sampled_label",
        "compare",
        "chat",
        "look_through",
        "model",
        "vggt",
        "vggt_last_run",
        "pins",
        "measurements",
        "scale",
        "region",
        "inspect_tool",
    ] {
        assert_eq!(a[key], b[key], "{key} differs:\n{a}\n{b}");
    }
    for key in ["label", "frames", "width", "height", "points", "frame_indices", "source_frames"] {
        assert_eq!(a["geometry"][key], b["geometry"][key], "geometry.{key} differs");
    }
    let close = |x: &serde_json::Value, y: &serde_json::Value, tol: f64, what: &str| {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        assert!((x - y).abs() <= tol, "{what}: {x} vs {y}");
    };
    for key in ["yaw", "pitch", "distance", "fov_y"] {
        close(&a["view"][key], &b["view"][key], 1e-5, key);
    }
    for i in 0..3 {
        close(&a["view"]["focus"][i], &b["view"]["focus"][i], 1e-5, "focus");
    }
    let (fa, fb) = (a["frustums"].as_array().unwrap(), b["frustums"].as_array().unwrap());
    assert_eq!(fa.len(), fb.len());
    for (x, y) in fa.iter().zip(fb) {
        assert_eq!(x["shown"], y["shown"], "frustum {} shown", x["frame"]);
        if x["center"].is_array() {
            close(&x["center"][0], &y["center"][0], 0.5, "frustum centre x");
            close(&x["center"][1], &y["center"][1], 0.5, "frustum centre y");
        }
    }
}

/// Pixels of two screenshots that differ, outside the status bar (its message says what
/// happened last: "saved ...", "reopened ...").
fn differing_pixels(a: &image::RgbImage, b: &image::RgbImage) -> usize {
    assert_eq!(a.dimensions(), b.dimensions());
    let status_bar = a.height() - 28;
    a.enumerate_pixels().filter(|(x, y, p)| *y < status_bar && !near(p, b.get_pixel(*x, *y).0, 2)).count()
}

/// A state saved after a scripted session (VGGT on a folder, space-aware picks, settings, a seek,
/// looking through a camera, a chat answer) reopens from the command line to the same state and
/// the same picture; when its source moved, the app says so, asks where it is, and restores it
/// from the new place.
#[test]
fn a_saved_state_reopens_exactly_and_finds_a_moved_source() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("state");
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..6u32 {
        let img = image::RgbImage::from_fn(168, 126, |x, y| image::Rgb([((x * 3 + i * 20) % 256) as u8, ((y * 2 + i * 7) % 256) as u8, ((x + y + i * 40) % 256) as u8]));
        img.save(frames.join(format!("{i:03}.png"))).unwrap();
    }
    let weights = common::mllm_weights(&dir);
    let script = serde_json::json!({"steps": [
        {"load_weights": {"vggt": std::fs::canonicalize(vggt_tiny()).unwrap(), "mllm": std::fs::canonicalize(&weights).unwrap()}}, {"set": {"control": "k", "value": 3}}, {"open": "frames"}, {"wait_idle": 300},
        {"set": {"control": "color_mode", "value": "confidence"}}, {"set": {"control": "conf_percentile", "value": 40}},
        {"set": {"control": "point_size", "value": 5}}, {"set": {"control": "cameras", "value": "picks"}},
        {"set": {"control": "max_new_tokens", "value": 4}}, {"ask": "How far is the chair from the door?"},
        {"look_through": 1}, {"seek": 4}, {"wait_idle": 60},
        {"pin": {"frame": 1, "pixel": [40, 30]}}, {"pin": {"frame": 2, "pixel": [60, 40]}}, {"set_scale": 0.5},
        {"select_region": {"frame": 1, "rect": [10, 10, 30, 25]}}, {"inspect_tool": "measure"}, {"wait_frames": 10},
        {"dump_state": "saved.json"}, {"screenshot": "saved.png"}, {"save_state": "session.svstate"}, {"quit": true}]});
    let out = run_script(&dir, &script.to_string());
    assert!(out.status.success(), "first run failed: {}", String::from_utf8_lossy(&out.stderr));
    let saved = read_json(&dir.join("saved.json"));
    assert_eq!(saved["chat"].as_array().unwrap().len(), 2, "{saved}");
    assert_eq!(saved["frame"], 4);
    assert!(saved["look_through"].is_number(), "{saved}");
    assert_eq!(saved["pins"].as_array().unwrap().len(), 2, "{saved}");
    assert!(saved["region"]["points"].as_u64().unwrap() > 0, "{saved}");

    // `spatial-viewer STATE_FILE`, with none of the weights loaded by hand.
    let reopen = serde_json::json!({"steps": [{"wait_idle": 300}, {"wait_frames": 10}, {"dump_state": "reopened.json"}, {"screenshot": "reopened.png"}, {"quit": true}]});
    let out = run_viewer(&dir, &reopen.to_string(), &["session.svstate"], |_, _| {});
    assert!(out.status.success(), "reopening failed: {}", String::from_utf8_lossy(&out.stderr));
    let reopened = read_json(&dir.join("reopened.json"));
    assert_same_session(&saved, &reopened);
    let (a, b) = (load_rgb(&dir.join("saved.png")), load_rgb(&dir.join("reopened.png")));
    let differ = differing_pixels(&a, &b);
    assert!(differ == 0, "{differ} pixels differ between the saved and the reopened screenshot");

    // The source moved: the state says where it was, and the next path opened is its new place.
    std::fs::rename(&frames, dir.join("frames-moved")).unwrap();
    let relocate = serde_json::json!({"steps": [{"wait_idle": 60}, {"dump_state": "missing.json"}, {"open": "frames-moved"}, {"wait_idle": 300}, {"wait_frames": 10}, {"dump_state": "relocated.json"}, {"quit": true}]});
    let out = run_viewer(&dir, &relocate.to_string(), &["session.svstate"], |_, _| {});
    assert!(out.status.success(), "relocating failed: {}", String::from_utf8_lossy(&out.stderr));
    let missing = read_json(&dir.join("missing.json"));
    assert!(missing["relocating"].as_str().unwrap().ends_with("session.svstate"), "{missing}");
    let message = missing["status"]["message"].as_str().unwrap();
    assert!(missing["status"]["error"].as_bool().unwrap() && message.contains("frames") && message.contains("missing"), "{message}");
    let relocated = read_json(&dir.join("relocated.json"));
    assert!(relocated["relocating"].is_null(), "{relocated}");
    assert!(relocated["source"]["name"].as_str().unwrap().contains("frames-moved"), "{relocated}");
    assert_same_session(&saved, &relocated);
}

/// The VSI-Bench results browser: a run opened with another to compare, filtered by change and by
/// task, and a question selected: its video opens with the frames the model was given as the
/// picks on the timeline.
#[test]
fn results_browser_filters_and_opens_a_questions_frames() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("results");
    let clip = |name: &str, pattern: &str| {
        let path = dir.join(name);
        let o = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i", &format!("{pattern}=size=320x240:rate=10"), "-frames:v", "40", "-c:v", "libx264", "-pix_fmt", "yuv420p"])
            .arg(&path)
            .output()
            .expect("ffmpeg");
        assert!(o.status.success());
        path
    };
    let (a, b) = (clip("scene-a.mp4", "testsrc2"), clip("scene-b.mp4", "smptebars"));
    let types = ["route_planning", "object_counting", "object_rel_direction_easy", "room_size_estimation"];
    let run = |name: &str, answers: [&str; 6]| {
        let results: Vec<serde_json::Value> = answers
            .iter()
            .enumerate()
            .map(|(i, answer)| {
                let t = types[i % 4];
                let numeric = t.contains("count") || t.contains("size");
                serde_json::json!({
                    "row": i,
                    "sample": {"id": 100 + i, "dataset": "scannet", "scene_name": format!("s{}", i % 2), "question_type": t, "question": format!("question {i}"),
                               "options": if numeric { serde_json::Value::Null } else { serde_json::json!(["A. x", "B. y"]) }, "ground_truth": if numeric { "4" } else { "A" }},
                    "model_output": answer,
                    "video": if i % 2 == 0 { &a } else { &b },
                    "frames_used": [0, 5 + i, 20 + i, 39],
                })
            })
            .collect();
        let input = dir.join(format!("{name}-in.json"));
        std::fs::write(&input, serde_json::Value::Array(results).to_string()).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_spatial-viewer")).args(["eval", "score"]).arg(&input).arg("--out").arg(dir.join(name)).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run("run-a", ["A", "4", "B", "12", "A", "3"]);
    run("run-b", ["A", "5", "B", "12", "B", "3"]);
    let script = serde_json::json!({"steps": [
        {"load_weights": {"vggt": vggt_tiny()}},
        {"open_eval_run": {"path": "run-a", "compare": "run-b"}},
        {"eval_filter": {"correctness": "changed"}}, {"dump_state": "changed.json"},
        {"eval_filter": {"task": "route_planning"}}, {"dump_state": "task.json"},
        {"eval_filter": {"correctness": "wrong", "search": "question 2"}}, {"dump_state": "search.json"},
        {"eval_filter": {}},
        {"select_question": 2}, {"wait_idle": 120}, {"wait_frames": 5}, {"dump_state": "scripted.json"},
        // Then a real click on row 3's line in the table.
        {"wait_for_file": "clicked"}, {"wait_frames": 5}, {"wait_idle": 120}, {"wait_frames": 10}, {"dump_state": "selected.json"}, {"screenshot": "browser.png"}, {"quit": true}]});
    let out = run_script_with(&dir, &script.to_string(), |display| {
        let scripted = dir.join("scripted.json");
        wait_for(&scripted);
        let state = read_json(&scripted);
        let row = state["eval"]["rows"].as_array().unwrap().iter().find(|r| r["key"] == "row 3").expect("row 3 is listed").clone();
        let r: Vec<f64> = row["rect"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let (x, y) = (r[0] + r[2] * 0.3, r[1] + r[3] / 2.0);
        xdotool(display, &["mousemove", &format!("{}", x.round()), &format!("{}", y.round()), "sleep", "0.3", "click", "1"]);
        std::thread::sleep(std::time::Duration::from_millis(500));
        std::fs::write(dir.join("clicked"), b"").unwrap();
    });
    assert!(out.status.success(), "viewer failed: {}", String::from_utf8_lossy(&out.stderr));
    let shown = |f: &str| read_json(&dir.join(f))["eval"]["shown"].clone();
    assert_eq!(shown("changed.json"), serde_json::json!(["row 1", "row 4"]));
    assert_eq!(shown("task.json"), serde_json::json!(["row 0", "row 4"]));
    assert_eq!(shown("search.json"), serde_json::json!(["row 2"]));
    let scripted = read_json(&dir.join("scripted.json"));
    assert_eq!(scripted["eval"]["selected"], "row 2");
    assert_eq!(scripted["source"]["name"], "scene-a.mp4", "{}", scripted["source"]);
    assert_eq!(scripted["sampled"], serde_json::json!([0, 7, 22, 39]));
    let state = read_json(&dir.join("selected.json"));
    assert_eq!(state["eval"]["selected"], "row 3", "the click did not select row 3");
    assert_eq!(state["source"]["name"], "scene-b.mp4", "{}", state["source"]);
    assert_eq!(state["sampled"], serde_json::json!([0, 8, 23, 39]));
    assert!(state["sampled_label"].as_str().unwrap().starts_with("frames used by question 103"), "{}", state["sampled_label"]);
    // VGGT reconstructed the question's frames with the candidates, so their cameras are in 3D.
    let geometry_frames: Vec<u64> = state["geometry"]["source_frames"].as_array().unwrap().iter().map(|f| f.as_u64().unwrap()).collect();
    for f in [0, 8, 23, 39] {
        assert!(geometry_frames.contains(&f), "frame {f} not reconstructed: {geometry_frames:?}");
    }
    // The four frames are marked on the timeline.
    let img = load_rgb(&dir.join("browser.png"));
    let timeline = (img.height() - 110)..(img.height() - 24);
    let cols: std::collections::BTreeSet<u32> = timeline.flat_map(|y| (0..img.width()).filter(|&x| near(img.get_pixel(x, y), SAMPLED, 30)).collect::<Vec<_>>()).map(|x| x / 6).collect();
    assert!(cols.len() >= 4, "{} orange marks on the timeline", cols.len());
    // The 3D view's scene badge (green text) stays under the window: nothing of it shows in
    // the window's title bar, which the badge used to cover.
    let r: Vec<u32> = state["eval"]["window_rect"].as_array().expect("the window's rect").iter().map(|v| v.as_f64().unwrap().round() as u32).collect();
    let badge_green = [140, 230, 140];
    let title_bar = (r[1]..r[1] + 20).flat_map(|y| (r[0]..r[0] + r[2] - 30).map(move |x| (x, y)));
    let covered = title_bar.filter(|&(x, y)| near(img.get_pixel(x, y), badge_green, 40)).count();
    assert_eq!(covered, 0, "the scene badge covers the results window's title bar ({covered} pixels)");
}

/// The demo's ground truth, read back from its safetensors export.
struct DemoTruth {
    frames: usize,
    h: usize,
    w: usize,
    depth: Vec<f32>,
    extrinsic: Vec<f32>,
    intrinsic: Vec<f32>,
}

impl DemoTruth {
    fn load(dir: &Path) -> Self {
        let out = dir.join("demo.safetensors");
        let o = Command::new(env!("CARGO_BIN_EXE_spatial-viewer"))
            .args([
                "export",
                "--demo",
                "--format",
                "safetensors",
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let t = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
        let v = |k: &str| t[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (frames, h, w, _) = t["depth"].dims4().unwrap();
        Self {
            frames,
            h,
            w,
            depth: v("depth"),
            extrinsic: v("extrinsic"),
            intrinsic: v("intrinsic"),
        }
    }

    /// Pixel coordinates (VGGT's convention) and z-depth of a world point in frame `f`.
    fn project(&self, f: usize, p: [f32; 3]) -> Option<(f32, f32, f32)> {
        let e = &self.extrinsic[f * 12..f * 12 + 12];
        let k = &self.intrinsic[f * 9..f * 9 + 9];
        let c = [0, 1, 2]
            .map(|r| e[r * 4] * p[0] + e[r * 4 + 1] * p[1] + e[r * 4 + 2] * p[2] + e[r * 4 + 3]);
        (c[2] > 1e-6).then(|| (k[0] * c[0] / c[2] + k[2], k[4] * c[1] / c[2] + k[5], c[2]))
    }

    fn depth_at(&self, f: usize, x: usize, y: usize) -> f32 {
        self.depth[(f * self.h + y) * self.w + x]
    }

    /// The sample (x, y) of frame `f` that sees `p` by the 2% depth test.
    fn sees(&self, f: usize, p: [f32; 3]) -> Option<(usize, usize)> {
        let (u, v, z) = self.project(f, p)?;
        let (x, y) = (u.round(), v.round());
        if x < 0.0 || y < 0.0 || x >= self.w as f32 || y >= self.h as f32 {
            return None;
        }
        let d = self.depth_at(f, x as usize, y as usize);
        (d > 0.0 && (z - d).abs() <= 0.02 * d).then_some((x as usize, y as usize))
    }

    /// The depth of sample (x, y) of frame `f` unprojected with its camera.
    fn unproject(&self, f: usize, x: usize, y: usize) -> [f32; 3] {
        let e = &self.extrinsic[f * 12..f * 12 + 12];
        let k = &self.intrinsic[f * 9..f * 9 + 9];
        let d = self.depth_at(f, x, y);
        let c = [
            (x as f32 - k[2]) * d / k[0],
            (y as f32 - k[5]) * d / k[4],
            d,
        ];
        let t = [e[3], e[7], e[11]];
        // R^T (c - t)
        [0, 1, 2].map(|i| (0..3).map(|r| e[r * 4 + i] * (c[r] - t[r])).sum())
    }
}

/// A point of the demo's room (metres, y up; `pipeline::demo::furniture`) in its world, which is
/// the first camera of the walk-through (`pipeline::demo::camera_pose(0, frames)`).
fn demo_room_to_world(p: [f32; 3]) -> [f32; 3] {
    let angle = -0.6f32;
    let center = [1.55 * angle.cos(), 1.45, 1.3 * angle.sin()];
    let target = [
        0.35 * (angle * 0.7).cos(),
        0.6,
        -0.2 + 0.3 * (angle * 0.5).sin(),
    ];
    let norm = |v: [f32; 3]| {
        let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        v.map(|c| c / n)
    };
    let cross = |a: [f32; 3], b: [f32; 3]| {
        [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ]
    };
    let forward = norm([
        target[0] - center[0],
        target[1] - center[1],
        target[2] - center[2],
    ]);
    let right = norm(cross(forward, [0.0, 1.0, 0.0]));
    let down = cross(forward, right);
    let d = [p[0] - center[0], p[1] - center[1], p[2] - center[2]];
    [right, down, forward].map(|a| a[0] * d[0] + a[1] * d[1] + a[2] * d[2])
}

fn json_u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_u64().unwrap()).collect()
}

fn json_vec(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Inspect and measure on the demo (ground truth in metres). Script steps: two table corners
/// pinned at the pixels where a demo camera projects them measure the table's true 1.2 m within
/// 1 cm; a scale makes it metres; a rectangle on the sofa is seen by exactly the frames whose
/// ground-truth depth maps see one of its points; a hovered window pixel reports the point drawn
/// there (GPU pick). Real input (xdotool): hovering and clicking in 3D and on the video frame pin
/// those points; a drag on the video frame selects a region. The screenshot shows the pins.
#[test]
fn inspect_and_measure_the_demo() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp_dir("inspect");
    let truth = DemoTruth::load(&dir);
    // The table's front top edge, from corner to corner: 1.2 m.
    let corners = [[-0.6, 0.45, 0.3], [0.6, 0.45, 0.3]].map(demo_room_to_world);
    let (pin_frame, pins) = (0..truth.frames)
        .filter_map(|f| {
            let px: Vec<(usize, usize)> =
                corners.iter().filter_map(|&c| truth.sees(f, c)).collect();
            let far = corners
                .iter()
                .filter_map(|&c| truth.project(f, c))
                .map(|p| p.2)
                .fold(0.0, f32::max);
            (px.len() == 2).then_some((f, px, far))
        })
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .map(|(f, px, _)| (f, px))
        .expect("a frame sees both table corners");
    // A small rectangle on the sofa's seat, seen by some frame.
    let seat = demo_room_to_world([-1.0, 0.8, -2.0]);
    let region_frame = (0..truth.frames)
        .rev()
        .find(|&f| truth.sees(f, seat).is_some())
        .expect("a frame sees the sofa");
    let (sx, sy) = truth.sees(region_frame, seat).unwrap();
    let rect = [sx as i64 - 4, sy as i64 - 3, sx as i64 + 4, sy as i64 + 3];
    let lifted: Vec<[f32; 3]> = (rect[1]..=rect[3])
        .flat_map(|y| (rect[0]..=rect[2]).map(move |x| (x as usize, y as usize)))
        .map(|(x, y)| truth.unproject(region_frame, x, y))
        .collect();
    let expected_frames: Vec<u64> = (0..truth.frames)
        .filter(|&f| lifted.iter().any(|&p| truth.sees(f, p).is_some()))
        .map(|f| f as u64)
        .collect();
    assert!(
        expected_frames.len() < truth.frames,
        "the sofa is seen by every frame"
    );

    let script = format!(
        r#"{{"steps": [{{"open": "demo"}}, {{"wait_idle": 120}}, {{"seek": {pin_frame}}}, {{"wait_idle": 30}},
        {{"pin": {{"frame": {pin_frame}, "pixel": [{}, {}]}}}}, {{"pin": {{"frame": {pin_frame}, "pixel": [{}, {}]}}}}, {{"dump_state": "measured.json"}},
        {{"set_scale": 1.2}}, {{"select_region": {{"frame": {region_frame}, "rect": [{}, {}, {}, {}]}}}}, {{"dump_state": "scaled.json"}},
        {{"hover": [630, 350]}}, {{"dump_state": "hovered.json"}}, {{"clear_pins": true}}, {{"clear_region": true}},
        {{"inspect_tool": "measure"}}, {{"video_overlay": "depth"}}, {{"wait_frames": 5}}, {{"dump_state": "ready.json"}},
        {{"wait_for_file": "moved3d"}}, {{"wait_frames": 10}}, {{"dump_state": "mouse3d.json"}},
        {{"wait_for_file": "clicked3d"}}, {{"wait_frames": 5}}, {{"dump_state": "click3d.json"}},
        {{"wait_for_file": "movedvideo"}}, {{"wait_frames": 10}}, {{"dump_state": "video.json"}},
        {{"wait_for_file": "clickedvideo"}}, {{"wait_frames": 5}}, {{"inspect_tool": "region"}}, {{"dump_state": "clickvideo.json"}},
        {{"wait_for_file": "dragged"}}, {{"wait_frames": 10}}, {{"screenshot": "inspect.png"}}, {{"dump_state": "final.json"}}, {{"quit": true}}]}}"#,
        pins[0].0, pins[0].1, pins[1].0, pins[1].1, rect[0], rect[1], rect[2], rect[3]
    );
    let mouse = std::cell::Cell::new(([0.0f64; 2], [0.0f64; 2]));
    let out = run_script_with(&dir, &script, |display| {
        wait_for(&dir.join("ready.json"));
        let ready = read_json(&dir.join("ready.json"));
        let vp = json_vec(&ready["viewport"]);
        let in_3d = [
            (vp[0] + vp[2] * 0.5 + 37.0).round(),
            (vp[1] + vp[3] * 0.5 + 23.0).round(),
        ];
        let video = json_vec(&ready["video_panel"]["rect"]);
        let on_video = [
            (video[0] + video[2] * 0.37).round(),
            (video[1] + video[3] * 0.61).round(),
        ];
        mouse.set((in_3d, on_video));
        let go = |p: [f64; 2]| {
            xdotool(
                display,
                &["mousemove", &format!("{}", p[0]), &format!("{}", p[1])],
            )
        };
        go(in_3d);
        std::fs::write(dir.join("moved3d"), b"").unwrap();
        wait_for(&dir.join("mouse3d.json"));
        xdotool(display, &["click", "1"]);
        std::fs::write(dir.join("clicked3d"), b"").unwrap();
        wait_for(&dir.join("click3d.json"));
        go(on_video);
        std::fs::write(dir.join("movedvideo"), b"").unwrap();
        wait_for(&dir.join("video.json"));
        xdotool(display, &["click", "1"]);
        std::fs::write(dir.join("clickedvideo"), b"").unwrap();
        wait_for(&dir.join("clickvideo.json"));
        // Drag a rectangle on the video frame with the region tool.
        let from = [
            (video[0] + video[2] * 0.3).round(),
            (video[1] + video[3] * 0.3).round(),
        ];
        let to = [
            (video[0] + video[2] * 0.45).round(),
            (video[1] + video[3] * 0.5).round(),
        ];
        go(from);
        xdotool(display, &["mousedown", "1"]);
        for i in 1..=5 {
            let t = i as f64 / 5.0;
            go([
                from[0] + (to[0] - from[0]) * t,
                from[1] + (to[1] - from[1]) * t,
            ]);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        xdotool(display, &["mouseup", "1"]);
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::fs::write(dir.join("dragged"), b"").unwrap();
    });
    assert!(
        out.status.success(),
        "viewer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Measuring: the true length within a centimetre, in scene units (the demo's are metres).
    let measured = read_json(&dir.join("measured.json"));
    let m = &measured["measurements"][0];
    let length = m["length"].as_f64().unwrap();
    assert!(
        (length - 1.2).abs() < 0.01,
        "the table's edge measures {length} (pins {} in frame {pin_frame} at {pins:?})",
        measured["pins"]
    );
    assert!(m["metres"].is_null() && measured["scale"].is_null());
    for (pin, c) in measured["pins"].as_array().unwrap().iter().zip(corners) {
        let p = json_vec(&pin["position"]);
        let err = ((p[0] - c[0] as f64).powi(2)
            + (p[1] - c[1] as f64).powi(2)
            + (p[2] - c[2] as f64).powi(2))
        .sqrt();
        assert!(err < 0.01, "pin {pin} is {err} m from the corner");
        assert_eq!(pin["frame"], pin_frame as u64);
    }
    let scaled = read_json(&dir.join("scaled.json"));
    assert!((scaled["measurements"][0]["metres"].as_f64().unwrap() - 1.2).abs() < 1e-5);
    assert!((scaled["scale"].as_f64().unwrap() - 1.2 / length).abs() < 1e-5);
    // The region: exactly the frames the ground-truth depth maps say; the picks among them.
    let region = &scaled["region"];
    let frames: Vec<u64> = json_u64s(&region["frames"]);
    assert_eq!(
        frames, expected_frames,
        "frames seeing the sofa rectangle of frame {region_frame}"
    );
    let sampled: Vec<u64> = json_u64s(&scaled["sampled"]);
    let picks: Vec<u64> = json_u64s(&region["sampled_frames"]);
    assert_eq!(
        picks,
        expected_frames
            .iter()
            .copied()
            .filter(|f| sampled.contains(f))
            .collect::<Vec<_>>()
    );
    // A hovered window pixel: the point drawn there, which is that sample's point.
    let check_hover = |state: &serde_json::Value, at: [f64; 2], from: &str| {
        let h = &state["hovered"];
        assert_eq!(h["from"], from, "{h}");
        let (f, px) = (h["frame"].as_u64().unwrap() as usize, json_vec(&h["pixel"]));
        let truth_p = truth.unproject(f, px[0] as usize, px[1] as usize);
        let p = json_vec(&h["position"]);
        assert!(
            (0..3).all(|a| (p[a] - truth_p[a] as f64).abs() < 1e-3),
            "{h} vs {truth_p:?}"
        );
        if from == "3d" {
            let w = json_vec(&h["window"]);
            let d = ((w[0] - at[0]).powi(2) + (w[1] - at[1]).powi(2)).sqrt();
            assert!(
                d <= 2.5,
                "hovered at {at:?}, the reported point projects to {w:?}"
            );
        }
    };
    check_hover(&read_json(&dir.join("hovered.json")), [630.0, 350.0], "3d");
    let (in_3d, on_video) = mouse.get();
    let mouse3d = read_json(&dir.join("mouse3d.json"));
    check_hover(&mouse3d, in_3d, "3d");
    // A click with the measure tool pins the hovered point.
    let click3d = read_json(&dir.join("click3d.json"));
    assert_eq!(
        click3d["pins"].as_array().unwrap().len(),
        1,
        "{}",
        click3d["pins"]
    );
    assert_eq!(
        click3d["pins"][0]["position"],
        mouse3d["hovered"]["position"]
    );
    // On the video frame: the sample under the cursor, in the geometry's pixels.
    let video = read_json(&dir.join("video.json"));
    check_hover(&video, on_video, "video");
    let panel = json_vec(&video["video_panel"]["rect"]);
    let px = json_vec(&video["hovered"]["pixel"]);
    let want = [
        ((on_video[0] - panel[0]) / panel[2] * truth.w as f64).floor(),
        ((on_video[1] - panel[1]) / panel[3] * truth.h as f64).floor(),
    ];
    assert!(
        (px[0] - want[0]).abs() <= 1.0 && (px[1] - want[1]).abs() <= 1.0,
        "video pixel {px:?}, expected {want:?}"
    );
    assert_eq!(video["hovered"]["source_frame"], video["frame"]);
    let clickvideo = read_json(&dir.join("clickvideo.json"));
    let pins = clickvideo["pins"].as_array().unwrap();
    assert_eq!(pins.len(), 2);
    assert_eq!(pins[1]["pixel"], video["hovered"]["pixel"]);
    assert_eq!(clickvideo["measurements"].as_array().unwrap().len(), 1);
    // The drag selected a region on the current frame; the timeline marks its frames.
    let fin = read_json(&dir.join("final.json"));
    let region = &fin["region"];
    assert!(region["points"].as_u64().unwrap() > 100, "{region}");
    assert!(
        region["frames"].as_array().unwrap().contains(&fin["frame"]),
        "{region}"
    );
    // The pins are drawn where they project (magenta), with the segment's length between them.
    let img = load_rgb(&dir.join("inspect.png"));
    for pin in pins {
        let w = json_vec(&pin["window"]);
        let found = (-2..=2)
            .flat_map(|dy| (-2..=2).map(move |dx| (dx, dy)))
            .any(|(dx, dy)| {
                near(
                    img.get_pixel((w[0] as i32 + dx) as u32, (w[1] as i32 + dy) as u32),
                    [255, 60, 200],
                    40,
                )
            });
        assert!(found, "no pin drawn at {w:?}");
    }
}
