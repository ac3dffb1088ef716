//! `Tensor`: a shape plus dense f32 storage on a device, and (when gradients are requested) the
//! op that made it. Cloning is cheap (reference counted). Every op checks shapes here, returns a
//! `Result` whose error names the shapes involved, and records itself for autograd only when
//! one of its inputs requires a gradient and recording is enabled.

pub mod macs;
mod ops;
mod shape;
pub mod taps;

pub use shape::Shape;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::autograd::{self, Op};
use crate::backend::{Backend, Device, Storage};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Element type of stored data. Compute is f32; f16/bf16 exist for storage and export
/// (checkpoints, mixed-precision studies) through `half`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size_in_bytes(&self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// Identity of a tensor across clones; gradients are keyed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct TensorInner {
    id: TensorId,
    shape: Shape,
    device: Device,
    // Shared so reshape and detach are free views of the same memory (as in PyTorch); RwLock so
    // parameters and running statistics can be updated in place by the optimiser and by
    // train-mode batchnorm while the module that owns them holds the same tensor.
    storage: Arc<RwLock<Storage>>,
    /// The op that produced this tensor, kept only while gradients are tracked.
    op: Option<Op>,
    requires_grad: bool,
}

#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorInner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{}{}", self.shape(), if self.requires_grad() { " (grad)" } else { "" })
    }
}

impl Tensor {
    // ---------------------------------------------------------------- construction

    pub(crate) fn from_storage(storage: Storage, shape: impl Into<Shape>) -> Tensor {
        Tensor::new_inner(Arc::new(RwLock::new(storage)), shape.into(), None, false)
    }

    fn new_inner(storage: Arc<RwLock<Storage>>, shape: Shape, op: Option<Op>, requires_grad: bool) -> Tensor {
        let device = {
            let s = storage.read().expect("tensor storage lock poisoned");
            debug_assert_eq!(s.len(), shape.numel(), "storage/shape length for {shape}");
            s.device()
        };
        Tensor(Arc::new(TensorInner { id: TensorId::fresh(), shape, device, storage, op, requires_grad }))
    }

    /// The result of an op: records `op` when any input tracks gradients and recording is on.
    pub(crate) fn from_op(storage: Storage, shape: impl Into<Shape>, op: Op) -> Tensor {
        Tensor::from_op_shared(Arc::new(RwLock::new(storage)), shape.into(), op)
    }

    /// Like `from_op`, for results that view an input's memory (reshape).
    pub(crate) fn from_op_shared(storage: Arc<RwLock<Storage>>, shape: Shape, op: Op) -> Tensor {
        let track = autograd::is_recording() && op.inputs().iter().any(|t| t.requires_grad());
        Tensor::new_inner(storage, shape, if track { Some(op) } else { None }, track)
    }

    /// True when no other tensor handle or view shares this tensor's memory, so it may be
    /// updated in place without anyone observing it.
    pub(crate) fn is_sole_owner(&self) -> bool {
        Arc::strong_count(&self.0) == 1
            && Arc::weak_count(&self.0) == 0
            && Arc::strong_count(&self.0.storage) == 1
            && Arc::weak_count(&self.0.storage) == 0
    }

    /// The shared memory handle (for views).
    pub(crate) fn storage_arc(&self) -> Arc<RwLock<Storage>> {
        self.0.storage.clone()
    }

    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::shape("from_vec", format!("{} values do not fill shape {shape}", data.len())));
        }
        let storage = match device {
            Device::Cpu => Storage::Cpu(data),
            #[allow(unreachable_patterns)]
            _ => device.backend().from_host(&data)?,
        };
        Ok(Tensor::from_storage(storage, shape))
    }

    pub fn from_slice(data: &[f32], shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::shape("from_slice", format!("{} values do not fill shape {shape}", data.len())));
        }
        Ok(Tensor::from_storage(device.backend().from_host(data)?, shape))
    }

    pub fn full(value: f32, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        Ok(Tensor::from_storage(device.backend().full(shape.numel(), value)?, shape))
    }
    pub fn zeros(shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::full(0.0, shape, device)
    }
    pub fn ones(shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, device)
    }
    pub fn scalar(value: f32, device: Device) -> Result<Tensor> {
        Tensor::full(value, Shape::from(vec![]), device)
    }

    /// Normal(mean, std) samples from the run's generator (host side, so every device gets the
    /// same numbers for the same seed).
    pub fn randn(shape: impl Into<Shape>, mean: f32, std: f32, rng: &mut Rng, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        let data: Vec<f32> = (0..shape.numel()).map(|_| mean + std * rng.normal()).collect();
        Tensor::from_slice(&data, shape, device)
    }

    /// Uniform samples in [lo, hi).
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f32, hi: f32, rng: &mut Rng, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        let data: Vec<f32> = (0..shape.numel()).map(|_| rng.uniform(lo, hi)).collect();
        Tensor::from_slice(&data, shape, device)
    }

    /// A leaf that gradients are computed for (a parameter or an input of interest), sharing
    /// this tensor's memory.
    pub fn requires_grad_(self) -> Tensor {
        if self.requires_grad() && self.0.op.is_none() {
            return self;
        }
        Tensor::new_inner(self.storage_arc(), self.shape().clone(), None, true)
    }

    /// The same memory, cut from the graph (a leaf that tracks nothing), like `x.detach()`.
    pub fn detach(&self) -> Tensor {
        Tensor::new_inner(self.storage_arc(), self.shape().clone(), None, false)
    }

    /// A copy with its own memory (like `x.clone()` in PyTorch), cut from the graph.
    pub fn deep_clone(&self) -> Tensor {
        Tensor::from_storage(self.storage().clone(), self.shape().clone())
    }

    // ---------------------------------------------------------------- accessors

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }
    pub fn rank(&self) -> usize {
        self.dims().len()
    }
    pub fn numel(&self) -> usize {
        self.0.shape.numel()
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }
    pub(crate) fn op(&self) -> Option<&Op> {
        self.0.op.as_ref()
    }
    pub(crate) fn backend(&self) -> &'static dyn Backend {
        self.0.device.backend()
    }
    pub fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().expect("tensor storage lock poisoned")
    }
    /// In-place access, for optimisers and running statistics. Tensors that share this one
    /// (clones) see the change; ops that already read it are unaffected.
    pub fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().expect("tensor storage lock poisoned")
    }

    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.backend().to_host(&self.storage())
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("tensor of shape {} has {} elements, not 1", self.shape(), self.numel()),
            ));
        }
        Ok(self.to_vec()?[0])
    }

    /// Overwrite the values in place (same shape), e.g. when loading weights.
    pub fn copy_from_slice(&self, data: &[f32]) -> Result<()> {
        if data.len() != self.numel() {
            return Err(Error::shape(
                "copy_from_slice",
                format!("{} values for tensor of shape {}", data.len(), self.shape()),
            ));
        }
        *self.storage_mut() = self.backend().from_host(data)?;
        Ok(())
    }

    /// The values rounded to a storage dtype, as raw little-endian bytes (checkpoint export).
    pub fn to_bytes(&self, dtype: DType) -> Result<Vec<u8>> {
        let v = self.to_vec()?;
        Ok(match dtype {
            DType::F32 => bytemuck::cast_slice(&v).to_vec(),
            DType::F16 => {
                let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
                bytemuck::cast_slice(&h).to_vec()
            }
            DType::BF16 => {
                let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
                bytemuck::cast_slice(&h).to_vec()
            }
        })
    }

    /// Gradients of this scalar w.r.t. every tracked leaf reachable from it.
    pub fn backward(&self) -> Result<autograd::Grads> {
        autograd::backward(self, &[])
    }

    /// Like `backward`, also keeping the gradients of the given intermediate tensors (which a
    /// plain backward drops once used), as PyTorch's `retain_grad` does.
    pub fn backward_retaining(&self, keep: &[Tensor]) -> Result<autograd::Grads> {
        autograd::backward(self, keep)
    }
}
