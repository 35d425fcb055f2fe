//! Asking an index: the [`Attributor`] (library API), exact streamed search ([`search`]),
//! and `bergson query`, an interactive session (Bergson's `query`): each prompt's loss
//! gradient is computed in the index's space and its most and least similar training rows
//! are printed, and appended to a CSV with `--record`.
//!
//! Prompts piped on standard input are read ahead and searched together, in one pass over the
//! index; the output is the same as answering them one by one.

pub mod ann;
pub mod attributor;
pub mod kernel;
pub mod record;
pub mod search;

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use arrow::array::Array;
use arrow::record_batch::RecordBatch;

pub use attributor::{Attributor, AttributorOptions};
pub use search::Hits;

use crate::build::RunOptions;
use crate::config::run_file::load_subconfig;
use crate::config::{IndexConfig, QueryConfig};
use crate::data::source::load_dataset_kwargs;
use crate::error::IoContext;
use crate::{setup, Error, Result};

/// Characters of a result printed before it is cut (as Bergson).
const SHOWN_CHARS: usize = 2000;

/// The session's prompt, printed before each line is read (as Python's `input`).
const PROMPT: &str = "Enter your query: ";

/// Runs `bergson query`, reading prompts from `input` until a line `exit` or the end of input,
/// and printing results to `out`.
pub fn run(
    cfg: &QueryConfig,
    opts: &RunOptions,
    input: &mut dyn BufRead,
    interactive: bool,
    out: &mut dyn Write,
) -> Result<()> {
    if cfg.index.is_empty() {
        return Err(Error::input(
            "--index is required: the run path of a `bergson build` index to search",
        ));
    }
    let index_dir = Path::new(&cfg.index);
    let attributor = Attributor::open(
        index_dir,
        AttributorOptions {
            device: opts.device,
            unit_norm: cfg.unit_norm,
            hessian_path: cfg.hessian_path.clone(),
            inversion_cfg: cfg.inversion_cfg.clone(),
            ev_correction: cfg.ev_correction,
            faiss: cfg.faiss.then(|| cfg.faiss_cfg.clone()),
        },
    )?;
    let Some(mut icfg) = load_subconfig::<IndexConfig>(index_dir, "index_cfg")? else {
        return Err(Error::input(format!(
            "could not load an index config from {}: it has no config.yaml with an index_cfg; \
             query an index made by `bergson build`",
            cfg.index
        )));
    };
    // Bergson loads the tokenizer of the query model (not the index's --tokenizer).
    if !cfg.model.is_empty() {
        icfg.model = cfg.model.clone();
    }
    icfg.tokenizer.clear();
    let dataset = load_dataset_kwargs(
        &icfg.data.dataset,
        &icfg.data.split,
        icfg.data.subset.as_deref(),
        &icfg.data.data_kwargs,
    )?;
    let texts = TextColumn::new(&dataset, &cfg.text_field)?;
    let (tokenizer, model_dir, _) = setup::load_tokenizer(&icfg)?;
    let model = setup::load_model(&icfg, &model_dir, opts.device)?;
    let encoder = tokenizer.encoder(None)?;
    let mut record = match cfg.record.as_str() {
        "" => None,
        path => Some(record::Recorder::open(Path::new(path))?),
    };

    let k = cfg.top_k;
    loop {
        // Read ahead: all of piped input, or one line from a terminal (after its prompt).
        let mut prompts = Vec::new();
        let mut end: Option<bool> = None; // Some(true): end of input; Some(false): `exit`
        loop {
            if interactive {
                write!(out, "{PROMPT}").at_path("<stdout>")?;
                out.flush().at_path("<stdout>")?;
            }
            let mut line = String::new();
            if input.read_line(&mut line).at_path("<stdin>")? == 0 {
                end = Some(true);
                break;
            }
            let line = line.strip_suffix('\n').unwrap_or(&line);
            let line = line.strip_suffix('\r').unwrap_or(line).to_string();
            if line.to_lowercase() == "exit" {
                end = Some(false);
                break;
            }
            prompts.push(line);
            if interactive {
                break;
            }
        }
        if !prompts.is_empty() {
            crate::interrupt::check()?;
            let rows = prompts
                .iter()
                .map(|p| encoder.encode_text(p))
                .collect::<Result<Vec<_>>>()?;
            let queries = attributor.query_gradients(&*model, &rows, attributor.query_loss())?;
            let (top, bottom) = attributor.search_both(&queries, Some(k), None, (true, true))?;
            let (top, bottom) = (
                top.ok_or_else(|| Error::internal("no top hits"))?,
                bottom.ok_or_else(|| Error::internal("no bottom hits"))?,
            );
            for (q, prompt) in prompts.iter().enumerate() {
                if !interactive {
                    // As if each prompt had been read after the previous one's results.
                    write!(out, "{PROMPT}").at_path("<stdout>")?;
                }
                for (direction, hits) in [("Top", &top), ("Bottom", &bottom)] {
                    writeln!(out, "\n{direction} {k} results for '{prompt}':")
                        .at_path("<stdout>")?;
                    for (i, (row, score)) in hits.of_query(q)?.into_iter().enumerate() {
                        if row < 0 {
                            // A FAISS index did not find this many rows (as Bergson prints).
                            writeln!(out, "Found invalid result, skipping").at_path("<stdout>")?;
                            continue;
                        }
                        let text = texts.get(row as usize, attributor.index())?;
                        let shown: String = text.chars().take(SHOWN_CHARS).collect();
                        writeln!(out, "{shown}").at_path("<stdout>")?;
                        if text.chars().nth(SHOWN_CHARS).is_some() {
                            writeln!(out, ". . .").at_path("<stdout>")?;
                        }
                        writeln!(out, "{}: (distance: {score:.4})", i + 1).at_path("<stdout>")?;
                        if let Some(r) = &mut record {
                            r.append(prompt, direction, &text, row, score)?;
                        }
                    }
                }
            }
            out.flush().at_path("<stdout>")?;
        }
        if let Some(eof) = end {
            if !interactive {
                write!(out, "{PROMPT}").at_path("<stdout>")?;
            }
            if eof {
                // Bergson dies with a traceback at the end of input; we end the session.
                writeln!(out).at_path("<stdout>")?;
            }
            out.flush().at_path("<stdout>")?;
            return Ok(());
        }
    }
}

/// Whether standard input is a terminal (prompts are then answered one at a time).
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// The printed column of the index's dataset.
struct TextColumn<'a> {
    column: &'a dyn Array,
    rows: usize,
}

impl<'a> TextColumn<'a> {
    fn new(dataset: &'a RecordBatch, field: &str) -> Result<Self> {
        let column = dataset.column_by_name(field).ok_or_else(|| {
            Error::input(format!(
                "--text_field '{field}' is not a column of the index's dataset; it has: {}",
                crate::data::columns::column_names(dataset).join(", ")
            ))
        })?;
        Ok(TextColumn {
            column: column.as_ref(),
            rows: dataset.num_rows(),
        })
    }

    /// The text of index row `row`: its document's (per-token indexes map rows to documents).
    fn get(&self, row: usize, index: &crate::index::GradientIndex) -> Result<String> {
        let doc = if index.info.attribute_tokens {
            (0..index.info.num_items)
                .find(|&d| index.token_rows(d).is_some_and(|r| r.contains(&row)))
                .unwrap_or(row)
        } else {
            row
        };
        if doc >= self.rows {
            return Err(Error::input(format!(
                "index row {doc} is beyond the index's dataset ({} rows): the dataset changed \
                 since the index was built",
                self.rows
            )));
        }
        let formatter = arrow::util::display::ArrayFormatter::try_new(
            self.column,
            &arrow::util::display::FormatOptions::default(),
        )
        .map_err(|e| Error::input(format!("cannot show the text column: {e}")))?;
        Ok(formatter.value(doc).to_string())
    }
}
