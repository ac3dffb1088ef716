//! kdscout: training-free knowledge-distillation search on a small, fast engine.
//!
//! Layers, bottom up: [`tensor`] (shape + storage on a device), [`backend`] (the op set, one
//! implementation per device), [`autograd`] (define-by-run tape, one backward rule per op),
//! [`nn`] (modules, initialisers, named parameters), [`optim`] (fused SGD), [`data`] (CIFAR),
//! [`weights`] (safetensors checkpoints, PyTorch `.pth` import).

pub mod autograd;
pub mod backend;
pub mod cli;
pub mod config;
pub mod data;
pub mod distill;
pub mod error;
pub mod models;
pub mod nn;
pub mod optim;
pub mod proxy;
pub mod rng;
pub mod run_lock;
pub mod search;
pub mod tensor;
pub mod train;
pub mod weights;

pub use backend::Device;
pub use error::{Error, Result};
pub use tensor::{DType, Shape, Tensor};
