//! A COLMAP sparse model of a reconstruction (what Gaussian-splatting trainers, nerfstudio's COLMAP
//! loader and COLMAP itself read): one PINHOLE camera per frame from VGGT's intrinsics at the
//! exported images' resolution, world-to-camera poses as scalar-first quaternions, and points from
//! the filtered points, voxel-downsampled, each with its real track: every frame whose camera sees
//! it (in the image, and at the depth that frame measured there) with the 2D observation, and the
//! images' observation lists consistent with the tracks. Layout: `DIR/images/frame_NNNNNN.png`
//! and `DIR/sparse/0/{cameras,images,points3D}.{bin,txt}`.

use super::fsio;
use super::inspect::{DEPTH_TOLERANCE, project};
use super::points::{PointFilter, filtered, points_of};
use anyhow::Result;
use spatial_models::reconstruction::Reconstruction;
use spatial_models::vggt::Camera;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// The model before it is written.
#[derive(Debug, Clone)]
pub struct SparseModel {
    pub width: usize,
    pub height: usize,
    /// Per image: name, camera (its intrinsics), and its observations (x, y, point index).
    pub images: Vec<ImageEntry>,
    pub points: Vec<PointEntry>,
}

#[derive(Debug, Clone)]
pub struct ImageEntry {
    pub name: String,
    pub frame: usize,
    pub camera: Camera,
    /// (x, y) in COLMAP's pixel convention (the top-left corner of the top-left pixel is 0,0)
    /// and the index of the point in [`SparseModel::points`].
    pub observations: Vec<(f64, f64, usize)>,
}

#[derive(Debug, Clone)]
pub struct PointEntry {
    pub xyz: [f32; 3],
    pub rgb: [u8; 3],
    /// (image index, observation index in that image).
    pub track: Vec<(usize, usize)>,
}

/// The name a frame's image gets (its source frame number).
pub fn image_name(source_frame: i64) -> String {
    format!("frame_{source_frame:06}.png")
}

/// Builds the model: the filtered points, one per voxel of `voxel_size` (scene units; None: 1/300
/// of the points' 2nd..98th percentile box diagonal), with tracks over every frame. Points that
/// fewer than `min_track` frames see are left out (bundle adjustment needs at least 2).
pub fn build(rec: &Reconstruction, filter: &PointFilter, voxel_size: Option<f32>, min_track: usize) -> SparseModel {
    let (points, conf) = points_of(rec, filter.source);
    let keep = filtered(rec, &points, conf, filter);
    let p = |i: usize| [points[i * 3], points[i * 3 + 1], points[i * 3 + 2]];
    let voxel = voxel_size.filter(|v| *v > 0.0).unwrap_or_else(|| {
        let mut diag2 = 0.0f32;
        for a in 0..3 {
            let mut v: Vec<f32> = keep.iter().step_by((keep.len() / 100_000).max(1)).map(|&i| points[i * 3 + a]).collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f32::total_cmp);
            let (lo, hi) = (v[(v.len() - 1) * 2 / 100], v[(v.len() - 1) * 98 / 100]);
            diag2 += (hi - lo) * (hi - lo);
        }
        (diag2.sqrt() / 300.0).max(1e-6)
    });
    // The most confident point of each voxel.
    let mut best: HashMap<[i64; 3], usize> = HashMap::new();
    for &i in &keep {
        let key = p(i).map(|c| (c / voxel).floor() as i64);
        best.entry(key).and_modify(|b| if conf[i] > conf[*b] { *b = i }).or_insert(i);
    }
    let mut chosen: Vec<usize> = best.into_values().collect();
    chosen.sort_unstable();
    let (w, h) = (rec.width, rec.height);
    let mut images: Vec<ImageEntry> = (0..rec.frames)
        .map(|f| ImageEntry { name: image_name(rec.frame_indices.get(f).copied().unwrap_or(f as i64)), frame: f, camera: rec.cameras[f], observations: Vec::new() })
        .collect();
    let mut out_points = Vec::new();
    for &i in &chosen {
        let xyz = p(i);
        let mut track = Vec::new();
        for (f, image) in images.iter().enumerate() {
            let Some((u, v, z)) = project(&image.camera, xyz) else { continue };
            let (px, py) = (u.round(), v.round());
            if px < 0.0 || py < 0.0 || px >= w as f32 || py >= h as f32 {
                continue;
            }
            let d = rec.depth[f * w * h + py as usize * w + px as usize];
            if d > 0.0 && (z - d).abs() <= DEPTH_TOLERANCE * d {
                track.push((f, u, v));
            }
        }
        if track.len() < min_track {
            continue;
        }
        let index = out_points.len();
        let track = track
            .into_iter()
            .map(|(f, u, v)| {
                let obs = images[f].observations.len();
                // COLMAP's pixel coordinates are VGGT's plus half a pixel.
                images[f].observations.push((u as f64 + 0.5, v as f64 + 0.5, index));
                (f, obs)
            })
            .collect();
        out_points.push(PointEntry { xyz, rgb: [rec.images[i * 3], rec.images[i * 3 + 1], rec.images[i * 3 + 2]], track });
    }
    SparseModel { width: w, height: h, images, points: out_points }
}

/// A rotation matrix as a unit quaternion (w, x, y, z) with w >= 0.
pub fn quaternion(r: [[f32; 3]; 3]) -> [f64; 4] {
    let m = r.map(|row| row.map(|v| v as f64));
    let trace = m[0][0] + m[1][1] + m[2][2];
    let q = if trace > 0.0 {
        let s = (trace + 1.0).sqrt() * 2.0;
        [0.25 * s, (m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s]
    } else if m[0][0] > m[1][1] && m[0][0] > m[2][2] {
        let s = (1.0 + m[0][0] - m[1][1] - m[2][2]).sqrt() * 2.0;
        [(m[2][1] - m[1][2]) / s, 0.25 * s, (m[0][1] + m[1][0]) / s, (m[0][2] + m[2][0]) / s]
    } else if m[1][1] > m[2][2] {
        let s = (1.0 + m[1][1] - m[0][0] - m[2][2]).sqrt() * 2.0;
        [(m[0][2] - m[2][0]) / s, (m[0][1] + m[1][0]) / s, 0.25 * s, (m[1][2] + m[2][1]) / s]
    } else {
        let s = (1.0 + m[2][2] - m[0][0] - m[1][1]).sqrt() * 2.0;
        [(m[1][0] - m[0][1]) / s, (m[0][2] + m[2][0]) / s, (m[1][2] + m[2][1]) / s, 0.25 * s]
    };
    let n = q.iter().map(|v| v * v).sum::<f64>().sqrt();
    let sign = if q[0] < 0.0 { -1.0 } else { 1.0 };
    q.map(|v| sign * v / n)
}

fn pose(c: &Camera) -> ([f64; 4], [f64; 3]) {
    let e = &c.extrinsic;
    let r = [[e[0][0], e[0][1], e[0][2]], [e[1][0], e[1][1], e[1][2]], [e[2][0], e[2][1], e[2][2]]];
    (quaternion(r), [e[0][3] as f64, e[1][3] as f64, e[2][3] as f64])
}

/// PINHOLE fx, fy, cx, cy in COLMAP's pixel convention.
fn pinhole(c: &Camera) -> [f64; 4] {
    let k = &c.intrinsic;
    [k[0][0] as f64, k[1][1] as f64, k[0][2] as f64 + 0.5, k[1][2] as f64 + 0.5]
}

/// COLMAP's PINHOLE model id.
const PINHOLE: i32 = 1;

/// Writes `DIR/images/*.png` and `DIR/sparse/0/*` (binary, or text with `text`).
pub fn write(rec: &Reconstruction, model: &SparseModel, dir: &Path, text: bool) -> Result<()> {
    let sparse = dir.join("sparse").join("0");
    let images_dir = dir.join("images");
    fsio::create_dir_all(&sparse)?;
    fsio::create_dir_all(&images_dir)?;
    let (w, h) = (model.width, model.height);
    for image in &model.images {
        let n = w * h * 3;
        let rgb = image::RgbImage::from_raw(w as u32, h as u32, rec.images[image.frame * n..(image.frame + 1) * n].to_vec()).ok_or_else(|| anyhow::anyhow!("frame buffer"))?;
        fsio::write_atomic(&images_dir.join(&image.name), |out| Ok(rgb.write_to(out, image::ImageFormat::Png)?))?;
    }
    if text {
        write_text(model, &sparse)
    } else {
        write_binary(model, &sparse)
    }
}

fn write_text(model: &SparseModel, sparse: &Path) -> Result<()> {
    fsio::write_atomic(&sparse.join("cameras.txt"), |out| {
        writeln!(out, "# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n# Number of cameras: {}", model.images.len())?;
        for (i, image) in model.images.iter().enumerate() {
            let [fx, fy, cx, cy] = pinhole(&image.camera);
            writeln!(out, "{} PINHOLE {} {} {fx:.17} {fy:.17} {cx:.17} {cy:.17}", i + 1, model.width, model.height)?;
        }
        Ok(())
    })?;
    let observations: usize = model.images.iter().map(|i| i.observations.len()).sum();
    fsio::write_atomic(&sparse.join("images.txt"), |out| {
        writeln!(
            out,
            "# Image list with two lines of data per image:\n#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n# Number of images: {}, mean observations per image: {}",
            model.images.len(),
            observations as f64 / model.images.len().max(1) as f64
        )?;
        for (i, image) in model.images.iter().enumerate() {
            let (q, t) = pose(&image.camera);
            writeln!(out, "{} {:.17} {:.17} {:.17} {:.17} {:.17} {:.17} {:.17} {} {}", i + 1, q[0], q[1], q[2], q[3], t[0], t[1], t[2], i + 1, image.name)?;
            // The second line is always there, empty for an image without observations.
            let line: Vec<String> = image.observations.iter().map(|(x, y, p)| format!("{x:.6} {y:.6} {}", p + 1)).collect();
            writeln!(out, "{}", line.join(" "))?;
        }
        Ok(())
    })?;
    fsio::write_atomic(&sparse.join("points3D.txt"), |out| {
        let mean_track = model.points.iter().map(|p| p.track.len()).sum::<usize>() as f64 / model.points.len().max(1) as f64;
        writeln!(out, "# 3D point list with one line of data per point:\n#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n# Number of points: {}, mean track length: {mean_track}", model.points.len())?;
        for (i, p) in model.points.iter().enumerate() {
            write!(out, "{} {} {} {} {} {} {} 0", i + 1, p.xyz[0], p.xyz[1], p.xyz[2], p.rgb[0], p.rgb[1], p.rgb[2])?;
            for (image, obs) in &p.track {
                write!(out, " {} {obs}", image + 1)?;
            }
            writeln!(out)?;
        }
        Ok(())
    })
}

fn write_binary(model: &SparseModel, sparse: &Path) -> Result<()> {
    fsio::write_atomic(&sparse.join("cameras.bin"), |out| {
        out.write_all(&(model.images.len() as u64).to_le_bytes())?;
        for (i, image) in model.images.iter().enumerate() {
            out.write_all(&((i + 1) as i32).to_le_bytes())?;
            out.write_all(&PINHOLE.to_le_bytes())?;
            out.write_all(&(model.width as u64).to_le_bytes())?;
            out.write_all(&(model.height as u64).to_le_bytes())?;
            for v in pinhole(&image.camera) {
                out.write_all(&v.to_le_bytes())?;
            }
        }
        Ok(())
    })?;
    fsio::write_atomic(&sparse.join("images.bin"), |out| {
        out.write_all(&(model.images.len() as u64).to_le_bytes())?;
        for (i, image) in model.images.iter().enumerate() {
            let (q, t) = pose(&image.camera);
            out.write_all(&((i + 1) as i32).to_le_bytes())?;
            for v in q.iter().chain(&t) {
                out.write_all(&v.to_le_bytes())?;
            }
            out.write_all(&((i + 1) as i32).to_le_bytes())?;
            out.write_all(image.name.as_bytes())?;
            out.write_all(&[0])?;
            out.write_all(&(image.observations.len() as u64).to_le_bytes())?;
            for (x, y, p) in &image.observations {
                out.write_all(&x.to_le_bytes())?;
                out.write_all(&y.to_le_bytes())?;
                out.write_all(&((p + 1) as i64).to_le_bytes())?;
            }
        }
        Ok(())
    })?;
    fsio::write_atomic(&sparse.join("points3D.bin"), |out| {
        out.write_all(&(model.points.len() as u64).to_le_bytes())?;
        for (i, p) in model.points.iter().enumerate() {
            out.write_all(&((i + 1) as u64).to_le_bytes())?;
            for v in p.xyz {
                out.write_all(&(v as f64).to_le_bytes())?;
            }
            out.write_all(&p.rgb)?;
            out.write_all(&0f64.to_le_bytes())?;
            out.write_all(&(p.track.len() as u64).to_le_bytes())?;
            for (image, obs) in &p.track {
                out.write_all(&((image + 1) as i32).to_le_bytes())?;
                out.write_all(&(*obs as i32).to_le_bytes())?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::points::PointSource;

    #[test]
    fn quaternions_round_trip_rotations() {
        for (a, b, c) in [(0.0f32, 0.0f32, 0.0f32), (0.3, -1.2, 2.9), (3.1, 0.1, -0.2), (-1.5, 1.5, 0.7)] {
            let (ca, sa, cb, sb, cc, sc) = (a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin());
            let rx = [[1.0, 0.0, 0.0], [0.0, ca, -sa], [0.0, sa, ca]];
            let ry = [[cb, 0.0, sb], [0.0, 1.0, 0.0], [-sb, 0.0, cb]];
            let rz = [[cc, -sc, 0.0], [sc, cc, 0.0], [0.0, 0.0, 1.0]];
            let mul = |x: [[f32; 3]; 3], y: [[f32; 3]; 3]| -> [[f32; 3]; 3] { std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| x[i][k] * y[k][j]).sum())) };
            let r = mul(rz, mul(ry, rx));
            let [w, x, y, z] = quaternion(r);
            assert!(w >= 0.0);
            let back = [
                [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)],
                [2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x)],
                [2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)],
            ];
            for i in 0..3 {
                for j in 0..3 {
                    assert!((back[i][j] - r[i][j] as f64).abs() < 1e-5, "{a} {b} {c}");
                }
            }
        }
    }

    /// On the demo's ground truth every observation is where its camera projects the point, every
    /// track has at least two frames, and the images' lists and the tracks agree.
    #[test]
    fn tracks_on_the_demo_are_consistent() {
        let rec = crate::pipeline::demo::build_demo(12);
        let filter = PointFilter { source: PointSource::DepthAndCamera, threshold: f32::NEG_INFINITY, frame: None };
        let model = build(&rec, &filter, None, 2);
        assert!(model.points.len() > 1000, "{}", model.points.len());
        for (pi, p) in model.points.iter().enumerate() {
            assert!(p.track.len() >= 2);
            for &(img, obs) in &p.track {
                let (x, y, back) = model.images[img].observations[obs];
                assert_eq!(back, pi);
                let (u, v, _) = project(&model.images[img].camera, p.xyz).unwrap();
                assert!(((u as f64 + 0.5) - x).abs() < 1e-6 && ((v as f64 + 0.5) - y).abs() < 1e-6);
            }
        }
        let mean = model.points.iter().map(|p| p.track.len()).sum::<usize>() as f64 / model.points.len() as f64;
        assert!(mean > 3.0, "mean track length {mean}");
    }
}
