//! `bergson leaderboard` end to end at a toy size: the table, CSV and PNG are written, a rerun
//! keeps every finished step, and bad flags are one-line errors with exit status 2.

use std::process::Command;

fn bergson() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bergson"))
}

const TOY: [&str; 14] = [
    "--docs",
    "120",
    "--queries",
    "3",
    "--subsets",
    "4",
    "--fraction",
    "0.05",
    "--methods",
    "magic,bm25",
    "--qld_queries",
    "1",
    "--qld_controls",
    "1",
];

/// Runs the toy leaderboard into `run` (one thread, without Python Bergson's rows).
fn run_toy(run: &std::path::Path) -> std::process::Output {
    bergson()
        .arg("leaderboard")
        .arg(run)
        .args(TOY)
        .args(["--num_threads", "1"])
        .env_remove("BERGSON_PY")
        .output()
        .unwrap()
}

#[test]
fn toy_leaderboard_writes_its_table_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("lb");
    let out = run_toy(&run);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let md = std::fs::read_to_string(run.join("leaderboard.md")).unwrap();
    assert!(md.contains("| MAGIC (per-query) | bergson-rs |"), "{md}");
    assert!(md.contains("| BM25 | bergson-rs |"), "{md}");
    let csv = std::fs::read_to_string(run.join("leaderboard.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    // Every LDS is a correlation.
    for line in csv.lines().skip(1) {
        let lds: f64 = line.split(',').nth(2).unwrap().parse().unwrap();
        assert!((-1.0..=1.0).contains(&lds), "{line}");
    }
    let png = std::fs::read(run.join("leaderboard.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // One subset per LDS retrain, one QLD line per (method, query) and control.
    let subsets = std::fs::read_to_string(run.join("lds/subsets.json")).unwrap();
    assert_eq!(subsets.matches('[').count(), 5, "{subsets}");
    let qld = std::fs::read_to_string(run.join("qld.csv")).unwrap();
    assert_eq!(qld.lines().count(), 3, "{qld}");

    // A rerun keeps what is finished and writes the same table.
    let again = run_toy(&run);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(
        err.contains("bergson-rs / magic: done before, kept"),
        "{err}"
    );
    assert!(!err.contains("QLD retrains:"), "{err}");
    let csv2 = std::fs::read_to_string(run.join("leaderboard.csv")).unwrap();
    // The same numbers (BM25's wall time is measured again).
    let numbers = |c: &str| -> Vec<String> {
        c.lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(numbers(&csv), numbers(&csv2));

    // Other settings on the same run directory are refused.
    let other = bergson()
        .arg("leaderboard")
        .arg(&run)
        .args(["--docs", "200"])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&other.stderr).contains("other settings"));
}

#[test]
fn unknown_method_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = bergson()
        .arg("leaderboard")
        .arg(dir.path().join("lb"))
        .args(["--methods", "magic,oracle"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--methods oracle: unknown method"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
