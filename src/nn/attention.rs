//! Multi-head self-attention as timm's `Attention` (ViT/DeiT blocks): a fused `qkv` Linear
//! [3·dim, dim], per-head scaled dot-product attention, and an output `proj` Linear.

use crate::backend::Device;
use crate::error::Result;
use crate::module_boilerplate;
use crate::nn::layers::Linear;
use crate::nn::module::Module;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, shape_err};

/// Self-attention over tokens x [B, T, dim] with `heads` heads of `dim / heads` channels.
/// State-dict names: `qkv.weight`, `qkv.bias` (when `qkv_bias`), `proj.weight`, `proj.bias`.
pub struct MultiHeadSelfAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub dim: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// 1/√head_dim, applied to the scores before the softmax.
    pub scale: f32,
}

impl MultiHeadSelfAttention {
    /// timm's `Attention(dim, num_heads, qkv_bias)`; Linears get PyTorch's default init.
    pub fn new(
        dim: usize,
        heads: usize,
        qkv_bias: bool,
        rng: &mut Rng,
        device: Device,
    ) -> Result<MultiHeadSelfAttention> {
        if heads == 0 || dim == 0 || !dim.is_multiple_of(heads) {
            invalid_err!("MultiHeadSelfAttention", "dim {dim} must be a positive multiple of heads {heads}");
        }
        let head_dim = dim / heads;
        let qkv = Linear::new(dim, 3 * dim, qkv_bias, rng, device)?;
        let proj = Linear::new(dim, dim, true, rng, device)?;
        Ok(MultiHeadSelfAttention { qkv, proj, dim, heads, head_dim, scale: 1.0 / (head_dim as f32).sqrt() })
    }

    /// The output [B, T, dim] and the attention maps [B, heads, T, T] (rows sum to one; still
    /// on the graph, so proxies can differentiate through them).
    pub fn forward_with_attention(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        if x.rank() != 3 || x.dims()[2] != self.dim {
            shape_err!("MultiHeadSelfAttention", "expected input [B, T, {}], got {}", self.dim, x.shape());
        }
        let (b, t, h, hd) = (x.dims()[0], x.dims()[1], self.heads, self.head_dim);
        // [B, T, 3·dim] -> [3, B, H, T, hd]: the same split as timm's reshape/permute.
        let qkv = self.qkv.forward(x)?.reshape([b, t, 3, h, hd])?.permute(&[2, 0, 3, 1, 4])?;
        let part = |i: usize| qkv.narrow(0, i, 1)?.reshape([b, h, t, hd]);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let attn = q.matmul_t(&k, false, true)?.scale(self.scale)?.softmax(-1)?;
        let out = attn.matmul(&v)?.permute(&[0, 2, 1, 3])?.reshape([b, t, self.dim])?;
        Ok((self.proj.forward(&out)?, attn))
    }
}

impl Module for MultiHeadSelfAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_attention(x)?.0)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("qkv".to_string(), &self.qkv as &dyn Module), ("proj".to_string(), &self.proj as &dyn Module)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.qkv as &mut dyn Module, &mut self.proj as &mut dyn Module]
    }
    module_boilerplate!();
}
