//! Optimisers. (Being written: see the engine-core issue.)
