//! The library's error type: each variant renders as one sentence a user can act on, and keeps the error it
//! came from as its `source()` (I/O, TOML, JSON, protobuf, ONNX Runtime) where there is one.
//!
//! Context is added once, where it is known (`in_context`: the pass, the component), not re-wrapped at
//! every level.

use std::path::{Path, PathBuf};

/// An error from another library, kept as the cause.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder the user pointed at is missing, unreadable, or not what was expected.
    #[error("{path}: {message}")]
    BadFile {
        path: PathBuf,
        message: String,
        #[source]
        source: Option<Cause>,
    },
    /// A command-line value or a config value is out of range or unknown.
    #[error("{message}")]
    BadInput {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    /// ONNX Runtime could not be loaded, lacks an execution provider, or failed while running a model.
    #[error("{message}")]
    Runtime {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    /// The Hugging Face Hub could not be reached, refused a request (a missing or gated repo), or a download
    /// failed; or the cache could not give what offline mode asked of it.
    #[error("{message}")]
    Hub {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    /// A broken invariant inside dfast (a patch that would corrupt a graph, a pass that never settles):
    /// a bug to report, not something the user did.
    #[error("internal error (a bug in dfast, please report it): {0}")]
    Internal(String),
    /// `source` with what dfast was doing when it happened (the pass, the component).
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    pub fn bad_file(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::BadFile { path: path.as_ref().to_path_buf(), message: message.into(), source: None }
    }

    /// A file that could not be read or written: `what` (`cannot read`) and the error (I/O, or the writer's
    /// own: image, npy, csv, protobuf), kept as the source.
    pub fn io(path: impl AsRef<Path>, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::BadFile { path: path.as_ref().to_path_buf(), message: format!("{what}: {e}"), source: Some(Box::new(e)) }
    }

    /// A file whose contents do not parse (TOML, JSON, protobuf): the parser's error is kept as the source.
    pub fn parse_file(path: impl AsRef<Path>, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::BadFile { path: path.as_ref().to_path_buf(), message: format!("{what}: {e}"), source: Some(Box::new(e)) }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Error::BadInput { message: message.into(), source: None }
    }

    /// This error, where it is about what the file at `path` says (bad input found in a config read from
    /// there), as an error naming that file; any other error as it is.
    pub fn in_file(self, path: impl AsRef<Path>) -> Self {
        match self {
            Error::BadInput { message, source } => {
                Error::BadFile { path: path.as_ref().to_path_buf(), message, source }
            }
            other => other,
        }
    }

    /// A config value that does not parse; `message` already says which file, table and key.
    pub fn bad_config(message: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::BadInput { message: message.into(), source: Some(Box::new(e)) }
    }

    pub fn runtime(message: impl Into<String>) -> Self {
        Error::Runtime { message: message.into(), source: None }
    }

    /// ONNX Runtime's error with what dfast asked of it; the ort error is kept as the source.
    pub fn ort(message: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Runtime { message: message.into(), source: Some(Box::new(e)) }
    }

    /// A session builder's error without the builder it hands back (which is not `Send`), for [`Error::ort`].
    pub(crate) fn ort_plain<R>(e: ort::Error<R>) -> ort::Error {
        ort::Error::new_with_code(e.code(), e.message())
    }

    pub fn hub(message: impl Into<String>) -> Self {
        Error::Hub { message: message.into(), source: None }
    }

    /// A Hub error with the error it came from (the HTTP client's, I/O, JSON), kept as the source.
    pub fn hub_cause(message: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Hub { message: message.into(), source: Some(Box::new(e)) }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// This error with what was being done when it happened.
    pub fn in_context(self, context: impl Into<String>) -> Self {
        Error::Context { context: context.into(), source: Box::new(self) }
    }

    /// The innermost dfast error (past every `Context`).
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            other => other,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn causes_are_kept_and_context_reads_as_one_sentence() {
        let io = std::fs::read("/no/such/file").unwrap_err();
        let e = Error::io("/no/such/file", "cannot read", io);
        assert!(e.source().is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()));
        let bad: std::result::Result<toml::Table, _> = "x = ".parse();
        let e = Error::parse_file("p.toml", "not valid TOML", bad.unwrap_err()).in_context("profile p");
        assert!(e.to_string().starts_with("profile p: p.toml: not valid TOML: "), "{e}");
        let inner = e.source().unwrap();
        assert!(inner.source().is_some_and(|s| s.downcast_ref::<toml::de::Error>().is_some()));
        assert!(matches!(e.root(), Error::BadFile { .. }));
    }
}
