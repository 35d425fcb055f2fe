//! [`Watcher`]: notices within seconds that another process of the job died, rather than at
//! the next collective (which may be hours away, at the end of a long build). Each rank's
//! watcher thread bumps its own counter in the job's store every [`PERIOD`] and reads the
//! others'; a counter that stops moving for the heartbeat limit, or a store that stops
//! answering (rank 0 or torchrun's agent, which host it, exited), ends this process with one
//! line naming the rank and [`super::launch::PEER_FAILED_STATUS`].

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::launch::{INTERRUPTED_STATUS, PEER_FAILED_STATUS};
use super::{Collective, DistError, Gloo, StoreClient};

/// How often each rank shows it is alive.
pub const PERIOD: Duration = Duration::from_millis(500);

/// A running watcher thread; stopped (and joined) when dropped.
pub struct Watcher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching the other ranks of `group`, declaring one dead after `limit` without
    /// a heartbeat.
    pub fn start(group: &Gloo, limit: Duration) -> Result<Watcher, DistError> {
        let store = group.store()?;
        let (rank, world) = (group.rank(), group.world_size());
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bergson-watch".into())
            .spawn(move || watch(store, rank, world, limit, stopped))
            .map_err(|e| DistError::Environment(format!("cannot start the watcher thread: {e}")))?;
        Ok(Watcher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(
    store: StoreClient,
    rank: usize,
    world: usize,
    limit: Duration,
    stopped: mpsc::Receiver<()>,
) {
    let mut seen: Vec<(i64, Instant)> = vec![(-1, Instant::now()); world];
    loop {
        let beat = store.add(&format!("heartbeat/{rank}"), 1);
        let others = (0..world).filter(|&r| r != rank).try_for_each(|r| {
            let n = store.add(&format!("heartbeat/{r}"), 0)?;
            let (last, at) = &mut seen[r];
            // A rank that never sent a heartbeat is not watched: it is starting, or it is not
            // a bergson-rs process (a PyTorch rank in a mixed job). Collectives still fail
            // if it dies.
            if n == 0 {
                *at = Instant::now();
            } else if n != *last {
                (*last, *at) = (n, Instant::now());
            } else if at.elapsed() > limit {
                return Err(format!(
                    "rank {r} stopped responding (no heartbeat for {:.0} s); stopping rank {rank}",
                    limit.as_secs_f64()
                ));
            }
            Ok(())
        });
        let failure = match (beat, others) {
            (Err(e), _) => Some(lost_store(rank, &e)),
            (_, Err(e)) if e.starts_with("rank ") => Some(e),
            (_, Err(e)) => Some(lost_store(rank, &e)),
            _ => None,
        };
        if failure.is_some() && crate::interrupt::requested() {
            // Ctrl-C reached the whole job: a peer that already stopped is no failure.
            // SAFETY: as below.
            unsafe { libc::_exit(INTERRUPTED_STATUS) };
        }
        if let Some(msg) = failure {
            // The main thread may be deep in a batch or a collective: end the process here,
            // without exit handlers (they would tear libtorch down under the main thread). Our
            // launcher names the rank that died itself.
            if std::env::var_os(super::launch::LAUNCHED).is_none() {
                eprintln!("error: {msg}");
            }
            // SAFETY: _exit ends the process at once; nothing here relies on cleanup.
            unsafe { libc::_exit(PEER_FAILED_STATUS) };
        }
        match stopped.recv_timeout(PERIOD) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

fn lost_store(rank: usize, e: &str) -> String {
    format!(
        "rank {rank} lost the job's store (rank 0 or torchrun's agent, which host it, exited): {e}"
    )
}
