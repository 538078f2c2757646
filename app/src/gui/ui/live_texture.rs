//! Pictures egui draws that change while the app runs: the video frame and its overlay.
//!
//! An egui-managed texture becomes a new Bevy image asset on every change, and bevy_egui draws
//! nothing with it in the frame it appears (the new asset reaches the GPU a frame later, the old
//! one is already gone): playback flickered, and the panel stayed blank when every frame brought
//! a new picture. A `LiveTexture` keeps one asset and rewrites it; the render world replaces the
//! GPU copy in the frame it sees the change, so the previous picture stays drawn until then.

use bevy::asset::RenderAssetUsages;
use bevy::image::ImageSampler;
use bevy::prelude::*;
use bevy::render::render_resource::{Extent3d, TextureDimension, TextureFormat};
use bevy_egui::{EguiContexts, EguiTextureHandle, egui};

pub struct LiveTexture {
    /// Kept strong here and registered weakly with egui: dropping this frees both.
    handle: Handle<Image>,
    id: egui::TextureId,
}

/// sRGB RGBA pixels with straight alpha, as bevy_egui uploads its own textures.
pub struct Pixels {
    pub size: [usize; 2],
    pub rgba: Vec<u8>,
}

impl Pixels {
    pub fn from_rgb(width: usize, height: usize, rgb: &[u8]) -> Self {
        let mut rgba = Vec::with_capacity(width * height * 4);
        for px in rgb.chunks_exact(3).take(width * height) {
            rgba.extend_from_slice(&[px[0], px[1], px[2], 255]);
        }
        Self { size: [width, height], rgba }
    }

    pub fn from_color_image(image: &egui::ColorImage) -> Self {
        Self { size: image.size, rgba: image.pixels.iter().flat_map(|c| c.to_array()).collect() }
    }

    fn into_image(self, nearest: bool) -> Image {
        let [width, height] = self.size.map(|s| s.max(1) as u32);
        let mut rgba = self.rgba;
        // An empty picture (0 x N) still needs one texel.
        rgba.resize((width * height * 4) as usize, 0);
        let mut image = Image::new(Extent3d { width, height, depth_or_array_layers: 1 }, TextureDimension::D2, rgba, TextureFormat::Rgba8UnormSrgb, RenderAssetUsages::default());
        image.sampler = if nearest { ImageSampler::nearest() } else { ImageSampler::linear() };
        image
    }
}

impl LiveTexture {
    /// Shows `pixels` through the texture in `slot`, creating it the first time.
    pub fn show(slot: &mut Option<LiveTexture>, pixels: Pixels, nearest: bool, contexts: &mut EguiContexts, images: &mut Assets<Image>) {
        let image = pixels.into_image(nearest);
        if let Some(live) = slot
            && let Some(mut asset) = images.get_mut(&live.handle)
        {
            *asset = image;
            return;
        }
        *slot = Some(Self::create(image, contexts, images));
    }

    fn create(image: Image, contexts: &mut EguiContexts, images: &mut Assets<Image>) -> Self {
        let handle = images.add(image);
        let id = contexts.add_image(EguiTextureHandle::Weak(handle.id()));
        Self { handle, id }
    }

    pub fn id(&self) -> egui::TextureId {
        self.id
    }
}
