//! Run directories on disk: the one owner of their layout (Bergson's files), their writers,
//! memory-mapped readers, the resume journal and the `.part` life cycle.

pub mod factor_store;
pub mod gradient_file;
pub mod hessian_store;
pub mod hf_dataset;
pub mod info;
pub mod journal;
pub mod reader;
pub mod removal;
pub mod row_norms;
pub mod run_dir;
pub mod score_store;

pub use gradient_file::GradientFile;
pub use info::IndexInfo;
pub use reader::GradientIndex;
