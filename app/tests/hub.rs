//! Weights by Hugging Face repo id: resolved from a hub cache laid out as `huggingface_hub` writes
//! it, and downloaded from a local server that answers as the hub's `resolve` and `api` endpoints
//! do (nothing here reaches the internet).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(p)
}

mod common;

fn tmp(name: &str) -> common::ScratchDir {
    common::tmp_dir("hub", name)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn viewer(cache: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spatial-viewer"));
    cmd.args(args).env("HF_HUB_CACHE", cache).env_remove("HF_HOME").env_remove("HF_ENDPOINT").env_remove("HF_TOKEN").env_remove("HF_HUB_OFFLINE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `models--ORG--NAME/{refs/main, blobs/ETAG, snapshots/COMMIT/FILE -> ../../blobs/ETAG}`.
fn lay_out_cache(cache: &Path, repo: &str, files: &[(&str, PathBuf)]) -> PathBuf {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    let snap = root.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(root.join("refs/main"), COMMIT).unwrap();
    for (i, (name, src)) in files.iter().enumerate() {
        let etag = format!("blob{i:04}");
        std::fs::copy(src, root.join("blobs").join(&etag)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{etag}"), snap.join(name)).unwrap();
    }
    snap
}

#[test]
fn a_repo_id_resolves_from_the_hub_cache() {
    let dir = tmp("cache");
    let cache = dir.join("hub");
    let snap = lay_out_cache(&cache, "test-org/vggt-tiny", &[("config.json", fixture("vggt-tiny/config.json")), ("model.safetensors", fixture("vggt-tiny/model.safetensors"))]);
    let offline = [("HF_HUB_OFFLINE", "1")];
    let o = viewer(&cache, &offline, &["weights", "check", "test-org/vggt-tiny"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("VGGT checkpoint") && text(&o).contains(&snap.display().to_string()), "{}", text(&o));
    // A commit hash names its snapshot too.
    let o = viewer(&cache, &offline, &["weights", "check", &format!("test-org/vggt-tiny@{COMMIT}")]);
    assert!(o.status.success(), "{}", text(&o));
    // The models run from it.
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::copy(fixture("vggt-preprocess/bikes_1.png"), frames.join("0.png")).unwrap();
    std::fs::copy(fixture("vggt-preprocess/bikes_2.png"), frames.join("1.png")).unwrap();
    let o = viewer(&cache, &offline, &["reconstruct", "--weights", "test-org/vggt-tiny", "--input", frames.to_str().unwrap(), "--out", dir.join("g.safetensors").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = viewer(&cache, &offline, &["weights", "list"]);
    assert!(text(&o).contains("test-org/vggt-tiny"), "{}", text(&o));
    // HF_HOME/hub is where huggingface_hub looks when HF_HUB_CACHE is not set.
    let o = Command::new(env!("CARGO_BIN_EXE_spatial-viewer")).args(["weights", "check", "test-org/vggt-tiny"]).env_remove("HF_HUB_CACHE").env("HF_HOME", &dir).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_missing_repo_offline_says_what_would_fetch_it() {
    let dir = tmp("missing");
    let cache = dir.join("hub");
    std::fs::create_dir_all(&cache).unwrap();
    let o = viewer(&cache, &[("HF_HUB_OFFLINE", "1")], &["weights", "check", "facebook/VGGT-1B"]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains("facebook/VGGT-1B") && t.contains(&cache.display().to_string()) && t.contains("weights download facebook/VGGT-1B") && t.contains("HF_HUB_OFFLINE"), "{t}");
    // An incomplete snapshot is named with what it lacks.
    lay_out_cache(&cache, "test-org/half", &[("config.json", fixture("vggt-tiny/config.json"))]);
    let o = viewer(&cache, &[("HF_HUB_OFFLINE", "1")], &["weights", "check", "test-org/half"]);
    assert!(text(&o).contains("incomplete") && text(&o).contains("model.safetensors"), "{}", text(&o));
}

/// What the test server saw: (path, Range header, Authorization header).
type Log = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;

/// A server answering as the hub does for one repo: `GET /api/models/REPO/revision/main` lists the
/// files; `GET /REPO/resolve/main/FILE` serves them with `etag`, `x-repo-commit` and
/// `content-range` headers and byte ranges. The first full download of `cut` stops halfway (a
/// dropped connection), so the client must resume. With `token`, requests without it get 401.
fn serve_hub(repo: &'static str, files: BTreeMap<String, Vec<u8>>, cut: &'static str, token: Option<&'static str>) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        let mut cut_done = false;
        for stream in listener.incoming().take(200) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut headers = BTreeMap::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            seen.lock().unwrap().push((path.clone(), headers.get("range").cloned(), headers.get("authorization").cloned()));
            let respond = |stream: &mut std::net::TcpStream, status: &str, extra: &str, body: &[u8]| {
                let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n", body.len());
                let _ = stream.write_all(body);
            };
            if let Some(t) = token {
                if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {t}")) {
                    respond(&mut stream, "401 Unauthorized", "", b"{\"error\":\"unauthorized\"}");
                    continue;
                }
            }
            if path == format!("/api/models/{repo}/revision/main") {
                let siblings: Vec<serde_json::Value> = files.keys().map(|f| serde_json::json!({"rfilename": f})).chain([serde_json::json!({"rfilename": "README.md"})]).collect();
                let body = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
                respond(&mut stream, "200 OK", "Content-Type: application/json\r\n", body.as_bytes());
                continue;
            }
            let Some(name) = path.strip_prefix(&format!("/{repo}/resolve/main/")) else {
                respond(&mut stream, "404 Not Found", "", b"");
                continue;
            };
            let Some(data) = files.get(name) else {
                respond(&mut stream, "404 Not Found", "", b"");
                continue;
            };
            let start: usize = headers.get("range").and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split('-').next()).and_then(|s| s.parse().ok()).unwrap_or(0);
            let end = match headers.get("range").and_then(|r| r.split('-').nth(1)).filter(|e| !e.is_empty()) {
                Some(e) => e.parse::<usize>().unwrap() + 1,
                None => data.len(),
            };
            let extra = format!("ETag: \"etag-{name}\"\r\nX-Repo-Commit: {COMMIT}\r\nContent-Range: bytes {start}-{}/{}\r\n", end - 1, data.len());
            let body = &data[start..end.min(data.len())];
            if name == cut && start == 0 && end == data.len() && !cut_done {
                // Promise the whole file, send half, hang up.
                cut_done = true;
                let _ = write!(stream, "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n", body.len());
                let _ = stream.write_all(&body[..body.len() / 2]);
                let _ = stream.flush();
                continue;
            }
            respond(&mut stream, "206 Partial Content", &extra, body);
        }
    });
    (addr, log)
}

#[test]
fn a_missing_repo_downloads_from_the_endpoint_and_resumes() {
    let dir = tmp("download");
    let cache = dir.join("hub");
    let mut files = BTreeMap::new();
    files.insert("config.json".to_string(), std::fs::read(fixture("vggt-tiny/config.json")).unwrap());
    files.insert("model.safetensors".to_string(), std::fs::read(fixture("vggt-tiny/model.safetensors")).unwrap());
    let (endpoint, requests) = serve_hub("test-org/vggt-tiny", files.clone(), "model.safetensors", Some("secret-token"));
    let env = [("HF_ENDPOINT", endpoint.as_str()), ("HF_TOKEN", "secret-token")];
    let o = viewer(&cache, &env, &["weights", "download", "test-org/vggt-tiny"]);
    assert!(o.status.success(), "{}", text(&o));
    let snapshot = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(snapshot.starts_with(&cache), "{}", snapshot.display());
    for (name, data) in &files {
        assert_eq!(&std::fs::read(snapshot.join(name)).unwrap(), data, "{name}");
    }
    assert!(!snapshot.join("README.md").exists(), "files the app does not load were downloaded");
    // The dropped transfer was resumed from where it stopped, not started again.
    let half = files["model.safetensors"].len() / 2;
    let log = requests.lock().unwrap().clone();
    assert!(log.iter().any(|(p, r, _)| p.ends_with("model.safetensors") && r.as_deref() == Some(&format!("bytes={half}-"))), "{log:?}");
    assert!(log.iter().all(|(_, _, auth)| auth.as_deref() == Some("Bearer secret-token")), "the token was not sent: {log:?}");
    // Now it is in the cache: offline works.
    let o = viewer(&cache, &[("HF_HUB_OFFLINE", "1")], &["weights", "check", "test-org/vggt-tiny"]);
    assert!(o.status.success(), "{}", text(&o));
    // HF_HUB_OFFLINE keeps the app off the network even with an endpoint set.
    let before = requests.lock().unwrap().len();
    let o = viewer(&dir.join("empty-hub"), &[("HF_ENDPOINT", endpoint.as_str()), ("HF_HUB_OFFLINE", "1")], &["weights", "check", "test-org/vggt-tiny"]);
    assert_eq!(o.status.code(), Some(1));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(requests.lock().unwrap().len(), before, "a request reached the server while offline");
    // A wrong token is refused with a message naming the repo.
    let o = viewer(&dir.join("hub2"), &[("HF_ENDPOINT", endpoint.as_str()), ("HF_TOKEN", "wrong")], &["weights", "check", "test-org/vggt-tiny"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("test-org/vggt-tiny") && text(&o).contains("401"), "{}", text(&o));
}
