//! `multiversion!`: a function compiled three times, generic, with AVX2+FMA and with AVX-512,
//! picked at run time, so hot loops vectorise as wide as the CPU allows without requiring it.
//!
//! `SPATIAL_SIMD=generic|avx2|avx512` caps the level (benchmarks compare them in one run).

/// The widest instruction set the hot loops use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Generic,
    Avx2,
    Avx512,
}

impl SimdLevel {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Avx2 => "avx2+fma",
            Self::Avx512 => "avx512",
        }
    }
}

/// What this CPU supports, capped by `SPATIAL_SIMD`; decided once.
pub fn simd_level() -> SimdLevel {
    static LEVEL: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let detected = if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vl") && std::is_x86_feature_detected!("fma") {
            SimdLevel::Avx512
        } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            SimdLevel::Avx2
        } else {
            SimdLevel::Generic
        };
        #[cfg(not(target_arch = "x86_64"))]
        let detected = SimdLevel::Generic;
        let cap = match std::env::var("SPATIAL_SIMD").as_deref() {
            Ok("generic") => SimdLevel::Generic,
            Ok("avx2") => SimdLevel::Avx2,
            _ => SimdLevel::Avx512,
        };
        detected.min(cap)
    })
}

macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])* $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
                match $crate::multiversion::simd_level() {
                    // SAFETY: the CPU has the features the functions were compiled for.
                    $crate::multiversion::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::multiversion::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::multiversion::SimdLevel::Generic => {}
                }
            }
            generic($($arg),*)
        }
    };
}
