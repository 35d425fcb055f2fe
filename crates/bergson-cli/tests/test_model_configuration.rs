//! `bergson test_model_configuration` on the tiny fixture models and a dozen short documents
//! (tests/fixtures/bergson_test_model_configuration/data), fp32 on the CPU: gradients agree
//! alone and padded (cosine ~1), the printed trials are the pairs the seed draws and their
//! numbers match a direct computation with the library and Python Bergson 2.5.1's report
//! (`python_<model>_fp32_seed3.txt`, made by
//! tests/fixtures/scripts/make_test_model_configuration_refs.py), a flagged run escalates and says so,
//! a chat template that writes BOS twice is flagged, and bad input is a one-line error.

use std::path::{Path, PathBuf};
use std::process::Output;

use bergson::data::tokenize::Tokenizer;
use bergson::diagnose::{
    check_special_tokens, draws, load_documents, DiagnoseConfig, GradientProbe,
};
use bergson::engine::Precision;
use clap::Parser;
use tch::Device;

mod common;
use common::{assert_one_line_error, bergson, copy_dir, fixtures};

const TRIALS: usize = 4;
const SEED: i64 = 3;

fn refs() -> PathBuf {
    fixtures().join("bergson_test_model_configuration")
}

/// The documents: a directory with one JSONL file, as Python's `load_dataset` reads it too.
fn docs() -> PathBuf {
    refs().join("data")
}

fn run(model: &Path, extra: &[&str]) -> Output {
    bergson()
        .args(["test_model_configuration", "--model"])
        .arg(model)
        .arg("--dataset")
        .arg(docs())
        .args(["--precision", "fp32", "--device", "cpu", "--seed"])
        .arg(SEED.to_string())
        .args(["--n_trials", &TRIALS.to_string()])
        .args(extra)
        .output()
        .expect("run bergson")
}

fn stdout_of(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A printed trial row: trial, short, long, cos_sim, loss_diff.
#[derive(Debug)]
struct Row {
    trial: usize,
    short: usize,
    long: usize,
    cos: f64,
    loss_diff: f64,
    flagged: bool,
}

/// The trial rows of the section titled `title`.
fn section_rows(stdout: &str, title: &str) -> Vec<Row> {
    let start = stdout
        .find(&format!("\n{title}\n"))
        .unwrap_or_else(|| panic!("no section {title:?} in:\n{stdout}"));
    let body = &stdout[start + title.len() + 2..];
    let end = body.find("Cos sim:").expect("section summary");
    body[..end]
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let trial = f.first()?.parse().ok()?;
            Some(Row {
                trial,
                short: f[1].parse().unwrap(),
                long: f[2].parse().unwrap(),
                cos: f[4].parse().unwrap(),
                loss_diff: f[5].parse().unwrap(),
                flagged: f.get(6) == Some(&"<<<"),
            })
        })
        .collect()
}

/// The command's config for the library calls of the test.
fn config(model: &Path) -> DiagnoseConfig {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: DiagnoseConfig,
    }
    let model = model.to_string_lossy().into_owned();
    let dataset = docs().to_string_lossy().into_owned();
    Cli::parse_from(["x", "--model", &model, "--dataset", &dataset]).config
}

fn consistent_and_matches_library(name: &str) {
    let model = fixtures().join("models").join(name);
    // Relative, as the Python report names it (both run from the repository root).
    let stdout = stdout_of(&run(
        Path::new(&format!("tests/fixtures/models/{name}")),
        &[],
    ));
    for section in [
        "Testing: equal-length batching (no padding)",
        "Testing: precision=fp32",
    ] {
        let rows = section_rows(&stdout, section);
        assert_eq!(rows.len(), TRIALS, "{section}:\n{stdout}");
        for r in &rows {
            assert!(r.cos > 0.999 && !r.flagged, "{section} {r:?}");
        }
    }
    assert!(
        stdout.contains("  PASS  precision=fp32  (min cos_sim="),
        "{stdout}"
    );
    assert!(
        stdout.contains("RESULT: Gradients are consistent with default settings."),
        "{stdout}"
    );
    assert!(
        !stdout.contains("--force_math_sdp (precision"),
        "fp32 does not escalate"
    );

    // The padded trials are the seed's pairs, and each row's numbers are the library's.
    let cfg = config(&model);
    let tokenizer = Tokenizer::from_dir(&model).unwrap();
    let documents = load_documents(&cfg, &tokenizer).unwrap();
    assert_eq!(documents.len(), 12);
    let probe = GradientProbe::load(
        &model,
        Precision::Fp32,
        Device::Cpu,
        false,
        &Default::default(),
    )
    .unwrap();
    let rows = section_rows(&stdout, "Testing: precision=fp32");
    for (r, (i, j)) in rows.iter().zip(draws::sample_pairs(12, TRIALS, SEED)) {
        let (a, b) = if documents[i].len() > documents[j].len() {
            (&documents[j], &documents[i])
        } else {
            (&documents[i], &documents[j])
        };
        assert_eq!((r.short, r.long), (a.len(), b.len()), "{r:?}");
        let m = probe.measure(a, b).unwrap();
        assert!((m.cos_sim - r.cos).abs() < 2e-6, "{r:?} vs {m:?}");
        assert!((m.loss_diff - r.loss_diff).abs() < 2e-6, "{r:?} vs {m:?}");
    }
    // The measure can tell gradients apart: two different documents are far from parallel.
    let (_, ga) = probe.example_gradient(&[&documents[0]], 0).unwrap();
    let (_, gb) = probe.example_gradient(&[&documents[1]], 0).unwrap();
    let cross = bergson::diagnose::cosine(&ga, &gb);
    assert!(cross < 0.99, "different documents: cosine {cross}");
    assert_eq!(rows[0].trial, 0);

    // Python Bergson's report on the same documents and seed: the same draws, the same
    // numbers (losses are sums over up to ~100 tokens, so float32 rounding of the padded
    // attention shows in the 5th decimal).
    let python =
        std::fs::read_to_string(refs().join(format!("python_{name}_fp32_seed3.txt"))).unwrap();
    for section in [
        "Testing: equal-length batching (no padding)",
        "Testing: precision=fp32",
    ] {
        let ours = section_rows(&stdout, section);
        let theirs = section_rows(&python, section);
        assert_eq!(ours.len(), theirs.len(), "{section}");
        for (o, p) in ours.iter().zip(&theirs) {
            assert_eq!(
                (o.trial, o.short, o.long),
                (p.trial, p.short, p.long),
                "{section}"
            );
            assert!((o.cos - p.cos).abs() < 1e-5, "{section}: {o:?} vs {p:?}");
            assert!(
                (o.loss_diff - p.loss_diff).abs() < 1e-3,
                "{section}: {o:?} vs {p:?}"
            );
        }
    }
    let special = |s: &str| {
        let start = s
            .find("Special token check:")
            .expect("special token section");
        let end = s.find("\nLoading ").expect("loading line");
        s[start..end].to_string()
    };
    assert_eq!(special(&stdout), special(&python));
    let report = |s: &str| s[s.find("Report for").expect("report")..].to_string();
    assert_eq!(report(&stdout), report(&python));
}

#[test]
fn gpt_neox_gradients_are_consistent() {
    consistent_and_matches_library("gpt_neox");
}

#[test]
fn llama_gradients_are_consistent() {
    consistent_and_matches_library("llama");
}

/// A threshold no cosine reaches flags every trial; at fp32 there is nothing to escalate to.
#[test]
fn flagged_trials_are_marked_and_reported() {
    let model = fixtures().join("models/gpt_neox");
    let stdout = stdout_of(&run(&model, &["--threshold", "1.5"]));
    let rows = section_rows(&stdout, "Testing: precision=fp32");
    assert!(rows.iter().all(|r| r.flagged), "{stdout}");
    assert!(stdout.contains(&format!("Flagged:  {TRIALS}/{TRIALS} trials below 1.5")));
    assert!(
        stdout.contains("  FAIL  precision=fp32  (min cos_sim="),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("RESULT: Gradient inconsistency persists across all tested configurations."),
        "{stdout}"
    );
}

/// The llama fixture with a chat template that writes BOS before every conversation twice.
fn double_bos_llama(dir: &Path) -> PathBuf {
    let model = dir.join("llama_double_bos");
    copy_dir(&fixtures().join("models/llama"), &model);
    let template = std::fs::read_to_string(model.join("chat_template.jinja")).unwrap();
    std::fs::write(
        model.join("chat_template.jinja"),
        format!("{{{{ bos_token }}}}{{{{ bos_token }}}}{template}"),
    )
    .unwrap();
    model
}

#[test]
fn duplicated_bos_is_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let good = Tokenizer::from_dir(fixtures().join("models/llama")).unwrap();
    let check = check_special_tokens(&good, "llama").unwrap();
    assert!(check.ok, "{}", check.text);

    let model = double_bos_llama(tmp.path());
    let bad = Tokenizer::from_dir(&model).unwrap();
    let check = check_special_tokens(&bad, "llama").unwrap();
    assert!(!check.ok, "{}", check.text);
    let bos = bad.token_to_id("<s>").unwrap();
    assert!(
        check.text.contains(&format!("DUPLICATED BOS (id={bos})")),
        "{}",
        check.text
    );

    let stdout = stdout_of(&run(&model, &[]));
    assert!(
        stdout.contains("  FAIL  Special token check (chat template BOS/EOS)"),
        "{stdout}"
    );
}

#[test]
fn bad_input_is_one_line() {
    let out = run(Path::new("tests/fixtures/models/no_such_model"), &[]);
    assert_one_line_error(&out, &["no_such_model"]);
    let out = run(&fixtures().join("models/gpt_neox"), &["--n_trials", "0"]);
    assert_one_line_error(&out, &["--n_trials"]);
    let out = bergson()
        .args(["test_model_configuration", "--model"])
        .arg(fixtures().join("models/gpt_neox"))
        .args([
            "--dataset",
            "tests/fixtures/no_such_docs.jsonl",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["no_such_docs"]);
}
