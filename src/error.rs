//! The library's error type: each variant renders as one sentence a user can act on.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder the user pointed at is missing, unreadable, or not what was expected.
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    /// A command-line value or a config value is out of range or unknown.
    #[error("{0}")]
    BadInput(String),
    /// ONNX Runtime could not be loaded or failed while running a model.
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    pub fn bad_file(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::BadFile { path: path.as_ref().to_path_buf(), message: message.into() }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Error::BadInput(message.into())
    }

    pub fn runtime(message: impl Into<String>) -> Self {
        Error::Runtime(message.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
