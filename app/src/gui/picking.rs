//! GPU picking of the point under the cursor (WGSL in `shaders/pick.wgsl`). The main world asks
//! for a pick when the cursor, the camera or the cloud changes; the render world draws the shown
//! points into a `PICK_WINDOW`² integer target covering only the pixels around the cursor (ids =
//! instance + 1, depth-tested like the view) and reads those few bytes back. No CPU work grows with
//! the point count: a pick is one small draw and a 2 KiB readback, and at most one is in flight.

use super::renderer::{PointCloudGpu, PointCloudRender};
use bevy::mesh::VertexBufferLayout;
use bevy::prelude::*;
use bevy::render::{
    Render, RenderApp, RenderStartup, RenderSystems,
    extract_resource::{ExtractResource, ExtractResourcePlugin},
    render_resource::{binding_types::uniform_buffer_sized, *},
    renderer::{RenderDevice, RenderQueue},
};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Side of the square of pixels around the cursor that is searched (the shader's constant).
pub const PICK_WINDOW: u32 = 9;
/// Bytes per row of the readback (wgpu's copy alignment).
const ROW_BYTES: u32 = 256;

/// Where to pick: the cursor and the camera as the view draws them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PickAt {
    /// The cursor in physical pixels from the viewport's top-left corner.
    pub cursor: UVec2,
    /// The viewport's size in physical pixels.
    pub viewport: UVec2,
    pub clip_from_world: Mat4,
    /// Splat diameter in physical pixels.
    pub point_size: f32,
}

/// The pick the render world should do; a new serial asks again.
#[derive(Resource, Clone, Default, ExtractResource)]
pub struct PickQuery {
    pub serial: u64,
    pub at: Option<PickAt>,
}

impl PickQuery {
    /// Asks for a pick at `at` unless that is what was asked last.
    pub fn ask(&mut self, at: Option<PickAt>) {
        if self.at != at {
            self.at = at;
            self.serial += 1;
        }
    }
}

/// What the GPU found: the instance under (or nearest to) the cursor in the cloud of `version`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PickResult {
    pub serial: u64,
    pub version: u64,
    pub instance: Option<u32>,
}

/// Results arriving from the render world (main world).
#[derive(Resource)]
pub struct PickResults {
    pub rx: Receiver<PickResult>,
    /// The newest result received.
    pub last: Option<PickResult>,
    /// Results received so far (for `bench render`).
    pub received: u64,
}

/// Render-world CPU time of the last pick's encoding and submission, in nanoseconds (for
/// `bench render`: it must not grow with the points).
pub static LAST_PICK_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The id nearest the window's centre in a `PICK_WINDOW`² readback (rows `ROW_BYTES` apart).
pub fn nearest_id(bytes: &[u8]) -> Option<u32> {
    let n = PICK_WINDOW as i32;
    let c = n / 2;
    let mut best: Option<(i32, u32)> = None;
    for y in 0..n {
        for x in 0..n {
            let at = (y as usize) * ROW_BYTES as usize + (x as usize) * 4;
            let Some(b) = bytes.get(at..at + 4) else {
                continue;
            };
            let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let d = (x - c) * (x - c) + (y - c) * (y - c);
            if id != 0 && best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, id - 1));
            }
        }
    }
    best.map(|b| b.1)
}

pub struct PickingPlugin;

impl Plugin for PickingPlugin {
    fn build(&self, app: &mut App) {
        let shader = app
            .world_mut()
            .resource_mut::<Assets<Shader>>()
            .add(Shader::from_wgsl(
                include_str!("../../../shaders/pick.wgsl"),
                "shaders/pick.wgsl",
            ));
        let (tx, rx) = crossbeam_channel::unbounded();
        app.init_resource::<PickQuery>()
            .insert_resource(PickResults {
                rx,
                last: None,
                received: 0,
            })
            .add_plugins(ExtractResourcePlugin::<PickQuery>::default());
        let Some(render_app) = app.get_sub_app_mut(RenderApp) else {
            return;
        };
        render_app
            .insert_resource(PickGpu {
                shader,
                tx: Some(tx),
                ..default()
            })
            .add_systems(RenderStartup, init_pick_pipeline)
            .add_systems(Render, run_pick.in_set(RenderSystems::PrepareBindGroups));
    }
}

/// The pick pass's GPU state (render world).
#[derive(Resource, Default)]
struct PickGpu {
    shader: Handle<Shader>,
    tx: Option<Sender<PickResult>>,
    layout: Option<BindGroupLayoutDescriptor>,
    pipeline: Option<CachedRenderPipelineId>,
    ids: Option<TextureView>,
    ids_texture: Option<Texture>,
    depth: Option<TextureView>,
    readback: Option<Buffer>,
    uniform: Option<Buffer>,
    bind_group: Option<BindGroup>,
    done_serial: u64,
    in_flight: Arc<AtomicBool>,
}

/// Uniform block, laid out as `PickUniform` in the WGSL.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct PickUniform {
    clip_from_world: [[f32; 4]; 4],
    crop: [f32; 4],
    params: [f32; 4],
}

fn init_pick_pipeline(
    mut gpu: ResMut<PickGpu>,
    pipeline_cache: Res<PipelineCache>,
    device: Res<RenderDevice>,
) {
    let layout = BindGroupLayoutDescriptor::new(
        "pick uniform",
        &BindGroupLayoutEntries::single(ShaderStages::VERTEX, uniform_buffer_sized(false, None)),
    );
    let descriptor = RenderPipelineDescriptor {
        label: Some("point picking".into()),
        layout: vec![layout.clone()],
        vertex: VertexState {
            shader: gpu.shader.clone(),
            entry_point: Some("vertex".into()),
            buffers: vec![VertexBufferLayout {
                array_stride: size_of::<super::cloud::PointInstance>() as u64,
                step_mode: VertexStepMode::Instance,
                attributes: vec![VertexAttribute {
                    format: VertexFormat::Float32x3,
                    offset: 0,
                    shader_location: 0,
                }],
            }],
            ..default()
        },
        fragment: Some(FragmentState {
            shader: gpu.shader.clone(),
            entry_point: Some("fragment".into()),
            targets: vec![Some(ColorTargetState {
                format: TextureFormat::R32Uint,
                blend: None,
                write_mask: ColorWrites::ALL,
            })],
            ..default()
        }),
        primitive: PrimitiveState {
            cull_mode: None,
            ..default()
        },
        // Bevy's projections are reversed-Z: nearer is greater.
        depth_stencil: Some(DepthStencilState {
            format: TextureFormat::Depth32Float,
            depth_write_enabled: Some(true),
            depth_compare: Some(CompareFunction::Greater),
            stencil: default(),
            bias: default(),
        }),
        ..default()
    };
    gpu.pipeline = Some(pipeline_cache.queue_render_pipeline(descriptor));
    let size = Extent3d {
        width: PICK_WINDOW,
        height: PICK_WINDOW,
        depth_or_array_layers: 1,
    };
    let texture = |label: &'static str, format: TextureFormat| {
        device.create_texture(&TextureDescriptor {
            label: Some(label),
            size,
            mip_level_count: 1,
            sample_count: 1,
            dimension: TextureDimension::D2,
            format,
            usage: TextureUsages::RENDER_ATTACHMENT | TextureUsages::COPY_SRC,
            view_formats: &[],
        })
    };
    let ids = texture("pick ids", TextureFormat::R32Uint);
    gpu.ids = Some(ids.create_view(&TextureViewDescriptor::default()));
    gpu.ids_texture = Some(ids);
    gpu.depth = Some(
        texture("pick depth", TextureFormat::Depth32Float)
            .create_view(&TextureViewDescriptor::default()),
    );
    gpu.readback = Some(device.create_buffer(&BufferDescriptor {
        label: Some("pick readback"),
        size: (ROW_BYTES * PICK_WINDOW) as u64,
        usage: BufferUsages::COPY_DST | BufferUsages::MAP_READ,
        mapped_at_creation: false,
    }));
    let uniform = device.create_buffer(&BufferDescriptor {
        label: Some("pick uniform"),
        size: size_of::<PickUniform>() as u64,
        usage: BufferUsages::UNIFORM | BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind_layout = pipeline_cache.get_bind_group_layout(&layout);
    gpu.bind_group = Some(device.create_bind_group(
        "pick uniform",
        &bind_layout,
        &BindGroupEntries::single(uniform.as_entire_binding()),
    ));
    gpu.uniform = Some(uniform);
    gpu.layout = Some(layout);
}

fn run_pick(
    query: Option<Res<PickQuery>>,
    render: Option<Res<PointCloudRender>>,
    cloud: Res<PointCloudGpu>,
    gpu: ResMut<PickGpu>,
    device: Res<RenderDevice>,
    queue: Res<RenderQueue>,
    pipeline_cache: Res<PipelineCache>,
) {
    let Some(query) = query else { return };
    let started = std::time::Instant::now();
    let gpu = gpu.into_inner();
    if query.serial == gpu.done_serial || gpu.in_flight.load(Ordering::Acquire) {
        return;
    }
    let Some(tx) = gpu.tx.clone() else { return };
    let serial = query.serial;
    let version = cloud.version;
    // Nothing to pick (no cursor in the view, no points): answered at once.
    let (Some(at), Some(instances)) = (query.at, cloud.instances.as_ref()) else {
        gpu.done_serial = serial;
        let _ = tx.send(PickResult {
            serial,
            version,
            instance: None,
        });
        return;
    };
    // The cloud on the GPU must be the one asked about (a new one is uploaded first).
    if render.is_some_and(|r| r.version != cloud.version) {
        return;
    }
    let Some(pipeline) = gpu
        .pipeline
        .and_then(|id| pipeline_cache.get_render_pipeline(id))
    else {
        return;
    };
    let (
        Some(ids),
        Some(depth),
        Some(readback),
        Some(uniform),
        Some(bind_group),
        Some(ids_texture),
    ) = (
        &gpu.ids,
        &gpu.depth,
        &gpu.readback,
        &gpu.uniform,
        &gpu.bind_group,
        &gpu.ids_texture,
    )
    else {
        return;
    };
    let viewport = at.viewport.as_vec2().max(Vec2::ONE);
    let cursor_ndc = Vec2::new(
        (at.cursor.x as f32 + 0.5) / viewport.x * 2.0 - 1.0,
        1.0 - (at.cursor.y as f32 + 0.5) / viewport.y * 2.0,
    );
    let block = PickUniform {
        clip_from_world: at.clip_from_world.to_cols_array_2d(),
        crop: [
            cursor_ndc.x,
            cursor_ndc.y,
            viewport.x / PICK_WINDOW as f32,
            viewport.y / PICK_WINDOW as f32,
        ],
        params: [at.point_size, viewport.x, viewport.y, 0.0],
    };
    queue.write_buffer(uniform, 0, bytemuck::bytes_of(&block));
    let mut encoder = device.create_command_encoder(&CommandEncoderDescriptor {
        label: Some("point picking"),
    });
    {
        let mut pass = encoder.begin_render_pass(&RenderPassDescriptor {
            label: Some("point picking"),
            color_attachments: &[Some(RenderPassColorAttachment {
                view: ids,
                depth_slice: None,
                resolve_target: None,
                ops: Operations {
                    load: LoadOp::Clear(Default::default()),
                    store: StoreOp::Store,
                },
            })],
            depth_stencil_attachment: Some(RenderPassDepthStencilAttachment {
                view: depth,
                depth_ops: Some(Operations {
                    load: LoadOp::Clear(0.0),
                    store: StoreOp::Discard,
                }),
                stencil_ops: None,
            }),
            ..default()
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.set_vertex_buffer(0, (**instances).slice(..));
        for &(first, n) in &cloud.draws {
            if n > 0 {
                pass.draw(0..6, first..first + n);
            }
        }
    }
    encoder.copy_texture_to_buffer(
        ids_texture.as_image_copy(),
        TexelCopyBufferInfo {
            buffer: readback,
            layout: TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(ROW_BYTES),
                rows_per_image: Some(PICK_WINDOW),
            },
        },
        Extent3d {
            width: PICK_WINDOW,
            height: PICK_WINDOW,
            depth_or_array_layers: 1,
        },
    );
    queue.submit([encoder.finish()]);
    LAST_PICK_NS.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    gpu.done_serial = serial;
    gpu.in_flight.store(true, Ordering::Release);
    let in_flight = gpu.in_flight.clone();
    let buffer = readback.clone();
    // Mapped when the queue is next submitted (Bevy submits every frame).
    readback.slice(..).map_async(MapMode::Read, move |mapped| {
        let instance = match mapped {
            Ok(()) => {
                let id = nearest_id(&buffer.slice(..).get_mapped_range());
                buffer.unmap();
                id
            }
            Err(_) => None,
        };
        in_flight.store(false, Ordering::Release);
        let _ = tx.send(PickResult {
            serial,
            version,
            instance,
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window the shader crops to is the one the readback is searched in.
    #[test]
    fn the_pick_window_matches_the_shader() {
        let wgsl = include_str!("../../../shaders/pick.wgsl");
        assert!(
            wgsl.contains(&format!("const PICK_WINDOW: u32 = {PICK_WINDOW}u;")),
            "shaders/pick.wgsl's PICK_WINDOW is not {PICK_WINDOW}"
        );
        assert!(PICK_WINDOW % 2 == 1 && PICK_WINDOW * 4 <= ROW_BYTES);
    }

    #[test]
    fn the_id_nearest_the_cursor_wins() {
        let mut bytes = vec![0u8; (ROW_BYTES * PICK_WINDOW) as usize];
        assert_eq!(nearest_id(&bytes), None);
        let mut put = |x: usize, y: usize, id: u32| {
            bytes[y * ROW_BYTES as usize + x * 4..][..4].copy_from_slice(&id.to_le_bytes())
        };
        put(0, 0, 7);
        put(5, 4, 12);
        put(8, 8, 3);
        assert_eq!(nearest_id(&bytes), Some(11));
    }
}
