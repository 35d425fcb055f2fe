//! What every command that runs a model over a dataset sets up from an [`IndexConfig`]
//! (Bergson's `setup_model_and_peft` and `create_processor`): the tokenizer, the model in its
//! precision on its device, and the gradient processor (projection settings and optimizer
//! normalizers). The data side is [`crate::build::prepare_data`].

use std::path::{Path, PathBuf};

use tch::Device;

use crate::collect::optimizer_state::{load_normalizers, resolve_optimizer_path};
use crate::collect::{GradientProcessor, ProjectionSettings};
use crate::config::{IndexConfig, PrecisionChoice};
use crate::data::tokenize::Tokenizer;
use crate::engine::Precision;
use crate::models::config::ConfigJson;
use crate::models::hub::{resolve_model_dir, resolve_tokenizer_dir};
use crate::models::kwargs::ModelKwargs;
use crate::models::{auto_precision, AttentionKernel, CausalLm, ModelSpec};
use crate::{Error, Result};

/// Refuses index settings bergson-rs does not implement, and impossible values, up front.
pub fn check_index_config(c: &IndexConfig) -> Result<()> {
    let unsupported = |flag: &str, why: &str| {
        Err(Error::input(format!(
            "{flag} is not supported by bergson-rs yet; {why}"
        )))
    };
    if c.token_batch_size == 0 {
        return Err(Error::input(
            "--token_batch_size must be positive (Bergson's default is 2048)",
        ));
    }
    if c.max_batch_size == Some(0) {
        return Err(Error::input(
            "--max_batch_size must be positive, or left out for no cap",
        ));
    }
    if c.fsdp {
        return unsupported("--fsdp", "run without it");
    }
    ModelKwargs::parse(&c.model_kwargs)?;
    if !c.moe_experts.is_empty() && c.attribute_tokens {
        return Err(Error::input(
            "--attribute_tokens is incompatible with --moe_experts (as in Bergson 2.5.1): drop one of them",
        ));
    }
    if !c.logit_scale.is_finite() {
        return Err(Error::input(format!(
            "--logit_scale {} must be a finite number (1.0 leaves the logits as they are)",
            c.logit_scale
        )));
    }
    if c.distributed.nnode * c.distributed.nproc_per_node > 1 {
        return unsupported(
            "multi-process runs (--nnode/--nproc_per_node)",
            "run one process",
        );
    }
    if !(0.0..=1.0).contains(&c.label_smoothing) {
        return Err(Error::input(format!(
            "--label_smoothing {} must be between 0 and 1",
            c.label_smoothing
        )));
    }
    Ok(())
}

/// The model's tokenizer (or `--tokenizer`), the model directory and the model's maximum
/// positions (config.json).
pub fn load_tokenizer(icfg: &IndexConfig) -> Result<(Tokenizer, PathBuf, Option<i64>)> {
    let model_dir = resolve_model_dir(&icfg.model, icfg.revision.as_deref())?;
    let weights_dir = crate::models::weights_dir(&model_dir)?;
    check_adapter_use(icfg, &model_dir)?;
    // Bergson loads the tokenizer without `--revision`: a hub model's tokenizer comes from its
    // default branch.
    let tokenizer_dir = if !icfg.tokenizer.is_empty() {
        resolve_tokenizer_dir(&icfg.tokenizer)?
    } else if icfg.revision.is_some() && !Path::new(&icfg.model).is_dir() {
        resolve_tokenizer_dir(&icfg.model)?
    } else if !model_dir.join("tokenizer.json").is_file() && weights_dir != model_dir {
        // An adapter saved without its tokenizer: the base model's (Python Bergson fails here).
        weights_dir.clone()
    } else {
        model_dir.clone()
    };
    let tokenizer = Tokenizer::from_dir(&tokenizer_dir)?;
    let model_config = ConfigJson::from_file(&weights_dir.join("config.json"))?;
    let max_positions = model_config.int(&["max_position_embeddings", "n_positions"])?;
    Ok((tokenizer, model_dir, max_positions))
}

/// `--loss_fn kl` needs a PEFT adapter (it compares the adapted model with its base).
fn check_adapter_use(icfg: &IndexConfig, model_dir: &Path) -> Result<()> {
    let adapter = crate::models::lora::is_adapter_dir(model_dir);
    if icfg.loss_fn == crate::config::LossFn::Kl && !adapter {
        return Err(Error::input(format!(
            "--loss_fn kl compares a PEFT adapter with its base model, but --model {} is not an adapter directory (adapter_config.json); pass an adapter or use --loss_fn ce",
            icfg.model
        )));
    }
    Ok(())
}

/// The model of `model_dir` in the config's precision on `device`.
pub fn load_model(
    icfg: &IndexConfig,
    model_dir: &Path,
    device: Device,
) -> Result<Box<dyn CausalLm>> {
    crate::interrupt::check()?;
    let precision = resolve_precision(icfg.precision, model_dir)?;
    let kwargs = ModelKwargs::parse(&icfg.model_kwargs)?;
    let mut spec = ModelSpec::from_dir(model_dir, precision, device)?.with_model_kwargs(&kwargs);
    if !icfg.peft_init_kwargs.is_empty() {
        spec = spec.with_fresh_adapter(&icfg.peft_init_kwargs, icfg.debug)?;
    }
    let mut model = spec.load(model_dir)?;
    // `--force_math_sdp` forces torch's math SDPA backend; `attn_implementation=eager` is the
    // same computation.
    if icfg.force_math_sdp || kwargs.attention == Some(AttentionKernel::Math) {
        model.set_math_attention(true);
    }
    if !icfg.moe_experts.is_empty() {
        model.expand_moe(&icfg.moe_experts)?;
    }
    crate::interrupt::check()?;
    Ok(model)
}

/// The gradient processor of `icfg` for `model`: projection settings, and normalizers from
/// `--optimizer_state`.
pub fn create_processor(icfg: &IndexConfig, model: &dyn CausalLm) -> Result<GradientProcessor> {
    let mut processor = GradientProcessor::new(ProjectionSettings::from_index_config(icfg));
    if !icfg.optimizer_state.is_empty() {
        let path = resolve_optimizer_path(&icfg.optimizer_state, hub_file)?;
        processor.normalizers = load_normalizers(model, &path, icfg.include_bias)?;
    }
    Ok(processor)
}

/// The precision `choice` names, reading the checkpoint for `auto`.
pub fn resolve_precision(choice: PrecisionChoice, model_dir: &Path) -> Result<Precision> {
    Ok(match choice {
        PrecisionChoice::Auto => auto_precision(model_dir)?,
        PrecisionChoice::Bf16 => Precision::Bf16,
        PrecisionChoice::Fp16 => Precision::Fp16,
        PrecisionChoice::Fp32 => Precision::Fp32,
        PrecisionChoice::Fp64 => Precision::Fp64,
        PrecisionChoice::Int4 | PrecisionChoice::Int8 => {
            return Err(Error::input(format!(
                "--precision {choice} (bitsandbytes quantisation) is not supported by bergson-rs; use bf16, fp16, fp32, fp64 or auto"
            )))
        }
    })
}

/// `hf://` optimizer states: one file of a hub repo.
fn hub_file(repo: &str, revision: Option<&str>, file: &str) -> Result<PathBuf> {
    crate::models::hub::resolve_file(repo, revision, file)
}
