//! `synflow` (Tanaka et al. 2020, as zero-cost-nas computes it, METHODS Part B.1): every state
//! tensor replaced by its absolute value, BatchNorm removed (`bn=False`), the network in float64
//! on one all-ones input [1, C, H, W]; R = Σ logits and the score is Σ |W ⊙ ∂R/∂W| over every
//! Conv2d and Linear weight.
//!
//! The engine computes in f32, and R overflows f32 for deep networks (with 100 classes a CIFAR
//! ResNet-56 reaches ~1e71, ResNet-110 ~1e139). So the forward runs once in f32 with gradients
//! tracked, only to record the graph, and [`replay_f64`] evaluates and differentiates that graph
//! again in f64 from the (absolute, f32-exact) weights. zero-cost-nas restores the weights' signs
//! afterwards; here the network is a fresh copy that is dropped.

use super::{layer_weights, NetFactory, Proxy, ProxyInfo, ProxyScore, ScoringContext};
use crate::autograd::replay_f64::replay_f64;
use crate::nn::BatchNormBypass;
use crate::tensor::Tensor;
use crate::{invalid_err, Result};

/// `synflow`: Σ |W ⊙ ∂R/∂W| with R = Σ f(1) in f64 on the absolute-valued, BN-free network.
/// Terms: `log10_r`, the decimal log of R (the scale the score lives on).
pub struct SynFlow;

impl Proxy for SynFlow {
    fn info(&self) -> ProxyInfo {
        ProxyInfo {
            name: "synflow",
            higher_is_better: true,
            needs_gradients: true,
            needs_teacher: false,
            reads: "absolute weights, all-ones input, BN off; f64 replay of the graph",
        }
    }

    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore> {
        let dims = ctx.images.dims();
        if dims.is_empty() {
            invalid_err!("synflow", "the scoring batch must have shape [batch, ...], got a scalar");
        }
        let net = build()?;
        for (_, t) in net.state_dict() {
            let abs: Vec<f32> = t.to_vec()?.into_iter().map(f32::abs).collect();
            t.copy_from_slice(&abs)?;
        }
        let mut shape = dims.to_vec();
        shape[0] = 1;
        let ones = Tensor::ones(shape, ctx.images.device())?;
        let r = {
            let _bn_off = BatchNormBypass::new();
            net.forward(&ones)?.sum_all()?
        };
        let weights: Vec<Tensor> = layer_weights(net.as_ref()).into_iter().map(|(_, w)| w).collect();
        let replay = replay_f64(&r, &weights)?;
        let mut total = 0.0;
        for (w, g) in weights.iter().zip(&replay.grads) {
            total += w.to_vec()?.iter().zip(g).map(|(&w, g)| (w as f64 * g).abs()).sum::<f64>();
        }
        Ok(ProxyScore { value: total, terms: vec![("log10_r".into(), replay.root.log10())] })
    }
}
