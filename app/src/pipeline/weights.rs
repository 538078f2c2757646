//! Weights where researchers keep them: a folder, or a Hugging Face repo id (`facebook/VGGT-1B`,
//! `ORG/NAME@REVISION`) resolved from the hub cache that Python's `huggingface_hub` writes
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; layout
//! `models--ORG--NAME/{refs,snapshots,blobs}`). What the cache lacks is downloaded with the `hf-hub`
//! crate when the machine is online (`HF_ENDPOINT`, `HF_TOKEN` honoured; `.part` files resume),
//! and never when `HF_HUB_OFFLINE=1`.

use super::threads::Cancel;
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// Weights named by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSpec {
    Dir(PathBuf),
    Repo { id: String, revision: String },
}

impl WeightsSpec {
    /// A path that exists is a folder; `ORG/NAME` or `ORG/NAME@REV` that is not a path is a repo id.
    pub fn parse(text: &str) -> Self {
        let path = Path::new(text);
        if path.exists() || text.starts_with(['.', '/', '~']) {
            return Self::Dir(path.to_path_buf());
        }
        let (id, revision) = text.split_once('@').unwrap_or((text, "main"));
        let valid = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !part.starts_with(['.', '-']);
        match id.split_once('/') {
            Some((org, name)) if valid(org) && valid(name) && !revision.is_empty() => Self::Repo { id: id.to_string(), revision: revision.to_string() },
            _ => Self::Dir(path.to_path_buf()),
        }
    }
}

impl std::fmt::Display for WeightsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(p) => write!(f, "{}", p.display()),
            Self::Repo { id, revision } if revision == "main" => f.write_str(id),
            Self::Repo { id, revision } => write!(f, "{id}@{revision}"),
        }
    }
}

/// Which model a repo holds, for the files it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsKind {
    Vggt,
    /// Spatial-MLLM or Qwen2.5-VL: also the tokenizer.
    Mllm,
    /// Whatever the checkpoint is (`weights check`).
    Any,
}

/// The hub cache folder, as `huggingface_hub` finds it.
pub fn hub_cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = env("HF_HUB_CACHE") {
        return p;
    }
    if let Some(p) = env("HF_HOME") {
        return p.join("hub");
    }
    let cache = env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache"))).unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn repo_folder(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

/// The snapshot folder for a revision: `refs/REV` names the commit; a commit hash names itself.
fn snapshot(cache: &Path, id: &str, revision: &str) -> Option<PathBuf> {
    let repo = repo_folder(cache, id);
    let commit = std::fs::read_to_string(repo.join("refs").join(revision)).map(|s| s.trim().to_string()).unwrap_or_else(|_| revision.to_string());
    let dir = repo.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// Files a model folder needs that `dir` lacks (shards named by an index count too).
pub fn missing_files(dir: &Path, kind: WeightsKind) -> Vec<String> {
    let mut missing = Vec::new();
    if !dir.join("config.json").is_file() && kind != WeightsKind::Any {
        missing.push("config.json".to_string());
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let names: Vec<String> = std::fs::read_to_string(&index)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|j| j.get("weight_map").and_then(|m| m.as_object()).map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect()))
            .unwrap_or_default();
        let mut names: Vec<String> = names;
        names.sort();
        names.dedup();
        missing.extend(names.into_iter().filter(|n| !dir.join(n).is_file()));
    } else if !dir.join("model.safetensors").is_file() {
        let any = std::fs::read_dir(dir).map(|r| r.flatten().any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))).unwrap_or(false);
        if !any {
            missing.push("model.safetensors".to_string());
        }
    }
    if kind == WeightsKind::Mllm && !dir.join("tokenizer.json").is_file() {
        missing.push("tokenizer.json".to_string());
    }
    missing
}

/// A repo in the hub cache, for the GUI's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedRepo {
    pub id: String,
    pub snapshot: PathBuf,
}

/// The model repos the hub cache holds a snapshot of (their `main`, else their newest snapshot).
pub fn cached_repos() -> Vec<CachedRepo> {
    let cache = hub_cache_dir();
    let Ok(entries) = std::fs::read_dir(&cache) else { return Vec::new() };
    let mut repos: Vec<CachedRepo> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("models--")?.replacen("--", "/", 1);
            let snap = snapshot(&cache, &id, "main").or_else(|| {
                std::fs::read_dir(e.path().join("snapshots")).ok()?.flatten().filter(|s| s.path().is_dir()).max_by_key(|s| s.metadata().and_then(|m| m.modified()).ok()).map(|s| s.path())
            })?;
            Some(CachedRepo { id, snapshot: snap })
        })
        .collect();
    repos.sort_by(|a, b| a.id.cmp(&b.id));
    repos
}

/// Download progress: (file, bytes so far, bytes in all of the files asked for).
pub type DownloadProgress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// A local folder for `spec`: the folder itself, or the cache's snapshot, downloading the files
/// `kind` needs when they are missing and the machine may go online.
pub fn resolve(spec: &WeightsSpec, kind: WeightsKind, progress: DownloadProgress, cancel: &Cancel) -> Result<PathBuf> {
    let (id, revision) = match spec {
        WeightsSpec::Dir(p) => return Ok(p.clone()),
        WeightsSpec::Repo { id, revision } => (id, revision),
    };
    let cache = hub_cache_dir();
    if let Some(dir) = snapshot(&cache, id, revision) {
        if missing_files(&dir, kind).is_empty() {
            return Ok(dir);
        }
    }
    let fetch_hint = format!("`spatial-viewer weights download {spec}` (or Python's `hf download {id}{}`)", if revision == "main" { String::new() } else { format!(" --revision {revision}") });
    if offline() {
        let have = snapshot(&cache, id, revision).map(|d| format!(" (its snapshot {} is incomplete: missing {})", d.display(), missing_files(&d, kind).join(", "))).unwrap_or_default();
        bail!("{spec}: not in the Hugging Face cache at {}{have}, and HF_HUB_OFFLINE is set; on a machine that is online, run {fetch_hint}", cache.display());
    }
    download(id, revision, kind, &cache, progress, cancel).map_err(|e| {
        anyhow::anyhow!("{spec}: not in the Hugging Face cache at {}, and downloading it failed ({e:#}); run {fetch_hint} where the hub can be reached, or point at a local folder", cache.display())
    })
}

/// Unwinds out of a download when the user cancels it (`hf-hub`'s progress callback cannot stop
/// a transfer otherwise); the partial `.part` file stays and the next download resumes it.
struct DownloadCancelled;

struct ProgressAdapter<'a, 'b> {
    file: String,
    done_before: u64,
    done: u64,
    total: u64,
    report: &'a mut DownloadProgress<'b>,
    cancel: &'a Cancel,
}

impl hf_hub::api::Progress for ProgressAdapter<'_, '_> {
    fn init(&mut self, _size: usize, _filename: &str) {
        self.done = 0;
    }
    fn update(&mut self, size: usize) {
        if self.cancel.is_cancelled() {
            // resume_unwind skips the panic hook: nothing is printed.
            std::panic::resume_unwind(Box::new(DownloadCancelled));
        }
        self.done += size as u64;
        (self.report)(&self.file, self.done_before + self.done, self.total);
    }
    fn finish(&mut self) {}
}

fn wanted(name: &str, kind: WeightsKind) -> bool {
    let name_only = name.rsplit('/').next().unwrap_or(name);
    if name.contains('/') {
        return false; // subfolders (onnx exports, original checkpoints) are not what the app loads
    }
    name_only.ends_with(".safetensors")
        || matches!(name_only, "config.json" | "model.safetensors.index.json" | "generation_config.json")
        || (kind != WeightsKind::Vggt && matches!(name_only, "tokenizer.json" | "tokenizer_config.json" | "preprocessor_config.json" | "chat_template.json"))
}

fn download(id: &str, revision: &str, kind: WeightsKind, cache: &Path, mut progress: DownloadProgress, cancel: &Cancel) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    let mut builder = ApiBuilder::from_env().with_cache_dir(cache.to_path_buf()).with_progress(false).with_retries(2);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build()?;
    let repo = api.repo(hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, revision.to_string()));
    let info = repo.info()?;
    let files: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).filter(|n| wanted(n, kind)).collect();
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        bail!("the repo lists no .safetensors files ({} files in all)", info.siblings.len());
    }
    // Sizes come with each file's metadata; the total grows as files start.
    let mut done_before = 0u64;
    let mut total = 0u64;
    let mut dir = None;
    for file in &files {
        if let Some(existing) = snapshot(cache, id, revision).map(|d| d.join(file)).filter(|p| p.is_file()) {
            dir = existing.parent().map(Path::to_path_buf);
            continue;
        }
        let size = api.metadata(&repo.url(file)).map(|m| m.size() as u64).unwrap_or(0);
        total += size;
        let adapter = ProgressAdapter { file: file.clone(), done_before, done: 0, total, report: &mut progress, cancel };
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| repo.download_with_progress(file, adapter)));
        let path = match got {
            Ok(r) => r?,
            Err(p) if p.is::<DownloadCancelled>() => bail!("cancelled (the partial download is kept and resumes next time)"),
            Err(p) => std::panic::resume_unwind(p),
        };
        done_before += size;
        dir = path.parent().map(Path::to_path_buf);
    }
    let dir = snapshot(cache, id, revision).or(dir).ok_or_else(|| anyhow::anyhow!("the download left no snapshot"))?;
    let missing = missing_files(&dir, kind);
    if !missing.is_empty() {
        bail!("the repo has no {}", missing.join(", "));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_folders_are_told_apart() {
        assert_eq!(WeightsSpec::parse("facebook/VGGT-1B"), WeightsSpec::Repo { id: "facebook/VGGT-1B".into(), revision: "main".into() });
        assert_eq!(
            WeightsSpec::parse("Diankun/Spatial-MLLM-v1.1-Instruct-135K@abc123"),
            WeightsSpec::Repo { id: "Diankun/Spatial-MLLM-v1.1-Instruct-135K".into(), revision: "abc123".into() }
        );
        assert_eq!(WeightsSpec::parse("./facebook/VGGT-1B"), WeightsSpec::Dir("./facebook/VGGT-1B".into()));
        assert_eq!(WeightsSpec::parse("/tmp"), WeightsSpec::Dir("/tmp".into()));
        assert_eq!(WeightsSpec::parse("weights"), WeightsSpec::Dir("weights".into()));
        assert_eq!(WeightsSpec::parse("a/b/c"), WeightsSpec::Dir("a/b/c".into()));
        assert_eq!(WeightsSpec::parse("facebook/VGGT-1B@v2").to_string(), "facebook/VGGT-1B@v2");
    }

    #[test]
    fn only_what_the_app_loads_is_downloaded() {
        for name in ["model.safetensors", "config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json"] {
            assert!(wanted(name, WeightsKind::Vggt), "{name}");
        }
        assert!(!wanted("tokenizer.json", WeightsKind::Vggt));
        assert!(wanted("tokenizer.json", WeightsKind::Mllm));
        for name in ["model.pt", "pytorch_model.bin", "onnx/model.safetensors", "README.md", ".gitattributes"] {
            assert!(!wanted(name, WeightsKind::Mllm), "{name}");
        }
    }
}
