//! [`QuerySetConfig`]: what a recipe attributes to (Bergson's `QuerySetConfig`): the query
//! dataset, how its gradients combine, an optional contrast set subtracted from them, or an
//! existing query index instead of all that.
//!
//! On the command line its dataset flags are the `DataConfig` ones prefixed `--query.`, the
//! contrast set's prefixed `--contrast.`, as simple_parsing spells them when a command holds
//! several `DataConfig`s; `--query.aggregation` and `--path` are its own.

use clap::{ArgMatches, Command};
use serde::{Deserialize, Serialize};

use super::build::DataConfig;
use super::enums::Aggregation;
use super::renamed::{augment_renamed, from_renamed};

/// The query dataset and aggregation of a recipe.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QuerySetConfig {
    /// The query dataset.
    pub data: DataConfig,
    /// `none`: one score column per query; `mean` / `sum`: one target gradient.
    pub aggregation: Aggregation,
    /// Control dataset whose aggregated gradient is subtracted from the query's (needs
    /// `aggregation` mean or sum).
    pub contrast: Option<DataConfig>,
    /// An existing query index to use instead of building one from `data`.
    pub path: String,
}

/// Bergson's YAML layout: the dataset fields inline, then aggregation, contrast and path.
#[derive(Serialize)]
struct QuerySetRef<'a> {
    #[serde(flatten)]
    data: &'a DataConfig,
    aggregation: Aggregation,
    contrast: &'a Option<DataConfig>,
    path: &'a str,
}

#[derive(Deserialize)]
struct QuerySetOwned {
    #[serde(flatten)]
    data: DataConfig,
    #[serde(default)]
    aggregation: Aggregation,
    #[serde(default)]
    contrast: Option<DataConfig>,
    #[serde(default)]
    path: String,
}

impl Serialize for QuerySetConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        QuerySetRef {
            data: &self.data,
            aggregation: self.aggregation,
            contrast: &self.contrast,
            path: &self.path,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for QuerySetConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let q = QuerySetOwned::deserialize(d)?;
        Ok(QuerySetConfig {
            data: q.data,
            aggregation: q.aggregation,
            contrast: q.contrast,
            path: q.path,
        })
    }
}

const AGGREGATION: &str = "query.aggregation";
const PATH: &str = "query.path";

impl QuerySetConfig {
    /// Adds the `--query.*`, `--contrast.*` and `--path` flags to `cmd`.
    pub(crate) fn augment(cmd: Command) -> Command {
        let cmd = augment_renamed::<DataConfig>(cmd, "query", |l| format!("query.{l}"));
        let cmd = augment_renamed::<DataConfig>(cmd, "contrast", |l| format!("contrast.{l}"));
        cmd.arg(
            clap::Arg::new(AGGREGATION)
                .long("query.aggregation")
                .value_parser(clap::builder::EnumValueParser::<Aggregation>::new())
                .default_value("none")
                .help("How the query gradients combine: one score column per query (none), or one target gradient (mean, sum)"),
        )
        .arg(
            clap::Arg::new(PATH)
                .long("path")
                .default_value("")
                .help("An existing query index to use instead of building one from the --query.* dataset"),
        )
    }

    /// The query set from the flags [`QuerySetConfig::augment`] added.
    pub(crate) fn from_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let (data, _) = from_renamed::<DataConfig>(m, "query")?;
        let (contrast, given) = from_renamed::<DataConfig>(m, "contrast")?;
        Ok(QuerySetConfig {
            data,
            aggregation: m
                .get_one::<Aggregation>(AGGREGATION)
                .copied()
                .unwrap_or_default(),
            contrast: given.then_some(contrast),
            path: m.get_one::<String>(PATH).cloned().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
