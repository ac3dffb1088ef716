// 2-D convolution (dilation 1), NCHW, weights [c_out, c_in/groups, kh, kw]: forward,
// backward for the data and backward for the weights, with stride, padding and groups; a
// direct path for depthwise convolutions (one input channel per group, any channel multiplier).
//
// General case: implicit GEMMs on the shared tiled core (tile_gemm.cuh), 1-D blocks of 256
// threads, 64 x 64 output tiles, per group g (cig = c_in/groups, cog = c_out/groups,
// K_w = cig*kh*kw taps, P = n*h_out*w_out output pixels over the whole batch):
// - conv_fwd:        y[g] (cog x P)      = W[g] (cog x K_w) . col(x) (K_w x P);
//                    grid (ceil(P/64), ceil(cog/64), groups).
// - conv_bwd_data:   dx[g] (cig x n*h*w) = W[g]^T (cig x cog*kh*kw) . dycol (cog*kh*kw x n*h*w),
//                    where dycol gathers dy at ((iy + pad - ky)/stride, ...) when the division
//                    is exact and in range (no scatter, no atomics); grid (ceil(n*h*w/64),
//                    ceil(cig/64), groups).
// - conv_bwd_weight: dW[g] (cog x K_w)   = dy[g] (cog x P) . col(x)^T (P x K_w), with the P
//                    axis split into `splits` chunks of `k_chunk` pixels (grid z = groups *
//                    splits) when the tiles alone would not fill the GPU; each split writes its
//                    own partial slab and the slabs are summed in split order afterwards
//                    (reduce_sum_cols), so results are bitwise reproducible.
// The im2col operands are never materialised: loaders compute (image, channel, y, x) from the
// GEMM indices and return 0 in the padding.
//
// Depthwise (cig == 1, c_out = c_in * mult): dw_conv_fwd one thread per output element,
// dw_conv_bwd_data one thread per input element (gathering its mult*kh*kw taps),
// dw_conv_bwd_weight one block of 256 per weight element (c_out*kh*kw blocks) reducing over
// n*h_out*w_out with block_sum. 1-D grid-stride for the first two.
//
// Work: 2*n*c_out*h_out*w_out*cig*kh*kw flops per pass. Bound on an H100: the implicit GEMMs
// are compute-bound once cog and K_w reach ~64 (the gather loads hit L1/L2; each x element is
// re-read kh*kw times from cache), latency-bound for CIFAR-sized layers; depthwise is memory-bound.
#include "tile_gemm.cuh"

// Sizes derived from ConvParams, computed once per thread.
struct ConvDims {
    int cig, cog, khw, howo, hw;
};

__device__ __forceinline__ ConvDims conv_dims(const ConvParams& p) {
    return ConvDims{p.c_in / p.groups, p.c_out / p.groups, p.kh * p.kw, p.h_out * p.w_out, p.h * p.w};
}

KERNEL void __launch_bounds__(256) conv_fwd(const float* __restrict__ x, const float* __restrict__ w,
                                            float* __restrict__ y, ConvParams p) {
    TILE_GEMM_SHARED(As, Bs);
    const ConvDims d = conv_dims(p);
    const int g = blockIdx.z, kw_len = d.cig * d.khw;
    const float* wg = w + (long long)g * d.cog * kw_len;
    const float* xg = x + (long long)g * d.cig * d.hw;
    tile_gemm(
        As, Bs, true, true, d.cog, p.n * d.howo, 0, kw_len, blockIdx.y * TG_M, blockIdx.x * TG_N,
        [&](int r, int k) { return wg[(long long)r * kw_len + k]; },
        [&](int k, int col) {
            const int cl = k / d.khw, t = k - cl * d.khw, ky = t / p.kw, kx = t - ky * p.kw;
            const int img = col / d.howo, q = col - img * d.howo, oy = q / p.w_out, ox = q - oy * p.w_out;
            const int iy = oy * p.stride_h + ky - p.pad_h, ix = ox * p.stride_w + kx - p.pad_w;
            if (iy < 0 || iy >= p.h || ix < 0 || ix >= p.w) return 0.0f;
            return xg[((long long)img * p.c_in + cl) * d.hw + iy * p.w + ix];
        },
        [&](int r, int col, float v) {
            const int img = col / d.howo, q = col - img * d.howo;
            y[((long long)img * p.c_out + g * d.cog + r) * d.howo + q] = v;
        });
}
EMU_EXPORT(conv_fwd)

KERNEL void __launch_bounds__(256) conv_bwd_data(const float* __restrict__ dy, const float* __restrict__ w,
                                                 float* __restrict__ dx, ConvParams p) {
    TILE_GEMM_SHARED(As, Bs);
    const ConvDims d = conv_dims(p);
    const int g = blockIdx.z;
    const float* wg = w + (long long)g * d.cog * d.cig * d.khw;
    const float* dyg = dy + (long long)g * d.cog * d.howo;
    tile_gemm(
        As, Bs, true, true, d.cig, p.n * d.hw, 0, d.cog * d.khw, blockIdx.y * TG_M, blockIdx.x * TG_N,
        // W^T: row = input channel cl, k = (output channel, tap).
        [&](int cl, int k) {
            const int co = k / d.khw, t = k - co * d.khw;
            return wg[((long long)co * d.cig + cl) * d.khw + t];
        },
        [&](int k, int col) {
            const int co = k / d.khw, t = k - co * d.khw, ky = t / p.kw, kx = t - ky * p.kw;
            const int img = col / d.hw, q = col - img * d.hw, iy = q / p.w, ix = q - iy * p.w;
            const int ty = iy + p.pad_h - ky, tx = ix + p.pad_w - kx;
            if (ty < 0 || tx < 0) return 0.0f;
            const int oy = ty / p.stride_h, ox = tx / p.stride_w;
            if (oy * p.stride_h != ty || ox * p.stride_w != tx || oy >= p.h_out || ox >= p.w_out) return 0.0f;
            return dyg[((long long)img * p.c_out + co) * d.howo + oy * p.w_out + ox];
        },
        [&](int cl, int col, float v) {
            const int img = col / d.hw, q = col - img * d.hw;
            dx[((long long)img * p.c_in + g * d.cig + cl) * d.hw + q] = v;
        });
}
EMU_EXPORT(conv_bwd_data)

// dw is the [c_out, cig*kh*kw] result when splits == 1, else a [splits, c_out, cig*kh*kw]
// slab of partial sums.
KERNEL void __launch_bounds__(256) conv_bwd_weight(const float* __restrict__ x, const float* __restrict__ dy,
                                                   float* __restrict__ dw, ConvParams p) {
    TILE_GEMM_SHARED(As, Bs);
    const ConvDims d = conv_dims(p);
    const int g = blockIdx.z % p.groups, split = blockIdx.z / p.groups;
    const int kw_len = d.cig * d.khw, pixels = p.n * d.howo;
    const int k_begin = split * p.k_chunk, k_end = min(pixels, k_begin + p.k_chunk);
    const float* dyg = dy + (long long)g * d.cog * d.howo;
    const float* xg = x + (long long)g * d.cig * d.hw;
    float* out = dw + (long long)split * p.c_out * kw_len + (long long)g * d.cog * kw_len;
    tile_gemm(
        As, Bs, true, false, d.cog, kw_len, k_begin, k_end, blockIdx.y * TG_M, blockIdx.x * TG_N,
        [&](int r, int pix) {
            const int img = pix / d.howo, q = pix - img * d.howo;
            return dyg[((long long)img * p.c_out + r) * d.howo + q];
        },
        [&](int pix, int col) {
            const int cl = col / d.khw, t = col - cl * d.khw, ky = t / p.kw, kx = t - ky * p.kw;
            const int img = pix / d.howo, q = pix - img * d.howo, oy = q / p.w_out, ox = q - oy * p.w_out;
            const int iy = oy * p.stride_h + ky - p.pad_h, ix = ox * p.stride_w + kx - p.pad_w;
            if (iy < 0 || iy >= p.h || ix < 0 || ix >= p.w) return 0.0f;
            return xg[((long long)img * p.c_in + cl) * d.hw + iy * p.w + ix];
        },
        [&](int r, int col, float v) { out[(long long)r * kw_len + col] = v; });
}
EMU_EXPORT(conv_bwd_weight)

// ---------------------------------------------------------------- depthwise (cig == 1)

KERNEL void __launch_bounds__(256) dw_conv_fwd(const float* __restrict__ x, const float* __restrict__ w,
                                               float* __restrict__ y, ConvParams p) {
    const ConvDims d = conv_dims(p);
    GRID_STRIDE(i, (long long)p.n * p.c_out * d.howo) {
        const long long plane = i / d.howo;  // img * c_out + co
        const int q = (int)(i - plane * d.howo), oy = q / p.w_out, ox = q - oy * p.w_out;
        const int co = (int)(plane % p.c_out), img = (int)(plane / p.c_out), ci = co / d.cog;
        const float* xp = x + ((long long)img * p.c_in + ci) * d.hw;
        const float* wp = w + (long long)co * d.khw;
        float acc = 0.0f;
        for (int ky = 0; ky < p.kh; ky++) {
            const int iy = oy * p.stride_h + ky - p.pad_h;
            if (iy < 0 || iy >= p.h) continue;
            for (int kx = 0; kx < p.kw; kx++) {
                const int ix = ox * p.stride_w + kx - p.pad_w;
                if (ix >= 0 && ix < p.w) acc = fmaf(xp[iy * p.w + ix], wp[ky * p.kw + kx], acc);
            }
        }
        y[i] = acc;
    }
}
EMU_EXPORT(dw_conv_fwd)

KERNEL void __launch_bounds__(256) dw_conv_bwd_data(const float* __restrict__ dy, const float* __restrict__ w,
                                                    float* __restrict__ dx, ConvParams p) {
    const ConvDims d = conv_dims(p);
    GRID_STRIDE(i, (long long)p.n * p.c_in * d.hw) {
        const long long plane = i / d.hw;  // img * c_in + ci
        const int q = (int)(i - plane * d.hw), iy = q / p.w, ix = q - iy * p.w;
        const int ci = (int)(plane % p.c_in), img = (int)(plane / p.c_in);
        // Outputs whose window covers (iy, ix): oy*stride_h = iy + pad_h - ky for a tap ky in
        // [0, kh), i.e. oy in [ceil((iy + pad_h - kh + 1)/stride_h), (iy + pad_h)/stride_h].
        const int ty = iy + p.pad_h, tx = ix + p.pad_w;
        const int oy0 = max(0, (ty - p.kh + p.stride_h) / p.stride_h), oy1 = min(p.h_out - 1, ty / p.stride_h);
        const int ox0 = max(0, (tx - p.kw + p.stride_w) / p.stride_w), ox1 = min(p.w_out - 1, tx / p.stride_w);
        float acc = 0.0f;
        for (int m = 0; m < d.cog; m++) {
            const int co = ci * d.cog + m;
            const float* dyp = dy + ((long long)img * p.c_out + co) * d.howo;
            const float* wp = w + (long long)co * d.khw;
            for (int oy = oy0; oy <= oy1; oy++) {
                const int ky = ty - oy * p.stride_h;
                for (int ox = ox0; ox <= ox1; ox++)
                    acc = fmaf(dyp[oy * p.w_out + ox], wp[ky * p.kw + tx - ox * p.stride_w], acc);
            }
        }
        dx[i] = acc;
    }
}
EMU_EXPORT(dw_conv_bwd_data)

KERNEL void __launch_bounds__(256) dw_conv_bwd_weight(const float* __restrict__ x, const float* __restrict__ dy,
                                                      float* __restrict__ dw, ConvParams p) {
    SHARED(float, scratch, 32);
    const ConvDims d = conv_dims(p);
    const int co = blockIdx.x / d.khw, t = blockIdx.x - co * d.khw, ky = t / p.kw, kx = t - ky * p.kw;
    const int ci = co / d.cog;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < p.n * d.howo; i += blockDim.x) {
        const int img = i / d.howo, q = i - img * d.howo, oy = q / p.w_out, ox = q - oy * p.w_out;
        const int iy = oy * p.stride_h + ky - p.pad_h, ix = ox * p.stride_w + kx - p.pad_w;
        if (iy >= 0 && iy < p.h && ix >= 0 && ix < p.w)
            acc = fmaf(dy[((long long)img * p.c_out + co) * d.howo + q],
                       x[((long long)img * p.c_in + ci) * d.hw + iy * p.w + ix], acc);
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) dw[blockIdx.x] = acc;
}
EMU_EXPORT(dw_conv_bwd_weight)
