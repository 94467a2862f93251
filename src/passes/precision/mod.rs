//! Precision: float32 -> float16 or bfloat16, weights and compute, with fp32 islands where the target or
//! the op needs them. Run it last, after the fusions (their patterns are written against fp32 graphs).
//!
//! ```text
//!   x (fp32) ──A──B──> y (fp32)          A, B convertible; W a float32 initializer
//!                 │
//!                 W
//! becomes (keep_io_types = true)
//!   x (fp32) ──Cast(h)──A──B──Cast(fp32)──> y (fp32)          W stored as h; h = float16 or bfloat16
//!
//! and around a node that stays fp32 (blocked: op or node block list, no schema or kernel for h, int8 parts,
//! sinusoidal embeddings):
//!   ──A──> a (h) ──Cast(fp32)──Blocked──Cast(h)──B──
//!
//! Kept as they are inside converted nodes:
//!   Resize roi / scales, Upsample scales            (scales is float32 in every opset)
//!   com.microsoft GroupNorm / SkipGroupNorm gamma, beta   (their own type M: float32 stays float32)
//!   LayerNormalization Mean / InvStdDev outputs     (type U, float32 with the default stash_type)
//! Converted with their node (the ONNX schema ties them to the data type T, there is no fp32 choice):
//!   LayerNormalization, GroupNormalization, InstanceNormalization scale and bias. LayerNormalization and
//!   GroupNormalization-21 still compute mean and variance in float32 (stash_type = 1).
//! ```
//!
//! What stays fp32, in order:
//! - nodes named in `node_block_list`; ops in `op_block_list` (see below);
//! - ops the ONNX schema does not allow in h at the model's opset (bfloat16 Conv, InstanceNormalization,
//!   Sin, Cos before opset 22, float16 Range, ...) and contrib ops without an h type constraint;
//! - int8 parts: DynamicQuantizeLinear, (De)QuantizeLinear, MatMulInteger and the Cast and Muls that turn
//!   its int32 result back into floats (an int32 accumulator cast to float16 overflows; ONNX Runtime fuses
//!   the fp32 chain into MatMulIntegerToFloat), MatMulIntegerToFloat, DynamicQuantizeMatMul;
//! - with `sinusoid_fp32` (default true): Sin / Cos and the float nodes that feed them, up to the first
//!   layer (MatMul, Gemm, Conv, normalization, attention) (timestep and SDXL time-id embeddings: sin(t · f)
//!   of t ≈ 1000 is garbage in half precision; diffusers computes it in float32 too);
//! - nodes with subgraphs (If / Loop / Scan) and the producers of values their subgraphs read;
//! - nodes whose output types cannot be worked out;
//! - with measured ranges (`[precision.ranges]`, float16 only): every node that reads or writes a value
//!   whose measured magnitude, times `margin`, exceeds float16's largest finite value (65504). See
//!   "Range islands" below.
//!
//! Default `op_block_list`, per target and precision (ONNX Runtime 1.31):
//! - cpu: only ops with a CPU kernel for h are converted: every other op is blocked. For float16 that
//!   leaves LayerNormalization, Attention (opset 23), SkipLayerNormalization and data movement (Reshape,
//!   Transpose, Concat, Slice, Split, Gather, Expand, ...); Add, Mul, MatMul, Conv, Gemm, Softmax,
//!   Sigmoid, Erf, InstanceNormalization, Resize, ... have no float16 CPU kernel (ONNX Runtime would cast
//!   around each of them itself). For bfloat16 even fewer: LayerNormalization, SkipLayerNormalization and
//!   data movement (not Expand); a bfloat16 graph with any other op unblocked fails to load on CPU.
//! - cuda, tensorrt: float16: nothing. bfloat16: the ops the CUDA EP has no bfloat16 kernel for (Conv
//!   before opset 22 is the schema's, ConvTranspose, Sin, Cos, InstanceNormalization, Resize, Pad,
//!   ReduceMean, the comparisons, com.microsoft GroupNorm, BiasSplitGelu, ...: [`CUDA_BF16_MISSING`]),
//!   from ONNX Runtime's kernel table, not run here.
//! - openvino: nothing (OpenVINO picks its inference precision itself; not run here).
//!
//! A given `op_block_list` replaces the default; an entry is an op type (`GroupNorm`) or a domain-qualified
//! one (`com.microsoft.Attention`, `ai.onnx.Attention`).
//!
//! Data movement ops (Reshape, Transpose, Concat, ...) follow their input: between two fp32 nodes they
//! stay fp32 instead of adding a Cast pair. A float initializer is converted in place when every reader
//! wants h, else an h copy is added next to the fp32 original. Float16 conversion clamps weights to
//! ±65504. Integer tensors are never touched. value_info entries follow the new types.
//!
//! Idempotent: on a converted graph every value already has the type it should have and `run` returns
//! `None` (the boundary Casts are not converted again: a Cast to float32 whose readers all want float32 is
//! left as it is).
//!
//! Range islands. SDXL's published VAE decoder overflows in float16: some of its activations exceed 65504
//! and become inf, then NaN after the next normalization (black images). With `[precision.ranges]` the
//! conversion measures the activation ranges of the graph first (a step of convert's plan, as for
//! int8-static: `convert::calibrate::measure_ranges`, run on a few random latents, fp32, CPU EP)
//! and hands them to the pass ([`PrecisionPass::with_ranges`]). A value is out of range when
//! `max |x| · margin > 65504`; the nodes that touch it (its producer and its readers: a value that does not
//! fit float16 can be neither written nor read as float16) stay fp32, everything else is converted as
//! usual. A normalization that reads an out-of-range value is in the island and brings the range back, so
//! islands stay small.
//!
//! ```text
//!   ──Conv──> a (|a| ≈ 1.5e5) ──Reshape──InstanceNorm──Reshape──Mul──SiLU──Conv──
//! becomes (CUDA EP: everything else float16)
//!   ──Cast(fp32)──Conv──Reshape──InstanceNorm──Cast(fp16)──Reshape──Mul──SiLU──Conv──
//! ```
//!
//! With `island = "bf16"`, an island node whose op has a bfloat16 kernel on the target (and a bfloat16
//! schema at the model's opset) computes in bfloat16 instead: float32's range, half its bytes; the others
//! stay fp32. On the CUDA EP at opset 17 that leaves Conv and InstanceNormalization fp32 (no bfloat16 schema
//! before opset 22) and puts data movement, LayerNormalization, MatMul and the elementwise ops in bfloat16.
//!
//! The default margin is 4 (values above 16376 stay fp32): the ranges come from a few latents at a small
//! size, and a maximum over a few samples underestimates the maximum over all inputs. A factor of 2 covers
//! samples that were not seen, another 2 the fp16 rounding of the island's inputs and the sums that add to
//! a value after it was measured (residual Adds of values near the limit).
//!
//! The phases live in submodules: `policy` decides which nodes stay fp32, from the tables of `kernels`
//! (ONNX Runtime's kernels per EP, the op schemas per opset); `plan` works out the type of every value
//! after the conversion and where Casts and converted constants go; `emit` builds the patch from that plan.

use std::collections::BTreeSet;

use crate::onnx::{NodeProto, is_op};
use crate::passes::{BuildContext, PassSpec};
use crate::settings::{ExecutionProvider, Precision};
use crate::{Error, Result};

mod emit;
#[cfg(test)]
mod islands_tests;
mod kernels;
mod plan;
mod policy;
mod run;
#[cfg(test)]
mod tests;

pub use kernels::{CPU_BF16_KERNELS, CPU_FP16_KERNELS, CUDA_BF16_MISSING};

/// Which ops stay fp32 (besides the ones that must, see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpPolicy {
    /// These ops stay fp32, every other op is converted.
    Block(BTreeSet<String>),
    /// Only these ops are converted (the CPU defaults: ONNX Runtime's CPU kernels for the type).
    AllowOnly(BTreeSet<String>),
}

impl OpPolicy {
    /// True when `node` stays fp32 under this policy.
    pub fn blocks(&self, node: &NodeProto) -> bool {
        match self {
            OpPolicy::Block(ops) => ops.iter().any(|e| op_matches(e, node)),
            OpPolicy::AllowOnly(ops) => !ops.iter().any(|e| op_matches(e, node)),
        }
    }

    /// The default policy for `target` and `precision` (see the module docs).
    pub fn default_for(target: ExecutionProvider, precision: Precision) -> Self {
        let set = |ops: &[&str]| ops.iter().map(|s| s.to_string()).collect();
        match (target, precision) {
            (ExecutionProvider::Cpu, Precision::Fp16) => OpPolicy::AllowOnly(set(CPU_FP16_KERNELS)),
            (ExecutionProvider::Cpu, Precision::Bf16) => OpPolicy::AllowOnly(set(CPU_BF16_KERNELS)),
            (ExecutionProvider::Cuda | ExecutionProvider::TensorRt, Precision::Bf16) => {
                OpPolicy::Block(set(CUDA_BF16_MISSING))
            }
            (_, Precision::Fp32)
            | (ExecutionProvider::Cuda | ExecutionProvider::TensorRt | ExecutionProvider::OpenVino, _) => {
                OpPolicy::Block(BTreeSet::new())
            }
        }
    }
}

/// True when a block-list entry names `node`'s op: `Op` (any domain) or `domain.Op`.
fn op_matches(entry: &str, node: &NodeProto) -> bool {
    if entry == node.op_type() {
        return true;
    }
    let domain = if node.domain().is_empty() { "ai.onnx" } else { node.domain() };
    entry.strip_prefix(domain).and_then(|r| r.strip_prefix('.')) == Some(node.op_type())
}

/// Options of the precision pass (a profile's `[precision]`); the precision itself is the conversion's
/// (`--precision`). `keep_io_types` (default true), `op_block_list` (op types; replaces the target's
/// default), `node_block_list` (node names), `sinusoid_fp32` (default true), `ranges` (range islands,
/// off unless the table is given).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecisionOptions {
    pub keep_io_types: Option<bool>,
    pub op_block_list: Option<BTreeSet<String>>,
    #[serde(default)]
    pub node_block_list: BTreeSet<String>,
    pub sinusoid_fp32: Option<bool>,
    pub ranges: Option<RangeOptions>,
}

/// `[precision.ranges]`: measure activation ranges and keep fp32 islands where float16 would overflow
/// (see the module docs). Applies to float16 conversions; bfloat16 has float32's range.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RangeOptions {
    /// The components whose ranges are measured (default `["vae_decoder"]`); the others are converted as
    /// without ranges.
    #[serde(default = "RangeOptions::default_components")]
    pub components: Vec<String>,
    /// A value is out of range when `max |x| · margin > 65504` (default 4; at least 1).
    #[serde(default = "RangeOptions::default_margin")]
    pub margin: f32,
    /// Random latents the ranges are measured on (default 4).
    #[serde(default = "RangeOptions::default_samples")]
    pub samples: usize,
    /// Height and width of those latents (default 32: a 256x256 image; the whole-image activations of a
    /// decoder at full size would not fit in memory as extra outputs, and convolutions see the same values
    /// at any size).
    #[serde(default = "RangeOptions::default_latent_size")]
    pub latent_size: usize,
    /// What the island's nodes compute in: `"fp32"` (default), or `"bf16"` (float32's range at half the
    /// bytes) for the nodes whose op has a bfloat16 kernel on the target EP (ONNX Runtime's kernel table and
    /// the op schema at the model's opset, as `--precision bf16` decides), fp32 for the others.
    #[serde(default)]
    pub island: IslandType,
}

/// The type of a range island's nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IslandType {
    #[default]
    Fp32,
    Bf16,
}

impl RangeOptions {
    fn default_components() -> Vec<String> {
        vec!["vae_decoder".to_string()]
    }
    fn default_margin() -> f32 {
        4.0
    }
    fn default_samples() -> usize {
        4
    }
    fn default_latent_size() -> usize {
        32
    }

    /// The largest magnitude a value may have to be converted: 65504 / margin.
    pub fn limit(&self) -> f32 {
        half::f16::MAX.to_f32() / self.margin
    }
}

impl Default for RangeOptions {
    fn default() -> Self {
        RangeOptions {
            components: Self::default_components(),
            margin: Self::default_margin(),
            samples: Self::default_samples(),
            latent_size: Self::default_latent_size(),
            island: IslandType::Fp32,
        }
    }
}

/// The precision pass (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct PrecisionPass {
    /// fp16 or bf16 (`build` refuses fp32: there is nothing to convert to).
    pub precision: Precision,
    /// Graph inputs and outputs stay float32 (Casts after the inputs and before the outputs).
    pub keep_io_types: bool,
    pub ops: OpPolicy,
    /// Node names that stay fp32.
    pub node_block_list: BTreeSet<String>,
    /// Sin / Cos and what feeds them stay fp32.
    pub sinusoid_fp32: bool,
    /// Range islands: how to measure and judge ranges (`None`: off).
    pub ranges: Option<RangeOptions>,
    /// Values whose measured range does not fit float16 (with the margin): their producers and readers
    /// stay fp32. Empty until [`PrecisionPass::with_ranges`].
    pub out_of_range: BTreeSet<String>,
    /// The largest finite measured magnitude (for the record), once ranges are given.
    pub measured_max: Option<f32>,
    /// The bfloat16 policy of the target (which ops a bf16 island may compute in bfloat16).
    pub bf16_ops: OpPolicy,
}

impl PassSpec for PrecisionPass {
    const NAME: &'static str = "precision";
    const SUMMARY: &'static str =
        "fp32 -> fp16/bf16 with fp32 islands per EP kernel table (`keep_io_types`, `op_block_list`, ...)";
    type Options = PrecisionOptions;
    fn build(options: PrecisionOptions, ctx: &BuildContext) -> Result<Self> {
        if ctx.precision == Precision::Fp32 {
            return Err(Error::bad_input("the precision pass converts to fp16 or bf16; fp32 has nothing to convert"));
        }
        let defaults = PrecisionPass::new(ctx.precision, ctx.target);
        if let Some(r) = &options.ranges {
            if !(r.margin.is_finite() && r.margin >= 1.0) {
                return Err(Error::bad_input(format!(
                    "[precision.ranges] margin must be a number >= 1, not {}",
                    r.margin
                )));
            }
            if r.samples == 0 || r.latent_size == 0 {
                return Err(Error::bad_input("[precision.ranges] samples and latent_size must be at least 1"));
            }
        }
        Ok(PrecisionPass {
            ranges: options.ranges,
            keep_io_types: options.keep_io_types.unwrap_or(defaults.keep_io_types),
            ops: options.op_block_list.map_or(defaults.ops, OpPolicy::Block),
            node_block_list: options.node_block_list,
            sinusoid_fp32: options.sinusoid_fp32.unwrap_or(defaults.sinusoid_fp32),
            ..defaults
        })
    }
}

impl PrecisionPass {
    /// `precision` (fp16 or bf16) with the defaults for `target`.
    pub fn new(precision: Precision, target: ExecutionProvider) -> Self {
        PrecisionPass {
            precision,
            keep_io_types: true,
            ops: OpPolicy::default_for(target, precision),
            node_block_list: BTreeSet::new(),
            sinusoid_fp32: true,
            ranges: None,
            out_of_range: BTreeSet::new(),
            measured_max: None,
            bf16_ops: OpPolicy::default_for(target, Precision::Bf16),
        }
    }

    /// True when the ranges of `component` are to be measured before this pass runs: range islands are
    /// on for it, and the conversion is to float16 (bfloat16 holds float32's range).
    pub fn measures(&self, component: &str) -> bool {
        self.precision == Precision::Fp16
            && self.ranges.as_ref().is_some_and(|r| r.components.iter().any(|c| c == component))
    }

    /// The pass with measured ranges (min, max by value name): the values out of float16's range (with
    /// the margin of `ranges`, 4 when none is set) become islands. A value with a non-finite range (inf
    /// or NaN measured in float32 already) is out of range too.
    pub fn with_ranges(mut self, ranges: &std::collections::HashMap<String, (f32, f32)>) -> Self {
        let limit = self.ranges.get_or_insert_with(RangeOptions::default).limit();
        let mut max = 0f32;
        self.out_of_range = ranges
            .iter()
            .filter(|(_, (lo, hi))| {
                // NaN or an empty measurement (inf, -inf) is out of range too.
                let m = if lo.is_finite() && hi.is_finite() { lo.abs().max(hi.abs()) } else { f32::INFINITY };
                if m.is_finite() {
                    max = max.max(m);
                }
                m > limit
            })
            .map(|(k, _)| k.clone())
            .collect();
        self.measured_max = Some(max);
        self
    }
}

fn is_contrib(node: &NodeProto, op: &str) -> bool {
    node.op_type() == op && node.domain() == "com.microsoft"
}

fn is_constant(node: &NodeProto) -> bool {
    is_op(node, "Constant")
}

/// Shape and Size read only the shape of their input.
fn is_agnostic(node: &NodeProto) -> bool {
    is_op(node, "Shape") || is_op(node, "Size")
}
