//! The CIFAR ShuffleNets of RepDistiller / mdistiller: `ShuffleV1` (`models/ShuffleNetv1.py`,
//! out planes 240/480/960, blocks 4/8/4, groups 3) and `ShuffleV2` (`models/ShuffleNetv2.py`,
//! net size 1: out channels 116/232/464 and a 1x1 conv to 1024, blocks 3/7/3). Both start with a
//! 1x1 conv to 24 channels + BN + ReLU at full resolution, and neither file initialises its
//! weights, so every layer keeps PyTorch's default init (what construction gives here too).
//!
//! Features follow the files' `is_last` convention: `stages` = [stem, layer1, layer2, layer3
//! outputs], `preact_stages` = [stem, then what each stage's last block returns as `preact`]. For
//! V1 that is the concatenation / sum before the final ReLU. For V2 it is `cat([x1, bn3(conv3(..))])`
//! taken before the ReLU **and before the channel shuffle**, exactly as ShuffleNetv2.py returns it.
//! `final_map` = layer3's output; V2's classifier reads the pooled `relu(bn2(conv2(layer3)))`
//! (1024 channels), V1's the pooled layer3 output.

use crate::models::parts::{
    conv, layer_children, named, named_mut, run_preact, staged_features, Blocks, PreactBlock, StagedNet,
};
use crate::models::{Features, Network};
use crate::module_boilerplate;
use crate::nn::{BatchNorm2d, Conv2d, FusedRelu, Linear, Module};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, Device, Result};

/// ShuffleNetv1.py's `Bottleneck(in_planes, out_planes, stride, groups)`.
pub struct ShuffleV1Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    stride: usize,
    shuffle_groups: usize,
}

impl ShuffleV1Block {
    pub fn new(
        in_planes: usize,
        out_planes: usize,
        stride: usize,
        groups: usize,
        rng: &mut Rng,
        dev: Device,
    ) -> Result<ShuffleV1Block> {
        let mid = out_planes / 4;
        // The first block after the 24-channel stem uses an ungrouped 1x1 conv.
        let g = if in_planes == 24 { 1 } else { groups };
        Ok(ShuffleV1Block {
            conv1: conv(in_planes, mid, 1, 1, g, rng, dev)?,
            bn1: BatchNorm2d::new(mid, dev)?,
            conv2: conv(mid, mid, 3, stride, mid, rng, dev)?,
            bn2: BatchNorm2d::new(mid, dev)?,
            conv3: conv(mid, out_planes, 1, 1, groups, rng, dev)?,
            bn3: BatchNorm2d::new(out_planes, dev)?,
            stride,
            shuffle_groups: g,
        })
    }
}

impl PreactBlock for ShuffleV1Block {
    /// The block's output and its pre-activation (`preact`).
    fn forward_preact(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let out = self
            .bn1
            .forward_fused(&self.conv1.forward(x)?, None, FusedRelu::Functional)?
            .channel_shuffle(self.shuffle_groups)?;
        let out = self.bn2.forward_fused(&self.conv2.forward(&out)?, None, FusedRelu::Functional)?;
        let out = self.bn3.forward(&self.conv3.forward(&out)?)?;
        let pre = if self.stride == 2 {
            // shortcut = AvgPool2d(3, stride=2, padding=1) (count_include_pad), concatenated.
            Tensor::concat(&[&out, &x.avg_pool2d(3, 2, 1, true)?], 1)?
        } else {
            out.add(x)?
        };
        Ok((pre.relu()?, pre))
    }
}

impl Module for ShuffleV1Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_preact(x)?.0)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        named!(self; conv1, bn1, conv2, bn2, conv3, bn3)
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        named_mut!(self; conv1, bn1, conv2, bn2, conv3, bn3)
    }
    module_boilerplate!();
}

/// The stem both ShuffleNets share: 1x1 conv 3→24 (no bias) and BN, named `conv1` / `bn1`.
fn stem(rng: &mut Rng, dev: Device) -> Result<(Conv2d, BatchNorm2d)> {
    Ok((conv(3, 24, 1, 1, 1, rng, dev)?, BatchNorm2d::new(24, dev)?))
}

/// ShuffleNetv1.py's `ShuffleNet(cfg)`; `ShuffleV1` = `ShuffleNetV1::new([240, 480, 960], [4, 8, 4], 3, ..)`.
pub type ShuffleNetV1 = StagedNet<ShuffleV1Block>;

impl StagedNet<ShuffleV1Block> {
    /// The zoo's `ShuffleV1`.
    pub fn shuffle_v1(num_classes: usize, rng: &mut Rng, dev: Device) -> Result<ShuffleNetV1> {
        ShuffleNetV1::new([240, 480, 960], [4, 8, 4], 3, num_classes, rng, dev)
    }

    pub fn new(
        out_planes: [usize; 3],
        num_blocks: [usize; 3],
        groups: usize,
        num_classes: usize,
        rng: &mut Rng,
        dev: Device,
    ) -> Result<ShuffleNetV1> {
        let mut in_planes = 24;
        let ok_widths = out_planes.iter().all(|&o| {
            let ok = o > in_planes && (o - in_planes) % (4 * groups) == 0 && o % (4 * groups) == 0;
            in_planes = o;
            ok
        });
        if groups == 0 || num_blocks.contains(&0) || !ok_widths {
            invalid_err!(
                "ShuffleV1",
                "out planes {out_planes:?} must grow from 24 in steps divisible by 4·groups (groups {groups}), with blocks {num_blocks:?} >= 1"
            );
        }
        let (conv1, bn1) = stem(rng, dev)?;
        let mut in_planes = 24;
        let mut layers = Vec::with_capacity(3);
        for (out, n) in out_planes.into_iter().zip(num_blocks) {
            let mut blocks = Vec::with_capacity(n);
            for i in 0..n {
                // The first block is strided and concatenates its (pooled) input.
                let (o, stride) = if i == 0 { (out - in_planes, 2) } else { (out, 1) };
                blocks.push(ShuffleV1Block::new(in_planes, o, stride, groups, rng, dev)?);
                in_planes = out;
            }
            layers.push(Blocks(blocks));
        }
        Ok(StagedNet::from_parts(conv1, bn1, layers, Linear::new(out_planes[2], num_classes, true, rng, dev)?))
    }
}

/// ShuffleNetv2.py's `BasicBlock(in_channels)` (split ratio 0.5): the second half goes through
/// 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU and is concatenated back, then shuffled (2 groups).
pub struct ShuffleV2Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
}

impl ShuffleV2Block {
    pub fn new(in_channels: usize, rng: &mut Rng, dev: Device) -> Result<ShuffleV2Block> {
        let c = in_channels / 2;
        Ok(ShuffleV2Block {
            conv1: conv(c, c, 1, 1, 1, rng, dev)?,
            bn1: BatchNorm2d::new(c, dev)?,
            conv2: conv(c, c, 3, 1, c, rng, dev)?,
            bn2: BatchNorm2d::new(c, dev)?,
            conv3: conv(c, c, 1, 1, 1, rng, dev)?,
            bn3: BatchNorm2d::new(c, dev)?,
        })
    }

    /// The block's output and its `preact` (the concatenation before ReLU and shuffle).
    pub fn forward_preact(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = x.dims().get(1).copied().unwrap_or(0) / 2;
        let x1 = x.narrow(1, 0, c)?;
        let x2 = x.narrow(1, c, x.dims()[1] - c)?;
        let out = self.bn1.forward_fused(&self.conv1.forward(&x2)?, None, FusedRelu::Functional)?;
        let out = self.bn2.forward(&self.conv2.forward(&out)?)?;
        let pre = self.bn3.forward(&self.conv3.forward(&out)?)?;
        let out = Tensor::concat(&[&x1, &pre.relu()?], 1)?.channel_shuffle(2)?;
        Ok((out, Tensor::concat(&[&x1, &pre], 1)?))
    }
}

impl Module for ShuffleV2Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_preact(x)?.0)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        named!(self; conv1, bn1, conv2, bn2, conv3, bn3)
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        named_mut!(self; conv1, bn1, conv2, bn2, conv3, bn3)
    }
    module_boilerplate!();
}

/// ShuffleNetv2.py's `DownBlock(in_channels, out_channels)`: two stride-2 branches of
/// out_channels/2 each (left: 3x3 depthwise-BN, 1x1-BN-ReLU; right: 1x1-BN-ReLU, 3x3
/// depthwise-BN, 1x1-BN-ReLU), concatenated and shuffled.
pub struct ShuffleV2Down {
    convs: [Conv2d; 5],
    bns: [BatchNorm2d; 5],
}

impl ShuffleV2Down {
    pub fn new(cin: usize, cout: usize, rng: &mut Rng, dev: Device) -> Result<ShuffleV2Down> {
        let mid = cout / 2;
        let convs = [
            conv(cin, cin, 3, 2, cin, rng, dev)?,
            conv(cin, mid, 1, 1, 1, rng, dev)?,
            conv(cin, mid, 1, 1, 1, rng, dev)?,
            conv(mid, mid, 3, 2, mid, rng, dev)?,
            conv(mid, mid, 1, 1, 1, rng, dev)?,
        ];
        let bns = [
            BatchNorm2d::new(cin, dev)?,
            BatchNorm2d::new(mid, dev)?,
            BatchNorm2d::new(mid, dev)?,
            BatchNorm2d::new(mid, dev)?,
            BatchNorm2d::new(mid, dev)?,
        ];
        Ok(ShuffleV2Down { convs, bns })
    }

    /// conv{i+1} then bn{i+1}.
    fn cb(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        self.bns[i].forward(&self.convs[i].forward(x)?)
    }
}

impl Module for ShuffleV2Down {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let left = self.cb(1, &self.cb(0, x)?)?.relu()?;
        let right = self.cb(2, x)?.relu()?;
        let right = self.cb(4, &self.cb(3, &right)?)?.relu()?;
        Tensor::concat(&[&left, &right], 1)?.channel_shuffle(2)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> = Vec::with_capacity(10);
        for (i, (c, b)) in self.convs.iter().zip(&self.bns).enumerate() {
            v.push((format!("conv{}", i + 1), c));
            v.push((format!("bn{}", i + 1), b));
        }
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> = Vec::with_capacity(10);
        for (c, b) in self.convs.iter_mut().zip(self.bns.iter_mut()) {
            v.push(c);
            v.push(b);
        }
        v
    }
    module_boilerplate!();
}

/// One ShuffleV2 stage: `nn.Sequential(DownBlock, BasicBlock, ...)`, children "0" (the
/// DownBlock), "1", ... (the BasicBlocks).
pub struct ShuffleV2Stage {
    down: ShuffleV2Down,
    blocks: Vec<ShuffleV2Block>,
}

impl ShuffleV2Stage {
    fn forward_preact(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        run_preact(&self.blocks, &self.down.forward(x)?, ShuffleV2Block::forward_preact)
    }
}

impl Module for ShuffleV2Stage {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_preact(x)?.0)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> = vec![("0".into(), &self.down)];
        v.extend(self.blocks.iter().enumerate().map(|(i, b)| ((i + 1).to_string(), b as &dyn Module)));
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> = vec![&mut self.down];
        v.extend(self.blocks.iter_mut().map(|b| b as &mut dyn Module));
        v
    }
    module_boilerplate!();
}

/// ShuffleNetv2.py's `ShuffleNetV2(net_size)`; `ShuffleV2` = `ShuffleNetV2::new([116, 232, 464,
/// 1024], [3, 7, 3], ..)` (net size 1).
pub struct ShuffleNetV2 {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: [ShuffleV2Stage; 3],
    conv2: Conv2d,
    bn2: BatchNorm2d,
    linear: Linear,
}

impl ShuffleNetV2 {
    /// The zoo's `ShuffleV2`.
    pub fn shuffle_v2(num_classes: usize, rng: &mut Rng, dev: Device) -> Result<ShuffleNetV2> {
        ShuffleNetV2::new([116, 232, 464, 1024], [3, 7, 3], num_classes, rng, dev)
    }

    pub fn new(
        out_channels: [usize; 4],
        num_blocks: [usize; 3],
        num_classes: usize,
        rng: &mut Rng,
        dev: Device,
    ) -> Result<ShuffleNetV2> {
        if num_blocks.contains(&0) || out_channels.iter().any(|&c| c == 0 || c % 2 != 0) {
            invalid_err!(
                "ShuffleV2",
                "out channels {out_channels:?} must be positive and even, blocks {num_blocks:?} >= 1"
            );
        }
        let (conv1, bn1) = stem(rng, dev)?;
        let mut cin = 24;
        let mut layers = Vec::with_capacity(3);
        for (cout, n) in out_channels.into_iter().zip(num_blocks) {
            let down = ShuffleV2Down::new(cin, cout, rng, dev)?;
            let blocks = (0..n).map(|_| ShuffleV2Block::new(cout, rng, dev)).collect::<Result<Vec<_>>>()?;
            layers.push(ShuffleV2Stage { down, blocks });
            cin = cout;
        }
        let layers =
            <[ShuffleV2Stage; 3]>::try_from(layers).map_err(|_| crate::Error::invalid("ShuffleV2", "three stages"))?;
        Ok(ShuffleNetV2 {
            conv1,
            bn1,
            layers,
            conv2: conv(out_channels[2], out_channels[3], 1, 1, 1, rng, dev)?,
            bn2: BatchNorm2d::new(out_channels[3], dev)?,
            linear: Linear::new(out_channels[3], num_classes, true, rng, dev)?,
        })
    }
}

impl Network for ShuffleNetV2 {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        let f0 = self.bn1.forward_fused(&self.conv1.forward(x)?, None, FusedRelu::Functional)?;
        let (stages, preact_stages) = staged_features(f0, &self.layers, ShuffleV2Stage::forward_preact)?;
        let head = self.bn2.forward_fused(&self.conv2.forward(&stages[3])?, None, FusedRelu::Functional)?;
        // F.avg_pool2d(out, 4) over the 4x4 map: the global average.
        let pooled = head.adaptive_avg_pool2d(1, 1)?.flatten_from(1)?;
        let logits = self.linear.forward(&pooled)?;
        Ok(Features { stages, preact_stages, final_map: 3, head_map: Some(head), pooled, logits })
    }
    fn classifier(&self) -> &Linear {
        &self.linear
    }
}

impl Module for ShuffleNetV2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v = named!(self; conv1, bn1);
        v.extend(layer_children(&self.layers));
        v.extend(named!(self; conv2, bn2, linear));
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v = named_mut!(self; conv1, bn1);
        v.extend(self.layers.iter_mut().map(|l| l as &mut dyn Module));
        v.extend(named_mut!(self; conv2, bn2, linear));
        v
    }
    module_boilerplate!();
}
