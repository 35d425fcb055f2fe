//! Parity with Python Bergson 2.5.1's `bergson score` and `bergson reduce`.
//!
//! tests/fixtures/bergson_score/ holds query indexes and score runs that the real Bergson CLI
//! wrote (tests/fixtures/scripts/make_score_refs.py) and a manifest of the exact flags of each.
//! This test runs OUR binary with the same flags:
//!
//! * every query index is rebuilt with our `bergson build` / `bergson reduce` and compared with
//!   Bergson's: info.json, each module block of gradients.bin (relative to the block's max
//!   |value|), data.hf, and config.yaml's steps (the step is named `reduce` for a reduce);
//! * every score case is run against Bergson's query index (so we read Bergson's indexes) and
//!   compared with Bergson's run directory: the set of files, info.json, every score column
//!   (max error relative to the column's max |value|), the `written` flags and every byte of
//!   scores.bin outside the score values, offsets.npy, candidates.npy, data.hf (the loss within
//!   1e-5 relative, other columns exactly), config.yaml's steps and processor_config.yaml;
//! * for the first case of each query index, scoring against OUR query index gives Bergson's
//!   scores too;
//! * a case Bergson rejects is rejected by us: exit status 2, one `error:` line, no run
//!   directory.
//!
//! `BERGSON_SCORE_CASES=a,b` limits the run to those score cases (and the query indexes they
//! read); the test fails when the selection is empty. `--nocapture` prints the per-case table.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::{Array, ArrayRef, Float32Array};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use bergson::index::hf_dataset::read_hf_dataset;
use bergson::index::reader::read_offsets;
use bergson::index::score_store::ScoreStore;
use bergson::index::GradientIndex;
use serde_json::Value as Json;
use tch::Kind;

mod common;
use common::{repo_root, BIN};

fn refs_dir() -> PathBuf {
    repo_root().join("tests/fixtures/bergson_score")
}

/// One manifest entry: a query index (`command` build/reduce) or a score case (`query` set).
#[derive(Clone)]
struct Entry {
    name: String,
    command: String,
    query: String,
    args: Vec<String>,
    rtol: f64,
    error: Option<String>,
}

struct Manifest {
    path_flags: Vec<String>,
    queries: Vec<Entry>,
    cases: Vec<Entry>,
}

fn manifest() -> Manifest {
    let path = refs_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).expect("tests/fixtures/bergson_score/manifest.json");
    let m: Json = serde_json::from_str(&text).expect("manifest is JSON");
    let strings = |v: &Json| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    };
    let entries = |key: &str| -> Vec<Entry> {
        m[key]
            .as_array()
            .expect("entries")
            .iter()
            .map(|c| Entry {
                name: c["name"].as_str().expect("name").to_string(),
                command: c["command"].as_str().unwrap_or("score").to_string(),
                query: c["query"].as_str().unwrap_or_default().to_string(),
                args: strings(&c["args"]),
                rtol: c["rtol"].as_f64().expect("rtol"),
                error: c.get("error").and_then(Json::as_str).map(str::to_string),
            })
            .collect()
    };
    Manifest {
        path_flags: strings(&m["path_flags"]),
        queries: entries("queries"),
        cases: entries("cases"),
    }
}

/// The entry's flags with repository paths made absolute, and `--query_path` pointed at
/// `query_dir` when given.
fn absolute_args(e: &Entry, path_flags: &[String], query_dir: Option<&Path>) -> Vec<String> {
    let root = repo_root();
    let mut out = Vec::with_capacity(e.args.len());
    let mut it = e.args.iter();
    while let Some(a) = it.next() {
        out.push(a.clone());
        if path_flags.contains(a) {
            let v = it.next().expect("a path flag has a value");
            let abs = match (a.as_str(), query_dir) {
                ("--query_path", Some(q)) => q.to_path_buf(),
                _ => root.join(v),
            };
            out.push(abs.to_string_lossy().into_owned());
        }
    }
    out
}

/// Runs `bergson <command> <run> <args> --quiet`, offline, one thread.
fn bergson(command: &str, run: &Path, args: &[String]) -> Output {
    Command::new(BIN)
        .arg(command)
        .arg(run)
        .args(args)
        .args(["--quiet", "--num_threads", "1"])
        .env("HF_HUB_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("run bergson")
}

/// What one case measured.
#[derive(Default)]
struct Report {
    name: String,
    rows: usize,
    columns: usize,
    /// Max over columns of max |ours - theirs| / max |theirs| within the column.
    max_err: f64,
    /// The same against our own query index (NaN when not run).
    own_query_err: f64,
    loss_err: f64,
    failures: Vec<String>,
    note: String,
}

impl Report {
    fn new(name: &str) -> Self {
        Report {
            name: name.to_string(),
            own_query_err: f64::NAN,
            ..Report::default()
        }
    }

    fn fail(&mut self, msg: impl Into<String>) {
        self.failures.push(msg.into());
    }
}

fn read_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// info.json: same keys in the same order, same values.
fn compare_info(ours: &Path, theirs: &Path, r: &mut Report) {
    let (a, b) = (
        read_json(&ours.join("info.json")),
        read_json(&theirs.join("info.json")),
    );
    if serde_json::to_string(&a).unwrap() != serde_json::to_string(&b).unwrap() {
        r.fail(format!("info.json differs:\n  ours:   {a}\n  theirs: {b}"));
    }
}

/// Files (relative paths) under `dir`.
fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// The processor files the fixture script drops (compared by the build's parity test).
const DROPPED: [&str; 3] = ["normalizers.pth", "hessians.pth", "hessians_eigen.pth"];

/// We write the files Bergson wrote, and nothing else.
fn compare_files(ours: &Path, theirs: &Path, r: &mut Report) {
    let (a, b) = (files(ours), files(theirs));
    let missing: Vec<&String> = b.difference(&a).collect();
    let extra: Vec<&String> = a
        .difference(&b)
        .filter(|f| !DROPPED.contains(&f.as_str()))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        r.fail(format!("files: missing {missing:?}, extra {extra:?}"));
    }
}

/// Every score column within `rtol` of Bergson's (relative to the column's max |value|),
/// identical written flags, identical bytes outside the score values. Returns the worst error.
fn compare_scores(ours: &Path, theirs: &Path, rtol: f64, what: &str, r: &mut Report) -> f64 {
    let b = ScoreStore::open(theirs).expect("reference score store opens");
    let a = match ScoreStore::open(ours) {
        Ok(a) => a,
        Err(e) => {
            r.fail(format!("{what}: our score store does not open: {e}"));
            return f64::INFINITY;
        }
    };
    r.rows = b.info.num_rows;
    r.columns = b.info.num_scores;
    if a.info != b.info {
        r.fail(format!(
            "{what}: store shape differs: ours {:?}, theirs {:?}",
            a.info, b.info
        ));
        return f64::INFINITY;
    }
    let (x, wx) = a.values().unwrap();
    let (y, wy) = b.values().unwrap();
    if wx != wy {
        r.fail(format!(
            "{what}: written flags differ:\n  ours:   {wx:?}\n  theirs: {wy:?}"
        ));
    }
    let (rows, cols) = (b.info.num_rows, b.info.num_scores);
    let mut worst = 0.0f64;
    for c in 0..cols {
        let col = |v: &[f64]| (0..rows).map(|i| v[i * cols + c]).collect::<Vec<_>>();
        let (p, q) = (col(&x), col(&y));
        let scale = q.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = p
            .iter()
            .zip(&q)
            .fold(0.0f64, |m, (s, t)| m.max((s - t).abs()));
        let err = if scale > 0.0 {
            diff / scale
        } else if diff == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        let err = if err.is_nan() { f64::INFINITY } else { err };
        worst = worst.max(err);
        if err > rtol {
            r.fail(format!(
                "{what}: score_{c} max rel err {err:.3e} > {rtol:.1e}\n  ours:   {p:?}\n  theirs: {q:?}"
            ));
        }
    }
    // Padding and flags: every byte that is not part of a score value.
    let (ba, bb) = (
        std::fs::read(ours.join("scores.bin")).unwrap(),
        std::fs::read(theirs.join("scores.bin")).unwrap(),
    );
    let l = b.layout;
    let is_value = |i: usize| {
        let at = i % l.itemsize;
        at < l.num_scores * l.pair && at % l.pair < l.elem
    };
    if ba.len() != bb.len() {
        r.fail(format!(
            "{what}: scores.bin has {} bytes, Bergson's {}",
            ba.len(),
            bb.len()
        ));
    } else if let Some(i) = (0..ba.len()).find(|&i| !is_value(i) && ba[i] != bb[i]) {
        r.fail(format!(
            "{what}: scores.bin byte {i} (outside the scores) is {}, Bergson's {}",
            ba[i], bb[i]
        ));
    }
    worst
}

/// offsets.npy / candidates.npy: present in both or neither, equal.
fn compare_npy(file: &str, ours: &Path, theirs: &Path, r: &mut Report) {
    let (a, b) = (ours.join(file), theirs.join(file));
    match (a.exists(), b.exists()) {
        (false, false) => {}
        (true, true) => {
            let (x, y) = (read_offsets(&a).unwrap(), read_offsets(&b).unwrap());
            if x != y {
                r.fail(format!("{file}: ours {x:?}, theirs {y:?}"));
            }
        }
        (ours_has, _) => r.fail(format!(
            "{file}: {} but not in Bergson's",
            if ours_has {
                "in ours"
            } else {
                "missing from ours"
            }
        )),
    }
}

fn column_names(t: &RecordBatch) -> Vec<String> {
    t.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// data.hf: same columns, types and features; `loss` within `loss_tol` relative to the larger
/// magnitude, everything else exactly.
fn compare_data_hf(ours: &Path, theirs: &Path, loss_tol: f64, r: &mut Report) {
    let b = read_hf_dataset(&theirs.join("data.hf")).expect("reference data.hf");
    let a = match read_hf_dataset(&ours.join("data.hf")) {
        Ok(a) => a,
        Err(e) => return r.fail(format!("our data.hf does not read: {e}")),
    };
    if column_names(&a) != column_names(&b) {
        return r.fail(format!(
            "data.hf columns: ours {:?}, theirs {:?}",
            column_names(&a),
            column_names(&b)
        ));
    }
    for (i, name) in column_names(&b).iter().enumerate() {
        let (x, y): (&ArrayRef, &ArrayRef) = (a.column(i), b.column(i));
        if x.data_type() != y.data_type() {
            r.fail(format!(
                "data.hf {name}: ours {:?}, theirs {:?}",
                x.data_type(),
                y.data_type()
            ));
            continue;
        }
        if name == "loss" && *y.data_type() == DataType::Float32 {
            let f = |c: &ArrayRef| -> Vec<f64> {
                c.as_any()
                    .downcast_ref::<Float32Array>()
                    .unwrap()
                    .iter()
                    .map(|v| v.map_or(f64::NAN, f64::from))
                    .collect()
            };
            let (p, q) = (f(x), f(y));
            for (j, (s, t)) in p.iter().zip(&q).enumerate() {
                let err = if s == t {
                    0.0
                } else {
                    (s - t).abs() / s.abs().max(t.abs())
                };
                let err = if err.is_nan() { f64::INFINITY } else { err };
                r.loss_err = r.loss_err.max(err);
                if err > loss_tol {
                    r.fail(format!("data.hf loss[{j}]: ours {s}, theirs {t}"));
                }
            }
            if p.len() != q.len() {
                r.fail(format!("data.hf loss: {} rows vs {}", p.len(), q.len()));
            }
        } else if x.to_data() != y.to_data() {
            r.fail(format!(
                "data.hf {name} differs:\n  ours:   {x:?}\n  theirs: {y:?}"
            ));
        }
    }
    let features = |d: &Path| read_json(&d.join("data.hf/dataset_info.json"))["features"].clone();
    if features(ours) != features(theirs) {
        r.fail(format!(
            "data.hf features: ours {}, theirs {}",
            features(ours),
            features(theirs)
        ));
    }
}

fn parse_yaml(path: &Path) -> Result<Json, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    serde_saphyr::from_str::<Json>(&text).map_err(|e| e.to_string())
}

/// config.yaml's steps, equal once run paths are dropped and repository paths made relative.
fn compare_config_yaml(ours: &Path, theirs: &Path, step: &str, r: &mut Report) {
    let b = parse_yaml(&theirs.join("config.yaml")).expect("reference config.yaml");
    let a = match parse_yaml(&ours.join("config.yaml")) {
        Ok(a) => a,
        Err(e) => return r.fail(format!("our config.yaml: {e}")),
    };
    let root = format!("{}/", repo_root().display());
    let normalise = |mut v: Json| -> Json {
        let strip = |v: &mut Json| {
            if let Some(s) = v.as_str() {
                *v = Json::String(s.trim_start_matches(root.as_str()).to_string());
            }
        };
        let s = &mut v["steps"][0][step];
        s["index_cfg"]["run_path"] = Json::Null;
        for key in ["model", "optimizer_state"] {
            strip(&mut s["index_cfg"][key]);
        }
        strip(&mut s["index_cfg"]["data"]["dataset"]);
        strip(&mut s["score_cfg"]["query_path"]);
        strip(&mut s["score_cfg"]["candidates"]["scores"]);
        v["steps"].take()
    };
    let (a, b) = (normalise(a), normalise(b));
    if a != b {
        r.fail(format!(
            "config.yaml steps differ:\n  ours:   {a}\n  theirs: {b}"
        ));
    }
}

fn compare_processor_config(ours: &Path, theirs: &Path, r: &mut Report) {
    let file = "processor_config.yaml";
    let b = parse_yaml(&theirs.join(file)).expect("reference processor_config.yaml");
    match parse_yaml(&ours.join(file)) {
        Ok(a) if a == b => {}
        Ok(a) => r.fail(format!("{file}: ours {a}, theirs {b}")),
        Err(e) => r.fail(format!("our {file}: {e}")),
    }
}

/// Each module block of our query index within `rtol` of Bergson's.
fn compare_gradients(ours: &Path, theirs: &Path, rtol: f64, r: &mut Report) {
    let a = match GradientIndex::open(ours) {
        Ok(a) => a,
        Err(e) => return r.fail(format!("our index does not open: {e}")),
    };
    let b = GradientIndex::open(theirs).expect("reference index opens");
    r.rows = b.num_rows();
    r.columns = b.row_len();
    if a.num_rows() != b.num_rows() || a.row_len() != b.row_len() || a.kind() != b.kind() {
        return r.fail(format!(
            "shape/dtype: ours [{}, {}] {:?}, theirs [{}, {}] {:?}",
            a.num_rows(),
            a.row_len(),
            a.kind(),
            b.num_rows(),
            b.row_len(),
            b.kind()
        ));
    }
    let n = b.num_rows();
    for (name, _) in &b.info.grad_sizes {
        let x = a.module_rows(name, 0..n).unwrap().to_kind(Kind::Double);
        let y = b.module_rows(name, 0..n).unwrap().to_kind(Kind::Double);
        let scale = y.abs().max().double_value(&[]);
        let diff = (&x - &y).abs().max().double_value(&[]);
        let err = if scale > 0.0 { diff / scale } else { diff };
        r.max_err = r.max_err.max(err);
        if err.is_nan() || err > rtol {
            r.fail(format!(
                "gradients {name}: max rel err {err:.3e} > {rtol:.1e}"
            ));
        }
    }
}

/// One line of stderr starting `error:`, exit status 2, no run directory.
fn check_rejected(out: &Output, run: &Path, r: &mut Report) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.code() != Some(2) {
        r.fail(format!(
            "exit status {:?}, want 2: {err}",
            out.status.code()
        ));
    }
    if !err.starts_with("error: ") || err.lines().count() != 1 {
        r.fail(format!("want one `error:` line, got: {err}"));
    }
    if run.exists() {
        r.fail(format!("{} exists after the error", run.display()));
    }
    err
}

/// Builds (or reduces) one query index with our binary and compares it with Bergson's.
fn check_query(q: &Entry, path_flags: &[String], ours: &Path) -> Report {
    let mut r = Report::new(&q.name);
    let theirs = refs_dir().join("queries").join(&q.name);
    let out = bergson(&q.command, ours, &absolute_args(q, path_flags, None));
    if !out.status.success() {
        r.fail(format!(
            "our {} failed: {}",
            q.command,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return r;
    }
    compare_info(ours, &theirs, &mut r);
    compare_gradients(ours, &theirs, q.rtol, &mut r);
    compare_data_hf(ours, &theirs, 1e-5, &mut r);
    compare_config_yaml(ours, &theirs, &q.command, &mut r);
    compare_processor_config(ours, &theirs, &mut r);
    r
}

/// Runs one score case against Bergson's query index (and, with `own_query`, ours) and
/// compares it with Bergson's run directory.
fn check_case(c: &Entry, path_flags: &[String], tmp: &Path, own_query: Option<&Path>) -> Report {
    let mut r = Report::new(&c.name);
    let ours = tmp.join("runs").join(&c.name);
    let out = bergson("score", &ours, &absolute_args(c, path_flags, None));
    if let Some(theirs_err) = &c.error {
        if out.status.success() {
            r.fail(format!("we accept what Bergson rejects: {theirs_err}"));
        } else {
            let ours_err = check_rejected(&out, &ours, &mut r);
            r.note = format!("rejected: {ours_err}");
        }
        return r;
    }
    if !out.status.success() {
        r.fail(format!(
            "our score failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return r;
    }
    let theirs = refs_dir().join("runs").join(&c.name);
    if !theirs.is_dir() {
        r.fail(format!(
            "no reference run {}; rerun make_score_refs.py",
            theirs.display()
        ));
        return r;
    }
    compare_files(&ours, &theirs, &mut r);
    compare_info(&ours, &theirs, &mut r);
    r.max_err = compare_scores(&ours, &theirs, c.rtol, "scores", &mut r);
    compare_npy("offsets.npy", &ours, &theirs, &mut r);
    compare_npy("candidates.npy", &ours, &theirs, &mut r);
    compare_data_hf(&ours, &theirs, 1e-5, &mut r);
    compare_config_yaml(&ours, &theirs, "score", &mut r);
    compare_processor_config(&ours, &theirs, &mut r);
    if let Some(q) = own_query {
        let run = tmp.join("own").join(&c.name);
        let out = bergson("score", &run, &absolute_args(c, path_flags, Some(q)));
        if out.status.success() {
            r.own_query_err =
                compare_scores(&run, &theirs, c.rtol, "scores with our query index", &mut r);
        } else {
            r.fail(format!(
                "our score against our query index failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    r
}

/// The score cases `BERGSON_SCORE_CASES` names (all by default).
fn selected(cases: Vec<Entry>) -> Vec<Entry> {
    match std::env::var("BERGSON_SCORE_CASES") {
        Ok(list) if !list.is_empty() => {
            let want: Vec<&str> = list.split(',').map(str::trim).collect();
            cases
                .into_iter()
                .filter(|c| want.contains(&c.name.as_str()))
                .collect()
        }
        _ => cases,
    }
}

#[test]
fn score_parity() {
    let m = manifest();
    let cases = selected(m.cases);
    assert!(
        !cases.is_empty(),
        "no score case selected (BERGSON_SCORE_CASES names none of the manifest's cases)"
    );
    let used: BTreeSet<&str> = cases.iter().map(|c| c.query.as_str()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();

    // Our query indexes, compared with Bergson's.
    for q in m.queries.iter().filter(|q| used.contains(q.name.as_str())) {
        let t = std::time::Instant::now();
        let mut r = check_query(q, &m.path_flags, &tmp.path().join("queries").join(&q.name));
        r.note = format!("{:.1}s {} {}", t.elapsed().as_secs_f64(), q.command, r.note);
        reports.push(r);
    }
    // Score cases; the first accepted case of each query index also against our index.
    let mut own_done = BTreeSet::new();
    for c in &cases {
        let own = tmp.path().join("queries").join(&c.query);
        let own_query = (c.error.is_none() && own.exists() && own_done.insert(c.query.clone()))
            .then_some(own.as_path());
        let t = std::time::Instant::now();
        let mut r = check_case(c, &m.path_flags, tmp.path(), own_query);
        r.note = format!("{:.1}s {}", t.elapsed().as_secs_f64(), r.note);
        reports.push(r);
    }

    let mut table = String::from(
        "\ncase                             rows  cols  max rel err  own-query err  loss err  status\n",
    );
    for r in &reports {
        let _ = writeln!(
            table,
            "{:<32} {:>4}  {:>4}  {:>11.3e}  {:>13.3e}  {:>8.1e}  {} {}",
            r.name,
            r.rows,
            r.columns,
            r.max_err,
            r.own_query_err,
            r.loss_err,
            if r.failures.is_empty() { "ok" } else { "FAIL" },
            r.note
        );
    }
    println!("{table}");
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.failures.is_empty()).collect();
    for r in &failed {
        println!("== {} ==", r.name);
        for f in &r.failures {
            println!("  {f}");
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} checks differ from Bergson 2.5.1: {:?}",
        failed.len(),
        reports.len(),
        failed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>()
    );
}
