//! `bergson score` at the command line: every bad input ends with exit status 2, nothing on
//! stdout, one `error:` line on stderr that names the problem (and the fix), and no run directory
//! (nor anything complete-looking) left behind; a killed or interrupted score run resumes to
//! byte-identical output; Python Bergson's `load_scores` reads our store (opt-in, `BERGSON_PY`).
//!
//! Every test runs the real binary on the tiny gpt_neox fixture, against one query index built
//! once (five query documents, projection 8).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;
use common::{assert_one_line_error, fixtures, BIN};

fn fixture(rel: &str) -> String {
    fixtures().join(rel).to_string_lossy().into_owned()
}

/// `bergson <args...>` offline, one thread, logs at their default level.
fn bergson(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE");
    cmd
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "bergson failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The query index every test scores against (built once per test binary).
fn query_index() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let q = dir.path().join("queries");
        let out = bergson(&[
            "build",
            path_str(&q),
            "--model",
            &fixture("models/gpt_neox"),
            "--dataset",
            &fixture("bergson_score/data/queries.jsonl"),
            "--projection_dim",
            "8",
            "--quiet",
        ])
        .output()
        .unwrap();
        assert_ok(&out);
        (dir, q)
    });
    path
}

/// A temp directory to score into; `run` is the run path.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `bergson score <sandbox>/run --query_path <query> --model gpt_neox --dataset text.jsonl
    /// --projection_dim 8 --token_batch_size 64 <extra...>`; a default flag that `extra` gives
    /// too is left out (clap refuses a flag given twice).
    fn score_cmd(&self, query: &Path, extra: &[&str]) -> Command {
        let run = self.path("run");
        let defaults = [
            ("--query_path", path_str(query).to_string()),
            ("--model", fixture("models/gpt_neox")),
            ("--dataset", fixture("bergson/data/text.jsonl")),
            ("--projection_dim", "8".to_string()),
            ("--token_batch_size", "64".to_string()),
        ];
        let mut args = vec!["score".to_string(), path_str(&run).to_string()];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = bergson(&args);
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn score(&self, query: &Path, extra: &[&str]) -> Output {
        self.score_cmd(query, extra).output().expect("run bergson")
    }

    /// Neither the run path nor its `.part` exists.
    #[track_caller]
    fn assert_nothing_written(&self) {
        assert!(!self.path("run").exists(), "run path was created");
        assert!(!self.path("run.part").exists(), "run.part was created");
    }
}

/// Checks the error contract and that stderr contains every key; returns the message.
#[track_caller]
fn assert_error(out: &Output, keys: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.is_empty(), "stdout not empty: {stdout}");
    let stderr = assert_one_line_error(out, keys);
    assert_eq!(stderr.lines().count(), 1, "want no hint line:\n{stderr}");
    stderr
}

/// A copy of the query index at `<sandbox>/<name>`.
fn copy_query(sb: &Sandbox, name: &str) -> PathBuf {
    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap().flatten() {
            let p = e.path();
            let dst = to.join(e.file_name());
            if p.is_dir() {
                copy_dir(&p, &dst);
            } else {
                fs::copy(&p, &dst).unwrap();
            }
        }
    }
    let dst = sb.path(name);
    copy_dir(query_index(), &dst);
    dst
}

#[test]
fn a_missing_query_index_is_named() {
    let sb = Sandbox::new();
    let out = sb.score(&sb.path("nowhere"), &[]);
    assert_error(&out, &["nowhere", "does not exist", "bergson build"]);
    sb.assert_nothing_written();
    let out = sb.score(Path::new(""), &[]);
    assert_error(&out, &["--query_path is required"]);
    sb.assert_nothing_written();
}

#[test]
fn an_unfinished_query_index_is_refused() {
    let sb = Sandbox::new();
    // Only `q.part` exists: the build that made it did not finish.
    let part = copy_query(&sb, "q.part");
    let out = sb.score(&sb.path("q"), &[]);
    assert_error(&out, &["unfinished", "q.part", "rerun the build"]);
    sb.assert_nothing_written();
    // The `.part` itself, passed as the query.
    let out = sb.score(&part, &[]);
    assert_error(&out, &["not a finished gradient index"]);
    sb.assert_nothing_written();
}

#[test]
fn other_projection_settings_are_named() {
    let sb = Sandbox::new();
    let q = query_index();
    let out = sb.score(q, &["--projection_dim", "4"]);
    assert_error(&out, &["projection_dim=8, not 4", "The query index"]);
    sb.assert_nothing_written();
    let out = sb.score(q, &["--projection_seed", "3"]);
    assert_error(&out, &["projection_seed=None, not 3"]);
    sb.assert_nothing_written();
    let out = sb.score(q, &["--projection_type", "normal"]);
    assert_error(&out, &["projection_type=rademacher, not normal"]);
    sb.assert_nothing_written();
    let out = sb.score(q, &["--include_bias"]);
    assert_error(&out, &["include_bias=false, not true"]);
    sb.assert_nothing_written();
}

#[test]
fn missing_modules_are_named() {
    let sb = Sandbox::new();
    let q = query_index();
    // Asked for a module the query index lacks.
    let out = sb.score(q, &["--score_cfg.modules", "layers.7.mlp.dense_4h_to_h"]);
    assert_error(
        &out,
        &["layers.7.mlp.dense_4h_to_h", "not in the query index"],
    );
    sb.assert_nothing_written();
    // The query index has modules this run does not collect.
    let out = sb.score(q, &["--filter_modules", "*.attention.*"]);
    assert_error(
        &out,
        &["layers.0.attention.query_key_value", "does not collect"],
    );
    sb.assert_nothing_written();
    // ...which --score_cfg.modules can leave out.
    let out = sb.score(
        q,
        &[
            "--filter_modules",
            "*.attention.*",
            "--score_cfg.modules",
            "layers.1.mlp.dense_h_to_4h",
            "--quiet",
        ],
    );
    assert_ok(&out);
    assert!(sb.path("run/scores.bin").exists());
}

#[test]
fn a_truncated_query_index_is_refused() {
    let sb = Sandbox::new();
    let q = copy_query(&sb, "q");
    let grads = q.join("gradients.bin");
    let len = fs::metadata(&grads).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&grads)
        .unwrap()
        .set_len(len - 4)
        .unwrap();
    let out = sb.score(&q, &[]);
    assert_error(&out, &["gradients.bin", "truncated"]);
    sb.assert_nothing_written();
    // A damaged info.json.
    fs::write(q.join("info.json"), "{\"num_grads\": ").unwrap();
    let out = sb.score(&q, &[]);
    assert_error(&out, &["info.json"]);
    sb.assert_nothing_written();
}

#[test]
fn query_slices_need_individual_unaggregated_scores() {
    let sb = Sandbox::new();
    let q = query_index();
    let out = sb.score(q, &["--query_batch_size", "2", "--aggregation", "mean"]);
    assert_error(&out, &["--query_batch_size", "--aggregation none"]);
    sb.assert_nothing_written();
    let out = sb.score(q, &["--query_batch_size", "2", "--score", "nearest"]);
    assert_error(&out, &["--query_batch_size", "--score individual"]);
    sb.assert_nothing_written();
    let out = sb.score(q, &["--query_batch_size", "0"]);
    assert_error(&out, &["--query_batch_size must be positive"]);
    sb.assert_nothing_written();
}

#[test]
fn candidates_cannot_be_per_token() {
    let sb = Sandbox::new();
    let q = query_index();
    let earlier = sb.path("earlier");
    fs::create_dir(&earlier).unwrap();
    let out = sb.score(
        q,
        &[
            "--scores",
            path_str(&earlier),
            "--top_k",
            "2",
            "--attribute_tokens",
        ],
    );
    assert_error(&out, &["--scores", "--attribute_tokens"]);
    sb.assert_nothing_written();
    // Not a score directory.
    let out = sb.score(q, &["--scores", path_str(&earlier), "--top_k", "2"]);
    assert_error(&out, &["not a score run directory"]);
    sb.assert_nothing_written();
}

#[test]
fn an_existing_run_is_kept_without_overwrite() {
    let sb = Sandbox::new();
    let q = query_index();
    assert_ok(&sb.score(q, &["--quiet"]));
    let before = snapshot(&sb.path("run"));
    let out = sb.score(q, &["--unit_normalize"]);
    assert_error(&out, &["already exists", "--overwrite"]);
    assert_eq!(snapshot(&sb.path("run")), before, "the run was touched");
    assert!(!sb.path("run.part").exists());
    // --overwrite replaces it.
    assert_ok(&sb.score(q, &["--unit_normalize", "--overwrite", "--quiet"]));
    assert_ne!(
        snapshot(&sb.path("run"))["scores.bin"],
        before["scores.bin"]
    );
}

#[test]
fn a_part_of_another_config_is_refused() {
    let sb = Sandbox::new();
    let q = query_index();
    // A finished run of one config, moved to look like an interrupted one.
    assert_ok(&sb.score(q, &["--quiet"]));
    fs::rename(sb.path("run"), sb.path("run.part")).unwrap();
    let before = snapshot(&sb.path("run.part"));
    let out = sb.score(q, &["--score", "nearest"]);
    assert_error(&out, &["run.part", "different config", "--overwrite"]);
    assert_eq!(
        snapshot(&sb.path("run.part")),
        before,
        "the .part was touched"
    );
    assert!(!sb.path("run").exists());
    assert_ok(&sb.score(q, &["--score", "nearest", "--overwrite", "--quiet"]));
    assert!(sb.path("run/scores.bin").exists() && !sb.path("run.part").exists());
}

/// Every file of a run directory with its bytes; config.yaml without its `created:` time and
/// `run_path` (which name the run, not its contents).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
            let mut bytes = fs::read(&p).unwrap();
            if rel == "config.yaml" {
                let text = String::from_utf8(bytes).unwrap();
                bytes = text
                    .lines()
                    .filter(|l| {
                        !l.trim_start().starts_with("created:")
                            && !l.trim_start().starts_with("run_path:")
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    .into_bytes();
            }
            out.insert(rel, bytes);
        }
    }
    out
}

/// Names of the files whose bytes differ (or exist on one side only).
fn differing(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// A score run over the 48 documents of the resume fixture in small batches, three query
/// slices (three passes), the journal synced after every batch.
fn resumable_score(sb: &Sandbox, run: &str) -> Command {
    let mut cmd = bergson(&[
        "score",
        path_str(&sb.path(run)),
        "--query_path",
        path_str(query_index()),
        "--model",
        &fixture("models/gpt_neox"),
        "--dataset",
        &fixture("build/resume.jsonl"),
        "--projection_dim",
        "8",
        "--token_batch_size",
        "32",
        "--query_batch_size",
        "2",
        "--unit_normalize",
        "--quiet",
    ]);
    cmd.env("BERGSON_SYNC_SECONDS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_to_end(cmd: &mut Command) {
    assert_ok(&cmd.output().unwrap());
}

fn journal_lines(part: &Path) -> usize {
    fs::read_to_string(part.join("journal.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Waits until the journal of `child`'s run has `lines` lines, or the run ends.
fn wait_for_journal(child: &mut Child, part: &Path, lines: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while journal_lines(part) < lines
        && child.try_wait().unwrap().is_none()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

#[test]
fn killed_and_interrupted_score_runs_resume_to_identical_bytes() {
    let sb = Sandbox::new();
    run_to_end(&mut resumable_score(&sb, "reference"));
    let want = snapshot(&sb.path("reference"));
    assert!(want.contains_key("scores.bin") && want.contains_key("data.hf/state.json"));
    assert!(!want.contains_key("journal.jsonl"));

    // Kills at journal points spread over the three passes (the journal has a header line and
    // one line per durable batch), then a Ctrl-C.
    let mut resumed_mid_run = 0;
    for (round, (lines, sig)) in [(2, "-KILL"), (9, "-KILL"), (17, "-KILL"), (6, "-INT")]
        .into_iter()
        .enumerate()
    {
        let run = sb.path(&format!("run{round}"));
        let part = PathBuf::from(format!("{}.part", run.display()));
        let mut child = resumable_score(&sb, &format!("run{round}"))
            .spawn()
            .unwrap();
        wait_for_journal(&mut child, &part, lines);
        let t = Instant::now();
        signal(&child, sig);
        let status = child.wait().unwrap();
        if sig == "-INT" && !status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "Ctrl-C took {:?} to stop the run",
                t.elapsed()
            );
        }
        if status.success() || run.exists() {
            assert!(
                !part.exists(),
                "round {round}: both the run and its .part exist"
            );
            assert_eq!(differing(&snapshot(&run), &want), Vec::<String>::new());
            continue;
        }
        assert!(!run.exists(), "round {round}: a killed run looks finished");
        assert!(part.is_dir(), "round {round}: no .part to resume");
        if journal_lines(&part) > 1 {
            resumed_mid_run += 1;
        }
        run_to_end(&mut resumable_score(&sb, &format!("run{round}")));
        assert!(
            !part.exists(),
            "round {round}: .part left after the resumed run"
        );
        assert_eq!(
            differing(&snapshot(&run), &want),
            Vec::<String>::new(),
            "round {round}: resumed scores differ"
        );
    }
    assert!(
        resumed_mid_run >= 2,
        "only {resumed_mid_run} kills landed mid-run; the test exercised too little"
    );
}

/// Python, from `BERGSON_PY`.
fn python() -> PathBuf {
    PathBuf::from(std::env::var_os("BERGSON_PY").expect(
        "set BERGSON_PY to a Python with bergson 2.5.1 (e.g. /work/pyenv/bin/python) to run this test",
    ))
}

fn py_float(v: &serde_json::Value) -> f64 {
    let s = v.as_str().expect("floats are printed as strings");
    s.parse().unwrap_or_else(|_| panic!("bad float {s}"))
}

/// Python Bergson's `load_scores` / `load_scores_loss_signed` read stores we wrote: per
/// document (float32, several columns), per token, bf16, aggregated (only score_0 written) and
/// candidates.
#[test]
#[ignore = "needs Python Bergson (set BERGSON_PY)"]
fn python_reads_our_score_stores() {
    use bergson::index::score_store::ScoreStore;
    let py = python();
    let sb = Sandbox::new();
    let q = query_index();
    let earlier = sb.path("plain");
    let variants: Vec<(&str, Vec<String>)> = vec![
        ("plain", vec![]),
        ("tokens", vec!["--attribute_tokens".into()]),
        ("bf16", vec!["--score_cfg.precision".into(), "bf16".into()]),
        ("mean", vec!["--aggregation".into(), "mean".into()]),
        (
            "candidates",
            vec![
                "--scores".into(),
                path_str(&earlier).into(),
                "--top_k".into(),
                "2".into(),
            ],
        ),
    ];
    let mut dirs = Vec::new();
    for (name, extra) in &variants {
        // Rows 4.. of text.jsonl all have 2+ tokens, so every cell is written (and the plain run
        // can feed candidates).
        let mut extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        extra.extend(["--split", "train[4:]", "--quiet"]);
        assert_ok(&sb.score(q, &extra));
        let dir = sb.path(name);
        fs::rename(sb.path("run"), &dir).unwrap();
        dirs.push(dir);
    }
    let out = Command::new(&py)
        .arg(fixtures().join("scripts/describe_scores.py"))
        .args(&dirs)
        .output()
        .expect("cannot start BERGSON_PY");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The JSON is the last line: importing bergson may log to stdout first.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let described: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("describe_scores.py printed no JSON ({e}):\n{stdout}"));
    for (dir, d) in dirs.iter().zip(described.as_array().unwrap()) {
        let name = dir.file_name().unwrap().to_string_lossy();
        let store = ScoreStore::open(dir).unwrap();
        let (values, written) = store.values().unwrap();
        let cols = store.info.num_scores;
        assert_eq!(d["len"], store.info.num_items, "{name}: len");
        assert_eq!(d["num_scores"], cols, "{name}: num_scores");
        let py_values = d["values"].as_array().unwrap();
        assert_eq!(py_values.len(), store.info.num_rows, "{name}: rows");
        for (r, row) in py_values.iter().enumerate() {
            for (c, v) in row.as_array().unwrap().iter().enumerate() {
                assert_eq!(py_float(v), values[r * cols + c], "{name}: [{r}, {c}]");
                assert_eq!(
                    d["written"][r][c].as_bool().unwrap(),
                    written[r * cols + c],
                    "{name}: written [{r}, {c}]"
                );
            }
        }
        assert_eq!(
            d["is_written"].as_bool().unwrap(),
            written.iter().all(|&w| w),
            "{name}: is_written"
        );
        assert_eq!(
            d["offsets"],
            serde_json::to_value(store.offsets()).unwrap(),
            "{name}: offsets"
        );
        assert_eq!(
            d["candidates"],
            serde_json::to_value(store.candidates()).unwrap(),
            "{name}: candidates"
        );
        // Loss-signed: negated, since these runs say higher is better.
        let sum: f64 = values.iter().sum();
        let signed = py_float(&d["signed_sum"]);
        assert!(
            (signed + sum).abs() <= 1e-4 * sum.abs().max(1.0),
            "{name}: signed sum {signed}, ours {sum}"
        );
        assert_eq!(d["multi"].as_bool().unwrap(), cols > 1, "{name}: multi");
    }
    assert_eq!(described[1]["grid_shape"][0], 6, "tokens: to_grid docs");
    assert!(
        described[0]["is_written"].as_bool().unwrap(),
        "plain: every cell written"
    );
    assert!(
        !described[3]["is_written"].as_bool().unwrap(),
        "mean: only score_0 written"
    );
    assert!(described[4]["candidates"].as_array().is_some());
}
