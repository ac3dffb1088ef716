//! Device selection: `cpu`, `cuda[:N]`, `cuda-emu`, `auto`. On a machine without a GPU (every
//! machine this project builds on) asking for CUDA is one clear line, `auto` is the CPU, and
//! the CLI stops with that line instead of running somewhere else.

use kdscout::Device;

#[test]
fn cpu_and_auto() {
    assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
    let auto = Device::parse("auto").unwrap();
    // A GPU is used when one is usable (feature `cuda` on a GPU machine), else the CPU.
    #[cfg(feature = "cuda")]
    assert!(matches!(auto, Device::Cpu | Device::Cuda(0)), "{auto}");
    #[cfg(not(feature = "cuda"))]
    assert_eq!(auto, Device::Cpu);
}

#[test]
fn cuda_without_a_usable_gpu_is_one_clear_line() {
    match Device::parse("cuda") {
        Ok(d) => assert_eq!(d.to_string(), "cuda:0", "a usable GPU is cuda:0"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "one line: {msg}");
            #[cfg(not(feature = "cuda"))]
            assert!(msg.contains("built without CUDA support"), "{msg}");
            #[cfg(feature = "cuda")]
            assert!(msg.contains("no CUDA driver") || msg.contains("GPU(s)"), "{msg}");
        }
    }
    let e = Device::parse("cuda:x").unwrap_err().to_string();
    assert!(e.contains("cuda:N"), "{e}");
}

#[test]
fn unknown_names_list_the_choices() {
    let e = Device::parse("tpu").unwrap_err().to_string();
    assert!(e.contains("cpu, cuda, cuda:N, cuda-emu or auto"), "{e}");
    #[cfg(not(feature = "cuda-emu"))]
    assert!(Device::parse("cuda-emu").unwrap_err().to_string().contains("--features cuda-emu"));
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cli_device_cuda_stops_with_one_line() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kdscout"))
        .args(["demo", "--epochs", "1", "--device", "cuda", "--out"])
        .arg(std::env::temp_dir().join("kdscout-device-test"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("built without CUDA support"), "{err}");
}
