//! Distillation losses: each against a naive f64 reference written here from the original PyTorch
//! definitions (RepDistiller, mdistiller, DisWOT, NORM, DIST), and each gradient w.r.t. the student
//! tensors against central finite differences of that reference (the op tests' `check_op`).
//! Sizes are small and odd (batch 3-5, odd channels), with teacher and student shapes differing
//! wherever the loss allows it.

#[allow(dead_code)]
#[path = "ops/common.rs"]
mod common;

use common::{check_op, rand_vec, Input, Tol};
use kdscout::distill::{self, ConvReg, Distiller, NormFt};
use kdscout::models::{self, Features, Network};
use kdscout::nn::{self, Module};
use kdscout::rng::Rng;
use kdscout::{Device, Tensor};

const DEV: Device = Device::Cpu;

// ====================================================================== f64 reference helpers

fn softmax_rows(z: &[f64], cols: usize, t: f64) -> Vec<f64> {
    z.chunks(cols)
        .flat_map(|r| {
            let m = r.iter().cloned().fold(f64::MIN, f64::max) / t;
            let e: Vec<f64> = r.iter().map(|x| (x / t - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |x| x / s)
        })
        .collect()
}

fn log_softmax_row(r: &[f64]) -> Vec<f64> {
    let m = r.iter().cloned().fold(f64::MIN, f64::max);
    let lse = m + r.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    r.iter().map(|x| x - lse).collect()
}

/// A·Aᵀ of a [rows, cols] matrix.
fn gram(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut g = vec![0.0; rows * rows];
    for i in 0..rows {
        for j in 0..rows {
            g[i * rows + j] = (0..cols).map(|k| a[i * cols + k] * a[j * cols + k]).sum();
        }
    }
    g
}

/// `F.normalize(m, dim=1)` on a [rows, cols] matrix (eps 1e-12).
fn normalize_rows(m: &[f64], cols: usize, eps: f64) -> Vec<f64> {
    m.chunks(cols)
        .flat_map(|r| {
            let n = r.iter().map(|x| x * x).sum::<f64>().sqrt().max(eps);
            r.iter().map(move |x| x / n)
        })
        .collect()
}

fn sq_diff_sum(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn mse_ref(a: &[f64], b: &[f64]) -> f64 {
    sq_diff_sum(a, b) / a.len() as f64
}

/// PyTorch adaptive average pooling of [n·c, h, w] planes to [oh, ow]
/// (bin i covers floor(i·h/oh) .. ceil((i+1)·h/oh)).
fn adaptive_pool(x: &[f64], planes: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        for i in 0..oh {
            let (y0, y1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
            for j in 0..ow {
                let (x0, x1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
                let mut s = 0.0;
                for y in y0..y1 {
                    for xx in x0..x1 {
                        s += x[(p * h + y) * w + xx];
                    }
                }
                out.push(s / ((y1 - y0) * (x1 - x0)) as f64);
            }
        }
    }
    out
}

/// Direct convolution of x [n, c, h, w] with w [o, c, kh, kw] (+ bias), stride and padding.
#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f64],
    [n, c, h, w]: [usize; 4],
    wt: &[f64],
    [o, kh, kw]: [usize; 3],
    bias: &[f64],
    stride: usize,
    pad: usize,
) -> (Vec<f64>, usize, usize) {
    let ho = (h + 2 * pad - kh) / stride + 1;
    let wo = (w + 2 * pad - kw) / stride + 1;
    let mut out = vec![0.0; n * o * ho * wo];
    for b in 0..n {
        for oc in 0..o {
            for y in 0..ho {
                for xx in 0..wo {
                    let mut s = bias.get(oc).copied().unwrap_or(0.0);
                    for ic in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (iy, ix) = (
                                    (y * stride + ky) as isize - pad as isize,
                                    (xx * stride + kx) as isize - pad as isize,
                                );
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    s += x[((b * c + ic) * h + iy as usize) * w + ix as usize]
                                        * wt[((oc * c + ic) * kh + ky) * kw + kx];
                                }
                            }
                        }
                    }
                    out[((b * o + oc) * ho + y) * wo + xx] = s;
                }
            }
        }
    }
    (out, ho, wo)
}

/// `nn.ConvTranspose2d` by its definition: each input pixel scatters `x·W[ic, oc]` to
/// out[y·stride − pad + ky, x·stride − pad + kx].
fn conv_transpose_ref(
    x: &[f64],
    [n, c, h, w]: [usize; 4],
    wt: &[f64],
    [o, k]: [usize; 2],
    bias: &[f64],
    stride: usize,
    pad: usize,
) -> (Vec<f64>, usize, usize) {
    let ho = (h - 1) * stride + k - 2 * pad;
    let wo = (w - 1) * stride + k - 2 * pad;
    let mut out = vec![0.0; n * o * ho * wo];
    for b in 0..n {
        for oc in 0..o {
            for p in 0..ho * wo {
                out[(b * o + oc) * ho * wo + p] = bias[oc];
            }
        }
        for ic in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let v = x[((b * c + ic) * h + y) * w + xx];
                    for oc in 0..o {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (oy, ox) = (
                                    (y * stride + ky) as isize - pad as isize,
                                    (xx * stride + kx) as isize - pad as isize,
                                );
                                if oy >= 0 && ox >= 0 && (oy as usize) < ho && (ox as usize) < wo {
                                    out[((b * o + oc) * ho + oy as usize) * wo + ox as usize] +=
                                        v * wt[((ic * o + oc) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (out, ho, wo)
}

/// Train-mode BatchNorm with γ = 1, β = 0 (a fresh layer): biased batch variance, eps 1e-5.
fn bn_train_ref(x: &[f64], n: usize, c: usize, hw: usize) -> Vec<f64> {
    let mut out = x.to_vec();
    for ch in 0..c {
        let idx: Vec<usize> = (0..n).flat_map(|b| (0..hw).map(move |p| (b * c + ch) * hw + p)).collect();
        let mean = idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64;
        let var = idx.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / idx.len() as f64;
        for &i in &idx {
            out[i] = (x[i] - mean) / (var + 1e-5).sqrt();
        }
    }
    out
}

fn smooth_l1_ref(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d < 1.0 {
                0.5 * d * d
            } else {
                d - 0.5
            }
        })
        .sum::<f64>()
        / a.len() as f64
}

/// A tensor with the given values (no gradient).
fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape.to_vec(), DEV).unwrap()
}

/// Tolerances for losses: a chain of f32 reductions against f64.
fn tol(fwd_rtol: f64, grad_rtol: f64) -> Tol {
    Tol { fwd_rtol, fwd_atol: 1e-6, grad_rtol, grad_atol: 1e-5 }
}

// ====================================================================== logits

fn kd_ref(zs: &[f64], zt: &[f64], k: usize, t: f64) -> f64 {
    let b = zs.len() / k;
    let pt = softmax_rows(zt, k, t);
    let mut s = 0.0;
    for n in 0..b {
        let ls = log_softmax_row(&zs[n * k..(n + 1) * k].iter().map(|x| x / t).collect::<Vec<_>>());
        for j in 0..k {
            let p = pt[n * k + j];
            s += p * (p.ln() - ls[j]);
        }
    }
    s / b as f64 * t * t
}

#[test]
fn kd_matches_reference() {
    for (t, seed) in [(4.0f32, 1u64), (1.0, 2)] {
        let (b, k) = (5, 7);
        let zt = rand_vec(b * k, seed + 100).iter().map(|x| x * 3.0).collect::<Vec<_>>();
        let zs_in = Input::with_values(&[b, k], rand_vec(b * k, seed).iter().map(|x| x * 3.0).collect());
        check_op(
            DEV,
            &format!("kd T={t}"),
            &[zs_in, Input::with_values(&[b, k], zt).no_grad()],
            |x| distill::kd(&x[0], &x[1], t),
            |x| vec![kd_ref(&x[0], &x[1], k, t as f64)],
            tol(1e-4, 1e-3),
        );
    }
}

#[test]
fn dkd_matches_reference() {
    let (b, k) = (5, 7);
    let labels = [0u32, 6, 3, 3, 1];
    let (alpha, beta, t) = (1.0f32, 8.0f32, 4.0f32);
    let reference = |x: &[Vec<f64>]| {
        let (zs, zt) = (&x[0], &x[1]);
        let t = t as f64;
        let (ps, pt) = (softmax_rows(zs, k, t), softmax_rows(zt, k, t));
        let (mut tckd, mut nckd) = (0.0, 0.0);
        for n in 0..b {
            let g = labels[n] as usize;
            let split = |p: &[f64]| {
                let row = &p[n * k..(n + 1) * k];
                [row[g], (0..k).filter(|&j| j != g).map(|j| row[j]).sum::<f64>()]
            };
            let (bs, bt) = (split(&ps), split(&pt));
            tckd += (0..2).map(|j| bt[j] * (bt[j].ln() - bs[j].ln())).sum::<f64>();
            let shifted = |z: &[f64]| -> Vec<f64> {
                (0..k).map(|j| z[n * k + j] / t - if j == g { 1000.0 } else { 0.0 }).collect()
            };
            let ls2 = log_softmax_row(&shifted(zs));
            let pt2: Vec<f64> = log_softmax_row(&shifted(zt)).iter().map(|l| l.exp()).collect();
            nckd += (0..k).filter(|&j| pt2[j] > 0.0).map(|j| pt2[j] * (pt2[j].ln() - ls2[j])).sum::<f64>();
        }
        vec![(alpha as f64 * tckd + beta as f64 * nckd) * t * t / b as f64]
    };
    let zs: Vec<f32> = rand_vec(b * k, 11).iter().map(|x| x * 4.0).collect();
    let zt: Vec<f32> = rand_vec(b * k, 12).iter().map(|x| x * 4.0).collect();
    check_op(
        DEV,
        "dkd",
        &[Input::with_values(&[b, k], zs), Input::with_values(&[b, k], zt).no_grad()],
        |x| distill::dkd(&x[0], &x[1], &labels, alpha, beta, t),
        reference,
        tol(1e-4, 2e-3),
    );
    assert_eq!(distill::warmup_factor(5, 20), 0.25);
    assert_eq!(distill::warmup_factor(40, 20), 1.0);
    let z = tensor(&rand_vec(b * k, 3), &[b, k]);
    assert!(distill::dkd(&z, &z, &[0, 1, 7, 0, 0], 1.0, 8.0, 4.0).is_err(), "label 7 of 7 classes must be rejected");
    assert!(distill::dkd(&z, &z, &[0, 1], 1.0, 8.0, 4.0).is_err(), "2 labels for 5 rows must be rejected");
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (a.iter().sum::<f64>() / a.len() as f64, b.iter().sum::<f64>() / b.len() as f64);
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let na = a.iter().map(|x| (x - ma).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|y| (y - mb).powi(2)).sum::<f64>().sqrt();
    num / (na * nb + 1e-8)
}

#[test]
fn dist_matches_reference() {
    let (b, k) = (4, 7);
    let (beta, gamma, t) = (2.0f32, 1.5f32, 4.0f32);
    let reference = |x: &[Vec<f64>]| {
        let (ys, yt) = (softmax_rows(&x[0], k, t as f64), softmax_rows(&x[1], k, t as f64));
        let inter =
            1.0 - (0..b).map(|n| pearson(&ys[n * k..(n + 1) * k], &yt[n * k..(n + 1) * k])).sum::<f64>() / b as f64;
        let col = |y: &[f64], j: usize| (0..b).map(|n| y[n * k + j]).collect::<Vec<_>>();
        let intra = 1.0 - (0..k).map(|j| pearson(&col(&ys, j), &col(&yt, j))).sum::<f64>() / k as f64;
        vec![(t * t) as f64 * (beta as f64 * inter + gamma as f64 * intra)]
    };
    let zs: Vec<f32> = rand_vec(b * k, 21).iter().map(|x| x * 5.0).collect();
    let zt: Vec<f32> = rand_vec(b * k, 22).iter().map(|x| x * 5.0).collect();
    check_op(
        DEV,
        "dist",
        &[Input::with_values(&[b, k], zs), Input::with_values(&[b, k], zt).no_grad()],
        |x| distill::dist(&x[0], &x[1], beta, gamma, t),
        reference,
        tol(2e-4, 3e-3),
    );
}

#[test]
fn norm_logits_matches_reference() {
    let (b, k) = (3, 7);
    check_op(
        DEV,
        "norm_logits",
        &[Input::new(&[b, k], 31)],
        |x| distill::norm_logits(&x[0], 2.5),
        |x| {
            x[0].chunks(k)
                .flat_map(|r| {
                    let m = r.iter().sum::<f64>() / k as f64;
                    let v = r.iter().map(|y| (y - m).powi(2)).sum::<f64>() / k as f64;
                    r.iter().map(move |y| 2.5 * (y - m) / (v + 1e-7).sqrt())
                })
                .collect()
        },
        tol(1e-4, 2e-3),
    );
}

// ====================================================================== kernels on maps

fn sp_ref(s: &[f64], t: &[f64], b: usize) -> f64 {
    let g = |f: &[f64]| normalize_rows(&gram(f, b, f.len() / b), b, 1e-12);
    sq_diff_sum(&g(t), &g(s)) / (b * b) as f64
}

#[test]
fn sp_matches_reference_across_shapes() {
    // Student and teacher maps differ in channels and spatial size; pooled vectors work too.
    for (ss, ts, seed) in [([4usize, 3, 3, 5], [4usize, 5, 2, 2], 41u64), ([5, 7, 1, 1], [5, 3, 2, 1], 42)] {
        check_op(
            DEV,
            &format!("sp {ss:?} vs {ts:?}"),
            &[Input::new(&ss, seed), Input::new(&ts, seed + 1).no_grad()],
            |x| distill::sp(&x[0], &x[1]),
            |x| vec![sp_ref(&x[0], &x[1], ss[0])],
            tol(1e-4, 2e-3),
        );
    }
    // Symmetric in its arguments (METHODS Appendix 2, item 8).
    let (a, b) = (tensor(&rand_vec(60, 1), &[4, 15]), tensor(&rand_vec(36, 2), &[4, 9]));
    let (ab, ba) = (distill::sp(&a, &b).unwrap().item().unwrap(), distill::sp(&b, &a).unwrap().item().unwrap());
    assert!((ab - ba).abs() <= 1e-6 * ab.abs().max(1e-6), "sp not symmetric: {ab} vs {ba}");
    assert!(distill::sp(&a, &tensor(&rand_vec(30, 3), &[3, 10])).is_err(), "batch mismatch must be rejected");
}

fn ickd_ref(s: &[f64], t: &[f64], b: usize, c: usize) -> f64 {
    let (hs, ht) = (s.len() / (b * c), t.len() / (b * c));
    let mut total = 0.0;
    for k in 0..b {
        let es = normalize_rows(&gram(&s[k * c * hs..(k + 1) * c * hs], c, hs), c, 1e-12);
        let et = normalize_rows(&gram(&t[k * c * ht..(k + 1) * c * ht], c, ht), c, 1e-12);
        total += sq_diff_sum(&es, &et);
    }
    total / (c * b) as f64
}

#[test]
fn ickd_matches_reference_and_code_quirk() {
    let (b, c) = (3, 5);
    // Same batch and channels, different spatial sizes.
    check_op(
        DEV,
        "ickd",
        &[Input::new(&[b, c, 2, 3], 51), Input::new(&[b, c, 4, 1], 52).no_grad()],
        |x| distill::ickd(&x[0], &x[1]),
        |x| vec![ickd_ref(&x[0], &x[1], b, c)],
        tol(1e-4, 2e-3),
    );
    // DisWOT's K×C×1×1 gradient layout (HW = 1): every row of g·gᵀ normalises to ±g/|g|.
    check_op(
        DEV,
        "ickd hw=1",
        &[Input::new(&[b, c, 1, 1], 53), Input::new(&[b, c, 1, 1], 54).no_grad()],
        |x| distill::ickd(&x[0], &x[1]),
        |x| vec![ickd_ref(&x[0], &x[1], b, c)],
        tol(1e-4, 2e-3),
    );
    // Strict version rejects mismatched channels; compat views the teacher with the student's b, c.
    let s = tensor(&rand_vec(b * c * 6, 55), &[b, c, 6]);
    let t_vals = rand_vec(90, 56);
    let t = tensor(&t_vals, &[5, 3, 6]);
    assert!(distill::ickd(&s, &t).is_err(), "mismatched b, c must be rejected by the strict version");
    let got = distill::ickd_compat(&s, &t).unwrap().item().unwrap() as f64;
    let want = ickd_ref(&common::to_f64(&s.to_vec().unwrap()), &common::to_f64(&t_vals), b, c);
    assert!((got - want).abs() <= 1e-4 * want.abs(), "ickd_compat {got} vs {want}");
}

/// METHODS §0.2's closed form of ICKD on DisWOT's K×C×1×1 class-gradient layout: row i of the
/// normalised g·gᵀ is sign(g_i)·g/‖g‖ (zero when g_i = 0), so the loss is
/// Σ_k [nnz(g^s_k) + nnz(g^t_k) − 2·cos(g^s_k, g^t_k)·Σ_i sign(g^s_ki)·sign(g^t_ki)] / (C·K);
/// checked against the direct form on inputs with zero entries and a whole zero row.
#[test]
fn ickd_matches_its_closed_form_with_zero_rows() {
    let (k, c) = (4, 5);
    let mut gs = rand_vec(k * c, 57);
    let gt = rand_vec(k * c, 58);
    for i in [1, 7, 8, 13] {
        gs[i] = 0.0;
    }
    for v in &mut gs[15..20] {
        *v = 0.0; // class 3 of the student has no gradient at all
    }
    let got = distill::ickd(&tensor(&gs, &[k, c, 1, 1]), &tensor(&gt, &[k, c, 1, 1])).unwrap().item().unwrap() as f64;
    let (gs, gt) = (common::to_f64(&gs), common::to_f64(&gt));
    let mut total = 0.0;
    for kk in 0..k {
        let (a, b) = (&gs[kk * c..(kk + 1) * c], &gt[kk * c..(kk + 1) * c]);
        let nnz = |v: &[f64]| v.iter().filter(|x| **x != 0.0).count() as f64;
        let (na, nb) = (a.iter().map(|x| x * x).sum::<f64>().sqrt(), b.iter().map(|x| x * x).sum::<f64>().sqrt());
        let cos =
            if na == 0.0 || nb == 0.0 { 0.0 } else { a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (na * nb) };
        let signs: f64 =
            a.iter().zip(b).map(|(x, y)| x.signum() * y.signum() * (*x != 0.0 && *y != 0.0) as u8 as f64).sum();
        total += nnz(a) + nnz(b) - 2.0 * cos * signs;
    }
    let want = total / (c * k) as f64;
    assert!((got - want).abs() <= 1e-5 * want, "ickd {got} vs closed form {want}");
}

/// RepDistiller's AT map after pooling to (oh, ow): mean_c f², flattened, L2-normalised per sample.
fn at_map(f: &[f64], [b, c, h, w]: [usize; 4], oh: usize, ow: usize) -> Vec<f64> {
    let p = adaptive_pool(f, b * c, h, w, oh, ow);
    let mut m = vec![0.0; b * oh * ow];
    for n in 0..b {
        for ch in 0..c {
            for q in 0..oh * ow {
                m[n * oh * ow + q] += p[(n * c + ch) * oh * ow + q].powi(2) / c as f64;
            }
        }
    }
    normalize_rows(&m, oh * ow, 1e-12)
}

#[test]
fn at_matches_reference_both_pooling_directions() {
    // Student larger (pooled 5x5 -> 3x3, uneven bins) and teacher larger; channels differ.
    for (ss, ts, seed) in [([3usize, 3, 5, 5], [3usize, 5, 3, 3], 61u64), ([3, 5, 2, 2], [3, 3, 4, 4], 62)] {
        let (oh, ow) = (ss[2].min(ts[2]), ss[3].min(ts[3]));
        check_op(
            DEV,
            &format!("at {ss:?} vs {ts:?}"),
            &[Input::new(&ss, seed), Input::new(&ts, seed + 1).no_grad()],
            |x| distill::at(&x[0], &x[1], 2.0),
            |x| {
                let (a, b) = (at_map(&x[0], ss, oh, ow), at_map(&x[1], ts, oh, ow));
                vec![mse_ref(&a, &b)]
            },
            tol(1e-4, 2e-3),
        );
    }
}

/// RepDistiller's NST after pooling: channels L2-normalised over space, k(a,b) = (aᵀb)².
fn nst_ref(s: &[f64], ss: [usize; 4], t: &[f64], ts: [usize; 4]) -> f64 {
    let (oh, ow) = (ss[2].min(ts[2]), ss[3].min(ts[3]));
    let hw = oh * ow;
    let prep = |f: &[f64], d: [usize; 4]| normalize_rows(&adaptive_pool(f, d[0] * d[1], d[2], d[3], oh, ow), hw, 1e-12);
    let (s, t) = (prep(s, ss), prep(t, ts));
    let b = ss[0];
    let poly = |a: &[f64], ca: usize, bb: &[f64], cb: usize| {
        let mut sum = 0.0;
        for n in 0..b {
            for i in 0..ca {
                for j in 0..cb {
                    let dot: f64 = (0..hw).map(|q| a[(n * ca + i) * hw + q] * bb[(n * cb + j) * hw + q]).sum();
                    sum += dot * dot;
                }
            }
        }
        sum / (b * ca * cb) as f64
    };
    let (cs, ct) = (ss[1], ts[1]);
    poly(&t, ct, &t, ct) + poly(&s, cs, &s, cs) - 2.0 * poly(&s, cs, &t, ct)
}

#[test]
fn nst_matches_reference() {
    for (ss, ts, seed) in [([3usize, 3, 5, 5], [3usize, 5, 3, 3], 71u64), ([4, 5, 2, 3], [4, 3, 4, 6], 72)] {
        check_op(
            DEV,
            &format!("nst {ss:?} vs {ts:?}"),
            &[Input::new(&ss, seed), Input::new(&ts, seed + 1).no_grad()],
            |x| distill::nst(&x[0], &x[1]),
            |x| vec![nst_ref(&x[0], ss, &x[1], ts)],
            tol(1e-4, 2e-3),
        );
    }
}

#[test]
fn hcl_matches_reference() {
    // Three levels: 5x5 (all of 4, 2, 1 pooled), 3x3 (2, 1), 1x1 (none).
    let shapes = [[3usize, 3, 5, 5], [3, 5, 3, 3], [3, 7, 1, 1]];
    let mut inputs = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        inputs.push(Input::new(s, 80 + i as u64));
    }
    for (i, s) in shapes.iter().enumerate() {
        inputs.push(Input::new(s, 90 + i as u64).no_grad());
    }
    check_op(
        DEV,
        "hcl",
        &inputs,
        |x| distill::hcl(&x[..3], &x[3..]),
        |x| {
            let mut total = 0.0;
            for (i, d) in shapes.iter().enumerate() {
                let (s, t) = (&x[i], &x[i + 3]);
                let (planes, h) = (d[0] * d[1], d[2]);
                let mut loss = mse_ref(s, t);
                let (mut cnt, mut tot) = (1.0, 1.0);
                for l in [4usize, 2, 1] {
                    if l >= h {
                        continue;
                    }
                    cnt /= 2.0;
                    loss += cnt
                        * mse_ref(&adaptive_pool(s, planes, h, d[3], l, l), &adaptive_pool(t, planes, h, d[3], l, l));
                    tot += cnt;
                }
                total += loss / tot;
            }
            vec![total]
        },
        tol(1e-4, 2e-3),
    );
}

#[test]
fn norm_loss_matches_reference() {
    // n = 2 segments of C_t = 3 channels; the teacher map (4x4) is max-pooled to the student's 2x2.
    let (b, n, ct) = (3, 2, 3);
    check_op(
        DEV,
        "norm_loss",
        &[Input::new(&[b, n * ct, 2, 2], 101), Input::new(&[b, ct, 4, 4], 102).no_grad()],
        |x| distill::norm_loss(&x[0], &x[1], n),
        |x| {
            let (e, t) = (&x[0], &x[1]);
            let mut pooled = vec![0.0; b * ct * 4];
            for p in 0..b * ct {
                for y in 0..2 {
                    for xx in 0..2 {
                        let mut m = f64::MIN;
                        for dy in 0..2 {
                            for dx in 0..2 {
                                m = m.max(t[(p * 4 + 2 * y + dy) * 4 + 2 * xx + dx]);
                            }
                        }
                        pooled[p * 4 + y * 2 + xx] = m;
                    }
                }
            }
            // Segment k of e (channels k·C_t ..) is matched against the whole teacher map.
            let mut total = 0.0;
            for bb in 0..b {
                for ch in 0..n * ct {
                    for q in 0..4 {
                        let d = e[(bb * n * ct + ch) * 4 + q] - pooled[(bb * ct + ch % ct) * 4 + q];
                        total += d * d;
                    }
                }
            }
            vec![total / (b * n * ct * 4) as f64 * n as f64]
        },
        tol(1e-4, 2e-3),
    );
    let e = tensor(&rand_vec(3 * 5 * 4, 1), &[3, 5, 2, 2]);
    let t = tensor(&rand_vec(3 * 3 * 16, 2), &[3, 3, 4, 4]);
    assert!(distill::norm_loss(&e, &t, 2).is_err(), "5 channels are not 2·3");
}

// ====================================================================== relations on embeddings

fn rkd_ref(s: &[f64], t: &[f64], b: usize, w_d: f64, w_a: f64) -> f64 {
    let prep = |e: &[f64]| {
        let d = e.len() / b;
        let row = |i: usize| &e[i * d..(i + 1) * d];
        let mut dist = vec![0.0; b * b];
        for i in 0..b {
            for j in 0..b {
                if i != j {
                    let sq: f64 = row(i).iter().zip(row(j)).map(|(x, y)| (x - y).powi(2)).sum();
                    dist[i * b + j] = sq.max(1e-12).sqrt();
                }
            }
        }
        let mean = dist.iter().sum::<f64>() / (b * (b - 1)) as f64;
        let dist: Vec<f64> = dist.iter().map(|x| x / mean).collect();
        let unit = |i: usize, j: usize| {
            let v: Vec<f64> = (0..d).map(|k| row(j)[k] - row(i)[k]).collect();
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            v.into_iter().map(move |x| x / n).collect::<Vec<_>>()
        };
        let mut ang = Vec::with_capacity(b * b * b);
        for i in 0..b {
            for j in 0..b {
                for k in 0..b {
                    ang.push(unit(i, j).iter().zip(unit(i, k)).map(|(x, y)| x * y).sum());
                }
            }
        }
        (dist, ang)
    };
    let ((ds, as_), (dt, at)) = (prep(s), prep(t));
    w_d * smooth_l1_ref(&ds, &dt) + w_a * smooth_l1_ref(&as_, &at)
}

#[test]
fn rkd_matches_reference() {
    let b = 5;
    // Teacher embedding narrower than the student's; features scaled so some distance residuals
    // exceed 1 (both branches of smooth-L1).
    let s: Vec<f32> = rand_vec(b * 7, 111).iter().map(|x| x * 3.0).collect();
    check_op(
        DEV,
        "rkd",
        &[Input::with_values(&[b, 7], s), Input::new(&[b, 4], 112).no_grad()],
        |x| distill::rkd(&x[0], &x[1], 25.0, 50.0),
        |x| vec![rkd_ref(&x[0], &x[1], b, 25.0, 50.0)],
        tol(2e-4, 3e-3),
    );
}

#[test]
fn smooth_l1_matches_reference_on_both_branches() {
    let a: Vec<f32> = rand_vec(15, 121).iter().map(|x| x * 3.0).collect();
    check_op(
        DEV,
        "smooth_l1",
        &[Input::with_values(&[3, 5], a), Input::new(&[3, 5], 122).no_grad()],
        |x| distill::smooth_l1(&x[0], &x[1]),
        |x| vec![smooth_l1_ref(&x[0], &x[1])],
        tol(1e-5, 1e-3),
    );
}

#[test]
fn pkt_matches_reference() {
    let b = 5;
    let reference = |x: &[Vec<f64>]| {
        let eps = 1e-7;
        let prob = |e: &[f64]| {
            let d = e.len() / b;
            let n: Vec<f64> = e
                .chunks(d)
                .flat_map(|r| {
                    let nn = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                    r.iter().map(move |v| v / (nn + eps))
                })
                .collect();
            let s: Vec<f64> = gram(&n, b, d).iter().map(|v| (v + 1.0) / 2.0).collect();
            s.chunks(b)
                .flat_map(|r| {
                    let t: f64 = r.iter().sum();
                    r.iter().map(move |v| v / t)
                })
                .collect::<Vec<_>>()
        };
        let (ps, pt) = (prob(&x[0]), prob(&x[1]));
        vec![pt.iter().zip(&ps).map(|(t, s)| t * ((t + eps) / (s + eps)).ln()).sum::<f64>() / (b * b) as f64]
    };
    check_op(
        DEV,
        "pkt",
        &[Input::new(&[b, 7], 131), Input::new(&[b, 3], 132).no_grad()],
        |x| distill::pkt(&x[0], &x[1]),
        reference,
        tol(2e-4, 3e-3),
    );
}

#[test]
fn cc_matches_reference() {
    let (b, d) = (5, 6);
    check_op(
        DEV,
        "cc",
        &[Input::new(&[b, d], 141), Input::new(&[b, d], 142).no_grad()],
        |x| distill::cc(&x[0], &x[1]),
        |x| {
            let delta: Vec<f64> = x[0].iter().zip(&x[1]).map(|(s, t)| (s - t).abs()).collect();
            let s: f64 =
                (0..b - 1).map(|i| (0..d).map(|k| delta[i * d + k] * delta[(i + 1) * d + k]).sum::<f64>()).sum();
            vec![s / (b - 1) as f64]
        },
        tol(1e-5, 1e-3),
    );
}

// ====================================================================== trainable parts

/// Overwrites a module's parameter by name with seeded values in [-0.5, 0.5); returns them.
fn set_param(m: &dyn Module, name: &str, seed: u64) -> Vec<f64> {
    let (_, t) =
        m.named_parameters().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no parameter {name}"));
    let v: Vec<f32> = rand_vec(t.numel(), seed).iter().map(|x| x * 0.5).collect();
    t.copy_from_slice(&v).unwrap();
    common::to_f64(&v)
}

#[test]
fn fitnet_convreg_matches_reference_in_all_shape_cases() {
    let mut rng = Rng::seed(7);
    let b = 3;
    // (student shape, teacher shape): s_H = 2 t_H, 2 s_H = t_H, and s_H > t_H with a non-square kernel.
    let cases = [([b, 3, 4, 4], [b, 5, 2, 2]), ([b, 3, 2, 3], [b, 5, 4, 6]), ([b, 3, 5, 4], [b, 5, 3, 3])];
    for (case, (ss, ts)) in cases.into_iter().enumerate() {
        let reg = ConvReg::new(&ss, &ts, true, &mut rng, DEV).unwrap();
        let w = set_param(&reg, "conv.weight", 150 + case as u64);
        let bias = set_param(&reg, "conv.bias", 160 + case as u64);
        let tc = ts[1];
        check_op(
            DEV,
            &format!("fitnet ConvReg case {case}: {ss:?} -> {ts:?}"),
            &[Input::new(&ss, 170 + case as u64), Input::new(&ts, 180 + case as u64).no_grad()],
            |x| distill::mse(&reg.forward(&x[0])?, &x[1]),
            |x| {
                let (y, ho, wo) = match case {
                    0 => conv_ref(&x[0], ss, &w, [tc, 3, 3], &bias, 2, 1),
                    1 => conv_transpose_ref(&x[0], ss, &w, [tc, 4], &bias, 2, 1),
                    _ => conv_ref(&x[0], ss, &w, [tc, 1 + ss[2] - ts[2], 1 + ss[3] - ts[3]], &bias, 1, 0),
                };
                assert_eq!((ho, wo), (ts[2], ts[3]), "reference output size");
                let y: Vec<f64> = bn_train_ref(&y, b, tc, ho * wo).into_iter().map(|v| v.max(0.0)).collect();
                vec![mse_ref(&y, &x[1])]
            },
            tol(1e-4, 3e-3),
        );
    }
    assert!(ConvReg::new(&[b, 3, 3, 3], &[b, 5, 4, 4], true, &mut rng, DEV).is_err(), "3x3 -> 4x4 has no regressor");
}

#[test]
fn cc_embed_feeds_both_linear_embeds() {
    // The embeds are Linear layers; check the module loss against cc of hand-applied embeds and
    // that both embeds receive gradients (both are trainable in RepDistiller).
    let mut rng = Rng::seed(9);
    let embed = distill::CcEmbed::new(7, 3, 4, &mut rng, DEV).unwrap();
    let s = tensor(&rand_vec(35, 1), &[5, 7]).requires_grad_();
    let t = tensor(&rand_vec(15, 2), &[5, 3]);
    let loss = embed.loss(&s, &t).unwrap();
    let lin = |x: &[f64], l: &kdscout::nn::Linear| -> Vec<f64> {
        let (w, bias) =
            (common::to_f64(&l.weight.to_vec().unwrap()), common::to_f64(&l.bias.as_ref().unwrap().to_vec().unwrap()));
        let (i, o) = (l.in_features, l.out_features);
        x.chunks(i)
            .flat_map(|r| {
                (0..o).map(|k| bias[k] + (0..i).map(|j| w[k * i + j] * r[j]).sum::<f64>()).collect::<Vec<_>>()
            })
            .collect()
    };
    let es = lin(&common::to_f64(&s.to_vec().unwrap()), &embed.embed_s);
    let et = lin(&common::to_f64(&t.to_vec().unwrap()), &embed.embed_t);
    let delta: Vec<f64> = es.iter().zip(&et).map(|(a, b)| (a - b).abs()).collect();
    let want: f64 =
        (0..4).map(|i| (0..4).map(|k| delta[i * 4 + k] * delta[(i + 1) * 4 + k]).sum::<f64>()).sum::<f64>() / 4.0;
    let got = loss.item().unwrap() as f64;
    assert!((got - want).abs() <= 1e-5 * want.abs().max(1e-3), "cc embed loss {got} vs {want}");
    let grads = loss.backward().unwrap();
    for (name, p) in embed.named_parameters() {
        assert!(grads.get(&p).is_some(), "no gradient reached {name}");
    }
}

#[test]
fn norm_ft_folds_into_the_classifier() {
    // After training (eval mode, arbitrary BN statistics) fc(GAP(FT(f))) equals folded_fc(GAP(f)).
    let mut rng = Rng::seed(11);
    let mut ft = NormFt::new(5, 3, 4, &mut rng, DEV).unwrap();
    for (i, (name, t)) in ft.named_buffers().into_iter().enumerate() {
        if name.ends_with("running_mean") {
            t.copy_from_slice(&rand_vec(t.numel(), 200 + i as u64)).unwrap();
        } else if name.ends_with("running_var") {
            t.copy_from_slice(&rand_vec(t.numel(), 210 + i as u64).iter().map(|x| 1.0 + x * 0.5).collect::<Vec<_>>())
                .unwrap();
        }
    }
    for (i, (name, _)) in ft.named_parameters().into_iter().enumerate() {
        if name.contains(".1.") {
            set_param(&ft, &name, 220 + i as u64);
        }
    }
    nn::eval(&mut ft);
    let fc = kdscout::nn::Linear::new(5, 7, true, &mut rng, DEV).unwrap();
    let f = tensor(&rand_vec(3 * 5 * 4 * 4, 230), &[3, 5, 4, 4]);
    let (e, f2) = ft.expand(&f).unwrap();
    assert_eq!(e.dims(), &[3, 12, 4, 4], "expanded width is N·C_t");
    let direct = fc.forward(&f2.adaptive_avg_pool2d(1, 1).unwrap().flatten_from(1).unwrap()).unwrap().to_vec().unwrap();
    let folded = ft.fold_into(&fc).unwrap();
    let via_fold =
        folded.forward(&f.adaptive_avg_pool2d(1, 1).unwrap().flatten_from(1).unwrap()).unwrap().to_vec().unwrap();
    common::assert_close(&via_fold, &common::to_f64(&direct), 1e-4, 1e-5, "folded NORM classifier");
}

/// PyTorch nearest resize of [planes, h, w] to [oh, ow]: src = floor(dst·in/out).
fn nearest_ref(x: &[f64], planes: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        for y in 0..oh {
            for xx in 0..ow {
                out.push(x[(p * h + y * h / oh) * w + xx * w / ow]);
            }
        }
    }
    out
}

/// ReviewKD's review path on two levels against a reference built from the ABF definition: the
/// deepest level (no fusion) feeds its residual to the shallower one, whose output is upsampled
/// to the teacher's larger map.
#[test]
fn reviewkd_abf_path_matches_reference() {
    let mut rng = Rng::seed(13);
    let n = 3;
    let (s0, s1) = ([n, 2, 4, 4], [n, 3, 2, 2]);
    let (t0, t1) = ([n, 4, 8, 8], [n, 5, 2, 2]);
    let review =
        distill::ReviewKd::new(&[s0.to_vec(), s1.to_vec()], &[t0.to_vec(), t1.to_vec()], &mut rng, DEV).unwrap();
    let mid = 3; // min(512, C of the deepest student level)
    let w_deep1 = set_param(&review, "abfs.0.conv1.0.weight", 301);
    let w_deep2 = set_param(&review, "abfs.0.conv2.0.weight", 302);
    let w_top1 = set_param(&review, "abfs.1.conv1.0.weight", 303);
    let w_top2 = set_param(&review, "abfs.1.conv2.0.weight", 304);
    let w_att = set_param(&review, "abfs.1.att_conv.0.weight", 305);
    let b_att = set_param(&review, "abfs.1.att_conv.0.bias", 306);
    check_op(
        DEV,
        "reviewkd ABF path",
        &[Input::new(&s0, 311), Input::new(&s1, 312)],
        |x| {
            let out = review.review(x)?;
            let flat: Vec<Tensor> = out.iter().map(|o| o.reshape([o.numel()])).collect::<kdscout::Result<_>>()?;
            Tensor::concat(&flat.iter().collect::<Vec<_>>(), 0)
        },
        |x| {
            // Deepest level: x1 = BN(conv1x1), out1 = BN(conv3x3(x1)).
            let (a1, _, _) = conv_ref(&x[1], s1, &w_deep1, [mid, 1, 1], &[], 1, 0);
            let x1 = bn_train_ref(&a1, n, mid, 4);
            let (o1, _, _) = conv_ref(&x1, [n, mid, 2, 2], &w_deep2, [t1[1], 3, 3], &[], 1, 1);
            let out1 = bn_train_ref(&o1, n, t1[1], 4);
            // Shallow level: fuse with the upsampled residual x1 through the 2-channel attention.
            let (a0, _, _) = conv_ref(&x[0], s0, &w_top1, [mid, 1, 1], &[], 1, 0);
            let x0 = bn_train_ref(&a0, n, mid, 16);
            let y = nearest_ref(&x1, n * mid, 2, 2, 4, 4);
            let mut cat = Vec::new();
            for b in 0..n {
                cat.extend_from_slice(&x0[b * mid * 16..(b + 1) * mid * 16]);
                cat.extend_from_slice(&y[b * mid * 16..(b + 1) * mid * 16]);
            }
            let (z, _, _) = conv_ref(&cat, [n, 2 * mid, 4, 4], &w_att, [2, 1, 1], &b_att, 1, 0);
            let z: Vec<f64> = z.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
            let mut fused = vec![0.0; n * mid * 16];
            for b in 0..n {
                for ch in 0..mid {
                    for p in 0..16 {
                        let i = (b * mid + ch) * 16 + p;
                        fused[i] = x0[i] * z[(b * 2) * 16 + p] + y[i] * z[(b * 2 + 1) * 16 + p];
                    }
                }
            }
            let up = nearest_ref(&fused, n * mid, 4, 4, 8, 8);
            let (o0, _, _) = conv_ref(&up, [n, mid, 8, 8], &w_top2, [t0[1], 3, 3], &[], 1, 1);
            let mut out = bn_train_ref(&o0, n, t0[1], 64);
            out.extend(out1);
            out
        },
        tol(2e-4, 3e-3),
    );
}

// ====================================================================== registry and Distiller

fn features(net: &dyn Network, x: &Tensor) -> Features {
    net.forward_features(x).unwrap()
}

#[test]
fn registry_rejects_unknown_names_with_the_list() {
    let err = distill::info("kdd").unwrap_err().to_string();
    for name in ["kd", "fitnet", "at", "sp", "rkd", "pkt", "cc", "nst", "dist", "dkd", "norm", "diswot", "hcl"] {
        assert!(err.contains(name), "error '{err}' does not list {name}");
        assert_eq!(distill::info(name).unwrap().name, name);
    }
    assert_eq!(distill::LOSSES.len(), 13);
    let kd = distill::info("kd").unwrap().weights;
    assert_eq!((kd.gamma, kd.alpha, kd.beta, kd.kd_t), (0.1, 0.9, 0.0, 4.0));
    assert_eq!(distill::info("sp").unwrap().weights.beta, 3000.0);
    assert_eq!(distill::info("pkt").unwrap().weights.beta, 30000.0);
}

/// Every registered loss on a real student/teacher pair of different widths (resnet8 vs resnet8x4,
/// 8x8 inputs): the total is γ·CE + α·KD + β·other with the parts recomputed here, finite, and its
/// gradient reaches the student's parameters and every trainable part of the distiller.
#[test]
fn every_distiller_combines_its_terms_and_trains_its_parts() {
    let mut rng = Rng::seed(3);
    let student = models::build("resnet8", 10, &mut rng, DEV).unwrap();
    let teacher = models::build("resnet8x4", 10, &mut rng, DEV).unwrap();
    let x = Tensor::randn([4, 3, 8, 8], 0.0, 1.0, &mut rng, DEV).unwrap();
    let labels = [1u32, 0, 9, 4];
    let t = {
        let _g = kdscout::autograd::no_grad();
        features(teacher.as_ref(), &x)
    };
    for name in distill::names() {
        let s = features(student.as_ref(), &x);
        let d = Distiller::new(name, &s, &t, &mut rng, DEV).unwrap();
        assert_eq!(d.info.trainable.is_some(), d.num_parameters() > 0, "{name}: trainable description vs parameters");
        let terms = d.loss(&s, &t, &labels, 30, student.classifier()).unwrap();
        let w = d.weights;
        let mut want = w.gamma * terms.ce.item().unwrap();
        if let Some(k) = &terms.kd {
            want += w.alpha * k.item().unwrap();
        }
        if let Some(o) = &terms.other {
            want += w.beta * o.item().unwrap();
        }
        let total = terms.total.item().unwrap();
        assert!(total.is_finite(), "{name}: total {total}");
        assert!((total - want).abs() <= 1e-4 * want.abs().max(1.0), "{name}: total {total} vs parts {want}");
        assert_eq!(terms.kd.is_some(), w.alpha != 0.0, "{name}: KD term present iff alpha != 0");
        assert_eq!(terms.other.is_some(), w.beta != 0.0 && name != "kd", "{name}: other term");
        if name != "norm" {
            // CE on the student's own logits (NORM's pass through its transform and LayerNorm).
            let ce = s.logits.cross_entropy(&labels).unwrap().item().unwrap();
            assert!((terms.ce.item().unwrap() - ce).abs() <= 1e-5 * ce.abs(), "{name}: CE");
        }
        if name == "kd" || name == "diswot" {
            let k = distill::kd(&s.logits, &t.logits, 4.0).unwrap().item().unwrap();
            assert!((terms.kd.as_ref().unwrap().item().unwrap() - k).abs() <= 1e-5 * k.abs().max(1e-6), "{name}: KD");
        }
        let grads = terms.total.backward().unwrap();
        for (pname, p) in student.named_parameters().iter().chain(d.named_parameters().iter()) {
            let reached = grads.get(p).is_some();
            // Only the classifier is bypassed by nothing; every student parameter feeds the logits.
            assert!(reached, "{name}: no gradient for {pname}");
        }
    }
}

#[test]
fn distiller_construction_errors_are_clear() {
    let mut rng = Rng::seed(5);
    let student = models::build("resnet8", 10, &mut rng, DEV).unwrap();
    let x = Tensor::randn([2, 3, 8, 8], 0.0, 1.0, &mut rng, DEV).unwrap();
    let s = features(student.as_ref(), &x);
    let err = Distiller::new("crd", &s, &s, &mut rng, DEV).err().expect("unknown loss").to_string();
    assert!(err.contains("unknown loss 'crd'") && err.contains("hcl"), "{err}");
    // A teacher with fewer stage maps cannot be paired stage-wise.
    let mut t = s.clone();
    t.stages.truncate(2);
    t.preact_stages.truncate(2);
    t.final_map = 1;
    assert!(Distiller::new("at", &s, &t, &mut rng, DEV).is_err());
    assert!(Distiller::new("fitnet", &s, &t, &mut rng, DEV).is_err());
}
