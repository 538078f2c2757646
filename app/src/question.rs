//! Shared by the `ask` command and the chat panel: loading Spatial-MLLM with its tokenizer, and
//! picking the frames a question is asked about from a video or a folder of frames.

use anyhow::{Context, Result, bail};
use spatial_models::checkpoint::CheckpointDir;
use spatial_models::spatial_mllm::processor::{PixelLimits, linspace_rounded};
use spatial_models::spatial_mllm::{QwenTokenizer, SpatialMllm};
use spatial_models::vggt::preprocess::{RgbFrame, list_image_files};
use std::path::{Path, PathBuf};

/// The model and its tokenizer, loaded together.
pub struct LoadedMllm {
    pub model: SpatialMllm,
    pub tokenizer: QwenTokenizer,
}

/// Loads a Qwen2.5-VL / Spatial-MLLM folder: config.json, safetensors (checked by name and shape
/// first) and tokenizer.json. `base_model` leaves the spatial branch out.
pub fn load_mllm(dir: &Path, base_model: bool, dtype: candle_core::DType, device: &candle_core::Device) -> Result<LoadedMllm> {
    let ckpt = CheckpointDir::open(dir)?;
    // Kind and shapes are checked (and the weights memory-mapped) first, then the tokenizer.
    let model = SpatialMllm::load(&ckpt, !base_model, dtype, device)?;
    let tokenizer = QwenTokenizer::from_file(&dir.join("tokenizer.json"))?;
    Ok(LoadedMllm { model, tokenizer })
}

/// A source of frames: a video file, a folder of images, or frames held in memory (the demo).
#[derive(Debug, Clone)]
pub enum FrameSource {
    Video(crate::video::VideoInfo),
    Folder(Vec<PathBuf>),
    Geometry(std::sync::Arc<spatial_models::reconstruction::Reconstruction>),
}

impl FrameSource {
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Ok(Self::Folder(list_image_files(path)?))
        } else if path.is_file() {
            Ok(Self::Video(crate::video::VideoInfo::probe(path)?))
        } else {
            bail!("{}: no such file or folder", path.display())
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Video(v) => v.frames,
            Self::Folder(f) => f.len(),
            Self::Geometry(r) => r.frames,
        }
    }

    /// `qwen_vl_utils`' pixel limits: video limits for a video, image limits for a folder of
    /// frames (what upstream applies to each frame of a list).
    pub fn limits(&self, frames: usize) -> PixelLimits {
        match self {
            Self::Video(_) => PixelLimits::video(frames),
            Self::Folder(_) | Self::Geometry(_) => PixelLimits::images(),
        }
    }

    /// Decodes the frames at `indices` (videos at most 1920 wide: the model's cap is far below).
    pub fn frames(&self, indices: &[usize]) -> Result<Vec<RgbFrame>> {
        match self {
            Self::Video(v) => v.decode(indices, Some(1920)),
            Self::Folder(files) => indices
                .iter()
                .map(|&i| {
                    let f = files.get(i).with_context(|| format!("frame {i} is past the folder's {} frames", files.len()))?;
                    RgbFrame::open(f)
                })
                .collect(),
            Self::Geometry(r) => {
                let size = r.width * r.height * 3;
                indices
                    .iter()
                    .map(|&i| {
                        anyhow::ensure!(i < r.frames, "frame {i} is past the {} frames on screen", r.frames);
                        Ok(RgbFrame::new(r.width, r.height, r.images[i * size..(i + 1) * size].to_vec()))
                    })
                    .collect()
            }
        }
    }
}

/// How many frames a question looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCount {
    Count(usize),
    All,
}

impl std::str::FromStr for FrameCount {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "all" {
            return Ok(Self::All);
        }
        match s.parse::<usize>() {
            Ok(0) | Err(_) => bail!("--frames takes a positive number or 'all', got '{s}'"),
            Ok(n) => Ok(Self::Count(n)),
        }
    }
}

/// Uniform choice as `qwen_vl_utils` makes it (even count, both ends, rounded).
pub fn uniform_question_indices(total: usize, count: FrameCount) -> Result<Vec<usize>> {
    if total == 0 {
        bail!("no frames to ask about");
    }
    Ok(match count {
        FrameCount::All => (0..total).collect(),
        FrameCount::Count(n) => spatial_models::spatial_mllm::processor::video_frame_indices(total, n).unwrap_or_else(|_| linspace_rounded(total, n.min(total))),
    })
}
