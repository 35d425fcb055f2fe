//! Where a process finds its place in a job: torchrun's environment variables (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), which
//! `bergson ... --nproc_per_node N` also sets in each worker it starts.

use std::time::Duration;

use super::DistError;

/// Collective timeout when `BERGSON_DIST_TIMEOUT_MIN` is unset: Bergson's 180 minutes, since
/// the last collective of a build waits for the slowest rank's whole share of the work.
const DEFAULT_TIMEOUT_MIN: f64 = 180.0;
/// Heartbeat limit when `BERGSON_DIST_HEARTBEAT_S` is unset.
const DEFAULT_HEARTBEAT_S: f64 = 10.0;
/// How long to wait for every process to reach the store (`BERGSON_DIST_CONNECT_TIMEOUT_S`).
const DEFAULT_CONNECT_S: f64 = 300.0;

/// One process's place in a job and how to reach the others.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendezvous {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// Rank on this machine (torchrun's `LOCAL_RANK`; selects the GPU).
    pub local_rank: usize,
    /// Host of the TCP store (`MASTER_ADDR`, default `127.0.0.1`).
    pub master_addr: String,
    /// Port of the TCP store (`MASTER_PORT`, default 29500).
    pub master_port: u16,
    /// Whether this process hosts the store: rank 0, unless torchrun's agent already does
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`), when every rank is a client.
    pub host_store: bool,
    /// Network interface for Gloo (`GLOO_SOCKET_IFNAME`); unset, Gloo binds to a loopback
    /// `master_addr` (one machine) or to this machine's hostname, as PyTorch does.
    pub interface: Option<String>,
    /// Limit on meeting the other processes.
    pub connect_timeout: Duration,
    /// Limit on one collective.
    pub timeout: Duration,
    /// How long another rank may go without a heartbeat before this one gives up
    /// (`BERGSON_DIST_HEARTBEAT_S`, default 10).
    pub heartbeat_limit: Duration,
}

impl Rendezvous {
    /// Reads the job from the environment: `None` when `WORLD_SIZE` is unset (one process).
    pub fn from_env() -> Result<Option<Rendezvous>, DistError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Rendezvous::from_env`], reading variables through `var`.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Rendezvous>, DistError> {
        let Some(world) = var("WORLD_SIZE") else {
            return Ok(None);
        };
        let world_size: usize = parse("WORLD_SIZE", &world)?;
        if world_size == 0 {
            return Err(DistError::Environment(
                "WORLD_SIZE=0: a job needs at least one process".into(),
            ));
        }
        let rank: usize = match var("RANK") {
            Some(r) => parse("RANK", &r)?,
            None if world_size == 1 => 0,
            None => {
                return Err(DistError::Environment(format!(
                    "WORLD_SIZE={world_size} is set but RANK is not: start each process with its \
                     RANK (0..{world_size}), e.g. through torchrun or --nproc_per_node"
                )))
            }
        };
        if rank >= world_size {
            return Err(DistError::Environment(format!(
                "RANK={rank} is not below WORLD_SIZE={world_size}"
            )));
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(r) => parse("LOCAL_RANK", &r)?,
            None => 0,
        };
        let master_port = match var("MASTER_PORT") {
            Some(p) => parse("MASTER_PORT", &p)?,
            None => 29500,
        };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        Ok(Some(Rendezvous {
            rank,
            world_size,
            local_rank,
            master_addr: var("MASTER_ADDR")
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "127.0.0.1".into()),
            master_port,
            host_store: rank == 0 && !agent_store,
            interface: var("GLOO_SOCKET_IFNAME").filter(|i| !i.is_empty()),
            connect_timeout: seconds(&var, "BERGSON_DIST_CONNECT_TIMEOUT_S", DEFAULT_CONNECT_S)?,
            timeout: seconds(&var, "BERGSON_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN)? * 60,
            heartbeat_limit: seconds(&var, "BERGSON_DIST_HEARTBEAT_S", DEFAULT_HEARTBEAT_S)?,
        }))
    }

    /// `MASTER_ADDR:MASTER_PORT`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, DistError> {
    value.trim().parse().map_err(|_| {
        DistError::Environment(format!("{name}={value:?} is not a non-negative integer"))
    })
}

/// A positive number of seconds (or minutes, by the caller's unit) from `name`.
fn seconds(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: f64,
) -> Result<Duration, DistError> {
    let value = match var(name) {
        None => default,
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .ok_or_else(|| {
                DistError::Environment(format!("{name}={v:?} is not a positive number"))
            })?,
    };
    Ok(Duration::from_secs_f64(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)]) -> Result<Option<Rendezvous>, DistError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Rendezvous::from_vars(|k| vars.get(k).cloned())
    }

    #[test]
    fn no_world_size_is_one_process() {
        assert_eq!(read(&[("RANK", "3")]).unwrap(), None);
    }

    #[test]
    fn rank_zero_hosts_the_store_unless_torchruns_agent_does() {
        let base = [("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "1234")];
        let r = read(&base).unwrap().unwrap();
        assert!(r.host_store);
        assert_eq!(r.address(), "127.0.0.1:1234");
        assert_eq!(r.timeout, Duration::from_secs(180 * 60));
        let mut agent = base.to_vec();
        agent.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        assert!(!read(&agent).unwrap().unwrap().host_store);
        let r1 = read(&[("WORLD_SIZE", "2"), ("RANK", "1")])
            .unwrap()
            .unwrap();
        assert!(!r1.host_store);
    }

    #[test]
    fn bad_variables_are_named() {
        let e = read(&[("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("RANK is not"), "{e}");
        let e = read(&[("WORLD_SIZE", "2"), ("RANK", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK=2 is not below WORLD_SIZE=2"), "{e}");
        let e = read(&[("WORLD_SIZE", "x")]).unwrap_err().to_string();
        assert!(e.contains("WORLD_SIZE=\"x\""), "{e}");
        let e = read(&[("WORLD_SIZE", "1"), ("BERGSON_DIST_TIMEOUT_MIN", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("BERGSON_DIST_TIMEOUT_MIN"), "{e}");
    }
}
