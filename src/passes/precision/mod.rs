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
//! - nodes whose output types cannot be worked out.
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
//! The phases live in submodules: `policy` decides which nodes stay fp32, from the tables of `kernels`
//! (ONNX Runtime's kernels per EP, the op schemas per opset); `plan` works out the type of every value
//! after the conversion and where Casts and converted constants go; `emit` builds the patch from that plan.

use std::collections::BTreeSet;

use crate::onnx::{GraphIndex, NodeProto, OnnxModel, Patch};
use crate::passes::{BuildContext, Pass, PassContext, PassSpec, Target};
use crate::settings::Precision;
use crate::{Error, Result};

mod emit;
mod kernels;
mod plan;
mod policy;
#[cfg(test)]
mod tests;

pub use kernels::{CPU_BF16_KERNELS, CPU_FP16_KERNELS, CUDA_BF16_MISSING};
pub use policy::OpPolicy;

use plan::{Plan, current_types};

/// Options of the precision pass (a profile's `[precision]`); the precision itself is the conversion's
/// (`--precision`). `keep_io_types` (default true), `op_block_list` (op types; replaces the target's
/// default), `node_block_list` (node names), `sinusoid_fp32` (default true).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecisionOptions {
    pub keep_io_types: Option<bool>,
    pub op_block_list: Option<BTreeSet<String>>,
    #[serde(default)]
    pub node_block_list: BTreeSet<String>,
    pub sinusoid_fp32: Option<bool>,
}

/// The precision pass (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
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
        Ok(PrecisionPass {
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
    pub fn new(precision: Precision, target: Target) -> Self {
        PrecisionPass {
            precision,
            keep_io_types: true,
            ops: OpPolicy::default_for(target, precision),
            node_block_list: BTreeSet::new(),
            sinusoid_fp32: true,
        }
    }
}

impl Pass for PrecisionPass {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        let index = GraphIndex::new(model);
        // The types as the graph stands, and the nodes that stay fp32.
        let types = current_types(&index);
        let blocked = self.blocked(&index, &types);
        // The type of every value afterwards, and where Casts and converted constants go.
        let plan = Plan::new(self, &index, types, &blocked);
        // The patch that carries it out.
        let patch = emit::emit(self, model, &index, &plan)?;
        Ok((!patch.is_empty()).then_some(patch))
    }
}

/// True when `node` is the default-domain op `op`.
fn is_default(node: &NodeProto, op: &str) -> bool {
    node.op_type() == op && matches!(node.domain(), "" | "ai.onnx")
}

fn is_contrib(node: &NodeProto, op: &str) -> bool {
    node.op_type() == op && node.domain() == "com.microsoft"
}

fn is_constant(node: &NodeProto) -> bool {
    is_default(node, "Constant")
}

/// Shape and Size read only the shape of their input.
fn is_agnostic(node: &NodeProto) -> bool {
    is_default(node, "Shape") || is_default(node, "Size")
}
