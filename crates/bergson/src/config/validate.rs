//! `bergson validate`: [`ValidateConfig`], as Python Bergson 2.5.1's `Validate` command holds
//! it (`cli/commands.py`: `ValidationConfig` over `TrainingConfig`, plus `--scores` and
//! `--baseline_model`). The method is a tagged subgroup in Bergson (`--method lds|filter|
//! weight_step`, each with its own flags); here its flags are flat, and the two that the
//! methods share with different defaults (`--count`, `--fraction`) take theirs from the
//! method when not given. `config.yaml` nests them as Bergson does
//! (`method: {kind: lds, count: ..., ...}`).

use clap::Args;
use serde::{Deserialize, Serialize};

use super::flags::{clap_default, parse_bool};
use super::magic::{MagicQuerySet, ValidationMethod};
use super::train::TrainingConfig;

/// `--subsets` of `--method lds`: where the leave-k-out models come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SubsetSource {
    /// Retrained here.
    #[default]
    Retrain,
    /// Read from a bank of runs written with `--save_models`.
    Bank,
}

/// `--direction` of `--method filter`: which end of the score ranking is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FilterDirection {
    /// The most negative (loss-signed) scores: the documents that help the query most.
    #[default]
    Proponents,
    /// The most positive scores.
    Detractors,
}

impl FilterDirection {
    /// Bergson's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterDirection::Proponents => "proponents",
            FilterDirection::Detractors => "detractors",
        }
    }
}

/// `--controls` (alias `--kind`) of `--method filter`: the random removals it is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ControlsKind {
    /// Retrained here.
    #[default]
    Retrain,
    /// Read from a bank of runs written with `--save_models`.
    Bank,
    /// No random controls.
    None,
}

/// The LDS default of `--count`.
pub const LDS_DEFAULT_COUNT: usize = 100;
/// The filter controls' default of `--count`.
pub const CONTROLS_DEFAULT_COUNT: usize = 3;
/// The LDS default of `--fraction`.
pub const LDS_DEFAULT_FRACTION: f64 = 0.0;
/// The filter default of `--fraction`.
pub const FILTER_DEFAULT_FRACTION: f64 = 0.01;

/// `bergson validate` (Bergson's `Validate`): the training settings shared with `train` and
/// `magic`, the query set, the leave-k-out settings and the method's own flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
#[command(rename_all = "snake_case")]
pub struct ValidateConfig {
    /// The training run the scores came from (Bergson's `TrainingConfig`): every retrain
    /// repeats it with some documents' weights changed.
    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainingConfig,
    /// Average the query gradient over the last k checkpoints (only 1 is supported).
    #[arg(long, default_value_t = 1)]
    pub ckpt_avg_k: usize,
    /// The query set whose loss the scores predict.
    #[command(flatten)]
    pub query: MagicQuerySet,
    /// Training weight of a left-out subset's documents (0: removal).
    #[arg(long, default_value_t = 0.0)]
    pub subset_weight: f64,
    /// Leave documents whose scores are all zero out of the draws.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub exclude_zero_scores: bool,
    /// Validation method.
    #[arg(long, value_enum, default_value_t = ValidationMethod::Lds)]
    #[serde(skip)]
    pub method: ValidationMethod,
    /// The attribution scores to validate: a score directory (`scores.bin`, `info.json`).
    #[arg(long, default_value = "")]
    pub scores: String,
    /// A model already trained on the full data (skips the baseline training).
    #[arg(long, default_value = "")]
    pub baseline_model: String,
    /// lds: where the leave-k-out models come from.
    #[arg(long, value_enum, default_value_t = SubsetSource::Retrain)]
    #[serde(skip)]
    pub subsets: SubsetSource,
    /// lds: number of leave-k-out subsets (default 100); filter: number of random controls
    /// (default 3).
    #[arg(long)]
    #[serde(skip)]
    pub count: Option<usize>,
    /// lds: fraction of the documents in each subset (default 0: partition the documents
    /// into `count` disjoint subsets); filter: fraction removed (default 0.01).
    #[arg(long)]
    #[serde(skip)]
    pub fraction: Option<f64>,
    /// lds: a subsets.json to reuse (default `<run_path>/subsets.json` when it exists).
    #[arg(long, default_value = "")]
    #[serde(skip)]
    pub manifest: String,
    /// lds bank / filter bank controls: run directories of retrained models (comma-separated
    /// or repeated).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    #[serde(skip)]
    pub paths: Vec<String>,
    /// lds: first subset to retrain (with `--stop`: a slice for parallel processes).
    #[arg(long, default_value_t = 0)]
    #[serde(skip)]
    pub start: usize,
    /// lds: one past the last subset to retrain (default: all).
    #[arg(long)]
    #[serde(skip)]
    pub stop: Option<usize>,
    /// filter: which tail of the ranking to remove.
    #[arg(long, value_enum, default_value_t = FilterDirection::Proponents)]
    #[serde(skip)]
    pub direction: FilterDirection,
    /// filter: where the random controls come from.
    #[arg(long, value_enum, alias = "kind", default_value_t = ControlsKind::Retrain)]
    #[serde(skip)]
    pub controls: ControlsKind,
    /// weight_step: learning rates of the step on the data weights (`1 - lr * score`).
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "1.0")]
    #[serde(skip)]
    pub lrs: Vec<f64>,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        clap_default()
    }
}

/// A run-file step as `config.yaml` holds it ([`ValidateConfig::to_yaml_value`]): the own keys
/// and the nested `method` block taken out, the rest a strict `TrainingConfig`.
impl TryFrom<serde_json::Map<String, serde_json::Value>> for ValidateConfig {
    type Error = String;

    fn try_from(mut map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        use super::flags::take_key as take;
        let mut c = ValidateConfig::default();
        take(&mut map, "ckpt_avg_k", &mut c.ckpt_avg_k)?;
        take(&mut map, "query", &mut c.query)?;
        take(&mut map, "subset_weight", &mut c.subset_weight)?;
        take(&mut map, "exclude_zero_scores", &mut c.exclude_zero_scores)?;
        take(&mut map, "scores", &mut c.scores)?;
        take(&mut map, "baseline_model", &mut c.baseline_model)?;
        match map.remove("method") {
            None => {}
            Some(serde_json::Value::String(kind)) => {
                c.method = serde_json::from_value(serde_json::Value::String(kind))
                    .map_err(|e| format!("method: {e}"))?;
            }
            Some(serde_json::Value::Object(mut m)) => {
                take(&mut m, "kind", &mut c.method)?;
                let mut count = None;
                let mut fraction = None;
                take(&mut m, "subsets", &mut c.subsets)?;
                take(&mut m, "count", &mut count)?;
                take(&mut m, "fraction", &mut fraction)?;
                take(&mut m, "manifest", &mut c.manifest)?;
                take(&mut m, "paths", &mut c.paths)?;
                take(&mut m, "start", &mut c.start)?;
                take(&mut m, "stop", &mut c.stop)?;
                take(&mut m, "direction", &mut c.direction)?;
                take(&mut m, "lrs", &mut c.lrs)?;
                if let Some(serde_json::Value::Object(mut controls)) = m.remove("controls") {
                    take(&mut controls, "kind", &mut c.controls)?;
                    take(&mut controls, "count", &mut count)?;
                    take(&mut controls, "paths", &mut c.paths)?;
                    if let Some(k) = controls.keys().next() {
                        return Err(format!("method.controls: unknown key `{k}`"));
                    }
                }
                if let Some(k) = m.keys().next() {
                    return Err(format!("method: unknown key `{k}`"));
                }
                c.count = count;
                c.fraction = fraction;
            }
            Some(other) => {
                return Err(format!("method: expected a name or a mapping, got {other}"))
            }
        }
        c.train =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())?;
        Ok(c)
    }
}

impl ValidateConfig {
    /// `--count` as the method reads it: LDS subsets, or filter controls (`None`: every
    /// subset of a bank).
    pub fn count(&self) -> Option<usize> {
        match (self.method, self.count) {
            (_, Some(n)) => Some(n),
            (ValidationMethod::Lds, None) => Some(LDS_DEFAULT_COUNT),
            (ValidationMethod::Filter, None) if self.controls == ControlsKind::Bank => None,
            (_, None) => Some(CONTROLS_DEFAULT_COUNT),
        }
    }

    /// `--fraction` as the method reads it.
    pub fn fraction(&self) -> f64 {
        self.fraction.unwrap_or(match self.method {
            ValidationMethod::Filter => FILTER_DEFAULT_FRACTION,
            _ => LDS_DEFAULT_FRACTION,
        })
    }

    /// The method's config as Bergson nests it (`{kind: ..., ...}`).
    pub fn method_yaml(&self) -> serde_json::Value {
        match self.method {
            ValidationMethod::Lds => serde_json::json!({
                "kind": "lds",
                "subsets": self.subsets,
                "count": self.count(),
                "fraction": self.fraction(),
                "manifest": self.manifest,
                "paths": self.paths,
                "start": self.start,
                "stop": self.stop,
            }),
            ValidationMethod::Filter => serde_json::json!({
                "kind": "filter",
                "direction": self.direction,
                "fraction": self.fraction(),
                "controls": {"kind": self.controls, "count": self.count(), "paths": self.paths},
            }),
            ValidationMethod::WeightStep => serde_json::json!({
                "kind": "weight_step",
                "lrs": self.lrs,
            }),
        }
    }

    /// The config as `config.yaml` holds it: the flat fields and the nested `method`.
    pub fn to_yaml_value(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("method".into(), self.method_yaml());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Command, FromArgMatches};

    fn parse(args: &[&str]) -> ValidateConfig {
        let cmd = ValidateConfig::augment_args(Command::new("validate").no_binary_name(true));
        let m = cmd.try_get_matches_from(args).unwrap();
        ValidateConfig::from_arg_matches(&m).unwrap()
    }

    /// Bergson 2.5.1's defaults (`bergson validate --help`, per method).
    #[test]
    fn defaults_follow_the_method() {
        let c = parse(&["run"]);
        assert_eq!(c.method, ValidationMethod::Lds);
        assert_eq!((c.count(), c.fraction()), (Some(100), 0.0));
        assert_eq!((c.subset_weight, c.exclude_zero_scores), (0.0, false));
        let c = parse(&["run", "--method", "filter"]);
        assert_eq!((c.count(), c.fraction()), (Some(3), 0.01));
        assert_eq!(c.direction, FilterDirection::Proponents);
        let c = parse(&["run", "--method", "filter", "--kind", "bank"]);
        assert_eq!((c.controls, c.count()), (ControlsKind::Bank, None));
        let c = parse(&["run", "--method", "weight_step", "--lrs", "0.5,2"]);
        assert_eq!(c.lrs, [0.5, 2.0]);
        let c = parse(&["run", "--method", "weight_step", "--lrs", "0.5", "2"]);
        assert_eq!(c.lrs, [0.5, 2.0]);
        assert_eq!(parse(&["run"]).lrs, [1.0]);
        let c = parse(&["run", "--count", "6", "--stop", "3", "--scores", "s"]);
        assert_eq!(
            (c.count(), c.stop, c.scores.as_str()),
            (Some(6), Some(3), "s")
        );
        let y = c.to_yaml_value();
        assert_eq!(y["method"]["kind"], "lds");
        assert_eq!(y["method"]["count"], 6);
        assert_eq!(y["scores"], "s");
    }
}
