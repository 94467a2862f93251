//! dfast: text-to-image diffusion pipelines on ONNX Runtime.
//!
//! The library holds everything; `main.rs` only parses arguments (see `cli`) and prints errors.

pub mod bench;
pub mod cli;
pub mod convert;
mod error;
pub mod inspect;
pub mod onnx;
pub mod passes;
pub mod pipeline;
pub mod runtime;
pub mod scheduler;

pub use error::{Error, Result};
