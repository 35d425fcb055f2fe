//! Memory-mapped reading of a gradient index (ours or one Python Bergson wrote).

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tch::{Kind, Tensor};

use super::info::IndexInfo;
use crate::error::IoContext;
use crate::{Error, Result};

/// An index directory opened for reading; `gradients.bin` is memory-mapped, never loaded whole.
pub struct GradientIndex {
    /// `info.json`.
    pub info: IndexInfo,
    dir: PathBuf,
    mmap: Option<Mmap>,
    offsets: Option<Vec<i64>>,
    elem: usize,
}

impl GradientIndex {
    /// Opens the index in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::input(format!(
                "{} is not an index directory",
                dir.display()
            )));
        }
        let info = IndexInfo::read(dir)?;
        let elem = info.elem_size()?;
        let path = dir.join("gradients.bin");
        let file = File::open(&path).at_path(&path)?;
        let want = (info.num_grads * info.row_len() * elem) as u64;
        let have = file.metadata().at_path(&path)?.len();
        if have < want {
            return Err(Error::input(format!(
                "{}: {have} bytes, but info.json describes {want}; the index is truncated",
                path.display()
            )));
        }
        if have > want {
            // Bergson's memmap reads the first rows and ignores the rest; so do we, out loud.
            tracing::warn!(
                "{}: {have} bytes, more than the {want} info.json describes; reading the first {} rows only",
                path.display(),
                info.num_grads
            );
        }
        // SAFETY: the file is opened read-only and we only hand out copies of its bytes; a
        // concurrent writer could change values under us but not break memory safety of the
        // u8 slice we read.
        let mmap = if want == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file) }.at_path(&path)?)
        };
        let offsets = if info.attribute_tokens {
            Some(read_offsets(&dir.join("offsets.npy"))?)
        } else {
            None
        };
        Ok(GradientIndex {
            info,
            dir: dir.to_path_buf(),
            mmap,
            offsets,
            elem,
        })
    }

    /// The index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rows of the index.
    pub fn num_rows(&self) -> usize {
        self.info.num_grads
    }

    /// Values per row.
    pub fn row_len(&self) -> usize {
        self.info.row_len()
    }

    /// The stored dtype.
    pub fn kind(&self) -> Kind {
        match self.info.base_dtype.as_str() {
            "float16" => Kind::Half,
            "bfloat16" => Kind::BFloat16,
            "float64" => Kind::Double,
            _ => Kind::Float,
        }
    }

    /// The columns of a module's block.
    pub fn module_columns(&self, name: &str) -> Option<Range<usize>> {
        let mut start = 0;
        for (n, size) in &self.info.grad_sizes {
            if n == name {
                return Some(start..start + size);
            }
            start += size;
        }
        None
    }

    /// The raw bytes of rows `rows`.
    pub fn rows_bytes(&self, rows: Range<usize>) -> Result<&[u8]> {
        if rows.end > self.num_rows() || rows.start > rows.end {
            return Err(Error::input(format!(
                "rows {rows:?} out of range 0..{}",
                self.num_rows()
            )));
        }
        let rb = self.row_len() * self.elem;
        Ok(match &self.mmap {
            Some(m) => &m[rows.start * rb..rows.end * rb],
            None => &[],
        })
    }

    /// Rows `rows` as a `[n, row_len]` tensor in the stored dtype (a copy).
    pub fn rows(&self, rows: Range<usize>) -> Result<Tensor> {
        let n = rows.len() as i64;
        let bytes = self.rows_bytes(rows)?;
        Ok(Tensor::f_from_data_size(
            bytes,
            &[n, self.row_len() as i64],
            self.kind(),
        )?)
    }

    /// Rows `rows` of one module's block, `[n, size]`, in the stored dtype.
    pub fn module_rows(&self, name: &str, rows: Range<usize>) -> Result<Tensor> {
        let cols = self.module_columns(name).ok_or_else(|| {
            Error::input(format!(
                "module '{name}' is not in the index; it has: {}",
                self.info
                    .grad_sizes
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        Ok(self
            .rows(rows)?
            .f_narrow(1, cols.start as i64, cols.len() as i64)?)
    }

    /// With `attribute_tokens`, the rows of document `i`.
    pub fn token_rows(&self, i: usize) -> Option<Range<usize>> {
        let o = self.offsets.as_ref()?;
        Some(o.get(i).copied()? as usize..o.get(i + 1).copied()? as usize)
    }
}

/// Reads `offsets.npy` (int64).
pub fn read_offsets(path: &Path) -> Result<Vec<i64>> {
    let bytes = std::fs::read(path).at_path(path)?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .map_err(|e| Error::input(format!("{}: not an .npy file: {e}", path.display())))?;
    npy.into_vec::<i64>()
        .map_err(|e| Error::input(format!("{}: expected int64 offsets: {e}", path.display())))
}

/// Writes `offsets.npy` (int64), as `np.save` does.
pub fn write_offsets(path: &Path, offsets: &[i64]) -> Result<()> {
    npyz::to_file_1d(path, offsets.iter().copied()).at_path(path)
}
