//! The frame source and its playback: play/pause (space), step (left/right), scrub and speed.
//! Demo frames live in memory at 320x240; folder frames are decoded on demand at display size,
//! with a small cache, so memory stays bounded whatever the folder holds.

use crate::previews::ScrubPreviews;
use super::tasks::{FolderInfo, FolderOpened, FrameDecoded, FrameRef, Job, SceneLoaded, VideoOpened, Worker};
use super::{OpenRequest, SeekRequest, StartupOptions, StatusLine};
use bevy::prelude::*;
use bevy_egui::EguiContexts;
use spatial_models::reconstruction::Reconstruction;
use spatial_models::vggt::preprocess::RgbFrame;
use std::collections::VecDeque;
use std::sync::Arc;

pub const DEMO_FPS: f32 = 10.0;
const CACHE_FRAMES: usize = 48;
pub enum FrameSource {
    Demo(Arc<Reconstruction>),
    Folder(Arc<FolderInfo>),
    Video(Arc<crate::video::VideoInfo>),
}

#[derive(Resource, Default)]
pub struct Player {
    pub source: Option<FrameSource>,
    pub label: String,
    pub frame_count: usize,
    pub current: usize,
    pub playing: bool,
    pub speed: f32,
    pub fps: f32,
    accumulated: f32,
    cache: VecDeque<(usize, Arc<RgbFrame>)>,
    requested: Option<usize>,
    /// The frame on screen (may lag `current` while a decode is in flight).
    pub shown: Option<(usize, Arc<RgbFrame>)>,
    /// `shown` is a low-resolution scrub preview near `current`, the exact frame is on its way.
    pub shown_is_preview: bool,
    pub previews: ScrubPreviews,
}

impl Player {
    /// Switches to a new source at its first frame.
    fn set_source(&mut self, source: FrameSource, label: String, frame_count: usize, fps: f32) {
        self.source = Some(source);
        self.label = label;
        self.frame_count = frame_count;
        self.fps = fps;
        self.current = 0;
        self.cache.clear();
        self.shown = None;
        self.shown_is_preview = false;
        self.requested = None;
        self.previews = match &self.source {
            Some(FrameSource::Video(info)) => ScrubPreviews::start(info),
            _ => ScrubPreviews::default(),
        };
    }

    pub fn seek(&mut self, frame: usize) {
        if self.frame_count > 0 {
            self.current = frame.min(self.frame_count - 1);
        }
    }
    /// Frames decoded at display size and kept for stepping, ascending.
    pub fn cached_frames(&self) -> Vec<usize> {
        let mut frames: Vec<usize> = self.cache.iter().map(|(i, _)| *i).collect();
        frames.sort_unstable();
        frames.dedup();
        frames
    }
    pub fn time_of(&self, frame: usize) -> f32 {
        frame as f32 / self.fps.max(1e-3)
    }
}

fn handle_open(mut requests: MessageReader<OpenRequest>, mut worker: ResMut<Worker>, mut status: ResMut<StatusLine>, settings: Res<super::scene::ViewSettings>) {
    for req in requests.read() {
        // `open "demo"` (scripts, command line) is the demo scene.
        let req = match req {
            OpenRequest::Path(p) if p.as_os_str() == "demo" => &OpenRequest::Demo,
            other => other,
        };
        match req {
            OpenRequest::Demo => {
                status.info("building the demo scene...");
                worker.submit(Job::BuildDemo { frames: crate::demo::DEMO_FRAMES, budget: settings.point_budget, source: settings.source });
            }
            OpenRequest::Path(p) if p.is_dir() => {
                status.info(format!("opening {}...", p.display()));
                worker.submit(Job::ScanFolder(p.clone()));
            }
            OpenRequest::Path(p) if !p.exists() => status.error(format!("{}: no such file or folder", p.display())),
            OpenRequest::Path(p) => {
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
                if crate::video::is_video_path(p) {
                    status.info(format!("opening {}...", p.display()));
                    worker.submit(Job::ProbeVideo(p.clone()));
                } else if matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
                    if let Some(parent) = p.parent() {
                        status.info(format!("opening the folder of {}...", p.display()));
                        worker.submit(Job::ScanFolder(parent.to_path_buf()));
                    }
                } else {
                    status.error(format!("{}: not a video or a folder of frames", p.display()));
                }
            }
        }
    }
}

fn on_scene_loaded(mut loaded: MessageReader<SceneLoaded>, mut player: ResMut<Player>) {
    for SceneLoaded(scene) in loaded.read() {
        // A rebuilt cloud of the same geometry keeps the player where it is.
        if let Some(FrameSource::Demo(rec)) = &player.source {
            if Arc::ptr_eq(rec, &scene.rec) {
                continue;
            }
        }
        if scene.label.starts_with("demo") {
            player.set_source(FrameSource::Demo(scene.rec.clone()), scene.label.clone(), scene.rec.frames, DEMO_FPS);
        }
    }
}

fn on_folder_opened(mut opened: MessageReader<FolderOpened>, mut player: ResMut<Player>, mut status: ResMut<StatusLine>) {
    for FolderOpened(info) in opened.read() {
        status.info(format!(
            "{}: {} frames of {}x{}",
            info.path.display(),
            info.files.len(),
            info.width,
            info.height
        ));
        let label = info.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        player.set_source(FrameSource::Folder(info.clone()), label, info.files.len(), 10.0);
    }
}

fn on_video_opened(mut opened: MessageReader<VideoOpened>, mut player: ResMut<Player>, mut status: ResMut<StatusLine>) {
    for VideoOpened(info) in opened.read() {
        status.info(format!(
            "{}: {} frames, {:.2} fps, {}x{}, {}{}",
            info.path.display(),
            info.frames,
            info.fps,
            info.width,
            info.height,
            info.codec,
            if info.rotation != 0 { format!(", rotated {}", info.rotation) } else { String::new() }
        ));
        let label = info.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        player.set_source(FrameSource::Video(info.clone()), label, info.frames, info.fps as f32);
    }
}

fn demo_frame(rec: &Reconstruction, f: usize) -> RgbFrame {
    let n = rec.width * rec.height * 3;
    RgbFrame::new(rec.width, rec.height, rec.images[f * n..(f + 1) * n].to_vec())
}

/// Makes `shown` follow `current`: demo frames directly, folder frames via the decoder.
fn update_shown(mut player: ResMut<Player>, mut worker: ResMut<Worker>, mut decoded: MessageReader<FrameDecoded>) {
    let player = &mut *player;
    for FrameDecoded(index, frame, source) in decoded.read() {
        // A frame of what was open before (decoded while the user opened something else).
        let current_file = match &player.source {
            Some(FrameSource::Video(info)) => Some(&info.path),
            Some(FrameSource::Folder(info)) => info.files.get(*index),
            _ => None,
        };
        if current_file != Some(source) {
            continue;
        }
        player.cache.push_back((*index, frame.clone()));
        while player.cache.len() > CACHE_FRAMES {
            player.cache.pop_front();
        }
        if player.requested == Some(*index) {
            player.requested = None;
        }
    }
    player.previews.receive();
    let current = player.current;
    if player.shown.as_ref().is_some_and(|(i, _)| *i == current) && !player.shown_is_preview {
        return;
    }
    player.shown_is_preview = false;
    match &player.source {
        None => {}
        Some(FrameSource::Demo(rec)) => {
            if current < rec.frames {
                player.shown = Some((current, Arc::new(demo_frame(rec, current))));
            }
        }
        Some(FrameSource::Folder(info)) => {
            if let Some((_, f)) = player.cache.iter().find(|(i, _)| *i == current) {
                player.shown = Some((current, f.clone()));
            } else if player.requested != Some(current) {
                player.requested = Some(current);
                worker.request_decode(current, FrameRef::Image(info.files[current].clone()));
            }
        }
        Some(FrameSource::Video(info)) => {
            if let Some((_, f)) = player.cache.iter().find(|(i, _)| *i == current) {
                player.shown = Some((current, f.clone()));
            } else {
                if player.requested != Some(current) {
                    player.requested = Some(current);
                    worker.request_decode(current, FrameRef::Video(info.clone(), current));
                }
                // While it decodes, scrubbing shows the nearest preview at once.
                if let Some(preview) = player.previews.nearest(current) {
                    player.shown = Some(preview);
                    player.shown_is_preview = true;
                }
            }
        }
    }
}

fn playback(time: Res<Time>, mut player: ResMut<Player>) {
    if !player.playing || player.frame_count == 0 {
        return;
    }
    player.accumulated += time.delta_secs() * player.speed * player.fps;
    while player.accumulated >= 1.0 {
        player.accumulated -= 1.0;
        let next = player.current + 1;
        if next >= player.frame_count {
            player.current = 0;
        } else {
            player.current = next;
        }
    }
}

fn keyboard(keys: Res<ButtonInput<KeyCode>>, mut player: ResMut<Player>, mut contexts: EguiContexts) {
    if contexts.ctx_mut().is_ok_and(|c| c.egui_wants_keyboard_input()) {
        return;
    }
    if keys.just_pressed(KeyCode::Space) {
        player.playing = !player.playing;
    }
    if keys.just_pressed(KeyCode::ArrowRight) {
        let c = player.current + 1;
        player.seek(c);
        player.playing = false;
    }
    if keys.just_pressed(KeyCode::ArrowLeft) {
        let c = player.current.saturating_sub(1);
        player.seek(c);
        player.playing = false;
    }
}

fn handle_seek(mut seeks: MessageReader<SeekRequest>, mut player: ResMut<Player>) {
    for SeekRequest(f) in seeks.read() {
        player.seek(*f);
    }
}

fn open_at_startup(opts: Res<StartupOptions>, mut open: MessageWriter<OpenRequest>) {
    // A script opens what it wants itself; otherwise the input or the demo.
    if (opts.script.is_some() && opts.input.is_none()) || opts.bench_points.is_some() {
        return;
    }
    match &opts.input {
        Some(p) => open.write(OpenRequest::Path(p.clone())),
        None => open.write(OpenRequest::Demo),
    };
}

pub struct PlayerPlugin;

impl Plugin for PlayerPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(Player { speed: 1.0, fps: DEMO_FPS, ..default() })
            .add_systems(PostStartup, open_at_startup)
            .add_systems(Update, (handle_open, on_scene_loaded, on_folder_opened, on_video_opened, keyboard, handle_seek, playback, update_shown).chain());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::VideoInfo;

    fn video(path: &str) -> Arc<VideoInfo> {
        Arc::new(VideoInfo { path: path.into(), frames: 10, fps: 10.0, duration_s: 1.0, width: 4, height: 2, codec: "h264".into(), rotation: 0 })
    }

    #[test]
    fn frames_decoded_for_a_file_no_longer_open_are_dropped() {
        let mut app = App::new();
        app.add_message::<FrameDecoded>();
        app.insert_resource(super::super::tasks::spawn_threads());
        // "new.mp4" is open at frame 3, whose decode is already asked for.
        let player = Player { source: Some(FrameSource::Video(video("/videos/new.mp4"))), frame_count: 10, current: 3, requested: Some(3), ..default() };
        app.insert_resource(player);
        app.add_systems(Update, update_shown);
        let frame = |v: u8| Arc::new(RgbFrame::new(4, 2, vec![v; 24]));
        // A late frame 3 of the video open before.
        app.world_mut().write_message(FrameDecoded(3, frame(1), "/videos/old.mp4".into()));
        app.update();
        let player = app.world().resource::<Player>();
        assert!(player.cached_frames().is_empty());
        assert!(player.shown.is_none());
        // The open video's own frame 3.
        app.world_mut().write_message(FrameDecoded(3, frame(2), "/videos/new.mp4".into()));
        app.update();
        let player = app.world().resource::<Player>();
        assert_eq!(player.cached_frames(), vec![3]);
        assert_eq!(player.shown.as_ref().map(|(i, f)| (*i, f.data[0])), Some((3, 2)));
    }
}
