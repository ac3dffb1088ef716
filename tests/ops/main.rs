//! Op tests: every op's forward against a naive f64 reference and every backward rule against
//! central finite differences in f64, on awkward sizes (odd channels, 1x1 and 7x7 maps,
//! batch 1). Each family file defines its test bodies as functions of a `Device` and a macro
//! listing them; the macros are instantiated once per backend below, so a new backend (CUDA,
//! the kernel emulator) gets the whole suite by adding one module.

mod common;
#[macro_use]
mod conv;
#[macro_use]
mod determinism;
#[macro_use]
mod elementwise;
#[macro_use]
mod hypergrad;
#[macro_use]
mod layout;
#[macro_use]
mod matmul;
#[macro_use]
mod norm;
#[macro_use]
mod pool;
#[macro_use]
mod quant;
#[macro_use]
mod reduce;

macro_rules! all_op_tests {
    ($dev:expr) => {
        conv_tests!($dev);
        determinism_tests!($dev);
        elementwise_tests!($dev);
        hypergrad_tests!($dev);
        layout_tests!($dev);
        matmul_tests!($dev);
        norm_tests!($dev);
        pool_tests!($dev);
        quant_tests!($dev);
        reduce_tests!($dev);
    };
}

mod cpu {
    all_op_tests!(kdscout::Device::Cpu);
}

/// The CUDA kernels, executed on the emulator (one fiber per CUDA thread; fresh device buffers
/// are NaN, so unwritten outputs fail): every family. Nothing falls back to the CPU.
#[cfg(feature = "cuda-emu")]
mod emu {
    all_op_tests!(kdscout::Device::CudaEmu);
}

/// The same families on a real GPU (`.ci/gpu-check.sh` on a machine that has one; the cfg
/// keeps them out of builds that cannot run them).
#[cfg(all(feature = "cuda", kdscout_gpu))]
mod gpu {
    all_op_tests!(kdscout::Device::parse("cuda").expect("a usable GPU"));
}
