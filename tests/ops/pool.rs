//! Pooling and resampling tests: max/avg pooling (stride != kernel, padding, both
//! count_include_pad values, 1x1 and 7x7 maps), adaptive average pooling with non-divisible
//! bins, nearest and bilinear interpolation up and down. References are direct loops over the
//! PyTorch definitions in f64.

use crate::common::{check_op, offset, Input, Tol};
use kdscout::backend::{InterpMode, PoolKind};
use kdscout::rng::Rng;
use kdscout::{Device, Tensor};

/// Distinct values (a shuffled ramp with spacing 1e-2) so every pooling window has a unique
/// maximum that stays unique under finite-difference steps.
pub fn distinct(shape: &[usize], seed: u64) -> Input {
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 1e-2).collect();
    let mut rng = Rng::seed(seed);
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    Input::with_values(shape, v)
}

/// Reference pooling of x [n, c, h, w] (floor mode), straight from the PyTorch definitions.
pub fn pool_ref(
    x: &[f64],
    d: &[usize],
    kind: PoolKind,
    k: (usize, usize),
    s: (usize, usize),
    p: (usize, usize),
) -> Vec<f64> {
    let (n, c, h, w) = (d[0], d[1], d[2], d[3]);
    let ho = (h + 2 * p.0 - k.0) / s.0 + 1;
    let wo = (w + 2 * p.1 - k.1) / s.1 + 1;
    let mut y = Vec::new();
    for b in 0..n {
        for ch in 0..c {
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut best = f64::NEG_INFINITY;
                    let (mut sum, mut real, mut padded) = (0.0, 0usize, 0usize);
                    for i in 0..k.0 {
                        for j in 0..k.1 {
                            let hi = (oh * s.0 + i) as isize - p.0 as isize;
                            let wj = (ow * s.1 + j) as isize - p.1 as isize;
                            // Positions inside the padded extent count for count_include_pad.
                            if hi < (h + p.0) as isize && wj < (w + p.1) as isize {
                                padded += 1;
                            }
                            if hi < 0 || wj < 0 || hi >= h as isize || wj >= w as isize {
                                continue;
                            }
                            let v = x[offset(d, &[b, ch, hi as usize, wj as usize])];
                            best = best.max(v);
                            sum += v;
                            real += 1;
                        }
                    }
                    y.push(match kind {
                        PoolKind::Max => best,
                        PoolKind::Avg { count_include_pad: true } => sum / padded as f64,
                        PoolKind::Avg { count_include_pad: false } => sum / real as f64,
                    });
                }
            }
        }
    }
    y
}

fn check_pool(dev: Device, shape: &[usize], kind: PoolKind, k: (usize, usize), s: (usize, usize), p: (usize, usize)) {
    let what = format!("pool2d {kind:?} {shape:?} k{k:?} s{s:?} p{p:?}");
    let input = match kind {
        PoolKind::Max => distinct(shape, 7),
        PoolKind::Avg { .. } => Input::new(shape, 7),
    };
    let d = shape.to_vec();
    check_op(
        dev,
        &what,
        &[input],
        |t| t[0].pool2d(kind, k, s, p),
        |x| pool_ref(&x[0], &d, kind, k, s, p),
        Tol::default(),
    );
}

const AVG_PAD: PoolKind = PoolKind::Avg { count_include_pad: true };
const AVG_NOPAD: PoolKind = PoolKind::Avg { count_include_pad: false };

pub fn max_pool2d_basic(dev: Device) {
    // The ResNet stem pooling: 3x3, stride 2, padding 1, on a 7x7 map with odd channels.
    check_pool(dev, &[2, 3, 7, 7], PoolKind::Max, (3, 3), (2, 2), (1, 1));
    check_pool(dev, &[1, 5, 6, 6], PoolKind::Max, (2, 2), (2, 2), (0, 0));
}

pub fn max_pool2d_stride_ne_kernel(dev: Device) {
    // Overlapping windows (stride < kernel) accumulate several gradients into one input.
    check_pool(dev, &[1, 3, 7, 7], PoolKind::Max, (3, 3), (1, 1), (1, 1));
    check_pool(dev, &[2, 1, 6, 5], PoolKind::Max, (2, 2), (1, 1), (0, 0));
    // Stride > kernel skips inputs; rectangular kernel, stride and padding.
    check_pool(dev, &[1, 3, 7, 7], PoolKind::Max, (2, 2), (3, 3), (1, 1));
    check_pool(dev, &[2, 3, 7, 6], PoolKind::Max, (3, 2), (2, 1), (1, 0));
}

pub fn max_pool2d_1x1_map(dev: Device) {
    check_pool(dev, &[1, 3, 1, 1], PoolKind::Max, (1, 1), (1, 1), (0, 0));
    // A 1x1 map padded to 3x3: every window holds the single real value.
    check_pool(dev, &[2, 3, 1, 1], PoolKind::Max, (2, 2), (1, 1), (1, 1));
}

pub fn max_pool2d_first_maximum_on_ties(dev: Device) {
    // All-equal window: PyTorch routes the gradient to the first element in row-major order.
    let x = Tensor::from_slice(&[1.0, 1.0, 1.0, 1.0], [1, 1, 2, 2], dev).unwrap().requires_grad_();
    let y = x.max_pool2d(2, 2, 0).unwrap();
    assert_eq!(y.to_vec().unwrap(), vec![1.0]);
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grads.of(&x).unwrap().to_vec().unwrap(), vec![1.0, 0.0, 0.0, 0.0]);
    // Padding never wins, even over negative inputs.
    let x = Tensor::from_slice(&[-3.0, -2.0, -5.0, -4.0], [1, 1, 2, 2], dev).unwrap();
    assert_eq!(
        x.max_pool2d(2, 1, 1).unwrap().to_vec().unwrap(),
        vec![-3.0, -2.0, -2.0, -3.0, -2.0, -2.0, -5.0, -4.0, -4.0]
    );
}

pub fn avg_pool2d_count_include_pad(dev: Device) {
    for kind in [AVG_PAD, AVG_NOPAD] {
        check_pool(dev, &[2, 3, 7, 7], kind, (3, 3), (2, 2), (1, 1));
        check_pool(dev, &[1, 3, 7, 7], kind, (3, 3), (1, 1), (1, 1));
        check_pool(dev, &[2, 5, 6, 7], kind, (2, 3), (1, 2), (1, 1));
        check_pool(dev, &[1, 3, 5, 5], kind, (2, 2), (3, 3), (1, 1));
    }
}

pub fn avg_pool2d_no_padding(dev: Device) {
    check_pool(dev, &[2, 3, 6, 6], AVG_PAD, (2, 2), (2, 2), (0, 0));
    check_pool(dev, &[1, 3, 7, 7], AVG_NOPAD, (7, 7), (1, 1), (0, 0));
}

pub fn avg_pool2d_1x1_map(dev: Device) {
    for kind in [AVG_PAD, AVG_NOPAD] {
        check_pool(dev, &[1, 5, 1, 1], kind, (1, 1), (1, 1), (0, 0));
        check_pool(dev, &[1, 3, 1, 1], kind, (2, 2), (1, 1), (1, 1));
    }
    // Hand values: one real 2 in a 2x2 window with 3 padded cells.
    let x = Tensor::from_slice(&[2.0], [1, 1, 1, 1], dev).unwrap();
    assert_eq!(x.avg_pool2d(2, 1, 1, true).unwrap().to_vec().unwrap(), vec![0.5; 4]);
    assert_eq!(x.avg_pool2d(2, 1, 1, false).unwrap().to_vec().unwrap(), vec![2.0; 4]);
}

pub fn pool2d_large_parallel(dev: Device) {
    // Big enough for the rayon path.
    check_pool(dev, &[2, 9, 40, 40], PoolKind::Max, (3, 3), (2, 2), (1, 1));
    check_pool(dev, &[2, 9, 40, 40], AVG_NOPAD, (3, 3), (2, 2), (1, 1));
}

/// Reference adaptive average pooling: bins [floor(i·in/out), ceil((i+1)·in/out)).
pub fn adaptive_ref(x: &[f64], d: &[usize], oh: usize, ow: usize) -> Vec<f64> {
    let (n, c, h, w) = (d[0], d[1], d[2], d[3]);
    let bin = |i: usize, inp: usize, out: usize| {
        ((i * inp) as f64 / out as f64).floor() as usize..(((i + 1) * inp) as f64 / out as f64).ceil() as usize
    };
    let mut y = Vec::new();
    for b in 0..n {
        for ch in 0..c {
            for i in 0..oh {
                for j in 0..ow {
                    let (mut s, mut cnt) = (0.0, 0.0);
                    for hi in bin(i, h, oh) {
                        for wj in bin(j, w, ow) {
                            s += x[offset(d, &[b, ch, hi, wj])];
                            cnt += 1.0;
                        }
                    }
                    y.push(s / cnt);
                }
            }
        }
    }
    y
}

fn check_adaptive(dev: Device, shape: &[usize], oh: usize, ow: usize) {
    let d = shape.to_vec();
    check_op(
        dev,
        &format!("adaptive_avg_pool2d {shape:?} -> {oh}x{ow}"),
        &[Input::new(shape, 11)],
        |t| t[0].adaptive_avg_pool2d(oh, ow),
        |x| adaptive_ref(&x[0], &d, oh, ow),
        Tol::default(),
    );
}

pub fn adaptive_avg_pool2d_bins(dev: Device) {
    check_adaptive(dev, &[2, 3, 7, 7], 3, 3);
    check_adaptive(dev, &[1, 5, 5, 5], 2, 2);
    check_adaptive(dev, &[2, 3, 7, 5], 3, 2);
    check_adaptive(dev, &[2, 3, 7, 7], 1, 1);
    check_adaptive(dev, &[1, 3, 1, 1], 1, 1);
    check_adaptive(dev, &[2, 3, 6, 6], 6, 6);
    // Upsampling: overlapping single-pixel bins.
    check_adaptive(dev, &[1, 3, 3, 2], 5, 4);
    check_adaptive(dev, &[2, 16, 32, 32], 1, 1);
}

/// Reference resampling, per PyTorch: nearest src = min(floor(dst·scale), in−1) with the scale
/// rounded to f32 as PyTorch computes it; bilinear (align_corners=False)
/// src = max((dst+0.5)·in/out − 0.5, 0), neighbours floor(src) and the next one clamped.
pub fn interp_ref(x: &[f64], d: &[usize], mode: InterpMode, oh: usize, ow: usize) -> Vec<f64> {
    let (n, c, h, w) = (d[0], d[1], d[2], d[3]);
    // (i0, i1, weight of i1) per output coordinate.
    let taps = |dst: usize, inp: usize, out: usize| -> (usize, usize, f64) {
        match mode {
            InterpMode::Nearest => {
                let scale = inp as f32 / out as f32;
                let i = ((dst as f32 * scale).floor() as usize).min(inp - 1);
                (i, i, 0.0)
            }
            InterpMode::Bilinear => {
                let src = ((dst as f64 + 0.5) * inp as f64 / out as f64 - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                (i0, i1, src - i0 as f64)
            }
        }
    };
    let mut y = Vec::new();
    for b in 0..n {
        for ch in 0..c {
            for i in 0..oh {
                let (h0, h1, lh) = taps(i, h, oh);
                for j in 0..ow {
                    let (w0, w1, lw) = taps(j, w, ow);
                    let at = |hh: usize, ww: usize| x[offset(d, &[b, ch, hh, ww])];
                    y.push(
                        (1.0 - lh) * ((1.0 - lw) * at(h0, w0) + lw * at(h0, w1))
                            + lh * ((1.0 - lw) * at(h1, w0) + lw * at(h1, w1)),
                    );
                }
            }
        }
    }
    y
}

fn check_interp(dev: Device, mode: InterpMode, shape: &[usize], oh: usize, ow: usize) {
    let d = shape.to_vec();
    check_op(
        dev,
        &format!("interpolate {mode:?} {shape:?} -> {oh}x{ow}"),
        &[Input::new(shape, 13)],
        |t| t[0].interpolate(mode, oh, ow),
        |x| interp_ref(&x[0], &d, mode, oh, ow),
        Tol::default(),
    );
}

fn interp_sizes(dev: Device, mode: InterpMode) {
    // Upsampling: exact factors, non-integer factors, from a 1x1 map.
    check_interp(dev, mode, &[2, 3, 4, 4], 8, 8);
    check_interp(dev, mode, &[1, 3, 3, 4], 7, 9);
    check_interp(dev, mode, &[1, 5, 1, 1], 4, 3);
    // Downsampling, non-divisible, and to 1x1.
    check_interp(dev, mode, &[2, 3, 7, 7], 3, 3);
    check_interp(dev, mode, &[1, 3, 5, 5], 2, 3);
    check_interp(dev, mode, &[1, 3, 7, 7], 1, 1);
    // Identity size and mixed up/down.
    check_interp(dev, mode, &[1, 3, 5, 6], 5, 6);
    check_interp(dev, mode, &[2, 1, 6, 3], 4, 7);
    // The rayon path.
    check_interp(dev, mode, &[2, 8, 24, 24], 48, 40);
}

pub fn interpolate_nearest(dev: Device) {
    interp_sizes(dev, InterpMode::Nearest);
    // Hand values: 2 -> 3 picks source rows floor(0·2/3)=0, floor(2/3)=0, floor(4/3)=1.
    let x = Tensor::from_slice(&[1.0, 2.0], [1, 1, 1, 2], dev).unwrap();
    assert_eq!(x.interpolate(InterpMode::Nearest, 1, 3).unwrap().to_vec().unwrap(), vec![1.0, 1.0, 2.0]);
}

pub fn interpolate_bilinear(dev: Device) {
    interp_sizes(dev, InterpMode::Bilinear);
    // Hand values: 2 -> 4 along w gives src -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped
    // neighbour): 1, 1.25, 1.75, 2.
    let x = Tensor::from_slice(&[1.0, 2.0], [1, 1, 1, 2], dev).unwrap();
    assert_eq!(x.interpolate(InterpMode::Bilinear, 1, 4).unwrap().to_vec().unwrap(), vec![1.0, 1.25, 1.75, 2.0]);
}

pub fn pool_bad_inputs_are_errors(dev: Device) {
    let x = Tensor::from_slice(&[0.0; 12], [1, 3, 2, 2], dev).unwrap();
    // Kernel larger than the padded input.
    assert!(x.max_pool2d(5, 1, 0).is_err());
    assert!(x.avg_pool2d(5, 1, 1, true).is_err());
    // Padding over half the kernel, zero stride, zero kernel.
    assert!(x.max_pool2d(2, 1, 2).is_err());
    assert!(x.max_pool2d(2, 0, 0).is_err());
    assert!(x.pool2d(PoolKind::Max, (0, 1), (1, 1), (0, 0)).is_err());
    // Wrong rank and empty output sizes.
    let flat = Tensor::from_slice(&[0.0; 4], [2, 2], dev).unwrap();
    assert!(flat.max_pool2d(1, 1, 0).is_err());
    assert!(flat.adaptive_avg_pool2d(1, 1).is_err());
    assert!(x.adaptive_avg_pool2d(0, 1).is_err());
    assert!(x.interpolate(InterpMode::Bilinear, 3, 0).is_err());
}

macro_rules! pool_tests {
    ($dev:expr) => {
        mod pool {
            #[test]
            fn max_pool2d_basic() {
                crate::pool::max_pool2d_basic($dev)
            }
            #[test]
            fn max_pool2d_stride_ne_kernel() {
                crate::pool::max_pool2d_stride_ne_kernel($dev)
            }
            #[test]
            fn max_pool2d_1x1_map() {
                crate::pool::max_pool2d_1x1_map($dev)
            }
            #[test]
            fn max_pool2d_first_maximum_on_ties() {
                crate::pool::max_pool2d_first_maximum_on_ties($dev)
            }
            #[test]
            fn avg_pool2d_count_include_pad() {
                crate::pool::avg_pool2d_count_include_pad($dev)
            }
            #[test]
            fn avg_pool2d_no_padding() {
                crate::pool::avg_pool2d_no_padding($dev)
            }
            #[test]
            fn avg_pool2d_1x1_map() {
                crate::pool::avg_pool2d_1x1_map($dev)
            }
            #[test]
            fn pool2d_large_parallel() {
                crate::pool::pool2d_large_parallel($dev)
            }
            #[test]
            fn adaptive_avg_pool2d_bins() {
                crate::pool::adaptive_avg_pool2d_bins($dev)
            }
            #[test]
            fn interpolate_nearest() {
                crate::pool::interpolate_nearest($dev)
            }
            #[test]
            fn interpolate_bilinear() {
                crate::pool::interpolate_bilinear($dev)
            }
            #[test]
            fn pool_bad_inputs_are_errors() {
                crate::pool::pool_bad_inputs_are_errors($dev)
            }
        }
    };
}
