//! `bergson_rs._core`: the Rust half of the `bergson_rs` Python package. The Python half
//! (`python/bergson_rs`) owns the torch hooks, the HF Trainer callback and the Attributor's
//! API; this module forms, projects and writes the gradients and searches indexes with the
//! same library the `bergson` CLI runs. Tensors cross without copies (pyo3-tch shares the
//! process's libtorch).

mod attributor;
mod collector;
mod commands;
mod writer;

use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// A library error as the Python exception its users expect: their mistakes are
/// `ValueError` (`FileNotFoundError` for a missing path), faults are `RuntimeError`.
pub(crate) fn py_err(e: bergson::Error) -> PyErr {
    match &e {
        bergson::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        _ if e.is_user_error() => PyValueError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

/// A libtorch error raised inside this module.
pub(crate) fn torch_err(e: tch::TchError) -> PyErr {
    py_err(bergson::Error::from(e))
}

/// The tch kind of a torch dtype name (`"float32"`, `"torch.float16"`, `"bfloat16"`, ...).
pub(crate) fn kind_of(dtype: &str) -> PyResult<tch::Kind> {
    use tch::Kind;
    Ok(match dtype.trim_start_matches("torch.") {
        "float32" | "float" => Kind::Float,
        "float16" | "half" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "float64" | "double" => Kind::Double,
        other => {
            return Err(PyValueError::new_err(format!(
                "unsupported dtype {other}; use float32, float16, bfloat16 or float64"
            )))
        }
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TORCH_VERSION", "2.11.0")?;
    m.add_class::<collector::Collector>()?;
    m.add_class::<writer::IndexWriter>()?;
    m.add_function(wrap_pyfunction!(writer::write_order, m)?)?;
    m.add_class::<attributor::Attributor>()?;
    m.add_function(wrap_pyfunction!(commands::build, m)?)?;
    m.add_function(wrap_pyfunction!(commands::score, m)?)?;
    Ok(())
}
