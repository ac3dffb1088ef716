//! Optimisers. `Sgd` is `torch.optim.SGD` (dampening 0): one fused backend pass per parameter
//! updates the values in place, so modules keep their tensors (same ids) across steps.

use std::collections::{BTreeMap, HashSet};

use crate::autograd::Grads;
use crate::backend::{same_device, SgdStep};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::{invalid_err, shape_err};

/// False for negatives and NaN.
fn non_negative(v: f32) -> bool {
    v >= 0.0
}

/// SGD with momentum, weight decay and optional Nesterov momentum. Momentum buffers are keyed by
/// parameter name (the names of `Module::named_parameters`), which is also how they are
/// exported for checkpoints.
pub struct Sgd {
    lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    buffers: BTreeMap<String, Tensor>,
    steps: u64,
}

impl Sgd {
    /// Rejects what PyTorch rejects: negative lr / momentum / weight decay, and Nesterov
    /// without momentum.
    pub fn new(lr: f32, momentum: f32, weight_decay: f32, nesterov: bool) -> Result<Sgd> {
        if [lr, momentum, weight_decay].iter().any(|v| !non_negative(*v)) {
            invalid_err!("Sgd", "lr {lr}, momentum {momentum} and weight_decay {weight_decay} must be non-negative");
        }
        if nesterov && momentum == 0.0 {
            invalid_err!("Sgd", "Nesterov momentum requires momentum > 0");
        }
        Ok(Sgd { lr, momentum, weight_decay, nesterov, buffers: BTreeMap::new(), steps: 0 })
    }

    pub fn lr(&self) -> f32 {
        self.lr
    }

    /// For schedules: takes effect at the next `step`.
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        if !non_negative(lr) {
            invalid_err!("Sgd", "lr {lr} must be non-negative");
        }
        self.lr = lr;
        Ok(())
    }

    /// Number of `step` calls so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update of every parameter that has a gradient in `grads` (the others are skipped,
    /// as PyTorch skips `p.grad is None`). All parameters are checked before any is changed.
    pub fn step(&mut self, params: &[(String, Tensor)], grads: &Grads) -> Result<()> {
        let mut names = HashSet::new();
        let mut work = Vec::new();
        for (name, p) in params {
            if !names.insert(name.as_str()) {
                invalid_err!("Sgd::step", "parameter name {name} appears twice");
            }
            let Some(g) = grads.get(p) else { continue };
            if g.dims() != p.dims() {
                shape_err!("Sgd::step", "gradient {} for parameter {name} of shape {}", g.shape(), p.shape());
            }
            same_device("Sgd::step", p.device(), g.device())?;
            if let Some(buf) = self.buffers.get(name) {
                if buf.dims() != p.dims() || buf.device() != p.device() {
                    shape_err!(
                        "Sgd::step",
                        "momentum buffer {} ({}) does not fit parameter {name} {} ({})",
                        buf.shape(),
                        buf.device(),
                        p.shape(),
                        p.device()
                    );
                }
            }
            work.push((name, p, g));
        }
        for (name, p, g) in work {
            // PyTorch starts the buffer at the first gradient rather than decaying zeros.
            let first_step = !self.buffers.contains_key(name.as_str());
            let buf = match self.buffers.get(name.as_str()) {
                Some(b) => b.clone(),
                None => Tensor::zeros(p.shape().clone(), p.device())?,
            };
            let step = SgdStep {
                lr: self.lr,
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                nesterov: self.nesterov,
                first_step,
            };
            // Tensors can share memory (views); a gradient aliasing its parameter would make the
            // read and write locks below deadlock, so such a gradient is copied first.
            let g = if std::sync::Arc::ptr_eq(&p.storage_arc(), &g.storage_arc()) { g.deep_clone() } else { g.clone() };
            {
                let mut ps = p.storage_mut();
                let gs = g.storage();
                let mut bs = buf.storage_mut();
                p.backend().sgd_step(&mut ps, &gs, &mut bs, &step)?;
            }
            // Without momentum the buffer is scratch only (PyTorch keeps none either).
            if self.momentum != 0.0 && first_step {
                self.buffers.insert(name.clone(), buf);
            }
        }
        self.steps += 1;
        Ok(())
    }

    /// Momentum buffers by parameter name (`momentum_buffer` of PyTorch's optimiser state), as
    /// copies with their own memory (later steps do not change a saved state).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.buffers.iter().map(|(n, b)| (n.clone(), b.deep_clone())).collect()
    }

    /// Restores buffers saved by `state`; a parameter without an entry starts fresh (first step).
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let mut buffers = BTreeMap::new();
        for (name, t) in state {
            if buffers.insert(name.clone(), t.deep_clone()).is_some() {
                return Err(Error::invalid("Sgd::load_state", format!("momentum buffer {name} appears twice")));
            }
        }
        self.buffers = buffers;
        Ok(())
    }
}
