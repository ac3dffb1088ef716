//! Data movement: permute, concat, narrow. Each copies contiguous runs where it can.

use crate::backend::DimGeom;

/// out[perm-ordered index] = x[index]. The innermost output dim is copied as a strided run.
pub fn permute(x: &[f32], dims: &[usize], perm: &[usize]) -> Vec<f32> {
    let r = dims.len();
    let mut in_strides = vec![1; r];
    for i in (0..r.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * dims[i + 1];
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    // Stride in x of each output dim.
    let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let mut out = vec![0.0; x.len()];
    if x.is_empty() || r == 0 {
        out.copy_from_slice(x);
        return out;
    }
    let inner = out_dims[r - 1];
    let inner_stride = src_strides[r - 1];
    let mut idx = vec![0usize; r - 1];
    for row in out.chunks_mut(inner) {
        let base: usize = idx.iter().zip(&src_strides).map(|(i, s)| i * s).sum();
        if inner_stride == 1 {
            row.copy_from_slice(&x[base..base + inner]);
        } else {
            for (j, o) in row.iter_mut().enumerate() {
                *o = x[base + j * inner_stride];
            }
        }
        // Advance the multi-index over the outer output dims.
        for d in (0..r - 1).rev() {
            idx[d] += 1;
            if idx[d] < out_dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

pub fn concat(parts: &[&[f32]], outer: usize, lens: &[usize], inner: usize) -> Vec<f32> {
    let total: usize = lens.iter().sum();
    let mut out = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for (p, &len) in parts.iter().zip(lens) {
            let run = len * inner;
            out.extend_from_slice(&p[o * run..(o + 1) * run]);
        }
    }
    out
}

pub fn narrow(x: &[f32], g: DimGeom, start: usize, len: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(g.outer * len * g.inner);
    for o in 0..g.outer {
        let base = (o * g.len + start) * g.inner;
        out.extend_from_slice(&x[base..base + len * g.inner]);
    }
    out
}
