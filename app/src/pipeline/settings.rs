//! Settings kept across runs (`$XDG_CONFIG_HOME/spatial-viewer/settings.json`, else
//! `~/.config/...`): the reconstruction cache's size cap, the files opened recently, the device.
//! A missing or unreadable file gives the defaults; it is written atomically.

use super::fsio;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Files kept in the recent list.
pub const RECENT_MAX: usize = 12;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppSettings {
    /// Cap on the reconstruction cache, in MiB.
    pub cache_cap_mib: u64,
    /// Sources opened recently, newest first.
    pub recent: Vec<PathBuf>,
    /// Weights loaded recently (folders or repo ids), newest first.
    pub recent_weights: Vec<String>,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self { cache_cap_mib: super::cache::DEFAULT_CAP_BYTES >> 20, recent: Vec::new(), recent_weights: Vec::new() }
    }
}

impl AppSettings {
    pub fn path() -> Option<PathBuf> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let base = env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config")))?;
        Some(base.join("spatial-viewer").join("settings.json"))
    }

    pub fn load() -> Self {
        Self::path().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let path = Self::path().ok_or_else(|| anyhow::anyhow!("no HOME or XDG_CONFIG_HOME: settings are not kept"))?;
        if let Some(dir) = path.parent() {
            fsio::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(self)?;
        fsio::write_atomic(&path, |w| Ok(std::io::Write::write_all(w, text.as_bytes())?))
    }

    /// Puts a source at the top of the recent list.
    pub fn remember(&mut self, path: PathBuf) {
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        self.recent.retain(|p| *p != path);
        self.recent.insert(0, path);
        self.recent.truncate(RECENT_MAX);
    }

    /// Puts weights at the top of their recent list.
    pub fn remember_weights(&mut self, spec: &str) {
        self.recent_weights.retain(|p| p != spec);
        self.recent_weights.insert(0, spec.to_string());
        self.recent_weights.truncate(RECENT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_files_keep_the_newest_first_without_repeats() {
        let mut s = AppSettings::default();
        for i in 0..20 {
            s.remember(PathBuf::from(format!("/nonexistent/{i}.mp4")));
        }
        s.remember(PathBuf::from("/nonexistent/15.mp4"));
        assert_eq!(s.recent.len(), RECENT_MAX);
        assert_eq!(s.recent[0], PathBuf::from("/nonexistent/15.mp4"));
        assert_eq!(s.recent.iter().filter(|p| p.ends_with("15.mp4")).count(), 1);
        // Old files of other versions (unknown or missing fields) still read.
        let back: AppSettings = serde_json::from_str(r#"{"recent": ["/a.mp4"], "future_field": 1}"#).unwrap();
        assert_eq!(back.recent, vec![PathBuf::from("/a.mp4")]);
        assert_eq!(back.cache_cap_mib, AppSettings::default().cache_cap_mib);
    }
}
