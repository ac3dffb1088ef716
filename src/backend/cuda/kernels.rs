//! One typed launch wrapper per kernel, and the registry of their signatures.
//!
//! Every kernel takes its device pointers first and one parameter struct last (see
//! `kernels/common.cuh`). The `kernels!` table below is the single Rust statement of each
//! signature: it generates the wrapper (`kernels::unary_fwd(gpu, cfg, x, y, &params)`) and the
//! `KernelSig` that the ABI test checks against the PTX `.entry` and the emulator's exports.
//! Arguments are `i` (input, `&Storage`) or `o` (written, `&mut Storage`).

use std::ffi::c_void;

use super::params::*;
use super::{Gpu, LaunchCfg};
use crate::backend::Storage;
use crate::error::Result;

/// Whether a pointer argument is read only or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    In,
    Out,
}

/// A kernel's signature as the Rust side launches it.
#[derive(Debug)]
pub struct KernelSig {
    pub name: &'static str,
    /// The `kernels/<module>.cu` file that defines it.
    pub module: &'static str,
    pub ptrs: &'static [(&'static str, Access)],
    pub params: &'static str,
    pub params_size: usize,
    pub params_align: usize,
}

macro_rules! arg_ty {
    (i) => {
        &Storage
    };
    (o) => {
        &mut Storage
    };
}
macro_rules! arg_ptr {
    ($g:ident, i, $a:ident) => {
        $g.ptr($a)?
    };
    ($g:ident, o, $a:ident) => {
        $g.ptr_mut($a)?
    };
}
macro_rules! access {
    (i) => {
        Access::In
    };
    (o) => {
        Access::Out
    };
}

macro_rules! kernels {
    ($( $module:literal { $( $name:ident ( $( $arg:ident : $kind:ident ),* ; $P:ty ); )* } )*) => {
        /// The signatures, by kernel name.
        #[allow(non_upper_case_globals)]
        pub mod sig {
            use super::*;
            $($(
                pub const $name: KernelSig = KernelSig {
                    name: stringify!($name),
                    module: $module,
                    ptrs: &[$( (stringify!($arg), access!($kind)) ),*],
                    params: <$P as Params>::NAME,
                    params_size: std::mem::size_of::<$P>(),
                    params_align: std::mem::align_of::<$P>(),
                };
            )*)*
        }

        /// Every kernel the Rust side launches.
        pub const ALL: &[&KernelSig] = &[$($( &sig::$name, )*)*];

        $($(
            #[allow(clippy::too_many_arguments)]
            pub fn $name<G: Gpu + ?Sized>(g: &G, cfg: LaunchCfg, $( $arg: arg_ty!($kind), )* p: &$P) -> Result<()> {
                let mut ptrs: Vec<u64> = vec![$( arg_ptr!(g, $kind, $arg) ),*];
                let mut params: $P = *p;
                let mut args: Vec<*mut c_void> = ptrs.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
                args.push(&mut params as *mut $P as *mut c_void);
                // SAFETY: `args` holds one pointer per kernel parameter, in order, each to a value of
                // the parameter's type (device pointers as u64, then the #[repr(C)] struct); the ABI
                // test checks this order and these sizes against the PTX.
                unsafe { g.launch(&sig::$name, cfg, &mut args) }
            }
        )*)*
    };
}

kernels! {
    "elementwise" {
        fill(y: o; ScalarParams);
        unary_fwd(x: i, y: o; UnaryParams);
        unary_bwd(x: i, y: i, dy: i, dx: o; UnaryParams);
        binary_bcast(a: i, b: i, y: o; BinaryParams);
        sum_to(x: i, y: o; SumToParams);
        add_assign(acc: o, x: i; ScalarParams);
    }
    "optim" {
        sgd_step(param: o, grad: i, buf: o; SgdParams);
        fd_perturb(theta: i, v: i, plus: o, minus: o; FdParams);
        fd_combine(g_plus: i, g_minus: i, y: o; FdParams);
    }
    "quant" {
        quant_range(x: i, scale: o, zero_point: o; QuantParams);
        fake_quant_fwd(x: i, scale: i, zero_point: i, y: o; QuantParams);
        fake_quant_bwd(x: i, dy: i, scale: i, zero_point: i, dx: o; QuantParams);
    }
    "reduce" {
        reduce_sum_rows(x: i, y: o; AxisParams);
        reduce_sum_cols(x: i, y: o; AxisParams);
        reduce_max_rows(x: i, y: o; AxisParams);
        reduce_max_cols(x: i, y: o; AxisParams);
        reduce_max_bwd_rows(x: i, dy: i, dx: o; AxisParams);
        reduce_max_bwd_cols(x: i, dy: i, dx: o; AxisParams);
        softmax_rows(x: i, y: o; AxisParams);
        softmax_cols(x: i, y: o; AxisParams);
        softmax_bwd_rows(y: i, dy: i, dx: o; AxisParams);
        softmax_bwd_cols(y: i, dy: i, dx: o; AxisParams);
        normalize_rows(x: i, y: o; AxisParams);
        normalize_cols(x: i, y: o; AxisParams);
        normalize_bwd_rows(x: i, dy: i, dx: o; AxisParams);
        normalize_bwd_cols(x: i, dy: i, dx: o; AxisParams);
    }
    "layout" {
        permute(x: i, y: o; PermuteParams);
        copy_slices(x: i, y: o; SliceParams);
    }
    "gemm" {
        gemm(a: i, b: i, c: o; GemmParams);
    }
    "conv2d" {
        conv_fwd(x: i, w: i, y: o; ConvParams);
        conv_bwd_data(dy: i, w: i, dx: o; ConvParams);
        conv_bwd_weight(x: i, dy: i, dw: o; ConvParams);
        dw_conv_fwd(x: i, w: i, y: o; ConvParams);
        dw_conv_bwd_data(dy: i, w: i, dx: o; ConvParams);
        dw_conv_bwd_weight(x: i, dy: i, dw: o; ConvParams);
    }
    "pool" {
        pool_fwd(x: i, y: o; PoolParams);
        pool_bwd(x: i, dy: i, dx: o; PoolParams);
        adaptive_avg_fwd(x: i, y: o; ResizeParams);
        adaptive_avg_bwd(dy: i, dx: o; ResizeParams);
        interp_fwd(x: i, y: o; ResizeParams);
        interp_bwd(dy: i, dx: o; ResizeParams);
    }
    "gram" {
        row_inv_norm(f: i, inv: o; GramParams);
        gram(f: i, inv: i, g: o; GramParams);
    }
    "attention" {
        at_map(x: i, a: o; NormParams);
        attn_softmax(q: i, k: i, s: o; AttnParams);
    }
    "norm" {
        bn_stats(x: i, mean: o, invstd: o, running_mean: o, running_var: o, shift: o; NormParams);
        bn_apply(x: i, shift: i, invstd: i, gamma: i, beta: i, y: o; NormParams);
        bn_bwd_stats(x: i, dy: i, y: i, invstd: i, sums: o, dgamma: o, dbeta: o; NormParams);
        bn_bwd_apply(x: i, dy: i, y: i, invstd: i, gamma: i, sums: i, dx: o; NormParams);
        channel_affine(x: i, scale: i, shift: i, residual: i, y: o; AffineParams);
        ln_fwd(x: i, gamma: i, beta: i, y: o, mean: o, invstd: o; NormParams);
        ln_bwd_dx(x: i, dy: i, gamma: i, invstd: i, dx: o, rowstats: o; NormParams);
        ln_bwd_params(x: i, dy: i, rowstats: i, invstd: i, dgamma: o, dbeta: o; NormParams);
    }
    "loss" {
        ce_fwd(logits: i, labels: i, loss: o; LossParams);
        ce_bwd(logits: i, labels: i, dloss: i, dlogits: o; LossParams);
        kl_fwd(log_q: i, prob: i, loss: o; LossParams);
        kl_bwd(log_q: i, prob: i, dloss: i, dq: o, dp: o; LossParams);
    }
}

/// Kernels that exist only in the ThreadSanitizer emulator build (planted bugs for the race
/// test); never in PTX.
pub mod tsan_only {
    use super::*;

    pub const REDUCE_SUM_ROWS_RACY: KernelSig = KernelSig { name: "reduce_sum_rows_racy", ..sig::reduce_sum_rows };

    /// `reduce_sum_rows` with the first barrier of its block reduction removed.
    pub fn reduce_sum_rows_racy<G: Gpu + ?Sized>(
        g: &G,
        cfg: LaunchCfg,
        x: &Storage,
        y: &mut Storage,
        p: &AxisParams,
    ) -> Result<()> {
        let mut ptrs = [g.ptr(x)?, g.ptr_mut(y)?];
        let mut params = *p;
        let mut args: Vec<*mut c_void> = ptrs.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
        args.push(&mut params as *mut AxisParams as *mut c_void);
        // SAFETY: as for the generated wrappers; same signature as reduce_sum_rows.
        unsafe { g.launch(&REDUCE_SUM_ROWS_RACY, cfg, &mut args) }
    }
}
