//! The finite-difference hypergradient steps (DARTS/DistPro, METHODS.md §3.3): θ± = θ ± ε·v and
//! (g⁺ − g⁻)/(2ε), against f64 references, bit for bit against the CPU backend, and on a
//! quadratic whose mixed second derivative is known in closed form.

use crate::common::{assert_close, rand_vec, to_f64};
use kdscout::Device;

fn up(dev: Device, v: &[f32]) -> kdscout::backend::Storage {
    dev.backend().from_host(v).unwrap()
}

fn host(dev: Device, s: &kdscout::backend::Storage) -> Vec<f32> {
    dev.backend().to_host(s).unwrap()
}

pub fn fd_perturb_and_combine(dev: Device) {
    let be = dev.backend();
    // 1000 elements: several blocks of 256 and a partial one.
    let (theta, v) = (rand_vec(1000, 1), rand_vec(1000, 2));
    let eps = 0.0137f32;
    let (plus, minus) = be.fd_perturb(&up(dev, &theta), &up(dev, &v), eps).unwrap();
    let (plus, minus) = (host(dev, &plus), host(dev, &minus));
    let e = eps as f64;
    let want =
        |sign: f64| -> Vec<f64> { theta.iter().zip(&v).map(|(&t, &d)| t as f64 + sign * e * d as f64).collect() };
    assert_close(&plus, &want(1.0), 1e-6, 1e-7, "theta + eps v");
    assert_close(&minus, &want(-1.0), 1e-6, 1e-7, "theta - eps v");

    let (gp, gm) = (rand_vec(1000, 3), rand_vec(1000, 4));
    let hg = host(dev, &be.fd_combine(&up(dev, &gp), &up(dev, &gm), eps).unwrap());
    let want: Vec<f64> = to_f64(&gp).iter().zip(to_f64(&gm)).map(|(p, m)| (p - m) / (2.0 * e)).collect();
    assert_close(&hg, &want, 1e-6, 1e-6, "(g+ - g-) / 2 eps");

    // Every backend computes the same f32 operations: identical to the CPU.
    let cpu = Device::Cpu.backend();
    let (cp, cm) = cpu.fd_perturb(&up(Device::Cpu, &theta), &up(Device::Cpu, &v), eps).unwrap();
    assert_eq!(plus, host(Device::Cpu, &cp), "theta + eps v differs from the CPU backend");
    assert_eq!(minus, host(Device::Cpu, &cm), "theta - eps v differs from the CPU backend");
    let ch = cpu.fd_combine(&up(Device::Cpu, &gp), &up(Device::Cpu, &gm), eps).unwrap();
    assert_eq!(hg, host(Device::Cpu, &ch), "(g+ - g-) / 2 eps differs from the CPU backend");
}

/// L(θ, α) = Σ_i α_i θ_i² / 2 + Σ_i θ_i: ∇_α L = θ²/2, so the finite difference of ∇_α L at
/// θ ± ε·v is exactly ∂²L/∂α∂θ · v = θ ⊙ v for this quadratic (no O(ε²) term: (θ+εv)² −
/// (θ−εv)² = 4εθv).
pub fn fd_hypergradient_of_a_quadratic(dev: Device) {
    let be = dev.backend();
    let (theta, v) = (rand_vec(300, 5), rand_vec(300, 6));
    let eps = 1e-2f32;
    let (plus, minus) = be.fd_perturb(&up(dev, &theta), &up(dev, &v), eps).unwrap();
    let grad_alpha = |t: &[f32]| -> Vec<f32> { t.iter().map(|x| x * x / 2.0).collect() };
    let (gp, gm) = (grad_alpha(&host(dev, &plus)), grad_alpha(&host(dev, &minus)));
    let hv = host(dev, &be.fd_combine(&up(dev, &gp), &up(dev, &gm), eps).unwrap());
    let want: Vec<f64> = theta.iter().zip(&v).map(|(&t, &d)| t as f64 * d as f64).collect();
    // f32 rounding of θ±εv and of the squares, amplified by 1/(2ε) = 50.
    assert_close(&hv, &want, 1e-3, 2e-5, "mixed second derivative by finite differences");
}

pub fn fd_bad_inputs_are_errors(dev: Device) {
    let be = dev.backend();
    let (a, b) = (up(dev, &[1.0; 4]), up(dev, &[1.0; 3]));
    let msg = be.fd_perturb(&a, &b, 0.1).unwrap_err().to_string();
    assert!(msg.contains("theta") && msg.contains('4') && msg.contains('3'), "{msg}");
    assert!(be.fd_combine(&a, &b, 0.1).is_err());
    let msg = be.fd_combine(&a, &a, 0.0).unwrap_err().to_string();
    assert!(msg.contains("eps"), "{msg}");
}

macro_rules! hypergrad_tests {
    ($dev:expr) => {
        mod hypergrad {
            #[test]
            fn fd_perturb_and_combine() {
                crate::hypergrad::fd_perturb_and_combine($dev)
            }
            #[test]
            fn fd_hypergradient_of_a_quadratic() {
                crate::hypergrad::fd_hypergradient_of_a_quadratic($dev)
            }
            #[test]
            fn fd_bad_inputs_are_errors() {
                crate::hypergrad::fd_bad_inputs_are_errors($dev)
            }
        }
    };
}
