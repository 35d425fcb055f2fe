//! What the report page shows, independent of HTML: one section per query (or score column)
//! with its ranked rows, their texts or per-token heat maps, and the distribution of all scores.

use std::ops::Range;

use super::query_record::{RecordedHit, RecordedQuery};
use super::rows::{DocText, TextPart};

/// The whole page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Headline, e.g. `Scores of runs/doc`.
    pub title: String,
    /// Name and value pairs describing the input (kind, rows, model, dataset, ...).
    pub facts: Vec<(String, String)>,
    /// Things the reader should know (texts unavailable and why, rows not written).
    pub notes: Vec<String>,
    /// False when low scores are the proponents (MAGIC's loss differences).
    pub higher_is_better: bool,
    /// One section per query or score column.
    pub sections: Vec<Section>,
}

/// One query (or one score column standing for several queries).
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// `Query 0`, `All 3 queries`, ...
    pub heading: String,
    /// The query texts this column scores against (several for `nearest` or aggregated
    /// queries; empty when unknown).
    pub queries: Vec<DocText>,
    /// How the column relates to the queries, when it is not simply one query's scores.
    pub summary: Option<String>,
    /// Most supporting rows first.
    pub top: Vec<Hit>,
    /// Most opposing rows first (none that are already in `top`).
    pub bottom: Vec<Hit>,
    /// Every written score of the column, when all are known (score runs, not query records).
    pub distribution: Option<Vec<f64>>,
    /// Training rows whose score was never written (shown as missing, not as 0).
    pub missing: Vec<usize>,
}

/// One ranked row.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// 1-based rank within its list.
    pub rank: usize,
    /// The training row.
    pub row: usize,
    /// Its score (a per-token store: the sum of its token scores).
    pub score: f64,
    /// Its text, cut to the character limit; `None` when unavailable.
    pub text: Option<DocText>,
    /// Characters cut from the text.
    pub omitted_chars: usize,
    /// Per-token scores, for per-token stores.
    pub heat: Option<HeatMap>,
}

/// A document's tokens coloured by their scores.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatMap {
    /// Runs of text, one per token (tokens that decode to part of a character are merged into
    /// the span that completes it).
    pub spans: Vec<HeatSpan>,
    /// Tokens left out past the character limit.
    pub omitted_tokens: usize,
}

impl HeatMap {
    /// The largest |score| of the spans: the end of the colour scale.
    pub fn scale(&self) -> f64 {
        self.spans
            .iter()
            .filter_map(|s| match s.score {
                TokenScore::Scored(v) => Some(v.abs()),
                _ => None,
            })
            .fold(0.0, f64::max)
    }
}

/// A run of text and the score of the tokens it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatSpan {
    /// The decoded text.
    pub text: String,
    /// Token positions it covers.
    pub tokens: Range<usize>,
    /// Their score.
    pub score: TokenScore,
}

/// A token's score in a per-token store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenScore {
    /// Its row's score (summed over the tokens of a merged span).
    Scored(f64),
    /// The token has no row (the last position predicts nothing; with output influence, the
    /// first is never predicted).
    NoRow,
    /// Its row was never written.
    Missing,
}

/// `text` cut to `max_chars` characters over all its parts; returns the characters cut.
pub fn truncate(text: &DocText, max_chars: usize) -> (DocText, usize) {
    let mut left = max_chars;
    let mut omitted = 0;
    let mut out = Vec::new();
    for part in text {
        let n = part.text.chars().count();
        if left == 0 {
            omitted += n;
            continue;
        }
        let keep = n.min(left);
        left -= keep;
        omitted += n - keep;
        out.push(TextPart {
            label: part.label.clone(),
            text: part.text.chars().take(keep).collect(),
        });
    }
    (out, omitted)
}

/// The page of a `bergson query --record` CSV.
pub fn query_record_page(source: &str, queries: &[RecordedQuery], max_chars: usize) -> Page {
    let hits = |recorded: &[RecordedHit]| -> Vec<Hit> {
        recorded
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let text = vec![TextPart {
                    label: None,
                    text: h.text.clone(),
                }];
                let (text, omitted_chars) = truncate(&text, max_chars);
                Hit {
                    rank: i + 1,
                    row: h.row,
                    score: h.score,
                    text: Some(text),
                    omitted_chars,
                    heat: None,
                }
            })
            .collect()
    };
    let sections = queries
        .iter()
        .enumerate()
        .map(|(i, q)| Section {
            heading: format!("Query {i}"),
            queries: vec![vec![TextPart {
                label: None,
                text: q.query.clone(),
            }]],
            summary: None,
            top: hits(&q.top),
            bottom: hits(&q.bottom),
            distribution: None,
            missing: Vec::new(),
        })
        .collect();
    Page {
        title: format!("Query results recorded in {source}"),
        facts: vec![
            ("Input".into(), format!("{source} (bergson query --record)")),
            ("Queries".into(), queries.len().to_string()),
        ],
        notes: vec![
            "A query record holds only the rows the session printed; score a dataset with \
             `bergson score` to see every row's score."
                .into(),
        ],
        higher_is_better: true,
        sections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(label: Option<&str>, text: &str) -> TextPart {
        TextPart {
            label: label.map(str::to_string),
            text: text.into(),
        }
    }

    #[test]
    fn truncation_counts_characters_across_parts() {
        let text = vec![
            part(Some("prompt"), "héllo"),
            part(Some("completion"), "wörld!"),
        ];
        let (cut, omitted) = truncate(&text, 7);
        assert_eq!(
            cut,
            vec![
                part(Some("prompt"), "héllo"),
                part(Some("completion"), "wö")
            ]
        );
        assert_eq!(omitted, 4);
        let (whole, none) = truncate(&text, 100);
        assert_eq!((whole, none), (text.clone(), 0));
        let (first, omitted) = truncate(&text, 2);
        assert_eq!((first, omitted), (vec![part(Some("prompt"), "hé")], 9));
    }
}
