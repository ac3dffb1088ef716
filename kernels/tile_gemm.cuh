// The shared-memory tiled GEMM core of gemm.cu, conv2d.cu and gram.cu: one block of 256 threads
// (1-D) computes a 64 x 64 tile of C = op(A) op(B) over a k range, where op(A) (m x k) and
// op(B) (k x n) are given by loader functors, so the same core serves plain matrices and
// implicit GEMMs (convolution operands gathered from NCHW tensors on the fly, with padding).
//
// Each k-step stages a 64 x 16 slice of op(A) and a 16 x 64 slice of op(B) in shared memory
// (4 elements a thread each; loaders are only called inside the matrix, everything else is
// zero, so no shape needs to be a multiple of the tile) and each thread accumulates a 4 x 4
// register tile at rows ty + 16 i, cols tx + 16 j (conflict-free shared reads: a warp reads 16
// consecutive B words and broadcasts A). Two barriers per k-step: after the stores, and before
// the next overwrite. Every thread of the block reaches every barrier.
// The kernel declares the two slices (TILE_GEMM_SHARED) and passes them in, so a kernel that
// instantiates the core several times still holds one pair of slices in shared memory.
//
// a_k_fast: consecutive threads load consecutive k of one row of op(A) (A stored k-contiguous),
// else consecutive rows; b_n_fast: consecutive threads load consecutive columns of op(B), else
// consecutive k. Pick whichever makes neighbouring threads read neighbouring words. They are
// runtime flags (constants fold where the caller passes literals) so that gemm's four
// transpose layouts share one instantiation and one register budget.
#pragma once
#include "common.cuh"

#define TG_M 64
#define TG_N 64
#define TG_K 16
#define TG_LD 68  // padded leading dimension of the shared slices

// As[kk][row] and Bs[kk][col], 8.5 KiB together.
#define TILE_GEMM_SHARED(As, Bs)      \
    SHARED(float, As, TG_K * TG_LD); \
    SHARED(float, Bs, TG_K * TG_LD)

template <class LoadA, class LoadB, class Store>
__device__ __forceinline__ void tile_gemm(float* As, float* Bs, bool a_k_fast, bool b_n_fast, int m, int n, int k_begin,
                                          int k_end, int row0, int col0, LoadA load_a, LoadB load_b, Store store) {
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (int k0 = k_begin; k0 < k_end; k0 += TG_K) {
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const int e = tid + l * 256;  // 0..1023 over the 64 x 16 slice
            int r, kk;
            if (a_k_fast) r = e / TG_K, kk = e % TG_K;
            else r = e % TG_M, kk = e / TG_M;
            const int gr = row0 + r, gk = k0 + kk;
            As[kk * TG_LD + r] = (gr < m && gk < k_end) ? load_a(gr, gk) : 0.0f;
            int c;
            if (b_n_fast) c = e % TG_N, kk = e / TG_N;
            else c = e / TG_K, kk = e % TG_K;
            const int gc = col0 + c, gk2 = k0 + kk;
            Bs[kk * TG_LD + c] = (gc < n && gk2 < k_end) ? load_b(gk2, gc) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TG_K; kk++) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) av[i] = As[kk * TG_LD + ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) bv[j] = Bs[kk * TG_LD + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = row0 + ty + 16 * i;
        if (r >= m) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int c = col0 + tx + 16 * j;
            if (c < n) store(r, c, acc[i][j]);
        }
    }
}
