//! The metagradient that MAGIC computes, checked against retraining: d(final query loss) /
//! d(per-document data weights) through 8 AdamW steps on a tiny GPT-NeoX in float64, taken by
//! double backward through the unrolled, traced training, must match central differences of
//! full retraining with each weight nudged up and down (relative error < 1e-6; measured
//! 4e-9 to 6e-8). AdamW with Bergson's defaults (betas 0.95/0.975, eps 1e-8, eps_root 1e-17,
//! weight decay 0.01). The same through 8 Muon steps (Newton-Schulz on the weight matrices,
//! AdamW on the rest), with the metagradient taken as `bergson magic` takes it: MAGIC's
//! backward (`bergson::magic::backward`), one vector-Jacobian product per step carrying the
//! adjoints of the parameters and of the momentum buffers and moments.

use bergson::config::{LrScheduleConfig, LrSchedulerType, OptimizerKind, TrainLossReduction};
use bergson::data::tokenize::TokenizedRow;
use bergson::engine::Precision;
use bergson::magic::backward::{backward, Adjoint, BackwardSettings, SavedState};
use bergson::models::ModelSpec;
use bergson::train::loss::weighted_causal_lm_ce;
use bergson::train::{DataStream, LrSchedule, Optimizer, StepSettings, Trainer, WeightShape};
use std::path::Path;
use tch::{Device, Kind, Tensor};

const STEPS: usize = 8;
/// AdamW's epsilon outside the square root (Bergson's default).
const ADAM_EPS: f64 = 1e-8;

fn rows() -> Vec<TokenizedRow> {
    // Eight documents of 3-7 tokens with ids below the fixture's vocabulary of 512.
    (0..8)
        .map(|i: i64| TokenizedRow {
            input_ids: (0..3 + i % 5)
                .map(|t| (i * 37 + t * 11) % 500 + 3)
                .collect(),
            labels: None,
        })
        .collect()
}

struct Setup {
    spec: ModelSpec,
    dir: std::path::PathBuf,
    kind: OptimizerKind,
}

impl Setup {
    fn new(kind: OptimizerKind) -> Self {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gpt_neox");
        let spec = ModelSpec::from_dir(&dir, Precision::Fp64, Device::Cpu).unwrap();
        Self { spec, dir, kind }
    }

    fn trainer(&self, num_steps: usize) -> (Trainer, bergson::train::TrainerState) {
        let model = self.spec.load(&self.dir).unwrap();
        let schedule = LrSchedule::new(
            &LrScheduleConfig {
                lr: 1e-3,
                lr_scheduler_type: LrSchedulerType::Linear,
                ..Default::default()
            },
            num_steps,
        );
        let optimizer = Optimizer {
            kind: self.kind,
            beta1: 0.95,
            beta2: 0.975,
            eps: ADAM_EPS,
            eps_root: 1e-17,
            weight_decay: 0.01,
            schedule,
        };
        let settings = StepSettings {
            reduction: TrainLossReduction::Mean,
            max_grad_norm: None,
            grad_accum_steps: 1,
            logit_scale: 1.0,
        };
        Trainer::new(self.spec.clone(), model.as_ref(), optimizer, settings).unwrap()
    }

    fn stream(&self, weights: Tensor) -> DataStream {
        let mut s = DataStream::new(
            &rows(),
            None,
            2,
            2,
            42,
            WeightShape::PerDocument,
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(s.len(), STEPS);
        s.set_weights(weights).unwrap();
        s
    }

    /// The query loss at the end of training: the token-mean loss of two documents.
    fn query_loss(&self, trainer: &Trainer, params: &[Tensor]) -> Tensor {
        let q = DataStream::new(
            &rows()[..2],
            None,
            2,
            1,
            0,
            WeightShape::PerDocument,
            Device::Cpu,
        )
        .unwrap();
        let b = q.batch(0);
        let logits = trainer.model_on(params).unwrap().forward(&b.input_ids);
        weighted_causal_lm_ce(
            &logits,
            &b.labels,
            None,
            &b.shift_loss_mask,
            TrainLossReduction::Mean,
        )
    }

    /// Full retraining with data weights `w` (no graph): the final query loss.
    fn retrain(&self, w: &Tensor) -> f64 {
        let (trainer, state) = self.trainer(STEPS);
        let stream = self.stream(w.shallow_clone());
        let state = trainer
            .train(state, &stream, |_| Ok(()), |_, _| Ok(()))
            .unwrap();
        let _g = tch::no_grad_guard();
        self.query_loss(&trainer, &state.params).double_value(&[])
    }
}

#[test]
fn metagradient_through_adamw_matches_retraining() {
    // Tiny models: one thread is fastest, and keeps the test fast on a loaded CI machine.
    tch::set_num_threads(1);
    let setup = Setup::new(OptimizerKind::Adamw);
    let ones = Tensor::ones([8], (Kind::Double, Device::Cpu));

    // Analytic: unroll 8 traced steps and backpropagate the query loss to the weights.
    let weights = ones.copy().set_requires_grad(true);
    let (trainer, mut state) = setup.trainer(STEPS);
    state.params = state
        .params
        .iter()
        .map(|p| p.detach().set_requires_grad(true))
        .collect();
    let stream = setup.stream(weights.shallow_clone());
    for i in 0..STEPS {
        state = trainer.step(&state, &stream.batch(i), true).unwrap().0;
    }
    let loss = setup.query_loss(&trainer, &state.params);
    let metagrad = Tensor::run_backward(&[loss], &[&weights], false, false).remove(0);

    check_against_retraining(&setup, &metagrad);
}

#[test]
fn metagradient_through_muon_matches_retraining() {
    tch::set_num_threads(1);
    let setup = Setup::new(OptimizerKind::Muon);
    let ones = Tensor::ones([8], (Kind::Double, Device::Cpu));
    let (trainer, initial) = setup.trainer(STEPS);
    let stream = setup.stream(ones.copy().set_requires_grad(true));
    let mut states = vec![initial];
    for i in 0..STEPS {
        let next = trainer.step(&states[i], &stream.batch(i), false).unwrap().0;
        states.push(next);
    }
    // MAGIC's backward from the query gradient at the final state, every state kept.
    let last = &states[STEPS];
    let leaves: Vec<Tensor> = (last.params.iter())
        .map(|p| p.detach().set_requires_grad(true))
        .collect();
    let loss = setup.query_loss(&trainer, &leaves);
    let grads = Tensor::run_backward(&[loss], &leaves, false, false);
    let end = Adjoint::at_end(grads, last, &stream.weights);
    let saved = (0..STEPS)
        .map(|i| (i, SavedState::Memory(states[i].detach())))
        .collect();
    let settings = BackwardSettings {
        save_mode: bergson::config::SaveMode::All,
        cleanup: false,
        save_every: 0,
        state_file: None,
        resume: false,
        keep_gradients: true,
    };
    let no_disk = |_: &Path| -> bergson::Result<bergson::train::TrainerState> {
        unreachable!("in-memory states only")
    };
    let adjoints = backward(&trainer, &stream, saved, &no_disk, vec![end], &settings).unwrap();
    check_against_retraining(&setup, &adjoints[0].weights);
}

/// Compares `metagrad` with central differences of retraining for three documents.
fn check_against_retraining(setup: &Setup, metagrad: &Tensor) {
    let ones = Tensor::ones([8], (Kind::Double, Device::Cpu));
    // Numeric: central differences of retraining, Richardson-extrapolated (step h and h/2,
    // cancelling the h² error term). AdamW's normalisation g / (sqrt(v) + eps) bends sharply
    // where a gradient entry is of the order of eps, which makes the third derivative of the
    // training map large: plain central differences need h far below 1e-4 to reach 1e-6.
    let h = 2e-6;
    for doc in [0i64, 3, 7] {
        let nudged = |s: f64| {
            let w = ones.copy();
            let _ = w.narrow(0, doc, 1).fill_(1.0 + s);
            setup.retrain(&w)
        };
        let central = |h: f64| (nudged(h) - nudged(-h)) / (2.0 * h);
        let numeric = (4.0 * central(h / 2.0) - central(h)) / 3.0;
        let analytic = metagrad.double_value(&[doc]);
        let rel = (analytic - numeric).abs() / numeric.abs();
        eprintln!("{:?} doc {doc}: relative error {rel:.1e}", setup.kind);
        assert!(
            rel < 1e-6,
            "doc {doc}: metagradient {analytic:e} vs retraining {numeric:e} (rel {rel:e})"
        );
    }
}
