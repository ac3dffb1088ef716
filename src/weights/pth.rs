//! PyTorch checkpoints (`torch.save`, zip format of torch >= 1.6): a zip holding
//! `<archive>/data.pkl` (the pickled object, tensors as persistent-id storages) and
//! `<archive>/data/<key>` (the raw storages). [`read_state_dict`] finds the weights in it: at
//! the top level or under `model` / `state_dict` / `net` / `model_state_dict`, with `module.`
//! prefixes (DataParallel) stripped and non-tensor entries (epoch, optimizer, ...) ignored.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use super::pickle::{self, TensorRef, Value};
use super::{from_safetensors_bytes, StateDict};
use crate::{Device, Error, Result, Tensor};

/// Keys under which training scripts keep the weights, in the order they are tried.
pub const STATE_DICT_KEYS: [&str; 4] = ["model", "state_dict", "net", "model_state_dict"];

/// The one-line conversion of a legacy (pre-1.6, non-zip) file; new torch saves zip by default.
pub fn legacy_conversion(input: &str) -> String {
    let out = match input.strip_suffix(".pth") {
        Some(stem) => format!("{stem}_zip.pth"),
        None => format!("{input}.zip.pth"),
    };
    format!("python -c \"import torch; torch.save(torch.load('{input}', map_location='cpu'), '{out}')\"")
}

/// What [`read_state_dict`] found, and how.
#[derive(Clone, Debug)]
pub struct Imported {
    /// Weights with prefixes stripped, converted to f32, in the file's order.
    pub tensors: StateDict,
    /// Where the weights were: "at the top level", `under "state_dict"`, "(safetensors file)".
    pub location: String,
    /// How many names had a `module.` prefix removed.
    pub stripped: usize,
    /// Entries that are not tensors and were skipped (`epoch`, `optimizer`, ...), top level and
    /// inside the state dict.
    pub ignored: Vec<String>,
    /// Source element type per tensor name (e.g. "float16"), for reports.
    pub dtypes: HashMap<String, String>,
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// Elements one imported tensor may have (1 GiB as f32; the zoo's largest has a few million):
/// a larger count is a corrupt shape, refused before anything is allocated for it.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// Reads the weights of a PyTorch zip checkpoint, or of a safetensors file (told apart by their
/// first bytes), naming the file and the fix in every error.
pub fn read_state_dict(path: impl AsRef<Path>) -> Result<Imported> {
    let path = path.as_ref();
    let show = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        let detail = match e.kind() {
            std::io::ErrorKind::NotFound => "checkpoint file not found".to_string(),
            _ => format!("cannot read checkpoint: {e}"),
        };
        Error::data(&show, detail)
    })?;
    if bytes.starts_with(ZIP_MAGIC) {
        return read_zip(&bytes, &show);
    }
    if looks_like_safetensors(&bytes) {
        let ckpt = from_safetensors_bytes(&bytes, &show)?;
        let (tensors, stripped) = strip_prefixes(ckpt.tensors);
        return Ok(Imported {
            tensors,
            location: "(safetensors file)".into(),
            stripped,
            ignored: Vec::new(),
            dtypes: HashMap::new(),
        });
    }
    if bytes.first() == Some(&0x80) {
        return Err(Error::data(
            &show,
            format!(
                "this is a legacy (pre-1.6, non-zip) PyTorch file; convert it once with torch installed: {}",
                legacy_conversion(&show)
            ),
        ));
    }
    Err(Error::data(
        &show,
        format!(
            "not a PyTorch checkpoint: expected a torch.save zip file (starting with PK) or a safetensors file, found {}",
            describe_start(&bytes)
        ),
    ))
}

fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "an empty file".into();
    }
    let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    format!("{} bytes starting with {head}", bytes.len())
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 9
        && bytes[8] == b'{'
        && u64::from_le_bytes(bytes[..8].try_into().unwrap()).saturating_add(8) <= bytes.len() as u64
}

/// A name without its leading `module.` prefixes (DataParallel / DistributedDataParallel).
fn strip_module(name: &str) -> &str {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("module.") {
        n = rest;
    }
    n
}

/// [`strip_module`] on every name; also returns how many names changed.
fn strip_prefixes(tensors: StateDict) -> (StateDict, usize) {
    let stripped = tensors.iter().filter(|(n, _)| strip_module(n).len() != n.len()).count();
    (tensors.into_iter().map(|(n, t)| (strip_module(&n).to_string(), t)).collect(), stripped)
}

struct Archive<'a> {
    zip: zip::ZipArchive<std::io::Cursor<&'a [u8]>>,
    prefix: String,
    big_endian: bool,
    show: &'a str,
}

impl Archive<'_> {
    fn entry(&mut self, rel: &str) -> Result<Vec<u8>> {
        let name = format!("{}{rel}", self.prefix);
        let mut f = self.zip.by_name(&name).map_err(|e| {
            Error::data(
                self.show,
                format!("the archive has no readable entry {name} ({e}); the file is incomplete or corrupt"),
            )
        })?;
        let mut out = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut out)
            .map_err(|e| Error::data(self.show, format!("reading {name}: {e}; the file is truncated or corrupt")))?;
        Ok(out)
    }
}

fn read_zip(bytes: &[u8], show: &str) -> Result<Imported> {
    let zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        Error::data(
            show,
            format!("cannot open as a zip archive ({e}); the file is truncated or corrupt (re-download it)"),
        )
    })?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
    let pkl = names.iter().filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1).min_by_key(|n| n.len());
    let Some(pkl) = pkl.cloned() else {
        let hint = if names.iter().any(|n| n.ends_with("constants.pkl") || n.contains("/code/")) {
            "it looks like a TorchScript archive (torch.jit.save); save a state dict instead: \
             torch.save(torch.jit.load('IN').state_dict(), 'OUT')"
                .to_string()
        } else {
            format!("a torch.save zip holds <name>/data.pkl; this zip has {}", preview(&names))
        };
        return Err(Error::data(show, format!("not a PyTorch checkpoint: no data.pkl; {hint}")));
    };
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or_default().to_string();
    let mut ar = Archive { zip, prefix, big_endian: false, show };
    if names.contains(&format!("{}byteorder", ar.prefix)) {
        ar.big_endian = ar.entry("byteorder")?.trim_ascii() == b"big";
    }
    let root = pickle::load(&ar.entry("data.pkl")?).map_err(|e| {
        Error::data(show, format!("cannot read {pkl}: {e}; the file is corrupt or not a torch.save file"))
    })?;
    let (dict, location, mut ignored) = find_state_dict(&root).map_err(|e| Error::data(show, e))?;

    let mut raw = Vec::new();
    for (k, v) in dict {
        let Some(name) = k.as_str() else {
            ignored.push(format!("non-string key ({})", k.describe()));
            continue;
        };
        match v {
            Value::Tensor(t) => raw.push((name.to_string(), t)),
            other => {
                if let Some(class) = other.class_name().filter(|c| c.starts_with("torch") && c.contains("rebuild")) {
                    return Err(Error::data(
                        show,
                        format!("entry {name} is a tensor kind kdscout cannot import ({class}); save dense tensors"),
                    ));
                }
                ignored.push(name.to_string());
            }
        }
    }
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::with_capacity(raw.len());
    let mut dtypes = HashMap::new();
    for (name, t) in raw {
        let values = materialize(&mut ar, &mut storages, &name, &t)?;
        let dtype = t.storage.type_name.trim_end_matches("Storage").to_lowercase();
        dtypes.insert(strip_module(&name).to_string(), dtype);
        tensors.push((name, Tensor::from_vec(values, t.shape.clone(), Device::Cpu)?));
    }
    let (tensors, stripped) = strip_prefixes(tensors);
    Ok(Imported { tensors, location, stripped, ignored, dtypes })
}

fn preview(names: &[String]) -> String {
    let mut s: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    if names.len() > 5 {
        s.push("...");
    }
    if s.is_empty() {
        "no entries".into()
    } else {
        s.join(", ")
    }
}

fn has_tensors(entries: &[(Value, Value)]) -> bool {
    entries.iter().any(|(_, v)| matches!(v, Value::Tensor(_)))
}

/// The dict holding the weights: the top level if it has tensors, else the first of
/// [`STATE_DICT_KEYS`] that does. Returns its entries, where it was and the skipped top-level keys.
#[allow(clippy::type_complexity)]
fn find_state_dict(root: &Value) -> std::result::Result<(Vec<(Value, Value)>, String, Vec<String>), String> {
    let Value::Dict(top) = root else {
        let what = root.describe();
        return Err(format!(
            "the file holds {what}, not a dict of tensors; if it is a whole pickled model, save its weights \
             instead: torch.save(model.state_dict(), 'OUT')"
        ));
    };
    let top = top.borrow();
    if has_tensors(&top) {
        return Ok((top.clone(), "at the top level".into(), Vec::new()));
    }
    for key in STATE_DICT_KEYS {
        let found = top.iter().find(|(k, _)| k.as_str() == Some(key));
        if let Some((_, Value::Dict(d))) = found {
            if has_tensors(&d.borrow()) {
                let ignored =
                    top.iter().filter_map(|(k, _)| k.as_str()).filter(|k| *k != key).map(String::from).collect();
                return Ok((d.borrow().clone(), format!("under \"{key}\""), ignored));
            }
        }
    }
    let keys: Vec<String> = top
        .iter()
        .map(|(k, v)| format!("{} ({})", k.as_str().map(String::from).unwrap_or_else(|| k.describe()), v.describe()))
        .collect();
    Err(format!(
        "no weights found: expected tensors at the top level or a dict of tensors under one of {}; the top-level \
         entries are: {}",
        STATE_DICT_KEYS.map(|k| format!("\"{k}\"")).join(", "),
        if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
    ))
}

/// The values of a strided tensor view as f32, in row-major order.
fn materialize(
    ar: &mut Archive,
    storages: &mut HashMap<String, Vec<u8>>,
    name: &str,
    t: &TensorRef,
) -> Result<Vec<f32>> {
    let s = &t.storage;
    let elem = s.elem.ok_or_else(|| {
        Error::data(ar.show, format!("tensor {name} uses torch.{}, which kdscout cannot import", s.type_name))
    })?;
    if !storages.contains_key(&s.key) {
        let data = ar.entry(&format!("data/{}", s.key))?;
        storages.insert(s.key.clone(), data);
    }
    let data = &storages[&s.key];
    let size = elem.size();
    let available = data.len() / size;
    // Sizes come from the file: checked arithmetic, so a corrupt shape is an error, not an
    // overflow (a panic, or a wrapped count that passes the bounds check).
    let corrupt = |why: &str| {
        Error::data(
            ar.show,
            format!(
                "tensor {name} (shape {:?}, offset {}, strides {:?}) {why}; the file is corrupt",
                t.shape, t.offset, t.strides
            ),
        )
    };
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |a, &n| a.checked_mul(n))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| corrupt(&format!("has more than {MAX_ELEMENTS} elements")))?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    // The furthest element the view reads must lie inside the storage.
    let last = t
        .shape
        .iter()
        .zip(&t.strides)
        .try_fold(t.offset, |a, (&n, &st)| (n - 1).checked_mul(st).and_then(|v| a.checked_add(v)))
        .ok_or_else(|| corrupt("addresses elements beyond any storage"))?;
    if last >= available {
        return Err(Error::data(
            ar.show,
            format!(
                "tensor {name} (shape {:?}, offset {}, strides {:?}) reads element {last} of storage {} which has {available} \
                 elements; the file is truncated or corrupt",
                t.shape, t.offset, t.strides, s.key
            ),
        ));
    }
    let contiguous = t
        .shape
        .iter()
        .zip(&t.strides)
        .rev()
        .try_fold(1usize, |expect, (&n, &st)| (n == 1 || st == expect).then_some(expect * n));
    if contiguous.is_some() {
        return Ok(elem.to_f32(&data[t.offset * size..(t.offset + numel) * size], ar.big_endian));
    }
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let e = t.offset + idx.iter().zip(&t.strides).map(|(i, st)| i * st).sum::<usize>();
        out.push(elem.decode(&data[e * size..(e + 1) * size], ar.big_endian));
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}
