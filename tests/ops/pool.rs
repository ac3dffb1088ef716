//! pool op tests (being written).

macro_rules! pool_tests {
    ($dev:expr) => {};
}
