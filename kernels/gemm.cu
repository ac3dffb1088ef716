// Batched SGEMM, C[b] = op(A[b]) * op(B[b]) with op = transpose on request (NN, NT, TN, TT).
// A is stored [m, k] (or [k, m] when trans_a), B [k, n] (or [n, k] when trans_b), C [m, n],
// all row-major; batch strides of 0 broadcast one matrix over the batch.
//
// Launch geometry: 1-D blocks of 256 threads, each computing a 64 x 64 tile of C with the
// shared tiled core of tile_gemm.cuh; grid (ceil(n/64), ceil(m/64), batch). The transpose
// flags pick the load pattern at run time, so loads stay coalesced in all four layouts.
// Work: 2 m n k flops; traffic per tile 2*64*16*4 bytes per 2*64*64*16 flops (16 flop/byte from
// shared, ~16 flop/byte from L2): compute-bound on FP32 CUDA cores for m, n, k >= 256; the
// small GEMMs of this project (CIFAR widths) are latency-bound.
#include "tile_gemm.cuh"

KERNEL void __launch_bounds__(256) gemm(const float* __restrict__ a, const float* __restrict__ b,
                                        float* __restrict__ c, GemmParams p) {
    TILE_GEMM_SHARED(As, Bs);
    const float* A = a + (long long)blockIdx.z * p.stride_a;
    const float* B = b + (long long)blockIdx.z * p.stride_b;
    float* C = c + (long long)blockIdx.z * p.m * p.n;
    // op(A) element (r, kk): A[r][kk], or A[kk][r] when transposed (then rows are contiguous).
    tile_gemm(
        As, Bs, !p.trans_a, !p.trans_b, p.m, p.n, 0, p.k, blockIdx.y * TG_M, blockIdx.x * TG_N,
        [&](int r, int kk) { return p.trans_a ? A[(long long)kk * p.m + r] : A[(long long)r * p.k + kk]; },
        [&](int kk, int cc) { return p.trans_b ? B[(long long)cc * p.k + kk] : B[(long long)kk * p.n + cc]; },
        [&](int r, int cc, float v) { C[(long long)r * p.n + cc] = v; });
}
EMU_EXPORT(gemm)
