//! bergson: data attribution for large language models.
//!
//! The data flow reads in one direction: [`data`] (datasets, tokenising, batching) ->
//! [`models`] (causal LMs from Hugging Face checkpoints) -> [`collect`] (per-example gradient
//! capture, random projection, normalizers) -> [`index`] (the on-disk gradient index).
//! [`config`] holds one struct per subcommand: the single source of CLI flags, YAML and the
//! saved `config.yaml`. [`hub`] finds and downloads models and datasets from the Hugging Face
//! hub.

pub mod build;
pub mod collect;
pub mod config;
pub mod data;
pub mod diagnose;
pub mod dist;
pub mod engine;
pub mod error;
pub mod hessians;
pub mod hub;
pub mod index;
pub mod interrupt;
pub mod kwargs;
pub mod leaderboard;
pub mod magic;
pub mod mix;
pub mod models;
pub mod pickle;
pub mod progress;
pub mod query;
pub mod recall;
pub mod recipes;
pub mod report;
pub mod score;
pub mod setup;
pub mod similarity;
pub mod train;
pub mod units;
pub mod validate;

pub use error::{Error, Result};
