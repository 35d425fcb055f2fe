//! `bergson validate` against reference runs of Python Bergson 2.5.1's `bergson validate` on a
//! tiny fixture model (tests/fixtures/scripts/make_validate_refs.py →
//! tests/fixtures/bergson_validate/): the same subsets from the same seed, every retrain's
//! loss change within 1e-4 of the largest one (the rest is float noise: Bergson's AdamW with
//! `eps_root` 1e-17 amplifies rounding), the same correlations, and Bergson's CSV layout.
//! Plus: the same numbers twice, a killed validation resumed, slices, a bank of saved
//! retrained models read back, and the one-line errors.

mod common;

use common::{assert_one_line_error, bergson, fixtures};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn case_dir(name: &str) -> PathBuf {
    fixtures().join("bergson_validate").join(name)
}

/// The flags of a case as `bergson validate` takes them (the script's keys are the flag names).
fn flags(name: &str) -> Vec<String> {
    let dir = case_dir(name);
    let data = fixtures().join("bergson_magic");
    let flags: Value =
        serde_json::from_slice(&std::fs::read(dir.join("flags.json")).expect("flags.json"))
            .expect("json");
    let mut out = vec![
        "--data.dataset".to_string(),
        data.join("train.jsonl").display().to_string(),
        "--query.dataset".into(),
        data.join("query.jsonl").display().to_string(),
        "--scores".into(),
        dir.join("scores").display().to_string(),
        "--num_threads".into(),
        "1".into(),
        "--quiet".into(),
    ];
    for (k, v) in flags.as_object().expect("flags") {
        out.push(format!("--{k}"));
        match (k.as_str(), v) {
            ("model", Value::String(m)) => {
                out.push(fixtures().join("models").join(m).display().to_string())
            }
            (_, Value::String(s)) => out.push(s.clone()),
            (_, Value::Array(a)) => out.extend(a.iter().map(Value::to_string)),
            (_, other) => out.push(other.to_string()),
        }
    }
    out
}

fn run_validate(run: &Path, extra: &[&str], name: &str) -> std::process::Output {
    bergson()
        .arg("validate")
        .arg(run)
        .args(flags(name))
        .args(extra)
        .output()
        .expect("run bergson")
}

/// A CSV as a header and rows of fields.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let head = lines
        .next()
        .expect("header")
        .split(',')
        .map(str::to_owned)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    (head, rows)
}

/// Compares CSV `file` of our run with Bergson's: the same header and integer fields, and
/// every float column within `tol` × the column's largest magnitude (`exact` columns: 1e-9).
/// Returns the worst relative difference per column.
fn compare_csv(
    ours: &Path,
    theirs: &Path,
    file: &str,
    tol: f64,
    exact: &[&str],
) -> Vec<(String, f64)> {
    let (h1, r1) = read_csv(&ours.join(file));
    let (h2, r2) = read_csv(&theirs.join(file));
    assert_eq!(h1, h2, "{file}: header");
    assert_eq!(r1.len(), r2.len(), "{file}: rows");
    let mut worst = Vec::new();
    for (c, name) in h2.iter().enumerate() {
        let a: Vec<f64> = r1.iter().map(|r| r[c].parse().expect("number")).collect();
        let b: Vec<f64> = r2.iter().map(|r| r[c].parse().expect("number")).collect();
        let scale = b
            .iter()
            .map(|x| x.abs())
            .filter(|x| x.is_finite())
            .fold(1e-30, f64::max);
        let mut w = 0f64;
        for (x, y) in a.iter().zip(&b) {
            if x.is_nan() && y.is_nan() {
                continue;
            }
            w = w.max((x - y).abs() / scale);
        }
        let limit = if exact.contains(&name.as_str()) {
            1e-9
        } else {
            tol
        };
        assert!(
            w <= limit,
            "{file}: column {name} differs by {w:e} (limit {limit:e})\nours {a:?}\ntheirs {b:?}"
        );
        worst.push((name.clone(), w));
    }
    eprintln!("{file}: {worst:?}");
    worst
}

fn check_lds(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = run_validate(&run, &[], name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = case_dir(name);
    let subsets = |d: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(d.join("subsets.json")).unwrap()).unwrap()
    };
    assert_eq!(subsets(&run), subsets(&theirs), "subsets.json");
    compare_csv(&run, &theirs, "validation.csv", 1e-4, &["subset", "query"]);
    // Same subsets and loss changes in the same order: the same ranks, so the same Spearman.
    let worst = compare_csv(&run, &theirs, "summary.csv", 1e-3, &["query", "N"]);
    let spearman = worst.iter().find(|(c, _)| c == "spearman_corr").unwrap().1;
    assert!(spearman <= 0.02, "Spearman differs by {spearman}");
    let (head, rows) = read_csv(&run.join("bootstrap.csv"));
    assert!(head.contains(&"spearman_low".to_string()) && !rows.is_empty());
}

#[test]
fn lds_partition_matches_bergson() {
    check_lds("lds_partition");
}

#[test]
fn lds_fraction_matches_bergson() {
    check_lds("lds_fraction");
}

#[test]
fn lds_multi_query_matches_bergson() {
    check_lds("lds_multi_query");
}

/// Per-token scores: the grid cells of Bergson's `Scores.to_grid` are the leave-out units.
#[test]
fn lds_tokens_matches_bergson() {
    check_lds("lds_tokens");
}

#[test]
fn filter_matches_bergson() {
    let name = "filter_proponents";
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = run_validate(&run, &[], name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = case_dir(name);
    let exact = ["query", "subset", "n_removed", "random_n", "rank"];
    // loss_change columns are differences of nearby losses (Bergson keeps them in float32).
    compare_csv(&run, &theirs, "filter_proponents.csv", 1e-4, &exact);
    compare_csv(&run, &theirs, "random_filter.csv", 1e-4, &exact);
    compare_csv(&run, &theirs, "filter_summary.csv", 1e-3, &exact);
}

#[test]
fn weight_step_matches_bergson() {
    let name = "weight_step";
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = run_validate(&run, &[], name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The steps move the loss by only 4e-4..3e-3, so the retrains' absolute noise (2e-7,
    // as in the LDS cases) is up to 1e-4 of the largest change here.
    compare_csv(
        &run,
        &case_dir(name),
        "weight_step.csv",
        3e-4,
        &["lr", "query"],
    );
}

/// Per-query weight steps (the step is the mean over the 3 score columns).
#[test]
fn weight_step_multi_query_matches_bergson() {
    let name = "weight_step_multi";
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = run_validate(&run, &[], name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bergson evaluates per-document losses in float32 (ulp 4.8e-7 at a loss of 6), a
    // quarter of a thousandth of the largest change (2.9e-3) here.
    compare_csv(
        &run,
        &case_dir(name),
        "weight_step.csv",
        5e-4,
        &["lr", "query"],
    );
}

/// One aggregated query, its detractors removed, no controls (no random_filter.csv).
#[test]
fn filter_detractors_matches_bergson() {
    let name = "filter_detractors";
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = run_validate(&run, &[], name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    compare_csv(
        &run,
        &case_dir(name),
        "filter_detractors.csv",
        1e-4,
        &["query", "n_removed"],
    );
    assert!(!run.join("random_filter.csv").exists() && !run.join("filter_summary.csv").exists());
}

/// The same seed gives the same subsets and numbers, byte for byte.
#[test]
fn same_seed_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for run in [&a, &b] {
        let out = run_validate(run, &[], "lds_fraction");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for f in [
        "subsets.json",
        "validation.csv",
        "summary.csv",
        "bootstrap.csv",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
}

/// A validation killed after some subsets continues at the next one with `--resume`: the
/// journaled subsets are not retrained (a journaled value survives as written) and the rest
/// equal an uninterrupted run.
#[test]
fn resume_continues_at_the_next_subset() {
    let name = "lds_partition";
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let out = run_validate(&full, &[], name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, rows) = read_csv(&full.join("validation.csv"));

    // The state a kill after two subsets leaves: their rows journaled (the second one's
    // diff marked, to see it is kept rather than recomputed), a torn third line, no outputs.
    let killed = tmp.path().join("killed");
    common::copy_dir(&full, &killed);
    for f in ["validation.csv", "summary.csv", "bootstrap.csv"] {
        std::fs::remove_file(killed.join(f)).unwrap();
    }
    let mut marked = rows[1].clone();
    marked[1] = "0.125".into();
    let part = format!(
        "{}\r\n{}\r\n{}\r\n2,-0.00",
        head.join(","),
        rows[0].join(","),
        marked.join(",")
    );
    std::fs::write(killed.join("validation.csv.part"), part).unwrap();
    let out = run_validate(&killed, &["--resume"], name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, resumed) = read_csv(&killed.join("validation.csv"));
    assert_eq!(resumed[1], marked, "the journaled subset was retrained");
    let mut want = rows.clone();
    want[1] = marked;
    assert_eq!(resumed, want);
    assert!(!killed.join("validation.csv.part").exists());

    // A real interruption (SIGINT once the first subset is journaled), then --resume.
    let slow = ["--num_epochs", "6"];
    let reference = tmp.path().join("reference");
    let out = run_validate(&reference, &slow, name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = tmp.path().join("interrupted");
    let mut child = bergson()
        .arg("validate")
        .arg(&run)
        .args(flags(name))
        .args(slow)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let part = run.join("validation.csv.part");
    let start = std::time::Instant::now();
    loop {
        let lines = std::fs::read_to_string(&part).map_or(0, |t| t.matches("\r\n").count());
        if lines >= 2 || start.elapsed().as_secs() > 60 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run ended before the interruption");
    assert!(!run.join("validation.csv").exists());
    let out = run_validate(
        &run,
        &slow.iter().copied().chain(["--resume"]).collect::<Vec<_>>(),
        name,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["validation.csv", "summary.csv"] {
        assert_eq!(
            std::fs::read_to_string(run.join(f)).unwrap(),
            std::fs::read_to_string(reference.join(f)).unwrap(),
            "{f}"
        );
    }
}

/// Slices write `validation_{start}_{stop}.csv` with those subsets' rows of a full run.
#[test]
fn slices_hold_their_subsets() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let out = run_validate(&full, &[], "lds_partition");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, rows) = read_csv(&full.join("validation.csv"));
    let part = tmp.path().join("slice");
    let out = run_validate(&part, &["--start", "2", "--stop", "5"], "lds_partition");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, sliced) = read_csv(&part.join("validation_2_5.csv"));
    assert_eq!(sliced, rows[2..5]);
    assert!(part.join("summary_2_5.csv").is_file() && !part.join("validation.csv").exists());
}

#[test]
fn bad_input_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], drop_scores: bool| {
        let mut f = flags("lds_partition");
        if drop_scores {
            let i = f.iter().position(|a| a == "--scores").unwrap();
            f.drain(i..i + 2);
        }
        bergson()
            .arg("validate")
            .arg(tmp.path().join(format!("run{}", extra.len())))
            .args(f)
            .args(extra)
            .output()
            .unwrap()
    };
    assert_one_line_error(&run(&[], true), &["--scores"]);
    let scores = case_dir("lds_partition")
        .join("scores")
        .display()
        .to_string();
    let out = bergson()
        .args(["validate", "--scores", &scores])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["bergson validate <run_path>"]);
    assert_one_line_error(&run(&["--method", "nope"], false), &["nope"]);
    assert_one_line_error(
        &run(&["--start", "4", "--stop", "2"], false),
        &["start < stop"],
    );
    assert_one_line_error(
        &run(&["--stop", "99", "--overwrite"], false),
        &["--stop 99", "6 subsets"],
    );
    assert_one_line_error(
        &run(&["--subsets", "bank", "--overwrite"], false),
        &["bank"],
    );
    let query = fixtures()
        .join("bergson_magic/query.jsonl")
        .display()
        .to_string();
    assert_one_line_error(
        &run(&["--data.dataset", &query, "--overwrite"], false),
        &["16 documents", "training set has 3"],
    );
    let multi = case_dir("lds_multi_query")
        .join("scores")
        .display()
        .to_string();
    let train = fixtures()
        .join("bergson_magic/train.jsonl")
        .display()
        .to_string();
    assert_one_line_error(
        &run(
            &["--scores", &multi, "--query.dataset", &train, "--overwrite"],
            false,
        ),
        &["3 query columns", "16 documents"],
    );
    let missing = tmp.path().join("nowhere").display().to_string();
    assert_one_line_error(
        &run(&["--scores", &missing, "--overwrite"], false),
        &["not a score directory"],
    );
}

/// `--subsets bank` reads the models a retraining run saved (`--save_models`) and gives the
/// same numbers without training; without `--paths` it is a one-line error.
#[test]
fn bank_reproduces_the_retraining_run() {
    let name = "lds_multi_query";
    let tmp = tempfile::tempdir().unwrap();
    let bank = tmp.path().join("bank");
    let out = run_validate(&bank, &["--save_models"], name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bank.join("retrained/base/model.safetensors").is_file());
    let run = tmp.path().join("eval");
    let bank_arg = bank.display().to_string();
    let out = run_validate(&run, &["--subsets", "bank", "--paths", &bank_arg], name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!run.join("checkpoints").exists(), "bank mode trained");
    for f in ["validation.csv", "summary.csv"] {
        assert_eq!(
            std::fs::read_to_string(run.join(f)).unwrap(),
            std::fs::read_to_string(bank.join(f)).unwrap(),
            "{f}"
        );
    }
    let out = run_validate(&tmp.path().join("nopaths"), &["--subsets", "bank"], name);
    assert_one_line_error(&out, &["--paths"]);
}

/// `--controls bank`: the filter's random controls read from a bank. An LDS bank drawn with
/// the filter's seed, count and size holds the same subsets as the controls retrained here
/// (the same generator draws), so the outputs equal Bergson's retrained controls.
#[test]
fn filter_controls_from_a_bank() {
    let name = "filter_proponents";
    let tmp = tempfile::tempdir().unwrap();
    let bank = tmp.path().join("bank");
    let out = run_validate(&bank, &["--method", "lds", "--save_models"], name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = tmp.path().join("run");
    let bank_arg = bank.display().to_string();
    let out = run_validate(&run, &["--controls", "bank", "--paths", &bank_arg], name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exact = ["query", "subset", "n_removed", "random_n", "rank"];
    let theirs = case_dir(name);
    compare_csv(&run, &theirs, "random_filter.csv", 1e-4, &exact);
    compare_csv(&run, &theirs, "filter_summary.csv", 1e-3, &exact);
    // A bank of other subset sizes is refused.
    let out = run_validate(
        &tmp.path().join("bad"),
        &[
            "--controls",
            "bank",
            "--paths",
            &bank_arg,
            "--fraction",
            "0.5",
        ],
        name,
    );
    assert_one_line_error(&out, &["set --fraction to match"]);
}
