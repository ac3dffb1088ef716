//! The op set on any [`Gpu`]: size checks, parameter structs, launch shapes, and the calls to
//! the typed launch wrappers. Geometry is already checked by `Tensor`; this layer only refuses
//! what the kernels cannot represent (2^31 elements or more, rank above 8), with an error naming
//! the op. Every op of the trait has its kernels; nothing runs on the CPU.

use super::kernels as k;
use super::params::*;
use super::{Gpu, LaunchCfg};
use crate::backend::{
    Backend, BinaryOp, Conv2dGeom, Device, DimGeom, InterpMode, MatmulGeom, NormGeom, Pool2dGeom, PoolKind, QuantGeom,
    ResizeGeom, SgdStep, Storage, UnaryOp,
};
use crate::error::{Error, Result};

/// The kernels as a `Backend` on device `G`.
pub struct GpuBackend<G: Gpu> {
    pub gpu: G,
}

/// A count as the kernels' int, or an error naming the op.
fn int(op: &'static str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Device {
        op,
        detail: format!("{n} elements: the CUDA kernels index with 32-bit ints (at most 2^31 - 1); split the tensor"),
    })
}

fn rank_dims(op: &'static str, dims: &[usize]) -> Result<[i32; MAX_RANK]> {
    if dims.len() > MAX_RANK {
        return Err(Error::Device {
            op,
            detail: format!("rank {} above the CUDA kernels' limit of {MAX_RANK}", dims.len()),
        });
    }
    let mut out = [1i32; MAX_RANK];
    for (o, &d) in out.iter_mut().zip(dims) {
        *o = int(op, d)?;
    }
    Ok(out)
}

fn norm_params(op: &'static str, g: &NormGeom) -> Result<NormParams> {
    int(op, g.n * g.c * g.hw)?;
    Ok(NormParams { n: g.n as i32, c: g.c as i32, hw: g.hw as i32, eps: g.eps, momentum: g.momentum, relu: 0 })
}

fn unary_code(op: UnaryOp) -> (i32, f32, f32) {
    match op {
        UnaryOp::Relu => (0, 0.0, 0.0),
        UnaryOp::Relu6 => (1, 0.0, 0.0),
        UnaryOp::LeakyRelu(s) => (2, s, 0.0),
        UnaryOp::Gelu => (3, 0.0, 0.0),
        UnaryOp::Sigmoid => (4, 0.0, 0.0),
        UnaryOp::Tanh => (5, 0.0, 0.0),
        UnaryOp::Mish => (6, 0.0, 0.0),
        UnaryOp::Exp => (7, 0.0, 0.0),
        UnaryOp::Log => (8, 0.0, 0.0),
        UnaryOp::Sqrt => (9, 0.0, 0.0),
        UnaryOp::Pow(p) => (10, p, 0.0),
        UnaryOp::Abs => (11, 0.0, 0.0),
        UnaryOp::Affine { mul, add } => (12, mul, add),
        UnaryOp::ClampMin(lo) => (13, lo, 0.0),
    }
}

fn unary_params(op: UnaryOp, n: usize) -> Result<UnaryParams> {
    let (code, a, b) = unary_code(op);
    Ok(UnaryParams { n: int("unary", n)?, op: code, a, b })
}

fn axis(op: &'static str, g: DimGeom, flag: i32, eps: f32) -> Result<AxisParams> {
    int(op, g.outer * g.len * g.inner)?;
    Ok(AxisParams { outer: int(op, g.outer)?, len: int(op, g.len)?, inner: int(op, g.inner)?, flag, eps })
}

/// Row-major strides with 0 on broadcast dims (size 1 against a larger output).
fn broadcast_strides(dims: &[usize], out: &[usize]) -> [i32; MAX_RANK] {
    let mut strides = [0i32; MAX_RANK];
    let mut s = 1usize;
    for i in (0..dims.len()).rev() {
        strides[i] = if dims[i] == 1 && out[i] != 1 { 0 } else { s as i32 };
        s *= dims[i];
    }
    strides
}

fn conv_params(op: &'static str, g: &Conv2dGeom) -> Result<ConvParams> {
    int(op, g.n * g.c_in * g.h * g.w)?;
    int(op, g.n * g.c_out * g.h_out * g.w_out)?;
    int(op, g.c_out * (g.c_in / g.groups) * g.kh * g.kw)?;
    Ok(ConvParams {
        n: g.n as i32,
        c_in: g.c_in as i32,
        h: g.h as i32,
        w: g.w as i32,
        c_out: g.c_out as i32,
        kh: int(op, g.kh)?,
        kw: int(op, g.kw)?,
        stride_h: int(op, g.stride.0)?,
        stride_w: int(op, g.stride.1)?,
        pad_h: int(op, g.pad.0)?,
        pad_w: int(op, g.pad.1)?,
        groups: int(op, g.groups)?,
        h_out: g.h_out as i32,
        w_out: g.w_out as i32,
        k_chunk: int(op, g.n * g.h_out * g.w_out)?,
    })
}

fn pool_params(op: &'static str, kind: PoolKind, g: &Pool2dGeom) -> Result<PoolParams> {
    int(op, g.n * g.c * g.h * g.w)?;
    int(op, g.n * g.c * g.h_out * g.w_out)?;
    Ok(PoolParams {
        n: g.n as i32,
        c: g.c as i32,
        h: g.h as i32,
        w: g.w as i32,
        kh: int(op, g.kernel.0)?,
        kw: int(op, g.kernel.1)?,
        stride_h: int(op, g.stride.0)?,
        stride_w: int(op, g.stride.1)?,
        pad_h: int(op, g.pad.0)?,
        pad_w: int(op, g.pad.1)?,
        h_out: g.h_out as i32,
        w_out: g.w_out as i32,
        kind: match kind {
            PoolKind::Max => 0,
            PoolKind::Avg { count_include_pad: true } => 1,
            PoolKind::Avg { count_include_pad: false } => 2,
        },
    })
}

fn resize_params(op: &'static str, mode: i32, g: &ResizeGeom) -> Result<ResizeParams> {
    int(op, g.n * g.c * g.h * g.w)?;
    int(op, g.n * g.c * g.h_out * g.w_out)?;
    if g.h == 0 || g.w == 0 {
        return Err(Error::invalid(op, format!("empty {}x{} input map: nothing to resample", g.h, g.w)));
    }
    // Products of indices with sizes (adaptive bins) are taken in 64 bits by the kernels.
    Ok(ResizeParams {
        n: g.n as i32,
        c: g.c as i32,
        h: g.h as i32,
        w: g.w as i32,
        h_out: g.h_out as i32,
        w_out: g.w_out as i32,
        mode,
    })
}

fn interp_code(mode: InterpMode) -> i32 {
    match mode {
        InterpMode::Nearest => 0,
        InterpMode::Bilinear => 1,
    }
}

/// The common length of two operands of an elementwise op, or an error naming both.
fn equal_lens(op: &'static str, a: (&str, &Storage), b: (&str, &Storage)) -> Result<usize> {
    if a.1.len() != b.1.len() {
        return Err(Error::invalid(
            op,
            format!("{} has {} elements and {} has {}; pass equal lengths", a.0, a.1.len(), b.0, b.1.len()),
        ));
    }
    Ok(a.1.len())
}

fn quant_params(op: &'static str, g: &QuantGeom) -> Result<QuantParams> {
    int(op, g.channels * g.len)?;
    Ok(QuantParams { channels: g.channels as i32, len: g.len as i32, qmax: g.qmax() })
}

/// One input channel per group: the direct depthwise kernels (any channel multiplier).
fn is_depthwise(g: &Conv2dGeom) -> bool {
    g.groups == g.c_in
}

/// The grid of the tiled GEMM core: 64 x 64 tiles of a (rows x cols) result, `z` of them
/// (groups, batch).
fn tiles64(op: &'static str, cols: usize, rows: usize, z: usize) -> Result<LaunchCfg> {
    let (gx, gy) = (cols.div_ceil(64), rows.div_ceil(64));
    if gy > 65535 || z > 65535 {
        return Err(Error::Device {
            op,
            detail: format!("{gy} row tiles of {rows} rows or {z} groups/batches above the CUDA grid limit of 65535"),
        });
    }
    Ok(LaunchCfg { grid: [int(op, gx)? as u32, gy as u32, z as u32], block: [256, 1, 1], smem: 0 })
}

/// Split-K of conv_bwd_weight over its `pixels` reduction: chunks of at least 128 pixels (a
/// multiple of the 16-deep k-step), as many as it takes for the `tiles` output tiles to make
/// ~264 blocks (two per H100 SM), at most 256. Depends only on the geometry, so the summation
/// order, and with it every bit of the result, is the same on every run.
fn weight_splits(pixels: usize, tiles: usize) -> (usize, usize) {
    const MIN_CHUNK: usize = 128;
    let want = (264 / tiles.max(1)).clamp(1, 256);
    let splits = pixels.div_ceil(MIN_CHUNK).min(want).max(1);
    let chunk = pixels.div_ceil(splits).div_ceil(16) * 16;
    (pixels.div_ceil(chunk), chunk)
}

/// Kernels over the middle axis come as a pair: one block per contiguous line (`rows`, inner
/// == 1) or one thread per line (`cols`).
type AxisKernel1<G> = fn(&G, LaunchCfg, &Storage, &mut Storage, &AxisParams) -> Result<()>;
type AxisKernel2<G> = fn(&G, LaunchCfg, &Storage, &Storage, &mut Storage, &AxisParams) -> Result<()>;

impl<G: Gpu> GpuBackend<G> {
    fn axis_cfg(g: DimGeom) -> LaunchCfg {
        if g.inner == 1 {
            LaunchCfg::blocks(g.outer, 256)
        } else {
            LaunchCfg::linear(g.outer * g.inner)
        }
    }

    fn axis1(
        &self,
        op: &'static str,
        x: &Storage,
        g: DimGeom,
        out_len: usize,
        p: AxisParams,
        kernels: (AxisKernel1<G>, AxisKernel1<G>),
    ) -> Result<Storage> {
        let mut y = self.gpu.alloc(out_len)?;
        if g.outer * g.inner == 0 || out_len == 0 {
            return Ok(y);
        }
        let _ = op;
        let f = if g.inner == 1 { kernels.0 } else { kernels.1 };
        f(&self.gpu, Self::axis_cfg(g), x, &mut y, &p)?;
        Ok(y)
    }

    fn axis2(
        &self,
        a: &Storage,
        b: &Storage,
        g: DimGeom,
        p: AxisParams,
        kernels: (AxisKernel2<G>, AxisKernel2<G>),
    ) -> Result<Storage> {
        let n = g.outer * g.len * g.inner;
        let mut y = self.gpu.alloc(n)?;
        if n == 0 {
            return Ok(y);
        }
        let f = if g.inner == 1 { kernels.0 } else { kernels.1 };
        f(&self.gpu, Self::axis_cfg(g), a, b, &mut y, &p)?;
        Ok(y)
    }

    /// A copy of x on the same device.
    fn copy(&self, x: &Storage) -> Result<Storage> {
        let n = x.len();
        let mut y = self.gpu.alloc(n)?;
        if n > 0 {
            let n = int("copy", n)?;
            let p = SliceParams { outer: 1, inner: n, len: 1, src_len: 1, src_start: 0, dst_len: 1, dst_start: 0 };
            k::copy_slices(&self.gpu, LaunchCfg::linear(x.len()), x, &mut y, &p)?;
        }
        Ok(y)
    }

    fn labels(&self, op: &'static str, labels: &[u32], rows: usize, classes: usize) -> Result<Storage> {
        if labels.len() != rows {
            return Err(Error::invalid(op, format!("{} labels for {rows} rows", labels.len())));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
            return Err(Error::invalid(op, format!("label {l} of row {i} is not below the {classes} classes")));
        }
        if classes >= 1 << 24 {
            return Err(Error::Device {
                op,
                detail: format!("{classes} classes: labels travel as f32 (exact below 2^24)"),
            });
        }
        self.gpu.upload(&labels.iter().map(|&l| l as f32).collect::<Vec<_>>())
    }

    fn loss_params(op: &'static str, rows: usize, classes: usize, n: usize) -> Result<LossParams> {
        Ok(LossParams {
            rows: int(op, rows)?,
            classes: int(op, classes)?,
            n: int(op, n)?,
            inv_rows: 1.0 / rows.max(1) as f32,
        })
    }
}

/// What [`GpuBackend::gram`] computes from the rows of F [batch, m, d].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GramMode {
    /// F Fᵀ.
    Plain,
    /// Cosine similarities: F Fᵀ with row i scaled by 1/max(‖F_i‖, eps) (fused in the epilogue).
    Cosine { eps: f32 },
    /// SP's kernel: each row of F Fᵀ L2-normalised, `F.normalize(F Fᵀ, dim=1, eps)`.
    RowNormalized { eps: f32 },
}

/// Proxy and distillation kernels that are not `Backend` ops (yet): Gram and cosine matrices,
/// attention maps, attention scores. Sizes are the caller's to get right, as for the ops.
impl<G: Gpu> GpuBackend<G> {
    /// G [batch, m, m] from F [batch, m, d] (see [`GramMode`]).
    pub fn gram(&self, f: &Storage, batch: usize, m: usize, d: usize, mode: GramMode) -> Result<Storage> {
        let n_out = batch * m * m;
        if n_out == 0 {
            return self.gpu.alloc(0);
        }
        int("gram", n_out)?;
        int("gram", batch * m * d)?;
        let eps = match mode {
            GramMode::Plain => 0.0,
            GramMode::Cosine { eps } | GramMode::RowNormalized { eps } => eps,
        };
        let p = GramParams {
            batch: batch as i32,
            m: m as i32,
            d: d as i32,
            mode: matches!(mode, GramMode::Cosine { .. }) as i32,
            eps,
        };
        let cfg = tiles64("gram", m, m, batch)?;
        let mut g = self.gpu.alloc(n_out)?;
        if p.mode == 1 {
            let mut inv = self.gpu.alloc(batch * m)?;
            k::row_inv_norm(&self.gpu, LaunchCfg::blocks(batch * m, 256), f, &mut inv, &p)?;
            k::gram(&self.gpu, cfg, f, &inv, &mut g, &p)?;
        } else {
            k::gram(&self.gpu, cfg, f, f, &mut g, &p)?;
        }
        if let GramMode::RowNormalized { eps } = mode {
            return self.normalize(&g, DimGeom { outer: batch * m, len: m, inner: 1 }, eps);
        }
        Ok(g)
    }

    /// AT attention maps: x [n, c, hw] -> [n, hw], `F.normalize(x.pow(2).mean(1).view(n, -1), dim=1, eps)`.
    pub fn attention_map(&self, x: &Storage, n: usize, c: usize, hw: usize, eps: f32) -> Result<Storage> {
        let mut a = self.gpu.alloc(n * hw)?;
        if n * hw == 0 {
            return Ok(a);
        }
        let p = norm_params("attention_map", &NormGeom { n, c, hw, eps, momentum: 0.0 })?;
        k::at_map(&self.gpu, LaunchCfg::blocks(n, 256), x, &mut a, &p)?;
        Ok(a)
    }

    /// ViT attention probabilities: softmax over keys of scale·q kᵀ, q [bh, tq, d], k [bh, tk, d]
    /// -> [bh, tq, tk].
    #[allow(clippy::too_many_arguments)]
    pub fn attention_scores(
        &self,
        q: &Storage,
        k: &Storage,
        bh: usize,
        tq: usize,
        tk: usize,
        d: usize,
        scale: f32,
    ) -> Result<Storage> {
        let mut s = self.gpu.alloc(bh * tq * tk)?;
        if bh * tq * tk == 0 {
            return Ok(s);
        }
        int("attention_scores", bh * tq * tk)?;
        int("attention_scores", bh * tq.max(tk) * d)?;
        let p = AttnParams { tq: tq as i32, tk: tk as i32, d: d as i32, scale };
        k::attn_softmax(&self.gpu, LaunchCfg::blocks(bh * tq, 256), q, k, &mut s, &p)?;
        Ok(s)
    }
}

impl<G: Gpu> Backend for GpuBackend<G> {
    fn name(&self) -> &'static str {
        self.gpu.name()
    }
    fn device(&self) -> Device {
        self.gpu.device()
    }

    fn from_host(&self, data: &[f32]) -> Result<Storage> {
        self.gpu.upload(data)
    }
    fn to_host(&self, x: &Storage) -> Result<Vec<f32>> {
        self.gpu.download(x)
    }
    fn full(&self, len: usize, value: f32) -> Result<Storage> {
        let mut y = self.gpu.alloc(len)?;
        if len > 0 {
            k::fill(&self.gpu, LaunchCfg::linear(len), &mut y, &ScalarParams { n: int("full", len)?, value })?;
        }
        Ok(y)
    }

    fn unary(&self, op: UnaryOp, x: &Storage) -> Result<Storage> {
        let n = x.len();
        let mut y = self.gpu.alloc(n)?;
        if n > 0 {
            k::unary_fwd(&self.gpu, LaunchCfg::linear(n), x, &mut y, &unary_params(op, n)?)?;
        }
        Ok(y)
    }
    fn unary_backward(&self, op: UnaryOp, x: &Storage, y: &Storage, dy: &Storage) -> Result<Storage> {
        let n = x.len();
        let mut dx = self.gpu.alloc(n)?;
        if n > 0 {
            k::unary_bwd(&self.gpu, LaunchCfg::linear(n), x, y, dy, &mut dx, &unary_params(op, n)?)?;
        }
        Ok(dx)
    }
    fn binary(
        &self,
        op: BinaryOp,
        a: &Storage,
        a_dims: &[usize],
        b: &Storage,
        b_dims: &[usize],
        out_dims: &[usize],
    ) -> Result<Storage> {
        let n: usize = out_dims.iter().product();
        let mut y = self.gpu.alloc(n)?;
        if n == 0 {
            return Ok(y);
        }
        let code = match op {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
        };
        let p = BinaryParams {
            n: int("binary", n)?,
            op: code,
            rank: out_dims.len() as i32,
            out_dims: rank_dims("binary", out_dims)?,
            a_strides: broadcast_strides(a_dims, out_dims),
            b_strides: broadcast_strides(b_dims, out_dims),
        };
        k::binary_bcast(&self.gpu, LaunchCfg::linear(n), a, b, &mut y, &p)?;
        Ok(y)
    }
    fn sum_to(&self, x: &Storage, x_dims: &[usize], to_dims: &[usize]) -> Result<Storage> {
        let n_out: usize = to_dims.iter().product();
        let mut y = self.gpu.alloc(n_out)?;
        if n_out == 0 {
            return Ok(y);
        }
        let red: Vec<usize> = x_dims.iter().zip(to_dims).map(|(&x, &t)| if t == 1 && x != 1 { x } else { 1 }).collect();
        let mut x_strides = [0i32; MAX_RANK];
        let mut s = 1usize;
        for d in (0..x_dims.len()).rev() {
            x_strides[d.min(MAX_RANK - 1)] = s as i32;
            s *= x_dims[d];
        }
        int("sum_to", s)?;
        let p = SumToParams {
            n_out: int("sum_to", n_out)?,
            n_red: int("sum_to", red.iter().product())?,
            rank: x_dims.len() as i32,
            out_dims: rank_dims("sum_to", to_dims)?,
            red_dims: rank_dims("sum_to", &red)?,
            x_strides,
        };
        k::sum_to(&self.gpu, LaunchCfg::linear(n_out), x, &mut y, &p)?;
        Ok(y)
    }

    fn permute(&self, x: &Storage, dims: &[usize], perm: &[usize]) -> Result<Storage> {
        let n = x.len();
        let mut y = self.gpu.alloc(n)?;
        if n == 0 {
            return Ok(y);
        }
        let r = dims.len();
        let mut in_strides = vec![1usize; r];
        for i in (0..r.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * dims[i + 1];
        }
        let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let src: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
        let p = PermuteParams {
            n: int("permute", n)?,
            rank: r as i32,
            out_dims: rank_dims("permute", &out_dims)?,
            src_strides: rank_dims("permute", &src)?,
        };
        k::permute(&self.gpu, LaunchCfg::linear(n), x, &mut y, &p)?;
        Ok(y)
    }
    fn concat(&self, parts: &[&Storage], outer: usize, lens: &[usize], inner: usize) -> Result<Storage> {
        let total: usize = lens.iter().sum();
        let mut y = self.gpu.alloc(outer * total * inner)?;
        let mut start = 0;
        for (part, &len) in parts.iter().zip(lens) {
            if outer * len * inner > 0 {
                let p = SliceParams {
                    outer: int("concat", outer)?,
                    inner: int("concat", inner)?,
                    len: int("concat", len)?,
                    src_len: int("concat", len)?,
                    src_start: 0,
                    dst_len: int("concat", total)?,
                    dst_start: int("concat", start)?,
                };
                int("concat", outer * total * inner)?;
                k::copy_slices(&self.gpu, LaunchCfg::linear(outer * len * inner), part, &mut y, &p)?;
            }
            start += len;
        }
        Ok(y)
    }
    fn narrow(&self, x: &Storage, g: DimGeom, start: usize, len: usize) -> Result<Storage> {
        let n = g.outer * len * g.inner;
        let mut y = self.gpu.alloc(n)?;
        if n == 0 {
            return Ok(y);
        }
        int("narrow", x.len())?;
        let p = SliceParams {
            outer: int("narrow", g.outer)?,
            inner: int("narrow", g.inner)?,
            len: int("narrow", len)?,
            src_len: int("narrow", g.len)?,
            src_start: int("narrow", start)?,
            dst_len: int("narrow", len)?,
            dst_start: 0,
        };
        k::copy_slices(&self.gpu, LaunchCfg::linear(n), x, &mut y, &p)?;
        Ok(y)
    }

    fn matmul(&self, a: &Storage, b: &Storage, g: &MatmulGeom) -> Result<Storage> {
        let n_out = g.batch * g.m * g.n;
        let mut c = self.gpu.alloc(n_out)?;
        if n_out == 0 {
            return Ok(c);
        }
        int("matmul", n_out)?;
        int("matmul", a.len())?;
        int("matmul", b.len())?;
        let (gx, gy) = (g.n.div_ceil(64), g.m.div_ceil(64));
        if g.batch > 65535 || gy > 65535 {
            return Err(Error::Device {
                op: "matmul",
                detail: format!("batch {} or {} row tiles above the grid limit of 65535", g.batch, gy),
            });
        }
        let p = GemmParams {
            m: g.m as i32,
            n: g.n as i32,
            k: int("matmul", g.k)?,
            trans_a: g.trans_a as i32,
            trans_b: g.trans_b as i32,
            stride_a: if g.a_broadcast { 0 } else { (g.m * g.k) as i64 },
            stride_b: if g.b_broadcast { 0 } else { (g.k * g.n) as i64 },
        };
        let cfg = LaunchCfg { grid: [gx as u32, gy as u32, g.batch as u32], block: [256, 1, 1], smem: 0 };
        k::gemm(&self.gpu, cfg, a, b, &mut c, &p)?;
        Ok(c)
    }
    fn conv2d(&self, x: &Storage, w: &Storage, g: &Conv2dGeom) -> Result<Storage> {
        let n_out = g.n * g.c_out * g.h_out * g.w_out;
        let mut y = self.gpu.alloc(n_out)?;
        if n_out == 0 {
            return Ok(y);
        }
        let p = conv_params("conv2d", g)?;
        if is_depthwise(g) {
            k::dw_conv_fwd(&self.gpu, LaunchCfg::linear(n_out), x, w, &mut y, &p)?;
        } else {
            let cfg = tiles64("conv2d", g.n * g.h_out * g.w_out, g.c_out / g.groups, g.groups)?;
            k::conv_fwd(&self.gpu, cfg, x, w, &mut y, &p)?;
        }
        Ok(y)
    }
    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &Conv2dGeom) -> Result<Storage> {
        let n_in = g.n * g.c_in * g.h * g.w;
        let mut dx = self.gpu.alloc(n_in)?;
        if n_in == 0 {
            return Ok(dx);
        }
        let p = conv_params("conv2d_backward_data", g)?;
        if is_depthwise(g) {
            k::dw_conv_bwd_data(&self.gpu, LaunchCfg::linear(n_in), dy, w, &mut dx, &p)?;
        } else {
            let cfg = tiles64("conv2d_backward_data", g.n * g.h * g.w, g.c_in / g.groups, g.groups)?;
            k::conv_bwd_data(&self.gpu, cfg, dy, w, &mut dx, &p)?;
        }
        Ok(dx)
    }
    fn conv2d_backward_weight(&self, x: &Storage, dy: &Storage, g: &Conv2dGeom) -> Result<Storage> {
        let taps = g.c_in / g.groups * g.kh * g.kw;
        let n_w = g.c_out * taps;
        let pixels = g.n * g.h_out * g.w_out;
        if n_w == 0 || pixels == 0 {
            return self.full(n_w, 0.0);
        }
        let mut p = conv_params("conv2d_backward_weight", g)?;
        if is_depthwise(g) {
            let mut dw = self.gpu.alloc(n_w)?;
            k::dw_conv_bwd_weight(&self.gpu, LaunchCfg::blocks(n_w, 256), x, dy, &mut dw, &p)?;
            return Ok(dw);
        }
        let cog = g.c_out / g.groups;
        let mut cfg = tiles64("conv2d_backward_weight", taps, cog, g.groups)?;
        let tiles = (cfg.grid[0] * cfg.grid[1] * cfg.grid[2]) as usize;
        let (splits, chunk) = weight_splits(pixels, tiles);
        p.k_chunk = int("conv2d_backward_weight", chunk)?;
        cfg.grid[2] = int("conv2d_backward_weight", g.groups * splits)? as u32;
        if cfg.grid[2] > 65535 {
            return Err(Error::Device {
                op: "conv2d_backward_weight",
                detail: format!("{} groups x {splits} splits above the grid limit of 65535", g.groups),
            });
        }
        if splits == 1 {
            let mut dw = self.gpu.alloc(n_w)?;
            k::conv_bwd_weight(&self.gpu, cfg, x, dy, &mut dw, &p)?;
            return Ok(dw);
        }
        let mut partial = self.gpu.alloc(splits * n_w)?;
        k::conv_bwd_weight(&self.gpu, cfg, x, dy, &mut partial, &p)?;
        // Sum the slabs in split order (fixed for a geometry: bitwise reproducible).
        let sum = DimGeom { outer: 1, len: splits, inner: n_w };
        self.reduce_sum(&partial, sum)
    }

    fn pool2d(&self, kind: PoolKind, x: &Storage, g: &Pool2dGeom) -> Result<Storage> {
        let n_out = g.n * g.c * g.h_out * g.w_out;
        let mut y = self.gpu.alloc(n_out)?;
        if n_out > 0 {
            k::pool_fwd(&self.gpu, LaunchCfg::linear(n_out), x, &mut y, &pool_params("pool2d", kind, g)?)?;
        }
        Ok(y)
    }
    fn pool2d_backward(&self, kind: PoolKind, x: &Storage, dy: &Storage, g: &Pool2dGeom) -> Result<Storage> {
        let n_in = x.len();
        let mut dx = self.gpu.alloc(n_in)?;
        if n_in > 0 {
            let p = pool_params("pool2d_backward", kind, g)?;
            k::pool_bwd(&self.gpu, LaunchCfg::linear(n_in), x, dy, &mut dx, &p)?;
        }
        Ok(dx)
    }
    fn adaptive_avg_pool2d(&self, x: &Storage, g: &ResizeGeom) -> Result<Storage> {
        let n_out = g.n * g.c * g.h_out * g.w_out;
        let mut y = self.gpu.alloc(n_out)?;
        if n_out > 0 {
            let p = resize_params("adaptive_avg_pool2d", 0, g)?;
            k::adaptive_avg_fwd(&self.gpu, LaunchCfg::linear(n_out), x, &mut y, &p)?;
        }
        Ok(y)
    }
    fn adaptive_avg_pool2d_backward(&self, dy: &Storage, g: &ResizeGeom) -> Result<Storage> {
        let n_in = g.n * g.c * g.h * g.w;
        let mut dx = self.gpu.alloc(n_in)?;
        if n_in > 0 {
            let p = resize_params("adaptive_avg_pool2d_backward", 0, g)?;
            k::adaptive_avg_bwd(&self.gpu, LaunchCfg::linear(n_in), dy, &mut dx, &p)?;
        }
        Ok(dx)
    }
    fn interpolate(&self, mode: InterpMode, x: &Storage, g: &ResizeGeom) -> Result<Storage> {
        let n_out = g.n * g.c * g.h_out * g.w_out;
        let mut y = self.gpu.alloc(n_out)?;
        if n_out > 0 {
            let p = resize_params("interpolate", interp_code(mode), g)?;
            k::interp_fwd(&self.gpu, LaunchCfg::linear(n_out), x, &mut y, &p)?;
        }
        Ok(y)
    }
    fn interpolate_backward(&self, mode: InterpMode, dy: &Storage, g: &ResizeGeom) -> Result<Storage> {
        let n_in = g.n * g.c * g.h * g.w;
        let mut dx = self.gpu.alloc(n_in)?;
        if n_in > 0 {
            let p = resize_params("interpolate_backward", interp_code(mode), g)?;
            k::interp_bwd(&self.gpu, LaunchCfg::linear(n_in), dy, &mut dx, &p)?;
        }
        Ok(dx)
    }

    fn batch_norm_train(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        relu: bool,
        g: &NormGeom,
    ) -> Result<(Storage, Storage, Storage)> {
        if g.n * g.hw == 0 || g.c == 0 {
            return Ok((self.copy(x)?, self.full(g.c, 0.0)?, self.full(g.c, 0.0)?));
        }
        let p = NormParams { relu: relu as i32, ..norm_params("batch_norm_train", g)? };
        let gpu = &self.gpu;
        let (mut mean, mut invstd, mut y) = (gpu.alloc(g.c)?, gpu.alloc(g.c)?, gpu.alloc(x.len())?);
        let mut shift = gpu.alloc(2 * g.c)?;
        let cfg = LaunchCfg::blocks(g.c, 256);
        k::bn_stats(gpu, cfg, x, &mut mean, &mut invstd, running_mean, running_var, &mut shift, &p)?;
        k::bn_apply(gpu, LaunchCfg::linear(x.len()), x, &shift, &invstd, gamma, beta, &mut y, &p)?;
        Ok((y, mean, invstd))
    }
    fn channel_affine(
        &self,
        x: &Storage,
        scale: &Storage,
        shift: &Storage,
        residual: Option<&Storage>,
        relu: bool,
        g: &NormGeom,
    ) -> Result<Storage> {
        let n = x.len();
        g.check_channel_affine(n, scale.len(), shift.len(), residual.map(|r| r.len()))?;
        let mut y = self.gpu.alloc(n)?;
        if n > 0 {
            int("channel_affine", n)?;
            let p = AffineParams {
                n: g.n as i32,
                c: g.c as i32,
                hw: g.hw as i32,
                relu: relu as i32,
                has_residual: residual.is_some() as i32,
            };
            // Without a residual the kernel never reads that pointer; x stands in for it.
            k::channel_affine(&self.gpu, LaunchCfg::linear(n), x, scale, shift, residual.unwrap_or(x), &mut y, &p)?;
        }
        Ok(y)
    }
    fn batch_norm_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        mean: &Storage,
        invstd: &Storage,
        relu_out: Option<&Storage>,
        g: &NormGeom,
    ) -> Result<(Storage, Storage, Storage)> {
        if g.n * g.hw == 0 || g.c == 0 {
            return Ok((self.full(x.len(), 0.0)?, self.full(g.c, 0.0)?, self.full(g.c, 0.0)?));
        }
        if relu_out.is_some_and(|y| y.len() != x.len()) {
            return Err(Error::shape("batch_norm_backward", "the relu output must have x's length".to_string()));
        }
        let p = NormParams { relu: relu_out.is_some() as i32, ..norm_params("batch_norm_backward", g)? };
        // Without a ReLU the kernels never read the mask operand; dy stands in for it.
        let y = relu_out.unwrap_or(dy);
        let gpu = &self.gpu;
        let _ = mean; // recomputed with a shift in bn_bwd_stats, for precision far from zero
        let (mut sums, mut dgamma, mut dbeta, mut dx) =
            (gpu.alloc(4 * g.c)?, gpu.alloc(g.c)?, gpu.alloc(g.c)?, gpu.alloc(x.len())?);
        k::bn_bwd_stats(gpu, LaunchCfg::blocks(g.c, 256), x, dy, y, invstd, &mut sums, &mut dgamma, &mut dbeta, &p)?;
        k::bn_bwd_apply(gpu, LaunchCfg::linear(x.len()), x, dy, y, invstd, gamma, &sums, &mut dx, &p)?;
        Ok((dx, dgamma, dbeta))
    }
    fn layer_norm(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        g: &NormGeom,
    ) -> Result<(Storage, Storage, Storage)> {
        if g.n == 0 || g.c == 0 {
            return Ok((self.copy(x)?, self.full(g.n, 0.0)?, self.full(g.n, 0.0)?));
        }
        let p = norm_params("layer_norm", g)?;
        let gpu = &self.gpu;
        let (mut y, mut mean, mut invstd) = (gpu.alloc(x.len())?, gpu.alloc(g.n)?, gpu.alloc(g.n)?);
        k::ln_fwd(gpu, LaunchCfg::blocks(g.n, 256), x, gamma, beta, &mut y, &mut mean, &mut invstd, &p)?;
        Ok((y, mean, invstd))
    }
    fn layer_norm_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        mean: &Storage,
        invstd: &Storage,
        g: &NormGeom,
    ) -> Result<(Storage, Storage, Storage)> {
        if g.n == 0 || g.c == 0 {
            return Ok((self.full(x.len(), 0.0)?, self.full(g.c, 0.0)?, self.full(g.c, 0.0)?));
        }
        let p = norm_params("layer_norm_backward", g)?;
        let gpu = &self.gpu;
        let _ = mean; // recomputed with a shift in ln_bwd_dx, for precision far from zero
        let (mut dx, mut dgamma, mut dbeta) = (gpu.alloc(x.len())?, gpu.alloc(g.c)?, gpu.alloc(g.c)?);
        let mut rowstats = gpu.alloc(2 * g.n)?;
        k::ln_bwd_dx(gpu, LaunchCfg::blocks(g.n, 256), x, dy, gamma, invstd, &mut dx, &mut rowstats, &p)?;
        k::ln_bwd_params(gpu, LaunchCfg::linear(g.c), x, dy, &rowstats, invstd, &mut dgamma, &mut dbeta, &p)?;
        Ok((dx, dgamma, dbeta))
    }

    fn softmax(&self, x: &Storage, g: DimGeom, log: bool) -> Result<Storage> {
        let p = axis("softmax", g, log as i32, 0.0)?;
        self.axis1("softmax", x, g, x.len(), p, (k::softmax_rows, k::softmax_cols))
    }
    fn softmax_backward(&self, y: &Storage, dy: &Storage, g: DimGeom, log: bool) -> Result<Storage> {
        let p = axis("softmax_backward", g, log as i32, 0.0)?;
        self.axis2(y, dy, g, p, (k::softmax_bwd_rows, k::softmax_bwd_cols))
    }
    fn cross_entropy(&self, logits: &Storage, labels: &[u32], rows: usize, classes: usize) -> Result<Storage> {
        let lab = self.labels("cross_entropy", labels, rows, classes)?;
        let mut loss = self.gpu.alloc(1)?;
        let p = Self::loss_params("cross_entropy", rows, classes, rows * classes)?;
        k::ce_fwd(&self.gpu, LaunchCfg::blocks(1, 256), logits, &lab, &mut loss, &p)?;
        Ok(loss)
    }
    fn cross_entropy_backward(
        &self,
        logits: &Storage,
        labels: &[u32],
        dloss: &Storage,
        rows: usize,
        classes: usize,
    ) -> Result<Storage> {
        let lab = self.labels("cross_entropy_backward", labels, rows, classes)?;
        let mut d = self.gpu.alloc(rows * classes)?;
        if rows == 0 {
            return Ok(d);
        }
        let p = Self::loss_params("cross_entropy_backward", rows, classes, rows * classes)?;
        k::ce_bwd(&self.gpu, LaunchCfg::blocks(rows, 256), logits, &lab, dloss, &mut d, &p)?;
        Ok(d)
    }
    fn kl_div(&self, log_q: &Storage, p: &Storage, rows: usize) -> Result<Storage> {
        let mut loss = self.gpu.alloc(1)?;
        let prm = Self::loss_params("kl_div", rows, 0, log_q.len())?;
        k::kl_fwd(&self.gpu, LaunchCfg::blocks(1, 1024), log_q, p, &mut loss, &prm)?;
        Ok(loss)
    }
    fn kl_div_backward(
        &self,
        log_q: &Storage,
        p: &Storage,
        dloss: &Storage,
        rows: usize,
    ) -> Result<(Storage, Storage)> {
        let n = log_q.len();
        let (mut dq, mut dp) = (self.gpu.alloc(n)?, self.gpu.alloc(n)?);
        if n > 0 {
            let prm = Self::loss_params("kl_div_backward", rows, 0, n)?;
            k::kl_bwd(&self.gpu, LaunchCfg::linear(n), log_q, p, dloss, &mut dq, &mut dp, &prm)?;
        }
        Ok((dq, dp))
    }
    fn reduce_sum(&self, x: &Storage, g: DimGeom) -> Result<Storage> {
        let p = axis("reduce_sum", g, 0, 0.0)?;
        self.axis1("reduce_sum", x, g, g.outer * g.inner, p, (k::reduce_sum_rows, k::reduce_sum_cols))
    }
    fn reduce_max(&self, x: &Storage, g: DimGeom) -> Result<Storage> {
        let p = axis("reduce_max", g, 0, 0.0)?;
        self.axis1("reduce_max", x, g, g.outer * g.inner, p, (k::reduce_max_rows, k::reduce_max_cols))
    }
    fn reduce_max_backward(&self, x: &Storage, dy: &Storage, g: DimGeom) -> Result<Storage> {
        let p = axis("reduce_max_backward", g, 0, 0.0)?;
        self.axis2(x, dy, g, p, (k::reduce_max_bwd_rows, k::reduce_max_bwd_cols))
    }
    fn normalize(&self, x: &Storage, g: DimGeom, eps: f32) -> Result<Storage> {
        let p = axis("normalize", g, 0, eps)?;
        self.axis1("normalize", x, g, x.len(), p, (k::normalize_rows, k::normalize_cols))
    }
    fn normalize_backward(&self, x: &Storage, dy: &Storage, g: DimGeom, eps: f32) -> Result<Storage> {
        let p = axis("normalize_backward", g, 0, eps)?;
        self.axis2(x, dy, g, p, (k::normalize_bwd_rows, k::normalize_bwd_cols))
    }

    fn sgd_step(&self, param: &mut Storage, grad: &Storage, momentum_buf: &mut Storage, step: &SgdStep) -> Result<()> {
        let n = param.len();
        if n == 0 {
            return Ok(());
        }
        let p = SgdParams {
            n: int("sgd_step", n)?,
            lr: step.lr,
            momentum: step.momentum,
            weight_decay: step.weight_decay,
            nesterov: step.nesterov as i32,
            first_step: step.first_step as i32,
        };
        k::sgd_step(&self.gpu, LaunchCfg::linear(n), param, grad, momentum_buf, &p)
    }
    fn fd_perturb(&self, theta: &Storage, v: &Storage, eps: f32) -> Result<(Storage, Storage)> {
        let n = equal_lens("fd_perturb", ("theta", theta), ("v", v))?;
        let (mut plus, mut minus) = (self.gpu.alloc(n)?, self.gpu.alloc(n)?);
        if n > 0 {
            let p = FdParams { n: int("fd_perturb", n)?, eps };
            k::fd_perturb(&self.gpu, LaunchCfg::linear(n), theta, v, &mut plus, &mut minus, &p)?;
        }
        Ok((plus, minus))
    }
    fn fd_combine(&self, g_plus: &Storage, g_minus: &Storage, eps: f32) -> Result<Storage> {
        let n = equal_lens("fd_combine", ("g_plus", g_plus), ("g_minus", g_minus))?;
        if !(eps.is_finite() && eps != 0.0) {
            return Err(Error::invalid("fd_combine", format!("step eps = {eps}: use a finite, non-zero step")));
        }
        let mut y = self.gpu.alloc(n)?;
        if n > 0 {
            let p = FdParams { n: int("fd_combine", n)?, eps };
            k::fd_combine(&self.gpu, LaunchCfg::linear(n), g_plus, g_minus, &mut y, &p)?;
        }
        Ok(y)
    }
    fn fake_quant(&self, x: &Storage, g: &QuantGeom) -> Result<(Storage, Storage, Storage)> {
        g.check("fake_quant", &[("x", x.len(), g.channels * g.len)])?;
        let p = quant_params("fake_quant", g)?;
        if g.len == 0 {
            return Ok((self.gpu.alloc(0)?, self.full(g.channels, 1.0)?, self.full(g.channels, 0.0)?));
        }
        let (mut scale, mut zp, mut y) =
            (self.gpu.alloc(g.channels)?, self.gpu.alloc(g.channels)?, self.gpu.alloc(x.len())?);
        k::quant_range(&self.gpu, LaunchCfg::blocks(g.channels, 256), x, &mut scale, &mut zp, &p)?;
        k::fake_quant_fwd(&self.gpu, LaunchCfg::linear(x.len()), x, &scale, &zp, &mut y, &p)?;
        Ok((y, scale, zp))
    }
    fn fake_quant_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        scale: &Storage,
        zero_point: &Storage,
        g: &QuantGeom,
    ) -> Result<Storage> {
        let n = g.channels * g.len;
        g.check(
            "fake_quant_backward",
            &[
                ("x", x.len(), n),
                ("dy", dy.len(), n),
                ("scale", scale.len(), g.channels),
                ("zero_point", zero_point.len(), g.channels),
            ],
        )?;
        let p = quant_params("fake_quant_backward", g)?;
        let mut dx = self.gpu.alloc(n)?;
        if n > 0 {
            k::fake_quant_bwd(&self.gpu, LaunchCfg::linear(n), x, dy, scale, zero_point, &mut dx, &p)?;
        }
        Ok(dx)
    }
    fn add_assign(&self, acc: &mut Storage, x: &Storage) -> Result<()> {
        let n = acc.len();
        if n == 0 {
            return Ok(());
        }
        k::add_assign(&self.gpu, LaunchCfg::linear(n), acc, x, &ScalarParams { n: int("add_assign", n)?, value: 1.0 })
    }
}
