//! The built-in demo scene: a furnished room rendered by ray casting along a smooth walk-through,
//! with exact depth, a confidence map and cameras in VGGT's convention (world = first camera,
//! OpenCV axes, world-to-camera extrinsics). Everything downstream treats it like a VGGT result.

use spatial_models::reconstruction::Reconstruction;
use spatial_models::vggt::Camera;

pub const DEMO_FRAMES: usize = 96;
pub const DEMO_WIDTH: usize = 320;
pub const DEMO_HEIGHT: usize = 240;
/// Focal length in pixels (about 60 degrees horizontal field of view).
pub const DEMO_FOCAL: f32 = 277.0;

type V3 = [f32; 3];
fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
fn scale(a: V3, s: f32) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}
fn dot(a: V3, b: V3) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn cross(a: V3, b: V3) -> V3 {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
fn normalize(a: V3) -> V3 {
    scale(a, 1.0 / dot(a, a).sqrt())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Checker,
    Stripes,
    Grain,
    Dots,
    Plain,
}

/// An axis-aligned box in room coordinates (metres, y up).
#[derive(Debug, Clone)]
pub struct Furniture {
    // Read by the tests (and by the question-answering tests to come).
    #[cfg_attr(not(test), allow(dead_code))]
    pub name: &'static str,
    pub min: V3,
    pub max: V3,
    pub color: V3,
    pub pattern: Pattern,
}

/// Room extent (inside) in room coordinates.
pub const ROOM_MIN: V3 = [-3.0, 0.0, -2.5];
pub const ROOM_MAX: V3 = [3.0, 2.6, 2.5];

pub fn furniture() -> Vec<Furniture> {
    vec![
        Furniture { name: "sofa", min: [-1.9, 0.0, -2.45], max: [-0.1, 0.8, -1.6], color: [0.75, 0.18, 0.16], pattern: Pattern::Stripes },
        Furniture { name: "table", min: [-0.6, 0.0, -0.5], max: [0.6, 0.45, 0.3], color: [0.55, 0.36, 0.2], pattern: Pattern::Grain },
        Furniture { name: "tv stand", min: [2.2, 0.0, -1.0], max: [2.95, 0.55, 1.0], color: [0.18, 0.3, 0.7], pattern: Pattern::Plain },
        Furniture { name: "tv", min: [2.8, 0.8, -0.7], max: [2.92, 1.5, 0.7], color: [0.05, 0.05, 0.07], pattern: Pattern::Plain },
        Furniture { name: "bookshelf", min: [-2.95, 0.0, 0.6], max: [-2.5, 2.0, 2.2], color: [0.85, 0.7, 0.2], pattern: Pattern::Stripes },
        Furniture { name: "plant", min: [1.8, 0.0, 1.7], max: [2.3, 1.1, 2.2], color: [0.2, 0.6, 0.25], pattern: Pattern::Dots },
    ]
}

/// Camera `i` of the walk-through: centre and camera-to-room rotation (columns: right, down,
/// forward; OpenCV axes).
pub fn camera_pose(i: usize, frames: usize) -> (V3, [V3; 3]) {
    let t = i as f32 / (frames.max(2) - 1) as f32;
    let angle = -0.6 + t * 4.6; // most of a loop around the room
    let center = [1.55 * angle.cos(), 1.45 + 0.05 * (t * 9.0).sin(), 1.3 * angle.sin()];
    let target = [0.35 * (angle * 0.7).cos(), 0.6, -0.2 + 0.3 * (angle * 0.5).sin()];
    let forward = normalize(sub(target, center));
    let right = normalize(cross(forward, [0.0, 1.0, 0.0]));
    let down = cross(forward, right);
    (center, [right, down, forward])
}

fn texture(pattern: Pattern, base: V3, p: V3, n: V3) -> V3 {
    // Two coordinates across the face the point lies on.
    let (u, v) = if n[1].abs() > 0.5 { (p[0], p[2]) } else if n[0].abs() > 0.5 { (p[2], p[1]) } else { (p[0], p[1]) };
    let f = match pattern {
        Pattern::Checker => if ((u * 2.0).floor() as i32 + (v * 2.0).floor() as i32) % 2 == 0 { 1.0 } else { 0.62 },
        Pattern::Stripes => if ((u + v) * 6.0).floor() as i32 % 2 == 0 { 1.0 } else { 0.7 },
        Pattern::Grain => 0.8 + 0.2 * ((u * 23.0 + (v * 3.0).sin() * 2.0).sin()),
        Pattern::Dots => {
            let (fu, fv) = ((u * 8.0).fract() - 0.5, (v * 8.0).fract() - 0.5);
            if fu * fu + fv * fv < 0.08 { 1.25 } else { 0.85 }
        }
        Pattern::Plain => 1.0,
    };
    scale(base, f)
}

/// Nearest intersection of a ray with the outside of a box: (t, normal).
fn hit_box(o: V3, d: V3, min: V3, max: V3) -> Option<(f32, V3)> {
    let mut t0 = f32::NEG_INFINITY;
    let mut t1 = f32::INFINITY;
    let mut axis = 0;
    for a in 0..3 {
        let inv = 1.0 / d[a];
        let (mut ta, mut tb) = ((min[a] - o[a]) * inv, (max[a] - o[a]) * inv);
        if ta > tb {
            std::mem::swap(&mut ta, &mut tb);
        }
        if ta > t0 {
            t0 = ta;
            axis = a;
        }
        t1 = t1.min(tb);
    }
    if t0 > t1 || t0 <= 1e-4 {
        return None;
    }
    let mut n = [0.0; 3];
    n[axis] = -d[axis].signum();
    Some((t0, n))
}

/// Exit of a ray from inside the room: (t, inward normal, surface kind).
fn hit_room(o: V3, d: V3) -> (f32, V3) {
    let mut best = (f32::INFINITY, [0.0; 3]);
    for a in 0..3 {
        let bound = if d[a] > 0.0 { ROOM_MAX[a] } else { ROOM_MIN[a] };
        let t = (bound - o[a]) / d[a];
        if t > 0.0 && t < best.0 {
            let mut n = [0.0; 3];
            n[a] = -d[a].signum();
            best = (t, n);
        }
    }
    best
}

/// Renders the demo scene: frames at DEMO_WIDTH x DEMO_HEIGHT with ground-truth geometry.
pub fn build_demo(frames: usize) -> Reconstruction {
    let (w, h) = (DEMO_WIDTH, DEMO_HEIGHT);
    let items = furniture();
    let light = normalize([0.4, 1.0, 0.3]);
    let poses: Vec<(V3, [V3; 3])> = (0..frames).map(|i| camera_pose(i, frames)).collect();
    let (c0, r0) = poses[0];
    // World = first camera: X_w = R0^T (X_room - C0).
    let to_world = |p: V3| -> V3 { [dot(r0[0], sub(p, c0)), dot(r0[1], sub(p, c0)), dot(r0[2], sub(p, c0))] };

    let n = w * h;
    let mut images = vec![0u8; frames * n * 3];
    let mut depth = vec![0f32; frames * n];
    let mut conf = vec![0f32; frames * n];
    let mut points = vec![0f32; frames * n * 3];
    let mut cameras = Vec::with_capacity(frames);
    for (f, &(c, r)) in poses.iter().enumerate() {
        // World-to-camera: R = Ri^T R0, t = Ri^T (C0 - Ci).
        let mut extrinsic = [[0f32; 4]; 3];
        for row in 0..3 {
            for col in 0..3 {
                let r0_col = [r0[col][0], r0[col][1], r0[col][2]];
                extrinsic[row][col] = dot(r[row], r0_col);
            }
            extrinsic[row][3] = dot(r[row], sub(c0, c));
        }
        let intrinsic = [[DEMO_FOCAL, 0.0, w as f32 / 2.0], [0.0, DEMO_FOCAL, h as f32 / 2.0], [0.0, 0.0, 1.0]];
        cameras.push(Camera { extrinsic, intrinsic });
        for y in 0..h {
            for x in 0..w {
                let cam_dir = [(x as f32 - w as f32 / 2.0) / DEMO_FOCAL, (y as f32 - h as f32 / 2.0) / DEMO_FOCAL, 1.0];
                let d = add(add(scale(r[0], cam_dir[0]), scale(r[1], cam_dir[1])), scale(r[2], cam_dir[2]));
                let (mut t, mut normal) = hit_room(c, d);
                let mut color = {
                    let p = add(c, scale(d, t));
                    if normal[1] > 0.5 {
                        texture(Pattern::Checker, [0.62, 0.6, 0.55], p, normal)
                    } else if normal[1] < -0.5 {
                        [0.92, 0.92, 0.9]
                    } else {
                        texture(Pattern::Stripes, [0.78, 0.8, 0.86], scale(p, 0.25), normal)
                    }
                };
                for item in &items {
                    if let Some((ti, ni)) = hit_box(c, d, item.min, item.max) {
                        if ti < t {
                            t = ti;
                            normal = ni;
                            color = texture(item.pattern, item.color, add(c, scale(d, ti)), ni);
                        }
                    }
                }
                let p = add(c, scale(d, t));
                let shade = 0.55 + 0.45 * dot(normal, light).max(0.0);
                let i = f * n + y * w + x;
                for ch in 0..3 {
                    images[i * 3 + ch] = (color[ch] * shade * 255.0).clamp(0.0, 255.0) as u8;
                }
                depth[i] = t; // cam_dir.z == 1, so t is the z-depth
                let facing = dot(normal, normalize(d)).abs();
                conf[i] = 1.0 + 8.0 * facing / (1.0 + 0.3 * t);
                let pw = to_world(p);
                points[i * 3..i * 3 + 3].copy_from_slice(&pw);
            }
        }
    }
    Reconstruction {
        frames,
        height: h,
        width: w,
        images,
        depth,
        depth_conf: conf.clone(),
        world_points: points,
        world_points_conf: conf,
        pose_enc: None,
        cameras,
        frame_indices: (0..frames as i64).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_aware_sampling_spreads_over_the_walk() {
        let rec = build_demo(32);
        let r = spatial_models::sampling::space_aware_sampling(&rec.world_points, &rec.world_points_conf, rec.frames, &Default::default()).unwrap();
        assert_eq!(r.selected.len(), 16, "{r:?}");
    }

    #[test]
    fn ground_truth_is_consistent() {
        let rec = build_demo(8);
        // First camera is the world origin with identity rotation.
        let e = rec.cameras[0].extrinsic;
        for r in 0..3 {
            for c in 0..4 {
                let want = if r == c { 1.0 } else { 0.0 };
                assert!((e[r][c] - want).abs() < 1e-5);
            }
        }
        // Unprojecting depth with the cameras gives the stored world points.
        let from_depth = rec.points_from_depth();
        let max = from_depth.iter().zip(&rec.world_points).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(max < 1e-3, "max {max}");
        // The frames are textured, not flat.
        // Every piece of furniture is seen where it was placed: count world points inside each
        // box (world = first camera; back to room coordinates with camera 0's pose).
        let rec_all = build_demo(24);
        let (c0, r0) = camera_pose(0, 24);
        for item in furniture() {
            let inside = rec_all
                .world_points
                .chunks(3)
                .filter(|p| {
                    let room = add(add(add(scale(r0[0], p[0]), scale(r0[1], p[1])), scale(r0[2], p[2])), c0);
                    (0..3).all(|a| room[a] >= item.min[a] - 1e-3 && room[a] <= item.max[a] + 1e-3)
                })
                .count();
            assert!(inside > 500, "{} is seen by only {inside} pixels", item.name);
        }
        let mut counts = std::collections::HashMap::new();
        for px in rec.images.chunks(3).take(DEMO_WIDTH * DEMO_HEIGHT) {
            *counts.entry(px).or_insert(0usize) += 1;
        }
        let largest = counts.values().max().copied().unwrap_or(0);
        assert!(counts.len() > 30, "{} colours", counts.len());
        assert!(largest < DEMO_WIDTH * DEMO_HEIGHT * 2 / 5, "one colour covers {largest} pixels");
    }
}
