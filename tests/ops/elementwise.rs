//! Activations, elementwise math and broadcasting arithmetic.

use kdscout::backend::UnaryOp;
use kdscout::{Device, Tensor};

use crate::common::{assert_close, check_op, rand_vec_in, Input, Tol};

fn erf64(x: f64) -> f64 {
    // Independent of libm: the series erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1)), exact
    // to f64 rounding for |x| < 4 with enough terms.
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0.0;
    while n < 200.0 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn reference(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Relu6 => x.clamp(0.0, 6.0),
        UnaryOp::LeakyRelu(s) => {
            if x > 0.0 {
                x
            } else {
                s as f64 * x
            }
        }
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf64(x / 2f64.sqrt())),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Mish => x * (1.0 + x.exp()).ln().tanh(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Pow(p) => x.powf(p as f64),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Affine { mul, add } => x * mul as f64 + add as f64,
        UnaryOp::ClampMin(lo) => x.max(lo as f64),
    }
}

/// Values away from the kinks (0 and 6) so finite differences are meaningful.
fn away_from_kinks(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    rand_vec_in(n, lo, hi, seed)
        .into_iter()
        .map(|v| if v.abs() < 0.05 || (v - 6.0).abs() < 0.05 { v + 0.1 } else { v })
        .collect()
}

pub fn unary_ops(dev: Device) {
    let cases: &[(UnaryOp, f32, f32)] = &[
        (UnaryOp::Relu, -3.0, 3.0),
        (UnaryOp::Relu6, -2.0, 8.0),
        (UnaryOp::LeakyRelu(0.1), -3.0, 3.0),
        (UnaryOp::Gelu, -4.0, 4.0),
        (UnaryOp::Sigmoid, -6.0, 6.0),
        (UnaryOp::Tanh, -3.0, 3.0),
        (UnaryOp::Mish, -5.0, 5.0),
        (UnaryOp::Exp, -3.0, 3.0),
        (UnaryOp::Log, 0.1, 5.0),
        (UnaryOp::Sqrt, 0.1, 5.0),
        (UnaryOp::Pow(2.0), -3.0, 3.0),
        (UnaryOp::Pow(3.0), -2.0, 2.0),
        (UnaryOp::Pow(-0.5), 0.2, 4.0),
        (UnaryOp::Pow(1.7), 0.2, 4.0),
        (UnaryOp::Abs, -3.0, 3.0),
        (UnaryOp::Affine { mul: -2.5, add: 0.75 }, -3.0, 3.0),
        (UnaryOp::ClampMin(0.3), -1.0, 1.0),
    ];
    // 3x5x7: no dim a multiple of any vector width.
    let shape = [3, 5, 7];
    for (i, &(op, lo, hi)) in cases.iter().enumerate() {
        let mut vals = away_from_kinks(105, lo, hi, 10 + i as u64);
        if let UnaryOp::ClampMin(c) = op {
            vals.iter_mut().for_each(|v| {
                if (*v - c).abs() < 0.05 {
                    *v += 0.1
                }
            });
        }
        check_op(
            dev,
            &format!("{op:?}"),
            &[Input::with_values(&shape, vals)],
            |t| t[0].unary(op),
            |x| x[0].iter().map(|&v| reference(op, v)).collect(),
            Tol { fwd_rtol: 2e-5, fwd_atol: 2e-6, grad_rtol: 2e-3, grad_atol: 2e-4 },
        );
    }
}

/// A large tensor takes the parallel path; it must agree with the reference too.
pub fn unary_large_parallel(dev: Device) {
    let n = 100_003;
    let vals = rand_vec_in(n, -4.0, 4.0, 77);
    let t = Tensor::from_slice(&vals, [n], dev).unwrap();
    let y = t.gelu().unwrap().to_vec().unwrap();
    let want: Vec<f64> = vals.iter().map(|&v| reference(UnaryOp::Gelu, v as f64)).collect();
    crate::common::assert_close(&y, &want, 2e-5, 2e-6, "gelu on 100003 elements");
}

fn broadcast_ref(op: fn(f64, f64) -> f64, a: &[f64], ad: &[usize], b: &[f64], bd: &[usize], od: &[usize]) -> Vec<f64> {
    let r = od.len();
    let pad = |d: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, r - d.len()).chain(d.iter().copied()).collect() };
    let (pa, pb) = (pad(ad), pad(bd));
    let n: usize = od.iter().product();
    (0..n)
        .map(|flat| {
            let mut idx = vec![0; r];
            let mut rem = flat;
            for d in (0..r).rev() {
                idx[d] = rem % od[d];
                rem /= od[d];
            }
            let ia: Vec<usize> = idx.iter().zip(&pa).map(|(&i, &d)| if d == 1 { 0 } else { i }).collect();
            let ib: Vec<usize> = idx.iter().zip(&pb).map(|(&i, &d)| if d == 1 { 0 } else { i }).collect();
            op(a[crate::common::offset(&pa, &ia)], b[crate::common::offset(&pb, &ib)])
        })
        .collect()
}

pub fn binary_broadcasting(dev: Device) {
    // (a shape, b shape, out shape): equal, per-channel bias, scalar, row/column, rank mismatch.
    let cases: &[(&[usize], &[usize], &[usize])] = &[
        (&[3, 5, 7], &[3, 5, 7], &[3, 5, 7]),
        (&[2, 3, 7, 7], &[1, 3, 1, 1], &[2, 3, 7, 7]),
        (&[1, 3, 1, 1], &[2, 3, 7, 7], &[2, 3, 7, 7]),
        (&[5, 7], &[], &[5, 7]),
        (&[5, 1], &[1, 7], &[5, 7]),
        (&[4, 5, 7], &[7], &[4, 5, 7]),
        (&[3, 1, 5], &[4, 1], &[3, 4, 5]),
    ];
    type Reference = fn(f64, f64) -> f64;
    type Ours = fn(&Tensor, &Tensor) -> kdscout::Result<Tensor>;
    let ops: [(&str, Reference, Ours); 4] = [
        ("add", |a, b| a + b, |a, b| a.add(b)),
        ("sub", |a, b| a - b, |a, b| a.sub(b)),
        ("mul", |a, b| a * b, |a, b| a.mul(b)),
        ("div", |a, b| a / b, |a, b| a.div(b)),
    ];
    for (ci, &(ad, bd, od)) in cases.iter().enumerate() {
        for (name, f, ours) in ops {
            let a = Input::new(ad, 100 + ci as u64);
            // Divisors kept away from zero.
            let bn: usize = bd.iter().product();
            let b = Input::with_values(bd, rand_vec_in(bn, 0.5, 2.0, 200 + ci as u64));
            check_op(
                dev,
                &format!("{name} {ad:?} with {bd:?}"),
                &[a, b],
                |t| ours(&t[0], &t[1]),
                |x| broadcast_ref(f, &x[0], ad, &x[1], bd, od),
                Tol::default(),
            );
        }
    }
}

/// Forward only, on outputs above the CPU backend's parallel threshold (2^15 values), so the
/// chunked path with coalesced dims runs: per-channel, per-image, mixed, and short inner rows.
pub fn binary_broadcasting_large(dev: Device) {
    let cases: &[(&[usize], &[usize], &[usize])] = &[
        (&[4, 17, 23, 29], &[1, 17, 1, 1], &[4, 17, 23, 29]),
        (&[1, 17, 1, 1], &[4, 17, 23, 29], &[4, 17, 23, 29]),
        (&[6, 5, 33, 41], &[6, 1, 1, 1], &[6, 5, 33, 41]),
        (&[40, 37, 1, 23], &[37, 5, 1], &[40, 37, 5, 23]),
        (&[9000, 7], &[7], &[9000, 7]),
    ];
    for (ci, &(ad, bd, od)) in cases.iter().enumerate() {
        let (an, bn): (usize, usize) = (ad.iter().product(), bd.iter().product());
        let av = rand_vec_in(an, -2.0, 2.0, 300 + ci as u64);
        let bv = rand_vec_in(bn, 0.5, 2.0, 400 + ci as u64);
        let a = Tensor::from_slice(&av, ad.to_vec(), dev).unwrap();
        let b = Tensor::from_slice(&bv, bd.to_vec(), dev).unwrap();
        let (a64, b64): (Vec<f64>, Vec<f64>) =
            (av.iter().map(|&v| v as f64).collect(), bv.iter().map(|&v| v as f64).collect());
        for (y, f, name) in
            [(a.sub(&b), (|x, y| x - y) as fn(f64, f64) -> f64, "sub"), (a.div(&b), |x, y| x / y, "div")]
        {
            let want = broadcast_ref(f, &a64, ad, &b64, bd, od);
            assert_close(&y.unwrap().to_vec().unwrap(), &want, 1e-6, 1e-6, &format!("{name} {ad:?} with {bd:?}"));
        }
    }
}

/// ReLU and ReLU6 keep NaN as PyTorch does (a NaN activation must reach the loss and stop the
/// run, not turn into 0), also inside the fused batchnorm + ReLU ops.
pub fn relu_propagates_nan(dev: Device) {
    let v = [f32::NAN, -1.0, 2.0, f32::INFINITY, f32::NEG_INFINITY, 7.0];
    let x = Tensor::from_slice(&v, [1, 6, 1, 1], dev).unwrap();
    let show = |t: Tensor| format!("{:?}", t.to_vec().unwrap());
    assert_eq!(show(x.relu().unwrap()), "[NaN, 0.0, 2.0, inf, 0.0, 7.0]");
    assert_eq!(show(x.relu6().unwrap()), "[NaN, 0.0, 2.0, 6.0, 0.0, 6.0]");
    let (one, zero) = (Tensor::ones([6], dev).unwrap(), Tensor::zeros([6], dev).unwrap());
    let _g = kdscout::autograd::no_grad();
    let y = x.channel_affine(&one, &zero, None, true).unwrap().to_vec().unwrap();
    assert!(y[0].is_nan() && y[1] == 0.0 && y[3].is_infinite(), "fused eval path: {y:?}");
    let x2 = Tensor::from_slice(&[1.0, f32::NAN, 3.0, 4.0], [2, 1, 2, 1], dev).unwrap();
    let (g1, b1) = (Tensor::ones([1], dev).unwrap(), Tensor::zeros([1], dev).unwrap());
    let (rm, rv) = (Tensor::zeros([1], dev).unwrap(), Tensor::ones([1], dev).unwrap());
    let y = x2.batch_norm_train_act(&g1, &b1, &rm, &rv, 0.1, 1e-5, true).unwrap().to_vec().unwrap();
    assert!(y.iter().all(|v| v.is_nan()), "NaN in a channel's batch makes its statistics NaN: {y:?}");
}

pub fn binary_shape_errors(dev: Device) {
    let a = Tensor::zeros([2, 3], dev).unwrap();
    let b = Tensor::zeros([4, 3], dev).unwrap();
    let err = a.add(&b).unwrap_err().to_string();
    assert!(err.contains("[2, 3]") && err.contains("[4, 3]"), "error should name both shapes: {err}");
}

/// A tensor used twice accumulates both gradient contributions (y = x·x + x ⇒ dy/dx = 2x + 1).
pub fn gradient_accumulates_over_reuse(dev: Device) {
    let vals = [0.5f32, -1.5, 2.0];
    check_op(
        dev,
        "x*x + x",
        &[Input::with_values(&[3], vals.to_vec())],
        |t| t[0].mul(&t[0])?.add(&t[0]),
        |x| x[0].iter().map(|v| v * v + v).collect(),
        Tol::default(),
    );
}

/// Without a tensor that requires grad, nothing is recorded and backward is refused.
pub fn no_recording_without_grad(dev: Device) {
    let x = Tensor::from_slice(&[1.0, 2.0], [2], dev).unwrap();
    let y = x.relu().unwrap().sum_all().unwrap();
    assert!(!y.requires_grad());
    assert!(y.backward().is_err());
    let w = Tensor::from_slice(&[1.0, 2.0], [2], dev).unwrap().requires_grad_();
    let _guard = kdscout::autograd::no_grad();
    let z = w.relu().unwrap().sum_all().unwrap();
    assert!(!z.requires_grad(), "no_grad must stop recording");
}

macro_rules! elementwise_tests {
    ($dev:expr) => {
        #[test]
        fn unary_ops() {
            crate::elementwise::unary_ops($dev)
        }
        #[test]
        fn unary_large_parallel() {
            crate::elementwise::unary_large_parallel($dev)
        }
        #[test]
        fn binary_broadcasting() {
            crate::elementwise::binary_broadcasting($dev)
        }
        #[test]
        fn binary_broadcasting_large() {
            crate::elementwise::binary_broadcasting_large($dev)
        }
        #[test]
        fn relu_propagates_nan() {
            crate::elementwise::relu_propagates_nan($dev)
        }
        #[test]
        fn binary_shape_errors() {
            crate::elementwise::binary_shape_errors($dev)
        }
        #[test]
        fn gradient_accumulates_over_reuse() {
            crate::elementwise::gradient_accumulates_over_reuse($dev)
        }
        #[test]
        fn no_recording_without_grad() {
            crate::elementwise::no_recording_without_grad($dev)
        }
    };
}
