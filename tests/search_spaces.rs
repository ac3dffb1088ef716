//! Search spaces: every move stays in the space, encodings and names round-trip, enumerations
//! are complete, and the closed-form sizes agree with `models::cost` (which counts the built
//! network's parameters and the MACs its conv/matmul ops perform).

use std::collections::HashSet;

use kdscout::models::{self, Nb201Genotype};
use kdscout::rng::Rng;
use kdscout::search::space::{Nb201Space, ResNetDepthSpace, ResNetSpace, VitSpace};
use kdscout::search::{space_by_id, Constraints, Count, Genome, SearchSpace};

fn check_moves(space: &dyn SearchSpace, draws: usize, seed: u64) {
    let mut rng = Rng::seed(seed);
    let mut prev = space.sample(&mut rng);
    for _ in 0..draws {
        let g = space.sample(&mut rng);
        assert_eq!(space.decode(&space.encode(&g)).unwrap(), g, "{}: encode/decode", space.id());
        let name = space.name(&g);
        assert_eq!(space.parse(&name).unwrap(), g, "{}: name/parse of {name}", space.id());
        let m = space.mutate(&g, &mut rng);
        assert_ne!(m, g, "{}: a mutation must change {name}", space.id());
        space.decode(&m.0).unwrap_or_else(|e| panic!("{}: mutant of {name} left the space: {e}", space.id()));
        let c = space.crossover(&g, &prev, &mut rng);
        space.decode(&c.0).unwrap_or_else(|e| panic!("{}: crossover left the space: {e}", space.id()));
        // Every gene of a child comes from a parent (for spaces without inactive genes).
        if space.id() != "vit" {
            assert!(c.0.iter().zip(g.0.iter().zip(&prev.0)).all(|(x, (a, b))| x == a || x == b));
        }
        assert_eq!(space.crossover(&g, &g, &mut rng), g);
        prev = g;
    }
}

fn check_cost(space: &dyn SearchSpace, g: &Genome, classes: usize) {
    let name = space.name(g);
    let want = models::cost(&name, classes).unwrap();
    assert_eq!(space.cost(g, classes), want, "{}: closed-form cost of {name}", space.id());
}

#[test]
fn nb201_space_moves_enumeration_and_cost() {
    let s = Nb201Space;
    check_moves(&s, 300, 1);
    assert_eq!(s.size(), Some(15_625));
    let names: HashSet<String> = (0..15_625).map(|i| s.name(&s.nth(i).unwrap())).collect();
    assert_eq!(names.len(), 15_625);
    for i in [0u64, 1, 777, 15_624] {
        assert_eq!(s.name(&s.nth(i).unwrap()), Nb201Genotype::from_lex_index(i as usize).unwrap().to_string());
    }
    assert!(s.nth(15_625).is_err());
    let mut rng = Rng::seed(2);
    for _ in 0..4 {
        check_cost(&s, &s.sample(&mut rng), 100);
    }
    let all = |op: &str| format!("|{op}~0|+|{op}~0|{op}~1|+|{op}~0|{op}~1|{op}~2|");
    check_cost(&s, &s.parse(&all("nor_conv_3x3")).unwrap(), 10);
    check_cost(&s, &s.parse(&all("none")).unwrap(), 10);
    // Longest conv chain: 3 convs (0->1->2->3) when all are 3x3; 0 with no conv; cut output = 0.
    assert_eq!(s.layers(&s.parse(&all("nor_conv_3x3")).unwrap()), 1 + 15 * 3 + 4 + 1);
    assert_eq!(s.layers(&s.parse(&all("skip_connect")).unwrap()), 6);
    let g = s.parse("|nor_conv_1x1~0|+|none~0|nor_conv_3x3~1|+|nor_conv_3x3~0|none~1|skip_connect~2|").unwrap();
    assert_eq!(s.layers(&g), 6 + 15 * 2);
    assert!(s.parse("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|").is_err());
}

#[test]
fn nb201_mutation_follows_the_node_then_edge_draw() {
    // Node 1 has one incoming edge, so edge 0 changes in ~1/3 of mutations; each edge of node 3
    // in ~1/9 (DisWOT's mutate: random node, then random incoming edge).
    let s = Nb201Space;
    let mut rng = Rng::seed(3);
    let g = s.nth(0).unwrap();
    let mut hits = [0usize; 6];
    let n = 9000;
    for _ in 0..n {
        let m = s.mutate(&g, &mut rng);
        let k = (0..6).find(|&k| m.0[k] != g.0[k]).unwrap();
        assert_eq!((0..6).filter(|&k| m.0[k] != g.0[k]).count(), 1);
        hits[k] += 1;
    }
    let want = [1.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0];
    for k in 0..6 {
        let p = hits[k] as f64 / n as f64;
        assert!((p - want[k]).abs() < 0.02, "edge {k}: {p} vs {}", want[k]);
    }
}

#[test]
fn resnet_depth_space_is_diswots_64() {
    let s = ResNetDepthSpace;
    check_moves(&s, 100, 4);
    assert_eq!(s.size(), Some(64));
    let names: HashSet<String> = (0..64).map(|i| s.name(&s.nth(i).unwrap())).collect();
    assert_eq!(names.len(), 64);
    assert!(names.contains("resnet_d111") && names.contains("resnet_d777") && names.contains("resnet_d357"));
    for name in ["resnet_d111", "resnet_d357", "resnet_d777"] {
        check_cost(&s, &s.parse(name).unwrap(), 100);
    }
    // resnet_d333 is resnet20: same size as the zoo's network, 20 layers.
    let g = s.parse("resnet_d333").unwrap();
    assert_eq!(s.cost(&g, 100), models::cost("resnet20", 100).unwrap());
    assert_eq!(s.layers(&g), 20);
    for bad in ["resnet_d222", "resnet_d33", "resnet_d3333", "resnet20"] {
        assert!(s.parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn resnet_space_holds_the_zoo_resnets() {
    let s = ResNetSpace;
    check_moves(&s, 300, 5);
    let members = [
        ("resnet8", "resnet_w16-16-32-64_d1-1-1", 8),
        ("resnet14", "resnet_w16-16-32-64_d2-2-2", 14),
        ("resnet20", "resnet_w16-16-32-64_d3-3-3", 20),
        ("resnet32", "resnet_w16-16-32-64_d5-5-5", 32),
        ("resnet44", "resnet_w16-16-32-64_d7-7-7", 44),
        ("resnet56", "resnet_w16-16-32-64_d9-9-9", 56),
        ("resnet110", "resnet_w16-16-32-64_d18-18-18", 110),
        ("resnet8x4", "resnet_w32-64-128-256_d1-1-1", 8),
        ("resnet32x4", "resnet_w32-64-128-256_d5-5-5", 32),
    ];
    for (zoo, name, layers) in members {
        let g = s.parse(name).unwrap();
        assert_eq!(s.name(&g), name);
        assert_eq!(s.cost(&g, 100), models::cost(zoo, 100).unwrap(), "{zoo} = {name}");
        assert_eq!(s.layers(&g), layers);
    }
    let mut rng = Rng::seed(6);
    for _ in 0..3 {
        check_cost(&s, &s.sample(&mut rng), 10);
    }
    // Mutation is local: one gene moves by at most two places.
    for _ in 0..200 {
        let g = s.sample(&mut rng);
        let m = s.mutate(&g, &mut rng);
        let moved: Vec<i64> = g.0.iter().zip(&m.0).map(|(&a, &b)| b as i64 - a as i64).filter(|d| *d != 0).collect();
        assert!(moved.len() == 1 && moved[0].abs() <= 2, "{moved:?}");
    }
    let e = s.parse("resnet_w17-16-32-64_d3-3-3").unwrap_err().to_string();
    assert!(e.contains("width 17"), "{e}");
    assert!(s.parse("resnet_w16-16-32_d3-3-3").is_err());
    assert!(models::build("resnet_w16-16-32-64_d0-3-3", 10, &mut Rng::seed(0), kdscout::Device::Cpu).is_err());
}

#[test]
fn vit_space_has_autoformer_ti_knobs() {
    let s = VitSpace;
    check_moves(&s, 150, 7);
    let per = |d: u32| 3 * 4u64.pow(d);
    assert_eq!(s.size(), Some(per(12) + per(13) + per(14)));
    let mut seen = HashSet::new();
    for i in [0, 1, 2, 3, per(12) - 1, per(12), per(12) + per(13), s.size().unwrap() - 1] {
        let g = s.nth(i).unwrap();
        s.decode(&g.0).unwrap();
        assert!(seen.insert(g));
    }
    assert!(s.nth(s.size().unwrap()).is_err());
    assert_eq!(s.name(&s.nth(0).unwrap()), "vit_e192_d12_h3_r3.5");
    assert_eq!(s.name(&s.nth(s.size().unwrap() - 1).unwrap()), "vit_e240_d14_h4_r4");
    // Sizes as AutoFormer-Ti's constraint expects (4M..10M parameters).
    for g in [s.nth(0).unwrap(), s.nth(s.size().unwrap() - 1).unwrap()] {
        check_cost(&s, &g, 100);
        let p = s.cost(&g, 100).params;
        assert!((4_000_000..10_000_000).contains(&p), "{p}");
    }
    let mut rng = Rng::seed(8);
    check_cost(&s, &s.sample(&mut rng), 10);
    // Inactive genes stay canonical after moves, so one architecture has one genome.
    for _ in 0..100 {
        let g = s.sample(&mut rng);
        assert_eq!(s.layers(&g), [12, 13, 14][g.0[0] as usize]);
        let mut junk = g.0.clone();
        if g.0[0] < 2 {
            *junk.last_mut().unwrap() = 1;
            assert!(s.decode(&junk).is_err());
        }
    }
    for bad in ["vit_e192_d11_h3_r4", "vit_e200_d12_h4_r4", "vit_e192_d12_h6_r4", "vit_e192_d12_h3_r3"] {
        assert!(s.parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn constraints_reject_exactly_the_candidates_over_budget() {
    let mut rng = Rng::seed(9);
    for id in ["nb201", "resnet_d", "resnet", "vit"] {
        let s = space_by_id(id).unwrap();
        let gs: Vec<Genome> = (0..40).map(|_| s.sample(&mut rng)).collect();
        let mut params: Vec<usize> = gs.iter().map(|g| s.cost(g, 100).params).collect();
        params.sort();
        let limit = params[params.len() / 2];
        let mut flops: Vec<u64> = gs.iter().map(|g| s.cost(g, 100).macs).collect();
        flops.sort();
        let c = Constraints {
            max_params: Count(limit as u64),
            max_flops: Count(flops[flops.len() * 3 / 4]),
            max_layers: 0,
        };
        for g in &gs {
            let k = c.check(s.as_ref(), g, 100);
            let fits = k.cost.params <= limit && k.cost.macs <= c.max_flops.0;
            assert_eq!(k.violation.is_none(), fits, "{id}: {} {:?}", s.name(g), k);
        }
        let layers = Constraints { max_layers: s.layers(&gs[0]), ..Default::default() };
        assert!(layers.check(s.as_ref(), &gs[0], 100).violation.is_none());
        let tight = Constraints { max_layers: s.layers(&gs[0]) - 1, ..Default::default() };
        assert!(tight.check(s.as_ref(), &gs[0], 100).violation.unwrap().contains("max_layers"));
    }
    assert!(space_by_id("nb301").err().unwrap().to_string().contains("nb201"));
}
