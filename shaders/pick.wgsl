// Point picking: the same splats as `points.wgsl`, drawn into a small integer target that covers
// only the pixels around the cursor (the projection is cropped to them), each fragment writing its
// point's instance index + 1 (0: no point). Only that small target is read back, so picking costs
// no CPU work per point and the GPU only rasterises the few splats near the cursor.

// Side of the square target in pixels (the window of pixels around the cursor that is searched).
// `PICK_WINDOW` in app/src/gui/picking.rs (a test keeps them in step).
const PICK_WINDOW: u32 = 9u;

struct PickUniform {
    clip_from_world: mat4x4<f32>,
    // xy: the cursor in normalised device coordinates, zw: viewport size / PICK_WINDOW
    crop: vec4<f32>,
    // x: point size in pixels, yz: viewport size in pixels
    params: vec4<f32>,
};

@group(0) @binding(0) var<uniform> pick: PickUniform;

struct VertexOutput {
    @builtin(position) clip_position: vec4<f32>,
    @location(0) uv: vec2<f32>,
    @location(1) @interpolate(flat) id: u32,
};

@vertex
fn vertex(@builtin(vertex_index) vertex: u32, @builtin(instance_index) instance: u32, @location(0) point: vec3<f32>) -> VertexOutput {
    var corners = array<vec2<f32>, 6>(vec2(-1.0, -1.0), vec2(1.0, -1.0), vec2(1.0, 1.0), vec2(-1.0, -1.0), vec2(1.0, 1.0), vec2(-1.0, 1.0));
    let corner = corners[vertex];
    let clip = pick.clip_from_world * vec4<f32>(point, 1.0);
    // The splat as the view draws it: `size` pixels across whatever the distance.
    let xy = clip.xy + corner * pick.params.x / pick.params.yz * clip.w;
    var out: VertexOutput;
    // Crop to the window around the cursor: NDC' = (NDC - cursor) * viewport / window.
    out.clip_position = vec4<f32>((xy - pick.crop.xy * clip.w) * pick.crop.zw, clip.zw);
    out.uv = corner;
    out.id = instance + 1u;
    return out;
}

@fragment
fn fragment(in: VertexOutput) -> @location(0) u32 {
    if (dot(in.uv, in.uv) > 1.0) {
        discard;
    }
    return in.id;
}
