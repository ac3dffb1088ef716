//! The CPU backend: the reference every other backend is tested against, and fast in its own
//! right (gemm crate with AVX-512 kernels, rayon over batch/rows, loops written so LLVM
//! vectorises them; no `target-cpu=native`). Each op family lives in its own file as plain
//! slice functions; this file only adapts them to the `Backend` trait.

pub mod conv;
pub mod elementwise;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod quant;
pub mod reduce;
#[cfg(target_arch = "x86_64")]
pub mod winograd;

use super::{
    Backend, BinaryOp, Conv2dGeom, Device, DimGeom, InterpMode, MatmulGeom, NormGeom, Pool2dGeom, PoolKind, QuantGeom,
    ResizeGeom, SgdStep, Storage, UnaryOp,
};
use crate::error::Result;

pub struct CpuBackend;

/// glibc serves allocations above 128 KiB-32 MiB (adaptive) with fresh mmaps and unmaps them on
/// free, so every activation-sized tensor paid page faults and kernel zeroing (a quarter of a
/// resnet20 training step). Raising the mmap threshold to its maximum and disabling trimming
/// keeps freed tensor memory in the heap for the next op. Called once, on first CPU use.
pub(crate) fn tune_allocator_once() {
    static TUNED: std::sync::Once = std::sync::Once::new();
    TUNED.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    });
}

/// Below this many elements an elementwise op stays on one thread (spawning costs more).
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;

fn cpu(v: Vec<f32>) -> Storage {
    Storage::Cpu(v)
}

fn triple((a, b, c): (Vec<f32>, Vec<f32>, Vec<f32>)) -> (Storage, Storage, Storage) {
    (cpu(a), cpu(b), cpu(c))
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn from_host(&self, data: &[f32]) -> Result<Storage> {
        Ok(cpu(data.to_vec()))
    }
    fn to_host(&self, x: &Storage) -> Result<Vec<f32>> {
        Ok(x.as_cpu()?.to_vec())
    }
    fn full(&self, len: usize, value: f32) -> Result<Storage> {
        Ok(cpu(vec![value; len]))
    }

    fn unary(&self, op: UnaryOp, x: &Storage) -> Result<Storage> {
        Ok(cpu(elementwise::unary(op, x.as_cpu()?)))
    }
    fn unary_backward(&self, op: UnaryOp, x: &Storage, y: &Storage, dy: &Storage) -> Result<Storage> {
        Ok(cpu(elementwise::unary_backward(op, x.as_cpu()?, y.as_cpu()?, dy.as_cpu()?)))
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
        Ok(cpu(elementwise::binary(op, a.as_cpu()?, a_dims, b.as_cpu()?, b_dims, out_dims)))
    }
    fn sum_to(&self, x: &Storage, x_dims: &[usize], to_dims: &[usize]) -> Result<Storage> {
        Ok(cpu(reduce::sum_to(x.as_cpu()?, x_dims, to_dims)))
    }

    fn permute(&self, x: &Storage, dims: &[usize], perm: &[usize]) -> Result<Storage> {
        Ok(cpu(layout::permute(x.as_cpu()?, dims, perm)))
    }
    fn concat(&self, parts: &[&Storage], outer: usize, lens: &[usize], inner: usize) -> Result<Storage> {
        let slices = parts.iter().map(|p| p.as_cpu()).collect::<Result<Vec<_>>>()?;
        Ok(cpu(layout::concat(&slices, outer, lens, inner)))
    }
    fn narrow(&self, x: &Storage, g: DimGeom, start: usize, len: usize) -> Result<Storage> {
        Ok(cpu(layout::narrow(x.as_cpu()?, g, start, len)))
    }

    fn matmul(&self, a: &Storage, b: &Storage, g: &MatmulGeom) -> Result<Storage> {
        Ok(cpu(matmul::matmul(a.as_cpu()?, b.as_cpu()?, g)?))
    }
    fn conv2d(&self, x: &Storage, w: &Storage, g: &Conv2dGeom) -> Result<Storage> {
        Ok(cpu(conv::conv2d(x.as_cpu()?, w.as_cpu()?, g)?))
    }
    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &Conv2dGeom) -> Result<Storage> {
        Ok(cpu(conv::conv2d_backward_data(dy.as_cpu()?, w.as_cpu()?, g)?))
    }
    fn conv2d_backward_weight(&self, x: &Storage, dy: &Storage, g: &Conv2dGeom) -> Result<Storage> {
        Ok(cpu(conv::conv2d_backward_weight(x.as_cpu()?, dy.as_cpu()?, g)?))
    }

    fn pool2d(&self, kind: PoolKind, x: &Storage, g: &Pool2dGeom) -> Result<Storage> {
        Ok(cpu(pool::pool2d(kind, x.as_cpu()?, g)?))
    }
    fn pool2d_backward(&self, kind: PoolKind, x: &Storage, dy: &Storage, g: &Pool2dGeom) -> Result<Storage> {
        Ok(cpu(pool::pool2d_backward(kind, x.as_cpu()?, dy.as_cpu()?, g)?))
    }
    fn adaptive_avg_pool2d(&self, x: &Storage, g: &ResizeGeom) -> Result<Storage> {
        Ok(cpu(pool::adaptive_avg_pool2d(x.as_cpu()?, g)?))
    }
    fn adaptive_avg_pool2d_backward(&self, dy: &Storage, g: &ResizeGeom) -> Result<Storage> {
        Ok(cpu(pool::adaptive_avg_pool2d_backward(dy.as_cpu()?, g)?))
    }
    fn interpolate(&self, mode: InterpMode, x: &Storage, g: &ResizeGeom) -> Result<Storage> {
        Ok(cpu(pool::interpolate(mode, x.as_cpu()?, g)?))
    }
    fn interpolate_backward(&self, mode: InterpMode, dy: &Storage, g: &ResizeGeom) -> Result<Storage> {
        Ok(cpu(pool::interpolate_backward(mode, dy.as_cpu()?, g)?))
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
        let r = norm::batch_norm_train(
            x.as_cpu()?,
            gamma.as_cpu()?,
            beta.as_cpu()?,
            running_mean.as_cpu_mut()?,
            running_var.as_cpu_mut()?,
            relu,
            g,
        )?;
        Ok(triple(r))
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
        let residual = residual.map(|r| r.as_cpu()).transpose()?;
        Ok(cpu(norm::channel_affine(x.as_cpu()?, scale.as_cpu()?, shift.as_cpu()?, residual, relu, g)?))
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
        Ok(triple(norm::batch_norm_backward(
            x.as_cpu()?,
            dy.as_cpu()?,
            gamma.as_cpu()?,
            mean.as_cpu()?,
            invstd.as_cpu()?,
            relu_out.map(|y| y.as_cpu()).transpose()?,
            g,
        )?))
    }
    fn layer_norm(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        g: &NormGeom,
    ) -> Result<(Storage, Storage, Storage)> {
        Ok(triple(norm::layer_norm(x.as_cpu()?, gamma.as_cpu()?, beta.as_cpu()?, g)?))
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
        Ok(triple(norm::layer_norm_backward(
            x.as_cpu()?,
            dy.as_cpu()?,
            gamma.as_cpu()?,
            mean.as_cpu()?,
            invstd.as_cpu()?,
            g,
        )?))
    }

    fn softmax(&self, x: &Storage, g: DimGeom, log: bool) -> Result<Storage> {
        Ok(cpu(reduce::softmax(x.as_cpu()?, g, log)))
    }
    fn softmax_backward(&self, y: &Storage, dy: &Storage, g: DimGeom, log: bool) -> Result<Storage> {
        Ok(cpu(reduce::softmax_backward(y.as_cpu()?, dy.as_cpu()?, g, log)))
    }
    fn cross_entropy(&self, logits: &Storage, labels: &[u32], rows: usize, classes: usize) -> Result<Storage> {
        Ok(cpu(vec![reduce::cross_entropy(logits.as_cpu()?, labels, rows, classes)]))
    }
    fn cross_entropy_backward(
        &self,
        logits: &Storage,
        labels: &[u32],
        dloss: &Storage,
        rows: usize,
        classes: usize,
    ) -> Result<Storage> {
        Ok(cpu(reduce::cross_entropy_backward(logits.as_cpu()?, labels, dloss.as_cpu()?[0], rows, classes)))
    }
    fn kl_div(&self, log_q: &Storage, p: &Storage, rows: usize) -> Result<Storage> {
        Ok(cpu(vec![reduce::kl_div(log_q.as_cpu()?, p.as_cpu()?, rows)]))
    }
    fn kl_div_backward(
        &self,
        log_q: &Storage,
        p: &Storage,
        dloss: &Storage,
        rows: usize,
    ) -> Result<(Storage, Storage)> {
        let (dq, dp) = reduce::kl_div_backward(log_q.as_cpu()?, p.as_cpu()?, dloss.as_cpu()?[0], rows);
        Ok((cpu(dq), cpu(dp)))
    }
    fn reduce_sum(&self, x: &Storage, g: DimGeom) -> Result<Storage> {
        Ok(cpu(reduce::reduce_sum(x.as_cpu()?, g)))
    }
    fn reduce_max(&self, x: &Storage, g: DimGeom) -> Result<Storage> {
        Ok(cpu(reduce::reduce_max(x.as_cpu()?, g)))
    }
    fn reduce_max_backward(&self, x: &Storage, dy: &Storage, g: DimGeom) -> Result<Storage> {
        Ok(cpu(reduce::reduce_max_backward(x.as_cpu()?, dy.as_cpu()?, g)))
    }
    fn normalize(&self, x: &Storage, g: DimGeom, eps: f32) -> Result<Storage> {
        Ok(cpu(reduce::normalize(x.as_cpu()?, g, eps)))
    }
    fn normalize_backward(&self, x: &Storage, dy: &Storage, g: DimGeom, eps: f32) -> Result<Storage> {
        Ok(cpu(reduce::normalize_backward(x.as_cpu()?, dy.as_cpu()?, g, eps)))
    }

    fn sgd_step(&self, param: &mut Storage, grad: &Storage, momentum_buf: &mut Storage, step: &SgdStep) -> Result<()> {
        elementwise::sgd_step(param.as_cpu_mut()?, grad.as_cpu()?, momentum_buf.as_cpu_mut()?, step);
        Ok(())
    }
    fn fd_perturb(&self, theta: &Storage, v: &Storage, eps: f32) -> Result<(Storage, Storage)> {
        let (plus, minus) = elementwise::fd_perturb(theta.as_cpu()?, v.as_cpu()?, eps)?;
        Ok((cpu(plus), cpu(minus)))
    }
    fn fd_combine(&self, g_plus: &Storage, g_minus: &Storage, eps: f32) -> Result<Storage> {
        Ok(cpu(elementwise::fd_combine(g_plus.as_cpu()?, g_minus.as_cpu()?, eps)?))
    }
    fn fake_quant(&self, x: &Storage, g: &QuantGeom) -> Result<(Storage, Storage, Storage)> {
        Ok(triple(quant::fake_quant(x.as_cpu()?, g)?))
    }
    fn fake_quant_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        scale: &Storage,
        zero_point: &Storage,
        g: &QuantGeom,
    ) -> Result<Storage> {
        Ok(cpu(quant::fake_quant_backward(x.as_cpu()?, dy.as_cpu()?, scale.as_cpu()?, zero_point.as_cpu()?, g)?))
    }
    fn add_assign(&self, acc: &mut Storage, x: &Storage) -> Result<()> {
        elementwise::add_assign(acc.as_cpu_mut()?, x.as_cpu()?);
        Ok(())
    }
}
