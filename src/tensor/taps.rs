//! Forward taps: while a tap is open on this thread, ReLU inputs and Conv2d/Linear outputs are
//! recorded as they are computed. Zero-cost proxies read them the way zero-cost-nas reads its
//! forward hooks (NASWOT's ReLU codes, Fisher's layer activations), without touching model code.

use std::cell::RefCell;

use super::Tensor;

/// What a recorded tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapKind {
    /// The input of a ReLU.
    ReluInput,
    /// The output of a Conv2d or Linear layer (after its bias).
    LayerOutput,
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
