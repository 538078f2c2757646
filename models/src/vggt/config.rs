//! VGGT configuration: defaults are VGGT-1B; any field present in a checkpoint's `config.json`
//! overrides them, so checkpoints of other depths and widths load without code changes.

use serde::Deserialize;

/// The DINOv2 patch embedder (ViT with registers). Unset fields follow the aggregator.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PatchEmbedConfig {
    pub embed_dim: Option<usize>,
    pub depth: Option<usize>,
    pub num_heads: Option<usize>,
    pub mlp_ratio: Option<f64>,
    pub num_register_tokens: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CameraHeadConfig {
    pub trunk_depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub iterations: usize,
}

impl Default for CameraHeadConfig {
    fn default() -> Self {
        Self { trunk_depth: 4, num_heads: 16, mlp_ratio: 4.0, iterations: 4 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DptHeadConfig {
    pub features: usize,
    pub out_channels: [usize; 4],
    pub intermediate_layer_idx: [usize; 4],
}

impl Default for DptHeadConfig {
    fn default() -> Self {
        Self { features: 256, out_channels: [256, 512, 1024, 1024], intermediate_layer_idx: [4, 11, 17, 23] }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VggtConfig {
    /// Side of the square training resolution; the DINO position table is (img_size/patch)^2.
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    /// Number of frame/global block pairs.
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    /// Aggregator register tokens (besides the camera token).
    pub num_register_tokens: usize,
    pub rope_freq: f64,
    pub patch_embed: PatchEmbedConfig,
    pub camera_head: CameraHeadConfig,
    pub dpt_head: DptHeadConfig,
    pub enable_track: bool,
}

impl Default for VggtConfig {
    fn default() -> Self {
        Self {
            img_size: 518,
            patch_size: 14,
            embed_dim: 1024,
            depth: 24,
            num_heads: 16,
            mlp_ratio: 4.0,
            num_register_tokens: 4,
            rope_freq: 100.0,
            patch_embed: PatchEmbedConfig::default(),
            camera_head: CameraHeadConfig::default(),
            dpt_head: DptHeadConfig::default(),
            enable_track: true,
        }
    }
}

impl VggtConfig {
    /// VGGT-1B as released.
    pub fn vggt_1b() -> Self {
        Self::default()
    }

    /// Parses `config.json` text; unknown fields (e.g. the hub mixin's) are ignored.
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    pub fn dino_embed_dim(&self) -> usize {
        self.patch_embed.embed_dim.unwrap_or(self.embed_dim)
    }
    pub fn dino_depth(&self) -> usize {
        self.patch_embed.depth.unwrap_or(self.depth)
    }
    pub fn dino_num_heads(&self) -> usize {
        self.patch_embed.num_heads.unwrap_or(self.num_heads)
    }
    pub fn dino_mlp_ratio(&self) -> f64 {
        self.patch_embed.mlp_ratio.unwrap_or(self.mlp_ratio)
    }
    pub fn dino_registers(&self) -> usize {
        self.patch_embed.num_register_tokens.unwrap_or(4)
    }
    /// Tokens before the patches in each frame: the camera token and the registers.
    pub fn patch_start_idx(&self) -> usize {
        1 + self.num_register_tokens
    }
    /// Width of the aggregated tokens the heads read (frame ‖ global).
    pub fn head_dim_in(&self) -> usize {
        2 * self.embed_dim
    }
    /// Checks internal consistency, naming the offending fields.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.embed_dim % self.num_heads == 0, "embed_dim {} is not divisible by num_heads {}", self.embed_dim, self.num_heads);
        anyhow::ensure!((self.embed_dim / self.num_heads) % 4 == 0, "the 2D RoPE needs a head dimension divisible by 4, got {}", self.embed_dim / self.num_heads);
        anyhow::ensure!(self.dino_embed_dim() == self.embed_dim, "patch_embed.embed_dim {} differs from embed_dim {}", self.dino_embed_dim(), self.embed_dim);
        anyhow::ensure!(self.depth > 0, "depth must be at least 1");
        Ok(())
    }

    /// Checks the head settings (only needed when the heads are built).
    pub fn validate_heads(&self) -> anyhow::Result<()> {
        for &i in &self.dpt_head.intermediate_layer_idx {
            anyhow::ensure!(i < self.depth, "dpt_head.intermediate_layer_idx {i} is out of range for depth {}", self.depth);
        }
        anyhow::ensure!(self.dpt_head.features % 2 == 0, "dpt_head.features must be even");
        Ok(())
    }
}

impl VggtConfig {
    /// Fills in sizes that a checkpoint's tensor shapes determine (width, depth, heads via the
    /// q/k-norm width, registers, MLP ratio), for configs that do not spell them out, such as
    /// Spatial-MLLM's `spatial_config`. `shapes` maps names (without any prefix) to shapes.
    pub fn infer_from_shapes(&mut self, shapes: &std::collections::BTreeMap<String, Vec<usize>>) {
        let count = |prefix: &str| -> Option<usize> {
            let n = shapes
                .keys()
                .filter_map(|k| k.strip_prefix(prefix))
                .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
                .max()?;
            Some(n + 1)
        };
        if let Some(s) = shapes.get("aggregator.camera_token") {
            if let Some(&dim) = s.last() {
                self.embed_dim = dim;
            }
        }
        if let Some(d) = count("aggregator.frame_blocks.") {
            self.depth = d;
        }
        if let Some(s) = shapes.get("aggregator.frame_blocks.0.attn.q_norm.weight") {
            if s[0] > 0 && self.embed_dim % s[0] == 0 {
                self.num_heads = self.embed_dim / s[0];
            }
        }
        if let Some(s) = shapes.get("aggregator.frame_blocks.0.mlp.fc1.weight") {
            self.mlp_ratio = s[0] as f64 / self.embed_dim as f64;
        }
        if let Some(s) = shapes.get("aggregator.register_token") {
            self.num_register_tokens = s[2];
        }
        if let Some(d) = count("aggregator.patch_embed.blocks.") {
            self.patch_embed.depth = Some(d);
        }
        if let Some(s) = shapes.get("aggregator.patch_embed.register_tokens") {
            self.patch_embed.num_register_tokens = Some(s[1]);
        }
        if let Some(s) = shapes.get("aggregator.patch_embed.blocks.0.mlp.fc1.weight") {
            self.patch_embed.mlp_ratio = Some(s[0] as f64 / self.embed_dim as f64);
        }
        if self.patch_embed.num_heads.is_none() {
            self.patch_embed.num_heads = Some(self.num_heads);
        }
        if let Some(s) = shapes.get("aggregator.patch_embed.pos_embed") {
            let grid = ((s[1] - 1) as f64).sqrt().round() as usize;
            self.img_size = grid * self.patch_size;
        }
    }
}
