//! Ranking agreement between proxy scores and ground truth (METHODS §0.4): Spearman ρ (Pearson
//! of average ranks, as `scipy.stats.spearmanr`), Kendall τ-b (tie-corrected, scipy's default),
//! Pearson r, and precision@k (the share of the predicted top-k that is in the true top-k).

use crate::{invalid_err, Result};

/// Average ranks (1-based), ties sharing the mean of their positions.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    ranks
}

fn check(x: &[f64], y: &[f64], what: &str) -> Result<()> {
    if x.len() != y.len() {
        invalid_err!("correlate", "{what}: {} scores against {} truths", x.len(), y.len());
    }
    if x.len() < 2 {
        invalid_err!("correlate", "{what} needs at least 2 pairs, got {}", x.len());
    }
    if let Some(v) = x.iter().chain(y).find(|v| !v.is_finite()) {
        invalid_err!("correlate", "{what}: non-finite value {v} (drop non-finite scores first)");
    }
    Ok(())
}

/// Pearson's r; NaN when either side is constant (as scipy).
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64> {
    check(x, y, "pearson")?;
    let (r, ok) = pearson_sums(x, y);
    if ok {
        return Ok(r);
    }
    // Sums of squares beyond f64 (synflow's 1e200s overflow to a silent r = 0, tiny values
    // underflow to NaN): r does not depend on scale, so compute it on values scaled to |v| <= 1.
    let scaled = |v: &[f64]| -> Vec<f64> {
        let m = v.iter().fold(0.0f64, |m, a| m.max(a.abs()));
        v.iter().map(|a| if m > 0.0 { a / m } else { *a }).collect()
    };
    Ok(pearson_sums(&scaled(x), &scaled(y)).0)
}

/// r from the centred sums, and whether their product stayed a normal f64.
fn pearson_sums(x: &[f64], y: &[f64]) -> (f64, bool) {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let syy: f64 = y.iter().map(|b| (b - my) * (b - my)).sum();
    (sxy / (sxx * syy).sqrt(), sxy.is_finite() && (sxx * syy).is_normal())
}

/// Spearman's ρ: Pearson of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    check(x, y, "spearman")?;
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Kendall's τ-b: (C − D) / √((n₀ − n₁)(n₀ − n₂)), ties in x (n₁) and y (n₂) excluded from the
/// denominators. O(n²), fine for the thousands of candidates of a search.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Result<f64> {
    check(x, y, "kendall")?;
    let (mut concordant, mut discordant, mut tie_x, mut tie_y, mut pairs) = (0i64, 0i64, 0i64, 0i64, 0i64);
    for i in 0..x.len() {
        for j in i + 1..x.len() {
            pairs += 1;
            let (dx, dy) = (x[i] - x[j], y[i] - y[j]);
            if dx == 0.0 {
                tie_x += 1;
            }
            if dy == 0.0 {
                tie_y += 1;
            }
            if dx != 0.0 && dy != 0.0 {
                if (dx > 0.0) == (dy > 0.0) {
                    concordant += 1;
                } else {
                    discordant += 1;
                }
            }
        }
    }
    Ok((concordant - discordant) as f64 / (((pairs - tie_x) * (pairs - tie_y)) as f64).sqrt())
}

/// Share of the k = max(1, ⌊frac·n⌋) candidates with the highest scores that are among the k
/// with the highest truth (ties broken by position, stably).
pub fn precision_at_top(x: &[f64], y: &[f64], frac: f64) -> Result<f64> {
    check(x, y, "precision@k")?;
    if !(frac > 0.0 && frac <= 1.0) {
        invalid_err!("correlate", "top fraction {frac} must be in (0, 1]");
    }
    let k = ((frac * x.len() as f64).floor() as usize).max(1);
    let top = |v: &[f64]| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
        idx.truncate(k);
        idx
    };
    let (tx, ty) = (top(x), top(y));
    Ok(tx.iter().filter(|i| ty.contains(i)).count() as f64 / k as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_and_kendall_on_scipy_doc_examples() {
        let (x, y) = ([1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 6.0, 7.0, 8.0, 7.0]);
        // scipy.stats.spearmanr docs: 0.8207826816681233.
        assert!((spearman(&x, &y).unwrap() - 0.8207826816681233).abs() < 1e-12);
        // By hand: 8 concordant, 1 discordant, one tie in y: 7 / √(10·9).
        assert!((kendall_tau_b(&x, &y).unwrap() - 7.0 / 90f64.sqrt()).abs() < 1e-12);
        // Perfect and reversed orders.
        let z: Vec<f64> = x.iter().map(|v| -v * v).collect();
        assert_eq!(spearman(&x, &z).unwrap(), -1.0);
        assert_eq!(kendall_tau_b(&x, &z).unwrap(), -1.0);
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0, 10.0]).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ranks_average_ties_and_precision_counts_overlap() {
        assert_eq!(average_ranks(&[10.0, 20.0, 10.0, 30.0]), vec![1.5, 3.0, 1.5, 4.0]);
        let truth = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        let pred = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0];
        assert_eq!(precision_at_top(&truth, &truth, 0.3).unwrap(), 1.0);
        assert_eq!(precision_at_top(&pred, &truth, 0.3).unwrap(), 0.0);
        let half = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 0.0];
        assert_eq!(precision_at_top(&half, &truth, 0.2).unwrap(), 0.5);
        assert!(spearman(&[1.0], &[1.0]).is_err());
        // Huge and tiny scores give the r of their scaled values, not 0 or NaN.
        let r = pearson(&[1e200, -1e200, 3e200], &[1.0, 2.0, 3.0]).unwrap();
        assert!((r - 0.5).abs() < 1e-12, "{r}");
        let r = pearson(&[1e-200, -1e-200, 3e-200], &[1.0, 2.0, 3.0]).unwrap();
        assert!((r - 0.5).abs() < 1e-12, "{r}");
        assert!(pearson(&[2.0, 2.0], &[1.0, 2.0]).unwrap().is_nan());
        assert!(kendall_tau_b(&[1.0, f64::NAN], &[1.0, 2.0]).is_err());
    }
}
