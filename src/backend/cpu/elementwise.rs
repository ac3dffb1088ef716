//! Elementwise ops: activations and their derivatives, broadcasting arithmetic, fused SGD.
//! Large tensors are split into chunks across the rayon pool; each chunk is a straight loop.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::PAR_MIN_ELEMS;
use crate::backend::{BinaryOp, SgdStep, UnaryOp};
use crate::error::{Error, Result};

const CHUNK: usize = 1 << 14;

/// A fresh vector of `n` values, each chunk filled by `fill(offset, chunk)` (in parallel when
/// large). Skips zero-initialisation: every op here writes each output exactly once.
fn fill_new(n: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    if n < PAR_MIN_ELEMS {
        fill(0, spare);
    } else {
        spare.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| fill(i * CHUNK, c));
    }
    // SAFETY: `fill` writes every element of every chunk (all callers zip the chunk with
    // inputs at least as long), so all n values are initialised.
    unsafe { out.set_len(n) };
    out
}

/// y[i] = f(x[i]), compiled per `f` so the loop vectorises.
fn map1(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    fill_new(x.len(), |off, o| {
        for (o, &a) in o.iter_mut().zip(&x[off..]) {
            o.write(f(a));
        }
    })
}

/// y[i] = f(a[i], b[i]).
fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    fill_new(a.len(), |off, o| {
        for ((o, &a), &b) in o.iter_mut().zip(&a[off..]).zip(&b[off..]) {
            o.write(f(a, b));
        }
    })
}

/// y[i] = f(a[i], b[i], c[i]).
fn map3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32 + Sync) -> Vec<f32> {
    fill_new(a.len(), |off, o| {
        for (((o, &a), &b), &c) in o.iter_mut().zip(&a[off..]).zip(&b[off..]).zip(&c[off..]) {
            o.write(f(a, b, c));
        }
    })
}

fn softplus(x: f32) -> f32 {
    // log(1+e^x) without overflow; PyTorch switches to x above 20 as well.
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

const INV_SQRT2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// ReLU as PyTorch computes it: NaN stays NaN (`f32::max` would return 0 and hide it, e.g. the
/// NaN a Winograd transform makes of an overflowed input), negative values become 0.
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

#[inline(always)]
fn unary_one(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Relu => relu(x),
        UnaryOp::Relu6 => {
            if x > 6.0 {
                6.0
            } else {
                relu(x)
            }
        }
        UnaryOp::LeakyRelu(s) => {
            if x > 0.0 {
                x
            } else {
                s * x
            }
        }
        UnaryOp::Gelu => 0.5 * x * (1.0 + libm::erff(x * INV_SQRT2)),
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Mish => x * softplus(x).tanh(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Pow(p) => {
            if p == 2.0 {
                x * x
            } else {
                x.powf(p)
            }
        }
        UnaryOp::Abs => x.abs(),
        UnaryOp::Affine { mul, add } => x * mul + add,
        UnaryOp::ClampMin(lo) => x.max(lo),
    }
}

/// d op(x)/dx, from x or y = op(x), whichever is cheaper.
#[inline(always)]
fn unary_grad(op: UnaryOp, x: f32, y: f32) -> f32 {
    match op {
        UnaryOp::Relu => (x > 0.0) as u32 as f32,
        UnaryOp::Relu6 => (x > 0.0 && x < 6.0) as u32 as f32,
        UnaryOp::LeakyRelu(s) => {
            if x > 0.0 {
                1.0
            } else {
                s
            }
        }
        UnaryOp::Gelu => {
            let cdf = 0.5 * (1.0 + libm::erff(x * INV_SQRT2));
            let pdf = (-0.5 * x * x).exp() * (INV_SQRT2 * std::f32::consts::FRAC_2_SQRT_PI * 0.5);
            cdf + x * pdf
        }
        UnaryOp::Sigmoid => y * (1.0 - y),
        UnaryOp::Tanh => 1.0 - y * y,
        UnaryOp::Mish => {
            let tsp = softplus(x).tanh();
            tsp + x * (1.0 - tsp * tsp) * sigmoid(x)
        }
        UnaryOp::Exp => y,
        UnaryOp::Log => 1.0 / x,
        UnaryOp::Sqrt => 0.5 / y,
        UnaryOp::Pow(p) => {
            if p == 2.0 {
                2.0 * x
            } else {
                p * x.powf(p - 1.0)
            }
        }
        UnaryOp::Abs => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        UnaryOp::Affine { mul, .. } => mul,
        UnaryOp::ClampMin(lo) => (x > lo) as u32 as f32,
    }
}

/// The hot ops (ReLU, scalar affine, square) get loops of their own; the rest share one.
pub fn unary(op: UnaryOp, x: &[f32]) -> Vec<f32> {
    match op {
        UnaryOp::Relu => map1(x, relu),
        UnaryOp::Affine { mul, add } => map1(x, move |v| v * mul + add),
        UnaryOp::Pow(2.0) => map1(x, |v| v * v),
        _ => map1(x, |v| unary_one(op, v)),
    }
}

pub fn unary_backward(op: UnaryOp, x: &[f32], y: &[f32], dy: &[f32]) -> Vec<f32> {
    match op {
        UnaryOp::Relu => map2(x, dy, |x, g| if x > 0.0 { g } else { 0.0 }),
        UnaryOp::Affine { mul, .. } => map1(dy, move |g| g * mul),
        _ => map3(x, y, dy, |x, y, g| g * unary_grad(op, x, y)),
    }
}

/// Row-major strides of `dims`, with 0 where the dim is broadcast (size 1 against a larger out).
fn broadcast_strides(dims: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; dims.len()];
    let mut s = 1;
    for i in (0..dims.len()).rev() {
        strides[i] = if dims[i] == 1 && out[i] != 1 { 0 } else { s };
        s *= dims[i];
    }
    strides
}

/// Merges neighbouring output dims that both operands walk the same way (both contiguous across
/// the pair, or both broadcast over it), as PyTorch's TensorIterator does: `[n, c, h, w]` against
/// a per-channel `[1, c, 1, 1]` becomes `[n, c, h·w]`, so the inner loop runs over whole planes
/// instead of rows of `w` values. Returns (dims, a strides, b strides), outermost first.
fn coalesce(out: &[usize], sa: &[usize], sb: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let (mut dims, mut ra, mut rb) = (Vec::new(), Vec::new(), Vec::new());
    for d in 0..out.len() {
        if out[d] == 1 {
            continue; // size-1 dims carry no offsets
        }
        if let (Some(&last), Some(&la), Some(&lb)) = (dims.last(), ra.last(), rb.last()) {
            let joins = |outer: usize, inner: usize| outer == inner * out[d];
            if joins(la, sa[d]) && joins(lb, sb[d]) {
                let k = dims.len() - 1;
                dims[k] = last * out[d];
                ra[k] = sa[d];
                rb[k] = sb[d];
                continue;
            }
        }
        dims.push(out[d]);
        ra.push(sa[d]);
        rb.push(sb[d]);
    }
    if dims.is_empty() {
        (vec![1], vec![0], vec![0])
    } else {
        (dims, ra, rb)
    }
}

/// Broadcasting binary op. Fast paths: equal shapes, and a scalar operand; otherwise the dims
/// are coalesced and the innermost one runs as a straight (possibly constant-stride) loop.
pub fn binary(op: BinaryOp, a: &[f32], a_dims: &[usize], b: &[f32], b_dims: &[usize], out_dims: &[usize]) -> Vec<f32> {
    let n: usize = out_dims.iter().product();
    if a.len() == n && b.len() == n {
        return match op {
            BinaryOp::Add => map2(a, b, |a, b| a + b),
            BinaryOp::Sub => map2(a, b, |a, b| a - b),
            BinaryOp::Mul => map2(a, b, |a, b| a * b),
            BinaryOp::Div => map2(a, b, |a, b| a / b),
        };
    }
    match op {
        BinaryOp::Add => broadcast2(a, a_dims, b, b_dims, out_dims, |a, b| a + b),
        BinaryOp::Sub => broadcast2(a, a_dims, b, b_dims, out_dims, |a, b| a - b),
        BinaryOp::Mul => broadcast2(a, a_dims, b, b_dims, out_dims, |a, b| a * b),
        BinaryOp::Div => broadcast2(a, a_dims, b, b_dims, out_dims, |a, b| a / b),
    }
}

/// The broadcasting loop of [`binary`], compiled per `f` so the inner loops vectorise.
fn broadcast2(
    a: &[f32],
    a_dims: &[usize],
    b: &[f32],
    b_dims: &[usize],
    out_dims: &[usize],
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    let n: usize = out_dims.iter().product();
    if n == 0 {
        return Vec::new();
    }
    let (dims, sa, sb) = coalesce(out_dims, &broadcast_strides(a_dims, out_dims), &broadcast_strides(b_dims, out_dims));
    let r = dims.len();
    let inner = dims[r - 1];
    let (ia, ib) = (sa[r - 1], sb[r - 1]);
    let row_fn = |row: usize, o: &mut [MaybeUninit<f32>]| {
        // Offsets of this row in a and b from its multi-index.
        let (mut oa, mut ob, mut rem) = (0, 0, row);
        for d in (0..r - 1).rev() {
            let idx = rem % dims[d];
            rem /= dims[d];
            oa += idx * sa[d];
            ob += idx * sb[d];
        }
        match (ia, ib) {
            (1, 0) => {
                let bv = b[ob];
                for (o, &av) in o.iter_mut().zip(&a[oa..oa + inner]) {
                    o.write(f(av, bv));
                }
            }
            (0, 1) => {
                let av = a[oa];
                for (o, &bv) in o.iter_mut().zip(&b[ob..ob + inner]) {
                    o.write(f(av, bv));
                }
            }
            (1, 1) => {
                for ((o, &av), &bv) in o.iter_mut().zip(&a[oa..oa + inner]).zip(&b[ob..ob + inner]) {
                    o.write(f(av, bv));
                }
            }
            _ => {
                for (j, o) in o.iter_mut().enumerate() {
                    o.write(f(a[oa + j * ia], b[ob + j * ib]));
                }
            }
        }
    };
    let mut out = Vec::with_capacity(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    if n < PAR_MIN_ELEMS {
        spare.chunks_mut(inner).enumerate().for_each(|(row, o)| row_fn(row, o));
    } else {
        // Rows shorter than a chunk are grouped so each rayon task has real work.
        let rows_per_task = (CHUNK / inner).max(1);
        spare.par_chunks_mut(inner * rows_per_task).enumerate().for_each(|(t, block)| {
            for (k, o) in block.chunks_mut(inner).enumerate() {
                row_fn(t * rows_per_task + k, o);
            }
        });
    }
    // SAFETY: the output is split into rows of `inner` values (n is a multiple of `inner`) and
    // `row_fn` writes every value of every row.
    unsafe { out.set_len(n) };
    out
}

/// One pass per element: g = grad + wd·p; buf = momentum·buf + g (buf = g on the first step);
/// step = nesterov ? g + momentum·buf : buf; p -= lr·step. Matches `torch.optim.SGD` (dampening 0).
pub fn sgd_step(param: &mut [f32], grad: &[f32], buf: &mut [f32], s: &SgdStep) {
    let body = |p: &mut [f32], g: &[f32], m: &mut [f32]| {
        for i in 0..p.len() {
            let gi = g[i] + s.weight_decay * p[i];
            let step = if s.momentum != 0.0 {
                let mi = if s.first_step { gi } else { s.momentum * m[i] + gi };
                m[i] = mi;
                if s.nesterov {
                    gi + s.momentum * mi
                } else {
                    mi
                }
            } else {
                gi
            };
            p[i] -= s.lr * step;
        }
    };
    if param.len() < PAR_MIN_ELEMS {
        body(param, grad, buf);
    } else {
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(buf.par_chunks_mut(CHUNK))
            .for_each(|((p, g), m)| body(p, g, m));
    }
}

/// acc[i] += x[i].
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_assign lengths");
    let body = |a: &mut [f32], b: &[f32]| {
        for (a, &b) in a.iter_mut().zip(b) {
            *a += b;
        }
    };
    if acc.len() < PAR_MIN_ELEMS {
        body(acc, x);
    } else {
        acc.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(a, b)| body(a, b));
    }
}

/// Lengths of two operands of an elementwise op, or an error naming both.
fn same_len(op: &'static str, a: (&str, usize), b: (&str, usize)) -> Result<()> {
    if a.1 != b.1 {
        return Err(Error::invalid(
            op,
            format!("{} has {} elements and {} has {}; pass equal lengths", a.0, a.1, b.0, b.1),
        ));
    }
    Ok(())
}

/// θ⁺ = θ + ε·v, θ⁻ = θ − ε·v (the two perturbed weights of the finite-difference hypergradient).
pub fn fd_perturb(theta: &[f32], v: &[f32], eps: f32) -> Result<(Vec<f32>, Vec<f32>)> {
    same_len("fd_perturb", ("theta", theta.len()), ("v", v.len()))?;
    let plus = theta.iter().zip(v).map(|(&t, &d)| t + eps * d).collect();
    let minus = theta.iter().zip(v).map(|(&t, &d)| t - eps * d).collect();
    Ok((plus, minus))
}

/// (g⁺ − g⁻) / (2ε): the difference first (exact when g⁺ ≈ g⁻), then one division.
pub fn fd_combine(g_plus: &[f32], g_minus: &[f32], eps: f32) -> Result<Vec<f32>> {
    same_len("fd_combine", ("g_plus", g_plus.len()), ("g_minus", g_minus.len()))?;
    if !(eps.is_finite() && eps != 0.0) {
        return Err(Error::invalid("fd_combine", format!("step eps = {eps}: use a finite, non-zero step")));
    }
    let two_eps = eps + eps;
    Ok(g_plus.iter().zip(g_minus).map(|(&p, &m)| (p - m) / two_eps).collect())
}
