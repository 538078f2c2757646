//! CPU side of the point cloud: turning a reconstruction into GPU points (once, on a worker
//! thread) and turning view settings into draw ranges and the uniform (cheap, per change).

use super::renderer::{MAX_FRAMES, PointCloudBuffers, PointInstance, PointUniform};
use spatial_models::reconstruction::Reconstruction;

/// Which world points to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointSource {
    /// Depth unprojected with the cameras (upstream demos' default, usually more accurate).
    DepthAndCamera,
    /// The point head's world points.
    PointMap,
}

/// Per-frame confidences, sorted descending to match the GPU order.
#[derive(Debug, Default, Clone)]
pub struct CloudIndex {
    pub frame_conf: Vec<Vec<f32>>,
    /// All kept confidences ascending, for the percentile threshold.
    pub all_conf_sorted: Vec<f32>,
    /// 5th..95th percentile extent of the points (scene scale, for frustum sizes).
    pub scene_scale: f32,
    pub depth_range: (f32, f32),
    pub centers: Vec<[f32; 3]>,
}

/// OpenCV world axes (y down, z forward) to the viewer's (y up, z backward).
pub fn to_view(p: [f32; 3]) -> [f32; 3] {
    [p[0], -p[1], -p[2]]
}

/// Builds the GPU points: at most `budget` points, subsampled on a regular pixel grid.
pub fn build_cloud(rec: &Reconstruction, source: PointSource, budget: usize) -> (PointCloudBuffers, CloudIndex) {
    let frames = rec.frames.min(MAX_FRAMES);
    let (h, w) = (rec.height, rec.width);
    let total = frames * h * w;
    let stride = ((total as f64 / budget.max(1) as f64).sqrt().ceil() as usize).max(1);
    let from_depth;
    let (points, conf) = match source {
        PointSource::DepthAndCamera => {
            from_depth = rec.points_from_depth();
            (&from_depth[..], &rec.depth_conf[..])
        }
        PointSource::PointMap => (&rec.world_points[..], &rec.world_points_conf[..]),
    };
    let mut buffers = PointCloudBuffers::default();
    let mut index = CloudIndex::default();
    let mut conf_all = Vec::new();
    let mut extent: [Vec<f32>; 3] = Default::default();
    for f in 0..frames {
        let mut chosen: Vec<(f32, usize)> = Vec::new();
        for y in (stride / 2..h).step_by(stride) {
            for x in (stride / 2..w).step_by(stride) {
                let i = f * h * w + y * w + x;
                let c = conf[i];
                let p = &points[i * 3..i * 3 + 3];
                if c > 1e-5 && p.iter().all(|v| v.is_finite()) {
                    chosen.push((c, i));
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
            buffers.points.push(PointInstance { position: p, color_rank: [rec.images[i * 3], rec.images[i * 3 + 1], rec.images[i * 3 + 2], 0] });
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
    index.all_conf_sorted = sorted;
    let pct = |v: &mut Vec<f32>, q: f32| -> f32 {
        if v.is_empty() {
            return 0.0;
        }
        let k = ((v.len() - 1) as f32 * q) as usize;
        *v.select_nth_unstable_by(k, f32::total_cmp).1
    };
    let mut scale = 0f32;
    for axis in extent.iter_mut() {
        let (lo, hi) = (pct(axis, 0.05), pct(axis, 0.95));
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
    (buffers, index)
}

/// View settings that shape the draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrawSettings {
    pub point_size: f32,
    pub color_mode: u32,
    /// Drop points below this confidence percentile (0-100).
    pub conf_percentile: f32,
    /// Only this frame's points, or all.
    pub frame: Option<usize>,
}

/// Draw ranges and uniform for the settings: O(frames · log points) work.
pub fn draws_for(buffers: &PointCloudBuffers, index: &CloudIndex, s: &DrawSettings) -> (Vec<(u32, u32)>, PointUniform) {
    let sorted = &index.all_conf_sorted;
    let threshold = if sorted.is_empty() {
        0.0
    } else {
        let q = (s.conf_percentile / 100.0).clamp(0.0, 1.0);
        let pos = q * (sorted.len() - 1) as f32;
        let lo = pos.floor() as usize;
        let hi = (lo + 1).min(sorted.len() - 1);
        sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f32)
    };
    let frames = index.frame_conf.len();
    let draws = (0..frames)
        .filter(|&f| s.frame.is_none_or(|only| only == f))
        .map(|f| {
            let kept = index.frame_conf[f].partition_point(|&c| c >= threshold) as u32;
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

    #[test]
    fn percentile_filter_is_a_prefix_of_each_frame() {
        let rec = crate::demo::build_demo(4);
        let (buffers, index) = build_cloud(&rec, PointSource::DepthAndCamera, 20_000);
        assert!(buffers.points.len() <= 20_000 && buffers.points.len() > 10_000);
        let all = DrawSettings { point_size: 2.0, color_mode: 0, conf_percentile: 0.0, frame: None };
        let (draws, _) = draws_for(&buffers, &index, &all);
        assert_eq!(draws.iter().map(|d| d.1 as usize).sum::<usize>(), buffers.points.len());
        let half = DrawSettings { conf_percentile: 50.0, ..all };
        let (draws, _) = draws_for(&buffers, &index, &half);
        let kept: usize = draws.iter().map(|d| d.1 as usize).sum();
        assert!((kept as f32 / buffers.points.len() as f32 - 0.5).abs() < 0.05, "{kept}");
        let one = DrawSettings { frame: Some(2), ..all };
        let (draws, _) = draws_for(&buffers, &index, &one);
        assert_eq!(draws.len(), 1);
        assert_eq!(draws[0].0, buffers.frame_starts[2]);
        assert_eq!(std::mem::size_of::<PointInstance>(), 16);
    }
}
