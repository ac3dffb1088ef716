//! ThreadSanitizer over the kernels: the emulator built with -fsanitize=thread (build.rs makes
//! `libkds_emu_tsan.so`), where every CUDA thread is a fiber announced to TSan and every
//! barrier a release/acquire pair. Two child runs of this binary with libtsan preloaded:
//!
//! 1. `clean`: every kernel the backend launches, on small grids (several blocks, partial
//!    warps of data, several k-tiles), must produce no TSan report, and every registered kernel
//!    must have been launched;
//! 2. `racy`: `reduce_sum_rows` with one `__syncthreads` removed (a variant compiled only into
//!    the TSan library) must produce a data-race report.
//!
//! No GPU and no test threads: `harness = false`, the child runs on the main thread only.

use std::process::Command;

use kdscout::backend::cuda::emu::{self, EmuGpu};
use kdscout::backend::cuda::kernels::{self, tsan_only};
use kdscout::backend::cuda::ops::GramMode;
use kdscout::backend::cuda::params::AxisParams;
use kdscout::backend::cuda::{Gpu, LaunchCfg};
use kdscout::backend::{
    Backend, BinaryOp, Conv2dGeom, DimGeom, InterpMode, MatmulGeom, NormGeom, Pool2dGeom, PoolKind, QuantGeom,
    ResizeGeom, SgdStep, UnaryOp,
};
use kdscout::rng::Rng;
use kdscout::Device;

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::seed(seed);
    (0..n).map(|_| r.uniform(-1.0, 1.0)).collect()
}

/// Every op with a kernel, on small shapes; outputs are checked only for being finite here
/// (the op tests check values).
fn exercise_all() {
    let be: &dyn Backend = Device::CudaEmu.backend();
    let up = |n: usize, seed: u64| be.from_host(&rand(n, seed)).unwrap();
    let finite = |s: &kdscout::backend::Storage, what: &str| {
        let v = be.to_host(s).unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{what}: non-finite output");
    };
    let x = up(300, 1);
    let pos = be.from_host(&rand(300, 2).iter().map(|v| v.abs() + 0.1).collect::<Vec<_>>()).unwrap();
    for op in [UnaryOp::Relu, UnaryOp::Gelu, UnaryOp::Mish, UnaryOp::Log] {
        let inp = if op == UnaryOp::Log { &pos } else { &x };
        let y = be.unary(op, inp).unwrap();
        let dx = be.unary_backward(op, inp, &y, &x).unwrap();
        finite(&dx, "unary");
    }
    let b = up(20, 3);
    let y = be.binary(BinaryOp::Mul, &x, &[15, 20], &b, &[1, 20], &[15, 20]).unwrap();
    finite(&be.sum_to(&y, &[15, 20], &[1, 20]).unwrap(), "sum_to");
    let mut acc = be.full(300, 1.0).unwrap();
    be.add_assign(&mut acc, &x).unwrap();
    let (mut p, mut m) = (up(300, 4), be.full(300, 0.0).unwrap());
    let step = SgdStep { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true, first_step: false };
    be.sgd_step(&mut p, &x, &mut m, &step).unwrap();
    finite(&p, "sgd");
    // Rows (block reductions, 3 blocks of 100 elements: partial warps) and columns.
    for g in [DimGeom { outer: 3, len: 100, inner: 1 }, DimGeom { outer: 3, len: 20, inner: 5 }] {
        finite(&be.reduce_sum(&x, g).unwrap(), "reduce_sum");
        be.reduce_max(&x, g).unwrap();
        let dy = up(g.outer * g.inner, 5);
        finite(&be.reduce_max_backward(&x, &dy, g).unwrap(), "reduce_max_backward");
        for log in [false, true] {
            let s = be.softmax(&x, g, log).unwrap();
            finite(&be.softmax_backward(&s, &x, g, log).unwrap(), "softmax_backward");
        }
        be.normalize(&x, g, 1e-12).unwrap();
        finite(&be.normalize_backward(&x, &x, g, 1e-12).unwrap(), "normalize_backward");
    }
    let labels = [3u32, 0, 9, 9, 1, 4, 2, 7, 5, 6, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let logits = up(200, 6);
    let one = be.full(1, 1.0).unwrap();
    finite(&be.cross_entropy(&logits, &labels, 20, 10).unwrap(), "cross_entropy");
    finite(&be.cross_entropy_backward(&logits, &labels, &one, 20, 10).unwrap(), "cross_entropy_backward");
    let lq = be.softmax(&logits, DimGeom { outer: 20, len: 10, inner: 1 }, true).unwrap();
    let pr = be.softmax(&up(200, 7), DimGeom { outer: 20, len: 10, inner: 1 }, false).unwrap();
    finite(&be.kl_div(&lq, &pr, 20).unwrap(), "kl_div");
    be.kl_div_backward(&lq, &pr, &one, 20).unwrap();
    finite(&be.permute(&x, &[3, 4, 25], &[2, 0, 1]).unwrap(), "permute");
    let g = DimGeom { outer: 3, len: 20, inner: 5 };
    let nar = be.narrow(&x, g, 2, 7).unwrap();
    finite(&be.concat(&[&nar, &x], 3, &[7, 20], 5).unwrap(), "concat");
    // Two tiles each way plus an edge, and three k-steps (barrier reuse across iterations).
    let a = up(70 * 40, 8);
    let bm = up(40 * 66, 9);
    let mg = MatmulGeom {
        batch: 1,
        m: 70,
        k: 40,
        n: 66,
        trans_a: false,
        trans_b: false,
        a_broadcast: false,
        b_broadcast: false,
    };
    finite(&be.matmul(&a, &bm, &mg).unwrap(), "matmul");
    // Batch norm over [3, 5, 7, 9] (a partial warp per image row) and layer norm over 5 rows of 60.
    let (bx, gam, bet) = (up(3 * 5 * 63, 10), up(5, 11), up(5, 12));
    let (mut rm, mut rv) = (be.full(5, 0.0).unwrap(), be.full(5, 1.0).unwrap());
    let ng = NormGeom { n: 3, c: 5, hw: 63, eps: 1e-5, momentum: 0.1 };
    let (y, mean, inv) = be.batch_norm_train(&bx, &gam, &bet, &mut rm, &mut rv, false, &ng).unwrap();
    let (dx, _, _) = be.batch_norm_backward(&bx, &y, &gam, &mean, &inv, None, &ng).unwrap();
    finite(&dx, "batch_norm_backward");
    let (yr, mean, inv) = be.batch_norm_train(&bx, &gam, &bet, &mut rm, &mut rv, true, &ng).unwrap();
    let (dxr, _, _) = be.batch_norm_backward(&bx, &y, &gam, &mean, &inv, Some(&yr), &ng).unwrap();
    finite(&dxr, "batch_norm_backward with relu");
    for residual in [None, Some(&dx)] {
        finite(&be.channel_affine(&bx, &gam, &bet, residual, true, &ng).unwrap(), "channel_affine");
    }
    let lg = NormGeom { n: 5, c: 189, hw: 1, eps: 1e-5, momentum: 0.0 };
    let (lgam, lbet) = (up(189, 13), up(189, 14));
    let (y, mean, inv) = be.layer_norm(&bx, &lgam, &lbet, &lg).unwrap();
    let (dx, _, _) = be.layer_norm_backward(&bx, &y, &lgam, &mean, &inv, &lg).unwrap();
    finite(&dx, "layer_norm_backward");
    // Convolutions: grouped implicit GEMM (70 output channels per group: two row tiles; 162
    // pixels: three column tiles; 300 pixels for the weight gradient: three split-K slabs), and
    // depthwise with a channel multiplier.
    for g in [Conv2dGeom::square(3, 4, 10, 10, 140, 3, 2, 1, 2), Conv2dGeom::square(3, 3, 10, 10, 6, 3, 1, 1, 3)] {
        let (xc, wc) = (up(g.n * g.c_in * g.h * g.w, 15), up(g.c_out * g.c_in / g.groups * g.kh * g.kw, 16));
        let y = be.conv2d(&xc, &wc, &g).unwrap();
        finite(&be.conv2d_backward_data(&y, &wc, &g).unwrap(), "conv2d_backward_data");
        finite(&be.conv2d_backward_weight(&xc, &y, &g).unwrap(), "conv2d_backward_weight");
    }
    // Pooling and resampling on [2, 3, 9, 7] maps (378 elements: two blocks, a partial warp).
    let xp = up(2 * 3 * 9 * 7, 17);
    let pg = Pool2dGeom { n: 2, c: 3, h: 9, w: 7, kernel: (3, 3), stride: (2, 2), pad: (1, 1), h_out: 5, w_out: 4 };
    for kind in [PoolKind::Max, PoolKind::Avg { count_include_pad: true }] {
        let y = be.pool2d(kind, &xp, &pg).unwrap();
        finite(&be.pool2d_backward(kind, &xp, &y, &pg).unwrap(), "pool2d_backward");
    }
    let rg = ResizeGeom { n: 2, c: 3, h: 9, w: 7, h_out: 4, w_out: 11 };
    let y = be.adaptive_avg_pool2d(&xp, &rg).unwrap();
    finite(&be.adaptive_avg_pool2d_backward(&y, &rg).unwrap(), "adaptive_avg_pool2d_backward");
    for mode in [InterpMode::Nearest, InterpMode::Bilinear] {
        let y = be.interpolate(mode, &xp, &rg).unwrap();
        finite(&be.interpolate_backward(mode, &y, &rg).unwrap(), "interpolate_backward");
    }
    // Proxy kernels outside the Backend trait: cosine Gram of 70 rows (two tiles each way, three
    // k-steps), AT maps over 300 positions (two per thread for some), attention over 300 keys.
    let emu_be = kdscout::backend::cuda::GpuBackend { gpu: EmuGpu };
    let f = up(2 * 70 * 37, 18);
    finite(&emu_be.gram(&f, 2, 70, 37, GramMode::Cosine { eps: 1e-8 }).unwrap(), "gram");
    finite(&emu_be.attention_map(&f, 2, 7, 185, 1e-12).unwrap(), "attention_map");
    finite(&emu_be.attention_scores(&f, &f, 2, 3, 300, 8, 0.3).unwrap(), "attention_scores");
    // Hypergradient steps and fake quantisation (3 channels of 100: partial warps per block).
    let (tp, tm) = be.fd_perturb(&x, &p, 1e-2).unwrap();
    finite(&be.fd_combine(&tp, &tm, 1e-2).unwrap(), "fd_combine");
    let qg = QuantGeom { channels: 3, len: 100, bits: 4 };
    let (q, scale, zp) = be.fake_quant(&x, &qg).unwrap();
    finite(&be.fake_quant_backward(&x, &q, &scale, &zp, &qg).unwrap(), "fake_quant_backward");

    let launched = emu::launched();
    let missing: Vec<&str> = kernels::ALL.iter().map(|k| k.name).filter(|n| !launched.contains(n)).collect();
    assert!(missing.is_empty(), "kernels not exercised under ThreadSanitizer: {missing:?}");
}

fn racy() {
    let gpu = EmuGpu;
    let x = gpu.upload(&rand(256, 11)).unwrap();
    let mut y = gpu.alloc(1).unwrap();
    let p = AxisParams { outer: 1, len: 256, inner: 1, flag: 0, eps: 0.0 };
    // The result may or may not be right; the point is the report.
    let _ = tsan_only::reduce_sum_rows_racy(&gpu, LaunchCfg::blocks(1, 256), &x, &mut y, &p);
}

fn libtsan() -> String {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let o = Command::new(&cxx).arg("-print-file-name=libtsan.so").output().expect("run the C++ compiler");
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn run_child(mode: &str) -> (bool, String) {
    let o = Command::new(std::env::current_exe().unwrap())
        .env("KDS_TSAN_CHILD", mode)
        .env("KDSCOUT_EMU_LIB", emu::TSAN_LIB)
        .env("LD_PRELOAD", libtsan())
        .env("TSAN_OPTIONS", "exitcode=66 halt_on_error=0 report_signal_unsafe=0")
        .output()
        .expect("spawn the child");
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn main() {
    match std::env::var("KDS_TSAN_CHILD").as_deref() {
        Ok("clean") => return exercise_all(),
        Ok("racy") => return racy(),
        _ => {}
    }
    let mut failed = 0;
    let (ok, err) = run_child("clean");
    let clean = ok && !err.contains("ThreadSanitizer");
    println!("test every kernel under ThreadSanitizer, no report ... {}", if clean { "ok" } else { "FAILED" });
    if !clean {
        failed += 1;
        eprintln!("--- child stderr ---\n{err}");
    }
    let (_, err) = run_child("racy");
    // The report must be about the planted kernel (its shared scratch), not the emulator.
    let caught = err.contains("WARNING: ThreadSanitizer: data race") && err.contains("in reduce_sum_rows_racy");
    println!("test planted race (one __syncthreads removed) is reported ... {}", if caught { "ok" } else { "FAILED" });
    if !caught {
        failed += 1;
        eprintln!("--- child stderr ---\n{err}");
    }
    println!("{} passed, {failed} failed", 2 - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
