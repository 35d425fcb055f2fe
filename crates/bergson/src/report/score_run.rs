//! The page of a score run: each score column ranked, with the texts of its rows, the query
//! texts from the query index the run names, and per-token heat maps for per-token stores.

use std::path::Path;

use super::heat::{heat_map, TokenInfluence};
use super::page::{truncate, Hit, Page, Section};
use super::rows::{DocText, RowsRequest, RunRows};
use super::run_config::{RunConfig, ScoreSettings};
use super::scores::ScoreStore;
use super::ReportOptions;
use crate::config::Aggregation;
use crate::index::info::IndexInfo;
use crate::Result;

/// Builds the page of the score run in `dir`.
pub fn score_run_page(dir: &Path, opts: &ReportOptions) -> Result<Page> {
    let store = ScoreStore::open(dir)?;
    let mut notes = Vec::new();
    let cfg = RunConfig::read(dir).unwrap_or_else(|e| {
        notes.push(format!(
            "config.yaml unreadable, so texts and queries are unknown: {e}"
        ));
        None
    });
    let settings = cfg
        .as_ref()
        .and_then(|c| c.score.clone())
        .unwrap_or_default();
    let rows = RunRows::load(
        dir,
        cfg.as_ref(),
        RowsRequest {
            text_field: opts.text_field.as_deref(),
            need_tokens: store.attribute_tokens(),
            num_rows: store.num_items(),
            candidates: store.candidates(),
        },
    )?;
    notes.extend(rows.notes.iter().cloned());
    let columns = column_labels(cfg.as_ref(), &settings, store.num_scores(), &mut notes);

    let influence = TokenInfluence::parse(&settings.token_influence);
    let mut sections = Vec::with_capacity(columns.len());
    for (column, label) in columns.into_iter().enumerate() {
        let scores = store.item_scores(column);
        let ranked = rank(&scores, settings.higher_is_better);
        let k = opts.top_k.min(ranked.len());
        let bottom_k = opts.top_k.min(ranked.len() - k);
        let hit = |rank: usize, &(item, score): &(usize, f64)| -> Hit {
            let (text, omitted_chars) = match rows.text(item) {
                Some(t) => {
                    let (t, o) = truncate(t, opts.max_chars);
                    (Some(t), o)
                }
                None => (None, 0),
            };
            let heat = match (
                store.attribute_tokens(),
                rows.tokens(item),
                rows.tokenizer(),
            ) {
                (true, Some(ids), Some(tokenizer)) => {
                    let token_rows: Vec<Option<f32>> = store
                        .item_rows(item)
                        .map(|r| store.score(r, column))
                        .collect();
                    heat_map(ids, &token_rows, influence, tokenizer, opts.max_chars)
                }
                _ => None,
            };
            Hit {
                rank,
                row: store.training_row(item),
                score,
                text,
                omitted_chars,
                heat,
            }
        };
        let top = ranked[..k]
            .iter()
            .enumerate()
            .map(|(i, r)| hit(i + 1, r))
            .collect();
        let bottom = ranked[ranked.len() - bottom_k..]
            .iter()
            .rev()
            .enumerate()
            .map(|(i, r)| hit(i + 1, r))
            .collect();
        let missing = scores
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_none())
            .map(|(item, _)| store.training_row(item))
            .collect();
        let nan = scores.iter().flatten().filter(|s| s.is_nan()).count();
        if nan > 0 {
            notes.push(format!(
                "{}: {nan} NaN scores, left out of the ranking",
                label.heading
            ));
        }
        sections.push(Section {
            heading: label.heading,
            queries: label.queries,
            summary: label.summary,
            top,
            bottom,
            distribution: Some(ranked.iter().map(|&(_, s)| s).collect()),
            missing,
        });
    }
    if store.attribute_tokens() && rows.tokenizer().is_none() {
        notes.push(
            "per-token scores are summed per document; heat maps need the run's tokenizer".into(),
        );
    }

    let mut facts = vec![
        (
            "Input".to_string(),
            format!("{} (bergson score)", dir.display()),
        ),
        (
            "Rows".into(),
            if store.attribute_tokens() {
                format!(
                    "{} documents, scored per token ({} token rows)",
                    store.num_items(),
                    store.num_rows()
                )
            } else {
                format!("{} documents", store.num_items())
            },
        ),
        (
            "Scores".into(),
            format!(
                "{} column{} of {}",
                store.num_scores(),
                if store.num_scores() == 1 { "" } else { "s" },
                store.dtype().name()
            ),
        ),
    ];
    if let Some(c) = store.candidates() {
        facts.push((
            "Candidates".into(),
            format!("{} training rows chosen by an earlier run", c.len()),
        ));
    }
    if let Some(cfg) = &cfg {
        let data = &cfg.index_cfg.data;
        facts.push(("Model".into(), cfg.index_cfg.model.clone()));
        facts.push((
            "Dataset".into(),
            format!("{} (split {})", data.dataset, data.split),
        ));
        if !settings.query_path.is_empty() {
            facts.push(("Query index".into(), settings.query_path.clone()));
        }
    }
    facts.push((
        "Orientation".into(),
        if settings.higher_is_better {
            "higher scores support the query (proponents)".into()
        } else {
            "lower scores support the query (higher_is_better: false, as MAGIC's loss \
             differences)"
                .into()
        },
    ));
    let total_missing: usize = sections.iter().map(|s| s.missing.len()).sum();
    if total_missing > 0 {
        notes.push(format!(
            "{total_missing} scores were never written (an interrupted run?); those rows are \
             shown as missing and left out of the ranking"
        ));
    }

    Ok(Page {
        title: format!("Attribution scores: {}", dir.display()),
        facts,
        notes,
        higher_is_better: settings.higher_is_better,
        sections,
    })
}

/// The written, non-NaN scores as `(item, score)`, most supporting first (highest scores, or
/// lowest when `higher_is_better` is false); ties keep row order.
fn rank(scores: &[Option<f64>], higher_is_better: bool) -> Vec<(usize, f64)> {
    let mut ranked: Vec<(usize, f64)> = scores
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.filter(|v| !v.is_nan()).map(|v| (i, v)))
        .collect();
    ranked.sort_by(|a, b| {
        let order = if higher_is_better {
            b.1.total_cmp(&a.1)
        } else {
            a.1.total_cmp(&b.1)
        };
        order.then(a.0.cmp(&b.0))
    });
    ranked
}

/// What a score column stands for.
struct ColumnLabel {
    heading: String,
    queries: Vec<DocText>,
    summary: Option<String>,
}

/// One label per score column: a query and its text, or all queries when `nearest` or an
/// aggregated query folded them into one column.
fn column_labels(
    cfg: Option<&RunConfig>,
    settings: &ScoreSettings,
    num_scores: usize,
    notes: &mut Vec<String>,
) -> Vec<ColumnLabel> {
    let texts = cfg
        .filter(|_| !settings.query_path.is_empty())
        .and_then(|cfg| query_texts(&cfg.resolve(&settings.query_path), notes));
    let numbered = |i: usize| ColumnLabel {
        heading: format!("Query {i}"),
        queries: Vec::new(),
        summary: None,
    };
    let Some(texts) = texts else {
        return (0..num_scores).map(numbered).collect();
    };
    let known: Vec<DocText> = texts.iter().flatten().cloned().collect();
    if texts.len() == num_scores {
        return texts
            .into_iter()
            .enumerate()
            .map(|(i, t)| ColumnLabel {
                queries: t.into_iter().collect(),
                ..numbered(i)
            })
            .collect();
    }
    if num_scores == 1 {
        let how = if settings.score == "nearest" {
            "each row's score is its best over these queries (score: nearest)".to_string()
        } else {
            match cfg.map(|c| c.aggregation) {
                Some(a @ (Aggregation::Mean | Aggregation::Sum)) => {
                    format!("scores against the {a} of these queries' gradients")
                }
                _ => "scores against these queries folded into one gradient".into(),
            }
        };
        return vec![ColumnLabel {
            heading: format!("All {} queries", texts.len()),
            queries: known,
            summary: Some(how),
        }];
    }
    notes.push(format!(
        "the query index has {} queries but the store {num_scores} score columns; columns are \
         shown by number",
        texts.len()
    ));
    (0..num_scores).map(numbered).collect()
}

/// The texts of the query index at `dir`, one per query (`None` where unknown), or `None` with
/// a note when the index cannot be read.
fn query_texts(dir: &str, notes: &mut Vec<String>) -> Option<Vec<Option<DocText>>> {
    let dir = Path::new(dir);
    let info = match IndexInfo::read(dir) {
        Ok(info) => info,
        Err(e) => {
            notes.push(format!("query texts unavailable: {e}"));
            return None;
        }
    };
    let cfg = RunConfig::read(dir).unwrap_or_else(|e| {
        notes.push(format!("query texts unavailable: {e}"));
        None
    });
    let request = RowsRequest {
        text_field: None,
        need_tokens: false,
        num_rows: info.num_items,
        candidates: None,
    };
    let rows = match RunRows::load(dir, cfg.as_ref(), request) {
        Ok(rows) => rows,
        Err(e) => {
            notes.push(format!("query texts unavailable: {e}"));
            return None;
        }
    };
    notes.extend(rows.notes.iter().map(|n| format!("queries: {n}")));
    Some((0..info.num_items).map(|i| rows.text(i).cloned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_follows_orientation_and_skips_missing() {
        let scores = [
            Some(1.0),
            None,
            Some(3.0),
            Some(f64::NAN),
            Some(-2.0),
            Some(3.0),
        ];
        let up: Vec<usize> = rank(&scores, true).iter().map(|r| r.0).collect();
        assert_eq!(up, [2, 5, 0, 4]);
        let down: Vec<usize> = rank(&scores, false).iter().map(|r| r.0).collect();
        assert_eq!(down, [4, 0, 2, 5]);
    }
}
