//! The `Module` trait and everything that walks a module tree: PyTorch-style dotted names,
//! parameters vs buffers, state dicts and loading by name.

use std::any::Any;
use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Whether a tensor of a module is trained or only carried along (PyTorch's `_parameters` vs
/// `_buffers`: both are in the state dict, only parameters go to the optimiser).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    Parameter,
    Buffer,
}

/// A tensor owned directly by a module, under its local name (`weight`, `running_mean`, ...).
#[derive(Clone, Debug)]
pub struct LocalTensor {
    pub name: String,
    pub tensor: Tensor,
    pub kind: TensorKind,
}

impl LocalTensor {
    pub fn param(name: &str, tensor: &Tensor) -> Self {
        LocalTensor { name: name.to_string(), tensor: tensor.clone(), kind: TensorKind::Parameter }
    }
    pub fn buffer(name: &str, tensor: &Tensor) -> Self {
        LocalTensor { name: name.to_string(), tensor: tensor.clone(), kind: TensorKind::Buffer }
    }
}

/// What `load_state_dict` did not match (only non-empty in non-strict mode; strict mode turns
/// any of these into an error).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
}

/// A layer or a network. Parameters are shared `Tensor`s updated in place (by the optimiser and
/// by loading), so a module keeps the same tensors (same ids) for its whole life.
///
/// Implementors provide `forward`, their own tensors (`local_tensors`) and their sub-modules
/// (`children`, `children_mut`); names, state dicts, loading and mode switching are derived.
pub trait Module: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Tensors owned directly by this module, parameters first (PyTorch state-dict order).
    fn local_tensors(&self) -> Vec<LocalTensor> {
        Vec::new()
    }

    /// Direct sub-modules with their attribute names (`"conv1"`, `"0"`, ...).
    fn children(&self) -> Vec<(String, &dyn Module)> {
        Vec::new()
    }

    /// The same sub-modules, mutably, in the same order (for mode switching).
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        Vec::new()
    }

    /// Train (batch statistics, running-stat updates) or eval mode. Modules with a mode of their
    /// own override this and still recurse; the default only recurses.
    fn set_training(&mut self, training: bool) {
        for c in self.children_mut() {
            c.set_training(training);
        }
    }

    /// For initialisers and tools that need the concrete layer type.
    fn as_any(&self) -> &dyn Any;

    // ------------------------------------------------------------------ derived

    /// Calls `f(dotted_name, module)` for this module (name = `prefix`) and every descendant,
    /// parents before children.
    fn visit_modules(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn Module)) {
        f(prefix, self.as_dyn());
        for (name, child) in self.children() {
            child.visit_modules(&join(prefix, &name), f);
        }
    }

    /// Calls `f(dotted_name, tensor, kind)` for every tensor of the tree, in state-dict order.
    fn visit_tensors(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        for t in self.local_tensors() {
            f(&join(prefix, &t.name), &t.tensor, t.kind);
        }
        for (name, child) in self.children() {
            child.visit_tensors(&join(prefix, &name), f);
        }
    }

    /// Trainable parameters with dotted names (`layer1.0.conv1.weight`).
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.named_of_kind(Some(TensorKind::Parameter))
    }

    /// Buffers (`bn1.running_mean`, `bn1.num_batches_tracked`, ...).
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        self.named_of_kind(Some(TensorKind::Buffer))
    }

    /// Parameters and buffers together, as PyTorch's `state_dict()` lists them.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.named_of_kind(None)
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }

    /// Number of trainable scalars.
    fn num_parameters(&self) -> usize {
        self.named_parameters().iter().map(|(_, t)| t.numel()).sum()
    }

    #[doc(hidden)]
    fn named_of_kind(&self, kind: Option<TensorKind>) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        // A tensor shared between modules (tied weights) is listed once, like PyTorch does.
        let mut seen = HashSet::new();
        self.visit_tensors("", &mut |name, t, k| {
            if kind.is_none_or(|want| want == k) && seen.insert(t.id()) {
                out.push((name.to_string(), t.clone()));
            }
        });
        out
    }

    /// Copies values into this module's tensors by name, in place (ids are kept). Every entry is
    /// checked before anything is written, so a failed load leaves the module untouched. Shape
    /// mismatches are always errors; missing and unexpected names are errors when `strict`, and
    /// are reported otherwise.
    fn load_state_dict(&self, state: &[(String, Tensor)], strict: bool) -> Result<LoadReport> {
        let own = self.state_dict();
        let own_names: HashSet<&str> = own.iter().map(|(n, _)| n.as_str()).collect();
        let mut given: HashMap<&str, &Tensor> = HashMap::new();
        let mut duplicates = Vec::new();
        for (name, t) in state {
            if given.insert(name.as_str(), t).is_some() {
                duplicates.push(name.clone());
            }
        }
        let missing: Vec<String> =
            own.iter().filter(|(n, _)| !given.contains_key(n.as_str())).map(|(n, _)| n.clone()).collect();
        let unexpected: Vec<String> =
            state.iter().filter(|(n, _)| !own_names.contains(n.as_str())).map(|(n, _)| n.clone()).collect();
        let mismatched: Vec<String> = own
            .iter()
            .filter_map(|(n, t)| {
                let src = given.get(n.as_str())?;
                (src.dims() != t.dims()).then(|| format!("{n} (expected {}, got {})", t.shape(), src.shape()))
            })
            .collect();
        let mut problems = Vec::new();
        if !duplicates.is_empty() {
            problems.push(format!("duplicate entries: {}", duplicates.join(", ")));
        }
        if !mismatched.is_empty() {
            problems.push(format!("shape mismatch: {}", mismatched.join(", ")));
        }
        if strict && !missing.is_empty() {
            problems.push(format!("missing: {}", missing.join(", ")));
        }
        if strict && !unexpected.is_empty() {
            problems.push(format!("unexpected: {}", unexpected.join(", ")));
        }
        if !problems.is_empty() {
            return Err(Error::invalid("load_state_dict", problems.join("; ")));
        }
        for (name, t) in &own {
            if let Some(src) = given.get(name.as_str()) {
                if src.id() != t.id() {
                    t.copy_from_slice(&src.to_vec()?)?;
                }
            }
        }
        Ok(LoadReport { missing, unexpected })
    }

    #[doc(hidden)]
    fn as_dyn(&self) -> &dyn Module;
}

/// Supplies the two boilerplate methods (`as_any`, `as_dyn`) of a `Module` impl.
#[macro_export]
macro_rules! module_boilerplate {
    () => {
        fn as_any(&self) -> &dyn ::std::any::Any {
            self
        }
        fn as_dyn(&self) -> &dyn $crate::nn::Module {
            self
        }
    };
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Switch a whole tree to training mode (`model.train()`).
pub fn train(m: &mut dyn Module) {
    m.set_training(true);
}

/// Switch a whole tree to evaluation mode (`model.eval()`).
pub fn eval(m: &mut dyn Module) {
    m.set_training(false);
}
