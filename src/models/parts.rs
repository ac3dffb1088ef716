//! Pieces the zoo's network files share: a typed `nn.ModuleList`/`nn.Sequential` of blocks,
//! blocks that report their pre-activation and the stem/stages/linear network built from them
//! ([`StagedNet`]: ResNet50 and ShuffleV1), the bias-free "same" convolution every family uses,
//! and the `_initialize_weights` of RepDistiller's vgg.py / mobilenetv2.py.

use crate::models::{Features, Network};
use crate::module_boilerplate;
use crate::nn::init::{constant_, kaiming_normal_, normal_};
use crate::nn::{BatchNorm, BatchNorm2d, Conv2d, Conv2dConfig, FanMode, FusedRelu, Init, Linear, Module};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Device, Result};

/// `named!(self; conv1, bn1)`: children by their field names, for `Module::children`.
macro_rules! named {
    ($s:ident; $($f:ident),+ $(,)?) => {
        vec![$((stringify!($f).to_string(), &$s.$f as &dyn $crate::nn::Module)),+]
    };
}

/// `named_mut!(self; conv1, bn1)`: the same fields for `Module::children_mut`.
macro_rules! named_mut {
    ($s:ident; $($f:ident),+ $(,)?) => {
        vec![$(&mut $s.$f as &mut dyn $crate::nn::Module),+]
    };
}

pub(crate) use {named, named_mut};

/// An `nn.Sequential` (or `nn.ModuleList`) of blocks of one type: children named "0", "1", ...
/// like PyTorch's, but typed, so a stage can ask its blocks for their pre-activations.
pub struct Blocks<T>(pub Vec<T>);

impl<T: Module + 'static> Module for Blocks<T> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for b in &self.0 {
            y = b.forward(&y)?;
        }
        Ok(y)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.0.iter().enumerate().map(|(i, b)| (i.to_string(), b as &dyn Module)).collect()
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        self.0.iter_mut().map(|b| b as &mut dyn Module).collect()
    }
    module_boilerplate!();
}

/// A block that also returns the sum before its final ReLU (the `is_last` blocks' `preact`).
pub trait PreactBlock: Module + 'static {
    fn forward_preact(&self, x: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// The layout resnetv2.py and ShuffleNetv1.py share: a `conv1`-`bn1`-ReLU stem, stages
/// `layer1`, `layer2`, ... of [`PreactBlock`]s, global average pooling and `linear`. Features:
/// the stem and every stage output, the stages' last preacts, `final_map` the last stage.
pub struct StagedNet<B> {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Blocks<B>>,
    linear: Linear,
}

impl<B: PreactBlock> StagedNet<B> {
    pub fn from_parts(conv1: Conv2d, bn1: BatchNorm2d, layers: Vec<Blocks<B>>, linear: Linear) -> StagedNet<B> {
        StagedNet { conv1, bn1, layers, linear }
    }
}

impl<B: PreactBlock> Network for StagedNet<B> {
    fn forward_features(&self, x: &Tensor) -> Result<Features> {
        // ResNetV2's and the ShuffleNets' stems end in `F.relu`.
        let f0 = self.bn1.forward_fused(&self.conv1.forward(x)?, None, FusedRelu::Functional)?;
        let (stages, preact_stages) = staged_features(f0, &self.layers, |l, y| run_preact(&l.0, y, B::forward_preact))?;
        let final_map = stages.len() - 1;
        let pooled = stages[final_map].adaptive_avg_pool2d(1, 1)?.flatten_from(1)?;
        let logits = self.linear.forward(&pooled)?;
        Ok(Features { stages, preact_stages, final_map, head_map: None, pooled, logits })
    }
    fn classifier(&self) -> &Linear {
        &self.linear
    }
}

impl<B: PreactBlock> Module for StagedNet<B> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features(x)?.logits)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v = named!(self; conv1, bn1);
        v.extend(layer_children(&self.layers));
        v.extend(named!(self; linear));
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v = named_mut!(self; conv1, bn1);
        v.extend(self.layers.iter_mut().map(|l| l as &mut dyn Module));
        v.extend(named_mut!(self; linear));
        v
    }
    module_boilerplate!();
}

/// Runs blocks that return (output, preact), returning the last block's pair.
pub fn run_preact<B>(
    blocks: &[B],
    x: &Tensor,
    f: impl Fn(&B, &Tensor) -> Result<(Tensor, Tensor)>,
) -> Result<(Tensor, Tensor)> {
    let (mut y, mut pre) = (x.clone(), x.clone());
    for b in blocks {
        (y, pre) = f(b, &y)?;
    }
    Ok((y, pre))
}

/// Runs the stages after a stem, each returning (output, preact), and collects mdistiller's
/// `feats` and `preact_feats` lists (the stem heads both).
pub fn staged_features<S>(
    stem: Tensor,
    stages: &[S],
    f: impl Fn(&S, &Tensor) -> Result<(Tensor, Tensor)>,
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let (mut feats, mut preacts) = (vec![stem.clone()], vec![stem]);
    for s in stages {
        let (out, pre) = f(s, &feats[feats.len() - 1])?;
        feats.push(out);
        preacts.push(pre);
    }
    Ok((feats, preacts))
}

/// Stages as children named `layer1`, `layer2`, ... (PyTorch's `self.layer1 = ...`).
pub fn layer_children<L: Module>(layers: &[L]) -> impl Iterator<Item = (String, &dyn Module)> {
    layers.iter().enumerate().map(|(i, l)| (format!("layer{}", i + 1), l as &dyn Module))
}

/// A bias-free k x k convolution with padding k/2 (`nn.Conv2d(cin, cout, k, stride, k//2,
/// groups=groups, bias=False)`).
pub fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    groups: usize,
    rng: &mut Rng,
    dev: Device,
) -> Result<Conv2d> {
    Conv2d::new(
        cin,
        cout,
        k,
        Conv2dConfig::default().stride(stride).padding(k / 2).groups(groups).bias(false),
        rng,
        dev,
    )
}

/// `_initialize_weights` of RepDistiller's vgg.py and mobilenetv2.py: conv weights
/// N(0, 2/(k·k·out_channels)) (= kaiming_normal fan_out, grouped convs included), conv biases 0,
/// BN weight 1 / bias 0, Linear weights N(0, 0.01²) and biases 0.
pub fn repdistiller_init(net: &dyn Module, rng: &mut Rng) -> Result<()> {
    let mut result = Ok(());
    net.visit_modules("", &mut |_, m| {
        if result.is_err() {
            return;
        }
        let any = m.as_any();
        result = if let Some(c) = any.downcast_ref::<Conv2d>() {
            kaiming_normal_(&c.weight, FanMode::FanOut, rng).and_then(|_| zero(c.bias.as_ref()))
        } else if let Some(l) = any.downcast_ref::<Linear>() {
            normal_(&l.weight, 0.0, 0.01, rng).and_then(|_| zero(l.bias.as_ref()))
        } else if any.is::<BatchNorm>() {
            Init::KaimingNormalFanOut.apply(m, rng)
        } else {
            Ok(())
        };
    });
    result
}

/// Sets an optional bias to zero.
pub fn zero(bias: Option<&Tensor>) -> Result<()> {
    bias.map_or(Ok(()), |b| constant_(b, 0.0))
}
