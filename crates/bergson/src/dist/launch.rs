//! Bergson's launcher (`--nproc_per_node N`, and `--nnode M --node_rank R` on each of M
//! machines): the command starts N copies of its own program as workers, each told its place
//! in the job through torchrun's environment variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`: a free local port on one machine, the
//! caller's on several), waits for them, and stops the others as soon as one fails (SIGTERM,
//! then SIGKILL after [`GRACE`]).

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

/// Exit status of a process stopped by Ctrl-C (128 + SIGINT, the CLI's convention).
pub const INTERRUPTED_STATUS: i32 = 130;

/// Set in the environment of the workers this launcher starts: they leave reporting another
/// rank's failure to it.
pub const LAUNCHED: &str = "BERGSON_LAUNCHED";

/// How long the launcher waits, after a worker failed, for the others to end on their own.
const SETTLE: Duration = Duration::from_secs(2);

/// How long a stopped worker gets to exit after SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// What this process is in a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The whole job.
    Single,
    /// One rank of a job someone started (our launcher or torchrun: `WORLD_SIZE` is set).
    Worker,
    /// The launcher of this machine's workers.
    Launcher(Node),
}

/// This machine's share of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Machines in the job (`--nnode`).
    pub nnode: usize,
    /// This machine's rank (`--node_rank`, else `SLURM_NODEID`, `GROUP_RANK`, `NODE_RANK`).
    pub node_rank: usize,
    /// Workers on this machine (`--nproc_per_node`).
    pub nproc: usize,
    /// Where rank 0 hosts the store: `MASTER_ADDR` and `MASTER_PORT` (default
    /// 127.0.0.1:29500) with several machines; `None` on one, for a free local port.
    pub master: Option<(String, u16)>,
}

/// Decides the role from the run's settings and the environment: a process with `WORLD_SIZE`
/// set is a worker whatever its flags say (torchrun's own `--nproc_per_node` is not ours).
pub fn role(cfg: &DistributedConfig) -> Result<Role, DistError> {
    check_config(cfg)?;
    if std::env::var_os("WORLD_SIZE").is_some() {
        return Ok(Role::Worker);
    }
    if cfg.nnode == 1 {
        return Ok(match cfg.nproc_per_node {
            1 => Role::Single,
            nproc => Role::Launcher(Node {
                nnode: 1,
                node_rank: 0,
                nproc,
                master: None,
            }),
        });
    }
    let node_rank = match cfg.node_rank {
        Some(r) => r,
        None => node_rank_from_env()?,
    };
    let addr = std::env::var("MASTER_ADDR")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p.trim().parse().map_err(|_| {
            DistError::Environment(format!("MASTER_PORT={p:?} is not a port number"))
        })?,
        Err(_) => 29500,
    };
    if node_rank >= cfg.nnode {
        return Err(DistError::Environment(format!(
            "node rank {node_rank} is not below --nnode {}",
            cfg.nnode
        )));
    }
    Ok(Role::Launcher(Node {
        nnode: cfg.nnode,
        node_rank,
        nproc: cfg.nproc_per_node,
        master: Some((addr, port)),
    }))
}

/// The node rank a scheduler set (Bergson's order: `SLURM_NODEID`, `GROUP_RANK`, `NODE_RANK`).
fn node_rank_from_env() -> Result<usize, DistError> {
    for var in ["SLURM_NODEID", "GROUP_RANK", "NODE_RANK"] {
        if let Ok(v) = std::env::var(var) {
            return v
                .trim()
                .parse()
                .map_err(|_| DistError::Environment(format!("{var}={v:?} is not a node rank")));
        }
    }
    Err(DistError::Environment(
        "--nnode above 1 needs this machine's rank: pass --node_rank (or set SLURM_NODEID, \
         GROUP_RANK or NODE_RANK)"
            .into(),
    ))
}

/// Refuses settings no job can run with.
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
    if let Some(r) = cfg.node_rank.filter(|&r| r >= cfg.nnode) {
        return Err(DistError::Environment(format!(
            "--node_rank {r} is not below --nnode {}",
            cfg.nnode
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
    node: &Node,
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
    let result = run_workers(program, &args, node);
    let _ = std::fs::remove_file(&file);
    Ok(result?)
}

/// Runs `program args` as this machine's workers of the job and waits for all of them.
/// Workers get `OMP_NUM_THREADS` = cores / workers unless it is set, and die with this process.
pub fn run_workers(program: &Path, args: &[OsString], node: &Node) -> Result<(), DistError> {
    let nproc = node.nproc;
    let (addr, port) = match &node.master {
        Some((addr, port)) => (addr.clone(), *port),
        None => ("127.0.0.1".to_string(), free_port()?),
    };
    let first = node.node_rank * nproc;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .div_ceil(nproc)
        .max(1);
    let mut workers = Vec::with_capacity(nproc);
    for local in 0..nproc {
        let rank = first + local;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", (node.nnode * nproc).to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", port.to_string())
            .env(LAUNCHED, "1")
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
    wait_all(workers, first)
}

/// Waits for every worker. After the first failure, gives the others [`SETTLE`] to end on
/// their own (they learn of it at their next agreement), stops the rest, and blames the first
/// rank that failed for a reason of its own (not [`PEER_FAILED_STATUS`]).
fn wait_all(mut workers: Vec<Child>, first: usize) -> Result<(), DistError> {
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
        rank: first + *rank,
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
        check_config(&cfg).unwrap();
        cfg.node_rank = Some(2);
        assert!(check_config(&cfg)
            .unwrap_err()
            .to_string()
            .contains("--node_rank 2 is not below --nnode 2"));
    }
}
