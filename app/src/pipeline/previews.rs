//! Scrub previews: small frames of a whole video, decoded once in the background and kept as JPEG
//! in memory, so dragging the timeline shows the frame under the cursor at once while the exact
//! frame (up to a GOP of decoding away) is on its way. Every frame gets one while they fit the
//! memory budget; past it the store keeps every other one (then every fourth...), so a long clip
//! costs the same fixed memory as a short one.

use super::video::{VideoInfo, decode_every, thumbnail_step};
use spatial_models::vggt::preprocess::RgbFrame;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Width of a preview (the height follows the video's aspect).
pub const PREVIEW_WIDTH: usize = 160;
/// Memory the JPEG previews of one video may take.
pub const PREVIEW_BUDGET_BYTES: usize = 24 << 20;
/// Previews the first pass aims at (a 160x90 JPEG is a few KB: a clip of up to 11 minutes at
/// 30 fps starts with one per frame and thins out only if the budget says so).
const MAX_PREVIEWS: usize = 20_000;
const JPEG_QUALITY: u8 = 85;

pub struct ScrubPreviews {
    /// Keep previews of frames that are multiples of this (shared with the decoding thread, so
    /// frames that would be dropped are not encoded).
    step: Arc<AtomicUsize>,
    jpegs: BTreeMap<usize, Vec<u8>>,
    bytes: usize,
    budget: usize,
    incoming: Option<crossbeam_channel::Receiver<(usize, Vec<u8>)>>,
    cancel: Option<Arc<AtomicBool>>,
    finished: bool,
    /// The last preview handed out, decoded (it stays on screen for several UI frames).
    last: Option<(usize, Arc<RgbFrame>)>,
}

impl Default for ScrubPreviews {
    /// No video: no previews, nothing to wait for.
    fn default() -> Self {
        let mut none = Self::empty(1, 0);
        none.finished = true;
        none
    }
}

impl ScrubPreviews {
    /// Starts the background pass over `info`.
    pub fn start(info: &VideoInfo) -> Self {
        let mut previews = Self::empty(thumbnail_step(info.frames, MAX_PREVIEWS), PREVIEW_BUDGET_BYTES);
        let (tx, rx) = crossbeam_channel::unbounded();
        let cancel = Arc::new(AtomicBool::new(false));
        let (stop, step, info) = (cancel.clone(), previews.step.clone(), info.clone());
        let first_step = step.load(Ordering::Relaxed);
        let spawned = std::thread::Builder::new().name("scrub-previews".into()).spawn(move || {
            let _ = decode_every(&info, first_step, PREVIEW_WIDTH, |i, frame| {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                if i % step.load(Ordering::Relaxed) != 0 {
                    return true;
                }
                match encode_jpeg(&frame) {
                    Some(jpeg) => tx.send((i, jpeg)).is_ok(),
                    None => true,
                }
            });
        });
        previews.incoming = spawned.is_ok().then_some(rx);
        previews.finished = spawned.is_err();
        previews.cancel = Some(cancel);
        previews
    }

    fn empty(step: usize, budget: usize) -> Self {
        Self { step: Arc::new(AtomicUsize::new(step.max(1))), jpegs: BTreeMap::new(), bytes: 0, budget, incoming: None, cancel: None, finished: false, last: None }
    }

    /// Takes what the background pass has decoded so far.
    pub fn receive(&mut self) {
        let Some(rx) = &self.incoming else { return };
        let mut arrived = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(p) => arrived.push(p),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.finished = true;
                    self.incoming = None;
                    break;
                }
            }
        }
        for (i, jpeg) in arrived {
            self.insert(i, jpeg);
        }
    }

    fn insert(&mut self, index: usize, jpeg: Vec<u8>) {
        let step = self.step.load(Ordering::Relaxed);
        if index % step != 0 {
            return;
        }
        self.bytes += jpeg.len();
        if let Some(old) = self.jpegs.insert(index, jpeg) {
            self.bytes -= old.len();
        }
        // Over budget: keep every other preview from now on.
        while self.bytes > self.budget && self.jpegs.len() > 1 {
            let step = self.step.load(Ordering::Relaxed) * 2;
            self.step.store(step, Ordering::Relaxed);
            self.jpegs.retain(|i, _| i % step == 0);
            self.bytes = self.jpegs.values().map(Vec::len).sum();
        }
    }

    /// The preview nearest to `frame` at or before it (the frame itself when every frame has
    /// one), if one is within two steps.
    pub fn nearest(&mut self, frame: usize) -> Option<(usize, Arc<RgbFrame>)> {
        let step = self.step.load(Ordering::Relaxed);
        let (&index, jpeg) = self.jpegs.range(..=frame).next_back().filter(|(i, _)| frame - **i < 2 * step)?;
        if let Some((i, f)) = &self.last
            && *i == index
        {
            return Some((index, f.clone()));
        }
        let decoded = Arc::new(decode_jpeg(jpeg)?);
        self.last = Some((index, decoded.clone()));
        Some((index, decoded))
    }

    pub fn len(&self) -> usize {
        self.jpegs.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every how many frames a preview is kept.
    pub fn step(&self) -> usize {
        self.step.load(Ordering::Relaxed)
    }

    /// Whether the background pass is over (every preview it will make is here).
    pub fn finished(&self) -> bool {
        self.finished
    }
}

impl Drop for ScrubPreviews {
    fn drop(&mut self) {
        if let Some(c) = &self.cancel {
            c.store(true, Ordering::Relaxed);
        }
    }
}

fn encode_jpeg(frame: &RgbFrame) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY).encode(&frame.data, frame.width as u32, frame.height as u32, image::ExtendedColorType::Rgb8).ok()?;
    Some(out)
}

fn decode_jpeg(jpeg: &[u8]) -> Option<RgbFrame> {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).ok()?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Some(RgbFrame::new(w, h, img.into_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame whose pixels say which frame it is (a grey level per index).
    fn frame(index: usize) -> RgbFrame {
        RgbFrame::new(32, 18, vec![(index * 37 % 256) as u8; 32 * 18 * 3])
    }

    #[test]
    fn previews_thin_out_to_stay_within_the_budget() {
        let one = encode_jpeg(&frame(0)).unwrap().len();
        // Room for about ten previews.
        let mut store = ScrubPreviews::empty(1, one * 10 + one / 2);
        for i in 0..40 {
            store.insert(i, encode_jpeg(&frame(i)).unwrap());
            assert!(store.bytes() <= one * 10 + one / 2 + one, "{} bytes after {i}", store.bytes());
        }
        assert_eq!(store.step(), 4, "40 frames in a budget of 10: every fourth");
        assert!(store.jpegs.keys().all(|i| i % 4 == 0));
        assert_eq!(store.len(), 10);
        // Frame 13 shows the preview of frame 12; a grey level close to 12's (JPEG is lossy).
        let (i, f) = store.nearest(13).unwrap();
        assert_eq!(i, 12);
        let want = (12 * 37 % 256) as i32;
        assert!(f.data.iter().all(|&v| (v as i32 - want).abs() <= 3), "grey {} vs {want}", f.data[0]);
    }

    #[test]
    fn every_frame_has_its_own_preview_within_the_budget() {
        let mut store = ScrubPreviews::empty(1, PREVIEW_BUDGET_BYTES);
        for i in 0..50 {
            store.insert(i, encode_jpeg(&frame(i)).unwrap());
        }
        assert_eq!(store.step(), 1);
        for i in 0..50 {
            assert_eq!(store.nearest(i).map(|(j, _)| j), Some(i));
        }
        // The same preview twice is decoded once.
        let a = store.nearest(7).unwrap().1;
        let b = store.nearest(7).unwrap().1;
        assert!(Arc::ptr_eq(&a, &b));
    }
}
