//! The on-disk gradient index: Bergson's run directory layout, its writer and a memory-mapped reader.

pub mod hf_dataset;
