//! `kdscout models`, `kdscout import-weights` and `kdscout data` as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kdscout(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdscout")).args(args).output().unwrap()
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth").join(name).display().to_string()
}

fn out_dir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("kdscout-cli-weights-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A failed run: exit code 1 and a one-line-prefixed error, never a panic.
fn failure(run: &Output) -> String {
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "stdout: {}\nstderr: {stderr}", text(&run.stdout));
    assert!(stderr.starts_with("error: ") && !stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn models_json_lists_every_zoo_model_with_its_cost() {
    let run = kdscout(&["models", "--json", "--classes", "10"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, kdscout::models::ZOO);
    assert!(rows.iter().all(|r| r["classes"] == 10 && r["params"].as_u64().unwrap() > 0));
    // resnet8 by hand from RepDistiller's definition, 10 classes: convs 432 + 4,608 + 14,336 + 57,344,
    // BN weight+bias 2 x (16 + 2x16 + 3x32 + 3x64) = 672, fc 64x10 + 10 = 650.
    let r8 = rows.iter().find(|r| r["name"] == "resnet8").unwrap();
    assert_eq!(r8["params"], 78_042);
}

#[test]
fn models_table_names_the_zoo_and_the_families() {
    let run = kdscout(&["models"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(stdout.contains("100 classes"), "{stdout}");
    // resnet20 at 100 classes: 278,324 parameters (0.28M in the KD papers).
    let line = stdout.lines().find(|l| l.starts_with("resnet20 ")).unwrap();
    assert!(line.contains("278,324") && line.contains("0.28M"), "{line}");
    for f in ["resnet_dXYZ", "NAS-Bench-201", "ViT"] {
        assert!(stdout.contains(f), "{stdout}");
    }
    failure(&kdscout(&["models", "--classes", "0"]));
}

#[test]
fn import_weights_converts_the_torch_fixture() {
    let dir = out_dir("import");
    let out = dir.join("resnet8.safetensors");
    let run = kdscout(&["import-weights", &fixture("resnet8_c10.pth"), out.to_str().unwrap(), "--model", "resnet8"]);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", text(&run.stderr));
    assert!(stdout.contains("56 tensors under \"state_dict\""), "{stdout}");
    assert!(stdout.contains("ignored: epoch, best_acc, optimizer"), "{stdout}");
    assert!(stdout.contains("10 classes, from the checkpoint"), "{stdout}");
    assert!(stdout.contains("78042 parameters"), "{stdout}");

    let ckpt = kdscout::weights::load(&out).unwrap();
    assert_eq!(ckpt.model(), Some("resnet8"));
    assert_eq!(ckpt.metadata["num_classes"], "10");
    assert_eq!(ckpt.metadata["source"], "resnet8_c10.pth");
    let src = kdscout::weights::pth::read_state_dict(fixture("resnet8_c10.pth")).unwrap();
    assert_eq!(ckpt.tensors.len(), src.tensors.len());
    for (name, t) in &src.tensors {
        let got = &ckpt.tensors.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(got.dims(), t.dims(), "{name}");
        assert_eq!(got.to_vec().unwrap(), t.to_vec().unwrap(), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn import_weights_reports_every_problem() {
    let dir = out_dir("bad");
    let out = dir.join("x.safetensors");
    let out = out.to_str().unwrap();

    let e =
        failure(&kdscout(&["import-weights", &fixture("mismatch.pth"), out, "--model", "resnet8", "--classes", "10"]));
    assert!(e.contains("mismatch.pth") && e.contains("fc.weight (expected [10, 64], got [5, 64])"), "{e}");
    assert!(e.contains("unexpected: fc.extra"), "{e}");
    for name in ["layer2.0.conv1.weight", "layer2.0.downsample.1.running_var", "layer3.0.bn2.bias"] {
        assert!(e.contains(name), "{name}: {e}");
    }
    assert!(!Path::new(out).exists());

    let e = failure(&kdscout(&[
        "import-weights",
        &fixture("resnet8_c10.pth"),
        out,
        "--model",
        "resnet8",
        "--classes",
        "100",
    ]));
    assert!(e.contains("pass --classes 10"), "{e}");
    let e = failure(&kdscout(&["import-weights", &fixture("resnet8_c10.pth"), out, "--model", "resnet14"]));
    assert!(e.contains("missing: layer1.1.conv1.weight"), "{e}");
    let e = failure(&kdscout(&["import-weights", &fixture("legacy.pth"), out, "--model", "resnet8"]));
    assert!(e.contains("legacy") && e.contains("python -c \"import torch;"), "{e}");
    let e = failure(&kdscout(&["import-weights", &fixture("make_fixtures.py"), out, "--model", "resnet8"]));
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");
    let e = failure(&kdscout(&["import-weights", &fixture("resnet8_c10.pth"), out, "--model", "resnet9"]));
    assert!(e.contains("unknown model 'resnet9'"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_defaults_to_the_builtin_images_and_checks_folders() {
    let run = kdscout(&["data"]);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(stdout.contains("data builtin"), "{stdout}");
    assert!(stdout.contains("train    512 images, 10 classes; per class: 52 66 45 47 51 41 53 50 49 58"), "{stdout}");
    assert!(stdout.contains("test     512 images"), "{stdout}");

    let e = failure(&kdscout(&["data", "--data", "cifar10:/nonexistent/cifar"]));
    assert!(e.contains("/nonexistent/cifar") && e.contains("data_batch_1.bin"), "{e}");
    // A malformed value is a usage error (clap's exit code 2) that names the value and the forms.
    let run = kdscout(&["data", "--data", "imagenet"]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("imagenet") && stderr.contains("cifar100:DIR") && !stderr.contains("panicked"), "{stderr}");
}
