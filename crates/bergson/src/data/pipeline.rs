//! The data pipeline every command shares (Bergson's `setup_data_pipeline`): load the rows,
//! tokenise them in the mode the columns select, add advantages, apply `max_tokens`, and keep
//! the columns that `data.hf` will hold.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, ListArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;

use crate::config::{DataConfig, IndexConfig};
use crate::data::chunking::{chunk_documents, cpu_count, has_content, map_layout};
use crate::data::columns::{
    add_column, column_names, conversation_column, drop_columns, float_column,
    nullable_string_column, string_column, take_rows, text_column,
};
use crate::data::format_template::FormatTemplate;
use crate::data::kwargs::DataKwargs;
use crate::data::rewards::{advantages_from_column, advantages_from_rewards};
use crate::data::source::load_dataset_kwargs;
use crate::data::tokenize::{truncation_length, TokenizedRow, Tokenizer, NO_LIMIT};
use crate::{Error, Result};

/// A tokenised dataset ready for collection.
#[derive(Debug)]
pub struct PreparedData {
    /// The rows as `data.hf` will hold them (before `loss` is added): the original columns
    /// unless `drop_columns`, then `input_ids` (not with `drop_columns`, which leaves it out of
    /// `data.hf`), `length`, `labels`, `advantage`.
    pub table: RecordBatch,
    /// Token ids and labels per row.
    pub rows: Vec<TokenizedRow>,
    /// Dr. GRPO advantages per row.
    pub advantages: Option<Vec<f64>>,
    /// Where the preparation's time went.
    pub timings: DataTimings,
}

/// Where the data pipeline's time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct DataTimings {
    /// Reading the dataset into a table.
    pub read: std::time::Duration,
    /// Formatting, tokenising and building the columns `data.hf` keeps.
    pub tokenize: std::time::Duration,
}

impl PreparedData {
    /// Tokens per row.
    pub fn lengths(&self) -> Vec<usize> {
        self.rows.iter().map(TokenizedRow::len).collect()
    }
}

/// Refuses a one-row table whose only source of the `wanted` column is a list of records under
/// another field: a JSON file such as `{"data": [{"text": ...}, ...]}` nests its records, and
/// Bergson (like `datasets`) reads it as one row. A one-row dataset that has the column, such
/// as a single conversation, passes.
fn refuse_nested_records(table: &RecordBatch, wanted: &str, dataset: &str) -> Result<()> {
    if table.num_rows() != 1 || table.column_by_name(wanted).is_some() {
        return Ok(());
    }
    let schema = table.schema();
    let nested = schema.fields().iter().find(|field| {
        let item = match field.data_type() {
            DataType::List(item) | DataType::LargeList(item) => item,
            _ => return false,
        };
        matches!(item.data_type(), DataType::Struct(fields) if fields.iter().any(|f| f.name() == wanted))
    });
    match nested {
        Some(field) => Err(Error::input(format!(
            "{dataset}: the file holds one JSON object whose field '{0}' is a list of records, \
             not records itself; write the records as JSON Lines, e.g. \
             `jq -c '.{0}[]' {dataset} > records.jsonl`",
            field.name()
        ))),
        None => Ok(()),
    }
}

/// Runs the data pipeline of `cfg` with `tokenizer`; `max_position_embeddings` comes from the
/// model's config.json.
pub fn prepare_data(
    cfg: &IndexConfig,
    tokenizer: &Tokenizer,
    max_position_embeddings: Option<i64>,
) -> Result<PreparedData> {
    let data = &cfg.data;
    check_data_config(data)?;
    let (clock, cpu) = (Instant::now(), cpu_seconds());
    let table = load_dataset_kwargs(
        &data.dataset,
        &data.split,
        data.subset.as_deref(),
        &data.data_kwargs,
    )?;
    let read = clock.elapsed();
    tracing::info!(
        "read {} rows of {} in {:.2} s ({:.2} s CPU)",
        table.num_rows(),
        data.dataset,
        read.as_secs_f64(),
        cpu_seconds() - cpu
    );
    let clock = Instant::now();
    let mut prepared = prepare_table(cfg, table, tokenizer, max_position_embeddings)?;
    prepared.timings = DataTimings {
        read,
        tokenize: clock.elapsed(),
    };
    Ok(prepared)
}

/// Everything after reading: chunking or formatting, tokenising, rewards, `max_tokens`, and
/// the columns `data.hf` keeps.
fn prepare_table(
    cfg: &IndexConfig,
    table: RecordBatch,
    tokenizer: &Tokenizer,
    max_position_embeddings: Option<i64>,
) -> Result<PreparedData> {
    let data = &cfg.data;
    let (clock, cpu) = (Instant::now(), cpu_seconds());
    let max_model_length = tokenizer.max_model_length(max_position_embeddings);
    if data.chunk_length > 0 {
        return chunked_data(
            data,
            &table,
            tokenizer,
            max_model_length,
            cfg.token_batch_size,
        );
    }
    let max_length = truncation_length(cfg.token_batch_size, max_model_length)?;
    let encoder = tokenizer.encoder(data.truncation.then_some(max_length))?;
    // Bergson drops the loaded columns (with --drop_columns), not the ones a format adds.
    let original = column_names(&table);
    let (table, columns) = if data.format_template.is_empty() {
        (table, data.clone())
    } else {
        formatted(&table, data)?
    };
    let data = &columns;

    let pretokenized = table.column_by_name("input_ids").is_some();
    if !pretokenized {
        let wanted = if data.conversation_column.is_empty() {
            &data.prompt_column
        } else {
            &data.conversation_column
        };
        refuse_nested_records(&table, wanted, &data.dataset)?;
    }
    let (rows, chat) = if pretokenized {
        (
            pretokenized_rows(&table)?,
            table.column_by_name("labels").is_some(),
        )
    } else if !data.completion_column.is_empty() {
        let prompts = text_column(&table, &data.prompt_column, "--prompt_column")?;
        let completions = text_column(&table, &data.completion_column, "--completion_column")?;
        let pairs: Vec<(&str, &str)> = prompts
            .values()
            .into_iter()
            .zip(completions.values())
            .collect();
        (encoder.encode_prompt_completions(&pairs)?, true)
    } else if !data.conversation_column.is_empty() {
        let convos =
            conversation_column(&table, &data.conversation_column, "--conversation_column")?;
        (encoder.encode_conversations(&convos)?, true)
    } else {
        let texts = text_column(&table, &data.prompt_column, "--prompt_column")?;
        (encoder.encode_texts(&texts.values())?, false)
    };
    tracing::info!(
        "tokenised {} rows ({} tokens) in {:.2} s ({:.2} s CPU)",
        rows.len(),
        rows.iter().map(TokenizedRow::len).sum::<usize>(),
        clock.elapsed().as_secs_f64(),
        cpu_seconds() - cpu
    );
    if !data.truncation {
        warn_long(&rows, max_model_length, cfg.token_batch_size);
    }
    // The dataset as loaded: reward and prompt columns are read from it, so an error lists the
    // user's columns rather than the ones added below.
    let source = table.clone();
    let mut table = table;
    if !pretokenized {
        // data.hf leaves the ids out with --drop_columns, so the column is not made then.
        if !cfg.drop_columns {
            table = add_column(
                &table,
                "input_ids",
                input_id_lists(rows.iter().map(|r| r.input_ids.as_slice()))?,
            )?;
        }
        table = add_column(
            &table,
            "length",
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.len() as i64),
            )),
        )?;
        if chat {
            let labels: Vec<&[i64]> = rows
                .iter()
                .map(|r| r.labels.as_deref().unwrap_or(&[]))
                .collect();
            table = add_column(&table, "labels", id_lists(labels.into_iter())?)?;
        }
    } else if table.column_by_name("length").is_none() {
        table = add_column(
            &table,
            "length",
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.len() as i64),
            )),
        )?;
    }

    // Rewards or advantages (Dr. GRPO).
    let value_column = if !data.reward_column.is_empty() {
        Some((&data.reward_column, "--reward_column"))
    } else if !data.advantage_column.is_empty() {
        Some((&data.advantage_column, "--advantage_column"))
    } else {
        None
    };
    let mut rows = rows;
    let mut advantages = None;
    if let Some((column, flag)) = value_column {
        let values = float_column(&source, column, flag)?;
        let adv = if !data.reward_column.is_empty() {
            let prompts = string_column(&source, &data.prompt_column, "--prompt_column")?;
            advantages_from_rewards(&prompts, &values, column, data.skip_nan_rewards)?
        } else {
            advantages_from_column(&values, column, data.skip_nan_rewards)?
        };
        if adv.kept.len() != rows.len() {
            tracing::warn!(
                "filtering out {} rows with NaN values",
                rows.len() - adv.kept.len()
            );
            table = take_rows(&table, &adv.kept)?;
            rows = select(rows, &adv.kept);
        }
        table = add_column(
            &table,
            "advantage",
            Arc::new(Float64Array::from(adv.advantages.clone())),
        )?;
        advantages = Some(adv.advantages);
    }

    if let Some(max_tokens) = cfg.max_tokens {
        let lengths: Vec<usize> = rows.iter().map(TokenizedRow::len).collect();
        let keep = max_tokens_rows(&lengths, max_tokens);
        if keep.is_empty() && !lengths.is_empty() {
            return Err(Error::input(format!(
                "--max_tokens {max_tokens} keeps no document of '{}': its first one alone has {} tokens; raise --max_tokens",
                data.dataset, lengths[0]
            )));
        }
        table = take_rows(&table, &keep)?;
        rows = select(rows, &keep);
        advantages = advantages.map(|a| keep.iter().map(|&i| a[i]).collect());
    }

    if cfg.drop_columns {
        let keep = ["length", "input_ids", "labels", "advantage"];
        let drop: Vec<&str> = original
            .iter()
            .map(String::as_str)
            .filter(|c| !keep.contains(c) || (*c == "advantage" && value_column.is_none()))
            .collect();
        table = drop_columns(&table, &drop);
    }
    if rows.is_empty() {
        return Err(Error::input(format!(
            "dataset '{}' has no rows left to index",
            data.dataset
        )));
    }
    Ok(PreparedData {
        timings: DataTimings::default(),
        table,
        rows,
        advantages,
    })
}

/// `--format_template`: the formatted rows and the columns to tokenise, `prompt` +
/// `completion` when the template has a target, else `text` (Bergson's `apply_format`).
fn formatted(table: &RecordBatch, data: &DataConfig) -> Result<(RecordBatch, DataConfig)> {
    let template = FormatTemplate::from_file(std::path::Path::new(&data.format_template))?;
    let table = template.apply(table)?;
    let has_completion = table.column_by_name("completion").is_some();
    let columns = DataConfig {
        prompt_column: if has_completion { "prompt" } else { "text" }.into(),
        completion_column: if has_completion { "completion" } else { "" }.into(),
        conversation_column: String::new(),
        ..data.clone()
    };
    Ok((table, columns))
}

/// `--chunk_length` (Bergson's `tokenize_and_chunk`): the text of every non-blank row, without
/// special tokens, concatenated with EOS after each document and cut into rows of
/// `chunk_length` tokens; `data.hf` holds `input_ids`, `doc_ids` (each token's source row) and
/// `length`. Like Bergson, the other columns and the reward, completion and `--max_tokens`
/// settings do not apply. The text comes from `--prompt_column` (Bergson always reads `text`,
/// the default).
fn chunked_data(
    data: &DataConfig,
    table: &RecordBatch,
    tokenizer: &Tokenizer,
    max_model_length: i64,
    token_batch_size: usize,
) -> Result<PreparedData> {
    let chunk_length = data.chunk_length;
    if chunk_length > token_batch_size {
        return Err(Error::input(format!(
            "--chunk_length {chunk_length} is longer than --token_batch_size \
             {token_batch_size}, so no chunk fits in a batch; use a --token_batch_size of at \
             least {chunk_length}"
        )));
    }
    if max_model_length != NO_LIMIT && chunk_length as i64 > max_model_length {
        return Err(Error::input(format!(
            "--chunk_length {chunk_length} exceeds the model's maximum context length \
             {max_model_length}; use --chunk_length {max_model_length} or smaller"
        )));
    }
    let eos = tokenizer
        .special_token("eos_token")
        .and_then(|t| tokenizer.token_to_id(t))
        .ok_or_else(|| {
            Error::input(format!(
                "--chunk_length ends every document with the EOS token, and the tokenizer in {} \
                 has none; set eos_token in tokenizer_config.json",
                tokenizer.dir().display()
            ))
        })?;
    let texts = nullable_string_column(table, &data.prompt_column, "--prompt_column")?;
    let kept: Vec<(usize, &str)> = texts
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.as_deref().filter(|t| has_content(t)).map(|t| (i, t)))
        .collect();
    let encoder = tokenizer.encoder(None)?;
    let ids = encoder.encode_texts_plain(&kept.iter().map(|(_, t)| *t).collect::<Vec<_>>())?;
    let docs: Vec<(usize, Vec<i64>)> = kept.iter().map(|(i, _)| *i).zip(ids).collect();
    let (num_proc, bs) = map_layout(docs.len(), chunk_length, cpu_count());
    let chunks = chunk_documents(&docs, i64::from(eos), chunk_length, num_proc, bs);
    if chunks.input_ids.is_empty() {
        return Err(Error::input(format!(
            "dataset '{}' has fewer than --chunk_length {chunk_length} tokens in all, so it \
             makes no chunk; use a smaller --chunk_length",
            data.dataset
        )));
    }
    if kept.len() < texts.len() {
        tracing::warn!(
            "{}/{} empty documents ({:.1}%)",
            texts.len() - kept.len(),
            texts.len(),
            100.0 * (texts.len() - kept.len()) as f64 / texts.len() as f64
        );
    }
    let represented: std::collections::BTreeSet<i64> =
        chunks.doc_ids.iter().flatten().copied().collect();
    if represented.len() < docs.len() {
        tracing::warn!(
            "chunking dropped {} of {} documents (their tokens did not fill a whole chunk)",
            docs.len() - represented.len(),
            docs.len()
        );
    }
    let n = chunks.input_ids.len();
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "input_ids",
            input_id_lists(chunks.input_ids.iter().map(Vec::as_slice))?,
        ),
        (
            "doc_ids",
            id_lists(chunks.doc_ids.iter().map(Vec::as_slice))?,
        ),
        (
            "length",
            Arc::new(Int64Array::from(vec![chunk_length as i64; n])),
        ),
    ];
    let table = RecordBatch::try_from_iter_with_nullable(
        columns
            .into_iter()
            .map(|(name, column)| (name, column, true)),
    )
    .map_err(|e| Error::internal(format!("cannot build the chunked dataset: {e}")))?;
    let rows = chunks
        .input_ids
        .into_iter()
        .map(|input_ids| TokenizedRow {
            input_ids,
            labels: None,
        })
        .collect();
    Ok(PreparedData {
        timings: DataTimings::default(),
        table,
        rows,
        advantages: None,
    })
}

/// CPU time of the process so far (all threads), for the phase timings logged above: on a
/// shared machine it measures the work where wall time measures the neighbours too.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Bergson's `DataConfig.__post_init__` checks, and options bergson-rs does not have yet.
fn check_data_config(data: &DataConfig) -> Result<()> {
    if !data.reward_column.is_empty() && !data.advantage_column.is_empty() {
        return Err(Error::input(
            "--reward_column and --advantage_column cannot both be given; keep one",
        ));
    }
    if data.chunk_length > 0 && data.truncation {
        return Err(Error::input(
            "--chunk_length and --truncation cannot both be given (chunks have a fixed length); drop one",
        ));
    }
    if data.chunk_length > 0 && !data.format_template.is_empty() {
        return Err(Error::input(
            "--chunk_length and --format_template cannot both be given; drop one",
        ));
    }
    // Refused keys fail here, before anything is read.
    DataKwargs::parse(&data.data_kwargs)?;
    Ok(())
}

/// Bergson's warning about documents longer than the model can handle. A document longer
/// than `token_batch_size` is not warned about: batching refuses it with an error that names
/// the fix, and a warning before it would break the one-line error.
fn warn_long(rows: &[TokenizedRow], max_model_length: i64, token_batch_size: usize) {
    let longest = rows.iter().map(TokenizedRow::len).max().unwrap_or(0);
    if longest > token_batch_size {
        return;
    }
    if max_model_length != NO_LIMIT && longest as i64 > max_model_length {
        tracing::warn!("dataset contains a document longer than the model can handle ({longest} > {max_model_length}); consider --truncation");
    }
}

fn select<T: Clone>(rows: Vec<T>, keep: &[usize]) -> Vec<T> {
    keep.iter().map(|&i| rows[i].clone()).collect()
}

/// Bergson's experimental `max_tokens`: the longest prefix of rows within the budget, or the
/// rows tiled (then a partial pass) when the dataset is smaller than it.
pub fn max_tokens_rows(lengths: &[usize], max_tokens: usize) -> Vec<usize> {
    let total: usize = lengths.iter().sum();
    let mut out = Vec::new();
    let mut used = 0;
    if total >= max_tokens {
        for (i, &l) in lengths.iter().enumerate() {
            if used + l > max_tokens {
                break;
            }
            out.push(i);
            used += l;
        }
        return out;
    }
    let repeats = max_tokens.checked_div(total).unwrap_or(0);
    for _ in 0..repeats {
        out.extend(0..lengths.len());
    }
    used = total * repeats;
    for (i, &l) in lengths.iter().enumerate() {
        if used + l > max_tokens {
            break;
        }
        out.push(i);
        used += l;
    }
    out
}

/// Token ids of a pre-tokenised dataset (`input_ids`, optional `labels`).
fn pretokenized_rows(table: &RecordBatch) -> Result<Vec<TokenizedRow>> {
    let ids = int_lists(table, "input_ids")?;
    let labels = if table.column_by_name("labels").is_some() {
        Some(int_lists(table, "labels")?)
    } else {
        None
    };
    Ok(ids
        .into_iter()
        .enumerate()
        .map(|(i, input_ids)| TokenizedRow {
            input_ids,
            labels: labels.as_ref().map(|l| l[i].clone()),
        })
        .collect())
}

fn int_lists(table: &RecordBatch, name: &str) -> Result<Vec<Vec<i64>>> {
    let col = table
        .column_by_name(name)
        .ok_or_else(|| Error::input(format!("no '{name}' column")))?;
    let as_list = arrow::compute::cast(
        col,
        &DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
    )
    .map_err(|_| {
        Error::input(format!(
            "column '{name}' must hold lists of integer token ids"
        ))
    })?;
    let list = as_list
        .as_any()
        .downcast_ref::<ListArray>()
        .ok_or_else(|| Error::input(format!("column '{name}' must hold lists of token ids")))?;
    (0..list.len())
        .map(|i| {
            let v = list.value(i);
            let ints = v.as_any().downcast_ref::<Int64Array>().ok_or_else(|| {
                Error::input(format!("column '{name}' must hold integer token ids"))
            })?;
            Ok(ints.iter().map(|x| x.unwrap_or(0)).collect())
        })
        .collect()
}

/// A `list<int64>` column from rows of ids.
fn id_lists<'a>(rows: impl Iterator<Item = &'a [i64]>) -> Result<ArrayRef> {
    let (offsets, values) = flatten(rows, |v| v)?;
    Ok(list_column(
        offsets,
        Arc::new(Int64Array::from(values)),
        DataType::Int64,
    ))
}

/// A `list<int32>` column of token ids: `datasets` stores an inferred `input_ids` column as
/// int32 (its optimised feature types), so `data.hf` keeps Bergson's type.
fn input_id_lists<'a>(rows: impl Iterator<Item = &'a [i64]>) -> Result<ArrayRef> {
    // Token ids are vocabulary indices, far below 2^31.
    let (offsets, values) = flatten(rows, |v| v as i32)?;
    Ok(list_column(
        offsets,
        Arc::new(Int32Array::from(values)),
        DataType::Int32,
    ))
}

/// The values of all rows, converted, and each row's end offset (i32, as Arrow's `list`).
fn flatten<'a, T>(
    rows: impl Iterator<Item = &'a [i64]>,
    convert: impl Fn(i64) -> T,
) -> Result<(Vec<i32>, Vec<T>)> {
    let mut offsets = vec![0i32];
    let mut values = Vec::new();
    for r in rows {
        values.extend(r.iter().map(|&v| convert(v)));
        let end = i32::try_from(values.len()).map_err(|_| {
            Error::input(
                "the dataset holds more than 2^31 tokens, more than one data.hf list column \
                 holds; index it in parts (e.g. --split train[:50%] and train[50%:])",
            )
        })?;
        offsets.push(end);
    }
    Ok((offsets, values))
}

fn list_column(offsets: Vec<i32>, values: ArrayRef, item: DataType) -> ArrayRef {
    let field = Arc::new(Field::new("item", item, true));
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::new(offsets.into()),
        values,
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_takes_a_prefix_or_tiles() {
        assert_eq!(max_tokens_rows(&[3, 4, 5], 8), [0, 1]);
        assert_eq!(max_tokens_rows(&[3, 4], 16), [0, 1, 0, 1]);
        assert_eq!(max_tokens_rows(&[3, 4], 17), [0, 1, 0, 1, 0]);
    }
}
