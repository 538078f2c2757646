//! What the plugins share: resources every plugin may read and the messages they send each other.
//! This module imports no plugin, so the plugins form layers (state, then the back ends, the scene,
//! and the UI and scripts on top), not a mesh; a test checks that.

use super::cloud::{CloudIndex, PointCloudBuffers};
use crate::pipeline::points::{ConfidenceQuantiles, PointSource};
use crate::pipeline::source::{Source, SourceId, SourceSpec};
use bevy::prelude::*;
use spatial_models::reconstruction::Reconstruction;
use spatial_models::sampling::{SamplingResult, VoxelSets};
use std::path::PathBuf;
use std::sync::Arc;

/// The status bar's message.
#[derive(Resource, Default, Clone)]
pub struct StatusLine {
    pub message: String,
    pub is_error: bool,
}

impl StatusLine {
    pub fn info(&mut self, msg: impl Into<String>) {
        self.message = msg.into();
        self.is_error = false;
    }
    pub fn error(&mut self, msg: impl Into<String>) {
        self.message = msg.into();
        self.is_error = true;
        eprintln!("error: {}", self.message);
    }
}

/// Command-line choices the plugins read at start-up.
#[derive(Resource, Clone, Default)]
pub struct StartupOptions {
    pub input: Option<PathBuf>,
    pub script: Option<PathBuf>,
    pub bench_points: Option<usize>,
    /// VGGT weights (folder or repo id).
    pub vggt: Option<String>,
    /// Spatial-MLLM weights (folder or repo id).
    pub mllm: Option<String>,
    pub device: crate::pipeline::device::DeviceRequest,
    pub dtype: crate::pipeline::device::DTypeRequest,
}

/// Background work in flight, per kind: scripts wait for all of it, the status bar shows a spinner.
#[derive(Resource, Default, Debug, Clone, Copy)]
pub struct Activity {
    /// Opening a source (probing, scanning, building the demo).
    pub opening: usize,
    /// Worker jobs (clouds, voxel sets, exports, colours).
    pub jobs: usize,
    pub decodes: usize,
    /// VGGT: loading weights or reconstructing.
    pub vggt: usize,
    /// The chat model: loading or answering.
    pub chat: usize,
}

impl Activity {
    pub fn is_idle(&self) -> bool {
        self.decodes == 0 && self.is_idle_but_decoding()
    }

    /// Idle apart from decoding frames: a playing video always has a frame on its way.
    pub fn is_idle_but_decoding(&self) -> bool {
        self.opening == 0 && self.jobs == 0 && self.vggt == 0 && self.chat == 0
    }
}

/// What is open: the source every view, pick and question refers to.
#[derive(Resource, Default, Clone)]
pub struct Opened {
    pub source: Option<Source>,
    pub id: SourceId,
    /// The last open that finished, and why it failed if it did (scripts check it).
    pub last_result: Option<(SourceSpec, Result<(), String>)>,
    /// A saved state whose source is missing: the next path opened is taken as its new location.
    pub relocating: Option<PathBuf>,
}

impl Opened {
    pub fn frame_count(&self) -> usize {
        self.source.as_ref().map_or(0, Source::len)
    }
}

/// Geometry with its GPU-ready point cloud, tied to the source it belongs to.
pub struct LoadedScene {
    pub label: String,
    pub rec: Arc<Reconstruction>,
    pub source_id: SourceId,
    /// Source frame of each geometry frame.
    pub source_frames: Vec<usize>,
    pub cloud: Arc<PointCloudBuffers>,
    pub index: CloudIndex,
    /// Confidence quantiles of the shown point source, for the filter (exact at 0.1 % steps).
    pub quantiles: Arc<ConfidenceQuantiles>,
    pub point_source: PointSource,
}

/// The geometry on screen (always of [`Opened`]'s source; cleared when another opens).
#[derive(Resource, Default)]
pub struct Geometry {
    pub scene: Option<Arc<LoadedScene>>,
}

/// Frames chosen by a sampler (source frame numbers), drawn on the timeline and as highlighted
/// frustums, and what questions are asked about by default.
#[derive(Resource, Default, Clone, Debug, PartialEq)]
pub struct SampledFrames {
    pub frames: Vec<usize>,
    pub label: String,
    /// A second set shown for comparison (the uniform picks), empty when off.
    pub compare: Vec<usize>,
    /// The source they are frames of.
    pub source_id: SourceId,
}

/// The frames a question from an evaluation run was answered from: while its video is open they
/// are the picks (timeline, frustums, and what a question in the chat looks at).
#[derive(Resource, Default, Clone, Debug, PartialEq)]
pub struct QuestionFrames(pub Option<(SourceId, Vec<usize>, String)>);

/// Colour modes of the point cloud. The discriminants are the shader's `COLOR_MODE_*` constants
/// (`shaders/points.wgsl`); a test keeps the two in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u32)]
pub enum ColorMode {
    #[default]
    Image = 0,
    Confidence = 1,
    Depth = 2,
    FrameIndex = 3,
    /// Each point in the colour of the space-aware pick that first covered its voxel (recoloured
    /// on the CPU, drawn like image colours).
    FirstCoveringPick = 4,
}

impl ColorMode {
    pub const ALL: [ColorMode; 5] = [Self::Image, Self::Confidence, Self::Depth, Self::FrameIndex, Self::FirstCoveringPick];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Image => "image colour",
            Self::Confidence => "confidence",
            Self::Depth => "depth",
            Self::FrameIndex => "frame index",
            Self::FirstCoveringPick => "first covering pick",
        }
    }

    /// A mode by the start of its name ("conf", "depth", "first covering pick").
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| !s.is_empty() && m.name().starts_with(s))
    }
}

/// How the point cloud is drawn.
#[derive(Resource, Clone, PartialEq, Debug)]
pub struct ViewSettings {
    pub point_size: f32,
    pub color_mode: ColorMode,
    /// Hide points below this percentile of the geometry's confidences (0-100).
    pub conf_percentile: f32,
    pub frame_filter: Option<usize>,
    pub show_cameras: bool,
    /// Which frustums to draw.
    pub cameras: CameraSubset,
    /// Frustum size, relative to the default (6 % of the scene's size).
    pub camera_scale: f32,
    pub point_budget: usize,
    pub source: PointSource,
}

impl Default for ViewSettings {
    fn default() -> Self {
        Self {
            point_size: 3.0,
            color_mode: ColorMode::Image,
            conf_percentile: 25.0,
            frame_filter: None,
            show_cameras: true,
            cameras: CameraSubset::All,
            camera_scale: 1.0,
            point_budget: 300_000,
            source: PointSource::DepthAndCamera,
        }
    }
}

/// Which camera frustums are drawn (the current frame's always is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraSubset {
    All,
    /// The sampler's picks.
    Picks,
    /// Every n-th geometry frame.
    EveryNth(usize),
}

impl CameraSubset {
    /// Whether geometry frame `frame` (source frame `source_frame`) is drawn.
    pub fn shows(&self, frame: usize, source_frame: usize, current: usize, picks: &[usize]) -> bool {
        source_frame == current
            || match self {
                Self::All => true,
                Self::Picks => picks.contains(&source_frame),
                Self::EveryNth(n) => frame % (*n).max(1) == 0 || picks.contains(&source_frame),
            }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerMode {
    Uniform,
    SpaceAware,
}

/// Space-aware sampling's settings.
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct SamplerSettings {
    pub mode: SamplerMode,
    pub k: usize,
    /// Upstream's confidence percentile for the voxels (50; independent of the view's filter).
    pub conf_percentile: f64,
    /// Also mark the uniform picks (second row on the timeline) for comparison.
    pub compare_uniform: bool,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        Self { mode: SamplerMode::SpaceAware, k: 16, conf_percentile: 50.0, compare_uniform: true }
    }
}

/// The last space-aware result, for the panel.
#[derive(Resource, Default)]
pub struct SamplingState {
    pub voxels: Option<Arc<VoxelSets>>,
    pub result: Option<SamplingResult>,
    pub error: Option<String>,
    /// The geometry and percentile the voxel sets were built for.
    pub built_for: Option<(usize, f64)>,
}

/// The geometry frame whose camera the 3D view looks through (following the video), if any.
/// Frustums are hidden meanwhile; orbiting, flying or resetting the view leaves it.
#[derive(Resource, Default, Debug, Clone, Copy, PartialEq)]
pub struct LookThrough(pub Option<usize>);

/// The frustum under the mouse (source frame), if any.
#[derive(Resource, Default)]
pub struct HoveredCamera(pub Option<usize>);

/// Where a hovered point was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoverFrom {
    /// The GPU pick under the cursor in the 3D view.
    View3d,
    /// The pixel under the cursor on the video frame.
    Video,
}

/// The point under the cursor, with what the sampler made of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoveredPoint {
    pub point: crate::pipeline::inspect::SamplePoint,
    pub source_frame: usize,
    pub from: HoverFrom,
    /// Percentile of its confidence among the geometry's (0-100).
    pub percentile: f32,
    /// The space-aware pick (source frame) that first covered its voxel, and how many picks see
    /// that voxel (None: no voxel sets, or the point is below the sampler's confidence).
    pub coverage: Option<(Option<usize>, usize)>,
}

/// What clicks in the 3D view and on the video frame do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InspectTool {
    /// Orbit and hover only.
    #[default]
    Look,
    /// A click pins the point under the cursor.
    Measure,
    /// A drag on the video frame selects a rectangle; a click in 3D a box around the point.
    Region,
}

/// Overlays on the video frame, from the geometry of that frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VideoOverlay {
    #[default]
    None,
    Depth,
    Confidence,
    /// Whether the space-aware picks cover each pixel's voxel.
    Covered,
}

impl VideoOverlay {
    pub const ALL: [VideoOverlay; 4] = [Self::None, Self::Depth, Self::Confidence, Self::Covered];
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Depth => "depth",
            Self::Confidence => "confidence",
            Self::Covered => "covered by the picks",
        }
    }
}

/// A selected region and the frames that see it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionSelection {
    pub region: crate::pipeline::inspect::Region,
    /// Source frame of each of `region.frames`.
    pub source_frames: Vec<usize>,
}

/// Hover, pins, scale and region: what inspecting and measuring the geometry shows. Pins and the
/// region belong to the geometry on screen and go when another is shown.
#[derive(Resource, Default)]
pub struct Inspection {
    pub hovered: Option<HoveredPoint>,
    pub measuring: crate::pipeline::inspect::Measuring,
    pub region: Option<RegionSelection>,
    pub tool: InspectTool,
    pub overlay: VideoOverlay,
    /// A hover a script asked for (window logical pixels), held until the mouse moves.
    pub script_hover: Option<Vec2>,
    /// Why the last pin, scale or region failed (shown in the measure panel).
    pub error: Option<String>,
    /// Half the side of the box a click in 3D selects (scene units; 0: 5 % of the scene).
    pub box_half: f32,
}

impl Inspection {
    /// Half the side of the box a click in 3D selects: as set, else 5 % of the scene's size.
    pub fn box_half_for(&self, scene_scale: f32) -> f32 {
        if self.box_half > 0.0 {
            self.box_half
        } else {
            0.05 * scene_scale
        }
    }
}

/// The video frame's rectangle in the left panel (logical pixels) and the source frame it shows.
#[derive(Resource, Default, Clone, Copy, PartialEq)]
pub struct VideoPanel {
    pub rect: Option<(Vec2, Vec2)>,
    pub frame: usize,
}

/// The 3D viewport's rectangle in physical pixels, set by the UI after laying out the panels.
#[derive(Resource, Default, Clone, Copy, PartialEq)]
pub struct ViewportRect(pub Option<(UVec2, UVec2)>);

/// VGGT's thread, as the panels and scripts see it.
#[derive(Resource, Clone, Debug)]
pub struct VggtState {
    /// "VGGT from DIR (embed 1024, 24 block pairs) on cpu f32".
    pub weights: Option<String>,
    /// The weights last asked for (a folder or repo id), as the user gave them.
    pub spec: Option<String>,
    /// The device and dtype the thread runs on ("cpu f32"), and why not what was asked.
    pub compute: String,
    pub compute_note: Option<String>,
    pub progress: Option<crate::pipeline::reconstruct::Progress>,
    /// Frames per reconstruction (candidates for space-aware sampling).
    pub frames: usize,
    /// Input width of the candidates (518 upstream; smaller on the CPU).
    pub width: usize,
    /// What the last reconstruction was ("32 frames at 294x224, 61 s"), for the sampling panel.
    pub last_run: Option<String>,
    /// Why the last run failed or was cancelled (the panel offers to run again).
    pub last_error: Option<String>,
}

impl Default for VggtState {
    fn default() -> Self {
        Self {
            weights: None,
            spec: None,
            compute: "cpu f32".into(),
            compute_note: None,
            progress: None,
            frames: crate::pipeline::reconstruct::CPU_CANDIDATES,
            width: crate::pipeline::reconstruct::CPU_CANDIDATE_WIDTH,
            last_run: None,
            last_error: None,
        }
    }
}

/// Where an answer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerState {
    Streaming,
    Done,
    Cancelled,
    Failed,
}

impl AnswerState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChatMessage {
    pub from_user: bool,
    pub text: String,
    pub state: AnswerState,
    /// Source frames the question was asked about.
    pub frames: Vec<usize>,
    /// How the frames were chosen, and timings once done.
    pub note: String,
}

/// Which frames a question looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameChoice {
    /// The frames highlighted by the sampler (space-aware or uniform), when there are any.
    Sampled,
    /// `qwen_vl_utils`' uniform frames of the whole source.
    Uniform,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerFormat {
    Free,
    Numeric,
    MultipleChoice,
}

impl AnswerFormat {
    pub const ALL: [AnswerFormat; 3] = [Self::Free, Self::Numeric, Self::MultipleChoice];
    pub fn name(&self) -> &'static str {
        match self {
            Self::Free => "free text",
            Self::Numeric => "number / short answer",
            Self::MultipleChoice => "multiple choice",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChatSettings {
    pub format: AnswerFormat,
    /// Multiple-choice options, one per line ("A. ...").
    pub options: String,
    pub frame_choice: FrameChoice,
    pub frames: usize,
    pub use_spatial: bool,
    pub max_new_tokens: usize,
    pub temperature: f64,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self { format: AnswerFormat::Free, options: String::new(), frame_choice: FrameChoice::Sampled, frames: 16, use_spatial: true, max_new_tokens: 128, temperature: 0.0 }
    }
}

/// The conversation and the chat model's state.
#[derive(Resource, Default)]
pub struct ChatState {
    /// "Spatial-MLLM from DIR (...) on cpu f32".
    pub model: Option<String>,
    /// The weights last asked for (a folder or repo id), as the user gave them.
    pub spec: Option<String>,
    pub has_spatial: bool,
    pub loading: bool,
    pub answering: bool,
    pub compute: String,
    pub compute_note: Option<String>,
    /// Why the last load failed (shown in the panel in red).
    pub load_error: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub draft: String,
    pub settings: ChatSettings,
    pub stage: Option<(String, usize, usize)>,
}

impl ChatState {
    /// A question with an immediate answer (an explanation why it cannot be answered).
    pub fn say(&mut self, question: &str, answer: String, state: AnswerState) {
        self.messages.push(ChatMessage { from_user: true, text: question.to_string(), state: AnswerState::Done, frames: Vec::new(), note: String::new() });
        self.messages.push(ChatMessage { from_user: false, text: answer, state, frames: Vec::new(), note: String::new() });
    }
}

/// Requests to open a source.
#[derive(Message, Clone, Debug)]
pub struct OpenRequest(pub SourceSpec);

/// A source opened (after probing/scanning on a worker), possibly from a saved state to restore.
#[derive(Message, Clone)]
pub struct SourceOpened(pub Source, pub Option<Arc<Restore>>);

/// A saved state being reopened: the viewer's JSON and its embedded geometry.
pub struct Restore {
    pub state: serde_json::Value,
    pub rec: Option<Arc<Reconstruction>>,
    /// The state file.
    pub path: PathBuf,
    /// Why the source may not be what was saved (its content changed), said when it reopens.
    pub warning: Option<String>,
}

/// Open an evaluation run's folder in the results browser (and another to compare with).
#[derive(Message, Clone, Debug)]
pub struct OpenEvalRun {
    pub path: PathBuf,
    pub compare: Option<PathBuf>,
}

/// Save the current state to a `.svstate` file.
#[derive(Message, Clone, Debug)]
pub struct SaveState(pub PathBuf);

/// Requests to seek.
#[derive(Message, Clone, Copy, Debug)]
pub struct SeekRequest(pub usize);

/// Requests a screenshot of the window to a PNG.
#[derive(Message, Clone, Debug)]
pub struct ScreenshotRequest(pub PathBuf);

/// Geometry (with its cloud) is ready to show.
#[derive(Message, Clone)]
pub struct SceneLoaded(pub Arc<LoadedScene>);

/// A decoded frame for the player: index, frame, and the file it came from (so frames of a video
/// closed meanwhile are not taken for the new one's).
#[derive(Message, Clone)]
pub struct FrameDecoded(pub usize, pub Arc<spatial_models::vggt::preprocess::RgbFrame>, pub PathBuf);

/// Voxel sets for space-aware sampling, for the geometry of the given label.
#[derive(Message, Clone)]
pub struct VoxelsReady(pub Result<Arc<VoxelSets>, String>, pub usize);

/// A recoloured cloud for the key it was asked for.
#[derive(Message, Clone)]
pub struct CoverageReady(pub Arc<PointCloudBuffers>, pub u64);

/// Camera commands from the UI and scripts.
#[derive(Message, Clone, Copy, Debug)]
pub enum CameraCommand {
    Reset,
    /// Look through the camera of the geometry frame nearest this source frame.
    LookThrough(usize),
}

/// Load VGGT weights (a folder or repo id).
#[derive(Message, Clone, Debug)]
pub struct LoadVggt(pub String);

/// Reconstruct the open source again with the current settings.
#[derive(Message, Clone, Copy, Debug)]
pub struct Reconstruct;

/// Cancel the reconstruction in progress.
#[derive(Message, Clone, Copy, Debug)]
pub struct CancelReconstruction;

/// Load Spatial-MLLM (or Qwen2.5-VL) weights (a folder or repo id).
#[derive(Message, Clone, Debug)]
pub struct LoadMllm(pub String);

/// Ask a question about what is open.
#[derive(Message, Clone, Debug)]
pub struct AskQuestion(pub String);

/// Stop the answer being generated.
#[derive(Message, Clone, Copy, Debug)]
pub struct CancelAnswer;

/// Export the geometry on screen (the format from the file name).
#[derive(Message, Clone, Debug)]
pub struct ExportRequest {
    pub path: PathBuf,
    /// The format; None: implied by the name (folders: COLMAP binary).
    pub format: Option<crate::pipeline::export::ExportFormat>,
}

/// Run the model threads on another device / dtype (weights reload).
#[derive(Message, Clone, Copy, Debug)]
pub struct SetCompute(pub crate::pipeline::device::DeviceRequest, pub crate::pipeline::device::DTypeRequest);

/// Settings kept across runs (recent files, the cache cap), saved when they change.
#[derive(Resource, Default, Clone, PartialEq)]
pub struct Settings(pub crate::pipeline::settings::AppSettings);

/// The reconstruction cache (shared with the VGGT thread), for the settings' size and Clear.
#[derive(Resource, Clone)]
pub struct SharedCache(pub Option<crate::pipeline::cache::ReconstructionCache>);

/// Registers the shared resources and messages.
pub fn register(app: &mut App) {
    let settings = crate::pipeline::settings::AppSettings::load();
    let cache = crate::pipeline::cache::ReconstructionCache::default_dir().map(|d| crate::pipeline::cache::ReconstructionCache::open(d, settings.cache_cap_mib << 20));
    app.insert_resource(Settings(settings)).insert_resource(SharedCache(cache));
    app.init_resource::<StatusLine>()
        .init_resource::<Activity>()
        .init_resource::<Opened>()
        .init_resource::<Geometry>()
        .init_resource::<SampledFrames>()
        .init_resource::<ViewSettings>()
        .init_resource::<SamplerSettings>()
        .init_resource::<SamplingState>()
        .init_resource::<HoveredCamera>()
        .init_resource::<LookThrough>()
        .init_resource::<ViewportRect>()
        .init_resource::<Inspection>()
        .init_resource::<VideoPanel>()
        .init_resource::<VggtState>()
        .init_resource::<ChatState>()
        .add_message::<OpenRequest>()
        .add_message::<SourceOpened>()
        .add_message::<SeekRequest>()
        .add_message::<ScreenshotRequest>()
        .add_message::<SceneLoaded>()
        .add_message::<FrameDecoded>()
        .add_message::<VoxelsReady>()
        .add_message::<CoverageReady>()
        .add_message::<CameraCommand>()
        .add_message::<LoadVggt>()
        .add_message::<Reconstruct>()
        .add_message::<CancelReconstruction>()
        .add_message::<LoadMllm>()
        .add_message::<AskQuestion>()
        .add_message::<CancelAnswer>()
        .add_message::<ExportRequest>()
        .add_message::<SetCompute>()
        .add_message::<SaveState>()
        .add_message::<OpenEvalRun>()
        .init_resource::<QuestionFrames>();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shader_constant(mode: ColorMode) -> &'static str {
        match mode {
            ColorMode::Image => "COLOR_MODE_IMAGE",
            ColorMode::Confidence => "COLOR_MODE_CONFIDENCE",
            ColorMode::Depth => "COLOR_MODE_DEPTH",
            ColorMode::FrameIndex => "COLOR_MODE_FRAME_INDEX",
            ColorMode::FirstCoveringPick => "COLOR_MODE_FIRST_COVERING_PICK",
        }
    }

    /// Every colour mode is a constant of the shader with the same value, and the shader has no
    /// mode the app does not know.
    #[test]
    fn colour_modes_match_the_shader() {
        let wgsl = include_str!("../../../shaders/points.wgsl");
        let constants: Vec<(String, u32)> = wgsl
            .lines()
            .filter_map(|l| {
                let rest = l.trim().strip_prefix("const COLOR_MODE_")?;
                let (name, value) = rest.split_once(": u32 =")?;
                Some((format!("COLOR_MODE_{name}"), value.trim().trim_end_matches(';').trim_end_matches('u').parse().ok()?))
            })
            .collect();
        assert_eq!(constants.len(), ColorMode::ALL.len(), "{constants:?}");
        for mode in ColorMode::ALL {
            assert!(constants.contains(&(shader_constant(mode).to_string(), mode as u32)), "{mode:?} is not `const {}: u32 = {}u;` in the shader", shader_constant(mode), mode as u32);
        }
    }

    /// The plugins form layers: `state` imports no plugin, and no two plugins import each other
    /// (directly or through others).
    #[test]
    fn gui_modules_import_in_layers() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gui");
        let mut modules = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let (name, text) = if path.is_dir() {
                let mut text = String::new();
                for f in std::fs::read_dir(&path).unwrap().flatten() {
                    text += &std::fs::read_to_string(f.path()).unwrap();
                }
                (path.file_name().unwrap().to_string_lossy().into_owned(), text.replace("super::super::", "super::"))
            } else if path.extension().is_some_and(|e| e == "rs") && path.file_stem().is_some_and(|s| s != "mod") {
                (path.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&path).unwrap())
            } else {
                continue;
            };
            modules.insert(name, text);
        }
        let names: Vec<String> = modules.keys().cloned().collect();
        let imports = |text: &str| -> Vec<String> {
            let code = text.split("#[cfg(test)]").next().unwrap_or(text);
            names.iter().filter(|n| code.contains(&format!("super::{n}::")) || code.contains(&format!("super::{n}::{{")) || code.contains(&format!("super::{n};"))).cloned().collect()
        };
        let graph: std::collections::BTreeMap<String, Vec<String>> = modules.iter().map(|(n, t)| (n.clone(), imports(t).into_iter().filter(|m| m != n).collect())).collect();
        assert!(graph["state"].iter().all(|m| m == "cloud"), "state imports {:?}", graph["state"]);
        assert!(graph["cloud"].is_empty(), "cloud imports {:?}", graph["cloud"]);
        // No cycles: a depth-first search finds no back edge.
        fn visit(n: &str, graph: &std::collections::BTreeMap<String, Vec<String>>, stack: &mut Vec<String>, done: &mut std::collections::BTreeSet<String>) {
            if done.contains(n) {
                return;
            }
            assert!(!stack.contains(&n.to_string()), "import cycle: {} -> {n}", stack.join(" -> "));
            stack.push(n.to_string());
            for m in &graph[n] {
                visit(m, graph, stack, done);
            }
            stack.pop();
            done.insert(n.to_string());
        }
        let mut done = Default::default();
        for n in graph.keys() {
            visit(n, &graph, &mut Vec::new(), &mut done);
        }
    }
}
