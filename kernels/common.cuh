// The kernel dialect shared by every .cu file. Under nvcc it is plain CUDA; compiled as host
// C++ (feature `cuda-emu`) the same sources run on the fiber emulator in emu/cuda_emu.h.
//
// Conventions (checked by the ABI test in tests/cuda_abi.rs):
// - every kernel is `KERNEL void name(ptr..., XxxParams p)`: device pointers first (float* or
//   const float*), then exactly one parameter struct from params.cuh, mirrored in Rust;
// - `EMU_EXPORT(name)` after each kernel gives the emulator its C entry point;
// - shared memory is declared with SHARED(type, name, count) so the emulator can give each block
//   a fresh, NaN-poisoned arena (and ThreadSanitizer sees per-block memory).
#pragma once

#ifdef __CUDACC__
#define KERNEL extern "C" __global__
#define SHARED(T, name, count) __shared__ T name[count]
#define EMU_EXPORT(name)
#define EMU_EXPORT_TSAN_ONLY(name)
#else
#include "emu/cuda_emu.h"
#define KERNEL static
#define SHARED(T, name, count) T* name = ::kds_emu::shared_alloc<T>(count)
#endif

#include "params.cuh"

#define FULL_MASK 0xffffffffu

// Sum over the 32 lanes of a warp; every lane gets the total.
// ReLU as PyTorch computes it: NaN stays NaN (fmaxf would turn it into 0 and hide it), matching
// the CPU backend's `elementwise::relu`.
__device__ __forceinline__ float relu_f(float x) { return x < 0.0f ? 0.0f : x; }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024; 1-D blocks). `scratch`
// holds 32 floats of shared memory. Every thread gets the total. Ends with a barrier so the
// scratch can be reused right away.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0f;
    v = warp_sum(v);
    __syncthreads();
    return v;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -INFINITY;
    v = warp_max(v);
    __syncthreads();
    return v;
}

// Grid-stride loop over [0, n).
#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); i += (long long)blockDim.x * gridDim.x)
