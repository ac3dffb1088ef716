#!/usr/bin/env bash
# On a machine WITH an NVIDIA GPU and driver: build the kernels with nvcc, print the resource
# report, run the shared op tests on the GPU (parity with the f64 references the CPU backend
# is held to), then the emulator and ABI checks. Usage: .ci/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
cargo build --release --features cuda
cat docs/kernel-resources.md | head -5
RUSTFLAGS="${RUSTFLAGS:-} --cfg kdscout_gpu" cargo test --features cuda --test ops -- gpu::
cargo test --features cuda,cuda-emu --test cuda_abi --test device
# Kernel benchmarks on the GPU are not written yet (docs/KERNELS.md, "Not done").
