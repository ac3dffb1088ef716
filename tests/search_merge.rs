//! `kdscout merge` refuses what is not one run's distinct shards (a directory twice, a shard index
//! twice, other settings or teacher weights; the weights' path may differ), and refuses missing or unfinished shards unless --allow-partial, when
//! it says (printed and in merge.json) how many of the space's members the merged run holds.

use std::path::{Path, PathBuf};
use std::process::Command;

use kdscout::search::config::SearchConfig;
use kdscout::search::merge::{merge_shards, MergeReport};
use kdscout::search::run::{self, Progress, RunOptions};
use kdscout::search::{AlgoKind, Shard};

mod common;
use common::TempDir;

/// The 64-member resnet_d space, exhaustively, scored by the cheap `params` proxy.
fn cfg(index: u64, count: u64) -> SearchConfig {
    SearchConfig {
        space: "resnet_d".into(),
        teacher: "none".into(),
        proxy: "params".into(),
        algo: AlgoKind::Exhaustive,
        seed: 7,
        evaluations: 0,
        data: "synthetic".into(),
        batch_size: 4,
        shard: Shard { index, count },
        ..Default::default()
    }
}

fn search(c: &SearchConfig, dir: &Path, max_steps: Option<u64>) {
    run::run(c, dir, &RunOptions { resume: false, max_steps, progress: Progress::Quiet }).unwrap();
}

fn err(r: kdscout::Result<(Vec<run::SearchRecord>, MergeReport)>) -> String {
    r.map(|_| ()).expect_err("expected the merge to be refused").to_string()
}

#[test]
fn merge_refuses_repeated_foreign_missing_and_unfinished_shards() {
    let t = TempDir::new("merge");
    // Shards 0/3 and 2/3 finished, 1/3 stopped after 5 of its 21 members.
    let dirs: Vec<PathBuf> = (0..3).map(|i| t.join(&format!("shard{i}"))).collect();
    search(&cfg(0, 3), &dirs[0], None);
    search(&cfg(1, 3), &dirs[1], Some(5));
    search(&cfg(2, 3), &dirs[2], None);
    let out = |name: &str| t.join(name);

    // The same directory twice, also under another spelling.
    let again = t.path().join(".").join("shard0");
    let e = err(merge_shards(&[dirs[0].clone(), dirs[2].clone(), again], &out("m1"), true));
    assert!(e.contains("given twice") && e.contains("shard0"), "{e}");
    // Two directories holding the same shard index.
    let copy = out("copy0");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["config.resolved.toml", "results.jsonl", "state.json"] {
        std::fs::copy(dirs[0].join(f), copy.join(f)).unwrap();
    }
    let e = err(merge_shards(&[dirs[0].clone(), copy.clone()], &out("m2"), true));
    assert!(e.contains("both hold shard 0/3") && e.contains("copy0"), "{e}");
    // Shards of another run: another seed, another split.
    let mut other = cfg(1, 3);
    other.seed = 8;
    search(&other, &out("seed8"), Some(1));
    let e = err(merge_shards(&[dirs[0].clone(), out("seed8")], &out("m3"), true));
    assert!(e.contains("not a shard of the same run") && e.contains("seed: 7 -> 8"), "{e}");
    search(&cfg(1, 2), &out("half"), Some(1));
    let e = err(merge_shards(&[dirs[0].clone(), out("half")], &out("m4"), true));
    assert!(e.contains("shard.count: 3 -> 2"), "{e}");
    // A directory without a run.
    let e = err(merge_shards(&[dirs[0].clone(), t.path().to_path_buf()], &out("m5"), true));
    assert!(e.contains("holds no search run"), "{e}");

    // Missing and unfinished shards are errors naming each and its fix ...
    let e = err(merge_shards(&dirs, &out("m6a"), false));
    assert!(e.contains("(shard 1/3) is incomplete") && !e.contains("missing"), "{e}");
    let e = err(merge_shards(&[dirs[0].clone(), dirs[1].clone()], &out("m6"), false));
    assert!(e.contains("shard 2/3 is missing"), "{e}");
    assert!(e.contains("(shard 1/3) is incomplete: 5 of its 21 members scored"), "{e}");
    assert!(e.contains(&format!("kdscout search --resume --out {}", dirs[1].display())), "{e}");
    assert!(e.contains("--allow-partial to merge what there is (it holds 27 of 64 members of resnet_d)"), "{e}");
    assert!(!out("m6").exists(), "a refused merge writes nothing");
    // ... and with --allow-partial the merge goes on and says what it holds. A shard still being
    // written (its last line half done) is read, not cut.
    let res1 = dirs[1].join("results.jsonl");
    let mut torn = std::fs::read(&res1).unwrap();
    torn.extend_from_slice(b"{\"schema\":1,\"cand");
    std::fs::write(&res1, &torn).unwrap();
    let (records, report) = merge_shards(&[dirs[0].clone(), dirs[1].clone()], &out("m7"), true).unwrap();
    assert_eq!(std::fs::read(&res1).unwrap(), torn, "merge leaves a running shard's file alone");
    assert_eq!(records.len(), 22 + 5);
    assert!(!report.complete);
    assert_eq!((report.missing.clone(), report.incomplete.clone()), (vec![2], vec![1]));
    assert_eq!(
        report.holds(),
        "holds 27 of 64 members of resnet_d: shard 2/3 missing, shard 1/3 incomplete (5 of its 21 members scored)"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out("m7").join("merge.json")).unwrap()).unwrap();
    assert_eq!((json["members"].as_u64(), json["space_size"].as_u64()), (Some(27), Some(64)));
    assert_eq!(json["complete"], false);
    assert_eq!(json["shards"].as_array().unwrap().len(), 2);

    // Members a budget excludes are counted as such, not silently absent.
    let mut budget = cfg(0, 1);
    budget.constraints.max_params = kdscout::search::Count(300_000);
    search(&budget, &out("budget"), None);
    let (records, report) = merge_shards(&[out("budget")], &out("m10"), false).unwrap();
    assert!(report.complete && report.over_budget > 0);
    assert_eq!(records.len() as u64 + report.over_budget, 64);
    let tail = format!("of 64 members of resnet_d ({} over the budget, not scored)", report.over_budget);
    assert!(report.holds().ends_with(&tail), "{}", report.holds());

    // The teacher is its content: the same weights under another path (another machine) merge,
    // other weights do not.
    let teacher = |i: u64, path: &str, sha: &str| {
        let mut c = cfg(i, 2);
        (c.teacher_weights, c.teacher_weights_sha256) = (path.into(), sha.into());
        c
    };
    search(&teacher(0, "/machine-a/t.safetensors", "ab"), &out("ta"), None);
    search(&teacher(1, "/machine-b/t.safetensors", "ab"), &out("tb"), None);
    merge_shards(&[out("ta"), out("tb")], &out("m11"), false).unwrap();
    search(&teacher(1, "/machine-a/t.safetensors", "cd"), &out("tc"), Some(1));
    let e = err(merge_shards(&[out("ta"), out("tc")], &out("m12"), true));
    assert!(e.contains("teacher_weights_sha256: \"ab\" -> \"cd\""), "{e}");

    // Complete shards merge into the whole space, printed and in merge.json.
    let exe = env!("CARGO_BIN_EXE_kdscout");
    search_resume(&dirs[1]);
    let merged = out("whole");
    let cli = Command::new(exe).args(["merge", "--out", merged.to_str().unwrap()]).args(&dirs).output().unwrap();
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{stdout}{}", String::from_utf8_lossy(&cli.stderr));
    assert!(stdout.contains("merged 3 of 3 shards: 64 candidates; holds 64 of 64 members of resnet_d"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("merge.json")).unwrap()).unwrap();
    assert_eq!(json["complete"], true);
    assert_eq!(json["members"], 64);
    // The same merge whatever the order of the directories.
    let reversed: Vec<PathBuf> = dirs.iter().rev().cloned().collect();
    merge_shards(&reversed, &out("whole-reversed"), false).unwrap();
    let results = |d: &Path| std::fs::read_to_string(d.join("results.jsonl")).unwrap();
    assert_eq!(results(&merged), results(&out("whole-reversed")));
    // The CLI refuses a partial merge with a non-zero exit, and --allow-partial says it is partial.
    let cli = Command::new(exe).args(["merge", "--out", out("m8").to_str().unwrap()]).arg(&dirs[0]).output().unwrap();
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(!cli.status.success() && stderr.contains("shards 1/3, 2/3 are missing"), "{stderr}");
    let cli = Command::new(exe)
        .args(["merge", "--allow-partial", "--out", out("m9").to_str().unwrap()])
        .arg(&dirs[0])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{stdout}{}", String::from_utf8_lossy(&cli.stderr));
    assert!(stdout.contains("holds 22 of 64 members of resnet_d: shard 1/3 missing, shard 2/3 missing"), "{stdout}");
    assert!(String::from_utf8_lossy(&cli.stderr).contains("incomplete"));
}

/// Finishes the stopped shard the way the refusal says.
fn search_resume(dir: &Path) {
    let c = kdscout::search::config::parse_file(&dir.join("config.resolved.toml")).unwrap();
    run::run(&c, dir, &RunOptions { resume: true, max_steps: None, progress: Progress::Quiet }).unwrap();
}

#[test]
fn merge_into_a_directory_another_process_writes_is_refused() {
    let t = TempDir::new("merge-lock");
    let (a, b) = (t.join("s0"), t.join("s1"));
    search(&cfg(0, 2), &a, None);
    search(&cfg(1, 2), &b, None);
    let out = t.join("merged");
    // This process holds the output directory, as a running command would.
    let held = kdscout::run_lock::RunLock::acquire(&out).unwrap();
    let e = err(merge_shards(&[a.clone(), b.clone()], &out, false));
    assert!(e.contains("in use") && e.contains(&std::process::id().to_string()), "{e}");
    assert!(!out.join("results.jsonl").exists());
    drop(held);
    let (records, report) = merge_shards(&[a, b], &out, false).unwrap();
    assert_eq!((records.len(), report.complete), (64, true));
}
