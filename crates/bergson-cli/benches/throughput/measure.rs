//! Running a command to completion and measuring it: wall time, CPU time (`wait4`), peak RSS
//! (the child's sampled `VmHWM`), stderr, and
//! the phase table `bergson build --profile` prints; and finding the Python Bergson to compare
//! with.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// One finished run.
pub struct Run {
    pub seconds: f64,
    pub peak_rss_mb: f64,
    /// User plus system CPU seconds of the command (all its threads): the work done, which
    /// other load on the machine changes far less than the wall time.
    pub cpu_seconds: f64,
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
    // Peak RSS from the child's own VmHWM, sampled: `wait4`'s ru_maxrss also counts the
    // pages the child shared with this process between fork and exec, so a benchmark that
    // holds a large corpus in memory would see it in every child.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak_kb = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kb) = vm_hwm_kb(pid) {
                    peak_kb = peak_kb.max(kb);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak_kb
        })
    };
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is fully written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let sampled_kb = sampler.join().unwrap_or(0);
    let stderr = reader.join().unwrap_or_default();
    if rc < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        panic!(
            "{cmd:?} failed: {}",
            stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    Run {
        seconds,
        // The sample when the child lived long enough to be seen (every real run does).
        peak_rss_mb: if sampled_kb > 0 {
            sampled_kb as f64 / 1024.0
        } else {
            usage.ru_maxrss as f64 / 1024.0
        },
        cpu_seconds: timeval_seconds(usage.ru_utime) + timeval_seconds(usage.ru_stime),
        stderr,
    }
}

/// `VmHWM` (peak resident set) of a live process, in KiB.
fn vm_hwm_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn timeval_seconds(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 * 1e-6
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

/// A Python with bergson 2.5.1 to run side by side: `BERGSON_PY`, else `python3` if it imports
/// bergson 2.5.1.
pub fn find_python() -> Option<PathBuf> {
    std::env::var_os("BERGSON_PY")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("python3")])
        .find(|py| {
            Command::new(py)
                .args([
                    "-c",
                    "import bergson, importlib.metadata as m; assert m.version('bergson') == '2.5.1'",
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}
