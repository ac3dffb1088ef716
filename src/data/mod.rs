//! Data sets. (Being written: see the engine-core and model-zoo issues.)
