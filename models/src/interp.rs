//! Antialiased bicubic resampling of small float grids, equal to PyTorch's
//! `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` in size mode
//! (separable; horizontal pass first, the same a = -0.5 cubic kernel as Pillow, support widened
//! when shrinking), in f32 rather than Pillow's 8-bit fixed point.

/// Weights of one output sample: the first input index and its taps.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let inv_scale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..out_size)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5).floor().max(0.0)) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(in_size);
            let mut weights: Vec<f64> = (xmin..xmax).map(|j| crate::resample::bicubic_filter((j as f64 - center + 0.5) * inv_scale)).collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps { start: xmin, weights: weights.into_iter().map(|w| w as f32).collect() }
        })
        .collect()
}

/// Resizes `channels` planes of `in_h x in_w` (channel-last: data[(y*in_w + x)*channels + c])
/// to `out_h x out_w`, channel-last.
pub fn resize_bicubic_aa(data: &[f32], in_h: usize, in_w: usize, channels: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    assert_eq!(data.len(), in_h * in_w * channels);
    let tx = taps(in_w, out_w);
    let ty = taps(in_h, out_h);
    // Horizontal pass: [in_h, out_w, C].
    let mut tmp = vec![0f32; in_h * out_w * channels];
    for y in 0..in_h {
        for (ox, t) in tx.iter().enumerate() {
            let dst = &mut tmp[(y * out_w + ox) * channels..][..channels];
            for (k, &w) in t.weights.iter().enumerate() {
                let src = &data[(y * in_w + t.start + k) * channels..][..channels];
                for c in 0..channels {
                    dst[c] += w * src[c];
                }
            }
        }
    }
    // Vertical pass: [out_h, out_w, C].
    let mut out = vec![0f32; out_h * out_w * channels];
    for (oy, t) in ty.iter().enumerate() {
        for (k, &w) in t.weights.iter().enumerate() {
            let src_row = &tmp[(t.start + k) * out_w * channels..][..out_w * channels];
            let dst_row = &mut out[oy * out_w * channels..][..out_w * channels];
            for (d, s) in dst_row.iter_mut().zip(src_row) {
                *d += w * s;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let data: Vec<f32> = (0..5 * 7 * 2).map(|v| v as f32 * 0.37).collect();
        let out = resize_bicubic_aa(&data, 5, 7, 2, 5, 7);
        for (a, b) in data.iter().zip(&out) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn constant_stays_constant_when_shrinking_and_growing() {
        let data = vec![2.5f32; 37 * 37];
        for (h, w) in [(4, 5), (21, 37), (60, 80)] {
            let out = resize_bicubic_aa(&data, 37, 37, 1, h, w);
            assert!(out.iter().all(|v| (v - 2.5).abs() < 1e-5), "{h}x{w}");
        }
    }
}
