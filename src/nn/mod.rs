//! Layers, initialisers and named parameters, mirroring `torch.nn` closely enough that
//! PyTorch state dicts (mdistiller, RepDistiller, timm) map onto our modules name for name.

pub mod attention;
pub mod init;
pub mod layers;
pub mod module;

pub use attention::MultiHeadSelfAttention;
pub use init::{FanMode, Init};
pub use layers::{
    Activation, AdaptiveAvgPool2d, AvgPool2d, BatchNorm, BatchNorm2d, BatchNormBypass, Conv2d, Conv2dConfig, Flatten,
    FusedRelu, Lambda, LayerNorm, Linear, MaxPool2d, Sequential,
};
pub use module::{eval, train, LoadReport, LocalTensor, Module, TensorKind};
