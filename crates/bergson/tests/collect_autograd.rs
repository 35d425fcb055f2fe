//! Per-example gradients from one padded multi-document batch (`GradientCollector`) against
//! full autograd of each document alone, for every fixture architecture, in float64 and
//! float32: prompt masking, sum and mean reductions, bias columns, per-token rows and the
//! per-module projection. The autograd reference is itself checked against float64 central
//! finite differences, so the chain ends in something independent of libtorch's backward.
//!
//! Run with `--nocapture` to see the table of maximum relative errors.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bergson::collect::projection::module_projection_matrix;
use bergson::collect::{
    discover_targets, document_losses, BatchGradients, GradientCollector, GradientProcessor,
    LossSpec, ProjectionSettings,
};
use bergson::config::{LossFn, LossReduction, ProjectionScale, ProjectionType};
use bergson::data::batching::{collection_mask, pad_batch};
use bergson::engine::Precision;
use bergson::models::{load_model, CausalLm, Linear, LinearHook};
use tch::{Device, Kind, Tensor};

const ARCHITECTURES: &[&str] = &[
    "gpt_neox",
    "gpt_neox_seq",
    "gpt2",
    "llama",
    "llama3",
    "mistral",
    "qwen2",
    "qwen3",
    "olmo",
    "olmo2",
    "olmo3",
    "gemma",
    "gemma3",
    "gpt_neo",
    "phi3",
    "smollm3",
    "phi",
    "gemma2",
    "granite",
    "opt",
    "opt_post_ln",
];

/// Documents of different lengths, not sorted, so padding sits in the middle of the batch too.
/// The longest exceeds the sliding window (4) of the mistral and qwen2 fixtures.
const DOCS: [&[i64]; 4] = [
    &[5, 17, 301, 44, 9, 250, 3],
    &[101, 7, 88, 460],
    &[12, 13, 400, 2, 77],
    &[33, 210],
];

/// Prompt lengths masked (labels -100) when prompt masking is on; every document keeps at least
/// one labelled token.
const PROMPTS: [usize; 4] = [3, 2, 2, 0];

/// Per-module projection dimension of the projected variants.
const P: usize = 4;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn load(arch: &str, precision: Precision) -> Box<dyn CausalLm> {
    // Tiny tensors: one intra-op thread avoids oversubscribing shared CI cores.
    tch::set_num_threads(1);
    load_model(&fixture_dir(arch), precision, Device::Cpu).unwrap_or_else(|e| panic!("{arch}: {e}"))
}

/// A model Linear's own weight and bias tensors (same TensorImpl the forward multiplies with).
struct Module {
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
}

/// Grabs every Linear's weight handles during one forward pass.
#[derive(Default)]
struct Grab(Vec<Module>);

impl LinearHook for Grab {
    fn module(&mut self, layer: &Linear, x: &Tensor) -> Tensor {
        if !self.0.iter().any(|m| m.name == layer.name) {
            self.0.push(Module {
                name: layer.name.clone(),
                weight: layer.weight.shallow_clone(),
                bias: layer.bias.as_ref().map(Tensor::shallow_clone),
            });
        }
        layer.forward_base(x)
    }
}

/// The base model's Linears, in `linear_modules()` order, as the tensors the forward multiplies
/// with. (For every module but GPT-2's Conv1D these are the `named_parameters()` tensors
/// themselves: see `named_parameters_are_the_models_linear_weights`.)
fn modules(model: &dyn CausalLm) -> Vec<Module> {
    let _guard = tch::no_grad_guard();
    let mut grab = Grab::default();
    let _ = model.forward_with(&Tensor::from_slice(&[1i64, 2]).view([1, 2]), &mut grab);
    let order: Vec<String> = model.linear_modules().into_iter().map(|l| l.name).collect();
    let mut out: Vec<Module> = Vec::new();
    for name in &order {
        let i = grab.0.iter().position(|m| &m.name == name).unwrap();
        out.push(grab.0.swap_remove(i));
    }
    out
}

fn set_requires_grad(modules: &[Module], on: bool) {
    for m in modules {
        let _ = m.weight.set_requires_grad(on);
        if let Some(b) = &m.bias {
            let _ = b.set_requires_grad(on);
        }
    }
}

fn labels(doc: usize, prompt: bool) -> Vec<i64> {
    let mut l = DOCS[doc].to_vec();
    if prompt {
        l[..PROMPTS[doc]].fill(-100);
    }
    l
}

fn spec(reduction: LossReduction) -> LossSpec {
    LossSpec {
        loss_fn: LossFn::Ce,
        reduction,
        label_smoothing: 0.0,
        logit_scale: 1.0,
        upcast_logits: false,
    }
}

/// The loss of one document alone, through the plain forward.
fn single_loss(model: &dyn CausalLm, doc: usize, prompt: bool, reduction: LossReduction) -> Tensor {
    let n = DOCS[doc].len() as i64;
    let ids = Tensor::from_slice(DOCS[doc]).view([1, n]);
    let lab = Tensor::from_slice(&labels(doc, prompt)).view([1, n]);
    let logits = model.forward(&ids);
    document_losses(&spec(reduction), &logits, &lab, None, None)
        .unwrap()
        .sum(model.kind())
}

/// `(W_grad [O, I], b_grad [O])` per module (`b_grad` `None` without a bias), in float64.
type Grads = Vec<(Tensor, Option<Tensor>)>;

/// Full autograd of one document's loss: every Linear weight and bias requires grad, `backward`,
/// read `.grad`.
fn reference(
    model: &dyn CausalLm,
    mods: &[Module],
    doc: usize,
    prompt: bool,
    reduction: LossReduction,
) -> Grads {
    set_requires_grad(mods, true);
    single_loss(model, doc, prompt, reduction).backward();
    let take = |t: &Tensor| {
        let g = t.grad();
        assert!(
            g.defined(),
            "no .grad: the parameter is not the model's tensor"
        );
        let out = g.to_kind(Kind::Double).copy();
        let _ = g.detach().zero_();
        out
    };
    let grads = mods
        .iter()
        .map(|m| (take(&m.weight), m.bias.as_ref().map(take)))
        .collect();
    set_requires_grad(mods, false);
    grads
}

/// A module's expected block `[O, W]`: the weight gradient, with the bias gradient as an extra
/// column when collected.
fn expected_block(g: &(Tensor, Option<Tensor>), include_bias: bool) -> Tensor {
    match (&g.1, include_bias) {
        (Some(b), true) => Tensor::cat(&[&g.0, &b.unsqueeze(1)], 1),
        _ => g.0.shallow_clone(),
    }
}

/// `L G Rᵀ` `[p, p]` with the collector's matrices for `name` (right matrix over `W` columns).
fn project(name: &str, block: &Tensor, kind: Kind) -> Tensor {
    let (o, w) = block.size2().unwrap();
    let matrix = |role: &str, n: i64| {
        module_projection_matrix(
            name,
            role,
            P,
            n as usize,
            ProjectionType::Rademacher,
            ProjectionScale::Jl,
            None,
            kind,
            Device::Cpu,
        )
        .unwrap()
        .to_kind(Kind::Double)
    };
    matrix("left", o)
        .matmul(block)
        .matmul(&matrix("right", w).tr())
}

/// Blocks whose reference is below this fraction of their document's (token row's) largest
/// block are zero in exact arithmetic (a query or key projection when the only labelled
/// position, or the probed position, attends to itself alone): their reference is round-off,
/// so their error is measured against the document's largest block.
const ZERO_BLOCK: f64 = 1e-6;

/// `max |got - want| / max |want|`, or over `outer` (the largest block of the same document)
/// when the block is zero in exact arithmetic (see [`ZERO_BLOCK`]).
fn rel_err(got: &Tensor, want: &Tensor, outer: f64) -> f64 {
    assert_eq!(got.size(), want.size());
    let got = got.to_kind(Kind::Double);
    let diff = (&got - want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    assert!(outer > 0.0, "an all-zero reference gradient");
    if scale > ZERO_BLOCK * outer {
        diff / scale
    } else {
        diff / outer
    }
}

/// The largest entry of any block.
fn outer_scale(blocks: &[Tensor]) -> f64 {
    blocks
        .iter()
        .map(|b| b.abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// One collection setting.
#[derive(Clone, Copy)]
struct Variant {
    label: &'static str,
    prompt: bool,
    reduction: LossReduction,
    include_bias: bool,
    tokens: bool,
    projection: Option<usize>,
}

const fn variant(
    label: &'static str,
    prompt: bool,
    reduction: LossReduction,
    include_bias: bool,
    tokens: bool,
    projection: Option<usize>,
) -> Variant {
    Variant {
        label,
        prompt,
        reduction,
        include_bias,
        tokens,
        projection,
    }
}

use LossReduction::{Mean, Sum};

const VARIANTS: &[Variant] = &[
    variant("sum", false, Sum, false, false, None),
    variant("sum+prompt", true, Sum, false, false, None),
    variant("mean", false, Mean, false, false, None),
    variant("mean+prompt", true, Mean, false, false, None),
    variant("bias+prompt", true, Sum, true, false, None),
    variant("bias+mean", false, Mean, true, false, None),
    variant("tok", true, Sum, false, true, None),
    variant("tok+bias+mean", true, Mean, true, true, None),
    variant("proj", true, Sum, false, false, Some(P)),
    variant("proj+bias+mean", false, Mean, true, false, Some(P)),
    variant("proj+tok+bias", true, Sum, true, true, Some(P)),
];

/// One pass of the collector over the padded batch of all documents.
fn collect(model: &dyn CausalLm, v: &Variant) -> BatchGradients {
    let kind = model.kind();
    let targets = discover_targets(&model.linear_modules(), &[], None, v.include_bias).unwrap();
    let processor = GradientProcessor::new(ProjectionSettings {
        projection_dim: v.projection,
        include_bias: v.include_bias,
        ..Default::default()
    });
    let collector =
        GradientCollector::new(targets, &processor, v.tokens, kind, kind, Device::Cpu).unwrap();
    let labels: Vec<Vec<i64>> = (0..DOCS.len()).map(|d| labels(d, v.prompt)).collect();
    let label_refs: Vec<&[i64]> = labels.iter().map(Vec::as_slice).collect();
    let (ids, labels) = pad_batch(&DOCS, Some(&label_refs)).unwrap();
    let lengths: Vec<usize> = DOCS.iter().map(|d| d.len()).collect();
    let mask = collection_mask(&lengths, ids.size()[1] as usize).unwrap();
    let mut hook = collector.hook();
    let logits = model.forward_with(&ids, &mut hook);
    let losses = document_losses(&spec(v.reduction), &logits, &labels, None, None).unwrap();
    collector.backward(hook, &losses.sum(kind), &mask).unwrap()
}

/// Adds, to every Linear, a zero weight (and bias) applied at position `t` only: the autograd
/// gradient of the document loss w.r.t. it is that position's contribution `g_t ⊗ x_t` (`g_t`)
/// to the weight (bias) gradient.
struct PositionProbe {
    t: i64,
    deltas: Vec<(String, Tensor, Option<Tensor>)>,
}

impl LinearHook for PositionProbe {
    fn module(&mut self, layer: &Linear, x: &Tensor) -> Tensor {
        let y = layer.forward_base(x);
        let opts = (x.kind(), x.device());
        let dw = Tensor::zeros(layer.weight.size(), opts).set_requires_grad(true);
        let db = layer
            .bias
            .as_ref()
            .map(|b| Tensor::zeros(b.size(), opts).set_requires_grad(true));
        let s = x.size()[1];
        let onehot = Tensor::zeros([1, s, 1], opts);
        let _ = onehot.narrow(1, self.t, 1).fill_(1.0);
        let extra = x.linear(&dw, db.as_ref()) * onehot;
        self.deltas.push((layer.name.clone(), dw, db));
        y + extra
    }
}

/// Autograd of one position's contribution, per module of `mods`.
fn position_reference(
    model: &dyn CausalLm,
    mods: &[Module],
    doc: usize,
    t: i64,
    v: &Variant,
) -> Grads {
    let n = DOCS[doc].len() as i64;
    let ids = Tensor::from_slice(DOCS[doc]).view([1, n]);
    let lab = Tensor::from_slice(&labels(doc, v.prompt)).view([1, n]);
    let mut probe = PositionProbe {
        t,
        deltas: Vec::new(),
    };
    let logits = model.forward_with(&ids, &mut probe);
    document_losses(&spec(v.reduction), &logits, &lab, None, None)
        .unwrap()
        .sum(model.kind())
        .backward();
    mods.iter()
        .map(|m| {
            let (_, w, b) = probe.deltas.iter().find(|(n, _, _)| *n == m.name).unwrap();
            (
                w.grad().to_kind(Kind::Double),
                b.as_ref().map(|b| b.grad().to_kind(Kind::Double)),
            )
        })
        .collect()
}

/// Maximum errors of one variant: per-document rows, or for per-token rows the sum identity
/// and the probed rows.
struct Errors {
    doc: f64,
    token_sum: f64,
    token_row: f64,
}

fn check_variant(
    model: &dyn CausalLm,
    mods: &[Module],
    refs: &[Grads],
    v: &Variant,
    context: &str,
) -> Errors {
    let kind = model.kind();
    let got = collect(model, v);
    assert_eq!(
        got.blocks.len(),
        mods.len(),
        "{context}: one block per module"
    );
    let lengths: Vec<i64> = DOCS.iter().map(|d| d.len() as i64).collect();
    let token_rows: i64 = lengths.iter().map(|l| l - 1).sum();
    // Expected `[O·W]` (or projected `[p·p]`) rows per module, per document.
    let expect = |g: &Grads| -> Vec<Tensor> {
        mods.iter()
            .zip(g)
            .map(|(m, g)| {
                let block = expected_block(g, v.include_bias);
                match v.projection {
                    Some(_) => project(&m.name, &block, kind),
                    None => block,
                }
                .flatten(0, -1)
            })
            .collect()
    };
    let mut errors = Errors {
        doc: 0.0,
        token_sum: 0.0,
        token_row: 0.0,
    };
    for (m, (name, _)) in got.blocks.iter().enumerate() {
        assert_eq!(name, &mods[m].name, "{context}: block order");
    }
    let mut offset = 0;
    for (d, doc_refs) in refs.iter().enumerate() {
        let want = expect(doc_refs);
        let outer = outer_scale(&want);
        if !v.tokens {
            for ((name, rows), want) in got.blocks.iter().zip(&want) {
                assert_eq!(
                    rows.size(),
                    [DOCS.len() as i64, want.numel() as i64],
                    "{context}: {name}"
                );
                errors.doc = errors.doc.max(rel_err(&rows.get(d as i64), want, outer));
            }
            continue;
        }
        // Per-token rows: a document's rows sum to its gradient ...
        let len = lengths[d];
        for ((name, rows), want) in got.blocks.iter().zip(&want) {
            assert_eq!(
                rows.size(),
                [token_rows, want.numel() as i64],
                "{context}: {name}"
            );
            let sum = rows
                .narrow(0, offset, len - 1)
                .to_kind(Kind::Double)
                .sum_dim_intlist(0, false, Kind::Double);
            errors.token_sum = errors.token_sum.max(rel_err(&sum, want, outer));
        }
        // ... and the probed rows are their position's own contribution.
        let mut probes = vec![0, (len - 2) / 2, len - 2];
        probes.dedup();
        for t in probes {
            let want = expect(&position_reference(model, mods, d, t, v));
            let outer = outer_scale(&want);
            for ((_, rows), want) in got.blocks.iter().zip(&want) {
                let e = rel_err(&rows.get(offset + t), want, outer);
                errors.token_row = errors.token_row.max(e);
            }
        }
        offset += len - 1;
    }
    errors
}

/// The one test with the table: every architecture, both precisions, every variant.
#[test]
fn batched_per_example_gradients_equal_single_document_autograd() {
    let mut table = String::new();
    let mut failures = Vec::new();
    let mut header = format!("{:<13} {:<5}", "arch", "prec");
    for v in VARIANTS {
        if v.tokens {
            let _ = write!(header, " {:>21}", format!("{} Σ/row", v.label));
        } else {
            let _ = write!(header, " {:>14}", v.label);
        }
    }
    let _ = writeln!(table, "{header}");
    for arch in ARCHITECTURES {
        for (precision, tol) in [(Precision::Fp64, 1e-10), (Precision::Fp32, 1e-5)] {
            let model = load(arch, precision);
            let mods = modules(model.as_ref());
            let prec = format!("{precision:?}").to_lowercase();
            let _ = write!(table, "{arch:<13} {prec:<5}");
            // References per (prompt, reduction), per document.
            let cases: Vec<((bool, LossReduction), Vec<Grads>)> =
                [(false, Sum), (true, Sum), (false, Mean), (true, Mean)]
                    .into_iter()
                    .map(|(prompt, red)| {
                        let refs = (0..DOCS.len())
                            .map(|d| reference(model.as_ref(), &mods, d, prompt, red))
                            .collect();
                        ((prompt, red), refs)
                    })
                    .collect();
            for v in VARIANTS {
                let refs = &cases
                    .iter()
                    .find(|(c, _)| *c == (v.prompt, v.reduction))
                    .unwrap()
                    .1;
                let context = format!("{arch} {prec} {}", v.label);
                let e = check_variant(model.as_ref(), &mods, refs, v, &context);
                let errs: Vec<(&str, f64)> = if v.tokens {
                    let _ = write!(table, " {:>10.1e}/{:>10.1e}", e.token_sum, e.token_row);
                    vec![("token sum", e.token_sum), ("token row", e.token_row)]
                } else {
                    let _ = write!(table, " {:>14.1e}", e.doc);
                    vec![("document", e.doc)]
                };
                for (what, err) in errs {
                    // NaN fails too.
                    if err.is_nan() || err >= tol {
                        failures.push(format!("{context} {what}: {err:.3e} >= {tol:.0e}"));
                    }
                }
            }
            let _ = writeln!(table);
        }
    }
    println!(
        "max relative error (max |ours - autograd| / max |autograd| per module block)\n{table}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The tensors `named_parameters()` returns are the model's own: `set_requires_grad` on one
/// makes the Linear's weight require grad (same TensorImpl). GPT-2's Conv1D weights are the
/// exception: listed `[in, out]` as a transposed view of the `[out, in]` weight the model
/// multiplies with, they share its storage but not its autograd state, so gradients must be read
/// from the Linear's weight (what the reference above does for every architecture).
#[test]
fn named_parameters_are_the_models_linear_weights() {
    for arch in ARCHITECTURES {
        let model = load(arch, Precision::Fp64);
        let mods = modules(model.as_ref());
        let params = model.named_parameters();
        let prefix = model.base_model_prefix();
        for m in &mods {
            for (suffix, handle) in [("weight", Some(&m.weight)), ("bias", m.bias.as_ref())] {
                let Some(handle) = handle else { continue };
                let full = format!("{prefix}.{}.{suffix}", m.name);
                let p = &params
                    .iter()
                    .find(|(n, _)| *n == full)
                    .unwrap_or_else(|| panic!("{arch}: {full} not in named_parameters"))
                    .1;
                assert_eq!(p.data_ptr(), handle.data_ptr(), "{arch} {full}: storage");
                let conv1d = *arch == "gpt2" && suffix == "weight";
                if conv1d {
                    assert_eq!(p.size(), handle.tr().size(), "{arch} {full}: [in, out]");
                    assert!(p.equal(&handle.tr()), "{arch} {full}: values");
                    let _ = p.set_requires_grad(true);
                    assert!(!handle.requires_grad(), "{arch} {full}: Conv1D now shares autograd state; the reference could use named_parameters directly");
                    let _ = p.set_requires_grad(false);
                } else {
                    assert_eq!(p.size(), handle.size(), "{arch} {full}: shape");
                    let _ = p.set_requires_grad(true);
                    assert!(
                        handle.requires_grad(),
                        "{arch} {full}: not the model's tensor"
                    );
                    let _ = p.set_requires_grad(false);
                    assert!(!handle.requires_grad());
                }
            }
        }
        // And the whole-model autograd reaches every Linear through named_parameters (non-Conv1D).
        if *arch != "gpt2" {
            for m in &mods {
                let full = format!("{prefix}.{}.weight", m.name);
                let _ = params
                    .iter()
                    .find(|(n, _)| *n == full)
                    .unwrap()
                    .1
                    .set_requires_grad(true);
            }
            single_loss(model.as_ref(), 0, true, Sum).backward();
            for m in &mods {
                let full = format!("{prefix}.{}.weight", m.name);
                let p = &params.iter().find(|(n, _)| *n == full).unwrap().1;
                let g = p.grad();
                assert!(g.defined(), "{arch} {full}: no grad via named_parameters");
                assert!(g.equal(&m.weight.grad()), "{arch} {full}: same .grad");
                let _ = p.set_requires_grad(false);
            }
        }
    }
}

/// The autograd reference against float64 central differences of the document loss: for
/// every architecture, the largest-gradient weight entry of the first, a middle and the last
/// Linear, and the largest bias entry where there is one.
#[test]
fn autograd_reference_matches_finite_differences() {
    const H: f64 = 1e-5;
    let mut worst = Vec::new();
    for arch in ARCHITECTURES {
        let model = load(arch, Precision::Fp64);
        let mods = modules(model.as_ref());
        let (doc, prompt, red) = (0, true, Sum);
        let grads = reference(model.as_ref(), &mods, doc, prompt, red);
        let loss = || {
            let _guard = tch::no_grad_guard();
            single_loss(model.as_ref(), doc, prompt, red).double_value(&[])
        };
        let mut arch_worst = 0f64;
        for m in [0, mods.len() / 2, mods.len() - 1] {
            let mut entries = vec![(&mods[m].weight, &grads[m].0)];
            if let (Some(b), Some(gb)) = (&mods[m].bias, &grads[m].1) {
                entries.push((b, gb));
            }
            for (param, grad) in entries {
                let flat_grad = grad.flatten(0, -1);
                let i = flat_grad.abs().argmax(0, false).int64_value(&[]);
                let want = flat_grad.double_value(&[i]);
                let mut entry = param.view(-1).get(i);
                let orig = entry.double_value(&[]);
                let _guard = tch::no_grad_guard();
                let _ = entry.fill_(orig + H);
                let up = loss();
                let _ = entry.fill_(orig - H);
                let down = loss();
                let _ = entry.fill_(orig);
                let fd = (up - down) / (2.0 * H);
                if want.abs() < 1e-12 {
                    // A structurally zero gradient (a key bias shifts all of a query's scores
                    // alike, which the softmax ignores): autograd leaves rounding only.
                    assert!(
                        fd.abs() < 1e-9,
                        "{arch} {} entry {i}: autograd {want:e}, finite difference {fd:e}",
                        mods[m].name
                    );
                    continue;
                }
                let err = (fd - want).abs() / want.abs();
                assert!(
                    err < 1e-6,
                    "{arch} {} entry {i}: autograd {want:e}, finite difference {fd:e}",
                    mods[m].name
                );
                arch_worst = arch_worst.max(err);
            }
        }
        worst.push(format!("{arch}: {arch_worst:.1e}"));
    }
    println!(
        "autograd vs float64 central differences (h = {H:e}), max relative error: {}",
        worst.join(", ")
    );
}
