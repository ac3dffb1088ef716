//! Losses on embeddings (pooled features): RKD, PKT, CC, and the smooth-L1 they use.

use super::{check_batch, check_rank};
use crate::tensor::Tensor;
use crate::{invalid_err, shape_err, Result};

/// `F.smooth_l1_loss(a, b)` (β = 1, mean): `0.5·d²` where `|d| < 1`, else `|d| − 0.5`.
/// Built as `0.5·m² + (|d| − m)` with `m = min(|d|, 1)`.
pub fn smooth_l1(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        shape_err!("smooth_l1", "{} and {} must have one shape", a.shape(), b.shape());
    }
    let d = a.sub(b)?.abs()?;
    let m = d.sub(&d.add_scalar(-1.0)?.relu()?)?;
    m.sqr()?.scale(0.5)?.add(&d.sub(&m)?)?.mean_all()
}

/// Features flattened to [B, -1] with at least 2 samples (relations need pairs).
fn flat_pair(op: &'static str, f_s: &Tensor, f_t: &Tensor) -> Result<(Tensor, Tensor)> {
    check_rank(op, f_s, f_t, 1)?;
    check_batch(op, f_s, f_t)?;
    let b = f_s.dims()[0];
    if b < 2 {
        invalid_err!(op, "needs at least 2 samples in the batch, got {}", f_s.shape());
    }
    Ok((f_s.reshape([b, f_s.numel() / b])?, f_t.reshape([b, f_t.numel() / b])?))
}

/// RKD's `pdist`: Euclidean distances between rows, `sqrt(clamp(‖e_i‖² + ‖e_j‖² − 2 e_i·e_j, 1e-12))`,
/// diagonal set to 0.
fn pdist(e: &Tensor) -> Result<Tensor> {
    let b = e.dims()[0];
    let sq = e.sqr()?.sum_dim(1, true)?;
    let d = sq.add(&sq.reshape([1, b])?)?.sub(&e.gram()?.scale(2.0)?)?.clamp_min(1e-12)?.sqrt()?;
    let mut off = vec![1.0f32; b * b];
    for i in 0..b {
        off[i * b + i] = 0.0;
    }
    d.mul(&Tensor::from_slice(&off, [b, b], e.device())?)
}

/// Distances divided by their mean over the positive entries (all off-diagonal ones: the clamp
/// keeps them >= 1e-6).
fn normalised_pdist(e: &Tensor) -> Result<Tensor> {
    let b = e.dims()[0];
    let d = pdist(e)?;
    let mean = d.sum_all()?.scale(1.0 / (b * (b - 1)) as f32)?;
    d.div(&mean)
}

/// All triplet angles `⟨(e_j − e_i)/‖·‖, (e_k − e_i)/‖·‖⟩`, flattened [B³].
fn angles(e: &Tensor) -> Result<Tensor> {
    let (b, d) = (e.dims()[0], e.dims()[1]);
    let diff = e.reshape([1, b, d])?.sub(&e.reshape([b, 1, d])?)?.normalize(2, 1e-12)?;
    diff.matmul_t(&diff, false, true)?.reshape([b * b * b])
}

/// Relational KD (RepDistiller `RKDLoss`): `w_d·smooth_l1(d_s/μ_s, d_t/μ_t) + w_a·smooth_l1(ψ_s, ψ_t)`
/// on features flattened to [B, -1] (dims may differ); the teacher terms are constants.
pub fn rkd(f_s: &Tensor, f_t: &Tensor, w_d: f32, w_a: f32) -> Result<Tensor> {
    let (s, t) = flat_pair("rkd", f_s, f_t)?;
    let t = t.detach();
    let loss_d = smooth_l1(&normalised_pdist(&s)?, &normalised_pdist(&t)?)?;
    let loss_a = smooth_l1(&angles(&s)?, &angles(&t)?)?;
    loss_d.scale(w_d)?.add(&loss_a.scale(w_a)?)
}

/// Probabilistic knowledge transfer (RepDistiller `PKT.cosine_similarity_loss`, eps 1e-7): rows
/// divided by `‖row‖ + eps`, cosine similarities mapped to `(S + 1)/2` and row-normalised to sum 1,
/// then `mean(T·log((T + eps)/(S + eps)))`. (The code's NaN→0 step only fires on NaN input.)
pub fn pkt(f_s: &Tensor, f_t: &Tensor) -> Result<Tensor> {
    let (s, t) = flat_pair("pkt", f_s, f_t)?;
    const EPS: f32 = 1e-7;
    let prob = |x: &Tensor| -> Result<Tensor> {
        let x = x.div(&x.norm_dims(&[1], true)?.add_scalar(EPS)?)?;
        let sim = x.gram()?.affine(0.5, 0.5)?;
        sim.div(&sim.sum_dim(1, true)?)
    };
    let (ps, pt) = (prob(&s)?, prob(&t)?);
    pt.mul(&pt.add_scalar(EPS)?.log()?.sub(&ps.add_scalar(EPS)?.log()?)?)?.mean_all()
}

/// Correlation congruence as RepDistiller implements it (`Correlation`): with
/// `Δ = |e_s − e_t|` on the embedded features, `mean_i Σ_d Δ[i,d]·Δ[i+1,d]` over consecutive
/// samples. (The CC paper's Taylor-expanded Gaussian kernel is not what the code computes.)
pub fn cc(e_s: &Tensor, e_t: &Tensor) -> Result<Tensor> {
    if e_s.rank() != 2 || e_s.shape() != e_t.shape() {
        shape_err!("cc", "student {} and teacher {} embeddings must be [B, D] of one shape", e_s.shape(), e_t.shape());
    }
    let b = e_s.dims()[0];
    if b < 2 {
        invalid_err!("cc", "needs at least 2 samples in the batch, got {}", e_s.shape());
    }
    let delta = e_s.sub(e_t)?.abs()?;
    delta.narrow(0, 0, b - 1)?.mul(&delta.narrow(0, 1, b - 1)?)?.sum_dim(1, false)?.mean_all()
}
