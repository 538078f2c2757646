//! The points of a reconstruction as every consumer sees them: which 3D points (depth unprojected
//! with the cameras, or the point head's map), and one confidence filter: "keep the points at or
//! above the P-th percentile of the geometry's confidences" with numpy's linear interpolation. The
//! viewer's slider, exports and the sampler all use [`confidence_threshold`] so a percentile means
//! the same everywhere.

use spatial_models::reconstruction::Reconstruction;
use std::borrow::Cow;

/// Which world points to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PointSource {
    /// Depth unprojected with the cameras (upstream demos' default, usually more accurate).
    #[default]
    DepthAndCamera,
    /// The point head's world points (what space-aware sampling uses).
    PointMap,
}

impl PointSource {
    pub fn name(&self) -> &'static str {
        match self {
            Self::DepthAndCamera => "depth",
            Self::PointMap => "pointmap",
        }
    }
}

/// The points [S*H*W*3] and their confidences [S*H*W].
pub fn points_of(rec: &Reconstruction, source: PointSource) -> (Cow<'_, [f32]>, &[f32]) {
    match source {
        PointSource::DepthAndCamera => (Cow::Owned(rec.points_from_depth()), &rec.depth_conf),
        PointSource::PointMap => (Cow::Borrowed(&rec.world_points), &rec.world_points_conf),
    }
}

/// Whether a point can be shown or exported at all (finite, with a confidence above VGGT's floor).
pub fn usable(p: &[f32], conf: f32) -> bool {
    conf > 1e-5 && p.iter().all(|v| v.is_finite())
}

/// numpy's linear percentile of `conf`, the threshold "at or above the P-th percentile" uses.
pub fn confidence_threshold(conf: &[f32], percentile: f64) -> f32 {
    if percentile <= 0.0 || conf.is_empty() {
        return f32::NEG_INFINITY;
    }
    spatial_models::sampling::percentile_linear(conf, percentile) as f32
}

/// A quantile table of a geometry's confidences: exact numpy percentiles at every 0.1 % (built once
/// on a worker), so moving a slider needs no pass over millions of values.
#[derive(Debug, Clone, Default)]
pub struct ConfidenceQuantiles {
    /// `table[i]` is the percentile `i / 10`.
    table: Vec<f32>,
}

impl ConfidenceQuantiles {
    pub const STEPS: usize = 1000;

    pub fn build(conf: &[f32]) -> Self {
        if conf.is_empty() {
            return Self::default();
        }
        let mut sorted = conf.to_vec();
        sorted.sort_unstable_by(f32::total_cmp);
        let n = sorted.len();
        let table = (0..=Self::STEPS)
            .map(|i| {
                let pos = i as f64 / Self::STEPS as f64 * (n - 1) as f64;
                let lo = pos.floor() as usize;
                let hi = (lo + 1).min(n - 1);
                let f = pos - lo as f64;
                (sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * f) as f32
            })
            .collect();
        Self { table }
    }

    /// The percentile (0-100) of a confidence among the geometry's: the inverse of [`Self::threshold`]
    /// at 0.1 % steps.
    pub fn percentile_of(&self, value: f32) -> f32 {
        if self.table.is_empty() {
            return 0.0;
        }
        let below = self.table.partition_point(|&t| t <= value);
        (below.saturating_sub(1)).min(Self::STEPS) as f32 / Self::STEPS as f32 * 100.0
    }

    /// The threshold for `percentile` (0-100): exact at multiples of 0.1 %, interpolated between.
    pub fn threshold(&self, percentile: f64) -> f32 {
        if percentile <= 0.0 || self.table.is_empty() {
            return f32::NEG_INFINITY;
        }
        let pos = (percentile / 100.0).clamp(0.0, 1.0) * Self::STEPS as f64;
        let lo = pos.floor() as usize;
        let hi = (lo + 1).min(Self::STEPS);
        let f = pos - lo as f64;
        (self.table[lo] as f64 + (self.table[hi] as f64 - self.table[lo] as f64) * f) as f32
    }
}

/// The filter on screen: points of one frame or all, at or above a confidence threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointFilter {
    pub source: PointSource,
    pub threshold: f32,
    /// Only this geometry frame's points.
    pub frame: Option<usize>,
}

/// Indices (into S*H*W) of the points a filter keeps.
pub fn filtered(rec: &Reconstruction, points: &[f32], conf: &[f32], filter: &PointFilter) -> Vec<usize> {
    let n = rec.height * rec.width;
    let range = match filter.frame {
        Some(f) => f * n..((f + 1) * n).min(conf.len()),
        None => 0..conf.len(),
    };
    range.filter(|&i| conf[i] >= filter.threshold && usable(&points[i * 3..i * 3 + 3], conf[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_table_agrees_with_numpys_percentile() {
        let conf: Vec<f32> = (0..100_003).map(|i| ((i * 7919) % 100_003) as f32 * 0.01 + 1.0).collect();
        let q = ConfidenceQuantiles::build(&conf);
        for p in [0.1, 25.0, 50.0, 73.4, 99.9, 100.0] {
            let exact = confidence_threshold(&conf, p);
            assert!((q.threshold(p) - exact).abs() <= 1e-3 * exact.abs(), "p {p}: {} vs {exact}", q.threshold(p));
        }
        assert_eq!(q.threshold(25.0), confidence_threshold(&conf, 25.0));
        assert_eq!(q.threshold(0.0), f32::NEG_INFINITY);
        for p in [0.0f64, 12.5, 50.0, 99.0] {
            let back = q.percentile_of(q.threshold(p.max(0.1))) as f64;
            assert!((back - p).abs() <= 0.2, "p {p}: {back}");
        }
        assert_eq!(q.percentile_of(-1.0), 0.0);
        assert_eq!(q.percentile_of(1e9), 100.0);
    }
}
