//! What a network hands to proxies and distillers: mdistiller's `feats` dictionary as a struct.
//! Proxies and distillers read only this, so every model of the zoo is interchangeable.

use crate::nn::{Linear, Module};
use crate::tensor::Tensor;
use crate::Result;

/// The outputs of one forward pass, in mdistiller's conventions.
#[derive(Clone, Debug)]
pub struct Features {
    /// `feats["feats"]`: the stem output, then each stage's output after its activation.
    pub stages: Vec<Tensor>,
    /// `feats["preact_feats"]`: the same maps before the last activation of each stage (the stem
    /// and stages without a final activation repeat their `stages` entry).
    pub preact_stages: Vec<Tensor>,
    /// Index into `stages` of the map right before global pooling ([B, C, H, W]; for a ViT the
    /// patch tokens of the last block laid out as [B, D, H/p, W/p]).
    pub final_map: usize,
    /// The map global pooling actually reads, when it is not `stages[final_map]`: WRN pools
    /// relu(bn1(f3)), MobileNetV2 and ShuffleV2 a 1x1 head conv after the last stage. `None`
    /// when the last stage map is pooled directly. Class-activation maps read this.
    pub head_map: Option<Tensor>,
    /// `feats["pooled_feat"]`: the embedding the classifier reads, [B, D].
    pub pooled: Tensor,
    /// [B, classes].
    pub logits: Tensor,
}

impl Features {
    /// The map before global pooling (what SP, ICKD-on-maps and CAM-based terms read).
    pub fn final_map(&self) -> &Tensor {
        &self.stages[self.final_map]
    }

    /// The map whose global average is `pooled` (CAM-style terms need fc(mean(map)) = logits).
    pub fn pooled_map(&self) -> &Tensor {
        self.head_map.as_ref().unwrap_or(self.final_map())
    }
}

/// A classification network of the zoo: a module whose forward also exposes its features.
pub trait Network: Module {
    /// One forward pass returning every feature proxies and distillers read.
    fn forward_features(&self, x: &Tensor) -> Result<Features>;

    /// The final linear classifier (DisWOT's semantic term reads the gradient of its weight).
    fn classifier(&self) -> &Linear;

    /// Number of output classes.
    fn num_classes(&self) -> usize {
        self.classifier().out_features
    }
}
