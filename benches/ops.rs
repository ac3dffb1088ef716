//! Op benchmarks. Throughput is reported as `Throughput::Elements(flops)`: criterion's
//! "elem/s" figures are FLOP/s (so Gelem/s = GFLOP/s). Reference peak of the dev machine:
//! ~115 GFLOP/s per Zen 4 core, ~225 GFLOP/s on both.
//!
//! Each op family adds its own `bench_*` function to the `criterion_group!` at the bottom.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kdscout::backend::cpu::{conv, matmul};
use kdscout::backend::{Conv2dGeom, MatmulGeom};
use std::time::Duration;

fn data(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect()
}

fn bench_gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let plain = |m, k, n| MatmulGeom {
        batch: 1,
        m,
        k,
        n,
        trans_a: false,
        trans_b: false,
        a_broadcast: false,
        b_broadcast: false,
    };
    let cases = [
        ("square256", plain(256, 256, 256)),
        ("square512", plain(512, 512, 512)),
        ("square1024", plain(1024, 1024, 1024)),
        // A batch of resnet56's first-stage 3x3 conv as one GEMM: [64·1024 px, 144]·[144, 16].
        ("conv16x32x32_b64", plain(64 * 1024, 144, 16)),
        // Batched small products with a shared right operand transposed (attention-like).
        (
            "batched64x128x64x128_tb",
            MatmulGeom {
                batch: 64,
                m: 128,
                k: 64,
                n: 128,
                trans_a: false,
                trans_b: true,
                a_broadcast: false,
                b_broadcast: false,
            },
        ),
    ];
    for (name, g) in cases {
        let a = data(g.batch * g.m * g.k);
        let b = data(g.batch * g.k * g.n);
        // Elements = FLOPs.
        group.throughput(Throughput::Elements(g.flops() as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |bch| {
            bch.iter(|| matmul::matmul(black_box(&a), black_box(&b), &g).unwrap())
        });
    }
    group.finish();
}

fn bench_conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let cases = [
        // resnet56's three 3x3 stages at batch 64.
        ("r56_16x32x32_b64", Conv2dGeom::square(64, 16, 32, 32, 16, 3, 1, 1, 1)),
        ("r56_32x16x16_b64", Conv2dGeom::square(64, 32, 16, 16, 32, 3, 1, 1, 1)),
        ("r56_64x8x8_b64", Conv2dGeom::square(64, 64, 8, 8, 64, 3, 1, 1, 1)),
        // MobileNet-style depthwise 3x3 and a pointwise 1x1.
        ("dw_96x32x32_b64", Conv2dGeom::square(64, 96, 32, 32, 96, 3, 1, 1, 96)),
        ("pw_64to128x16x16_b64", Conv2dGeom::square(64, 64, 16, 16, 128, 1, 1, 0, 1)),
    ];
    for (name, g) in cases {
        let x = data(g.n * g.c_in * g.h * g.w);
        let w = data(g.c_out * (g.c_in / g.groups) * g.kh * g.kw);
        let dy = data(g.n * g.c_out * g.h_out * g.w_out);
        // Elements = FLOPs; each of the three ops costs the same multiply-adds.
        group.throughput(Throughput::Elements(g.flops() as u64));
        group.bench_function(BenchmarkId::new("fwd", name), |b| {
            b.iter(|| conv::conv2d(black_box(&x), black_box(&w), &g).unwrap())
        });
        group.bench_function(BenchmarkId::new("bwd_data", name), |b| {
            b.iter(|| conv::conv2d_backward_data(black_box(&dy), black_box(&w), &g).unwrap())
        });
        group.bench_function(BenchmarkId::new("bwd_weight", name), |b| {
            b.iter(|| conv::conv2d_backward_weight(black_box(&x), black_box(&dy), &g).unwrap())
        });
    }
    group.finish();
}

/// CPU time this thread has run, in seconds (from the scheduler's own accounting, so it does
/// not count time spent waiting for a core while other processes run).
fn thread_cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN) * 1e-9
}

/// With `CONV_CPUTIME=1`: the resnet conv shapes on one rayon thread, timed by that thread's
/// CPU time (best of 5 runs of >= 0.2 s), so the figures hold up while other builds share the
/// cores. Prints GFLOP/s per core (the peak is ~112); criterion's own timing is skipped.
fn bench_conv_cputime(_c: &mut Criterion) {
    if std::env::var_os("CONV_CPUTIME").is_none() {
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let cases = [
        ("r56_16x32x32_b64", Conv2dGeom::square(64, 16, 32, 32, 16, 3, 1, 1, 1)),
        ("r56_32x16x16_b64", Conv2dGeom::square(64, 32, 16, 16, 32, 3, 1, 1, 1)),
        ("r56_64x8x8_b64", Conv2dGeom::square(64, 64, 8, 8, 64, 3, 1, 1, 1)),
        ("first_3to16x32x32_b64", Conv2dGeom::square(64, 3, 32, 32, 16, 3, 1, 1, 1)),
        // Few channels: where the Winograd dispatch threshold (8 in and out) sits.
        ("c4to16x32x32_b64", Conv2dGeom::square(64, 4, 32, 32, 16, 3, 1, 1, 1)),
        ("c8x32x32_b64", Conv2dGeom::square(64, 8, 32, 32, 8, 3, 1, 1, 1)),
        ("c8to16x16x16_b64", Conv2dGeom::square(64, 8, 16, 16, 16, 3, 1, 1, 1)),
        ("s2_16to32x32x32_b64", Conv2dGeom { c_out: 32, ..Conv2dGeom::square(64, 16, 32, 32, 32, 3, 2, 1, 1) }),
        ("ds1x1_16to32x32x32_b64", Conv2dGeom { c_out: 32, ..Conv2dGeom::square(64, 16, 32, 32, 32, 1, 2, 0, 1) }),
    ];
    // CONV_CPUTIME=1 runs every shape; any other value runs the shapes whose name contains it.
    let only = std::env::var("CONV_CPUTIME").unwrap_or_default();
    pool.install(|| {
        for (name, g) in cases.into_iter().filter(|(name, _)| only == "1" || name.contains(&only)) {
            let x = data(g.n * g.c_in * g.h * g.w);
            let w = data(g.c_out * (g.c_in / g.groups) * g.kh * g.kw);
            let dy = data(g.n * g.c_out * g.h_out * g.w_out);
            let ops: [(&str, &dyn Fn() -> Vec<f32>); 3] = [
                ("fwd", &|| conv::conv2d(black_box(&x), black_box(&w), &g).unwrap()),
                ("bwd_data", &|| conv::conv2d_backward_data(black_box(&dy), black_box(&w), &g).unwrap()),
                ("bwd_weight", &|| conv::conv2d_backward_weight(black_box(&x), black_box(&dy), &g).unwrap()),
            ];
            for (op, f) in ops {
                black_box(f());
                let mut best = f64::INFINITY;
                for _ in 0..5 {
                    let (t0, mut iters) = (thread_cpu_secs(), 0);
                    while thread_cpu_secs() - t0 < 0.2 {
                        black_box(f());
                        iters += 1;
                    }
                    best = best.min((thread_cpu_secs() - t0) / iters as f64);
                }
                println!("cputime {op:>10} {name:<24} {:7.1} GFLOP/s/core", g.flops() / best * 1e-9);
            }
        }
    });
}

criterion_group!(benches, bench_gemm, bench_conv, bench_conv_cputime);
criterion_main!(benches);
