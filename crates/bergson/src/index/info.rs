//! `info.json`: the index's shape and dtype, with Bergson's keys in Bergson's order.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::IoContext;
use crate::{Error, Result};

/// The contents of `info.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexInfo {
    /// One row per token (with `offsets.npy`) rather than per document.
    pub attribute_tokens: bool,
    /// Documents.
    pub num_items: usize,
    /// Rows of gradients.bin.
    pub num_grads: usize,
    /// Column blocks in order: module (or head, or `gradients`) and width.
    #[serde(with = "ordered_map")]
    pub grad_sizes: Vec<(String, usize)>,
    /// numpy dtype name of gradients.bin: float32, float16, bfloat16 or float64.
    pub base_dtype: String,
}

impl IndexInfo {
    /// Columns per row.
    pub fn row_len(&self) -> usize {
        self.grad_sizes.iter().map(|(_, s)| s).sum()
    }

    /// Bytes per element of `base_dtype`.
    pub fn elem_size(&self) -> Result<usize> {
        match self.base_dtype.as_str() {
            "float32" => Ok(4),
            "float16" | "bfloat16" => Ok(2),
            "float64" => Ok(8),
            other => Err(Error::input(format!(
                "unsupported base_dtype '{other}' in info.json"
            ))),
        }
    }

    /// Writes `info.json` as Python's `json.dump(indent=2)` does.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("info.json");
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::input(e.to_string()))?;
        std::fs::write(&path, text).at_path(&path)
    }

    /// Reads `info.json`, including the legacy layout whose dtype is a numpy structured dtype.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("info.json");
        let text = std::fs::read_to_string(&path).at_path(&path)?;
        let mut v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::input(format!("{}: not valid JSON: {e}", path.display())))?;
        if let Some(obj) = v.as_object_mut() {
            if !obj.contains_key("base_dtype") {
                // Legacy: {"dtype": {"formats": ["<f4", ...], ...}}.
                let fmt = obj
                    .get("dtype")
                    .and_then(|d| d.get("formats"))
                    .and_then(|f| f.get(0))
                    .and_then(Value::as_str)
                    .map(legacy_dtype_name);
                if let Some(name) = fmt {
                    obj.insert("base_dtype".into(), Value::String(name.into()));
                }
            }
            obj.entry("attribute_tokens").or_insert(Value::Bool(false));
            if !obj.contains_key("num_items") {
                if let Some(n) = obj.get("num_grads").cloned() {
                    obj.insert("num_items".into(), n);
                }
            }
        }
        let info: Self = serde_json::from_value(v).map_err(|e| {
            Error::input(format!(
                "{}: not a gradient index info.json ({e})",
                path.display()
            ))
        })?;
        info.check(&path)?;
        Ok(info)
    }

    /// Refuses an info.json no index could have written: no column blocks, or a dtype
    /// gradients.bin cannot hold.
    fn check(&self, path: &Path) -> Result<()> {
        if self.grad_sizes.is_empty() {
            return Err(Error::input(format!(
                "{}: grad_sizes lists no modules, so the index has no columns; \
                 rebuild the index with `bergson build`",
                path.display()
            )));
        }
        self.elem_size().map_err(|_| {
            Error::input(format!(
                "{}: base_dtype '{}' is not one gradients.bin can hold (float32, float16, \
                 bfloat16 or float64); rebuild the index with `bergson build`",
                path.display(),
                self.base_dtype
            ))
        })?;
        Ok(())
    }
}

fn legacy_dtype_name(fmt: &str) -> &'static str {
    match fmt.trim_start_matches(['<', '>', '=', '|']) {
        "f2" | "float16" => "float16",
        "f8" | "float64" => "float64",
        "bfloat16" | "V2" => "bfloat16",
        _ => "float32",
    }
}

/// (De)serialises `Vec<(String, usize)>` as a JSON object, keeping order.
mod ordered_map {
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[(String, usize)], s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(v.len()))?;
        for (k, n) in v {
            m.serialize_entry(k, n)?;
        }
        m.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, usize)>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(String, usize)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of module names to sizes")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, usize>()? {
                    out.push((k, v));
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_bergsons_layout_byte_for_byte() {
        let info = IndexInfo {
            attribute_tokens: false,
            num_items: 6,
            num_grads: 6,
            grad_sizes: vec![
                ("layers.0.attention.query_key_value".into(), 16),
                ("layers.0.attention.dense".into(), 16),
            ],
            base_dtype: "float32".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        info.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("info.json")).unwrap();
        let want = "{\n  \"attribute_tokens\": false,\n  \"num_items\": 6,\n  \"num_grads\": 6,\n  \"grad_sizes\": {\n    \"layers.0.attention.query_key_value\": 16,\n    \"layers.0.attention.dense\": 16\n  },\n  \"base_dtype\": \"float32\"\n}";
        assert_eq!(text, want);
        assert_eq!(IndexInfo::read(dir.path()).unwrap(), info);
    }

    #[test]
    fn refuses_an_index_without_columns_or_with_an_unknown_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let write = |body: &str| std::fs::write(dir.path().join("info.json"), body).unwrap();
        write(r#"{"num_grads": 2, "grad_sizes": {}, "base_dtype": "float32"}"#);
        let e = IndexInfo::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("grad_sizes lists no modules"), "{e}");
        write(r#"{"num_grads": 2, "grad_sizes": {"a": 4}, "base_dtype": "int7"}"#);
        let e = IndexInfo::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("info.json: base_dtype 'int7'"), "{e}");
        write(r#"{"num_grads": 2, "grad_sizes": {"a": 4}, "base_dtype": "float16"}"#);
        assert_eq!(IndexInfo::read(dir.path()).unwrap().row_len(), 4);
    }
}
