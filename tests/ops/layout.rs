//! Reshape, permute, concat, narrow/split and channel shuffle.

use kdscout::{Device, Tensor};

use crate::common::{check_op, offset, Input, Tol};

fn permute_ref(x: &[f64], dims: &[usize], perm: &[usize]) -> Vec<f64> {
    let out: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let n: usize = dims.iter().product();
    (0..n)
        .map(|flat| {
            let mut oidx = vec![0; out.len()];
            let mut rem = flat;
            for d in (0..out.len()).rev() {
                oidx[d] = rem % out[d];
                rem /= out[d];
            }
            let mut iidx = vec![0; dims.len()];
            for (d, &p) in perm.iter().enumerate() {
                iidx[p] = oidx[d];
            }
            x[offset(dims, &iidx)]
        })
        .collect()
}

pub fn permute(dev: Device) {
    let dims = [2, 3, 5, 7];
    for perm in [[0, 2, 3, 1], [3, 2, 1, 0], [1, 0, 2, 3], [0, 1, 3, 2]] {
        check_op(
            dev,
            &format!("permute {perm:?}"),
            &[Input::new(&dims, 1)],
            |t| t[0].permute(&perm),
            |x| permute_ref(&x[0], &dims, &perm),
            Tol::default(),
        );
    }
    check_op(
        dev,
        "transpose",
        &[Input::new(&[5, 7], 2)],
        |t| t[0].transpose(0, 1),
        |x| permute_ref(&x[0], &[5, 7], &[1, 0]),
        Tol::default(),
    );
    assert!(Tensor::zeros([2, 3], dev).unwrap().permute(&[0, 0]).is_err());
}

pub fn reshape_and_flatten(dev: Device) {
    check_op(
        dev,
        "reshape",
        &[Input::new(&[3, 5, 7], 3)],
        |t| t[0].reshape([7, 15])?.flatten_from(0),
        |x| x[0].clone(),
        Tol::default(),
    );
    let err = Tensor::zeros([3, 5], dev).unwrap().reshape([4, 4]).unwrap_err().to_string();
    assert!(err.contains("[3, 5]") && err.contains("[4, 4]"), "{err}");
}

pub fn concat_and_narrow(dev: Device) {
    // Concat along dim 1 of [2, a, 3] pieces, then take a narrow slice back out.
    let (a, b, c) = (Input::new(&[2, 1, 3], 4), Input::new(&[2, 4, 3], 5), Input::new(&[2, 2, 3], 6));
    check_op(
        dev,
        "concat dim 1",
        &[a, b, c],
        |t| Tensor::concat(&[&t[0], &t[1], &t[2]], 1),
        |x| {
            let mut out = Vec::new();
            for o in 0..2 {
                for (p, len) in [(0, 1), (1, 4), (2, 2)] {
                    out.extend_from_slice(&x[p][o * len * 3..(o + 1) * len * 3]);
                }
            }
            out
        },
        Tol::default(),
    );
    check_op(
        dev,
        "narrow dim 2",
        &[Input::new(&[3, 2, 7], 7)],
        |t| t[0].narrow(2, 2, 4),
        |x| (0..6).flat_map(|row| x[0][row * 7 + 2..row * 7 + 6].to_vec()).collect(),
        Tol::default(),
    );
    check_op(
        dev,
        "split dim 0 then recombine",
        &[Input::new(&[5, 3], 8)],
        |t| {
            let parts = t[0].split(&[2, 3], 0)?;
            Tensor::concat(&[&parts[1], &parts[0]], 0)
        },
        |x| x[0][6..].iter().chain(&x[0][..6]).copied().collect(),
        Tol::default(),
    );
    let z = Tensor::zeros([2, 3], dev).unwrap();
    assert!(Tensor::concat(&[&z, &Tensor::zeros([3, 2], dev).unwrap()], 0).is_err());
    assert!(z.narrow(1, 2, 2).is_err());
}

pub fn channel_shuffle(dev: Device) {
    // ShuffleNet: channel k of group g moves to position k*groups + g.
    let (n, c, h, w, groups) = (2, 6, 3, 1, 3);
    check_op(
        dev,
        "channel_shuffle",
        &[Input::new(&[n, c, h, w], 9)],
        |t| t[0].channel_shuffle(groups),
        |x| {
            let per = c / groups;
            let mut out = vec![0.0; x[0].len()];
            for b in 0..n {
                for g in 0..groups {
                    for k in 0..per {
                        let (src, dst) = (g * per + k, k * groups + g);
                        for s in 0..h * w {
                            out[(b * c + dst) * h * w + s] = x[0][(b * c + src) * h * w + s];
                        }
                    }
                }
            }
            out
        },
        Tol::default(),
    );
    assert!(Tensor::zeros([1, 5, 2, 2], dev).unwrap().channel_shuffle(2).is_err());
}

macro_rules! layout_tests {
    ($dev:expr) => {
        #[test]
        fn permute() {
            crate::layout::permute($dev)
        }
        #[test]
        fn reshape_and_flatten() {
            crate::layout::reshape_and_flatten($dev)
        }
        #[test]
        fn concat_and_narrow() {
            crate::layout::concat_and_narrow($dev)
        }
        #[test]
        fn channel_shuffle() {
            crate::layout::channel_shuffle($dev)
        }
    };
}
