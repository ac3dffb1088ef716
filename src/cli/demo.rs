//! `kdscout demo`: trains `small_cnn` on the 4000 real CIFAR-10 training images shipped in
//! `../shared/data/cifar10/` and evaluates on the 1000 test images after every epoch.
//! Writes `config.resolved.toml` and an append-only `metrics.jsonl` into `--out`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::data::{Dataset, Split};
use crate::error::io_err;
use crate::error::{Error, Result};
use crate::models::small_cnn;
use crate::rng::Rng;
use crate::train::{fit, FitConfig};
use crate::Device;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Epochs over the 4000 training images.
    #[arg(long, default_value_t = FitConfig::default().epochs)]
    pub epochs: usize,
    #[arg(long, default_value_t = FitConfig::default().batch_size)]
    pub batch: usize,
    /// Initial learning rate (cosine-annealed).
    #[arg(long, default_value_t = FitConfig::default().lr)]
    pub lr: f64,
    /// Width of the first conv stage (the net is w, 2w, 4w channels).
    #[arg(long, default_value_t = 32)]
    pub width: usize,
    /// The one seed of the run: initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0, value_parser = super::parse_seed, allow_negative_numbers = true)]
    pub seed: u64,
    /// A CIFAR-10 binary folder (`cifar-10-batches-bin`) to use instead of the shipped subset.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Run directory for the resolved config and metrics.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// cpu, cuda, cuda:N, cuda-emu (the kernels on the CPU emulator; slow) or auto (a GPU when
    /// one is usable, else the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Everything that determines the run, written before it starts.
#[derive(Serialize)]
struct ResolvedConfig<'a> {
    kdscout_version: &'static str,
    command: &'static str,
    seed: u64,
    model: String,
    data: String,
    train_images: usize,
    test_images: usize,
    device: String,
    fit: &'a FitConfig,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let device = Device::parse(&args.device)?;
    let (train, test, data_name) = match &args.data_dir {
        Some(dir) => {
            (Dataset::load_dir(dir, Split::Train)?, Dataset::load_dir(dir, Split::Test)?, dir.display().to_string())
        }
        None => (
            Dataset::shared_cifar10(Split::Train)?,
            Dataset::shared_cifar10(Split::Test)?,
            "shared cifar10 subset".into(),
        ),
    };
    let cfg = FitConfig { epochs: args.epochs, batch_size: args.batch, lr: args.lr, ..FitConfig::default() };
    let mut rng = Rng::seed(args.seed);
    let mut model = small_cnn(args.width, train.num_classes, &mut rng, device)?;

    let _lock = crate::run_lock::RunLock::acquire(&args.out)?;
    let resolved = ResolvedConfig {
        kdscout_version: env!("CARGO_PKG_VERSION"),
        command: "demo",
        seed: args.seed,
        model: format!("small_cnn(width={})", args.width),
        data: data_name,
        train_images: train.len(),
        test_images: test.len(),
        device: device.to_string(),
        fit: &cfg,
    };
    let toml = toml::to_string(&resolved).map_err(|e| Error::invalid("demo", format!("serialising config: {e}")))?;
    let config_path = args.out.join("config.resolved.toml");
    std::fs::write(&config_path, toml).map_err(io_err(format!("writing {}", config_path.display())))?;
    let metrics_path = args.out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io_err(format!("opening {}", metrics_path.display())))?;

    crate::outln!(
        "kdscout demo: small_cnn (width {}, {} parameters) on {} train / {} test images, {} epochs, seed {}",
        args.width,
        crate::nn::Module::num_parameters(&model),
        train.len(),
        test.len(),
        cfg.epochs,
        args.seed
    );
    let records = fit(&mut model, &train, &test, &cfg, &mut rng, |r| {
        crate::outln!(
            "epoch {:>3}  lr {:.4}  train loss {:.4} acc {:5.1}%  test loss {:.4} acc {:5.1}%  {:.0} img/s",
            r.epoch + 1,
            r.lr,
            r.train.loss,
            r.train.top1,
            r.test.loss,
            r.test.top1,
            r.train.images_per_second()
        );
        let line = serde_json::to_string(r).map_err(|e| Error::invalid("demo", format!("serialising metrics: {e}")))?;
        writeln!(metrics, "{line}")
            .and_then(|_| metrics.flush())
            .map_err(io_err(format!("appending to {}", metrics_path.display())))
    })?;
    let last = records.last().map(|r| r.test.top1).unwrap_or(0.0);
    let best = records.iter().map(|r| r.test.top1).fold(0.0, f64::max);
    crate::outln!(
        "test accuracy: last {last:.1}%, best {best:.1}% (chance 10%); metrics in {}",
        metrics_path.display()
    );
    Ok(())
}
