//! `bergson trackstar`: [`TrackstarConfig`] (the query set, preprocessing, scoring and the
//! Hessian mixing of Chang et al. 2024) composed with [`IndexConfig`] into
//! [`TrackstarRunConfig`], as Bergson 2.5.1's `Trackstar(index_cfg, trackstar_cfg)` holds them.
//!
//! Flag names follow Bergson's: with two datasets on one command line, the training data's
//! flags are `--data.<field>` and the query's `--query.<field>`; the preprocessing aggregation
//! is `--preprocess_cfg.aggregation` (the query's own is `--query.aggregation`).

use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use super::build::{IndexConfig, PreprocessConfig};
use super::flags::{clap_default, parse_bool};
use super::query_set::{prefix_training_data, QuerySetConfig};
use super::score::ScoreConfig;

/// Parses `--stats_sample_size`: a count, or `None` for the whole dataset.
fn parse_sample_size(s: &str) -> Result<Option<usize>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    s.parse::<usize>()
        .map(Some)
        .map_err(|_| format!("'{s}' is not a number of examples (or None for all of them)"))
}

/// The TrackStar recipe's own settings (Bergson's `TrackstarConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct TrackstarConfig {
    /// The query dataset and its aggregation.
    #[command(flatten)]
    pub query: QuerySetConfig,
    /// Preprocessing of the query and training gradients (`hessian_path` and `aggregation` are
    /// set by the recipe).
    #[command(flatten)]
    pub preprocess_cfg: PreprocessConfig,
    /// Scoring settings (`query_path` and `higher_is_better` are set by the recipe).
    #[command(flatten)]
    pub score_cfg: ScoreConfig,
    /// Gradient components to downweight: the mixing coefficient makes the sorted eigenvalue
    /// curves of the query and value Hessians cross at this component (§A.1.3).
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
    pub target_downweight_components: i64,
    /// Mix the query and value Hessians; false preconditions with the value Hessian alone.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub mix_hessians: bool,
    /// Examples the Hessians are fitted on (`split[:n]`); None fits on the whole split.
    #[arg(long, value_name = "INT", default_value = "10000", value_parser = parse_sample_size)]
    pub stats_sample_size: ::std::option::Option<usize>,
    /// Reuse the steps a previous run of the same config finished.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub resume: bool,
}

impl Default for TrackstarConfig {
    fn default() -> Self {
        clap_default()
    }
}

/// The `bergson trackstar` command: Bergson's `Trackstar(index_cfg, trackstar_cfg)`, whose
/// `index_cfg` defaults `projection_dim` to 16 (TrackStar scores random-projected gradients).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackstarRunConfig {
    /// Model, training data and collection settings.
    pub index_cfg: IndexConfig,
    /// The recipe's settings.
    pub trackstar_cfg: TrackstarConfig,
}

impl Default for TrackstarRunConfig {
    fn default() -> Self {
        clap_default()
    }
}

/// TrackStar's default projection size (Bergson's `TrackstarIndexConfig.projection_dim`).
pub const TRACKSTAR_PROJECTION_DIM: usize = 16;

impl Args for TrackstarRunConfig {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = IndexConfig::augment_args(cmd);
        // The training data's flags take Bergson's `data.` prefix (the query has its own).
        cmd = prefix_training_data(cmd);
        cmd = cmd.mut_arg("projection_dim", |a| a.default_value("16"));
        let cmd = TrackstarConfig::augment_args(cmd);
        cmd.mut_arg("aggregation", |a| a.long("preprocess_cfg.aggregation"))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for TrackstarRunConfig {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(TrackstarRunConfig {
            index_cfg: IndexConfig::from_arg_matches(m)?,
            trackstar_cfg: TrackstarConfig::from_arg_matches(m)?,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Aggregation, DataConfig, ScoreMode, ScorePrecision};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        trackstar: TrackstarRunConfig,
    }

    #[test]
    fn defaults_are_bergsons() {
        let c = TrackstarRunConfig::default();
        assert_eq!(c.index_cfg.projection_dim, TRACKSTAR_PROJECTION_DIM);
        let t = &c.trackstar_cfg;
        assert_eq!(t.target_downweight_components, 1000);
        assert!(t.mix_hessians && !t.resume);
        assert_eq!(t.stats_sample_size, Some(10_000));
        assert_eq!(t.query.data, DataConfig::default());
        assert_eq!(t.query.aggregation, Aggregation::None);
        assert_eq!(t.query.path, "");
        assert!(t.query.contrast.is_none());
        assert!(t.score_cfg.higher_is_better);
        assert_eq!(t.preprocess_cfg, PreprocessConfig::default());
    }

    #[test]
    fn flags_take_bergsons_prefixes() {
        let c = Cli::try_parse_from([
            "bergson",
            "runs/t",
            "--data.dataset",
            "train.jsonl",
            "--data.split",
            "train[:8]",
            "--query.dataset",
            "q.jsonl",
            "--query.truncation",
            "--query.subset",
            "s",
            "--query.aggregation",
            "mean",
            "--preprocess_cfg.aggregation",
            "sum",
            "--precision",
            "fp16",
            "--score_cfg.precision",
            "bf16",
            "--score",
            "nearest",
            "--mix_hessians",
            "false",
            "--stats_sample_size",
            "None",
            "--target_downweight_components",
            "-3",
            "--resume",
            "--unit_normalize",
            "--path",
            "runs/q",
        ])
        .unwrap()
        .trackstar;
        assert_eq!(c.index_cfg.run_path, "runs/t");
        assert_eq!(c.index_cfg.data.dataset, "train.jsonl");
        assert_eq!(c.index_cfg.data.split, "train[:8]");
        assert_eq!(c.index_cfg.projection_dim, 16);
        let t = &c.trackstar_cfg;
        assert_eq!(t.query.data.dataset, "q.jsonl");
        assert!(t.query.data.truncation);
        assert_eq!(t.query.data.subset.as_deref(), Some("s"));
        assert_eq!(t.query.data.split, "train");
        assert_eq!(t.query.aggregation, Aggregation::Mean);
        assert_eq!(t.query.path, "runs/q");
        assert_eq!(t.preprocess_cfg.aggregation, Aggregation::Sum);
        assert!(t.preprocess_cfg.unit_normalize);
        assert_eq!(c.index_cfg.precision, crate::config::PrecisionChoice::Fp16);
        assert_eq!(t.score_cfg.precision, ScorePrecision::Bf16);
        assert_eq!(t.score_cfg.score, ScoreMode::Nearest);
        assert!(!t.mix_hessians && t.resume);
        assert_eq!(t.stats_sample_size, None);
        assert_eq!(t.target_downweight_components, -3);
        // The training data is only reachable through its prefix.
        assert!(Cli::try_parse_from(["bergson", "r", "--dataset", "x"]).is_err());
        assert!(Cli::try_parse_from(["bergson", "r", "--aggregation", "mean"]).is_err());
    }

    #[test]
    fn saved_config_round_trips_with_bergsons_keys() {
        let mut c = TrackstarRunConfig::default();
        c.trackstar_cfg.query.data.dataset = "q.jsonl".into();
        c.trackstar_cfg.query.aggregation = Aggregation::Sum;
        let text = serde_saphyr::to_string(&c).unwrap();
        // Bergson's QuerySetConfig is flat: the dataset fields beside aggregation and path.
        assert!(text.contains("    dataset: q.jsonl\n"), "{text}");
        assert!(text.contains("    aggregation: sum\n"), "{text}");
        let back: TrackstarRunConfig = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
