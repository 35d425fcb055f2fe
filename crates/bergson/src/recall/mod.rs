//! `bergson recall`: attribution scores judged by synthetic factual recall (Bergson 2.5.1's
//! `recall/`). A model is trained on statements about synthetic people; each question about
//! one person's field is scored against every statement; a question is a hit when a gold
//! statement (any paraphrase of the asked fact) ranks in the top k. Outputs `recall.csv` (one
//! row per question) and `summary.csv` (MRR, Recall@k, strict Recall@k).

pub mod facts;
pub mod ranks;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use crate::config::{RecallConfig, RecallDataConfig};
use crate::data::pyvalue::float_repr;
use crate::data::rewards::pairwise_sum;
use crate::error::IoContext;
use crate::index::hf_dataset::{read_hf_dataset, write_hf_dataset};
use crate::index::score_store::ScoreStore;
use crate::{Error, Result};

use facts::{generate_statements, Statement};
use ranks::{gold_ranks, QuestionRecall};

/// Where the statements and questions datasets of `cfg` are cached (Bergson's
/// `recall_dataset_paths`): `<data_dir>/statements_<N>p_seed<S>[_single].hf` and the same for
/// `questions_`.
pub fn dataset_paths(cfg: &RecallDataConfig) -> (PathBuf, PathBuf) {
    let mut tag = format!("{}p_seed{}", cfg.num_people, cfg.seed);
    if cfg.single_paraphrase {
        tag.push_str("_single");
    }
    let dir = Path::new(&cfg.data_dir);
    (
        dir.join(format!("statements_{tag}.hf")),
        dir.join(format!("questions_{tag}.hf")),
    )
}

/// The statements and questions datasets of `cfg`, generated (seeded, so always the same
/// rows) and cached unless both exist already. Returns their paths and whether they were made.
pub fn ensure_datasets(cfg: &RecallDataConfig) -> Result<(PathBuf, PathBuf, bool)> {
    let (statements_path, questions_path) = dataset_paths(cfg);
    if statements_path.exists() && questions_path.exists() {
        return Ok((statements_path, questions_path, false));
    }
    if cfg.num_people == 0 {
        return Err(Error::input(
            "--num_people 0: the recall fact set needs at least one person; pass --num_people 1 or more",
        ));
    }
    let mut statements = generate_statements(Path::new(&cfg.data_dir), cfg.seed, cfg.num_people)?;
    if cfg.single_paraphrase {
        statements.retain(|s| s.template == 0);
    }
    let mut people: Vec<i64> = statements.iter().map(|s| s.identifier).collect();
    people.dedup();
    if people.len() < cfg.num_people {
        return Err(Error::input(format!(
            "only {} of the requested {} people could be generated: the name lists in {}/names are too small; lower --num_people or add names",
            people.len(),
            cfg.num_people,
            cfg.data_dir
        )));
    }
    write_dataset(&statements_table(&statements)?, &statements_path)?;
    write_dataset(&questions_table(&statements)?, &questions_path)?;
    Ok((statements_path, questions_path, true))
}

/// Writes `<dir>.part` and renames it, so a cached dataset is never half-written.
fn write_dataset(table: &RecordBatch, dir: &Path) -> Result<()> {
    let part = PathBuf::from(format!("{}.part", dir.display()));
    if part.exists() {
        std::fs::remove_dir_all(&part).at_path(&part)?;
    }
    write_hf_dataset(table, &part)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).at_path(dir)?;
    }
    std::fs::rename(&part, dir).at_path(dir)
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn table(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, a)| Field::new(*name, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .map_err(|e| Error::internal(format!("recall dataset table: {e}")))
}

/// Bergson's statements dataset: one row per statement, columns in `Dataset.from_list` order.
fn statements_table(rows: &[Statement]) -> Result<RecordBatch> {
    table(vec![
        ("answer", strings(rows.iter().map(|r| r.answer.as_str()))),
        ("fact", strings(rows.iter().map(|r| r.fact.as_str()))),
        ("field", strings(rows.iter().map(|r| r.field))),
        (
            "identifier",
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.identifier),
            )),
        ),
        (
            "question",
            strings(rows.iter().map(|r| r.question.as_str())),
        ),
        (
            "template",
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.template),
            )),
        ),
    ])
}

/// Bergson's questions dataset: one row per distinct (person, field), in first-seen order,
/// with `text` = question and answer (for models without a chat template).
fn questions_table(rows: &[Statement]) -> Result<RecordBatch> {
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<&Statement> = rows
        .iter()
        .filter(|r| seen.insert((r.identifier, r.field)))
        .collect();
    let texts: Vec<String> = firsts
        .iter()
        .map(|r| format!("{} {}", r.question, r.answer))
        .collect();
    table(vec![
        (
            "question",
            strings(firsts.iter().map(|r| r.question.as_str())),
        ),
        ("answer", strings(firsts.iter().map(|r| r.answer.as_str()))),
        ("text", strings(texts.iter().map(String::as_str))),
        ("field", strings(firsts.iter().map(|r| r.field))),
        (
            "identifier",
            Arc::new(Int64Array::from_iter_values(
                firsts.iter().map(|r| r.identifier),
            )),
        ),
    ])
}

/// The `identifier`, `field` and (questions only) `answer` columns of a cached dataset.
struct FactColumns {
    identifier: Vec<i64>,
    field: Vec<String>,
    answer: Vec<String>,
}

fn fact_columns(dir: &Path) -> Result<FactColumns> {
    let t = read_hf_dataset(dir)?;
    let column = |name: &str| {
        t.column_by_name(name).cloned().ok_or_else(|| {
            Error::input(format!(
                "{} has no `{name}` column: it is not a recall dataset; delete it and rerun to regenerate",
                dir.display()
            ))
        })
    };
    let text = |name: &str| -> Result<Vec<String>> {
        let a = column(name)?;
        let a = arrow::compute::cast(&a, &DataType::Utf8)
            .map_err(|e| Error::input(format!("{}: column `{name}`: {e}", dir.display())))?;
        let a = a
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8 gives a StringArray");
        Ok((0..a.len()).map(|i| a.value(i).to_string()).collect())
    };
    let ids = arrow::compute::cast(&column("identifier")?, &DataType::Int64)
        .map_err(|e| Error::input(format!("{}: column `identifier`: {e}", dir.display())))?;
    let ids = ids
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64 gives an Int64Array");
    Ok(FactColumns {
        identifier: ids.values().to_vec(),
        field: text("field")?,
        answer: if t.column_by_name("answer").is_some() {
            text("answer")?
        } else {
            vec![String::new(); t.num_rows()]
        },
    })
}

/// The score orientation: the flag when given, else the score run's saved
/// `score_cfg.higher_is_better`, else true (Bergson's `resolve_higher_is_better`).
fn resolve_higher_is_better(scores: &Path, explicit: Option<bool>) -> Result<bool> {
    if let Some(h) = explicit {
        return Ok(h);
    }
    let saved: Option<serde_json::Value> =
        crate::config::run_file::load_subconfig(scores, "score_cfg")?;
    let saved = saved.and_then(|c| c.get("higher_is_better").and_then(|v| v.as_bool()));
    if let Some(h) = saved {
        tracing::info!(
            "using higher_is_better={h} recorded in {}; pass --higher_is_better to override",
            scores.display()
        );
    }
    Ok(saved.unwrap_or(true))
}

/// What `bergson recall` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallSummary {
    /// Mean reciprocal rank of the first gold statement.
    pub mrr: f64,
    /// Fraction of questions with a gold statement in the top k.
    pub recall_at_k: f64,
    /// Mean fraction of each question's gold statements in the top k.
    pub strict_recall_at_k: f64,
    /// Questions evaluated.
    pub questions: usize,
    /// Statements ranked.
    pub statements: usize,
    /// Whether the datasets were generated by this run (rather than read from the cache).
    pub generated: bool,
}

/// Runs the recall evaluation of `cfg`, writing `recall.csv` and `summary.csv` to its run path.
pub fn run_recall(cfg: &RecallConfig) -> Result<RecallSummary> {
    if cfg.run_path.is_empty() {
        return Err(Error::input(
            "recall needs a run path for its CSVs: `bergson recall <run_path> --scores <score_dir>`",
        ));
    }
    if cfg.scores.is_empty() {
        return Err(Error::input(
            "--scores is required: the score directory (scores.bin, info.json) with one column per recall question",
        ));
    }
    if cfg.k == 0 {
        return Err(Error::input("--k 0: the recall cutoff must be at least 1"));
    }
    let (statements_path, questions_path, generated) = ensure_datasets(&cfg.data)?;
    let statements = fact_columns(&statements_path)?;
    let questions = fact_columns(&questions_path)?;
    let scores_dir = Path::new(&cfg.scores);
    let store = ScoreStore::open(scores_dir)?;
    let n = statements.identifier.len();
    if store.num_items() != n {
        return Err(Error::input(format!(
            "scores at {} cover {} items but {} has {n} statements; score the statements dataset of the same --num_people/--seed/--single_paraphrase",
            cfg.scores,
            store.num_items(),
            statements_path.display()
        )));
    }
    if store.num_rows() != n {
        return Err(Error::input(format!(
            "scores at {} hold {} rows for {n} statements (per-token or top-k candidate scores); recall needs one score per statement: score without --attribute_tokens / candidates",
            cfg.scores,
            store.num_rows()
        )));
    }
    let num_questions = questions.identifier.len();
    if store.num_scores() != num_questions {
        return Err(Error::input(format!(
            "scores at {} have {} queries but {} has {num_questions} questions; build the query from the questions dataset with --aggregation none",
            cfg.scores,
            store.num_scores(),
            questions_path.display()
        )));
    }
    let higher_is_better = resolve_higher_is_better(scores_dir, cfg.higher_is_better)?;

    let mut gold: HashMap<(i64, &str), Vec<usize>> = HashMap::new();
    for (i, (id, field)) in statements
        .identifier
        .iter()
        .zip(&statements.field)
        .enumerate()
    {
        gold.entry((*id, field.as_str())).or_default().push(i);
    }
    let unwritten = std::cell::Cell::new(false);
    let results: Vec<(QuestionRecall, usize)> = (0..num_questions)
        .map(|q| {
            // Unwritten cells read as the zeros of a fresh store, as numpy's memmap does.
            let column: Vec<f64> = (0..n)
                .map(|r| {
                    let v = store.score(r, q).map(f64::from).unwrap_or_else(|| {
                        unwritten.set(true);
                        0.0
                    });
                    if higher_is_better {
                        v
                    } else {
                        -v
                    }
                })
                .collect();
            let key = (questions.identifier[q], questions.field[q].as_str());
            let gold_rows = gold.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            if gold_rows.is_empty() {
                return Err(Error::input(format!(
                    "question {q} (person {}, field {}) has no statement in {}; the datasets do not belong together: delete them and rerun",
                    key.0,
                    key.1,
                    statements_path.display()
                )));
            }
            let ranks = gold_ranks(&column, gold_rows);
            Ok((QuestionRecall::from_ranks(&ranks, cfg.k), gold_rows.len()))
        })
        .collect::<Result<_>>()?;
    if unwritten.get() {
        tracing::warn!("not all score entries have been written; results may be incomplete");
    }

    let run = Path::new(&cfg.run_path);
    std::fs::create_dir_all(run).at_path(run)?;
    let k = cfg.k;
    let mut rows = vec![vec![
        "question_idx".to_string(),
        "identifier".into(),
        "field".into(),
        "answer".into(),
        "first_gold_rank".into(),
        "reciprocal_rank".into(),
        format!("hit_at_{k}"),
        format!("strict_recall_at_{k}"),
        "num_gold".into(),
    ]];
    for (q, (r, num_gold)) in results.iter().enumerate() {
        rows.push(vec![
            q.to_string(),
            questions.identifier[q].to_string(),
            questions.field[q].clone(),
            questions.answer[q].clone(),
            r.first_gold_rank.to_string(),
            float_repr(r.reciprocal_rank),
            u8::from(r.hit).to_string(),
            float_repr(r.strict_recall),
            num_gold.to_string(),
        ]);
    }
    write_csv(&run.join("recall.csv"), &rows)?;

    let mean = |f: &dyn Fn(&QuestionRecall) -> f64| {
        let v: Vec<f64> = results.iter().map(|(r, _)| f(r)).collect();
        pairwise_sum(&v) / v.len() as f64
    };
    let summary = RecallSummary {
        mrr: mean(&|r| r.reciprocal_rank),
        recall_at_k: mean(&|r| f64::from(u8::from(r.hit))),
        strict_recall_at_k: mean(&|r| r.strict_recall),
        questions: num_questions,
        statements: n,
        generated,
    };
    write_csv(
        &run.join("summary.csv"),
        &[
            vec![
                "MRR".to_string(),
                format!("recall_at_{k}"),
                format!("strict_recall_at_{k}"),
                "N".into(),
                "num_people".into(),
            ],
            vec![
                float_repr(summary.mrr),
                float_repr(summary.recall_at_k),
                float_repr(summary.strict_recall_at_k),
                num_questions.to_string(),
                cfg.data.num_people.to_string(),
            ],
        ],
    )?;
    Ok(summary)
}

/// Writes `rows` as Python's `csv` module does (minimal quoting, `\r\n`), through `<file>.part`.
fn write_csv(path: &Path, rows: &[Vec<String>]) -> Result<()> {
    let part = path.with_extension("csv.part");
    {
        let file = std::fs::File::create(&part).at_path(&part)?;
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(file);
        for row in rows {
            w.write_record(row)
                .map_err(|e| Error::input(format!("{}: {e}", part.display())))?;
        }
        w.flush().at_path(&part)?;
    }
    std::fs::rename(&part, path).at_path(path)
}
