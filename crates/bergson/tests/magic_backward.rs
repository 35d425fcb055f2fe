//! MAGIC's checkpointed backward (`bergson::magic::backward`) on a tiny GPT-NeoX in float64:
//! walking back from `sqrt`- or `log`-spaced checkpoints (recomputing the states between
//! them) gives the same metagradients as keeping every state (`all`), and both equal plain
//! reverse-mode autodiff through the whole unrolled training (relative error < 1e-12). An
//! interrupted backward that saved its adjoints resumes to the same result.

use bergson::config::{
    LrScheduleConfig, LrSchedulerType, OptimizerKind, SaveMode, TrainLossReduction,
};
use bergson::data::tokenize::TokenizedRow;
use bergson::engine::Precision;
use bergson::magic::backward::{backward, Adjoint, BackwardSettings, SavedState};
use bergson::models::ModelSpec;
use bergson::train::checkpoint::{load_state, save_schedule, save_state};
use bergson::train::loss::weighted_causal_lm_ce;
use bergson::train::{
    DataStream, LrSchedule, Optimizer, StepSettings, Trainer, TrainerState, WeightShape,
};
use std::cell::Cell;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// 9 documents in batches of 2 over 2 epochs: 18 rows, 9 steps (not a square: sqrt's last
/// segment is longer than the others).
const STEPS: usize = 9;

fn rows() -> Vec<TokenizedRow> {
    (0..9)
        .map(|i: i64| TokenizedRow {
            input_ids: (0..3 + i % 4)
                .map(|t| (i * 41 + t * 13) % 500 + 3)
                .collect(),
            labels: None,
        })
        .collect()
}

fn trainer() -> (Trainer, TrainerState) {
    trainer_with(OptimizerKind::Adamw, 1, None)
}

/// The trainer with another optimizer, micro-batches per step and clipping.
fn trainer_with(
    kind: OptimizerKind,
    grad_accum_steps: usize,
    max_grad_norm: Option<f64>,
) -> (Trainer, TrainerState) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gpt_neox");
    let spec = ModelSpec::from_dir(&dir, Precision::Fp64, Device::Cpu).unwrap();
    let model = spec.load(&dir).unwrap();
    let schedule = LrSchedule::new(
        &LrScheduleConfig {
            lr: 2e-3,
            lr_scheduler_type: LrSchedulerType::Linear,
            ..Default::default()
        },
        STEPS,
    );
    let optimizer = Optimizer {
        kind,
        beta1: 0.95,
        beta2: 0.975,
        eps: 1e-8,
        eps_root: 1e-8,
        weight_decay: 0.01,
        schedule,
    };
    let settings = StepSettings {
        reduction: TrainLossReduction::Mean,
        max_grad_norm,
        grad_accum_steps,
        logit_scale: 1.0,
    };
    Trainer::new(spec.clone(), model.as_ref(), optimizer, settings).unwrap()
}

fn stream() -> DataStream {
    let mut s = DataStream::new(
        &rows(),
        None,
        2,
        2,
        3,
        WeightShape::PerDocument,
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(s.len(), STEPS);
    let w = s.weights.detach().set_requires_grad(true);
    s.set_weights(w).unwrap();
    s
}

/// The query loss: the token mean over the first three documents.
fn query_loss(trainer: &Trainer, params: &[Tensor]) -> Tensor {
    let q = DataStream::in_order(&rows()[..3], 3, Device::Cpu).unwrap();
    let (b, _) = q.batch(0).without_padded_rows();
    let logits = trainer.model_on(params).unwrap().forward(&b.input_ids);
    weighted_causal_lm_ce(
        &logits,
        &b.labels,
        None,
        &b.shift_loss_mask,
        TrainLossReduction::Mean,
    )
}

/// Every state of the run, 0..STEPS (before each step), and the final one.
fn trajectory(trainer: &Trainer, state: TrainerState, data: &DataStream) -> Vec<TrainerState> {
    let mut states = vec![state];
    for i in 0..STEPS {
        let next = trainer.step(&states[i], &data.batch(i), false).unwrap().0;
        states.push(next);
    }
    states
}

fn end_adjoint(trainer: &Trainer, last: &TrainerState, data: &DataStream) -> Adjoint {
    let leaves: Vec<Tensor> = last
        .params
        .iter()
        .map(|p| p.detach().set_requires_grad(true))
        .collect();
    let loss = query_loss(trainer, &leaves);
    let grads = Tensor::run_backward(&[loss], &leaves, false, false);
    Adjoint::at_end(grads, last, &data.weights)
}

fn settings(mode: SaveMode) -> BackwardSettings {
    BackwardSettings {
        save_mode: mode,
        cleanup: false,
        save_every: 0,
        state_file: None,
        resume: false,
        keep_gradients: true,
    }
}

fn in_memory(states: &[TrainerState], mode: SaveMode) -> Vec<(usize, SavedState)> {
    save_schedule(STEPS, mode, 0)
        .unwrap()
        .into_iter()
        .map(|i| (i, SavedState::Memory(states[i].detach())))
        .collect()
}

/// The reference metagradient: one graph through all the traced steps from `initial`,
/// differentiated once.
fn unrolled_metagradient(trainer: &Trainer, initial: &TrainerState, data: &DataStream) -> Tensor {
    let mut s = TrainerState {
        params: (initial.params.iter())
            .map(|p| p.detach().set_requires_grad(true))
            .collect(),
        opt: initial.opt.detach(),
        batch_index: 0,
    };
    for i in 0..STEPS {
        s = trainer.step(&s, &data.batch(i), true).unwrap().0;
    }
    Tensor::run_backward(
        &[query_loss(trainer, &s.params)],
        &[&data.weights],
        false,
        false,
    )
    .remove(0)
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[])
}

fn no_disk(_: &Path) -> bergson::Result<TrainerState> {
    unreachable!("in-memory checkpoints only")
}

#[test]
fn checkpointed_backward_equals_storing_every_state_and_unrolled_autodiff() {
    tch::set_num_threads(1);
    let (trainer, initial) = trainer();
    let data = stream();
    let states = trajectory(&trainer, initial.detach(), &data);
    let end = || end_adjoint(&trainer, &states[STEPS], &data);

    let run_with = |mode, keep_gradients| {
        let ckpts = in_memory(&states, mode);
        let settings = BackwardSettings {
            keep_gradients,
            ..settings(mode)
        };
        backward(&trainer, &data, ckpts, &no_disk, vec![end()], &settings)
            .unwrap()
            .remove(0)
    };
    let run = |mode| run_with(mode, true);
    let all = run(SaveMode::All);
    let unrolled = unrolled_metagradient(&trainer, &initial, &data);
    assert!(
        rel(&all.weights, &unrolled) < 1e-12,
        "all vs unrolled: {}",
        rel(&all.weights, &unrolled)
    );
    // Keeping the replay's traced gradients (sqrt) or recomputing them (sqrt without, log)
    // gives the same adjoints.
    for (mode, keep) in [
        (SaveMode::Sqrt, true),
        (SaveMode::Sqrt, false),
        (SaveMode::Log, true),
    ] {
        let got = run_with(mode, keep);
        let e = rel(&got.weights, &all.weights);
        assert!(e < 1e-12, "{mode:?}: relative error {e:e}");
        for (a, b) in got.params.iter().zip(&all.params) {
            assert!(rel(a, b) < 1e-10, "{mode:?}: parameter adjoints differ");
        }
    }
}

/// The backward's closed-form optimizer VJP with SGD, gradient clipping and two micro-batches
/// per step (and AdamW with clipping), kept replay gradients included: the same
/// metagradients as reverse-mode autodiff through the unrolled, fully traced training.
#[test]
fn closed_form_update_vjp_matches_unrolled_autodiff() {
    tch::set_num_threads(1);
    for (kind, accum, clip) in [
        (OptimizerKind::Sgd, 2, Some(0.05)),
        (OptimizerKind::Adamw, 2, Some(0.05)),
    ] {
        let (trainer, initial) = trainer_with(kind, accum, clip);
        let data = stream();
        let states = trajectory(&trainer, initial.detach(), &data);
        let end = end_adjoint(&trainer, &states[STEPS], &data);
        let got = backward(
            &trainer,
            &data,
            in_memory(&states, SaveMode::Sqrt),
            &no_disk,
            vec![end],
            &settings(SaveMode::Sqrt),
        )
        .unwrap()
        .remove(0);
        let unrolled = unrolled_metagradient(&trainer, &initial, &data);
        let e = rel(&got.weights, &unrolled);
        assert!(e < 1e-10, "{kind:?}: relative error {e:e}");
        assert!(unrolled.abs().max().double_value(&[]) > 0.0);
    }
}

/// Checkpoints on disk, the backward saving its adjoints every step: a backward that fails
/// halfway (a checkpoint that cannot be read) resumes from the saved adjoints to the result of
/// an uninterrupted one, and the consumed checkpoints are cleaned up as it goes.
#[test]
fn interrupted_backward_resumes_from_saved_adjoints() {
    tch::set_num_threads(1);
    let (trainer, initial) = trainer();
    let data = stream();
    let states = trajectory(&trainer, initial.detach(), &data);
    let tmp = tempfile::tempdir().unwrap();
    let ckpts = tmp.path().join("checkpoints");
    let names = trainer.names().to_vec();
    let traj = serde_json::json!({"test": 1});
    let schedule = save_schedule(STEPS, SaveMode::Sqrt, 0).unwrap();
    let on_disk = || -> Vec<(usize, SavedState)> {
        schedule
            .iter()
            .map(|&i| {
                (
                    i,
                    SavedState::Disk(save_state(&ckpts, &names, &states[i], &traj).unwrap()),
                )
            })
            .collect()
    };
    let loads = Cell::new(0usize);
    let fail_at = Cell::new(usize::MAX);
    let load = |p: &Path| {
        loads.set(loads.get() + 1);
        if loads.get() == fail_at.get() {
            return Err(bergson::Error::input("simulated failure"));
        }
        load_state(p, &names, &initial, &traj, Device::Cpu)
    };
    let end = || end_adjoint(&trainer, &states[STEPS], &data);
    let mut s = settings(SaveMode::Sqrt);
    s.save_every = 1;
    s.cleanup = true;
    s.state_file = Some(ckpts.join("backward_rank0.safetensors"));

    let whole = backward(&trainer, &data, on_disk(), &load, vec![end()], &s)
        .unwrap()
        .remove(0);
    // Only the last checkpoint survives cleanup, and the state file is gone.
    let left: Vec<_> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");

    std::fs::remove_dir_all(&ckpts).unwrap();
    loads.set(0);
    fail_at.set(4);
    let err = backward(&trainer, &data, on_disk(), &load, vec![end()], &s).unwrap_err();
    assert!(err.to_string().contains("simulated"), "{err}");
    assert!(s.state_file.as_ref().unwrap().is_file());
    fail_at.set(usize::MAX);
    s.resume = true;
    let remaining: Vec<(usize, SavedState)> =
        bergson::train::checkpoint::complete_checkpoints(&ckpts)
            .unwrap()
            .into_iter()
            .map(|(i, p)| (i, SavedState::Disk(p)))
            .collect();
    let resumed = backward(&trainer, &data, remaining, &load, vec![end()], &s)
        .unwrap()
        .remove(0);
    let e = rel(&resumed.weights, &whole.weights);
    assert!(e < 1e-12, "resumed vs whole: {e:e}");
    assert!(!s.state_file.as_ref().unwrap().exists());
}
