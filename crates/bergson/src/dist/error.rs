//! What can go wrong between processes.

/// Errors of the `dist` module.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launch environment (`RANK`, `WORLD_SIZE`, ...) is missing or inconsistent.
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
    /// A tensor handed to a collective is unusable (wrong device, dtype or shape).
    #[error("{0}")]
    BadTensor(String),
}

fn list(ranks: &[usize]) -> String {
    let names: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
    names.join(", ")
}
