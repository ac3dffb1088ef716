//! The small dense f64 linear algebra the proxies need on B×B matrices (B = batch size):
//! eigenvalues of a symmetric matrix (jacob_cov) and log|det| (NASWOT), plus a correlation matrix.

/// Eigenvalues of a symmetric n×n matrix (row-major) by cyclic Jacobi rotations, ascending.
/// Accurate to a few ulps of the largest eigenvalue; n is a batch size, so O(n³) sweeps are cheap.
pub fn symmetric_eigenvalues(a: &[f64], n: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * n, "symmetric_eigenvalues: {} values for a {n}x{n} matrix", a.len());
    let mut m = a.to_vec();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j].powi(2))
            .sum();
        let scale: f64 = m.iter().map(|v| v * v).sum::<f64>();
        if off <= 1e-30 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
            }
        }
    }
    let mut ev: Vec<f64> = (0..n).map(|i| m[i * n + i]).collect();
    ev.sort_by(f64::total_cmp);
    ev
}

/// (sign, log|det|) of an n×n matrix by LU with partial pivoting (numpy's `slogdet`); a singular
/// matrix gives (0, -inf).
pub fn slogdet(a: &[f64], n: usize) -> (f64, f64) {
    assert_eq!(a.len(), n * n, "slogdet: {} values for a {n}x{n} matrix", a.len());
    let mut m = a.to_vec();
    let (mut sign, mut logdet) = (1.0, 0.0);
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| m[i * n + col].abs().total_cmp(&m[j * n + col].abs())).unwrap_or(col);
        let pv = m[pivot * n + col];
        if pv == 0.0 || !pv.is_finite() {
            return (0.0, f64::NEG_INFINITY);
        }
        if pivot != col {
            for k in 0..n {
                m.swap(pivot * n + k, col * n + k);
            }
            sign = -sign;
        }
        sign *= pv.signum();
        logdet += pv.abs().ln();
        for r in col + 1..n {
            let f = m[r * n + col] / pv;
            if f != 0.0 {
                for k in col..n {
                    m[r * n + k] -= f * m[col * n + k];
                }
            }
        }
    }
    (sign, logdet)
}

/// numpy's `corrcoef` of the rows of an [n, d] matrix (rows are variables). A constant row gives
/// NaN entries, as numpy does.
pub fn corrcoef_rows(x: &[f64], n: usize) -> Vec<f64> {
    let d = x.len() / n;
    let centered: Vec<f64> = x
        .chunks(d)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / d as f64;
            row.iter().map(move |v| v - mean)
        })
        .collect();
    let cov: Vec<f64> = (0..n * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            (0..d).map(|k| centered[i * d + k] * centered[j * d + k]).sum::<f64>()
        })
        .collect();
    (0..n * n).map(|ij| cov[ij] / (cov[(ij / n) * (n + 1)] * cov[(ij % n) * (n + 1)]).sqrt()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigenvalues_of_known_matrices() {
        // [[2,1],[1,2]] has eigenvalues 1 and 3; a diagonal matrix its diagonal.
        let ev = symmetric_eigenvalues(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((ev[0] - 1.0).abs() < 1e-12 && (ev[1] - 3.0).abs() < 1e-12, "{ev:?}");
        // Sum = trace and product = det for a random symmetric 5x5.
        let n = 5;
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let v = ((i * 7 + j * 3) % 11) as f64 - 5.0;
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
        }
        let ev = symmetric_eigenvalues(&a, n);
        let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
        assert!((ev.iter().sum::<f64>() - trace).abs() < 1e-9);
        let (sign, logdet) = slogdet(&a, n);
        let prod: f64 = ev.iter().product();
        assert!((sign * logdet.exp() - prod).abs() < 1e-6 * prod.abs().max(1.0), "{sign} {logdet} {prod}");
    }

    #[test]
    fn slogdet_signs_and_singular() {
        let (s, l) = slogdet(&[0.0, 2.0, 3.0, 0.0], 2); // det = -6
        assert_eq!(s, -1.0);
        assert!((l - 6f64.ln()).abs() < 1e-12);
        assert_eq!(slogdet(&[1.0, 2.0, 2.0, 4.0], 2), (0.0, f64::NEG_INFINITY));
    }

    #[test]
    fn corrcoef_matches_definition() {
        let c = corrcoef_rows(&[1.0, 2.0, 3.0, 2.0, 4.0, 6.5], 2);
        assert!((c[0] - 1.0).abs() < 1e-12 && (c[3] - 1.0).abs() < 1e-12);
        // Pearson of (1,2,3) and (2,4,6.5) computed by hand: 0.99926...
        let (mx, my) = (2.0, 12.5 / 3.0);
        let xs = [1.0, 2.0, 3.0];
        let ys = [2.0, 4.0, 6.5];
        let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
        let syy: f64 = ys.iter().map(|y| (y - my) * (y - my)).sum();
        assert!((c[1] - sxy / (sxx * syy).sqrt()).abs() < 1e-12);
        assert!(corrcoef_rows(&[1.0, 1.0, 1.0, 1.0, 2.0, 3.0], 2)[1].is_nan());
    }
}
