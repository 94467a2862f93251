//! dfast: text-to-image diffusion pipelines on ONNX Runtime.
//!
//! The library holds everything; the `dfast` binary (`main.rs`, `cli.rs`) parses arguments, draws
//! progress bars and prints errors.
//!
//! Layers, bottom up; each module uses only modules of the layers below its own, its tests included
//! (`tests/architecture.rs` checks this):
//!
//! 1. `error`
//! 2. `settings`: the vocabulary (precision, execution provider, session options)
//! 3. `onnx` (models, graphs, patches), `host` (the machine: CPU, memory), `files` (output files written
//!    safely), `hub` (the Hugging Face Hub and its cache)
//! 4. `runtime` (ONNX Runtime: library, sessions)
//! 5. `manifest` (what a converted folder records), `scheduler`
//! 6. `passes` (graph rewrites), `pipeline` (text to image), side by side
//! 7. `convert`, `inspect`
//! 8. `bench`, `tune`
//! 9. the `dfast` binary (`cli.rs`)

pub mod bench;
pub mod convert;
mod error;
pub mod files;
pub mod host;
pub mod hub;
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
