//! Define-by-run reverse mode. An op result remembers its `Op` (inputs + whatever the backward
//! needs) only when an input requires a gradient and recording is on, so scoring without
//! gradients pays nothing. `backward` walks the graph in reverse topological order and applies
//! one short rule per primitive, all in the table in `backward_rule`. First order only: the
//! rules run with recording off (DistPro's second-order term is a finite difference by design).
//! Exact second-order products (GraSP's H·g) come from the f64 replay of the recorded graph in
//! dual numbers, `replay_f64::hessian_vector_f64`.

pub mod real;
pub mod replay_f64;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::backend::{
    BinaryOp, Conv2dGeom, DimGeom, InterpMode, MatmulGeom, NormGeom, Pool2dGeom, PoolKind, ResizeGeom, Storage, UnaryOp,
};
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};

thread_local! {
    static RECORDING: Cell<bool> = const { Cell::new(true) };
}

pub fn is_recording() -> bool {
    RECORDING.with(|r| r.get())
}

/// Turns recording off until dropped (evaluation, teacher forward passes, optimiser steps).
pub struct NoGradGuard {
    previous: bool,
}

pub fn no_grad() -> NoGradGuard {
    let previous = RECORDING.with(|r| r.replace(false));
    NoGradGuard { previous }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        RECORDING.with(|r| r.set(self.previous));
    }
}

/// What each primitive keeps for its backward rule.
pub(crate) enum Op {
    Unary {
        op: UnaryOp,
        x: Tensor,
    },
    Binary {
        op: BinaryOp,
        a: Tensor,
        b: Tensor,
    },
    Reshape {
        x: Tensor,
    },
    Permute {
        x: Tensor,
        perm: Vec<usize>,
    },
    Concat {
        parts: Vec<Tensor>,
        dim: usize,
    },
    Narrow {
        x: Tensor,
        dim: usize,
        start: usize,
    },
    Matmul {
        a: Tensor,
        b: Tensor,
        g: MatmulGeom,
    },
    Conv2d {
        x: Tensor,
        w: Tensor,
        g: Conv2dGeom,
    },
    Pool2d {
        kind: PoolKind,
        x: Tensor,
        g: Pool2dGeom,
    },
    AdaptiveAvgPool2d {
        x: Tensor,
        g: ResizeGeom,
    },
    Interpolate {
        mode: InterpMode,
        x: Tensor,
        g: ResizeGeom,
    },
    /// With `relu`, the output is max(bn(x), 0): the ReLU fused into the same op.
    BatchNormTrain {
        x: Tensor,
        gamma: Tensor,
        beta: Tensor,
        mean: Storage,
        invstd: Storage,
        relu: bool,
        g: NormGeom,
    },
    LayerNorm {
        x: Tensor,
        gamma: Tensor,
        beta: Tensor,
        mean: Storage,
        invstd: Storage,
        g: NormGeom,
    },
    Softmax {
        x: Tensor,
        g: DimGeom,
        log: bool,
    },
    CrossEntropy {
        logits: Tensor,
        labels: Arc<[u32]>,
    },
    KlDiv {
        log_q: Tensor,
        p: Tensor,
    },
    /// Sum over one dim, keeping it with size 1.
    Sum {
        x: Tensor,
    },
    /// Max over one dim, keeping it with size 1.
    Max {
        x: Tensor,
        dim: usize,
    },
    Normalize {
        x: Tensor,
        dim: usize,
        eps: f32,
    },
}

impl Op {
    /// The primitive's name, for error messages (the tensor method that records it).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Unary { .. } => "unary",
            Op::Binary { .. } => "binary",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Concat { .. } => "concat",
            Op::Narrow { .. } => "narrow",
            Op::Matmul { .. } => "matmul",
            Op::Conv2d { .. } => "conv2d",
            Op::Pool2d { .. } => "pool2d",
            Op::AdaptiveAvgPool2d { .. } => "adaptive_avg_pool2d",
            Op::Interpolate { .. } => "interpolate",
            Op::BatchNormTrain { .. } => "batch_norm_train",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Softmax { .. } => "softmax",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::KlDiv { .. } => "kl_div",
            Op::Sum { .. } => "sum",
            Op::Max { .. } => "max",
            Op::Normalize { .. } => "normalize",
        }
    }

    pub(crate) fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Unary { x, .. }
            | Op::Reshape { x }
            | Op::Permute { x, .. }
            | Op::Narrow { x, .. }
            | Op::Pool2d { x, .. }
            | Op::AdaptiveAvgPool2d { x, .. }
            | Op::Interpolate { x, .. }
            | Op::Softmax { x, .. }
            | Op::Sum { x, .. }
            | Op::Max { x, .. }
            | Op::Normalize { x, .. } => vec![x],
            Op::CrossEntropy { logits, .. } => vec![logits],
            Op::Binary { a, b, .. } | Op::Matmul { a, b, .. } => vec![a, b],
            Op::Conv2d { x, w, .. } => vec![x, w],
            Op::KlDiv { log_q, p } => vec![log_q, p],
            Op::BatchNormTrain { x, gamma, beta, .. } | Op::LayerNorm { x, gamma, beta, .. } => {
                vec![x, gamma, beta]
            }
            Op::Concat { parts, .. } => parts.iter().collect(),
        }
    }
}

/// Gradients keyed by tensor id.
#[derive(Default)]
pub struct Grads(HashMap<TensorId, Tensor>);

impl Grads {
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.0.get(&t.id())
    }
    /// The gradient of `t`, or an error naming it when `t` did not reach the loss.
    pub fn of(&self, t: &Tensor) -> Result<&Tensor> {
        self.get(t).ok_or_else(|| {
            Error::invalid(
                "grad",
                format!(
                    "no gradient for tensor of shape {}: it does not reach the loss or does not require grad",
                    t.shape()
                ),
            )
        })
    }
    /// The gradient of a parameter, or zeros of its shape when it did not reach the loss (a conv
    /// on a NAS cell's edge that leads nowhere): PyTorch's `allow_unused=True` gradient as
    /// zero-cost-nas reads it. Only for parameters, whose "unused" means "zero sensitivity"; a
    /// tensor that does not require grad was never tracked, which stays an error.
    pub fn of_param_or_zeros(&self, param: &Tensor) -> Result<Tensor> {
        if !param.requires_grad() {
            return Err(Error::invalid(
                "grad",
                format!(
                    "tensor of shape {} does not require grad: call requires_grad_() before the forward",
                    param.shape()
                ),
            ));
        }
        match self.get(param) {
            Some(g) => Ok(g.clone()),
            None => Tensor::zeros(param.shape().clone(), param.device()),
        }
    }
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.0.remove(&t.id())
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reverse-mode sweep from a scalar `root`.
pub(crate) fn backward(root: &Tensor, keep: &[Tensor]) -> Result<Grads> {
    if root.numel() != 1 {
        return Err(Error::shape("backward", format!("the loss must have one element, got shape {}", root.shape())));
    }
    if !root.requires_grad() {
        return Err(Error::invalid("backward", "the loss does not depend on any tensor that requires grad"));
    }
    let _guard = no_grad();
    let order = topological_order(root);
    let keep_ids: HashSet<TensorId> = keep.iter().map(|t| t.id()).collect();
    let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
    grads.insert(root.id(), Tensor::ones(root.shape().clone(), root.device())?);
    for node in order.iter().rev() {
        let Some(op) = node.op() else { continue };
        let Some(grad) = grads.get(&node.id()).cloned() else {
            continue;
        };
        let input_grads = backward_rule(op, node, &grad)?;
        // Intermediate gradients are dropped once used (unless asked for); leaves keep theirs.
        if !keep_ids.contains(&node.id()) {
            grads.remove(&node.id());
        }
        for (input, g) in op.inputs().into_iter().zip(input_grads) {
            let Some(g) = g else { continue };
            if !input.requires_grad() {
                continue;
            }
            debug_assert_eq!(g.dims(), input.dims(), "gradient shape for op input");
            let acc = match grads.remove(&input.id()) {
                Some(prev) => accumulate(prev, g)?,
                None => g,
            };
            grads.insert(input.id(), acc);
        }
    }
    Ok(Grads(grads))
}

/// prev + g, in place in whichever of the two no one else holds (the sum is the same bits either
/// way: f32 addition commutes), else in a new tensor. Gradients are often shared (Add hands the
/// same dy to both operands), so uniqueness is checked, never assumed.
fn accumulate(prev: Tensor, g: Tensor) -> Result<Tensor> {
    if prev.dims() == g.dims() && prev.device() == g.device() {
        for (acc, x) in [(&prev, &g), (&g, &prev)] {
            if acc.is_sole_owner() && !acc.requires_grad() {
                acc.backend().add_assign(&mut acc.storage_mut(), &x.storage())?;
                return Ok(acc.clone());
            }
        }
    }
    prev.add(&g)
}

/// Tensors reachable from root through tracked ops, inputs before outputs (iterative DFS, so
/// deep networks cannot overflow the stack).
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(op) = t.op() {
            for input in op.inputs() {
                if input.requires_grad() && !seen.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}

fn wrap(s: Storage, like: &Tensor) -> Tensor {
    Tensor::from_storage(s, like.shape().clone())
}

/// The backward table: for output `y = op(inputs)` with upstream gradient `dy`, the gradient of
/// each input (None where an input takes none). One arm per primitive.
fn backward_rule(op: &Op, y: &Tensor, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let be = y.backend();
    let dys = dy.storage();
    Ok(match op {
        Op::Unary { op, x } => vec![Some(wrap(be.unary_backward(*op, &x.storage(), &y.storage(), &dys)?, x))],
        Op::Binary { op, a, b } => {
            // d(a∘b): elementwise rule, then sum over the dims each operand was broadcast along.
            let (ga, gb) = match op {
                BinaryOp::Add => (dy.clone(), dy.clone()),
                BinaryOp::Sub => (dy.clone(), dy.neg()?),
                BinaryOp::Mul => (dy.mul(b)?, dy.mul(a)?),
                BinaryOp::Div => {
                    let ga = dy.div(b)?;
                    (ga.clone(), ga.mul(y)?.neg()?)
                }
            };
            vec![Some(ga.sum_to_shape(a.shape())?), Some(gb.sum_to_shape(b.shape())?)]
        }
        Op::Reshape { x } => vec![Some(dy.reshape(x.shape().clone())?)],
        Op::Permute { x: _, perm } => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            vec![Some(dy.permute(&inverse)?)]
        }
        Op::Concat { parts, dim } => {
            let mut start = 0;
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                let len = p.dims()[*dim];
                out.push(Some(dy.narrow(*dim, start, len)?));
                start += len;
            }
            out
        }
        Op::Narrow { x, dim, start } => {
            // Zero-pad dy back to x's extent along dim.
            let len = dy.dims()[*dim];
            let total = x.dims()[*dim];
            let mut parts = Vec::new();
            let piece = |n: usize| {
                let mut d = x.dims().to_vec();
                d[*dim] = n;
                Tensor::zeros(d, x.device())
            };
            if *start > 0 {
                parts.push(piece(*start)?);
            }
            parts.push(dy.clone());
            if start + len < total {
                parts.push(piece(total - start - len)?);
            }
            vec![Some(Tensor::concat(&parts.iter().collect::<Vec<_>>(), *dim)?)]
        }
        Op::Matmul { a, b, g } => {
            // C = op(A)·op(B): dop(A) = dC·op(B)ᵀ and dop(B) = op(A)ᵀ·dC, each written in the
            // storage orientation of its operand by choosing operand order and transpose flags.
            let mm = |x: &Storage, y: &Storage, m, k, n, ta, tb, xb, yb| {
                let geom =
                    MatmulGeom { batch: g.batch, m, k, n, trans_a: ta, trans_b: tb, a_broadcast: xb, b_broadcast: yb };
                be.matmul(x, y, &geom)
            };
            // A broadcast operand receives the sum over the batch.
            let batch_sum = |s: Storage, per: usize, broadcast: bool| -> Result<Storage> {
                if broadcast && g.batch > 1 {
                    be.reduce_sum(&s, DimGeom { outer: 1, len: g.batch, inner: per })
                } else {
                    Ok(s)
                }
            };
            let (sa, sb) = (a.storage(), b.storage());
            let da = if !a.requires_grad() {
                None
            } else if g.trans_a {
                // A stored [k, m]: dA = op(B)·dCᵀ.
                Some(mm(&sb, &dys, g.k, g.n, g.m, g.trans_b, true, g.b_broadcast, false)?)
            } else {
                Some(mm(&dys, &sb, g.m, g.n, g.k, false, !g.trans_b, false, g.b_broadcast)?)
            };
            let db = if !b.requires_grad() {
                None
            } else if g.trans_b {
                // B stored [n, k]: dB = dCᵀ·op(A).
                Some(mm(&dys, &sa, g.n, g.m, g.k, true, g.trans_a, false, g.a_broadcast)?)
            } else {
                Some(mm(&sa, &dys, g.k, g.m, g.n, !g.trans_a, false, g.a_broadcast, false)?)
            };
            let da = da.map(|d| batch_sum(d, g.m * g.k, g.a_broadcast).map(|d| wrap(d, a))).transpose()?;
            let db = db.map(|d| batch_sum(d, g.k * g.n, g.b_broadcast).map(|d| wrap(d, b))).transpose()?;
            vec![da, db]
        }
        Op::Conv2d { x, w, g } => {
            // The network input takes no gradient: skip its (full-cost) backward-data pass.
            let dx =
                if x.requires_grad() { Some(wrap(be.conv2d_backward_data(&dys, &w.storage(), g)?, x)) } else { None };
            let dw =
                if w.requires_grad() { Some(wrap(be.conv2d_backward_weight(&x.storage(), &dys, g)?, w)) } else { None };
            vec![dx, dw]
        }
        Op::Pool2d { kind, x, g } => vec![Some(wrap(be.pool2d_backward(*kind, &x.storage(), &dys, g)?, x))],
        Op::AdaptiveAvgPool2d { x, g } => {
            vec![Some(wrap(be.adaptive_avg_pool2d_backward(&dys, g)?, x))]
        }
        Op::Interpolate { mode, x, g } => {
            vec![Some(wrap(be.interpolate_backward(*mode, &dys, g)?, x))]
        }
        Op::BatchNormTrain { x, gamma, beta, mean, invstd, relu, g } => {
            let ys = y.storage();
            let relu_out = relu.then_some(&*ys);
            let (dx, dg, db) =
                be.batch_norm_backward(&x.storage(), &dys, &gamma.storage(), mean, invstd, relu_out, g)?;
            vec![Some(wrap(dx, x)), Some(wrap(dg, gamma)), Some(wrap(db, beta))]
        }
        Op::LayerNorm { x, gamma, beta, mean, invstd, g } => {
            let (dx, dg, db) = be.layer_norm_backward(&x.storage(), &dys, &gamma.storage(), mean, invstd, g)?;
            vec![Some(wrap(dx, x)), Some(wrap(dg, gamma)), Some(wrap(db, beta))]
        }
        Op::Softmax { x, g, log } => vec![Some(wrap(be.softmax_backward(&y.storage(), &dys, *g, *log)?, x))],
        Op::CrossEntropy { logits, labels } => {
            let (rows, classes) = (logits.dims()[0], logits.dims()[1]);
            vec![Some(wrap(be.cross_entropy_backward(&logits.storage(), labels, &dys, rows, classes)?, logits))]
        }
        Op::KlDiv { log_q, p } => {
            let (dq, dp) = be.kl_div_backward(&log_q.storage(), &p.storage(), &dys, log_q.dims()[0])?;
            vec![Some(wrap(dq, log_q)), Some(wrap(dp, p))]
        }
        Op::Sum { x } => vec![Some(dy.broadcast_to(x.shape())?)],
        Op::Max { x, dim } => {
            let g = DimGeom::new(x.dims(), *dim);
            vec![Some(wrap(be.reduce_max_backward(&x.storage(), &dys, g)?, x))]
        }
        Op::Normalize { x, dim, eps } => {
            let g = DimGeom::new(x.dims(), *dim);
            vec![Some(wrap(be.normalize_backward(&x.storage(), &dys, g, *eps)?, x))]
        }
    })
}
