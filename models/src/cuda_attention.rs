//! Fused attention on CUDA: `softmax(q k^T * scale) v` in one kernel (`attention.cu`, compiled to
//! PTX by build.rs), so the scores never reach GPU memory. It replaces the chunked
//! matmul-softmax-matmul path for bf16/f16 tensors with a compiled head size: VGGT's frame and
//! global attention (64), the Qwen2.5-VL vision tower's windows (80) and the language model's causal
//! attention with grouped-query heads (128). f32 keeps the exact chunked path (the parity tests'
//! 1e-3 against upstream); `SPATIAL_CUDA_ATTENTION=unfused` turns the kernel off, to compare.
//!
//! Why a kernel of our own rather than `candle-flash-attn`: that crate builds FlashAttention-2 with
//! CUTLASS (fetched with git at build time, out of reach on the GPU machines' build hosts) and
//! takes hours of nvcc on 2 cores; this kernel compiles in seconds, covers head size 80 and the
//! causal offset the language model needs, and its logic is tested on every machine under a CPU
//! warp emulator (tests/cuda_attention_emulated.rs).

use candle_core::{Result, Tensor};

/// Head sizes `attention.cu` instantiates (`attention_{bf16,f16}_d{N}`).
/// (16: the tiny fixtures' heads, so the CUDA parity tests in bf16/f16 run this kernel.)
pub const HEAD_SIZES: [usize; 6] = [16, 32, 64, 80, 96, 128];
/// Queries per block (4 warps of 16 rows), keys per shared-memory tile and the shared memory's row
/// paddings: the kernel's `WARPS`, `KEY_TILE`, `KV_PAD` and `SCORE_STRIDE`, kept in sync by a test.
pub const WARPS: usize = 4;
pub const BLOCK_QUERIES: usize = WARPS * 16;
pub const KEY_TILE: usize = 64;
pub const KV_PAD: usize = 8;
pub const SCORE_STRIDE: usize = KEY_TILE + 4;

/// Dynamic shared memory for head size `d`: the key and value tiles (halves) and each warp's
/// scores (f32), as the kernel's `shared_bytes`.
pub fn shared_bytes(head_size: usize) -> usize {
    2 * KEY_TILE * (head_size + KV_PAD) * 2 + WARPS * 16 * SCORE_STRIDE * 4
}

/// Fused attention where it applies (a CUDA build, CUDA tensors in bf16/f16 with a compiled head
/// size); None for the callers' other paths. q [B, H, Tq, d]; k, v [B, KVH, Tk, d] with H a
/// multiple of KVH. `causal_offset`: Some(o) when query i sits at position o + i and sees keys
/// 0..=o + i (o + Tq <= Tk); None when every query sees every key. Returns [B, H, Tq, d].
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal_offset: Option<usize>) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        cuda::fused_attention(q, k, v, scale, causal_offset)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (q, k, v, scale, causal_offset);
        Ok(None)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp3, DType, Layout, Shape};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
    const MODULE: &str = "spatial_attention";

    /// Whether `SPATIAL_CUDA_ATTENTION=unfused` asks for the chunked path instead.
    fn disabled() -> bool {
        static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DISABLED.get_or_init(|| std::env::var("SPATIAL_CUDA_ATTENTION").is_ok_and(|v| v == "unfused"))
    }

    /// The kernel's entry point for an element type and head size (`attention.cu`'s names).
    fn kernel_name(dtype: DType, head_size: usize) -> String {
        format!("attention_{}_d{head_size}", if dtype == DType::BF16 { "bf16" } else { "f16" })
    }

    pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal_offset: Option<usize>) -> Result<Option<Tensor>> {
        let dtype = q.dtype();
        if disabled() || !q.device().is_cuda() || !matches!(dtype, DType::BF16 | DType::F16) || k.dtype() != dtype || v.dtype() != dtype {
            return Ok(None);
        }
        let (b, h, t_q, d) = q.dims4()?;
        let (_, kvh, t_k, _) = k.dims4()?;
        let fits_grid = b <= 65_535 && h <= 65_535 && t_q.div_ceil(BLOCK_QUERIES) < i32::MAX as usize && t_k < i32::MAX as usize;
        if !HEAD_SIZES.contains(&d) || kvh == 0 || h % kvh != 0 || !fits_grid || t_k == 0 {
            return Ok(None);
        }
        if causal_offset.is_some_and(|o| o + t_q > t_k) {
            return Ok(None);
        }
        // A GPU the PTX cannot run on (bf16 tensor cores need compute capability 8.0): say so
        // once and use the chunked path. (The module is loaded once per device and kept.)
        if let Err(e) = q.device().as_cuda_device()?.get_or_load_custom_func(&kernel_name(dtype, d), MODULE, PTX) {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| eprintln!("fused CUDA attention unavailable, using the chunked path: {e}"));
            return Ok(None);
        }
        let op = FusedAttention { scale: scale as f32, causal_offset };
        Ok(Some(q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?))
    }

    struct FusedAttention {
        scale: f32,
        causal_offset: Option<usize>,
    }

    impl FusedAttention {
        fn launch<T: DeviceRepr>(
            &self,
            dtype: DType,
            (q, lq): (&CudaSlice<T>, &Layout),
            (k, lk): (&CudaSlice<T>, &Layout),
            (v, lv): (&CudaSlice<T>, &Layout),
            dev: &CudaDevice,
        ) -> Result<CudaSlice<T>> {
            fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, name: &str) -> Result<CudaView<'a, T>> {
                match l.contiguous_offsets() {
                    Some((start, end)) => Ok(s.slice(start..end)),
                    None => candle_core::bail!("fused attention: {name} is not contiguous"),
                }
            }
            let (q_view, k_view, v_view) = (view(q, lq, "q")?, view(k, lk, "k")?, view(v, lv, "v")?);
            let (b, h, t_q, d) = lq.shape().dims4()?;
            let (_, kvh, t_k, _) = lk.shape().dims4()?;
            let func = dev.get_or_load_custom_func(&kernel_name(dtype, d), MODULE, PTX)?;
            let shared = shared_bytes(d) as u32;
            // Over the default 48 KiB (head size 128 takes 51 KiB): opt in, as every kernel must.
            func.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared as i32).w()?;
            // SAFETY: every element is written by the kernel before it is read.
            let out = unsafe { dev.alloc::<T>(b * h * t_q * d)? };
            let cfg = LaunchConfig {
                grid_dim: (t_q.div_ceil(BLOCK_QUERIES) as u32, h as u32, b as u32),
                block_dim: ((WARPS * 32) as u32, 1, 1),
                shared_mem_bytes: shared,
            };
            let scale_log2 = self.scale * std::f32::consts::LOG2_E;
            let (causal, offset) = match self.causal_offset {
                Some(o) => (1i32, o as i32),
                None => (0i32, 0i32),
            };
            let (h, kvh, t_q, t_k) = (h as i32, kvh as i32, t_q as i32, t_k as i32);
            let mut builder = func.builder();
            builder.arg(&q_view).arg(&k_view).arg(&v_view).arg(&out);
            builder.arg(&h).arg(&kvh).arg(&t_q).arg(&t_k).arg(&scale_log2).arg(&causal).arg(&offset);
            // SAFETY: the argument list matches the kernel's signature; the views cover the shapes.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(out)
        }
    }

    impl CustomOp3 for FusedAttention {
        fn name(&self) -> &'static str {
            "fused-attention"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("the fused attention kernel is CUDA-only")
        }

        fn cuda_fwd(&self, q: &CudaStorage, lq: &Layout, k: &CudaStorage, lk: &Layout, v: &CudaStorage, lv: &Layout) -> Result<(CudaStorage, Shape)> {
            let dev = q.device();
            let slice = match (&q.slice, &k.slice, &v.slice) {
                (CudaStorageSlice::BF16(qs), CudaStorageSlice::BF16(ks), CudaStorageSlice::BF16(vs)) => {
                    CudaStorageSlice::BF16(self.launch(DType::BF16, (qs, lq), (ks, lk), (vs, lv), dev)?)
                }
                (CudaStorageSlice::F16(qs), CudaStorageSlice::F16(ks), CudaStorageSlice::F16(vs)) => {
                    CudaStorageSlice::F16(self.launch(DType::F16, (qs, lq), (ks, lk), (vs, lv), dev)?)
                }
                _ => candle_core::bail!("fused attention takes q, k and v all in bf16 or all in f16"),
            };
            Ok((CudaStorage { slice, device: dev.clone() }, lq.shape().clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's launch constants are the kernel's (attention.cu), and every head size it
    /// launches is instantiated there for both element types.
    #[test]
    fn launch_constants_match_the_kernel_source() {
        let source = include_str!("attention.cu");
        let constant = |name: &str| -> String {
            let line = source.lines().find(|l| l.trim_start().starts_with(&format!("constexpr int {name} ="))).unwrap_or_else(|| panic!("attention.cu has no {name}"));
            line.split('=').nth(1).unwrap().split(';').next().unwrap().trim().to_string()
        };
        assert_eq!(constant("WARPS"), WARPS.to_string());
        assert_eq!(constant("ROWS"), (BLOCK_QUERIES / WARPS).to_string());
        assert_eq!(constant("KEY_TILE"), KEY_TILE.to_string());
        assert_eq!(constant("KV_PAD"), KV_PAD.to_string());
        assert_eq!(constant("SCORE_STRIDE"), format!("KEY_TILE + {}", SCORE_STRIDE - KEY_TILE));
        assert!(source.contains("return 2 * KEY_TILE * (d + KV_PAD) * 2 + WARPS * ROWS * SCORE_STRIDE * 4;"), "shared_bytes changed in attention.cu");
        for d in HEAD_SIZES {
            assert!(source.contains(&format!("SPATIAL_ATTENTION_KERNEL(attention_##SUFFIX##_d{d}, T, {d})")), "attention.cu lacks head size {d}");
        }
        // Every shared-memory size fits an H100's per-block limit (227 KiB).
        assert!(HEAD_SIZES.iter().all(|&d| shared_bytes(d) <= 227 * 1024));
    }
}
