// Batched SGEMM, C[b] = op(A[b]) * op(B[b]) with op = transpose on request (NN, NT, TN, TT).
// A is stored [m, k] (or [k, m] when trans_a), B [k, n] (or [n, k] when trans_b), C [m, n],
// all row-major; batch strides of 0 broadcast one matrix over the batch.
//
// Launch geometry: 1-D blocks of 256 threads, each computing a 64 x 64 tile of C with the
// shared tiled core of tile_gemm.cuh; grid (ceil(n/64), ceil(m/64), batch). The four
// transpose combinations are four instantiations, so loads stay coalesced in each.
// Work: 2 m n k flops; traffic per tile 2*64*16*4 bytes per 2*64*64*16 flops (16 flop/byte from
// shared, ~16 flop/byte from L2): compute-bound on FP32 CUDA cores for m, n, k >= 256; the
// small GEMMs of this project (CIFAR widths) are latency-bound.
#include "tile_gemm.cuh"

template <bool TA, bool TB>
__device__ __forceinline__ void gemm_tile(float* As, float* Bs, const float* __restrict__ A, const float* __restrict__ B,
                                          float* __restrict__ C, const GemmParams& p) {
    // op(A) element (r, kk): A[r][kk], or A[kk][r] when transposed (then rows are contiguous).
    tile_gemm<!TA, !TB>(
        As, Bs, p.m, p.n, 0, p.k, blockIdx.y * TG_M, blockIdx.x * TG_N,
        [&](int r, int kk) { return TA ? A[(long long)kk * p.m + r] : A[(long long)r * p.k + kk]; },
        [&](int kk, int c) { return TB ? B[(long long)c * p.k + kk] : B[(long long)kk * p.n + c]; },
        [&](int r, int c, float v) { C[(long long)r * p.n + c] = v; });
}

KERNEL void __launch_bounds__(256) gemm(const float* __restrict__ a, const float* __restrict__ b,
                                        float* __restrict__ c, GemmParams p) {
    const float* A = a + (long long)blockIdx.z * p.stride_a;
    const float* B = b + (long long)blockIdx.z * p.stride_b;
    float* C = c + (long long)blockIdx.z * p.m * p.n;
    TILE_GEMM_SHARED(As, Bs);
    if (p.trans_a) {
        if (p.trans_b) gemm_tile<true, true>(As, Bs, A, B, C, p);
        else gemm_tile<true, false>(As, Bs, A, B, C, p);
    } else {
        if (p.trans_b) gemm_tile<false, true>(As, Bs, A, B, C, p);
        else gemm_tile<false, false>(As, Bs, A, B, C, p);
    }
}
EMU_EXPORT(gemm)
