//! `kdscout score` and `kdscout correlate` as a user runs them.

use std::path::PathBuf;
use std::process::{Command, Output};

fn kdscout(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdscout")).args(args).output().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kdscout-score-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(run: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "failed:\n{out}\n{err}");
    out.into_owned()
}

/// A run that wrote every record but had failed candidates: exit code 3 and a one-line summary.
fn finished_with_errors(run: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert_eq!(run.status.code(), Some(3), "expected exit 3:\n{out}\n{err}");
    assert!(err.contains("candidates had errors") && !err.contains("panicked"), "{err}");
    out.into_owned()
}

fn error_of(run: &Output) -> String {
    assert_eq!(run.status.code(), Some(1), "expected a clean error exit");
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "{err}");
    err
}

#[test]
fn candidates_stream_into_results_with_errors_recorded_per_candidate() {
    let dir = tmp("cands");
    let cands = dir.join("cands.txt");
    let nb201 = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|none~1|avg_pool_3x3~2|";
    std::fs::write(
        &cands,
        format!("# two students and a typo\nresnet8\n{nb201}\n|bad_op~0|+|none~0|none~1|+|none~0|none~1|none~2|\n"),
    )
    .unwrap();
    let out = dir.join("run");
    let args = |out: &PathBuf| -> Vec<String> {
        ["score", "--teacher", "resnet14", "--candidates", cands.to_str().unwrap(), "--proxies", "diswot,params,nwot"]
            .iter()
            .map(|s| s.to_string())
            .chain(
                ["--batch", "8", "--seed", "5", "--json", "--out", out.to_str().unwrap()].iter().map(|s| s.to_string()),
            )
            .collect()
    };
    let a: Vec<String> = args(&out);
    let stdout = finished_with_errors(&kdscout(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(stdout.lines().count(), 3, "--json prints one record a line");
    assert_eq!(lines[0]["arch"], "resnet8");
    assert_eq!(lines[0]["teacher"], "resnet14");
    assert_eq!(lines[0]["status"], "ok");
    assert!(lines[0]["scores"]["diswot"]["score"].as_f64().unwrap() < 0.0);
    assert!(lines[0]["scores"]["diswot"]["terms"]["semantic"].is_number());
    assert_eq!(lines[1]["arch"], nb201);
    assert!(lines[1]["params_m"].as_f64().unwrap() > 0.0);
    // The malformed cell is recorded as an error naming the bad token; the run goes on.
    assert_eq!(lines[2]["status"], "error");
    assert!(lines[2]["scores"]["diswot"]["score"].is_null());
    assert!(lines[2]["scores"]["diswot"]["error"].as_str().unwrap().contains("bad_op"), "{}", lines[2]);
    let config = std::fs::read_to_string(out.join("config.resolved.toml")).unwrap();
    assert!(config.contains("seed = 5") && config.contains("batch = 8") && config.contains("diswot"), "{config}");

    // Same seed, same scores (bit for bit), in a second run directory.
    let out2 = dir.join("run2");
    finished_with_errors(&kdscout(&args(&out2).iter().map(String::as_str).collect::<Vec<_>>()));
    let again = std::fs::read_to_string(out2.join("results.jsonl")).unwrap();
    let first: Vec<serde_json::Value> = again.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (a, b) in lines.iter().zip(&first) {
        assert_eq!(a["scores"]["diswot"]["score"], b["scores"]["diswot"]["score"]);
        assert_eq!(a["scores"]["nwot"]["score"], b["scores"]["nwot"]["score"]);
    }

    // Correlate those scores with a made-up truth where resnet8 is best.
    let truth = dir.join("truth.csv");
    std::fs::write(&truth, format!("arch,acc\nresnet8,70.5\n\"{nb201}\",60.25\n")).unwrap();
    let res = out.join("results.jsonl");
    let c =
        ok(&kdscout(&["correlate", "--scores", res.to_str().unwrap(), "--truth", truth.to_str().unwrap(), "--json"]));
    let rows: Vec<serde_json::Value> = c.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let params = rows.iter().find(|r| r["proxy"] == "params").unwrap();
    assert_eq!(params["n"], 2);
    // resnet8 (0.078M) is smaller than the NB201 cell: params ranks them the wrong way round.
    assert_eq!(params["spearman"].as_f64().unwrap(), -1.0);
    let err = error_of(&kdscout(&[
        "correlate",
        "--scores",
        res.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--column",
        "top1",
    ]));
    assert!(err.contains("top1") && err.contains("acc"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dump_writes_everything_needed_to_recompute_a_score() {
    let dir = tmp("dump");
    let d = dir.join("dump");
    ok(&kdscout(&[
        "score",
        "--teacher",
        "resnet8",
        "--student",
        "resnet_d111",
        "--batch",
        "4",
        "--dump",
        d.to_str().unwrap(),
    ]));
    for f in ["batch.safetensors", "teacher.safetensors", "student_resnet_d111.safetensors", "terms_resnet_d111.json"] {
        assert!(d.join(f).is_file(), "missing {f}");
    }
    let batch = kdscout::weights::load(d.join("batch.safetensors")).unwrap();
    let names: Vec<&str> = batch.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["images", "labels"]);
    assert_eq!(batch.tensors[0].1.dims(), &[4, 3, 32, 32]);
    let teacher = kdscout::weights::load(d.join("teacher.safetensors")).unwrap();
    assert!(teacher.tensors.iter().any(|(n, _)| n == "layer1.0.conv1.weight"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_requests_are_clear_errors() {
    let e = error_of(&kdscout(&["score", "--student", "resnet8", "--proxies", "diswot"]));
    assert!(e.contains("--teacher"), "{e}");
    let e = error_of(&kdscout(&["score", "--student", "resnet8", "--proxies", "synflw"]));
    assert!(e.contains("synflw") && e.contains("grad_norm"), "{e}");
    let e = error_of(&kdscout(&["score", "--student", "resnet8", "--data", "imagenet"]));
    assert!(e.contains("imagenet") && e.contains("builtin"), "{e}");
    let e = error_of(&kdscout(&["score", "--student", "resnet8", "--batch", "100000"]));
    assert!(e.contains("--batch"), "{e}");
    let e = error_of(&kdscout(&["score", "--teacher", "resnet8", "--student", "resnet8", "--init", "xavier"]));
    assert!(e.contains("xavier"), "{e}");
}

#[test]
fn models_reads_a_searched_winner_and_any_buildable_name() {
    let dir = tmp("models-arch");
    let out = dir.join("run");
    ok(&kdscout(&[
        "search",
        "--space",
        "resnet_d",
        "--algo",
        "random",
        "--evaluations",
        "3",
        "--teacher",
        "resnet8",
        "--proxy",
        "params",
        "--data",
        "synthetic",
        "--batch",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]));
    let arch = out.join("best/arch.json");
    let a: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&arch).unwrap()).unwrap();
    let name = a["arch"].as_str().unwrap();
    let json = ok(&kdscout(&["models", "--arch", arch.to_str().unwrap(), "--json"]));
    let row: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(row["name"], name);
    assert_eq!(row["params"], a["params"], "models and the search agree on the winner's size");
    assert_eq!(row["macs"], a["flops"]);
    let nb = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|";
    let row: serde_json::Value =
        serde_json::from_str(ok(&kdscout(&["models", "--model", nb, "--classes", "10", "--json"])).trim()).unwrap();
    assert_eq!(row["params"], 1_531_546, "NAS-Bench-201's largest cell, 10 classes");
    let e = error_of(&kdscout(&["models", "--arch", "/nonexistent/arch.json"]));
    assert!(e.contains("/nonexistent/arch.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn correlate_says_what_matched_refuses_duplicates_and_explains_undefined_values() {
    let dir = tmp("correlate");
    let rec = |arch: &str, scores: &[(&str, f64)]| {
        let s: Vec<String> =
            scores.iter().map(|(p, v)| format!("\"{p}\":{{\"score\":{v},\"higher_is_better\":true}}")).collect();
        format!("{{\"arch\":\"{arch}\",\"scores\":{{{}}}}}\n", s.join(","))
    };
    // `flat` is constant, `lone` has one score in the truth, `x` is not in the truth.
    let body = [
        rec("a", &[("p", 1.0), ("flat", 5.0), ("lone", 1.0)]),
        rec("b", &[("p", 2.0), ("flat", 5.0)]),
        rec("c", &[("p", 3.0), ("flat", 5.0)]),
        rec("x", &[("p", 4.0), ("flat", 5.0)]),
    ]
    .concat();
    let scores = dir.join("scores.jsonl");
    std::fs::write(&scores, &body).unwrap();
    let truth = dir.join("truth.csv");
    std::fs::write(&truth, "arch,acc\na,1\nb,2\nc,4\nz,9\n").unwrap();
    let (s, t) = (scores.to_str().unwrap(), truth.to_str().unwrap());
    let table = ok(&kdscout(&["correlate", "--scores", s, "--truth", t]));
    assert!(
        table.contains("matched 3 architectures: 4 scored, 4 in the truth; scored but not in the truth: 1 (x); in the truth but not scored: 1 (z)"),
        "{table}"
    );
    assert!(row_of(&table, "flat").contains("n/a (constant scores)") && !table.contains("NaN"), "{table}");
    assert!(row_of(&table, "lone").contains("n/a (1 pair with the truth, need 2)"), "{table}");
    assert!(row_of(&table, "p ").contains("1.0000"), "{table}");
    let json = kdscout(&["correlate", "--scores", s, "--truth", t, "--json"]);
    let rows: Vec<serde_json::Value> = ok(&json).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(String::from_utf8_lossy(&json.stderr).contains("matched 3 architectures"));
    let get = |p: &str| rows.iter().find(|r| r["proxy"] == p).unwrap().clone();
    assert_eq!(
        (get("flat")["spearman"].clone(), get("flat")["note"].clone()),
        (serde_json::Value::Null, "n/a (constant scores)".into())
    );
    assert_eq!(
        (get("p")["n"].as_u64(), get("p")["spearman"].as_f64(), get("p")["note"].is_null()),
        (Some(3), Some(1.0), true)
    );
    assert_eq!((get("p")["scored_not_in_truth"].as_u64(), get("p")["truth_not_scored"].as_u64()), (Some(1), Some(1)));
    // Constant truth is named as such.
    let flat_truth = dir.join("flat.csv");
    std::fs::write(&flat_truth, "arch,acc\na,1\nb,1\nc,1\n").unwrap();
    let table = ok(&kdscout(&["correlate", "--scores", s, "--truth", flat_truth.to_str().unwrap()]));
    assert!(row_of(&table, "p ").contains("n/a (constant truth)"), "{table}");

    // A second record of `a` (line 5): an error naming both lines, or the record the flag picks.
    std::fs::write(&scores, format!("{body}{}", rec("a", &[("p", 10.0), ("flat", 5.0)]))).unwrap();
    let e = error_of(&kdscout(&["correlate", "--scores", s, "--truth", t]));
    assert!(e.contains("scores.jsonl:5") && e.contains("lines 1 and 5") && e.contains("--duplicates"), "{e}");
    let last = kdscout(&["correlate", "--scores", s, "--truth", t, "--duplicates", "last"]);
    assert!(row_of(&ok(&last), "p ").contains("-0.5000"), "a=10 puts the worst first");
    let said = String::from_utf8_lossy(&last.stderr);
    assert!(said.contains("'a' has records on lines 1, 5: used line 5 (--duplicates last)"), "{said}");
    let first = kdscout(&["correlate", "--scores", s, "--truth", t, "--duplicates", "first"]);
    assert!(row_of(&ok(&first), "p ").contains("1.0000"));
    assert!(String::from_utf8_lossy(&first.stderr).contains("used line 1 (--duplicates first)"));
    // A file appended to itself: the first few duplicates, then a count.
    let many: String = (0..8).map(|i| rec(&format!("m{i}"), &[("p", 1.0)])).collect();
    std::fs::write(&scores, format!("{body}{many}{many}")).unwrap();
    let said = kdscout(&["correlate", "--scores", s, "--truth", t, "--duplicates", "last"]);
    let said = String::from_utf8_lossy(&said.stderr).into_owned();
    assert_eq!(said.matches("has records on lines").count(), 5, "{said}");
    assert!(said.contains("... and 3 more architectures with several records"), "{said}");

    // No architecture in common: an error showing both sides.
    std::fs::write(&scores, &body).unwrap();
    let other = dir.join("other.csv");
    std::fs::write(&other, "arch,acc\nq,1\nr,2\n").unwrap();
    let e = error_of(&kdscout(&["correlate", "--scores", s, "--truth", other.to_str().unwrap()]));
    assert!(e.contains("scores: 4 (a, b, c, x)") && e.contains("truth: 2 (q, r)"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn row_of(table: &str, name: &str) -> String {
    table.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string()
}
