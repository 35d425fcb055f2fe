//! `IndexWriter`: Bergson's `create_index` (info.json plus a zero-filled `gradients.bin`) and
//! the row writes of its callback; `write_order`: the callback's `order.hf`.

use std::path::{Path, PathBuf};

use bergson::index::gradient_file::GradientFile;
use bergson::index::info::IndexInfo;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::{Kind, Tensor};

use crate::collector::io;
use crate::{kind_of, py_err, torch_err};

/// An index being written row by row.
#[pyclass(unsendable, module = "bergson_rs._core")]
pub struct IndexWriter {
    file: GradientFile,
    dir: PathBuf,
    kind: Kind,
    grad_sizes: Vec<(String, usize)>,
    num_rows: usize,
}

#[pymethods]
impl IndexWriter {
    /// Creates `dir` with info.json and a `[num_rows, Σ sizes]` gradients.bin of `dtype`
    /// (float16, bfloat16, float32 or float64).
    #[new]
    fn new(
        dir: &str,
        num_rows: usize,
        grad_sizes: Vec<(String, usize)>,
        dtype: &str,
    ) -> PyResult<Self> {
        let kind = kind_of(dtype)?;
        let base_dtype = match kind {
            Kind::Half => "float16",
            Kind::BFloat16 => "bfloat16",
            Kind::Float => "float32",
            _ => "float64",
        };
        let path = Path::new(dir);
        std::fs::create_dir_all(path).map_err(|e| py_err(io(path, e)))?;
        IndexInfo {
            attribute_tokens: false,
            num_items: num_rows,
            num_grads: num_rows,
            grad_sizes: grad_sizes.clone(),
            base_dtype: base_dtype.to_string(),
        }
        .write(path)
        .map_err(py_err)?;
        let row_len = grad_sizes.iter().map(|(_, s)| s).sum();
        let file = GradientFile::create(path, num_rows, row_len, kind, false).map_err(py_err)?;
        Ok(IndexWriter {
            file,
            dir: path.to_path_buf(),
            kind,
            grad_sizes,
            num_rows,
        })
    }

    /// Writes the blocks' rows (`[(name, [n, size])]` in column order) at rows `indices`,
    /// rounded to the index dtype (`grad_buffer[indices, lo:hi] = g.numpy()`).
    fn write(&self, indices: Vec<i64>, blocks: Vec<(String, PyTensor)>) -> PyResult<()> {
        if blocks.len() != self.grad_sizes.len()
            || blocks
                .iter()
                .zip(&self.grad_sizes)
                .any(|((n, t), (m, s))| n != m || t.size() != [indices.len() as i64, *s as i64])
        {
            return Err(PyValueError::new_err(format!(
                "rows for {} do not fit the index at {} ({} rows of {:?})",
                blocks
                    .iter()
                    .map(|(n, t)| format!("{n} {:?}", t.size()))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.dir.display(),
                indices.len(),
                self.grad_sizes
            )));
        }
        let rows: Vec<usize> = indices
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .filter(|&i| i < self.num_rows)
                    .ok_or_else(|| {
                        PyValueError::new_err(format!(
                            "row {i} is outside the index's {} rows",
                            self.num_rows
                        ))
                    })
            })
            .collect::<PyResult<_>>()?;
        let parts: Vec<Tensor> = blocks
            .iter()
            .map(|(_, t)| t.0.f_to_kind(self.kind))
            .collect::<Result<_, _>>()
            .map_err(torch_err)?;
        let all = Tensor::f_cat(&parts, 1).map_err(torch_err)?;
        self.file.scatter_rows(&rows, &all).map_err(py_err)
    }

    /// Flushes the rows to disk.
    fn flush(&self) -> PyResult<()> {
        self.file.sync().map_err(py_err)
    }
}

/// Writes `order.hf` (a `save_to_disk` dataset of `_idx`, `global_step`, `epoch`) at `path`.
#[pyfunction]
pub fn write_order(
    path: &str,
    idx: Vec<i64>,
    global_step: Vec<i64>,
    epoch: Vec<i64>,
) -> PyResult<()> {
    if idx.len() != global_step.len() || idx.len() != epoch.len() {
        return Err(PyValueError::new_err(
            "order.hf: _idx, global_step and epoch must have the same length",
        ));
    }
    let rows: Vec<[i64; 3]> = (0..idx.len())
        .map(|i| [idx[i], global_step[i], epoch[i]])
        .collect();
    bergson::train::collect::write_order(Path::new(path), &rows).map_err(py_err)
}
