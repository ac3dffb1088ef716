//! Forward taps: while a tap is open on this thread, the ReLU modules' codes and Conv2d/Linear
//! outputs are recorded as they are computed. Zero-cost proxies read them the way zero-cost-nas reads its
//! forward hooks (NASWOT's ReLU codes, Fisher's layer activations), without touching model code.

use std::cell::RefCell;

use super::{Tensor, TensorId};

/// What a recorded tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapKind {
    /// What an `nn.ReLU`-family module (PyTorch's forward hook sees exactly these; `F.relu` is
    /// not one) saw: its input, or its output where the ReLU is fused into batchnorm. Either is
    /// positive exactly where the input is, which is all NASWOT's codes read.
    ReluModule,
    /// The output of a Conv2d or Linear layer (after its bias), with the layer's weight: taps
    /// come in execution order, which need not be the order of the modules (a ResNet block runs
    /// its shortcut conv before conv2).
    LayerOutput { weight: TensorId },
}

thread_local! {
    static TAPS: RefCell<Option<Vec<(TapKind, Tensor)>>> = const { RefCell::new(None) };
}

/// Records `t` under `kind` if a tap is open on this thread (cheap when none is).
pub(crate) fn record(kind: TapKind, t: &Tensor) {
    TAPS.with(|taps| {
        if let Some(v) = taps.borrow_mut().as_mut() {
            v.push((kind, t.clone()));
        }
    });
}

/// Runs `f` with a tap open and returns what it recorded, in execution order.
pub fn tap<T>(f: impl FnOnce() -> T) -> (T, Vec<(TapKind, Tensor)>) {
    let outer = TAPS.with(|t| t.borrow_mut().replace(Vec::new()));
    let out = f();
    let got = TAPS.with(|t| std::mem::replace(&mut *t.borrow_mut(), outer)).unwrap_or_default();
    (out, got)
}
