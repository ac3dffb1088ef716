//! Layers, initialisers and named parameters. (Being written: see the engine-core issue.)
