//! Batchnorm and layernorm on the CPU.
//!
//! Statistics use shifted sums: Σ(x−K) and Σ(x−K)² with K one sample of the group (so the
//! terms are of the size of the spread, not of the mean, and nothing cancels catastrophically
//! when activations have a large mean), accumulated in f32 lanes inside blocks of `BLOCK`
//! elements and in f64 across blocks. That keeps each statistic to one read of x (SIMD-friendly)
//! with f64-grade accuracy. Outputs are written from (x−K), which is exact in f32 when x is near
//! K, so y keeps its precision even when the mean is large.
//!
//! Batchnorm works on x viewed as [n, c, hw]: rows of hw contiguous values, row r belongs to
//! channel r % c. Both passes run over rows (contiguous memory, parallel over rows); the
//! per-row partial sums are tiny and folded into channels serially.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::elementwise::relu as relu_f;
use super::PAR_MIN_ELEMS;
use crate::backend::NormGeom;
use crate::error::Result;

const LANES: usize = 8;
/// Elements summed in f32 before the partial sums move to f64.
const BLOCK: usize = 512;
/// Elements per rayon task at least (smaller tasks cost more to schedule than to run).
const TASK_ELEMS: usize = 4096;

/// (Σ(v−k), Σ(v−k)²).
fn shifted_sums(v: &[f32], k: f32) -> (f64, f64) {
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for blk in v.chunks(BLOCK) {
        let mut a = [0.0f32; LANES];
        let mut b = [0.0f32; LANES];
        let mut it = blk.chunks_exact(LANES);
        for ch in &mut it {
            for l in 0..LANES {
                let d = ch[l] - k;
                a[l] += d;
                b[l] += d * d;
            }
        }
        for (l, &x) in it.remainder().iter().enumerate() {
            let d = x - k;
            a[l] += d;
            b[l] += d * d;
        }
        s1 += a.iter().map(|&t| t as f64).sum::<f64>();
        s2 += b.iter().map(|&t| t as f64).sum::<f64>();
    }
    (s1, s2)
}

/// dy where the forward's ReLU passed (its output y > 0), else 0; dy itself without a ReLU.
#[inline(always)]
fn masked<const RELU: bool>(dy: f32, y: f32) -> f32 {
    // `y > 0` false for NaN too, as in the ReLU's own backward rule.
    if !RELU || y > 0.0 {
        dy
    } else {
        0.0
    }
}

/// (Σ(x−k), Σ dy, Σ dy·(x−k)) over matching slices; with RELU, dy masked by y (else y unread).
fn backward_sums<const RELU: bool>(x: &[f32], dy: &[f32], y: &[f32], k: f32) -> (f64, f64, f64) {
    let (mut s1, mut s2, mut s3) = (0.0f64, 0.0f64, 0.0f64);
    for ((xb, db), yb) in x.chunks(BLOCK).zip(dy.chunks(BLOCK)).zip(y.chunks(BLOCK)) {
        let mut a = [0.0f32; LANES];
        let mut b = [0.0f32; LANES];
        let mut c = [0.0f32; LANES];
        let mut xi = xb.chunks_exact(LANES);
        let mut di = db.chunks_exact(LANES);
        let mut yi = yb.chunks_exact(LANES);
        for ((xc, dc), yc) in (&mut xi).zip(&mut di).zip(&mut yi) {
            for l in 0..LANES {
                let d = xc[l] - k;
                let g = masked::<RELU>(dc[l], yc[l]);
                a[l] += d;
                b[l] += g;
                c[l] += g * d;
            }
        }
        for (l, ((&xv, &dv), &yv)) in xi.remainder().iter().zip(di.remainder()).zip(yi.remainder()).enumerate() {
            let d = xv - k;
            let g = masked::<RELU>(dv, yv);
            a[l] += d;
            b[l] += g;
            c[l] += g * d;
        }
        s1 += a.iter().map(|&t| t as f64).sum::<f64>();
        s2 += b.iter().map(|&t| t as f64).sum::<f64>();
        s3 += c.iter().map(|&t| t as f64).sum::<f64>();
    }
    (s1, s2, s3)
}

/// `f(row_index, row)` for every `len`-sized row of x, in parallel when x is large.
fn map_rows<T: Send>(x: &[f32], len: usize, f: impl Fn(usize, &[f32]) -> T + Sync + Send) -> Vec<T> {
    if x.len() >= PAR_MIN_ELEMS {
        x.par_chunks(len).enumerate().with_min_len(TASK_ELEMS.div_ceil(len)).map(|(r, row)| f(r, row)).collect()
    } else {
        x.chunks(len).enumerate().map(|(r, row)| f(r, row)).collect()
    }
}

/// A new vector of `total` floats built row by row: `f(row_index, out_row)` for every `len`-sized
/// row, in parallel when large. `f` writes every element of its row (the callers zip the row with
/// input slices of the same length), so the output needs no zero-fill first.
fn build_rows(total: usize, len: usize, f: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(total);
    let spare = &mut out.spare_capacity_mut()[..total];
    if total >= PAR_MIN_ELEMS {
        spare.par_chunks_mut(len).enumerate().with_min_len(TASK_ELEMS.div_ceil(len)).for_each(|(r, row)| f(r, row));
    } else {
        spare.chunks_mut(len).enumerate().for_each(|(r, row)| f(r, row));
    }
    // SAFETY: the capacity is at least total, and f has initialised every element of every row,
    // which together cover 0..total.
    unsafe { out.set_len(total) };
    out
}

/// Returns (y, mean[c], invstd[c]); updates running_mean/running_var in place.
pub fn batch_norm_train(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    relu: bool,
    g: &NormGeom,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (c, hw) = (g.c, g.hw);
    let m = g.n * hw;
    if m == 0 || c == 0 {
        return Ok((x.to_vec(), vec![0.0; c], vec![0.0; c]));
    }
    let shift: Vec<f32> = (0..c).map(|ch| x[ch * hw]).collect();

    // Pass 1: per-row shifted sums, folded into channels.
    let rows = map_rows(x, hw, |r, row| shifted_sums(row, shift[r % c]));
    let mut s1 = vec![0.0f64; c];
    let mut s2 = vec![0.0f64; c];
    for (r, &(a, b)) in rows.iter().enumerate() {
        s1[r % c] += a;
        s2[r % c] += b;
    }

    let mut mean = vec![0.0f32; c];
    let mut invstd = vec![0.0f32; c];
    // y = (x−K)·scale + offset, with offset = beta − (mean−K)·scale.
    let mut scale = vec![0.0f32; c];
    let mut offset = vec![0.0f32; c];
    let mom = g.momentum as f64;
    for ch in 0..c {
        let dm = s1[ch] / m as f64;
        let var = (s2[ch] / m as f64 - dm * dm).max(0.0);
        let mu = shift[ch] as f64 + dm;
        let inv = 1.0 / (var + g.eps as f64).sqrt();
        mean[ch] = mu as f32;
        invstd[ch] = inv as f32;
        let sc = inv * gamma[ch] as f64;
        scale[ch] = sc as f32;
        offset[ch] = (beta[ch] as f64 - dm * sc) as f32;
        // PyTorch updates the running variance with the unbiased estimate.
        let var_unbiased = if m > 1 { var * m as f64 / (m - 1) as f64 } else { var };
        running_mean[ch] = ((1.0 - mom) * running_mean[ch] as f64 + mom * mu) as f32;
        running_var[ch] = ((1.0 - mom) * running_var[ch] as f64 + mom * var_unbiased) as f32;
    }

    // Pass 2: normalise (and activate).
    let y = build_rows(x.len(), hw, |r, yr| {
        let ch = r % c;
        let (k, sc, off) = (shift[ch], scale[ch], offset[ch]);
        let xr = &x[r * hw..(r + 1) * hw];
        if relu {
            yr.iter_mut().zip(xr).for_each(|(o, &v)| {
                o.write(relu_f((v - k) * sc + off));
            });
        } else {
            yr.iter_mut().zip(xr).for_each(|(o, &v)| {
                o.write((v - k) * sc + off);
            });
        }
    });
    Ok((y, mean, invstd))
}

/// y = x·scale[c] + shift[c] (+ residual), then max(y, 0) when `relu`: see `Backend::channel_affine`.
pub fn channel_affine(
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    g: &NormGeom,
) -> Result<Vec<f32>> {
    let (c, hw) = (g.c, g.hw);
    g.check_channel_affine(x.len(), scale.len(), shift.len(), residual.map(|r| r.len()))?;
    if x.is_empty() || hw == 0 {
        return Ok(Vec::new());
    }
    // One loop per variant, so each compiles to a straight vector loop.
    Ok(build_rows(x.len(), hw, |r, yr| {
        let (sc, sh) = (scale[r % c], shift[r % c]);
        let xr = &x[r * hw..(r + 1) * hw];
        match (residual, relu) {
            (None, false) => yr.iter_mut().zip(xr).for_each(|(o, &v)| {
                o.write(v * sc + sh);
            }),
            (None, true) => yr.iter_mut().zip(xr).for_each(|(o, &v)| {
                o.write(relu_f(v * sc + sh));
            }),
            (Some(res), false) => yr.iter_mut().zip(xr).zip(&res[r * hw..]).for_each(|((o, &v), &q)| {
                o.write(v * sc + sh + q);
            }),
            (Some(res), true) => yr.iter_mut().zip(xr).zip(&res[r * hw..]).for_each(|((o, &v), &q)| {
                o.write(relu_f(v * sc + sh + q));
            }),
        }
    }))
}

/// Returns (dx, dgamma[c], dbeta[c]).
///
/// The batch mean is recomputed from x inside the pass that sums dy anyway (one subtraction per
/// element), so the gradient does not inherit the f32 rounding of the saved mean, which matters
/// when the mean is large against the spread. The saved invstd is used as is.
pub fn batch_norm_backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    _mean: &[f32],
    invstd: &[f32],
    relu_out: Option<&[f32]>,
    g: &NormGeom,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (c, hw) = (g.c, g.hw);
    let m = g.n * hw;
    if m == 0 || c == 0 {
        return Ok((vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]));
    }
    if let Some(y) = relu_out {
        if y.len() != x.len() {
            return Err(crate::Error::shape(
                "batch_norm_backward",
                format!("relu output has {} values, x has {}", y.len(), x.len()),
            ));
        }
    }
    let shift: Vec<f32> = (0..c).map(|ch| x[ch * hw]).collect();
    // Without a ReLU the mask operand is dy itself, never read.
    let (relu, y) = (relu_out.is_some(), relu_out.unwrap_or(dy));

    // Pass 1: Σ(x−K), Σdy, Σdy·(x−K) per row, folded into channels.
    let rows = map_rows(x, hw, |r, xr| {
        let span = r * hw..(r + 1) * hw;
        if relu {
            backward_sums::<true>(xr, &dy[span.clone()], &y[span], shift[r % c])
        } else {
            backward_sums::<false>(xr, &dy[span.clone()], &y[span], shift[r % c])
        }
    });
    let mut sx = vec![0.0f64; c];
    let mut sdy = vec![0.0f64; c];
    let mut sdyx = vec![0.0f64; c];
    for (r, &(a, b, d)) in rows.iter().enumerate() {
        sx[r % c] += a;
        sdy[r % c] += b;
        sdyx[r % c] += d;
    }

    // dx = γ·invstd/M · (M·dy − Σdy − x̂·Σdy·x̂) = a·dy − b·(x−K) + cst per channel.
    let mut dgamma = vec![0.0f32; c];
    let mut dbeta = vec![0.0f32; c];
    let mut ca = vec![0.0f32; c];
    let mut cb = vec![0.0f32; c];
    let mut cst = vec![0.0f32; c];
    let mf = m as f64;
    for ch in 0..c {
        let inv = invstd[ch] as f64;
        let dm = sx[ch] / mf;
        let sum_dy_xmu = sdyx[ch] - dm * sdy[ch];
        dgamma[ch] = (sum_dy_xmu * inv) as f32;
        dbeta[ch] = sdy[ch] as f32;
        let a = gamma[ch] as f64 * inv;
        let b = a * inv * inv * sum_dy_xmu / mf;
        ca[ch] = a as f32;
        cb[ch] = b as f32;
        cst[ch] = (b * dm - a * sdy[ch] / mf) as f32;
    }

    // Pass 2: dx.
    let dx = build_rows(x.len(), hw, |r, dr| {
        let ch = r % c;
        let (k, a, b, k0) = (shift[ch], ca[ch], cb[ch], cst[ch]);
        let span = r * hw..(r + 1) * hw;
        let rows = dr.iter_mut().zip(&x[span.clone()]).zip(&dy[span.clone()]).zip(&y[span]);
        if relu {
            rows.for_each(|(((o, &xv), &d), &yv)| {
                o.write(a * masked::<true>(d, yv) - b * (xv - k) + k0);
            });
        } else {
            rows.for_each(|(((o, &xv), &d), _)| {
                o.write(a * d - b * (xv - k) + k0);
            });
        }
    });
    Ok((dx, dgamma, dbeta))
}

/// Rows g.n, cols g.c. Returns (y, mean[rows], invstd[rows]).
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], g: &NormGeom) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (rows, cols) = (g.n, g.c);
    if rows == 0 || cols == 0 {
        return Ok((x.to_vec(), vec![0.0; rows], vec![0.0; rows]));
    }
    let mut y = vec![0.0f32; x.len()];
    let eps = g.eps as f64;
    // One row is small enough to stay in L1 between its statistics and its output.
    let row = |xr: &[f32], yr: &mut [f32]| -> (f32, f32) {
        let k = xr[0];
        let (s1, s2) = shifted_sums(xr, k);
        let dm = s1 / cols as f64;
        let var = (s2 / cols as f64 - dm * dm).max(0.0);
        let inv = 1.0 / (var + eps).sqrt();
        let (dmf, invf) = (dm as f32, inv as f32);
        for (((o, &v), &ga), &be) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
            *o = ((v - k) - dmf) * invf * ga + be;
        }
        ((k as f64 + dm) as f32, invf)
    };
    let stats: Vec<(f32, f32)> = if x.len() >= PAR_MIN_ELEMS {
        y.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .with_min_len(TASK_ELEMS.div_ceil(cols))
            .map(|(yr, xr)| row(xr, yr))
            .collect()
    } else {
        y.chunks_mut(cols).zip(x.chunks(cols)).map(|(yr, xr)| row(xr, yr)).collect()
    };
    let (mean, invstd) = stats.into_iter().unzip();
    Ok((y, mean, invstd))
}

/// Returns (dx, dgamma[cols], dbeta[cols]).
///
/// Per row, with g = dy·γ and x̂ = (x−mean)·invstd: dx = invstd·(g − mean(g) − x̂·mean(g·x̂)).
/// dγ and dβ sum over rows: each block of rows accumulates its own f32 partials, which are
/// added across blocks in f64. As in batchnorm, the row mean is recomputed from x.
pub fn layer_norm_backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    _mean: &[f32],
    invstd: &[f32],
    g: &NormGeom,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (rows, cols) = (g.n, g.c);
    let mut dx = vec![0.0f32; x.len()];
    if rows == 0 || cols == 0 {
        return Ok((dx, vec![0.0; cols], vec![0.0; cols]));
    }
    let block_rows = (4 * TASK_ELEMS).div_ceil(cols);
    let block = |b: usize, dxb: &mut [f32]| -> (Vec<f32>, Vec<f32>) {
        let mut dg = vec![0.0f32; cols];
        let mut db = vec![0.0f32; cols];
        for (i, dxr) in dxb.chunks_mut(cols).enumerate() {
            let r = b * block_rows + i;
            let xr = &x[r * cols..(r + 1) * cols];
            let dyr = &dy[r * cols..(r + 1) * cols];
            let k = xr[0];
            let (mut sx, mut sg, mut sgx) = (0.0f64, 0.0f64, 0.0f64);
            for ((&xv, &d), &ga) in xr.iter().zip(dyr).zip(gamma) {
                let gv = (d * ga) as f64;
                let xk = (xv - k) as f64;
                sx += xk;
                sg += gv;
                sgx += gv * xk;
            }
            let n = cols as f64;
            let inv = invstd[r] as f64;
            let dm = sx / n;
            let mean_g = sg / n;
            let mean_gx = (sgx - dm * sg) * inv / n;
            let (dmf, invf, mgf, mgxf) = (dm as f32, inv as f32, mean_g as f32, mean_gx as f32);
            for (j, o) in dxr.iter_mut().enumerate() {
                let xhat = ((xr[j] - k) - dmf) * invf;
                let gv = dyr[j] * gamma[j];
                *o = invf * (gv - mgf - xhat * mgxf);
                dg[j] += dyr[j] * xhat;
                db[j] += dyr[j];
            }
        }
        (dg, db)
    };
    let parts: Vec<(Vec<f32>, Vec<f32>)> = if x.len() >= PAR_MIN_ELEMS {
        dx.par_chunks_mut(block_rows * cols).enumerate().map(|(b, dxb)| block(b, dxb)).collect()
    } else {
        dx.chunks_mut(block_rows * cols).enumerate().map(|(b, dxb)| block(b, dxb)).collect()
    };
    let mut dg = vec![0.0f64; cols];
    let mut db = vec![0.0f64; cols];
    for (pg, pb) in &parts {
        for j in 0..cols {
            dg[j] += pg[j] as f64;
            db[j] += pb[j] as f64;
        }
    }
    Ok((dx, dg.into_iter().map(|v| v as f32).collect(), db.into_iter().map(|v| v as f32).collect()))
}
