//! conv op tests (being written).

macro_rules! conv_tests {
    ($dev:expr) => {};
}
