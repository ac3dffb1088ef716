// Fused SGD: one pass per element reads p, g, buf and writes p, buf (torch.optim.SGD with
// dampening 0: g += wd*p; buf = first ? g : momentum*buf + g; step = nesterov ? g + momentum*buf
// : buf; p -= lr*step; without momentum, step = g and buf is untouched).
//
// Launch geometry: 1-D, 256 threads, grid-stride over n. Each element is owned by one thread
// (no sharing). Bound: memory, 12 bytes read + 8 written per element, ~6 flops.
#include "common.cuh"

KERNEL void __launch_bounds__(256) sgd_step(float* __restrict__ param, const float* __restrict__ grad,
                                            float* __restrict__ buf, SgdParams p) {
    GRID_STRIDE(i, p.n) {
        float g = grad[i] + p.weight_decay * param[i];
        float step = g;
        if (p.momentum != 0.0f) {
            float m = p.first_step ? g : p.momentum * buf[i] + g;
            buf[i] = m;
            step = p.nesterov ? g + p.momentum * m : m;
        }
        param[i] -= p.lr * step;
    }
}
EMU_EXPORT(sgd_step)
