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

use crate::models::parts::{conv, run_preact, Blocks};
use crate::models::{Features, Network};
use crate::module_boilerplate;
use crate::nn::{BatchNorm2d, Conv2d, Init, Linear, Module, Sequential};
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

    /// The block's output and the residual sum before the final ReLU (`preact`).
    pub fn forward_preact(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let out = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let out = self.bn2.forward(&self.conv2.forward(&out)?)?.relu()?;
        let out = self.bn3.forward(&self.conv3.forward(&out)?)?;
        let pre = match &self.shortcut {
            Some(s) => out.add(&s.forward(x)?)?,
            None => out.add(x)?,
        };
        Ok((pre.relu()?, pre))
    }
}

impl Module for Bottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_preact(x)?.0)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> = vec![
            ("conv1".into(), &self.conv1),
            ("bn1".into(), &self.bn1),
            ("conv2".into(), &self.conv2),
            ("bn2".into(), &self.bn2),
            ("conv3".into(), &self.conv3),
            ("bn3".into(), &self.bn3),
        ];
        if let Some(s) = &self.shortcut {
            v.push(("shortcut".into(), s));
        }
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> =
            vec![&mut self.conv1, &mut self.bn1, &mut self.conv2, &mut self.bn2, &mut self.conv3, &mut self.bn3];
        if let Some(s) = &mut self.shortcut {
            v.push(s);
        }
        v
    }
    module_boilerplate!();
}

/// resnetv2.py's `ResNet(Bottleneck, num_blocks)`.
pub struct ResNetV2 {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: [Blocks<Bottleneck>; 4],
    linear: Linear,
}

impl ResNetV2 {
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
        let layers = <[Blocks<Bottleneck>; 4]>::try_from(layers)
            .map_err(|_| crate::Error::invalid("ResNet50", "four stages"))?;
        let net = ResNetV2 { conv1, bn1, layers, linear: Linear::new(in_planes, num_classes, true, rng, dev)? };
        Init::KaimingNormalFanOut.apply(&net, rng)?;
        Ok(net)
    }
}

impl Network for ResNetV2 {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        let f0 = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let (mut stages, mut preact_stages) = (vec![f0.clone()], vec![f0.clone()]);
        let mut y = f0;
        for layer in &self.layers {
            let (out, pre) = run_preact(&layer.0, &y, Bottleneck::forward_preact)?;
            stages.push(out.clone());
            preact_stages.push(pre);
            y = out;
        }
        let pooled = y.adaptive_avg_pool2d(1, 1)?.flatten_from(1)?;
        let logits = self.linear.forward(&pooled)?;
        Ok(Features { stages, preact_stages, final_map: 4, pooled, logits })
    }
    fn classifier(&self) -> &Linear {
        &self.linear
    }
}

impl Module for ResNetV2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> = vec![("conv1".into(), &self.conv1), ("bn1".into(), &self.bn1)];
        v.extend(self.layers.iter().enumerate().map(|(i, l)| (format!("layer{}", i + 1), l as &dyn Module)));
        v.push(("linear".into(), &self.linear));
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> = vec![&mut self.conv1, &mut self.bn1];
        v.extend(self.layers.iter_mut().map(|l| l as &mut dyn Module));
        v.push(&mut self.linear);
        v
    }
    module_boilerplate!();
}
