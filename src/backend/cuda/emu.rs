//! The emulator device: host memory (`Storage::Emu`) and launches into the kernels compiled as
//! host C++ (`kernels/emu/`, linked as a static library by build.rs). Allocations are filled
//! with NaN, so an output element that a kernel does not write fails the op tests.
//!
//! With `KDSCOUT_EMU_LIB=/path/libkds_emu_tsan.so` in the environment, kernels are taken from
//! that shared library instead (the ThreadSanitizer build; see tests/emu_tsan.rs).

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::OnceLock;

use super::{Gpu, KernelSig, LaunchCfg};
use crate::backend::{Device, Storage};
use crate::error::{Error, Result};

type EmuEntry = unsafe extern "C" fn(*const u32, *const u32, u32, *mut *mut c_void) -> i32;

include!(concat!(env!("OUT_DIR"), "/emu_entries.rs"));

extern "C" {
    fn kds_emu_last_error() -> *const c_char;
    fn kds_emu_param_layouts() -> *const c_char;
}

/// Path of the ThreadSanitizer build of the emulator (a shared library), built by build.rs.
pub const TSAN_LIB: &str = env!("KDS_EMU_TSAN_LIB");

/// Where kernels come from: the linked library, or a shared library named by KDSCOUT_EMU_LIB.
struct Lib {
    handle: Option<*mut c_void>,
}
// SAFETY: the handle is only used for dlsym, which is thread-safe.
unsafe impl Send for Lib {}
unsafe impl Sync for Lib {}

fn lib() -> &'static Lib {
    static LIB: OnceLock<Lib> = OnceLock::new();
    LIB.get_or_init(|| {
        let Some(path) = std::env::var_os("KDSCOUT_EMU_LIB") else { return Lib { handle: None } };
        let c = CString::new(path.to_string_lossy().as_bytes()).expect("KDSCOUT_EMU_LIB without NUL bytes");
        // SAFETY: dlopen of a library path; failure is reported below.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!h.is_null(), "KDSCOUT_EMU_LIB={}: dlopen failed", path.to_string_lossy());
        Lib { handle: Some(h) }
    })
}

fn sym(name: &str) -> Option<*mut c_void> {
    let h = lib().handle?;
    let c = CString::new(name).ok()?;
    // SAFETY: dlsym on a live handle.
    let p = unsafe { libc::dlsym(h, c.as_ptr()) };
    (!p.is_null()).then_some(p)
}

fn entry(name: &str) -> Option<EmuEntry> {
    if lib().handle.is_some() {
        // SAFETY: every kds_emu_<kernel> export has the EmuEntry signature (EMU_EXPORT).
        return sym(&format!("kds_emu_{name}")).map(|p| unsafe { std::mem::transmute::<*mut c_void, EmuEntry>(p) });
    }
    EMU_ENTRIES.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}

fn last_error() -> String {
    // SAFETY: both libraries return a NUL-terminated thread-local buffer.
    unsafe {
        let p = match sym("kds_emu_last_error") {
            Some(f) => std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> *const c_char>(f)(),
            None => kds_emu_last_error(),
        };
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// The C++ side's parameter struct layouts: lines of `Struct field offset size` (`*` = whole struct).
pub fn param_layouts() -> String {
    // SAFETY: returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(kds_emu_param_layouts()).to_string_lossy().into_owned() }
}

/// The emulator as a device.
pub struct EmuGpu;

fn not_emu(op: &'static str, s: &Storage) -> Error {
    Error::Device { op, detail: format!("a tensor on {} given to the CUDA emulator; move it first", s.device()) }
}

impl Gpu for EmuGpu {
    fn device(&self) -> Device {
        Device::CudaEmu
    }
    fn name(&self) -> &'static str {
        "cuda-emu"
    }
    fn alloc(&self, len: usize) -> Result<Storage> {
        Ok(Storage::Emu(vec![f32::NAN; len]))
    }
    fn upload(&self, data: &[f32]) -> Result<Storage> {
        Ok(Storage::Emu(data.to_vec()))
    }
    fn download(&self, s: &Storage) -> Result<Vec<f32>> {
        match s {
            Storage::Emu(v) => Ok(v.clone()),
            #[allow(unreachable_patterns)]
            other => Err(not_emu("to_host", other)),
        }
    }
    fn ptr(&self, s: &Storage) -> Result<u64> {
        match s {
            Storage::Emu(v) => Ok(v.as_ptr() as u64),
            #[allow(unreachable_patterns)]
            other => Err(not_emu("kernel argument", other)),
        }
    }
    fn ptr_mut(&self, s: &mut Storage) -> Result<u64> {
        match s {
            Storage::Emu(v) => Ok(v.as_mut_ptr() as u64),
            #[allow(unreachable_patterns)]
            other => Err(not_emu("kernel argument", other)),
        }
    }
    unsafe fn launch(&self, k: &KernelSig, cfg: LaunchCfg, args: &mut [*mut c_void]) -> Result<()> {
        let Some(f) = entry(k.name) else {
            return Err(Error::Device {
                op: k.name,
                detail: "the emulator library has no entry for this kernel".into(),
            });
        };
        LAUNCHED.lock().unwrap_or_else(|e| e.into_inner()).insert(k.name);
        // SAFETY: the caller guarantees args match the kernel (see Gpu::launch).
        let rc = unsafe { f(cfg.grid.as_ptr(), cfg.block.as_ptr(), cfg.smem, args.as_mut_ptr()) };
        if rc != 0 {
            return Err(Error::Device {
                op: k.name,
                detail: format!("emulated launch {cfg:?} failed: {}", last_error()),
            });
        }
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

static LAUNCHED: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Names of the kernels this process has launched on the emulator (coverage of the race test).
pub fn launched() -> Vec<&'static str> {
    LAUNCHED.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect()
}

/// Names of the kernels the linked emulator library exports.
pub fn entry_names() -> Vec<&'static str> {
    EMU_ENTRIES.iter().map(|(n, _)| *n).collect()
}
