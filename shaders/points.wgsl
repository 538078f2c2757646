// Point-cloud splats: one camera-facing quad per point, instanced from a 16-byte-per-point
// buffer that is uploaded once. Point size, colour mode and the per-frame camera centres are
// uniforms; the confidence and frame filters are draw ranges chosen on the CPU.

#import bevy_pbr::mesh_view_bindings::view

const MAX_FRAMES: u32 = 256u;

// Colour modes: the discriminants of `ColorMode` in app/src/gui/state.rs (a test keeps them in step).
const COLOR_MODE_IMAGE: u32 = 0u;
const COLOR_MODE_CONFIDENCE: u32 = 1u;
const COLOR_MODE_DEPTH: u32 = 2u;
const COLOR_MODE_FRAME_INDEX: u32 = 3u;
// Recoloured on the CPU (each point in its first covering pick's colour): drawn as image colours.
const COLOR_MODE_FIRST_COVERING_PICK: u32 = 4u;

struct PointUniform {
    // x: point size in pixels, y: colour mode (COLOR_MODE_*),
    // z: frame count, w: unused
    params: vec4<f32>,
    // x, y: distance range for the depth colouring
    depth_range: vec4<f32>,
    // First instance of each frame (4 per vec4).
    frame_starts: array<vec4<u32>, 64>,
    // Camera centre of each frame (xyz).
    centers: array<vec4<f32>, 256>,
};

@group(3) @binding(0) var<uniform> cloud: PointUniform;

struct Vertex {
    @location(0) corner: vec3<f32>,
    @location(3) point: vec3<f32>,
    // rgb: image colour, a: confidence percentile rank
    @location(4) color_rank: vec4<f32>,
};

struct VertexOutput {
    @builtin(position) clip_position: vec4<f32>,
    @location(0) color: vec3<f32>,
    @location(1) uv: vec2<f32>,
};

fn frame_start(i: u32) -> u32 {
    return cloud.frame_starts[i / 4u][i % 4u];
}

// The frame an instance belongs to: binary search over the frame starts.
fn frame_of(instance: u32) -> u32 {
    var lo = 0u;
    var hi = min(u32(cloud.params.z), MAX_FRAMES);
    loop {
        if (hi - lo <= 1u) {
            break;
        }
        let mid = (lo + hi) / 2u;
        if (frame_start(mid) <= instance) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// Turbo colour map (polynomial approximation by Google, public domain).
fn turbo(x_in: f32) -> vec3<f32> {
    let x = clamp(x_in, 0.0, 1.0);
    let v4 = vec4<f32>(1.0, x, x * x, x * x * x);
    let v2 = v4.zw * v4.z;
    let r = dot(v4, vec4<f32>(0.13572138, 4.61539260, -42.66032258, 132.13108234)) + dot(v2, vec2<f32>(-152.94239396, 59.28637943));
    let g = dot(v4, vec4<f32>(0.09140261, 2.19418839, 4.84296658, -14.18503333)) + dot(v2, vec2<f32>(4.27729857, 2.82956604));
    let b = dot(v4, vec4<f32>(0.10667330, 12.64194608, -60.58204836, 110.36276771)) + dot(v2, vec2<f32>(-89.90310912, 27.34824973));
    return clamp(vec3<f32>(r, g, b), vec3<f32>(0.0), vec3<f32>(1.0));
}

fn hue(h: f32) -> vec3<f32> {
    let k = vec3<f32>(5.0, 3.0, 1.0);
    let p = abs(fract(vec3<f32>(h) + k / 6.0) * 6.0 - 3.0);
    return clamp(p - 1.0, vec3<f32>(0.0), vec3<f32>(1.0)) * 0.85 + 0.1;
}

// sRGB bytes to the linear colour the render target expects.
fn srgb_to_linear(c: vec3<f32>) -> vec3<f32> {
    return select(pow((c + 0.055) / 1.055, vec3<f32>(2.4)), c / 12.92, c <= vec3<f32>(0.04045));
}

@vertex
fn vertex(v: Vertex, @builtin(instance_index) instance: u32) -> VertexOutput {
    var out: VertexOutput;
    let clip = view.clip_from_world * vec4<f32>(v.point, 1.0);
    let corner = v.corner.xy * 2.0;
    // Screen-constant size: the quad spans `size` pixels whatever the distance.
    let offset = corner * cloud.params.x / view.viewport.zw * clip.w;
    out.clip_position = vec4<f32>(clip.xy + offset, clip.zw);
    out.uv = corner;
    let mode = u32(cloud.params.y + 0.5);
    var color = srgb_to_linear(v.color_rank.rgb);
    if (mode == COLOR_MODE_CONFIDENCE) {
        color = srgb_to_linear(turbo(v.color_rank.a));
    } else if (mode == COLOR_MODE_DEPTH) {
        let f = frame_of(instance);
        let d = distance(v.point, cloud.centers[f].xyz);
        let t = (d - cloud.depth_range.x) / max(cloud.depth_range.y - cloud.depth_range.x, 1e-6);
        color = srgb_to_linear(turbo(1.0 - t));
    } else if (mode == COLOR_MODE_FRAME_INDEX) {
        let f = frame_of(instance);
        color = srgb_to_linear(hue(f32(f) / max(cloud.params.z, 1.0) * 0.8));
    }
    out.color = color;
    return out;
}

@fragment
fn fragment(in: VertexOutput) -> @location(0) vec4<f32> {
    // Round splats.
    if (dot(in.uv, in.uv) > 1.0) {
        discard;
    }
    return vec4<f32>(in.color, 1.0);
}
