//! The CIFAR VGGs of RepDistiller / mdistiller (`models/vgg.py`, "FC layers are removed"), in
//! their batch-norm form, which is what the zoo names mean (`vgg8` = `vgg8_bn`, cfg 'S';
//! `vgg11` = cfg 'A', `vgg13` = 'B', `vgg16` = 'D', `vgg19` = 'E').
//!
//! Five blocks of conv3x3(bias)-BN-ReLU, each without its final ReLU (`layers[:-1]`), which
//! the forward applies itself so the pre-activations can be read. Max-pools (2, 2) follow blocks
//! 0, 1 and 2; the one after block 3 runs only for 64x64 inputs, so at 32x32 blocks 3 and 4 both
//! see 4x4 maps. Then global average pooling and `classifier = Linear(512, classes)`.
//!
//! Init: `_initialize_weights` (conv N(0, 2/(k·k·out)) with bias 0, BN 1/0, Linear N(0, 0.01²)
//! with bias 0). State-dict names: `block0.0.weight`, `block0.0.bias`, `block0.1.running_mean`,
//! `block1.0.weight` ..., `classifier.weight`.
//!
//! Features as mdistiller: `stages` = [relu(block0), relu(block1), ..., relu(block4)],
//! `preact_stages` = [relu(block0), block1, ..., block4] (block outputs before the ReLU);
//! `final_map` = relu(block4), the map the pooling reads.

use crate::models::parts::repdistiller_init;
use crate::models::{Features, Network};
use crate::module_boilerplate;
use crate::nn::{Activation, BatchNorm2d, Conv2d, Conv2dConfig, Linear, Module, Sequential};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, Device, Result};

/// vgg.py's `cfg` for a zoo name: output widths of the convs of each of the five blocks.
pub fn vgg_config(name: &str) -> Result<[&'static [usize]; 5]> {
    Ok(match name {
        "vgg8" => [&[64], &[128], &[256], &[512], &[512]],
        "vgg11" => [&[64], &[128], &[256, 256], &[512, 512], &[512, 512]],
        "vgg13" => [&[64, 64], &[128, 128], &[256, 256], &[512, 512], &[512, 512]],
        "vgg16" => [&[64, 64], &[128, 128], &[256, 256, 256], &[512, 512, 512], &[512, 512, 512]],
        "vgg19" => [&[64, 64], &[128, 128], &[256, 256, 256, 256], &[512, 512, 512, 512], &[512, 512, 512, 512]],
        _ => invalid_err!("model", "unknown VGG '{name}': use one of vgg8, vgg11, vgg13, vgg16, vgg19"),
    })
}

/// `VGG(cfg, batch_norm=True, num_classes)`.
pub struct Vgg {
    blocks: [Sequential; 5],
    classifier: Linear,
}

impl Vgg {
    /// `vgg13` = `Vgg::new(vgg_config("vgg13")?, 100, ..)`.
    pub fn new(cfg: [&[usize]; 5], num_classes: usize, rng: &mut Rng, dev: Device) -> Result<Vgg> {
        if cfg.iter().any(|b| b.is_empty() || b.contains(&0)) || cfg[4].last() != Some(&512) {
            invalid_err!("vgg", "every block needs convs of positive width and the last must end at 512, got {cfg:?}");
        }
        let mut cin = 3;
        let mut blocks = Vec::with_capacity(5);
        for widths in cfg {
            let mut block = Sequential::new();
            for (i, &v) in widths.iter().enumerate() {
                block = block
                    .with(Conv2d::new(cin, v, 3, Conv2dConfig::default().padding(1), rng, dev)?)
                    .with(BatchNorm2d::new(v, dev)?);
                if i + 1 < widths.len() {
                    block = block.with(Activation::Relu);
                }
                cin = v;
            }
            blocks.push(block);
        }
        let blocks = <[Sequential; 5]>::try_from(blocks).map_err(|_| crate::Error::invalid("vgg", "five blocks"))?;
        let net = Vgg { blocks, classifier: Linear::new(512, num_classes, true, rng, dev)? };
        repdistiller_init(&net, rng)?;
        Ok(net)
    }
}

impl Network for Vgg {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        let h = x.dims().get(2).copied().unwrap_or(0);
        let f0 = self.blocks[0].forward(x)?.relu()?;
        let (mut stages, mut preact_stages) = (vec![f0.clone()], vec![f0.clone()]);
        let mut y = f0;
        for (i, block) in self.blocks.iter().enumerate().skip(1) {
            // pool0..pool2 always; pool3 only for 64x64 inputs (vgg.py's `if h == 64`).
            if i < 4 || h == 64 {
                y = y.max_pool2d(2, 2, 0)?;
            }
            let pre = block.forward(&y)?;
            y = pre.relu()?;
            stages.push(y.clone());
            preact_stages.push(pre);
        }
        let pooled = y.adaptive_avg_pool2d(1, 1)?.flatten_from(1)?;
        let logits = self.classifier.forward(&pooled)?;
        Ok(Features { stages, preact_stages, final_map: 4, head_map: None, pooled, logits })
    }
    fn classifier(&self) -> &Linear {
        &self.classifier
    }
}

impl Module for Vgg {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> =
            self.blocks.iter().enumerate().map(|(i, b)| (format!("block{i}"), b as &dyn Module)).collect();
        v.push(("classifier".into(), &self.classifier));
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> = self.blocks.iter_mut().map(|b| b as &mut dyn Module).collect();
        v.push(&mut self.classifier);
        v
    }
    module_boilerplate!();
}
