//! Reading and writing `torch.save` files (`.pt`, `.pth`) through libtorch's own zip reader,
//! unpickler and pickler (`csrc/pickle_shim.cpp`).
//!
//! [`load`] returns the file's object as a [`Value`] tree: tensors come back on the CPU and
//! views share their storage as in Python. [`save`] writes what `torch.save` would (zip
//! archive, pickle protocol 2) in a form `torch.load(weights_only=True)` accepts: dicts and
//! lists are written untagged, never as TorchScript's typed containers. The bytes differ from
//! Python's (record order, memo placement) but the loaded objects are equal.
//!
//! Readable: what bergson and Hugging Face write (`optimizer.pt`, `normalizers.pth`,
//! `hessians*.pth`, `total_processed.pt`). Refused with a message that names the file and the
//! fix: the legacy non-zip format, pickle protocols other than 2, `collections.OrderedDict`
//! (any `nn.Module.state_dict()`), Python ints stored in 5-7 bytes, and objects other than
//! None/bool/int/float/str/list/tuple/dict/tensor (e.g. `torch.Size`).

mod ffi;
mod files;
mod scan;
mod value;

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use tch::Tensor;

pub use files::{load_scalar_i64, save_empty_dict, save_scalar_i64};
pub use value::Value;

use crate::error::IoContext;
use crate::{Error, Result};

/// Reads the object that `torch.save` wrote to `path`.
///
/// A missing or unreadable file is [`Error::Io`]; a file that is not a readable torch.save
/// archive is [`Error::Input`] naming the file and what is wrong.
pub fn load(path: &Path) -> Result<Value> {
    check_zip_header(path)?;
    let shown = path.display();
    let archive = ffi::Archive::open(path).map_err(|msg| {
        if msg.contains("central directory") {
            // libtorch's message for this is a paragraph; ours says the same in a line.
            Error::input(format!(
                "{shown} is not a complete zip archive (truncated or corrupted?): copy or \
                 re-save it with torch.save"
            ))
        } else {
            Error::input(format!("{shown} is not a torch.save file: {msg}"))
        }
    })?;
    scan::check_program(archive.program()).map_err(|why| Error::input(format!("{shown} {why}")))?;
    archive.load().map_err(|msg| {
        Error::input(format!(
            "{shown} cannot be read: {msg} (bergson-rs reads torch.save files holding None, bool, \
             int, float, str, list, tuple, dict and tensors)"
        ))
    })
}

/// Refuses files that are not zip archives before libtorch sees them, telling the legacy
/// torch.save format (a bare pickle) apart from anything else.
fn check_zip_header(path: &Path) -> Result<()> {
    let mut head = [0u8; 4];
    let mut file = File::open(path).at_path(path)?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]).at_path(path)? {
            0 => break,
            k => n += k,
        }
    }
    if n == 4 && head == *b"PK\x03\x04" {
        return Ok(());
    }
    let shown = path.display();
    if n >= 2 && head[0] == 0x80 {
        return Err(Error::input(format!(
            "{shown} is not a torch.save zip archive (legacy format?): re-save it with torch.save \
             in PyTorch >= 1.6 (without _use_new_zipfile_serialization=False)"
        )));
    }
    Err(Error::input(format!(
        "{shown} is not a torch.save file: it is {}",
        if n == 0 { "empty" } else { "not a zip archive" }
    )))
}

/// Writes `value` to `path` as `torch.save` would, so that Python's
/// `torch.load(path, weights_only=True)` reads it back. Tensors on other devices are copied to
/// the CPU first. The file appears atomically: it is written next to `path` and renamed.
pub fn save(path: &Path, value: &Value) -> Result<()> {
    let name = path.file_name().ok_or_else(|| {
        Error::input(format!(
            "cannot save to {}: it names no file",
            path.display()
        ))
    })?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result =
        write_archive(&tmp, path, value).and_then(|()| std::fs::rename(&tmp, path).at_path(path));
    if result.is_err() {
        // Best effort: the temporary file may not exist.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_archive(tmp: &Path, path: &Path, value: &Value) -> Result<()> {
    let mut out = BufWriter::new(File::create(tmp).at_path(tmp)?);
    ffi::save(value, &mut out).map_err(|e| match e {
        ffi::SaveError::Io(e) => Error::io(tmp, e),
        ffi::SaveError::Torch(msg) => Error::Torch(tch::TchError::Torch(format!(
            "cannot save {}: {msg}",
            path.display()
        ))),
    })?;
    out.flush().at_path(tmp)
}

/// How a tensor lies in its storage (tch has no accessor for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageView {
    /// Address of the storage's first byte: equal for tensors that share a storage.
    pub storage_ptr: usize,
    /// Size of the whole storage in bytes.
    pub storage_nbytes: usize,
    /// Offset of the tensor's first element into the storage, in elements.
    pub offset: i64,
}

/// Where `t` lies in its storage, e.g. to check that loaded views share it as in Python.
pub fn storage_view(t: &Tensor) -> Result<StorageView> {
    let (storage_ptr, storage_nbytes, offset) =
        ffi::storage(t).map_err(|msg| Error::Torch(tch::TchError::Torch(msg)))?;
    Ok(StorageView {
        storage_ptr,
        storage_nbytes,
        offset,
    })
}
