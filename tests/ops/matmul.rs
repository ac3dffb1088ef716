//! matmul op tests (being written).

macro_rules! matmul_tests {
    ($dev:expr) => {};
}
