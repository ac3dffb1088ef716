//! A plain supervised training loop: one epoch of SGD over batches, and evaluation. The
//! distillation trainer (schedules, checkpoints, resume) builds on these pieces.

use std::time::Instant;

use crate::autograd;
use crate::error::{Error, Result};
use crate::nn::Module;
use crate::optim::Sgd;
use crate::tensor::Tensor;

/// What one pass over a data set measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EpochStats {
    /// Mean cross-entropy per image.
    pub loss: f64,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    pub images: usize,
    pub seconds: f64,
}

impl EpochStats {
    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }
}

/// Running sums of one pass.
struct Tally {
    start: Instant,
    loss_sum: f64,
    hits: usize,
    seen: usize,
}

impl Tally {
    fn new() -> Tally {
        Tally { start: Instant::now(), loss_sum: 0.0, hits: 0, seen: 0 }
    }
    fn add(&mut self, logits: &Tensor, labels: &[u32], loss: f32) -> Result<()> {
        self.loss_sum += loss as f64 * labels.len() as f64;
        self.hits += logits.argmax_rows()?.iter().zip(labels).filter(|(&p, &l)| p == l as usize).count();
        self.seen += labels.len();
        Ok(())
    }
    fn finish(self) -> EpochStats {
        let n = self.seen.max(1) as f64;
        EpochStats {
            loss: self.loss_sum / n,
            top1: 100.0 * self.hits as f64 / n,
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
    let mut tally = Tally::new();
    for (step, batch) in batches.into_iter().enumerate() {
        let (x, labels) = batch?;
        let logits = model.forward(&x)?;
        let loss = logits.cross_entropy(&labels)?;
        let value = loss.item()?;
        if !value.is_finite() {
            return Err(Error::invalid(
                "train",
                format!("loss is {value} at epoch {epoch}, step {step}: lower the learning rate or check the data"),
            ));
        }
        let grads = loss.backward()?;
        opt.step(&params, &grads)?;
        tally.add(&logits, &labels, value)?;
    }
    Ok(tally.finish())
}

/// Loss and top-1 in eval mode (running BN statistics), without recording gradients.
pub fn evaluate(
    model: &mut dyn Module,
    batches: impl IntoIterator<Item = Result<(Tensor, Vec<u32>)>>,
) -> Result<EpochStats> {
    model.set_training(false);
    let _no_grad = autograd::no_grad();
    let mut tally = Tally::new();
    for batch in batches {
        let (x, labels) = batch?;
        let logits = model.forward(&x)?;
        tally.add(&logits, &labels, logits.cross_entropy(&labels)?.item()?)?;
    }
    model.set_training(true);
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
#[derive(Clone, Debug, serde::Serialize)]
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
