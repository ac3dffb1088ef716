//! `kdscout search` (a resumable student architecture search) and `kdscout merge` (joins the
//! results of `--shard i/n` runs).

use std::path::PathBuf;

use clap::Args;

use crate::search::algo::{AlgoKind, Shard};
use crate::search::config::{builder, differences, SearchConfig};
use crate::search::run::{self, Progress, RunOptions, CONFIG_FILE};
use crate::search::Count;
use crate::{Error, Result};

#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// Search space: nb201, resnet_d, resnet or vit [default: nb201].
    #[arg(long)]
    pub space: Option<String>,
    /// Teacher model (any `kdscout models` name), or "none" [default: resnet56].
    #[arg(long)]
    pub teacher: Option<String>,
    /// The teacher's trained weights: a kdscout model file (`import-weights`) or a `train`
    /// checkpoint; identified by its SHA-256 on resume [default: a teacher randomly initialised from
    /// --seed].
    #[arg(long)]
    pub teacher_weights: Option<PathBuf>,
    /// Proxy whose score is maximised: diswot, or any proxy of `kdscout score --list`
    /// [default: diswot].
    #[arg(long)]
    pub proxy: Option<String>,
    /// Parameter budget, e.g. 1M, 500k; 0 = none [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub max_params: Option<String>,
    /// MAC ("FLOPs") budget for one 32x32 image, e.g. 100M; 0 = none [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub max_flops: Option<String>,
    /// Depth budget in the space's layer count; 0 = none [default: 0].
    #[arg(long)]
    pub max_layers: Option<usize>,
    /// Distinct candidates to score; 0 = the whole enumeration (exhaustive only). Below the
    /// population size (search.population, 36) aging and generational search only sample at
    /// random. Raise it on --resume to extend a finished search [default: 1000].
    #[arg(long)]
    pub evaluations: Option<u64>,
    /// Search algorithm [default: aging].
    #[arg(long, value_enum)]
    pub algo: Option<AlgoKind>,
    /// The one seed of the run: scoring batch, every network's initial weights, the search's
    /// proposals [default: 0].
    #[arg(long, value_parser = super::parse_seed, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Scoring images: builtin, synthetic[:N], cifar10:DIR or cifar100:DIR [default: builtin].
    #[arg(long)]
    pub data: Option<String>,
    /// Images in the scoring batch [default: 64].
    #[arg(long)]
    pub batch: Option<usize>,
    /// One part of an exhaustive run: i/n (join the parts with `kdscout merge`).
    #[arg(long)]
    pub shard: Option<String>,
    /// A TOML file of settings (keys as in config.resolved.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one setting: --set search.population=50 (repeatable; applied last).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run directory (locked while the search runs; see docs/RUNS.md).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out: settings must match its config.resolved.toml, except a raised
    /// --evaluations (which extends a finished search).
    #[arg(long)]
    pub resume: bool,
    /// Plain log lines even on a terminal.
    #[arg(long)]
    pub no_progress_bar: bool,
    /// Stop after this many steps without finishing (for tests of --resume).
    #[arg(long, hide = true)]
    pub max_steps: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct MergeArgs {
    /// Run directories of the shards.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Directory for the merged results, ranking, winner, plots and merge.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Merge even when shards are missing or unfinished (the summary and merge.json say which);
    /// without it that is an error.
    #[arg(long)]
    pub allow_partial: bool,
}

/// Resolves defaults (or the stored config on --resume) < --config < flags < --set.
pub fn resolve(args: &SearchArgs) -> Result<SearchConfig> {
    let stored_path = args.out.join(CONFIG_FILE);
    let stored = if args.resume {
        run::check_resumable(&args.out)?;
        Some(crate::search::config::parse_file(&stored_path)?)
    } else {
        None
    };
    let mut b = builder(stored.as_ref().unwrap_or(&SearchConfig::default()))?;
    if let Some(path) = &args.config {
        b.merge_file(path)?;
    }
    let s = |v: &str| toml::Value::String(v.to_string());
    let int = |v: u64| toml::Value::Integer(v as i64);
    let count = |v: &str, flag: &str| Count::parse(v, flag).map(|c| int(c.0));
    if let Some(v) = &args.space {
        b.flag("space", s(v));
    }
    if let Some(v) = &args.teacher {
        b.flag("teacher", s(v));
    }
    if let Some(v) = &args.teacher_weights {
        b.flag("teacher_weights", s(&v.display().to_string()));
    }
    if let Some(v) = &args.proxy {
        b.flag("proxy", s(v));
    }
    if let Some(v) = &args.max_params {
        b.flag("constraints.max_params", count(v, "--max-params")?);
    }
    if let Some(v) = &args.max_flops {
        b.flag("constraints.max_flops", count(v, "--max-flops")?);
    }
    if let Some(v) = args.max_layers {
        b.flag("constraints.max_layers", int(v as u64));
    }
    if let Some(v) = args.evaluations {
        b.flag("evaluations", int(v));
    }
    if let Some(v) = args.algo {
        b.flag("algo", s(v.as_str()));
    }
    if let Some(v) = args.seed {
        b.flag("seed", int(v));
    }
    if let Some(v) = &args.data {
        b.flag("data", s(v));
    }
    if let Some(v) = args.batch {
        b.flag("batch_size", int(v as u64));
    }
    if let Some(v) = &args.shard {
        let sh = Shard::parse(v)?;
        b.flag("shard.index", int(sh.index));
        b.flag("shard.count", int(sh.count));
    }
    for a in &args.set {
        b.set(a)?;
    }
    let mut cfg = b.build()?;
    cfg.hash_teacher_weights()?;
    if let Some(stored) = stored {
        if stored.teacher_weights_sha256 != cfg.teacher_weights_sha256 {
            return Err(Error::invalid(
                "--teacher-weights",
                format!(
                    "the teacher differs from the one {} was started with ({} now, {} then): give the \
                     original weights with --teacher-weights, or start a new --out",
                    args.out.display(),
                    describe_teacher(&cfg),
                    describe_teacher(&stored)
                ),
            ));
        }
        // The same content under another path (a moved file or run directory) is the same teacher.
        let diff = differences(&stored, &cfg, &["evaluations", "teacher_weights"])?;
        if !diff.is_empty() {
            return Err(Error::invalid(
                "--resume",
                format!(
                    "the settings differ from {}: {}; only --evaluations may change when resuming (raise it to \
                     extend the search): every other setting changes which candidates are proposed or how they \
                     are scored, so old and new records would not be comparable. Resume with the run's own \
                     settings or start a new --out",
                    stored_path.display(),
                    diff.join("; ")
                ),
            ));
        }
        let raised = cfg.evaluations == 0 || (stored.evaluations != 0 && cfg.evaluations > stored.evaluations);
        if cfg.evaluations != stored.evaluations && !raised {
            return Err(Error::invalid(
                "--evaluations",
                format!(
                    "{} was started with --evaluations {}; a resumed search can raise its budget but not lower it",
                    args.out.display(),
                    stored.evaluations
                ),
            ));
        }
    }
    Ok(cfg)
}

fn describe_teacher(cfg: &SearchConfig) -> String {
    if cfg.teacher_weights.is_empty() {
        "a randomly initialised teacher".into()
    } else {
        format!("{} with SHA-256 {}", cfg.teacher_weights, cfg.teacher_weights_sha256)
    }
}

pub fn run(args: &SearchArgs) -> Result<()> {
    let cfg = resolve(args)?;
    let opts = RunOptions {
        resume: args.resume,
        max_steps: args.max_steps,
        progress: if args.no_progress_bar { Progress::Log } else { Progress::Auto },
    };
    let summary = run::run(&cfg, &args.out, &opts)?;
    let st = &summary.state;
    let Some(why) = &st.finished else {
        crate::outln!(
            "stopped after {} steps ({} evaluations); continue with --resume --out {}",
            st.steps,
            st.evaluations,
            args.out.display()
        );
        return Ok(());
    };
    crate::outln!(
        "search finished: {why}; {} candidates scored, {} duplicates, {} over budget",
        st.evaluations,
        st.duplicates,
        st.rejected
    );
    print_outputs(&summary.records, &cfg, &args.out);
    failed_candidates(&summary.records)
}

/// Exit code 3 with a one-line summary when some candidates errored (their records say why).
fn failed_candidates(records: &[run::SearchRecord]) -> Result<()> {
    let failed: Vec<String> = records
        .iter()
        .filter(|r| r.record.status == "error")
        .map(|r| {
            let why = r.record.scores.values().find_map(|o| o.error.clone()).unwrap_or_else(|| "error".into());
            format!("{}: {why}", r.record.arch)
        })
        .collect();
    super::score::partly_failed(&failed, records.len(), "candidates")
}

fn print_outputs(records: &[run::SearchRecord], cfg: &SearchConfig, out: &std::path::Path) {
    let limit = if records.len() <= 64 { records.len() } else { 20 };
    if cfg.algo == AlgoKind::Exhaustive || records.len() <= 64 {
        crate::out!("{}", run::ranking_table(records, &cfg.proxy, limit));
    }
    if let Some(best) = run::best_record(records) {
        crate::outln!(
            "best: {} ({} = {}, {:.3}M params, {:.1}M MACs)",
            best.record.arch,
            cfg.proxy,
            best.record
                .scores
                .get(&cfg.proxy)
                .and_then(|o| o.score)
                .map_or("-".into(), crate::proxy::run::format_score),
            best.params as f64 / 1e6,
            best.flops as f64 / 1e6
        );
    }
    crate::outln!("results: {}", out.join(run::RESULTS_FILE).display());
    crate::outln!("ranking: {}", out.join("ranking.csv").display());
    crate::outln!("winner:  {}", out.join("best").join("arch.json").display());
    crate::outln!("plots:   {}", out.join("plots").display());
}

pub fn merge(args: &MergeArgs) -> Result<()> {
    let (records, report) = crate::search::merge::merge_shards(&args.shards, &args.out, args.allow_partial)?;
    let cfg = crate::search::config::parse_file(&args.out.join(CONFIG_FILE))?;
    if !report.complete {
        crate::errln!("merge: warning: --allow-partial: the merged run is incomplete");
    }
    crate::outln!(
        "merged {} of {} shards: {} candidates; {}",
        report.shards.len(),
        report.shard_count,
        records.len(),
        report.holds()
    );
    print_outputs(&records, &cfg, &args.out);
    crate::outln!("merge:   {}", args.out.join(crate::search::merge::MERGE_FILE).display());
    Ok(())
}
