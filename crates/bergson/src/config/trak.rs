//! `bergson trak`: [`TrakConfig`] (the query set, preprocessing, scoring and the ensemble) with
//! [`IndexConfig`] in [`TrakRunConfig`], as Bergson 2.5.1's `Trak` command holds them.
//!
//! Bergson's parser prefixes the flags whose names occur twice in the command: the training
//! data's are `--data.<field>`, the query set's `--query.<field>` (and `--query.aggregation`),
//! its control set's `--contrast.<field>`, the preprocessing aggregation
//! `--preprocess_cfg.aggregation`. The same spellings are accepted here. Two defaults differ
//! from `build`'s: `--projection_dim` 16 and `--damping_factor` 0.0.

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use serde::Serialize;

use super::build::{DataConfig, IndexConfig, PreprocessConfig};
use super::enums::Aggregation;
use super::flags::{clap_default, parse_bool};
use super::score::ScoreConfig;

/// What to attribute to (Bergson's `QuerySetConfig`): the query dataset, how its gradients
/// combine, or an existing query index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuerySetConfig {
    /// The query dataset.
    #[serde(flatten)]
    pub data: DataConfig,
    /// One score column per query (`none`), or one target gradient (`mean`, `sum`).
    pub aggregation: Aggregation,
    /// A control dataset subtracted from the aggregated query (not supported by bergson-rs
    /// yet).
    pub contrast: Option<DataConfig>,
    /// An existing query index to use instead of building one.
    pub path: String,
}

/// The TRAK pipeline's settings (Bergson's `TrakConfig`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrakConfig {
    /// The query set.
    pub query: QuerySetConfig,
    /// Preprocessing (`unit_normalize` is ignored; `hessian_path` is set to the Gram).
    pub preprocess_cfg: PreprocessConfig,
    /// Scoring settings (`query_path` and `higher_is_better` are set by the pipeline).
    pub score_cfg: ScoreConfig,
    /// Independently trained checkpoints to ensemble; member `i` is projected with seed
    /// `projection_seed + i` (`i` when no seed is set). Empty: `--model` alone.
    pub checkpoints: Vec<String>,
    /// Training documents the Gram is fitted on (the first ones); all when unset.
    pub stats_sample_size: Option<usize>,
    /// Documents per forward pass when computing the label probabilities `p_i`.
    pub loss_batch_size: usize,
    /// Skip pipeline steps whose output directory already exists.
    pub resume: bool,
}

/// The `bergson trak` command: Bergson's `Trak(index_cfg, trak_cfg)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrakRunConfig {
    /// Model, training data and collection settings.
    pub index_cfg: IndexConfig,
    /// The pipeline's settings.
    pub trak_cfg: TrakConfig,
}

impl Default for TrakConfig {
    fn default() -> Self {
        clap_default()
    }
}

impl Default for TrakRunConfig {
    fn default() -> Self {
        clap_default()
    }
}

/// The arg ids (field names) of [`DataConfig`].
fn data_ids() -> Vec<String> {
    DataConfig::augment_args(Command::new("data"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect()
}

/// A flag name for clap, which keeps `&'static str` names (a few bytes, once per parser).
fn leak(s: String) -> &'static str {
    s.leak()
}

/// Adds [`DataConfig`]'s flags as `--<prefix>.<field>` (id the same), listed under `heading`
/// in the help in their declaration order.
fn augment_prefixed_data(mut cmd: Command, prefix: &str, heading: &'static str) -> Command {
    let data = DataConfig::augment_args(Command::new("data"));
    for arg in data.get_arguments() {
        let name = leak(format!("{prefix}.{}", arg.get_id()));
        cmd = cmd.arg(
            arg.clone()
                .id(name)
                .long(name)
                .help_heading(heading)
                .display_order(None),
        );
    }
    cmd
}

/// The [`DataConfig`] given as `--<prefix>.<field>` flags, and whether any was given.
fn prefixed_data(m: &ArgMatches, prefix: &str) -> Result<(DataConfig, bool), clap::Error> {
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    for id in data_ids() {
        let pid = format!("{prefix}.{id}");
        if m.value_source(&pid) != Some(ValueSource::CommandLine) {
            continue;
        }
        for v in m.get_raw(&pid).into_iter().flatten() {
            let mut flag = std::ffi::OsString::from(format!("--{id}="));
            flag.push(v);
            argv.push(flag);
        }
    }
    let given = !argv.is_empty();
    let matches = DataConfig::augment_args(Command::new("data").no_binary_name(true))
        .try_get_matches_from(argv)?;
    Ok((DataConfig::from_arg_matches(&matches)?, given))
}

const QUERY_HEADING: &str = "Query set";
const QUERY_AGGREGATION: &str = "query.aggregation";
const QUERY_PATH: &str = "path";
const CHECKPOINTS: &str = "checkpoints";
const STATS_SAMPLE_SIZE: &str = "stats_sample_size";
const LOSS_BATCH_SIZE: &str = "loss_batch_size";
const RESUME: &str = "resume";

impl Args for TrakConfig {
    fn augment_args(cmd: Command) -> Command {
        let cmd = augment_prefixed_data(cmd, "query", QUERY_HEADING)
            .arg(
                Arg::new(QUERY_AGGREGATION)
                    .long(QUERY_AGGREGATION)
                    .help("How the query gradients combine: one score column per query (none), or one target gradient (mean, sum)")
                    .value_name("AGGREGATION")
                    .value_parser(clap::value_parser!(Aggregation))
                    .default_value("none")
                    .help_heading(QUERY_HEADING),
            )
            .arg(
                Arg::new(QUERY_PATH)
                    .long(QUERY_PATH)
                    .help("An existing query index to use instead of building one from --query.*")
                    .default_value("")
                    .help_heading(QUERY_HEADING),
            );
        let cmd = augment_prefixed_data(
            cmd,
            "contrast",
            "Control set subtracted from the query (not supported by bergson-rs yet)",
        );
        let cmd = PreprocessConfig::augment_args(cmd)
            .mut_arg("aggregation", |a| a.long("preprocess_cfg.aggregation"))
            .mut_arg("damping_factor", |a| a.default_value("0.0"));
        ScoreConfig::augment_args(cmd)
            .arg(
                Arg::new(CHECKPOINTS)
                    .long(CHECKPOINTS)
                    .help("Independently trained checkpoints to ensemble (member i gets projection seed + i)")
                    .value_name("CHECKPOINT")
                    .num_args(0..),
            )
            .arg(
                Arg::new(STATS_SAMPLE_SIZE)
                    .long(STATS_SAMPLE_SIZE)
                    .help("Fit the Gram on the first N training documents (default: all)")
                    .value_name("N")
                    .value_parser(clap::value_parser!(usize)),
            )
            .arg(
                Arg::new(LOSS_BATCH_SIZE)
                    .long(LOSS_BATCH_SIZE)
                    .help("Documents per forward pass when computing the label probabilities p_i")
                    .value_parser(clap::value_parser!(usize))
                    .default_value("32"),
            )
            .arg(
                Arg::new(RESUME)
                    .long(RESUME)
                    .help("Skip pipeline steps whose output directory already exists")
                    .value_name("BOOL")
                    .num_args(0..=1)
                    .default_value("false")
                    .default_missing_value("true")
                    .value_parser(parse_bool)
                    .action(clap::ArgAction::Set),
            )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for TrakConfig {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let (query_data, _) = prefixed_data(m, "query")?;
        let (contrast, contrast_given) = prefixed_data(m, "contrast")?;
        Ok(TrakConfig {
            query: QuerySetConfig {
                data: query_data,
                aggregation: m
                    .get_one::<Aggregation>(QUERY_AGGREGATION)
                    .copied()
                    .unwrap_or_default(),
                contrast: contrast_given.then_some(contrast),
                path: m.get_one::<String>(QUERY_PATH).cloned().unwrap_or_default(),
            },
            preprocess_cfg: PreprocessConfig::from_arg_matches(m)?,
            score_cfg: ScoreConfig::from_arg_matches(m)?,
            checkpoints: m
                .get_many::<String>(CHECKPOINTS)
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
            stats_sample_size: m.get_one::<usize>(STATS_SAMPLE_SIZE).copied(),
            loss_batch_size: m.get_one::<usize>(LOSS_BATCH_SIZE).copied().unwrap_or(32),
            resume: m.get_one::<bool>(RESUME).copied().unwrap_or(false),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for TrakRunConfig {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = IndexConfig::augment_args(cmd);
        for id in data_ids() {
            let long = leak(format!("data.{id}"));
            cmd = cmd.mut_arg(id, |a| a.long(long));
        }
        // TRAK scores random-projected gradients: Bergson's TrackstarIndexConfig default.
        cmd = cmd.mut_arg("projection_dim", |a| a.default_value("16"));
        TrakConfig::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for TrakRunConfig {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(TrakRunConfig {
            index_cfg: IndexConfig::from_arg_matches(m)?,
            trak_cfg: TrakConfig::from_arg_matches(m)?,
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
    use crate::config::{Inversion, ProjectionTarget, ScorePrecision};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        trak: TrakRunConfig,
    }

    #[test]
    fn defaults_are_bergsons() {
        let c = TrakRunConfig::default();
        assert_eq!(c.index_cfg.projection_dim, 16);
        assert_eq!(c.index_cfg.data.dataset, "NeelNanda/pile-10k");
        let t = &c.trak_cfg;
        assert_eq!(t.preprocess_cfg.inversion_cfg.damping_factor, 0.0);
        assert_eq!(
            t.preprocess_cfg.inversion_cfg.inversion,
            Inversion::DampedInverse
        );
        assert!(!t.preprocess_cfg.unit_normalize);
        assert_eq!(t.loss_batch_size, 32);
        assert_eq!(t.stats_sample_size, None);
        assert!(!t.resume && t.checkpoints.is_empty());
        assert_eq!(t.query.aggregation, Aggregation::None);
        assert_eq!(t.query.data, DataConfig::default());
        assert_eq!(t.query.contrast, None);
        assert!(t.query.path.is_empty());
        assert!(t.score_cfg.higher_is_better);
    }

    #[test]
    fn flags_take_bergsons_prefixed_names() {
        let c = Cli::try_parse_from([
            "bergson",
            "runs/t",
            "--model",
            "m",
            "--data.dataset",
            "train.jsonl",
            "--data.split",
            "train[:10]",
            "--query.dataset",
            "q.jsonl",
            "--query.prompt_column",
            "prompt",
            "--query.truncation",
            "--query.aggregation",
            "mean",
            "--preprocess_cfg.aggregation",
            "sum",
            "--projection_target",
            "global",
            "--damping_factor",
            "0.5",
            "--checkpoints",
            "a",
            "b",
            "--stats_sample_size",
            "8",
            "--loss_batch_size",
            "3",
            "--resume",
            "--score_cfg.precision",
            "bf16",
            "--contrast.dataset",
            "c.jsonl",
        ])
        .unwrap()
        .trak;
        assert_eq!(c.index_cfg.run_path, "runs/t");
        assert_eq!(c.index_cfg.data.dataset, "train.jsonl");
        assert_eq!(c.index_cfg.data.split, "train[:10]");
        assert_eq!(c.index_cfg.projection_target, ProjectionTarget::Global);
        let t = &c.trak_cfg;
        assert_eq!(t.query.data.dataset, "q.jsonl");
        assert_eq!(t.query.data.prompt_column, "prompt");
        assert!(t.query.data.truncation);
        assert_eq!(t.query.data.split, "train");
        assert_eq!(t.query.aggregation, Aggregation::Mean);
        assert_eq!(t.preprocess_cfg.aggregation, Aggregation::Sum);
        assert_eq!(t.preprocess_cfg.inversion_cfg.damping_factor, 0.5);
        assert_eq!(t.checkpoints, ["a", "b"]);
        assert_eq!(t.stats_sample_size, Some(8));
        assert_eq!(t.loss_batch_size, 3);
        assert!(t.resume);
        assert_eq!(t.score_cfg.precision, ScorePrecision::Bf16);
        assert_eq!(t.query.contrast.as_ref().unwrap().dataset, "c.jsonl");
        // Bergson's trak spells the training data `--data.dataset`.
        assert!(Cli::try_parse_from(["bergson", "r", "--dataset", "x"]).is_err());
    }

    #[test]
    fn serialises_in_bergsons_layout() {
        let v = serde_json::to_value(TrakRunConfig::default()).unwrap();
        let q = &v["trak_cfg"]["query"];
        assert_eq!(q["dataset"], "NeelNanda/pile-10k");
        assert_eq!(q["aggregation"], "none");
        assert!(q["contrast"].is_null());
        let keys: Vec<&str> = v["trak_cfg"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "query",
                "preprocess_cfg",
                "score_cfg",
                "checkpoints",
                "stats_sample_size",
                "loss_batch_size",
                "resume"
            ]
        );
    }
}
