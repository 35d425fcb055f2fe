//! A GPT-2 byte-level BPE tokenizer from `vocab.json` and `merges.txt`, for checkpoints that
//! ship no `tokenizer.json` (OPT's `facebook/opt-*`, older GPT-2 fine-tunes), built as
//! transformers 5's `GPT2Tokenizer` builds it: the BPE model without dropout or unknown-token
//! fusing, a byte-level pre-tokenizer (`add_prefix_space` from `tokenizer_config.json`), a
//! byte-level decoder, and once the special tokens are in (`TokenizersBackend.
//! update_post_processor`) a template adding `bos_token` before (`add_bos_token`) and
//! `eos_token` after (`add_eos_token`) each sequence.

use crate::{Error, Result};
use serde_json::{Map, Value as Json};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;

/// The vocabulary file.
pub const VOCAB_FILE: &str = "vocab.json";
/// The merges file.
pub const MERGES_FILE: &str = "merges.txt";

/// `tokenizer_class` values built from the two files (absent: what `AutoTokenizer` picks for
/// the GPT-2-tokenized model types, OPT's included).
const GPT2_CLASSES: [&str; 2] = ["GPT2Tokenizer", "GPT2TokenizerFast"];

/// `GPT2Tokenizer`'s default for `bos_token`, `eos_token` and `unk_token`.
pub const GPT2_DEFAULT_SPECIAL: &str = "<|endoftext|>";

/// Whether `dir` holds the two files.
pub fn has_files(dir: &Path) -> bool {
    dir.join(VOCAB_FILE).is_file() && dir.join(MERGES_FILE).is_file()
}

/// The tokenizer of `dir` built from its two files, without special tokens or post-processor
/// (see [`set_post_processor`]). Refuses a `tokenizer_class` other than GPT-2's, which would
/// build a different pipeline.
pub fn gpt2_tokenizer(dir: &Path, config: &Map<String, Json>) -> Result<tokenizers::Tokenizer> {
    if let Some(class) = config.get("tokenizer_class").and_then(Json::as_str) {
        if !GPT2_CLASSES.contains(&class) {
            return Err(Error::input(format!(
                "{} has no tokenizer.json and its tokenizer_class {class} is not built from \
                 vocab.json and merges.txt here (only GPT2Tokenizer is); save a tokenizer.json \
                 with transformers' tokenizer.save_pretrained",
                dir.display()
            )));
        }
    }
    let (vocab, merges) = (dir.join(VOCAB_FILE), dir.join(MERGES_FILE));
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| {
            Error::input(format!(
                "cannot build a BPE tokenizer from {} and {}: {e}; re-download the checkpoint",
                vocab.display(),
                merges.display()
            ))
        })?;
    let add_prefix_space = config
        .get("add_prefix_space")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// `update_post_processor`: `bos $A eos` for a single sequence (and `… bos $B:1 eos:1` for a
/// pair), each special token present only when its `add_*_token` is set and the token is named.
/// Called after the named special tokens were added, so their ids are known.
pub fn set_post_processor(
    tokenizer: &mut tokenizers::Tokenizer,
    config: &Map<String, Json>,
    bos: Option<&str>,
    eos: Option<&str>,
) -> Result<()> {
    let flag = |key: &str| config.get(key).and_then(Json::as_bool).unwrap_or(false);
    let bos = bos.filter(|_| flag("add_bos_token"));
    let eos = eos.filter(|_| flag("add_eos_token"));
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut special = Vec::new();
    if let Some(b) = bos {
        single.push(format!("{b}:0"));
        special.push((b.to_string(), token_id(tokenizer, b)?));
    }
    single.push("$A:0".to_string());
    if let Some(e) = eos {
        single.push(format!("{e}:0"));
        special.push((e.to_string(), token_id(tokenizer, e)?));
    }
    pair.extend(single.iter().cloned());
    if let Some(b) = bos {
        pair.push(format!("{b}:1"));
    }
    pair.push("$B:1".to_string());
    if let Some(e) = eos {
        pair.push(format!("{e}:1"));
    }
    let bad = |e: String| Error::input(format!("cannot build the special-token template: {e}"));
    let template = TemplateProcessing::builder()
        .try_single(single)
        .map_err(bad)?
        .try_pair(pair)
        .map_err(bad)?
        .special_tokens(special)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    tokenizer.with_post_processor(Some(template));
    Ok(())
}

fn token_id(tokenizer: &tokenizers::Tokenizer, token: &str) -> Result<u32> {
    tokenizer.token_to_id(token).ok_or_else(|| {
        Error::internal(format!(
            "special token {token:?} has no id after it was added"
        ))
    })
}
