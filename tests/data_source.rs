//! The built-in CIFAR-10 images and the `--data` sources (builtin, cifar10:DIR, cifar100:DIR,
//! synthetic), including CIFAR folders with corrupt copies of real files.

use std::path::{Path, PathBuf};

use kdscout::data::{DataSource, Dataset, Split, CIFAR100_RECORD_BYTES, CIFAR10_RECORD_BYTES, IMAGE_BYTES};

/// A fresh temp folder for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kdscout-source-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn shared(rel: &str) -> Vec<u8> {
    std::fs::read(Dataset::shared_path(rel).unwrap()).unwrap()
}

fn err_text<T: std::fmt::Debug>(r: kdscout::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

fn parse(s: &str) -> kdscout::Result<DataSource> {
    s.parse()
}

#[test]
fn builtin_is_the_first_512_shared_images() {
    let train = Dataset::builtin(Split::Train).unwrap();
    let test = Dataset::builtin(Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (512, 512));
    assert_eq!(train.num_classes, 10);
    // Labels as shared/data/README.md gives them, counts as counted by hand from the files.
    assert_eq!(&train.labels[..10], &[6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    assert_eq!(&test.labels[..10], &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    assert_eq!(train.class_counts(), vec![52, 66, 45, 47, 51, 41, 53, 50, 49, 58]);
    assert_eq!(test.class_counts(), vec![57, 41, 51, 49, 44, 50, 56, 48, 57, 59]);
    // Byte for byte the first 512 records of the shared files.
    for (d, rel) in [(&train, "cifar10/data_batch_1_first4000.bin"), (&test, "cifar10/test_batch_first1000.bin")] {
        let bytes = shared(rel);
        for (i, rec) in bytes.chunks_exact(CIFAR10_RECORD_BYTES).take(512).enumerate() {
            assert_eq!(d.labels[i], rec[0] as u32);
            assert_eq!(&d.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES], &rec[1..], "{rel} record {i}");
        }
    }
    assert_eq!(DataSource::default(), DataSource::Builtin);
    assert_eq!(DataSource::Builtin.load(Split::Test).unwrap().labels, test.labels);
}

#[test]
fn sources_parse_and_print_round_trip() {
    for (s, want) in [
        ("builtin", DataSource::Builtin),
        ("synthetic", DataSource::Synthetic { classes: 10 }),
        ("synthetic:100", DataSource::Synthetic { classes: 100 }),
        ("cifar10:/data/cifar-10-batches-bin", DataSource::Cifar10("/data/cifar-10-batches-bin".into())),
        ("cifar100:rel/dir", DataSource::Cifar100("rel/dir".into())),
    ] {
        let got = parse(s).unwrap();
        assert_eq!(got, want, "{s}");
        assert_eq!(got.to_string(), s);
    }
    assert_eq!(parse("CIFAR10:/x").unwrap(), DataSource::Cifar10("/x".into()));
    assert_eq!(parse("synthetic:100").unwrap().num_classes(), 100);
    assert_eq!(parse("cifar100:/x").unwrap().num_classes(), 100);
}

#[test]
fn bad_sources_name_the_input_and_the_fix() {
    let e = err_text(parse("imagenet"));
    assert!(e.contains("--data imagenet") && e.contains("builtin") && e.contains("cifar10:DIR"), "{e}");
    let e = err_text(parse("cifar100:"));
    assert!(e.contains("cifar100:DIR") && e.contains("cifar-100-binary"), "{e}");
    let e = err_text(parse("cifar10"));
    assert!(e.contains("cifar10:DIR"), "{e}");
    let e = err_text(parse("synthetic:lots"));
    assert!(e.contains("'lots'") && e.contains("synthetic:N"), "{e}");
    assert!(parse("synthetic:0").is_err());

    // A bare folder: the fix names the kind its files show.
    let t = TempDir::new("bare");
    let dir = t.path().display().to_string();
    let e = err_text(parse(&dir));
    assert!(e.contains(&format!("cifar10:{dir} or cifar100:{dir}")), "{e}");
    std::fs::write(t.path().join("train.bin"), vec![0u8; CIFAR100_RECORD_BYTES]).unwrap();
    let e = err_text(parse(&dir));
    assert!(e.contains(&format!("write cifar100:{dir}")) && !e.contains("cifar10:"), "{e}");
}

/// A CIFAR-10 folder made of real shared records: batch k holds records 10k..10k+9.
fn cifar10_folder(root: &Path) -> PathBuf {
    let dir = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = shared("cifar10/data_batch_1_first4000.bin");
    for k in 0..5 {
        let part = &bytes[10 * k * CIFAR10_RECORD_BYTES..10 * (k + 1) * CIFAR10_RECORD_BYTES];
        std::fs::write(dir.join(format!("data_batch_{}.bin", k + 1)), part).unwrap();
    }
    let test = shared("cifar10/test_batch_first1000.bin");
    std::fs::write(dir.join("test_batch.bin"), &test[..8 * CIFAR10_RECORD_BYTES]).unwrap();
    dir
}

#[test]
fn cifar10_folder_loads_from_itself_or_its_parent_and_rejects_corrupt_copies() {
    let t = TempDir::new("c10");
    let dir = cifar10_folder(t.path());
    for src in [DataSource::Cifar10(dir.clone()), DataSource::Cifar10(t.path().to_path_buf())] {
        let train = src.load(Split::Train).unwrap();
        assert_eq!(train.len(), 50);
        assert_eq!(&train.labels[..10], &[6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
        assert_eq!(src.load(Split::Test).unwrap().len(), 8);
    }
    let e = err_text(DataSource::Cifar100(dir.clone()).load(Split::Train));
    assert!(e.contains("holds cifar10 files") && e.contains(&format!("cifar10:{}", dir.display())), "{e}");

    // Truncated batch: the error names that file and the sizes.
    let b3 = dir.join("data_batch_3.bin");
    let good = std::fs::read(&b3).unwrap();
    std::fs::write(&b3, &good[..good.len() - 1000]).unwrap();
    let e = err_text(DataSource::Cifar10(dir.clone()).load(Split::Train));
    assert!(e.contains("data_batch_3.bin") && e.contains("truncated") && e.contains("3073"), "{e}");
    std::fs::write(&b3, &good).unwrap();

    // A label out of range in the test batch: file, record and value.
    let tb = dir.join("test_batch.bin");
    let mut bytes = std::fs::read(&tb).unwrap();
    bytes[7 * CIFAR10_RECORD_BYTES] = 12;
    std::fs::write(&tb, &bytes).unwrap();
    let e = err_text(DataSource::Cifar10(dir.clone()).load(Split::Test));
    assert!(e.contains("test_batch.bin") && e.contains("record 7") && e.contains("label 12"), "{e}");
    assert_eq!(DataSource::Cifar10(dir.clone()).load(Split::Train).unwrap().len(), 50);

    // Empty data batch, then an empty folder.
    std::fs::write(dir.join("data_batch_5.bin"), []).unwrap();
    let e = err_text(DataSource::Cifar10(dir.clone()).load(Split::Train));
    assert!(e.contains("data_batch_5.bin") && e.contains("empty"), "{e}");
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = err_text(DataSource::Cifar10(empty.clone()).load(Split::Train));
    assert!(e.contains("data_batch_1.bin") && e.contains("data_batch_5.bin") && e.contains("must contain"), "{e}");
    let e = err_text(DataSource::Cifar100(empty).load(Split::Test));
    assert!(e.contains("test.bin") && e.contains("must contain"), "{e}");
}

#[test]
fn cifar100_folder_loads_and_rejects_corrupt_copies() {
    let t = TempDir::new("c100");
    let dir = t.path().join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    let real = shared("test_first20_foolbox.bin");
    std::fs::write(dir.join("train.bin"), &real).unwrap();
    std::fs::write(dir.join("test.bin"), &real[..5 * CIFAR100_RECORD_BYTES]).unwrap();
    let src = DataSource::Cifar100(t.path().to_path_buf());
    let train = src.load(Split::Train).unwrap();
    assert_eq!((train.len(), train.num_classes), (20, 100));
    assert_eq!(&train.labels[..5], &[49, 33, 72, 51, 71]);
    assert_eq!(src.load(Split::Test).unwrap().len(), 5);

    // Coarse label out of range (the fine one is checked in tests/data.rs).
    let mut bad = real.clone();
    bad[3 * CIFAR100_RECORD_BYTES] = 20;
    std::fs::write(dir.join("train.bin"), &bad).unwrap();
    let e = err_text(src.load(Split::Train));
    assert!(e.contains("train.bin") && e.contains("record 3") && e.contains("coarse label 20"), "{e}");

    // CIFAR-10 records under a CIFAR-100 name: the size check suggests the other kind.
    std::fs::write(dir.join("train.bin"), vec![1u8; 4 * CIFAR10_RECORD_BYTES]).unwrap();
    let e = err_text(src.load(Split::Train));
    assert!(e.contains("train.bin") && e.contains("CIFAR-10") && e.contains("cifar10:DIR"), "{e}");

    // Wrong kind for the folder.
    let e = err_text(DataSource::Cifar10(dir.clone()).load(Split::Test));
    assert!(e.contains("holds cifar100 files") && e.contains("cifar100:"), "{e}");
}

#[test]
fn synthetic_source_is_seeded_per_split() {
    let src = parse("synthetic:7").unwrap();
    let (a, b) = (src.load(Split::Train).unwrap(), src.load(Split::Train).unwrap());
    assert_eq!(a.images, b.images);
    assert_eq!(a.len(), 512);
    assert_eq!(a.num_classes, 7);
    assert!(a.labels.iter().all(|&l| l < 7));
    assert_ne!(src.load(Split::Test).unwrap().images, a.images);
}
