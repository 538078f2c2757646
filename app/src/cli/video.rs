//! `video info` and `video frame`.

use crate::pipeline::fsio;
use crate::pipeline::video::VideoInfo;
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
            fsio::check_writable(&out)?;
            let info = VideoInfo::probe(&path)?;
            // The seeking decoder: an input seek to the frame's own timestamp, then at most one
            // GOP of decoding (a one-pass decode would read the clip from its start).
            // Containers whose timestamps do not seek exactly (MPEG program streams) fall back to
            // the one-pass decode.
            let seeked = crate::pipeline::video::VideoStream::open(info.clone(), None).and_then(|mut s| s.frame(index));
            let frame = match seeked {
                Ok(f) => f,
                Err(_) => info.decode(&[index], None)?.remove(0),
            };
            let image = image::RgbImage::from_raw(frame.width as u32, frame.height as u32, frame.data).context("frame buffer")?;
            fsio::write_atomic(&out, |w| Ok(image.write_to(w, image::ImageFormat::Png)?))?;
            println!("wrote {} (frame {index}, {}x{})", out.display(), frame.width, frame.height);
            Ok(0)
        }
    }
}
