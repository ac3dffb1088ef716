//! The ABI between the Rust launch wrappers and the kernels, checked without a GPU:
//! - (feature `cuda`) every wrapper's parameter list against its kernel's `.entry` in the PTX
//!   nvcc produced: one `.u64` per device pointer, then the parameter struct's size and
//!   alignment; and every `.entry` in the PTX has a wrapper;
//! - (feature `cuda-emu`) every `#[repr(C)]` struct against the C++ struct's field offsets and
//!   sizes as the emulator build compiled them, and the emulator's exports against the wrappers.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use kdscout::backend::cuda::kernels::ALL;

/// The `.param` declarations of `.entry name(...)` in a PTX text.
#[cfg(feature = "cuda")]
fn entry_params(ptx: &str, name: &str) -> Option<Vec<String>> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let body = &ptx[start..];
    let end = body.find(')')?;
    Some(
        body[..end]
            .lines()
            .skip(1)
            .map(|l| l.trim().trim_end_matches(',').to_string())
            .filter(|l| l.starts_with(".param"))
            .collect(),
    )
}

#[cfg(feature = "cuda")]
#[test]
fn wrappers_match_ptx_entries() {
    use kdscout::backend::cuda::driver::{module_names, ptx_of};
    let mut problems = Vec::new();
    for k in ALL {
        let Some(ptx) = ptx_of(k.module) else {
            problems.push(format!("{}: module {} not embedded", k.name, k.module));
            continue;
        };
        let Some(params) = entry_params(ptx, k.name) else {
            problems.push(format!("{}: no .entry in {}.ptx", k.name, k.module));
            continue;
        };
        if params.len() != k.ptrs.len() + 1 {
            problems.push(format!(
                "{}: PTX has {} parameters, wrapper passes {}",
                k.name,
                params.len(),
                k.ptrs.len() + 1
            ));
            continue;
        }
        for (p, (arg, _)) in params.iter().zip(k.ptrs) {
            if !p.starts_with(".param .u64") {
                problems.push(format!("{}: argument {arg} is a device pointer in Rust but `{p}` in PTX", k.name));
            }
        }
        let last = params.last().unwrap();
        let want = format!(".param .align {} .b8 {}_param_{}[{}]", k.params_align, k.name, k.ptrs.len(), k.params_size);
        if *last != want {
            problems.push(format!("{}: struct {} is `{want}` in Rust, `{last}` in PTX", k.name, k.params));
        }
    }
    // Every kernel in the PTX has a wrapper.
    for m in module_names() {
        for line in ptx_of(m).unwrap().lines() {
            if let Some(rest) = line.trim().strip_prefix(".visible .entry ") {
                let name = rest.split('(').next().unwrap();
                if !ALL.iter().any(|k| k.name == name) {
                    problems.push(format!("{m}.ptx: kernel {name} has no Rust launch wrapper"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "ABI mismatches:\n  {}", problems.join("\n  "));
    assert!(ALL.len() >= 20, "only {} kernels registered", ALL.len());
}

#[cfg(feature = "cuda-emu")]
#[test]
fn param_structs_match_cpp_layouts() {
    use kdscout::backend::cuda::params::all_layouts;
    let cpp = kdscout::backend::cuda::emu::param_layouts();
    let mut rows: Vec<(String, String, usize, usize)> = cpp
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap(), f[3].parse().unwrap())
        })
        .collect();
    let mut rust = Vec::new();
    for (name, size, _align, fields) in all_layouts() {
        for (f, off, sz) in fields {
            rust.push((name.to_string(), f.to_string(), off, sz));
        }
        rust.push((name.to_string(), "*".to_string(), 0, size));
    }
    rows.sort();
    rust.sort();
    assert_eq!(rust, rows, "Rust #[repr(C)] params (left) vs kernels/params.cuh as compiled (right)");
}

#[cfg(feature = "cuda-emu")]
#[test]
fn emulator_exports_match_wrappers() {
    let mut exported = kdscout::backend::cuda::emu::entry_names();
    let mut wrapped: Vec<&str> = ALL.iter().map(|k| k.name).collect();
    exported.sort();
    wrapped.sort();
    assert_eq!(wrapped, exported, "launch wrappers (left) vs EMU_EXPORT lines in kernels/*.cu (right)");
}
