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

    // The filter against the random removals, per query.
    let n = subsets.len();
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
        let col: Vec<f64> = by_subset
            .values()
            .map(|b| b[q][5].parse().unwrap_or(f64::NAN))
            .collect();
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
    Ok((outputs, report))
}
