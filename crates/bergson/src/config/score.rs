//! `bergson score`: [`ScoreConfig`] (how a dataset is scored against a query index) and
//! [`CandidateConfig`] (score only the rows an earlier run ranked highest), composed with
//! [`IndexConfig`] and [`PreprocessConfig`] into [`ScoreRunConfig`] as Bergson's `Score`
//! command holds them.
//!
//! Bergson's parser (simple_parsing, explicit conflict resolution) prefixes the flags whose
//! names occur twice in the command: `--score_cfg.precision` / `--index_cfg.precision`,
//! `--score_cfg.modules` / `--index_cfg.modules`, `--candidates.higher_is_better`. The same
//! spellings are accepted here.

use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use super::build::{IndexConfig, PreprocessConfig};
use super::flags::{clap_default, parse_bool};

/// `--score`: one column per query, or the best query per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum ScoreMode {
    /// The maximum over the query columns (one column).
    #[serde(rename = "nearest")]
    #[value(name = "nearest")]
    Nearest,
    /// One column per query gradient (Bergson's default).
    #[default]
    #[serde(rename = "individual")]
    #[value(name = "individual")]
    Individual,
}

/// `--score_cfg.precision`: the dtype queries and training gradients meet in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum ScorePrecision {
    /// The model's gradient dtype.
    #[serde(rename = "auto")]
    #[value(name = "auto")]
    Auto,
    /// bfloat16.
    #[serde(rename = "bf16")]
    #[value(name = "bf16")]
    Bf16,
    /// float16.
    #[serde(rename = "fp16")]
    #[value(name = "fp16")]
    Fp16,
    /// float32 (Bergson's default).
    #[default]
    #[serde(rename = "fp32")]
    #[value(name = "fp32")]
    Fp32,
}

/// `--token_influence`: what a per-token row scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum TokenInfluence {
    /// Row t: the per-token gradient at position t.
    #[default]
    #[serde(rename = "gradient")]
    #[value(name = "gradient")]
    Gradient,
    /// Row t: the loss on token t+1 alone (forward-mode; not supported by bergson-rs yet).
    #[serde(rename = "output")]
    #[value(name = "output")]
    Output,
}

/// `--direction`: which end of an earlier ranking to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum CandidateDirection {
    /// The rows most supportive of the queries.
    #[default]
    #[serde(rename = "proponents")]
    #[value(name = "proponents")]
    Proponents,
    /// The rows most opposed to them.
    #[serde(rename = "detractors")]
    #[value(name = "detractors")]
    Detractors,
}

/// Score only the rows an earlier run ranked highest (Bergson's `CandidateConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct CandidateConfig {
    /// Score directory of the earlier run, or the CSV of `bergson query --record`.
    #[arg(long = "scores", id = "candidates_scores", default_value = "")]
    pub scores: String,
    /// Rows kept per query column, or per recorded query.
    #[arg(long = "top_k", id = "candidates_top_k", default_value_t = 0)]
    pub top_k: usize,
    /// Fraction of rows kept per query column. Set this or `--top_k`.
    #[arg(long = "fraction", id = "candidates_fraction", default_value_t = 0.0)]
    pub fraction: f64,
    /// Which end of the earlier ranking to keep.
    #[arg(long = "direction", id = "candidates_direction", value_enum, default_value_t = CandidateDirection::Proponents)]
    pub direction: CandidateDirection,
    /// Orientation of the earlier run's scores; read from its config when left out.
    #[arg(long = "candidates.higher_is_better", id = "candidates_higher_is_better", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub higher_is_better: Option<bool>,
}

/// How a dataset is scored against a query index (Bergson's `ScoreConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct ScoreConfig {
    /// The query index (a `bergson build` or `reduce` run directory).
    #[arg(long, default_value = "")]
    pub query_path: String,
    /// `individual`: one column per query; `nearest`: the best query per row.
    #[arg(long, value_enum, default_value_t = ScoreMode::Individual)]
    pub score: ScoreMode,
    /// Declared by Bergson; batches are sized by `--token_batch_size`.
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
    /// Score the queries in slices of this many, one pass over the data per slice.
    #[arg(long)]
    pub query_batch_size: Option<usize>,
    /// The dtype queries and gradients are multiplied in (sums are float32).
    #[arg(long = "score_cfg.precision", id = "score_precision", value_enum, default_value_t = ScorePrecision::Fp32)]
    pub precision: ScorePrecision,
    /// Modules to score with (default: every module of the query index).
    #[arg(long = "score_cfg.modules", id = "score_modules", num_args = 0..)]
    pub modules: Vec<String>,
    /// Whether a high score marks a proponent (false for MAGIC-style scores).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub higher_is_better: bool,
    /// What a per-token row scores.
    #[arg(long, value_enum, default_value_t = TokenInfluence::Gradient)]
    pub token_influence: TokenInfluence,
    /// Score only an earlier run's best rows.
    #[command(flatten)]
    pub candidates: CandidateConfig,
}

impl Default for CandidateConfig {
    fn default() -> Self {
        clap_default()
    }
}

impl Default for ScoreConfig {
    fn default() -> Self {
        clap_default()
    }
}

/// The `bergson score` command: Bergson's `Score(score_cfg, index_cfg, preprocess_cfg)`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreRunConfig {
    /// Scoring settings.
    pub score_cfg: ScoreConfig,
    /// Model, data and collection settings of the scored dataset.
    pub index_cfg: IndexConfig,
    /// Query-side preprocessing (and the training rows' unit normalisation).
    pub preprocess_cfg: PreprocessConfig,
}

/// Flags of [`IndexConfig`] that Bergson's `score` spells with their prefix.
const INDEX_CONFLICTS: [(&str, &str); 2] = [
    ("precision", "index_cfg.precision"),
    ("modules", "index_cfg.modules"),
];

impl Args for ScoreRunConfig {
    fn augment_args(cmd: Command) -> Command {
        let cmd = ScoreConfig::augment_args(cmd);
        let mut cmd = IndexConfig::augment_args(cmd);
        for (id, long) in INDEX_CONFLICTS {
            cmd = cmd.mut_arg(id, |a| a.long(long));
        }
        PreprocessConfig::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ScoreRunConfig {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(ScoreRunConfig {
            score_cfg: ScoreConfig::from_arg_matches(m)?,
            index_cfg: IndexConfig::from_arg_matches(m)?,
            preprocess_cfg: PreprocessConfig::from_arg_matches(m)?,
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
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        score: ScoreRunConfig,
    }

    #[test]
    fn defaults_are_bergsons() {
        let c = ScoreRunConfig::default();
        assert_eq!(c.score_cfg.score, ScoreMode::Individual);
        assert_eq!(c.score_cfg.batch_size, 1024);
        assert_eq!(c.score_cfg.precision, ScorePrecision::Fp32);
        assert!(c.score_cfg.higher_is_better);
        assert_eq!(c.score_cfg.candidates.higher_is_better, None);
        assert_eq!(c.index_cfg.token_batch_size, 2048);
    }

    #[test]
    fn conflicting_flags_take_bergsons_prefixes() {
        let c = Cli::try_parse_from([
            "bergson",
            "runs/s",
            "--query_path",
            "runs/q",
            "--score",
            "nearest",
            "--score_cfg.precision",
            "bf16",
            "--index_cfg.precision",
            "fp16",
            "--score_cfg.modules",
            "a",
            "b",
            "--index_cfg.modules",
            "c",
            "--higher_is_better",
            "false",
            "--candidates.higher_is_better",
            "--scores",
            "runs/old",
            "--top_k",
            "3",
            "--unit_normalize",
        ])
        .unwrap()
        .score;
        assert_eq!(c.index_cfg.run_path, "runs/s");
        assert_eq!(c.score_cfg.query_path, "runs/q");
        assert_eq!(c.score_cfg.score, ScoreMode::Nearest);
        assert_eq!(c.score_cfg.precision, ScorePrecision::Bf16);
        assert_eq!(c.index_cfg.precision, crate::config::PrecisionChoice::Fp16);
        assert_eq!(c.score_cfg.modules, ["a", "b"]);
        assert_eq!(c.index_cfg.modules, ["c"]);
        assert!(!c.score_cfg.higher_is_better);
        assert_eq!(c.score_cfg.candidates.higher_is_better, Some(true));
        assert_eq!(c.score_cfg.candidates.scores, "runs/old");
        assert_eq!(c.score_cfg.candidates.top_k, 3);
        assert!(c.preprocess_cfg.unit_normalize);
        assert!(Cli::try_parse_from(["bergson", "x", "--precision", "fp16"]).is_err());
    }
}
