//! Proxies against independent f64 computations written here: closed forms on a softmax-regression
//! network (gradients, Hessian-vector products and input Jacobians are known exactly), the DisWOT
//! terms recomputed from the networks' features by hand, and the direct C×C form of ICKD.

use kdscout::models::{Features, Network};
use kdscout::nn::{Activation, Linear, Module};
use kdscout::proxy::{self, diswot, Candidate, InitMode, NetFactory, ScoringContext, TeacherView};
use kdscout::rng::Rng;
use kdscout::{module_boilerplate, Device, Result, Tensor};

const DEV: Device = Device::Cpu;

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().into_iter().map(f64::from).collect()
}

fn close(a: f64, b: f64, rtol: f64, what: &str) {
    assert!((a - b).abs() <= rtol * b.abs().max(1e-12), "{what}: {a} vs {b}");
}

/// Softmax regression: logits = W·flatten(x) + b. Its gradient, Hessian-vector product and input
/// Jacobian have closed forms, so the per-weight proxies can be checked exactly.
struct LinearNet {
    fc: Linear,
}

impl Module for LinearNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("fc".into(), &self.fc)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.fc]
    }
    module_boilerplate!();
}

impl Network for LinearNet {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        let pooled = x.flatten_from(1)?;
        let logits = self.fc.forward(&pooled)?;
        Ok(Features {
            stages: vec![x.clone()],
            preact_stages: vec![x.clone()],
            final_map: 0,
            head_map: None,
            pooled,
            logits,
        })
    }
    fn classifier(&self) -> &Linear {
        &self.fc
    }
}

const B: usize = 6;
const K: usize = 5;
const D: usize = 3 * 2 * 2;

fn linear_factory(seed: u64) -> impl Fn() -> Result<Box<dyn Network>> {
    move || {
        let fc = Linear::new(D, K, true, &mut Rng::seed(seed), DEV)?;
        Ok(Box::new(LinearNet { fc }) as Box<dyn Network>)
    }
}

fn context(seed: u64, shape: [usize; 4], classes: u32) -> ScoringContext {
    let mut rng = Rng::seed(seed);
    let images = Tensor::randn(shape, 0.0, 1.0, &mut rng, DEV).unwrap();
    let labels = (0..shape[0]).map(|_| rng.below(classes as usize) as u32).collect();
    ScoringContext { images, labels, teacher: None, seed }
}

fn score(name: &str, ctx: &ScoringContext, build: NetFactory) -> f64 {
    proxy::by_name(name).unwrap().score(ctx, build).unwrap().value
}

/// The f64 quantities of softmax regression on the context batch: W, x rows, p, onehot, gradient.
struct Regression {
    w: Vec<f64>,
    x: Vec<f64>,
    p: Vec<f64>,
    y: Vec<f64>,
    g: Vec<f64>,
}

fn regression(build: NetFactory, ctx: &ScoringContext) -> Regression {
    let net = build().unwrap();
    let (w, bias, x) =
        (f64s(&net.classifier().weight), f64s(net.classifier().bias.as_ref().unwrap()), f64s(&ctx.images));
    let mut p = vec![0.0; B * K];
    let mut y = vec![0.0; B * K];
    for n in 0..B {
        let z: Vec<f64> = (0..K).map(|k| bias[k] + (0..D).map(|d| w[k * D + d] * x[n * D + d]).sum::<f64>()).collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: f64 = z.iter().map(|v| (v - m).exp()).sum();
        for k in 0..K {
            p[n * K + k] = (z[k] - m).exp() / e;
        }
        y[n * K + ctx.labels[n] as usize] = 1.0;
    }
    let mut g = vec![0.0; K * D];
    for n in 0..B {
        for k in 0..K {
            for d in 0..D {
                g[k * D + d] += (p[n * K + k] - y[n * K + k]) * x[n * D + d] / B as f64;
            }
        }
    }
    Regression { w, x, p, y, g }
}

#[test]
fn gradient_proxies_match_softmax_regression_closed_forms() {
    let ctx = context(3, [B, 3, 2, 2], K as u32);
    let build = linear_factory(11);
    let r = regression(&build, &ctx);
    let gnorm = r.g.iter().map(|v| v * v).sum::<f64>().sqrt();
    close(score("grad_norm", &ctx, &build), gnorm, 1e-5, "grad_norm");
    close(score("snip", &ctx, &build), r.w.iter().zip(&r.g).map(|(w, g)| (w * g).abs()).sum(), 1e-5, "snip");
    close(score("plain", &ctx, &build), r.w.iter().zip(&r.g).map(|(w, g)| w * g).sum(), 1e-4, "plain");
    close(score("l2_norm", &ctx, &build), r.w.iter().map(|v| v * v).sum::<f64>().sqrt(), 1e-6, "l2_norm");
    close(score("params", &ctx, &build), (K * D + K) as f64 / 1e6, 1e-12, "params");
    close(score("flops", &ctx, &build), (K * D) as f64 / 1e6, 1e-12, "flops");

    // GraSP: H·g for W only is (1/B) Σ_n (diag(p_n) − p_n p_nᵀ)(G x_n) x_nᵀ; score Σ −W ⊙ Hg.
    let mut hg = vec![0.0; K * D];
    for n in 0..B {
        let gx: Vec<f64> = (0..K).map(|k| (0..D).map(|d| r.g[k * D + d] * r.x[n * D + d]).sum()).collect();
        let pn = &r.p[n * K..(n + 1) * K];
        let pgx: f64 = pn.iter().zip(&gx).map(|(p, v)| p * v).sum();
        for k in 0..K {
            let jk = pn[k] * gx[k] - pn[k] * pgx;
            for d in 0..D {
                hg[k * D + d] += jk * r.x[n * D + d] / B as f64;
            }
        }
    }
    let grasp_ref: f64 = r.w.iter().zip(&hg).map(|(w, h)| -w * h).sum();
    // g is the f32 gradient (as PyTorch's), H g exact in f64: only g's f32 rounding remains.
    close(score("grasp", &ctx, &build), grasp_ref, 1e-5, "grasp (exact Hg)");

    // Fisher: a = logits, ∂L/∂a = (p − y)/B, Δ_k = ½ mean_n (a·∂L/∂a)², times D weights per channel.
    let net = build().unwrap();
    let z = f64s(&net.forward(&ctx.images).unwrap());
    let fisher_ref: f64 = (0..K)
        .map(|k| {
            let sq: f64 = (0..B).map(|n| (z[n * K + k] * (r.p[n * K + k] - r.y[n * K + k]) / B as f64).powi(2)).sum();
            0.5 * sq / B as f64 * D as f64
        })
        .sum();
    close(score("fisher", &ctx, &build), fisher_ref, 1e-4, "fisher");

    // jacob_cov: ∂Σz/∂x_n = Σ_k W_k for every sample, so the correlation matrix is all ones with
    // eigenvalues (B, 0, …, 0).
    let k = 1e-5;
    let jc_ref = -((B as f64 + k).ln() + 1.0 / (B as f64 + k)) - (B - 1) as f64 * (k.ln() + 1.0 / k);
    close(score("jacob_cov", &ctx, &build), jc_ref, 1e-3, "jacob_cov");
}

/// Direct ICKD on [K, C] gradients: per class the C×C Gram g gᵀ, rows divided by
/// max(‖row‖, 1e-12), squared differences summed and divided by C·K.
fn ickd_direct(gs: &[f64], gt: &[f64], k: usize) -> f64 {
    let c = gs.len() / k;
    let norm_gram = |g: &[f64]| -> Vec<f64> {
        let mut e = vec![0.0; c * c];
        for i in 0..c {
            for j in 0..c {
                e[i * c + j] = g[i] * g[j];
            }
            let n = (0..c).map(|j| e[i * c + j].powi(2)).sum::<f64>().sqrt().max(1e-12);
            (0..c).for_each(|j| e[i * c + j] /= n);
        }
        e
    };
    let mut total = 0.0;
    for kk in 0..k {
        let (a, b) = (norm_gram(&gs[kk * c..(kk + 1) * c]), norm_gram(&gt[kk * c..(kk + 1) * c]));
        total += a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
    }
    total / (c * k) as f64
}

#[test]
fn ickd_factorisation_matches_the_direct_form_and_the_closed_form() {
    let mut rng = Rng::seed(5);
    let (k, c) = (4, 7);
    let mut gs: Vec<f64> = (0..k * c).map(|_| rng.normal() as f64).collect();
    let mut gt: Vec<f64> = (0..k * c).map(|_| rng.normal() as f64).collect();
    // Closed form (no zero entries): 2 − (2/CK) Σ_k cos(g_s, g_t)·Σ_i sign·sign.
    let closed: f64 = 2.0
        - 2.0 / (c * k) as f64
            * (0..k)
                .map(|kk| {
                    let (s, t) = (&gs[kk * c..(kk + 1) * c], &gt[kk * c..(kk + 1) * c]);
                    let dot: f64 = s.iter().zip(t).map(|(a, b)| a * b).sum();
                    let cos = dot
                        / (s.iter().map(|v| v * v).sum::<f64>().sqrt() * t.iter().map(|v| v * v).sum::<f64>().sqrt());
                    cos * s.iter().zip(t).map(|(a, b)| a.signum() * b.signum()).sum::<f64>()
                })
                .sum::<f64>();
    let fact = diswot::ickd_classifier_grads(&gs, &gt, k).unwrap();
    close(fact, ickd_direct(&gs, &gt, k), 1e-12, "factorised vs direct");
    close(fact, closed, 1e-12, "factorised vs closed form");
    // Zero rows, an all-zero class and entries under the 1e-12 cutoff (saturated Gaussian init).
    gs[3] = 0.0;
    gt[c..2 * c].iter_mut().for_each(|v| *v = 0.0);
    gs[2 * c..3 * c].iter_mut().enumerate().for_each(|(i, v)| *v = 1e-7 * (i as f64 - 3.0));
    gt[3 * c + 1] = 1e-13;
    close(diswot::ickd_classifier_grads(&gs, &gt, k).unwrap(), ickd_direct(&gs, &gt, k), 1e-12, "with zero rows");
    assert!(diswot::ickd_classifier_grads(&gs, &gt[1..], k).is_err());
}

fn sp_direct(fs: &[f64], ft: &[f64], b: usize) -> f64 {
    let g = |f: &[f64]| -> Vec<f64> {
        let d = f.len() / b;
        let mut m: Vec<f64> =
            (0..b * b).map(|ij| (0..d).map(|k| f[(ij / b) * d + k] * f[(ij % b) * d + k]).sum()).collect();
        for i in 0..b {
            let n = (0..b).map(|j| m[i * b + j].powi(2)).sum::<f64>().sqrt().max(1e-12);
            (0..b).for_each(|j| m[i * b + j] /= n);
        }
        m
    };
    g(fs).iter().zip(&g(ft)).map(|(s, t)| (t - s).powi(2)).sum::<f64>() / (b * b) as f64
}

/// The classifier gradient of mean cross-entropy from features alone: (1/B) Σ (p − onehot) ⊗ pooled.
fn classifier_grad_from_features(f: &Features, labels: &[u32]) -> Vec<f64> {
    let (z, e) = (f64s(&f.logits), f64s(&f.pooled));
    let (b, k) = (f.logits.dims()[0], f.logits.dims()[1]);
    let c = e.len() / b;
    let mut g = vec![0.0; k * c];
    for n in 0..b {
        let row = &z[n * k..(n + 1) * k];
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        for kk in 0..k {
            let err = (row[kk] - m).exp() / s - if labels[n] as usize == kk { 1.0 } else { 0.0 };
            for ch in 0..c {
                g[kk * c + ch] += err * e[n * c + ch] / b as f64;
            }
        }
    }
    g
}

#[test]
fn diswot_equals_its_terms_recomputed_from_features() {
    let ctx0 = context(9, [8, 3, 32, 32], 10);
    let teacher = Candidate { name: "resnet14".into(), num_classes: 10, seed: 1, init: InitMode::Default, device: DEV };
    let student =
        Candidate { name: "resnet_d131".into(), num_classes: 10, seed: 2, init: InitMode::Default, device: DEV };
    let t = teacher.build().unwrap();
    let view = TeacherView::compute(t.as_ref(), &teacher.name, &ctx0.images, &ctx0.labels).unwrap();
    let ctx = ScoringContext { teacher: Some(view), ..ctx0 };
    let sbuild = || student.build();
    let got = proxy::by_name("diswot").unwrap().score(&ctx, &sbuild).unwrap();

    // Reference: fresh copies (same seeds), forward features, closed-form classifier gradients.
    let tf = teacher.build().unwrap().forward_features(&ctx.images).unwrap();
    let sf = student.build().unwrap().forward_features(&ctx.images).unwrap();
    let (gt, gs) = (classifier_grad_from_features(&tf, &ctx.labels), classifier_grad_from_features(&sf, &ctx.labels));
    let semantic = ickd_direct(&gs, &gt, 10);
    let relation = sp_direct(&f64s(sf.final_map()), &f64s(tf.final_map()), 8);
    let term = |n: &str| got.terms.iter().find(|(k, _)| k == n).unwrap().1;
    close(term("semantic"), -semantic, 1e-3, "semantic");
    close(term("relation"), -relation, 1e-4, "relation");
    close(got.value, -(semantic + relation), 1e-3, "diswot");
    assert_eq!(term("semantic_kernel"), 0.0);
    assert!(semantic > 0.0 && relation > 0.0);

    // A student identical to the teacher is at distance zero.
    let same = || teacher.build();
    let s = proxy::by_name("diswot").unwrap().score(&ctx, &same).unwrap();
    assert!(s.value.abs() < 1e-9, "identical student scores {}", s.value);
    assert!(s.value > got.value, "the teacher itself must outscore an unrelated student");

    // Without a teacher the error says how to give one.
    let no_teacher = context(9, [8, 3, 32, 32], 10);
    let err = proxy::by_name("diswot").unwrap().score(&no_teacher, &sbuild).err().unwrap().to_string();
    assert!(err.contains("--teacher"), "{err}");
}

#[test]
fn diswot_reconciles_different_widths_with_class_grams() {
    let ctx0 = context(4, [4, 3, 32, 32], 10);
    let t = Candidate { name: "resnet8x4".into(), num_classes: 10, seed: 1, init: InitMode::Default, device: DEV };
    let view = TeacherView::compute(t.build().unwrap().as_ref(), "resnet8x4", &ctx0.images, &ctx0.labels).unwrap();
    let ctx = ScoringContext { teacher: Some(view), ..ctx0 };
    let s = Candidate { name: "resnet8".into(), num_classes: 10, seed: 2, init: InitMode::Gaussian, device: DEV };
    let got = proxy::by_name("diswot").unwrap().score(&ctx, &|| s.build()).unwrap();
    assert_eq!(got.terms.iter().find(|(k, _)| k == "semantic_kernel").unwrap().1, 1.0);
    assert!(got.value.is_finite() && got.value < 0.0);
    let cam = proxy::by_name("diswot_cam").unwrap().score(&ctx, &|| s.build()).unwrap();
    assert!(cam.value.is_finite() && cam.value < 0.0, "{cam:?}");
}

#[test]
fn nwot_counts_relu_codes() {
    // ReLU-module inputs: the images themselves, then the logits of softmax regression; codes by
    // hand. The functional relu in between (PyTorch's F.relu) is not hooked.
    struct ReluNet(LinearNet);
    impl Module for ReluNet {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            let logits = self.0.forward(&Activation::Relu.forward(x)?)?;
            Activation::Relu.forward(&logits.relu()?.add(&logits.scale(0.0)?)?)
        }
        fn children(&self) -> Vec<(String, &dyn Module)> {
            self.0.children()
        }
        module_boilerplate!();
    }
    impl Network for ReluNet {
        fn forward_features(&self, x: &Tensor) -> Result<Features> {
            self.0.forward_features(x)
        }
        fn classifier(&self) -> &Linear {
            self.0.classifier()
        }
    }
    let ctx = context(8, [B, 3, 2, 2], K as u32);
    // Same seed as linear_factory(4), so the ReLU inputs are that network's logits.
    let build = || -> Result<Box<dyn Network>> {
        Ok(Box::new(ReluNet(LinearNet { fc: Linear::new(D, K, true, &mut Rng::seed(4), DEV)? })))
    };
    let x = ctx.images.relu().unwrap();
    let z = f64s(&linear_factory(4)().unwrap().forward(&x).unwrap());
    let mut kmat = vec![0.0; B * B];
    for (v, units) in [(f64s(&ctx.images), D), (z, K)] {
        let on = |n: usize, u: usize| v[n * units + u] > 0.0;
        for i in 0..B {
            for j in 0..B {
                kmat[i * B + j] += (0..units).filter(|&u| on(i, u) == on(j, u)).count() as f64;
            }
        }
    }
    // det by cofactor-free Gaussian elimination written out here would repeat slogdet; instead
    // check slogdet itself in its unit tests and here that the proxy builds the same K.
    let (_, logdet) = proxy::linalg::slogdet(&kmat, B);
    assert!(logdet.is_finite(), "test batch should give a full-rank K");
    close(score("nwot", &ctx, &build), logdet, 1e-9, "nwot");
}

#[test]
fn registry_names_are_unique_and_unknown_names_list_them() {
    let names: Vec<&str> = proxy::registry().iter().map(|p| p.info().name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    for want in [
        "synflow",
        "kd",
        "nst",
        "diswot",
        "diswot_cam",
        "grad_norm",
        "snip",
        "grasp",
        "fisher",
        "jacob_cov",
        "nwot",
        "zen",
        "l2_norm",
        "params",
        "flops",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let err = proxy::by_name("synflw").err().unwrap().to_string();
    assert!(err.contains("synflw") && err.contains("grad_norm"), "{err}");
}

/// conv3x3(3→4, pad 1) → BN → ReLU as the final map, GAP, Linear: small enough for an f64 Zen-score.
struct ConvBnNet {
    conv: kdscout::nn::Conv2d,
    bn: kdscout::nn::BatchNorm2d,
    fc: Linear,
}

impl Module for ConvBnNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("conv".into(), &self.conv), ("bn".into(), &self.bn), ("fc".into(), &self.fc)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.conv, &mut self.bn, &mut self.fc]
    }
    module_boilerplate!();
}

impl Network for ConvBnNet {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        let pre = self.bn.forward(&self.conv.forward(x)?)?;
        let map = pre.relu()?;
        let pooled = map.adaptive_avg_pool2d(1, 1)?.flatten_from(1)?;
        let logits = self.fc.forward(&pooled)?;
        Ok(Features {
            stages: vec![map.clone()],
            preact_stages: vec![pre],
            final_map: 0,
            head_map: None,
            pooled,
            logits,
        })
    }
    fn classifier(&self) -> &Linear {
        &self.fc
    }
}

#[test]
fn zen_score_matches_an_f64_recomputation() {
    use kdscout::nn::{BatchNorm2d, Conv2d, Conv2dConfig, Init};
    let (b, cin, cout, hw) = (3, 3, 4, 4);
    let ctx = context(21, [b, cin, hw, hw], K as u32);
    let build = || -> Result<Box<dyn Network>> {
        let rng = &mut Rng::seed(6);
        let conv = Conv2d::new(cin, cout, 3, Conv2dConfig::default().padding(1).bias(false), rng, DEV)?;
        Ok(Box::new(ConvBnNet { conv, bn: BatchNorm2d::new(cout, DEV)?, fc: Linear::new(cout, K, true, rng, DEV)? }))
    };
    let got = proxy::by_name("zen").unwrap().score(&ctx, &build).unwrap();

    // The same draws the proxy makes: Gaussian re-init of a fresh copy, then x and ε.
    let net = build().unwrap();
    let mut rng = ctx.rng_for("zen");
    Init::Normal { mean: 0.0, std: 1.0 }.apply(net.as_ref(), &mut rng).unwrap();
    let x = f64s(&Tensor::randn([b, cin, hw, hw], 0.0, 1.0, &mut rng, DEV).unwrap());
    let eps = f64s(&Tensor::randn([b, cin, hw, hw], 0.0, 1.0, &mut rng, DEV).unwrap());
    let xm: Vec<f64> = x.iter().zip(&eps).map(|(a, e)| a + 0.01 * e).collect();
    let conv = net.as_any().downcast_ref::<ConvBnNet>().unwrap().conv.weight.clone();
    let w = f64s(&conv);
    // Naive conv, train-mode BN (γ=1, β=0, eps 1e-5), ReLU; returns the map and the unbiased
    // per-channel batch variances BN folds into running_var.
    let forward = |x: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0; b * cout * hw * hw];
        for n in 0..b {
            for o in 0..cout {
                for i in 0..hw {
                    for j in 0..hw {
                        let mut s = 0.0;
                        for c in 0..cin {
                            for ki in 0..3 {
                                for kj in 0..3 {
                                    let (ii, jj) = (i as isize + ki as isize - 1, j as isize + kj as isize - 1);
                                    if ii >= 0 && jj >= 0 && (ii as usize) < hw && (jj as usize) < hw {
                                        s += w[((o * cin + c) * 3 + ki) * 3 + kj]
                                            * x[((n * cin + c) * hw + ii as usize) * hw + jj as usize];
                                    }
                                }
                            }
                        }
                        y[((n * cout + o) * hw + i) * hw + j] = s;
                    }
                }
            }
        }
        let m = (b * hw * hw) as f64;
        let mut unbiased = vec![0.0; cout];
        for (o, unbiased_o) in unbiased.iter_mut().enumerate() {
            let idx: Vec<usize> =
                (0..b).flat_map(|n| (0..hw * hw).map(move |k| (n * cout + o) * hw * hw + k)).collect();
            let mean = idx.iter().map(|&k| y[k]).sum::<f64>() / m;
            let var = idx.iter().map(|&k| (y[k] - mean).powi(2)).sum::<f64>() / m;
            for &k in &idx {
                y[k] = ((y[k] - mean) / (var + 1e-5).sqrt()).max(0.0);
            }
            *unbiased_o = var * m / (m - 1.0);
        }
        (y, unbiased)
    };
    let ((f1, v1), (f2, v2)) = (forward(&x), forward(&xm));
    let delta = f1.iter().zip(&f2).map(|(a, c)| (a - c).abs()).sum::<f64>() / b as f64;
    let rv: Vec<f64> = v1.iter().zip(&v2).map(|(a, c)| 0.9 * (0.9 + 0.1 * a) + 0.1 * c).collect();
    let log_bn = (rv.iter().sum::<f64>() / cout as f64).sqrt().ln();
    close(got.value, delta.ln() + log_bn, 1e-3, "zen");
    close(got.terms[1].1, log_bn, 1e-4, "zen BN term");
}

#[test]
fn kd_based_proxies_are_minus_the_losses_and_zero_for_the_teacher_itself() {
    let ctx0 = context(12, [6, 3, 32, 32], 10);
    let teacher = Candidate { name: "resnet14".into(), num_classes: 10, seed: 1, init: InitMode::Default, device: DEV };
    let view = TeacherView::compute(teacher.build().unwrap().as_ref(), "resnet14", &ctx0.images, &ctx0.labels).unwrap();
    let ctx = ScoringContext { teacher: Some(view), ..ctx0 };
    let student = Candidate { name: "resnet8".into(), num_classes: 10, seed: 2, init: InitMode::Default, device: DEV };
    let sf = student.build().unwrap().forward_features(&ctx.images).unwrap();
    let tf = teacher.build().unwrap().forward_features(&ctx.images).unwrap();
    let kd_ref = kdscout::distill::kd(&sf.logits, &tf.logits, 4.0).unwrap().item().unwrap() as f64;
    let sp_ref = sp_direct(&f64s(sf.final_map()), &f64s(tf.final_map()), 6);
    let s = || student.build();
    close(score("kd", &ctx, &s), -kd_ref, 1e-5, "kd proxy");
    close(score("sp", &ctx, &s), -sp_ref, 1e-4, "sp proxy");
    let same = || teacher.build();
    for name in ["kd", "fitnet", "at", "sp", "rkd", "pkt", "cc", "nst"] {
        let v = score(name, &ctx, &s);
        assert!(v.is_finite() && v <= 0.0, "{name}: {v}");
        // CC embeds student and teacher with two different random Linears, so only it is not 0.
        if name != "cc" {
            assert!(score(name, &ctx, &same).abs() < 1e-5, "{name} of the teacher itself");
        }
    }
}

/// A proxy that returns whatever it is told: NaN must come out as status "nonfinite" with a null
/// score, an error as status "error" with its message; the other proxies of the candidate still run.
struct Fixed(f64, bool);
impl proxy::Proxy for Fixed {
    fn info(&self) -> proxy::ProxyInfo {
        proxy::ProxyInfo {
            name: if self.1 { "failing" } else { "fixed" },
            higher_is_better: true,
            needs_gradients: false,
            needs_teacher: false,
            reads: "nothing",
        }
    }
    fn score(&self, _ctx: &ScoringContext, _build: NetFactory) -> Result<proxy::ProxyScore> {
        if self.1 {
            return Err(kdscout::Error::invalid("failing", "told to fail"));
        }
        Ok(proxy::ProxyScore::scalar(self.0))
    }
}

#[test]
fn nonfinite_scores_are_null_never_clamped() {
    use kdscout::proxy::run::score_candidate;
    let ctx = context(2, [2, 3, 32, 32], 10);
    let cand = Candidate { name: "resnet8".into(), num_classes: 10, seed: 1, init: InitMode::Default, device: DEV };
    let proxies: Vec<Box<dyn proxy::Proxy>> =
        vec![Box::new(Fixed(f64::NAN, false)), Box::new(Fixed(0.0, true)), proxy::by_name("params").unwrap()];
    let r = score_candidate(&ctx, &cand, &proxies);
    assert_eq!(r.scores["fixed"].status, "nonfinite");
    assert_eq!(r.scores["fixed"].score, None);
    assert_eq!(r.scores["failing"].status, "error");
    assert!(r.scores["failing"].error.as_deref().unwrap().contains("told to fail"));
    assert_eq!(r.scores["params"].status, "ok");
    assert_eq!(r.status, "error", "an error outranks a non-finite score in the record's status");
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["scores"]["fixed"]["score"].is_null());
    for (v, want) in [(f64::INFINITY, "nonfinite"), (-3.5, "ok")] {
        let r = score_candidate(&ctx, &cand, &[Box::new(Fixed(v, false)) as Box<dyn proxy::Proxy>]);
        assert_eq!(r.scores["fixed"].status, want);
        assert_eq!(r.status, want);
    }
}

#[test]
fn diswot_cam_matches_the_paper_formulas_in_f64() {
    let ctx0 = context(13, [3, 3, 32, 32], 10);
    let teacher = Candidate { name: "resnet14".into(), num_classes: 10, seed: 1, init: InitMode::Default, device: DEV };
    let view = TeacherView::compute(teacher.build().unwrap().as_ref(), "resnet14", &ctx0.images, &ctx0.labels).unwrap();
    let ctx = ScoringContext { teacher: Some(view), ..ctx0 };
    let student = Candidate { name: "resnet8".into(), num_classes: 10, seed: 2, init: InitMode::Default, device: DEV };
    let got = proxy::by_name("diswot_cam").unwrap().score(&ctx, &|| student.build()).unwrap();

    // G[n, (b, p)] = Σ_c w[n, c]·A[b, c, p]; 𝒢 = GGᵀ/‖GGᵀ‖_F; Ã = A as [B, C·H·W], 𝒜 = ÃÃᵀ/‖ÃÃᵀ‖_F.
    let (t, s) = (teacher.build().unwrap(), student.build().unwrap());
    let (tf, sf) = (t.forward_features(&ctx.images).unwrap(), s.forward_features(&ctx.images).unwrap());
    let normalised_gram = |rows: &[Vec<f64>]| -> Vec<f64> {
        let g: Vec<f64> =
            rows.iter().flat_map(|a| rows.iter().map(move |b| a.iter().zip(b).map(|(x, y)| x * y).sum())).collect();
        let n = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        g.into_iter().map(|v| v / n).collect()
    };
    let cam_rows = |map: &Tensor, w: &Tensor| -> Vec<Vec<f64>> {
        let (a, w) = (f64s(map), f64s(w));
        let d = map.dims();
        let (b, c, hw) = (d[0], d[1], d[2] * d[3]);
        (0..10)
            .map(|n| {
                (0..b)
                    .flat_map(|bi| (0..hw).map(move |p| (bi, p)))
                    .map(|(bi, p)| (0..c).map(|ch| w[n * c + ch] * a[(bi * c + ch) * hw + p]).sum())
                    .collect()
            })
            .collect()
    };
    let dist = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let semantic = dist(
        &normalised_gram(&cam_rows(sf.pooled_map(), &s.classifier().weight)),
        &normalised_gram(&cam_rows(tf.pooled_map(), &t.classifier().weight)),
    );
    let flat = |m: &Tensor| -> Vec<Vec<f64>> { f64s(m).chunks(m.numel() / 3).map(|r| r.to_vec()).collect() };
    let relation = dist(&normalised_gram(&flat(sf.pooled_map())), &normalised_gram(&flat(tf.pooled_map())));
    close(got.terms[0].1, -semantic, 1e-4, "cam semantic");
    close(got.terms[1].1, -relation, 1e-4, "cam relation");
    close(got.value, -(semantic + relation), 1e-4, "diswot_cam");
}

/// ZiCo on softmax regression: the gradient of each half of the batch in closed form (f64), then
/// ln Σ mean|g| / std(g) over the two halves, by hand.
#[test]
fn zico_matches_f64_gradients_of_the_two_halves() {
    let build = linear_factory(3);
    let ctx = context(5, [B, 3, 2, 2], K as u32);
    let net = build().unwrap();
    let (w, bias, x) =
        (f64s(&net.classifier().weight), f64s(net.classifier().bias.as_ref().unwrap()), f64s(&ctx.images));
    let grad = |rows: std::ops::Range<usize>| -> Vec<f64> {
        let n = rows.len() as f64;
        let mut g = vec![0.0; K * D];
        for r in rows {
            let z: Vec<f64> =
                (0..K).map(|k| bias[k] + (0..D).map(|d| w[k * D + d] * x[r * D + d]).sum::<f64>()).collect();
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: f64 = z.iter().map(|v| (v - m).exp()).sum();
            for k in 0..K {
                let err = (z[k] - m).exp() / e - if ctx.labels[r] as usize == k { 1.0 } else { 0.0 };
                for d in 0..D {
                    g[k * D + d] += err * x[r * D + d] / n;
                }
            }
        }
        g
    };
    let (g1, g2) = (grad(0..B / 2), grad(B / 2..B));
    let sum: f64 = g1.iter().zip(&g2).map(|(a, b)| (a.abs() + b.abs()) / (a - b).abs()).sum();
    close(score("zico", &ctx, &build), sum.ln(), 1e-4, "zico");

    let one = context(5, [1, 3, 2, 2], K as u32);
    let err = proxy::by_name("zico").unwrap().score(&one, &build).unwrap_err().to_string();
    assert!(err.contains("at least 2 images"), "{err}");
}
