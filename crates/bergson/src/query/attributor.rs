//! The [`Attributor`] (Bergson's `bergson.Attributor`): opens a gradient index, computes query
//! gradients in the index's space (same projections and normalizers), and finds the training
//! rows most (or least) similar to them. Search is exact and streamed from the memory-mapped
//! index ([`super::search`]); the index is never loaded whole.
//!
//! Unit norm follows Bergson: index rows are divided by their norm over all modules (a zero
//! row scores 0), queries by their norm plus float32 epsilon.
//!
//! With [`AttributorOptions::hessian_path`], searches are preconditioned as in Bergson: without
//! unit norm the queries get `H^-1` (one-sided; index rows untouched), with it both sides get
//! `H^-1/2` before their norms (two-sided). The index is still streamed: `H^-1/2` is symmetric,
//! so the preconditioned rows' dot products are the stored rows' with the queries multiplied
//! once more, and the preconditioned rows' norms are computed in one pass and kept.
//!
//! With [`AttributorOptions::faiss`], searches go to an approximate FAISS index built inside
//! the gradient index on first use instead ([`super::ann`]).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use super::ann::AnnIndex;
use super::search::{scan, Hits, RowNorms};
use crate::collect::optimizer_state::read_normalizers;
use crate::collect::pipeline::select_targets;
use crate::collect::{
    collect_gradients_in_memory, CaptureHook, CollectConfig, Documents, GradientCollector,
    GradientProcessor, LossSpec,
};
use crate::config::run_file::load_subconfig;
use crate::config::{FaissConfig, IndexConfig, InversionConfig, LossFn, LossReduction};
use crate::data::tokenize::TokenizedRow;
use crate::hessians::preconditioner::{self, Preconditioner};
use crate::index::{row_norms, GradientIndex};
use crate::models::CausalLm;
use crate::{Error, Result};

/// `torch.finfo(torch.float32).eps`, added to query norms.
const F32_EPS: f64 = 1.1920928955078125e-07;

/// How an [`Attributor`] searches.
#[derive(Debug, Clone)]
pub struct AttributorOptions {
    /// Where query gradients are computed.
    pub device: Device,
    /// Cosine similarity: unit-normalise queries and index rows (Bergson's `unit_norm`,
    /// default false in the library, true in `bergson query`).
    pub unit_norm: bool,
    /// Hessian to precondition with (Bergson's `hessian_path`): a dense (autocorrelation)
    /// processor or a factored (K-FAC/EK-FAC) directory. Without unit norm the queries get
    /// `H^-1` (one-sided); with it both queries and index rows get `H^-1/2` (two-sided).
    pub hessian_path: Option<String>,
    /// How the Hessian is inverted.
    pub inversion_cfg: InversionConfig,
    /// Use the EK-FAC corrected eigenvalues of a factored Hessian.
    pub ev_correction: bool,
    /// Search an approximate FAISS index with these settings (Bergson's `faiss_cfg`), built
    /// on first use; needs the `faiss` cargo feature. `None`: exact search.
    pub faiss: Option<FaissConfig>,
}

impl Default for AttributorOptions {
    fn default() -> Self {
        AttributorOptions {
            device: Device::Cpu,
            unit_norm: false,
            hessian_path: None,
            inversion_cfg: InversionConfig::default(),
            ev_correction: false,
            faiss: None,
        }
    }
}

/// A gradient index opened for attribution.
pub struct Attributor {
    index: GradientIndex,
    processor: GradientProcessor,
    index_cfg: Option<IndexConfig>,
    options: AttributorOptions,
    norms: OnceLock<Vec<f32>>,
    warned_k: AtomicBool,
    ann: Option<AnnIndex>,
    preconditioner: Option<Preconditioner>,
    /// Norms of the `H^-1/2`-preconditioned index rows (two-sided), computed on first search.
    preconditioned_norms: OnceLock<Vec<f32>>,
}

impl Attributor {
    /// Opens the index at `path` (ours or one Python Bergson wrote).
    pub fn open(path: impl AsRef<Path>, options: AttributorOptions) -> Result<Self> {
        let dir = path.as_ref();
        if !dir.join("info.json").is_file() {
            let shown = dir.display();
            let part = PathBuf::from(format!("{}.part", dir.display()));
            return Err(Error::input(if part.exists() {
                format!(
                    "index {shown} is unfinished ({} exists); rerun its build to finish it",
                    part.display()
                )
            } else if dir.exists() {
                format!("{shown} is not a gradient index (no info.json); pass the run path of a finished `bergson build`")
            } else {
                format!("index {shown} does not exist; build one with `bergson build {shown} ...`")
            }));
        }
        let index = GradientIndex::open(dir)?;
        let settings = GradientProcessor::read_settings(dir).unwrap_or_default();
        if settings.projection_dim.is_some()
            && settings.projection_version != crate::collect::processor::PROJECTION_VERSION
        {
            return Err(Error::input(format!(
                "{} was projected with version {} random projection matrices, but bergson-rs \
                 generates version {}; rebuild the index",
                dir.display(),
                settings.projection_version,
                crate::collect::processor::PROJECTION_VERSION
            )));
        }
        let preconditioner = match &options.hessian_path {
            None => None,
            Some(h) => {
                let h = Path::new(h);
                options.inversion_cfg.check()?;
                preconditioner::check_factored_unprojected(
                    h,
                    settings.projection_dim.unwrap_or(0),
                    options.unit_norm,
                )?;
                preconditioner::check_projection(h, &settings)?;
                let p = Preconditioner::load(
                    h,
                    &options.inversion_cfg,
                    preconditioner::power_for(options.unit_norm),
                    options.ev_correction,
                    Device::Cpu,
                )?;
                p.check_fits(
                    &index.info.grad_sizes,
                    h,
                    preconditioner::fitted_model(h).as_deref(),
                )?;
                Some(p)
            }
        };
        let mut processor = GradientProcessor::new(settings);
        let normalizers = dir.join("normalizers.pth");
        if normalizers.is_file() {
            processor.normalizers = read_normalizers(&normalizers)?;
        }
        let index_cfg = load_subconfig::<IndexConfig>(dir, "index_cfg")
            .ok()
            .flatten();
        let ann = options
            .faiss
            .as_ref()
            .map(|cfg| {
                AnnIndex::open_or_build(&index, cfg, options.unit_norm, preconditioner.as_ref())
            })
            .transpose()?;
        Ok(Attributor {
            index,
            processor,
            index_cfg,
            options,
            norms: OnceLock::new(),
            warned_k: AtomicBool::new(false),
            ann,
            preconditioner,
            preconditioned_norms: OnceLock::new(),
        })
    }

    /// The index.
    pub fn index(&self) -> &GradientIndex {
        &self.index
    }

    /// The FAISS index searched instead of the exact search, when the options asked for one.
    pub fn ann_index(&self) -> Option<&AnnIndex> {
        self.ann.as_ref()
    }

    /// The index's build config (from its `config.yaml`), if it has one.
    pub fn index_config(&self) -> Option<&IndexConfig> {
        self.index_cfg.as_ref()
    }

    /// The index's column blocks (modules), in order.
    pub fn modules(&self) -> Vec<String> {
        self.index
            .info
            .grad_sizes
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Rows of the index.
    pub fn num_rows(&self) -> usize {
        self.index.num_rows()
    }

    /// The best `k` rows (all rows when `None`; clamped to the index) per query, highest scores
    /// first, or lowest first with `reverse`. `queries` holds each module's `[Q, size]`
    /// gradients; `modules` restricts the score to some modules.
    pub fn search(
        &self,
        queries: &[(String, Tensor)],
        k: Option<usize>,
        modules: Option<&[String]>,
        reverse: bool,
    ) -> Result<Hits> {
        let (top, bottom) = self.search_both(queries, k, modules, (!reverse, reverse))?;
        top.or(bottom)
            .ok_or_else(|| Error::internal("search returned no hits"))
    }

    /// Top and/or bottom `k` rows per query in one pass over the index.
    pub fn search_both(
        &self,
        queries: &[(String, Tensor)],
        k: Option<usize>,
        modules: Option<&[String]>,
        (top, bottom): (bool, bool),
    ) -> Result<(Option<Hits>, Option<Hits>)> {
        let n = self.num_rows();
        let k = match k {
            Some(k) if k > n => {
                if !self.warned_k.swap(true, Ordering::Relaxed) {
                    tracing::warn!("k = {k} is more than the index's {n} rows; returning all {n}");
                }
                n
            }
            Some(0) => return Err(Error::input("k (--top_k) must be at least 1")),
            Some(k) => k,
            None => n,
        };
        if let Some(ann) = &self.ann {
            if modules.is_some() {
                return Err(Error::input(
                    "a FAISS index scores all modules together and cannot search some of them; \
                     search all modules, or without FAISS",
                ));
            }
            let (q, _) = self.prepare_queries(queries, None)?;
            let q = Vec::<f32>::try_from(q.f_contiguous()?.f_view([-1i64])?)?;
            return ann.search(&q, k, (top, bottom));
        }
        let (q, columns) = self.prepare_queries(queries, modules)?;
        if let (Some(p), true) = (&self.preconditioner, self.options.unit_norm) {
            // Two-sided: score = (g H^-1/2)·q' / ‖g H^-1/2‖ = g·(q' H^-1/2) / ‖g H^-1/2‖ (H^-1/2
            // is symmetric), so the stored rows are searched as they are with the queries
            // multiplied once more and the preconditioned rows' norms.
            let norms = match self.preconditioned_norms.get() {
                Some(v) => v,
                None => {
                    let v = self.preconditioned_row_norms(p)?;
                    let zero = v.iter().filter(|&&x| x == 0.0).count();
                    if zero > 0 {
                        tracing::warn!("{zero} of the index's {n} rows are zero after preconditioning; they score 0");
                    }
                    self.preconditioned_norms.get_or_init(|| v)
                }
            };
            let all: Vec<Range<usize>> = self
                .modules()
                .iter()
                .filter_map(|m| self.index.module_columns(m))
                .collect();
            let q = self.spread_and_precondition(&q, &columns, p)?;
            let result = scan(
                &self.index,
                &q,
                &all,
                k,
                (top, bottom),
                RowNorms::Given(norms),
            )?;
            return Ok((result.top, result.bottom));
        }
        let cached = if self.options.unit_norm {
            self.norms
                .get()
                .cloned()
                .or_else(|| row_norms::load(self.index.dir(), n))
        } else {
            None
        };
        let norms = match (&cached, self.options.unit_norm) {
            (_, false) => RowNorms::None,
            (Some(v), true) => RowNorms::Given(v),
            (None, true) => RowNorms::Compute,
        };
        let result = scan(&self.index, &q, &columns, k, (top, bottom), norms)?;
        if let Some(computed) = result.norms {
            let zero = computed.iter().filter(|&&x| x == 0.0).count();
            if zero > 0 {
                tracing::warn!(
                    "{zero} of the index's {n} rows are zero (documents with fewer than 2 tokens); they score 0"
                );
            }
            if let Err(e) = row_norms::save(self.index.dir(), &computed) {
                tracing::warn!("could not cache the index's row norms ({e}); the next search computes them again");
            }
            let _ = self.norms.set(computed);
        } else if let Some(v) = cached {
            let _ = self.norms.set(v);
        }
        Ok((result.top, result.bottom))
    }

    /// `[Q, row_len]` queries: `q` (over `columns`) placed at its columns, zero elsewhere, then
    /// multiplied by `p` over every module (a joint Hessian mixes modules).
    fn spread_and_precondition(
        &self,
        q: &Tensor,
        columns: &[Range<usize>],
        p: &Preconditioner,
    ) -> Result<Tensor> {
        let nq = q.size()[0];
        let full = Tensor::f_zeros(
            [nq, self.index.row_len() as i64],
            (Kind::Float, Device::Cpu),
        )?;
        let mut at = 0i64;
        for c in columns {
            let w = c.len() as i64;
            full.f_narrow(1, c.start as i64, w)?
                .f_copy_(&q.f_narrow(1, at, w)?)?;
            at += w;
        }
        let blocks = self.module_blocks(&full)?;
        let out = p.apply(&blocks)?;
        let parts: Vec<Tensor> = out
            .iter()
            .map(|(_, t)| t.f_to_kind(Kind::Float))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Tensor::f_cat(&parts, 1)?)
    }

    /// `(module, [rows, size])` views of full-width rows, in index order.
    fn module_blocks(&self, rows: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.modules()
            .into_iter()
            .map(|m| {
                let c = self
                    .index
                    .module_columns(&m)
                    .ok_or_else(|| Error::internal(format!("module {m} has no columns")))?;
                let t = rows.f_narrow(1, c.start as i64, c.len() as i64)?;
                Ok((m, t))
            })
            .collect()
    }

    /// `‖g H^-1/2‖` over all modules for every index row, in float32 (Bergson preconditions the
    /// loaded rows, then takes their norms without an epsilon).
    fn preconditioned_row_norms(&self, p: &Preconditioner) -> Result<Vec<f32>> {
        let n = self.num_rows();
        let chunk = (4 << 20) / (self.index.row_len() * 4).max(1);
        let chunk = chunk.clamp(1, 4096);
        let mut norms = Vec::with_capacity(n);
        let mut start = 0;
        while start < n {
            crate::interrupt::check()?;
            let end = (start + chunk).min(n);
            let rows = self.index.rows(start..end)?.f_to_kind(Kind::Float)?;
            let out = p.apply(&self.module_blocks(&rows)?)?;
            let mut sq = Tensor::f_zeros([(end - start) as i64], (Kind::Float, Device::Cpu))?;
            for (_, t) in &out {
                sq = sq.f_add(&t.f_to_kind(Kind::Float)?.f_square()?.f_sum_dim_intlist(
                    [1i64].as_slice(),
                    false,
                    Kind::Float,
                )?)?;
            }
            norms.extend(Vec::<f32>::try_from(sq.f_sqrt()?)?);
            start = end;
        }
        Ok(norms)
    }

    /// The queries as one float32 `[Q, Σ sizes]` matrix over the searched modules (in index
    /// order), preconditioned (`H^-1` one-sided, `H^-1/2` two-sided) and unit-normalised over
    /// all modules when asked, and those modules' column ranges.
    fn prepare_queries(
        &self,
        queries: &[(String, Tensor)],
        modules: Option<&[String]>,
    ) -> Result<(Tensor, Vec<Range<usize>>)> {
        let ordered = self.modules();
        let mut blocks = Vec::with_capacity(ordered.len());
        for name in &ordered {
            let q = queries
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| {
                    Error::input(format!(
                        "the queries have no gradients for the index's module '{name}'; compute \
                         them with the index's modules"
                    ))
                })?;
            let q = q.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
            let want = self
                .index
                .module_columns(name)
                .map(|c| c.len())
                .unwrap_or(0) as i64;
            if q.dim() != 2 || q.size()[1] != want {
                return Err(Error::input(format!(
                    "query gradients for '{name}' have shape {:?}, but the index stores {want} \
                     values per row for it; compute them with the index's projection settings",
                    q.size()
                )));
            }
            blocks.push(q);
        }
        let rows: Vec<i64> = blocks.iter().map(|b| b.size()[0]).collect();
        if rows.windows(2).any(|w| w[0] != w[1]) {
            return Err(Error::input(format!(
                "the query modules have different numbers of rows: {rows:?}"
            )));
        }
        if blocks.iter().any(|b| b.isnan().any().int64_value(&[]) != 0) {
            return Err(Error::input("NaN found in the query gradients"));
        }
        if let Some(p) = &self.preconditioner {
            let named: Vec<(String, Tensor)> = ordered.iter().cloned().zip(blocks).collect();
            blocks = p
                .apply(&named)?
                .into_iter()
                .map(|(_, t)| t.f_to_kind(Kind::Float))
                .collect::<std::result::Result<_, _>>()?;
        }
        if self.options.unit_norm {
            let all = Tensor::f_cat(&blocks, 1)?;
            let norm = all
                .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
                .f_add_scalar(F32_EPS)?;
            blocks = blocks
                .into_iter()
                .map(|b| b.f_div(&norm))
                .collect::<std::result::Result<_, _>>()?;
        }
        let mut selected = Vec::new();
        let mut columns = Vec::new();
        for (name, block) in ordered.iter().zip(blocks) {
            if modules.is_none_or(|m| m.iter().any(|x| x == name)) {
                columns.push(
                    self.index
                        .module_columns(name)
                        .ok_or_else(|| Error::internal(format!("module {name} has no columns")))?,
                );
                selected.push(block);
            }
        }
        if selected.is_empty() {
            return Err(Error::input(format!(
                "none of the requested modules is in the index; it has: {}",
                ordered.join(", ")
            )));
        }
        Ok((Tensor::f_cat(&selected, 1)?, columns))
    }

    /// Collection settings matching the index (its modules, heads and loss settings).
    fn collect_config(&self) -> CollectConfig {
        match &self.index_cfg {
            Some(c) => {
                let mut cfg = CollectConfig::from_index_config(c);
                cfg.attribute_tokens = false;
                cfg
            }
            None => {
                let c = IndexConfig {
                    include_bias: self.processor.settings.include_bias,
                    ..IndexConfig::default()
                };
                let mut cfg = CollectConfig::from_index_config(&c);
                cfg.modules = self.modules();
                cfg
            }
        }
    }

    /// The loss `bergson query` differentiates: `model(x, labels=x).loss` of a model set up
    /// as Bergson sets it up, i.e. next-token cross-entropy (no label smoothing) reduced with
    /// the index's `--loss_reduction` (`sum` by default), logits scaled by its `--logit_scale`.
    pub fn query_loss(&self) -> LossSpec {
        LossSpec {
            loss_fn: LossFn::Ce,
            reduction: self
                .index_cfg
                .as_ref()
                .map_or(LossReduction::Sum, |c| c.loss_reduction),
            label_smoothing: 0.0,
            logit_scale: self.index_cfg.as_ref().map_or(1.0, |c| c.logit_scale),
            upcast_logits: true,
        }
    }

    /// Per-document gradients `[docs, size]` (float32) of `loss` for `docs` under `model`, in
    /// the index's space: the index's modules, projections and normalizers. Each document runs
    /// alone, as `bergson query` runs each prompt (batching would change low-precision
    /// rounding through the padding).
    pub fn query_gradients(
        &self,
        model: &dyn CausalLm,
        docs: &[TokenizedRow],
        loss: LossSpec,
    ) -> Result<Vec<(String, Tensor)>> {
        if let Some(short) = docs.iter().position(|d| d.len() < 2) {
            return Err(Error::input(format!(
                "query {short} has fewer than 2 tokens, so it has no next-token loss to \
                 differentiate; give a longer query"
            )));
        }
        let mut cfg = self.collect_config();
        cfg.loss = loss;
        let mut per_module: Vec<(String, Vec<Tensor>)> = Vec::new();
        for doc in docs {
            crate::interrupt::check()?;
            let one = Documents {
                rows: std::slice::from_ref(doc),
                advantages: None,
            };
            let grads = collect_gradients_in_memory(model, one, &self.processor, &cfg)?;
            if per_module.is_empty() {
                per_module = grads.iter().map(|(n, _)| (n.clone(), Vec::new())).collect();
            }
            for ((_, rows), (_, g)) in per_module.iter_mut().zip(grads) {
                rows.push(g.f_to_kind(Kind::Float)?);
            }
        }
        per_module
            .into_iter()
            .map(|(n, rows)| Ok((n, Tensor::f_cat(&rows, 0)?)))
            .collect()
    }

    /// Gradients of any forward and loss (Bergson's `Attributor.trace`): `forward` runs the
    /// model with the given hook (`model.hidden_with(x, hook)`) and returns per-example
    /// losses `[N]`; their sum is differentiated and each example's gradient is formed in the
    /// index's space. Returns each module's `[N, size]` float32 gradients for [`search`].
    ///
    /// [`search`]: Attributor::search
    pub fn trace(
        &self,
        model: &dyn CausalLm,
        forward: impl FnOnce(&mut CaptureHook<'_>) -> Result<Tensor>,
    ) -> Result<Vec<(String, Tensor)>> {
        let cfg = self.collect_config();
        let targets = select_targets(model, &self.processor, &cfg)?;
        let kind = model.kind();
        let collector =
            GradientCollector::new(targets, &self.processor, false, kind, kind, model.device())?;
        let mut hook = collector.hook();
        let losses = forward(&mut hook)?;
        let total = losses.f_sum(losses.kind())?;
        let grads = collector.backward(hook, &total, &Tensor::new())?;
        if grads.blocks.is_empty() {
            return Err(Error::input(
                "no gradients were collected: the forward did not run the model through the hook",
            ));
        }
        grads
            .blocks
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_to_kind(Kind::Float)?)))
            .collect()
    }
}
