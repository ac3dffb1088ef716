//! The zero-cost proxies users compare against, as the DisWOT repository's copy of Samsung's
//! zero-cost-nas computes them (METHODS Part B.1): the network in training mode (batch
//! statistics), mean cross-entropy on the real batch, per-weight measures summed over every Conv2d
//! and Linear weight. Each proxy's doc says what it reads and any choice made.

use super::{batch_loss, host_f64, layer_weights, linalg, NetFactory, Proxy, ProxyInfo, ProxyScore, ScoringContext};
use crate::autograd::{no_grad, Grads};
use crate::models::Network;
use crate::nn::{BatchNorm, Init};
use crate::tensor::macs::count_macs;
use crate::tensor::taps::{tap, TapKind};
use crate::tensor::Tensor;
use crate::{invalid_err, Result};

/// Every baseline, in registry order.
pub fn all() -> Vec<Box<dyn Proxy>> {
    vec![
        Box::new(GradNorm),
        Box::new(Snip),
        Box::new(Grasp),
        Box::new(Fisher),
        Box::new(JacobCov),
        Box::new(Nwot),
        Box::new(Zen),
        Box::new(Plain),
        Box::new(L2Norm),
        Box::new(Params),
        Box::new(Flops),
    ]
}

fn info(name: &'static str, needs_gradients: bool, reads: &'static str) -> ProxyInfo {
    ProxyInfo { name, higher_is_better: true, needs_gradients, needs_teacher: false, reads }
}

/// Gradients of the batch loss w.r.t. every Conv2d/Linear weight, with the weights.
fn weight_grads(net: &dyn Network, ctx: &ScoringContext) -> Result<Vec<(Tensor, Tensor)>> {
    let grads = batch_loss(net, ctx)?.backward()?;
    pair_grads(net, &grads)
}

fn pair_grads(net: &dyn Network, grads: &Grads) -> Result<Vec<(Tensor, Tensor)>> {
    layer_weights(net).into_iter().map(|(_, w)| Ok((grads.of(&w)?.clone(), w))).collect()
}

/// Σ over layers of f(weight values, gradient values).
fn sum_per_weight(pairs: &[(Tensor, Tensor)], f: impl Fn(f64, f64) -> f64) -> Result<f64> {
    let mut total = 0.0;
    for (g, w) in pairs {
        total += host_f64(w)?.iter().zip(host_f64(g)?).map(|(w, g)| f(*w, g)).sum::<f64>();
    }
    Ok(total)
}

/// `grad_norm`: Σ_ℓ ‖∂L/∂W_ℓ‖_F (zero-cost-nas's per-layer version, real batch).
pub struct GradNorm;
impl Proxy for GradNorm {
    fn info(&self) -> ProxyInfo {
        info("grad_norm", true, "per-layer gradient norms, real batch")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let net = build()?;
        let mut total = 0.0;
        for (g, _) in weight_grads(net.as_ref(), ctx)? {
            total += host_f64(&g)?.iter().map(|v| v * v).sum::<f64>().sqrt();
        }
        Ok(ProxyScore::scalar(total))
    }
}

/// `snip`: Σ |W ⊙ ∂L/∂W|.
pub struct Snip;
impl Proxy for Snip {
    fn info(&self) -> ProxyInfo {
        info("snip", true, "weights x gradients, real batch")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let net = build()?;
        Ok(ProxyScore::scalar(sum_per_weight(&weight_grads(net.as_ref(), ctx)?, |w, g| (w * g).abs())?))
    }
}

/// `plain`: Σ W ⊙ ∂L/∂W.
pub struct Plain;
impl Proxy for Plain {
    fn info(&self) -> ProxyInfo {
        info("plain", true, "weights x gradients (signed), real batch")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let net = build()?;
        Ok(ProxyScore::scalar(sum_per_weight(&weight_grads(net.as_ref(), ctx)?, |w, g| w * g)?))
    }
}

/// `grasp`: Σ −W ⊙ (H g) with g = ∂L/∂W (T = 1, one iteration). zero-cost-nas forms H g by
/// double back-propagation; here it is the central difference of two gradients,
/// H g ≈ (∇L(W + εg) − ∇L(W − εg)) / 2ε, with ε chosen so that the step εg is 10⁻³ of ‖W‖
/// (small enough for the O(ε²) error, large enough for f32 gradients to resolve the difference).
pub struct Grasp;
impl Proxy for Grasp {
    fn info(&self) -> ProxyInfo {
        info("grasp", true, "Hessian-gradient product (finite difference of two gradients), real batch")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let net = build()?;
        let pairs = weight_grads(net.as_ref(), ctx)?;
        let w0: Vec<Vec<f32>> = pairs.iter().map(|(_, w)| w.to_vec()).collect::<Result<_>>()?;
        let g: Vec<Vec<f32>> = pairs.iter().map(|(g, _)| g.to_vec()).collect::<Result<_>>()?;
        let norm = |v: &[Vec<f32>]| v.iter().flatten().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let (wn, gn) = (norm(&w0), norm(&g));
        if gn == 0.0 || !gn.is_finite() {
            return Ok(ProxyScore::scalar(if gn == 0.0 { 0.0 } else { f64::NAN }));
        }
        let eps = 1e-3 * wn.max(1e-12) / gn;
        let grads_at = |sign: f64| -> Result<Vec<Vec<f64>>> {
            for ((_, w), (w0, g)) in pairs.iter().zip(w0.iter().zip(&g)) {
                let shifted: Vec<f32> =
                    w0.iter().zip(g).map(|(w, g)| (*w as f64 + sign * eps * *g as f64) as f32).collect();
                w.copy_from_slice(&shifted)?;
            }
            weight_grads(net.as_ref(), ctx)?.iter().map(|(g, _)| host_f64(g)).collect()
        };
        let (plus, minus) = (grads_at(1.0)?, grads_at(-1.0)?);
        let mut total = 0.0;
        for ((w0, p), m) in w0.iter().zip(&plus).zip(&minus) {
            total +=
                w0.iter().zip(p.iter().zip(m)).map(|(w, (p, m))| -(*w as f64) * (p - m) / (2.0 * eps)).sum::<f64>();
        }
        Ok(ProxyScore::scalar(total))
    }
}

/// `fisher`: for every Conv2d/Linear output a with gradient ∂L/∂a, the channel saliency
/// Δ_c = ½·mean_n (Σ_hw a·∂L/∂a)²; zero-cost-nas broadcasts |Δ_c| to the c-th output channel's
/// weights before summing, so each channel counts (weights of the layer / out channels) times.
pub struct Fisher;
impl Proxy for Fisher {
    fn info(&self) -> ProxyInfo {
        info("fisher", true, "layer activations x their gradients, real batch")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let net = build()?;
        let (loss, taps) = tap(|| batch_loss(net.as_ref(), ctx));
        let acts: Vec<Tensor> = taps.into_iter().filter(|(k, _)| *k == TapKind::LayerOutput).map(|(_, t)| t).collect();
        let weights = layer_weights(net.as_ref());
        if acts.len() != weights.len() {
            invalid_err!(
                "fisher",
                "saw {} layer outputs for {} Conv2d/Linear layers (a layer ran twice?)",
                acts.len(),
                weights.len()
            );
        }
        let grads = loss?.backward_retaining(&acts)?;
        let mut total = 0.0;
        for (a, (_, w)) in acts.iter().zip(&weights) {
            let Some(g) = grads.get(a) else { continue };
            let d = a.dims();
            let (n, c) = (d[0], d[1]);
            let hw: usize = d[2..].iter().product();
            let (av, gv) = (host_f64(a)?, host_f64(g)?);
            let per_channel_weights = (w.numel() / c) as f64;
            for ch in 0..c {
                let mut sq = 0.0;
                for i in 0..n {
                    let base = (i * c + ch) * hw;
                    let s: f64 = (base..base + hw).map(|k| av[k] * gv[k]).sum();
                    sq += s * s;
                }
                total += (0.5 * sq / n as f64).abs() * per_channel_weights;
            }
        }
        Ok(ProxyScore::scalar(total))
    }
}

/// `jacob_cov`: J = ∂(Σ_k z_k)/∂x per sample (B × 3HW), R = corrcoef(J), eigenvalues λ of R;
/// score −Σ (log(λ + 1e-5) + 1/(λ + 1e-5)).
pub struct JacobCov;
impl Proxy for JacobCov {
    fn info(&self) -> ProxyInfo {
        info("jacob_cov", true, "input Jacobian correlations, real batch")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let net = build()?;
        let x = ctx.images.deep_clone().requires_grad_();
        let grads = net.forward(&x)?.sum_all()?.backward()?;
        let j = host_f64(grads.of(&x)?)?;
        let b = x.dims()[0];
        let r = linalg::corrcoef_rows(&j, b);
        if r.iter().any(|v| !v.is_finite()) {
            return Ok(ProxyScore::scalar(f64::NAN));
        }
        let k = 1e-5;
        Ok(ProxyScore::scalar(
            -linalg::symmetric_eigenvalues(&r, b).iter().map(|l| (l + k).ln() + 1.0 / (l + k)).sum::<f64>(),
        ))
    }
}

/// `nwot` (NASWOT): for every ReLU input, binary codes c = 1[x > 0] per sample;
/// K = Σ (c cᵀ + (1−c)(1−c)ᵀ); score log|det K|.
pub struct Nwot;
impl Proxy for Nwot {
    fn info(&self) -> ProxyInfo {
        info("nwot", false, "ReLU activation patterns, real batch")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let net = build()?;
        let _g = no_grad();
        let (out, taps) = tap(|| net.forward(&ctx.images));
        out?;
        let b = ctx.images.dims()[0];
        let mut k = vec![0.0f64; b * b];
        for (_, t) in taps.iter().filter(|(k, _)| *k == TapKind::ReluInput) {
            let units = t.numel() / b;
            let v = t.to_vec()?;
            let codes: Vec<f32> = v.iter().map(|x| if *x > 0.0 { 1.0 } else { 0.0 }).collect();
            // c cᵀ + (1−c)(1−c)ᵀ = units − Hamming distance; the Gram is exact in f32 (counts < 2²⁴).
            let c = Tensor::from_vec(codes, [b, units], t.device())?;
            let ones_gram = host_f64(&c.gram()?)?;
            let active: Vec<f64> = (0..b).map(|i| ones_gram[i * b + i]).collect();
            for i in 0..b {
                for j in 0..b {
                    let both_on = ones_gram[i * b + j];
                    let both_off = units as f64 - active[i] - active[j] + both_on;
                    k[i * b + j] += both_on + both_off;
                }
            }
        }
        Ok(ProxyScore::scalar(linalg::slogdet(&k, b).1))
    }
}

/// `zen` (Zen-NAS): Gaussian init; x, ε ~ N(0, 1) of the batch's shape, x' = x + 0.01ε;
/// Δ = mean_n Σ |f(x) − f(x')| over the map before global pooling; score
/// log Δ + Σ_BN log √(mean running_var), the running variances read after the two train-mode
/// passes (PyTorch momentum 0.1), as Zen-NAS reads them.
pub struct Zen;
impl Proxy for Zen {
    fn info(&self) -> ProxyInfo {
        info("zen", false, "Gaussian init and inputs; feature-map perturbation + BN scales")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let net = build()?;
        let mut rng = ctx.rng_for("zen");
        Init::Normal { mean: 0.0, std: 1.0 }.apply(net.as_ref(), &mut rng)?;
        let _g = no_grad();
        let shape = ctx.images.shape().clone();
        let dev = ctx.images.device();
        let x = Tensor::randn(shape.clone(), 0.0, 1.0, &mut rng, dev)?;
        let noise = Tensor::randn(shape, 0.0, 1.0, &mut rng, dev)?;
        let mixed = x.add(&noise.scale(0.01)?)?;
        let f1 = net.forward_features(&x)?;
        let f2 = net.forward_features(&mixed)?;
        let (a, bmap) = (host_f64(f1.final_map())?, host_f64(f2.final_map())?);
        let n = ctx.images.dims()[0];
        let delta = a.iter().zip(&bmap).map(|(p, q)| (p - q).abs()).sum::<f64>() / n as f64;
        let mut log_bn = 0.0;
        let mut err = Ok(());
        net.visit_modules("", &mut |_, m| {
            if let Some(bn) = m.as_any().downcast_ref::<BatchNorm>() {
                match host_f64(&bn.running_var) {
                    Ok(v) => log_bn += (v.iter().sum::<f64>() / v.len() as f64).sqrt().ln(),
                    Err(e) => err = Err(e),
                }
            }
        });
        err?;
        Ok(ProxyScore {
            value: delta.ln() + log_bn,
            terms: vec![("log_delta".into(), delta.ln()), ("log_bn_scale".into(), log_bn)],
        })
    }
}

/// `l2_norm`: Σ_ℓ ‖W_ℓ‖_F (no data; also TVT's student-capability metric).
pub struct L2Norm;
impl Proxy for L2Norm {
    fn info(&self) -> ProxyInfo {
        info("l2_norm", false, "weights only")
    }
    fn score(&self, _ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let net = build()?;
        let mut total = 0.0;
        for (_, w) in layer_weights(net.as_ref()) {
            total += host_f64(&w)?.iter().map(|v| v * v).sum::<f64>().sqrt();
        }
        Ok(ProxyScore::scalar(total))
    }
}

/// `params`: trainable parameters in millions.
pub struct Params;
impl Proxy for Params {
    fn info(&self) -> ProxyInfo {
        info("params", false, "architecture only")
    }
    fn score(&self, _ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        Ok(ProxyScore::scalar(build()?.num_parameters() as f64 / 1e6))
    }
}

/// `flops`: multiply-accumulates of one [1, 3, H, W] image in millions (thop's "FLOPs").
pub struct Flops;
impl Proxy for Flops {
    fn info(&self) -> ProxyInfo {
        info("flops", false, "architecture only")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let mut net = build()?;
        crate::nn::eval(net.as_mut());
        let d = ctx.images.dims();
        let x = Tensor::zeros([1, d[1], d[2], d[3]], ctx.images.device())?;
        let _g = no_grad();
        let (out, macs) = count_macs(|| net.forward(&x));
        out?;
        Ok(ProxyScore::scalar(macs as f64 / 1e6))
    }
}
