//! Losses on logits: KD (Hinton, RepDistiller's `DistillKL`), DKD (mdistiller), DIST, and NORM's
//! normalisation of the logits.

use super::{check_batch, check_temperature};
use crate::tensor::Tensor;
use crate::{invalid_err, shape_err, Result};

/// Student and teacher logits must both be [batch, classes] with the same shape.
fn check_logits(op: &'static str, z_s: &Tensor, z_t: &Tensor) -> Result<()> {
    if z_s.rank() != 2 || z_s.shape() != z_t.shape() {
        shape_err!(
            op,
            "student logits {} and teacher logits {} must both be [batch, classes] of one shape",
            z_s.shape(),
            z_t.shape()
        );
    }
    check_batch(op, z_s, z_t)
}

/// RepDistiller's `DistillKL`: `KL(softmax(z_t/T) || softmax(z_s/T))·T²`, summed over classes and
/// averaged over the batch (`F.kl_div(.., reduction='batchmean')`). The teacher is the target.
pub fn kd(z_s: &Tensor, z_t: &Tensor, t: f32) -> Result<Tensor> {
    check_logits("kd", z_s, z_t)?;
    check_temperature("kd", t)?;
    let log_ps = z_s.scale(1.0 / t)?.log_softmax(1)?;
    let pt = z_t.scale(1.0 / t)?.softmax(1)?;
    log_ps.kl_div(&pt)?.scale(t * t)
}

/// A [batch, classes] mask with 1 at each row's label (mdistiller's `_get_gt_mask`).
fn label_mask(op: &'static str, labels: &[u32], rows: usize, classes: usize, like: &Tensor) -> Result<Tensor> {
    if labels.len() != rows {
        shape_err!(op, "{} labels for a batch of {rows} logits", labels.len());
    }
    let mut m = vec![0.0f32; rows * classes];
    for (r, &l) in labels.iter().enumerate() {
        if l as usize >= classes {
            invalid_err!(op, "label {l} out of range for {classes} classes");
        }
        m[r * classes + l as usize] = 1.0;
    }
    Tensor::from_slice(&m, [rows, classes], like.device())
}

/// Decoupled KD (mdistiller `dkd_loss`): `alpha·TCKD + beta·NCKD`.
///
/// TCKD is the KL between the binary (target, all others) probabilities of teacher and student;
/// NCKD the KL between the distributions over the non-target classes, which the code obtains by
/// subtracting 1000 from the target logit (after dividing by T) before the softmax, reproduced
/// here. Both are multiplied by T² and divided by the batch size. The warm-up factor
/// `min(epoch / warmup, 1)` is applied by the caller ([`warmup_factor`]).
pub fn dkd(z_s: &Tensor, z_t: &Tensor, labels: &[u32], alpha: f32, beta: f32, t: f32) -> Result<Tensor> {
    check_logits("dkd", z_s, z_t)?;
    check_temperature("dkd", t)?;
    let (rows, classes) = (z_s.dims()[0], z_s.dims()[1]);
    if classes < 2 {
        invalid_err!("dkd", "needs at least 2 classes, got logits {}", z_s.shape());
    }
    let gt = label_mask("dkd", labels, rows, classes, z_s)?;
    let other = gt.affine(-1.0, 1.0)?;
    let (zs, zt) = (z_s.scale(1.0 / t)?, z_t.scale(1.0 / t)?);
    let binary = |p: &Tensor| -> Result<Tensor> {
        let target = p.mul(&gt)?.sum_dim(1, true)?;
        let rest = p.mul(&other)?.sum_dim(1, true)?;
        Tensor::concat(&[&target, &rest], 1)
    };
    let tckd = binary(&zs.softmax(1)?)?.log()?.kl_div(&binary(&zt.softmax(1)?)?)?;
    let shift = gt.scale(1000.0)?;
    let log_ps2 = zs.sub(&shift)?.log_softmax(1)?;
    let pt2 = zt.sub(&shift)?.softmax(1)?;
    let nckd = log_ps2.kl_div(&pt2)?;
    tckd.scale(alpha * t * t)?.add(&nckd.scale(beta * t * t)?)
}

/// mdistiller's warm-up ramp `min(epoch / warmup, 1)` (epochs count from 1 as in its trainer;
/// `warmup = 0` disables the ramp).
pub fn warmup_factor(epoch: usize, warmup: usize) -> f32 {
    if warmup == 0 {
        1.0
    } else {
        (epoch as f32 / warmup as f32).min(1.0)
    }
}

/// Pearson correlation of each row of a and b ([rows, cols] -> [rows]), DIST's
/// `cosine_similarity(a - mean, b - mean, eps=1e-8)` with the eps added to the norm product.
fn pearson_rows(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = a.sub(&a.mean_dims(&[1], true)?)?;
    let b = b.sub(&b.mean_dims(&[1], true)?)?;
    let num = a.mul(&b)?.sum_dim(1, false)?;
    let den = a.norm_dims(&[1], false)?.mul(&b.norm_dims(&[1], false)?)?.add_scalar(1e-8)?;
    num.div(&den)
}

/// DIST (Huang et al. 2022): with `y = softmax(z/T)`,
/// `T²·(beta·(1 − mean_n ρ(y_s[n,:], y_t[n,:])) + gamma·(1 − mean_k ρ(y_s[:,k], y_t[:,k])))`,
/// ρ the Pearson correlation (inter-class relation per sample, intra-class relation per class).
pub fn dist(z_s: &Tensor, z_t: &Tensor, beta: f32, gamma: f32, t: f32) -> Result<Tensor> {
    check_logits("dist", z_s, z_t)?;
    check_temperature("dist", t)?;
    if z_s.dims()[0] < 2 || z_s.dims()[1] < 2 {
        invalid_err!("dist", "needs at least 2 samples and 2 classes (Pearson over each), got {}", z_s.shape());
    }
    let ys = z_s.scale(1.0 / t)?.softmax(1)?;
    let yt = z_t.scale(1.0 / t)?.softmax(1)?;
    let inter = pearson_rows(&ys, &yt)?.mean_all()?.affine(-1.0, 1.0)?;
    let intra = pearson_rows(&ys.transpose(0, 1)?, &yt.transpose(0, 1)?)?.mean_all()?.affine(-1.0, 1.0)?;
    inter.scale(beta * t * t)?.add(&intra.scale(gamma * t * t)?)
}

/// NORM's logit normalisation (D.20): `ceta·layer_norm(z)` over the classes, no affine, eps 1e-7.
/// The NORM training loop applies it to student and teacher logits before CE and KD.
pub fn norm_logits(z: &Tensor, ceta: f32) -> Result<Tensor> {
    if z.rank() != 2 {
        shape_err!("norm_logits", "logits must be [batch, classes], got {}", z.shape());
    }
    let k = z.dims()[1];
    let ones = Tensor::ones([k], z.device())?;
    let zeros = Tensor::zeros([k], z.device())?;
    z.layer_norm(&ones, &zeros, 1e-7)?.scale(ceta)
}
