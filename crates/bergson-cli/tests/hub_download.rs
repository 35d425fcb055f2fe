//! `bergson build --dataset org/name` through a local stand-in of the hub (HF_ENDPOINT), never
//! the real network: the index's rows are the split's rows read from the fixture repository
//! directly; a second, offline run reads the cache; Ctrl-C during a download stops at once and
//! leaves only a `.part` file, which the next run resumes; an unknown dataset is one error line.

#[path = "../../bergson/tests/hub_support/mod.rs"]
mod hub_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bergson::data::source::load_dataset_with;
use bergson::hub::HubSettings;
use bergson::index::hf_dataset::read_hf_dataset;
use hub_support::{hub_fixtures, model_fixture, StandIn};

/// `bergson build <dir>/<run> --model gpt_neox --dataset <dataset> ...` with the hub settings
/// only in the child's environment: `HF_HOME=<dir>/hf`, `HF_ENDPOINT=<endpoint>`.
fn build(dir: &Path, run: &str, endpoint: &str, dataset: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bergson"));
    cmd.current_dir(dir)
        .arg("build")
        .arg(run)
        .arg("--model")
        .arg(model_fixture("gpt_neox"))
        .args(["--dataset", dataset])
        .args(["--projection_dim", "4", "--token_batch_size", "64"])
        .args(extra)
        .env("HF_HOME", dir.join("hf"))
        .env("HF_ENDPOINT", endpoint)
        .env("OMP_NUM_THREADS", "1")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_DATASETS_OFFLINE")
        .env_remove("TRANSFORMERS_OFFLINE")
        .env_remove("HF_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[track_caller]
fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "bergson failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `(id, text)` pairs of a table.
fn id_text(batch: &arrow::record_batch::RecordBatch) -> Vec<(i64, String)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    let ids = batch.column_by_name("id").expect("id column");
    let ids = arrow::compute::cast(ids, &arrow::datatypes::DataType::Int64).unwrap();
    let ids = ids.as_primitive::<Int64Type>();
    let texts = arrow::compute::cast(
        batch.column_by_name("text").expect("text column"),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let texts = texts.as_string::<i32>();
    (0..batch.num_rows())
        .map(|i| {
            assert!(!ids.is_null(i));
            (ids.value(i), texts.value(i).to_string())
        })
        .collect()
}

#[test]
fn build_downloads_the_dataset_then_reads_it_offline() {
    let parquet = hub_fixtures().join("datasets/org/parquet-splits");
    let hub = StandIn::start(&[("datasets", "org/parquet-splits", &parquet)]);
    let dir = tempfile::tempdir().unwrap();
    let keep = ["--drop_columns", "false", "--quiet"];
    let out = build(
        dir.path(),
        "run",
        &hub.endpoint(),
        "org/parquet-splits",
        &keep,
    )
    .args(["--split", "test[:3]"])
    .output()
    .unwrap();
    succeeded(&out);
    // Only the test split's file (and README.md) came over.
    assert_eq!(
        hub.downloads(),
        ["README.md", "data/test-00000-of-00001.parquet"]
    );
    let want = load_dataset_with(
        parquet.to_str().unwrap(),
        "test[:3]",
        None,
        &HubSettings::cache_only("/nonexistent"),
    )
    .unwrap();
    let got = read_hf_dataset(&dir.path().join("run/data.hf")).unwrap();
    assert_eq!(id_text(&got), id_text(&want));
    assert_eq!(got.num_rows(), 3);
    let cached = dir
        .path()
        .join("hf/hub/datasets--org--parquet-splits/snapshots")
        .join(hub.sha("datasets", "org/parquet-splits"))
        .join("data/test-00000-of-00001.parquet");
    assert!(cached.is_symlink(), "{}", cached.display());

    // The hub is gone; offline, the same build reads the cache.
    let endpoint = hub.endpoint();
    drop(hub);
    let out = build(dir.path(), "again", &endpoint, "org/parquet-splits", &keep)
        .args(["--split", "test[:3]"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    succeeded(&out);
    let again = read_hf_dataset(&dir.path().join("again/data.hf")).unwrap();
    assert_eq!(id_text(&again), id_text(&want));
}

#[test]
fn unknown_dataset_is_one_error_line() {
    let hub = StandIn::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = build(dir.path(), "run", &hub.endpoint(), "org/absent", &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: dataset 'org/absent' was not found on the hub")
            && lines[0].contains(&format!("HF_ENDPOINT={}", hub.endpoint())),
        "{stderr}"
    );
    assert!(!dir.path().join("run").exists());
}

/// A repository whose train.jsonl is big enough to take seconds at a throttled rate.
fn big_repository(dir: &Path) -> PathBuf {
    let repo = dir.join("big");
    std::fs::create_dir_all(&repo).unwrap();
    let mut text = String::new();
    for i in 0..3000 {
        text.push_str(&format!(
            "{{\"id\": {i}, \"text\": \"document number {i} of a dataset that downloads slowly\"}}\n"
        ));
    }
    std::fs::write(repo.join("train.jsonl"), text).unwrap();
    repo
}

#[test]
fn ctrl_c_during_a_download_leaves_only_a_part_file_that_the_next_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = big_repository(dir.path());
    let size = std::fs::metadata(repo.join("train.jsonl")).unwrap().len();
    let hub = StandIn::start(&[("datasets", "org/big", &repo)]);
    // About ten seconds for the whole file.
    hub.throttle(size / 10);
    let mut child = build(dir.path(), "run", &hub.endpoint(), "org/big", &["--quiet"])
        .args(["--split", "train[:2]"])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while hub.bodies_started() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no download began"
        );
        assert!(child.try_wait().unwrap().is_none(), "bergson ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(700));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let interrupted = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            interrupted.elapsed() < Duration::from_secs(5),
            "Ctrl-C did not stop the download"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");

    // Nothing in the cache looks complete: no snapshot file, only a `.part` blob.
    let folder = dir.path().join("hf/hub/datasets--org--big");
    let snapshot = folder
        .join("snapshots")
        .join(hub.sha("datasets", "org/big"));
    assert!(!snapshot.join("train.jsonl").exists());
    let blobs: Vec<(String, u64)> = std::fs::read_dir(folder.join("blobs"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    let parts: Vec<&(String, u64)> = blobs.iter().filter(|(n, _)| n.ends_with(".part")).collect();
    assert_eq!(parts.len(), 1, "{blobs:?}");
    let partial = parts[0].1;
    assert!(partial > 0 && partial < size, "{partial} of {size}");
    assert!(
        blobs
            .iter()
            .all(|(n, _)| n.ends_with(".part") || n.ends_with(".lock")),
        "{blobs:?}"
    );

    // The next run resumes the `.part` where it stopped and builds.
    hub.throttle(0);
    hub.clear_log();
    let out = build(dir.path(), "run", &hub.endpoint(), "org/big", &["--quiet"])
        .args(["--split", "train[:2]"])
        .output()
        .unwrap();
    succeeded(&out);
    let downloads = hub.downloads();
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    let resumed_from: u64 = downloads[0]
        .strip_prefix("train.jsonl@bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a resumed download: {downloads:?}"));
    assert!(resumed_from >= partial, "{resumed_from} < {partial}");
    assert_eq!(
        std::fs::read(snapshot.join("train.jsonl")).unwrap(),
        std::fs::read(repo.join("train.jsonl")).unwrap()
    );
    let got = read_hf_dataset(&dir.path().join("run/data.hf")).unwrap();
    assert_eq!(got.num_rows(), 2);
}
