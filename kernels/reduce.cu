// Reductions and row-wise normalisations over the middle axis of an [outer, len, inner] view
// (AxisParams): sum, max (+ backward to the first maximum), softmax / log-softmax (+ backward),
// L2 normalisation (F.normalize, + backward).
//
// Two launch shapes per op:
// - `*_rows` (inner == 1, contiguous lines): one block of 256 threads per line, grid.x = outer;
//   threads stride over the line, partial results combine through warp shuffles and 32 floats
//   of shared memory (block_sum / block_max). Every thread of the block reaches every barrier.
// - `*_cols` (inner > 1): one thread per (outer, inner) line, 1-D grid over outer*inner; the
//   loop over len reads addresses inner apart, so neighbouring threads read neighbouring words.
// Summation order depends only on the launch shape, so results are bitwise reproducible.
// Bound: memory (softmax reads its line 3 times, mostly from L1/L2, and writes once).
#include "common.cuh"

#define AT(p, o, k, i) (((long long)(o) * (p).len + (k)) * (p).inner + (i))

// ---------------------------------------------------------------- sum

KERNEL void __launch_bounds__(256) reduce_sum_rows(const float* __restrict__ x, float* __restrict__ y, AxisParams p) {
    SHARED(float, scratch, 32);
    const long long base = (long long)blockIdx.x * p.len;
    float acc = 0.0f;
    for (int k = threadIdx.x; k < p.len; k += blockDim.x) acc += x[base + k];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) y[blockIdx.x] = acc;
}
EMU_EXPORT(reduce_sum_rows)

// The planted race for the ThreadSanitizer test: reduce_sum_rows with the first barrier of its
// block reduction removed. Compiled into the TSan emulator build only, never into PTX.
#ifdef KDS_EMU_TSAN
KERNEL void reduce_sum_rows_racy(const float* __restrict__ x, float* __restrict__ y, AxisParams p) {
    SHARED(float, scratch, 32);
    const long long base = (long long)blockIdx.x * p.len;
    float acc = 0.0f;
    for (int k = threadIdx.x; k < p.len; k += blockDim.x) acc += x[base + k];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    acc = warp_sum(acc);
    if (lane == 0) scratch[warp] = acc;
    // __syncthreads();  <- removed: warp 0 may read scratch[w] before warp w wrote it
    acc = lane < nwarps ? scratch[lane] : 0.0f;
    acc = warp_sum(acc);
    if (threadIdx.x == 0) y[blockIdx.x] = acc;
}
EMU_EXPORT_TSAN_ONLY(reduce_sum_rows_racy)
#endif

KERNEL void __launch_bounds__(256) reduce_sum_cols(const float* __restrict__ x, float* __restrict__ y, AxisParams p) {
    GRID_STRIDE(t, (long long)p.outer * p.inner) {
        const long long o = t / p.inner, i = t % p.inner;
        float acc = 0.0f;
        for (int k = 0; k < p.len; k++) acc += x[AT(p, o, k, i)];
        y[t] = acc;
    }
}
EMU_EXPORT(reduce_sum_cols)

// ---------------------------------------------------------------- max

// (value, index) is better than (w, j) when it is NaN and w is not, larger, or equal with a
// smaller index: the first maximum, NaN propagating (PyTorch's rule).
__device__ __forceinline__ bool better(float v, int k, float w, int j) {
    if (v != v) return w == w || k < j;
    if (w != w) return false;
    return v > w || (v == w && k < j);
}

// Block-wide first argmax of a contiguous line; every thread gets the index.
__device__ __forceinline__ int block_argmax(const float* __restrict__ line, int len, float* sv, int* si) {
    float bv = -INFINITY;
    int bk = 0x7fffffff;
    for (int k = threadIdx.x; k < len; k += blockDim.x) {
        float v = line[k];
        if (better(v, k, bv, bk)) bv = v, bk = k;
    }
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(FULL_MASK, bv, o);
        int j = __shfl_xor_sync(FULL_MASK, bk, o);
        if (better(w, j, bv, bk)) bv = w, bk = j;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) sv[warp] = bv, si[warp] = bk;
    __syncthreads();
    bv = lane < nwarps ? sv[lane] : -INFINITY;
    bk = lane < nwarps ? si[lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(FULL_MASK, bv, o);
        int j = __shfl_xor_sync(FULL_MASK, bk, o);
        if (better(w, j, bv, bk)) bv = w, bk = j;
    }
    __syncthreads();
    return bk;
}

__device__ __forceinline__ int line_argmax(const float* __restrict__ x, AxisParams p, long long o, long long i) {
    int best = 0;
    float bv = x[AT(p, o, 0, i)];
    for (int k = 1; k < p.len; k++) {
        float v = x[AT(p, o, k, i)];
        if (better(v, k, bv, best)) bv = v, best = k;
    }
    return best;
}

KERNEL void __launch_bounds__(256) reduce_max_rows(const float* __restrict__ x, float* __restrict__ y, AxisParams p) {
    SHARED(float, sv, 32);
    SHARED(int, si, 32);
    const float* line = x + (long long)blockIdx.x * p.len;
    int k = block_argmax(line, p.len, sv, si);
    if (threadIdx.x == 0) y[blockIdx.x] = line[k];
}
EMU_EXPORT(reduce_max_rows)

KERNEL void __launch_bounds__(256) reduce_max_cols(const float* __restrict__ x, float* __restrict__ y, AxisParams p) {
    GRID_STRIDE(t, (long long)p.outer * p.inner) {
        const long long o = t / p.inner, i = t % p.inner;
        y[t] = x[AT(p, o, line_argmax(x, p, o, i), i)];
    }
}
EMU_EXPORT(reduce_max_cols)

// dx is written completely: dy at the first maximum of each line, 0 elsewhere.
KERNEL void __launch_bounds__(256) reduce_max_bwd_rows(const float* __restrict__ x, const float* __restrict__ dy,
                                                       float* __restrict__ dx, AxisParams p) {
    SHARED(float, sv, 32);
    SHARED(int, si, 32);
    const long long base = (long long)blockIdx.x * p.len;
    int best = block_argmax(x + base, p.len, sv, si);
    const float g = dy[blockIdx.x];
    for (int k = threadIdx.x; k < p.len; k += blockDim.x) dx[base + k] = k == best ? g : 0.0f;
}
EMU_EXPORT(reduce_max_bwd_rows)

KERNEL void __launch_bounds__(256) reduce_max_bwd_cols(const float* __restrict__ x, const float* __restrict__ dy,
                                                       float* __restrict__ dx, AxisParams p) {
    GRID_STRIDE(t, (long long)p.outer * p.inner) {
        const long long o = t / p.inner, i = t % p.inner;
        const int best = line_argmax(x, p, o, i);
        const float g = dy[t];
        for (int k = 0; k < p.len; k++) dx[AT(p, o, k, i)] = k == best ? g : 0.0f;
    }
}
EMU_EXPORT(reduce_max_bwd_cols)

// ---------------------------------------------------------------- softmax (flag = log)

KERNEL void __launch_bounds__(256) softmax_rows(const float* __restrict__ x, float* __restrict__ y, AxisParams p) {
    SHARED(float, scratch, 32);
    const long long base = (long long)blockIdx.x * p.len;
    float m = -INFINITY;
    for (int k = threadIdx.x; k < p.len; k += blockDim.x) m = fmaxf(m, x[base + k]);
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int k = threadIdx.x; k < p.len; k += blockDim.x) s += expf(x[base + k] - m);
    s = block_sum(s, scratch);
    if (p.flag) {
        const float lse = m + logf(s);
        for (int k = threadIdx.x; k < p.len; k += blockDim.x) y[base + k] = x[base + k] - lse;
    } else {
        const float inv = 1.0f / s;
        for (int k = threadIdx.x; k < p.len; k += blockDim.x) y[base + k] = expf(x[base + k] - m) * inv;
    }
}
EMU_EXPORT(softmax_rows)

KERNEL void __launch_bounds__(256) softmax_cols(const float* __restrict__ x, float* __restrict__ y, AxisParams p) {
    GRID_STRIDE(t, (long long)p.outer * p.inner) {
        const long long o = t / p.inner, i = t % p.inner;
        float m = -INFINITY, s = 0.0f;
        for (int k = 0; k < p.len; k++) m = fmaxf(m, x[AT(p, o, k, i)]);
        for (int k = 0; k < p.len; k++) s += expf(x[AT(p, o, k, i)] - m);
        const float lse = m + logf(s), inv = 1.0f / s;
        for (int k = 0; k < p.len; k++) {
            const long long j = AT(p, o, k, i);
            y[j] = p.flag ? x[j] - lse : expf(x[j] - m) * inv;
        }
    }
}
EMU_EXPORT(softmax_cols)

// softmax: dx = y*(dy - sum dy*y); log-softmax: dx = dy - exp(y)*sum dy.
KERNEL void __launch_bounds__(256) softmax_bwd_rows(const float* __restrict__ y, const float* __restrict__ dy,
                                                    float* __restrict__ dx, AxisParams p) {
    SHARED(float, scratch, 32);
    const long long base = (long long)blockIdx.x * p.len;
    float s = 0.0f;
    for (int k = threadIdx.x; k < p.len; k += blockDim.x) s += p.flag ? dy[base + k] : dy[base + k] * y[base + k];
    s = block_sum(s, scratch);
    for (int k = threadIdx.x; k < p.len; k += blockDim.x) {
        const long long j = base + k;
        dx[j] = p.flag ? dy[j] - expf(y[j]) * s : y[j] * (dy[j] - s);
    }
}
EMU_EXPORT(softmax_bwd_rows)

KERNEL void __launch_bounds__(256) softmax_bwd_cols(const float* __restrict__ y, const float* __restrict__ dy,
                                                    float* __restrict__ dx, AxisParams p) {
    GRID_STRIDE(t, (long long)p.outer * p.inner) {
        const long long o = t / p.inner, i = t % p.inner;
        float s = 0.0f;
        for (int k = 0; k < p.len; k++) {
            const long long j = AT(p, o, k, i);
            s += p.flag ? dy[j] : dy[j] * y[j];
        }
        for (int k = 0; k < p.len; k++) {
            const long long j = AT(p, o, k, i);
            dx[j] = p.flag ? dy[j] - expf(y[j]) * s : y[j] * (dy[j] - s);
        }
    }
}
EMU_EXPORT(softmax_bwd_cols)

// ---------------------------------------------------------------- L2 normalisation (eps)

KERNEL void __launch_bounds__(256) normalize_rows(const float* __restrict__ x, float* __restrict__ y, AxisParams p) {
    SHARED(float, scratch, 32);
    const long long base = (long long)blockIdx.x * p.len;
    float ss = 0.0f;
    for (int k = threadIdx.x; k < p.len; k += blockDim.x) ss += x[base + k] * x[base + k];
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / fmaxf(sqrtf(ss), p.eps);
    for (int k = threadIdx.x; k < p.len; k += blockDim.x) y[base + k] = x[base + k] * inv;
}
EMU_EXPORT(normalize_rows)

KERNEL void __launch_bounds__(256) normalize_cols(const float* __restrict__ x, float* __restrict__ y, AxisParams p) {
    GRID_STRIDE(t, (long long)p.outer * p.inner) {
        const long long o = t / p.inner, i = t % p.inner;
        float ss = 0.0f;
        for (int k = 0; k < p.len; k++) ss += x[AT(p, o, k, i)] * x[AT(p, o, k, i)];
        const float inv = 1.0f / fmaxf(sqrtf(ss), p.eps);
        for (int k = 0; k < p.len; k++) y[AT(p, o, k, i)] = x[AT(p, o, k, i)] * inv;
    }
}
EMU_EXPORT(normalize_cols)

// n = ||x||: where n > eps, dx = (dy - x*(x.dy)/n^2)/n; otherwise dx = dy/eps.
KERNEL void __launch_bounds__(256) normalize_bwd_rows(const float* __restrict__ x, const float* __restrict__ dy,
                                                      float* __restrict__ dx, AxisParams p) {
    SHARED(float, scratch, 32);
    const long long base = (long long)blockIdx.x * p.len;
    float ss = 0.0f, dot = 0.0f;
    for (int k = threadIdx.x; k < p.len; k += blockDim.x) {
        ss += x[base + k] * x[base + k];
        dot += x[base + k] * dy[base + k];
    }
    ss = block_sum(ss, scratch);
    dot = block_sum(dot, scratch);
    const float n = sqrtf(ss);
    for (int k = threadIdx.x; k < p.len; k += blockDim.x) {
        const long long j = base + k;
        dx[j] = n > p.eps ? (dy[j] - x[j] * (dot / (n * n))) / n : dy[j] / p.eps;
    }
}
EMU_EXPORT(normalize_bwd_rows)

KERNEL void __launch_bounds__(256) normalize_bwd_cols(const float* __restrict__ x, const float* __restrict__ dy,
                                                      float* __restrict__ dx, AxisParams p) {
    GRID_STRIDE(t, (long long)p.outer * p.inner) {
        const long long o = t / p.inner, i = t % p.inner;
        float ss = 0.0f, dot = 0.0f;
        for (int k = 0; k < p.len; k++) {
            const long long j = AT(p, o, k, i);
            ss += x[j] * x[j];
            dot += x[j] * dy[j];
        }
        const float n = sqrtf(ss);
        for (int k = 0; k < p.len; k++) {
            const long long j = AT(p, o, k, i);
            dx[j] = n > p.eps ? (dy[j] - x[j] * (dot / (n * n))) / n : dy[j] / p.eps;
        }
    }
}
EMU_EXPORT(normalize_bwd_cols)
