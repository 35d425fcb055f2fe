//! Measures approximate search (FAISS) against the exact search on a synthetic index: recall@k,
//! build time, search time and peak memory (docs/query.md, "Approximate search (FAISS)").
//! Each step runs in its own process so its peak memory is its own.
//!
//! ```text
//! cargo run --release --features faiss -p bergson --example ann_recall -- gen DIR ROWS DIM
//! cargo run ... -- exact DIR K
//! cargo run ... -- build DIR FACTORY [MAX_TRAIN]
//! cargo run ... -- search DIR FACTORY NPROBE MMAP K
//! ```
//! `scripts/bench-faiss.sh` runs the table's settings.
//!
//! `gen` writes a float16 gradient index of `ROWS` rows (one module `grads` of `DIM` columns) and
//! 100 held-out query rows from the same distribution: a random 16-dimensional latent mapped
//! linearly to `DIM` columns, plus isotropic noise of half the signal's norm. Gradients are
//! far from isotropic (a few directions carry most of their norm); this gives the search a
//! continuum of near neighbours without clusters that would make IVF trivially exact. Recall
//! on real gradients depends on their structure. All searches are cosine (`unit_norm`, as
//! `bergson query`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use bergson::config::FaissConfig;
use bergson::index::{GradientFile, IndexInfo};
use bergson::query::{Attributor, AttributorOptions};
use bergson::{Error, Result};
use tch::{Device, Kind, Tensor};

const QUERIES: i64 = 100;
const LATENT: i64 = 16;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> Result<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| Error::input("missing argument; see the example's doc comment"))
    };
    let num = |i: usize| -> Result<usize> {
        arg(i)?
            .parse()
            .map_err(|_| Error::input(format!("argument {i} is not a number")))
    };
    let dir = PathBuf::from(arg(1)?);
    match arg(0)? {
        "gen" => generate(&dir, num(2)?, num(3)?),
        "exact" => exact(&dir, num(2)?),
        "build" => build(
            &dir,
            arg(2)?,
            args.get(3).map(|s| s.parse().unwrap_or(usize::MAX)),
        ),
        "search" => search(&dir, arg(2)?, num(3)?, arg(4)? == "true", num(5)?),
        other => Err(Error::input(format!("unknown step {other}"))),
    }
}

fn generate(dir: &Path, rows: usize, dim: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    tch::manual_seed(20251203);
    let opts = (Kind::Float, Device::Cpu);
    // Unit variance per column from the latent, a quarter from the noise.
    let mixing = Tensor::randn([LATENT, dim as i64], opts) / (LATENT as f64).sqrt();
    let draw = |n: i64| {
        Tensor::randn([n, LATENT], opts).matmul(&mixing)
            + Tensor::randn([n, dim as i64], opts) * 0.5
    };
    let file = GradientFile::create(dir, rows, dim, Kind::Half, false)?;
    let batch = 8192;
    for start in (0..rows).step_by(batch) {
        let n = batch.min(rows - start) as i64;
        file.write_rows(start, &draw(n).to_kind(Kind::Half))?;
    }
    file.sync()?;
    IndexInfo {
        attribute_tokens: false,
        num_items: rows,
        num_grads: rows,
        grad_sizes: vec![("grads".into(), dim)],
        base_dtype: "float16".into(),
    }
    .write(dir)?;
    let q = Vec::<f32>::try_from(draw(QUERIES).view([-1]))?;
    let bytes: Vec<u8> = q.iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = dir.join("queries.f32");
    std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))
}

fn queries(dir: &Path, dim: usize) -> Result<Vec<(String, Tensor)>> {
    let path = dir.join("queries.f32");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let v: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(vec![(
        "grads".into(),
        Tensor::from_slice(&v).reshape([-1, dim as i64]),
    )])
}

fn open(dir: &Path, faiss: Option<FaissConfig>) -> Result<Attributor> {
    Attributor::open(
        dir,
        AttributorOptions {
            unit_norm: true,
            faiss,
            ..AttributorOptions::default()
        },
    )
}

/// Peak resident memory of this process (`VmHWM`), in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn exact(dir: &Path, k: usize) -> Result<()> {
    let a = open(dir, None)?;
    let q = queries(dir, a.index().row_len())?;
    // The first search also computes and caches the row norms: time the second.
    a.search(&q, Some(k), None, false)?;
    let start = Instant::now();
    let hits = a.search(&q, Some(k), None, false)?;
    let secs = start.elapsed().as_secs_f64();
    let rows = Vec::<i64>::try_from(hits.indices.view([-1]))?;
    let text = serde_json::to_string(&rows).map_err(|e| Error::internal(e.to_string()))?;
    let path = dir.join(format!("exact_top{k}.json"));
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    println!(
        "{{\"step\": \"exact\", \"search_ms_per_query\": {:.3}, \"peak_mib\": {:.0}}}",
        secs * 1e3 / QUERIES as f64,
        peak_mib()
    );
    Ok(())
}

fn faiss_config(factory: &str, nprobe: usize, mmap: bool, max_train: Option<usize>) -> FaissConfig {
    FaissConfig {
        index_factory: factory.into(),
        nprobe,
        mmap_index: mmap,
        max_train_examples: max_train,
        ..FaissConfig::default()
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn build(dir: &Path, factory: &str, max_train: Option<usize>) -> Result<()> {
    let start = Instant::now();
    let a = open(dir, Some(faiss_config(factory, 1, false, max_train)))?;
    let secs = start.elapsed().as_secs_f64();
    let ann = a
        .ann_index()
        .ok_or_else(|| Error::internal("no FAISS index"))?;
    println!(
        "{{\"step\": \"build\", \"factory\": \"{factory}\", \"build_s\": {secs:.1}, \"peak_mib\": {:.0}, \"disk_mib\": {:.1}}}",
        peak_mib(),
        dir_size(ann.dir()) as f64 / (1 << 20) as f64
    );
    Ok(())
}

fn search(dir: &Path, factory: &str, nprobe: usize, mmap: bool, k: usize) -> Result<()> {
    let start = Instant::now();
    let a = open(dir, Some(faiss_config(factory, nprobe, mmap, None)))?;
    let open_s = start.elapsed().as_secs_f64();
    let q = queries(dir, a.index().row_len())?;
    // One query at a time, as `bergson query` asks them.
    let start = Instant::now();
    let mut found = Vec::new();
    for i in 0..QUERIES {
        let one: Vec<(String, Tensor)> = q
            .iter()
            .map(|(n, t)| (n.clone(), t.narrow(0, i, 1)))
            .collect();
        let hits = a.search(&one, Some(k), None, false)?;
        found.extend(Vec::<i64>::try_from(hits.indices.view([-1]))?);
    }
    let secs = start.elapsed().as_secs_f64();
    let path = dir.join(format!("exact_top{k}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let exact: Vec<i64> =
        serde_json::from_str(&text).map_err(|e| Error::internal(e.to_string()))?;
    let hit = exact
        .chunks(k)
        .zip(found.chunks(k))
        .map(|(e, f)| e.iter().filter(|r| f.contains(r)).count())
        .sum::<usize>();
    println!(
        "{{\"step\": \"search\", \"factory\": \"{factory}\", \"nprobe\": {nprobe}, \"mmap\": {mmap}, \"recall\": {:.3}, \"open_s\": {open_s:.2}, \"search_ms_per_query\": {:.3}, \"peak_mib\": {:.0}}}",
        hit as f64 / exact.len() as f64,
        secs * 1e3 / QUERIES as f64,
        peak_mib()
    );
    Ok(())
}
