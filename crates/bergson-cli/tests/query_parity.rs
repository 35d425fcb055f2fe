//! `bergson query` against Python Bergson 2.5.1's own sessions
//! (`tests/fixtures/scripts/make_query_refs.py`): the same prompts piped into both tools over the
//! same reference indexes (which Python built). The printed session must match line for line
//! (distances to their 4 printed decimals, within rounding), and the `--record` CSV row for row:
//! the same results in the same order, allowing exact ties to swap, scores within 1e-4 of the
//! largest |score| of that query (1e-2 for bf16 indexes, whose rounding differs between CPU
//! kernels in Bergson itself).
//!
//! Cases where Bergson itself fails (split attention heads and global projections: its
//! `TraceCollector` does not form those blocks) must work here and return `--top_k` results.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;
use common::{copy_dir, repo_root as root, BIN};

fn refs() -> PathBuf {
    root().join("tests/fixtures/bergson_query")
}

/// A copy of a reference index (searches cache row norms next to the index: never in the
/// repository).
fn index_copy(run: &str, into: &Path) -> PathBuf {
    let src = root().join("tests/fixtures/bergson/runs").join(run);
    let dst = into.join(run);
    copy_dir(&src, &dst);
    dst
}

struct Session {
    stdout: String,
    csv: String,
}

fn run_query(index: &Path, args: &[String], record: &Path) -> Session {
    let prompts = std::fs::read(refs().join("prompts.txt")).unwrap();
    let mut child = Command::new(BIN)
        .current_dir(root())
        .env("HF_HUB_OFFLINE", "1")
        .args(["query", "--index"])
        .arg(index)
        .arg("--record")
        .arg(record)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&prompts).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "bergson query failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Session {
        stdout: String::from_utf8(out.stdout).unwrap(),
        csv: std::fs::read_to_string(record).unwrap(),
    }
}

/// `(query, direction, result, index, score)` rows of a record.
fn records(text: &str) -> Vec<(String, String, String, i64, f64)> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        ["query", "direction", "result", "result_index", "score"]
    );
    r.records()
        .map(|row| {
            let row = row.unwrap();
            (
                row[0].to_string(),
                row[1].to_string(),
                row[2].to_string(),
                row[3].parse().unwrap(),
                row[4].parse().unwrap(),
            )
        })
        .collect()
}

/// Compares two records group by group (query, direction), allowing exact ties to swap.
fn compare_records(case: &str, ours: &str, theirs: &str, rtol: f64) -> f64 {
    let (a, b) = (records(ours), records(theirs));
    assert_eq!(a.len(), b.len(), "{case}: row counts");
    let mut worst = 0f64;
    let mut i = 0;
    while i < a.len() {
        let key = (&b[i].0, &b[i].1);
        let end = (i..b.len())
            .find(|&j| (&b[j].0, &b[j].1) != key)
            .unwrap_or(b.len());
        // Relative to the query's largest |score| over both directions: a score's rounding
        // comes from the query's gradient, whose size the top score shows (bottom scores are
        // small and would magnify it).
        let scale = b
            .iter()
            .filter(|r| &r.0 == key.0)
            .map(|r| r.4.abs())
            .fold(1e-12, f64::max);
        for j in i..end {
            assert_eq!((&a[j].0, &a[j].1), key, "{case}: row {j} group");
            let err = (a[j].4 - b[j].4).abs() / scale;
            worst = worst.max(err);
            assert!(err < rtol, "{case}: row {j} score {} vs {}", a[j].4, b[j].4);
            if a[j].3 != b[j].3 {
                // A tie: the rows differ but score the same at this rank (checked above);
                // each tool may keep either.
                eprintln!(
                    "{case}: row {j}: tie at score {}: row {} here, {} in Bergson",
                    b[j].4, a[j].3, b[j].3
                );
            } else {
                assert_eq!(a[j].2, b[j].2, "{case}: row {j} text");
            }
        }
        i = end;
    }
    worst
}

/// The printed sessions agree line for line; distance lines within printed rounding. Bergson's
/// warnings printed before the session (its logging, zero-norm rows) are not part of it.
fn compare_stdout(case: &str, ours: &str, theirs: &str, rtol: f64) {
    let session = |s: &str| {
        s.find("Enter your query")
            .map(|i| s[i..].to_string())
            .unwrap_or_default()
    };
    let (ours, theirs) = (&session(ours), &session(theirs));
    let (a, b): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), theirs.lines().collect());
    assert_eq!(
        a.len(),
        b.len(),
        "{case}: printed line counts\nours:\n{ours}\ntheirs:\n{theirs}"
    );
    for (n, (x, y)) in a.iter().zip(&b).enumerate() {
        let distance = |l: &str| {
            l.split_once(": (distance: ").and_then(|(rank, d)| {
                Some((rank.to_string(), d.strip_suffix(')')?.parse::<f64>().ok()?))
            })
        };
        match (distance(x), distance(y)) {
            (Some((ra, da)), Some((rb, db))) => {
                assert_eq!(ra, rb, "{case}: line {n}");
                assert!(
                    (da - db).abs() <= 1.5e-4 + rtol * db.abs().max(1.0),
                    "{case}: line {n}: {x} vs {y}"
                );
            }
            // Result texts may differ only where ties swapped rows (checked on the record).
            _ if x.starts_with("Enter your query") || y.starts_with("Enter your query") => {
                assert_eq!(x, y, "{case}: line {n}")
            }
            _ => {}
        }
    }
    assert!(
        ours.ends_with("Enter your query: "),
        "{case}: the session ends at the exit prompt"
    );
}

#[test]
fn query_sessions_match_python_bergson() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(refs().join("manifest.json")).unwrap())
            .unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    let filter = std::env::var("QUERY_CASES").ok();
    let tmp = tempfile::tempdir().unwrap();
    let mut ran = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        if filter
            .as_deref()
            .is_some_and(|f| !f.split(',').any(|c| c == name))
        {
            continue;
        }
        let run = case["index"].as_str().unwrap();
        let args: Vec<String> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let index = index_copy(run, &tmp.path().join(name));
        let record = tmp.path().join(format!("{name}.csv"));
        let ours = run_query(&index, &args, &record);
        if let Some(err) = case.get("error").and_then(Value::as_str) {
            // Bergson fails here; we answer every prompt with top_k results each way.
            let k: usize = args[args.iter().position(|a| a == "--top_k").unwrap() + 1]
                .parse()
                .unwrap();
            let rows = records(&ours.csv);
            assert_eq!(rows.len(), 3 * 2 * k, "{name} (Bergson: {err})");
            eprintln!("{name}: Bergson fails ({err}); bergson-rs answers");
        } else {
            let theirs_stdout =
                std::fs::read_to_string(refs().join(format!("{name}.stdout"))).unwrap();
            let theirs_csv = std::fs::read_to_string(refs().join(format!("{name}.csv"))).unwrap();
            let rtol = case["rtol"].as_f64().unwrap();
            compare_stdout(name, &ours.stdout, &theirs_stdout, rtol);
            let worst = compare_records(name, &ours.csv, &theirs_csv, rtol);
            eprintln!("{name}: worst score error {worst:.2e} (relative to the query's max)");
        }
        // A second session reuses the cached row norms and must print the same.
        let again = run_query(&index, &args, &tmp.path().join(format!("{name}.2.csv")));
        assert_eq!(again.stdout, ours.stdout, "{name}: second session");
        ran += 1;
    }
    assert!(ran > 0, "QUERY_CASES selected no case");
}
