//! `bergson query` on bad input: one line naming the problem and the fix, exit status 2, no
//! backtrace, and nothing written next to the index or at `--record`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;

use common::{assert_one_line_error, copy_dir, repo_root as root, BIN};

/// A scratch copy of a committed reference index (queries cache row norms beside it).
fn index_copy(run: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(run);
    copy_dir(&root().join("tests/fixtures/bergson/runs").join(run), &dst);
    (tmp, dst)
}

fn query(index: &Path, extra: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .current_dir(root())
        .env("HF_HUB_OFFLINE", "1")
        .args(["query", "--index"])
        .arg(index)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_missing_index_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no_such_index");
    let out = query(&missing, &[], "exit\n");
    assert_one_line_error(&out, &["no_such_index"]);
}

#[test]
fn an_unfinished_index_is_refused() {
    let (tmp, index) = index_copy("arch_gpt_neox");
    let part = tmp.path().join("arch_gpt_neox.part");
    std::fs::rename(&index, &part).unwrap();
    let out = query(&index, &[], "exit\n");
    assert_one_line_error(&out, &[".part"]);
}

#[test]
fn a_truncated_index_is_refused() {
    let (_tmp, index) = index_copy("arch_gpt_neox");
    let grads = index.join("gradients.bin");
    let len = std::fs::metadata(&grads).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&grads)
        .unwrap();
    f.set_len(len - 8).unwrap();
    drop(f);
    let record = index.parent().unwrap().join("record.csv");
    let out = query(
        &index,
        &["--record", record.to_str().unwrap()],
        "a prompt\nexit\n",
    );
    assert_one_line_error(&out, &["truncated"]);
    assert!(!record.exists(), "a failed session must not start a record");
}

#[test]
fn top_k_zero_is_refused() {
    let (_tmp, index) = index_copy("arch_gpt_neox");
    let out = query(&index, &["--top_k", "0"], "a prompt\nexit\n");
    assert_one_line_error(&out, &["top_k"]);
}

#[test]
fn top_k_beyond_the_index_is_clamped_and_said_once() {
    let (_tmp, index) = index_copy("arch_gpt_neox");
    let out = query(&index, &["--top_k", "100000"], "one\ntwo\nexit\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let notes = stderr
        .lines()
        .filter(|l| l.contains("100000") || l.to_lowercase().contains("clamp"))
        .count();
    assert_eq!(notes, 1, "the clamp is said exactly once: {stderr}");
}
