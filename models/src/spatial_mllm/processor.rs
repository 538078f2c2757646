//! What `qwen_vl_utils` and the Qwen2-VL processor do before the model runs, at inference:
//! frame choice, `smart_resize`, the CLIP-normalised patches in the processor's order, the chat
//! prompt with the `<|video_pad|>` expanded, and the M-RoPE position ids of transformers 4.51.

use crate::qwen2_5_vl::{GridThw, MropePositions, Qwen25VlConfig, VisionConfig};
use crate::vggt::preprocess::RgbFrame;
use anyhow::{Result, bail, ensure};
use candle_core::{Device, Tensor};

const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// `qwen_vl_utils` constants.
pub const FRAME_FACTOR: usize = 2;
pub const DEFAULT_FRAMES: usize = 16;
const VIDEO_MIN_PIXELS: usize = 128 * 28 * 28;
const VIDEO_MAX_PIXELS: usize = 768 * 28 * 28;
const VIDEO_TOTAL_PIXELS: f64 = 128000.0 * 28.0 * 28.0 * 0.9;
const IMAGE_MIN_PIXELS: usize = 4 * 28 * 28;
const IMAGE_MAX_PIXELS: usize = 16384 * 28 * 28;
const MAX_RATIO: f64 = 200.0;

/// Pixel-count limits for `smart_resize`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelLimits {
    pub min_pixels: usize,
    pub max_pixels: usize,
}

impl PixelLimits {
    /// A video of `frames` frames (`fetch_video`): 602112 px per frame for 16 frames.
    pub fn video(frames: usize) -> Self {
        let total_cap = VIDEO_TOTAL_PIXELS / frames.max(1) as f64 * FRAME_FACTOR as f64;
        let max = (VIDEO_MAX_PIXELS as f64).min(total_cap).max((VIDEO_MIN_PIXELS as f64 * 1.05).floor());
        Self { min_pixels: VIDEO_MIN_PIXELS, max_pixels: max as usize }
    }
    /// Frames given as image files (`fetch_image`'s limits).
    pub fn images() -> Self {
        Self { min_pixels: IMAGE_MIN_PIXELS, max_pixels: IMAGE_MAX_PIXELS }
    }
}

/// `smart_resize`: both sides multiples of `factor`, the area within the limits, the aspect
/// ratio kept as well as that allows. Returns (height, width).
pub fn smart_resize(height: usize, width: usize, factor: usize, limits: PixelLimits) -> Result<(usize, usize)> {
    ensure!(height > 0 && width > 0, "a {width}x{height} frame cannot be resized");
    let (h, w) = (height as f64, width as f64);
    ensure!(h.max(w) / h.min(w) <= MAX_RATIO, "a {width}x{height} frame has an aspect ratio above {MAX_RATIO}");
    let f = factor as f64;
    let round_by = |x: f64| ((x / f).round_ties_even() * f) as usize;
    let floor_by = |x: f64| ((x / f).floor() * f) as usize;
    let ceil_by = |x: f64| ((x / f).ceil() * f) as usize;
    let mut h_bar = factor.max(round_by(h));
    let mut w_bar = factor.max(round_by(w));
    if h_bar * w_bar > limits.max_pixels {
        let beta = (h * w / limits.max_pixels as f64).sqrt();
        h_bar = factor.max(floor_by(h / beta));
        w_bar = factor.max(floor_by(w / beta));
    } else if h_bar * w_bar < limits.min_pixels {
        let beta = (limits.min_pixels as f64 / (h * w)).sqrt();
        h_bar = ceil_by(h * beta);
        w_bar = ceil_by(w * beta);
    }
    Ok((h_bar, w_bar))
}

/// `smart_nframes` + the index choice of `_read_video_*`: `count` rounded to an even number, no
/// more than the video has, spread with `linspace(0, total-1, n)` rounded half to even.
pub fn video_frame_indices(total: usize, count: usize) -> Result<Vec<usize>> {
    ensure!(total > 0, "the video has no frames");
    let mut n = ((count as f64 / FRAME_FACTOR as f64).round_ties_even() as usize * FRAME_FACTOR).max(FRAME_FACTOR);
    if n > total {
        // qwen_vl_utils refuses; a short clip gets every frame it has (padded to even later).
        n = total;
    }
    Ok(linspace_rounded(total, n))
}

/// Resizes every frame to (height, width) with Pillow's bicubic (what torchvision's antialiased
/// bicubic on uint8 reproduces); frames already at that size are kept as they are.
pub fn resize_frames(frames: &[RgbFrame], height: usize, width: usize) -> Result<Vec<RgbFrame>> {
    frames.iter().map(|f| if f.width == width && f.height == height { Ok(f.clone()) } else { f.resize(width, height) }).collect()
}

/// The target size for a set of frames under `limits` (all frames must share a size).
pub fn target_size(frames: &[RgbFrame], vision: &VisionConfig, limits: PixelLimits) -> Result<(usize, usize)> {
    let Some(first) = frames.first() else { bail!("no frames to look at") };
    if let Some(odd) = frames.iter().find(|f| f.width != first.width || f.height != first.height) {
        bail!("frames differ in size ({}x{} and {}x{}); a video's frames must share one size", first.width, first.height, odd.width, odd.height);
    }
    smart_resize(first.height, first.width, vision.merge_pixels(), limits)
}

/// Repeats the last frame until the count is a multiple of the temporal patch size.
pub fn pad_frames(mut frames: Vec<RgbFrame>, temporal: usize) -> Vec<RgbFrame> {
    while !frames.is_empty() && frames.len() % temporal != 0 {
        let last = frames.last().cloned().expect("non-empty");
        frames.push(last);
    }
    frames
}

/// The Qwen2-VL processor's `pixel_values_videos` [t*h*w, C*tp*p*p] for frames that are already
/// padded and sized in multiples of patch x merge: rows in (t, h/2, w/2, sh, sw) order, columns in
/// (C, temporal, py, px) order, CLIP-normalised.
pub fn pixel_values(frames: &[RgbFrame], vision: &VisionConfig, device: &Device) -> Result<(Tensor, GridThw)> {
    let (p, m, tp) = (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size);
    let Some(first) = frames.first() else { bail!("no frames") };
    let (h, w) = (first.height, first.width);
    ensure!(frames.len() % tp == 0, "{} frames is not a multiple of the temporal patch size {tp}", frames.len());
    ensure!(h % (p * m) == 0 && w % (p * m) == 0, "frame size {w}x{h} is not a multiple of {}", p * m);
    ensure!(vision.in_chans == 3, "vision_config.in_chans {} (RGB frames have 3)", vision.in_chans);
    let grid = GridThw { t: frames.len() / tp, h: h / p, w: w / p };
    let dim = vision.patch_dim();
    let mut out = Vec::with_capacity(grid.patches() * dim);
    let norm = |v: u8, c: usize| ((v as f32 / 255.0) - CLIP_MEAN[c]) / CLIP_STD[c];
    for t in 0..grid.t {
        for hh in 0..grid.h / m {
            for ww in 0..grid.w / m {
                for sh in 0..m {
                    for sw in 0..m {
                        let (py0, px0) = ((hh * m + sh) * p, (ww * m + sw) * p);
                        for c in 0..3 {
                            for tt in 0..tp {
                                let f = &frames[t * tp + tt];
                                for py in 0..p {
                                    let row = (py0 + py) * w;
                                    for px in 0..p {
                                        out.push(norm(f.data[(row + px0 + px) * 3 + c], c));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((Tensor::from_vec(out, (grid.patches(), dim), device)?, grid))
}

/// The same frames as VGGT's input: [T, 3, H, W] in [0, 1].
pub fn vggt_images(frames: &[RgbFrame], device: &Device) -> Result<Tensor> {
    let Some(first) = frames.first() else { bail!("no frames") };
    let (h, w) = (first.height, first.width);
    let mut out = Vec::with_capacity(frames.len() * 3 * h * w);
    for f in frames {
        for c in 0..3 {
            out.extend(f.data.iter().skip(c).step_by(3).map(|&v| v as f32 / 255.0));
        }
    }
    Ok(Tensor::from_vec(out, (frames.len(), 3, h, w), device)?)
}

/// The default system prompt of Qwen2.5-VL's chat template.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";
/// VSI-Bench's suffix for multiple-choice questions.
pub const MULTIPLE_CHOICE_SUFFIX: &str = "Answer with the option's letter from the given choices directly.";
/// VSI-Bench's suffix for numeric questions.
pub const NUMERIC_SUFFIX: &str = "Please answer the question using a single word or phrase.";

/// How the question is phrased for the model (VSI-Bench's formats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuestionFormat {
    /// The text as typed.
    Free,
    /// Numeric / short answer: adds the single-word-or-phrase instruction.
    Numeric,
    /// Options already carrying their "A. ..." prefixes.
    MultipleChoice(Vec<String>),
}

/// The user turn's text for `question` in `format`.
pub fn format_question(question: &str, format: &QuestionFormat) -> String {
    match format {
        QuestionFormat::Free => question.to_string(),
        QuestionFormat::Numeric => format!("{question}\n{NUMERIC_SUFFIX}"),
        QuestionFormat::MultipleChoice(options) => format!("{question}\nOptions:\n{}\n{MULTIPLE_CHOICE_SUFFIX}", options.join("\n")),
    }
}

/// Qwen2.5-VL's chat template for one user turn with a video before the text (one
/// `<|video_pad|>`, expanded after tokenisation).
pub fn chat_prompt(user_text: &str, system: &str) -> String {
    format!("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{user_text}<|im_end|>\n<|im_start|>assistant\n")
}

/// transformers 4.51 `get_rope_index` for one sequence whose videos (in order) have `grids`:
/// text counts up on all three axes; a video's tokens get (t * second_per_grid_t *
/// tokens_per_second, row, column) offset by where the text stopped; text after a video resumes
/// at the maximum + 1.
pub fn rope_index(input_ids: &[u32], grids: &[GridThw], second_per_grid_t: f64, cfg: &Qwen25VlConfig) -> Result<MropePositions> {
    let m = cfg.vision_config.spatial_merge_size;
    let mut pos = MropePositions { t: Vec::with_capacity(input_ids.len()), h: Vec::with_capacity(input_ids.len()), w: Vec::with_capacity(input_ids.len()) };
    let mut next: i64 = 0;
    let mut i = 0;
    let mut videos = grids.iter();
    while i < input_ids.len() {
        if input_ids[i] != cfg.video_token_id {
            pos.t.push(next);
            pos.h.push(next);
            pos.w.push(next);
            next += 1;
            i += 1;
            continue;
        }
        let Some(g) = videos.next() else { bail!("the prompt has more videos than grids") };
        let (gt, gh, gw) = (g.t, g.h / m, g.w / m);
        let count = gt * gh * gw;
        ensure!(i + count <= input_ids.len() && input_ids[i..i + count].iter().all(|&id| id == cfg.video_token_id), "a video needs {count} consecutive <|video_pad|> tokens");
        let start = next;
        let mut max = start;
        for t in 0..gt {
            let t_id = (t as f64 * second_per_grid_t * cfg.vision_config.tokens_per_second) as i64;
            for y in 0..gh {
                for x in 0..gw {
                    pos.t.push(start + t_id);
                    pos.h.push(start + y as i64);
                    pos.w.push(start + x as i64);
                    max = max.max(start + t_id).max(start + y as i64).max(start + x as i64);
                }
            }
        }
        next = max + 1;
        i += count;
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_the_documented_examples() {
        // A 640x480 VSI-Bench video at 16 frames gives 476x644.
        assert_eq!(smart_resize(480, 640, 28, PixelLimits::video(16)).unwrap(), (476, 644));
        assert_eq!(PixelLimits::video(16).max_pixels, 602112);
        // 1080p is scaled down into the video cap.
        let (h, w) = smart_resize(1080, 1920, 28, PixelLimits::video(16)).unwrap();
        assert!(h * w <= 602112 && h % 28 == 0 && w % 28 == 0, "{h}x{w}");
        // Tiny frames are scaled up to the minimum.
        let (h, w) = smart_resize(56, 84, 28, PixelLimits::video(16)).unwrap();
        assert!(h * w >= 100352, "{h}x{w}");
        assert!(smart_resize(1, 400, 28, PixelLimits::images()).is_err());
    }

    #[test]
    fn frame_indices_are_even_and_span_the_video() {
        assert_eq!(video_frame_indices(100, 16).unwrap().len(), 16);
        assert_eq!(video_frame_indices(100, 15).unwrap().len(), 16);
        let idx = video_frame_indices(100, 16).unwrap();
        assert_eq!((idx[0], idx[15]), (0, 99));
        assert_eq!(video_frame_indices(5, 16).unwrap().len(), 5);
    }
}

/// `torch.linspace(0, total-1, n).round()`: evenly spread, both ends, rounded half to even.
pub fn linspace_rounded(total: usize, n: usize) -> Vec<usize> {
    match n {
        0 => Vec::new(),
        1 => vec![0],
        _ => (0..n).map(|i| (i as f64 * (total - 1) as f64 / (n - 1) as f64).round_ties_even() as usize).collect(),
    }
}
