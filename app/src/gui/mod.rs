//! The Bevy application: one plugin per concern, talking through resources and messages.
//!
//! * [`tasks`]: the background worker (scene building, folder scanning, frame decoding).
//! * [`inference`]: VGGT on its own thread (load weights, reconstruct, progress, cancel).
//! * [`player`]: the frame source and playback (play, pause, step, scrub, speed).
//! * [`scene`]: geometry in 3D (point cloud settings, camera frustums, picking).
//! * [`camera`]: orbit / pan / zoom / fly controls, reset, look through a camera.
//! * [`chat`]: Spatial-MLLM on its own thread (load, ask, stream, cancel) and the chat panel.
//! * [`ui`]: egui panels (menu, scene controls, video, timeline, chat, status).
//! * [`script`]: scripted runs (`--script steps.json`), also used by the GUI tests.
//! * [`sampling`]: uniform and space-aware frame sampling on the geometry on screen.
//! * [`renderer`]: the instanced point-splat pipeline.

pub mod bench;
pub mod camera;
pub mod chat;
pub mod inference;
pub mod cloud;
pub mod player;
pub mod renderer;
pub mod sampling;
pub mod scene;
pub mod script;
pub mod tasks;
pub mod ui;

use bevy::prelude::*;
use bevy::window::{PresentMode, WindowResolution};
use std::path::PathBuf;

pub struct GuiOptions {
    pub input: Option<PathBuf>,
    pub script: Option<PathBuf>,
    /// `bench render`: show N synthetic points, time 300 frames, print a table row, exit.
    pub bench_points: Option<usize>,
    /// VGGT weights to load at start-up (`--vggt DIR`).
    pub vggt: Option<PathBuf>,
    /// Spatial-MLLM weights to load at start-up (`--mllm DIR`).
    pub mllm: Option<PathBuf>,
}

/// What the app is showing, for the title bar and the badge.
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
#[derive(Resource, Clone)]
pub struct StartupOptions {
    pub input: Option<PathBuf>,
    pub script: Option<PathBuf>,
    pub bench_points: Option<usize>,
    pub vggt: Option<PathBuf>,
    pub mllm: Option<PathBuf>,
}

/// Requests to open a source; handled by the player.
#[derive(Message, Clone, Debug)]
pub enum OpenRequest {
    Demo,
    Path(PathBuf),
}

/// Requests to seek; handled by the player.
#[derive(Message, Clone, Copy, Debug)]
pub struct SeekRequest(pub usize);

/// Requests a screenshot of the window to a PNG.
#[derive(Message, Clone, Debug)]
pub struct ScreenshotRequest(pub PathBuf);

pub fn run(opts: GuiOptions) -> anyhow::Result<i32> {
    if let Some(script) = &opts.script {
        // Fail before opening a window when the script itself is unreadable.
        script::Script::load(script)?;
    }
    let exit = App::new()
        .insert_resource(ClearColor(Color::srgb(0.09, 0.09, 0.11)))
        .insert_resource(StartupOptions { input: opts.input, script: opts.script, bench_points: opts.bench_points, vggt: opts.vggt, mllm: opts.mllm })
        .init_resource::<StatusLine>()
        .add_message::<OpenRequest>()
        .add_message::<SeekRequest>()
        .add_message::<ScreenshotRequest>()
        .add_plugins(DefaultPlugins.set(WindowPlugin {
            primary_window: Some(Window {
                title: "Spatial viewer".into(),
                resolution: WindowResolution::new(1280, 800),
                present_mode: PresentMode::AutoNoVsync,
                ..default()
            }),
            ..default()
        }))
        .add_plugins(bevy_egui::EguiPlugin::default())
        .add_plugins((
            renderer::PointCloudRenderPlugin,
            tasks::TasksPlugin,
            player::PlayerPlugin,
            scene::ScenePlugin,
            camera::CameraControlPlugin,
            ui::UiPlugin,
            script::ScriptPlugin,
            bench::RenderBenchPlugin,
            sampling::SamplingPlugin,
            inference::InferencePlugin,
            chat::ChatPlugin,
        ))
        .run();
    Ok(match exit {
        AppExit::Success => 0,
        AppExit::Error(code) => code.get() as i32,
    })
}
