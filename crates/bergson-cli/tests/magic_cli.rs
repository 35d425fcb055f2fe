//! `bergson magic` from the command line: Bergson's flag spellings, what a run leaves in its
//! directory, and bad input answered with one line and exit status 2.

mod common;

use common::{assert_one_line_error, bergson, fixtures};
use std::path::Path;
use std::process::Output;

/// `bergson magic <run> <tiny run flags> <extra>`.
fn magic(run: &Path, extra: &[&str]) -> Output {
    let dir = fixtures().join("bergson_magic");
    bergson()
        .arg("magic")
        .arg(run)
        .arg("--model")
        .arg(fixtures().join("models/gpt_neox"))
        .arg("--data.dataset")
        .arg(dir.join("train.jsonl"))
        .arg("--query.dataset")
        .arg(dir.join("query.jsonl"))
        .args([
            "--batch_size",
            "8",
            "--lr",
            "1e-3",
            "--aggregation",
            "mean",
            "--num_threads",
            "1",
            "--quiet",
        ])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_run_writes_scores_config_and_history() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = magic(&run, &["--save_mode", "all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(
        config.contains("magic:") && config.contains("aggregation: mean"),
        "{config}"
    );
    let info = std::fs::read_to_string(run.join("scores/info.json")).unwrap();
    assert!(info.contains("\"num_items\": 16"), "{info}");
    assert!(!run.join("scores.part").exists());
    assert!(run.join("score_vs_step.png").is_file());
    // 16 documents, 2 steps; cleanup keeps the last checkpoint only.
    let left: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, ["log_history.json", "step_1.ckpt"]);
}

#[test]
fn aggregation_none_with_chunked_queries_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = magic(
        &tmp.path().join("run"),
        &["--aggregation", "none", "--query.chunk_length", "8"],
    );
    assert_one_line_error(&out, &["--query.chunk_length", "--aggregation none"]);
}

#[test]
fn contrast_without_aggregation_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let contrast = fixtures().join("bergson_magic/contrast.jsonl");
    let out = magic(
        &tmp.path().join("run"),
        &[
            "--aggregation",
            "none",
            "--contrast.dataset",
            contrast.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&out, &["--contrast.dataset", "mean or sum"]);
}

#[test]
fn batch_size_that_does_not_divide_among_processes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = magic(
        &tmp.path().join("run"),
        &["--batch_size", "3", "--nproc_per_node", "2"],
    );
    assert_one_line_error(&out, &["--batch_size 3", "2 processes"]);
    let out = magic(&tmp.path().join("run2"), &["--batch_size", "0"]);
    assert_one_line_error(&out, &["--batch_size"]);
}

#[test]
fn a_diverging_loss_names_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let out = magic(
        &tmp.path().join("run"),
        &["--lr", "1e30", "--batch_size", "4"],
    );
    assert_one_line_error(&out, &["loss", "at step 1"]);
}

/// A query without a next-token target (an empty text, a single token) is refused before
/// training, naming the row; aggregated with the others it is allowed (it adds nothing).
#[test]
fn a_query_without_targets_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let queries = tmp.path().join("queries.jsonl");
    std::fs::write(
        &queries,
        "{\"text\": \"Some query text with tokens.\"}\n{\"text\": \"\"}\n",
    )
    .unwrap();
    let q = queries.to_str().unwrap();
    let run = tmp.path().join("run");
    let out = magic(&run, &["--query.dataset", q, "--aggregation", "none"]);
    assert_one_line_error(&out, &["query row 1", "no next-token target"]);
    assert!(!run.join("checkpoints").exists(), "refused after training");
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "{\"text\": \"\"}\n{\"text\": \"\"}\n").unwrap();
    let out = magic(
        &tmp.path().join("run2"),
        &["--query.dataset", empty.to_str().unwrap()],
    );
    assert_one_line_error(&out, &["no query row has a next-token target"]);
    let out = magic(&tmp.path().join("run3"), &["--query.dataset", q]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_query_dataset_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = magic(
        &tmp.path().join("run"),
        &["--query.dataset", "/nonexistent/queries.jsonl"],
    );
    assert_one_line_error(&out, &["query", "/nonexistent/queries.jsonl"]);
}

#[test]
fn resuming_checkpoints_of_another_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = magic(&run, &["--cleanup_ckpts", "false"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = magic(&run, &["--resume", "--lr", "2e-3"]);
    assert_one_line_error(&out, &["--lr was 0.001 and is now 0.002"]);
}

#[test]
fn settings_magic_cannot_run_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (flags, key) in [
        (
            &["--save_mode", "interval", "--save_interval", "1"][..],
            "--save_mode interval",
        ),
        (&["--save_mode", "final"][..], "--save_mode final"),
        (&["--skip_validation", "false"][..], "bergson validate"),
        (&["--ckpt_avg_k", "2"][..], "--ckpt_avg_k"),
    ] {
        let out = magic(&tmp.path().join("run"), flags);
        assert_one_line_error(&out, &[key]);
    }
    // No run path: the usage names magic, not the training it runs on.
    let out = bergson().arg("magic").output().unwrap();
    assert_one_line_error(&out, &["bergson magic <run_path>"]);
}

/// A magic run's `config.yaml` is a run file: `bergson <config.yaml>` replays it (here into a
/// new run path) to the same scores.
#[test]
fn config_yaml_replays_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = magic(&run, &["--save_mode", "sqrt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replay = tmp.path().join("replay");
    common::replay_config(&run, &replay);
    let scores = |dir: &Path| std::fs::read(dir.join("scores/scores.bin")).unwrap();
    assert_eq!(scores(&run), scores(&replay));
}
