//! `video info` and `video frame`.

use crate::video::VideoInfo;
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum VideoCommand {
    /// Frames, fps, duration, displayed size, codec, rotation.
    Info {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Writes displayed frame N (as `ffmpeg -vf select=eq(n\,N)` counts) to a PNG, full size.
    Frame {
        path: PathBuf,
        #[arg(long)]
        index: usize,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: VideoCommand) -> Result<i32> {
    match cmd {
        VideoCommand::Info { path, json } => {
            let info = VideoInfo::probe(&path)?;
            if json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!(
                    "{}: {} frames, {:.3} fps, {:.2} s, {}x{}, {}, rotation {}",
                    path.display(),
                    info.frames,
                    info.fps,
                    info.duration_s,
                    info.width,
                    info.height,
                    info.codec,
                    info.rotation
                );
            }
            Ok(0)
        }
        VideoCommand::Frame { path, index, out } => {
            let info = VideoInfo::probe(&path)?;
            let frame = info.decode(&[index], None)?.remove(0);
            image::RgbImage::from_raw(frame.width as u32, frame.height as u32, frame.data)
                .context("frame buffer")?
                .save(&out)
                .with_context(|| format!("{}: cannot write", out.display()))?;
            println!("wrote {} (frame {index}, {}x{})", out.display(), frame.width, frame.height);
            Ok(0)
        }
    }
}
