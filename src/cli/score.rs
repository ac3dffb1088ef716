//! `kdscout score`: training-free scores of one student or a file of candidates against a
//! teacher, on one real batch. The teacher's view of the batch is computed once; candidates are
//! streamed (one network alive at a time) and each record is appended to `results.jsonl` and
//! flushed as soon as it exists.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::data::DataSource;
use crate::error::io_err;
use crate::error::{Error, Result};
use crate::proxy::run::{candidate_seed, format_score, score_repeated, teacher_view, CandidateRecord, TeacherSource};
use crate::proxy::{self, Candidate, InitMode, Proxy, ScoringContext};
use crate::run_lock::RunLock;
use crate::{invalid_err, Device};

#[derive(Args, Debug, Clone)]
pub struct ScoreArgs {
    /// Teacher model (zoo name, resnet_dXYZ, NB201 string or ViT name); needed by diswot and the
    /// other teacher-aware proxies.
    #[arg(long)]
    pub teacher: Option<String>,
    /// The teacher's trained weights: a kdscout model file (`import-weights`) or a `train`
    /// checkpoint (default: a randomly initialised teacher from --seed).
    #[arg(long, requires = "teacher")]
    pub teacher_weights: Option<PathBuf>,
    /// One student to score.
    #[arg(long, conflicts_with = "candidates")]
    pub student: Option<String>,
    /// A file of candidates, one model name or NB201 string a line (# comments allowed).
    #[arg(long, conflicts_with = "space")]
    pub candidates: Option<PathBuf>,
    /// Score a seeded random sample of a search space (nb201, resnet_d, resnet, vit): with
    /// --sample N, N distinct members drawn with --seed.
    #[arg(long, requires = "sample", conflicts_with = "student")]
    pub space: Option<String>,
    /// How many distinct members of --space to score.
    #[arg(long, requires = "space")]
    pub sample: Option<usize>,
    /// Average every proxy over N repeats, repeat r using seed --seed + r for the batch and every
    /// network's weights; records hold the mean as the score and its sample std [default: 1].
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Comma-separated proxies, or `all` (default: diswot with a teacher, else every proxy that
    /// needs none). `--list` shows them.
    #[arg(long)]
    pub proxies: Option<String>,
    /// builtin | cifar10:DIR | cifar100:DIR | synthetic[:N]
    #[arg(long, default_value = "builtin")]
    pub data: String,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// The one seed of the run: the scoring batch, every network's initial weights (keyed by the
    /// network, so resnet8 and resnet_d111 get the same) and any proxy randomness.
    #[arg(long, default_value_t = 0, value_parser = super::parse_seed, allow_negative_numbers = true)]
    pub seed: u64,
    /// default (each repository's init) | gaussian (N(0,1) conv/linear weights)
    #[arg(long, default_value = "default")]
    pub init: String,
    /// Classes of the networks (default: those of the data).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Print each record as one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run directory for results.jsonl and config.resolved.toml (default for --candidates:
    /// runs/score).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the exact batch, the initial weights (safetensors, PyTorch names) and every term,
    /// so any score can be recomputed in PyTorch.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// List the proxies and exit.
    #[arg(long)]
    pub list: bool,
}

/// `config.resolved.toml` of a scoring run: every setting that changes a score. A later `score
/// --out` into the same directory must match it (`kdscout_version` aside).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ResolvedConfig {
    kdscout_version: String,
    command: String,
    seed: u64,
    teacher: Option<String>,
    #[serde(default)]
    teacher_weights: Option<String>,
    #[serde(default)]
    teacher_weights_sha256: Option<String>,
    proxies: Vec<String>,
    data: String,
    batch: usize,
    init: InitMode,
    classes: usize,
    /// `--repeats` (1 for runs written before it existed).
    #[serde(default = "one")]
    repeats: usize,
    device: String,
}

fn one() -> usize {
    1
}

/// Keys that may differ between two scoring sessions of one run directory.
const NOT_COMPARED: &[&str] = &["kdscout_version", "teacher_weights"];

fn select_proxies(spec: Option<&str>, has_teacher: bool) -> Result<Vec<Box<dyn Proxy>>> {
    let all = proxy::registry();
    let chosen: Vec<Box<dyn Proxy>> = match spec {
        None if has_teacher => vec![proxy::by_name("diswot")?],
        None => all.into_iter().filter(|p| !p.info().needs_teacher).collect(),
        Some("all") => all.into_iter().filter(|p| has_teacher || !p.info().needs_teacher).collect(),
        Some(list) => list.split(',').map(|n| proxy::by_name(n.trim())).collect::<Result<_>>()?,
    };
    if let Some(p) = chosen.iter().find(|p| p.info().needs_teacher && !has_teacher) {
        invalid_err!("--proxies", "'{}' compares a student with a teacher: add --teacher NAME", p.info().name);
    }
    Ok(chosen)
}

/// The names in a `--candidates` file: one a line, `#` starts a comment (pub for the parser tests).
pub fn read_candidates(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(io_err(format!("reading candidates file {}", path.display())))?;
    let names: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err(Error::data(
            path.display().to_string(),
            "no candidates: write one model name or NB201 string a line",
        ));
    }
    Ok(names)
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    if args.list {
        for p in proxy::registry() {
            let i = p.info();
            crate::outln!("{:<12} {:<8} {}", i.name, if i.needs_teacher { "teacher" } else { "" }, i.reads);
        }
        return Ok(());
    }
    let mut names = match (&args.student, &args.candidates, &args.space, args.sample) {
        (Some(s), None, None, _) => vec![s.clone()],
        (None, Some(f), None, _) => read_candidates(f)?,
        (None, None, Some(space), Some(n)) => sample_space(space, n, args.seed)?,
        _ => invalid_err!("score", "give --student NAME, --candidates FILE, or --space SPACE --sample N"),
    };
    if args.repeats == 0 {
        invalid_err!("--repeats", "0 repeats score nothing: give 1 (the default) or more");
    }
    let proxies = select_proxies(args.proxies.as_deref(), args.teacher.is_some())?;
    let source: DataSource = args.data.parse()?;
    let init: InitMode = args.init.parse()?;
    let classes = args.classes.unwrap_or(source.num_classes());
    let teacher_sha = match &args.teacher_weights {
        Some(w) => {
            Some(crate::weights::sha256_file(w).map_err(|e| Error::invalid("--teacher-weights", e.to_string()))?)
        }
        None => None,
    };
    let cfg = ResolvedConfig {
        kdscout_version: env!("CARGO_PKG_VERSION").into(),
        command: "score".into(),
        seed: args.seed,
        teacher: args.teacher.clone(),
        teacher_weights: args.teacher_weights.as_ref().map(|w| w.display().to_string()),
        teacher_weights_sha256: teacher_sha,
        proxies: proxies.iter().map(|p| p.info().name.to_string()).collect(),
        data: source.to_string(),
        batch: args.batch,
        init,
        classes,
        repeats: args.repeats,
        device: "cpu".into(),
    };

    // The run directory: locked for the whole session; an existing run is continued only with
    // the same settings (its candidates already scored are skipped), never mixed with others.
    let many = args.candidates.is_some() || args.space.is_some();
    let out = args.out.clone().or_else(|| many.then(|| PathBuf::from("runs/score")));
    let mut results = None;
    let mut _lock = None;
    if let Some(dir) = &out {
        _lock = Some(RunLock::acquire(dir)?);
        let (done, file) = open_run(dir, &cfg)?;
        let before = names.len();
        names.retain(|n| !done.contains(n));
        if names.len() < before {
            crate::errln!(
                "score: {} of {before} candidates already scored in {} with these settings; scoring the other {}",
                before - names.len(),
                dir.display(),
                names.len()
            );
        }
        results = Some(file);
    }

    // One scoring context (batch, teacher view) per repeat; repeat r uses seed --seed + r.
    let dev = Device::Cpu;
    let mut contexts = Vec::with_capacity(args.repeats);
    for r in 0..args.repeats {
        let seed = repeat_seed(args.seed, r)?;
        let (images, labels, _) = proxy::scoring_batch(&source, args.batch, seed)?;
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
            invalid_err!("--classes", "label {bad} of {source} does not fit {classes} classes: raise --classes");
        }
        let dump = if r == 0 { args.dump.as_deref() } else { None };
        let teacher = match &args.teacher {
            Some(name) => {
                let src = TeacherSource { name, weights: args.teacher_weights.as_deref() };
                Some(teacher_view(&src, classes, seed, init, &images, &labels, |net| match dump {
                    Some(dir) => dump_weights(dir, "teacher", net, name, classes),
                    None => Ok(()),
                })?)
            }
            None => None,
        };
        contexts.push(ScoringContext { images, labels, teacher, seed });
    }
    if let Some(dir) = &args.dump {
        let ctx = &contexts[0];
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let labels_t =
            crate::Tensor::from_vec(ctx.labels.iter().map(|&l| l as f32).collect(), [ctx.labels.len()], dev)?;
        crate::weights::save(
            dir.join("batch.safetensors"),
            &[("images".into(), ctx.images.clone()), ("labels".into(), labels_t)],
            &Default::default(),
        )?;
    }

    let header = format!(
        "# data {source}, batch {}, seed {}{}, init {}, {} classes, teacher {}",
        args.batch,
        args.seed,
        if args.repeats > 1 {
            format!(" (+0..{} over {} repeats)", args.repeats - 1, args.repeats)
        } else {
            String::new()
        },
        args.init,
        classes,
        match (&args.teacher, &args.teacher_weights) {
            (Some(t), Some(w)) => format!("{t} ({})", w.display()),
            (Some(t), None) => format!("{t} (random init)"),
            (None, _) => "none".into(),
        }
    );
    if args.json {
        crate::errln!("{header}");
    } else {
        crate::outln!("{header}");
        let cells: Vec<String> = proxies.iter().map(|p| format!("{:>14}", p.info().name)).collect();
        crate::outln!("{:>9} {:>10} {}  candidate", "params(M)", "MACs(M)", cells.join(" "));
    }
    let mut failed: Vec<String> = Vec::new();
    for name in &names {
        if let Some(dir) = &args.dump {
            let cand = Candidate {
                name: name.clone(),
                num_classes: classes,
                seed: candidate_seed(args.seed, name),
                init,
                device: dev,
            };
            dump_weights(dir, &format!("student_{}", sanitize(name)), cand.build()?.as_ref(), name, classes)?;
        }
        let record = score_repeated(&contexts, name, classes, init, dev, &proxies);
        let line = serde_json::to_string(&record).map_err(|e| Error::invalid("results", e.to_string()))?;
        if let Some((f, path)) = &mut results {
            writeln!(f, "{line}")
                .and_then(|_| f.flush())
                .map_err(io_err(format!("appending to {}", path.display())))?;
        }
        if let Some(dir) = &args.dump {
            let p = dir.join(format!("terms_{}.json", sanitize(name)));
            std::fs::write(&p, &line).map_err(io_err(format!("writing {}", p.display())))?;
        }
        if args.json {
            crate::outln!("{line}");
        } else {
            print_row(&record, &proxies);
        }
        if let Some((proxy, o)) = record.scores.iter().find(|(_, o)| o.status == "error") {
            failed.push(format!("{name}: {proxy}: {}", o.error.as_deref().unwrap_or("error")));
        }
    }
    if let Some((_, path)) = &results {
        crate::errln!("results: {}", path.display());
    }
    partly_failed(&failed, names.len(), "candidates")
}

/// The seed of repeat `r`: `--seed` + r.
fn repeat_seed(seed: u64, r: usize) -> Result<u64> {
    seed.checked_add(r as u64)
        .ok_or_else(|| Error::invalid("--repeats", format!("--seed {seed} + {r} repeats passes 2^64: lower --seed")))
}

/// `--space S --sample N`: N distinct members of the space, drawn with the seed (uniformly
/// without replacement when the space can be enumerated, else by rejection of repeats).
fn sample_space(space: &str, n: usize, seed: u64) -> Result<Vec<String>> {
    let sp = crate::search::space::space_by_id(space)?;
    let mut rng = crate::rng::Rng::seed(seed ^ 0x5341_4d50_4c45); // "SAMPLE": apart from the batch's stream
    if n == 0 {
        invalid_err!("--sample", "0 members: give how many members of {space} to score");
    }
    match sp.size() {
        Some(size) if (n as u64) > size => {
            invalid_err!("--sample", "{n} members asked of {space}, which has {size}: lower --sample")
        }
        Some(size) => {
            // Floyd's sampling: n distinct indices of 0..size in n draws.
            let (mut chosen, mut order) = (HashSet::new(), Vec::with_capacity(n));
            for j in size - n as u64..size {
                let t = rng.below(j as usize + 1) as u64;
                let pick = if chosen.contains(&t) { j } else { t };
                chosen.insert(pick);
                order.push(pick);
            }
            order.into_iter().map(|i| sp.nth(i).map(|g| sp.name(&g))).collect()
        }
        None => {
            let (mut seen, mut names) = (HashSet::new(), Vec::with_capacity(n));
            while names.len() < n {
                let name = sp.name(&sp.sample(&mut rng));
                if seen.insert(name.clone()) {
                    names.push(name);
                }
            }
            Ok(names)
        }
    }
}

/// The error that ends a run whose results were all written but some of which failed (exit code
/// 3), or Ok when none did.
pub fn partly_failed(failed: &[String], total: usize, what: &str) -> Result<()> {
    match failed.first() {
        None => Ok(()),
        Some(first) => {
            // One line: the first error cut short (every record holds its whole error).
            let first: String = if first.chars().count() > 200 {
                first.chars().take(200).chain("…".chars()).collect()
            } else {
                first.clone()
            };
            Err(Error::PartlyFailed {
                summary: format!(
                    "{} of {total} {what} had errors (recorded with status \"error\"); first: {first}",
                    failed.len()
                ),
            })
        }
    }
}

/// Opens (or starts) the scoring run in `dir`: checks or writes its `config.resolved.toml` and
/// returns the candidates its `results.jsonl` already holds, and that file opened for appending.
fn open_run(dir: &Path, cfg: &ResolvedConfig) -> Result<(HashSet<String>, (std::fs::File, PathBuf))> {
    let config_path = dir.join("config.resolved.toml");
    let results_path = dir.join("results.jsonl");
    let mut done = HashSet::new();
    if config_path.is_file() {
        let stored: ResolvedConfig = crate::config::parse_file(&config_path).map_err(|e| {
            Error::invalid(
                "--out",
                format!("{e}; {} is not a `kdscout score` run: choose another --out", dir.display()),
            )
        })?;
        let diff = crate::config::differences(&stored, cfg, NOT_COMPARED)?;
        // A run that scored nothing (it failed before its first record) holds no scores to mix.
        let scored = results_path.is_file()
            && !crate::search::run::read_results_as::<CandidateRecord>(&results_path)?.is_empty();
        if !diff.is_empty() && scored {
            invalid_err!(
                "--out",
                "{} holds scores made with other settings ({}); their results.jsonl is not appended to: \
                 choose another --out, or score with the run's own settings",
                dir.display(),
                diff.join("; ")
            );
        }
        if results_path.is_file() {
            done = crate::search::run::read_results_as::<CandidateRecord>(&results_path)?
                .into_iter()
                .map(|r| r.arch)
                .collect();
        }
    } else if results_path.is_file() {
        invalid_err!(
            "--out",
            "{} holds a results.jsonl but no config.resolved.toml: its settings are unknown; choose another --out",
            dir.display()
        );
    }
    let text = toml::to_string(cfg).map_err(|e| Error::invalid("config", e.to_string()))?;
    crate::search::run::write_atomic(&config_path, &text)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_path)
        .map_err(io_err(format!("opening {}", results_path.display())))?;
    Ok((done, (f, results_path)))
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

fn dump_weights(dir: &Path, stem: &str, net: &dyn crate::models::Network, model: &str, classes: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    crate::weights::save_module(dir.join(format!("{stem}.safetensors")), net, model, classes)
}

fn print_row(r: &CandidateRecord, proxies: &[Box<dyn Proxy>]) {
    let fmt_opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    let cells: Vec<String> = proxies
        .iter()
        .map(|p| {
            let o = r.scores.get(p.info().name);
            let text = match o {
                Some(o) if o.status == "ok" => o.score.map_or("-".into(), format_score),
                Some(o) => o.status.clone(),
                None => "-".into(),
            };
            format!("{text:>14}")
        })
        .collect();
    // The name comes last and whole: NB201 strings differ only in their tails.
    crate::outln!("{:>9} {:>10} {}  {}", fmt_opt(r.params_m, 3), fmt_opt(r.flops_m, 2), cells.join(" "), r.arch);
    for (name, o) in &r.scores {
        if let Some(e) = &o.error {
            crate::errln!("  {name}: {e}");
        }
    }
}
