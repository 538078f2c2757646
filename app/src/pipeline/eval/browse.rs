//! What the results browser shows of a run: its results and metrics, the question types, and
//! for two runs side by side the per-type differences and the questions whose answer changed.

use super::results::{METRICS, read_run};
use super::scoring::calculate_metrics;
use anyhow::Result;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Whether a folder is an evaluation run (a journal, or results with metrics).
pub fn is_run_dir(path: &Path) -> bool {
    path.is_dir() && (path.join(super::results::JOURNAL).is_file() || (path.join(super::results::RESULTS).is_file() && path.join(METRICS).is_file()))
}

/// One evaluation run, read back.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub dir: PathBuf,
    /// In row order (or file order for results without rows).
    pub results: Vec<Value>,
    pub metrics: Value,
    /// Each result's position by its [`RunSummary::key`].
    index: HashMap<String, usize>,
}

impl RunSummary {
    /// A run folder (`results.jsonl` or `results.json`, and `metrics.json` when it has one; the
    /// metrics are recomputed from the results otherwise, e.g. for a run still in progress).
    pub fn load(dir: &Path) -> Result<Self> {
        let mut results = read_run(dir)?;
        results.sort_by_key(|r| r["row"].as_u64().unwrap_or(u64::MAX));
        let metrics = match std::fs::read_to_string(dir.join(METRICS)).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
            Some(m) if dir.join(super::results::RESULTS).exists() && !dir.join(super::results::JOURNAL).exists() => m,
            _ => calculate_metrics(&results),
        };
        let index = results.iter().enumerate().map(|(i, r)| (Self::key(r), i)).collect();
        Ok(Self { dir: dir.to_path_buf(), results, metrics, index })
    }

    pub fn question_types(&self) -> Vec<String> {
        self.metrics["per_question_type"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// A result's key across runs: its row, else the sample's id.
    pub fn key(result: &Value) -> String {
        match result.get("row").and_then(Value::as_u64) {
            Some(r) => format!("row {r}"),
            None => format!("id {}", result["sample"]["id"]),
        }
    }

    /// The result with this key (the same question in another run).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.results[i])
    }

    /// Per type: (score here, score there, count here), for every type in either run.
    pub fn compare_types(&self, other: &RunSummary) -> Vec<(String, Option<f64>, Option<f64>, u64)> {
        let mut types = self.question_types();
        for t in other.question_types() {
            if !types.contains(&t) {
                types.push(t);
            }
        }
        types.sort();
        let score = |m: &Value, t: &str| m["per_question_type"][t]["score"].as_f64();
        types.into_iter().map(|t| (t.clone(), score(&self.metrics, &t), score(&other.metrics, &t), self.metrics["per_question_type"][&t]["count"].as_u64().unwrap_or(0))).collect()
    }
}

/// Whether a result answered differently in another run (its cleaned answer or its reward).
pub fn changed(a: &Value, b: Option<&Value>) -> bool {
    b.is_some_and(|b| a["cleaned_model_output"] != b["cleaned_model_output"] || a["reward"] != b["reward"])
}

/// Does a result pass the browser's filters: a question type, correct / wrong, a text search
/// (question, options, answers, scene), changed against another run.
pub fn matches(r: &Value, question_type: Option<&str>, correct: Option<bool>, search: &str) -> bool {
    let sample = &r["sample"];
    if question_type.is_some_and(|t| sample["question_type"].as_str() != Some(t)) {
        return false;
    }
    if correct.is_some_and(|c| r["correct"].as_bool() != Some(c)) {
        return false;
    }
    let needle = search.trim().to_lowercase();
    if needle.is_empty() {
        return true;
    }
    let hay = format!(
        "{} {} {} {} {} {}",
        sample["question"].as_str().unwrap_or_default(),
        sample["options"],
        sample["scene_name"].as_str().unwrap_or_default(),
        sample["ground_truth"].as_str().unwrap_or_default(),
        r["model_output"].as_str().unwrap_or_default(),
        sample["id"]
    )
    .to_lowercase();
    hay.contains(&needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_and_changes() {
        let a = json!({"row": 3, "sample": {"id": 7, "question_type": "route_planning", "question": "Which way to the Sofa?", "options": ["A. left"], "scene_name": "s1", "ground_truth": "A"}, "model_output": "A", "cleaned_model_output": "a", "reward": 1.0, "correct": true});
        assert!(matches(&a, Some("route_planning"), Some(true), "sofa"));
        assert!(!matches(&a, Some("object_counting"), None, ""));
        assert!(!matches(&a, None, Some(false), ""));
        assert!(!matches(&a, None, None, "chair"));
        assert!(matches(&a, None, None, " S1 "));
        let mut b = a.clone();
        assert!(!changed(&a, Some(&b)));
        b["cleaned_model_output"] = json!("b");
        assert!(changed(&a, Some(&b)));
        assert!(!changed(&a, None));
        assert_eq!(RunSummary::key(&a), "row 3");
    }
}
