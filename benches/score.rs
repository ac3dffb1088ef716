//! DisWOT candidates per second (issue 5's speed target): teacher resnet56 cached once per batch
//! (its features and classifier gradient), then per candidate: build and initialise the student,
//! one train-mode forward, the closed-form classifier gradient, ICKD and SP. Batch 64, 100
//! classes; students resnet20 and an NB201 cell. `benches/reference/pytorch_diswot.py` times the
//! same workload in PyTorch.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kdscout::proxy::{self, Candidate, InitMode, ScoringContext, TeacherView};
use kdscout::rng::Rng;
use kdscout::{Device, Tensor};

const NB201_CELL: &str =
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|";

fn bench_diswot(c: &mut Criterion) {
    let batch = 64;
    let mut rng = Rng::seed(0);
    let images = Tensor::randn([batch, 3, 32, 32], 0.0, 1.0, &mut rng, Device::Cpu).unwrap();
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(100) as u32).collect();
    let teacher =
        Candidate { name: "resnet56".into(), num_classes: 100, seed: 1, init: InitMode::Default, device: Device::Cpu };
    let view = TeacherView::compute(teacher.build().unwrap().as_ref(), "resnet56", &images, &labels).unwrap();
    let ctx = ScoringContext { images, labels, teacher: Some(view), seed: 0 };
    let diswot = proxy::by_name("diswot").unwrap();
    let mut group = c.benchmark_group("diswot_candidate");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    for (label, name) in [("resnet20", "resnet20"), ("nb201_cell", NB201_CELL)] {
        let cand =
            Candidate { name: name.into(), num_classes: 100, seed: 2, init: InitMode::Default, device: Device::Cpu };
        group.bench_function(label, |b| b.iter(|| diswot.score(&ctx, &|| cand.build()).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench_diswot);
criterion_main!(benches);
