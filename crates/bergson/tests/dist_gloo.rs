//! The Gloo process group in 2 and 3 local processes: this test binary starts copies of itself
//! as the ranks (the ignored `rank_main` test, run only as a child with `BERGSON_TEST_DIST`
//! set), and every rank checks exact collective results.

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bergson::dist::{self, Collective, DistError, ReduceOp};
use tch::{Kind, Tensor};

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `world` copies of this binary running `rank_main` in `mode`.
fn start_ranks(world: usize, mode: &str) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|rank| start_rank(&port, rank, world, mode))
        .collect()
}

/// Starts rank `rank` of `world` (this binary's `rank_main` in `mode`).
fn start_rank(port: &str, rank: usize, world: usize, mode: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rank_main",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BERGSON_TEST_DIST", mode)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port)
        .env("BERGSON_DIST_CONNECT_TIMEOUT_S", "60")
        .env("BERGSON_DIST_TIMEOUT_MIN", "1")
        .env("OMP_NUM_THREADS", "1")
        .spawn()
        .unwrap()
}

/// Waits for every child (killing all after 120 s) and returns their exit codes.
fn wait_all(mut children: Vec<Child>) -> Vec<Option<i32>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut codes = vec![None; children.len()];
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) {
        for (i, c) in children.iter_mut().enumerate() {
            if !done[i] {
                if let Some(s) = c.try_wait().unwrap() {
                    codes[i] = s.code();
                    done[i] = true;
                }
            }
        }
        if Instant::now() > deadline {
            for c in &mut children {
                let _ = c.kill();
            }
            panic!("ranks still running after 120 s: {done:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    codes
}

#[test]
fn two_ranks_give_exact_results() {
    assert_eq!(wait_all(start_ranks(2, "exact")), [Some(0), Some(0)]);
}

#[test]
fn three_ranks_give_exact_results() {
    assert_eq!(wait_all(start_ranks(3, "exact")), [Some(0); 3]);
}

#[test]
fn a_rank_that_fails_is_named_by_the_others() {
    assert_eq!(wait_all(start_ranks(3, "agree")), [Some(0); 3]);
}

/// A PyTorch rank (`init_process_group("gloo", init_method="tcp://...")`, rank 0, hosting
/// the store) and a bergson-rs rank in one job, both checking the results.
#[test]
#[ignore = "needs PyTorch (set BERGSON_PY to a Python with torch 2.11)"]
fn a_pytorch_rank_and_a_rust_rank_share_one_job() {
    let python = std::env::var_os("BERGSON_PY").expect(
        "set BERGSON_PY to a Python with torch 2.11 (e.g. /work/pyenv/bin/python) to run this test",
    );
    let script = r#"
import os, torch, torch.distributed as dist
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
                        rank=0, world_size=2)
t = torch.arange(3, dtype=torch.float64)
dist.all_reduce(t)
assert t.tolist() == [10.0, 12.0, 14.0], t
b = torch.zeros(2, dtype=torch.float32)
dist.broadcast(b, src=1)
assert b.tolist() == [1.5, -2.5], b
outs = [torch.empty(2, dtype=torch.int64) for _ in range(2)]
dist.all_gather(outs, torch.tensor([0, 1]))
assert [o.tolist() for o in outs] == [[0, 1], [100, 101]], outs
dist.barrier()
dist.destroy_process_group()
"#;
    let port = free_port().to_string();
    let py = Command::new(python)
        .args(["-c", script])
        .env("MASTER_PORT", &port)
        .spawn()
        .unwrap();
    let rust = start_rank(&port, 1, 2, "mixed");
    assert_eq!(wait_all(vec![py, rust]), [Some(0), Some(0)]);
}

/// One rank's side of the tests above (ignored: not a test of its own, but the entry point
/// of the ranks they start).
#[test]
#[ignore = "the ranks' entry point: the other tests start it with BERGSON_TEST_DIST set"]
fn rank_main() {
    let Ok(mode) = std::env::var("BERGSON_TEST_DIST") else {
        return;
    };
    let job = dist::connect().unwrap();
    match mode.as_str() {
        "exact" => check_exact(job.collective()),
        "agree" => check_agree(job.collective()),
        "mixed" => check_mixed(job.collective()),
        other => panic!("unknown mode {other}"),
    }
    job.finish().unwrap();
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn check_exact(job: &dyn Collective) {
    let (r, w) = (job.rank() as f64, job.world_size() as f64);
    for kind in [Kind::Float, Kind::Double] {
        for n in [1i64, 7, 1000, 1 << 20] {
            // Rank r sends (r+1)(i+0.5): the sum is (i+0.5) w(w+1)/2, exact in f32 for these n.
            let base = Tensor::arange(n, (kind, tch::Device::Cpu)) + 0.5;
            let mut t = &base * (r + 1.0);
            job.all_reduce(&mut t, ReduceOp::Sum).unwrap();
            let want = &base * (w * (w + 1.0) / 2.0);
            assert_eq!(t.kind(), kind);
            assert_eq!(values(&t), values(&want), "sum, n {n}, {kind:?}");
            let mut m = &base * (r + 1.0);
            job.all_reduce(&mut m, ReduceOp::Max).unwrap();
            assert_eq!(values(&m), values(&(&base * w)), "max, n {n}");
            let mut m = &base * (r + 1.0);
            job.all_reduce(&mut m, ReduceOp::Min).unwrap();
            assert_eq!(values(&m), values(&base), "min, n {n}");
        }
    }
    // Broadcast from the last rank.
    let mut b = Tensor::from_slice(&[r, r * 10.0, -r]);
    job.broadcast(&mut b, job.world_size() - 1).unwrap();
    assert_eq!(values(&b), [w - 1.0, (w - 1.0) * 10.0, 1.0 - w]);
    // All-gather keeps the dtype: rank q sends 1000 q + [0, 1].
    let g = Tensor::from_slice(&[0i64, 1]) + 1000 * job.rank() as i64;
    let all = job.all_gather(&g).unwrap();
    assert_eq!(all.len(), job.world_size());
    for (q, t) in all.iter().enumerate() {
        assert_eq!(t.kind(), Kind::Int64);
        assert_eq!(
            Vec::<i64>::try_from(t).unwrap(),
            [1000 * q as i64, 1000 * q as i64 + 1]
        );
    }
    // A strided view is reduced through a contiguous copy, not silently wrong.
    let storage = Tensor::ones([8], (Kind::Float, tch::Device::Cpu));
    let mut view = storage.slice(0, 0, 8, 2);
    job.all_reduce(&mut view, ReduceOp::Sum).unwrap();
    assert_eq!(values(&storage), [w, 1.0, w, 1.0, w, 1.0, w, 1.0]);
}

fn check_agree(job: &dyn Collective) {
    job.agree(true).unwrap();
    // Rank 1 fails: the others are told which rank, rank 1 itself gets Ok.
    let ok = job.rank() != 1;
    match job.agree(ok) {
        Ok(()) => assert_eq!(job.rank(), 1),
        Err(DistError::PeerFailed { ranks }) => {
            assert_ne!(job.rank(), 1);
            assert_eq!(ranks, [1]);
        }
        Err(e) => panic!("{e}"),
    }
}

/// The Rust side of `a_pytorch_rank_and_a_rust_rank_share_one_job` (rank 1).
fn check_mixed(job: &dyn Collective) {
    let mut t = Tensor::from_slice(&[10.0f64, 11.0, 12.0]);
    job.all_reduce(&mut t, ReduceOp::Sum).unwrap();
    assert_eq!(values(&t), [10.0, 12.0, 14.0]);
    let mut b = Tensor::from_slice(&[1.5f32, -2.5]);
    job.broadcast(&mut b, 1).unwrap();
    let all = job.all_gather(&Tensor::from_slice(&[100i64, 101])).unwrap();
    let all: Vec<Vec<i64>> = all
        .iter()
        .map(|t| Vec::<i64>::try_from(t).unwrap())
        .collect();
    assert_eq!(all, [vec![0, 1], vec![100, 101]]);
}
