//! The Qwen tokenizer (the checkpoint's `tokenizer.json`, through the `tokenizers` crate) and
//! incremental detokenisation for streaming answers.

use anyhow::{Context, Result, bail};
use std::path::Path;

pub struct QwenTokenizer {
    inner: tokenizers::Tokenizer,
}

impl QwenTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("{}: missing; the model folder needs the checkpoint's tokenizer.json", path.display());
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| anyhow::anyhow!("{}: not a usable tokenizer.json ({e})", path.display()))?;
        Ok(Self { inner })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| anyhow::anyhow!("not a usable tokenizer.json ({e})"))?;
        Ok(Self { inner })
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`, ...) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow::anyhow!("tokenising failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| anyhow::anyhow!("detokenising failed: {e}"))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The prompt's ids with its single `video_token` expanded to `video_tokens` copies (what the
    /// processor does before tokenising; expanding after gives the same ids because special
    /// tokens are split off first).
    pub fn prompt_ids(&self, prompt: &str, video_token: u32, video_tokens: usize) -> Result<Vec<u32>> {
        let ids = self.encode(prompt)?;
        let at: Vec<usize> = ids.iter().enumerate().filter(|(_, id)| **id == video_token).map(|(i, _)| i).collect();
        if at.len() != 1 {
            bail!("the prompt must hold exactly one video placeholder (id {video_token}), found {}", at.len());
        }
        let mut out = Vec::with_capacity(ids.len() + video_tokens);
        out.extend_from_slice(&ids[..at[0]]);
        out.extend(std::iter::repeat_n(video_token, video_tokens));
        out.extend_from_slice(&ids[at[0] + 1..]);
        Ok(out)
    }
}

/// Turns generated ids into text pieces as they arrive, holding back an incomplete UTF-8
/// sequence until its last byte is decoded.
pub struct TextStream<'a> {
    tokenizer: &'a QwenTokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a QwenTokenizer) -> Self {
        Self { tokenizer, ids: Vec::new(), emitted: 0 }
    }

    /// The new text after `id`, if any is complete.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(piece))
    }

    pub fn text(&self) -> Result<String> {
        self.tokenizer.decode(&self.ids, true).context("decoding the answer")
    }
}
