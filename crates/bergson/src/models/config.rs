//! Reading a checkpoint's config.json: typed look-ups that accept the several spellings real
//! checkpoints use (`n_embd` / `hidden_size`, `rotary_pct` / `partial_rotary_factor`, ...) and
//! fail with a one-line message naming the file and the key.

use crate::error::IoContext;
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A parsed config.json.
#[derive(Debug, Clone)]
pub struct ConfigJson {
    path: PathBuf,
    map: Map<String, Value>,
    /// Every top-level key an architecture asked for, present or not: how `--model_kwargs`
    /// tells an override the model reads from one it would silently ignore.
    looked_up: Arc<Mutex<BTreeSet<String>>>,
    /// Top-level keys `--model_kwargs` set (their errors name the flag, not the file).
    overridden: BTreeSet<String>,
    /// Of those, the keys config.json did not have.
    added: BTreeSet<String>,
}

impl ConfigJson {
    /// Reads and parses `path` (a config.json).
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::input(format!(
                "{}: no config.json; point --model at a Hugging Face checkpoint directory (config.json + *.safetensors) or a Hub id",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).at_path(path)?;
        Self::parse(&text, path)
    }

    /// Parses config.json text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Error::input(format!(
                "{}: not valid JSON ({e}); re-download the checkpoint or fix the file",
                path.display()
            ))
        })?;
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_path_buf(),
                map,
                looked_up: Arc::default(),
                overridden: BTreeSet::new(),
                added: BTreeSet::new(),
            }),
            _ => Err(Error::input(format!(
                "{}: expected a JSON object at the top level; re-download the checkpoint",
                path.display()
            ))),
        }
    }

    /// The file this config came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `model_type`, which selects the architecture.
    pub fn model_type(&self) -> Result<String> {
        self.req_str(&["model_type"])
    }

    /// Sets top-level `key` to `value`, as a `from_pretrained` keyword sets a config
    /// attribute.
    pub fn set(&mut self, key: &str, value: Value) {
        self.overridden.insert(key.to_string());
        if !self.map.contains_key(key) {
            self.added.insert(key.to_string());
        }
        self.map.insert(key.to_string(), value);
    }

    /// The first key [`Self::set`] added (config.json lacked it) that no architecture has
    /// asked for: a keyword that would change nothing here.
    pub fn unread_added_key(&self) -> Option<&str> {
        self.added
            .iter()
            .find(|k| !self.was_looked_up(k))
            .map(String::as_str)
    }

    /// The keys `--model_kwargs` set, in order of name.
    pub fn overridden(&self) -> impl Iterator<Item = &str> {
        self.overridden.iter().map(String::as_str)
    }

    /// Where a bad value of `key` came from, and what to fix: `--model_kwargs` or config.json.
    fn source_of(&self, key: &str) -> (String, &'static str) {
        let top = key.split('.').next().unwrap_or(key);
        if self.overridden.contains(top) {
            ("--model_kwargs".to_string(), "fix --model_kwargs")
        } else {
            (self.path.display().to_string(), "fix config.json")
        }
    }

    /// Whether an architecture has asked for top-level `key` since this config was parsed.
    pub fn was_looked_up(&self, key: &str) -> bool {
        self.looked_up
            .lock()
            .map(|set| set.contains(key))
            .unwrap_or(false)
    }

    fn note(&self, key: &str) {
        if let Ok(mut set) = self.looked_up.lock() {
            if !set.contains(key) {
                set.insert(key.to_string());
            }
        }
    }

    /// The first of `keys` that is present and not null.
    fn first<'a>(&'a self, keys: &[&'a str]) -> Option<(&'a str, &'a Value)> {
        keys.iter().for_each(|k| self.note(k));
        keys.iter().find_map(|k| match self.map.get(*k) {
            None | Some(Value::Null) => None,
            Some(v) => Some((*k, v)),
        })
    }

    /// The value under `key` when present and not null, for settings with their own structure.
    pub fn value<'a>(&'a self, key: &'a str) -> Option<&'a Value> {
        self.first(&[key]).map(|(_, v)| v)
    }

    /// True when `key` is present (even as null).
    pub fn has(&self, key: &str) -> bool {
        self.note(key);
        self.map.contains_key(key)
    }

    /// True when `key` is present and null.
    pub fn is_null(&self, key: &str) -> bool {
        self.note(key);
        matches!(self.map.get(key), Some(Value::Null))
    }

    fn bad_type(&self, key: &str, v: &Value, want: &str) -> Error {
        let (source, fix) = self.source_of(key);
        Error::input(format!(
            "{source}: key '{key}' is {v}, expected {want}; {fix}"
        ))
    }

    fn missing(&self, keys: &[&str]) -> Error {
        Error::input(format!(
            "{}: required key '{}' is missing; add it to config.json (it must describe the checkpoint's architecture)",
            self.path.display(),
            keys.join("' or '")
        ))
    }

    /// An integer under the first present key of `keys`.
    pub fn int(&self, keys: &[&str]) -> Result<Option<i64>> {
        match self.first(keys) {
            None => Ok(None),
            Some((k, v)) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.bad_type(k, v, "an integer")),
        }
    }

    /// A required positive integer.
    pub fn req_int(&self, keys: &[&str]) -> Result<i64> {
        let v = self.int(keys)?.ok_or_else(|| self.missing(keys))?;
        if v <= 0 {
            let (source, fix) = self.source_of(keys[0]);
            return Err(Error::input(format!(
                "{source}: key '{}' is {v}, expected a positive integer; {fix}",
                keys[0]
            )));
        }
        Ok(v)
    }

    /// An optional positive integer (`default` when absent).
    pub fn pos_int_or(&self, keys: &[&str], default: i64) -> Result<i64> {
        if self.first(keys).is_none() {
            return Ok(default);
        }
        self.req_int(keys)
    }

    /// A normalisation epsilon (`default` when absent): 0 or more and finite, as a negative
    /// or NaN one turns every hidden state into NaN.
    pub fn norm_eps(&self, keys: &[&str], default: f64) -> Result<f64> {
        let Some(v) = self.float(keys)? else {
            return Ok(default);
        };
        if !(v.is_finite() && v >= 0.0) {
            let (source, fix) = self.source_of(keys[0]);
            return Err(Error::input(format!(
                "{source}: key '{}' is {v}, expected a small non-negative number (e.g. {default:e}); {fix}",
                keys[0]
            )));
        }
        Ok(v)
    }

    /// A number under the first present key of `keys`.
    pub fn float(&self, keys: &[&str]) -> Result<Option<f64>> {
        match self.first(keys) {
            None => Ok(None),
            Some((k, v)) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad_type(k, v, "a number")),
        }
    }

    /// A boolean under the first present key of `keys`.
    pub fn bool(&self, keys: &[&str]) -> Result<Option<bool>> {
        match self.first(keys) {
            None => Ok(None),
            Some((k, v)) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad_type(k, v, "true or false")),
        }
    }

    /// A string under the first present key of `keys`.
    pub fn str(&self, keys: &[&str]) -> Result<Option<String>> {
        match self.first(keys) {
            None => Ok(None),
            Some((k, v)) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.bad_type(k, v, "a string")),
        }
    }

    /// A required string.
    pub fn req_str(&self, keys: &[&str]) -> Result<String> {
        self.str(keys)?.ok_or_else(|| self.missing(keys))
    }

    /// A list of strings under `key`.
    pub fn str_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        match self.first(&[key]) {
            None => Ok(None),
            Some((k, v)) => {
                let list = v
                    .as_array()
                    .ok_or_else(|| self.bad_type(k, v, "a list of strings"))?;
                list.iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| self.bad_type(k, v, "a list of strings"))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
        }
    }

    /// A list of integers under `key`.
    pub fn int_list(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.first(&[key]) {
            None => Ok(None),
            Some((k, v)) => {
                let list = v
                    .as_array()
                    .ok_or_else(|| self.bad_type(k, v, "a list of integers"))?;
                list.iter()
                    .map(|x| {
                        x.as_i64()
                            .ok_or_else(|| self.bad_type(k, v, "a list of integers"))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
        }
    }

    /// An object under the first present key of `keys` (null and `{}` count as absent).
    pub fn object(&self, keys: &[&str]) -> Result<Option<&Map<String, Value>>> {
        for k in keys {
            self.note(k);
            match self.map.get(*k) {
                None | Some(Value::Null) => continue,
                Some(Value::Object(m)) if m.is_empty() => continue,
                Some(Value::Object(m)) => return Ok(Some(m)),
                Some(v) => return Err(self.bad_type(k, v, "an object")),
            }
        }
        Ok(None)
    }

    /// `head_dim` when given, else `hidden_size / num_attention_heads` (as transformers does).
    pub fn head_dim(&self, hidden: i64, heads: i64) -> Result<i64> {
        match self.int(&["head_dim"])? {
            Some(d) if d > 0 => Ok(d),
            _ => {
                if hidden % heads != 0 {
                    return Err(Error::input(format!(
                        "{}: hidden_size {hidden} is not divisible by num_attention_heads {heads}; fix config.json or give head_dim",
                        self.path.display()
                    )));
                }
                Ok(hidden / heads)
            }
        }
    }

    /// A number inside a nested object (rope parameters), with a type check.
    pub fn nested_float(
        &self,
        obj: &Map<String, Value>,
        parent: &str,
        key: &str,
    ) -> Result<Option<f64>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad_type(&format!("{parent}.{key}"), v, "a number")),
        }
    }

    /// A string inside a nested object.
    pub fn nested_str(
        &self,
        obj: &Map<String, Value>,
        parent: &str,
        key: &str,
    ) -> Result<Option<String>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.bad_type(&format!("{parent}.{key}"), v, "a string")),
        }
    }

    /// An error about this config.
    pub fn error(&self, msg: impl std::fmt::Display) -> Error {
        Error::input(format!("{}: {msg}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bad value names where it came from: `--model_kwargs` for an overridden key, the file
    /// otherwise.
    #[test]
    fn errors_name_the_source_of_a_bad_value() {
        let mut cfg = ConfigJson::parse(
            r#"{"model_type": "llama", "num_hidden_layers": "x", "hidden_size": 8}"#,
            Path::new("m/config.json"),
        )
        .unwrap();
        let e = cfg.req_int(&["num_hidden_layers"]).unwrap_err().to_string();
        assert!(
            e.starts_with("m/config.json:") && e.ends_with("fix config.json"),
            "{e}"
        );
        cfg.set("hidden_size", Value::from(-2));
        let e = cfg.req_int(&["hidden_size"]).unwrap_err().to_string();
        assert!(
            e.starts_with("--model_kwargs:") && e.ends_with("fix --model_kwargs"),
            "{e}"
        );
        assert_eq!(cfg.overridden().collect::<Vec<_>>(), ["hidden_size"]);
    }

    #[test]
    fn epsilons_and_optional_sizes_are_checked() {
        let cfg = ConfigJson::parse(
            r#"{"layer_norm_eps": -1e-5, "rms_norm_eps": 0.0, "max_position_embeddings": 0}"#,
            Path::new("m/config.json"),
        )
        .unwrap();
        let e = cfg.norm_eps(&["layer_norm_eps"], 1e-5).unwrap_err();
        assert!(
            e.to_string().contains("'layer_norm_eps' is -0.00001"),
            "{e}"
        );
        assert_eq!(cfg.norm_eps(&["rms_norm_eps"], 1e-6).unwrap(), 0.0);
        assert_eq!(cfg.norm_eps(&["absent_eps"], 1e-6).unwrap(), 1e-6);
        let e = cfg
            .pos_int_or(&["max_position_embeddings"], 2048)
            .unwrap_err();
        assert!(e.to_string().contains("a positive integer"), "{e}");
        assert_eq!(cfg.pos_int_or(&["n_positions"], 2048).unwrap(), 2048);
    }
}
