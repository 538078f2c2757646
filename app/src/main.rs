//! `spatial-viewer`: the Bevy GUI when run without a subcommand, headless tools otherwise.

mod cli;
mod demo;
mod previews;
mod video;
mod gui;
mod question;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "spatial-viewer", version, about = "Explore the spatial intelligence of video models (VGGT + Spatial-MLLM)")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Video file or folder of frames to open in the GUI (default: the built-in demo scene).
    input: Option<PathBuf>,
    /// Run the scripted steps of this JSON file in the live window (see README).
    #[arg(long)]
    script: Option<PathBuf>,
    /// VGGT checkpoint folder to load at start-up (opened videos and folders are reconstructed).
    #[arg(long)]
    vggt: Option<PathBuf>,
    /// Spatial-MLLM (or Qwen2.5-VL) folder to load at start-up for the chat panel.
    #[arg(long)]
    mllm: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect checkpoints.
    Weights {
        #[command(subcommand)]
        command: cli::weights::WeightsCommand,
    },
    /// Run VGGT on a folder of frames and save the geometry.
    Reconstruct(cli::reconstruct::ReconstructArgs),
    /// Inspect and decode video files (through FFmpeg).
    Video {
        #[command(subcommand)]
        command: cli::video::VideoCommand,
    },
    /// Space-aware frame sampling on saved geometry.
    Sample(cli::sample::SampleArgs),
    /// Ask Spatial-MLLM (or Qwen2.5-VL) a question about a video or folder of frames.
    Ask(cli::ask::AskArgs),
    /// Benchmarks (print a table).
    Bench {
        #[command(subcommand)]
        command: cli::bench::BenchCommand,
    },
}

fn main() {
    spatial_models::tune_allocator();
    let args = Args::parse();
    let result = match args.command {
        Some(Command::Weights { command }) => cli::weights::run(command),
        Some(Command::Reconstruct(a)) => cli::reconstruct::run(a),
        Some(Command::Sample(a)) => cli::sample::run(a),
        Some(Command::Video { command }) => cli::video::run(command),
        Some(Command::Ask(a)) => cli::ask::run(a),
        Some(Command::Bench { command }) => cli::bench::run(command),
        None => gui::run(gui::GuiOptions { input: args.input, script: args.script, bench_points: None, vggt: args.vggt, mllm: args.mllm }),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
