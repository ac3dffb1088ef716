// Pooling and resampling over x [n, c, h, w] -> [n, c, h_out, w_out], with PyTorch's
// conventions (floor mode; max pooling keeps the first maximum in row-major order, NaN wins;
// average pooling with or without count_include_pad; adaptive bins
// [floor(i*in/out), ceil((i+1)*in/out)); nearest src = min(floor(dst*scale), in-1) and
// bilinear align_corners=False src = max(scale*(dst+0.5)-0.5, 0), scale = in/out in f32 as
// PyTorch and the CPU backend compute it, so index decisions match bit for bit).
//
// Launch geometry: 1-D grid-stride, 256 threads, one thread per output element forward and one
// thread per INPUT element backward. Backward kernels gather (each input walks the outputs
// whose window, bin or taps cover it, in increasing output order) instead of scattering with
// atomics: no races, and results are bitwise reproducible. Max-pool backward re-finds each
// candidate window's argmax from x (kh*kw reads per window) rather than storing indices.
// Work: kh*kw loads per output (pool), ~1 load per input and output (adaptive), 1-4 loads per
// output (interpolation). Bound on an H100: memory (window re-reads hit L1).
#include "common.cuh"

// ---------------------------------------------------------------- window pooling

enum PoolCode { P_MAX = 0, P_AVG_INCLUDE_PAD = 1, P_AVG_EXCLUDE_PAD = 2 };

// One window along one axis: clipped [start, end) and, for count_include_pad, the extent
// clipped only to the padded input.
struct Span {
    int start, end, padded;
};

__device__ __forceinline__ Span pool_span(int o, int stride, int pad, int k, int in) {
    const int s = o * stride - pad;
    return Span{max(s, 0), max(min(s + k, in), max(s, 0)), max(min(s + k, in + pad) - s, 0)};
}

// Flat index (in the plane) of the first maximum of the window, NaN winning; -1 if empty.
__device__ __forceinline__ int window_argmax(const float* xp, int w, Span sh, Span sw) {
    int best = -1;
    float bv = 0.0f;
    for (int r = sh.start; r < sh.end; r++)
        for (int c = sw.start; c < sw.end; c++) {
            const float v = xp[r * w + c];
            if (best < 0 || v > bv || (v != v && bv == bv)) best = r * w + c, bv = v;
        }
    return best;
}

__device__ __forceinline__ int avg_divisor(int kind, Span sh, Span sw) {
    return kind == P_AVG_INCLUDE_PAD ? sh.padded * sw.padded : (sh.end - sh.start) * (sw.end - sw.start);
}

KERNEL void __launch_bounds__(256) pool_fwd(const float* __restrict__ x, float* __restrict__ y, PoolParams p) {
    const int plane_out = p.h_out * p.w_out;
    GRID_STRIDE(i, (long long)p.n * p.c * plane_out) {
        const long long plane = i / plane_out;
        const int q = (int)(i - plane * plane_out), oh = q / p.w_out, ow = q - oh * p.w_out;
        const float* xp = x + plane * p.h * p.w;
        const Span sh = pool_span(oh, p.stride_h, p.pad_h, p.kh, p.h);
        const Span sw = pool_span(ow, p.stride_w, p.pad_w, p.kw, p.w);
        float out;
        if (p.kind == P_MAX) {
            const int a = window_argmax(xp, p.w, sh, sw);
            out = a >= 0 ? xp[a] : -INFINITY;
        } else {
            float s = 0.0f;
            for (int r = sh.start; r < sh.end; r++)
                for (int c = sw.start; c < sw.end; c++) s += xp[r * p.w + c];
            const int div = avg_divisor(p.kind, sh, sw);
            out = div == 0 ? 0.0f : s / (float)div;
        }
        y[i] = out;
    }
}
EMU_EXPORT(pool_fwd)

// Outputs o along an axis whose window covers input index i: o*stride - pad <= i < o*stride -
// pad + k, i.e. o in [ceil((i + pad - k + 1)/stride), (i + pad)/stride] within [0, out).
__device__ __forceinline__ void covering(int i, int stride, int pad, int k, int out, int& lo, int& hi) {
    const int t = i + pad;
    lo = max(0, (t - k + stride) / stride);
    hi = min(out - 1, t / stride);
}

KERNEL void __launch_bounds__(256) pool_bwd(const float* __restrict__ x, const float* __restrict__ dy,
                                            float* __restrict__ dx, PoolParams p) {
    const int plane_in = p.h * p.w, plane_out = p.h_out * p.w_out;
    GRID_STRIDE(i, (long long)p.n * p.c * plane_in) {
        const long long plane = i / plane_in;
        const int q = (int)(i - plane * plane_in), iy = q / p.w, ix = q - iy * p.w;
        const float* xp = x + plane * plane_in;
        const float* dyp = dy + plane * plane_out;
        int oh0, oh1, ow0, ow1;
        covering(iy, p.stride_h, p.pad_h, p.kh, p.h_out, oh0, oh1);
        covering(ix, p.stride_w, p.pad_w, p.kw, p.w_out, ow0, ow1);
        float acc = 0.0f;
        if (p.kind == P_MAX) {
            for (int oh = oh0; oh <= oh1; oh++) {
                const Span sh = pool_span(oh, p.stride_h, p.pad_h, p.kh, p.h);
                for (int ow = ow0; ow <= ow1; ow++)
                    if (window_argmax(xp, p.w, sh, pool_span(ow, p.stride_w, p.pad_w, p.kw, p.w)) == q)
                        acc += dyp[oh * p.w_out + ow];
            }
        } else {
            for (int oh = oh0; oh <= oh1; oh++) {
                const Span sh = pool_span(oh, p.stride_h, p.pad_h, p.kh, p.h);
                for (int ow = ow0; ow <= ow1; ow++) {
                    const int div = avg_divisor(p.kind, sh, pool_span(ow, p.stride_w, p.pad_w, p.kw, p.w));
                    if (div > 0) acc += dyp[oh * p.w_out + ow] / (float)div;
                }
            }
        }
        dx[i] = acc;
    }
}
EMU_EXPORT(pool_bwd)

// ---------------------------------------------------------------- adaptive average pooling

__device__ __forceinline__ int bin_start(int o, int in, int out) { return (int)((long long)o * in / out); }
__device__ __forceinline__ int bin_end(int o, int in, int out) {
    return (int)(((long long)(o + 1) * in + out - 1) / out);
}

KERNEL void __launch_bounds__(256) adaptive_avg_fwd(const float* __restrict__ x, float* __restrict__ y,
                                                    ResizeParams p) {
    const int plane_out = p.h_out * p.w_out;
    GRID_STRIDE(i, (long long)p.n * p.c * plane_out) {
        const long long plane = i / plane_out;
        const int q = (int)(i - plane * plane_out), oh = q / p.w_out, ow = q - oh * p.w_out;
        const float* xp = x + plane * p.h * p.w;
        const int h0 = bin_start(oh, p.h, p.h_out), h1 = bin_end(oh, p.h, p.h_out);
        const int w0 = bin_start(ow, p.w, p.w_out), w1 = bin_end(ow, p.w, p.w_out);
        float s = 0.0f;
        for (int r = h0; r < h1; r++)
            for (int c = w0; c < w1; c++) s += xp[r * p.w + c];
        y[i] = s / (float)((h1 - h0) * (w1 - w0));
    }
}
EMU_EXPORT(adaptive_avg_fwd)

// Bin o covers input i iff start(o) <= i < end(o); the first such o is floor(i*out/in).
KERNEL void __launch_bounds__(256) adaptive_avg_bwd(const float* __restrict__ dy, float* __restrict__ dx,
                                                    ResizeParams p) {
    const int plane_in = p.h * p.w, plane_out = p.h_out * p.w_out;
    GRID_STRIDE(i, (long long)p.n * p.c * plane_in) {
        const long long plane = i / plane_in;
        const int q = (int)(i - plane * plane_in), iy = q / p.w, ix = q - iy * p.w;
        const float* dyp = dy + plane * plane_out;
        float acc = 0.0f;
        for (int oh = bin_start(iy, p.h_out, p.h); oh < p.h_out && bin_start(oh, p.h, p.h_out) <= iy; oh++) {
            const int h0 = bin_start(oh, p.h, p.h_out), h1 = bin_end(oh, p.h, p.h_out);
            if (h1 <= iy) continue;
            for (int ow = bin_start(ix, p.w_out, p.w); ow < p.w_out && bin_start(ow, p.w, p.w_out) <= ix; ow++) {
                const int w0 = bin_start(ow, p.w, p.w_out), w1 = bin_end(ow, p.w, p.w_out);
                if (w1 <= ix) continue;
                acc += dyp[oh * p.w_out + ow] / (float)((h1 - h0) * (w1 - w0));
            }
        }
        dx[i] = acc;
    }
}
EMU_EXPORT(adaptive_avg_bwd)

// ---------------------------------------------------------------- interpolation

enum InterpCode { I_NEAREST = 0, I_BILINEAR = 1 };

// Source taps of output coordinate d along an axis: indices i0 <= i1 and their weights.
struct Taps {
    int i0, i1;
    float w0, w1;
};

__device__ __forceinline__ Taps interp_taps(int mode, int d, int in, float scale) {
    if (mode == I_NEAREST) {
        const int i = min((int)floorf(__fmul_rn((float)d, scale)), in - 1);
        return Taps{i, i, 1.0f, 0.0f};
    }
    const float src = fmaxf(__fadd_rn(__fmul_rn(scale, (float)d + 0.5f), -0.5f), 0.0f);
    const int i0 = min((int)floorf(src), in - 1);
    const float lambda = fminf(fmaxf(src - (float)i0, 0.0f), 1.0f);
    return Taps{i0, i0 + 1 < in ? i0 + 1 : i0, 1.0f - lambda, lambda};
}

// Weight of input index i in the taps t (both taps when they coincide at the border).
__device__ __forceinline__ float tap_weight(Taps t, int i) {
    return (t.i0 == i ? t.w0 : 0.0f) + (t.i1 == i ? t.w1 : 0.0f);
}

// First output coordinate whose taps can reach input index i (taps are monotone in d and
// i0(d) >= i - 1 needs d >= (i - 1)/scale - 0.5; one more for f32 rounding).
__device__ __forceinline__ int first_tap_output(int i, float scale) {
    return max(0, (int)floorf((float)(i - 1) / scale - 0.5f) - 1);
}

KERNEL void __launch_bounds__(256) interp_fwd(const float* __restrict__ x, float* __restrict__ y, ResizeParams p) {
    const int plane_out = p.h_out * p.w_out;
    const float sh = (float)p.h / (float)p.h_out, sw = (float)p.w / (float)p.w_out;
    GRID_STRIDE(i, (long long)p.n * p.c * plane_out) {
        const long long plane = i / plane_out;
        const int q = (int)(i - plane * plane_out), oh = q / p.w_out, ow = q - oh * p.w_out;
        const float* xp = x + plane * p.h * p.w;
        const Taps th = interp_taps(p.mode, oh, p.h, sh), tw = interp_taps(p.mode, ow, p.w, sw);
        const float* r0 = xp + th.i0 * p.w;
        if (p.mode == I_NEAREST) {
            y[i] = r0[tw.i0];
        } else {
            const float* r1 = xp + th.i1 * p.w;
            const float top = tw.w0 * r0[tw.i0] + tw.w1 * r0[tw.i1];
            const float bot = tw.w0 * r1[tw.i0] + tw.w1 * r1[tw.i1];
            y[i] = th.w0 * top + th.w1 * bot;
        }
    }
}
EMU_EXPORT(interp_fwd)

KERNEL void __launch_bounds__(256) interp_bwd(const float* __restrict__ dy, float* __restrict__ dx, ResizeParams p) {
    const int plane_in = p.h * p.w, plane_out = p.h_out * p.w_out;
    const float sh = (float)p.h / (float)p.h_out, sw = (float)p.w / (float)p.w_out;
    GRID_STRIDE(i, (long long)p.n * p.c * plane_in) {
        const long long plane = i / plane_in;
        const int q = (int)(i - plane * plane_in), iy = q / p.w, ix = q - iy * p.w;
        const float* dyp = dy + plane * plane_out;
        float acc = 0.0f;
        for (int oh = first_tap_output(iy, sh); oh < p.h_out; oh++) {
            const Taps th = interp_taps(p.mode, oh, p.h, sh);
            if (th.i0 > iy) break;
            const float wh = tap_weight(th, iy);
            if (wh == 0.0f) continue;
            for (int ow = first_tap_output(ix, sw); ow < p.w_out; ow++) {
                const Taps tw = interp_taps(p.mode, ow, p.w, sw);
                if (tw.i0 > ix) break;
                const float ww = tap_weight(tw, ix);
                if (ww != 0.0f) acc += wh * (ww * dyp[oh * p.w_out + ow]);
            }
        }
        dx[i] = acc;
    }
}
EMU_EXPORT(interp_bwd)
