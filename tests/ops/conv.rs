//! conv2d op tests: forward against a naive f64 convolution, data and weight gradients against
//! its finite differences, over odd channel counts, 1x1 and 7x7 maps, batch 1 and 3, strides,
//! paddings 0/1/3, 1x1 and 7x7 kernels, groups, depthwise (with and without a channel
//! multiplier); and the shape errors the Tensor layer reports.

use crate::common::{check_op, Input, Tol};
use kdscout::{Device, Tensor};

/// One conv2d problem: x [n, c_in, h, w], w [c_out, c_in/groups, kh, kw].
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    groups: usize,
}

impl Case {
    fn out(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad.0 - self.k.0) / self.stride.0 + 1,
            (self.w + 2 * self.pad.1 - self.k.1) / self.stride.1 + 1,
        )
    }
}

fn conv_ref(x: &[f64], wt: &[f64], c: Case) -> Vec<f64> {
    let (ho, wo) = c.out();
    let (cig, cog) = (c.c_in / c.groups, c.c_out / c.groups);
    let mut y = vec![0.0; c.n * c.c_out * ho * wo];
    for n in 0..c.n {
        for co in 0..c.c_out {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = 0.0;
                    for cl in 0..cig {
                        let ci = co / cog * cig + cl;
                        for ky in 0..c.k.0 {
                            for kx in 0..c.k.1 {
                                let iy = (oy * c.stride.0 + ky) as isize - c.pad.0 as isize;
                                let ix = (ox * c.stride.1 + kx) as isize - c.pad.1 as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < c.h && (ix as usize) < c.w {
                                    let xv = x[((n * c.c_in + ci) * c.h + iy as usize) * c.w + ix as usize];
                                    s += xv * wt[((co * cig + cl) * c.k.0 + ky) * c.k.1 + kx];
                                }
                            }
                        }
                    }
                    y[((n * c.c_out + co) * ho + oy) * wo + ox] = s;
                }
            }
        }
    }
    y
}

fn check_conv(dev: Device, c: Case) {
    let x_shape = [c.n, c.c_in, c.h, c.w];
    let w_shape = [c.c_out, c.c_in / c.groups, c.k.0, c.k.1];
    let taps = (c.c_in / c.groups * c.k.0 * c.k.1) as f64;
    // Sums of up to a few hundred products of values in [-1, 1): scale the absolute slack.
    let tol = Tol { fwd_rtol: 1e-4, fwd_atol: 2e-5 * taps.sqrt(), grad_rtol: 1e-3, grad_atol: 2e-4 * taps.sqrt() };
    check_op(
        dev,
        &format!("conv2d {c:?}"),
        &[Input::new(&x_shape, 31), Input::new(&w_shape, 32)],
        |t| t[0].conv2d(&t[1], c.stride, c.pad, c.groups),
        |v| conv_ref(&v[0], &v[1], c),
        tol,
    );
}

#[allow(clippy::too_many_arguments)]
fn case(n: usize, c_in: usize, hw: usize, c_out: usize, k: usize, stride: usize, pad: usize, groups: usize) -> Case {
    Case { n, c_in, h: hw, w: hw, c_out, k: (k, k), stride: (stride, stride), pad: (pad, pad), groups }
}

pub fn odd_channels_3x3(dev: Device) {
    check_conv(dev, case(3, 3, 7, 5, 3, 1, 1, 1));
    check_conv(dev, case(1, 5, 9, 7, 3, 1, 1, 1));
    check_conv(dev, case(3, 7, 6, 3, 3, 1, 0, 1));
}

pub fn stride2(dev: Device) {
    check_conv(dev, case(1, 5, 9, 7, 3, 2, 1, 1));
    check_conv(dev, case(3, 3, 8, 5, 3, 2, 0, 1));
    // Different strides and paddings along height and width, and a non-square kernel.
    check_conv(dev, Case { n: 2, c_in: 3, h: 9, w: 8, c_out: 5, k: (3, 1), stride: (1, 2), pad: (1, 0), groups: 1 });
    check_conv(dev, Case { n: 1, c_in: 2, h: 7, w: 10, c_out: 3, k: (2, 5), stride: (2, 1), pad: (0, 2), groups: 1 });
}

pub fn pointwise(dev: Device) {
    // 1x1 stride 1 unpadded goes straight to GEMM; strided or padded 1x1 goes through im2col.
    check_conv(dev, case(3, 7, 5, 5, 1, 1, 0, 1));
    check_conv(dev, case(1, 33, 13, 7, 1, 1, 0, 1));
    check_conv(dev, case(3, 5, 7, 3, 1, 2, 0, 1));
    check_conv(dev, case(1, 3, 5, 5, 1, 1, 1, 1));
}

pub fn tiny_maps(dev: Device) {
    // 1x1 maps: a 1x1 kernel, and a 3x3 kernel that sees only its centre tap.
    check_conv(dev, case(3, 7, 1, 5, 1, 1, 0, 1));
    check_conv(dev, case(1, 5, 1, 3, 3, 1, 1, 1));
    // 7x7 map with a 7x7 kernel: one output pixel per channel.
    check_conv(dev, case(3, 3, 7, 5, 7, 1, 0, 1));
}

pub fn kernel_7x7(dev: Device) {
    check_conv(dev, case(1, 3, 7, 5, 7, 2, 3, 1));
    check_conv(dev, case(3, 3, 11, 4, 7, 1, 3, 1));
}

pub fn groups(dev: Device) {
    check_conv(dev, case(3, 6, 7, 4, 3, 1, 1, 2));
    check_conv(dev, case(1, 10, 5, 6, 3, 2, 1, 2));
    check_conv(dev, case(2, 6, 6, 9, 1, 1, 0, 3));
}

pub fn depthwise(dev: Device) {
    check_conv(dev, case(3, 5, 7, 5, 3, 1, 1, 5));
    check_conv(dev, case(1, 7, 9, 7, 3, 2, 1, 7));
    check_conv(dev, case(3, 3, 7, 3, 7, 1, 3, 3));
    check_conv(dev, case(1, 5, 1, 5, 3, 1, 1, 5));
}

pub fn depthwise_multiplier(dev: Device) {
    // Two and three output channels per input channel.
    check_conv(dev, case(3, 3, 7, 6, 3, 1, 1, 3));
    check_conv(dev, case(1, 5, 8, 15, 3, 2, 1, 5));
    // One input channel, many outputs (a grayscale first layer).
    check_conv(dev, case(3, 1, 7, 5, 3, 1, 0, 1));
}

pub fn shape_errors(dev: Device) {
    let t = |shape: &[usize]| Tensor::from_slice(&vec![0.5; shape.iter().product()], shape.to_vec(), dev).unwrap();
    let err = |x: &Tensor, w: &Tensor, pad: usize, groups: usize| match x.conv2d(w, (1, 1), (pad, pad), groups) {
        Ok(y) => panic!("conv2d {} with {} should fail, gave {}", x.shape(), w.shape(), y.shape()),
        Err(e) => e.to_string(),
    };
    // Channels of x and w disagree.
    let msg = err(&t(&[2, 3, 5, 5]), &t(&[4, 2, 3, 3]), 1, 1);
    assert!(msg.contains("[2, 3, 5, 5]") && msg.contains("[4, 2, 3, 3]"), "{msg}");
    // Groups that do not divide the channels.
    let msg = err(&t(&[1, 6, 5, 5]), &t(&[5, 3, 3, 3]), 1, 2);
    assert!(msg.contains("[1, 6, 5, 5]") && msg.contains("[5, 3, 3, 3]"), "{msg}");
    let msg = err(&t(&[1, 6, 5, 5]), &t(&[4, 2, 3, 3]), 1, 4);
    assert!(msg.contains("[4, 2, 3, 3]"), "{msg}");
    // Wrong ranks.
    let msg = err(&t(&[3, 5, 5]), &t(&[4, 3, 3, 3]), 1, 1);
    assert!(msg.contains("[3, 5, 5]"), "{msg}");
    let msg = err(&t(&[1, 3, 5, 5]), &t(&[4, 3, 3]), 1, 1);
    assert!(msg.contains("[4, 3, 3]"), "{msg}");
    // A kernel larger than the padded input, and zero groups.
    assert!(t(&[1, 3, 2, 2]).conv2d(&t(&[4, 3, 5, 5]), (1, 1), (1, 1), 1).is_err());
    assert!(t(&[1, 3, 5, 5]).conv2d(&t(&[4, 3, 3, 3]), (1, 1), (1, 1), 0).is_err());
}

macro_rules! conv_tests {
    ($dev:expr) => {
        #[test]
        fn conv_odd_channels_3x3() {
            crate::conv::odd_channels_3x3($dev)
        }
        #[test]
        fn conv_stride2() {
            crate::conv::stride2($dev)
        }
        #[test]
        fn conv_pointwise() {
            crate::conv::pointwise($dev)
        }
        #[test]
        fn conv_tiny_maps() {
            crate::conv::tiny_maps($dev)
        }
        #[test]
        fn conv_kernel_7x7() {
            crate::conv::kernel_7x7($dev)
        }
        #[test]
        fn conv_groups() {
            crate::conv::groups($dev)
        }
        #[test]
        fn conv_depthwise() {
            crate::conv::depthwise($dev)
        }
        #[test]
        fn conv_depthwise_multiplier() {
            crate::conv::depthwise_multiplier($dev)
        }
        #[test]
        fn conv_shape_errors() {
            crate::conv::shape_errors($dev)
        }
    };
}
