//! `bergson recall`: [`RecallConfig`] (scores judged by synthetic factual recall) and
//! [`RecallDataConfig`] (which synthetic-facts datasets were trained on and scored), with
//! Bergson 2.5.1's flag names and defaults.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::flags::{clap_default, parse_bool};

/// Identity of the cached synthetic-facts datasets (Bergson's `RecallDataConfig`): generated
/// once per `(num_people, seed, single_paraphrase)` under `data_dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct RecallDataConfig {
    /// Synthetic people to generate facts for (at most the number of first names listed).
    #[arg(long, alias = "data.num_people", default_value_t = 1000)]
    pub num_people: usize,
    /// Seed of the profile generation; part of the dataset identity.
    #[arg(
        long,
        alias = "data.seed",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub seed: i64,
    /// Keep one statement per person and field (each question has exactly one gold document).
    #[arg(long, alias = "data.single_paraphrase", value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub single_paraphrase: bool,
    /// Directory with the `names/` and `templates/` source lists; the generated `*.hf`
    /// datasets are cached here.
    #[arg(long, alias = "data.data_dir", default_value = "data")]
    pub data_dir: String,
}

impl Default for RecallDataConfig {
    fn default() -> Self {
        clap_default()
    }
}

/// `bergson recall` (Bergson's `RecallConfig`): MRR and Recall@k of a score store whose columns
/// are the synthetic questions and whose rows are the synthetic statements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
#[command(rename_all = "snake_case")]
pub struct RecallConfig {
    /// Directory to save `recall.csv` and `summary.csv` in.
    #[arg(default_value = "")]
    pub run_path: String,
    /// A score directory (`scores.bin`, `info.json`) with one column per question.
    #[arg(long, default_value = "")]
    pub scores: String,
    /// The synthetic-facts datasets that were trained on and scored.
    #[command(flatten)]
    pub data: RecallDataConfig,
    /// Cutoff of Recall@k.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Whether a higher score is a stronger proponent (influence functions: true; unrolled
    /// differentiation such as MAGIC: false). Unset: read from the score run's `score_cfg`,
    /// true when it has none.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub higher_is_better: Option<bool>,
}

impl Default for RecallConfig {
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
        c: RecallConfig,
    }

    #[test]
    fn defaults_are_bergsons() {
        let c = RecallConfig::default();
        assert_eq!(c.k, 10);
        assert_eq!(c.higher_is_better, None);
        assert_eq!(c.data.num_people, 1000);
        assert_eq!(c.data.seed, 0);
        assert!(!c.data.single_paraphrase);
        assert_eq!(c.data.data_dir, "data");
    }

    #[test]
    fn flat_and_dotted_spellings_parse() {
        let c = Cli::parse_from([
            "x",
            "out",
            "--scores",
            "s",
            "--num_people",
            "7",
            "--data.seed",
            "3",
            "--single_paraphrase",
            "--higher_is_better",
            "false",
        ])
        .c;
        assert_eq!(c.run_path, "out");
        assert_eq!((c.data.num_people, c.data.seed), (7, 3));
        assert!(c.data.single_paraphrase);
        assert_eq!(c.higher_is_better, Some(false));
    }

    #[test]
    fn yaml_keys_nest_data_as_bergson() {
        let c: RecallConfig =
            serde_json::from_str(r#"{"run_path":"r","data":{"num_people":5},"k":3}"#).unwrap();
        assert_eq!((c.data.num_people, c.k), (5, 3));
    }
}
