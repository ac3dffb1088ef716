//! Search runs on disk: a run stopped (or SIGKILLed) at any point and resumed ends exactly like an
//! uninterrupted run with the same seed (same state, population, winner, and the same records,
//! none duplicated or missing); budgets hold for every record; changed settings on --resume and
//! unknown keys are errors naming the key; shards merge into the whole enumeration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kdscout::search::config::SearchConfig;
use kdscout::search::run::{self, read_results, Progress, RunOptions, SearchRecord};
use kdscout::search::{AlgoKind, Count, SearchState};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kdscout-search-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cfg(space: &str, algo: AlgoKind, evaluations: u64) -> SearchConfig {
    let mut c = SearchConfig {
        space: space.into(),
        teacher: "none".into(),
        proxy: "l2_norm".into(),
        algo,
        seed: 7,
        evaluations,
        data: "synthetic".into(),
        batch_size: 4,
        ..Default::default()
    };
    c.search.population = 8;
    c.search.sample = 3;
    c
}

fn opts(resume: bool, max_steps: Option<u64>) -> RunOptions {
    RunOptions { resume, max_steps, progress: Progress::Quiet }
}

fn state(dir: &Path) -> SearchState {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap()
}

/// Records without their timings (the only field that differs between identical runs).
fn records(dir: &Path) -> Vec<SearchRecord> {
    let mut v = read_results(&dir.join("results.jsonl")).unwrap();
    for r in &mut v {
        for o in r.record.scores.values_mut() {
            o.time_s = 0.0;
        }
    }
    v
}

fn assert_same_run(a: &Path, b: &Path) {
    let (ra, rb) = (records(a), records(b));
    let ids: Vec<u64> = rb.iter().map(|r| r.cand_id).collect();
    assert_eq!(ids, (0..rb.len() as u64).collect::<Vec<_>>(), "cand_ids of {}", b.display());
    let mut names: Vec<&String> = rb.iter().map(|r| &r.record.arch).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), rb.len(), "duplicated candidates in {}", b.display());
    assert_eq!(ra, rb);
    let (sa, sb) = (state(a), state(b));
    assert!(sa.finished.is_some());
    assert_eq!(sa, sb);
    let arch = |d: &Path| std::fs::read_to_string(d.join("best/arch.json")).unwrap();
    assert_eq!(arch(a), arch(b));
}

#[test]
fn stopped_and_resumed_runs_equal_an_uninterrupted_run() {
    let mut c = cfg("nb201", AlgoKind::Aging, 30);
    c.constraints.max_params = Count(600_000);
    c.constraints.max_flops = Count(80_000_000);
    let full = tmp("full");
    let s = run::run(&c, &full, &opts(false, None)).unwrap();
    assert_eq!(s.state.evaluations, 30);
    for r in records(&full) {
        assert!(r.params <= 600_000 && r.flops <= 80_000_000, "{} over budget", r.record.arch);
        assert_eq!(r.params as f64 / 1e6, r.record.params_m.unwrap(), "closed-form params of {}", r.record.arch);
    }
    for f in ["plots/best_score.svg", "plots/best_score.png", "plots/score_vs_params.svg", "ranking.csv"] {
        assert!(full.join(f).is_file(), "{f}");
    }

    // Stopped every 7 steps; once, the state of the last step is lost after its record was
    // written (a kill between the two writes).
    let parts = tmp("parts");
    run::run(&c, &parts, &opts(false, Some(7))).unwrap();
    loop {
        let keep = std::fs::read(parts.join("state.json")).unwrap();
        let committed = state(&parts).evaluations;
        run::run(&c, &parts, &opts(true, Some(1))).unwrap();
        if read_results(&parts.join("results.jsonl")).unwrap().len() as u64 > committed {
            std::fs::write(parts.join("state.json"), keep).unwrap();
            break;
        }
    }
    while run::run(&c, &parts, &opts(true, Some(7))).unwrap().state.finished.is_none() {}
    assert_same_run(&full, &parts);

    // A torn last line (a kill in the middle of an append) is dropped and re-scored.
    let torn = tmp("torn");
    run::run(&c, &torn, &opts(false, Some(12))).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(torn.join("results.jsonl")).unwrap();
    std::io::Write::write_all(&mut f, b"{\"schema\":1,\"cand_id\":").unwrap();
    run::run(&c, &torn, &opts(true, None)).unwrap();
    assert_same_run(&full, &torn);
    for d in [full, parts, torn] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn sigkilled_binary_resumes_to_the_same_result() {
    let exe = env!("CARGO_BIN_EXE_kdscout");
    let args = |out: &Path| -> Vec<String> {
        [
            "search",
            "--space",
            "resnet_d",
            "--algo",
            "aging",
            "--evaluations",
            "40",
            "--proxy",
            "l2_norm",
            "--teacher",
            "none",
            "--data",
            "synthetic",
            "--batch",
            "4",
            "--seed",
            "11",
            "--set",
            "search.population=10",
            "--no-progress-bar",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect()
    };
    let full = tmp("kill-full");
    let t0 = Instant::now();
    let st = Command::new(exe).args(args(&full)).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let took = t0.elapsed();
    assert!(String::from_utf8_lossy(&st.stdout).contains("best: resnet_d"));

    let killed = tmp("kill-parts");
    // Each process is SIGKILLed once the run has scored a given number of candidates (read from
    // its state.json), so every kill lands mid-run; the thresholds are offset by the clock so each
    // test run stops at other steps.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    let mut kills = 0;
    for (i, base) in [4u64, 14, 26].iter().enumerate() {
        let at = base + (nanos >> (8 * i)) % 6;
        let mut a = args(&killed);
        if i > 0 {
            a.push("--resume".into());
        }
        let mut child = Command::new(exe)
            .args(&a)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let evaluations = || {
            std::fs::read_to_string(killed.join("state.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<SearchState>(&t).ok())
                .map_or(0, |s| s.evaluations)
        };
        while evaluations() < at && child.try_wait().unwrap().is_none() && t0.elapsed() < took * 20 {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed at {at} evaluations");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let st = state(&killed);
        assert!(
            st.finished.is_none() && st.evaluations < 40,
            "killed at {} evaluations, finished {:?}",
            st.evaluations,
            st.finished
        );
    }
    assert_eq!(kills, 3);
    // Resume with the stored settings only.
    let out =
        Command::new(exe).args(["search", "--resume", "--no-progress-bar", "--out"]).arg(&killed).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_run(&full, &killed);

    // A changed setting on --resume names the key.
    let mut a = args(&killed);
    let seed_at = a.iter().position(|s| s == "11").unwrap();
    a[seed_at] = "12".into();
    a.push("--resume".into());
    let out = Command::new(exe).args(&a).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("seed: 11 -> 12"), "{err}");
    // A second run into the same directory without --resume is refused.
    let out = Command::new(exe).args(args(&killed)).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--resume"));
    for d in [full, killed] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn bad_settings_name_the_key() {
    let exe = env!("CARGO_BIN_EXE_kdscout");
    let dir = tmp("bad");
    let run = |extra: &[&str]| {
        let out = Command::new(exe).args(["search", "--out"]).arg(&dir).args(extra).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(run(&["--set", "search.popsize=3"]).contains("search.popsize"));
    assert!(run(&["--set", "search.population=lots"]).contains("population"));
    assert!(run(&["--max-params", "1Q"]).contains("--max-params"));
    assert!(run(&["--space", "nb301"]).contains("nb301"));
    assert!(run(&["--shard", "2/2", "--algo", "exhaustive"]).contains("--shard"));
    assert!(run(&["--shard", "0/2"]).contains("exhaustive"));
    let toml = dir.with_extension("toml");
    std::fs::write(&toml, "space = \"resnet_d\"\n[search]\nsampel = 3\n").unwrap();
    assert!(run(&["--config", toml.to_str().unwrap()]).contains("search.sampel"));
    let _ = std::fs::remove_file(toml);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn shards_merge_into_the_whole_enumeration() {
    let mut c = cfg("resnet_d", AlgoKind::Exhaustive, 0);
    c.proxy = "params".into();
    let whole = tmp("whole");
    run::run(&c, &whole, &opts(false, None)).unwrap();
    let mut dirs = Vec::new();
    for i in 0..3 {
        let mut sc = c.clone();
        sc.shard = kdscout::search::Shard { index: i, count: 3 };
        let d = tmp(&format!("shard{i}"));
        run::run(&sc, &d, &opts(false, None)).unwrap();
        dirs.push(d);
    }
    let merged = tmp("merged");
    let recs = run::merge(&dirs, &merged).unwrap();
    assert_eq!(recs.len(), 64);
    let key = |d: &Path| {
        let mut v: Vec<(String, Option<f64>)> = records(d).into_iter().map(|r| (r.record.arch, r.fitness)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(key(&whole), key(&merged));
    let arch = |d: &Path| run::ArchFile::load(&d.join("best/arch.json")).unwrap();
    assert_eq!(arch(&whole), arch(&merged));
    assert_eq!(arch(&merged).arch, "resnet_d777");
    // The winner's initial weights sit beside arch.json and load into the model it names.
    let a = arch(&merged);
    assert_eq!(a.weights.as_deref(), Some("weights.safetensors"));
    let net =
        kdscout::models::build(&a.arch, a.num_classes, &mut kdscout::rng::Rng::seed(0), kdscout::Device::Cpu).unwrap();
    kdscout::weights::load_into(net.as_ref(), merged.join("best/weights.safetensors"), true).unwrap();
    // Shards of different runs are refused, naming the key.
    let mut other = c.clone();
    other.seed = 8;
    other.shard = kdscout::search::Shard { index: 0, count: 3 };
    let od = tmp("other");
    run::run(&other, &od, &opts(false, Some(1))).unwrap();
    let e = run::merge(&[dirs[1].clone(), od.clone()], &tmp("merged2")).unwrap_err().to_string();
    assert!(e.contains("seed"), "{e}");
    for d in dirs.into_iter().chain([whole, merged, od]) {
        let _ = std::fs::remove_dir_all(d);
    }
}
