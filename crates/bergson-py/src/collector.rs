//! `Collector`: the gradient collector of `bergson build` fed by torch hooks. Python's forward
//! hooks pass each collected module's input, its backward hooks the output gradient; `take`
//! forms every example's normalised, projected gradient exactly as the build does.

use std::collections::HashMap;
use std::path::Path;

use bergson::collect::{GradientCollector, GradientProcessor, ModuleCall, Normalizer, Target};
use bergson::config::AttentionConfig;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::{Device, Kind, Tensor};

use crate::{kind_of, py_err};

/// A module to collect: `(name, in_features, out_features, collect_bias)`.
type TargetSpec = (String, i64, i64, bool);

/// Per-example gradient capture for a torch model's modules.
#[pyclass(unsendable, module = "bergson_rs._core")]
pub struct Collector {
    targets: Vec<Target>,
    processor: GradientProcessor,
    inner: GradientCollector,
    kind: Kind,
    save_kind: Kind,
    device: Device,
    /// Calls of this batch in forward order.
    calls: Vec<ModuleCall>,
    /// Per module, the calls still waiting for their output gradient (latest last).
    waiting: HashMap<String, Vec<usize>>,
}

fn device_of(device: &str) -> PyResult<Device> {
    match device {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        d => d
            .strip_prefix("cuda:")
            .and_then(|i| i.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| PyValueError::new_err(format!("unknown device {d}; use cpu or cuda:N"))),
    }
}

#[pymethods]
impl Collector {
    /// A collector for `targets` computing in `dtype` on `device`, rows formed and clamped in
    /// `save_dtype`. The projection settings are `projection_dim`/`include_bias`, or those of
    /// the index at `index_path` (its `processor_config.yaml` and `normalizers.pth`), as
    /// `Attributor.trace` needs. `attention_cfgs` maps a module to
    /// `(num_heads, head_size, head_dim)`.
    #[new]
    #[pyo3(signature = (targets, dtype, save_dtype, device="cpu", projection_dim=None, include_bias=false, attention_cfgs=HashMap::new(), index_path=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        targets: Vec<TargetSpec>,
        dtype: &str,
        save_dtype: &str,
        device: &str,
        projection_dim: Option<usize>,
        include_bias: bool,
        attention_cfgs: HashMap<String, (i64, i64, i64)>,
        index_path: Option<String>,
    ) -> PyResult<Self> {
        let processor = match &index_path {
            Some(dir) => {
                let dir = Path::new(dir);
                let mut p =
                    GradientProcessor::new(GradientProcessor::read_settings(dir).map_err(py_err)?);
                let normalizers = dir.join("normalizers.pth");
                if normalizers.is_file() {
                    p.normalizers =
                        bergson::collect::optimizer_state::read_normalizers(&normalizers)
                            .map_err(py_err)?;
                }
                p
            }
            None => GradientProcessor::new(bergson::collect::ProjectionSettings {
                projection_dim: projection_dim.filter(|&p| p > 0),
                include_bias,
                ..Default::default()
            }),
        };
        let include_bias = processor.settings.include_bias;
        let mut specs = Vec::new();
        for (name, in_features, out_features, has_bias) in targets {
            let heads = match attention_cfgs.get(&name) {
                Some(&(num_heads, head_size, head_dim)) => {
                    if num_heads * head_size != out_features {
                        return Err(PyValueError::new_err(format!(
                            "{name}: num_heads * head_size = {} does not cover the module's {out_features} output features; fix its attention config",
                            num_heads * head_size
                        )));
                    }
                    if head_dim != 2 {
                        return Err(PyValueError::new_err(format!(
                            "{name}: head_dim {head_dim} is not supported; heads are cut along the output features (head_dim=2)"
                        )));
                    }
                    Some(AttentionConfig {
                        num_heads,
                        head_size,
                        head_dim,
                    })
                }
                None => None,
            };
            specs.push(Target {
                name,
                in_features,
                out_features,
                collect_bias: include_bias && has_bias,
                heads,
            });
        }
        if let Some(unknown) = attention_cfgs
            .keys()
            .find(|k| !specs.iter().any(|t| &t.name == *k))
        {
            return Err(PyValueError::new_err(format!(
                "attention_cfgs names {unknown}, which is not a collected module"
            )));
        }
        let (kind, save_kind, device) = (kind_of(dtype)?, kind_of(save_dtype)?, device_of(device)?);
        let inner =
            GradientCollector::new(specs.clone(), &processor, false, kind, save_kind, device)
                .map_err(py_err)?;
        Ok(Collector {
            targets: specs,
            processor,
            inner,
            kind,
            save_kind,
            device,
            calls: Vec::new(),
            waiting: HashMap::new(),
        })
    }

    /// The index's column blocks and sizes (`grad_sizes` of info.json), in order.
    fn grad_sizes(&self) -> Vec<(String, usize)> {
        self.inner.grad_sizes()
    }

    /// The collected modules' names.
    fn target_names(&self) -> Vec<String> {
        self.inner.target_names()
    }

    /// Installs normalizers: `{module: ("adam", weight_avg_sq [O, I], bias_avg_sq | None)}` or
    /// `{module: ("adafactor", row [O], col [I], bias_avg_sq | None)}`; an empty dict removes
    /// them. Projection matrices are regenerated (they are cheap: `p·(I+O)` per module).
    fn set_normalizers(
        &mut self,
        normalizers: Vec<(String, String, Vec<Option<PyTensor>>)>,
    ) -> PyResult<()> {
        let mut out = Vec::new();
        for (name, class, tensors) in normalizers {
            let t = |i: usize| -> Option<Tensor> {
                tensors
                    .get(i)
                    .and_then(|t| t.as_ref())
                    .map(|t| t.0.detach().to_kind(Kind::Float))
            };
            let n = match (class.as_str(), t(0)) {
                ("adam", Some(w)) => Normalizer::Adam {
                    weight_avg_sq: w,
                    bias_avg_sq: t(1),
                },
                ("adafactor", Some(row)) => Normalizer::Adafactor {
                    row,
                    col: t(1).ok_or_else(|| {
                        PyValueError::new_err(format!("{name}: adafactor normalizer without col"))
                    })?,
                    bias_avg_sq: t(2),
                },
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "{name}: normalizer must be ('adam', weight, bias) or ('adafactor', row, col, bias)"
                    )))
                }
            };
            out.push((name, n));
        }
        self.processor.normalizers = out;
        self.inner = GradientCollector::new(
            self.targets.clone(),
            &self.processor,
            false,
            self.kind,
            self.save_kind,
            self.device,
        )
        .map_err(py_err)?;
        Ok(())
    }

    /// Forward hook: the input `[N, S, I]` of module `name`.
    fn record_input(&mut self, name: &str, x: PyTensor) -> PyResult<()> {
        if x.dim() != 3 {
            return Err(PyValueError::new_err(format!(
                "{name}: expected an input of shape [N, S, I], got {:?}",
                x.size()
            )));
        }
        if let Some(call) = self.inner.module_call(name, &x).map_err(py_err)? {
            self.waiting
                .entry(name.to_string())
                .or_default()
                .push(self.calls.len());
            self.calls.push(call);
        }
        Ok(())
    }

    /// Backward hook: the loss gradient `[N, S, O]` of module `name`'s latest call.
    fn record_grad(&mut self, name: &str, g: PyTensor) -> PyResult<()> {
        let Some(i) = self.waiting.get_mut(name).and_then(Vec::pop) else {
            return Err(PyValueError::new_err(format!(
                "{name}: a gradient arrived for a call that was not recorded in the forward pass"
            )));
        };
        self.calls[i].set_output_grad(&g);
        Ok(())
    }

    /// Whether calls were recorded since the last `take`.
    fn pending(&self) -> bool {
        !self.calls.is_empty()
    }

    /// Forgets the recorded calls (a forward pass without backward, e.g. evaluation).
    fn clear(&mut self) {
        self.calls.clear();
        self.waiting.clear();
    }

    /// The batch's rows per column block `[(name, [N, size])]` (CPU, save dtype, clamped to
    /// its finite range), from every recorded call; clears them.
    fn take(&mut self) -> PyResult<Vec<(String, PyTensor)>> {
        let calls = std::mem::take(&mut self.calls);
        self.waiting.clear();
        let grads = self.inner.gradients_from_calls(calls).map_err(py_err)?;
        Ok(grads
            .blocks
            .into_iter()
            .map(|(n, t)| (n, PyTensor(t)))
            .collect())
    }

    /// Writes the processor (`processor_config.yaml`, `normalizers.pth`, empty Hessians) into
    /// `dir`, as Bergson's `GradientProcessor.save`.
    fn save_processor(&self, dir: &str) -> PyResult<()> {
        let dir = Path::new(dir);
        std::fs::create_dir_all(dir).map_err(|e| py_err(io(dir, e)))?;
        self.processor.on_cpu().save(dir).map_err(py_err)
    }
}

pub(crate) fn io(path: &Path, source: std::io::Error) -> bergson::Error {
    bergson::Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
