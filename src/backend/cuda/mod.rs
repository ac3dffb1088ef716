//! The CUDA kernels of `kernels/*.cu` as a `Backend`, on two devices that share everything but
//! memory and the launch call:
//!
//! - `Device::Cuda(ordinal)` (feature `cuda`): cudarc, driver loaded at run time, kernels from
//!   the PTX/cubins build.rs embeds ([`driver`]);
//! - `Device::CudaEmu` (feature `cuda-emu`): the same sources compiled as host C++ and run on
//!   the fiber emulator, one fiber per CUDA thread ([`emu`]). This is how every kernel is
//!   executed and tested on machines without a GPU.
//!
//! [`ops::GpuBackend`] implements the op set once for any [`Gpu`]: it checks sizes, fills the
//! `#[repr(C)]` parameter structs ([`params`]), picks launch shapes and calls the typed launch
//! wrappers ([`kernels`]). Every op has its kernels; nothing falls back to the CPU.

pub mod kernels;
pub mod ops;
pub mod params;

#[cfg(feature = "cuda")]
pub mod driver;
#[cfg(feature = "cuda-emu")]
pub mod emu;

use std::ffi::c_void;

use super::{Device, Storage};
use crate::error::Result;
pub use kernels::KernelSig;
pub use ops::GpuBackend;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
}

impl LaunchCfg {
    /// `blocks` 1-D blocks of `threads` threads.
    pub fn blocks(blocks: usize, threads: u32) -> LaunchCfg {
        LaunchCfg { grid: [blocks as u32, 1, 1], block: [threads, 1, 1], smem: 0 }
    }
    /// A grid-stride launch over n elements: 256 threads a block, at most 8192 blocks.
    pub fn linear(n: usize) -> LaunchCfg {
        LaunchCfg::blocks(n.div_ceil(256).clamp(1, 8192), 256)
    }
}

/// A device that runs the kernels: memory plus a raw launch. Implemented by the CUDA driver
/// and by the emulator; everything above it is shared.
pub trait Gpu: Send + Sync + 'static {
    fn device(&self) -> Device;
    fn name(&self) -> &'static str;
    /// Fresh storage of `len` floats with unspecified contents (the emulator fills it with NaN
    /// so that elements a kernel fails to write show up in tests).
    fn alloc(&self, len: usize) -> Result<Storage>;
    fn upload(&self, data: &[f32]) -> Result<Storage>;
    fn download(&self, s: &Storage) -> Result<Vec<f32>>;
    /// Device address of a storage of this device (an error for any other device).
    fn ptr(&self, s: &Storage) -> Result<u64>;
    fn ptr_mut(&self, s: &mut Storage) -> Result<u64>;
    /// Launch `k` with `args` (one pointer per parameter, as `cuLaunchKernel` takes them).
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and type, and every device
    /// pointer must cover what the kernel reads and writes under `cfg`.
    unsafe fn launch(&self, k: &KernelSig, cfg: LaunchCfg, args: &mut [*mut c_void]) -> Result<()>;
    /// Wait until every launch and copy issued so far has finished (launches are asynchronous
    /// on a GPU; the emulator runs each launch to completion, so there it returns at once).
    /// Benchmarks call it before reading the clock.
    fn synchronize(&self) -> Result<()>;
}
