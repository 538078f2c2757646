//! The geometry of a run, wherever it came from (VGGT or the demo scene's ground truth):
//! frames at network resolution, depth and world points with confidences, and cameras in VGGT's
//! convention. Saved and loaded as safetensors with upstream's key names.

use crate::vggt::{Camera, VggtOutput};
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Reconstruction {
    /// Frame count S, height H and width W of every per-pixel map.
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// [S, H, W, 3] RGB bytes of the frames the geometry belongs to.
    pub images: Vec<u8>,
    /// [S, H, W] z-depth and its confidence.
    pub depth: Vec<f32>,
    pub depth_conf: Vec<f32>,
    /// [S, H, W, 3] world points (first camera's frame) and their confidence.
    pub world_points: Vec<f32>,
    pub world_points_conf: Vec<f32>,
    /// [S, 9] pose encodings when the geometry came from VGGT (absent for ground truth).
    pub pose_enc: Option<Vec<f32>>,
    pub cameras: Vec<Camera>,
    /// Index of each frame in the source video or folder.
    pub frame_indices: Vec<i64>,
}

fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

impl Reconstruction {
    /// Collects a VGGT run. `images`: [S, 3, H, W] in [0, 1], the model input.
    pub fn from_vggt(images: &Tensor, out: &VggtOutput, frame_indices: Vec<i64>) -> Result<Self> {
        let (s, _, h, w) = images.dims4()?;
        let images_u8 = (images.to_dtype(DType::F32)?.permute((0, 2, 3, 1))? * 255.0)?.round()?.clamp(0.0, 255.0)?.to_dtype(DType::U8)?;
        Ok(Self {
            frames: s,
            height: h,
            width: w,
            images: images_u8.flatten_all()?.to_vec1()?,
            depth: to_vec_f32(&out.depth)?,
            depth_conf: to_vec_f32(&out.depth_conf)?,
            world_points: to_vec_f32(&out.world_points)?,
            world_points_conf: to_vec_f32(&out.world_points_conf)?,
            pose_enc: Some(to_vec_f32(&out.pose_enc)?),
            cameras: out.cameras((h, w))?,
            frame_indices,
        })
    }

    pub fn pixels_per_frame(&self) -> usize {
        self.height * self.width
    }

    /// World points obtained by unprojecting depth with the cameras (usually more accurate than
    /// the point head; the upstream demos' default).
    pub fn points_from_depth(&self) -> Vec<f32> {
        let n = self.pixels_per_frame();
        (0..self.frames)
            .flat_map(|f| self.cameras[f].unproject(&self.depth[f * n..(f + 1) * n], self.height, self.width))
            .collect()
    }

    /// Writes the upstream-named tensors (`images` [S,3,H,W] in [0,1], `depth` [S,H,W,1], ...) as
    /// safetensors to `out`, with a CRC-32 of every tensor's bytes in the header's metadata
    /// (`crc32.NAME`) so [`Reconstruction::load`] notices a corrupted file.
    pub fn write_safetensors(&self, out: &mut dyn std::io::Write) -> Result<()> {
        self.write_safetensors_with(out, &[])
    }

    /// [`Self::write_safetensors`] with more entries in the header's metadata.
    pub fn write_safetensors_with(&self, out: &mut dyn std::io::Write, metadata: &[(&str, &str)]) -> Result<()> {
        let (s, h, w) = (self.frames, self.height, self.width);
        let mut images = vec![0f32; s * 3 * h * w];
        for f in 0..s {
            for c in 0..3 {
                let plane = &mut images[(f * 3 + c) * h * w..][..h * w];
                for (i, v) in plane.iter_mut().enumerate() {
                    *v = self.images[(f * h * w + i) * 3 + c] as f32 / 255.0;
                }
            }
        }
        let extr: Vec<f32> = self.cameras.iter().flat_map(|c| c.extrinsic.iter().flatten().copied().collect::<Vec<_>>()).collect();
        let intr: Vec<f32> = self.cameras.iter().flat_map(|c| c.intrinsic.iter().flatten().copied().collect::<Vec<_>>()).collect();
        let mut tensors = vec![
            OutTensor::f32("images", vec![s, 3, h, w], &images),
            OutTensor::f32("depth", vec![s, h, w, 1], &self.depth),
            OutTensor::f32("depth_conf", vec![s, h, w], &self.depth_conf),
            OutTensor::f32("world_points", vec![s, h, w, 3], &self.world_points),
            OutTensor::f32("world_points_conf", vec![s, h, w], &self.world_points_conf),
            OutTensor::f32("extrinsic", vec![s, 3, 4], &extr),
            OutTensor::f32("intrinsic", vec![s, 3, 3], &intr),
            OutTensor { name: "frame_indices", dtype: "I64", shape: vec![s], bytes: self.frame_indices.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into() },
        ];
        if let Some(p) = &self.pose_enc {
            tensors.push(OutTensor::f32("pose_enc", vec![s, 9], p));
        }
        write_safetensors(out, &tensors, metadata)
    }

    /// Reads a file written by [`Reconstruction::save`] (or upstream tensors with the same names).
    /// Only `world_points` and `world_points_conf` are required.
    /// A file carrying CRC-32s (every file this app writes) is verified first: a corrupted one is
    /// an error, never geometry full of garbage.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        verify_checksums(&bytes).with_context(|| format!("{}: corrupted", path.display()))?;
        let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).with_context(|| format!("{}: not a readable safetensors file", path.display()))?;
        drop(bytes);
        let get = |k: &str| map.get(k).with_context(|| format!("{}: has no `{k}` tensor", path.display()));
        let wp = get("world_points")?;
        let dims = wp.dims().to_vec();
        let (s, h, w) = match dims.as_slice() {
            [s, h, w, 3] => (*s, *h, *w),
            [1, s, h, w, 3] => (*s, *h, *w),
            other => bail!("{}: `world_points` has shape {other:?}, expected [S,H,W,3]", path.display()),
        };
        let world_points_conf = to_vec_f32(get("world_points_conf")?)?;
        if world_points_conf.len() != s * h * w {
            bail!("{}: `world_points_conf` has {} values, expected S*H*W = {}", path.display(), world_points_conf.len(), s * h * w);
        }
        let opt = |k: &str, n: usize| -> Result<Vec<f32>> {
            match map.get(k) {
                Some(t) => {
                    let v = to_vec_f32(t)?;
                    if v.len() != n {
                        bail!("{}: `{k}` has {} values, expected {n}", path.display(), v.len());
                    }
                    Ok(v)
                }
                None => Ok(vec![0.0; n]),
            }
        };
        let images = match map.get("images") {
            Some(t) if t.dims() != [s, 3, h, w] => bail!("{}: `images` has shape {:?}, expected [{s}, 3, {h}, {w}] to match `world_points`", path.display(), t.dims()),
            Some(t) => (t.to_dtype(DType::F32)?.permute((0, 2, 3, 1))? * 255.0)?.round()?.clamp(0.0, 255.0)?.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?,
            None => vec![160; s * h * w * 3],
        };
        let extr = opt("extrinsic", s * 12)?;
        let intr = opt("intrinsic", s * 9)?;
        let cameras = (0..s)
            .map(|f| {
                let mut c = Camera { extrinsic: [[0.0; 4]; 3], intrinsic: [[0.0; 3]; 3] };
                for r in 0..3 {
                    c.extrinsic[r].copy_from_slice(&extr[f * 12 + r * 4..][..4]);
                    c.intrinsic[r].copy_from_slice(&intr[f * 9 + r * 3..][..3]);
                }
                c
            })
            .collect();
        let frame_indices: Vec<i64> = match map.get("frame_indices") {
            Some(t) => t.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?,
            None => (0..s as i64).collect(),
        };
        if frame_indices.len() != s {
            bail!("{}: `frame_indices` has {} entries for {s} frames", path.display(), frame_indices.len());
        }
        Ok(Self {
            frames: s,
            height: h,
            width: w,
            images,
            depth: opt("depth", s * h * w)?,
            depth_conf: opt("depth_conf", s * h * w)?,
            world_points: to_vec_f32(wp)?,
            world_points_conf,
            pose_enc: map.get("pose_enc").map(to_vec_f32).transpose()?,
            cameras,
            frame_indices,
        })
    }
}

/// A tensor to write: safetensors dtype name, shape and little-endian bytes.
struct OutTensor<'a> {
    name: &'static str,
    dtype: &'static str,
    shape: Vec<usize>,
    bytes: std::borrow::Cow<'a, [u8]>,
}

impl<'a> OutTensor<'a> {
    fn f32(name: &'static str, shape: Vec<usize>, data: &'a [f32]) -> Self {
        Self { name, dtype: "F32", shape, bytes: f32_bytes(data).into() }
    }
}

/// The bytes of an f32 slice (the file format is little-endian, as is every target this builds for).
fn f32_bytes(data: &[f32]) -> &[u8] {
    const _: () = assert!(cfg!(target_endian = "little"), "safetensors are little-endian");
    // SAFETY: any f32 is 4 initialised bytes; the slice covers exactly the same memory.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

const CRC_PREFIX: &str = "crc32.";

/// Streams tensors as safetensors (header, padded to 8 bytes, then the data in order), with each
/// tensor's CRC-32 in the metadata.
fn write_safetensors(out: &mut dyn std::io::Write, tensors: &[OutTensor], extra: &[(&str, &str)]) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut metadata = serde_json::Map::new();
    for (k, v) in extra {
        metadata.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.bytes.len();
        header.insert(t.name.to_string(), serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}));
        metadata.insert(format!("{CRC_PREFIX}{}", t.name), serde_json::Value::String(format!("{:08x}", crc32fast::hash(&t.bytes))));
        offset = end;
    }
    header.insert("__metadata__".into(), serde_json::Value::Object(metadata));
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    for t in tensors {
        out.write_all(&t.bytes)?;
    }
    Ok(())
}

/// Checks the `crc32.NAME` entries of a safetensors file's metadata against the tensors' bytes.
fn verify_checksums(bytes: &[u8]) -> Result<()> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("not a readable safetensors file ({e})"))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("not a readable safetensors file ({e})"))?;
    let Some(meta) = meta.metadata() else { return Ok(()) };
    for (key, want) in meta {
        let Some(name) = key.strip_prefix(CRC_PREFIX) else { continue };
        let view = st.tensor(name).map_err(|_| anyhow::anyhow!("its checksums name tensor `{name}`, which is missing"))?;
        let got = format!("{:08x}", crc32fast::hash(view.data()));
        if &got != want {
            bail!("tensor `{name}` fails its checksum (CRC-32 {got}, written as {want}): the file was damaged after it was written");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Reconstruction {
        let (s, h, w) = (2, 3, 4);
        let n = s * h * w;
        Reconstruction {
            frames: s,
            height: h,
            width: w,
            images: (0..n * 3).map(|i| (i * 7 % 256) as u8).collect(),
            depth: (0..n).map(|i| 1.0 + i as f32 * 0.1).collect(),
            depth_conf: (0..n).map(|i| 2.0 + i as f32).collect(),
            world_points: (0..n * 3).map(|i| i as f32 * 0.01 - 0.3).collect(),
            world_points_conf: (0..n).map(|i| 1.5 + i as f32).collect(),
            pose_enc: Some((0..s * 9).map(|i| i as f32).collect()),
            cameras: (0..s).map(|f| Camera { extrinsic: [[1.0, 0.0, 0.0, f as f32], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], intrinsic: [[5.0, 0.0, 2.0], [0.0, 5.0, 1.5], [0.0, 0.0, 1.0]] }).collect(),
            frame_indices: vec![3, 17],
        }
    }

    /// A file path in a folder removed when the returned guard drops.
    fn tmp(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::Builder::new().prefix("sv-unit-rec-").tempdir().unwrap();
        let path = d.path().join(name);
        (d, path)
    }

    #[test]
    fn round_trip_keeps_everything_and_reads_back_in_candle() {
        let rec = small();
        let (_dir, path) = tmp("rt.safetensors");
        let mut bytes = Vec::new();
        rec.write_safetensors(&mut bytes).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        // Other readers see upstream's names and shapes.
        let map = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(map["images"].dims(), &[2, 3, 3, 4]);
        assert_eq!(map["frame_indices"].to_vec1::<i64>().unwrap(), vec![3, 17]);
        let back = Reconstruction::load(&path).unwrap();
        assert_eq!(back.images, rec.images);
        assert_eq!(back.depth, rec.depth);
        assert_eq!(back.world_points, rec.world_points);
        assert_eq!(back.world_points_conf, rec.world_points_conf);
        assert_eq!(back.pose_enc, rec.pose_enc);
        assert_eq!(back.frame_indices, rec.frame_indices);
        assert_eq!(back.cameras[1].extrinsic, rec.cameras[1].extrinsic);
    }

    #[test]
    fn a_damaged_file_fails_its_checksum() {
        let rec = small();
        let mut bytes = Vec::new();
        rec.write_safetensors(&mut bytes).unwrap();
        // Flip a byte inside the data (past the header), as a bad sector or a stray write would.
        let n = bytes.len();
        bytes[n - 40] ^= 0x55;
        let (_dir, path) = tmp("bad.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", Reconstruction::load(&path).unwrap_err());
        assert!(err.contains("bad.safetensors") && err.contains("corrupted") && err.contains("checksum"), "{err}");
    }
}
