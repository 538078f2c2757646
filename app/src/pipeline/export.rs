//! Writing geometry for other tools. Every file goes through [`super::fsio`]: complete or absent,
//! never a truncated file over a good one.

use super::fsio;
use super::points::{PointFilter, filtered, points_of};
use anyhow::{Context, Result, bail};
use spatial_models::reconstruction::Reconstruction;
use std::io::Write;
use std::path::Path;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportFormat {
    /// Upstream's tensor names (`world_points`, `depth`, `extrinsic`, ...), with checksums.
    Safetensors,
    /// Binary PLY of the filtered points: position, colour, confidence, source frame.
    Ply,
    /// A COLMAP sparse model (binary) with the frames, in a folder.
    #[default]
    Colmap,
    /// The same in COLMAP's text format.
    ColmapText,
    /// The points and camera frustums as glTF binary.
    Glb,
    /// Depth and confidence maps per frame: 16-bit PNGs with their scale in a JSON sidecar.
    Depth,
}

impl std::str::FromStr for ExportFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s).with_context(|| format!("--format {s}: expected {}", Self::ALL.map(|f| f.name()).join(", ")))
    }
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 6] = [Self::Colmap, Self::ColmapText, Self::Glb, Self::Ply, Self::Depth, Self::Safetensors];

    /// The name `--format` takes.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::Ply => "ply",
            Self::Colmap => "colmap",
            Self::ColmapText => "colmap-text",
            Self::Glb => "glb",
            Self::Depth => "depth",
        }
    }

    /// What it is for, in a few words (the export window's choices).
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors: all of VGGT's outputs, upstream's names",
            Self::Ply => "PLY: the points on screen, with confidence and frame",
            Self::Colmap => "COLMAP sparse model (binary) with tracks, and the frames: a folder",
            Self::ColmapText => "COLMAP sparse model (text) with tracks, and the frames: a folder",
            Self::Glb => "GLB: points and camera frustums (picks coloured), for Blender and viewers",
            Self::Depth => "depth and confidence maps: 16-bit PNGs and a JSON sidecar, a folder",
        }
    }

    /// A file or folder name for this format.
    pub fn default_name(&self) -> &'static str {
        match self {
            Self::Safetensors => "reconstruction.safetensors",
            Self::Ply => "points.ply",
            Self::Colmap => "colmap",
            Self::ColmapText => "colmap-text",
            Self::Glb => "scene.glb",
            Self::Depth => "depth-maps",
        }
    }

    /// The format a file name implies (folders: COLMAP).
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("ply") => Some(Self::Ply),
            Some("safetensors") => Some(Self::Safetensors),
            Some("glb") => Some(Self::Glb),
            None => Some(Self::Colmap),
            _ => None,
        }
    }

    /// Whether the output is a folder.
    pub fn is_folder(&self) -> bool {
        matches!(self, Self::Colmap | Self::ColmapText | Self::Depth)
    }
}

/// Checks an output folder can be written (creating it); names the path as given.
fn check_folder(dir: &Path) -> Result<()> {
    if dir.is_file() {
        bail!("{}: is a file; this export writes a folder", dir.display());
    }
    fsio::create_dir_all(dir)?;
    fsio::check_writable(&dir.join("probe"))
}

/// Writes `rec` to `path`; `picks` (geometry frames) are marked where the format can. Returns a
/// one-line summary.
pub fn export(rec: &Reconstruction, format: ExportFormat, filter: &PointFilter, picks: &[usize], path: &Path) -> Result<String> {
    if format.is_folder() {
        check_folder(path)?;
    } else {
        fsio::check_writable(path)?;
    }
    match format {
        ExportFormat::Safetensors => {
            fsio::write_atomic(path, |w| rec.write_safetensors(w))?;
            Ok(format!("exported {} frames to {}", rec.frames, path.display()))
        }
        ExportFormat::Ply => {
            let n = write_ply(rec, filter, path)?;
            Ok(format!("exported {n} points to {}", path.display()))
        }
        ExportFormat::Colmap | ExportFormat::ColmapText => {
            let model = super::colmap::build(rec, filter, None, 2);
            super::colmap::write(rec, &model, path, format == ExportFormat::ColmapText)?;
            let mean = model.points.iter().map(|p| p.track.len()).sum::<usize>() as f64 / model.points.len().max(1) as f64;
            Ok(format!("exported a COLMAP model of {} images and {} points (mean track {mean:.1}) to {}", model.images.len(), model.points.len(), path.display()))
        }
        ExportFormat::Glb => {
            let s = super::glb::write(rec, filter, picks, path)?;
            Ok(format!("exported {} points and {} cameras to {}", s.points, s.cameras, path.display()))
        }
        ExportFormat::Depth => {
            write_depth_maps(rec, path)?;
            Ok(format!("exported depth and confidence maps of {} frames to {}", rec.frames, path.display()))
        }
    }
}

/// `DIR/depth/frame_NNNNNN.png` and `DIR/confidence/frame_NNNNNN.png` (16-bit grey, value x scale =
/// depth along the camera's z in scene units / confidence) and `DIR/maps.json` with the scales.
pub fn write_depth_maps(rec: &Reconstruction, dir: &Path) -> Result<()> {
    let (w, h) = (rec.width, rec.height);
    let finite_max = |v: &[f32]| v.iter().copied().filter(|x| x.is_finite()).fold(0f32, f32::max).max(f32::MIN_POSITIVE);
    let depth_scale = finite_max(&rec.depth) as f64 / 65535.0;
    let conf_scale = finite_max(&rec.depth_conf) as f64 / 65535.0;
    for (sub, values, scale) in [("depth", &rec.depth, depth_scale), ("confidence", &rec.depth_conf, conf_scale)] {
        let folder = dir.join(sub);
        fsio::create_dir_all(&folder)?;
        for f in 0..rec.frames {
            let px: Vec<u16> = values[f * w * h..(f + 1) * w * h].iter().map(|&v| if v.is_finite() && v > 0.0 { (v as f64 / scale).round().clamp(0.0, 65535.0) as u16 } else { 0 }).collect();
            let img = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(w as u32, h as u32, px).ok_or_else(|| anyhow::anyhow!("map buffer"))?;
            let name = super::colmap::image_name(rec.frame_indices.get(f).copied().unwrap_or(f as i64));
            fsio::write_atomic(&folder.join(name), |out| Ok(img.write_to(out, image::ImageFormat::Png)?))?;
        }
    }
    let sidecar = serde_json::json!({
        "depth": {"folder": "depth", "scale": depth_scale, "meaning": "value * scale = z-depth in the reconstruction's units (0: none)"},
        "confidence": {"folder": "confidence", "scale": conf_scale, "meaning": "value * scale = VGGT's depth confidence"},
        "width": w, "height": h,
        "frames": rec.frame_indices,
    });
    fsio::write_atomic(&dir.join("maps.json"), |out| Ok(out.write_all(serde_json::to_string_pretty(&sidecar)?.as_bytes())?))
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
