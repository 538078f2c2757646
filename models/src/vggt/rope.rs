//! VGGT's 2D rotary position embedding: the head is split in two halves, the first rotated by
//! the token's row and the second by its column, each in rotate-half layout with base `rope_freq`.
//! Patch tokens sit at (row+1, col+1); the camera and register tokens at (0, 0).

use crate::nn::RotaryTables;
use candle_core::{Device, Result, Tensor};

/// Per-token (y, x) positions of one frame: `special` tokens at (0,0), then the grid row-major.
pub fn frame_positions(special: usize, grid_h: usize, grid_w: usize) -> Vec<(u32, u32)> {
    let mut pos = vec![(0, 0); special];
    for i in 0..grid_h {
        for j in 0..grid_w {
            pos.push((i as u32 + 1, j as u32 + 1));
        }
    }
    pos
}

/// Tables for `positions` and a head of `head_dim`, built in f32 (the angles must not be rounded
/// to bf16 before cos/sin).
pub fn rope_2d_tables(positions: &[(u32, u32)], head_dim: usize, base: f64, device: &Device) -> Result<RotaryTables> {
    let section = head_dim / 2;
    let n_freq = section / 2;
    let inv_freq: Vec<f32> = (0..n_freq).map(|k| 1.0 / (base.powf((2 * k) as f64 / section as f64)) as f32).collect();
    let t = positions.len();
    let mut cos = Vec::with_capacity(t * head_dim);
    let mut sin = Vec::with_capacity(t * head_dim);
    for &(y, x) in positions {
        for coord in [y, x] {
            // rotate-half: the frequency table is repeated twice within a section.
            for _ in 0..2 {
                for &f in &inv_freq {
                    let angle = coord as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
    }
    Ok(RotaryTables {
        cos: Tensor::from_vec(cos, (t, head_dim), device)?,
        sin: Tensor::from_vec(sin, (t, head_dim), device)?,
        section,
    })
}
