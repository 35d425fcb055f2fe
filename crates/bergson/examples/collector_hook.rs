//! Level 3 of the library (docs/library.md): a `GradientCollector` around a forward and
//! backward you write yourself. The forward runs every Linear through the collector's hook; one
//! backward of any loss that is a sum of per-document terms gives each document's gradient of
//! every collected module.
//!
//! Part 1 takes a checkpoint model and a custom loss (the negative log-probability of each
//! document's last token). Part 2 collects from a hand-written two-layer network and checks one
//! document's row against plain autograd.
//!
//! Runs in about a second: `cargo run -p bergson --example collector_hook`

use std::path::Path;

use bergson::collect::{
    discover_targets, GradientCollector, GradientProcessor, ProjectionSettings, Target,
};
use bergson::data::batching::{collection_mask, pad_batch};
use bergson::engine::Precision;
use bergson::models::{load_model, Linear, LinearHook, NoHook};
use tch::{Device, Kind, Tensor};

fn main() -> bergson::Result<()> {
    checkpoint_model_custom_loss()?;
    hand_written_forward()
}

/// A fixture checkpoint, MLP modules only, projected to 4×4 per module.
fn checkpoint_model_custom_loss() -> bergson::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gpt_neox");
    let model = load_model(&dir, Precision::Fp32, Device::Cpu)?;
    let processor = GradientProcessor::new(ProjectionSettings {
        projection_dim: Some(4),
        ..ProjectionSettings::default()
    });
    let targets = discover_targets(&model.linear_modules(), &["*.mlp.*".into()], None, false)?;
    let collector = GradientCollector::new(
        targets,
        &processor,
        false, // one row per document, not per token
        model.kind(),
        model.kind(),
        model.device(),
    )?;

    // A right-padded batch of two documents (token ids).
    let docs: [&[i64]; 2] = [&[5, 17, 301, 44, 9], &[101, 7, 88]];
    let (input_ids, _labels) = pad_batch(&docs, None)?;
    let lengths: Vec<usize> = docs.iter().map(|d| d.len()).collect();
    let mask = collection_mask(&lengths, input_ids.size()[1] as usize)?;

    let mut hook = collector.hook();
    let logits = model.forward_with(&input_ids, &mut hook); // [N, S, V]
    let logp = logits.f_log_softmax(-1, Kind::Float)?;
    let mut losses = Vec::new();
    for (n, doc) in docs.iter().enumerate() {
        let (t, last) = (doc.len() as i64 - 2, doc[doc.len() - 1]);
        losses.push(
            logp.f_select(0, n as i64)?
                .f_select(0, t)?
                .f_select(0, last)?
                .f_neg()?,
        );
    }
    let loss = Tensor::f_stack(&losses, 0)?.f_sum(Kind::Float)?;
    let grads = collector.backward(hook, &loss, &mask)?;
    for (name, rows) in &grads.blocks {
        println!("{name}: {:?}", rows.size()); // [2 documents, 16]
    }
    Ok(())
}

/// Any forward works if its Linears go through the hook and its first activation through
/// `hook.embeddings` (which makes it require grad, so autograd reaches every layer).
struct TinyMlp {
    up: Linear,
    down: Linear,
}

impl TinyMlp {
    fn forward(&self, x: &Tensor, hook: &mut dyn LinearHook) -> Tensor {
        let h = hook.embeddings(x.shallow_clone());
        let a = hook.linear(&self.up, &h).relu();
        hook.linear(&self.down, &a)
    }
}

fn hand_written_forward() -> bergson::Result<()> {
    tch::manual_seed(0);
    let opts = (Kind::Double, Device::Cpu);
    let layer = |name: &str, out: i64, inp: i64| Linear {
        name: name.into(),
        weight: Tensor::randn([out, inp], opts),
        bias: None,
        adapter: None,
    };
    let net = TinyMlp {
        up: layer("up", 5, 3),
        down: layer("down", 2, 5),
    };
    let target = |l: &Linear| Target {
        name: l.name.clone(),
        in_features: l.in_features(),
        out_features: l.out_features(),
        collect_bias: false,
        heads: None,
    };
    // No projection: each row is the full [out, in] weight gradient, row-major.
    let processor = GradientProcessor::default();
    let collector = GradientCollector::new(
        vec![target(&net.up), target(&net.down)],
        &processor,
        false,
        Kind::Double,
        Kind::Double,
        Device::Cpu,
    )?;

    // Three "documents" of four positions, three features each; loss ½‖y‖² per document.
    let x = Tensor::randn([3, 4, 3], opts);
    let mut hook = collector.hook();
    let y = net.forward(&x, &mut hook);
    let loss = y
        .f_pow_tensor_scalar(2)?
        .f_sum(Kind::Double)?
        .f_mul_scalar(0.5)?;
    let mask = collection_mask(&[4, 4, 4], 4)?;
    let grads = collector.backward(hook, &loss, &mask)?;

    // Plain autograd on document 1 alone gives the same `down` gradient.
    let w = net.down.weight.set_requires_grad(true);
    let y1 = net.forward(&x.f_narrow(0, 1, 1)?, &mut NoHook);
    y1.f_pow_tensor_scalar(2)?
        .f_sum(Kind::Double)?
        .f_mul_scalar(0.5)?
        .backward();
    let (_, down) = &grads.blocks[1];
    let err = (down.get(1) - w.grad().flatten(0, -1))
        .abs()
        .max()
        .double_value(&[]);
    println!(
        "down: rows {:?}, max |collector - autograd| = {err:.1e}",
        down.size()
    );
    assert!(err < 1e-12);
    Ok(())
}
