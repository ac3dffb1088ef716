//! nn and optim tests: PyTorch naming, initialiser statistics, layer forwards against f64
//! references, gradient flow, batchnorm modes, attention (forward + finite differences), SGD
//! against a hand-written f64 torch.optim.SGD, and state-dict loading errors.

use kdscout::autograd::Grads;
use kdscout::nn::init::{self, FanMode};
use kdscout::nn::{
    eval, train, Activation, AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Flatten, Init, LayerNorm,
    Linear, LocalTensor, MaxPool2d, Module, MultiHeadSelfAttention, Sequential,
};
use kdscout::optim::Sgd;
use kdscout::rng::Rng;
use kdscout::{Device, Result, Tensor};

const DEV: Device = Device::Cpu;

fn assert_close(actual: &[f32], expected: &[f64], rtol: f64, atol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (a as f64 - e).abs();
        assert!(err <= atol + rtol * e.abs(), "{what}[{i}]: got {a}, expected {e} (err {err:.3e})");
    }
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().iter().map(|&x| x as f64).collect()
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

// ------------------------------------------------------------------ a small composite net

/// A ResNet-style block, to check nested names (`layer1.0.conv1.weight`).
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.bn1.forward(&self.conv1.forward(x)?)?.relu()?.add(x)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("conv1".into(), &self.conv1 as &dyn Module), ("bn1".into(), &self.bn1 as &dyn Module)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.conv1, &mut self.bn1]
    }
    kdscout::module_boilerplate!();
}

/// conv-bn-relu, one block in a Sequential, pool, flatten, linear.
struct Net {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layer1: Sequential,
    fc: Linear,
}

impl Net {
    fn new(rng: &mut Rng) -> Net {
        let cfg = Conv2dConfig::default().padding(1).bias(false);
        let block =
            Block { conv1: Conv2d::new(4, 4, 3, cfg, rng, DEV).unwrap(), bn1: BatchNorm2d::new(4, DEV).unwrap() };
        Net {
            conv1: Conv2d::new(3, 4, 3, cfg, rng, DEV).unwrap(),
            bn1: BatchNorm2d::new(4, DEV).unwrap(),
            layer1: Sequential::new().with(block),
            fc: Linear::new(4, 10, true, rng, DEV).unwrap(),
        }
    }
}

impl Module for Net {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        // Global average pool as a mean, so this net needs only conv, bn and matmul kernels.
        let y = self.layer1.forward(&y)?.mean_dims(&[2, 3], true)?;
        self.fc.forward(&Flatten { start_dim: 1 }.forward(&y)?)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("conv1".into(), &self.conv1 as &dyn Module),
            ("bn1".into(), &self.bn1 as &dyn Module),
            ("layer1".into(), &self.layer1 as &dyn Module),
            ("fc".into(), &self.fc as &dyn Module),
        ]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.conv1, &mut self.bn1, &mut self.layer1, &mut self.fc]
    }
    kdscout::module_boilerplate!();
}

#[test]
fn names_and_counts_match_pytorch_state_dict() {
    let net = Net::new(&mut Rng::seed(0));
    let names = |v: Vec<(String, Tensor)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    // The order and names of `Net().state_dict().keys()` in PyTorch.
    let expected_state = [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.0.bn1.bias",
        "layer1.0.bn1.running_mean",
        "layer1.0.bn1.running_var",
        "layer1.0.bn1.num_batches_tracked",
        "fc.weight",
        "fc.bias",
    ];
    assert_eq!(names(net.state_dict()), expected_state);
    let expected_params = [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.0.bn1.bias",
        "fc.weight",
        "fc.bias",
    ];
    assert_eq!(names(net.named_parameters()), expected_params);
    assert_eq!(
        names(net.named_buffers()),
        [
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.num_batches_tracked",
            "layer1.0.bn1.running_mean",
            "layer1.0.bn1.running_var",
            "layer1.0.bn1.num_batches_tracked"
        ]
    );
    // sum(p.numel() for p in net.parameters()): 108 + 8 + 144 + 8 + 40 + 10.
    assert_eq!(net.num_parameters(), 318);
    for (name, p) in net.named_parameters() {
        assert!(p.requires_grad(), "{name} must require grad");
    }
    for (name, b) in net.named_buffers() {
        assert!(!b.requires_grad(), "{name} is a buffer");
    }
    let shapes: Vec<Vec<usize>> = net.state_dict().iter().map(|(_, t)| t.dims().to_vec()).collect();
    assert_eq!(shapes[0], [4, 3, 3, 3]);
    assert_eq!(shapes[5], Vec::<usize>::new(), "num_batches_tracked is a scalar");
    assert_eq!(shapes[12], [10, 4]);
    let mut modules = Vec::new();
    net.visit_modules("", &mut |n, _| modules.push(n.to_string()));
    assert_eq!(modules, ["", "conv1", "bn1", "layer1", "layer1.0", "layer1.0.conv1", "layer1.0.bn1", "fc"]);
}

#[test]
fn attention_and_layernorm_names() {
    let mut rng = Rng::seed(1);
    let attn = MultiHeadSelfAttention::new(8, 2, true, &mut rng, DEV).unwrap();
    let seq = Sequential::new().with(LayerNorm::new(8, 1e-6, DEV).unwrap()).with(attn);
    let got: Vec<(String, Vec<usize>)> = seq.state_dict().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
    let want = [
        ("0.weight", vec![8]),
        ("0.bias", vec![8]),
        ("1.qkv.weight", vec![24, 8]),
        ("1.qkv.bias", vec![24]),
        ("1.proj.weight", vec![8, 8]),
        ("1.proj.bias", vec![8]),
    ];
    assert_eq!(got, want.iter().map(|(n, s)| (n.to_string(), s.clone())).collect::<Vec<_>>());
    let no_bias = MultiHeadSelfAttention::new(8, 2, false, &mut rng, DEV).unwrap();
    assert_eq!(no_bias.named_parameters().len(), 3);
    assert!(MultiHeadSelfAttention::new(9, 2, false, &mut rng, DEV).is_err());
}

// ------------------------------------------------------------------ initialisers

#[test]
fn kaiming_normal_fan_out_statistics() {
    let mut rng = Rng::seed(2);
    let cfg = Conv2dConfig::default().bias(false);
    let conv = Conv2d::new(64, 128, 3, cfg, &mut rng, DEV).unwrap();
    let id = conv.weight.id();
    Init::KaimingNormalFanOut.apply(&conv, &mut rng).unwrap();
    assert_eq!(conv.weight.id(), id, "initialisation is in place");
    let (mean, std) = mean_std(&conv.weight.to_vec().unwrap());
    let want = (2.0f64 / (128.0 * 9.0)).sqrt();
    // 73728 samples: the sample std is within ~0.3% of the truth; mean within ~4e-4·σ·√n.
    assert!((std - want).abs() < 0.01 * want, "std {std} vs sqrt(2/fan_out) {want}");
    assert!(mean.abs() < 0.02 * want, "mean {mean}");
}

#[test]
fn pytorch_default_bounds_and_norm_defaults() {
    let mut rng = Rng::seed(3);
    let conv = Conv2d::new(16, 32, 3, Conv2dConfig::default(), &mut rng, DEV).unwrap();
    let lin = Linear::new(200, 50, true, &mut rng, DEV).unwrap();
    for (what, w, b, fan_in) in [("conv", &conv.weight, &conv.bias, 16 * 9), ("linear", &lin.weight, &lin.bias, 200)] {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let wv = w.to_vec().unwrap();
        assert!(wv.iter().all(|x| x.abs() <= bound), "{what} weight outside U(±{bound})");
        let max = wv.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(max > 0.95 * bound, "{what} weight spans the range: max {max} of {bound}");
        // Uniform on ±bound has std bound/√3.
        let (_, std) = mean_std(&wv);
        assert!((std - bound as f64 / 3f64.sqrt()).abs() < 0.05 * bound as f64, "{what} std {std}");
        let bv = b.as_ref().unwrap().to_vec().unwrap();
        assert!(bv.iter().all(|x| x.abs() <= bound), "{what} bias outside U(±{bound})");
        assert!(bv.iter().any(|&x| x != 0.0));
    }
    let bn = BatchNorm2d::new(5, DEV).unwrap();
    assert_eq!(bn.weight.as_ref().unwrap().to_vec().unwrap(), vec![1.0; 5]);
    assert_eq!(bn.bias.as_ref().unwrap().to_vec().unwrap(), vec![0.0; 5]);
    assert_eq!(bn.running_var.to_vec().unwrap(), vec![1.0; 5]);
    let ln = LayerNorm::new(6, 1e-5, DEV).unwrap();
    assert_eq!(ln.weight.to_vec().unwrap(), vec![1.0; 6]);
    assert_eq!(ln.bias.to_vec().unwrap(), vec![0.0; 6]);
}

#[test]
fn gaussian_init_and_seed_reproducibility() {
    let make = |seed| {
        let mut rng = Rng::seed(seed);
        let net = Net::new(&mut rng);
        net.bn1.weight.as_ref().unwrap().copy_from_slice(&[3.0; 4]).unwrap();
        Init::Normal { mean: 0.0, std: 1.0 }.apply(&net, &mut rng).unwrap();
        net
    };
    let (a, b) = (make(7), make(7));
    for ((n, x), (_, y)) in a.state_dict().iter().zip(b.state_dict()) {
        assert_eq!(x.to_vec().unwrap(), y.to_vec().unwrap(), "{n} differs for one seed");
    }
    assert_eq!(a.fc.bias.as_ref().unwrap().to_vec().unwrap(), vec![0.0; 10], "biases zeroed");
    assert_eq!(a.bn1.weight.as_ref().unwrap().to_vec().unwrap(), vec![1.0; 4], "norm weight reset");
    // Pool all conv and linear weights: N(0, 1).
    let mut all = Vec::new();
    for (n, t) in a.named_parameters() {
        if n.ends_with("weight") && t.rank() >= 2 {
            all.extend(t.to_vec().unwrap());
        }
    }
    let (mean, std) = mean_std(&all);
    assert!(mean.abs() < 0.15 && (std - 1.0).abs() < 0.1, "N(0,1) init: mean {mean}, std {std}");
    let t = Tensor::zeros([4000], DEV).unwrap();
    init::trunc_normal_(&t, 0.0, 1.0, -2.0, 2.0, &mut Rng::seed(4)).unwrap();
    assert!(t.to_vec().unwrap().iter().all(|x| x.abs() <= 2.0));
    assert!(init::kaiming_normal_(&t, FanMode::FanIn, &mut Rng::seed(4)).is_err(), "rank 1 has no fan");
}

// ------------------------------------------------------------------ Linear, Conv2d

#[test]
fn linear_forward_matches_f64() {
    let mut rng = Rng::seed(5);
    let lin = Linear::new(7, 5, true, &mut rng, DEV).unwrap();
    let x = Tensor::randn([2, 3, 7], 0.0, 1.0, &mut rng, DEV).unwrap();
    let y = lin.forward(&x).unwrap();
    assert_eq!(y.dims(), [2, 3, 5]);
    let (xv, wv, bv) = (f64s(&x), f64s(&lin.weight), f64s(lin.bias.as_ref().unwrap()));
    let mut want = vec![0.0; 30];
    for r in 0..6 {
        for o in 0..5 {
            want[r * 5 + o] = bv[o] + (0..7).map(|i| xv[r * 7 + i] * wv[o * 7 + i]).sum::<f64>();
        }
    }
    assert_close(&y.to_vec().unwrap(), &want, 1e-5, 1e-5, "linear");
    // A single vector works too, with the leading dims restored.
    let y1 = lin.forward(&x.reshape([6, 7]).unwrap().narrow(0, 4, 1).unwrap().reshape([7]).unwrap()).unwrap();
    assert_eq!(y1.dims(), [5]);
    assert_close(&y1.to_vec().unwrap(), &want[20..25], 1e-5, 1e-5, "linear on a vector");
    let err = lin.forward(&Tensor::zeros([2, 6], DEV).unwrap()).unwrap_err().to_string();
    assert!(err.contains("Linear") && err.contains("[2, 6]"), "{err}");
}

#[test]
fn linear_and_conv_gradients_reach_weight_and_bias() {
    let mut rng = Rng::seed(6);
    let lin = Linear::new(4, 3, true, &mut rng, DEV).unwrap();
    let x = Tensor::randn([5, 4], 0.0, 1.0, &mut rng, DEV).unwrap();
    let grads = lin.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
    // d(sum y)/dW[o, i] = Σ_rows x[r, i]; d/db = rows.
    let xv = f64s(&x);
    let col: Vec<f64> = (0..4).map(|i| (0..5).map(|r| xv[r * 4 + i]).sum()).collect();
    let want_w: Vec<f64> = (0..3).flat_map(|_| col.clone()).collect();
    assert_close(&grads.of(&lin.weight).unwrap().to_vec().unwrap(), &want_w, 1e-5, 1e-5, "linear dW");
    assert_close(&grads.of(lin.bias.as_ref().unwrap()).unwrap().to_vec().unwrap(), &[5.0; 3], 1e-6, 1e-6, "linear db");

    let cfg = Conv2dConfig::default().stride(2).padding(1);
    let conv = Conv2d::new(3, 4, 3, cfg, &mut rng, DEV).unwrap();
    let x = Tensor::randn([2, 3, 6, 6], 0.0, 1.0, &mut rng, DEV).unwrap();
    let y = conv.forward(&x).unwrap();
    assert_eq!(y.dims(), [2, 4, 3, 3]);
    let grads = y.sum_all().unwrap().backward().unwrap();
    let gw = grads.of(&conv.weight).unwrap();
    assert_eq!(gw.dims(), conv.weight.dims());
    assert!(gw.to_vec().unwrap().iter().any(|&g| g != 0.0));
    // Each output channel's bias appears n·h_out·w_out = 18 times in the sum.
    assert_close(&grads.of(conv.bias.as_ref().unwrap()).unwrap().to_vec().unwrap(), &[18.0; 4], 1e-6, 1e-6, "conv db");
    let err = conv.forward(&Tensor::zeros([2, 5, 6, 6], DEV).unwrap()).unwrap_err().to_string();
    assert!(err.contains("Conv2d") && err.contains("[2, 5, 6, 6]"), "{err}");
    let grouped = Conv2d::new(4, 6, 1, Conv2dConfig::default().groups(2), &mut rng, DEV).unwrap();
    assert_eq!(grouped.weight.dims(), [6, 2, 1, 1]);
    assert!(Conv2d::new(4, 6, 1, Conv2dConfig::default().groups(3), &mut rng, DEV).is_err());
}

// ------------------------------------------------------------------ BatchNorm

#[test]
fn batchnorm_train_and_eval_modes() {
    let mut rng = Rng::seed(8);
    let (n, c, hw) = (4, 3, 5);
    let mut bn = BatchNorm2d::new(c, DEV).unwrap();
    bn.weight.as_ref().unwrap().copy_from_slice(&[1.0, 2.0, 0.5]).unwrap();
    bn.bias.as_ref().unwrap().copy_from_slice(&[0.0, -1.0, 3.0]).unwrap();
    let x = Tensor::randn([n, c, 1, hw], 2.0, 3.0, &mut rng, DEV).unwrap();
    let xv = f64s(&x);
    let at = |i: usize, ch: usize, j: usize| xv[(i * c + ch) * hw + j];
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    let m = (n * hw) as f64;
    for ch in 0..c {
        mean[ch] = (0..n).flat_map(|i| (0..hw).map(move |j| (i, j))).map(|(i, j)| at(i, ch, j)).sum::<f64>() / m;
        var[ch] = (0..n)
            .flat_map(|i| (0..hw).map(move |j| (i, j)))
            .map(|(i, j)| (at(i, ch, j) - mean[ch]).powi(2))
            .sum::<f64>()
            / m;
    }
    let (gamma, beta) = ([1.0, 2.0, 0.5], [0.0, -1.0, 3.0]);
    let expect = |mu: &[f64], v: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; xv.len()];
        for i in 0..n {
            for ch in 0..c {
                for j in 0..hw {
                    out[(i * c + ch) * hw + j] = (at(i, ch, j) - mu[ch]) / (v[ch] + 1e-5).sqrt() * gamma[ch] + beta[ch];
                }
            }
        }
        out
    };

    // Train mode: batch statistics (biased variance) and running-stat update (unbiased).
    assert!(bn.is_training());
    let y = bn.forward(&x).unwrap();
    assert_close(&y.to_vec().unwrap(), &expect(&mean, &var), 1e-4, 1e-4, "bn train output");
    let rm: Vec<f64> = mean.iter().map(|mu| 0.1 * mu).collect();
    let rv: Vec<f64> = var.iter().map(|v| 0.9 + 0.1 * v * m / (m - 1.0)).collect();
    assert_close(&bn.running_mean.to_vec().unwrap(), &rm, 1e-4, 1e-5, "running_mean");
    assert_close(&bn.running_var.to_vec().unwrap(), &rv, 1e-4, 1e-5, "running_var");
    assert_eq!(bn.num_batches_tracked.item().unwrap(), 1.0);

    // Eval mode: running statistics, and nothing is updated.
    eval(&mut bn);
    assert!(!bn.is_training());
    let y = bn.forward(&x).unwrap();
    assert_close(&y.to_vec().unwrap(), &expect(&rm, &rv), 1e-4, 1e-4, "bn eval output");
    assert_close(&bn.running_mean.to_vec().unwrap(), &rm, 1e-4, 1e-5, "running_mean after eval");
    assert_eq!(bn.num_batches_tracked.item().unwrap(), 1.0);
    // Gradients still reach γ and β in eval mode.
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_close(&g.of(bn.bias.as_ref().unwrap()).unwrap().to_vec().unwrap(), &[m; 3], 1e-6, 1e-6, "eval dβ");

    // Mode switches reach nested norms.
    let mut net = Net::new(&mut rng);
    eval(&mut net);
    assert!(!net.bn1.is_training());
    train(&mut net);
    assert!(net.bn1.is_training());
    let err = bn.forward(&Tensor::zeros([2, 4, 3, 3], DEV).unwrap()).unwrap_err().to_string();
    assert!(err.contains("[2, 4, 3, 3]"), "{err}");
}

#[test]
fn batchnorm_cumulative_average_without_momentum() {
    let mut rng = Rng::seed(9);
    let bn = kdscout::nn::BatchNorm::with_options(2, 1e-5, None, false, &[4], DEV).unwrap();
    assert!(bn.named_parameters().is_empty(), "non-affine has no weight/bias");
    let xs: Vec<Tensor> = (0..3).map(|k| Tensor::randn([3, 2, 2, 2], k as f32, 1.0, &mut rng, DEV).unwrap()).collect();
    let mut means = [0.0f64; 2];
    for x in &xs {
        bn.forward(x).unwrap();
        let v = f64s(x);
        for (ch, m) in means.iter_mut().enumerate() {
            *m +=
                (0..3).flat_map(|i| (0..4).map(move |j| (i * 2 + ch) * 4 + j)).map(|k| v[k]).sum::<f64>() / 12.0 / 3.0;
        }
    }
    assert_close(&bn.running_mean.to_vec().unwrap(), &means, 1e-4, 1e-5, "cumulative running mean");
    assert_eq!(bn.num_batches_tracked.item().unwrap(), 3.0);
}

#[test]
fn net_forward_backward_end_to_end() {
    let mut rng = Rng::seed(10);
    let net = Net::new(&mut rng);
    Init::KaimingNormalFanOut.apply(&net, &mut rng).unwrap();
    let x = Tensor::randn([2, 3, 8, 8], 0.0, 1.0, &mut rng, DEV).unwrap();
    let logits = net.forward(&x).unwrap();
    assert_eq!(logits.dims(), [2, 10]);
    let grads = logits.cross_entropy(&[1, 7]).unwrap().backward().unwrap();
    for (name, p) in net.named_parameters() {
        assert!(grads.get(&p).is_some(), "no gradient for {name}");
    }
    let seq = Sequential::new().with(Activation::Relu).with(Activation::LeakyRelu(0.5)).with(Activation::Identity);
    let v = Tensor::from_slice(&[-2.0, 3.0], [2], DEV).unwrap();
    assert_eq!(seq.forward(&v).unwrap().to_vec().unwrap(), vec![0.0, 3.0]);
}

#[test]
fn pooling_modules_match_hand_values() {
    // One 4x4 map holding 0..16.
    let x = Tensor::from_slice(&(0..16).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 4, 4], DEV).unwrap();
    let max = MaxPool2d::new(2, 2, 0).forward(&x).unwrap();
    assert_eq!(max.dims(), [1, 1, 2, 2]);
    assert_eq!(max.to_vec().unwrap(), vec![5.0, 7.0, 13.0, 15.0]);
    let avg = AvgPool2d::new(2, 2, 0).forward(&x).unwrap();
    assert_eq!(avg.to_vec().unwrap(), vec![2.5, 4.5, 10.5, 12.5]);
    let gap = AdaptiveAvgPool2d::new(1, 1).forward(&x).unwrap();
    assert_eq!(gap.dims(), [1, 1, 1, 1]);
    assert!((gap.item().unwrap() - 7.5).abs() < 1e-6);
    let flat = Flatten { start_dim: 1 }.forward(&AdaptiveAvgPool2d::new(2, 2).forward(&x).unwrap()).unwrap();
    assert_eq!(flat.dims(), [1, 4]);
    assert_eq!(flat.to_vec().unwrap(), avg.to_vec().unwrap());
}

#[test]
fn layernorm_forward_matches_f64() {
    let mut rng = Rng::seed(15);
    let ln = LayerNorm::new(6, 1e-5, DEV).unwrap();
    ln.weight.copy_from_slice(&[1.0, 2.0, 0.5, 1.0, -1.0, 3.0]).unwrap();
    let x = Tensor::randn([2, 3, 6], 1.0, 2.0, &mut rng, DEV).unwrap();
    let (xv, gv, bv) = (f64s(&x), f64s(&ln.weight), f64s(&ln.bias));
    let (gv, bv) = (&gv, &bv);
    let want: Vec<f64> = xv
        .chunks(6)
        .flat_map(|r| {
            let mu = r.iter().sum::<f64>() / 6.0;
            let var = r.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / 6.0;
            r.iter().enumerate().map(move |(i, v)| (v - mu) / (var + 1e-5).sqrt() * gv[i] + bv[i]).collect::<Vec<_>>()
        })
        .collect();
    assert_close(&ln.forward(&x).unwrap().to_vec().unwrap(), &want, 1e-4, 1e-5, "layernorm");
    assert!(ln.forward(&Tensor::zeros([2, 5], DEV).unwrap()).is_err());
}

// ------------------------------------------------------------------ attention

struct AttnWeights {
    wqkv: Vec<f64>,
    bqkv: Vec<f64>,
    wproj: Vec<f64>,
    bproj: Vec<f64>,
}

/// Independent f64 timm Attention: returns (y [B, T, C], attn [B, H, T, T]).
fn attention_ref(x: &[f64], w: &AttnWeights, b: usize, t: usize, c: usize, h: usize) -> (Vec<f64>, Vec<f64>) {
    let hd = c / h;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut qkv = vec![0.0; b * t * 3 * c];
    for r in 0..b * t {
        for o in 0..3 * c {
            qkv[r * 3 * c + o] = w.bqkv[o] + (0..c).map(|i| x[r * c + i] * w.wqkv[o * c + i]).sum::<f64>();
        }
    }
    // Channel o of qkv: part o / C (q, k, v), head (o % C) / hd, dim o % hd.
    let get =
        |bi: usize, ti: usize, part: usize, hi: usize, d: usize| qkv[(bi * t + ti) * 3 * c + part * c + hi * hd + d];
    let mut attn = vec![0.0; b * h * t * t];
    let mut out = vec![0.0; b * t * c];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..t {
                let s: Vec<f64> = (0..t)
                    .map(|j| (0..hd).map(|d| get(bi, i, 0, hi, d) * get(bi, j, 1, hi, d)).sum::<f64>() * scale)
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
                for j in 0..t {
                    let p = (s[j] - mx).exp() / z;
                    attn[((bi * h + hi) * t + i) * t + j] = p;
                    for d in 0..hd {
                        out[(bi * t + i) * c + hi * hd + d] += p * get(bi, j, 2, hi, d);
                    }
                }
            }
        }
    }
    let mut y = vec![0.0; b * t * c];
    for r in 0..b * t {
        for o in 0..c {
            y[r * c + o] = w.bproj[o] + (0..c).map(|i| out[r * c + i] * w.wproj[o * c + i]).sum::<f64>();
        }
    }
    (y, attn)
}

fn weights_of(m: &MultiHeadSelfAttention) -> AttnWeights {
    AttnWeights {
        wqkv: f64s(&m.qkv.weight),
        bqkv: f64s(m.qkv.bias.as_ref().unwrap()),
        wproj: f64s(&m.proj.weight),
        bproj: f64s(m.proj.bias.as_ref().unwrap()),
    }
}

#[test]
fn attention_forward_matches_f64() {
    let mut rng = Rng::seed(11);
    let (b, t, c, h) = (2, 5, 12, 3);
    let m = MultiHeadSelfAttention::new(c, h, true, &mut rng, DEV).unwrap();
    let x = Tensor::randn([b, t, c], 0.0, 1.0, &mut rng, DEV).unwrap();
    let (y, attn) = m.forward_with_attention(&x).unwrap();
    assert_eq!(y.dims(), [b, t, c]);
    assert_eq!(attn.dims(), [b, h, t, t]);
    let (y_ref, attn_ref) = attention_ref(&f64s(&x), &weights_of(&m), b, t, c, h);
    assert_close(&y.to_vec().unwrap(), &y_ref, 1e-4, 1e-5, "attention output");
    assert_close(&attn.to_vec().unwrap(), &attn_ref, 1e-4, 1e-6, "attention maps");
    assert_close(&m.forward(&x).unwrap().to_vec().unwrap(), &y_ref, 1e-4, 1e-5, "forward");
    let err = m.forward(&Tensor::zeros([2, 5, 8], DEV).unwrap()).unwrap_err().to_string();
    assert!(err.contains("[2, 5, 8]"), "{err}");
}

#[test]
fn attention_gradients_match_finite_differences() {
    let mut rng = Rng::seed(12);
    let (b, t, c, h) = (1, 3, 4, 2);
    let m = MultiHeadSelfAttention::new(c, h, true, &mut rng, DEV).unwrap();
    let x = Tensor::randn([b, t, c], 0.0, 1.0, &mut rng, DEV).unwrap().requires_grad_();
    let r = Tensor::randn([b, t, c], 0.0, 1.0, &mut rng, DEV).unwrap();
    // loss = Σ y·r, a generic linear functional of the output.
    let grads = m.forward(&x).unwrap().mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    let rv = f64s(&r);
    let w0 = weights_of(&m);
    let loss = |xv: &[f64], w: &AttnWeights| -> f64 {
        attention_ref(xv, w, b, t, c, h).0.iter().zip(&rv).map(|(a, b)| a * b).sum()
    };
    let eps = 1e-5;
    let x0 = f64s(&x);
    let fd_x: Vec<f64> = (0..x0.len())
        .map(|i| {
            let (mut p, mut q) = (x0.clone(), x0.clone());
            p[i] += eps;
            q[i] -= eps;
            (loss(&p, &w0) - loss(&q, &w0)) / (2.0 * eps)
        })
        .collect();
    assert_close(&grads.of(&x).unwrap().to_vec().unwrap(), &fd_x, 1e-3, 1e-4, "dL/dx");
    type Field = fn(&mut AttnWeights) -> &mut Vec<f64>;
    let fields: [(&str, Field, &Tensor); 4] = [
        ("qkv.weight", |w| &mut w.wqkv, &m.qkv.weight),
        ("qkv.bias", |w| &mut w.bqkv, m.qkv.bias.as_ref().unwrap()),
        ("proj.weight", |w| &mut w.wproj, &m.proj.weight),
        ("proj.bias", |w| &mut w.bproj, m.proj.bias.as_ref().unwrap()),
    ];
    for (name, field, param) in fields {
        let n = param.numel();
        let fd: Vec<f64> = (0..n)
            .map(|i| {
                let mut p = weights_of(&m);
                field(&mut p)[i] += eps;
                let mut q = weights_of(&m);
                field(&mut q)[i] -= eps;
                (loss(&x0, &p) - loss(&x0, &q)) / (2.0 * eps)
            })
            .collect();
        assert_close(&grads.of(param).unwrap().to_vec().unwrap(), &fd, 1e-3, 1e-4, name);
    }
}

// ------------------------------------------------------------------ SGD

/// torch.optim.SGD.step for one parameter, in f64 (dampening 0).
fn sgd_ref(p: &mut [f64], g: &[f64], buf: &mut Option<Vec<f64>>, lr: f64, mom: f64, wd: f64, nesterov: bool) {
    let d: Vec<f64> = g.iter().zip(p.iter()).map(|(g, p)| g + wd * p).collect();
    let step = if mom != 0.0 {
        let b = match buf.take() {
            None => d.clone(),
            Some(b) => b.iter().zip(&d).map(|(b, d)| mom * b + d).collect(),
        };
        let s = if nesterov { d.iter().zip(&b).map(|(d, b)| d + mom * b).collect() } else { b.clone() };
        *buf = Some(b);
        s
    } else {
        d
    };
    for (p, s) in p.iter_mut().zip(step) {
        *p -= lr * s;
    }
}

fn check_sgd(nesterov: bool, momentum: f32) {
    let mut rng = Rng::seed(13);
    let params: Vec<(String, Tensor)> = [("a", 6), ("b", 3), ("frozen", 2)]
        .iter()
        .map(|&(n, len)| (n.to_string(), Tensor::randn([len], 0.0, 1.0, &mut rng, DEV).unwrap().requires_grad_()))
        .collect();
    let coef: Vec<Tensor> =
        params.iter().map(|(_, p)| Tensor::randn(p.dims(), 0.0, 1.0, &mut rng, DEV).unwrap()).collect();
    let ids: Vec<_> = params.iter().map(|(_, p)| p.id()).collect();
    let mut refs: Vec<Vec<f64>> = params.iter().map(|(_, p)| f64s(p)).collect();
    let mut bufs: Vec<Option<Vec<f64>>> = vec![None; 3];
    let (wd, mut lr) = (5e-4, 0.1);
    let mut opt = Sgd::new(lr as f32, momentum, wd as f32, nesterov).unwrap();
    for step in 0..6 {
        if step == 3 {
            lr = 0.03;
            opt.set_lr(lr as f32).unwrap();
        }
        // loss = Σ c·p² over a and b only: grad 2·c·p changes every step; `frozen` has none.
        let loss = (0..2)
            .map(|i| params[i].1.sqr().unwrap().mul(&coef[i]).unwrap().sum_all().unwrap())
            .reduce(|a, b| a.add(&b).unwrap())
            .unwrap();
        let grads: Grads = loss.backward().unwrap();
        for i in 0..2 {
            let g: Vec<f64> = refs[i].iter().zip(f64s(&coef[i])).map(|(p, c)| 2.0 * c * p).collect();
            sgd_ref(&mut refs[i], &g, &mut bufs[i], lr, momentum as f64, wd, nesterov);
        }
        opt.step(&params, &grads).unwrap();
        for (i, (name, p)) in params.iter().enumerate() {
            assert_close(&p.to_vec().unwrap(), &refs[i], 1e-5, 1e-6, &format!("step {step} {name}"));
            assert_eq!(p.id(), ids[i], "{name} updated in place");
        }
    }
    assert_eq!(opt.steps(), 6);
    let state = opt.state();
    if momentum == 0.0 {
        assert!(state.is_empty());
        return;
    }
    let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b"], "buffers only for parameters that had gradients");
    for (i, (_, buf)) in state.iter().enumerate() {
        assert_close(&buf.to_vec().unwrap(), bufs[i].as_ref().unwrap(), 1e-5, 1e-6, "momentum buffer");
    }
    // A restored optimiser continues exactly like the original.
    let mut resumed = Sgd::new(lr as f32, momentum, wd as f32, nesterov).unwrap();
    resumed.load_state(&state).unwrap();
    let copies: Vec<(String, Tensor)> =
        params.iter().map(|(n, p)| (n.clone(), p.deep_clone().requires_grad_())).collect();
    let g1 = params[0].1.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = copies[0].1.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    opt.step(&params, &g1).unwrap();
    resumed.step(&copies, &g2).unwrap();
    assert_eq!(params[0].1.to_vec().unwrap(), copies[0].1.to_vec().unwrap());
}

#[test]
fn sgd_matches_torch_momentum_weight_decay() {
    check_sgd(false, 0.9);
}

#[test]
fn sgd_matches_torch_nesterov() {
    check_sgd(true, 0.9);
}

#[test]
fn sgd_matches_torch_plain() {
    check_sgd(false, 0.0);
}

#[test]
fn sgd_rejects_bad_settings_and_inputs() {
    assert!(Sgd::new(0.1, 0.0, 0.0, true).is_err(), "Nesterov needs momentum");
    assert!(Sgd::new(-0.1, 0.9, 0.0, false).is_err());
    let mut opt = Sgd::new(0.1, 0.9, 0.0, false).unwrap();
    assert!(opt.set_lr(f32::NAN).is_err());
    let p = Tensor::ones([3], DEV).unwrap().requires_grad_();
    let grads = p.sum_all().unwrap().backward().unwrap();
    let dup = vec![("w".to_string(), p.clone()), ("w".to_string(), p.clone())];
    let err = opt.step(&dup, &grads).unwrap_err().to_string();
    assert!(err.contains("w"), "{err}");
    assert_eq!(p.to_vec().unwrap(), vec![1.0; 3], "failed step changes nothing");
}

// ------------------------------------------------------------------ load

#[test]
fn load_state_dict_copies_in_place_and_names_bad_entries() {
    let mut rng = Rng::seed(14);
    let src = Net::new(&mut rng);
    src.bn1.running_mean.copy_from_slice(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let dst = Net::new(&mut rng);
    let ids: Vec<_> = dst.state_dict().iter().map(|(_, t)| t.id()).collect();
    let report = dst.load_state_dict(&src.state_dict(), true).unwrap();
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    for ((n, a), (_, b)) in src.state_dict().iter().zip(dst.state_dict()) {
        assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap(), "{n} loaded");
    }
    assert_eq!(dst.state_dict().iter().map(|(_, t)| t.id()).collect::<Vec<_>>(), ids, "loading keeps tensors");

    // One missing, one unexpected, one mis-shaped entry: all named, nothing written.
    let fresh = Net::new(&mut rng);
    let before: Vec<Vec<f32>> = fresh.state_dict().iter().map(|(_, t)| t.to_vec().unwrap()).collect();
    let mut bad: Vec<(String, Tensor)> =
        src.state_dict().into_iter().filter(|(n, _)| n != "layer1.0.bn1.running_var").collect();
    bad.push(("head.weight".to_string(), Tensor::zeros([2], DEV).unwrap()));
    for (n, t) in bad.iter_mut() {
        if n == "fc.weight" {
            *t = Tensor::zeros([10, 5], DEV).unwrap();
        }
    }
    let err = fresh.load_state_dict(&bad, true).unwrap_err().to_string();
    for needle in
        ["missing: layer1.0.bn1.running_var", "unexpected: head.weight", "fc.weight (expected [10, 4], got [10, 5])"]
    {
        assert!(err.contains(needle), "error {err:?} lacks {needle:?}");
    }
    let after: Vec<Vec<f32>> = fresh.state_dict().iter().map(|(_, t)| t.to_vec().unwrap()).collect();
    assert_eq!(before, after, "a failed load leaves the module untouched");

    // Non-strict: missing/unexpected are reported, shape mismatches still fail.
    let err = fresh.load_state_dict(&bad, false).unwrap_err().to_string();
    assert!(err.contains("fc.weight") && !err.contains("missing"), "{err}");
    bad.retain(|(n, _)| n != "fc.weight");
    let report = fresh.load_state_dict(&bad, false).unwrap();
    assert_eq!(report.missing, ["layer1.0.bn1.running_var", "fc.weight"]);
    assert_eq!(report.unexpected, ["head.weight"]);
    assert_eq!(fresh.bn1.running_mean.to_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn custom_modules_can_list_their_own_tensors() {
    struct Embed {
        pos: Tensor,
        scale: Tensor,
    }
    impl Module for Embed {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            x.add(&self.pos)?.mul(&self.scale)
        }
        fn local_tensors(&self) -> Vec<LocalTensor> {
            vec![LocalTensor::param("pos_embed", &self.pos), LocalTensor::buffer("scale", &self.scale)]
        }
        kdscout::module_boilerplate!();
    }
    let e =
        Embed { pos: Tensor::zeros([1, 3, 4], DEV).unwrap().requires_grad_(), scale: Tensor::ones([1], DEV).unwrap() };
    let seq = Sequential::new().with(e);
    let names: Vec<String> = seq.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.pos_embed", "0.scale"]);
    assert_eq!(seq.named_parameters().len(), 1);
}
