//! The user-facing op methods: check shapes (errors name them), call the backend, record the op.

use std::sync::Arc;

use super::{Shape, Tensor};
use crate::autograd::Op;
use crate::backend::{
    same_device, BinaryOp, Conv2dGeom, DimGeom, InterpMode, MatmulGeom, NormGeom, Pool2dGeom, PoolKind, ResizeGeom,
    UnaryOp,
};
use crate::error::Result;
use crate::{invalid_err, shape_err};

/// Output extent of a sliding window (floor mode), or an error when the window does not fit.
fn window_out(op: &'static str, input: usize, kernel: usize, stride: usize, pad: usize) -> Result<usize> {
    if stride == 0 || kernel == 0 {
        invalid_err!(op, "kernel {kernel} and stride {stride} must be positive");
    }
    if input + 2 * pad < kernel {
        invalid_err!(op, "kernel {kernel} is larger than the padded input {input}+2*{pad}");
    }
    Ok((input + 2 * pad - kernel) / stride + 1)
}

fn expect_rank(op: &'static str, t: &Tensor, rank: usize, what: &str) -> Result<()> {
    if t.rank() != rank {
        shape_err!(op, "expected {what} of rank {rank}, got shape {}", t.shape());
    }
    Ok(())
}

impl Tensor {
    // ================================================================ elementwise

    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let s = self.backend().unary(op, &self.storage())?;
        Ok(Tensor::from_op(s, self.shape().clone(), Op::Unary { op, x: self.clone() }))
    }
    /// `F.relu`: not seen by forward taps (`nn::Activation::Relu` is the module, which is).
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    pub fn relu6(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu6)
    }
    pub fn leaky_relu(&self, slope: f32) -> Result<Tensor> {
        self.unary(UnaryOp::LeakyRelu(slope))
    }
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn mish(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Mish)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn pow(&self, p: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Pow(p))
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Pow(2.0))
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Affine { mul, add })
    }
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        self.affine(s, 0.0)
    }
    pub fn add_scalar(&self, a: f32) -> Result<Tensor> {
        self.affine(1.0, a)
    }
    pub fn neg(&self) -> Result<Tensor> {
        self.affine(-1.0, 0.0)
    }
    pub fn clamp_min(&self, lo: f32) -> Result<Tensor> {
        self.unary(UnaryOp::ClampMin(lo))
    }

    /// Broadcasting binary op (numpy rules).
    pub fn binary(&self, op: BinaryOp, other: &Tensor) -> Result<Tensor> {
        let name = match op {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        };
        same_device(name, self.device(), other.device())?;
        let out = Shape::broadcast(name, self.shape(), other.shape())?;
        let r = out.rank();
        let s = self.backend().binary(
            op,
            &self.storage(),
            &self.shape().padded(r),
            &other.storage(),
            &other.shape().padded(r),
            out.dims(),
        )?;
        Ok(Tensor::from_op(s, out, Op::Binary { op, a: self.clone(), b: other.clone() }))
    }
    pub fn add(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, o)
    }
    pub fn sub(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, o)
    }
    pub fn mul(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, o)
    }
    pub fn div(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, o)
    }

    /// Sum over the dims that `shape` has as 1 (or lacks): the adjoint of broadcasting.
    pub fn sum_to_shape(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let r = self.rank();
        if shape.rank() > r {
            shape_err!("sum_to_shape", "cannot reduce {} to higher rank {}", self.shape(), shape);
        }
        let target = shape.padded(r);
        for (i, (&t, &d)) in target.iter().zip(self.dims()).enumerate() {
            if t != d && t != 1 {
                shape_err!("sum_to_shape", "cannot reduce {} to {} (dim {i})", self.shape(), shape);
            }
        }
        // Expressed as a chain of recorded sums so that it is differentiable too.
        let mut t = self.clone();
        for (i, &tdim) in target.iter().enumerate() {
            if tdim == 1 && t.dims()[i] != 1 {
                t = t.sum_dim(i as isize, true)?;
            }
        }
        t.reshape(shape.clone())
    }

    /// Repeat along dims of size 1 to reach `shape` (differentiable: an add with zeros).
    pub fn broadcast_to(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let out = Shape::broadcast("broadcast_to", self.shape(), shape)?;
        if &out != shape {
            shape_err!("broadcast_to", "cannot broadcast {} to {}", self.shape(), shape);
        }
        self.add(&Tensor::zeros(shape.clone(), self.device())?)
    }

    // ================================================================ layout

    /// Same memory, new shape (element count must match); a free view.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            shape_err!(
                "reshape",
                "cannot reshape {} ({} elements) to {} ({} elements)",
                self.shape(),
                self.numel(),
                shape,
                shape.numel()
            );
        }
        Ok(Tensor::from_op_shared(self.storage_arc(), shape, Op::Reshape { x: self.clone() }))
    }

    /// Collapse dims [start..] into one.
    pub fn flatten_from(&self, start: usize) -> Result<Tensor> {
        if start > self.rank() {
            invalid_err!("flatten", "start dim {start} out of range for shape {}", self.shape());
        }
        let mut d = self.dims()[..start].to_vec();
        d.push(self.dims()[start..].iter().product());
        self.reshape(d)
    }

    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
            invalid_err!("permute", "{perm:?} is not a permutation of the {r} dims of {}", self.shape());
        }
        let dims: Vec<usize> = perm.iter().map(|&p| self.dims()[p]).collect();
        let s = self.backend().permute(&self.storage(), self.dims(), perm)?;
        Ok(Tensor::from_op(s, dims, Op::Permute { x: self.clone(), perm: perm.to_vec() }))
    }

    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        let r = self.rank();
        if d0 >= r || d1 >= r {
            invalid_err!("transpose", "dims {d0},{d1} out of range for shape {}", self.shape());
        }
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(d0, d1);
        self.permute(&perm)
    }

    pub fn concat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
        let Some(first) = parts.first() else { invalid_err!("concat", "no tensors to concatenate") };
        if dim >= first.rank() {
            invalid_err!("concat", "dim {dim} out of range for shape {}", first.shape());
        }
        for p in parts {
            same_device("concat", first.device(), p.device())?;
            let ok = p.rank() == first.rank()
                && p.dims().iter().zip(first.dims()).enumerate().all(|(i, (a, b))| i == dim || a == b);
            if !ok {
                shape_err!("concat", "shapes {} and {} differ outside dim {dim}", first.shape(), p.shape());
            }
        }
        let g = DimGeom::new(first.dims(), dim);
        let lens: Vec<usize> = parts.iter().map(|p| p.dims()[dim]).collect();
        let guards: Vec<_> = parts.iter().map(|p| p.storage()).collect();
        let refs: Vec<_> = guards.iter().map(|g| &**g).collect();
        let s = first.backend().concat(&refs, g.outer, &lens, g.inner)?;
        let mut out = first.dims().to_vec();
        out[dim] = lens.iter().sum();
        drop(guards);
        Ok(Tensor::from_op(s, out, Op::Concat { parts: parts.iter().map(|&p| p.clone()).collect(), dim }))
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        if dim >= self.rank() || start + len > self.dims()[dim] {
            invalid_err!(
                "narrow",
                "range {start}..{} of dim {dim} out of bounds for shape {}",
                start + len,
                self.shape()
            );
        }
        let s = self.backend().narrow(&self.storage(), DimGeom::new(self.dims(), dim), start, len)?;
        let mut out = self.dims().to_vec();
        out[dim] = len;
        Ok(Tensor::from_op(s, out, Op::Narrow { x: self.clone(), dim, start }))
    }

    /// Split along `dim` into pieces of the given sizes (they must add up to the dim).
    pub fn split(&self, sizes: &[usize], dim: usize) -> Result<Vec<Tensor>> {
        if dim >= self.rank() || sizes.iter().sum::<usize>() != self.dims()[dim] {
            invalid_err!("split", "sizes {sizes:?} do not add up to dim {dim} of shape {}", self.shape());
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                let t = self.narrow(dim, start, n);
                start += n;
                t
            })
            .collect()
    }

    /// ShuffleNet's channel shuffle on [n, c, h, w]: view as [n, g, c/g, h, w], swap g and c/g.
    pub fn channel_shuffle(&self, groups: usize) -> Result<Tensor> {
        expect_rank("channel_shuffle", self, 4, "input [n, c, h, w]")?;
        let [n, c, h, w] = [self.dims()[0], self.dims()[1], self.dims()[2], self.dims()[3]];
        if groups == 0 || c % groups != 0 {
            invalid_err!("channel_shuffle", "{c} channels of {} do not split into {groups} groups", self.shape());
        }
        self.reshape([n, groups, c / groups, h, w])?.permute(&[0, 2, 1, 3, 4])?.reshape([n, c, h, w])
    }

    // ================================================================ matmul

    /// Batched matmul with transposes read through strides: [.., m, k]·[.., k, n] (or the
    /// transposed storage when a flag is set). Leading dims must match or one side has none
    /// (or a single batch), which is then broadcast.
    pub fn matmul_t(&self, other: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        same_device("matmul", self.device(), other.device())?;
        if self.rank() < 2 || other.rank() < 2 {
            shape_err!("matmul", "operands need rank >= 2, got {} and {}", self.shape(), other.shape());
        }
        let (ad, bd) = (self.dims(), other.dims());
        let (ar, br) = (ad.len(), bd.len());
        let (m, ka) = if trans_a { (ad[ar - 1], ad[ar - 2]) } else { (ad[ar - 2], ad[ar - 1]) };
        let (kb, n) = if trans_b { (bd[br - 1], bd[br - 2]) } else { (bd[br - 2], bd[br - 1]) };
        if ka != kb {
            shape_err!(
                "matmul",
                "inner dims differ: {} (trans {trans_a}) · {} (trans {trans_b})",
                self.shape(),
                other.shape()
            );
        }
        let (a_lead, b_lead) = (&ad[..ar - 2], &bd[..br - 2]);
        let (a_batch, b_batch): (usize, usize) = (a_lead.iter().product(), b_lead.iter().product());
        let lead = if a_lead == b_lead || b_batch == 1 && a_lead.len() >= b_lead.len() {
            a_lead.to_vec()
        } else if a_batch == 1 && b_lead.len() >= a_lead.len() {
            b_lead.to_vec()
        } else {
            shape_err!("matmul", "batch dims of {} and {} neither match nor broadcast", self.shape(), other.shape());
        };
        let batch: usize = lead.iter().product();
        let g = MatmulGeom {
            batch,
            m,
            k: ka,
            n,
            trans_a,
            trans_b,
            a_broadcast: a_batch != batch,
            b_broadcast: b_batch != batch,
        };
        super::macs::record((batch * m * ka * n) as u64);
        let s = self.backend().matmul(&self.storage(), &other.storage(), &g)?;
        let mut out = lead;
        out.extend([m, n]);
        Ok(Tensor::from_op(s, out, Op::Matmul { a: self.clone(), b: other.clone(), g }))
    }

    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_t(other, false, false)
    }

    /// Gram matrix X·Xᵀ of the rows of a [rows, cols] (or batched [.., rows, cols]) tensor.
    pub fn gram(&self) -> Result<Tensor> {
        self.matmul_t(self, false, true)
    }

    // ================================================================ convolution, pooling

    /// Conv2d (no bias) of x [n, c_in, h, w] with w [c_out, c_in/groups, kh, kw].
    pub fn conv2d(&self, w: &Tensor, stride: (usize, usize), pad: (usize, usize), groups: usize) -> Result<Tensor> {
        same_device("conv2d", self.device(), w.device())?;
        expect_rank("conv2d", self, 4, "input [n, c, h, w]")?;
        expect_rank("conv2d", w, 4, "weight [c_out, c_in/groups, kh, kw]")?;
        let (x, k) = (self.dims(), w.dims());
        if groups == 0 || x[1] % groups != 0 || k[0] % groups != 0 || k[1] * groups != x[1] {
            shape_err!("conv2d", "input {} and weight {} do not fit groups={groups}", self.shape(), w.shape());
        }
        let g = Conv2dGeom {
            n: x[0],
            c_in: x[1],
            h: x[2],
            w: x[3],
            c_out: k[0],
            kh: k[2],
            kw: k[3],
            stride,
            pad,
            groups,
            h_out: window_out("conv2d", x[2], k[2], stride.0, pad.0)?,
            w_out: window_out("conv2d", x[3], k[3], stride.1, pad.1)?,
        };
        super::macs::record((g.n * g.c_out * g.h_out * g.w_out * k[1] * g.kh * g.kw) as u64);
        let s = self.backend().conv2d(&self.storage(), &w.storage(), &g)?;
        Ok(Tensor::from_op(s, [g.n, g.c_out, g.h_out, g.w_out], Op::Conv2d { x: self.clone(), w: w.clone(), g }))
    }

    pub fn pool2d(
        &self,
        kind: PoolKind,
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
    ) -> Result<Tensor> {
        expect_rank("pool2d", self, 4, "input [n, c, h, w]")?;
        if pad.0 * 2 > kernel.0 || pad.1 * 2 > kernel.1 {
            invalid_err!("pool2d", "padding {pad:?} must be at most half the kernel {kernel:?}");
        }
        let d = self.dims();
        let g = Pool2dGeom {
            n: d[0],
            c: d[1],
            h: d[2],
            w: d[3],
            kernel,
            stride,
            pad,
            h_out: window_out("pool2d", d[2], kernel.0, stride.0, pad.0)?,
            w_out: window_out("pool2d", d[3], kernel.1, stride.1, pad.1)?,
        };
        let s = self.backend().pool2d(kind, &self.storage(), &g)?;
        Ok(Tensor::from_op(s, [g.n, g.c, g.h_out, g.w_out], Op::Pool2d { kind, x: self.clone(), g }))
    }
    pub fn max_pool2d(&self, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
        self.pool2d(PoolKind::Max, (kernel, kernel), (stride, stride), (pad, pad))
    }
    pub fn avg_pool2d(&self, kernel: usize, stride: usize, pad: usize, count_include_pad: bool) -> Result<Tensor> {
        self.pool2d(PoolKind::Avg { count_include_pad }, (kernel, kernel), (stride, stride), (pad, pad))
    }

    fn resize_geom(&self, op: &'static str, h_out: usize, w_out: usize) -> Result<ResizeGeom> {
        expect_rank(op, self, 4, "input [n, c, h, w]")?;
        let d = self.dims();
        if h_out == 0 || w_out == 0 || d[2] == 0 || d[3] == 0 {
            invalid_err!(op, "output size {h_out}x{w_out} from input {} must be non-empty", self.shape());
        }
        Ok(ResizeGeom { n: d[0], c: d[1], h: d[2], w: d[3], h_out, w_out })
    }

    pub fn adaptive_avg_pool2d(&self, h_out: usize, w_out: usize) -> Result<Tensor> {
        let g = self.resize_geom("adaptive_avg_pool2d", h_out, w_out)?;
        let s = self.backend().adaptive_avg_pool2d(&self.storage(), &g)?;
        Ok(Tensor::from_op(s, [g.n, g.c, h_out, w_out], Op::AdaptiveAvgPool2d { x: self.clone(), g }))
    }

    pub fn interpolate(&self, mode: InterpMode, h_out: usize, w_out: usize) -> Result<Tensor> {
        let g = self.resize_geom("interpolate", h_out, w_out)?;
        let s = self.backend().interpolate(mode, &self.storage(), &g)?;
        Ok(Tensor::from_op(s, [g.n, g.c, h_out, w_out], Op::Interpolate { mode, x: self.clone(), g }))
    }

    // ================================================================ normalisation

    fn check_affine(op: &'static str, x: &Tensor, gamma: &Tensor, beta: &Tensor, c: usize) -> Result<()> {
        same_device(op, x.device(), gamma.device())?;
        same_device(op, x.device(), beta.device())?;
        if gamma.numel() != c || beta.numel() != c {
            shape_err!(
                op,
                "weight {} and bias {} must have {c} elements for input {}",
                gamma.shape(),
                beta.shape(),
                x.shape()
            );
        }
        Ok(())
    }

    /// Train-mode batchnorm over dim 1 of [n, c, ...]: normalises with batch statistics and
    /// updates `running_mean` / `running_var` in place (momentum, unbiased variance).
    pub fn batch_norm_train(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        momentum: f32,
        eps: f32,
    ) -> Result<Tensor> {
        self.batch_norm_train_act(gamma, beta, running_mean, running_var, momentum, eps, false)
    }

    /// Train-mode batchnorm followed by ReLU when `relu`, as one op: one pass less over the
    /// activations forward and backward than `batch_norm_train(..)?.relu()`, same values.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_train_act(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        momentum: f32,
        eps: f32,
        relu: bool,
    ) -> Result<Tensor> {
        if self.rank() < 2 {
            shape_err!("batch_norm", "input needs shape [n, c, ...], got {}", self.shape());
        }
        let (n, c) = (self.dims()[0], self.dims()[1]);
        Tensor::check_affine("batch_norm", self, gamma, beta, c)?;
        let hw = self.numel() / (n * c).max(1);
        if n * hw < 2 {
            invalid_err!("batch_norm", "training needs more than one value per channel, got input {}", self.shape());
        }
        let g = NormGeom { n, c, hw, eps, momentum };
        let (y, mean, invstd) = {
            let mut rm = running_mean.storage_mut();
            let mut rv = running_var.storage_mut();
            let (x, gamma, beta) = (self.storage(), gamma.storage(), beta.storage());
            self.backend().batch_norm_train(&x, &gamma, &beta, &mut rm, &mut rv, relu, &g)?
        };
        Ok(Tensor::from_op(
            y,
            self.shape().clone(),
            Op::BatchNormTrain { x: self.clone(), gamma: gamma.clone(), beta: beta.clone(), mean, invstd, relu, g },
        ))
    }

    /// Eval-mode batchnorm with running statistics: a per-channel affine, composed of
    /// differentiable ops so gradients reach x, weight and bias.
    pub fn batch_norm_eval(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        self.batch_norm_eval_fused(gamma, beta, running_mean, running_var, eps, None, false)
    }

    /// Eval-mode batchnorm, then `+ residual` when given, then ReLU when `relu`: a ResNet block's
    /// tail. One pass through [`Tensor::channel_affine`] when no gradient is recorded.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_eval_fused(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        if self.rank() < 2 {
            shape_err!("batch_norm", "input needs shape [n, c, ...], got {}", self.shape());
        }
        let c = self.dims()[1];
        Tensor::check_affine("batch_norm", self, gamma, beta, c)?;
        let invstd = running_var.detach().add_scalar(eps)?.pow(-0.5)?;
        let scale = gamma.mul(&invstd)?;
        let shift = beta.sub(&running_mean.detach().mul(&scale)?)?;
        self.channel_affine(&scale, &shift, residual, relu)
    }

    /// y = self·scale[c] + shift[c] (+ residual), then ReLU when `relu`, over dim 1 of [n, c, ...].
    /// One backend pass when no gradient is recorded (eval-mode inference, frozen teachers); the
    /// differentiable mul, add, add and relu otherwise, which round the same way: equal values.
    pub fn channel_affine(
        &self,
        scale: &Tensor,
        shift: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        if self.rank() < 2 {
            shape_err!("channel_affine", "input needs shape [n, c, ...], got {}", self.shape());
        }
        let c = self.dims()[1];
        Tensor::check_affine("channel_affine", self, scale, shift, c)?;
        if let Some(r) = residual {
            same_device("channel_affine", self.device(), r.device())?;
            if r.shape() != self.shape() {
                shape_err!("channel_affine", "residual {} must have the input's shape {}", r.shape(), self.shape());
            }
        }
        let inputs = [Some(self), Some(scale), Some(shift), residual];
        if crate::autograd::is_recording() && inputs.iter().flatten().any(|t| t.requires_grad()) {
            let mut bshape = vec![1; self.rank()];
            bshape[1] = c;
            let mut y = self.mul(&scale.reshape(bshape.clone())?)?.add(&shift.reshape(bshape)?)?;
            if let Some(r) = residual {
                y = y.add(r)?;
            }
            return if relu { y.relu() } else { Ok(y) };
        }
        let g =
            NormGeom { n: self.dims()[0], c, hw: self.numel() / (self.dims()[0] * c).max(1), eps: 0.0, momentum: 0.0 };
        let res = residual.map(|r| r.storage());
        let y = self.backend().channel_affine(
            &self.storage(),
            &scale.storage(),
            &shift.storage(),
            res.as_deref(),
            relu,
            &g,
        )?;
        Ok(Tensor::from_storage(y, self.shape().clone()))
    }

    /// Layer norm over the last dim.
    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        let Some(&cols) = self.dims().last() else {
            shape_err!("layer_norm", "input must have rank >= 1, got a scalar")
        };
        Tensor::check_affine("layer_norm", self, gamma, beta, cols)?;
        let g = NormGeom { n: self.numel() / cols.max(1), c: cols, hw: 1, eps, momentum: 0.0 };
        let (y, mean, invstd) = self.backend().layer_norm(&self.storage(), &gamma.storage(), &beta.storage(), &g)?;
        Ok(Tensor::from_op(
            y,
            self.shape().clone(),
            Op::LayerNorm { x: self.clone(), gamma: gamma.clone(), beta: beta.clone(), mean, invstd, g },
        ))
    }

    // ================================================================ softmax family, losses

    fn softmax_impl(&self, dim: isize, log: bool) -> Result<Tensor> {
        let d = self.shape().resolve_dim("softmax", dim)?;
        let g = DimGeom::new(self.dims(), d);
        let s = self.backend().softmax(&self.storage(), g, log)?;
        Ok(Tensor::from_op(s, self.shape().clone(), Op::Softmax { x: self.clone(), g, log }))
    }
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, false)
    }
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, true)
    }

    /// Mean cross-entropy of logits [rows, classes] against integer labels.
    pub fn cross_entropy(&self, labels: &[u32]) -> Result<Tensor> {
        expect_rank("cross_entropy", self, 2, "logits [batch, classes]")?;
        let (rows, classes) = (self.dims()[0], self.dims()[1]);
        if labels.len() != rows {
            shape_err!("cross_entropy", "{} labels for logits {}", labels.len(), self.shape());
        }
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
            invalid_err!("cross_entropy", "label {bad} out of range for {classes} classes");
        }
        let s = self.backend().cross_entropy(&self.storage(), labels, rows, classes)?;
        Ok(Tensor::from_op(
            s,
            Shape::from(vec![]),
            Op::CrossEntropy { logits: self.clone(), labels: Arc::from(labels) },
        ))
    }

    /// `F.kl_div(self, target, reduction="batchmean")`: self holds log-probabilities q, target
    /// probabilities p, both [rows, classes]; returns Σ p·(log p − log q) / rows.
    pub fn kl_div(&self, target: &Tensor) -> Result<Tensor> {
        same_device("kl_div", self.device(), target.device())?;
        if self.shape() != target.shape() || self.rank() < 1 {
            shape_err!(
                "kl_div",
                "log-probabilities {} and target {} must have one shape [rows, ...]",
                self.shape(),
                target.shape()
            );
        }
        let s = self.backend().kl_div(&self.storage(), &target.storage(), self.dims()[0])?;
        Ok(Tensor::from_op(s, Shape::from(vec![]), Op::KlDiv { log_q: self.clone(), p: target.clone() }))
    }

    // ================================================================ reductions

    /// Sum over one dim (kept as size 1 when `keepdim`).
    pub fn sum_dim(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = self.shape().resolve_dim("sum", dim)?;
        let s = self.backend().reduce_sum(&self.storage(), DimGeom::new(self.dims(), d))?;
        let mut out = self.dims().to_vec();
        out[d] = 1;
        let t = Tensor::from_op(s, out, Op::Sum { x: self.clone() });
        if keepdim {
            Ok(t)
        } else {
            t.squeeze_dim(d)
        }
    }

    /// Sum over several dims.
    pub fn sum_dims(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let mut resolved: Vec<usize> =
            dims.iter().map(|&d| self.shape().resolve_dim("sum", d)).collect::<Result<_>>()?;
        resolved.sort_unstable();
        resolved.dedup();
        let mut t = self.clone();
        for &d in &resolved {
            t = t.sum_dim(d as isize, true)?;
        }
        if keepdim {
            return Ok(t);
        }
        let out: Vec<usize> =
            t.dims().iter().enumerate().filter(|(i, _)| !resolved.contains(i)).map(|(_, &v)| v).collect();
        t.reshape(out)
    }

    /// Sum of all elements, as a scalar.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.reshape([self.numel()])?.sum_dim(0, false)
    }
    pub fn mean_all(&self) -> Result<Tensor> {
        self.sum_all()?.scale(1.0 / self.numel() as f32)
    }

    pub fn mean_dims(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let s = self.sum_dims(dims, keepdim)?;
        let count = self.numel() / s.numel().max(1);
        s.scale(1.0 / count as f32)
    }

    /// Variance over dims; `unbiased` divides by count − 1 (PyTorch's default).
    pub fn var_dims(&self, dims: &[isize], unbiased: bool, keepdim: bool) -> Result<Tensor> {
        let mean = self.mean_dims(dims, true)?;
        let centred = self.sub(&mean)?;
        let ss = centred.sqr()?.sum_dims(dims, keepdim)?;
        let count = self.numel() / ss.numel().max(1);
        let denom = if unbiased { count.saturating_sub(1) } else { count };
        if denom == 0 {
            invalid_err!("var", "unbiased variance of one value per group in {}", self.shape());
        }
        ss.scale(1.0 / denom as f32)
    }

    /// L2 norm over dims.
    pub fn norm_dims(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.sqr()?.sum_dims(dims, keepdim)?.sqrt()
    }

    /// Max over one dim; the gradient goes to the first maximum.
    pub fn max_dim(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = self.shape().resolve_dim("max", dim)?;
        if self.dims()[d] == 0 {
            invalid_err!("max", "dim {d} of {} is empty", self.shape());
        }
        let s = self.backend().reduce_max(&self.storage(), DimGeom::new(self.dims(), d))?;
        let mut out = self.dims().to_vec();
        out[d] = 1;
        let t = Tensor::from_op(s, out, Op::Max { x: self.clone(), dim: d });
        if keepdim {
            Ok(t)
        } else {
            t.squeeze_dim(d)
        }
    }

    /// `F.normalize(x, p=2, dim, eps=1e-12)`.
    pub fn normalize(&self, dim: isize, eps: f32) -> Result<Tensor> {
        let d = self.shape().resolve_dim("normalize", dim)?;
        let s = self.backend().normalize(&self.storage(), DimGeom::new(self.dims(), d), eps)?;
        Ok(Tensor::from_op(s, self.shape().clone(), Op::Normalize { x: self.clone(), dim: d, eps }))
    }

    fn squeeze_dim(&self, d: usize) -> Result<Tensor> {
        let mut out = self.dims().to_vec();
        out.remove(d);
        self.reshape(out)
    }

    /// Index of the largest value of each row of a [rows, cols] tensor (no gradient).
    pub fn argmax_rows(&self) -> Result<Vec<usize>> {
        expect_rank("argmax", self, 2, "a [rows, cols] tensor")?;
        let cols = self.dims()[1];
        let v = self.to_vec()?;
        Ok(v.chunks(cols.max(1))
            .map(|r| {
                r.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best })
                    .0
            })
            .collect())
    }
}
