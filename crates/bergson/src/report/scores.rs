//! The score store reader lives with the run directory's other files in
//! [`crate::index::score_store`]; re-exported here for the report's modules.

pub use crate::index::score_store::{is_score_store, ScoreDtype, ScoreStore};
