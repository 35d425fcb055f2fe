//! Where one MAGIC step's time goes: an untraced training step, a traced step (the graph kept
//! for differentiation) and the traced step plus its vector-Jacobian product, each averaged
//! over repetitions (process CPU time) on a model directory (fp32, AdamW at Bergson's defaults, 8 documents of 12
//! tokens a step).
//!
//! ```sh
//! cargo run -p bergson --example magic_step_profile -- <model_dir> [reps]
//! ```

use bergson::config::{LrScheduleConfig, LrSchedulerType, OptimizerKind, TrainLossReduction};
use bergson::data::tokenize::TokenizedRow;
use bergson::engine::Precision;
use bergson::magic::backward::{step_vjp, Adjoint};
use bergson::models::ModelSpec;
use bergson::train::{DataStream, LrSchedule, Optimizer, StepSettings, Trainer, WeightShape};
use tch::{Device, Tensor};

/// CPU seconds of this process (robust to other processes sharing the cores; run with
/// `OMP_NUM_THREADS=1` so that it is also the wall time).
fn cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1)
            .expect("usage: magic_step_profile <model_dir> [reps]"),
    );
    if std::env::var_os("MALLOPT").is_some() {
        // SAFETY: mallopt only tunes glibc's allocator.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
    let reps: usize = args.get(2).map_or(20, |r| r.parse().expect("reps"));
    let kind = match std::env::var("OPT").as_deref() {
        Ok("sgd") => OptimizerKind::Sgd,
        _ => OptimizerKind::Adamw,
    };
    let spec = ModelSpec::from_dir(&dir, Precision::Fp32, Device::Cpu).expect("model");
    let model = spec.load(&dir).expect("weights");
    let optimizer = Optimizer {
        kind,
        beta1: 0.95,
        beta2: 0.975,
        eps: 1e-8,
        eps_root: 1e-17,
        weight_decay: 0.01,
        schedule: LrSchedule::new(
            &LrScheduleConfig {
                lr: 1e-3,
                lr_scheduler_type: LrSchedulerType::Constant,
                ..Default::default()
            },
            1000,
        ),
    };
    let settings = StepSettings {
        reduction: TrainLossReduction::Mean,
        max_grad_norm: None,
        grad_accum_steps: 1,
        logit_scale: 1.0,
    };
    let (trainer, state) =
        Trainer::new(spec.clone(), model.as_ref(), optimizer, settings).expect("trainer");
    let rows: Vec<TokenizedRow> = (0..8 * 1000)
        .map(|i: i64| TokenizedRow {
            input_ids: (0..12).map(|t| (i * 37 + t * 11) % 500 + 3).collect(),
            labels: None,
        })
        .collect();
    let mut stream = DataStream::new(&rows, None, 8, 1, 0, WeightShape::PerDocument, Device::Cpu)
        .expect("stream");
    let weights = stream.weights.detach().set_requires_grad(true);
    stream.set_weights(weights).expect("weights");
    // Moments away from zero, as after a few steps.
    let (state, _) = trainer.step(&state, &stream.batch(0), false).unwrap();
    let time = |name: &str, f: &mut dyn FnMut()| {
        f();
        let t = cpu_seconds();
        for _ in 0..reps {
            f();
        }
        let ms = (cpu_seconds() - t) * 1e3 / reps as f64;
        println!("{name:>24}: {ms:8.2} ms");
        ms
    };
    let train = time("train step", &mut || {
        trainer.step(&state, &stream.batch(1), false).unwrap();
    });
    let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
    let _traced = time("traced step", &mut || {
        let start = bergson::train::TrainerState {
            params: state.params.iter().map(leaf).collect(),
            opt: state
                .opt
                .with_tensors(state.opt.tensors().into_iter().map(leaf).collect()),
            batch_index: 1,
        };
        trainer.step(&start, &stream.batch(1), true).unwrap();
    });
    let gradient = time("traced gradient", &mut || {
        let mut s = state.detach();
        s.batch_index = 1;
        trainer.traced_gradient(&s, &stream.batch(1)).unwrap();
    });
    let adj = || {
        vec![Adjoint::at_end(
            state.params.iter().map(|p| p.randn_like()).collect(),
            &state,
            &stream.weights,
        )]
    };
    let vjp = time("step VJP", &mut || {
        let mut s = state.detach();
        s.batch_index = 1;
        step_vjp(&trainer, &stream, &s, adj()).unwrap();
    });
    println!(
        "double backward {:.2} ms; (replay + VJP) / train = {:.2}",
        vjp - gradient,
        (train + vjp) / train
    );
}
