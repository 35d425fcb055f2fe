//! The linear datamodeling score (`--method lds`), as Python Bergson 2.5.1's
//! `validate_scores` computes it: for each leave-k-out subset, retrain with its documents
//! weighted `--subset_weight`, `diff = baseline loss - retrained loss` and `score_sum` = the
//! subset's summed (loss-signed) scores; the LDS is Spearman's ρ between the two over the
//! subsets (per query with multi-query scores), Pearson's r beside it.
//!
//! Outputs as 2.5.1's: `validation.csv` (`subset,diff,score_sum`, or `subset,query,diff,
//! score_sum`), `summary.csv` (`spearman_corr,spearman_p,pearson_corr,pearson_p,N,
//! baseline_loss`, with a leading `query` column per query), `_{start}_{stop}` names for a
//! slice. bergson-rs adds `bootstrap.csv`: 95% percentile-bootstrap intervals of both
//! correlations (10,000 resamples of the subsets, seeded with `--seed`).

use super::journal::{csv_text, py_float, write_atomic, Journal};
use super::stats::{bootstrap_ci, pearson, spearman, BOOTSTRAP_RESAMPLES};
use super::subsets::{lds_subsets, read_subsets, write_subsets};
use super::Validation;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One subset's outcome: per reported query, the loss change and the summed scores.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsetResult {
    /// `baseline - retrained` per query.
    pub diffs: Vec<f64>,
    /// The subset's summed scores per query.
    pub score_sums: Vec<f64>,
}

/// The subsets of this run: the manifest (`--manifest`, or `<run>/subsets.json` when it
/// exists), else drawn from `--seed` as Bergson draws them.
pub fn resolve_subsets(v: &Validation) -> Result<Vec<Vec<usize>>> {
    let c = v.config;
    let manifest = if c.manifest.is_empty() {
        v.run_path().join("subsets.json")
    } else {
        PathBuf::from(&c.manifest)
    };
    let subsets = if manifest.is_file() {
        read_subsets(&manifest)?
    } else if !c.manifest.is_empty() {
        return Err(Error::input(format!(
            "--manifest {}: no such file; give a subsets.json written by validate",
            c.manifest
        )));
    } else {
        let valid = v.scores.eligible(c.exclude_zero_scores);
        let count = c.count().unwrap_or_default();
        lds_subsets(&valid, count, c.fraction(), c.train.seed)
    };
    let units = v.scores.num_units();
    if let Some(bad) = subsets.iter().flatten().find(|&&u| u >= units) {
        return Err(Error::input(format!(
            "{}: subset document id {bad} is past the {units} scored units; the manifest belongs to another training set",
            manifest.display()
        )));
    }
    Ok(subsets)
}

/// The header of `validation.csv`.
fn header(multi: bool) -> Vec<&'static str> {
    if multi {
        vec!["subset", "query", "diff", "score_sum"]
    } else {
        vec!["subset", "diff", "score_sum"]
    }
}

/// The journaled rows of finished subsets, by subset.
fn finished(rows: &[Vec<String>], multi: bool, nq: usize) -> BTreeMap<usize, SubsetResult> {
    let mut by: BTreeMap<usize, Vec<(usize, f64, f64)>> = BTreeMap::new();
    for r in rows {
        let parsed = if multi {
            (|| {
                Some((
                    r[0].parse().ok()?,
                    r[1].parse().ok()?,
                    r[2].parse().ok()?,
                    r[3].parse().ok()?,
                ))
            })()
        } else {
            (|| {
                Some((
                    r[0].parse().ok()?,
                    0usize,
                    r[1].parse().ok()?,
                    r[2].parse().ok()?,
                ))
            })()
        };
        if let Some((s, q, d, ss)) = parsed {
            by.entry(s).or_default().push((q, d, ss));
        }
    }
    by.into_iter()
        .filter(|(_, qs)| qs.len() == nq && qs.iter().enumerate().all(|(i, q)| q.0 == i))
        .map(|(s, qs)| {
            (
                s,
                SubsetResult {
                    diffs: qs.iter().map(|q| q.1).collect(),
                    score_sums: qs.iter().map(|q| q.2).collect(),
                },
            )
        })
        .collect()
}

fn rows_of(i: usize, r: &SubsetResult, multi: bool) -> Vec<Vec<String>> {
    if multi {
        (0..r.diffs.len())
            .map(|q| {
                vec![
                    i.to_string(),
                    q.to_string(),
                    py_float(r.diffs[q]),
                    py_float(r.score_sums[q]),
                ]
            })
            .collect()
    } else {
        vec![vec![
            i.to_string(),
            py_float(r.diffs[0]),
            py_float(r.score_sums[0]),
        ]]
    }
}

/// Runs the LDS: retrains subsets `start..stop` (resuming from the journal with `--resume`),
/// writes the CSVs, and returns them with the report.
pub fn run_lds(v: &mut Validation) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let c = v.config;
    let subsets = resolve_subsets(v)?;
    let n = subsets.len();
    let stop = c.stop.unwrap_or(n);
    if stop > n || c.start >= stop {
        return Err(Error::input(format!(
            "--start {} --stop {stop}: the slice must lie within the {n} subsets (0 <= start < stop <= {n})",
            c.start
        )));
    }
    let sliced = (c.start, stop) != (0, n);
    let run = v.run_path().to_path_buf();
    if c.start == 0 {
        // Bergson writes it only with --save_models; it is the manifest of a resumed run.
        write_subsets(&run.join("subsets.json"), &subsets)?;
    }
    let suffix = if sliced {
        format!("_{}_{stop}", c.start)
    } else {
        String::new()
    };
    let csv_path = run.join(format!("validation{suffix}.csv"));
    let multi = v.scores.multi_query();
    let nq = v.num_queries();
    let head = header(multi);
    let (mut journal, done) = Journal::open(&csv_path, &head, c.train.resume)?;
    let mut results = finished(&done, multi, nq);
    results.retain(|&i, _| i >= c.start && i < stop);
    let baseline = v.baseline_losses();
    let mut phase = crate::progress::Phase::new(
        "Validating",
        "subsets",
        Some((stop - c.start - results.len()) as u64),
    );
    for (i, subset) in subsets.iter().enumerate().take(stop).skip(c.start) {
        if results.contains_key(&i) {
            continue;
        }
        let state = v.retrain_without(subset)?;
        v.save_model(&format!("subset_{i}"), &state.params)?;
        let losses = v.query_losses(&state.params)?;
        let r = SubsetResult {
            diffs: baseline.iter().zip(&losses).map(|(b, l)| b - l).collect(),
            score_sums: v.scores.sums(subset),
        };
        journal.append(&rows_of(i, &r, multi))?;
        results.insert(i, r);
        phase.inc(1);
    }
    drop(phase);

    let out = write_lds_outputs(
        &run,
        &results,
        &baseline,
        multi,
        &suffix,
        stop - c.start,
        c.train.seed,
    )?;
    journal.remove()?;
    Ok(out)
}

/// Writes `validation{suffix}.csv`, `summary{suffix}.csv` and `bootstrap{suffix}.csv` of the
/// subsets' `results` into `run`; returns them and the report. `count` is the summary's `N`.
pub fn write_lds_outputs(
    run: &std::path::Path,
    results: &BTreeMap<usize, SubsetResult>,
    baseline: &[f64],
    multi: bool,
    suffix: &str,
    count: usize,
    seed: u64,
) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let head = header(multi);
    let nq = baseline.len();
    let csv_path = run.join(format!("validation{suffix}.csv"));
    let rows: Vec<Vec<String>> = results
        .iter()
        .flat_map(|(&i, r)| rows_of(i, r, multi))
        .collect();
    write_atomic(&csv_path, csv_text(&head, &rows).as_bytes())?;

    // Correlations per query over the subsets.
    let mut summary_rows = Vec::new();
    let mut ci_rows = Vec::new();
    let mut report = Vec::new();
    let mut rhos = Vec::new();
    for (q, base) in baseline.iter().enumerate() {
        let d: Vec<f64> = results.values().map(|r| r.diffs[q]).collect();
        let s: Vec<f64> = results.values().map(|r| r.score_sums[q]).collect();
        let sp = spearman(&d, &s);
        let pe = pearson(&d, &s);
        let sci = bootstrap_ci(&d, &s, spearman, BOOTSTRAP_RESAMPLES, seed);
        let pci = bootstrap_ci(&d, &s, pearson, BOOTSTRAP_RESAMPLES, seed);
        rhos.push(sp.statistic);
        let mut row = vec![
            py_float(sp.statistic),
            py_float(sp.pvalue),
            py_float(pe.statistic),
            py_float(pe.pvalue),
            count.to_string(),
            py_float(*base),
        ];
        let mut ci = vec![
            py_float(sp.statistic),
            py_float(sci.0),
            py_float(sci.1),
            py_float(pe.statistic),
            py_float(pci.0),
            py_float(pci.1),
            count.to_string(),
            BOOTSTRAP_RESAMPLES.to_string(),
            seed.to_string(),
        ];
        let label = if multi {
            row.insert(0, q.to_string());
            ci.insert(0, q.to_string());
            format!("Query {q}: ")
        } else {
            String::new()
        };
        report.push(format!(
            "{label}Spearman {:.4} (p={:.2e}, 95% CI [{:.4}, {:.4}])  Pearson {:.4} (p={:.2e}, 95% CI [{:.4}, {:.4}])",
            sp.statistic, sp.pvalue, sci.0, sci.1, pe.statistic, pe.pvalue, pci.0, pci.1
        ));
        summary_rows.push(row);
        ci_rows.push(ci);
    }
    if multi {
        let finite: Vec<f64> = rhos.iter().copied().filter(|r| r.is_finite()).collect();
        let mean = finite.iter().sum::<f64>() / finite.len().max(1) as f64;
        report.push(format!("Mean Spearman across {nq} queries: {mean:.4}"));
    }
    let mut summary_head = vec![
        "spearman_corr",
        "spearman_p",
        "pearson_corr",
        "pearson_p",
        "N",
        "baseline_loss",
    ];
    let mut ci_head = vec![
        "spearman_corr",
        "spearman_low",
        "spearman_high",
        "pearson_corr",
        "pearson_low",
        "pearson_high",
        "N",
        "resamples",
        "seed",
    ];
    if multi {
        summary_head.insert(0, "query");
        ci_head.insert(0, "query");
    }
    let summary_path = run.join(format!("summary{suffix}.csv"));
    write_atomic(
        &summary_path,
        csv_text(&summary_head, &summary_rows).as_bytes(),
    )?;
    let ci_path = run.join(format!("bootstrap{suffix}.csv"));
    write_atomic(&ci_path, csv_text(&ci_head, &ci_rows).as_bytes())?;
    Ok((vec![csv_path, summary_path, ci_path], report))
}
