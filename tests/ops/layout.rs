//! layout op tests (being written).

macro_rules! layout_tests {
    ($dev:expr) => {};
}
