//! f32 matrix products on the CPU through OpenBLAS (feature `openblas`, on by default): candle's
//! own CPU gemm reaches about 55-60 GFLOP/s on the 2-core machines here, OpenBLAS about 2.3x that.
//! Anything else (other dtypes, GPUs, layouts BLAS cannot take) goes to candle's `matmul`.

use candle_core::{Result, Tensor};
#[cfg(feature = "openblas")]
use candle_core::DType;

#[cfg(feature = "openblas")]
mod ffi {
    #[link(name = "openblas")]
    unsafe extern "C" {
        pub fn cblas_sgemv(layout: i32, trans: i32, m: i32, n: i32, alpha: f32, a: *const f32, lda: i32, x: *const f32, incx: i32, beta: f32, y: *mut f32, incy: i32);
        pub fn openblas_set_num_threads(n: i32);
        pub fn openblas_get_num_threads() -> i32;
        pub fn cblas_sgemm(layout: i32, transa: i32, transb: i32, m: i32, n: i32, k: i32, alpha: f32, a: *const f32, lda: i32, b: *const f32, ldb: i32, beta: f32, c: *mut f32, ldc: i32);
    }
    pub const ROW_MAJOR: i32 = 101;
    pub const NO_TRANS: i32 = 111;
    pub const TRANS: i32 = 112;
}

/// How BLAS can read the last two dims of a layout: (transposed, leading dimension), plus the
/// stride between consecutive matrices of the (flattened) batch dims.
#[cfg(feature = "openblas")]
fn matrix_view(dims: &[usize], stride: &[usize]) -> Option<(bool, usize, usize)> {
    let r = dims.len();
    if r < 2 {
        return None;
    }
    let (rows, cols) = (dims[r - 2], dims[r - 1]);
    let (s_row, s_col) = (stride[r - 2], stride[r - 1]);
    let view = if s_col == 1 || cols == 1 {
        (false, s_row.max(cols))
    } else if s_row == 1 || rows == 1 {
        (true, s_col.max(rows))
    } else {
        return None;
    };
    // Batch dims (ignoring those of size 1) must flatten into one stride.
    let batch: Vec<(usize, usize)> = (0..r - 2).filter(|&i| dims[i] > 1).map(|i| (dims[i], stride[i])).collect();
    for pair in batch.windows(2) {
        if pair[0].1 != pair[1].1 * pair[1].0 {
            return None;
        }
    }
    let batch_stride = batch.last().map_or(rows * cols, |b| b.1);
    Some((view.0, view.1, batch_stride))
}

#[cfg(feature = "openblas")]
fn sgemm(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    use candle_core::Storage;
    let (ad, bd) = (a.dims(), b.dims());
    let (ra, rb) = (ad.len(), bd.len());
    if ra < 2 || rb < 2 || (rb != 2 && ad[..ra - 2] != bd[..rb - 2]) {
        return Ok(None);
    }
    let (m, k, n) = (ad[ra - 2], ad[ra - 1], bd[rb - 1]);
    if bd[rb - 2] != k || m == 0 || n == 0 || k == 0 {
        return Ok(None);
    }
    let batch: usize = ad[..ra - 2].iter().product();
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Storage::Cpu(ca), Storage::Cpu(cb)) = (&*sa, &*sb) else { return Ok(None) };
    let (Ok(xa), Ok(xb)) = (ca.as_slice::<f32>(), cb.as_slice::<f32>()) else { return Ok(None) };
    let (Some((ta, lda, bsa)), Some((tb, ldb, bsb))) = (matrix_view(ad, la.stride()), matrix_view(bd, lb.stride())) else { return Ok(None) };
    let bsb = if rb == 2 { 0 } else { bsb };
    let mut out = vec![0f32; batch * m * n];
    for i in 0..batch {
        let pa = la.start_offset() + i * bsa;
        let pb = lb.start_offset() + i * bsb;
        // SAFETY: the views were checked against the layouts above; each product stays inside the
        // storages (candle guarantees the layouts address valid elements) and the output block.
        if m == 1 {
            // One row (decoding a token): a matrix-vector product, which OpenBLAS's gemm does
            // not forward to gemv by itself.
            let incx = if ta { lda } else { 1 };
            unsafe {
                if tb {
                    ffi::cblas_sgemv(ffi::ROW_MAJOR, ffi::NO_TRANS, n as i32, k as i32, 1.0, xb.as_ptr().add(pb), ldb as i32, xa.as_ptr().add(pa), incx as i32, 0.0, out.as_mut_ptr().add(i * n), 1);
                } else {
                    ffi::cblas_sgemv(ffi::ROW_MAJOR, ffi::TRANS, k as i32, n as i32, 1.0, xb.as_ptr().add(pb), ldb as i32, xa.as_ptr().add(pa), incx as i32, 0.0, out.as_mut_ptr().add(i * n), 1);
                }
            }
            continue;
        }
        unsafe {
            ffi::cblas_sgemm(
                ffi::ROW_MAJOR,
                if ta { ffi::TRANS } else { ffi::NO_TRANS },
                if tb { ffi::TRANS } else { ffi::NO_TRANS },
                m as i32,
                n as i32,
                k as i32,
                1.0,
                xa.as_ptr().add(pa),
                lda as i32,
                xb.as_ptr().add(pb),
                ldb as i32,
                0.0,
                out.as_mut_ptr().add(i * m * n),
                n as i32,
            );
        }
    }
    drop((sa, sb));
    let mut shape = ad[..ra - 2].to_vec();
    shape.extend([m, n]);
    Ok(Some(Tensor::from_vec(out, shape, a.device())?))
}

#[cfg(feature = "openblas")]
pub(crate) use ffi::{openblas_get_num_threads, openblas_set_num_threads};

/// Row-major `C = alpha op(A) op(B) + beta C` with `op(A)` [m, k], `op(B)` [k, n] on raw buffers.
///
/// # Safety
/// Every element the leading dimensions address must lie inside the buffers.
#[cfg(feature = "openblas")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_raw(ta: bool, tb: bool, m: usize, n: usize, k: usize, alpha: f32, a: *const f32, lda: usize, b: *const f32, ldb: usize, beta: f32, c: *mut f32, ldc: usize) {
    let t = |x: bool| if x { ffi::TRANS } else { ffi::NO_TRANS };
    unsafe { ffi::cblas_sgemm(ffi::ROW_MAJOR, t(ta), t(tb), m as i32, n as i32, k as i32, alpha, a, lda as i32, b, ldb as i32, beta, c, ldc as i32) }
}

/// `a.matmul(b)` for a [..., M, K] and b [..., K, N] (same batch dims, or b 2D), through BLAS
/// when both are f32 on the CPU.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "openblas")]
    if a.device().is_cpu() && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        if let Some(t) = sgemm(a, b)? {
            return Ok(t);
        }
    }
    if b.rank() == 2 && a.rank() > 2 { a.broadcast_matmul(b) } else { a.matmul(b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn agrees_with_candle_for_every_layout() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (2, 3, 7, 4), &dev).unwrap();
        let cases = [
            (a.clone(), b.clone()),
            (a.clone(), b.transpose(2, 3).unwrap().contiguous().unwrap().transpose(2, 3).unwrap()),
            (a.transpose(2, 3).unwrap().contiguous().unwrap().transpose(2, 3).unwrap(), b.clone()),
            (a.narrow(2, 1, 3).unwrap(), b.clone()),
            (a.i((.., 1..2)).unwrap(), b.i((.., 1..2)).unwrap()),
        ];
        for (x, y) in cases {
            let want = x.matmul(&y).unwrap();
            let got = matmul(&x, &y).unwrap();
            let diff = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{diff}");
        }
        let w = Tensor::randn(0f32, 1.0, (4, 7), &dev).unwrap();
        // One row against either layout of the right-hand side (matrix-vector products).
        let row = Tensor::randn(0f32, 1.0, (1, 7), &dev).unwrap();
        for rhs in [w.t().unwrap(), w.t().unwrap().contiguous().unwrap()] {
            let want = row.matmul(&rhs).unwrap();
            let diff = (want - matmul(&row, &rhs).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{diff}");
        }
        // A 2D right-hand side is shared by every batch (a Linear's weight).
        let want = a.broadcast_matmul(&w.t().unwrap()).unwrap();
        let got = matmul(&a, &w.t().unwrap()).unwrap();
        let diff = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{diff}");
    }
}
