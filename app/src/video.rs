//! Video files through the `ffmpeg` / `ffprobe` executables (every codec Debian's FFmpeg has:
//! H.264 with B-frames, HEVC, VP9, AV1, MPEG-4, MPEG-1/2). Frame N is the N-th displayed frame,
//! as `ffmpeg -vf select=eq(n\,N)` counts; rotation metadata is applied (ffmpeg's autorotate).
//! Frames are decoded in one pass for a whole list of indices, at the size the consumer asks for.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use spatial_models::vggt::preprocess::RgbFrame;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// File extensions opened as videos.
pub const VIDEO_EXTENSIONS: [&str; 10] = ["mp4", "mov", "mkv", "webm", "avi", "m4v", "mpg", "mpeg", "ts", "3gp"];

pub fn is_video_path(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VideoInfo {
    pub path: PathBuf,
    pub frames: usize,
    pub fps: f64,
    pub duration_s: f64,
    /// Displayed size (after rotation).
    pub width: usize,
    pub height: usize,
    pub codec: String,
    pub rotation: i64,
}

fn tool(name: &str) -> Result<Command> {
    let ok = Command::new(name).arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        bail!("`{name}` was not found: video files are decoded with FFmpeg (Debian: apt-get install ffmpeg)");
    }
    Ok(Command::new(name))
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

fn ratio(s: &str) -> Option<f64> {
    let (a, b) = s.split_once('/')?;
    let (a, b): (f64, f64) = (a.parse().ok()?, b.parse().ok()?);
    (b != 0.0).then_some(a / b)
}

impl VideoInfo {
    /// Reads the stream facts with ffprobe (counting packets: exact frame count, no decode).
    pub fn probe(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("{}: no such file", path.display());
        }
        let out = tool("ffprobe")?
            .args(["-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries"])
            .arg("stream=codec_name,width,height,avg_frame_rate,r_frame_rate,nb_read_packets,duration:stream_side_data=rotation:format=duration")
            .args(["-of", "json"])
            .arg(path)
            .output()
            .context("running ffprobe")?;
        if !out.status.success() {
            bail!("{}: not a readable video ({})", path.display(), first_line(&out.stderr));
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("{}: ffprobe gave no JSON", path.display()))?;
        let Some(stream) = json["streams"].get(0) else { bail!("{}: has no video stream", path.display()) };
        let codec = stream["codec_name"].as_str().unwrap_or("?").to_string();
        let w = stream["width"].as_u64().unwrap_or(0) as usize;
        let h = stream["height"].as_u64().unwrap_or(0) as usize;
        let frames: usize = stream["nb_read_packets"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        if w == 0 || h == 0 || frames == 0 {
            bail!("{}: the video stream ({codec}) has no decodable frames", path.display());
        }
        let fps = stream["avg_frame_rate"].as_str().and_then(ratio).filter(|f| *f > 0.0).or_else(|| stream["r_frame_rate"].as_str().and_then(ratio)).unwrap_or(30.0);
        let duration_s = stream["duration"].as_str().or(json["format"]["duration"].as_str()).and_then(|d| d.parse().ok()).unwrap_or(frames as f64 / fps);
        let rotation = stream["side_data_list"].as_array().and_then(|l| l.iter().find_map(|d| d["rotation"].as_i64())).unwrap_or(0);
        let (width, height) = if rotation.rem_euclid(180) == 90 { (h, w) } else { (w, h) };
        Ok(Self { path: path.to_path_buf(), frames, fps, duration_s, width, height, codec, rotation })
    }

    /// Output size for a width limit: aspect kept, even sides (what yuv-based scalers need).
    pub fn scaled_size(&self, max_width: Option<usize>) -> (usize, usize) {
        match max_width {
            Some(mw) if mw < self.width => {
                let w = (mw / 2 * 2).max(2);
                let h = ((self.height as f64 * w as f64 / self.width as f64 / 2.0).round() as usize * 2).max(2);
                (w, h)
            }
            _ => (self.width, self.height),
        }
    }

    /// Decodes the displayed frames `indices` (ascending, distinct) in one pass.
    pub fn decode(&self, indices: &[usize], max_width: Option<usize>) -> Result<Vec<RgbFrame>> {
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.frames) {
            bail!("{}: frame {bad} is out of range (the video has {} frames)", self.path.display(), self.frames);
        }
        anyhow::ensure!(indices.windows(2).all(|w| w[0] < w[1]), "frame indices must be ascending and distinct");
        let (w, h) = self.scaled_size(max_width);
        let select: Vec<String> = indices.iter().map(|i| format!("eq(n\\,{i})")).collect();
        let filter = format!("select='{}',scale={w}:{h}:flags=bicubic", select.join("+"));
        let mut child = tool("ffmpeg")?
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(&self.path)
            .args(["-vf", &filter, "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ffmpeg")?;
        let mut stdout = child.stdout.take().context("ffmpeg's output pipe")?;
        let mut frames = Vec::with_capacity(indices.len());
        for _ in indices {
            let mut buf = vec![0u8; w * h * 3];
            match stdout.read_exact(&mut buf) {
                Ok(()) => frames.push(RgbFrame::new(w, h, buf)),
                Err(_) => break,
            }
        }
        drop(stdout);
        let out = child.wait_with_output()?;
        if frames.len() < indices.len() {
            let why = first_line(&out.stderr);
            bail!("{}: decoded only {} of {} frames ({})", self.path.display(), frames.len(), indices.len(), if why.is_empty() { "truncated or damaged file?".into() } else { why });
        }
        Ok(frames)
    }
}
