// Elementwise kernels: fill, activations and their derivatives, broadcasting arithmetic, the
// adjoint of broadcasting (sum_to) and in-place accumulation.
//
// Launch geometry: 1-D, 256 threads a block, grid = min(ceil(n/256), 65535*8) blocks with a
// grid-stride loop (GRID_STRIDE), so any n fits. sum_to runs one thread per output element.
// Invariants: n < 2^31 (checked on the Rust side); inputs and outputs never alias except the
// in-place kernels (add_assign, whose acc is read and written by the same thread only).
// Bound: memory bandwidth (1-3 loads and 1 store of 4 bytes per element, a few flops).
#include "common.cuh"

__device__ __forceinline__ float softplus_f(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

__device__ __forceinline__ float unary_one(int op, float x, float a, float b) {
    switch (op) {
        case U_RELU: return relu_f(x);
        case U_RELU6: return x > 6.0f ? 6.0f : relu_f(x);
        case U_LEAKY: return x > 0.0f ? x : a * x;
        case U_GELU: return 0.5f * x * (1.0f + erff(x * INV_SQRT2));
        case U_SIGMOID: return sigmoid_f(x);
        case U_TANH: return tanhf(x);
        case U_MISH: return x * tanhf(softplus_f(x));
        case U_EXP: return expf(x);
        case U_LOG: return logf(x);
        case U_SQRT: return sqrtf(x);
        case U_POW: return a == 2.0f ? x * x : powf(x, a);
        case U_ABS: return fabsf(x);
        case U_AFFINE: return x * a + b;
        case U_CLAMP_MIN: return fmaxf(x, a);
    }
    return __int_as_float(0x7fc00000);  // unknown op code: NaN, so the test of that op fails
}

// d op(x)/dx from x or y = op(x), as the CPU backend computes it.
__device__ __forceinline__ float unary_grad(int op, float x, float y, float a) {
    switch (op) {
        case U_RELU: return x > 0.0f ? 1.0f : 0.0f;
        case U_RELU6: return (x > 0.0f && x < 6.0f) ? 1.0f : 0.0f;
        case U_LEAKY: return x > 0.0f ? 1.0f : a;
        case U_GELU: {
            float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
            float pdf = expf(-0.5f * x * x) * INV_SQRT_2PI;
            return cdf + x * pdf;
        }
        case U_SIGMOID: return y * (1.0f - y);
        case U_TANH: return 1.0f - y * y;
        case U_MISH: {
            float t = tanhf(softplus_f(x));
            return t + x * (1.0f - t * t) * sigmoid_f(x);
        }
        case U_EXP: return y;
        case U_LOG: return 1.0f / x;
        case U_SQRT: return 0.5f / y;
        case U_POW: return a == 2.0f ? 2.0f * x : a * powf(x, a - 1.0f);
        case U_ABS: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
        case U_AFFINE: return a;
        case U_CLAMP_MIN: return x > a ? 1.0f : 0.0f;
    }
    return __int_as_float(0x7fc00000);
}

KERNEL void __launch_bounds__(256) fill(float* __restrict__ y, ScalarParams p) {
    GRID_STRIDE(i, p.n) y[i] = p.value;
}
EMU_EXPORT(fill)

KERNEL void __launch_bounds__(256) unary_fwd(const float* __restrict__ x, float* __restrict__ y, UnaryParams p) {
    GRID_STRIDE(i, p.n) y[i] = unary_one(p.op, x[i], p.a, p.b);
}
EMU_EXPORT(unary_fwd)

KERNEL void __launch_bounds__(256) unary_bwd(const float* __restrict__ x, const float* __restrict__ y,
                                             const float* __restrict__ dy, float* __restrict__ dx, UnaryParams p) {
    GRID_STRIDE(i, p.n) dx[i] = dy[i] * unary_grad(p.op, x[i], y[i], p.a);
}
EMU_EXPORT(unary_bwd)

// out[i] = a[ia] op b[ib], where ia/ib come from i's multi-index over out_dims and the operands'
// strides (0 on broadcast dims).
KERNEL void __launch_bounds__(256) binary_bcast(const float* __restrict__ a, const float* __restrict__ b,
                                                float* __restrict__ y, BinaryParams p) {
    GRID_STRIDE(i, p.n) {
        long long rem = i, ia = 0, ib = 0;
        // Unrolled over the fixed maximum rank so the parameter arrays are indexed statically
        // (a dynamic index would copy the struct to local memory).
#pragma unroll
        for (int d = KDS_MAX_RANK - 1; d >= 0; d--) {
            if (d < p.rank) {
                long long idx = rem % p.out_dims[d];
                rem /= p.out_dims[d];
                ia += idx * p.a_strides[d];
                ib += idx * p.b_strides[d];
            }
        }
        float u = a[ia], v = b[ib], r;
        switch (p.op) {
            case B_ADD: r = u + v; break;
            case B_SUB: r = u - v; break;
            case B_MUL: r = u * v; break;
            default: r = u / v; break;
        }
        y[i] = r;
    }
}
EMU_EXPORT(binary_bcast)

// y[o] = sum over the reduced dims of x; o's multi-index over out_dims (1 on reduced dims) plus
// r's over red_dims (1 on kept dims) locate the element. Summation order is fixed (r ascending).
KERNEL void __launch_bounds__(256) sum_to(const float* __restrict__ x, float* __restrict__ y, SumToParams p) {
    GRID_STRIDE(o, p.n_out) {
        long long rem = o, base = 0;
#pragma unroll
        for (int d = KDS_MAX_RANK - 1; d >= 0; d--) {
            if (d < p.rank) {
                base += (rem % p.out_dims[d]) * p.x_strides[d];
                rem /= p.out_dims[d];
            }
        }
        float acc = 0.0f;
        for (int r = 0; r < p.n_red; r++) {
            long long rr = r, off = base;
#pragma unroll
            for (int d = KDS_MAX_RANK - 1; d >= 0; d--) {
                if (d < p.rank) {
                    off += (rr % p.red_dims[d]) * p.x_strides[d];
                    rr /= p.red_dims[d];
                }
            }
            acc += x[off];
        }
        y[o] = acc;
    }
}
EMU_EXPORT(sum_to)

// acc[i] += x[i] (autograd's in-place gradient accumulation).
KERNEL void __launch_bounds__(256) add_assign(float* __restrict__ acc, const float* __restrict__ x, ScalarParams p) {
    GRID_STRIDE(i, p.n) acc[i] += x[i];
}
EMU_EXPORT(add_assign)
