//! `bergson approxunrolling` at the command line: bad input ending with exit status 2 and one
//! line before any work, a rerun after an interruption continuing from the finished steps to
//! Bergson's scores, and `bergson train`'s own checkpoints (exported on the fly, the learning
//! rates and momentum read from the run) giving the same scores as the exported models with
//! those values passed by hand.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{assert_one_line_error, fixtures, repo_root};

fn refs() -> PathBuf {
    fixtures().join("bergson_approxunrolling")
}

fn checkpoints() -> Vec<String> {
    [2, 4, 6, 8]
        .iter()
        .map(|s| {
            refs()
                .join(format!("checkpoints/checkpoint-{s}"))
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The reference cases' flags (without `--checkpoints`), absolute.
fn base() -> Vec<String> {
    let f = |p: &str| repo_root().join(p).to_string_lossy().into_owned();
    vec![
        "--model".into(),
        f("tests/fixtures/models/gpt_neox"),
        "--data.dataset".into(),
        f("tests/fixtures/bergson/data/text.jsonl"),
        "--query.dataset".into(),
        f("tests/fixtures/bergson_score/data/queries.jsonl"),
        "--token_batch_size".into(),
        "64".into(),
        "--filter_modules".into(),
        "layers.0.*,*.query_key_value,*.dense_h_to_4h".into(),
        "--method".into(),
        "kfac".into(),
        "--ev_correction".into(),
        "true".into(),
        "--use_dataset_labels".into(),
        "true".into(),
        "--num_threads".into(),
        "1".into(),
    ]
}

fn run(run: &Path, checkpoints: &[String], extra: &[&str]) -> Output {
    let mut cmd = common::bergson();
    // A case's own `--ev_correction` replaces the reference's (clap takes a flag once).
    let mut flags = base();
    if extra.contains(&"--ev_correction") {
        let at = flags.iter().position(|f| f == "--ev_correction").unwrap();
        flags.drain(at..at + 2);
    }
    cmd.arg("approxunrolling").arg(run).args(flags);
    if !checkpoints.is_empty() {
        cmd.arg("--checkpoints").args(checkpoints);
    }
    cmd.args(extra)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("run bergson")
}

#[test]
fn bad_input_is_one_line_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r");
    let ck = checkpoints();
    let model = fixtures()
        .join("models/gpt_neox")
        .to_string_lossy()
        .into_owned();
    let cases: Vec<(Vec<String>, Vec<&str>, &str)> = vec![
        (vec![], vec!["--segments", "1"], "--checkpoints"),
        (
            ck.clone(),
            vec!["--segments", "3"],
            "divisible by --segments",
        ),
        (ck.clone(), vec!["--segments", "0"], "--segments"),
        (
            ck.clone(),
            vec!["--segments", "2", "--ev_correction", "false"],
            "--ev_correction true",
        ),
        (
            vec![ck[0].clone(), format!("{}/nowhere/checkpoint-9", ck[0])],
            vec!["--segments", "2"],
            "not a model directory",
        ),
        (
            vec![model.clone(), ck[1].clone()],
            vec!["--segments", "2", "--use_adam_preconditioner"],
            "optimizer.pt",
        ),
        (
            ck.clone(),
            vec!["--segments", "2", "--momentum", "1.0"],
            "[0, 1)",
        ),
        (
            ck.clone(),
            vec![
                "--segments",
                "2",
                "--lr_list",
                "0.1",
                "--step_size_list",
                "3",
            ],
            "one value per segment",
        ),
        (
            vec![model.clone(), ck[1].clone()],
            vec!["--segments", "1"],
            "cannot infer a training step",
        ),
    ];
    for (ckpts, extra, needle) in cases {
        let out = run(&r, &ckpts, &extra);
        assert_one_line_error(&out, &[needle]);
        // Nothing was computed.
        assert!(!r.join("segment_0").exists(), "{extra:?}");
    }
}

/// Max over columns of the largest |a − b| / max |b| of the column.
fn score_error(ours: &Path, theirs: &Path) -> f64 {
    common::compare_score_stores(ours, theirs).unwrap().0
}

#[test]
fn a_rerun_after_an_interruption_continues_to_bergsons_scores() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("source");
    let out = run(&r, &checkpoints(), &["--segments", "2", "--quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Interrupted during step 2 of segment 1: its factors (and everything after) are missing.
    let kept = r.join("segment_0/ckpt_0/kfac/activation_sharded/shard_0.safetensors");
    let kept_time = std::fs::metadata(&kept).unwrap().modified().unwrap();
    std::fs::remove_dir_all(r.join("segment_1/kfac")).unwrap();
    std::fs::remove_dir_all(r.join("segment_1/ckpt_1/kfac/averaged_ev_correct_sharded")).unwrap();
    std::fs::remove_dir_all(r.join("scores")).unwrap();
    let out = run(&r, &checkpoints(), &["--segments", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("step 1/8") && stderr.contains("skipping"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::metadata(&kept).unwrap().modified().unwrap(),
        kept_time
    );
    assert!(r
        .join("segment_1/kfac/eigenvalue_correction_sharded")
        .is_dir());
    let err = score_error(&r.join("scores"), &refs().join("runs/source/scores"));
    assert!(err <= 1e-4, "{err:.2e}");
}

/// Trains the tiny model for 6 steps (11 documents, 2 a batch) with `optimizer_flags`, checkpoints after every step.
fn train(dir: &Path, optimizer_flags: &[&str]) -> PathBuf {
    let run = dir.join("train");
    let out = common::bergson()
        .arg("train")
        .arg(&run)
        .args([
            "--model",
            &fixtures().join("models/gpt_neox").to_string_lossy(),
            "--dataset",
            &fixtures()
                .join("bergson_train/train.jsonl")
                .to_string_lossy(),
            "--batch_size",
            "2",
            "--lr",
            "0.05",
            "--save_mode",
            "all",
            "--quiet",
            "--num_threads",
            "1",
        ])
        .args(optimizer_flags)
        .output()
        .expect("run bergson train");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run
}

/// The learning rates of steps 1..=n from the run's history.
fn lrs(train: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(train.join("checkpoints/log_history.json")).unwrap();
    let h: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    h.iter()
        .map(|e| e["learning_rate"].as_f64().unwrap())
        .collect()
}

#[test]
fn train_checkpoints_are_exported_and_read_like_bergsons() {
    let dir = tempfile::tempdir().unwrap();
    let t = train(dir.path(), &["--optimizer", "sgd", "--adam_beta1", "0.6"]);
    let states: Vec<String> = [2, 4]
        .iter()
        .map(|s| {
            t.join(format!("checkpoints/step_{s}.ckpt"))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let a = dir.path().join("a");
    let out = run(&a, &states, &["--segments", "2", "--quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: Vec<String> = [2, 4]
        .iter()
        .map(|s| {
            let d = t.join(format!("exported/checkpoint-{s}"));
            assert!(d.join("model.safetensors").is_file(), "{}", d.display());
            d.to_string_lossy().into_owned()
        })
        .collect();
    // The same by hand: lr·K of steps 1-2 and 3-4 (as their mean rate times 2 steps) and the
    // run's SGD momentum. `run/exported/` is inside the run, so copy the models out.
    let lr = lrs(&t);
    let copies: Vec<String> = exported
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let to = dir.path().join(format!("models/m{i}"));
            common::copy_dir(Path::new(d), &to);
            to.to_string_lossy().into_owned()
        })
        .collect();
    let (l0, l1) = ((lr[0] + lr[1]) / 2.0, (lr[2] + lr[3]) / 2.0);
    let (l0, l1) = (l0.to_string(), l1.to_string());
    let b = dir.path().join("b");
    let out = run(
        &b,
        &copies,
        &[
            "--segments",
            "2",
            "--lr_list",
            &l0,
            &l1,
            "--step_size_list",
            "2",
            "2",
            "--momentum",
            "0.6",
            "--quiet",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = score_error(&a.join("scores"), &b.join("scores"));
    assert!(err <= 1e-5, "{err:.2e}");
    // Without the run's momentum the scores differ: the test can tell.
    let c = dir.path().join("c");
    let out = run(
        &c,
        &copies,
        &[
            "--segments",
            "2",
            "--lr_list",
            &l0,
            &l1,
            "--step_size_list",
            "2",
            "2",
            "--quiet",
        ],
    );
    assert!(out.status.success());
    assert!(score_error(&c.join("scores"), &b.join("scores")) > 1e-3);
}

#[test]
fn adamw_runs_take_the_preconditioned_variant_from_their_optimizer_states() {
    let dir = tempfile::tempdir().unwrap();
    let t = train(
        dir.path(),
        &["--optimizer", "adamw", "--save_optimizer_state", "all"],
    );
    let states: Vec<String> = [1, 2]
        .iter()
        .map(|s| {
            t.join(format!("checkpoints/step_{s}.ckpt"))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let a = dir.path().join("a");
    let out = run(
        &a,
        &states,
        &["--segments", "1", "--use_adam_preconditioner", "--quiet"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.join("exported/checkpoint-2/optimizer.pt").is_file());
    let p = tch::Tensor::read_safetensors(a.join("segment_0/preconditioner.safetensors")).unwrap();
    assert_eq!(p.len(), 2, "one grid per attributed module");
    for (name, grid) in &p {
        let min = grid.min().double_value(&[]);
        assert!(
            min > 0.0 && grid.isfinite().all().int64_value(&[]) == 1,
            "{name}"
        );
    }
    let s = bergson::index::score_store::ScoreStore::open(&a.join("scores")).unwrap();
    assert!(s.column(0).iter().flatten().any(|v| *v != 0.0));
}

/// HF Trainer's `optimizer.pt` (entries keyed by `named_parameters()` index, no `param_name`):
/// the checkpoints' `optimizer_unnamed.pt` hold the same second moments that way, with which
/// Bergson gives its `source_adam` scores (checked by make_approxunrolling_refs.py); so must
/// we.
#[test]
fn unnamed_optimizer_states_map_by_parameter_index() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::copy(
        refs().join("checkpoints/log_history.json"),
        ck.join("log_history.json"),
    )
    .unwrap();
    let copies: Vec<String> = checkpoints()
        .iter()
        .map(|c| {
            let to = ck.join(Path::new(c).file_name().unwrap());
            common::copy_dir(Path::new(c), &to);
            std::fs::rename(to.join("optimizer_unnamed.pt"), to.join("optimizer.pt")).unwrap();
            to.to_string_lossy().into_owned()
        })
        .collect();
    let r = dir.path().join("r");
    let out = run(
        &r,
        &copies,
        &[
            "--segments",
            "2",
            "--use_adam_preconditioner",
            "true",
            "--damping_factor",
            "0.01",
            "--quiet",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = score_error(&r.join("scores"), &refs().join("runs/source_adam/scores"));
    assert!(err <= 1e-4, "{err:.2e}");
}
