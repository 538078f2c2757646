//! Where an evaluation's results live: a journal (`results.jsonl`, one line per finished question,
//! written and synced as each finishes, so a killed run loses at most the question in flight), the
//! run's settings (`run.json`, so a rerun continues only the same run), and upstream's two files
//! (`results.json`, `metrics.json`) written atomically from the journal.

use super::scoring::calculate_metrics;
use crate::pipeline::fsio;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};

pub const JOURNAL: &str = "results.jsonl";
pub const SETTINGS: &str = "run.json";
pub const RESULTS: &str = "results.json";
pub const METRICS: &str = "metrics.json";

/// The journal's complete lines, and the byte length they end at (a line cut by a kill is not
/// complete: it has no newline or is not JSON, and is dropped).
pub fn read_journal(path: &Path) -> Result<(Vec<Value>, u64)> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mut reader = std::io::BufReader::new(file);
    let (mut out, mut good_end, mut line) = (Vec::new(), 0u64, String::new());
    loop {
        line.clear();
        let n = reader.read_line(&mut line).with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v.get("row").is_some_and(Value::is_u64) => {
                out.push(v);
                good_end += n as u64;
            }
            // Only the last line can be torn; anything else means the file is not a journal.
            _ => {
                let mut rest = String::new();
                let more = reader.read_line(&mut rest).unwrap_or(0);
                if more > 0 {
                    bail!("{}: line {} is not a result (this is not an evaluation journal, or it was edited)", path.display(), out.len() + 1);
                }
                break;
            }
        }
    }
    Ok((out, good_end))
}

/// Appends results to a journal, each synced to the disk before the next question starts.
pub struct Journal {
    file: std::fs::File,
    path: PathBuf,
}

impl Journal {
    /// Opens `path` for appending after its last complete line (a torn line is cut off).
    pub fn open(path: &Path, good_end: u64) -> Result<Self> {
        let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).with_context(|| format!("{}: cannot write", path.display()))?;
        file.set_len(good_end).with_context(|| format!("{}: cannot write", path.display()))?;
        file.seek(std::io::SeekFrom::End(0))?;
        Ok(Self { file, path: path.to_path_buf() })
    }

    pub fn append(&mut self, result: &Value) -> Result<()> {
        let mut line = serde_json::to_string(result)?;
        line.push('\n');
        // One write of the whole line, then a sync: a kill leaves either the line or a torn tail.
        self.file.write_all(line.as_bytes()).and_then(|_| self.file.sync_data()).map_err(|e| anyhow::anyhow!("{}: {}", self.path.display(), fsio::plain_io_error(&e)))
    }
}

/// Sorts results by their row and writes `results.json` (upstream's layout, indented like its
/// `save_json`) and `metrics.json` into `dir`, atomically. Returns the metrics.
pub fn write_outputs(dir: &Path, results: &mut [Value]) -> Result<Value> {
    results.sort_by_key(|r| r["row"].as_u64().unwrap_or(u64::MAX));
    let metrics = calculate_metrics(results);
    write_json(&dir.join(RESULTS), &Value::Array(results.to_vec()))?;
    write_json(&dir.join(METRICS), &metrics)?;
    Ok(metrics)
}

/// Pretty JSON (2-space indent, non-ASCII as is, like upstream's `save_json`), atomically.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    fsio::write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        Ok(())
    })
}

/// A run's results: its journal, else its `results.json`.
pub fn read_run(dir: &Path) -> Result<Vec<Value>> {
    let journal = dir.join(JOURNAL);
    if journal.exists() {
        return Ok(read_journal(&journal)?.0);
    }
    let path = dir.join(RESULTS);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: no {JOURNAL} or {RESULTS} (not an evaluation run folder)", dir.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    match v {
        Value::Array(a) => Ok(a),
        _ => bail!("{}: expected a list of results", path.display()),
    }
}

/// The settings a run was made with, without its shard (what shards of one run share).
pub fn settings_without_shard(dir: &Path) -> Result<Option<Value>> {
    let path = dir.join(SETTINGS);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
            if let Some(o) = v.as_object_mut() {
                o.remove("shard");
            }
            Ok(Some(v))
        }
        Err(_) => Ok(None),
    }
}

/// Combines the results of shard runs into one (each question once, in row order) and writes
/// the results and metrics into `out`. Shards of different runs (other weights, frames, ...) or
/// overlapping shards with different answers are refused.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<(usize, Value)> {
    if dirs.is_empty() {
        bail!("eval merge: name the run folders to merge");
    }
    let mut settings: Option<(PathBuf, Value)> = None;
    let mut by_row: std::collections::BTreeMap<u64, (PathBuf, Value)> = Default::default();
    for dir in dirs {
        if let Some(s) = settings_without_shard(dir)? {
            match &settings {
                Some((first, f)) if *f != s => bail!("{} and {} are not shards of one run: their settings differ ({} vs {})", first.display(), dir.display(), f, s),
                Some(_) => {}
                None => settings = Some((dir.clone(), s)),
            }
        }
        for r in read_run(dir)? {
            let row = r["row"].as_u64().with_context(|| format!("{}: a result without its row (results of another tool? use eval score)", dir.display()))?;
            if let Some((other, prev)) = by_row.get(&row) {
                if prev["model_output"] != r["model_output"] {
                    bail!("row {row} is in {} and {} with different answers", other.display(), dir.display());
                }
                continue;
            }
            by_row.insert(row, (dir.clone(), r));
        }
    }
    fsio::create_dir_all(out)?;
    let mut results: Vec<Value> = by_row.into_values().map(|(_, r)| r).collect();
    let metrics = write_outputs(out, &mut results)?;
    if let Some((_, s)) = settings {
        write_json(&out.join(SETTINGS), &s)?;
    }
    Ok((results.len(), metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_dropped_and_cut_off() {
        let dir = tempfile::Builder::new().prefix("sv-unit-journal-").tempdir().unwrap();
        let path = dir.path().join(JOURNAL);
        std::fs::write(&path, "{\"row\": 0, \"model_output\": \"a\"}\n{\"row\": 1, \"model_out").unwrap();
        let (done, end) = read_journal(&path).unwrap();
        assert_eq!(done.len(), 1);
        let mut j = Journal::open(&path, end).unwrap();
        j.append(&serde_json::json!({"row": 1, "model_output": "b"})).unwrap();
        let (done, _) = read_journal(&path).unwrap();
        assert_eq!(done.iter().map(|r| r["row"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1]);
        // A bad line in the middle is not silently skipped.
        std::fs::write(&path, "garbage\n{\"row\": 1}\n").unwrap();
        assert!(read_journal(&path).unwrap_err().to_string().contains("line 1"));
    }
}
