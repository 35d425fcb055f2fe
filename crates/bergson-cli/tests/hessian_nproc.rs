//! Multi-process Hessian fits on loopback Gloo: `--nproc_per_node 2` (our launcher) and two
//! ranks started by hand write Bergson's row-sharded stores (`shard_0`, `shard_1` in each,
//! `factor_eig_a` replicated), whose concatenation is the one-process fit; dense
//! (autocorrelation) Hessians equal the one-process ones.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bergson::index::factor_store::{self as store, read_store, read_total_processed};
use bergson::pickle::Value;
use tch::{Kind, Tensor};

mod common;
use common::ranks::{free_port, rank_cmd, run_ok, wait_within};
use common::{bergson, fixtures};

/// `bergson hessian <run>` on two modules of the gpt_neox fixture, one thread per process.
fn hessian(run: &Path, extra: &[&str]) -> Command {
    let f = fixtures();
    let mut cmd = bergson();
    cmd.arg("hessian")
        .arg(run)
        .arg("--model")
        .arg(f.join("models/gpt_neox"))
        .arg("--dataset")
        .arg(f.join("bergson/data/text.jsonl"))
        .args([
            "--filter_modules",
            "layers.0.*,*query_key_value,*dense_h_to_4h",
            "--token_batch_size",
            "64",
            "--use_dataset_labels",
            "--quiet",
        ])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("WORLD_SIZE")
        .env_remove("RANK");
    cmd
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> BTreeSet<String> {
    walkdir(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `max |a - b| / max |a|`.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let scale = f64::try_from(a.abs().max()).unwrap().max(1e-30);
    f64::try_from((a - b).abs().max()).unwrap() / scale
}

fn read(run: &Path, name: &str) -> Vec<(String, Tensor)> {
    read_store(run, name).unwrap().expect(name)
}

/// `Q diag(λ) Qᵀ` (eigenvectors as columns).
fn rebuild(vectors: &Tensor, values: &Tensor) -> Tensor {
    let (q, l) = (vectors.to_kind(Kind::Double), values.to_kind(Kind::Double));
    (&q * l.unsqueeze(0)).matmul(&q.tr())
}

/// The two-process factored fit at `two` against the one-process one at `one`, within `tol`:
/// the shard layout, the raw sums, the eigenvalues, the factors rebuilt from their
/// eigendecompositions and (EK-FAC) the corrected eigenvalues.
fn assert_same_factored(one: &Path, two: &Path, tol: f64, ev_correction: bool) {
    assert_eq!(
        read_total_processed(one).unwrap(),
        read_total_processed(two).unwrap()
    );
    let mut want: BTreeSet<String> = files(one)
        .into_iter()
        .map(|f| f.replace("shard_0", "shard_1"))
        .filter(|f| f.contains("shard_1"))
        .collect();
    want.extend(files(one));
    assert_eq!(files(two), want, "two processes write shard_0 and shard_1");
    for name in store::FACTOR_STORES {
        if name == store::EIGENVALUE_CORRECTION && !ev_correction {
            continue;
        }
        let dir = two.join(name);
        let shard = |r: usize| {
            let mut t =
                Tensor::read_safetensors(dir.join(format!("shard_{r}.safetensors"))).unwrap();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        };
        let (s0, s1) = (shard(0), shard(1));
        for ((k0, t0), (k1, t1)) in s0.iter().zip(&s1) {
            assert_eq!(k0, k1);
            if name == store::FACTOR_EIG_A {
                assert!(t0.equal(t1), "{name}/{k0} is the same on every rank");
            } else {
                // Rank 0 takes the remainder rows.
                let (n0, n1) = (t0.size()[0], t1.size()[0]);
                let n = n0 + n1;
                assert_eq!((n0, n1), (n / 2 + n % 2, n / 2), "{name}/{k0} rows");
            }
        }
    }
    let total = read_total_processed(one).unwrap() as f64;
    for name in [
        store::ACTIVATION,
        store::GRADIENT,
        store::EIGENVALUE,
        store::FACTOR_EIG_A,
        store::FACTOR_EIG_G,
    ] {
        for ((k, a), (l, b)) in read(one, name).iter().zip(&read(two, name)) {
            assert_eq!(k, l);
            assert_eq!(a.size(), b.size(), "{name}/{k}");
            let err = rel_err(a, b);
            assert!(err <= tol, "{name}/{k}: {err:e}");
        }
    }
    // Eigenvectors are defined up to sign (and rotation within equal eigenvalues): compare the
    // factors they rebuild with their eigenvalues, `A / T`.
    for (vectors, raw) in [
        (store::EIGEN_ACTIVATION, store::ACTIVATION),
        (store::EIGEN_GRADIENT, store::GRADIENT),
    ] {
        for ((k, q), (_, m)) in read(two, vectors).iter().zip(&read(two, raw)) {
            let values = Tensor::linalg_eigvalsh(&(m.to_kind(Kind::Double) / total), "L");
            let err = rel_err(&(m.to_kind(Kind::Double) / total), &rebuild(q, &values));
            assert!(
                err <= tol,
                "{vectors}/{k} does not diagonalise its factor: {err:e}"
            );
        }
    }
    if ev_correction {
        for ((k, a), (_, b)) in read(one, store::EIGENVALUE_CORRECTION)
            .iter()
            .zip(&read(two, store::EIGENVALUE_CORRECTION))
        {
            let err = rel_err(a, b);
            assert!(err <= tol, "corrections of {k}: {err:e}");
        }
    }
}

#[test]
fn two_processes_write_the_sharded_one_process_factors() {
    let tmp = tempfile::tempdir().unwrap();
    for (method, extra, tol) in [
        // EK-FAC in float64: sums over the ranks differ from one process's only in rounding.
        (
            "kfac",
            &[
                "--ev_correction",
                "--projection_dim",
                "0",
                "--hessian_dtype",
                "fp64",
            ][..],
            1e-9,
        ),
        ("tkfac", &[][..], 1e-4),
        ("shampoo", &["--include_bias"][..], 1e-4),
        ("kfac", &["--module_partitions", "2"][..], 1e-4),
    ] {
        let one = tmp.path().join(format!("{method}-one"));
        let two = tmp.path().join(format!("{method}-two"));
        for d in [&one, &two] {
            let _ = std::fs::remove_dir_all(d);
        }
        run_ok({
            let mut c = hessian(&one, &["--method", method]);
            c.args(extra);
            c
        });
        run_ok({
            let mut c = hessian(&two, &["--method", method, "--nproc_per_node", "2"]);
            c.args(extra);
            c
        });
        assert!(!tmp.path().join(format!("{method}-two.part")).exists());
        assert_same_factored(&one, &two, tol, extra.contains(&"--ev_correction"));
    }
}

#[test]
fn ranks_started_by_hand_fit_the_same_hessian() {
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    let two = tmp.path().join("two");
    run_ok(hessian(&one, &["--method", "kfac"]));
    // Started by someone else, rank 1 first.
    let port = free_port();
    let ranks: Vec<Child> = [1, 0]
        .into_iter()
        .map(|r| {
            let cmd = hessian(&two, &["--method", "kfac"]);
            rank_cmd(cmd, r, 2, port)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in ranks {
        let (out, _) = wait_within(child, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_same_factored(&one, &two, 1e-4, false);
}

#[test]
fn two_processes_fit_the_one_process_autocorrelation() {
    let tmp = tempfile::tempdir().unwrap();
    for target in ["per_module", "global"] {
        let one = tmp.path().join(format!("{target}-one"));
        let two = tmp.path().join(format!("{target}-two"));
        let flags = [
            "--method",
            "autocorrelation",
            "--projection_dim",
            "8",
            "--projection_target",
            target,
        ];
        run_ok(hessian(&one, &flags));
        run_ok({
            let mut c = hessian(&two, &flags);
            c.args(["--nproc_per_node", "2"]);
            c
        });
        assert_eq!(files(&one), files(&two));
        assert_eq!(
            read_total_processed(&one).unwrap(),
            read_total_processed(&two).unwrap()
        );
        let load = |run: &Path| -> Vec<(String, Tensor)> {
            match bergson::pickle::load(&run.join("hessians.pth")).unwrap() {
                Value::Dict(items) => items
                    .into_iter()
                    .map(|(k, v)| match (k, v) {
                        (Value::Str(k), Value::Tensor(t)) => (k, t),
                        other => panic!("hessians.pth holds {other:?}"),
                    })
                    .collect(),
                other => panic!("hessians.pth is {other:?}"),
            }
        };
        let (a, b) = (load(&one), load(&two));
        assert_eq!(a.len(), b.len());
        for ((k, x), (l, y)) in a.iter().zip(&b) {
            assert_eq!(k, l);
            let err = rel_err(x, y);
            assert!(err <= 1e-5, "{target} {k}: {err:e}");
        }
    }
}
