//! Initialisers, all driven by the run's `Rng` (values are drawn on the host, so a seed gives
//! the same weights on every device). Per-tensor functions follow `torch.nn.init`; `Init`
//! applies a whole-network scheme the way the PyTorch model files do in their `__init__`.

use crate::error::Result;
use crate::invalid_err;
use crate::nn::layers::{BatchNorm, Conv2d, LayerNorm, Linear};
use crate::nn::module::Module;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Which fan a variance-scaling initialiser preserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    FanIn,
    FanOut,
}

/// PyTorch's `_calculate_fan_in_and_fan_out`: dim 1 (resp. 0) times the receptive field.
pub fn fan_in_out(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 {
        invalid_err!("init", "fan in/out needs a tensor of rank >= 2, got shape {shape:?}");
    }
    let receptive: usize = shape[2..].iter().product();
    Ok((shape[1] * receptive, shape[0] * receptive))
}

fn fan(t: &Tensor, mode: FanMode) -> Result<usize> {
    let (fi, fo) = fan_in_out(t.dims())?;
    let f = if mode == FanMode::FanIn { fi } else { fo };
    if f == 0 {
        invalid_err!("init", "zero fan for tensor of shape {}", t.shape());
    }
    Ok(f)
}

/// Overwrite `t` in place (id kept) with values drawn one by one.
fn fill_with(t: &Tensor, mut draw: impl FnMut() -> f32) -> Result<()> {
    let v: Vec<f32> = (0..t.numel()).map(|_| draw()).collect();
    t.copy_from_slice(&v)
}

pub fn constant_(t: &Tensor, value: f32) -> Result<()> {
    t.copy_from_slice(&vec![value; t.numel()])
}

/// U(lo, hi).
pub fn uniform_(t: &Tensor, lo: f32, hi: f32, rng: &mut Rng) -> Result<()> {
    if lo.is_nan() || hi.is_nan() || lo > hi {
        invalid_err!("init", "uniform bounds {lo} > {hi}");
    }
    fill_with(t, || rng.uniform(lo, hi))
}

/// N(mean, std²).
pub fn normal_(t: &Tensor, mean: f32, std: f32, rng: &mut Rng) -> Result<()> {
    if std.is_nan() || std < 0.0 {
        invalid_err!("init", "normal std {std} must be non-negative");
    }
    fill_with(t, || mean + std * rng.normal())
}

/// N(mean, std²) restricted to [lo, hi] by rejection (timm's `trunc_normal_`; bounds are
/// absolute values, as in timm).
pub fn trunc_normal_(t: &Tensor, mean: f32, std: f32, lo: f32, hi: f32, rng: &mut Rng) -> Result<()> {
    if std.is_nan()
        || std <= 0.0
        || lo.is_nan()
        || hi.is_nan()
        || lo >= hi
        || mean + 6.0 * std < lo
        || mean - 6.0 * std > hi
    {
        invalid_err!("init", "truncated normal N({mean}, {std}²) on [{lo}, {hi}] is empty or degenerate");
    }
    fill_with(t, || loop {
        let x = mean + std * rng.normal();
        if (lo..=hi).contains(&x) {
            break x;
        }
    })
}

/// `kaiming_uniform_(t, a, mode, nonlinearity='leaky_relu')`: U(±gain·√(3/fan)) with
/// gain = √(2/(1+a²)).
pub fn kaiming_uniform_(t: &Tensor, a: f32, mode: FanMode, rng: &mut Rng) -> Result<()> {
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    let bound = gain * (3.0 / fan(t, mode)? as f32).sqrt();
    uniform_(t, -bound, bound, rng)
}

/// `kaiming_normal_(t, mode, nonlinearity='relu')`: N(0, 2/fan).
pub fn kaiming_normal_(t: &Tensor, mode: FanMode, rng: &mut Rng) -> Result<()> {
    let std = (2.0 / fan(t, mode)? as f32).sqrt();
    normal_(t, 0.0, std, rng)
}

/// `xavier_uniform_(t, gain)`: U(±gain·√(6/(fan_in+fan_out))).
pub fn xavier_uniform_(t: &Tensor, gain: f32, rng: &mut Rng) -> Result<()> {
    let (fi, fo) = fan_in_out(t.dims())?;
    let bound = gain * (6.0 / (fi + fo).max(1) as f32).sqrt();
    uniform_(t, -bound, bound, rng)
}

/// PyTorch's default for Conv2d and Linear: weight kaiming_uniform(a=√5), which is
/// U(±1/√fan_in), and bias U(±1/√fan_in).
pub fn pytorch_default_weight_bias(weight: &Tensor, bias: Option<&Tensor>, rng: &mut Rng) -> Result<()> {
    kaiming_uniform_(weight, 5f32.sqrt(), FanMode::FanIn, rng)?;
    if let Some(b) = bias {
        let bound = 1.0 / (fan(weight, FanMode::FanIn)? as f32).sqrt();
        uniform_(b, -bound, bound, rng)?;
    }
    Ok(())
}

/// A whole-network initialisation scheme. Every scheme sets norm layers to weight 1, bias 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// What construction gives: Conv2d/Linear re-drawn with PyTorch's defaults; BatchNorm
    /// running statistics reset too (PyTorch's `reset_parameters`).
    PytorchDefault,
    /// The ResNet recipe: conv weights kaiming_normal(fan_out, relu), std √(2/fan_out); conv
    /// biases and Linear layers keep their values, as the PyTorch model files leave them.
    KaimingNormalFanOut,
    /// Conv2d and Linear weights N(mean, std²), biases 0: the Gaussian init of zero-cost
    /// proxies (N(0, 1) in NASWOT/Zen-NAS style scoring).
    Normal { mean: f32, std: f32 },
    /// timm's ViT recipe: Linear weights trunc_normal(std, [-2, 2]), Linear biases 0.
    TruncNormal { std: f32 },
}

impl Init {
    /// Applies the scheme to every Conv2d, Linear, BatchNorm and LayerNorm in the tree, in
    /// module order (weight before bias), so a seed fixes the result.
    pub fn apply(&self, module: &dyn Module, rng: &mut Rng) -> Result<()> {
        let mut result = Ok(());
        module.visit_modules("", &mut |_, m| {
            if result.is_ok() {
                result = self.apply_one(m, rng);
            }
        });
        result
    }

    fn apply_one(&self, m: &dyn Module, rng: &mut Rng) -> Result<()> {
        let any = m.as_any();
        if let Some(c) = any.downcast_ref::<Conv2d>() {
            self.weight_bias(&c.weight, c.bias.as_ref(), true, rng)
        } else if let Some(l) = any.downcast_ref::<Linear>() {
            self.weight_bias(&l.weight, l.bias.as_ref(), false, rng)
        } else if let Some(bn) = any.downcast_ref::<BatchNorm>() {
            if let (Some(w), Some(b)) = (&bn.weight, &bn.bias) {
                constant_(w, 1.0)?;
                constant_(b, 0.0)?;
            }
            if *self == Init::PytorchDefault {
                bn.reset_running_stats()?;
            }
            Ok(())
        } else if let Some(ln) = any.downcast_ref::<LayerNorm>() {
            constant_(&ln.weight, 1.0)?;
            constant_(&ln.bias, 0.0)
        } else {
            // Attention and containers hold their parameters in child layers, visited next.
            Ok(())
        }
    }

    fn weight_bias(&self, w: &Tensor, b: Option<&Tensor>, is_conv: bool, rng: &mut Rng) -> Result<()> {
        match *self {
            Init::PytorchDefault => pytorch_default_weight_bias(w, b, rng),
            Init::KaimingNormalFanOut if is_conv => kaiming_normal_(w, FanMode::FanOut, rng),
            Init::KaimingNormalFanOut => Ok(()),
            Init::Normal { mean, std } => {
                normal_(w, mean, std, rng)?;
                b.map_or(Ok(()), |b| constant_(b, 0.0))
            }
            Init::TruncNormal { std } if !is_conv => {
                trunc_normal_(w, 0.0, std, -2.0, 2.0, rng)?;
                b.map_or(Ok(()), |b| constant_(b, 0.0))
            }
            Init::TruncNormal { .. } => Ok(()),
        }
    }
}
