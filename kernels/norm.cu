// Batch norm (train-mode statistics with Welford, running-stat update, apply, backward) and
// layer norm (forward, backward for x and for gamma/beta).
//
// Launch geometry:
// - bn_stats, bn_bwd_stats: one block of 256 threads per channel (grid.x = c); threads walk the
//   channel's n*hw elements (hw-contiguous runs), each keeping a Welford (count, mean, M2)
//   triple that is merged across the warp by shuffles and across warps through shared memory
//   (Chan's parallel update: stable for inputs with a large mean). Thread 0 writes the
//   channel's results and updates the running statistics in place (unbiased variance).
// - bn_apply, bn_bwd_apply, channel_affine: 1-D grid-stride over all n*c*hw elements.
// - ln_fwd, ln_bwd_dx: one block of 256 threads per row (grid.x = rows), Welford again.
// - ln_bwd_params: one thread per column, looping over rows (coalesced across columns).
// Bound: memory; batch norm reads x twice forward (stats + apply) and x, dy twice backward.
#include "common.cuh"

struct Welford {
    float n, mean, m2;
};

__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
    const float n = a.n + b.n;
    if (n == 0.0f) return a;
    const float d = b.mean - a.mean, wb = b.n / n;
    return Welford{n, a.mean + d * wb, a.m2 + b.m2 + d * d * a.n * wb};
}

// Block-wide merge (1-D blocks, a multiple of 32 threads); every thread gets the result.
__device__ __forceinline__ Welford block_welford(Welford w, float* sn, float* smean, float* sm2) {
    for (int o = 16; o > 0; o >>= 1) {
        Welford v{__shfl_xor_sync(FULL_MASK, w.n, o), __shfl_xor_sync(FULL_MASK, w.mean, o),
                  __shfl_xor_sync(FULL_MASK, w.m2, o)};
        w = welford_merge(w, v);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) sn[warp] = w.n, smean[warp] = w.mean, sm2[warp] = w.m2;
    __syncthreads();
    w = lane < nwarps ? Welford{sn[lane], smean[lane], sm2[lane]} : Welford{0.0f, 0.0f, 0.0f};
    for (int o = 16; o > 0; o >>= 1) {
        Welford v{__shfl_xor_sync(FULL_MASK, w.n, o), __shfl_xor_sync(FULL_MASK, w.mean, o),
                  __shfl_xor_sync(FULL_MASK, w.m2, o)};
        w = welford_merge(w, v);
    }
    __syncthreads();
    return w;
}

__device__ __forceinline__ void welford_add(Welford& w, float x) {
    w.n += 1.0f;
    const float d = x - w.mean;
    w.mean += d / w.n;
    w.m2 += d * (x - w.mean);
}

// Statistics are taken of x - k with k the channel's first element (exact differences for
// inputs far from zero), so the mean's rounding does not swamp a small spread; `shift` keeps
// (k, mean - k) per channel for bn_apply.
KERNEL void __launch_bounds__(256) bn_stats(const float* __restrict__ x, float* __restrict__ mean,
                                            float* __restrict__ invstd, float* __restrict__ running_mean,
                                            float* __restrict__ running_var, float* __restrict__ shift, NormParams p) {
    SHARED(float, sn, 32);
    SHARED(float, smean, 32);
    SHARED(float, sm2, 32);
    const int c = blockIdx.x;
    const long long m = (long long)p.n * p.hw;
    const float k = x[(long long)c * p.hw];
    Welford w{0.0f, 0.0f, 0.0f};
    for (long long i = threadIdx.x; i < m; i += blockDim.x) {
        const long long img = i / p.hw, s = i % p.hw;
        welford_add(w, x[(img * p.c + c) * p.hw + s] - k);
    }
    w = block_welford(w, sn, smean, sm2);
    if (threadIdx.x == 0) {
        const float var = fmaxf(w.m2 / (float)m, 0.0f);
        shift[c] = k;
        shift[c + p.c] = w.mean;
        w.mean += k;
        mean[c] = w.mean;
        invstd[c] = rsqrtf(var + p.eps);
        const float unbiased = m > 1 ? w.m2 / (float)(m - 1) : var;
        running_mean[c] = (1.0f - p.momentum) * running_mean[c] + p.momentum * w.mean;
        running_var[c] = (1.0f - p.momentum) * running_var[c] + p.momentum * unbiased;
    }
}
EMU_EXPORT(bn_stats)

KERNEL void __launch_bounds__(256) bn_apply(const float* __restrict__ x, const float* __restrict__ shift,
                                            const float* __restrict__ invstd, const float* __restrict__ gamma,
                                            const float* __restrict__ beta, float* __restrict__ y, NormParams p) {
    GRID_STRIDE(i, (long long)p.n * p.c * p.hw) {
        const int c = (int)((i / p.hw) % p.c);
        const float v = ((x[i] - shift[c]) - shift[c + p.c]) * (invstd[c] * gamma[c]) + beta[c];
        y[i] = p.relu ? relu_f(v) : v;
    }
}
EMU_EXPORT(bn_apply)

// Eval-mode batchnorm folded to a per-channel scale and shift, with a ResNet block's shortcut
// add and ReLU in the same pass (1-D grid-stride). __fmul_rn/__fadd_rn keep nvcc from contracting
// to an FMA, so the result equals the separate mul, add, add and relu kernels bit for bit (the
// CPU backend rounds the same way). `residual` is not read when has_residual is 0.
KERNEL void __launch_bounds__(256) channel_affine(const float* __restrict__ x, const float* __restrict__ scale,
                                                  const float* __restrict__ shift,
                                                  const float* __restrict__ residual, float* __restrict__ y,
                                                  AffineParams p) {
    GRID_STRIDE(i, (long long)p.n * p.c * p.hw) {
        const int c = (int)((i / p.hw) % p.c);
        float v = __fadd_rn(__fmul_rn(x[i], scale[c]), shift[c]);
        if (p.has_residual) v = __fadd_rn(v, residual[i]);
        y[i] = p.relu ? relu_f(v) : v;
    }
}
EMU_EXPORT(channel_affine)

// dy where the forward's ReLU passed (its output y > 0); dy itself when it had none (y unread).
__device__ __forceinline__ float masked_dy(const float* __restrict__ dy, const float* __restrict__ y, long long j,
                                           int relu) {
    return relu && !(y[j] > 0.0f) ? 0.0f : dy[j];
}

// Per channel, with k the channel's first element and d = mean(x - k), dy masked by the ReLU:
// sums[c] = sum dy, sums[C + c] = sum dy*(x - mean), sums[2C + c] = k, sums[3C + c] = d;
// dgamma = sums[C + c] * invstd, dbeta = sum dy.
KERNEL void __launch_bounds__(256) bn_bwd_stats(const float* __restrict__ x, const float* __restrict__ dy,
                                                const float* __restrict__ y, const float* __restrict__ invstd,
                                                float* __restrict__ sums,
                                                float* __restrict__ dgamma, float* __restrict__ dbeta, NormParams p) {
    SHARED(float, scratch, 32);
    const int c = blockIdx.x;
    const long long m = (long long)p.n * p.hw;
    const float k = x[(long long)c * p.hw];
    float sx = 0.0f, sdy = 0.0f, sdyx = 0.0f;
    for (long long i = threadIdx.x; i < m; i += blockDim.x) {
        const long long j = ((i / p.hw) * p.c + c) * p.hw + i % p.hw;
        const float xk = x[j] - k, g = masked_dy(dy, y, j, p.relu);
        sx += xk;
        sdy += g;
        sdyx += g * xk;
    }
    sx = block_sum(sx, scratch);
    sdy = block_sum(sdy, scratch);
    sdyx = block_sum(sdyx, scratch);
    if (threadIdx.x == 0) {
        const float d = sx / (float)m, sdyxmu = sdyx - d * sdy;
        sums[c] = sdy;
        sums[c + p.c] = sdyxmu;
        sums[c + 2 * p.c] = k;
        sums[c + 3 * p.c] = d;
        dgamma[c] = sdyxmu * invstd[c];
        dbeta[c] = sdy;
    }
}
EMU_EXPORT(bn_bwd_stats)

// dx = a*dy - b*(x - mean) - a*sum(dy)/m with a = gamma*invstd, b = a*invstd^2*sum(dy*(x-mean))/m.
KERNEL void __launch_bounds__(256) bn_bwd_apply(const float* __restrict__ x, const float* __restrict__ dy,
                                                const float* __restrict__ y, const float* __restrict__ invstd,
                                                const float* __restrict__ gamma,
                                                const float* __restrict__ sums, float* __restrict__ dx, NormParams p) {
    const float inv_m = 1.0f / ((float)p.n * (float)p.hw);
    GRID_STRIDE(i, (long long)p.n * p.c * p.hw) {
        const int c = (int)((i / p.hw) % p.c);
        const float inv = invstd[c], a = gamma[c] * inv;
        const float b = a * inv * inv * sums[c + p.c] * inv_m;
        const float xmu = (x[i] - sums[c + 2 * p.c]) - sums[c + 3 * p.c];
        dx[i] = a * masked_dy(dy, y, i, p.relu) - b * xmu - a * sums[c] * inv_m;
    }
}
EMU_EXPORT(bn_bwd_apply)

KERNEL void __launch_bounds__(256) ln_fwd(const float* __restrict__ x, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float* __restrict__ y,
                                          float* __restrict__ mean, float* __restrict__ invstd, NormParams p) {
    SHARED(float, sn, 32);
    SHARED(float, smean, 32);
    SHARED(float, sm2, 32);
    const long long base = (long long)blockIdx.x * p.c;
    const float k = x[base];  // shift: statistics of x - k (see bn_stats)
    Welford w{0.0f, 0.0f, 0.0f};
    for (int j = threadIdx.x; j < p.c; j += blockDim.x) welford_add(w, x[base + j] - k);
    w = block_welford(w, sn, smean, sm2);
    const float inv = rsqrtf(fmaxf(w.m2 / (float)p.c, 0.0f) + p.eps);
    for (int j = threadIdx.x; j < p.c; j += blockDim.x)
        y[base + j] = ((x[base + j] - k) - w.mean) * inv * gamma[j] + beta[j];
    if (threadIdx.x == 0) mean[blockIdx.x] = k + w.mean, invstd[blockIdx.x] = inv;
}
EMU_EXPORT(ln_fwd)

// dx = inv*(g - mean(g) - xhat*mean(g*xhat)), g = dy*gamma, xhat = ((x - k) - d)*inv with k the
// row's first element and d = mean(x - k); rowstats[r] = k, rowstats[rows + r] = d for
// ln_bwd_params.
KERNEL void __launch_bounds__(256) ln_bwd_dx(const float* __restrict__ x, const float* __restrict__ dy,
                                             const float* __restrict__ gamma, const float* __restrict__ invstd,
                                             float* __restrict__ dx, float* __restrict__ rowstats, NormParams p) {
    SHARED(float, scratch, 32);
    const long long base = (long long)blockIdx.x * p.c;
    const float k = x[base], inv = invstd[blockIdx.x];
    float sx = 0.0f, sg = 0.0f, sgx = 0.0f;
    for (int j = threadIdx.x; j < p.c; j += blockDim.x) {
        const float g = dy[base + j] * gamma[j], xk = x[base + j] - k;
        sx += xk;
        sg += g;
        sgx += g * xk;
    }
    const float d = block_sum(sx, scratch) / (float)p.c;
    sg = block_sum(sg, scratch);
    sgx = (block_sum(sgx, scratch) - d * sg) * inv / (float)p.c;
    sg /= (float)p.c;
    for (int j = threadIdx.x; j < p.c; j += blockDim.x) {
        const float xhat = ((x[base + j] - k) - d) * inv;
        dx[base + j] = inv * (dy[base + j] * gamma[j] - sg - xhat * sgx);
    }
    if (threadIdx.x == 0) rowstats[blockIdx.x] = k, rowstats[p.n + blockIdx.x] = d;
}
EMU_EXPORT(ln_bwd_dx)

KERNEL void __launch_bounds__(256) ln_bwd_params(const float* __restrict__ x, const float* __restrict__ dy,
                                                 const float* __restrict__ rowstats, const float* __restrict__ invstd,
                                                 float* __restrict__ dgamma, float* __restrict__ dbeta, NormParams p) {
    GRID_STRIDE(j, p.c) {
        float dg = 0.0f, db = 0.0f;
        for (int r = 0; r < p.n; r++) {
            const long long i = (long long)r * p.c + j;
            dg += dy[i] * (((x[i] - rowstats[r]) - rowstats[p.n + r]) * invstd[r]);
            db += dy[i];
        }
        dgamma[j] = dg;
        dbeta[j] = db;
    }
}
EMU_EXPORT(ln_bwd_params)
