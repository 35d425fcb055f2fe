//! Causal language models, one file per architecture, loaded from Hugging Face checkpoints.
//!
//! Every Linear layer of a model runs through a [`LinearHook`], which is how the gradient
//! collector sees each module's input activations and output gradients without hooks on
//! someone else's code: we own the forward.
//!
//! Layout: [`load_model`] reads config.json, picks the architecture from [`ARCHITECTURES`] by
//! `model_type` and builds it from the safetensors weights ([`checkpoint`], [`loader`]). The
//! architectures share their pieces: [`attention`] (the one attention function), [`rotary`],
//! [`norm`], [`activation`]; the Llama family ([`llama`]) is one decoder with options that
//! [`mistral`], [`qwen2`] and [`qwen3`] map their configs onto. Adding an architecture means one
//! file and one line in [`ARCHITECTURES`].

pub mod activation;
pub mod attention;
pub mod attention_kernel;
pub mod checkpoint;
pub mod config;
pub mod gemma;
pub mod gemma2;
pub mod gemma3;
pub mod gpt2;
pub mod gpt_neo;
pub mod gpt_neox;
pub mod granite;
pub mod head;
pub mod hub;
pub mod kwargs;
pub mod linear;
pub mod llama;
pub mod loader;
pub mod lora;
pub mod mistral;
pub mod mixtral;
pub mod moe;
pub mod norm;
pub mod olmo;
pub mod olmo2;
pub mod olmo3;
pub mod olmoe;
pub mod opt;
pub mod phi;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod qwen3_moe;
pub mod rotary;
pub mod smollm3;

pub use attention::AttentionKernel;
pub use hub::{resolve_model_dir, resolve_tokenizer_dir};
pub use linear::{BaseOnly, Linear, LinearHook, NoHook};

use crate::engine::Precision;
use crate::{Error, Result};
use config::ConfigJson;
use loader::Loaded;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// One collectable Linear module, named relative to the base model as Bergson names it
/// (`layers.0.attention.query_key_value`, `h.0.attn.c_attn`, `layers.0.self_attn.q_proj`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearInfo {
    /// Name relative to the base model.
    pub name: String,
    /// Input features I.
    pub in_features: i64,
    /// Output features O.
    pub out_features: i64,
    /// Whether the module has a bias.
    pub has_bias: bool,
}

/// A causal language model we can run forward and differentiate.
pub trait CausalLm: Send + Sync {
    /// The config.json `model_type` (`gpt_neox`, `gpt2`, `llama`, ...).
    fn model_type(&self) -> &str;

    /// The Hugging Face base-model attribute (`gpt_neox`, `transformer`, `model`): parameter
    /// names start with it, module names in the index do not.
    fn base_model_prefix(&self) -> &str;

    /// Every Linear of the base model, in the order of transformers' `named_modules()`
    /// (which is the column order of the index). The LM head is not part of the base model.
    fn linear_modules(&self) -> Vec<LinearInfo>;

    /// Logits `[N, S, V]` in the model dtype for right-padded `input_ids` `[N, S]` (int64), with
    /// no attention mask (causal attention only), every Linear going through `hook`.
    /// Ids must lie in `0..vocab_size` and, for learned positions (GPT-2), `S` must not exceed
    /// `max_position_embeddings`: check untrusted input with [`CausalLm::check_input_ids`].
    fn forward_with(&self, input_ids: &Tensor, hook: &mut dyn LinearHook) -> Tensor;

    /// Final (normed) hidden states `[N, S, D]`, every base-model Linear going through `hook`;
    /// [`head::head_logits`] of them are the logits.
    fn hidden_with(&self, input_ids: &Tensor, hook: &mut dyn LinearHook) -> Tensor;

    /// The LM head, `[V, D]` (outside the base model, so never collected).
    fn lm_head(&self) -> &Linear;

    /// What the model does to its LM head's output (Granite's `logits_scaling`, Gemma-2's
    /// `final_logit_softcapping`).
    fn head_output(&self) -> head::HeadOutput {
        head::HeadOutput::default()
    }

    /// Logits with the LM head's output multiplied by `logit_scale` before the model's final
    /// soft-capping, as Bergson's `--logit_scale` hook on the head gives them.
    fn forward_scaled_with(
        &self,
        input_ids: &Tensor,
        hook: &mut dyn LinearHook,
        logit_scale: f64,
    ) -> Tensor {
        let hidden = self.hidden_with(input_ids, hook);
        head::head_logits(self.lm_head(), self.head_output(), &hidden, logit_scale)
    }

    /// Logits with no hook.
    fn forward(&self, input_ids: &Tensor) -> Tensor {
        self.forward_with(input_ids, &mut NoHook)
    }

    /// Parameters with their full Hugging Face names, in `model.named_parameters()` order
    /// (tied weights once, as transformers lists them). Used to map optimizer states.
    /// Shapes are the stored ones (a GPT-2 Conv1D weight is `[in, out]`, a view of the layer's
    /// `[out, in]` weight).
    fn named_parameters(&self) -> Vec<(String, Tensor)>;

    /// A PEFT adapter's LoRA weights with peft's names
    /// (`base_model.model.<module>.lora_A.default.weight`), in `named_parameters()` order;
    /// empty without an adapter. [`Self::named_parameters`] lists the base model's.
    fn adapter_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// `max_position_embeddings` from config.json, when the config has one.
    fn max_position_embeddings(&self) -> Option<i64>;

    /// The model's dtype.
    fn kind(&self) -> Kind;

    /// The device the weights live on.
    fn device(&self) -> Device;

    /// Use the math attention kernel (which has a double backward) instead of the fused one.
    fn set_math_attention(&mut self, math: bool);

    /// `--moe_experts`: exposes the fused experts of the MoE layers whose full module names
    /// match one of the comma-separated globs `patterns` (e.g. `model.layers.*.mlp.experts`)
    /// as one Linear module per expert projection, as Bergson 2.5.1's `expand_moe`. Refuses
    /// patterns that match no fused experts module (any pattern, on a dense model).
    fn expand_moe(&mut self, patterns: &str) -> Result<()> {
        Err(moe::no_match(patterns))
    }

    /// Rows of the input embedding (`vocab_size`), when known.
    fn vocab_size(&self) -> Option<i64> {
        None
    }

    /// Checks that `input_ids` can be fed to [`CausalLm::forward_with`]: 2-D int64, ids in
    /// `0..vocab_size`. One device sync; call it on untrusted batches.
    fn check_input_ids(&self, input_ids: &Tensor) -> Result<()> {
        check_ids(input_ids, self.vocab_size(), None)
    }
}

/// The ids check shared by [`CausalLm::check_input_ids`] implementations.
fn check_ids(input_ids: &Tensor, vocab: Option<i64>, max_len: Option<i64>) -> Result<()> {
    let size = input_ids.size();
    if size.len() != 2 || input_ids.kind() != Kind::Int64 {
        return Err(Error::input(format!(
            "input ids must be a 2-D int64 tensor [batch, seq], got {:?} of {size:?}",
            input_ids.kind()
        )));
    }
    if let Some(max_len) = max_len.filter(|&m| size[1] > m) {
        return Err(Error::input(format!(
            "sequence length {} exceeds the model's max_position_embeddings {max_len}; lower --token_batch_size / truncate documents",
            size[1]
        )));
    }
    if let (Some(vocab), true) = (vocab, input_ids.numel() > 0) {
        let lo = input_ids.f_min()?.f_int64_value(&[])?;
        let hi = input_ids.f_max()?.f_int64_value(&[])?;
        if lo < 0 || hi >= vocab {
            return Err(Error::input(format!(
                "token id {} is outside the model's vocabulary of {vocab}; the tokenizer does not belong to this model",
                if lo < 0 { lo } else { hi }
            )));
        }
    }
    Ok(())
}

/// The forward pass of one architecture, wrapped by [`Model`] into a [`CausalLm`].
///
/// Implementations hold their weights as plain tensors and mutate nothing after loading except
/// through a `Mutex` (the rotary table cache): [`Model`] relies on this to be `Sync`.
pub trait Architecture: Send {
    /// The LM head (outside the base model: not collected, never through the hook).
    fn lm_head(&self) -> &Linear;

    /// See [`CausalLm::head_output`].
    fn head_output(&self) -> head::HeadOutput {
        head::HeadOutput::default()
    }

    /// Final (normed) hidden states `[N, S, D]` for `input_ids`, every base-model Linear
    /// through `hook`; the logits are `lm_head` of these.
    fn hidden(
        &self,
        input_ids: &Tensor,
        hook: &mut dyn LinearHook,
        kernel: AttentionKernel,
    ) -> Tensor;

    /// See [`CausalLm::expand_moe`]: expands the matching blocks and returns the model's
    /// Linear modules `linears` with the new expert modules in `named_modules()` order.
    fn expand_moe(&mut self, patterns: &str, linears: &[LinearInfo]) -> Result<Vec<LinearInfo>> {
        let _ = linears;
        Err(moe::no_match(patterns))
    }
}

/// What every model shares: names, parameters and settings around an [`Architecture`].
pub struct Model<A> {
    arch: A,
    model_type: String,
    base_model_prefix: &'static str,
    params: Vec<(String, Tensor)>,
    adapter_params: Vec<(String, Tensor)>,
    linears: Vec<LinearInfo>,
    vocab_size: i64,
    max_position_embeddings: Option<i64>,
    /// Hard limit on the sequence length (learned position embeddings).
    max_sequence_length: Option<i64>,
    kind: Kind,
    device: Device,
    kernel: AttentionKernel,
}

// SAFETY: after loading, a model's tensors are only read (libtorch allows concurrent reads of a
// tensor from several threads); the only interior mutability is the rotary cache, behind a
// Mutex (see `Architecture`). Mutation (`set_math_attention`) needs `&mut self`.
unsafe impl<A: Architecture> Sync for Model<A> {}

/// Settings of a [`Model`] besides its architecture and parameters.
pub struct ModelInfo {
    /// config.json `model_type`.
    pub model_type: String,
    /// Base model attribute.
    pub base_model_prefix: &'static str,
    /// Rows of the input embedding.
    pub vocab_size: i64,
    /// `max_position_embeddings`, when the config has it.
    pub max_position_embeddings: Option<i64>,
    /// Hard limit on the sequence length (GPT-2's learned positions).
    pub max_sequence_length: Option<i64>,
}

impl<A: Architecture> Model<A> {
    /// Wraps a built architecture.
    pub fn new(arch: A, info: ModelInfo, loaded: Loaded, kind: Kind, device: Device) -> Self {
        Self {
            arch,
            model_type: info.model_type,
            base_model_prefix: info.base_model_prefix,
            params: loaded.params,
            adapter_params: loaded.adapter_params,
            linears: loaded.linears,
            vocab_size: info.vocab_size,
            max_position_embeddings: info.max_position_embeddings,
            max_sequence_length: info.max_sequence_length,
            kind,
            device,
            kernel: AttentionKernel::Fused,
        }
    }
}

impl<A: Architecture + 'static> CausalLm for Model<A> {
    fn model_type(&self) -> &str {
        &self.model_type
    }

    fn base_model_prefix(&self) -> &str {
        self.base_model_prefix
    }

    fn linear_modules(&self) -> Vec<LinearInfo> {
        self.linears.clone()
    }

    fn forward_with(&self, input_ids: &Tensor, hook: &mut dyn LinearHook) -> Tensor {
        self.forward_scaled_with(input_ids, hook, 1.0)
    }

    fn hidden_with(&self, input_ids: &Tensor, hook: &mut dyn LinearHook) -> Tensor {
        self.arch.hidden(input_ids, hook, self.kernel)
    }

    fn lm_head(&self) -> &Linear {
        self.arch.lm_head()
    }

    fn head_output(&self) -> head::HeadOutput {
        self.arch.head_output()
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    fn adapter_parameters(&self) -> Vec<(String, Tensor)> {
        self.adapter_params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    fn max_position_embeddings(&self) -> Option<i64> {
        self.max_position_embeddings
    }

    fn kind(&self) -> Kind {
        self.kind
    }

    fn device(&self) -> Device {
        self.device
    }

    fn set_math_attention(&mut self, math: bool) {
        self.kernel = if math {
            AttentionKernel::Math
        } else {
            AttentionKernel::Fused
        };
    }

    fn vocab_size(&self) -> Option<i64> {
        Some(self.vocab_size)
    }

    fn expand_moe(&mut self, patterns: &str) -> Result<()> {
        self.linears = self.arch.expand_moe(patterns, &self.linears)?;
        Ok(())
    }

    fn check_input_ids(&self, input_ids: &Tensor) -> Result<()> {
        check_ids(input_ids, Some(self.vocab_size), self.max_sequence_length)
    }
}

/// Builds an architecture from its parsed config.json and a source of weights (a checkpoint,
/// or explicit parameters).
pub type LoadFn =
    fn(&ConfigJson, &dyn loader::TensorSource, Kind, Device) -> Result<Box<dyn CausalLm>>;

/// Maps a Llama-family config.json onto the shared decoder's settings.
pub type DecoderConfigFn = fn(&ConfigJson) -> Result<llama::DecoderConfig>;

/// How a `model_type` in [`ARCHITECTURES`] is built.
#[derive(Clone, Copy)]
pub enum ModelBuilder {
    /// A member of the Llama family: one [`llama::Decoder`] with the settings its config gives.
    Decoder(DecoderConfigFn),
    /// A model with a forward of its own.
    Own(LoadFn),
}

impl ModelBuilder {
    /// Builds the model that `cfg` describes on `weights`.
    pub fn load(
        self,
        cfg: &ConfigJson,
        weights: &dyn loader::TensorSource,
        kind: Kind,
        device: Device,
    ) -> Result<Box<dyn CausalLm>> {
        match self {
            Self::Decoder(config) => llama::load_decoder(config(cfg)?, weights, kind, device),
            Self::Own(load) => load(cfg, weights, kind, device),
        }
    }
}

/// The architectures we implement, by config.json `model_type`.
pub const ARCHITECTURES: &[(&str, ModelBuilder)] = &[
    ("gpt_neox", ModelBuilder::Own(gpt_neox::load)),
    ("gpt2", ModelBuilder::Own(gpt2::load)),
    ("gpt_neo", ModelBuilder::Own(gpt_neo::load)),
    ("llama", ModelBuilder::Decoder(llama::DecoderConfig::llama)),
    ("mistral", ModelBuilder::Decoder(mistral::config)),
    ("mixtral", ModelBuilder::Decoder(mixtral::config)),
    ("qwen2", ModelBuilder::Decoder(qwen2::config)),
    ("qwen3", ModelBuilder::Decoder(qwen3::config)),
    ("qwen3_moe", ModelBuilder::Decoder(qwen3_moe::config)),
    ("olmoe", ModelBuilder::Decoder(olmoe::config)),
    ("olmo", ModelBuilder::Decoder(olmo::config)),
    ("olmo2", ModelBuilder::Decoder(olmo2::config)),
    ("olmo3", ModelBuilder::Decoder(olmo3::config)),
    ("gemma", ModelBuilder::Decoder(gemma::config)),
    ("gemma2", ModelBuilder::Decoder(gemma2::config)),
    ("gemma3_text", ModelBuilder::Decoder(gemma3::config)),
    ("phi", ModelBuilder::Own(phi::load)),
    ("phi3", ModelBuilder::Decoder(phi3::config)),
    ("smollm3", ModelBuilder::Decoder(smollm3::config)),
    ("granite", ModelBuilder::Decoder(granite::config)),
    ("opt", ModelBuilder::Own(opt::load)),
];

/// The `model_type`s [`load_model`] accepts.
pub fn supported_model_types() -> Vec<&'static str> {
    ARCHITECTURES.iter().map(|(name, _)| *name).collect()
}

/// A model without its weights: the architecture and settings of a checkpoint, which builds
/// the model on the checkpoint's weights ([`ModelSpec::load`]) or on parameters the caller
/// holds ([`ModelSpec::build`], how the trainer runs a model on explicit parameters).
#[derive(Clone)]
pub struct ModelSpec {
    cfg: ConfigJson,
    builder: ModelBuilder,
    kind: Kind,
    device: Device,
    /// A PEFT adapter over the base model, and the base model's directory (a fresh adapter's
    /// base is the directory the model is loaded from).
    adapter: Option<(Arc<lora::Adapter>, Option<PathBuf>)>,
}

impl ModelSpec {
    /// Reads config.json in `dir` and picks the architecture by its `model_type`. A PEFT
    /// adapter directory (`adapter_config.json`) gives the base model it names, adapted.
    pub fn from_dir(dir: &Path, precision: Precision, device: Device) -> Result<Self> {
        if lora::is_adapter_dir(dir) {
            let adapter = lora::Adapter::open(dir)?;
            let base = base_model_dir_of(&adapter)?;
            let mut spec = Self::from_dir(&base, precision, device)?;
            spec.adapter = Some((Arc::new(adapter), Some(base)));
            return Ok(spec);
        }
        if !dir.is_dir() {
            return Err(Error::input(format!(
                "{}: not a directory; point --model at a checkpoint directory (config.json + safetensors) or a Hub id",
                dir.display()
            )));
        }
        let cfg = ConfigJson::from_file(&dir.join("config.json"))?;
        let model_type = cfg.model_type()?;
        let builder = ARCHITECTURES.iter().find(|(name, _)| *name == model_type).map(|(_, b)| *b).ok_or_else(|| {
            cfg.error(format!(
                "model_type '{model_type}' is not supported (supported: {}); use a checkpoint of one of these architectures",
                supported_model_types().join(", ")
            ))
        })?;
        Ok(Self {
            cfg,
            builder,
            kind: precision.kind(),
            device,
            adapter: None,
        })
    }

    /// This model with `--model_kwargs` config overrides applied, as `from_pretrained`
    /// applies keywords that name config attributes (the attention kernel is the caller's:
    /// [`CausalLm::set_math_attention`]).
    pub fn with_model_kwargs(mut self, kwargs: &kwargs::ModelKwargs) -> Self {
        for (key, value) in &kwargs.config {
            // An alias (`num_hidden_layers` for GPT-2's `n_layer`) sets the key config.json has.
            let key = kwargs::ALIASES
                .iter()
                .find(|(alias, stored)| alias == key && self.cfg.has(stored))
                .map_or(key.as_str(), |(_, stored)| stored);
            self.cfg.set(key, value.to_json());
        }
        self
    }

    /// A load error that blames config.json, when `--model_kwargs` changed config.json: says
    /// which keys it set (a shape that no longer matches the weights is their doing).
    fn name_overrides(&self, e: Error) -> Error {
        let keys: Vec<&str> = self.cfg.overridden().collect();
        match e {
            Error::Input(msg) if !keys.is_empty() && msg.contains("config.json") => {
                Error::input(format!(
                    "{msg} (--model_kwargs set {} over config.json)",
                    keys.join(", ")
                ))
            }
            other => other,
        }
    }

    /// Refuses `--model_kwargs` keys config.json lacks and the architecture never read (after
    /// a load): they would change nothing here while they change Python's model.
    fn check_added_keys(&self) -> Result<()> {
        match self.cfg.unread_added_key() {
            None => Ok(()),
            Some(key) => Err(Error::input(format!(
                "--model_kwargs {key}=...: '{key}' is not a config.json key of this checkpoint nor a setting bergson-rs reads for model_type '{}'; drop it",
                self.cfg.model_type().unwrap_or_default()
            ))),
        }
    }

    /// The model on the safetensors weights in `dir` (for an adapter, the base model's
    /// weights with the adapter's).
    pub fn load(&self, dir: &Path) -> Result<Box<dyn CausalLm>> {
        let _guard = tch::no_grad_guard();
        let model = self
            .load_unchecked(dir)
            .map_err(|e| self.name_overrides(e))?;
        self.check_added_keys()?;
        Ok(model)
    }

    fn load_unchecked(&self, dir: &Path) -> Result<Box<dyn CausalLm>> {
        match &self.adapter {
            Some((adapter, base)) => {
                let ckpt = checkpoint::Checkpoint::open(base.as_deref().unwrap_or(dir))?;
                let source = loader::Adapted {
                    base: &ckpt,
                    adapter,
                };
                self.builder
                    .load(&self.cfg, &source, self.kind, self.device)
            }
            None => {
                let ckpt = checkpoint::Checkpoint::open(dir)?;
                self.builder.load(&self.cfg, &ckpt, self.kind, self.device)
            }
        }
    }

    /// This model with a fresh LoRA adapter from `--peft_init_kwargs` (see
    /// [`lora::Adapter::fresh`]); refused over an adapter, as Bergson refuses it. With
    /// `python_debug` (`--debug`), `lora_A` is drawn exactly as Python Bergson draws it then
    /// ([`lora::Adapter::replaying_python_debug`]).
    pub fn with_fresh_adapter(mut self, kwargs: &str, python_debug: bool) -> Result<Self> {
        if let Some(adapter) = self.adapter() {
            return Err(Error::input(format!(
                "--peft_init_kwargs is set but the model is already a PEFT adapter ({}); drop one of them",
                adapter.origin()
            )));
        }
        let mut adapter = lora::Adapter::fresh(kwargs, &self.cfg.model_type()?, 0)?;
        if python_debug {
            adapter = adapter.replaying_python_debug();
        }
        self.adapter = Some((Arc::new(adapter), None));
        Ok(self)
    }

    /// The PEFT adapter this model runs with, if any.
    pub fn adapter(&self) -> Option<&lora::Adapter> {
        self.adapter.as_ref().map(|(a, _)| a.as_ref())
    }

    /// The model on `params` (full names, stored layout, as [`CausalLm::named_parameters`]
    /// lists them), using those tensors themselves: gradients of its outputs reach `params`.
    /// With an adapter, LoRA weights among `params` (as [`CausalLm::adapter_parameters`]
    /// names them) replace the adapter's own. Cheap (no copy), so a trainer rebuilds the model
    /// on each step's parameters.
    pub fn build<'t>(
        &self,
        params: impl IntoIterator<Item = (&'t String, &'t Tensor)>,
    ) -> Result<Box<dyn CausalLm>> {
        let (lora, base): (Vec<_>, Vec<_>) = params
            .into_iter()
            .partition(|(n, _)| lora::is_peft_parameter(n));
        let source = loader::ExplicitParams::new(base);
        match &self.adapter {
            Some((adapter, _)) if !lora.is_empty() => {
                let tensors = lora
                    .into_iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect();
                let adapter = adapter.with_weights(tensors);
                let source = loader::Adapted {
                    base: &source,
                    adapter: &adapter,
                };
                self.builder
                    .load(&self.cfg, &source, self.kind, self.device)
            }
            Some((adapter, _)) => {
                let source = loader::Adapted {
                    base: &source,
                    adapter,
                };
                self.builder
                    .load(&self.cfg, &source, self.kind, self.device)
            }
            None => self
                .builder
                .load(&self.cfg, &source, self.kind, self.device),
        }
    }

    /// The parsed config.json.
    pub fn config(&self) -> &ConfigJson {
        &self.cfg
    }

    /// The model dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }
}

/// Loads the checkpoint in `dir` (config.json + `model.safetensors` or sharded safetensors) as
/// `precision` on `device`, choosing the architecture by config.json's `model_type`.
pub fn load_model(dir: &Path, precision: Precision, device: Device) -> Result<Box<dyn CausalLm>> {
    ModelSpec::from_dir(dir, precision, device)?.load(dir)
}

/// The directory of the base model an adapter names (`base_model_name_or_path`): a directory
/// relative to the working directory or a Hub id, as peft resolves it, else a directory
/// relative to the adapter's own (an adapter shipped next to its base model).
fn base_model_dir_of(adapter: &lora::Adapter) -> Result<PathBuf> {
    let named = Path::new(&adapter.base_model);
    let beside = adapter.dir().join(named);
    let local = if named.is_relative() && !named.is_dir() && beside.is_dir() {
        beside
    } else {
        named.to_path_buf()
    };
    if lora::is_adapter_dir(&local) {
        return Err(Error::input(format!(
            "{}: base_model_name_or_path '{}' is itself an adapter; point it at the base model",
            adapter.dir().display(),
            adapter.base_model
        )));
    }
    hub::resolve_model_dir(&local.to_string_lossy(), adapter.base_revision.as_deref())
}

/// The directory holding the model weights and config.json of `dir`: `dir` itself, or the
/// base model of the adapter in `dir`.
pub fn weights_dir(dir: &Path) -> Result<PathBuf> {
    if lora::is_adapter_dir(dir) {
        base_model_dir_of(&lora::Adapter::open(dir)?)
    } else {
        Ok(dir.to_path_buf())
    }
}

/// The precision a checkpoint was saved in, for `--precision auto` (transformers'
/// `dtype="auto"`): config.json's `dtype` (transformers 5) or `torch_dtype` (older), else the
/// dtype of the first floating-point tensor in the weights, else float32. For an adapter, the
/// base model's.
pub fn auto_precision(dir: &Path) -> Result<Precision> {
    let dir = &weights_dir(dir)?;
    let cfg = ConfigJson::from_file(&dir.join("config.json"))?;
    if let Some(name) = cfg.str(&["dtype", "torch_dtype"])? {
        return match name.trim_start_matches("torch.") {
            "float32" | "float" => Ok(Precision::Fp32),
            "bfloat16" => Ok(Precision::Bf16),
            "float16" | "half" => Ok(Precision::Fp16),
            "float64" | "double" => Ok(Precision::Fp64),
            other => Err(cfg.error(format!(
                "dtype '{other}' has no --precision equivalent (float32, bfloat16, float16, float64); pass --precision explicitly"
            ))),
        };
    }
    let ckpt = checkpoint::Checkpoint::open(dir)?;
    Ok(match ckpt.first_float_kind() {
        Some(Kind::BFloat16) => Precision::Bf16,
        Some(Kind::Half) => Precision::Fp16,
        Some(Kind::Double) => Precision::Fp64,
        _ => Precision::Fp32,
    })
}

/// `tie_word_embeddings` with the architecture's default.
pub(crate) fn tie_word_embeddings(cfg: &ConfigJson, default: bool) -> Result<bool> {
    Ok(cfg.bool(&["tie_word_embeddings"])?.unwrap_or(default))
}

/// `nn.Embedding(vocab_size, d, padding_idx=pad_token_id)` on `input_ids`: the padding row
/// only gets no gradient, and a pad id outside the vocabulary means none (as transformers
/// builds it then).
pub(crate) fn embed_with_padding(
    table: &Tensor,
    input_ids: &Tensor,
    pad_token_id: Option<i64>,
    vocab_size: i64,
) -> Tensor {
    let padding_idx = pad_token_id
        .filter(|&p| p >= 0 && p < vocab_size)
        .unwrap_or(-1);
    Tensor::embedding(table, input_ids, padding_idx, false, false)
}

/// The activation named by the first present key of `keys`, else `default`.
pub(crate) fn activation(
    cfg: &ConfigJson,
    keys: &[&str],
    default: &str,
) -> Result<activation::Activation> {
    let name = cfg.str(keys)?.unwrap_or_else(|| default.to_string());
    activation::Activation::from_name(&name).ok_or_else(|| {
        cfg.error(format!(
            "{} '{name}' is not supported (supported: {}); fix config.json",
            keys[0],
            activation::ACTIVATION_NAMES
        ))
    })
}
