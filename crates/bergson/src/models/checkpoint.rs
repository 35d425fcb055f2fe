//! Reading checkpoint weights from safetensors files: `model.safetensors`, or the shards listed
//! in `model.safetensors.index.json`. Files are memory-mapped and every header is validated up
//! front, so a truncated or corrupt file is a one-line error instead of a crash.

use crate::error::IoContext;
use crate::{Error, Result};
use memmap2::Mmap;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The single-file weights name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The sharded weights index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: String,
    shape: Vec<i64>,
    /// Byte range inside the file.
    start: usize,
    end: usize,
}

/// One memory-mapped safetensors file.
#[derive(Debug)]
struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

/// The tensors of a checkpoint, by name.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<MappedFile>,
    entries: HashMap<String, Entry>,
}

impl Checkpoint {
    /// Opens the safetensors weights in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let names: Vec<String> = if index.is_file() {
            shard_names(&index)?
        } else if single.is_file() {
            vec![SINGLE_FILE.to_string()]
        } else {
            let bin = if dir.join("pytorch_model.bin").exists()
                || dir.join("pytorch_model.bin.index.json").exists()
            {
                " (it has pytorch_model.bin: re-save it with transformers' save_pretrained(..., safe_serialization=True))"
            } else {
                ""
            };
            return Err(Error::input(format!(
                "{}: no {SINGLE_FILE} or {INDEX_FILE}{bin}; bergson-rs reads safetensors checkpoints only",
                dir.display()
            )));
        };
        let mut ckpt = Checkpoint {
            files: Vec::new(),
            entries: HashMap::new(),
        };
        for name in names {
            let path = dir.join(&name);
            if !path.is_file() {
                return Err(Error::input(format!(
                    "{}: shard listed in {INDEX_FILE} is missing; re-download the checkpoint",
                    path.display()
                )));
            }
            ckpt.add_file(path)?;
        }
        Ok(ckpt)
    }

    /// Opens one safetensors file (a PEFT adapter's `adapter_model.safetensors`).
    pub fn open_file(path: &Path) -> Result<Self> {
        let mut ckpt = Checkpoint {
            files: Vec::new(),
            entries: HashMap::new(),
        };
        ckpt.add_file(path.to_path_buf())?;
        Ok(ckpt)
    }

    /// Every tensor name, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let file = File::open(&path).at_path(&path)?;
        // SAFETY: the map is read-only and checkpoint files are not modified while a model loads;
        // every byte range we read is validated against the map length below.
        let map = unsafe { Mmap::map(&file) }.at_path(&path)?;
        let index = self.files.len();
        for (name, entry) in parse_header(&map, &path, index)? {
            self.entries.insert(name, entry);
        }
        self.files.push(MappedFile { path, map });
        Ok(())
    }

    /// True when the checkpoint has a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The stored shape of `name`.
    pub fn shape(&self, name: &str) -> Option<&[i64]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The file that holds `name`, or the first file (for messages about missing tensors).
    pub fn file_of(&self, name: &str) -> &Path {
        let i = self.entries.get(name).map_or(0, |e| e.file);
        self.files
            .get(i)
            .map_or(Path::new(SINGLE_FILE), |f| f.path.as_path())
    }

    /// The dtype of the first floating-point tensor (by name), if any.
    pub fn first_float_kind(&self) -> Option<Kind> {
        let mut names: Vec<&String> = self.entries.keys().collect();
        names.sort();
        names.into_iter().find_map(|n| {
            let kind = dtype_kind(&self.entries[n].dtype)?;
            matches!(
                kind,
                Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
            )
            .then_some(kind)
        })
    }

    /// Loads `name` onto `device` as `kind`. Errors when it is absent or of a dtype we cannot read.
    pub fn load(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
        let entry = self.entries.get(name).ok_or_else(|| {
            Error::input(format!(
                "{}: tensor '{name}' is missing; re-download the checkpoint",
                self.file_of(name).display()
            ))
        })?;
        let file = &self.files[entry.file];
        let stored = dtype_kind(&entry.dtype).ok_or_else(|| {
            Error::input(format!(
                "{}: tensor '{name}' has dtype {}, which bergson-rs cannot read (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL); convert the checkpoint",
                file.path.display(),
                entry.dtype
            ))
        })?;
        let bytes = &file.map[entry.start..entry.end];
        let t = Tensor::f_from_data_size(bytes, &entry.shape, stored)?;
        // Move first, then cast: a half-precision file crosses the bus at half the size.
        Ok(t.f_to_device(device)?.f_to_kind(kind)?)
    }
}

/// The shard file names of a `model.safetensors.index.json`, each once, sorted.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).at_path(index)?;
    let bad = |why: &str| {
        Error::input(format!(
            "{}: {why}; re-download the checkpoint",
            index.display()
        ))
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&format!("not valid JSON ({e})")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object"))?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(&format!("weight_map entry '{tensor}' is not a file name")))?;
        // Shards must sit next to the index.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(&format!(
                "weight_map entry '{tensor}' names '{file}', not a file beside the index"
            )));
        }
        names.insert(file.to_string());
    }
    if names.is_empty() {
        return Err(bad("empty weight_map"));
    }
    Ok(names.into_iter().collect())
}

/// Bytes per element of a safetensors dtype we can read.
fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// The libtorch dtype of a safetensors dtype.
fn dtype_kind(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F64" => Kind::Double,
        "F32" => Kind::Float,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

/// Parses and validates a safetensors header: `u64` little-endian length, JSON object of
/// `name -> {dtype, shape, data_offsets}` (offsets relative to the end of the header).
fn parse_header(bytes: &[u8], path: &Path, file: usize) -> Result<Vec<(String, Entry)>> {
    let corrupt = |why: String| {
        Error::input(format!(
            "{}: truncated or corrupt safetensors file ({why}); re-download the checkpoint",
            path.display()
        ))
    };
    if bytes.len() < 8 {
        return Err(corrupt(format!(
            "{} bytes, shorter than the 8-byte header length",
            bytes.len()
        )));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(len_bytes);
    let data_start = 8u64
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len() as u64);
    let Some(data_start) = data_start else {
        return Err(corrupt(format!(
            "header of {header_len} bytes but the file has {}",
            bytes.len()
        )));
    };
    let data_start = data_start as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| corrupt(format!("header is not valid JSON: {e}")))?;
    let header = header
        .as_object()
        .ok_or_else(|| corrupt("header is not a JSON object".into()))?;
    let data_len = bytes.len() - data_start;
    let mut out = Vec::with_capacity(header.len());
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |why: &str| corrupt(format!("tensor '{name}': {why}"));
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("no dtype"))?;
        let shape: Vec<i64> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| i64::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape is not a list of sizes"))?;
        let offsets: Vec<u64> = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no data_offsets"))?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()
            .ok_or_else(|| bad("data_offsets are not byte offsets"))?;
        let [start, end] = offsets[..] else {
            return Err(bad("data_offsets must be [start, end]"));
        };
        if start > end || end > data_len as u64 {
            return Err(bad(&format!(
                "bytes {start}..{end} lie outside the {data_len} data bytes"
            )));
        }
        if let Some(size) = dtype_size(dtype) {
            let numel = shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            if numel.and_then(|n| n.checked_mul(size as u64)) != Some(end - start) {
                return Err(bad(&format!(
                    "shape {shape:?} of {dtype} does not fill bytes {start}..{end}"
                )));
            }
        }
        out.push((
            name.clone(),
            Entry {
                file,
                dtype: dtype.to_string(),
                shape,
                start: data_start + start as usize,
                end: data_start + end as usize,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_safetensors(path: &Path, tensors: &[(&str, &Tensor)]) {
        Tensor::write_safetensors(tensors, path).unwrap();
    }

    #[test]
    fn reads_single_and_sharded_files_and_casts() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 4.0]).reshape([2, 2]);
        let b = Tensor::from_slice(&[7i64, 8, 9]);
        write_safetensors(&dir.path().join(SINGLE_FILE), &[("a", &a), ("b", &b)]);
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ckpt.shape("a"), Some(&[2i64, 2][..]));
        let got = ckpt.load("a", Kind::Double, Device::Cpu).unwrap();
        assert_eq!(got.kind(), Kind::Double);
        assert_eq!(
            Vec::<f64>::try_from(got.flatten(0, -1)).unwrap(),
            vec![1.5, -2.0, 3.25, 4.0]
        );
        assert!(ckpt
            .load("c", Kind::Float, Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("'c' is missing"));

        let sharded = tempfile::tempdir().unwrap();
        write_safetensors(&sharded.path().join("s1.safetensors"), &[("a", &a)]);
        write_safetensors(&sharded.path().join("s2.safetensors"), &[("b", &b)]);
        let index =
            r#"{"metadata": {}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}"#;
        std::fs::write(sharded.path().join(INDEX_FILE), index).unwrap();
        let ckpt = Checkpoint::open(sharded.path()).unwrap();
        let got = ckpt.load("b", Kind::Int64, Device::Cpu).unwrap();
        assert_eq!(Vec::<i64>::try_from(got).unwrap(), vec![7, 8, 9]);
        assert!(ckpt.file_of("b").ends_with("s2.safetensors"));

        // A shard the index names but the directory lacks.
        std::fs::remove_file(sharded.path().join("s2.safetensors")).unwrap();
        let e = Checkpoint::open(sharded.path()).unwrap_err().to_string();
        assert!(e.contains("s2.safetensors") && e.contains("missing"), "{e}");
    }

    #[test]
    fn corrupt_files_are_input_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SINGLE_FILE);
        let a = Tensor::from_slice(&[1f32; 64]);
        write_safetensors(&path, &[("a", &a)]);
        let full = std::fs::read(&path).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated data", full[..full.len() - 10].to_vec()),
            ("truncated header", full[..20].to_vec()),
            ("tiny", full[..3].to_vec()),
            ("garbage", b"\xff\xff\xff\xff\xff\xff\xff\xffhello".to_vec()),
            ("bad json", {
                let mut v = full.clone();
                v[9] = b'!';
                v
            }),
        ];
        for (what, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let e = Checkpoint::open(dir.path()).unwrap_err();
            assert!(e.is_user_error(), "{what}");
            let msg = e.to_string();
            assert!(
                msg.contains("model.safetensors") && msg.contains("corrupt"),
                "{what}: {msg}"
            );
            assert!(!msg.contains('\n'), "{what}: {msg}");
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::write(dir.path().join("pytorch_model.bin"), b"x").unwrap();
        let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("safe_serialization"), "{e}");
    }
}
