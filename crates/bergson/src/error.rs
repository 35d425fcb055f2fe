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
    /// An I/O failure on a named path.
    #[error("{}: {source}", path.display())]
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
}

/// `Result` with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A user-input error with the given message.
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
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
        matches!(self, Error::Input(_) | Error::Io { .. })
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
