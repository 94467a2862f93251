//! Graph rewrites ("passes") and the pass manager that runs them.
//!
//! A pass is small and naive: it looks at the model, finds what it can rewrite *now*, and returns a
//! [`Patch`]; the [`PassManager`] applies the patch and runs the pass again until it has nothing left
//! to do (a fixed point). See the worked example in [`crate::onnx`].
//!
//! Conventions for a pass, one file each:
//! - open the file with a text drawing of the subgraph it matches and what it emits;
//! - match on dataflow and constant values (via [`crate::onnx::GraphIndex`] and
//!   [`crate::onnx::infer::Inference`]), never on node names, so that both exporter styles match;
//! - never claim a node twice in one patch (check [`Patch::is_removed`]); the next round catches the rest;
//! - be idempotent: on a graph it already rewrote, return `None` (the manager errors after
//!   [`PassManager::DEFAULT_MAX_ROUNDS`] rounds, which catches a pass that keeps undoing itself);
//! - choose rewrites per [`Target`] where the emitted op is not available everywhere;
//! - have a test that compares outputs with the unrewritten graph.

pub mod attention;
pub mod cleanup;
pub mod conv1x1;
pub mod fuse_qkv;
pub mod int8_dynamic;
pub mod int8_static;
pub mod precision;
#[cfg(test)]
pub(crate) mod test_util;

pub use attention::Attention;
pub use cleanup::Cleanup;
pub use conv1x1::Conv1x1;
pub use fuse_qkv::FuseQkv;
pub use int8_dynamic::{Int8Dynamic, Int8Format};
pub use int8_static::Int8Static;
pub use precision::{HalfType, OpPolicy, Precision};

use serde::Serialize;

use crate::onnx::{OnnxModel, Patch, apply_patch};
use crate::{Error, Result};

/// The execution provider a conversion targets: decides which fused ops a pass may emit. The same type
/// that picks the EP of a session.
pub use crate::runtime::ExecutionProvider as Target;

/// What a pass may know about the conversion besides the model.
#[derive(Debug, Clone)]
pub struct PassContext {
    pub target: Target,
}

impl PassContext {
    pub fn new(target: Target) -> Self {
        PassContext { target }
    }
}

/// A graph rewrite.
pub trait Pass {
    /// Short, stable name (`cleanup`, `attention-fusion`, ...): it appears in the conversion manifest.
    fn name(&self) -> &str;

    /// Looks at `model` and returns what to change, or `None` (or an empty patch) when nothing applies.
    /// Must not assume anything about earlier rounds: it is called again on the patched model.
    fn run(&self, model: &OnnxModel, ctx: &PassContext) -> Result<Option<Patch>>;
}

/// What one pass did, for the conversion manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassRecord {
    pub pass: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub initializers_before: usize,
    pub initializers_after: usize,
    /// Patterns rewritten, as counted by the pass (`Patch::count_rewrite`).
    pub rewrites: usize,
    /// Patches applied before the pass reached its fixed point.
    pub rounds: usize,
}

impl PassRecord {
    /// True when the pass changed nothing.
    pub fn unchanged(&self) -> bool {
        self.rounds == 0
    }
}

/// Runs passes in order, each to its fixed point.
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    max_rounds: usize,
}

impl Default for PassManager {
    fn default() -> Self {
        PassManager { passes: Vec::new(), max_rounds: Self::DEFAULT_MAX_ROUNDS }
    }
}

impl PassManager {
    /// Rounds after which a pass that still returns patches is taken to be looping.
    pub const DEFAULT_MAX_ROUNDS: usize = 64;

    pub fn new() -> Self {
        PassManager::default()
    }

    /// Appends a pass.
    pub fn with(mut self, pass: impl Pass + 'static) -> Self {
        self.passes.push(Box::new(pass));
        self
    }

    /// Appends a boxed pass.
    pub fn push(&mut self, pass: Box<dyn Pass>) {
        self.passes.push(pass);
    }

    /// Sets the round limit per pass.
    pub fn max_rounds(mut self, rounds: usize) -> Self {
        self.max_rounds = rounds.max(1);
        self
    }

    /// Names of the passes, in order.
    pub fn names(&self) -> Vec<&str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs every pass to its fixed point, in order; returns one record per pass.
    pub fn run(&self, model: &mut OnnxModel, ctx: &PassContext) -> Result<Vec<PassRecord>> {
        let mut records = Vec::with_capacity(self.passes.len());
        for pass in &self.passes {
            let name = pass.name();
            let mut record = PassRecord {
                pass: name.to_string(),
                nodes_before: model.node_count(),
                nodes_after: 0,
                initializers_before: model.graph().initializer.len(),
                initializers_after: 0,
                rewrites: 0,
                rounds: 0,
            };
            loop {
                let patch = match pass.run(model, ctx).map_err(|e| in_pass(name, e))? {
                    Some(p) if !p.is_empty() => p,
                    _ => break,
                };
                if record.rounds == self.max_rounds {
                    return Err(Error::runtime(format!(
                        "pass `{name}` still changes the graph after {} rounds: it does not reach a fixed point \
                         (a bug in the pass)",
                        self.max_rounds
                    )));
                }
                record.rewrites += patch.rewrites();
                apply_patch(model, patch).map_err(|e| in_pass(name, e))?;
                record.rounds += 1;
            }
            record.nodes_after = model.node_count();
            record.initializers_after = model.graph().initializer.len();
            records.push(record);
        }
        Ok(records)
    }
}

/// Prefixes an error with the pass it came from.
fn in_pass(name: &str, e: Error) -> Error {
    match e {
        Error::Runtime(m) => Error::runtime(format!("pass `{name}`: {m}")),
        Error::BadInput(m) => Error::bad_input(format!("pass `{name}`: {m}")),
        other => other,
    }
}

/// The passes every conversion starts with.
pub fn default_passes() -> PassManager {
    PassManager::new().with(Cleanup)
}
