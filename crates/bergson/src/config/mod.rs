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
