//! The distillation trainer as a library: stop-and-resume is bit-identical to an uninterrupted
//! run, a diverging run stops naming epoch and step and keeps its last good checkpoint, and the
//! teacher gets no gradients and does not move.

mod common;

use common::TempDir;
use kdscout::data::{Dataset, Split};
use kdscout::distill::checkpoint::{load_state, load_weights, RunDir};
use kdscout::distill::run::{build_trainer, run_one, DistillConfig, RunConfig, RunOptions};
use kdscout::distill::trainer::{Recipe, Trainer};
use kdscout::models;
use kdscout::rng::Rng;
use kdscout::weights;
use kdscout::{Device, Tensor};

fn tiny_recipe(epochs: usize) -> Recipe {
    Recipe {
        epochs,
        batch_size: 32,
        eval_batch_size: 128,
        milestones: vec![2],
        save_every: 2,
        ..Recipe::cifar("resnet8")
    }
}

fn data() -> (Dataset, Dataset) {
    let src = kdscout::data::DataSource::Synthetic { classes: 10 };
    (src.load(Split::Train).unwrap().take(96), src.load(Split::Test).unwrap().take(64))
}

/// A distillation config with a trainable part (FitNets' regressor) and a saved teacher.
fn distill_config(dir: &TempDir, loss: &str, epochs: usize) -> RunConfig {
    let teacher = models::build("resnet14", 10, &mut Rng::seed(11), Device::Cpu).unwrap();
    let path = dir.join("teacher.safetensors");
    weights::save_module(&path, teacher.as_ref(), "resnet14", 10).unwrap();
    RunConfig {
        model: "resnet8".into(),
        data: "synthetic".into(),
        seed: 5,
        train: tiny_recipe(epochs),
        distill: Some(DistillConfig {
            teacher: "resnet14".into(),
            teacher_weights: path.display().to_string(),
            teacher_weights_sha256: String::new(),
            loss: loss.into(),
            gamma: 1.0,
            alpha: 0.5,
            beta: 100.0,
            kd_t: 4.0,
        }),
    }
}

fn bits(t: &[(String, Tensor)]) -> Vec<(String, Vec<u32>)> {
    t.iter().map(|(n, t)| (n.clone(), t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect())).collect()
}

fn trainer(cfg: &RunConfig) -> Trainer {
    build_trainer(cfg, 10).unwrap()
}

#[test]
fn stop_and_resume_is_bit_identical_to_an_uninterrupted_run() {
    let dir = TempDir::new("resume-lib");
    let cfg = distill_config(&dir, "fitnet", 3);
    let (train, test) = data();

    let mut whole = trainer(&cfg);
    whole.run(&train, &test, 3, |_| Ok(())).unwrap();

    // Stop after epoch 1 with a checkpoint, throw the trainer away, continue from the file.
    let run = RunDir::create(dir.join("run")).unwrap();
    let mut first = trainer(&cfg);
    first.run(&train, &test, 1, |end| run.save(end.trainer, "resnet8", end.is_best, &Default::default())).unwrap();
    assert_eq!(first.epoch, 1);
    drop(first);
    let (ckpt, state) = load_state(&run.latest()).unwrap();
    assert_eq!(state.epoch, 1);
    assert!(ckpt.tensors.iter().any(|(n, _)| n.starts_with("distiller.regressor.")), "distiller parts saved");
    assert!(ckpt.tensors.iter().any(|(n, _)| n.starts_with("optim.distiller.")), "their momentum saved");
    assert!(ckpt.tensors.iter().any(|(n, _)| n == "optim.student.fc.weight"), "student momentum saved");
    let mut resumed = trainer(&cfg);
    resumed.restore(&ckpt.tensors, &state).unwrap();
    resumed.run(&train, &test, 3, |_| Ok(())).unwrap();

    assert_eq!(resumed.epoch, 3);
    assert_eq!(bits(&resumed.state_tensors()), bits(&whole.state_tensors()), "weights, buffers and momentum");
    assert_eq!(resumed.rng.state(), whole.rng.state());
    let strip = |t: &Trainer| {
        t.history.iter().map(|r| (r.epoch, r.lr, r.train.loss, r.test.top1, r.test.top5)).collect::<Vec<_>>()
    };
    assert_eq!(strip(&resumed), strip(&whole));
    // Something was learned at all (the comparison above is not between two untouched nets).
    let start = trainer(&cfg);
    assert_ne!(bits(&start.state_tensors()[..4]), bits(&whole.state_tensors()[..4]));
}

#[test]
fn teacher_gets_no_gradients_and_stays_frozen() {
    let dir = TempDir::new("frozen-teacher");
    let cfg = distill_config(&dir, "kd", 1);
    let (train, test) = data();
    let mut tr = trainer(&cfg);
    let teacher_before = bits(&tr.teacher.as_ref().unwrap().state_dict());
    let (x, labels) = {
        let b = kdscout::data::DataLoader::train(&train, 16).unwrap().epoch(&mut Rng::seed(1)).next().unwrap().unwrap();
        b.into_parts()
    };
    let grads = tr.step_grads(&x, &labels, 1).unwrap();
    let teacher = tr.teacher.as_ref().unwrap();
    for (name, p) in teacher.named_parameters() {
        assert!(grads.get(&p).is_none(), "teacher parameter {name} received a gradient");
    }
    let with_grad = tr.student.named_parameters().iter().filter(|(_, p)| grads.get(p).is_some()).count();
    assert_eq!(with_grad, tr.student.named_parameters().len(), "every student parameter has a gradient");
    tr.run(&train, &test, 1, |_| Ok(())).unwrap();
    // Eval mode: the BN running statistics did not move either.
    assert_eq!(bits(&tr.teacher.as_ref().unwrap().state_dict()), teacher_before);
    // And the teacher file's weights are the ones in use.
    let fresh = models::build("resnet14", 10, &mut Rng::seed(99), Device::Cpu).unwrap();
    load_weights(fresh.as_ref(), std::path::Path::new(&cfg.distill.as_ref().unwrap().teacher_weights)).unwrap();
    assert_eq!(bits(&fresh.state_dict()), teacher_before);
}

#[test]
fn divergence_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint() {
    let dir = TempDir::new("nan-stop");
    // A sane LR for epoch 1, then an absurd one (x1e12 after the milestone).
    let cfg = RunConfig {
        model: "resnet8".into(),
        data: "synthetic".into(),
        seed: 1,
        train: Recipe { lr: 0.01, milestones: vec![1], lr_decay: 1e12, ..tiny_recipe(3) },
        distill: None,
    };
    let out = dir.join("run");
    let e = run_one(&cfg, &out, &RunOptions::default()).unwrap_err().to_string();
    assert!(e.contains("at epoch 2, step ") || e.contains("after epoch 2"), "{e}");
    assert!(e.contains("last good checkpoint") && e.contains("(epoch 1)"), "{e}");
    let run = RunDir::create(&out).unwrap();
    let (ckpt, state) = load_state(&run.latest()).unwrap();
    assert_eq!(state.epoch, 1);
    for (name, t) in &ckpt.tensors {
        assert!(t.to_vec().unwrap().iter().all(|v| v.is_finite()), "{name} is not finite in the kept checkpoint");
    }
    let metrics = std::fs::read_to_string(run.metrics()).unwrap();
    assert_eq!(metrics.lines().count(), 2, "header and epoch 1 only:\n{metrics}");
}

#[test]
fn a_train_checkpoint_serves_as_teacher_weights_and_mismatches_are_named() {
    let dir = TempDir::new("ckpt-teacher");
    let net = models::build("resnet8", 10, &mut Rng::seed(3), Device::Cpu).unwrap();
    let mut tr = Trainer::new(tiny_recipe(1), net, Rng::seed(3)).unwrap();
    let (train, test) = data();
    let run = RunDir::create(dir.join("t")).unwrap();
    tr.run(&train, &test, 1, |end| run.save(end.trainer, "resnet8", end.is_best, &Default::default())).unwrap();
    let other = models::build("resnet8", 10, &mut Rng::seed(4), Device::Cpu).unwrap();
    load_weights(other.as_ref(), &run.best()).unwrap();
    assert_eq!(bits(&other.state_dict()), bits(&tr.student.state_dict()));
    let wrong = models::build("resnet14", 10, &mut Rng::seed(4), Device::Cpu).unwrap();
    let e = load_weights(wrong.as_ref(), &run.best()).unwrap_err().to_string();
    assert!(e.contains("best.safetensors") && e.contains("saved from model resnet8"), "{e}");
    // A plain model file is not a resumable checkpoint.
    let plain = dir.join("plain.safetensors");
    weights::save_module(&plain, tr.student.as_ref(), "resnet8", 10).unwrap();
    assert!(load_state(&plain).unwrap_err().to_string().contains("not a kdscout training checkpoint"));
}
