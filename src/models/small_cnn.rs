//! A small VGG-style conv net (three conv-BN-ReLU stages, max pooling, global average pooling,
//! a linear head): the network of the training smoke run and the engine demo.

use crate::nn::{
    Activation, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Flatten, Init, Linear, MaxPool2d, Sequential,
};
use crate::rng::Rng;
use crate::{Device, Result};

/// conv3x3(3→w)-BN-ReLU-pool, conv3x3(w→2w)-BN-ReLU-pool, conv3x3(2w→4w)-BN-ReLU, GAP, linear.
pub fn small_cnn(width: usize, num_classes: usize, rng: &mut Rng, dev: Device) -> Result<Sequential> {
    let conv =
        |cin, cout, rng: &mut Rng| Conv2d::new(cin, cout, 3, Conv2dConfig::default().padding(1).bias(false), rng, dev);
    let net = Sequential::new()
        .with(conv(3, width, rng)?)
        .with(BatchNorm2d::new(width, dev)?)
        .with(Activation::Relu)
        .with(MaxPool2d::new(2, 2, 0))
        .with(conv(width, 2 * width, rng)?)
        .with(BatchNorm2d::new(2 * width, dev)?)
        .with(Activation::Relu)
        .with(MaxPool2d::new(2, 2, 0))
        .with(conv(2 * width, 4 * width, rng)?)
        .with(BatchNorm2d::new(4 * width, dev)?)
        .with(Activation::Relu)
        .with(AdaptiveAvgPool2d::new(1, 1))
        .with(Flatten { start_dim: 1 })
        .with(Linear::new(4 * width, num_classes, true, rng, dev)?);
    Init::KaimingNormalFanOut.apply(&net, rng)?;
    Ok(net)
}
