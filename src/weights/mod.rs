//! Weights on disk: safetensors checkpoints (save/load of a module's state dict under PyTorch's
//! dotted names) and import of PyTorch `.pth` files ([`pth`]).
//!
//! A kdscout checkpoint is a plain safetensors file: every tensor is F32 except
//! `*.num_batches_tracked`, which is I64 as in PyTorch, so `safetensors.torch.load_file(path)` gives
//! a dict that `model.load_state_dict` of the original repository takes as it is. The header
//! metadata holds `format = "pt"`, `kdscout_version` and, for a model, `model` and `num_classes`.
//! Loading accepts any float or integer dtype PyTorch writes (F64, F16, BF16, I64, ...) and converts
//! to f32.

pub mod pickle;
pub mod pth;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::io_err;
use crate::nn::{LoadReport, Module};
use crate::{Device, Error, Result, Tensor};

/// Named tensors in state-dict order (`layer1.0.conv1.weight`, ...).
pub type StateDict = Vec<(String, Tensor)>;

/// Header metadata key naming the model a checkpoint was saved from (`models::build` name).
pub const META_MODEL: &str = "model";
/// Header metadata key for the number of classes of the classifier.
pub const META_CLASSES: &str = "num_classes";
/// Header metadata key for the kdscout version that wrote the file.
pub const META_VERSION: &str = "kdscout_version";

/// A checkpoint read back: tensors (converted to f32) and the header metadata.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// In file order (safetensors stores tensors sorted by dtype, then name).
    pub tensors: StateDict,
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    /// The model name recorded at save time, if any.
    pub fn model(&self) -> Option<&str> {
        self.metadata.get(META_MODEL).map(String::as_str)
    }
}

/// The metadata every kdscout checkpoint carries, plus the model name and class count.
pub fn model_metadata(model: &str, num_classes: usize) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(META_MODEL.to_string(), model.to_string());
    m.insert(META_CLASSES.to_string(), num_classes.to_string());
    m
}

/// Element types found in PyTorch and safetensors files, all readable as f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl ElemType {
    pub fn size(self) -> usize {
        match self {
            ElemType::F64 | ElemType::I64 => 8,
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::F16 | ElemType::BF16 | ElemType::I16 => 2,
            ElemType::I8 | ElemType::U8 | ElemType::Bool => 1,
        }
    }

    /// One element from its bytes (`b.len() == self.size()`), in the given byte order.
    fn decode(self, b: &[u8], big_endian: bool) -> f32 {
        macro_rules! num {
            ($t:ty) => {{
                let a = b.try_into().expect("element width");
                (if big_endian { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }) as f32
            }};
        }
        match self {
            ElemType::F64 => num!(f64),
            ElemType::F32 => num!(f32),
            ElemType::I64 => num!(i64),
            ElemType::I32 => num!(i32),
            ElemType::I16 => num!(i16),
            ElemType::I8 => b[0] as i8 as f32,
            ElemType::U8 => b[0] as f32,
            ElemType::Bool => (b[0] != 0) as u8 as f32,
            ElemType::F16 | ElemType::BF16 => {
                let a: [u8; 2] = b.try_into().expect("element width");
                let bits = if big_endian { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) };
                if self == ElemType::F16 {
                    half::f16::from_bits(bits).to_f32()
                } else {
                    half::bf16::from_bits(bits).to_f32()
                }
            }
        }
    }

    /// A whole contiguous buffer of elements as f32.
    pub fn to_f32(self, bytes: &[u8], big_endian: bool) -> Vec<f32> {
        bytes.chunks_exact(self.size()).map(|b| self.decode(b, big_endian)).collect()
    }

    fn from_safetensors(d: Dtype) -> Option<ElemType> {
        Some(match d {
            Dtype::F64 => ElemType::F64,
            Dtype::F32 => ElemType::F32,
            Dtype::F16 => ElemType::F16,
            Dtype::BF16 => ElemType::BF16,
            Dtype::I64 => ElemType::I64,
            Dtype::I32 => ElemType::I32,
            Dtype::I16 => ElemType::I16,
            Dtype::I8 => ElemType::I8,
            Dtype::U8 => ElemType::U8,
            Dtype::BOOL => ElemType::Bool,
            _ => return None,
        })
    }
}

/// PyTorch keeps the BN step counter as int64; so do our files.
fn is_counter(name: &str) -> bool {
    name == "num_batches_tracked" || name.ends_with(".num_batches_tracked")
}

/// Serialises named tensors with `metadata` (plus `format` and `kdscout_version`) to safetensors
/// bytes.
pub fn to_safetensors_bytes(tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut views = Vec::with_capacity(tensors.len());
    let mut data = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let values = t.to_vec()?;
        let bytes: Vec<u8> = if is_counter(name) {
            values.iter().flat_map(|&v| (v.round() as i64).to_le_bytes()).collect()
        } else {
            bytemuck::cast_slice(&values).to_vec()
        };
        data.push((name.as_str(), if is_counter(name) { Dtype::I64 } else { Dtype::F32 }, t.dims().to_vec(), bytes));
    }
    for (name, dtype, shape, bytes) in &data {
        let v = TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| Error::invalid("safetensors", format!("tensor {name}: {e}")))?;
        views.push((*name, v));
    }
    let mut meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    meta.insert("format".into(), "pt".into());
    meta.insert(META_VERSION.into(), env!("CARGO_PKG_VERSION").into());
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::invalid("safetensors", e.to_string()))
}

/// Writes `bytes` to `path` atomically: a temp file in the same folder, synced, then renamed over
/// `path`, so a crash never leaves a half-written checkpoint under the real name.
/// The SHA-256 of a file's bytes as lowercase hex (what `sha256sum` prints): how a run identifies
/// a weights file independently of its path.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).map_err(io_err(format!("reading {}", path.display())))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_err(format!("reading {}", path.display())))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::data(
            path.display().to_string(),
            format!("cannot write: folder {} does not exist (create it first)", dir.display()),
        ));
    }
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        f.write_all(bytes).map_err(io_err(format!("writing {}", tmp.display())))?;
        f.sync_all().map_err(io_err(format!("syncing {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(io_err(format!("renaming {} to {}", tmp.display(), path.display())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Saves named tensors as a safetensors file (atomic write).
pub fn save(path: impl AsRef<Path>, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    write_atomic(path.as_ref(), &to_safetensors_bytes(tensors, metadata)?)
}

/// Saves a module's state dict (parameters and buffers, PyTorch names) with the model name and
/// class count in the metadata.
pub fn save_module(path: impl AsRef<Path>, module: &dyn Module, model: &str, num_classes: usize) -> Result<()> {
    save(path, &module.state_dict(), &model_metadata(model, num_classes))
}

/// Reads safetensors bytes; `source` names them in errors.
pub fn from_safetensors_bytes(bytes: &[u8], source: &str) -> Result<Checkpoint> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::data(source, format!("not a valid safetensors file ({e}); the file is truncated or of another format"))
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| Error::data(source, e.to_string()))?;
    let metadata: BTreeMap<String, String> =
        header.metadata().as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
    let mut tensors = Vec::with_capacity(st.len());
    for name in header.offset_keys() {
        let view = st.tensor(&name).map_err(|e| Error::data(source, e.to_string()))?;
        let elem = ElemType::from_safetensors(view.dtype()).ok_or_else(|| {
            Error::data(source, format!("tensor {name} has dtype {:?}, which kdscout cannot read as f32", view.dtype()))
        })?;
        let values = elem.to_f32(view.data(), false);
        tensors.push((name, Tensor::from_vec(values, view.shape().to_vec(), Device::Cpu)?));
    }
    Ok(Checkpoint { tensors, metadata })
}

/// Reads a safetensors checkpoint, converting every tensor to f32.
pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| {
        let detail = match e.kind() {
            std::io::ErrorKind::NotFound => "checkpoint file not found".to_string(),
            _ => format!("cannot read checkpoint: {e}"),
        };
        Error::data(path.display().to_string(), detail)
    })?;
    from_safetensors_bytes(&bytes, &path.display().to_string())
}

/// Loads a safetensors checkpoint into `module` by name (see [`Module::load_state_dict`]); errors
/// name the file and, when recorded, the model it was saved from.
pub fn load_into(module: &dyn Module, path: impl AsRef<Path>, strict: bool) -> Result<LoadReport> {
    let path = path.as_ref();
    let ckpt = load(path)?;
    module.load_state_dict(&ckpt.tensors, strict).map_err(|e| {
        let saved = ckpt.model().map(|m| format!(" (it was saved from model {m})")).unwrap_or_default();
        Error::data(path.display().to_string(), format!("does not fit this model{saved}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elem_decoding_matches_hand_values() {
        assert_eq!(ElemType::F16.to_f32(&[0x00, 0x3c, 0x00, 0xc0], false), vec![1.0, -2.0]);
        assert_eq!(ElemType::BF16.to_f32(&[0x80, 0x3f], false), vec![1.0]);
        assert_eq!(ElemType::I64.to_f32(&(-5i64).to_le_bytes(), false), vec![-5.0]);
        assert_eq!(ElemType::I64.to_f32(&(-5i64).to_be_bytes(), true), vec![-5.0]);
        assert_eq!(ElemType::F64.to_f32(&0.25f64.to_le_bytes(), false), vec![0.25]);
        assert_eq!(ElemType::I8.to_f32(&[0xff], false), vec![-1.0]);
        assert_eq!(ElemType::Bool.to_f32(&[0, 1, 2], false), vec![0.0, 1.0, 1.0]);
    }
}
