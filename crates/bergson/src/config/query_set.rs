//! The query set of the recipes (Bergson's `QuerySetConfig`: a `DataConfig` with `aggregation`,
//! `contrast` and `path`), and Bergson's prefixed spellings of a command with two datasets:
//! the training data's flags are `--data.<field>`, the query's `--query.<field>` (and
//! `--query.aggregation`, `--path`), its control set's `--contrast.<field>`.

use clap::builder::EnumValueParser;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use super::build::DataConfig;
use super::enums::Aggregation;
use super::flags::clap_default;
use super::renamed::{augment_renamed, from_renamed, prefix_longs};

/// What to attribute to: the query dataset and how its gradients combine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct QuerySetConfig {
    /// The query dataset (flags `--query.<field>`).
    #[serde(flatten)]
    pub data: DataConfig,
    /// One score column per query (`none`) or one target gradient (`mean`, `sum`).
    pub aggregation: Aggregation,
    /// Control dataset subtracted from the aggregated query (Bergson's `query.contrast`,
    /// flags `--contrast.<field>`); the recipes refuse it (bergson-rs does not subtract
    /// controls yet).
    pub contrast: Option<DataConfig>,
    /// An existing query index to score against instead of building one (`--path`).
    pub path: String,
}

impl Default for QuerySetConfig {
    fn default() -> Self {
        clap_default()
    }
}

/// Reads Bergson's flat mapping strictly: the three query keys, and the rest a `DataConfig`
/// (whose unknown keys are errors, as in every other config; serde's `flatten` would ignore
/// them).
impl TryFrom<serde_json::Map<String, serde_json::Value>> for QuerySetConfig {
    type Error = String;

    fn try_from(mut map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        fn take<T: serde::de::DeserializeOwned>(
            map: &mut serde_json::Map<String, serde_json::Value>,
            key: &str,
        ) -> Result<Option<T>, String> {
            map.remove(key)
                .map(|v| serde_json::from_value(v).map_err(|e| format!("query.{key}: {e}")))
                .transpose()
        }
        let aggregation = take::<Aggregation>(&mut map, "aggregation")?.unwrap_or_default();
        let contrast = take::<Option<DataConfig>>(&mut map, "contrast")?.flatten();
        let path = take::<String>(&mut map, "path")?.unwrap_or_default();
        let data = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| format!("query: {e}"))?;
        Ok(QuerySetConfig {
            data,
            aggregation,
            contrast,
            path,
        })
    }
}

const QUERY_HEADING: &str = "Query set";
const QUERY_AGGREGATION: &str = "query.aggregation";
const QUERY_PATH: &str = "query.path";

/// Renames the training data's flags (added by `IndexConfig`) to `--data.<field>`.
pub(crate) fn prefix_training_data(cmd: Command) -> Command {
    prefix_longs::<DataConfig>(cmd, "data.")
}

impl Args for QuerySetConfig {
    fn augment_args(cmd: Command) -> Command {
        let cmd = augment_renamed::<DataConfig>(cmd, "query", |l| format!("query.{l}"))
            .arg(
                Arg::new(QUERY_AGGREGATION)
                    .long(QUERY_AGGREGATION)
                    .value_name("AGGREGATION")
                    .help("How the query gradients combine: one score column per query (none), or one target gradient (mean, sum)")
                    .value_parser(EnumValueParser::<Aggregation>::new())
                    .default_value("none")
                    .help_heading(QUERY_HEADING),
            )
            .arg(
                Arg::new(QUERY_PATH)
                    .long("path")
                    .value_name("PATH")
                    .help("An existing query index to score against instead of building one from the --query.* dataset")
                    .default_value("")
                    .help_heading(QUERY_HEADING),
            );
        augment_renamed::<DataConfig>(cmd, "contrast", |l| format!("contrast.{l}"))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for QuerySetConfig {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let (data, _) = from_renamed::<DataConfig>(m, "query")?;
        let (contrast, contrast_given) = from_renamed::<DataConfig>(m, "contrast")?;
        Ok(QuerySetConfig {
            data,
            aggregation: m
                .get_one::<Aggregation>(QUERY_AGGREGATION)
                .copied()
                .unwrap_or_default(),
            contrast: contrast_given.then_some(contrast),
            path: m.get_one::<String>(QUERY_PATH).cloned().unwrap_or_default(),
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

    #[test]
    fn saved_query_sets_read_bergsons_flat_keys_strictly() {
        // Missing keys take the defaults; unknown ones are errors, as in every config.
        let q: QuerySetConfig = serde_saphyr::from_str("aggregation: mean\n").unwrap();
        assert_eq!(q.aggregation, Aggregation::Mean);
        assert_eq!(q.data, DataConfig::default());
        let q: QuerySetConfig =
            serde_saphyr::from_str("dataset: q.jsonl\ncontrast: null\n").unwrap();
        assert_eq!((q.data.dataset.as_str(), q.contrast), ("q.jsonl", None));
        let e = serde_saphyr::from_str::<QuerySetConfig>("datset: q.jsonl\n").unwrap_err();
        assert!(e.to_string().contains("datset"), "{e}");
    }

    #[test]
    fn yaml_keeps_bergsons_layout_and_round_trips() {
        let q = QuerySetConfig {
            aggregation: Aggregation::Mean,
            contrast: Some(DataConfig {
                dataset: "c.jsonl".into(),
                ..DataConfig::default()
            }),
            ..QuerySetConfig::default()
        };
        let text = serde_saphyr::to_string(&q).unwrap();
        assert!(text.starts_with("dataset: NeelNanda/pile-10k\n"), "{text}");
        let tail: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(' '))
            .rev()
            .take(3)
            .collect();
        assert_eq!(tail, ["path: \"\"", "contrast:", "aggregation: mean"]);
        let back: QuerySetConfig = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back, q);
    }

    #[test]
    fn prefixed_flags_fill_the_query_and_the_contrast() {
        let cmd = QuerySetConfig::augment_args(Command::new("t").no_binary_name(true));
        let m = cmd
            .try_get_matches_from([
                "--query.dataset",
                "q.jsonl",
                "--query.truncation",
                "--contrast.dataset",
                "c.jsonl",
                "--path",
                "runs/q",
            ])
            .unwrap();
        let q = QuerySetConfig::from_arg_matches(&m).unwrap();
        assert_eq!(q.data.dataset, "q.jsonl");
        assert!(q.data.truncation);
        assert_eq!(q.data.split, "train");
        assert_eq!(q.contrast.unwrap().dataset, "c.jsonl");
        assert_eq!(q.path, "runs/q");
        let m = QuerySetConfig::augment_args(Command::new("t").no_binary_name(true))
            .try_get_matches_from(Vec::<&str>::new())
            .unwrap();
        assert_eq!(
            QuerySetConfig::from_arg_matches(&m).unwrap(),
            QuerySetConfig::default()
        );
    }
}
