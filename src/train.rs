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
