//! `bergson leaderboard`: Bergson's leaderboard design at CPU size. A tiny GPT-NeoX (the
//! demo's model) is fine-tuned on a generated corpus; every attribution method scores the
//! training documents against held-out questions; one set of leave-1%-out retrains gives every
//! method's LDS, and retrains without each method's top proponents its QLD. With `BERGSON_PY`
//! (a Python with Bergson 2.5.1), Python Bergson computes the same methods' scores with the
//! same flags, measured against the same retrains, so both tools' rows share one table.
//!
//! Every step is a sub-directory of the run path, run as a child process of this binary (or of
//! Python Bergson) with the command line a user would type, logged to `<step>.log`, and kept
//! when it finished: rerunning the command resumes at the first unfinished step.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use bergson::leaderboard::chart::{write_chart, Bar};
use bergson::leaderboard::evaluate::{lds, mean_with_ci, top_proponents, Estimate};
use bergson::leaderboard::{bm25::bm25_scores, corpus, markdown_table, Row, Tool};
use bergson::validate::journal::write_atomic;
use bergson::validate::scores::LossSignedScores;
use clap::{Args, Parser};

use crate::build::{install_interrupt_handler, run_options, RuntimeArgs};

/// Flags of `bergson leaderboard`.
#[derive(Debug, Args)]
#[command(rename_all = "snake_case")]
pub struct LeaderboardArgs {
    /// Run directory; rerunning with the same flags resumes at the first unfinished step.
    #[arg(default_value = "runs/leaderboard")]
    pub run_path: PathBuf,
    /// Training documents generated.
    #[arg(long, default_value_t = 1200)]
    pub docs: usize,
    /// Held-out questions (score columns).
    #[arg(long, default_value_t = 32)]
    pub queries: usize,
    /// Leave-out subsets retrained for the LDS.
    #[arg(long, default_value_t = 50)]
    pub subsets: usize,
    /// Share of the documents left out per subset and removed for the QLD.
    #[arg(long, default_value_t = 0.01)]
    pub fraction: f64,
    /// Queries whose top proponents are removed for the QLD, per method (0: no QLD).
    #[arg(long, default_value_t = 8)]
    pub qld_queries: usize,
    /// Random removals of as many documents, the QLD's control.
    #[arg(long, default_value_t = 5)]
    pub qld_controls: usize,
    /// Seed of the corpus, the subsets and the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Methods to run (comma-separated keys; default all): magic, ekfac, shampoo, trackstar,
    /// trak, lissa, source, cosine, bm25.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// A Python with Bergson 2.5.1 (default: $BERGSON_PY): its scores for the same methods become rows of the table.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// How to run it.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// The fine-tuning every method attributes (and every retrain repeats).
/// A 25% linear warm-up keeps the first steps (the ones MAGIC's replay is most sensitive to) small:
/// it lifted MAGIC's LDS from 0.85 to 0.94 on 600 documents at the same learning rate.
const TRAIN_FLAGS: [&str; 10] = [
    "--batch_size",
    "16",
    "--lr",
    "1e-3",
    "--warmup_steps",
    "0.25",
    "--num_epochs",
    "1",
    "--seed",
    "42",
];

/// A method: its key, its name in the table, and its command lines.
struct Method {
    key: &'static str,
    name: &'static str,
    /// Python Bergson runs it with the same command lines.
    python: bool,
}

const METHODS: [Method; 9] = [
    Method {
        key: "magic",
        name: "MAGIC (per-query)",
        python: true,
    },
    Method {
        key: "ekfac",
        name: "EK-FAC",
        python: true,
    },
    Method {
        key: "shampoo",
        name: "Shampoo (EK-FAC pipeline)",
        python: true,
    },
    Method {
        key: "trackstar",
        name: "TrackStar (proj 16)",
        python: true,
    },
    Method {
        key: "trak",
        name: "TRAK (global, proj 64)",
        python: true,
    },
    Method {
        key: "lissa",
        name: "LiSSA (depth 100)",
        python: true,
    },
    Method {
        key: "source",
        name: "SOURCE (3 segments)",
        python: true,
    },
    Method {
        key: "cosine",
        name: "Gradient cosine (proj 64)",
        python: true,
    },
    Method {
        key: "bm25",
        name: "BM25",
        python: false,
    },
];

/// The run's paths.
struct Paths {
    run: PathBuf,
    train: PathBuf,
    queries: PathBuf,
    base_model: PathBuf,
    tuned_model: PathBuf,
}

impl Paths {
    fn new(run: &Path) -> Self {
        Paths {
            run: run.to_path_buf(),
            train: run.join("data/train.jsonl"),
            queries: run.join("data/queries.jsonl"),
            base_model: run.join("base/model"),
            tuned_model: run.join("train/model"),
        }
    }

    fn s(p: &Path) -> String {
        p.display().to_string()
    }

    /// `cmd dir` on the base model with the training and query data and the fine-tuning's
    /// flags: the command lines that train (magic) or retrain (validate) as the fine-tuning did.
    fn retraining(&self, cmd: &str, dir: &Path) -> Vec<String> {
        let mut v = vec![
            cmd.to_string(),
            Self::s(dir),
            "--model".into(),
            Self::s(&self.base_model),
            "--data.dataset".into(),
            Self::s(&self.train),
            "--query.dataset".into(),
            Self::s(&self.queries),
        ];
        v.extend(strings(&TRAIN_FLAGS));
        v
    }

    /// The training and query data as the recipes spell them, with the per-query scores.
    fn data_flags(&self) -> Vec<String> {
        vec![
            "--data.dataset".into(),
            Self::s(&self.train),
            "--query.dataset".into(),
            Self::s(&self.queries),
            "--query.aggregation".into(),
            "none".into(),
        ]
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The command lines (without the program) that leave `<dir>/scores`.
fn command_lines(key: &str, p: &Paths, dir: &Path, checkpoints: &[PathBuf]) -> Vec<Vec<String>> {
    let d = Paths::s(dir);
    let tuned = Paths::s(&p.tuned_model);
    let recipe = |cmd: &str, extra: &[&str]| {
        let mut v = vec![cmd.to_string(), d.clone(), "--model".into(), tuned.clone()];
        v.extend(p.data_flags());
        v.extend(strings(extra));
        v
    };
    match key {
        "magic" => {
            let mut v = p.retraining("magic", dir);
            v.extend(strings(&["--aggregation", "none"]));
            vec![v]
        }
        "ekfac" => vec![recipe(
            "ekfac",
            &["--method", "kfac", "--hessian_cfg.ev_correction", "true"],
        )],
        "shampoo" => vec![recipe("ekfac", &["--method", "shampoo"])],
        // TrackStar's own default projection (16): its autocorrelation Hessians are square in
        // the projected width per module, so 64 would mean 4096² eigendecompositions.
        "trackstar" => vec![recipe("trackstar", &[])],
        "trak" => vec![recipe(
            "trak",
            &[
                "--projection_target",
                "global",
                "--loss_fn",
                "log_odds",
                "--projection_dim",
                "64",
            ],
        )],
        "lissa" => vec![recipe(
            "lissa",
            // A CPU-sized series: each term is a Gauss-Newton product per query.
            &[
                "--depth",
                "100",
                "--repeats",
                "1",
                "--lissa_cfg.batch_size",
                "8",
                "--scale",
                "100",
            ],
        )],
        "source" => {
            // approxunrolling spells the query's aggregation `--aggregation` (its only one).
            let mut v = recipe(
                "approxunrolling",
                &[
                    "--method",
                    "kfac",
                    "--ev_correction",
                    "true",
                    "--segments",
                    "3",
                ],
            );
            if let Some(i) = v.iter().position(|a| a == "--query.aggregation") {
                v[i] = "--aggregation".into();
            }
            v.push("--checkpoints".into());
            v.extend(checkpoints.iter().map(|c| Paths::s(c)));
            vec![v]
        }
        "cosine" => {
            let query = Paths::s(&dir.join("query"));
            vec![
                vec![
                    "build".into(),
                    query.clone(),
                    "--model".into(),
                    tuned.clone(),
                    "--dataset".into(),
                    Paths::s(&p.queries),
                    "--projection_dim".into(),
                    "64".into(),
                ],
                vec![
                    "score".into(),
                    Paths::s(&dir.join("scores")),
                    "--query_path".into(),
                    query,
                    "--model".into(),
                    tuned,
                    "--dataset".into(),
                    Paths::s(&p.train),
                    "--projection_dim".into(),
                    "64".into(),
                    "--unit_normalize".into(),
                ],
            ]
        }
        _ => Vec::new(),
    }
}

/// Runs `program args` with its output in `log`; an error names the step and the log.
fn run_logged(
    program: &Path,
    pre: &[String],
    args: &[String],
    log: &Path,
    env: &[(&str, String)],
) -> anyhow::Result<()> {
    let out = fs::File::create(log).with_context(|| format!("cannot write {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(pre)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", program.display()))?;
    bergson::interrupt::check()?;
    if !status.success() {
        let tail = fs::read_to_string(log).unwrap_or_default();
        let last = tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!(
            "`{} {}` failed ({status}): {last}; see {}",
            program.display(),
            args.first().map(String::as_str).unwrap_or_default(),
            log.display()
        );
    }
    Ok(())
}

/// Seconds each finished step took, kept in `<run>/timings.json` across resumed runs.
struct Timings {
    path: PathBuf,
    seconds: BTreeMap<String, f64>,
}

impl Timings {
    fn open(run: &Path) -> anyhow::Result<Self> {
        let path = run.join("timings.json");
        let seconds = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        Ok(Timings { path, seconds })
    }

    fn record(&mut self, key: &str, s: f64) -> anyhow::Result<()> {
        self.seconds.insert(key.to_string(), s);
        write_atomic(&self.path, &serde_json::to_vec_pretty(&self.seconds)?)?;
        Ok(())
    }
}

/// Runs `lines` unless `done` exists; a half-finished `dir` is removed first.
#[allow(clippy::too_many_arguments)]
fn step(
    label: &str,
    dir: &Path,
    done: &Path,
    program: &Path,
    pre: &[String],
    lines: &[Vec<String>],
    env: &[(&str, String)],
    timings: &mut Timings,
) -> anyhow::Result<()> {
    if done.exists() {
        eprintln!("{label}: done before, kept");
        return Ok(());
    }
    if dir.exists() {
        bergson::index::removal::remove_scratch(dir)?;
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    eprintln!("{label}: running (log: {}.log)", dir.display());
    let start = Instant::now();
    for (i, args) in lines.iter().enumerate() {
        let log = PathBuf::from(format!(
            "{}{}.log",
            dir.display(),
            if i > 0 {
                format!(".{i}")
            } else {
                String::new()
            }
        ));
        run_logged(program, pre, args, &log, env)?;
    }
    let s = start.elapsed().as_secs_f64();
    timings.record(label, s)?;
    eprintln!("{label}: {s:.1} s");
    Ok(())
}

/// The settings a run directory was made with; a resumed run must repeat them.
fn check_settings(a: &LeaderboardArgs) -> anyhow::Result<()> {
    let settings = serde_json::json!({
        "docs": a.docs, "queries": a.queries, "subsets": a.subsets, "fraction": a.fraction,
        "qld_queries": a.qld_queries, "qld_controls": a.qld_controls, "seed": a.seed,
        "train": TRAIN_FLAGS,
    });
    let path = a.run_path.join("settings.json");
    if let Ok(b) = fs::read(&path) {
        let old: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        if old != settings {
            return Err(bergson::Error::input(format!(
                "{} holds a leaderboard made with other settings ({old}); give another run path, or the same flags to resume it",
                a.run_path.display()
            ))
            .into());
        }
        return Ok(());
    }
    fs::create_dir_all(&a.run_path)?;
    write_atomic(&path, &serde_json::to_vec_pretty(&settings)?)?;
    Ok(())
}

/// The `step_<n>.ckpt` checkpoints of the fine-tuning, the last `count` (a multiple of the
/// segments) in order.
fn checkpoints(train: &Path, count: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut steps: Vec<(u64, PathBuf)> = fs::read_dir(train.join("checkpoints"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name
                .strip_prefix("step_")?
                .strip_suffix(".ckpt")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    steps.sort();
    let skip = steps.len().saturating_sub(count);
    Ok(steps.into_iter().skip(skip).map(|s| s.1).collect())
}

/// Reads `validation.csv` (`subset,query,diff,score_sum`) into `diffs[subset][query]`.
fn read_diffs(path: &Path, subsets: usize, queries: usize) -> anyhow::Result<Vec<Vec<f64>>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut diffs = vec![vec![f64::NAN; queries]; subsets];
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if let [s, q, d, _] = f.as_slice() {
            let (s, q): (usize, usize) = (s.parse()?, q.parse()?);
            if s < subsets && q < queries {
                diffs[s][q] = d.parse()?;
            }
        }
    }
    Ok(diffs)
}

/// A score source of the table: a scored run, or BM25 computed here.
struct Scored {
    method: &'static str,
    key: &'static str,
    tool: Tool,
    scores: LossSignedScores,
    seconds: f64,
}

/// The QLD's validation, parsed from the same flags `bergson validate` takes.
#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct ValidateCli {
    #[command(flatten)]
    args: crate::validate::ValidateArgs,
}

/// Runs `bergson leaderboard`.
pub fn run(a: &LeaderboardArgs) -> anyhow::Result<()> {
    install_interrupt_handler();
    let opts = run_options(&a.runtime)?;
    if a.docs < 100 || a.queries == 0 || a.queries * 6 > a.docs {
        return Err(bergson::Error::input(format!(
            "--docs {} --queries {}: give at least 100 documents and at most one query per 6 documents",
            a.docs, a.queries
        ))
        .into());
    }
    if !(a.fraction > 0.0 && a.fraction < 1.0) || a.subsets < 3 {
        return Err(
            bergson::Error::input("--fraction must be in (0, 1) and --subsets at least 3").into(),
        );
    }
    let wanted: Vec<&Method> = if a.methods.is_empty() {
        METHODS.iter().collect()
    } else {
        let mut v = Vec::new();
        for k in &a.methods {
            match METHODS.iter().find(|m| m.key == k) {
                Some(m) => v.push(m),
                None => {
                    let keys: Vec<&str> = METHODS.iter().map(|m| m.key).collect();
                    return Err(bergson::Error::input(format!(
                        "--methods {k}: unknown method; choose from {}",
                        keys.join(", ")
                    ))
                    .into());
                }
            }
        }
        v
    };
    check_settings(a)?;
    let p = Paths::new(&a.run_path);
    let mut timings = Timings::open(&p.run)?;
    let total = Instant::now();

    // 1. The corpus and the model to fine-tune.
    let corpus = corpus::generate(a.seed, a.docs, a.queries);
    if !p.queries.exists() {
        corpus.write(&p.run.join("data"))?;
    }
    if !p.base_model.join("model.safetensors").exists() {
        crate::demo::write_assets(&p.run.join("base"))?;
    }
    let me = std::env::current_exe()?;
    let mut runtime_flags = vec!["--quiet".to_string()];
    if let Some(n) = a.runtime.num_threads {
        runtime_flags.extend(["--num_threads".to_string(), n.to_string()]);
    }
    let ours = |mut v: Vec<String>| {
        v.extend(runtime_flags.iter().cloned());
        v
    };

    // 2. The fine-tuning every method attributes.
    let mut train = vec![
        "train".to_string(),
        Paths::s(&p.run.join("train")),
        "--model".into(),
        Paths::s(&p.base_model),
        "--dataset".into(),
        Paths::s(&p.train),
        "--save_models".into(),
        "--save_mode".into(),
        "all".into(),
    ];
    train.extend(strings(&TRAIN_FLAGS));
    step(
        "fine-tuning",
        &p.run.join("train"),
        &p.tuned_model.join("config.json"),
        &me,
        &[],
        &[ours(train)],
        &[],
        &mut timings,
    )?;
    let ckpts = checkpoints(&p.run.join("train"), 6)?;

    // 3. Every method's scores, ours and (with BERGSON_PY) Python Bergson's.
    let mut scored: Vec<Scored> = Vec::new();
    let tools: Vec<(Tool, PathBuf, Vec<String>, &str)> = {
        let mut t = vec![(Tool::BergsonRs, me.clone(), Vec::new(), "methods")];
        let python = a
            .python
            .clone()
            .or_else(|| std::env::var_os("BERGSON_PY").map(PathBuf::from));
        if let Some(py) = &python {
            t.push((
                Tool::PythonBergson,
                py.clone(),
                strings(&["-m", "bergson"]),
                "python",
            ));
        }
        t
    };
    let threads = a.runtime.num_threads.unwrap_or(2).to_string();
    for (tool, program, pre, folder) in &tools {
        for m in &wanted {
            if m.key == "bm25" || (*tool == Tool::PythonBergson && !m.python) {
                continue;
            }
            let dir = p.run.join(folder).join(m.key);
            let mut lines = command_lines(m.key, &p, &dir, &ckpts);
            let env = if *tool == Tool::BergsonRs {
                lines = lines.into_iter().map(&ours).collect();
                Vec::new()
            } else {
                vec![
                    ("OMP_NUM_THREADS", threads.clone()),
                    ("TOKENIZERS_PARALLELISM", "false".into()),
                ]
            };
            let label = format!("{} / {}", tool.name(), m.key);
            let scores_dir = dir.join("scores");
            step(
                &label,
                &dir,
                &scores_dir.join("info.json"),
                program,
                pre,
                &lines,
                &env,
                &mut timings,
            )?;
            let scores = LossSignedScores::load(&scores_dir)?;
            if scores.num_docs != a.docs
                || scores.num_queries != a.queries
                || scores.seq_len.is_some()
            {
                bail!(
                    "{}: {} documents × {} queries, expected {} × {}",
                    scores_dir.display(),
                    scores.num_docs,
                    scores.num_queries,
                    a.docs,
                    a.queries
                );
            }
            scored.push(Scored {
                method: m.name,
                key: m.key,
                tool: *tool,
                scores,
                seconds: timings.seconds.get(&label).copied().unwrap_or(f64::NAN),
            });
        }
    }
    if wanted.iter().any(|m| m.key == "bm25") {
        let start = Instant::now();
        let queries: Vec<String> = corpus.queries.iter().map(|q| q.text.clone()).collect();
        // BM25 is higher-is-better; loss-signed scores are negative for proponents.
        let values = bm25_scores(&corpus.train, &queries)
            .iter()
            .map(|v| -*v as f32)
            .collect();
        scored.push(Scored {
            method: "BM25",
            key: "bm25",
            tool: Tool::BergsonRs,
            scores: LossSignedScores {
                values,
                num_queries: a.queries,
                num_docs: a.docs,
                seq_len: None,
            },
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let Some(first_dir) = scored.iter().find(|s| s.key != "bm25").map(|s| {
        p.run
            .join(if s.tool == Tool::BergsonRs {
                "methods"
            } else {
                "python"
            })
            .join(s.key)
            .join("scores")
    }) else {
        bail!("--methods {}: give at least one model-based method (the retrains need a score directory)", a.methods.join(","));
    };

    // 4. The LDS retrains, shared by every method.
    let lds_dir = p.run.join("lds");
    let mut validate = p.retraining("validate", &lds_dir);
    validate.extend([
        "--scores".into(),
        Paths::s(&first_dir),
        "--method".into(),
        "lds".into(),
        "--count".into(),
        a.subsets.to_string(),
        "--fraction".into(),
        a.fraction.to_string(),
    ]);
    if lds_dir.join("subsets.json").exists() {
        validate.push("--resume".into());
    }
    let validation = lds_dir.join("validation.csv");
    if !validation.exists() {
        eprintln!(
            "LDS retrains: {} subsets (log: {}.log)",
            a.subsets,
            lds_dir.display()
        );
        let start = Instant::now();
        run_logged(
            &me,
            &[],
            &ours(validate),
            &PathBuf::from(format!("{}.log", lds_dir.display())),
            &[],
        )?;
        timings.record("lds retrains", start.elapsed().as_secs_f64())?;
    }
    let subsets = bergson::validate::subsets::read_subsets(&lds_dir.join("subsets.json"))?;
    let diffs = read_diffs(&validation, subsets.len(), a.queries)?;

    // 5. The QLD retrains.
    let qld = if a.qld_queries > 0 {
        Some(qld_retrains(
            a,
            &p,
            &first_dir,
            &scored,
            opts.device,
            &mut timings,
        )?)
    } else {
        None
    };

    // 6. The table.
    let mut rows = Vec::new();
    for s in &scored {
        let sums: Vec<Vec<f64>> = subsets.iter().map(|u| s.scores.sums(u)).collect();
        let qld_est = qld.as_ref().map(|(per, _)| {
            let v: Vec<f64> = (0..a.qld_queries.min(a.queries))
                .map(|q| {
                    per.get(&(s.tool.name().to_string(), s.key.to_string(), q))
                        .copied()
                        .unwrap_or(f64::NAN)
                })
                .collect();
            mean_with_ci(&v, a.seed)
        });
        rows.push(Row {
            method: s.method.to_string(),
            tool: s.tool,
            lds: lds(&diffs, &sums, a.seed),
            qld: qld_est,
            seconds: s.seconds,
        });
    }
    write_outputs(
        a,
        &p,
        &rows,
        qld.as_ref().map(|q| q.1),
        &timings,
        total.elapsed().as_secs_f64(),
    )
}

/// Retrains without each row's top proponents of each of the first `--qld_queries` queries,
/// and `--qld_controls` random removals; journaled in `<run>/qld.csv` (a rerun skips what is
/// there). Returns the loss change per (tool, method, query) and the controls' mean change.
#[allow(clippy::type_complexity)]
fn qld_retrains(
    a: &LeaderboardArgs,
    p: &Paths,
    scores_dir: &Path,
    scored: &[Scored],
    device: tch::Device,
    timings: &mut Timings,
) -> anyhow::Result<(BTreeMap<(String, String, usize), f64>, Estimate)> {
    let journal = p.run.join("qld.csv");
    let mut done: BTreeMap<(String, String, usize), f64> = BTreeMap::new();
    if let Ok(text) = fs::read_to_string(&journal) {
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if let [tool, key, q, v] = f.as_slice() {
                if let (Ok(q), Ok(v)) = (q.parse(), v.parse()) {
                    done.insert((tool.to_string(), key.to_string(), q), v);
                }
            }
        }
    }
    let nq = a.qld_queries.min(a.queries);
    let k = ((a.fraction * a.docs as f64).round() as usize).max(1);
    let controls = bergson::validate::subsets::control_subsets(
        &(0..a.docs).collect::<Vec<_>>(),
        k,
        a.qld_controls,
        a.seed,
    );
    let mut todo: Vec<(String, String, usize, Vec<usize>)> = Vec::new();
    for s in scored {
        for q in 0..nq {
            let key = (s.tool.name().to_string(), s.key.to_string(), q);
            if done.contains_key(&key) {
                continue;
            }
            let col: Vec<f64> = (0..a.docs).map(|d| f64::from(s.scores.row(d)[q])).collect();
            todo.push((key.0, key.1, q, top_proponents(&col, k)));
        }
    }
    for (i, c) in controls.iter().enumerate() {
        let key = ("control".to_string(), i.to_string(), 0);
        if !done.contains_key(&key) {
            todo.push((key.0, key.1, usize::MAX, c.clone()));
        }
    }
    if !todo.is_empty() {
        eprintln!(
            "QLD retrains: {} to go (journal: {})",
            todo.len(),
            journal.display()
        );
        let mut argv = p.retraining("validate", &p.run.join("qld"));
        argv.extend([
            "--scores".into(),
            Paths::s(scores_dir),
            "--overwrite".into(),
        ]);
        // Bergson's `--data.*` spellings, as `bergson validate` itself reads them.
        let argv = crate::magic::python_flag_spellings(
            std::iter::once("bergson".to_string()).chain(argv).collect(),
        );
        let parsed = ValidateCli::try_parse_from(&argv[2..])?.args;
        let start = Instant::now();
        let mut v = bergson::validate::prepare_validation(&parsed.config, device)?;
        let baseline = v.baseline_losses();
        let mut phase = bergson::progress::Phase::new("QLD", "retrains", Some(todo.len() as u64));
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)?;
        // Tools that agree on a query's top proponents (cosine, TRAK and TrackStar mostly do)
        // share the retrain: the same removal gives the same losses.
        let mut retrained: HashMap<Vec<usize>, Vec<f64>> = HashMap::new();
        for (tool, key, q, units) in &todo {
            let mut set = units.clone();
            set.sort_unstable();
            let losses = match retrained.get(&set) {
                Some(l) => l.clone(),
                None => {
                    let state = v.retrain_without(units)?;
                    let l = v.query_losses(&state.params)?;
                    retrained.insert(set, l.clone());
                    l
                }
            };
            let change = if *q == usize::MAX {
                // A control: the mean change over the QLD's queries.
                (0..nq).map(|j| losses[j] - baseline[j]).sum::<f64>() / nq as f64
            } else {
                losses[*q] - baseline[*q]
            };
            let qcol = if *q == usize::MAX { 0 } else { *q };
            use std::io::Write;
            writeln!(file, "{tool}\t{key}\t{qcol}\t{change:?}")?;
            file.sync_data()?;
            done.insert((tool.clone(), key.clone(), qcol), change);
            phase.inc(1);
        }
        drop(phase);
        let prev = timings.seconds.get("qld retrains").copied().unwrap_or(0.0);
        timings.record("qld retrains", prev + start.elapsed().as_secs_f64())?;
    }
    let control: Vec<f64> = done
        .iter()
        .filter(|(k, _)| k.0 == "control")
        .map(|(_, v)| *v)
        .collect();
    Ok((done, mean_with_ci(&control, a.seed)))
}

/// Writes `leaderboard.md`, `leaderboard.csv` and `leaderboard.png` into the run directory.
fn write_outputs(
    a: &LeaderboardArgs,
    p: &Paths,
    rows: &[Row],
    control: Option<Estimate>,
    timings: &Timings,
    seconds: f64,
) -> anyhow::Result<()> {
    let get = |k: &str| timings.seconds.get(k).copied().unwrap_or(f64::NAN);
    let k = ((a.fraction * a.docs as f64).round() as usize).max(1);
    let mut md = format!(
        "## Setting\n\n\
         The demo's GPT-NeoX (3 layers, hidden size 128) fine-tuned for one epoch (AdamW, lr 1e-3, \
         linear schedule with 25% warm-up, batch 16, seed 42) on {docs} generated documents (seed {seed}; made-up facts \
         among filler sentences); {queries} held-out questions about planted facts, scored per query. \
         LDS: per-query Spearman between the summed loss-signed scores and the measured query-loss \
         change over {subsets} leave-{pct}%-out retrains ({k} documents each), averaged over the \
         queries (95% CI: 10,000-resample bootstrap over the subsets). Proponent QLD: the query-loss \
         increase after retraining without the query's top {k} proponents, averaged over the first \
         {nq} queries (95% CI: bootstrap over those queries). Wall time: the method's command(s), \
         start-up included.\n\n",
        docs = a.docs,
        seed = a.seed,
        queries = a.queries,
        subsets = a.subsets,
        pct = a.fraction * 100.0,
        nq = a.qld_queries.min(a.queries),
    );
    md.push_str(&markdown_table(rows));
    if let Some(c) = control {
        md.push_str(&format!(
            "\nRandom removal of {k} documents ({} retrains) changes the query loss by {:.4} [{:.4}, {:.4}] on average.\n",
            a.qld_controls, c.value, c.low, c.high
        ));
    }
    md.push_str(&format!(
        "\nFine-tuning {:.1} s; LDS retrains {:.1} s; QLD retrains {:.1} s; this run {seconds:.1} s \
         (steps kept from an earlier run are not timed again).\n",
        get("fine-tuning"),
        get("lds retrains"),
        get("qld retrains"),
    ));
    write_atomic(&p.run.join("leaderboard.md"), md.as_bytes())?;
    let mut csv = String::from("method,tool,lds,lds_low,lds_high,qld,qld_low,qld_high,seconds\n");
    for r in rows {
        let q = r.qld.unwrap_or(Estimate {
            value: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
        });
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            r.method,
            r.tool.name(),
            r.lds.value,
            r.lds.low,
            r.lds.high,
            q.value,
            q.low,
            q.high,
            r.seconds
        ));
    }
    write_atomic(&p.run.join("leaderboard.csv"), csv.as_bytes())?;
    let mut sorted = rows.to_vec();
    sorted.sort_by(|x, y| y.lds.value.total_cmp(&x.lds.value));
    let bars: Vec<Bar> = sorted
        .iter()
        .map(|r| Bar {
            label: format!(
                "{}{}",
                r.method,
                if r.tool == Tool::PythonBergson {
                    " (Py)"
                } else {
                    ""
                }
            ),
            value: r.lds.value,
            low: r.lds.low,
            high: r.lds.high,
            python: r.tool == Tool::PythonBergson,
        })
        .collect();
    write_chart(
        &format!(
            "LDS, {} leave-{}%-out retrains (blue: bergson-rs, orange: Python Bergson)",
            a.subsets,
            a.fraction * 100.0
        ),
        &bars,
        &p.run.join("leaderboard.png"),
    )?;
    println!("{md}");
    eprintln!(
        "wrote {}/leaderboard.md, leaderboard.csv and leaderboard.png",
        p.run.display()
    );
    Ok(())
}
