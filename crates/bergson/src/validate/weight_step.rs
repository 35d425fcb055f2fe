//! `--method weight_step`, as Python Bergson 2.5.1's `validate_scores` runs it: a gradient
//! step on the data weights. The step direction is each unit's score averaged over the query
//! columns, `s_step`; for each `--lrs` value the model is retrained with weights
//! `1 - lr * s_step`, and the query loss change `diff = baseline - retrained` is written
//! beside its first-order prediction `lr * <s_q, s_step>` (per query, or their mean).
//! `weight_step.csv`: `lr,diff,predicted_diff` (or `lr,query,diff,predicted_diff`).

use super::journal::{csv_text, py_float, write_atomic, Journal};
use super::Validation;
use crate::Result;
use std::path::PathBuf;

/// Runs the weight steps (resuming from the journal with `--resume`); returns the CSV and the
/// report.
pub fn run_weight_step(v: &mut Validation) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let c = v.config;
    let scores = &v.scores;
    let (units, nq) = (scores.num_units(), scores.num_queries);
    let step: Vec<f64> = (0..units)
        .map(|u| scores.row(u).iter().map(|&x| f64::from(x)).sum::<f64>() / nq as f64)
        .collect();
    let predicted: Vec<f64> = (0..nq)
        .map(|q| {
            (0..units)
                .map(|u| f64::from(scores.row(u)[q]) * step[u])
                .sum()
        })
        .collect();
    let mean_predicted = predicted.iter().sum::<f64>() / nq as f64;
    let multi = scores.multi_query();
    let head: Vec<&str> = if multi {
        vec!["lr", "query", "diff", "predicted_diff"]
    } else {
        vec!["lr", "diff", "predicted_diff"]
    };
    let csv_path = v.run_path().join("weight_step.csv");
    let (mut journal, done) = Journal::open(&csv_path, &head, c.train.resume)?;
    let per_lr = v.num_queries();
    let baseline = v.baseline_losses();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut report = Vec::new();
    let mut phase =
        crate::progress::Phase::new("Weight steps", "retrains", Some(c.lrs.len() as u64));
    for (k, &lr) in c.lrs.iter().enumerate() {
        // The journal holds the lrs in order; a finished one has all its rows.
        let journaled = done.get(k * per_lr..(k + 1) * per_lr);
        if let Some(block) = journaled.filter(|b| b.iter().all(|r| r[0] == py_float(lr))) {
            rows.extend(block.iter().cloned());
            phase.inc(1);
            continue;
        }
        let scaled: Vec<f64> = step.iter().map(|s| lr * s).collect();
        let state = v.retrain_stepped(&scaled)?;
        let losses = v.query_losses(&state.params)?;
        let diffs: Vec<f64> = baseline.iter().zip(&losses).map(|(b, l)| b - l).collect();
        let block: Vec<Vec<String>> = if multi {
            (0..nq)
                .map(|q| {
                    vec![
                        py_float(lr),
                        q.to_string(),
                        py_float(diffs[q]),
                        py_float(lr * predicted[q]),
                    ]
                })
                .collect()
        } else {
            vec![vec![
                py_float(lr),
                py_float(diffs[0]),
                py_float(lr * mean_predicted),
            ]]
        };
        journal.append(&block)?;
        let mean_diff = diffs.iter().sum::<f64>() / diffs.len() as f64;
        report.push(format!(
            "lr {lr}: {}diff {mean_diff:.6} (predicted {:.6})",
            if multi { "mean " } else { "" },
            lr * mean_predicted
        ));
        rows.extend(block);
        phase.inc(1);
    }
    drop(phase);
    write_atomic(&csv_path, csv_text(&head, &rows).as_bytes())?;
    journal.remove()?;
    Ok((vec![csv_path], report))
}
