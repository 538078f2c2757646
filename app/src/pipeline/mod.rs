//! The one pipeline behind the command line and the GUI: opening sources and decoding their
//! frames, devices, weights (folders or Hugging Face repo ids), loading the models, reconstructing
//! with VGGT (cached), space-aware sampling, asking Spatial-MLLM, and exporting. It knows neither
//! clap nor Bevy: `cli/*` and the GUI's background threads are thin adapters over it.

pub mod ask;
pub mod cache;
pub mod colmap;
pub mod demo;
pub mod device;
pub mod eval;
pub mod export;
pub mod fsio;
pub mod glb;
pub mod inspect;
pub mod models;
pub mod points;
pub mod previews;
pub mod reconstruct;
pub mod sample;
pub mod settings;
pub mod source;
pub mod state_file;
pub mod threads;
pub mod video;
pub mod weights;
