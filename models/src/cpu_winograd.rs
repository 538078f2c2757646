//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016). Each 4x4 output tile comes from a 6x6
//! input tile through 36 products per channel pair instead of 144, so a convolution becomes 36
//! independent [C_out, C_in] x [C_in, tiles] matrix products between two cheap transforms: a
//! quarter of the multiply-adds of the direct convolution. The DPT heads' 3x3 convolutions are
//! 85% of their arithmetic.
//!
//! Accuracy: the transforms are exact in f32 up to rounding (small integer and power-of-two
//! coefficients, plus the filter's sixths and twenty-fourths), but the products' rounding errors
//! pass through them: the worst output is off by up to 5e-5 of the output's typical magnitude at
//! 300 input channels (the direct convolution: about 1e-6), which the tests bound and the heads'
//! parity tolerance (1e-3) leaves far behind.

use crate::blas::sgemm_raw;
use crate::cpu::{SharedMut, SingleThreadedBlas};
use rayon::prelude::*;

/// Input tile side (output tile side + 2).
const TILE: usize = 6;
/// Output tile side.
const OUT: usize = 4;
/// Transformed positions per tile: one matrix product each.
const POSITIONS: usize = TILE * TILE;
/// Tiles of one tile row transformed together, one per vector lane.
const LANES: usize = 16;
/// Bytes of transformed input (and, separately, of products) per chunk of tile rows: bounds the
/// working set (a whole 518x294 map of 128 channels transforms to 180 MB) while keeping each
/// product hundreds of tiles wide.
const CHUNK_BYTES: usize = 32 << 20;

/// G, the filter transform (6x3), for the interpolation points 0, 1, -1, 2, -2 and infinity.
const G: [[f32; 3]; TILE] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

type Lanes = [f32; LANES];

/// B^T applied to six lane vectors (one column or row of input tiles).
#[inline(always)]
fn input_1d(d: &[Lanes; TILE]) -> [Lanes; TILE] {
    let mut t = [[0f32; LANES]; TILE];
    for l in 0..LANES {
        let (d0, d1, d2, d3, d4, d5) = (d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]);
        t[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        t[1][l] = (d3 + d4) - 4.0 * (d1 + d2);
        t[2][l] = (d4 - d3) + 4.0 * (d1 - d2);
        t[3][l] = (d4 - d2) + 2.0 * (d3 - d1);
        t[4][l] = (d4 - d2) - 2.0 * (d3 - d1);
        t[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    t
}

/// A^T applied to six lane vectors of products: four outputs.
#[inline(always)]
fn output_1d(m: &[Lanes; TILE]) -> [Lanes; OUT] {
    let mut y = [[0f32; LANES]; OUT];
    for l in 0..LANES {
        let (sum12, diff12, sum34, diff34) = (m[1][l] + m[2][l], m[1][l] - m[2][l], m[3][l] + m[4][l], m[3][l] - m[4][l]);
        y[0][l] = m[0][l] + sum12 + sum34;
        y[1][l] = diff12 + 2.0 * diff34;
        y[2][l] = sum12 + 4.0 * sum34;
        y[3][l] = diff12 + 8.0 * diff34 + m[5][l];
    }
    y
}

multiversion! {
    /// One output channel's transformed filters: U = G g G^T for each of its `c_in` filters
    /// `taps` [9][c_in] (tap-major, so every step is a vector over the input channels), written
    /// to `dst` rows of c_in at stride `position_stride`, one per position.
    fn transform_filters_row(taps: &[f32], c_in: usize, dst: SharedMut, position_stride: usize) {
        let tap = |i: usize, j: usize| &taps[(i * 3 + j) * c_in..(i * 3 + j + 1) * c_in];
        let mut gg = vec![0f32; 3 * c_in];
        for a in 0..TILE {
            // (G g)[a][j] for j = 0..3, each over all input channels.
            for j in 0..3 {
                let row = &mut gg[j * c_in..(j + 1) * c_in];
                let (t0, t1, t2) = (tap(0, j), tap(1, j), tap(2, j));
                for ci in 0..c_in {
                    row[ci] = G[a][0] * t0[ci] + G[a][1] * t1[ci] + G[a][2] * t2[ci];
                }
            }
            for b in 0..TILE {
                // SAFETY: position (a, b)'s row for this output channel, c_in long.
                let out = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add((a * TILE + b) * position_stride), c_in) };
                let (g0, g1, g2) = (&gg[..c_in], &gg[c_in..2 * c_in], &gg[2 * c_in..]);
                for ci in 0..c_in {
                    out[ci] = g0[ci] * G[b][0] + g1[ci] * G[b][1] + g2[ci] * G[b][2];
                }
            }
        }
    }
}

/// The transformed filters U = G g G^T as 36 matrices [c_out, c_in] (position-major), from
/// weights [c_out, c_in, 3, 3].
fn transform_filters(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut u = vec![0f32; POSITIONS * c_out * c_in];
    let dst = SharedMut(u.as_mut_ptr());
    weight.par_chunks(c_in * 9).enumerate().for_each(|(co, filters)| {
        let mut taps = vec![0f32; 9 * c_in];
        for (ci, g) in filters.chunks_exact(9).enumerate() {
            for (t, v) in g.iter().enumerate() {
                taps[t * c_in + ci] = *v;
            }
        }
        transform_filters_row(&taps, c_in, SharedMut(dst.ptr().wrapping_add(co * c_in)), c_out * c_in);
    });
    u
}

multiversion! {
    /// Transforms the tiles of tile rows `ty0..ty0 + rows` of one input channel `plane` [h, w]
    /// into `dst`: 36 position rows (stride `position_stride`), each `rows * tiles_x` tiles wide.
    fn transform_input_channel(plane: &[f32], h: usize, w: usize, pad: usize, tiles_x: usize, ty0: usize, rows: usize, dst: SharedMut, position_stride: usize) {
        // Six zero-padded input rows, wide enough for whole lane groups of tiles (and the one
        // tile past the last group that the deinterleave below reads).
        let width = OUT * (tiles_x.next_multiple_of(LANES) + 1);
        let mut band = vec![0f32; TILE * width];
        for ty in ty0..ty0 + rows {
            for (i, row) in band.chunks_exact_mut(width).enumerate() {
                row.fill(0.0);
                let y = (OUT * ty + i) as isize - pad as isize;
                if y >= 0 && (y as usize) < h {
                    let src = &plane[y as usize * w..(y as usize + 1) * w];
                    row[pad..pad + w].copy_from_slice(src);
                }
            }
            for tx0 in (0..tiles_x).step_by(LANES) {
                // d[i][j][l]: element (i, j) of tile tx0 + l, which is column 4 l + j of the
                // group: deinterleaved by column mod 4 (one shuffle pattern), columns 4 and 5 of
                // a tile being columns 0 and 1 of the next.
                let mut d = [[[0f32; LANES]; TILE]; TILE];
                for (i, row) in band.chunks_exact(width).enumerate() {
                    let group = &row[OUT * tx0..OUT * (tx0 + LANES + 1)];
                    let mut phases = [[0f32; LANES + 1]; OUT];
                    for (l, column) in group.chunks_exact(OUT).enumerate() {
                        for p in 0..OUT {
                            phases[p][l] = column[p];
                        }
                    }
                    for j in 0..TILE {
                        d[i][j].copy_from_slice(&phases[j % OUT][j / OUT..j / OUT + LANES]);
                    }
                }
                // Columns, then rows: V = B^T d B.
                let mut cols = [[[0f32; LANES]; TILE]; TILE];
                for j in 0..TILE {
                    let column = std::array::from_fn(|i| d[i][j]);
                    let t = input_1d(&column);
                    for a in 0..TILE {
                        cols[a][j] = t[a];
                    }
                }
                let first = (ty - ty0) * tiles_x + tx0;
                let valid = LANES.min(tiles_x - tx0);
                for (a, row) in cols.iter().enumerate() {
                    let v = input_1d(row);
                    for (b, lanes) in v.iter().enumerate() {
                        // SAFETY: position (a, b)'s row of this channel, tiles first..first+valid,
                        // inside the chunk; no other task writes this channel's rows.
                        unsafe {
                            let to = dst.ptr().add((a * TILE + b) * position_stride + first);
                            if valid == LANES {
                                (to as *mut Lanes).write_unaligned(*lanes);
                            } else {
                                std::ptr::copy_nonoverlapping(lanes.as_ptr(), to, valid);
                            }
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// Transforms one output channel's products of tile rows `ty0..ty0 + rows` (36 position rows
    /// at stride `position_stride`, read from `products`) back into its plane [ho, wo], plus `bias`.
    fn transform_output_channel(products: &[f32], position_stride: usize, plane: &mut [f32], ho: usize, wo: usize, tiles_x: usize, ty0: usize, rows: usize, bias: f32) {
        let width = OUT * LANES;
        for ty in ty0..ty0 + rows {
            for tx0 in (0..tiles_x).step_by(LANES) {
                let first = (ty - ty0) * tiles_x + tx0;
                let valid = LANES.min(tiles_x - tx0);
                let mut m = [[[0f32; LANES]; TILE]; TILE];
                for a in 0..TILE {
                    for b in 0..TILE {
                        let src = &products[(a * TILE + b) * position_stride + first..];
                        if valid == LANES {
                            m[a][b] = src[..LANES].try_into().expect("LANES long");
                        } else {
                            m[a][b][..valid].copy_from_slice(&src[..valid]);
                        }
                    }
                }
                // Y = A^T M A: rows of M first, then the columns of the result.
                let mut half = [[[0f32; LANES]; OUT]; TILE];
                for a in 0..TILE {
                    half[a] = output_1d(&m[a]);
                }
                let mut band = [[0f32; OUT * LANES]; OUT];
                for j in 0..OUT {
                    let column = std::array::from_fn(|a| half[a][j]);
                    let y = output_1d(&column);
                    for (i, lanes) in y.iter().enumerate() {
                        for l in 0..LANES {
                            band[i][OUT * l + j] = lanes[l] + bias;
                        }
                    }
                }
                let x0 = OUT * tx0;
                let cols = width.min(wo - x0);
                for (i, row) in band.iter().enumerate() {
                    let y = OUT * ty + i;
                    if y < ho {
                        plane[y * wo + x0..y * wo + x0 + cols].copy_from_slice(&row[..cols]);
                    }
                }
            }
        }
    }
}

/// 3x3 stride-1 convolution with zero padding `pad` (at least one output pixel).
/// x: [n, c_in, h, w], weight: [c_out, c_in, 3, 3] -> [n, c_out, h + 2 pad - 2, w + 2 pad - 2].
pub(crate) fn conv3x3(x: &[f32], n: usize, c_in: usize, h: usize, w: usize, weight: &[f32], c_out: usize, pad: usize, bias: Option<&[f32]>) -> Vec<f32> {
    assert!(h + 2 * pad >= 3 && w + 2 * pad >= 3, "a 3x3 convolution needs at least 3x3 padded input");
    let (ho, wo) = (h + 2 * pad - 2, w + 2 * pad - 2);
    let (tiles_y, tiles_x) = (ho.div_ceil(OUT), wo.div_ceil(OUT));
    let filters = transform_filters(weight, c_out, c_in);
    // Tile rows per chunk: as many as CHUNK_BYTES holds, evened out over the chunks.
    let most_rows = (CHUNK_BYTES / (POSITIONS * 4 * c_in.max(c_out) * tiles_x)).clamp(1, tiles_y);
    let rows_per_chunk = tiles_y.div_ceil(tiles_y.div_ceil(most_rows));
    let mut transformed = vec![0f32; POSITIONS * c_in * rows_per_chunk * tiles_x];
    let mut products = vec![0f32; POSITIONS * c_out * rows_per_chunk * tiles_x];
    let mut out = vec![0f32; n * c_out * ho * wo];
    let _blas = SingleThreadedBlas::new();
    for img in 0..n {
        let input = &x[img * c_in * h * w..(img + 1) * c_in * h * w];
        let output = &mut out[img * c_out * ho * wo..(img + 1) * c_out * ho * wo];
        for ty0 in (0..tiles_y).step_by(rows_per_chunk) {
            let rows = rows_per_chunk.min(tiles_y - ty0);
            let tiles = rows * tiles_x;
            // Layout [36][c][tiles]: position p's matrix is rows p*c .. (p+1)*c.
            let dst = SharedMut(transformed.as_mut_ptr());
            input.par_chunks(h * w).enumerate().for_each(|(ci, plane)| {
                let channel = SharedMut(dst.ptr().wrapping_add(ci * tiles));
                transform_input_channel(plane, h, w, pad, tiles_x, ty0, rows, channel, c_in * tiles);
            });
            let (v, m) = (transformed.as_ptr() as usize, SharedMut(products.as_mut_ptr()));
            (0..POSITIONS).into_par_iter().for_each(|p| {
                // SAFETY: position p's filters [c_out, c_in], transformed tiles [c_in, tiles] and
                // products [c_out, tiles], all inside their buffers; each p writes its own block.
                unsafe {
                    sgemm_raw(false, false, c_out, tiles, c_in, 1.0, filters.as_ptr().add(p * c_out * c_in), c_in, (v as *const f32).add(p * c_in * tiles), tiles, 0.0, m.ptr().add(p * c_out * tiles), tiles, false)
                };
            });
            let products = &products;
            output.par_chunks_mut(ho * wo).enumerate().for_each(|(co, plane)| {
                let b = bias.map_or(0.0, |b| b[co]);
                transform_output_channel(&products[co * tiles..], c_out * tiles, plane, ho, wo, tiles_x, ty0, rows, b);
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct convolution in f64.
    fn direct(x: &[f32], n: usize, c_in: usize, h: usize, w: usize, weight: &[f32], c_out: usize, pad: usize, bias: &[f32]) -> Vec<f64> {
        let (ho, wo) = (h + 2 * pad - 2, w + 2 * pad - 2);
        let mut out = vec![0f64; n * c_out * ho * wo];
        for img in 0..n {
            for co in 0..c_out {
                for y in 0..ho {
                    for xx in 0..wo {
                        let mut acc = bias[co] as f64;
                        for ci in 0..c_in {
                            for i in 0..3 {
                                for j in 0..3 {
                                    let (sy, sx) = ((y + i) as isize - pad as isize, (xx + j) as isize - pad as isize);
                                    if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                                        acc += weight[((co * c_in + ci) * 3 + i) * 3 + j] as f64 * x[((img * c_in + ci) * h + sy as usize) * w + sx as usize] as f64;
                                    }
                                }
                            }
                        }
                        out[((img * c_out + co) * ho + y) * wo + xx] = acc;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn winograd_tiles_give_the_direct_convolution() {
        use crate::multiversion::simd_level;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        // Sizes off the 4-pixel tiles and the 16-tile lane groups, one-pixel maps, pad 0 and 2,
        // more tile rows than one chunk holds (the 300-channel case), several images.
        for (n, c_in, c_out, h, w, pad) in [(2usize, 3usize, 5usize, 7usize, 9usize, 1usize), (1, 8, 4, 1, 1, 1), (1, 2, 3, 6, 70, 0), (1, 4, 2, 5, 4, 2), (1, 16, 16, 37, 21, 1), (1, 300, 7, 130, 75, 1)] {
            let x: Vec<f32> = (0..n * c_in * h * w).map(|_| uniform()).collect();
            let weight: Vec<f32> = (0..c_out * c_in * 9).map(|_| uniform()).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| uniform()).collect();
            let want = direct(&x, n, c_in, h, w, &weight, c_out, pad, &bias);
            // The error scale: the output's typical magnitude, sqrt(9 c_in) / 3 for uniform data.
            let scale = (9.0 * c_in as f64).sqrt() / 3.0;
            let got = conv3x3(&x, n, c_in, h, w, &weight, c_out, pad, Some(&bias));
            assert_eq!(got.len(), want.len());
            let worst = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max) / scale;
            assert!(worst < 1e-4, "n {n} c_in {c_in} c_out {c_out} {h}x{w} pad {pad} ({:?}): error {worst:e} of the output scale", simd_level());
        }
    }
}
