//! Candle ports of the models behind the spatial viewer, with their pre- and post-processing.
//!
//! * [`vggt`]: VGGT (aggregator, camera head, DPT depth and point heads), at parity with
//!   facebookresearch/vggt.
//! * [`sampling`]: space-aware frame sampling (greedy maximum voxel coverage), at parity with
//!   Spatial-MLLM.
//! * [`qwen2_5_vl`]: Qwen2.5-VL (vision tower with window attention, M-RoPE language model).
//! * [`spatial_mllm`]: Spatial-MLLM (Qwen2.5-VL + VGGT aggregator + MLP-add connector), its
//!   processor, prompt, tokenizer and generation.
//! * [`checkpoint`]: reading and checking released checkpoints without loading tensor data.

#[macro_use]
pub mod multiversion;
pub mod blas;
pub mod checkpoint;
/// The CPU's fused f32 kernels; public for the benchmarks that compare their settings.
pub mod cpu;
mod cpu_attention;
/// Opt-in bf16 products (AVX512-BF16 where the CPU has it).
pub mod cpu_bf16;
pub mod cpu_packed;
pub mod cpu_peak;
mod cpu_winograd;
/// Fused attention on CUDA (a kernel of this crate's, `attention.cu`).
pub mod cuda_attention;
pub mod gpu_memory;
pub mod interp;
pub mod nn;
pub mod qwen2_5_vl;
pub mod reconstruction;
pub mod resample;
pub mod sampling;
pub mod spatial_mllm;
pub mod vggt;

pub use candle_core::{DType, Device, Tensor};

/// Parses a user-facing dtype name (`f32`, `bf16`, `f16`).
pub fn parse_dtype(name: &str) -> anyhow::Result<DType> {
    match name {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => anyhow::bail!("unknown dtype '{other}': expected f32, bf16 or f16"),
    }
}

/// Opens a compute device by name (`cpu`, `cuda`, `metal`), with a clear message when this build
/// lacks the feature.
pub fn open_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!("--device cuda: this build has no CUDA support (rebuild with `--features cuda`)");
            }
            // TF32 tensor cores for f32 products only when asked: upstream's PyTorch keeps f32
            // matmuls exact by default, and the parity tests hold f32 to 1e-3 of it.
            if std::env::var("SPATIAL_CUDA_TF32").is_ok_and(|v| v == "1") {
                candle_core::cuda::set_gemm_reduced_precision_f32(true);
            }
            Ok(Device::new_cuda(0)?)
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                anyhow::bail!("--device metal: this build has no Metal support (rebuild with `--features metal`)");
            }
            Ok(Device::new_metal(0)?)
        }
        other => anyhow::bail!("unknown device '{other}': expected cpu, cuda or metal"),
    }
}

/// Keeps freed model intermediates in the process heap instead of returning them to the kernel
/// while a model runs. glibc's defaults unmap every block over ~32 MiB when it is freed (over
/// 64 MiB on threads other than the main one, which get heaps of their own) and trim the heap
/// eagerly, so each layer's fresh buffers were page-faulted and zeroed again, 4 KiB at a time:
/// about a fifth of a VGGT run, and the vision tower at 16 frames (its [12,512, 3,840] q/k/v
/// products are 192 MB) faulted 88 GB in 24M faults, 173 s against 129 s without them (AMD EPYC
/// Zen 3). So: no mmap for allocations, one heap for every thread (the models run on worker
/// threads), and a high trim threshold; [`release_freed_memory`] hands the heap's free pages
/// back when a piece of work ends. Call once at start-up, before threads start; a no-op outside
/// glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: plain glibc tuning calls with valid parameters, made before any threads start.
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_ARENA_MAX, 1);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

/// Returns the heap's free pages to the kernel (glibc's `malloc_trim`): the memory a finished
/// reconstruction or answer freed stops counting against the machine while the app waits. A
/// no-op outside glibc.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases free pages of the allocator's own heaps.
        unsafe {
            malloc_trim(0);
        }
    }
}
