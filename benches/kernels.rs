//! Kernel benchmarks: every kernel family of `kernels/*.cu`, launched through the GPU backend
//! (`GpuBackend`, the path every op takes) on the CIFAR ResNet shapes at batch 64 (resnet56's
//! three stages 16×32×32, 32×16×16, 64×8×8, its stem and shortcuts, a MobileNetV2 depthwise
//! layer, a ShuffleNet grouped 1×1, a ViT with 65 tokens of 3 × 64 dims, 100-class logits).
//!
//! Device: `KDSCOUT_BENCH_DEVICE=cuda` (default; `cuda:N` for another GPU) or `cuda-emu` (the
//! fiber emulator, feature `cuda-emu`, on tiny shapes: it runs one fiber per CUDA thread, so it
//! only proves that every benchmark body runs, with `-- --test`). With `cuda` and no usable
//! GPU the bench prints one line and exits 0 without benchmarking.
//!
//! Throughput: compute-bound kernels report `Throughput::Elements(FLOPs)`, so criterion's
//! "elem/s" are FLOP/s (Gelem/s = GFLOP/s); memory-bound ones report the bytes the op must move
//! at least (each input read once, each output written once), printed as GB/s. Each benchmark
//! prints, once, its shape, its work and the lower bound on its time on an H100 SXM (work over
//! ~60 TFLOP/s FP32 or ~3.3 TB/s) with the bound docs/KERNELS.md expects.
//!
//! Timing: each sample synchronises the device, launches the op `iters` times (fresh outputs,
//! freed stream-ordered), and synchronises again before reading the clock, so the time is the
//! GPU's, launch overhead included, and never just the enqueueing.
//!
//! `.ci/gpu-check.sh` runs it on a GPU and writes a markdown summary; with
//! `KDSCOUT_BENCH_MANIFEST=path` the bench writes the id, shape, work and H100 bound of every
//! benchmark there (tab-separated) for that summary.
//!
//! Run: `cargo bench --features cuda --bench kernels` (GPU);
//! `KDSCOUT_BENCH_DEVICE=cuda-emu cargo bench --features cuda,cuda-emu --bench kernels -- --test`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use kdscout::backend::cuda::ops::GramMode;
use kdscout::backend::cuda::{Gpu, GpuBackend};
use kdscout::backend::{
    Backend, BinaryOp, Conv2dGeom, DimGeom, InterpMode, MatmulGeom, NormGeom, Pool2dGeom, PoolKind, QuantGeom,
    ResizeGeom, SgdStep, Storage, UnaryOp,
};
use kdscout::rng::Rng;
use kdscout::{Result, Tensor};

/// H100 SXM: FP32 on CUDA cores and HBM3 bandwidth (docs/KERNELS.md).
const H100_FLOPS: f64 = 60e12;
const H100_BYTES: f64 = 3.3e12;

/// What a benchmark's throughput counts.
#[derive(Clone, Copy)]
enum Work {
    /// Floating-point operations (compute-bound kernels).
    Flops(f64),
    /// Bytes the op must move at least (memory-bound kernels).
    Bytes(f64),
}

impl Work {
    /// f32 elements moved, as bytes.
    fn floats(n: usize) -> Work {
        Work::Bytes(4.0 * n as f64)
    }
    /// The H100 lower bound on the time, in seconds.
    fn h100_secs(self) -> f64 {
        match self {
            Work::Flops(f) => f / H100_FLOPS,
            Work::Bytes(b) => b / H100_BYTES,
        }
    }
    fn throughput(self) -> Throughput {
        match self {
            Work::Flops(f) => Throughput::Elements(f.round().max(1.0) as u64),
            Work::Bytes(b) => Throughput::BytesDecimal(b.round().max(1.0) as u64),
        }
    }
    fn describe(self) -> String {
        let (v, unit) = match self {
            Work::Flops(f) => (f, "FLOP"),
            Work::Bytes(b) => (b, "B"),
        };
        match v {
            v if v >= 1e9 => format!("{:.3} G{unit}", v * 1e-9),
            v if v >= 1e6 => format!("{:.3} M{unit}", v * 1e-6),
            v => format!("{:.3} k{unit}", v * 1e-3),
        }
    }
}

fn secs(s: f64) -> String {
    if s < 1e-6 {
        format!("{:.1} ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.2} µs", s * 1e6)
    } else {
        format!("{:.3} ms", s * 1e3)
    }
}

/// `[a,b,c]`.
fn dims(d: &[usize]) -> String {
    format!("[{}]", d.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","))
}

/// The sizes of the benchmarks: resnet56 on CIFAR at batch 64 on a GPU; on the emulator a
/// scaled-down copy with the same structure (stride-2 stages, sizes that are not multiples of
/// any tile), small enough for one fiber per CUDA thread.
struct Sizes {
    batch: usize,
    /// (channels, side) of resnet56's three stages.
    stages: [(usize, usize); 3],
    classes: usize,
    /// Side of the square GEMMs.
    square: usize,
    /// ViT tokens (8x8 patches + class token) and head dim; 3 heads.
    tokens: usize,
    head_dim: usize,
    /// Channels of the MobileNetV2 depthwise layer (at the stage-1 size) and of the ShuffleNet
    /// grouped 1x1 (at the stage-2 size).
    depthwise: usize,
    grouped: usize,
}

const FULL: Sizes = Sizes {
    batch: 64,
    stages: [(16, 32), (32, 16), (64, 8)],
    classes: 100,
    square: 1024,
    tokens: 65,
    head_dim: 64,
    depthwise: 96,
    grouped: 240,
};
const TINY: Sizes = Sizes {
    batch: 3,
    stages: [(6, 12), (12, 6), (24, 3)],
    classes: 10,
    square: 72,
    tokens: 17,
    head_dim: 8,
    depthwise: 6,
    grouped: 12,
};

/// The benchmarks of one device: criterion, the kernels, the sizes and the manifest rows.
struct Bench<'c, G: Gpu> {
    c: &'c mut Criterion,
    be: &'static GpuBackend<G>,
    z: &'static Sizes,
    /// Full sizes (a GPU) or tiny ones (the emulator).
    full: bool,
    seed: u64,
    manifest: Vec<String>,
    /// Benchmarks whose body ran (criterion skips those a filter excludes).
    ran: usize,
}

impl<G: Gpu> Bench<'_, G> {
    /// n normal values around 0.25 (off-centre, as activations after a conv are).
    fn host(&mut self, n: usize) -> Vec<f32> {
        self.seed += 1;
        let mut rng = Rng::seed(self.seed);
        (0..n).map(|_| 0.25 + rng.normal()).collect()
    }
    fn up(&mut self, n: usize) -> Storage {
        let h = self.host(n);
        self.be.from_host(&h).expect("upload")
    }
    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let h = self.host(shape.iter().product());
        Tensor::from_slice(&h, shape.to_vec(), self.be.device()).expect("upload")
    }

    /// Benchmark `op` as `id` (`group/name`): one line with the shape, work and H100 bound the
    /// first time it runs, then criterion samples of `iters` launches between two synchronisations.
    fn run<O>(&mut self, id: &str, shape: String, work: Work, bound: &str, mut op: impl FnMut() -> Result<O>) {
        let (group, name) = id.split_once('/').expect("bench ids are group/name");
        let floor = work.h100_secs();
        self.manifest.push(format!("{id}\t{shape}\t{}\t{bound}\t{floor:e}", work.describe()));
        let line = format!("kernels {id}: {shape}, {}; H100: {bound}, >= {}", work.describe(), secs(floor));
        let be = self.be;
        let gpu = &be.gpu;
        let mut g = self.c.benchmark_group(group);
        g.throughput(work.throughput());
        let mut printed = false;
        g.bench_function(name, |b| {
            if !printed {
                println!("{line}");
                printed = true;
            }
            b.iter_custom(|iters| {
                gpu.synchronize().expect("synchronize");
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(op().unwrap_or_else(|e| panic!("{id}: {e}")));
                }
                gpu.synchronize().expect("synchronize");
                t.elapsed()
            })
        });
        g.finish();
        self.ran += printed as usize;
    }

    // ------------------------------------------------------------------------------ families

    fn gemm(&mut self) {
        let z = self.z;
        let (b, sq, t, d) = (z.batch, z.square, z.tokens, z.head_dim);
        let (c1, s1) = z.stages[0];
        let c3 = z.stages[2].0;
        let geom = |batch, m, k, n, trans_a, trans_b| MatmulGeom {
            batch,
            m,
            k,
            n,
            trans_a,
            trans_b,
            a_broadcast: false,
            b_broadcast: false,
        };
        let cases = [
            // Peak reference: square products in the three layouts.
            ("gemm/nn/square1024", geom(1, sq, sq, sq, false, false), "compute"),
            ("gemm/nt/square1024", geom(1, sq, sq, sq, false, true), "compute"),
            ("gemm/tn/square1024", geom(1, sq, sq, sq, true, false), "compute"),
            // resnet56's stage-1 3x3 conv as one GEMM: [64·1024 px, 144]·[144, 16].
            (
                "gemm/nn/conv_stage1",
                geom(1, b * s1 * s1, c1 * 9, c1, false, false),
                "compute; n = 16 of a 64-wide tile",
            ),
            // The classifier: x [64, 64]·Wᵀ (W [100, 64]) and its weight gradient dyᵀ·x.
            ("gemm/nt/fc_fwd", geom(1, b, c3, z.classes, false, true), "latency (2 tiles)"),
            ("gemm/tn/fc_wgrad", geom(1, z.classes, b, c3, true, false), "latency (2 tiles, k = 64)"),
            // ViT attention at batch 64, 3 heads: q·kᵀ and p·v per head.
            ("gemm/batched_nt/vit_scores", geom(b * 3, t, d, t, false, true), "occupancy (65x65 in 4 tiles)"),
            ("gemm/batched_nn/vit_context", geom(b * 3, t, t, d, false, false), "occupancy (65x64 in 2 tiles)"),
        ];
        for (id, g, bound) in cases {
            let a = self.up(g.batch * g.m * g.k);
            let bm = self.up(g.batch * g.k * g.n);
            let t = |f: bool| if f { "ᵀ" } else { "" };
            let shape =
                format!("{}x A{}{} B{}{}", g.batch, dims(&[g.m, g.k]), t(g.trans_a), dims(&[g.k, g.n]), t(g.trans_b));
            let be = self.be;
            self.run(id, shape, Work::Flops(g.flops()), bound, || be.matmul(&a, &bm, &g));
        }
    }

    fn conv2d(&mut self) {
        let z = self.z;
        let b = z.batch;
        let [(c1, s1), (c2, s2), (c3, s3)] = z.stages;
        let sq = Conv2dGeom::square;
        let cases = [
            ("stem", sq(b, 3, s1, s1, c1, 3, 1, 1, 1), "latency (K = 27)"),
            ("stage1", sq(b, c1, s1, s1, c1, 3, 1, 1, 1), "compute; 16 of 64 tile rows"),
            ("stage2_down", sq(b, c1, s1, s1, c2, 3, 2, 1, 1), "compute; 32 of 64 tile rows"),
            ("stage3", sq(b, c3, s3, s3, c3, 3, 1, 1, 1), "compute"),
            ("shortcut_1x1", sq(b, c1, s1, s1, c2, 1, 2, 0, 1), "latency (K = 16)"),
            ("grouped_g3", sq(b, z.grouped, s2, s2, z.grouped, 1, 1, 0, 3), "compute (80 channels a group)"),
            ("depthwise", sq(b, z.depthwise, s1, s1, z.depthwise, 3, 1, 1, z.depthwise), "memory"),
        ];
        for (case, g, bound) in cases {
            let (nx, nw, ny) = (
                g.n * g.c_in * g.h * g.w,
                g.c_out * (g.c_in / g.groups) * g.kh * g.kw,
                g.n * g.c_out * g.h_out * g.w_out,
            );
            let (x, w, dy) = (self.up(nx), self.up(nw), self.up(ny));
            let shape = format!(
                "x{} w{} stride {} pad {} groups {}",
                dims(&[g.n, g.c_in, g.h, g.w]),
                dims(&[g.c_out, g.c_in / g.groups, g.kh, g.kw]),
                g.stride.0,
                g.pad.0,
                g.groups
            );
            // Depthwise is memory-bound: its bytes; the rest: FLOPs (the same for all three).
            let work = |a: usize, b: usize, c: usize| {
                if g.groups == g.c_in && g.groups > 1 {
                    Work::floats(a + b + c)
                } else {
                    Work::Flops(g.flops())
                }
            };
            let be = self.be;
            self.run(&format!("conv2d/fwd/{case}"), shape.clone(), work(nx, nw, ny), bound, || be.conv2d(&x, &w, &g));
            self.run(&format!("conv2d/bwd_data/{case}"), shape.clone(), work(ny, nw, nx), bound, || {
                be.conv2d_backward_data(&dy, &w, &g)
            });
            self.run(&format!("conv2d/bwd_weight/{case}"), shape, work(nx, ny, nw), bound, || {
                be.conv2d_backward_weight(&x, &dy, &g)
            });
        }
    }

    fn pool(&mut self) {
        let z = self.z;
        let b = z.batch;
        let [(c1, s1), (c2, s2), (c3, s3)] = z.stages;
        let pool = |c, h, k, s, p| Pool2dGeom {
            n: b,
            c,
            h,
            w: h,
            kernel: (k, k),
            stride: (s, s),
            pad: (p, p),
            h_out: (h + 2 * p - k) / s + 1,
            w_out: (h + 2 * p - k) / s + 1,
        };
        let cases = [
            // VGG's 2x2 max pool after a 64-channel block; NB201's 3x3 average (padding not counted).
            ("max2x2", PoolKind::Max, pool(c3, s1, 2, 2, 0)),
            ("avg3x3", PoolKind::Avg { count_include_pad: false }, pool(c1, s1, 3, 1, 1)),
        ];
        for (case, kind, g) in cases {
            let (n_in, n_out) = (g.n * g.c * g.h * g.w, g.n * g.c * g.h_out * g.w_out);
            let (x, dy) = (self.up(n_in), self.up(n_out));
            let shape = format!("x{} window {} stride {}", dims(&[g.n, g.c, g.h, g.w]), g.kernel.0, g.stride.0);
            let be = self.be;
            self.run(&format!("pool/fwd/{case}"), shape.clone(), Work::floats(n_in + n_out), "memory", || {
                be.pool2d(kind, &x, &g)
            });
            // Backward reads x (max: to find each window's argmax) and dy, writes dx.
            let reads_x = if kind == PoolKind::Max { n_in } else { 0 };
            let work = Work::floats(reads_x + n_out + n_in);
            self.run(&format!("pool/bwd/{case}"), shape, work, "memory", || be.pool2d_backward(kind, &x, &dy, &g));
        }
        // resnet56's global average pool (8x8 -> 1) and a bilinear x2 upsampling (feature alignment).
        let cases = [
            ("adaptive_avg", "global", c3, s3, 1, None),
            ("interp", "bilinear_up2", c2, s2, s1, Some(InterpMode::Bilinear)),
        ];
        for (kernel, case, c, h, h_out, mode) in cases {
            let g = ResizeGeom { n: b, c, h, w: h, h_out, w_out: h_out };
            let (n_in, n_out) = (b * c * h * h, b * c * h_out * h_out);
            let (x, dy) = (self.up(n_in), self.up(n_out));
            let shape = format!("x{} -> {h_out}x{h_out}", dims(&[b, c, h, h]));
            let work = Work::floats(n_in + n_out);
            let be = self.be;
            self.run(&format!("pool/{kernel}_fwd/{case}"), shape.clone(), work, "memory", || match mode {
                None => be.adaptive_avg_pool2d(&x, &g),
                Some(m) => be.interpolate(m, &x, &g),
            });
            self.run(&format!("pool/{kernel}_bwd/{case}"), shape, work, "memory", || match mode {
                None => be.adaptive_avg_pool2d_backward(&dy, &g),
                Some(m) => be.interpolate_backward(m, &dy, &g),
            });
        }
    }

    fn norm(&mut self) {
        let z = self.z;
        let b = z.batch;
        for (case, (c, side)) in [("stage1", z.stages[0]), ("stage3", z.stages[2])] {
            let (hw, n) = (side * side, b * c * side * side);
            let g = NormGeom { n: b, c, hw, eps: 1e-5, momentum: 0.1 };
            let (x, dy, gamma, beta) = (self.up(n), self.up(n), self.up(c), self.up(c));
            let (mut rm, mut rv) = (self.be.full(c, 0.0).unwrap(), self.be.full(c, 1.0).unwrap());
            let (_, mean, invstd) = self.be.batch_norm_train(&x, &gamma, &beta, &mut rm, &mut rv, false, &g).unwrap();
            let (y_relu, ..) = self.be.batch_norm_train(&x, &gamma, &beta, &mut rm, &mut rv, true, &g).unwrap();
            let shape = format!("x{}", dims(&[b, c, side, side]));
            let be = self.be;
            // Forward: statistics (one block per channel) + apply; at least x read, y written.
            // The statistics run one block per channel: c blocks on the GPU's SMs.
            let stats = format!("occupancy (statistics: {c} blocks); x read twice");
            let id = format!("batchnorm/train_fwd/{case}");
            self.run(&id, shape.clone(), Work::floats(2 * n), &stats, || {
                be.batch_norm_train(&x, &gamma, &beta, &mut rm, &mut rv, false, &g)
            });
            let id = format!("batchnorm/train_bwd/{case}");
            self.run(&id, shape.clone(), Work::floats(3 * n), &stats.replace("x read", "x, dy read"), || {
                be.batch_norm_backward(&x, &dy, &gamma, &mean, &invstd, None, &g)
            });
            // With the fused ReLU: the backward also reads the activated output as its mask.
            let id = format!("batchnorm/train_bwd_relu/{case}");
            self.run(&id, shape.clone(), Work::floats(4 * n), &stats.replace("x read", "x, dy, y read"), || {
                be.batch_norm_backward(&x, &dy, &gamma, &mean, &invstd, Some(&y_relu), &g)
            });
            // Eval mode is the Tensor op (running statistics folded into a per-channel affine).
            let xt = self.tensor(&[b, c, side, side]);
            let (gt, bt, mt) = (self.tensor(&[c]), self.tensor(&[c]), self.tensor(&[c]));
            let vt = Tensor::full(1.0, [c], be.device()).unwrap();
            self.run(&format!("batchnorm/eval/{case}"), shape, Work::floats(2 * n), "memory", || {
                xt.batch_norm_eval(&gt, &bt, &mt, &vt, 1e-5)
            });
        }
        // Layer norm over the ViT's tokens (3 heads' width).
        let (rows, cols) = (b * z.tokens, 3 * z.head_dim);
        let g = NormGeom { n: rows, c: cols, hw: 1, eps: 1e-5, momentum: 0.0 };
        let (x, dy, gamma, beta) = (self.up(rows * cols), self.up(rows * cols), self.up(cols), self.up(cols));
        let (_, mean, invstd) = self.be.layer_norm(&x, &gamma, &beta, &g).unwrap();
        let shape = format!("x{}", dims(&[rows, cols]));
        let be = self.be;
        self.run("layernorm/fwd/vit", shape.clone(), Work::floats(2 * rows * cols), "memory", || {
            be.layer_norm(&x, &gamma, &beta, &g)
        });
        let bound = format!("latency (dgamma, dbeta: {cols} threads over {rows} rows)");
        self.run("layernorm/bwd/vit", shape, Work::floats(3 * rows * cols), &bound, || {
            be.layer_norm_backward(&x, &dy, &gamma, &mean, &invstd, &g)
        });
    }

    fn softmax(&mut self) {
        let z = self.z;
        let (b, t) = (z.batch, z.tokens);
        let (c3, s3) = z.stages[2];
        let cases = [
            // KD logits, ViT attention rows, and a softmax over the channels of [n, c, hw] (dim 1).
            ("logits", DimGeom { outer: b, len: z.classes, inner: 1 }, "latency (64 rows)"),
            ("attn_rows", DimGeom { outer: b * 3 * t, len: t, inner: 1 }, "memory"),
            ("channels", DimGeom { outer: b, len: c3, inner: s3 * s3 }, "memory"),
        ];
        for (case, g, bound) in cases {
            let n = g.outer * g.len * g.inner;
            let (x, dy) = (self.up(n), self.up(n));
            let shape = format!("[{}, {}, {}] over the middle axis", g.outer, g.len, g.inner);
            let be = self.be;
            for log in [false, true] {
                let name = if log { "log_softmax" } else { "softmax" };
                let y = be.softmax(&x, g, log).unwrap();
                self.run(&format!("softmax/{name}_fwd/{case}"), shape.clone(), Work::floats(2 * n), bound, || {
                    be.softmax(&x, g, log)
                });
                self.run(&format!("softmax/{name}_bwd/{case}"), shape.clone(), Work::floats(3 * n), bound, || {
                    be.softmax_backward(&y, &dy, g, log)
                });
            }
        }
    }

    fn loss(&mut self) {
        let (rows, classes) = (self.z.batch, self.z.classes);
        let n = rows * classes;
        let g = DimGeom { outer: rows, len: classes, inner: 1 };
        let (logits, teacher) = (self.up(n), self.up(n));
        let labels: Vec<u32> = (0..rows).map(|i| (i * 7 % classes) as u32).collect();
        let be = self.be;
        let (log_q, p) = (be.softmax(&logits, g, true).unwrap(), be.softmax(&teacher, g, false).unwrap());
        let dloss = be.full(1, 1.0).unwrap();
        let shape = format!("logits{}", dims(&[rows, classes]));
        self.run("loss/ce_fwd/logits", shape.clone(), Work::floats(n), "latency (one block)", || {
            be.cross_entropy(&logits, &labels, rows, classes)
        });
        self.run("loss/ce_bwd/logits", shape.clone(), Work::floats(2 * n), "latency (one block a row)", || {
            be.cross_entropy_backward(&logits, &labels, &dloss, rows, classes)
        });
        self.run("loss/kl_fwd/logits", shape.clone(), Work::floats(2 * n), "latency (one block)", || {
            be.kl_div(&log_q, &p, rows)
        });
        self.run("loss/kl_bwd/logits", shape, Work::floats(4 * n), "memory", || {
            be.kl_div_backward(&log_q, &p, &dloss, rows)
        });
    }

    fn gram(&mut self) {
        let z = self.z;
        let b = z.batch;
        let [(c1, s1), _, (c3, s3)] = z.stages;
        let cases = [
            // SP: the batch similarity of resnet56's last features, F [1, 64, 64·8·8].
            ("sp_batch", 1, b, c3 * s3 * s3, "occupancy (one 64x64 tile, k = 4096)"),
            // Channel Gram matrices of stage-1 features, F [64, 16, 1024].
            ("channel_stage1", b, c1, s1 * s1, "occupancy (16 of 64 tile rows)"),
        ];
        for (case, batch, m, d, bound) in cases {
            let f = self.up(batch * m * d);
            let shape = format!("F{}", dims(&[batch, m, d]));
            let work = Work::Flops(2.0 * (batch * m * m * d) as f64);
            let be = self.be;
            for (mode_name, mode) in [
                ("plain", GramMode::Plain),
                ("cosine", GramMode::Cosine { eps: 1e-8 }),
                ("row_normalized", GramMode::RowNormalized { eps: 1e-12 }),
            ] {
                let id = format!("gram/{mode_name}/{case}");
                self.run(&id, shape.clone(), work, bound, || be.gram(&f, batch, m, d, mode));
            }
        }
    }

    fn attention(&mut self) {
        let z = self.z;
        let b = z.batch;
        let be = self.be;
        for (case, (c, side)) in [("stage1", z.stages[0]), ("stage3", z.stages[2])] {
            let hw = side * side;
            let x = self.up(b * c * hw);
            let shape = format!("x{}", dims(&[b, c, side, side]));
            let work = Work::floats(b * c * hw + b * hw);
            self.run(&format!("attention/at_map/{case}"), shape, work, "occupancy (one block a sample)", || {
                be.attention_map(&x, b, c, hw, 1e-12)
            });
        }
        let (bh, t, d) = (b * 3, z.tokens, z.head_dim);
        let (q, k) = (self.up(bh * t * d), self.up(bh * t * d));
        let shape = format!("q, k{}", dims(&[bh, t, d]));
        let work = Work::floats(2 * bh * t * d + bh * t * t);
        let scale = 1.0 / (d as f32).sqrt();
        self.run("attention/scores/vit", shape, work, "L2 (K re-read per query row)", || {
            be.attention_scores(&q, &k, bh, t, t, d, scale)
        });
    }

    fn elementwise(&mut self) {
        let b = self.z.batch;
        let (c, h) = self.z.stages[0];
        let d = [b, c, h, h];
        let n = b * c * h * h;
        let (x, x2, dy, chan) = (self.up(n), self.up(n), self.up(n), self.up(c));
        let shape = format!("x{}", dims(&d));
        let be = self.be;
        for (name, op) in [("relu", UnaryOp::Relu), ("gelu", UnaryOp::Gelu)] {
            let y = be.unary(op, &x).unwrap();
            self.run(&format!("elementwise/{name}_fwd/stage1"), shape.clone(), Work::floats(2 * n), "memory", || {
                be.unary(op, &x)
            });
            self.run(&format!("elementwise/{name}_bwd/stage1"), shape.clone(), Work::floats(3 * n), "memory", || {
                be.unary_backward(op, &x, &y, &dy)
            });
        }
        self.run("elementwise/add/stage1", shape.clone(), Work::floats(3 * n), "memory", || {
            be.binary(BinaryOp::Add, &x, &d, &x2, &d, &d)
        });
        let cd = [1, c, 1, 1];
        let per_channel = format!("{shape} with [1,{c},1,1]");
        self.run("elementwise/mul_channel/stage1", per_channel.clone(), Work::floats(2 * n), "memory", || {
            be.binary(BinaryOp::Mul, &x, &d, &chan, &cd, &d)
        });
        let bound = "latency (one thread a channel)";
        self.run("elementwise/sum_to_channel/stage1", per_channel, Work::floats(n), bound, || be.sum_to(&x, &d, &cd));
        self.run("elementwise/fill/stage1", shape.clone(), Work::floats(n), "memory", || be.full(n, 0.5));
        let mut acc = be.full(n, 0.0).unwrap();
        self.run("elementwise/add_assign/stage1", shape.clone(), Work::floats(3 * n), "memory", || {
            be.add_assign(&mut acc, &x)
        });
        // Layout: NCHW -> NHWC, and a channel concat and narrow (copy_slices).
        self.run("layout/permute/stage1_nhwc", shape.clone(), Work::floats(2 * n), "memory (gathered reads)", || {
            be.permute(&x, &d, &[0, 2, 3, 1])
        });
        self.run(
            "layout/concat/stage1_channels",
            format!("2 x {shape} on dim 1"),
            Work::floats(4 * n),
            "memory",
            || be.concat(&[&x, &x2], b, &[c, c], h * h),
        );
        let g = DimGeom { outer: b, len: c, inner: h * h };
        let half = format!("{shape}, channels [0, {})", c / 2);
        self.run("layout/narrow/stage1_half", half, Work::floats(n), "memory", || be.narrow(&x, g, 0, c / 2));
    }

    fn reduce(&mut self) {
        let b = self.z.batch;
        let (c, side) = self.z.stages[0];
        let hw = side * side;
        let n = b * c * hw;
        let x = self.up(n);
        // rows: over each map's pixels ([n·c, hw]); cols: over the channels ([n, c, hw], dim 1).
        let cases =
            [("rows", DimGeom { outer: b * c, len: hw, inner: 1 }), ("cols", DimGeom { outer: b, len: c, inner: hw })];
        let be = self.be;
        for (case, g) in cases {
            let out = g.outer * g.inner;
            let (dy_out, dy) = (self.up(out), self.up(n));
            let shape = format!("[{}, {}, {}] over the middle axis", g.outer, g.len, g.inner);
            self.run(&format!("reduce/sum/{case}"), shape.clone(), Work::floats(n + out), "memory", || {
                be.reduce_sum(&x, g)
            });
            self.run(&format!("reduce/max/{case}"), shape.clone(), Work::floats(n + out), "memory", || {
                be.reduce_max(&x, g)
            });
            self.run(&format!("reduce/max_bwd/{case}"), shape.clone(), Work::floats(2 * n + out), "memory", || {
                be.reduce_max_backward(&x, &dy_out, g)
            });
            self.run(&format!("reduce/normalize/{case}"), shape.clone(), Work::floats(2 * n), "memory", || {
                be.normalize(&x, g, 1e-12)
            });
            self.run(&format!("reduce/normalize_bwd/{case}"), shape, Work::floats(3 * n), "memory", || {
                be.normalize_backward(&x, &dy, g, 1e-12)
            });
        }
    }

    fn optim(&mut self) {
        // Every parameter of resnet56 (CIFAR-100 head) in one flat buffer.
        let n = if self.full { kdscout::models::cost("resnet56", 100).expect("resnet56").params } else { 1000 };
        let (mut param, grad, theta, v) = (self.up(n), self.up(n), self.up(n), self.up(n));
        let be = self.be;
        let mut buf = be.full(n, 0.0).unwrap();
        let step = SgdStep { lr: 0.05, momentum: 0.9, weight_decay: 5e-4, nesterov: true, first_step: false };
        let (gp, gm) = be.fd_perturb(&theta, &v, 1e-2).unwrap();
        let shape = format!("{n} parameters");
        // Reads param, grad, buf; writes param, buf.
        self.run("optim/sgd_nesterov/resnet56", shape.clone(), Work::floats(5 * n), "memory", || {
            be.sgd_step(&mut param, &grad, &mut buf, &step)
        });
        self.run("optim/fd_perturb/resnet56", shape.clone(), Work::floats(4 * n), "memory", || {
            be.fd_perturb(&theta, &v, 1e-2)
        });
        self.run("optim/fd_combine/resnet56", shape, Work::floats(3 * n), "memory", || be.fd_combine(&gp, &gm, 1e-2));
    }

    fn quant(&mut self) {
        let z = self.z;
        let (c1, s1) = z.stages[0];
        let c3 = z.stages[2].0;
        let cases = [
            // resnet56's stage-3 conv weights per output channel; stage-1 activations per tensor.
            ("per_channel_w", QuantGeom { channels: c3, len: c3 * 9, bits: 8 }, "memory"),
            (
                "per_tensor_act",
                QuantGeom { channels: 1, len: z.batch * c1 * s1 * s1, bits: 8 },
                "latency (range in one block)",
            ),
        ];
        let be = self.be;
        for (case, g, bound) in cases {
            let n = g.channels * g.len;
            let (x, dy) = (self.up(n), self.up(n));
            let (_, scale, zp) = be.fake_quant(&x, &g).unwrap();
            let shape = format!("{} channels x {}, {} bits", g.channels, g.len, g.bits);
            self.run(&format!("quant/fwd/{case}"), shape.clone(), Work::floats(2 * n), bound, || be.fake_quant(&x, &g));
            self.run(&format!("quant/bwd/{case}"), shape, Work::floats(3 * n), "memory", || {
                be.fake_quant_backward(&x, &dy, &scale, &zp, &g)
            });
        }
    }
}

/// Every family on `be`; then the manifest, if asked for. Returns the benchmarks that ran and
/// the number there are.
fn run_all<G: Gpu>(c: &mut Criterion, be: &'static GpuBackend<G>, full: bool) -> (usize, usize) {
    let z = if full { &FULL } else { &TINY };
    let mut b = Bench { c, be, z, full, seed: 0, manifest: Vec::new(), ran: 0 };
    b.gemm();
    b.conv2d();
    b.pool();
    b.norm();
    b.softmax();
    b.loss();
    b.gram();
    b.attention();
    b.elementwise();
    b.reduce();
    b.optim();
    b.quant();
    if let Some(path) = std::env::var_os("KDSCOUT_BENCH_MANIFEST") {
        let text = format!("id\tshape\twork\th100_bound\th100_min_secs\n{}\n", b.manifest.join("\n"));
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("kernels bench: cannot write the manifest {}: {e}", path.to_string_lossy());
            std::process::exit(1);
        }
    }
    (b.ran, b.manifest.len())
}

/// On the emulator: every kernel of the launch table must have run once all benchmarks did
/// (a kernel family left out of this file fails the smoke run of `.ci/run`).
#[cfg(feature = "cuda-emu")]
fn check_emulator_coverage(ran: usize, total: usize) {
    use kdscout::backend::cuda::{emu, kernels};
    let launched = emu::launched();
    let missing: Vec<&str> = kernels::ALL.iter().map(|k| k.name).filter(|n| !launched.contains(n)).collect();
    println!(
        "kernels bench: {ran} of {total} benchmarks ran on the emulator, launching {} of the {} kernels",
        kernels::ALL.len() - missing.len(),
        kernels::ALL.len()
    );
    if ran == total && !missing.is_empty() {
        eprintln!("kernels bench: no benchmark launches {}; add them to benches/kernels.rs", missing.join(", "));
        std::process::exit(1);
    }
}

fn main() {
    let device = std::env::var("KDSCOUT_BENCH_DEVICE").unwrap_or_else(|_| "cuda".into());
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    match device.as_str() {
        #[cfg(feature = "cuda-emu")]
        "cuda-emu" => {
            static EMU: GpuBackend<kdscout::backend::cuda::emu::EmuGpu> =
                GpuBackend { gpu: kdscout::backend::cuda::emu::EmuGpu };
            let (ran, total) = run_all(&mut c, &EMU, false);
            check_emulator_coverage(ran, total);
        }
        #[cfg(not(feature = "cuda-emu"))]
        "cuda-emu" => {
            eprintln!("kernels bench: KDSCOUT_BENCH_DEVICE=cuda-emu needs the emulator: add --features cuda,cuda-emu");
            std::process::exit(2);
        }
        d if d == "cuda" || d.starts_with("cuda:") => {
            let ordinal = match d.strip_prefix("cuda:").map(str::parse::<usize>) {
                None => 0,
                Some(Ok(o)) => o,
                Some(Err(_)) => {
                    eprintln!("kernels bench: KDSCOUT_BENCH_DEVICE={d}: expected cuda, cuda:N or cuda-emu");
                    std::process::exit(2);
                }
            };
            match kdscout::backend::cuda::driver::gpu_backend(ordinal) {
                Ok(be) => {
                    run_all(&mut c, be, true);
                }
                Err(e) => {
                    println!("kernels bench: no usable GPU ({e}); nothing benchmarked (KDSCOUT_BENCH_DEVICE=cuda-emu runs the bench bodies on the emulator)");
                    return;
                }
            }
        }
        other => {
            eprintln!("kernels bench: KDSCOUT_BENCH_DEVICE={other}: expected cuda, cuda:N or cuda-emu");
            std::process::exit(2);
        }
    }
    c.final_summary();
}
