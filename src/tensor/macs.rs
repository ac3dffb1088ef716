//! Counting multiply-accumulates of a forward pass (what thop/ptflops and the KD papers call
//! "FLOPs"): conv2d and matmul report their MACs to a per-thread counter while one is open.
//! Counting at the op level (not per layer type) means attention products are counted too.

use std::cell::Cell;

thread_local! {
    static COUNTER: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Adds `macs` to this thread's open counter, if any (called by conv2d and matmul).
pub(crate) fn record(macs: u64) {
    COUNTER.with(|c| {
        if let Some(v) = c.get() {
            c.set(Some(v + macs));
        }
    });
}

/// Runs `f` and returns its result with the MACs its conv2d and matmul ops performed on this
/// thread. Nested counts are not supported (the inner call resets the outer counter's view).
pub fn count_macs<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let outer = COUNTER.with(|c| c.replace(Some(0)));
    let out = f();
    let macs = COUNTER.with(|c| c.replace(outer)).unwrap_or(0);
    if let Some(o) = outer {
        COUNTER.with(|c| c.set(Some(o + macs)));
    }
    (out, macs)
}
