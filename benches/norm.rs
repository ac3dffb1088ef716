//! Memory-bound kernels: train-mode batchnorm forward + backward (it follows every conv) and
//! softmax over the last dim.
//!
//! Throughput is effective bandwidth: the bytes an op must touch at least, over time.
//! - batchnorm fwd+bwd on N elements: forward reads x and writes y, backward reads x and dy and
//!   writes dx: 5·N·4 bytes (per-channel vectors are negligible). The kernels actually make
//!   8·N·4 bytes of passes (statistics need one extra read of x forward and of x, dy backward).
//! - softmax on N elements: reads x, writes y: 2·N·4 bytes.
//!
//! Criterion prints the figure as "thrpt" in GB/s (decimal). Run: `cargo bench --bench norm`.
//!
//! Every call allocates fresh outputs. With glibc's default malloc, multi-MB buffers come from
//! fresh mmap'd pages, and their page faults dominate the 4 MB batchnorm case (about 3/4 of the
//! time in a VM); `MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000` shows
//! the kernels without that cost.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kdscout::backend::{NormGeom, Storage};
use kdscout::rng::Rng;
use kdscout::{Device, Tensor};

fn rand_storage(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

fn batch_norm(c: &mut Criterion) {
    let be = Device::Cpu.backend();
    let mut group = c.benchmark_group("batch_norm_train_fwd_bwd");
    for dims in [[64usize, 16, 32, 32], [64, 64, 8, 8]] {
        let [n, ch, h, w] = dims;
        let len = n * ch * h * w;
        let mut rng = Rng::seed(1);
        // Post-conv-like activations: a per-tensor offset, unit spread.
        let x = Storage::Cpu(rand_storage(len, &mut rng).into_iter().map(|v| v + 0.5).collect());
        let dy = Storage::Cpu(rand_storage(len, &mut rng));
        let gamma = Storage::Cpu(vec![1.0; ch]);
        let beta = Storage::Cpu(vec![0.0; ch]);
        let mut rm = Storage::Cpu(vec![0.0; ch]);
        let mut rv = Storage::Cpu(vec![1.0; ch]);
        let g = NormGeom { n, c: ch, hw: h * w, eps: 1e-5, momentum: 0.1 };
        group.throughput(Throughput::BytesDecimal((5 * len * 4) as u64));
        group.bench_function(format!("{n}x{ch}x{h}x{w}"), |b| {
            b.iter(|| {
                let (y, mean, invstd) = be.batch_norm_train(&x, &gamma, &beta, &mut rm, &mut rv, false, &g).unwrap();
                let grads = be.batch_norm_backward(&x, &dy, &gamma, &mean, &invstd, None, &g).unwrap();
                black_box((y, grads))
            })
        });
    }
    group.finish();
}

fn softmax(c: &mut Criterion) {
    let mut group = c.benchmark_group("softmax_fwd");
    for [rows, cols] in [[64usize, 100], [4096, 1000]] {
        let mut rng = Rng::seed(2);
        let x = Tensor::randn([rows, cols], 0.0, 3.0, &mut rng, Device::Cpu).unwrap();
        group.throughput(Throughput::BytesDecimal((2 * rows * cols * 4) as u64));
        group.bench_function(format!("{rows}x{cols}"), |b| b.iter(|| black_box(x.softmax(-1).unwrap())));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = batch_norm, softmax
}
criterion_main!(benches);
