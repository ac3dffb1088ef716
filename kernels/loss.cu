// Fused losses: mean cross-entropy of logits [rows, classes] against integer labels (stored as
// floats, exact below 2^24) and KL(p || q) with q as log-probabilities, `batchmean`.
//
// Launch geometry:
// - ce_fwd: ONE block of 256 threads; warp w handles rows w, w+8, ...: the row's log-sum-exp
//   from a warp max and a warp sum, minus the label's logit; lane 0 accumulates its rows; the
//   block sum divided by rows is written by thread 0. One block keeps the order of the sum
//   fixed (bitwise reproducible) with no second launch; fine for the batch sizes of training
//   (a few thousand rows: latency-bound either way).
// - ce_bwd: one block of 256 threads per row: softmax of the row minus the one-hot label, times
//   dloss/rows (dloss read from device memory, so no host round trip).
// - kl_fwd: ONE block of 1024 threads, grid-stride over n, block sum, times 1/rows.
// - kl_bwd: 1-D grid-stride, both gradients in one pass.
// Invariant: labels are in [0, classes) (checked on the host before upload).
#include "common.cuh"

KERNEL void __launch_bounds__(256) ce_fwd(const float* __restrict__ logits, const float* __restrict__ labels,
                                          float* __restrict__ loss, LossParams p) {
    SHARED(float, scratch, 32);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    float acc = 0.0f;
    for (int r = warp; r < p.rows; r += nwarps) {
        const float* row = logits + (long long)r * p.classes;
        float m = -INFINITY;
        for (int c = lane; c < p.classes; c += 32) m = fmaxf(m, row[c]);
        m = warp_max(m);
        float s = 0.0f;
        for (int c = lane; c < p.classes; c += 32) s += expf(row[c] - m);
        s = warp_sum(s);
        if (lane == 0) acc += (m + logf(s)) - row[(int)labels[r]];
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) loss[0] = acc * p.inv_rows;
}
EMU_EXPORT(ce_fwd)

KERNEL void __launch_bounds__(256) ce_bwd(const float* __restrict__ logits, const float* __restrict__ labels,
                                          const float* __restrict__ dloss, float* __restrict__ dlogits, LossParams p) {
    SHARED(float, scratch, 32);
    const long long base = (long long)blockIdx.x * p.classes;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < p.classes; c += blockDim.x) m = fmaxf(m, logits[base + c]);
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int c = threadIdx.x; c < p.classes; c += blockDim.x) s += expf(logits[base + c] - m);
    s = block_sum(s, scratch);
    const float inv = 1.0f / s, scale = dloss[0] * p.inv_rows;
    const int label = (int)labels[blockIdx.x];
    for (int c = threadIdx.x; c < p.classes; c += blockDim.x) {
        float d = expf(logits[base + c] - m) * inv - (c == label ? 1.0f : 0.0f);
        dlogits[base + c] = d * scale;
    }
}
EMU_EXPORT(ce_bwd)

// sum p*(log p - log q) / rows with 0*log 0 = 0.
KERNEL void __launch_bounds__(1024) kl_fwd(const float* __restrict__ log_q, const float* __restrict__ prob,
                                           float* __restrict__ loss, LossParams p) {
    SHARED(float, scratch, 32);
    float acc = 0.0f;
    for (int i = threadIdx.x; i < p.n; i += blockDim.x) {
        const float v = prob[i];
        if (v > 0.0f) acc += v * (logf(v) - log_q[i]);
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) loss[0] = acc * p.inv_rows;
}
EMU_EXPORT(kl_fwd)

KERNEL void __launch_bounds__(256) kl_bwd(const float* __restrict__ log_q, const float* __restrict__ prob,
                                          const float* __restrict__ dloss, float* __restrict__ dq, float* __restrict__ dp,
                                          LossParams p) {
    const float s = dloss[0] * p.inv_rows;
    GRID_STRIDE(i, p.n) {
        const float v = prob[i];
        dq[i] = -v * s;
        dp[i] = v > 0.0f ? (logf(v) + 1.0f - log_q[i]) * s : 0.0f;
    }
}
EMU_EXPORT(kl_bwd)
