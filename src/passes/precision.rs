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

use std::collections::{BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use half::{bf16, f16};

use crate::onnx::infer::Inference;
use crate::onnx::proto::onnx::type_proto;
use crate::onnx::tensor::{dtype_name, tensor_from_raw};
use crate::onnx::{
    GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, TensorProto, ValueInfoProto, attr, attr_int, dtype,
    make_attr_int, make_attr_tensor, outer_references,
};
use crate::passes::{BuildContext, Pass, PassContext, PassSpec, Target};
use crate::settings::Precision;
use crate::{Error, Result};

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
    pub fn default_for(target: Target, precision: Precision) -> Self {
        let set = |ops: &[&str]| ops.iter().map(|s| s.to_string()).collect();
        match (target, precision) {
            (Target::Cpu, Precision::Fp16) => OpPolicy::AllowOnly(set(CPU_FP16_KERNELS)),
            (Target::Cpu, Precision::Bf16) => OpPolicy::AllowOnly(set(CPU_BF16_KERNELS)),
            (Target::Cuda | Target::TensorRt, Precision::Bf16) => OpPolicy::Block(set(CUDA_BF16_MISSING)),
            (_, Precision::Fp32) | (Target::Cuda | Target::TensorRt | Target::OpenVino, _) => {
                OpPolicy::Block(BTreeSet::new())
            }
        }
    }
}

/// Ops with a float16 kernel on ONNX Runtime 1.31's CPU EP (x86-64 build; `get_all_opkernel_def`), as
/// far as they occur in exported diffusion graphs, plus Shape / Size, which read no values.
pub const CPU_FP16_KERNELS: &[&str] = &[
    "ai.onnx.Attention",
    "Cast",
    "Clip",
    "Compress",
    "Concat",
    "ConstantOfShape",
    "Dropout",
    "Expand",
    "Flatten",
    "Gather",
    "GatherElements",
    "GatherND",
    "GroupQueryAttention",
    "Identity",
    "IsInf",
    "IsNaN",
    "LayerNormalization",
    "MatMulNBits",
    "Max",
    "Min",
    "Mod",
    "RMSNormalization",
    "Reshape",
    "ReverseSequence",
    "RotaryEmbedding",
    "Round",
    "ScatterElements",
    "ScatterND",
    "Shape",
    "Shrink",
    "Sign",
    "SimplifiedLayerNormalization",
    "Size",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "Slice",
    "Split",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
];

/// Ops with a bfloat16 kernel on ONNX Runtime 1.31's CPU EP (as [`CPU_FP16_KERNELS`]).
pub const CPU_BF16_KERNELS: &[&str] = &[
    "Cast",
    "Compress",
    "Concat",
    "ConstantOfShape",
    "Flatten",
    "Gather",
    "GatherElements",
    "GatherND",
    "Identity",
    "IsInf",
    "IsNaN",
    "LayerNormalization",
    "Reshape",
    "ReverseSequence",
    "ScatterElements",
    "ScatterND",
    "Shape",
    "Shrink",
    "Sign",
    "SimplifiedLayerNormalization",
    "Size",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "Slice",
    "Split",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
];

/// Ops the CUDA EP has float16 but no bfloat16 kernels for (ONNX Runtime's `docs/OperatorKernels.md`,
/// main branch of 2026; not checked on a GPU here).
pub const CUDA_BF16_MISSING: &[&str] = &[
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "BiasAdd",
    "BiasSplitGelu",
    "Ceil",
    "Clip",
    "ConvTranspose",
    "Cos",
    "CumSum",
    "DepthToSpace",
    "Einsum",
    "Elu",
    "Equal",
    "Floor",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "GroupNorm",
    "HardSigmoid",
    "InstanceNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MaxPool",
    "NhwcConv",
    "OneHot",
    "PRelu",
    "Pad",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
    "Resize",
    "Round",
    "Selu",
    "Sin",
    "SkipGroupNorm",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "TopK",
    "Upsample",
];

/// Default-domain ops whose float type constraint admits float16 / bfloat16 only from some opset on
/// (0 = no opset does). Ops not listed: float16 always, bfloat16 from opset 13 (generated from the
/// `onnx` 1.23 schemas, first float input's constraint).
const SCHEMA_SINCE: &[(&str, i64, i64)] = &[
    ("Acos", 1, 22),
    ("Acosh", 1, 22),
    ("Asin", 1, 22),
    ("Asinh", 1, 22),
    ("Atan", 1, 22),
    ("Atanh", 1, 22),
    ("AveragePool", 1, 22),
    ("BatchNormalization", 1, 14),
    ("Bernoulli", 1, 22),
    ("Celu", 28, 28),
    ("Compress", 1, 28),
    ("ConstantOfShape", 1, 20),
    ("Conv", 1, 22),
    ("ConvTranspose", 1, 22),
    ("Cos", 1, 22),
    ("Cosh", 1, 22),
    ("CumSum", 14, 14),
    ("DeformConv", 1, 22),
    ("Det", 1, 22),
    ("Einsum", 1, 28),
    ("Elu", 1, 22),
    ("EyeLike", 1, 22),
    ("GRU", 1, 22),
    ("GlobalAveragePool", 1, 22),
    ("GlobalLpPool", 1, 22),
    ("GlobalMaxPool", 1, 22),
    ("GreaterOrEqual", 1, 16),
    ("GridSample", 1, 22),
    ("HardSigmoid", 1, 22),
    ("HardSwish", 1, 22),
    ("InstanceNormalization", 1, 22),
    ("IsInf", 20, 20),
    ("LSTM", 1, 22),
    ("LeakyRelu", 1, 16),
    ("LessOrEqual", 1, 16),
    ("LpNormalization", 1, 22),
    ("LpPool", 1, 22),
    ("MaxPool", 1, 22),
    ("MaxRoiPool", 1, 22),
    ("MaxUnpool", 1, 22),
    ("Mish", 1, 22),
    ("Multinomial", 1, 22),
    ("OneHot", 1, 0),
    ("PRelu", 1, 16),
    ("RNN", 1, 22),
    ("RandomNormal", 1, 22),
    ("RandomNormalLike", 1, 22),
    ("RandomUniform", 1, 22),
    ("RandomUniformLike", 1, 22),
    ("Range", 27, 27),
    ("ReverseSequence", 1, 28),
    ("RoiAlign", 1, 22),
    ("Round", 1, 22),
    ("Scatter", 1, 0),
    ("Selu", 1, 22),
    ("Shrink", 1, 0),
    ("Sin", 1, 22),
    ("Sinh", 1, 22),
    ("Softplus", 1, 22),
    ("Softsign", 1, 22),
    ("Tan", 1, 22),
    ("ThresholdedRelu", 1, 22),
    ("TopK", 1, 24),
    ("Upsample", 1, 0),
    ("Where", 1, 16),
];

/// com.microsoft ops (ONNX Runtime 1.31 schemas) whose float type admits float16 and bfloat16.
const CONTRIB_FP16_BF16: &[&str] = &[
    "Attention",
    "BiasDropout",
    "BiasGelu",
    "FastGelu",
    "FusedMatMul",
    "Gelu",
    "GroupQueryAttention",
    "MultiHeadAttention",
    "QuickGelu",
    "RotaryEmbedding",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "TransposeMatMul",
];

/// com.microsoft ops whose float type admits float16 but not bfloat16.
const CONTRIB_FP16_ONLY: &[&str] = &[
    "BiasAdd",
    "BiasSoftmax",
    "BiasSplitGelu",
    "DecoderMaskedMultiHeadAttention",
    "EmbedLayerNormalization",
    "FusedConv",
    "GroupNorm",
    "NhwcConv",
    "PackedAttention",
    "PackedMultiHeadAttention",
    "SkipGroupNorm",
];

/// Ops that move or pick data without computing: between fp32 nodes they stay fp32.
const FOLLOWERS: &[&str] = &[
    "Concat",
    "DepthToSpace",
    "Expand",
    "Flatten",
    "Gather",
    "GatherElements",
    "GatherND",
    "Identity",
    "Pad",
    "Reshape",
    "Slice",
    "SpaceToDepth",
    "Split",
    "Squeeze",
    "Tile",
    "Transpose",
    "Unsqueeze",
];

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

    /// Indices of the nodes of `model` that stay fp32 (for reports and tests).
    pub fn blocked_nodes(&self, model: &OnnxModel) -> BTreeSet<usize> {
        let index = GraphIndex::new(model);
        let types = current_types(&index);
        self.blocked(&index, &types).iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i).collect()
    }

    /// Which nodes stay fp32.
    fn blocked(&self, index: &GraphIndex, cur: &HashMap<String, i32>) -> Vec<bool> {
        let nodes = index.nodes();
        let opset = index.model().opset("").unwrap_or(1);
        let h = self.precision;
        let mut blocked: Vec<bool> = nodes
            .iter()
            .map(|n| {
                !is_constant(n)
                    && !is_default(n, "Cast")
                    && (self.node_block_list.contains(n.name())
                        || self.ops.blocks(n)
                        || is_int8_op(n)
                        || !schema_accepts(n, opset, h)
                        || has_subgraph(n))
            })
            .collect();
        // The int8 chains: MatMulInteger -> Cast -> Mul(·, x_scale · w_scale), and the scale product.
        for (i, n) in nodes.iter().enumerate() {
            if !(is_default(n, "MatMulInteger") || is_default(n, "ConvInteger")) {
                continue;
            }
            blocked[i] = true;
            for out in n.output.iter().filter(|o| !o.is_empty()) {
                for &c in index.consumers(out) {
                    if !is_default(&nodes[c], "Cast") {
                        continue;
                    }
                    blocked[c] = true;
                    let cast_out = nodes[c].output.first().map(String::as_str).unwrap_or("");
                    for &m in index.consumers(cast_out) {
                        if !is_default(&nodes[m], "Mul") {
                            continue;
                        }
                        blocked[m] = true;
                        for s in &nodes[m].input {
                            if let Some(p) = index.producer_op(s, "Mul") {
                                blocked[p] = true;
                            }
                        }
                    }
                }
            }
        }
        // Values read inside subgraphs keep their type: their producers stay fp32.
        for n in nodes.iter().filter(|n| has_subgraph(n)) {
            for v in outer_references(n) {
                if let Some(p) = index.producer(v) {
                    blocked[p] = true;
                }
            }
        }
        if self.sinusoid_fp32 {
            let mut stack: Vec<usize> = nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| is_default(n, "Sin") || is_default(n, "Cos"))
                .map(|(i, _)| i)
                .collect();
            let mut seen: HashSet<usize> = stack.iter().copied().collect();
            while let Some(i) = stack.pop() {
                // The walk stays in the cheap region that computes the embedding's argument: it stops at
                // layers (a timestep embedding is the input of Linears, never their output) and at Shape /
                // Size, which read no values.
                if is_layer(&nodes[i]) || is_agnostic(&nodes[i]) {
                    continue;
                }
                if !is_constant(&nodes[i]) {
                    blocked[i] = true;
                }
                for v in nodes[i].input.iter().filter(|v| cur.get(v.as_str()) == Some(&dtype::FLOAT)) {
                    if let Some(p) = index.producer(v)
                        && seen.insert(p)
                    {
                        stack.push(p);
                    }
                }
            }
        }
        // A node that reads or writes a value of unknown type cannot be converted safely.
        let unknown = |v: &String| !v.is_empty() && !cur.contains_key(v.as_str());
        for (i, n) in nodes.iter().enumerate() {
            if !blocked[i] && !is_constant(n) && (n.output.iter().any(unknown) || n.input.iter().any(unknown)) {
                blocked[i] = true;
            }
        }
        blocked
    }
}

/// How a node is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Computes in h: float inputs are read as h, float32 outputs become h.
    Half,
    /// Stays as it is: float inputs are read as float32.
    Keep,
    /// Reads no values (Shape, Size) or converts types itself (Cast): reads whatever it gets.
    Agnostic,
    /// A Constant node: its value is converted where it is read.
    Constant,
}

impl Pass for PrecisionPass {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        let index = GraphIndex::new(model);
        let nodes = index.nodes();
        let graph = index.graph();
        let h = self.precision.dtype();
        let cur = current_types(&index);
        let blocked = self.blocked(&index, &cur);
        let is_float = |v: &str| cur.get(v) == Some(&dtype::FLOAT);
        let is_const = |v: &str| {
            (index.is_initializer(v) && !index.is_graph_input(v)) || index.producer_node(v).is_some_and(is_constant)
        };

        // Which reads want h: a converted (or converting) node's non-fixed float input.
        let wants_half = |c: usize, k: usize| -> bool {
            let n = &nodes[c];
            !blocked[c] && !is_constant(n) && !is_agnostic(n) && !is_default(n, "Cast") && !fixed_input(n, k)
        };
        let read_as_half = |v: &str| -> bool {
            index
                .consumers(v)
                .iter()
                .any(|&c| nodes[c].input.iter().enumerate().any(|(k, x)| x == v && wants_half(c, k)))
        };

        // The type every value has after the conversion (constants: per read, see below).
        let mut new: HashMap<String, i32> = cur.clone();
        for v in &graph.input {
            let v = v.name();
            if !self.keep_io_types && is_float(v) && !is_const(v) && read_as_half(v) {
                new.insert(v.to_string(), h);
            }
        }
        let mut modes = Vec::with_capacity(nodes.len());
        let mut new_cast_to: HashMap<usize, i32> = HashMap::new();
        let mut half_reads: Vec<(usize, usize)> = Vec::new(); // (node, input) reading a value as h
        let mut float_reads: Vec<(usize, usize)> = Vec::new(); // (node, input) reading an h value as fp32
        for (i, n) in nodes.iter().enumerate() {
            let mode = if is_constant(n) {
                Mode::Constant
            } else if blocked[i] {
                Mode::Keep
            } else if is_agnostic(n) || is_default(n, "Cast") {
                Mode::Agnostic
            } else if is_follower(n) && {
                // Follows its non-constant float inputs: stays fp32 when none is h. On constants alone (an
                // Identity of a weight) it follows its readers.
                let live: Vec<&String> =
                    n.input.iter().filter(|v| !v.is_empty() && is_float(v) && !is_const(v)).collect();
                if live.is_empty() {
                    !n.output.iter().any(|o| read_as_half(o) || (!self.keep_io_types && index.is_graph_output(o)))
                } else {
                    !live.iter().any(|v| new.get(v.as_str()) == Some(&h))
                }
            } {
                Mode::Keep
            } else {
                Mode::Half
            };
            modes.push(mode);
            match mode {
                Mode::Half => {
                    for (k, v) in n.input.iter().enumerate() {
                        if v.is_empty() || !is_float(v) {
                            continue;
                        }
                        let now_h = new.get(v.as_str()) == Some(&h);
                        if !fixed_input(n, k) && !now_h {
                            half_reads.push((i, k));
                        } else if fixed_input(n, k) && now_h && !is_const(v) {
                            // e.g. Resize scales computed by a converted node: read as float32 again.
                            float_reads.push((i, k));
                        }
                    }
                    for (k, o) in n.output.iter().enumerate() {
                        if !o.is_empty() && is_float(o) && !fixed_output(n, k) {
                            new.insert(o.clone(), h);
                        }
                    }
                }
                Mode::Keep => {
                    for (k, v) in n.input.iter().enumerate() {
                        if !v.is_empty() && is_float(v) && !is_const(v) && new.get(v.as_str()) == Some(&h) {
                            float_reads.push((i, k));
                        }
                    }
                }
                Mode::Agnostic => {
                    // A Cast to float32 whose value is read as h becomes a Cast to h.
                    if is_default(n, "Cast")
                        && attr_int(n, "to") == Some(dtype::FLOAT as i64)
                        && let Some(out) = n.output.first().filter(|o| !o.is_empty())
                    {
                        let as_output = !self.keep_io_types && index.is_graph_output(out);
                        if read_as_half(out) || as_output {
                            new_cast_to.insert(i, h);
                            new.insert(out.clone(), h);
                        }
                    }
                }
                Mode::Constant => {}
            }
        }

        let mut patch = Patch::new();
        let suffix = self.precision.name();
        // Per node: input index -> new name; output index -> new name.
        let mut input_renames: HashMap<usize, HashMap<usize, String>> = HashMap::new();
        let mut output_renames: HashMap<usize, HashMap<usize, String>> = HashMap::new();
        let mut casts: HashMap<(String, i32), String> = HashMap::new();
        let mut cast_of = |patch: &mut Patch, v: &str, to: i32| -> String {
            casts
                .entry((v.to_string(), to))
                .or_insert_with(|| {
                    let tag = if to == dtype::FLOAT { "fp32" } else { suffix };
                    let name = patch.fresh_name(&index, &format!("{v}_{tag}"));
                    patch.add_node(
                        NodeBuilder::new("Cast").inputs([v]).outputs([&name]).attr_int("to", to as i64).build(),
                    );
                    if let Some(vi) = index.value_info(v) {
                        patch.set_value_info(retyped(vi, &name, to));
                    }
                    name
                })
                .clone()
        };

        // Graph outputs that must stay float32 but are now produced in h: the producer writes an h value,
        // a Cast writes the output.
        let mut h_alias: HashMap<String, String> = HashMap::new();
        if self.keep_io_types {
            for out in &graph.output {
                let o = out.name();
                let Some(p) = index.producer(o) else { continue };
                if !(is_float(o) && new.get(o) == Some(&h)) {
                    continue;
                }
                let alias = patch.fresh_name(&index, &format!("{o}_{suffix}"));
                let k = nodes[p].output.iter().position(|x| x == o).unwrap_or(0);
                output_renames.entry(p).or_default().insert(k, alias.clone());
                patch.add_node(
                    NodeBuilder::new("Cast").inputs([&alias]).outputs([o]).attr_int("to", dtype::FLOAT as i64).build(),
                );
                if let Some(vi) = index.value_info(o) {
                    patch.set_value_info(retyped(vi, &alias, h));
                }
                h_alias.insert(o.to_string(), alias);
            }
            // Everything that read the output as h reads the alias.
            for (o, alias) in &h_alias {
                for &c in index.consumers(o) {
                    if modes[c] == Mode::Keep {
                        continue;
                    }
                    for (k, x) in nodes[c].input.iter().enumerate() {
                        if x == o && !(modes[c] == Mode::Half && fixed_input(&nodes[c], k)) {
                            input_renames.entry(c).or_default().insert(k, alias.clone());
                        }
                    }
                }
            }
        }

        // Reads of fp32 values as h: constants are converted, other values cast.
        let mut const_reads: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for &(i, k) in &half_reads {
            let v = &nodes[i].input[k];
            if is_const(v) {
                const_reads.entry(v.clone()).or_default().push((i, k));
            } else {
                let name = cast_of(&mut patch, v, h);
                input_renames.entry(i).or_default().insert(k, name);
            }
        }
        for &(i, k) in &float_reads {
            let v = &nodes[i].input[k];
            if h_alias.contains_key(v) {
                continue; // the graph output itself is the float32 value
            }
            let name = cast_of(&mut patch, v, dtype::FLOAT);
            input_renames.entry(i).or_default().insert(k, name);
        }
        let mut replaced_constants: HashMap<usize, TensorProto> = HashMap::new();
        let mut const_names: Vec<&String> = const_reads.keys().collect();
        const_names.sort();
        for v in const_names {
            let reads = &const_reads[v];
            let tensor = index.const_tensor(v).ok_or_else(|| Error::runtime(format!("`{v}` is not a constant")))?;
            let all_half = !index.is_graph_output(v)
                && index.consumers(v).iter().all(|&c| {
                    let slots: Vec<usize> =
                        nodes[c].input.iter().enumerate().filter(|(_, x)| *x == v).map(|(k, _)| k).collect();
                    !slots.is_empty() && slots.iter().all(|k| reads.contains(&(c, *k)))
                });
            let producer = index.producer(v);
            if all_half {
                new.insert(v.clone(), h);
                let converted = convert_tensor(model, &tensor, v, self.precision)?;
                match producer {
                    Some(p) => {
                        replaced_constants.insert(p, converted);
                    }
                    None => patch.add_initializer(converted),
                }
            } else {
                let name = patch.fresh_name(&index, &format!("{v}_{suffix}"));
                patch.add_initializer(convert_tensor(model, &tensor, &name, self.precision)?);
                for &(i, k) in reads {
                    input_renames.entry(i).or_default().insert(k, name.clone());
                }
            }
        }

        // Rebuild the nodes that change.
        let mut changed: BTreeSet<usize> = BTreeSet::new();
        changed.extend(input_renames.keys());
        changed.extend(output_renames.keys());
        changed.extend(new_cast_to.keys());
        changed.extend(replaced_constants.keys());
        let attr_changes: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| modes[*i] == Mode::Half && needs_attr_change(n, &cur))
            .map(|(i, _)| i)
            .collect();
        changed.extend(&attr_changes);
        for (i, n) in nodes.iter().enumerate() {
            if modes[i] == Mode::Half && n.output.iter().any(|o| !o.is_empty() && new.get(o) != cur.get(o)) {
                patch.count_rewrite();
            }
        }
        for &i in &changed {
            let mut node = nodes[i].clone();
            if let Some(r) = input_renames.get(&i) {
                for (&k, name) in r {
                    node.input[k] = name.clone();
                }
            }
            if let Some(r) = output_renames.get(&i) {
                for (&k, name) in r {
                    node.output[k] = name.clone();
                }
            }
            if let Some(&to) = new_cast_to.get(&i) {
                set_attr(&mut node, make_attr_int("to", to as i64));
            }
            if let Some(t) = replaced_constants.remove(&i) {
                node.attribute.clear();
                node.attribute.push(make_attr_tensor("value", t));
            }
            if attr_changes.contains(&i) {
                change_attrs(&mut node, self.precision)?;
            }
            patch.remove_node(i);
            patch.add_node(node);
        }

        // Declared types follow.
        for v in graph.input.iter().chain(graph.value_info.iter()).chain(graph.output.iter()) {
            let name = v.name();
            if h_alias.contains_key(name) {
                continue;
            }
            let declared = match v.type_.as_ref().and_then(|t| t.value.as_ref()) {
                Some(type_proto::Value::TensorType(tt)) => tt.elem_type,
                _ => None,
            };
            if let (Some(&t), Some(declared)) = (new.get(name), declared)
                && t != declared
            {
                patch.set_value_info(retyped(v, name, t));
            }
        }
        Ok((!patch.is_empty()).then_some(patch))
    }
}

/// Element types of every value, as the graph stands: declared or initializer types, ONNX ops through
/// [`Inference`], the rest (contrib ops, ops `infer` does not know) by the rules of [`output_type`].
fn current_types(index: &GraphIndex) -> HashMap<String, i32> {
    let facts = Inference::run(index);
    let graph = index.graph();
    let mut types: HashMap<String, i32> = HashMap::new();
    for v in &graph.input {
        if let Some(t) = index.declared_elem_type(v.name()) {
            types.insert(v.name().to_string(), t);
        }
    }
    for t in &graph.initializer {
        types.insert(t.name().to_string(), t.data_type());
    }
    for n in index.nodes() {
        for (k, o) in n.output.iter().enumerate() {
            if o.is_empty() {
                continue;
            }
            let t = facts.dtype(o).filter(|&t| t != 0).or_else(|| output_type(n, k, &types));
            if let Some(t) = t {
                types.insert(o.clone(), t);
            }
        }
    }
    types
}

/// The element type of output `k` of `n`, for the ops `infer` does not type.
fn output_type(n: &NodeProto, k: usize, types: &HashMap<String, i32>) -> Option<i32> {
    let input = |i: usize| n.input.get(i).filter(|v| !v.is_empty()).and_then(|v| types.get(v.as_str()).copied());
    let attr_dtype = |name: &str| attr_int(n, name).and_then(|v| i32::try_from(v).ok());
    let first_float = || {
        n.input
            .iter()
            .filter_map(|v| types.get(v.as_str()).copied())
            .find(|&t| crate::onnx::tensor::is_float(t))
            .or_else(|| input(0))
    };
    if !matches!(n.domain(), "" | "ai.onnx" | "com.microsoft") {
        return None; // an op of an unknown domain: no guess
    }
    let op = n.op_type();
    match op {
        "Cast" => attr_dtype("to"),
        "Constant" => crate::onnx::constant_node_tensor(n).map(|t| t.data_type()),
        "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => Some(dtype::INT64),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or" | "Xor" | "IsNaN"
        | "IsInf" => Some(dtype::BOOL),
        "DynamicQuantizeLinear" => {
            Some([dtype::UINT8, dtype::FLOAT, dtype::UINT8].get(k).copied().unwrap_or(dtype::UINT8))
        }
        "MatMulInteger" | "ConvInteger" => Some(dtype::INT32),
        "MatMulIntegerToFloat" => input(2),
        "DynamicQuantizeMatMul" => input(0),
        "QuantizeLinear" => input(2).or(Some(dtype::UINT8)),
        "DequantizeLinear" => input(1),
        "TopK" if k == 1 => Some(dtype::INT64),
        "LayerNormalization" | "SkipLayerNormalization" | "SkipSimplifiedLayerNormalization" if k == 1 || k == 2 => {
            Some(dtype::FLOAT)
        }
        "ConstantOfShape" => {
            Some(attr(n, "value").and_then(|a| a.t.as_ref()).map(|t| t.data_type()).unwrap_or(dtype::FLOAT))
        }
        "RandomNormal" | "RandomUniform" => Some(attr_dtype("dtype").unwrap_or(dtype::FLOAT)),
        "RandomNormalLike" | "RandomUniformLike" | "EyeLike" | "Bernoulli" => attr_dtype("dtype").or_else(|| input(0)),
        _ => first_float(),
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

/// Ops with weights or whole-tensor statistics (where the sinusoid walk stops).
fn is_layer(node: &NodeProto) -> bool {
    matches!(
        node.op_type(),
        "MatMul"
            | "Gemm"
            | "Conv"
            | "ConvTranspose"
            | "Einsum"
            | "Attention"
            | "MultiHeadAttention"
            | "LayerNormalization"
            | "GroupNormalization"
            | "InstanceNormalization"
            | "GroupNorm"
            | "SkipLayerNormalization"
            | "MatMulInteger"
            | "FusedMatMul"
    )
}

/// Shape and Size read only the shape of their input.
fn is_agnostic(node: &NodeProto) -> bool {
    is_default(node, "Shape") || is_default(node, "Size")
}

fn is_follower(node: &NodeProto) -> bool {
    matches!(node.domain(), "" | "ai.onnx") && FOLLOWERS.contains(&node.op_type())
}

fn has_subgraph(node: &NodeProto) -> bool {
    node.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())
}

/// Quantization ops, whatever their domain: the int8 parts stay as they are.
fn is_int8_op(node: &NodeProto) -> bool {
    let op = node.op_type();
    op.starts_with("QLinear")
        || matches!(
            op,
            "DynamicQuantizeLinear"
                | "QuantizeLinear"
                | "DequantizeLinear"
                | "MatMulInteger"
                | "ConvInteger"
                | "MatMulIntegerToFloat"
                | "DynamicQuantizeMatMul"
                | "DynamicQuantizeLSTM"
                | "QAttention"
                | "QGemm"
                | "QOrderedMatMul"
        )
}

/// Inputs of a converted node that keep their type.
fn fixed_input(node: &NodeProto, k: usize) -> bool {
    (is_default(node, "Resize") && (k == 1 || k == 2))
        || (is_default(node, "Upsample") && k == 1)
        || ((is_contrib(node, "GroupNorm") || is_contrib(node, "SkipGroupNorm")) && (k == 1 || k == 2))
}

/// Outputs of a converted node that keep their type (float32 statistics).
fn fixed_output(node: &NodeProto, k: usize) -> bool {
    (is_default(node, "LayerNormalization") && (k == 1 || k == 2))
        || (is_default(node, "SimplifiedLayerNormalization") && k == 1)
        || ((is_contrib(node, "SkipLayerNormalization") || is_contrib(node, "SkipSimplifiedLayerNormalization"))
            && (k == 1 || k == 2))
}

/// True when a block-list entry names `node`'s op: `Op` (any domain) or `domain.Op`.
fn op_matches(entry: &str, node: &NodeProto) -> bool {
    if entry == node.op_type() {
        return true;
    }
    let domain = if node.domain().is_empty() { "ai.onnx" } else { node.domain() };
    entry.strip_prefix(domain).and_then(|r| r.strip_prefix('.')) == Some(node.op_type())
}

/// True when the op's schema admits the half type at the model's opset.
fn schema_accepts(node: &NodeProto, opset: i64, h: Precision) -> bool {
    let op = node.op_type();
    match node.domain() {
        "" | "ai.onnx" => {
            let (fp16, bf16) =
                SCHEMA_SINCE.iter().find(|(o, _, _)| *o == op).map(|&(_, a, b)| (a, b)).unwrap_or((1, 13));
            let since = if h == Precision::Fp16 { fp16 } else { bf16 };
            since != 0 && opset >= since
        }
        "com.microsoft" => CONTRIB_FP16_BF16.contains(&op) || (h == Precision::Fp16 && CONTRIB_FP16_ONLY.contains(&op)),
        _ => false,
    }
}

/// Converted nodes whose output type is set by an attribute.
fn needs_attr_change(node: &NodeProto, cur: &HashMap<String, i32>) -> bool {
    let out_is_float = node.output.first().is_some_and(|o| cur.get(o.as_str()) == Some(&dtype::FLOAT));
    out_is_float
        && (is_default(node, "ConstantOfShape")
            || is_default(node, "RandomNormal")
            || is_default(node, "RandomUniform")
            || attr_int(node, "dtype") == Some(dtype::FLOAT as i64))
}

/// Sets the type attribute of a converted ConstantOfShape / Random* node.
fn change_attrs(node: &mut NodeProto, h: Precision) -> Result<()> {
    if is_default(node, "ConstantOfShape") {
        let value = match attr(node, "value").and_then(|a| a.t.as_ref()) {
            Some(t) => t.clone(),
            None => tensor_from_raw("value", dtype::FLOAT, &[1], Bytes::from(0f32.to_le_bytes().to_vec())),
        };
        let floats = crate::onnx::tensor::bytes_to_f32(value.name(), value.data_type(), &inline_bytes(&value)?)?;
        let mut t = half_tensor(value.name(), &value.dims, &floats, h);
        t.dims = value.dims.clone();
        set_attr(node, make_attr_tensor("value", t));
    } else {
        set_attr(node, make_attr_int("dtype", h.dtype() as i64));
    }
    Ok(())
}

/// The bytes of a small tensor held in an attribute.
fn inline_bytes(t: &TensorProto) -> Result<Bytes> {
    if let Some(raw) = &t.raw_data {
        return Ok(raw.clone());
    }
    if t.data_type() == dtype::FLOAT {
        return Ok(Bytes::from(t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()));
    }
    Err(Error::bad_input(format!(
        "tensor `{}` ({}) holds no data dfast can read in place",
        t.name(),
        dtype_name(t.data_type())
    )))
}

/// Replaces (or adds) an attribute by name.
fn set_attr(node: &mut NodeProto, a: crate::onnx::AttributeProto) {
    node.attribute.retain(|x| x.name() != a.name());
    node.attribute.push(a);
}

/// A float32 constant as an h tensor called `name` (float16 clamps to its finite range).
fn convert_tensor(model: &OnnxModel, t: &TensorProto, name: &str, h: Precision) -> Result<TensorProto> {
    if t.data_type() != dtype::FLOAT {
        return Err(Error::runtime(format!("`{}` is {}, not float32", t.name(), dtype_name(t.data_type()))));
    }
    let bytes = model.tensor_bytes(t)?;
    let mut raw = Vec::with_capacity(bytes.len() / 2);
    for c in bytes.chunks_exact(4) {
        raw.extend_from_slice(&half_bits(f32::from_le_bytes([c[0], c[1], c[2], c[3]]), h).to_le_bytes());
    }
    let mut out = tensor_from_raw(name, h.dtype(), &[], Bytes::from(raw));
    out.dims = t.dims.clone();
    Ok(out)
}

fn half_tensor(name: &str, dims: &[i64], values: &[f32], h: Precision) -> TensorProto {
    let raw: Vec<u8> = values.iter().flat_map(|&v| half_bits(v, h).to_le_bytes()).collect();
    let mut t = tensor_from_raw(name, h.dtype(), &[], Bytes::from(raw));
    t.dims = dims.to_vec();
    t
}

/// The bits of `v` in h; float16 saturates at ±65504 instead of overflowing to infinity.
fn half_bits(v: f32, h: Precision) -> u16 {
    if h == Precision::Bf16 {
        return bf16::from_f32(v).to_bits();
    }
    let max = f16::MAX.to_f32();
    let v = if v.is_finite() { v.clamp(-max, max) } else { v };
    f16::from_f32(v).to_bits()
}

/// A copy of value info `vi` called `name` with element type `t` (shape kept).
fn retyped(vi: &ValueInfoProto, name: &str, t: i32) -> ValueInfoProto {
    let mut v = vi.clone();
    v.set_name(name.to_string());
    if let Some(type_proto::Value::TensorType(tt)) = v.type_.mut_or_insert_default().value.as_mut() {
        tt.set_elem_type(t);
    } else {
        let mut tt = type_proto::Tensor::new();
        tt.set_elem_type(t);
        v.type_.mut_or_insert_default().value = Some(type_proto::Value::TensorType(tt));
    }
    v
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use ndarray::ArrayD;

    use super::*;
    use crate::onnx::tensor::{tensor_from_f32, tensor_from_i64};
    use crate::onnx::{ModelProto, OperatorSetIdProto, attr_tensor, is_op, make_tensor_value_info};
    use crate::passes::int8_dynamic::tests::{array, count, relative_l2, run, unet_feeds};
    use crate::passes::{Int8Dynamic, Int8Format, PassManager};

    fn model_path(pipeline: &str, component: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(pipeline).join(component).join("model.onnx")
    }

    /// Inputs for any tiny model: `unet_feeds`' shapes, token ids for text encoders.
    fn feeds(path: &Path) -> Vec<(String, ArrayD<f32>)> {
        unet_feeds(path)
            .into_iter()
            .map(|(name, a)| {
                if name == "input_ids" {
                    let mut k = 0.0;
                    let ids = a.mapv(|_| {
                        k += 1.0;
                        (k * 7.0) % 40.0
                    });
                    (name, ids)
                } else {
                    (name, a)
                }
            })
            .collect()
    }

    fn convert(pass: &PrecisionPass, model: &mut OnnxModel) -> crate::passes::PassRecord {
        let records = PassManager::new().with(pass.clone()).run(model, &PassContext::new(Target::Cpu)).unwrap();
        records.into_iter().next().unwrap()
    }

    fn io_types(model: &OnnxModel) -> Vec<(String, Option<i32>)> {
        let index = GraphIndex::new(model);
        let g = model.graph();
        g.input
            .iter()
            .chain(g.output.iter())
            .map(|v| (v.name().to_string(), index.declared_elem_type(v.name())))
            .collect()
    }

    /// A structural check of element types: every value's type is worked out from the ops (independently of
    /// the pass), the float inputs of each node agree with each other, and every declared type (graph
    /// outputs, value_info) agrees with the worked-out one. Returns the problems found.
    fn type_problems(model: &OnnxModel) -> Vec<String> {
        let g = model.graph();
        let index = GraphIndex::new(model);
        let mut types: HashMap<String, i32> = HashMap::new();
        for v in &g.input {
            if let Some(t) = index.declared_elem_type(v.name()) {
                types.insert(v.name().to_string(), t);
            }
        }
        for t in &g.initializer {
            types.insert(t.name().to_string(), t.data_type());
        }
        let float = |t: i32| crate::onnx::tensor::is_float(t);
        let mut problems = Vec::new();
        for n in &g.node {
            let op = n.op_type();
            let ty = |v: &String| types.get(v.as_str()).copied();
            // Inputs that follow their own type rules.
            let free = |k: usize| match op {
                "Cast"
                | "Shape"
                | "Size"
                | "DynamicQuantizeLinear"
                | "MatMulInteger"
                | "DequantizeLinear"
                | "QuantizeLinear"
                | "Constant" => true,
                "Resize" => k >= 1,
                "GroupNorm" | "SkipGroupNorm" => k == 1 || k == 2,
                _ => false,
            };
            let data: Vec<i32> = n
                .input
                .iter()
                .enumerate()
                .filter(|(k, v)| !v.is_empty() && !free(*k))
                .filter_map(|(_, v)| ty(v))
                .filter(|&t| float(t))
                .collect();
            if data.windows(2).any(|w| w[0] != w[1]) {
                problems.push(format!("{} ({op}) reads mixed float types {data:?}", n.name()));
            }
            let t = data.first().copied();
            let mut outs = Vec::new();
            for (k, o) in n.output.iter().enumerate() {
                if o.is_empty() {
                    continue;
                }
                let out = match op {
                    "Cast" => attr_int(n, "to").map(|v| v as i32),
                    "Constant" => crate::onnx::constant_node_tensor(n).map(|t| t.data_type()),
                    "Shape" | "Size" | "ArgMax" | "NonZero" => Some(dtype::INT64),
                    "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or" | "Xor"
                    | "IsNaN" | "IsInf" => Some(dtype::BOOL),
                    "DynamicQuantizeLinear" => Some([dtype::UINT8, dtype::FLOAT, dtype::UINT8][k.min(2)]),
                    "MatMulInteger" => Some(dtype::INT32),
                    "DequantizeLinear" => ty(&n.input[1]),
                    "LayerNormalization" if k > 0 => Some(dtype::FLOAT),
                    "ConstantOfShape" => Some(attr_tensor(n, "value").map(|t| t.data_type()).unwrap_or(dtype::FLOAT)),
                    _ => t.or_else(|| n.input.first().and_then(ty)),
                };
                if let Some(out) = out {
                    outs.push((o.clone(), out));
                }
            }
            types.extend(outs);
        }
        for v in g.output.iter().chain(g.value_info.iter()) {
            if let (Some(declared), Some(&t)) = (index.declared_elem_type(v.name()), types.get(v.name()))
                && declared != t
            {
                problems.push(format!("`{}` is declared {} but is {}", v.name(), dtype_name(declared), dtype_name(t)));
            }
        }
        problems
    }

    /// Float32 initializers that a converted node reads (outside the slots that keep float32).
    fn fp32_weights_in_converted_nodes(pass: &PrecisionPass, model: &OnnxModel) -> Vec<String> {
        let blocked = pass.blocked_nodes(model);
        let mut found = Vec::new();
        for (i, n) in model.graph().node.iter().enumerate() {
            if blocked.contains(&i) || is_agnostic(n) || is_default(n, "Cast") {
                continue;
            }
            for (k, v) in n.input.iter().enumerate() {
                let fp32 = model.initializer(v).is_some_and(|t| t.data_type() == dtype::FLOAT);
                if fp32 && !fixed_input(n, k) && !is_follower(n) {
                    found.push(format!("{v} read by {} ({})", n.name(), n.op_type()));
                }
            }
        }
        found
    }

    fn half_initializers(model: &OnnxModel, h: i32) -> usize {
        model.graph().initializer.iter().filter(|t| t.data_type() == h).count()
    }

    /// Converts `path` with `pass`, checks types, I/O, weights and idempotence; runs it when `run_it`
    /// and returns the worst relative L2 error against the float32 model.
    fn check(pass: &PrecisionPass, pipeline: &str, component: &str, dir: &Path, run_it: bool) -> Option<f64> {
        let path = model_path(pipeline, component);
        let original = OnnxModel::load(&path).unwrap();
        let mut model = original.clone();
        let record = convert(pass, &mut model);
        let what = format!("{pipeline}/{component} {}", pass.precision.name());
        assert_eq!(record.rounds, 1, "{what}: {record:?}");
        if pass.keep_io_types {
            assert_eq!(io_types(&model), io_types(&original), "{what}: graph I/O types changed");
        }
        assert_eq!(type_problems(&model), Vec::<String>::new(), "{what}");
        assert_eq!(fp32_weights_in_converted_nodes(pass, &model), Vec::<String>::new(), "{what}");
        let int_before =
            original.graph().initializer.iter().filter(|t| crate::onnx::tensor::is_int(t.data_type())).count();
        let int_after = model.graph().initializer.iter().filter(|t| crate::onnx::tensor::is_int(t.data_type())).count();
        assert_eq!(int_before, int_after, "{what}: integer initializers changed");
        assert!(pass.run(&model, &PassContext::new(Target::Cpu)).unwrap().is_none(), "{what}: not idempotent");
        eprintln!(
            "{what}: {} nodes converted, {} blocked, {} Casts, {} of {} initializers in {}",
            record.rewrites,
            pass.blocked_nodes(&model).len(),
            count(&model, "Cast"),
            half_initializers(&model, pass.precision.dtype()),
            model.graph().initializer.len(),
            pass.precision.name()
        );
        if !run_it {
            return None;
        }
        let feeds = feeds(&path);
        let want = run(&original, dir, &format!("{pipeline}-{component}-fp32"), &feeds);
        let got = run(&model, dir, &format!("{pipeline}-{component}-{}", pass.precision.name()), &feeds);
        let mut worst = 0f64;
        for (name, w) in &want {
            let err = relative_l2(&got[name], w);
            worst = worst.max(err);
        }
        eprintln!("{what}: worst output relative L2 {worst:.2e}");
        Some(worst)
    }

    const TINY: [&str; 4] = ["tiny-sd", "tiny-sd-dynamo", "tiny-sdxl", "tiny-sdxl-dynamo"];

    #[test]
    fn tiny_unets_in_fp16_match_fp32() {
        let dir = tempfile::tempdir().unwrap();
        // Everything in float16 that may be (no op block list): ONNX Runtime's CPU EP runs such graphs by
        // casting around the ops it has no float16 kernel for.
        let full =
            PrecisionPass { ops: OpPolicy::Block(BTreeSet::new()), ..PrecisionPass::new(Precision::Fp16, Target::Cpu) };
        // The CPU default: only ops with a float16 CPU kernel are converted.
        let cpu = PrecisionPass::new(Precision::Fp16, Target::Cpu);
        for pipeline in TINY {
            for pass in [&full, &cpu] {
                let err = check(pass, pipeline, "unet", dir.path(), true).unwrap();
                assert!(err <= 1e-2, "{pipeline}: fp16 relative L2 {err:.2e} > 1e-2");
            }
        }
    }

    #[test]
    fn after_cleanup_and_with_half_io() {
        let dir = tempfile::tempdir().unwrap();
        for pipeline in ["tiny-sdxl", "tiny-sd-dynamo"] {
            let path = model_path(pipeline, "unet");
            let original = OnnxModel::load(&path).unwrap();
            let feeds = feeds(&path);
            let want = run(&original, dir.path(), &format!("{pipeline}-fp32"), &feeds);
            for keep_io_types in [true, false] {
                let pass = PrecisionPass {
                    keep_io_types,
                    ops: OpPolicy::Block(BTreeSet::new()),
                    ..PrecisionPass::new(Precision::Fp16, Target::Cuda)
                };
                let mut model = original.clone();
                PassManager::new()
                    .with(crate::passes::Cleanup)
                    .with(pass.clone())
                    .run(&mut model, &PassContext::new(Target::Cuda))
                    .unwrap();
                assert_eq!(type_problems(&model), Vec::<String>::new(), "{pipeline}");
                assert!(pass.run(&model, &PassContext::new(Target::Cuda)).unwrap().is_none(), "{pipeline}");
                let io = io_types(&model);
                let sample = io.iter().find(|(n, _)| n == "sample").unwrap().1;
                assert_eq!(sample, Some(if keep_io_types { dtype::FLOAT } else { dtype::FLOAT16 }), "{pipeline}");
                let got = run(&model, dir.path(), &format!("{pipeline}-clean-{keep_io_types}"), &feeds);
                for (name, w) in &want {
                    let err = relative_l2(&got[name], w);
                    eprintln!("{pipeline} cleanup + fp16 (keep_io_types {keep_io_types}): relative L2 {err:.2e}");
                    assert!(err <= 1e-2, "{pipeline}: relative L2 {err:.2e}");
                }
            }
        }
    }

    #[test]
    fn other_tiny_components_in_fp16_match_fp32() {
        let dir = tempfile::tempdir().unwrap();
        let full = PrecisionPass {
            ops: OpPolicy::Block(BTreeSet::new()),
            ..PrecisionPass::new(Precision::Fp16, Target::Cuda)
        };
        for (pipeline, component) in [
            ("tiny-sd", "text_encoder"),
            ("tiny-sd", "vae_decoder"),
            ("tiny-sd", "vae_encoder"),
            ("tiny-sdxl-dynamo", "text_encoder_2"),
            ("tiny-sdxl-dynamo", "vae_decoder"),
        ] {
            let err = check(&full, pipeline, component, dir.path(), true).unwrap();
            assert!(err <= 1e-2, "{pipeline}/{component}: fp16 relative L2 {err:.2e} > 1e-2");
        }
    }

    #[test]
    fn tiny_unets_in_bf16() {
        let dir = tempfile::tempdir().unwrap();
        // CPU default: only LayerNormalization and data movement run in bfloat16; the graph loads and runs.
        let cpu = PrecisionPass::new(Precision::Bf16, Target::Cpu);
        // CUDA default and no block list at all: checked by types (ONNX Runtime's CPU EP cannot run them).
        let cuda = PrecisionPass::new(Precision::Bf16, Target::Cuda);
        let full = PrecisionPass {
            ops: OpPolicy::Block(BTreeSet::new()),
            ..PrecisionPass::new(Precision::Bf16, Target::Cuda)
        };
        for pipeline in TINY {
            let err = check(&cpu, pipeline, "unet", dir.path(), true).unwrap();
            assert!(err <= 2e-2, "{pipeline}: bf16 relative L2 {err:.2e} > 2e-2");
            for pass in [&cuda, &full] {
                check(pass, pipeline, "unet", dir.path(), false);
                let mut model = OnnxModel::load(model_path(pipeline, "unet")).unwrap();
                convert(pass, &mut model);
                let opset = model.opset("").unwrap();
                let blocked = pass.blocked_nodes(&model);
                for (i, n) in model.graph().node.iter().enumerate() {
                    // The schema forbids bfloat16 Conv / InstanceNormalization / Sin / Cos before opset 22.
                    if opset < 22 && ["Conv", "InstanceNormalization", "Sin", "Cos"].contains(&n.op_type()) {
                        assert!(blocked.contains(&i), "{pipeline}: {} ({}) converted", n.name(), n.op_type());
                    }
                    if matches!(n.op_type(), "MatMul" | "Softmax" | "LayerNormalization") && pass == &full {
                        assert!(!blocked.contains(&i), "{pipeline}: {} stayed fp32", n.op_type());
                    }
                }
            }
        }
    }

    #[test]
    fn int8_parts_stay_fp32() {
        let dir = tempfile::tempdir().unwrap();
        for pipeline in ["tiny-sd", "tiny-sdxl-dynamo"] {
            let path = model_path(pipeline, "unet");
            let mut int8 = OnnxModel::load(&path).unwrap();
            let quantize = Int8Dynamic { min_in_features: 16, exclude: vec![], format: Int8Format::Dynamic };
            PassManager::new().with(quantize).run(&mut int8, &PassContext::new(Target::Cpu)).unwrap();
            let mut model = int8.clone();
            let pass = PrecisionPass {
                ops: OpPolicy::Block(BTreeSet::new()),
                ..PrecisionPass::new(Precision::Fp16, Target::Cpu)
            };
            convert(&pass, &mut model);
            assert_eq!(type_problems(&model), Vec::<String>::new(), "{pipeline}");
            assert!(pass.run(&model, &PassContext::new(Target::Cpu)).unwrap().is_none(), "{pipeline}: not idempotent");
            let index = GraphIndex::new(&model);
            let types = current_types(&index);
            let mut chains = 0;
            for n in &model.graph().node {
                if n.op_type() == "DynamicQuantizeLinear" {
                    assert_eq!(types[&n.input[0]], dtype::FLOAT, "{pipeline}: quantized input");
                }
                if n.op_type() == "MatMulInteger" {
                    let cast = index.node(index.consumers(&n.output[0])[0]);
                    assert_eq!(attr_int(cast, "to"), Some(dtype::FLOAT as i64));
                    let mul = index.node(index.consumers(&cast.output[0])[0]);
                    assert_eq!((mul.op_type(), types[&mul.output[0]]), ("Mul", dtype::FLOAT));
                    chains += 1;
                }
                if n.op_type() == "MatMul" && is_op(n, "MatMul") {
                    assert_eq!(types[&n.output[0]], dtype::FLOAT16, "{pipeline}: float MatMul left in fp32");
                }
            }
            assert_eq!(chains, count(&int8, "MatMulInteger"));
            // Half-precision activations move DynamicQuantizeLinear's rounding: compare with float32 at the
            // int8 tolerance, and report the distance to the int8 model.
            let feeds = feeds(&path);
            let fp32 = run(&OnnxModel::load(&path).unwrap(), dir.path(), &format!("{pipeline}-fp32"), &feeds);
            let want = run(&int8, dir.path(), &format!("{pipeline}-int8"), &feeds);
            let got = run(&model, dir.path(), &format!("{pipeline}-int8-fp16"), &feeds);
            for (name, w) in &want {
                let err = relative_l2(&got[name], &fp32[name]);
                eprintln!(
                    "{pipeline} int8 + fp16: relative L2 {err:.2e} to fp32, {:.2e} to int8",
                    relative_l2(&got[name], w)
                );
                assert!(err <= 5e-2, "{pipeline}: int8 + fp16 relative L2 {err:.2e}");
            }
        }
    }

    /// x [1, 4, 8, 8] -> Resize(scales) -> GroupNorm (contrib) -> Mul(Constant) -> LayerNormalization
    ///   -> Add(ConstantOfShape) -> y; plus an int64 Reshape shape and a Shape output.
    fn synthetic(opset: i64) -> OnnxModel {
        let mut proto = ModelProto::new();
        proto.set_ir_version(10);
        for (domain, version) in [("", opset), ("com.microsoft", 1)] {
            let mut o = OperatorSetIdProto::new();
            o.set_domain(domain.to_string());
            o.set_version(version);
            proto.opset_import.push(o);
        }
        let g = proto.graph.mut_or_insert_default();
        g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[Some(1), Some(4), Some(8), Some(8)])));
        g.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
        g.output.push(make_tensor_value_info("shape", dtype::INT64, None));
        let scales = ndarray::arr1(&[1.0f32, 1.0, 2.0, 2.0]).into_dyn();
        g.initializer.push(tensor_from_f32("scales", &scales));
        g.initializer.push(tensor_from_f32("gamma", &ndarray::Array1::ones(4).into_dyn()));
        g.initializer.push(tensor_from_f32("beta", &ndarray::Array1::zeros(4).into_dyn()));
        g.initializer.push(tensor_from_f32("ln_scale", &(array(&[16], 1) * 0.1 + 1.0)));
        g.initializer.push(tensor_from_f32("ln_bias", &array(&[16], 2)));
        g.initializer.push(tensor_from_i64("target", &ndarray::arr1(&[1i64, 64, 16]).into_dyn()));
        g.initializer.push(tensor_from_i64("fill_shape", &ndarray::arr1(&[1i64, 64, 16]).into_dyn()));
        let b = |op: &str| NodeBuilder::new(op);
        g.node.push(
            b("Resize")
                .name("resize")
                .inputs(["x", "", "scales"])
                .outputs(["r"])
                .attr_string("mode", "nearest")
                .build(),
        );
        g.node.push(
            b("GroupNorm")
                .name("gn")
                .domain("com.microsoft")
                .inputs(["r_nhwc", "gamma", "beta"])
                .outputs(["gn_out"])
                .attr_float("epsilon", 1e-5)
                .attr_int("groups", 2)
                .attr_int("activation", 0)
                .build(),
        );
        g.node.push(
            b("Transpose").name("to_nhwc").inputs(["r"]).outputs(["r_nhwc"]).attr_ints("perm", &[0, 2, 3, 1]).build(),
        );
        g.node.push(
            b("Constant")
                .name("two")
                .outputs(["two"])
                .attr_tensor("value", tensor_from_f32("", &ndarray::arr0(2.0f32).into_dyn()))
                .build(),
        );
        g.node.push(b("Mul").name("mul").inputs(["gn_out", "two"]).outputs(["m"]).build());
        g.node.push(b("Reshape").name("reshape").inputs(["m", "target"]).outputs(["m3"]).build());
        g.node.push(
            b("LayerNormalization")
                .name("ln")
                .inputs(["m3", "ln_scale", "ln_bias"])
                .outputs(["ln_out"])
                .attr_int("axis", -1)
                .build(),
        );
        g.node.push(
            b("ConstantOfShape")
                .name("fill")
                .inputs(["fill_shape"])
                .outputs(["ones"])
                .attr_tensor("value", tensor_from_f32("", &ndarray::arr1(&[1.0f32]).into_dyn()))
                .build(),
        );
        g.node.push(b("Add").name("add").inputs(["ln_out", "ones"]).outputs(["y"]).build());
        g.node.push(b("Shape").name("shape").inputs(["y"]).outputs(["shape"]).build());
        // Sort: Transpose before GroupNorm.
        g.node.swap(1, 2);
        OnnxModel::from_proto(proto, None)
    }

    #[test]
    fn kept_slots_constants_and_io() {
        let types = |m: &OnnxModel| current_types(&GraphIndex::new(m));
        let mut model = synthetic(17);
        let pass = PrecisionPass {
            ops: OpPolicy::Block(BTreeSet::new()),
            ..PrecisionPass::new(Precision::Fp16, Target::Cuda)
        };
        convert(&pass, &mut model);
        let t = types(&model);
        let init = |name: &str| model.initializer(name).map(|t| t.data_type());
        // Resize scales and the contrib GroupNorm's gamma / beta stay float32; the rest is float16.
        assert_eq!(
            (init("scales"), init("gamma"), init("beta")),
            (Some(dtype::FLOAT), Some(dtype::FLOAT), Some(dtype::FLOAT))
        );
        assert_eq!((init("ln_scale"), init("ln_bias")), (Some(dtype::FLOAT16), Some(dtype::FLOAT16)));
        assert_eq!((init("target"), init("fill_shape")), (Some(dtype::INT64), Some(dtype::INT64)));
        for v in ["r", "r_nhwc", "gn_out", "two", "m", "m3", "ln_out", "ones"] {
            assert_eq!(t[v], dtype::FLOAT16, "{v}");
        }
        let node = |op: &str| model.graph().node.iter().find(|n| n.op_type() == op).unwrap().clone();
        assert_eq!(attr_tensor(&node("Constant"), "value").unwrap().data_type(), dtype::FLOAT16);
        assert_eq!(attr_tensor(&node("ConstantOfShape"), "value").unwrap().data_type(), dtype::FLOAT16);
        // x is cast once after the input, y once before the output; Shape reads y's float16 value.
        assert_eq!(
            io_types(&model),
            [("x".into(), Some(dtype::FLOAT)), ("y".into(), Some(dtype::FLOAT)), ("shape".into(), Some(dtype::INT64))]
        );
        assert_eq!(count(&model, "Cast"), 2);
        assert_eq!(type_problems(&model), Vec::<String>::new());
        assert!(pass.run(&model, &PassContext::new(Target::Cuda)).unwrap().is_none());

        // keep_io_types = false: the graph's float input and output are float16, no Cast at all.
        let mut open = synthetic(17);
        let pass = PrecisionPass { keep_io_types: false, ..pass };
        convert(&pass, &mut open);
        assert_eq!(io_types(&open)[..2], [("x".into(), Some(dtype::FLOAT16)), ("y".into(), Some(dtype::FLOAT16))]);
        assert_eq!(count(&open, "Cast"), 0);
        assert_eq!(type_problems(&open), Vec::<String>::new());
        assert!(pass.run(&open, &PassContext::new(Target::Cuda)).unwrap().is_none());

        // A blocked node and a blocked op: Casts around them, their weights stay float32.
        let mut blocked = synthetic(17);
        let pass = PrecisionPass {
            ops: OpPolicy::Block(["LayerNormalization".to_string()].into()),
            node_block_list: ["mul".to_string()].into(),
            ..PrecisionPass::new(Precision::Fp16, Target::Cuda)
        };
        convert(&pass, &mut blocked);
        let t = types(&blocked);
        assert_eq!((t["m"], t["ln_out"], t["y"]), (dtype::FLOAT, dtype::FLOAT, dtype::FLOAT));
        assert_eq!(blocked.initializer("ln_scale").unwrap().data_type(), dtype::FLOAT);
        assert_eq!(t["gn_out"], dtype::FLOAT16);
        assert_eq!(type_problems(&blocked), Vec::<String>::new());
        assert!(pass.run(&blocked, &PassContext::new(Target::Cuda)).unwrap().is_none());

        // bfloat16 at opset 17: GroupNorm (contrib) has no bfloat16 type and ConstantOfShape needs opset 20.
        let mut bf = synthetic(17);
        let pass = PrecisionPass {
            ops: OpPolicy::Block(BTreeSet::new()),
            ..PrecisionPass::new(Precision::Bf16, Target::Cuda)
        };
        convert(&pass, &mut bf);
        let t = types(&bf);
        assert_eq!(
            (t["gn_out"], t["ones"], t["r"], t["ln_out"]),
            (dtype::FLOAT, dtype::FLOAT, dtype::BFLOAT16, dtype::BFLOAT16)
        );
        assert_eq!(type_problems(&bf), Vec::<String>::new());
    }

    #[test]
    fn sinusoidal_embeddings_stay_fp32() {
        for pipeline in ["tiny-sd", "tiny-sdxl-dynamo"] {
            for sinusoid_fp32 in [true, false] {
                let mut model = OnnxModel::load(model_path(pipeline, "unet")).unwrap();
                let pass = PrecisionPass {
                    sinusoid_fp32,
                    ops: OpPolicy::Block(BTreeSet::new()),
                    ..PrecisionPass::new(Precision::Fp16, Target::Cuda)
                };
                convert(&pass, &mut model);
                let index = GraphIndex::new(&model);
                let types = current_types(&index);
                let want = if sinusoid_fp32 { dtype::FLOAT } else { dtype::FLOAT16 };
                let trig: Vec<&NodeProto> =
                    model.graph().node.iter().filter(|n| matches!(n.op_type(), "Sin" | "Cos")).collect();
                assert!(!trig.is_empty());
                for n in trig {
                    assert_eq!(types[&n.input[0]], want, "{pipeline}: {}", n.name());
                }
                // The Linears that read the embedding run in float16 either way.
                for n in model.graph().node.iter().filter(|n| n.op_type() == "Gemm") {
                    assert_eq!(types[&n.output[0]], dtype::FLOAT16, "{pipeline}: {}", n.name());
                }
            }
        }
    }

    #[test]
    fn computed_resize_scales_are_read_as_fp32() {
        let mut model = synthetic(17);
        let g = model.graph_mut();
        g.input.push(make_tensor_value_info("factor", dtype::FLOAT, Some(&[Some(4)])));
        g.node
            .insert(0, NodeBuilder::new("Mul").name("scale_mul").inputs(["scales", "factor"]).outputs(["s2"]).build());
        g.node[1].input[2] = "s2".into();
        let pass = PrecisionPass {
            keep_io_types: false,
            ops: OpPolicy::Block(BTreeSet::new()),
            ..PrecisionPass::new(Precision::Fp16, Target::Cuda)
        };
        convert(&pass, &mut model);
        assert_eq!(type_problems(&model), Vec::<String>::new());
        let index = GraphIndex::new(&model);
        let types = current_types(&index);
        let resize = model.graph().node.iter().find(|n| n.op_type() == "Resize").unwrap();
        assert_eq!((types[&resize.input[0]], types[&resize.input[2]]), (dtype::FLOAT16, dtype::FLOAT));
        assert_eq!(types["s2"], dtype::FLOAT16, "the Mul itself runs in float16");
        assert!(pass.run(&model, &PassContext::new(Target::Cuda)).unwrap().is_none());
    }

    #[test]
    fn odd_nodes_do_not_panic() {
        let mut model = synthetic(17);
        let g = model.graph_mut();
        g.node.push(NodeBuilder::new("Cast").name("no_output").inputs(["y"]).attr_int("to", 1).build());
        g.node.push(NodeBuilder::new("Cast").name("no_to").inputs(["y"]).outputs(["c"]).build());
        g.node.push(NodeBuilder::new("Mystery").domain("org.example").inputs(["y"]).outputs(["z"]).build());
        g.node.push(NodeBuilder::new("Relu").inputs(["z"]).outputs(["zr"]).build());
        g.output.push(make_tensor_value_info("zr", dtype::FLOAT, None));
        let pass = PrecisionPass {
            ops: OpPolicy::Block(BTreeSet::new()),
            ..PrecisionPass::new(Precision::Fp16, Target::Cuda)
        };
        let blocked = pass.blocked_nodes(&model);
        let names: Vec<&str> = blocked.iter().map(|&i| model.graph().node[i].op_type()).collect();
        // The unknown op and its reader (whose input type is unknown) stay as they are.
        assert!(names.contains(&"Mystery") && names.contains(&"Relu"), "{names:?}");
        let _ = PassManager::new().with(pass).run(&mut model, &PassContext::new(Target::Cuda));
    }

    #[test]
    fn options_are_checked() {
        let build = |text: &str, precision, target| {
            crate::passes::registry::build_from_str::<PrecisionPass>(text, &BuildContext::new(target, precision))
        };
        let p = build("", Precision::Fp16, Target::Cuda).unwrap();
        assert_eq!(
            (p.precision, p.keep_io_types, p.sinusoid_fp32, &p.ops),
            (Precision::Fp16, true, true, &OpPolicy::Block(BTreeSet::new()))
        );
        let text = "keep_io_types = false\nop_block_list = [\"Resize\"]\nnode_block_list = [\"n1\"]";
        let p = build(text, Precision::Bf16, Target::Cpu).unwrap();
        assert_eq!((p.precision, p.keep_io_types), (Precision::Bf16, false));
        assert_eq!(p.ops, OpPolicy::Block(["Resize".to_string()].into()));
        assert!(p.node_block_list.contains("n1"));
        assert!(matches!(build("", Precision::Fp16, Target::Cpu).unwrap().ops, OpPolicy::AllowOnly(_)));
        assert!(build("", Precision::Fp32, Target::Cpu).unwrap_err().to_string().contains("fp16 or bf16"));
        for (text, expected) in [
            ("precision = \"bf16\"", "key `precision`: unknown field"),
            ("keep_io_types = \"yes\"", "key `keep_io_types`: invalid type"),
            ("op_block_list = \"Resize\"", "key `op_block_list`: invalid type"),
            ("node_block_list = [1]", "key `node_block_list[0]`: invalid type"),
            ("keep_io = true", "key `keep_io`: unknown field"),
        ] {
            let err = build(text, Precision::Fp16, Target::Cpu).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.starts_with("[precision]"), "{err}");
        }
    }

    #[test]
    fn op_names_match_with_and_without_domain() {
        let mha = NodeBuilder::new("MultiHeadAttention").domain("com.microsoft").build();
        let att = NodeBuilder::new("Attention").build();
        assert!(op_matches("MultiHeadAttention", &mha) && op_matches("com.microsoft.MultiHeadAttention", &mha));
        assert!(op_matches("ai.onnx.Attention", &att) && !op_matches("com.microsoft.Attention", &att));
        assert!(!op_matches("ai.onnx.MultiHeadAttention", &mha));
        let cpu = OpPolicy::default_for(Target::Cpu, Precision::Fp16);
        assert!(!cpu.blocks(&att) && cpu.blocks(&NodeBuilder::new("Attention").domain("com.microsoft").build()));
        assert!(cpu.blocks(&NodeBuilder::new("MatMul").build()));
    }
}
