//! f32 products against weights packed once, at load, in the micro-kernel's own layout (AVX-512).
//!
//! A BLAS re-packs the weight on every call (OpenBLAS: `sgemm_oncopy`/`incopy`, 6% of VGGT's
//! two-frame forward) and its blocking is tuned for square products; VGGT's are 522 x 1024..4096
//! at two frames. Here a weight [n, k] is laid out once as 32-column panels of [depth][32] values,
//! so a product only packs its activations (rows x k, a small fraction of the work) and the
//! 14 x 32 register tile reads the weight panels straight from memory: 1.05-1.13x OpenBLAS's
//! Cooperlake kernels at VGGT's two-frame products on a Zen 4, equal from 2,048 rows
//! (`bench blas`). A 6 x 16 AVX2 tile on the same panels was no faster than OpenBLAS's Haswell
//! kernels (VGGT at two frames with `SPATIAL_SIMD=avx2` on the Zen 4: 6.6-6.8 s against
//! 6.3-6.6 s), so AVX2 CPUs keep OpenBLAS.

use rayon::prelude::*;
use std::sync::atomic::Ordering;

/// Output columns per packed panel and micro-tile (two AVX-512 vectors of 16 sums).
pub(crate) const PANEL_COLS: usize = 32;
/// Depth per pass: a 14-row activation tile is 14 KiB (in the L1 across the task's panels) and
/// a 32-column weight panel 32 KiB.
const DEPTH: usize = 256;
/// Output columns per task: their weight block (DEPTH deep) is 256 KiB, in the L2 across the
/// task's row tiles.
const TASK_COLS: usize = 256;

/// Rows of x per micro-tile: 14 rows x 2 vectors of 16 sums hold 28 of the 32 vector registers,
/// two more the weight vectors.
const TILE_ROWS: usize = 14;

/// Whether the packed kernel runs here: AVX-512 within `SPATIAL_SIMD`'s cap, unless
/// `SPATIAL_PACKED_WEIGHTS=off` (to time OpenBLAS on the same kernels otherwise); decided once.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("SPATIAL_PACKED_WEIGHTS").is_ok_and(|v| matches!(v.as_str(), "off" | "0"));
        #[cfg(target_arch = "x86_64")]
        {
            !off && crate::multiversion::simd_level() == crate::multiversion::SimdLevel::Avx512
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = off;
            false
        }
    })
}

/// A weight [n, k] (a Linear's, row-major) packed for [`matmul`]: panel p holds columns
/// 32p..32p + 32 as [k][32] values, the last panel's missing columns zero. Not `Clone`: layers
/// share it through an `Arc` (a copy would be the weight's size again).
pub struct PackedWeight {
    panels: Vec<f32>,
    n: usize,
    k: usize,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight [{}, {}]", self.n, self.k)
    }
}

impl PackedWeight {
    /// Packs `w` ([n, k], row-major), in parallel.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "w is [n, k]");
        let mut panels = vec![0f32; n.div_ceil(PANEL_COLS) * PANEL_COLS * k];
        if k > 0 {
            panels.par_chunks_mut(PANEL_COLS * k).enumerate().for_each(|(p, panel)| {
                for c in 0..PANEL_COLS.min(n - p * PANEL_COLS) {
                    let row = &w[(p * PANEL_COLS + c) * k..(p * PANEL_COLS + c + 1) * k];
                    for (i, v) in row.iter().enumerate() {
                        panel[i * PANEL_COLS + c] = *v;
                    }
                }
            });
        }
        Self { panels, n, k }
    }

    /// The weight back in its [n, k] row-major layout (for the op-by-op path).
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; n * k];
        if k > 0 {
            w.par_chunks_mut(k).enumerate().for_each(|(j, row)| {
                let panel = &self.panels[(j / PANEL_COLS) * PANEL_COLS * k..];
                for (i, v) in row.iter_mut().enumerate() {
                    *v = panel[i * PANEL_COLS + j % PANEL_COLS];
                }
            });
        }
        w
    }

    /// (n, k): output features, depth.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }
}

/// Rows per task: all of them where the columns give every thread work, else split evenly in
/// whole tiles (each row task reads the weight again).
fn task_rows(rows: usize, n: usize) -> usize {
    let column_tasks = n.div_ceil(TASK_COLS);
    let wanted = (4 * rayon::current_num_threads()).div_ceil(column_tasks);
    let tiles = rows.div_ceil(TILE_ROWS);
    tiles.div_ceil(wanted.clamp(1, tiles)) * TILE_ROWS
}

/// `y[rows, n] = x[rows, k] · w^T` on all of rayon's threads; None where [`available`] is false.
/// A cancelled run ([`crate::nn::cancellable`]) stops within one depth pass of a task with the
/// cancel error.
pub fn matmul(x: &[f32], rows: usize, w: &PackedWeight) -> candle_core::Result<Option<Vec<f32>>> {
    if !available() {
        return Ok(None);
    }
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), rows * k, "x is [rows, k]");
    if rows == 0 || n == 0 || k == 0 {
        return Ok(Some(vec![0f32; rows * n]));
    }
    let cancel = crate::nn::cancel_flag();
    let cancelled = || cancel.as_ref().is_some_and(|f| f.load(Ordering::Relaxed));
    // Every element is written by the first depth pass: no zeroing first.
    let mut y = crate::cpu::Unwritten::new(rows * n);
    let activations = pack_activations(x, rows, k);
    let task_rows = task_rows(rows, n);
    let tasks: Vec<(usize, usize)> = (0..rows.div_ceil(task_rows)).flat_map(|r| (0..n.div_ceil(TASK_COLS)).map(move |c| (r * task_rows, c * TASK_COLS))).collect();
    let out = crate::cpu::SharedMut(y.as_mut_ptr());
    tasks.into_par_iter().for_each(|(r0, c0)| {
        let out = &out;
        let (r1, c1) = ((r0 + task_rows).min(rows), (c0 + TASK_COLS).min(n));
        for p0 in (0..k).step_by(DEPTH) {
            if cancelled() {
                return;
            }
            let depth = DEPTH.min(k - p0);
            for t0 in (r0..r1).step_by(TILE_ROWS) {
                // Tile t0 / TILE_ROWS of the packed activations, from depth p0.
                let a = &activations[(t0 / TILE_ROWS) * k * TILE_ROWS + p0 * TILE_ROWS..];
                for j0 in (c0..c1).step_by(PANEL_COLS) {
                    // Panel j0 / PANEL_COLS, from depth p0.
                    let b = &w.panels[(j0 / PANEL_COLS) * PANEL_COLS * k + p0 * PANEL_COLS..];
                    // SAFETY: the CPU has AVX-512 (checked above); a holds depth x TILE_ROWS
                    // values, b depth x PANEL_COLS; rows t0..t0+rows and columns j0..j0+cols of
                    // y are this task's alone.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let c = out.ptr().add(t0 * n + j0);
                        tile((r1 - t0).min(TILE_ROWS), depth, a.as_ptr(), b.as_ptr(), c, n, (c1 - j0).min(PANEL_COLS), p0 > 0);
                    }
                }
            }
        }
    });
    if cancelled() {
        // Tasks stopped part-way: y is not all written and is dropped unread.
        return Err(candle_core::Error::Msg(crate::nn::CANCELLED.into()));
    }
    // SAFETY: the first depth pass (p0 = 0) of the task covering each row and column stored it.
    Ok(Some(unsafe { y.into_vec() }))
}

/// x laid out tile by tile: tile t holds rows 14t.. as [depth][row], so the micro-kernel
/// broadcasts one value per row from consecutive addresses (14 rows read in place, 4-16 KiB
/// apart, would share one L1 set). Rows past the end are zero.
fn pack_activations(x: &[f32], rows: usize, k: usize) -> Vec<f32> {
    let mut packed = vec![0f32; rows.div_ceil(TILE_ROWS) * k * TILE_ROWS];
    packed.par_chunks_mut(k * TILE_ROWS).enumerate().for_each(|(t, tile)| {
        for i in 0..TILE_ROWS.min(rows - t * TILE_ROWS) {
            let row = &x[(t * TILE_ROWS + i) * k..(t * TILE_ROWS + i + 1) * k];
            for (e, v) in row.iter().enumerate() {
                tile[e * TILE_ROWS + i] = *v;
            }
        }
    });
    packed
}

/// One micro-tile for `rows` (1..=14) rows: picks the kernel compiled for that many.
///
/// # Safety
/// AVX-512; `a` holds `depth` x 14 values, `b` `depth` x 32; `c` has `rows` rows of `cols`
/// (1..=32) writable columns, `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(rows: usize, depth: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, cols: usize, accumulate: bool) {
    crate::cpu_packed::by_tile_rows!(micro_kernel, rows, depth, a, b, c, ldc, cols, accumulate)
}

/// `c[R, cols] (+)= a · b` over `depth`: 2R sums of 16 lanes stay in registers;
/// each step loads two 16-column weight vectors and broadcasts one activation per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_kernel<const R: usize>(depth: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, cols: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    let mut sums = [[_mm512_setzero_ps(); 2]; R];
    for i in 0..depth {
        // SAFETY (all loads): inside the packed panels, per the caller.
        let w = unsafe { [_mm512_loadu_ps(b.add(i * PANEL_COLS)), _mm512_loadu_ps(b.add(i * PANEL_COLS + 16))] };
        for (r, row) in sums.iter_mut().enumerate() {
            let x = _mm512_set1_ps(unsafe { *a.add(i * TILE_ROWS + r) });
            row[0] = _mm512_fmadd_ps(x, w[0], row[0]);
            row[1] = _mm512_fmadd_ps(x, w[1], row[1]);
        }
    }
    store_tile!(sums, c, ldc, cols, accumulate);
}

/// Stores (or with `accumulate` adds) the rows of 2 x 16 sums `sums` into `c[rows, cols]`, `ldc`
/// apart, the columns past `cols` untouched: the end of this kernel and of the bf16 one
/// ([`crate::cpu_bf16`]). A macro, so it is compiled into each kernel: as a `#[target_feature]`
/// function (which cannot be `#[inline(always)]`) it stayed a call per tile, the sums spilled to
/// pass them, and both kernels ran 3-10% slower (`bench blas`, two runs each).
/// `c` must have the rows of `sums` with `cols` (at most 32) writable columns, `ldc` apart; the
/// caller's features include AVX-512F.
macro_rules! store_tile {
    ($sums:expr, $c:expr, $ldc:expr, $cols:expr, $accumulate:expr) => {{
        use std::arch::x86_64::*;
        let cols: usize = $cols;
        let lanes = |from: usize| -> __mmask16 { if cols >= from + 16 { 0xffff } else if cols > from { (1u32 << (cols - from)) as u16 - 1 } else { 0 } };
        let masks = [lanes(0), lanes(16)];
        for (i, s) in $sums.iter().enumerate() {
            for (v, (&sum, &mask)) in s.iter().zip(&masks).enumerate() {
                // SAFETY: row i, the masked columns of this tile, per the caller.
                unsafe {
                    let at = $c.add(i * $ldc + 16 * v);
                    let total = if $accumulate { _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask, at)) } else { sum };
                    _mm512_mask_storeu_ps(at, mask, total);
                }
            }
        }
    }};
}
pub(crate) use store_tile;

/// `kernel::<R>(args)` for R = `rows`, 1 to 14: the 14-row tile kernels (this one and
/// [`crate::cpu_bf16`]'s) are compiled for each row count, so a last tile of fewer rows holds
/// only its own sums in registers.
macro_rules! by_tile_rows {
    ($kernel:ident, $rows:expr, $($arg:expr),*) => {
        $crate::cpu_packed::by_tile_rows!(@rows $kernel, $rows, ($($arg),*), 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
    };
    (@rows $kernel:ident, $rows:expr, $args:tt, $($r:literal)*) => {
        match $rows {
            // SAFETY: the caller's contract is the kernel's.
            $($r => unsafe { $kernel::<$r> $args },)*
            _ => unreachable!("a tile has 1 to 14 rows"),
        }
    };
}
pub(crate) use by_tile_rows;

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn packing_round_trips() {
        for (n, k) in [(1, 1), (31, 7), (33, 5), (64, 300), (70, 1)] {
            let w = values(n * k, (n * 31 + k) as u64);
            let packed = PackedWeight::pack(&w, n, k);
            assert_eq!(packed.unpack(), w, "[{n}, {k}]");
            assert_eq!(packed.dims(), (n, k));
        }
    }

    #[test]
    fn packed_products_match_f64_sums() {
        if !available() {
            eprintln!("no AVX-512 here: the packed kernel does not run (its callers use OpenBLAS)");
            return;
        }
        // Odd row counts (partial tiles), columns past a panel and a task, depths past a pass.
        for (rows, n, k) in [(1, 1, 1), (5, 17, 3), (13, 33, 7), (15, 40, 257), (29, 530, 600), (100, 64, 1030)] {
            let x = values(rows * k, rows as u64 + 3);
            let w = values(n * k, n as u64 * 7 + k as u64);
            let y = matmul(&x, rows, &PackedWeight::pack(&w, n, k)).unwrap().expect("available");
            for r in 0..rows {
                for j in 0..n {
                    let exact: f64 = (0..k).map(|e| x[r * k + e] as f64 * w[j * k + e] as f64).sum();
                    let scale: f64 = (0..k).map(|e| (x[r * k + e] as f64 * w[j * k + e] as f64).abs()).sum();
                    let err = (y[r * n + j] as f64 - exact).abs();
                    assert!(err <= 1e-6 * scale.max(1.0), "[{rows}x{k}]·[{n}x{k}]^T at ({r}, {j}): {} vs {exact}", y[r * n + j]);
                }
            }
        }
    }

    #[test]
    fn a_cancelled_product_stops_with_the_cancel_error() {
        if !available() {
            return;
        }
        let (rows, n, k) = (64, 64, 2048);
        let (x, packed) = (values(rows * k, 2), PackedWeight::pack(&values(n * k, 1), n, k));
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = crate::nn::cancellable(flag.clone(), || Ok(matmul(&x, rows, &packed)?)).unwrap();
        assert!(done.is_some_and(|y| y.is_some()), "not cancelled: the product");
        flag.store(true, Ordering::Relaxed);
        let cancelled = crate::nn::cancellable(flag, || Ok(matmul(&x, rows, &packed)?)).unwrap();
        assert!(cancelled.is_none(), "a cancelled run's product ends as cancelled");
    }
}
