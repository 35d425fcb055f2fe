//! Tokenising dataset rows exactly as Bergson 2.5.1 (`bergson/data.py: tokenize`) does with a
//! transformers 5 tokenizer (`AutoTokenizer.from_pretrained`, the `TokenizersBackend` class).
//!
//! Three row formats:
//! * plain text (`--prompt_column` only): the tokenizer's default special tokens are added
//!   (whatever its post-processor adds: a BOS for Llama, nothing for GPT-2/Pythia); no labels
//!   (the loss covers every token);
//! * prompt/completion (`--completion_column`): the conversation
//!   `[{user: prompt}, {assistant: completion}]`, formatted as below;
//! * conversations (`--conversation_column`): the chat template renders the messages to one
//!   string (no generation prompt), which is tokenised without special tokens. Labels are -100
//!   except on the tokens overlapping each assistant message's content, located by walking the
//!   messages backwards with `str.rfind` (each search ends where the previous match began) and
//!   mapping character offsets (Unicode code points, as Python counts them) to tokens.
//!
//! With `--truncation` every row is cut to `max_length` tokens on the tokenizer's truncation
//! side (right unless `truncation_side` says otherwise), special tokens included.
//!
//! Loading follows transformers 5 for a directory holding `tokenizer.json`: the backend is
//! `tokenizer.json` as saved (its own truncation and padding switched off); named special
//! tokens from `tokenizer_config.json` (or `special_tokens_map.json` when the config has no
//! `added_tokens_decoder`) that the vocabulary lacks are added as special tokens;
//! `add_bos_token`/`add_eos_token` are ignored (transformers drops them when `tokenizer.json`
//! exists); the chat template comes from `chat_template.jinja` and
//! `additional_chat_templates/*.jinja` when present, else from `chat_template` in the config
//! (a string, or a list of `{name, template}` with `default` used).
//!
//! A directory without `tokenizer.json` but with GPT-2's `vocab.json` and `merges.txt` (OPT's
//! checkpoints) is built as transformers' `GPT2Tokenizer` builds it ([`super::bpe_files`]),
//! where `add_bos_token`/`add_eos_token` do count.
//!
//! Not reproduced: model-specific tokenizer classes that rebuild their pipeline in Python
//! instead of reading `tokenizer.json` (e.g. `LlamaTokenizer` with a SentencePiece-style
//! `tokenizer.json`); other directories without `tokenizer.json` (SentencePiece models,
//! `tekken.json`).

use super::bpe_files;
use super::chat_template::ChatTemplate;
use super::ChatMessage;
use crate::progress::Phase;
use crate::{Error, Result};
use serde_json::{Map, Value as Json};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tokenizers::{
    AddedToken, Encoding, PostProcessor, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// Rows given to the tokenizers library at a time (see [`Encoder::encode_in_slices`]).
const ENCODE_SLICE: usize = 2048;

/// Bergson's `BIG_NUM` (`np.iinfo(np.int64).max`): the limit when none is known.
pub const NO_LIMIT: i64 = i64::MAX;

/// transformers' named special-token attributes, in the order it stores them.
const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Bergson's check of `--token_batch_size` against the model (`setup_data_pipeline`): a token
/// batch size above `max_model_length` is an error; otherwise returns the truncation length
/// `min(max_model_length, token_batch_size)` (used only with `--truncation`).
pub fn truncation_length(token_batch_size: usize, max_model_length: i64) -> Result<usize> {
    let tbs = i64::try_from(token_batch_size).unwrap_or(i64::MAX);
    if tbs < NO_LIMIT && tbs > max_model_length {
        return Err(Error::input(format!(
            "--token_batch_size {token_batch_size} exceeds the model's maximum length \
             ({max_model_length}); use --token_batch_size {max_model_length} or smaller"
        )));
    }
    Ok(tbs.min(max_model_length).max(0) as usize)
}

/// One tokenised row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedRow {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Per-token labels (-100 = no loss) for chat-formatted rows; `None` for plain text, where
    /// the labels are the input ids.
    pub labels: Option<Vec<i64>>,
}

impl TokenizedRow {
    /// Number of tokens (Bergson's `length` column).
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// True when the row has no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Positions with a next-token loss: those after the first whose label is not -100.
    pub fn next_token_targets(&self) -> usize {
        match &self.labels {
            Some(labels) => labels.iter().skip(1).filter(|&&y| y != -100).count(),
            None => self.input_ids.len().saturating_sub(1),
        }
    }
}

/// The chat templates a tokenizer ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplates {
    /// No template.
    None,
    /// One template.
    Single(String),
    /// Named templates (`default` is the one used).
    Named(Vec<(String, String)>),
}

/// A tokenizer loaded from a model or tokenizer directory, with what Bergson needs from
/// transformers' tokenizer object around it.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    dir: PathBuf,
    model_max_length: i64,
    special_tokens: Vec<(String, String)>,
    templates: ChatTemplates,
    compiled: OnceLock<std::result::Result<ChatTemplate, String>>,
    truncation_side: TruncationDirection,
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` plus `tokenizer_config.json`, `special_tokens_map.json`,
    /// `chat_template.jinja` and `additional_chat_templates/*.jinja` when present.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let tok_path = dir.join("tokenizer.json");
        let config = read_json_object(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        // Without tokenizer.json, GPT-2's vocab.json + merges.txt (OPT ships only these).
        let from_files = !tok_path.is_file() && bpe_files::has_files(&dir);
        if !tok_path.is_file() && !from_files {
            return Err(Error::input(format!(
                "{} has no tokenizer.json (nor GPT-2's vocab.json and merges.txt); point \
                 --tokenizer (or --model) at a directory with a fast-tokenizer file (save one \
                 with transformers' tokenizer.save_pretrained)",
                dir.display()
            )));
        }
        let mut inner = if from_files {
            bpe_files::gpt2_tokenizer(&dir, &config)?
        } else {
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| {
                Error::input(format!(
                    "cannot load {}: {e}; the file is corrupt or not a tokenizers file: re-download the checkpoint or re-save it with transformers' tokenizer.save_pretrained",
                    tok_path.display()
                ))
            })?
        };
        let json_truncation_side = inner.get_truncation().map(|t| t.direction);
        inner
            .with_truncation(None)
            .map_err(|e| Error::input(format!("{}: {e}", tok_path.display())))?;
        inner.with_padding(None);

        let model_max_length = match config
            .get("model_max_length")
            .or_else(|| config.get("max_len"))
        {
            None | Some(Json::Null) => NO_LIMIT,
            Some(v) => json_to_i64(v).ok_or_else(|| {
                Error::input(format!(
                    "{}: model_max_length must be a number, got {v}",
                    dir.join("tokenizer_config.json").display()
                ))
            })?,
        };
        let truncation_side = match config.get("truncation_side").and_then(Json::as_str) {
            Some("left") => TruncationDirection::Left,
            Some("right") => TruncationDirection::Right,
            Some(other) => {
                return Err(Error::input(format!(
                    "{}: truncation_side must be \"left\" or \"right\", got {other:?}",
                    dir.join("tokenizer_config.json").display()
                )))
            }
            None => json_truncation_side.unwrap_or(TruncationDirection::Right),
        };
        if let Some(split) = config.get("split_special_tokens").and_then(Json::as_bool) {
            inner.set_encode_special_tokens(split);
        }
        let templates = load_templates(&dir, &config)?;
        let class_defaults: &[(&str, &str)] = if from_files {
            &[
                ("bos_token", bpe_files::GPT2_DEFAULT_SPECIAL),
                ("eos_token", bpe_files::GPT2_DEFAULT_SPECIAL),
                ("unk_token", bpe_files::GPT2_DEFAULT_SPECIAL),
            ]
        } else {
            &[]
        };
        let special = SpecialTokens::from_config(&dir, &config, class_defaults)?;
        special.add_missing_to(&mut inner, &config);
        if from_files {
            let named = |name: &str| {
                special
                    .named
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t.content())
            };
            bpe_files::set_post_processor(
                &mut inner,
                &config,
                named("bos_token"),
                named("eos_token"),
            )?;
        }

        Ok(Tokenizer {
            inner,
            dir,
            model_max_length,
            special_tokens: special.named_strings(),
            templates,
            compiled: OnceLock::new(),
            truncation_side,
        })
    }

    /// The directory the tokenizer was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlying `tokenizers` tokenizer (special tokens added, no truncation/padding).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// transformers' `model_max_length` (`NO_LIMIT` when unset or beyond int64).
    pub fn model_max_length(&self) -> i64 {
        self.model_max_length
    }

    /// Bergson's `max_tokens_for_model`: `min(model_max_length, max_position_embeddings)` with
    /// a missing value counting as `NO_LIMIT`.
    pub fn max_model_length(&self, config_max_position_embeddings: Option<i64>) -> i64 {
        self.model_max_length
            .min(config_max_position_embeddings.unwrap_or(NO_LIMIT))
    }

    /// The named special tokens passed to chat templates, e.g. `("bos_token", "<s>")`.
    pub fn special_tokens(&self) -> &[(String, String)] {
        &self.special_tokens
    }

    /// The text of a named special token (`"eos_token"`, ...), if set.
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The chat templates found when loading (or set with [`Self::set_chat_templates`]).
    pub fn chat_templates(&self) -> &ChatTemplates {
        &self.templates
    }

    /// Replaces the chat templates (Python's `tokenizer.chat_template = ...`).
    pub fn set_chat_templates(&mut self, templates: ChatTemplates) {
        self.templates = templates;
        self.compiled = OnceLock::new();
    }

    /// The template transformers would use (`get_chat_template` without arguments).
    /// `flag` names the option that needs it, for the error message.
    fn template_source(&self, flag: &str) -> Result<&str> {
        match &self.templates {
            ChatTemplates::Single(s) => Ok(s),
            ChatTemplates::Named(list) => match list.iter().find(|(n, _)| n == "default") {
                Some((_, s)) => Ok(s),
                None => {
                    let mut names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
                    names.sort();
                    Err(Error::input(format!(
                        "{flag} formats rows with the chat template, but the tokenizer in {} has \
                         several templates ({}) and none is named \"default\"; add a \
                         chat_template.jinja there",
                        self.dir.display(),
                        names.join(", ")
                    )))
                }
            },
            ChatTemplates::None => Err(Error::input(format!(
                "{flag} formats rows with the tokenizer's chat template, but {} has none \
                 (no chat_template.jinja, no chat_template in tokenizer_config.json); pass a \
                 --tokenizer that has one, or use plain-text rows (--prompt_column only)",
                self.dir.display()
            ))),
        }
    }

    fn template(&self, flag: &str) -> Result<&ChatTemplate> {
        let source = self.template_source(flag)?;
        self.compiled
            .get_or_init(|| ChatTemplate::new(source).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|msg| Error::input(format!("{} (tokenizer in {})", msg, self.dir.display())))
    }

    /// Renders a conversation with the tokenizer's chat template, as Bergson calls
    /// `apply_chat_template(convo, tokenize=False)`.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        self.render(messages, "--conversation_column")
    }

    fn render(&self, messages: &[ChatMessage], flag: &str) -> Result<String> {
        self.template(flag)?
            .render(messages, &self.special_tokens, false)
    }

    /// An encoder for one run: `max_length` is `Some(min(max_model_length,
    /// token_batch_size))` with `--truncation`, `None` without.
    pub fn encoder(&self, max_length: Option<usize>) -> Result<Encoder<'_>> {
        let inner = match max_length {
            None => Cow::Borrowed(&self.inner),
            Some(max_length) => {
                let added = self
                    .inner
                    .get_post_processor()
                    .map_or(0, |p| p.added_tokens(false));
                if max_length < added {
                    return Err(Error::input(format!(
                        "cannot truncate to {max_length} tokens: the tokenizer adds {added} \
                         special tokens to every text; use a bigger --token_batch_size"
                    )));
                }
                let mut tok = self.inner.clone();
                tok.with_truncation(Some(TruncationParams {
                    max_length,
                    stride: 0,
                    strategy: TruncationStrategy::LongestFirst,
                    direction: self.truncation_side,
                }))
                .map_err(|e| {
                    Error::input(format!("cannot truncate to {max_length} tokens: {e}"))
                })?;
                Cow::Owned(tok)
            }
        };
        Ok(Encoder { tok: self, inner })
    }
}

/// Tokenises rows with fixed truncation settings (see [`Tokenizer::encoder`]).
#[derive(Debug)]
pub struct Encoder<'a> {
    tok: &'a Tokenizer,
    inner: Cow<'a, tokenizers::Tokenizer>,
}

impl Encoder<'_> {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoding> {
        self.inner
            .encode_char_offsets(text, add_special_tokens)
            .map_err(|e| Error::input(format!("cannot tokenise a row: {e}")))
    }

    /// A plain-text row (the tokenizer's special tokens added, no labels).
    pub fn encode_text(&self, text: &str) -> Result<TokenizedRow> {
        Ok(plain_row(&self.encode(text, true)?))
    }

    /// A prompt/completion row: the conversation `[user: prompt, assistant: completion]`.
    pub fn encode_prompt_completion(&self, prompt: &str, completion: &str) -> Result<TokenizedRow> {
        let convo = prompt_completion_convo(prompt, completion);
        let text = self.tok.render(&convo, "--completion_column")?;
        chat_row(&text, &self.encode(&text, false)?, &convo)
    }

    /// A conversation row (chat template, labels only on assistant contents).
    pub fn encode_conversation(&self, messages: &[ChatMessage]) -> Result<TokenizedRow> {
        let text = self.tok.render(messages, "--conversation_column")?;
        chat_row(&text, &self.encode(&text, false)?, messages)
    }

    /// Encodes `texts` (ids only) a slice at a time, each slice in parallel pieces
    /// ([`encode_pieces`]), polling Ctrl-C between slices.
    fn encode_in_slices<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        add_special_tokens: bool,
    ) -> Result<Vec<FlatRows>> {
        encode_pieces(texts, |piece, first| {
            let mut flat = FlatRows::default();
            for (i, text) in piece.iter().enumerate() {
                let enc = self
                    .inner
                    .encode_fast(text.as_ref(), add_special_tokens)
                    .map_err(|e| {
                        in_row(first + i, Error::input(format!("cannot tokenise it: {e}")))
                    })?;
                flat.push(enc.get_ids(), None);
            }
            Ok(flat)
        })
    }

    /// Plain-text rows, tokenised in parallel.
    pub fn encode_texts<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<TokenizedRow>> {
        Ok(FlatRows::into_rows(self.encode_in_slices(texts, true)?))
    }

    /// Token ids of texts without the tokenizer's special tokens (Bergson's chunking),
    /// tokenised in parallel.
    pub fn encode_texts_plain<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<i64>>> {
        Ok(FlatRows::into_rows(self.encode_in_slices(texts, false)?)
            .into_iter()
            .map(|row| row.input_ids)
            .collect())
    }

    /// Prompt/completion rows; errors name the row (its index in `rows`).
    pub fn encode_prompt_completions<P: AsRef<str>, C: AsRef<str>>(
        &self,
        rows: &[(P, C)],
    ) -> Result<Vec<TokenizedRow>> {
        let convos: Vec<Vec<ChatMessage>> = rows
            .iter()
            .map(|(p, c)| prompt_completion_convo(p.as_ref(), c.as_ref()))
            .collect();
        self.encode_chats(&convos, "--completion_column")
    }

    /// Conversation rows; errors name the row (its index in `rows`).
    pub fn encode_conversations(&self, rows: &[Vec<ChatMessage>]) -> Result<Vec<TokenizedRow>> {
        self.encode_chats(rows, "--conversation_column")
    }

    /// Chat rows, in parallel pieces as [`Self::encode_in_slices`]: rendered, tokenised,
    /// labelled.
    fn encode_chats(&self, convos: &[Vec<ChatMessage>], flag: &str) -> Result<Vec<TokenizedRow>> {
        let pieces = encode_pieces(convos, |piece, first| {
            let mut flat = FlatRows::default();
            let mut labels = Vec::new();
            for (i, convo) in piece.iter().enumerate() {
                let row = |e| in_row(first + i, e);
                let text = self.tok.render(convo, flag).map_err(row)?;
                let enc = self.encode(&text, false).map_err(row)?;
                chat_labels(&text, &enc, convo, &mut labels).map_err(row)?;
                flat.push(enc.get_ids(), Some(&labels));
            }
            Ok(flat)
        })?;
        Ok(FlatRows::into_rows(pieces))
    }
}

/// Rows handed to one task of the tokenizers library's thread pool.
const PIECE: usize = 128;

/// Runs `encode(piece, index of its first row)` on every piece of `rows`, a slice of
/// [`ENCODE_SLICE`] rows at a time, the pieces of a slice in parallel (unless
/// `TOKENIZERS_PARALLELISM` is off), with progress and a Ctrl-C check between slices.
/// Each piece is encoded start to finish on one thread, so the library's short-lived
/// `Encoding`s (tokens, offsets, masks: ~100 bytes a token) are freed by the thread that
/// made them. The first failing row's error is returned.
fn encode_pieces<T: Sync>(
    rows: &[T],
    encode: impl Fn(&[T], usize) -> Result<FlatRows> + Sync,
) -> Result<Vec<FlatRows>> {
    use tokenizers::parallelism::MaybeParallelSlice;
    let mut phase = Phase::new("tokenizing", "rows", Some(rows.len() as u64));
    let mut slices = Vec::with_capacity(rows.len().div_ceil(ENCODE_SLICE));
    for (s, slice) in rows.chunks(ENCODE_SLICE).enumerate() {
        crate::interrupt::check()?;
        let first = s * ENCODE_SLICE;
        let encoded: Vec<Result<FlatRows>> = slice
            .maybe_par_chunks(PIECE)
            .enumerate()
            .map(|(p, piece)| encode(piece, first + p * PIECE))
            .collect();
        // Copied into one buffer of this thread: a buffer is best freed by the thread that
        // made it (glibc keeps one heap per thread), and these are freed here, as the rows
        // that replace them are made.
        let encoded = encoded.into_iter().collect::<Result<Vec<_>>>()?;
        slices.push(FlatRows::concat(&encoded));
        phase.set((first + slice.len()) as u64);
    }
    Ok(slices)
}

/// The token ids (and labels) of a piece of rows, end to end. Rows are held this way until
/// every row is tokenised, then split into [`TokenizedRow`]s: allocating each row's vectors
/// in between the tokenizer's many short-lived allocations fragments the heap, and tokenising
/// slowed down as the kept rows grew (1.9x the CPU time per row after 700k short rows).
#[derive(Debug, Default)]
struct FlatRows {
    ids: Vec<u32>,
    /// Labels of every token (chat rows), or empty.
    labels: Vec<i32>,
    /// Each row's end in `ids`.
    ends: Vec<usize>,
}

impl FlatRows {
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The rows of `parts`, in order, in buffers of their exact size.
    fn concat(parts: &[FlatRows]) -> FlatRows {
        let tokens = parts.iter().map(|p| p.ids.len()).sum();
        let mut all = FlatRows {
            ids: Vec::with_capacity(tokens),
            labels: Vec::with_capacity(parts.iter().map(|p| p.labels.len()).sum()),
            ends: Vec::with_capacity(parts.iter().map(FlatRows::len).sum()),
        };
        for part in parts {
            let base = all.ids.len();
            all.ids.extend_from_slice(&part.ids);
            all.labels.extend_from_slice(&part.labels);
            all.ends.extend(part.ends.iter().map(|&e| base + e));
        }
        all
    }

    fn push(&mut self, ids: &[u32], labels: Option<&[i32]>) {
        self.ids.extend_from_slice(ids);
        if let Some(labels) = labels {
            self.labels.extend_from_slice(labels);
        }
        self.ends.push(self.ids.len());
    }

    /// The rows of all slices, in order; each slice is freed once split.
    fn into_rows(slices: Vec<FlatRows>) -> Vec<TokenizedRow> {
        let mut rows = Vec::with_capacity(slices.iter().map(FlatRows::len).sum());
        for slice in slices {
            let mut start = 0;
            for &end in &slice.ends {
                let widen = |v: &[i32]| v.iter().map(|&x| i64::from(x)).collect();
                rows.push(TokenizedRow {
                    input_ids: slice.ids[start..end]
                        .iter()
                        .map(|&x| i64::from(x))
                        .collect(),
                    labels: (!slice.labels.is_empty()).then(|| widen(&slice.labels[start..end])),
                });
                start = end;
            }
        }
        rows
    }
}

fn in_row(row: usize, e: Error) -> Error {
    match e {
        Error::Input(msg) => Error::input(format!("row {row}: {msg}")),
        other => other,
    }
}

fn prompt_completion_convo(prompt: &str, completion: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage {
            role: "user".into(),
            content: prompt.into(),
        },
        ChatMessage {
            role: "assistant".into(),
            content: completion.into(),
        },
    ]
}

fn ids_of(enc: &Encoding) -> Vec<i64> {
    enc.get_ids().iter().map(|&id| i64::from(id)).collect()
}

fn plain_row(enc: &Encoding) -> TokenizedRow {
    TokenizedRow {
        input_ids: ids_of(enc),
        labels: None,
    }
}

/// A chat-formatted row with its labels ([`chat_labels`]).
fn chat_row(text: &str, enc: &Encoding, messages: &[ChatMessage]) -> Result<TokenizedRow> {
    let mut labels = Vec::new();
    chat_labels(text, enc, messages, &mut labels)?;
    Ok(TokenizedRow {
        input_ids: ids_of(enc),
        labels: Some(labels.into_iter().map(i64::from).collect()),
    })
}

/// Labels for a chat-formatted row, into `labels` (replacing what it held): -100 except on
/// assistant contents, found by Bergson's backwards `rfind` walk over assistant messages.
fn chat_labels(
    text: &str,
    enc: &Encoding,
    messages: &[ChatMessage],
    labels: &mut Vec<i32>,
) -> Result<()> {
    let ids = enc.get_ids();
    let mut spans: Vec<(Option<usize>, Option<usize>)> = Vec::new();
    let mut search_end = text.len(); // byte offset; a match of valid UTF-8 is char-aligned
    for msg in messages.iter().rev().filter(|m| m.role == "assistant") {
        let answer = msg.content.as_str();
        let Some(start_byte) = text[..search_end].rfind(answer) else {
            return Err(Error::input(format!(
                "the chat template altered the assistant message {:?} (e.g. stripped its \
                 whitespace), so its tokens cannot be found in the formatted conversation; use \
                 a --tokenizer whose chat template keeps message contents verbatim",
                snippet(answer)
            )));
        };
        // Python counts offsets in code points.
        let start = text[..start_byte].chars().count();
        let end = start + answer.chars().count();
        let start_tok = enc.char_to_token(start, 0);
        let mut end_tok = enc.char_to_token(end, 0);
        if end_tok.is_none() && end > 0 {
            if let Some(prev) = enc.char_to_token(end - 1, 0) {
                end_tok = Some(prev + 1);
            }
        }
        spans.push((start_tok, end_tok));
        search_end = start_byte;
    }
    labels.clear();
    labels.resize(ids.len(), -100);
    for (start, end) in spans.into_iter().rev() {
        let Some(start) = start else { continue }; // truncated away
        let end = end.unwrap_or(ids.len()).min(ids.len());
        if start < end {
            // Token ids are vocabulary indices, far below 2^31.
            for (label, &id) in labels[start..end].iter_mut().zip(&ids[start..end]) {
                *label = id as i32;
            }
        }
    }
    Ok(())
}

fn snippet(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if s.chars().count() > 60 {
        out.push('…');
    }
    out
}

/// Reads a JSON object file; `Ok(None)` when the file does not exist.
fn read_json_object(path: &Path) -> Result<Option<Map<String, Json>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    match serde_json::from_str::<Json>(&text) {
        Ok(Json::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(Error::input(format!(
            "{} must hold a JSON object",
            path.display()
        ))),
        Err(e) => Err(Error::input(format!(
            "{} is not valid JSON: {e}",
            path.display()
        ))),
    }
}

/// A JSON number as i64, saturating (transformers stores "no limit" as `int(1e30)`).
fn json_to_i64(v: &Json) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    if v.as_u64().is_some() {
        return Some(i64::MAX);
    }
    let f = v.as_f64()?;
    Some(if f >= i64::MAX as f64 {
        i64::MAX
    } else if f <= i64::MIN as f64 {
        i64::MIN
    } else {
        f as i64
    })
}

fn load_templates(dir: &Path, config: &Map<String, Json>) -> Result<ChatTemplates> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io(p, e));
    let mut files: Vec<(String, String)> = Vec::new();
    let main = dir.join("chat_template.jinja");
    if main.is_file() {
        files.push(("default".into(), read(&main)?));
    }
    let extra_dir = dir.join("additional_chat_templates");
    if extra_dir.is_dir() {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&extra_dir)
            .map_err(|e| Error::io(&extra_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jinja") && p.is_file())
            .collect();
        paths.sort();
        for p in paths {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, read(&p)?));
        }
    }
    // Template files take priority over the config's entries (transformers 5).
    if files.len() == 1 && files[0].0 == "default" {
        return Ok(ChatTemplates::Single(files.remove(0).1));
    }
    if !files.is_empty() {
        return Ok(ChatTemplates::Named(files));
    }
    let bad = || {
        Error::input(format!(
            "{}: chat_template must be a string or a list of {{\"name\", \"template\"}}",
            dir.join("tokenizer_config.json").display()
        ))
    };
    Ok(match config.get("chat_template") {
        None | Some(Json::Null) => ChatTemplates::None,
        Some(Json::String(s)) => ChatTemplates::Single(s.clone()),
        Some(Json::Array(list)) => {
            let mut named = Vec::new();
            for item in list {
                let name = item.get("name").and_then(Json::as_str).ok_or_else(bad)?;
                let tpl = item
                    .get("template")
                    .and_then(Json::as_str)
                    .ok_or_else(bad)?;
                named.push((name.to_string(), tpl.to_string()));
            }
            ChatTemplates::Named(named)
        }
        Some(Json::Object(map)) => {
            let mut named = Vec::new();
            for (name, tpl) in map {
                named.push((name.clone(), tpl.as_str().ok_or_else(bad)?.to_string()));
            }
            ChatTemplates::Named(named)
        }
        Some(_) => return Err(bad()),
    })
}

/// A special token as transformers keeps it: a string, or an `AddedToken` with its flags.
#[derive(Debug, Clone)]
enum TokenSpec {
    Text(String),
    Added(AddedToken),
}

impl TokenSpec {
    /// From a config value: a string or an `AddedToken` dict (`{"content": ..., ...}`);
    /// `force_special` as transformers does for `special_tokens_map.json` dicts.
    fn from_json(v: &Json, force_special: bool) -> Option<Self> {
        match v {
            Json::String(s) => Some(TokenSpec::Text(s.clone())),
            Json::Object(m) => {
                let content = m.get("content")?.as_str()?;
                let flag = |k: &str| m.get(k).and_then(Json::as_bool);
                let special = force_special || flag("special").unwrap_or(false);
                let mut t = AddedToken::from(content, special);
                if let Some(b) = flag("single_word") {
                    t = t.single_word(b);
                }
                if let Some(b) = flag("lstrip") {
                    t = t.lstrip(b);
                }
                if let Some(b) = flag("rstrip") {
                    t = t.rstrip(b);
                }
                if let Some(b) = flag("normalized") {
                    t = t.normalized(b);
                }
                Some(TokenSpec::Added(t))
            }
            _ => None,
        }
    }

    fn content(&self) -> &str {
        match self {
            TokenSpec::Text(s) => s,
            TokenSpec::Added(t) => &t.content,
        }
    }
}

/// The named and extra special tokens of a tokenizer configuration.
struct SpecialTokens {
    /// Standard names then model-specific ones (`image_token`, ...), in transformers' order.
    named: Vec<(String, TokenSpec)>,
    extra: Vec<TokenSpec>,
}

impl SpecialTokens {
    /// `class_defaults`: the tokenizer class's own value for a name that neither the config
    /// nor `special_tokens_map.json` mentions.
    fn from_config(
        dir: &Path,
        config: &Map<String, Json>,
        class_defaults: &[(&str, &str)],
    ) -> Result<Self> {
        let mut standard: Vec<(String, Option<TokenSpec>)> = SPECIAL_TOKEN_NAMES
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    config.get(*n).and_then(|v| TokenSpec::from_json(v, false)),
                )
            })
            .collect();
        // Other `*_token` string/AddedToken entries become model-specific named tokens.
        let mut model_specific: Vec<(String, TokenSpec)> = config
            .iter()
            .filter(|(k, _)| k.ends_with("_token") && !SPECIAL_TOKEN_NAMES.contains(&k.as_str()))
            .filter_map(|(k, v)| TokenSpec::from_json(v, false).map(|t| (k.clone(), t)))
            .collect();
        let mut extra: Vec<TokenSpec> = Vec::new();
        let extra_json = config
            .get("extra_special_tokens")
            .filter(|v| !v.is_null())
            .or_else(|| config.get("additional_special_tokens"));
        match extra_json {
            Some(Json::Array(list)) => {
                extra.extend(list.iter().filter_map(|v| TokenSpec::from_json(v, false)))
            }
            Some(Json::Object(map)) => {
                for (k, v) in map {
                    if let Some(t) = TokenSpec::from_json(v, false) {
                        model_specific.push((k.clone(), t));
                    }
                }
            }
            _ => {}
        }
        // Legacy file, read only when the config has no added_tokens_decoder.
        if !config.contains_key("added_tokens_decoder") {
            if let Some(map) = read_json_object(&dir.join("special_tokens_map.json"))? {
                for (key, value) in &map {
                    if key == "additional_special_tokens" || key == "extra_special_tokens" {
                        if let Json::Array(list) = value {
                            for v in list {
                                if let Some(t) = TokenSpec::from_json(v, true) {
                                    if !extra.iter().any(|e| e.content() == t.content()) {
                                        extra.push(t);
                                    }
                                }
                            }
                        }
                    } else if let Some(slot) = standard.iter_mut().find(|(n, _)| n == key) {
                        if let Some(t) = TokenSpec::from_json(value, true) {
                            slot.1 = Some(t);
                        }
                    } else if key.ends_with("_token")
                        && !model_specific.iter().any(|(n, _)| n == key)
                    {
                        if let Some(t) = TokenSpec::from_json(value, true) {
                            model_specific.push((key.clone(), t));
                        }
                    }
                }
            }
        }
        for (name, value) in class_defaults {
            if let Some(slot) = standard.iter_mut().find(|(n, _)| n == name) {
                if slot.1.is_none() && !config.contains_key(*name) {
                    slot.1 = Some(TokenSpec::Text(value.to_string()));
                }
            }
        }
        let mut named: Vec<(String, TokenSpec)> = standard
            .into_iter()
            .filter_map(|(n, t)| t.map(|t| (n, t)))
            .collect();
        named.append(&mut model_specific);
        Ok(SpecialTokens { named, extra })
    }

    fn named_strings(&self) -> Vec<(String, String)> {
        self.named
            .iter()
            .map(|(n, t)| (n.clone(), t.content().to_string()))
            .collect()
    }

    /// transformers' `TokenizersBackend.__init__`: re-add the config's `added_tokens_decoder`
    /// entries, then every named or extra special token the backend does not know yet.
    fn add_missing_to(&self, inner: &mut tokenizers::Tokenizer, config: &Map<String, Json>) {
        let mut to_add: Vec<TokenSpec> = Vec::new();
        if let Some(Json::Object(decoder)) = config.get("added_tokens_decoder") {
            let mut entries: Vec<(i64, TokenSpec)> = decoder
                .iter()
                .filter_map(|(id, v)| Some((id.parse().ok()?, TokenSpec::from_json(v, false)?)))
                .collect();
            entries.sort_by_key(|(id, _)| *id);
            to_add.extend(entries.into_iter().map(|(_, t)| t));
        }
        let mut known: Vec<String> = inner
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.clone())
            .collect();
        known.extend(to_add.iter().map(|t| t.content().to_string()));
        for t in self.named.iter().map(|(_, t)| t).chain(&self.extra) {
            let c = t.content();
            if !known.iter().any(|k| k == c) && !to_add.iter().any(|a| a.content() == c) {
                to_add.push(t.clone());
            }
        }
        if to_add.is_empty() {
            return;
        }
        let named: Vec<&str> = self.named.iter().map(|(_, t)| t.content()).collect();
        let tokens: Vec<AddedToken> = to_add
            .into_iter()
            .map(|t| match t {
                TokenSpec::Text(s) => AddedToken::from(s, true),
                TokenSpec::Added(mut a) => {
                    if !a.special && named.contains(&a.content.as_str()) {
                        a.special = true;
                    }
                    a
                }
            })
            .collect();
        inner.add_tokens(&tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpe_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizers/bpe")
    }

    #[test]
    fn token_batch_size_is_checked_against_the_model() {
        assert_eq!(truncation_length(1024, 2048).unwrap(), 1024);
        assert_eq!(truncation_length(2048, 2048).unwrap(), 2048);
        assert_eq!(truncation_length(4096, NO_LIMIT).unwrap(), 4096);
        let err = truncation_length(4096, 2048).unwrap_err().to_string();
        assert!(err.contains("--token_batch_size 2048 or smaller"), "{err}");
    }

    #[test]
    fn tokenizer_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<Encoder<'static>>();
    }

    #[test]
    fn missing_and_corrupt_tokenizer_json_are_input_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Tokenizer::from_dir(tmp.path()).unwrap_err();
        assert!(
            err.is_user_error() && err.to_string().contains("no tokenizer.json"),
            "{err}"
        );
        std::fs::write(tmp.path().join("tokenizer.json"), "{not json").unwrap();
        let err = Tokenizer::from_dir(tmp.path()).unwrap_err();
        assert!(
            err.is_user_error() && err.to_string().contains("cannot load"),
            "{err}"
        );
    }

    #[test]
    fn missing_chat_template_names_the_flag() {
        let mut tok = Tokenizer::from_dir(bpe_dir()).unwrap();
        tok.set_chat_templates(ChatTemplates::None);
        let enc = tok.encoder(None).unwrap();
        let err = enc
            .encode_prompt_completion("q", "a")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--completion_column") && err.contains("has none"),
            "{err}"
        );
        let err = enc.encode_conversations(&[vec![]]).unwrap_err().to_string();
        assert!(err.contains("--conversation_column"), "{err}");
    }

    #[test]
    fn template_files_override_the_config_like_transformers() {
        // transformers 5 `_from_pretrained`: chat_template.jinja and
        // additional_chat_templates/*.jinja replace the config's templates; with named files
        // and no default, rendering fails listing the names.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(
            bpe_dir().join("tokenizer.json"),
            tmp.path().join("tokenizer.json"),
        )
        .unwrap();
        std::fs::copy(
            bpe_dir().join("tokenizer_config.json"),
            tmp.path().join("tokenizer_config.json"),
        )
        .unwrap();
        std::fs::create_dir(tmp.path().join("additional_chat_templates")).unwrap();
        std::fs::write(
            tmp.path().join("additional_chat_templates/alt.jinja"),
            "ALT",
        )
        .unwrap();
        let tok = Tokenizer::from_dir(tmp.path()).unwrap();
        assert_eq!(
            tok.chat_templates(),
            &ChatTemplates::Named(vec![("alt".into(), "ALT".into())])
        );
        let err = tok.apply_chat_template(&[]).unwrap_err().to_string();
        assert!(
            err.contains("none is named \"default\"") && err.contains("alt"),
            "{err}"
        );
        std::fs::write(tmp.path().join("chat_template.jinja"), "MAIN").unwrap();
        let tok = Tokenizer::from_dir(tmp.path()).unwrap();
        assert_eq!(tok.apply_chat_template(&[]).unwrap(), "MAIN");
    }

    #[test]
    fn truncation_below_the_added_special_tokens_is_refused() {
        let dir = bpe_dir().join("../bpe-bos");
        let tok = Tokenizer::from_dir(dir).unwrap();
        assert!(tok.encoder(Some(0)).is_err());
        assert_eq!(
            tok.encoder(Some(1))
                .unwrap()
                .encode_text("hello world")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn many_rows_in_parallel_pieces_equal_one_at_a_time() {
        // More rows than one slice, in pieces of several lengths, with a chat template set.
        let mut tok = Tokenizer::from_dir(bpe_dir()).unwrap();
        tok.set_chat_templates(ChatTemplates::Single(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}".into(),
        ));
        let enc = tok.encoder(Some(40)).unwrap();
        let n = ENCODE_SLICE + 3 * PIECE + 5;
        let texts: Vec<String> = (0..n)
            .map(|i| format!("row {i}: {}", "tokens and words ".repeat(i % 9)))
            .collect();
        let one_at_a_time: Vec<TokenizedRow> =
            texts.iter().map(|t| enc.encode_text(t).unwrap()).collect();
        assert_eq!(enc.encode_texts(&texts).unwrap(), one_at_a_time);
        let pairs: Vec<(&str, &str)> = texts.iter().map(|t| ("question", t.as_str())).collect();
        let one_at_a_time: Vec<TokenizedRow> = pairs
            .iter()
            .map(|(p, c)| enc.encode_prompt_completion(p, c).unwrap())
            .collect();
        assert!(one_at_a_time
            .iter()
            .any(|r| r.labels.as_ref().unwrap()[0] == -100));
        assert_eq!(
            enc.encode_prompt_completions(&pairs).unwrap(),
            one_at_a_time
        );
        // The first failing row is the one named, whichever thread meets it.
        let mut convos: Vec<Vec<ChatMessage>> = pairs
            .iter()
            .map(|(p, c)| prompt_completion_convo(p, c))
            .collect();
        convos[n - 2][1].role = "assistant".into();
        convos[n - 2][1].content = "\u{0}never rendered".into();
        tok.set_chat_templates(ChatTemplates::Single(
            "{% for m in messages %}{{ m.content | replace('\\x00', '') }}{% endfor %}".into(),
        ));
        let enc = tok.encoder(None).unwrap();
        let err = enc.encode_conversations(&convos).unwrap_err().to_string();
        assert!(err.starts_with(&format!("row {}:", n - 2)), "{err}");
    }
}
