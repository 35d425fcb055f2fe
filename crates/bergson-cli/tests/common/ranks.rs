//! Helpers of the multi-process tests: ranks started by hand (torchrun's variables), the
//! processes a launcher started, and a run long enough to kill in the middle.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::fixtures;

/// The small JSONL fixture the multi-process tests build and score.
pub fn small_dataset() -> PathBuf {
    fixtures().join("build/resume.jsonl")
}

/// The fixture repeated `times` times (a run long enough to kill in the middle).
pub fn repeated_dataset(dir: &Path, times: usize) -> PathBuf {
    let text = std::fs::read_to_string(small_dataset()).unwrap();
    let path = dir.join("many.jsonl");
    std::fs::write(&path, text.repeat(times)).unwrap();
    path
}

/// Runs `cmd`, which must succeed (its stderr shown if not).
pub fn run_ok(mut cmd: Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A local port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Rank `rank` of `world` started by hand, torchrun-style.
pub fn rank_cmd(mut cmd: Command, rank: usize, world: usize, port: u16) -> Command {
    cmd.env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string());
    cmd
}

/// Waits for `child` at most `limit`, killing it after that.
pub fn wait_within(child: Child, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(limit);
        // SAFETY: kill(2) on a pid we started; harmless if it already exited and was reaped
        // moments ago (the test then fails on the time check anyway).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    drop(watchdog);
    (out, start.elapsed())
}

/// Child pids of `pid` (every thread's list).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let text =
            std::fs::read_to_string(task.unwrap().path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|s| s.parse::<u32>().ok()),
        );
    }
    out
}

/// The environment of process `pid`.
pub fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|&c| c == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` has exited (a zombie, or gone).
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}

/// What killing a launcher's rank-1 worker led to.
pub struct KilledJob {
    /// The launcher's output.
    pub out: Output,
    /// Time from the kill to the launcher's exit.
    pub waited: Duration,
    /// The launcher's workers when the kill was sent.
    pub workers: Vec<u32>,
}

/// Kills (SIGKILL) the rank-1 worker of `launcher`, which runs two, and waits at most a
/// minute for the launcher to exit.
pub fn kill_rank1(launcher: Child) -> KilledJob {
    let workers = children(launcher.id());
    assert_eq!(workers.len(), 2, "workers {workers:?}");
    let rank1 = *workers
        .iter()
        .find(|&&pid| environ(pid).contains(&"RANK=1".to_string()))
        .unwrap();
    let killed = Instant::now();
    // SAFETY: kill(2) on a worker of the launcher we started.
    unsafe { libc::kill(rank1 as libc::pid_t, libc::SIGKILL) };
    let (out, _) = wait_within(launcher, Duration::from_secs(60));
    KilledJob {
        out,
        waited: killed.elapsed(),
        workers,
    }
}

/// Asserts that every one of `pids` has exited.
pub fn assert_exited(pids: &[u32]) {
    for &pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            "worker {pid} alive"
        );
    }
}
