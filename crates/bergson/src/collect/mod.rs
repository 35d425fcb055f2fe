//! Per-example gradient capture, random projection and normalizers.

pub mod collector;
pub mod head_loss;
pub mod loss;
pub mod normalizer;
pub mod optimizer_state;
pub mod pipeline;
pub mod processor;
pub mod projection;
pub mod softmax_block;
pub mod targets;

pub use collector::{BatchGradients, BlockGradient, CaptureHook, GradientCollector, ModuleCall};
pub use loss::{document_losses, LossSpec};
pub use normalizer::Normalizer;
pub use pipeline::{
    collect_gradients, collect_gradients_in_memory, BatchOutput, BatchTimings, BlockBatch,
    CollectConfig, Collection, Documents,
};
pub use processor::{GradientProcessor, ProjectionSettings};
pub use targets::{discover_targets, split_heads, Target};
