//! Maps Hugging Face tensor names to model fields while a model is built (a `VarBuilder` in
//! candle's words), checking each shape and recording, in build order, the parameters
//! (`named_parameters()`) and the base model's Linear modules (`linear_modules()`). Building a
//! model in transformers' registration order therefore gives both lists in its order.

use super::checkpoint::Checkpoint;
use super::lora::{unused_modules, Adapter, LoraAdapter};
use super::norm::{LayerNorm, RmsNorm};
use super::{Linear, LinearInfo};
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use tch::{Device, Kind, Tensor};

/// Where a model's tensors come from: a checkpoint on disk, or tensors someone already holds
/// (a trainer's explicit parameters, see [`ExplicitParams`]).
pub trait TensorSource {
    /// True when the source has a tensor called `name`.
    fn contains(&self, name: &str) -> bool;
    /// The stored shape of `name`.
    fn shape(&self, name: &str) -> Option<Vec<i64>>;
    /// `name` as `kind` on `device`.
    fn load(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor>;
    /// Where `name` lives, for messages (a file path, or "explicit parameters").
    fn origin(&self, name: &str) -> String;

    /// The PEFT adapter applied over these weights, if any.
    fn adapter(&self) -> Option<&Adapter> {
        None
    }
}

impl TensorSource for Checkpoint {
    fn contains(&self, name: &str) -> bool {
        Checkpoint::contains(self, name)
    }

    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        Checkpoint::shape(self, name).map(<[i64]>::to_vec)
    }

    fn load(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
        Checkpoint::load(self, name, kind, device)
    }

    fn origin(&self, name: &str) -> String {
        self.file_of(name).display().to_string()
    }
}

/// Parameters held as tensors, by their full Hugging Face names in the stored layout
/// ([`super::CausalLm::named_parameters`]). A model built from them uses these very tensors
/// (no copy), so autograd sees every use: this is how a trainer runs a model on explicit
/// parameters, as Python Bergson's MAGIC trainer swaps its parameters into the module.
pub struct ExplicitParams {
    tensors: HashMap<String, Tensor>,
}

impl ExplicitParams {
    /// Wraps `(name, tensor)` pairs (shallow handles: the tensors are shared, not copied).
    pub fn new<'t>(params: impl IntoIterator<Item = (&'t String, &'t Tensor)>) -> Self {
        Self {
            tensors: params
                .into_iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
        }
    }
}

impl TensorSource for ExplicitParams {
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.tensors.get(name).map(Tensor::size)
    }

    fn load(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::input(format!("explicit parameters lack '{name}'")))?;
        // Same kind and device: the tensor itself, so gradients reach the caller's tensor.
        if t.kind() == kind && t.device() == device {
            Ok(t.shallow_clone())
        } else {
            Ok(t.f_to_device(device)?.f_to_kind(kind)?)
        }
    }

    fn origin(&self, _name: &str) -> String {
        "explicit parameters".to_string()
    }
}

/// Base weights with a PEFT adapter applied over them.
pub struct Adapted<'a> {
    /// The base model's weights.
    pub base: &'a dyn TensorSource,
    /// The adapter.
    pub adapter: &'a Adapter,
}

impl TensorSource for Adapted<'_> {
    fn contains(&self, name: &str) -> bool {
        self.base.contains(name)
    }

    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.base.shape(name)
    }

    fn load(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
        self.base.load(name, kind, device)
    }

    fn origin(&self, name: &str) -> String {
        self.base.origin(name)
    }

    fn adapter(&self) -> Option<&Adapter> {
        Some(self.adapter)
    }
}

/// Loads parameters from a tensor source in the order a model registers them.
pub struct ParamLoader<'a> {
    ckpt: &'a dyn TensorSource,
    model_type: String,
    /// The base model attribute (`gpt_neox`, `transformer`, `model`).
    prefix: &'a str,
    kind: Kind,
    device: Device,
    params: Vec<(String, Tensor)>,
    linears: Vec<LinearInfo>,
    /// Full names of the modules the adapter's weights were attached to.
    adapted: HashSet<String>,
    /// The adapter's LoRA weights, by peft parameter name.
    adapter_params: Vec<(String, Tensor)>,
}

/// What a finished loader hands to the model.
pub struct Loaded {
    /// Full names and tensors, in `named_parameters()` order.
    pub params: Vec<(String, Tensor)>,
    /// Base-model Linear modules in `named_modules()` order.
    pub linears: Vec<LinearInfo>,
    /// The adapter's LoRA weights with peft's parameter names, in `named_parameters()` order.
    pub adapter_params: Vec<(String, Tensor)>,
}

impl<'a> ParamLoader<'a> {
    /// A loader casting to `kind` on `device`; `prefix` is the base model attribute.
    pub fn new(
        ckpt: &'a dyn TensorSource,
        model_type: &str,
        prefix: &'a str,
        kind: Kind,
        device: Device,
    ) -> Self {
        Self {
            ckpt,
            model_type: model_type.to_string(),
            prefix,
            kind,
            device,
            params: Vec::new(),
            linears: Vec::new(),
            adapted: HashSet::new(),
            adapter_params: Vec::new(),
        }
    }

    /// The model dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The device weights go to.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The full name of a base-model tensor.
    pub fn base_name(&self, rel: &str) -> String {
        format!("{}.{rel}", self.prefix)
    }

    /// The checkpoint name holding `name`: itself, or without the base prefix for checkpoints
    /// saved from the bare base model (e.g. openai-community/gpt2 stores `h.0.attn.c_attn.weight`).
    fn stored_name(&self, name: &str) -> Option<String> {
        if self.ckpt.contains(name) {
            return Some(name.to_string());
        }
        let bare = name.strip_prefix(self.prefix)?.strip_prefix('.')?;
        self.ckpt.contains(bare).then(|| bare.to_string())
    }

    /// Loads `name` (full Hugging Face name) of stored shape `shape` without recording it.
    fn read(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let stored = self.stored_name(name).ok_or_else(|| {
            Error::input(format!(
                "{}: tensor '{name}' is missing; the weights do not match config.json (model_type '{}'): re-download the checkpoint or fix config.json",
                self.ckpt.origin(name),
                self.model_type
            ))
        })?;
        let have = self.ckpt.shape(&stored).unwrap_or_default();
        if have != shape {
            return Err(Error::input(format!(
                "{}: tensor '{stored}' has shape {have:?} but config.json implies {shape:?}; the weights do not match config.json: re-download the checkpoint or fix config.json",
                self.ckpt.origin(&stored)
            )));
        }
        self.ckpt.load(&stored, self.kind, self.device)
    }

    /// Loads and records parameter `name` (full name) of shape `shape`.
    pub fn param(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.read(name, shape)?;
        self.params.push((name.to_string(), t.shallow_clone()));
        Ok(t)
    }

    /// Loads and records base-model parameter `rel` (relative name).
    pub fn base_param(&mut self, rel: &str, shape: &[i64]) -> Result<Tensor> {
        let name = self.base_name(rel);
        self.param(&name, shape)
    }

    /// Whether the checkpoint stores base-model tensor `rel` under its own name.
    pub fn has_base(&self, rel: &str) -> bool {
        self.stored_name(&self.base_name(rel)).is_some()
    }

    /// Loads base-model tensor `rel` of stored shape `shape` without recording it as a
    /// parameter (a piece of a parameter stored split, e.g. one expert of a fused MoE weight).
    pub fn base_piece(&self, rel: &str, shape: &[i64]) -> Result<Tensor> {
        self.read(&self.base_name(rel), shape)
    }

    /// Records `t` as base-model parameter `rel` (assembled from [`ParamLoader::base_piece`]s).
    pub fn record_base(&mut self, rel: &str, t: &Tensor) {
        let name = self.base_name(rel);
        self.params.push((name, t.shallow_clone()));
    }

    /// An `nn.Linear` of the base model, `module` relative to it: weight `[out, in]`.
    pub fn linear(
        &mut self,
        module: &str,
        in_features: i64,
        out_features: i64,
        bias: bool,
    ) -> Result<Linear> {
        let weight = self.base_param(&format!("{module}.weight"), &[out_features, in_features])?;
        let bias = if bias {
            Some(self.base_param(&format!("{module}.bias"), &[out_features])?)
        } else {
            None
        };
        let has_bias = bias.is_some();
        let adapter = self.module_adapter(module, in_features, out_features, has_bias)?;
        Ok(Linear {
            name: module.to_string(),
            weight,
            bias,
            adapter,
        })
    }

    /// A transformers `Conv1D` of the base model (GPT-2): stored `[in, out]`, kept transposed
    /// as a contiguous `[out, in]` Linear. `named_parameters()` still shows the stored layout.
    pub fn conv1d(&mut self, module: &str, in_features: i64, out_features: i64) -> Result<Linear> {
        let name = self.base_name(&format!("{module}.weight"));
        let stored = self.read(&name, &[in_features, out_features])?;
        let weight = stored.f_transpose(0, 1)?.f_contiguous()?;
        self.params.push((name, weight.tr()));
        let bias = self.base_param(&format!("{module}.bias"), &[out_features])?;
        let adapter = self.module_adapter(module, in_features, out_features, true)?;
        Ok(Linear {
            name: module.to_string(),
            weight,
            bias: Some(bias),
            adapter,
        })
    }

    /// The LM head `lm_head` (outside the base model, so not a collectable module): its own
    /// weight, stored as `lm_head.weight` or under `stored_alias` (GPT-NeoX checkpoints say
    /// `embed_out.weight`, which transformers 5 renames on load), or the input embedding when
    /// `tied` (then not a separate parameter, as in transformers, and a stored copy is ignored).
    pub fn lm_head(
        &mut self,
        stored_alias: Option<&str>,
        hidden: i64,
        vocab: i64,
        tied: Option<&Tensor>,
    ) -> Result<Linear> {
        let name = "lm_head.weight";
        let weight = match (tied, stored_alias) {
            (Some(embedding), _) => embedding.shallow_clone(),
            (None, Some(alias)) if !self.ckpt.contains(name) && self.ckpt.contains(alias) => {
                let t = self.read(alias, &[vocab, hidden])?;
                self.params.push((name.to_string(), t.shallow_clone()));
                t
            }
            (None, _) => self.param(name, &[vocab, hidden])?,
        };
        Ok(Linear {
            name: "lm_head".to_string(),
            weight,
            bias: None,
            adapter: None,
        })
    }

    /// The output projection with a stored bias `lm_head.bias` `[vocab]` (Phi).
    pub fn lm_head_with_bias(
        &mut self,
        hidden: i64,
        vocab: i64,
        tied: Option<&Tensor>,
    ) -> Result<Linear> {
        let mut head = self.lm_head(None, hidden, vocab, tied)?;
        head.bias = Some(self.param("lm_head.bias", &[vocab])?);
        Ok(head)
    }

    /// A LayerNorm of the base model with weight and bias `[dim]`.
    pub fn layer_norm(&mut self, module: &str, dim: i64, eps: f64) -> Result<LayerNorm> {
        let weight = self.base_param(&format!("{module}.weight"), &[dim])?;
        let bias = self.base_param(&format!("{module}.bias"), &[dim])?;
        Ok(LayerNorm {
            weight: Some(weight),
            bias: Some(bias),
            dim,
            eps,
        })
    }

    /// An RMSNorm of the base model with weight `[dim]`.
    pub fn rms_norm(&mut self, module: &str, dim: i64, eps: f64) -> Result<RmsNorm> {
        let weight = self.base_param(&format!("{module}.weight"), &[dim])?;
        Ok(RmsNorm {
            weight,
            eps,
            gain: Default::default(),
        })
    }

    /// Records the collectable modules of the base-model Linear `module` and returns its
    /// adapter: without an adapter the Linear itself is the module; with one, only adapted
    /// layers have modules (their `lora_A` and `lora_B`), as Bergson collects a PEFT model's
    /// adapter modules only.
    fn module_adapter(
        &mut self,
        module: &str,
        in_features: i64,
        out_features: i64,
        has_bias: bool,
    ) -> Result<Option<Box<LoraAdapter>>> {
        let Some(adapter) = self.ckpt.adapter() else {
            self.linears.push(LinearInfo {
                name: module.to_string(),
                in_features,
                out_features,
                has_bias,
            });
            return Ok(None);
        };
        let full = self.base_name(module);
        let Some(lora) =
            adapter.for_module(&full, in_features, out_features, self.kind, self.device)?
        else {
            return Ok(None);
        };
        for half in [&lora.a, &lora.b] {
            self.adapter_params.push((
                crate::models::lora::peft_parameter_name(&half.name),
                half.weight.shallow_clone(),
            ));
            self.linears.push(LinearInfo {
                name: half.name.clone(),
                in_features: half.in_features(),
                out_features: half.out_features(),
                has_bias: false,
            });
        }
        self.adapted.insert(full);
        Ok(Some(Box::new(lora)))
    }

    /// The recorded parameters and Linear modules; an adapter module that no Linear took is an
    /// error (it targets an embedding, the LM head, or another model).
    pub fn finish(self) -> Result<Loaded> {
        if let Some(adapter) = self.ckpt.adapter() {
            if adapter.is_fresh() && self.adapted.is_empty() {
                return Err(Error::input(format!(
                    "--peft_init_kwargs: target_modules match no Linear layer of this {} model; name its modules (e.g. the last part of a name in `bergson build --help`'s --modules, or all-linear)",
                    self.model_type
                )));
            }
            let unused = unused_modules(adapter, &self.adapted);
            if !unused.is_empty() {
                let more = match unused.len() {
                    n if n > 3 => format!(" and {} more", n - 3),
                    _ => String::new(),
                };
                return Err(Error::input(format!(
                    "{}: the adapter has LoRA weights for {}{more}, which this {} model has no Linear layer of: it was made for another model, or adapts something other than a Linear layer; use an adapter of this base model",
                    adapter.origin(),
                    unused[..unused.len().min(3)].join(", "),
                    self.model_type
                )));
            }
        }
        Ok(Loaded {
            params: self.params,
            linears: self.linears,
            adapter_params: self.adapter_params,
        })
    }
}
