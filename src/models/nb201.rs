//! NAS-Bench-201: the cell genotype (its architecture string and the benchmark's index) and the
//! "infer.tiny" network built from it, as D-X-Y/AutoDL-Projects defines them
//! (`models/cell_infers/tiny_network.py`, `cell_infers/cells.py`, `cell_operations.py`,
//! `cell_searchs/genotypes.py`).
//!
//! **Cell.** Four nodes (0 = input, 3 = output) and six edges, written
//! `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`: group `i` lists the edges into node `i + 1`, one per
//! earlier node `j` as `op~j`. Ops: `none` (zero), `skip_connect` (identity), `nor_conv_1x1` and
//! `nor_conv_3x3` (ReLU → Conv(no bias, stride 1, pad k/2) → BN), `avg_pool_3x3` (stride 1,
//! pad 1, `count_include_pad=False`). A node is the sum of its incoming edges.
//!
//! **Network** (C=16, N=5): stem Conv3x3(3→C)+BN; N cells at C; a ResNet reduction block to 2C;
//! N cells at 2C; a reduction block to 4C; N cells at 4C; `lastact` BN+ReLU; global average
//! pooling; `classifier` Linear(4C→K). The original applies no custom initialisation, so every
//! layer keeps PyTorch's default.
//!
//! **State-dict names** are the original's, so NB201 checkpoints load by name: `stem.0.weight`,
//! `stem.1.running_mean`, `cells.0.layers.3.op.1.weight` (cell 0, edge 3, the conv of ReLU-Conv-BN;
//! `op.2.*` is its BN), `cells.5.conv_a.op.1.weight`, `cells.5.downsample.1.weight`,
//! `lastact.0.weight`, `classifier.weight`. `InferCell` keeps one entry of its `layers` list per
//! edge in string order, including parameter-free ones, so `layers.k` is always edge `k` of
//! [`EDGES`]. (The `edges.1<-0` names belong to NB201's *search* cell, a different module.)
//!
//! **Index.** [`Nb201Genotype::index`] is the NAS-Bench-201 API's architecture index
//! (`api.query_index_by_arch`, `api.arch(i)`): the benchmark's `generate_meta_info` enumerates the
//! 15,625 cells with `Structure.gen_all` (edges in string order, ops in the order of
//! `NAS_BENCH_201 = ['none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3']`, the
//! first edge varying slowest) and then applies Python's `random.seed(88); random.shuffle(archs)`.
//! We replay that shuffle with Python's Mersenne Twister, and check it against the three indices
//! the original script asserts (0, 9, 123). The unshuffled enumeration is
//! [`Nb201Genotype::lex_index`].

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::models::{Features, Network};
use crate::module_boilerplate;
use crate::nn::{Activation, AvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Linear, Module, Sequential};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, shape_err, Device, Error, Result};

/// Number of cells in the space (5 ops on 6 edges).
pub const NUM_CELLS: usize = 15_625;

/// The six edges as (to, from), in the order of the architecture string and of `InferCell.layers`.
pub const EDGES: [(usize, usize); 6] = [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)];

/// The expected form, quoted by every parse error.
const FORM: &str =
    "|op~0|+|op~0|op~1|+|op~0|op~1|op~2| with op one of none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3";

/// One edge operation of the NAS-Bench-201 space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Nb201Op {
    None,
    SkipConnect,
    NorConv1x1,
    NorConv3x3,
    AvgPool3x3,
}

impl Nb201Op {
    /// In the order of the original `NAS_BENCH_201` list (which the benchmark's index uses).
    pub const ALL: [Nb201Op; 5] =
        [Nb201Op::None, Nb201Op::SkipConnect, Nb201Op::NorConv1x1, Nb201Op::NorConv3x3, Nb201Op::AvgPool3x3];

    pub fn name(self) -> &'static str {
        match self {
            Nb201Op::None => "none",
            Nb201Op::SkipConnect => "skip_connect",
            Nb201Op::NorConv1x1 => "nor_conv_1x1",
            Nb201Op::NorConv3x3 => "nor_conv_3x3",
            Nb201Op::AvgPool3x3 => "avg_pool_3x3",
        }
    }

    pub fn from_name(name: &str) -> Option<Nb201Op> {
        Nb201Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Position in [`Nb201Op::ALL`].
    pub fn code(self) -> usize {
        self as usize
    }
}

/// A NAS-Bench-201 cell: one op per edge of [`EDGES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nb201Genotype {
    pub ops: [Nb201Op; 6],
}

impl Nb201Genotype {
    pub fn new(ops: [Nb201Op; 6]) -> Nb201Genotype {
        Nb201Genotype { ops }
    }

    /// The op on the edge `to <- from` (None when there is no such edge).
    pub fn op(&self, to: usize, from: usize) -> Option<Nb201Op> {
        EDGES.iter().position(|&e| e == (to, from)).map(|k| self.ops[k])
    }

    /// Parses an architecture string; errors name the offending token, its position (1-based
    /// character column) and the expected form.
    pub fn parse(s: &str) -> Result<Nb201Genotype> {
        let bad = |col: usize, token: &str, why: String| -> Error {
            Error::invalid(
                "nb201",
                format!("bad architecture string {s:?}: {why} at column {col} ({token:?}); expected {FORM}"),
            )
        };
        let groups: Vec<(usize, &str)> = split_with_offsets(s, '+');
        if groups.len() > 3 {
            let (start, extra) = groups[3];
            return Err(bad(column(s, start), extra, "a cell has 3 nodes, this is a 4th '+'-separated group".into()));
        }
        if groups.len() < 3 {
            let (start, last) = groups[groups.len() - 1];
            return Err(bad(
                column(s, start),
                last,
                format!("the string ends after node {}, a cell needs 3 '+'-separated node groups", groups.len()),
            ));
        }
        let mut ops = [Nb201Op::None; 6];
        let mut k = 0;
        for (node, &(start, group)) in groups.iter().enumerate() {
            let col = column(s, start);
            if !group.starts_with('|') || !group.ends_with('|') || group.len() < 2 {
                return Err(bad(col, group, format!("node {} group must start and end with '|'", node + 1)));
            }
            let tokens = split_with_offsets(&group[1..group.len() - 1], '|');
            if tokens.len() != node + 1 {
                return Err(bad(
                    col,
                    group,
                    format!(
                        "node {} has {} incoming edge(s), it needs {} (one from each node 0..{})",
                        node + 1,
                        tokens.len(),
                        node + 1,
                        node
                    ),
                ));
            }
            for (from, &(off, token)) in tokens.iter().enumerate() {
                let col = column(s, start + 1 + off);
                let Some((name, idx)) = token.split_once('~') else {
                    return Err(bad(col, token, "an edge must be written op~j".into()));
                };
                let Some(op) = Nb201Op::from_name(name) else {
                    return Err(bad(col, token, format!("unknown op {name:?}")));
                };
                if idx != from.to_string() {
                    return Err(bad(
                        col,
                        token,
                        format!("edge {} of node {} must come from node {from}, found ~{idx}", from + 1, node + 1),
                    ));
                }
                ops[k] = op;
                k += 1;
            }
        }
        Ok(Nb201Genotype { ops })
    }

    /// Position in `Structure.gen_all`'s enumeration (base 5, first edge most significant).
    pub fn lex_index(&self) -> usize {
        self.ops.iter().fold(0, |acc, op| acc * 5 + op.code())
    }

    pub fn from_lex_index(i: usize) -> Result<Nb201Genotype> {
        if i >= NUM_CELLS {
            invalid_err!(
                "nb201",
                "cell index {i} out of range: NAS-Bench-201 has {NUM_CELLS} cells (0..={})",
                NUM_CELLS - 1
            );
        }
        let mut ops = [Nb201Op::None; 6];
        let mut rest = i;
        for k in (0..6).rev() {
            ops[k] = Nb201Op::ALL[rest % 5];
            rest /= 5;
        }
        Ok(Nb201Genotype { ops })
    }

    /// The NAS-Bench-201 API's index of this cell (see the module docs).
    pub fn index(&self) -> usize {
        api_order().1[self.lex_index()] as usize
    }

    /// The cell with the NAS-Bench-201 API's index `i` (`api.arch(i)`).
    pub fn from_index(i: usize) -> Result<Nb201Genotype> {
        if i >= NUM_CELLS {
            invalid_err!(
                "nb201",
                "cell index {i} out of range: NAS-Bench-201 has {NUM_CELLS} cells (0..={})",
                NUM_CELLS - 1
            );
        }
        Nb201Genotype::from_lex_index(api_order().0[i] as usize)
    }
}

/// 1-based character column of byte offset `byte` in `s`.
fn column(s: &str, byte: usize) -> usize {
    s[..byte].chars().count() + 1
}

/// Pieces of `s` split at `sep`, each with its byte offset.
fn split_with_offsets(s: &str, sep: char) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == sep {
            out.push((start, &s[start..i]));
            start = i + c.len_utf8();
        }
    }
    out.push((start, &s[start..]));
    out
}

impl fmt::Display for Nb201Genotype {
    /// The original's `Structure.tostr()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut k = 0;
        for node in 1..=3 {
            if node > 1 {
                f.write_str("+")?;
            }
            f.write_str("|")?;
            for from in 0..node {
                write!(f, "{}~{from}|", self.ops[k].name())?;
                k += 1;
            }
        }
        Ok(())
    }
}

impl FromStr for Nb201Genotype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Nb201Genotype> {
        Nb201Genotype::parse(s)
    }
}

// ---------------------------------------------------------------- the benchmark's ordering

/// (API index → lex index, lex index → API index), computed once.
fn api_order() -> &'static (Vec<u16>, Vec<u16>) {
    static ORDER: OnceLock<(Vec<u16>, Vec<u16>)> = OnceLock::new();
    ORDER.get_or_init(|| {
        // archs = gen_all(...); random.seed(88); random.shuffle(archs)
        let mut archs: Vec<u16> = (0..NUM_CELLS as u16).collect();
        let mut mt = PyMersenne::seed(88);
        for i in (1..archs.len()).rev() {
            let j = mt.randbelow(i as u32 + 1) as usize;
            archs.swap(i, j);
        }
        let mut inverse = vec![0u16; NUM_CELLS];
        for (api, &lex) in archs.iter().enumerate() {
            inverse[lex as usize] = api as u16;
        }
        (archs, inverse)
    })
}

/// CPython's `random.Random` core (MT19937 seeded with `init_by_array`), just enough to replay
/// `random.seed(n); random.shuffle(list)` for a small non-negative integer `n`.
struct PyMersenne {
    mt: [u32; 624],
    index: usize,
}

impl PyMersenne {
    /// `random.seed(n)`: the integer's 32-bit words (here one) through `init_by_array`.
    fn seed(n: u32) -> PyMersenne {
        let mut mt = [0u32; 624];
        mt[0] = 19_650_218;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        let key = [n];
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..624.max(key.len()) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_664_525)).wrapping_add(key[j]).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..623 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        PyMersenne { mt, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for k in 0..624 {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % 624] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[k] = self.mt[(k + 397) % 624] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `_randbelow_with_getrandbits(n)` for 0 < n < 2^32: rejection sampling on `n.bit_length()` bits.
    fn randbelow(&mut self, n: u32) -> u32 {
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.next_u32() >> (32 - k);
            if r < n {
                return r;
            }
        }
    }
}

// ---------------------------------------------------------------- modules

/// `ReLUConvBN`: `op` = Sequential(ReLU, Conv2d(no bias), BatchNorm2d), so its names are
/// `op.1.weight`, `op.2.weight`, ...
pub struct ReluConvBn {
    op: Sequential,
}

impl ReluConvBn {
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, rng: &mut Rng, dev: Device) -> Result<ReluConvBn> {
        let cfg = Conv2dConfig::default().stride(stride).padding(k / 2).bias(false);
        Ok(ReluConvBn {
            op: Sequential::new()
                .with(Activation::Relu)
                .with(Conv2d::new(cin, cout, k, cfg, rng, dev)?)
                .with(BatchNorm2d::new(cout, dev)?),
        })
    }
}

impl Module for ReluConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // NASWOT hooks modules by type name ("ReLU" in it), so the reference's `ReLUConvBN` is
        // hooked as well as its inner `nn.ReLU`: the same input counted twice.
        crate::tensor::taps::record(crate::tensor::taps::TapKind::ReluModule, x);
        self.op.forward(x)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("op".into(), &self.op)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.op]
    }
    module_boilerplate!();
}

/// The `none` op: zero, no parameters (the cell skips it when summing a node).
pub struct Zero;

impl Module for Zero {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.scale(0.0)
    }
    module_boilerplate!();
}

fn edge_module(op: Nb201Op, c: usize, rng: &mut Rng, dev: Device) -> Result<Box<dyn Module>> {
    Ok(match op {
        Nb201Op::None => Box::new(Zero),
        Nb201Op::SkipConnect => Box::new(Activation::Identity),
        Nb201Op::NorConv1x1 => Box::new(ReluConvBn::new(c, c, 1, 1, rng, dev)?),
        Nb201Op::NorConv3x3 => Box::new(ReluConvBn::new(c, c, 3, 1, rng, dev)?),
        Nb201Op::AvgPool3x3 => Box::new(AvgPool2d { kernel: 3, stride: 1, padding: 1, count_include_pad: false }),
    })
}

/// `InferCell` of a normal (stride 1, C→C) cell: `layers.k` is edge `k` of [`EDGES`].
pub struct Nb201Cell {
    genotype: Nb201Genotype,
    layers: Sequential,
}

impl Nb201Cell {
    pub fn new(genotype: Nb201Genotype, channels: usize, rng: &mut Rng, dev: Device) -> Result<Nb201Cell> {
        let mut layers = Sequential::new();
        for op in genotype.ops {
            layers.push(edge_module(op, channels, rng, dev)?);
        }
        Ok(Nb201Cell { genotype, layers })
    }
}

impl Module for Nb201Cell {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut nodes = vec![x.clone()];
        for to in 1..=3 {
            let mut sum: Option<Tensor> = None;
            for (k, &(t, from)) in EDGES.iter().enumerate() {
                if t != to || self.genotype.ops[k] == Nb201Op::None {
                    continue;
                }
                let y = self.layers.layers()[k].forward(&nodes[from])?;
                sum = Some(match sum {
                    Some(s) => s.add(&y)?,
                    None => y,
                });
            }
            // All incoming edges `none`: the original's sum of x.mul(0) terms.
            nodes.push(match sum {
                Some(s) => s,
                None => nodes[0].scale(0.0)?,
            });
        }
        Ok(nodes.pop().expect("four nodes"))
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("layers".into(), &self.layers)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.layers]
    }
    module_boilerplate!();
}

/// `ResNetBasicblock(inplanes, planes, stride=2)`: ReLUConvBN 3x3/2 → ReLUConvBN 3x3, plus the
/// shortcut AvgPool2x2 → Conv1x1 (no BN, no activation after the sum).
pub struct Nb201Reduction {
    conv_a: ReluConvBn,
    conv_b: ReluConvBn,
    downsample: Sequential,
}

impl Nb201Reduction {
    pub fn new(inplanes: usize, planes: usize, rng: &mut Rng, dev: Device) -> Result<Nb201Reduction> {
        Ok(Nb201Reduction {
            conv_a: ReluConvBn::new(inplanes, planes, 3, 2, rng, dev)?,
            conv_b: ReluConvBn::new(planes, planes, 3, 1, rng, dev)?,
            downsample: Sequential::new().with(AvgPool2d::new(2, 2, 0)).with(Conv2d::new(
                inplanes,
                planes,
                1,
                Conv2dConfig::default().bias(false),
                rng,
                dev,
            )?),
        })
    }
}

impl Module for Nb201Reduction {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv_b.forward(&self.conv_a.forward(x)?)?;
        self.downsample.forward(x)?.add(&y)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("conv_a".into(), &self.conv_a), ("conv_b".into(), &self.conv_b), ("downsample".into(), &self.downsample)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.conv_a, &mut self.conv_b, &mut self.downsample]
    }
    module_boilerplate!();
}

/// NAS-Bench-201's `TinyNetwork(C, N, genotype, num_classes)`.
///
/// Features: `stages` = [stem output (conv+BN, no activation), output of the last cell at C
/// (cell N-1), output of the last cell at 2C (cell 2N), `lastact` output (BN+ReLU of the last
/// cell, the map before pooling)]; `preact_stages` repeats the first three and has the `lastact`
/// BN output before its ReLU last. `final_map` = 3. This is DisWOT's `forward_with_features`
/// list (`cell4`, `cell10`, `lastact`) with the stem in front.
pub struct Nb201Network {
    genotype: Nb201Genotype,
    n: usize,
    stem: Sequential,
    cells: Sequential,
    lastact: Sequential,
    classifier: Linear,
}

impl Nb201Network {
    /// The benchmark's network: C = 16, N = 5.
    pub fn tiny(genotype: Nb201Genotype, num_classes: usize, rng: &mut Rng, dev: Device) -> Result<Nb201Network> {
        Nb201Network::new(genotype, 16, 5, num_classes, rng, dev)
    }

    /// `TinyNetwork(C, N, genotype, num_classes)` for any C and N.
    pub fn new(
        genotype: Nb201Genotype,
        c: usize,
        n: usize,
        num_classes: usize,
        rng: &mut Rng,
        dev: Device,
    ) -> Result<Nb201Network> {
        if c == 0 || n == 0 || num_classes == 0 {
            invalid_err!(
                "nb201",
                "C={c}, N={n} and classes={num_classes} must be positive (the benchmark uses C=16, N=5)"
            );
        }
        let stem = Sequential::new()
            .with(Conv2d::new(3, c, 3, Conv2dConfig::default().padding(1).bias(false), rng, dev)?)
            .with(BatchNorm2d::new(c, dev)?);
        let mut cells = Sequential::new();
        let mut c_prev = c;
        for c_curr in [c, 2 * c, 4 * c] {
            if c_curr != c_prev {
                cells.push(Box::new(Nb201Reduction::new(c_prev, c_curr, rng, dev)?));
            }
            for _ in 0..n {
                cells.push(Box::new(Nb201Cell::new(genotype, c_curr, rng, dev)?));
            }
            c_prev = c_curr;
        }
        let lastact = Sequential::new().with(BatchNorm2d::new(c_prev, dev)?).with(Activation::Relu);
        let classifier = Linear::new(c_prev, num_classes, true, rng, dev)?;
        Ok(Nb201Network { genotype, n, stem, cells, lastact, classifier })
    }

    pub fn genotype(&self) -> &Nb201Genotype {
        &self.genotype
    }
}

impl Network for Nb201Network {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        if x.rank() != 4 || x.dims()[1] != 3 {
            shape_err!("nb201", "expected images [B, 3, H, W], got {}", x.shape());
        }
        let stem = self.stem.forward(x)?;
        let (last_c, last_2c) = (self.n - 1, 2 * self.n);
        let mut stages = vec![stem.clone()];
        let mut h = stem;
        for (i, cell) in self.cells.layers().iter().enumerate() {
            h = cell.forward(&h)?;
            if i == last_c || i == last_2c {
                stages.push(h.clone());
            }
        }
        let pre = self.lastact.layers()[0].forward(&h)?;
        let out = self.lastact.layers()[1].forward(&pre)?;
        let mut preact_stages = stages.clone();
        preact_stages.push(pre);
        stages.push(out);
        let pooled = stages[3].adaptive_avg_pool2d(1, 1)?.flatten_from(1)?;
        let logits = self.classifier.forward(&pooled)?;
        Ok(Features { stages, preact_stages, final_map: 3, head_map: None, pooled, logits })
    }
    fn classifier(&self) -> &Linear {
        &self.classifier
    }
}

impl Module for Nb201Network {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("stem".into(), &self.stem),
            ("cells".into(), &self.cells),
            ("lastact".into(), &self.lastact),
            ("classifier".into(), &self.classifier),
        ]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.stem, &mut self.cells, &mut self.lastact, &mut self.classifier]
    }
    module_boilerplate!();
}
