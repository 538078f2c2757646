//! DPT heads for depth (`exp`) and world points (`inv_log`), both with an `expp1` confidence.
//! Four aggregated layers are projected, resized to four scales, fused RefineNet-style with
//! bilinear (align_corners) upsampling, and brought back to the input resolution.

use super::config::VggtConfig;
use crate::nn::layer_norm;
use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, VarBuilder};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DptActivation {
    /// Depth: `exp`.
    Exp,
    /// World points: `sign(x) * expm1(|x|)`.
    InvLog,
}

fn conv(in_c: usize, out_c: usize, k: usize, stride: usize, padding: usize, bias: bool, vb: VarBuilder) -> Result<Conv> {
    let weight = vb.get((out_c, in_c, k, k), "weight")?;
    let bias = if bias { Some(vb.get(out_c, "bias")?) } else { None };
    Ok(Conv(Conv2d::new(weight, bias, Conv2dConfig { padding, stride, ..Default::default() })))
}

/// `nn.Conv2d`; f32 CPU maps go through [`crate::cpu::conv2d_stride1`] (3x3 kernels by Winograd
/// tiles, OpenBLAS products, no unfolding), which is where the heads spend their time, or, strided,
/// through one product over the unfolded input.
#[derive(Debug, Clone)]
struct Conv(Conv2d);

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // A head takes seconds per frame at full size: let a cancel land between its convs.
        crate::nn::check_cancelled()?;
        let config = self.0.config();
        if config.dilation == 1 && config.groups == 1 && crate::cpu::is_cpu_f32(x) {
            let (n, c_in, h, w) = x.dims4()?;
            let (c_out, _, k, _) = self.0.weight().dims4()?;
            let (pad, stride) = (config.padding, config.stride);
            let x = x.contiguous()?;
            let views = (crate::cpu::f32_view(&x), crate::cpu::f32_view(self.0.weight()), self.0.bias().map(crate::cpu::f32_view));
            if let (Some(xv), Some(wv), None | Some(Some(_))) = &views {
                let bias = views.2.as_ref().and_then(|b| b.as_ref()).map(|b| b.slice());
                let out = if stride == 1 {
                    crate::cpu::conv2d_stride1(xv.slice(), n, c_in, h, w, wv.slice(), c_out, k, pad, bias, crate::cpu::ConvAlgorithm::DEFAULT)
                } else {
                    crate::cpu::conv2d_unfolded(xv.slice(), n, c_in, h, w, wv.slice(), c_out, k, stride, pad, bias)
                };
                let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
                return Tensor::from_vec(out, (n, c_out, ho, wo), x.device());
            }
        }
        self.0.forward(x)
    }
}

/// `relu -> conv3x3 -> relu -> conv3x3`, plus the input. Upstream's ReLU is in-place, so the
/// skip connection adds the *rectified* input; we reproduce that.
#[derive(Debug, Clone)]
struct ResidualConvUnit {
    conv1: Conv,
    conv2: Conv,
}

impl ResidualConvUnit {
    fn new(features: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { conv1: conv(features, features, 3, 1, 1, true, vb.pp("conv1"))?, conv2: conv(features, features, 3, 1, 1, true, vb.pp("conv2"))? })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.relu()?;
        let out = self.conv2.forward(&self.conv1.forward(&x)?.relu()?)?;
        out + x
    }
}

#[derive(Debug, Clone)]
struct FusionBlock {
    res_conf_unit1: Option<ResidualConvUnit>,
    res_conf_unit2: ResidualConvUnit,
    out_conv: Conv,
}

impl FusionBlock {
    fn new(features: usize, has_residual: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            res_conf_unit1: if has_residual { Some(ResidualConvUnit::new(features, vb.pp("resConfUnit1"))?) } else { None },
            res_conf_unit2: ResidualConvUnit::new(features, vb.pp("resConfUnit2"))?,
            out_conv: conv(features, features, 1, 1, 0, true, vb.pp("out_conv"))?,
        })
    }
    /// Fuses `x` with the skip feature, then upsamples to `size` (or x2).
    fn forward(&self, x: &Tensor, skip: Option<&Tensor>, size: Option<(usize, usize)>) -> Result<Tensor> {
        let mut out = x.clone();
        if let (Some(unit), Some(skip)) = (&self.res_conf_unit1, skip) {
            out = (out + unit.forward(skip)?)?;
        }
        let out = self.res_conf_unit2.forward(&out)?;
        let (h, w) = out.dims4().map(|(_, _, h, w)| (h, w))?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        // Upstream resizes, then applies the 1x1 out_conv. Both are linear and the resize's
        // weights per output pixel sum to one (so the bias passes through): convolving first
        // gives the same map from a quarter of the pixels.
        upsample(&self.out_conv.forward(&out)?, th, tw, None)
    }
}

#[derive(Debug, Clone)]
enum Resize {
    Up(ConvTranspose2d),
    Identity,
    Down(Conv),
}

impl Resize {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Resize::Up(c) => {
                if crate::cpu::is_cpu_f32(x) {
                    // stride == kernel here: the transposed conv is one product and a scatter.
                    let (n, c_in, h, w) = x.dims4()?;
                    let (_, c_out, k, _) = c.weight().dims4()?;
                    let x = x.contiguous()?;
                    if let (Some(xv), Some(wv), Some(Some(bv))) = (crate::cpu::f32_view(&x), crate::cpu::f32_view(c.weight()), c.bias().map(crate::cpu::f32_view)) {
                        let out = crate::cpu::conv_transpose_patch(xv.slice(), n, c_in, h, w, wv.slice(), c_out, k, Some(bv.slice()));
                        return Tensor::from_vec(out, (n, c_out, h * k, w * k), x.device());
                    }
                }
                c.forward(x)
            }
            Resize::Identity => Ok(x.clone()),
            Resize::Down(c) => c.forward(x),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DptHead {
    norm: candle_nn::LayerNorm,
    projects: Vec<Conv>,
    resize_layers: Vec<Resize>,
    layer_rn: Vec<Conv>,
    refinenets: Vec<FusionBlock>, // refinenet1..4
    output_conv1: Conv,
    output_conv2a: Conv,
    output_conv2b: Conv,
    layer_idx: [usize; 4],
    patch_size: usize,
    activation: DptActivation,
}

/// Frames processed together by a head on a GPU; the heads are strictly per-frame. On the CPU
/// one frame at a time: the full-resolution maps (128 channels at the image size) of 8 frames of
/// 518x294 were 0.6 GB each, and the products run per frame anyway.
pub const FRAMES_CHUNK: usize = 8;

impl DptHead {
    pub fn new(cfg: &VggtConfig, output_dim: usize, activation: DptActivation, vb: VarBuilder) -> Result<Self> {
        let dim_in = cfg.head_dim_in();
        let d = &cfg.dpt_head;
        let oc = d.out_channels;
        let f = d.features;
        let projects = (0..4).map(|i| conv(dim_in, oc[i], 1, 1, 0, true, vb.pp("projects").pp(i))).collect::<Result<Vec<_>>>()?;
        let ct = |i: usize, k: usize| -> Result<Resize> {
            let v = vb.pp("resize_layers").pp(i);
            Ok(Resize::Up(ConvTranspose2d::new(
                v.get((oc[i], oc[i], k, k), "weight")?,
                Some(v.get(oc[i], "bias")?),
                ConvTranspose2dConfig { padding: 0, output_padding: 0, stride: k, dilation: 1 },
            )))
        };
        let resize_layers = vec![ct(0, 4)?, ct(1, 2)?, Resize::Identity, Resize::Down(conv(oc[3], oc[3], 3, 2, 1, true, vb.pp("resize_layers").pp(3))?)];
        let scratch = vb.pp("scratch");
        let layer_rn = (0..4).map(|i| conv(oc[i], f, 3, 1, 1, false, scratch.pp(format!("layer{}_rn", i + 1)))).collect::<Result<Vec<_>>>()?;
        let refinenets = (1..=4).map(|i| FusionBlock::new(f, i != 4, scratch.pp(format!("refinenet{i}")))).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: layer_norm(dim_in, 1e-5, vb.pp("norm"))?,
            projects,
            resize_layers,
            layer_rn,
            refinenets,
            output_conv1: conv(f, f / 2, 3, 1, 1, true, scratch.pp("output_conv1"))?,
            output_conv2a: conv(f / 2, 32, 3, 1, 1, true, scratch.pp("output_conv2").pp(0))?,
            output_conv2b: conv(32, output_dim, 1, 1, 0, true, scratch.pp("output_conv2").pp(2))?,
            layer_idx: d.intermediate_layer_idx,
            patch_size: cfg.patch_size,
            activation,
        })
    }

    pub fn layer_indices(&self) -> [usize; 4] {
        self.layer_idx
    }

    /// layers: the aggregated layers (at least the four this head reads), [S, T, 2C];
    /// image size (H, W). Returns (prediction [S, H, W, C-1], confidence [S, H, W]).
    pub fn forward(&self, layers: &BTreeMap<usize, Tensor>, patch_start: usize, image_hw: (usize, usize)) -> Result<(Tensor, Tensor)> {
        let s = layers.values().next().map(|t| t.dim(0)).transpose()?.unwrap_or(0);
        let mut preds = Vec::new();
        let mut confs = Vec::new();
        let mut start = 0;
        while start < s {
            let chunk = if layers.values().next().is_some_and(|t| t.device().is_cpu()) { 1 } else { FRAMES_CHUNK };
            let len = chunk.min(s - start);
            crate::nn::check_cancelled()?;
            let (p, c) = self.forward_chunk(layers, patch_start, image_hw, start, len)?;
            preds.push(p);
            confs.push(c);
            start += len;
        }
        Ok((Tensor::cat(&preds, 0)?, Tensor::cat(&confs, 0)?))
    }

    fn forward_chunk(&self, layers: &BTreeMap<usize, Tensor>, patch_start: usize, (h, w): (usize, usize), start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let (gh, gw) = (h / self.patch_size, w / self.patch_size);
        let dtype = self.norm.weight().dtype();
        let mut feats = Vec::with_capacity(4);
        for (i, idx) in self.layer_idx.iter().enumerate() {
            let layer = layers.get(idx).ok_or_else(|| candle_core::Error::Msg(format!("DPT head needs aggregated layer {idx}, which was not kept")))?;
            let tokens = layer.narrow(0, start, len)?;
            let tokens = tokens.narrow(1, patch_start, tokens.dim(1)? - patch_start)?.to_dtype(dtype)?;
            let x = self.norm.forward(&tokens.contiguous()?)?;
            let c = x.dim(2)?;
            let x = x.transpose(1, 2)?.reshape((len, c, gh, gw))?;
            let x = self.projects[i].forward(&x)?;
            let x = add_uv_embedding(&x, w, h)?;
            feats.push(self.resize_layers[i].forward(&x)?);
        }
        let rn: Vec<Tensor> = feats.iter().zip(&self.layer_rn).map(|(f, c)| c.forward(f)).collect::<Result<_>>()?;
        let size = |t: &Tensor| t.dims4().map(|(_, _, h, w)| (h, w));
        let out = self.refinenets[3].forward(&rn[3], None, Some(size(&rn[2])?))?;
        let out = self.refinenets[2].forward(&out, Some(&rn[2]), Some(size(&rn[1])?))?;
        let out = self.refinenets[1].forward(&out, Some(&rn[1]), Some(size(&rn[0])?))?;
        let out = self.refinenets[0].forward(&out, Some(&rn[0]), None)?;
        let out = self.output_conv1.forward(&out)?;
        let out = upsample(&out, gh * self.patch_size, gw * self.patch_size, Some((w, h)))?;
        let out = self.output_conv2b.forward(&self.output_conv2a.forward(&out)?.relu()?)?;
        let out = out.to_dtype(DType::F32)?.permute((0, 2, 3, 1))?; // [S, H, W, C]
        let channels = out.dim(D::Minus1)?;
        let values = out.narrow(D::Minus1, 0, channels - 1)?;
        let conf = (out.narrow(D::Minus1, channels - 1, 1)?.squeeze(D::Minus1)?.exp()? + 1.0)?;
        let values = match self.activation {
            DptActivation::Exp => values.exp()?,
            DptActivation::InvLog => (values.sign()? * (values.abs()?.exp()? - 1.0)?)?,
        };
        Ok((values, conf))
    }
}

/// `F.interpolate(x, (th, tw), mode="bilinear", align_corners=True)` of a [N, C, h, w] map
/// (multithreaded on the CPU: candle's took 0.13 s per full-size head output), then, given the
/// image's (width, height), [`add_uv_embedding`] (on the CPU plane by plane as each is resized,
/// rather than another pass over the full-size map).
fn upsample(x: &Tensor, th: usize, tw: usize, uv_of_image: Option<(usize, usize)>) -> Result<Tensor> {
    if crate::cpu::is_cpu_f32(x) {
        let (n, c, h, w) = x.dims4()?;
        let x = x.contiguous()?;
        if let Some(v) = crate::cpu::f32_view(&x) {
            let tables = uv_of_image.map(|(image_w, image_h)| UvTables::new(c, th, tw, image_w as f64 / image_h as f64));
            let out = crate::cpu::upsample_bilinear_align_corners(v.slice(), n * c, h, w, th, tw, |plane, values| {
                if let Some(tables) = &tables {
                    tables.add_to_plane(plane % c, values);
                }
            });
            return Tensor::from_vec(out, (n, c, th, tw), x.device());
        }
    }
    let out = x.upsample_bilinear2d(th, tw, true)?;
    match uv_of_image {
        Some((image_w, image_h)) => add_uv_embedding(&out, image_w, image_h),
        None => Ok(out),
    }
}

/// Adds 0.1 x the sin-cos embedding of the normalised view-plane UV grid to a [N, C, h, w] map
/// (`_apply_pos_embed`); `w`/`h` are the image's, which set the aspect ratio.
fn add_uv_embedding(x: &Tensor, image_w: usize, image_h: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let tables = UvTables::new(c, h, w, image_w as f64 / image_h as f64);
    if crate::cpu::is_cpu_f32(x) {
        use rayon::prelude::*;
        // Added plane by plane from the per-row / per-column tables, without materialising the
        // [C, h, w] embedding (0.4 s per full-size head output through candle).
        let x = x.contiguous()?;
        if let Some(v) = crate::cpu::f32_view(&x) {
            let mut out = v.slice().to_vec();
            out.par_chunks_mut(h * w).enumerate().for_each(|(plane, p)| tables.add_to_plane(plane % c, p));
            return Tensor::from_vec(out, x.dims(), x.device());
        }
    }
    let emb = tables.on_device(c, x.device())?.to_dtype(x.dtype())?.unsqueeze(0)?;
    x.broadcast_add(&emb)
}

/// The channel-first [C, h, w] embedding [sin(u w), cos(u w), sin(v w), cos(v w)], each C/4
/// wide, kept separable: the u channels vary along x only and the v channels along y only, so
/// the sines and cosines are taken once per column / row (not 20 M times per 518x294 map).
struct UvTables {
    quarter: usize,
    h: usize,
    w: usize,
    /// [quarter, w]
    sin_u: Vec<f32>,
    cos_u: Vec<f32>,
    /// [quarter, h]
    sin_v: Vec<f32>,
    cos_v: Vec<f32>,
}

impl UvTables {
    fn new(c: usize, h: usize, w: usize, aspect: f64) -> Self {
        let diag = (1.0 + aspect * aspect).sqrt();
        let (span_x, span_y) = (aspect / diag, 1.0 / diag);
        // torch.linspace in f32, as upstream builds the grid in the feature dtype.
        let linspace = |lo: f64, n: usize| -> Vec<f64> {
            let (lo, hi) = (lo as f32, -lo as f32);
            if n == 1 {
                return vec![lo as f64];
            }
            let step = (hi - lo) / (n - 1) as f32;
            (0..n).map(|i| if i < n / 2 { lo + step * i as f32 } else { hi - step * (n - 1 - i) as f32 } as f64).collect()
        };
        let u = linspace(-span_x * (w - 1) as f64 / w as f64, w);
        let v = linspace(-span_y * (h - 1) as f64 / h as f64, h);
        let quarter = c / 4;
        let omega: Vec<f64> = (0..quarter).map(|k| 1.0 / 100f64.powf(k as f64 / quarter as f64)).collect();
        let table = |coords: &[f64], f: fn(f64) -> f64| -> Vec<f32> {
            omega.iter().flat_map(|om| coords.iter().map(move |p| (0.1 * f(p * om) as f32 as f64) as f32)).collect()
        };
        Self { quarter, h, w, sin_u: table(&u, f64::sin), cos_u: table(&u, f64::cos), sin_v: table(&v, f64::sin), cos_v: table(&v, f64::cos) }
    }

    /// Adds channel `ch`'s embedding to its [h, w] plane.
    fn add_to_plane(&self, ch: usize, plane: &mut [f32]) {
        let (q, w) = (self.quarter, self.w);
        let (group, k) = (ch / q.max(1), ch % q.max(1));
        for (y, row) in plane.chunks_exact_mut(w).enumerate() {
            match group {
                0 => row.iter_mut().zip(&self.sin_u[k * w..(k + 1) * w]).for_each(|(v, e)| *v += e),
                1 => row.iter_mut().zip(&self.cos_u[k * w..(k + 1) * w]).for_each(|(v, e)| *v += e),
                2 => row.iter_mut().for_each(|v| *v += self.sin_v[k * self.h + y]),
                3 => row.iter_mut().for_each(|v| *v += self.cos_v[k * self.h + y]),
                _ => {} // channels past 4 * (C / 4) get no embedding
            }
        }
    }

    /// The embedding of `c` channels as one [c, h, w] f32 tensor on `device`, broadcast there from
    /// the per-column and per-row tables: a GPU gets kilobytes, not the full map (104 MB per
    /// full-size head output, built on the host, took the heads 2.5 s at 100 frames on an H200).
    fn on_device(&self, c: usize, device: &Device) -> Result<Tensor> {
        let (q, h, w) = (self.quarter, self.h, self.w);
        let u = Tensor::from_vec([self.sin_u.as_slice(), self.cos_u.as_slice()].concat(), (2 * q, 1, w), device)?.broadcast_as((2 * q, h, w))?;
        let v = Tensor::from_vec([self.sin_v.as_slice(), self.cos_v.as_slice()].concat(), (2 * q, h, 1), device)?.broadcast_as((2 * q, h, w))?;
        let mut parts = vec![u, v];
        if c > 4 * q {
            parts.push(Tensor::zeros((c - 4 * q, h, w), DType::F32, device)?); // no embedding
        }
        Tensor::cat(&parts, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broadcast_embedding_is_the_plane_by_plane_one() {
        // 10 channels: two per quarter and two past 4 * (C / 4), which get none; a non-square map.
        let (c, h, w) = (10, 3, 5);
        let tables = UvTables::new(c, h, w, 518.0 / 392.0);
        let broadcast: Vec<f32> = tables.on_device(c, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut planes = vec![0f32; c * h * w];
        for (ch, plane) in planes.chunks_exact_mut(h * w).enumerate() {
            tables.add_to_plane(ch, plane);
        }
        assert_eq!(broadcast, planes);
        assert!(planes[..8 * h * w].iter().any(|v| *v != 0.0) && planes[8 * h * w..].iter().all(|v| *v == 0.0));
    }
}
