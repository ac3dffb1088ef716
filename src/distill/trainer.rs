//! The training loop behind `kdscout train` and `kdscout distill`: SGD with momentum and weight
//! decay, a step or cosine schedule with linear warm-up ([`Recipe`], with the standard CIFAR
//! recipe as [`Recipe::cifar`]), evaluation after every epoch, and a student trained either on
//! cross-entropy alone or through a [`Distiller`] against a frozen teacher.
//!
//! The teacher stays in eval mode and runs under `no_grad`, so its outputs carry no graph and it
//! is never back-propagated; the distiller's trainable parts join the optimiser under the names
//! `distiller.*` (the student's are `student.*`). Epochs count from 1, as in RepDistiller.
//!
//! Everything a run needs to continue is in [`TrainState`] (weights, momentum buffers, RNG
//! position, history): [`super::checkpoint`] writes it after every epoch, and a trainer restored
//! from it continues bit-identically.

use serde::{Deserialize, Serialize};

use super::Distiller;
use crate::autograd::{self, Grads};
use crate::data::{Augment, Batch, DataLoader, Dataset};
use crate::models::{Features, Network};
use crate::nn::Module;
use crate::optim::Sgd;
use crate::rng::{Rng, RngState};
use crate::tensor::Tensor;
use crate::train::{evaluate_with, train_epoch_with, EpochRecord, EpochStats, StepProgress};
use crate::{invalid_err, Device, Error, Result};

/// How the learning rate falls after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Multiply by `lr_decay` after each milestone epoch (RepDistiller's `adjust_learning_rate`).
    Step,
    /// Cosine annealing from `lr` to 0 over the epochs after warm-up, set once per epoch.
    Cosine,
}

/// The optimisation recipe of a run (the `[train]` table of a config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub epochs: usize,
    pub batch_size: usize,
    /// Initial learning rate.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub schedule: ScheduleKind,
    /// Step schedule: the LR is multiplied by `lr_decay` once the epoch (from 1) passes each.
    pub milestones: Vec<usize>,
    pub lr_decay: f64,
    /// Linear warm-up over this many epochs, per step, from `lr / (warmup_epochs * steps)`.
    pub warmup_epochs: usize,
    /// RandomCrop(32, padding 4) + horizontal flip on the training images.
    pub augment: bool,
    pub eval_batch_size: usize,
    /// Also keep `checkpoints/epoch_NNNN.safetensors` every this many epochs (0: never).
    pub save_every: usize,
}

/// The models RepDistiller trains with LR 0.01 instead of 0.05 (`train_student.py`).
pub const LOW_LR_MODELS: &[&str] = &["MobileNetV2", "mobile_half", "ShuffleV1", "ShuffleV2"];

impl Recipe {
    /// The standard CIFAR-100 recipe (RepDistiller/CRD): 240 epochs, batch 64, SGD momentum 0.9,
    /// weight decay 5e-4, LR 0.05 (0.01 for MobileNetV2/ShuffleV1/ShuffleV2) decayed ×0.1 after
    /// epochs 150, 180 and 210.
    pub fn cifar(model: &str) -> Recipe {
        Recipe {
            epochs: 240,
            batch_size: 64,
            lr: Recipe::cifar_lr(model),
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: false,
            schedule: ScheduleKind::Step,
            milestones: vec![150, 180, 210],
            lr_decay: 0.1,
            warmup_epochs: 0,
            augment: true,
            eval_batch_size: 256,
            save_every: 40,
        }
    }

    /// 0.01 for the models of [`LOW_LR_MODELS`], else 0.05.
    pub fn cifar_lr(model: &str) -> f64 {
        if LOW_LR_MODELS.contains(&model) {
            0.01
        } else {
            0.05
        }
    }

    /// Rejects settings that cannot train, naming the key.
    pub fn validate(&self) -> Result<()> {
        let checks: [(bool, &str, String); 8] = [
            (self.epochs >= 1, "train.epochs", format!("{} must be at least 1", self.epochs)),
            (self.batch_size >= 1, "train.batch_size", format!("{} must be at least 1", self.batch_size)),
            (
                self.eval_batch_size >= 1,
                "train.eval_batch_size",
                format!("{} must be at least 1", self.eval_batch_size),
            ),
            (self.lr.is_finite() && self.lr >= 0.0, "train.lr", format!("{} must be finite and >= 0", self.lr)),
            ((0.0..1.0).contains(&self.momentum), "train.momentum", format!("{} must be in [0, 1)", self.momentum)),
            (
                self.weight_decay.is_finite() && self.weight_decay >= 0.0,
                "train.weight_decay",
                format!("{} must be finite and >= 0", self.weight_decay),
            ),
            (
                self.lr_decay.is_finite() && self.lr_decay > 0.0,
                "train.lr_decay",
                format!("{} must be positive", self.lr_decay),
            ),
            (
                self.warmup_epochs < self.epochs || self.warmup_epochs == 0,
                "train.warmup_epochs",
                format!("{} must be fewer than the {} epochs", self.warmup_epochs, self.epochs),
            ),
        ];
        for (ok, key, msg) in checks {
            if !ok {
                invalid_err!("config", "{key} = {msg}");
            }
        }
        if self.nesterov && self.momentum == 0.0 {
            invalid_err!("config", "train.nesterov needs train.momentum > 0");
        }
        Ok(())
    }

    /// The scheduled LR of `epoch` (from 1) before warm-up.
    pub fn epoch_lr(&self, epoch: usize) -> f64 {
        match self.schedule {
            ScheduleKind::Step => {
                let passed = self.milestones.iter().filter(|&&m| epoch > m).count();
                self.lr * self.lr_decay.powi(passed as i32)
            }
            ScheduleKind::Cosine => {
                if epoch <= self.warmup_epochs {
                    return self.lr;
                }
                let span = (self.epochs - self.warmup_epochs).max(1) as f64;
                let t = (epoch - 1 - self.warmup_epochs) as f64 / span;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// The LR of step `step` (0-based) of `epoch` (from 1) with `steps` steps an epoch: the
    /// epoch's scheduled LR, scaled during warm-up by `(g + 1) / (warmup_epochs * steps)` where
    /// `g` counts steps from the start of training.
    pub fn lr_at(&self, epoch: usize, step: usize, steps: usize) -> f64 {
        let base = self.epoch_lr(epoch);
        if epoch == 0 || epoch > self.warmup_epochs {
            return base;
        }
        let g = (epoch - 1) * steps + step;
        base * (g + 1) as f64 / (self.warmup_epochs * steps.max(1)) as f64
    }
}

/// Best test top-1 so far and its epoch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    pub top1: f64,
}

/// The resumable state of a run beside its tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    pub rng: RngState,
    pub best: Option<Best>,
    pub history: Vec<EpochRecord>,
}

/// A student, optionally a frozen teacher with a distiller, the optimiser and the run's RNG.
pub struct Trainer {
    pub recipe: Recipe,
    pub student: Box<dyn Network>,
    /// Teacher and distiller come together (distillation) or not at all (plain training).
    pub teacher: Option<Box<dyn Network>>,
    pub distiller: Option<Distiller>,
    pub opt: Sgd,
    pub rng: Rng,
    /// Epochs completed.
    pub epoch: usize,
    pub best: Option<Best>,
    pub history: Vec<EpochRecord>,
    /// Show progress inside each epoch ([`StepProgress`]).
    pub progress: bool,
}

/// What [`Trainer::run`] reports after each epoch (to log, checkpoint and plot).
pub struct EpochEnd<'a> {
    pub record: &'a EpochRecord,
    pub trainer: &'a Trainer,
    /// Whether this epoch set a new best test top-1.
    pub is_best: bool,
}

fn prefixed(prefix: &str, named: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    named.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)).collect()
}

impl Trainer {
    /// A plain (cross-entropy) trainer for `student`.
    pub fn new(recipe: Recipe, student: Box<dyn Network>, rng: Rng) -> Result<Trainer> {
        recipe.validate()?;
        let opt = Sgd::new(recipe.lr as f32, recipe.momentum as f32, recipe.weight_decay as f32, recipe.nesterov)?;
        Ok(Trainer {
            recipe,
            student,
            teacher: None,
            distiller: None,
            opt,
            rng,
            epoch: 0,
            best: None,
            history: Vec::new(),
            progress: false,
        })
    }

    /// A distillation trainer: the teacher is put in eval mode for good, and the distiller `loss`
    /// is sized from one probe forward of both networks on `probe` (in eval mode without gradients,
    /// so no BN statistics move), its trainable parts drawn from `rng`.
    pub fn distill(
        recipe: Recipe,
        student: Box<dyn Network>,
        mut teacher: Box<dyn Network>,
        loss: &str,
        probe: &Tensor,
        mut rng: Rng,
    ) -> Result<Trainer> {
        crate::nn::eval(teacher.as_mut());
        let mut student = student;
        let (s, t) = {
            let _g = autograd::no_grad();
            crate::nn::eval(student.as_mut());
            let s = student.forward_features(probe);
            crate::nn::train(student.as_mut());
            (s?, teacher.forward_features(probe)?)
        };
        if s.logits.dims() != t.logits.dims() {
            invalid_err!(
                "distill",
                "student logits {} and teacher logits {} differ: both need the data's number of classes",
                s.logits.shape(),
                t.logits.shape()
            );
        }
        let distiller = Distiller::new(loss, &s, &t, &mut rng, probe.device())?;
        let mut tr = Trainer::new(recipe, student, rng)?;
        tr.teacher = Some(teacher);
        tr.distiller = Some(distiller);
        Ok(tr)
    }

    /// The tensors the optimiser updates: `student.*` then `distiller.*`.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut p = prefixed("student", self.student.named_parameters());
        if let Some(d) = &self.distiller {
            p.extend(prefixed("distiller", d.named_parameters()));
        }
        p
    }

    /// Every tensor a checkpoint holds: `student.*` and `distiller.*` (parameters and buffers) and
    /// `optim.<parameter>` momentum buffers.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = prefixed("student", self.student.state_dict());
        if let Some(d) = &self.distiller {
            v.extend(prefixed("distiller", d.state_dict()));
        }
        v.extend(prefixed("optim", self.opt.state()));
        v
    }

    pub fn state(&self) -> TrainState {
        TrainState { epoch: self.epoch, rng: self.rng.state(), best: self.best, history: self.history.clone() }
    }

    /// Restores weights, momentum buffers, RNG position and history saved by [`Self::state_tensors`]
    /// and [`Self::state`]; every tensor must fit (strict), or nothing is changed.
    pub fn restore(&mut self, tensors: &[(String, Tensor)], state: &TrainState) -> Result<()> {
        let part = |prefix: &str| -> Vec<(String, Tensor)> {
            let p = format!("{prefix}.");
            tensors.iter().filter_map(|(n, t)| n.strip_prefix(&p).map(|n| (n.to_string(), t.clone()))).collect()
        };
        let unknown: Vec<&str> = tensors
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !["student.", "distiller.", "optim."].iter().any(|p| n.starts_with(p)))
            .collect();
        if !unknown.is_empty() {
            invalid_err!("resume", "unexpected tensors {} in the checkpoint", unknown.join(", "));
        }
        let rng = Rng::from_state(&state.rng)?;
        let (student, distiller, optim) = (part("student"), part("distiller"), part("optim"));
        let params: std::collections::HashMap<String, Tensor> = self.parameters().into_iter().collect();
        for (n, t) in &optim {
            match params.get(n) {
                Some(p) if p.dims() == t.dims() => {}
                Some(p) => invalid_err!("resume", "momentum buffer {n} is {}, the parameter {}", t.shape(), p.shape()),
                None => invalid_err!("resume", "momentum buffer {n} has no parameter in this run"),
            }
        }
        // Check both modules before writing either.
        let check = |m: &dyn Module, part: &[(String, Tensor)], who: &str| -> Result<()> {
            let own = m.state_dict();
            let names: std::collections::HashSet<&str> = part.iter().map(|(n, _)| n.as_str()).collect();
            if own.len() != part.len() || own.iter().any(|(n, _)| !names.contains(n.as_str())) {
                invalid_err!("resume", "the checkpoint's {who} tensors do not match this run's {who}");
            }
            Ok(())
        };
        check(self.student.as_ref(), &student, "student")?;
        match &self.distiller {
            Some(d) => check(d, &distiller, "distiller")?,
            None if !distiller.is_empty() => {
                invalid_err!("resume", "the checkpoint has distiller tensors, this run none")
            }
            None => {}
        }
        self.student.load_state_dict(&student, true)?;
        if let Some(d) = &self.distiller {
            d.load_state_dict(&distiller, true)?;
        }
        self.opt.load_state(&optim)?;
        self.rng = rng;
        self.epoch = state.epoch;
        self.best = state.best;
        self.history = state.history.clone();
        Ok(())
    }

    /// The teacher's features of a batch: eval mode, no graph.
    fn teacher_features(&self, x: &Tensor) -> Result<Option<Features>> {
        let Some(t) = &self.teacher else { return Ok(None) };
        let _g = autograd::no_grad();
        Ok(Some(t.forward_features(x)?))
    }

    /// One training step's loss and the logits to measure accuracy on, with the graph recorded
    /// (students in training mode is the caller's business): CE, or the distiller's total.
    pub fn step_loss(&self, x: &Tensor, labels: &[u32], epoch: usize) -> Result<(Tensor, Tensor)> {
        match (&self.distiller, self.teacher_features(x)?) {
            (Some(d), Some(t)) => {
                let s = self.student.forward_features(x)?;
                let terms = d.loss(&s, &t, labels, epoch, self.student.classifier())?;
                Ok((terms.total, terms.logits))
            }
            _ => {
                let logits = self.student.forward(x)?;
                Ok((logits.cross_entropy(labels)?, logits))
            }
        }
    }

    /// The gradients of one step's loss (for tests and tools; training goes through [`Self::run`]).
    pub fn step_grads(&self, x: &Tensor, labels: &[u32], epoch: usize) -> Result<Grads> {
        self.step_loss(x, labels, epoch)?.0.backward()
    }

    fn set_training(&mut self, on: bool) {
        self.student.set_training(on);
        if let Some(d) = &mut self.distiller {
            d.set_training(on);
        }
    }

    /// Test-set loss, top-1 and top-5 of the student as it is trained (through NORM's transform
    /// for NORM), in eval mode.
    pub fn evaluate(&mut self, data: &Dataset) -> Result<EpochStats> {
        let loader = DataLoader::eval(data, self.recipe.eval_batch_size)?;
        self.set_training(false);
        let batches = loader.epoch(&mut self.rng).map(|b| b.map(Batch::into_parts));
        let (student, distiller) = (&self.student, &self.distiller);
        let stats = evaluate_with(batches, |x| match distiller {
            Some(d) => d.student_logits(&student.forward_features(x)?, student.classifier()),
            None => student.forward(x),
        });
        self.set_training(true);
        stats
    }

    /// The teacher's test accuracy (eval mode), to check its weights before distilling.
    pub fn evaluate_teacher(&self, data: &Dataset) -> Result<Option<EpochStats>> {
        let Some(t) = &self.teacher else { return Ok(None) };
        let loader = DataLoader::eval(data, self.recipe.eval_batch_size)?;
        let batches = loader.epoch(&mut Rng::seed(0)).map(|b| b.map(Batch::into_parts));
        Ok(Some(evaluate_with(batches, |x| t.forward(x))?))
    }

    /// Trains from the epoch after [`Self::epoch`] up to epoch `until` (at most `recipe.epochs`),
    /// evaluating on `test` after each and calling `on_epoch` (which writes checkpoints). A
    /// non-finite training or test loss stops the run with an error naming the epoch (and step),
    /// before `on_epoch` sees that epoch.
    pub fn run(
        &mut self,
        train: &Dataset,
        test: &Dataset,
        until: usize,
        mut on_epoch: impl FnMut(EpochEnd) -> Result<()>,
    ) -> Result<()> {
        let augment = if self.recipe.augment { Some(Augment::CIFAR) } else { None };
        let loader = DataLoader::new(train, self.recipe.batch_size)?.shuffle(true).augment(augment);
        let steps = loader.num_batches();
        if steps == 0 {
            invalid_err!("train", "the training set {} is empty", train.name);
        }
        let until = until.min(self.recipe.epochs);
        while self.epoch < until {
            let epoch = self.epoch + 1;
            self.set_training(true);
            let params = self.parameters();
            let batches = loader.epoch(&mut self.rng).map(|b| b.map(Batch::into_parts));
            let recipe = self.recipe.clone();
            let mut last_lr = recipe.lr_at(epoch, 0, steps);
            let mut opt = std::mem::replace(&mut self.opt, Sgd::new(0.0, 0.0, 0.0, false)?);
            let mut progress = self.progress.then(|| StepProgress::new(epoch, recipe.epochs, steps));
            let result = train_epoch_with(
                &mut opt,
                &params,
                batches,
                epoch,
                |i| {
                    last_lr = recipe.lr_at(epoch, i, steps);
                    last_lr
                },
                |x, labels| self.step_loss(x, labels, epoch),
                |done, batch| {
                    if let Some(p) = &mut progress {
                        p.step(done, batch)
                    }
                },
            );
            if let Some(p) = &progress {
                p.finish();
            }
            self.opt = opt;
            let train_stats = result?;
            let test_stats = self.evaluate(test)?;
            if !test_stats.loss.is_finite() {
                return Err(Error::invalid(
                    "train",
                    format!(
                        "test loss is {} after epoch {epoch}: the weights diverged; lower the learning rate",
                        test_stats.loss
                    ),
                ));
            }
            self.epoch = epoch;
            let record = EpochRecord { epoch, lr: last_lr, train: train_stats, test: test_stats };
            let is_best = self.best.is_none_or(|b| record.test.top1 > b.top1);
            if is_best {
                self.best = Some(Best { epoch, top1: record.test.top1 });
            }
            self.history.push(record.clone());
            on_epoch(EpochEnd { record: &record, trainer: self, is_best })?;
        }
        Ok(())
    }

    /// The device the student lives on.
    pub fn device(&self) -> Device {
        self.student.classifier().weight.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-12)
    }

    #[test]
    fn step_schedule_matches_repdistiller_by_hand() {
        let r = Recipe::cifar("resnet20");
        assert_eq!((r.lr, r.epochs, r.batch_size), (0.05, 240, 64));
        assert_eq!(Recipe::cifar("ShuffleV2").lr, 0.01);
        // np.sum(epoch > [150, 180, 210]) decays, epochs from 1.
        for (epoch, want) in [(1, 0.05), (150, 0.05), (151, 0.005), (180, 0.005), (181, 0.0005), (211, 0.00005)] {
            assert!(close(r.lr_at(epoch, 7, 782), want), "epoch {epoch}: {} vs {want}", r.lr_at(epoch, 7, 782));
        }
    }

    #[test]
    fn cosine_and_warmup_match_hand_values() {
        let mut r = Recipe::cifar("resnet20");
        r.schedule = ScheduleKind::Cosine;
        r.lr = 0.1;
        r.epochs = 10;
        // 0.1 * 0.5 * (1 + cos(pi * (e - 1) / 10))
        assert!(close(r.lr_at(1, 0, 4), 0.1));
        assert!(close(r.lr_at(6, 3, 4), 0.05));
        assert!(close(r.lr_at(10, 0, 4), 0.05 * (1.0 + (0.9 * std::f64::consts::PI).cos())));
        // Two warm-up epochs of 4 steps: 1/8, 2/8, ... 8/8 of the LR, then cosine over 8 epochs.
        r.warmup_epochs = 2;
        assert!(close(r.lr_at(1, 0, 4), 0.1 / 8.0));
        assert!(close(r.lr_at(1, 3, 4), 0.1 * 4.0 / 8.0));
        assert!(close(r.lr_at(2, 3, 4), 0.1));
        assert!(close(r.lr_at(3, 0, 4), 0.1));
        assert!(close(r.lr_at(7, 2, 4), 0.05)); // t = 4/8
                                                // Warm-up on the step schedule scales the epoch's LR the same way.
        let mut s = Recipe::cifar("resnet20");
        s.warmup_epochs = 1;
        assert!(close(s.lr_at(1, 1, 4), 0.05 * 2.0 / 4.0));
        assert!(close(s.lr_at(2, 0, 4), 0.05));
    }

    #[test]
    fn validation_names_the_key() {
        let mut r = Recipe::cifar("resnet20");
        r.momentum = 1.5;
        assert!(r.validate().unwrap_err().to_string().contains("train.momentum"));
        let mut r = Recipe::cifar("resnet20");
        r.warmup_epochs = 240;
        assert!(r.validate().unwrap_err().to_string().contains("train.warmup_epochs"));
    }
}
