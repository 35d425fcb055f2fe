//! `bergson hessian` at the command line: bad input ends with exit status 2, one `error:`
//! line (plus at most a hint) and no run directory; sampled labels are reproducible and change
//! only the gradient factor; module partitions and run-file replay give the same stores.
//! Numbers against Python Bergson are in hessian_parity.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bergson::index::factor_store::{self as store, read_store};
use tch::Tensor;

mod common;
use common::{assert_one_line_error as assert_error, fixtures, BIN};

/// `bergson hessian <run> --model gpt_neox --dataset text.jsonl` on two modules, plus `extra`.
fn hessian(run: &Path, extra: &[&str]) -> Output {
    let f = fixtures();
    Command::new(BIN)
        .arg("hessian")
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
            "--quiet",
            "--num_threads",
            "1",
        ])
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run bergson")
}

#[track_caller]
fn assert_nothing_written(run: &Path) {
    assert!(!run.exists(), "{} was created", run.display());
    let part = PathBuf::from(format!("{}.part", run.display()));
    assert!(!part.exists(), "{} was created", part.display());
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    assert_error(&hessian(&run, &["--method", "ekfac"]), &["ekfac"]);
    assert_nothing_written(&run);
    assert_error(&hessian(&run, &[]), &["--method"]);
    assert_nothing_written(&run);
    assert_error(
        &hessian(
            &run,
            &[
                "--method",
                "kfac",
                "--ev_correction",
                "true",
                "--projection_dim",
                "8",
            ],
        ),
        &["--ev_correction", "--projection_dim 0"],
    );
    assert_nothing_written(&run);
    assert_error(
        &hessian(&run, &["--method", "kfac", "--module_partitions", "0"]),
        &["--module_partitions"],
    );
    assert_nothing_written(&run);
    assert_error(
        &hessian(&run, &["--method", "kfac", "--hessian_dtype", "int8"]),
        &["int8"],
    );
    assert_nothing_written(&run);
    // An existing run is kept unless --overwrite.
    std::fs::create_dir(&run).unwrap();
    assert_error(&hessian(&run, &["--method", "kfac"]), &["--overwrite"]);
    assert!(run.exists() && std::fs::read_dir(&run).unwrap().next().is_none());
}

fn stores(run: &Path, name: &str) -> Vec<(String, Tensor)> {
    read_store(run, name).unwrap().expect("store")
}

fn same(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((k, x), (l, y))| k == l && x.equal(y))
}

#[test]
fn sampled_labels_are_reproducible_and_change_only_the_gradient_factor() {
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s2, d) = (
        tmp.path().join("s1"),
        tmp.path().join("s2"),
        tmp.path().join("d"),
    );
    for (run, labels) in [(&s1, "false"), (&s2, "false"), (&d, "true")] {
        let out = hessian(run, &["--method", "kfac", "--use_dataset_labels", labels]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in store::FACTOR_STORES.iter().take(7) {
        assert!(
            same(&stores(&s1, name), &stores(&s2, name)),
            "{name} differs between runs"
        );
    }
    // The layer inputs do not depend on the labels; the output gradients do.
    let close = |a: &[(String, Tensor)], b: &[(String, Tensor)]| {
        a.iter()
            .zip(b)
            .all(|((_, x), (_, y))| x.allclose(y, 1e-6, 1e-9, false))
    };
    assert!(close(
        &stores(&s1, store::ACTIVATION),
        &stores(&d, store::ACTIVATION)
    ));
    assert!(!close(
        &stores(&s1, store::GRADIENT),
        &stores(&d, store::GRADIENT)
    ));
}

#[test]
fn partitions_and_run_file_replay_give_the_same_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let flags = [
        "--method",
        "kfac",
        "--ev_correction",
        "--projection_dim",
        "0",
        "--use_dataset_labels",
    ];
    let out = hessian(&one, &flags);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut split = flags.to_vec();
    split.extend(["--module_partitions", "2"]);
    let out = hessian(&two, &split);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in store::FACTOR_STORES {
        let (a, b) = (stores(&one, name), stores(&two, name));
        assert_eq!(a.len(), 2, "{name}");
        assert!(
            a.iter()
                .zip(&b)
                .all(|((k, x), (l, y))| k == l && x.allclose(y, 1e-5, 1e-7, false)),
            "{name} differs with two partitions"
        );
    }
    // `bergson <run>/config.yaml` refits the same Hessian into the same run path.
    std::fs::rename(&one, tmp.path().join("first")).unwrap();
    let replay = Command::new(BIN)
        .arg(tmp.path().join("first/config.yaml"))
        .args(["--quiet", "--num_threads", "1"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    for name in store::FACTOR_STORES {
        assert!(
            same(
                &stores(&one, name),
                &stores(&tmp.path().join("first"), name)
            ),
            "{name}"
        );
    }
}
