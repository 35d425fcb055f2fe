//! Typed column extraction and row/column edits on the fixture datasets.

mod data_support;

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array};
use bergson::data::columns::{
    add_column, column, conversation_column, drop_columns, float_column, string_column, take_rows,
};
use bergson::data::source::load_dataset;
use bergson::data::ChatMessage;
use data_support::{fixture, rows};

fn load(name: &str) -> arrow::record_batch::RecordBatch {
    load_dataset(&fixture(name), "train", None).unwrap()
}

#[test]
fn strings_round_trip_non_ascii_text() {
    let batch = load("prompts.jsonl");
    let prompts = string_column(&batch, "prompt", "--prompt_column").unwrap();
    assert_eq!(prompts[3], "東京はどこですか?");
    assert_eq!(prompts[5], "Line one\nline two");
    // CSV strings are large_string.
    let csv = load("table.csv");
    assert_eq!(
        string_column(&csv, "text", "--prompt_column").unwrap()[3],
        "東京"
    );
}

#[test]
fn missing_column_lists_the_available_ones() {
    let batch = load("prompts.jsonl");
    let err = string_column(&batch, "text", "--prompt_column")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "--prompt_column 'text' not found in the dataset; available columns: id, prompt, completion. \
         Pick one with --prompt_column"
    );
    assert!(column(&batch, "id", "--x").is_ok());
}

#[test]
fn nulls_and_non_strings_name_row_and_column() {
    let csv = load("table.csv");
    let err = string_column(&csv, "note", "--completion_column")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("row 0") && err.contains("'note'") && err.contains("--completion_column"),
        "{err}"
    );
    let err = string_column(&csv, "score", "--prompt_column")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'score'") && err.contains("float64") && err.contains("not strings"),
        "{err}"
    );
}

#[test]
fn floats_accept_ints_and_turn_nulls_into_nan() {
    let batch = load("rewards.jsonl");
    let rewards = float_column(&batch, "reward", "--reward_column").unwrap();
    assert_eq!(rewards[..2], [0.0, 3.5]);
    assert!(rewards[2].is_nan());
    assert_eq!(rewards[3], -1.0);
    let ids = float_column(&batch, "id", "--reward_column").unwrap();
    assert_eq!(ids, [0.0, 1.0, 2.0, 3.0]);
    let err = float_column(&batch, "prompt", "--reward_column")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'prompt'") && err.contains("not numbers"),
        "{err}"
    );
    // NaN / Infinity as Python's json.dumps writes them (datasets reads them as floats).
    let nan = load("rewards_nan.jsonl");
    let rewards = float_column(&nan, "reward", "--reward_column").unwrap();
    assert!(rewards[0].is_nan());
    assert_eq!(rewards[1..], [1.5, f64::INFINITY, f64::NEG_INFINITY]);
    // NaN stays NaN (a float column holding NaN, not null).
    let nan: ArrayRef = Arc::new(Float32Array::from(vec![f32::NAN, 1.0, 2.0, 3.0]));
    let with_nan = add_column(&batch, "adv", nan).unwrap();
    assert!(float_column(&with_nan, "adv", "--advantage_column").unwrap()[0].is_nan());
}

#[test]
fn conversations_are_role_content_lists() {
    let batch = load("conversations.jsonl");
    let convs = conversation_column(&batch, "messages", "--conversation_column").unwrap();
    assert_eq!(convs.len(), 3);
    assert_eq!(convs[1].len(), 3);
    assert_eq!(
        convs[2][1],
        ChatMessage {
            role: "assistant".into(),
            content: "Servus 👋".into()
        }
    );
    // The DatasetDict fixture (written by Python) holds the same conversations.
    let saved = load_dataset(&fixture("saved_dict"), "test", None).unwrap();
    assert_eq!(
        conversation_column(&saved, "messages", "--conversation_column").unwrap(),
        convs[2..]
    );
    let err = conversation_column(&batch, "id", "--conversation_column")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not conversations"), "{err}");
    let types = load("types.jsonl");
    let err = conversation_column(&types, "ls", "--conversation_column")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no 'role' field"), "{err}");
}

#[test]
fn conversation_with_missing_content_names_row_and_turn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.jsonl");
    std::fs::write(
        &path,
        "{\"m\": [{\"role\": \"user\", \"content\": \"a\"}]}\n{\"m\": [{\"role\": \"user\", \"content\": \"b\"}, {\"role\": \"assistant\"}]}\n",
    )
    .unwrap();
    let batch = load_dataset(path.to_str().unwrap(), "train", None).unwrap();
    let err = conversation_column(&batch, "m", "--conversation_column")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("row 1") && err.contains("message 1") && err.contains("content"),
        "{err}"
    );
}

#[test]
fn take_drop_add_build_the_output_table() {
    let batch = load("prompts.jsonl");
    let picked = take_rows(&batch, &[4, 1, 1]).unwrap();
    let ids: Vec<i64> = rows(&picked)
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [4, 1, 1]);
    assert!(take_rows(&batch, &[6])
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    let dropped = drop_columns(&batch, &["prompt", "not_there"]);
    let names: Vec<String> = dropped
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "completion"]);
    // Replacing a column moves it to the end, as Bergson's remove + add_column does.
    let lengths: ArrayRef = Arc::new(Int64Array::from(vec![7, 7, 7, 7, 7, 7]));
    let added = add_column(&batch, "id", lengths).unwrap();
    let names: Vec<String> = added
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["prompt", "completion", "id"]);
    let short: ArrayRef = Arc::new(Int64Array::from(vec![1]));
    assert!(add_column(&batch, "x", short).is_err());
}
