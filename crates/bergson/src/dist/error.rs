//! What can go wrong between processes.

/// Errors of the `dist` module.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launch settings (`--nproc_per_node`, `--nnode`) or environment (`RANK`,
    /// `WORLD_SIZE`, ...) are wrong: the user's to fix.
    #[error("{0}")]
    Environment(String),
    /// The processes could not meet (store or Gloo connection set-up).
    #[error("rank {rank} could not join the job at {addr}: {msg}")]
    Rendezvous {
        /// This process's rank.
        rank: usize,
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// libtorch's message.
        msg: String,
    },
    /// A collective failed: a peer exited, or the timeout passed.
    #[error("rank {rank}: {op} failed: {msg} (another process of the job probably exited; its own error names it)")]
    Collective {
        /// This process's rank.
        rank: usize,
        /// Which collective.
        op: &'static str,
        /// libtorch's message.
        msg: String,
    },
    /// Other ranks reported a failure of their own.
    #[error("rank {} failed", list(.ranks))]
    PeerFailed {
        /// The ranks that failed.
        ranks: Vec<usize>,
    },
    /// A worker started by the launcher failed (the others were stopped).
    #[error("rank {rank} {}; stopped the other workers", exit(*.code, *.signal))]
    WorkerFailed {
        /// The worker's rank.
        rank: usize,
        /// Its exit status, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// A tensor handed to a collective is unusable (wrong device, dtype or shape).
    #[error("{0}")]
    BadTensor(String),
}

fn list(ranks: &[usize]) -> String {
    let names: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
    names.join(", ")
}

fn exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        (None, None) => "ended abnormally".into(),
    }
}
