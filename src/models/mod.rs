//! The model zoo. So far the CIFAR ResNets of RepDistiller/mdistiller; the rest of the zoo
//! (wrn, vgg, MobileNetV2, ShuffleNets, NAS-Bench-201 cells, ViT) joins with the model-zoo issue.

pub mod resnet;
pub mod small_cnn;

pub use resnet::CifarResNet;
pub use small_cnn::small_cnn;

use crate::rng::Rng;
use crate::{invalid_err, Device, Result};

/// A CIFAR ResNet by its mdistiller/RepDistiller name (`resnet20`, `resnet8x4`, ...).
pub fn cifar_resnet(name: &str, num_classes: usize, rng: &mut Rng, dev: Device) -> Result<CifarResNet> {
    let (depth, filters) = match name {
        "resnet8" => (8, [16, 16, 32, 64]),
        "resnet14" => (14, [16, 16, 32, 64]),
        "resnet20" => (20, [16, 16, 32, 64]),
        "resnet32" => (32, [16, 16, 32, 64]),
        "resnet44" => (44, [16, 16, 32, 64]),
        "resnet56" => (56, [16, 16, 32, 64]),
        "resnet110" => (110, [16, 16, 32, 64]),
        "resnet8x4" => (8, [32, 64, 128, 256]),
        "resnet32x4" => (32, [32, 64, 128, 256]),
        _ => invalid_err!(
            "model",
            "unknown CIFAR ResNet '{name}': use one of resnet8, resnet14, resnet20, resnet32, resnet44, resnet56, resnet110, resnet8x4, resnet32x4"
        ),
    };
    CifarResNet::new(depth, filters, num_classes, rng, dev)
}
