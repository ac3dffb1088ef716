//! Wide ResNets as RepDistiller / mdistiller define them (`models/wrn.py`, `wrn_16_1` ...
//! `wrn_40_2`): depth 6n+4, widths 16 / 16k / 32k / 64k, pre-activation BasicBlocks
//! (bn-relu-conv-bn-relu-conv) with a bias-free 1x1 `convShortcut` where the width changes, a
//! final BN + ReLU, average pooling over the 8x8 map and a linear classifier.
//!
//! Init as in `WideResNet.__init__`: conv weights N(0, 2/(k·k·out)), BN 1/0, the classifier's
//! weight left at PyTorch's default and its bias 0. State-dict names: `conv1.weight`,
//! `block1.layer.0.bn1.weight`, `block2.layer.0.convShortcut.weight`, `bn1.*`, `fc.*`.
//!
//! Features follow mdistiller's `feats` exactly: `stages` = [conv1 output, block1, block2,
//! block3 outputs] (none of them activated: the blocks are pre-activation), `preact_stages` =
//! [conv1 output, block2.layer[0].bn1(f1), block3.layer[0].bn1(f2), bn1(f3)] (the BN before the
//! next ReLU, taken from the forward pass itself instead of a second BN call, so the running
//! statistics move once per batch, not twice as in mdistiller). `final_map` is block3's output,
//! the map mdistiller's `feats[-1]` (RepDistiller's `feats[-2]`) hands to SP and AT; the
//! classifier reads the global average of `relu(preact_stages[3])`.

use crate::models::parts::{conv, named, named_mut, zero, Blocks};
use crate::models::{Features, Network};
use crate::module_boilerplate;
use crate::nn::{Activation, BatchNorm2d, Conv2d, FusedRelu, Init, Linear, Module};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, Device, Result};

/// wrn.py's `BasicBlock` (dropRate 0, as every zoo constructor uses).
pub struct WrnBlock {
    bn1: BatchNorm2d,
    conv1: Conv2d,
    bn2: BatchNorm2d,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl WrnBlock {
    pub fn new(in_planes: usize, out_planes: usize, stride: usize, rng: &mut Rng, dev: Device) -> Result<WrnBlock> {
        let conv_shortcut =
            if in_planes != out_planes { Some(conv(in_planes, out_planes, 1, stride, 1, rng, dev)?) } else { None };
        Ok(WrnBlock {
            bn1: BatchNorm2d::new(in_planes, dev)?,
            conv1: conv(in_planes, out_planes, 3, stride, 1, rng, dev)?,
            bn2: BatchNorm2d::new(out_planes, dev)?,
            conv2: conv(out_planes, out_planes, 3, 1, 1, rng, dev)?,
            conv_shortcut,
        })
    }

    /// The block's output and `bn1(x)` (its input after BN, before the ReLU). Where the width
    /// changes, the shortcut reads the activated input, otherwise the raw input.
    pub fn forward_bn(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = self.bn1.forward(x)?;
        let a = Activation::Relu.forward(&b)?;
        let h = self.bn2.forward_fused(&self.conv1.forward(&a)?, None, FusedRelu::Module)?;
        let h = self.conv2.forward(&h)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(&a)?,
            None => x.clone(),
        };
        Ok((shortcut.add(&h)?, b))
    }
}

impl Module for WrnBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_bn(x)?.0)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v = named!(self; bn1, conv1, bn2, conv2);
        if let Some(c) = &self.conv_shortcut {
            v.push(("convShortcut".into(), c));
        }
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v = named_mut!(self; bn1, conv1, bn2, conv2);
        if let Some(c) = &mut self.conv_shortcut {
            v.push(c);
        }
        v
    }
    module_boilerplate!();
}

/// wrn.py's `NetworkBlock`: a stage, its blocks under `layer`.
pub struct NetworkBlock {
    layer: Blocks<WrnBlock>,
}

impl NetworkBlock {
    /// The stage's output and its first block's `bn1(x)` (mdistiller's preact of the previous
    /// stage).
    fn forward_bn(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut first_bn = None;
        let mut y = x.clone();
        for b in &self.layer.0 {
            let (out, bn) = b.forward_bn(&y)?;
            first_bn.get_or_insert(bn);
            y = out;
        }
        Ok((y, first_bn.unwrap_or_else(|| x.clone())))
    }
}

impl Module for NetworkBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.layer.forward(x)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        named!(self; layer)
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        named_mut!(self; layer)
    }
    module_boilerplate!();
}

/// wrn.py's `WideResNet(depth, num_classes, widen_factor)`.
pub struct WideResNet {
    conv1: Conv2d,
    block1: NetworkBlock,
    block2: NetworkBlock,
    block3: NetworkBlock,
    bn1: BatchNorm2d,
    fc: Linear,
}

impl WideResNet {
    /// `wrn_40_2` = `WideResNet::new(40, 2, 100, ..)`.
    pub fn new(depth: usize, widen: usize, num_classes: usize, rng: &mut Rng, dev: Device) -> Result<WideResNet> {
        if depth < 10 || !(depth - 4).is_multiple_of(6) || widen == 0 {
            invalid_err!("wrn", "depth {depth} must be 6n+4 (10, 16, 22, 28, 40, ...) and widen factor {widen} >= 1");
        }
        let n = (depth - 4) / 6;
        let ch = [16, 16 * widen, 32 * widen, 64 * widen];
        let conv1 = conv(3, ch[0], 3, 1, 1, rng, dev)?;
        let stage = |cin: usize, cout: usize, stride: usize, rng: &mut Rng| -> Result<NetworkBlock> {
            let blocks = (0..n)
                .map(|i| {
                    let (cin, stride) = if i == 0 { (cin, stride) } else { (cout, 1) };
                    WrnBlock::new(cin, cout, stride, rng, dev)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(NetworkBlock { layer: Blocks(blocks) })
        };
        let block1 = stage(ch[0], ch[1], 1, rng)?;
        let block2 = stage(ch[1], ch[2], 2, rng)?;
        let block3 = stage(ch[2], ch[3], 2, rng)?;
        let net = WideResNet {
            conv1,
            block1,
            block2,
            block3,
            bn1: BatchNorm2d::new(ch[3], dev)?,
            fc: Linear::new(ch[3], num_classes, true, rng, dev)?,
        };
        Init::KaimingNormalFanOut.apply(&net, rng)?;
        zero(net.fc.bias.as_ref())?;
        Ok(net)
    }
}

impl Network for WideResNet {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        let f0 = self.conv1.forward(x)?;
        let (f1, _) = self.block1.forward_bn(&f0)?;
        let (f2, f1_pre) = self.block2.forward_bn(&f1)?;
        let (f3, f2_pre) = self.block3.forward_bn(&f2)?;
        let f3_pre = self.bn1.forward(&f3)?;
        // F.avg_pool2d(out, 8): the global average at 32x32.
        let head = Activation::Relu.forward(&f3_pre)?;
        let pooled = head.adaptive_avg_pool2d(1, 1)?.flatten_from(1)?;
        let logits = self.fc.forward(&pooled)?;
        Ok(Features {
            stages: vec![f0.clone(), f1, f2, f3],
            preact_stages: vec![f0, f1_pre, f2_pre, f3_pre],
            final_map: 3,
            head_map: Some(head),
            pooled,
            logits,
        })
    }
    fn classifier(&self) -> &Linear {
        &self.fc
    }
}

impl Module for WideResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        named!(self; conv1, block1, block2, block3, bn1, fc)
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        named_mut!(self; conv1, block1, block2, block3, bn1, fc)
    }
    module_boilerplate!();
}
