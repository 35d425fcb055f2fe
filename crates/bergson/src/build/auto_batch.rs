//! `--auto_batch_size`: Bergson 2.5.1's search for the largest token budget whose batches fit
//! in memory, and its cache of found budgets (`.cache/batch_size_cache.jsonl` under the
//! working directory).
//!
//! The search starts at the longest document, doubles up to
//! `max(longest, min(model's max length, total tokens))`, then bisects until the gap is at most
//! `max(256, budget / 16)`. A budget fits when the three heaviest batches it packs (most padded
//! tokens, most documents, most attention entries) run forward and backward. Bergson catches
//! only CUDA's out-of-memory error, so on a CPU every budget "fits" and the search ends at that
//! upper limit: we return it without running the probes, which gives the same budget.

use std::io::Write;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use serde_json::{json, Value};

use tch::Device;

use crate::collect::{CollectConfig, Collection, Documents, GradientProcessor};
use crate::config::BuildConfig;
use crate::data::batching::allocate_batches;
use crate::error::IoContext;
use crate::models::CausalLm;
use crate::{Error, Result};

/// Where Bergson caches found budgets, relative to the working directory.
pub const CACHE_PATH: &str = ".cache/batch_size_cache.jsonl";

/// Config fields that leave a run's memory unchanged (Bergson's `UNKEYED_FIELDS`).
const UNKEYED_FIELDS: &[&str] = &[
    "run_path",
    "overwrite",
    "token_batch_size",
    "auto_batch_size",
    "distributed",
    "debug",
    "profile",
];

/// The budgets Bergson's search tries: `(lower, upper limit)`, where `lower` is the longest
/// document and the limit `max(lower, min(max_len, total tokens))`.
pub fn search_range(lengths: &[usize], max_len: i64) -> (usize, usize) {
    let lo = lengths.iter().copied().max().unwrap_or(0);
    let total: usize = lengths.iter().sum();
    let capped = if max_len < 0 {
        0
    } else {
        (max_len as u64).min(total as u64) as usize
    };
    (lo, lo.max(capped))
}

/// Bergson's `determine_batch_size`: doubling from the longest document, then bisecting, with
/// `fits` saying whether a budget runs. The longest document must fit.
pub fn search(
    lengths: &[usize],
    max_len: i64,
    mut fits: impl FnMut(usize) -> Result<bool>,
) -> Result<usize> {
    let (mut lo, limit) = search_range(lengths, max_len);
    tracing::info!("determining token_batch_size in [{lo}, {limit}]");
    if !fits(lo)? {
        return Err(Error::input(format!(
            "--auto_batch_size: token_batch_size={lo}, the longest document, does not fit in memory; use --truncation or a smaller model"
        )));
    }
    let mut hi = None;
    while lo < limit {
        let candidate = (2 * lo).min(limit);
        if !fits(candidate)? {
            hi = Some(candidate);
            break;
        }
        lo = candidate;
    }
    while let Some(h) = hi {
        if h - lo <= 256.max(lo / 16) {
            break;
        }
        let mid = (lo + h) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = Some(mid);
        }
    }
    tracing::info!("optimal token_batch_size: {lo}");
    Ok(lo)
}

/// Bergson's `probe_batches`: of the batches budget `n` packs, the one with the most padded
/// tokens, the one with the most documents and the one with the most attention entries.
pub fn probe_batches(
    lengths: &[usize],
    n: usize,
    max_batch_size: Option<usize>,
) -> Result<Vec<Vec<usize>>> {
    let batches: Vec<Vec<usize>> = allocate_batches(lengths, n, max_batch_size, 1)?
        .into_iter()
        .flatten()
        .collect();
    let shape = |b: &[usize]| {
        let longest = b.iter().map(|&i| lengths[i]).max().unwrap_or(0) as u128;
        (b.len() as u128, longest)
    };
    // Python's max() keeps the first of equal keys.
    let first_max = |key: &dyn Fn(&[usize]) -> u128| -> Vec<usize> {
        let mut best: Option<(&Vec<usize>, u128)> = None;
        for b in &batches {
            let k = key(b);
            if best.is_none_or(|(_, bk)| k > bk) {
                best = Some((b, k));
            }
        }
        best.map(|(b, _)| b.clone()).unwrap_or_default()
    };
    Ok(vec![
        first_max(&|b| shape(b).0 * shape(b).1),
        first_max(&|b| shape(b).0),
        first_max(&|b| shape(b).0 * shape(b).1 * shape(b).1),
    ])
}

/// The cache key of a run: everything its memory depends on (the configs but the unkeyed
/// fields, the document lengths, the device). Keys are bergson-rs's own (its configs
/// serialise differently from Python's dataclasses), so the two tools share the file without
/// reading each other's rows.
pub fn cache_key(cfg: &BuildConfig, lengths: &[usize], device: &str) -> Result<Value> {
    let mut index = serde_json::to_value(&cfg.index_cfg)
        .map_err(|e| Error::internal(format!("cannot serialise the index config: {e}")))?;
    if let Value::Object(map) = &mut index {
        for field in UNKEYED_FIELDS {
            map.remove(*field);
        }
    }
    let preprocess = serde_json::to_value(&cfg.preprocess_cfg)
        .map_err(|e| Error::internal(format!("cannot serialise the preprocess config: {e}")))?;
    let configs = serde_json::to_string(&json!([index, preprocess]))
        .map_err(|e| Error::internal(e.to_string()))?;
    let length_bytes: Vec<u8> = lengths
        .iter()
        .flat_map(|&l| (l as i64).to_le_bytes())
        .collect();
    Ok(json!({
        "tool": "bergson-rs",
        "configs": hex(&Md5::digest(configs.as_bytes())),
        "lengths": hex(&Md5::digest(&length_bytes)),
        "world_size": 1,
        "device": device,
        "torch": "2.11.0",
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The JSONL cache of found budgets.
pub struct BatchSizeCache {
    path: PathBuf,
}

impl BatchSizeCache {
    /// The cache at `path` (Bergson's is [`CACHE_PATH`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BatchSizeCache { path: path.into() }
    }

    /// The latest budget cached under `key`; unreadable lines are skipped, as Bergson does.
    pub fn lookup(&self, key: &Value) -> Option<usize> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        text.lines()
            .rev()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|row| row.get("key") == Some(key))
            .find_map(|row| row.get("token_batch_size")?.as_u64())
            .map(|n| n as usize)
    }

    /// Appends `key -> n` (one line, so a crash leaves at worst one unreadable line).
    pub fn append(&self, key: &Value, n: usize) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).at_path(dir)?;
        }
        let line = json!({"key": key, "token_batch_size": n}).to_string();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .at_path(&self.path)?;
        writeln!(f, "{line}").at_path(&self.path)?;
        tracing::info!("cached batch size {n} to {}", self.path.display());
        Ok(())
    }

    /// Where the cache lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `--auto_batch_size`: the cached budget of this run's configs and lengths, else Bergson's
/// search ([`search`]), cached for the next run. On a CPU the search needs no probes.
pub(super) fn token_batch_size(
    cfg: &BuildConfig,
    model: &dyn CausalLm,
    docs: Documents<'_>,
    processor: &GradientProcessor,
    base: &CollectConfig,
    max_len: i64,
) -> Result<usize> {
    let lengths: Vec<usize> = docs.rows.iter().map(|r| r.len()).collect();
    let device = model.device();
    let device_name = match device {
        Device::Cpu => "cpu".to_string(),
        other => format!("{other:?}"),
    };
    let key = cache_key(cfg, &lengths, &device_name)?;
    let cache = BatchSizeCache::new(CACHE_PATH);
    if let Some(n) = cache.lookup(&key) {
        tracing::info!("loaded token_batch_size from cache: {n}");
        return Ok(n);
    }
    let n = search(&lengths, max_len, |n| {
        if device == Device::Cpu {
            // Bergson catches only CUDA's out-of-memory error: on a CPU every probe fits.
            return Ok(true);
        }
        let probe_cfg = CollectConfig {
            token_batch_size: n,
            ..base.clone()
        };
        let collection = Collection::new(model, docs, processor, &probe_cfg)?;
        for batch in probe_batches(&lengths, n, base.max_batch_size)? {
            // tch raises CUDA's out-of-memory as a panic: catch it quietly, as Bergson does.
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                collection.run_batch(docs, &batch)
            }));
            std::panic::set_hook(hook);
            let message = match run {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
            };
            if message.contains("out of memory") {
                return Ok(false);
            }
            return Err(Error::internal(format!(
                "--auto_batch_size probe at token_batch_size={n} failed: {message}"
            )));
        }
        Ok(true)
    })?;
    cache.append(&key, n)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_doubles_then_bisects_to_the_memory_limit() {
        let lengths = vec![100; 400]; // 40,000 tokens
        let mut tried = Vec::new();
        let n = search(&lengths, 100_000, |n| {
            tried.push(n);
            Ok(n <= 5_000)
        })
        .unwrap();
        // 100, 200, ..., 3200 fit, 6400 does not; bisect while the gap exceeds max(256, lo/16).
        assert_eq!(&tried[..7], &[100, 200, 400, 800, 1600, 3200, 6400]);
        assert!(n <= 5_000 && 5_000 - n <= 256.max(n / 16), "{n}");
    }

    #[test]
    fn without_a_memory_limit_the_search_ends_at_the_context_or_the_corpus() {
        let always = |_| Ok(true);
        assert_eq!(search(&[10, 30, 20], 2048, always).unwrap(), 60);
        assert_eq!(search(&[10, 3000, 20], 2048, always).unwrap(), 3000);
        assert_eq!(search(&vec![50; 100], 2048, always).unwrap(), 2048);
        assert_eq!(search(&[7, 9], i64::MAX, always).unwrap(), 16);
        assert_eq!(search_range(&vec![50; 100], 1000), (50, 1000));
    }

    #[test]
    fn a_longest_document_that_does_not_fit_is_one_line() {
        let e = search(&[10, 30], 2048, |_| Ok(false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_batch_size=30"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn probe_batches_pick_the_heaviest_by_each_measure() {
        // Budget 8: [5] alone, [3,3] (6 tokens padded), [2,2,2,2] (8 padded).
        let lengths = [5, 3, 3, 2, 2, 2, 2];
        let probes = probe_batches(&lengths, 8, None).unwrap();
        let sizes: Vec<usize> = probes.iter().map(Vec::len).collect();
        assert_eq!(sizes[1], 4, "{probes:?}"); // most documents
        let padded = |b: &Vec<usize>| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap();
        let best = probes[0].clone();
        let all = allocate_batches(&lengths, 8, None, 1).unwrap().concat();
        assert!(all.iter().all(|b| padded(b) <= padded(&best)));
    }

    #[test]
    fn the_cache_returns_the_latest_row_of_a_key_and_skips_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BatchSizeCache::new(dir.path().join(".cache/batch_size_cache.jsonl"));
        let key = json!({"configs": "a"});
        assert_eq!(cache.lookup(&key), None);
        cache.append(&key, 512).unwrap();
        cache.append(&json!({"configs": "b"}), 64).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(cache.path())
            .unwrap()
            .write_all(b"{not json\n")
            .unwrap();
        cache.append(&key, 1024).unwrap();
        assert_eq!(cache.lookup(&key), Some(1024));
        assert_eq!(cache.lookup(&json!({"configs": "b"})), Some(64));
    }
}
