//! A search run on disk. The run directory holds:
//!
//! - `config.resolved.toml`: every setting, written (atomically) before the first step;
//! - `results.jsonl`: one [`SearchRecord`] per distinct scored candidate, appended and flushed
//!   as soon as it is scored, never rewritten (a torn last line left by a killed process is cut
//!   off on resume);
//! - `state.json`: the [`SearchState`] after the last step, replaced atomically (temp + rename)
//!   after every step;
//! - at the end: `best/arch.json`, `ranking.csv`, `plots/*.svg|png`.
//!
//! Resuming reads `state.json` and the first `state.evaluations` records of `results.jsonl`
//! (the scores the state has seen). A record past them was scored by a step whose state never
//! reached the disk: the step is replayed from the saved state (same RNG position, same
//! proposal) and takes that record instead of scoring again, so a run killed at any point ends
//! with the same population, winner and results as an uninterrupted one.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::algo::{AlgoKind, Driver, Evaluator, SearchState, Step};
use super::budget::Checked;
use super::config::SearchConfig;
use super::space::{space_by_id, Genome, SearchSpace};
use crate::error::io_err as io;
use crate::proxy::run::{candidate_seed, score_candidate, teacher_view, CandidateRecord};
use crate::proxy::{self, Candidate, Proxy, ScoringContext};
use crate::run_lock::RunLock;
use crate::tensor::Tensor;
use crate::{Device, Error, Result};

pub const CONFIG_FILE: &str = "config.resolved.toml";
pub const RESULTS_FILE: &str = "results.jsonl";
pub const STATE_FILE: &str = "state.json";

/// One line of `results.jsonl`: the scoring record plus the search's view of the candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchRecord {
    pub schema: u32,
    /// 0, 1, 2, ... in the order candidates were first scored.
    pub cand_id: u64,
    pub space: String,
    /// The space's encoding of the architecture.
    pub genome: Vec<u32>,
    /// Exact parameter count and MACs of one 32x32 image.
    pub params: usize,
    pub flops: u64,
    pub layers: usize,
    pub num_classes: usize,
    /// The searched proxy's score oriented so that higher is better (null when it failed).
    pub fitness: Option<f64>,
    pub device: String,
    #[serde(flatten)]
    pub record: CandidateRecord,
}

/// `best/arch.json`: the winner, enough to rebuild it (and its initial weights: `models::build`
/// with `Rng::seed(weights_seed)`, then the `init` mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchFile {
    pub space: String,
    /// The model name `models::build` accepts.
    pub arch: String,
    pub genome: Vec<u32>,
    pub num_classes: usize,
    pub params: usize,
    pub flops: u64,
    pub layers: usize,
    pub proxy: String,
    pub score: Option<f64>,
    pub scores: BTreeMap<String, Option<f64>>,
    pub teacher: Option<String>,
    pub weights_seed: u64,
    pub init: proxy::InitMode,
    /// The initial weights (safetensors, PyTorch names) next to this file; `weights_seed` + `init`
    /// rebuild them too.
    pub weights: Option<String>,
}

impl ArchFile {
    pub fn load(path: &Path) -> Result<ArchFile> {
        let text =
            fs::read_to_string(path).map_err(|e| Error::Io { context: path.display().to_string(), source: e })?;
        serde_json::from_str(&text).map_err(|e| Error::data(path.display().to_string(), e.to_string()))
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    Log,
    Quiet,
}

pub struct RunOptions {
    pub resume: bool,
    /// Stop (without finishing) after this many steps in this process (tests simulate a crash).
    pub max_steps: Option<u64>,
    pub progress: Progress,
}

pub struct RunSummary {
    pub state: SearchState,
    pub records: Vec<SearchRecord>,
    pub out: PathBuf,
}

/// Writes `text` to `path` atomically (a killed process leaves the old or the new file).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io(format!("renaming {} to {}", tmp.display(), path.display())))
}

/// Reads `results.jsonl`, cutting off a torn last line (no trailing newline) left by a process
/// killed mid-write.
pub fn read_results(path: &Path) -> Result<Vec<SearchRecord>> {
    read_results_as(path)
}

/// [`read_results`] for any record type (`score` runs hold [`CandidateRecord`]s).
pub fn read_results_as<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = fs::read(path).map_err(io(path.display().to_string()))?;
    let complete = complete_lines(&bytes);
    if complete < bytes.len() {
        crate::errln!(
            "search: {}: dropping a partial last line ({} bytes) left by an interrupted write",
            path.display(),
            bytes.len() - complete
        );
        let f = OpenOptions::new().write(true).open(path).map_err(io(path.display().to_string()))?;
        f.set_len(complete as u64).map_err(io(path.display().to_string()))?;
    }
    parse_results(&bytes, path)
}

/// Length of the complete lines of a results file (a torn last line excluded).
fn complete_lines(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

/// The records of the complete lines of a results file's `bytes`, read from `path`; a torn last
/// line (a write in progress, or cut short) is left out and the file left as it is (`merge`
/// reads shards that may still be running).
pub fn parse_results<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<Vec<T>> {
    let text = std::str::from_utf8(&bytes[..complete_lines(bytes)])
        .map_err(|e| Error::data(path.display().to_string(), e.to_string()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::data(path.display().to_string(), format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// The scoring batch: `batch_size` images of the data source drawn with the run seed.
/// (Isolated so another data source, e.g. built-in images, plugs in here.)
pub fn scoring_batch(cfg: &SearchConfig) -> Result<(Tensor, Vec<u32>, usize, String)> {
    let source: crate::data::DataSource = cfg.data.parse()?;
    let (images, labels, classes) = crate::proxy::scoring_batch(&source, cfg.batch_size, cfg.seed)?;
    Ok((images, labels, classes, source.to_string()))
}

/// The searched proxy's score, oriented so that higher is better.
pub fn fitness_of(record: &CandidateRecord, proxy: &str) -> Option<f64> {
    let o = record.scores.get(proxy)?;
    o.score.map(|s| if o.higher_is_better { s } else { -s })
}

/// Scores new candidates and appends their records.
struct RunEvaluator<'a> {
    cfg: &'a SearchConfig,
    space: &'a dyn SearchSpace,
    ctx: ScoringContext,
    proxies: Vec<Box<dyn Proxy>>,
    num_classes: usize,
    results: File,
    results_path: PathBuf,
    /// Records on disk that the saved state had not counted yet, by architecture.
    pending: HashMap<String, SearchRecord>,
    /// Every committed record, in order.
    records: Vec<SearchRecord>,
}

impl Evaluator for RunEvaluator<'_> {
    fn evaluate(&mut self, arch: &str, genome: &Genome, checked: &Checked, cand_id: u64) -> Result<Option<f64>> {
        if let Some(rec) = self.pending.remove(arch) {
            if rec.cand_id != cand_id {
                return Err(Error::data(
                    self.results_path.display().to_string(),
                    format!("record of {arch} has cand_id {} but the run is at {cand_id}: results.jsonl does not belong to state.json", rec.cand_id),
                ));
            }
            let f = rec.fitness;
            self.records.push(rec);
            return Ok(f);
        }
        let cand = Candidate {
            name: arch.to_string(),
            num_classes: self.num_classes,
            seed: candidate_seed(self.cfg.seed, arch),
            init: self.cfg.init,
            device: Device::Cpu,
        };
        let record = score_candidate(&self.ctx, &cand, &self.proxies);
        let rec = SearchRecord {
            schema: 1,
            cand_id,
            space: self.space.id().to_string(),
            genome: self.space.encode(genome),
            params: checked.cost.params,
            flops: checked.cost.macs,
            layers: checked.layers,
            num_classes: self.num_classes,
            fitness: fitness_of(&record, &self.cfg.proxy),
            device: Device::Cpu.to_string(),
            record,
        };
        let mut line = serde_json::to_string(&rec).map_err(|e| Error::invalid("results", e.to_string()))?;
        line.push('\n');
        self.results.write_all(line.as_bytes()).map_err(io(self.results_path.display().to_string()))?;
        self.results.flush().map_err(io(self.results_path.display().to_string()))?;
        let f = rec.fitness;
        self.records.push(rec);
        Ok(f)
    }
}

/// Runs (or resumes) a search into `out`.
pub fn run(cfg: &SearchConfig, out: &Path, opts: &RunOptions) -> Result<RunSummary> {
    let space = space_by_id(&cfg.space)?;
    let proxy = proxy::by_name(&cfg.proxy)?;
    let info = proxy.info();
    if info.needs_teacher && cfg.teacher_name().is_none() {
        return Err(Error::invalid(
            "--teacher",
            format!("the {} proxy compares students with a teacher: give --teacher NAME (e.g. resnet56)", info.name),
        ));
    }
    let (images, labels, num_classes, data_name) = scoring_batch(cfg)?;
    let driver = Driver {
        space: space.as_ref(),
        kind: cfg.algo,
        cfg: cfg.search.clone(),
        constraints: cfg.constraints.clone(),
        num_classes,
        evaluations: cfg.evaluations,
        shard: cfg.shard,
    };
    driver.validate()?;

    let (config_path, results_path, state_path) = (out.join(CONFIG_FILE), out.join(RESULTS_FILE), out.join(STATE_FILE));
    if opts.resume {
        check_resumable(out)?;
    }
    // Held until this function returns: no second process writes this directory meanwhile.
    let _lock = RunLock::acquire(out)?;
    if !opts.resume && (results_path.exists() || state_path.exists()) {
        return Err(Error::invalid(
            "--out",
            format!(
                "{} already holds a search run: add --resume to continue it, or choose another --out",
                out.display()
            ),
        ));
    }
    let stored = if opts.resume { Some(super::config::parse_file(&config_path)?) } else { None };

    let all = read_results(&results_path)?;
    let mut state = if state_path.exists() {
        let text = fs::read_to_string(&state_path).map_err(io(state_path.display().to_string()))?;
        serde_json::from_str::<SearchState>(&text)
            .map_err(|e| Error::data(state_path.display().to_string(), e.to_string()))?
    } else {
        driver.initial_state(cfg.seed)
    };
    if let (Some(stored), Some(why)) = (&stored, &state.finished) {
        if cfg.evaluations != stored.evaluations {
            // Only a run that stopped at its budget can go on; the budget check comes before any
            // proposal, so the extended run continues exactly as one started with the larger budget.
            if !why.starts_with("evaluation budget") {
                return Err(Error::invalid(
                    "--evaluations",
                    format!("{} finished because {why}: a larger budget adds nothing", out.display()),
                ));
            }
            state.finished = None;
        }
    }
    if stored.as_ref() != Some(cfg) {
        // A new run, or a resumed one whose --evaluations was raised or whose teacher file moved
        // (the only changes allowed), once the change is known to be accepted.
        write_atomic(&config_path, &cfg.to_toml()?)?;
    }
    let committed = state.evaluations as usize;
    if all.len() < committed {
        return Err(Error::data(
            results_path.display().to_string(),
            format!("{} records but state.json counts {committed} scored candidates: the results file was truncated or replaced", all.len()),
        ));
    }
    let mut seen: HashMap<String, Option<f64>> = HashMap::new();
    for (i, r) in all[..committed].iter().enumerate() {
        if r.cand_id != i as u64 {
            return Err(Error::data(
                results_path.display().to_string(),
                format!("record {i} has cand_id {}", r.cand_id),
            ));
        }
        seen.insert(r.record.arch.clone(), r.fitness);
    }
    let pending = all[committed..].iter().map(|r| (r.record.arch.clone(), r.clone())).collect();
    let records = all[..committed].to_vec();

    let teacher = match cfg.teacher_source() {
        Some(src) if info.needs_teacher => {
            Some(teacher_view(&src, num_classes, cfg.seed, cfg.init, &images, &labels, |_| Ok(()))?)
        }
        _ => None,
    };
    let results = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_path)
        .map_err(io(format!("opening {}", results_path.display())))?;
    let mut ev = RunEvaluator {
        cfg,
        space: space.as_ref(),
        ctx: ScoringContext { images, labels, teacher, seed: cfg.seed },
        proxies: vec![proxy],
        num_classes,
        results,
        results_path: results_path.clone(),
        pending,
        records,
    };

    let target = match (cfg.evaluations, space.size()) {
        (0, Some(n)) => n.div_ceil(cfg.shard.count),
        (e, Some(n)) if cfg.algo == AlgoKind::Exhaustive => e.min(n.div_ceil(cfg.shard.count)),
        (e, Some(n)) => e.min(n),
        (e, None) => e,
    };
    let mut report = Reporter::new(opts.progress, target, &state);
    report.line(&format!(
        "search: {} space, {} ({}), proxy {}, teacher {}, data {data_name} ({} images, {num_classes} classes), seed {} -> {}",
        space.id(),
        cfg.algo.as_str(),
        if opts.resume { "resumed" } else { "new run" },
        cfg.proxy,
        cfg.teacher,
        cfg.batch_size,
        cfg.seed,
        out.display()
    ));
    if matches!(cfg.algo, AlgoKind::Aging | AlgoKind::Generational)
        && cfg.evaluations > 0
        && cfg.evaluations <= cfg.search.population as u64
    {
        report.line(&format!(
            "note: --evaluations {} does not exceed the population ({}): the {} search never gets past its random initial population, so this is random sampling",
            cfg.evaluations,
            cfg.search.population,
            cfg.algo.as_str()
        ));
    }
    let mut steps_here = 0u64;
    loop {
        if opts.max_steps.is_some_and(|m| steps_here >= m) {
            report.finish();
            return Ok(RunSummary { state, records: ev.records, out: out.to_path_buf() });
        }
        let step = driver.step(&mut state, &mut seen, &mut ev)?;
        steps_here += 1;
        write_atomic(&state_path, &serde_json::to_string(&state).map_err(|e| Error::invalid("state", e.to_string()))?)?;
        if let Step::Finished(_) = step {
            break;
        }
        report.update(&state);
    }
    report.finish();
    let records = ev.records;
    finish_outputs(out, cfg, space.as_ref(), num_classes, &records)?;
    Ok(RunSummary { state, records, out: out.to_path_buf() })
}

/// Checks that `out` holds a run that `--resume` can continue (its `config.resolved.toml`,
/// written before the first candidate is scored).
pub fn check_resumable(out: &Path) -> Result<()> {
    if !out.is_dir() {
        return Err(Error::invalid(
            "--resume",
            format!("{} does not exist, so there is no run to resume: drop --resume to start one", out.display()),
        ));
    }
    if !out.join(CONFIG_FILE).is_file() {
        // A run that has just started may not have written its config yet: report it as busy.
        drop(RunLock::acquire(out)?);
        return Err(Error::invalid(
            "--resume",
            format!(
                "{} holds no search run (no {CONFIG_FILE}): drop --resume to start one there, or give the run's directory",
                out.display()
            ),
        ));
    }
    Ok(())
}

/// The best record (first among equals), by fitness.
pub fn best_record(records: &[SearchRecord]) -> Option<&SearchRecord> {
    let mut best: Option<&SearchRecord> = None;
    for r in records {
        if best.is_none_or(|b| super::algo::better(r.fitness, b.fitness)) {
            best = Some(r);
        }
    }
    best
}

/// `best/arch.json`, `ranking.csv` and the plots of a finished run (or merged shards).
pub fn finish_outputs(
    out: &Path,
    cfg: &SearchConfig,
    space: &dyn SearchSpace,
    num_classes: usize,
    records: &[SearchRecord],
) -> Result<()> {
    if let Some(best) = best_record(records) {
        let dir = out.join("best");
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let arch = ArchFile {
            space: space.id().to_string(),
            arch: best.record.arch.clone(),
            genome: best.genome.clone(),
            num_classes,
            params: best.params,
            flops: best.flops,
            layers: best.layers,
            proxy: cfg.proxy.clone(),
            score: best.record.scores.get(&cfg.proxy).and_then(|o| o.score),
            scores: best.record.scores.iter().map(|(k, o)| (k.clone(), o.score)).collect(),
            teacher: best.record.teacher.clone(),
            weights_seed: best.record.seed,
            init: best.record.init,
            weights: Some("weights.safetensors".into()),
        };
        // The winner's initial weights, as the search scored them (PyTorch names).
        let cand = crate::proxy::Candidate {
            name: best.record.arch.clone(),
            num_classes,
            seed: best.record.seed,
            init: best.record.init,
            device: crate::Device::Cpu,
        };
        crate::weights::save_module(dir.join("weights.safetensors"), cand.build()?.as_ref(), &cand.name, num_classes)?;
        let text = serde_json::to_string_pretty(&arch).map_err(|e| Error::invalid("arch.json", e.to_string()))?;
        write_atomic(&dir.join("arch.json"), &(text + "\n"))?;
    }
    let mut ranked: Vec<&SearchRecord> = records.iter().collect();
    ranked.sort_by(|a, b| order(a, b));
    let mut csv = String::from("rank,arch,score,fitness,params,flops,layers,status\n");
    for (i, r) in ranked.iter().enumerate() {
        let score = r.record.scores.get(&cfg.proxy).and_then(|o| o.score);
        let show = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        csv.push_str(&format!(
            "{},\"{}\",{},{},{},{},{},{}\n",
            i + 1,
            r.record.arch,
            show(score),
            show(r.fitness),
            r.params,
            r.flops,
            r.layers,
            r.record.status
        ));
    }
    write_atomic(&out.join("ranking.csv"), &csv)?;
    super::plots::write_plots(&out.join("plots"), records, &cfg.proxy)?;
    Ok(())
}

fn order(a: &SearchRecord, b: &SearchRecord) -> std::cmp::Ordering {
    use super::algo::better;
    if better(a.fitness, b.fitness) {
        std::cmp::Ordering::Less
    } else if better(b.fitness, a.fitness) {
        std::cmp::Ordering::Greater
    } else {
        a.cand_id.cmp(&b.cand_id)
    }
}

/// A printable ranking (best first): rank, score, size, architecture.
pub fn ranking_table(records: &[SearchRecord], proxy: &str, limit: usize) -> String {
    let mut ranked: Vec<&SearchRecord> = records.iter().collect();
    ranked.sort_by(|a, b| order(a, b));
    let mut s = format!("{:>5}  {:>14}  {:>8}  {:>9}  arch\n", "rank", proxy, "params", "MMACs");
    for (i, r) in ranked.iter().take(limit).enumerate() {
        let score = r.record.scores.get(proxy).and_then(|o| o.score);
        s.push_str(&format!(
            "{:>5}  {:>14}  {:>7.3}M  {:>9.2}  {}\n",
            i + 1,
            score.map_or("-".to_string(), crate::proxy::run::format_score),
            r.params as f64 / 1e6,
            r.flops as f64 / 1e6,
            r.record.arch
        ));
    }
    s
}

/// Progress: an indicatif bar on a terminal, a plain line every 10 s otherwise.
enum Reporter {
    Bar(indicatif::ProgressBar, Instant, u64),
    Log(Instant, Instant, u64),
    Quiet,
}

impl Reporter {
    fn new(p: Progress, target: u64, st: &SearchState) -> Reporter {
        let now = Instant::now();
        match p {
            Progress::Quiet => Reporter::Quiet,
            Progress::Auto if std::io::stderr().is_terminal() => {
                let bar = indicatif::ProgressBar::new(target);
                let style = indicatif::ProgressStyle::with_template(
                    "[{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} evaluations  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_position(st.evaluations);
                Reporter::Bar(bar, now, st.evaluations)
            }
            _ => Reporter::Log(now, now, st.evaluations),
        }
    }

    fn line(&self, text: &str) {
        match self {
            Reporter::Bar(b, ..) => b.println(text),
            Reporter::Log(..) => crate::errln!("{text}"),
            Reporter::Quiet => {}
        }
    }

    fn status(st: &SearchState, start: &Instant, start_evals: u64) -> String {
        let rate = (st.evaluations - start_evals) as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let best = st.best.as_ref().map_or("-".into(), |b| b.fitness.map_or("failed".into(), |f| format!("{f:.5}")));
        format!("best {best}  {rate:.2} candidates/s  ({} duplicates, {} over budget)", st.duplicates, st.rejected)
    }

    fn update(&mut self, st: &SearchState) {
        match self {
            Reporter::Bar(b, start, e0) => {
                b.set_position(st.evaluations);
                b.set_message(Self::status(st, start, *e0));
            }
            Reporter::Log(start, last, e0) => {
                if last.elapsed().as_secs_f64() >= 10.0 {
                    *last = Instant::now();
                    crate::errln!("search: {} evaluations, {}", st.evaluations, Self::status(st, start, *e0));
                }
            }
            Reporter::Quiet => {}
        }
    }

    fn finish(&self) {
        if let Reporter::Bar(b, ..) = self {
            b.finish();
        }
    }
}

/// Merging shards lives in [`super::merge`]; kept here for existing callers.
pub use super::merge::merge;
