//! norm op tests (being written).

macro_rules! norm_tests {
    ($dev:expr) => {};
}
