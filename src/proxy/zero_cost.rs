//! The zero-cost proxies users compare against, as the DisWOT repository's copy of Samsung's
//! zero-cost-nas computes them (METHODS Part B.1): the network in training mode (batch
//! statistics), mean cross-entropy on the real batch, per-weight measures summed over every Conv2d
//! and Linear weight. Each proxy's doc says what it reads and any choice made.

use std::collections::HashMap;

use super::{batch_loss, host_f64, layer_weights, linalg, NetFactory, Proxy, ProxyInfo, ProxyScore, ScoringContext};
use crate::autograd::replay_f64::hessian_vector_f64;
use crate::autograd::{no_grad, Grads};
use crate::models::Network;
use crate::nn::{BatchNorm, Init};
use crate::tensor::macs::count_macs;
use crate::tensor::taps::{tap, TapKind};
use crate::tensor::{Tensor, TensorId};
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
        Box::new(Zico),
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

/// A weight that does not reach the loss (a conv on a cell edge that leads nowhere) has a zero
/// gradient, as PyTorch's `allow_unused` gradient reads in zero-cost-nas.
fn pair_grads(net: &dyn Network, grads: &Grads) -> Result<Vec<(Tensor, Tensor)>> {
    layer_weights(net).into_iter().map(|(_, w)| Ok((grads.of_param_or_zeros(&w)?, w))).collect()
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

/// `grasp`: Σ −W ⊙ (H g) with g = ∂L/∂W (T = 1, one iteration), as zero-cost-nas computes it:
/// g from a first backward, then H g = ∂(Σ g·∂L/∂W)/∂W by double back-propagation. Here both come
/// from one f64 replay of the recorded graph in dual numbers (forward-over-reverse): the exact
/// Hessian, as double backward computes it (ReLU masks locally constant, train-mode batchnorm
/// differentiated through its batch statistics). H is symmetric, so Σ W·(H g) = Σ g·(H W): moving
/// the weights along themselves gives g (the value part) and H W (the derivative part) at once.
/// f64 because the sum cancels: on an all-3x3 NB201 cell PyTorch's own f32 result is 1.4% off
/// its f64 one. A weight that does not reach the loss has g = 0 and H g = 0.
pub struct Grasp;
impl Proxy for Grasp {
    fn info(&self) -> ProxyInfo {
        info("grasp", true, "Hessian-gradient product (exact, f64 double backward), real batch")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let net = build()?;
        let loss = batch_loss(net.as_ref(), ctx)?;
        let weights: Vec<Tensor> = layer_weights(net.as_ref()).into_iter().map(|(_, w)| w).collect();
        let w: Vec<Vec<f64>> = weights.iter().map(host_f64).collect::<Result<_>>()?;
        let r = hessian_vector_f64(&loss, &weights, &w)?;
        let total: f64 =
            r.grads.iter().zip(&r.hvp).map(|(g, hw)| -g.iter().zip(hw).map(|(g, h)| g * h).sum::<f64>()).sum();
        Ok(ProxyScore::scalar(total))
    }
}

/// `fisher`: for every Conv2d/Linear output a with gradient ∂L/∂a, the channel saliency
/// Δ_c = ½·mean_n (Σ_hw a·∂L/∂a)² over dim 1 of a; zero-cost-nas broadcasts each |Δ_c| to
/// `weight.shape[1:]` before summing, so each counts (weights of the layer / out features) times.
/// On a Linear applied to tokens [B, N, D] dim 1 is the token, as zero-cost-nas reads it.
pub struct Fisher;
impl Proxy for Fisher {
    fn info(&self) -> ProxyInfo {
        info("fisher", true, "layer activations x their gradients, real batch")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let net = build()?;
        let (loss, taps) = tap(|| batch_loss(net.as_ref(), ctx));
        let (ids, acts): (Vec<TensorId>, Vec<Tensor>) = taps
            .into_iter()
            .filter_map(|(k, t)| match k {
                TapKind::LayerOutput { weight } => Some((weight, t)),
                TapKind::ReluModule => None,
            })
            .unzip();
        // Weights per output feature of each layer, by the weight's identity (taps come in
        // execution order, not module order).
        let per_feature: HashMap<TensorId, f64> =
            layer_weights(net.as_ref()).iter().map(|(_, w)| (w.id(), (w.numel() / w.dims()[0]) as f64)).collect();
        let grads = loss?.backward_retaining(&acts)?;
        let mut total = 0.0;
        for (a, id) in acts.iter().zip(&ids) {
            let Some(&per_channel_weights) = per_feature.get(id) else {
                invalid_err!("fisher", "a Conv2d/Linear output came from a layer outside the network's modules");
            };
            // No gradient: the layer does not reach the loss (zero in PyTorch).
            let Some(g) = grads.get(a) else { continue };
            let d = a.dims();
            let (n, c) = (d[0], d[1]);
            let hw: usize = d[2..].iter().product();
            let (av, gv) = (host_f64(a)?, host_f64(g)?);
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
        // One Jacobian row has a 1x1 correlation matrix of 1: the same score for every network.
        super::require_pairs("jacob_cov", ctx)?;
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

/// `nwot` (NASWOT, Mellor et al. 2021, `score_networks.py`): a forward hook on every module
/// whose type name contains "ReLU" reads its input x and codes c = 1[x > 0] per sample;
/// K = Σ_hooks (c cᵀ + (1−c)(1−c)ᵀ); score log|det K|. The hooks are kdscout's ReLU-family
/// modules, the fused batchnorm+ReLU where the reference has an `nn.ReLU` (never `F.relu`,
/// which PyTorch hooks cannot see), and NB201's `ReLUConvBN` (its name contains "ReLU", so
/// NASWOT hooks it besides its inner ReLU: the same input counted twice, as in the reference). NASWOT counts only hooks its backward pass visited; in the
/// zoo every ReLU module feeds the logits (at worst through a `none` op's zero), so that is all
/// of them. The network is in train mode, as NASWOT scores a freshly built one.
pub struct Nwot;
impl Proxy for Nwot {
    fn info(&self) -> ProxyInfo {
        info("nwot", false, "ReLU-module activation patterns, real batch")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        // One image: K = [number of units], the same for any weights.
        super::require_pairs("nwot", ctx)?;
        let net = build()?;
        let _g = no_grad();
        let (out, taps) = tap(|| net.forward(&ctx.images));
        out?;
        let b = ctx.images.dims()[0];
        let mut k = vec![0.0f64; b * b];
        let mut hooked = 0;
        for (_, t) in taps.iter().filter(|(k, _)| *k == TapKind::ReluModule) {
            hooked += 1;
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
        if hooked == 0 {
            invalid_err!(
                "nwot",
                "the network has no ReLU module for NASWOT's hooks (its activations are GELU or F.relu), so K = 0 \
                 and log|det K| = -inf: score it with another proxy"
            );
        }
        Ok(ProxyScore { value: linalg::slogdet(&k, b).1, terms: vec![("relu_modules".into(), hooked as f64)] })
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

/// `zico` (ZiCo, ICLR 2023): Σ over Conv2d/Linear layers of ln Σ_w mean|∂L/∂w| / std(∂L/∂w), the
/// mean and (population) std taken over batches, weights whose std is 0 left out, a layer whose sum
/// is 0 skipped — as the released `caculate_zico`. The batches are the two halves of the scoring
/// batch, each with its own mean cross-entropy and its own backward. The paper's definition is
/// followed where the released `getzico` differs: it never zeroes gradients between batches, so
/// its second "batch gradient" is the sum of the first two.
pub struct Zico;
impl Proxy for Zico {
    fn info(&self) -> ProxyInfo {
        info("zico", true, "per-layer mean/std of gradients over the two halves of the batch")
    }
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let b = ctx.labels.len();
        if b < 2 {
            invalid_err!("zico", "needs a batch of at least 2 images (it compares the gradients of its two halves): use --batch 2 or more");
        }
        let net = build()?;
        let half = b / 2;
        let mut per_half = Vec::with_capacity(2);
        for (start, len) in [(0, half), (half, b - half)] {
            let part = ScoringContext {
                images: ctx.images.narrow(0, start, len)?,
                labels: ctx.labels[start..start + len].to_vec(),
                teacher: None,
                seed: ctx.seed,
            };
            let grads = weight_grads(net.as_ref(), &part)?;
            per_half.push(grads.iter().map(|(g, _)| host_f64(g)).collect::<Result<Vec<_>>>()?);
        }
        let mut total = 0.0;
        for (g1, g2) in per_half[0].iter().zip(&per_half[1]) {
            let sum: f64 = g1
                .iter()
                .zip(g2)
                .filter_map(|(a, b)| {
                    let std = (a - b).abs() / 2.0;
                    (std != 0.0).then(|| (a.abs() + b.abs()) / 2.0 / std)
                })
                .sum();
            if sum != 0.0 {
                total += sum.ln();
            }
        }
        Ok(ProxyScore::scalar(total))
    }
}
