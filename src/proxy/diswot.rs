//! DisWOT (CVPR 2023): score a randomly initialised student by how similar its semantics and
//! sample relations are to a randomly initialised teacher's, on one real batch (METHODS §1.2-1.5).
//!
//! `diswot` follows the released code: semantic term = −ICKD between the gradients of the final
//! Linear weights of teacher and student after a mean cross-entropy backward (per-class C×C channel
//! Grams, rows L2-normalised with `F.normalize`'s 1e-12 cutoff); relation term = −SP between the
//! final feature maps (B×B Grams, rows L2-normalised); score = their sum, higher is better.
//! When teacher and student end with different widths the C×C Grams cannot be compared; the
//! semantic term then compares the K×K class Grams of the two gradients instead (METHODS §1.2,
//! reading P1), and the result says so in its `semantic_kernel` term (0 = channel, 1 = class).
//!
//! `diswot_cam` is the paper's formulation: class-activation maps G⁽ⁿ⁾ = Σ_c w_{n,c} A^c of the map
//! the classifier pools (`Features::pooled_map`) with the classifier *weights*, stacked as K rows, 𝒢 = GGᵀ/‖GGᵀ‖_F, M_s = ‖𝒢_T − 𝒢_S‖_F; the
//! relation term M_r = ‖𝒜_T − 𝒜_S‖_F with 𝒜 = ÃÃᵀ/‖ÃÃᵀ‖_F; score −(M_s + M_r). A student map of
//! another spatial size is resized (bilinear) to the teacher's first.

use super::{host_f64, NetFactory, Proxy, ProxyInfo, ProxyScore, ScoringContext};
use crate::backend::InterpMode;
use crate::tensor::Tensor;
use crate::{invalid_err, shape_err, Result};

/// F.normalize's row factor for row i of g gᵀ: g_i / max(|g_i|·‖g‖, 1e-12), so that the row is
/// factor·g. Rows whose norm falls under the cutoff stay tiny instead of becoming unit rows.
fn outer_row_factors(g: &[f64]) -> Vec<f64> {
    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    g.iter().map(|&gi| gi / (gi.abs() * norm).max(1e-12)).collect()
}

/// ICKD of two [K, C] gradient matrices viewed as K×C×1×1 (METHODS §0.2): per class k the C×C
/// Gram E_k = l2norm_rows(g_k g_kᵀ); Σ_k Σ_ij (E_s − E_t)² / (C·K). Row i of E_k is α_i·g_k, so
/// Σ_ij (α_i g − β_i h)_j² = α_i²‖g‖² + β_i²‖h‖² − 2α_iβ_i⟨g,h⟩: exact in O(K·C), which keeps
/// ResNet50's 2048-wide head (K·C² ≈ 4·10⁸ entries) affordable.
pub fn ickd_classifier_grads(gs: &[f64], gt: &[f64], classes: usize) -> Result<f64> {
    if classes == 0 || gs.len() != gt.len() || !gs.len().is_multiple_of(classes) {
        shape_err!(
            "ickd",
            "gradients of {} and {} values do not both split into {classes} classes",
            gs.len(),
            gt.len()
        );
    }
    let c = gs.len() / classes;
    let mut total = 0.0;
    for (s, t) in gs.chunks(c).zip(gt.chunks(c)) {
        let (a, b) = (outer_row_factors(s), outer_row_factors(t));
        let ss: f64 = s.iter().map(|v| v * v).sum();
        let tt: f64 = t.iter().map(|v| v * v).sum();
        let st: f64 = s.iter().zip(t).map(|(x, y)| x * y).sum();
        total += a.iter().zip(&b).map(|(ai, bi)| ai * ai * ss + bi * bi * tt - 2.0 * ai * bi * st).sum::<f64>();
    }
    Ok(total / (c * classes) as f64)
}

/// Gram of the rows of a [n, d] matrix, in f64.
fn gram_f64(a: &[f64], n: usize) -> Vec<f64> {
    let d = a.len() / n;
    let mut g = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            let v: f64 = (0..d).map(|k| a[i * d + k] * a[j * d + k]).sum();
            g[i * n + j] = v;
            g[j * n + i] = v;
        }
    }
    g
}

/// Each row divided by max(its L2 norm, 1e-12) (F.normalize semantics).
fn normalize_rows(mut g: Vec<f64>, n: usize) -> Vec<f64> {
    for row in g.chunks_mut(n) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
    g
}

/// The whole matrix divided by its Frobenius norm (the paper's normalisation).
fn normalize_frobenius(mut g: Vec<f64>) -> Vec<f64> {
    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    g.iter_mut().for_each(|v| *v /= norm);
    g
}

fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// SP (METHODS §0.2): Σ (G_t − G_s)² / B² over the row-normalised B×B Grams of the flattened
/// features; only the batch sizes must agree.
pub fn sp_similarity(fs: &Tensor, ft: &Tensor) -> Result<f64> {
    let b = fs.dims()[0];
    if ft.dims()[0] != b {
        shape_err!("sp", "student {} and teacher {} differ in batch size", fs.shape(), ft.shape());
    }
    // The B×B Gram is formed by the engine's matmul (the expensive part), normalised in f64.
    let gram =
        |f: &Tensor| -> Result<Vec<f64>> { Ok(normalize_rows(host_f64(&f.reshape([b, f.numel() / b])?.gram()?)?, b)) };
    let (gs, gt) = (gram(fs)?, gram(ft)?);
    Ok(squared_distance(&gs, &gt) / (b * b) as f64)
}

pub struct DisWot;

impl Proxy for DisWot {
    fn info(&self) -> ProxyInfo {
        ProxyInfo {
            name: "diswot",
            higher_is_better: true,
            needs_gradients: false,
            needs_teacher: true,
            reads: "classifier-weight gradients (ICKD, closed form) + final feature maps (SP), one real batch",
        }
    }

    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let teacher = ctx.teacher("diswot")?;
        let student = build()?;
        // The semantic input is the classifier's weight gradient, a closed form of the forward
        // pass (`classifier_grad`): no backward through the network.
        let _g = crate::autograd::no_grad();
        let f = student.forward_features(&ctx.images)?;
        let gs = &super::classifier_grad(&f, &ctx.labels)?;
        let (ks, cs) = (gs.dims()[0], gs.dims()[1]);
        let (kt, ct) = (teacher.classifier_grad.dims()[0], teacher.classifier_grad.dims()[1]);
        if ks != kt {
            invalid_err!(
                "diswot",
                "teacher {} has {kt} classes and the student {ks}: build both for the same data set",
                teacher.name
            );
        }
        let (gs, gt) = (host_f64(gs)?, host_f64(&teacher.classifier_grad)?);
        let (semantic_distance, kernel) = if cs == ct {
            (ickd_classifier_grads(&gs, &gt, ks)?, 0.0)
        } else {
            let (ga, gb) = (normalize_rows(gram_f64(&gs, ks), ks), normalize_rows(gram_f64(&gt, ks), ks));
            (squared_distance(&ga, &gb) / (ks * ks) as f64, 1.0)
        };
        let relation_distance = sp_similarity(f.final_map(), teacher.features.final_map())?;
        Ok(ProxyScore {
            value: -(semantic_distance + relation_distance),
            terms: vec![
                ("semantic".into(), -semantic_distance),
                ("relation".into(), -relation_distance),
                ("semantic_kernel".into(), kernel),
            ],
        })
    }
}

/// Class-activation maps of a final map [B, C, H, W] with classifier weights [K, C], as K rows of
/// B·H·W values.
fn class_activation_rows(map: &Tensor, weight: &Tensor) -> Result<(Vec<f64>, usize)> {
    let d = map.dims();
    let (b, c, hw) = (d[0], d[1], d[2] * d[3]);
    let k = weight.dims()[0];
    // [K, C] · [C, B·HW] after moving C first.
    let a = map.reshape([b, c, hw])?.permute(&[1, 0, 2])?.reshape([c, b * hw])?;
    Ok((host_f64(&weight.matmul(&a)?)?, k))
}

pub struct DisWotCam;

impl Proxy for DisWotCam {
    fn info(&self) -> ProxyInfo {
        ProxyInfo {
            name: "diswot_cam",
            higher_is_better: true,
            needs_gradients: false,
            needs_teacher: true,
            reads: "class-activation maps from classifier weights + final maps (the paper's formulation)",
        }
    }

    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let teacher = ctx.teacher("diswot_cam")?;
        let student = build()?;
        let _g = crate::autograd::no_grad();
        let f = student.forward_features(&ctx.images)?;
        let (tmap, mut smap) = (teacher.features.pooled_map(), f.pooled_map().clone());
        if smap.dims()[2..] != tmap.dims()[2..] {
            smap = smap.interpolate(InterpMode::Bilinear, tmap.dims()[2], tmap.dims()[3])?;
        }
        let tw = teacher_classifier_weight(ctx)?;
        let (gt, k) = class_activation_rows(tmap, &tw)?;
        let (gs, ks) = class_activation_rows(&smap, &student.classifier().weight)?;
        if k != ks {
            invalid_err!(
                "diswot_cam",
                "teacher has {k} classes and the student {ks}: build both for the same data set"
            );
        }
        let paper_gram = |a: &[f64], n: usize| normalize_frobenius(gram_f64(a, n));
        let semantic = squared_distance(&paper_gram(&gs, k), &paper_gram(&gt, k)).sqrt();
        let b = tmap.dims()[0];
        let relation = squared_distance(&paper_gram(&host_f64(&smap)?, b), &paper_gram(&host_f64(tmap)?, b)).sqrt();
        Ok(ProxyScore {
            value: -(semantic + relation),
            terms: vec![("semantic".into(), -semantic), ("relation".into(), -relation)],
        })
    }
}

/// The teacher's classifier weight, kept in its view for the CAM variant.
fn teacher_classifier_weight(ctx: &ScoringContext) -> Result<Tensor> {
    match ctx.teacher.as_ref().and_then(|t| t.classifier_weight.clone()) {
        Some(w) => Ok(w),
        None => invalid_err!("diswot_cam", "the teacher view has no classifier weight"),
    }
}
