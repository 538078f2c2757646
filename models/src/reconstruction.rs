//! The geometry of a run, wherever it came from (VGGT or the demo scene's ground truth):
//! frames at network resolution, depth and world points with confidences, and cameras in VGGT's
//! convention. Saved and loaded as safetensors with upstream's key names.

use crate::vggt::{Camera, VggtOutput};
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
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

    /// Writes the upstream-named tensors (`images` [S,3,H,W] in [0,1], `depth` [S,H,W,1], ...).
    pub fn save(&self, path: &Path) -> Result<()> {
        let (s, h, w) = (self.frames, self.height, self.width);
        let dev = Device::Cpu;
        let images = Tensor::from_vec(self.images.clone(), (s, h, w, 3), &dev)?.permute((0, 3, 1, 2))?.to_dtype(DType::F32)? / 255.0;
        let mut map: HashMap<String, Tensor> = HashMap::new();
        map.insert("images".into(), images?.contiguous()?);
        map.insert("depth".into(), Tensor::from_vec(self.depth.clone(), (s, h, w, 1), &dev)?);
        map.insert("depth_conf".into(), Tensor::from_vec(self.depth_conf.clone(), (s, h, w), &dev)?);
        map.insert("world_points".into(), Tensor::from_vec(self.world_points.clone(), (s, h, w, 3), &dev)?);
        map.insert("world_points_conf".into(), Tensor::from_vec(self.world_points_conf.clone(), (s, h, w), &dev)?);
        if let Some(p) = &self.pose_enc {
            map.insert("pose_enc".into(), Tensor::from_vec(p.clone(), (s, 9), &dev)?);
        }
        let extr: Vec<f32> = self.cameras.iter().flat_map(|c| c.extrinsic.iter().flatten().copied().collect::<Vec<_>>()).collect();
        let intr: Vec<f32> = self.cameras.iter().flat_map(|c| c.intrinsic.iter().flatten().copied().collect::<Vec<_>>()).collect();
        map.insert("extrinsic".into(), Tensor::from_vec(extr, (s, 3, 4), &dev)?);
        map.insert("intrinsic".into(), Tensor::from_vec(intr, (s, 3, 3), &dev)?);
        map.insert("frame_indices".into(), Tensor::from_vec(self.frame_indices.clone(), s, &dev)?);
        candle_core::safetensors::save(&map, path).with_context(|| format!("{}: cannot write", path.display()))
    }

    /// Reads a file written by [`Reconstruction::save`] (or upstream tensors with the same names).
    /// Only `world_points` and `world_points_conf` are required.
    pub fn load(path: &Path) -> Result<Self> {
        let map = candle_core::safetensors::load(path, &Device::Cpu).with_context(|| format!("{}: not a readable safetensors file", path.display()))?;
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

    /// Writes a binary little-endian PLY of the points whose confidence reaches the given
    /// percentile, coloured by their pixel. Returns the number of points written.
    pub fn write_ply(&self, path: &Path, points: &[f32], conf: &[f32], percentile: f64) -> Result<usize> {
        use std::io::Write;
        let threshold = crate::sampling::percentile_linear(conf, percentile);
        let keep: Vec<usize> = (0..conf.len()).filter(|&i| conf[i] as f64 >= threshold && conf[i] > 1e-5 && points[i * 3..i * 3 + 3].iter().all(|v| v.is_finite())).collect();
        let file = std::fs::File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        write!(out, "ply\nformat binary_little_endian 1.0\nelement vertex {}\nproperty float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n", keep.len())?;
        for &i in &keep {
            for a in 0..3 {
                out.write_all(&points[i * 3 + a].to_le_bytes())?;
            }
            out.write_all(&self.images[i * 3..i * 3 + 3])?;
        }
        out.flush()?;
        Ok(keep.len())
    }
}
