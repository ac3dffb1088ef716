//! `kdscout correlate`: how well each proxy in a `results.jsonl` ranks candidates against a
//! ground-truth CSV (e.g. trained or distilled accuracies): Spearman ρ, Kendall τ-b, Pearson r
//! and precision@k over the candidates present in both, with their number n.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use clap::Args;
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
    /// One JSON object per proxy instead of a table.
    #[arg(long)]
    pub json: bool,
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

/// proxy → (arch → signed score, higher better), from results.jsonl lines; records whose score is
/// null (nonfinite, error) are left out.
pub fn read_scores(path: &Path) -> Result<BTreeMap<String, HashMap<String, f64>>> {
    let text = std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
    let mut out: BTreeMap<String, HashMap<String, f64>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| data_err(path, i + 1, format!("not a JSON record ({e})")))?;
        let arch = v["arch"].as_str().ok_or_else(|| data_err(path, i + 1, "record has no \"arch\""))?;
        let Some(scores) = v["scores"].as_object() else {
            return Err(data_err(path, i + 1, "record has no \"scores\" object"));
        };
        for (proxy, o) in scores {
            if let Some(s) = o["score"].as_f64() {
                let sign = if o["higher_is_better"].as_bool() == Some(false) { -1.0 } else { 1.0 };
                out.entry(proxy.clone()).or_default().insert(arch.to_string(), sign * s);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::data(path.display().to_string(), "no scored records"));
    }
    Ok(out)
}

pub fn agreements(
    scores: &BTreeMap<String, HashMap<String, f64>>,
    truth: &HashMap<String, f64>,
    top: f64,
) -> Result<Vec<Agreement>> {
    let mut out = Vec::new();
    for (proxy, by_arch) in scores {
        let mut pairs: Vec<(&String, f64, f64)> =
            by_arch.iter().filter_map(|(a, s)| truth.get(a).map(|t| (a, *s, *t))).collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        if pairs.len() < 2 {
            invalid_err!("correlate", "proxy {proxy}: only {} candidates also in the truth file (need 2)", pairs.len());
        }
        let (x, y): (Vec<f64>, Vec<f64>) = pairs.iter().map(|(_, s, t)| (*s, *t)).unzip();
        out.push(Agreement {
            proxy: proxy.clone(),
            n: x.len(),
            spearman: rank::spearman(&x, &y)?,
            kendall_tau_b: rank::kendall_tau_b(&x, &y)?,
            pearson: rank::pearson(&x, &y)?,
            precision_at_top: rank::precision_at_top(&x, &y, top)?,
            top,
        });
    }
    Ok(out)
}

pub fn run(args: &CorrelateArgs) -> Result<()> {
    let truth = read_truth(&args.truth, &args.key, &args.column)?;
    let scores = read_scores(&args.scores)?;
    let rows = agreements(&scores, &truth, args.top)?;
    if args.json {
        for r in &rows {
            crate::outln!("{}", serde_json::to_string(r).map_err(|e| Error::invalid("json", e.to_string()))?);
        }
    } else {
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
            crate::outln!(
                "{:<14} {:>6} {:>9.4} {:>9.4} {:>9.4} {:>9.3}",
                r.proxy,
                r.n,
                r.spearman,
                r.kendall_tau_b,
                r.pearson,
                r.precision_at_top
            );
        }
    }
    Ok(())
}
