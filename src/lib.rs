//! dfast: text-to-image diffusion pipelines on ONNX Runtime.
//!
//! The library holds everything; the `dfast` binary (`main.rs`, `cli.rs`) parses arguments, draws
//! progress bars and prints errors.
//!
//! Layers, each using only those below it: `settings`, `error` < `onnx` < `runtime`, `scheduler`
//! < `passes` < `manifest` < `pipeline` < `convert` < `bench`, `inspect` < `tune`.

pub mod bench;
pub mod convert;
mod error;
pub mod inspect;
pub mod manifest;
pub mod onnx;
pub mod passes;
pub mod pipeline;
pub mod runtime;
pub mod scheduler;
pub mod settings;
pub mod tune;

pub use error::{Error, Result};
