//! Video files through the `ffmpeg` / `ffprobe` executables (every codec Debian's FFmpeg has:
//! H.264 with B-frames, HEVC, VP9, AV1, MPEG-4, MPEG-1/2). Frame N is the N-th displayed frame,
//! as `ffmpeg -vf select=eq(n\,N)` counts; rotation metadata is applied (ffmpeg's autorotate).
//! Frames are decoded in one pass for a whole list of indices, at the size the consumer asks for.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use spatial_models::vggt::preprocess::RgbFrame;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Largest frame width the player keeps: frames are decoded at this size for display, not full size.
pub const DISPLAY_MAX_WIDTH: usize = 640;

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
    /// The stream's start time (the first frame's presentation time, for `-ss`).
    pub start_time: f64,
    /// Every frame one period after the last (the nominal and average rates agree and the
    /// duration holds exactly the counted frames): frame n is then at `start + n / fps` and can be
    /// found without reading every packet's timestamp.
    pub constant_rate: bool,
}

fn tool(name: &str) -> Result<Command> {
    Ok(Command::new(name))
}

/// A failed start of `ffmpeg`/`ffprobe`, said plainly (not found: how to install it).
fn run_error(name: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("`{name}` was not found: video files are decoded with FFmpeg (Debian: apt-get install ffmpeg)")
    } else {
        anyhow::anyhow!("running {name}: {e}")
    }
}

/// A path as FFmpeg must read it: always a file. Names such as `-v.mp4`, `pipe:0.mp4` or
/// `concat:x.mp4` would otherwise be taken for an option or a protocol; `file:` plus the absolute
/// path is read as the file, whatever its name.
pub fn ffmpeg_input(path: &Path) -> std::ffi::OsString {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut s = std::ffi::OsString::from("file:");
    s.push(absolute.as_os_str());
    s
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
    /// Reads the stream facts with ffprobe. The frame count comes from an MP4/MOV header's sample
    /// table (exact, and read in milliseconds whatever the clip's length), else from counting the
    /// packets (exact, no decode, but a pass over the file).
    pub fn probe(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("{}: no such file", path.display());
        }
        let run = |count: bool| -> Result<std::process::Output> {
            let mut cmd = tool("ffprobe")?;
            cmd.args(["-v", "error", "-select_streams", "v:0"]);
            if count {
                cmd.arg("-count_packets");
            }
            cmd.arg("-show_entries")
                .arg("stream=codec_name,width,height,avg_frame_rate,r_frame_rate,nb_read_packets,nb_frames,duration,start_time:stream_side_data=rotation:format=duration,format_name")
                .args(["-of", "json"])
                .arg(ffmpeg_input(path))
                .output()
                .map_err(|e| run_error("ffprobe", e))
        };
        let mut out = run(false)?;
        let header_count = serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().and_then(|j| {
            let mp4 = j["format"]["format_name"].as_str().is_some_and(|f| f.contains("mp4") || f.contains("mov"));
            j["streams"][0]["nb_frames"].as_str().and_then(|n| n.parse::<usize>().ok()).filter(|&n| mp4 && n > 0)
        });
        if out.status.success() && header_count.is_none() {
            out = run(true)?;
        }
        if !out.status.success() {
            bail!("{}: not a readable video ({})", path.display(), first_line(&out.stderr));
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("{}: ffprobe gave no JSON", path.display()))?;
        let Some(stream) = json["streams"].get(0) else { bail!("{}: has no video stream", path.display()) };
        let codec = stream["codec_name"].as_str().unwrap_or("?").to_string();
        let w = stream["width"].as_u64().unwrap_or(0) as usize;
        let h = stream["height"].as_u64().unwrap_or(0) as usize;
        let frames: usize = header_count.or_else(|| stream["nb_read_packets"].as_str().and_then(|s| s.parse().ok())).unwrap_or(0);
        if w == 0 || h == 0 || frames == 0 {
            bail!("{}: the video stream ({codec}) has no decodable frames", path.display());
        }
        let avg = stream["avg_frame_rate"].as_str().and_then(ratio).filter(|f| *f > 0.0);
        let nominal = stream["r_frame_rate"].as_str().and_then(ratio).filter(|f| *f > 0.0);
        let fps = avg.or(nominal).unwrap_or(30.0);
        let stream_duration: Option<f64> = stream["duration"].as_str().and_then(|d| d.parse().ok());
        let duration_s = stream_duration.or_else(|| json["format"]["duration"].as_str().and_then(|d| d.parse().ok())).unwrap_or(frames as f64 / fps);
        let start_time = stream["start_time"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let constant_rate = match (avg, nominal, stream_duration) {
            (Some(a), Some(r), Some(d)) => (a - r).abs() <= 1e-6 * r && (d * r - frames as f64).abs() < 0.5,
            _ => false,
        };
        let rotation = stream["side_data_list"].as_array().and_then(|l| l.iter().find_map(|d| d["rotation"].as_i64())).unwrap_or(0);
        let (width, height) = if rotation.rem_euclid(180) == 90 { (h, w) } else { (w, h) };
        Ok(Self { path: path.to_path_buf(), frames, fps, duration_s, width, height, codec, rotation, start_time, constant_rate })
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
        let filter = format!("select='{}',scale={w}:{h}:flags=bicubic", select_expression(indices));
        // Long lists go through a file: one command-line argument holds at most 128 KiB.
        let script = if filter.len() > 16 << 10 {
            let mut file = tempfile::Builder::new().prefix("spatial-viewer-select-").suffix(".txt").tempfile().context("making a temporary file for FFmpeg's filter")?;
            file.write_all(filter.as_bytes()).with_context(|| format!("writing {}", file.path().display()))?;
            Some(file)
        } else {
            None
        };
        let mut cmd = tool("ffmpeg")?;
        cmd.args(["-v", "error", "-nostdin", "-i"]).arg(ffmpeg_input(&self.path));
        match &script {
            Some(file) => cmd.arg("-filter_script:v").arg(file.path()),
            None => cmd.args(["-vf", &filter]),
        };
        let mut child = cmd
            .args(["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| run_error("ffmpeg", e))?;
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

/// `select`'s expression for a list of frame indices: a sum of `eq(n,i)`, grouped in parentheses
/// 32 at a time (and the groups likewise), since FFmpeg's expression parser refuses a sum of more
/// than 100 terms.
fn select_expression(indices: &[usize]) -> String {
    const GROUP: usize = 32;
    let mut terms: Vec<String> = indices.iter().map(|i| format!("eq(n\\,{i})")).collect();
    while terms.len() > GROUP {
        terms = terms.chunks(GROUP).map(|c| format!("({})", c.join("+"))).collect();
    }
    terms.join("+")
}

/// Presentation timestamps of every frame and where the keyframes are, from the packets alone
/// (no decode): what frame-exact seeking needs.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameTimes {
    /// Seconds, in presentation order (frame n is `pts[n]`).
    pub pts: Vec<f64>,
    /// The stream's start time (ffmpeg's `-ss` counts from it).
    pub start_time: f64,
    /// Frame indices of the keyframes, ascending.
    pub keyframes: Vec<usize>,
}

impl VideoInfo {
    /// The timestamps of a constant-rate stream (keyframes unknown: the first frame stands in).
    pub fn nominal_frame_times(&self) -> FrameTimes {
        FrameTimes { pts: (0..self.frames).map(|n| self.start_time + n as f64 / self.fps).collect(), start_time: self.start_time, keyframes: vec![0] }
    }

    /// Reads every video packet's timestamp and key flag with ffprobe.
    pub fn frame_times(&self) -> Result<FrameTimes> {
        let out = tool("ffprobe")?
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags:stream=start_time", "-of", "json"])
            .arg(ffmpeg_input(&self.path))
            .output()
            .map_err(|e| run_error("ffprobe", e))?;
        if !out.status.success() {
            bail!("{}: cannot read the packets ({})", self.path.display(), first_line(&out.stderr));
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("{}: ffprobe gave no JSON", self.path.display()))?;
        let packets = json["packets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let mut frames: Vec<(f64, bool)> = packets
            .iter()
            .filter_map(|p| Some((p["pts_time"].as_str()?.parse::<f64>().ok()?, p["flags"].as_str().unwrap_or("").contains('K'))))
            .collect();
        if frames.len() != self.frames {
            bail!("{}: {} packets carry timestamps but the stream has {} frames; seeking needs every timestamp", self.path.display(), frames.len(), self.frames);
        }
        frames.sort_by(|a, b| a.0.total_cmp(&b.0));
        let start_time = json["streams"][0]["start_time"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let keyframes = frames.iter().enumerate().filter(|(_, f)| f.1).map(|(i, _)| i).collect();
        Ok(FrameTimes { pts: frames.into_iter().map(|f| f.0).collect(), start_time, keyframes })
    }
}

/// Frames after the current position that are decoded and dropped rather than re-seeking
/// (decoding forward is a few ms per frame; a seek restarts ffmpeg and decodes from a keyframe).
const DECODE_FORWARD_LIMIT: usize = 48;

/// One long-lived `ffmpeg` per stream for on-demand frames: playing forward reads the next frame
/// from the same process; a jump restarts it with an input seek to the frame's own presentation
/// timestamp (ffmpeg decodes from the keyframe before it and drops what precedes it), so any frame
/// is at most one GOP of decoding away and still exactly frame N.
pub struct VideoStream {
    pub info: VideoInfo,
    times: FrameTimes,
    size: (usize, usize),
    process: Option<(std::process::Child, std::process::ChildStdout)>,
    /// The frame the pipe yields next.
    next: usize,
    /// Restarts so far (for benchmarks and tests).
    pub seeks: usize,
}

impl VideoStream {
    /// A decoder for `info`. A constant-rate stream's timestamps follow from its rate; others
    /// are read packet by packet first (about 0.4 ms per frame of 1080p).
    pub fn open(info: VideoInfo, max_width: Option<usize>) -> Result<Self> {
        let times = if info.constant_rate { info.nominal_frame_times() } else { info.frame_times()? };
        let size = info.scaled_size(max_width);
        Ok(Self { info, times, size, process: None, next: 0, seeks: 0 })
    }

    fn restart(&mut self, n: usize) -> Result<()> {
        self.stop();
        let (w, h) = self.size;
        let mut cmd = tool("ffmpeg")?;
        cmd.args(["-v", "error", "-nostdin"]);
        if n > 0 {
            // Half a frame before frame n: n is kept, n-1 (and everything earlier) is dropped.
            let gap = (self.times.pts[n] - self.times.pts[n - 1]).max(1e-4);
            let at = self.times.pts[n] - self.times.start_time - gap / 2.0;
            cmd.args(["-ss", &format!("{at:.6}")]);
        }
        let mut child = cmd
            .arg("-i")
            .arg(ffmpeg_input(&self.info.path))
            .args(["-an", "-sn", "-vf", &format!("scale={w}:{h}:flags=bicubic"), "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| run_error("ffmpeg", e))?;
        let stdout = child.stdout.take().context("ffmpeg's output pipe")?;
        self.process = Some((child, stdout));
        self.next = n;
        self.seeks += 1;
        Ok(())
    }

    fn stop(&mut self) {
        if let Some((mut child, _)) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn read_one(&mut self) -> Result<RgbFrame> {
        let (w, h) = self.size;
        let Some((_, stdout)) = self.process.as_mut() else { bail!("no decoder running") };
        let mut buf = vec![0u8; w * h * 3];
        if stdout.read_exact(&mut buf).is_err() {
            let at = self.next;
            self.stop();
            bail!("{}: the decoder stopped before frame {at} (truncated or damaged file?)", self.info.path.display());
        }
        self.next += 1;
        Ok(RgbFrame::new(w, h, buf))
    }

    /// Displayed frame `n`, preceded (oldest first) by up to `behind` frames before it when
    /// reaching `n` needs a restart anyway: those lie between the keyframe the decoder starts
    /// from and `n`, so they cost their scaling, not their decoding. Stepping backwards from `n`
    /// then finds them ready.
    pub fn frame_with_preceding(&mut self, n: usize, behind: usize) -> Result<Vec<(usize, RgbFrame)>> {
        if behind == 0 || n >= self.info.frames || self.reachable(n) {
            return Ok(vec![(n, self.frame(n)?)]);
        }
        let keyframe = self.times.keyframes.partition_point(|&k| k <= n).checked_sub(1).map_or(0, |i| self.times.keyframes[i]);
        self.restart(n.saturating_sub(behind).max(keyframe))?;
        let mut frames = Vec::with_capacity(n + 1 - self.next);
        while self.next <= n {
            let index = self.next;
            frames.push((index, self.read_one()?));
        }
        Ok(frames)
    }

    /// Displayed frame `n`, preceded (oldest first) by up to `keep` of the frames read on the way
    /// when `n` lies ahead of the running decoder: those are decoded and scaled anyway, so a
    /// playing video gets the frames before the one it asked for at no cost. A jump gives `n` alone.
    pub fn frames_through(&mut self, n: usize, keep: usize) -> Result<Vec<(usize, RgbFrame)>> {
        if n >= self.info.frames || !self.reachable(n) {
            return Ok(vec![(n, self.frame(n)?)]);
        }
        let mut frames = Vec::with_capacity((n + 1 - self.next).min(keep + 1));
        while self.next <= n {
            let index = self.next;
            let frame = self.read_one()?;
            if n - index <= keep {
                frames.push((index, frame));
            }
        }
        Ok(frames)
    }

    fn reachable(&self, n: usize) -> bool {
        self.process.is_some() && n >= self.next && n - self.next <= DECODE_FORWARD_LIMIT
    }

    /// Displayed frame `n`.
    pub fn frame(&mut self, n: usize) -> Result<RgbFrame> {
        if n >= self.info.frames {
            bail!("{}: frame {n} is out of range (the video has {} frames)", self.info.path.display(), self.info.frames);
        }
        if !self.reachable(n) {
            self.restart(n)?;
        }
        while self.next < n {
            self.read_one()?;
        }
        self.read_one()
    }
}

impl Drop for VideoStream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Small frames for scrubbing: every `step`-th frame at `width` px, decoded in one pass in the
/// background, handed out as they arrive. Memory is capped by choosing `step`.
pub fn thumbnail_step(frames: usize, max_thumbnails: usize) -> usize {
    frames.div_ceil(max_thumbnails.max(1)).max(1)
}

/// Decodes every `step`-th frame at `max_width`, calling `each` with (index, frame) until it
/// returns false or the video ends.
pub fn decode_every(info: &VideoInfo, step: usize, max_width: usize, mut each: impl FnMut(usize, RgbFrame) -> bool) -> Result<()> {
    let (w, h) = info.scaled_size(Some(max_width));
    let filter = format!("select='not(mod(n\\,{step}))',scale={w}:{h}:flags=bilinear");
    let mut child = tool("ffmpeg")?
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(ffmpeg_input(&info.path))
        .args(["-an", "-sn", "-vf", &filter, "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| run_error("ffmpeg", e))?;
    let mut stdout = child.stdout.take().context("ffmpeg's output pipe")?;
    let mut index = 0;
    loop {
        let mut buf = vec![0u8; w * h * 3];
        if stdout.read_exact(&mut buf).is_err() {
            break;
        }
        if !each(index, RgbFrame::new(w, h, buf)) {
            break;
        }
        index += step;
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// Installs the system packages the tests need when some are missing (`tests/provision.sh`).
#[cfg(test)]
pub(crate) fn test_packages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/provision.sh");
        let status = Command::new("sh").arg(&script).status().expect("run tests/provision.sh");
        assert!(status.success(), "the system packages for the video tests are missing (see the message above)");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(dir: &Path, name: &str, args: &[&str]) -> VideoInfo {
        let path = dir.join(name);
        let out = Command::new("ffmpeg").args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-frames:v", "120"]).args(args).arg(&path).output().expect("ffmpeg");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        VideoInfo::probe(&path).unwrap()
    }

    fn tmp(name: &str) -> tempfile::TempDir {
        test_packages();
        tempfile::Builder::new().prefix(&format!("sv-unit-video-{name}-")).tempdir().unwrap()
    }

    /// The seeking decoder gives exactly what one-pass `select=eq(n,N)` decoding gives, in any
    /// access order (jumps back, far jumps, steps forward), with B-frames, short GOPs and a
    /// variable frame rate.
    /// FFmpeg refuses a `select` sum of more than 100 terms, and a command-line argument holds
    /// at most 128 KiB: lists of 101 and of 2,500 frames still decode in one pass, exactly.
    #[test]
    fn long_frame_lists_decode_in_one_pass() {
        let dir = tmp("long-lists");
        let dir = dir.path();
        let path = dir.join("long.mp4");
        let out = Command::new("ffmpeg").args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=32x24:rate=50", "-frames:v", "2600", "-c:v", "libx264", "-g", "60", "-pix_fmt", "yuv420p"]).arg(&path).output().expect("ffmpeg");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let info = VideoInfo::probe(&path).unwrap();
        let mut stream = VideoStream::open(info.clone(), None).unwrap();
        for indices in [(0..101).map(|i| i * 3).collect::<Vec<usize>>(), (0..2500).collect()] {
            let frames = info.decode(&indices, None).unwrap();
            assert_eq!(frames.len(), indices.len());
            for k in [0, indices.len() / 2, indices.len() - 1] {
                assert_eq!(frames[k].data, stream.frame(indices[k]).unwrap().data, "frame {}", indices[k]);
            }
        }
    }

    #[test]
    fn seeking_decoder_is_frame_exact_in_any_order() {
        let dir = tmp("seek");
        let dir = dir.path();
        let cases = [
            clip(&dir, "h264.mp4", &["-c:v", "libx264", "-profile:v", "high", "-bf", "3", "-g", "12", "-pix_fmt", "yuv420p"]),
            clip(&dir, "vp9.webm", &["-c:v", "libvpx-vp9", "-g", "20", "-deadline", "realtime", "-cpu-used", "8"]),
            // Variable frame rate: the first 40 frames 40 ms apart, the rest 100 ms apart.
            clip(&dir, "vfr.mp4", &["-vf", "setpts='if(lt(N,40),N*0.04,1.6+(N-40)*0.1)/TB'", "-fps_mode", "vfr", "-c:v", "libx264", "-bf", "2", "-g", "30", "-pix_fmt", "yuv420p"]),
        ];
        for info in cases {
            assert_eq!(info.frames, 120, "{}", info.path.display());
            let order = [0usize, 1, 2, 57, 58, 60, 13, 119, 118, 30, 31, 100, 5];
            let mut sorted = order.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            let reference = info.decode(&sorted, None).unwrap();
            let mut stream = VideoStream::open(info.clone(), None).unwrap();
            for &n in &order {
                let ours = stream.frame(n).unwrap();
                let want = &reference[sorted.binary_search(&n).unwrap()];
                assert_eq!(ours.data, want.data, "{}: frame {n}", info.path.display());
            }
            // Stepping forward reuses the running decoder; jumps restart it.
            assert!(stream.seeks < order.len(), "{} restarts for {} requests", stream.seeks, order.len());
            assert!(stream.frame(120).is_err());
            // A jump back with frames before it, for stepping backwards: exact, oldest first, and
            // never from before the keyframe the decoder starts at.
            let all = info.decode(&(0..120).collect::<Vec<_>>(), None).unwrap();
            for (n, behind) in [(70usize, 8usize), (3, 8), (50, 0)] {
                let got = stream.frame_with_preceding(n, behind).unwrap();
                assert_eq!(got.last().map(|(i, _)| *i), Some(n));
                assert!(got.len() <= behind + 1);
                let keyframe = *stream.times.keyframes.iter().filter(|&&k| k <= n).max().unwrap_or(&0);
                assert_eq!(got.first().map(|(i, _)| *i), Some(n.saturating_sub(behind).max(keyframe)), "{}: frames before {n}", info.path.display());
                for (i, f) in &got {
                    assert_eq!(f.data, all[*i].data, "{}: frame {i} before {n}", info.path.display());
                }
            }
            // Reading ahead (a playing video) hands over the frames on the way, at most `keep`;
            // a jump gives the frame alone.
            for (n, keep, first) in [(60usize, 16usize, 51usize), (90, 5, 85), (10, 16, 10)] {
                let got = stream.frames_through(n, keep).unwrap();
                assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (first..=n).collect::<Vec<_>>(), "{}: frames through {n}", info.path.display());
                for (i, f) in &got {
                    assert_eq!(f.data, all[*i].data, "{}: frame {i} on the way to {n}", info.path.display());
                }
            }
        }
    }

    #[test]
    fn seeking_decoder_is_frame_exact_on_a_real_camera_clip() {
        test_packages();
        let info = VideoInfo::probe(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real-camera/bikes.mp4")).unwrap();
        let order = [200usize, 3, 4, 5, 130, 249, 128, 60];
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        let reference = info.decode(&sorted, Some(320)).unwrap();
        let mut stream = VideoStream::open(info.clone(), Some(320)).unwrap();
        for &n in &order {
            assert_eq!(stream.frame(n).unwrap().data, reference[sorted.binary_search(&n).unwrap()].data, "frame {n}");
        }
    }

    #[test]
    fn thumbnails_cover_the_video_at_a_fixed_step() {
        let dir = tmp("thumbs");
        let dir = dir.path();
        let info = clip(&dir, "t.mp4", &["-c:v", "libx264", "-pix_fmt", "yuv420p"]);
        let step = thumbnail_step(info.frames, 25);
        assert_eq!(step, 5);
        let mut got = Vec::new();
        decode_every(&info, step, 64, |i, f| {
            assert_eq!((f.width, f.height), (64, 48));
            got.push(i);
            true
        })
        .unwrap();
        assert_eq!(got, (0..120).step_by(5).collect::<Vec<_>>());
    }
}
