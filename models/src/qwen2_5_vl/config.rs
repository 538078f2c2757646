//! Qwen2.5-VL's `config.json`, as released (transformers 4.51: text fields at the top level,
//! `vision_config`, `rope_scaling.mrope_section`) and as newer transformers write it (text fields
//! under `text_config`). Defaults are Qwen2.5-VL-3B-Instruct's.

use serde::Deserialize;

fn d_hidden() -> usize { 2048 }
fn d_intermediate() -> usize { 11008 }
fn d_layers() -> usize { 36 }
fn d_heads() -> usize { 16 }
fn d_kv_heads() -> usize { 2 }
fn d_eps() -> f64 { 1e-6 }
fn d_theta() -> f64 { 1e6 }
fn d_vocab() -> usize { 151936 }
fn d_true() -> bool { true }
fn d_max_pos() -> usize { 128000 }
fn d_video_token() -> u32 { 151656 }
fn d_image_token() -> u32 { 151655 }
fn d_vision_start() -> u32 { 151652 }
fn d_vision_end() -> u32 { 151653 }
fn d_eos() -> u32 { 151645 }
fn d_bos() -> u32 { 151643 }

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(default)]
    pub mrope_section: Vec<usize>,
}

impl Default for RopeScaling {
    fn default() -> Self {
        Self { mrope_section: vec![16, 24, 24] }
    }
}

fn d_v_depth() -> usize { 32 }
fn d_v_hidden() -> usize { 1280 }
fn d_v_intermediate() -> usize { 3420 }
fn d_v_heads() -> usize { 16 }
fn d_v_in_chans() -> usize { 3 }
fn d_v_out_hidden() -> usize { 2048 }
fn d_v_patch() -> usize { 14 }
fn d_v_merge() -> usize { 2 }
fn d_v_temporal() -> usize { 2 }
fn d_v_window() -> usize { 112 }
fn d_v_fullatt() -> Vec<usize> { vec![7, 15, 23, 31] }
fn d_v_tps() -> f64 { 2.0 }

/// The vision tower (`vision_config`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct VisionConfig {
    #[serde(default = "d_v_depth")]
    pub depth: usize,
    #[serde(default = "d_v_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_v_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_v_heads")]
    pub num_heads: usize,
    #[serde(default = "d_v_in_chans")]
    pub in_chans: usize,
    #[serde(default = "d_v_out_hidden")]
    pub out_hidden_size: usize,
    #[serde(default = "d_v_patch")]
    pub patch_size: usize,
    #[serde(default = "d_v_merge")]
    pub spatial_merge_size: usize,
    #[serde(default = "d_v_temporal")]
    pub temporal_patch_size: usize,
    #[serde(default = "d_v_window")]
    pub window_size: usize,
    #[serde(default = "d_v_fullatt")]
    pub fullatt_block_indexes: Vec<usize>,
    #[serde(default = "d_v_tps")]
    pub tokens_per_second: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// Values per flattened patch: channels x temporal x patch x patch (1176 for the 3B).
    pub fn patch_dim(&self) -> usize {
        self.in_chans * self.temporal_patch_size * self.patch_size * self.patch_size
    }
    /// Pixels per side of one merged token (28 for the 3B): frame sides must be multiples of it.
    pub fn merge_pixels(&self) -> usize {
        self.patch_size * self.spatial_merge_size
    }
}

/// The connector settings of a Spatial-MLLM checkpoint (`connector_config`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ConnectorConfig {
    #[serde(default = "d_connector_type")]
    pub connector_type: String,
    #[serde(default = "d_layer_idx")]
    pub spatial_embeds_layer_idx: i64,
}

fn d_connector_type() -> String { "mlp_add".into() }
fn d_layer_idx() -> i64 { -1 }

/// The whole `config.json` of Qwen2.5-VL or Spatial-MLLM.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Qwen25VlConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_kv_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: RopeScaling,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_video_token")]
    pub video_token_id: u32,
    #[serde(default = "d_image_token")]
    pub image_token_id: u32,
    #[serde(default = "d_vision_start")]
    pub vision_start_token_id: u32,
    #[serde(default = "d_vision_end")]
    pub vision_end_token_id: u32,
    #[serde(default = "d_eos")]
    pub eos_token_id: u32,
    #[serde(default = "d_bos")]
    pub bos_token_id: u32,
    #[serde(default)]
    pub vision_config: VisionConfig,
    /// Spatial-MLLM only: the VGGT spatial encoder (sizes beyond these come from the tensors).
    #[serde(default)]
    pub spatial_config: Option<serde_json::Value>,
    #[serde(default)]
    pub connector_config: Option<ConnectorConfig>,
}

impl Default for Qwen25VlConfig {
    fn default() -> Self {
        Self::from_value(serde_json::json!({})).expect("defaults")
    }
}

impl Qwen25VlConfig {
    /// Qwen2.5-VL-3B-Instruct.
    pub fn qwen2_5_vl_3b() -> Self {
        Self::default()
    }

    /// Reads a parsed config; fields under `text_config` (newer transformers) override the top level.
    pub fn from_value(mut json: serde_json::Value) -> serde_json::Result<Self> {
        if let Some(text) = json.get("text_config").cloned().and_then(|t| t.as_object().cloned()) {
            if let Some(obj) = json.as_object_mut() {
                for (k, v) in text {
                    if k != "model_type" {
                        obj.insert(k, v);
                    }
                }
            }
        }
        serde_json::from_value(json)
    }

    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        Self::from_value(serde_json::from_str(text)?)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the sizes fit together, with a message naming the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.num_attention_heads > 0 && self.hidden_size % self.num_attention_heads == 0, "hidden_size {} is not divisible by num_attention_heads {}", self.hidden_size, self.num_attention_heads);
        anyhow::ensure!(self.num_key_value_heads > 0 && self.num_attention_heads % self.num_key_value_heads == 0, "num_attention_heads {} is not a multiple of num_key_value_heads {}", self.num_attention_heads, self.num_key_value_heads);
        let half = self.head_dim() / 2;
        let sections: usize = self.rope_scaling.mrope_section.iter().sum();
        anyhow::ensure!(self.rope_scaling.mrope_section.len() == 3 && sections == half, "rope_scaling.mrope_section {:?} must have 3 entries summing to head_dim/2 = {half}", self.rope_scaling.mrope_section);
        let v = &self.vision_config;
        anyhow::ensure!(v.num_heads > 0 && v.hidden_size % v.num_heads == 0 && v.head_dim() % 4 == 0, "vision_config: hidden_size {} / num_heads {} must give a head size divisible by 4", v.hidden_size, v.num_heads);
        anyhow::ensure!(v.window_size % v.merge_pixels() == 0 && v.window_size > 0, "vision_config.window_size {} must be a multiple of patch_size x spatial_merge_size = {}", v.window_size, v.merge_pixels());
        for &i in &v.fullatt_block_indexes {
            anyhow::ensure!(i < v.depth, "vision_config.fullatt_block_indexes has {i}, beyond depth {}", v.depth);
        }
        if let Some(c) = &self.connector_config {
            anyhow::ensure!(c.connector_type == "mlp_add", "connector_config.connector_type '{}' is not supported (only mlp_add, what Spatial-MLLM v1.1 ships)", c.connector_type);
        }
        Ok(())
    }
}
