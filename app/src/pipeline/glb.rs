//! A GLB of the scene for Blender, three.js and trimesh: the filtered points with their colours, and
//! every camera as a frustum of lines (the sampler's picks in orange, the others light blue), in
//! glTF's axes (y up, z towards the viewer: OpenCV's y and z flipped). Built with the `gltf`
//! crate's JSON types and GLB container.

use super::fsio;
use super::points::{PointFilter, filtered, points_of};
use anyhow::Result;
use gltf::json;
use json::validation::Checked::Valid;
use json::validation::USize64;
use spatial_models::reconstruction::Reconstruction;
use std::path::Path;

/// OpenCV (x right, y down, z forward) to glTF (x right, y up, z backward).
fn to_gltf(p: [f32; 3]) -> [f32; 3] {
    [p[0], -p[1], -p[2]]
}

const PICK: [u8; 3] = [255, 115, 25];
const CAMERA: [u8; 3] = [140, 158, 190];

/// The frustum of a camera as 8 line segments (apex to the 4 image corners, then the rim), at
/// `depth` in front of it.
fn frustum_lines(rec: &Reconstruction, f: usize, depth: f32) -> Vec<[f32; 3]> {
    let cam = &rec.cameras[f];
    let (k, m) = (cam.intrinsic, cam.cam_to_world());
    let to_world = |p: [f32; 3]| [0, 1, 2].map(|r| m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3]);
    let pix = |u: f32, v: f32| to_world([(u - k[0][2]) / k[0][0] * depth, (v - k[1][2]) / k[1][1] * depth, depth]);
    let (w, h) = (rec.width as f32, rec.height as f32);
    let c = [pix(0.0, 0.0), pix(w, 0.0), pix(w, h), pix(0.0, h)];
    let apex = to_world([0.0; 3]);
    let mut out = Vec::with_capacity(16);
    for i in 0..4 {
        out.extend([apex, c[i], c[i], c[(i + 1) % 4]]);
    }
    out
}

/// What the GLB holds, for the caller's summary.
pub struct GlbSummary {
    pub points: usize,
    pub cameras: usize,
}

/// Writes the GLB; `picks` are geometry frames drawn in the pick colour.
pub fn write(rec: &Reconstruction, filter: &PointFilter, picks: &[usize], path: &Path) -> Result<GlbSummary> {
    let (points, conf) = points_of(rec, filter.source);
    let keep = filtered(rec, &points, conf, filter);
    let mut bin: Vec<u8> = Vec::new();
    let mut root = json::Root { asset: json::Asset { generator: Some("spatial-viewer".into()), version: "2.0".into(), ..Default::default() }, ..Default::default() };
    let buffer_index = json::Index::<json::Buffer>::new(0);
    // One buffer view per attribute; positions carry their bounds as glTF requires.
    let add = |root: &mut json::Root, bin: &mut Vec<u8>, data: &[u8], count: usize, vec3_f32: bool, bounds: Option<([f32; 3], [f32; 3])>| -> json::Index<json::Accessor> {
        while bin.len() % 4 != 0 {
            bin.push(0);
        }
        let view = root.push(json::buffer::View {
            buffer: buffer_index,
            byte_length: USize64::from(data.len()),
            byte_offset: Some(USize64::from(bin.len())),
            byte_stride: None,
            name: None,
            target: Some(Valid(json::buffer::Target::ArrayBuffer)),
            extensions: Default::default(),
            extras: Default::default(),
        });
        bin.extend_from_slice(data);
        root.push(json::Accessor {
            buffer_view: Some(view),
            byte_offset: None,
            count: USize64::from(count),
            component_type: Valid(json::accessor::GenericComponentType(if vec3_f32 { json::accessor::ComponentType::F32 } else { json::accessor::ComponentType::U8 })),
            extensions: Default::default(),
            extras: Default::default(),
            type_: Valid(json::accessor::Type::Vec3),
            min: bounds.map(|b| json::Value::from(b.0.to_vec())),
            max: bounds.map(|b| json::Value::from(b.1.to_vec())),
            name: None,
            normalized: !vec3_f32,
            sparse: None,
        })
    };
    let bounds_of = |ps: &[[f32; 3]]| -> ([f32; 3], [f32; 3]) {
        let mut lo = [f32::INFINITY; 3];
        let mut hi = [f32::NEG_INFINITY; 3];
        for p in ps {
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
        }
        (lo, hi)
    };
    let mesh_of = |root: &mut json::Root, name: String, positions: json::Index<json::Accessor>, colours: json::Index<json::Accessor>, mode: json::mesh::Mode| -> json::Index<json::Node> {
        let mut attributes = std::collections::BTreeMap::new();
        attributes.insert(Valid(json::mesh::Semantic::Positions), positions);
        attributes.insert(Valid(json::mesh::Semantic::Colors(0)), colours);
        let mesh = root.push(json::Mesh {
            extensions: Default::default(),
            extras: Default::default(),
            name: Some(name.clone()),
            primitives: vec![json::mesh::Primitive { attributes, extensions: Default::default(), extras: Default::default(), indices: None, material: None, mode: Valid(mode), targets: None }],
            weights: None,
        });
        root.push(json::Node { mesh: Some(mesh), name: Some(name), ..Default::default() })
    };
    let mut nodes = Vec::new();
    if !keep.is_empty() {
        let positions: Vec<[f32; 3]> = keep.iter().map(|&i| to_gltf([points[i * 3], points[i * 3 + 1], points[i * 3 + 2]])).collect();
        let bytes: Vec<u8> = positions.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        let colours: Vec<u8> = keep.iter().flat_map(|&i| [rec.images[i * 3], rec.images[i * 3 + 1], rec.images[i * 3 + 2]]).collect();
        let p = add(&mut root, &mut bin, &bytes, positions.len(), true, Some(bounds_of(&positions)));
        let c = add(&mut root, &mut bin, &colours, positions.len(), false, None);
        nodes.push(mesh_of(&mut root, "points".into(), p, c, json::mesh::Mode::Points));
    }
    // Frustums sized to the scene, as the viewer draws them.
    let centres: Vec<[f32; 3]> = rec.cameras.iter().map(|c| c.center()).collect();
    let extent = {
        let (lo, hi) = bounds_of(&keep.iter().step_by((keep.len() / 20_000).max(1)).map(|&i| [points[i * 3], points[i * 3 + 1], points[i * 3 + 2]]).chain(centres.iter().copied()).collect::<Vec<_>>());
        ((0..3).map(|a| (hi[a] - lo[a]).powi(2)).sum::<f32>()).sqrt().max(1e-3)
    };
    for f in 0..rec.frames {
        let lines: Vec<[f32; 3]> = frustum_lines(rec, f, 0.03 * extent).into_iter().map(to_gltf).collect();
        let bytes: Vec<u8> = lines.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        let colour = if picks.contains(&f) { PICK } else { CAMERA };
        let colours: Vec<u8> = std::iter::repeat_n(colour, lines.len()).flatten().collect();
        let p = add(&mut root, &mut bin, &bytes, lines.len(), true, Some(bounds_of(&lines)));
        let c = add(&mut root, &mut bin, &colours, lines.len(), false, None);
        let source = rec.frame_indices.get(f).copied().unwrap_or(f as i64);
        nodes.push(mesh_of(&mut root, format!("camera {source:06}{}", if picks.contains(&f) { " (pick)" } else { "" }), p, c, json::mesh::Mode::Lines));
    }
    while bin.len() % 4 != 0 {
        bin.push(0);
    }
    root.push(json::Buffer { byte_length: USize64::from(bin.len()), name: None, uri: None, extensions: Default::default(), extras: Default::default() });
    let scene = root.push(json::Scene { extensions: Default::default(), extras: Default::default(), name: Some("spatial-viewer".into()), nodes });
    root.scene = Some(scene);
    let mut json_bytes = json::serialize::to_vec(&root)?;
    while json_bytes.len() % 4 != 0 {
        json_bytes.push(b' ');
    }
    let glb = gltf::binary::Glb {
        header: gltf::binary::Header { magic: *b"glTF", version: 2, length: (12 + 8 + json_bytes.len() + 8 + bin.len()) as u32 },
        json: std::borrow::Cow::Owned(json_bytes),
        bin: Some(std::borrow::Cow::Owned(bin)),
    };
    fsio::write_atomic(path, |out| Ok(glb.to_writer(out)?))?;
    Ok(GlbSummary { points: keep.len(), cameras: rec.frames })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::points::PointSource;

    /// The file reads back with the `gltf` crate's reader: a points mesh with every point, and one
    /// lines mesh (8 segments) per camera, picks named as such.
    #[test]
    fn the_glb_reads_back() {
        let rec = crate::pipeline::demo::build_demo(5);
        let dir = tempfile::Builder::new().prefix("sv-unit-glb-").tempdir().unwrap();
        let path = dir.path().join("scene.glb");
        let filter = PointFilter { source: PointSource::DepthAndCamera, threshold: f32::NEG_INFINITY, frame: None };
        let summary = write(&rec, &filter, &[1, 3], &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let doc = gltf::Gltf::from_slice(&bytes).unwrap();
        let meshes: Vec<_> = doc.meshes().collect();
        assert_eq!(meshes.len(), 1 + 5);
        let points = &meshes[0];
        assert_eq!(points.primitives().next().unwrap().mode(), gltf::mesh::Mode::Points);
        assert_eq!(points.primitives().next().unwrap().get(&gltf::Semantic::Positions).unwrap().count(), summary.points);
        let picks = doc.nodes().filter(|n| n.name().is_some_and(|s| s.ends_with("(pick)"))).count();
        assert_eq!(picks, 2);
        for m in &meshes[1..] {
            let prim = m.primitives().next().unwrap();
            assert_eq!(prim.mode(), gltf::mesh::Mode::Lines);
            assert_eq!(prim.get(&gltf::Semantic::Positions).unwrap().count(), 16);
        }
    }
}
