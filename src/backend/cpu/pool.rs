//! Pooling and resampling on the CPU, with PyTorch's index conventions (floor mode, first
//! maximum, `count_include_pad`, adaptive bins, `nearest` and `bilinear` with
//! align_corners=False). Every op works plane by plane (one (n, c) pair), so planes are the unit
//! of parallelism; window geometry that does not depend on the plane is computed once.

use rayon::prelude::*;

use super::PAR_MIN_ELEMS;
use crate::backend::{InterpMode, Pool2dGeom, PoolKind, ResizeGeom};
use crate::error::Result;

/// Run `f(plane_index, plane_out)` over the `plane`-sized chunks of `out`, on the rayon pool
/// when the op touches at least `work` >= PAR_MIN_ELEMS elements (planes write disjoint chunks).
fn for_planes(out: &mut [f32], plane: usize, work: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if plane == 0 || out.is_empty() {
        return;
    }
    if work >= PAR_MIN_ELEMS && out.len() > plane {
        out.par_chunks_mut(plane).enumerate().for_each(|(p, o)| f(p, o));
    } else {
        out.chunks_mut(plane).enumerate().for_each(|(p, o)| f(p, o));
    }
}

/// One pooling window along one axis: the clipped input range [start, end) and, for
/// `count_include_pad`, the extent clipped only to the padded input (PyTorch's pool_size).
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    padded_len: usize,
}

/// Windows of output positions 0..out along an axis of length `input` (padding `pad`).
fn spans(input: usize, out: usize, kernel: usize, stride: usize, pad: usize) -> Vec<Span> {
    (0..out)
        .map(|o| {
            let s = (o * stride) as isize - pad as isize;
            let e_padded = (s + kernel as isize).min((input + pad) as isize);
            let padded_len = (e_padded - s).max(0) as usize;
            let start = s.max(0) as usize;
            let end = (s + kernel as isize).clamp(0, input as isize) as usize;
            Span { start, end: end.max(start), padded_len }
        })
        .collect()
}

pub fn pool2d(kind: PoolKind, x: &[f32], g: &Pool2dGeom) -> Result<Vec<f32>> {
    let (hw, plane_out) = (g.h * g.w, g.h_out * g.w_out);
    let mut y = vec![0.0f32; g.n * g.c * plane_out];
    let hs = spans(g.h, g.h_out, g.kernel.0, g.stride.0, g.pad.0);
    let ws = spans(g.w, g.w_out, g.kernel.1, g.stride.1, g.pad.1);
    let work = x.len().max(y.len()) * g.kernel.0 * g.kernel.1;
    for_planes(&mut y, plane_out, work, |p, out| {
        let xp = &x[p * hw..(p + 1) * hw];
        for (oh, sh) in hs.iter().enumerate() {
            for (ow, sw) in ws.iter().enumerate() {
                out[oh * g.w_out + ow] = match kind {
                    PoolKind::Max => match window_argmax(xp, g.w, sh, sw) {
                        Some(i) => xp[i],
                        // Only reachable for an all-padding window: PyTorch's initial value.
                        None => f32::NEG_INFINITY,
                    },
                    PoolKind::Avg { count_include_pad } => {
                        let mut s = 0.0f32;
                        for r in sh.start..sh.end {
                            s += xp[r * g.w + sw.start..r * g.w + sw.end].iter().sum::<f32>();
                        }
                        let div = avg_divisor(count_include_pad, sh, sw);
                        if div == 0 {
                            0.0
                        } else {
                            s / div as f32
                        }
                    }
                };
            }
        }
    });
    Ok(y)
}

/// Flat index (within the plane) of the first maximum of a window in row-major order; NaN wins,
/// as in PyTorch. None for an empty window.
#[inline]
fn window_argmax(xp: &[f32], w: usize, sh: &Span, sw: &Span) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for r in sh.start..sh.end {
        for c in sw.start..sw.end {
            let i = r * w + c;
            let v = xp[i];
            match best {
                Some((_, bv)) if !(v > bv || (v.is_nan() && !bv.is_nan())) => {}
                _ => best = Some((i, v)),
            }
        }
    }
    best.map(|(i, _)| i)
}

#[inline]
fn avg_divisor(count_include_pad: bool, sh: &Span, sw: &Span) -> usize {
    if count_include_pad {
        sh.padded_len * sw.padded_len
    } else {
        (sh.end - sh.start) * (sw.end - sw.start)
    }
}

pub fn pool2d_backward(kind: PoolKind, x: &[f32], dy: &[f32], g: &Pool2dGeom) -> Result<Vec<f32>> {
    let (hw, plane_out) = (g.h * g.w, g.h_out * g.w_out);
    let mut dx = vec![0.0f32; x.len()];
    let hs = spans(g.h, g.h_out, g.kernel.0, g.stride.0, g.pad.0);
    let ws = spans(g.w, g.w_out, g.kernel.1, g.stride.1, g.pad.1);
    let work = x.len().max(dy.len()) * g.kernel.0 * g.kernel.1;
    // Each output scatters into its window; windows overlap when stride < kernel, so each plane
    // accumulates its own chunk of dx serially.
    for_planes(&mut dx, hw, work, |p, dxp| {
        let xp = &x[p * hw..(p + 1) * hw];
        let dyp = &dy[p * plane_out..(p + 1) * plane_out];
        for (oh, sh) in hs.iter().enumerate() {
            for (ow, sw) in ws.iter().enumerate() {
                let d = dyp[oh * g.w_out + ow];
                match kind {
                    PoolKind::Max => {
                        if let Some(i) = window_argmax(xp, g.w, sh, sw) {
                            dxp[i] += d;
                        }
                    }
                    PoolKind::Avg { count_include_pad } => {
                        let div = avg_divisor(count_include_pad, sh, sw);
                        if div == 0 {
                            continue;
                        }
                        let v = d / div as f32;
                        for r in sh.start..sh.end {
                            for t in &mut dxp[r * g.w + sw.start..r * g.w + sw.end] {
                                *t += v;
                            }
                        }
                    }
                }
            }
        }
    });
    Ok(dx)
}

/// PyTorch's adaptive bins along one axis: [floor(i·in/out), ceil((i+1)·in/out)).
fn adaptive_bins(input: usize, out: usize) -> Vec<(usize, usize)> {
    (0..out).map(|i| (i * input / out, ((i + 1) * input).div_ceil(out))).collect()
}

pub fn adaptive_avg_pool2d(x: &[f32], g: &ResizeGeom) -> Result<Vec<f32>> {
    let (hw, plane_out) = (g.h * g.w, g.h_out * g.w_out);
    let mut y = vec![0.0f32; g.n * g.c * plane_out];
    let hb = adaptive_bins(g.h, g.h_out);
    let wb = adaptive_bins(g.w, g.w_out);
    // Bins overlap only when upsampling; the total work is about max(in, out) per plane.
    let work = x.len().max(y.len());
    for_planes(&mut y, plane_out, work, |p, out| {
        let xp = &x[p * hw..(p + 1) * hw];
        for (oh, &(h0, h1)) in hb.iter().enumerate() {
            for (ow, &(w0, w1)) in wb.iter().enumerate() {
                let mut s = 0.0f32;
                for r in h0..h1 {
                    s += xp[r * g.w + w0..r * g.w + w1].iter().sum::<f32>();
                }
                out[oh * g.w_out + ow] = s / ((h1 - h0) * (w1 - w0)) as f32;
            }
        }
    });
    Ok(y)
}

pub fn adaptive_avg_pool2d_backward(dy: &[f32], g: &ResizeGeom) -> Result<Vec<f32>> {
    let (hw, plane_out) = (g.h * g.w, g.h_out * g.w_out);
    let mut dx = vec![0.0f32; g.n * g.c * hw];
    let hb = adaptive_bins(g.h, g.h_out);
    let wb = adaptive_bins(g.w, g.w_out);
    let work = dx.len().max(dy.len());
    for_planes(&mut dx, hw, work, |p, dxp| {
        let dyp = &dy[p * plane_out..(p + 1) * plane_out];
        for (oh, &(h0, h1)) in hb.iter().enumerate() {
            for (ow, &(w0, w1)) in wb.iter().enumerate() {
                let v = dyp[oh * g.w_out + ow] / ((h1 - h0) * (w1 - w0)) as f32;
                for r in h0..h1 {
                    for t in &mut dxp[r * g.w + w0..r * g.w + w1] {
                        *t += v;
                    }
                }
            }
        }
    });
    Ok(dx)
}

/// Source taps of one output coordinate: input indices i0, i1 and their weights.
#[derive(Clone, Copy)]
struct Taps {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// Per-axis taps, computed in f32 as PyTorch's CPU kernels do (scale = in/out as float), so
/// indices match PyTorch even where f32 rounding decides a floor.
fn axis_taps(mode: InterpMode, input: usize, out: usize) -> Vec<Taps> {
    let scale = input as f32 / out as f32;
    (0..out)
        .map(|d| match mode {
            InterpMode::Nearest => {
                let i = ((d as f32 * scale).floor() as usize).min(input - 1);
                Taps { i0: i, i1: i, w0: 1.0, w1: 0.0 }
            }
            InterpMode::Bilinear => {
                let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(input - 1);
                let lambda = (src - i0 as f32).clamp(0.0, 1.0);
                let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
                Taps { i0, i1, w0: 1.0 - lambda, w1: lambda }
            }
        })
        .collect()
}

pub fn interpolate(mode: InterpMode, x: &[f32], g: &ResizeGeom) -> Result<Vec<f32>> {
    let (hw, plane_out) = (g.h * g.w, g.h_out * g.w_out);
    let mut y = vec![0.0f32; g.n * g.c * plane_out];
    let ht = axis_taps(mode, g.h, g.h_out);
    let wt = axis_taps(mode, g.w, g.w_out);
    let work = x.len().max(y.len()) * 4;
    for_planes(&mut y, plane_out, work, |p, out| {
        let xp = &x[p * hw..(p + 1) * hw];
        for (oh, th) in ht.iter().enumerate() {
            let row = &mut out[oh * g.w_out..(oh + 1) * g.w_out];
            let r0 = &xp[th.i0 * g.w..(th.i0 + 1) * g.w];
            match mode {
                InterpMode::Nearest => {
                    for (o, tw) in row.iter_mut().zip(&wt) {
                        *o = r0[tw.i0];
                    }
                }
                InterpMode::Bilinear => {
                    let r1 = &xp[th.i1 * g.w..(th.i1 + 1) * g.w];
                    for (o, tw) in row.iter_mut().zip(&wt) {
                        let top = tw.w0 * r0[tw.i0] + tw.w1 * r0[tw.i1];
                        let bot = tw.w0 * r1[tw.i0] + tw.w1 * r1[tw.i1];
                        *o = th.w0 * top + th.w1 * bot;
                    }
                }
            }
        }
    });
    Ok(y)
}

pub fn interpolate_backward(mode: InterpMode, dy: &[f32], g: &ResizeGeom) -> Result<Vec<f32>> {
    let (hw, plane_out) = (g.h * g.w, g.h_out * g.w_out);
    let mut dx = vec![0.0f32; g.n * g.c * hw];
    let ht = axis_taps(mode, g.h, g.h_out);
    let wt = axis_taps(mode, g.w, g.w_out);
    let work = dx.len().max(dy.len()) * 4;
    // The adjoint of the forward: every output scatters into its taps (taps repeat when
    // upsampling, so each plane accumulates serially into its own chunk of dx).
    for_planes(&mut dx, hw, work, |p, dxp| {
        let dyp = &dy[p * plane_out..(p + 1) * plane_out];
        for (oh, th) in ht.iter().enumerate() {
            let drow = &dyp[oh * g.w_out..(oh + 1) * g.w_out];
            match mode {
                InterpMode::Nearest => {
                    let r0 = &mut dxp[th.i0 * g.w..(th.i0 + 1) * g.w];
                    for (&d, tw) in drow.iter().zip(&wt) {
                        r0[tw.i0] += d;
                    }
                }
                InterpMode::Bilinear => {
                    for (&d, tw) in drow.iter().zip(&wt) {
                        let (a, b) = (th.w0 * d, th.w1 * d);
                        dxp[th.i0 * g.w + tw.i0] += tw.w0 * a;
                        dxp[th.i0 * g.w + tw.i1] += tw.w1 * a;
                        dxp[th.i1 * g.w + tw.i0] += tw.w0 * b;
                        dxp[th.i1 * g.w + tw.i1] += tw.w1 * b;
                    }
                }
            }
        }
    });
    Ok(dx)
}
