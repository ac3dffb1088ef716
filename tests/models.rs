//! Model zoo: parameter counts against the PyTorch originals, state-dict names, forward shapes.

use kdscout::models::cifar_resnet;
use kdscout::nn::Module;
use kdscout::rng::Rng;
use kdscout::{Device, Tensor};

/// Parameter count of RepDistiller's CIFAR ResNet, derived from its definition independently
/// of our model code: 3x3 stem, n BasicBlocks per stage, 1x1+BN shortcut where the shape changes.
fn resnet_params(depth: usize, f: [usize; 4], classes: usize) -> usize {
    let n = (depth - 2) / 6;
    let bn = |c: usize| 2 * c;
    let mut total = 3 * f[0] * 9 + bn(f[0]);
    let mut inplanes = f[0];
    for &planes in &f[1..] {
        for _ in 0..n {
            total += inplanes * planes * 9 + bn(planes) + planes * planes * 9 + bn(planes);
            if inplanes != planes {
                total += inplanes * planes + bn(planes);
            }
            inplanes = planes;
        }
    }
    total + f[3] * classes + classes
}

#[test]
fn cifar_resnet_parameter_counts_match_pytorch() {
    // (name, depth, filters, published count in millions for 100 classes)
    let cases: [(&str, usize, [usize; 4], f64); 5] = [
        ("resnet20", 20, [16, 16, 32, 64], 0.28),
        ("resnet56", 56, [16, 16, 32, 64], 0.86),
        ("resnet110", 110, [16, 16, 32, 64], 1.74),
        ("resnet8x4", 8, [32, 64, 128, 256], 1.23),
        ("resnet32x4", 32, [32, 64, 128, 256], 7.43),
    ];
    for (name, depth, filters, published) in cases {
        let net = cifar_resnet(name, 100, &mut Rng::seed(0), Device::Cpu).unwrap();
        let expected = resnet_params(depth, filters, 100);
        assert_eq!(net.num_parameters(), expected, "{name}");
        let millions = expected as f64 / 1e6;
        assert!((millions - published).abs() < 0.005, "{name}: {millions:.3}M vs published {published}M");
    }
    // resnet20's exact count, as torch counts it.
    assert_eq!(resnet_params(20, [16, 16, 32, 64], 100), 278_324);
}

#[test]
fn cifar_resnet_state_dict_names_follow_repdistiller() {
    let net = cifar_resnet("resnet20", 100, &mut Rng::seed(0), Device::Cpu).unwrap();
    let names: Vec<String> = net.state_dict().into_iter().map(|(n, _)| n).collect();
    for want in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.2.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.num_batches_tracked",
        "layer3.2.conv2.weight",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "missing {want} in {names:?}");
    }
    assert!(!names.iter().any(|n| n == "layer1.0.downsample.0.weight"), "layer1 needs no shortcut conv");
}

#[test]
fn cifar_resnet_forward_backward_shapes() {
    let mut rng = Rng::seed(1);
    let net = cifar_resnet("resnet8", 10, &mut rng, Device::Cpu).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
    let logits = net.forward(&x).unwrap();
    assert_eq!(logits.dims(), &[2, 10]);
    let grads = logits.cross_entropy(&[3, 7]).unwrap().backward().unwrap();
    for (name, p) in net.named_parameters() {
        let g = grads.of(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(g.to_vec().unwrap().iter().all(|v| v.is_finite()), "{name}");
    }
    let err = cifar_resnet("resnet21", 10, &mut rng, Device::Cpu).err().expect("resnet21 is no model");
    assert!(err.to_string().contains("resnet21"));
}

/// MACs of RepDistiller's CIFAR ResNet at 32x32, derived from its definition: every conv is
/// c_in·c_out·k²·h_out·w_out, the classifier in·out.
fn resnet_macs(blocks: [usize; 3], f: [usize; 4], classes: usize) -> u64 {
    let conv = |cin: usize, cout: usize, k: usize, hw: usize| (cin * cout * k * k * hw * hw) as u64;
    let mut total = conv(3, f[0], 3, 32);
    let (mut inplanes, mut hw) = (f[0], 32);
    for (s, &planes) in f[1..].iter().enumerate() {
        for b in 0..blocks[s] {
            if b == 0 && s > 0 {
                hw /= 2;
            }
            total += conv(inplanes, planes, 3, hw) + conv(planes, planes, 3, hw);
            if inplanes != planes {
                total += conv(inplanes, planes, 1, hw);
            }
            inplanes = planes;
        }
    }
    total + (f[3] * classes) as u64
}

#[test]
fn features_follow_mdistiller_and_costs_match_the_definition() {
    use kdscout::models::{build, cost};
    let mut rng = Rng::seed(2);
    let x = Tensor::randn([2, 3, 32, 32], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
    let net = build("resnet_d135", 100, &mut rng, Device::Cpu).unwrap();
    let f = net.forward_features(&x).unwrap();
    let dims: Vec<Vec<usize>> = f.stages.iter().map(|t| t.dims().to_vec()).collect();
    assert_eq!(dims, [vec![2, 16, 32, 32], vec![2, 16, 32, 32], vec![2, 32, 16, 16], vec![2, 64, 8, 8]]);
    assert_eq!(f.final_map().dims(), &[2, 64, 8, 8]);
    assert_eq!(f.pooled.dims(), &[2, 64]);
    assert_eq!(f.logits.dims(), &[2, 100]);
    // Stage outputs are the relu of their pre-activations; the pre-activations have negatives.
    for (post, pre) in f.stages.iter().zip(&f.preact_stages).skip(1) {
        let (post, pre) = (post.to_vec().unwrap(), pre.to_vec().unwrap());
        assert!(pre.iter().any(|v| *v < 0.0));
        assert!(post.iter().zip(&pre).all(|(a, b)| *a == b.max(0.0)));
    }
    assert_eq!(net.forward(&x).unwrap().to_vec().unwrap().len(), 200);

    let c = cost("resnet20", 100).unwrap();
    assert_eq!(c.params, 278_324);
    assert_eq!(c.macs, resnet_macs([3, 3, 3], [16, 16, 32, 64], 100));
    assert_eq!(c.macs, 40_818_944, "resnet20 is 41M FLOPs (MACs) in the papers' tables");
    let d = cost("resnet_d557", 100).unwrap();
    assert_eq!(d.macs, resnet_macs([5, 5, 7], [16, 16, 32, 64], 100));

    for bad in ["resnet_d22", "resnet_d1357", "resnet_d124", "resnet_dabc", "resnet_x"] {
        let msg = build(bad, 10, &mut rng, Device::Cpu).err().unwrap_or_else(|| panic!("{bad} accepted")).to_string();
        assert!(msg.contains(bad), "{msg}");
    }
}

/// For every network, the map before global pooling is identifiable: its global average is the
/// pooled embedding the classifier reads.
#[test]
fn pooled_embedding_is_the_average_of_the_pooled_map() {
    use kdscout::models::{build, ZOO};
    let mut rng = Rng::seed(8);
    let x = Tensor::randn([2, 3, 32, 32], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
    let nb201 = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|none~1|avg_pool_3x3~2|";
    for name in ZOO.iter().copied().chain(["resnet_d317", nb201]) {
        let net = build(name, 10, &mut rng, Device::Cpu).unwrap();
        let f = net.forward_features(&x).unwrap();
        let map = f.pooled_map();
        assert_eq!(map.rank(), 4, "{name}");
        let avg = map.adaptive_avg_pool2d(1, 1).unwrap().flatten_from(1).unwrap().to_vec().unwrap();
        let pooled = f.pooled.to_vec().unwrap();
        assert_eq!(avg.len(), pooled.len(), "{name}");
        // The classifier reads exactly `pooled` (DisWOT's closed-form gradient relies on it).
        let relogits = net.classifier().forward(&f.pooled).unwrap().to_vec().unwrap();
        assert_eq!(relogits, f.logits.to_vec().unwrap(), "{name}: logits = classifier(pooled)");
        for (a, p) in avg.iter().zip(&pooled) {
            assert!((a - p).abs() <= 1e-4 * (1.0 + p.abs()), "{name}: {a} vs {p}");
        }
    }
}
