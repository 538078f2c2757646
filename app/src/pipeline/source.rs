//! What the app opens: a video, a folder of frames, or geometry held in memory (the demo scene or a
//! saved reconstruction), with one way to count, name and decode its frames, and the two upstream
//! frame choices: the question's uniform frames and the space-aware candidates.

use super::video::VideoInfo;
use anyhow::{Context, Result, bail};
use spatial_models::reconstruction::Reconstruction;
use spatial_models::spatial_mllm::processor::PixelLimits;
use spatial_models::vggt::preprocess::{RgbFrame, list_image_files};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A folder of frames: PNG/JPEG files sorted by name.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderInfo {
    pub path: PathBuf,
    pub files: Vec<PathBuf>,
    /// The first frame's size.
    pub width: u32,
    pub height: u32,
    /// Set when frames differ in size, naming the first odd one (VGGT pads mixed sizes as
    /// upstream does; playing and questions need one size).
    pub mixed_sizes: Option<String>,
}

impl FolderInfo {
    /// Lists a folder's images and checks each header: the message names the first bad file.
    pub fn scan(path: &Path) -> Result<Self> {
        let files = list_image_files(path)?;
        let mut size = None;
        let mut mixed_sizes = None;
        for f in &files {
            if std::fs::metadata(f).map(|m| m.len() == 0).unwrap_or(true) {
                bail!("{}: the image is empty (0 bytes)", f.display());
            }
            let dims = image::image_dimensions(f).map_err(|e| anyhow::anyhow!("{}: not a readable image ({e})", f.display()))?;
            match size {
                None => size = Some(dims),
                Some(first) if first != dims && mixed_sizes.is_none() => {
                    mixed_sizes = Some(format!(
                        "{}: is {}x{}, but {} is {}x{}; all frames of a folder must have the same size",
                        f.display(),
                        dims.0,
                        dims.1,
                        files[0].display(),
                        first.0,
                        first.1
                    ))
                }
                _ => {}
            }
        }
        let (width, height) = size.context("no images")?;
        Ok(Self { path: path.to_path_buf(), files, width, height, mixed_sizes })
    }

}

/// Geometry that is its own source of frames (the frames are its images).
#[derive(Debug, Clone)]
pub struct GeometrySource {
    pub rec: Arc<Reconstruction>,
    /// "demo scene" or the file's name.
    pub label: String,
    /// The file it was read from (None for the demo scene).
    pub path: Option<PathBuf>,
}

/// Something opened: its frames are numbered 0..len().
#[derive(Debug, Clone)]
pub enum Source {
    Video(Arc<VideoInfo>),
    Folder(Arc<FolderInfo>),
    Geometry(Arc<GeometrySource>),
}

/// What a user can name to open: a path or the built-in demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Demo,
    Path(PathBuf),
}

impl SourceSpec {
    /// "demo" names the demo scene (scripts, the command line); anything else is a path.
    pub fn parse(text: &Path) -> Self {
        if text.as_os_str() == "demo" { Self::Demo } else { Self::Path(text.to_path_buf()) }
    }
}

/// Files that open as saved geometry rather than as a video.
pub fn is_geometry_path(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

impl Source {
    /// Opens a video, a folder of frames (or the folder of an image file), or a saved
    /// reconstruction. Videos are probed, folders scanned: this reads headers, not frames.
    pub fn open(spec: &SourceSpec) -> Result<Self> {
        let path = match spec {
            SourceSpec::Demo => return Ok(Self::demo()),
            SourceSpec::Path(p) => p,
        };
        if path.is_dir() {
            return Ok(Self::Folder(Arc::new(FolderInfo::scan(path)?)));
        }
        if !path.exists() {
            bail!("{}: no such file or folder", path.display());
        }
        if is_geometry_path(path) {
            let rec = Reconstruction::load(path)?;
            let label = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok(Self::Geometry(Arc::new(GeometrySource { rec: Arc::new(rec), label, path: Some(path.clone()) })));
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            return Ok(Self::Folder(Arc::new(FolderInfo::scan(parent)?)));
        }
        if !super::video::is_video_path(path) {
            // Unknown extensions are still tried as video: ffprobe says whether it is one.
            return VideoInfo::probe(path).map(|v| Self::Video(Arc::new(v))).with_context(|| format!("{}: not a video, a folder of frames or saved geometry", path.display()));
        }
        Ok(Self::Video(Arc::new(VideoInfo::probe(path)?)))
    }

    /// The built-in demo scene (ray cast in memory: a fraction of a second).
    pub fn demo() -> Self {
        let rec = super::demo::build_demo(super::demo::DEMO_FRAMES);
        Self::Geometry(Arc::new(GeometrySource { rec: Arc::new(rec), label: "demo scene".into(), path: None }))
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Video(v) => v.frames,
            Self::Folder(f) => f.files.len(),
            Self::Geometry(g) => g.rec.frames,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file or folder it came from (None for the demo scene).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Video(v) => Some(&v.path),
            Self::Folder(f) => Some(&f.path),
            Self::Geometry(g) => g.path.as_deref(),
        }
    }

    /// What identifies it: geometry, picks and answers belong to exactly one source.
    pub fn id(&self) -> SourceId {
        match self.path() {
            Some(p) => SourceId::of_path(p),
            None => SourceId("demo".into()),
        }
    }

    /// A short name for badges and titles.
    pub fn name(&self) -> String {
        match self {
            Self::Geometry(g) => g.label.clone(),
            _ => self.path().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        }
    }

    /// Playback rate (frames per second).
    pub fn fps(&self) -> f32 {
        match self {
            Self::Video(v) => v.fps as f32,
            Self::Folder(_) | Self::Geometry(_) => 10.0,
        }
    }

    /// Size of the frames as they are stored (a video's displayed size).
    pub fn frame_size(&self) -> (usize, usize) {
        match self {
            Self::Video(v) => (v.width, v.height),
            Self::Folder(f) => (f.width as usize, f.height as usize),
            Self::Geometry(g) => (g.rec.width, g.rec.height),
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

    /// Decodes frames `indices` (ascending, distinct), scaled down to at most `max_width` when
    /// given (the models' inputs are smaller than most videos).
    pub fn frames(&self, indices: &[usize], max_width: Option<usize>) -> Result<Vec<RgbFrame>> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            bail!("frame {bad} is past the end of {} ({} frames)", self.name(), self.len());
        }
        let limit = |f: RgbFrame| -> Result<RgbFrame> {
            match max_width {
                Some(mw) if f.width > mw => {
                    let h = ((f.height * mw) as f64 / f.width as f64).round().max(1.0) as usize;
                    f.resize(mw, h)
                }
                _ => Ok(f),
            }
        };
        match self {
            Self::Video(v) => v.decode(indices, max_width),
            Self::Folder(f) => indices.iter().map(|&i| RgbFrame::open(&f.files[i]).and_then(limit)).collect(),
            Self::Geometry(g) => {
                let r = &g.rec;
                let size = r.width * r.height * 3;
                indices.iter().map(|&i| limit(RgbFrame::new(r.width, r.height, r.images[i * size..(i + 1) * size].to_vec()))).collect()
            }
        }
    }

    /// A name for frame `i` in messages ("clip.mp4 frame 12", or the image file).
    pub fn frame_name(&self, i: usize) -> String {
        match self {
            Self::Folder(f) => f.files.get(i).map(|p| p.display().to_string()).unwrap_or_else(|| format!("frame {i}")),
            _ => format!("{} frame {i}", self.name()),
        }
    }

    /// The frame numbers of this source that `rec`'s frames are (one place for the mapping from
    /// geometry frames to source frames). Geometry that is this source maps to itself; geometry
    /// made from it carries the frames it was made from; anything else is an error.
    pub fn frames_of(&self, rec: &Reconstruction) -> Result<Vec<usize>> {
        if let Self::Geometry(g) = self {
            if std::ptr::eq(Arc::as_ptr(&g.rec), rec) {
                return Ok((0..rec.frames).collect());
            }
        }
        let frames: Vec<usize> = rec.frame_indices.iter().map(|&i| usize::try_from(i).unwrap_or(usize::MAX)).collect();
        if let Some(&bad) = frames.iter().find(|&&i| i >= self.len()) {
            bail!("the geometry names frame {bad}, but {} has {} frames (was it made from another input?)", self.name(), self.len());
        }
        Ok(frames)
    }
}

/// A source's identity (its canonical path, or "demo").
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SourceId(pub String);

impl SourceId {
    /// The id the source at `path` has once opened.
    pub fn of_path(path: &Path) -> Self {
        SourceId(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string())
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

/// The frames a question looks at without space-aware sampling, as `qwen_vl_utils` chooses them:
/// the count rounded to an even number, `linspace(0, total - 1, n)` rounded to the nearest frame.
/// A clip shorter than the count gives every frame.
pub fn question_frames(total: usize, count: FrameCount) -> Result<Vec<usize>> {
    if total == 0 {
        bail!("no frames to ask about");
    }
    Ok(match count {
        FrameCount::All => (0..total).collect(),
        FrameCount::Count(n) => spatial_models::spatial_mllm::processor::video_frame_indices(total, n)?,
    })
}

/// The frames space-aware sampling reconstructs and chooses from, as upstream's `sa_sampling.py`
/// takes them: `np.linspace(0, total - 1, min(n, total), dtype=int)` (truncated, both ends).
pub fn candidate_frames(total: usize, n: usize) -> Vec<usize> {
    spatial_models::sampling::uniform_indices(total, n.min(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_upstream_frame_choices_round_as_upstream_does() {
        // qwen_vl_utils rounds (0, 6.6, 13.2, ..., 99): 7 and 13 ...; numpy's int cast truncates.
        let q = question_frames(100, FrameCount::Count(16)).unwrap();
        assert_eq!(q, vec![0, 7, 13, 20, 26, 33, 40, 46, 53, 59, 66, 73, 79, 86, 92, 99]);
        assert_eq!(candidate_frames(100, 16), vec![0, 6, 13, 19, 26, 33, 39, 46, 52, 59, 66, 72, 79, 85, 92, 99]);
        // An odd count is made even; a short clip gives every frame.
        assert_eq!(question_frames(100, FrameCount::Count(3)).unwrap().len(), 4);
        assert_eq!(question_frames(5, FrameCount::Count(16)).unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(candidate_frames(5, 128), vec![0, 1, 2, 3, 4]);
        assert!(question_frames(0, FrameCount::Count(16)).is_err());
    }

    #[test]
    fn geometry_maps_to_the_frames_it_was_made_from() {
        let demo = Source::demo();
        let Source::Geometry(g) = &demo else { unreachable!() };
        assert_eq!(demo.frames_of(&g.rec).unwrap(), (0..g.rec.frames).collect::<Vec<_>>());
        let mut other = (*g.rec).clone();
        other.frame_indices = vec![5; other.frames];
        assert_eq!(demo.frames_of(&other).unwrap()[0], 5);
        other.frame_indices[0] = 10_000;
        let err = demo.frames_of(&other).unwrap_err().to_string();
        assert!(err.contains("frame 10000") && err.contains("another input"), "{err}");
    }
}
