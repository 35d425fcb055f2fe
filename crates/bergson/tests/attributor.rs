//! The library's [`Attributor`] on a reference index Python Bergson 2.5.1 built: `trace` around
//! a hand-written forward and loss gives the same query gradients as `query_gradients`, and
//! `search` (exact, streamed) equals a dense float64 reference computed from the index rows:
//! all modules or a subset, top or bottom, raw or unit-normalised (Bergson's rules: index rows
//! divided by their norm over all modules, zero rows scoring 0; queries by norm + eps).

use std::path::{Path, PathBuf};

use bergson::query::{Attributor, AttributorOptions};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of a reference index (searches cache row norms beside the index).
fn index_copy(run: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = root().join("tests/fixtures/bergson/runs").join(run);
    let dst = tmp.path().join(run);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    (tmp, dst)
}

fn open(dir: &Path, unit_norm: bool) -> Attributor {
    Attributor::open(
        dir,
        AttributorOptions {
            unit_norm,
            ..AttributorOptions::default()
        },
    )
    .unwrap()
}

/// Dense scores `[Q, N]` in float64 over `modules`, with Bergson's normalisation.
fn dense(attr: &Attributor, q: &[(String, Tensor)], modules: &[String], unit: bool) -> Tensor {
    let index = attr.index();
    let n = index.num_rows();
    let all = index.rows(0..n).unwrap().to_kind(Kind::Double);
    let qs: Vec<Tensor> = attr
        .modules()
        .iter()
        .map(|m| {
            q.iter()
                .find(|(n, _)| n == m)
                .unwrap()
                .1
                .to_kind(Kind::Double)
        })
        .collect();
    let mut qcat = Tensor::cat(&qs, 1);
    let mut rows = all.shallow_clone();
    if unit {
        let norms = all
            .square()
            .sum_dim_intlist([1i64].as_slice(), true, Kind::Double)
            .sqrt();
        rows = (rows / norms).nan_to_num(0.0, 0.0, 0.0);
        let qn = qcat
            .square()
            .sum_dim_intlist([1i64].as_slice(), true, Kind::Double)
            .sqrt();
        qcat /= qn + 1.1920928955078125e-07;
    }
    let mut scores = Tensor::zeros([q[0].1.size()[0], n as i64], (Kind::Double, Device::Cpu));
    for m in modules {
        let cols = index.module_columns(m).unwrap();
        let (s, l) = (cols.start as i64, cols.len() as i64);
        scores += qcat.narrow(1, s, l).matmul(&rows.narrow(1, s, l).tr());
    }
    scores
}

fn setup(
    run: &str,
) -> (
    tempfile::TempDir,
    PathBuf,
    Box<dyn bergson::models::CausalLm>,
) {
    let (tmp, dir) = index_copy(run);
    let attr = open(&dir, false);
    let mut icfg = attr.index_config().unwrap().clone();
    icfg.model = root().join(&icfg.model).display().to_string();
    let (_, model_dir, _) = bergson::setup::load_tokenizer(&icfg).unwrap();
    let model = bergson::setup::load_model(&icfg, &model_dir, Device::Cpu).unwrap();
    (tmp, dir, model)
}

fn docs() -> Vec<bergson::data::tokenize::TokenizedRow> {
    let tok =
        bergson::data::tokenize::Tokenizer::from_dir(root().join("tests/fixtures/models/gpt_neox"))
            .unwrap();
    let enc = tok.encoder(None).unwrap();
    ["The quick brown fox", "Which example mattered?"]
        .iter()
        .map(|t| enc.encode_text(t).unwrap())
        .collect()
}

#[test]
fn trace_around_any_forward_equals_query_gradients() {
    let (_tmp, dir, model) = setup("arch_gpt_neox");
    let attr = open(&dir, false);
    let docs = docs();
    let want = attr
        .query_gradients(&*model, &docs[..1], attr.query_loss())
        .unwrap();
    // The same loss written by hand: summed next-token cross-entropy of one document.
    let ids = Tensor::from_slice(&docs[0].input_ids).unsqueeze(0);
    let got = attr
        .trace(&*model, |hook| {
            let hidden = model.hidden_with(&ids, hook);
            let logits = model.lm_head().forward(&hidden).to_kind(Kind::Float);
            let s = logits.size()[1];
            let loss = logits
                .narrow(1, 0, s - 1)
                .reshape([s - 1, -1])
                .cross_entropy_loss::<Tensor>(
                    &ids.narrow(1, 1, s - 1).reshape([-1]),
                    None,
                    tch::Reduction::Sum,
                    -100,
                    0.0,
                );
            Ok(loss.unsqueeze(0))
        })
        .unwrap();
    assert_eq!(got.len(), want.len());
    for ((n, g), (m, w)) in got.iter().zip(&want) {
        assert_eq!(n, m);
        let scale = w.abs().max().double_value(&[]);
        let err = (g - w).abs().max().double_value(&[]) / scale;
        assert!(err < 1e-5, "{n}: {err}");
    }
}

#[test]
fn streamed_search_equals_dense_reference() {
    let (_tmp, dir, model) = setup("arch_gpt_neox");
    for unit in [false, true] {
        let attr = open(&dir, unit);
        let q = attr
            .query_gradients(&*model, &docs(), attr.query_loss())
            .unwrap();
        let all = attr.modules();
        let subset: Vec<String> = all.iter().skip(2).step_by(3).cloned().collect();
        for (modules, restrict) in [(&all, None), (&subset, Some(subset.as_slice()))] {
            let reference = dense(&attr, &q, modules, unit);
            for reverse in [false, true] {
                let hits = attr.search(&q, Some(4), restrict, reverse).unwrap();
                let (want, _) = reference.topk(4, 1, !reverse, true);
                let scale = reference.abs().max().double_value(&[]);
                let err = (hits.scores.to_kind(Kind::Double) - &want)
                    .abs()
                    .max()
                    .double_value(&[])
                    / scale;
                assert!(
                    err < 1e-5,
                    "unit={unit} subset={} reverse={reverse}: {err}",
                    restrict.is_some()
                );
                // Each returned row really has its score (ties may pick either row).
                let picked = reference.gather(1, &hits.indices, false);
                let err = (picked - &want).abs().max().double_value(&[]) / scale;
                assert!(err < 1e-5);
            }
        }
        // k = None searches every row; k beyond the index is clamped.
        let n = attr.num_rows() as i64;
        assert_eq!(
            attr.search(&q, None, None, false).unwrap().scores.size(),
            [2, n]
        );
        assert_eq!(
            attr.search(&q, Some(1000), None, false)
                .unwrap()
                .scores
                .size(),
            [2, n]
        );
    }
}

#[test]
fn bad_queries_are_refused_with_the_reason() {
    let (_tmp, dir, _model) = setup("arch_gpt_neox");
    let attr = open(&dir, true);
    let name = attr.modules()[0].clone();
    let wrong = vec![(
        name.clone(),
        Tensor::zeros([1, 3], (Kind::Float, Device::Cpu)),
    )];
    let err = attr
        .search(&wrong, Some(1), None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("have shape [1, 3]") && err.contains("256 values"),
        "{err}"
    );
    let partial = vec![(name, Tensor::zeros([1, 256], (Kind::Float, Device::Cpu)))];
    let err = attr
        .search(&partial, Some(1), None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no gradients for the index's module"), "{err}");
    let missing = tempfile::tempdir().unwrap();
    let err = Attributor::open(missing.path().join("nope"), AttributorOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
}
