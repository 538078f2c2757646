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

    /// The dtype most of the checkpoint's floating-point values are stored in (by element
    /// count), from the headers alone; None without floating-point tensors.
    pub fn stored_float_dtype(&self) -> Result<Option<DType>> {
        let mut counts = BTreeMap::<&'static str, (DType, usize)>::new();
        for info in self.tensors()?.values() {
            if let Some(dtype) = safetensors_dtype(&info.dtype).filter(|d| d.is_float()) {
                counts.entry(dtype.as_str()).or_insert((dtype, 0)).1 += info.shape.iter().product::<usize>();
            }
        }
        Ok(counts.into_values().max_by_key(|&(_, n)| n).map(|(dtype, _)| dtype))
    }
}

/// Reads a safetensors header (8-byte length + JSON) without reading tensor data.
pub fn read_safetensors_header(path: &Path) -> Result<BTreeMap<String, (String, Vec<usize>)>> {
    Ok(read_header_entries(path)?.into_iter().map(|(name, e)| (name, (e.dtype, e.shape))).collect())
}

/// One tensor's header entry with where its bytes lie in the file.
#[derive(Debug, Clone)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// A safetensors header's JSON, with the file's length and the header's.
fn read_header_json(path: &Path) -> Result<(serde_json::Value, u64, u64)> {
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
    Ok((json, file_len, header_len))
}

/// A safetensors file's `__metadata__` (string to string), without reading tensor data.
pub fn read_safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let (json, _, _) = read_header_json(path)?;
    Ok(json.get("__metadata__").and_then(|m| m.as_object()).map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()).unwrap_or_default())
}

fn read_header_entries(path: &Path) -> Result<BTreeMap<String, HeaderEntry>> {
    let (json, file_len, header_len) = read_header_json(path)?;
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
        let offsets = v.get("data_offsets").and_then(|o| o.as_array()).with_context(|| format!("{}: tensor {name} has no data_offsets", path.display()))?;
        let (begin, end) = (offsets.first().and_then(|x| x.as_u64()).unwrap_or(0), offsets.get(1).and_then(|x| x.as_u64()).unwrap_or(0));
        if end > data_len || begin > end {
            bail!("{}: tensor {name} extends past the end of the file (truncated download?)", path.display());
        }
        out.insert(name.clone(), HeaderEntry { dtype, shape, start: 8 + header_len + begin, end: 8 + header_len + end });
    }
    Ok(out)
}

/// The size and modification time of a file, to notice it changing under a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    fn of(file: &std::fs::File) -> std::io::Result<Self> {
        let m = file.metadata()?;
        Ok(Self { len: m.len(), modified: m.modified().ok() })
    }
}

/// Checkpoint tensors read from their files on demand with positioned reads: no memory map, so a
/// file that is truncated or rewritten while a model loads ends in an error naming it (a memory
/// map would take the process down with SIGBUS). Peak memory is the same as a map's: each tensor
/// is copied into its own storage either way.
pub struct CheckpointReader {
    entries: BTreeMap<String, (usize, HeaderEntry)>,
    files: Vec<(PathBuf, std::fs::File, FileStamp)>,
}

impl CheckpointReader {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut entries = BTreeMap::new();
        let mut files = Vec::with_capacity(paths.len());
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
            let stamp = FileStamp::of(&file).with_context(|| format!("{}: cannot read its size", path.display()))?;
            for (name, e) in read_header_entries(path)? {
                entries.insert(name, (i, e));
            }
            files.push((path.clone(), file, stamp));
        }
        Ok(Self { entries, files })
    }

    /// A VarBuilder over these files that converts to `dtype` on `device`.
    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(ReaderBackend(self.clone())), dtype, device.clone())
    }

    /// Fails when a file changed (size or modification time) since it was opened: a model built
    /// from it may mix old and new bytes.
    pub fn verify_unchanged(&self) -> Result<()> {
        for (path, _, stamp) in &self.files {
            let now = std::fs::metadata(path).map(|m| FileStamp { len: m.len(), modified: m.modified().ok() });
            match now {
                Ok(now) if now == *stamp => {}
                Ok(now) => bail!(
                    "{}: the file changed while the model was loading ({} bytes then, {} now); load it again once it is complete",
                    path.display(),
                    stamp.len,
                    now.len
                ),
                Err(e) => bail!("{}: the file disappeared while the model was loading ({e})", path.display()),
            }
        }
        Ok(())
    }

    fn read(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        use std::os::unix::fs::FileExt;
        let Some((i, e)) = self.entries.get(name) else {
            return Err(candle_core::Error::CannotFindTensor { path: name.to_string() }.bt());
        };
        let (path, file, _) = &self.files[*i];
        let dtype = safetensors_dtype(&e.dtype).ok_or_else(|| candle_core::Error::Msg(format!("{}: tensor {name} has dtype {}, which this app cannot read", path.display(), e.dtype)))?;
        let mut bytes = vec![0u8; (e.end - e.start) as usize];
        file.read_exact_at(&mut bytes, e.start).map_err(|err| {
            candle_core::Error::Msg(format!(
                "{}: cannot read tensor {name} at bytes {}..{} ({err}); the file was truncated or changed while loading",
                path.display(),
                e.start,
                e.end
            ))
        })?;
        Tensor::from_raw_buffer(&bytes, dtype, &e.shape, device)
    }
}

fn safetensors_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

struct ReaderBackend(Arc<CheckpointReader>);

impl candle_nn::var_builder::SimpleBackend for ReaderBackend {
    fn get(&self, s: Shape, name: &str, _h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.0.read(name, dev)?.to_dtype(dtype)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape { msg: format!("shape mismatch for {name}"), expected: s, got: t.shape().clone() }.bt());
        }
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.read(name, dev)?.to_dtype(dtype)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.entries.contains_key(name)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write_checkpoint(path: &Path) -> BTreeMap<String, Tensor> {
        let dev = Device::Cpu;
        let mut map = BTreeMap::new();
        map.insert("a.weight".to_string(), Tensor::arange(0f32, 12.0, &dev).unwrap().reshape((3, 4)).unwrap());
        map.insert("b.weight".to_string(), Tensor::arange(0f32, 4096.0, &dev).unwrap().to_dtype(DType::BF16).unwrap());
        candle_core::safetensors::save(&map.clone().into_iter().collect(), path).unwrap();
        map
    }

    /// A model.safetensors path in a folder removed when the returned guard drops.
    fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::Builder::new().prefix(&format!("sv-unit-ckpt-{name}-")).tempdir().unwrap();
        let path = d.path().join("model.safetensors");
        (d, path)
    }

    #[test]
    fn reader_gives_the_tensors_converted_to_the_asked_dtype() {
        let (_dir, path) = tmp("read");
        let want = write_checkpoint(&path);
        let reader = Arc::new(CheckpointReader::open(std::slice::from_ref(&path)).unwrap());
        let vb = reader.var_builder(DType::F32, &Device::Cpu);
        let a = vb.get((3, 4), "a.weight").unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), want["a.weight"].to_vec2::<f32>().unwrap());
        let b = vb.get(4096, "b.weight").unwrap();
        assert_eq!(b.dtype(), DType::F32);
        assert_eq!(b.to_vec1::<f32>().unwrap()[4095], 4096.0); // bf16 rounds 4095 up
        assert!(vb.get((4, 3), "a.weight").is_err());
        assert!(vb.get(1, "missing").is_err());
        reader.verify_unchanged().unwrap();
    }

    /// The stored precision is the one holding most values: 4,096 bf16 against 12 f32 here.
    #[test]
    fn the_stored_dtype_is_the_one_of_most_values() {
        let (dir, path) = tmp("dtype");
        write_checkpoint(&path);
        assert_eq!(CheckpointDir::open(dir.path()).unwrap().stored_float_dtype().unwrap(), Some(DType::BF16));
    }

    /// A file cut short while a model loads: an error naming it, never a signal.
    #[test]
    fn a_file_truncated_while_loading_is_an_error_naming_it() {
        let (_dir, path) = tmp("truncated");
        write_checkpoint(&path);
        let reader = Arc::new(CheckpointReader::open(std::slice::from_ref(&path)).unwrap());
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 100).unwrap();
        let vb = reader.var_builder(DType::F32, &Device::Cpu);
        let err = vb.get(4096, "b.weight").unwrap_err().to_string();
        assert!(err.contains("model.safetensors") && err.contains("truncated or changed"), "{err}");
        let err = format!("{:#}", reader.verify_unchanged().unwrap_err());
        assert!(err.contains("changed while the model was loading"), "{err}");
    }
}
