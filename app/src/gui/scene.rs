//! Geometry in 3D: the point cloud's draws, one frustum per frame textured with its image (current
//! frame and sampled frames highlighted), and picking a frustum (its image plane or its lines) to
//! seek. Geometry belongs to the open source: opening another clears it.

use super::cloud::{DrawSettings, draws_for, to_view};
use super::player::Player;
use super::renderer::{PointCloudEntity, PointCloudRender};
use super::state::*;
use super::tasks::{Job, Worker};
use bevy::asset::RenderAssetUsages;
use bevy::camera::visibility::NoFrustumCulling;
use bevy::image::Image;
use bevy::mesh::{Indices, PrimitiveTopology};
use bevy::prelude::*;
use bevy::render::render_resource::{Extent3d, TextureDimension, TextureFormat};
use bevy::window::PrimaryWindow;
use bevy_egui::EguiContexts;

/// The scene plugin's systems, for ordering.
#[derive(SystemSet, Debug, Clone, PartialEq, Eq, Hash)]
pub struct SceneSystems;

#[derive(Component)]
pub struct Frustum {
    /// Index in the geometry.
    pub frame: usize,
    /// Index in the video or folder the geometry came from (what the player and timeline use).
    pub source_frame: usize,
    /// Image-plane corners in view coordinates at the default size: top-left, top-right,
    /// bottom-right, bottom-left.
    pub corners: [Vec3; 4],
    pub center: Vec3,
}

impl Frustum {
    /// The corners as drawn at `scale`.
    pub fn scaled_corners(&self, scale: f32) -> [Vec3; 4] {
        self.corners.map(|c| self.center + (c - self.center) * scale)
    }
}

#[derive(Component)]
struct FrustumLines;

#[derive(Resource)]
struct FrustumMaterials {
    normal: Handle<StandardMaterial>,
    current: Handle<StandardMaterial>,
    sampled: Handle<StandardMaterial>,
}

fn setup(mut commands: Commands, mut meshes: ResMut<Assets<Mesh>>, mut materials: ResMut<Assets<StandardMaterial>>) {
    // The point cloud draws through this entity (a unit quad, instanced per point).
    commands.spawn((Mesh3d(meshes.add(Rectangle::new(1.0, 1.0))), PointCloudEntity, NoFrustumCulling, Transform::default(), Visibility::default()));
    let line = |c: Color| StandardMaterial { base_color: c, unlit: true, ..default() };
    commands.insert_resource(FrustumMaterials {
        normal: materials.add(line(Color::srgb(0.55, 0.62, 0.75))),
        current: materials.add(line(Color::srgb(1.0, 0.92, 0.2))),
        sampled: materials.add(line(Color::srgb(1.0, 0.45, 0.1))),
    });
}

/// Opening another source clears the geometry of the previous one (and its frustums and points),
/// so nothing derived from it can be taken for the new source's.
fn on_source_opened(mut opened: MessageReader<SourceOpened>, mut geometry: ResMut<Geometry>, mut render: ResMut<PointCloudRender>, mut commands: Commands, old: Query<Entity, With<Frustum>>, mut windows: Query<&mut Window, With<PrimaryWindow>>) {
    let Some(SourceOpened(source, _)) = opened.read().last() else { return };
    let id = source.id();
    if geometry.scene.as_ref().is_some_and(|s| s.source_id == id) {
        return;
    }
    geometry.scene = None;
    render.data = None;
    render.draws.clear();
    render.version += 1;
    for e in &old {
        commands.entity(e).despawn();
    }
    if let Ok(mut w) = windows.single_mut() {
        w.title = format!("Spatial viewer: {}", source.name());
    }
}

#[allow(clippy::too_many_arguments)]
fn on_scene_loaded(
    mut loaded: MessageReader<SceneLoaded>,
    opened: Res<Opened>,
    mut geometry: ResMut<Geometry>,
    mut render: ResMut<PointCloudRender>,
    mut commands: Commands,
    old: Query<Entity, With<Frustum>>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut images: ResMut<Assets<Image>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
    frustum_materials: Res<FrustumMaterials>,
    mut status: ResMut<StatusLine>,
    mut windows: Query<&mut Window, With<PrimaryWindow>>,
    mut settings: ResMut<ViewSettings>,
    bench: Res<StartupOptions>,
) {
    // Geometry of a source that is no longer open (a late reconstruction) is dropped.
    let Some(SceneLoaded(scene)) = loaded.read().filter(|s| s.0.source_id == opened.id || bench.bench_points.is_some()).last() else { return };
    for e in &old {
        commands.entity(e).despawn();
    }
    render.data = Some(scene.cloud.clone());
    render.version += 1;
    geometry.scene = Some(scene.clone());
    if settings.frame_filter.is_some_and(|f| f >= scene.rec.frames) {
        settings.frame_filter = None;
    }
    spawn_frustums(&mut commands, scene, &mut meshes, &mut images, &mut materials, &frustum_materials);
    status.info(format!("{}: {} frames, {} points on the GPU", scene.label, scene.rec.frames, scene.cloud.points.len()));
    if let Ok(mut w) = windows.single_mut() {
        w.title = format!("Spatial viewer: {}", scene.label);
    }
}

fn spawn_frustums(
    commands: &mut Commands,
    scene: &LoadedScene,
    meshes: &mut Assets<Mesh>,
    images: &mut Assets<Image>,
    materials: &mut Assets<StandardMaterial>,
    frustum_materials: &FrustumMaterials,
) {
    let rec = &scene.rec;
    let depth = 0.06 * scene.index.scene_scale;
    let (w, h) = (rec.width as f32, rec.height as f32);
    // Thumbnails keep GPU memory small: at most 96 px wide.
    let step = (rec.width / 96).max(1);
    let (tw, th) = (rec.width / step, rec.height / step);
    for (f, cam) in rec.cameras.iter().enumerate() {
        let k = cam.intrinsic;
        let c2w = cam.cam_to_world();
        let to_world = |p: [f32; 3]| -> Vec3 {
            let mut out = [0f32; 3];
            for (r, o) in out.iter_mut().enumerate() {
                *o = c2w[r][0] * p[0] + c2w[r][1] * p[1] + c2w[r][2] * p[2] + c2w[r][3];
            }
            Vec3::from_array(to_view(out))
        };
        let pix = |u: f32, v: f32| to_world([(u - k[0][2]) / k[0][0] * depth, (v - k[1][2]) / k[1][1] * depth, depth]);
        let corners = [pix(0.0, 0.0), pix(w, 0.0), pix(w, h), pix(0.0, h)];
        let center = to_world([0.0, 0.0, 0.0]);

        // Meshes relative to the apex: the entity sits at the apex and its scale sizes the frustum.
        let local: [Vec3; 4] = corners.map(|c| c - center);
        let mut lines = Mesh::new(PrimitiveTopology::LineList, RenderAssetUsages::RENDER_WORLD);
        let mut pos = Vec::new();
        for i in 0..4 {
            pos.extend([Vec3::ZERO, local[i], local[i], local[(i + 1) % 4]]);
        }
        lines.insert_attribute(Mesh::ATTRIBUTE_POSITION, pos.iter().map(|p| p.to_array()).collect::<Vec<_>>());

        let mut quad = Mesh::new(PrimitiveTopology::TriangleList, RenderAssetUsages::RENDER_WORLD);
        quad.insert_attribute(Mesh::ATTRIBUTE_POSITION, local.iter().map(|p| p.to_array()).collect::<Vec<_>>());
        quad.insert_attribute(Mesh::ATTRIBUTE_UV_0, vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]);
        quad.insert_attribute(Mesh::ATTRIBUTE_NORMAL, vec![[0.0, 0.0, 1.0]; 4]);
        quad.insert_indices(Indices::U32(vec![0, 1, 2, 0, 2, 3]));

        let n = rec.width * rec.height * 3;
        let frame = &rec.images[f * n..(f + 1) * n];
        let mut rgba = Vec::with_capacity(tw * th * 4);
        for y in 0..th {
            for x in 0..tw {
                let i = ((y * step) * rec.width + x * step) * 3;
                rgba.extend_from_slice(&[frame[i], frame[i + 1], frame[i + 2], 255]);
            }
        }
        let image = Image::new(
            Extent3d { width: tw as u32, height: th as u32, depth_or_array_layers: 1 },
            TextureDimension::D2,
            rgba,
            TextureFormat::Rgba8UnormSrgb,
            RenderAssetUsages::RENDER_WORLD,
        );
        let texture = images.add(image);
        let material = materials.add(StandardMaterial { base_color_texture: Some(texture), unlit: true, cull_mode: None, double_sided: true, ..default() });
        let source_frame = scene.source_frames.get(f).copied().unwrap_or(f);
        commands.spawn((Frustum { frame: f, source_frame, corners, center }, Transform::from_translation(center), Visibility::default())).with_children(|p| {
            p.spawn((Mesh3d(meshes.add(lines)), MeshMaterial3d(frustum_materials.normal.clone()), FrustumLines));
            p.spawn((Mesh3d(meshes.add(quad)), MeshMaterial3d(material)));
        });
    }
}

/// Settings and geometry to draw ranges; runs only when something changed.
fn update_draws(settings: Res<ViewSettings>, geometry: Res<Geometry>, mut render: ResMut<PointCloudRender>) {
    if !settings.is_changed() && !geometry.is_changed() {
        return;
    }
    let Some(scene) = &geometry.scene else {
        render.draws.clear();
        return;
    };
    let (draws, uniform) = draws_for(
        &scene.cloud,
        &scene.index,
        &DrawSettings { point_size: settings.point_size, color_mode: settings.color_mode as u32, threshold: scene.quantiles.threshold(settings.conf_percentile as f64), frame: settings.frame_filter },
    );
    render.draws = draws;
    render.uniform = uniform;
}

/// Rebuilds the cloud on the worker when the point budget or source changes.
fn rebuild_on_budget_change(settings: Res<ViewSettings>, geometry: Res<Geometry>, mut worker: ResMut<Worker>, mut activity: ResMut<Activity>, mut last: Local<Option<(usize, crate::pipeline::points::PointSource)>>) {
    let key = (settings.point_budget, settings.source);
    if last.is_none() {
        *last = Some(key);
        return;
    }
    if *last == Some(key) {
        return;
    }
    *last = Some(key);
    if let Some(scene) = &geometry.scene {
        worker.submit(
            &mut activity,
            Job::BuildScene {
                label: scene.label.clone(),
                rec: scene.rec.clone(),
                source_id: scene.source_id.clone(),
                source_frames: scene.source_frames.clone(),
                budget: settings.point_budget,
                point_source: settings.source,
            },
        );
    }
}

/// Whether a frustum is drawn: cameras on, not looking through one, and in the chosen subset.
fn frustum_shown(f: &Frustum, settings: &ViewSettings, look: &LookThrough, current: usize, picks: &[usize]) -> bool {
    settings.show_cameras && look.0.is_none() && settings.cameras.shows(f.frame, f.source_frame, current, picks)
}

fn highlight_frustums(
    player: Res<Player>,
    sampled: Res<SampledFrames>,
    settings: Res<ViewSettings>,
    look: Res<LookThrough>,
    materials: Res<FrustumMaterials>,
    frustums: Query<(&Frustum, &Children, &mut Visibility, &mut Transform)>,
    mut lines: Query<&mut MeshMaterial3d<StandardMaterial>, With<FrustumLines>>,
) {
    for (frustum, children, mut vis, mut transform) in frustums {
        let want_vis = if frustum_shown(frustum, &settings, &look, player.current, &sampled.frames) { Visibility::Inherited } else { Visibility::Hidden };
        if *vis != want_vis {
            *vis = want_vis;
        }
        let scale = Vec3::splat(settings.camera_scale.max(0.01));
        if transform.scale != scale {
            transform.scale = scale;
        }
        let handle = if frustum.source_frame == player.current {
            &materials.current
        } else if sampled.frames.contains(&frustum.source_frame) {
            &materials.sampled
        } else {
            &materials.normal
        };
        for child in children.iter() {
            if let Ok(mut m) = lines.get_mut(child) {
                if m.0 != *handle {
                    m.0 = handle.clone();
                }
            }
        }
    }
}

/// Ray / quad intersection distance.
fn ray_quad(origin: Vec3, dir: Vec3, c: &[Vec3; 4]) -> Option<f32> {
    for tri in [[c[0], c[1], c[2]], [c[0], c[2], c[3]]] {
        let (e1, e2) = (tri[1] - tri[0], tri[2] - tri[0]);
        let p = dir.cross(e2);
        let det = e1.dot(p);
        if det.abs() < 1e-12 {
            continue;
        }
        let inv = 1.0 / det;
        let s = origin - tri[0];
        let u = s.dot(p) * inv;
        let q = s.cross(e1);
        let v = dir.dot(q) * inv;
        let t = e2.dot(q) * inv;
        if u >= 0.0 && v >= 0.0 && u + v <= 1.0 && t > 0.0 {
            return Some(t);
        }
    }
    None
}

/// Distance in pixels from `p` to the segment `a`-`b`.
fn segment_distance(p: Vec2, a: Vec2, b: Vec2) -> f32 {
    let ab = b - a;
    let t = if ab.length_squared() > 0.0 { ((p - a).dot(ab) / ab.length_squared()).clamp(0.0, 1.0) } else { 0.0 };
    p.distance(a + ab * t)
}

/// How close (pixels) the cursor must come to a frustum's lines or apex to pick it.
const PICK_LINE_PX: f32 = 6.0;

/// The source frame of the frustum under a window position: its image plane, or within a few
/// pixels of its drawn lines or apex; the nearest to the eye when several are.
pub fn pick_frustum(camera: &Camera, transform: &GlobalTransform, cursor: Vec2, frustums: &[(&Frustum, f32)]) -> Option<usize> {
    let ray = camera.viewport_to_world(transform, cursor).ok()?;
    let eye = transform.translation();
    let project = |p: Vec3| camera.world_to_viewport(transform, p).ok();
    // An image plane under the cursor wins (the nearest); lines and apexes count where none is.
    let on_plane = frustums.iter().filter_map(|(f, scale)| ray_quad(ray.origin, *ray.direction, &f.scaled_corners(*scale)).map(|t| (t, f.source_frame))).min_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, frame)) = on_plane {
        return Some(frame);
    }
    frustums
        .iter()
        .filter_map(|(f, scale)| {
            let corners = f.scaled_corners(*scale);
            let apex = project(f.center)?;
            let c: Vec<Vec2> = corners.iter().filter_map(|&c| project(c)).collect();
            if c.len() < 4 {
                return None;
            }
            let near_line = (0..4).any(|i| segment_distance(cursor, apex, c[i]) <= PICK_LINE_PX || segment_distance(cursor, c[i], c[(i + 1) % 4]) <= PICK_LINE_PX);
            near_line.then(|| (eye.distance(f.center), f.source_frame))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, f)| f)
}

#[allow(clippy::too_many_arguments)]
fn pick(
    windows: Query<&Window, With<PrimaryWindow>>,
    cameras: Query<(&Camera, &GlobalTransform), With<Camera3d>>,
    frustums: Query<&Frustum>,
    buttons: Res<ButtonInput<MouseButton>>,
    mut hovered: ResMut<HoveredCamera>,
    mut seek: MessageWriter<SeekRequest>,
    (settings, look, player, sampled, inspection): (
        Res<ViewSettings>,
        Res<LookThrough>,
        Res<Player>,
        Res<SampledFrames>,
        Res<Inspection>,
    ),
    mut contexts: EguiContexts,
    mut press_at: Local<Option<Vec2>>,
) {
    hovered.0 = None;
    let (Ok(window), Ok((camera, transform))) = (windows.single(), cameras.single()) else { return };
    let Some(cursor) = window.cursor_position() else { return };
    if contexts.ctx_mut().is_ok_and(|c| c.is_pointer_over_egui()) {
        return;
    }
    // Cursor and Bevy's viewport conversions both use window coordinates.
    if camera.logical_viewport_rect().is_some_and(|r| !r.contains(cursor)) {
        return;
    }
    let shown: Vec<(&Frustum, f32)> = frustums.iter().filter(|f| frustum_shown(f, &settings, &look, player.current, &sampled.frames)).map(|f| (f, settings.camera_scale)).collect();
    hovered.0 = pick_frustum(camera, transform, cursor, &shown);
    // A click (press and release without dragging) seeks; drags orbit the view.
    if buttons.just_pressed(MouseButton::Left) {
        *press_at = Some(cursor);
    }
    if buttons.just_released(MouseButton::Left) {
        if let (Some(start), Some(frame)) = (press_at.take(), hovered.0) {
            // While measuring or selecting, a click is the tool's, not a seek.
            if start.distance(cursor) < 4.0 && inspection.tool == InspectTool::Look {
                seek.write(SeekRequest(frame));
            }
        }
    }
}

pub struct ScenePlugin;

impl Plugin for ScenePlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Startup, setup)
            .add_systems(Update, (on_source_opened, on_scene_loaded, rebuild_on_budget_change, update_draws, highlight_frustums, pick).chain().in_set(SceneSystems));
    }
}
