//! Space-aware frame sampling (Spatial-MLLM `sa_sampling.py`): keep confident points, voxelise
//! them on a grid of 1/20 of the smallest bounding-box side, and greedily pick the frames that
//! cover the most not-yet-covered voxels. Voxel ids are hashed, so 128 frames of 518x392 take
//! milliseconds rather than Python-set seconds.

use std::collections::HashMap;

/// Settings of the sampler; the defaults are upstream's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Frames to pick (fewer when coverage stops growing).
    pub k: usize,
    /// Confidence percentile (0-100) a point must reach (numpy linear interpolation).
    pub conf_percentile: f64,
    /// Absolute confidence floor (points must be strictly above it).
    pub min_conf: f32,
    /// Voxel size = the smallest bounding-box side / this.
    pub grid_divisions: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { k: 16, conf_percentile: 50.0, min_conf: 0.1, grid_divisions: 20.0 }
    }
}

/// Why each frame was (or was not) picked.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingResult {
    /// Picked frame indices in temporal order.
    pub selected: Vec<usize>,
    /// Picked frames in the order the greedy chose them, with their marginal gain (new voxels).
    pub picks_in_order: Vec<(usize, usize)>,
    pub voxel_size: f32,
    pub bbox_min: [f32; 3],
    pub conf_threshold: f32,
    /// Distinct voxels seen by each frame.
    pub voxels_per_frame: Vec<usize>,
    /// Voxels covered by the picks together.
    pub covered_voxels: usize,
    /// Voxels seen by all frames together.
    pub total_voxels: usize,
}

/// numpy's `percentile(values, q)` with linear interpolation.
pub fn percentile_linear(values: &[f32], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted: Vec<f32> = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let pos = (q / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let frac = pos - lo as f64;
    let (a, b) = (sorted[lo] as f64, sorted[hi] as f64);
    // numpy's _lerp: a + (b - a) * t, mirrored for t >= 0.5 to stay monotonic.
    if frac >= 0.5 { b - (b - a) * (1.0 - frac) } else { a + (b - a) * frac }
}

/// The per-frame voxel sets of a geometry (the expensive half of the sampler); any K can then be
/// picked from them in milliseconds.
#[derive(Debug, Clone)]
pub struct VoxelSets {
    /// Distinct voxel ids each frame sees (sorted).
    pub frame_sets: Vec<Vec<u32>>,
    pub total_voxels: usize,
    pub voxel_size: f32,
    pub bbox_min: [f32; 3],
    pub conf_threshold: f32,
}

impl VoxelSets {
    /// points: S frames of P points, xyz interleaved ([S*P*3]); conf: [S*P].
    pub fn build(points: &[f32], conf: &[f32], frames: usize, params: &SamplingParams) -> anyhow::Result<Self> {
        anyhow::ensure!(frames > 0, "space-aware sampling needs at least one frame");
        anyhow::ensure!(conf.len() % frames == 0 && points.len() == conf.len() * 3, "point map has {} values and confidence {}; expected 3 values per confidence for {frames} frames", points.len(), conf.len());
        let per_frame = conf.len() / frames;
        let threshold = percentile_linear(conf, params.conf_percentile);
        let keep = |c: f32| (c as f64) >= threshold && c > params.min_conf;

        let mut lo = [f32::INFINITY; 3];
        let mut hi = [f32::NEG_INFINITY; 3];
        let mut any = false;
        for (i, &c) in conf.iter().enumerate() {
            if keep(c) {
                any = true;
                for a in 0..3 {
                    let v = points[i * 3 + a];
                    lo[a] = lo[a].min(v);
                    hi[a] = hi[a].max(v);
                }
            }
        }
        anyhow::ensure!(any, "no point passes the confidence filter (percentile {} and > {})", params.conf_percentile, params.min_conf);
        let extent = (0..3).map(|a| hi[a] - lo[a]).fold(f32::INFINITY, f32::min);
        let voxel_size = extent / params.grid_divisions;
        anyhow::ensure!(voxel_size > 0.0 && voxel_size.is_finite(), "the confident points span no volume (smallest side {extent}), so no voxel grid can be built");

        // Dense ids for the occupied voxels, and each frame's distinct ids.
        let mut ids: HashMap<[i32; 3], u32> = HashMap::new();
        let mut frame_sets: Vec<Vec<u32>> = Vec::with_capacity(frames);
        for f in 0..frames {
            let mut set = Vec::new();
            for i in f * per_frame..(f + 1) * per_frame {
                if !keep(conf[i]) {
                    continue;
                }
                let key = [0, 1, 2].map(|a| ((points[i * 3 + a] - lo[a]) / voxel_size).floor() as i32);
                let next = ids.len() as u32;
                set.push(*ids.entry(key).or_insert(next));
            }
            set.sort_unstable();
            set.dedup();
            frame_sets.push(set);
        }
        Ok(Self { frame_sets, total_voxels: ids.len(), voxel_size, bbox_min: lo, conf_threshold: threshold as f32 })
    }

    /// Greedy maximum coverage: strictly greater gain wins, the lowest index wins ties, stop when
    /// nothing new is covered.
    pub fn greedy(&self, k: usize) -> SamplingResult {
        let frames = self.frame_sets.len();
        let mut covered = vec![false; self.total_voxels];
        let mut chosen = vec![false; frames];
        let mut picks = Vec::new();
        for _ in 0..k.min(frames) {
            let mut best: Option<(usize, usize)> = None;
            for f in (0..frames).filter(|&f| !chosen[f]) {
                let gain = self.frame_sets[f].iter().filter(|&&v| !covered[v as usize]).count();
                if best.is_none_or(|(_, g)| gain > g) {
                    best = Some((f, gain));
                }
            }
            match best {
                Some((f, gain)) if gain > 0 => {
                    chosen[f] = true;
                    for &v in &self.frame_sets[f] {
                        covered[v as usize] = true;
                    }
                    picks.push((f, gain));
                }
                _ => break,
            }
        }
        let mut selected: Vec<usize> = picks.iter().map(|&(f, _)| f).collect();
        selected.sort_unstable();
        SamplingResult {
            selected,
            covered_voxels: covered.iter().filter(|&&c| c).count(),
            picks_in_order: picks,
            voxel_size: self.voxel_size,
            bbox_min: self.bbox_min,
            conf_threshold: self.conf_threshold,
            voxels_per_frame: self.frame_sets.iter().map(Vec::len).collect(),
            total_voxels: self.total_voxels,
        }
    }
}

/// Space-aware sampling in one call. points: S frames of P points, xyz interleaved; conf: [S*P].
pub fn space_aware_sampling(points: &[f32], conf: &[f32], frames: usize, params: &SamplingParams) -> anyhow::Result<SamplingResult> {
    Ok(VoxelSets::build(points, conf, frames, params)?.greedy(params.k))
}

/// `np.linspace(0, n-1, k)` rounded as upstream does (truncating int cast), both ends included.
pub fn uniform_indices(n: usize, k: usize) -> Vec<usize> {
    if n == 0 || k == 0 {
        return Vec::new();
    }
    if k == 1 {
        return vec![0];
    }
    (0..k).map(|i| ((i as f64) * (n - 1) as f64 / (k - 1) as f64) as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy() {
        // np.percentile([1,2,3,4], 50) == 2.5; np.percentile([3,1,2], 50) == 2.0
        assert_eq!(percentile_linear(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
        assert_eq!(percentile_linear(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert!((percentile_linear(&[0.0, 10.0], 25.0) - 2.5).abs() < 1e-12);
    }

    #[test]
    fn uniform_includes_both_ends() {
        assert_eq!(uniform_indices(100, 16).first(), Some(&0));
        assert_eq!(uniform_indices(100, 16).last(), Some(&99));
        assert_eq!(uniform_indices(10, 4), vec![0, 3, 6, 9]);
    }
}
