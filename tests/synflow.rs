//! The f64 tape replay against the f32 engine (whole networks, every op kind: an end-to-end
//! cross-check of two independent implementations), and SynFlow against a closed form and on a
//! network whose R overflows f32.

use kdscout::autograd::replay_f64::{hessian_vector_f64, replay_f64};
use kdscout::backend::{InterpMode, PoolKind};
use kdscout::models::{self, Features, Network};
use kdscout::nn::{BatchNorm, BatchNormBypass, Linear, Module};
use kdscout::proxy::{self, ScoringContext};
use kdscout::rng::Rng;
use kdscout::{module_boilerplate, Device, Result, Tensor};

const DEV: Device = Device::Cpu;

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().into_iter().map(f64::from).collect()
}

fn close(a: f64, b: f64, rtol: f64, what: &str) {
    assert!((a - b).abs() <= rtol * b.abs().max(1e-300), "{what}: {a} vs {b}");
}

/// Replays `root` in f64 and compares its value and the gradient of every `(name, param)` with
/// the engine's f32 backward: per tensor, max |f64 − f32| ≤ rtol · max |f32|.
fn check_replay(root: &Tensor, params: &[(String, Tensor)], rtol: f64) {
    let engine = root.backward().unwrap();
    let leaves: Vec<Tensor> = params.iter().map(|(_, p)| p.clone()).collect();
    let replay = replay_f64(root, &leaves).unwrap();
    close(replay.root, root.item().unwrap() as f64, rtol, "root value");
    for ((name, p), g64) in params.iter().zip(&replay.grads) {
        let g32 = f64s(engine.of(p).unwrap());
        let scale = g32.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name}: the engine's gradient is all zero, the check would be empty");
        let err = g64.iter().zip(&g32).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= rtol * scale, "{name}: max |f64 - f32| = {err:e} against max |g| = {scale:e}");
    }
}

#[test]
fn replay_of_resnet8_matches_the_engine_in_train_mode_and_in_synflow_mode() {
    let net = models::build("resnet8", 10, &mut Rng::seed(1), DEV).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], 0.0, 1.0, &mut Rng::seed(2), DEV).unwrap();
    // Training-mode BN (batch statistics), mean cross-entropy: the DisWOT / zero-cost setting.
    let loss = net.forward(&x).unwrap().cross_entropy(&[3, 7]).unwrap();
    check_replay(&loss, &net.named_parameters(), 1e-4);

    // SynFlow's setting while it still fits f32: absolute weights, BN off, ones in, R = Σ z.
    for (_, t) in net.state_dict() {
        let abs: Vec<f32> = t.to_vec().unwrap().into_iter().map(f32::abs).collect();
        t.copy_from_slice(&abs).unwrap();
    }
    let r = {
        let _bn = BatchNormBypass::new();
        net.forward(&Tensor::ones([2, 3, 32, 32], DEV).unwrap()).unwrap().sum_all().unwrap()
    };
    let value = r.item().unwrap();
    assert!(value.is_finite() && value > 1e6, "resnet8's R should be large but inside f32, got {value}");
    // BN parameters (bn1, bn2, downsample.1) are bypassed and take no gradient.
    let with_grad: Vec<(String, Tensor)> =
        net.named_parameters().into_iter().filter(|(n, _)| !n.contains("bn") && !n.contains("downsample.1")).collect();
    check_replay(&r, &with_grad, 1e-4);
}

/// A graph with every op the tape records: grouped/depthwise/strided convs, batch and layer
/// norm (with and without its fused ReLU), every unary op, broadcasting arithmetic, all pools, both resamplings, concat, narrow,
/// channel shuffle (5-d permute), batched and broadcast matmuls with transposes, softmax and
/// log-softmax, sum, max, normalize, cross-entropy and KL.
fn every_op_graph(p: &[Tensor], x: &Tensor, stats: &[Tensor]) -> Result<Tensor> {
    let [w1, b1, bn_g, bn_b, wd, wg, ln_g, ln_b, wq, wfc, bfc, shift] = p else { panic!("12 params") };
    let h0 = x.conv2d(w1, (1, 1), (1, 1), 1)?;
    // Plain batchnorm and batchnorm with its fused ReLU.
    let h = h0
        .batch_norm_train(bn_g, bn_b, &stats[0], &stats[1], 0.1, 1e-5)?
        .add(&h0.batch_norm_train_act(bn_g, bn_b, &stats[0], &stats[1], 0.1, 1e-5, true)?)?;
    let h = h.add(&b1.reshape([1, 6, 1, 1])?)?.relu()?;
    let d = h.conv2d(wd, (2, 2), (1, 1), 6)?; // depthwise, stride 2: [2, 6, 4, 4]
    let terms = [
        d.gelu()?,
        d.sigmoid()?.mul(&d.tanh()?)?,
        d.mish()?,
        d.leaky_relu(0.1)?,
        d.scale(4.0)?.relu6()?,
        d.scale(0.3)?.exp()?,
        d.sqr()?.add_scalar(1.0)?.log()?,
        d.abs()?.add_scalar(0.5)?.sqrt()?,
        d.abs()?.add_scalar(1.0)?.pow(1.5)?,
        d.clamp_min(-0.2)?,
        d.div(&d.sqr()?.add_scalar(2.0)?)?,
        d.sub(&shift.reshape([6, 1, 1])?)?.neg()?,
    ];
    let mut u = terms[0].clone();
    for t in &terms[1..] {
        u = u.add(t)?;
    }
    let e = u.conv2d(wg, (1, 1), (1, 0), 2)?; // groups 2, 3x1 kernel: [2, 4, 4, 4]
    let p1 = e.pool2d(PoolKind::Max, (3, 3), (2, 2), (1, 1))?; // [2, 4, 2, 2]
    let p2 = e.channel_shuffle(2)?.avg_pool2d(3, 1, 1, true)?;
    let p3 = e.avg_pool2d(3, 1, 1, false)?;
    let i1 = e.adaptive_avg_pool2d(3, 3)?.interpolate(InterpMode::Nearest, 4, 4)?;
    let i2 = p1.interpolate(InterpMode::Bilinear, 4, 4)?;
    let c = Tensor::concat(&[&p2, &p3, &i1, &i2], 1)?.narrow(1, 2, 12)?; // [2, 12, 4, 4]
    let t = c.reshape([2, 12, 16])?.permute(&[0, 2, 1])?.layer_norm(ln_g, ln_b, 1e-5)?; // [2, 16, 12]
    let q = t.matmul_t(wq, false, true)?; // broadcast B
    let att = q.matmul_t(&t, false, true)?.scale(12f32.powf(-0.5))?.softmax(-1)?; // [2, 16, 16]
    let o = att.matmul(&t)?; // [2, 16, 12]
    let o2 = t.matmul_t(&att, true, false)?; // transposed A: [2, 12, 16]
    let o3 = wq.reshape([1, 12, 12])?.matmul(&o.permute(&[0, 2, 1])?)?; // broadcast A: [2, 12, 16]
    let z = o2.add(&o3)?;
    let f = z.sum_dim(-1, false)?.scale(1.0 / 16.0)?.add(&z.max_dim(-1, false)?)?.normalize(1, 1e-12)?;
    let logits = f.scale(3.0)?.matmul_t(wfc, false, true)?.add(bfc)?; // [2, 5]
    let kl = logits.log_softmax(1)?.kl_div(&logits.scale(0.5)?.softmax(1)?)?;
    logits.cross_entropy(&[1, 4])?.add(&kl)
}

#[test]
fn replay_of_every_op_matches_the_engine() {
    let mut rng = Rng::seed(5);
    let mut param = |dims: &[usize], std: f32| Tensor::randn(dims, 0.0, std, &mut rng, DEV).unwrap().requires_grad_();
    let shapes: [(&[usize], f32); 12] = [
        (&[6, 3, 3, 3], 0.4),
        (&[6], 0.5),
        (&[6], 1.0),
        (&[6], 0.5),
        (&[6, 1, 3, 3], 0.5),
        (&[4, 3, 3, 1], 0.3),
        (&[12], 1.0),
        (&[12], 0.5),
        (&[12, 12], 0.3),
        (&[5, 12], 0.5),
        (&[5], 0.5),
        (&[6], 0.5),
    ];
    let names = ["w1", "b1", "bn_g", "bn_b", "wd", "wg", "ln_g", "ln_b", "wq", "wfc", "bfc", "shift"];
    let params: Vec<(String, Tensor)> =
        shapes.iter().zip(names).map(|((d, s), n)| (n.to_string(), param(d, *s))).collect();
    let x = Tensor::randn([2, 3, 8, 8], 0.0, 1.0, &mut Rng::seed(6), DEV).unwrap();
    let stats = [Tensor::zeros([6], DEV).unwrap(), Tensor::ones([6], DEV).unwrap()];
    let p: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    let loss = every_op_graph(&p, &x, &stats).unwrap();
    check_replay(&loss, &params, 1e-4);
}

/// The dual-number replay's H·v on the every-op graph: a Hessian is symmetric, so u·(H v) must
/// equal v·(H u) for random directions (a wrong derivative in any rule's backward breaks this),
/// H·v is linear in v, and the value parts are replay_f64's gradients.
#[test]
fn hessian_vector_products_of_every_op_are_symmetric_and_linear() {
    let mut rng = Rng::seed(15);
    let shapes: [&[usize]; 12] =
        [&[6, 3, 3, 3], &[6], &[6], &[6], &[6, 1, 3, 3], &[4, 3, 3, 1], &[12], &[12], &[12, 12], &[5, 12], &[5], &[6]];
    let leaves: Vec<Tensor> =
        shapes.iter().map(|d| Tensor::randn(*d, 0.0, 0.4, &mut rng, DEV).unwrap().requires_grad_()).collect();
    let x = Tensor::randn([2, 3, 8, 8], 0.0, 1.0, &mut Rng::seed(16), DEV).unwrap();
    let stats = [Tensor::zeros([6], DEV).unwrap(), Tensor::ones([6], DEV).unwrap()];
    let loss = every_op_graph(&leaves, &x, &stats).unwrap();
    let mut direction =
        || -> Vec<Vec<f64>> { leaves.iter().map(|l| (0..l.numel()).map(|_| rng.normal() as f64).collect()).collect() };
    let (u, v) = (direction(), direction());
    let (hu, hv) = (hessian_vector_f64(&loss, &leaves, &u).unwrap(), hessian_vector_f64(&loss, &leaves, &v).unwrap());
    let dot =
        |a: &[Vec<f64>], b: &[Vec<f64>]| a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| x * y).sum::<f64>();
    let (u_hv, v_hu) = (dot(&u, &hv.hvp), dot(&v, &hu.hvp));
    assert!(u_hv.abs() > 1e-3, "the check would be empty: u·Hv = {u_hv}");
    close(u_hv, v_hu, 1e-9, "u·(H v) vs v·(H u)");

    let mix: Vec<Vec<f64>> =
        u.iter().zip(&v).map(|(a, b)| a.iter().zip(b).map(|(a, b)| a + 2.0 * b).collect()).collect();
    let hmix = hessian_vector_f64(&loss, &leaves, &mix).unwrap();
    let flat = |h: &[Vec<f64>]| h.iter().flatten().copied().collect::<Vec<f64>>();
    let scale = flat(&hmix.hvp).iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for ((m, a), b) in flat(&hmix.hvp).iter().zip(flat(&hu.hvp)).zip(flat(&hv.hvp)) {
        assert!((m - (a + 2.0 * b)).abs() <= 1e-10 * scale, "H(u + 2v) = {m} vs Hu + 2Hv = {}", a + 2.0 * b);
    }

    let plain = replay_f64(&loss, &leaves).unwrap();
    close(hu.root, plain.root, 1e-14, "root value");
    for (g, d) in plain.grads.iter().flatten().zip(hu.grads.iter().flatten()) {
        assert!((g - d).abs() <= 1e-12 * g.abs().max(1e-6), "gradient {g} vs the dual replay's {d}");
    }
}

#[test]
fn replay_routes_ties_to_the_first_maximum_as_the_engine_does() {
    // SynFlow's all-ones input makes exact ties common (constant interior maps), so max pooling
    // and max must pick the first maximum, as PyTorch and the engine do.
    let x = Tensor::from_vec(vec![1.0, 1.0, 0.0, 3.0, 1.0, 0.0, 3.0, 3.0], [1, 1, 2, 4], DEV).unwrap().requires_grad_();
    let pooled = x.max_pool2d(2, 2, 0).unwrap().sum_all().unwrap();
    let maxed = x.reshape([2, 4]).unwrap().max_dim(1, false).unwrap().sum_all().unwrap().scale(10.0).unwrap();
    let root = pooled.add(&maxed).unwrap();
    let want = [1.0, 0.0, 0.0, 11.0, 0.0, 0.0, 10.0, 0.0];
    assert_eq!(f64s(root.backward().unwrap().of(&x).unwrap()), want);
    assert_eq!(replay_f64(&root, std::slice::from_ref(&x)).unwrap().grads[0], want);
}

#[test]
fn replay_rejects_roots_it_cannot_differentiate() {
    let w = Tensor::ones([2, 2], DEV).unwrap().requires_grad_();
    let y = w.scale(2.0).unwrap();
    let err = replay_f64(&y, std::slice::from_ref(&w)).unwrap_err().to_string();
    assert!(err.contains("one element"), "{err}");
    let untracked = Tensor::scalar(1.0, DEV).unwrap();
    let err = replay_f64(&untracked, &[w]).unwrap_err().to_string();
    assert!(err.contains("not recorded"), "{err}");
}

/// flatten → fc1 → BatchNorm1d → ReLU → fc2. SynFlow runs it at batch 1, where a train-mode
/// BatchNorm1d would refuse the input: the score exists only if BN is really bypassed.
struct TwoLayer {
    fc1: Linear,
    bn: BatchNorm,
    fc2: Linear,
}

impl Module for TwoLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("fc1".into(), &self.fc1), ("bn".into(), &self.bn), ("fc2".into(), &self.fc2)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.fc1, &mut self.bn, &mut self.fc2]
    }
    module_boilerplate!();
}

impl Network for TwoLayer {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        let pooled = self.bn.forward(&self.fc1.forward(&x.flatten_from(1)?)?)?.relu()?;
        let logits = self.fc2.forward(&pooled)?;
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
        &self.fc2
    }
}

const D: usize = 3 * 2 * 2;
const H: usize = 7;
const K: usize = 4;

fn two_layer() -> Result<Box<dyn Network>> {
    let mut rng = Rng::seed(11);
    let net = TwoLayer {
        fc1: Linear::new(D, H, true, &mut rng, DEV)?,
        bn: BatchNorm::new_1d(H, DEV)?,
        fc2: Linear::new(H, K, true, &mut rng, DEV)?,
    };
    // Give BN a non-trivial affine, which the bypass must ignore.
    net.bn.weight.as_ref().unwrap().copy_from_slice(&[-2.0; H])?;
    net.bn.bias.as_ref().unwrap().copy_from_slice(&[5.0; H])?;
    Ok(Box::new(net))
}

fn context(images: Tensor) -> ScoringContext {
    let labels = vec![0; images.dims()[0]];
    ScoringContext { images, labels, teacher: None, seed: 0 }
}

#[test]
fn synflow_of_a_two_layer_net_is_its_closed_form() {
    // With a = |W1|, c = |b1|, B = |W2|, e = |b2| and x = 1: h = a·1 + c > 0 (ReLU and the
    // bypassed BN are identities), R = 1ᵀB h + 1ᵀe, ∂R/∂B = 1 hᵀ, ∂R/∂a = s 1ᵀ with
    // s_j = Σ_k B[k, j]; score = Σ B ⊙ 1hᵀ + Σ a ⊙ s1ᵀ.
    let net = two_layer().unwrap();
    let abs = |t: &Tensor| f64s(t).into_iter().map(f64::abs).collect::<Vec<_>>();
    let tn = net.as_any().downcast_ref::<TwoLayer>().unwrap();
    let (a, c) = (abs(&tn.fc1.weight), abs(tn.fc1.bias.as_ref().unwrap()));
    let (b, e) = (abs(&tn.fc2.weight), abs(tn.fc2.bias.as_ref().unwrap()));
    let h: Vec<f64> = (0..H).map(|j| (0..D).map(|i| a[j * D + i]).sum::<f64>() + c[j]).collect();
    let s: Vec<f64> = (0..H).map(|j| (0..K).map(|k| b[k * H + j]).sum()).collect();
    let r: f64 = (0..K).map(|k| (0..H).map(|j| b[k * H + j] * h[j]).sum::<f64>() + e[k]).sum();
    let want: f64 = (0..K * H).map(|i| b[i] * h[i % H]).sum::<f64>() + (0..H * D).map(|i| a[i] * s[i / D]).sum::<f64>();

    let ctx = context(Tensor::randn([3, 3, 2, 2], 0.0, 1.0, &mut Rng::seed(4), DEV).unwrap());
    let got = proxy::by_name("synflow").unwrap().score(&ctx, &two_layer).unwrap();
    close(got.value, want, 1e-12, "synflow score");
    assert_eq!(got.terms.len(), 1);
    assert_eq!(got.terms[0].0, "log10_r");
    close(got.terms[0].1, r.log10(), 1e-12, "log10 R");
    let info = proxy::by_name("synflow").unwrap().info();
    assert!(info.higher_is_better && info.needs_gradients && !info.needs_teacher);
}

#[test]
fn synflow_of_resnet110_exceeds_f32_and_obeys_path_counting() {
    let build = || models::build("resnet110", 100, &mut Rng::seed(9), DEV);
    // The engine alone overflows: R in f32 is not finite.
    {
        let net = build().unwrap();
        for (_, t) in net.state_dict() {
            let abs: Vec<f32> = t.to_vec().unwrap().into_iter().map(f32::abs).collect();
            t.copy_from_slice(&abs).unwrap();
        }
        let _bn = BatchNormBypass::new();
        let _g = kdscout::autograd::no_grad();
        let r32 = net.forward(&Tensor::ones([1, 3, 32, 32], DEV).unwrap()).unwrap().sum_all().unwrap();
        assert!(!r32.item().unwrap().is_finite(), "resnet110's R should overflow f32");
    }
    let ctx = context(Tensor::zeros([2, 3, 32, 32], DEV).unwrap());
    let got = proxy::by_name("synflow").unwrap().score(&ctx, &build).unwrap();
    assert!(got.value.is_finite() && got.value > f32::MAX as f64, "score {}", got.value);
    // Every path from the input to the logits crosses the stem conv and the classifier, and the
    // network is linear in each of them (non-negative activations: ReLU is the identity; no conv
    // biases; BN off), so each of those two layers contributes R − Σ|b_fc| (Euler); every other
    // layer contributes the part of R through it, at most R. Hence 2(R − Σ|b|) ≤ score ≤ L·R.
    let r = 10f64.powf(got.terms[0].1);
    let net = build().unwrap();
    let fc_bias: f64 = f64s(net.classifier().bias.as_ref().unwrap()).iter().map(|v| v.abs()).sum();
    let layers = proxy::layer_weights(net.as_ref()).len() as f64;
    assert!(r > 1e100 && r.is_finite(), "R = {r:e}");
    assert!(got.value >= 2.0 * (r - fc_bias) * (1.0 - 1e-9), "score {:e} below 2R = {:e}", got.value, 2.0 * r);
    assert!(got.value <= layers * r, "score {:e} above L·R = {:e}", got.value, layers * r);
}

#[test]
fn replay_of_resnet56_synflow_gives_each_all_paths_layer_exactly_r() {
    // The Euler identity above, layer by layer: Σ W ⊙ ∂R/∂W = R − Σ|b_fc| for the stem conv and
    // the classifier, in f64, where the values (~1e60) are far outside f32.
    let net = models::build("resnet56", 100, &mut Rng::seed(8), DEV).unwrap();
    for (_, t) in net.state_dict() {
        let abs: Vec<f32> = t.to_vec().unwrap().into_iter().map(f32::abs).collect();
        t.copy_from_slice(&abs).unwrap();
    }
    let r = {
        let _bn = BatchNormBypass::new();
        net.forward(&Tensor::ones([1, 3, 32, 32], DEV).unwrap()).unwrap().sum_all().unwrap()
    };
    let weights = proxy::layer_weights(net.as_ref());
    let (stem, fc) = (&weights[0], weights.last().unwrap());
    assert_eq!((stem.0.as_str(), fc.0.as_str()), ("conv1", "fc"));
    let replay = replay_f64(&r, &[stem.1.clone(), fc.1.clone()]).unwrap();
    assert!(replay.root > 1e45 && replay.root.is_finite(), "R = {:e}", replay.root);
    let fc_bias: f64 = f64s(net.classifier().bias.as_ref().unwrap()).iter().sum();
    for ((name, w), g) in [stem, fc].into_iter().zip(&replay.grads) {
        let euler: f64 = f64s(w).iter().zip(g).map(|(w, g)| w * g).sum();
        close(euler, replay.root - fc_bias, 1e-10, name);
    }
}
