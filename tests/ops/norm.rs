//! Normalisation tests: train-mode batchnorm forward and backward (x, gamma, beta), running
//! statistics against hand computation, eval mode, layer norm; awkward sizes (odd channels,
//! batch 1, 1x1 maps, rank-2 inputs) and inputs with a large mean. References are direct f64
//! loops over the PyTorch definitions.

use crate::common::{check_op, rand_vec, rand_vec_in, Input, Tol};
use kdscout::{Device, Tensor};

const EPS: f32 = 1e-5;

/// Batch mean and biased variance of every channel of x [n, c, hw].
pub fn channel_stats(x: &[f64], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c)
        .map(|ch| {
            let vals: Vec<f64> =
                (0..n).flat_map(|b| (0..hw).map(move |i| (b, i))).map(|(b, i)| x[(b * c + ch) * hw + i]).collect();
            let m = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / m;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
            (mean, var)
        })
        .collect()
}

/// Train-mode batchnorm: y = (x − mean)/sqrt(var + eps)·gamma + beta with batch statistics.
pub fn bn_train_ref(x: &[f64], gamma: &[f64], beta: &[f64], shape: &[usize]) -> Vec<f64> {
    let (n, c) = (shape[0], shape[1]);
    let hw: usize = shape[2..].iter().product();
    let stats = channel_stats(x, n, c, hw);
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for (ch, &(mean, var)) in stats.iter().enumerate() {
            for i in 0..hw {
                let j = (b * c + ch) * hw + i;
                y[j] = (x[j] - mean) / (var + EPS as f64).sqrt() * gamma[ch] + beta[ch];
            }
        }
    }
    y
}

fn check_bn_train(dev: Device, shape: &[usize], x: Input, tol: Tol) {
    check_bn_train_act(dev, shape, x, tol, false)
}

/// Train-mode batchnorm, with the ReLU fused into the op when `relu` (forward and gradients of
/// x, gamma and beta against the f64 definition of batchnorm followed by max(·, 0)).
fn check_bn_train_act(dev: Device, shape: &[usize], x: Input, tol: Tol, relu: bool) {
    let c = shape[1];
    let s = shape.to_vec();
    check_op(
        dev,
        &format!("batch_norm_train {shape:?} relu {relu}"),
        &[x, Input::new(&[c], 21), Input::new(&[c], 22)],
        |t| {
            let rm = Tensor::zeros([c], dev)?;
            let rv = Tensor::ones([c], dev)?;
            t[0].batch_norm_train_act(&t[1], &t[2], &rm, &rv, 0.1, EPS, relu)
        },
        |xs| {
            let y = bn_train_ref(&xs[0], &xs[1], &xs[2], &s);
            if relu {
                y.into_iter().map(|v| v.max(0.0)).collect()
            } else {
                y
            }
        },
        tol,
    );
}

pub fn batch_norm_train_relu(dev: Device) {
    for shape in [&[4, 3, 5, 5][..], &[1, 5, 7, 7], &[16, 5], &[8, 3, 40, 40]] {
        check_bn_train_act(dev, shape, Input::new(shape, 24), Tol::default(), true);
    }
}

pub fn batch_norm_train_shapes(dev: Device) {
    for shape in [&[4, 3, 5, 5][..], &[1, 5, 7, 7], &[6, 3, 1, 1], &[2, 7, 3, 3], &[16, 5], &[3, 2, 4]] {
        check_bn_train(dev, shape, Input::new(shape, 20), Tol::default());
    }
}

pub fn batch_norm_train_large_parallel(dev: Device) {
    // Large enough for the rayon path, and a 32x32 map longer than one f32 summation block.
    let shape = [8, 3, 40, 40];
    check_bn_train(dev, &shape, Input::new(&shape, 23), Tol::default());
}

pub fn batch_norm_train_large_mean(dev: Device) {
    // Post-ReLU-like activations far from zero: statistics must not cancel catastrophically.
    let shape = [4, 3, 6, 6];
    let n = shape.iter().product();
    let x = Input::with_values(&shape, rand_vec_in(n, 999.0, 1001.0, 24));
    check_bn_train(dev, &shape, x, Tol::default());
    let shape = [2, 2, 30, 30];
    let n = shape.iter().product();
    let x = Input::with_values(&shape, rand_vec_in(n, 3.0e4, 3.0e4 + 2.0, 25));
    check_bn_train(dev, &shape, x, Tol::default());
}

pub fn batch_norm_running_stats_by_hand(dev: Device) {
    // x [4, 1]: mean 2.5, unbiased var 5/3; then [2, 2, 2, 6]: mean 3, unbiased var 4.
    let gamma = Tensor::ones([1], dev).unwrap();
    let beta = Tensor::zeros([1], dev).unwrap();
    let rm = Tensor::zeros([1], dev).unwrap();
    let rv = Tensor::ones([1], dev).unwrap();
    let x1 = Tensor::from_slice(&[1.0, 2.0, 3.0, 4.0], [4, 1], dev).unwrap();
    x1.batch_norm_train(&gamma, &beta, &rm, &rv, 0.1, EPS).unwrap();
    let (m1, v1) = (0.1 * 2.5, 0.9 + 0.1 * 5.0 / 3.0);
    assert!((rm.item().unwrap() as f64 - m1).abs() < 1e-6, "running mean {} vs {m1}", rm.item().unwrap());
    assert!((rv.item().unwrap() as f64 - v1).abs() < 1e-6, "running var {} vs {v1}", rv.item().unwrap());
    let x2 = Tensor::from_slice(&[2.0, 2.0, 2.0, 6.0], [4, 1], dev).unwrap();
    let y2 = x2.batch_norm_train(&gamma, &beta, &rm, &rv, 0.1, EPS).unwrap();
    let (m2, v2) = (0.9 * m1 + 0.1 * 3.0, 0.9 * v1 + 0.1 * 4.0);
    assert!((rm.item().unwrap() as f64 - m2).abs() < 1e-6, "running mean {} vs {m2}", rm.item().unwrap());
    assert!((rv.item().unwrap() as f64 - v2).abs() < 1e-6, "running var {} vs {v2}", rv.item().unwrap());
    // The output uses the biased variance 3: (2−3)/sqrt(3+eps) and (6−3)/sqrt(3+eps).
    let inv = 1.0 / (3.0f64 + EPS as f64).sqrt();
    let y = y2.to_vec().unwrap();
    for (got, want) in y.iter().zip([-inv, -inv, -inv, 3.0 * inv]) {
        assert!((*got as f64 - want).abs() < 1e-6, "{y:?}");
    }
}

pub fn batch_norm_running_stats_two_steps(dev: Device) {
    let (shape, c, hw) = ([3, 5, 2, 2], 5, 4);
    let n_el = 3 * 5 * 4;
    let gamma = Tensor::from_slice(&rand_vec(c, 30), [c], dev).unwrap();
    let beta = Tensor::from_slice(&rand_vec(c, 31), [c], dev).unwrap();
    let rm0 = rand_vec(c, 32);
    let rv0 = rand_vec_in(c, 0.5, 2.0, 33);
    let rm = Tensor::from_slice(&rm0, [c], dev).unwrap();
    let rv = Tensor::from_slice(&rv0, [c], dev).unwrap();
    let (mut em, mut ev): (Vec<f64>, Vec<f64>) =
        (rm0.iter().map(|&v| v as f64).collect(), rv0.iter().map(|&v| v as f64).collect());
    for (step, offset) in [(0u64, 0.0f32), (1, 5.0)] {
        let xv = rand_vec_in(n_el, offset - 2.0, offset + 1.0, 40 + step);
        let x = Tensor::from_slice(&xv, shape, dev).unwrap();
        x.batch_norm_train(&gamma, &beta, &rm, &rv, 0.1, EPS).unwrap();
        let xf: Vec<f64> = xv.iter().map(|&v| v as f64).collect();
        let m = (3 * hw) as f64;
        for (ch, (mean, var)) in channel_stats(&xf, 3, c, hw).into_iter().enumerate() {
            em[ch] = 0.9 * em[ch] + 0.1 * mean;
            ev[ch] = 0.9 * ev[ch] + 0.1 * var * m / (m - 1.0);
        }
    }
    let (gm, gv) = (rm.to_vec().unwrap(), rv.to_vec().unwrap());
    crate::common::assert_close(&gm, &em, 1e-5, 1e-6, "running mean after two steps");
    crate::common::assert_close(&gv, &ev, 1e-5, 1e-6, "running var after two steps");
}

pub fn batch_norm_eval_mode(dev: Device) {
    for shape in [&[2, 3, 5, 5][..], &[1, 5, 1, 1], &[4, 3]] {
        let c = shape[1];
        let hw: usize = shape[2..].iter().product();
        let rv = Input::with_values(&[c], rand_vec_in(c, 0.5, 2.0, 52)).no_grad();
        check_op(
            dev,
            &format!("batch_norm_eval {shape:?}"),
            &[Input::new(shape, 50), Input::new(&[c], 51), Input::new(&[c], 53), Input::new(&[c], 54).no_grad(), rv],
            |t| t[0].batch_norm_eval(&t[1], &t[2], &t[3], &t[4], EPS),
            |xs| {
                let (x, g, b, rm, rv) = (&xs[0], &xs[1], &xs[2], &xs[3], &xs[4]);
                (0..x.len())
                    .map(|j| {
                        let ch = (j / hw) % c;
                        (x[j] - rm[ch]) / (rv[ch] + EPS as f64).sqrt() * g[ch] + b[ch]
                    })
                    .collect()
            },
            Tol::default(),
        );
    }
}

/// Eval-mode batchnorm + residual + ReLU in one pass (no gradient recorded) against the f64
/// definition and, bit for bit, against the differentiable composition of the same ops (the
/// path taken when recording); every (residual, relu) variant; a map above the CPU backend's
/// parallel threshold; a wrong residual shape is an error naming both shapes.
pub fn batch_norm_eval_fused(dev: Device) {
    for (si, shape) in [&[2, 3, 5, 5][..], &[1, 5, 1, 1], &[4, 3], &[3, 17, 29, 31]].into_iter().enumerate() {
        let (c, numel) = (shape[1], shape.iter().product::<usize>());
        let hw = numel / (shape[0] * c);
        let seed = 60 + 10 * si as u64;
        let vals = |n, s| rand_vec(n, s);
        let (xv, rv) = (vals(numel, seed), vals(numel, seed + 1));
        let (gv, bv, mv) = (vals(c, seed + 2), vals(c, seed + 3), vals(c, seed + 4));
        let varv = rand_vec_in(c, 0.5, 2.0, seed + 5);
        let t = |v: &[f32], s: &[usize]| Tensor::from_slice(v, s.to_vec(), dev).unwrap();
        let (x, res, g, b, m, var) =
            (t(&xv, shape), t(&rv, shape), t(&gv, &[c]), t(&bv, &[c]), t(&mv, &[c]), t(&varv, &[c]));
        for residual in [false, true] {
            for relu in [false, true] {
                let what = format!("batch_norm_eval_fused {shape:?} residual {residual} relu {relu}");
                let r = residual.then_some(&res);
                let fused = {
                    let _guard = kdscout::autograd::no_grad();
                    x.batch_norm_eval_fused(&g, &b, &m, &var, EPS, r, relu).unwrap().to_vec().unwrap()
                };
                // Recording with a parameter that requires grad: the composed ops.
                let g_tracked = g.detach().requires_grad_();
                let composed = x.batch_norm_eval_fused(&g_tracked, &b, &m, &var, EPS, r, relu).unwrap();
                assert!(composed.requires_grad(), "{what}: recording path must build a graph");
                let composed = composed.to_vec().unwrap();
                let same = fused.iter().zip(&composed).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{what}: fused pass differs from the composed ops");
                let want: Vec<f64> = (0..numel)
                    .map(|j| {
                        let ch = (j / hw) % c;
                        let bn = (xv[j] as f64 - mv[ch] as f64) / (varv[ch] as f64 + EPS as f64).sqrt() * gv[ch] as f64
                            + bv[ch] as f64;
                        let v = if residual { bn + rv[j] as f64 } else { bn };
                        if relu {
                            v.max(0.0)
                        } else {
                            v
                        }
                    })
                    .collect();
                crate::common::assert_close(&fused, &want, 1e-5, 1e-6, &what);
            }
        }
    }
    let x = Tensor::zeros([2, 3, 2, 2], dev).unwrap();
    let c3 = Tensor::ones([3], dev).unwrap();
    let bad = Tensor::zeros([2, 3, 2, 1], dev).unwrap();
    let err = x.batch_norm_eval_fused(&c3, &c3, &c3, &c3, EPS, Some(&bad), true).unwrap_err().to_string();
    assert!(err.contains("[2, 3, 2, 1]") && err.contains("[2, 3, 2, 2]"), "error should name both shapes: {err}");
}

/// Layer norm over the last dim with biased variance.
pub fn ln_ref(x: &[f64], gamma: &[f64], beta: &[f64], cols: usize) -> Vec<f64> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
        let inv = 1.0 / (var + EPS as f64).sqrt();
        y.extend(row.iter().enumerate().map(|(j, v)| (v - mean) * inv * gamma[j] + beta[j]));
    }
    y
}

fn check_ln(dev: Device, shape: &[usize], x: Input) {
    let cols = *shape.last().unwrap();
    check_op(
        dev,
        &format!("layer_norm {shape:?}"),
        &[x, Input::new(&[cols], 61), Input::new(&[cols], 62)],
        |t| t[0].layer_norm(&t[1], &t[2], EPS),
        |xs| ln_ref(&xs[0], &xs[1], &xs[2], cols),
        Tol::default(),
    );
}

pub fn layer_norm_shapes(dev: Device) {
    for shape in [&[4, 7][..], &[2, 3, 5], &[3, 1], &[1, 1, 9], &[2, 300], &[64, 700]] {
        check_ln(dev, shape, Input::new(shape, 60));
    }
}

pub fn layer_norm_large_mean(dev: Device) {
    let shape = [5, 33];
    check_ln(dev, &shape, Input::with_values(&shape, rand_vec_in(5 * 33, 499.0, 501.0, 63)));
}

pub fn norm_bad_inputs_are_errors(dev: Device) {
    let c3 = Tensor::zeros([3], dev).unwrap();
    let c4 = Tensor::zeros([4], dev).unwrap();
    // One value per channel cannot be normalised in training.
    let one = Tensor::zeros([1, 3], dev).unwrap();
    assert!(one.batch_norm_train(&c3, &c3, &c3, &c3, 0.1, EPS).is_err());
    let x = Tensor::zeros([2, 3, 2, 2], dev).unwrap();
    assert!(x.batch_norm_train(&c4, &c3, &c3, &c3, 0.1, EPS).is_err());
    assert!(x.batch_norm_eval(&c3, &c4, &c3, &c3, EPS).is_err());
    assert!(x.layer_norm(&c3, &c3, EPS).is_err());
    assert!(Tensor::scalar(1.0, dev).unwrap().batch_norm_train(&c3, &c3, &c3, &c3, 0.1, EPS).is_err());
    // The backend op checks its operand lengths itself (direct callers skip the Tensor checks).
    let be = dev.backend();
    let (x12, s3, s4) =
        (be.from_host(&[0.0; 12]).unwrap(), be.from_host(&[1.0; 3]).unwrap(), be.from_host(&[1.0; 4]).unwrap());
    let g = kdscout::backend::NormGeom { n: 1, c: 3, hw: 4, eps: 0.0, momentum: 0.0 };
    assert!(be.channel_affine(&x12, &s3, &s3, None, true, &g).is_ok());
    let err = be.channel_affine(&x12, &s4, &s3, None, true, &g).unwrap_err().to_string();
    assert!(err.contains("scale 4") && err.contains("c=3"), "{err}");
    assert!(be.channel_affine(&x12, &s3, &s3, Some(&s3), false, &g).is_err());
}

macro_rules! norm_tests {
    ($dev:expr) => {
        mod norm {
            #[test]
            fn batch_norm_train_shapes() {
                crate::norm::batch_norm_train_shapes($dev)
            }
            #[test]
            fn batch_norm_train_large_parallel() {
                crate::norm::batch_norm_train_large_parallel($dev)
            }
            #[test]
            fn batch_norm_train_large_mean() {
                crate::norm::batch_norm_train_large_mean($dev)
            }
            #[test]
            fn batch_norm_running_stats_by_hand() {
                crate::norm::batch_norm_running_stats_by_hand($dev)
            }
            #[test]
            fn batch_norm_running_stats_two_steps() {
                crate::norm::batch_norm_running_stats_two_steps($dev)
            }
            #[test]
            fn batch_norm_eval_mode() {
                crate::norm::batch_norm_eval_mode($dev)
            }
            #[test]
            fn batch_norm_train_relu() {
                crate::norm::batch_norm_train_relu($dev)
            }
            #[test]
            fn batch_norm_eval_fused() {
                crate::norm::batch_norm_eval_fused($dev)
            }
            #[test]
            fn layer_norm_shapes() {
                crate::norm::layer_norm_shapes($dev)
            }
            #[test]
            fn layer_norm_large_mean() {
                crate::norm::layer_norm_large_mean($dev)
            }
            #[test]
            fn norm_bad_inputs_are_errors() {
                crate::norm::norm_bad_inputs_are_errors($dev)
            }
        }
    };
}
