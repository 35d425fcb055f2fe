//! The library's error type. Every variant renders as one line that names the problem and,
//! where the user can act, the fix.

use std::path::{Path, PathBuf};

/// Errors from the bergson library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's input (a flag, a file, a dataset, a checkpoint) is wrong. The message names
    /// the problem and the fix; the CLI prints it and exits with status 2.
    #[error("{0}")]
    Input(String),
    /// An I/O failure on a named path; renders with the fix for the common causes.
    #[error("{}: {source}{}", path.display(), io_fix(source))]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The run was interrupted (Ctrl-C); partial output was left resumable.
    #[error("interrupted")]
    Interrupted,
    /// Another process of a multi-process job failed, or could not be reached.
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    /// A broken invariant inside bergson-rs: not the user's mistake, so the message asks for a
    /// report instead of naming a fix. The CLI exits with status 1.
    #[error(
        "internal error: {0}; this is a bug in bergson-rs {version}, please report it to the bergson-rs maintainers with the command that triggered it",
        version = env!("CARGO_PKG_VERSION")
    )]
    Internal(String),
}

/// `Result` with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A user-input error with the given message.
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }

    /// An internal fault (a broken invariant) described by `msg`; see [`Error::Internal`].
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// True when the error is the user's to fix (the CLI exits with status 2).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::Input(_)
                | Error::Io { .. }
                | Error::Dist(crate::dist::DistError::Environment(_))
        )
    }
}

/// What to do about an I/O error, by kind (`"; ..."`, or nothing for rare kinds).
fn io_fix(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "; check that the path and its parent directories exist",
        K::PermissionDenied => "; check its permissions, or choose another location",
        K::ReadOnlyFilesystem => "; the file system is read-only: choose a location you can write to",
        K::StorageFull | K::QuotaExceeded => {
            "; the disk is full: free some space or choose a run path on another disk"
        }
        K::FileTooLarge => {
            "; the file size limit was reached (`ulimit -f`, or the file system's maximum): raise it or choose a run path on another disk"
        }
        K::NotADirectory => "; a component of the path is a file, not a directory: choose another path",
        K::IsADirectory => "; the path is a directory where a file was expected: choose another path",
        _ => "",
    }
}

/// Adds the path to an `io::Result`.
pub trait IoContext<T> {
    /// Converts an `io::Error` into [`Error::Io`] naming `path`.
    fn at_path(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at_path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    #[test]
    fn io_errors_name_the_path_and_the_fix() {
        let msg = |kind: ErrorKind| Error::io("run.part/gradients.bin", kind.into()).to_string();
        let full = msg(ErrorKind::StorageFull);
        assert!(full.starts_with("run.part/gradients.bin: "), "{full}");
        assert!(full.contains("disk is full"), "{full}");
        assert!(msg(ErrorKind::FileTooLarge).contains("ulimit -f"));
        assert!(msg(ErrorKind::ReadOnlyFilesystem).contains("read-only"));
        assert!(!msg(ErrorKind::Interrupted).contains(';'));
    }

    #[test]
    fn internal_errors_ask_for_a_report_and_are_not_the_users() {
        let e = Error::internal("row 9 beyond run.part/gradients.bin");
        let text = e.to_string();
        assert!(
            text.starts_with("internal error: row 9 beyond run.part/gradients.bin; "),
            "{text}"
        );
        assert!(text.contains("please report it"), "{text}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(!e.is_user_error());
        assert!(Error::input("x").is_user_error());
    }
}
