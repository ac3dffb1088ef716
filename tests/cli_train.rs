//! `kdscout train` and `kdscout distill` as a user runs them: a run killed with SIGKILL and
//! resumed ends with the same weights as an uninterrupted one; seeds get a summary; bad input
//! gets a clean error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use kdscout::distill::checkpoint::load_state;

fn kdscout(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdscout")).args(args).output().unwrap()
}

fn ok(run: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "failed:\n{out}\n{err}");
    out.into_owned()
}

fn error_of(run: &Output) -> String {
    assert_eq!(run.status.code(), Some(1), "expected a clean error exit: {}", String::from_utf8_lossy(&run.stdout));
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "{err}");
    err
}

/// resnet8 on the synthetic images, 5 epochs of 4 steps.
fn train_args(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = ["train", "--model", "resnet8", "--data", "synthetic", "--epochs", "5", "--seed", "3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(
        ["--set", "train.batch_size=128", "--set", "train.eval_batch_size=512", "--set", "train.milestones=[3]"]
            .map(String::from),
    );
    v.extend(["--out".to_string(), out.display().to_string()]);
    v
}

fn rows(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count().saturating_sub(1)).unwrap_or(0)
}

fn tensor_bits(path: &Path) -> (Vec<(String, Vec<u32>)>, String) {
    let (ckpt, state) = load_state(path).unwrap();
    let t = ckpt
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()))
        .collect();
    (t, serde_json::to_string(&(state.epoch, state.rng)).unwrap())
}

#[test]
fn sigkilled_run_resumes_to_the_same_weights() {
    let dir = TempDir::new("cli-kill");
    let (whole, killed) = (dir.join("whole"), dir.join("killed"));
    let s = |v: &[String]| v.to_vec();
    let a = s(&train_args(&whole));
    ok(&kdscout(&a.iter().map(String::as_str).collect::<Vec<_>>()));

    let b = s(&train_args(&killed));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kdscout"))
        .args(&b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = killed.join("metrics.csv");
    let start = Instant::now();
    while rows(&metrics) < 2 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(start.elapsed() < Duration::from_secs(120), "no epoch finished in time");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = rows(&metrics);
    assert!((2..5).contains(&done), "killed after {done} epochs");

    // Without --resume the directory is protected; with a changed setting resume is refused.
    let e = error_of(&kdscout(&b.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(e.contains("--resume"), "{e}");
    let mut changed = b.clone();
    changed.extend(["--resume", "--lr", "0.1"].map(String::from));
    let e = error_of(&kdscout(&changed.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(e.contains("train.lr: 0.05 -> 0.1"), "{e}");

    let mut resume = b.clone();
    resume.push("--resume".into());
    let out = ok(&kdscout(&resume.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(out.contains("resuming"), "{out}");
    let latest = |d: &PathBuf| d.join("checkpoints").join("latest.safetensors");
    assert_eq!(tensor_bits(&latest(&killed)), tensor_bits(&latest(&whole)));
    // metrics.csv has each epoch once, equal to the uninterrupted run's but for the timings.
    let strip = |d: &PathBuf| -> Vec<String> {
        std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(strip(&killed), strip(&whole));
    assert_eq!(strip(&whole).len(), 6);
    for f in ["config.resolved.toml", "plots/curve.svg", "plots/curve.png", "checkpoints/best.safetensors"] {
        assert!(whole.join(f).is_file(), "{f} missing");
    }
    let svg = std::fs::read_to_string(whole.join("plots/curve.svg")).unwrap();
    assert!(svg.contains("test top-1") && svg.contains("<polyline"), "curve lacks its series");

    // The trained model distils into a student (train checkpoint as teacher weights), 2 seeds.
    let teacher = whole.join("checkpoints").join("best.safetensors");
    let dout = dir.join("kd");
    let run = kdscout(&[
        "distill",
        "--teacher",
        "resnet8",
        "--teacher-weights",
        teacher.to_str().unwrap(),
        "--student",
        "resnet8",
        "--loss",
        "kd",
        "--data",
        "synthetic",
        "--epochs",
        "1",
        "--seeds",
        "0,1",
        "--set",
        "train.batch_size=128",
        "--set",
        "train.eval_batch_size=512",
        "--out",
        dout.to_str().unwrap(),
    ]);
    let text = ok(&run);
    assert!(text.contains("teacher test top-1") && text.contains("2 seeds: best top-1"), "{text}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dout.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["runs"].as_array().unwrap().len(), 2);
    let cfg = std::fs::read_to_string(dout.join("seed1").join("config.resolved.toml")).unwrap();
    assert!(cfg.contains("seed = 1") && cfg.contains("loss = \"kd\"") && cfg.contains("alpha = 0.9"), "{cfg}");
}

#[test]
fn bad_input_gets_clean_errors() {
    let dir = TempDir::new("cli-train-errors");
    let w = dir.write("t.safetensors", b"not used");
    let w = w.to_str().unwrap();
    let base = ["distill", "--teacher", "resnet14", "--student", "resnet8", "--data", "synthetic"];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |v: Vec<String>| kdscout(&v.iter().map(String::as_str).collect::<Vec<_>>());

    let e = error_of(&run(with(&["--teacher-weights", w, "--loss", "kdd"])));
    assert!(e.contains("unknown loss 'kdd'") && e.contains("fitnet"), "{e}");
    let e = error_of(&run(with(&["--teacher-weights", "/no/such/teacher.safetensors"])));
    assert!(e.contains("/no/such/teacher.safetensors") && e.contains("does not exist"), "{e}");
    let e = error_of(&run(with(&[])));
    assert!(e.contains("--teacher-weights"), "{e}");
    let e = error_of(&run(with(&["--teacher-weights", w, "--set", "train.learning_rate=0.1"])));
    assert!(e.contains("unknown key 'train.learning_rate'") && e.contains("train.lr"), "{e}");
    let e = error_of(&run(with(&["--teacher-weights", w, "--set", "train.epochs=many"])));
    assert!(e.contains("epochs"), "{e}");
    // The weights file exists but is not safetensors: named, before any training.
    let out = dir.join("o");
    let e = error_of(&run(with(&["--teacher-weights", w, "--out", out.to_str().unwrap()])));
    assert!(e.contains("t.safetensors") && e.contains("not a valid safetensors"), "{e}");
    let e = error_of(&kdscout(&["train", "--data", "synthetic"]));
    assert!(e.contains("--model"), "{e}");
    let e = error_of(&kdscout(&["train", "--model", "resnet8", "--seeds", "0,x"]));
    assert!(e.contains("--seeds"), "{e}");
    let e = error_of(&kdscout(&["train", "--model", "resnet8", "--set", "train.schedule=linear"]));
    assert!(e.contains("linear") && e.contains("cosine"), "{e}");
    let arch = dir.write("arch.json", br#"{"space": "resnet_d", "params": 1}"#);
    let e = error_of(&run(vec!["distill".into(), "--arch".into(), arch.display().to_string()]));
    assert!(e.contains("genome"), "{e}");
    // --arch with a genome resolves to that model (dry run prints the resolved config).
    let arch = dir.write("arch2.json", br#"{"space": "resnet_d", "genome": "resnet_d135", "params": 1}"#);
    let text = ok(&kdscout(&[
        "distill",
        "--arch",
        arch.to_str().unwrap(),
        "--teacher",
        "resnet20",
        "--teacher-weights",
        w,
        "--dry-run",
    ]));
    assert!(text.contains("model = \"resnet_d135\"") && text.contains("lr = 0.05"), "{text}");
}
