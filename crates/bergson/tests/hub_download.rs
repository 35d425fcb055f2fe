//! Hub datasets (and models) downloaded through a local stand-in of the hub (tests/hub_support):
//! only the files the split and subset need are fetched, into huggingface_hub's cache layout;
//! the tables equal those read from the fixture repositories directly (the local-directory
//! route, itself checked against Python in data_sources.rs); offline and failure modes give
//! one-line errors. Never the real network: settings are passed explicitly.

mod data_support;
mod hub_support;

use std::path::{Path, PathBuf};

use bergson::data::source::load_dataset_with;
use bergson::hub::HubSettings;
use data_support::{rows, same};
use hub_support::{hub_fixtures, model_fixture, StandIn};
use serde_json::Value;

fn dataset_dir(name: &str) -> PathBuf {
    hub_fixtures().join("datasets/org").join(name)
}

/// The stand-in serving every fixture dataset repository and the gpt_neox model.
fn stand_in() -> StandIn {
    let parquet = dataset_dir("parquet-splits");
    let configs = dataset_dir("configs");
    let jsonl = dataset_dir("jsonl");
    let neox = model_fixture("gpt_neox");
    StandIn::start(&[
        ("datasets", "org/parquet-splits", &parquet),
        ("datasets", "org/configs", &configs),
        ("datasets", "org/jsonl", &jsonl),
        ("models", "org/tiny-neox", &neox),
    ])
}

/// Online settings: the stand-in as endpoint, `cache` as the hub cache, no token.
fn online(hub: &StandIn, cache: &Path) -> HubSettings {
    HubSettings {
        offline: false,
        datasets_offline: false,
        endpoint: Some(hub.endpoint()),
        ..HubSettings::cache_only(cache)
    }
}

/// The rows of `name` read from the fixture repository directory itself.
fn local_rows(name: &str, split: &str, subset: Option<&str>) -> Vec<Value> {
    let dir = dataset_dir(name);
    let batch = load_dataset_with(
        dir.to_str().unwrap(),
        split,
        subset,
        &HubSettings::cache_only("/nonexistent"),
    )
    .unwrap();
    rows(&batch)
}

fn hub_rows(settings: &HubSettings, id: &str, split: &str, subset: Option<&str>) -> Vec<Value> {
    let batch = load_dataset_with(id, split, subset, settings)
        .unwrap_or_else(|e| panic!("{id} {split} {subset:?}: {e}"));
    rows(&batch)
}

#[track_caller]
fn assert_rows(ours: &[Value], theirs: &[Value]) {
    assert!(
        !theirs.is_empty()
            && ours.len() == theirs.len()
            && ours.iter().zip(theirs).all(|(a, b)| same(a, b)),
        "rows differ\nhub:   {ours:?}\nlocal: {theirs:?}"
    );
}

#[track_caller]
fn user_error(result: bergson::Result<arrow::record_batch::RecordBatch>) -> String {
    let err = result.expect_err("must fail");
    assert!(err.is_user_error(), "{err}");
    let message = err.to_string();
    assert!(!message.contains('\n'), "multi-line error: {message}");
    message
}

#[test]
fn parquet_splits_fetch_only_the_needed_files_into_the_hub_cache_layout() {
    let hub = stand_in();
    let cache = tempfile::tempdir().unwrap();
    let settings = online(&hub, cache.path());
    let id = "org/parquet-splits";
    let ours = hub_rows(&settings, id, "test[:3]", None);
    assert_rows(&ours, &local_rows("parquet-splits", "test[:3]", None));
    assert_eq!(ours.len(), 3);
    assert_eq!(
        hub.downloads(),
        ["README.md", "data/test-00000-of-00001.parquet"]
    );

    // huggingface_hub's layout: refs/main names the commit, the snapshot links into blobs/.
    let sha = hub.sha("datasets", id);
    let folder = cache.path().join("datasets--org--parquet-splits");
    let main = std::fs::read_to_string(folder.join("refs/main")).unwrap();
    assert_eq!(main.trim(), sha);
    let snapshot = folder.join("snapshots").join(&sha);
    let link = snapshot.join("data/test-00000-of-00001.parquet");
    assert!(link.is_symlink(), "{} is not a link", link.display());
    let blob = std::fs::canonicalize(&link).unwrap();
    assert_eq!(
        blob.parent().unwrap(),
        folder.join("blobs").canonicalize().unwrap()
    );
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        std::fs::read(dataset_dir("parquet-splits").join("data/test-00000-of-00001.parquet"))
            .unwrap()
    );
    assert!(!snapshot.join("data/train-00000-of-00002.parquet").exists());
    assert!(!snapshot.join(".gitattributes").exists());

    // Both train shards, then nothing new for a split already cached (only the listing).
    hub.clear_log();
    let train = hub_rows(&settings, id, "train", None);
    assert_rows(&train, &local_rows("parquet-splits", "train", None));
    assert_eq!(train.len(), 11);
    assert_eq!(
        hub.downloads(),
        [
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet"
        ]
    );
    hub.clear_log();
    let again = hub_rows(&settings, id, "test[1:]+train[:2]", None);
    assert_rows(
        &again,
        &local_rows("parquet-splits", "test[1:]+train[:2]", None),
    );
    assert_eq!(hub.downloads(), Vec::<String>::new());
    let requests = hub.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0]
        .target
        .contains("/api/datasets/org/parquet-splits/revision/main"));
}

#[test]
fn readme_configs_pick_the_subset_and_its_files() {
    let hub = stand_in();
    let cache = tempfile::tempdir().unwrap();
    let settings = online(&hub, cache.path());
    let fr = hub_rows(&settings, "org/configs", "train", Some("fr"));
    assert_rows(&fr, &local_rows("configs", "train", Some("fr")));
    assert_eq!(fr.len(), 5);
    assert_eq!(
        hub.downloads(),
        ["README.md", "fr/part-a.jsonl", "fr/part-b.jsonl"]
    );
    // The default subset (`default: true`) without --subset.
    hub.clear_log();
    let en = hub_rows(&settings, "org/configs", "test", None);
    assert_rows(&en, &local_rows("configs", "test", None));
    assert_eq!(hub.downloads(), ["en/test.jsonl"]);
    let e = user_error(load_dataset_with(
        "org/configs",
        "train",
        Some("de"),
        &settings,
    ));
    assert!(
        e.contains("no subset 'de'") && e.contains("available subsets: en, fr"),
        "{e}"
    );
}

#[test]
fn jsonl_repository_splits_by_file_name() {
    let hub = stand_in();
    let cache = tempfile::tempdir().unwrap();
    let settings = online(&hub, cache.path());
    let ours = hub_rows(&settings, "org/jsonl", "train[2:5]", None);
    assert_rows(&ours, &local_rows("jsonl", "train[2:5]", None));
    assert_eq!(hub.downloads(), ["train.jsonl"]);
    let e = user_error(load_dataset_with(
        "org/jsonl",
        "validation",
        None,
        &settings,
    ));
    assert!(e.contains("available splits: train, test"), "{e}");
    // An unknown split downloads nothing.
    assert_eq!(hub.downloads(), ["train.jsonl"]);
}

#[test]
fn a_warm_cache_serves_offline_and_without_the_hub() {
    let cache = tempfile::tempdir().unwrap();
    let endpoint;
    {
        let hub = stand_in();
        endpoint = hub.endpoint();
        hub_rows(
            &online(&hub, cache.path()),
            "org/parquet-splits",
            "test",
            None,
        );
        hub_rows(
            &online(&hub, cache.path()),
            "org/configs",
            "train",
            Some("fr"),
        );
    }
    // The stand-in is gone: offline reads the cache ...
    let offline = HubSettings {
        endpoint: Some(endpoint.clone()),
        ..HubSettings::cache_only(cache.path())
    };
    let want = local_rows("parquet-splits", "test[:2]", None);
    assert_rows(
        &hub_rows(&offline, "org/parquet-splits", "test[:2]", None),
        &want,
    );
    assert_rows(
        &hub_rows(&offline, "org/configs", "train", Some("fr")),
        &local_rows("configs", "train", Some("fr")),
    );
    // ... and so does an online run that cannot reach the hub (with a warning).
    let unreachable = HubSettings {
        offline: false,
        datasets_offline: false,
        ..offline.clone()
    };
    assert_rows(
        &hub_rows(&unreachable, "org/parquet-splits", "test[:2]", None),
        &want,
    );
    // A split that was never downloaded is not there offline.
    let e = user_error(load_dataset_with(
        "org/parquet-splits",
        "train",
        None,
        &offline,
    ));
    assert!(
        e.contains("'train'")
            && e.contains("not in the hub cache")
            && e.contains("available splits: test")
            && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
    let e = user_error(load_dataset_with(
        "org/parquet-splits",
        "train",
        None,
        &unreachable,
    ));
    assert!(
        e.contains("could not be reached") && e.contains(&endpoint),
        "{e}"
    );
}

#[test]
fn a_partly_cached_sharded_split_is_refused_offline() {
    let hub = stand_in();
    let cache = tempfile::tempdir().unwrap();
    hub_rows(
        &online(&hub, cache.path()),
        "org/parquet-splits",
        "train",
        None,
    );
    // As if the download had stopped after the first of the two shards.
    let sha = hub.sha("datasets", "org/parquet-splits");
    let snapshot = cache
        .path()
        .join("datasets--org--parquet-splits/snapshots")
        .join(sha);
    std::fs::remove_file(snapshot.join("data/train-00001-of-00002.parquet")).unwrap();
    let e = user_error(load_dataset_with(
        "org/parquet-splits",
        "train",
        None,
        &HubSettings::cache_only(cache.path()),
    ));
    assert!(
        e.contains("only partly in the hub cache (1 of 2 shards)"),
        "{e}"
    );
    // Online, the missing shard is fetched again.
    hub.clear_log();
    let train = hub_rows(
        &online(&hub, cache.path()),
        "org/parquet-splits",
        "train",
        None,
    );
    assert_eq!(train.len(), 11);
    assert_eq!(hub.downloads(), ["data/train-00001-of-00002.parquet"]);
}

#[test]
fn a_file_shorter_than_listed_is_removed_and_reported() {
    let hub = stand_in();
    let cache = tempfile::tempdir().unwrap();
    let settings = online(&hub, cache.path());
    hub.cut_files_to(100);
    let e = user_error(load_dataset_with("org/jsonl", "train", None, &settings));
    assert!(
        e.contains("train.jsonl arrived with 100 of its") && e.contains("dataset 'org/jsonl'"),
        "{e}"
    );
    let snapshot = cache
        .path()
        .join("datasets--org--jsonl/snapshots")
        .join(hub.sha("datasets", "org/jsonl"));
    assert!(!snapshot.join("train.jsonl").exists());
    let blobs: Vec<_> = std::fs::read_dir(cache.path().join("datasets--org--jsonl/blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
    // Whole again: the next run downloads it.
    hub.cut_files_to(0);
    assert_rows(
        &hub_rows(&settings, "org/jsonl", "train", None),
        &local_rows("jsonl", "train", None),
    );
}

#[test]
fn cold_cache_offline_and_unknown_repositories_say_what_to_do() {
    let hub = stand_in();
    let cache = tempfile::tempdir().unwrap();
    let offline = HubSettings::cache_only(cache.path());
    let e = user_error(load_dataset_with(
        "org/parquet-splits",
        "train",
        None,
        &offline,
    ));
    assert!(
        e.contains("'org/parquet-splits'")
            && e.contains("not in the Hugging Face cache")
            && e.contains("HF_HUB_OFFLINE")
            && e.contains("hf download org/parquet-splits --repo-type dataset"),
        "{e}"
    );
    assert!(hub.requests().is_empty(), "offline reached the hub");

    let settings = online(&hub, cache.path());
    let e = user_error(load_dataset_with("org/absent", "train", None, &settings));
    assert!(
        e.contains("dataset 'org/absent' was not found on the hub")
            && e.contains(&format!("HF_ENDPOINT={}", hub.endpoint()))
            && e.contains("HF_TOKEN"),
        "{e}"
    );
    // No hub at all (a refused connection: no network needed) and nothing cached.
    let nowhere = HubSettings {
        endpoint: Some("http://127.0.0.1:9".into()),
        ..settings.clone()
    };
    let e = user_error(load_dataset_with("org/jsonl", "train", None, &nowhere));
    assert!(
        e.contains("not in the hub cache")
            && e.contains("could not be reached")
            && e.contains("HF_ENDPOINT=http://127.0.0.1:9"),
        "{e}"
    );
    assert!(
        !cache.path().join("datasets--org--absent").exists(),
        "a failed look-up left a cache folder"
    );
}

#[test]
fn models_and_tokenizers_download_through_the_same_hub() {
    use bergson::models::hub::{resolve_tokenizer_with, resolve_with};
    let hub = stand_in();
    let cache = tempfile::tempdir().unwrap();
    let settings = online(&hub, cache.path());
    let dir = resolve_with("org/tiny-neox", None, &settings).unwrap();
    let fixture = model_fixture("gpt_neox");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(dir.join(file)).unwrap(),
            std::fs::read(fixture.join(file)).unwrap(),
            "{file}"
        );
    }
    let mut fetched = hub.downloads();
    fetched.sort();
    let mut listed: Vec<String> = std::fs::read_dir(&fixture)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n == "config.json"
                || n == "model.safetensors"
                || n.starts_with("tokenizer")
                || n == "special_tokens_map.json"
                || n == "generation_config.json"
        })
        .collect();
    listed.sort();
    assert_eq!(fetched, listed, "only the checkpoint's files are fetched");
    // Cached now: neither lookup reaches the hub.
    hub.clear_log();
    assert_eq!(resolve_with("org/tiny-neox", None, &settings).unwrap(), dir);
    assert_eq!(
        resolve_tokenizer_with("org/tiny-neox", &settings).unwrap(),
        dir
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    let e = resolve_with("org/absent", None, &settings)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model org/absent (revision main) was not found on the hub"),
        "{e}"
    );
    let e = resolve_with("org/tiny-neox", Some("v9"), &settings)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such revision"), "{e}");
}

/// Python Bergson's `load_data_string` against the same stand-in: the same rows (and the files
/// it downloads, printed), and the hub cache it fills serves bergson-rs offline. Run with
/// `BERGSON_PYTHON=/work/pyenv/bin/python cargo test --workspace --test hub_download -- --ignored --nocapture`.
#[test]
#[ignore = "needs Python Bergson (set BERGSON_PYTHON to its python)"]
fn python_bergson_reads_the_same_rows_from_the_stand_in() {
    let python = std::env::var("BERGSON_PYTHON").expect("set BERGSON_PYTHON");
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("org/parquet-splits", "test[:3]", None),
        ("org/parquet-splits", "train", None),
        ("org/configs", "train", Some("fr")),
        ("org/configs", "test", None),
        ("org/jsonl", "train[2:5]", None),
    ];
    let script = r#"
import json, sys
from bergson.data import load_data_string
dataset, split, subset = sys.argv[1], sys.argv[2], (sys.argv[3] or None)
ds = load_data_string(dataset, split, subset)
print("ROWS " + json.dumps(ds.to_list()))
"#;
    for (id, split, subset) in cases {
        let hub = stand_in();
        let home = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(&python)
            .args(["-c", script, id, split, subset.unwrap_or("")])
            .env("HF_ENDPOINT", hub.endpoint())
            .env("HF_HOME", home.path())
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_DATASETS_OFFLINE")
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{id} {split}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ROWS "))
            .unwrap_or_else(|| panic!("{id} {split}: no rows in {stdout}"));
        let theirs: Vec<Value> = serde_json::from_str(line).unwrap();
        eprintln!(
            "python {id} {split} {subset:?}: {} rows; downloaded {:?}; requests {:?}",
            theirs.len(),
            hub.downloads(),
            hub.requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.target))
                .collect::<Vec<_>>()
        );
        let cache = tempfile::tempdir().unwrap();
        let ours = hub_rows(&online(&hub, cache.path()), id, split, *subset);
        assert_rows(&ours, &theirs);
        // The hub cache Python filled serves bergson-rs offline.
        let python_cache = HubSettings::cache_only(home.path().join("hub"));
        assert_rows(&hub_rows(&python_cache, id, split, *subset), &theirs);
    }
}

/// `--data_kwargs` on a hub dataset: `data_files` downloads and reads only the files it names
/// (as the `train` split), `revision` reads the commit it names, an unknown revision fails in
/// one line, and offline the pinned commit is read from the cache.
#[test]
fn data_kwargs_pick_files_and_revisions_on_the_hub() {
    use bergson::data::kwargs::DataKwargs;
    use bergson::data::source::load_dataset_with_kwargs;
    let hub = stand_in();
    let cache = tempfile::tempdir().unwrap();
    let settings = online(&hub, cache.path());
    let id = "org/parquet-splits";
    let kwargs = DataKwargs::parse("data_files=data/test-00000-of-00001.parquet").unwrap();
    let batch = load_dataset_with_kwargs(id, "train[:3]", None, &settings, &kwargs).unwrap();
    assert_rows(
        &rows(&batch),
        &local_rows("parquet-splits", "test[:3]", None),
    );
    assert_eq!(
        hub.downloads(),
        ["README.md", "data/test-00000-of-00001.parquet"]
    );

    let sha = hub.sha("datasets", id);
    let pinned = DataKwargs::parse(&format!("revision={sha}")).unwrap();
    let batch = load_dataset_with_kwargs(id, "test", None, &settings, &pinned).unwrap();
    assert_rows(&rows(&batch), &local_rows("parquet-splits", "test", None));
    let offline = HubSettings {
        offline: true,
        datasets_offline: true,
        ..settings.clone()
    };
    let batch = load_dataset_with_kwargs(id, "test", None, &offline, &pinned).unwrap();
    assert_eq!(
        batch.num_rows(),
        local_rows("parquet-splits", "test", None).len()
    );

    let unknown = DataKwargs::parse("revision=v9").unwrap();
    let e = user_error(load_dataset_with_kwargs(
        id, "test", None, &settings, &unknown,
    ));
    assert!(e.contains("org/parquet-splits"), "{e}");
}
