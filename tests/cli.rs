//! The `kdscout` binary as a user runs it.

use std::process::Command;

fn kdscout() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kdscout"))
}

#[test]
fn demo_writes_resolved_config_and_metrics() {
    let out = std::env::temp_dir().join(format!("kdscout-cli-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run =
        kdscout().args(["demo", "--epochs", "1", "--width", "8", "--seed", "3", "--out"]).arg(&out).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("test accuracy"), "{stdout}");
    let config = std::fs::read_to_string(out.join("config.resolved.toml")).unwrap();
    assert!(config.contains("seed = 3") && config.contains("epochs = 1") && config.contains("lr = 0.05"), "{config}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1);
    let record: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(record["train"]["images"], 4000);
    assert_eq!(record["test"]["images"], 1000);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_data_dir_is_a_clear_error_not_a_panic() {
    let run =
        kdscout().args(["demo", "--data-dir", "/nonexistent/cifar", "--out", "/tmp/kdscout-never"]).output().unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.starts_with("error: ") && stderr.contains("/nonexistent/cifar"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
