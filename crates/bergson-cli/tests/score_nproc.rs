//! Multi-process score runs on loopback Gloo: `--nproc_per_node 2` (our launcher) and two
//! processes started by hand with torchrun's variables write the one-process score store byte
//! for byte; a killed worker ends the whole job and nothing looks finished; bad input is one
//! line and exit 2.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::ranks::{
    children, environ, free_port, rank_cmd, repeated_dataset, run_ok, small_dataset, wait_within,
};
use common::{assert_one_line_error, assert_same_run, bergson, fixtures};

/// A query index over the score fixture's queries (projection 8).
fn build_queries(dir: &Path) -> PathBuf {
    let q = dir.join("queries");
    let out = bergson()
        .arg("build")
        .arg(&q)
        .arg("--model")
        .arg(fixtures().join("models/gpt_neox"))
        .arg("--dataset")
        .arg(fixtures().join("bergson_score/data/queries.jsonl"))
        .args(["--projection_dim", "8", "--quiet"])
        .env("OMP_NUM_THREADS", "1")
        .env_remove("WORLD_SIZE")
        .env_remove("RANK")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    q
}

/// `bergson score <run>` of `dataset` against `queries`, small batches, one thread per process.
fn score(run: &Path, queries: &Path, dataset: &Path, extra: &[&str]) -> Command {
    let mut cmd = bergson();
    cmd.arg("score")
        .arg(run)
        .arg("--query_path")
        .arg(queries)
        .arg("--model")
        .arg(fixtures().join("models/gpt_neox"))
        .arg("--dataset")
        .arg(dataset)
        .args([
            "--projection_dim",
            "8",
            "--token_batch_size",
            "32",
            "--quiet",
        ])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .env_remove("WORLD_SIZE")
        .env_remove("RANK");
    cmd
}

#[test]
fn two_processes_write_the_one_process_store() {
    let dir = tempfile::tempdir().unwrap();
    let queries = build_queries(dir.path());
    let data = small_dataset();
    let cases: [&[&str]; 3] = [
        &[],
        &["--attribute_tokens"],
        &["--query_batch_size", "2", "--unit_normalize"],
    ];
    for extra in cases {
        let one = dir.path().join("one");
        let launched = dir.path().join("launched");
        let by_hand = dir.path().join("by_hand");
        for d in [&one, &launched, &by_hand] {
            let _ = std::fs::remove_dir_all(d);
        }
        run_ok(score(&one, &queries, &data, extra));
        let mut cmd = score(&launched, &queries, &data, extra);
        cmd.args(["--nproc_per_node", "2"]);
        run_ok(cmd);
        // Started by someone else, rank 1 first.
        let port = free_port();
        let ranks: Vec<Child> = [1, 0]
            .into_iter()
            .map(|r| {
                let mut cmd = rank_cmd(score(&by_hand, &queries, &data, extra), r, 2, port);
                cmd.stderr(Stdio::piped()).spawn().unwrap()
            })
            .collect();
        for child in ranks {
            let (out, _) = wait_within(child, Duration::from_secs(180));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Bit-identical: each document's scores come from the same batch computation.
        assert_same_run(&one, &launched);
        assert_same_run(&one, &by_hand);
    }
}

/// Starts a 2-process score of `data` into `run`, kills rank 1 once the workers are scoring
/// (rank 0 sized scores.bin), and returns the launcher's output.
fn kill_rank1_midway(run: &Path, queries: &Path, data: &Path) -> Output {
    let mut cmd = score(run, queries, data, &["--nproc_per_node", "2"]);
    cmd.env("BERGSON_SYNC_SECONDS", "0");
    let launcher = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let scores = PathBuf::from(format!("{}.part", run.display())).join("scores.bin");
    let start = Instant::now();
    while !scores.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "score never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rank1 = children(launcher.id())
        .into_iter()
        .find(|&pid| environ(pid).contains(&"RANK=1".to_string()))
        .expect("rank 1");
    // SAFETY: kill(2) on a worker of the launcher we started.
    unsafe { libc::kill(rank1 as libc::pid_t, libc::SIGKILL) };
    wait_within(launcher, Duration::from_secs(120)).0
}

#[test]
fn a_killed_worker_ends_the_score_job_and_the_job_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let queries = build_queries(dir.path());
    let data = repeated_dataset(dir.path(), 200);
    let (one, run) = (dir.path().join("one"), dir.path().join("run"));
    run_ok(score(&one, &queries, &data, &[]));
    let out = kill_rank1_midway(&run, &queries, &data);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("error: rank 1 was killed by signal 9; stopped the other workers"),
        "{stderr}"
    );
    assert!(!run.exists(), "a failed job left a finished-looking store");
    let journals: Vec<String> = std::fs::read_dir(dir.path().join("run.part"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("journal.rank"))
        .collect();
    assert_eq!(journals.len(), 2, "{journals:?}");
    // The same command again: every rank continues after its last durable batch.
    run_ok(score(&run, &queries, &data, &["--nproc_per_node", "2"]));
    assert_same_run(&one, &run);
}

#[test]
fn bad_input_under_the_launcher_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let missing = dir.path().join("no_queries");
    let out = score(&run, &missing, &small_dataset(), &["--nproc_per_node", "2"])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["no_queries"]);
    let out = score(&run, &missing, &small_dataset(), &["--nproc_per_node", "0"])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["--nproc_per_node 0"]);
    assert!(!run.exists());
    assert!(!dir.path().join("run.part").exists());
}
