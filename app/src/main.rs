//! `spatial-viewer`: the Bevy GUI when run without a subcommand, headless tools otherwise.

mod cli;
mod gui;
mod pipeline;

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
    /// VGGT checkpoint (a folder or a Hugging Face repo id such as facebook/VGGT-1B) to load at
    /// start-up (opened videos and folders are reconstructed).
    #[arg(long)]
    vggt: Option<String>,
    /// Spatial-MLLM or Qwen2.5-VL (a folder or repo id) to load at start-up for the chat panel.
    #[arg(long)]
    mllm: Option<String>,
    #[command(flatten)]
    compute: cli::ComputeArgs,
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
    /// Write geometry for other tools (COLMAP, GLB, PLY, depth maps, safetensors).
    Export(cli::export::ExportArgs),
    /// Ask Spatial-MLLM (or Qwen2.5-VL) a question about a video or folder of frames.
    Ask(cli::ask::AskArgs),
    /// VSI-Bench: score results as upstream does, run the benchmark (resumable, sharded), merge.
    Eval {
        #[command(subcommand)]
        command: cli::eval::EvalCommand,
    },
    /// Benchmarks (print a table).
    Bench {
        #[command(subcommand)]
        command: cli::bench::BenchCommand,
    },
}

fn main() {
    spatial_models::tune_allocator();
    spatial_models::blas::prefer_fastest_openblas_kernels();
    pipeline::fsio::report_file_size_limits_as_errors();
    let args = Args::parse();
    let gui = |input, script, bench_points| {
        gui::run(gui::GuiOptions { input, script, bench_points, vggt: args.vggt.clone(), mllm: args.mllm.clone(), device: args.compute.device, dtype: args.compute.dtype })
    };
    let result = match args.command {
        Some(Command::Weights { command }) => cli::weights::run(command),
        Some(Command::Reconstruct(a)) => cli::reconstruct::run(a),
        Some(Command::Sample(a)) => cli::sample::run(a),
        Some(Command::Export(a)) => cli::export::run(a),
        Some(Command::Video { command }) => cli::video::run(command),
        Some(Command::Ask(a)) => cli::ask::run(a),
        Some(Command::Eval { command }) => cli::eval::run_command(command),
        // The render benchmark is the GUI, timed.
        Some(Command::Bench { command: cli::bench::BenchCommand::Render { points: Some(n), frames } }) => {
            gui::bench::set_samples(frames);
            gui(None, None, Some(n))
        }
        Some(Command::Bench { command: cli::bench::BenchCommand::Render { points: None, frames } }) => gui::bench::run_all(frames),
        Some(Command::Bench { command }) => cli::bench::run(command),
        None => gui(args.input.clone(), args.script.clone(), None),
    };
    match result {
        Ok(code) => pipeline::threads::exit_process(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            pipeline::threads::exit_process(1);
        }
    }
}
