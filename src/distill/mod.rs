//! Distillation losses: differentiable functions of student and teacher tensors built from the
//! recorded Tensor ops, the trainable parts some of them add, and a registry of distillers by name
//! with RepDistiller's default weights and feature taps.
//!
//! * [`logits`]: `kd`, `dkd`, `dist`, NORM's `norm_logits`.
//! * [`maps`]: `sp`, `ickd` (DisWOT's kernels, METHODS §0.2), `at`, `nst`, `mse` (FitNets), `hcl`
//!   (ReviewKD), `norm_loss` (NORM).
//! * [`relation`]: `rkd`, `pkt`, `cc` (RepDistiller's version), `smooth_l1`.
//! * [`modules`]: `ConvReg` (+ `ConvTranspose2d`), `CcEmbed`, `NormFt`, `Abf`/`ReviewKd`.
//! * [`registry`]: [`LOSSES`] (name, weights γ/α/β, taps, trainable parts), [`Distiller`] (the total
//!   `γ·CE + α·KD_T + β·other` for one method on a student/teacher pair of [`Features`](crate::models::Features)).
//! * [`trainer`]: the training loop (SGD, step/cosine schedules with warm-up, the CIFAR recipe, a
//!   frozen no-grad teacher), [`checkpoint`]: the run directory (resumable safetensors
//!   checkpoints, `metrics.csv`), [`plot`]: the training curve.
//!
//! Every function follows the released code of its method (RepDistiller, mdistiller, DisWOT, NORM,
//! DIST); where the code and the paper differ the code wins and the doc comment says so. Teacher
//! tensors are used as given: the caller computes them without gradients; losses whose code
//! detaches a teacher term (RKD, NST's t-t term, NORM) detach it here too.

pub mod checkpoint;
pub mod logits;
pub mod maps;
pub mod modules;
pub mod plot;
pub mod registry;
pub mod relation;
pub mod run;
pub mod trainer;

pub use logits::{dist, dkd, kd, norm_logits, warmup_factor};
pub use maps::{at, hcl, ickd, ickd_compat, mse, norm_loss, nst, sp, sum_pairs};
pub use modules::{Abf, CcEmbed, ConvReg, ConvTranspose2d, NormFt, ReviewKd};
pub use registry::{info, names, norm_beta1, Distiller, LossInfo, LossTerms, Method, Tap, Weights, LOSSES};
pub use relation::{cc, pkt, rkd, smooth_l1};

use crate::tensor::Tensor;
use crate::{invalid_err, shape_err, Result};

/// Student and teacher must have the same (non-zero) batch size in dim 0.
fn check_batch(op: &'static str, s: &Tensor, t: &Tensor) -> Result<()> {
    if s.rank() == 0 || t.rank() == 0 || s.dims()[0] != t.dims()[0] || s.dims()[0] == 0 {
        shape_err!(op, "student {} and teacher {} must share a non-empty batch in dim 0", s.shape(), t.shape());
    }
    Ok(())
}

/// Both inputs need at least `rank` dims.
fn check_rank(op: &'static str, s: &Tensor, t: &Tensor, rank: usize) -> Result<()> {
    if s.rank() < rank || t.rank() < rank {
        shape_err!(op, "student {} and teacher {} need rank >= {rank}", s.shape(), t.shape());
    }
    Ok(())
}

fn check_temperature(op: &'static str, t: f32) -> Result<()> {
    if !(t.is_finite() && t > 0.0) {
        invalid_err!(op, "temperature {t} must be positive and finite");
    }
    Ok(())
}
