//! matmul op tests: every transpose combination, batched and broadcast batches, degenerate
//! (1) and odd sizes, the Gram matrix, and shape errors, each against a naive f64 product.

use crate::common::{check_op, Input, Tol};
use kdscout::{Device, Tensor};

/// One product op(A)·op(B) of a batched check: A and B hold `a_batch`/`b_batch` matrices
/// (1 = broadcast over `batch`).
#[derive(Clone, Copy)]
struct Mm {
    batch: usize,
    a_batch: usize,
    b_batch: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
}

fn mm_ref(a: &[f64], b: &[f64], p: Mm) -> Vec<f64> {
    let Mm { batch, a_batch, b_batch, m, k, n, ta, tb } = p;
    let mut c = vec![0.0; batch * m * n];
    for bi in 0..batch {
        let ao = if a_batch == 1 { 0 } else { bi * m * k };
        let bo = if b_batch == 1 { 0 } else { bi * k * n };
        for i in 0..m {
            for j in 0..n {
                c[(bi * m + i) * n + j] = (0..k)
                    .map(|p| {
                        let av = if ta { a[ao + p * m + i] } else { a[ao + i * k + p] };
                        let bv = if tb { b[bo + j * k + p] } else { b[bo + p * n + j] };
                        av * bv
                    })
                    .sum();
            }
        }
    }
    c
}

/// Checks op(A)·op(B) with A of shape `a_lead ++ [rows, cols]` (stored transposed when ta).
#[allow(clippy::too_many_arguments)]
fn check_mm(dev: Device, a_lead: &[usize], b_lead: &[usize], m: usize, k: usize, n: usize, ta: bool, tb: bool) {
    let mut a_shape = a_lead.to_vec();
    a_shape.extend(if ta { [k, m] } else { [m, k] });
    let mut b_shape = b_lead.to_vec();
    b_shape.extend(if tb { [n, k] } else { [k, n] });
    let (a_batch, b_batch): (usize, usize) = (a_lead.iter().product(), b_lead.iter().product());
    let p = Mm { batch: a_batch.max(b_batch), a_batch, b_batch, m, k, n, ta, tb };
    let what = format!("matmul {a_shape:?} (trans {ta}) · {b_shape:?} (trans {tb})");
    // Sums of up to 129 products of values in [-1, 1): tolerances scale with sqrt(k).
    let tol = Tol {
        fwd_rtol: 1e-4,
        fwd_atol: 2e-5 * (k as f64).sqrt(),
        grad_rtol: 1e-3,
        grad_atol: 2e-4 * (k as f64).sqrt(),
    };
    check_op(
        dev,
        &what,
        &[Input::new(&a_shape, 11), Input::new(&b_shape, 12)],
        |t| t[0].matmul_t(&t[1], ta, tb),
        |x| mm_ref(&x[0], &x[1], p),
        tol,
    );
}

pub fn transpose_combos(dev: Device) {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        check_mm(dev, &[], &[], 7, 13, 33, ta, tb);
        check_mm(dev, &[], &[], 33, 129, 13, ta, tb);
    }
}

pub fn unit_and_odd_sizes(dev: Device) {
    for (m, k, n) in [(1, 1, 1), (1, 13, 1), (7, 1, 5), (1, 33, 129), (129, 7, 1), (13, 129, 7)] {
        for (ta, tb) in [(false, false), (true, true)] {
            check_mm(dev, &[], &[], m, k, n, ta, tb);
        }
    }
}

pub fn batched(dev: Device) {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        check_mm(dev, &[3], &[3], 5, 7, 13, ta, tb);
        check_mm(dev, &[2, 3], &[2, 3], 1, 33, 7, ta, tb);
    }
}

pub fn broadcast_batch(dev: Device) {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        // B shared by every batch of A (a linear layer), and A shared by every batch of B.
        check_mm(dev, &[2, 3], &[], 7, 13, 5, ta, tb);
        check_mm(dev, &[], &[3], 13, 7, 33, ta, tb);
        check_mm(dev, &[4], &[1], 5, 7, 3, ta, tb);
        check_mm(dev, &[1], &[2, 2], 3, 5, 7, ta, tb);
    }
}

pub fn gram(dev: Device) {
    for (lead, rows, cols) in [(vec![], 7usize, 13usize), (vec![3], 5, 33), (vec![], 1, 1)] {
        let mut shape = lead.clone();
        shape.extend([rows, cols]);
        let batch: usize = lead.iter().product();
        let p = Mm { batch, a_batch: batch, b_batch: batch, m: rows, k: cols, n: rows, ta: false, tb: true };
        check_op(
            dev,
            &format!("gram {shape:?}"),
            &[Input::new(&shape, 21)],
            |t| t[0].gram(),
            |x| mm_ref(&x[0], &x[0], p),
            Tol::default(),
        );
    }
}

pub fn shape_errors(dev: Device) {
    let t = |shape: &[usize]| Tensor::from_slice(&vec![0.5; shape.iter().product()], shape.to_vec(), dev).unwrap();
    let err = |a: &Tensor, b: &Tensor, ta: bool, tb: bool| match a.matmul_t(b, ta, tb) {
        Ok(y) => panic!("matmul {} · {} should fail, gave {}", a.shape(), b.shape(), y.shape()),
        Err(e) => e.to_string(),
    };
    let msg = err(&t(&[3, 4]), &t(&[5, 6]), false, false);
    assert!(msg.contains("[3, 4]") && msg.contains("[5, 6]"), "{msg}");
    // Transposing makes the same operands fit, or stop fitting.
    assert!(t(&[4, 3]).matmul_t(&t(&[4, 5]), true, false).is_ok());
    let msg = err(&t(&[3, 4]), &t(&[4, 5]), false, true);
    assert!(msg.contains("[3, 4]") && msg.contains("[4, 5]"), "{msg}");
    let msg = err(&t(&[2, 3, 4]), &t(&[3, 4, 5]), false, false);
    assert!(msg.contains("[2, 3, 4]") && msg.contains("[3, 4, 5]"), "{msg}");
    let msg = err(&t(&[4]), &t(&[4, 5]), false, false);
    assert!(msg.contains("[4]"), "{msg}");
}

macro_rules! matmul_tests {
    ($dev:expr) => {
        #[test]
        fn matmul_transpose_combos() {
            crate::matmul::transpose_combos($dev)
        }
        #[test]
        fn matmul_unit_and_odd_sizes() {
            crate::matmul::unit_and_odd_sizes($dev)
        }
        #[test]
        fn matmul_batched() {
            crate::matmul::batched($dev)
        }
        #[test]
        fn matmul_broadcast_batch() {
            crate::matmul::broadcast_batch($dev)
        }
        #[test]
        fn matmul_gram() {
            crate::matmul::gram($dev)
        }
        #[test]
        fn matmul_shape_errors() {
            crate::matmul::shape_errors($dev)
        }
    };
}
