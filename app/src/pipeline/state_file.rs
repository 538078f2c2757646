//! Saved states (`.svstate`): one file that reopens what the user had. It is a safetensors file:
//! the reconstruction's tensors (as `reconstruct` writes them, checksummed; none for the demo
//! scene, which is rebuilt exactly), and in its metadata the state as JSON: the source (its path
//! and a fingerprint of its content), and whatever the viewer records (picks, settings, the 3D
//! camera, pins, the chat).

use super::fsio;
use super::source::{Source, SourceSpec};
use anyhow::{Context, Result, bail};
use spatial_models::reconstruction::Reconstruction;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The file's version; newer files are refused with a message.
pub const STATE_VERSION: u64 = 1;

const METADATA_KEY: &str = "spatial_viewer_state";

pub fn is_state_path(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svstate"))
}

/// A cheap fingerprint of a file's or folder's content: sizes, names in a folder, and the first
/// and last 64 KiB of each file (a moved file keeps it; an edited or re-encoded one does not).
/// CRC-32 rather than std's hasher, whose algorithm may change between Rust releases.
pub fn fingerprint(path: &Path) -> Result<String> {
    use std::io::Seek;
    let mut h = crc32fast::Hasher::new();
    let mut files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)?.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    files.retain(|f| !f.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')));
    let mut buf = vec![0u8; 64 << 10];
    for f in &files {
        let mut file = std::fs::File::open(f).with_context(|| format!("{}: cannot read", f.display()))?;
        let len = file.metadata()?.len();
        h.update(&len.to_le_bytes());
        if path.is_dir() {
            h.update(f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        }
        let n = file.read(&mut buf)?;
        h.update(&buf[..n]);
        if len > (128 << 10) {
            file.seek(std::io::SeekFrom::End(-(64 << 10)))?;
            let n = file.read(&mut buf)?;
            h.update(&buf[..n]);
        }
    }
    Ok(format!("crc32:{:08x}:{}", h.finalize(), files.len()))
}

/// The source as a state records it.
pub fn source_record(source: &Source) -> Result<serde_json::Value> {
    Ok(match source.path() {
        None => serde_json::json!({"kind": "demo"}),
        Some(p) => {
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            serde_json::json!({"kind": "path", "path": abs, "fingerprint": fingerprint(p)?, "frames": source.len()})
        }
    })
}

/// Writes a state: `state` (the viewer's JSON, with `source` from [`source_record`]) and the
/// geometry to embed (None for the demo scene).
pub fn write(path: &Path, state: &serde_json::Value, rec: Option<&Reconstruction>) -> Result<()> {
    fsio::check_writable(path)?;
    let mut doc = state.clone();
    doc["version"] = STATE_VERSION.into();
    let text = serde_json::to_string(&doc)?;
    let empty;
    let rec = match rec {
        Some(r) => r,
        None => {
            empty = Reconstruction { frames: 0, height: 0, width: 0, images: vec![], depth: vec![], depth_conf: vec![], world_points: vec![], world_points_conf: vec![], pose_enc: None, cameras: vec![], frame_indices: vec![] };
            &empty
        }
    };
    fsio::write_atomic(path, |w| rec.write_safetensors_with(w, &[(METADATA_KEY, &text)]))
}

/// A state read back: the viewer's JSON and the embedded geometry.
pub struct LoadedState {
    pub state: serde_json::Value,
    pub rec: Option<Reconstruction>,
    /// Where the source is (None for the demo) and whether it still has the recorded content.
    pub source: SourceSpec,
    /// Why the recorded source cannot be used as it is (moved, changed), if so.
    pub source_problem: Option<String>,
}

pub fn read(path: &Path) -> Result<LoadedState> {
    // The header only: the geometry is read (and checked) once, below.
    let meta = spatial_models::checkpoint::read_safetensors_metadata(path).map_err(|e| anyhow::anyhow!("{}: not a saved state ({e:#})", path.display()))?;
    let text = meta.get(METADATA_KEY).with_context(|| format!("{}: not a saved state (no viewer state in it)", path.display()))?;
    let state: serde_json::Value = serde_json::from_str(text).with_context(|| format!("{}: the saved state is not valid JSON", path.display()))?;
    let version = state["version"].as_u64().unwrap_or(0);
    if version > STATE_VERSION {
        bail!("{}: saved by a newer spatial-viewer (state version {version}; this one reads up to {STATE_VERSION})", path.display());
    }
    let rec = Reconstruction::load(path).with_context(|| format!("{}: the saved geometry", path.display()))?;
    let rec = (rec.frames > 0).then_some(rec);
    let (source, source_problem) = match state["source"]["kind"].as_str() {
        Some("demo") => (SourceSpec::Demo, None),
        Some("path") => {
            let p = PathBuf::from(state["source"]["path"].as_str().unwrap_or_default());
            let problem = if !p.exists() {
                Some(format!("{}: the source of this state is missing (moved or deleted); open its new location with File > Open...", p.display()))
            } else {
                match fingerprint(&p) {
                    Ok(f) if Some(f.as_str()) == state["source"]["fingerprint"].as_str() => None,
                    Ok(_) => Some(format!("{}: the source's content changed since the state was saved", p.display())),
                    Err(e) => Some(format!("{e:#}")),
                }
            };
            (SourceSpec::Path(p), problem)
        }
        _ => bail!("{}: the saved state names no source", path.display()),
    };
    Ok(LoadedState { state, rec, source, source_problem })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("sv-unit-state-{name}-")).tempdir().unwrap()
    }

    #[test]
    fn a_state_reads_back_with_its_source_checked() {
        let dir = tmp("roundtrip");
        let dir = dir.path();
        let frames = dir.join("frames");
        std::fs::create_dir_all(&frames).unwrap();
        for i in 0..2u8 {
            image::RgbImage::from_pixel(28, 14, image::Rgb([i * 90, 20, 200])).save(frames.join(format!("{i}.png"))).unwrap();
        }
        let source = Source::open(&SourceSpec::Path(frames.clone())).unwrap();
        let state = serde_json::json!({"source": source_record(&source).unwrap(), "frame": 1, "chat": [{"text": "hi"}]});
        let path = dir.join("s.svstate");
        write(&path, &state, None).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.state["frame"], 1);
        assert_eq!(back.state["chat"][0]["text"], "hi");
        assert!(back.rec.is_none());
        assert!(back.source_problem.is_none(), "{:?}", back.source_problem);
        // An edited frame is noticed; a missing source is named.
        image::RgbImage::from_pixel(28, 14, image::Rgb([1, 2, 3])).save(frames.join("1.png")).unwrap();
        assert!(read(&path).unwrap().source_problem.unwrap().contains("changed"));
        std::fs::rename(&frames, dir.join("moved")).unwrap();
        let problem = read(&path).unwrap().source_problem.unwrap();
        assert!(problem.contains("frames") && problem.contains("missing"), "{problem}");
    }

    #[test]
    fn wrong_files_get_clear_messages() {
        let dir = tmp("wrong");
        let dir = dir.path();
        let junk = dir.join("junk.svstate");
        std::fs::write(&junk, b"not a safetensors file at all").unwrap();
        let e = format!("{:#}", read(&junk).err().unwrap());
        assert!(e.contains("junk.svstate") && e.contains("not a saved state"), "{e}");
        let newer = dir.join("newer.svstate");
        write(&newer, &serde_json::json!({"source": {"kind": "demo"}}), None).unwrap();
        // Rewrite the version as a future one.
        let bytes = std::fs::read(&newer).unwrap();
        let text = String::from_utf8_lossy(&bytes).replace("\\\"version\\\":1", "\\\"version\\\":9");
        std::fs::write(&newer, text.as_bytes()).unwrap();
        let e = format!("{:#}", read(&newer).err().unwrap());
        assert!(e.contains("newer spatial-viewer"), "{e}");
    }
}
