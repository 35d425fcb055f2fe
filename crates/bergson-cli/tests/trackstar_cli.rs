//! `bergson trackstar` on the command line: bad input is one line and exit status 2 before
//! anything is computed, and an interrupted or half-finished run resumes (`--resume`) to the
//! same scores as an uninterrupted one, reusing the steps it had finished.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The flags of the committed `default` case, with tiny data (see make_trackstar_refs.py).
fn base_args() -> Vec<String> {
    let data = "tests/fixtures/bergson_trackstar/data";
    [
        "--model",
        "tests/fixtures/models/gpt_neox",
        "--data.dataset",
        &format!("{data}/train.jsonl"),
        "--query.dataset",
        &format!("{data}/queries.jsonl"),
        "--projection_dim",
        "4",
        "--token_batch_size",
        "64",
        "--target_downweight_components",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn trackstar(run: &Path, extra: &[&str]) -> Command {
    let mut cmd = common::bergson();
    cmd.arg("trackstar")
        .arg(run)
        .args(base_args())
        .args(extra)
        .env("OMP_NUM_THREADS", "1");
    cmd
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "trackstar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn scores(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("scores/scores.bin")).expect("scores.bin")
}

fn modified(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn projection_dim_zero_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    let out = trackstar(&run, &["--projection_dim", "0"])
        .output()
        .unwrap();
    common::assert_one_line_error(&out, &["nonzero --projection_dim"]);
    assert!(!run.join("value_hessian").exists());
}

#[test]
fn missing_query_dataset_is_refused_before_any_step() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    let out = trackstar(
        &run,
        &["--query.dataset", "tests/fixtures/no_such_queries.jsonl"],
    )
    .output()
    .unwrap();
    common::assert_one_line_error(&out, &["--query.dataset", "no_such_queries.jsonl"]);
    assert!(!run.exists(), "nothing is written");
}

#[test]
fn bad_flags_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    let out = trackstar(&run, &["--path", "tests/fixtures/no_such_index"])
        .output()
        .unwrap();
    common::assert_one_line_error(&out, &["--path", "no_such_index"]);
    let out = trackstar(&run, &["--stats_sample_size", "0"])
        .output()
        .unwrap();
    common::assert_one_line_error(&out, &["--stats_sample_size"]);
    let out = trackstar(&run, &["--stats_sample_size", "many"])
        .output()
        .unwrap();
    common::assert_one_line_error(&out, &["many"]);
    // The training data takes Bergson's `--data.` prefix on this command.
    let out = trackstar(&run, &["--dataset", "x.jsonl"]).output().unwrap();
    common::assert_one_line_error(&out, &["--dataset"]);
    let out = trackstar(&run, &["--query.aggregation", "max"])
        .output()
        .unwrap();
    common::assert_one_line_error(&out, &["max"]);
    assert!(!run.exists(), "nothing is written");
}

#[test]
fn rerun_and_resume_of_another_config_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    run_ok(&mut trackstar(&run, &["--mix_hessians", "false"]));
    let before = scores(&run);
    let out = trackstar(&run, &["--mix_hessians", "false"])
        .output()
        .unwrap();
    common::assert_one_line_error(&out, &["already holds a run", "--resume"]);
    let out = trackstar(&run, &["--resume"]).output().unwrap();
    common::assert_one_line_error(&out, &["different config"]);
    assert_eq!(scores(&run), before, "refused runs leave the scores alone");
    // --overwrite redoes every step, to the same scores.
    run_ok(&mut trackstar(
        &run,
        &["--mix_hessians", "false", "--overwrite"],
    ));
    assert_eq!(scores(&run), before);
}

#[test]
fn resume_reuses_finished_steps_and_redoes_half_written_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    run_ok(&mut trackstar(&run, &[]));
    let reference = scores(&run);
    let value_hessian = run.join("value_hessian/hessians.pth");
    let fitted_at = modified(&value_hessian);

    // As if the run had died while building the query index: the later steps are gone and the
    // query index is a half-written `.part`.
    std::fs::remove_dir_all(run.join("scores")).unwrap();
    std::fs::remove_dir_all(run.join("mixed_hessian")).unwrap();
    std::fs::rename(run.join("query"), run.join("query.part")).unwrap();
    let out = run_ok(&mut trackstar(&run, &["--resume"]));
    let summary = String::from_utf8_lossy(&out.stderr);
    for step in [
        "value_hessian reused",
        "query_hessian reused",
        "mixed_hessian done",
        "query done",
        "scores done",
    ] {
        assert!(summary.contains(step), "{step}: {summary}");
    }
    assert_eq!(
        modified(&value_hessian),
        fitted_at,
        "value Hessian refitted"
    );
    assert!(!run.join("query.part").exists());
    assert_eq!(scores(&run), reference, "resumed scores differ");
}

/// Waits until `path` exists (or the child exits); false if the child exited first.
fn wait_for(child: &mut std::process::Child, path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return path.exists();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("{} never appeared", path.display());
}

#[test]
fn interrupted_after_the_first_step_resumes_to_identical_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let reference_run = tmp.path().join("reference");
    run_ok(&mut trackstar(&reference_run, &[]));

    let run: PathBuf = tmp.path().join("r");
    let mut child = trackstar(&run, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for(&mut child, &run.join("value_hessian")));
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "the interrupt should stop the run mid-way: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !run.join("scores").exists(),
        "an interrupted run has no scores"
    );

    let out = run_ok(&mut trackstar(&run, &["--resume"]));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("value_hessian reused"), "{summary}");
    assert_eq!(
        scores(&run),
        scores(&reference_run),
        "resumed scores differ"
    );
}

#[test]
fn an_existing_query_index_is_scored_against_instead_of_building_one() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    run_ok(&mut trackstar(&first, &[]));
    let run = tmp.path().join("r");
    let query = first.join("query");
    let out = run_ok(&mut trackstar(&run, &["--path", query.to_str().unwrap()]));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("query skipped"), "{summary}");
    assert!(!run.join("query").exists(), "a query index was built");
    assert_eq!(scores(&run), scores(&first));
}

#[test]
fn a_run_file_with_a_trackstar_step_runs_the_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let by_flags = tmp.path().join("flags");
    run_ok(&mut trackstar(&by_flags, &["--mix_hessians", "false"]));
    let by_file = tmp.path().join("file");
    let data = "tests/fixtures/bergson_trackstar/data";
    let yaml = format!(
        "steps:\n- trackstar:\n    index_cfg:\n      run_path: {}\n      model: tests/fixtures/models/gpt_neox\n      projection_dim: 4\n      token_batch_size: 64\n      data:\n        dataset: {data}/train.jsonl\n    trackstar_cfg:\n      query:\n        dataset: {data}/queries.jsonl\n      target_downweight_components: 20\n      mix_hessians: false\n",
        by_file.display()
    );
    let file = tmp.path().join("run.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = common::bergson()
        .arg(&file)
        .arg("--quiet")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(scores(&by_file), scores(&by_flags));
}
