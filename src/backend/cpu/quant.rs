//! Fake quantisation (asymmetric min/max, per tensor or per channel; PyTorch's
//! `fake_quantize_per_channel_affine` formulas in f32, round half to even) and its
//! straight-through backward. The CUDA kernels (kernels/quant.cu) compute the same f32
//! operations in the same order, so both backends agree bit for bit.

use crate::backend::QuantGeom;
use crate::error::Result;

/// (scale, zero point) of one channel's values.
pub fn channel_qparams(x: &[f32], qmax: f32) -> (f32, f32) {
    let lo = x.iter().copied().fold(0.0f32, f32::min);
    let hi = x.iter().copied().fold(0.0f32, f32::max);
    let scale = ((hi - lo) / qmax).max(f32::EPSILON);
    let zp = (-(lo / scale).round_ties_even()).clamp(0.0, qmax);
    (scale, zp)
}

/// round(x·(1/scale)) + zp, before clamping: in [0, qmax] exactly where the STE passes gradients.
#[inline]
fn level(x: f32, inv_scale: f32, zp: f32) -> f32 {
    (x * inv_scale).round_ties_even() + zp
}

/// (y, scale per channel, zero point per channel).
pub fn fake_quant(x: &[f32], g: &QuantGeom) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    g.check("fake_quant", &[("x", x.len(), g.channels * g.len)])?;
    let qmax = g.qmax();
    let mut y = vec![0.0f32; x.len()];
    let (mut scales, mut zps) = (Vec::with_capacity(g.channels), Vec::with_capacity(g.channels));
    if g.len > 0 {
        for (xc, yc) in x.chunks(g.len).zip(y.chunks_mut(g.len)) {
            let (scale, zp) = channel_qparams(xc, qmax);
            let inv = 1.0 / scale;
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = (level(v, inv, zp).clamp(0.0, qmax) - zp) * scale;
            }
            scales.push(scale);
            zps.push(zp);
        }
    } else {
        scales.resize(g.channels, 1.0);
        zps.resize(g.channels, 0.0);
    }
    Ok((y, scales, zps))
}

pub fn fake_quant_backward(x: &[f32], dy: &[f32], scale: &[f32], zp: &[f32], g: &QuantGeom) -> Result<Vec<f32>> {
    let n = g.channels * g.len;
    g.check(
        "fake_quant_backward",
        &[
            ("x", x.len(), n),
            ("dy", dy.len(), n),
            ("scale", scale.len(), g.channels),
            ("zero_point", zp.len(), g.channels),
        ],
    )?;
    let qmax = g.qmax();
    let mut dx = vec![0.0f32; n];
    for (i, (o, (&v, &d))) in dx.iter_mut().zip(x.iter().zip(dy)).enumerate() {
        let c = i / g.len.max(1);
        let q = level(v, 1.0 / scale[c], zp[c]);
        *o = if (0.0..=qmax).contains(&q) { d } else { 0.0 };
    }
    Ok(dx)
}
