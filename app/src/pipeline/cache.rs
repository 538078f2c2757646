//! Reconstructions cached on disk per (frames, weights, settings), so reopening is instant.
//! Entries carry CRC-32s and are verified when read (a damaged one is dropped, recomputed and
//! reported); writes are atomic; the folder has a size cap, least recently used entries go first;
//! temporaries left by killed runs are removed when the cache opens.

use super::fsio;
use anyhow::Result;
use spatial_models::reconstruction::Reconstruction;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

/// Default cap on the cache folder.
pub const DEFAULT_CAP_BYTES: u64 = 2 << 30;

/// Bump when the output format or the preprocessing changes (older entries are then never hit).
const FORMAT: &str = "v2 crc";

/// The folder of reconstructions.
#[derive(Debug, Clone)]
pub struct ReconstructionCache {
    pub dir: PathBuf,
    /// Shared by the clones (the settings change it while a run writes).
    cap_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What a look-up found.
pub enum CacheLookup {
    Hit(Reconstruction),
    Miss,
    /// The entry was there but failed its checksum (or could not be read): it is deleted.
    Damaged(String),
}

impl ReconstructionCache {
    /// `$XDG_CACHE_HOME/spatial-viewer/reconstructions` (else `~/.cache/...`).
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("spatial-viewer").join("reconstructions"))
    }

    /// Opens (and tidies) the cache folder.
    pub fn open(dir: PathBuf, cap_bytes: u64) -> Self {
        let _ = std::fs::create_dir_all(&dir);
        fsio::remove_stale_temporaries(&dir);
        Self { dir, cap_bytes: std::sync::Arc::new(cap_bytes.into()) }
    }

    pub fn cap(&self) -> u64 {
        self.cap_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the cap and trims the folder to it.
    pub fn set_cap(&self, bytes: u64) {
        self.cap_bytes.store(bytes, std::sync::atomic::Ordering::Relaxed);
        self.trim(None);
    }

    /// The key of a reconstruction: what identifies its input files (path, size, modification
    /// time), the frames taken, the weights' files and the settings.
    pub fn key(inputs: &[PathBuf], frames: &[usize], weights: &[PathBuf], settings: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        FORMAT.hash(&mut h);
        settings.hash(&mut h);
        frames.hash(&mut h);
        for f in inputs.iter().chain(weights) {
            std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()).hash(&mut h);
            if let Ok(m) = std::fs::metadata(f) {
                m.len().hash(&mut h);
                m.modified().ok().hash(&mut h);
            }
        }
        format!("{:016x}", h.finish())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    pub fn get(&self, key: &str) -> CacheLookup {
        let path = self.path(key);
        if !path.is_file() {
            return CacheLookup::Miss;
        }
        match Reconstruction::load(&path) {
            Ok(rec) => {
                // Reading counts as use for the least-recently-used cap.
                if let Ok(f) = std::fs::File::options().write(true).open(&path) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                CacheLookup::Hit(rec)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                CacheLookup::Damaged(format!("{e:#}"))
            }
        }
    }

    /// Stores an entry (atomically), then trims the folder to the cap.
    pub fn put(&self, key: &str, rec: &Reconstruction) -> Result<()> {
        fsio::create_dir_all(&self.dir)?;
        fsio::write_atomic(&self.path(key), |w| rec.write_safetensors(w))?;
        self.trim(Some(key));
        Ok(())
    }

    /// The entries, oldest use first: (path, bytes, last use).
    fn entries(&self) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let Ok(read) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut all: Vec<_> = read
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((e.path(), m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)))
            })
            .collect();
        all.sort_by_key(|e| e.2);
        all
    }

    /// Bytes the cache holds, and its number of entries.
    pub fn usage(&self) -> (u64, usize) {
        let e = self.entries();
        (e.iter().map(|x| x.1).sum(), e.len())
    }

    /// Deletes least recently used entries until the folder is within the cap (never `keep`).
    pub fn trim(&self, keep: Option<&str>) {
        let entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        for (path, len, _) in entries {
            if total <= self.cap() {
                break;
            }
            if keep.is_some_and(|k| path.file_stem().is_some_and(|s| s == k)) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }

    /// Deletes every entry.
    pub fn clear(&self) {
        for (path, _, _) in self.entries() {
            let _ = std::fs::remove_file(path);
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use spatial_models::vggt::Camera;

    fn rec(frames: usize, px: usize) -> Reconstruction {
        let n = frames * px * px;
        Reconstruction {
            frames,
            height: px,
            width: px,
            images: vec![100; n * 3],
            depth: vec![1.0; n],
            depth_conf: vec![2.0; n],
            world_points: vec![0.5; n * 3],
            world_points_conf: vec![3.0; n],
            pose_enc: None,
            cameras: vec![Camera { extrinsic: [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], intrinsic: [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]] }; frames],
            frame_indices: (0..frames as i64).collect(),
        }
    }

    fn tmp(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("sv-unit-cache-{name}-")).tempdir().unwrap()
    }

    #[test]
    fn a_damaged_entry_is_dropped_and_reported() {
        let dir = tmp("damaged");
        let cache = ReconstructionCache::open(dir.path().join("cache"), DEFAULT_CAP_BYTES);
        cache.put("k", &rec(2, 8)).unwrap();
        assert!(matches!(cache.get("k"), CacheLookup::Hit(_)));
        // 64 random-looking bytes in the middle of the data, as a bad write would leave.
        let path = cache.dir.join("k.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        for (i, b) in bytes[mid..mid + 64].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(97).wrapping_add(13);
        }
        std::fs::write(&path, bytes).unwrap();
        match cache.get("k") {
            CacheLookup::Damaged(why) => assert!(why.contains("checksum"), "{why}"),
            _ => panic!("a damaged entry was read as valid"),
        }
        assert!(!path.exists());
        assert!(matches!(cache.get("k"), CacheLookup::Miss));
    }

    #[test]
    fn the_cap_removes_the_least_recently_used_entries() {
        let one = {
            let mut b = Vec::new();
            rec(2, 16).write_safetensors(&mut b).unwrap();
            b.len() as u64
        };
        let dir = tmp("cap");
        let cache = ReconstructionCache::open(dir.path().join("cache"), one * 2 + one / 2);
        cache.put("a", &rec(2, 16)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put("b", &rec(2, 16)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Using "a" makes "b" the least recently used.
        assert!(matches!(cache.get("a"), CacheLookup::Hit(_)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put("c", &rec(2, 16)).unwrap();
        assert!(matches!(cache.get("b"), CacheLookup::Miss));
        assert!(matches!(cache.get("a"), CacheLookup::Hit(_)));
        assert!(matches!(cache.get("c"), CacheLookup::Hit(_)));
        assert_eq!(cache.usage().1, 2);
    }
}
