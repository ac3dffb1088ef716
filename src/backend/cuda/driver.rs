//! The real GPU: cudarc with the driver loaded at run time (`dynamic-loading`), so one binary
//! runs with or without CUDA installed. [`device`] probes for the driver library before
//! touching the driver API, then creates the context and loads every kernel module once: the
//! sm_80 or sm_90 cubin when the GPU's compute capability matches, the PTX (JIT-compiled by the
//! driver) otherwise.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nvrtc::Ptx;

use super::{Gpu, GpuBackend, KernelSig, LaunchCfg};
use crate::backend::{Device, Storage};
use crate::error::{Error, Result};

/// One compiled `kernels/<name>.cu`.
pub(crate) struct ModuleImage {
    pub name: &'static str,
    pub ptx: &'static str,
    pub sm80: &'static [u8],
    pub sm90: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/cuda_modules.rs"));

/// The PTX text of module `name` (for the ABI test; no GPU needed).
pub fn ptx_of(name: &str) -> Option<&'static str> {
    MODULES.iter().find(|m| m.name == name).map(|m| m.ptx)
}

/// Names of all embedded modules.
pub fn module_names() -> Vec<&'static str> {
    MODULES.iter().map(|m| m.name).collect()
}

/// The per-kernel resource report (registers, shared memory, spills) from the build.
pub fn resource_report() -> &'static str {
    RESOURCE_REPORT
}

/// Device memory of one tensor.
pub struct CudaBuf {
    /// At least one element long (the driver refuses empty allocations); `len` is the tensor's.
    slice: CudaSlice<f32>,
    len: usize,
    stream: Arc<CudaStream>,
    ordinal: usize,
}

impl CudaBuf {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
}

impl Clone for CudaBuf {
    fn clone(&self) -> Self {
        CudaBuf { slice: self.slice.clone(), len: self.len, stream: self.stream.clone(), ordinal: self.ordinal }
    }
}

impl std::fmt::Debug for CudaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuf(cuda:{}, {} floats)", self.ordinal, self.len)
    }
}

/// A GPU with its context, stream and loaded kernels.
pub struct CudaGpu {
    ordinal: usize,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
}

fn drv(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Device { op, detail: e.to_string() }
}

impl CudaGpu {
    fn open(ordinal: usize) -> Result<CudaGpu> {
        // SAFETY: only tries to dlopen libcuda; the driver API is not called when it is absent
        // (cudarc panics on a missing library otherwise).
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Device {
                op: "cuda",
                detail: "no CUDA driver on this machine (libcuda.so not found); use --device cpu or --device auto"
                    .into(),
            });
        }
        let count =
            CudaContext::device_count().map_err(|e| drv("cuda", format!("driver present but unusable: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Device {
                op: "cuda",
                detail: format!("cuda:{ordinal} requested but the driver sees {count} GPU(s)"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| drv("cuda", e))?;
        let (major, _) = ctx.compute_capability().map_err(|e| drv("cuda", e))?;
        let stream = ctx.default_stream();
        let mut functions = HashMap::new();
        for m in MODULES {
            let image = match major {
                8 => Ptx::from_binary(m.sm80.to_vec()),
                9 => Ptx::from_binary(m.sm90.to_vec()),
                _ => Ptx::from_src(m.ptx),
            };
            let module = ctx.load_module(image).map_err(|e| drv("cuda", format!("loading module {}: {e}", m.name)))?;
            for k in super::kernels::ALL.iter().filter(|k| k.module == m.name) {
                let f = module.load_function(k.name).map_err(|e| drv(k.name, e))?;
                functions.insert(k.name, f);
            }
        }
        Ok(CudaGpu { ordinal, stream, functions })
    }

    fn buf<'a>(&self, s: &'a Storage) -> Result<&'a CudaSlice<f32>> {
        match s {
            Storage::Cuda(b) if b.ordinal == self.ordinal => Ok(&b.slice),
            other => Err(Error::Device {
                op: "cuda",
                detail: format!("a tensor on {} given to cuda:{}; move it first", other.device(), self.ordinal),
            }),
        }
    }
}

impl Gpu for CudaGpu {
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn alloc(&self, len: usize) -> Result<Storage> {
        // SAFETY: every op writes its outputs completely before they are read.
        let slice = unsafe { self.stream.alloc::<f32>(len.max(1)) }.map_err(|e| drv("alloc", e))?;
        Ok(Storage::Cuda(CudaBuf { slice, len, stream: self.stream.clone(), ordinal: self.ordinal }))
    }
    fn upload(&self, data: &[f32]) -> Result<Storage> {
        if data.is_empty() {
            return self.alloc(0);
        }
        let slice = self.stream.clone_htod(data).map_err(|e| drv("from_host", e))?;
        Ok(Storage::Cuda(CudaBuf { slice, len: data.len(), stream: self.stream.clone(), ordinal: self.ordinal }))
    }
    fn download(&self, s: &Storage) -> Result<Vec<f32>> {
        if s.is_empty() {
            return Ok(Vec::new());
        }
        self.stream.clone_dtoh(self.buf(s)?).map_err(|e| drv("to_host", e))
    }
    fn ptr(&self, s: &Storage) -> Result<u64> {
        let (p, _sync) = self.buf(s)?.device_ptr(&self.stream);
        Ok(p)
    }
    fn ptr_mut(&self, s: &mut Storage) -> Result<u64> {
        match s {
            Storage::Cuda(b) if b.ordinal == self.ordinal => {
                let (p, _sync) = b.slice.device_ptr_mut(&self.stream);
                Ok(p)
            }
            other => self.ptr(other),
        }
    }
    unsafe fn launch(&self, k: &KernelSig, cfg: LaunchCfg, args: &mut [*mut c_void]) -> Result<()> {
        let f = self
            .functions
            .get(k.name)
            .ok_or_else(|| Error::Device { op: k.name, detail: "kernel not loaded".into() })?;
        // SAFETY: the caller guarantees args match the kernel (Gpu::launch); one stream orders
        // every launch and copy.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
                (cfg.block[0], cfg.block[1], cfg.block[2]),
                cfg.smem,
                self.stream.cu_stream(),
                args,
            )
        }
        .map_err(|e| drv(k.name, e))
    }
    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| drv("synchronize", e))
    }
}

type Registry = Mutex<HashMap<usize, &'static GpuBackend<CudaGpu>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Probe GPU `ordinal` (driver present, device exists, kernels load) and return its device.
pub fn device(ordinal: usize) -> Result<Device> {
    let mut r = registry().lock().expect("cuda registry lock");
    if let std::collections::hash_map::Entry::Vacant(e) = r.entry(ordinal) {
        let gpu = CudaGpu::open(ordinal)?;
        e.insert(Box::leak(Box::new(GpuBackend { gpu })));
    }
    Ok(Device::Cuda(ordinal))
}

/// The kernel backend of GPU `ordinal`, probed first (driver present, device exists, kernels
/// load): for callers that need more than the `Backend` ops, such as the proxy kernels
/// (`GpuBackend::gram`, ...) or [`Gpu::synchronize`] in the kernel benchmarks.
pub fn gpu_backend(ordinal: usize) -> Result<&'static GpuBackend<CudaGpu>> {
    device(ordinal)?;
    Ok(registry().lock().expect("cuda registry lock")[&ordinal])
}

/// The backend of a probed GPU. A `Device::Cuda` made without [`device`] is probed here; if
/// that fails there is no backend to return, so this panics with the probe's message.
pub(crate) fn backend(ordinal: usize) -> &'static GpuBackend<CudaGpu> {
    gpu_backend(ordinal).unwrap_or_else(|e| {
        panic!("Device::Cuda({ordinal}) used without a usable GPU: {e} (create devices with Device::parse)")
    })
}
