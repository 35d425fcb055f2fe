//! Where a dataset comes from: Bergson's `load_data_string(dataset, split, subset)`. A local
//! file (`.jsonl`/`.json`/`.csv`, and `.parquet`/`.arrow`/`.tsv`) has one split, `train`; a
//! `save_to_disk` directory is read as saved (see [`crate::data::split::SplitTables`] for how the
//! split applies); any other directory, or a hub id (downloaded into the Hugging Face cache), is
//! a dataset repository whose files form splits and subsets as `datasets.load_dataset` decides.

use std::path::Path;

use arrow::record_batch::RecordBatch;

use crate::data::formats::{read_file, Format};
use crate::data::hub::{fetch_repo, resolve_repo, RepoSplits};
use crate::data::kwargs::DataKwargs;
use crate::data::split::{select_split, unknown_split, ReadInstruction, SplitTables};
use crate::hub::{is_repo_id, HubSettings};
use crate::index::hf_dataset::{read_hf_dataset, read_hf_dataset_dict};
use crate::{Error, Result};

/// Loads `dataset` and selects `split` (HF split syntax, e.g. `train[:100]`), as Bergson's
/// `load_data_string`. `subset` is the hub config name; local files ignore it. Hub datasets are
/// downloaded into the hub cache as the environment says ([`HubSettings::from_env`]).
pub fn load_dataset(dataset: &str, split: &str, subset: Option<&str>) -> Result<RecordBatch> {
    load_dataset_with(dataset, split, subset, &HubSettings::from_env())
}

/// [`load_dataset`] reading hub datasets from the hub cache `hub_cache` only (no network).
pub fn load_dataset_with_cache(
    dataset: &str,
    split: &str,
    subset: Option<&str>,
    hub_cache: &Path,
) -> Result<RecordBatch> {
    load_dataset_with(dataset, split, subset, &HubSettings::cache_only(hub_cache))
}

/// [`load_dataset`] with explicit hub settings.
pub fn load_dataset_with(
    dataset: &str,
    split: &str,
    subset: Option<&str>,
    hub: &HubSettings,
) -> Result<RecordBatch> {
    load_dataset_with_kwargs(dataset, split, subset, hub, &DataKwargs::default())
}

/// [`load_dataset`] with Bergson's `--data_kwargs` text (see [`DataKwargs`]).
pub fn load_dataset_kwargs(
    dataset: &str,
    split: &str,
    subset: Option<&str>,
    data_kwargs: &str,
) -> Result<RecordBatch> {
    let kwargs = DataKwargs::parse(data_kwargs)?;
    load_dataset_with_kwargs(dataset, split, subset, &HubSettings::from_env(), &kwargs)
}

/// [`load_dataset`] with explicit hub settings and `load_dataset` keywords, which reach only a
/// dataset repository (a hub id or a directory of data files), as in Bergson.
pub fn load_dataset_with_kwargs(
    dataset: &str,
    split: &str,
    subset: Option<&str>,
    hub: &HubSettings,
    kwargs: &DataKwargs,
) -> Result<RecordBatch> {
    let tables = open_dataset(dataset, split, subset, hub, kwargs)?;
    let batch = select_split(&tables, split)?;
    if batch.num_rows() == 0 {
        return Err(Error::input(format!(
            "--split '{split}' selects no rows of dataset '{dataset}'; widen the slice or pick \
             another split"
        )));
    }
    Ok(batch)
}

/// The tables `dataset` offers, before the split is applied. Only the splits `split` names are
/// read from a repository.
pub fn open_dataset(
    dataset: &str,
    split: &str,
    subset: Option<&str>,
    hub: &HubSettings,
    kwargs: &DataKwargs,
) -> Result<SplitTables> {
    let path = Path::new(dataset);
    // Bergson checks the json/csv extensions before anything else (so `x.json/` as a directory
    // name is still read as a file); then save_to_disk directories.
    let by_extension = Format::of(path).filter(|f| matches!(f, Format::Json | Format::Csv));
    if let Some(format) = by_extension {
        return single_file(path, format);
    }
    if path.is_dir()
        && path.join("dataset_info.json").is_file()
        && path.join("state.json").is_file()
    {
        return Ok(SplitTables::DiskDataset(nonempty(
            dataset,
            read_hf_dataset(path)?,
        )?));
    }
    if path.is_dir() && path.join("dataset_dict.json").is_file() {
        return Ok(SplitTables::DiskDict(read_hf_dataset_dict(path)?));
    }
    if path.is_dir() && path.join("dataset_info.json").is_file() {
        return Err(Error::input(format!(
            "'{dataset}' looks like a save_to_disk directory but has no state.json; save it again \
             with Dataset.save_to_disk"
        )));
    }
    if let Some(format) = Format::of(path).filter(|_| !path.is_dir()) {
        return single_file(path, format);
    }
    if path.is_dir() {
        let repo = resolve_repo(path, subset, dataset, kwargs)?;
        return read_repo_splits(dataset, &repo, split);
    }
    if path.is_file() {
        // Bergson would look this name up on the Hub; say what is wrong with the file instead.
        let ext = path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_else(|| "no extension".into());
        return Err(Error::input(format!(
            "dataset '{dataset}' is a file of a type bergson cannot read ({ext}); convert it to \
             .jsonl, .json, .csv, .tsv, .parquet or .arrow (e.g. one {{\"text\": ...}} object per \
             line in a .jsonl file)"
        )));
    }
    if looks_like_path(dataset) || !is_repo_id(dataset) {
        return Err(Error::input(format!(
            "dataset '{dataset}' does not exist: no such file or directory, and it is not a hub id \
             (org/name); pass a .jsonl/.json/.csv/.parquet/.arrow file, a save_to_disk directory \
             or a hub dataset id"
        )));
    }
    let repo = fetch_repo(dataset, subset, split, hub, kwargs)?;
    read_repo_splits(dataset, &repo, split)
}

fn looks_like_path(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('/') || name.starts_with('~') || name.contains('\\')
}

fn single_file(path: &Path, format: Format) -> Result<SplitTables> {
    let batch = read_file(path, format)?;
    Ok(SplitTables::Builder(vec![(
        "train".to_string(),
        nonempty(&path.display().to_string(), batch)?,
    )]))
}

fn nonempty(shown: &str, batch: RecordBatch) -> Result<RecordBatch> {
    if batch.num_rows() == 0 {
        return Err(Error::input(format!(
            "dataset '{shown}' holds no rows; add at least one record (for JSON Lines, one JSON \
             object per line)"
        )));
    }
    Ok(batch)
}

/// Reads the splits of a repository that the split spec names (all files of each, concatenated).
fn read_repo_splits(shown: &str, repo: &RepoSplits, split: &str) -> Result<SplitTables> {
    let instruction = ReadInstruction::from_spec(split)?;
    let available = || repo.splits.iter().map(|(name, _)| name.as_str());
    let mut loaded: Vec<(String, RecordBatch)> = Vec::new();
    for part in &instruction.parts {
        if loaded.iter().any(|(name, _)| *name == part.split) {
            continue;
        }
        let (_, files) = repo
            .splits
            .iter()
            .find(|(name, _)| *name == part.split)
            .ok_or_else(|| unknown_split(&part.split, available()))?;
        let tables = files
            .iter()
            .map(|f| read_file(f, repo.format))
            .collect::<Result<Vec<_>>>()?;
        let schema = tables[0].schema();
        let batch = arrow::compute::concat_batches(&schema, &tables).map_err(|e| {
            Error::input(format!(
                "dataset '{shown}': the files of split '{}' have different columns or types ({e}); \
                 make them agree",
                part.split
            ))
        })?;
        loaded.push((part.split.clone(), batch));
    }
    Ok(SplitTables::Builder(loaded))
}
