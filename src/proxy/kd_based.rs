//! DisWOT's "KD-based zero-proxies" (METHODS §1.9): any distillation loss between the randomly
//! initialised teacher and student on one real batch, negated: score = −L(T(x), S(x)), higher
//! is better. Tensors follow the reference code's taps: logits for KD; the pooled embedding for
//! FitNet (MSE), RKD, PKT and CC; the stage maps after the stem (RepDistiller's feats[1:-1],
//! the last stages paired when the counts differ) for AT and NST; the final map for SP.
//!
//! KD uses the usual roles, KL(p_teacher ‖ p_student)·T² with T = 4; the reference script swaps
//! them (D.10), which we do not reproduce. CC's two Linear(D → 128) embeds are drawn from the run
//! seed (they are untrained in a zero-cost setting too).

use super::{NetFactory, Proxy, ProxyInfo, ProxyScore, ScoringContext};
use crate::autograd::no_grad;
use crate::distill::{self, CcEmbed};
use crate::models::Features;
use crate::tensor::Tensor;
use crate::{invalid_err, Result};

/// Which loss a KD-based proxy evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdLoss {
    Kd,
    FitNet,
    At,
    Sp,
    Rkd,
    Pkt,
    Cc,
    Nst,
}

pub struct KdProxy(pub KdLoss);

/// Every KD-based proxy, in registry order.
pub fn all() -> Vec<Box<dyn Proxy>> {
    use KdLoss::*;
    [Kd, FitNet, At, Sp, Rkd, Pkt, Cc, Nst].into_iter().map(|l| Box::new(KdProxy(l)) as Box<dyn Proxy>).collect()
}

/// The stage maps after the stem, the last `n` of each side paired.
fn stage_pairs<'a>(s: &'a Features, t: &'a Features) -> (&'a [Tensor], &'a [Tensor]) {
    let (ss, ts) = (&s.stages[1..=s.final_map], &t.stages[1..=t.final_map]);
    let n = ss.len().min(ts.len());
    (&ss[ss.len() - n..], &ts[ts.len() - n..])
}

impl KdProxy {
    fn name(&self) -> &'static str {
        match self.0 {
            KdLoss::Kd => "kd",
            KdLoss::FitNet => "fitnet",
            KdLoss::At => "at",
            KdLoss::Sp => "sp",
            KdLoss::Rkd => "rkd",
            KdLoss::Pkt => "pkt",
            KdLoss::Cc => "cc",
            KdLoss::Nst => "nst",
        }
    }

    fn loss(&self, ctx: &ScoringContext, s: &Features, t: &Features) -> Result<Tensor> {
        match self.0 {
            KdLoss::Kd => distill::kd(&s.logits, &t.logits, 4.0),
            KdLoss::FitNet => {
                if s.pooled.dims() != t.pooled.dims() {
                    invalid_err!(
                        "fitnet",
                        "student embedding {} and teacher {} differ: the FitNet proxy compares equal widths",
                        s.pooled.shape(),
                        t.pooled.shape()
                    );
                }
                distill::mse(&s.pooled, &t.pooled)
            }
            KdLoss::At => {
                let (gs, gt) = stage_pairs(s, t);
                distill::sum_pairs("at", gs, gt, |a, b| distill::at(a, b, 2.0))
            }
            KdLoss::Nst => {
                let (gs, gt) = stage_pairs(s, t);
                distill::sum_pairs("nst", gs, gt, distill::nst)
            }
            KdLoss::Sp => {
                // SP's row-normalised 1x1 similarity matrices are both 1 for one image.
                super::require_pairs("sp", ctx)?;
                distill::sp(s.final_map(), t.final_map())
            }
            KdLoss::Rkd => distill::rkd(&s.pooled, &t.pooled, 25.0, 50.0),
            KdLoss::Pkt => distill::pkt(&s.pooled, &t.pooled),
            KdLoss::Cc => {
                let mut rng = ctx.rng_for("cc");
                let (ds, dt) = (s.pooled.dims()[1], t.pooled.dims()[1]);
                CcEmbed::new(ds, dt, 128, &mut rng, s.pooled.device())?.loss(&s.pooled, &t.pooled)
            }
        }
    }
}

impl Proxy for KdProxy {
    fn info(&self) -> ProxyInfo {
        let reads = match self.0 {
            KdLoss::Kd => "teacher and student logits (T = 4)",
            KdLoss::FitNet | KdLoss::Rkd | KdLoss::Pkt | KdLoss::Cc => "teacher and student pooled embeddings",
            KdLoss::At | KdLoss::Nst => "teacher and student stage maps",
            KdLoss::Sp => "teacher and student final maps",
        };
        ProxyInfo { name: self.name(), higher_is_better: true, needs_gradients: false, needs_teacher: true, reads }
    }

    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let teacher = ctx.teacher(self.name())?;
        let student = build()?;
        let _g = no_grad();
        let f = student.forward_features(&ctx.images)?;
        let loss = self.loss(ctx, &f, &teacher.features)?.item()? as f64;
        Ok(ProxyScore::scalar(-loss))
    }
}
