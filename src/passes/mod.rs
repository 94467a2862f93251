//! Graph rewrites ("passes") and the pass manager that runs them.
//!
//! A pass is small and naive: it looks at the model, finds what it can rewrite *now*, and returns a
//! [`Patch`]; the [`PassManager`] applies the patch and runs the pass again until it has nothing left
//! to do (a fixed point). See the worked example in [`crate::onnx`].
//!
//! Conventions for a pass, one file each (a folder with one file per phase when it is large, as `precision`):
//! - open the file with a text drawing of the subgraph it matches and what it emits;
//! - match on dataflow and constant values (via [`crate::onnx::GraphIndex`] and
//!   [`crate::onnx::infer::Inference`]), never on node names, so that both exporter styles match;
//! - never claim a node twice in one patch (check [`Patch::is_removed`]); the next round catches the rest;
//! - be idempotent: on a graph it already rewrote, return `None` (the manager errors after
//!   [`PassManager::DEFAULT_MAX_ROUNDS`] rounds, which catches a pass that keeps undoing itself);
//! - choose rewrites per [`ExecutionProvider`] where the emitted op is not available everywhere;
//! - take its options as a serde struct with `deny_unknown_fields` ([`PassSpec::Options`]) and be listed
//!   once in [`registry::PASSES`]: profiles, `convert --help` and the README's table read that list;
//! - have a test that compares outputs with the unrewritten graph.
//!
//! One pass stands outside the registry: [`lora::LoraMerge`], which `convert --lora` adds in front of a
//! component's passes (its input is a file named on the command line, not a profile's options) and which runs
//! once, not to a fixed point ([`run_once`]).

pub mod attention;
pub mod bias_add;
pub mod bias_epilogue;
pub mod bias_gelu;
pub mod cleanup;
pub mod conv1x1;
pub mod fuse_qkv;
pub mod geglu;
pub mod group_norm;
#[cfg(test)]
mod infer_tests;
pub mod int8_dynamic;
pub mod int8_static;
pub mod layout;
pub mod lora;
pub mod nhwc_conv;
mod options;
pub(crate) mod pattern;
pub mod precision;
mod quantize;
pub mod registry;
pub mod skip_layer_norm;
#[cfg(test)]
pub(crate) mod testing;
pub mod upsample_conv;

pub use attention::Attention;
pub use bias_add::BiasAdd;
pub use bias_epilogue::BiasEpilogue;
pub use bias_gelu::BiasGelu;
pub use cleanup::Cleanup;
pub use conv1x1::Conv1x1;
pub use fuse_qkv::FuseQkv;
pub use geglu::Geglu;
pub use group_norm::GroupNorm;
pub use int8_dynamic::{Int8Dynamic, Int8Format};
pub use int8_static::Int8Static;
pub use nhwc_conv::NhwcConv;
pub use precision::{OpPolicy, PrecisionPass};
pub use skip_layer_norm::SkipLayerNorm;
pub use upsample_conv::UpsampleConv;

use crate::manifest::PassRecord;
use crate::onnx::{OnnxModel, Patch, apply_patch};
use crate::settings::ExecutionProvider;
use crate::{Error, Result};

/// The seed's single exclude list, `(in_features, out_features)` pairs found by timing each linear shape on
/// SDXL: the default wherever neither the profile nor the model card gives one.
pub const SEED_INT8_EXCLUDE: [(usize, usize); 19] = [
    (1280, 640),
    (1920, 1280),
    (1920, 640),
    (2048, 1280),
    (2048, 2560),
    (2560, 1280),
    (256, 128),
    (2816, 1280),
    (320, 640),
    (512, 1536),
    (512, 256),
    (512, 512),
    (640, 1280),
    (640, 1920),
    (640, 320),
    (640, 5120),
    (640, 640),
    (960, 320),
    (960, 640),
];

/// What a pass may know about the conversion besides the model.
#[derive(Debug, Clone)]
pub struct PassContext {
    pub target: ExecutionProvider,
}

impl PassContext {
    pub fn new(target: ExecutionProvider) -> Self {
        PassContext { target }
    }
}

/// What a pass is built from besides its own options: the conversion's target and precision, the model
/// card's int8 exclude list (the seed's when there is no card), and whether fusions into CUDA-only
/// `com.microsoft` ops may be emitted.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub target: ExecutionProvider,
    pub precision: crate::settings::Precision,
    pub int8_exclude: Vec<(usize, usize)>,
    /// The profile's `cuda_only_fusions`: fusions whose ops only ONNX Runtime's CUDA EP runs (BiasSplitGelu,
    /// GroupNorm, BiasAdd, ...) are emitted only when this is set and the target is cuda. Off until a GPU
    /// check has verified them.
    pub cuda_only_fusions: bool,
}

impl BuildContext {
    pub fn new(target: ExecutionProvider, precision: crate::settings::Precision) -> Self {
        BuildContext { target, precision, int8_exclude: SEED_INT8_EXCLUDE.to_vec(), cuda_only_fusions: false }
    }

    /// True when a fusion into a CUDA-only op may be emitted (the target is cuda and the profile allows it).
    pub fn allows_cuda_only_ops(&self) -> bool {
        self.cuda_only_fusions && self.target == ExecutionProvider::Cuda
    }
}

/// A graph rewrite.
pub trait Pass {
    /// Looks at `model` and returns what to change, or `None` (or an empty patch) when nothing applies.
    /// Must not assume anything about earlier rounds: it is called again on the patched model.
    fn run(&self, model: &OnnxModel, ctx: &PassContext) -> Result<Option<Patch>>;

    /// The settings it runs with after defaults were applied (recorded in the manifest); `Null` if none.
    fn settings(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// How a pass is named, described and built from a profile's options: one `impl` per pass, listed once in
/// [`registry::PASSES`].
pub trait PassSpec: Pass + Sized + 'static {
    /// Short, stable name (`cleanup`, `attention`, ...): profiles use it, and the manifest records it.
    const NAME: &'static str;
    /// One line for `convert --help` and the README.
    const SUMMARY: &'static str;
    /// The pass's options as a profile's `[<name>]` table holds them (`deny_unknown_fields`).
    type Options: serde::de::DeserializeOwned;
    /// Emits ops that only ONNX Runtime's CUDA EP runs: the pass is built enabled only where
    /// [`BuildContext::allows_cuda_only_ops`], and runs only when the conversion targets cuda ([`boxed`]).
    const CUDA_ONLY: bool = false;
    fn build(options: Self::Options, ctx: &BuildContext) -> Result<Self>;
}

/// A pass ready for a [`PassManager`]: a [`PassSpec::CUDA_ONLY`] pass does nothing unless the target is cuda.
pub fn boxed<P: PassSpec>(pass: P) -> Box<dyn Pass> {
    if P::CUDA_ONLY { Box::new(CudaOnly(pass)) } else { Box::new(pass) }
}

/// The gate of a [`PassSpec::CUDA_ONLY`] pass.
struct CudaOnly<P>(P);

impl<P: Pass> Pass for CudaOnly<P> {
    fn run(&self, model: &OnnxModel, ctx: &PassContext) -> Result<Option<Patch>> {
        if ctx.target != ExecutionProvider::Cuda {
            return Ok(None);
        }
        self.0.run(model, ctx)
    }

    fn settings(&self) -> serde_json::Value {
        self.0.settings()
    }
}

/// Options of a pass that takes none: any key is refused.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// Runs passes in order, each to its fixed point.
pub struct PassManager {
    passes: Vec<(&'static str, Box<dyn Pass>)>,
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
    pub fn with<P: PassSpec>(mut self, pass: P) -> Self {
        self.passes.push((P::NAME, boxed(pass)));
        self
    }

    /// Appends a boxed pass under its registry name.
    pub fn push(&mut self, name: &'static str, pass: Box<dyn Pass>) {
        self.passes.push((name, pass));
    }

    /// True when no pass was added.
    pub fn is_empty(&self) -> bool {
        self.passes.is_empty()
    }

    /// Sets the round limit per pass.
    pub fn max_rounds(mut self, rounds: usize) -> Self {
        self.max_rounds = rounds.max(1);
        self
    }

    /// Names of the passes, in order.
    pub fn names(&self) -> Vec<&str> {
        self.passes.iter().map(|(name, _)| *name).collect()
    }

    /// Runs every pass to its fixed point, in order; returns one record per pass.
    pub fn run(&self, model: &mut OnnxModel, ctx: &PassContext) -> Result<Vec<PassRecord>> {
        let mut records = Vec::with_capacity(self.passes.len());
        for (name, pass) in &self.passes {
            let name = *name;
            let mut record = record_before(name, pass.as_ref(), model);
            loop {
                let patch = match pass.run(model, ctx).map_err(|e| in_pass(name, e))? {
                    Some(p) if !p.is_empty() => p,
                    _ => break,
                };
                if record.rounds == self.max_rounds {
                    return Err(Error::internal(format!(
                        "pass `{name}` still changes the graph after {} rounds: it does not reach a fixed point \
                         (a bug in the pass)",
                        self.max_rounds
                    )));
                }
                record.rewrites += patch.rewrites();
                apply_patch(model, patch).map_err(|e| in_pass(name, e))?;
                record.rounds += 1;
            }
            records.push(record_after(record, model));
        }
        Ok(records)
    }
}

/// Runs `pass` once, applying at most one patch: for a pass that is no rewrite to a fixed point (a LoRA merge
/// adds to weights, so running it again would add again). Returns its record as [`PassManager::run`] does.
pub fn run_once(name: &str, pass: &dyn Pass, model: &mut OnnxModel, ctx: &PassContext) -> Result<PassRecord> {
    let mut record = record_before(name, pass, model);
    if let Some(patch) = pass.run(model, ctx).map_err(|e| in_pass(name, e))?
        && !patch.is_empty()
    {
        record.rewrites = patch.rewrites();
        apply_patch(model, patch).map_err(|e| in_pass(name, e))?;
        record.rounds = 1;
    }
    Ok(record_after(record, model))
}

/// A pass's record before it runs: the graph's size and the pass's settings.
fn record_before(name: &str, pass: &dyn Pass, model: &OnnxModel) -> PassRecord {
    PassRecord {
        pass: name.to_string(),
        nodes_before: model.node_count(),
        nodes_after: 0,
        initializers_before: model.graph().initializer.len(),
        initializers_after: 0,
        rewrites: 0,
        rounds: 0,
        settings: pass.settings(),
    }
}

/// `record` with the graph's size after the pass.
fn record_after(record: PassRecord, model: &OnnxModel) -> PassRecord {
    PassRecord { nodes_after: model.node_count(), initializers_after: model.graph().initializer.len(), ..record }
}

/// Prefixes an error with the pass it came from.
fn in_pass(name: &str, e: Error) -> Error {
    match e {
        Error::BadFile { .. } => e,
        other => other.in_context(format!("pass `{name}`")),
    }
}
