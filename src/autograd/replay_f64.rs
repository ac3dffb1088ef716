//! An f64 replay of a recorded tape: the graph a tracked f32 forward left behind (each `Op` with
//! its geometry) is evaluated again in f64 from its leaves, and differentiated in f64 from its
//! scalar root. Only the structure of the f32 run is used, never its intermediate values, so the
//! f32 forward may overflow (SynFlow's all-ones input through a CIFAR ResNet-110 with absolute
//! weights gives R ~ 1e139, far beyond f32's 3.4e38) while the replay stays exact to f64 rounding.
//!
//! Leaves are read from their tensors when the replay runs (f32 widened to f64, which is exact):
//! parameters, buffers, inputs, and any untracked tensor an op consumed. Every rule here is a
//! naive loop written from the PyTorch definition of the op, independently of the f32 kernels
//! (convolutions are im2col + an f64 GEMM of the gemm crate), so a replay of a network in the f32
//! range also cross-checks the engine end to end.
//!
//! The rules are generic over the scalar ([`Real`]): in plain f64 they give the gradient; in dual
//! numbers, with the leaves moving in a direction v, they give the gradient and the exact
//! Hessian-vector product H·v at once ([`hessian_vector_f64`], GraSP's double backward).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use super::real::{Dual, Real};
use super::{topological_order, Op};
use crate::backend::{
    BinaryOp, Conv2dGeom, DimGeom, InterpMode, MatmulGeom, NormGeom, Pool2dGeom, PoolKind, ResizeGeom, UnaryOp,
};
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};

/// The root's value and the gradients of the requested leaves, in f64.
#[derive(Clone, Debug)]
pub struct F64Replay {
    pub root: f64,
    /// One per requested leaf, row-major in the leaf's shape; zeros for a leaf that does not
    /// reach the root (zero-cost-nas's convention for a weight without a gradient).
    pub grads: Vec<Vec<f64>>,
}

/// Replays the graph that produced the scalar `root` in f64: its value, and ∂root/∂leaf for
/// each of `leaves` (tensors that require a gradient). Errors name the op a rule cannot replay.
pub fn replay_f64(root: &Tensor, leaves: &[Tensor]) -> Result<F64Replay> {
    let (root, grads) = replay::<f64>(root, leaves, &[])?;
    Ok(F64Replay { root, grads })
}

/// [`replay_f64`] plus the Hessian-vector product: `hvp[i]` = Σ_j ∂²root/∂leaf_i∂leaf_j · v_j,
/// exact to f64 rounding (forward-over-reverse with dual numbers, see [`super::real`]). It is
/// what PyTorch's double backward `autograd.grad(Σ_j v_j·grad_j, leaf_i)` computes: ReLU masks
/// and max-pooling choices count as locally constant.
#[derive(Clone, Debug)]
pub struct HvpReplay {
    pub root: f64,
    pub grads: Vec<Vec<f64>>,
    pub hvp: Vec<Vec<f64>>,
}

/// The gradients and H·v of the scalar `root` w.r.t. `leaves`, for a direction `v` with one
/// entry per leaf (each of the leaf's length).
pub fn hessian_vector_f64(root: &Tensor, leaves: &[Tensor], v: &[Vec<f64>]) -> Result<HvpReplay> {
    if v.len() != leaves.len() || leaves.iter().zip(v).any(|(l, v)| l.numel() != v.len()) {
        return Err(Error::shape(
            "hessian_vector_f64",
            format!("the direction must have one entry per leaf, each of the leaf's length ({} leaves)", leaves.len()),
        ));
    }
    let (root, grads) = replay::<Dual>(root, leaves, v)?;
    let (grads, hvp): (Vec<Vec<f64>>, Vec<Vec<f64>>) =
        grads.into_iter().map(|g| g.into_iter().map(|d| (d.re, d.du)).unzip()).unzip();
    Ok(HvpReplay { root: root.re, grads, hvp })
}

/// The replay itself: leaf `leaves[i]` enters as `value + tangents[i]·ε` when tangents are given
/// (the dual scalar), every other tensor as its value.
fn replay<S: Real>(root: &Tensor, leaves: &[Tensor], tangents: &[Vec<f64>]) -> Result<(S, Vec<Vec<S>>)> {
    if root.numel() != 1 {
        return Err(Error::shape("replay_f64", format!("the root must have one element, got shape {}", root.shape())));
    }
    if !root.requires_grad() {
        return Err(Error::invalid(
            "replay_f64",
            "the root was not recorded: run the forward with gradients on and a parameter that requires grad",
        ));
    }
    let tangent: HashMap<TensorId, &[f64]> = leaves.iter().zip(tangents).map(|(t, v)| (t.id(), v.as_slice())).collect();
    let widen = |t: &Tensor| -> Result<Vec<S>> {
        let v = t.to_vec()?;
        Ok(match tangent.get(&t.id()) {
            Some(d) => v.into_iter().zip(d.iter()).map(|(x, &d)| S::seed(x as f64, d)).collect(),
            None => v.into_iter().map(|x| S::cst(x as f64)).collect(),
        })
    };
    let order = topological_order(root);
    let mut vals: HashMap<TensorId, Vec<S>> = HashMap::new();
    for node in &order {
        let v = match node.op() {
            None => widen(node)?,
            Some(op) => {
                for input in op.inputs() {
                    if let Entry::Vacant(e) = vals.entry(input.id()) {
                        e.insert(widen(input)?);
                    }
                }
                let v = forward(op, node, &vals)?;
                debug_assert_eq!(v.len(), node.numel(), "replay of {}", op.name());
                v
            }
        };
        vals.insert(node.id(), v);
    }
    let root_value = vals[&root.id()][0];

    let keep: HashSet<TensorId> = leaves.iter().map(|t| t.id()).collect();
    let mut grads: HashMap<TensorId, Vec<S>> = HashMap::new();
    grads.insert(root.id(), vec![S::cst(1.0)]);
    for node in order.iter().rev() {
        let Some(op) = node.op() else { continue };
        let Some(dy) = grads.remove(&node.id()) else { continue };
        let input_grads = backward(op, node, &dy, &vals)?;
        if keep.contains(&node.id()) {
            grads.insert(node.id(), dy);
        }
        for (input, g) in op.inputs().into_iter().zip(input_grads) {
            let Some(g) = g else { continue };
            if !input.requires_grad() {
                continue;
            }
            match grads.entry(input.id()) {
                Entry::Occupied(mut e) => e.get_mut().iter_mut().zip(g).for_each(|(a, b)| *a += b),
                Entry::Vacant(e) => {
                    e.insert(g);
                }
            }
        }
    }
    let grads =
        leaves.iter().map(|t| grads.get(&t.id()).cloned().unwrap_or_else(|| vec![S::cst(0.0); t.numel()])).collect();
    Ok((root_value, grads))
}

fn unsupported(what: &str) -> Error {
    Error::invalid("replay_f64", format!("no f64 rule for {what}: add one to autograd/replay_f64.rs"))
}

// ---------------------------------------------------------------------------- index helpers

fn strides_of(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// For every element (row-major) of an array of shape `dims`, the flat index
/// `offset + Σ j_i·strides[i]` of its multi-index j: one gather map serves broadcasting,
/// permutation, slicing and concatenation.
fn index_map(dims: &[usize], strides: &[usize], offset: usize) -> Vec<usize> {
    let total: usize = dims.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut j = vec![0usize; dims.len()];
    let mut cur = offset;
    for _ in 0..total {
        out.push(cur);
        for d in (0..dims.len()).rev() {
            j[d] += 1;
            cur += strides[d];
            if j[d] < dims[d] {
                break;
            }
            cur -= strides[d] * dims[d];
            j[d] = 0;
        }
    }
    out
}

/// Where each element of a broadcast result reads operand `t` (None when no broadcasting).
fn broadcast_map(t: &Tensor, out: &[usize]) -> Option<Vec<usize>> {
    if t.dims() == out {
        return None;
    }
    let padded = t.shape().padded(out.len());
    let mut s = strides_of(&padded);
    for (i, st) in s.iter_mut().enumerate() {
        if padded[i] == 1 && out[i] != 1 {
            *st = 0;
        }
    }
    Some(index_map(out, &s, 0))
}

fn at(map: &Option<Vec<usize>>, i: usize) -> usize {
    map.as_ref().map_or(i, |m| m[i])
}

/// Flat index of element k of line (o, i) in an [outer, len, inner] view.
fn line(g: DimGeom, o: usize, k: usize, i: usize) -> usize {
    (o * g.len + k) * g.inner + i
}

/// Sum over the one dim where y (size 1) differs from x; None when it was already 1.
fn sum_geom(x: &Tensor, y: &Tensor) -> Option<DimGeom> {
    let d = x.dims().iter().zip(y.dims()).position(|(a, b)| a != b)?;
    Some(DimGeom::new(x.dims(), d))
}

// ---------------------------------------------------------------------------- elementwise

fn softplus<S: Real>(x: S) -> S {
    if x.re() > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid<S: Real>(x: S) -> S {
    S::cst(1.0) / (S::cst(1.0) + (-x).exp())
}

fn unary_value<S: Real>(op: UnaryOp, x: S) -> Result<S> {
    let zero = S::cst(0.0);
    Ok(match op {
        UnaryOp::Relu => {
            if x.re() < 0.0 {
                zero
            } else {
                x
            }
        }
        UnaryOp::Relu6 => {
            if x.re() < 0.0 {
                zero
            } else if x.re() > 6.0 {
                S::cst(6.0)
            } else {
                x
            }
        }
        UnaryOp::LeakyRelu(s) => {
            if x.re() > 0.0 {
                x
            } else {
                x.sc(s as f64)
            }
        }
        UnaryOp::Gelu => (x * (S::cst(1.0) + x.sc(std::f64::consts::FRAC_1_SQRT_2).erf())).sc(0.5),
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Mish => x * softplus(x).tanh(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Pow(p) => x.powf(p as f64),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Affine { mul, add } => x.sc(mul as f64) + S::cst(add as f64),
        UnaryOp::ClampMin(lo) => {
            if x.re() < lo as f64 {
                S::cst(lo as f64)
            } else {
                x
            }
        }
        #[allow(unreachable_patterns)]
        other => return Err(unsupported(&format!("unary op {other:?}"))),
    })
}

/// d op(x)/dx at x (y = op(x)).
fn unary_slope<S: Real>(op: UnaryOp, x: S, y: S) -> Result<S> {
    let step = |on: bool| S::cst(on as u8 as f64);
    Ok(match op {
        UnaryOp::Relu => step(x.re() > 0.0),
        UnaryOp::Relu6 => step(x.re() > 0.0 && x.re() < 6.0),
        UnaryOp::LeakyRelu(s) => S::cst(if x.re() > 0.0 { 1.0 } else { s as f64 }),
        UnaryOp::Gelu => {
            let cdf = (S::cst(1.0) + x.sc(std::f64::consts::FRAC_1_SQRT_2).erf()).sc(0.5);
            let pdf = (x * x).sc(-0.5).exp().sc(1.0 / (2.0 * std::f64::consts::PI).sqrt());
            cdf + x * pdf
        }
        UnaryOp::Sigmoid => y * (S::cst(1.0) - y),
        UnaryOp::Tanh => S::cst(1.0) - y * y,
        UnaryOp::Mish => {
            let t = softplus(x).tanh();
            t + x * (S::cst(1.0) - t * t) * sigmoid(x)
        }
        UnaryOp::Exp => y,
        UnaryOp::Log => S::cst(1.0) / x,
        UnaryOp::Sqrt => S::cst(0.5) / y,
        UnaryOp::Pow(p) => x.powf(p as f64 - 1.0).sc(p as f64),
        UnaryOp::Abs => S::cst(if x.re() > 0.0 {
            1.0
        } else if x.re() < 0.0 {
            -1.0
        } else {
            0.0
        }),
        UnaryOp::Affine { mul, .. } => S::cst(mul as f64),
        UnaryOp::ClampMin(lo) => step(x.re() > lo as f64),
        #[allow(unreachable_patterns)]
        other => return Err(unsupported(&format!("unary op {other:?}"))),
    })
}

fn binary_value<S: Real>(op: BinaryOp, a: S, b: S) -> S {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
    }
}

/// (∂/∂a, ∂/∂b) of a∘b.
fn binary_slopes<S: Real>(op: BinaryOp, a: S, b: S) -> (S, S) {
    let one = S::cst(1.0);
    match op {
        BinaryOp::Add => (one, one),
        BinaryOp::Sub => (one, -one),
        BinaryOp::Mul => (b, a),
        BinaryOp::Div => (one / b, -a / (b * b)),
    }
}
// ---------------------------------------------------------------------------- matmul, conv

/// Calls f(c, a, b) with the flat indices of C[b,i,j], op(A)[b,i,p] and op(B)[b,p,j] for every
/// term of C = op(A)·op(B), reading each operand in its stored orientation and batch.
fn matmul_visit(g: &MatmulGeom, mut f: impl FnMut(usize, usize, usize)) {
    let (m, k, n) = (g.m, g.k, g.n);
    for bt in 0..g.batch {
        let a0 = if g.a_broadcast { 0 } else { bt * m * k };
        let b0 = if g.b_broadcast { 0 } else { bt * k * n };
        for i in 0..m {
            for p in 0..k {
                let ai = a0 + if g.trans_a { p * m + i } else { i * k + p };
                for j in 0..n {
                    let bi = b0 + if g.trans_b { j * k + p } else { p * n + j };
                    f((bt * m + i) * n + j, ai, bi);
                }
            }
        }
    }
}

/// Row-major dst[m×n] (+)= a·b, with a [m×k] (stored [k×m] when `a_t`) and b [k×n] (stored
/// [n×k] when `b_t`), in f64 through the gemm crate.
#[allow(clippy::too_many_arguments)]
fn dgemm(m: usize, n: usize, k: usize, dst: &mut [f64], accumulate: bool, a: &[f64], a_t: bool, b: &[f64], b_t: bool) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "dgemm operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = if a_t { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if b_t { (1, k as isize) } else { (n as isize, 1) };
    // Small products on one thread: rayon's fork/join costs more than it saves.
    let par = if 2 * m * n * k < 1 << 21 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    };
    // SAFETY: the assert above puts every element of the three views (a: m×k, b: k×n, dst: m×n,
    // row-major or transposed as the strides say) inside its slice; dst is borrowed mutably, so
    // it aliases neither operand, and no other thread sees it during the call.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Input row of output row `o` and tap `k` (None in the padding), along one axis.
fn tap_index(o: usize, k: usize, stride: usize, pad: usize, input: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < input)
}

/// Group `gi`'s im2col matrix of an [n, c_in, h, w] input: row (icl, ki, kj), column (b, oh, ow),
/// zero where the tap falls in the padding (PyTorch's cross-correlation).
fn im2col(x: &[f64], g: &Conv2dGeom, gi: usize) -> Vec<f64> {
    let cin_g = g.c_in / g.groups;
    let p = g.h_out * g.w_out;
    let cols = g.n * p;
    let mut col = vec![0.0; cin_g * g.kh * g.kw * cols];
    col.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let (ic, ki, kj) = (gi * cin_g + r / (g.kh * g.kw), r / g.kw % g.kh, r % g.kw);
        for b in 0..g.n {
            for oh in 0..g.h_out {
                let Some(ih) = tap_index(oh, ki, g.stride.0, g.pad.0, g.h) else { continue };
                let src = ((b * g.c_in + ic) * g.h + ih) * g.w;
                for ow in 0..g.w_out {
                    if let Some(iw) = tap_index(ow, kj, g.stride.1, g.pad.1, g.w) {
                        row[b * p + oh * g.w_out + ow] = x[src + iw];
                    }
                }
            }
        }
    });
    col
}

/// The transpose of [`im2col`]: adds group `gi`'s column matrix back onto the input planes.
fn col2im(col: &[f64], g: &Conv2dGeom, gi: usize, dx: &mut [f64]) {
    let cin_g = g.c_in / g.groups;
    let p = g.h_out * g.w_out;
    let cols = g.n * p;
    dx.par_chunks_mut(g.h * g.w).enumerate().for_each(|(plane, dxp)| {
        let (b, ic) = (plane / g.c_in, plane % g.c_in);
        if ic / cin_g != gi {
            return;
        }
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = &col[(((ic % cin_g) * g.kh + ki) * g.kw + kj) * cols + b * p..][..p];
                for oh in 0..g.h_out {
                    let Some(ih) = tap_index(oh, ki, g.stride.0, g.pad.0, g.h) else { continue };
                    for ow in 0..g.w_out {
                        if let Some(iw) = tap_index(ow, kj, g.stride.1, g.pad.1, g.w) {
                            dxp[ih * g.w + iw] += row[oh * g.w_out + ow];
                        }
                    }
                }
            }
        }
    });
}

/// Channels [gi·c_g, (gi+1)·c_g) of an [n, c, p] array as a [c_g, n·p] matrix: the (array,
/// matrix) offsets of its p-long blocks.
fn group_blocks(n: usize, c: usize, c_g: usize, p: usize, gi: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..c_g).flat_map(move |cl| (0..n).map(move |b| ((b * c + gi * c_g + cl) * p, (cl * n + b) * p)))
}

fn group_rows(t: &[f64], n: usize, c: usize, c_g: usize, p: usize, gi: usize) -> Vec<f64> {
    let mut m = vec![0.0; c_g * n * p];
    for (ti, mi) in group_blocks(n, c, c_g, p, gi) {
        m[mi..mi + p].copy_from_slice(&t[ti..ti + p]);
    }
    m
}

/// y = conv(x, w): per group, W_g [c_out/g × K] · im2col [K × n·p].
fn conv_forward(x: &[f64], w: &[f64], g: &Conv2dGeom) -> Vec<f64> {
    let (cin_g, cout_g, p) = (g.c_in / g.groups, g.c_out / g.groups, g.h_out * g.w_out);
    let k = cin_g * g.kh * g.kw;
    let mut y = vec![0.0; g.n * g.c_out * p];
    let mut yg = vec![0.0; cout_g * g.n * p];
    for gi in 0..g.groups {
        let col = im2col(x, g, gi);
        dgemm(cout_g, g.n * p, k, &mut yg, false, &w[gi * cout_g * k..], false, &col, false);
        for (yi, gj) in group_blocks(g.n, g.c_out, cout_g, p, gi) {
            y[yi..yi + p].copy_from_slice(&yg[gj..gj + p]);
        }
    }
    y
}

/// ∂/∂x of Σ dy·conv(x, w): per group, col2im(W_gᵀ · dy_g).
fn conv_backward_data(dy: &[f64], w: &[f64], g: &Conv2dGeom) -> Vec<f64> {
    let (cin_g, cout_g, p) = (g.c_in / g.groups, g.c_out / g.groups, g.h_out * g.w_out);
    let k = cin_g * g.kh * g.kw;
    let mut dx = vec![0.0; g.n * g.c_in * g.h * g.w];
    let mut dcol = vec![0.0; k * g.n * p];
    for gi in 0..g.groups {
        let dyg = group_rows(dy, g.n, g.c_out, cout_g, p, gi);
        dgemm(k, g.n * p, cout_g, &mut dcol, false, &w[gi * cout_g * k..], true, &dyg, false);
        col2im(&dcol, g, gi, &mut dx);
    }
    dx
}

/// ∂/∂w of Σ dy·conv(x, w): per group, dy_g · im2colᵀ.
fn conv_backward_weight(x: &[f64], dy: &[f64], g: &Conv2dGeom) -> Vec<f64> {
    let (cin_g, cout_g, p) = (g.c_in / g.groups, g.c_out / g.groups, g.h_out * g.w_out);
    let k = cin_g * g.kh * g.kw;
    let mut dw = vec![0.0; g.c_out * k];
    for gi in 0..g.groups {
        let (col, dyg) = (im2col(x, g, gi), group_rows(dy, g.n, g.c_out, cout_g, p, gi));
        dgemm(cout_g, k, g.n * p, &mut dw[gi * cout_g * k..], false, &dyg, false, &col, true);
    }
    dw
}

// ---------------------------------------------------------------------------- pooling, resampling

/// PyTorch's pooling window along one axis for output o: the input range [start, end) and the
/// divisor count_include_pad uses (the window clipped to the padded input only).
fn pool_window(o: usize, input: usize, kernel: usize, stride: usize, pad: usize) -> (usize, usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let end = (start + kernel as isize).min((input + pad) as isize);
    let pool_size = (end - start).max(0) as usize;
    let (s, e) = (start.max(0) as usize, end.clamp(0, input as isize) as usize);
    (s, e.max(s), pool_size)
}

/// Calls f(out_index, window_inputs, divisor) for every pooling output; the window lists flat
/// input indices in row-major order (max pooling takes the first maximum among them).
fn pool_visit(kind: PoolKind, g: &Pool2dGeom, mut f: impl FnMut(usize, &[usize], f64)) {
    let mut window = Vec::new();
    for plane in 0..g.n * g.c {
        for oh in 0..g.h_out {
            let (h0, h1, ph) = pool_window(oh, g.h, g.kernel.0, g.stride.0, g.pad.0);
            for ow in 0..g.w_out {
                let (w0, w1, pw) = pool_window(ow, g.w, g.kernel.1, g.stride.1, g.pad.1);
                window.clear();
                for r in h0..h1 {
                    window.extend((w0..w1).map(|c| (plane * g.h + r) * g.w + c));
                }
                let divisor = match kind {
                    PoolKind::Avg { count_include_pad: true } => (ph * pw) as f64,
                    _ => window.len() as f64,
                };
                f((plane * g.h_out + oh) * g.w_out + ow, &window, divisor);
            }
        }
    }
}

/// First maximum (NaN wins, as in PyTorch); None for an empty window.
fn argmax<S: Real>(x: &[S], idx: impl Iterator<Item = usize>) -> Option<usize> {
    let mut best: Option<usize> = None;
    for i in idx {
        match best {
            Some(b) if !(x[i].re() > x[b].re() || (x[i].re().is_nan() && !x[b].re().is_nan())) => {}
            _ => best = Some(i),
        }
    }
    best
}

/// Taps of a resampling along one axis: (i0, i1, w0, w1) per output, PyTorch's double-precision
/// formulas (nearest: floor(dst·in/out); bilinear, align_corners=False: src = (dst+½)·in/out − ½,
/// clamped at 0).
fn resample_taps(mode: InterpMode, input: usize, out: usize) -> Vec<(usize, usize, f64, f64)> {
    let scale = input as f64 / out as f64;
    (0..out)
        .map(|d| match mode {
            InterpMode::Nearest => {
                let i = ((d as f64 * scale).floor() as usize).min(input - 1);
                (i, i, 1.0, 0.0)
            }
            InterpMode::Bilinear => {
                let src = (scale * (d as f64 + 0.5) - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(input - 1);
                let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
                let l1 = src - i0 as f64;
                (i0, i1, 1.0 - l1, l1)
            }
        })
        .collect()
}

/// Calls f(out_index, in_index, weight) for every term of a resampling (adaptive average
/// pooling: PyTorch's bins [floor(o·in/out), ceil((o+1)·in/out)) with weight 1/bin size).
fn resize_visit(g: &ResizeGeom, interp: Option<InterpMode>, mut f: impl FnMut(usize, usize, f64)) {
    let axis = |input: usize, out: usize| -> Vec<Vec<(usize, f64)>> {
        match interp {
            Some(mode) => {
                resample_taps(mode, input, out).into_iter().map(|(i0, i1, w0, w1)| vec![(i0, w0), (i1, w1)]).collect()
            }
            None => (0..out)
                .map(|o| {
                    let (s, e) = (o * input / out, ((o + 1) * input).div_ceil(out));
                    (s..e).map(|i| (i, 1.0 / (e - s) as f64)).collect()
                })
                .collect(),
        }
    };
    let (hs, ws) = (axis(g.h, g.h_out), axis(g.w, g.w_out));
    for plane in 0..g.n * g.c {
        for (oh, th) in hs.iter().enumerate() {
            for (ow, tw) in ws.iter().enumerate() {
                let o = (plane * g.h_out + oh) * g.w_out + ow;
                for &(ih, wh) in th {
                    for &(iw, ww) in tw {
                        f(o, (plane * g.h + ih) * g.w + iw, wh * ww);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------- normalisation

/// x̂ and 1/sqrt(biased var + eps) per group, where `groups` lists each group's flat indices.
fn standardise<S: Real>(x: &[S], groups: &[Vec<usize>], eps: f64) -> (Vec<S>, Vec<S>) {
    let mut xhat = vec![S::cst(0.0); x.len()];
    let mut invstd = Vec::with_capacity(groups.len());
    for idx in groups {
        let m = idx.len() as f64;
        let mean = idx.iter().map(|&i| x[i]).sum::<S>().sc(1.0 / m);
        let var = idx.iter().map(|&i| (x[i] - mean) * (x[i] - mean)).sum::<S>().sc(1.0 / m);
        let inv = S::cst(1.0) / (var + S::cst(eps)).sqrt();
        for &i in idx {
            xhat[i] = (x[i] - mean) * inv;
        }
        invstd.push(inv);
    }
    (xhat, invstd)
}

/// Batchnorm groups: channel c of [n, c, hw] over n·hw. Layernorm groups: each row of [n, c].
fn norm_groups(g: &NormGeom, batch: bool) -> Vec<Vec<usize>> {
    if batch {
        (0..g.c).map(|c| (0..g.n).flat_map(|b| (b * g.c + c) * g.hw..(b * g.c + c + 1) * g.hw).collect()).collect()
    } else {
        (0..g.n).map(|r| (r * g.c..(r + 1) * g.c).collect()).collect()
    }
}

/// Index of the affine parameter (γ, β) that element i uses.
fn affine_index(g: &NormGeom, batch: bool, i: usize) -> usize {
    if batch {
        (i / g.hw) % g.c
    } else {
        i % g.c
    }
}

fn norm_forward<S: Real>(x: &[S], gamma: &[S], beta: &[S], g: &NormGeom, batch: bool) -> Vec<S> {
    let (xhat, _) = standardise(x, &norm_groups(g, batch), g.eps as f64);
    xhat.iter()
        .enumerate()
        .map(|(i, &v)| v * gamma[affine_index(g, batch, i)] + beta[affine_index(g, batch, i)])
        .collect()
}

/// (dx, dγ, dβ): per group, dx = invstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = dy·γ.
fn norm_backward<S: Real>(x: &[S], dy: &[S], gamma: &[S], g: &NormGeom, batch: bool) -> [Vec<S>; 3] {
    let groups = norm_groups(g, batch);
    let (xhat, invstd) = standardise(x, &groups, g.eps as f64);
    let zero = S::cst(0.0);
    let mut dx = vec![zero; x.len()];
    let mut dgamma = vec![zero; gamma.len()];
    let mut dbeta = vec![zero; gamma.len()];
    for (idx, inv) in groups.iter().zip(invstd) {
        let m = idx.len() as f64;
        let gh = |i: usize| dy[i] * gamma[affine_index(g, batch, i)];
        let mean_g = idx.iter().map(|&i| gh(i)).sum::<S>().sc(1.0 / m);
        let mean_gx = idx.iter().map(|&i| gh(i) * xhat[i]).sum::<S>().sc(1.0 / m);
        for &i in idx {
            dx[i] = inv * (gh(i) - mean_g - xhat[i] * mean_gx);
            dgamma[affine_index(g, batch, i)] += dy[i] * xhat[i];
            dbeta[affine_index(g, batch, i)] += dy[i];
        }
    }
    [dx, dgamma, dbeta]
}

/// Softmax or log-softmax of every line of an [outer, len, inner] view.
fn softmax_lines<S: Real>(x: &[S], g: DimGeom, log: bool) -> Vec<S> {
    let mut y = vec![S::cst(0.0); x.len()];
    for o in 0..g.outer {
        for i in 0..g.inner {
            let idx = || (0..g.len).map(|k| line(g, o, k, i));
            // The shift cancels in the result, so a constant one is exact for the derivative too.
            let m = S::cst(idx().map(|j| x[j].re()).fold(f64::NEG_INFINITY, f64::max));
            let s: S = idx().map(|j| (x[j] - m).exp()).sum();
            for j in idx() {
                y[j] = if log { x[j] - m - s.ln() } else { (x[j] - m).exp() / s };
            }
        }
    }
    y
}

// ---------------------------------------------------------------------------- the rules

fn forward<S: Real>(op: &Op, y: &Tensor, vals: &HashMap<TensorId, Vec<S>>) -> Result<Vec<S>> {
    let v = |t: &Tensor| -> &[S] { &vals[&t.id()] };
    let zero = S::cst(0.0);
    let mut out = vec![zero; y.numel()];
    match op {
        Op::Unary { op, x } => {
            for (o, &a) in out.iter_mut().zip(v(x)) {
                *o = unary_value(*op, a)?;
            }
        }
        Op::Binary { op, a, b } => {
            let (ma, mb) = (broadcast_map(a, y.dims()), broadcast_map(b, y.dims()));
            let (va, vb) = (v(a), v(b));
            for (i, o) in out.iter_mut().enumerate() {
                *o = binary_value(*op, va[at(&ma, i)], vb[at(&mb, i)]);
            }
        }
        Op::Reshape { x } => out.copy_from_slice(v(x)),
        Op::Permute { x, perm } => {
            let sx = strides_of(x.dims());
            let s: Vec<usize> = perm.iter().map(|&p| sx[p]).collect();
            let vx = v(x);
            for (o, i) in out.iter_mut().zip(index_map(y.dims(), &s, 0)) {
                *o = vx[i];
            }
        }
        Op::Concat { parts, dim } => {
            let sy = strides_of(y.dims());
            let mut start = 0;
            for p in parts {
                for (&pv, j) in v(p).iter().zip(index_map(p.dims(), &sy, start * sy[*dim])) {
                    out[j] = pv;
                }
                start += p.dims()[*dim];
            }
        }
        Op::Narrow { x, dim, start } => {
            let sx = strides_of(x.dims());
            let vx = v(x);
            for (o, i) in out.iter_mut().zip(index_map(y.dims(), &sx, start * sx[*dim])) {
                *o = vx[i];
            }
        }
        Op::Matmul { a, b, g } => {
            let (va, vb) = (v(a), v(b));
            matmul_visit(g, |c, ai, bi| out[c] += va[ai] * vb[bi]);
        }
        Op::Conv2d { x, w, g } => {
            out = S::bilinear(v(x), v(w), |x, w| conv_forward(x, w, g));
        }
        Op::Pool2d { kind, x, g } => {
            let vx = v(x);
            pool_visit(*kind, g, |o, window, divisor| {
                out[o] = match kind {
                    PoolKind::Max => argmax(vx, window.iter().copied()).map_or(S::cst(f64::NEG_INFINITY), |i| vx[i]),
                    PoolKind::Avg { .. } if divisor == 0.0 => zero,
                    PoolKind::Avg { .. } => window.iter().map(|&i| vx[i]).sum::<S>().sc(1.0 / divisor),
                }
            });
        }
        Op::AdaptiveAvgPool2d { x, g } => {
            let vx = v(x);
            resize_visit(g, None, |o, i, wt| out[o] += vx[i].sc(wt));
        }
        Op::Interpolate { mode, x, g } => {
            let vx = v(x);
            resize_visit(g, Some(*mode), |o, i, wt| out[o] += vx[i].sc(wt));
        }
        Op::BatchNormTrain { x, gamma, beta, relu, g, .. } => {
            out = norm_forward(v(x), v(gamma), v(beta), g, true);
            if *relu {
                out.iter_mut().filter(|o| o.re() < 0.0).for_each(|o| *o = zero);
            }
        }
        Op::LayerNorm { x, gamma, beta, g, .. } => out = norm_forward(v(x), v(gamma), v(beta), g, false),
        Op::Softmax { x, g, log } => out = softmax_lines(v(x), *g, *log),
        Op::CrossEntropy { logits, labels } => {
            let (rows, classes) = (logits.dims()[0], logits.dims()[1]);
            let lp = softmax_lines(v(logits), DimGeom { outer: rows, len: classes, inner: 1 }, true);
            out[0] = -(0..rows).map(|r| lp[r * classes + labels[r] as usize]).sum::<S>().sc(1.0 / rows as f64);
        }
        Op::KlDiv { log_q, p } => {
            let rows = log_q.dims()[0] as f64;
            out[0] = v(p)
                .iter()
                .zip(v(log_q))
                .map(|(&p, &lq)| if p.re() > 0.0 { p * (p.ln() - lq) } else { zero })
                .sum::<S>()
                .sc(1.0 / rows);
        }
        Op::Sum { x } => match sum_geom(x, y) {
            None => out.copy_from_slice(v(x)),
            Some(g) => {
                let vx = v(x);
                for o in 0..g.outer {
                    for i in 0..g.inner {
                        out[o * g.inner + i] = (0..g.len).map(|k| vx[line(g, o, k, i)]).sum();
                    }
                }
            }
        },
        Op::Max { x, dim } => {
            let g = DimGeom::new(x.dims(), *dim);
            let vx = v(x);
            for o in 0..g.outer {
                for i in 0..g.inner {
                    let j = argmax(vx, (0..g.len).map(|k| line(g, o, k, i))).unwrap_or(0);
                    out[o * g.inner + i] = vx[j];
                }
            }
        }
        Op::Normalize { x, dim, eps } => {
            let g = DimGeom::new(x.dims(), *dim);
            let vx = v(x);
            for o in 0..g.outer {
                for i in 0..g.inner {
                    let n = (0..g.len).map(|k| vx[line(g, o, k, i)] * vx[line(g, o, k, i)]).sum::<S>().sqrt();
                    for k in 0..g.len {
                        let j = line(g, o, k, i);
                        out[j] = vx[j] / if n.re() > *eps as f64 { n } else { S::cst(*eps as f64) };
                    }
                }
            }
        }
        #[allow(unreachable_patterns)]
        other => return Err(unsupported(&format!("op {}", other.name()))),
    }
    Ok(out)
}

/// Gradients of each input of `op` (in `op.inputs()` order; None where none is needed) given
/// the upstream gradient `dy` of its output `y`.
fn backward<S: Real>(op: &Op, y: &Tensor, dy: &[S], vals: &HashMap<TensorId, Vec<S>>) -> Result<Vec<Option<Vec<S>>>> {
    let v = |t: &Tensor| -> &[S] { &vals[&t.id()] };
    let zero = S::cst(0.0);
    let zeros = |t: &Tensor| vec![zero; t.numel()];
    let wanted = |t: &Tensor| t.requires_grad();
    Ok(match op {
        Op::Unary { op, x } => {
            let (vx, vy) = (v(x), v(y));
            let dx = (0..dy.len()).map(|i| Ok(dy[i] * unary_slope(*op, vx[i], vy[i])?)).collect::<Result<_>>()?;
            vec![Some(dx)]
        }
        Op::Binary { op, a, b } => {
            let (ma, mb) = (broadcast_map(a, y.dims()), broadcast_map(b, y.dims()));
            let (va, vb) = (v(a), v(b));
            let (mut da, mut db) = (zeros(a), zeros(b));
            for (i, &d) in dy.iter().enumerate() {
                let (ia, ib) = (at(&ma, i), at(&mb, i));
                let (sa, sb) = binary_slopes(*op, va[ia], vb[ib]);
                da[ia] += d * sa;
                db[ib] += d * sb;
            }
            vec![Some(da), Some(db)]
        }
        Op::Reshape { .. } => vec![Some(dy.to_vec())],
        Op::Permute { x, perm } => {
            let sx = strides_of(x.dims());
            let s: Vec<usize> = perm.iter().map(|&p| sx[p]).collect();
            let mut dx = zeros(x);
            for (&d, i) in dy.iter().zip(index_map(y.dims(), &s, 0)) {
                dx[i] = d;
            }
            vec![Some(dx)]
        }
        Op::Concat { parts, dim } => {
            let sy = strides_of(y.dims());
            let mut start = 0;
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                out.push(Some(index_map(p.dims(), &sy, start * sy[*dim]).into_iter().map(|j| dy[j]).collect()));
                start += p.dims()[*dim];
            }
            out
        }
        Op::Narrow { x, dim, start } => {
            let sx = strides_of(x.dims());
            let mut dx = zeros(x);
            for (&d, i) in dy.iter().zip(index_map(y.dims(), &sx, start * sx[*dim])) {
                dx[i] = d;
            }
            vec![Some(dx)]
        }
        Op::Matmul { a, b, g } => {
            let (va, vb) = (v(a), v(b));
            let (mut da, mut db) = (zeros(a), zeros(b));
            let (ga, gb) = (wanted(a), wanted(b));
            matmul_visit(g, |c, ai, bi| {
                if ga {
                    da[ai] += dy[c] * vb[bi];
                }
                if gb {
                    db[bi] += va[ai] * dy[c];
                }
            });
            vec![ga.then_some(da), gb.then_some(db)]
        }
        Op::Conv2d { x, w, g } => {
            let dx = wanted(x).then(|| S::bilinear(dy, v(w), |dy, w| conv_backward_data(dy, w, g)));
            let dw = wanted(w).then(|| S::bilinear(v(x), dy, |x, dy| conv_backward_weight(x, dy, g)));
            vec![dx, dw]
        }
        Op::Pool2d { kind, x, g } => {
            let vx = v(x);
            let mut dx = zeros(x);
            pool_visit(*kind, g, |o, window, divisor| match kind {
                PoolKind::Max => {
                    if let Some(i) = argmax(vx, window.iter().copied()) {
                        dx[i] += dy[o];
                    }
                }
                PoolKind::Avg { .. } => {
                    if divisor > 0.0 {
                        window.iter().for_each(|&i| dx[i] += dy[o].sc(1.0 / divisor));
                    }
                }
            });
            vec![Some(dx)]
        }
        Op::AdaptiveAvgPool2d { x, g } => {
            let mut dx = zeros(x);
            resize_visit(g, None, |o, i, wt| dx[i] += dy[o].sc(wt));
            vec![Some(dx)]
        }
        Op::Interpolate { mode, x, g } => {
            let mut dx = zeros(x);
            resize_visit(g, Some(*mode), |o, i, wt| dx[i] += dy[o].sc(wt));
            vec![Some(dx)]
        }
        Op::BatchNormTrain { x, gamma, relu: false, g, .. } => {
            norm_backward(v(x), dy, v(gamma), g, true).map(Some).into()
        }
        Op::BatchNormTrain { x, gamma, relu: true, g, .. } => {
            let masked: Vec<S> = dy.iter().zip(v(y)).map(|(&d, &o)| if o.re() > 0.0 { d } else { zero }).collect();
            norm_backward(v(x), &masked, v(gamma), g, true).map(Some).into()
        }
        Op::LayerNorm { x, gamma, g, .. } => norm_backward(v(x), dy, v(gamma), g, false).map(Some).into(),
        Op::Softmax { g, log, .. } => {
            let vy = v(y);
            let mut dx = vec![zero; dy.len()];
            for o in 0..g.outer {
                for i in 0..g.inner {
                    let idx = || (0..g.len).map(|k| line(*g, o, k, i));
                    if *log {
                        let s: S = idx().map(|j| dy[j]).sum();
                        idx().for_each(|j| dx[j] = dy[j] - vy[j].exp() * s);
                    } else {
                        let s: S = idx().map(|j| dy[j] * vy[j]).sum();
                        idx().for_each(|j| dx[j] = vy[j] * (dy[j] - s));
                    }
                }
            }
            vec![Some(dx)]
        }
        Op::CrossEntropy { logits, labels } => {
            let (rows, classes) = (logits.dims()[0], logits.dims()[1]);
            let mut d = softmax_lines(v(logits), DimGeom { outer: rows, len: classes, inner: 1 }, false);
            for r in 0..rows {
                d[r * classes + labels[r] as usize] += S::cst(-1.0);
            }
            let s = dy[0].sc(1.0 / rows as f64);
            d.iter_mut().for_each(|x| *x = *x * s);
            vec![Some(d)]
        }
        Op::KlDiv { log_q, p } => {
            let s = dy[0].sc(1.0 / log_q.dims()[0] as f64);
            let (vq, vp) = (v(log_q), v(p));
            let dq = vp.iter().map(|&p| -p * s).collect();
            let dp = vp
                .iter()
                .zip(vq)
                .map(|(&p, &lq)| if p.re() > 0.0 { (p.ln() + S::cst(1.0) - lq) * s } else { zero })
                .collect();
            vec![Some(dq), Some(dp)]
        }
        Op::Sum { x } => match sum_geom(x, y) {
            None => vec![Some(dy.to_vec())],
            Some(g) => {
                let mut dx = zeros(x);
                for o in 0..g.outer {
                    for i in 0..g.inner {
                        (0..g.len).for_each(|k| dx[line(g, o, k, i)] = dy[o * g.inner + i]);
                    }
                }
                vec![Some(dx)]
            }
        },
        Op::Max { x, dim } => {
            let g = DimGeom::new(x.dims(), *dim);
            let vx = v(x);
            let mut dx = zeros(x);
            for o in 0..g.outer {
                for i in 0..g.inner {
                    if let Some(j) = argmax(vx, (0..g.len).map(|k| line(g, o, k, i))) {
                        dx[j] = dy[o * g.inner + i];
                    }
                }
            }
            vec![Some(dx)]
        }
        Op::Normalize { x, dim, eps } => {
            // y = x / max(‖x‖, eps): where ‖x‖ > eps, dx = (dy − x·(x·dy)/‖x‖²)/‖x‖; else dy/eps.
            let g = DimGeom::new(x.dims(), *dim);
            let eps = *eps as f64;
            let vx = v(x);
            let mut dx = zeros(x);
            for o in 0..g.outer {
                for i in 0..g.inner {
                    let idx = || (0..g.len).map(|k| line(g, o, k, i));
                    let n = idx().map(|j| vx[j] * vx[j]).sum::<S>().sqrt();
                    if n.re() > eps {
                        let dot: S = idx().map(|j| vx[j] * dy[j]).sum();
                        idx().for_each(|j| dx[j] = (dy[j] - vx[j] * dot / (n * n)) / n);
                    } else {
                        idx().for_each(|j| dx[j] = dy[j].sc(1.0 / eps));
                    }
                }
            }
            vec![Some(dx)]
        }
        #[allow(unreachable_patterns)]
        other => return Err(unsupported(&format!("op {}", other.name()))),
    })
}
