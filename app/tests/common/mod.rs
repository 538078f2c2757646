#![allow(dead_code)]
//! Helpers shared by the CLI and GUI tests for the question-answering model.

use std::io::Read;
use std::path::{Path, PathBuf};

pub fn models_fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(p)
}

/// A Spatial-MLLM weights folder as a user has it: the tiny checkpoint's config.json and
/// model.safetensors plus the real Qwen tokenizer.json.
pub fn mllm_weights(dir: &Path) -> PathBuf {
    let w = dir.join("mllm");
    std::fs::create_dir_all(&w).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(models_fixture(&format!("spatial-mllm-tiny/{f}")), w.join(f)).unwrap();
    }
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(models_fixture("qwen-tokenizer/tokenizer.json.gz")).unwrap()).read_to_end(&mut json).unwrap();
    std::fs::write(w.join("tokenizer.json"), json).unwrap();
    w
}

/// The fixture's 4 frames (already 84x56, a multiple of 28) as PNG files in a folder.
pub fn mllm_frames(dir: &Path) -> PathBuf {
    let out = dir.join("frames");
    std::fs::create_dir_all(&out).unwrap();
    let f = &expected()["frames_u8"];
    let (t, h, w, _) = f.dims4().unwrap();
    for i in 0..t {
        let data: Vec<u8> = f.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        image::RgbImage::from_raw(w as u32, h as u32, data).unwrap().save(out.join(format!("{i:03}.png"))).unwrap();
    }
    out
}

pub fn expected() -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(models_fixture("spatial-mllm-tiny/expected.safetensors"), &candle_core::Device::Cpu).unwrap()
}

pub fn expected_ids(key: &str) -> Vec<i64> {
    expected()[key].flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

/// The fixture's question (its prompt is this with the numeric suffix).
pub const QUESTION: &str = "How many chairs are in the room?";

/// Installs the system packages the video and GUI tests need when some are missing (Debian; see
/// `tests/provision.sh`), once per test process.
pub fn test_packages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/provision.sh");
        let status = std::process::Command::new("sh").arg(&script).status().expect("run tests/provision.sh");
        assert!(status.success(), "the system packages for the video and GUI tests are missing (see the message above)");
    });
}

/// A Python virtual environment in the target folder with `packages` from PyPI, made once (the
/// name says which set it holds); returns its interpreter.
pub fn python_venv(name: &str, packages: &[&str]) -> PathBuf {
    test_packages();
    let text = |o: &std::process::Output| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let py = venv.join("bin/python");
    let ready = venv.join(format!("ready-{}", packages.join(" ").len()));
    // Test binaries run in parallel: one makes the environment, the others wait for it.
    let lock = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.lock"));
    let _guard = loop {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
            Ok(_) => break LockFile(lock.clone()),
            Err(_) if lock.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default().as_secs() > 900) => {
                let _ = std::fs::remove_file(&lock);
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    };
    if !ready.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        let o = std::process::Command::new("python3").args(["-m", "venv"]).arg(&venv).output().expect("python3 is needed for these tests");
        assert!(o.status.success(), "python3 -m venv: {}", text(&o));
        let o = std::process::Command::new(&py).args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]).args(packages).output().unwrap();
        assert!(o.status.success(), "pip install (PyPI must be reachable): {}", text(&o));
        std::fs::write(&ready, b"").unwrap();
    }
    py
}

struct LockFile(PathBuf);

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the viewer's command line and waits for it.
pub fn viewer(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_spatial-viewer")).args(args).output().expect("run spatial-viewer")
}

/// What a command printed, stdout then stderr.
pub fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// An empty folder for one test of a suite: removed when the test passes, kept (and its path
/// printed) when it fails, or always with KEEP_TEST_DIRS=1, so its screenshots and logs can be
/// looked at. Runs that left every
/// folder behind filled the disk.
pub struct ScratchDir(Option<tempfile::TempDir>);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // KEEP_TEST_DIRS=1 keeps every folder, to look at what passing tests wrote.
        let keep = std::env::var_os("KEEP_TEST_DIRS").is_some_and(|v| v == "1");
        if std::thread::panicking() || keep {
            if let Some(dir) = self.0.take() {
                let why = if keep { "KEEP_TEST_DIRS=1" } else { "it failed" };
                eprintln!("kept the test's folder {} ({why})", dir.keep().display());
            }
        }
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.as_ref().expect("scratch folder alive").path()
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        self
    }
}

impl AsRef<std::ffi::OsStr> for ScratchDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.as_os_str()
    }
}

pub fn tmp_dir(suite: &str, name: &str) -> ScratchDir {
    let dir = tempfile::Builder::new().prefix(&format!("sv-{suite}-{name}-")).tempdir().expect("make a test folder");
    ScratchDir(Some(dir))
}
