//! `bergson magic`: exact data attribution by differentiating through training (MAGIC,
//! Ilyas & Engstrom, arXiv:2503.13751), as Python Bergson 2.5.1's `run_magic` does it for a
//! `MagicConfig`:
//!
//! 1. **train** with a weight `w_d = 1` on every training document (or token), writing the
//!    trainer states on `--save_mode`'s schedule ([`crate::train`]);
//! 2. **query**: the gradient of the query loss at the trained state ([`query`]), one target
//!    (`--aggregation mean|sum`) or one per query document (`none`);
//! 3. **backward**: the adjoints carried from the final state back to the first through every
//!    step ([`backward`]); what reaches `w` is the metagradient `d(query loss)/d w`;
//! 4. **write** `<run>/scores/` ([`scores`]).
//!
//! ```text
//! <run_path>/config.yaml                      the run config (steps: [{magic: ...}])
//! <run_path>/checkpoints/log_history.json     learning rate per step
//! <run_path>/checkpoints/step_{i}.ckpt/       what the backward left (--cleanup_ckpts)
//! <run_path>/scores/                          scores.bin, info.json (+ offsets.npy, doc_ids.npy)
//! <run_path>/per_query/q{i}.pt                each query's scores (--aggregation none)
//! ```
//!
//! [`metasmoothness`] (`bergson metasmoothness`) scores how linearly training responds to the
//! data weights, from three trainings, before committing to a MAGIC run.

pub mod backward;
pub mod metasmoothness;
pub mod plot;
pub mod query;
pub mod scores;

use crate::config::{Aggregation, MagicConfig, SaveMode};
use crate::data::pipeline::prepare_data;
use crate::data::tokenize::TokenizedRow;
use crate::dist::{Collective, SingleProcess};
use crate::train::checkpoint::{complete_checkpoints, load_state};
use crate::train::run::{index_config, write_run_config};
use crate::train::{prepare_training_in, TrainingRun, WeightChoice};
use crate::{Error, Result};
use backward::{Adjoint, BackwardSettings, SavedState};
use query::{query_gradient, QueryGradient};
use std::path::PathBuf;
use std::rc::Rc;
use tch::{Device, Tensor};

/// What a MAGIC run produced.
#[derive(Debug)]
pub struct MagicSummary {
    /// The run directory.
    pub run_path: PathBuf,
    /// The score store.
    pub scores_path: PathBuf,
    /// Training steps.
    pub num_steps: usize,
    /// Training loss of each step this process took.
    pub losses: Vec<(usize, f64)>,
    /// The query loss at the trained state (Bergson's "baseline"; minus the contrast's).
    pub query_loss: f64,
    /// The scores: `[num_docs, num_queries]`, or `[num_examples, seq_len, num_queries]` per
    /// token (padding trimmed).
    pub scores: Tensor,
    /// Seconds spent training (forward phase, checkpoints included).
    pub train_seconds: f64,
    /// Seconds spent on the query gradients.
    pub query_seconds: f64,
    /// Seconds spent in the backward phase (recomputation included).
    pub backward_seconds: f64,
}

/// Refuses what `magic` cannot run, before anything is written.
pub fn check_magic_config(c: &MagicConfig) -> Result<()> {
    crate::train::run::check_run_path(&c.train, "magic")?;
    let world = c.train.distributed.nnode * c.train.distributed.nproc_per_node;
    if world > 1 {
        crate::train::run::check_data_parallel(&c.train, world)?;
    }
    match c.train.save_mode {
        SaveMode::Interval => {
            return Err(Error::input(
                "--save_mode interval is not supported for MAGIC attribution (as in Bergson); use sqrt, log or all",
            ))
        }
        SaveMode::Final => {
            return Err(Error::input(
                "--save_mode final keeps no state to walk back through; use sqrt, log or all",
            ))
        }
        _ => {}
    }
    if !c.skip_validation {
        return Err(Error::input(
            "--skip_validation false (leave-k-out validation) is not part of bergson magic here; run bergson validate on the scores",
        ));
    }
    if c.ckpt_avg_k != 1 {
        return Err(Error::input(
            "--ckpt_avg_k other than 1 is not supported by bergson magic yet; drop it",
        ));
    }
    if !c.query.path.is_empty() {
        return Err(Error::input(
            "--path (an existing query index) does not apply to bergson magic, which differentiates the query loss itself; give --query.dataset",
        ));
    }
    let contrast = c.query.contrast.is_some();
    if c.query.aggregation == Aggregation::None {
        if contrast {
            return Err(Error::input(
                "--contrast.dataset subtracts one aggregated query from another; use --aggregation mean or sum, not none",
            ));
        }
        if c.query.data.chunk_length > 0 {
            return Err(Error::input(
                "--query.chunk_length must be 0 with --aggregation none (one score column per query document); use --query.truncation for long documents",
            ));
        }
    }
    Ok(())
}

/// Tokenises another data set of the run (the query or contrast set) as the training set.
pub(crate) fn prepare_rows(
    run: &TrainingRun,
    c: &crate::config::TrainingConfig,
    data: crate::config::DataConfig,
    what: &str,
) -> Result<Vec<TokenizedRow>> {
    let mut icfg = index_config(c);
    icfg.data = data;
    let prepared = prepare_data(&icfg, &run.tokenizer, run.max_positions).map_err(|e| match e {
        Error::Input(m) => Error::input(format!("the {what} set: {m}")),
        other => other,
    })?;
    Ok(prepared.rows)
}

/// Refuses a query set whose loss would be 0/0: with `--aggregation none` any row without a
/// next-token target (each is its own query), otherwise a set without any.
fn check_query_targets(rows: &[TokenizedRow], aggregation: Aggregation, what: &str) -> Result<()> {
    let fix = "(fewer than 2 tokens, or every label masked)";
    if aggregation == Aggregation::None {
        if let Some(i) = rows.iter().position(|r| r.next_token_targets() == 0) {
            return Err(Error::input(format!(
                "{what} row {i} has no next-token target {fix}, so its loss is undefined; drop it \
                 from the {what} dataset, or aggregate the queries with --aggregation mean"
            )));
        }
    } else if rows.iter().all(|r| r.next_token_targets() == 0) {
        return Err(Error::input(format!(
            "no {what} row has a next-token target {fix}, so the {what} loss is undefined; check \
             the {what} dataset and its columns"
        )));
    }
    Ok(())
}

/// Runs `bergson magic` with config `c` on `device`, in this process.
pub fn magic(c: &MagicConfig, device: Device) -> Result<MagicSummary> {
    if c.train.distributed.nnode * c.train.distributed.nproc_per_node > 1 {
        return Err(Error::input(
            "this run has several processes: start it with bergson magic --nproc_per_node, or as a torchrun rank",
        ));
    }
    magic_in(c, device, Rc::new(SingleProcess))
}

/// Runs `bergson magic` as one rank of `group`'s job, data parallel: every rank trains on
/// its share of each batch (the summed gradients are the one-process ones), takes its share
/// of the query batches, and walks the backward with the same adjoints, the parameters'
/// second-order parts summed over the ranks each step; the data weights' metagradients are
/// summed at the end and rank 0 writes the scores. The scores are the one-process scores up
/// to float rounding.
pub fn magic_in(
    c: &MagicConfig,
    device: Device,
    group: Rc<dyn Collective>,
) -> Result<MagicSummary> {
    check_magic_config(c)?;
    let (rank, world) = (group.rank(), group.world_size());
    let per_token = c.attribute_tokens || c.per_token;
    let weights = if per_token {
        WeightChoice::PerToken
    } else {
        WeightChoice::PerDocument
    };
    let mut run = prepare_training_in(
        &c.train,
        device,
        weights,
        |dir| write_run_config(dir, "magic", c),
        group.clone(),
    )?;
    let query_rows = prepare_rows(&run, &c.train, c.query.data.clone(), "query")?;
    if query_rows.is_empty() {
        return Err(Error::input(
            "the query dataset has no rows; check --query.dataset and --query.split",
        ));
    }
    let contrast_rows = match c.query.contrast.clone() {
        Some(d) => Some(prepare_rows(&run, &c.train, d, "contrast")?),
        None => None,
    };
    // Checked before training: a query without targets has a 0/0 loss (Bergson 2.5.1 fails
    // on it with a ZeroDivisionError after the whole training run).
    check_query_targets(&query_rows, c.query.aggregation, "query")?;
    if let Some(rows) = &contrast_rows {
        check_query_targets(rows, c.query.aggregation, "contrast")?;
    }

    let clock = std::time::Instant::now();
    let (state, losses) = run.train(&c.train)?;
    let train_seconds = clock.elapsed().as_secs_f64();
    let clock = std::time::Instant::now();
    let trainer = &run.trainer;
    let batch_size = c.train.batch_size;

    // Query phase: the cotangents of the final parameters.
    let targets: Vec<QueryGradient> = match c.query.aggregation {
        Aggregation::None => {
            let mut out = Vec::with_capacity(query_rows.len());
            for i in 0..query_rows.len() {
                out.push(query_gradient(
                    trainer,
                    &state.params,
                    &query_rows[i..i + 1],
                    1,
                    false,
                    device,
                )?);
            }
            out
        }
        agg => {
            let sum = agg == Aggregation::Sum;
            let q = query_gradient(trainer, &state.params, &query_rows, batch_size, sum, device)?;
            let q = match &contrast_rows {
                Some(rows) => q.minus(&query_gradient(
                    trainer,
                    &state.params,
                    rows,
                    batch_size,
                    sum,
                    device,
                )?),
                None => q,
            };
            vec![q]
        }
    };
    let query_loss = match c.query.aggregation {
        Aggregation::None => {
            query_gradient(
                trainer,
                &state.params,
                &query_rows,
                batch_size,
                false,
                device,
            )?
            .loss
        }
        _ => targets[0].loss,
    };
    tracing::info!("query loss at the trained state: {query_loss}");

    let query_seconds = clock.elapsed().as_secs_f64();

    // Backward phase: every step, right to left, differentiable in the data weights.
    let clock = std::time::Instant::now();
    let weights = run.stream.weights.detach().set_requires_grad(true);
    run.stream.set_weights(weights)?;
    let adjoints: Vec<Adjoint> = targets
        .into_iter()
        .map(|t| Adjoint::at_end(t.grads, &state, &run.stream.weights))
        .collect();
    let checkpoints: Vec<(usize, SavedState)> = complete_checkpoints(&run.checkpoints)?
        .into_iter()
        .filter(|(i, _)| *i < run.num_steps())
        .map(|(i, p)| (i, SavedState::Disk(p)))
        .collect();
    let like = run.initial.detach();
    let load = |p: &std::path::Path| load_state(p, &run.names, &like, &run.trajectory, device);
    let settings = BackwardSettings {
        save_mode: c.train.save_mode,
        // Per-query runs keep the trajectory, as Bergson's (which walks it once per query).
        cleanup: c.cleanup_ckpts && c.query.aggregation != Aggregation::None,
        save_every: c.backward_save_every,
        state_file: Some(
            run.checkpoints
                .join(format!("backward_rank{rank}.safetensors")),
        ),
        resume: c.train.resume,
        // Kept segment graphs trade memory for a fifth of the time: worth it in RAM, not on
        // an accelerator, nor where micro-batches (--grad_accum_steps) say memory is short.
        keep_gradients: device == tch::Device::Cpu && c.train.grad_accum_steps <= 1,
    };
    let mut adjoints = backward::backward(
        trainer,
        &run.stream,
        checkpoints,
        &load,
        adjoints,
        &settings,
    )?;
    if world > 1 {
        // Each rank's metagradients cover the rows it trained on: they add up (every score
        // column in one collective).
        let weights: Vec<Tensor> = adjoints.iter().map(|a| a.weights.shallow_clone()).collect();
        let summed = trainer.sum_over_ranks(&weights, &weights)?;
        for (a, w) in adjoints.iter_mut().zip(summed) {
            a.weights = w;
        }
    }
    drop(state);
    let backward_seconds = clock.elapsed().as_secs_f64();

    // Scores: the weights' metagradients, padding trimmed.
    let padded = run.stream.padding.num_rows > 0;
    let columns: Vec<Tensor> = adjoints
        .iter()
        .map(|a| {
            let w = a
                .weights
                .detach()
                .to_kind(tch::Kind::Float)
                .to_device(Device::Cpu);
            let n = w.size()[0] - i64::from(padded);
            w.narrow(0, 0, n)
        })
        .collect();
    if c.query.aggregation == Aggregation::None && rank == 0 {
        scores::write_per_query(&run.run, &columns)?;
    }
    let scores = Tensor::stack(&columns, -1);
    // Rank 0 writes the scores; every rank returns them.
    let scores_path = if rank == 0 {
        let path = match run.stream.weights.dim() {
            1 => scores::write_document_scores(&run.run, &scores)?,
            _ => {
                let lengths: Vec<usize> = run.rows.iter().map(TokenizedRow::len).collect();
                let doc_ids = example_doc_ids(&run);
                scores::write_token_scores(&run.run, &scores, &lengths, &doc_ids)?
            }
        };
        // The plot is a diagnostic: the scores are saved, so a failure only warns (as Bergson).
        let levels = plot::per_step_level(&scores, batch_size);
        if let Err(e) = plot::write_score_plot(&levels, &run.run.join("score_vs_step.png")) {
            tracing::warn!("score plot failed ({e}); the scores are saved");
        }
        path
    } else {
        run.run.join("scores")
    };
    Ok(MagicSummary {
        run_path: run.run.clone(),
        scores_path,
        num_steps: run.num_steps(),
        losses,
        query_loss,
        scores,
        train_seconds,
        query_seconds,
        backward_seconds,
    })
}

/// Each example's per-token document ids, as wide as the longest row (Bergson's `doc_ids`
/// column: the chunker's, or the row's own index repeated).
fn example_doc_ids(run: &TrainingRun) -> Vec<Vec<i64>> {
    match &run.doc_ids {
        Some(ids) => ids.clone(),
        None => {
            let width = run.rows.iter().map(TokenizedRow::len).max().unwrap_or(0);
            (0..run.rows.len()).map(|r| vec![r as i64; width]).collect()
        }
    }
}
