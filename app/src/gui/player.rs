//! Playback of the open source: play/pause (space), step (left/right), scrub and speed. Geometry
//! frames live in memory; folder and video frames are decoded on demand at display size with a
//! small cache, so memory stays bounded whatever the source holds. The last good frame stays on
//! screen until the next one is ready.

use super::state::*;
use super::tasks::{DecodeFailed, FrameRef, Worker};
use crate::pipeline::previews::ScrubPreviews;
use crate::pipeline::source::Source;
use bevy::prelude::*;
use bevy_egui::EguiContexts;
use spatial_models::vggt::preprocess::RgbFrame;
use std::collections::VecDeque;
use std::sync::Arc;

const CACHE_FRAMES: usize = 48;

#[derive(Resource, Default)]
pub struct Player {
    pub label: String,
    pub frame_count: usize,
    pub current: usize,
    pub playing: bool,
    pub speed: f32,
    pub fps: f32,
    source: Option<Source>,
    accumulated: f32,
    cache: VecDeque<(usize, Arc<RgbFrame>)>,
    requested: Option<usize>,
    /// The frame asked for ahead of `current` while a video plays.
    requested_ahead: Option<usize>,
    /// A frame ahead that failed to decode: until playback reaches it, frames are asked for one
    /// at a time, so the first broken one is found and playback stops there.
    ahead_failed: Option<usize>,
    /// Playback stopped at a broken frame (and why) with frames before it not yet decoded: they
    /// are stepped through one by one until the first that fails, or this one.
    probing_to: Option<(usize, String)>,
    /// The frame on screen (may lag `current` while a decode is in flight).
    pub shown: Option<(usize, Arc<RgbFrame>)>,
    /// `shown` is a low-resolution scrub preview near `current`, the exact frame is on its way.
    pub shown_is_preview: bool,
    /// Why the current frame could not be decoded (the previous frame stays on screen).
    pub frame_error: Option<(usize, String)>,
    pub previews: ScrubPreviews,
}

impl Player {
    /// Switches to a new source at its first frame.
    fn set_source(&mut self, source: Source) {
        self.label = source.name();
        self.frame_count = source.len();
        self.fps = source.fps();
        self.current = 0;
        self.cache.clear();
        self.shown = None;
        self.shown_is_preview = false;
        self.frame_error = None;
        self.requested = None;
        self.requested_ahead = None;
        self.ahead_failed = None;
        self.probing_to = None;
        self.previews = match &source {
            Source::Video(info) => ScrubPreviews::start(info),
            _ => ScrubPreviews::default(),
        };
        self.source = Some(source);
    }

    pub fn seek(&mut self, frame: usize) {
        self.probing_to = None;
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
    /// Whether the exact current frame is on screen.
    pub fn shows_current(&self) -> bool {
        self.shown.as_ref().is_some_and(|(i, _)| *i == self.current) && !self.shown_is_preview
    }
}

fn on_opened(mut opened: MessageReader<SourceOpened>, mut player: ResMut<Player>, mut status: ResMut<StatusLine>) {
    for SourceOpened(source, _) in opened.read() {
        status.info(match source {
            Source::Video(info) => format!(
                "{}: {} frames, {:.2} fps, {}x{}, {}{}",
                info.path.display(),
                info.frames,
                info.fps,
                info.width,
                info.height,
                info.codec,
                if info.rotation != 0 { format!(", rotated {}", info.rotation) } else { String::new() }
            ),
            Source::Folder(f) => format!("{}: {} frames of {}x{}", f.path.display(), f.files.len(), f.width, f.height),
            Source::Geometry(g) => format!("{}: {} frames", g.label, g.rec.frames),
        });
        player.set_source(source.clone());
    }
}

/// Makes `shown` follow `current`: geometry frames directly, file frames via the decoder.
fn update_shown(time: Res<Time>, mut player: ResMut<Player>, mut worker: ResMut<Worker>, mut activity: ResMut<Activity>, mut decoded: MessageReader<FrameDecoded>, mut failed: MessageReader<DecodeFailed>) {
    let player = &mut *player;
    for FrameDecoded(index, frame, source) in decoded.read() {
        // A frame of what was open before (decoded while the user opened something else).
        let current_file = match &player.source {
            Some(Source::Video(info)) => Some(&info.path),
            Some(Source::Folder(info)) => info.files.get(*index),
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
        if player.requested_ahead == Some(*index) {
            player.requested_ahead = None;
        }
    }
    for DecodeFailed(index, why) in failed.read() {
        let index = *index;
        if player.requested_ahead == Some(index) {
            player.requested_ahead = None;
            player.ahead_failed = Some(index);
            continue;
        }
        // Playing on would fail at every later frame of a broken file: stop at the first. The
        // failure may arrive after playback moved past the frame.
        if player.playing && index <= player.current {
            player.playing = false;
            // Right after the last frame decoded before it: the frames in between may be broken
            // too (their requests were superseded), and asking for the first of them tells.
            let last_good = player.cache.iter().map(|(i, _)| *i).filter(|&i| i < index && index - i <= READ_AHEAD_MAX + 1).max();
            player.current = last_good.map_or(index, |g| g + 1);
            player.requested = (player.current == index).then_some(index);
            player.probing_to = (player.current < index).then(|| (index, why.clone()));
        }
        if player.requested == Some(index) {
            player.requested = None;
            player.frame_error = Some((index, why.clone()));
        }
    }
    player.previews.receive();
    probe_towards_break(player);
    follow_current(player, &mut worker, &mut activity);
    // After the current frame's request: a newer request supersedes an older one still queued,
    // and a read ahead returns the frames on its way, the current one among them.
    read_ahead(player, &mut worker, &mut activity, time.delta_secs());
}

/// After playback stopped at a broken frame: steps on from the last good frame, one decoded
/// frame at a time, so it ends at the first frame that fails.
fn probe_towards_break(player: &mut Player) {
    let Some((broken, why)) = player.probing_to.clone() else { return };
    let current = player.current;
    if player.playing || player.frame_error.as_ref().is_some_and(|(i, _)| *i == current) {
        player.probing_to = None;
    } else if player.shows_current() {
        player.current += 1;
        if player.current >= broken {
            player.current = broken;
            player.frame_error = Some((broken, why));
            player.probing_to = None;
        }
    }
}

/// Makes `shown` the current frame, or its preview while the frame decodes.
fn follow_current(player: &mut Player, worker: &mut Worker, activity: &mut Activity) {
    let current = player.current;
    if player.shows_current() {
        return;
    }
    match &player.source {
        None => {}
        Some(Source::Geometry(g)) => {
            let rec = &g.rec;
            if current < rec.frames {
                let n = rec.width * rec.height * 3;
                player.shown = Some((current, Arc::new(RgbFrame::new(rec.width, rec.height, rec.images[current * n..(current + 1) * n].to_vec()))));
                player.shown_is_preview = false;
            }
        }
        Some(source) => {
            if let Some((_, f)) = player.cache.iter().find(|(i, _)| *i == current) {
                player.shown = Some((current, f.clone()));
                player.shown_is_preview = false;
                player.frame_error = None;
                return;
            }
            if player.frame_error.as_ref().is_some_and(|(i, _)| *i == current) {
                // It failed: the last good frame before it stays (exact, when decoded), the
                // error says why.
                if player.shown_is_preview
                    && let Some((i, f)) = player.cache.iter().filter(|(i, _)| *i < current).max_by_key(|(i, _)| *i)
                {
                    player.shown = Some((*i, f.clone()));
                    player.shown_is_preview = false;
                }
                return;
            }
            if player.requested != Some(current) {
                player.requested = Some(current);
                let frame = match source {
                    Source::Video(info) => FrameRef::Video(info.clone(), current),
                    Source::Folder(info) => FrameRef::Image(info.files[current].clone()),
                    Source::Geometry(_) => unreachable!(),
                };
                worker.request_decode(activity, current, frame);
            }
            // While it decodes, scrubbing shows the frame's preview at once; otherwise the last
            // good frame stays until the exact one arrives.
            if let Some(preview) = player.previews.nearest(current) {
                player.shown = Some(preview);
                player.shown_is_preview = true;
            }
        }
    }
}

/// While a video plays, asks for the frames due in the next few display frames before they are
/// due: asking for each frame only once it is current showed its low-resolution preview whenever
/// the video advanced every display frame (fast playback, or a slow display). The decoder hands
/// over the frames it reads on the way, so one request fills the cache up to the frame asked for.
fn read_ahead(player: &mut Player, worker: &mut Worker, activity: &mut Activity, frame_secs: f32) {
    let Some(Source::Video(info)) = &player.source else { return };
    let info = info.clone();
    let current = player.current;
    if !player.playing || player.frame_count == 0 {
        return;
    }
    // Two display frames' worth of video, and at least two frames.
    let per_display_frame = frame_secs.clamp(0.0, 0.25) * player.speed * player.fps;
    let lead = ((2.0 * per_display_frame).ceil() as usize).clamp(2, READ_AHEAD_MAX);
    let target = (current + lead).min(player.frame_count - 1);
    if player.ahead_failed.is_some_and(|f| f >= current && f <= current + READ_AHEAD_MAX) {
        return;
    }
    player.ahead_failed = None;
    let stale = player.requested_ahead.is_some_and(|r| r <= current || r > current + READ_AHEAD_MAX);
    if stale {
        player.requested_ahead = None;
    }
    if target <= current || player.requested_ahead.is_some() || player.cache.iter().any(|(i, _)| *i == target) {
        return;
    }
    player.requested_ahead = Some(target);
    worker.request_decode(activity, target, FrameRef::Video(info, target));
}

/// The furthest ahead a playing video is decoded (the decoder keeps at most 16 frames on the way).
const READ_AHEAD_MAX: usize = 12;

fn playback(time: Res<Time>, mut player: ResMut<Player>) {
    if !player.playing || player.frame_count == 0 {
        return;
    }
    player.accumulated += time.delta_secs() * player.speed * player.fps;
    while player.accumulated >= 1.0 {
        player.accumulated -= 1.0;
        let next = player.current + 1;
        player.current = if next >= player.frame_count { 0 } else { next };
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
    use crate::pipeline::source::SourceSpec;
    if opts.bench_points.is_some() {
        return;
    }
    // The input, or the demo; a script that opens something itself replaces it.
    match &opts.input {
        Some(p) => open.write(OpenRequest(SourceSpec::parse(p))),
        None => open.write(OpenRequest(SourceSpec::Demo)),
    };
}

pub struct PlayerPlugin;

impl Plugin for PlayerPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(Player { speed: 1.0, fps: 10.0, ..default() })
            .add_systems(PostStartup, open_at_startup)
            .add_systems(Update, (on_opened, keyboard, handle_seek, playback, update_shown).chain());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::video::VideoInfo;

    fn video(path: &str) -> Arc<VideoInfo> {
        Arc::new(VideoInfo { path: path.into(), frames: 10, fps: 10.0, duration_s: 1.0, width: 4, height: 2, codec: "h264".into(), rotation: 0, start_time: 0.0, constant_rate: true })
    }

    fn app_with(player: Player) -> App {
        let mut app = App::new();
        super::super::state::register(&mut app);
        app.add_message::<DecodeFailed>();
        app.insert_resource(super::super::tasks::spawn_threads());
        app.insert_resource(player);
        app.init_resource::<Time>();
        app.add_systems(Update, update_shown);
        app
    }

    #[test]
    fn frames_decoded_for_a_file_no_longer_open_are_dropped() {
        // "new.mp4" is open at frame 3, whose decode is already asked for.
        let mut app = app_with(Player { source: Some(Source::Video(video("/videos/new.mp4"))), frame_count: 10, current: 3, requested: Some(3), ..default() });
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

    /// A frame that cannot be decoded leaves the last good frame on screen (under its own number)
    /// and records why; it is not asked for again every frame, and a playing video stops there.
    #[test]
    fn a_frame_that_fails_to_decode_keeps_the_last_good_one_labelled() {
        let good = Arc::new(RgbFrame::new(4, 2, vec![7; 24]));
        let mut app = app_with(Player { source: Some(Source::Video(video("/videos/a.mp4"))), frame_count: 10, fps: 10.0, speed: 1.0, current: 4, requested: Some(4), shown: Some((3, good)), playing: true, ..default() });
        app.world_mut().write_message(DecodeFailed(4, "truncated".into()));
        app.update();
        app.update();
        let player = app.world().resource::<Player>();
        assert_eq!(player.shown.as_ref().map(|(i, _)| *i), Some(3));
        assert!(!player.shows_current());
        assert_eq!(player.frame_error.as_ref().map(|(i, e)| (*i, e.as_str())), Some((4, "truncated")));
        assert_eq!(player.requested, None);
        // Playback stops at the broken frame rather than failing at every one after it, also when
        // the failure arrives after playback moved on.
        assert!(!player.playing);
        assert_eq!(player.current, 4);
        let good = Arc::new(RgbFrame::new(4, 2, vec![7; 24]));
        let mut app = app_with(Player { source: Some(Source::Video(video("/videos/a.mp4"))), frame_count: 10, fps: 10.0, speed: 1.0, current: 6, requested: Some(6), shown: Some((3, good)), playing: true, ..default() });
        app.world_mut().write_message(DecodeFailed(4, "truncated".into()));
        app.update();
        let player = app.world().resource::<Player>();
        assert!(!player.playing);
        assert_eq!(player.current, 4);
        assert_eq!(player.frame_error.as_ref().map(|(i, _)| *i), Some(4));
        // With frames decoded just before it, playback stops right after the last of them, and
        // that frame is asked for: it may be the first broken one.
        let frame = |v: u8| Arc::new(RgbFrame::new(4, 2, vec![v; 24]));
        let mut app = app_with(Player { source: Some(Source::Video(video("/videos/a.mp4"))), frame_count: 10, fps: 10.0, speed: 1.0, current: 7, requested: Some(7), cache: VecDeque::from([(2, frame(2)), (3, frame(3))]), playing: true, ..default() });
        app.world_mut().write_message(DecodeFailed(6, "truncated".into()));
        app.update();
        let player = app.world().resource::<Player>();
        assert!(!player.playing);
        assert_eq!((player.current, player.requested), (4, Some(4)));
        assert!(player.frame_error.is_none());
        // Frame 4 decodes: on to 5, which fails: that is where it stays.
        app.world_mut().write_message(FrameDecoded(4, frame(4), "/videos/a.mp4".into()));
        app.update();
        app.update();
        assert_eq!(app.world().resource::<Player>().current, 5);
        app.world_mut().write_message(DecodeFailed(5, "truncated".into()));
        app.update();
        app.update();
        let player = app.world().resource::<Player>();
        assert_eq!(player.current, 5);
        assert_eq!(player.frame_error.as_ref().map(|(i, _)| *i), Some(5));
        assert_eq!(player.shown.as_ref().map(|(i, _)| *i), Some(4));
    }

    /// A playing video asks for the frames just ahead while the current one is on screen, one
    /// request at a time; a paused one asks for nothing.
    #[test]
    fn a_playing_video_reads_ahead_one_request_at_a_time() {
        let frame = |v: u8| Arc::new(RgbFrame::new(4, 2, vec![v; 24]));
        let player = |playing| Player { source: Some(Source::Video(video("/videos/a.mp4"))), frame_count: 10, fps: 10.0, speed: 1.0, current: 3, cache: VecDeque::from([(3, frame(3))]), playing, ..default() };
        let mut paused = app_with(player(false));
        paused.update();
        assert_eq!(paused.world().resource::<Activity>().decodes, 0);
        assert_eq!(paused.world().resource::<Player>().requested_ahead, None);

        let mut app = app_with(player(true));
        app.update();
        app.update();
        let ahead = app.world().resource::<Player>().requested_ahead.expect("a frame ahead is asked for");
        assert!(ahead > 3 && ahead <= 3 + READ_AHEAD_MAX, "{ahead}");
        assert!(app.world().resource::<Player>().shows_current());
        assert_eq!(app.world().resource::<Activity>().decodes, 1, "one request at a time");
        app.world_mut().write_message(FrameDecoded(ahead, frame(9), "/videos/a.mp4".into()));
        app.update();
        assert_ne!(app.world().resource::<Player>().requested_ahead, Some(ahead));
        assert!(app.world().resource::<Player>().cached_frames().contains(&ahead));
    }
}
