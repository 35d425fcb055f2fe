//! The texts and token ids of a run's rows, for showing them: read from the run's `data.hf`
//! when it kept them, else from the dataset its `config.yaml` names (re-running the build's
//! data pipeline where rows are not simply the dataset's rows, or where token ids are needed).
//! Nothing here is fatal but a `--text_field` that names no column: the page then says what
//! is missing and why.

use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::run_config::RunConfig;
use crate::build::prepare_data;
use crate::config::IndexConfig;
use crate::data::columns::{column_names, conversation_column, take_rows};
use crate::data::source::load_dataset_kwargs;
use crate::data::tokenize::Tokenizer;
use crate::index::hf_dataset::read_hf_dataset;
use crate::models::config::ConfigJson;
use crate::models::hub::{resolve_model_dir, resolve_tokenizer_dir};
use crate::{Error, Result};

/// One labelled piece of a document (a chat turn, a prompt or completion), or the whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPart {
    /// `prompt`, `completion`, a chat role, or `None` for plain text.
    pub label: Option<String>,
    /// The text.
    pub text: String,
}

/// A document as the report shows it.
pub type DocText = Vec<TextPart>;

/// Which columns make a document's text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TextSpec {
    Column(String),
    PromptCompletion(String, String),
    Conversation(String),
}

impl TextSpec {
    fn columns(&self) -> Vec<&str> {
        match self {
            TextSpec::Column(c) | TextSpec::Conversation(c) => vec![c],
            TextSpec::PromptCompletion(p, c) => vec![p, c],
        }
    }
}

/// What to load for a run's rows.
#[derive(Debug, Clone, Copy)]
pub struct RowsRequest<'a> {
    /// The user's `--text_field`: this column or an error.
    pub text_field: Option<&'a str>,
    /// Token ids and the tokenizer are needed (per-token heat maps).
    pub need_tokens: bool,
    /// Rows the run holds (store items, or query index rows).
    pub num_rows: usize,
    /// The training row of each run row, when only candidates were scored.
    pub candidates: Option<&'a [i64]>,
}

/// The texts and token ids of a run's rows, in the run's row order.
#[derive(Default)]
pub struct RunRows {
    texts: Option<Vec<DocText>>,
    token_ids: Option<Vec<Vec<u32>>>,
    tokenizer: Option<Tokenizer>,
    /// Why texts or tokens are missing, one line each, for the page.
    pub notes: Vec<String>,
}

impl RunRows {
    /// Loads what `request` asks for from the run in `dir`.
    pub fn load(dir: &Path, cfg: Option<&RunConfig>, request: RowsRequest) -> Result<Self> {
        let mut rows = RunRows::default();
        let specs = text_specs(cfg, request.text_field);

        let data_hf = dir.join("data.hf");
        if data_hf.is_dir() {
            match read_hf_dataset(&data_hf) {
                Ok(table) if table.num_rows() == request.num_rows => {
                    rows.texts = texts_of(&table, &specs)?;
                    rows.token_ids = token_ids_of(&table);
                }
                Ok(table) => rows.notes.push(format!(
                    "{} has {} rows, the scores {}; its columns were not used",
                    data_hf.display(),
                    table.num_rows(),
                    request.num_rows
                )),
                Err(e) => rows.notes.push(e.to_string()),
            }
        }

        let want_tokens = request.need_tokens && rows.token_ids.is_none();
        if let Some(cfg) = cfg.filter(|_| rows.texts.is_none() || want_tokens) {
            let icfg = cfg.resolved_index_cfg();
            if request.need_tokens || rows_differ_from_dataset(&icfg) {
                rows.load_via_pipeline(&icfg, &specs, request)?;
            } else {
                rows.load_via_dataset(&icfg, &specs, request)?;
            }
        }
        if request.need_tokens && rows.tokenizer.is_none() {
            if let Some(cfg) = cfg {
                match load_tokenizer(&cfg.resolved_index_cfg()) {
                    Ok((tokenizer, _)) => rows.tokenizer = Some(tokenizer),
                    Err(e) => rows
                        .notes
                        .push(format!("no tokenizer for the heat maps: {e}")),
                }
            }
        }
        if let (Some(field), None) = (request.text_field, &rows.texts) {
            rows.notes
                .push(format!("no '{field}' column could be read for these rows"));
        }
        if rows.texts.is_none() {
            rows.texts = rows.decoded_texts();
        }
        if rows.texts.is_none() && cfg.is_none() {
            rows.notes.push(format!(
                "{} has no config.yaml naming its dataset, and no data.hf with texts; rows are \
                 shown by number",
                dir.display()
            ));
        }
        Ok(rows)
    }

    /// The text of row `i`.
    pub fn text(&self, i: usize) -> Option<&DocText> {
        self.texts.as_ref()?.get(i)
    }

    /// The token ids of row `i`.
    pub fn tokens(&self, i: usize) -> Option<&[u32]> {
        self.token_ids.as_ref()?.get(i).map(Vec::as_slice)
    }

    /// The run's tokenizer, when token ids were asked for.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Re-runs the build's data pipeline: the rows exactly as Bergson scored them.
    fn load_via_pipeline(
        &mut self,
        icfg: &IndexConfig,
        specs: &[TextSpec],
        request: RowsRequest,
    ) -> Result<()> {
        let mut icfg = icfg.clone();
        icfg.drop_columns = false;
        let prepared = load_tokenizer(&icfg).and_then(|(tokenizer, max_positions)| {
            let prepared = prepare_data(&icfg, &tokenizer, max_positions)?;
            Ok((tokenizer, prepared))
        });
        let (tokenizer, prepared) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.notes.push(format!(
                    "the rows of dataset '{}' could not be rebuilt: {e}",
                    icfg.data.dataset
                ));
                return Ok(());
            }
        };
        let Some(table) = self.select(prepared.table, &icfg.data.dataset, request)? else {
            return Ok(());
        };
        if self.texts.is_none() {
            self.texts = texts_of(&table, specs)?;
        }
        if self.token_ids.is_none() {
            self.token_ids = token_ids_of(&table);
        }
        self.tokenizer = Some(tokenizer);
        Ok(())
    }

    /// Reads the dataset itself: its rows are the run's rows.
    fn load_via_dataset(
        &mut self,
        icfg: &IndexConfig,
        specs: &[TextSpec],
        request: RowsRequest,
    ) -> Result<()> {
        let data = &icfg.data;
        let table = match load_dataset_kwargs(
            &data.dataset,
            &data.split,
            data.subset.as_deref(),
            &data.data_kwargs,
        ) {
            Ok(t) => t,
            Err(e) => {
                self.notes.push(format!("texts unavailable: {e}"));
                return Ok(());
            }
        };
        if let Some(table) = self.select(table, &data.dataset, request)? {
            self.texts = texts_of(&table, specs)?;
        }
        Ok(())
    }

    /// The candidate rows of `table`, or `None` (with a note) when it cannot be the run's rows.
    fn select(
        &mut self,
        table: RecordBatch,
        dataset: &str,
        request: RowsRequest,
    ) -> Result<Option<RecordBatch>> {
        let table = match request.candidates {
            Some(c) if c.iter().all(|&r| (r as usize) < table.num_rows()) => {
                let rows: Vec<usize> = c.iter().map(|&r| r as usize).collect();
                take_rows(&table, &rows)?
            }
            _ => table,
        };
        if table.num_rows() != request.num_rows {
            self.notes.push(format!(
                "dataset '{dataset}' now has {} rows where the run has {}; its texts were not \
                 used",
                table.num_rows(),
                request.num_rows
            ));
            return Ok(None);
        }
        Ok(Some(table))
    }

    /// Texts decoded from the token ids, when no text column was found.
    fn decoded_texts(&self) -> Option<Vec<DocText>> {
        let (ids, tokenizer) = (self.token_ids.as_ref()?, self.tokenizer.as_ref()?);
        ids.iter()
            .map(|ids| {
                let text = tokenizer.inner().decode(ids, false).ok()?;
                Some(vec![TextPart { label: None, text }])
            })
            .collect()
    }
}

/// The columns to try, best first: the user's `--text_field` alone; else those the run's data
/// config tokenised (a format template's output columns when it used one), then `text`.
fn text_specs(cfg: Option<&RunConfig>, text_field: Option<&str>) -> Vec<TextSpec> {
    if let Some(field) = text_field {
        return vec![TextSpec::Column(field.to_string())];
    }
    let mut specs = Vec::new();
    if let Some(data) = cfg.map(|c| &c.index_cfg.data) {
        if !data.format_template.is_empty() {
            specs.push(TextSpec::PromptCompletion(
                "prompt".into(),
                "completion".into(),
            ));
        } else if !data.conversation_column.is_empty() {
            specs.push(TextSpec::Conversation(data.conversation_column.clone()));
        } else if !data.completion_column.is_empty() {
            specs.push(TextSpec::PromptCompletion(
                data.prompt_column.clone(),
                data.completion_column.clone(),
            ));
        } else {
            specs.push(TextSpec::Column(data.prompt_column.clone()));
        }
    }
    specs.push(TextSpec::Column("text".into()));
    specs
}

/// The texts by the first spec whose columns `table` has; `None` if none has them. With a
/// single (user-given) spec, its absence is an error listing the columns.
fn texts_of(table: &RecordBatch, specs: &[TextSpec]) -> Result<Option<Vec<DocText>>> {
    let has = |spec: &TextSpec| {
        spec.columns()
            .iter()
            .all(|c| table.column_by_name(c).is_some())
    };
    let Some(spec) = specs.iter().find(|s| has(s)) else {
        return match specs {
            [TextSpec::Column(field)] if has_any_text(table) => Err(Error::input(format!(
                "--text_field '{field}' is not a column of the scored rows (columns: {}); pick \
                 one of them",
                column_names(table).join(", ")
            ))),
            _ => Ok(None),
        };
    };
    let texts = match spec {
        TextSpec::Column(c) => display_column(table, c)?
            .into_iter()
            .map(|text| vec![TextPart { label: None, text }])
            .collect(),
        TextSpec::PromptCompletion(p, c) => {
            let prompts = display_column(table, p)?;
            let completions = display_column(table, c)?;
            prompts
                .into_iter()
                .zip(completions)
                .map(|(p, c)| {
                    vec![
                        TextPart {
                            label: Some("prompt".into()),
                            text: p,
                        },
                        TextPart {
                            label: Some("completion".into()),
                            text: c,
                        },
                    ]
                })
                .collect()
        }
        TextSpec::Conversation(c) => conversation_column(table, c, "--conversation_column")?
            .into_iter()
            .map(|messages| {
                messages
                    .into_iter()
                    .map(|m| TextPart {
                        label: Some(m.role),
                        text: m.content,
                    })
                    .collect()
            })
            .collect(),
    };
    Ok(Some(texts))
}

/// A table with only Bergson's own columns (`length`, `loss`, ...) has no texts to choose from.
fn has_any_text(table: &RecordBatch) -> bool {
    const OWN: [&str; 6] = [
        "length",
        "loss",
        "input_ids",
        "labels",
        "advantage",
        "doc_ids",
    ];
    column_names(table)
        .iter()
        .any(|c| !OWN.contains(&c.as_str()))
}

/// Every value of column `name` as text (strings as they are, other types as arrow prints them,
/// nulls empty).
fn display_column(table: &RecordBatch, name: &str) -> Result<Vec<String>> {
    let array = table
        .column_by_name(name)
        .ok_or_else(|| Error::input(format!("no column '{name}'")))?;
    if let Some(strings) = array.as_string_opt::<i32>() {
        return Ok(strings
            .iter()
            .map(|s| s.unwrap_or("").to_string())
            .collect());
    }
    if let Some(strings) = array.as_string_opt::<i64>() {
        return Ok(strings
            .iter()
            .map(|s| s.unwrap_or("").to_string())
            .collect());
    }
    let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
        .map_err(|e| Error::input(format!("column '{name}' cannot be shown as text: {e}")))?;
    Ok((0..array.len())
        .map(|i| formatter.value(i).to_string())
        .collect())
}

/// The `input_ids` column as token ids, when the table has one.
fn token_ids_of(table: &RecordBatch) -> Option<Vec<Vec<u32>>> {
    let array = table.column_by_name("input_ids")?;
    let lists: Vec<Option<arrow::array::ArrayRef>> = match array.data_type() {
        DataType::List(_) => array.as_list::<i32>().iter().collect(),
        DataType::LargeList(_) => array.as_list::<i64>().iter().collect(),
        _ => return None,
    };
    lists
        .into_iter()
        .map(|list| {
            let list = arrow::compute::cast(&list?, &DataType::Int64).ok()?;
            list.as_primitive::<Int64Type>()
                .iter()
                .map(|id| id.and_then(|id| u32::try_from(id).ok()))
                .collect()
        })
        .collect()
}

/// The tokenizer the build used (its `--tokenizer`, else the model's), and the model's maximum
/// positions, as `bergson build` resolves them.
fn load_tokenizer(icfg: &IndexConfig) -> Result<(Tokenizer, Option<i64>)> {
    let model_dir = resolve_model_dir(&icfg.model, icfg.revision.as_deref())?;
    // Bergson loads the tokenizer without the revision: a hub model's comes from its default
    // branch.
    let tokenizer_dir = if !icfg.tokenizer.is_empty() {
        resolve_tokenizer_dir(&icfg.tokenizer)?
    } else if icfg.revision.is_some() && !Path::new(&icfg.model).is_dir() {
        resolve_tokenizer_dir(&icfg.model)?
    } else {
        model_dir.clone()
    };
    let tokenizer = Tokenizer::from_dir(&tokenizer_dir)?;
    let config = ConfigJson::from_file(&model_dir.join("config.json"))?;
    let max_positions = config.int(&["max_position_embeddings", "n_positions"])?;
    Ok((tokenizer, max_positions))
}

/// Whether the build's rows are not the dataset's rows one for one: chunking, `max_tokens`,
/// and NaN rewards dropped all change them.
fn rows_differ_from_dataset(icfg: &IndexConfig) -> bool {
    let data = &icfg.data;
    data.chunk_length > 0
        || icfg.max_tokens.is_some()
        || (data.skip_nan_rewards
            && !(data.reward_column.is_empty() && data.advantage_column.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/report")
    }

    fn train_texts() -> Vec<String> {
        let text = std::fs::read_to_string(fixtures().join("data/train.jsonl")).unwrap();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["text"].as_str().unwrap().to_string()
            })
            .collect()
    }

    fn load(run: &str, need_tokens: bool, text_field: Option<&str>) -> Result<RunRows> {
        let dir = fixtures().join("runs").join(run);
        let cfg = RunConfig::read(&dir).unwrap();
        let store = crate::report::scores::ScoreStore::open(&dir).unwrap();
        RunRows::load(
            &dir,
            cfg.as_ref(),
            RowsRequest {
                text_field,
                need_tokens,
                num_rows: store.num_items(),
                candidates: store.candidates(),
            },
        )
    }

    fn plain(rows: &RunRows, i: usize) -> String {
        rows.text(i)
            .unwrap()
            .iter()
            .map(|p| p.text.as_str())
            .collect()
    }

    /// drop_columns: the texts come from the dataset the config names.
    #[test]
    fn texts_reload_from_the_configured_dataset() {
        let rows = load("doc", false, None).unwrap();
        for (i, want) in train_texts().iter().enumerate() {
            assert_eq!(&plain(&rows, i), want);
        }
    }

    /// Candidates: store item i is training row candidates[i].
    #[test]
    fn candidate_rows_get_their_training_texts() {
        let rows = load("candidates", false, None).unwrap();
        let store =
            crate::report::scores::ScoreStore::open(&fixtures().join("runs/candidates")).unwrap();
        let texts = train_texts();
        for item in 0..store.num_items() {
            assert_eq!(plain(&rows, item), texts[store.training_row(item)]);
        }
    }

    /// Re-tokenised rows (data.hf without input_ids) equal the ids Bergson kept in data.hf.
    #[test]
    fn retokenised_ids_match_bergsons() {
        let rebuilt = load("tokens", true, None).unwrap();
        let kept = load("bf16", true, None).unwrap();
        assert!(rebuilt.tokenizer().is_some(), "{:?}", rebuilt.notes);
        for i in 0..train_texts().len() {
            let ids = kept.tokens(i).unwrap();
            assert!(ids.len() > 2);
            assert_eq!(rebuilt.tokens(i), Some(ids), "row {i}");
        }
    }

    #[test]
    fn unknown_text_field_is_an_error_naming_the_columns() {
        let err = load("bf16", false, Some("body")).err().unwrap().to_string();
        assert!(
            err.contains("--text_field 'body'") && err.contains("text"),
            "{err}"
        );
    }

    #[test]
    fn a_store_without_config_has_numbered_rows_and_says_why() {
        let rows = load("partial_fp16", false, None).unwrap();
        assert!(rows.text(0).is_none());
        assert!(
            rows.notes.iter().any(|n| n.contains("no config.yaml")),
            "{:?}",
            rows.notes
        );
    }
}
