//! A small Vision Transformer for 32x32 images: the AutoFormer-style space TVT searches
//! (METHODS §4.4: one embed dim per net, per-layer heads and MLP ratio, depth), scaled from
//! 224x224/patch 16 to 32x32/patch 4 (an 8x8 grid of 64 patch tokens plus a class token).
//!
//! Structure and parameter names follow timm's `VisionTransformer`: `cls_token` [1, 1, D],
//! `pos_embed` [1, 65, D], `patch_embed.proj` (Conv 4x4 stride 4, with bias), pre-norm blocks
//! `blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}` (qkv with bias as in
//! AutoFormer; head dim D / heads; MLP hidden `int(D · ratio)`, exact GELU), final `norm`, and
//! `head` on the normed class token. LayerNorm eps 1e-6. Initialisation as timm/AutoFormer:
//! Linear weights trunc_normal(std 0.02), biases 0, tokens trunc_normal(0.02), LayerNorm 1/0,
//! the patch conv keeps PyTorch's default. No dropout or drop-path (these are training
//! regularisers; scoring and the shapes do not depend on them).
//!
//! Names: `vit_e{D}_h{h1-h2-..}_r{r1-r2-..}` lists heads and MLP ratio per block (depth = list
//! length), e.g. `vit_e192_h3-3-4_r4-4-3.5`; when every block is alike the short form
//! `vit_e{D}_d{depth}_h{h}_r{r}` is used, e.g. `vit_e192_d12_h3_r4`. Both parse; [`VitConfig`]'s
//! `Display` prints the short form when it applies and the lists otherwise.
//!
//! Features: `stages` = [patch embedding output, then every block's output], each the 64 patch
//! tokens laid out as [B, D, 8, 8] (class token dropped, token t at row t / 8, column t % 8, as
//! TVT's feature hook does); no stage has an activation after it, so `preact_stages` repeats
//! them. `final_map` = the last block's map (before the final norm). `pooled` = the normed class
//! token.

use std::fmt;
use std::str::FromStr;

use crate::models::{Features, Network};
use crate::module_boilerplate;
use crate::nn::init::trunc_normal_;
use crate::nn::{
    Conv2d, Conv2dConfig, Init, LayerNorm, Linear, LocalTensor, Module, MultiHeadSelfAttention, Sequential,
};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, shape_err, Device, Error, Result};

/// Input side length.
pub const VIT_IMAGE: usize = 32;
/// Patch side length.
pub const VIT_PATCH: usize = 4;
/// Patches per side (8).
pub const VIT_GRID: usize = VIT_IMAGE / VIT_PATCH;
const LN_EPS: f32 = 1e-6;
const MAX_EMBED: usize = 4096;
const MAX_DEPTH: usize = 64;

/// One ViT of the space: embed dim, and per block the number of heads and the MLP ratio.
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    pub embed_dim: usize,
    pub heads: Vec<usize>,
    pub mlp_ratios: Vec<f64>,
}

impl VitConfig {
    /// Checks the config (depth ≥ 1, heads divide the embed dim, ratios positive, sizes sane).
    pub fn new(embed_dim: usize, heads: Vec<usize>, mlp_ratios: Vec<f64>) -> Result<VitConfig> {
        let c = VitConfig { embed_dim, heads, mlp_ratios };
        c.validate(&c.to_string())?;
        Ok(c)
    }

    /// Every block alike.
    pub fn uniform(embed_dim: usize, depth: usize, heads: usize, mlp_ratio: f64) -> Result<VitConfig> {
        VitConfig::new(embed_dim, vec![heads; depth], vec![mlp_ratio; depth])
    }

    pub fn depth(&self) -> usize {
        self.heads.len()
    }

    /// MLP hidden width of block `i`: `int(embed_dim * mlp_ratio)`, as timm and AutoFormer compute it.
    pub fn mlp_hidden(&self, i: usize) -> usize {
        (self.embed_dim as f64 * self.mlp_ratios[i]) as usize
    }

    /// Errors quote `name` (what the user typed, or the config's own name).
    fn validate(&self, name: &str) -> Result<()> {
        let e = self.embed_dim;
        if e == 0 || e > MAX_EMBED {
            invalid_err!("vit", "'{name}': embed dim {e} must be in 1..={MAX_EMBED}");
        }
        let d = self.depth();
        if d == 0 || d > MAX_DEPTH || self.mlp_ratios.len() != d {
            invalid_err!(
                "vit",
                "'{name}': need one head count and one MLP ratio per block (1..={MAX_DEPTH} blocks), got {} and {}",
                d,
                self.mlp_ratios.len()
            );
        }
        for (i, &h) in self.heads.iter().enumerate() {
            if h == 0 || !e.is_multiple_of(h) {
                invalid_err!("vit", "'{name}': block {i} has {h} heads, which must divide the embed dim {e}");
            }
        }
        for (i, &r) in self.mlp_ratios.iter().enumerate() {
            if !r.is_finite() || r <= 0.0 || r > 64.0 || self.mlp_hidden(i) == 0 {
                invalid_err!(
                    "vit",
                    "'{name}': block {i} MLP ratio {r} must be positive (at most 64) and give a hidden width >= 1"
                );
            }
        }
        Ok(())
    }

    /// Parses `vit_e192_h3-3-4_r4-4-3.5` or `vit_e192_d12_h3_r4` (see the module docs).
    pub fn parse(name: &str) -> Result<VitConfig> {
        const FORM: &str =
            "vit_e{embed}_h{heads per block, '-'-separated}_r{MLP ratios per block} (e.g. vit_e192_h3-3-4_r4-4-3.5) or vit_e{embed}_d{depth}_h{heads}_r{ratio} (e.g. vit_e192_d12_h3_r4)";
        let bad = |what: String| Error::invalid("vit", format!("bad ViT name '{name}': {what}; expected {FORM}"));
        let Some(rest) = name.strip_prefix("vit_") else { return Err(bad("it must start with 'vit_'".into())) };
        let parts: Vec<&str> = rest.split('_').collect();
        let (e, d, h, r) = match parts.as_slice() {
            [e, h, r] => (*e, None, *h, *r),
            [e, d, h, r] => (*e, Some(*d), *h, *r),
            _ => return Err(bad(format!("{} '_'-separated fields after 'vit_', need 3 or 4", parts.len()))),
        };
        let field = |part: &str, prefix: char| -> Result<String> {
            part.strip_prefix(prefix)
                .map(str::to_string)
                .ok_or_else(|| bad(format!("field '{part}' should start with '{prefix}'")))
        };
        let int = |text: &str, what: &str| -> Result<usize> {
            text.parse::<usize>().map_err(|_| bad(format!("{what} '{text}' is not a whole number")))
        };
        let embed = int(&field(e, 'e')?, "embed dim")?;
        let depth = d.map(|d| field(d, 'd').and_then(|t| int(&t, "depth"))).transpose()?;
        let mut heads = field(h, 'h')?.split('-').map(|t| int(t, "head count")).collect::<Result<Vec<usize>>>()?;
        let mut ratios = field(r, 'r')?
            .split('-')
            .map(|t| t.parse::<f64>().map_err(|_| bad(format!("MLP ratio '{t}' is not a number"))))
            .collect::<Result<Vec<f64>>>()?;
        if let Some(depth) = depth {
            if depth == 0 || depth > MAX_DEPTH {
                return Err(bad(format!("depth {depth} must be in 1..={MAX_DEPTH}")));
            }
            for (list, what) in [(heads.len(), "heads"), (ratios.len(), "ratios")] {
                if list != 1 && list != depth {
                    return Err(bad(format!("{list} {what} for depth {depth}: give one value or {depth}")));
                }
            }
            if heads.len() == 1 {
                heads = vec![heads[0]; depth];
            }
            if ratios.len() == 1 {
                ratios = vec![ratios[0]; depth];
            }
        } else if heads.len() != ratios.len() {
            return Err(bad(format!(
                "{} head counts but {} MLP ratios: give one of each per block",
                heads.len(),
                ratios.len()
            )));
        }
        let c = VitConfig { embed_dim: embed, heads, mlp_ratios: ratios };
        c.validate(name)?;
        Ok(c)
    }
}

impl fmt::Display for VitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uniform = |v: &[String]| v.windows(2).all(|w| w[0] == w[1]);
        let heads: Vec<String> = self.heads.iter().map(|h| h.to_string()).collect();
        let ratios: Vec<String> = self.mlp_ratios.iter().map(|r| r.to_string()).collect();
        if !heads.is_empty() && uniform(&heads) && uniform(&ratios) && ratios.len() == heads.len() {
            write!(f, "vit_e{}_d{}_h{}_r{}", self.embed_dim, heads.len(), heads[0], ratios[0])
        } else {
            write!(f, "vit_e{}_h{}_r{}", self.embed_dim, heads.join("-"), ratios.join("-"))
        }
    }
}

impl FromStr for VitConfig {
    type Err = Error;
    fn from_str(s: &str) -> Result<VitConfig> {
        VitConfig::parse(s)
    }
}

// ---------------------------------------------------------------- modules

/// timm's `PatchEmbed`: `proj` = Conv(3→D, kernel = stride = patch), output as tokens [B, N, D].
pub struct PatchEmbed {
    pub proj: Conv2d,
}

impl Module for PatchEmbed {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let map = self.proj.forward(x)?;
        map.flatten_from(2)?.transpose(1, 2)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("proj".into(), &self.proj)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.proj]
    }
    module_boilerplate!();
}

/// timm's `Mlp`: fc1 → GELU → fc2.
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu()?)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("fc1".into(), &self.fc1), ("fc2".into(), &self.fc2)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.fc1, &mut self.fc2]
    }
    module_boilerplate!();
}

/// timm's pre-norm `Block`: x + attn(norm1(x)), then + mlp(norm2(·)).
pub struct VitBlock {
    pub norm1: LayerNorm,
    pub attn: MultiHeadSelfAttention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

impl VitBlock {
    pub fn new(dim: usize, heads: usize, hidden: usize, rng: &mut Rng, dev: Device) -> Result<VitBlock> {
        Ok(VitBlock {
            norm1: LayerNorm::new(dim, LN_EPS, dev)?,
            attn: MultiHeadSelfAttention::new(dim, heads, true, rng, dev)?,
            norm2: LayerNorm::new(dim, LN_EPS, dev)?,
            mlp: Mlp { fc1: Linear::new(dim, hidden, true, rng, dev)?, fc2: Linear::new(hidden, dim, true, rng, dev)? },
        })
    }

    /// The block output and its attention maps [B, heads, T, T].
    pub fn forward_with_attention(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (a, attn) = self.attn.forward_with_attention(&self.norm1.forward(x)?)?;
        let h = x.add(&a)?;
        Ok((h.add(&self.mlp.forward(&self.norm2.forward(&h)?)?)?, attn))
    }
}

impl Module for VitBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_attention(x)?.0)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("norm1".into(), &self.norm1),
            ("attn".into(), &self.attn),
            ("norm2".into(), &self.norm2),
            ("mlp".into(), &self.mlp),
        ]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.norm1, &mut self.attn, &mut self.norm2, &mut self.mlp]
    }
    module_boilerplate!();
}

/// The ViT of a [`VitConfig`] (see the module docs).
pub struct VisionTransformer {
    config: VitConfig,
    pub cls_token: Tensor,
    pub pos_embed: Tensor,
    pub patch_embed: PatchEmbed,
    pub blocks: Sequential,
    pub norm: LayerNorm,
    pub head: Linear,
}

impl VisionTransformer {
    pub fn new(config: &VitConfig, num_classes: usize, rng: &mut Rng, dev: Device) -> Result<VisionTransformer> {
        config.validate(&config.to_string())?;
        if num_classes == 0 {
            invalid_err!("vit", "'{config}' needs at least one class");
        }
        let d = config.embed_dim;
        let proj = Conv2d::new(3, d, VIT_PATCH, Conv2dConfig::default().stride(VIT_PATCH), rng, dev)?;
        let mut blocks = Sequential::new();
        for i in 0..config.depth() {
            blocks.push(Box::new(VitBlock::new(d, config.heads[i], config.mlp_hidden(i), rng, dev)?));
        }
        let net = VisionTransformer {
            config: config.clone(),
            cls_token: Tensor::zeros([1, 1, d], dev)?.requires_grad_(),
            pos_embed: Tensor::zeros([1, VIT_GRID * VIT_GRID + 1, d], dev)?.requires_grad_(),
            patch_embed: PatchEmbed { proj },
            blocks,
            norm: LayerNorm::new(d, LN_EPS, dev)?,
            head: Linear::new(d, num_classes, true, rng, dev)?,
        };
        trunc_normal_(&net.pos_embed, 0.0, 0.02, -2.0, 2.0, rng)?;
        trunc_normal_(&net.cls_token, 0.0, 0.02, -2.0, 2.0, rng)?;
        Init::TruncNormal { std: 0.02 }.apply(&net, rng)?;
        Ok(net)
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Features and, per block, its attention maps [B, heads, 65, 65] (on the graph).
    pub fn forward_with_attention(&self, x: &Tensor) -> Result<(Features, Vec<Tensor>)> {
        if x.rank() != 4 || x.dims()[1..] != [3, VIT_IMAGE, VIT_IMAGE] {
            shape_err!("vit", "'{}' takes images [B, 3, {VIT_IMAGE}, {VIT_IMAGE}], got {}", self.config, x.shape());
        }
        let (b, d) = (x.dims()[0], self.config.embed_dim);
        let patches = self.patch_embed.forward(x)?;
        let as_map = |tokens: &Tensor, with_cls: bool| -> Result<Tensor> {
            let p = if with_cls { tokens.narrow(1, 1, VIT_GRID * VIT_GRID)? } else { tokens.clone() };
            p.transpose(1, 2)?.reshape([b, d, VIT_GRID, VIT_GRID])
        };
        let mut stages = vec![as_map(&patches, false)?];
        let cls = self.cls_token.broadcast_to(&[b, 1, d].into())?;
        let mut h = Tensor::concat(&[&cls, &patches], 1)?.add(&self.pos_embed)?;
        let mut attns = Vec::with_capacity(self.config.depth());
        for block in self.blocks.layers() {
            let block = block
                .as_any()
                .downcast_ref::<VitBlock>()
                .ok_or_else(|| Error::invalid("vit", "blocks hold VitBlocks"))?;
            let (out, attn) = block.forward_with_attention(&h)?;
            stages.push(as_map(&out, true)?);
            attns.push(attn);
            h = out;
        }
        let pooled = self.norm.forward(&h)?.narrow(1, 0, 1)?.reshape([b, d])?;
        let logits = self.head.forward(&pooled)?;
        let final_map = stages.len() - 1;
        Ok((Features { preact_stages: stages.clone(), stages, final_map, head_map: None, pooled, logits }, attns))
    }
}

impl Network for VisionTransformer {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        Ok(self.forward_with_attention(x)?.0)
    }
    fn classifier(&self) -> &Linear {
        &self.head
    }
}

impl Module for VisionTransformer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn local_tensors(&self) -> Vec<LocalTensor> {
        vec![LocalTensor::param("cls_token", &self.cls_token), LocalTensor::param("pos_embed", &self.pos_embed)]
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("patch_embed".into(), &self.patch_embed),
            ("blocks".into(), &self.blocks),
            ("norm".into(), &self.norm),
            ("head".into(), &self.head),
        ]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.patch_embed, &mut self.blocks, &mut self.norm, &mut self.head]
    }
    module_boilerplate!();
}
