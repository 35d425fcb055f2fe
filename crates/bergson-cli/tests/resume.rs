//! Crash safety and resume: real builds killed at random points (SIGKILL) or interrupted
//! (SIGINT) never leave a run directory that looks complete, and rerunning the same command
//! finishes an index byte-identical to an uninterrupted build.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::repo_root as repo;

/// `bergson build <run> ...` on the gpt_neox fixture, many small batches, journal synced after
/// every batch so kills land between durable checkpoints.
fn build_cmd(run: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bergson"));
    let repo = repo();
    cmd.arg("build")
        .arg(run)
        .arg("--model")
        .arg(repo.join("tests/fixtures/models/gpt_neox"))
        .arg("--dataset")
        .arg(repo.join("tests/fixtures/build/resume.jsonl"))
        .args([
            "--projection_dim",
            "8",
            "--token_batch_size",
            "64",
            "--quiet",
        ])
        .args(extra)
        .env("BERGSON_SYNC_SECONDS", "0")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Every file of a run directory with its bytes; config.yaml without its `created:` time and
/// `run_path` (which name the run, not its contents).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    common::snapshot_without(dir, &["created:", "run_path:"])
}

/// Names of the files whose bytes differ (or exist on one side only).
fn differing(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn run_to_end(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `sig` to `child`.
fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid, which `child` has not reaped yet.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig}) failed", child.id());
}

/// What a finished child wrote on stderr.
fn child_stderr(child: &mut Child) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut bytes);
    }
    bytes
}

/// Lines in the journal of a running build (one per durable batch, plus the header).
fn journal_lines(part: &Path) -> usize {
    std::fs::read_to_string(part.join("journal.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Waits until the journal of `child`'s build has `lines` lines, or the build ends (a loaded
/// machine may still be loading libtorch when a fixed timer fires).
fn wait_for_journal(child: &mut Child, part: &Path, lines: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while journal_lines(part) < lines
        && child.try_wait().unwrap().is_none()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until `lines` journal lines are durable, then freezes the build (SIGSTOP) so the
/// signal a test sends next lands mid-run however fast or loaded the machine is. Panics if the
/// build ended first: the test would otherwise check nothing.
fn freeze_mid_run(child: &mut Child, part: &Path, lines: usize) {
    wait_for_journal(child, part, lines);
    signal(child, libc::SIGSTOP);
    let have = journal_lines(part);
    assert!(
        have >= lines && child.try_wait().unwrap().is_none(),
        "the build ended (or stalled) with {have} journal lines before {lines} were durable; \
         the fixture dataset must give it more batches"
    );
}

#[test]
fn killed_builds_resume_to_identical_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    let t0 = Instant::now();
    run_to_end(&mut build_cmd(&reference, &[]));
    let full = t0.elapsed();
    let want = snapshot(&reference);
    assert!(
        want.contains_key("gradients.bin")
            && want.contains_key("data.hf/data-00000-of-00001.arrow")
    );

    // Pseudo-random kill points (fixed sequence): half of the rounds kill at a random time in
    // the run, half once the journal has reached a random batch, plus a random delay.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut resumed_mid_run = 0;
    for round in 0..8 {
        let run = tmp.path().join(format!("run{round}"));
        let part = PathBuf::from(format!("{}.part", run.display()));
        let mut child = build_cmd(&run, &[]).spawn().unwrap();
        if round % 2 == 0 {
            std::thread::sleep(full.mul_f64(0.1 + 0.85 * (next() % 1000) as f64 / 1000.0));
        } else {
            wait_for_journal(&mut child, &part, 2 + (next() % 12) as usize);
            std::thread::sleep(Duration::from_micros(next() % 20_000));
        }
        let _ = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        if status.success() || run.exists() {
            // Finished (renamed into place) before the kill landed: it must be complete.
            assert!(
                !part.exists(),
                "round {round}: both the run and its .part exist"
            );
            assert_eq!(
                differing(&snapshot(&run), &want),
                Vec::<String>::new(),
                "round {round}"
            );
            continue;
        }
        if journal_lines(&part) > 1 {
            resumed_mid_run += 1;
        }
        run_to_end(&mut build_cmd(&run, &[]));
        assert!(
            !part.exists(),
            "round {round}: .part left after the resumed build"
        );
        assert_eq!(
            differing(&snapshot(&run), &want),
            Vec::<String>::new(),
            "round {round}: resumed index differs"
        );
    }
    assert!(
        resumed_mid_run >= 2,
        "only {resumed_mid_run} kills landed mid-run; the test exercised too little"
    );
}

#[test]
fn ctrl_c_stops_quickly_and_leaves_a_resumable_part() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    run_to_end(&mut build_cmd(&reference, &[]));
    let want = snapshot(&reference);

    // Interrupt mid-run: once a few batches are durable.
    let run = tmp.path().join("run");
    let part = PathBuf::from(format!("{}.part", run.display()));
    let mut child = build_cmd(&run, &[]).spawn().unwrap();
    freeze_mid_run(&mut child, &part, 3);
    // The Ctrl-C is pending while the build is stopped and delivered as it resumes.
    signal(&child, libc::SIGINT);
    let start = Instant::now();
    signal(&child, libc::SIGCONT);
    let status = child.wait().unwrap();
    let took = start.elapsed();
    assert_eq!(
        status.code(),
        Some(130),
        "Ctrl-C mid-run must exit with status 130: {}",
        String::from_utf8_lossy(&child_stderr(&mut child))
    );
    assert!(
        took < Duration::from_secs(3),
        "Ctrl-C took {took:?} to stop the build"
    );
    assert!(!run.exists());
    assert!(part.is_dir(), "Ctrl-C must leave {}", part.display());
    run_to_end(&mut build_cmd(&run, &[]));
    assert_eq!(differing(&snapshot(&run), &want), Vec::<String>::new());
}

#[test]
fn a_part_of_another_config_is_refused_then_replaced_with_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let part = PathBuf::from(format!("{}.part", run.display()));
    let mut child = build_cmd(&run, &[]).spawn().unwrap();
    freeze_mid_run(&mut child, &part, 2);
    signal(&child, libc::SIGKILL);
    let status = child.wait().unwrap();
    assert!(!status.success() && part.is_dir() && !run.exists());
    // Another config: a projection seed (build_cmd already sets --projection_dim).
    let out = build_cmd(&run, &["--projection_seed", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("different config") && err.contains("--overwrite"),
        "{err}"
    );
    run_to_end(&mut build_cmd(
        &run,
        &["--projection_seed", "3", "--overwrite"],
    ));
    assert!(run.join("gradients.bin").exists() && !part.exists());
}

#[test]
fn a_saved_config_reproduces_the_run_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    run_to_end(&mut build_cmd(&run, &["--attribute_tokens"]));
    let first = tmp.path().join("first");
    std::fs::rename(&run, &first).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bergson"))
        .arg(first.join("config.yaml"))
        .args(["--num_threads", "1", "--quiet", "--device=cpu"]) // runtime flags are accepted
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "--quiet: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        differing(&snapshot(&run), &snapshot(&first)),
        Vec::<String>::new()
    );
}
