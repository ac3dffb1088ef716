//! Search spaces. A genome is a vector of choice indices, one per gene (its *encoding*); each
//! space prints a genome as the model name `models::build` accepts (its readable genome
//! string) and parses it back. Sizes (parameters, MACs, depth) come from closed forms of the
//! genome so budgets are checked before anything is built; tests hold them to `models::cost`.
//!
//! Spaces (METHODS §1.6, §4.4):
//! - `nb201`: NAS-Bench-201 cells, 6 edges x 5 ops = 15 625 (`|op~0|+|op~0|op~1|+|...|`).
//! - `resnet_d`: DisWOT's ResNet-20 depth space, blocks per stage in {1,3,5,7} = 64 (`resnet_dXYZ`).
//! - `resnet`: CIFAR ResNets with per-stage depths and widths (`resnet_w16-16-32-64_d3-3-3`);
//!   resnet8..resnet110 and resnet8x4/resnet32x4 are members.
//! - `vit`: the AutoFormer-Ti knobs on a 32x32/patch-4 ViT (see [`super::space_vit`]).

use serde::{Deserialize, Serialize};

use crate::models::nb201::{Nb201Genotype, Nb201Op, EDGES};
use crate::models::ModelCost;
use crate::rng::Rng;
use crate::{invalid_err, Result};

pub use super::space_vit::VitSpace;

/// One architecture of a space: a choice index per gene (canonical: two genomes are equal
/// exactly when they are the same architecture).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Genome(pub Vec<u32>);

pub trait SearchSpace: Send + Sync {
    /// The space's name in configs and records (`nb201`, `resnet_d`, `resnet`, `vit`).
    fn id(&self) -> &'static str;
    /// Number of choices of each gene.
    fn cards(&self) -> Vec<u32>;
    /// The readable genome string: a model name `models::build` accepts.
    fn name(&self, g: &Genome) -> String;
    /// The genome of a model name of this space (errors say why a name is not in it).
    fn parse(&self, name: &str) -> Result<Genome>;
    /// Trainable parameters and MACs of one 32x32 image, from the genome.
    fn cost(&self, g: &Genome, num_classes: usize) -> ModelCost;
    /// The depth measure `max_layers` limits (see each space).
    fn layers(&self, g: &Genome) -> usize;

    /// The canonical form of a gene vector (spaces with inactive genes zero them).
    fn canonical(&self, genes: Vec<u32>) -> Vec<u32> {
        genes
    }
    /// Number of architectures, if it fits in a u64.
    fn size(&self) -> Option<u64> {
        self.cards().iter().try_fold(1u64, |acc, &c| acc.checked_mul(c as u64))
    }
    /// The `i`-th architecture of a fixed enumeration of the space (`0..size`), first gene
    /// most significant.
    fn nth(&self, i: u64) -> Result<Genome> {
        let cards = self.cards();
        match self.size() {
            Some(n) if i < n => Ok(Genome(radix_digits(&cards, i))),
            Some(n) => invalid_err!("search space", "{}: index {i} out of range 0..{n}", self.id()),
            None => invalid_err!("search space", "{} is too large to enumerate", self.id()),
        }
    }
    /// A uniformly drawn architecture.
    fn sample(&self, rng: &mut Rng) -> Genome {
        Genome(self.canonical(self.cards().iter().map(|&c| rng.below(c as usize) as u32).collect()))
    }
    /// A neighbour: one gene changed to another of its values (never equal to `g`).
    fn mutate(&self, g: &Genome, rng: &mut Rng) -> Genome {
        let cards = self.cards();
        let mut genes = g.0.clone();
        let k = rng.below(genes.len());
        genes[k] = other_value(cards[k], genes[k], rng);
        Genome(self.canonical(genes))
    }
    /// Uniform crossover: each gene from either parent.
    fn crossover(&self, a: &Genome, b: &Genome, rng: &mut Rng) -> Genome {
        let genes = a.0.iter().zip(&b.0).map(|(&x, &y)| if rng.below(2) == 0 { x } else { y }).collect();
        Genome(self.canonical(genes))
    }
    /// The numeric encoding (a predictor's or a database's view of the architecture).
    fn encode(&self, g: &Genome) -> Vec<u32> {
        g.0.clone()
    }
    /// The genome of an encoding, checked: right length, values in range, canonical.
    fn decode(&self, genes: &[u32]) -> Result<Genome> {
        let cards = self.cards();
        if genes.len() != cards.len() {
            invalid_err!("search space", "{}: an encoding has {} genes, got {}", self.id(), cards.len(), genes.len());
        }
        if let Some(k) = (0..genes.len()).find(|&k| genes[k] >= cards[k]) {
            invalid_err!("search space", "{}: gene {k} is {}, it must be below {}", self.id(), genes[k], cards[k]);
        }
        if self.canonical(genes.to_vec()) != genes {
            invalid_err!("search space", "{}: {genes:?} is not canonical (inactive genes must be 0)", self.id());
        }
        Ok(Genome(genes.to_vec()))
    }
}

/// The space of that id, or an error listing the ids.
pub fn space_by_id(id: &str) -> Result<Box<dyn SearchSpace>> {
    match id {
        "nb201" => Ok(Box::new(Nb201Space)),
        "resnet_d" => Ok(Box::new(ResNetDepthSpace)),
        "resnet" => Ok(Box::new(ResNetSpace)),
        "vit" => Ok(Box::new(VitSpace)),
        _ => invalid_err!("--space", "unknown search space '{id}': use nb201, resnet_d, resnet or vit"),
    }
}

/// Mixed-radix digits of `i`, first digit most significant.
fn radix_digits(cards: &[u32], mut i: u64) -> Vec<u32> {
    let mut out = vec![0; cards.len()];
    for k in (0..cards.len()).rev() {
        out[k] = (i % cards[k] as u64) as u32;
        i /= cards[k] as u64;
    }
    out
}

/// A value of `0..card` other than `cur`, uniformly.
pub(crate) fn other_value(card: u32, cur: u32, rng: &mut Rng) -> u32 {
    if card < 2 {
        return cur;
    }
    let v = rng.below(card as usize - 1) as u32;
    if v >= cur {
        v + 1
    } else {
        v
    }
}

/// A nearby value of an ordered gene: cur ± 1 or ± 2, uniformly among those in range.
fn step_value(card: u32, cur: u32, rng: &mut Rng) -> u32 {
    let options: Vec<u32> = [-2i64, -1, 1, 2]
        .iter()
        .map(|d| cur as i64 + d)
        .filter(|&v| v >= 0 && v < card as i64)
        .map(|v| v as u32)
        .collect();
    if options.is_empty() {
        cur
    } else {
        options[rng.below(options.len())]
    }
}

/// Position of `v` in `choices`, or an error naming the knob and the allowed values.
fn index_of<T: PartialEq + std::fmt::Display>(choices: &[T], v: T, knob: &str, name: &str) -> Result<u32> {
    match choices.iter().position(|c| *c == v) {
        Some(i) => Ok(i as u32),
        None => {
            let list: Vec<String> = choices.iter().map(|c| c.to_string()).collect();
            invalid_err!("search space", "'{name}': {knob} {v} is not in the space (choices: {})", list.join(", "))
        }
    }
}

// ---------------------------------------------------------------- CIFAR ResNets

/// Parameters and MACs of RepDistiller's CIFAR ResNet with stage widths `f` (stem, stage 1..3)
/// and `blocks` BasicBlocks per stage, on 32x32 inputs (BN: 2 parameters per channel; MACs of
/// convs and the classifier, as `models::cost` counts them).
pub fn resnet_cost(f: [usize; 4], blocks: [usize; 3], classes: usize) -> ModelCost {
    let mut params = 27 * f[0] + 2 * f[0];
    let mut macs = (1024 * 27 * f[0]) as u64;
    let mut inplanes = f[0];
    for (s, (&planes, &n)) in f[1..].iter().zip(&blocks).enumerate() {
        let pixels = [1024u64, 256, 64][s];
        for i in 0..n {
            let stride = if i == 0 && s > 0 { 2 } else { 1 };
            let convs = 9 * inplanes * planes + 9 * planes * planes;
            params += convs + 4 * planes;
            macs += pixels * convs as u64;
            if stride != 1 || inplanes != planes {
                params += inplanes * planes + 2 * planes;
                macs += pixels * (inplanes * planes) as u64;
            }
            inplanes = planes;
        }
    }
    params += f[3] * classes + classes;
    macs += (f[3] * classes) as u64;
    ModelCost { params, macs }
}

/// DisWOT's S1 space: `resnet_dXYZ`, widths 16/16/32/64, X, Y, Z blocks in {1, 3, 5, 7}.
/// `layers` = weight layers on the longest path (2 per block + stem + classifier, as in "resnet20").
pub struct ResNetDepthSpace;

const D_DEPTHS: [usize; 4] = [1, 3, 5, 7];
const D_WIDTHS: [usize; 4] = [16, 16, 32, 64];

impl ResNetDepthSpace {
    fn blocks(g: &Genome) -> [usize; 3] {
        [D_DEPTHS[g.0[0] as usize], D_DEPTHS[g.0[1] as usize], D_DEPTHS[g.0[2] as usize]]
    }
}

impl SearchSpace for ResNetDepthSpace {
    fn id(&self) -> &'static str {
        "resnet_d"
    }
    fn cards(&self) -> Vec<u32> {
        vec![4; 3]
    }
    fn name(&self, g: &Genome) -> String {
        let b = Self::blocks(g);
        format!("resnet_d{}{}{}", b[0], b[1], b[2])
    }
    fn parse(&self, name: &str) -> Result<Genome> {
        let form = "resnet_dXYZ with X, Y, Z in {1,3,5,7} (e.g. resnet_d557)";
        let Some(digits) = name.strip_prefix("resnet_d").filter(|d| d.len() == 3) else {
            invalid_err!("search space", "'{name}' is not in the resnet_d space: write {form}");
        };
        let genes = digits
            .chars()
            .map(|c| {
                let d = c.to_digit(10).map(|d| d as usize).unwrap_or(0);
                index_of(&D_DEPTHS, d, "stage depth", name)
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(Genome(genes))
    }
    fn cost(&self, g: &Genome, num_classes: usize) -> ModelCost {
        resnet_cost(D_WIDTHS, Self::blocks(g), num_classes)
    }
    fn layers(&self, g: &Genome) -> usize {
        2 * Self::blocks(g).iter().sum::<usize>() + 2
    }
}

/// CIFAR ResNets with a width per stage (stem, stage 1..3) and a depth per stage:
/// `resnet_w{f0}-{f1}-{f2}-{f3}_d{n1}-{n2}-{n3}`. resnet20 = `resnet_w16-16-32-64_d3-3-3`,
/// resnet110 = `..._d18-18-18`, resnet8x4 = `resnet_w32-64-128-256_d1-1-1`. Mutation moves one
/// width or depth to a nearby choice (±1 or ±2 places); `layers` as in [`ResNetDepthSpace`].
pub struct ResNetSpace;

/// Width choices of every stage.
pub const RESNET_WIDTHS: [usize; 10] = [8, 16, 24, 32, 48, 64, 96, 128, 192, 256];
/// Block-count choices of every stage (1, 2, 3, 5, 7, 9, 18 give resnet8..resnet110).
pub const RESNET_DEPTHS: [usize; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 18];

impl ResNetSpace {
    fn shape(g: &Genome) -> ([usize; 4], [usize; 3]) {
        let w = |k: usize| RESNET_WIDTHS[g.0[k] as usize];
        let d = |k: usize| RESNET_DEPTHS[g.0[k] as usize];
        ([w(0), w(1), w(2), w(3)], [d(4), d(5), d(6)])
    }
}

impl SearchSpace for ResNetSpace {
    fn id(&self) -> &'static str {
        "resnet"
    }
    fn cards(&self) -> Vec<u32> {
        let (w, d) = (RESNET_WIDTHS.len() as u32, RESNET_DEPTHS.len() as u32);
        vec![w, w, w, w, d, d, d]
    }
    fn name(&self, g: &Genome) -> String {
        let (f, b) = Self::shape(g);
        format!("resnet_w{}-{}-{}-{}_d{}-{}-{}", f[0], f[1], f[2], f[3], b[0], b[1], b[2])
    }
    fn parse(&self, name: &str) -> Result<Genome> {
        let (f, b) = crate::models::parse_resnet_wd(name)?;
        let mut genes = Vec::with_capacity(7);
        for w in f {
            genes.push(index_of(&RESNET_WIDTHS, w, "width", name)?);
        }
        for d in b {
            genes.push(index_of(&RESNET_DEPTHS, d, "stage depth", name)?);
        }
        Ok(Genome(genes))
    }
    fn cost(&self, g: &Genome, num_classes: usize) -> ModelCost {
        let (f, b) = Self::shape(g);
        resnet_cost(f, b, num_classes)
    }
    fn layers(&self, g: &Genome) -> usize {
        2 * Self::shape(g).1.iter().sum::<usize>() + 2
    }
    fn mutate(&self, g: &Genome, rng: &mut Rng) -> Genome {
        let cards = self.cards();
        let mut genes = g.0.clone();
        let k = rng.below(genes.len());
        genes[k] = step_value(cards[k], genes[k], rng);
        Genome(genes)
    }
}

// ---------------------------------------------------------------- NAS-Bench-201

/// NAS-Bench-201 cells in the benchmark's TinyNetwork (C=16, N=5). Gene k = the op on edge k of
/// [`EDGES`] (index into [`Nb201Op::ALL`]); `nth` is `Structure.gen_all`'s order. Mutation is the
/// DisWOT/NB201 one: a random node, a random incoming edge, a different op. `layers` = weight
/// layers on the longest path (stem, 15 cells' longest conv chains, 2 per reduction, classifier).
pub struct Nb201Space;

impl Nb201Space {
    fn genotype(g: &Genome) -> Nb201Genotype {
        let mut ops = [Nb201Op::None; 6];
        for (o, &v) in ops.iter_mut().zip(&g.0) {
            *o = Nb201Op::ALL[v as usize];
        }
        Nb201Genotype::new(ops)
    }

    /// Convs on the longest input-to-output path of a cell (0 when the output is cut off).
    pub fn cell_depth(g: &Nb201Genotype) -> usize {
        let mut dist: [Option<usize>; 4] = [Some(0), None, None, None];
        for to in 1..4 {
            for (k, &(t, from)) in EDGES.iter().enumerate() {
                let op = g.ops[k];
                if t != to || op == Nb201Op::None {
                    continue;
                }
                if let Some(d) = dist[from] {
                    let w = matches!(op, Nb201Op::NorConv1x1 | Nb201Op::NorConv3x3) as usize;
                    dist[to] = Some(dist[to].map_or(d + w, |x| x.max(d + w)));
                }
            }
        }
        dist[3].unwrap_or(0)
    }
}

impl SearchSpace for Nb201Space {
    fn id(&self) -> &'static str {
        "nb201"
    }
    fn cards(&self) -> Vec<u32> {
        vec![5; 6]
    }
    fn name(&self, g: &Genome) -> String {
        Self::genotype(g).to_string()
    }
    fn parse(&self, name: &str) -> Result<Genome> {
        Ok(Genome(Nb201Genotype::parse(name)?.ops.iter().map(|op| op.code() as u32).collect()))
    }
    fn cost(&self, g: &Genome, num_classes: usize) -> ModelCost {
        let geno = Self::genotype(g);
        let mut params = 27 * 16 + 2 * 16;
        let mut macs = 1024u64 * 27 * 16;
        for (s, (c, pixels)) in [(16usize, 1024u64), (32, 256), (64, 64)].into_iter().enumerate() {
            if s > 0 {
                let half = c / 2;
                let convs = 9 * half * c + 9 * c * c + half * c;
                params += convs + 4 * c;
                macs += pixels * convs as u64;
            }
            for op in geno.ops {
                let k2 = match op {
                    Nb201Op::NorConv1x1 => 1,
                    Nb201Op::NorConv3x3 => 9,
                    _ => continue,
                };
                params += 5 * (k2 * c * c + 2 * c);
                macs += 5 * pixels * (k2 * c * c) as u64;
            }
        }
        params += 2 * 64 + 64 * num_classes + num_classes;
        macs += 64 * num_classes as u64;
        ModelCost { params, macs }
    }
    fn layers(&self, g: &Genome) -> usize {
        1 + 15 * Self::cell_depth(&Self::genotype(g)) + 2 * 2 + 1
    }
    fn mutate(&self, g: &Genome, rng: &mut Rng) -> Genome {
        let node = 1 + rng.below(3);
        let from = rng.below(node);
        let k = EDGES.iter().position(|&e| e == (node, from)).expect("every (node, from<node) is an edge");
        let mut genes = g.0.clone();
        genes[k] = other_value(5, genes[k], rng);
        Genome(genes)
    }
}
