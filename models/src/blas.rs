//! f32 matrix products on the CPU through OpenBLAS, loaded at run time when the system has it
//! (Debian's `libopenblas0`; feature `openblas`, on by default): candle's own CPU gemm reaches
//! about 55-60 GFLOP/s on the 2-core machines here, OpenBLAS about 2.3x that. Without it the
//! products go through the `gemm` crate (candle's), so nothing needs to be installed to build or
//! run. Anything else (other dtypes, GPUs, layouts BLAS cannot take) goes to candle's `matmul`.

use candle_core::{DType, Result, Tensor};
use std::sync::OnceLock;

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

type Sgemm = unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *const f32, i32, f32, *mut f32, i32);
type Sgemv = unsafe extern "C" fn(i32, i32, i32, i32, f32, *const f32, i32, *const f32, i32, f32, *mut f32, i32);
type SetThreads = unsafe extern "C" fn(i32);
type GetThreads = unsafe extern "C" fn() -> i32;
type GetName = unsafe extern "C" fn() -> *const std::ffi::c_char;

/// OpenBLAS's entry points, resolved from the shared library.
struct OpenBlas {
    sgemm: Sgemm,
    sgemv: Sgemv,
    set_threads: SetThreads,
    get_threads: GetThreads,
    /// "OpenBLAS 0.3.21 DYNAMIC_ARCH ... Zen" and the kernel it picked for this CPU.
    description: String,
    // Keeps the library mapped for the process's lifetime.
    _lib: libloading::Library,
}

/// Asks OpenBLAS for its Haswell (AVX2) kernels on AMD Zen 4 unless `OPENBLAS_CORETYPE` says
/// otherwise. Its DYNAMIC_ARCH picks the Cooperlake (AVX-512) ones there, which are slower on a
/// CPU that runs 512-bit operations as two 256-bit halves: `bench blas` 189 / 203 / 208 GFLOP/s
/// at 1024 / 2048 / 4096 against 202 / 217 / 216, the language model's prefill at 3,200 tokens
/// (bf16 weights widened for the sgemm) 101.3 s against 96.8 s. Other CPUs keep its choice (Zen 3
/// gets Haswell-class kernels anyway; Zen 5 is not measured). OpenBLAS reads the variable when it
/// is loaded, on first use: call once at start-up, before threads start (it sets an environment
/// variable).
pub fn prefer_fastest_openblas_kernels() {
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var_os("OPENBLAS_CORETYPE").is_some() || !is_amd_zen4() {
            return;
        }
        // SAFETY: called at start-up, before any other thread reads or writes the environment.
        unsafe { std::env::set_var("OPENBLAS_CORETYPE", "Haswell") };
    }
}

/// AMD family 19h (Zen 3 and Zen 4) with AVX-512, which only Zen 4 of the two has.
#[cfg(target_arch = "x86_64")]
fn is_amd_zen4() -> bool {
    use std::arch::x86_64::__cpuid;
    // Leaves 0 (vendor) and 1 (family) exist on every x86-64 CPU.
    let (vendor, signature) = (__cpuid(0), __cpuid(1));
    let amd = [vendor.ebx, vendor.edx, vendor.ecx].iter().flat_map(|r| r.to_le_bytes()).eq(*b"AuthenticAMD");
    let base_family = (signature.eax >> 8) & 0xf;
    let family = if base_family == 0xf { base_family + ((signature.eax >> 20) & 0xff) } else { base_family };
    amd && family == 0x19 && std::is_x86_feature_detected!("avx512f")
}

fn load_openblas() -> Option<OpenBlas> {
    if !cfg!(feature = "openblas") || std::env::var_os("SPATIAL_NO_OPENBLAS").is_some() {
        return None;
    }
    for name in ["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"] {
        // SAFETY: loading OpenBLAS runs its initialisers, which only set up its own state.
        let Ok(lib) = (unsafe { libloading::Library::new(name) }) else { continue };
        // SAFETY: the symbols are looked up with their C signatures from the OpenBLAS headers.
        let found = unsafe {
            (|| -> std::result::Result<_, libloading::Error> {
                let sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0")?;
                let sgemv = *lib.get::<Sgemv>(b"cblas_sgemv\0")?;
                let set_threads = *lib.get::<SetThreads>(b"openblas_set_num_threads\0")?;
                let get_threads = *lib.get::<GetThreads>(b"openblas_get_num_threads\0")?;
                let text = |f: Option<GetName>| f.map(|f| std::ffi::CStr::from_ptr(f()).to_string_lossy().trim().to_string()).unwrap_or_default();
                let config = text(lib.get::<GetName>(b"openblas_get_config\0").ok().map(|s| *s));
                let core = text(lib.get::<GetName>(b"openblas_get_corename\0").ok().map(|s| *s));
                Ok((sgemm, sgemv, set_threads, get_threads, format!("{config} (kernels for {core})")))
            })()
        };
        if let Ok((sgemm, sgemv, set_threads, get_threads, description)) = found {
            return Some(OpenBlas { sgemm, sgemv, set_threads, get_threads, description, _lib: lib });
        }
    }
    None
}

fn openblas() -> Option<&'static OpenBlas> {
    static LIB: OnceLock<Option<OpenBlas>> = OnceLock::new();
    LIB.get_or_init(load_openblas).as_ref()
}

/// Which library computes the f32 CPU products ("OpenBLAS 0.3.21 ... (kernels for Zen)" or the
/// `gemm` crate), for benchmarks and `--version`-style reports.
pub fn backend() -> String {
    match openblas() {
        Some(o) => o.description.clone(),
        None => "the gemm crate (no OpenBLAS found: apt-get install libopenblas0 for about 2x faster CPU products)".into(),
    }
}

/// The product library's thread count (1 for the `gemm` crate, which is called per thread here).
pub(crate) fn threads() -> i32 {
    // SAFETY: OpenBLAS's thread-count getter takes no arguments.
    openblas().map_or(1, |o| unsafe { (o.get_threads)() })
}

pub(crate) fn set_threads(n: i32) {
    if let Some(o) = openblas() {
        // SAFETY: OpenBLAS's thread-count setter takes a plain integer.
        unsafe { (o.set_threads)(n) }
    }
}

/// Another library's `cblas_sgemm` (BLIS, say), loaded only to compare its kernels with
/// OpenBLAS's on one core (`bench blas`); the models' products always go through OpenBLAS or the
/// gemm crate.
pub struct ComparedSgemm {
    sgemm: Sgemm,
    /// The library as it was named.
    pub name: String,
    _lib: libloading::Library,
}

impl ComparedSgemm {
    /// Loads `name` (a path or a shared-library name); None when it does not load or has no
    /// `cblas_sgemm`. A BLIS built with threads is asked for one.
    pub fn load(name: &str) -> Option<Self> {
        // SAFETY: loading a BLAS runs its initialisers, which only set up its own state.
        let lib = unsafe { libloading::Library::new(name) }.ok()?;
        // SAFETY: `cblas_sgemm` has the CBLAS signature in every CBLAS; BLIS's thread setter takes
        // a plain integer.
        unsafe {
            let sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0").ok()?;
            if let Ok(set_threads) = lib.get::<SetThreads>(b"bli_thread_set_num_threads\0") {
                set_threads(1);
            }
            Some(Self { sgemm, name: name.to_string(), _lib: lib })
        }
    }
}

/// How many pieces the fused kernels split a product into (one per thread of rayon's pool).
pub fn product_pieces() -> usize {
    rayon::current_num_threads().max(1)
}

/// The library [`sgemm_one_core`] runs.
#[derive(Clone, Copy)]
pub enum OneCoreSgemm<'a> {
    OpenBlas,
    Other(&'a ComparedSgemm),
}

/// Row-major `c[m, n] = a[m, k] · b[n, k]^T` (a linear layer's product) on the calling thread
/// alone, as each core computes its piece of the models' products: for comparing libraries'
/// kernels at the models' shapes. False when OpenBLAS was asked for and is not loaded.
pub fn sgemm_one_core(library: OneCoreSgemm, m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> bool {
    assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= m * n, "sgemm_one_core: buffers smaller than [{m}, {k}] x [{n}, {k}] -> [{m}, {n}]");
    let sgemm = match library {
        OneCoreSgemm::OpenBlas => match openblas() {
            Some(o) => o.sgemm,
            None => return false,
        },
        OneCoreSgemm::Other(other) => other.sgemm,
    };
    let _single = crate::cpu::SingleThreadedBlas::new();
    // SAFETY: the sizes were checked above; row-major operands with their natural leading dims.
    unsafe { sgemm(ROW_MAJOR, NO_TRANS, TRANS, m as i32, n as i32, k as i32, 1.0, a.as_ptr(), k as i32, b.as_ptr(), k as i32, 0.0, c.as_mut_ptr(), n as i32) };
    true
}

/// How BLAS can read the last two dims of a layout: (transposed, leading dimension), plus the
/// stride between consecutive matrices of the (flattened) batch dims.
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
        unsafe { sgemm_raw(ta, tb, m, n, k, 1.0, xa.as_ptr().add(pa), lda, xb.as_ptr().add(pb), ldb, 0.0, out.as_mut_ptr().add(i * m * n), n, true) };
    }
    drop((sa, sb));
    let mut shape = ad[..ra - 2].to_vec();
    shape.extend([m, n]);
    Ok(Some(Tensor::from_vec(out, shape, a.device())?))
}

/// Row-major `C = alpha op(A) op(B) + beta C` with `op(A)` [m, k], `op(B)` [k, n] on raw buffers.
/// `parallel`: the product may use several threads (false inside the fused kernels, which split
/// the work over rayon themselves).
///
/// # Safety
/// Every element the leading dimensions address must lie inside the buffers.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_raw(ta: bool, tb: bool, m: usize, n: usize, k: usize, alpha: f32, a: *const f32, lda: usize, b: *const f32, ldb: usize, beta: f32, c: *mut f32, ldc: usize, parallel: bool) {
    if m == 0 || n == 0 {
        return;
    }
    match openblas() {
        Some(o) if m == 1 => {
            // One row (decoding a token): a matrix-vector product, which OpenBLAS's gemm does not
            // forward to gemv by itself. y = op(B)^T x, with x the row of A.
            let incx = if ta { lda } else { 1 };
            unsafe {
                if tb {
                    (o.sgemv)(ROW_MAJOR, NO_TRANS, n as i32, k as i32, alpha, b, ldb as i32, a, incx as i32, beta, c, 1)
                } else {
                    (o.sgemv)(ROW_MAJOR, TRANS, k as i32, n as i32, alpha, b, ldb as i32, a, incx as i32, beta, c, 1)
                }
            }
        }
        Some(o) => {
            let t = |x: bool| if x { TRANS } else { NO_TRANS };
            unsafe { (o.sgemm)(ROW_MAJOR, t(ta), t(tb), m as i32, n as i32, k as i32, alpha, a, lda as i32, b, ldb as i32, beta, c, ldc as i32) }
        }
        None => {
            // Element strides (row, column) of op(A), op(B) and C in row-major storage.
            let (a_rs, a_cs) = if ta { (1, lda as isize) } else { (lda as isize, 1) };
            let (b_rs, b_cs) = if tb { (1, ldb as isize) } else { (ldb as isize, 1) };
            let parallelism = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
            // gemm's convention: dst := alpha dst + beta lhs rhs.
            unsafe { gemm::gemm(m, n, k, c, 1, ldc as isize, beta != 0.0, a, a_cs, a_rs, b, b_cs, b_rs, beta, alpha, false, false, false, parallelism) }
        }
    }
}

/// `a.matmul(b)` for a [..., M, K] and b [..., K, N] (same batch dims, or b 2D), through BLAS
/// when both are f32 on the CPU.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
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

    /// The Zen 4 check reads CPUID as Linux's /proc/cpuinfo reports it: AMD, family 25, avx512f.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn zen4_is_recognised_as_proc_cpuinfo_describes_the_cpu() {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let field = |name: &str| info.lines().find(|l| l.split(':').next().is_some_and(|k| k.trim() == name)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()).unwrap_or_default();
        let zen4 = field("vendor_id") == "AuthenticAMD" && field("cpu family") == "25" && field("flags").split_whitespace().any(|f| f == "avx512f");
        assert_eq!(is_amd_zen4(), zen4, "vendor {}, family {}", field("vendor_id"), field("cpu family"));
    }

    /// The one-core product `bench blas` compares libraries with is a linear layer's `a · bᵀ`:
    /// through OpenBLAS, and through BLIS where the machine has it (a missing BLIS is skipped).
    #[test]
    fn one_core_products_are_a_times_b_transposed() {
        let (m, n, k) = (37, 21, 50);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 104_729) % 19) as f32 / 9.0 - 1.0).collect();
        let want: Vec<f32> = (0..m * n).map(|i| (0..k).map(|p| a[i / n * k + p] * b[i % n * k + p]).sum()).collect();
        let blis = ComparedSgemm::load("libblis.so.4");
        let mut libraries = vec![(OneCoreSgemm::OpenBlas, "OpenBLAS")];
        if let Some(lib) = &blis {
            libraries.push((OneCoreSgemm::Other(lib), "BLIS"));
        }
        for (library, name) in libraries {
            let mut c = vec![f32::NAN; m * n];
            if !sgemm_one_core(library, m, n, k, &a, &b, &mut c) {
                assert!(openblas().is_none(), "{name}: not run although loaded");
                continue;
            }
            let worst = c.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "{name}: {worst}");
        }
        assert!(ComparedSgemm::load("/nonexistent/libblas-that-is-not-there.so").is_none());
    }

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
