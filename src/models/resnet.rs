//! CIFAR ResNets as RepDistiller / mdistiller define them (`models/resnet.py`): BasicBlocks,
//! a 3x3 stem, three stages, global average pooling and a linear classifier; a 1x1 conv + BN
//! shortcut where the shape changes; convs initialised kaiming-normal (fan_out), BN to 1/0.
//! Parameter names match their state dicts (`layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`).

use crate::module_boilerplate;
use crate::nn::{BatchNorm2d, Conv2d, Conv2dConfig, Init, Linear, Module, Sequential};
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

impl Module for BasicBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let out = self.bn2.forward(&self.conv2.forward(&out)?)?;
        let residual = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        out.add(&residual)?.relu()
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

/// RepDistiller's `ResNet(depth, num_filters)`: depth = 6n + 2 with n blocks per stage.
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
        let conv1 = conv(3, filters[0], 3, 1, rng, dev)?;
        let bn1 = BatchNorm2d::new(filters[0], dev)?;
        let mut inplanes = filters[0];
        let mut stages = Vec::new();
        for (planes, stride) in [(filters[1], 1), (filters[2], 2), (filters[3], 2)] {
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

impl Module for CifarResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let x = self.layer3.forward(&self.layer2.forward(&self.layer1.forward(&x)?)?)?;
        let pooled = x.adaptive_avg_pool2d(1, 1)?.flatten_from(1)?;
        self.fc.forward(&pooled)
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
