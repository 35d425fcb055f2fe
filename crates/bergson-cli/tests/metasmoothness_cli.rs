//! `bergson metasmoothness` against reference runs of Python Bergson 2.5.1's
//! `bergson metasmoothness` on tiny fixture models
//! (tests/fixtures/scripts/make_metasmoothness_refs.py → tests/fixtures/bergson_metasmoothness/):
//! the seeded direction draw value for value, metasmoothness.json with Bergson's keys, the
//! score and the total movement within 1e-4 relative; and bad input ending with exit status 2
//! and one `error:` line.

mod common;

use common::{assert_one_line_error, bergson, fixtures};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

fn cases() -> Value {
    let path = fixtures().join("bergson_metasmoothness/cases.json");
    serde_json::from_slice(&std::fs::read(path).expect("cases.json")).expect("json")
}

fn metasmoothness(run: &Path, flags: &[String]) -> Output {
    bergson()
        .arg("metasmoothness")
        .arg(run)
        .arg("--dataset")
        .arg(fixtures().join("bergson_train/train.jsonl"))
        .args(["--num_threads", "1", "--quiet"])
        .args(flags)
        .output()
        .expect("run bergson")
}

/// Flags of a case as `bergson metasmoothness` takes them (the script's keys are the flag
/// names).
fn flags(case: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in case["flags"].as_object().expect("flags") {
        let v = match (k.as_str(), v) {
            ("model", Value::String(m)) => fixtures().join("models").join(m).display().to_string(),
            (_, Value::String(s)) => s.clone(),
            (_, other) => other.to_string(),
        };
        out.push(format!("--{k}"));
        out.push(v);
    }
    out
}

fn check_case(name: &str) {
    let all = cases();
    let case = &all[name];
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = metasmoothness(&run, &flags(case));
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Value =
        serde_json::from_slice(&std::fs::read(run.join("metasmoothness.json")).unwrap()).unwrap();
    let theirs = &case["result"];
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(theirs), "{name}: keys");
    assert_eq!(ours["fd_step"], theirs["fd_step"], "{name}: fd_step");
    assert_eq!(
        ours["direction_seed"], theirs["direction_seed"],
        "{name}: direction_seed"
    );
    for key in ["score", "total_movement_l1"] {
        let (a, b) = (ours[key].as_f64().unwrap(), theirs[key].as_f64().unwrap());
        let rel = (a - b).abs() / b.abs();
        eprintln!("{name}: {key} {a} vs Python {b} (relative error {rel:.2e})");
        assert!(rel < 1e-4, "{name}: {key} {a} vs Python {b} (rel {rel:e})");
    }
    let yaml = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(
        yaml.contains("metasmoothness:") && yaml.contains("fd_step:"),
        "{yaml}"
    );
    // The config.yaml is a run file: replayed into a new run path, the same result.
    let replay = tmp.path().join("replay");
    common::replay_config(&run, &replay);
    let again: Value =
        serde_json::from_slice(&std::fs::read(replay.join("metasmoothness.json")).unwrap())
            .unwrap();
    assert_eq!(again["score"], ours["score"], "{name}: replayed score");
}

/// `tch::Tensor::randn` after `manual_seed` is `torch.randn` with a freshly seeded
/// `torch.Generator`: the same float32 numbers.
#[test]
fn direction_is_torch_randn_of_the_seed() {
    for (name, case) in cases().as_object().unwrap() {
        let want: Vec<f32> = serde_json::from_value(case["direction"].clone()).unwrap();
        let seed = case["flags"]["direction_seed"].as_u64().unwrap();
        let got = bergson::magic::metasmoothness::direction(seed, want.len() as i64);
        let got: Vec<f32> = Vec::try_from(&got).unwrap();
        assert_eq!(got, want, "{name}: direction of seed {seed}");
    }
}

#[test]
fn adamw_llama_matches_python() {
    check_case("adamw_llama");
}

#[test]
fn muon_neox_two_epochs_matches_python() {
    check_case("muon_neox");
}

#[test]
fn sgd_float64_matches_python() {
    check_case("sgd_neox_fp64");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let model = fixtures().join("models/gpt_neox").display().to_string();
    let with = |extra: &[&str]| -> Vec<String> {
        let mut f = vec!["--model".to_string(), model.clone()];
        f.extend(extra.iter().map(|s| s.to_string()));
        f
    };
    let out = metasmoothness(&run, &with(&["--fd_step", "nan"]));
    assert_one_line_error(&out, &["--fd_step"]);
    let out = metasmoothness(&run, &with(&["--fsdp"]));
    assert_one_line_error(&out, &["--fsdp"]);
    let out = metasmoothness(&run, &with(&["--optimizer", "muon", "--adam_beta1", "0"]));
    assert_one_line_error(&out, &["Nesterov momentum"]);
    std::fs::create_dir_all(&run).unwrap();
    let out = metasmoothness(&run, &with(&[]));
    assert_one_line_error(&out, &["already exists", "--overwrite"]);
    // A run-file step with a key metasmoothness does not have.
    let file = tmp.path().join("ms.yaml");
    std::fs::write(
        &file,
        "steps:\n  - metasmoothness:\n      run_path: r\n      fd_step: 0.2\n      bogus: 1\n",
    )
    .unwrap();
    let out = bergson().arg(&file).output().unwrap();
    assert_one_line_error(&out, &["`metasmoothness`", "bogus"]);
}
