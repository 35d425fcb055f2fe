//! `bergson train` at the command line: the run directory it writes, resuming an interrupted
//! run to the same weights, and bad input ending with exit status 2 and one `error:` line.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{assert_one_line_error, fixtures, BIN};

fn train(dir: &Path, extra: &[&str]) -> Output {
    let model = fixtures().join("models/gpt_neox");
    let data = fixtures().join("bergson_train/train.jsonl");
    // One libtorch thread: fastest for the tiny model, and on a loaded CI machine.
    let mut args: Vec<String> = vec![
        "train".into(),
        "run".into(),
        "--quiet".into(),
        "--num_threads".into(),
        "1".into(),
    ];
    let model = model.display().to_string();
    let data = data.display().to_string();
    // Defaults that `extra` may override.
    for (flag, value) in [
        ("--model", model.as_str()),
        ("--dataset", data.as_str()),
        ("--batch_size", "4"),
        ("--lr", "1e-3"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(BIN)
        .args(&args)
        .current_dir(dir)
        .env("HF_HOME", dir.join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run bergson")
}

/// Exit status 2, one `error:` line naming `needle`, nothing else.
fn assert_input_error(out: &Output, needle: &str) {
    let stderr = assert_one_line_error(out, &[needle]);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

fn model_weights(run: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(run.join("model/model.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn writes_the_run_directory_and_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = train(
        dir.path(),
        &[
            "--save_mode",
            "all",
            "--save_models",
            "--save_optimizer_state",
            "last",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 11 rows, batch 4: 3 steps (one padding row), checkpoints before each.
    for f in [
        "config.yaml",
        "optimizer.pt",
        "checkpoints/log_history.json",
        "checkpoints/step_0.ckpt/state.json",
        "checkpoints/step_2.ckpt/state.safetensors",
        "model/model.safetensors",
        "model/config.json",
        "model/tokenizer.json",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    assert!(!run.join("checkpoints/step_3.ckpt").exists());
    let yaml = fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(
        yaml.contains("train:") && yaml.contains("adam_beta1: 0.95"),
        "{yaml}"
    );
    let full = model_weights(&run);

    // Interrupted after step 1: only the checkpoints up to step_1 remain.
    fs::remove_dir_all(run.join("checkpoints/step_2.ckpt")).unwrap();
    fs::remove_dir_all(run.join("model")).unwrap();
    // An unfinished checkpoint (no state.json) is removed, not loaded.
    fs::create_dir_all(run.join("checkpoints/step_2.ckpt")).unwrap();
    let out = train(
        dir.path(),
        &["--save_mode", "all", "--save_models", "--resume"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = model_weights(&run);
    assert_eq!(full.len(), resumed.len());
    for ((n, a), (m, b)) in full.iter().zip(&resumed) {
        assert_eq!(n, m);
        assert_eq!(
            (a - b).abs().max().double_value(&[]),
            0.0,
            "{n} differs after resuming"
        );
    }

    // Resuming with other training settings is refused.
    let out = train(
        dir.path(),
        &["--save_mode", "all", "--resume", "--seed", "3"],
    );
    assert_input_error(&out, "--seed was 42 and is now 3");
}

#[test]
fn muon_checkpoints_resume_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let muon = ["--optimizer", "muon", "--save_mode", "all", "--save_models"];
    let out = train(dir.path(), &muon);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The momentum buffers of the matrices and the AdamW moments of the vectors.
    let state =
        tch::Tensor::read_safetensors(run.join("checkpoints/step_2.ckpt/state.safetensors"))
            .unwrap();
    let has = |k: &str| state.iter().any(|(n, _)| n == k);
    assert!(has(
        "opt_state/trace.gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    ));
    assert!(has("opt_state/mu.gpt_neox.layers.0.mlp.dense_h_to_4h.bias"));
    assert!(has("opt_state/nu.gpt_neox.final_layer_norm.weight"));
    assert!(!has(
        "opt_state/mu.gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    ));
    let full = model_weights(&run);
    fs::remove_dir_all(run.join("checkpoints/step_2.ckpt")).unwrap();
    fs::remove_dir_all(run.join("model")).unwrap();
    let out = train(dir.path(), &[&muon[..], &["--resume"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ((n, a), (_, b)) in full.iter().zip(&model_weights(&run)) {
        assert_eq!((a - b).abs().max().double_value(&[]), 0.0, "{n} differs");
    }
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    assert_input_error(&train(dir.path(), &["--batch_size", "0"]), "--batch_size");
    assert_input_error(
        &train(dir.path(), &["--optimizer", "muon", "--adam_beta1", "0"]),
        "Nesterov momentum",
    );
    assert_input_error(
        &train(
            dir.path(),
            &["--optimizer", "muon", "--save_optimizer_state", "last"],
        ),
        "adamw",
    );
    assert_input_error(
        &train(dir.path(), &["--save_mode", "interval"]),
        "--save_interval",
    );
    assert_input_error(
        &train(
            dir.path(),
            &["--optimizer", "sgd", "--save_optimizer_state", "last"],
        ),
        "adamw",
    );
    // What torchopt refuses when Bergson builds the optimizer, refused before anything is
    // written (a negative learning rate is not among them: Bergson passes a schedule).
    for (args, needle) in [
        (&["--adam_beta1", "1.5"][..], "--adam_beta1 1.5"),
        (&["--adam_beta2", "-0.1"][..], "--adam_beta2 -0.1"),
        (&["--adam_eps", "-1"][..], "--adam_eps -1"),
        (&["--weight_decay", "-0.5"][..], "--weight_decay -0.5"),
        (
            &["--optimizer", "sgd", "--adam_beta1", "-1"][..],
            "SGD's momentum",
        ),
        (&["--max_grad_norm", "-1"][..], "--max_grad_norm -1"),
    ] {
        assert_input_error(&train(dir.path(), args), needle);
        assert!(!dir.path().join("run").exists(), "{args:?} wrote the run");
    }
    // A learning rate that blows the weights up: the NaN loss names its step.
    let out = train(dir.path(), &["--lr", "1e30", "--overwrite"]);
    assert_input_error(&out, "at step 1");
    // An existing run directory without --overwrite or --resume.
    let out = train(dir.path(), &[]);
    assert_input_error(&out, "already exists");
    // Documents without a next-token target (empty, one token): nothing to train on.
    let empty = dir.path().join("empty.jsonl");
    fs::write(&empty, "{\"text\": \"\"}\n{\"text\": \"a\"}\n").unwrap();
    let out = train(
        dir.path(),
        &["--dataset", empty.to_str().unwrap(), "--overwrite"],
    );
    assert_input_error(&out, "no training row has a next-token target");
}

/// `--moe_experts` runs the fused experts one projection at a time: the same parameters and
/// function, so training ends at the same weights (Python Bergson 2.5.1 cannot train an MoE
/// model at all: its patched loss function breaks the MoE forward). A pattern matching no
/// experts is refused before training.
#[test]
fn moe_experts_train_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/qwen3_moe").display().to_string();
    let tok_run = |name: &str, extra: &[&str]| {
        let mut args = vec!["--model", model.as_str(), "--save_models", "--lr", "1e-2"];
        args.extend_from_slice(extra);
        let out = train(dir.path(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::rename(dir.path().join("run"), dir.path().join(name)).unwrap();
        model_weights(&dir.path().join(name))
    };
    let fused = tok_run("fused", &[]);
    let expanded = tok_run("expanded", &["--moe_experts", "model.layers.*.mlp.experts"]);
    assert_eq!(fused.len(), expanded.len());
    let mut moved = 0.0f64;
    for ((n, a), (m, b)) in fused.iter().zip(&expanded) {
        assert_eq!(n, m);
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{n} differs by {diff:e}");
        moved = moved.max(a.abs().max().double_value(&[]));
    }
    assert!(moved > 0.0);
    let dense = fixtures().join("models/gpt_neox").display().to_string();
    let out = train(
        dir.path(),
        &[
            "--model",
            &dense,
            "--moe_experts",
            "model.layers.*.mlp.experts",
        ],
    );
    assert_input_error(&out, "--moe_experts");
}
