//! `--data_kwargs`: the extra `datasets.load_dataset` arguments Bergson passes when it loads a
//! dataset repository (a hub id or a directory of data files; single files and `save_to_disk`
//! directories never see them, as in Bergson).
//!
//! We honour the keywords that change which rows are read (`data_files`, `data_dir`,
//! `revision`) or how the hub is asked (`token`), accept the cache and loader options that
//! change nothing we compute, and refuse the rest in one line.

use crate::kwargs::{parse_kwargs_string, KwargValue};
use crate::{Error, Result};

/// `load_dataset` options that change nothing bergson-rs reads.
const NO_EFFECT: &[&str] = &[
    "cache_dir",
    "keep_in_memory",
    "num_proc",
    "verification_mode",
    "download_mode",
    "trust_remote_code",
    "save_infos",
];

/// Keywords Bergson fills from its own flags: Python raises "got multiple values".
const OWN_FLAGS: &[(&str, &str)] = &[
    ("path", "--dataset"),
    ("name", "--subset"),
    ("split", "--split"),
];

/// Parsed `--data_kwargs`, checked against what bergson-rs can honour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataKwargs {
    /// `data_files`: glob patterns (relative to `data_dir`, else the repository root) whose
    /// files form the `train` split, replacing the repository's own layout.
    pub data_files: Option<Vec<String>>,
    /// `data_dir`: the repository directory whose files are laid out into splits.
    pub data_dir: Option<String>,
    /// `revision`: the hub branch, tag or commit to read instead of `main`.
    pub revision: Option<String>,
    /// `token`: `Some(None)` for `token=false` (ask anonymously), `Some(Some(t))` for a token.
    pub token: Option<Option<String>>,
}

impl DataKwargs {
    /// Parses `key=value,...` as Bergson does; keys bergson-rs cannot honour are a one-line
    /// error naming the ones it can.
    pub fn parse(text: &str) -> Result<Self> {
        let mut out = Self::default();
        for (key, value) in parse_kwargs_string("--data_kwargs", text)? {
            out.add(&key, value)?;
        }
        Ok(out)
    }

    fn add(&mut self, key: &str, value: KwargValue) -> Result<()> {
        match key {
            "data_files" => {
                let files = match value {
                    KwargValue::List(items) => items.iter().map(|v| v.to_string()).collect(),
                    other => vec![other.to_string()],
                };
                self.data_files = Some(files);
            }
            "data_dir" => self.data_dir = Some(value.to_string().trim_end_matches('/').into()),
            "revision" => self.revision = Some(value.to_string()),
            "token" => {
                self.token = match value {
                    KwargValue::Bool(true) => None,
                    KwargValue::Bool(false) => Some(None),
                    other => Some(Some(other.to_string())),
                }
            }
            "streaming" => {
                if value != KwargValue::Bool(false) {
                    return Err(Error::input(
                        "--data_kwargs streaming=true makes load_dataset return an IterableDataset, which Bergson cannot index (Python fails too); drop it (bergson-rs streams its readers anyway)",
                    ));
                }
            }
            _ if NO_EFFECT.contains(&key) => {
                tracing::info!("--data_kwargs {key}={value} changes nothing bergson-rs reads");
            }
            _ => {
                if let Some((_, flag)) = OWN_FLAGS.iter().find(|(k, _)| *k == key) {
                    return Err(Error::input(format!(
                        "--data_kwargs {key}=... is set by Bergson itself (Python raises 'got multiple values'); use {flag}"
                    )));
                }
                return Err(Error::input(format!(
                    "--data_kwargs {key}=... is not supported by bergson-rs; it honours data_files, data_dir, revision, token and streaming=false (and accepts {})",
                    NO_EFFECT.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// True when the repository's own split layout is replaced (`data_files` or `data_dir`).
    pub fn overrides_layout(&self) -> bool {
        self.data_files.is_some() || self.data_dir.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_revision_and_token_keys_are_kept() {
        let k = DataKwargs::parse(
            "data_files=a/*.jsonl|b.jsonl,data_dir=en/,revision=v1.0,token=false",
        )
        .unwrap();
        assert_eq!(
            k.data_files,
            Some(vec!["a/*.jsonl".to_string(), "b.jsonl".to_string()])
        );
        assert_eq!(k.data_dir.as_deref(), Some("en"));
        assert_eq!(k.revision.as_deref(), Some("v1.0"));
        assert_eq!(k.token, Some(None));
        assert!(k.overrides_layout());
        let plain = DataKwargs::parse("num_proc=4,streaming=false,token=true").unwrap();
        assert_eq!(plain, DataKwargs::default());
    }

    #[test]
    fn other_keys_are_refused_in_one_line() {
        for (text, needle) in [
            ("streaming=true", "IterableDataset"),
            ("name=en", "use --subset"),
            ("split=test", "use --split"),
            ("features=x", "not supported by bergson-rs"),
            ("data_files", "invalid argument"),
        ] {
            let e = DataKwargs::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
