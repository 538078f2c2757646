//! Inspecting and measuring a reconstruction: the point behind a pixel, where a point lands in a
//! frame and whether that frame sees it (a depth test, not just the frustum), pins and lengths with
//! a user-given scale, and the frames that see a region. Pixels are in the geometry's resolution,
//! VGGT's convention: sample (y, x) is the ray through pixel coordinates (x, y).

use super::points::{PointSource, usable};
use spatial_models::reconstruction::Reconstruction;
use spatial_models::vggt::Camera;

/// A point's depth must agree with the depth a frame measured at its pixel within this fraction
/// for the frame to count as seeing it (occluded points fail).
pub const DEPTH_TOLERANCE: f32 = 0.02;

/// Where `p` (world) lands in `camera`'s image (pixel coordinates, VGGT's convention) with its
/// depth along the camera's z; None behind the camera.
pub fn project(camera: &Camera, p: [f32; 3]) -> Option<(f32, f32, f32)> {
    let e = &camera.extrinsic;
    let xc = [0, 1, 2].map(|r| e[r][0] * p[0] + e[r][1] * p[1] + e[r][2] * p[2] + e[r][3]);
    if xc[2] <= 1e-6 {
        return None;
    }
    let k = &camera.intrinsic;
    Some((
        k[0][0] * xc[0] / xc[2] + k[0][2],
        k[1][1] * xc[1] / xc[2] + k[1][2],
        xc[2],
    ))
}

/// The sample of frame `frame` that sees `p` (its pixel), if the frame sees it: inside the image
/// and not occluded (its depth within [`DEPTH_TOLERANCE`] of the frame's depth there).
pub fn seen_at(rec: &Reconstruction, frame: usize, p: [f32; 3]) -> Option<(usize, usize)> {
    let (w, h) = (rec.width, rec.height);
    let (u, v, z) = project(rec.cameras.get(frame)?, p)?;
    let (x, y) = (u.round(), v.round());
    if !(x >= 0.0 && y >= 0.0 && x < w as f32 && y < h as f32) {
        return None;
    }
    let (x, y) = (x as usize, y as usize);
    let d = rec.depth[frame * w * h + y * w + x];
    (d > 0.0 && (z - d).abs() <= DEPTH_TOLERANCE * d).then_some((x, y))
}

/// One sample of the geometry: what hovering or pinning a pixel reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplePoint {
    /// Geometry frame and pixel (x, y).
    pub frame: usize,
    pub pixel: [usize; 2],
    /// World position (VGGT's world: the first camera, OpenCV axes).
    pub position: [f32; 3],
    /// Depth along the frame's camera axis.
    pub depth: f32,
    pub confidence: f32,
}

/// The point of sample (`frame`, `y`, `x`) as the view shows it: VGGT's `world_points[frame, y, x]`
/// or the depth unprojected with the frame's camera. None outside the geometry or where the sample
/// is unusable (no depth, non-finite).
pub fn sample_point(
    rec: &Reconstruction,
    source: PointSource,
    frame: usize,
    x: usize,
    y: usize,
) -> Option<SamplePoint> {
    let (w, h) = (rec.width, rec.height);
    if frame >= rec.frames || x >= w || y >= h {
        return None;
    }
    let i = frame * w * h + y * w + x;
    let camera = rec.cameras.get(frame)?;
    let (position, confidence) = match source {
        PointSource::PointMap => (
            [
                rec.world_points[i * 3],
                rec.world_points[i * 3 + 1],
                rec.world_points[i * 3 + 2],
            ],
            rec.world_points_conf[i],
        ),
        PointSource::DepthAndCamera => {
            let d = rec.depth[i];
            let k = &camera.intrinsic;
            let pc = [
                (x as f32 - k[0][2]) * d / k[0][0],
                (y as f32 - k[1][2]) * d / k[1][1],
                d,
            ];
            let m = camera.cam_to_world();
            (
                m.map(|row| row[0] * pc[0] + row[1] * pc[1] + row[2] * pc[2] + row[3]),
                rec.depth_conf[i],
            )
        }
    };
    if !usable(&position, confidence) {
        return None;
    }
    let depth = project(camera, position).map_or(rec.depth[i], |(_, _, z)| z);
    Some(SamplePoint {
        frame,
        pixel: [x, y],
        position,
        depth,
        confidence,
    })
}

pub fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// A pinned point, and the sample it came from when it was pinned on a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pin {
    pub position: [f32; 3],
    pub frame: Option<usize>,
    pub pixel: Option<[usize; 2]>,
}

/// One segment between consecutive pins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub from: usize,
    pub to: usize,
    /// In scene units.
    pub length: f32,
    /// In metres, once a scale is set.
    pub metres: Option<f32>,
}

/// Pins (a polyline: every pin after the first closes a segment) and the scale the user gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measuring {
    pub pins: Vec<Pin>,
    /// Metres per scene unit (VGGT's scale is arbitrary until the user says what a length is).
    pub scale: Option<f32>,
}

impl Measuring {
    pub fn measurements(&self) -> Vec<Measurement> {
        self.pins
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let length = distance(w[0].position, w[1].position);
                Measurement {
                    from: i,
                    to: i + 1,
                    length,
                    metres: self.scale.map(|s| length * s),
                }
            })
            .collect()
    }

    /// The polyline's length in scene units.
    pub fn total(&self) -> f32 {
        self.measurements().iter().map(|m| m.length).sum()
    }

    /// Says the last segment is `metres` long: every length is then also in metres.
    pub fn set_scale(&mut self, metres: f64) -> Result<f32, String> {
        if !(metres.is_finite() && metres > 0.0) {
            return Err(format!(
                "a length in metres is a positive number, got {metres}"
            ));
        }
        let last = self
            .measurements()
            .last()
            .copied()
            .ok_or("set the scale after measuring a segment: pin two points first")?;
        if last.length <= 1e-9 {
            return Err("the last segment has no length (its two pins are the same point)".into());
        }
        let scale = (metres / last.length as f64) as f32;
        self.scale = Some(scale);
        Ok(scale)
    }

    /// A length for people: metres once scaled, else scene units.
    pub fn describe(&self, length: f32) -> String {
        match self.scale {
            Some(s) => format_metres(length * s),
            None => format!("{length:.3} units"),
        }
    }
}

pub fn format_metres(m: f32) -> String {
    if m.abs() < 1.0 {
        format!("{:.1} cm", m * 100.0)
    } else {
        format!("{m:.3} m")
    }
}

/// How a region was chosen (what a saved state keeps to select it again).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RegionOrigin {
    /// A pixel rectangle [x0, y0, x1, y1] (inclusive) of a geometry frame.
    Rect { frame: usize, rect: [i64; 4] },
    /// A world box, over the points at or above a confidence threshold.
    Box {
        min: [f32; 3],
        max: [f32; 3],
        threshold: f32,
    },
}

/// A region of the scene: the 3D points lifted from a rectangle on a frame (or inside a box).
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub points: Vec<[f32; 3]>,
    /// Geometry frames that see at least one of its points (projection and depth test).
    pub frames: Vec<usize>,
    /// How it was chosen, for people ("frame 12, 40x30 px").
    pub label: String,
    pub origin: RegionOrigin,
}

/// At most this many points stand for a region (a regular subsample beyond): visibility over a
/// few thousand frames stays interactive.
pub const REGION_MAX_POINTS: usize = 20_000;

/// The usable samples of `frame` inside the pixel rectangle [x0, x1] x [y0, y1] (inclusive,
/// clamped to the image), lifted to 3D as the view shows them.
pub fn region_from_rect(
    rec: &Reconstruction,
    source: PointSource,
    frame: usize,
    rect: [i64; 4],
) -> Result<Region, String> {
    if frame >= rec.frames {
        return Err(format!(
            "frame {frame} is not in the geometry ({} frames)",
            rec.frames
        ));
    }
    let clamp = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
    let (x0, x1) = (
        clamp(rect[0].min(rect[2]), rec.width),
        clamp(rect[0].max(rect[2]), rec.width),
    );
    let (y0, y1) = (
        clamp(rect[1].min(rect[3]), rec.height),
        clamp(rect[1].max(rect[3]), rec.height),
    );
    let count = (x1 - x0 + 1) * (y1 - y0 + 1);
    let stride = ((count as f64 / REGION_MAX_POINTS as f64).sqrt().ceil() as usize).max(1);
    let points: Vec<[f32; 3]> = (y0..=y1)
        .step_by(stride)
        .flat_map(|y| (x0..=x1).step_by(stride).map(move |x| (x, y)))
        .filter_map(|(x, y)| sample_point(rec, source, frame, x, y).map(|s| s.position))
        .collect();
    if points.is_empty() {
        return Err(format!(
            "the rectangle {x0},{y0} to {x1},{y1} of frame {frame} has no usable depth"
        ));
    }
    let frames = frames_seeing(rec, &points);
    Ok(Region {
        points,
        frames,
        label: format!("frame {frame}, {}x{} px", x1 - x0 + 1, y1 - y0 + 1),
        origin: RegionOrigin::Rect { frame, rect },
    })
}

/// The points among `candidates` (world; the shown cloud, at most its point budget) inside an
/// axis-aligned box; `threshold` is the confidence filter they were shown with.
pub fn region_in_box(
    rec: &Reconstruction,
    candidates: impl IntoIterator<Item = [f32; 3]>,
    min: [f32; 3],
    max: [f32; 3],
    threshold: f32,
) -> Result<Region, String> {
    let inside: Vec<[f32; 3]> = candidates
        .into_iter()
        .filter(|p| (0..3).all(|a| p[a] >= min[a] && p[a] <= max[a]))
        .collect();
    if inside.is_empty() {
        return Err("the box holds no point of the geometry".into());
    }
    let step = inside.len().div_ceil(REGION_MAX_POINTS);
    let points: Vec<[f32; 3]> = inside.into_iter().step_by(step).collect();
    let frames = frames_seeing(rec, &points);
    Ok(Region {
        points,
        frames,
        label: "a box in 3D".into(),
        origin: RegionOrigin::Box {
            min,
            max,
            threshold,
        },
    })
}

/// Every geometry frame that sees at least one of `points` (inside its image, and not occluded).
pub fn frames_seeing(rec: &Reconstruction, points: &[[f32; 3]]) -> Vec<usize> {
    (0..rec.frames)
        .filter(|&f| points.iter().any(|&p| seen_at(rec, f, p).is_some()))
        .collect()
}

/// Length of the path through the camera centres, in scene units.
pub fn camera_path_length(rec: &Reconstruction) -> f32 {
    rec.cameras
        .windows(2)
        .map(|w| distance(w[0].center(), w[1].center()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::demo::{DEMO_HEIGHT, DEMO_WIDTH, build_demo, camera_pose, furniture};

    /// A room point (the demo's furniture coordinates) in the demo's world (the first camera).
    fn to_world(p: [f32; 3], frames: usize) -> [f32; 3] {
        let (c0, r0) = camera_pose(0, frames);
        let d = [p[0] - c0[0], p[1] - c0[1], p[2] - c0[2]];
        r0.map(|axis| axis[0] * d[0] + axis[1] * d[1] + axis[2] * d[2])
    }

    #[test]
    fn a_sample_is_the_point_its_camera_projects_back_to_it() {
        let rec = build_demo(8);
        for source in [PointSource::DepthAndCamera, PointSource::PointMap] {
            let s = sample_point(&rec, source, 3, 100, 70).unwrap();
            let (u, v, z) = project(&rec.cameras[3], s.position).unwrap();
            assert!(
                (u - 100.0).abs() < 1e-2 && (v - 70.0).abs() < 1e-2,
                "{u} {v}"
            );
            assert!(
                (z - rec.depth[3 * DEMO_WIDTH * DEMO_HEIGHT + 70 * DEMO_WIDTH + 100]).abs() < 1e-3
            );
            assert_eq!(seen_at(&rec, 3, s.position), Some((100, 70)));
        }
        assert!(sample_point(&rec, PointSource::DepthAndCamera, 8, 0, 0).is_none());
        assert!(sample_point(&rec, PointSource::DepthAndCamera, 0, DEMO_WIDTH, 0).is_none());
    }

    /// Pinning the two top corners of the table's front edge where a demo camera sees them
    /// measures the table's true width (1.2 m) to within a centimetre; the scale then turns
    /// scene units into metres.
    #[test]
    fn pins_at_projected_corners_measure_the_true_length() {
        let frames = 24;
        let rec = build_demo(frames);
        let table = furniture().into_iter().find(|f| f.name == "table").unwrap();
        let corners = [
            [table.min[0], table.max[1], table.max[2]],
            [table.max[0], table.max[1], table.max[2]],
        ]
        .map(|c| to_world(c, frames));
        let mut measuring = Measuring::default();
        let mut tried = 0;
        for f in 0..frames {
            let pins: Vec<Pin> = corners
                .iter()
                .filter_map(|&c| {
                    let (u, v, _) = project(&rec.cameras[f], c)?;
                    let s = sample_point(
                        &rec,
                        PointSource::DepthAndCamera,
                        f,
                        u.round() as usize,
                        v.round() as usize,
                    )?;
                    (distance(s.position, c) < 0.05).then_some(Pin {
                        position: s.position,
                        frame: Some(f),
                        pixel: Some(s.pixel),
                    })
                })
                .collect();
            if pins.len() == 2 {
                tried += 1;
                measuring.pins = pins;
                let m = measuring.measurements()[0];
                assert!((m.length - 1.2).abs() < 0.01, "frame {f}: {}", m.length);
            }
        }
        assert!(tried > 2, "only {tried} frames see both corners");
        measuring.set_scale(2.4).unwrap();
        let m = measuring.measurements()[0];
        assert!(
            (m.metres.unwrap() - 2.4).abs() < 1e-4 && (measuring.scale.unwrap() - 2.0).abs() < 0.02
        );
        assert!(measuring.set_scale(-1.0).is_err());
        measuring.pins.truncate(1);
        assert!(
            Measuring {
                pins: measuring.pins.clone(),
                scale: None
            }
            .set_scale(1.0)
            .unwrap_err()
            .contains("pin two points")
        );
    }

    /// The frames that see a region lifted from a rectangle on the sofa are those whose ground
    /// truth depth maps see one of its points, and a frame looking away does not count.
    #[test]
    fn frames_seeing_a_region_use_the_depth_test() {
        let frames = 24;
        let rec = build_demo(frames);
        let sofa = furniture().into_iter().find(|f| f.name == "sofa").unwrap();
        let centre = to_world(
            [
                (sofa.min[0] + sofa.max[0]) / 2.0,
                sofa.max[1],
                (sofa.min[2] + sofa.max[2]) / 2.0,
            ],
            frames,
        );
        let inside =
            |(x, y): (usize, usize)| x >= 3 && y >= 3 && x + 3 < DEMO_WIDTH && y + 3 < DEMO_HEIGHT;
        let f = (0..frames)
            .find(|&f| seen_at(&rec, f, centre).is_some_and(inside))
            .expect("some frame sees the sofa");
        let (u, v, _) = project(&rec.cameras[f], centre).unwrap();
        let (x, y) = (u.round() as i64, v.round() as i64);
        let region = region_from_rect(
            &rec,
            PointSource::DepthAndCamera,
            f,
            [x - 3, y - 3, x + 3, y + 3],
        )
        .unwrap();
        assert_eq!(region.points.len(), 49);
        assert!(region.frames.contains(&f));
        assert!(
            region.frames.len() < frames,
            "every frame sees it: {:?}",
            region.frames
        );
        // Brute force over the ground truth: a frame sees a point when the depth at its
        // projection agrees.
        for g in 0..frames {
            let sees = region.points.iter().any(|&p| {
                let Some((u, v, z)) = project(&rec.cameras[g], p) else {
                    return false;
                };
                let (x, y) = (u.round() as i64, v.round() as i64);
                (0..DEMO_WIDTH as i64).contains(&x) && (0..DEMO_HEIGHT as i64).contains(&y) && {
                    let d = rec.depth
                        [g * DEMO_WIDTH * DEMO_HEIGHT + y as usize * DEMO_WIDTH + x as usize];
                    (z - d).abs() <= 0.02 * d
                }
            });
            assert_eq!(region.frames.contains(&g), sees, "frame {g}");
        }
        assert!(region_from_rect(&rec, PointSource::DepthAndCamera, frames, [0, 0, 1, 1]).is_err());
        let (all, conf) = crate::pipeline::points::points_of(&rec, PointSource::DepthAndCamera);
        let candidates = || (0..conf.len()).map(|i| [all[i * 3], all[i * 3 + 1], all[i * 3 + 2]]);
        let boxed = region_in_box(&rec, candidates(), centre.map(|c| c - 0.05), centre.map(|c| c + 0.05), 0.0).unwrap();
        assert!(boxed.frames.contains(&f));
        assert!(boxed.points.iter().all(|p| distance(*p, centre) < 0.09));
        assert!(region_in_box(&rec, candidates(), [1e6; 3], [1e6 + 1.0; 3], 0.0).is_err());
    }
}
