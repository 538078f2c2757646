//! Pillow's `Image.resize(..., BICUBIC)` on 8-bit RGB, reproduced exactly: separable
//! convolution (horizontal pass first, into an 8-bit intermediate), a = -0.5 cubic kernel widened
//! by the scale when shrinking, and 22-bit fixed-point coefficients with Pillow's rounding.
//! VGGT's preprocessing (and so every model input) depends on these exact bytes.
//! (fast_image_resize's Catmull-Rom was tried first: up to 5/255 off Pillow on real frames.)

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The a = -0.5 cubic kernel shared by Pillow and torch's antialiased bicubic.
pub(crate) fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output sample: the first input index and the fixed-point taps (`precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    const SUPPORT: f64 = 2.0;
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = SUPPORT * filter_scale;
    let ss = 1.0 / filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax).map(|x| bicubic_filter((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                k.iter_mut().for_each(|w| *w /= total);
            }
            let fixed = k
                .iter()
                .map(|&w| {
                    let v = w * (1u32 << PRECISION_BITS) as f64;
                    if w < 0.0 { (v - 0.5) as i32 } else { (v + 0.5) as i32 }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

#[inline]
fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes interleaved 8-bit pixels (`channels` per pixel) like Pillow's BICUBIC.
pub fn resize_bicubic_u8(src: &[u8], w: usize, h: usize, channels: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    assert_eq!(src.len(), w * h * channels);
    let round = 1i64 << (PRECISION_BITS - 1);
    let horizontal = if out_w != w {
        let coeffs = coefficients(w, out_w);
        let mut tmp = vec![0u8; h * out_w * channels];
        for y in 0..h {
            let row = &src[y * w * channels..][..w * channels];
            for (ox, (start, k)) in coeffs.iter().enumerate() {
                for c in 0..channels {
                    let mut acc = round;
                    for (i, &kk) in k.iter().enumerate() {
                        acc += row[(start + i) * channels + c] as i64 * kk as i64;
                    }
                    tmp[(y * out_w + ox) * channels + c] = clip8(acc);
                }
            }
        }
        tmp
    } else {
        src.to_vec()
    };
    if out_h == h {
        return horizontal;
    }
    let coeffs = coefficients(h, out_h);
    let stride = out_w * channels;
    let mut out = vec![0u8; out_h * stride];
    for (oy, (start, k)) in coeffs.iter().enumerate() {
        for x in 0..stride {
            let mut acc = round;
            for (i, &kk) in k.iter().enumerate() {
                acc += horizontal[(start + i) * stride + x] as i64 * kk as i64;
            }
            out[oy * stride + x] = clip8(acc);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant() {
        let src: Vec<u8> = (0..6 * 4 * 3).map(|v| (v * 7 % 256) as u8).collect();
        assert_eq!(resize_bicubic_u8(&src, 6, 4, 3, 6, 4), src);
        let flat = vec![200u8; 30 * 20 * 3];
        assert!(resize_bicubic_u8(&flat, 30, 20, 3, 11, 7).iter().all(|&v| v == 200));
        assert!(resize_bicubic_u8(&flat, 30, 20, 3, 64, 45).iter().all(|&v| v == 200));
    }
}
