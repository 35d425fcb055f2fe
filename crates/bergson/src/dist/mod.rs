//! Several processes on one job, on PyTorch's own c10d: a [`Collective`] trait with a Gloo
//! implementation ([`Gloo`], CPU tensors, through `csrc/c10d_shim.cpp`) and a one-process one
//! ([`SingleProcess`]), so code written against the trait runs the same with or without a
//! cluster. [`Rendezvous`] reads a process's place in the job from torchrun's environment
//! variables; [`connect`] joins the job they describe, with a [`Watcher`] that ends this
//! process soon after another one dies; [`launch`] starts the processes of a job on one
//! machine.
//!
//! Every rank must issue the same collectives in the same order, or the job waits until the
//! timeout (`BERGSON_DIST_TIMEOUT_MIN`, default 180 as in Bergson).

mod env;
mod error;
mod ffi;
mod gloo;
pub mod launch;
mod single;
mod watch;

pub use env::Rendezvous;
pub use error::DistError;
pub use gloo::{Gloo, StoreClient};
pub use single::SingleProcess;
pub use watch::Watcher;

use tch::{Device, Kind, Tensor};

/// How [`Collective::all_reduce`] combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise minimum.
    Min,
    /// Element-wise maximum.
    Max,
}

/// Collectives over the processes of one job. Tensors are CPU tensors; a non-contiguous one is
/// reduced through a contiguous copy (Gloo itself would read the wrong elements).
pub trait Collective {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn world_size(&self) -> usize;
    /// Combines `t` over every rank, in place on each.
    fn all_reduce(&self, t: &mut Tensor, op: ReduceOp) -> Result<(), DistError>;
    /// Copies rank `root`'s `t` into every rank's `t`.
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), DistError>;
    /// Every rank's `t` (same shape and dtype on every rank), in rank order.
    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>, DistError>;
    /// Waits until every rank got here.
    fn barrier(&self) -> Result<(), DistError>;

    /// Tells every rank whether this one succeeded, and fails with the ranks that did not
    /// ([`DistError::PeerFailed`]) if any other did. A rank that failed itself gets `Ok` and
    /// reports its own error.
    fn agree(&self, ok: bool) -> Result<(), DistError> {
        let ranks: Vec<usize> = self
            .failed_ranks(ok)?
            .into_iter()
            .filter(|&r| r != self.rank())
            .collect();
        if ok && !ranks.is_empty() {
            return Err(DistError::PeerFailed { ranks });
        }
        Ok(())
    }

    /// Tells every rank whether this one succeeded; returns the ranks that did not.
    fn failed_ranks(&self, ok: bool) -> Result<Vec<usize>, DistError> {
        let mut failed = Tensor::zeros([self.world_size() as i64], (Kind::Int64, Device::Cpu));
        if !ok {
            let _ = failed.get(self.rank() as i64).fill_(1);
        }
        self.all_reduce(&mut failed, ReduceOp::Max)?;
        let flags =
            Vec::<i64>::try_from(&failed).map_err(|e| DistError::BadTensor(e.to_string()))?;
        Ok(flags
            .iter()
            .enumerate()
            .filter(|&(_, &f)| f != 0)
            .map(|(r, _)| r)
            .collect())
    }
}

/// [`Collective::all_reduce`] of a tensor on any device (through a CPU copy off the CPU); does
/// nothing in a job of one.
pub fn all_reduce_anywhere(
    job: &dyn Collective,
    t: &mut Tensor,
    op: ReduceOp,
) -> Result<(), DistError> {
    if job.world_size() == 1 {
        return Ok(());
    }
    on_host(t, |host| job.all_reduce(host, op))
}

/// [`Collective::broadcast`] of a tensor on any device (through a CPU copy off the CPU); does
/// nothing in a job of one.
pub fn broadcast_anywhere(
    job: &dyn Collective,
    t: &mut Tensor,
    root: usize,
) -> Result<(), DistError> {
    if job.world_size() == 1 {
        return Ok(());
    }
    on_host(t, |host| job.broadcast(host, root))
}

/// The smallest and largest of every rank's `value` (`(value, value)` in a job of one): how
/// ranks check they agree on a step, a flag or a count.
pub fn range_over_ranks(job: &dyn Collective, value: i64) -> Result<(i64, i64), DistError> {
    if job.world_size() == 1 {
        return Ok((value, value));
    }
    let mut lo = Tensor::from_slice(&[value]);
    let mut hi = Tensor::from_slice(&[value]);
    job.all_reduce(&mut lo, ReduceOp::Min)?;
    job.all_reduce(&mut hi, ReduceOp::Max)?;
    let read = |t: &Tensor| {
        t.f_int64_value(&[0])
            .map_err(|e| DistError::BadTensor(e.to_string()))
    };
    Ok((read(&lo)?, read(&hi)?))
}

/// Sums each of `tensors` over every rank through one collective (a flat buffer of their
/// common dtype, so many small tensors cost one round trip); returns the sums, each in its
/// input's shape, dtype and device. An undefined tensor counts as zeros shaped as the
/// matching `like`. Returns the inputs (undefined ones as zeros) in a job of one.
pub fn sum_over_ranks(
    job: &dyn Collective,
    tensors: &[Tensor],
    like: &[Tensor],
) -> Result<Vec<Tensor>, DistError> {
    let parts: Vec<Tensor> = (tensors.iter().zip(like))
        .map(|(t, l)| {
            if t.defined() {
                t.detach()
            } else {
                l.detach().zeros_like()
            }
        })
        .collect();
    if job.world_size() == 1 || parts.is_empty() {
        return Ok(parts);
    }
    let bad = |e: tch::TchError| DistError::BadTensor(e.to_string());
    let flat: Vec<Tensor> = parts
        .iter()
        .map(|t| t.f_to_device(Device::Cpu).and_then(|t| t.f_reshape([-1])))
        .collect::<Result<_, _>>()
        .map_err(bad)?;
    let mut buffer = Tensor::f_cat(&flat, 0).map_err(bad)?.contiguous();
    job.all_reduce(&mut buffer, ReduceOp::Sum)?;
    let mut offset = 0;
    parts
        .iter()
        .map(|t| {
            let n = t.numel() as i64;
            let piece = buffer.f_narrow(0, offset, n).map_err(bad)?;
            offset += n;
            piece
                .f_reshape(t.size())
                .and_then(|p| p.f_to_kind(t.kind()))
                .and_then(|p| p.f_to_device(t.device()))
                .map_err(bad)
        })
        .collect()
}

/// Runs `f` on `t` itself when it is a contiguous CPU tensor, else on a contiguous CPU copy
/// that is copied back into `t`.
fn on_host(
    t: &mut Tensor,
    f: impl FnOnce(&mut Tensor) -> Result<(), DistError>,
) -> Result<(), DistError> {
    if t.device() == Device::Cpu && t.is_contiguous() {
        return f(t);
    }
    let bad = |e: tch::TchError| DistError::BadTensor(e.to_string());
    let mut host = t
        .f_to_device(Device::Cpu)
        .and_then(|h| h.f_contiguous())
        .map_err(bad)?;
    f(&mut host)?;
    t.f_copy_(&host).map_err(bad)
}

/// This process's membership of a job: its collectives and, with several processes, the
/// [`Watcher`] that ends it soon after another rank dies.
pub struct Job {
    group: std::rc::Rc<dyn Collective>,
    watcher: Option<Watcher>,
    /// The watcher's heartbeat limit.
    heartbeat_limit: std::time::Duration,
}

impl Job {
    /// A job of one process.
    pub fn single() -> Job {
        Job {
            group: std::rc::Rc::new(SingleProcess),
            watcher: None,
            heartbeat_limit: std::time::Duration::ZERO,
        }
    }

    /// The job's collectives.
    pub fn collective(&self) -> &dyn Collective {
        &*self.group
    }

    /// The job's collectives, for work that keeps them beside its own state (a trainer).
    pub fn shared(&self) -> std::rc::Rc<dyn Collective> {
        self.group.clone()
    }

    /// The error this process reports for a failure of its work. After Ctrl-C (this process
    /// was asked to stop, and so were its peers) a collective that failed because a peer
    /// already stopped is the interruption itself. Otherwise, after a collective failed (a
    /// peer's connection closed), gives the watcher time to name the rank that died (it ends
    /// the process with that line), so the error reported is that one rather than Gloo's,
    /// which names no rank.
    pub fn explain(&self, err: crate::Error) -> crate::Error {
        if matches!(err, crate::Error::Dist(_)) && crate::interrupt::requested() {
            return crate::Error::Interrupted;
        }
        if self.watcher.is_some() && matches!(err, crate::Error::Dist(DistError::Collective { .. }))
        {
            std::thread::sleep(self.heartbeat_limit + 3 * watch::PERIOD);
        }
        err
    }

    /// Leaves the job after its work succeeded: stops watching the others, then waits until
    /// every rank got here, so that rank 0 (which hosts the store) is the last to go.
    pub fn finish(mut self) -> Result<(), DistError> {
        drop(self.watcher.take());
        self.group.barrier()
    }
}

impl std::ops::Deref for Job {
    type Target = dyn Collective;

    fn deref(&self) -> &Self::Target {
        &*self.group
    }
}

/// Joins the job the environment describes ([`Rendezvous::from_env`]): Gloo, watched, when it
/// has two or more processes, else a job of one.
pub fn connect() -> Result<Job, DistError> {
    match Rendezvous::from_env()? {
        Some(rv) if rv.world_size > 1 => {
            let group = Gloo::connect(&rv)?;
            let watcher = Watcher::start(&group, rv.heartbeat_limit)?;
            Ok(Job {
                group: std::rc::Rc::new(group),
                watcher: Some(watcher),
                heartbeat_limit: rv.heartbeat_limit,
            })
        }
        _ => Ok(Job::single()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_collectives_return_their_input() {
        let one = SingleProcess;
        let mut t = Tensor::from_slice(&[1.5f32, -2.0]);
        one.all_reduce(&mut t, ReduceOp::Sum).unwrap();
        one.broadcast(&mut t, 0).unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), [1.5, -2.0]);
        let all = one.all_gather(&t).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(Vec::<f32>::try_from(&all[0]).unwrap(), [1.5, -2.0]);
        one.barrier().unwrap();
        one.agree(true).unwrap();
        assert!(one.broadcast(&mut t, 1).is_err());
    }
}
