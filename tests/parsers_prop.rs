//! Property tests of every parser a user reaches (NB201 strings, model and space names, TOML
//! configs and `--set`, candidate files, `.pth`/pickle, safetensors, CIFAR files, counts, data
//! sources, shards, seeds, command lines, correlate's CSV and scores, arch.json): arbitrary input, and valid input truncated or with bytes flipped, never
//! panics (a panic fails the property), and every error names the input: the file, or the
//! offending string. Case counts are fixed so the whole file stays within seconds.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use proptest::prelude::*;

use kdscout::data::DataSource;
use kdscout::search::config::{builder, SearchConfig};
use kdscout::search::{space_by_id, Count, Shard};
use kdscout::weights::pth::read_state_dict;

mod common;
use common::TempDir;

/// Cases per property in `cargo test` (about 10 s for the file); PROPTEST_CASES=N runs more.
const CASES: u32 = 1024;

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// Whether `msg` names `input` (as written, or as Rust escapes it inside quotes).
fn names(msg: &str, input: &str) -> bool {
    let input = input.trim();
    let dbg = format!("{input:?}");
    msg.contains(input) || msg.contains(&dbg[1..dbg.len() - 1])
}

/// `valid` cut at `cut` (a char boundary at or before it) with the characters at `flips`
/// replaced by `with`.
fn mutate_str(valid: &str, cut: usize, flips: &[(usize, char)]) -> String {
    let mut chars: Vec<char> = valid.chars().collect();
    for &(at, c) in flips {
        if !chars.is_empty() {
            let i = at % chars.len();
            chars[i] = c;
        }
    }
    chars.truncate(cut.min(chars.len()));
    chars.into_iter().collect()
}

/// A change to valid bytes: truncated to `cut` with the bytes at `flips` xored, `token`
/// inserted at a position, or a small pickle int (`K` and its byte, e.g. a size or stride of a
/// tensor) replaced by `token` (huge numbers in a pickle's or a header's encodings).
#[derive(Clone, Debug)]
enum Mutation {
    CutFlip(usize, Vec<(usize, u8)>),
    Insert(usize, &'static [u8]),
    ReplaceInt(usize, &'static [u8]),
}

impl Mutation {
    fn apply(&self, valid: &[u8]) -> Vec<u8> {
        let mut b = valid.to_vec();
        match self {
            Mutation::CutFlip(cut, flips) => {
                for &(at, x) in flips {
                    if !b.is_empty() {
                        let i = at % b.len();
                        b[i] ^= x.max(1);
                    }
                }
                b.truncate((*cut).min(b.len()));
            }
            Mutation::Insert(at, token) => {
                let i = at % (b.len() + 1);
                b.splice(i..i, token.iter().copied());
            }
            Mutation::ReplaceInt(k, token) => {
                let ints: Vec<usize> = (0..b.len().saturating_sub(1)).filter(|&i| b[i] == b'K').collect();
                if !ints.is_empty() {
                    let i = ints[k % ints.len()];
                    b.splice(i..i + 2, token.iter().copied());
                }
            }
        }
        b
    }
}

/// Encodings of extreme numbers: pickle LONG1 (i64::MAX, 2^62, -1), BININT, and as text.
const TOKENS: &[&[u8]] = &[
    b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40",
    b"\x8a\x01\xff",
    b"J\xff\xff\xff\x7f",
    b"18446744073709551615",
    b"9223372036854775807",
    b"-1",
    b"4294967296",
];

fn mutation(len: usize) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (cut(len), flips_bytes()).prop_map(|(c, f)| Mutation::CutFlip(c, f)),
        1 => (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(at, t)| Mutation::Insert(at, t)),
        1 => (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(k, t)| Mutation::ReplaceInt(k, t)),
    ]
}

/// Cut points biased to keep most of the input (len+ means "no cut").
fn cut(len: usize) -> impl Strategy<Value = usize> {
    prop_oneof![Just(usize::MAX), 0..len + 1]
}

fn flips_str() -> impl Strategy<Value = Vec<(usize, char)>> {
    prop::collection::vec(
        (
            any::<usize>(),
            prop_oneof![
                any::<char>(),
                prop::sample::select(vec!['|', '~', '+', '_', '0', '9', '-', '.', '=', '"', '[', ' '])
            ],
        ),
        0..4,
    )
}

fn flips_bytes() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>()), 0..6)
}

/// Strings that are mostly near-valid: a valid example mutated, or arbitrary text.
fn near(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    let long = valid.iter().map(|v| v.chars().count()).max().unwrap_or(0);
    prop_oneof![
        3 => (prop::sample::select(valid), cut(long), flips_str()).prop_map(|(v, c, f)| mutate_str(v, c, &f)),
        1 => any::<String>(),
        1 => "[a-z_0-9|~+:/.=-]{0,40}",
    ]
}

const COMMANDS: &[&str] =
    &["demo", "data", "models", "import-weights", "score", "correlate", "search", "merge", "train", "distill", "nope"];

const FLAGS: &[&str] = &[
    "--out",
    "--seed",
    "--shard",
    "--space",
    "--teacher",
    "--proxy",
    "--proxies",
    "--max-params",
    "--evaluations",
    "--algo",
    "--data",
    "--batch",
    "--set",
    "--config",
    "--resume",
    "--json",
    "--duplicates",
    "--allow-partial",
    "--student",
    "--candidates",
    "--model",
    "--classes",
    "--top",
    "--key",
    "--column",
    "--help",
    "--version",
    "-h",
];

/// The command-line definition itself is consistent (clap checks it only in debug builds).
#[test]
fn command_line_definition() {
    use clap::CommandFactory;
    kdscout::cli::Cli::command().debug_assert();
}

const NB201: &[&str] = &[
    "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|none~1|avg_pool_3x3~2|",
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
];

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn nb201_strings(s in near(NB201)) {
        if let Err(e) = kdscout::models::Nb201Genotype::parse(&s) {
            let msg = e.to_string();
            prop_assert!(names(&msg, &s), "{msg}");
        }
    }

    #[test]
    fn model_names(s in near(&[
        "resnet8", "resnet32x4", "resnet_d137", "resnet_w16-16-32-64_d3-3-3", "vit_e192_d12_h3_r4",
        "vit_e192_h3-3-4_r4-4-3.5", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1",
        "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    ])) {
        // Width and ViT names parse into any size: parse them, build only the rest (small nets).
        let r = if s.starts_with("resnet_w") {
            kdscout::models::parse_resnet_wd(&s).map(|_| ())
        } else if s.starts_with("vit_") {
            kdscout::models::VitConfig::parse(&s).map(|_| ())
        } else {
            kdscout::models::build(&s, 10, &mut kdscout::rng::Rng::seed(0), kdscout::Device::Cpu).map(|_| ())
        };
        if let Err(e) = r {
            let msg = e.to_string();
            prop_assert!(names(&msg, &s), "{msg}");
        }
    }

    #[test]
    fn space_names(s in near(&["nb201", "resnet_d", "resnet", "vit"])) {
        if let Err(e) = space_by_id(&s) {
            let msg = e.to_string();
            prop_assert!(names(&msg, &s), "{msg}");
        }
    }

    #[test]
    fn counts(s in near(&["1M", "1.5M", "300k", "2G", "1_000_000", "0", "-5", "1e3"])) {
        if let Err(e) = Count::parse(&s, "--max-params") {
            let msg = e.to_string();
            prop_assert!(names(&msg, &s) && msg.contains("--max-params"), "{msg}");
        }
    }

    #[test]
    fn seeds(s in near(&["0", "18446744073709551615", "18446744073709551616", "-1", "1.5", " 7 "])) {
        if let Err(msg) = kdscout::cli::parse_seed(&s) {
            prop_assert!(names(&msg, &s), "{msg}");
        }
    }

    /// Whole command lines (flags of every command with arbitrary values) parse or give clap's
    /// usage error; they are parsed only, never run.
    #[test]
    fn command_lines(cmd in prop::sample::select(COMMANDS), args in prop::collection::vec(prop_oneof![
        2 => prop::sample::select(FLAGS).prop_map(str::to_string),
        1 => near(&["0", "-1", "1M", "0/2", "nb201", "resnet8", "x=1", ""]),
    ], 0..8)) {
        use clap::Parser;
        let argv = ["kdscout", cmd].into_iter().map(str::to_string).chain(args);
        if let Err(e) = kdscout::cli::Cli::try_parse_from(argv) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn data_sources(s in near(&["builtin", "synthetic", "synthetic:100", "cifar10:/data/x", "cifar100:d"])) {
        if let Err(e) = DataSource::from_str(&s) {
            let msg = e.to_string();
            prop_assert!(names(&msg, &s), "{msg}");
        }
    }

    #[test]
    fn shards(s in near(&["0/4", "3/4", "1/2", " 0 / 1 "])) {
        if let Err(e) = Shard::parse(&s) {
            let msg = e.to_string();
            prop_assert!(names(&msg, &s) && msg.contains("--shard"), "{msg}");
        }
    }

    #[test]
    fn set_assignments(s in near(&[
        "search.population=50", "seed = 3", "constraints.max_params=\"1M\"", "algo=random",
        "shard.count=4", "batch_size=[1,2]", "data=synthetic:3",
    ])) {
        let mut b = builder(&SearchConfig::default()).unwrap();
        match b.set(&s) {
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("--set") && names(&msg, s.split('=').next().unwrap()), "{msg}");
            }
            Ok(()) => {
                // The key was known; a value of the wrong type names that key.
                if let Err(e) = b.build() {
                    let msg = e.to_string();
                    let key = s.split('=').next().unwrap().trim();
                    let last = key.rsplit('.').next().unwrap();
                    prop_assert!(msg.contains(last), "{msg} (from {s:?})");
                }
            }
        }
    }
}

/// A valid config file, as a run writes it.
fn valid_toml() -> &'static str {
    static TOML: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOML.get_or_init(|| SearchConfig { space: "resnet_d".into(), ..Default::default() }.to_toml().unwrap())
}

/// One temp folder for the file-reading properties (a file per case, overwritten).
fn scratch() -> &'static TempDir {
    static DIR: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| TempDir::new("parsers-prop"))
}

/// Writes `bytes` to a file named for `what` in the scratch folder (unique per thread).
fn file(what: &str, bytes: &[u8]) -> PathBuf {
    let name = format!("{what}-{:?}", std::thread::current().id()).replace(['(', ')'], "");
    scratch().write(&name, bytes)
}

fn named_path(msg: &str, path: &Path) -> bool {
    msg.contains(&path.display().to_string())
}

fn bytes_near(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    prop_oneof![
        4 => mutation(len).prop_map(move |m| m.apply(&valid)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn toml_config_files(text in prop_oneof![
        3 => (cut(2000), flips_str()).prop_map(|(c, f)| mutate_str(valid_toml(), c, &f)),
        1 => any::<String>(),
    ]) {
        let path = file("config.toml", text.as_bytes());
        let mut b = builder(&SearchConfig::default()).unwrap();
        match b.merge_file(&path) {
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(named_path(&msg, &path), "{msg}");
            }
            // Every key was known; a bad value names its key (checked by set_assignments).
            Ok(()) => { let _ = b.build(); }
        }
        // The same text as a run's stored config (read on --resume and by merge).
        if let Err(e) = kdscout::search::config::parse_file(&path) {
            let msg = e.to_string();
            prop_assert!(named_path(&msg, &path), "{msg}");
        }
    }

    #[test]
    fn candidate_files(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "[ -~\n#|]{0,200}".prop_map(String::into_bytes),
    ]) {
        let path = file("cands.txt", &bytes);
        match kdscout::cli::score::read_candidates(&path) {
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(named_path(&msg, &path), "{msg}");
            }
            Ok(names) => prop_assert!(names.iter().all(|n| !n.is_empty() && !n.contains('#'))),
        }
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    // `correlate`'s truth CSV and scores file, and `models --arch`'s arch.json.
    #[test]
    fn correlate_inputs(csv in near(&["arch,acc\nresnet8,70.5\n\"|none~0|+|x|\",60\n"]),
                        jsonl in near(&["{\"arch\":\"a\",\"scores\":{\"p\":{\"score\":1.5,\"higher_is_better\":false}}}\n"]),
                        arch in near(&["{\"space\":\"nb201\",\"arch\":\"resnet8\",\"genome\":[1],\"num_classes\":10}"])) {
        use kdscout::cli::correlate::{read_scores, read_truth, Duplicates};
        let path = file("truth.csv", csv.as_bytes());
        if let Err(e) = read_truth(&path, "arch", "acc") {
            let msg = e.to_string();
            prop_assert!(named_path(&msg, &path), "{msg}");
        }
        let path = file("scores.jsonl", jsonl.as_bytes());
        if let Err(e) = read_scores(&path, Duplicates::Error) {
            let msg = e.to_string();
            prop_assert!(named_path(&msg, &path), "{msg}");
        }
        let path = file("arch.json", arch.as_bytes());
        if let Err(e) = kdscout::search::run::ArchFile::load(&path) {
            let msg = e.to_string();
            prop_assert!(named_path(&msg, &path), "{msg}");
        }
    }
}

fn cifar10_valid() -> Vec<u8> {
    let mut b = vec![7u8; 2 * kdscout::data::CIFAR10_RECORD_BYTES];
    b[0] = 3;
    b
}

fn cifar100_valid() -> Vec<u8> {
    let mut b = vec![7u8; 2 * kdscout::data::CIFAR100_RECORD_BYTES];
    (b[0], b[1]) = (19, 99);
    b
}

fn safetensors_valid() -> Vec<u8> {
    let t = |v: Vec<f32>, dims: Vec<usize>| kdscout::Tensor::from_vec(v, dims, kdscout::Device::Cpu).unwrap();
    let tensors = vec![
        ("a.weight".to_string(), t(vec![1.0, 2.0, 3.0, 4.0], vec![2, 2])),
        ("b".to_string(), t(vec![5.0], vec![1])),
    ];
    let meta = kdscout::weights::model_metadata("resnet8", 10);
    kdscout::weights::to_safetensors_bytes(&tensors, &meta).unwrap()
}

/// resnet8's weights as `kdscout import-weights` or `train` would write them.
fn resnet8_weights() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let net = kdscout::models::build("resnet8", 10, &mut kdscout::rng::Rng::seed(0), kdscout::Device::Cpu).unwrap();
        let meta = kdscout::weights::model_metadata("resnet8", 10);
        kdscout::weights::to_safetensors_bytes(&net.state_dict(), &meta).unwrap()
    })
}

/// `valid` safetensors with its JSON header mutated and the length prefix set to the new
/// header's, so the damage reaches the names, dtypes, shapes and offsets.
fn header_mutated(valid: &[u8], m: &Mutation) -> Vec<u8> {
    let n = u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let header = m.apply(&valid[8..8 + n]);
    [&(header.len() as u64).to_le_bytes()[..], &header, &valid[8 + n..]].concat()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth").join(name)).unwrap()
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn cifar_files(b10 in bytes_near(cifar10_valid()), b100 in bytes_near(cifar100_valid()), fine in any::<bool>()) {
        if let Err(e) = kdscout::data::Dataset::parse_cifar10(&b10, "in/data_batch_1.bin", "b") {
            let msg = e.to_string();
            prop_assert!(msg.contains("in/data_batch_1.bin"), "{msg}");
        }
        if let Err(e) = kdscout::data::Dataset::parse_cifar100(&b100, fine, "in/train.bin", "t") {
            let msg = e.to_string();
            prop_assert!(msg.contains("in/train.bin"), "{msg}");
        }
    }

    #[test]
    fn safetensors_bytes(b in bytes_near(safetensors_valid())) {
        if let Err(e) = kdscout::weights::from_safetensors_bytes(&b, "in/w.safetensors") {
            let msg = e.to_string();
            prop_assert!(msg.contains("in/w.safetensors"), "{msg}");
        }
    }

    /// A model file loaded into its network (`--teacher-weights`, `distill`, `models`): names,
    /// shapes and offsets of the header changed.
    #[test]
    fn model_weight_files(m in mutation(4096), header in any::<bool>()) {
        let bytes = if header { header_mutated(resnet8_weights(), &m) } else { m.apply(resnet8_weights()) };
        let path = file("resnet8.safetensors", &bytes);
        let net = kdscout::models::build("resnet8", 10, &mut kdscout::rng::Rng::seed(1), kdscout::Device::Cpu).unwrap();
        if let Err(e) = kdscout::distill::checkpoint::load_teacher_weights(net.as_ref(), &path) {
            let msg = e.to_string();
            prop_assert!(named_path(&msg, &path), "{msg}");
        }
    }

    #[test]
    fn pickles(b in bytes_near(fixture_pickle())) {
        // Errors are plain text here; the .pth reader adds the file (checked below).
        let _ = kdscout::weights::pickle::load(&b);
    }

    #[test]
    fn pth_files(b in prop_oneof![bytes_near(fixture("dtypes.pth")), bytes_near(fixture("legacy.pth"))]) {
        let path = file("w.pth", &b);
        if let Err(e) = read_state_dict(&path) {
            let msg = e.to_string();
            prop_assert!(named_path(&msg, &path), "{msg}");
        }
    }
}

/// The entries of a torch.save file (name, bytes), in archive order.
fn fixture_entries() -> &'static [(String, Vec<u8>)] {
    use std::io::Read;
    static ENTRIES: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    ENTRIES.get_or_init(|| {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(fixture("dtypes.pth"))).unwrap();
        (0..zip.len())
            .map(|i| {
                let mut f = zip.by_index(i).unwrap();
                let mut out = Vec::new();
                f.read_to_end(&mut out).unwrap();
                (f.name().unwrap().into_owned(), out)
            })
            .collect()
    })
}

/// The data.pkl of a torch.save file (the pickle the .pth reader parses).
fn fixture_pickle() -> Vec<u8> {
    fixture_entries().iter().find(|(n, _)| n.ends_with("data.pkl")).unwrap().1.clone()
}

/// The torch.save file with entry `target` replaced by `edit` of it, the archive rebuilt with
/// valid checksums so that the damage reaches the pickle and storage readers.
fn rezip(target: usize, edit: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
    use std::io::Write;
    let mut edit = Some(edit);
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (i, (name, data)) in fixture_entries().iter().enumerate() {
        w.start_file(name.as_str(), opts).unwrap();
        let data = if i == target { edit.take().unwrap()(data) } else { data.clone() };
        w.write_all(&data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Index of data.pkl among the fixture's entries.
fn pickle_entry() -> usize {
    fixture_entries().iter().position(|(n, _)| n.ends_with("data.pkl")).unwrap()
}

/// The fixture with entry `entry` (the pickle when None) mutated.
fn rezipped(entry: Option<usize>, m: &Mutation) -> Vec<u8> {
    let target = entry.map_or_else(pickle_entry, |e| e % fixture_entries().len());
    rezip(target, |data| m.apply(data))
}

/// Regression: sizes from a hostile pickle overflowed `usize` in the .pth reader (a panic, or in
/// release a wrapped count) or asked for any amount of memory; now errors naming the file.
#[test]
fn pth_with_huge_sizes_is_an_error() {
    // The f64 tensor of the fixture: shape (4, 6), strides (6, 1), as pickle opcodes.
    let view = b"K\x04K\x06\x86q\x08K\x06K\x01\x86";
    let long = |v: i64| [&b"\x8a\x08"[..], &v.to_le_bytes()].concat();
    let with = |new: Vec<u8>| {
        rezip(pickle_entry(), |pkl| {
            let at = pkl.windows(view.len()).position(|w| w == view).expect("fixture view");
            [&pkl[..at], &new, &pkl[at + view.len()..]].concat()
        })
    };
    let cases = [
        // 2^62 x 4 elements: the element count overflows.
        ([long(1 << 62), b"K\x04\x86q\x08K\x04K\x01\x86".to_vec()].concat(), "more than 268435456 elements"),
        // 2^20 x 2^9 elements of one stored value (stride 0): half a billion floats.
        ([long(1 << 20), b"M\x00\x02\x86q\x08K\x00K\x00\x86".to_vec()].concat(), "more than 268435456 elements"),
        // Stride 2^63 - 1: the address of the last element overflows.
        ([b"K\x04K\x06\x86q\x08".to_vec(), long(i64::MAX), b"K\x01\x86".to_vec()].concat(), "beyond any storage"),
    ];
    for (new, want) in cases {
        let path = file("huge.pth", &with(new));
        let msg = read_state_dict(&path).expect_err("a corrupt size").to_string();
        assert!(named_path(&msg, &path) && msg.contains(want), "{msg}");
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn pth_entries(entry in prop_oneof![Just(None), any::<usize>().prop_map(Some)], m in mutation(4096)) {
        let path = file("e.pth", &rezipped(entry, &m));
        if let Err(e) = read_state_dict(&path) {
            let msg = e.to_string();
            prop_assert!(named_path(&msg, &path), "{msg}");
        }
    }
}
