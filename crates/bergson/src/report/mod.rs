//! `bergson report`: one self-contained HTML page of attribution results.
//!
//! The input is a score run as Python Bergson 2.5.1's `bergson score` writes it (read by
//! [`scores::ScoreStore`]; texts from its `data.hf` or the dataset its `config.yaml` names, query
//! texts from the query index it names), or the CSV `bergson query --record` appends to. For
//! each query the page shows the top-k and bottom-k training rows with their texts and scores,
//! per-token heat maps for per-token (`--attribute_tokens`) stores, and a histogram of all of
//! the query's scores.
//!
//! The rooms: [`scores`] reads the store, [`run_config`] the run's settings, [`rows`] the texts
//! and token ids of rows, [`query_record`] the CSV; [`score_run`] and [`page`] turn them into a
//! [`page::Page`], which [`html`] (with [`heat`] and [`histogram`]) renders.

pub mod heat;
pub mod histogram;
pub mod html;
pub mod page;
pub mod query_record;
pub mod rows;
pub mod run_config;
pub mod score_run;
pub mod scores;

use std::path::Path;

use crate::error::IoContext;
use crate::{Error, Result};

pub use page::Page;
pub use scores::ScoreStore;

/// What the report shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOptions {
    /// Rows listed at each end of every query's ranking.
    pub top_k: usize,
    /// The dataset column holding the texts (default: the columns the run tokenised).
    pub text_field: Option<String>,
    /// Characters of each text shown.
    pub max_chars: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            top_k: 10,
            text_field: None,
            max_chars: 2000,
        }
    }
}

/// Builds the page of `input`: a score run directory or a `bergson query --record` CSV.
pub fn build_page(input: &Path, opts: &ReportOptions) -> Result<Page> {
    let shown = input.display();
    if !input.exists() {
        return Err(Error::input(format!(
            "{shown} does not exist; give a score run directory (`bergson score` output) or a \
             `bergson query --record` CSV"
        )));
    }
    if input.is_dir() {
        if scores::is_score_store(input) {
            return score_run::score_run_page(input, opts);
        }
        let hint = if input.join("gradients.bin").is_file() {
            "it is a gradient index; score a dataset against it with `bergson score` and report \
             on that run"
        } else {
            "it has no scores.bin and info.json; give the directory `bergson score` wrote"
        };
        return Err(Error::input(format!("{shown} is not a score run: {hint}")));
    }
    std::fs::File::open(input).at_path(input)?;
    if query_record::is_query_record(input) {
        let queries = query_record::read_query_record(input)?;
        return Ok(page::query_record_page(
            &shown.to_string(),
            &queries,
            opts.max_chars,
        ));
    }
    Err(Error::input(format!(
        "{shown} is neither a score run directory nor a `bergson query --record` CSV (whose \
         header is {})",
        query_record::HEADER.join(",")
    )))
}

/// Renders the page of `input` as HTML (see [`build_page`]).
pub fn render_report(input: &Path, opts: &ReportOptions) -> Result<String> {
    Ok(html::render(&build_page(input, opts)?))
}

/// Writes the page of `input` to `output`; returns the page shown.
pub fn write_report(input: &Path, output: &Path, opts: &ReportOptions) -> Result<Page> {
    let page = build_page(input, opts)?;
    std::fs::write(output, html::render(&page)).at_path(output)?;
    Ok(page)
}
