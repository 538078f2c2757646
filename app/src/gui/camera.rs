//! Viewport camera: orbit (left drag), pan (right or middle drag), zoom (wheel), fly (WASD, Q/E
//! down/up), reset (R), look through the current frame's camera (C). The 3D camera renders only
//! into the area the egui panels leave free.

use super::player::Player;
use super::state::{CameraCommand, Geometry, ViewSettings, ViewportRect};
use bevy::camera::Viewport;
use bevy::core_pipeline::tonemapping::Tonemapping;
use bevy::input::mouse::{AccumulatedMouseMotion, AccumulatedMouseScroll};
use bevy::prelude::*;
use bevy::render::view::NoIndirectDrawing;
use bevy_egui::EguiContexts;

#[derive(Resource, Clone, Copy, Debug)]
pub struct OrbitCamera {
    pub focus: Vec3,
    pub yaw: f32,
    pub pitch: f32,
    pub distance: f32,
    pub fov_y: f32,
    /// Non-zero only when looking through a recorded camera (its roll in the world frame).
    pub roll: f32,
}

impl Default for OrbitCamera {
    fn default() -> Self {
        Self { focus: Vec3::new(0.0, 0.0, -2.0), yaw: 0.0, pitch: -0.35, distance: 4.0, fov_y: 50f32.to_radians(), roll: 0.0 }
    }
}

impl OrbitCamera {
    pub fn rotation(&self) -> Quat {
        Quat::from_euler(EulerRot::YXZ, self.yaw, self.pitch, self.roll)
    }
    pub fn transform(&self) -> Transform {
        let rot = self.rotation();
        Transform { translation: self.focus + rot * Vec3::new(0.0, 0.0, self.distance), rotation: rot, ..default() }
    }
}

fn setup(mut commands: Commands) {
    commands.spawn((
        Camera3d::default(),
        Tonemapping::None,
        Msaa::Off,
        // The point renderer issues direct draws.
        NoIndirectDrawing,
        OrbitCamera::default().transform(),
        Projection::Perspective(PerspectiveProjection { fov: OrbitCamera::default().fov_y, ..default() }),
    ));
}

/// Frames the whole scene: looking from behind and above the first camera towards the points.
pub fn reset_view(geometry: &Geometry) -> OrbitCamera {
    let Some(scene) = &geometry.scene else { return OrbitCamera::default() };
    let pts = &scene.cloud.points;
    let mut c = Vec3::ZERO;
    let step = (pts.len() / 20_000).max(1);
    let mut n = 0.0;
    for p in pts.iter().step_by(step) {
        c += Vec3::from_array(p.position);
        n += 1.0;
    }
    let focus = if n > 0.0 { c / n } else { Vec3::ZERO };
    // Face the way the first camera looks, from a little higher up.
    let (yaw, pitch) = camera_view(geometry, 0).map(|v| (v.yaw, v.pitch)).unwrap_or((0.0, 0.0));
    OrbitCamera { focus, yaw, pitch: (pitch - 0.45).clamp(-1.4, 1.4), distance: 0.75 * scene.index.scene_scale, fov_y: 50f32.to_radians(), roll: 0.0 }
}

/// The viewer pose of frame `f`'s camera (OpenCV axes mapped to the viewer's).
pub fn camera_view(geometry: &Geometry, f: usize) -> Option<OrbitCamera> {
    let scene = geometry.scene.as_ref()?;
    let cam = scene.rec.cameras.get(f)?;
    let m = cam.cam_to_world();
    let col = |j: usize| Vec3::new(m[0][j], -m[1][j], -m[2][j]);
    let (x, y, z) = (col(0), -col(1), -col(2));
    let rot = Quat::from_mat3(&Mat3::from_cols(x, y, z));
    let center = Vec3::new(m[0][3], -m[1][3], -m[2][3]);
    let (yaw, pitch, roll) = rot.to_euler(EulerRot::YXZ);
    let distance = 0.3 * scene.index.scene_scale;
    let fov_y = 2.0 * ((scene.rec.height as f32 / 2.0) / cam.intrinsic[1][1]).atan();
    Some(OrbitCamera { focus: center - z * distance, yaw, pitch, distance, fov_y, roll })
}

#[allow(clippy::too_many_arguments)]
fn controls(
    mut orbit: ResMut<OrbitCamera>,
    buttons: Res<ButtonInput<MouseButton>>,
    keys: Res<ButtonInput<KeyCode>>,
    motion: Res<AccumulatedMouseMotion>,
    scroll: Res<AccumulatedMouseScroll>,
    time: Res<Time>,
    mut contexts: EguiContexts,
    geometry: Res<Geometry>,
    player: Res<Player>,
    mut commands: MessageReader<CameraCommand>,
    mut settings: ResMut<ViewSettings>,
) {
    let (pointer_on_ui, keyboard_on_ui) = contexts.ctx_mut().map(|c| (c.is_pointer_over_egui() || c.egui_is_using_pointer(), c.egui_wants_keyboard_input())).unwrap_or((false, false));
    let scale = geometry.scene.as_ref().map(|s| s.index.scene_scale).unwrap_or(4.0);
    for cmd in commands.read() {
        match cmd {
            CameraCommand::Reset => *orbit = reset_view(&geometry),
            CameraCommand::LookThrough(f) => {
                if let Some(v) = camera_view(&geometry, *f) {
                    *orbit = v;
                    // Neighbouring frustums' image planes would fill the view.
                    settings.show_cameras = false;
                }
            }
        }
    }
    if geometry.is_changed() && geometry.scene.is_some() {
        *orbit = reset_view(&geometry);
    }
    if !keyboard_on_ui {
        if keys.just_pressed(KeyCode::KeyR) {
            *orbit = reset_view(&geometry);
        }
        if keys.just_pressed(KeyCode::KeyC) {
            if let Some(v) = camera_view(&geometry, player.current) {
                *orbit = v;
                settings.show_cameras = false;
            }
        }
        let rot = orbit.rotation();
        let mut fly = Vec3::ZERO;
        for (key, dir) in [(KeyCode::KeyW, -Vec3::Z), (KeyCode::KeyS, Vec3::Z), (KeyCode::KeyA, -Vec3::X), (KeyCode::KeyD, Vec3::X), (KeyCode::KeyQ, -Vec3::Y), (KeyCode::KeyE, Vec3::Y)] {
            if keys.pressed(key) {
                fly += dir;
            }
        }
        if fly != Vec3::ZERO {
            let speed = 0.4 * scale * if keys.pressed(KeyCode::ShiftLeft) { 3.0 } else { 1.0 };
            orbit.focus += rot * fly.normalize() * speed * time.delta_secs();
        }
    }
    if pointer_on_ui {
        return;
    }
    let delta = motion.delta;
    if buttons.pressed(MouseButton::Left) && delta != Vec2::ZERO {
        orbit.roll = 0.0;
        orbit.yaw -= delta.x * 0.005;
        orbit.pitch = (orbit.pitch - delta.y * 0.005).clamp(-1.55, 1.55);
    }
    if (buttons.pressed(MouseButton::Right) || buttons.pressed(MouseButton::Middle)) && delta != Vec2::ZERO {
        let rot = orbit.rotation();
        let k = orbit.distance * 0.0015;
        orbit.focus += rot * Vec3::new(-delta.x * k, delta.y * k, 0.0);
    }
    if scroll.delta.y != 0.0 {
        orbit.distance = (orbit.distance * (1.0 - 0.1 * scroll.delta.y.clamp(-5.0, 5.0))).clamp(0.01 * scale, 20.0 * scale);
    }
}

fn apply(orbit: Res<OrbitCamera>, mut cameras: Query<(&mut Transform, &mut Projection), With<Camera3d>>) {
    if !orbit.is_changed() {
        return;
    }
    for (mut t, mut p) in &mut cameras {
        *t = orbit.transform();
        if let Projection::Perspective(pp) = &mut *p {
            pp.fov = orbit.fov_y;
        }
    }
}

/// The viewport rectangle kept inside a render target of `target` physical pixels: the panels are
/// laid out for the previous frame's window size, and a viewport reaching past a window that just
/// shrank is a validation error that ends the app.
pub fn clamp_viewport(pos: UVec2, size: UVec2, target: UVec2) -> (UVec2, UVec2) {
    let target = target.max(UVec2::ONE);
    let pos = pos.min(target - UVec2::ONE);
    let size = size.max(UVec2::ONE).min(target - pos);
    (pos, size)
}

fn apply_viewport(rect: Res<ViewportRect>, windows: Query<&Window, With<bevy::window::PrimaryWindow>>, mut cameras: Query<&mut Camera, With<Camera3d>>) {
    let Some((pos, size)) = rect.0 else { return };
    let Ok(window) = windows.single() else { return };
    let (pos, size) = clamp_viewport(pos, size, window.physical_size());
    for mut camera in &mut cameras {
        let want = Viewport { physical_position: pos, physical_size: size, ..default() };
        if camera.viewport.as_ref().is_none_or(|v| v.physical_position != want.physical_position || v.physical_size != want.physical_size) {
            camera.viewport = Some(want);
        }
    }
}

pub struct CameraControlPlugin;

impl Plugin for CameraControlPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<OrbitCamera>()
            .add_systems(Startup, setup)
            .add_systems(Update, (controls, apply, apply_viewport).chain());
    }
}
