//! The point-cloud renderer: a custom instanced pipeline (WGSL in `shaders/points.wgsl`).
//! The CPU side ([`super::cloud`]) builds 16-byte points once per geometry; the render world
//! uploads them once per version. Per frame only a small uniform (size, colour mode, camera centres) and the list of
//! draw ranges (confidence and frame filters) change, so CPU time does not grow with the points.

use bevy::core_pipeline::core_3d::{Transparent3d, TransparentSortingInfo3d};
use bevy::ecs::system::{SystemParamItem, lifetimeless::*};
use bevy::mesh::{MeshVertexBufferLayoutRef, VertexBufferLayout};
use bevy::pbr::{
    MeshPipeline, MeshPipelineKey, MeshPipelineSystems, RenderMeshInstances, SetMeshBindGroup, SetMeshViewBindGroup,
    SetMeshViewBindingArrayBindGroup, ViewKeyCache,
};
use bevy::prelude::*;
use bevy::render::{
    Render, RenderApp, RenderStartup, RenderSystems,
    extract_component::{ExtractComponent, ExtractComponentPlugin},
    extract_resource::{ExtractResource, ExtractResourcePlugin},
    mesh::{RenderMesh, RenderMeshBufferInfo, allocator::MeshAllocator},
    render_asset::RenderAssets,
    render_phase::{
        AddRenderCommand, DrawFunctions, PhaseItem, PhaseItemExtraIndex, RenderCommand, RenderCommandResult, SetItemPipeline,
        TrackedRenderPass, ViewSortedRenderPhases,
    },
    render_resource::{binding_types::uniform_buffer_sized, *},
    renderer::{RenderDevice, RenderQueue},
    view::ExtractedView,
};
use super::cloud::{PointCloudBuffers, PointInstance, PointUniform};
use std::sync::Arc;

/// Duration of the last instance upload in nanoseconds, and its size in bytes (for `bench render`).
pub static LAST_UPLOAD_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static LAST_UPLOAD_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What the render world needs, extracted when it changes.
#[derive(Resource, Clone, Default, ExtractResource)]
pub struct PointCloudRender {
    pub data: Option<Arc<PointCloudBuffers>>,
    /// Bumped whenever `data` is replaced: triggers the one upload.
    pub version: u64,
    /// (first instance, count) per draw.
    pub draws: Vec<(u32, u32)>,
    pub uniform: PointUniform,
}

/// Marks the entity whose draw the point cloud rides on.
#[derive(Component, Clone, ExtractComponent)]
pub struct PointCloudEntity;

pub struct PointCloudRenderPlugin;

impl Plugin for PointCloudRenderPlugin {
    fn build(&self, app: &mut App) {
        let shader = app.world_mut().resource_mut::<Assets<Shader>>().add(Shader::from_wgsl(include_str!("../../../shaders/points.wgsl"), "shaders/points.wgsl"));
        app.init_resource::<PointCloudRender>()
            .add_plugins((ExtractComponentPlugin::<PointCloudEntity>::default(), ExtractResourcePlugin::<PointCloudRender>::default()));
        let Some(render_app) = app.get_sub_app_mut(RenderApp) else { return };
        render_app
            .insert_resource(PointShader(shader))
            .add_render_command::<Transparent3d, DrawPoints>()
            .init_resource::<SpecializedMeshPipelines<PointPipeline>>()
            .init_resource::<PointCloudGpu>()
            .add_systems(RenderStartup, init_point_pipeline.after(MeshPipelineSystems))
            .add_systems(Render, (queue_points.in_set(RenderSystems::QueueMeshes), prepare_points.in_set(RenderSystems::PrepareResources)));
    }
}

#[derive(Resource, Clone)]
struct PointShader(Handle<Shader>);

#[derive(Resource)]
struct PointPipeline {
    shader: Handle<Shader>,
    mesh_pipeline: MeshPipeline,
    layout: BindGroupLayoutDescriptor,
}

fn init_point_pipeline(mut commands: Commands, shader: Option<Res<PointShader>>, mesh_pipeline: Res<MeshPipeline>) {
    let Some(shader) = shader else { return };
    let layout = BindGroupLayoutDescriptor::new(
        "point cloud uniform",
        &BindGroupLayoutEntries::single(ShaderStages::VERTEX_FRAGMENT, uniform_buffer_sized(false, None)),
    );
    commands.insert_resource(PointPipeline { shader: shader.0.clone(), mesh_pipeline: mesh_pipeline.clone(), layout });
}

impl SpecializedMeshPipeline for PointPipeline {
    type Key = MeshPipelineKey;

    fn specialize(&self, key: Self::Key, layout: &MeshVertexBufferLayoutRef) -> Result<RenderPipelineDescriptor, SpecializedMeshPipelineError> {
        let mut descriptor = self.mesh_pipeline.specialize(key, layout)?;
        descriptor.label = Some("point cloud splats".into());
        descriptor.vertex.shader = self.shader.clone();
        descriptor.vertex.buffers.push(VertexBufferLayout {
            array_stride: size_of::<PointInstance>() as u64,
            step_mode: VertexStepMode::Instance,
            attributes: vec![
                VertexAttribute { format: VertexFormat::Float32x3, offset: 0, shader_location: 3 },
                VertexAttribute { format: VertexFormat::Unorm8x4, offset: 12, shader_location: 4 },
            ],
        });
        descriptor.primitive.cull_mode = None;
        descriptor.layout.truncate(3);
        descriptor.layout.push(self.layout.clone());
        if let Some(fragment) = descriptor.fragment.as_mut() {
            fragment.shader = self.shader.clone();
        }
        Ok(descriptor)
    }
}

/// GPU state of the point cloud in the render world.
#[derive(Resource, Default)]
pub(super) struct PointCloudGpu {
    /// The version of [`PointCloudRender::data`] in `instances` (what a picked index refers to).
    pub(super) version: u64,
    pub(super) instances: Option<Buffer>,
    uniform: Option<Buffer>,
    bind_group: Option<BindGroup>,
    pub(super) draws: Vec<(u32, u32)>,
}

fn prepare_points(
    render: Option<Res<PointCloudRender>>,
    mut gpu: ResMut<PointCloudGpu>,
    device: Res<RenderDevice>,
    queue: Res<RenderQueue>,
    pipeline: Option<Res<PointPipeline>>,
    pipeline_cache: Res<PipelineCache>,
) {
    let (Some(render), Some(pipeline)) = (render, pipeline) else { return };
    if render.version != gpu.version {
        gpu.version = render.version;
        let start = std::time::Instant::now();
        gpu.instances = render.data.as_ref().filter(|d| !d.points.is_empty()).map(|d| {
            device.create_buffer_with_data(&BufferInitDescriptor {
                label: Some("point cloud instances"),
                contents: bytemuck::cast_slice(&d.points),
                usage: BufferUsages::VERTEX,
            })
        });
        use std::sync::atomic::Ordering::Relaxed;
        LAST_UPLOAD_NS.store(start.elapsed().as_nanos() as u64, Relaxed);
        LAST_UPLOAD_BYTES.store(gpu.instances.as_ref().map(|b| b.size()).unwrap_or(0), Relaxed);
    }
    if gpu.uniform.is_none() {
        let buffer = device.create_buffer(&BufferDescriptor {
            label: Some("point cloud uniform"),
            size: size_of::<PointUniform>() as u64,
            usage: BufferUsages::UNIFORM | BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let layout = pipeline_cache.get_bind_group_layout(&pipeline.layout);
        gpu.bind_group = Some(device.create_bind_group("point cloud uniform", &layout, &BindGroupEntries::single(buffer.as_entire_binding())));
        gpu.uniform = Some(buffer);
    }
    if render.is_changed() || gpu.draws != render.draws {
        queue.write_buffer(gpu.uniform.as_ref().unwrap(), 0, bytemuck::bytes_of(&render.uniform));
        gpu.draws = render.draws.clone();
    }
}

#[allow(clippy::too_many_arguments)]
fn queue_points(
    draw_functions: Res<DrawFunctions<Transparent3d>>,
    pipeline: Option<Res<PointPipeline>>,
    mut pipelines: ResMut<SpecializedMeshPipelines<PointPipeline>>,
    pipeline_cache: Res<PipelineCache>,
    meshes: Res<RenderAssets<RenderMesh>>,
    render_mesh_instances: Res<RenderMeshInstances>,
    clouds: Query<(Entity, &bevy::render::sync_world::MainEntity), With<PointCloudEntity>>,
    mut phases: ResMut<ViewSortedRenderPhases<Transparent3d>>,
    views: Query<&ExtractedView>,
    view_key_cache: Res<ViewKeyCache>,
) {
    let Some(pipeline) = pipeline else { return };
    let draw = draw_functions.read().id::<DrawPoints>();
    for view in &views {
        let Some(phase) = phases.get_mut(&view.retained_view_entity) else { continue };
        let Some(&view_key) = view_key_cache.get(&view.retained_view_entity) else { continue };
        for (entity, main_entity) in &clouds {
            let Some(mesh_instance) = render_mesh_instances.render_mesh_queue_data(*main_entity) else { continue };
            let Some(mesh) = meshes.get(mesh_instance.mesh_asset_id()) else { continue };
            let key = view_key | MeshPipelineKey::from_primitive_topology_and_strip_index(mesh.primitive_topology(), mesh.index_format());
            let Ok(pipeline_id) = pipelines.specialize(&pipeline_cache, &pipeline, key, &mesh.layout) else { continue };
            phase.add_transient(Transparent3d {
                sorting_info: TransparentSortingInfo3d::Sorted { mesh_center: Vec3::ZERO, depth_bias: 0.0 },
                entity: (entity, *main_entity),
                pipeline: pipeline_id,
                draw_function: draw,
                distance: 0.0,
                batch_range: 0..1,
                extra_index: PhaseItemExtraIndex::None,
                indexed: true,
            });
        }
    }
}

type DrawPoints = (SetItemPipeline, SetMeshViewBindGroup<0>, SetMeshViewBindingArrayBindGroup<1>, SetMeshBindGroup<2>, DrawPointInstances);

struct DrawPointInstances;

impl<P: PhaseItem> RenderCommand<P> for DrawPointInstances {
    type Param = (SRes<RenderAssets<RenderMesh>>, SRes<RenderMeshInstances>, SRes<MeshAllocator>, SRes<PointCloudGpu>);
    type ViewQuery = ();
    type ItemQuery = ();

    fn render<'w>(
        item: &P,
        _view: (),
        _entity: Option<()>,
        (meshes, render_mesh_instances, mesh_allocator, gpu): SystemParamItem<'w, '_, Self::Param>,
        pass: &mut TrackedRenderPass<'w>,
    ) -> RenderCommandResult {
        let mesh_allocator = mesh_allocator.into_inner();
        let gpu = gpu.into_inner();
        let (Some(instances), Some(bind_group)) = (&gpu.instances, &gpu.bind_group) else { return RenderCommandResult::Skip };
        let Some(mesh_instance) = render_mesh_instances.render_mesh_queue_data(item.main_entity()) else { return RenderCommandResult::Skip };
        let Some(gpu_mesh) = meshes.into_inner().get(mesh_instance.mesh_asset_id()) else { return RenderCommandResult::Skip };
        let Some(vertex_slice) = mesh_allocator.mesh_vertex_slice(&mesh_instance.mesh_asset_id()) else { return RenderCommandResult::Skip };
        let RenderMeshBufferInfo::Indexed { index_format, count } = &gpu_mesh.buffer_info else { return RenderCommandResult::Skip };
        let Some(index_slice) = mesh_allocator.mesh_index_slice(&mesh_instance.mesh_asset_id()) else { return RenderCommandResult::Skip };
        pass.set_bind_group(3, bind_group, &[]);
        pass.set_vertex_buffer(0, vertex_slice.buffer.slice(..));
        pass.set_vertex_buffer(1, instances.slice(..));
        pass.set_index_buffer(index_slice.buffer.slice(..), *index_format);
        for &(first, n) in &gpu.draws {
            if n > 0 {
                pass.draw_indexed(index_slice.range.start..index_slice.range.start + count, vertex_slice.range.start as i32, first..first + n);
            }
        }
        RenderCommandResult::Success
    }
}
