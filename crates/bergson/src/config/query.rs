//! `bergson query`: [`QueryConfig`] (an interactive search of a gradient index) and
//! [`FaissConfig`] (approximate search), with Bergson 2.5.1's flag names and defaults.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::build::InversionConfig;
use super::flags::{clap_default, parse_bool};

/// Approximate-search settings (Bergson's `FaissConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct FaissConfig {
    /// FAISS index factory string: `Flat`, `IVF1,SQfp16` (exact, fp16), `IVF1024,SQfp16`
    /// (approximate), `PQ6720`, ...
    #[arg(long, default_value = "Flat")]
    pub index_factory: String,
    /// Search the index on disk (memory-mapped) instead of loading it.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub mmap_index: bool,
    /// Rows used to train the index (default: all).
    #[arg(long)]
    pub max_train_examples: Option<usize>,
    /// Rows per batch while preparing rows for the index.
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
    /// Shards of the index (more shards, lower peak memory while building).
    #[arg(long, default_value_t = 1)]
    pub num_shards: usize,
    /// Clusters searched by IVF indexes.
    #[arg(long, default_value_t = 10)]
    pub nprobe: usize,
}

/// An interactive search of a gradient index (Bergson's `QueryConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct QueryConfig {
    /// The index to search (a `bergson build` run directory).
    #[arg(long, default_value = "")]
    pub index: String,
    /// Model for the query gradients (default: the index's).
    #[arg(long, default_value = "")]
    pub model: String,
    /// Column of the index's dataset printed for each result.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Cosine similarity: unit-normalise queries and index rows.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub unit_norm: bool,
    /// Hessian to precondition with: one-sided `H^-1` on the queries, or two-sided `H^-1/2`
    /// with --unit_norm.
    #[arg(long)]
    pub hessian_path: Option<String>,
    /// Use EK-FAC corrected eigenvalues of a factored Hessian.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub ev_correction: bool,
    /// How to invert the Hessian.
    #[command(flatten)]
    pub inversion_cfg: InversionConfig,
    /// Spread the model over several devices (accepted; bergson-rs uses one device).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub device_map_auto: bool,
    /// Search an approximate (FAISS-style) index instead of the exact streamed search.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub faiss: bool,
    /// Approximate-search settings.
    #[command(flatten)]
    pub faiss_cfg: FaissConfig,
    /// Results printed per query, from the top and from the bottom.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// CSV file the results are appended to (`query, direction, result, result_index, score`).
    #[arg(long, default_value = "")]
    pub record: String,
}

impl Default for FaissConfig {
    fn default() -> Self {
        clap_default()
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        clap_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        query: QueryConfig,
    }

    #[test]
    fn defaults_and_flags_are_bergsons() {
        let d = QueryConfig::default();
        assert!(d.unit_norm);
        assert_eq!(d.top_k, 5);
        assert_eq!(d.text_field, "text");
        assert_eq!(d.faiss_cfg.index_factory, "Flat");
        assert_eq!(d.faiss_cfg.nprobe, 10);
        let c = Cli::try_parse_from([
            "q",
            "--index",
            "runs/i",
            "--unit_norm",
            "false",
            "--top_k",
            "3",
            "--record",
            "r.csv",
            "--faiss",
            "--index_factory",
            "IVF1,SQfp16",
            "--nprobe",
            "4",
        ])
        .unwrap()
        .query;
        assert_eq!(c.index, "runs/i");
        assert!(!c.unit_norm);
        assert_eq!(c.top_k, 3);
        assert!(c.faiss);
        assert_eq!(c.faiss_cfg.index_factory, "IVF1,SQfp16");
        assert_eq!(c.faiss_cfg.nprobe, 4);
    }
}
