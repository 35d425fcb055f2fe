//! Bergson's `key=value,key=value` keyword strings (`--model_kwargs`, `--data_kwargs`), parsed
//! and typed as its `simple_parse_kwargs_string` / `handle_arg_string` do.

use crate::{Error, Result};
use serde_json::Value;

/// One parsed value, typed as Bergson's `handle_arg_string` types it.
#[derive(Debug, Clone, PartialEq)]
pub enum KwargValue {
    /// `a|b|c`.
    List(Vec<KwargValue>),
    /// Python `int(s)` succeeded.
    Int(i64),
    /// Python `float(s)` succeeded.
    Float(f64),
    /// `true` / `false`, any case.
    Bool(bool),
    /// Anything else, as written.
    Str(String),
}

impl KwargValue {
    /// Types `s` as Bergson does: lists on `|`, then int, float, bool, else a string.
    pub fn parse(s: &str) -> Self {
        if s.contains('|') {
            return KwargValue::List(s.split('|').map(KwargValue::parse).collect());
        }
        if let Some(i) = python_int(s) {
            return KwargValue::Int(i);
        }
        if let Some(f) = python_float(s) {
            return KwargValue::Float(f);
        }
        match s.to_lowercase().as_str() {
            "true" => KwargValue::Bool(true),
            "false" => KwargValue::Bool(false),
            _ => KwargValue::Str(s.to_string()),
        }
    }

    /// The value as config.json would hold it.
    pub fn to_json(&self) -> Value {
        match self {
            KwargValue::List(items) => Value::Array(items.iter().map(Self::to_json).collect()),
            KwargValue::Int(i) => Value::from(*i),
            KwargValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            KwargValue::Bool(b) => Value::Bool(*b),
            KwargValue::Str(s) => Value::String(s.clone()),
        }
    }
}

impl std::fmt::Display for KwargValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KwargValue::List(items) => {
                let parts: Vec<String> = items.iter().map(|v| v.to_string()).collect();
                write!(f, "{}", parts.join("|"))
            }
            KwargValue::Int(i) => write!(f, "{i}"),
            KwargValue::Float(x) => write!(f, "{x}"),
            KwargValue::Bool(b) => write!(f, "{b}"),
            KwargValue::Str(s) => write!(f, "{s}"),
        }
    }
}

/// Python's `int(s)`: optional sign, decimal digits with single underscores between them,
/// surrounding whitespace allowed.
fn python_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if !valid_underscored(digits, |c| c.is_ascii_digit()) {
        return None;
    }
    t.replace('_', "").parse().ok()
}

/// Python's `float(s)` for the spellings a command line uses: decimals, exponents, `inf`,
/// `nan` (any case), underscores between digits.
fn python_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let body = t.strip_prefix(['+', '-']).unwrap_or(t).to_lowercase();
    if matches!(body.as_str(), "inf" | "infinity" | "nan") {
        return t.to_lowercase().parse().ok();
    }
    if body.is_empty() || body.contains("__") || body.starts_with('_') || body.ends_with('_') {
        return None;
    }
    let ok_chars = body
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '+' | '-' | '_'));
    // An underscore must sit between two digits.
    let b = body.as_bytes();
    let underscores_ok = (0..b.len())
        .all(|i| b[i] != b'_' || (b[i - 1].is_ascii_digit() && b[i + 1].is_ascii_digit()));
    if !ok_chars || !underscores_ok {
        return None;
    }
    t.replace('_', "").parse().ok()
}

/// `s` is non-empty, made of `is_digit` characters with single underscores between them.
fn valid_underscored(s: &str, is_digit: impl Fn(char) -> bool) -> bool {
    !s.is_empty()
        && !s.starts_with('_')
        && !s.ends_with('_')
        && !s.contains("__")
        && s.chars().all(|c| c == '_' || is_digit(c))
}

/// Python's `str.isidentifier` for ASCII keys.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// The `(key, value)` pairs of `text`, in order, with Bergson's errors for a pair without `=`
/// or a key that is not an identifier; `flag` names the option in messages. Empty text gives
/// no pairs.
pub fn parse_kwargs_string(flag: &str, text: &str) -> Result<Vec<(String, KwargValue)>> {
    let mut out = Vec::new();
    if text.trim().is_empty() {
        return Ok(out);
    }
    for elem in text.split(',') {
        let (key, sep, value) = match elem.split_once('=') {
            Some((k, v)) => (k.trim(), true, v.trim()),
            None => (elem.trim(), false, ""),
        };
        if key.is_empty() || !sep {
            return Err(Error::input(format!(
                "{flag}: invalid argument '{elem}'; expected key=value pairs separated by commas"
            )));
        }
        if !is_identifier(key) {
            return Err(Error::input(format!(
                "{flag}: invalid key '{key}'; a key must be a Python identifier (letters, digits, underscores)"
            )));
        }
        out.push((key.to_string(), KwargValue::parse(value)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_as_bergson_types_them() {
        assert_eq!(KwargValue::parse("3"), KwargValue::Int(3));
        assert_eq!(KwargValue::parse("-1_000"), KwargValue::Int(-1000));
        assert_eq!(KwargValue::parse("1e6"), KwargValue::Float(1e6));
        assert_eq!(KwargValue::parse("0.5"), KwargValue::Float(0.5));
        assert_eq!(KwargValue::parse("True"), KwargValue::Bool(true));
        assert_eq!(KwargValue::parse("FALSE"), KwargValue::Bool(false));
        assert_eq!(KwargValue::parse("eager"), KwargValue::Str("eager".into()));
        assert_eq!(KwargValue::parse("1__0"), KwargValue::Str("1__0".into()));
        assert_eq!(KwargValue::parse("e5"), KwargValue::Str("e5".into()));
        assert_eq!(
            KwargValue::parse("1|a|2.5"),
            KwargValue::List(vec![
                KwargValue::Int(1),
                KwargValue::Str("a".into()),
                KwargValue::Float(2.5)
            ])
        );
        assert!(matches!(KwargValue::parse("inf"), KwargValue::Float(f) if f.is_infinite()));
    }

    #[test]
    fn pairs_keep_their_order_and_bad_pairs_are_refused() {
        let pairs = parse_kwargs_string("--x", " a = 1,b=c|d").unwrap();
        assert_eq!(pairs[0], ("a".to_string(), KwargValue::Int(1)));
        assert_eq!(
            pairs[1].1,
            KwargValue::List(vec![
                KwargValue::Str("c".into()),
                KwargValue::Str("d".into())
            ])
        );
        assert!(parse_kwargs_string("--x", "  ").unwrap().is_empty());
        let e = parse_kwargs_string("--x", "a").unwrap_err().to_string();
        assert!(e.contains("--x: invalid argument 'a'"), "{e}");
    }
}
