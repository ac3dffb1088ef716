//! The scalar of the f64 replay: plain `f64`, or a dual number `re + du·ε` (ε² = 0) that carries
//! a directional derivative through every operation. Replaying a graph with dual leaves
//! `w + v·ε` gives, in the `du` parts of its gradients, the exact Hessian-vector product H·v
//! (forward-over-reverse): the gradient rules are themselves differentiated in direction v. Rules
//! that branch (ReLU masks, max pooling, clamps) branch on `re` only, so their slopes are locally
//! constant, as PyTorch's double backward treats them.

use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

/// What a replay rule may do with a value.
pub trait Real:
    Copy
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + Sum
{
    /// A constant (no derivative).
    fn cst(v: f64) -> Self;
    /// A value moving with slope `d` (plain f64 carries no derivative: only the dual replay
    /// passes a direction).
    fn seed(v: f64, d: f64) -> Self;
    /// The value, without its derivative: what comparisons read.
    fn re(self) -> f64;
    /// Times a constant.
    fn sc(self, k: f64) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn powf(self, p: f64) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
    fn abs(self) -> Self;
    /// f(a, b) for an f linear in each argument, run on plain f64 arrays so that the heavy
    /// bilinear rules (convolutions) have one f64 kernel: for duals,
    /// (a + a′ε)·(b + b′ε) = f(a, b) + (f(a′, b) + f(a, b′))ε.
    fn bilinear(a: &[Self], b: &[Self], f: impl Fn(&[f64], &[f64]) -> Vec<f64>) -> Vec<Self>;
}

impl Real for f64 {
    fn cst(v: f64) -> f64 {
        v
    }
    fn seed(v: f64, _d: f64) -> f64 {
        v
    }
    fn re(self) -> f64 {
        self
    }
    fn sc(self, k: f64) -> f64 {
        self * k
    }
    fn exp(self) -> f64 {
        f64::exp(self)
    }
    fn ln(self) -> f64 {
        f64::ln(self)
    }
    fn ln_1p(self) -> f64 {
        f64::ln_1p(self)
    }
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
    fn powf(self, p: f64) -> f64 {
        f64::powf(self, p)
    }
    fn tanh(self) -> f64 {
        f64::tanh(self)
    }
    fn erf(self) -> f64 {
        libm::erf(self)
    }
    fn abs(self) -> f64 {
        f64::abs(self)
    }
    fn bilinear(a: &[f64], b: &[f64], f: impl Fn(&[f64], &[f64]) -> Vec<f64>) -> Vec<f64> {
        f(a, b)
    }
}

/// `re + du·ε` with ε² = 0.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Dual {
    pub re: f64,
    pub du: f64,
}

impl Dual {
    pub fn new(re: f64, du: f64) -> Dual {
        Dual { re, du }
    }
    /// f(re) with slope f'(re).
    fn chain(self, value: f64, slope: f64) -> Dual {
        Dual { re: value, du: self.du * slope }
    }
}

impl Add for Dual {
    type Output = Dual;
    fn add(self, o: Dual) -> Dual {
        Dual { re: self.re + o.re, du: self.du + o.du }
    }
}
impl Sub for Dual {
    type Output = Dual;
    fn sub(self, o: Dual) -> Dual {
        Dual { re: self.re - o.re, du: self.du - o.du }
    }
}
impl Mul for Dual {
    type Output = Dual;
    fn mul(self, o: Dual) -> Dual {
        Dual { re: self.re * o.re, du: self.re * o.du + self.du * o.re }
    }
}
impl Div for Dual {
    type Output = Dual;
    fn div(self, o: Dual) -> Dual {
        let q = self.re / o.re;
        Dual { re: q, du: (self.du - q * o.du) / o.re }
    }
}
impl Neg for Dual {
    type Output = Dual;
    fn neg(self) -> Dual {
        Dual { re: -self.re, du: -self.du }
    }
}
impl AddAssign for Dual {
    fn add_assign(&mut self, o: Dual) {
        self.re += o.re;
        self.du += o.du;
    }
}
impl Sum for Dual {
    fn sum<I: Iterator<Item = Dual>>(iter: I) -> Dual {
        iter.fold(Dual::default(), |a, b| a + b)
    }
}

impl Real for Dual {
    fn cst(v: f64) -> Dual {
        Dual { re: v, du: 0.0 }
    }
    fn seed(v: f64, d: f64) -> Dual {
        Dual { re: v, du: d }
    }
    fn re(self) -> f64 {
        self.re
    }
    fn sc(self, k: f64) -> Dual {
        Dual { re: self.re * k, du: self.du * k }
    }
    fn exp(self) -> Dual {
        let e = self.re.exp();
        self.chain(e, e)
    }
    fn ln(self) -> Dual {
        self.chain(self.re.ln(), 1.0 / self.re)
    }
    fn ln_1p(self) -> Dual {
        self.chain(self.re.ln_1p(), 1.0 / (1.0 + self.re))
    }
    fn sqrt(self) -> Dual {
        let s = self.re.sqrt();
        self.chain(s, 0.5 / s)
    }
    fn powf(self, p: f64) -> Dual {
        self.chain(self.re.powf(p), p * self.re.powf(p - 1.0))
    }
    fn tanh(self) -> Dual {
        let t = self.re.tanh();
        self.chain(t, 1.0 - t * t)
    }
    fn erf(self) -> Dual {
        self.chain(libm::erf(self.re), std::f64::consts::FRAC_2_SQRT_PI * (-self.re * self.re).exp())
    }
    fn abs(self) -> Dual {
        if self.re < 0.0 {
            -self
        } else {
            self
        }
    }
    fn bilinear(a: &[Dual], b: &[Dual], f: impl Fn(&[f64], &[f64]) -> Vec<f64>) -> Vec<Dual> {
        // The derivative parts, skipped where they are all zero (the input image, say).
        let parts = |v: &[Dual]| -> (Vec<f64>, Option<Vec<f64>>) {
            let du = v.iter().any(|d| d.du != 0.0).then(|| v.iter().map(|d| d.du).collect());
            (v.iter().map(|d| d.re).collect(), du)
        };
        let ((ar, ad), (br, bd)) = (parts(a), parts(b));
        let mut du = vec![0.0; 0];
        for term in [ad.map(|ad| f(&ad, &br)), bd.map(|bd| f(&ar, &bd))].into_iter().flatten() {
            if du.is_empty() {
                du = term;
            } else {
                du.iter_mut().zip(term).for_each(|(d, t)| *d += t);
            }
        }
        let re = f(&ar, &br);
        if du.is_empty() {
            du = vec![0.0; re.len()];
        }
        re.into_iter().zip(du).map(|(re, du)| Dual { re, du }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rule = (&'static str, fn(Dual) -> Dual);

    /// Each rule's derivative against a central difference of its value.
    #[test]
    fn dual_rules_match_central_differences() {
        let fs: [Rule; 9] = [
            ("exp", |x| x.exp()),
            ("ln", |x| x.ln()),
            ("ln_1p", |x| x.ln_1p()),
            ("sqrt", |x| x.sqrt()),
            ("powf", |x| x.powf(1.7)),
            ("tanh", |x| x.tanh()),
            ("erf", |x| x.erf()),
            ("div", |x| Dual::cst(2.0) / (x * x + x)),
            ("mix", |x| (x - Dual::cst(0.3)).abs() * x.sc(3.0) + (-x).exp()),
        ];
        for (name, f) in fs {
            for x in [0.4, 1.3, 2.9] {
                let d = f(Dual::new(x, 1.0)).du;
                let h = 1e-6;
                let fd = (f(Dual::cst(x + h)).re - f(Dual::cst(x - h)).re) / (2.0 * h);
                assert!((d - fd).abs() <= 1e-6 * fd.abs().max(1.0), "{name} at {x}: {d} vs {fd}");
            }
        }
    }
}
