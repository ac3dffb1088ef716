//! Build script. Without features it does nothing (the CPU backend needs no CUDA).
//!
//! - feature `cuda`: finds nvcc ($NVCC, PATH, $CUDA_HOME/$CUDA_PATH, /usr/local/cuda, or the
//!   layout `pip install nvidia-cuda-nvcc nvidia-cuda-cccl` creates), compiles every
//!   `kernels/*.cu` to PTX (compute_80) and to sm_80 and sm_90 cubins in parallel, embeds them
//!   (`OUT_DIR/cuda_modules.rs`), writes the per-kernel resource report (registers, shared
//!   memory, stack, spills, from `ptxas -v`) to `OUT_DIR/kernel_resources.md` and
//!   `docs/kernel-resources.md`, and fails when any kernel spills.
//! - feature `cuda-emu`: compiles the same sources as host C++ with the fiber emulator
//!   (`kernels/emu/`) into a static library, lists the kernels' C entry points for Rust
//!   (`OUT_DIR/emu_entries.rs`), and builds a ThreadSanitizer variant as a shared library
//!   (`OUT_DIR/libkds_emu_tsan.so`) for the race test.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for v in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    let emu = std::env::var_os("CARGO_FEATURE_CUDA_EMU").is_some();
    if !cuda && !emu {
        return;
    }
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kdir = root.join("kernels");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .expect("kernels/ directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for entry in std::fs::read_dir(&kdir).unwrap().chain(std::fs::read_dir(kdir.join("emu")).unwrap()) {
        println!("cargo:rerun-if-changed={}", entry.unwrap().path().display());
    }
    if cuda {
        build_cuda(&root, &out, &sources);
    }
    if emu {
        build_emu(&kdir, &out, &sources);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}

// ------------------------------------------------------------------------------ nvcc

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        fail(&format!("NVCC={} does not exist", p.display()));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("nvcc");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            let c = PathBuf::from(home).join("bin/nvcc");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    let c = PathBuf::from("/usr/local/cuda/bin/nvcc");
    if c.is_file() {
        return Some(c);
    }
    // pip layout: <site-packages>/nvidia/<cu13|cuda_nvcc>/bin/nvcc.
    let script = "import site, sysconfig\nps = list(site.getsitepackages()) + [site.getusersitepackages(), \
                  sysconfig.get_paths()['purelib']]\nprint('\\n'.join(ps))";
    for py in ["python3", "python"] {
        let Ok(o) = Command::new(py).args(["-c", script]).output() else { continue };
        for sp in String::from_utf8_lossy(&o.stdout).lines() {
            let nv = Path::new(sp.trim()).join("nvidia");
            let Ok(dirs) = std::fs::read_dir(&nv) else { continue };
            let mut found: Vec<PathBuf> =
                dirs.filter_map(|d| d.ok()).map(|d| d.path().join("bin/nvcc")).filter(|p| p.is_file()).collect();
            found.sort();
            if let Some(p) = found.pop() {
                return Some(p);
            }
        }
    }
    None
}

struct Resource {
    kernel: String,
    arch: String,
    regs: u32,
    smem: u32,
    stack: u32,
    spill_st: u32,
    spill_ld: u32,
}

fn num_before(line: &str, unit: &str) -> Option<u32> {
    let i = line.find(unit)?;
    line[..i].split_whitespace().last()?.parse().ok()
}

/// Per-kernel resources from `ptxas -v` output.
fn parse_ptxas(text: &str) -> Vec<Resource> {
    let mut out: Vec<Resource> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut it = rest.split('\'');
            let kernel = it.next().unwrap_or("").to_string();
            let arch = it.nth(1).unwrap_or("").to_string();
            out.push(Resource { kernel, arch, regs: 0, smem: 0, stack: 0, spill_st: 0, spill_ld: 0 });
        } else if let Some(r) = out.last_mut() {
            if line.contains("bytes stack frame") {
                r.stack = num_before(line, "bytes stack frame").unwrap_or(0);
                r.spill_st = num_before(line, "bytes spill stores").unwrap_or(0);
                r.spill_ld = num_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                r.regs = num_before(line, "registers").unwrap_or(0);
                r.smem = num_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

fn build_cuda(root: &Path, out: &Path, sources: &[PathBuf]) {
    let Some(nvcc) = find_nvcc() else {
        fail(
            "feature `cuda` needs nvcc to compile kernels/*.cu, and none was found ($NVCC, PATH, $CUDA_HOME, \
             /usr/local/cuda, or pip's site-packages/nvidia/*/bin/nvcc). Install it with \
             `pip install nvidia-cuda-nvcc nvidia-cuda-cccl` (no GPU needed) or set NVCC=/path/to/nvcc; \
             or build without `--features cuda`.",
        )
    };
    let kdir = root.join("kernels");
    // (source, output, extra args); PTX for compute_80 so newer GPUs JIT it, cubins for sm_80/sm_90.
    let mut jobs: Vec<(PathBuf, PathBuf, Vec<String>)> = Vec::new();
    for src in sources {
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        jobs.push((src.clone(), out.join(format!("{stem}.ptx")), vec!["-ptx".into(), "-arch=compute_80".into()]));
        for sm in ["sm_80", "sm_90"] {
            jobs.push((
                src.clone(),
                out.join(format!("{stem}.{sm}.cubin")),
                vec!["-cubin".into(), format!("-arch={sm}"), "-Xptxas".into(), "-v".into()],
            ));
        }
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<(usize, Result<String, String>)>> = Default::default();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((src, dst, args)) = jobs.get(i) else { break };
                let o = Command::new(&nvcc)
                    .args(args)
                    .args(["-std=c++17", "-O3", "-lineinfo", "--Werror", "all-warnings", "-I"])
                    .arg(&kdir)
                    .arg("-o")
                    .arg(dst)
                    .arg(src)
                    .output();
                let r = match o {
                    Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stderr).to_string()),
                    Ok(o) => Err(format!(
                        "nvcc failed on {} ({}):\n{}{}",
                        src.display(),
                        args.join(" "),
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )),
                    Err(e) => Err(format!("cannot run {}: {e}", nvcc.display())),
                };
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| r.0);
    let mut resources = Vec::new();
    for (_, r) in results {
        match r {
            Ok(log) => resources.extend(parse_ptxas(&log)),
            Err(e) => fail(&e),
        }
    }
    resources.sort_by(|a, b| (&a.kernel, &a.arch).cmp(&(&b.kernel, &b.arch)));

    let mut md = String::from(
        "# Kernel resources\n\nGenerated by build.rs (`cargo build --features cuda`) from `ptxas -v` \
         (nvcc from the CUDA 13 toolkit, `-O3`); do not edit. Registers per thread, static shared memory per block (bytes), stack frame and \
         spill bytes per thread.\n\n| kernel | arch | registers | shared | stack | spill st | spill ld |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for r in &resources {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.kernel, r.arch, r.regs, r.smem, r.stack, r.spill_st, r.spill_ld
        );
    }
    std::fs::write(out.join("kernel_resources.md"), &md).unwrap();
    let doc = root.join("docs/kernel-resources.md");
    if std::fs::read_to_string(&doc).ok().as_deref() != Some(md.as_str()) && root.join("docs").is_dir() {
        let _ = std::fs::write(&doc, &md);
    }
    let spills: Vec<String> = resources
        .iter()
        .filter(|r| r.spill_st > 0 || r.spill_ld > 0)
        .map(|r| format!("{} on {}: {} bytes stored, {} loaded", r.kernel, r.arch, r.spill_st, r.spill_ld))
        .collect();
    if !spills.is_empty() {
        fail(&format!(
            "kernels spill registers to local memory (fix the kernel or its launch bounds):\n  {}",
            spills.join("\n  ")
        ));
    }

    let mut rs = String::from("// Generated by build.rs: the kernels compiled by nvcc.\n");
    rs += "pub(crate) const MODULES: &[ModuleImage] = &[\n";
    for src in sources {
        let stem = src.file_stem().unwrap().to_string_lossy();
        let p = |suffix: &str| out.join(format!("{stem}{suffix}")).display().to_string();
        rs += &format!(
            "    ModuleImage {{ name: {stem:?}, ptx: include_str!({:?}), sm80: include_bytes!({:?}), sm90: include_bytes!({:?}) }},\n",
            p(".ptx"),
            p(".sm_80.cubin"),
            p(".sm_90.cubin")
        );
    }
    rs += "];\n";
    rs += &format!("pub(crate) const RESOURCE_REPORT: &str = include_str!({:?});\n", out.join("kernel_resources.md"));
    std::fs::write(out.join("cuda_modules.rs"), rs).unwrap();
}

// ------------------------------------------------------------------------------ emulator

/// Names of `EMU_EXPORT(name)` lines (not the TSan-only ones).
#[cfg_attr(not(feature = "cuda-emu"), allow(dead_code))]
fn emu_exports(sources: &[PathBuf]) -> Vec<String> {
    let mut names = Vec::new();
    for src in sources {
        for line in std::fs::read_to_string(src).unwrap().lines() {
            if let Some(rest) = line.trim().strip_prefix("EMU_EXPORT(") {
                names.push(rest.trim_end_matches(')').trim().to_string());
            }
        }
    }
    names
}

#[cfg(feature = "cuda-emu")]
fn build_emu(kdir: &Path, out: &Path, sources: &[PathBuf]) {
    let names = emu_exports(sources);
    let mut rs = String::from("// Generated by build.rs: the emulator's kernel entry points.\nextern \"C\" {\n");
    for n in &names {
        rs += &format!("    fn kds_emu_{n}(g: *const u32, b: *const u32, smem: u32, args: *mut *mut c_void) -> i32;\n");
    }
    rs += "}\npub(crate) const EMU_ENTRIES: &[(&str, EmuEntry)] = &[\n";
    for n in &names {
        rs += &format!("    ({n:?}, kds_emu_{n}),\n");
    }
    rs += "];\n";
    std::fs::write(out.join("emu_entries.rs"), rs).unwrap();

    let emu_cpp = [kdir.join("emu/cuda_emu.cpp"), kdir.join("emu/layout.cpp")];
    // The ThreadSanitizer library builds on a second thread while cc builds the normal one.
    let tsan = {
        let (kdir, out, sources, emu_cpp) = (kdir.to_path_buf(), out.to_path_buf(), sources.to_vec(), emu_cpp.clone());
        std::thread::spawn(move || {
            let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
            let o = Command::new(&cxx)
                .args(["-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-fsanitize=thread", "-fvisibility=hidden"])
                .args(["-DKDS_EMU_TSAN", "-Wno-unknown-pragmas", "-Wl,-Bsymbolic", "-I"])
                .arg(&kdir)
                .args(["-x", "c++"])
                .args(&sources)
                .args(&emu_cpp)
                .arg("-o")
                .arg(out.join("libkds_emu_tsan.so"))
                .output();
            match o {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!("ThreadSanitizer emulator build failed:\n{}", String::from_utf8_lossy(&o.stderr))),
                Err(e) => Err(format!("cannot run {cxx}: {e}")),
            }
        })
    };
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++17")
        .opt_level(2)
        .include(kdir)
        .flag("-x")
        .flag("c++")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-unused-function")
        .flag_if_supported("-Wno-unknown-pragmas")
        .warnings(true);
    for s in sources.iter().chain(&emu_cpp) {
        b.file(s);
    }
    b.compile("kds_emu");
    match tsan.join().unwrap() {
        Ok(()) => println!("cargo:rustc-env=KDS_EMU_TSAN_LIB={}", out.join("libkds_emu_tsan.so").display()),
        Err(e) => fail(&e),
    }
}

#[cfg(not(feature = "cuda-emu"))]
fn build_emu(_: &Path, _: &Path, _: &[PathBuf]) {
    unreachable!("feature cuda-emu enables the cc build dependency")
}
