//! Datasets: reading tables, selecting splits, formatting and tokenising rows, and packing
//! documents into batches exactly as Bergson does.

pub mod batching;
pub mod bpe_files;
pub mod chat_template;
pub mod chunking;
pub mod columns;
pub mod format_template;
pub mod formats;
pub mod hub;
pub mod kwargs;
pub mod nprandom;
pub mod pipeline;
pub mod pyrandom;
pub mod pyvalue;
pub mod rewards;
pub mod source;
pub mod split;
pub mod tokenize;

/// One chat message (`{"role": ..., "content": ...}`), as Hugging Face chat templates take them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `user`, `assistant`, `system`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}
