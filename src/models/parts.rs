//! Pieces the zoo's network files share: a typed `nn.ModuleList`/`nn.Sequential` of blocks, the
//! bias-free "same" convolution every family uses, and the `_initialize_weights` of
//! RepDistiller's vgg.py / mobilenetv2.py.

use crate::module_boilerplate;
use crate::nn::init::{constant_, kaiming_normal_, normal_};
use crate::nn::{BatchNorm, Conv2d, Conv2dConfig, FanMode, Init, Linear, Module};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Device, Result};

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
