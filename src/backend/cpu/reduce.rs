//! Reductions over one axis of an [outer, len, inner] view, and the softmax family and losses
//! built on them. Accumulations run in f64 where the sum is long (cross-entropy, KL, sums) so
//! results do not drift with batch size.

use rayon::prelude::*;

use super::PAR_MIN_ELEMS;
use crate::backend::DimGeom;

/// Run `f(outer_index, inner_index)` for every line along the axis; lines are independent.
/// Parallel over outer when the tensor is large.
fn for_lines(g: DimGeom, total: usize, f: impl Fn(usize, usize) + Sync) {
    if total >= PAR_MIN_ELEMS && g.outer > 1 {
        (0..g.outer).into_par_iter().for_each(|o| (0..g.inner).for_each(|i| f(o, i)));
    } else {
        for o in 0..g.outer {
            for i in 0..g.inner {
                f(o, i);
            }
        }
    }
}

/// A shared-mutable output whose lines are written by disjoint `for_lines` calls.
struct Lines(*mut f32);
// SAFETY: every (outer, inner) line touches a disjoint set of indices of the buffer.
unsafe impl Sync for Lines {}
impl Lines {
    #[inline(always)]
    fn set(&self, idx: usize, v: f32) {
        // SAFETY: callers index inside the buffer, and no two lines share an index.
        unsafe { *self.0.add(idx) = v }
    }
}

#[inline(always)]
fn at(g: DimGeom, o: usize, k: usize, i: usize) -> usize {
    (o * g.len + k) * g.inner + i
}

pub fn reduce_sum(x: &[f32], g: DimGeom) -> Vec<f32> {
    let mut out = vec![0.0f32; g.outer * g.inner];
    if g.inner == 1 {
        for (o, v) in out.iter_mut().enumerate() {
            *v = x[o * g.len..(o + 1) * g.len].iter().map(|&v| v as f64).sum::<f64>() as f32;
        }
        return out;
    }
    // inner > 1: accumulate rows so the inner loop is contiguous.
    for o in 0..g.outer {
        let mut acc = vec![0.0f64; g.inner];
        for k in 0..g.len {
            let row = &x[at(g, o, k, 0)..at(g, o, k, 0) + g.inner];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as f64;
            }
        }
        for (d, a) in out[o * g.inner..(o + 1) * g.inner].iter_mut().zip(acc) {
            *d = a as f32;
        }
    }
    out
}

/// Sum x over the dims where `to` is 1 (the adjoint of broadcasting), dims of equal rank.
pub fn sum_to(x: &[f32], dims: &[usize], to: &[usize]) -> Vec<f32> {
    let mut cur = x.to_vec();
    let mut cur_dims = dims.to_vec();
    for d in 0..dims.len() {
        if to[d] == 1 && cur_dims[d] != 1 {
            cur = reduce_sum(&cur, DimGeom::new(&cur_dims, d));
            cur_dims[d] = 1;
        }
    }
    cur
}

fn first_argmax(x: &[f32], g: DimGeom, o: usize, i: usize) -> usize {
    let mut best = 0;
    let mut bv = x[at(g, o, 0, i)];
    for k in 1..g.len {
        let v = x[at(g, o, k, i)];
        // NaN propagates as the maximum, as in PyTorch.
        if v > bv || (v.is_nan() && !bv.is_nan()) {
            bv = v;
            best = k;
        }
    }
    best
}

pub fn reduce_max(x: &[f32], g: DimGeom) -> Vec<f32> {
    let mut out = vec![0.0; g.outer * g.inner];
    for o in 0..g.outer {
        for i in 0..g.inner {
            out[o * g.inner + i] = x[at(g, o, first_argmax(x, g, o, i), i)];
        }
    }
    out
}

pub fn reduce_max_backward(x: &[f32], dy: &[f32], g: DimGeom) -> Vec<f32> {
    let mut dx = vec![0.0; x.len()];
    for o in 0..g.outer {
        for i in 0..g.inner {
            dx[at(g, o, first_argmax(x, g, o, i), i)] = dy[o * g.inner + i];
        }
    }
    dx
}

/// Softmax (or log-softmax) of one contiguous row into `out`: exp is evaluated once per element.
fn softmax_row(x: &[f32], out: &mut [f32], log: bool) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut s = 0.0f32;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - m).exp();
        s += *o;
    }
    if log {
        let lse = m + s.ln();
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v - lse;
        }
    } else {
        let inv = 1.0 / s;
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

/// Softmax (or log-softmax) along the axis, max-subtracted. Rows that are contiguous (the
/// usual last-dim softmax) take a straight loop per row; other axes go through `for_lines`.
pub fn softmax(x: &[f32], g: DimGeom, log: bool) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    if g.inner == 1 {
        let len = g.len.max(1);
        if x.len() >= PAR_MIN_ELEMS {
            y.par_chunks_mut(len).zip(x.par_chunks(len)).for_each(|(o, r)| softmax_row(r, o, log));
        } else {
            y.chunks_mut(len).zip(x.chunks(len)).for_each(|(o, r)| softmax_row(r, o, log));
        }
        return y;
    }
    let out = Lines(y.as_mut_ptr());
    for_lines(g, x.len(), |o, i| {
        let line: Vec<f32> = (0..g.len).map(|k| x[at(g, o, k, i)]).collect();
        let mut res = vec![0.0; g.len];
        softmax_row(&line, &mut res, log);
        for (k, v) in res.into_iter().enumerate() {
            out.set(at(g, o, k, i), v);
        }
    });
    y
}

/// softmax: dx = y·(dy − Σ dy·y); log-softmax: dx = dy − e^y·Σ dy.
pub fn softmax_backward(y: &[f32], dy: &[f32], g: DimGeom, log: bool) -> Vec<f32> {
    let mut dx = vec![0.0; y.len()];
    let out = Lines(dx.as_mut_ptr());
    for_lines(g, y.len(), |o, i| {
        if log {
            let s: f32 = (0..g.len).map(|k| dy[at(g, o, k, i)]).sum();
            for k in 0..g.len {
                let j = at(g, o, k, i);
                out.set(j, dy[j] - y[j].exp() * s);
            }
        } else {
            let s: f32 = (0..g.len).map(|k| dy[at(g, o, k, i)] * y[at(g, o, k, i)]).sum();
            for k in 0..g.len {
                let j = at(g, o, k, i);
                out.set(j, y[j] * (dy[j] - s));
            }
        }
    });
    dx
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    m + row.iter().map(|&v| (v - m).exp()).sum::<f32>().ln()
}

pub fn cross_entropy(logits: &[f32], labels: &[u32], rows: usize, classes: usize) -> f32 {
    let total: f64 = (0..rows)
        .map(|r| {
            let row = &logits[r * classes..(r + 1) * classes];
            (log_sum_exp(row) - row[labels[r] as usize]) as f64
        })
        .sum();
    (total / rows as f64) as f32
}

/// d mean CE / d logits = (softmax − onehot)·dloss / rows.
pub fn cross_entropy_backward(logits: &[f32], labels: &[u32], dloss: f32, rows: usize, classes: usize) -> Vec<f32> {
    let mut d = softmax(logits, DimGeom { outer: rows, len: classes, inner: 1 }, false);
    let s = dloss / rows as f32;
    for r in 0..rows {
        d[r * classes + labels[r] as usize] -= 1.0;
        for v in &mut d[r * classes..(r + 1) * classes] {
            *v *= s;
        }
    }
    d
}

/// Σ p·(log p − log q) / rows, with 0·log 0 = 0 (PyTorch's `xlogy` convention).
pub fn kl_div(log_q: &[f32], p: &[f32], rows: usize) -> f32 {
    let total: f64 =
        log_q.iter().zip(p).map(|(&lq, &p)| if p > 0.0 { p as f64 * ((p as f64).ln() - lq as f64) } else { 0.0 }).sum();
    (total / rows as f64) as f32
}

pub fn kl_div_backward(log_q: &[f32], p: &[f32], dloss: f32, rows: usize) -> (Vec<f32>, Vec<f32>) {
    let s = dloss / rows as f32;
    let dq = p.iter().map(|&p| -p * s).collect();
    let dp = log_q.iter().zip(p).map(|(&lq, &p)| if p > 0.0 { (p.ln() + 1.0 - lq) * s } else { 0.0 }).collect();
    (dq, dp)
}

fn line_norm(x: &[f32], g: DimGeom, o: usize, i: usize) -> f32 {
    (0..g.len).map(|k| (x[at(g, o, k, i)] as f64).powi(2)).sum::<f64>().sqrt() as f32
}

pub fn normalize(x: &[f32], g: DimGeom, eps: f32) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    let out = Lines(y.as_mut_ptr());
    for_lines(g, x.len(), |o, i| {
        let inv = 1.0 / line_norm(x, g, o, i).max(eps);
        for k in 0..g.len {
            let j = at(g, o, k, i);
            out.set(j, x[j] * inv);
        }
    });
    y
}

/// y = x / max(n, eps): where n > eps, dx = (dy − y·(y·dy)) / n; otherwise dx = dy / eps.
pub fn normalize_backward(x: &[f32], dy: &[f32], g: DimGeom, eps: f32) -> Vec<f32> {
    let mut dx = vec![0.0; x.len()];
    let out = Lines(dx.as_mut_ptr());
    for_lines(g, x.len(), |o, i| {
        let n = line_norm(x, g, o, i);
        if n > eps {
            let dot: f32 = (0..g.len).map(|k| x[at(g, o, k, i)] * dy[at(g, o, k, i)]).sum();
            let c = dot / (n * n);
            for k in 0..g.len {
                let j = at(g, o, k, i);
                out.set(j, (dy[j] - x[j] * c) / n);
            }
        } else {
            for k in 0..g.len {
                let j = at(g, o, k, i);
                out.set(j, dy[j] / eps);
            }
        }
    });
    dx
}
