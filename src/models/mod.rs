//! The model zoo, by the names mdistiller/RepDistiller users type (`resnet20`, `resnet8x4`, ...),
//! plus the searchable families: `resnet_dXYZ` (DisWOT's depth space). Every network implements
//! [`Network`], whose [`Features`] are all that proxies and distillers read.

pub mod features;
pub mod mobilenetv2;
pub mod nb201;
pub mod parts;
pub mod resnet;
pub mod resnetv2;
pub mod shufflenet;
pub mod small_cnn;
pub mod vgg;
pub mod vit;
pub mod wrn;

pub use features::{Features, Network};
pub use nb201::{Nb201Genotype, Nb201Network, Nb201Op};
pub use resnet::CifarResNet;
pub use small_cnn::small_cnn;
pub use vit::{VisionTransformer, VitConfig};

use crate::autograd::no_grad;
use crate::rng::Rng;
use crate::tensor::macs::count_macs;
use crate::tensor::Tensor;
use crate::{invalid_err, Device, Result};

/// The fixed names of the zoo, as the original repositories spell them (the searchable families
/// `resnet_dXYZ` are generated, not listed).
#[rustfmt::skip]
pub const ZOO: &[&str] = &[
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "ShuffleV1", "ShuffleV2",
];

/// A CIFAR ResNet by its mdistiller/RepDistiller name (`resnet20`, `resnet8x4`, ...).
pub fn cifar_resnet(name: &str, num_classes: usize, rng: &mut Rng, dev: Device) -> Result<CifarResNet> {
    let Some((depth, filters)) = cifar_resnet_spec(name) else {
        invalid_err!(
            "model",
            "unknown CIFAR ResNet '{name}': use one of resnet8, resnet14, resnet20, resnet32, resnet44, resnet56, resnet110, resnet8x4, resnet32x4"
        )
    };
    CifarResNet::new(depth, filters, num_classes, rng, dev)
}

/// Depth and widths of the zoo's CIFAR ResNets.
fn cifar_resnet_spec(name: &str) -> Option<(usize, [usize; 4])> {
    Some(match name {
        "resnet8" => (8, [16, 16, 32, 64]),
        "resnet14" => (14, [16, 16, 32, 64]),
        "resnet20" => (20, [16, 16, 32, 64]),
        "resnet32" => (32, [16, 16, 32, 64]),
        "resnet44" => (44, [16, 16, 32, 64]),
        "resnet56" => (56, [16, 16, 32, 64]),
        "resnet110" => (110, [16, 16, 32, 64]),
        "resnet8x4" => (8, [32, 64, 128, 256]),
        "resnet32x4" => (32, [32, 64, 128, 256]),
        _ => return None,
    })
}

/// DisWOT's depth space: `resnet_dXYZ` is a CIFAR ResNet-20 (widths 16/16/32/64) with X, Y, Z
/// BasicBlocks in its three stages, each in {1, 3, 5, 7}.
pub fn resnet_depths(name: &str, num_classes: usize, rng: &mut Rng, dev: Device) -> Result<CifarResNet> {
    let digits = name.strip_prefix("resnet_d").unwrap_or(name);
    let blocks: Vec<usize> = digits.chars().filter_map(|c| c.to_digit(10).map(|d| d as usize)).collect();
    if blocks.len() != 3 || digits.len() != 3 || blocks.iter().any(|d| ![1, 3, 5, 7].contains(d)) {
        invalid_err!(
            "model",
            "'{name}' is not in the DisWOT depth space: write resnet_dXYZ with X, Y, Z in {{1,3,5,7}} (e.g. resnet_d557)"
        );
    }
    CifarResNet::with_stage_depths([blocks[0], blocks[1], blocks[2]], [16, 16, 32, 64], num_classes, rng, dev)
}

/// Parses `resnet_w16-16-32-64_d3-3-3` into widths and depths (any positive values).
pub fn parse_resnet_wd(name: &str) -> Result<([usize; 4], [usize; 3])> {
    let form = "resnet_w{stem}-{w1}-{w2}-{w3}_d{n1}-{n2}-{n3} (e.g. resnet_w16-16-32-64_d3-3-3 = resnet20)";
    let bad = |why: &str| crate::Error::invalid("model", format!("bad ResNet name '{name}': {why}; expected {form}"));
    let rest = name.strip_prefix("resnet_w").ok_or_else(|| bad("it must start with 'resnet_w'"))?;
    let (w, d) = rest.split_once("_d").ok_or_else(|| bad("missing '_d' before the depths"))?;
    let nums = |text: &str, n: usize, what: &str| -> Result<Vec<usize>> {
        let v: Vec<usize> = text
            .split('-')
            .map(|t| t.parse::<usize>().ok().filter(|&x| x > 0 && x <= 4096))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad(&format!("{what} must be whole numbers in 1..=4096")))?;
        if v.len() != n {
            return Err(bad(&format!("{} {what} given, need {n}", v.len())));
        }
        Ok(v)
    };
    let w = nums(w, 4, "widths")?;
    let d = nums(d, 3, "depths")?;
    Ok(([w[0], w[1], w[2], w[3]], [d[0], d[1], d[2]]))
}

/// One spelling per network, so that everything keyed by the network (its initial weights' seed)
/// follows the network and not the name it was given: `resnet8`, `resnet_d111` and
/// `resnet_w16-16-32-64_d1-1-1` are the same CIFAR ResNet, `mobile_half` is `MobileNetV2`, and an
/// NB201 string is written in its parsed form. A CIFAR ResNet's canonical name is its zoo name if
/// it has one, else `resnet_dXYZ` in DisWOT's depth space, else the `resnet_w.._d..` form. Names
/// that are not a valid network are returned as given (building them fails with the real error).
pub fn canonical_name(name: &str) -> String {
    let resnet = if name.starts_with("resnet_d") && name.len() == 11 {
        let d: Vec<usize> = name[8..].chars().filter_map(|c| c.to_digit(10).map(|d| d as usize)).collect();
        (d.len() == 3).then(|| ([16, 16, 32, 64], [d[0], d[1], d[2]]))
    } else if name.starts_with("resnet_w") {
        parse_resnet_wd(name).ok()
    } else {
        None
    };
    if let Some((filters, blocks)) = resnet {
        for zoo in ZOO {
            if cifar_resnet_shape(zoo) == Some((filters, blocks)) {
                return zoo.to_string();
            }
        }
        if filters == [16, 16, 32, 64] && blocks.iter().all(|b| [1, 3, 5, 7].contains(b)) {
            return format!("resnet_d{}{}{}", blocks[0], blocks[1], blocks[2]);
        }
        let [f0, f1, f2, f3] = filters;
        let [n1, n2, n3] = blocks;
        return format!("resnet_w{f0}-{f1}-{f2}-{f3}_d{n1}-{n2}-{n3}");
    }
    if name == "mobile_half" {
        return "MobileNetV2".into();
    }
    if name.starts_with('|') {
        if let Ok(g) = Nb201Genotype::parse(name) {
            return g.to_string();
        }
    }
    name.to_string()
}

/// Widths and blocks per stage of a zoo CIFAR ResNet (`resnet20` -> 16/16/32/64, 3/3/3).
fn cifar_resnet_shape(name: &str) -> Option<([usize; 4], [usize; 3])> {
    let (depth, filters) = cifar_resnet_spec(name)?;
    let n = (depth - 2) / 6;
    Some((filters, [n, n, n]))
}

/// Builds any network of the zoo by name, randomly initialised the way its original repository
/// initialises it (the rng drives every draw).
pub fn build(name: &str, num_classes: usize, rng: &mut Rng, dev: Device) -> Result<Box<dyn Network>> {
    if num_classes == 0 {
        invalid_err!("model", "'{name}' needs at least one class");
    }
    if name.starts_with("resnet_d") {
        return Ok(Box::new(resnet_depths(name, num_classes, rng, dev)?));
    }
    if name.starts_with("resnet_w") {
        let (filters, blocks) = parse_resnet_wd(name)?;
        return Ok(Box::new(CifarResNet::with_stage_depths(blocks, filters, num_classes, rng, dev)?));
    }
    if name.starts_with("resnet") && ZOO.contains(&name) {
        return Ok(Box::new(cifar_resnet(name, num_classes, rng, dev)?));
    }
    if name.starts_with('|') {
        return Ok(Box::new(Nb201Network::tiny(Nb201Genotype::parse(name)?, num_classes, rng, dev)?));
    }
    if name.starts_with("vit_") {
        return Ok(Box::new(VisionTransformer::new(&VitConfig::parse(name)?, num_classes, rng, dev)?));
    }
    Ok(match name {
        "ResNet50" => Box::new(resnetv2::ResNetV2::bottleneck([3, 4, 6, 3], num_classes, rng, dev)?),
        "wrn_16_1" => Box::new(wrn::WideResNet::new(16, 1, num_classes, rng, dev)?),
        "wrn_16_2" => Box::new(wrn::WideResNet::new(16, 2, num_classes, rng, dev)?),
        "wrn_40_1" => Box::new(wrn::WideResNet::new(40, 1, num_classes, rng, dev)?),
        "wrn_40_2" => Box::new(wrn::WideResNet::new(40, 2, num_classes, rng, dev)?),
        "vgg8" | "vgg11" | "vgg13" | "vgg16" | "vgg19" => {
            Box::new(vgg::Vgg::new(vgg::vgg_config(name)?, num_classes, rng, dev)?)
        }
        // RepDistiller's model_dict calls it `mobile_half`, mdistiller's `MobileNetV2`.
        "MobileNetV2" | "mobile_half" => Box::new(mobilenetv2::MobileNetV2::new(6, 0.5, num_classes, rng, dev)?),
        "ShuffleV1" => Box::new(shufflenet::ShuffleNetV1::shuffle_v1(num_classes, rng, dev)?),
        "ShuffleV2" => Box::new(shufflenet::ShuffleNetV2::shuffle_v2(num_classes, rng, dev)?),
        _ => invalid_err!(
            "model",
            "unknown model '{name}': use a name of `kdscout models` ({}), resnet_dXYZ, a NAS-Bench-201 string |op~0|+|op~0|op~1|+|op~0|op~1|op~2|, or vit_e192_d12_h3_r4",
            ZOO.join(", ")
        ),
    })
}

/// Size and cost of a network: trainable parameters and multiply-accumulates of one 32x32
/// image (the "FLOPs" of thop/ptflops and of the KD papers' tables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelCost {
    pub params: usize,
    pub macs: u64,
}

/// Counts parameters and the MACs of a forward pass on one [1, 3, 32, 32] input, on a fresh copy
/// of the named network (a forward pass in training mode would move a live network's BN
/// running statistics).
pub fn cost(name: &str, num_classes: usize) -> Result<ModelCost> {
    let mut net = build(name, num_classes, &mut Rng::seed(0), Device::Cpu)?;
    crate::nn::eval(net.as_mut());
    let x = Tensor::zeros([1, 3, 32, 32], Device::Cpu)?;
    let _g = no_grad();
    let (out, macs) = count_macs(|| net.forward(&x));
    out?;
    Ok(ModelCost { params: net.num_parameters(), macs })
}
