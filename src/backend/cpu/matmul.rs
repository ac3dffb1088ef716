//! Batched matmul on the CPU through the `gemm` crate (AVX-512 kernels chosen at run time).
//! Transposes and batch broadcasts are expressed through gemm's strides, never by copying.
//! `sgemm` is also the GEMM entry point of the convolutions.

use crate::backend::MatmulGeom;
use crate::error::Result;
use gemm::Parallelism;
use rayon::prelude::*;

/// Below this many FLOPs a GEMM runs on one thread: rayon's fork/join costs more than it saves.
pub(crate) const PAR_MIN_FLOPS: f64 = (1 << 21) as f64;

/// A read-only strided matrix operand: element (i, j) at `ptr[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// A writable strided matrix: element (i, j) at `ptr[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
}

/// dst[m x n] (+)= lhs[m x k] · rhs[k x n] (added when `accumulate`, overwritten otherwise).
///
/// # Safety
/// Every element addressed by the three views (sizes m x k, k x n, m x n) must be in bounds of
/// live allocations, `dst` must not alias `lhs` or `rhs`, and no other thread may touch the
/// `dst` elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    lhs: MatRef,
    rhs: MatRef,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: nothing to add, or zeros to write. gemm is not asked about this corner.
        if !accumulate {
            for i in 0..m as isize {
                for j in 0..n as isize {
                    // SAFETY: (i, j) is inside the m x n destination the caller vouched for.
                    unsafe { *dst.ptr.offset(i * dst.rs + j * dst.cs) = 0.0 };
                }
            }
        }
        return;
    }
    // SAFETY: bounds and exclusivity are the caller's contract above; gemm reads dst only when
    // `read_dst` (alpha = 1 keeps it), and writes dst = alpha·dst + beta·lhs·rhs with beta = 1.
    unsafe {
        gemm::gemm(
            m, n, k, dst.ptr, dst.cs, dst.rs, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs, rhs.rs, 1.0f32,
            1.0f32, false, false, false, par,
        )
    }
}

/// Parallelism for one GEMM of `flops` that runs alone (not inside another parallel loop).
pub(crate) fn par_for(flops: f64) -> Parallelism {
    let threads = rayon::current_num_threads();
    if flops < PAR_MIN_FLOPS || threads <= 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// Raw pointer that may cross threads; every user writes to disjoint elements (see SAFETY notes).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);

impl SendPtr {
    /// The pointer; a method so closures capture the whole `SendPtr` (Sync), not its field.
    pub fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: the pointer is only dereferenced on disjoint index ranges by the code that shares it.
unsafe impl Send for SendPtr {}
// SAFETY: as above; sharing the address itself is harmless.
unsafe impl Sync for SendPtr {}

/// C [batch, m, n] = op(A)·op(B); layouts as documented at `MatmulGeom`.
pub fn matmul(a: &[f32], b: &[f32], g: &MatmulGeom) -> Result<Vec<f32>> {
    let &MatmulGeom { batch, m, k, n, trans_a, trans_b, a_broadcast, b_broadcast } = g;
    let mut out = vec![0.0f32; batch * m * n];
    if out.is_empty() || k == 0 {
        return Ok(out);
    }
    debug_assert_eq!(a.len(), if a_broadcast { 1 } else { batch } * m * k);
    debug_assert_eq!(b.len(), if b_broadcast { 1 } else { batch } * k * n);
    // A [m, k] is row-major (rs k, cs 1); stored [k, m] when transposed (rs 1, cs m).
    let (a_rs, a_cs) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    // B [k, n] is row-major (rs n, cs 1); stored [n, k] when transposed (rs 1, cs k).
    let (b_rs, b_cs) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    let rhs_at = |i: usize| MatRef { ptr: b[if b_broadcast { 0 } else { i * k * n }..].as_ptr(), rs: b_rs, cs: b_cs };

    // A shared B with a row-major batched A is one tall GEMM: [batch·m, k]·[k, n].
    if (b_broadcast || batch == 1) && !trans_a && !a_broadcast {
        let rows = batch * m;
        let lhs = MatRef { ptr: a.as_ptr(), rs: k as isize, cs: 1 };
        let dst = MatMut { ptr: out.as_mut_ptr(), rs: n as isize, cs: 1 };
        // SAFETY: a holds rows·k elements row-major, b (broadcast) k·n, out rows·n; out is a
        // fresh allocation so nothing aliases it.
        unsafe { sgemm(rows, n, k, dst, false, lhs, rhs_at(0), par_for(2.0 * (rows * n * k) as f64)) };
        return Ok(out);
    }

    let per = 2.0 * (m * n * k) as f64;
    let one = |i: usize, c: &mut [f32], par: Parallelism| {
        let lhs = MatRef { ptr: a[if a_broadcast { 0 } else { i * m * k }..].as_ptr(), rs: a_rs, cs: a_cs };
        let dst = MatMut { ptr: c.as_mut_ptr(), rs: n as isize, cs: 1 };
        // SAFETY: the slices start at batch i's matrix and hold m·k, k·n and m·n elements in the
        // layouts the strides describe; c is this batch's exclusive chunk of the fresh output.
        unsafe { sgemm(m, n, k, dst, false, lhs, rhs_at(i), par) };
    };
    if batch > 1 && per < PAR_MIN_FLOPS * 4.0 && per * (batch as f64) >= PAR_MIN_FLOPS {
        // Many small products: one thread per matrix beats splitting each one.
        out.par_chunks_mut(m * n).enumerate().for_each(|(i, c)| one(i, c, Parallelism::None));
    } else {
        let par = par_for(per);
        out.chunks_mut(m * n).enumerate().for_each(|(i, c)| one(i, c, par));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], g: &MatmulGeom) -> Vec<f32> {
        let mut c = vec![0.0; g.batch * g.m * g.n];
        for bi in 0..g.batch {
            let ao = if g.a_broadcast { 0 } else { bi * g.m * g.k };
            let bo = if g.b_broadcast { 0 } else { bi * g.k * g.n };
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut s = 0.0f64;
                    for p in 0..g.k {
                        let av = if g.trans_a { a[ao + p * g.m + i] } else { a[ao + i * g.k + p] };
                        let bv = if g.trans_b { b[bo + j * g.k + p] } else { b[bo + p * g.n + j] };
                        s += av as f64 * bv as f64;
                    }
                    c[bi * g.m * g.n + i * g.n + j] = s as f32;
                }
            }
        }
        c
    }

    #[test]
    fn all_paths_match_naive() {
        // Covers the tall-GEMM fold, the per-batch rayon loop and the sequential loop.
        for &(batch, m, k, n) in &[(1, 3, 5, 7), (9, 17, 33, 13), (40, 8, 8, 8), (2, 129, 130, 131), (3, 1, 1, 1)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    for (ab, bb) in [(false, false), (true, false), (false, true)] {
                        let g =
                            MatmulGeom { batch, m, k, n, trans_a: ta, trans_b: tb, a_broadcast: ab, b_broadcast: bb };
                        let a: Vec<f32> = (0..if ab { 1 } else { batch } * m * k)
                            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                            .collect();
                        let b: Vec<f32> = (0..if bb { 1 } else { batch } * k * n)
                            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
                            .collect();
                        let got = matmul(&a, &b, &g).unwrap();
                        let want = naive(&a, &b, &g);
                        for (x, y) in got.iter().zip(&want) {
                            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{g:?}: {x} vs {y}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn empty_inner_dim_gives_zeros() {
        let g = MatmulGeom {
            batch: 2,
            m: 3,
            k: 0,
            n: 4,
            trans_a: false,
            trans_b: false,
            a_broadcast: false,
            b_broadcast: false,
        };
        assert_eq!(matmul(&[], &[], &g).unwrap(), vec![0.0; 24]);
    }
}
