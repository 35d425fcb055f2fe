//! `bergson build --auto_batch_size` and `--data_kwargs` on the command line.
//!
//! Python Bergson 2.5.1 on a CPU, for the qwen3 fixture over `text.jsonl[:6]`, prints
//! "Determining token_batch_size in [31, 81]" and settles on 81 (it catches only CUDA's
//! out-of-memory error, so the search runs to its upper limit), caching it in
//! `.cache/batch_size_cache.jsonl` under the working directory.

mod common;

use std::path::Path;
use std::process::Output;

use common::{assert_one_line_error, bergson, fixtures};

fn build(cwd: &Path, run: &str, extra: &[&str]) -> Output {
    let mut cmd = bergson();
    cmd.current_dir(cwd)
        .arg("build")
        .arg(cwd.join(run))
        .arg("--model")
        .arg(fixtures().join("models/qwen3"))
        .arg("--dataset")
        .arg(fixtures().join("bergson/data/text.jsonl"))
        .args(["--split", "train[:6]", "--projection_dim", "8", "--quiet"])
        .args(extra);
    let out = cmd.output().expect("run bergson");
    assert!(
        out.status.success() || out.status.code() == Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn cached_rows(cwd: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(cwd.join(".cache/batch_size_cache.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn auto_batch_size_on_a_cpu_ends_at_bergsons_limit_and_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let out = build(cwd, "auto", &["--auto_batch_size"]);
    assert!(out.status.success());
    let rows = cached_rows(cwd);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["token_batch_size"], 81, "{rows:?}");

    // The same index as the budget given by hand.
    build(cwd, "manual", &["--token_batch_size", "81"]);
    let auto = std::fs::read(cwd.join("auto/gradients.bin")).unwrap();
    let manual = std::fs::read(cwd.join("manual/gradients.bin")).unwrap();
    assert_eq!(
        auto, manual,
        "--auto_batch_size and --token_batch_size 81 differ"
    );
    // The saved config keeps the flags as given (Bergson saves it before the search).
    let config = std::fs::read_to_string(cwd.join("auto/config.yaml")).unwrap();
    assert!(config.contains("auto_batch_size: true"), "{config}");

    // A second run reads the cache instead of searching again.
    let out = build(cwd, "auto", &["--auto_batch_size", "--overwrite"]);
    assert!(out.status.success());
    assert_eq!(cached_rows(cwd).len(), 1);
    let again = std::fs::read(cwd.join("auto/gradients.bin")).unwrap();
    assert_eq!(again, auto);
}

#[test]
fn data_kwargs_refusals_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    for (kwargs, needle) in [
        ("streaming=true", "IterableDataset"),
        ("name=x", "use --subset"),
        ("features=x", "not supported by bergson-rs"),
        ("data_files", "invalid argument"),
    ] {
        let out = build(tmp.path(), "run", &["--data_kwargs", kwargs]);
        assert_one_line_error(&out, &["--data_kwargs", needle]);
    }
    assert!(!tmp.path().join("run").exists());
}

#[test]
fn data_kwargs_choose_the_files_of_a_dataset_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("extra")).unwrap();
    let text = std::fs::read_to_string(fixtures().join("bergson/data/text.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(repo.join("train.jsonl"), lines[..4].join("\n") + "\n").unwrap();
    std::fs::write(
        repo.join("extra/train.jsonl"),
        lines[4..7].join("\n") + "\n",
    )
    .unwrap();
    let mut cmd = bergson();
    let out = cmd
        .arg("build")
        .arg(tmp.path().join("run"))
        .arg("--model")
        .arg(fixtures().join("models/qwen3"))
        .arg("--dataset")
        .arg(&repo)
        .args([
            "--data_kwargs",
            "data_dir=extra",
            "--projection_dim",
            "4",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = common::read_json(&tmp.path().join("run/info.json"));
    assert_eq!(info["num_grads"], 3, "{info}");
}

/// A fresh build over documents too short to index (fewer than 2 tokens) reports them, and
/// does not call itself resumed (it once did: their tokens were counted but never run).
#[test]
fn a_fresh_build_with_short_documents_is_not_reported_as_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bergson()
        .arg("build")
        .arg(tmp.path().join("run"))
        .arg("--model")
        .arg(fixtures().join("models/opt"))
        .arg("--dataset")
        .arg(fixtures().join("bergson/data/text.jsonl"))
        .args(["--projection_dim", "4"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("indexed 10 documents"), "{text}");
    assert!(
        text.contains("2 documents with fewer than 2 tokens have zero rows"),
        "{text}"
    );
    assert!(!text.contains("resumed"), "{text}");
}
