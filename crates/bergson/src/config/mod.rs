//! One config struct per subcommand: the single source of CLI flags (clap), YAML keys and the
//! saved `config.yaml` (serde). Field names, order, defaults and nesting follow Python Bergson
//! 2.5.1's dataclasses, so run files move between the two tools.

mod approx_unrolling;
mod build;
mod ekfac;
mod enums;
mod flags;
mod hessian;
mod lissa;
mod magic;
mod metasmoothness;
mod mix;
mod query;
mod query_set;
mod recall;
mod renamed;
pub mod run_file;
mod score;
mod trackstar;
mod train;
mod train_collect;
mod trak;
mod validate;

pub use approx_unrolling::{ApproxUnrollingConfig, ApproxUnrollingRunConfig};
pub use build::{
    AttentionConfig, BuildConfig, DataConfig, DistributedConfig, IndexConfig, InversionConfig,
    PreprocessConfig,
};
pub use ekfac::{AstraConfig, AstraSolver, EkfacRunConfig, HessianPipelineConfig};
pub use enums::{
    Aggregation, HessianDtype, HessianMethod, Inversion, LossFn, LossReduction, PrecisionChoice,
    ProjectionScale, ProjectionTarget, ProjectionType,
};
pub use flags::{clap_default, parse_bool};
pub use hessian::{HessianConfig, HessianRunConfig};
pub use lissa::{LissaConfig, LissaRunConfig};
pub use magic::{MagicConfig, MagicQuerySet, ValidationMethod};
pub use metasmoothness::MetasmoothnessConfig;
pub use mix::MixConfig;
pub use query::{FaissConfig, QueryConfig};
pub use query_set::QuerySetConfig;
pub use recall::{RecallConfig, RecallDataConfig};
pub use score::{
    CandidateConfig, CandidateDirection, ScoreConfig, ScoreMode, ScorePrecision, ScoreRunConfig,
    TokenInfluence,
};
pub use trackstar::{TrackstarConfig, TrackstarRunConfig, TRACKSTAR_PROJECTION_DIM};
pub use train::{
    LrScheduleConfig, LrSchedulerType, OptimizerKind, SaveMode, SaveOptimizerState,
    TrainLossReduction, TrainingConfig,
};
pub use train_collect::{CollectGradientsConfig, GradientStoreDtype};
pub use trak::{TrakConfig, TrakRunConfig};
pub use validate::{ControlsKind, FilterDirection, SubsetSource, ValidateConfig};

/// A YAML parser's message without its hints to Rust programmers ("use Option<String>"),
/// which mean nothing to someone editing a config file.
pub fn yaml_message(e: &impl std::fmt::Display) -> String {
    let mut text = e.to_string();
    while let Some(at) = text.find("; use Option<") {
        let end = text[at..].find('>').map_or(text.len(), |i| at + i + 1);
        text.replace_range(at..end, "");
    }
    text
}

#[cfg(test)]
mod yaml_message_tests {
    #[test]
    fn rust_hints_are_dropped() {
        let e = serde_saphyr::from_str::<String>("null").unwrap_err();
        let m = super::yaml_message(&e);
        assert!(m.contains("cannot deserialize null into string"), "{m}");
        assert!(!m.contains("Option<"), "{m}");
    }
}
