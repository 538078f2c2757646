//! Writing geometry for other tools. Every file goes through [`super::fsio`]: complete or absent,
//! never a truncated file over a good one.

use super::fsio;
use super::points::{PointFilter, filtered, points_of};
use anyhow::{Result, bail};
use spatial_models::reconstruction::Reconstruction;
use std::io::Write;
use std::path::Path;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Upstream's tensor names (`world_points`, `depth`, `extrinsic`, ...), with checksums.
    Safetensors,
    /// Binary PLY of the filtered points: position, colour, confidence, frame index.
    Ply,
}

impl std::str::FromStr for ExportFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "safetensors" => Ok(Self::Safetensors),
            "ply" => Ok(Self::Ply),
            other => bail!("--format {other}: expected safetensors or ply"),
        }
    }
}

impl ExportFormat {
    /// The format a file name implies.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "ply" => Some(Self::Ply),
            "safetensors" => Some(Self::Safetensors),
            _ => None,
        }
    }
}

/// Writes `rec` to `path`; returns a one-line summary.
pub fn export(rec: &Reconstruction, format: ExportFormat, filter: &PointFilter, path: &Path) -> Result<String> {
    fsio::check_writable(path)?;
    match format {
        ExportFormat::Safetensors => {
            fsio::write_atomic(path, |w| rec.write_safetensors(w))?;
            Ok(format!("exported {} frames to {}", rec.frames, path.display()))
        }
        ExportFormat::Ply => {
            let n = write_ply(rec, filter, path)?;
            Ok(format!("exported {n} points to {}", path.display()))
        }
    }
}

/// A binary little-endian PLY of the points `filter` keeps, with their colour, confidence and the
/// source frame they come from. Returns the number of points.
pub fn write_ply(rec: &Reconstruction, filter: &PointFilter, path: &Path) -> Result<usize> {
    let (points, conf) = points_of(rec, filter.source);
    let keep = filtered(rec, &points, conf, filter);
    let per_frame = rec.height * rec.width;
    fsio::write_atomic(path, |out| {
        write!(
            out,
            "ply\nformat binary_little_endian 1.0\nelement vertex {}\nproperty float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nproperty float confidence\nproperty int frame\ncomment spatial-viewer: {} points, confidence >= {}; frame is the source frame\nend_header\n",
            keep.len(),
            filter.source.name(),
            filter.threshold
        )?;
        for &i in &keep {
            for a in 0..3 {
                out.write_all(&points[i * 3 + a].to_le_bytes())?;
            }
            out.write_all(&rec.images[i * 3..i * 3 + 3])?;
            out.write_all(&conf[i].to_le_bytes())?;
            out.write_all(&(rec.frame_indices.get(i / per_frame).copied().unwrap_or((i / per_frame) as i64) as i32).to_le_bytes())?;
        }
        Ok(())
    })?;
    Ok(keep.len())
}
