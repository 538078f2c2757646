//! Checkpoint folders: finding the safetensors (single or sharded), reading their headers
//! without touching tensor data, telling the model kind apart, and checking a model's requested
//! tensors against what a checkpoint holds.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub file: PathBuf,
}

/// The files of a checkpoint folder.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    pub dir: PathBuf,
    pub config: Option<PathBuf>,
    pub safetensors: Vec<PathBuf>,
}

impl CheckpointDir {
    /// Finds `model.safetensors`, or the shards named by `model.safetensors.index.json`, or any
    /// `*.safetensors` in `dir`. A `.pt`/`.bin` without safetensors gets a message to convert it.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{}: not a folder (expected a checkpoint folder with config.json and *.safetensors)", dir.display());
        }
        let config = Some(dir.join("config.json")).filter(|p| p.is_file());
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let safetensors = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index).with_context(|| format!("{}: cannot read", index.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index.display()))?;
            let map = json.get("weight_map").and_then(|m| m.as_object()).with_context(|| format!("{}: no \"weight_map\" object", index.display()))?;
            let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
            files.sort();
            files.dedup();
            for f in &files {
                if !f.is_file() {
                    bail!("{}: names shard {}, which is missing", index.display(), f.display());
                }
            }
            files
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            files.sort();
            files
        };
        if safetensors.is_empty() {
            for legacy in ["model.pt", "pytorch_model.bin", "model.pth"] {
                if dir.join(legacy).is_file() {
                    bail!(
                        "{}: only {legacy} is present; pickled PyTorch checkpoints are not loaded (they can run code). \
                         Convert it once with Python: `import torch, safetensors.torch as st; st.save_file(torch.load('{legacy}'), 'model.safetensors')`",
                        dir.display()
                    );
                }
            }
            bail!("{}: no model.safetensors, model.safetensors.index.json or *.safetensors found", dir.display());
        }
        Ok(Self { dir: dir.to_path_buf(), config, safetensors })
    }

    /// The parsed `config.json`, or an empty object when there is none.
    pub fn config_json(&self) -> Result<serde_json::Value> {
        match &self.config {
            None => Ok(serde_json::Value::Object(Default::default())),
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
                serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))
            }
        }
    }

    /// Every tensor's name, dtype and shape, read from the headers alone.
    pub fn tensors(&self) -> Result<BTreeMap<String, TensorInfo>> {
        let mut all = BTreeMap::new();
        for f in &self.safetensors {
            for (name, (dtype, shape)) in read_safetensors_header(f)? {
                all.insert(name, TensorInfo { dtype, shape, file: f.clone() });
            }
        }
        Ok(all)
    }
}

/// Reads a safetensors header (8-byte length + JSON) without reading tensor data.
pub fn read_safetensors_header(path: &Path) -> Result<BTreeMap<String, (String, Vec<usize>)>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let file_len = file.metadata()?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).with_context(|| format!("{}: too short to be a safetensors file", path.display()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || header_len + 8 > file_len {
        bail!("{}: not a safetensors file (header length {header_len} for a {file_len}-byte file)", path.display());
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let json: serde_json::Value = serde_json::from_slice(&header).with_context(|| format!("{}: safetensors header is not valid JSON", path.display()))?;
    let obj = json.as_object().with_context(|| format!("{}: safetensors header is not an object", path.display()))?;
    let data_len = file_len - 8 - header_len;
    let mut out = BTreeMap::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v.get("dtype").and_then(|d| d.as_str()).unwrap_or("?").to_string();
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect())
            .unwrap_or_default();
        if let Some(offsets) = v.get("data_offsets").and_then(|o| o.as_array()) {
            let end = offsets.get(1).and_then(|x| x.as_u64()).unwrap_or(0);
            if end > data_len {
                bail!("{}: tensor {name} extends past the end of the file (truncated download?)", path.display());
            }
        }
        out.insert(name.clone(), (dtype, shape));
    }
    Ok(out)
}

/// What a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Vggt,
    Qwen25Vl,
    SpatialMllm,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelKind::Vggt => "VGGT",
            ModelKind::Qwen25Vl => "Qwen2.5-VL",
            ModelKind::SpatialMllm => "Spatial-MLLM",
        })
    }
}

/// Tells the kind from `model_type` or, failing that, from the tensor names.
pub fn detect_kind(config: &serde_json::Value, names: &[&str]) -> Option<ModelKind> {
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    match config.get("model_type").and_then(|m| m.as_str()) {
        Some("spatial-mllm") => return Some(ModelKind::SpatialMllm),
        Some("qwen2_5_vl") if has("spatial_encoder.") => return Some(ModelKind::SpatialMllm),
        Some("qwen2_5_vl") => return Some(ModelKind::Qwen25Vl),
        Some("vggt") => return Some(ModelKind::Vggt),
        _ => {}
    }
    if has("spatial_encoder.vggt_model.") && has("visual.") {
        Some(ModelKind::SpatialMllm)
    } else if has("visual.") && has("model.layers.") {
        Some(ModelKind::Qwen25Vl)
    } else if has("aggregator.") {
        Some(ModelKind::Vggt)
    } else {
        None
    }
}

/// A VarBuilder backend that records every tensor a model asks for and hands back zero-cost
/// broadcast zeros, so a model of any size can be "built" to learn its exact tensor list.
#[derive(Clone, Default)]
pub struct RecordingBackend {
    requested: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
}

impl RecordingBackend {
    pub fn var_builder(&self, dtype: DType) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, Device::Cpu)
    }
    pub fn requested(&self) -> BTreeMap<String, Vec<usize>> {
        self.requested.lock().unwrap().clone()
    }
}

impl candle_nn::var_builder::SimpleBackend for RecordingBackend {
    fn get(&self, s: Shape, name: &str, _h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.requested.lock().unwrap().insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("recording backend: {name} requested without a shape")
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Differences between what a model asks for and what a checkpoint has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckReport {
    pub missing: Vec<(String, Vec<usize>)>,
    /// (name, expected shape, checkpoint shape)
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Tensors present in the checkpoint but not used by the model.
    pub unexpected: Vec<String>,
    /// Unused tensors that are expected to be unused (e.g. VGGT's track head).
    pub ignored: Vec<String>,
    pub matched: usize,
}

impl CheckReport {
    pub fn loads(&self) -> bool {
        self.missing.is_empty() && self.mismatched.is_empty()
    }
}

/// Compares requested tensors with a checkpoint; names starting with any of `ignorable` are
/// unused on purpose.
pub fn compare(requested: &BTreeMap<String, Vec<usize>>, present: &BTreeMap<String, Vec<usize>>, ignorable: &[&str]) -> CheckReport {
    let mut report = CheckReport::default();
    for (name, shape) in requested {
        match present.get(name) {
            None => report.missing.push((name.clone(), shape.clone())),
            Some(s) if s != shape => report.mismatched.push((name.clone(), shape.clone(), s.clone())),
            Some(_) => report.matched += 1,
        }
    }
    for name in present.keys().filter(|n| !requested.contains_key(*n)) {
        if ignorable.iter().any(|p| name.starts_with(p)) {
            report.ignored.push(name.clone());
        } else {
            report.unexpected.push(name.clone());
        }
    }
    report
}
