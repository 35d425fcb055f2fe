//! Data-parallel `bergson magic` and `bergson train` on loopback Gloo: two processes (our
//! launcher, or ranks started by hand) give the one-process scores and trained weights. In
//! float64, so the comparison sees the algorithm rather than rounding: in float32 Adam's
//! first step amplifies the last bits of the gradient into its derivative (changing only
//! `--grad_accum_steps` moves one-process scores by 1e-2 there).

mod common;

use common::ranks::{
    assert_exited, free_port, kill_rank1, rank_cmd, run_ok, wait_within, KilledJob,
};
use common::{assert_one_line_error, bergson, fixtures};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

/// `bergson magic <run>` on the tiny fixture, float64, one thread per process.
fn magic(run: &Path, extra: &[&str]) -> Command {
    let dir = fixtures().join("bergson_magic");
    let mut cmd = bergson();
    cmd.arg("magic")
        .arg(run)
        .arg("--model")
        .arg(fixtures().join("models/gpt_neox"))
        .arg("--data.dataset")
        .arg(dir.join("train.jsonl"))
        .arg("--query.dataset")
        .arg(dir.join("query.jsonl"))
        .args(["--lr", "1e-3", "--precision", "fp64", "--quiet"])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .env_remove("WORLD_SIZE")
        .env_remove("RANK");
    cmd
}

/// The first score column of a run's `scores/`.
fn scores(run: &Path) -> Vec<f32> {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("scores/info.json")).unwrap()).unwrap();
    let size = info["dtype"]["itemsize"].as_u64().unwrap() as usize;
    let bytes = std::fs::read(run.join("scores/scores.bin")).unwrap();
    bytes
        .chunks(size)
        .map(|r| f32::from_le_bytes(r[..4].try_into().unwrap()))
        .collect()
}

/// `max |a - b| / max |a|`, and that the scores are not all zero.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
    assert!(scale > 0.0, "all-zero scores");
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    diff / scale
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Clipping, micro-batches split among the ranks and several steps through the `log`
/// schedule's recomputation: two processes (the launcher) give the one-process scores.
#[test]
fn launcher_magic_equals_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = [
        "--batch_size",
        "4",
        "--max_grad_norm",
        "0.5",
        "--grad_accum_steps",
        "2",
        "--save_mode",
        "log",
    ];
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run_ok(magic(&one, &flags));
    let mut cmd = magic(&two, &flags);
    cmd.args(["--nproc_per_node", "2"]);
    run_ok(cmd);
    let err = rel_err(&scores(&one), &scores(&two));
    assert!(err <= 1e-5, "2-process scores differ by {err:.2e}");
    // Rank 0 cleaned up as one process does: no backward state, the last checkpoint kept.
    assert_eq!(
        files(&one.join("checkpoints")),
        files(&two.join("checkpoints"))
    );
    assert_eq!(files(&one), files(&two));
}

/// Ranks started by hand (torchrun's variables, rank 1 first), summed query loss.
#[test]
fn ranks_by_hand_equal_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = [
        "--batch_size",
        "8",
        "--aggregation",
        "sum",
        "--save_mode",
        "all",
    ];
    let one = tmp.path().join("one");
    run_ok(magic(&one, &flags));
    let two = tmp.path().join("two");
    let port = free_port();
    let mut children = Vec::new();
    for rank in [1, 0] {
        let mut cmd = rank_cmd(magic(&two, &flags), rank, 2, port);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        children.push(cmd.spawn().unwrap());
    }
    for child in children {
        let (out, _) = wait_within(child, Duration::from_secs(300));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let err = rel_err(&scores(&one), &scores(&two));
    assert!(err <= 1e-5, "2-process scores differ by {err:.2e}");
}

/// `bergson train --nproc_per_node 2` trains the one-process weights.
#[test]
fn data_parallel_training_equals_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let train = |run: &Path, extra: &[&str]| {
        let mut cmd = bergson();
        cmd.arg("train")
            .arg(run)
            .arg("--model")
            .arg(fixtures().join("models/gpt_neox"))
            .arg("--dataset")
            .arg(fixtures().join("bergson_magic/train.jsonl"))
            .args(["--batch_size", "4", "--lr", "1e-2", "--precision", "fp64"])
            .args(["--max_grad_norm", "1.0", "--save_models", "--quiet"])
            .args(extra)
            .env("OMP_NUM_THREADS", "1")
            .env_remove("WORLD_SIZE")
            .env_remove("RANK");
        run_ok(cmd);
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    train(&one, &[]);
    train(&two, &["--nproc_per_node", "2"]);
    let read = |run: &Path| {
        let mut t = Tensor::read_safetensors(run.join("model/model.safetensors")).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (a, b) = (read(&one), read(&two));
    assert_eq!(a.len(), b.len());
    let initial: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("models/gpt_neox/model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let mut moved = 0f64;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let (x, y) = (x.to_kind(Kind::Double), y.to_kind(Kind::Double));
        let diff = f64::try_from((&x - &y).abs().max()).unwrap();
        assert!(diff <= 1e-9, "{name} differs by {diff:.2e}");
        if let Some(init) = initial.get(name) {
            let d = f64::try_from((&x - init.to_kind(Kind::Double)).abs().max()).unwrap();
            moved = moved.max(d);
        }
    }
    assert!(moved > 1e-3, "training did not move the weights ({moved})");
}

#[test]
fn what_runs_in_one_process_only_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = magic(
        &tmp.path().join("run"),
        &["--optimizer", "muon", "--batch_size", "8"],
    );
    cmd.args(["--nproc_per_node", "2"]);
    assert_one_line_error(&cmd.output().unwrap(), &["muon", "one process"]);
    let out = bergson()
        .arg("train")
        .arg(tmp.path().join("t"))
        .arg("--model")
        .arg(fixtures().join("models/gpt_neox"))
        .arg("--dataset")
        .arg(fixtures().join("bergson_magic/train.jsonl"))
        .args([
            "--collect_gradients",
            "--nproc_per_node",
            "2",
            "--batch_size",
            "4",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["--collect_gradients", "one process"]);
}

/// A rank killed during training ends the whole job within seconds, naming it, and leaves no
/// scores.
#[test]
fn a_killed_rank_stops_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixtures().join("bergson_magic/train.jsonl")).unwrap();
    let data = tmp.path().join("long.jsonl");
    std::fs::write(&data, text.repeat(250)).unwrap();
    let run = tmp.path().join("run");
    let mut cmd = magic(&run, &["--batch_size", "2", "--nproc_per_node", "2"]);
    cmd.arg("--data.dataset").arg(&data);
    let launcher = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while !run.join("checkpoints/log_history.json").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let KilledJob {
        out,
        waited,
        workers,
    } = kill_rank1(launcher);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(waited < Duration::from_secs(15), "took {waited:?}");
    assert!(stderr.contains("rank 1 was killed by signal 9"), "{stderr}");
    assert_exited(&workers);
    assert!(!run.join("scores").exists(), "a failed job left scores");
}
