// Data movement: permute (any rank up to 8) and slice copies (narrow, and concat as one copy
// per part into the output's slice).
//
// Launch geometry: 1-D grid-stride, 256 threads, one output element per thread iteration.
// permute reads are gathered (strided) and writes coalesced; copy_slices is coalesced on both
// sides along inner. Every output element is written exactly once per launch (concat: once per
// part, parts disjoint). Bound: memory.
#include "common.cuh"

KERNEL void __launch_bounds__(256) permute(const float* __restrict__ x, float* __restrict__ y, PermuteParams p) {
    GRID_STRIDE(o, p.n) {
        long long rem = o, src = 0;
#pragma unroll
        for (int d = KDS_MAX_RANK - 1; d >= 0; d--) {
            if (d < p.rank) {
                src += (rem % p.out_dims[d]) * p.src_strides[d];
                rem /= p.out_dims[d];
            }
        }
        y[o] = x[src];
    }
}
EMU_EXPORT(permute)

KERNEL void __launch_bounds__(256) copy_slices(const float* __restrict__ x, float* __restrict__ y, SliceParams p) {
    const long long run = (long long)p.len * p.inner;
    GRID_STRIDE(t, (long long)p.outer * run) {
        const long long o = t / run, r = t % run;
        y[(o * p.dst_len + p.dst_start) * p.inner + r] = x[(o * p.src_len + p.src_start) * p.inner + r];
    }
}
EMU_EXPORT(copy_slices)
