//! One config struct per subcommand: the single source of CLI flags (clap), YAML keys and the
//! saved `config.yaml` (serde). Field names, order, defaults and nesting follow Python Bergson
//! 2.5.1's dataclasses, so run files move between the two tools.

mod build;
mod enums;
mod flags;
mod hessian;
mod magic;
mod mix;
mod query;
pub mod run_file;
mod score;
mod train;

pub use build::{
    AttentionConfig, BuildConfig, DataConfig, DistributedConfig, IndexConfig, InversionConfig,
    PreprocessConfig,
};
pub use enums::{
    Aggregation, HessianDtype, HessianMethod, Inversion, LossFn, LossReduction, PrecisionChoice,
    ProjectionScale, ProjectionTarget, ProjectionType,
};
pub use flags::{clap_default, parse_bool};
pub use hessian::{HessianConfig, HessianRunConfig};
pub use magic::{ContrastConfig, MagicConfig, QueryAggregation, QuerySetConfig, ValidationMethod};
pub use mix::MixConfig;
pub use query::{FaissConfig, QueryConfig};
pub use score::{
    CandidateConfig, CandidateDirection, ScoreConfig, ScoreMode, ScorePrecision, ScoreRunConfig,
    TokenInfluence,
};
pub use train::{
    LrScheduleConfig, LrSchedulerType, OptimizerKind, SaveMode, SaveOptimizerState,
    TrainLossReduction, TrainingConfig,
};
