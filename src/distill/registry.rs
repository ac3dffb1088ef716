//! Distillers by name: each method's default weights (RepDistiller's CIFAR-100 scripts, METHODS
//! B.2, or the method's own repository), the [`Features`] it reads, its trainable parts, and the
//! total loss `γ·CE + α·KD_T + β·other` as RepDistiller's `train_distill` combines them.

use super::modules::{CcEmbed, ConvReg, NormFt, ReviewKd};
use super::{at, dist, dkd, hcl, ickd, kd, mse, norm_logits, norm_loss, nst, pkt, rkd, sp, sum_pairs, warmup_factor};
use crate::models::Features;
use crate::nn::{BatchNorm2d, Conv2d, Conv2dConfig, Linear, Module, Sequential};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, module_boilerplate, shape_err, Device, Result};

/// Loss weights: `γ·CE + α·KD_T + β·other`, with `kd_t` the temperature of the KD term.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    pub gamma: f32,
    pub alpha: f32,
    pub beta: f32,
    pub kd_t: f32,
}

const fn w(gamma: f32, alpha: f32, beta: f32) -> Weights {
    Weights { gamma, alpha, beta, kd_t: 4.0 }
}

/// Which entries of [`Features`] a loss reads (RepDistiller's `feat` list indices in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tap {
    /// `logits` [B, K].
    Logits,
    /// The ground-truth labels (DKD).
    Labels,
    /// `pooled` [B, D] (`feat[-1]`).
    Pooled,
    /// `final_map()`, the map before global pooling (`feat[-2]`).
    FinalMap,
    /// `stages[i]` (`feat[i]`; FitNets' hint layer is 2).
    Stage(usize),
    /// `stages[1..]`, every stage output after the stem (`feat[1:-1]`).
    InnerStages,
    /// `stages[1..]` then `pooled` as a 1×1 map (mdistiller ReviewKD, student side).
    InnerStagesAndPooled,
    /// `preact_stages[1..]` then `pooled` as a 1×1 map (mdistiller ReviewKD, teacher side).
    PreactInnerStagesAndPooled,
}

/// One registered loss.
#[derive(Clone, Copy, Debug)]
pub struct LossInfo {
    pub name: &'static str,
    /// Default weights of the CIFAR-100 recipe.
    pub weights: Weights,
    /// Student tensors read by the β term (and CE/KD always read the logits).
    pub student: &'static [Tap],
    /// Teacher tensors read by the β term.
    pub teacher: &'static [Tap],
    /// The trainable parts that must join the optimiser, if any.
    pub trainable: Option<&'static str>,
    /// Where the definition and the weights come from, and our choices where the sources are silent.
    pub source: &'static str,
}

const LOGITS: &[Tap] = &[Tap::Logits];
const POOLED: &[Tap] = &[Tap::Pooled];
const FINAL: &[Tap] = &[Tap::FinalMap];
const INNER: &[Tap] = &[Tap::InnerStages];

/// Every loss `Distiller::new` accepts, in the order users see them.
pub const LOSSES: &[LossInfo] = &[
    LossInfo {
        name: "kd",
        weights: w(0.1, 0.9, 0.0),
        student: LOGITS,
        teacher: LOGITS,
        trainable: None,
        source: "Hinton KD, RepDistiller DistillKL; -r 0.1 -a 0.9 -b 0, T = 4 (scripts/run_cifar_distill.sh)",
    },
    LossInfo {
        name: "fitnet",
        weights: w(1.0, 0.0, 100.0),
        student: &[Tap::Stage(2)],
        teacher: &[Tap::Stage(2)],
        trainable: Some("ConvReg regressor on the student hint map (conv + BatchNorm + ReLU)"),
        source: "RepDistiller HintLoss + ConvReg, hint_layer 2; -a 0 -b 100",
    },
    LossInfo {
        name: "at",
        weights: w(1.0, 0.0, 1000.0),
        student: INNER,
        teacher: INNER,
        trainable: None,
        source: "RepDistiller Attention (p = 2), summed over stage pairs; -a 0 -b 1000",
    },
    LossInfo {
        name: "sp",
        weights: w(1.0, 0.0, 3000.0),
        student: FINAL,
        teacher: FINAL,
        trainable: None,
        source: "RepDistiller Similarity on feat[-2]; -a 0 -b 3000",
    },
    LossInfo {
        name: "rkd",
        weights: w(1.0, 0.0, 1.0),
        student: POOLED,
        teacher: POOLED,
        trainable: None,
        source: "RepDistiller RKDLoss (w_d 25, w_a 50) on feat[-1]; -a 0 -b 1",
    },
    LossInfo {
        name: "pkt",
        weights: w(1.0, 0.0, 30000.0),
        student: POOLED,
        teacher: POOLED,
        trainable: None,
        source: "RepDistiller PKT on feat[-1]; -a 0 -b 30000",
    },
    LossInfo {
        name: "cc",
        weights: w(1.0, 0.0, 0.02),
        student: POOLED,
        teacher: POOLED,
        trainable: Some("LinearEmbed D_s -> 128 (student) and D_t -> 128 (teacher)"),
        source: "RepDistiller Correlation on LinearEmbed(feat[-1]), feat_dim 128; -a 0 -b 0.02",
    },
    LossInfo {
        name: "nst",
        weights: w(1.0, 0.0, 50.0),
        student: INNER,
        teacher: INNER,
        trainable: None,
        source: "RepDistiller NSTLoss summed over stage pairs; -a 0 -b 50",
    },
    LossInfo {
        name: "dist",
        weights: w(1.0, 0.0, 1.0),
        student: LOGITS,
        teacher: LOGITS,
        trainable: None,
        source: "DIST (Huang et al. 2022) with its CIFAR settings beta = gamma = 2, tau = 4 (not verified against the paper's tables, METHODS B.2)",
    },
    LossInfo {
        name: "dkd",
        weights: w(1.0, 0.0, 1.0),
        student: &[Tap::Logits, Tap::Labels],
        teacher: LOGITS,
        trainable: None,
        source: "mdistiller DKD, CIFAR config: CE weight 1, alpha 1, beta 8, T 4, warm-up 20 epochs",
    },
    LossInfo {
        name: "norm",
        weights: w(0.25, 0.0, 1.0),
        student: FINAL,
        teacher: FINAL,
        trainable: Some("NORM feature transform (1x1 conv+BN expand to N*C_t, 1x1 conv+BN back, residual) on the student's last map"),
        source: "OSVAI/NORM CIFAR loop: N = 8, -b 1 with the epoch schedule beta1, -a 0, logits ceta*LayerNorm (2.5); -r is a grid {0.0625..0.5} in the scripts, 0.25 is our pick",
    },
    LossInfo {
        name: "diswot",
        weights: w(0.1, 0.9, 1.0),
        student: FINAL,
        teacher: FINAL,
        trainable: Some("1x1 conv + BN projecting the student's last map to the teacher's width, only when the widths differ"),
        source: "DisWOT-dagger: vanilla KD (-r 0.1 -a 0.9) + 3000*SP + 1*ICKD on the last maps; the paper's weights are unpublished (METHODS D.9): 3000 is RepDistiller's SP weight, the ICKD weight 1 and the projection (DisWOT ICKD.py's commented Embed) are our choices",
    },
    LossInfo {
        name: "hcl",
        weights: w(1.0, 0.0, 1.0),
        student: &[Tap::InnerStagesAndPooled],
        teacher: &[Tap::PreactInnerStagesAndPooled],
        trainable: Some("ReviewKD ABF fusion modules, one per level"),
        source: "mdistiller ReviewKD: hcl over ABF outputs vs teacher pre-activation stages + pooled, weight 1, warm-up 20 epochs",
    },
];

/// The registered names.
pub fn names() -> Vec<&'static str> {
    LOSSES.iter().map(|l| l.name).collect()
}

/// A loss by name; unknown names are rejected with the list.
pub fn info(name: &str) -> Result<&'static LossInfo> {
    match LOSSES.iter().find(|l| l.name == name) {
        Some(l) => Ok(l),
        None => invalid_err!("distill", "unknown loss '{name}': use one of {}", names().join(", ")),
    }
}

/// A method with its own hyper-parameters (defaults from [`Distiller::new`]) and trainable parts.
pub enum Method {
    Kd,
    Fitnet { hint_layer: usize, regressor: ConvReg },
    At { p: f32 },
    Sp,
    Rkd { w_d: f32, w_a: f32 },
    Pkt,
    Cc { embed: CcEmbed },
    Nst,
    Dist { beta: f32, gamma: f32, t: f32 },
    Dkd { alpha: f32, beta: f32, t: f32, warmup: usize },
    Norm { ft: NormFt, ceta: f32 },
    Diswot { proj: Option<Sequential>, w_sp: f32, w_ickd: f32 },
    Hcl { review: ReviewKd, warmup: usize },
}

/// The terms of one step's loss. `logits` are the student logits to report accuracy on (NORM's
/// go through its feature transform).
pub struct LossTerms {
    pub ce: Tensor,
    pub kd: Option<Tensor>,
    pub other: Option<Tensor>,
    pub total: Tensor,
    pub logits: Tensor,
}

/// One distillation method on a student/teacher pair. As a [`Module`] its parameters are the
/// trainable parts (regressor, embeds, feature transform, ABFs), to be optimised with the student.
pub struct Distiller {
    pub info: &'static LossInfo,
    pub weights: Weights,
    pub method: Method,
}

fn stage(op: &'static str, f: &Features, i: usize, who: &str) -> Result<Tensor> {
    match f.stages.get(i) {
        Some(t) => Ok(t.clone()),
        None => invalid_err!(op, "the {who} has {} stage maps, stage {i} is needed", f.stages.len()),
    }
}

/// `stages[1..]` of both, which must be equally many.
fn inner_stages(op: &'static str, s: &Features, t: &Features) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    if s.stages.len() != t.stages.len() || s.stages.len() < 2 {
        invalid_err!(
            op,
            "student has {} stage maps and teacher {}: stage-wise losses need equally many (stem + at least one stage)",
            s.stages.len(),
            t.stages.len()
        );
    }
    Ok((s.stages[1..].to_vec(), t.stages[1..].to_vec()))
}

/// ReviewKD's levels: `stages[1..]` (or `preact_stages[1..]`) then pooled as [B, D, 1, 1].
fn review_levels(f: &Features, preact: bool) -> Result<Vec<Tensor>> {
    let maps = if preact { &f.preact_stages } else { &f.stages };
    if maps.len() < 2 || f.pooled.rank() != 2 {
        invalid_err!("hcl", "needs a stem, at least one stage and a pooled [B, D] feature, got {} maps", maps.len());
    }
    let mut v = maps[1..].to_vec();
    let d = f.pooled.dims();
    v.push(f.pooled.reshape([d[0], d[1], 1, 1])?);
    Ok(v)
}

/// NORM's CIFAR schedule of its loss weight β₁ by epoch (counted from 1 as in its trainer).
pub fn norm_beta1(epoch: usize) -> f32 {
    match epoch {
        e if e < 10 => 0.1,
        e if e < 20 => 0.5,
        e if e < 180 => 1.0,
        e if e < 210 => 0.5,
        _ => 0.1,
    }
}

impl Distiller {
    /// Builds `name` for a student/teacher pair, sizing the trainable parts from one probe forward
    /// of each network (as RepDistiller does with a random batch).
    pub fn new(name: &str, s: &Features, t: &Features, rng: &mut Rng, dev: Device) -> Result<Distiller> {
        let info = info(name)?;
        let width = |f: &Tensor| f.dims().get(1).copied().unwrap_or(0);
        let method = match name {
            "kd" => Method::Kd,
            "fitnet" => {
                let (fs, ft) = (stage("fitnet", s, 2, "student")?, stage("fitnet", t, 2, "teacher")?);
                Method::Fitnet { hint_layer: 2, regressor: ConvReg::new(fs.dims(), ft.dims(), true, rng, dev)? }
            }
            "at" => {
                inner_stages("at", s, t)?;
                Method::At { p: 2.0 }
            }
            "sp" => Method::Sp,
            "rkd" => Method::Rkd { w_d: 25.0, w_a: 50.0 },
            "pkt" => Method::Pkt,
            "cc" => Method::Cc { embed: CcEmbed::new(width(&s.pooled), width(&t.pooled), 128, rng, dev)? },
            "nst" => {
                inner_stages("nst", s, t)?;
                Method::Nst
            }
            "dist" => Method::Dist { beta: 2.0, gamma: 2.0, t: 4.0 },
            "dkd" => Method::Dkd { alpha: 1.0, beta: 8.0, t: 4.0, warmup: 20 },
            "norm" => {
                Method::Norm { ft: NormFt::new(width(s.final_map()), width(t.final_map()), 8, rng, dev)?, ceta: 2.5 }
            }
            "diswot" => {
                let (cs, ct) = (width(s.final_map()), width(t.final_map()));
                let proj = if cs == ct {
                    None
                } else {
                    Some(
                        Sequential::new()
                            .with(Conv2d::new(cs, ct, 1, Conv2dConfig::default().bias(false), rng, dev)?)
                            .with(BatchNorm2d::new(ct, dev)?),
                    )
                };
                Method::Diswot { proj, w_sp: 3000.0, w_ickd: 1.0 }
            }
            "hcl" => {
                let shapes = |v: Vec<Tensor>| v.iter().map(|t| t.dims().to_vec()).collect::<Vec<_>>();
                let (ls, lt) = (shapes(review_levels(s, false)?), shapes(review_levels(t, true)?));
                Method::Hcl { review: ReviewKd::new(&ls, &lt, rng, dev)?, warmup: 20 }
            }
            _ => invalid_err!("distill", "loss '{name}' is registered but has no constructor"),
        };
        Ok(Distiller { info, weights: info.weights, method })
    }

    pub fn name(&self) -> &'static str {
        self.info.name
    }

    /// The student's logits as this method trains and evaluates them: NORM's pass through its
    /// feature transform and the student's classifier; every other method returns `s.logits`.
    pub fn student_logits(&self, s: &Features, classifier: &Linear) -> Result<Tensor> {
        Ok(self.student_pass(s, classifier)?.0)
    }

    /// (logits, NORM's expanded feature).
    fn student_pass(&self, s: &Features, classifier: &Linear) -> Result<(Tensor, Option<Tensor>)> {
        match &self.method {
            Method::Norm { ft, .. } => {
                let (e, f2) = ft.expand(s.final_map())?;
                let pooled = f2.adaptive_avg_pool2d(1, 1)?.flatten_from(1)?;
                Ok((classifier.forward(&pooled)?, Some(e)))
            }
            _ => Ok((s.logits.clone(), None)),
        }
    }

    /// The β term alone (before β), for the epoch given (counted from 1; warm-ups and NORM's β₁
    /// schedule depend on it). `expanded` is NORM's expanded student feature.
    fn other(
        &self,
        s: &Features,
        t: &Features,
        labels: &[u32],
        epoch: usize,
        expanded: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let loss = match &self.method {
            Method::Kd => return Ok(None),
            Method::Fitnet { hint_layer, regressor } => {
                let fs = regressor.forward(&stage("fitnet", s, *hint_layer, "student")?)?;
                mse(&fs, &stage("fitnet", t, *hint_layer, "teacher")?)?
            }
            Method::At { p } => {
                let (gs, gt) = inner_stages("at", s, t)?;
                sum_pairs("at", &gs, &gt, |a, b| at(a, b, *p))?
            }
            Method::Sp => sp(s.final_map(), t.final_map())?,
            Method::Rkd { w_d, w_a } => rkd(&s.pooled, &t.pooled, *w_d, *w_a)?,
            Method::Pkt => pkt(&s.pooled, &t.pooled)?,
            Method::Cc { embed } => embed.loss(&s.pooled, &t.pooled)?,
            Method::Nst => {
                let (gs, gt) = inner_stages("nst", s, t)?;
                sum_pairs("nst", &gs, &gt, nst)?
            }
            Method::Dist { beta, gamma, t: temp } => dist(&s.logits, &t.logits, *beta, *gamma, *temp)?,
            Method::Dkd { alpha, beta, t: temp, warmup } => {
                dkd(&s.logits, &t.logits, labels, *alpha, *beta, *temp)?.scale(warmup_factor(epoch, *warmup))?
            }
            Method::Norm { ft, .. } => {
                let Some(e) = expanded else { invalid_err!("norm", "the expanded student feature is missing") };
                norm_loss(e, t.final_map(), ft.n)?.scale(norm_beta1(epoch))?
            }
            Method::Diswot { proj, w_sp, w_ickd } => {
                let fs = match proj {
                    Some(p) => p.forward(s.final_map())?,
                    None => s.final_map().clone(),
                };
                sp(s.final_map(), t.final_map())?.scale(*w_sp)?.add(&ickd(&fs, t.final_map())?.scale(*w_ickd)?)?
            }
            Method::Hcl { review, warmup } => {
                let out = review.review(&review_levels(s, false)?)?;
                hcl(&out, &review_levels(t, true)?)?.scale(warmup_factor(epoch, *warmup))?
            }
        };
        Ok(Some(loss))
    }

    /// `γ·CE + α·KD_T + β·other` for one batch. `s` and `t` come from the student's and the
    /// (frozen, no-grad) teacher's forward passes on the same batch, `classifier` is the student's
    /// final Linear (used by NORM only), `epoch` counts from 1. Terms with a zero weight are not
    /// computed.
    pub fn loss(
        &self,
        s: &Features,
        t: &Features,
        labels: &[u32],
        epoch: usize,
        classifier: &Linear,
    ) -> Result<LossTerms> {
        if s.logits.dims().first() != t.logits.dims().first() {
            shape_err!(
                "distill",
                "student logits {} and teacher logits {} differ in batch",
                s.logits.shape(),
                t.logits.shape()
            );
        }
        let (logits, expanded) = self.student_pass(s, classifier)?;
        let (zs, zt) = match &self.method {
            Method::Norm { ceta, .. } => (norm_logits(&logits, *ceta)?, norm_logits(&t.logits, *ceta)?),
            _ => (logits.clone(), t.logits.clone()),
        };
        let w = self.weights;
        let ce = zs.cross_entropy(labels)?;
        let mut total = ce.scale(w.gamma)?;
        let kd_term = if w.alpha != 0.0 { Some(kd(&zs, &zt, w.kd_t)?) } else { None };
        if let Some(k) = &kd_term {
            total = total.add(&k.scale(w.alpha)?)?;
        }
        let other = if w.beta != 0.0 { self.other(s, t, labels, epoch, expanded.as_ref())? } else { None };
        if let Some(o) = &other {
            total = total.add(&o.scale(w.beta)?)?;
        }
        Ok(LossTerms { ce, kd: kd_term, other, total, logits })
    }
}

impl Module for Distiller {
    fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        invalid_err!("Distiller", "reads student and teacher features: call Distiller::loss")
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        match &self.method {
            Method::Fitnet { regressor, .. } => vec![("regressor".into(), regressor as &dyn Module)],
            Method::Cc { embed } => vec![("embed".into(), embed as &dyn Module)],
            Method::Norm { ft, .. } => vec![("ft".into(), ft as &dyn Module)],
            Method::Diswot { proj: Some(p), .. } => vec![("proj".into(), p as &dyn Module)],
            Method::Hcl { review, .. } => vec![("review".into(), review as &dyn Module)],
            _ => Vec::new(),
        }
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        match &mut self.method {
            Method::Fitnet { regressor, .. } => vec![regressor as &mut dyn Module],
            Method::Cc { embed } => vec![embed as &mut dyn Module],
            Method::Norm { ft, .. } => vec![ft as &mut dyn Module],
            Method::Diswot { proj: Some(p), .. } => vec![p as &mut dyn Module],
            Method::Hcl { review, .. } => vec![review as &mut dyn Module],
            _ => Vec::new(),
        }
    }
    module_boilerplate!();
}
