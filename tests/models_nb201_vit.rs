//! NAS-Bench-201 cells and networks, and the small ViT: string codecs, the benchmark's index,
//! parameter counts and MACs against formulas derived from the PyTorch definitions, state-dict
//! names, feature shapes, forward + backward.

use std::collections::HashSet;

use kdscout::models::nb201::{Nb201Cell, NUM_CELLS};
use kdscout::models::vit::VitBlock;
use kdscout::models::{build, cost, Nb201Genotype, Nb201Network, VisionTransformer, VitConfig};
use kdscout::nn::Module;
use kdscout::rng::Rng;
use kdscout::{Device, Tensor};

const OPS: [&str; 5] = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"];

/// The architecture string of six op names, written out as `Structure.tostr()` does.
fn arch(e: [&str; 6]) -> String {
    format!("|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|", e[0], e[1], e[2], e[3], e[4], e[5])
}

/// `Structure.gen_all`'s i-th cell: base-5 digits of i, first edge most significant.
fn gen_all(i: usize) -> [&'static str; 6] {
    let mut e = [""; 6];
    for (k, slot) in e.iter_mut().enumerate() {
        *slot = OPS[(i / 5usize.pow(5 - k as u32)) % 5];
    }
    e
}

// ==================================================================== NB201 genotype

#[test]
fn nb201_every_cell_round_trips_through_its_string_and_both_indices() {
    let mut api_seen = HashSet::new();
    for i in 0..NUM_CELLS {
        let want = arch(gen_all(i));
        let g = Nb201Genotype::from_lex_index(i).unwrap();
        assert_eq!(g.to_string(), want);
        let parsed: Nb201Genotype = want.parse().unwrap();
        assert_eq!(parsed, g, "{want}");
        assert_eq!(parsed.lex_index(), i);
        let api = g.index();
        assert!(api < NUM_CELLS && api_seen.insert(api), "API index {api} of {want} repeated or out of range");
        assert_eq!(Nb201Genotype::from_index(api).unwrap(), g);
    }
    assert_eq!(api_seen.len(), NUM_CELLS);
    assert!(Nb201Genotype::from_index(NUM_CELLS).unwrap_err().to_string().contains("15625"));
    assert!(Nb201Genotype::from_lex_index(NUM_CELLS).is_err());
}

#[test]
fn nb201_index_is_the_benchmarks() {
    // The three indices NAS-Bench-201's generate_meta_info asserts after random.seed(88) + shuffle
    // (AutoDL-Projects exps/NAS-Bench-201/main.py).
    let asserted = [
        (0, "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"),
        (9, "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"),
        (123, "|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|"),
    ];
    for (index, s) in asserted {
        assert_eq!(Nb201Genotype::from_index(index).unwrap().to_string(), s);
        assert_eq!(Nb201Genotype::parse(s).unwrap().index(), index);
    }
    // The unshuffled enumeration is not the API's.
    assert_eq!(Nb201Genotype::from_lex_index(0).unwrap().to_string(), arch(["none"; 6]));
    assert_ne!(Nb201Genotype::from_index(0).unwrap().to_string(), arch(["none"; 6]));
}

#[test]
fn nb201_malformed_strings_are_rejected_naming_the_token() {
    let ok = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|";
    assert!(Nb201Genotype::parse(ok).is_ok());
    // (input, substrings the message must contain)
    let cases: &[(&str, &[&str])] = &[
        // wrong op name
        (
            "|nor_conv_5x5~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
            &["\"nor_conv_5x5~0\"", "column 2", "unknown op"],
        ),
        (
            "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|zero~1|nor_conv_3x3~2|",
            &["\"zero~1\"", "column 66"],
        ),
        // missing '|'
        (
            "|nor_conv_3x3~0+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
            &["\"|nor_conv_3x3~0\"", "column 1", "'|'"],
        ),
        (
            "|nor_conv_3x3~0|+|nor_conv_1x1~0avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
            &["node 2", "1 incoming edge"],
        ),
        // wrong edge index
        (
            "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~2|+|skip_connect~0|none~1|nor_conv_3x3~2|",
            &["\"avg_pool_3x3~2\"", "column 34", "from node 1"],
        ),
        (
            "|nor_conv_3x3~1|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
            &["\"nor_conv_3x3~1\"", "column 2"],
        ),
        ("|nor_conv_3x3|+|none~0|none~1|+|none~0|none~1|none~2|", &["\"nor_conv_3x3\"", "op~j"]),
        // wrong number of nodes / edges
        (
            "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|",
            &["ends after node 2", "\"|nor_conv_1x1~0|avg_pool_3x3~1|\""],
        ),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|+|none~0|none~1|none~2|none~3|", &["4th", "column 49"]),
        ("|none~0|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", &["node 1 has 2 incoming", "column 1"]),
        ("", &["ends after node 1"]),
    ];
    for (input, needles) in cases {
        let msg = Nb201Genotype::parse(input).err().unwrap_or_else(|| panic!("accepted {input:?}")).to_string();
        for n in *needles {
            assert!(msg.contains(n), "message for {input:?} lacks {n:?}: {msg}");
        }
        assert!(msg.contains("|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"), "no expected form in {msg}");
        // build() passes the same error through.
        assert!(build(input, 10, &mut Rng::seed(0), Device::Cpu).is_err());
    }
}

// ==================================================================== NB201 network

/// Parameters of NB201's TinyNetwork, from its definition: stem conv3x3+BN; every
/// nor_conv_kxk edge = Conv(C, C, k, no bias) + BN(C); the reduction ResNetBasicblock = two
/// ReLUConvBN 3x3 and a 1x1 conv (no BN) shortcut; lastact BN; Linear.
fn nb201_params(e: [&str; 6], c: usize, n: usize, classes: usize) -> usize {
    let cell = |c: usize| -> usize {
        e.iter()
            .map(|op| match *op {
                "nor_conv_3x3" => 9 * c * c + 2 * c,
                "nor_conv_1x1" => c * c + 2 * c,
                _ => 0,
            })
            .sum()
    };
    let reduction = |ci: usize, co: usize| 9 * ci * co + 2 * co + 9 * co * co + 2 * co + ci * co;
    27 * c
        + 2 * c
        + n * (cell(c) + cell(2 * c) + cell(4 * c))
        + reduction(c, 2 * c)
        + reduction(2 * c, 4 * c)
        + 2 * 4 * c
        + 4 * c * classes
        + classes
}

/// MACs at 32x32 (conv c_in·c_out·k²·h·w, linear in·out; pools and BN are not counted).
fn nb201_macs(e: [&str; 6], classes: usize) -> u64 {
    let conv = |ci: usize, co: usize, k: usize, hw: usize| (ci * co * k * k * hw * hw) as u64;
    let cell = |c: usize, hw: usize| -> u64 {
        e.iter()
            .map(|op| match *op {
                "nor_conv_3x3" => conv(c, c, 3, hw),
                "nor_conv_1x1" => conv(c, c, 1, hw),
                _ => 0,
            })
            .sum()
    };
    let reduction = |ci: usize, co: usize, hw: usize| conv(ci, co, 3, hw) + conv(co, co, 3, hw) + conv(ci, co, 1, hw);
    conv(3, 16, 3, 32)
        + 5 * (cell(16, 32) + cell(32, 16) + cell(64, 8))
        + reduction(16, 32, 16)
        + reduction(32, 64, 8)
        + (64 * classes) as u64
}

const MIXED: [&str; 6] = ["nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect", "none", "nor_conv_3x3"];

#[test]
fn nb201_parameter_counts_and_macs_match_the_definition() {
    let cases = [["none"; 6], ["nor_conv_3x3"; 6], ["nor_conv_1x1"; 6], MIXED, gen_all(4321)];
    for e in cases {
        let s = arch(e);
        let net = build(&s, 10, &mut Rng::seed(0), Device::Cpu).unwrap();
        assert_eq!(net.num_parameters(), nb201_params(e, 16, 5, 10), "{s}");
    }
    // NAS-Bench-201's extremes (CIFAR-10): 0.07 MB for the all-none cell, 1.53 MB for all 3x3.
    assert_eq!(nb201_params(["none"; 6], 16, 5, 10), 73_306);
    assert_eq!(nb201_params(["nor_conv_3x3"; 6], 16, 5, 10), 1_531_546);
    // and 220.11 MFLOPs (MACs) for the largest cell.
    let c = cost(&arch(["nor_conv_3x3"; 6]), 10).unwrap();
    assert_eq!((c.params, c.macs), (1_531_546, nb201_macs(["nor_conv_3x3"; 6], 10)));
    assert_eq!(c.macs, 220_119_680);
    let m = cost(&arch(MIXED), 100).unwrap();
    assert_eq!((m.params, m.macs), (nb201_params(MIXED, 16, 5, 100), nb201_macs(MIXED, 100)));
}

/// The state dict TinyNetwork(16, 5, cell, K) has in PyTorch, in order, written out from the
/// module tree of tiny_network.py / cells.py / cell_operations.py.
fn nb201_state_dict(e: [&str; 6], classes: usize) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let bn = |v: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for (n, s) in [("weight", vec![c]), ("bias", vec![c]), ("running_mean", vec![c]), ("running_var", vec![c])] {
            v.push((format!("{p}.{n}"), s));
        }
        v.push((format!("{p}.num_batches_tracked"), vec![]));
    };
    let rcb = |v: &mut Vec<(String, Vec<usize>)>, p: &str, ci: usize, co: usize, k: usize| {
        v.push((format!("{p}.op.1.weight"), vec![co, ci, k, k]));
        bn(v, &format!("{p}.op.2"), co);
    };
    v.push(("stem.0.weight".into(), vec![16, 3, 3, 3]));
    bn(&mut v, "stem.1", 16);
    let mut idx = 0;
    for (stage, c) in [16usize, 32, 64].into_iter().enumerate() {
        if stage > 0 {
            let p = format!("cells.{idx}");
            rcb(&mut v, &format!("{p}.conv_a"), c / 2, c, 3);
            rcb(&mut v, &format!("{p}.conv_b"), c, c, 3);
            v.push((format!("{p}.downsample.1.weight"), vec![c, c / 2, 1, 1]));
            idx += 1;
        }
        for _ in 0..5 {
            for (k, op) in e.iter().enumerate() {
                let p = format!("cells.{idx}.layers.{k}");
                match *op {
                    "nor_conv_3x3" => rcb(&mut v, &p, c, c, 3),
                    "nor_conv_1x1" => rcb(&mut v, &p, c, c, 1),
                    _ => {}
                }
            }
            idx += 1;
        }
    }
    bn(&mut v, "lastact.0", 64);
    v.push(("classifier.weight".into(), vec![classes, 64]));
    v.push(("classifier.bias".into(), vec![classes]));
    v
}

#[test]
fn nb201_state_dict_matches_the_original_names_and_loads_by_name() {
    let s = arch(MIXED);
    let g = Nb201Genotype::parse(&s).unwrap();
    let net = Nb201Network::tiny(g, 100, &mut Rng::seed(3), Device::Cpu).unwrap();
    let ours: Vec<(String, Vec<usize>)> = net.state_dict().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
    assert_eq!(ours, nb201_state_dict(MIXED, 100));
    assert!(ours.iter().any(|(n, _)| n == "cells.16.layers.5.op.1.weight"));

    // Weights move by name: a second net with other draws becomes the first.
    let mut other = Nb201Network::tiny(g, 100, &mut Rng::seed(4), Device::Cpu).unwrap();
    let mut net = net;
    kdscout::nn::eval(&mut other);
    kdscout::nn::eval(&mut net);
    let x = Tensor::randn([1, 3, 32, 32], 0.0, 1.0, &mut Rng::seed(5), Device::Cpu).unwrap();
    assert_ne!(other.forward(&x).unwrap().to_vec().unwrap(), net.forward(&x).unwrap().to_vec().unwrap());
    other.load_state_dict(&net.state_dict(), true).unwrap();
    assert_eq!(other.forward(&x).unwrap().to_vec().unwrap(), net.forward(&x).unwrap().to_vec().unwrap());
}

/// avg_pool 3x3, stride 1, pad 1, count_include_pad=False, on [B, C, H, W] in f64.
fn avg_pool_exclude_pad(x: &[f64], dims: &[usize]) -> Vec<f64> {
    let (b, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
    let mut out = vec![0.0; x.len()];
    for p in 0..b * c {
        for i in 0..h {
            for j in 0..w {
                let (mut s, mut n) = (0.0, 0.0);
                for ii in i.saturating_sub(1)..(i + 2).min(h) {
                    for jj in j.saturating_sub(1)..(j + 2).min(w) {
                        s += x[p * h * w + ii * w + jj];
                        n += 1.0;
                    }
                }
                out[p * h * w + i * w + j] = s / n;
            }
        }
    }
    out
}

#[test]
fn nb201_cell_wires_its_dag_as_the_original() {
    let mut rng = Rng::seed(6);
    let x = Tensor::randn([2, 4, 5, 5], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
    let xv: Vec<f64> = x.to_vec().unwrap().iter().map(|&v| v as f64).collect();
    // node1 = x; node2 = pool(x) + 0·node1; node3 = x + node1 + pool(node2)
    let g =
        Nb201Genotype::parse("|skip_connect~0|+|avg_pool_3x3~0|none~1|+|skip_connect~0|skip_connect~1|avg_pool_3x3~2|")
            .unwrap();
    let cell = Nb201Cell::new(g, 4, &mut rng, Device::Cpu).unwrap();
    let node2 = avg_pool_exclude_pad(&xv, x.dims());
    let pooled2 = avg_pool_exclude_pad(&node2, x.dims());
    let want: Vec<f64> = (0..xv.len()).map(|i| 2.0 * xv[i] + pooled2[i]).collect();
    let got = cell.forward(&x).unwrap().to_vec().unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
    }
    // A cell whose output node only has `none` inputs is zero (and keeps the input's shape).
    let dead = Nb201Cell::new(
        Nb201Genotype::parse(&arch(["nor_conv_3x3", "skip_connect", "nor_conv_1x1", "none", "none", "none"])).unwrap(),
        4,
        &mut rng,
        Device::Cpu,
    )
    .unwrap();
    let y = dead.forward(&x).unwrap();
    assert_eq!(y.dims(), x.dims());
    assert!(y.to_vec().unwrap().iter().all(|v| *v == 0.0));
}

#[test]
fn nb201_features_forward_and_backward() {
    let mut rng = Rng::seed(7);
    let x = Tensor::randn([2, 3, 32, 32], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
    let net = build(&arch(MIXED), 10, &mut rng, Device::Cpu).unwrap();
    let f = net.forward_features(&x).unwrap();
    let dims: Vec<Vec<usize>> = f.stages.iter().map(|t| t.dims().to_vec()).collect();
    assert_eq!(dims, [vec![2, 16, 32, 32], vec![2, 16, 32, 32], vec![2, 32, 16, 16], vec![2, 64, 8, 8]]);
    assert_eq!(f.final_map, 3);
    assert_eq!(f.pooled.dims(), &[2, 64]);
    assert_eq!(f.logits.dims(), &[2, 10]);
    // lastact: the final map is the relu of its preact (the BN output), which has negatives.
    let (post, pre) = (f.final_map().to_vec().unwrap(), f.preact_stages[3].to_vec().unwrap());
    assert!(pre.iter().any(|v| *v < 0.0));
    assert!(post.iter().zip(&pre).all(|(a, b)| *a == b.max(0.0)));
    for i in 0..3 {
        assert_eq!(f.stages[i].to_vec().unwrap(), f.preact_stages[i].to_vec().unwrap());
    }
    // pooled = spatial mean of the final map.
    let m = &post[..64];
    assert!((m.iter().sum::<f32>() / 64.0 - f.pooled.to_vec().unwrap()[0]).abs() < 1e-5);

    let grads = f.logits.cross_entropy(&[1, 8]).unwrap().backward().unwrap();
    for (name, p) in net.named_parameters() {
        let g = grads.of(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(g.to_vec().unwrap().iter().all(|v| v.is_finite()), "{name}");
    }

    // The all-none cell still reaches every parameter (zero gradients through the x·0 cells).
    let net = build(&arch(["none"; 6]), 10, &mut rng, Device::Cpu).unwrap();
    let grads = net.forward(&x).unwrap().cross_entropy(&[1, 8]).unwrap().backward().unwrap();
    for (name, p) in net.named_parameters() {
        assert!(grads.of(&p).is_ok(), "{name} unreached");
    }
}

// ==================================================================== ViT

/// timm ViT parameters for 32x32, patch 4: patch conv + bias, class token, 65 position
/// embeddings; per block 2 LayerNorms, qkv (with bias), proj, fc1, fc2; final norm; head.
fn vit_params(e: usize, heads_ratios: &[(usize, f64)], classes: usize) -> usize {
    let mut p = 3 * 16 * e + e + e + 65 * e;
    for &(_, r) in heads_ratios {
        let h = (e as f64 * r) as usize;
        p += 4 * e + 3 * e * e + 3 * e + e * e + e + e * h + h + h * e + e;
    }
    p + 2 * e + e * classes + classes
}

/// MACs at 32x32: patch conv, and per block qkv, QKᵀ and AV (65²·e each, summed over heads),
/// proj, fc1, fc2 on 65 tokens; the head on the class token.
fn vit_macs(e: usize, heads_ratios: &[(usize, f64)], classes: usize) -> u64 {
    let t = 65;
    let mut m = 64 * e * 3 * 16;
    for &(_, r) in heads_ratios {
        let h = (e as f64 * r) as usize;
        m += t * e * 3 * e + 2 * t * t * e + t * e * e + 2 * t * e * h;
    }
    (m + e * classes) as u64
}

#[test]
fn vit_names_parse_print_and_reject() {
    let c = VitConfig::parse("vit_e192_h3-3-4_r4-4-3.5").unwrap();
    assert_eq!((c.embed_dim, c.heads.clone(), c.mlp_ratios.clone()), (192, vec![3, 3, 4], vec![4.0, 4.0, 3.5]));
    assert_eq!(c.to_string(), "vit_e192_h3-3-4_r4-4-3.5");
    let u = VitConfig::parse("vit_e192_d12_h3_r4").unwrap();
    assert_eq!((u.depth(), u.heads[11], u.mlp_ratios[0]), (12, 3, 4.0));
    assert_eq!(u.to_string(), "vit_e192_d12_h3_r4");
    assert_eq!(VitConfig::parse("vit_e240_h4-4_r3.5-3.5").unwrap().to_string(), "vit_e240_d2_h4_r3.5");
    assert_eq!(VitConfig::parse("vit_e216_d3_h3-4-3_r4").unwrap().to_string(), "vit_e216_h3-4-3_r4-4-4");
    for s in ["vit_e192_h3-3-4_r4-4-3.5", "vit_e192_d12_h3_r4", "vit_e216_h4-3_r3.5-4", "vit_e64_d1_h1_r0.5"] {
        let c: VitConfig = s.parse().unwrap();
        assert_eq!(c.to_string(), s);
        assert_eq!(VitConfig::parse(&c.to_string()).unwrap(), c);
    }
    let cases: &[(&str, &str)] = &[
        ("vit_e190_h4_r4", "divide"),
        ("vit_e192_h3-3_r4", "2 head counts but 1 MLP ratios"),
        ("vit_e192_d2_h3-3-3_r4", "3 heads for depth 2"),
        ("vit_x192_h3_r4", "'x192' should start with 'e'"),
        ("vit_e192_h3_rfour", "'four' is not a number"),
        ("vit_e192_h3_r-1", "is not a number"),
        ("vit_e192_h3_r0", "must be positive"),
        ("vit_e192_h3", "need 3 or 4"),
        ("vit_e0_h1_r4", "embed dim 0"),
        ("vit_e192_d0_h3_r4", "depth 0"),
    ];
    for (s, needle) in cases {
        let msg = VitConfig::parse(s).err().unwrap_or_else(|| panic!("accepted {s}")).to_string();
        assert!(msg.contains(needle) && msg.contains(s), "{s}: {msg}");
        assert!(build(s, 10, &mut Rng::seed(0), Device::Cpu).is_err());
    }
}

#[test]
fn vit_parameter_counts_names_and_macs() {
    type Case = (&'static str, usize, Vec<(usize, f64)>);
    let cases: [Case; 3] = [
        ("vit_e192_h3-3-4_r4-4-3.5", 192, vec![(3, 4.0), (3, 4.0), (4, 3.5)]),
        ("vit_e64_d2_h2_r2", 64, vec![(2, 2.0); 2]),
        ("vit_e216_h3-4_r3.5-4", 216, vec![(3, 3.5), (4, 4.0)]),
    ];
    for (name, e, blocks) in &cases {
        let net = build(name, 100, &mut Rng::seed(0), Device::Cpu).unwrap();
        assert_eq!(net.num_parameters(), vit_params(*e, blocks, 100), "{name}");
        let c = cost(name, 100).unwrap();
        assert_eq!(c.macs, vit_macs(*e, blocks, 100), "{name}");
    }
    // DeiT-Tiny's shape (e192, 12 blocks of 3 heads, ratio 4) at 32x32 with 100 classes: timm's
    // published 5,717,416 (224x224, 1000 classes) minus the 132 extra position embeddings
    // (25,344), the larger patch kernel (138,240) and the larger head (173,700).
    assert_eq!(5_717_416 - 132 * 192 - (256 - 16) * 3 * 192 - 900 * 193, 5_380_132);
    assert_eq!(vit_params(192, &[(3, 4.0); 12], 100), 5_380_132);
    assert_eq!(cost("vit_e192_d12_h3_r4", 100).unwrap().params, 5_380_132);

    let net =
        VisionTransformer::new(&VitConfig::parse("vit_e32_d1_h2_r3").unwrap(), 10, &mut Rng::seed(0), Device::Cpu)
            .unwrap();
    let got: Vec<(String, Vec<usize>)> = net.state_dict().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
    let want: Vec<(String, Vec<usize>)> = [
        ("cls_token", vec![1, 1, 32]),
        ("pos_embed", vec![1, 65, 32]),
        ("patch_embed.proj.weight", vec![32, 3, 4, 4]),
        ("patch_embed.proj.bias", vec![32]),
        ("blocks.0.norm1.weight", vec![32]),
        ("blocks.0.norm1.bias", vec![32]),
        ("blocks.0.attn.qkv.weight", vec![96, 32]),
        ("blocks.0.attn.qkv.bias", vec![96]),
        ("blocks.0.attn.proj.weight", vec![32, 32]),
        ("blocks.0.attn.proj.bias", vec![32]),
        ("blocks.0.norm2.weight", vec![32]),
        ("blocks.0.norm2.bias", vec![32]),
        ("blocks.0.mlp.fc1.weight", vec![96, 32]),
        ("blocks.0.mlp.fc1.bias", vec![96]),
        ("blocks.0.mlp.fc2.weight", vec![32, 96]),
        ("blocks.0.mlp.fc2.bias", vec![32]),
        ("norm.weight", vec![32]),
        ("norm.bias", vec![32]),
        ("head.weight", vec![10, 32]),
        ("head.bias", vec![10]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    assert_eq!(got, want);
    // timm's init: Linear biases zero, small truncated-normal weights and tokens.
    let w = net.head.weight.to_vec().unwrap();
    assert!(w.iter().all(|v| v.abs() <= 2.0) && w.iter().any(|v| *v != 0.0));
    assert!(net.head.bias.as_ref().unwrap().to_vec().unwrap().iter().all(|v| *v == 0.0));
    let pos = net.pos_embed.to_vec().unwrap();
    let std = (pos.iter().map(|v| v * v).sum::<f32>() / pos.len() as f32).sqrt();
    assert!((0.015..0.025).contains(&std), "pos_embed std {std}");
}

#[test]
fn vit_features_forward_and_backward() {
    let mut rng = Rng::seed(8);
    let config = VitConfig::parse("vit_e48_h3-4-2_r2-4-1.5").unwrap();
    let net = VisionTransformer::new(&config, 10, &mut rng, Device::Cpu).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
    let (f, attns) = net.forward_with_attention(&x).unwrap();
    assert_eq!(f.stages.len(), 4);
    for s in &f.stages {
        assert_eq!(s.dims(), &[2, 48, 8, 8]);
    }
    assert_eq!(f.final_map, 3);
    assert_eq!(f.pooled.dims(), &[2, 48]);
    assert_eq!(f.logits.dims(), &[2, 10]);
    let heads: Vec<Vec<usize>> = attns.iter().map(|a| a.dims().to_vec()).collect();
    assert_eq!(heads, [vec![2, 3, 65, 65], vec![2, 4, 65, 65], vec![2, 2, 65, 65]]);

    // Layout: stage 0 is the patch conv's own map; stage 1 holds block 0's patch token
    // 1 + 8·r + c at [.., r, c]; pooled is the normed class token of the last block.
    let conv = net.patch_embed.proj.forward(&x).unwrap().to_vec().unwrap();
    assert_eq!(f.stages[0].to_vec().unwrap(), conv);
    let tokens = net.patch_embed.forward(&x).unwrap();
    let cls = net.cls_token.broadcast_to(&[2, 1, 48].into()).unwrap();
    let mut h = Tensor::concat(&[&cls, &tokens], 1).unwrap().add(&net.pos_embed).unwrap();
    let mut outs = Vec::new();
    for b in net.blocks.layers() {
        h = b.as_any().downcast_ref::<VitBlock>().unwrap().forward(&h).unwrap();
        outs.push(h.to_vec().unwrap());
    }
    let map1 = f.stages[1].to_vec().unwrap();
    for (b, d, r, c) in [(0, 0, 0, 0), (1, 47, 7, 7), (0, 5, 2, 6), (1, 20, 6, 1)] {
        assert_eq!(map1[((b * 48 + d) * 8 + r) * 8 + c], outs[0][(b * 65 + 1 + 8 * r + c) * 48 + d]);
    }
    let normed = net.norm.forward(&h).unwrap().to_vec().unwrap();
    let pooled = f.pooled.to_vec().unwrap();
    assert_eq!(&pooled[..48], &normed[..48]);
    assert_eq!(&pooled[48..], &normed[65 * 48..65 * 48 + 48]);

    let grads = f.logits.cross_entropy(&[0, 9]).unwrap().backward().unwrap();
    for (name, p) in net.named_parameters() {
        let g = grads.of(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        let g = g.to_vec().unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{name}");
        assert!(g.iter().any(|v| *v != 0.0), "{name} has an all-zero gradient");
    }
    let bad = Tensor::zeros([1, 3, 16, 16], Device::Cpu).unwrap();
    assert!(net.forward(&bad).unwrap_err().to_string().contains("[B, 3, 32, 32]"));
}

// ==================================================================== against PyTorch

// Printed by tests/fixtures/nb201_vit_reference.py: eval-mode logits of the same networks
// re-stated in PyTorch, with every state-dict entry filled by `fill` below.
#[allow(clippy::excessive_precision)]
const NB201_LOGITS: [f32; 20] = [
    1.0621964e+03,
    -7.3983905e+02,
    -1.2367927e+03,
    4.4822623e+02,
    1.3421902e+03,
    -1.3213564e+02,
    -1.3732754e+03,
    -1.9120088e+02,
    1.3284840e+03,
    5.0444916e+02,
    2.0933081e+03,
    -1.1700947e+03,
    -2.3692563e+03,
    6.1171643e+02,
    2.5131660e+03,
    -1.9788307e+01,
    -2.5177864e+03,
    -5.7315179e+02,
    2.3830217e+03,
    1.1348091e+03,
];
#[allow(clippy::excessive_precision)]
const VIT_LOGITS: [f32; 20] = [
    -8.3572976e-02,
    -5.2464312e-01,
    -4.5377308e-01,
    1.2168550e-01,
    6.5001273e-01,
    6.1880594e-01,
    9.7959943e-02,
    -3.4033936e-01,
    -2.3799667e-01,
    2.5861329e-01,
    -5.9180312e-02,
    -5.0910199e-01,
    -4.6377814e-01,
    9.6881859e-02,
    6.3705587e-01,
    6.3161463e-01,
    1.2277467e-01,
    -3.3017570e-01,
    -2.5340214e-01,
    2.3418775e-01,
];

/// The script's `pattern`: entry j of the state dict (in order), element k.
fn fill(net: &dyn Module) {
    for (j, (name, t)) in net.state_dict().into_iter().enumerate() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let dims = t.dims().to_vec();
        let (base, amp) = if name.ends_with("running_var") {
            (1.0, 0.5)
        } else if dims.len() == 1 {
            (if name.ends_with("weight") { 1.0 } else { 0.0 }, 0.2)
        } else {
            (0.0, 1.0 / ((t.numel() / dims[0]) as f64).sqrt())
        };
        let v: Vec<f32> =
            (0..t.numel()).map(|k| (base + amp * (0.37 * k as f64 + 1.3 * j as f64).sin()) as f32).collect();
        t.copy_from_slice(&v).unwrap();
    }
}

fn reference_batch() -> Tensor {
    let v: Vec<f32> =
        (0..2 * 3 * 32 * 32).map(|k| ((0.05 * k as f64).sin() + 0.5 * (0.013 * k as f64).cos()) as f32).collect();
    Tensor::from_vec(v, [2, 3, 32, 32], Device::Cpu).unwrap()
}

fn assert_close_to(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 2e-5 * scale + 1e-6, "{what}[{i}]: {a} vs PyTorch {b} (scale {scale})");
    }
    assert_eq!(got.len(), want.len());
}

#[test]
fn nb201_and_vit_logits_match_pytorch() {
    let mut nb = build(&arch(MIXED), 10, &mut Rng::seed(0), Device::Cpu).unwrap();
    fill(nb.as_ref());
    kdscout::nn::eval(nb.as_mut());
    assert_close_to(&nb.forward(&reference_batch()).unwrap().to_vec().unwrap(), &NB201_LOGITS, "nb201");

    let mut vit = build("vit_e48_h3-4-2_r2-4-1.5", 10, &mut Rng::seed(0), Device::Cpu).unwrap();
    fill(vit.as_ref());
    kdscout::nn::eval(vit.as_mut());
    assert_close_to(&vit.forward(&reference_batch()).unwrap().to_vec().unwrap(), &VIT_LOGITS, "vit");
}
