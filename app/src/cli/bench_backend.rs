//! Weights for benchmarks: every tensor filled with a small constant. Unlike zero-initialised
//! (lazily mapped) memory, these pages are really resident, so peak memory includes the weights.

use candle_core::{DType, Device, Shape, Tensor};

#[derive(Clone, Copy)]
pub struct ConstantWeights(pub f64);

impl candle_nn::var_builder::SimpleBackend for ConstantWeights {
    fn get(&self, s: Shape, _name: &str, _h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        // Made in the asked dtype: an f32 tensor converted would leave its pages in the heap.
        match dtype {
            DType::F32 => Tensor::full(self.0 as f32, s, dev),
            DType::BF16 => Tensor::full(half::bf16::from_f64(self.0), s, dev),
            DType::F16 => Tensor::full(half::f16::from_f64(self.0), s, dev),
            DType::F64 => Tensor::full(self.0, s, dev),
            _ => Tensor::full(self.0 as f32, s, dev)?.to_dtype(dtype),
        }
    }
    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("benchmark weights: {name} requested without a shape")
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}
