//! CIFAR ResNets as RepDistiller / mdistiller define them (`models/resnet.py`): BasicBlocks,
//! a 3x3 stem, three stages, global average pooling and a linear classifier; a 1x1 conv + BN
//! shortcut where the shape changes; convs initialised kaiming-normal (fan_out), BN to 1/0.
//! Parameter names match their state dicts (`layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`).

use crate::models::{Features, Network};
use crate::module_boilerplate;
use crate::nn::{BatchNorm2d, Conv2d, Conv2dConfig, FusedRelu, Init, Linear, Module, Sequential};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, Device, Result};

fn conv(cin: usize, cout: usize, k: usize, stride: usize, rng: &mut Rng, dev: Device) -> Result<Conv2d> {
    Conv2d::new(cin, cout, k, Conv2dConfig::default().stride(stride).padding(k / 2).bias(false), rng, dev)
}

/// conv-bn-relu-conv-bn plus shortcut, then relu.
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<Sequential>,
}

impl BasicBlock {
    pub fn new(inplanes: usize, planes: usize, stride: usize, rng: &mut Rng, dev: Device) -> Result<BasicBlock> {
        let downsample = if stride != 1 || inplanes != planes {
            Some(
                Sequential::new()
                    .with(conv(inplanes, planes, 1, stride, rng, dev)?)
                    .with(BatchNorm2d::new(planes, dev)?),
            )
        } else {
            None
        };
        Ok(BasicBlock {
            conv1: conv(inplanes, planes, 3, stride, rng, dev)?,
            bn1: BatchNorm2d::new(planes, dev)?,
            conv2: conv(planes, planes, 3, 1, rng, dev)?,
            bn2: BatchNorm2d::new(planes, dev)?,
            downsample,
        })
    }
}

impl BasicBlock {
    /// bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x), followed by the final relu when `relu`.
    fn tail(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let out = self.bn1.forward_fused(&self.conv1.forward(x)?, None, FusedRelu::Module)?;
        let residual = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        // The block's final ReLU is RepDistiller's `F.relu`.
        let relu = if relu { FusedRelu::Functional } else { FusedRelu::No };
        self.bn2.forward_fused(&self.conv2.forward(&out)?, Some(&residual), relu)
    }

    /// The block's output and the same sum before the final relu (mdistiller's `preact`).
    pub fn forward_preact(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let pre = self.tail(x, false)?;
        Ok((pre.relu()?, pre))
    }
}

impl Module for BasicBlock {
    /// Without the preact, the relu joins the fused batchnorm + shortcut pass in inference.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.tail(x, true)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> = vec![
            ("conv1".into(), &self.conv1),
            ("bn1".into(), &self.bn1),
            ("conv2".into(), &self.conv2),
            ("bn2".into(), &self.bn2),
        ];
        if let Some(d) = &self.downsample {
            v.push(("downsample".into(), d));
        }
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> = vec![&mut self.conv1, &mut self.bn1, &mut self.conv2, &mut self.bn2];
        if let Some(d) = &mut self.downsample {
            v.push(d);
        }
        v
    }
    module_boilerplate!();
}

/// RepDistiller's `ResNet(depth, num_filters)`: depth = 6n + 2 with n blocks per stage; or
/// per-stage block counts (the DisWOT depth space, `resnet_d557`).
pub struct CifarResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layer1: Sequential,
    layer2: Sequential,
    layer3: Sequential,
    fc: Linear,
}

impl CifarResNet {
    /// `resnet20` = `CifarResNet::new(20, [16, 16, 32, 64], 100, ..)`; `resnet8x4` =
    /// `new(8, [32, 64, 128, 256], ..)`.
    pub fn new(
        depth: usize,
        filters: [usize; 4],
        num_classes: usize,
        rng: &mut Rng,
        dev: Device,
    ) -> Result<CifarResNet> {
        if depth < 8 || !(depth - 2).is_multiple_of(6) {
            invalid_err!("resnet", "depth {depth} must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)");
        }
        let n = (depth - 2) / 6;
        Self::with_stage_depths([n, n, n], filters, num_classes, rng, dev)
    }

    /// Blocks per stage given one by one: `resnet_d557` = `with_stage_depths([5, 5, 7],
    /// [16, 16, 32, 64], ..)`.
    pub fn with_stage_depths(
        blocks: [usize; 3],
        filters: [usize; 4],
        num_classes: usize,
        rng: &mut Rng,
        dev: Device,
    ) -> Result<CifarResNet> {
        if blocks.contains(&0) {
            invalid_err!("resnet", "every stage needs at least one block, got {blocks:?}");
        }
        let conv1 = conv(3, filters[0], 3, 1, rng, dev)?;
        let bn1 = BatchNorm2d::new(filters[0], dev)?;
        let mut inplanes = filters[0];
        let mut stages = Vec::new();
        for ((planes, stride), n) in [(filters[1], 1), (filters[2], 2), (filters[3], 2)].into_iter().zip(blocks) {
            let mut s = Sequential::new();
            for i in 0..n {
                s = s.with(BasicBlock::new(inplanes, planes, if i == 0 { stride } else { 1 }, rng, dev)?);
                inplanes = planes;
            }
            stages.push(s);
        }
        let fc = Linear::new(filters[3], num_classes, true, rng, dev)?;
        let [layer1, layer2, layer3] =
            <[Sequential; 3]>::try_from(stages).map_err(|_| crate::Error::invalid("resnet", "three stages"))?;
        let net = CifarResNet { conv1, bn1, layer1, layer2, layer3, fc };
        Init::KaimingNormalFanOut.apply(&net, rng)?;
        Ok(net)
    }
}

/// Runs a stage of BasicBlocks, returning its output and the last block's pre-activation sum.
fn stage_preact(stage: &Sequential, x: &Tensor) -> Result<(Tensor, Tensor)> {
    let (mut x, mut pre) = (x.clone(), x.clone());
    let blocks = stage.layers();
    for (i, block) in blocks.iter().enumerate() {
        let b = block
            .as_any()
            .downcast_ref::<BasicBlock>()
            .ok_or_else(|| crate::Error::invalid("resnet", "stage of BasicBlocks"))?;
        // Only the last block's preact is a feature; the others skip materialising it.
        if i + 1 == blocks.len() {
            (x, pre) = b.forward_preact(&x)?;
        } else {
            x = b.forward(&x)?;
        }
    }
    Ok((x, pre))
}

impl Network for CifarResNet {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        let f0 = self.bn1.forward_fused(&self.conv1.forward(x)?, None, FusedRelu::Module)?;
        let (f1, p1) = stage_preact(&self.layer1, &f0)?;
        let (f2, p2) = stage_preact(&self.layer2, &f1)?;
        let (f3, p3) = stage_preact(&self.layer3, &f2)?;
        let pooled = f3.adaptive_avg_pool2d(1, 1)?.flatten_from(1)?;
        let logits = self.fc.forward(&pooled)?;
        Ok(Features {
            stages: vec![f0.clone(), f1, f2, f3],
            preact_stages: vec![f0, p1, p2, p3],
            final_map: 3,
            head_map: None,
            pooled,
            logits,
        })
    }
    fn classifier(&self) -> &Linear {
        &self.fc
    }
}

impl Module for CifarResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("conv1".into(), &self.conv1),
            ("bn1".into(), &self.bn1),
            ("layer1".into(), &self.layer1),
            ("layer2".into(), &self.layer2),
            ("layer3".into(), &self.layer3),
            ("fc".into(), &self.fc),
        ]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.conv1, &mut self.bn1, &mut self.layer1, &mut self.layer2, &mut self.layer3, &mut self.fc]
    }
    module_boilerplate!();
}
