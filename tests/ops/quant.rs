//! Fake quantisation (asymmetric min/max per tensor or per channel, PyTorch's f32 formulas with
//! round half to even) and its straight-through backward: hand values, a reference written
//! from PyTorch's `fake_quantize_per_channel_affine` definition, properties every quantiser
//! must have, agreement with the CPU backend, and bad inputs.

use crate::common::rand_vec;
use kdscout::backend::{QuantGeom, Storage};
use kdscout::Device;

fn run(dev: Device, x: &[f32], g: QuantGeom) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let be = dev.backend();
    let (y, s, z) = be.fake_quant(&be.from_host(x).unwrap(), &g).unwrap();
    (be.to_host(&y).unwrap(), be.to_host(&s).unwrap(), be.to_host(&z).unwrap())
}

/// PyTorch's MinMaxObserver (range including 0) + fake_quantize_per_channel_affine, per channel.
fn reference(x: &[f32], g: QuantGeom) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let qmax = ((1u64 << g.bits) - 1) as f32;
    let (mut y, mut scales, mut zps) = (Vec::new(), Vec::new(), Vec::new());
    for c in 0..g.channels {
        let xc = &x[c * g.len..(c + 1) * g.len];
        let min_val = xc.iter().fold(0.0f32, |a, &b| if b < a { b } else { a });
        let max_val = xc.iter().fold(0.0f32, |a, &b| if b > a { b } else { a });
        let scale = f32::max((max_val - min_val) / qmax, f32::EPSILON);
        let zp = f32::min(f32::max(0.0 - (min_val / scale).round_ties_even(), 0.0), qmax);
        let inv_scale = 1.0f32 / scale;
        for &v in xc {
            y.push((f32::min(f32::max((v * inv_scale).round_ties_even() + zp, 0.0), qmax) - zp) * scale);
        }
        scales.push(scale);
        zps.push(zp);
    }
    (y, scales, zps)
}

pub fn fake_quant_hand_values(dev: Device) {
    // Channel 0, 2 bits: range [-1, 2], scale 1, zero point 1; 0.5 is a tie and rounds to even (0).
    // Channel 1, 2 bits: range [0, 6], scale 2, zero point 0; 1/2 = 0.5 rounds to 0 as well.
    let x = [-1.0, 0.0, 0.5, 2.0, 0.0, 1.0, 2.0, 6.0];
    let (y, s, z) = run(dev, &x, QuantGeom { channels: 2, len: 4, bits: 2 });
    assert_eq!(y, vec![-1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 2.0, 6.0]);
    assert_eq!(s, vec![1.0, 2.0]);
    assert_eq!(z, vec![1.0, 0.0]);
    // Per tensor: one range [-1, 6] over both channels, 3 bits: scale 1, zero point 1.
    let (y, s, z) = run(dev, &x, QuantGeom { channels: 1, len: 8, bits: 3 });
    assert_eq!((s, z), (vec![1.0], vec![1.0]));
    assert_eq!(y, vec![-1.0, 0.0, 0.0, 2.0, 0.0, 1.0, 2.0, 6.0]);
    // All zeros: scale falls back to f32::EPSILON and zeros stay zeros.
    let (y, s, _) = run(dev, &[0.0; 5], QuantGeom { channels: 1, len: 5, bits: 8 });
    assert_eq!((y, s), (vec![0.0; 5], vec![f32::EPSILON]));
}

pub fn fake_quant_per_tensor_and_per_channel(dev: Device) {
    // 5 channels of 301 (a partial block each); one channel all positive, one scaled up.
    let mut x = rand_vec(5 * 301, 9);
    x[301..602].iter_mut().for_each(|v| *v = v.abs() + 0.5);
    x[602..903].iter_mut().for_each(|v| *v *= 40.0);
    for g in [
        QuantGeom { channels: 5, len: 301, bits: 4 },
        QuantGeom { channels: 1, len: 5 * 301, bits: 8 },
        QuantGeom { channels: 5, len: 301, bits: 1 },
        QuantGeom { channels: 301, len: 5, bits: 3 },
    ] {
        let (y, s, z) = run(dev, &x, g);
        let (ry, rs, rz) = reference(&x, g);
        assert_eq!(s, rs, "{g:?}: scales");
        assert_eq!(z, rz, "{g:?}: zero points");
        assert_eq!(y, ry, "{g:?}: values");
        for c in 0..g.channels {
            let yc = &y[c * g.len..(c + 1) * g.len];
            let xc = &x[c * g.len..(c + 1) * g.len];
            // Within half a step of the input (the range is the data's, so nothing clips)...
            for (&a, &b) in yc.iter().zip(xc) {
                assert!((a - b).abs() <= s[c] * 0.5 * (1.0 + 1e-5), "{g:?}: {b} quantised to {a}, step {}", s[c]);
            }
            // ... on at most 2^bits levels.
            let mut levels: Vec<f32> = yc.to_vec();
            levels.sort_by(f32::total_cmp);
            levels.dedup();
            assert!(levels.len() <= 1 << g.bits, "{g:?}: {} levels", levels.len());
        }
        // Every backend gives the CPU's bits.
        if dev != Device::Cpu {
            assert_eq!(y, run(Device::Cpu, &x, g).0, "{g:?}: differs from the CPU backend");
        }
    }
}

pub fn fake_quant_straight_through_backward(dev: Device) {
    let be = dev.backend();
    let x = rand_vec(700, 10);
    let dy = rand_vec(700, 11);
    // Given (not observed) parameters narrower than the data: scale 0.1, zero points 3 and 0, 3
    // bits (levels 0..=7), so gradients pass only where round(10 x) + zp lies in [0, 7].
    let g = QuantGeom { channels: 2, len: 350, bits: 3 };
    let (scale, zp) = ([0.1f32, 0.1], [3.0f32, 0.0]);
    let up = |v: &[f32]| -> Storage { be.from_host(v).unwrap() };
    let dx = be.to_host(&be.fake_quant_backward(&up(&x), &up(&dy), &up(&scale), &up(&zp), &g).unwrap()).unwrap();
    let mut passed = [0usize; 2];
    for i in 0..700 {
        let c = i / 350;
        let level = (x[i] * (1.0 / scale[c])).round_ties_even() + zp[c];
        let want = if (0.0..=7.0).contains(&level) { dy[i] } else { 0.0 };
        assert_eq!(dx[i], want, "element {i}: x {} level {level}", x[i]);
        passed[c] += (want != 0.0) as usize;
    }
    // Both outcomes occur in both channels, so the mask is really tested.
    assert!(passed.iter().all(|&p| p > 50 && p < 300), "{passed:?}");
    // With the observed parameters nothing clips: dx = dy.
    let (_, s, z) = be.fake_quant(&up(&x), &g).unwrap();
    let dx = be.to_host(&be.fake_quant_backward(&up(&x), &up(&dy), &s, &z, &g).unwrap()).unwrap();
    assert_eq!(dx, dy);
}

pub fn fake_quant_bad_inputs_are_errors(dev: Device) {
    let be = dev.backend();
    let x = be.from_host(&[0.5; 6]).unwrap();
    for bits in [0, 17] {
        let msg = be.fake_quant(&x, &QuantGeom { channels: 2, len: 3, bits }).unwrap_err().to_string();
        assert!(msg.contains("bit width") && msg.contains("1 to 16"), "{msg}");
    }
    let msg = be.fake_quant(&x, &QuantGeom { channels: 2, len: 4, bits: 8 }).unwrap_err().to_string();
    assert!(msg.contains("6 elements") && msg.contains('8'), "{msg}");
    let one = be.from_host(&[1.0]).unwrap();
    let g = QuantGeom { channels: 2, len: 3, bits: 8 };
    let msg = be.fake_quant_backward(&x, &x, &one, &one, &g).unwrap_err().to_string();
    assert!(msg.contains("scale"), "{msg}");
}

macro_rules! quant_tests {
    ($dev:expr) => {
        mod quant {
            #[test]
            fn fake_quant_hand_values() {
                crate::quant::fake_quant_hand_values($dev)
            }
            #[test]
            fn fake_quant_per_tensor_and_per_channel() {
                crate::quant::fake_quant_per_tensor_and_per_channel($dev)
            }
            #[test]
            fn fake_quant_straight_through_backward() {
                crate::quant::fake_quant_straight_through_backward($dev)
            }
            #[test]
            fn fake_quant_bad_inputs_are_errors() {
                crate::quant::fake_quant_bad_inputs_are_errors($dev)
            }
        }
    };
}
