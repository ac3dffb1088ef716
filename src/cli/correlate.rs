//! `kdscout correlate`: how well each proxy in a `results.jsonl` ranks candidates against a
//! ground-truth CSV (e.g. trained or distilled accuracies): Spearman ρ, Kendall τ-b, Pearson r
//! and precision@k over the candidates present in both, with their number n.
//!
//! It says which candidates matched (and names the first few that did not, on both sides),
//! refuses an architecture scored twice unless `--duplicates first|last` picks a record, and
//! prints `n/a (reason)` where a correlation is undefined (constant scores or truth, too few
//! pairs) instead of a bare NaN; `--json` carries the reason in `note`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::error::io_err;
use crate::error::{Error, Result};
use crate::invalid_err;
use crate::proxy::rank;

#[derive(Args, Debug, Clone)]
pub struct CorrelateArgs {
    /// results.jsonl of `kdscout score` or `kdscout search`.
    #[arg(long)]
    pub scores: PathBuf,
    /// CSV with a header row holding the key and the ground-truth column.
    #[arg(long)]
    pub truth: PathBuf,
    /// Column of the CSV that names the candidate (matched against each record's `arch`).
    #[arg(long, default_value = "arch")]
    pub key: String,
    /// Column of the CSV with the ground truth (higher is better).
    #[arg(long, default_value = "acc")]
    pub column: String,
    /// Share of candidates counted as the top for precision@k.
    #[arg(long, default_value_t = 0.1)]
    pub top: f64,
    /// One JSON object per proxy instead of a table (the match summary goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// An architecture with several records in the scores: an error (naming the lines), or use
    /// the first or the last record (said on stderr).
    #[arg(long, value_enum, default_value_t = Duplicates::Error)]
    pub duplicates: Duplicates,
    /// A rank-aggregated ensemble of proxies of the scores file, e.g. `synflow+nwot+params`
    /// (repeatable): each candidate scored by every member gets Σ ln(rank/n) over the members,
    /// ranks ascending among those candidates (ties averaged), as AZ-NAS aggregates its
    /// components; reported as the proxy `ensemble:synflow+nwot+params`.
    #[arg(long, value_name = "A+B+...")]
    pub ensemble: Vec<String>,
}

/// Adds the rank-aggregated ensemble `spec` (`a+b+c`, or `ensemble:a+b+c`) to `scores` as the
/// proxy `ensemble:a+b+c`; returns its name.
pub fn add_ensemble(scores: &mut Scores, spec: &str) -> Result<String> {
    let members: Vec<&str> = spec.strip_prefix("ensemble:").unwrap_or(spec).split('+').map(str::trim).collect();
    let name = format!("ensemble:{}", members.join("+"));
    if members.len() < 2 || members.iter().any(|m| m.is_empty()) {
        invalid_err!(
            "--ensemble",
            "'{spec}' is not an ensemble: name two or more proxies joined by +, e.g. synflow+nwot+params"
        );
    }
    let mut columns = Vec::new();
    for m in &members {
        let Some(by_arch) = scores.by_proxy.get(*m) else {
            let known: Vec<&str> = scores.by_proxy.keys().map(String::as_str).collect();
            invalid_err!("--ensemble", "'{m}' has no scores in the file; it holds {}", known.join(", "));
        };
        columns.push(by_arch);
    }
    let archs: Vec<&String> = scores.archs.iter().filter(|a| columns.iter().all(|c| c.contains_key(*a))).collect();
    if archs.is_empty() {
        invalid_err!("--ensemble", "no candidate has a score of every member of {name}");
    }
    let n = archs.len() as f64;
    let mut total = vec![0.0f64; archs.len()];
    for c in &columns {
        let values: Vec<f64> = archs.iter().map(|a| c[*a]).collect();
        for (t, r) in total.iter_mut().zip(rank::average_ranks(&values)) {
            *t += (r / n).ln();
        }
    }
    let column = archs.into_iter().cloned().zip(total).collect();
    scores.by_proxy.insert(name.clone(), column);
    Ok(name)
}

/// What to do with an architecture that has several records in the scores file.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Duplicates {
    #[default]
    Error,
    First,
    Last,
}

/// Agreement of one proxy with the truth.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Agreement {
    pub proxy: String,
    pub n: usize,
    pub spearman: f64,
    pub kendall_tau_b: f64,
    pub pearson: f64,
    pub precision_at_top: f64,
    pub top: f64,
    /// Architectures with a score for this proxy that the truth file lacks.
    pub scored_not_in_truth: usize,
    /// Architectures of the truth file without a score for this proxy (absent, or null: error
    /// or non-finite).
    pub truth_not_scored: usize,
    /// Why a value is n/a (NaN, `null` in JSON), or a caveat; None when every value is defined.
    pub note: Option<String>,
}

fn data_err(path: &Path, line: usize, detail: impl Into<String>) -> Error {
    Error::data(format!("{}:{line}", path.display()), detail)
}

/// Splits one CSV line, honouring double quotes (NB201 strings need none, but spreadsheets add them).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

/// key → truth value from a CSV file.
pub fn read_truth(path: &Path, key: &str, column: &str) -> Result<HashMap<String, f64>> {
    let text = std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| data_err(path, 1, "empty file: expected a header row"))?;
    let header = csv_fields(header);
    let find = |name: &str, flag: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            data_err(path, 1, format!("no column '{name}' (columns: {}); choose one with {flag}", header.join(", ")))
        })
    };
    let (ki, vi) = (find(key, "--key")?, find(column, "--column")?);
    let mut truth = HashMap::new();
    for (i, line) in lines {
        let f = csv_fields(line);
        let (Some(k), Some(v)) = (f.get(ki), f.get(vi)) else {
            return Err(data_err(path, i + 1, format!("{} fields, the header has {}", f.len(), header.len())));
        };
        let v: f64 =
            v.parse().map_err(|_| data_err(path, i + 1, format!("'{v}' in column '{column}' is not a number")))?;
        if truth.insert(k.clone(), v).is_some() {
            return Err(data_err(path, i + 1, format!("'{k}' appears twice")));
        }
    }
    Ok(truth)
}

/// How many names of a list a message shows before "...".
const SHOWN: usize = 5;

/// `n (a, b, c, ...)`: a count and the first few names.
fn some_of(names: &[&str]) -> String {
    let more = if names.len() > SHOWN { ", ..." } else { "" };
    format!("{} ({}{more})", names.len(), names[..names.len().min(SHOWN)].join(", "))
}

/// A results.jsonl, read.
pub struct Scores {
    /// proxy → (arch → signed score, higher better); null scores (nonfinite, error) left out.
    pub by_proxy: BTreeMap<String, HashMap<String, f64>>,
    /// Every architecture with a record, once, in file order.
    pub archs: Vec<String>,
    /// With `--duplicates first|last`: which line was used for each architecture with several.
    pub used: Vec<String>,
}

/// Reads the records of `path`; an architecture with several records is an error naming both
/// lines, or (first/last) the record on the first or last of its lines.
pub fn read_scores(path: &Path, duplicates: Duplicates) -> Result<Scores> {
    let text = std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
    // arch → (line of the record used, its signed scores), and every line of duplicated archs.
    let mut chosen: HashMap<String, (usize, Vec<(String, f64)>)> = HashMap::new();
    let mut archs = Vec::new();
    let mut dup_lines: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| data_err(path, i + 1, format!("not a JSON record ({e})")))?;
        let arch = v["arch"].as_str().ok_or_else(|| data_err(path, i + 1, "record has no \"arch\""))?;
        let Some(scores) = v["scores"].as_object() else {
            return Err(data_err(path, i + 1, "record has no \"scores\" object"));
        };
        let mut signed: Vec<(String, f64)> = scores
            .iter()
            .filter_map(|(proxy, o)| {
                let sign = if o["higher_is_better"].as_bool() == Some(false) { -1.0 } else { 1.0 };
                o["score"].as_f64().map(|s| (proxy.clone(), sign * s))
            })
            .collect();
        // The honest baselines beside every proxy: the record's own size and cost (millions),
        // unless the run scored them as proxies already.
        for (baseline, field) in [("params", "params_m"), ("flops", "flops_m")] {
            if let (false, Some(v)) = (scores.contains_key(baseline), v[field].as_f64()) {
                signed.push((baseline.to_string(), v));
            }
        }
        let Some((first, kept)) = chosen.get_mut(arch) else {
            chosen.insert(arch.to_string(), (i + 1, signed));
            archs.push(arch.to_string());
            continue;
        };
        dup_lines.entry(arch.to_string()).or_insert_with(|| vec![*first]).push(i + 1);
        match duplicates {
            Duplicates::Error => {
                return Err(data_err(
                    path,
                    i + 1,
                    format!(
                        "'{arch}' has a second record (lines {first} and {}); keep one record per architecture, or pass --duplicates first|last",
                        i + 1
                    ),
                ))
            }
            Duplicates::First => {}
            Duplicates::Last => (*first, *kept) = (i + 1, signed),
        }
    }
    let mut by_proxy: BTreeMap<String, HashMap<String, f64>> = BTreeMap::new();
    let mut used = Vec::new();
    for (arch, lines) in &dup_lines {
        let (line, _) = &chosen[arch];
        let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        used.push(format!("'{arch}' has records on lines {}: used line {line}", lines.join(", ")));
    }
    for (arch, (_, signed)) in chosen {
        for (proxy, s) in signed {
            by_proxy.entry(proxy).or_default().insert(arch.clone(), s);
        }
    }
    if by_proxy.is_empty() {
        return Err(Error::data(path.display().to_string(), "no scored records"));
    }
    Ok(Scores { by_proxy, archs, used })
}

fn constant(v: &[f64]) -> bool {
    v.iter().all(|a| *a == v[0])
}

/// Why some values are undefined (NaN), or a caveat on defined ones.
fn note(x: &[f64], y: &[f64], values: &[(&str, f64)]) -> Option<String> {
    let nan: Vec<&str> = values.iter().filter(|(_, v)| v.is_nan()).map(|(n, _)| *n).collect();
    if nan.is_empty() {
        return (x.len() == 2).then(|| "only 2 pairs: every correlation is +1 or -1".to_string());
    }
    let why = match (constant(x), constant(y)) {
        (true, true) => "constant scores and truth",
        (true, false) => "constant scores",
        (false, true) => "constant truth",
        // Not reached by the statistics of `rank` (they rescale); kept so no NaN goes unexplained.
        (false, false) => "numerically undefined",
    };
    Some(if nan.len() == values.len() { format!("n/a ({why})") } else { format!("{} n/a ({why})", nan.join(", ")) })
}

pub fn agreements(scores: &Scores, truth: &HashMap<String, f64>, top: f64) -> Result<Vec<Agreement>> {
    let mut out = Vec::new();
    for (proxy, by_arch) in &scores.by_proxy {
        let mut pairs: Vec<(&String, f64, f64)> =
            by_arch.iter().filter_map(|(a, s)| truth.get(a).map(|t| (a, *s, *t))).collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        let (x, y): (Vec<f64>, Vec<f64>) = pairs.iter().map(|(_, s, t)| (*s, *t)).unzip();
        let scored_not_in_truth = by_arch.len() - x.len();
        let truth_not_scored = truth.len() - x.len();
        let mut row = Agreement {
            proxy: proxy.clone(),
            n: x.len(),
            spearman: f64::NAN,
            kendall_tau_b: f64::NAN,
            pearson: f64::NAN,
            precision_at_top: f64::NAN,
            top,
            scored_not_in_truth,
            truth_not_scored,
            note: None,
        };
        if x.len() < 2 {
            row.note =
                Some(format!("n/a ({} pair{} with the truth, need 2)", x.len(), if x.len() == 1 { "" } else { "s" }));
        } else {
            row.spearman = rank::spearman(&x, &y)?;
            row.kendall_tau_b = rank::kendall_tau_b(&x, &y)?;
            row.pearson = rank::pearson(&x, &y)?;
            // With constant scores or truth a top k is only the file order: n/a as well.
            row.precision_at_top =
                if constant(&x) || constant(&y) { f64::NAN } else { rank::precision_at_top(&x, &y, top)? };
            let values = [
                ("spearman", row.spearman),
                ("kendall", row.kendall_tau_b),
                ("pearson", row.pearson),
                ("precision", row.precision_at_top),
            ];
            row.note = note(&x, &y, &values);
        }
        out.push(row);
    }
    Ok(out)
}

/// What matched between the scores and the truth: counts and the first few unmatched names.
fn match_summary(scores: &Scores, truth: &HashMap<String, f64>, truth_path: &Path) -> Result<String> {
    let not_in_truth: Vec<&str> = scores.archs.iter().filter(|a| !truth.contains_key(*a)).map(|a| a.as_str()).collect();
    let scored: std::collections::HashSet<&str> = scores.archs.iter().map(|a| a.as_str()).collect();
    let mut not_scored: Vec<&str> = truth.keys().filter(|k| !scored.contains(k.as_str())).map(|k| k.as_str()).collect();
    not_scored.sort_unstable();
    let matched = scores.archs.len() - not_in_truth.len();
    if matched == 0 {
        let mut keys: Vec<&str> = truth.keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        let archs: Vec<&str> = scores.archs.iter().map(|a| a.as_str()).collect();
        return Err(Error::data(
            truth_path.display().to_string(),
            format!(
                "none of its keys names a scored architecture (scores: {}; truth: {}); check --key and that both files spell the architectures alike",
                some_of(&archs),
                some_of(&keys)
            ),
        ));
    }
    let mut s = format!("matched {matched} architectures: {} scored, {} in the truth", scores.archs.len(), truth.len());
    if !not_in_truth.is_empty() {
        s.push_str(&format!("; scored but not in the truth: {}", some_of(&not_in_truth)));
    }
    if !not_scored.is_empty() {
        s.push_str(&format!("; in the truth but not scored: {}", some_of(&not_scored)));
    }
    Ok(s)
}

/// A value of the table: n/a for an undefined one.
fn cell(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{v:.decimals$}")
    }
}

pub fn run(args: &CorrelateArgs) -> Result<()> {
    let truth = read_truth(&args.truth, &args.key, &args.column)?;
    let mut scores = read_scores(&args.scores, args.duplicates)?;
    for spec in &args.ensemble {
        add_ensemble(&mut scores, spec)?;
    }
    // The first few, then a count (a file appended to itself would list every architecture).
    let flag = if args.duplicates == Duplicates::First { "first" } else { "last" };
    for u in scores.used.iter().take(SHOWN) {
        crate::errln!("correlate: {u} (--duplicates {flag})");
    }
    if scores.used.len() > SHOWN {
        crate::errln!("correlate: ... and {} more architectures with several records", scores.used.len() - SHOWN);
    }
    let summary = match_summary(&scores, &truth, &args.truth)?;
    let rows = agreements(&scores, &truth, args.top)?;
    if args.json {
        crate::errln!("correlate: {summary}");
        for r in &rows {
            crate::outln!("{}", serde_json::to_string(r).map_err(|e| Error::invalid("json", e.to_string()))?);
        }
    } else {
        crate::outln!("{summary}");
        crate::outln!(
            "{:<14} {:>6} {:>9} {:>9} {:>9} {:>9}",
            "proxy",
            "n",
            "spearman",
            "kendall",
            "pearson",
            format!("P@{:.0}%", args.top * 100.0)
        );
        for r in &rows {
            let note = r.note.as_ref().map_or(String::new(), |n| format!("  {n}"));
            crate::outln!(
                "{:<14} {:>6} {:>9} {:>9} {:>9} {:>9}{note}",
                r.proxy,
                r.n,
                cell(r.spearman, 4),
                cell(r.kendall_tau_b, 4),
                cell(r.pearson, 4),
                cell(r.precision_at_top, 3)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(proxy: &str, pairs: &[(&str, f64)]) -> Scores {
        let by_arch: HashMap<String, f64> = pairs.iter().map(|(a, s)| (a.to_string(), *s)).collect();
        Scores {
            by_proxy: [(proxy.to_string(), by_arch)].into(),
            archs: pairs.iter().map(|(a, _)| a.to_string()).collect(),
            used: Vec::new(),
        }
    }

    #[test]
    fn undefined_values_say_why() {
        let truth: HashMap<String, f64> = [("a", 1.0), ("b", 2.0), ("c", 3.0)].map(|(k, v)| (k.to_string(), v)).into();
        let r = &agreements(&scores("p", &[("a", 1.0), ("x", 2.0)]), &truth, 0.5).unwrap()[0];
        assert_eq!((r.n, r.note.as_deref()), (1, Some("n/a (1 pair with the truth, need 2)")));
        assert!(r.spearman.is_nan() && r.precision_at_top.is_nan());
        let r = &agreements(&scores("p", &[("a", 1.0), ("b", 1.0), ("c", 1.0)]), &truth, 0.5).unwrap()[0];
        assert_eq!(r.note.as_deref(), Some("n/a (constant scores)"));
        assert!(r.precision_at_top.is_nan(), "a top k of ties is only the file order");
    }
}
