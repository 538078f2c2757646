//! Space-aware frame sampling on a reconstruction, with the picks in the source's frame numbers.

use super::source::Source;
use anyhow::Result;
use spatial_models::reconstruction::Reconstruction;
use spatial_models::sampling::{SamplingParams, SamplingResult, VoxelSets};

/// Picks in both numberings.
#[derive(Debug, Clone)]
pub struct Picks {
    /// The greedy's result, in the geometry's frame numbers.
    pub result: SamplingResult,
    /// The picked frames in the source's numbering, ascending.
    pub source_frames: Vec<usize>,
}

/// Upstream's space-aware sampling (confidence percentile, voxels of 1/20 of the shortest
/// bounding-box side, greedy maximum coverage) on `rec`'s point map, mapped to `source`'s frames.
pub fn space_aware(source: &Source, rec: &Reconstruction, params: &SamplingParams) -> Result<Picks> {
    let sets = VoxelSets::build(&rec.world_points, &rec.world_points_conf, rec.frames, params)?;
    picks_from(source, rec, &sets, params.k)
}

/// The greedy step on voxel sets built before (moving K re-runs only this).
pub fn picks_from(source: &Source, rec: &Reconstruction, sets: &VoxelSets, k: usize) -> Result<Picks> {
    let result = sets.greedy(k);
    let map = source.frames_of(rec)?;
    let mut source_frames: Vec<usize> = result.selected.iter().map(|&f| map[f]).collect();
    source_frames.sort_unstable();
    Ok(Picks { result, source_frames })
}
