//! [`Gloo`]: libtorch's `ProcessGroupGloo` over a `TCPStore`, through `csrc/c10d_shim.cpp`.

use std::ffi::CString;
use std::ptr::NonNull;

use tch::{Device, Tensor};

use super::ffi::{self, RawGroup, RawStore};
use super::{Collective, DistError, ReduceOp, Rendezvous};

/// A Gloo process group (CPU tensors), the same engine as PyTorch's
/// `init_process_group("gloo")`, keyed so that a PyTorch rank can join it.
pub struct Gloo {
    raw: NonNull<RawGroup>,
    rank: usize,
    world_size: usize,
}

// SAFETY: the group is an owned C++ object with no thread affinity; `Gloo` is not `Sync`, so
// its collectives are issued from one thread at a time.
unsafe impl Send for Gloo {}

impl Gloo {
    /// Meets the other processes of `job`: rank 0 (or torchrun's agent) hosts the store, every
    /// rank connects to it, then Gloo connects every pair. Waits up to `job.connect_timeout`.
    pub fn connect(job: &Rendezvous) -> Result<Gloo, DistError> {
        let fail = |msg: String| DistError::Rendezvous {
            rank: job.rank,
            addr: job.address(),
            msg,
        };
        let host = CString::new(job.master_addr.as_str())
            .map_err(|_| fail("MASTER_ADDR holds a NUL byte".into()))?;
        let iface = CString::new(job.interface.clone().unwrap_or_default())
            .map_err(|_| fail("GLOO_SOCKET_IFNAME holds a NUL byte".into()))?;
        let mut err = std::ptr::null_mut();
        // SAFETY: the strings live through the call; `err` is set only on failure.
        let raw = unsafe {
            ffi::bd_pg_new(
                host.as_ptr(),
                i32::from(job.master_port),
                job.rank as i32,
                job.world_size as i32,
                i32::from(job.host_store),
                iface.as_ptr(),
                i32::from(is_loopback(&job.master_addr)),
                millis(job.connect_timeout),
                millis(job.timeout),
                &mut err,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| fail(ffi::take_message(err)))?;
        Ok(Gloo {
            raw,
            rank: job.rank,
            world_size: job.world_size,
        })
    }

    /// A store connection of its own, for a watcher thread.
    pub fn store(&self) -> Result<StoreClient, DistError> {
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is a live group.
        let raw = unsafe { ffi::bd_store_open(self.raw.as_ptr(), &mut err) };
        let raw = NonNull::new(raw).ok_or_else(|| self.failed("store", err))?;
        Ok(StoreClient { raw })
    }

    fn failed(&self, op: &'static str, err: *mut std::ffi::c_char) -> DistError {
        DistError::Collective {
            rank: self.rank,
            op,
            msg: ffi::take_message(err),
        }
    }

    fn check(
        &self,
        op: &'static str,
        status: i32,
        err: *mut std::ffi::c_char,
    ) -> Result<(), DistError> {
        if status == 0 {
            Ok(())
        } else {
            Err(self.failed(op, err))
        }
    }
}

impl Drop for Gloo {
    fn drop(&mut self) {
        // SAFETY: `raw` came from bd_pg_new and is freed once.
        unsafe { ffi::bd_pg_free(self.raw.as_ptr()) }
    }
}

/// Whether `addr` names this machine only (then every rank is on it, and Gloo binds there).
fn is_loopback(addr: &str) -> bool {
    addr == "localhost"
        || addr
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Gloo here runs on CPU tensors only.
fn check_cpu(t: &Tensor) -> Result<(), DistError> {
    if t.device() != Device::Cpu {
        return Err(DistError::BadTensor(format!(
            "the Gloo process group takes CPU tensors, not {:?}",
            t.device()
        )));
    }
    Ok(())
}

/// Runs `f` on `t` itself when contiguous, else on a contiguous copy that is then copied back
/// (Gloo reads the first `numel` elements of the storage, which is wrong for a strided view).
fn on_contiguous(
    t: &mut Tensor,
    f: impl FnOnce(&mut Tensor) -> Result<(), DistError>,
) -> Result<(), DistError> {
    check_cpu(t)?;
    if t.is_contiguous() {
        return f(t);
    }
    let mut c = t.contiguous();
    f(&mut c)?;
    t.copy_(&c);
    Ok(())
}

impl Collective for Gloo {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce(&self, t: &mut Tensor, op: ReduceOp) -> Result<(), DistError> {
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Min => 2,
            ReduceOp::Max => 3,
        };
        on_contiguous(t, |t| {
            let mut err = std::ptr::null_mut();
            // SAFETY: `t` is a live contiguous CPU tensor borrowed for the call.
            let s =
                unsafe { ffi::bd_all_reduce(self.raw.as_ptr(), t.as_mut_ptr(), code, &mut err) };
            self.check("all_reduce", s, err)
        })
    }

    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        if root >= self.world_size {
            return Err(DistError::BadTensor(format!(
                "broadcast from rank {root} in a job of {}",
                self.world_size
            )));
        }
        on_contiguous(t, |t| {
            let mut err = std::ptr::null_mut();
            // SAFETY: as in all_reduce.
            let s = unsafe {
                ffi::bd_broadcast(self.raw.as_ptr(), t.as_mut_ptr(), root as i32, &mut err)
            };
            self.check("broadcast", s, err)
        })
    }

    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>, DistError> {
        check_cpu(t)?;
        let mut input = t.contiguous();
        let mut outs: Vec<Tensor> = (0..self.world_size).map(|_| input.empty_like()).collect();
        let ptrs: Vec<*mut torch_sys::C_tensor> = outs.iter_mut().map(|o| o.as_mut_ptr()).collect();
        let mut err = std::ptr::null_mut();
        // SAFETY: `ptrs` point at the live tensors in `outs`, each shaped as `input`.
        let s = unsafe {
            ffi::bd_all_gather(
                self.raw.as_ptr(),
                ptrs.as_ptr(),
                ptrs.len() as i32,
                input.as_mut_ptr(),
                &mut err,
            )
        };
        self.check("all_gather", s, err)?;
        Ok(outs)
    }

    fn barrier(&self) -> Result<(), DistError> {
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is a live group.
        let s = unsafe { ffi::bd_barrier(self.raw.as_ptr(), &mut err) };
        self.check("barrier", s, err)
    }
}

/// A connection to the job's TCP store (keys under `bergson/`), for watcher threads.
pub struct StoreClient {
    raw: NonNull<RawStore>,
}

// SAFETY: an owned C++ store connection, used by one thread at a time (`StoreClient` is not
// `Sync`).
unsafe impl Send for StoreClient {}

impl StoreClient {
    /// Adds `delta` to the counter `key` (0 when new) and returns its value; `delta` 0 reads.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let key = CString::new(key).map_err(|_| "store key holds a NUL byte".to_string())?;
        let mut out = 0i64;
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is live; `key` and `out` outlive the call.
        let s = unsafe {
            ffi::bd_store_add(self.raw.as_ptr(), key.as_ptr(), delta, &mut out, &mut err)
        };
        if s == 0 {
            Ok(out)
        } else {
            Err(ffi::take_message(err))
        }
    }
}

impl Drop for StoreClient {
    fn drop(&mut self) {
        // SAFETY: `raw` came from bd_store_open and is freed once.
        unsafe { ffi::bd_store_free(self.raw.as_ptr()) }
    }
}
