//! `gradients.bin`: a flat little-endian `[num_grads, row_len]` array in the model dtype, written
//! row by row at each document's (or token's) position while the build runs.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::IoContext;
use crate::{Error, Result};

/// An open `gradients.bin` being written.
pub struct GradientFile {
    file: File,
    path: PathBuf,
    row_bytes: usize,
    num_rows: usize,
    kind: Kind,
}

impl GradientFile {
    /// Creates (or reopens, when `resume`) a zero-filled `[num_rows, row_len]` file of `kind`.
    /// The file is sized up front (sparse), so rows never written stay zero as in Bergson.
    pub fn create(
        dir: &Path,
        num_rows: usize,
        row_len: usize,
        kind: Kind,
        resume: bool,
    ) -> Result<Self> {
        let path = dir.join("gradients.bin");
        let elem = kind_size(kind)?;
        let row_bytes = row_len * elem;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!resume)
            .open(&path)
            .at_path(&path)?;
        let want = (num_rows * row_bytes) as u64;
        let have = file.metadata().at_path(&path)?.len();
        if resume && have != want {
            return Err(Error::input(format!(
                "{}: {have} bytes where {want} were expected; the partial run does not match this config (use --overwrite)",
                path.display()
            )));
        }
        file.set_len(want).at_path(&path)?;
        Ok(GradientFile {
            file,
            path,
            row_bytes,
            num_rows,
            kind,
        })
    }

    /// Writes consecutive rows of `rows` (`[n, row_len]`, CPU, this file's dtype) starting at
    /// row `first`.
    pub fn write_rows(&self, first: usize, rows: &Tensor) -> Result<()> {
        let n = rows.size().first().copied().unwrap_or(0) as usize;
        if n == 0 {
            return Ok(());
        }
        let bytes = tensor_bytes(rows, self.kind)?;
        if bytes.len() != n * self.row_bytes || first + n > self.num_rows {
            return Err(Error::internal(format!(
                "{n} rows of {} bytes at row {first} do not fit {}",
                bytes.len() / n.max(1),
                self.path.display()
            )));
        }
        self.file
            .write_all_at(&bytes, (first * self.row_bytes) as u64)
            .at_path(&self.path)
    }

    /// Writes each row `i` of `rows` at row `indices[i]`, coalescing runs of consecutive indices.
    pub fn scatter_rows(&self, indices: &[usize], rows: &Tensor) -> Result<()> {
        let bytes = tensor_bytes(rows, self.kind)?;
        let mut i = 0;
        while i < indices.len() {
            let mut j = i + 1;
            while j < indices.len() && indices[j] == indices[j - 1] + 1 {
                j += 1;
            }
            let chunk = &bytes[i * self.row_bytes..j * self.row_bytes];
            if indices[j - 1] >= self.num_rows {
                return Err(Error::internal(format!(
                    "row {} beyond {}",
                    indices[j - 1],
                    self.path.display()
                )));
            }
            self.file
                .write_all_at(chunk, (indices[i] * self.row_bytes) as u64)
                .at_path(&self.path)?;
            i = j;
        }
        Ok(())
    }

    /// Flushes the rows to disk.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().at_path(&self.path)
    }
}

/// Bytes per element of a dtype gradients are stored in.
pub fn kind_size(kind: Kind) -> Result<usize> {
    match kind {
        Kind::Float => Ok(4),
        Kind::Half | Kind::BFloat16 => Ok(2),
        Kind::Double => Ok(8),
        other => Err(Error::internal(format!(
            "cannot store gradients as {other:?}"
        ))),
    }
}

/// The raw little-endian bytes of a tensor, converted to `kind` and made contiguous.
pub fn tensor_bytes(t: &Tensor, kind: Kind) -> Result<Vec<u8>> {
    let t = t.f_to_kind(kind)?.f_contiguous()?;
    let numel = t.numel();
    let mut buf = vec![0u8; numel * kind_size(kind)?];
    t.f_copy_data_u8(&mut buf, numel)?;
    Ok(buf)
}
