//! `bergson build`: the whole pipeline from a [`BuildConfig`] to a finished index directory,
//! with Bergson 2.5.1's files and layouts (see `docs/index-format.md`).

pub mod auto_batch;
mod rows;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use md5::{Digest, Md5};
use tch::{Device, Kind};

pub use crate::data::pipeline::{prepare_data, PreparedData};

use crate::collect::{BatchTimings, CollectConfig, Collection, Documents};
use crate::config::run_file::{config_yaml, Step};
use crate::config::{Aggregation, BuildConfig};
use crate::data::columns::{add_column, drop_columns};
use crate::dist::{Collective, ReduceOp, SingleProcess};
use crate::error::IoContext;
use crate::hessians::preconditioner;
use crate::index::hf_dataset::write_hf_dataset;
use crate::index::reader::write_offsets;
use crate::index::{GradientFile, IndexInfo};
use crate::models::CausalLm;
use crate::units::human_bytes;
use crate::{pickle, setup, Error, Result};

use crate::index::journal::{self, Entry, Header, Journal};
use crate::index::run_dir::{self, Start};
use crate::progress::Progress;
use rows::RowSink;

/// How to run a build (not part of the saved config).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the model runs.
    pub device: Device,
    /// No progress output.
    pub quiet: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            device: Device::Cpu,
            quiet: true,
        }
    }
}

/// What a finished build did.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    /// The index directory.
    pub run_path: PathBuf,
    /// Documents in the index.
    pub documents: usize,
    /// Documents skipped for having fewer than 2 tokens (their rows are zero).
    pub skipped: usize,
    /// Tokens of the indexed documents.
    pub tokens: u64,
    /// Tokens computed by this run (fewer than all when resuming).
    pub tokens_run: u64,
    /// Whether batches made by an interrupted run were kept (`tokens_run` counts the rest).
    pub resumed: bool,
    /// Whether the rows were reduced to one (`--aggregation`).
    pub aggregated: bool,
    /// Batches computed by this run (fewer than all when resuming).
    pub batches_run: usize,
    /// Wall time.
    pub seconds: f64,
    /// Size of gradients.bin.
    pub index_bytes: u64,
    /// Where the time went.
    pub profile: Profile,
}

/// Where a build's time went (printed with `--profile`).
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Reading the dataset.
    pub read: Duration,
    /// Formatting and tokenising it, building the kept columns.
    pub tokenize: Duration,
    /// Everything else before the first batch: the tokenizer, the model, the projection
    /// matrices, packing documents into batches, the run directory.
    pub setup: Duration,
    /// Per-batch compute, summed over batches.
    pub batches: BatchTimings,
    /// Writing rows into gradients.bin (and syncing the journal).
    pub write: Duration,
    /// data.hf, processor files, rename.
    pub finish: Duration,
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.batches;
        let rows = [
            ("read data", self.read),
            ("tokenize", self.tokenize),
            ("setup (model, projections, packing)", self.setup),
            ("forward", b.forward),
            ("LM head + loss", b.loss),
            ("backward (autograd)", b.backward),
            ("gradients (form, normalise, project)", b.gradients),
            ("write rows", self.write),
            ("finish (data.hf, rename)", self.finish),
        ];
        let total: f64 = rows.iter().map(|(_, d)| d.as_secs_f64()).sum();
        writeln!(f, "profile:")?;
        for (name, d) in rows {
            let secs = d.as_secs_f64();
            writeln!(
                f,
                "  {name:<38} {secs:>9.3} s {:>5.1}%",
                100.0 * secs / total.max(1e-12)
            )?;
        }
        write!(f, "  {:<38} {total:>9.3} s", "total")
    }
}

impl std::fmt::Display for BuildSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "indexed {} documents ({} tokens) in {:.1} s ({:.0} tokens/s); index {} at {}",
            self.documents,
            self.tokens,
            self.seconds,
            self.tokens_run as f64 / self.seconds.max(1e-9),
            human_bytes(self.index_bytes as f64),
            self.run_path.display()
        )?;
        if self.resumed {
            write!(f, " (resumed: {} tokens computed now)", self.tokens_run)?;
        }
        if self.skipped > 0 && !self.aggregated {
            write!(
                f,
                "; {} documents with fewer than 2 tokens have zero rows",
                self.skipped
            )?;
        }
        Ok(())
    }
}

/// Time between durable checkpoints of the journal: `BERGSON_SYNC_SECONDS` (default 1; 0 syncs
/// after every batch).
pub(crate) fn sync_every() -> Duration {
    let secs = std::env::var("BERGSON_SYNC_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s >= 0.0);
    Duration::from_secs_f64(secs.unwrap_or(1.0))
}

/// Runs a build: validates the config, prepares data and model, collects every batch into
/// `<run_path>.part` and renames it to `<run_path>` when complete.
pub fn run(cfg: &BuildConfig, opts: &RunOptions) -> Result<BuildSummary> {
    run_step(
        &Step::Build(Box::new(cfg.clone())),
        cfg,
        opts,
        &SingleProcess,
    )
}

/// Runs `bergson reduce`: the build pipeline, saved as a `reduce` step (meant for
/// `--aggregation mean|sum`, which reduces every row to one).
pub fn reduce(cfg: &BuildConfig, opts: &RunOptions) -> Result<BuildSummary> {
    run_step(
        &Step::Reduce(Box::new(cfg.clone())),
        cfg,
        opts,
        &SingleProcess,
    )
}

/// Runs this process's share of a build (or, with `reduce`, a reduce step) of the job `job`,
/// as Bergson 2.5.1 splits it: every rank packs the same batches and takes bins r, r+W, ...;
/// rank 0 prepares `<run_path>.part` and sizes gradients.bin, every rank writes its own rows,
/// the losses, position counts and (with `--aggregation`) the summed row are reduced onto
/// rank 0, which writes the shared files and renames the directory only after every rank
/// succeeded. A rank that fails makes the others fail with [`crate::dist::DistError::PeerFailed`]
/// at the next step. Each rank keeps its own journal, so a rerun of the same job resumes
/// every rank after its last durable batch.
pub fn run_in(
    cfg: &BuildConfig,
    opts: &RunOptions,
    job: &dyn Collective,
    reduce: bool,
) -> Result<BuildSummary> {
    let step = if reduce {
        Step::Reduce(Box::new(cfg.clone()))
    } else {
        Step::Build(Box::new(cfg.clone()))
    };
    run_step(&step, cfg, opts, job)
}

/// Tells every rank whether this one's `result` is an error, and fails with the first failed
/// rank if another one failed (every rank goes through the same sequence of these).
pub(crate) fn together<T>(job: &dyn Collective, result: Result<T>) -> Result<T> {
    let failed = job.failed_ranks(result.is_ok())?;
    match result {
        Ok(_) if !failed.is_empty() => {
            Err(crate::dist::DistError::PeerFailed { ranks: failed }.into())
        }
        // Bad input (or a Ctrl-C) fails every rank alike: rank 0 reports it, the others
        // defer to it.
        Err(e)
            if job.rank() != 0
                && failed.first() == Some(&0)
                && (e.is_user_error() || matches!(e, Error::Interrupted)) =>
        {
            Err(crate::dist::DistError::PeerFailed { ranks: vec![0] }.into())
        }
        result => result,
    }
}

fn run_step(
    step: &Step,
    cfg: &BuildConfig,
    opts: &RunOptions,
    job: &dyn Collective,
) -> Result<BuildSummary> {
    let start = Instant::now();
    let icfg = &cfg.index_cfg;
    let (rank, world) = (job.rank(), job.world_size());
    let lead = rank == 0;

    // Rank 0 alone checks and prepares the run directory; every rank loads data and model.
    let loaded = (|| -> Result<_> {
        check_supported(cfg)?;
        let dirs = if lead {
            run_dir::prepare(step, icfg.overwrite)?
        } else {
            let run_path = PathBuf::from(step.run_path());
            let part = PathBuf::from(format!("{}.part", step.run_path()));
            (run_path, part, Start::Fresh)
        };
        let (tokenizer, model_dir, max_positions) = setup::load_tokenizer(icfg)?;
        let data = prepare_data(icfg, &tokenizer, max_positions)?;
        let model = setup::load_model(icfg, &model_dir, opts.device)?;
        let processor = setup::create_processor(icfg, &*model)?;
        Ok((dirs, tokenizer, max_positions, data, model, processor))
    })();
    let ((run_path, part, start_mode), tokenizer, max_positions, data, model, processor) =
        together(job, loaded)?;
    // Rank 0 decided whether `.part` is resumed; every rank then reads its own journal.
    let start_mode = if world > 1 {
        let mut resume = tch::Tensor::from_slice(&[i64::from(start_mode == Start::Resume)]);
        job.broadcast(&mut resume, 0)?;
        if resume.int64_value(&[0]) == 1 {
            Start::Resume
        } else {
            Start::Fresh
        }
    } else {
        start_mode
    };
    let model: &dyn CausalLm = &*model;
    let docs = Documents {
        rows: &data.rows,
        advantages: data.advantages.as_deref(),
    };
    let mut collect_cfg = CollectConfig::from_index_config(icfg);
    collect_cfg.world_size = world;
    collect_cfg.rank = rank;
    if icfg.auto_batch_size {
        let max_len = tokenizer.max_model_length(max_positions);
        let found =
            auto_batch::token_batch_size(cfg, model, docs, &processor, &collect_cfg, max_len);
        let found = together(job, found)?;
        // Every rank must pack the same batches: take the smallest size any rank found.
        let mut n = tch::Tensor::from_slice(&[found as i64]);
        job.all_reduce(&mut n, ReduceOp::Min)?;
        collect_cfg.token_batch_size = n.int64_value(&[0]) as usize;
    }

    // The collection on every rank; rank 0 lays out `.part` (config, processor, a zero-filled
    // gradients.bin of the full size, info, offsets).
    let planned = (|| -> Result<_> {
        let collection = Collection::new(model, docs, &processor, &collect_cfg)?;
        // Stored rows preconditioned (recorded in the saved preprocess_cfg, so a score run
        // does not apply the Hessian to them again).
        let pcfg = &cfg.preprocess_cfg;
        let stored_row_preconditioner = match &pcfg.hessian_path {
            None => None,
            Some(h) => {
                let h = Path::new(h);
                let p = preconditioner::Preconditioner::load(
                    h,
                    &pcfg.inversion_cfg,
                    preconditioner::power_for(pcfg.unit_normalize),
                    pcfg.ev_correction,
                    Device::Cpu,
                )?;
                p.check_fits(
                    &collection.grad_sizes(),
                    h,
                    preconditioner::fitted_model(h).as_deref(),
                )?;
                Some(p)
            }
        };
        let aggregation = pcfg.aggregation;
        if icfg.attribute_tokens && aggregation != Aggregation::None {
            return Err(Error::input(
                "--attribute_tokens cannot be combined with --aggregation; drop one",
            ));
        }
        let lengths = data.lengths();
        let num_items = lengths.len();
        let grad_sizes = collection.grad_sizes();
        let row_len: usize = grad_sizes.iter().map(|(_, s)| s).sum();
        let offsets = icfg.attribute_tokens.then(|| token_offsets(&lengths));
        let num_grads = match (&offsets, aggregation) {
            (_, Aggregation::Mean | Aggregation::Sum) => 1,
            (Some(o), _) => o[num_items] as usize,
            (None, _) => num_items,
        };
        let save_kind = if aggregation == Aggregation::None {
            model.kind()
        } else {
            Kind::Float
        };
        let layout = Layout {
            lengths,
            num_items,
            grad_sizes,
            row_len,
            offsets,
            num_grads,
            save_kind,
        };
        if lead {
            drop(lay_out(
                step,
                &part,
                &start_mode,
                &processor,
                icfg,
                &layout,
            )?);
        }
        Ok((collection, stored_row_preconditioner, layout))
    })();
    let (collection, stored_row_preconditioner, layout) = together(job, planned)?;
    let aggregation = cfg.preprocess_cfg.aggregation;
    let Layout {
        lengths,
        num_items,
        row_len,
        num_grads,
        save_kind,
        ..
    } = layout;
    let offsets = layout.offsets;

    // This rank's batches, its rows written into the shared gradients.bin.
    let batches = collection.batches();
    let indexed: Vec<usize> = batches.iter().flatten().copied().collect();
    let total_tokens: u64 = indexed.iter().map(|&i| lengths[i] as u64).sum();
    let mut losses = vec![0f32; num_items];
    let mut positions = 0usize;
    let mut batches_run = 0;
    let mut done_tokens = 0u64;
    let mut batches_kept = 0usize;
    let mut profile = Profile {
        read: data.timings.read,
        tokenize: data.timings.tokenize,
        setup: start
            .elapsed()
            .saturating_sub(data.timings.read + data.timings.tokenize),
        ..Profile::default()
    };
    let journal_name = journal::journal_name(rank, world);
    let aggregate = part.join(journal::aggregate_name(rank, world));
    let collected = (|| -> Result<_> {
        // This rank's journal: the batches of its share already durable in gradients.bin.
        let header = Header {
            fingerprint: fingerprint(&data, batches, &layout.grad_sizes),
            num_batches: batches.len(),
        };
        let (done, mut journal) =
            Journal::open_named(&part, &journal_name, &header, start_mode == Start::Resume)?;
        let file = GradientFile::create(&part, num_grads, row_len, save_kind, true)?;
        let mut sink = RowSink::new(
            file,
            cfg.preprocess_cfg.unit_normalize,
            aggregation,
            offsets,
            row_len,
        )?
        .with_preconditioner(stored_row_preconditioner);
        if !done.is_empty() {
            sink.restore(&aggregate)?;
        }
        let mut is_done = vec![false; batches.len()];
        for e in &done {
            is_done[e.batch] = true;
            for (&i, &bits) in batches[e.batch].iter().zip(&e.loss_bits) {
                losses[i] = f32::from_bits(bits);
            }
            positions += e.positions;
        }
        let mut progress = Progress::new(opts.quiet || !lead, indexed.len(), total_tokens);
        let done_docs: usize = done.iter().map(|e| batches[e.batch].len()).sum();
        done_tokens = done
            .iter()
            .flat_map(|e| &batches[e.batch])
            .map(|&i| lengths[i] as u64)
            .sum();
        progress.resume(done_docs, done_tokens);
        batches_kept = done.len();

        let mut pending: Vec<Entry> = Vec::new();
        let sync_every = sync_every();
        let mut last_sync = Instant::now();
        for (b, indices) in batches.iter().enumerate() {
            if is_done[b] {
                continue;
            }
            // A Ctrl-C ([`crate::interrupt`]) stops after the current batch, leaving `.part`
            // resumable (one process) or for the next run to start over (several).
            if crate::interrupt::requested() {
                sink.sync(&aggregate)?;
                journal.append(&pending)?;
                progress.finish();
                return Err(Error::Interrupted);
            }
            let out = collection.run_batch(docs, indices)?;
            profile.batches += out.timings;
            let write_start = Instant::now();
            sink.write(&out)?;
            for (&i, &l) in out.indices.iter().zip(&out.losses) {
                losses[i] = l;
            }
            positions += out.positions;
            pending.push(Entry {
                batch: b,
                loss_bits: out.losses.iter().map(|l| l.to_bits()).collect(),
                positions: out.positions,
            });
            batches_run += 1;
            progress.advance(
                indices.len(),
                indices.iter().map(|&i| lengths[i] as u64).sum(),
            );
            if last_sync.elapsed() >= sync_every {
                sink.sync(&aggregate)?;
                journal.append(&pending)?;
                pending.clear();
                last_sync = Instant::now();
            }
            profile.write += write_start.elapsed();
        }
        progress.finish();
        // Every rank's rows are on disk before rank 0 renames the directory.
        sink.flush()?;
        Ok(sink)
    })();
    let mut sink = together(job, collected)?;

    // Losses (zero where another rank owns the document, so the sum is exact), position
    // counts and the aggregate row, reduced onto every rank; rank 0 uses them.
    let finish_start = Instant::now();
    let mut tokens_run = total_tokens - done_tokens;
    if world > 1 {
        let mut l = tch::Tensor::from_slice(&losses);
        job.all_reduce(&mut l, ReduceOp::Sum)?;
        losses = Vec::<f32>::try_from(&l)?;
        let mut counts = tch::Tensor::from_slice(&[
            positions as i64,
            tokens_run as i64,
            batches_run as i64,
            batches_kept as i64,
        ]);
        job.all_reduce(&mut counts, ReduceOp::Sum)?;
        let counts = Vec::<i64>::try_from(&counts)?;
        positions = counts[0] as usize;
        tokens_run = counts[1] as u64;
        batches_run = counts[2] as usize;
        batches_kept = counts[3] as usize;
        if let Some(acc) = sink.accumulator_mut() {
            job.all_reduce(acc, ReduceOp::Sum)?;
        }
    }

    // Rank 0: data.hf, the processor files (again, as Bergson writes them at teardown), the
    // count, then the rename; the others learn whether it worked.
    let finished = (|| -> Result<_> {
        if !lead {
            return Ok(());
        }
        sink.finish(num_items, cfg.preprocess_cfg.normalize_aggregated_grad)?;
        let table = if aggregation == Aggregation::None {
            let mut t = data.table.clone();
            if icfg.drop_columns {
                t = drop_columns(&t, &["input_ids"]);
            }
            add_column(&t, "loss", Arc::new(Float32Array::from(losses)))?
        } else {
            let schema = Schema::new(vec![Field::new("query_index", DataType::Int64, true)]);
            RecordBatch::try_new(
                Arc::new(schema),
                vec![Arc::new(Int64Array::from(vec![0i64]))],
            )
            .map_err(|e| Error::internal(format!("cannot build data.hf: {e}")))?
        };
        write_hf_dataset(&table, &part.join("data.hf"))?;
        processor.save(&part)?;
        pickle::save_scalar_i64(&part.join("total_processed.pt"), positions as i64)?;
        for p in journal::resume_files(&part) {
            std::fs::remove_file(&p).at_path(&p)?;
        }
        run_dir::finish(&part, &run_path)
    })();
    together(job, finished)?;
    profile.finish = finish_start.elapsed();
    let index_bytes = std::fs::metadata(run_path.join("gradients.bin"))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(BuildSummary {
        run_path,
        documents: num_items,
        skipped: lengths.iter().filter(|&&l| l < 2).count(),
        tokens: lengths.iter().map(|&l| l as u64).sum(),
        tokens_run,
        resumed: batches_kept > 0,
        aggregated: aggregation != Aggregation::None,
        batches_run,
        seconds: start.elapsed().as_secs_f64(),
        index_bytes,
        profile,
    })
}

/// The shape of an index: what rank 0 lays out and every rank writes into.
struct Layout {
    lengths: Vec<usize>,
    num_items: usize,
    grad_sizes: Vec<(String, usize)>,
    row_len: usize,
    offsets: Option<Vec<i64>>,
    num_grads: usize,
    save_kind: Kind,
}

/// Rank 0's part of the set-up: creates `.part` (fresh), writes config.yaml, the processor,
/// a zero-filled gradients.bin of the full size, info and (per token) the offsets.
fn lay_out(
    step: &Step,
    part: &Path,
    start_mode: &Start,
    processor: &crate::collect::GradientProcessor,
    icfg: &crate::config::IndexConfig,
    layout: &Layout,
) -> Result<GradientFile> {
    if *start_mode == Start::Fresh {
        run_dir::create_part(part)?;
        write_text(
            &part.join("config.yaml"),
            &config_yaml(step, chrono::Utc::now())?,
        )?;
    }
    processor.save(part)?;
    let file = GradientFile::create(
        part,
        layout.num_grads,
        layout.row_len,
        layout.save_kind,
        *start_mode == Start::Resume,
    )?;
    let info = IndexInfo {
        attribute_tokens: icfg.attribute_tokens,
        num_items: if layout.offsets.is_some() {
            layout.num_items
        } else {
            layout.num_grads
        },
        num_grads: layout.num_grads,
        grad_sizes: layout.grad_sizes.clone(),
        base_dtype: crate::engine::numpy_name(layout.save_kind).to_string(),
    };
    info.write(part)?;
    if let Some(o) = &layout.offsets {
        write_offsets(&part.join("offsets.npy"), o)?;
    }
    Ok(file)
}

/// Refuses Bergson options bergson-rs does not implement, and impossible values, up front.
fn check_supported(cfg: &BuildConfig) -> Result<()> {
    // Any number of processes may build (crate::dist); check the rest as every command does.
    crate::dist::launch::check_config(&cfg.index_cfg.distributed)?;
    let mut icfg = cfg.index_cfg.clone();
    icfg.distributed = Default::default();
    setup::check_index_config(&icfg)?;
    let pcfg = &cfg.preprocess_cfg;
    if let Some(h) = &pcfg.hessian_path {
        pcfg.inversion_cfg.check()?;
        preconditioner::check_factored_unprojected(
            Path::new(h),
            cfg.index_cfg.projection_dim,
            pcfg.unit_normalize,
        )?;
        preconditioner::check_projection(
            Path::new(h),
            &crate::collect::ProjectionSettings::from_index_config(&cfg.index_cfg),
        )?;
    }
    Ok(())
}

/// `offsets[i]..offsets[i+1]` are document `i`'s token rows: `max(length - 1, 0)` each.
pub(crate) fn token_offsets(lengths: &[usize]) -> Vec<i64> {
    std::iter::once(0)
        .chain(lengths.iter().scan(0i64, |acc, &l| {
            *acc += l.saturating_sub(1) as i64;
            Some(*acc)
        }))
        .collect()
}

/// Identifies the documents and batch plan a journal belongs to.
pub(crate) fn fingerprint(
    data: &PreparedData,
    batches: &[Vec<usize>],
    grad_sizes: &[(String, usize)],
) -> String {
    let mut h = Md5::new();
    for r in &data.rows {
        h.update((r.input_ids.len() as u64).to_le_bytes());
        for id in &r.input_ids {
            h.update(id.to_le_bytes());
        }
        if let Some(l) = &r.labels {
            for id in l {
                h.update(id.to_le_bytes());
            }
        }
    }
    for a in data.advantages.iter().flatten() {
        h.update(a.to_bits().to_le_bytes());
    }
    for b in batches {
        h.update((b.len() as u64).to_le_bytes());
        for i in b {
            h.update((*i as u64).to_le_bytes());
        }
    }
    for (n, s) in grad_sizes {
        h.update(n.as_bytes());
        h.update((*s as u64).to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).at_path(path)
}
