//! Viewport camera: orbit (left drag), pan (right or middle drag), zoom (wheel), fly (WASD, Q/E
//! down/up), reset (R), look through the current frame's camera (C). The 3D camera renders only
//! into the area the egui panels leave free.

use super::player::Player;
use super::state::{CameraCommand, Geometry, LookThrough, ViewportRect};
use bevy::camera::Viewport;
use bevy::core_pipeline::tonemapping::Tonemapping;
use bevy::input::mouse::AccumulatedMouseScroll;
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

/// Frames the whole scene (points and cameras): looking the way the first camera looks, from
/// above, far enough back that the 2nd..98th percentile box of everything fits the field of view.
pub fn reset_view(geometry: &Geometry) -> OrbitCamera {
    let Some(scene) = &geometry.scene else { return OrbitCamera::default() };
    let pts = &scene.cloud.points;
    let step = (pts.len() / 20_000).max(1);
    let mut axes: [Vec<f32>; 3] = Default::default();
    for p in pts.iter().step_by(step).map(|p| p.position).chain(scene.index.centers.iter().copied()) {
        for a in 0..3 {
            axes[a].push(p[a]);
        }
    }
    let (mut lo, mut hi) = (Vec3::ZERO, Vec3::ZERO);
    for (a, v) in axes.iter_mut().enumerate() {
        if v.is_empty() {
            continue;
        }
        v.sort_by(f32::total_cmp);
        lo[a] = v[(v.len() - 1) * 2 / 100];
        hi[a] = v[(v.len() - 1) * 98 / 100];
    }
    let focus = (lo + hi) / 2.0;
    let radius = ((hi - lo).length() / 2.0).max(1e-3);
    let fov_y: f32 = 50f32.to_radians();
    // The box fits the narrower (vertical) field of view (its bounding sphere, less the corners
    // a box does not reach, seen from above).
    let distance = 0.8 * radius / (fov_y / 2.0).sin();
    let (yaw, pitch) = camera_view(geometry, 0).map(|v| (v.yaw, v.pitch)).unwrap_or((0.0, 0.0));
    OrbitCamera { focus, yaw, pitch: (pitch - 0.6).clamp(-1.4, 1.4), distance, fov_y, roll: 0.0 }
}

/// The geometry frame whose source frame is nearest `source_frame`.
pub fn geometry_frame_near(geometry: &Geometry, source_frame: usize) -> Option<usize> {
    let scene = geometry.scene.as_ref()?;
    (0..scene.rec.frames).min_by_key(|&f| scene.source_frames.get(f).copied().unwrap_or(f).abs_diff(source_frame))
}

/// The viewer pose of geometry frame `f`'s camera (OpenCV axes mapped to the viewer's).
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

/// Whether the mouse acts on the 3D view: inside its viewport, and not over or dragging an egui
/// window (the side panels are outside the viewport).
fn pointer_in_view(cursor: Option<Vec2>, camera: &Camera, ctx: Option<&mut bevy_egui::egui::Context>) -> bool {
    let Some(cursor) = cursor else { return false };
    let inside = camera.logical_viewport_rect().is_none_or(|r| r.contains(cursor));
    inside && ctx.is_none_or(|c| !c.is_pointer_over_egui() && !c.egui_is_using_pointer())
}

#[allow(clippy::too_many_arguments)]
fn controls(
    mut orbit: ResMut<OrbitCamera>,
    mut look: ResMut<LookThrough>,
    buttons: Res<ButtonInput<MouseButton>>,
    keys: Res<ButtonInput<KeyCode>>,
    scroll: Res<AccumulatedMouseScroll>,
    time: Res<Time>,
    mut contexts: EguiContexts,
    geometry: Res<Geometry>,
    player: Res<Player>,
    mut commands: MessageReader<CameraCommand>,
    windows: Query<&Window, With<bevy::window::PrimaryWindow>>,
    cameras: Query<&Camera, With<Camera3d>>,
    mut cursor_moves: MessageReader<CursorMoved>,
    // Where the cursor was last frame while a drag that began in the 3D view goes on.
    mut drag_from: Local<Option<Vec2>>,
    mut last_rec: Local<usize>,
    // The source frame the view last followed while looking through the cameras.
    mut followed: Local<usize>,
) {
    let keyboard_on_ui = contexts.ctx_mut().is_ok_and(|c| c.egui_wants_keyboard_input());
    let scale = geometry.scene.as_ref().map(|s| s.index.scene_scale).unwrap_or(4.0);
    let look_at = |f: usize, orbit: &mut OrbitCamera, look: &mut LookThrough, followed: &mut usize| {
        *followed = f;
        if let Some(g) = geometry_frame_near(&geometry, f) {
            if let Some(v) = camera_view(&geometry, g) {
                *orbit = v;
                look.0 = Some(g);
            }
        }
    };
    for cmd in commands.read() {
        match cmd {
            CameraCommand::Reset => {
                *orbit = reset_view(&geometry);
                look.0 = None;
            }
            CameraCommand::LookThrough(f) => look_at(*f, &mut orbit, &mut look, &mut followed),
        }
    }
    // A new geometry (not a rebuilt cloud of the same one) is framed whole.
    let rec = geometry.scene.as_ref().map_or(0, |s| std::sync::Arc::as_ptr(&s.rec) as usize);
    if rec != *last_rec {
        *last_rec = rec;
        *orbit = reset_view(&geometry);
        look.0 = None;
    }
    // Looking through the cameras follows the video.
    if look.0.is_some() && player.current != *followed {
        look_at(player.current, &mut orbit, &mut look, &mut followed);
    }
    if !keyboard_on_ui {
        if keys.just_pressed(KeyCode::KeyR) {
            *orbit = reset_view(&geometry);
            look.0 = None;
        }
        if keys.just_pressed(KeyCode::KeyC) {
            look_at(player.current, &mut orbit, &mut look, &mut followed);
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
            look.0 = None;
        }
    }
    let (Ok(window), Ok(camera)) = (windows.single(), cameras.single()) else { return };
    // Drags start in the 3D view (a slider dragged out of a panel does not orbit) and follow the
    // cursor's positions, so absolute pointers (VNC, VM tablets) orbit too. A slow frame may hold
    // a whole press-move-release: its cursor events still give the drag's path.
    let moves: Vec<Vec2> = cursor_moves.read().map(|m| m.position).collect();
    let cursor = window.cursor_position();
    let any = [MouseButton::Left, MouseButton::Right, MouseButton::Middle];
    let press_at = moves.first().copied().or(cursor);
    if buttons.any_just_pressed(any) && pointer_in_view(press_at, camera, contexts.ctx_mut().ok()) {
        *drag_from = press_at;
    }
    if let Some(from) = *drag_from {
        let to = moves.last().copied().or(cursor).unwrap_or(from);
        let delta = to - from;
        *drag_from = Some(to);
        let held = |b: MouseButton| buttons.pressed(b) || buttons.just_released(b);
        if delta != Vec2::ZERO {
            if held(MouseButton::Left) {
                orbit.roll = 0.0;
                orbit.yaw -= delta.x * 0.005;
                orbit.pitch = (orbit.pitch - delta.y * 0.005).clamp(-1.55, 1.55);
                look.0 = None;
            } else if held(MouseButton::Right) || held(MouseButton::Middle) {
                let rot = orbit.rotation();
                let k = orbit.distance * 0.0015;
                orbit.focus += rot * Vec3::new(-delta.x * k, delta.y * k, 0.0);
                look.0 = None;
            }
        }
    }
    if !buttons.any_pressed(any) {
        *drag_from = None;
    }
    let in_view = pointer_in_view(cursor, camera, contexts.ctx_mut().ok());
    // The wheel zooms only over the 3D view: over a panel it scrolls the panel.
    if scroll.delta.y != 0.0 && in_view {
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
