//! `--format_template`: a YAML file of Jinja templates (lm-evaluation-harness style) that turns
//! each dataset row into a `text` column, or into `prompt` + `completion` columns when it has a
//! target, as Bergson's `bergson/format.py` does:
//!
//! * `doc_to_text` (required): a template rendered with the row's columns as variables;
//! * `doc_to_target` (optional): a template (when it contains `{{` or `{%`) or a column name;
//! * `doc_to_choice` (optional): a list of strings indexed by the target (multiple choice).
//!
//! Templates render with Jinja2's defaults (no block trimming) and print values as Python does.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::record_batch::RecordBatch;
use minijinja::value::{Value, ValueKind};
use minijinja::Environment;

use super::columns::{column_names, set_column};
use super::pyvalue::py_str;
use crate::{Error, Result};

/// A loaded format template.
#[derive(Debug)]
pub struct FormatTemplate {
    env: Environment<'static>,
    /// `doc_to_target` when it names a column rather than being a template.
    target_column: Option<String>,
    has_target_template: bool,
    choices: Option<Vec<String>>,
    path: String,
}

#[derive(serde::Deserialize)]
struct Spec {
    doc_to_text: Option<String>,
    doc_to_target: Option<serde_json::Value>,
    doc_to_choice: Option<Vec<serde_json::Value>>,
}

impl FormatTemplate {
    /// Reads and compiles the YAML file at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::input(format!(
                "--format_template '{shown}' cannot be read ({e}); give a YAML file with doc_to_text"
            ))
        })?;
        let spec: Spec = serde_saphyr::from_str(&text).map_err(|e| {
            let first = crate::config::yaml_message(&e);
            let first = first.lines().next().unwrap_or_default().to_string();
            Error::input(format!(
                "--format_template '{shown}' is not a YAML mapping of templates ({first}); \
                 give doc_to_text (and optionally doc_to_target, doc_to_choice)"
            ))
        })?;
        let text_template = spec.doc_to_text.ok_or_else(|| {
            Error::input(format!(
                "--format_template '{shown}' has no doc_to_text; add the template of each row's text"
            ))
        })?;
        // YAML may give a target or choice as a number; Bergson uses them as Python values.
        let as_text = |v: serde_json::Value| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        let target = spec.doc_to_target.map(as_text);
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            out.write_str(&py_str(value))
                .map_err(minijinja::Error::from)
        });
        let compile = |env: &mut Environment<'static>, name: &'static str, source: String| {
            env.add_template_owned(name, source).map_err(|e| {
                Error::input(format!(
                    "--format_template '{shown}': cannot parse {name}: {e}"
                ))
            })
        };
        compile(&mut env, "doc_to_text", text_template)?;
        let mut has_target_template = false;
        let mut target_column = None;
        if let Some(t) = target {
            if t.contains("{{") || t.contains("{%") {
                compile(&mut env, "doc_to_target", t)?;
                has_target_template = true;
            } else {
                target_column = Some(t);
            }
        }
        Ok(FormatTemplate {
            env,
            target_column,
            has_target_template,
            choices: spec
                .doc_to_choice
                .map(|c| c.into_iter().map(as_text).collect()),
            path: shown,
        })
    }

    fn has_target(&self) -> bool {
        self.has_target_template || self.target_column.is_some()
    }

    /// The rows formatted: `text` set (no target), or `prompt` and `completion` set; a column
    /// of that name is replaced in place, a new one appended (as `datasets.map` does).
    pub fn apply(&self, table: &RecordBatch) -> Result<RecordBatch> {
        let rows = row_values(table)?;
        let mut texts = Vec::with_capacity(rows.len());
        let mut targets = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            texts.push(self.render("doc_to_text", row, i)?);
            if self.has_target() {
                targets.push(self.target(row, i, table)?);
            }
        }
        let strings = |v: Vec<String>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        if !self.has_target() {
            return set_column(table, "text", strings(texts));
        }
        let table = set_column(table, "prompt", strings(texts))?;
        set_column(&table, "completion", strings(targets))
    }

    fn render(&self, name: &str, row: &Value, index: usize) -> Result<String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| Error::input(format!("--format_template '{}': {e}", self.path)))?;
        template.render(row).map_err(|e| {
            Error::input(format!(
                "--format_template '{}': cannot render {name} for row {index}: {e}",
                self.path
            ))
        })
    }

    /// `str(target)`, or `str(doc_to_choice[int(target)])` with choices.
    fn target(&self, row: &Value, index: usize, table: &RecordBatch) -> Result<String> {
        let value = match &self.target_column {
            Some(column) => {
                let v = row.get_attr(column).unwrap_or(Value::UNDEFINED);
                if v.is_undefined() {
                    return Err(Error::input(format!(
                        "--format_template '{}': doc_to_target '{column}' is neither a template \
                         nor a column (columns: {})",
                        self.path,
                        column_names(table).join(", ")
                    )));
                }
                v
            }
            None => Value::from(self.render("doc_to_target", row, index)?),
        };
        let Some(choices) = &self.choices else {
            return Ok(py_str(&value));
        };
        let k = python_int(&value).ok_or_else(|| {
            Error::input(format!(
                "--format_template '{}': row {index}'s target {} is not an index into doc_to_choice",
                self.path,
                py_str(&value)
            ))
        })?;
        // Python indexing: negative indices count from the end.
        let n = choices.len() as i64;
        let at = if k < 0 { k + n } else { k };
        if !(0..n).contains(&at) {
            return Err(Error::input(format!(
                "--format_template '{}': row {index}'s target {k} is out of range for the {n} \
                 doc_to_choice entries",
                self.path
            )));
        }
        Ok(choices[at as usize].clone())
    }
}

/// Python's `int(value)` for numbers, booleans and integer strings.
fn python_int(value: &Value) -> Option<i64> {
    match value.kind() {
        ValueKind::Number => {
            if let Ok(i) = i64::try_from(value.clone()) {
                Some(i)
            } else {
                f64::try_from(value.clone())
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f.trunc() as i64)
            }
        }
        ValueKind::Bool => Some(i64::from(value.is_true())),
        ValueKind::String => value.as_str()?.trim().parse().ok(),
        _ => None,
    }
}

/// Each row as a template context (column name -> value, nulls as `None`).
fn row_values(table: &RecordBatch) -> Result<Vec<Value>> {
    let mut buf = Vec::new();
    {
        let mut writer = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(&mut buf);
        writer
            .write(table)
            .and_then(|_| writer.finish())
            .map_err(|e| {
                Error::input(format!("cannot read the rows for --format_template: {e}"))
            })?;
    }
    if table.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&buf)
        .map_err(|e| Error::input(format!("cannot read the rows for --format_template: {e}")))?;
    Ok(rows.iter().map(template_value).collect())
}

/// A JSON value as a template value (objects keep their key order).
fn template_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => {
            Value::from(items.iter().map(template_value).collect::<Vec<_>>())
        }
        serde_json::Value::Object(map) => Value::from_pairs(
            map.iter()
                .map(|(k, v)| (k.as_str(), template_value(v)))
                .collect::<Vec<_>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};

    fn table() -> RecordBatch {
        let q: ArrayRef = Arc::new(StringArray::from(vec!["2+2?", "Capital of France?"]));
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 0]));
        RecordBatch::try_from_iter([("question", q), ("answer", a)]).unwrap()
    }

    fn template(yaml: &str) -> FormatTemplate {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.yaml");
        std::fs::write(&p, yaml).unwrap();
        FormatTemplate::from_file(&p).unwrap()
    }

    fn strings(t: &RecordBatch, name: &str) -> Vec<String> {
        let c = t.column_by_name(name).unwrap();
        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
        (0..c.len()).map(|i| c.value(i).to_string()).collect()
    }

    #[test]
    fn multiple_choice_targets_index_the_choices() {
        let f = template(
            "doc_to_text: \"Q: {{question}}\\nA:\"\ndoc_to_target: answer\ndoc_to_choice: [\"Paris\", \"4\"]\n",
        );
        let out = f.apply(&table()).unwrap();
        assert_eq!(
            strings(&out, "prompt"),
            ["Q: 2+2?\nA:", "Q: Capital of France?\nA:"]
        );
        assert_eq!(strings(&out, "completion"), ["4", "Paris"]);
        assert_eq!(out.schema().fields().len(), 4);
    }

    #[test]
    fn text_only_and_template_targets() {
        let f = template("doc_to_text: \"{{ question }} ({{ answer }})\"\n");
        let out = f.apply(&table()).unwrap();
        assert_eq!(
            strings(&out, "text"),
            ["2+2? (1)", "Capital of France? (0)"]
        );
        let f = template("doc_to_text: \"{{question}}\"\ndoc_to_target: \"{{ answer + 1 }}\"\n");
        assert_eq!(
            strings(&f.apply(&table()).unwrap(), "completion"),
            ["2", "1"]
        );
    }

    #[test]
    fn bad_templates_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.yaml");
        std::fs::write(&p, "doc_to_target: answer\n").unwrap();
        let e = FormatTemplate::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("doc_to_text"), "{e}");
        let f = template("doc_to_text: \"{{question}}\"\ndoc_to_target: nope\n");
        let e = f.apply(&table()).unwrap_err().to_string();
        assert!(
            e.contains("'nope'") && e.contains("question, answer"),
            "{e}"
        );
        let f = template(
            "doc_to_text: \"{{question}}\"\ndoc_to_target: answer\ndoc_to_choice: [\"x\"]\n",
        );
        let e = f.apply(&table()).unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
    }
}
