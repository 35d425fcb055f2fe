//! `bergson test_model_configuration` (Bergson's `diagnose`): is a model's per-example
//! gradient the same whether the example is alone or batched, right-padded, next to a longer
//! document; and does our tokenisation of chat conversations duplicate or drop BOS/EOS?
//!
//! Gradients are taken with respect to every weight of the model (Bergson's
//! `named_parameters()` with `p.grad`), one backward pass per (example, batch). Document
//! pairs are drawn with Python's `random.Random(seed)` replayed exactly
//! ([`draws`]), so for the same documents both implementations test the same pairs.

pub mod config;
pub mod draws;
pub mod gradients;
pub mod special_tokens;

use std::fmt::Write as _;
use std::io::Write;

pub use config::{DiagnoseConfig, DiagnosePrecision};
pub use gradients::{cosine, GradientProbe, Measurement};
pub use special_tokens::{check_special_tokens, SpecialTokenCheck};

use crate::data::columns::text_column;
use crate::data::source::load_dataset;
use crate::data::tokenize::Tokenizer;
use crate::models::hub::{resolve_model_dir, resolve_tokenizer_dir};
use crate::{Error, Result};

/// One trial of a configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trial {
    /// Trial number (from 0).
    pub trial: usize,
    /// Tokens of the tested (shorter) document.
    pub short_len: usize,
    /// Tokens of the document batched next to it.
    pub long_len: usize,
    /// Indices of the two documents in the document list (the second is `None` for the
    /// random-token partner of the equal-length trials).
    pub docs: (usize, Option<usize>),
    /// The measurement.
    pub measurement: Measurement,
}

/// The trials of one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigOutcome {
    /// The configuration, as Bergson labels it (`precision=bf16`, `--force_math_sdp ...`).
    pub label: String,
    /// Its trials.
    pub trials: Vec<Trial>,
    /// Trials whose cosine similarity is below the threshold.
    pub n_flagged: usize,
    /// The smallest cosine similarity.
    pub min_cos_sim: f64,
}

/// Everything the diagnosis found.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    /// The special-token check passed.
    pub special_tokens_ok: bool,
    /// The equal-length (no padding) trials, with the base settings.
    pub equal_length: ConfigOutcome,
    /// The padding trials, one per configuration tried, in escalation order; the last one
    /// passed, or every one failed.
    pub padding: Vec<ConfigOutcome>,
    /// The documents (token ids after `--min_len` / `--max_len`).
    pub documents: Vec<Vec<i64>>,
}

/// A configuration of the escalation: its label, precision and attention kernel.
struct Setting {
    label: String,
    precision: DiagnosePrecision,
    math_attention: bool,
}

/// The configurations tried in order until one passes: the base settings, then the math
/// attention kernel, then float32 with it. Bergson also tries TF32 matmuls; bergson-rs has no
/// TF32 switch (float32 matmuls run at full precision), so those steps are left out.
fn escalation(base: DiagnosePrecision) -> Vec<Setting> {
    let mut settings = vec![Setting {
        label: format!("precision={}", base.name()),
        precision: base,
        math_attention: false,
    }];
    if base != DiagnosePrecision::Fp32 {
        settings.push(Setting {
            label: format!("--force_math_sdp (precision={})", base.name()),
            precision: base,
            math_attention: true,
        });
        settings.push(Setting {
            label: "--precision fp32 --force_math_sdp".into(),
            precision: DiagnosePrecision::Fp32,
            math_attention: true,
        });
    }
    settings
}

/// Refuses impossible settings up front.
fn check_config(cfg: &DiagnoseConfig) -> Result<()> {
    if cfg.n_trials == 0 {
        return Err(Error::input(
            "--n_trials must be positive (Bergson's default is 100)",
        ));
    }
    if cfg.min_len < 2 {
        return Err(Error::input(
            "--min_len must be at least 2: a next-token loss needs two tokens",
        ));
    }
    if cfg.max_len < cfg.min_len {
        return Err(Error::input(format!(
            "--max_len {} is below --min_len {}; raise --max_len",
            cfg.max_len, cfg.min_len
        )));
    }
    if !cfg.threshold.is_finite() {
        return Err(Error::input(
            "--threshold must be a finite number (e.g. 0.99)",
        ));
    }
    diagnose_model_kwargs(&cfg.model_kwargs)?;
    Ok(())
}

/// `--model_kwargs` of the diagnosis: config overrides only, since Bergson passes
/// `attn_implementation` itself (a second one is Python's 'multiple values' error).
fn diagnose_model_kwargs(text: &str) -> Result<crate::models::kwargs::ModelKwargs> {
    let kwargs = crate::models::kwargs::ModelKwargs::parse(text)?;
    if kwargs.attention.is_some() {
        return Err(Error::input(
            "--model_kwargs attn_implementation=...: test_model_configuration sets the attention itself (Python raises 'got multiple values'); use --force_math_sdp to test the math kernel",
        ));
    }
    Ok(kwargs)
}

/// The `text` column of the dataset, tokenised with the tokenizer's special tokens, documents
/// shorter than `--min_len` skipped and longer ones truncated to `--max_len`.
pub fn load_documents(cfg: &DiagnoseConfig, tokenizer: &Tokenizer) -> Result<Vec<Vec<i64>>> {
    let batch = load_dataset(&cfg.dataset, &cfg.split, None)?;
    let texts = text_column(&batch, "text", "--dataset")?;
    let rows = tokenizer.encoder(None)?.encode_texts(&texts.values())?;
    Ok(rows
        .into_iter()
        .map(|r| r.input_ids)
        .filter(|ids| ids.len() >= cfg.min_len)
        .map(|mut ids| {
            ids.truncate(cfg.max_len);
            ids
        })
        .collect())
}

/// Runs the diagnosis, writing Bergson's report to `out` as it goes.
pub fn diagnose(cfg: &DiagnoseConfig, out: &mut dyn Write) -> Result<Diagnosis> {
    check_config(cfg)?;
    let device = crate::engine::parse_device(&cfg.device)?;
    let model_dir = resolve_model_dir(&cfg.model, None)?;
    let tokenizer = Tokenizer::from_dir(resolve_tokenizer_dir(&cfg.model)?)?;
    let mut w = Writer(out);

    w.line(format!("Model:     {}", cfg.model))?;
    w.line(format!("Precision: {}", cfg.precision.name()))?;
    w.line(format!("Device:    {}", device_name(device)))?;
    w.line(format!("Trials:    {} per configuration", cfg.n_trials))?;
    w.line(format!("Threshold: {}", cfg.threshold))?;

    let special = check_special_tokens(&tokenizer, &cfg.model)?;
    w.text(&special.text)?;

    w.line(format!("\nLoading {}...", cfg.dataset))?;
    let documents = load_documents(cfg, &tokenizer)?;
    w.line(format!(
        "Documents: {} (lengths {}-{})",
        documents.len(),
        cfg.min_len,
        cfg.max_len
    ))?;
    if documents.len() < 2 {
        return Err(Error::input(format!(
            "{} has {} document(s) of at least --min_len {} tokens; the diagnosis needs two",
            cfg.dataset,
            documents.len(),
            cfg.min_len
        )));
    }

    // Equal-length trials: each document batched with random tokens of its own length, so no
    // padding is involved (does divergence come from padding or from batching itself?).
    w.section("Testing: equal-length batching (no padding)")?;
    let kwargs = diagnose_model_kwargs(&cfg.model_kwargs)?;
    let probe = GradientProbe::load(
        &model_dir,
        cfg.precision.precision(),
        device,
        false,
        &kwargs,
    )?;
    let lengths: Vec<usize> = documents.iter().map(Vec::len).collect();
    let vocab = tokenizer.inner().get_vocab_size(false) as u64;
    let vocab = probe
        .model()
        .vocab_size()
        .map_or(vocab, |v| vocab.min(v as u64));
    let draws = draws::equal_length_draws(&lengths, vocab, cfg.n_trials, cfg.seed);
    let mut trials = Vec::with_capacity(draws.len());
    for (trial, (doc, random_ids)) in draws.into_iter().enumerate() {
        let measurement = probe.measure(&documents[doc], &random_ids)?;
        trials.push(Trial {
            trial,
            short_len: lengths[doc],
            long_len: random_ids.len(),
            docs: (doc, None),
            measurement,
        });
    }
    drop(probe);
    let equal_length = outcome("equal-length batching".into(), trials, cfg.threshold);
    w.text(&results_table(&equal_length, cfg.threshold))?;

    // Padding trials, escalating until a configuration passes.
    let pairs = draws::sample_pairs(documents.len(), cfg.n_trials, cfg.seed);
    let mut padding = Vec::new();
    for setting in escalation(cfg.precision) {
        w.section(&format!("Testing: {}", setting.label))?;
        let probe = GradientProbe::load(
            &model_dir,
            setting.precision.precision(),
            device,
            setting.math_attention,
            &kwargs,
        )?;
        let mut trials = Vec::with_capacity(pairs.len());
        for (trial, &(i, j)) in pairs.iter().enumerate() {
            let (a, b) = if documents[i].len() > documents[j].len() {
                (j, i)
            } else {
                (i, j)
            };
            let measurement = probe.measure(&documents[a], &documents[b])?;
            trials.push(Trial {
                trial,
                short_len: documents[a].len(),
                long_len: documents[b].len(),
                docs: (a, Some(b)),
                measurement,
            });
        }
        let result = outcome(setting.label, trials, cfg.threshold);
        w.text(&results_table(&result, cfg.threshold))?;
        let passed = result.n_flagged == 0;
        padding.push(result);
        if passed {
            break;
        }
    }

    let diagnosis = Diagnosis {
        special_tokens_ok: special.ok,
        equal_length,
        padding,
        documents,
    };
    w.text(&final_report(cfg, &diagnosis))?;
    Ok(diagnosis)
}

fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    }
}

fn outcome(label: String, trials: Vec<Trial>, threshold: f64) -> ConfigOutcome {
    let n_flagged = trials
        .iter()
        .filter(|t| t.measurement.cos_sim < threshold)
        .count();
    let min_cos_sim = trials
        .iter()
        .map(|t| t.measurement.cos_sim)
        .fold(f64::INFINITY, f64::min);
    ConfigOutcome {
        label,
        trials,
        n_flagged,
        min_cos_sim,
    }
}

/// Bergson's `_print_results`: one row per trial (flagged rows marked `<<<`) and a summary.
pub fn results_table(outcome: &ConfigOutcome, threshold: f64) -> String {
    let mut t = String::new();
    let header = format!(
        "{:>6} {:>6} {:>6} {:>6} {:>10} {:>12}",
        "trial", "short", "long", "ratio", "cos_sim", "loss_diff"
    );
    let _ = writeln!(t, "{header}\n{}", "-".repeat(header.len()));
    for r in &outcome.trials {
        let m = r.measurement;
        let marker = if m.cos_sim < threshold { " <<<" } else { "" };
        let _ = writeln!(
            t,
            "{:>6} {:>6} {:>6} {:>6.1} {:>10.6} {:>12.6}{marker}",
            r.trial,
            r.short_len,
            r.long_len,
            r.long_len as f64 / r.short_len as f64,
            m.cos_sim,
            m.loss_diff
        );
    }
    let cos: Vec<f64> = outcome
        .trials
        .iter()
        .map(|r| r.measurement.cos_sim)
        .collect();
    let n = cos.len() as f64;
    let mean = cos.iter().sum::<f64>() / n;
    // torch's `std` is the sample (n - 1) standard deviation; NaN for one trial, as there.
    let std = (cos.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let max = cos.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let _ = writeln!(
        t,
        "\n  Cos sim:  mean={mean:.6}  std={std:.6}  min={:.6}  max={max:.6}",
        outcome.min_cos_sim
    );
    let _ = writeln!(
        t,
        "  Flagged:  {}/{} trials below {threshold}",
        outcome.n_flagged,
        outcome.trials.len()
    );
    t
}

/// The final report: PASS/FAIL per check and the settings to use.
fn final_report(cfg: &DiagnoseConfig, d: &Diagnosis) -> String {
    let mut t = String::new();
    let bar = "=".repeat(60);
    let _ = writeln!(
        t,
        "\n{bar}\nReport for {}\n  {} trials per configuration\n{bar}",
        cfg.model, cfg.n_trials
    );
    let status = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let _ = writeln!(
        t,
        "  {}  Special token check (chat template BOS/EOS)",
        status(d.special_tokens_ok)
    );
    let _ = writeln!(
        t,
        "  {}  Equal-length batching (min cos_sim={:.6})",
        status(d.equal_length.n_flagged == 0),
        d.equal_length.min_cos_sim
    );
    for c in &d.padding {
        let _ = writeln!(
            t,
            "  {}  {}  (min cos_sim={:.6})",
            status(c.n_flagged == 0),
            c.label,
            c.min_cos_sim
        );
    }
    let _ = writeln!(t);
    let passing = d.padding.iter().find(|c| c.n_flagged == 0);
    match passing {
        Some(c) if std::ptr::eq(c, &d.padding[0]) => {
            let _ = writeln!(
                t,
                "RESULT: Gradients are consistent with default settings. No special flags needed."
            );
        }
        Some(c) => {
            let _ = writeln!(
                t,
                "RESULT: Gradients require non-default settings for consistency."
            );
            let _ = writeln!(t, "  Minimum required: {}", c.label);
            let mut flags = vec!["--force_math_sdp"];
            if c.label.starts_with("--precision fp32") {
                flags.push("--precision fp32");
            }
            let _ = writeln!(
                t,
                "\n  Add to your bergson commands:\n    bergson build <run_path> --model {} {}",
                cfg.model,
                flags.join(" ")
            );
        }
        None => {
            let _ = writeln!(
                t,
                "RESULT: Gradient inconsistency persists across all tested configurations. This model may have architecture-level padding sensitivity."
            );
        }
    }
    t
}

/// Writes report text, turning I/O errors into ours.
struct Writer<'a>(&'a mut dyn Write);

impl Writer<'_> {
    fn text(&mut self, s: &str) -> Result<()> {
        self.0
            .write_all(s.as_bytes())
            .and_then(|()| self.0.flush())
            .map_err(|e| Error::io("the report output", e))
    }

    fn line(&mut self, s: String) -> Result<()> {
        self.text(&(s + "\n"))
    }

    fn section(&mut self, title: &str) -> Result<()> {
        let bar = "=".repeat(60);
        self.text(&format!("\n{bar}\n{title}\n{bar}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python 3.11: `r = random.Random(42); [r.sample(range(n), 2) for _ in range(6)]`, for
    /// both of CPython's branches (pool for n <= 21, rejection above).
    #[test]
    fn sample_pairs_replay_python() {
        let want12 = [(10, 1), (0, 4), (3, 11), (2, 1), (10, 8), (1, 9)];
        let want30 = [(20, 3), (0, 23), (8, 7), (7, 4), (23, 3), (21, 23)];
        assert_eq!(draws::sample_pairs(12, 6, 42), want12);
        assert_eq!(draws::sample_pairs(30, 6, 42), want30);
    }

    /// Python 3.11: `r = random.Random(7)`, then twice `d = r.randrange(3)` and
    /// `[r.randrange(50) for _ in range([3, 2, 4][d])]`.
    #[test]
    fn equal_length_draws_replay_python() {
        let got = draws::equal_length_draws(&[3, 2, 4], 50, 2, 7);
        assert_eq!(got, vec![(1, vec![9, 25]), (2, vec![3, 4, 34, 6])]);
    }
}
