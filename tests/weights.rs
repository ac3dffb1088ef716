//! Weights: safetensors save/load round trips, dtype conversion, atomic writes and clear errors;
//! PyTorch `.pth` import checked against fixtures written by torch (tests/fixtures/pth, made by
//! make_fixtures.py there; these tests do not need torch).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kdscout::models::{self, Network};
use kdscout::nn as knn;
use kdscout::rng::Rng;
use kdscout::weights::{self, pth};
use kdscout::{Device, Tensor};
use serde_json::Value as Json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth").join(name)
}

fn expected(name: &str) -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// A fresh temp folder for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kdscout-weights-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn err_text<T: std::fmt::Debug>(r: kdscout::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

fn build(name: &str, classes: usize, seed: u64) -> Box<dyn Network> {
    models::build(name, classes, &mut Rng::seed(seed), Device::Cpu).unwrap()
}

/// The safetensors header as JSON, parsed here by hand (independent of the reader under test).
fn header(path: &Path) -> Json {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

// ---------------------------------------------------------------- safetensors

#[test]
fn module_round_trip_is_exact_and_keeps_metadata() {
    let t = TempDir::new("roundtrip");
    let mut net = build("resnet8", 10, 1);
    // Move the BN running statistics and counters away from their initial values.
    knn::train(net.as_mut());
    let x = Tensor::randn([4, 3, 32, 32], 0.0, 1.0, &mut Rng::seed(5), Device::Cpu).unwrap();
    net.forward(&x).unwrap();
    net.forward(&x).unwrap();
    let path = t.join("r8.safetensors");
    weights::save_module(&path, net.as_ref(), "resnet8", 10).unwrap();

    let other = build("resnet8", 10, 2);
    assert_ne!(other.state_dict()[0].1.to_vec().unwrap(), net.state_dict()[0].1.to_vec().unwrap());
    let report = weights::load_into(other.as_ref(), &path, true).unwrap();
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    let (a, b) = (net.state_dict(), other.state_dict());
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(ta.dims(), tb.dims(), "{na}");
        assert_eq!(ta.to_vec().unwrap(), tb.to_vec().unwrap(), "{na}");
    }
    assert_eq!(b.iter().find(|(n, _)| n == "bn1.num_batches_tracked").unwrap().1.item().unwrap(), 2.0);

    let ckpt = weights::load(&path).unwrap();
    assert_eq!(ckpt.model(), Some("resnet8"));
    assert_eq!(ckpt.metadata["num_classes"], "10");
    assert_eq!(ckpt.metadata["kdscout_version"], env!("CARGO_PKG_VERSION"));
    // The header as PyTorch tools see it: f32 weights, int64 counters, the names of the state dict.
    let h = header(&path);
    assert_eq!(h["conv1.weight"]["dtype"], "F32");
    assert_eq!(h["conv1.weight"]["shape"], serde_json::json!([16, 3, 3, 3]));
    assert_eq!(h["layer1.0.bn1.num_batches_tracked"]["dtype"], "I64");
    assert_eq!(h["layer1.0.bn1.num_batches_tracked"]["shape"], serde_json::json!([]));
    assert_eq!(h["__metadata__"]["format"], "pt");
    assert_eq!(h.as_object().unwrap().len(), a.len() + 1);
}

#[test]
fn save_is_atomic_and_reports_bad_folders() {
    let t = TempDir::new("atomic");
    let path = t.join("w.safetensors");
    let a = vec![("w".to_string(), Tensor::from_vec(vec![1.0, 2.0], [2], Device::Cpu).unwrap())];
    weights::save(&path, &a, &BTreeMap::new()).unwrap();
    let b = vec![("w".to_string(), Tensor::from_vec(vec![3.0, 4.0, 5.0], [3], Device::Cpu).unwrap())];
    weights::save(&path, &b, &BTreeMap::new()).unwrap();
    assert_eq!(weights::load(&path).unwrap().tensors[0].1.to_vec().unwrap(), vec![3.0, 4.0, 5.0]);
    // Only the final file remains: no temp file is left behind.
    let names: Vec<String> =
        std::fs::read_dir(&t.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["w.safetensors".to_string()]);

    let e = err_text(weights::save(t.join("no/such/dir/w.safetensors"), &a, &BTreeMap::new()));
    assert!(e.contains("no/such/dir") && e.contains("does not exist"), "{e}");
}

#[test]
fn missing_truncated_and_foreign_files_are_clear_errors() {
    let t = TempDir::new("corrupt");
    let e = err_text(weights::load(t.join("absent.safetensors")));
    assert!(e.contains("absent.safetensors") && e.contains("not found"), "{e}");

    let good = t.join("good.safetensors");
    weights::save_module(&good, build("resnet8", 10, 0).as_ref(), "resnet8", 10).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    for (name, data) in [
        ("truncated.safetensors", bytes[..bytes.len() - 100].to_vec()),
        ("header_cut.safetensors", bytes[..20].to_vec()),
        ("empty.safetensors", Vec::new()),
        ("text.safetensors", b"hello, not a checkpoint".to_vec()),
    ] {
        let p = t.join(name);
        std::fs::write(&p, data).unwrap();
        let e = err_text(weights::load(&p));
        assert!(e.contains(name) && e.contains("not a valid safetensors file"), "{e}");
    }

    // A checkpoint of another model: every problem named, and where the file came from.
    let e = err_text(weights::load_into(build("resnet14", 10, 0).as_ref(), &good, true));
    assert!(e.contains("good.safetensors") && e.contains("saved from model resnet8"), "{e}");
    assert!(e.contains("layer1.1.conv1.weight") && e.contains("layer3.1.bn2.running_var"), "{e}");
}

/// Writes a safetensors file by hand: header JSON + raw little-endian bytes.
fn write_raw_safetensors(path: &Path, entries: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&Json::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

#[test]
fn half_bfloat_double_and_integer_tensors_load_as_f32() {
    let t = TempDir::new("dtypes");
    let p = t.join("mixed.safetensors");
    let f16: Vec<u8> = [1.5f32, -0.25].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let bf16: Vec<u8> = [3.0f32, -96.0].iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
    let f64b: Vec<u8> = [0.1f64, 1e10].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i64b: Vec<u8> = 1234i64.to_le_bytes().to_vec();
    write_raw_safetensors(
        &p,
        &[
            ("h", "F16", vec![2], f16),
            ("b", "BF16", vec![1, 2], bf16),
            ("d", "F64", vec![2], f64b),
            ("n", "I64", vec![], i64b),
        ],
    );
    let ck = weights::load(&p).unwrap();
    let get = |n: &str| ck.tensors.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(get("h").to_vec().unwrap(), vec![1.5, -0.25]);
    assert_eq!(get("b").to_vec().unwrap(), vec![3.0, -96.0]);
    assert_eq!(get("b").dims(), &[1, 2]);
    assert_eq!(get("d").to_vec().unwrap(), vec![0.1f64 as f32, 1e10f64 as f32]);
    assert_eq!(get("n").to_vec().unwrap(), vec![1234.0]);
    assert!(get("n").dims().is_empty());
    assert!(ck.metadata.is_empty());

    let bad = t.join("complex.safetensors");
    write_raw_safetensors(&bad, &[("c", "C64", vec![1], vec![0; 8])]);
    let e = err_text(weights::load(&bad));
    assert!(e.contains("complex.safetensors") && e.contains("tensor c") && e.contains("C64"), "{e}");
}

// ---------------------------------------------------------------- PyTorch .pth

#[test]
fn pth_resnet8_matches_torch_checksums_and_logits() {
    let exp = expected("resnet8_c10.expected.json");
    let imp = pth::read_state_dict(fixture("resnet8_c10.pth")).unwrap();
    assert_eq!(imp.location, "under \"state_dict\"");
    assert_eq!(imp.stripped, imp.tensors.len());
    assert_eq!(imp.ignored, vec!["epoch", "best_acc", "optimizer"]);
    let tensors = exp["tensors"].as_object().unwrap();
    assert_eq!(imp.tensors.len(), tensors.len());
    // Same names in the same order as torch's state_dict().
    let names: Vec<&str> = imp.tensors.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = exp["names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(names, want);
    for (name, t) in &imp.tensors {
        let e = &tensors[name];
        let shape: Vec<usize> = e["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        let v = t.to_vec().unwrap();
        let sum: f64 = v.iter().map(|&x| x as f64).sum();
        let abs: f64 = v.iter().map(|&x| (x as f64).abs()).sum();
        let (es, ea) = (e["sum"].as_f64().unwrap(), e["abs_sum"].as_f64().unwrap());
        // Values are bit-exact f32, so only summation order differs.
        assert!((sum - es).abs() <= 1e-9 * ea.max(1.0), "{name}: sum {sum} vs {es}");
        assert!((abs - ea).abs() <= 1e-9 * ea.max(1.0), "{name}: abs sum {abs} vs {ea}");
        for (i, f) in e["first"].as_array().unwrap().iter().enumerate() {
            // The JSON holds the exact f32 as a decimal; rounding the parsed f64 back recovers it.
            assert_eq!(v[i], f.as_f64().unwrap() as f32, "{name}[{i}]");
        }
    }
    assert_eq!(imp.dtypes["fc.weight"], "float");
    assert_eq!(imp.dtypes["bn1.num_batches_tracked"], "long");

    // Loaded into the zoo's resnet8, the eval-mode forward reproduces torch's logits.
    let mut net = build("resnet8", 10, 0);
    net.load_state_dict(&imp.tensors, true).unwrap();
    knn::eval(net.as_mut());
    let n = 2 * 3 * 32 * 32;
    let x: Vec<f32> = (0..n).map(|i| (0.01f32 * i as f32).sin()).collect();
    let x = Tensor::from_vec(x, [2, 3, 32, 32], Device::Cpu).unwrap();
    let logits = net.forward(&x).unwrap().to_vec().unwrap();
    let want: Vec<f64> = exp["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    assert_eq!(logits.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in logits.iter().zip(&want).enumerate() {
        assert!((g as f64 - w).abs() <= 1e-4 * scale.max(1.0), "logit {i}: {g} vs torch {w}");
    }
}

#[test]
fn pth_every_storage_type_strides_and_shared_storage() {
    let exp = expected("dtypes.expected.json");
    let imp = pth::read_state_dict(fixture("dtypes.pth")).unwrap();
    assert_eq!(imp.location, "at the top level");
    assert_eq!(imp.stripped, 0);
    let exp = exp.as_object().unwrap();
    assert_eq!(imp.tensors.len(), exp.len());
    for (name, t) in &imp.tensors {
        let e = &exp[name];
        let shape: Vec<usize> = e["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        let want: Vec<f32> = e["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(t.to_vec().unwrap(), want, "{name}");
    }
    let dt: BTreeMap<&str, &str> = imp.dtypes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(dt["f16"], "half");
    assert_eq!(dt["bf16"], "bfloat16");
    assert_eq!(dt["i8"], "char");
}

#[test]
fn pth_mismatch_reports_every_missing_extra_and_misshaped_name() {
    let imp = pth::read_state_dict(fixture("mismatch.pth")).unwrap();
    assert_eq!(imp.location, "under \"model\"");
    assert_eq!(imp.ignored, vec!["epoch"]);
    let net = build("resnet8", 10, 0);
    let e = net.load_state_dict(&imp.tensors, true).unwrap_err().to_string();
    assert!(e.contains("fc.weight (expected [10, 64], got [5, 64])"), "{e}");
    assert!(e.contains("unexpected: fc.extra"), "{e}");
    let missing: Vec<&str> = e.split("missing: ").nth(1).unwrap().split(';').next().unwrap().split(", ").collect();
    let dropped: Vec<String> = net
        .state_dict()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("layer2.") || n.starts_with("layer3."))
        .collect();
    assert_eq!(missing, dropped, "{e}");
}

#[test]
fn pth_legacy_non_zip_and_corrupt_files_are_clear_errors() {
    let e = err_text(pth::read_state_dict(fixture("legacy.pth")));
    assert!(e.contains("legacy.pth") && e.contains("legacy (pre-1.6, non-zip)"), "{e}");
    assert!(e.contains("python -c \"import torch; torch.save(torch.load('"), "{e}");

    let t = TempDir::new("pth");
    let text = t.join("notes.pth");
    std::fs::write(&text, "just text").unwrap();
    let e = err_text(pth::read_state_dict(&text));
    assert!(e.contains("notes.pth") && e.contains("not a PyTorch checkpoint"), "{e}");
    let e = err_text(pth::read_state_dict(t.join("absent.pth")));
    assert!(e.contains("absent.pth") && e.contains("not found"), "{e}");

    // Truncated at several points: always an error naming the file, never a panic.
    let bytes = std::fs::read(fixture("resnet8_c10.pth")).unwrap();
    for cut in [10, 100, 1000, bytes.len() / 2, bytes.len() - 30] {
        let p = t.join("cut.pth");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = err_text(pth::read_state_dict(&p));
        assert!(e.contains("cut.pth"), "cut at {cut}: {e}");
    }
    // Bytes flipped anywhere (zip headers, pickle, storages): an error or a result, never a panic.
    let small = std::fs::read(fixture("dtypes.pth")).unwrap();
    for i in 0..64 {
        let mut c = small.clone();
        c[i * small.len() / 64] ^= 0x5a;
        let p = t.join("flip.pth");
        std::fs::write(&p, &c).unwrap();
        let _ = pth::read_state_dict(&p);
    }
}
