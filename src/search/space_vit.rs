//! The ViT space: AutoFormer-Ti's knobs (METHODS §4.4) on the 32x32, patch-4 ViT of
//! `models::vit`: depth in {12, 13, 14}, one embed dim in {192, 216, 240}, and per block
//! heads in {3, 4} and MLP ratio in {3.5, 4}. Genes: [depth, embed, heads x 14, ratio x 14];
//! the genes of blocks past the depth are inactive and held at 0 (canonical form). Names are
//! `VitConfig`'s (`vit_e192_h3-4-.._r4-3.5-..`, or `vit_e192_d12_h3_r4` when all blocks agree).
//! `layers` = transformer blocks.

use super::space::{other_value, Genome, SearchSpace};
use crate::models::vit::{VitConfig, VIT_GRID, VIT_PATCH};
use crate::models::ModelCost;
use crate::rng::Rng;
use crate::{invalid_err, Result};

pub const VIT_DEPTHS: [usize; 3] = [12, 13, 14];
pub const VIT_EMBEDS: [usize; 3] = [192, 216, 240];
pub const VIT_HEADS: [usize; 2] = [3, 4];
pub const VIT_RATIOS: [f64; 2] = [3.5, 4.0];
const MAX_BLOCKS: usize = 14;

pub struct VitSpace;

impl VitSpace {
    fn depth(g: &Genome) -> usize {
        VIT_DEPTHS[g.0[0] as usize]
    }

    pub fn config(g: &Genome) -> VitConfig {
        let d = Self::depth(g);
        VitConfig {
            embed_dim: VIT_EMBEDS[g.0[1] as usize],
            heads: (0..d).map(|i| VIT_HEADS[g.0[2 + i] as usize]).collect(),
            mlp_ratios: (0..d).map(|i| VIT_RATIOS[g.0[2 + MAX_BLOCKS + i] as usize]).collect(),
        }
    }

    /// Active genes: depth, embed, then heads and ratio of every present block.
    fn active(g: &Genome) -> Vec<usize> {
        let d = Self::depth(g);
        let mut v = vec![0, 1];
        v.extend((0..d).map(|i| 2 + i));
        v.extend((0..d).map(|i| 2 + MAX_BLOCKS + i));
        v
    }

    /// Architectures of each depth: 3 embeds x 4^depth per-block choices.
    fn per_depth(depth: usize) -> u64 {
        VIT_EMBEDS.len() as u64 * 4u64.pow(depth as u32)
    }
}

impl SearchSpace for VitSpace {
    fn id(&self) -> &'static str {
        "vit"
    }
    fn cards(&self) -> Vec<u32> {
        let mut c = vec![VIT_DEPTHS.len() as u32, VIT_EMBEDS.len() as u32];
        c.extend([VIT_HEADS.len() as u32; MAX_BLOCKS]);
        c.extend([VIT_RATIOS.len() as u32; MAX_BLOCKS]);
        c
    }
    fn canonical(&self, mut genes: Vec<u32>) -> Vec<u32> {
        let d = VIT_DEPTHS.get(genes[0] as usize).copied().unwrap_or(MAX_BLOCKS);
        for i in d..MAX_BLOCKS {
            genes[2 + i] = 0;
            genes[2 + MAX_BLOCKS + i] = 0;
        }
        genes
    }
    fn size(&self) -> Option<u64> {
        Some(VIT_DEPTHS.iter().map(|&d| Self::per_depth(d)).sum())
    }
    fn nth(&self, mut i: u64) -> Result<Genome> {
        for (di, &d) in VIT_DEPTHS.iter().enumerate() {
            let n = Self::per_depth(d);
            if i >= n {
                i -= n;
                continue;
            }
            let mut genes = vec![0u32; 2 + 2 * MAX_BLOCKS];
            genes[0] = di as u32;
            // Within a depth: embed most significant, then (heads, ratio) of block 0, 1, ...
            for b in (0..d).rev() {
                genes[2 + MAX_BLOCKS + b] = (i % 2) as u32;
                i /= 2;
                genes[2 + b] = (i % 2) as u32;
                i /= 2;
            }
            genes[1] = i as u32;
            return Ok(Genome(genes));
        }
        invalid_err!("search space", "vit: index out of range 0..{}", self.size().unwrap_or(0))
    }
    fn name(&self, g: &Genome) -> String {
        Self::config(g).to_string()
    }
    fn parse(&self, name: &str) -> Result<Genome> {
        let c = VitConfig::parse(name)?;
        let pick = |choices: &[usize], v: usize, knob: &str| -> Result<u32> {
            match choices.iter().position(|&x| x == v) {
                Some(i) => Ok(i as u32),
                None => {
                    invalid_err!("search space", "'{name}': {knob} {v} is not in the vit space (choices: {choices:?})")
                }
            }
        };
        let mut genes = vec![0u32; 2 + 2 * MAX_BLOCKS];
        genes[0] = pick(&VIT_DEPTHS, c.depth(), "depth")?;
        genes[1] = pick(&VIT_EMBEDS, c.embed_dim, "embed dim")?;
        for (i, (&h, &r)) in c.heads.iter().zip(&c.mlp_ratios).enumerate() {
            genes[2 + i] = pick(&VIT_HEADS, h, "head count")?;
            genes[2 + MAX_BLOCKS + i] = match VIT_RATIOS.iter().position(|&x| x == r) {
                Some(k) => k as u32,
                None => {
                    invalid_err!("search space", "'{name}': MLP ratio {r} is not in the vit space (choices: 3.5, 4)")
                }
            };
        }
        Ok(Genome(genes))
    }
    fn cost(&self, g: &Genome, num_classes: usize) -> ModelCost {
        let c = Self::config(g);
        let d = c.embed_dim;
        let tokens = VIT_GRID * VIT_GRID + 1;
        let patch_in = 3 * VIT_PATCH * VIT_PATCH;
        // patch conv (with bias), class token, position embedding
        let mut params = patch_in * d + d + d + tokens * d;
        let mut macs = (VIT_GRID * VIT_GRID * patch_in * d) as u64;
        for i in 0..c.depth() {
            let h = c.mlp_hidden(i);
            // norm1, qkv, proj, norm2, fc1, fc2
            params += 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * h + h) + (h * d + d);
            // qkv, q·kᵀ and attn·v over all heads, proj, fc1, fc2
            macs += (tokens * (3 * d * d + d * d + 2 * d * h) + 2 * tokens * tokens * d) as u64;
        }
        params += 2 * d + d * num_classes + num_classes;
        macs += (d * num_classes) as u64;
        ModelCost { params, macs }
    }
    fn layers(&self, g: &Genome) -> usize {
        Self::depth(g)
    }
    /// One active gene changed; blocks a deeper network gains get random heads and ratios.
    fn mutate(&self, g: &Genome, rng: &mut Rng) -> Genome {
        let cards = self.cards();
        let active = Self::active(g);
        let k = active[rng.below(active.len())];
        let mut genes = g.0.clone();
        genes[k] = other_value(cards[k], genes[k], rng);
        if k == 0 {
            for i in Self::depth(g)..VIT_DEPTHS[genes[0] as usize] {
                genes[2 + i] = rng.below(2) as u32;
                genes[2 + MAX_BLOCKS + i] = rng.below(2) as u32;
            }
        }
        Genome(self.canonical(genes))
    }
    /// Depth and embed from either parent; each block's heads and ratio from a parent that has
    /// the block (either, when both do).
    fn crossover(&self, a: &Genome, b: &Genome, rng: &mut Rng) -> Genome {
        let mut genes = vec![0u32; 2 + 2 * MAX_BLOCKS];
        genes[0] = if rng.below(2) == 0 { a.0[0] } else { b.0[0] };
        genes[1] = if rng.below(2) == 0 { a.0[1] } else { b.0[1] };
        let (da, db) = (Self::depth(a), Self::depth(b));
        for i in 0..VIT_DEPTHS[genes[0] as usize] {
            let from = match (i < da, i < db) {
                (true, true) => {
                    if rng.below(2) == 0 {
                        a
                    } else {
                        b
                    }
                }
                (true, false) => a,
                _ => b,
            };
            genes[2 + i] = from.0[2 + i];
            genes[2 + MAX_BLOCKS + i] = from.0[2 + MAX_BLOCKS + i];
        }
        Genome(genes)
    }
}
