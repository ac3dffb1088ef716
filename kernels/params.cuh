// Parameter structs of the kernels, one per launch shape. Each is mirrored field by field by a
// #[repr(C)] struct in src/backend/cuda/params.rs; the ABI test compares the two layouts (via
// the emulator's layout table) and each kernel's PTX .entry parameter list against its Rust
// launch wrapper. Fields are declared once, through the X-macros below, so the struct and its
// layout table cannot disagree. Counts are int: the Rust side refuses tensors of 2^31 or more
// elements with a clear error before any launch.
#pragma once

#define KDS_MAX_RANK 8

// ---- elementwise ----
#define KDS_SCALAR_PARAMS(F, A) F(int, n) F(float, value)
#define KDS_UNARY_PARAMS(F, A) F(int, n) F(int, op) F(float, a) F(float, b)
#define KDS_BINARY_PARAMS(F, A) \
    F(int, n) F(int, op) F(int, rank) A(int, out_dims, KDS_MAX_RANK) A(int, a_strides, KDS_MAX_RANK) A(int, b_strides, KDS_MAX_RANK)
// Sum over the broadcast dims: y[o] = sum over r of x[base(o) + offset(r)].
#define KDS_SUM_TO_PARAMS(F, A)                                                                                \
    F(int, n_out) F(int, n_red) F(int, rank) A(int, out_dims, KDS_MAX_RANK) A(int, red_dims, KDS_MAX_RANK) \
        A(int, x_strides, KDS_MAX_RANK)
#define KDS_SGD_PARAMS(F, A) \
    F(int, n) F(float, lr) F(float, momentum) F(float, weight_decay) F(int, nesterov) F(int, first_step)
// finite-difference hypergradient steps: theta +- eps*v, (g+ - g-)/(2 eps)
#define KDS_FD_PARAMS(F, A) F(int, n) F(float, eps)
// x viewed as [channels, len]; qmax = 2^bits - 1
#define KDS_QUANT_PARAMS(F, A) F(int, channels) F(int, len) F(float, qmax)

// ---- reductions over the middle axis of an [outer, len, inner] view ----
#define KDS_AXIS_PARAMS(F, A) F(int, outer) F(int, len) F(int, inner) F(int, flag) F(float, eps)
#define KDS_LOSS_PARAMS(F, A) F(int, rows) F(int, classes) F(int, n) F(float, inv_rows)

// ---- layout ----
// y[o] = x[sum_d idx_d(o) * src_strides[d]], idx over out_dims (permute).
#define KDS_PERMUTE_PARAMS(F, A) F(int, n) F(int, rank) A(int, out_dims, KDS_MAX_RANK) A(int, src_strides, KDS_MAX_RANK)
// Copy `len` lines of [outer, *, inner] views: y[o, dst_start + k, i] = x[o, src_start + k, i]
// (narrow: dst_start = 0; concat: one launch per part, src_start = 0).
#define KDS_SLICE_PARAMS(F, A) \
    F(int, outer) F(int, inner) F(int, len) F(int, src_len) F(int, src_start) F(int, dst_len) F(int, dst_start)

// ---- gemm: C[b] (m x n) = op(A[b]) (m x k) * op(B[b]) (k x n), batch strides 0 = broadcast ----
#define KDS_GEMM_PARAMS(F, A) \
    F(int, m) F(int, n) F(int, k) F(int, trans_a) F(int, trans_b) F(long long, stride_a) F(long long, stride_b)

// ---- normalisation: x viewed as [n, c, hw]; layer norm uses n = rows, c = cols, hw = 1 ----
// relu (batch norm only): bn_apply writes max(y, 0); the backward kernels mask dy by that output
#define KDS_NORM_PARAMS(F, A) F(int, n) F(int, c) F(int, hw) F(float, eps) F(float, momentum) F(int, relu)
// channel_affine: y = x*scale[c] + shift[c] (+ residual when has_residual), ReLU when relu
#define KDS_AFFINE_PARAMS(F, A) F(int, n) F(int, c) F(int, hw) F(int, relu) F(int, has_residual)

// ---- conv2d: x [n, c_in, h, w], w [c_out, c_in/groups, kh, kw], y [n, c_out, h_out, w_out];
// conv_bwd_weight splits the n*h_out*w_out pixels into chunks of k_chunk (grid z = groups * splits)
#define KDS_CONV_PARAMS(F, A)                                                                                  \
    F(int, n) F(int, c_in) F(int, h) F(int, w) F(int, c_out) F(int, kh) F(int, kw) F(int, stride_h)           \
        F(int, stride_w) F(int, pad_h) F(int, pad_w) F(int, groups) F(int, h_out) F(int, w_out) F(int, k_chunk)

// ---- pooling and resampling: x [n, c, h, w] -> [n, c, h_out, w_out] ----
// kind: PoolCode in pool.cu (0 max, 1 average with count_include_pad, 2 average without)
#define KDS_POOL_PARAMS(F, A)                                                                                     \
    F(int, n) F(int, c) F(int, h) F(int, w) F(int, kh) F(int, kw) F(int, stride_h) F(int, stride_w) F(int, pad_h) \
        F(int, pad_w) F(int, h_out) F(int, w_out) F(int, kind)
// mode: InterpCode in pool.cu (0 nearest, 1 bilinear); unused by adaptive pooling
#define KDS_RESIZE_PARAMS(F, A) F(int, n) F(int, c) F(int, h) F(int, w) F(int, h_out) F(int, w_out) F(int, mode)

// ---- Gram / cosine matrices of F [batch, m, d] (mode 0 plain, 1 cosine), attention scores ----
#define KDS_GRAM_PARAMS(F, A) F(int, batch) F(int, m) F(int, d) F(int, mode) F(float, eps)
#define KDS_ATTN_PARAMS(F, A) F(int, tq) F(int, tk) F(int, d) F(float, scale)

#define KDS_ALL_PARAMS(X)                 \
    X(GramParams, KDS_GRAM_PARAMS)        \
    X(AttnParams, KDS_ATTN_PARAMS)        \
    X(PoolParams, KDS_POOL_PARAMS)        \
    X(ResizeParams, KDS_RESIZE_PARAMS)    \
    X(ConvParams, KDS_CONV_PARAMS)        \
    X(NormParams, KDS_NORM_PARAMS)        \
    X(AffineParams, KDS_AFFINE_PARAMS)    \
    X(PermuteParams, KDS_PERMUTE_PARAMS)  \
    X(SliceParams, KDS_SLICE_PARAMS)      \
    X(GemmParams, KDS_GEMM_PARAMS)        \
    X(ScalarParams, KDS_SCALAR_PARAMS)    \
    X(UnaryParams, KDS_UNARY_PARAMS)      \
    X(BinaryParams, KDS_BINARY_PARAMS)    \
    X(SumToParams, KDS_SUM_TO_PARAMS)     \
    X(SgdParams, KDS_SGD_PARAMS)          \
    X(FdParams, KDS_FD_PARAMS)            \
    X(QuantParams, KDS_QUANT_PARAMS)      \
    X(AxisParams, KDS_AXIS_PARAMS)        \
    X(LossParams, KDS_LOSS_PARAMS)

#define KDS_FIELD(T, name) T name;
#define KDS_ARRAY(T, name, n) T name[n];
#define KDS_DEFINE_STRUCT(Name, FIELDS) \
    struct Name {                       \
        FIELDS(KDS_FIELD, KDS_ARRAY)    \
    };
KDS_ALL_PARAMS(KDS_DEFINE_STRUCT)

// Unary op codes (Rust: UnaryOp -> code, a, b in src/backend/cuda/ops.rs).
enum UnaryCode {
    U_RELU = 0,
    U_RELU6 = 1,
    U_LEAKY = 2,  // a = negative slope
    U_GELU = 3,
    U_SIGMOID = 4,
    U_TANH = 5,
    U_MISH = 6,
    U_EXP = 7,
    U_LOG = 8,
    U_SQRT = 9,
    U_POW = 10,  // a = exponent
    U_ABS = 11,
    U_AFFINE = 12,  // a = mul, b = add
    U_CLAMP_MIN = 13,  // a = lower bound
};

enum BinaryCode { B_ADD = 0, B_SUB = 1, B_MUL = 2, B_DIV = 3 };
