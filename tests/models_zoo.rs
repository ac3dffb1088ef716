//! The ConvNets of the zoo besides the CIFAR ResNets (wrn, vgg, MobileNetV2, ShuffleV1/V2,
//! ResNet50): parameter counts and MACs derived here from the PyTorch definitions (RepDistiller /
//! mdistiller `models/*.py`) independently of the model code, the published sizes, feature shapes
//! and their mdistiller semantics, forward+backward, state-dict names, initialisation.

use std::collections::HashMap;

use kdscout::models::{build, cost, Features, ZOO};
use kdscout::nn::Module;
use kdscout::rng::Rng;
use kdscout::{Device, Tensor};

const CPU: Device = Device::Cpu;

/// The models this file covers (the CIFAR ResNets are in tests/models.rs).
const NETS: [&str; 13] = [
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "ResNet50",
];

// ------------------------------------------------------------------ independent derivations

/// Parameters and MACs of one 32x32 image, summed layer by layer: a conv costs
/// (c_in/g)·c_out·k² weights (+c_out with bias) and that many MACs per output pixel, BN 2c
/// parameters and no MACs, a Linear in·out (+out) parameters and in·out MACs.
#[derive(Default, Debug, PartialEq, Eq)]
struct Count {
    params: usize,
    macs: u64,
}

impl Count {
    fn conv(&mut self, cin: usize, cout: usize, k: usize, groups: usize, hw_out: usize) {
        let w = cin / groups * cout * k * k;
        self.params += w;
        self.macs += (w * hw_out * hw_out) as u64;
    }
    fn conv_bias(&mut self, cin: usize, cout: usize, k: usize, hw_out: usize) {
        self.conv(cin, cout, k, 1, hw_out);
        self.params += cout;
    }
    fn bn(&mut self, c: usize) {
        self.params += 2 * c;
    }
    fn linear(&mut self, i: usize, o: usize) {
        self.params += i * o + o;
        self.macs += (i * o) as u64;
    }
}

/// wrn.py: conv3x3(3→16); three NetworkBlocks of n = (depth-4)/6 BasicBlocks (bn1, conv1 3x3
/// with the stride, bn2, conv2 3x3, 1x1 convShortcut where in != out); bn1; fc.
fn wrn(depth: usize, widen: usize, classes: usize) -> Count {
    let mut c = Count::default();
    let n = (depth - 4) / 6;
    c.conv(3, 16, 3, 1, 32);
    let (mut inp, mut hw) = (16, 32);
    for (out, stride) in [(16 * widen, 1), (32 * widen, 2), (64 * widen, 2)] {
        for i in 0..n {
            let s = if i == 0 { stride } else { 1 };
            hw /= s;
            c.bn(inp);
            c.conv(inp, out, 3, 1, hw);
            c.bn(out);
            c.conv(out, out, 3, 1, hw);
            if inp != out {
                c.conv(inp, out, 1, 1, hw);
            }
            inp = out;
        }
    }
    c.bn(inp);
    c.linear(inp, classes);
    c
}

/// vgg.py with batch_norm: conv3x3(bias)+BN per cfg entry; pool0..pool2 halve the map before
/// blocks 1..3; pool3 is skipped at 32x32, so block4 runs at 4x4; classifier Linear(512).
fn vgg(cfg: &[&[usize]], classes: usize) -> Count {
    let mut c = Count::default();
    let (mut inp, mut hw) = (3, 32);
    for (b, widths) in cfg.iter().enumerate() {
        if (1..=3).contains(&b) {
            hw /= 2;
        }
        for &v in *widths {
            c.conv_bias(inp, v, 3, hw);
            c.bn(v);
            inp = v;
        }
    }
    c.linear(512, classes);
    c
}

/// mobilenetv2.py, mobile_half (T=6, width 0.5): conv_bn(3→16, stride 2); inverted residuals
/// (1x1 expand, 3x3 depthwise with the stride, 1x1 project, each + BN); conv_1x1_bn(→1280);
/// classifier Linear(1280).
fn mobilenet_v2_half(classes: usize) -> Count {
    let mut c = Count::default();
    let t = 6;
    let setting =
        [(1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1), (t, 160, 3, 2), (t, 320, 1, 1)];
    let (mut inp, mut hw) = (16, 16);
    c.conv(3, 16, 3, 1, 16);
    c.bn(16);
    for (e, ch, n, s) in setting {
        let out = ch / 2;
        for i in 0..n {
            let hidden = inp * e;
            c.conv(inp, hidden, 1, 1, hw);
            c.bn(hidden);
            hw /= if i == 0 { s } else { 1 };
            c.conv(hidden, hidden, 3, hidden, hw);
            c.bn(hidden);
            c.conv(hidden, out, 1, 1, hw);
            c.bn(out);
            inp = out;
        }
    }
    c.conv(inp, 1280, 1, 1, hw);
    c.bn(1280);
    c.linear(1280, classes);
    c
}

/// ShuffleNetv1.py, ShuffleV1: conv1x1(3→24)+BN; stages of (240, 4), (480, 8), (960, 4)
/// Bottlenecks, the first of each strided with out = planes - in (the pooled input is
/// concatenated); mid = out/4; conv1 grouped by 3 except right after the stem; conv3 grouped by 3.
fn shuffle_v1(classes: usize) -> Count {
    let mut c = Count::default();
    c.conv(3, 24, 1, 1, 32);
    c.bn(24);
    let (mut inp, mut hw) = (24, 32);
    for (planes, blocks) in [(240, 4), (480, 8), (960, 4)] {
        for i in 0..blocks {
            let (out, s) = if i == 0 { (planes - inp, 2) } else { (planes, 1) };
            let mid = out / 4;
            c.conv(inp, mid, 1, if inp == 24 { 1 } else { 3 }, hw);
            c.bn(mid);
            hw /= s;
            c.conv(mid, mid, 3, mid, hw);
            c.bn(mid);
            c.conv(mid, out, 1, 3, hw);
            c.bn(out);
            inp = planes;
        }
    }
    c.linear(960, classes);
    c
}

/// ShuffleNetv2.py, net size 1: conv1x1(3→24)+BN; per stage a DownBlock (left: dw3x3 s2 + BN,
/// 1x1→out/2 + BN; right: 1x1→out/2 + BN at the input resolution, dw3x3 s2 + BN, 1x1 + BN) and
/// BasicBlocks on half the channels (1x1, dw3x3, 1x1, each + BN); conv1x1(464→1024)+BN; Linear.
fn shuffle_v2(classes: usize) -> Count {
    let mut c = Count::default();
    c.conv(3, 24, 1, 1, 32);
    c.bn(24);
    let (mut inp, mut hw) = (24, 32);
    for (out, blocks) in [(116, 3), (232, 7), (464, 3)] {
        let mid = out / 2;
        let hw_in = hw;
        hw /= 2;
        c.conv(inp, inp, 3, inp, hw);
        c.bn(inp);
        c.conv(inp, mid, 1, 1, hw);
        c.bn(mid);
        c.conv(inp, mid, 1, 1, hw_in);
        c.bn(mid);
        c.conv(mid, mid, 3, mid, hw);
        c.bn(mid);
        c.conv(mid, mid, 1, 1, hw);
        c.bn(mid);
        for _ in 0..blocks {
            c.conv(mid, mid, 1, 1, hw);
            c.bn(mid);
            c.conv(mid, mid, 3, mid, hw);
            c.bn(mid);
            c.conv(mid, mid, 1, 1, hw);
            c.bn(mid);
        }
        inp = out;
    }
    c.conv(464, 1024, 1, 1, hw);
    c.bn(1024);
    c.linear(1024, classes);
    c
}

/// resnetv2.py, ResNet50: conv3x3(3→64)+BN; Bottlenecks [3, 4, 6, 3] with planes 64..512 (1x1,
/// 3x3 with the stride, 1x1 to 4·planes, each + BN; 1x1 conv + BN shortcut where the shape
/// changes); Linear(2048).
fn resnet50(classes: usize) -> Count {
    let mut c = Count::default();
    c.conv(3, 64, 3, 1, 32);
    c.bn(64);
    let (mut inp, mut hw) = (64, 32);
    for (planes, blocks, stride) in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)] {
        for i in 0..blocks {
            let s = if i == 0 { stride } else { 1 };
            c.conv(inp, planes, 1, 1, hw);
            c.bn(planes);
            hw /= s;
            c.conv(planes, planes, 3, 1, hw);
            c.bn(planes);
            c.conv(planes, 4 * planes, 1, 1, hw);
            c.bn(4 * planes);
            if s != 1 || inp != 4 * planes {
                c.conv(inp, 4 * planes, 1, 1, hw);
                c.bn(4 * planes);
            }
            inp = 4 * planes;
        }
    }
    c.linear(2048, classes);
    c
}

fn derived(name: &str, classes: usize) -> Count {
    match name {
        "wrn_16_1" => wrn(16, 1, classes),
        "wrn_16_2" => wrn(16, 2, classes),
        "wrn_40_1" => wrn(40, 1, classes),
        "wrn_40_2" => wrn(40, 2, classes),
        "vgg8" => vgg(&[&[64], &[128], &[256], &[512], &[512]], classes),
        "vgg11" => vgg(&[&[64], &[128], &[256, 256], &[512, 512], &[512, 512]], classes),
        "vgg13" => vgg(&[&[64, 64], &[128, 128], &[256, 256], &[512, 512], &[512, 512]], classes),
        "vgg16" => vgg(&[&[64, 64], &[128, 128], &[256; 3], &[512; 3], &[512; 3]], classes),
        "vgg19" => vgg(&[&[64, 64], &[128, 128], &[256; 4], &[512; 4], &[512; 4]], classes),
        "MobileNetV2" => mobilenet_v2_half(classes),
        "ShuffleV1" => shuffle_v1(classes),
        "ShuffleV2" => shuffle_v2(classes),
        "ResNet50" => resnet50(classes),
        _ => panic!("no derivation for {name}"),
    }
}

// ------------------------------------------------------------------ counts and costs

#[test]
fn parameter_counts_match_the_pytorch_definitions_and_the_papers() {
    // Exact counts for 100 classes, as torch's sum(p.numel()) gives them.
    let exact = [
        ("wrn_16_1", 180_916),
        ("wrn_16_2", 703_284),
        ("wrn_40_1", 569_780),
        ("wrn_40_2", 2_255_156),
        ("vgg8", 3_965_028),
        ("vgg11", 9_277_284),
        ("vgg13", 9_462_180),
        ("vgg16", 14_774_436),
        ("vgg19", 20_086_692),
        ("MobileNetV2", 812_836),
        ("ShuffleV1", 949_258),
        ("ShuffleV2", 1_355_528),
        ("ResNet50", 23_705_252),
    ];
    for (name, count) in exact {
        assert_eq!(derived(name, 100).params, count, "{name}: derivation");
        let net = build(name, 100, &mut Rng::seed(0), CPU).unwrap();
        assert_eq!(net.num_parameters(), count, "{name}: model");
        assert_eq!(net.num_classes(), 100);
    }
    // Published sizes (CRD / mdistiller tables, millions, two decimals) against the exact counts
    // rounded to two decimals. vgg8 is the one table entry printed truncated: 3,965,028 rounds to
    // 3.97 but is printed 3.96.
    let published = [
        ("wrn_16_2", 0.70),
        ("wrn_40_2", 2.26),
        ("vgg13", 9.46),
        ("MobileNetV2", 0.81),
        ("ShuffleV1", 0.95),
        ("ShuffleV2", 1.36),
        ("ResNet50", 23.71),
    ];
    let hundredths = |m: f64| (m * 100.0).round() as usize;
    for (name, millions) in published {
        let count = derived(name, 100).params;
        assert_eq!((count + 5_000) / 10_000, hundredths(millions), "{name}: {count} vs published {millions}M");
    }
    let vgg8 = derived("vgg8", 100).params;
    assert_eq!((vgg8 / 10_000, (vgg8 + 5_000) / 10_000), (hundredths(3.96), 397));
    // The classifier scales with the classes: 10 classes remove 90·(in + 1) parameters.
    let net = build("ShuffleV2", 10, &mut Rng::seed(0), CPU).unwrap();
    assert_eq!(net.num_parameters(), 1_355_528 - 90 * 1025);
    assert_eq!(net.num_parameters(), derived("ShuffleV2", 10).params);
}

#[test]
fn macs_at_32x32_match_the_definitions() {
    for name in NETS {
        let c = cost(name, 100).unwrap();
        let want = derived(name, 100);
        assert_eq!((c.params, c.macs), (want.params, want.macs), "{name}");
    }
    // Orders of magnitude of the papers' FLOPs columns (thop MACs).
    let giga = |n: &str| cost(n, 100).unwrap().macs as f64 / 1e9;
    assert!((1.29..1.31).contains(&giga("ResNet50")), "ResNet50 {}", giga("ResNet50"));
    assert!((0.0060..0.0070).contains(&giga("MobileNetV2")), "MobileNetV2 {}", giga("MobileNetV2"));
}

// ------------------------------------------------------------------ features and gradients

fn spatial_mean(t: &Tensor) -> Vec<f64> {
    let d = t.dims();
    let hw = d[2] * d[3];
    let v = t.to_vec().unwrap();
    v.chunks(hw).map(|c| c.iter().map(|&x| x as f64).sum::<f64>() / hw as f64).collect()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

fn relu_of(t: &Tensor) -> Vec<f32> {
    t.to_vec().unwrap().into_iter().map(|v| v.max(0.0)).collect()
}

/// Training-mode BN with weight 1 and bias 0, in f64 (what a fresh network's BN computes).
fn batch_norm_f64(t: &Tensor) -> Vec<f64> {
    let d = t.dims();
    let (n, c, hw) = (d[0], d[1], d[2] * d[3]);
    let v = t.to_vec().unwrap();
    let mut out = vec![0.0; v.len()];
    for ch in 0..c {
        let idx = |b: usize, i: usize| (b * c + ch) * hw + i;
        let vals: Vec<f64> =
            (0..n).flat_map(|b| (0..hw).map(move |i| (b, i))).map(|(b, i)| v[idx(b, i)] as f64).collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / vals.len() as f64;
        for b in 0..n {
            for i in 0..hw {
                out[idx(b, i)] = (v[idx(b, i)] as f64 - mean) / (var + 1e-5).sqrt();
            }
        }
    }
    out
}

/// (stage shapes [C, H] at batch 2, pooled width, final_map index) from the original forwards.
fn expected_features(name: &str) -> (Vec<[usize; 2]>, usize, usize) {
    match name {
        "wrn_16_1" | "wrn_40_1" => (vec![[16, 32], [16, 32], [32, 16], [64, 8]], 64, 3),
        "wrn_16_2" | "wrn_40_2" => (vec![[16, 32], [32, 32], [64, 16], [128, 8]], 128, 3),
        "vgg8" | "vgg11" | "vgg13" | "vgg16" | "vgg19" => {
            (vec![[64, 32], [128, 16], [256, 8], [512, 4], [512, 4]], 512, 4)
        }
        "MobileNetV2" => (vec![[16, 16], [12, 16], [16, 8], [48, 4], [160, 2]], 1280, 4),
        "ShuffleV1" => (vec![[24, 32], [240, 16], [480, 8], [960, 4]], 960, 3),
        "ShuffleV2" => (vec![[24, 32], [116, 16], [232, 8], [464, 4]], 1024, 3),
        "ResNet50" => (vec![[64, 32], [256, 32], [512, 16], [1024, 8], [2048, 4]], 2048, 4),
        _ => panic!("{name}"),
    }
}

/// The mdistiller relation between `feats`, `preact_feats` and `pooled_feat` of each family.
fn check_semantics(name: &str, f: &Features) {
    let last = f.stages.len() - 1;
    match name {
        n if n.starts_with("wrn") => {
            // Block outputs are not activated; preacts are the next BN's output; the classifier
            // reads the average of relu(bn1(block3)).
            for i in 1..=3 {
                let (s, p) = (&f.stages[i], &f.preact_stages[i]);
                let p: Vec<f64> = p.to_vec().unwrap().into_iter().map(f64::from).collect();
                assert_close(&p, &batch_norm_f64(s), 1e-3, &format!("{name} preact {i} = bn(stage {i})"));
            }
            assert!(f.stages[3].to_vec().unwrap().iter().any(|v| *v < 0.0), "{name}: block3 output is pre-BN");
            let act = Tensor::from_vec(relu_of(&f.preact_stages[3]), f.stages[3].dims().to_vec(), CPU).unwrap();
            let pooled: Vec<f64> = f.pooled.to_vec().unwrap().into_iter().map(f64::from).collect();
            assert_close(&pooled, &spatial_mean(&act), 1e-5, &format!("{name} pooled"));
        }
        "MobileNetV2" => {
            for (s, p) in f.stages.iter().zip(&f.preact_stages) {
                assert_eq!(s.to_vec().unwrap(), p.to_vec().unwrap(), "MobileNetV2 preact repeats feats");
            }
            assert!(f.stages[4].to_vec().unwrap().iter().any(|v| *v < 0.0), "linear bottleneck output");
        }
        "ShuffleV2" => {
            // preact is taken before the channel shuffle: feats = shuffle(relu(preact)).
            for i in 1..=3 {
                let act = Tensor::from_vec(relu_of(&f.preact_stages[i]), f.stages[i].dims().to_vec(), CPU).unwrap();
                let shuffled = act.channel_shuffle(2).unwrap().to_vec().unwrap();
                assert_eq!(f.stages[i].to_vec().unwrap(), shuffled, "ShuffleV2 stage {i}");
                assert_ne!(f.stages[i].to_vec().unwrap(), relu_of(&f.preact_stages[i]), "shuffle moves channels");
            }
        }
        _ => {
            // vgg, ShuffleV1, ResNet50: stage = relu(preact); the pooled vector is the mean of the
            // final map.
            for i in 1..=last {
                let pre = &f.preact_stages[i];
                assert!(pre.to_vec().unwrap().iter().any(|v| *v < 0.0), "{name} preact {i} has negatives");
                assert_eq!(f.stages[i].to_vec().unwrap(), relu_of(pre), "{name} stage {i}");
            }
            let pooled: Vec<f64> = f.pooled.to_vec().unwrap().into_iter().map(f64::from).collect();
            assert_close(&pooled, &spatial_mean(f.final_map()), 1e-5, &format!("{name} pooled"));
        }
    }
    // The stem is shared by both lists.
    assert_eq!(f.stages[0].to_vec().unwrap(), f.preact_stages[0].to_vec().unwrap(), "{name} stem");
}

#[test]
fn features_shapes_semantics_and_gradients_of_every_model() {
    let mut rng = Rng::seed(7);
    let x = Tensor::randn([2, 3, 32, 32], 0.0, 1.0, &mut rng, CPU).unwrap();
    for name in NETS {
        let net = build(name, 100, &mut rng, CPU).unwrap();
        let f = net.forward_features(&x).unwrap();
        let (stages, pooled, final_map) = expected_features(name);
        let want: Vec<Vec<usize>> = stages.iter().map(|[c, h]| vec![2, *c, *h, *h]).collect();
        let got: Vec<Vec<usize>> = f.stages.iter().map(|t| t.dims().to_vec()).collect();
        let got_pre: Vec<Vec<usize>> = f.preact_stages.iter().map(|t| t.dims().to_vec()).collect();
        assert_eq!(got, want, "{name} stages");
        assert_eq!(got_pre, want, "{name} preact stages");
        assert_eq!(f.final_map, final_map, "{name}");
        assert_eq!(f.pooled.dims(), &[2, pooled], "{name} pooled");
        assert_eq!(f.logits.dims(), &[2, 100], "{name} logits");
        check_semantics(name, &f);

        let grads = f.logits.cross_entropy(&[3, 97]).unwrap().backward().unwrap();
        for (pname, p) in net.named_parameters() {
            let g = grads.of(&p).unwrap_or_else(|e| panic!("{name}.{pname}: {e}"));
            let g = g.to_vec().unwrap();
            assert!(g.iter().all(|v| v.is_finite()), "{name}.{pname} gradient not finite");
        }
        let w = net.classifier().weight.clone();
        assert!(grads.of(&w).unwrap().to_vec().unwrap().iter().any(|v| *v != 0.0), "{name}: classifier gradient");
    }
}

#[test]
fn forward_equals_forward_features_logits_in_eval_mode() {
    let mut rng = Rng::seed(3);
    let x = Tensor::randn([1, 3, 32, 32], 0.0, 1.0, &mut rng, CPU).unwrap();
    let mut net = build("ShuffleV1", 10, &mut rng, CPU).unwrap();
    kdscout::nn::eval(net.as_mut());
    let a = net.forward(&x).unwrap().to_vec().unwrap();
    let b = net.forward_features(&x).unwrap().logits.to_vec().unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 10);
}

/// Eval mode under `no_grad` takes the fused inference path (batchnorm + shortcut + ReLU in one
/// pass); with gradients recorded the same network runs the separate differentiable ops. Every
/// feature map and the logits must agree bit for bit, for every model of the zoo.
#[test]
fn fused_inference_path_equals_the_recorded_path_for_every_model() {
    for (k, name) in ZOO.iter().enumerate() {
        let mut rng = Rng::seed(40 + k as u64);
        let x = Tensor::randn([1, 3, 32, 32], 0.0, 1.0, &mut rng, CPU).unwrap();
        let mut net = build(name, 10, &mut rng, CPU).unwrap();
        kdscout::nn::eval(net.as_mut());
        let fused = {
            let _g = kdscout::autograd::no_grad();
            net.forward_features(&x).unwrap()
        };
        let recorded = net.forward_features(&x.detach().requires_grad_()).unwrap();
        assert!(recorded.logits.requires_grad(), "{name}: the recorded path must build a graph");
        let bits = |t: &Tensor| t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let maps = |f: &Features| {
            let mut v: Vec<Tensor> = f.stages.iter().chain(&f.preact_stages).cloned().collect();
            v.push(f.logits.clone());
            v
        };
        for (i, (a, b)) in maps(&fused).iter().zip(maps(&recorded).iter()).enumerate() {
            assert!(bits(a) == bits(b), "{name}: map {i} differs between the fused and the recorded path");
        }
    }
}

// ------------------------------------------------------------------ names and init

fn state_shapes(name: &str) -> HashMap<String, Vec<usize>> {
    let net = build(name, 100, &mut Rng::seed(0), CPU).unwrap();
    net.state_dict().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect()
}

/// (model, names present with their shapes, names absent).
type Expected = (&'static str, &'static [(&'static str, &'static [usize])], &'static [&'static str]);

#[test]
fn state_dict_names_and_shapes_follow_the_pytorch_files() {
    let cases: [Expected; 7] = [
        (
            "wrn_16_2",
            &[
                ("conv1.weight", &[16, 3, 3, 3]),
                ("block1.layer.0.bn1.weight", &[16]),
                ("block1.layer.0.convShortcut.weight", &[32, 16, 1, 1]),
                ("block1.layer.1.conv2.weight", &[32, 32, 3, 3]),
                ("block2.layer.0.convShortcut.weight", &[64, 32, 1, 1]),
                ("block3.layer.1.bn2.num_batches_tracked", &[]),
                ("bn1.running_var", &[128]),
                ("fc.weight", &[100, 128]),
                ("fc.bias", &[100]),
            ],
            &["block1.layer.1.convShortcut.weight", "block4.layer.0.bn1.weight"],
        ),
        (
            "wrn_40_1",
            &[
                ("block1.layer.5.conv1.weight", &[16, 16, 3, 3]),
                ("block3.layer.0.convShortcut.weight", &[64, 32, 1, 1]),
            ],
            &["block1.layer.0.convShortcut.weight", "block1.layer.6.conv1.weight"],
        ),
        (
            "vgg13",
            &[
                ("block0.0.weight", &[64, 3, 3, 3]),
                ("block0.0.bias", &[64]),
                ("block0.1.running_mean", &[64]),
                ("block0.3.weight", &[64, 64, 3, 3]),
                ("block0.4.num_batches_tracked", &[]),
                ("block4.4.weight", &[512]),
                ("classifier.weight", &[100, 512]),
                ("classifier.bias", &[100]),
            ],
            &["block0.5.weight", "block5.0.weight"],
        ),
        (
            "MobileNetV2",
            &[
                ("conv1.0.weight", &[16, 3, 3, 3]),
                ("conv1.1.weight", &[16]),
                ("blocks.0.0.conv.0.weight", &[16, 16, 1, 1]),
                ("blocks.1.0.conv.3.weight", &[48, 1, 3, 3]),
                ("blocks.3.3.conv.4.running_var", &[192]),
                ("blocks.6.0.conv.6.weight", &[160, 480, 1, 1]),
                ("blocks.6.0.conv.7.bias", &[160]),
                ("conv2.0.weight", &[1280, 160, 1, 1]),
                ("conv2.1.running_mean", &[1280]),
                ("classifier.0.weight", &[100, 1280]),
                ("classifier.0.bias", &[100]),
            ],
            &["classifier.weight", "blocks.6.1.conv.0.weight"],
        ),
        (
            "ShuffleV1",
            &[
                ("conv1.weight", &[24, 3, 1, 1]),
                ("bn1.bias", &[24]),
                ("layer1.0.conv1.weight", &[54, 24, 1, 1]),
                ("layer1.0.conv2.weight", &[54, 1, 3, 3]),
                ("layer1.0.conv3.weight", &[216, 18, 1, 1]),
                ("layer1.1.conv1.weight", &[60, 80, 1, 1]),
                ("layer2.7.bn3.running_mean", &[480]),
                ("layer3.3.bn3.running_var", &[960]),
                ("linear.weight", &[100, 960]),
            ],
            &["layer1.4.conv1.weight", "layer1.0.shortcut.0.weight"],
        ),
        (
            "ShuffleV2",
            &[
                ("layer1.0.conv1.weight", &[24, 1, 3, 3]),
                ("layer1.0.conv3.weight", &[58, 24, 1, 1]),
                ("layer1.0.conv5.weight", &[58, 58, 1, 1]),
                ("layer1.0.bn5.num_batches_tracked", &[]),
                ("layer1.1.conv2.weight", &[58, 1, 3, 3]),
                ("layer2.7.conv3.weight", &[116, 116, 1, 1]),
                ("layer3.3.bn3.bias", &[232]),
                ("conv2.weight", &[1024, 464, 1, 1]),
                ("bn2.weight", &[1024]),
                ("linear.weight", &[100, 1024]),
            ],
            &["layer2.8.conv1.weight", "layer1.1.conv4.weight"],
        ),
        (
            "ResNet50",
            &[
                ("conv1.weight", &[64, 3, 3, 3]),
                ("layer1.0.conv1.weight", &[64, 64, 1, 1]),
                ("layer1.0.shortcut.0.weight", &[256, 64, 1, 1]),
                ("layer1.0.shortcut.1.running_mean", &[256]),
                ("layer2.0.conv2.weight", &[128, 128, 3, 3]),
                ("layer4.2.conv3.weight", &[2048, 512, 1, 1]),
                ("linear.weight", &[100, 2048]),
            ],
            &["layer1.1.shortcut.0.weight", "fc.weight"],
        ),
    ];
    for (model, present, absent) in cases {
        let shapes = state_shapes(model);
        for (n, dims) in present {
            let got = shapes.get(*n).unwrap_or_else(|| panic!("{model}: missing {n}"));
            assert_eq!(got.as_slice(), *dims, "{model}: {n}");
        }
        for n in absent {
            assert!(!shapes.contains_key(*n), "{model}: unexpected {n}");
        }
    }
    // Every BN has its three buffers: the state dict is parameters plus 3 per BN.
    let net = build("vgg8", 100, &mut Rng::seed(0), CPU).unwrap();
    assert_eq!(net.state_dict().len(), net.named_parameters().len() + 3 * 5);
}

fn stats(t: &Tensor) -> (f64, f64, f64) {
    let v = t.to_vec().unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let max = v.iter().map(|x| x.abs() as f64).fold(0.0, f64::max);
    (mean, std, max)
}

#[test]
fn initialisation_follows_each_file() {
    let param = |name: &str, key: &str| -> Tensor {
        let net = build(name, 100, &mut Rng::seed(5), CPU).unwrap();
        net.state_dict().into_iter().find(|(n, _)| n == key).unwrap_or_else(|| panic!("{name}: {key}")).1
    };
    // vgg / MobileNetV2 `_initialize_weights`: conv N(0, 2/(k²·out)) with bias 0, Linear N(0, 0.01²).
    let (_, std, _) = stats(&param("vgg8", "block3.0.weight"));
    assert!((std / (2.0f64 / (9.0 * 512.0)).sqrt() - 1.0).abs() < 0.02, "vgg conv std {std}");
    assert_eq!(stats(&param("vgg8", "block3.0.bias")).2, 0.0);
    let (_, std, _) = stats(&param("vgg8", "classifier.weight"));
    assert!((std / 0.01 - 1.0).abs() < 0.03, "vgg classifier std {std}");
    assert_eq!(stats(&param("MobileNetV2", "classifier.0.bias")).2, 0.0);
    let (_, std, _) = stats(&param("MobileNetV2", "blocks.5.0.conv.3.weight"));
    assert!((std / (2.0f64 / (9.0 * 288.0)).sqrt() - 1.0).abs() < 0.1, "depthwise std {std}");
    // wrn: the same conv rule, the classifier's bias zeroed, its weight at PyTorch's default.
    let (_, std, _) = stats(&param("wrn_40_2", "block3.layer.0.conv1.weight"));
    assert!((std / (2.0f64 / (9.0 * 128.0)).sqrt() - 1.0).abs() < 0.02, "wrn conv std {std}");
    assert_eq!(stats(&param("wrn_40_2", "fc.bias")).2, 0.0);
    let (_, _, max) = stats(&param("wrn_40_2", "fc.weight"));
    assert!(max <= 1.0 / 128f64.sqrt() && max > 0.9 / 128f64.sqrt(), "wrn fc max {max}");
    // ShuffleNets: no init of their own, PyTorch's default U(±1/√fan_in) everywhere.
    let (_, _, max) = stats(&param("ShuffleV2", "layer3.1.conv1.weight"));
    assert!(max <= 1.0 / 232f64.sqrt() && max > 0.9 / 232f64.sqrt(), "ShuffleV2 conv max {max}");
    let (_, _, max) = stats(&param("ShuffleV1", "linear.bias"));
    assert!(max <= 1.0 / 960f64.sqrt() && max > 0.5 / 960f64.sqrt(), "ShuffleV1 linear bias max {max}");
    // ResNet50: kaiming_normal fan_out convs, BN 1/0, default Linear.
    let (_, std, _) = stats(&param("ResNet50", "layer4.0.conv2.weight"));
    assert!((std / (2.0f64 / (9.0 * 512.0)).sqrt() - 1.0).abs() < 0.02, "ResNet50 conv std {std}");
    let (mean, std, _) = stats(&param("ResNet50", "layer2.1.bn2.weight"));
    assert_eq!((mean, std), (1.0, 0.0));
}

#[test]
fn zoo_lists_every_model_and_names_are_checked() {
    for name in NETS {
        assert!(ZOO.contains(&name), "{name} missing from ZOO");
    }
    // RepDistiller's name for the same network.
    let a = build("mobile_half", 100, &mut Rng::seed(0), CPU).unwrap();
    assert_eq!(a.num_parameters(), 812_836);
    for bad in ["vgg10", "wrn_16_3", "mobilenetv2", "ShuffleV3", "resnet50"] {
        let msg = build(bad, 100, &mut Rng::seed(0), CPU).err().unwrap_or_else(|| panic!("{bad} accepted")).to_string();
        assert!(msg.contains(bad) && msg.contains("ShuffleV2"), "{msg}");
    }
}

/// The table of docs/MODELS.md, from the code:
/// `cargo test --test models_zoo -- --ignored --nocapture print_models_table`.
#[test]
#[ignore]
fn print_models_table() {
    let source = |name: &str| match name {
        n if n.starts_with("resnet") => "models/resnet.py",
        "ResNet50" => "models/resnetv2.py",
        n if n.starts_with("wrn") => "models/wrn.py",
        n if n.starts_with("vgg") => "models/vgg.py (`*_bn`)",
        "MobileNetV2" => "models/mobilenetv2.py (`mobile_half`)",
        "ShuffleV1" => "models/ShuffleNetv1.py",
        "ShuffleV2" => "models/ShuffleNetv2.py",
        _ => "?",
    };
    let grouped = |n: u64| {
        let s = n.to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    };
    println!("| name | params (100 classes) | params (M) | MACs at 32x32 | MACs (M) | follows |");
    println!("|---|---:|---:|---:|---:|---|");
    for name in ZOO {
        let c = cost(name, 100).unwrap();
        println!(
            "| `{name}` | {} | {:.2} | {} | {:.1} | {} |",
            grouped(c.params as u64),
            c.params as f64 / 1e6,
            grouped(c.macs),
            c.macs as f64 / 1e6,
            source(name)
        );
    }
}

// ------------------------------------------------------------------ residual wiring

/// Overwrites the parameter `key` of a module with `value` everywhere.
fn set(m: &dyn Module, key: &str, value: f32) {
    let (_, t) = m.named_parameters().into_iter().find(|(n, _)| n == key).unwrap_or_else(|| panic!("no {key}"));
    t.copy_from_slice(&vec![value; t.numel()]).unwrap();
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    a.to_vec().unwrap().iter().zip(b.to_vec().unwrap()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Silencing a block's residual branch (its last BN scaled to 0, or for wrn its input BN driven
/// below zero) leaves only the shortcut the original file wires: identity, projection or pooling.
#[test]
fn residual_branches_and_shortcuts_are_wired_as_in_the_files() {
    use kdscout::models::mobilenetv2::InvertedResidual;
    use kdscout::models::resnetv2::Bottleneck;
    use kdscout::models::shufflenet::{ShuffleV1Block, ShuffleV2Block};
    use kdscout::models::wrn::WrnBlock;
    let mut rng = Rng::seed(11);
    let x = Tensor::rand_uniform([2, 24, 8, 8], 0.0, 1.0, &mut rng, CPU).unwrap();
    let zeros = |t: &Tensor| t.to_vec().unwrap().iter().all(|v| *v == 0.0);

    // wrn: relu(bn1(x)) = 0 makes both the branch and the 1x1 shortcut (which reads the activated
    // input) vanish where the width changes; with equal widths the raw input passes.
    let b = WrnBlock::new(24, 48, 2, &mut rng, CPU).unwrap();
    set(&b, "bn1.bias", -100.0);
    assert!(zeros(&b.forward(&x).unwrap()), "wrn projection block reads the activated input");
    let b = WrnBlock::new(24, 24, 1, &mut rng, CPU).unwrap();
    set(&b, "bn1.bias", -100.0);
    assert_eq!(max_abs_diff(&b.forward(&x).unwrap(), &x), 0.0, "wrn identity block adds the raw input");

    // ResNet50 Bottleneck: relu(x + 0) = x for x >= 0; with a projection, relu(bn(conv(x))).
    let b = Bottleneck::new(24, 6, 1, &mut rng, CPU).unwrap();
    set(&b, "bn3.weight", 0.0);
    assert_eq!(max_abs_diff(&b.forward(&x).unwrap(), &x), 0.0, "Bottleneck identity shortcut");
    let b = Bottleneck::new(24, 8, 2, &mut rng, CPU).unwrap();
    set(&b, "bn3.weight", 0.0);
    let projected = b.children().into_iter().find(|(n, _)| n == "shortcut").unwrap().1.forward(&x).unwrap();
    assert_eq!(max_abs_diff(&b.forward(&x).unwrap(), &projected.relu().unwrap()), 0.0, "Bottleneck projection");

    // MobileNetV2: the residual only where stride 1 and widths match, no activation after it.
    let b = InvertedResidual::new(24, 24, 1, 6, &mut rng, CPU).unwrap();
    set(&b, "conv.7.weight", 0.0);
    assert_eq!(max_abs_diff(&b.forward(&x).unwrap(), &x), 0.0, "inverted residual identity");
    let b = InvertedResidual::new(24, 32, 1, 6, &mut rng, CPU).unwrap();
    set(&b, "conv.7.weight", 0.0);
    assert!(zeros(&b.forward(&x).unwrap()), "no residual when widths differ");

    // ShuffleV1: stride 1 adds the input; stride 2 concatenates [branch, avgpool3x3/2(x)].
    let b = ShuffleV1Block::new(24, 24, 1, 3, &mut rng, CPU).unwrap();
    set(&b, "bn3.weight", 0.0);
    assert_eq!(max_abs_diff(&b.forward(&x).unwrap(), &x), 0.0, "ShuffleV1 identity");
    let b = ShuffleV1Block::new(24, 36, 2, 3, &mut rng, CPU).unwrap();
    set(&b, "bn3.weight", 0.0);
    let y = b.forward(&x).unwrap();
    assert_eq!(y.dims(), &[2, 60, 4, 4]);
    assert!(zeros(&y.narrow(1, 0, 36).unwrap()), "branch channels first");
    // avg_pool2d(3, 2, 1) with count_include_pad: corner output = (sum of the 2x2 corner) / 9.
    let pooled = y.narrow(1, 36, 24).unwrap().to_vec().unwrap();
    let xv = x.to_vec().unwrap();
    let corner = (xv[0] + xv[1] + xv[8] + xv[9]) / 9.0;
    assert!((pooled[0] - corner).abs() < 1e-6, "{} vs {corner}", pooled[0]);

    // ShuffleV2: [x1, relu(branch(x2))] shuffled in 2 groups: even channels are x1.
    let b = ShuffleV2Block::new(24, &mut rng, CPU).unwrap();
    set(&b, "bn3.weight", 0.0);
    let y = b.forward(&x).unwrap().to_vec().unwrap();
    let hw = 64;
    for c in 0..24 {
        let got = &y[c * hw..(c + 1) * hw];
        if c % 2 == 0 {
            assert_eq!(got, &xv[(c / 2) * hw..(c / 2 + 1) * hw], "channel {c} is x1[{}]", c / 2);
        } else {
            assert!(got.iter().all(|v| *v == 0.0), "channel {c} is the silenced branch");
        }
    }
}
