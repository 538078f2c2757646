//! VSI-Bench as `hf download nyu-visionx/VSI-Bench --repo-type dataset` lays it out: parquet
//! annotations named by the configurations in the README's front matter (`full`, `debiased`),
//! and the videos unzipped as `DATASET/SCENE.mp4` (upstream's folders of pre-sampled frames,
//! `DATASET/SCENE/*.png`, work too).

use anyhow::{Context, Result, bail};
use parquet::file::reader::SerializedFileReader;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One question: its row in the configuration (the order runs, shards and merges keep) and the
/// dataset's columns as they are (upstream's `sample`).
#[derive(Debug, Clone)]
pub struct BenchQuestion {
    pub row: usize,
    pub sample: Value,
}

impl BenchQuestion {
    pub fn field(&self, name: &str) -> &str {
        self.sample[name].as_str().unwrap_or_default()
    }
    pub fn question_type(&self) -> &str {
        self.field("question_type")
    }
    /// The multiple-choice options ("A. ..."), if any.
    pub fn options(&self) -> Vec<String> {
        self.sample["options"].as_array().map(|a| a.iter().filter_map(|o| o.as_str().map(String::from)).collect()).unwrap_or_default()
    }
    /// Where its video is: `VIDEOS/DATASET/SCENE.mp4`, else the folder `VIDEOS/DATASET/SCENE/`.
    pub fn video(&self, videos: &Path) -> Result<PathBuf> {
        let dir = videos.join(self.field("dataset"));
        let mp4 = dir.join(format!("{}.mp4", self.field("scene_name")));
        if mp4.is_file() {
            return Ok(mp4);
        }
        let frames = dir.join(self.field("scene_name"));
        if frames.is_dir() {
            return Ok(frames);
        }
        bail!("question {} (row {}): no video at {} (nor a folder of frames {})", self.sample["id"], self.row, mp4.display(), frames.display())
    }
}

/// The parquet files of configuration `config` (for the `test` split), from the README's front
/// matter (`configs: - config_name: NAME  data_files: - split: test  path: GLOB`); without a
/// README, `*.parquet` with "debiased" in the name for `debiased` and the others for `full`.
pub fn config_files(dataset: &Path, config: &str) -> Result<Vec<PathBuf>> {
    if !dataset.is_dir() {
        bail!("{}: not a folder (expected VSI-Bench as `hf download nyu-visionx/VSI-Bench --repo-type dataset` writes it)", dataset.display());
    }
    let readme = dataset.join("README.md");
    let globs: Vec<String> = match std::fs::read_to_string(&readme) {
        Ok(text) => match front_matter_configs(&text).with_context(|| format!("{}: reading its front matter", readme.display()))? {
            Some(configs) => {
                let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
                configs.iter().find(|(n, _)| n == config).map(|(_, g)| g.clone()).with_context(|| format!("{}: no configuration '{config}' (it declares {})", readme.display(), names.join(", ")))?
            }
            None => fallback_globs(config)?,
        },
        Err(_) => fallback_globs(config)?,
    };
    let mut files = Vec::new();
    for g in &globs {
        let pattern = dataset.join(g).display().to_string();
        for p in glob::glob(&pattern).with_context(|| format!("bad data_files pattern {g}"))?.flatten() {
            if !files.contains(&p) {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{}: configuration '{config}' names {} but no such parquet file is there", dataset.display(), globs.join(", "));
    }
    Ok(files)
}

fn fallback_globs(config: &str) -> Result<Vec<String>> {
    match config {
        "full" => Ok(vec!["test*.parquet".into(), "data/test*.parquet".into()]),
        "debiased" => Ok(vec!["*debiased*.parquet".into(), "data/*debiased*.parquet".into()]),
        other => bail!("configuration '{other}': without a README only full and debiased are known"),
    }
}

/// `(config_name, [test split globs])` from a dataset card's YAML front matter; None without one.
fn front_matter_configs(text: &str) -> Result<Option<Vec<(String, Vec<String>)>>> {
    let Some(rest) = text.strip_prefix("---") else { return Ok(None) };
    let Some(end) = rest.find("\n---") else { return Ok(None) };
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&rest[..end])?;
    let Some(configs) = yaml.get("configs").and_then(|c| c.as_sequence()) else { return Ok(None) };
    let strings = |v: &serde_yaml_ng::Value| -> Vec<String> {
        match v {
            serde_yaml_ng::Value::String(s) => vec![s.clone()],
            serde_yaml_ng::Value::Sequence(s) => s.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            _ => Vec::new(),
        }
    };
    let mut out = Vec::new();
    for c in configs {
        let Some(name) = c.get("config_name").and_then(|n| n.as_str()) else { continue };
        let files = match c.get("data_files") {
            Some(serde_yaml_ng::Value::Sequence(entries)) if entries.iter().any(|e| e.is_mapping()) => {
                // Splits: the test split, else all of them.
                let test: Vec<&serde_yaml_ng::Value> = entries.iter().filter(|e| e.get("split").and_then(|s| s.as_str()) == Some("test")).collect();
                let chosen = if test.is_empty() { entries.iter().collect() } else { test };
                chosen.into_iter().flat_map(|e| e.get("path").map(strings).unwrap_or_default()).collect()
            }
            Some(v) => strings(v),
            None => Vec::new(),
        };
        out.push((name.to_string(), files));
    }
    Ok(Some(out))
}

/// The questions of a configuration, in file and row order.
pub fn load_questions(dataset: &Path, config: &str) -> Result<Vec<BenchQuestion>> {
    let mut out = Vec::new();
    for file in config_files(dataset, config)? {
        let f = std::fs::File::open(&file).with_context(|| format!("{}: cannot open", file.display()))?;
        let reader = SerializedFileReader::new(f).with_context(|| format!("{}: not a readable parquet file", file.display()))?;
        for row in reader {
            let row = row.with_context(|| format!("{}: a row cannot be read", file.display()))?;
            let sample = row.to_json_value();
            for col in ["question_type", "question", "dataset", "scene_name"] {
                if !sample[col].is_string() {
                    bail!("{}: row {} has no '{col}' text column (is this VSI-Bench?)", file.display(), out.len());
                }
            }
            out.push(BenchQuestion { row: out.len(), sample });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_come_from_the_dataset_card() {
        let card = "---\nlicense: apache-2.0\nconfigs:\n- config_name: full\n  data_files:\n  - split: test\n    path: test-*.parquet\n  default: true\n- config_name: debiased\n  data_files:\n  - split: test\n    path:\n    - test_debiased.parquet\n---\n# VSI-Bench\n";
        let c = front_matter_configs(card).unwrap().unwrap();
        assert_eq!(c, vec![("full".to_string(), vec!["test-*.parquet".to_string()]), ("debiased".to_string(), vec!["test_debiased.parquet".to_string()])]);
        assert!(front_matter_configs("# no front matter").unwrap().is_none());
        let plain = "---\nconfigs:\n- config_name: x\n  data_files: a.parquet\n---\n";
        assert_eq!(front_matter_configs(plain).unwrap().unwrap(), vec![("x".to_string(), vec!["a.parquet".to_string()])]);
    }

    #[test]
    fn a_missing_configuration_is_named() {
        let dir = tempfile::Builder::new().prefix("sv-unit-vsi-").tempdir().unwrap();
        let dir = dir.path();
        std::fs::write(dir.join("README.md"), "---\nconfigs:\n- config_name: full\n  data_files: test.parquet\n---\n").unwrap();
        let e = format!("{:#}", config_files(&dir, "debiased").unwrap_err());
        assert!(e.contains("no configuration 'debiased'") && e.contains("full"), "{e}");
        let e = format!("{:#}", config_files(&dir, "full").unwrap_err());
        assert!(e.contains("test.parquet"), "{e}");
    }
}
