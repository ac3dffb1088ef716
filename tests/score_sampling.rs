//! `score --space S --sample N` (a seeded sample of a space, so a proxy study is one command) and
//! `score --repeats N` (mean and sample std over N seeds of batch and weights), each checked
//! against independent runs of the plain command.

use std::collections::HashSet;
use std::process::{Command, Output};

fn kdscout(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdscout")).args(args).output().unwrap()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn sample(seed: &str) -> Vec<String> {
    let o = kdscout(&[
        "score",
        "--space",
        "nb201",
        "--sample",
        "25",
        "--seed",
        seed,
        "--proxies",
        "params",
        "--data",
        "synthetic",
        "--batch",
        "2",
        "--json",
        "--out",
        &std::env::temp_dir().join(format!("kdscout-sample-{}-{seed}", std::process::id())).display().to_string(),
    ]);
    let names: Vec<String> = json_lines(&o).iter().map(|r| r["arch"].as_str().unwrap().to_string()).collect();
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("kdscout-sample-{}-{seed}", std::process::id())));
    names
}

#[test]
fn a_space_sample_is_seeded_distinct_and_valid() {
    let a = sample("3");
    assert_eq!(a.len(), 25);
    assert_eq!(a.iter().collect::<HashSet<_>>().len(), 25, "repeated members: {a:?}");
    for n in &a {
        kdscout::models::Nb201Genotype::parse(n).unwrap();
    }
    assert_eq!(a, sample("3"), "same seed, same sample");
    assert_ne!(a, sample("4"));

    let o = kdscout(&["score", "--space", "resnet_d", "--sample", "65", "--proxies", "params"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("65") && err.contains("64"), "{err}");
}

fn score(seed: &str, repeats: &str) -> serde_json::Value {
    let o = kdscout(&[
        "score",
        "--teacher",
        "resnet8",
        "--student",
        "resnet_d113",
        "--proxies",
        "diswot,l2_norm,params",
        "--data",
        "synthetic",
        "--batch",
        "4",
        "--seed",
        seed,
        "--repeats",
        repeats,
        "--json",
    ]);
    json_lines(&o).remove(0)
}

#[test]
fn repeats_are_the_mean_and_sample_std_of_single_runs() {
    let many = score("5", "3");
    let single: Vec<serde_json::Value> = ["5", "6", "7"].iter().map(|s| score(s, "1")).collect();
    for proxy in ["diswot", "l2_norm", "params"] {
        let v: Vec<f64> = single.iter().map(|r| r["scores"][proxy]["score"].as_f64().unwrap()).collect();
        let mean = v.iter().sum::<f64>() / 3.0;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
        let got = &many["scores"][proxy];
        assert!(
            (got["score"].as_f64().unwrap() - mean).abs() <= 1e-12 * mean.abs().max(1.0),
            "{proxy}: {got} vs {v:?}"
        );
        assert!((got["std"].as_f64().unwrap() - std).abs() <= 1e-9 * std.max(1.0), "{proxy}: {got} vs {v:?}");
        assert_eq!(got["repeats"], 3);
        // The first repeat is the plain run with --seed.
        assert_eq!(single[0]["scores"][proxy]["repeats"], serde_json::Value::Null);
    }
    // diswot's weights and batch change with the seed: the repeats differ.
    assert!(many["scores"]["diswot"]["std"].as_f64().unwrap() > 0.0);
    // params does not (up to the rounding of the mean).
    assert!(many["scores"]["params"]["std"].as_f64().unwrap() < 1e-12);
}

#[test]
fn correlate_puts_params_and_flops_beside_every_proxy() {
    let dir = std::env::temp_dir().join(format!("kdscout-corr-baselines-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Records as `score` writes them: one proxy scored, size and cost in the record.
    let rec = |arch: &str, s: f64, p: f64, f: f64| {
        format!(
            "{{\"arch\":\"{arch}\",\"params_m\":{p},\"flops_m\":{f},\"status\":\"ok\",\"scores\":{{\"synflow\":{{\"score\":{s},\"higher_is_better\":true,\"time_s\":0,\"status\":\"ok\"}}}}}}\n"
        )
    };
    let scores = dir.join("r.jsonl");
    let text = [rec("a", 1.0, 0.3, 5.0), rec("b", 2.0, 0.1, 7.0), rec("c", 3.0, 0.2, 6.0)].concat();
    std::fs::write(&scores, text).unwrap();
    let truth = dir.join("t.csv");
    std::fs::write(&truth, "arch,acc\na,1\nb,2\nc,3\n").unwrap();
    let o = kdscout(&["correlate", "--scores", scores.to_str().unwrap(), "--truth", truth.to_str().unwrap(), "--json"]);
    let rows = json_lines(&o);
    let rho = |name: &str| {
        rows.iter().find(|r| r["proxy"] == name).unwrap_or_else(|| panic!("no {name} row"))["spearman"].as_f64()
    };
    // By hand: synflow ranks 1,2,3 = truth; params ranks 3,1,2 (rho -0.5); flops ranks 1,3,2 (rho 0.5).
    assert_eq!(rho("synflow"), Some(1.0));
    assert_eq!(rho("params"), Some(-0.5));
    assert_eq!(rho("flops"), Some(0.5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_ensemble_sums_the_log_ranks_of_its_members() {
    let dir = std::env::temp_dir().join(format!("kdscout-corr-ensemble-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // grasp is lower-is-better in this made-up record set; d has no grasp score (nonfinite).
    let rec = |arch: &str, syn: f64, grasp: Option<f64>| {
        let g = grasp.map_or("null".to_string(), |v| v.to_string());
        format!(
            "{{\"arch\":\"{arch}\",\"scores\":{{\"synflow\":{{\"score\":{syn},\"higher_is_better\":true}},\"grasp\":{{\"score\":{g},\"higher_is_better\":false}}}}}}\n"
        )
    };
    let scores = dir.join("r.jsonl");
    let text = [rec("a", 10.0, Some(3.0)), rec("b", 30.0, Some(1.0)), rec("c", 20.0, Some(2.0)), rec("d", 5.0, None)];
    std::fs::write(&scores, text.concat()).unwrap();
    let truth = dir.join("t.csv");
    std::fs::write(&truth, "arch,acc\na,1\nb,3\nc,2\nd,0\n").unwrap();
    let o = kdscout(&[
        "correlate",
        "--scores",
        scores.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--json",
        "--ensemble",
        "synflow+grasp",
    ]);
    let rows = json_lines(&o);
    let ens = rows.iter().find(|r| r["proxy"] == "ensemble:synflow+grasp").expect("ensemble row");
    // Over a, b, c: synflow ranks 1,3,2; grasp (negated) ranks 1,3,2; sums 2ln(1/3), 0, 2ln(2/3):
    // the ensemble orders a < c < b, as the truth does.
    assert_eq!(ens["n"], 3);
    assert_eq!(ens["spearman"].as_f64(), Some(1.0));
    let e = kdscout(&[
        "correlate",
        "--scores",
        scores.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--ensemble",
        "synflow+zico",
    ]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("'zico' has no scores"));
    let _ = std::fs::remove_dir_all(&dir);
}
