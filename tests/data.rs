//! Data pipeline: CIFAR readers on the shared real files and on corrupt files, augmentation,
//! normalisation and seeded batching.

mod common;
use common::{err_text, TempDir};

use kdscout::data::{
    AugParams, Augment, DataLoader, Dataset, Normalize, Split, CIFAR100_RECORD_BYTES, CIFAR10_RECORD_BYTES, IMAGE_BYTES,
};
use kdscout::rng::Rng;

fn shared_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(Dataset::shared_path(rel).unwrap()).unwrap()
}

/// `n` CIFAR-10 records with the given label and pixel value.
fn cifar10_records(n: usize, label: u8, pixel: u8) -> Vec<u8> {
    let mut rec = vec![pixel; CIFAR10_RECORD_BYTES];
    rec[0] = label;
    rec.repeat(n)
}

// ---------------------------------------------------------------- shared real files

#[test]
fn shared_cifar10_train_matches_reference() {
    let d = Dataset::shared_cifar10(Split::Train).unwrap();
    assert_eq!(d.len(), 4000);
    assert_eq!(d.images.len(), 4000 * IMAGE_BYTES);
    assert_eq!(d.num_classes, 10);
    assert_eq!(&d.labels[..10], &[6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    let m = d.channel_means();
    for (got, want) in m.iter().zip([125.4, 122.9, 113.4]) {
        assert!((got - want).abs() < 0.1, "channel means {m:?}");
    }
    assert_eq!(d.normalize, Normalize::CIFAR10);
}

#[test]
fn shared_cifar10_test_matches_reference() {
    let d = Dataset::shared_cifar10(Split::Test).unwrap();
    assert_eq!(d.len(), 1000);
    assert_eq!(&d.labels[..10], &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    assert_eq!(d.class_counts(), vec![103, 89, 100, 103, 90, 86, 112, 102, 106, 109]);
}

#[test]
fn shared_cifar100_sample_matches_reference() {
    let fine = Dataset::shared_cifar100_sample(true).unwrap();
    assert_eq!(fine.len(), 20);
    assert_eq!(fine.num_classes, 100);
    assert_eq!(&fine.labels[..5], &[49, 33, 72, 51, 71]);
    assert_eq!(fine.normalize, Normalize::CIFAR100);
    let coarse = Dataset::shared_cifar100_sample(false).unwrap();
    assert_eq!(coarse.num_classes, 20);
    assert!(coarse.labels.iter().all(|&l| l < 20));
    assert_eq!(coarse.images, fine.images);
}

#[test]
fn shared_class_names() {
    let names = kdscout::data::shared_cifar10_class_names().unwrap();
    assert_eq!(names, kdscout::data::CIFAR10_CLASSES.to_vec());
}

#[test]
fn cifar10_folder_loads_batches_in_order() {
    let t = TempDir::new("c10dir");
    let dir = t.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&dir).unwrap();
    let test = shared_bytes("cifar10/test_batch_first1000.bin");
    std::fs::write(dir.join("test_batch.bin"), &test).unwrap();
    for k in 1..=5u8 {
        std::fs::write(dir.join(format!("data_batch_{k}.bin")), cifar10_records(3, k, k)).unwrap();
    }
    let tr = Dataset::load_cifar10_dir(&dir, Split::Train).unwrap();
    assert_eq!(tr.labels, vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]);
    assert_eq!(tr.image(14).unwrap()[0], 5);
    let te = Dataset::load_cifar10_dir(&dir, Split::Test).unwrap();
    assert_eq!(te.len(), 1000);
    // The parent folder works too: the kind is detected from the file names.
    let auto = Dataset::load_dir(t.path(), Split::Test).unwrap();
    assert_eq!(auto.labels, te.labels);
}

#[test]
fn cifar100_folder_loads() {
    let t = TempDir::new("c100dir");
    let dir = t.path().join("cifar-100-binary");
    std::fs::create_dir(&dir).unwrap();
    let bytes = shared_bytes("test_first20_foolbox.bin");
    std::fs::write(dir.join("test.bin"), &bytes).unwrap();
    std::fs::write(dir.join("train.bin"), &bytes[..2 * CIFAR100_RECORD_BYTES]).unwrap();
    let te = Dataset::load_cifar100_dir(&dir, Split::Test).unwrap();
    assert_eq!(&te.labels[..5], &[49, 33, 72, 51, 71]);
    assert_eq!(Dataset::load_cifar100_dir(&dir, Split::Train).unwrap().len(), 2);
    assert_eq!(Dataset::load_dir(&dir, Split::Test).unwrap().len(), 20);
}

// ---------------------------------------------------------------- corrupt input

#[test]
fn truncated_file_names_file_and_sizes() {
    let t = TempDir::new("trunc");
    let mut bytes = shared_bytes("cifar10/test_batch_first1000.bin");
    bytes.truncate(3 * CIFAR10_RECORD_BYTES + 100);
    let p = t.write("data_batch_1.bin", &bytes);
    let e = err_text(Dataset::read_cifar10_file(&p));
    assert!(e.contains(&p.display().to_string()), "{e}");
    assert!(e.contains("9319") && e.contains("3073"), "{e}");
    assert!(e.contains("truncated"), "{e}");
    println!("{e}");
}

#[test]
fn wrong_record_size_suggests_other_kind() {
    let t = TempDir::new("kind");
    // 3073 CIFAR-100 records: a whole number of 3074-byte records but not of 3073-byte ones.
    let p = t.write("train.bin", &vec![0u8; 3073 * CIFAR100_RECORD_BYTES + CIFAR100_RECORD_BYTES]);
    let e = err_text(Dataset::read_cifar10_file(&p));
    assert!(e.contains(&p.display().to_string()), "{e}");
    assert!(e.contains("CIFAR-100") && e.contains("3073"), "{e}");
    println!("{e}");
    // A CIFAR-10 file read as CIFAR-100: the size and both record sizes are named.
    let p10 = t.write("data.bin", &cifar10_records(4, 1, 0));
    let e = err_text(Dataset::read_cifar100_file(&p10, true));
    assert!(e.contains("data.bin") && e.contains("12292") && e.contains("3074") && e.contains("3073"), "{e}");
}

#[test]
fn out_of_range_labels_name_record_and_value() {
    let t = TempDir::new("label");
    let mut bytes = cifar10_records(5, 3, 7);
    bytes[2 * CIFAR10_RECORD_BYTES] = 10;
    let p = t.write("bad10.bin", &bytes);
    let e = err_text(Dataset::read_cifar10_file(&p));
    assert!(e.contains("bad10.bin") && e.contains("record 2") && e.contains("label 10"), "{e}");
    println!("{e}");

    let mut bytes = shared_bytes("test_first20_foolbox.bin");
    bytes[4 * CIFAR100_RECORD_BYTES + 1] = 150;
    let p = t.write("bad100.bin", &bytes);
    let e = err_text(Dataset::read_cifar100_file(&p, false));
    assert!(e.contains("bad100.bin") && e.contains("record 4") && e.contains("fine label 150"), "{e}");
}

#[test]
fn empty_and_missing_files_are_errors() {
    let t = TempDir::new("empty");
    let p = t.write("empty.bin", &[]);
    let e = err_text(Dataset::read_cifar10_file(&p));
    assert!(e.contains("empty.bin") && e.contains("empty"), "{e}");
    let missing = t.path().join("nope.bin");
    let e = err_text(Dataset::read_cifar100_file(&missing, true));
    assert!(e.contains("nope.bin") && e.contains("not found"), "{e}");
}

#[test]
fn missing_folder_and_entries_are_listed() {
    let t = TempDir::new("folder");
    let gone = t.path().join("cifar-10-batches-bin");
    let e = err_text(Dataset::load_cifar10_dir(&gone, Split::Train));
    assert!(
        e.contains("cifar-10-batches-bin") && e.contains("data_batch_1.bin") && e.contains("test_batch.bin"),
        "{e}"
    );
    let e = err_text(Dataset::load_dir(&gone, Split::Train));
    assert!(e.contains("cifar-10-batches-bin"), "{e}");

    std::fs::create_dir(&gone).unwrap();
    std::fs::write(gone.join("data_batch_1.bin"), cifar10_records(1, 0, 0)).unwrap();
    std::fs::write(gone.join("data_batch_3.bin"), cifar10_records(1, 0, 0)).unwrap();
    let e = err_text(Dataset::load_cifar10_dir(&gone, Split::Train));
    // The list of missing files comes before the reminder of what the folder needs.
    let listed = e.split("; a CIFAR-10 folder").next().unwrap();
    for (f, missing) in [("1", false), ("2", true), ("3", false), ("4", true), ("5", true)] {
        assert_eq!(listed.contains(&format!("data_batch_{f}.bin")), missing, "{e}");
    }
    println!("{e}");
    let e = err_text(Dataset::load_cifar10_dir(&gone, Split::Test));
    assert!(e.contains("test_batch.bin"), "{e}");

    let c100 = t.path().join("cifar-100-binary");
    std::fs::create_dir(&c100).unwrap();
    let e = err_text(Dataset::load_cifar100_dir(&c100, Split::Train));
    assert!(e.contains("train.bin"), "{e}");
    let e = err_text(Dataset::load_dir(&c100, Split::Train));
    assert!(e.contains("cifar-100-binary") && e.contains("train.bin"), "{e}");
}

// ---------------------------------------------------------------- augmentation

fn px(img: &[u8; IMAGE_BYTES], c: usize, y: usize, x: usize) -> u8 {
    img[c * 1024 + y * 32 + x]
}

#[test]
fn flip_is_exact_mirror() {
    let d = Dataset::shared_cifar10(Split::Test).unwrap();
    let src = d.image(0).unwrap();
    let mut dst = [0u8; IMAGE_BYTES];
    AugParams { dy: 0, dx: 0, flip: true }.apply(src, &mut dst);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                assert_eq!(px(&dst, c, y, x), px(src, c, y, 31 - x));
            }
        }
    }
    let mut back = [0u8; IMAGE_BYTES];
    AugParams { dy: 0, dx: 0, flip: true }.apply(&dst, &mut back);
    assert_eq!(&back, src);
}

#[test]
fn crop_shifts_content_and_fills_zeros() {
    let d = Dataset::shared_cifar10(Split::Train).unwrap();
    let src = d.image(3).unwrap();
    let mut dst = [0u8; IMAGE_BYTES];
    // Crop at top = 4 + 2, left = 4 - 3 in the 40x40 padded image.
    AugParams { dy: 2, dx: -3, flip: false }.apply(src, &mut dst);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                let (sy, sx) = (y as isize + 2, x as isize - 3);
                let want = if (0..32).contains(&sy) && (0..32).contains(&sx) {
                    px(src, c, sy as usize, sx as usize)
                } else {
                    0
                };
                assert_eq!(px(&dst, c, y, x), want, "c{c} y{y} x{x}");
            }
        }
    }
    // Crop then flip, as torchvision composes them.
    let mut both = [0u8; IMAGE_BYTES];
    AugParams { dy: 2, dx: -3, flip: true }.apply(src, &mut both);
    for y in 0..32 {
        for x in 0..32 {
            assert_eq!(px(&both, 1, y, x), px(&dst, 1, y, 31 - x));
        }
    }
}

#[test]
fn padding_is_zero_in_pixel_space() {
    let d = Dataset::shared_cifar10(Split::Test).unwrap();
    let t = d.decode(&[0], Some(&[AugParams { dy: 0, dx: 4, flip: false }])).unwrap();
    let v = t.to_vec().unwrap();
    let n = Normalize::CIFAR10;
    for c in 0..3 {
        let zero = (0.0 - n.mean[c]) / n.std[c];
        for y in 0..32 {
            for x in 28..32 {
                assert!((v[c * 1024 + y * 32 + x] - zero).abs() < 1e-6);
            }
        }
    }
}

#[test]
fn augmentation_is_seeded() {
    let draw = |seed| {
        let mut rng = Rng::seed(seed);
        (0..64).map(|_| Augment::CIFAR.sample(&mut rng)).collect::<Vec<_>>()
    };
    assert_eq!(draw(5), draw(5));
    assert_ne!(draw(5), draw(6));
    let d = Dataset::shared_cifar10(Split::Test).unwrap().take(64);
    let run = |seed| {
        let loader = DataLoader::train(&d, 16).unwrap();
        let mut rng = Rng::seed(seed);
        loader.epoch(&mut rng).map(|b| b.unwrap().images.to_vec().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

// ---------------------------------------------------------------- batching and normalisation

#[test]
fn epoch_covers_every_index_once() {
    let d = Dataset::synthetic(103, 10, 1);
    let loader = DataLoader::train(&d, 10).unwrap();
    assert_eq!(loader.num_batches(), 11);
    let mut rng = Rng::seed(0);
    let mut seen = vec![0usize; 103];
    let mut sizes = Vec::new();
    for b in loader.epoch(&mut rng) {
        let b = b.unwrap();
        assert_eq!(b.images.dims(), &[b.len(), 3, 32, 32]);
        for (&i, &l) in b.indices.iter().zip(&b.labels) {
            seen[i] += 1;
            assert_eq!(l, d.labels[i]);
        }
        sizes.push(b.len());
    }
    assert!(seen.iter().all(|&c| c == 1));
    assert_eq!(sizes, [vec![10; 10], vec![3]].concat());

    let dropped = DataLoader::train(&d, 10).unwrap().drop_last(true);
    assert_eq!(dropped.num_batches(), 10);
    let epoch = dropped.epoch(&mut rng);
    assert_eq!(epoch.len(), 10);
    let idx: Vec<usize> = epoch.flat_map(|b| b.unwrap().indices).collect();
    let mut sorted = idx.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 100);
}

#[test]
fn shuffles_differ_across_epochs_and_seeds() {
    let d = Dataset::synthetic(50, 5, 2);
    let loader = DataLoader::new(&d, 7).unwrap().shuffle(true);
    let order = |rng: &mut Rng| loader.epoch(rng).order().to_vec();
    let mut a = Rng::seed(1);
    let e0 = order(&mut a);
    let e1 = order(&mut a);
    assert_ne!(e0, e1);
    let mut again = Rng::seed(1);
    assert_eq!(order(&mut again), e0);
    assert_eq!(order(&mut again), e1);
    assert_ne!(order(&mut Rng::seed(2)), e0);
    // Evaluation order is the data order.
    let eval = DataLoader::eval(&d, 7).unwrap();
    let idx: Vec<usize> = eval.epoch(&mut Rng::seed(3)).flat_map(|b| b.unwrap().indices).collect();
    assert_eq!(idx, (0..50).collect::<Vec<_>>());
}

#[test]
fn normalisation_matches_hand_computation() {
    let d = Dataset::shared_cifar10(Split::Test).unwrap();
    let loader = DataLoader::eval(&d, 4).unwrap();
    let batch = loader.epoch(&mut Rng::seed(0)).nth(1).unwrap().unwrap();
    assert_eq!(batch.indices, vec![4, 5, 6, 7]);
    assert_eq!(batch.labels, vec![6, 6, 1, 6]);
    let v = batch.images.to_vec().unwrap();
    let mean = [0.4914f32, 0.4822, 0.4465];
    let std = [0.2470f32, 0.2435, 0.2616];
    for (k, &i) in batch.indices.iter().enumerate() {
        let img = d.image(i).unwrap();
        for c in 0..3 {
            for &(y, x) in &[(0, 0), (5, 17), (31, 31), (16, 2)] {
                let p = px(img, c, y, x) as f32;
                let want = (p / 255.0 - mean[c]) / std[c];
                let got = v[k * IMAGE_BYTES + c * 1024 + y * 32 + x];
                assert!((got - want).abs() < 1e-6, "img {i} c{c} ({y},{x}): {got} vs {want}");
            }
        }
    }
    // CIFAR-100 uses its own statistics.
    let c100 = Dataset::shared_cifar100_sample(true).unwrap();
    let t = c100.decode(&[0], None).unwrap().to_vec().unwrap();
    let want = (px(c100.image(0).unwrap(), 2, 10, 10) as f32 / 255.0 - 0.4409) / 0.2762;
    assert!((t[2 * 1024 + 10 * 32 + 10] - want).abs() < 1e-6);
}

#[test]
fn bad_loader_arguments_are_errors() {
    let d = Dataset::synthetic(4, 2, 0);
    assert!(DataLoader::new(&d, 0).is_err());
    let empty = d.take(0);
    assert_eq!(DataLoader::train(&empty, 8).unwrap().epoch(&mut Rng::seed(0)).count(), 0);
    assert!(d.decode(&[0, 1], Some(&[AugParams::IDENTITY])).is_err());
}
