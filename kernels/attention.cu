// Attention maps and attention scores.
//
// at_map (AT, p = 2): x [n, c, hw] -> a [n, hw], a = l2norm(mean_c x^2) per sample, i.e.
// F.normalize(x.pow(2).mean(1).view(n, -1), dim=1, eps). One block of 256 per sample
// (grid.x = n): each thread owns the spatial positions j = tid + 256 k, writes mean_c x^2 there
// and accumulates its squares; after block_sum it rescales only the positions it wrote itself,
// so the second pass needs no barrier. Params: NormParams (n, c, hw, eps; momentum unused).
// Work: 2 n c hw flops, 4 n c hw bytes read: memory-bound on an H100.
//
// attn_softmax (ViT): s[b, i, :] = softmax_j(scale * <q[b, i], k[b, j]>) for q [bh, tq, d],
// k [bh, tk, d] (heads folded into bh). One block of 256 per query row (grid.x = bh*tq): each
// thread computes the scores of keys j = tid + 256 k, writes them, takes the block max, then
// exp and the block sum, and divides; every element is only ever touched by the thread that
// wrote it. Work: 2 bh tq tk d flops; reads tk d floats per row (from L2 across rows of a head):
// compute-light, L2-bound for ViT sizes (t = 65, d = 64).
#include "common.cuh"

KERNEL void __launch_bounds__(256) at_map(const float* __restrict__ x, float* __restrict__ a, NormParams p) {
    SHARED(float, scratch, 32);
    const float* xs = x + (long long)blockIdx.x * p.c * p.hw;
    float* as = a + (long long)blockIdx.x * p.hw;
    const float inv_c = 1.0f / (float)p.c;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < p.hw; j += blockDim.x) {
        float m = 0.0f;
        for (int ch = 0; ch < p.c; ch++) {
            const float v = xs[(long long)ch * p.hw + j];
            m = fmaf(v, v, m);
        }
        m *= inv_c;
        as[j] = m;
        ss = fmaf(m, m, ss);
    }
    const float inv = 1.0f / fmaxf(sqrtf(block_sum(ss, scratch)), p.eps);
    for (int j = threadIdx.x; j < p.hw; j += blockDim.x) as[j] *= inv;
}
EMU_EXPORT(at_map)

KERNEL void __launch_bounds__(256) attn_softmax(const float* __restrict__ q, const float* __restrict__ k,
                                                float* __restrict__ s, AttnParams p) {
    SHARED(float, scratch, 32);
    const int head = blockIdx.x / p.tq;
    const float* qi = q + (long long)blockIdx.x * p.d;
    const float* kh = k + (long long)head * p.tk * p.d;
    float* si = s + (long long)blockIdx.x * p.tk;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < p.tk; j += blockDim.x) {
        const float* kj = kh + (long long)j * p.d;
        float dot = 0.0f;
        for (int e = 0; e < p.d; e++) dot = fmaf(qi[e], kj[e], dot);
        dot *= p.scale;
        si[j] = dot;
        mx = fmaxf(mx, dot);
    }
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < p.tk; j += blockDim.x) {
        const float e = expf(si[j] - mx);
        si[j] = e;
        sum += e;
    }
    const float inv = 1.0f / block_sum(sum, scratch);
    for (int j = threadIdx.x; j < p.tk; j += blockDim.x) si[j] *= inv;
}
EMU_EXPORT(attn_softmax)
