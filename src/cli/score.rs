//! `kdscout score`: training-free scores of one student or a file of candidates against a
//! teacher, on one real batch. The teacher's view of the batch is computed once; candidates are
//! streamed (one network alive at a time) and each record is appended to `results.jsonl` and
//! flushed as soon as it exists.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use crate::data::DataSource;
use crate::error::io_err;
use crate::error::{Error, Result};
use crate::proxy::run::{candidate_seed, score_candidate, CandidateRecord};
use crate::proxy::{self, Candidate, InitMode, Proxy, ScoringContext, TeacherView};
use crate::{invalid_err, Device};

#[derive(Args, Debug, Clone)]
pub struct ScoreArgs {
    /// Teacher model (zoo name, resnet_dXYZ, NB201 string or ViT name); needed by diswot and the
    /// other teacher-aware proxies.
    #[arg(long)]
    pub teacher: Option<String>,
    /// One student to score.
    #[arg(long, conflicts_with = "candidates")]
    pub student: Option<String>,
    /// A file of candidates, one model name or NB201 string a line (# comments allowed).
    #[arg(long)]
    pub candidates: Option<PathBuf>,
    /// Comma-separated proxies, or `all` (default: diswot with a teacher, else every proxy that
    /// needs none). `--list` shows them.
    #[arg(long)]
    pub proxies: Option<String>,
    /// builtin | cifar10:DIR | cifar100:DIR | synthetic[:N]
    #[arg(long, default_value = "builtin")]
    pub data: String,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Drives the batch, every network's initial weights and any proxy randomness.
    #[arg(long, default_value_t = 0)]
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

#[derive(Serialize)]
struct ResolvedConfig<'a> {
    kdscout_version: &'static str,
    command: &'static str,
    seed: u64,
    teacher: Option<&'a str>,
    proxies: Vec<&'static str>,
    data: String,
    batch: usize,
    init: InitMode,
    classes: usize,
    candidates: usize,
    device: &'static str,
}

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
            println!("{:<12} {:<8} {}", i.name, if i.needs_teacher { "teacher" } else { "" }, i.reads);
        }
        return Ok(());
    }
    let names = match (&args.student, &args.candidates) {
        (Some(s), None) => vec![s.clone()],
        (None, Some(f)) => read_candidates(f)?,
        _ => invalid_err!("score", "give --student NAME or --candidates FILE"),
    };
    let proxies = select_proxies(args.proxies.as_deref(), args.teacher.is_some())?;
    let source: DataSource = args.data.parse()?;
    let init: InitMode = args.init.parse()?;
    let classes = args.classes.unwrap_or(source.num_classes());
    let (images, labels, _) = proxy::scoring_batch(&source, args.batch, args.seed)?;
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
        invalid_err!("--classes", "label {bad} of {source} does not fit {classes} classes: raise --classes");
    }
    let dev = Device::Cpu;
    let teacher = match &args.teacher {
        Some(name) => {
            let t = Candidate {
                name: name.clone(),
                num_classes: classes,
                seed: candidate_seed(args.seed, name),
                init,
                device: dev,
            };
            let net = t.build()?;
            if let Some(dir) = &args.dump {
                dump_weights(dir, "teacher", net.as_ref(), name, classes)?;
            }
            Some(TeacherView::compute(net.as_ref(), name, &images, &labels)?)
        }
        None => None,
    };
    let ctx = ScoringContext { images, labels, teacher, seed: args.seed };
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let labels_t =
            crate::Tensor::from_vec(ctx.labels.iter().map(|&l| l as f32).collect(), [ctx.labels.len()], dev)?;
        crate::weights::save(
            dir.join("batch.safetensors"),
            &[("images".into(), ctx.images.clone()), ("labels".into(), labels_t)],
            &Default::default(),
        )?;
    }

    let out = args.out.clone().or_else(|| args.candidates.as_ref().map(|_| PathBuf::from("runs/score")));
    let mut results = match &out {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating run directory {}", dir.display())))?;
            let cfg = ResolvedConfig {
                kdscout_version: env!("CARGO_PKG_VERSION"),
                command: "score",
                seed: args.seed,
                teacher: args.teacher.as_deref(),
                proxies: proxies.iter().map(|p| p.info().name).collect(),
                data: source.to_string(),
                batch: args.batch,
                init,
                classes,
                candidates: names.len(),
                device: "cpu",
            };
            let toml = toml::to_string(&cfg).map_err(|e| Error::invalid("config", e.to_string()))?;
            std::fs::write(dir.join("config.resolved.toml"), toml)
                .map_err(io_err(format!("writing {}", dir.display())))?;
            let path = dir.join("results.jsonl");
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(format!("opening {}", path.display())))?;
            Some((f, path))
        }
        None => None,
    };

    if !args.json {
        let header: Vec<String> = proxies.iter().map(|p| format!("{:>14}", p.info().name)).collect();
        println!("{:<40} {:>9} {:>10} {}", "candidate", "params(M)", "MACs(M)", header.join(" "));
    }
    for name in &names {
        let cand = Candidate {
            name: name.clone(),
            num_classes: classes,
            seed: candidate_seed(args.seed, name),
            init,
            device: dev,
        };
        if let Some(dir) = &args.dump {
            dump_weights(dir, &format!("student_{}", sanitize(name)), cand.build()?.as_ref(), name, classes)?;
        }
        let record = score_candidate(&ctx, &cand, &proxies);
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
            println!("{line}");
        } else {
            print_row(&record, &proxies);
        }
    }
    if let Some((_, path)) = &results {
        eprintln!("results: {}", path.display());
    }
    Ok(())
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
                Some(o) if o.status == "ok" => fmt_opt(o.score, 6),
                Some(o) => o.status.clone(),
                None => "-".into(),
            };
            format!("{text:>14}")
        })
        .collect();
    let arch = if r.arch.len() > 40 { format!("{}…", &r.arch[..39]) } else { r.arch.clone() };
    println!("{arch:<40} {:>9} {:>10} {}", fmt_opt(r.params_m, 3), fmt_opt(r.flops_m, 2), cells.join(" "));
    for (name, o) in &r.scores {
        if let Some(e) = &o.error {
            eprintln!("  {name}: {e}");
        }
    }
}
