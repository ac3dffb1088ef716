//! A whole training run as `kdscout train` and `kdscout distill` start it: the resolved
//! [`RunConfig`] (defaults < `--config FILE` < flags < `--set key=value`, written to
//! `config.resolved.toml`), one run directory per seed, resume from `checkpoints/latest`, and
//! mean ± std over seeds in `summary.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::{load_state, load_teacher_weights, RunDir};
use super::trainer::{Recipe, Trainer};
use crate::config::{self, ConfigBuilder};
use crate::data::{DataSource, Split};
use crate::rng::Rng;
use crate::run_lock::RunLock;
use crate::{invalid_err, models, Device, Error, Result, Tensor};

/// The teacher and loss of a distillation run (the `[distill]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Teacher model name (`models::build`).
    pub teacher: String,
    /// Its trained weights: a safetensors model file or a training run's checkpoint.
    pub teacher_weights: String,
    /// SHA-256 of the `teacher_weights` file, filled in when the config is resolved: the teacher
    /// is identified by content, so a resumed run accepts the same file under another path and
    /// refuses a different file under the same path.
    #[serde(default)]
    pub teacher_weights_sha256: String,
    /// A loss of `kdscout distill --list-losses` (the registry of `distill::LOSSES`).
    pub loss: String,
    /// `γ·CE + α·KD_T + β·other`; defaults are the loss's (RepDistiller's) weights.
    pub gamma: f64,
    pub alpha: f64,
    pub beta: f64,
    /// Temperature of the KD term.
    pub kd_t: f64,
}

/// Everything that determines a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The model trained (the student): a zoo name, resnet_dXYZ, an NB201 string or a ViT name.
    pub model: String,
    /// builtin | cifar10:DIR | cifar100:DIR | synthetic[:CLASSES]
    pub data: String,
    pub seed: u64,
    pub train: Recipe,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
}

/// Keys a resumed run may change (they do not alter the trajectory of the epochs already run).
pub const RESUMABLE_CHANGES: &[&str] = &["train.epochs", "train.save_every"];

impl RunConfig {
    /// The defaults (the CIFAR recipe), with a `[distill]` table for distillation runs.
    pub fn defaults(distill: bool) -> RunConfig {
        RunConfig {
            model: String::new(),
            data: "builtin".into(),
            seed: 0,
            train: Recipe::cifar(""),
            distill: distill.then(|| DistillConfig {
                teacher: String::new(),
                teacher_weights: String::new(),
                teacher_weights_sha256: String::new(),
                loss: "kd".into(),
                gamma: 0.0,
                alpha: 0.0,
                beta: 0.0,
                kd_t: 0.0,
            }),
        }
    }

    /// Default run directory: `runs/train-MODEL` or `runs/distill-LOSS-TEACHER-STUDENT`.
    pub fn default_out(&self) -> PathBuf {
        let clean = |s: &str| -> String {
            s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
        };
        let name = match &self.distill {
            Some(d) => format!("distill-{}-{}-{}", clean(&d.loss), clean(&d.teacher), clean(&self.model)),
            None => format!("train-{}", clean(&self.model)),
        };
        PathBuf::from("runs").join(name)
    }
}

const MODEL_DEPENDENT: &[&str] = &["train.lr"];
const LOSS_DEPENDENT: &[&str] = &["distill.gamma", "distill.alpha", "distill.beta", "distill.kd_t"];

/// A config under construction: layer the sources on, then [`Resolver::finish`].
pub struct Resolver {
    builder: ConfigBuilder<RunConfig>,
}

impl Resolver {
    /// From the defaults (model-dependent values are filled in at the end), or from a stored run's
    /// config (`--resume`).
    pub fn new(distill: bool, stored: Option<&RunConfig>) -> Result<Resolver> {
        let schema = RunConfig::defaults(distill);
        let builder = match stored {
            Some(c) => ConfigBuilder::new(c, &schema, &[])?,
            None => {
                let mut b = ConfigBuilder::new(&schema, &schema, &[])?;
                for k in MODEL_DEPENDENT.iter().chain(LOSS_DEPENDENT) {
                    b.unset(k);
                }
                b
            }
        };
        Ok(Resolver { builder })
    }

    pub fn file(&mut self, path: &Path) -> Result<()> {
        self.builder.merge_file(path)
    }

    pub fn flag(&mut self, key: &str, value: impl Into<toml::Value>) {
        self.builder.flag(key, value);
    }

    pub fn set(&mut self, assignment: &str) -> Result<()> {
        self.builder.set(assignment)
    }

    /// The typed config with model- and loss-dependent defaults filled in, checked.
    pub fn finish(mut self) -> Result<RunConfig> {
        let model = self.builder.get("model").and_then(|v| v.as_str()).unwrap_or("").to_string();
        if !self.builder.has("train.lr") {
            self.builder.flag("train.lr", Recipe::cifar_lr(&model));
        }
        if let Some(loss) = self.builder.get("distill.loss").and_then(|v| v.as_str()).map(String::from) {
            let w = super::info(&loss)?.weights;
            for (k, v) in LOSS_DEPENDENT.iter().zip([w.gamma, w.alpha, w.beta, w.kd_t]) {
                if !self.builder.has(k) {
                    // Through the decimal text, so 0.1 reads back as 0.1 and not 0.10000000149.
                    self.builder.flag(k, v.to_string().parse::<f64>().unwrap_or(v as f64));
                }
            }
        }
        let mut cfg: RunConfig = self.builder.build()?;
        if let Some(d) = &mut cfg.distill {
            // A missing file is reported when the teacher is loaded, naming it.
            if Path::new(&d.teacher_weights).is_file() {
                d.teacher_weights_sha256 = crate::weights::sha256_file(Path::new(&d.teacher_weights))
                    .map_err(|e| Error::invalid("--teacher-weights", e.to_string()))?;
            }
        }
        cfg.check()?;
        Ok(cfg)
    }
}

impl RunConfig {
    /// Checks what can be checked before loading anything.
    pub fn check(&self) -> Result<()> {
        if self.model.is_empty() {
            invalid_err!("config", "no model: give --model NAME (or --student/--arch for distill)");
        }
        self.train.validate()?;
        self.data.parse::<DataSource>()?;
        if let Some(d) = &self.distill {
            if d.teacher.is_empty() {
                invalid_err!("config", "no teacher: give --teacher NAME");
            }
            if d.teacher_weights.is_empty() {
                invalid_err!(
                    "config",
                    "no teacher weights: give --teacher-weights FILE (a kdscout train checkpoint or an imported .safetensors)"
                );
            }
            super::info(&d.loss).map_err(|e| Error::invalid("--loss", e.to_string()))?;
            for (k, v) in [("gamma", d.gamma), ("alpha", d.alpha), ("beta", d.beta)] {
                if !(v.is_finite() && v >= 0.0) {
                    invalid_err!("config", "distill.{k} = {v} must be finite and >= 0");
                }
            }
            if !(d.kd_t.is_finite() && d.kd_t > 0.0) {
                invalid_err!("config", "distill.kd_t = {} must be positive", d.kd_t);
            }
        }
        Ok(())
    }
}

/// How one seed's run ended.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutcome {
    pub seed: u64,
    pub dir: PathBuf,
    pub epochs: usize,
    pub best_top1: f64,
    pub best_epoch: usize,
    pub last_top1: f64,
    pub last_top5: f64,
}

/// Mean and sample standard deviation (n − 1; 0 for one value).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

impl MeanStd {
    pub fn of(v: &[f64]) -> MeanStd {
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        MeanStd { mean, std: var.sqrt() }
    }
}

/// `summary.json` of a multi-seed run.
#[derive(Serialize)]
pub struct Summary<'a> {
    pub runs: &'a [RunOutcome],
    pub best_top1: MeanStd,
    pub last_top1: MeanStd,
}

/// The run directory of each seed: `out` itself for one seed, `out/seedN` for several.
pub fn seed_dirs(out: &Path, seeds: &[u64]) -> Vec<PathBuf> {
    if seeds.len() == 1 {
        vec![out.to_path_buf()]
    } else {
        seeds.iter().map(|s| out.join(format!("seed{s}"))).collect()
    }
}

/// Options of [`run_one`] that are not part of the config.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub resume: bool,
    /// Print one line per epoch.
    pub verbose: bool,
}

fn extra_metadata(cfg: &RunConfig) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("seed".into(), cfg.seed.to_string());
    if let Some(d) = &cfg.distill {
        m.insert("teacher".into(), d.teacher.clone());
        m.insert("loss".into(), d.loss.clone());
    }
    m
}

/// Builds the trainer a config describes (student from the seed, teacher from its weights).
pub fn build_trainer(cfg: &RunConfig, classes: usize) -> Result<Trainer> {
    let dev = Device::Cpu;
    let mut rng = Rng::seed(cfg.seed);
    let student = models::build(&cfg.model, classes, &mut rng, dev)?;
    match &cfg.distill {
        None => Trainer::new(cfg.train.clone(), student, rng),
        Some(d) => {
            let teacher = models::build(&d.teacher, classes, &mut Rng::seed(0), dev)?;
            load_teacher_weights(teacher.as_ref(), Path::new(&d.teacher_weights))?;
            let probe = Tensor::zeros([2, 3, 32, 32], dev)?;
            let mut tr = Trainer::distill(cfg.train.clone(), student, teacher, &d.loss, &probe, rng)?;
            if let Some(dist) = &mut tr.distiller {
                dist.weights.gamma = d.gamma as f32;
                dist.weights.alpha = d.alpha as f32;
                dist.weights.beta = d.beta as f32;
                dist.weights.kd_t = d.kd_t as f32;
            }
            Ok(tr)
        }
    }
}

/// Trains one seed's run in `dir` (writing `config.resolved.toml`, checkpoints, `metrics.csv` and
/// the curve), or continues it from `checkpoints/latest.safetensors` with `resume`.
pub fn run_one(cfg: &RunConfig, dir: &Path, opts: &RunOptions) -> Result<RunOutcome> {
    let source: DataSource = cfg.data.parse()?;
    if opts.resume && !dir.is_dir() {
        invalid_err!(
            "--resume",
            "{} does not exist, so there is nothing to resume: drop --resume to start a run",
            dir.display()
        );
    }
    // Held for the whole run: a second process on this directory stops at once.
    let _lock = RunLock::acquire(dir)?;
    if opts.resume && !dir.join("config.resolved.toml").is_file() {
        invalid_err!(
            "--resume",
            "{} holds no training run (no config.resolved.toml), so there is nothing to resume: drop --resume to start a run",
            dir.display()
        );
    }
    let run = RunDir::create(dir)?;
    let has_checkpoint = run.latest().is_file();
    if opts.resume {
        {
            let stored: RunConfig = config::parse_file(&run.config())?;
            if let (Some(a), Some(b)) = (&stored.distill, &cfg.distill) {
                let both = !a.teacher_weights_sha256.is_empty() && !b.teacher_weights_sha256.is_empty();
                if both && a.teacher_weights_sha256 != b.teacher_weights_sha256 {
                    invalid_err!(
                        "--teacher-weights",
                        "{} is not the teacher file {} was started with (SHA-256 {}, this file {}): give the \
                         original weights with --teacher-weights, or distil into a new --out",
                        b.teacher_weights,
                        dir.display(),
                        a.teacher_weights_sha256,
                        b.teacher_weights_sha256
                    );
                }
            }
            let diff = config::differences(&stored, cfg, &resumable_changes(&stored, cfg))?;
            if !diff.is_empty() {
                invalid_err!(
                    "--resume",
                    "{} was started with another config ({}): resume with the same settings, or train into a new --out",
                    dir.display(),
                    diff.join("; ")
                );
            }
        }
    } else if has_checkpoint {
        invalid_err!(
            "train",
            "{} already holds a run ({}): add --resume to continue it, or choose another --out",
            dir.display(),
            run.latest().display()
        );
    }
    let train = source.load(Split::Train)?;
    let test = source.load(Split::Test)?;
    let classes = source.num_classes();
    if cfg.train.batch_size > train.len() {
        invalid_err!(
            "--batch",
            "batch {} must be in 1..={} (the training images of {source})",
            cfg.train.batch_size,
            train.len()
        );
    }
    let mut tr = build_trainer(cfg, classes)?;
    tr.progress = opts.verbose;
    std::fs::write(run.config(), config::to_toml(cfg)?)
        .map_err(|e| Error::Io { context: format!("writing {}", run.config().display()), source: e })?;
    if opts.resume && has_checkpoint {
        let (ckpt, state) = load_state(&run.latest())?;
        tr.restore(&ckpt.tensors, &state)
            .map_err(|e| Error::data(run.latest().display().to_string(), e.to_string()))?;
        run.rewrite_metrics(&tr.history)?;
        if opts.verbose {
            crate::outln!("resuming {} after epoch {} of {}", dir.display(), tr.epoch, cfg.train.epochs);
        }
    } else {
        // A fresh run starts a fresh metrics file.
        let _ = std::fs::remove_file(run.metrics());
    }
    if opts.verbose {
        let what = match &cfg.distill {
            Some(d) => format!("{} from {} ({} loss)", cfg.model, d.teacher, d.loss),
            None => cfg.model.clone(),
        };
        crate::outln!(
            "training {what}: {} parameters, {} train / {} test images of {}, {} epochs, seed {}",
            crate::nn::Module::num_parameters(tr.student.as_ref()),
            train.len(),
            test.len(),
            source,
            cfg.train.epochs,
            cfg.seed
        );
    }
    // The teacher is checked before it is used: finite weights (build_trainer) and finite logits.
    if let (Some(t), Some(d)) = (tr.evaluate_teacher(&test)?, &cfg.distill) {
        if !t.loss.is_finite() {
            return Err(Error::data(
                d.teacher_weights.clone(),
                format!(
                    "the teacher {} gives non-finite logits on {} (test loss {}): these weights cannot teach; \
                     check the file, or that --teacher names the model it was trained as",
                    d.teacher, source, t.loss
                ),
            ));
        }
        if opts.verbose {
            crate::outln!("teacher test top-1 {:.2}%, top-5 {:.2}%", t.top1, t.top5);
        }
    }
    let title = match &cfg.distill {
        Some(d) => format!("{} <- {} ({}), seed {}", cfg.model, d.teacher, d.loss, cfg.seed),
        None => format!("{}, seed {}", cfg.model, cfg.seed),
    };
    let extra = extra_metadata(cfg);
    let epochs = cfg.train.epochs;
    let result = tr.run(&train, &test, epochs, |end| {
        run.save(end.trainer, &cfg.model, end.is_best, &extra)?;
        run.append_metrics(end.record)?;
        // A plot that cannot be drawn must not stop the training.
        if let Err(e) = super::plot::write_curve(&run.plot("svg"), &run.plot("png"), &title, &end.trainer.history) {
            crate::errln!("warning: {e}");
        }
        if opts.verbose {
            let r = end.record;
            crate::outln!(
                "epoch {:>3}/{epochs}  lr {:.5}  train loss {:.4} top1 {:5.2}%  test loss {:.4} top1 {:5.2}% top5 {:5.2}%  {:.0} img/s{}",
                r.epoch,
                r.lr,
                r.train.loss,
                r.train.top1,
                r.test.loss,
                r.test.top1,
                r.test.top5,
                r.train.images_per_second(),
                if end.is_best { "  *" } else { "" }
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        // Read back from the file itself: a failure while saving epoch N leaves epoch N-1 there.
        let kept = match load_state(&run.latest()) {
            Ok((_, st)) => format!(
                "the last good checkpoint is {} (epoch {}); continue with --resume",
                run.latest().display(),
                st.epoch
            ),
            Err(_) if run.latest().is_file() => {
                format!("{} cannot be read back, so no checkpoint of this run is usable", run.latest().display())
            }
            Err(_) => "no epoch finished, so no checkpoint was written".to_string(),
        };
        return Err(Error::invalid("run stopped", format!("{e}; {kept}")));
    }
    let last = tr.history.last().ok_or_else(|| Error::invalid("train", "no epoch was run"))?;
    let best = tr.best.unwrap_or(super::trainer::Best { epoch: last.epoch, top1: last.test.top1 });
    Ok(RunOutcome {
        seed: cfg.seed,
        dir: dir.to_path_buf(),
        epochs: tr.epoch,
        best_top1: best.top1,
        best_epoch: best.epoch,
        last_top1: last.test.top1,
        last_top5: last.test.top5,
    })
}

/// Keys a resume may change: [`RESUMABLE_CHANGES`], and the teacher's path when both configs
/// identify the teacher by the same content hash (the file was moved or copied).
fn resumable_changes(stored: &RunConfig, cfg: &RunConfig) -> Vec<&'static str> {
    let mut keys = RESUMABLE_CHANGES.to_vec();
    if let (Some(a), Some(b)) = (&stored.distill, &cfg.distill) {
        if !a.teacher_weights_sha256.is_empty() && a.teacher_weights_sha256 == b.teacher_weights_sha256 {
            keys.push("distill.teacher_weights");
        }
    }
    keys
}

/// Runs every seed (each in its own directory) and, for several, writes `summary.json` into `out`
/// and prints mean ± std of the best and last test top-1.
pub fn run_seeds(cfgs: &[(RunConfig, PathBuf)], out: &Path, opts: &RunOptions) -> Result<Vec<RunOutcome>> {
    // Several seeds share `out` for summary.json (each seed directory is locked by its run).
    let _lock = if cfgs.len() > 1 { Some(RunLock::acquire(out)?) } else { None };
    let mut outcomes = Vec::new();
    for (cfg, dir) in cfgs {
        let o = run_one(cfg, dir, opts)?;
        crate::outln!(
            "seed {}: best test top-1 {:.2}% (epoch {}), last {:.2}% (top-5 {:.2}%); run in {}",
            o.seed,
            o.best_top1,
            o.best_epoch,
            o.last_top1,
            o.last_top5,
            o.dir.display()
        );
        outcomes.push(o);
    }
    if outcomes.len() > 1 {
        let best = MeanStd::of(&outcomes.iter().map(|o| o.best_top1).collect::<Vec<_>>());
        let last = MeanStd::of(&outcomes.iter().map(|o| o.last_top1).collect::<Vec<_>>());
        let summary = Summary { runs: &outcomes, best_top1: best, last_top1: last };
        let path = out.join("summary.json");
        let text = serde_json::to_string_pretty(&summary).map_err(|e| Error::invalid("summary", e.to_string()))?;
        crate::weights::write_atomic(&path, text.as_bytes())?;
        crate::outln!(
            "{} seeds: best top-1 {:.2} ± {:.2}%, last top-1 {:.2} ± {:.2}% (mean ± sample std); {}",
            outcomes.len(),
            best.mean,
            best.std,
            last.mean,
            last.std,
            path.display()
        );
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std_by_hand() {
        let m = MeanStd::of(&[1.0, 2.0, 3.0, 6.0]);
        assert_eq!(m.mean, 3.0);
        // deviations -2, -1, 0, 3: squares sum 14, / 3
        assert!((m.std - (14.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(MeanStd::of(&[5.0]).std, 0.0);
    }

    #[test]
    fn model_and_loss_dependent_defaults() {
        let mut r = Resolver::new(true, None).unwrap();
        r.flag("model", "ShuffleV2");
        r.flag("distill.teacher", "resnet32x4");
        r.flag("distill.teacher_weights", "t.safetensors");
        let c = r.finish().unwrap();
        assert_eq!(c.train.lr, 0.01);
        let d = c.distill.unwrap();
        assert_eq!((d.loss.as_str(), d.gamma, d.alpha, d.beta, d.kd_t), ("kd", 0.1, 0.9, 0.0, 4.0));
        let mut r = Resolver::new(true, None).unwrap();
        r.flag("model", "resnet8");
        r.flag("distill.teacher", "resnet20");
        r.flag("distill.teacher_weights", "t.safetensors");
        r.set("distill.loss=fitnet").unwrap();
        r.set("distill.beta=50").unwrap();
        let c = r.finish().unwrap();
        assert_eq!(c.train.lr, 0.05);
        let d = c.distill.unwrap();
        assert_eq!((d.gamma, d.alpha, d.beta), (1.0, 0.0, 50.0));
        // distill keys do not exist for plain training
        let mut r = Resolver::new(false, None).unwrap();
        assert!(r.set("distill.loss=kd").unwrap_err().to_string().contains("unknown key"));
    }
}
