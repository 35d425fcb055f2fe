//! Running a command to completion and measuring it: wall time, peak RSS (`wait4`), stderr, and
//! the phase table `bergson build --profile` prints.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

/// One finished run.
pub struct Run {
    pub seconds: f64,
    pub peak_rss_mb: f64,
    /// What the command wrote on stderr (`--profile` output, warnings).
    pub stderr: String,
}

/// Runs `cmd` to completion, timing it and reading its peak RSS from `wait4`; panics (with the
/// end of its stderr) if it fails.
#[allow(clippy::zombie_processes)] // reaped by wait4, which clippy does not see
pub fn run(cmd: &Command) -> Run {
    let mut cmd = clone(cmd);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id() as i32;
    // Read stderr on a thread so a chatty command cannot block on a full pipe.
    let mut pipe = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is fully written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    let stderr = reader.join().unwrap_or_default();
    if rc < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        panic!(
            "{cmd:?} failed: {}",
            stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    Run {
        seconds,
        peak_rss_mb: usage.ru_maxrss as f64 / 1024.0,
        stderr,
    }
}

fn clone(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

/// The rows of the table `bergson build --profile` prints after `profile:`, as (phase, seconds):
/// lines of the form `  <phase name> <seconds> s <percent>%`. Whatever phases the build reports
/// are taken, so a finer breakdown shows up here without changing the benchmark.
pub fn profile_phases(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .skip_while(|l| l.trim() != "profile:")
        .skip(1)
        .map_while(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [name @ .., secs, "s", pct] = words.as_slice() else {
                return None;
            };
            pct.strip_suffix('%')?.parse::<f64>().ok()?;
            Some((name.join(" "), secs.parse().ok()?))
        })
        .collect()
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
