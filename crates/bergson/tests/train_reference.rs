//! `bergson train` (the library's `train::train`, which the CLI calls) against reference runs
//! of Python Bergson 2.5.1's `bergson train` on tiny fixture models
//! (tests/fixtures/scripts/make_train_refs.py → tests/fixtures/bergson_train/): the training
//! loss of every step, the learning-rate history, the final parameters and the AdamW second
//! moments in optimizer.pt; and the same for `--optimizer muon`
//! (tests/fixtures/scripts/make_muon_refs.py → tests/fixtures/bergson_muon/).

use bergson::config::{
    LrSchedulerType, OptimizerKind, SaveMode, SaveOptimizerState, TrainLossReduction,
    TrainingConfig,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn config(flags: &serde_json::Value, run: &Path) -> TrainingConfig {
    let get = |k: &str| flags.get(k);
    let f = |k: &str, d: f64| get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    let s = |k: &str| get(k).and_then(|v| v.as_str()).map(str::to_string);
    let mut c = TrainingConfig {
        run_path: run.display().to_string(),
        model: fixtures()
            .join("models")
            .join(s("model").unwrap())
            .display()
            .to_string(),
        batch_size: f("batch_size", 16.0) as usize,
        num_epochs: f("num_epochs", 1.0) as usize,
        seed: f("seed", 42.0) as u64,
        weight_decay: f("weight_decay", 0.01),
        max_grad_norm: get("max_grad_norm").and_then(|v| v.as_f64()),
        grad_accum_steps: f("grad_accum_steps", 1.0) as usize,
        save_mode: SaveMode::Final,
        wandb_project: String::new(),
        ..TrainingConfig::default()
    };
    c.data.dataset = fixtures()
        .join("bergson_train")
        .join(s("dataset").unwrap_or("train.jsonl".into()))
        .display()
        .to_string();
    if let Some(p) = s("prompt_column") {
        c.data.prompt_column = p;
    }
    if let Some(p) = s("completion_column") {
        c.data.completion_column = p;
    }
    let l = &mut c.lr_schedule;
    l.lr = f("lr", 1e-5);
    l.lr_end = f("lr_end", 0.0);
    l.power = f("power", 1.0);
    l.warmup_steps = f("warmup_steps", 0.0);
    l.lr_scheduler_type = match s("lr_scheduler_type").as_deref() {
        Some("cosine") => LrSchedulerType::Cosine,
        Some("polynomial") => LrSchedulerType::Polynomial,
        Some("constant") => LrSchedulerType::Constant,
        _ => LrSchedulerType::Linear,
    };
    c.optimizer = match s("optimizer").as_deref() {
        Some("sgd") => OptimizerKind::Sgd,
        Some("muon") => OptimizerKind::Muon,
        _ => OptimizerKind::Adamw,
    };
    c.adam_beta1 = f("adam_beta1", 0.95);
    c.eps_root = f("eps_root", 1e-17);
    c.logit_scale = f("logit_scale", 1.0);
    if let Some(t) = s("tokenizer") {
        c.tokenizer = fixtures().join("models").join(t).display().to_string();
    }
    if s("loss_reduction").as_deref() == Some("sum_of_means") {
        c.loss_reduction = TrainLossReduction::SumOfMeans;
    }
    if s("save_optimizer_state").as_deref() == Some("last") {
        c.save_optimizer_state = SaveOptimizerState::Last;
    }
    c
}

/// The key bias of attention has a zero gradient in exact arithmetic (softmax ignores a
/// constant added to every score), so its computed gradient is rounding noise, which AdamW
/// normalises to steps of ±lr whose signs no two implementations share. Compare the other
/// entries: GPT-NeoX's fused `query_key_value.bias` is `[heads, (q, k, v), head_dim]`; a
/// separate `k_proj.bias` is left out whole.
fn without_key_bias(
    name: &str,
    adamw: bool,
    p: &Tensor,
    want: &Tensor,
    start: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let keep = |t: &Tensor| -> Tensor {
        if adamw && name.ends_with("query_key_value.bias") {
            // 4 heads in the fixture models.
            let t = t.reshape([4, 3, -1]);
            Tensor::cat(&[t.narrow(1, 0, 1), t.narrow(1, 2, 1)], 1).reshape([-1])
        } else if adamw && name.ends_with("k_proj.bias") {
            t.zeros_like()
        } else {
            t.shallow_clone()
        }
    };
    (keep(p), keep(want), keep(start))
}

#[test]
fn training_matches_python_bergson() {
    check_cases("bergson_train", 5);
}

/// `--optimizer muon` (tests/fixtures/scripts/make_muon_refs.py → tests/fixtures/bergson_muon/):
/// Newton-Schulz for the weight matrices, AdamW for biases and norms.
#[test]
fn muon_training_matches_python_bergson() {
    check_cases("bergson_muon", 2);
}

/// Trains every case of `<fixtures>/<dir>/cases.json` and compares it with Python's run.
fn check_cases(dir: &str, count: usize) {
    // Tiny models: one thread is fastest, and keeps the test fast on a loaded CI machine.
    tch::set_num_threads(1);
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(dir).join("cases.json")).unwrap(),
    )
    .unwrap();
    let cases = cases.as_object().unwrap();
    assert_eq!(cases.len(), count);
    for (name, case) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let cfg = config(&case["flags"], &run);
        let summary =
            bergson::train::train(&cfg, Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));

        // Every step's loss, to 1e-5 relative.
        let want: Vec<(usize, f64)> = case["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_f64().unwrap()))
            .collect();
        assert_eq!(summary.losses.len(), want.len(), "{name}: steps");
        for ((i, got), (j, exp)) in summary.losses.iter().zip(&want) {
            assert_eq!(i, j);
            let rel = (got - exp).abs() / exp.abs();
            assert!(
                rel < 1e-5,
                "{name}: step {i} loss {got} vs Python {exp} (rel {rel:e})"
            );
        }

        // The learning-rate history, value for value.
        let history: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("checkpoints/log_history.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(history, case["log_history"], "{name}: log_history.json");

        // Final parameters (and second moments) close to Python's.
        let reference =
            Tensor::read_safetensors(fixtures().join(dir).join(format!("{name}.safetensors")))
                .unwrap();
        let get = |k: &str| reference.iter().find(|(n, _)| n == k).map(|(_, t)| t);
        let init_model = bergson::models::load_model(
            Path::new(&cfg.model),
            bergson::engine::Precision::Fp32,
            Device::Cpu,
        )
        .unwrap();
        // A PEFT adapter trains its LoRA weights only (lora_llama).
        let init: HashMap<String, Tensor> = init_model
            .named_parameters()
            .into_iter()
            .chain(init_model.adapter_parameters())
            .collect();
        // Muon steps biases with AdamW too.
        let adamw = cfg.optimizer != OptimizerKind::Sgd;
        let mut compared = 0;
        let mut worst = 0.0f64;
        for (n, p) in summary.names.iter().zip(&summary.state.params) {
            let want = get(n).unwrap_or_else(|| panic!("{name}: {n} not in the reference"));
            let (p, want, start) = without_key_bias(n, adamw, p, want, &init[n]);
            // The distance to Python's weights, relative to how far training moved them.
            let off = (&p - &want).norm().double_value(&[]);
            let moved = (&want - &start).norm().double_value(&[]);
            assert!(
                off <= 1e-4 * moved,
                "{name}: {n} is {off:e} from Python's (training moved it {moved:e})"
            );
            worst = worst.max(off / moved.max(f64::MIN_POSITIVE));
            compared += 1;
        }
        eprintln!("{name}: parameters within {worst:.1e} of their movement");
        assert_eq!(compared, summary.names.len());
        if cfg.save_optimizer_state != SaveOptimizerState::None {
            let saved = bergson::pickle::load(&run.join("optimizer.pt")).unwrap();
            let entries = saved.get("state").and_then(|s| s.as_dict()).unwrap();
            assert_eq!(entries.len(), summary.names.len());
            for (_, entry) in entries {
                let pname = entry.get("param_name").and_then(|v| v.as_str()).unwrap();
                let nu = entry.get("exp_avg_sq").and_then(|v| v.as_tensor()).unwrap();
                let want = get(&format!("nu.{pname}")).unwrap();
                let diff = (nu - want).abs().max().double_value(&[]);
                let scale = want.abs().max().double_value(&[]).max(1e-12);
                assert!(
                    diff / scale < 1e-4,
                    "{name}: nu of {pname} differs by {diff:e}"
                );
                assert_eq!(nu.kind(), Kind::Float);
            }
        }
    }
}
