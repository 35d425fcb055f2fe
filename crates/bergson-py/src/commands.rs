//! `build` and `score` from Python: the CLI's commands with its config fields as keyword
//! arguments (parsed by the same clap definitions, so names, defaults and checks are the
//! CLI's).

use bergson::build::RunOptions;
use bergson::config::{BuildConfig, ScoreRunConfig};
use clap::{Args, Command, FromArgMatches};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::py_err;

/// Parses `argv` (no program name) as the flags of command `name`.
fn parse<T: Args + FromArgMatches>(name: &'static str, argv: Vec<String>) -> PyResult<T> {
    let cmd = T::augment_args(Command::new(name).no_binary_name(true));
    let matches = cmd.try_get_matches_from(argv).map_err(|e| {
        let text = e.render().to_string();
        let line = text.lines().next().unwrap_or("bad arguments");
        PyValueError::new_err(format!("{name}: {}", line.trim_start_matches("error: ")))
    })?;
    T::from_arg_matches(&matches).map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

fn options(device: &str, quiet: bool) -> PyResult<RunOptions> {
    Ok(RunOptions {
        device: bergson::engine::parse_device(device).map_err(py_err)?,
        quiet,
    })
}

/// Runs `bergson build` with `argv` (the run path, then CLI flags); returns its summary line.
#[pyfunction]
#[pyo3(signature = (argv, device="cpu", quiet=true))]
pub fn build(py: Python<'_>, argv: Vec<String>, device: &str, quiet: bool) -> PyResult<String> {
    let cfg: BuildConfig = parse("build", argv)?;
    let opts = options(device, quiet)?;
    let summary = py
        .allow_threads(|| bergson::build::run(&cfg, &opts).map(|s| s.to_string()))
        .map_err(py_err)?;
    Ok(summary)
}

/// Runs `bergson score` with `argv` (the run path, then CLI flags); returns its summary line.
#[pyfunction]
#[pyo3(signature = (argv, device="cpu", quiet=true))]
pub fn score(py: Python<'_>, argv: Vec<String>, device: &str, quiet: bool) -> PyResult<String> {
    let cfg: ScoreRunConfig = parse("score", argv)?;
    let opts = options(device, quiet)?;
    let summary = py
        .allow_threads(|| bergson::score::run(&cfg, &opts).map(|s| s.to_string()))
        .map_err(py_err)?;
    Ok(summary)
}
