//! The on-disk gradient index: Bergson's run directory layout, its writer and a memory-mapped reader.

pub mod gradient_file;
pub mod hf_dataset;
pub mod info;
pub mod reader;

pub use gradient_file::GradientFile;
pub use info::IndexInfo;
pub use reader::GradientIndex;
