//! Shapes: dimension lists with the broadcasting and dim-resolution rules the ops share.

use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// Resolve a possibly negative dim (-1 = last) against this rank.
    pub fn resolve_dim(&self, op: &'static str, dim: isize) -> Result<usize> {
        let r = self.rank() as isize;
        let d = if dim < 0 { dim + r } else { dim };
        if r == 0 || d < 0 || d >= r {
            return Err(Error::invalid(op, format!("dim {dim} out of range for shape {self}")));
        }
        Ok(d as usize)
    }

    /// The numpy broadcast of two shapes, or an error naming both.
    pub fn broadcast(op: &'static str, a: &Shape, b: &Shape) -> Result<Shape> {
        let r = a.rank().max(b.rank());
        let (pa, pb) = (a.padded(r), b.padded(r));
        let mut out = Vec::with_capacity(r);
        for i in 0..r {
            let (x, y) = (pa[i], pb[i]);
            out.push(if x == y || y == 1 {
                x
            } else if x == 1 {
                y
            } else {
                return Err(Error::shape(op, format!("cannot broadcast {a} with {b}")));
            });
        }
        Ok(Shape(out))
    }

    /// Dims left-padded with ones to rank `r`.
    pub fn padded(&self, r: usize) -> Vec<usize> {
        let mut v = vec![1; r - self.rank()];
        v.extend_from_slice(&self.0);
        v
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
