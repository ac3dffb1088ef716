//! reduce op tests (being written).

macro_rules! reduce_tests {
    ($dev:expr) => {};
}
