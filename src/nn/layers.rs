//! The standard layers, each mirroring its PyTorch counterpart's parameter names, shapes and
//! default initialisation, so state dicts translate one to one.

use crate::backend::{Device, UnaryOp};
use crate::error::Result;
use crate::module_boilerplate;
use crate::nn::init;
use crate::nn::module::{LocalTensor, Module};
use crate::rng::Rng;
use crate::tensor::taps::{self, TapKind};
use crate::tensor::Tensor;
use crate::{invalid_err, shape_err};

/// A fresh trainable leaf filled with `value`.
fn param_full(value: f32, shape: &[usize], device: Device) -> Result<Tensor> {
    Ok(Tensor::full(value, shape, device)?.requires_grad_())
}

// ====================================================================== Conv2d

/// Options of `Conv2d` besides the channel counts and kernel (PyTorch's defaults: stride 1,
/// no padding, one group, with bias).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub groups: usize,
    pub bias: bool,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Conv2dConfig { stride: (1, 1), padding: (0, 0), groups: 1, bias: true }
    }
}

impl Conv2dConfig {
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = (s, s);
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = (p, p);
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
}

/// `nn.Conv2d` (dilation 1): weight [out, in/groups, kh, kw], optional bias [out].
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub config: Conv2dConfig,
}

impl Conv2d {
    /// A square-kernel convolution with PyTorch's default initialisation.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        config: Conv2dConfig,
        rng: &mut Rng,
        device: Device,
    ) -> Result<Conv2d> {
        Conv2d::new_hw(in_channels, out_channels, (kernel, kernel), config, rng, device)
    }

    pub fn new_hw(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        config: Conv2dConfig,
        rng: &mut Rng,
        device: Device,
    ) -> Result<Conv2d> {
        let g = config.groups;
        if in_channels == 0 || out_channels == 0 || kernel.0 == 0 || kernel.1 == 0 {
            invalid_err!("Conv2d", "channels {in_channels}->{out_channels} and kernel {kernel:?} must be positive");
        }
        if g == 0 || !in_channels.is_multiple_of(g) || !out_channels.is_multiple_of(g) {
            invalid_err!("Conv2d", "groups={g} must divide in_channels={in_channels} and out_channels={out_channels}");
        }
        if config.stride.0 == 0 || config.stride.1 == 0 {
            invalid_err!("Conv2d", "stride {:?} must be positive", config.stride);
        }
        let shape = [out_channels, in_channels / g, kernel.0, kernel.1];
        let weight = param_full(0.0, &shape, device)?;
        let bias = if config.bias { Some(param_full(0.0, &[out_channels], device)?) } else { None };
        let conv = Conv2d { weight, bias, in_channels, out_channels, kernel, config };
        conv.reset_parameters(rng)?;
        Ok(conv)
    }

    /// PyTorch's default: kaiming_uniform(a=√5) for the weight, i.e. U(±1/√fan_in), and the
    /// bias U(±1/√fan_in).
    pub fn reset_parameters(&self, rng: &mut Rng) -> Result<()> {
        init::pytorch_default_weight_bias(&self.weight, self.bias.as_ref(), rng)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 4 || x.dims()[1] != self.in_channels {
            shape_err!("Conv2d", "expected input [n, {}, h, w], got {}", self.in_channels, x.shape());
        }
        let mut y = x.conv2d(&self.weight, self.config.stride, self.config.padding, self.config.groups)?;
        if let Some(b) = &self.bias {
            y = y.add(&b.reshape([1, self.out_channels, 1, 1])?)?;
        }
        taps::record(TapKind::LayerOutput { weight: self.weight.id() }, &y);
        Ok(y)
    }
    fn local_tensors(&self) -> Vec<LocalTensor> {
        let mut v = vec![LocalTensor::param("weight", &self.weight)];
        if let Some(b) = &self.bias {
            v.push(LocalTensor::param("bias", b));
        }
        v
    }
    module_boilerplate!();
}

// ====================================================================== Linear

/// `nn.Linear`: y = x·Wᵀ + b with weight [out, in] (PyTorch layout), over the last dim of x.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize, bias: bool, rng: &mut Rng, device: Device) -> Result<Linear> {
        if in_features == 0 || out_features == 0 {
            invalid_err!("Linear", "features {in_features}->{out_features} must be positive");
        }
        let weight = param_full(0.0, &[out_features, in_features], device)?;
        let bias = if bias { Some(param_full(0.0, &[out_features], device)?) } else { None };
        let l = Linear { weight, bias, in_features, out_features };
        l.reset_parameters(rng)?;
        Ok(l)
    }

    /// PyTorch's default: U(±1/√in_features) for weight and bias.
    pub fn reset_parameters(&self, rng: &mut Rng) -> Result<()> {
        init::pytorch_default_weight_bias(&self.weight, self.bias.as_ref(), rng)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() == 0 || x.dims()[x.rank() - 1] != self.in_features {
            shape_err!("Linear", "expected input [..., {}], got {}", self.in_features, x.shape());
        }
        // matmul needs a row dim: a single vector is treated as one row and restored after.
        let x2 = if x.rank() == 1 { x.reshape([1, self.in_features])? } else { x.clone() };
        let mut y = x2.matmul_t(&self.weight, false, true)?;
        if let Some(b) = &self.bias {
            y = y.add(b)?;
        }
        if x.rank() == 1 {
            y = y.reshape([self.out_features])?;
        }
        taps::record(TapKind::LayerOutput { weight: self.weight.id() }, &y);
        Ok(y)
    }
    fn local_tensors(&self) -> Vec<LocalTensor> {
        let mut v = vec![LocalTensor::param("weight", &self.weight)];
        if let Some(b) = &self.bias {
            v.push(LocalTensor::param("bias", b));
        }
        v
    }
    module_boilerplate!();
}

// ====================================================================== BatchNorm

thread_local! {
    static BYPASS_BATCHNORM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While alive, every BatchNorm on this thread is the identity (zero-cost-nas's `bn=False`
/// measures, e.g. SynFlow, score the network with its BatchNorms removed).
pub struct BatchNormBypass {
    previous: bool,
}

impl BatchNormBypass {
    pub fn new() -> BatchNormBypass {
        BatchNormBypass { previous: BYPASS_BATCHNORM.with(|b| b.replace(true)) }
    }
}

impl Default for BatchNormBypass {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BatchNormBypass {
    fn drop(&mut self) {
        BYPASS_BATCHNORM.with(|b| b.set(self.previous));
    }
}

/// `nn.BatchNorm2d` / `nn.BatchNorm1d`: normalises dim 1 of [n, c, ...]. In train mode it
/// uses batch statistics and updates `running_mean`, `running_var` (unbiased) and
/// `num_batches_tracked`; in eval mode it uses the running statistics.
pub struct BatchNorm {
    /// γ and β; `None` when not affine (then the state dict has no weight/bias either).
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    /// A scalar, as in PyTorch (stored as f32: exact up to 2^24 batches).
    pub num_batches_tracked: Tensor,
    pub num_features: usize,
    pub eps: f32,
    /// `None` = cumulative average (PyTorch `momentum=None`).
    pub momentum: Option<f32>,
    training: bool,
    /// Accepted input ranks (4 for 2d; 2 or 3 for 1d), as PyTorch checks them.
    ranks: &'static [usize],
    /// Constant γ=1, β=0 for the non-affine case (the kernels always take an affine).
    unit: Option<(Tensor, Tensor)>,
}

/// `nn.BatchNorm2d`: `BatchNorm2d::new(c, device)`.
pub type BatchNorm2d = BatchNorm;

impl BatchNorm {
    /// `nn.BatchNorm2d(c)`: eps 1e-5, momentum 0.1, affine, starts in training mode.
    pub fn new(num_features: usize, device: Device) -> Result<BatchNorm> {
        BatchNorm::with_options(num_features, 1e-5, Some(0.1), true, &[4], device)
    }

    /// `nn.BatchNorm1d(c)` over [n, c] or [n, c, l].
    pub fn new_1d(num_features: usize, device: Device) -> Result<BatchNorm> {
        BatchNorm::with_options(num_features, 1e-5, Some(0.1), true, &[2, 3], device)
    }

    pub fn with_options(
        num_features: usize,
        eps: f32,
        momentum: Option<f32>,
        affine: bool,
        ranks: &'static [usize],
        device: Device,
    ) -> Result<BatchNorm> {
        if num_features == 0 {
            invalid_err!("BatchNorm", "num_features must be positive");
        }
        if eps.is_nan() || eps <= 0.0 {
            invalid_err!("BatchNorm", "eps {eps} must be positive");
        }
        if let Some(m) = momentum {
            if !(0.0..=1.0).contains(&m) {
                invalid_err!("BatchNorm", "momentum {m} must be in [0, 1]");
            }
        }
        let c = [num_features];
        let (weight, bias, unit) = if affine {
            (Some(param_full(1.0, &c, device)?), Some(param_full(0.0, &c, device)?), None)
        } else {
            (None, None, Some((Tensor::ones(c, device)?, Tensor::zeros(c, device)?)))
        };
        Ok(BatchNorm {
            weight,
            bias,
            running_mean: Tensor::zeros(c, device)?,
            running_var: Tensor::ones(c, device)?,
            num_batches_tracked: Tensor::scalar(0.0, device)?,
            num_features,
            eps,
            momentum,
            training: true,
            ranks,
            unit,
        })
    }

    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Back to the freshly constructed statistics (mean 0, var 1, no batches).
    pub fn reset_running_stats(&self) -> Result<()> {
        let c = self.num_features;
        self.running_mean.copy_from_slice(&vec![0.0; c])?;
        self.running_var.copy_from_slice(&vec![1.0; c])?;
        self.num_batches_tracked.copy_from_slice(&[0.0])
    }

    fn affine(&self) -> Result<(&Tensor, &Tensor)> {
        match (&self.weight, &self.bias, &self.unit) {
            (Some(w), Some(b), _) => Ok((w, b)),
            (_, _, Some((w, b))) => Ok((w, b)),
            _ => invalid_err!("BatchNorm", "weight and bias must be both present or both absent"),
        }
    }
}

impl BatchNorm {
    /// `relu(bn(x) + residual)` (each part optional): a ResNet block's tail. In eval mode with
    /// no gradient recorded this is one pass over x (`Tensor::batch_norm_eval_fused`), the frozen
    /// teacher's case; in train mode without a residual, batchnorm and ReLU are one op
    /// (`Tensor::batch_norm_train_act`); otherwise the separate ops. Values are the same either way.
    /// `relu` says whether the reference model applies an `nn.ReLU` module there (which forward
    /// hooks, so NASWOT, see) or `F.relu`.
    pub fn forward_fused(&self, x: &Tensor, residual: Option<&Tensor>, relu: FusedRelu) -> Result<Tensor> {
        let y = self.forward_fused_values(x, residual, relu != FusedRelu::No)?;
        if relu == FusedRelu::Module {
            // y > 0 exactly where the ReLU's input is, so the output gives the same codes.
            taps::record(TapKind::ReluModule, &y);
        }
        Ok(y)
    }

    fn forward_fused_values(&self, x: &Tensor, residual: Option<&Tensor>, relu: bool) -> Result<Tensor> {
        let bypass = BYPASS_BATCHNORM.with(|b| b.get());
        if !bypass && !self.training {
            self.check_input(x)?;
            let (w, b) = self.affine()?;
            return x.batch_norm_eval_fused(w, b, &self.running_mean, &self.running_var, self.eps, residual, relu);
        }
        if !bypass && relu && residual.is_none() {
            return self.forward_train(x, true);
        }
        let y = self.forward(x)?;
        let y = match residual {
            Some(r) => y.add(r)?,
            None => y,
        };
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    /// Train mode: batch statistics, running statistics and the batch counter updated.
    fn forward_train(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let (w, b) = self.affine()?;
        // PyTorch counts the batch first, so momentum=None averages over all batches so far.
        let batches = self.num_batches_tracked.item()? + 1.0;
        let factor = self.momentum.unwrap_or(1.0 / batches);
        let y = x.batch_norm_train_act(w, b, &self.running_mean, &self.running_var, factor, self.eps, relu)?;
        self.num_batches_tracked.copy_from_slice(&[batches])?;
        Ok(y)
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        if !self.ranks.contains(&x.rank()) || x.dims()[1] != self.num_features {
            shape_err!(
                "BatchNorm",
                "expected input of rank {:?} with {} channels in dim 1, got {}",
                self.ranks,
                self.num_features,
                x.shape()
            );
        }
        Ok(())
    }
}

impl Module for BatchNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        if BYPASS_BATCHNORM.with(|b| b.get()) {
            return Ok(x.clone());
        }
        let (w, b) = self.affine()?;
        if !self.training {
            return x.batch_norm_eval(w, b, &self.running_mean, &self.running_var, self.eps);
        }
        self.forward_train(x, false)
    }
    fn local_tensors(&self) -> Vec<LocalTensor> {
        let mut v = Vec::new();
        if let (Some(w), Some(b)) = (&self.weight, &self.bias) {
            v.push(LocalTensor::param("weight", w));
            v.push(LocalTensor::param("bias", b));
        }
        v.push(LocalTensor::buffer("running_mean", &self.running_mean));
        v.push(LocalTensor::buffer("running_var", &self.running_var));
        v.push(LocalTensor::buffer("num_batches_tracked", &self.num_batches_tracked));
        v
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    module_boilerplate!();
}

// ====================================================================== LayerNorm

/// `nn.LayerNorm(dim)` over the last dim (weight 1, bias 0).
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub dim: usize,
    pub eps: f32,
}

impl LayerNorm {
    /// PyTorch's eps is 1e-5; timm's ViTs use 1e-6.
    pub fn new(dim: usize, eps: f32, device: Device) -> Result<LayerNorm> {
        if dim == 0 || eps.is_nan() || eps <= 0.0 {
            invalid_err!("LayerNorm", "dim {dim} and eps {eps} must be positive");
        }
        Ok(LayerNorm { weight: param_full(1.0, &[dim], device)?, bias: param_full(0.0, &[dim], device)?, dim, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dims().last() != Some(&self.dim) {
            shape_err!("LayerNorm", "expected input [..., {}], got {}", self.dim, x.shape());
        }
        x.layer_norm(&self.weight, &self.bias, self.eps)
    }
    fn local_tensors(&self) -> Vec<LocalTensor> {
        vec![LocalTensor::param("weight", &self.weight), LocalTensor::param("bias", &self.bias)]
    }
    module_boilerplate!();
}

// ====================================================================== pooling

/// `nn.MaxPool2d(kernel, stride, padding)` (floor mode).
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl MaxPool2d {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> MaxPool2d {
        MaxPool2d { kernel, stride, padding }
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.max_pool2d(self.kernel, self.stride, self.padding)
    }
    module_boilerplate!();
}

/// `nn.AvgPool2d(kernel, stride, padding)`; `count_include_pad` defaults to true as in PyTorch.
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub count_include_pad: bool,
}

impl AvgPool2d {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> AvgPool2d {
        AvgPool2d { kernel, stride, padding, count_include_pad: true }
    }
}

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.avg_pool2d(self.kernel, self.stride, self.padding, self.count_include_pad)
    }
    module_boilerplate!();
}

/// `nn.AdaptiveAvgPool2d((h, w))`.
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveAvgPool2d {
    pub output: (usize, usize),
}

impl AdaptiveAvgPool2d {
    pub fn new(h: usize, w: usize) -> AdaptiveAvgPool2d {
        AdaptiveAvgPool2d { output: (h, w) }
    }
}

impl Module for AdaptiveAvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.adaptive_avg_pool2d(self.output.0, self.output.1)
    }
    module_boilerplate!();
}

// ====================================================================== stateless

/// The ReLU after a fused batchnorm: none, PyTorch's functional `F.relu`, or an `nn.ReLU` module.
/// The values are the same; only a module is seen by forward hooks (NASWOT's ReLU codes), so
/// each model says which one its reference code uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedRelu {
    No,
    Functional,
    Module,
}

/// Elementwise activations as modules (`nn.ReLU()`, `nn.GELU()`, ...). The ReLU family is
/// recorded by forward taps, as `nn.ReLU` modules are seen by forward hooks; `Tensor::relu` is
/// `F.relu` and is not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    Relu6,
    LeakyRelu(f32),
    Gelu,
    Sigmoid,
    Tanh,
    Mish,
}

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // NASWOT hooks every module whose type name contains "ReLU" (ReLU, ReLU6, LeakyReLU).
        if matches!(self, Activation::Relu | Activation::Relu6 | Activation::LeakyRelu(_)) {
            taps::record(TapKind::ReluModule, x);
        }
        let op = match *self {
            Activation::Identity => return Ok(x.clone()),
            Activation::Relu => UnaryOp::Relu,
            Activation::Relu6 => UnaryOp::Relu6,
            Activation::LeakyRelu(s) => UnaryOp::LeakyRelu(s),
            Activation::Gelu => UnaryOp::Gelu,
            Activation::Sigmoid => UnaryOp::Sigmoid,
            Activation::Tanh => UnaryOp::Tanh,
            Activation::Mish => UnaryOp::Mish,
        };
        x.unary(op)
    }
    module_boilerplate!();
}

/// `nn.Flatten(start_dim)`: collapses dims [start_dim..] (PyTorch's default start_dim is 1).
#[derive(Clone, Copy, Debug)]
pub struct Flatten {
    pub start_dim: usize,
}

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten_from(self.start_dim)
    }
    module_boilerplate!();
}

type LambdaFn = dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync;

/// Any parameter-free function as a module (reshapes, custom activations, ...).
pub struct Lambda(Box<LambdaFn>);

impl Lambda {
    pub fn new(f: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static) -> Lambda {
        Lambda(Box::new(f))
    }
}

impl Module for Lambda {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (self.0)(x)
    }
    module_boilerplate!();
}

// ====================================================================== Sequential

/// `nn.Sequential`: children named "0", "1", ... in order.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    pub fn new() -> Sequential {
        Sequential::default()
    }
    /// Builder form: `Sequential::new().with(conv).with(bn).with(Activation::Relu)`.
    pub fn with(mut self, m: impl Module + 'static) -> Sequential {
        self.layers.push(Box::new(m));
        self
    }
    pub fn push(&mut self, m: Box<dyn Module>) {
        self.layers.push(m);
    }
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
    pub fn get(&self, i: usize) -> Option<&dyn Module> {
        self.layers.get(i).map(|m| m.as_ref())
    }
    pub fn layers(&self) -> &[Box<dyn Module>] {
        &self.layers
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for m in &self.layers {
            y = m.forward(&y)?;
        }
        Ok(y)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers.iter().enumerate().map(|(i, m)| (i.to_string(), m.as_ref())).collect()
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        self.layers.iter_mut().map(|m| m.as_mut() as &mut dyn Module).collect()
    }
    module_boilerplate!();
}
