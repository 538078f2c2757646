//! Qwen2.5-VL in candle: the vision tower with its merger ([`vision`]) and the M-RoPE language
//! model ([`text`]), configured by [`config`]. Spatial-MLLM ([`crate::spatial_mllm`]) builds on it.

pub mod config;
pub mod text;
pub mod vision;

pub use config::{ConnectorConfig, Qwen25VlConfig, VisionConfig};
pub use text::{MropePositions, TextModel};
pub use vision::{GridThw, VisionTransformer};

/// Where the parts live in a checkpoint: transformers 4.51 wrote `visual.*` and `model.*`
/// (what Qwen2.5-VL-3B and Spatial-MLLM ship); 4.52+ writes `model.visual.*` and
/// `model.language_model.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    Released,
    Nested,
}

impl KeyLayout {
    pub fn detect<'a>(mut names: impl Iterator<Item = &'a str>) -> Self {
        if names.any(|n| n.starts_with("model.language_model.")) { KeyLayout::Nested } else { KeyLayout::Released }
    }
    pub fn visual(&self) -> &'static str {
        match self {
            KeyLayout::Released => "visual",
            KeyLayout::Nested => "model.visual",
        }
    }
    pub fn text(&self) -> &'static str {
        match self {
            KeyLayout::Released => "model",
            KeyLayout::Nested => "model.language_model",
        }
    }
}
