//! What `--overwrite` may delete. A run path is the user's to name, so a typo (`.`, `~`, `/`,
//! a project folder) must never turn into a recursive delete: bergson replaces only directories
//! it wrote itself (they hold one of its run files), empty ones, and its own `.part` scratch,
//! and never the file-system root, the home directory or a directory the user works in.

use std::path::{Path, PathBuf};

use super::journal::JOURNAL;
use crate::error::IoContext;
use crate::{Error, Result};

/// Top-level names that mark a directory as a bergson output: every run directory bergson
/// writes (index, score, hessian, training and MAGIC runs, recipes) holds at least one.
const RUN_MARKERS: &[&str] = &[
    "config.yaml",
    "info.json",
    JOURNAL,
    "processor_config.yaml",
    "gradients.bin",
    "scores.bin",
    "scores",
    "checkpoints",
    "normalizers.pth",
    "hessians.pth",
    "total_processed.pt",
    "activation_sharded",
    "gradient_sharded",
    "eigen_activation_sharded",
    "eigenvalue_correction_sharded",
];

/// What an existing run path is, for the messages that name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// A directory with nothing in it.
    Empty,
    /// A directory holding one of bergson's run files.
    Run,
    /// A directory bergson did not write.
    Foreign,
    /// A file, or a link to one.
    File,
}

impl Existing {
    /// Classifies `path`, which exists.
    pub fn of(path: &Path) -> Existing {
        if !path.is_dir() {
            return Existing::File;
        }
        let Ok(mut entries) = std::fs::read_dir(path) else {
            return Existing::Foreign;
        };
        if entries.next().is_none() {
            Existing::Empty
        } else if RUN_MARKERS.iter().any(|m| path.join(m).exists()) {
            Existing::Run
        } else {
            Existing::Foreign
        }
    }

    /// A few words for messages: "a bergson run directory", ...
    pub fn describe(self) -> &'static str {
        match self {
            Existing::Empty => "an empty directory",
            Existing::Run => "a bergson run directory",
            Existing::Foreign => "a directory bergson did not write",
            Existing::File => "a file",
        }
    }
}

/// The error for an existing run path `path` without `--overwrite`: what it is, and either
/// `fix` (when `--overwrite` could replace it) or another path.
pub fn already_exists(path: &Path, fix: &str) -> Error {
    let existing = Existing::of(path);
    let fix = match existing {
        Existing::Empty | Existing::Run => fix,
        Existing::Foreign | Existing::File => {
            "choose another path (--overwrite only replaces bergson's own runs)"
        }
    };
    Error::input(format!(
        "run path {} already exists ({}); {fix}",
        path.display(),
        existing.describe()
    ))
}

/// Deletes the run directory `path` for `--overwrite`: a link is unlinked (its target kept); a
/// directory only when it is empty or a bergson run, and not a protected place.
pub fn remove_run(path: &Path) -> Result<()> {
    if path.is_symlink() {
        return std::fs::remove_file(path).at_path(path);
    }
    refuse_protected(path)?;
    match Existing::of(path) {
        Existing::Empty | Existing::Run => std::fs::remove_dir_all(path).at_path(path),
        Existing::File => Err(Error::input(format!(
            "run path {} is a file, not a run directory, and --overwrite only replaces run directories; remove it yourself or choose another path",
            path.display()
        ))),
        Existing::Foreign => Err(Error::input(format!(
            "run path {} is {} (it holds none of {}), and --overwrite only replaces bergson's own runs; remove it yourself or choose another path",
            path.display(),
            Existing::Foreign.describe(),
            RUN_MARKERS[..3].join(", ")
        ))),
    }
}

/// Deletes bergson's own scratch output at `path` (a `<run>.part`, a recipe's step directory),
/// file or directory; refuses only the protected places, which no scratch path can be.
pub fn remove_scratch(path: &Path) -> Result<()> {
    if path.is_symlink() || !path.is_dir() {
        return std::fs::remove_file(path).at_path(path);
    }
    refuse_protected(path)?;
    std::fs::remove_dir_all(path).at_path(path)
}

/// Refuses the file-system root, the home directory, and the working directory or any of its
/// parents: deleting one of them is never what a run path meant.
fn refuse_protected(path: &Path) -> Result<()> {
    match protected(path) {
        Some(what) => Err(Error::input(format!(
            "refusing to delete {}: it is {what}; choose a run path of its own (a new directory)",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// What protected place `path` is, if any (it need not exist).
fn protected(path: &Path) -> Option<&'static str> {
    let canon = path.canonicalize().ok()?;
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .and_then(|h| h.canonicalize().ok());
    let cwd = std::env::current_dir().and_then(|d| d.canonicalize()).ok();
    if canon.parent().is_none() {
        Some("the file-system root")
    } else if home.as_deref() == Some(canon.as_path()) {
        Some("your home directory")
    } else if cwd.as_deref() == Some(canon.as_path()) {
        Some("the working directory")
    } else if cwd.as_deref().is_some_and(|d| d.starts_with(&canon)) {
        Some("a parent of the working directory")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The check alone: a test that called the removal on these paths would, if the check
    // broke, delete the source tree or worse.
    #[test]
    fn protected_places_are_named() {
        assert_eq!(protected(Path::new("/")), Some("the file-system root"));
        assert_eq!(protected(Path::new(".")), Some("the working directory"));
        assert_eq!(
            protected(Path::new("..")),
            Some("a parent of the working directory")
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(protected(&cwd), Some("the working directory"));
        assert_eq!(protected(&cwd.join("no-such-dir")), None);
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(protected(tmp.path()), None);
    }

    #[test]
    fn only_empty_directories_and_runs_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let user = tmp.path().join("project");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join("notes.txt"), "mine").unwrap();
        let e = remove_run(&user).unwrap_err();
        assert!(e.is_user_error());
        assert!(e.to_string().contains("did not write"), "{e}");
        assert!(user.join("notes.txt").is_file());

        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        remove_run(&empty).unwrap();
        assert!(!empty.exists());

        let run = tmp.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("info.json"), "{}").unwrap();
        std::fs::write(run.join("gradients.bin"), "x").unwrap();
        assert_eq!(Existing::of(&run), Existing::Run);
        remove_run(&run).unwrap();
        assert!(!run.exists());

        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(remove_run(&file)
            .unwrap_err()
            .to_string()
            .contains("is a file"));
        assert!(file.is_file());
    }

    #[cfg(unix)]
    #[test]
    fn a_link_is_unlinked_and_its_target_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("data");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep.txt"), "x").unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        remove_run(&link).unwrap();
        assert!(!link.exists() && target.join("keep.txt").is_file());
    }
}
