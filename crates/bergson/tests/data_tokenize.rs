//! Tokenising, chat templates, batch packing, padding and advantages against reference outputs
//! of Bergson 2.5.1 / transformers 5 / pandas, committed in tests/fixtures/tokenize/ by
//! tests/fixtures/scripts/make_tokenize_refs.py. Every comparison is exact.

use bergson::data::batching::{allocate_batches, collection_mask, pad_batch};
use bergson::data::chat_template::ChatTemplate;
use bergson::data::pyrandom::PyRandom;
use bergson::data::rewards::group_mean_advantages;
use bergson::data::tokenize::{ChatTemplates, TokenizedRow, Tokenizer};
use bergson::data::ChatMessage;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load(name: &str) -> Value {
    let path = fixtures().join("tokenize").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn tokenizer_dir(name: &str) -> PathBuf {
    match name {
        "bpe-extra" | "spm" | "gpt2-files-opt" | "gpt2-files-plain" => {
            fixtures().join("tokenize").join(name)
        }
        other => fixtures().join("tokenizers").join(other),
    }
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).unwrap()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn special_tokens(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn chat_templates_render_like_transformers() {
    let refs = load("chat_templates.json");
    let templates = refs["templates"].as_object().unwrap();
    let convos = refs["conversations"].as_object().unwrap();
    let specials: HashMap<&str, Vec<(String, String)>> = refs["tokenizers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tokenizer"].as_str().unwrap(),
                special_tokens(&t["special_tokens_map"]),
            )
        })
        .collect();
    let cases = refs["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let name = case["template"].as_str().unwrap();
        let tok = case["tokenizer"].as_str().unwrap();
        let conv = case["conversation"].as_str().unwrap();
        let template = ChatTemplate::new(templates[name].as_str().unwrap()).unwrap();
        let got = template.render(
            &messages(&convos[conv]),
            &specials[tok],
            case["add_generation_prompt"].as_bool().unwrap(),
        );
        let what = format!("template {name}, conversation {conv}, tokenizer {tok}");
        match (&case["expected"], got) {
            (Value::String(want), Ok(got)) => assert_eq!(&got, want, "{what}"),
            (Value::Null, Err(e)) => {
                let py = case["error"].as_str().unwrap();
                assert!(e.to_string().contains(py), "{what}: {e} vs Python {py}");
            }
            (want, got) => panic!("{what}: expected {want}, got {got:?}"),
        }
    }
}

#[test]
fn tokenizer_loading_matches_transformers() {
    let refs = load("chat_templates.json");
    let alternating = messages(&refs["conversations"]["alternating"]);
    for t in refs["tokenizers"].as_array().unwrap() {
        let name = t["tokenizer"].as_str().unwrap();
        let tok = Tokenizer::from_dir(tokenizer_dir(name)).unwrap();
        assert_eq!(
            tok.special_tokens(),
            special_tokens(&t["special_tokens_map"]).as_slice(),
            "{name}"
        );
        assert_eq!(
            tok.apply_chat_template(&alternating).unwrap(),
            t["rendered"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            tok.model_max_length(),
            t["model_max_length"].as_i64().unwrap(),
            "{name}"
        );
    }
    let bpe = Tokenizer::from_dir(tokenizer_dir("bpe")).unwrap();
    assert_eq!(bpe.max_model_length(Some(512)), 512);
    assert_eq!(bpe.max_model_length(None), 2048);
    let bos = Tokenizer::from_dir(tokenizer_dir("bpe-bos")).unwrap();
    assert_eq!(bos.max_model_length(None), i64::MAX);
}

/// Directories with GPT-2's vocab.json and merges.txt but no tokenizer.json (OPT's layout, and
/// GPT2Tokenizer's defaults) load as transformers 5's `GPT2Tokenizer`: the same special tokens
/// and vocabulary size, and the same ids with the default special tokens (a BOS where
/// `add_bos_token` says so), made by tests/fixtures/scripts/make_bpe_files_refs.py.
#[test]
fn gpt2_vocab_and_merges_files_load_as_transformers() {
    let refs = load("gpt2_files.json");
    let texts: Vec<String> = refs["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let cases = refs["tokenizers"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for t in cases {
        let name = t["tokenizer"].as_str().unwrap();
        let tok = Tokenizer::from_dir(tokenizer_dir(name)).unwrap();
        assert_eq!(
            tok.special_tokens(),
            special_tokens(&t["special_tokens_map"]).as_slice(),
            "{name}"
        );
        assert_eq!(
            tok.inner().get_vocab_size(true) as i64,
            t["vocab_size"].as_i64().unwrap(),
            "{name}"
        );
        let rows = tok.encoder(None).unwrap().encode_texts(&texts).unwrap();
        for ((row, want), text) in rows
            .iter()
            .zip(t["input_ids"].as_array().unwrap())
            .zip(&texts)
        {
            assert_eq!(row.input_ids, ints(want), "{name}: {text:?}");
        }
    }
}

fn check_rows(got: &[TokenizedRow], want: &Value, what: &str) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.input_ids,
            ints(&w["input_ids"]),
            "{what}, row {i}: input_ids"
        );
        let labels = match &w["labels"] {
            Value::Null => None,
            v => Some(ints(v)),
        };
        assert_eq!(g.labels, labels, "{what}, row {i}: labels");
        assert_eq!(
            g.len() as u64,
            w["length"].as_u64().unwrap(),
            "{what}, row {i}: length"
        );
    }
}

#[test]
fn tokenize_matches_bergson() {
    let refs = load("tokenize.json");
    let templates = load("chat_templates.json")["templates"].clone();
    let cases = refs["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    let mut n_rows = 0;
    for case in cases {
        let tok_name = case["tokenizer"].as_str().unwrap();
        let mode = case["mode"].as_str().unwrap();
        let mut tok = Tokenizer::from_dir(tokenizer_dir(tok_name)).unwrap();
        if let Some(t) = case["chat_template"].as_str() {
            tok.set_chat_templates(ChatTemplates::Single(templates[t].as_str().unwrap().into()));
        }
        let max_length = case["max_length"].as_u64().map(|m| m as usize);
        let max_length = if case["truncation"].as_bool().unwrap() {
            max_length
        } else {
            None
        };
        let what = format!(
            "{tok_name} {mode} template={} max_length={max_length:?}",
            case["chat_template"]
        );
        let enc = tok.encoder(max_length).unwrap();
        let rows = case["rows"].as_array().unwrap();
        let (batch, single): (_, Vec<_>) = match mode {
            "text" => {
                let texts: Vec<&str> = rows.iter().map(|r| r.as_str().unwrap()).collect();
                (
                    enc.encode_texts(&texts),
                    texts.iter().map(|t| enc.encode_text(t)).collect(),
                )
            }
            "prompt_completion" => {
                let pairs: Vec<(&str, &str)> = rows
                    .iter()
                    .map(|r| (r[0].as_str().unwrap(), r[1].as_str().unwrap()))
                    .collect();
                (
                    enc.encode_prompt_completions(&pairs),
                    pairs
                        .iter()
                        .map(|(p, c)| enc.encode_prompt_completion(p, c))
                        .collect(),
                )
            }
            _ => {
                let convos: Vec<Vec<ChatMessage>> = rows.iter().map(messages).collect();
                (
                    enc.encode_conversations(&convos),
                    convos.iter().map(|c| enc.encode_conversation(c)).collect(),
                )
            }
        };
        match &case["expected"] {
            Value::Null => {
                let py = case["error"].as_str().unwrap();
                let err = batch.expect_err(&what);
                assert!(err.is_user_error(), "{what}: {err}");
                if py.contains("Failed to find completion") {
                    assert!(
                        err.to_string().contains("altered the assistant message"),
                        "{what}: {err}"
                    );
                }
                if let Some(msg) = py.strip_prefix("TemplateError: ") {
                    assert!(err.to_string().contains(msg), "{what}: {err}");
                }
            }
            want => {
                let got = batch.unwrap_or_else(|e| panic!("{what}: {e}"));
                check_rows(&got, want, &what);
                let single: Vec<TokenizedRow> = single.into_iter().map(Result::unwrap).collect();
                assert_eq!(single, got, "{what}: per-row and batch APIs differ");
                n_rows += got.len();
            }
        }
    }
    assert!(n_rows > 300, "{n_rows}");
}

#[test]
fn batches_match_bergson() {
    let refs = load("batches.json");
    let lengths = refs["lengths"].as_object().unwrap();
    let mut n_ok = 0;
    for case in refs["cases"].as_array().unwrap() {
        let name = case["lengths"].as_str().unwrap();
        let lens = usizes(&lengths[name]);
        let n = case["token_batch_size"].as_u64().unwrap() as usize;
        let world = case["world_size"].as_u64().unwrap() as usize;
        let mbs = case["max_batch_size"].as_u64().map(|m| m as usize);
        let what = format!("{name} N={n} world={world} max_batch_size={mbs:?}");
        let got = allocate_batches(&lens, n, mbs, world);
        match &case["expected"] {
            Value::Null => {
                let err = got.expect_err(&what);
                assert!(err.is_user_error(), "{what}: {err}");
            }
            want => {
                let want: Vec<Vec<Vec<usize>>> = serde_json::from_value(want.clone()).unwrap();
                assert_eq!(
                    got.unwrap_or_else(|e| panic!("{what}: {e}")),
                    want,
                    "{what}"
                );
                n_ok += 1;
            }
        }
    }
    assert!(n_ok > 150, "{n_ok}");
}

#[test]
fn python_random_is_reproduced() {
    let refs = load("batches.json");
    for s in refs["shuffles"].as_array().unwrap() {
        let n = s["n"].as_u64().unwrap() as usize;
        let mut x: Vec<usize> = (0..n).collect();
        PyRandom::new(42).shuffle(&mut x);
        assert_eq!(x, usizes(&s["expected"]), "shuffle of {n}");
    }
    let mut r = PyRandom::new(42);
    for pair in refs["getrandbits_seed42"].as_array().unwrap() {
        let k = pair[0].as_u64().unwrap() as u32;
        assert_eq!(
            r.getrandbits(k),
            pair[1].as_u64().unwrap(),
            "getrandbits({k})"
        );
    }
    let mut r = PyRandom::new(12345678901234567890);
    for want in refs["getrandbits_seed_big"].as_array().unwrap() {
        assert_eq!(r.getrandbits(32), want.as_u64().unwrap());
    }
}

fn tensor_rows(t: &tch::Tensor) -> Vec<Vec<i64>> {
    let (n, s) = t.size2().unwrap();
    let flat: Vec<i64> = Vec::try_from(t.flatten(0, -1)).unwrap();
    (0..n as usize)
        .map(|i| flat[i * s as usize..(i + 1) * s as usize].to_vec())
        .collect()
}

#[test]
fn padding_matches_pad_and_tensor() {
    let refs = load("batches.json");
    let pad = &refs["pad"];
    let seqs: Vec<Vec<i64>> = pad["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(ints)
        .collect();
    let labels: Vec<Vec<i64>> = pad["labels"].as_array().unwrap().iter().map(ints).collect();
    let seq_refs: Vec<&[i64]> = seqs.iter().map(Vec::as_slice).collect();
    let label_refs: Vec<&[i64]> = labels.iter().map(Vec::as_slice).collect();
    for (key, lab) in [
        ("no_labels", None),
        ("with_labels", Some(label_refs.as_slice())),
    ] {
        let (x, y) = pad_batch(&seq_refs, lab).unwrap();
        let want = &pad[key];
        let to_rows =
            |v: &Value| -> Vec<Vec<i64>> { v.as_array().unwrap().iter().map(ints).collect() };
        assert_eq!(tensor_rows(&x), to_rows(&want["input_ids"]), "{key}");
        assert_eq!(tensor_rows(&y), to_rows(&want["labels"]), "{key}");
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let mask = collection_mask(&lens, x.size()[1] as usize).unwrap();
        let mask_rows = tensor_rows(&mask.to_kind(tch::Kind::Int64));
        let want_mask: Vec<Vec<i64>> = want["collection_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_bool().unwrap() as i64)
                    .collect()
            })
            .collect();
        assert_eq!(mask_rows, want_mask, "{key}");
    }
}

#[test]
fn advantages_match_pandas_bit_for_bit() {
    let refs = load("advantages.json");
    for case in refs["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompts: Vec<&str> = case["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let rewards: Vec<f64> = case["rewards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| f64::from_bits(b.as_u64().unwrap()))
            .collect();
        let got = group_mean_advantages(&prompts, &rewards);
        let want: Vec<u64> = case["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap())
            .collect();
        let got_bits: Vec<u64> = got.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got_bits, want, "{name}");
    }
}
