//! Typed access to dataset columns, with errors that name the flag, the column and the row, and
//! the row/column edits used to filter a dataset and build the saved `data.hf`.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, GenericListArray, OffsetSizeTrait, StructArray, UInt64Array,
};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use crate::data::ChatMessage;
use crate::{Error, Result};

/// The names of `batch`'s columns, in order.
pub fn column_names(batch: &RecordBatch) -> Vec<String> {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// The column `name`, or an error listing the available columns and naming `flag`.
pub fn column<'a>(batch: &'a RecordBatch, name: &str, flag: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        Error::input(format!(
            "{flag} '{name}' not found in the dataset; available columns: {}. Pick one with {flag}",
            column_names(batch).join(", ")
        ))
    })
}

/// Every value of a text column; a null or a non-string column is an error naming the row.
pub fn string_column(batch: &RecordBatch, name: &str, flag: &str) -> Result<Vec<String>> {
    Ok(text_column(batch, name, flag)?
        .values()
        .into_iter()
        .map(str::to_string)
        .collect())
}

/// A text column with a string in every row, read in place (a corpus's text is not copied).
#[derive(Debug, Clone)]
pub struct TextColumn {
    array: ArrayRef,
}

impl TextColumn {
    /// The strings, in row order.
    pub fn values(&self) -> Vec<&str> {
        // Nulls were refused when the column was made.
        fn all<'a>(it: impl Iterator<Item = Option<&'a str>>) -> Vec<&'a str> {
            it.map(Option::unwrap_or_default).collect()
        }
        match self.array.data_type() {
            DataType::Utf8 => all(self.array.as_string::<i32>().iter()),
            DataType::LargeUtf8 => all(self.array.as_string::<i64>().iter()),
            _ => all(self.array.as_string_view().iter()),
        }
    }
}

/// The text column `name`, as [`string_column`] checks it, without copying its strings.
pub fn text_column(batch: &RecordBatch, name: &str, flag: &str) -> Result<TextColumn> {
    let array = column(batch, name, flag)?;
    let what = format!("column '{name}' ({flag})");
    let array = text_array(array, &what, flag, batch)?;
    if let Some(row) = array
        .logical_nulls()
        .and_then(|n| n.iter().position(|valid| !valid))
    {
        return Err(Error::input(format!(
            "row {row} of {what} is null, but every row needs a string; fill in or drop the rows \
             without one"
        )));
    }
    Ok(TextColumn { array })
}

/// The strings of column `name` with nulls kept as `None` (for Bergson's chunking, which skips
/// rows without a string), or an error listing the columns when it is not a text column.
pub fn nullable_string_column(
    batch: &RecordBatch,
    name: &str,
    flag: &str,
) -> Result<Vec<Option<String>>> {
    let array = column(batch, name, flag)?;
    let array = text_array(array, &format!("column '{name}' ({flag})"), flag, batch)?;
    strings_nullable(&array).ok_or_else(|| Error::input(format!("column '{name}' is not text")))
}

/// `array` as a plain string array (dictionaries of strings decoded), or an error naming its type.
fn text_array(array: &ArrayRef, what: &str, flag: &str, batch: &RecordBatch) -> Result<ArrayRef> {
    let not_text = |dt: &DataType| {
        Error::input(format!(
            "{what} holds {} values, not strings; pick a text column with {flag} (columns: {})",
            type_name(dt),
            column_summary(batch)
        ))
    };
    match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(array.clone()),
        DataType::Dictionary(_, value) if is_string(value) => {
            cast(array, &DataType::LargeUtf8).map_err(|_| not_text(array.data_type()))
        }
        other => Err(not_text(other)),
    }
}

/// `name (type), ...` of every column, for messages that ask the user to pick one.
fn column_summary(batch: &RecordBatch) -> String {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} ({})", f.name(), type_name(f.data_type())))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_string(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// A short, user-facing name for an Arrow type.
fn type_name(dt: &DataType) -> String {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => "list".into(),
        DataType::Struct(_) => "object (struct)".into(),
        DataType::Null => "null".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// Every value of a numeric column as f64 (ints, floats and bools accepted, as
/// `numpy.array(values, dtype=float64)` takes them); NaN stays NaN and nulls become NaN.
pub fn float_column(batch: &RecordBatch, name: &str, flag: &str) -> Result<Vec<f64>> {
    let array = column(batch, name, flag)?;
    let numeric = array.data_type().is_numeric()
        || matches!(array.data_type(), DataType::Boolean | DataType::Null);
    if !numeric {
        return Err(Error::input(format!(
            "column '{name}' ({flag}) holds {} values, not numbers; pick a numeric column with {flag} (columns: {})",
            type_name(array.data_type()),
            column_summary(batch)
        )));
    }
    let floats = cast(array, &DataType::Float64).map_err(|e| {
        Error::input(format!(
            "column '{name}' ({flag}) cannot be read as numbers ({e}); pick a numeric column"
        ))
    })?;
    let floats = floats.as_primitive::<arrow::datatypes::Float64Type>();
    Ok(floats.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// Every value of a conversation column: a list of `{role, content}` messages per row.
pub fn conversation_column(
    batch: &RecordBatch,
    name: &str,
    flag: &str,
) -> Result<Vec<Vec<ChatMessage>>> {
    let array = column(batch, name, flag)?;
    let what = format!("column '{name}' ({flag})");
    match array.data_type() {
        DataType::List(_) => conversations_of(array.as_list::<i32>(), &what, flag),
        DataType::LargeList(_) => conversations_of(array.as_list::<i64>(), &what, flag),
        other => Err(Error::input(format!(
            "{what} holds {} values, not conversations (lists of {{\"role\", \"content\"}} \
             messages); pick a conversation column with {flag} (columns: {})",
            type_name(other),
            column_summary(batch)
        ))),
    }
}

fn conversations_of<O: OffsetSizeTrait>(
    list: &GenericListArray<O>,
    what: &str,
    flag: &str,
) -> Result<Vec<Vec<ChatMessage>>> {
    let shape_error = || {
        Error::input(format!(
            "{what} holds lists of {}, not {{\"role\", \"content\"}} messages; pick a \
             conversation column with {flag}",
            type_name(&list.value_type())
        ))
    };
    let messages: &StructArray = list.values().as_struct_opt().ok_or_else(shape_error)?;
    let field = |key: &str| -> Result<Vec<Option<String>>> {
        let values = messages.column_by_name(key).ok_or_else(|| {
            Error::input(format!(
                "{what}: messages have no '{key}' field (fields: {}); every message needs \
                 \"role\" and \"content\"",
                messages.column_names().join(", ")
            ))
        })?;
        let nullable = strings_nullable(values).ok_or_else(|| {
            Error::input(format!(
                "{what}: the message field '{key}' holds {} values, not strings",
                type_name(values.data_type())
            ))
        })?;
        Ok(nullable)
    };
    let roles = field("role")?;
    let contents = field("content")?;
    let offsets = list.value_offsets();
    let mut out = Vec::with_capacity(list.len());
    for row in 0..list.len() {
        if list.is_null(row) {
            return Err(Error::input(format!(
                "row {row} of {what} is null, but every row needs a conversation; fill in or drop it"
            )));
        }
        let (start, end) = (offsets[row].as_usize(), offsets[row + 1].as_usize());
        let mut conversation = Vec::with_capacity(end - start);
        for (turn, i) in (start..end).enumerate() {
            let missing = |key: &str| {
                Error::input(format!(
                    "row {row} of {what}: message {turn} has no {key}; every message needs a \
                     \"role\" and a \"content\" string"
                ))
            };
            if messages.is_null(i) {
                return Err(missing("value (it is null)"));
            }
            let role = roles[i].clone().ok_or_else(|| missing("\"role\""))?;
            let content = contents[i].clone().ok_or_else(|| missing("\"content\""))?;
            conversation.push(ChatMessage { role, content });
        }
        out.push(conversation);
    }
    Ok(out)
}

/// A string array's values with nulls kept; `None` if it is not a string array.
pub(crate) fn strings_nullable(array: &ArrayRef) -> Option<Vec<Option<String>>> {
    let owned =
        |it: &mut dyn Iterator<Item = Option<&str>>| it.map(|v| v.map(str::to_string)).collect();
    Some(match array.data_type() {
        DataType::Utf8 => owned(&mut array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => owned(&mut array.as_string::<i64>().iter()),
        DataType::Utf8View => owned(&mut array.as_string_view().iter()),
        DataType::Null => vec![None; array.len()],
        _ => return None,
    })
}

/// `batch` with column `name` set to `values`: replaced in place when it exists, else
/// appended (as `datasets.map` updates columns).
pub fn set_column(batch: &RecordBatch, name: &str, values: ArrayRef) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    let mut columns = batch.columns().to_vec();
    let field = Arc::new(Field::new(name, values.data_type().clone(), true));
    match fields.iter().position(|f| f.name() == name) {
        Some(i) => {
            fields[i] = field;
            columns[i] = values;
        }
        None => {
            fields.push(field);
            columns.push(values);
        }
    }
    let schema = Schema::new(fields).with_metadata(schema.metadata.clone());
    RecordBatch::try_new(Arc::new(schema), columns)
        .map_err(|e| Error::input(format!("cannot set column '{name}': {e}")))
}

/// The rows at `indices`, in that order (repeats allowed).
pub fn take_rows(batch: &RecordBatch, indices: &[usize]) -> Result<RecordBatch> {
    if let Some(&bad) = indices.iter().find(|&&i| i >= batch.num_rows()) {
        return Err(Error::input(format!(
            "row index {bad} is out of range for a dataset of {} rows",
            batch.num_rows()
        )));
    }
    let indices = UInt64Array::from(indices.iter().map(|&i| i as u64).collect::<Vec<_>>());
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &indices, None))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::input(format!("cannot select rows: {e}")))?;
    RecordBatch::try_new(batch.schema(), columns)
        .map_err(|e| Error::input(format!("cannot select rows: {e}")))
}

/// `batch` without the named columns; names that are not columns are ignored (as Bergson
/// intersects its drop list with the dataset's columns).
pub fn drop_columns(batch: &RecordBatch, names: &[&str]) -> RecordBatch {
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !names.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    // Projection of existing column indices cannot fail.
    batch.project(&keep).unwrap_or_else(|_| batch.clone())
}

/// `batch` with `values` appended as column `name`; an existing column of that name is removed
/// first (as Bergson replaces `advantage`). The new column is nullable.
pub fn add_column(batch: &RecordBatch, name: &str, values: ArrayRef) -> Result<RecordBatch> {
    if values.len() != batch.num_rows() {
        return Err(Error::input(format!(
            "column '{name}' has {} values but the dataset has {} rows",
            values.len(),
            batch.num_rows()
        )));
    }
    let base = drop_columns(batch, &[name]);
    let mut fields: Vec<Arc<Field>> = base.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(name, values.data_type().clone(), true)));
    let mut columns = base.columns().to_vec();
    columns.push(values);
    let schema = Schema::new(fields).with_metadata(base.schema().metadata.clone());
    RecordBatch::try_new(Arc::new(schema), columns)
        .map_err(|e| Error::input(format!("cannot add column '{name}': {e}")))
}
