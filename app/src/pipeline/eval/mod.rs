//! VSI-Bench evaluation: upstream's scoring ([`scoring`]), the dataset as the hub lays it out
//! ([`dataset`]), resumable and sharded runs ([`run`]), and their results ([`results`]).

pub mod browse;
pub mod dataset;
pub mod results;
pub mod run;
pub mod scoring;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;

/// `eval score`: rescoring results in upstream's layout (a list of `{"sample", "model_output",
/// ...}`): every entry gets upstream's cleaned answers, reward and correctness; the results and
/// metrics are written into `out`.
pub fn score_file(results_json: &Path, out: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(results_json).with_context(|| format!("{}: cannot read", results_json.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", results_json.display()))?;
    let Value::Array(mut entries) = value else { bail!("{}: expected a list of results (upstream's results layout)", results_json.display()) };
    for (i, e) in entries.iter_mut().enumerate() {
        scoring::score_result(e).with_context(|| format!("{}: entry {i}", results_json.display()))?;
    }
    crate::pipeline::fsio::create_dir_all(out)?;
    let metrics = scoring::calculate_metrics(&entries);
    results::write_json(&out.join(results::RESULTS), &Value::Array(entries))?;
    results::write_json(&out.join(results::METRICS), &metrics)?;
    Ok(metrics)
}
