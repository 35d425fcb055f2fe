//! Bergson's launcher (`--nproc_per_node N` on one machine): the command starts N copies of
//! its own program as workers, each told its place in the job through torchrun's environment
//! variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT` on a free local port), waits for them, and stops the others as soon as one
//! fails (SIGTERM, then SIGKILL after [`GRACE`]).

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::DistError;
use crate::config::run_file::{config_yaml, Step};
use crate::config::DistributedConfig;
use crate::error::IoContext;

/// Exit status of a worker that stopped because another rank failed (the CLI's convention),
/// so the launcher blames the rank that failed first.
pub const PEER_FAILED_STATUS: i32 = 3;

/// How long the launcher waits, after a worker failed, for the others to end on their own.
const SETTLE: Duration = Duration::from_secs(2);

/// How long a stopped worker gets to exit after SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// What this process is in a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The whole job.
    Single,
    /// One rank of a job someone started (our launcher or torchrun: `WORLD_SIZE` is set).
    Worker,
    /// The launcher of this many local workers.
    Launcher(usize),
}

/// Decides the role from the run's settings and the environment: a process with `WORLD_SIZE`
/// set is a worker whatever its flags say (torchrun's own `--nproc_per_node` is not ours).
pub fn role(cfg: &DistributedConfig) -> Result<Role, DistError> {
    check_config(cfg)?;
    if std::env::var_os("WORLD_SIZE").is_some() {
        return Ok(Role::Worker);
    }
    Ok(match cfg.nproc_per_node {
        1 => Role::Single,
        n => Role::Launcher(n),
    })
}

/// Refuses settings no job can run with, and several machines (not yet supported).
pub fn check_config(cfg: &DistributedConfig) -> Result<(), DistError> {
    if cfg.nproc_per_node == 0 {
        return Err(DistError::Environment(
            "--nproc_per_node 0: a job needs at least one process per node".into(),
        ));
    }
    if cfg.nnode == 0 {
        return Err(DistError::Environment(
            "--nnode 0: a job needs at least one node".into(),
        ));
    }
    if cfg.nnode > 1 {
        return Err(DistError::Environment(format!(
            "--nnode {}: bergson-rs runs one machine's processes (--nproc_per_node) or a job \
             started by torchrun; use torchrun --nnodes {} with `--no-python bergson ...` for \
             several machines",
            cfg.nnode, cfg.nnode
        )));
    }
    Ok(())
}

/// Runs `step` as `nproc` workers of `program` (the `bergson` binary), each replaying it from
/// a temporary run file followed by `extra_args` (runtime flags such as `--quiet`).
pub fn run_step(
    program: &Path,
    step: &Step,
    extra_args: &[OsString],
    nproc: usize,
) -> crate::Result<()> {
    let file = std::env::temp_dir().join(format!(
        "bergson-{}-{}.yaml",
        step.command(),
        std::process::id()
    ));
    let yaml = config_yaml(step, chrono::Utc::now())?;
    std::fs::write(&file, yaml).at_path(&file)?;
    let mut args = vec![file.clone().into_os_string()];
    args.extend(extra_args.iter().cloned());
    let result = run_workers(program, &args, nproc);
    let _ = std::fs::remove_file(&file);
    Ok(result?)
}

/// Runs `program args` as `nproc` workers and waits for all of them. Workers get
/// `OMP_NUM_THREADS` = cores / `nproc` unless it is set, and die with this process.
pub fn run_workers(program: &Path, args: &[OsString], nproc: usize) -> Result<(), DistError> {
    let port = free_port()?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .div_ceil(nproc)
        .max(1);
    let mut workers = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE");
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            cmd.env("OMP_NUM_THREADS", threads.to_string());
        }
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                // A worker outlives no launcher (killed, or exited on a second Ctrl-C).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => workers.push(child),
            Err(e) => {
                stop(&mut workers);
                return Err(DistError::Environment(format!(
                    "cannot start worker {rank} ({}): {e}",
                    program.display()
                )));
            }
        }
    }
    wait_all(workers)
}

/// Waits for every worker. After the first failure, gives the others [`SETTLE`] to end on
/// their own (they learn of it at their next agreement), stops the rest, and blames the first
/// rank that failed for a reason of its own (not [`PEER_FAILED_STATUS`]).
fn wait_all(mut workers: Vec<Child>) -> Result<(), DistError> {
    let mut running: Vec<usize> = (0..workers.len()).collect();
    let mut failures: Vec<(usize, ExitStatus)> = Vec::new();
    let mut settle_until: Option<Instant> = None;
    while !running.is_empty() {
        running.retain(|&rank| match workers[rank].try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                if !status.success() {
                    failures.push((rank, status));
                }
                false
            }
            Err(_) => false,
        });
        if !failures.is_empty() {
            let until = *settle_until.get_or_insert_with(|| Instant::now() + SETTLE);
            if Instant::now() >= until {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if failures.is_empty() {
        return Ok(());
    }
    let mut rest: Vec<Child> = Vec::new();
    for &r in running.iter().rev() {
        rest.push(workers.swap_remove(r));
    }
    stop(&mut rest);
    let (rank, status) = failures
        .iter()
        .find(|(_, s)| s.code() != Some(PEER_FAILED_STATUS))
        .unwrap_or(&failures[0]);
    Err(DistError::WorkerFailed {
        rank: *rank,
        code: status.code(),
        signal: status.signal(),
    })
}

/// SIGTERM to every worker, SIGKILL to those still running after [`GRACE`].
fn stop(workers: &mut [Child]) {
    for w in workers.iter() {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(w.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + GRACE;
    for w in workers.iter_mut() {
        while matches!(w.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = w.kill();
                let _ = w.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A local port nothing listens on now (the store host binds it moments later).
fn free_port() -> Result<u16, DistError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DistError::Environment(format!("cannot find a free local port: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_process_counts_are_refused() {
        let mut cfg = DistributedConfig {
            nproc_per_node: 0,
            ..Default::default()
        };
        assert!(check_config(&cfg)
            .unwrap_err()
            .to_string()
            .contains("--nproc_per_node 0"));
        cfg.nproc_per_node = 2;
        check_config(&cfg).unwrap();
        cfg.nnode = 2;
        assert!(check_config(&cfg)
            .unwrap_err()
            .to_string()
            .contains("torchrun"));
    }
}
