//! Where a model runs and in which precision: `--device auto|cpu|cuda[:N]|metal[:N]` and
//! `--dtype auto|f32|bf16|bf16-products|f16`, the same words on every command and in the GUI. Asking for a device
//! this build or machine cannot give never stops the app: it runs on the CPU and says why.

use anyhow::{Result, bail};
use candle_core::{DType, Device};

/// The device a user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The first of CUDA, Metal and the CPU that this build supports and that initialises.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl std::str::FromStr for DeviceRequest {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, ordinal) = match s.split_once(':') {
            Some((n, o)) => (n, Some(o.parse::<usize>().map_err(|_| anyhow::anyhow!("--device {s}: the part after ':' is a GPU number (cuda:0, cuda:1, ...)"))?)),
            None => (s, None),
        };
        Ok(match (name, ordinal) {
            ("auto", None) => Self::Auto,
            ("cpu", None) => Self::Cpu,
            ("cuda", o) => Self::Cuda(o.unwrap_or(0)),
            ("metal", o) => Self::Metal(o.unwrap_or(0)),
            _ => bail!("--device {s}: expected auto, cpu, cuda, cuda:N or metal"),
        })
    }
}

impl std::fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

/// The precision a user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeRequest {
    /// On the CPU f32, except that a Spatial-MLLM checkpoint stored in bf16/f16 keeps that
    /// precision in memory with f32 activations ([`Compute::for_stored_weights`]); bf16 on a
    /// GPU (the released checkpoints as they are).
    #[default]
    Auto,
    Exact(DType),
    /// bf16 weights whose products also round the activations to bf16 (f32 sums), as a GPU
    /// computes them: about 1.7x the products' speed on CPUs with AVX512-BF16 (see
    /// [`spatial_models::cpu_bf16`]); on a GPU the same as bf16.
    Bf16Products,
}

impl std::str::FromStr for DTypeRequest {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::Exact(DType::F32)),
            "bf16" | "bfloat16" => Ok(Self::Exact(DType::BF16)),
            "f16" | "float16" => Ok(Self::Exact(DType::F16)),
            "bf16-products" => Ok(Self::Bf16Products),
            other => bail!("--dtype {other}: expected auto, f32, bf16, bf16-products or f16"),
        }
    }
}

impl std::fmt::Display for DTypeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Exact(d) => f.write_str(dtype_name(*d)),
            Self::Bf16Products => f.write_str("bf16-products"),
        }
    }
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "other",
    }
}

/// A device and dtype to run on, with what was asked for and why it differs.
#[derive(Debug, Clone)]
pub struct Compute {
    pub device: Device,
    pub dtype: DType,
    /// "cpu", "cuda:0", "metal:0".
    pub device_name: String,
    /// Why the request could not be met (the app then runs on the CPU), for the status bar and
    /// stderr.
    pub fallback: Option<String>,
    /// The dtype was `auto` (so a checkpoint's own precision may be kept, see
    /// [`Compute::for_stored_weights`]).
    pub dtype_auto: bool,
    /// bf16 weights multiply bf16-rounded activations ([`DTypeRequest::Bf16Products`]).
    pub bf16_products: bool,
}

impl Compute {
    /// "cuda:0 bf16"; on the CPU half-precision weights compute in f32: "cpu bf16 weights, f32".
    pub fn label(&self) -> String {
        if self.device.is_cpu() && self.bf16_products {
            let speed = if spatial_models::cpu_bf16::has_bf16_dot_product() { "" } else { " (at f32 speed: this CPU has no AVX512-BF16)" };
            return format!("{} bf16 weights, bf16 products{speed}", self.device_name);
        }
        if self.device.is_cpu() && self.dtype != DType::F32 {
            return format!("{} {} weights, f32", self.device_name, dtype_name(self.dtype));
        }
        format!("{} {}", self.device_name, dtype_name(self.dtype))
    }

    /// The compute for a checkpoint stored in `stored`: with `auto` on the CPU, weights stored
    /// in bf16 or f16 (the released Spatial-MLLM is bf16) stay so in memory and are widened as
    /// the products read them, with f32 activations: the f32 results (widening is exact) at half
    /// the memory, and faster decoding, which reads every weight per token. Qwen2.5-VL-3B then
    /// takes 10 GB instead of 19 GB, so it fits beside VGGT-1B on a 23 GB machine.
    pub fn for_stored_weights(&self, stored: Option<DType>) -> Compute {
        match stored {
            Some(d @ (DType::BF16 | DType::F16)) if self.dtype_auto && self.device.is_cpu() => Compute { dtype: d, ..self.clone() },
            _ => self.clone(),
        }
    }
}

fn open(request: DeviceRequest) -> Result<(Device, String)> {
    match request {
        DeviceRequest::Auto => unreachable!("auto is resolved by trying each kind"),
        DeviceRequest::Cpu => Ok((Device::Cpu, "cpu".into())),
        DeviceRequest::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                bail!("this build has no CUDA support (build with `cargo build --release --features cuda`, see the README)");
            }
            let d = Device::new_cuda(n).map_err(|e| anyhow::anyhow!("no usable CUDA GPU {n} on this machine ({e})"))?;
            Ok((d, format!("cuda:{n}")))
        }
        DeviceRequest::Metal(n) => {
            if !candle_core::utils::metal_is_available() {
                bail!("this build has no Metal support (build on macOS with `cargo build --release --features metal`)");
            }
            let d = Device::new_metal(n).map_err(|e| anyhow::anyhow!("no usable Metal GPU {n} ({e})"))?;
            Ok((d, format!("metal:{n}")))
        }
    }
}

/// Resolves a request. Never fails: what cannot be had falls back to the CPU with the reason in
/// `fallback`. Sets whether this process's bf16 products round their activations (one precision
/// for every model the app runs).
pub fn resolve(device: DeviceRequest, dtype: DTypeRequest) -> Compute {
    let (device, device_name, fallback) = match device {
        DeviceRequest::Auto => {
            let gpu = [DeviceRequest::Cuda(0), DeviceRequest::Metal(0)].into_iter().find_map(|r| open(r).ok());
            match gpu {
                Some((d, name)) => (d, name, None),
                None => (Device::Cpu, "cpu".to_string(), None),
            }
        }
        request => match open(request) {
            Ok((d, name)) => (d, name, None),
            Err(e) => (Device::Cpu, "cpu".to_string(), Some(format!("--device {request}: {e:#}; running on the CPU"))),
        },
    };
    let resolved = match dtype {
        DTypeRequest::Auto if device.is_cpu() => DType::F32,
        DTypeRequest::Auto => DType::BF16,
        DTypeRequest::Exact(d) => d,
        DTypeRequest::Bf16Products => DType::BF16,
    };
    let bf16_products = dtype == DTypeRequest::Bf16Products;
    spatial_models::cpu_bf16::set_bf16_products(bf16_products);
    Compute { device, dtype: resolved, device_name, fallback, dtype_auto: dtype == DTypeRequest::Auto, bf16_products }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_words_parse_and_print_back() {
        for word in ["auto", "cpu", "cuda:0", "cuda:3", "metal:0"] {
            assert_eq!(word.parse::<DeviceRequest>().unwrap().to_string(), word);
        }
        assert_eq!("cuda".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cuda(0));
        assert!("gpu".parse::<DeviceRequest>().is_err());
        assert!("cuda:x".parse::<DeviceRequest>().unwrap_err().to_string().contains("GPU number"));
        assert_eq!("bf16".parse::<DTypeRequest>().unwrap(), DTypeRequest::Exact(DType::BF16));
        for word in ["auto", "f32", "bf16", "bf16-products", "f16"] {
            assert_eq!(word.parse::<DTypeRequest>().unwrap().to_string(), word);
        }
        assert!("int8".parse::<DTypeRequest>().is_err());
    }

    #[test]
    fn the_cpu_is_f32_by_default_and_a_missing_gpu_falls_back_with_a_reason() {
        let cpu = resolve(DeviceRequest::Cpu, DTypeRequest::Auto);
        assert_eq!(cpu.label(), "cpu f32");
        assert!(cpu.fallback.is_none());
        // A bf16 checkpoint keeps its precision under auto on the CPU (f32 activations), not
        // when f32 was asked for, and an f32 checkpoint stays f32.
        let kept = cpu.for_stored_weights(Some(DType::BF16));
        assert_eq!((kept.dtype, kept.label().as_str()), (DType::BF16, "cpu bf16 weights, f32"));
        assert_eq!(cpu.for_stored_weights(Some(DType::F32)).dtype, DType::F32);
        assert_eq!(resolve(DeviceRequest::Cpu, DTypeRequest::Exact(DType::F32)).for_stored_weights(Some(DType::BF16)).dtype, DType::F32);
        if !candle_core::utils::cuda_is_available() {
            let c = resolve(DeviceRequest::Cuda(0), DTypeRequest::Auto);
            assert!(c.device.is_cpu());
            assert_eq!(c.label(), "cpu f32");
            let why = c.fallback.unwrap();
            assert!(why.contains("no CUDA support") && why.contains("--features cuda"), "{why}");
        }
    }
}
