//! Python's non-standard JSON numbers `NaN`, `Infinity` and `-Infinity` (`json.dumps` writes
//! them, pyarrow reads them as float64). serde_json rejects them, so in a record that holds
//! them they are swapped for marker strings before parsing. The marker starts with a character
//! absent from the record, so no real string can be mistaken for one.

use std::borrow::Cow;

const SPECIAL_TOKENS: [(&str, f64); 3] = [
    ("NaN", f64::NAN),
    ("Infinity", f64::INFINITY),
    ("-Infinity", f64::NEG_INFINITY),
];

/// The marker of one record (none for the records without special numbers).
#[derive(Debug, Default)]
pub(super) struct Specials {
    marker: Option<String>,
}

impl Specials {
    /// No special numbers.
    pub fn none() -> Specials {
        Specials::default()
    }

    /// `text` with the special tokens outside strings quoted as markers, and the markers.
    pub fn replace(text: &str) -> (Cow<'_, str>, Specials) {
        if !text.contains("NaN") && !text.contains("Infinity") {
            return (Cow::Borrowed(text), Specials::none());
        }
        let unused = ('\u{e000}'..='\u{f8ff}')
            .find(|c| !text.contains(*c))
            .unwrap_or('\u{f8ff}');
        let marker = format!("{unused}special:");
        let mut out = String::with_capacity(text.len() + 64);
        let (mut in_string, mut escaped) = (false, false);
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
            } else if c == '"' {
                in_string = true;
            } else if let Some((token, _)) = SPECIAL_TOKENS
                .iter()
                .rev()
                .find(|(t, _)| rest.starts_with(t))
            {
                out.push('"');
                out.push_str(&marker);
                out.push_str(token);
                out.push('"');
                rest = &rest[token.len()..];
                continue;
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        (
            Cow::Owned(out),
            Specials {
                marker: Some(marker),
            },
        )
    }

    /// The float a marker string stands for.
    pub fn value(&self, s: &str) -> Option<f64> {
        let token = s.strip_prefix(self.marker.as_deref()?)?;
        SPECIAL_TOKENS
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_tokens_become_markers() {
        let (text, specials) = Specials::replace(
            r#"{"a": NaN, "b": "NaN", "c": [-Infinity, Infinity], "d": "\"Infinity"}"#,
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let float = |v: &serde_json::Value| specials.value(v.as_str().unwrap());
        assert!(float(&value["a"]).unwrap().is_nan());
        assert_eq!(float(&value["b"]), None);
        assert_eq!(float(&value["c"][0]), Some(f64::NEG_INFINITY));
        assert_eq!(float(&value["c"][1]), Some(f64::INFINITY));
        assert_eq!(value["d"], "\"Infinity");
        let (text, specials) = Specials::replace("{\"a\": 1}");
        assert!(matches!(text, Cow::Borrowed(_)) && specials.value("NaN").is_none());
    }
}
