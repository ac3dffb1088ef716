//! elementwise op tests (being written).

macro_rules! elementwise_tests {
    ($dev:expr) => {};
}
