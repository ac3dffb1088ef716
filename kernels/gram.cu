// Gram and cosine-similarity matrices of feature rows: F [batch, m, d] -> G [batch, m, m],
// G[b][i][j] = <F_i, F_j>, or with mode 1 (cosine) <F_i, F_j> / (max(|F_i|, eps) max(|F_j|, eps)):
// the row normalisation is fused into the GEMM epilogue (row_inv_norm computes the m inverse
// norms first, one pass over F), so the normalised rows are never written. SP's row-normalised
// Gram (l2norm_1(F F^T)) is gram followed by normalize_rows on G (reduce.cu).
//
// Launch geometry: row_inv_norm one block of 256 per row (grid.x = batch*m), block_sum of
// squares; gram on the tiled core of tile_gemm.cuh, 1-D blocks of 256, 64 x 64 tiles, grid
// (ceil(m/64), ceil(m/64), batch). Both operands are F (A = F, B = F^T), read k-contiguous.
// Work: 2 batch m^2 d flops (the symmetric half is computed twice); bytes 4 batch (m d + m^2).
// Bound on an H100: compute for m, d >= 256 (SP's batch Gram: m = batch size, d = C*H*W, so
// usually few tiles with a long k: latency/occupancy-bound), memory for row_inv_norm.
#include "tile_gemm.cuh"

KERNEL void __launch_bounds__(256) row_inv_norm(const float* __restrict__ f, float* __restrict__ inv, GramParams p) {
    SHARED(float, scratch, 32);
    const float* row = f + (long long)blockIdx.x * p.d;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < p.d; j += blockDim.x) ss = fmaf(row[j], row[j], ss);
    ss = block_sum(ss, scratch);
    if (threadIdx.x == 0) inv[blockIdx.x] = 1.0f / fmaxf(sqrtf(ss), p.eps);
}
EMU_EXPORT(row_inv_norm)

// inv: batch*m inverse row norms (read only when mode == 1).
KERNEL void __launch_bounds__(256) gram(const float* __restrict__ f, const float* __restrict__ inv,
                                        float* __restrict__ g, GramParams p) {
    TILE_GEMM_SHARED(As, Bs);
    const float* F = f + (long long)blockIdx.z * p.m * p.d;
    const float* I = inv + (long long)blockIdx.z * p.m;
    float* G = g + (long long)blockIdx.z * p.m * p.m;
    tile_gemm(
        As, Bs, true, false, p.m, p.m, 0, p.d, blockIdx.y * TG_M, blockIdx.x * TG_N,
        [&](int r, int k) { return F[(long long)r * p.d + k]; },
        [&](int k, int c) { return F[(long long)c * p.d + k]; },
        [&](int r, int c, float v) { G[(long long)r * p.m + c] = p.mode == 1 ? v * I[r] * I[c] : v; });
}
EMU_EXPORT(gram)
