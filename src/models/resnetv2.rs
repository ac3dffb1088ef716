//! The CIFAR ResNet-50 of RepDistiller / mdistiller (`models/resnetv2.py`, `ResNet50` =
//! `ResNet(Bottleneck, [3, 4, 6, 3])`): a 3x3 stride-1 stem conv to 64 + BN + ReLU (no max-pool),
//! four stages of Bottlenecks (1x1, 3x3 carrying the stride, 1x1 to 4x planes; planes 64, 128,
//! 256, 512; strides 1, 2, 2, 2) with a 1x1 conv + BN `shortcut` where the shape changes, global
//! average pooling and `linear` = Linear(2048, classes).
//!
//! Init: conv weights kaiming_normal (fan_out, relu), BN 1/0, `linear` at PyTorch's default
//! (zero_init_residual off, as the zoo constructs it). State-dict names: `conv1.weight`,
//! `layer1.0.conv3.weight`, `layer1.0.shortcut.0.weight`, `layer1.0.shortcut.1.running_mean`,
//! `linear.weight`.
//!
//! Features as mdistiller: `stages` = [stem, layer1..layer4 outputs], `preact_stages` = [stem,
//! then each stage's last block sum before its ReLU]; `final_map` = layer4's output.

use crate::models::parts::{conv, named, named_mut, Blocks, PreactBlock, StagedNet};
use crate::module_boilerplate;
use crate::nn::{BatchNorm2d, Conv2d, FusedRelu, Init, Linear, Module, Sequential};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, Device, Result};

/// resnetv2.py's `Bottleneck(in_planes, planes, stride)` (expansion 4).
pub struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    shortcut: Option<Sequential>,
}

impl Bottleneck {
    pub const EXPANSION: usize = 4;

    pub fn new(in_planes: usize, planes: usize, stride: usize, rng: &mut Rng, dev: Device) -> Result<Bottleneck> {
        let out = Self::EXPANSION * planes;
        let shortcut = if stride != 1 || in_planes != out {
            Some(
                Sequential::new().with(conv(in_planes, out, 1, stride, 1, rng, dev)?).with(BatchNorm2d::new(out, dev)?),
            )
        } else {
            None
        };
        Ok(Bottleneck {
            conv1: conv(in_planes, planes, 1, 1, 1, rng, dev)?,
            bn1: BatchNorm2d::new(planes, dev)?,
            conv2: conv(planes, planes, 3, stride, 1, rng, dev)?,
            bn2: BatchNorm2d::new(planes, dev)?,
            conv3: conv(planes, out, 1, 1, 1, rng, dev)?,
            bn3: BatchNorm2d::new(out, dev)?,
            shortcut,
        })
    }
}

impl PreactBlock for Bottleneck {
    /// The block's output and the residual sum before the final ReLU (`preact`).
    fn forward_preact(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let out = self.bn1.forward_fused(&self.conv1.forward(x)?, None, FusedRelu::Functional)?;
        let out = self.bn2.forward_fused(&self.conv2.forward(&out)?, None, FusedRelu::Functional)?;
        let shortcut = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        let pre = self.bn3.forward_fused(&self.conv3.forward(&out)?, Some(&shortcut), FusedRelu::No)?;
        Ok((pre.relu()?, pre))
    }
}

impl Module for Bottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_preact(x)?.0)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v = named!(self; conv1, bn1, conv2, bn2, conv3, bn3);
        if let Some(s) = &self.shortcut {
            v.push(("shortcut".into(), s));
        }
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v = named_mut!(self; conv1, bn1, conv2, bn2, conv3, bn3);
        if let Some(s) = &mut self.shortcut {
            v.push(s);
        }
        v
    }
    module_boilerplate!();
}

/// resnetv2.py's `ResNet(Bottleneck, num_blocks)`.
pub type ResNetV2 = StagedNet<Bottleneck>;

impl StagedNet<Bottleneck> {
    /// `ResNet50` = `ResNetV2::bottleneck([3, 4, 6, 3], 100, ..)` (101: [3, 4, 23, 3]; 152: [3, 8, 36, 3]).
    pub fn bottleneck(num_blocks: [usize; 4], num_classes: usize, rng: &mut Rng, dev: Device) -> Result<ResNetV2> {
        if num_blocks.contains(&0) {
            invalid_err!("ResNet50", "every stage needs at least one block, got {num_blocks:?}");
        }
        let conv1 = conv(3, 64, 3, 1, 1, rng, dev)?;
        let bn1 = BatchNorm2d::new(64, dev)?;
        let mut in_planes = 64;
        let mut layers = Vec::with_capacity(4);
        for ((planes, stride), n) in [(64, 1), (128, 2), (256, 2), (512, 2)].into_iter().zip(num_blocks) {
            let mut blocks = Vec::with_capacity(n);
            for i in 0..n {
                blocks.push(Bottleneck::new(in_planes, planes, if i == 0 { stride } else { 1 }, rng, dev)?);
                in_planes = planes * Bottleneck::EXPANSION;
            }
            layers.push(Blocks(blocks));
        }
        let net = StagedNet::from_parts(conv1, bn1, layers, Linear::new(in_planes, num_classes, true, rng, dev)?);
        Init::KaimingNormalFanOut.apply(&net, rng)?;
        Ok(net)
    }
}
