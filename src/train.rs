//! A plain supervised training loop: one epoch of SGD over batches, and evaluation. The
//! distillation trainer ([`crate::distill::trainer`]: schedules, checkpoints, resume) drives the
//! same loop through [`train_epoch_with`] and [`evaluate_with`].

use std::time::Instant;

use crate::autograd;
use crate::error::{Error, Result};
use crate::nn::Module;
use crate::optim::Sgd;
use crate::tensor::Tensor;

/// What one pass over a data set measured.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    /// Mean loss per image (cross-entropy; the total distillation loss in training).
    pub loss: f64,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent (100 with five classes or fewer).
    pub top5: f64,
    pub images: usize,
    pub seconds: f64,
}

impl EpochStats {
    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }
}

/// 0-based rank of each row's label among its logits: entries above it, plus equal entries
/// before it (the tie rule of `argmax_rows`, so rank 0 is exactly "argmax == label").
pub fn label_ranks(logits: &Tensor, labels: &[u32]) -> Result<Vec<usize>> {
    let d = logits.dims();
    if d.len() != 2 || d[0] != labels.len() {
        return Err(Error::invalid(
            "accuracy",
            format!("logits {} do not match {} labels", logits.shape(), labels.len()),
        ));
    }
    let v = logits.to_vec()?;
    Ok(v.chunks(d[1].max(1))
        .zip(labels)
        .map(|(row, &l)| {
            let x = row[l as usize];
            row.iter().enumerate().filter(|&(j, &y)| y > x || (y == x && j < l as usize)).count()
        })
        .collect())
}

/// Running sums of one pass.
struct Tally {
    start: Instant,
    loss_sum: f64,
    hits: usize,
    hits5: usize,
    seen: usize,
}

impl Tally {
    fn new() -> Tally {
        Tally { start: Instant::now(), loss_sum: 0.0, hits: 0, hits5: 0, seen: 0 }
    }
    fn add(&mut self, logits: &Tensor, labels: &[u32], loss: f32) -> Result<()> {
        self.loss_sum += loss as f64 * labels.len() as f64;
        let ranks = label_ranks(logits, labels)?;
        self.hits += ranks.iter().filter(|&&r| r == 0).count();
        self.hits5 += ranks.iter().filter(|&&r| r < 5).count();
        self.seen += labels.len();
        Ok(())
    }
    fn finish(self) -> EpochStats {
        let n = self.seen.max(1) as f64;
        EpochStats {
            loss: self.loss_sum / n,
            top1: 100.0 * self.hits as f64 / n,
            top5: 100.0 * self.hits5 as f64 / n,
            images: self.seen,
            seconds: self.start.elapsed().as_secs_f64(),
        }
    }
}

/// One epoch of SGD on cross-entropy. A non-finite loss stops with an error naming the epoch
/// and step, before the optimiser touches the weights.
pub fn train_epoch(
    model: &mut dyn Module,
    opt: &mut Sgd,
    batches: impl IntoIterator<Item = Result<(Tensor, Vec<u32>)>>,
    epoch: usize,
) -> Result<EpochStats> {
    model.set_training(true);
    let params = model.named_parameters();
    let lr = opt.lr() as f64;
    train_epoch_with(
        opt,
        &params,
        batches,
        epoch,
        |_| lr,
        |x, labels| {
            let logits = model.forward(x)?;
            Ok((logits.cross_entropy(labels)?, logits))
        },
        |_, _| {},
    )
}

/// One epoch of SGD on any loss: `step(images, labels)` returns the scalar loss and the logits
/// accuracy is measured on; `lr_at(step)` gives the learning rate of each step (0-based within
/// the epoch). `params` are the tensors the optimiser updates (their gradients are taken from
/// the loss). The caller sets train/eval modes. A non-finite loss stops with an error naming the
/// epoch and step, before the optimiser touches the weights.
pub fn train_epoch_with(
    opt: &mut Sgd,
    params: &[(String, Tensor)],
    batches: impl IntoIterator<Item = Result<(Tensor, Vec<u32>)>>,
    epoch: usize,
    mut lr_at: impl FnMut(usize) -> f64,
    mut step: impl FnMut(&Tensor, &[u32]) -> Result<(Tensor, Tensor)>,
    mut on_step: impl FnMut(usize, usize),
) -> Result<EpochStats> {
    let mut tally = Tally::new();
    for (i, batch) in batches.into_iter().enumerate() {
        let (x, labels) = batch?;
        let (loss, logits) = step(&x, &labels)?;
        let value = loss.item()?;
        if !value.is_finite() {
            return Err(Error::invalid(
                "train",
                format!("loss is {value} at epoch {epoch}, step {i}: lower the learning rate or check the data"),
            ));
        }
        let grads = loss.backward()?;
        opt.set_lr(lr_at(i) as f32)?;
        opt.step(params, &grads)?;
        tally.add(&logits, &labels, value)?;
        on_step(i + 1, labels.len());
    }
    Ok(tally.finish())
}

/// Progress inside a training epoch: a bar with images/s and the epoch's ETA on a terminal, a
/// plain line on stderr every [`StepProgress::LOG_EVERY`] otherwise (logs of long runs).
pub struct StepProgress {
    epoch: usize,
    epochs: usize,
    steps: usize,
    images: usize,
    start: Instant,
    last_line: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl StepProgress {
    pub const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

    pub fn new(epoch: usize, epochs: usize, steps: usize) -> StepProgress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(steps as u64);
            let style = indicatif::ProgressStyle::with_template(&format!(
                "epoch {epoch}/{epochs} {{bar:30.cyan/blue}} {{pos}}/{{len}} steps  {{msg}}  ETA {{eta}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        let now = Instant::now();
        StepProgress { epoch, epochs, steps, images: 0, start: now, last_line: now, bar }
    }

    /// `done` steps of the epoch finished, the last of `batch` images.
    pub fn step(&mut self, done: usize, batch: usize) {
        self.images += batch;
        let rate = self.images as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        match &self.bar {
            Some(bar) => {
                bar.set_position(done as u64);
                bar.set_message(format!("{rate:.0} img/s"));
            }
            None if self.last_line.elapsed() >= Self::LOG_EVERY => {
                self.last_line = Instant::now();
                let per_step = self.start.elapsed().as_secs_f64() / done.max(1) as f64;
                let eta = per_step * (self.steps.saturating_sub(done)) as f64;
                crate::errln!(
                    "epoch {}/{}: step {done}/{} ({:.0}%), {rate:.0} img/s, epoch ETA {eta:.0} s",
                    self.epoch,
                    self.epochs,
                    self.steps,
                    100.0 * done as f64 / self.steps.max(1) as f64
                );
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Loss, top-1 and top-5 in eval mode (running BN statistics), without recording gradients.
pub fn evaluate(
    model: &mut dyn Module,
    batches: impl IntoIterator<Item = Result<(Tensor, Vec<u32>)>>,
) -> Result<EpochStats> {
    model.set_training(false);
    let stats = evaluate_with(batches, |x| model.forward(x));
    model.set_training(true);
    stats
}

/// Cross-entropy, top-1 and top-5 of the logits `logits_of(images)` gives, without recording
/// gradients; the caller sets eval mode.
pub fn evaluate_with(
    batches: impl IntoIterator<Item = Result<(Tensor, Vec<u32>)>>,
    mut logits_of: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<EpochStats> {
    let _no_grad = autograd::no_grad();
    let mut tally = Tally::new();
    for batch in batches {
        let (x, labels) = batch?;
        let logits = logits_of(&x)?;
        tally.add(&logits, &labels, logits.cross_entropy(&labels)?.item()?)?;
    }
    Ok(tally.finish())
}

/// Settings of a plain supervised run (`kdscout demo`; the distillation recipe extends it).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Initial learning rate; annealed to zero by a per-epoch cosine schedule.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// RandomCrop(32, padding 4) + horizontal flip on the training images.
    pub augment: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 5,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: false,
            augment: true,
        }
    }
}

impl FitConfig {
    /// Cosine annealing from `lr` at epoch 0 towards 0 after the last epoch.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let t = epoch as f64 / self.epochs.max(1) as f64;
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// One epoch's record, as written to `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train: EpochStats,
    pub test: EpochStats,
}

/// Trains `model` for `cfg.epochs` epochs with SGD, evaluating on `test` after each; calls
/// `on_epoch` with each record (to log or persist it) and returns them all.
pub fn fit(
    model: &mut dyn Module,
    train: &crate::data::Dataset,
    test: &crate::data::Dataset,
    cfg: &FitConfig,
    rng: &mut crate::rng::Rng,
    mut on_epoch: impl FnMut(&EpochRecord) -> Result<()>,
) -> Result<Vec<EpochRecord>> {
    use crate::data::{Augment, Batch, DataLoader};
    let augment = if cfg.augment { Some(Augment::CIFAR) } else { None };
    let train_loader = DataLoader::new(train, cfg.batch_size)?.shuffle(true).augment(augment);
    let test_loader = DataLoader::eval(test, cfg.batch_size.max(256))?;
    // Config values are f64 so resolved configs print exactly what was asked for.
    let mut opt = Sgd::new(cfg.lr as f32, cfg.momentum as f32, cfg.weight_decay as f32, cfg.nesterov)?;
    let mut records = Vec::with_capacity(cfg.epochs);
    for epoch in 0..cfg.epochs {
        let lr = cfg.lr_at(epoch);
        opt.set_lr(lr as f32)?;
        let batches = train_loader.epoch(rng).map(|b| b.map(Batch::into_parts));
        let train_stats = train_epoch(model, &mut opt, batches, epoch)?;
        let test_stats = evaluate(model, test_loader.epoch(rng).map(|b| b.map(Batch::into_parts)))?;
        let record = EpochRecord { epoch, lr, train: train_stats, test: test_stats };
        on_epoch(&record)?;
        records.push(record);
    }
    Ok(records)
}
