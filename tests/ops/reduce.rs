//! Softmax family, losses and reductions over dims.

use kdscout::{Device, Tensor};

use crate::common::{check_op, rand_vec_in, Input, Tol};

/// Apply `f` to every line along `dim` of a row-major tensor (f64 reference helper):
/// f gets the line's values and returns the line's outputs (same length, or 1 for reductions).
fn along(x: &[f64], dims: &[usize], dim: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
    let outer: usize = dims[..dim].iter().product();
    let len = dims[dim];
    let inner: usize = dims[dim + 1..].iter().product();
    let out_len = f(&vec![0.0; len]).len();
    let mut out = vec![0.0; outer * out_len * inner];
    for o in 0..outer {
        for i in 0..inner {
            let line: Vec<f64> = (0..len).map(|k| x[(o * len + k) * inner + i]).collect();
            for (k, v) in f(&line).into_iter().enumerate() {
                out[(o * out_len + k) * inner + i] = v;
            }
        }
    }
    out
}

fn softmax_line(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::MIN, f64::max);
    let s: f64 = v.iter().map(|x| (x - m).exp()).sum();
    v.iter().map(|x| (x - m).exp() / s).collect()
}

pub fn softmax_any_dim(dev: Device) {
    let dims = [3, 5, 7];
    for dim in 0..3 {
        for log in [false, true] {
            let vals = rand_vec_in(105, -4.0, 4.0, 20 + dim as u64);
            check_op(
                dev,
                &format!("{} dim {dim}", if log { "log_softmax" } else { "softmax" }),
                &[Input::with_values(&dims, vals)],
                |t| {
                    if log {
                        t[0].log_softmax(dim as isize)
                    } else {
                        t[0].softmax(dim as isize)
                    }
                },
                |x| {
                    along(&x[0], &dims, dim, |l| {
                        softmax_line(l).into_iter().map(|p| if log { p.ln() } else { p }).collect()
                    })
                },
                Tol::default(),
            );
        }
    }
    // Large logits must not overflow (max subtraction).
    let t = Tensor::from_slice(&[1000.0, 1001.0, 999.0], [1, 3], dev).unwrap();
    let p = t.softmax(-1).unwrap().to_vec().unwrap();
    assert!(p.iter().all(|v| v.is_finite()) && (p.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{p:?}");
    assert!(t.softmax(2).is_err());
}

pub fn cross_entropy(dev: Device) {
    let (rows, classes) = (5, 7);
    let labels: Vec<u32> = vec![0, 6, 3, 3, 1];
    check_op(
        dev,
        "cross_entropy",
        &[Input::with_values(&[rows, classes], rand_vec_in(35, -3.0, 3.0, 30))],
        |t| t[0].cross_entropy(&labels),
        |x| {
            let total: f64 = (0..rows)
                .map(|r| {
                    let row = &x[0][r * classes..(r + 1) * classes];
                    -softmax_line(row)[labels[r] as usize].ln()
                })
                .sum();
            vec![total / rows as f64]
        },
        Tol::default(),
    );
    let t = Tensor::zeros([2, 3], dev).unwrap();
    assert!(t.cross_entropy(&[0, 3]).unwrap_err().to_string().contains("label 3"));
    assert!(t.cross_entropy(&[0]).is_err());
}

pub fn kl_div_batchmean(dev: Device) {
    // KD's use: KL(softmax(t) || softmax(s)), input = log_softmax(s), target = softmax(t).
    let (rows, classes) = (4, 9);
    check_op(
        dev,
        "kl_div(log_softmax(s), softmax(t))",
        &[Input::new(&[rows, classes], 31), Input::new(&[rows, classes], 32)],
        |t| t[0].log_softmax(-1)?.kl_div(&t[1].softmax(-1)?),
        |x| {
            let mut total = 0.0;
            for r in 0..rows {
                let q = softmax_line(&x[0][r * classes..(r + 1) * classes]);
                let p = softmax_line(&x[1][r * classes..(r + 1) * classes]);
                total += p.iter().zip(&q).map(|(p, q)| p * (p.ln() - q.ln())).sum::<f64>();
            }
            vec![total / rows as f64]
        },
        Tol::default(),
    );
    // Zero target entries contribute nothing (0·log 0 = 0), not NaN.
    let lq = Tensor::from_slice(&[-1.0, -0.5], [1, 2], dev).unwrap();
    let p = Tensor::from_slice(&[0.0, 1.0], [1, 2], dev).unwrap();
    assert!((lq.kl_div(&p).unwrap().item().unwrap() - 0.5).abs() < 1e-6);
}

pub fn sum_mean_max(dev: Device) {
    let dims = [3, 5, 7];
    for dim in 0..3 {
        check_op(
            dev,
            &format!("sum dim {dim}"),
            &[Input::new(&dims, 40)],
            |t| t[0].sum_dim(dim as isize, false),
            |x| along(&x[0], &dims, dim, |l| vec![l.iter().sum()]),
            Tol::default(),
        );
        check_op(
            dev,
            &format!("max dim {dim}"),
            &[Input::new(&dims, 41)],
            |t| t[0].max_dim(dim as isize, true),
            |x| along(&x[0], &dims, dim, |l| vec![l.iter().cloned().fold(f64::MIN, f64::max)]),
            Tol::default(),
        );
    }
    check_op(
        dev,
        "mean over dims (0, 2)",
        &[Input::new(&dims, 42)],
        |t| t[0].mean_dims(&[0, 2], false),
        |x| {
            (0..5)
                .map(|j| {
                    (0..3)
                        .flat_map(|i| (0..7).map(move |k| (i, k)))
                        .map(|(i, k)| x[0][(i * 5 + j) * 7 + k])
                        .sum::<f64>()
                        / 21.0
                })
                .collect()
        },
        Tol::default(),
    );
    check_op(dev, "sum_all", &[Input::new(&dims, 43)], |t| t[0].sum_all(), |x| vec![x[0].iter().sum()], Tol::default());
    check_op(dev, "mean_all", &[Input::new(&[1, 1], 44)], |t| t[0].mean_all(), |x| vec![x[0][0]], Tol::default());
    assert!(Tensor::zeros([2, 3], dev).unwrap().sum_dim(2, false).is_err());
    assert!(Tensor::zeros([2, 3], dev).unwrap().sum_dim(-3, false).is_err());
}

pub fn var_and_norm(dev: Device) {
    let dims = [4, 6];
    for unbiased in [false, true] {
        check_op(
            dev,
            &format!("var dim 1 unbiased={unbiased}"),
            &[Input::new(&dims, 50)],
            |t| t[0].var_dims(&[1], unbiased, false),
            |x| {
                along(&x[0], &dims, 1, |l| {
                    let m = l.iter().sum::<f64>() / l.len() as f64;
                    let ss: f64 = l.iter().map(|v| (v - m).powi(2)).sum();
                    vec![ss / (l.len() - unbiased as usize) as f64]
                })
            },
            Tol::default(),
        );
    }
    check_op(
        dev,
        "norm dim 0",
        &[Input::new(&dims, 51)],
        |t| t[0].norm_dims(&[0], true),
        |x| along(&x[0], &dims, 0, |l| vec![l.iter().map(|v| v * v).sum::<f64>().sqrt()]),
        Tol::default(),
    );
}

pub fn normalize_like_pytorch(dev: Device) {
    // F.normalize: x / max(||x||, eps); rows 0 and 2 are tiny, so they take the eps branch.
    let dims = [3, 5];
    let mut vals = crate::common::rand_vec(15, 60);
    for v in &mut vals[0..5] {
        *v *= 1e-4;
    }
    for v in &mut vals[10..15] {
        *v *= 1e-4;
    }
    let eps = 1e-3;
    for dim in [1usize, 0] {
        check_op(
            dev,
            &format!("normalize dim {dim}"),
            &[Input::with_values(&dims, vals.clone())],
            |t| t[0].normalize(dim as isize, eps),
            |x| {
                along(&x[0], &dims, dim, |l| {
                    let n = l.iter().map(|v| v * v).sum::<f64>().sqrt().max(eps as f64);
                    l.iter().map(|v| v / n).collect()
                })
            },
            Tol::default(),
        );
    }
}

macro_rules! reduce_tests {
    ($dev:expr) => {
        #[test]
        fn softmax_any_dim() {
            crate::reduce::softmax_any_dim($dev)
        }
        #[test]
        fn cross_entropy() {
            crate::reduce::cross_entropy($dev)
        }
        #[test]
        fn kl_div_batchmean() {
            crate::reduce::kl_div_batchmean($dev)
        }
        #[test]
        fn sum_mean_max() {
            crate::reduce::sum_mean_max($dev)
        }
        #[test]
        fn var_and_norm() {
            crate::reduce::var_and_norm($dev)
        }
        #[test]
        fn normalize_like_pytorch() {
            crate::reduce::normalize_like_pytorch($dev)
        }
    };
}
