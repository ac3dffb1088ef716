//! Run safety through the binary (docs/RUNS.md): one writer per run directory (an OS lock the
//! kernel drops with the process), resume only of a real run, extending a finished search, teacher
//! weights identified by content, `score --out` never mixing settings, exit codes, closed pipes,
//! teacher checks, seeds that follow the network, and clear messages for bad numbers.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use kdscout::models;
use kdscout::rng::Rng;
use kdscout::search::run::read_results;
use kdscout::Device;

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kdscout"))
}

fn kdscout<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    exe().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "exit {:?}: {}", o.status.code(), stderr(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The message of a run that failed with `code`; never a panic.
fn failed(o: &Output, code: i32) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stdout: {}\nstderr: {err}", String::from_utf8_lossy(&o.stdout));
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A long random NB201 search (params proxy, no teacher) that keeps its directory busy.
fn long_search(out: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "search",
        "--space",
        "nb201",
        "--algo",
        "random",
        "--evaluations",
        "15000",
        "--proxy",
        "params",
        "--teacher",
        "none",
        "--data",
        "synthetic",
        "--batch",
        "2",
        "--no-progress-bar",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(out.display().to_string());
    a
}

/// A child process killed (SIGKILL) when the test ends, even by a failed assertion: a leaked
/// 50-epoch training would load the machine long after the test.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_quiet(args: &[String]) -> Killed {
    Killed(exe().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
}

/// Waits until `child` holds the lock of `dir` (its pid is in the lock file).
fn wait_for_lock(child: &mut Child, dir: &Path) {
    let t0 = Instant::now();
    let pid = format!("pid {}", child.id());
    loop {
        let text = std::fs::read_to_string(dir.join(".kdscout.lock")).unwrap_or_default();
        if text.contains(&pid) {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the first process ended before taking the lock");
        assert!(t0.elapsed() < Duration::from_secs(60), "no lock after 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_second_writer_is_refused_and_a_killed_holder_leaves_no_stale_lock() {
    let t = TempDir::new("lock-search");
    let out = t.join("run");
    let mut guard = spawn_quiet(&long_search(&out));
    let first = &mut guard.0;
    wait_for_lock(first, &out);

    // search, score --out and train on the busy directory: refused at once, naming it and the pid.
    let second = kdscout(&long_search(&out));
    let err = failed(&second, 4);
    assert!(err.contains(&out.display().to_string()) && err.contains(&first.id().to_string()), "{err}");
    let mut resume = long_search(&out);
    resume.push("--resume".into());
    let err = failed(&kdscout(&resume), 4);
    assert!(err.contains(&first.id().to_string()), "{err}");
    let score = kdscout(&[
        "score",
        "--student",
        "resnet8",
        "--proxies",
        "params",
        "--data",
        "synthetic",
        "--batch",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(failed(&score, 4).contains(&first.id().to_string()));
    let train = kdscout(&[
        "train",
        "--model",
        "resnet8",
        "--data",
        "synthetic",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(failed(&train, 4).contains("in use"));
    // The holder was not disturbed: its records are numbered 0, 1, 2, ... without duplicates.
    assert!(first.try_wait().unwrap().is_none());

    first.kill().unwrap(); // SIGKILL: the kernel drops the lock with the process
    first.wait().unwrap();
    let mut resume = long_search(&out);
    resume.extend(["--resume".into(), "--max-steps".into(), "3".into()]);
    let o = kdscout(&resume);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = read_results(&out.join("results.jsonl")).unwrap();
    let ids: Vec<u64> = recs.iter().map(|r| r.cand_id).collect();
    assert_eq!(ids, (0..recs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn a_second_training_process_is_refused() {
    let t = TempDir::new("lock-train");
    let out = t.join("run");
    let args = |out: &Path| -> Vec<String> {
        ["train", "--model", "resnet8", "--data", "synthetic", "--epochs", "50", "--batch", "16", "--out"]
            .iter()
            .map(|s| s.to_string())
            .chain([out.display().to_string()])
            .collect()
    };
    let mut guard = spawn_quiet(&args(&out));
    let first = &mut guard.0;
    wait_for_lock(first, &out);
    let mut a = args(&out);
    a.push("--resume".into());
    let err = failed(&kdscout(&a), 4);
    assert!(err.contains(&first.id().to_string()), "{err}");
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn resume_needs_a_run_to_resume() {
    let t = TempDir::new("resume-missing");
    let missing = t.join("nothing-here");
    let mut a = long_search(&missing);
    a.push("--resume".into());
    let err = failed(&kdscout(&a), 1);
    assert!(err.contains("does not exist") && err.contains("drop --resume"), "{err}");
    assert!(!missing.exists(), "a failed resume must not create the directory");

    let empty = t.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut a = long_search(&empty);
    a.push("--resume".into());
    let err = failed(&kdscout(&a), 1);
    assert!(err.contains("holds no search run"), "{err}");

    let err = failed(
        &kdscout(&[
            "train",
            "--model",
            "resnet8",
            "--data",
            "synthetic",
            "--epochs",
            "1",
            "--resume",
            "--out",
            missing.to_str().unwrap(),
        ]),
        1,
    );
    assert!(err.contains("nothing to resume"), "{err}");
}

fn small_search(out: &Path, evaluations: u64) -> Vec<String> {
    [
        "search",
        "--space",
        "resnet_d",
        "--algo",
        "aging",
        "--set",
        "search.population=6",
        "--proxy",
        "l2_norm",
        "--teacher",
        "none",
        "--data",
        "synthetic",
        "--batch",
        "2",
        "--seed",
        "5",
        "--no-progress-bar",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--evaluations".into(), evaluations.to_string(), "--out".into(), out.display().to_string()])
    .collect()
}

/// Records without timings.
fn records(dir: &Path) -> Vec<kdscout::search::run::SearchRecord> {
    let mut v = read_results(&dir.join("results.jsonl")).unwrap();
    for r in &mut v {
        for o in r.record.scores.values_mut() {
            o.time_s = 0.0;
        }
    }
    v
}

#[test]
fn a_finished_search_is_extended_by_raising_evaluations_only() {
    let t = TempDir::new("extend");
    let (short, long) = (t.join("short"), t.join("long"));
    ok(&kdscout(&small_search(&short, 6)));
    assert_eq!(records(&short).len(), 6);
    let mut more = small_search(&short, 11);
    more.push("--resume".into());
    let o = kdscout(&more);
    assert!(ok(&o).contains("search finished"), "{}", stderr(&o));
    ok(&kdscout(&small_search(&long, 11)));
    // The extended run is the run that had the larger budget from the start.
    assert_eq!(records(&short), records(&long));
    let stored = std::fs::read_to_string(short.join("config.resolved.toml")).unwrap();
    assert!(stored.contains("evaluations = 11"), "{stored}");

    let mut lower = small_search(&short, 8);
    lower.push("--resume".into());
    let err = failed(&kdscout(&lower), 1);
    assert!(err.contains("not lower"), "{err}");
    let mut other = small_search(&short, 11);
    other.push("--resume".into());
    other.extend(["--max-layers".into(), "9".into()]);
    let err = failed(&kdscout(&other), 1);
    assert!(err.contains("constraints.max_layers: 0 -> 9") && err.contains("only --evaluations"), "{err}");
}

/// A resnet8 weights file drawn from `seed`.
fn weights_file(path: &Path, seed: u64) {
    let net = models::build("resnet8", 10, &mut Rng::seed(seed), Device::Cpu).unwrap();
    kdscout::weights::save_module(path, net.as_ref(), "resnet8", 10).unwrap();
}

#[test]
fn teacher_weights_are_identified_by_content_not_path() {
    let t = TempDir::new("teacher-hash");
    let teacher = t.join("teacher.safetensors");
    weights_file(&teacher, 1);
    let run = t.join("run");
    let args = |out: &Path, w: &Path, extra: &[&str]| -> Vec<String> {
        [
            "search",
            "--space",
            "resnet_d",
            "--algo",
            "random",
            "--evaluations",
            "6",
            "--proxy",
            "diswot",
            "--teacher",
            "resnet8",
            "--data",
            "synthetic",
            "--batch",
            "4",
            "--no-progress-bar",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--teacher-weights".into(), w.display().to_string(), "--out".into(), out.display().to_string()])
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
    };
    let o = kdscout(&args(&run, &teacher, &["--max-steps", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = std::fs::read_to_string(run.join("config.resolved.toml")).unwrap();
    assert!(cfg.contains("teacher_weights_sha256 = \""), "{cfg}");

    // The same file under another path, and the run directory moved: accepted.
    let copy = t.join("elsewhere.safetensors");
    std::fs::copy(&teacher, &copy).unwrap();
    let moved = t.join("moved");
    std::fs::rename(&run, &moved).unwrap();
    let o = kdscout(&args(&moved, &copy, &["--resume", "--max-steps", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));

    // Another file under the original path: refused.
    weights_file(&teacher, 2);
    let err = failed(&kdscout(&args(&moved, &teacher, &["--resume"])), 1);
    assert!(err.contains("teacher differs") && err.contains("SHA-256"), "{err}");

    // score and search give a student the same score with the same trained teacher.
    let first = t.join("first");
    ok(&kdscout(&[
        "search",
        "--space",
        "resnet_d",
        "--algo",
        "exhaustive",
        "--evaluations",
        "1",
        "--teacher",
        "resnet8",
        "--teacher-weights",
        copy.to_str().unwrap(),
        "--proxy",
        "diswot",
        "--data",
        "synthetic",
        "--batch",
        "4",
        "--no-progress-bar",
        "--out",
        first.to_str().unwrap(),
    ]));
    let rec = &records(&first)[0];
    let o = kdscout(&[
        "score",
        "--teacher",
        "resnet8",
        "--teacher-weights",
        copy.to_str().unwrap(),
        "--student",
        &rec.record.arch,
        "--proxies",
        "diswot",
        "--data",
        "synthetic",
        "--batch",
        "4",
        "--json",
    ]);
    let line: serde_json::Value = serde_json::from_str(ok(&o).lines().next().unwrap()).unwrap();
    assert_eq!(line["scores"]["diswot"]["score"].as_f64(), rec.record.scores["diswot"].score);
}

#[test]
fn score_and_search_give_one_student_the_same_score() {
    let t = TempDir::new("same-score");
    let out = t.join("s");
    // The first member of the exhaustive resnet_d enumeration is resnet_d111.
    ok(&kdscout(&[
        "search",
        "--space",
        "resnet_d",
        "--algo",
        "exhaustive",
        "--evaluations",
        "1",
        "--teacher",
        "resnet8",
        "--proxy",
        "diswot",
        "--data",
        "synthetic",
        "--batch",
        "4",
        "--seed",
        "3",
        "--no-progress-bar",
        "--out",
        out.to_str().unwrap(),
    ]));
    let recs = records(&out);
    assert_eq!(recs[0].record.arch, "resnet_d111");
    let from_search = recs[0].record.scores["diswot"].score.unwrap();
    // The same network spelt resnet8 gets the same weights, so the same score.
    for name in ["resnet_d111", "resnet8"] {
        let o = kdscout(&[
            "score",
            "--teacher",
            "resnet8",
            "--student",
            name,
            "--proxies",
            "diswot",
            "--data",
            "synthetic",
            "--batch",
            "4",
            "--seed",
            "3",
            "--json",
        ]);
        let line: serde_json::Value = serde_json::from_str(ok(&o).lines().next().unwrap()).unwrap();
        assert_eq!(line["scores"]["diswot"]["score"].as_f64(), Some(from_search), "{name}");
    }
}

#[test]
fn equal_networks_get_equal_weights_whatever_their_spelling() {
    use kdscout::proxy::run::candidate_seed;
    let same = [
        ["resnet8", "resnet_d111", "resnet_w16-16-32-64_d1-1-1"],
        ["resnet20", "resnet_d333", "resnet_w16-16-32-64_d3-3-3"],
        ["resnet8x4", "resnet_w32-64-128-256_d1-1-1", "resnet8x4"],
        ["MobileNetV2", "mobile_half", "MobileNetV2"],
    ];
    for names in same {
        let weights: Vec<Vec<(String, Vec<f32>)>> = names
            .iter()
            .map(|n| {
                let net = models::build(n, 10, &mut Rng::seed(candidate_seed(4, n)), Device::Cpu).unwrap();
                net.state_dict().into_iter().map(|(k, t)| (k, t.to_vec().unwrap())).collect()
            })
            .collect();
        assert_eq!(weights[0], weights[1], "{names:?}");
        assert_eq!(weights[0], weights[2], "{names:?}");
    }
    // Different networks still get different seeds.
    assert_ne!(candidate_seed(4, "resnet8"), candidate_seed(4, "resnet_d113"));
    assert_ne!(candidate_seed(4, "resnet8"), candidate_seed(5, "resnet8"));
}

#[test]
fn score_out_never_mixes_settings() {
    let t = TempDir::new("score-out");
    let out = t.join("s");
    let cands = t.write("c.txt", b"resnet8\nresnet_d113\n");
    let args = |seed: &str| -> Vec<String> {
        ["score", "--candidates", cands.to_str().unwrap(), "--proxies", "params,l2_norm", "--data", "synthetic"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--batch", "2", "--seed", seed, "--out", out.to_str().unwrap()].iter().map(|s| s.to_string()))
            .collect()
    };
    ok(&kdscout(&args("0")));
    let lines = || std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().count();
    assert_eq!(lines(), 2);
    let err = failed(&kdscout(&args("1")), 1);
    assert!(err.contains("seed: 0 -> 1") && err.contains("another --out"), "{err}");
    assert_eq!(lines(), 2, "nothing appended");
    // The same settings again: the candidates already scored are skipped.
    let o = kdscout(&args("0"));
    ok(&o);
    assert!(stderr(&o).contains("2 of 2 candidates already scored"), "{}", stderr(&o));
    assert_eq!(lines(), 2);
}

#[test]
fn failed_candidates_exit_with_code_3_after_writing_every_record() {
    let t = TempDir::new("exit3");
    let out = t.join("s");
    let cands = t.write("c.txt", b"resnet8\nnot_a_model\nresnet_d113\n");
    let o = kdscout(&[
        "score",
        "--candidates",
        cands.to_str().unwrap(),
        "--proxies",
        "params",
        "--data",
        "synthetic",
        "--batch",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = failed(&o, 3);
    assert!(err.contains("1 of 3 candidates had errors") && err.contains("not_a_model"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().count(), 3);
    // A usage error is code 2, an ordinary failure code 1.
    failed(&kdscout(&["score", "--no-such-flag"]), 2);
    failed(&kdscout(&["score", "--student", "not_a_model", "--proxies", "nope"]), 1);
}

#[test]
fn closed_stdout_neither_panics_nor_stops_a_run() {
    // A printer whose reader has gone (`kdscout models | head -1`) stops quietly: the pipe is
    // closed before the process writes (println! would panic with EPIPE).
    for args in [&["models"][..], &["score", "--list"], &["search", "--help"]] {
        let mut child = exe().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success() && !stderr(&o).contains("panicked"), "{args:?}: {:?} {}", o.status, stderr(&o));
    }
    // And after a first line was read.
    let mut child = exe().args(["models"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(!first.is_empty() && o.status.success() && !stderr(&o).contains("panicked"), "{}", stderr(&o));

    // A run whose stdout and stderr are closed from the start keeps writing its files.
    let t = TempDir::new("closed-pipe");
    let out = t.join("run");
    let mut child = exe().args(small_search(&out, 5)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(records(&out).len(), 5);
    assert!(out.join("best/arch.json").is_file());
}

fn poison(path: &Path, how: impl Fn(&str, &mut Vec<f32>)) {
    let ckpt = kdscout::weights::load(path).unwrap();
    let tensors: Vec<(String, kdscout::Tensor)> = ckpt
        .tensors
        .iter()
        .map(|(n, t)| {
            let mut v = t.to_vec().unwrap();
            how(n, &mut v);
            (n.clone(), kdscout::Tensor::from_vec(v, t.dims().to_vec(), Device::Cpu).unwrap())
        })
        .collect();
    kdscout::weights::save(path, &tensors, &ckpt.metadata).unwrap();
}

#[test]
fn a_broken_teacher_is_refused_before_it_teaches() {
    let t = TempDir::new("nan-teacher");
    let distill = |w: &PathBuf| {
        kdscout(&[
            "distill",
            "--teacher",
            "resnet8",
            "--teacher-weights",
            w.to_str().unwrap(),
            "--student",
            "resnet8",
            "--data",
            "synthetic",
            "--epochs",
            "1",
            "--batch",
            "16",
            "--out",
            t.join("d").to_str().unwrap(),
        ])
    };
    let nan = t.join("nan.safetensors");
    weights_file(&nan, 1);
    poison(&nan, |n, v| {
        if n == "fc.weight" {
            v[3] = f32::NAN;
        }
    });
    let err = failed(&distill(&nan), 1);
    assert!(err.contains("nan.safetensors") && err.contains("fc.weight") && err.contains("non-finite"), "{err}");

    // Finite weights whose logits overflow.
    let huge = t.join("huge.safetensors");
    weights_file(&huge, 1);
    poison(&huge, |n, v| {
        if n == "fc.weight" {
            v.iter_mut().for_each(|x| *x = if *x >= 0.0 { 3e38 } else { -3e38 });
        }
    });
    let err = failed(&distill(&huge), 1);
    assert!(err.contains("huge.safetensors") && err.contains("non-finite logits"), "{err}");

    // A PyTorch file gets the import-weights explanation.
    let pth = t.write("teacher.pth", b"PK\x03\x04 not really");
    let err = failed(&distill(&pth), 1);
    assert!(err.contains("kdscout import-weights"), "{err}");
}

#[test]
fn bad_numbers_get_clear_messages() {
    let t = TempDir::new("numbers");
    let out = t.join("o");
    let o = out.to_str().unwrap();
    let err = failed(&kdscout(&["search", "--seed", "-1", "--out", o]), 2);
    assert!(err.contains("seeds cannot be negative"), "{err}");
    let err = failed(&kdscout(&["score", "--student", "resnet8", "--seed", "-3"]), 2);
    assert!(err.contains("seeds cannot be negative"), "{err}");
    let err = failed(&kdscout(&["search", "--max-params", "-5", "--out", o]), 1);
    assert!(err.contains("--max-params") && err.contains("cannot be negative"), "{err}");
    let err =
        failed(&kdscout(&["train", "--model", "resnet8", "--data", "synthetic", "--batch", "100000", "--out", o]), 1);
    assert!(err.contains("--batch") && err.contains("100000"), "{err}");
}

#[test]
fn help_shows_every_default() {
    let help = ok(&kdscout(&["search", "--help"]));
    for d in [
        "[default: nb201]",
        "[default: resnet56]",
        "[default: diswot]",
        "[default: aging]",
        "[default: 0]",
        "[default: 1000]",
        "[default: builtin]",
        "[default: 64]",
    ] {
        assert!(help.contains(d), "search --help lacks {d}:\n{help}");
    }
    assert!(help.contains("random"), "--evaluations below the population: {help}");
    let help = ok(&kdscout(&["score", "--help"]));
    assert!(help.contains("The one seed of the run"), "{help}");
}

#[test]
fn import_weights_takes_the_student_out_of_a_training_checkpoint() {
    let t = TempDir::new("import-ckpt");
    let run = t.join("run");
    ok(&kdscout(&[
        "train",
        "--model",
        "resnet8",
        "--data",
        "synthetic",
        "--epochs",
        "1",
        "--batch",
        "32",
        "--out",
        run.to_str().unwrap(),
    ]));
    let out = t.join("student.safetensors");
    let ckpt = run.join("checkpoints/latest.safetensors");
    let o = kdscout(&[
        "import-weights",
        ckpt.to_str().unwrap(),
        out.to_str().unwrap(),
        "--model",
        "resnet8",
        "--classes",
        "10",
    ]);
    assert!(ok(&o).contains("kdscout training checkpoint"), "{}", String::from_utf8_lossy(&o.stdout));
    let imported = kdscout::weights::load(&out).unwrap();
    let trained = kdscout::weights::load(&ckpt).unwrap();
    let (name, w) = imported.tensors.iter().find(|(n, _)| n == "fc.weight").unwrap();
    let (_, w0) = trained.tensors.iter().find(|(n, _)| n == &format!("student.{name}")).unwrap();
    assert_eq!(w.to_vec().unwrap(), w0.to_vec().unwrap());
}

#[test]
fn a_teacher_with_overflowing_logits_cannot_score() {
    let t = TempDir::new("score-teacher");
    let huge = t.join("huge.safetensors");
    weights_file(&huge, 1);
    poison(&huge, |n, v| {
        if n == "fc.weight" {
            v.iter_mut().for_each(|x| *x = if *x >= 0.0 { 3e38 } else { -3e38 });
        }
    });
    let err = failed(
        &kdscout(&[
            "score",
            "--teacher",
            "resnet8",
            "--teacher-weights",
            huge.to_str().unwrap(),
            "--student",
            "resnet8",
            "--proxies",
            "diswot",
            "--data",
            "synthetic",
            "--batch",
            "4",
        ]),
        1,
    );
    assert!(err.contains("huge.safetensors") && err.contains("non-finite logits"), "{err}");
}

#[test]
fn a_distillation_resumes_with_the_same_teacher_file_only() {
    let t = TempDir::new("distill-hash");
    let teacher = t.join("teacher.safetensors");
    weights_file(&teacher, 1);
    let out = t.join("d");
    let args = |w: &Path, epochs: &str, resume: bool| -> Vec<String> {
        let mut a: Vec<String> = [
            "distill",
            "--teacher",
            "resnet8",
            "--student",
            "resnet8",
            "--data",
            "synthetic",
            "--batch",
            "64",
            "--epochs",
            epochs,
            "--teacher-weights",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend([w.display().to_string(), "--out".into(), out.display().to_string()]);
        if resume {
            a.push("--resume".into());
        }
        a
    };
    ok(&kdscout(&args(&teacher, "1", false)));
    // The same file elsewhere: the run goes on.
    let copy = t.join("moved-teacher.safetensors");
    std::fs::copy(&teacher, &copy).unwrap();
    ok(&kdscout(&args(&copy, "2", true)));
    // Another file under the original path: refused, naming both hashes.
    weights_file(&teacher, 2);
    let err = failed(&kdscout(&args(&teacher, "3", true)), 1);
    assert!(err.contains("is not the teacher file") && err.contains("SHA-256"), "{err}");
}

#[test]
fn score_prints_its_settings_and_whole_names() {
    let a = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|";
    let b = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|";
    let t = TempDir::new("score-table");
    let cands = t.write("c.txt", format!("{a}\n{b}\n").as_bytes());
    let o = kdscout(&[
        "score",
        "--candidates",
        cands.to_str().unwrap(),
        "--proxies",
        "params,synflow",
        "--data",
        "synthetic",
        "--batch",
        "2",
        "--seed",
        "9",
        "--out",
        t.join("s").to_str().unwrap(),
    ]);
    let table = ok(&o);
    let header = table.lines().next().unwrap();
    assert!(header.contains("batch 2") && header.contains("seed 9") && header.contains("init default"), "{header}");
    // Two cells that differ only in their last op stay distinguishable.
    assert!(table.contains(a) && table.contains(b), "{table}");
}

#[test]
fn a_score_run_that_scored_nothing_does_not_block_its_directory() {
    let t = TempDir::new("score-empty");
    let out = t.join("s");
    let run = |batch: &str| {
        kdscout(&[
            "score",
            "--student",
            "resnet8",
            "--proxies",
            "params",
            "--data",
            "synthetic",
            "--batch",
            batch,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let err = failed(&run("100000"), 1);
    assert!(err.contains("--batch"), "{err}");
    ok(&run("2"));
    assert_eq!(std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().count(), 1);
}
