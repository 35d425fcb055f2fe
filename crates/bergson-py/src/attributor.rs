//! `Attributor`: exact search of a gradient index (ours or Python Bergson's), with Bergson's
//! unit norm and Hessian preconditioning.

use bergson::config::InversionConfig;
use bergson::query::attributor::{Attributor as Inner, AttributorOptions};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::Kind;

use crate::py_err;

/// A gradient index opened for search.
#[pyclass(unsendable, module = "bergson_rs._core")]
pub struct Attributor {
    inner: Inner,
}

#[pymethods]
impl Attributor {
    /// Opens the index at `index_path`; `hessian_path` preconditions (one-sided, two-sided
    /// with `unit_norm`).
    #[new]
    #[pyo3(signature = (index_path, unit_norm=false, hessian_path=None, ev_correction=false))]
    fn new(
        index_path: &str,
        unit_norm: bool,
        hessian_path: Option<String>,
        ev_correction: bool,
    ) -> PyResult<Self> {
        let options = AttributorOptions {
            unit_norm,
            hessian_path,
            inversion_cfg: InversionConfig::default(),
            ev_correction,
            ..AttributorOptions::default()
        };
        Ok(Attributor {
            inner: Inner::open(index_path, options).map_err(py_err)?,
        })
    }

    /// The index's column blocks, in order.
    fn modules(&self) -> Vec<String> {
        self.inner.modules()
    }

    /// Rows of the index.
    fn num_rows(&self) -> usize {
        self.inner.num_rows()
    }

    /// `(scores [Q, k], indices [Q, k])` of the best `k` rows (all with `None`) per query;
    /// `queries` holds each module's `[Q, size]` gradients.
    #[pyo3(signature = (queries, k, modules=None, reverse=false))]
    fn search(
        &self,
        queries: Vec<(String, PyTensor)>,
        k: Option<usize>,
        modules: Option<Vec<String>>,
        reverse: bool,
    ) -> PyResult<(PyTensor, PyTensor)> {
        let queries: Vec<(String, tch::Tensor)> = queries
            .into_iter()
            .map(|(n, t)| (n, t.0.detach().to_kind(Kind::Float)))
            .collect();
        let hits = self
            .inner
            .search(&queries, k, modules.as_deref(), reverse)
            .map_err(py_err)?;
        Ok((PyTensor(hits.scores), PyTensor(hits.indices)))
    }
}
