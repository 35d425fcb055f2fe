//! `bergson trak` at the command line: what Bergson refuses (and what bergson-rs does not
//! run) ends with exit status 2, one `error:` line and no run directory; `--resume` skips the
//! finished steps and finishes an interrupted weighting without weighting the scores twice.
//! Numbers against Python Bergson are in trak_parity.rs.

mod common;

use std::path::Path;
use std::process::Output;

use common::{assert_one_line_error, bergson, fixtures};

/// `bergson trak <run>` on the tiny fixtures with TRAK's required settings, plus `extra`
/// (which replaces a required setting of the same flag).
fn trak(run: &Path, extra: &[&str]) -> Output {
    let f = fixtures();
    let required = [
        ("--projection_dim", "4"),
        ("--projection_target", "global"),
        ("--loss_fn", "log_odds"),
    ];
    let mut cmd = bergson();
    cmd.arg("trak")
        .arg(run)
        .arg("--model")
        .arg(f.join("models/gpt_neox"))
        .arg("--data.dataset")
        .arg(f.join("bergson/data/text.jsonl"))
        .arg("--query.dataset")
        .arg(f.join("bergson_score/data/queries.jsonl"))
        .args(["--token_batch_size", "64", "--quiet", "--num_threads", "1"]);
    for (flag, value) in required {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(extra).output().expect("run bergson")
}

#[test]
fn settings_trak_cannot_use_are_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--projection_target", "per_module"],
            &["--projection_target global", "per_module"],
        ),
        (&["--loss_fn", "ce"], &["--loss_fn log_odds", "ce"]),
        (&["--projection_dim", "0"], &["--projection_dim", "got 0"]),
        (&["--contrast.dataset", "x.jsonl"], &["--contrast"]),
        (&["--attribute_tokens"], &["--attribute_tokens"]),
        (&["--stats_sample_size", "0"], &["--stats_sample_size"]),
        // Bergson's trak spells the training data `--data.dataset`.
        (&["--dataset", "x.jsonl"], &["--dataset"]),
    ];
    for (extra, keys) in cases {
        let out = trak(&run, extra);
        assert_one_line_error(&out, keys);
        assert!(!run.exists(), "{extra:?} left a run directory");
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn resume_skips_finished_steps_and_never_weights_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = trak(&run, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scores = run.join("scores");
    let first = read(&scores.join("scores.bin"));
    let weights = read(&scores.join("trak_weights.npy"));

    // Without --resume (or --overwrite) the finished steps are not silently replaced.
    assert_one_line_error(&trak(&run, &[]), &["already exists", "--overwrite"]);

    // Everything done: nothing is recomputed or reweighted.
    let out = trak(&run, &["--resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&scores.join("scores.bin")), first);

    // Interrupted after the weighted scores were renamed into place, before the weights were:
    // only the rename is left.
    std::fs::rename(
        scores.join("trak_weights.npy"),
        scores.join("trak_weights.npy.pending"),
    )
    .unwrap();
    let out = trak(&run, &["--resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&scores.join("scores.bin")), first);
    assert_eq!(read(&scores.join("trak_weights.npy")), weights);
    assert!(!scores.join("trak_weights.npy.pending").exists());

    // The score step lost: it is rerun and weighted once, giving the same bytes; the Gram and
    // the query index are kept.
    let gram = read(&run.join("train_hessian/hessians.pth"));
    std::fs::remove_dir_all(&scores).unwrap();
    let out = trak(&run, &["--resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&scores.join("scores.bin")), first);
    assert_eq!(read(&scores.join("trak_weights.npy")), weights);
    assert_eq!(read(&run.join("train_hessian/hessians.pth")), gram);
}
