// Fake quantisation, asymmetric min/max per channel of x viewed as [channels, len] (per-tensor:
// channels = 1), PyTorch's formulas in f32 with round half to even (rintf):
//   range [min(x, 0), max(x, 0)], scale = max(range/qmax, FLT_EPSILON = 2^-23),
//   zp = clamp(-rint(min/scale), 0, qmax), level = rint(x * (1/scale)) + zp,
//   y = (clamp(level, 0, qmax) - zp) * scale; backward (straight-through): dx = dy where
//   0 <= level <= qmax, else 0.
// The operations and their order are those of src/backend/cpu/quant.rs (no contraction is
// possible: a rounding separates every product from the following add), so CPU and CUDA agree
// bit for bit.
//
// Launch geometry: quant_range one block of 256 per channel (grid.x = channels), block min/max
// through warp shuffles; fake_quant_fwd / fake_quant_bwd 1-D grid-stride over all elements.
// Bound: memory (x is read twice forward; 8-12 bytes per element).
#include "common.cuh"

KERNEL void __launch_bounds__(256) quant_range(const float* __restrict__ x, float* __restrict__ scale,
                                               float* __restrict__ zero_point, QuantParams p) {
    SHARED(float, scratch, 32);
    const float* xc = x + (long long)blockIdx.x * p.len;
    float lo = 0.0f, hi = 0.0f;
    for (int j = threadIdx.x; j < p.len; j += blockDim.x) lo = fminf(lo, xc[j]), hi = fmaxf(hi, xc[j]);
    lo = -block_max(-lo, scratch);
    hi = block_max(hi, scratch);
    if (threadIdx.x == 0) {
        const float s = fmaxf((hi - lo) / p.qmax, 1.1920929e-7f);  // FLT_EPSILON
        scale[blockIdx.x] = s;
        zero_point[blockIdx.x] = fminf(fmaxf(-rintf(lo / s), 0.0f), p.qmax);
    }
}
EMU_EXPORT(quant_range)

KERNEL void __launch_bounds__(256) fake_quant_fwd(const float* __restrict__ x, const float* __restrict__ scale,
                                                  const float* __restrict__ zero_point, float* __restrict__ y,
                                                  QuantParams p) {
    GRID_STRIDE(i, (long long)p.channels * p.len) {
        const int c = (int)(i / p.len);
        const float s = scale[c], zp = zero_point[c];
        const float level = rintf(x[i] * (1.0f / s)) + zp;
        y[i] = (fminf(fmaxf(level, 0.0f), p.qmax) - zp) * s;
    }
}
EMU_EXPORT(fake_quant_fwd)

KERNEL void __launch_bounds__(256) fake_quant_bwd(const float* __restrict__ x, const float* __restrict__ dy,
                                                  const float* __restrict__ scale, const float* __restrict__ zero_point,
                                                  float* __restrict__ dx, QuantParams p) {
    GRID_STRIDE(i, (long long)p.channels * p.len) {
        const int c = (int)(i / p.len);
        const float level = rintf(x[i] * (1.0f / scale[c])) + zero_point[c];
        dx[i] = (level >= 0.0f && level <= p.qmax) ? dy[i] : 0.0f;
    }
}
EMU_EXPORT(fake_quant_bwd)
