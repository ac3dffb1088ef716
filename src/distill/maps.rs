//! Losses on feature maps: SP and ICKD (DisWOT's two kernels, METHODS §0.2), AT, NST, the FitNets
//! hint MSE, ReviewKD's HCL and NORM's N-to-one MSE.

use super::{check_batch, check_rank};
use crate::tensor::Tensor;
use crate::{invalid_err, shape_err, Result};

/// PyTorch `F.normalize`'s default eps.
const NORMALIZE_EPS: f32 = 1e-12;

/// `F.mse_loss(a, b)`: the mean of the squared differences over all elements (FitNets' hint loss).
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        shape_err!("mse", "student {} and teacher {} must have one shape", a.shape(), b.shape());
    }
    a.sub(b)?.sqr()?.mean_all()
}

/// Similarity-preserving KD (RepDistiller `Similarity`, DisWOT's relation kernel):
/// `G = l2norm_rows(A·Aᵀ)` with `A` the features flattened to [B, -1];
/// `Σ (G_t − G_s)² / B²`. Only the batch sizes must match.
pub fn sp(f_s: &Tensor, f_t: &Tensor) -> Result<Tensor> {
    check_rank("sp", f_s, f_t, 1)?;
    check_batch("sp", f_s, f_t)?;
    let b = f_s.dims()[0];
    let kernel = |f: &Tensor| -> Result<Tensor> { f.reshape([b, f.numel() / b])?.gram()?.normalize(1, NORMALIZE_EPS) };
    kernel(f_t)?.sub(&kernel(f_s)?)?.sqr()?.sum_all()?.scale(1.0 / (b * b) as f32)
}

/// The ICKD body on [b, c, hw_s] and [b, c, hw_t]: per-sample channel Grams, rows L2-normalised,
/// `Σ (E_s − E_t)² / (c·b)`.
fn ickd_flat(p_s: &Tensor, p_t: &Tensor) -> Result<Tensor> {
    let (b, c) = (p_s.dims()[0], p_s.dims()[1]);
    let kernel = |p: &Tensor| -> Result<Tensor> { p.gram()?.normalize(2, NORMALIZE_EPS) };
    kernel(p_s)?.sub(&kernel(p_t)?)?.sqr()?.sum_all()?.scale(1.0 / (c * b) as f32)
}

/// Inter-channel correlation KD (DisWOT `ICKDLoss.batch_loss`, its semantic kernel): inputs of
/// rank >= 2 viewed as [b, c, -1]; the batch `b` and channels `c` must match, the spatial sizes may
/// differ (the c×c Grams do not depend on them).
pub fn ickd(f_s: &Tensor, f_t: &Tensor) -> Result<Tensor> {
    check_rank("ickd", f_s, f_t, 2)?;
    if f_s.dims()[..2] != f_t.dims()[..2] {
        shape_err!(
            "ickd",
            "student {} and teacher {} must agree in batch and channels (dims 0 and 1); project one side first",
            f_s.shape(),
            f_t.shape()
        );
    }
    let (b, c) = (f_s.dims()[0], f_s.dims()[1]);
    ickd_flat(&f_s.reshape([b, c, f_s.numel() / (b * c)])?, &f_t.reshape([b, c, f_t.numel() / (b * c)])?)
}

/// ICKD with the released code's reshape quirk (METHODS D.3): the teacher is viewed with the
/// student's `b, c`, which PyTorch accepts whenever its element count is a multiple of `b·c`
/// (mixing samples or classes when its own b, c differ). Use [`ickd`] unless reproducing the
/// DisWOT scripts bit for bit.
pub fn ickd_compat(f_s: &Tensor, f_t: &Tensor) -> Result<Tensor> {
    check_rank("ickd_compat", f_s, f_t, 2)?;
    let (b, c) = (f_s.dims()[0], f_s.dims()[1]);
    if b * c == 0 || !f_t.numel().is_multiple_of(b * c) {
        shape_err!(
            "ickd_compat",
            "teacher {} cannot be viewed as [{b}, {c}, -1] (student {})",
            f_t.shape(),
            f_s.shape()
        );
    }
    ickd_flat(&f_s.reshape([b, c, f_s.numel() / (b * c)])?, &f_t.reshape([b, c, f_t.numel() / (b * c)])?)
}

/// RepDistiller's AT/NST pooling: the map with the larger height is adaptive-average-pooled to
/// the other's size (the code pools to (H, H); we pool to (H, W), identical for square maps).
fn pool_to_smaller(op: &'static str, f_s: &Tensor, f_t: &Tensor) -> Result<(Tensor, Tensor)> {
    if f_s.rank() != 4 || f_t.rank() != 4 {
        shape_err!(op, "student {} and teacher {} must be maps [b, c, h, w]", f_s.shape(), f_t.shape());
    }
    check_batch(op, f_s, f_t)?;
    let (sh, sw, th, tw) = (f_s.dims()[2], f_s.dims()[3], f_t.dims()[2], f_t.dims()[3]);
    let (s, t) = if sh > th {
        (f_s.adaptive_avg_pool2d(th, tw)?, f_t.clone())
    } else if sh < th {
        (f_s.clone(), f_t.adaptive_avg_pool2d(sh, sw)?)
    } else {
        (f_s.clone(), f_t.clone())
    };
    if s.dims()[2..] != t.dims()[2..] {
        shape_err!(
            op,
            "student {} and teacher {} spatial sizes cannot be matched by pooling",
            f_s.shape(),
            f_t.shape()
        );
    }
    Ok((s, t))
}

/// Attention transfer (RepDistiller `Attention.at_loss`, p = 2 by default): pool the larger map,
/// `at(F) = l2norm(mean_c F^p)` flattened per sample, then the mean of `(at_s − at_t)²`.
pub fn at(f_s: &Tensor, f_t: &Tensor, p: f32) -> Result<Tensor> {
    let (s, t) = pool_to_smaller("at", f_s, f_t)?;
    let b = s.dims()[0];
    let attention = |f: &Tensor| -> Result<Tensor> {
        let powered = if p == 2.0 { f.sqr()? } else { f.pow(p)? };
        let m = powered.mean_dims(&[1], false)?;
        m.reshape([b, m.numel() / b])?.normalize(1, NORMALIZE_EPS)
    };
    attention(&s)?.sub(&attention(&t)?)?.sqr()?.mean_all()
}

/// Sum of a per-pair loss over stage pairs (RepDistiller's `sum(loss_group)`).
pub fn sum_pairs(
    op: &'static str,
    g_s: &[Tensor],
    g_t: &[Tensor],
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if g_s.len() != g_t.len() || g_s.is_empty() {
        invalid_err!(op, "{} student and {} teacher maps: need equally many, at least one", g_s.len(), g_t.len());
    }
    let mut total = f(&g_s[0], &g_t[0])?;
    for (s, t) in g_s.iter().zip(g_t).skip(1) {
        total = total.add(&f(s, t)?)?;
    }
    Ok(total)
}

/// Neuron selectivity transfer (RepDistiller `NSTLoss`): pool the larger map, L2-normalise each
/// channel over space, polynomial kernel `k(a, b) = (aᵀb)²` between channels;
/// `mean k(t,t) (detached) + mean k(s,s) − 2·mean k(s,t)`. Channel counts may differ.
pub fn nst(f_s: &Tensor, f_t: &Tensor) -> Result<Tensor> {
    let (s, t) = pool_to_smaller("nst", f_s, f_t)?;
    let flat = |f: &Tensor| -> Result<Tensor> {
        let d = f.dims();
        f.reshape([d[0], d[1], d[2] * d[3]])?.normalize(2, NORMALIZE_EPS)
    };
    let (s, t) = (flat(&s)?, flat(&t)?);
    let poly = |a: &Tensor, b: &Tensor| -> Result<Tensor> { a.matmul_t(b, false, true)?.sqr()?.mean_all() };
    poly(&t, &t)?.detach().add(&poly(&s, &s)?)?.sub(&poly(&s, &t)?.scale(2.0)?)
}

/// ReviewKD's hierarchical context loss (`hcl` / mdistiller `hcl_loss`): per pair, the MSE of the
/// maps plus the MSEs after adaptive average pooling to 4×4, 2×2, 1×1 (levels smaller than the
/// map only) weighted 1/2, 1/4, 1/8, divided by the sum of the weights; summed over pairs.
pub fn hcl(fs: &[Tensor], ft: &[Tensor]) -> Result<Tensor> {
    sum_pairs("hcl", fs, ft, |s, t| {
        if s.rank() != 4 || s.shape() != t.shape() {
            shape_err!("hcl", "student {} and teacher {} must be maps [b, c, h, w] of one shape", s.shape(), t.shape());
        }
        let h = s.dims()[2];
        let mut loss = mse(s, t)?;
        let (mut cnt, mut tot) = (1.0f32, 1.0f32);
        for l in [4usize, 2, 1] {
            if l >= h {
                continue;
            }
            cnt /= 2.0;
            let pooled = mse(&s.adaptive_avg_pool2d(l, l)?, &t.adaptive_avg_pool2d(l, l)?)?;
            loss = loss.add(&pooled.scale(cnt)?)?;
            tot += cnt;
        }
        loss.scale(1.0 / tot)
    })
}

/// NORM's loss (METHODS §6.2, CIFAR loop): the teacher map is max-pooled by `H_t / H_s` when
/// larger, tiled `n` times along channels and detached; the result is `mse(e, tile(f_t)) · n`,
/// i.e. the sum over the n segments of the expanded student feature `e` (n·C_t channels).
pub fn norm_loss(e: &Tensor, f_t: &Tensor, n: usize) -> Result<Tensor> {
    if e.rank() != 4 || f_t.rank() != 4 {
        shape_err!("norm", "expanded student {} and teacher {} must be maps [b, c, h, w]", e.shape(), f_t.shape());
    }
    check_batch("norm", e, f_t)?;
    if n == 0 || e.dims()[1] != n * f_t.dims()[1] {
        shape_err!(
            "norm",
            "expanded student {} must have n·C_t = {n}·{} channels (teacher {})",
            e.shape(),
            f_t.dims()[1],
            f_t.shape()
        );
    }
    let pool = f_t.dims()[2] / e.dims()[2].max(1);
    let t = if pool > 1 { f_t.max_pool2d(pool, pool, 0)? } else { f_t.clone() };
    if t.dims()[2..] != e.dims()[2..] {
        shape_err!("norm", "teacher {} does not pool to the student's spatial size {}", f_t.shape(), e.shape());
    }
    let t = t.detach();
    let tiled = Tensor::concat(&vec![&t; n], 1)?;
    mse(e, &tiled)?.scale(n as f32)
}
