//! MobileNetV2 as RepDistiller / mdistiller define it for CIFAR (`models/mobilenetv2.py`, the
//! RCO implementation); the zoo's `MobileNetV2` is its `mobile_half` = `mobilenetv2_T_w(T=6,
//! W=0.5)`.
//!
//! Structure (as the file has it, which differs from the ImageNet paper in two places: the t=1
//! block keeps its expansion 1x1 conv, and the second setting row has stride 1, not 2; like the
//! paper it keeps the last 1x1 conv at 1280 channels for multipliers <= 1, so 1280 for the half
//! width): `conv1` = conv3x3(3→int(32w), stride 2)-BN-ReLU; seven `blocks` of InvertedResiduals
//! (t, c, n, s) = (1,16,1,1), (T,24,2,1), (T,32,3,2), (T,64,4,2), (T,96,3,1), (T,160,3,2),
//! (T,320,1,1) with c scaled to int(c·w), each `conv` = 1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU,
//! 1x1 project-BN, plus the input where stride 1 and widths match; `conv2` = 1x1 to 1280-BN-ReLU;
//! average pooling over the 2x2 map; `classifier` = Sequential(Linear(1280, classes)).
//!
//! Init: `_initialize_weights` (conv N(0, 2/(k·k·out)), BN 1/0, Linear N(0, 0.01²), biases 0).
//! State-dict names: `conv1.0.weight`, `conv1.1.running_var`, `blocks.1.0.conv.3.weight` (a
//! depthwise conv), `blocks.6.0.conv.7.bias`, `conv2.0.weight`, `classifier.0.weight`.
//!
//! Features as mdistiller: `stages` = [conv1, blocks[1], blocks[2], blocks[4], blocks[6]
//! outputs]; the blocks end without an activation and mdistiller defines no `preact_feats` for
//! this network, so `preact_stages` repeats `stages`. `final_map` = blocks[6]'s output (mdistiller's
//! `feats[-1]`); the classifier reads the pooled output of `conv2` (1280 channels).

use crate::models::parts::{conv, named, named_mut, repdistiller_init, Blocks};
use crate::models::{Features, Network};
use crate::module_boilerplate;
use crate::nn::{Activation, BatchNorm2d, Linear, Module, Sequential};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, Device, Result};

/// `conv_bn` / `conv_1x1_bn`: conv (bias-free) - BN - ReLU.
fn conv_bn_relu(cin: usize, cout: usize, k: usize, stride: usize, rng: &mut Rng, dev: Device) -> Result<Sequential> {
    Ok(Sequential::new()
        .with(conv(cin, cout, k, stride, 1, rng, dev)?)
        .with(BatchNorm2d::new(cout, dev)?)
        .with(Activation::Relu))
}

/// mobilenetv2.py's `InvertedResidual(inp, oup, stride, expand_ratio)`.
pub struct InvertedResidual {
    conv: Sequential,
    use_res_connect: bool,
}

impl InvertedResidual {
    pub fn new(inp: usize, oup: usize, stride: usize, expand: usize, rng: &mut Rng, dev: Device) -> Result<Self> {
        if !(1..=2).contains(&stride) || expand == 0 {
            invalid_err!(
                "MobileNetV2",
                "inverted residual needs stride 1 or 2 and expansion >= 1, got {stride}, {expand}"
            );
        }
        let hidden = inp * expand;
        let conv = Sequential::new()
            .with(conv(inp, hidden, 1, 1, 1, rng, dev)?)
            .with(BatchNorm2d::new(hidden, dev)?)
            .with(Activation::Relu)
            .with(conv(hidden, hidden, 3, stride, hidden, rng, dev)?)
            .with(BatchNorm2d::new(hidden, dev)?)
            .with(Activation::Relu)
            .with(conv(hidden, oup, 1, 1, 1, rng, dev)?)
            .with(BatchNorm2d::new(oup, dev)?);
        Ok(InvertedResidual { conv, use_res_connect: stride == 1 && inp == oup })
    }
}

impl Module for InvertedResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv.forward(x)?;
        if self.use_res_connect {
            x.add(&y)
        } else {
            Ok(y)
        }
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        named!(self; conv)
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        named_mut!(self; conv)
    }
    module_boilerplate!();
}

/// mobilenetv2.py's `MobileNetV2(T, feature_dim, input_size=32, width_mult)`.
pub struct MobileNetV2 {
    conv1: Sequential,
    blocks: Blocks<Blocks<InvertedResidual>>,
    conv2: Sequential,
    classifier: Linear,
}

impl MobileNetV2 {
    /// `mobile_half(classes)` = `MobileNetV2::new(6, 0.5, classes, ..)`.
    pub fn new(t: usize, width_mult: f64, num_classes: usize, rng: &mut Rng, dev: Device) -> Result<MobileNetV2> {
        let scaled = |c: usize| (c as f64 * width_mult) as usize;
        if t == 0 || !width_mult.is_finite() || scaled(16) == 0 {
            invalid_err!("MobileNetV2", "expansion T={t} must be >= 1 and width multiplier {width_mult} at least 1/16");
        }
        let setting: [(usize, usize, usize, usize); 7] =
            [(1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1), (t, 160, 3, 2), (t, 320, 1, 1)];
        let mut cin = scaled(32);
        let conv1 = conv_bn_relu(3, cin, 3, 2, rng, dev)?;
        let mut blocks = Vec::with_capacity(setting.len());
        for (e, c, n, s) in setting {
            let cout = scaled(c);
            let mut stage = Vec::with_capacity(n);
            for i in 0..n {
                stage.push(InvertedResidual::new(cin, cout, if i == 0 { s } else { 1 }, e, rng, dev)?);
                cin = cout;
            }
            blocks.push(Blocks(stage));
        }
        let last = if width_mult > 1.0 { (1280.0 * width_mult) as usize } else { 1280 };
        let conv2 = conv_bn_relu(cin, last, 1, 1, rng, dev)?;
        let net = MobileNetV2 {
            conv1,
            blocks: Blocks(blocks),
            conv2,
            classifier: Linear::new(last, num_classes, true, rng, dev)?,
        };
        repdistiller_init(&net, rng)?;
        Ok(net)
    }
}

impl Network for MobileNetV2 {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        let f0 = self.conv1.forward(x)?;
        let mut stages = vec![f0.clone()];
        let mut y = f0;
        for (i, block) in self.blocks.0.iter().enumerate() {
            y = block.forward(&y)?;
            if [1, 2, 4, 6].contains(&i) {
                stages.push(y.clone());
            }
        }
        // nn.AvgPool2d(input_size // 16, ceil_mode=True) over the 2x2 map: the global average.
        let head = self.conv2.forward(&y)?;
        let pooled = head.adaptive_avg_pool2d(1, 1)?.flatten_from(1)?;
        let logits = self.classifier.forward(&pooled)?;
        Ok(Features { preact_stages: stages.clone(), stages, final_map: 4, head_map: Some(head), pooled, logits })
    }
    fn classifier(&self) -> &Linear {
        &self.classifier
    }
}

impl Module for MobileNetV2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v = named!(self; conv1, blocks, conv2);
        // PyTorch's one-element nn.Sequential around the Linear.
        v.push(("classifier.0".into(), &self.classifier));
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        named_mut!(self; conv1, blocks, conv2, classifier)
    }
    module_boilerplate!();
}
