//! `sample`: space-aware frame sampling on the geometry written by `reconstruct`.

use anyhow::Result;
use clap::Args;
use spatial_models::reconstruction::Reconstruction;
use spatial_models::sampling::{SamplingParams, space_aware_sampling};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Safetensors with `world_points` [S,H,W,3] and `world_points_conf` [S,H,W].
    #[arg(long)]
    pub geometry: PathBuf,
    /// Frames to pick.
    #[arg(long, default_value_t = 16)]
    pub k: usize,
    /// Confidence percentile a point must reach.
    #[arg(long, default_value_t = 50.0)]
    pub conf_percentile: f64,
    /// Print JSON: {"selected": [...], "voxel_size": v, "voxels_per_frame": [...]}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SampleArgs) -> Result<i32> {
    anyhow::ensure!(a.k >= 1, "--k 0: pick at least one frame");
    let rec = Reconstruction::load(&a.geometry)?;
    let params = SamplingParams { k: a.k, conf_percentile: a.conf_percentile, ..Default::default() };
    let r = space_aware_sampling(&rec.world_points, &rec.world_points_conf, rec.frames, &params)?;
    // Picks are positions in the file; report the source frame indices alongside.
    let source: Vec<i64> = r.selected.iter().map(|&i| rec.frame_indices[i]).collect();
    if a.json {
        let json = serde_json::json!({
            "selected": r.selected,
            "source_frame_indices": source,
            "voxel_size": r.voxel_size,
            "voxels_per_frame": r.voxels_per_frame,
            "picks_in_order": r.picks_in_order.iter().map(|&(f, g)| serde_json::json!({"frame": f, "gain": g})).collect::<Vec<_>>(),
            "covered_voxels": r.covered_voxels,
            "total_voxels": r.total_voxels,
        });
        println!("{json}");
    } else {
        println!("picked {} of {} frames (K = {}): {:?}", r.selected.len(), rec.frames, a.k, r.selected);
        println!("voxel size {:.5}, confidence threshold {:.4}, covered {}/{} voxels", r.voxel_size, r.conf_threshold, r.covered_voxels, r.total_voxels);
        println!("{:>6} {:>8} {:>8}", "order", "frame", "gain");
        for (i, (f, g)) in r.picks_in_order.iter().enumerate() {
            println!("{:>6} {:>8} {:>8}", i + 1, f, g);
        }
    }
    Ok(0)
}
