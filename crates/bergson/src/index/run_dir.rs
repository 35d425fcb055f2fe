//! The run directory's life cycle, for every command that writes one (build, reduce, score):
//! everything is written to `<run_path>.part`, renamed to `<run_path>` only when complete, so a
//! crash, a kill or a write error (full disk, file size limit) never leaves an output that
//! looks finished. A `.part` left by an interrupted run of the same config is resumed from its
//! journal; one without a journal (the run failed before its first batch) is started over.

use std::path::{Path, PathBuf};

use super::journal::has_journal;
use super::removal::{already_exists, remove_run, remove_scratch, Existing};
use crate::config::run_file::{parse_run_file, Step};
use crate::error::IoContext;
use crate::{Error, Result};

/// How the build starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A new `.part` directory.
    Fresh,
    /// An existing `.part` of the same config: continue from its journal.
    Resume,
}

/// Checks the run path of `step` and its `.part`, removing them with `overwrite`, and decides
/// whether to start fresh or resume.
pub fn prepare(step: &Step, overwrite: bool) -> Result<(PathBuf, PathBuf, Start)> {
    let command = step.command();
    if step.run_path().is_empty() {
        return Err(Error::input(format!(
            "no run path given: `bergson {command} <run_path> --model ... --dataset ...`"
        )));
    }
    let run_path = PathBuf::from(step.run_path());
    let part = PathBuf::from(format!("{}.part", step.run_path()));
    check_parent(&run_path)?;
    if run_path.exists() || run_path.is_symlink() {
        if !overwrite {
            return Err(already_exists(
                &run_path,
                "pass --overwrite to replace it or choose another path",
            ));
        }
        remove_run(&run_path)?;
    }
    if part.exists() {
        if overwrite || Existing::of(&part) == Existing::Empty {
            // An empty `.part` is a run that stopped before writing anything.
            remove_scratch(&part)?;
        } else if same_config(&part, step)? {
            if has_journal(&part) {
                return Ok((run_path, part, Start::Resume));
            }
            // No journal: the run failed before its first batch (e.g. a full disk while sizing
            // gradients.bin), so there is nothing to keep; start again.
            remove_scratch(&part)?;
        } else {
            return Err(Error::input(format!(
                "{} holds a partial run of a different config; pass --overwrite to start over, or rerun the command that made it to resume",
                part.display()
            )));
        }
    }
    Ok((run_path, part, Start::Fresh))
}

/// Refuses run paths under a file, and names an unwritable parent.
fn check_parent(run_path: &Path) -> Result<()> {
    let mut p = run_path.parent();
    while let Some(dir) = p {
        if dir.as_os_str().is_empty() {
            break;
        }
        if dir.exists() {
            if !dir.is_dir() {
                return Err(Error::input(format!(
                    "run path {} is under {}, which is a file, not a directory; choose another run path",
                    run_path.display(),
                    dir.display()
                )));
            }
            break;
        }
        p = dir.parent();
    }
    Ok(())
}

/// Whether `<part>/config.yaml` describes the same step (ignoring `overwrite`).
fn same_config(part: &Path, step: &Step) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(part.join("config.yaml")) else {
        return Ok(false);
    };
    let Ok(file) = parse_run_file(&text) else {
        return Ok(false);
    };
    Ok(match file.steps.as_slice() {
        [theirs] => theirs.without_overwrite() == step.without_overwrite(),
        _ => false,
    })
}

/// Creates the `.part` directory (and its parents).
pub fn create_part(part: &Path) -> Result<()> {
    std::fs::create_dir_all(part).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "permission denied".to_string()
        } else {
            e.to_string()
        };
        Error::input(format!(
            "cannot create {}: {why}; choose a run path in a directory you can write to",
            part.display()
        ))
    })
}

/// Makes the finished `.part` the index: syncs it and renames it into place.
pub fn finish(part: &Path, run_path: &Path) -> Result<()> {
    if let Ok(dir) = std::fs::File::open(part) {
        let _ = dir.sync_all();
    }
    std::fs::rename(part, run_path).at_path(run_path)?;
    if let Some(parent) = run_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}
