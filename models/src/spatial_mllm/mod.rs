//! Spatial-MLLM (v1.1) in candle: Qwen2.5-VL plus the VGGT aggregator as a spatial encoder and
//! the MLP-add connector. The same type runs plain Qwen2.5-VL (a checkpoint without the spatial
//! branch, or `use_spatial = false`).
//!
//! Data flow for a video (upstream `SpatialMLLMForConditionalGeneration.forward`):
//! frames -> [`processor`] -> Qwen vision tower -> `video_embeds` [N, hidden];
//! the same frames / 255 -> VGGT aggregator, last layer -> [`connector::merge_spatial_tokens`]
//! -> connector -> added to `video_embeds`; the result replaces the `<|video_pad|>` embeddings.

pub mod connector;
pub mod processor;
pub mod tokenizer;

use crate::checkpoint::{CheckpointDir, ModelKind, RecordingBackend, detect_kind};
use crate::qwen2_5_vl::{GridThw, KeyLayout, MropePositions, Qwen25VlConfig, TextModel, VisionTransformer};
use crate::vggt::aggregator::Aggregator;
use crate::vggt::preprocess::RgbFrame;
use crate::vggt::VggtConfig;
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use connector::{Connector, merge_spatial_tokens};
use processor::PixelLimits;
use std::collections::BTreeMap;
use std::time::Instant;
pub use tokenizer::{QwenTokenizer, TextStream};

/// Prefix of the VGGT weights inside a Spatial-MLLM checkpoint.
pub const SPATIAL_PREFIX: &str = "spatial_encoder.vggt_model";

/// The spatial branch: VGGT's aggregator and the connector.
#[derive(Debug, Clone)]
pub struct SpatialBranch {
    pub aggregator: Aggregator,
    pub vggt_config: VggtConfig,
    pub connector: Connector,
    /// The aggregator layer the connector reads.
    pub layer: usize,
}

/// Spatial-MLLM, or plain Qwen2.5-VL when `spatial` is None.
pub struct SpatialMllm {
    pub config: Qwen25VlConfig,
    pub visual: VisionTransformer,
    pub text: TextModel,
    pub spatial: Option<SpatialBranch>,
    pub device: Device,
}

/// Frames ready for both encoders.
#[derive(Debug, Clone)]
pub struct PreparedVideo {
    /// Resized (multiples of 28) and padded to an even count.
    pub frames: Vec<RgbFrame>,
    pub grid: GridThw,
    pub pixel_values: Tensor,
    /// What the frames were resized from, for reports.
    pub source_size: (usize, usize),
}

/// The vision side of one video, as the LLM receives it.
#[derive(Debug, Clone)]
pub struct VideoEncoding {
    /// Qwen vision tower + merger, [N, hidden].
    pub video_embeds: Tensor,
    /// Merged VGGT tokens [N, 16 C] (spatial branch only).
    pub connector_input: Option<Tensor>,
    /// `video_embeds + connector(...)` (spatial branch only).
    pub fused_embeds: Option<Tensor>,
}

impl VideoEncoding {
    /// What goes into the `<|video_pad|>` slots.
    pub fn tokens(&self) -> &Tensor {
        self.fused_embeds.as_ref().unwrap_or(&self.video_embeds)
    }
}

/// Sampling settings; temperature 0 is greedy (upstream's temperature 0.1 / top-p 0.001 is
/// greedy in effect).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
}

impl GenerationParams {
    /// A clear error for settings no sampler can use (NaN or negative temperature, top-p outside (0, 1]).
    pub fn check(&self) -> Result<()> {
        ensure!(self.temperature.is_finite() && self.temperature >= 0.0, "temperature {}: expected 0 (greedy) or more", self.temperature);
        ensure!(self.top_p > 0.0 && self.top_p <= 1.0, "top-p {}: expected more than 0 and at most 1", self.top_p);
        Ok(())
    }
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self { max_new_tokens: 128, temperature: 0.0, top_p: 1.0, seed: 299792458 }
    }
}

/// What a caller hears while a question runs; returning false from the callback cancels.
#[derive(Debug, Clone)]
pub enum AskEvent<'a> {
    /// A stage started or advanced: name, done, total.
    Stage(&'a str, usize, usize),
    /// One generated token and the text it completed (may be empty mid-character).
    Token { id: u32, text: &'a str },
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndOfText,
    MaxTokens,
    Cancelled,
}

/// The result of a generation, with timings.
#[derive(Debug, Clone)]
pub struct Generation {
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    /// Logits [vocab] after the prompt (f32).
    pub logits_last: Tensor,
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

impl Generation {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }
    /// Decode speed over the tokens after the first (the first comes from the prefill).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.generated_ids.len().saturating_sub(1) as f64 / self.decode_secs.max(1e-9)
    }
}

fn vggt_config_for(cfg: &Qwen25VlConfig, shapes: Option<&BTreeMap<String, Vec<usize>>>) -> Result<VggtConfig> {
    let spatial = cfg.spatial_config.clone().unwrap_or_else(|| serde_json::json!({}));
    let mut vggt: VggtConfig = serde_json::from_value(spatial).context("spatial_config does not parse as a VGGT config")?;
    if let Some(shapes) = shapes {
        let inner: BTreeMap<String, Vec<usize>> =
            shapes.iter().filter_map(|(k, v)| k.strip_prefix(&format!("{SPATIAL_PREFIX}.")).map(|k| (k.to_string(), v.clone()))).collect();
        vggt.infer_from_shapes(&inner);
    }
    vggt.validate()?;
    Ok(vggt)
}

impl SpatialMllm {
    /// Builds the model from `vb` (rooted at the checkpoint's top level). `vggt` is the spatial
    /// encoder's config, or None for plain Qwen2.5-VL.
    pub fn new(cfg: &Qwen25VlConfig, vggt: Option<&VggtConfig>, layout: KeyLayout, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let visual = VisionTransformer::new(&cfg.vision_config, vb.pp(layout.visual()))?;
        let text = TextModel::new(cfg, vb.pp(layout.text()), vb.clone())?;
        let spatial = match vggt {
            None => None,
            Some(vcfg) => {
                let aggregator = Aggregator::new(vcfg, vb.pp(SPATIAL_PREFIX).pp("aggregator"))?;
                let v = &cfg.vision_config;
                let connector = Connector::new(vcfg.embed_dim, v.spatial_merge_size, v.temporal_patch_size, cfg.hidden_size, vb.pp("connector"))?;
                let idx = cfg.connector_config.as_ref().map_or(-1, |c| c.spatial_embeds_layer_idx);
                let layer = if idx < 0 { vcfg.depth as i64 + idx } else { idx };
                ensure!((0..vcfg.depth as i64).contains(&layer), "connector_config.spatial_embeds_layer_idx {idx} is outside VGGT's {} layers", vcfg.depth);
                Some(SpatialBranch { aggregator, vggt_config: vcfg.clone(), connector, layer: layer as usize })
            }
        };
        Ok(Self { config: cfg.clone(), visual, text, spatial, device: vb.device().clone() })
    }

    /// Loads a Qwen2.5-VL or Spatial-MLLM checkpoint folder (safetensors read tensor by tensor).
    /// `with_spatial = false` skips the spatial branch even when the checkpoint has it.
    pub fn load(dir: &CheckpointDir, with_spatial: bool, dtype: DType, device: &Device) -> Result<Self> {
        let json = dir.config_json()?;
        let config_path = dir.dir.join("config.json");
        ensure!(dir.config.is_some(), "{}: missing; a Qwen2.5-VL / Spatial-MLLM folder needs its config.json", config_path.display());
        let tensors = dir.tensors()?;
        let names: Vec<&str> = tensors.keys().map(String::as_str).collect();
        let kind = detect_kind(&json, &names);
        match kind {
            Some(ModelKind::SpatialMllm) | Some(ModelKind::Qwen25Vl) => {}
            Some(other) => bail!("{}: this is a {other} checkpoint, not Qwen2.5-VL or Spatial-MLLM", dir.dir.display()),
            None => bail!("{}: not a Qwen2.5-VL or Spatial-MLLM checkpoint (model_type {:?}, no visual.* / model.layers.* tensors)", dir.dir.display(), json.get("model_type")),
        }
        let cfg = Qwen25VlConfig::from_value(json).with_context(|| format!("{}: does not parse as a Qwen2.5-VL config", config_path.display()))?;
        let shapes: BTreeMap<String, Vec<usize>> = tensors.iter().map(|(k, v)| (k.clone(), v.shape.clone())).collect();
        let vggt = if with_spatial && kind == Some(ModelKind::SpatialMllm) { Some(vggt_config_for(&cfg, Some(&shapes))?) } else { None };
        let layout = KeyLayout::detect(names.iter().copied());
        // Check shapes first so a wrong checkpoint names its tensors instead of failing deep inside.
        let requested = expected_tensors_with(&cfg, vggt.as_ref(), layout)?;
        let report = crate::checkpoint::compare(&requested, &shapes, &[]);
        if let Some((name, shape)) = report.missing.first() {
            bail!("{}: tensor {name} {shape:?} is missing ({} missing in all)", dir.dir.display(), report.missing.len());
        }
        if let Some((name, want, got)) = report.mismatched.first() {
            bail!("{}: tensor {name} has shape {got:?}, the config needs {want:?}", dir.dir.display());
        }
        let reader = std::sync::Arc::new(crate::checkpoint::CheckpointReader::open(&dir.safetensors)?);
        let model = Self::new(&cfg, vggt.as_ref(), layout, reader.var_builder(dtype, device))?;
        reader.verify_unchanged()?;
        // Each tensor was read into a buffer and copied (and q/k/v stacked): return those pages.
        crate::release_freed_memory();
        Ok(model)
    }

    pub fn has_spatial(&self) -> bool {
        self.spatial.is_some()
    }

    /// Resizes (unless `resize` is false, when sides must already be multiples of 28) and pads
    /// the frames, and cuts the Qwen patches.
    pub fn prepare_video(&self, frames: Vec<RgbFrame>, limits: PixelLimits, resize: bool) -> Result<PreparedVideo> {
        ensure!(!frames.is_empty(), "a question needs at least one frame");
        let v = &self.config.vision_config;
        let source_size = (frames[0].width, frames[0].height);
        let frames = if resize {
            let (h, w) = processor::target_size(&frames, v, limits)?;
            processor::resize_frames(&frames, h, w)?
        } else {
            let f = v.merge_pixels();
            if let Some(bad) = frames.iter().find(|fr| fr.width % f != 0 || fr.height % f != 0 || fr.width != frames[0].width || fr.height != frames[0].height) {
                bail!("--resize none needs every frame to share one size with sides that are multiples of {f}; got {}x{}", bad.width, bad.height);
            }
            frames
        };
        let frames = processor::pad_frames(frames, v.temporal_patch_size);
        let (pixel_values, grid) = processor::pixel_values(&frames, v, &self.device)?;
        Ok(PreparedVideo { frames, grid, pixel_values, source_size })
    }

    /// Runs the vision tower and, when `use_spatial` and present, the spatial branch.
    pub fn encode_video(&self, video: &PreparedVideo, use_spatial: bool, events: &mut dyn FnMut(AskEvent) -> bool) -> Result<Option<VideoEncoding>> {
        if !events(AskEvent::Stage("Qwen vision tower", 0, 1)) {
            return Ok(None);
        }
        let video_embeds = self.visual.forward(&video.pixel_values, &[video.grid])?;
        let (connector_input, fused_embeds) = match (&self.spatial, use_spatial) {
            (Some(branch), true) => {
                // Announced before the DINO patch embed, which precedes the first block's progress.
                if !events(AskEvent::Stage("VGGT spatial encoder", 0, branch.vggt_config.depth)) {
                    return Ok(None);
                }
                let images = processor::vggt_images(&video.frames, &self.device)?;
                let mut progress = |done: usize, total: usize| events(AskEvent::Stage("VGGT spatial encoder", done, total));
                let Some(out) = branch.aggregator.forward(&images, &[branch.layer], false, Some(&mut progress))? else {
                    return Ok(None);
                };
                let layer = &out.layers[&branch.layer];
                let v = &self.config.vision_config;
                let merged = merge_spatial_tokens(layer, out.patch_start_idx, out.grid.0, out.grid.1, v.spatial_merge_size, v.temporal_patch_size)?;
                // The aggregator's layer (as large as `merged`) is not needed past the merge.
                drop(out);
                if !events(AskEvent::Stage("connector", 0, 1)) {
                    return Ok(None);
                }
                let spatial = branch.connector.project(&merged)?;
                let fused = (video_embeds.to_dtype(spatial.dtype())? + spatial)?;
                (Some(merged), Some(fused))
            }
            _ => (None, None),
        };
        Ok(Some(VideoEncoding { video_embeds, connector_input, fused_embeds }))
    }

    /// Prompt embeddings [L, hidden] with the video tokens placed at the `<|video_pad|>` ids.
    pub fn prompt_embeds(&self, input_ids: &[u32], video_tokens: &Tensor) -> Result<Tensor> {
        let positions: Vec<usize> = input_ids.iter().enumerate().filter(|(_, id)| **id == self.config.video_token_id).map(|(i, _)| i).collect();
        let n = video_tokens.dim(0)?;
        ensure!(positions.len() == n, "the prompt has {} <|video_pad|> tokens but the video gives {n} embeddings", positions.len());
        let text = self.text.embed(input_ids, &self.device)?;
        if n == 0 {
            return Ok(text);
        }
        // The pads form one run per video; splice the video rows in.
        let video = video_tokens.to_dtype(text.dtype())?;
        let (first, last) = (positions[0], positions[n - 1]);
        ensure!(last - first + 1 == n, "the <|video_pad|> tokens must be consecutive");
        let l = input_ids.len();
        let mut parts = Vec::new();
        if first > 0 {
            parts.push(text.narrow(0, 0, first)?);
        }
        parts.push(video);
        if last + 1 < l {
            parts.push(text.narrow(0, last + 1, l - last - 1)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Prefill + decode. `hidden_out` receives the final hidden states of the prompt.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &mut self,
        input_ids: &[u32],
        positions: &MropePositions,
        video_tokens: &Tensor,
        params: &GenerationParams,
        tokenizer: Option<&QwenTokenizer>,
        events: &mut dyn FnMut(AskEvent) -> bool,
        hidden_out: Option<&mut Option<Tensor>>,
    ) -> Result<Generation> {
        ensure!(!input_ids.is_empty(), "empty prompt");
        params.check()?;
        let limit = self.config.max_position_embeddings as i64;
        ensure!(positions.max() + (params.max_new_tokens as i64) < limit, "the prompt reaches position {} and {} new tokens would pass the model's context of {limit} positions; use fewer frames or a shorter question", positions.max(), params.max_new_tokens);
        self.text.clear_cache();
        // The encoders' freed buffers go back for the rest of the answer: the heap keeps them
        // (see `tune_allocator`), and the encoders reuse each other's, but the language model
        // needs less (at 16 frames: 10.4 against 10.8 GiB while it prefills and decodes).
        crate::release_freed_memory();
        events(AskEvent::Stage("prefill", 0, input_ids.len()));
        let start = Instant::now();
        let embeds = self.prompt_embeds(input_ids, video_tokens)?;
        let hidden = self.text.forward_embeds(&embeds, positions)?;
        let last = hidden.narrow(0, input_ids.len() - 1, 1)?;
        let logits_last = self.text.logits(&last)?.squeeze(0)?;
        let prefill_secs = start.elapsed().as_secs_f64();
        if let Some(out) = hidden_out {
            *out = Some(hidden);
        }
        let mut sampler = Sampler::new(params);
        let mut stream = tokenizer.map(TextStream::new);
        let mut generated = Vec::new();
        let mut logits = logits_last.clone();
        let mut next_pos = positions.max() + 1;
        let decode_start = Instant::now();
        let mut stop = StopReason::MaxTokens;
        // <|im_end|> and <|endoftext|>.
        let stop_ids = [self.config.eos_token_id, self.config.bos_token_id];
        while generated.len() < params.max_new_tokens {
            let id = sampler.sample(&logits)?;
            generated.push(id);
            if stop_ids.contains(&id) {
                stop = StopReason::EndOfText;
                break;
            }
            let piece = match stream.as_mut() {
                Some(s) => s.push(id)?.unwrap_or_default(),
                None => String::new(),
            };
            if !events(AskEvent::Token { id, text: &piece }) {
                stop = StopReason::Cancelled;
                break;
            }
            if generated.len() == params.max_new_tokens {
                break;
            }
            let embed = self.text.embed(&[id], &self.device)?;
            let hidden = self.text.forward_embeds(&embed, &MropePositions::text(next_pos, 1))?;
            next_pos += 1;
            logits = self.text.logits(&hidden)?.squeeze(0)?;
        }
        let decode_secs = decode_start.elapsed().as_secs_f64();
        let text = match &stream {
            Some(s) => s.text()?,
            None => String::new(),
        };
        Ok(Generation { generated_ids: generated, text, stop, logits_last, prompt_tokens: input_ids.len(), prefill_secs, decode_secs })
    }
}

/// One question about one video.
#[derive(Debug, Clone)]
pub struct AskRequest {
    pub frames: Vec<RgbFrame>,
    pub limits: PixelLimits,
    /// Resize with `smart_resize`; false uses the frames as they are (sides multiples of 28).
    pub resize: bool,
    /// The user turn's text (see [`processor::format_question`]).
    pub user_text: String,
    pub system: String,
    /// Use the spatial branch (false = plain Qwen2.5-VL on the same frames).
    pub use_spatial: bool,
    pub params: GenerationParams,
}

/// Everything a question produced, for display and `--dump`.
#[derive(Debug, Clone)]
pub struct AskResult {
    pub generation: Generation,
    pub grid: GridThw,
    pub frame_size: (usize, usize),
    pub input_ids: Vec<u32>,
    pub positions: MropePositions,
    pub encoding: VideoEncoding,
    pub encode_secs: f64,
}

impl SpatialMllm {
    /// Frames in, answer out: processor, prompt, vision (+ spatial) encoders, generation.
    /// Returns None when `events` cancelled before generation; a cancel during generation
    /// returns the partial answer with [`StopReason::Cancelled`].
    pub fn ask(&mut self, tokenizer: &QwenTokenizer, req: AskRequest, events: &mut dyn FnMut(AskEvent) -> bool) -> Result<Option<AskResult>> {
        ensure!(!req.user_text.trim().is_empty(), "the question is empty");
        ensure!(!req.use_spatial || self.has_spatial(), "this checkpoint has no spatial encoder (plain Qwen2.5-VL); ask with the base model instead");
        if !events(AskEvent::Stage("preparing frames", 0, 1)) {
            return Ok(None);
        }
        let video = self.prepare_video(req.frames, req.limits, req.resize)?;
        let prompt = processor::chat_prompt(&req.user_text, &req.system);
        let merge = self.config.vision_config.spatial_merge_size;
        let input_ids = tokenizer.prompt_ids(&prompt, self.config.video_token_id, video.grid.merged_tokens(merge))?;
        // The processor's default fps of 2 with 2-frame groups: one second per temporal group.
        let second_per_grid_t = self.config.vision_config.temporal_patch_size as f64 / 2.0;
        let positions = processor::rope_index(&input_ids, &[video.grid], second_per_grid_t, &self.config)?;
        let start = Instant::now();
        let Some(encoding) = self.encode_video(&video, req.use_spatial, events)? else { return Ok(None) };
        let encode_secs = start.elapsed().as_secs_f64();
        let generation = self.generate(&input_ids, &positions, encoding.tokens(), &req.params, Some(tokenizer), events, None)?;
        let frame_size = (video.frames[0].width, video.frames[0].height);
        Ok(Some(AskResult { generation, grid: video.grid, frame_size, input_ids, positions, encoding, encode_secs }))
    }
}

/// Every tensor (name -> shape) the model asks for, learned on a recording backend.
pub fn expected_tensors(cfg: &Qwen25VlConfig, with_spatial: bool) -> Result<BTreeMap<String, Vec<usize>>> {
    let vggt = if with_spatial { Some(vggt_config_for(cfg, None)?) } else { None };
    expected_tensors_with(cfg, vggt.as_ref(), KeyLayout::Released)
}

/// What the model would ask of a checkpoint with these tensor shapes (its key layout and, for
/// Spatial-MLLM, the VGGT sizes the shapes imply).
pub fn expected_tensors_for_checkpoint(cfg: &Qwen25VlConfig, shapes: &BTreeMap<String, Vec<usize>>, with_spatial: bool) -> Result<BTreeMap<String, Vec<usize>>> {
    let vggt = if with_spatial { Some(vggt_config_for(cfg, Some(shapes))?) } else { None };
    expected_tensors_with(cfg, vggt.as_ref(), KeyLayout::detect(shapes.keys().map(String::as_str)))
}

fn expected_tensors_with(cfg: &Qwen25VlConfig, vggt: Option<&VggtConfig>, layout: KeyLayout) -> Result<BTreeMap<String, Vec<usize>>> {
    let backend = RecordingBackend::default();
    SpatialMllm::new(cfg, vggt, layout, backend.var_builder(DType::F32))?;
    Ok(backend.requested())
}

/// Greedy, or temperature + top-p sampling with a small deterministic generator.
struct Sampler {
    temperature: f64,
    top_p: f64,
    state: u64,
}

impl Sampler {
    fn new(p: &GenerationParams) -> Self {
        Self { temperature: p.temperature, top_p: p.top_p, state: p.seed.max(1) }
    }

    fn next_f64(&mut self) -> f64 {
        // xorshift64*: plenty for picking tokens.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let v: Vec<f32> = logits.to_dtype(DType::F32)?.to_vec1()?;
        let argmax = v.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0;
        if self.temperature <= 0.0 {
            return Ok(argmax as u32);
        }
        let max = v[argmax] as f64;
        let mut probs: Vec<(usize, f64)> = v.iter().enumerate().map(|(i, &x)| (i, ((x as f64 - max) / self.temperature).exp())).collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut kept = 0.0;
        let mut cut = probs.len();
        for (i, p) in probs.iter().enumerate() {
            kept += p.1 / total;
            if kept >= self.top_p {
                cut = i + 1;
                break;
            }
        }
        let probs = &probs[..cut];
        let mass: f64 = probs.iter().map(|p| p.1).sum();
        let mut r = self.next_f64() * mass;
        for p in probs {
            r -= p.1;
            if r <= 0.0 {
                return Ok(p.0 as u32);
            }
        }
        Ok(probs.last().map_or(argmax, |p| p.0) as u32)
    }
}
