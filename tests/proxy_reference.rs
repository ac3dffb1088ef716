//! Zero-cost proxies against PyTorch. `fixtures/proxy_reference.json` holds what
//! `fixtures/proxy_reference.py` computed (zero-cost-nas / NASWOT semantics, train-mode batchnorm,
//! grasp by double backward) on weights and batches that kdscout wrote from the seeds listed in
//! [`CASES`]; these tests rebuild the same inputs from the seeds, check them against the
//! checksums PyTorch recorded, and recompute every proxy. To regenerate the fixture:
//!
//! ```text
//! KDSCOUT_PROXY_REF_DIR=/tmp/proxy_ref cargo test --test proxy_reference -- --ignored write_reference_inputs
//! python3 tests/fixtures/proxy_reference.py /tmp/proxy_ref tests/fixtures/proxy_reference.json
//! ```
//!
//! Beside the fixtures, structural invariants that need no reference: every proxy scores 200
//! random NB201 cells, and a conv on an edge that reaches nothing scores like `none`.

use std::collections::BTreeMap;

use kdscout::models::{Nb201Genotype, Nb201Op, Network};
use kdscout::proxy::{self, run, Candidate, InitMode, ScoringContext};
use kdscout::rng::Rng;
use kdscout::{Device, Result, Tensor};
use serde_json::Value;

const DEV: Device = Device::Cpu;
const CLASSES: usize = 10;

/// (case name, model, weight seed, batch, image side, data seed).
const CASES: [(&str, &str, u64, usize, usize, u64); 11] = [
    ("nb201_all_none", "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", 11, 8, 16, 1),
    (
        "nb201_all_skip",
        "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
        12,
        8,
        16,
        2,
    ),
    (
        "nb201_all_3x3",
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
        13,
        8,
        16,
        3,
    ),
    (
        "nb201_all_pool",
        "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|",
        14,
        8,
        16,
        4,
    ),
    (
        "nb201_mixed",
        "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
        15,
        8,
        16,
        5,
    ),
    ("nb201_dead_end", "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|", 16, 8, 16, 6),
    ("nb201_dead_pair", "|nor_conv_1x1~0|+|nor_conv_3x3~0|none~1|+|avg_pool_3x3~0|none~1|none~2|", 17, 8, 16, 7),
    (
        "nb201_deep",
        "|nor_conv_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|",
        18,
        8,
        16,
        8,
    ),
    ("resnet8", "resnet8", 19, 8, 32, 9),
    ("resnet20", "resnet20", 21, 8, 32, 11),
    ("vit", "vit_e48_h3-4-2_r2-4-1.5", 20, 8, 32, 10),
];

/// The proxies the fixture holds, with the relative tolerance of each comparison against
/// PyTorch's f32 result; the gradient proxies are also compared with PyTorch's f64 result.
const PROXIES: [(&str, f64); 9] = [
    ("grad_norm", 1e-4),
    ("snip", 1e-4),
    ("grasp", 1e-3),
    ("fisher", 1e-4),
    ("jacob_cov", 1e-4),
    ("plain", 1e-4),
    ("synflow", 1e-4),
    ("nwot", 1e-4),
    ("l2_norm", 1e-4),
];

fn candidate(model: &str, seed: u64) -> Candidate {
    Candidate { name: model.into(), num_classes: CLASSES, seed, init: InitMode::Default, device: DEV }
}

fn batch(b: usize, hw: usize, seed: u64) -> ScoringContext {
    let mut rng = Rng::seed(seed);
    let images = Tensor::randn([b, 3, hw, hw], 0.0, 1.0, &mut rng, DEV).unwrap();
    let labels = (0..b).map(|_| rng.below(CLASSES) as u32).collect();
    ScoringContext { images, labels, teacher: None, seed }
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().into_iter().map(f64::from).collect()
}

/// Writes each case's weights and batch (and `cases.json`) for the PyTorch script.
#[test]
#[ignore = "writes the inputs of tests/fixtures/proxy_reference.py; run by hand to regenerate the fixture"]
fn write_reference_inputs() {
    let root = std::path::PathBuf::from(std::env::var("KDSCOUT_PROXY_REF_DIR").unwrap_or("/tmp/proxy_ref".into()));
    let mut list = Vec::new();
    for (name, model, seed, b, hw, data_seed) in CASES {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let net = candidate(model, seed).build().unwrap();
        kdscout::weights::save_module(dir.join("weights.safetensors"), net.as_ref(), model, CLASSES).unwrap();
        let ctx = batch(b, hw, data_seed);
        let labels = Tensor::from_vec(ctx.labels.iter().map(|&l| l as f32).collect(), [b], DEV).unwrap();
        let tensors = [("images".to_string(), ctx.images.clone()), ("labels".to_string(), labels)];
        kdscout::weights::save(dir.join("batch.safetensors"), &tensors, &BTreeMap::new()).unwrap();
        list.push(serde_json::json!({
            "name": name, "model": model, "seed": seed, "classes": CLASSES, "batch": b, "hw": hw, "data_seed": data_seed,
        }));
    }
    std::fs::write(root.join("cases.json"), serde_json::to_string_pretty(&list).unwrap()).unwrap();
}

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/proxy_reference.json")).expect("fixtures/proxy_reference.json parses")
}

fn fixture_case<'a>(fx: &'a Value, name: &str) -> &'a Value {
    fx["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| {
        panic!("case {name} is not in fixtures/proxy_reference.json: regenerate it (see this file's docs)")
    })
}

/// The inputs PyTorch read are the ones rebuilt here (else the zoo's initialisation or the data
/// generator changed, and the fixture must be regenerated rather than the proxies blamed).
fn check_inputs(case: &Value, net: &dyn Network, ctx: &ScoringContext) {
    let name = case["name"].as_str().unwrap();
    let sum_abs: f64 = net.state_dict().iter().flat_map(|(_, t)| f64s(t)).map(f64::abs).sum();
    let want = case["weights_sum_abs"].as_f64().unwrap();
    assert!(
        (sum_abs - want).abs() <= 1e-9 * want,
        "{name}: rebuilt weights differ from the fixture's (Σ|w| {sum_abs} vs {want}): regenerate the fixture"
    );
    let sq: f64 = f64s(&ctx.images).iter().map(|v| v * v).sum();
    let want = case["images_sum_sq"].as_f64().unwrap();
    assert!((sq - want).abs() <= 1e-9 * want, "{name}: rebuilt batch differs (Σx² {sq} vs {want})");
    let labels: Vec<u32> = case["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(labels, ctx.labels, "{name}: rebuilt labels differ");
}

/// |a − b| / |b|, and 0 where both are zero (the all-`none` cell's gradients are exact zeros).
fn relative(a: f64, b: f64) -> f64 {
    if (a - b).abs() <= 1e-300 {
        0.0
    } else {
        (a - b).abs() / b.abs()
    }
}

/// max relative error per proxy over the cases of `names`, printed as a table.
fn compare(names: &[&str]) {
    let fx = fixture();
    // Per proxy: the largest relative error against PyTorch f32 and against PyTorch f64 (None
    // where the fixture has no f64 value).
    let mut worst: BTreeMap<&str, (f64, Option<f64>)> = BTreeMap::new();
    let mut failures = Vec::new();
    for &name in names {
        let &(_, model, seed, b, hw, data_seed) = CASES.iter().find(|c| c.0 == name).unwrap();
        let case = fixture_case(&fx, name);
        let cand = candidate(model, seed);
        let ctx = batch(b, hw, data_seed);
        check_inputs(case, cand.build().unwrap().as_ref(), &ctx);
        let proxies: Vec<_> = PROXIES.iter().map(|(p, _)| proxy::by_name(p).unwrap()).collect();
        let record = run::score_candidate(&ctx, &cand, &proxies);
        for (p, rtol) in PROXIES {
            let got = &record.scores[p];
            let want = case["expected"][p].as_f64();
            let want64 = case["expected_f64"][p].as_f64();
            match (want, got.score) {
                (Some(w), Some(g)) => {
                    // Where PyTorch's own f32 result is further than `rtol` from its f64 one
                    // (an ill-conditioned case: the all-3x3 cell's gradients are 3e-4 apart), no
                    // f32 implementation can be asked for more than that spread.
                    let spread = want64.map_or(0.0, |w64| relative(w, w64));
                    let tol = rtol.max(2.0 * spread);
                    let rel = relative(g, w);
                    let e = worst.entry(p).or_insert((0.0, None));
                    e.0 = e.0.max(rel);
                    if rel > tol {
                        failures.push(format!(
                            "{name} {p}: kdscout {g} vs PyTorch {w} (relative error {rel:.2e} > {tol:.1e})"
                        ));
                    }
                    if let Some(w64) = want64 {
                        let rel64 = relative(g, w64);
                        e.1 = Some(e.1.unwrap_or(0.0).max(rel64));
                        // grasp is computed in f64 here, so it must meet PyTorch's f64 double
                        // backward to 1e-4 whatever the conditioning.
                        let tol64 = if p == "grasp" { 1e-4 } else { tol };
                        if rel64 > tol64 {
                            failures.push(format!(
                                "{name} {p}: kdscout {g} vs PyTorch f64 {w64} (relative error {rel64:.2e} > {tol64:.1e})"
                            ));
                        }
                    }
                    if tol > rtol {
                        eprintln!("{name} {p}: PyTorch f32 is {spread:.1e} from its f64 value, tolerance widened to {tol:.1e}");
                    }
                }
                // PyTorch's value is not finite (NaN or -inf): kdscout must not report a number.
                (None, None) => {}
                (w, g) => failures.push(format!("{name} {p}: kdscout {g:?} ({}) vs PyTorch {w:?}", got.status)),
            }
        }
        let hooks = case["relu_hooks"].as_u64().unwrap() as f64;
        if hooks > 0.0 {
            let taps = record.scores["nwot"].terms.get("relu_modules").copied();
            if taps != Some(hooks) {
                failures.push(format!("{name} nwot: {taps:?} ReLU modules tapped, NASWOT hooks {hooks}"));
            }
        } else if record.scores["nwot"].status != "error" {
            failures.push(format!("{name} nwot: no ReLU module to hook, but status {}", record.scores["nwot"].status));
        }
    }
    for (p, (e32, e64)) in &worst {
        let e64 = e64.map_or("-".to_string(), |e| format!("{e:.2e}"));
        eprintln!("{p:<10} max relative error vs PyTorch f32 {e32:.2e}, vs PyTorch f64 {e64} over {names:?}");
    }
    assert!(failures.is_empty(), "proxies differ from PyTorch:\n{}", failures.join("\n"));
}

#[test]
fn nb201_cells_match_pytorch() {
    compare(&[
        "nb201_all_none",
        "nb201_all_skip",
        "nb201_all_3x3",
        "nb201_all_pool",
        "nb201_mixed",
        "nb201_dead_end",
        "nb201_dead_pair",
        "nb201_deep",
    ]);
}

#[test]
fn cifar_resnets_match_pytorch() {
    compare(&["resnet8", "resnet20"]);
}

#[test]
fn vit_matches_pytorch() {
    compare(&["vit"]);
}

// ---------------------------------------------------------------------------- invariants

/// Does node 3 depend on node 0 through non-`none` edges?
fn output_reaches_input(g: &Nb201Genotype) -> bool {
    let mut live = [true, false, false, false];
    for (k, &(to, from)) in kdscout::models::nb201::EDGES.iter().enumerate() {
        if g.ops[k] != Nb201Op::None && live[from] {
            live[to] = true;
        }
    }
    live[3]
}

/// Every proxy that needs no teacher scores 200 seeded random cells with status ok, except where
/// the definition has no value: a cell whose output does not depend on its input maps every
/// image to the same logits (jacob_cov's correlations and nwot's K are then singular, Zen-score's
/// perturbation changes nothing). Cells are split over the available cores.
#[test]
fn every_proxy_scores_200_random_nb201_cells() {
    let mut rng = Rng::seed(2024);
    let cells: Vec<(u64, Nb201Genotype)> = (0..200)
        .map(|i| (1000 + i, Nb201Genotype::from_lex_index(rng.below(kdscout::models::nb201::NUM_CELLS)).unwrap()))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = cells
            .chunks(cells.len().div_ceil(threads))
            .map(|chunk| {
                s.spawn(move || {
                    let proxies: Vec<_> = proxy::registry().into_iter().filter(|p| !p.info().needs_teacher).collect();
                    let ctx = batch(4, 8, 99);
                    let mut failures = Vec::new();
                    for (seed, g) in chunk {
                        let record = run::score_candidate(&ctx, &candidate(&g.to_string(), *seed), &proxies);
                        let connected = output_reaches_input(g);
                        for (p, o) in &record.scores {
                            let undefined = !connected && matches!(p.as_str(), "jacob_cov" | "nwot" | "zen");
                            if o.status != "ok" && !undefined {
                                failures.push(format!("{g} {p}: {} {:?}", o.status, o.error));
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// A conv on an edge that reaches nothing has zero gradients, so every gradient proxy scores the
/// cell exactly as the same cell with `none` there and the other weights equal; l2_norm still
/// counts its weights and nwot its ReLU (PyTorch runs it and hooks it), so both differ.
#[test]
fn a_dead_conv_scores_like_none() {
    let dead = "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|";
    let with_none = dead.replace("nor_conv_3x3~0", "none~0");
    let ctx = batch(6, 16, 5);
    let build_dead = || candidate(dead, 7).build();
    // The `none` cell with the dead cell's weights (its parameters are a subset, by name).
    let build_none = || -> Result<Box<dyn Network>> {
        let net = candidate(&with_none, 7).build()?;
        let src: BTreeMap<String, Tensor> = build_dead()?.state_dict().into_iter().collect();
        for (name, t) in net.state_dict() {
            t.copy_from_slice(&src[&name].to_vec()?)?;
        }
        Ok(net)
    };
    for p in ["grad_norm", "snip", "grasp", "fisher", "plain", "jacob_cov", "synflow", "l2_norm", "nwot"] {
        let proxy = proxy::by_name(p).unwrap();
        let a = proxy.score(&ctx, &build_dead).unwrap().value;
        let b = proxy.score(&ctx, &build_none).unwrap().value;
        let same = (a - b).abs() <= 1e-12 * b.abs().max(1e-30);
        let differs = p == "l2_norm" || p == "nwot";
        assert!(
            same != differs,
            "{p}: dead conv {a} vs none {b} (should {}be equal)",
            if differs { "not " } else { "" }
        );
    }
}

/// jacob_cov, nwot and SP compare the images of a batch: at batch 1 they would be constants
/// (nwot's K is then the unit count, whatever the weights).
#[test]
fn pair_proxies_refuse_a_batch_of_one() {
    let ctx = batch(1, 16, 3);
    let cand = candidate("resnet8", 1);
    let build = || cand.build();
    for p in ["jacob_cov", "nwot"] {
        let err = proxy::by_name(p).unwrap().score(&ctx, &build).unwrap_err().to_string();
        assert!(err.contains("at least 2 images"), "{err}");
    }
    let teacher_net = candidate("resnet8", 2).build().unwrap();
    let teacher = proxy::TeacherView::compute(teacher_net.as_ref(), "resnet8", &ctx.images, &ctx.labels).unwrap();
    let ctx = ScoringContext { teacher: Some(teacher), ..ctx };
    let err = proxy::by_name("sp").unwrap().score(&ctx, &build).unwrap_err().to_string();
    assert!(err.contains("at least 2 images"), "{err}");
    let record = run::score_candidate(&ctx, &cand, &[proxy::by_name("jacob_cov").unwrap()]);
    assert_eq!(record.scores["jacob_cov"].status, "error");
    assert_eq!(record.scores["jacob_cov"].score, None);
}

/// nwot's hooks per model equal the modules NASWOT hooks in the reference code (type name
/// containing "ReLU", counted in RepDistiller's models/*.py, AutoDL's NB201 and timm's ViT):
/// `F.relu` is never hooked.
#[test]
fn nwot_hooks_the_reference_relu_modules() {
    let cases: [(&str, usize); 12] = [
        // stem relu + bn1 relu of each BasicBlock (its final relu is F.relu)
        ("resnet8", 1 + 3),
        ("resnet20", 1 + 9),
        ("resnet32x4", 1 + 15),
        // relu1 and relu2 of each block, the final relu
        ("wrn_16_1", 2 * 6 + 1),
        // every conv-bn-relu of a block but the last (F.relu after each block)
        ("vgg8", 0),
        ("vgg13", 5),
        // conv1, two per inverted residual (17 of them), conv2
        ("MobileNetV2", 1 + 2 * 17 + 1),
        // all F.relu
        ("ShuffleV1", 0),
        ("ShuffleV2", 0),
        ("ResNet50", 0),
        // per conv edge of 15 cells and two per reduction block: the `ReLUConvBN` module and
        // its `nn.ReLU` (NASWOT selects by type name); lastact
        (
            "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
            2 * (15 * 3 + 4) + 1,
        ),
        ("vit_e48_d2_h3_r2", 0),
    ];
    let ctx = batch(2, 32, 4);
    let nwot = proxy::by_name("nwot").unwrap();
    for (model, want) in cases {
        let cand = candidate(model, 3);
        let got = nwot.score(&ctx, &|| cand.build());
        match got {
            Ok(s) => assert_eq!(s.terms, vec![("relu_modules".to_string(), want as f64)], "{model}"),
            Err(e) => {
                assert_eq!(want, 0, "{model}: {e}");
                assert!(e.to_string().contains("no ReLU module"), "{model}: {e}");
            }
        }
    }
}
