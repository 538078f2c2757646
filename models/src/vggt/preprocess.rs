//! `load_and_preprocess_images` of upstream VGGT: frames to [S, 3, H, W] in [0, 1], width 518 and
//! sides multiples of 14, in `crop` or `pad` mode; mixed sizes are padded with white.
//! The resize is Pillow's BICUBIC on 8-bit data ([`crate::resample`]).

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use std::path::Path;

pub const TARGET_SIZE: usize = 518;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// Width 518, height scaled and rounded to a multiple of 14, centre-cropped to 518.
    Crop,
    /// Longer side 518, then padded to 518x518 with white.
    Pad,
    /// Frames used as they are (each side must be a multiple of 14).
    None,
}

impl std::str::FromStr for ResizeMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "crop" => Ok(Self::Crop),
            "pad" => Ok(Self::Pad),
            "none" => Ok(Self::None),
            other => bail!("unknown resize mode '{other}': expected crop, pad or none"),
        }
    }
}

/// An 8-bit RGB frame, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbFrame {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbFrame {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), width * height * 3, "RGB buffer size");
        Self { width, height, data }
    }

    /// Reads a PNG/JPEG; transparency is composited onto white as upstream does.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot read file", path.display()))?;
        if meta.len() == 0 {
            bail!("{}: the file is empty (0 bytes)", path.display());
        }
        let img = image::open(path).with_context(|| format!("{}: not a readable image", path.display()))?;
        Ok(Self::from_dynamic(img))
    }

    pub fn from_dynamic(img: image::DynamicImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        if img.color().has_alpha() {
            let rgba = img.to_rgba8();
            let mut data = Vec::with_capacity(w * h * 3);
            for p in rgba.pixels() {
                let a = p[3] as u32;
                for c in 0..3 {
                    // Pillow's alpha_composite onto white, rounded.
                    data.push(((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8);
                }
            }
            Self::new(w, h, data)
        } else {
            Self::new(w, h, img.to_rgb8().into_raw())
        }
    }

    /// Pillow-equivalent bicubic resize.
    pub fn resize(&self, width: usize, height: usize) -> Result<Self> {
        if width == self.width && height == self.height {
            return Ok(self.clone());
        }
        if width == 0 || height == 0 {
            bail!("cannot resize a {}x{} frame to {width}x{height}", self.width, self.height);
        }
        Ok(Self::new(width, height, crate::resample::resize_bicubic_u8(&self.data, self.width, self.height, 3, width, height)))
    }
}

/// Python's `round` (half to even), as upstream uses it for the target height.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 { (r - x.signum()) as i64 } else { r as i64 }
}

/// Size (width, height) a frame of `w x h` is resized to before cropping or padding.
pub fn resized_size(w: usize, h: usize, mode: ResizeMode) -> (usize, usize) {
    resized_size_for(w, h, mode, TARGET_SIZE)
}

/// [`resized_size`] for a target size other than upstream's 518 (a multiple of 14; the app's
/// smaller CPU candidates).
pub fn resized_size_for(w: usize, h: usize, mode: ResizeMode, target: usize) -> (usize, usize) {
    let t = target as f64;
    let snap = |v: f64| (round_half_even(v / 14.0) * 14).max(14) as usize;
    match mode {
        ResizeMode::Crop => (target, snap(h as f64 * (t / w as f64))),
        ResizeMode::Pad if w >= h => (target, snap(h as f64 * (t / w as f64))),
        ResizeMode::Pad => (snap(w as f64 * (t / h as f64)), target),
        ResizeMode::None => (w, h),
    }
}

/// The network input size (width, height) a frame of `w x h` gets in `mode`.
pub fn network_size(w: usize, h: usize, mode: ResizeMode) -> (usize, usize) {
    network_size_for(w, h, mode, TARGET_SIZE)
}

/// [`network_size`] for another target size.
pub fn network_size_for(w: usize, h: usize, mode: ResizeMode, target: usize) -> (usize, usize) {
    match mode {
        ResizeMode::Crop => {
            let (rw, rh) = resized_size_for(w, h, mode, target);
            (rw, rh.min(target))
        }
        ResizeMode::Pad => (target, target),
        ResizeMode::None => (w, h),
    }
}

/// A CHW float image in [0, 1].
struct Chw {
    w: usize,
    h: usize,
    data: Vec<f32>,
}

impl Chw {
    fn from_rgb(f: &RgbFrame) -> Self {
        let n = f.width * f.height;
        let mut data = vec![0f32; 3 * n];
        for (i, px) in f.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * n + i] = px[c] as f32 / 255.0;
            }
        }
        Self { w: f.width, h: f.height, data }
    }

    fn crop_rows(self, start: usize, rows: usize) -> Self {
        let n = self.w * self.h;
        let mut data = Vec::with_capacity(3 * rows * self.w);
        for c in 0..3 {
            data.extend_from_slice(&self.data[c * n + start * self.w..c * n + (start + rows) * self.w]);
        }
        Self { w: self.w, h: rows, data }
    }

    /// Centred padding to `w x h` with `value` (top/left get the smaller half).
    fn pad_to(self, w: usize, h: usize, value: f32) -> Self {
        if w == self.w && h == self.h {
            return self;
        }
        let (top, left) = ((h - self.h) / 2, (w - self.w) / 2);
        let mut data = vec![value; 3 * w * h];
        for c in 0..3 {
            for y in 0..self.h {
                let src = &self.data[c * self.w * self.h + y * self.w..][..self.w];
                data[c * w * h + (y + top) * w + left..][..self.w].copy_from_slice(src);
            }
        }
        Self { w, h, data }
    }
}

/// Preprocesses frames for VGGT: [S, 3, H, W] f32 in [0, 1]. `names` label errors (file names).
pub fn preprocess_frames(frames: &[RgbFrame], names: &[String], mode: ResizeMode, device: &Device) -> Result<Tensor> {
    preprocess_frames_for(frames, names, mode, TARGET_SIZE, device)
}

/// [`preprocess_frames`] to another target size (a multiple of 14).
pub fn preprocess_frames_for(frames: &[RgbFrame], names: &[String], mode: ResizeMode, target: usize, device: &Device) -> Result<Tensor> {
    if target == 0 || target % 14 != 0 {
        bail!("the VGGT input size must be a positive multiple of 14, got {target}");
    }
    if frames.is_empty() {
        bail!("no frames to preprocess");
    }
    let mut out = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let name = names.get(i).cloned().unwrap_or_else(|| format!("frame {i}"));
        let img = match mode {
            ResizeMode::None => {
                if f.width % 14 != 0 || f.height % 14 != 0 {
                    bail!("{name}: --resize none needs sides that are multiples of 14, but the frame is {}x{}", f.width, f.height);
                }
                Chw::from_rgb(f)
            }
            ResizeMode::Crop => {
                let (w, h) = resized_size_for(f.width, f.height, mode, target);
                let img = Chw::from_rgb(&f.resize(w, h).with_context(|| format!("{name}: resize failed"))?);
                if h > target { img.crop_rows((h - target) / 2, target) } else { img }
            }
            ResizeMode::Pad => {
                let (w, h) = resized_size_for(f.width, f.height, mode, target);
                Chw::from_rgb(&f.resize(w, h).with_context(|| format!("{name}: resize failed"))?).pad_to(target, target, 1.0)
            }
        };
        out.push(img);
    }
    let max_w = out.iter().map(|c| c.w).max().unwrap();
    let max_h = out.iter().map(|c| c.h).max().unwrap();
    let s = out.len();
    let mut data = Vec::with_capacity(s * 3 * max_w * max_h);
    for img in out {
        data.extend(img.pad_to(max_w, max_h, 1.0).data);
    }
    Ok(Tensor::from_vec(data, (s, 3, max_h, max_w), device)?)
}

/// Image files of a folder (PNG/JPEG), sorted by name.
pub fn list_image_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot read folder", dir.display()))?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
                .unwrap_or(false)
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: the folder has no PNG or JPEG images", dir.display());
    }
    Ok(files)
}

/// Loads and preprocesses image files as upstream's `load_and_preprocess_images(paths, mode)`.
pub fn load_and_preprocess_images(paths: &[std::path::PathBuf], mode: ResizeMode, device: &Device) -> Result<Tensor> {
    let frames = paths.iter().map(|p| RgbFrame::open(p)).collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    preprocess_frames(&frames, &names, mode, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(3.4), 3);
        assert_eq!(round_half_even(16.0), 16);
    }

    #[test]
    fn sizes_follow_upstream() {
        assert_eq!(network_size(1920, 1080, ResizeMode::Crop), (518, 294));
        assert_eq!(network_size(640, 480, ResizeMode::Crop), (518, 392));
        assert_eq!(network_size(480, 640, ResizeMode::Crop), (518, 518));
        assert_eq!(resized_size(480, 640, ResizeMode::Pad), (392, 518));
        assert_eq!(network_size(480, 640, ResizeMode::Pad), (518, 518));
    }
}
