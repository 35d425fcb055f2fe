//! Training on explicit parameters, as Python Bergson 2.5.1's MAGIC trainer does
//! (`bergson/magic/`): the foundation of `bergson train` and of metagradients.
//!
//! One job per module: [`schedule`] (learning rates), [`optimizer`] (functional AdamW with
//! `eps_root`, SGD, Muon; Newton-Schulz in [`muon`]), [`loss`] (the weighted causal-LM cross-entropy), [`stream`] (shuffled,
//! padded batches and the data weights), [`trainer`] (functional steps, traced or not),
//! [`collect`] (training-time gradient collection, `--collect_gradients`),
//! [`checkpoint`] (what a run writes) and [`run`] (the `bergson train` pipeline).

pub mod checkpoint;
pub mod collect;
pub mod loss;
pub mod muon;
pub mod optimizer;
pub mod run;
pub mod schedule;
pub mod stream;
pub mod trainer;

pub use collect::TrainingGradients;
pub use optimizer::{OptState, Optimizer, UpdateAdjoint};
pub use run::{
    prepare_training, prepare_training_in, train, train_collecting, train_in, TrainSummary,
    TrainingRun, WeightChoice,
};
pub use schedule::LrSchedule;
pub use stream::{Batch, DataStream, WeightShape};
pub use trainer::{StepSettings, TracedGradient, Trainer, TrainerState};
