//! Times VGGT-1B's parts on zero weights: `cargo run --release -p spatial-models --example profile_vggt -- FRAMES H W`.
use candle_core::{DType, Device, Tensor};
use spatial_models::vggt::{Vggt, VggtConfig};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (s, h, w) = (args.first().copied().unwrap_or(2), args.get(1).copied().unwrap_or(224), args.get(2).copied().unwrap_or(224));
    let dev = Device::Cpu;
    let cfg = VggtConfig::vggt_1b();
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
    let model = Vggt::new(&cfg, vb.clone(), Some(vb))?;
    let images = Tensor::full(0.5f32, (s, 3, h, w), &dev)?;
    let t = Instant::now();
    let mut last = Instant::now();
    let mut cb = |i: usize, n: usize| {
        eprintln!("stage {i}/{n}: {:.2}s", last.elapsed().as_secs_f64());
        last = Instant::now();
        true
    };
    let agg = model.aggregator.forward(&images, &model.needed_layers(), false, Some(&mut cb))?.unwrap();
    eprintln!("aggregator {:.2}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    model.camera_head.as_ref().unwrap().forward(&agg.layers[&(cfg.depth - 1)])?;
    eprintln!("camera head {:.2}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    model.depth_head.as_ref().unwrap().forward(&agg.layers, agg.patch_start_idx, (h, w))?;
    eprintln!("depth head {:.2}s", t.elapsed().as_secs_f64());
    Ok(())
}
