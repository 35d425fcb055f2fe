//! `bergson score`: a dataset scored against a query index, training gradients computed on the
//! fly and never stored (Bergson's `score_dataset`). The output directory holds Bergson's score
//! store (`scores.bin`, `info.json`, `offsets.npy` per token, `candidates.npy`), `data.hf` with
//! each document's loss, the processor files and `config.yaml`; it is written to
//! `<run_path>.part`, renamed when complete, and resumes from its journal after an interruption.
//! Several processes ([`run_in`]) split the batches as a build does and write one store.

pub mod candidates;
pub mod queries;
pub mod scorer;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::Float32Array;
use tch::Kind;

use crate::build::{fingerprint, prepare_data, together, token_offsets, RunOptions};
use crate::collect::{CollectConfig, Collection, Documents, ProjectionSettings};
use crate::config::run_file::{config_yaml, Step};
use crate::config::{Aggregation, ScoreMode, ScorePrecision, ScoreRunConfig, TokenInfluence};
use crate::data::columns::{add_column, drop_columns, take_rows};
use crate::dist::{Collective, ReduceOp, SingleProcess};
use crate::error::IoContext;
use crate::hessians::preconditioner::{
    check_factored_unprojected, check_projection, fitted_model, power_for, Preconditioner,
};
use crate::index::hf_dataset::write_hf_dataset;
use crate::index::journal::{journal_name, resume_files, Entry, Header, Journal};
use crate::index::reader::write_offsets;
use crate::index::run_dir::{self, Start};
use crate::index::score_store::ScoreWriter;
use crate::models::CausalLm;
use crate::progress::Progress;
use crate::{setup, Error, Result};

use scorer::Scorer;

/// What a finished score run did.
#[derive(Debug, Clone)]
pub struct ScoreSummary {
    /// The score directory.
    pub run_path: PathBuf,
    /// Documents scored.
    pub documents: usize,
    /// Rows of scores.bin (documents, or tokens).
    pub rows: usize,
    /// Columns of scores.bin.
    pub num_scores: usize,
    /// Tokens computed by this run (all passes, fewer when resuming).
    pub tokens_run: u64,
    /// Wall time.
    pub seconds: f64,
}

impl std::fmt::Display for ScoreSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "scored {} documents against {} query column(s) in {:.1} s ({:.0} tokens/s); scores at {}",
            self.documents,
            self.num_scores,
            self.seconds,
            self.tokens_run as f64 / self.seconds.max(1e-9),
            self.run_path.display()
        )
    }
}

/// Refuses unsupported or contradictory settings before anything is written.
fn check_supported(cfg: &ScoreRunConfig) -> Result<()> {
    let (icfg, scfg, pcfg) = (&cfg.index_cfg, &cfg.score_cfg, &cfg.preprocess_cfg);
    // Any number of processes may score (crate::dist); check the rest as every command does.
    crate::dist::launch::check_config(&icfg.distributed)?;
    let mut plain = icfg.clone();
    plain.distributed = Default::default();
    setup::check_index_config(&plain)?;
    if let Some(h) = &pcfg.hessian_path {
        pcfg.inversion_cfg.check()?;
        check_factored_unprojected(Path::new(h), icfg.projection_dim, pcfg.unit_normalize)?;
    }
    if scfg.token_influence == TokenInfluence::Output {
        return Err(Error::input(
            "--token_influence output is not supported by bergson-rs yet; use gradient",
        ));
    }
    // `--aggregation` reduces the query rows only, so unlike a build it goes with
    // `--attribute_tokens` (Bergson 2.5.1 scores every token against the aggregated query).
    if !scfg.candidates.scores.is_empty() && icfg.attribute_tokens {
        return Err(Error::input(
            "--scores (candidates) cannot be combined with --attribute_tokens; drop one",
        ));
    }
    if scfg.query_batch_size == Some(0) {
        return Err(Error::input(
            "--query_batch_size must be positive, or left out to score all queries in one pass",
        ));
    }
    Ok(())
}

/// The query slices, one pass over the data each (`--query_batch_size`).
fn query_slices(
    cfg: &ScoreRunConfig,
    num_queries: usize,
    aggregation: Aggregation,
) -> Result<Vec<Option<Range<usize>>>> {
    let Some(qbs) = cfg.score_cfg.query_batch_size.filter(|&q| q < num_queries) else {
        return Ok(vec![None]);
    };
    if aggregation != Aggregation::None {
        return Err(Error::input(
            "--query_batch_size needs --aggregation none: aggregation mixes all queries, which a slice of them would corrupt",
        ));
    }
    if cfg.score_cfg.score != ScoreMode::Individual {
        return Err(Error::input(
            "--query_batch_size needs --score individual: nearest takes the best of all queries, which per-slice passes cannot",
        ));
    }
    Ok((0..num_queries)
        .step_by(qbs)
        .map(|start| Some(start..(start + qbs).min(num_queries)))
        .collect())
}

/// Runs `bergson score` in this process.
pub fn run(cfg: &ScoreRunConfig, opts: &RunOptions) -> Result<ScoreSummary> {
    run_in(cfg, opts, &SingleProcess)
}

/// Runs this process's share of a score run of the job `job`, split as Bergson 2.5.1 splits
/// it: every rank packs the same batches and takes bins r, r+W, ... (as a build); rank 0
/// prepares `<run_path>.part` and sizes scores.bin, every rank writes its own rows, the
/// losses are reduced onto rank 0, which writes data.hf and renames the directory only after
/// every rank succeeded. Each rank keeps its own journal, so a rerun of the same job resumes
/// every rank after its last durable batch.
pub fn run_in(
    cfg: &ScoreRunConfig,
    opts: &RunOptions,
    job: &dyn Collective,
) -> Result<ScoreSummary> {
    let start = Instant::now();
    let (icfg, scfg) = (&cfg.index_cfg, &cfg.score_cfg);
    let (rank, world) = (job.rank(), job.world_size());
    let lead = rank == 0;
    let step = Step::Score(Box::new(cfg.clone()));

    // Every rank checks the query index and loads data and model; rank 0 alone prepares the
    // run directory.
    let loaded = (|| -> Result<_> {
        check_supported(cfg)?;
        let query = QuerySide::open(cfg, opts)?;
        let dirs = if lead {
            run_dir::prepare(&step, icfg.overwrite)?
        } else {
            let run_path = PathBuf::from(step.run_path());
            let part = PathBuf::from(format!("{}.part", step.run_path()));
            (run_path, part, Start::Fresh)
        };
        let (tokenizer, model_dir, max_positions) = setup::load_tokenizer(icfg)?;
        let mut data = prepare_data(icfg, &tokenizer, max_positions)?;
        let candidates = if scfg.candidates.scores.is_empty() {
            None
        } else {
            let rows = candidates::select_candidates(&scfg.candidates, data.rows.len())?;
            if !opts.quiet && lead {
                eprintln!("scoring {} of {} rows", rows.len(), data.rows.len());
            }
            data.table = take_rows(&data.table, &rows)?;
            data.rows = rows.iter().map(|&i| data.rows[i].clone()).collect();
            data.advantages = data
                .advantages
                .map(|a| rows.iter().map(|&i| a[i]).collect());
            Some(rows)
        };
        let model = setup::load_model(icfg, &model_dir, opts.device)?;
        let processor = setup::create_processor(icfg, &*model)?;
        Ok((query, dirs, data, candidates, model, processor))
    })();
    let (query, (run_path, part, start_mode), data, candidates, model, processor) =
        together(job, loaded)?;
    let start_mode = agree_on_start(job, start_mode)?;
    let model: &dyn CausalLm = &*model;
    let docs = Documents {
        rows: &data.rows,
        advantages: data.advantages.as_deref(),
    };
    let lengths = data.lengths();
    let num_items = lengths.len();
    let offsets = icfg.attribute_tokens.then(|| token_offsets(&lengths));
    let num_rows = offsets
        .as_ref()
        .map(|o| o[num_items] as usize)
        .unwrap_or(num_items);

    // This rank's batches; rank 0 lays out `.part` (config, processor, a scores.bin of the
    // full size, offsets, candidates).
    let planned = (|| -> Result<_> {
        let mut collect_cfg = CollectConfig::from_index_config(icfg);
        collect_cfg.world_size = world;
        collect_cfg.rank = rank;
        let collection = Collection::new(model, docs, &processor, &collect_cfg)?;
        let grad_sizes = collection.grad_sizes();
        check_query_modules(
            &query.index.info.grad_sizes,
            &grad_sizes,
            &query.modules,
            icfg,
            query.index.dir(),
        )?;
        let save_kind = collection.collector().save_kind();
        let score_kind = match scfg.precision {
            ScorePrecision::Auto => save_kind,
            ScorePrecision::Bf16 => Kind::BFloat16,
            ScorePrecision::Fp16 => Kind::Half,
            ScorePrecision::Fp32 => Kind::Float,
        };
        if lead {
            if start_mode == Start::Fresh {
                run_dir::create_part(&part)?;
                let path = part.join("config.yaml");
                std::fs::write(&path, config_yaml(&step, chrono::Utc::now())?).at_path(&path)?;
            }
            processor.save(&part)?;
            drop(ScoreWriter::create(
                &part,
                num_items,
                num_rows,
                query.num_scores,
                score_kind,
                icfg.attribute_tokens,
                start_mode == Start::Resume,
            )?);
            if let Some(o) = &offsets {
                write_offsets(&part.join("offsets.npy"), o)?;
            }
            if let Some(c) = &candidates {
                let ids: Vec<i64> = c.iter().map(|&i| i as i64).collect();
                write_offsets(&part.join("candidates.npy"), &ids)?;
            }
        }
        Ok((collection, grad_sizes, save_kind, score_kind))
    })();
    let (collection, grad_sizes, save_kind, score_kind) = together(job, planned)?;

    // One journal per rank over every pass: batch `p * B + b` is pass p's batch b.
    let batches = collection.batches();
    let per_pass = batches.len();
    let num_passes = query.slices.len();
    let mut losses = vec![0f32; num_items];
    let mut tokens_run = 0u64;
    let collected = (|| -> Result<()> {
        // Rank 0 sized scores.bin; every rank maps it and writes its own rows.
        let mut writer = ScoreWriter::create(
            &part,
            num_items,
            num_rows,
            query.num_scores,
            score_kind,
            icfg.attribute_tokens,
            true,
        )?;
        let journal_name = journal_name(rank, world);
        let header = Header {
            fingerprint: fingerprint(&data, batches, &grad_sizes),
            num_batches: per_pass * num_passes,
        };
        let (done, mut journal) =
            Journal::open_named(&part, &journal_name, &header, start_mode == Start::Resume)?;
        let mut is_done = vec![false; header.num_batches];
        for e in &done {
            is_done[e.batch] = true;
            for (&i, &bits) in batches[e.batch % per_pass].iter().zip(&e.loss_bits) {
                losses[i] = f32::from_bits(bits);
            }
        }

        let pass_tokens: u64 = batches.iter().flatten().map(|&i| lengths[i] as u64).sum();
        let pass_docs: usize = batches.iter().map(Vec::len).sum();
        let mut progress = Progress::new(
            opts.quiet || !lead,
            pass_docs * num_passes,
            pass_tokens * num_passes as u64,
        );
        let done_tokens: u64 = done
            .iter()
            .flat_map(|e| &batches[e.batch % per_pass])
            .map(|&i| lengths[i] as u64)
            .sum();
        let done_docs: usize = done.iter().map(|e| batches[e.batch % per_pass].len()).sum();
        progress.resume(done_docs, done_tokens);

        let mut pending: Vec<Entry> = Vec::new();
        let mut last_sync = Instant::now();
        let sync_every = crate::build::sync_every();
        for (p, slice) in query.slices.iter().enumerate() {
            if (0..per_pass).all(|b| is_done[p * per_pass + b]) {
                continue;
            }
            let first_column = slice.as_ref().map(|r| r.start).unwrap_or(0);
            let scorer = make_scorer(
                &query.index,
                &query.modules,
                slice.clone(),
                query.query_preconditioner(),
                query.remaining,
                cfg,
                score_kind,
                model.device(),
            )?;
            for (b, indices) in batches.iter().enumerate() {
                let id = p * per_pass + b;
                if is_done[id] {
                    continue;
                }
                if crate::interrupt::requested() {
                    writer.sync()?;
                    journal.append(&pending)?;
                    progress.finish();
                    return Err(Error::Interrupted);
                }
                let out = collection.run_batch_blocks(docs, indices)?;
                let scores =
                    scorer.score_transformed(&out.blocks, save_kind, query.index_transform())?;
                let rows: Vec<usize> = match &offsets {
                    None => out.indices.clone(),
                    Some(o) => out
                        .indices
                        .iter()
                        .flat_map(|&i| o[i] as usize..o[i + 1] as usize)
                        .collect(),
                };
                writer.write(&rows, &scores, first_column)?;
                for (&i, &l) in out.indices.iter().zip(&out.losses) {
                    losses[i] = l;
                }
                pending.push(Entry {
                    batch: id,
                    loss_bits: out.losses.iter().map(|l| l.to_bits()).collect(),
                    positions: out.positions,
                });
                let tokens: u64 = indices.iter().map(|&i| lengths[i] as u64).sum();
                tokens_run += tokens;
                progress.advance(indices.len(), tokens);
                if last_sync.elapsed() >= sync_every {
                    writer.sync()?;
                    journal.append(&pending)?;
                    pending.clear();
                    last_sync = Instant::now();
                }
            }
        }
        progress.finish();
        // Every rank's rows are on disk before rank 0 renames the directory.
        writer.sync()
    })();
    together(job, collected)?;

    // Losses (zero where another rank owns the document, so the sum is exact) and the tokens
    // computed, reduced onto every rank; rank 0 uses them.
    if world > 1 {
        let mut l = tch::Tensor::from_slice(&losses);
        job.all_reduce(&mut l, ReduceOp::Sum)?;
        losses = Vec::<f32>::try_from(&l)?;
        let mut t = tch::Tensor::from_slice(&[tokens_run as i64]);
        job.all_reduce(&mut t, ReduceOp::Sum)?;
        tokens_run = t.int64_value(&[0]) as u64;
    }

    // Rank 0: data.hf, the processor files, then the rename; the others learn whether it
    // worked.
    let finished = (|| -> Result<()> {
        if !lead {
            return Ok(());
        }
        let mut table = data.table.clone();
        if icfg.drop_columns {
            table = drop_columns(&table, &["input_ids"]);
        }
        let table = add_column(&table, "loss", Arc::new(Float32Array::from(losses)))?;
        write_hf_dataset(&table, &part.join("data.hf"))?;
        processor.save(&part)?;
        // Unlike a build, Bergson's score writes no total_processed.pt.
        for p in resume_files(&part) {
            std::fs::remove_file(&p).at_path(&p)?;
        }
        run_dir::finish(&part, &run_path)
    })();
    together(job, finished)?;
    Ok(ScoreSummary {
        run_path,
        documents: num_items,
        rows: num_rows,
        num_scores: query.num_scores,
        tokens_run,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Whether the job resumes `.part`: rank 0 decided (it alone looked); every rank follows.
fn agree_on_start(job: &dyn Collective, start_mode: Start) -> Result<Start> {
    if job.world_size() == 1 {
        return Ok(start_mode);
    }
    let mut resume = tch::Tensor::from_slice(&[i64::from(start_mode == Start::Resume)]);
    job.broadcast(&mut resume, 0)?;
    Ok(if resume.int64_value(&[0]) == 1 {
        Start::Resume
    } else {
        Start::Fresh
    })
}

/// The query side of a score run: the query index, checked against this run's settings, the
/// preconditioner and what is left of the query preprocessing.
struct QuerySide {
    index: crate::index::GradientIndex,
    /// Modules scored (`--score_cfg.modules`, else every module of the query index).
    modules: Vec<String>,
    preconditioner: Option<Preconditioner>,
    /// Whether the query index was built preconditioned (H is then not applied again).
    query_preconditioned: bool,
    /// `(unit_normalize, aggregation, normalize_aggregated_grad)` still to apply.
    remaining: (bool, Aggregation, bool),
    unit_normalize: bool,
    /// The query slices, one pass over the data each.
    slices: Vec<Option<Range<usize>>>,
    /// Columns of the store.
    num_scores: usize,
}

impl QuerySide {
    /// Opens and checks the query index named by `cfg` before anything is written.
    fn open(cfg: &ScoreRunConfig, opts: &RunOptions) -> Result<QuerySide> {
        let (icfg, scfg, pcfg) = (&cfg.index_cfg, &cfg.score_cfg, &cfg.preprocess_cfg);
        let index = queries::open_query_index(&scfg.query_path)?;
        let query_dir = index.dir().to_path_buf();
        let settings = ProjectionSettings::from_index_config(icfg);
        settings.check_saved(&query_dir, "The query index")?;
        let modules: Vec<String> = if scfg.modules.is_empty() {
            index
                .info
                .grad_sizes
                .iter()
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            scfg.modules.clone()
        };
        let query_pre = queries::saved_preprocess(&query_dir)?;
        let preconditioner = match &pcfg.hessian_path {
            None => None,
            Some(h) => {
                let h = Path::new(h);
                check_projection(h, &settings)?;
                let p = Preconditioner::load(
                    h,
                    &pcfg.inversion_cfg,
                    power_for(pcfg.unit_normalize),
                    pcfg.ev_correction,
                    opts.device,
                )?;
                p.check_fits(&index.info.grad_sizes, h, fitted_model(h).as_deref())?;
                Some(p)
            }
        };
        let remaining = queries::remaining_preprocess(pcfg, &query_pre);
        let num_queries_total = index.num_rows();
        if num_queries_total == 0 {
            return Err(Error::input(format!(
                "query index {} has no rows; build it over a non-empty query dataset",
                scfg.query_path
            )));
        }
        let aggregation = remaining.1;
        let slices = query_slices(cfg, num_queries_total, aggregation)?;
        // As Bergson 2.5.1: the store is as wide as the query index (or one column for
        // `nearest`), even when the queries are aggregated into one row.
        let num_scores = match scfg.score {
            ScoreMode::Nearest => 1,
            ScoreMode::Individual => num_queries_total,
        };
        if aggregation != Aggregation::None && num_scores > 1 {
            tracing::warn!(
                "as Bergson 2.5.1 does, the store gets {num_scores} columns (the query index's \
                 rows) but only score_0 is written: the aggregated query's scores"
            );
        }
        Ok(QuerySide {
            index,
            modules,
            preconditioner,
            query_preconditioned: query_pre.hessian_path.is_some(),
            remaining,
            unit_normalize: pcfg.unit_normalize,
            slices,
            num_scores,
        })
    }

    /// H for the queries, unless the query index was built preconditioned.
    fn query_preconditioner(&self) -> Option<&Preconditioner> {
        self.preconditioner
            .as_ref()
            .filter(|_| !self.query_preconditioned)
    }

    /// Two-sided (unit norm): the training gradients get H^-1/2 too, before their norms.
    fn index_transform(&self) -> Option<&Preconditioner> {
        self.preconditioner.as_ref().filter(|_| self.unit_normalize)
    }
}

/// The scorer for one query slice: read, precondition, preprocess, transpose.
#[allow(clippy::too_many_arguments)]
fn make_scorer(
    index: &crate::index::GradientIndex,
    modules: &[String],
    slice: Option<Range<usize>>,
    preconditioner: Option<&Preconditioner>,
    (unit, aggregation, normalize_aggregated): (bool, Aggregation, bool),
    cfg: &ScoreRunConfig,
    kind: Kind,
    device: tch::Device,
) -> Result<Scorer> {
    let mut q = queries::read_queries(index, modules, slice)?;
    if let Some(p) = preconditioner {
        q = p.apply(&q)?;
    }
    let q = queries::normalize_and_aggregate(q, unit, aggregation, normalize_aggregated)?;
    Scorer::new(
        &q,
        kind,
        device,
        cfg.preprocess_cfg.unit_normalize,
        cfg.score_cfg.score,
    )
}

/// Refuses a query index whose blocks this run cannot produce, naming the first difference.
fn check_query_modules(
    query: &[(String, usize)],
    ours: &[(String, usize)],
    modules: &[String],
    icfg: &crate::config::IndexConfig,
    query_dir: &Path,
) -> Result<()> {
    let query_model = crate::config::run_file::load_subconfig::<crate::config::IndexConfig>(
        query_dir,
        "index_cfg",
    )
    .ok()
    .flatten()
    .map(|c| c.model);
    let built_with = match &query_model {
        Some(m) if *m != icfg.model => format!(
            " (it was built with model {m}, this run uses {})",
            icfg.model
        ),
        _ => String::new(),
    };
    for name in modules {
        let Some(&(_, q)) = query.iter().find(|(n, _)| n == name) else {
            return Err(Error::input(format!(
                "module '{name}' (--score_cfg.modules) is not in the query index {}",
                query_dir.display()
            )));
        };
        match ours.iter().find(|(n, _)| n == name) {
            None => {
                return Err(Error::input(format!(
                    "the query index has module '{name}', which this run does not collect{built_with}; \
                     use the model and --index_cfg.modules / --filter_modules the query index was \
                     built with, or restrict scoring with --score_cfg.modules"
                )))
            }
            Some(&(_, s)) if s != q => {
                return Err(Error::input(format!(
                    "module '{name}' has {q} values per row in the query index but {s} in this \
                     run{built_with}; use the model, --projection_dim and --include_bias the \
                     query index was built with"
                )))
            }
            Some(_) => {}
        }
    }
    if !built_with.is_empty() {
        tracing::warn!("the query index{built_with}; scoring anyway since every module matches");
    }
    Ok(())
}
