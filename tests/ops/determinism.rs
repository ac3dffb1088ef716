//! One seed must reproduce a run bit for bit, so every op must give identical results when
//! repeated on identical inputs, including on the parallel paths (reductions split across
//! threads must combine their partial sums in a fixed order).

use crate::common::emulator_scaled;
use kdscout::rng::Rng;
use kdscout::{Device, Tensor};

/// A conv → batchnorm → relu → linear-ish chain big enough to take every parallel path, run
/// several times; all outputs and gradients must match bit for bit. On the emulator a batch of 4
/// still splits the weight-gradient reduction (32 slabs) and fills many blocks (the emulator runs
/// blocks one after another, so there this checks the kernels themselves, not scheduling).
pub fn repeated_runs_are_bitwise_identical(dev: Device) {
    let batch = emulator_scaled(dev, 64, 4);
    let mut rng = Rng::seed(7);
    let x = Tensor::randn([batch, 16, 32, 32], 0.0, 1.0, &mut rng, dev).unwrap().requires_grad_();
    let w = Tensor::randn([16, 16, 3, 3], 0.0, 0.1, &mut rng, dev).unwrap().requires_grad_();
    let w2 = Tensor::randn([32, 16, 3, 3], 0.0, 0.1, &mut rng, dev).unwrap().requires_grad_();
    let gamma = Tensor::ones([16], dev).unwrap().requires_grad_();
    let beta = Tensor::zeros([16], dev).unwrap().requires_grad_();
    let r = Tensor::randn([batch, 32, 16, 16], 0.0, 1.0, &mut rng, dev).unwrap();
    let run = || {
        let (rm, rv) = (Tensor::zeros([16], dev).unwrap(), Tensor::ones([16], dev).unwrap());
        let y = x.conv2d(&w, (1, 1), (1, 1), 1).unwrap();
        let z = y.batch_norm_train(&gamma, &beta, &rm, &rv, 0.1, 1e-5).unwrap().relu().unwrap();
        let u = z.conv2d(&w2, (2, 2), (1, 1), 1).unwrap();
        let p = u.softmax(1).unwrap();
        let loss = p.mul(&r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let mut outs = vec![y.to_vec().unwrap(), u.to_vec().unwrap(), rv.to_vec().unwrap(), vec![loss.item().unwrap()]];
        for t in [&x, &w, &w2, &gamma, &beta] {
            outs.push(grads.of(t).unwrap().to_vec().unwrap());
        }
        outs
    };
    let names = ["conv forward", "strided conv forward", "running var", "loss", "dx", "dw", "dw2", "dgamma", "dbeta"];
    let first = run();
    for _ in 0..3 {
        for ((a, b), name) in first.iter().zip(run()).zip(names) {
            let same = a.len() == b.len() && a.iter().zip(&b).all(|(u, v)| u.to_bits() == v.to_bits());
            assert!(same, "{name} differs between two identical runs");
        }
    }
}

macro_rules! determinism_tests {
    ($dev:expr) => {
        #[test]
        fn repeated_runs_are_bitwise_identical() {
            crate::determinism::repeated_runs_are_bitwise_identical($dev)
        }
    };
}
