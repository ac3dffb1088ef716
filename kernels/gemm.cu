// Batched SGEMM, C[b] = op(A[b]) * op(B[b]) with op = transpose on request (NN, NT, TN, TT).
// A is stored [m, k] (or [k, m] when trans_a), B [k, n] (or [n, k] when trans_b), C [m, n],
// all row-major; batch strides of 0 broadcast one matrix over the batch.
//
// Launch geometry: block (16, 16) = 256 threads computes a 64 x 64 tile of C; grid
// (ceil(n/64), ceil(m/64), batch). Each k-step stages a 64 x 16 slice of op(A) and a 16 x 64
// slice of op(B) in shared memory (4 loads a thread each, zero-filled outside the matrix, so
// no shape needs to be a multiple of the tile) and each thread accumulates a 4 x 4 register
// tile at rows ty + 16 i, cols tx + 16 j (conflict-free shared reads: a warp reads 16
// consecutive B words and broadcasts A). Two barriers per k-step: after the stores, and
// before the next overwrite.
// Work: 2 m n k flops; traffic per tile 2*64*16*4 bytes per 2*64*64*16 flops (16 flop/byte from
// shared, ~16 flop/byte from L2): compute-bound on FP32 CUDA cores for m, n, k >= 256; the
// small GEMMs of this project (CIFAR widths) are latency-bound.
#include "common.cuh"

#define TM 64
#define TN 64
#define TK 16

KERNEL void __launch_bounds__(256) gemm(const float* __restrict__ a, const float* __restrict__ b,
                                        float* __restrict__ c, GemmParams p) {
    SHARED(float, As, TK * (TM + 4));  // As[kk][row]
    SHARED(float, Bs, TK * (TN + 4));  // Bs[kk][col]
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    const int row0 = blockIdx.y * TM, col0 = blockIdx.x * TN;
    const float* A = a + (long long)blockIdx.z * p.stride_a;
    const float* B = b + (long long)blockIdx.z * p.stride_b;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < p.k; k0 += TK) {
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const int e = tid + l * 256;  // 0..1023 over the 64 x 16 slice
            // op(A) slice: element (r, kk). Non-transposed A reads along k (kk fastest),
            // transposed A along m (r fastest), so consecutive threads read consecutive words.
            int r, kk;
            if (p.trans_a) r = e % TM, kk = e / TM;
            else r = e / TK, kk = e % TK;
            const int gr = row0 + r, gk = k0 + kk;
            float v = 0.0f;
            if (gr < p.m && gk < p.k) v = p.trans_a ? A[(long long)gk * p.m + gr] : A[(long long)gr * p.k + gk];
            As[kk * (TM + 4) + r] = v;
            // op(B) slice: element (kk, cc).
            int cc;
            if (p.trans_b) cc = e / TK, kk = e % TK;
            else cc = e % TN, kk = e / TN;
            const int gc = col0 + cc;
            const int gk2 = k0 + kk;
            float w = 0.0f;
            if (gc < p.n && gk2 < p.k) w = p.trans_b ? B[(long long)gc * p.k + gk2] : B[(long long)gk2 * p.n + gc];
            Bs[kk * (TN + 4) + cc] = w;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; kk++) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) av[i] = As[kk * (TM + 4) + ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) bv[j] = Bs[kk * (TN + 4) + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
    float* C = c + (long long)blockIdx.z * p.m * p.n;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = row0 + ty + 16 * i;
        if (r >= p.m) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int cc = col0 + tx + 16 * j;
            if (cc < p.n) C[(long long)r * p.n + cc] = acc[i][j];
        }
    }
}
EMU_EXPORT(gemm)
