//! `kdscout data [--data SRC]`: loads both splits of a data source, checking every file, and
//! prints their sizes and class counts. [`DataArgs`] is the `--data` option other commands flatten
//! into theirs.

use clap::Args;

use crate::data::{DataSource, Dataset, Split};
use crate::error::Result;

/// `--data`, defaulting to the images built into the binary.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// builtin (512 + 512 real CIFAR-10 images in the binary), cifar10:DIR, cifar100:DIR or
    /// synthetic[:CLASSES].
    #[arg(long, default_value = "builtin")]
    pub data: DataSource,
}

fn summary(d: &Dataset) -> String {
    let counts: Vec<String> = d.class_counts().iter().map(usize::to_string).collect();
    let shown = if counts.len() > 20 { format!("{} ..", counts[..20].join(" ")) } else { counts.join(" ") };
    format!("{:>6} images, {} classes; per class: {shown}", d.len(), d.num_classes)
}

pub fn run(args: &DataArgs) -> Result<()> {
    let train = args.data.load(Split::Train)?;
    let test = args.data.load(Split::Test)?;
    crate::outln!("data {}: {} / {}", args.data, train.name, test.name);
    crate::outln!("train {}", summary(&train));
    crate::outln!("test  {}", summary(&test));
    Ok(())
}
