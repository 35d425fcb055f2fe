//! `bergson ekfac` on bad input: one line on stderr, exit status 2, nothing fitted or scored.

mod common;

use std::path::Path;

/// `bergson ekfac <tmp>/run` on the tiny fixture model and data, plus `extra`.
fn ekfac(run: &Path, extra: &[&str]) -> std::process::Output {
    let f = common::fixtures();
    common::bergson()
        .arg("ekfac")
        .arg(run)
        .arg("--model")
        .arg(f.join("models/gpt_neox"))
        .arg("--data.dataset")
        .arg(f.join("bergson/data/text.jsonl"))
        .arg("--query.dataset")
        .arg(f.join("bergson_score/data/queries.jsonl"))
        .args(["--use_dataset_labels", "true", "--quiet"])
        .args(extra)
        .output()
        .expect("run bergson")
}

#[track_caller]
fn refused(extra: &[&str], keys: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = ekfac(&run, extra);
    common::assert_one_line_error(&out, keys);
    for step in ["query", "hessian", "scores"] {
        assert!(!run.join(step).exists(), "{step} written for {extra:?}");
    }
}

#[test]
fn unit_normalize_is_refused_as_bergson_does() {
    refused(
        &["--method", "kfac", "--unit_normalize", "true"],
        &["--unit_normalize"],
    );
}

#[test]
fn factored_tikhonov_with_ev_correction_is_refused() {
    refused(
        &[
            "--method",
            "kfac",
            "--hessian_cfg.ev_correction",
            "true",
            "--hessian_pipeline_cfg.inversion_cfg.inversion",
            "factored_tikhonov",
        ],
        &["factored_tikhonov", "ev_correction"],
    );
}

#[test]
fn ev_correction_with_a_projection_is_refused() {
    refused(
        &[
            "--method",
            "kfac",
            "--hessian_cfg.ev_correction",
            "--projection_dim",
            "4",
        ],
        &["--projection_dim 4"],
    );
}

#[test]
fn unknown_and_dense_methods_are_refused() {
    refused(&["--method", "ekfac"], &["ekfac"]);
    refused(&[], &["--method"]);
    refused(&["--method", "autocorrelation"], &["autocorrelation"]);
}

#[test]
fn flags_that_clash_in_this_command_need_bergsons_prefix() {
    // `--ev_correction` is spelled `--hessian_cfg.ev_correction` or
    // `--preprocess_cfg.ev_correction` here, as in Bergson.
    refused(
        &["--method", "kfac", "--ev_correction", "true"],
        &["--ev_correction"],
    );
}

#[test]
fn a_contrast_set_needs_an_aggregated_query() {
    let f = common::fixtures();
    let contrast = f.join("bergson/data/text.jsonl");
    refused(
        &[
            "--method",
            "kfac",
            "--contrast.dataset",
            contrast.to_str().unwrap(),
        ],
        &["--query.aggregation"],
    );
}

#[test]
fn a_missing_query_index_is_refused() {
    refused(
        &["--method", "kfac", "--path", "/nonexistent/query"],
        &["/nonexistent/query"],
    );
}

#[test]
fn astra_needs_full_gradients_and_a_damped_inverse() {
    refused(
        &[
            "--method",
            "kfac",
            "--num_steps",
            "2",
            "--projection_dim",
            "4",
        ],
        &["ASTRA", "--projection_dim 4"],
    );
    refused(
        &[
            "--method",
            "kfac",
            "--num_steps",
            "2",
            "--hessian_pipeline_cfg.inversion_cfg.inversion",
            "pseudoinverse",
        ],
        &["ASTRA", "pseudoinverse"],
    );
}

/// `bergson lissa` with the fixture data plus `extra`, refused before anything runs.
#[track_caller]
fn lissa_refused(extra: &[&str], keys: &[&str]) {
    let f = common::fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = common::bergson()
        .arg("lissa")
        .arg(&run)
        .arg("--model")
        .arg(f.join("models/gpt_neox"))
        .arg("--data.dataset")
        .arg(f.join("bergson/data/text.jsonl"))
        .arg("--query.dataset")
        .arg(f.join("bergson_score/data/queries.jsonl"))
        .arg("--quiet")
        .args(extra)
        .output()
        .expect("run bergson");
    common::assert_one_line_error(&out, keys);
    assert!(!run.join("query").exists(), "query built for {extra:?}");
}

#[test]
fn lissa_refuses_what_bergson_refuses() {
    lissa_refused(&["--unit_normalize"], &["--unit_normalize"]);
    lissa_refused(&["--projection_dim", "4"], &["--projection_dim 4"]);
    lissa_refused(&["--scale", "0"], &["--scale"]);
    lissa_refused(&["--lissa_cfg.batch_size", "0"], &["batch_size"]);
    lissa_refused(&["--loss_fn", "kl"], &["--loss_fn"]);
    // `--batch_size` is spelled `--lissa_cfg.batch_size` or `--score_cfg.batch_size` here.
    lissa_refused(&["--batch_size", "4"], &["--batch_size"]);
}
