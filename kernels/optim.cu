// Optimisation kernels: fused SGD and the finite-difference hypergradient steps.
//
// Fused SGD: one pass per element reads p, g, buf and writes p, buf (torch.optim.SGD with
// dampening 0: g += wd*p; buf = first ? g : momentum*buf + g; step = nesterov ? g + momentum*buf
// : buf; p -= lr*step; without momentum, step = g and buf is untouched).
//
// Launch geometry: 1-D, 256 threads, grid-stride over n. Each element is owned by one thread
// (no sharing). Bound: memory, 12 bytes read + 8 written per element, ~6 flops.
// fd_perturb: theta+ = theta + eps*v and theta- = theta - eps*v in one pass (8 bytes read, 8
// written per element); fd_combine: (g+ - g-)/(2 eps) (8 read, 4 written). Same geometry, same
// bound. eps*v is rounded before the add (no FMA), as the CPU backend computes it, so both
// backends agree bit for bit.
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

KERNEL void __launch_bounds__(256) fd_perturb(const float* __restrict__ theta, const float* __restrict__ v,
                                              float* __restrict__ plus, float* __restrict__ minus, FdParams p) {
    GRID_STRIDE(i, p.n) {
        const float t = theta[i], d = __fmul_rn(p.eps, v[i]);
        plus[i] = t + d;
        minus[i] = t - d;
    }
}
EMU_EXPORT(fd_perturb)

KERNEL void __launch_bounds__(256) fd_combine(const float* __restrict__ g_plus, const float* __restrict__ g_minus,
                                              float* __restrict__ y, FdParams p) {
    const float two_eps = p.eps + p.eps;
    GRID_STRIDE(i, p.n) y[i] = (g_plus[i] - g_minus[i]) / two_eps;
}
EMU_EXPORT(fd_combine)
