//! Peak device memory for benchmarks. On CUDA, candle allocates stream-ordered
//! (`cuMemAllocAsync`) from the device's default memory pool, whose high-water mark of bytes in
//! use (`CU_MEMPOOL_ATTR_USED_MEM_HIGH`) is the peak of the tensors alive at once, exactly, and
//! resettable between stages. cuBLAS workspaces and the context itself are outside the pool; the
//! whole device's use is [`used_bytes`].

use candle_core::Device;

/// Bytes in use at the high-water mark since the last [`reset_peak`] (or since the pool was
/// made); None on the CPU and Metal, or when the driver does not say.
pub fn peak_bytes(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return cuda::used_mem_high(d, None).ok();
    }
    let _ = device;
    None
}

/// Starts a new high-water mark (a no-op off CUDA).
pub fn reset_peak(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let _ = cuda::used_mem_high(d, Some(0));
    }
    let _ = device;
}

/// Bytes in use on the whole device (every process, the context and library workspaces
/// included): total minus free. None off CUDA.
pub fn used_bytes(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some((total - free) as u64);
    }
    let _ = device;
    None
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::sys;

    /// Reads the default pool's USED_MEM_HIGH, or sets it (only 0 is allowed: a reset).
    pub(super) fn used_mem_high(device: &candle_core::CudaDevice, set: Option<u64>) -> Result<u64, String> {
        let stream = device.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread().map_err(|e| e.to_string())?;
        // Pending frees count as in use until the stream reaches them.
        stream.synchronize().map_err(|e| e.to_string())?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: a valid device handle of the bound context; the out-pointer is a local.
        let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(format!("cuDeviceGetDefaultMemPool: {r:?}"));
        }
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        let mut value: u64 = set.unwrap_or(0);
        // SAFETY: the attribute's value is a cuuint64_t, read from or written to a local.
        let r = unsafe {
            match set {
                Some(_) => sys::cuMemPoolSetAttribute(pool, attr, &mut value as *mut u64 as *mut std::ffi::c_void),
                None => sys::cuMemPoolGetAttribute(pool, attr, &mut value as *mut u64 as *mut std::ffi::c_void),
            }
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(format!("cuMemPool attribute: {r:?}"));
        }
        Ok(value)
    }
}
