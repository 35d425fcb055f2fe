//! `--method filter`, as Python Bergson 2.5.1's `tail_filter_retrain` runs it: for each query,
//! retrain without its `max(1, round(fraction * pool))` strongest proponents (the most
//! negative loss-signed scores; `--direction detractors`: the most positive) and record the
//! query loss change `filtered - baseline` (positive: the removal hurt the query, the opposite
//! sign to the LDS `diff`). Random removals of as many documents (`--controls retrain`,
//! `--count` of them, drawn from `--seed`) are the comparison.
//!
//! Outputs as 2.5.1's: `filter_{direction}.csv` (`query,n_removed,baseline_loss,
//! filtered_loss,loss_change`), `random_filter.csv` (`subset,query,n_removed,baseline_loss,
//! filtered_loss,loss_change`) and `filter_summary.csv` (`query,n_removed,filter_change,
//! random_mean,random_sd,random_n,rank`; rank 1 is the most damaging removal).

use super::journal::{csv_text, py_float, write_atomic, Journal};
use super::subsets::{control_subsets, draw_size};
use super::Validation;
use crate::config::{ControlsKind, FilterDirection};
use crate::Result;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The units removed for query `q`: the `k` eligible units at the chosen end of its ranking.
pub fn tail(col: &[f64], valid: &[usize], k: usize, direction: FilterDirection) -> Vec<usize> {
    let mut order: Vec<usize> = valid.to_vec();
    match direction {
        FilterDirection::Proponents => order.sort_by(|&a, &b| col[a].total_cmp(&col[b])),
        FilterDirection::Detractors => order.sort_by(|&a, &b| col[b].total_cmp(&col[a])),
    }
    order.truncate(k.min(order.len()));
    order
}

/// Runs the filter and its random controls (resuming from the journals with `--resume`).
pub fn run_filter(v: &mut Validation) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let c = v.config;
    let nq = v.num_queries();
    let valid = v.scores.eligible(c.exclude_zero_scores);
    let pool = valid.len();
    let k = draw_size(c.fraction(), pool);
    let baseline = v.baseline_losses();
    let run = v.run_path().to_path_buf();
    let name = match c.direction {
        FilterDirection::Proponents => "filter-proponents",
        FilterDirection::Detractors => "filter-detractors",
    };

    // A bank of controls is checked before any ranked retraining, as Bergson does.
    let bank = if c.controls == ControlsKind::Bank {
        Some(bank_subsets(v, k)?)
    } else {
        None
    };

    let csv_path = run.join(format!("filter_{}.csv", c.direction.as_str()));
    let head = [
        "query",
        "n_removed",
        "baseline_loss",
        "filtered_loss",
        "loss_change",
    ];
    let (mut journal, done) = Journal::open(&csv_path, &head, c.train.resume)?;
    let mut by_query: BTreeMap<usize, Vec<String>> = done
        .into_iter()
        .filter_map(|r| Some((r[0].parse().ok()?, r)))
        .filter(|(q, _)| *q < nq)
        .collect();
    let mut phase = crate::progress::Phase::new(name, "queries", Some(nq as u64));
    for q in 0..nq {
        if by_query.contains_key(&q) {
            phase.inc(1);
            continue;
        }
        let col: Vec<f64> = (0..v.scores.num_units())
            .map(|u| f64::from(v.scores.row(u)[q]))
            .collect();
        let removed = tail(&col, &valid, k, c.direction);
        let state = v.retrain_without(&removed)?;
        let losses = v.query_losses(&state.params)?;
        let row = vec![
            q.to_string(),
            removed.len().to_string(),
            py_float(baseline[q]),
            py_float(losses[q]),
            py_float(losses[q] - baseline[q]),
        ];
        journal.append(std::slice::from_ref(&row))?;
        by_query.insert(q, row);
        phase.inc(1);
    }
    drop(phase);
    let rows: Vec<Vec<String>> = by_query.values().cloned().collect();
    write_atomic(&csv_path, csv_text(&head, &rows).as_bytes())?;
    journal.remove()?;
    let changes: Vec<f64> = rows
        .iter()
        .map(|r| r[4].parse().unwrap_or(f64::NAN))
        .collect();
    let mean = changes.iter().sum::<f64>() / nq as f64;
    let mut report = vec![format!(
        "{name}: mean loss change {mean:.6} over {nq} quer{} ({k} of {pool} docs removed per query, {:.3}%)",
        if nq == 1 { "y" } else { "ies" },
        100.0 * k as f64 / pool.max(1) as f64
    )];
    let mut outputs = vec![csv_path];
    if c.controls == ControlsKind::None {
        report.push("Skipping random baseline (controls kind: none)".into());
        return Ok((outputs, report));
    }

    if let Some(subsets) = bank {
        return bank_controls(v, k, subsets, changes, outputs, report);
    }
    // Random controls: as many documents, drawn from the seed.
    let subsets = control_subsets(&valid, k, c.count().unwrap_or_default(), c.train.seed);
    let random_path = run.join("random_filter.csv");
    let rhead = [
        "subset",
        "query",
        "n_removed",
        "baseline_loss",
        "filtered_loss",
        "loss_change",
    ];
    let (mut journal, done) = Journal::open(&random_path, &rhead, c.train.resume)?;
    let mut by_subset: BTreeMap<usize, Vec<Vec<String>>> = BTreeMap::new();
    for r in done {
        if let Ok(i) = r[0].parse::<usize>() {
            by_subset.entry(i).or_default().push(r);
        }
    }
    by_subset.retain(|&i, rs| i < subsets.len() && rs.len() == nq);
    let mut phase = crate::progress::Phase::new("random", "retrains", Some(subsets.len() as u64));
    for (i, subset) in subsets.iter().enumerate() {
        if by_subset.contains_key(&i) {
            phase.inc(1);
            continue;
        }
        let state = v.retrain_without(subset)?;
        let losses = v.query_losses(&state.params)?;
        let block: Vec<Vec<String>> = (0..nq)
            .map(|q| {
                vec![
                    i.to_string(),
                    q.to_string(),
                    subset.len().to_string(),
                    py_float(baseline[q]),
                    py_float(losses[q]),
                    py_float(losses[q] - baseline[q]),
                ]
            })
            .collect();
        journal.append(&block)?;
        by_subset.insert(i, block);
        phase.inc(1);
    }
    drop(phase);
    let rrows: Vec<Vec<String>> = by_subset.values().flatten().cloned().collect();
    write_atomic(&random_path, csv_text(&rhead, &rrows).as_bytes())?;
    journal.remove()?;
    outputs.push(random_path);

    let random: Vec<Vec<f64>> = by_subset
        .values()
        .map(|b| b.iter().map(|r| r[5].parse().unwrap_or(f64::NAN)).collect())
        .collect();
    write_summary(&run, name, k, &changes, &random, &mut outputs, &mut report)?;
    Ok((outputs, report))
}

/// Writes `filter_summary.csv`: the filter's loss change against the random removals'
/// (`random[subset][query]`), per query.
fn write_summary(
    run: &std::path::Path,
    name: &str,
    k: usize,
    changes: &[f64],
    random: &[Vec<f64>],
    outputs: &mut Vec<PathBuf>,
    report: &mut Vec<String>,
) -> Result<()> {
    let nq = changes.len();
    let n = random.len();
    report.push(format!(
        "Random baseline ({n} subsets of {k} docs): mean loss change {:.6}",
        random.iter().flatten().sum::<f64>() / (n * nq).max(1) as f64
    ));
    // The filter against the random removals, per query.
    let shead = [
        "query",
        "n_removed",
        "filter_change",
        "random_mean",
        "random_sd",
        "random_n",
        "rank",
    ];
    let mut srows = Vec::new();
    for q in 0..nq {
        let col: Vec<f64> = random.iter().map(|r| r[q]).collect();
        let mean = col.iter().sum::<f64>() / n.max(1) as f64;
        let sd = if n > 1 {
            (col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            f64::NAN
        };
        let rank = 1 + col.iter().filter(|&&x| x > changes[q]).count();
        report.push(format!(
            "Query {q}: {name} {:+.6}  random {mean:+.6} +/- {sd:.6}  rank {rank}/{}",
            changes[q],
            n + 1
        ));
        srows.push(vec![
            q.to_string(),
            k.to_string(),
            py_float(changes[q]),
            py_float(mean),
            py_float(sd),
            n.to_string(),
            rank.to_string(),
        ]);
    }
    let summary_path = run.join("filter_summary.csv");
    write_atomic(&summary_path, csv_text(&shead, &srows).as_bytes())?;
    outputs.push(summary_path);
    Ok(())
}

/// The control bank's subsets (`--controls bank`): its first `--count` (all without it).
fn bank_subsets(v: &Validation, k: usize) -> Result<Vec<Vec<usize>>> {
    let c = v.config;
    let dirs: Vec<PathBuf> = c.paths.iter().map(PathBuf::from).collect();
    let mut subsets = super::bank::control_bank_subsets(c, &dirs, k)?;
    if let Some(n) = c.count() {
        if n > subsets.len() {
            return Err(crate::Error::input(format!(
                "--count {n} exceeds the {} subsets of the control bank",
                subsets.len()
            )));
        }
        subsets.truncate(n);
    }
    if subsets.is_empty() {
        return Err(crate::Error::input("the control bank contains no subsets"));
    }
    Ok(subsets)
}

/// The random controls read from the banks in `--paths` (`--controls bank`): their first
/// `--count` subsets (all without it), each banked model's query losses averaged over the
/// banks, against the banks' own baselines.
fn bank_controls(
    v: &mut Validation,
    k: usize,
    subsets: Vec<Vec<usize>>,
    changes: Vec<f64>,
    mut outputs: Vec<PathBuf>,
    mut report: Vec<String>,
) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let c = v.config;
    let dirs: Vec<PathBuf> = c.paths.iter().map(PathBuf::from).collect();
    let nq = v.num_queries();
    let names = v.run.names.clone();
    let device = v.device;
    let (base, per_subset) = super::bank::average_bank_losses(&dirs, subsets.len(), nq, |dir| {
        let params = super::bank::load_params(&names, &c.train, dir, device)?;
        v.query_losses(&params)
    })?;
    let run = v.run_path().to_path_buf();
    let rhead = [
        "subset",
        "query",
        "n_removed",
        "baseline_loss",
        "filtered_loss",
        "loss_change",
    ];
    let mut rows = Vec::new();
    let mut random = Vec::new();
    for (i, (subset, losses)) in subsets.iter().zip(&per_subset).enumerate() {
        let mut row_changes = Vec::new();
        for q in 0..nq {
            let change = losses[q] - base[q];
            row_changes.push(change);
            rows.push(vec![
                i.to_string(),
                q.to_string(),
                subset.len().to_string(),
                py_float(base[q]),
                py_float(losses[q]),
                py_float(change),
            ]);
        }
        random.push(row_changes);
    }
    let random_path = run.join("random_filter.csv");
    write_atomic(&random_path, csv_text(&rhead, &rows).as_bytes())?;
    outputs.push(random_path);
    let name = format!("filter-{}", c.direction.as_str());
    write_summary(&run, &name, k, &changes, &random, &mut outputs, &mut report)?;
    Ok((outputs, report))
}
