//! The Bevy application: one plugin per concern, talking through the shared [`state`].
//!
//! * [`state`]: the shared resources and messages (imports no plugin).
//! * [`tasks`]: the worker and decoder threads (opening sources, clouds, voxel sets, exports,
//!   frame decoding).
//! * [`inference`]: VGGT on its own thread, through the pipeline.
//! * [`chat`]: Spatial-MLLM on its own thread, through the pipeline.
//! * [`player`]: playback of the open source (play, pause, step, scrub, speed).
//! * [`scene`]: geometry in 3D (point cloud draws, camera frustums, picking).
//! * [`sampling`]: uniform and space-aware frame sampling on the geometry on screen.
//! * [`renderer`]: the instanced point-splat pipeline; [`cloud`] builds what it draws.
//! * [`camera`]: orbit / pan / zoom / fly controls, reset, look through a camera.
//! * [`ui`]: egui panels (menu, scene controls, video, timeline, chat, status).
//! * [`results`]: the VSI-Bench results browser (scores, questions, the frames each used).
//! * [`session`]: saved states (save, reopen, restore the view and the chat).
//! * [`script`]: scripted runs (`--script steps.json`), also used by the GUI tests.
//! * [`bench`]: the render benchmark.

pub mod bench;
pub mod camera;
pub mod chat;
pub mod cloud;
pub mod inference;
pub mod inspect;
pub mod picking;
pub mod player;
pub mod renderer;
pub mod results;
pub mod sampling;
pub mod scene;
pub mod script;
pub mod session;
pub mod state;
pub mod tasks;
pub mod ui;

use crate::pipeline::device::{DTypeRequest, DeviceRequest};
use bevy::prelude::*;
use bevy::window::{PresentMode, WindowResolution};
use std::path::PathBuf;

pub struct GuiOptions {
    pub input: Option<PathBuf>,
    pub script: Option<PathBuf>,
    /// `bench render`: show N synthetic points, time the frames, print a table row, exit.
    pub bench_points: Option<usize>,
    /// VGGT weights to load at start-up (a folder or repo id).
    pub vggt: Option<String>,
    /// Spatial-MLLM weights to load at start-up (a folder or repo id).
    pub mllm: Option<String>,
    pub device: DeviceRequest,
    pub dtype: DTypeRequest,
}

/// Runs the app until it quits; returns the exit code. The model threads are stopped (cancelled
/// and joined) when the app's world is dropped, before the process exits.
pub fn run(opts: GuiOptions) -> anyhow::Result<i32> {
    if let Some(script) = &opts.script {
        // Fail before opening a window when the script itself is unreadable.
        script::Script::load(script)?;
    }
    let mut app = App::new();
    state::register(&mut app);
    app.insert_resource(ClearColor(Color::srgb(0.09, 0.09, 0.11)))
        .insert_resource(state::StartupOptions { input: opts.input, script: opts.script, bench_points: opts.bench_points, vggt: opts.vggt, mllm: opts.mllm, device: opts.device, dtype: opts.dtype })
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
            session::SessionPlugin,
            results::ResultsBrowserPlugin,
            chat::ChatPlugin,
        ))
        .add_plugins((picking::PickingPlugin, inspect::InspectPlugin));
    let exit = app.run();
    // Dropping the app drops the thread handles: each cancels its work and is joined.
    drop(app);
    Ok(match exit {
        AppExit::Success => 0,
        AppExit::Error(code) => code.get() as i32,
    })
}
