//! The CPU side of the point cloud: turning a reconstruction into GPU points (once, on a worker
//! thread) and view settings into draw ranges and the uniform (cheap, per change). The layouts
//! here are the shader's (`shaders/points.wgsl`); the renderer uploads them as they are.

use crate::pipeline::points::{ConfidenceQuantiles, PointSource, points_of, usable};
use bytemuck::{Pod, Zeroable};
use spatial_models::reconstruction::Reconstruction;

/// Frames the uniform has room for (camera centres and frame starts).
pub const MAX_FRAMES: usize = 256;

/// One point on the GPU: 16 bytes.
#[derive(Clone, Copy, Pod, Zeroable, Debug, PartialEq)]
#[repr(C)]
pub struct PointInstance {
    pub position: [f32; 3],
    /// sRGB colour and the confidence percentile rank (0-255).
    pub color_rank: [u8; 4],
}

/// Points grouped by frame (frame f owns `frame_starts[f]..frame_starts[f+1]`), each group
/// sorted by decreasing confidence so a confidence threshold is a prefix of every group.
#[derive(Debug, Default)]
pub struct PointCloudBuffers {
    pub points: Vec<PointInstance>,
    pub frame_starts: Vec<u32>,
    pub centers: Vec<[f32; 3]>,
    /// The geometry sample (index into S*H*W) each point came from: what a picked point is.
    pub samples: Vec<u32>,
}

/// Uniform block, laid out as `PointUniform` in the WGSL.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub struct PointUniform {
    pub params: [f32; 4],
    pub depth_range: [f32; 4],
    pub frame_starts: [[u32; 4]; MAX_FRAMES / 4],
    pub centers: [[f32; 4]; MAX_FRAMES],
}

impl Default for PointUniform {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

/// Per-frame confidences, sorted descending to match the GPU order.
#[derive(Debug, Default, Clone)]
pub struct CloudIndex {
    pub frame_conf: Vec<Vec<f32>>,
    /// 5th..95th percentile extent of the points (scene scale, for frustum sizes).
    pub scene_scale: f32,
    /// The same extent per axis (x, y, z; the view's axes, same lengths as the world's).
    pub extent: [f32; 3],
    pub depth_range: (f32, f32),
    pub centers: Vec<[f32; 3]>,
}

/// OpenCV world axes (y down, z forward) to the viewer's (y up, z backward).
pub fn to_view(p: [f32; 3]) -> [f32; 3] {
    [p[0], -p[1], -p[2]]
}

/// Builds the GPU points (at most `budget`, subsampled on a regular pixel grid) and the quantiles
/// of all the geometry's confidences for the filter.
pub fn build_cloud(rec: &Reconstruction, source: PointSource, budget: usize) -> (PointCloudBuffers, CloudIndex, ConfidenceQuantiles) {
    let frames = rec.frames.min(MAX_FRAMES);
    let (h, w) = (rec.height, rec.width);
    let total = frames * h * w;
    let stride = ((total as f64 / budget.max(1) as f64).sqrt().ceil() as usize).max(1);
    let (points, conf) = points_of(rec, source);
    let quantiles = ConfidenceQuantiles::build(&conf[..total.min(conf.len())]);
    let mut buffers = PointCloudBuffers::default();
    let mut index = CloudIndex::default();
    let mut conf_all = Vec::new();
    let mut extent: [Vec<f32>; 3] = Default::default();
    for f in 0..frames {
        let mut chosen: Vec<(f32, usize)> = Vec::new();
        for y in (stride / 2..h).step_by(stride) {
            for x in (stride / 2..w).step_by(stride) {
                let i = f * h * w + y * w + x;
                if usable(&points[i * 3..i * 3 + 3], conf[i]) {
                    chosen.push((conf[i], i));
                }
            }
        }
        chosen.sort_by(|a, b| b.0.total_cmp(&a.0));
        buffers.frame_starts.push(buffers.points.len() as u32);
        index.frame_conf.push(chosen.iter().map(|c| c.0).collect());
        for &(c, i) in &chosen {
            let p = to_view([points[i * 3], points[i * 3 + 1], points[i * 3 + 2]]);
            for a in 0..3 {
                extent[a].push(p[a]);
            }
            conf_all.push(c);
            buffers.samples.push(i as u32);
            buffers.points.push(PointInstance {
                position: p,
                color_rank: [
                    rec.images[i * 3],
                    rec.images[i * 3 + 1],
                    rec.images[i * 3 + 2],
                    0,
                ],
            });
        }
    }
    buffers.frame_starts.push(buffers.points.len() as u32);
    // Confidence percentile rank of each point, for the confidence colouring.
    let mut sorted = conf_all.clone();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len().max(1);
    for (pt, c) in buffers.points.iter_mut().zip(&conf_all) {
        let rank = sorted.partition_point(|v| v < c);
        pt.color_rank[3] = (rank * 255 / n) as u8;
    }
    let pct = |v: &mut Vec<f32>, q: f32| -> f32 {
        if v.is_empty() {
            return 0.0;
        }
        let k = ((v.len() - 1) as f32 * q) as usize;
        *v.select_nth_unstable_by(k, f32::total_cmp).1
    };
    let mut scale = 0f32;
    for (a, axis) in extent.iter_mut().enumerate() {
        let (lo, hi) = (pct(axis, 0.05), pct(axis, 0.95));
        index.extent[a] = hi - lo;
        scale += (hi - lo) * (hi - lo);
    }
    index.scene_scale = scale.sqrt().max(1e-3);
    index.centers = rec.cameras.iter().take(frames).map(|c| to_view(c.center())).collect();
    buffers.centers = index.centers.clone();
    // Distance range for the depth colouring.
    let mut dists: Vec<f32> = Vec::new();
    for f in 0..frames {
        let c = index.centers[f];
        for p in &buffers.points[buffers.frame_starts[f] as usize..buffers.frame_starts[f + 1] as usize] {
            let d = ((p.position[0] - c[0]).powi(2) + (p.position[1] - c[1]).powi(2) + (p.position[2] - c[2]).powi(2)).sqrt();
            dists.push(d);
        }
    }
    index.depth_range = (pct(&mut dists, 0.02), pct(&mut dists, 0.98));
    (buffers, index, quantiles)
}

/// View settings that shape the draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrawSettings {
    pub point_size: f32,
    /// The shader's colour mode constant.
    pub color_mode: u32,
    /// Drop points below this confidence (from the geometry's quantiles).
    pub threshold: f32,
    /// Only this frame's points, or all.
    pub frame: Option<usize>,
}

/// Draw ranges and uniform for the settings: O(frames · log points) work.
pub fn draws_for(buffers: &PointCloudBuffers, index: &CloudIndex, s: &DrawSettings) -> (Vec<(u32, u32)>, PointUniform) {
    let frames = index.frame_conf.len();
    let draws = (0..frames)
        .filter(|&f| s.frame.is_none_or(|only| only == f))
        .map(|f| {
            let kept = index.frame_conf[f].partition_point(|&c| c >= s.threshold) as u32;
            (buffers.frame_starts[f], kept)
        })
        .collect();
    let mut uniform = PointUniform::default();
    uniform.params = [s.point_size, s.color_mode as f32, frames as f32, 0.0];
    uniform.depth_range = [index.depth_range.0, index.depth_range.1, 0.0, 0.0];
    for (f, start) in buffers.frame_starts.iter().take(frames.min(MAX_FRAMES)).enumerate() {
        uniform.frame_starts[f / 4][f % 4] = *start;
    }
    for (f, c) in index.centers.iter().take(MAX_FRAMES).enumerate() {
        uniform.centers[f] = [c[0], c[1], c[2], 1.0];
    }
    (draws, uniform)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::points::{PointFilter, confidence_threshold, filtered};

    #[test]
    fn percentile_filter_is_a_prefix_of_each_frame() {
        let rec = crate::pipeline::demo::build_demo(4);
        let (buffers, index, quantiles) = build_cloud(&rec, PointSource::DepthAndCamera, 20_000);
        assert!(buffers.points.len() <= 20_000 && buffers.points.len() > 10_000);
        let all = DrawSettings { point_size: 2.0, color_mode: 0, threshold: quantiles.threshold(0.0), frame: None };
        let (draws, _) = draws_for(&buffers, &index, &all);
        assert_eq!(draws.iter().map(|d| d.1 as usize).sum::<usize>(), buffers.points.len());
        let half = DrawSettings { threshold: quantiles.threshold(50.0), ..all };
        let (draws, _) = draws_for(&buffers, &index, &half);
        let kept: usize = draws.iter().map(|d| d.1 as usize).sum();
        assert!((kept as f32 / buffers.points.len() as f32 - 0.5).abs() < 0.05, "{kept}");
        let one = DrawSettings { frame: Some(2), ..all };
        let (draws, _) = draws_for(&buffers, &index, &one);
        assert_eq!(draws.len(), 1);
        assert_eq!(draws[0].0, buffers.frame_starts[2]);
        assert_eq!(std::mem::size_of::<PointInstance>(), 16);
    }

    /// The view's filter, the PLY export and the sampler mean the same thing by a percentile: the
    /// numpy percentile of all the geometry's confidences. (The export once used a fixed 50 % and
    /// the view a percentile of its subsampled points.)
    #[test]
    fn one_confidence_percentile_for_view_and_exports() {
        let rec = crate::pipeline::demo::build_demo(3);
        for source in [PointSource::DepthAndCamera, PointSource::PointMap] {
            // A budget that keeps every point: the view then shows exactly what the export writes.
            let (buffers, index, quantiles) = build_cloud(&rec, source, usize::MAX);
            let (points, conf) = points_of(&rec, source);
            for p in [0.0, 25.0, 50.0, 90.0] {
                let threshold = quantiles.threshold(p);
                assert_eq!(threshold, confidence_threshold(conf, p), "{source:?} at {p} %");
                let (draws, _) = draws_for(&buffers, &index, &DrawSettings { point_size: 1.0, color_mode: 0, threshold, frame: None });
                let shown: usize = draws.iter().map(|d| d.1 as usize).sum();
                let exported = filtered(&rec, &points, conf, &PointFilter { source, threshold, frame: None }).len();
                assert_eq!(shown, exported, "{source:?} at {p} %");
            }
        }
    }
}
