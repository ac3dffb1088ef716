//! A full resnet20 training step (CIFAR-100 head, batch 64): forward, cross-entropy, backward,
//! fused SGD (momentum 0.9, weight decay 5e-4) — the workload `benches/reference/
//! pytorch_reference.py step` times in PyTorch.
//!
//! Throughput is reported in FLOPs: 3x the forward conv+linear FLOPs (backward-data and
//! backward-weight each cost about one forward), 15.67 GFLOP per step at batch 64, the same
//! count the PyTorch script uses, so GFLOP/s figures compare directly.
//!
//! `kd_step` is one distillation step as `kdscout distill --loss kd` runs it: a frozen resnet56
//! teacher forward (eval mode, no graph), the resnet20 student's forward, the RepDistiller KD
//! loss (0.1·CE + 0.9·KL at T = 4), backward and SGD — `pytorch_reference.py kd` in PyTorch.
//! Its throughput is in images.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kdscout::models::cifar_resnet;
use kdscout::nn::Module;
use kdscout::optim::Sgd;
use kdscout::rng::Rng;
use kdscout::{Device, Tensor};

/// resnet20 forward multiply-adds per 32x32 image (convs + fc), from its layer shapes.
const RESNET20_MACS: u64 = 40_818_944;

fn bench_resnet20_step(c: &mut Criterion) {
    let batch = 64;
    let mut rng = Rng::seed(0);
    let mut net = cifar_resnet("resnet20", 100, &mut rng, Device::Cpu).unwrap();
    net.set_training(true);
    let params = net.named_parameters();
    let mut opt = Sgd::new(0.05, 0.9, 5e-4, false).unwrap();
    let x = Tensor::randn([batch, 3, 32, 32], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(100) as u32).collect();
    let mut group = c.benchmark_group("train_step");
    group.sample_size(20);
    group.throughput(Throughput::Elements(3 * 2 * RESNET20_MACS * batch as u64));
    group.bench_function("resnet20_b64_fwd_bwd_sgd", |b| {
        b.iter(|| {
            let loss = net.forward(&x).unwrap().cross_entropy(&labels).unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&params, &grads).unwrap();
        })
    });
    group.finish();
}

fn bench_kd_step(c: &mut Criterion) {
    use kdscout::distill::trainer::{Recipe, Trainer};
    let batch = 64;
    let mut rng = Rng::seed(0);
    let dev = Device::Cpu;
    let student = kdscout::models::build("resnet20", 100, &mut rng, dev).unwrap();
    let teacher = kdscout::models::build("resnet56", 100, &mut rng, dev).unwrap();
    let probe = Tensor::zeros([2, 3, 32, 32], dev).unwrap();
    let tr = Trainer::distill(Recipe::cifar("resnet20"), student, teacher, "kd", &probe, Rng::seed(1)).unwrap();
    let params = tr.parameters();
    let mut opt = Sgd::new(0.05, 0.9, 5e-4, false).unwrap();
    let x = Tensor::randn([batch, 3, 32, 32], 0.0, 1.0, &mut rng, dev).unwrap();
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(100) as u32).collect();
    let mut group = c.benchmark_group("kd_step");
    group.sample_size(10);
    group.throughput(Throughput::Elements(batch as u64));
    let teacher = tr.teacher.as_ref().unwrap();
    group.bench_function("resnet56_teacher_forward_b64", |b| {
        b.iter(|| {
            let _g = kdscout::autograd::no_grad();
            teacher.forward_features(&x).unwrap()
        })
    });
    group.bench_function("resnet56_to_resnet20_b64_kd", |b| {
        b.iter(|| {
            let (loss, _) = tr.step_loss(&x, &labels, 1).unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&params, &grads).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, bench_resnet20_step, bench_kd_step);
criterion_main!(benches);
