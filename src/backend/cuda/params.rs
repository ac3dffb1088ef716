//! `#[repr(C)]` mirrors of the parameter structs in `kernels/params.cuh`, field for field. Each
//! struct lists its layout (`Params::fields`) so the ABI test can compare it with the C++ side
//! (the emulator's `kds_emu_param_layouts`) and with the PTX `.entry` parameter sizes.

/// One field of a parameter struct: name, byte offset, byte size.
pub type FieldLayout = (&'static str, usize, usize);

/// A kernel parameter struct: plain data passed by value as the last kernel argument.
pub trait Params: Copy + 'static {
    const NAME: &'static str;
    fn fields() -> Vec<FieldLayout>;
}

/// Rank limit of the broadcasting kernels (`KDS_MAX_RANK`).
pub const MAX_RANK: usize = 8;

macro_rules! params {
    ($( $(#[$m:meta])* pub struct $name:ident { $( $f:ident : $t:ty ),* $(,)? } )*) => {
        $(
            $(#[$m])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq)]
            pub struct $name { $( pub $f: $t ),* }

            impl Params for $name {
                const NAME: &'static str = stringify!($name);
                fn fields() -> Vec<FieldLayout> {
                    vec![$( (stringify!($f), std::mem::offset_of!($name, $f), std::mem::size_of::<$t>()) ),*]
                }
            }
        )*
        /// Every parameter struct: name, size, alignment and fields.
        pub fn all_layouts() -> Vec<(&'static str, usize, usize, Vec<FieldLayout>)> {
            vec![$( ($name::NAME, std::mem::size_of::<$name>(), std::mem::align_of::<$name>(), $name::fields()) ),*]
        }
    };
}

params! {
    /// fill (value), add_assign.
    pub struct ScalarParams { n: i32, value: f32 }
    pub struct UnaryParams { n: i32, op: i32, a: f32, b: f32 }
    pub struct BinaryParams {
        n: i32, op: i32, rank: i32,
        out_dims: [i32; MAX_RANK], a_strides: [i32; MAX_RANK], b_strides: [i32; MAX_RANK],
    }
    pub struct SumToParams {
        n_out: i32, n_red: i32, rank: i32,
        out_dims: [i32; MAX_RANK], red_dims: [i32; MAX_RANK], x_strides: [i32; MAX_RANK],
    }
    pub struct SgdParams { n: i32, lr: f32, momentum: f32, weight_decay: f32, nesterov: i32, first_step: i32 }
    /// Finite-difference hypergradient steps (fd_perturb, fd_combine).
    pub struct FdParams { n: i32, eps: f32 }
    /// Fake quantisation of x viewed as [channels, len]; qmax = 2^bits - 1.
    pub struct QuantParams { channels: i32, len: i32, qmax: f32 }
    /// Reductions over the middle axis of [outer, len, inner]; `flag` = log for softmax.
    pub struct AxisParams { outer: i32, len: i32, inner: i32, flag: i32, eps: f32 }
    pub struct LossParams { rows: i32, classes: i32, n: i32, inv_rows: f32 }
    /// x viewed as [n, c, hw] (batch norm); layer norm: n = rows, c = cols, hw = 1. `relu`
    /// (batch norm): the forward activates, the backward masks dy by the activated output.
    pub struct NormParams { n: i32, c: i32, hw: i32, eps: f32, momentum: f32, relu: i32 }
    /// channel_affine: x viewed as [n, c, hw]; flags 0/1.
    pub struct AffineParams { n: i32, c: i32, hw: i32, relu: i32, has_residual: i32 }
    pub struct PermuteParams { n: i32, rank: i32, out_dims: [i32; MAX_RANK], src_strides: [i32; MAX_RANK] }
    pub struct SliceParams { outer: i32, inner: i32, len: i32, src_len: i32, src_start: i32, dst_len: i32, dst_start: i32 }
    /// Batch strides in elements; 0 broadcasts a single matrix over the batch.
    /// conv2d geometry; `k_chunk` = output pixels per split of conv_bwd_weight.
    pub struct ConvParams {
        n: i32, c_in: i32, h: i32, w: i32, c_out: i32, kh: i32, kw: i32, stride_h: i32, stride_w: i32,
        pad_h: i32, pad_w: i32, groups: i32, h_out: i32, w_out: i32, k_chunk: i32,
    }
    /// Window pooling; `kind` 0 max, 1 average with count_include_pad, 2 average without.
    pub struct PoolParams {
        n: i32, c: i32, h: i32, w: i32, kh: i32, kw: i32, stride_h: i32, stride_w: i32, pad_h: i32, pad_w: i32,
        h_out: i32, w_out: i32, kind: i32,
    }
    /// Adaptive pooling and interpolation; `mode` 0 nearest, 1 bilinear.
    pub struct ResizeParams { n: i32, c: i32, h: i32, w: i32, h_out: i32, w_out: i32, mode: i32 }
    /// Gram matrices of F [batch, m, d]; `mode` 0 plain, 1 cosine (rows scaled by 1/max(|row|, eps)).
    pub struct GramParams { batch: i32, m: i32, d: i32, mode: i32, eps: f32 }
    /// Attention scores of q [bh, tq, d] against k [bh, tk, d], times `scale`, softmax over keys.
    pub struct AttnParams { tq: i32, tk: i32, d: i32, scale: f32 }
    pub struct GemmParams { m: i32, n: i32, k: i32, trans_a: i32, trans_b: i32, stride_a: i64, stride_b: i64 }
}
