//! Multi-process builds on loopback Gloo: `--nproc_per_node 2` (our launcher) and two
//! processes started by hand with torchrun's variables write the same index as one process;
//! a killed worker ends the whole job within seconds and nothing looks finished.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::ranks::{
    assert_exited, free_port, kill_rank1, rank_cmd, repeated_dataset, run_ok, small_dataset,
    wait_within, KilledJob,
};
use common::{assert_one_line_error, assert_same_run, bergson, fixtures};

/// `bergson build <run>` on the gpt_neox fixture with small batches, one thread per process.
fn build(run: &Path, dataset: &Path, extra: &[&str]) -> Command {
    let mut cmd = build_loud(run, dataset, extra);
    cmd.arg("--quiet");
    cmd
}

/// As [`build`], with the summary line.
fn build_loud(run: &Path, dataset: &Path, extra: &[&str]) -> Command {
    let mut cmd = bergson();
    cmd.arg("build")
        .arg(run)
        .arg("--model")
        .arg(fixtures().join("models/gpt_neox"))
        .arg("--dataset")
        .arg(dataset)
        .args(["--projection_dim", "8", "--token_batch_size", "64"])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .env_remove("WORLD_SIZE")
        .env_remove("RANK");
    cmd
}

/// Waits until the build has laid out `<run>.part/gradients.bin` (the workers are past
/// set-up and into their batches).
fn wait_for_batches(run: &Path) {
    let file = PathBuf::from(format!("{}.part", run.display())).join("gradients.bin");
    let start = Instant::now();
    while !file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "build never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn two_processes_write_the_one_process_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset();
    for extra in [&[][..], &["--attribute_tokens"][..]] {
        let one = dir.path().join("one");
        let launched = dir.path().join("launched");
        let by_hand = dir.path().join("by_hand");
        for d in [&one, &launched, &by_hand] {
            let _ = std::fs::remove_dir_all(d);
        }
        run_ok(build(&one, &data, extra));
        let mut cmd = build(&launched, &data, extra);
        cmd.args(["--nproc_per_node", "2"]);
        run_ok(cmd);
        // Started by someone else, rank 1 first.
        let port = free_port();
        let ranks: Vec<Child> = [1, 0]
            .into_iter()
            .map(|r| {
                let mut cmd = rank_cmd(build(&by_hand, &data, extra), r, 2, port);
                cmd.stderr(Stdio::piped()).spawn().unwrap()
            })
            .collect();
        for child in ranks {
            let (out, _) = wait_within(child, Duration::from_secs(120));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Bit-identical: each document's rows come from the same batch computation.
        assert_same_run(&one, &launched);
        assert_same_run(&one, &by_hand);
    }
}

/// `torchrun --no-python bergson build ...`: torchrun's agent hosts the store and every rank
/// is a client (`TORCHELASTIC_USE_AGENT_STORE=True`).
#[test]
#[ignore = "needs PyTorch's torchrun (set BERGSON_PY to a Python with torch 2.11)"]
fn torchrun_writes_the_one_process_index() {
    let python = PathBuf::from(std::env::var_os("BERGSON_PY").expect(
        "set BERGSON_PY to a Python with torch 2.11 (e.g. /work/pyenv/bin/python) to run this test",
    ));
    let torchrun = python.with_file_name("torchrun");
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset();
    let (one, launched) = (dir.path().join("one"), dir.path().join("torchrun"));
    run_ok(build(&one, &data, &[]));
    let inner = build(&launched, &data, &[]);
    let mut cmd = Command::new(torchrun);
    cmd.args(["--nproc_per_node", "2", "--master_addr", "127.0.0.1"])
        .arg(format!("--master_port={}", free_port()))
        .arg("--no-python")
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(common::repo_root())
        .env("OMP_NUM_THREADS", "1");
    run_ok(cmd);
    assert_same_run(&one, &launched);
}

/// `--nnode 2 --nproc_per_node 2 --node_rank R` on two "machines" (two launchers here, the
/// second node's first), meeting at MASTER_ADDR:MASTER_PORT.
#[test]
fn two_nodes_write_the_one_process_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset();
    let (one, nodes) = (dir.path().join("one"), dir.path().join("nodes"));
    run_ok(build(&one, &data, &[]));
    let port = free_port().to_string();
    let launchers: Vec<Child> = ["1", "0"]
        .into_iter()
        .map(|node| {
            let flags = ["--nnode", "2", "--nproc_per_node", "2", "--node_rank", node];
            build(&nodes, &data, &flags)
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in launchers {
        let (out, _) = wait_within(child, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_same_run(&one, &nodes);
}

#[test]
fn an_aggregated_two_process_index_matches_within_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_dataset();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    run_ok(build(&one, &data, &["--aggregation", "mean"]));
    run_ok(build(
        &two,
        &data,
        &["--aggregation", "mean", "--nproc_per_node", "2"],
    ));
    let read = |run: &Path| -> Vec<f32> {
        std::fs::read(run.join("gradients.bin"))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let (a, b) = (read(&one), read(&two));
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    // The two ranks' partial sums are added in another order than one process's.
    assert!(err <= 1e-6 * scale, "max abs diff {err} (scale {scale})");
    assert_eq!(
        std::fs::read(one.join("total_processed.pt")).unwrap(),
        std::fs::read(two.join("total_processed.pt")).unwrap()
    );
}

#[test]
fn a_killed_worker_stops_the_launcher_and_the_other_workers() {
    let dir = tempfile::tempdir().unwrap();
    let data = repeated_dataset(dir.path(), 200);
    let run = dir.path().join("run");
    let mut cmd = build(&run, &data, &["--nproc_per_node", "2"]);
    let launcher = cmd.stderr(Stdio::piped()).spawn().unwrap();
    wait_for_batches(&run);
    let KilledJob {
        out,
        waited,
        workers,
    } = kill_rank1(launcher);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(waited < Duration::from_secs(15), "took {waited:?}");
    assert!(
        stderr.contains("error: rank 1 was killed by signal 9; stopped the other workers"),
        "{stderr}"
    );
    assert_exited(&workers);
    assert!(!run.exists(), "a failed job left a finished-looking index");
}

#[test]
fn a_killed_job_resumes_to_the_one_process_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = repeated_dataset(dir.path(), 100);
    let (one, run) = (dir.path().join("one"), dir.path().join("run"));
    run_ok(build(&one, &data, &[]));
    let mut cmd = build(&run, &data, &["--nproc_per_node", "2"]);
    cmd.env("BERGSON_SYNC_SECONDS", "0");
    let launcher = cmd.stderr(Stdio::piped()).spawn().unwrap();
    wait_for_batches(&run);
    std::thread::sleep(Duration::from_millis(500));
    let out = kill_rank1(launcher).out;
    assert!(!out.status.success());
    let part = dir.path().join("run.part");
    let journals: Vec<String> = std::fs::read_dir(&part)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("journal."))
        .collect();
    assert_eq!(journals.len(), 2, "{journals:?}");
    // The same command again: every rank continues after its last durable batch.
    let out = build_loud(&run, &data, &["--nproc_per_node", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("(resumed: "), "{stderr}");
    assert_same_run(&one, &run);
}

/// Ctrl-C in a terminal reaches the launcher and its workers (one process group): every
/// worker stops after its batch, the job says so once, and the same command resumes it.
#[test]
fn ctrl_c_stops_every_worker_once_and_the_job_resumes() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let data = repeated_dataset(dir.path(), 100);
    let (one, run) = (dir.path().join("one"), dir.path().join("run"));
    run_ok(build(&one, &data, &[]));
    let mut cmd = build(&run, &data, &["--nproc_per_node", "2"]);
    cmd.env("BERGSON_SYNC_SECONDS", "0").process_group(0);
    let launcher = cmd.stderr(Stdio::piped()).spawn().unwrap();
    wait_for_batches(&run);
    // SAFETY: kill(2) on the process group of the launcher we started.
    unsafe { libc::kill(-(launcher.id() as libc::pid_t), libc::SIGINT) };
    let (out, _) = wait_within(launcher, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines,
        [
            "interrupted: stopping (Ctrl-C again to quit now)",
            "error: interrupted"
        ],
        "{stderr}"
    );
    run_ok(build(&run, &data, &["--nproc_per_node", "2"]));
    assert_same_run(&one, &run);
}

#[test]
fn a_killed_rank_ends_a_job_started_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let data = repeated_dataset(dir.path(), 300);
    for victim in [1, 0] {
        let run = dir.path().join(format!("run{victim}"));
        let port = free_port();
        let mut ranks: Vec<Option<Child>> = (0..2)
            .map(|r| {
                let mut cmd = rank_cmd(build(&run, &data, &[]), r, 2, port);
                cmd.env("BERGSON_DIST_HEARTBEAT_S", "2");
                Some(cmd.stderr(Stdio::piped()).spawn().unwrap())
            })
            .collect();
        wait_for_batches(&run);
        let mut dead = ranks[victim].take().unwrap();
        dead.kill().unwrap();
        let killed = Instant::now();
        let _ = dead.wait();
        let other = ranks[1 - victim].take().unwrap();
        let (out, _) = wait_within(other, Duration::from_secs(60));
        let waited = killed.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(waited < Duration::from_secs(10), "took {waited:?}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        if victim == 1 {
            // By the heartbeat limit, even when rank 0 reaches a collective first.
            assert!(
                lines[0].starts_with("error: rank 1 stopped responding"),
                "{stderr}"
            );
        } else {
            assert!(
                lines[0].starts_with("error: rank 1 lost the job's store"),
                "{stderr}"
            );
        }
        assert!(!run.exists(), "a failed job left a finished-looking index");
    }
}

#[test]
fn bad_process_counts_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = build(&run, &small_dataset(), &["--nproc_per_node", "0"])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["--nproc_per_node 0"]);
    let out = build(&run, &small_dataset(), &["--nnode", "2"])
        .env_remove("SLURM_NODEID")
        .env_remove("GROUP_RANK")
        .env_remove("NODE_RANK")
        .output()
        .unwrap();
    assert_one_line_error(&out, &["--node_rank"]);
    let out = build(
        &run,
        &small_dataset(),
        &["--nnode", "2", "--node_rank", "2"],
    )
    .output()
    .unwrap();
    assert_one_line_error(&out, &["--node_rank 2 is not below --nnode 2"]);
    // Bad input found by the workers: rank 0 reports it, the others and the launcher defer.
    let missing = dir.path().join("missing.jsonl");
    let out = build(&run, &missing, &["--nproc_per_node", "2"])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["missing.jsonl"]);
    let mut cmd = build(&run, &small_dataset(), &[]);
    let out = cmd
        .env("WORLD_SIZE", "2")
        .env("RANK", "5")
        .output()
        .unwrap();
    assert_one_line_error(&out, &["RANK=5 is not below WORLD_SIZE=2"]);
    assert!(!run.exists());
}
