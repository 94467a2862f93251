//! The ops inference understands: one table, [`RULES`], from which both dispatch ([`infer_node`]) and
//! [`understands`] are derived, so that the two cannot drift apart.

use super::facts::{Args, Facts, NO_FACTS};
use super::{BROADCAST_BOOL, compute, contrib, elementwise, structural};
use crate::onnx::OnnxModel;
use crate::onnx::proto::onnx::NodeProto;

/// The default ONNX domain (nodes spell it `""` or `"ai.onnx"`).
const ONNX: &str = "";
/// ONNX Runtime's contrib ops (those dfast's passes emit).
const MICROSOFT: &str = "com.microsoft";

/// Ops whose output has the shape and type of their first input (`Identity`, which also keeps partial
/// values, and `Dropout`, which has a mask output, have rows of their own).
const SAME_AS_INPUT: &[&str] = &[
    "Sqrt",
    "Neg",
    "Abs",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Erf",
    "Sin",
    "Cos",
    "Softplus",
    "Gelu",
    "Round",
    "Sign",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "BatchNormalization",
    "Clip",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "HardSigmoid",
    "HardSwish",
    "Mish",
    "Trilu",
    "CumSum",
    "Hardmax",
    "Shrink",
    "ThresholdedRelu",
    "LpNormalization",
    "MeanVarianceNormalization",
];

/// Elementwise ops with broadcasting whose output has the inputs' type.
const BROADCAST_ARITH: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Sum", "Mean", "PRelu"];

const REDUCE: &[&str] = &[
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
];

/// Infers the facts of one node's outputs, in output order (fewer than it has outputs, or none, where
/// they are not known).
type InferFn = fn(&Args) -> Vec<Facts>;

/// One row of [`RULES`]: some ops of one domain and the function that infers them.
pub(super) struct Rule {
    /// `""` for the default ONNX domain.
    pub domain: &'static str,
    pub ops: &'static [&'static str],
    /// Whether the node needs its first input (every op but `Constant`): without it, it gets no facts.
    pub needs_input: bool,
    pub infer: InferFn,
}

/// A rule for ops that read their first input.
const fn rule(domain: &'static str, ops: &'static [&'static str], infer: InferFn) -> Rule {
    Rule { domain, ops, needs_input: true, infer }
}

/// A rule for ops without inputs.
const fn source(domain: &'static str, ops: &'static [&'static str], infer: InferFn) -> Rule {
    Rule { domain, ops, needs_input: false, infer }
}

/// Every op inference understands, each in exactly one row; anything else gets no facts.
pub(super) static RULES: &[Rule] = &[
    source(ONNX, &["Constant"], structural::constant),
    rule(ONNX, &["Identity"], elementwise::identity),
    rule(ONNX, &["Dropout"], elementwise::dropout),
    rule(ONNX, &["Cast"], elementwise::cast),
    rule(ONNX, &["Not"], elementwise::not),
    rule(ONNX, &["Where"], elementwise::where_op),
    rule(ONNX, SAME_AS_INPUT, elementwise::same_as_input),
    rule(ONNX, BROADCAST_ARITH, elementwise::broadcast),
    rule(ONNX, BROADCAST_BOOL, elementwise::broadcast),
    rule(ONNX, &["Shape"], structural::shape),
    rule(ONNX, &["Size"], structural::size),
    rule(ONNX, &["Gather"], structural::gather),
    rule(ONNX, &["Unsqueeze"], structural::unsqueeze),
    rule(ONNX, &["Squeeze"], structural::squeeze),
    rule(ONNX, &["Concat"], structural::concat),
    rule(ONNX, &["Slice"], structural::slice),
    rule(ONNX, &["Reshape"], structural::reshape),
    rule(ONNX, &["Flatten"], structural::flatten),
    rule(ONNX, &["Transpose"], structural::transpose),
    rule(ONNX, &["Expand"], structural::expand),
    rule(ONNX, &["ConstantOfShape"], structural::constant_of_shape),
    rule(ONNX, &["Range"], structural::range),
    rule(ONNX, &["Pad"], structural::pad),
    rule(ONNX, &["Tile"], structural::tile),
    rule(ONNX, &["Split"], structural::split),
    rule(ONNX, &["MatMul", "MatMulInteger"], compute::matmul),
    rule(ONNX, &["Gemm"], compute::gemm),
    rule(ONNX, &["Einsum"], compute::einsum),
    rule(ONNX, &["Conv"], compute::conv),
    rule(ONNX, &["Resize", "Upsample"], compute::resize),
    rule(ONNX, &["ArgMax", "ArgMin"], compute::arg_reduce),
    rule(ONNX, REDUCE, compute::reduce),
    rule(ONNX, &["Attention"], compute::attention),
    rule(ONNX, &["DynamicQuantizeLinear"], compute::dynamic_quantize_linear),
    rule(MICROSOFT, &["MatMulIntegerToFloat", "DynamicQuantizeMatMul"], compute::quantized_matmul),
    // The contrib ops the passes emit, and the quantization ops of the int8 passes (`contrib`).
    rule(MICROSOFT, &["MultiHeadAttention"], contrib::multi_head_attention),
    rule(MICROSOFT, &["GroupNorm", "SkipGroupNorm"], contrib::group_norm),
    rule(MICROSOFT, &["NhwcConv"], contrib::nhwc_conv),
    rule(MICROSOFT, &["BiasAdd"], contrib::bias_add),
    rule(MICROSOFT, &["BiasGelu", "FastGelu", "QuickGelu"], contrib::gelu),
    rule(MICROSOFT, &["BiasSplitGelu"], contrib::bias_split_gelu),
    rule(MICROSOFT, &["SkipLayerNormalization"], contrib::skip_layer_norm),
    rule(ONNX, &["QuantizeLinear"], contrib::quantize_linear),
    rule(ONNX, &["DequantizeLinear"], contrib::dequantize_linear),
    rule(ONNX, &["ConvInteger"], contrib::conv_integer),
];

/// The row of [`RULES`] for `node`'s op.
fn rule_for(node: &NodeProto) -> Option<&'static Rule> {
    let domain = match node.domain() {
        "ai.onnx" => ONNX,
        d => d,
    };
    let op = node.op_type();
    RULES.iter().find(|r| r.domain == domain && r.ops.contains(&op))
}

/// True when `node` is one of the ops this module evaluates (used by tests and passes that want to know
/// why a value has no facts).
pub fn understands(node: &NodeProto) -> bool {
    rule_for(node).is_some()
}

/// Facts of `node`'s outputs from those of its inputs (`ins`, one per input name), in output order;
/// fewer than it has outputs, or none, where they are not known.
pub(super) fn infer_node(node: &NodeProto, ins: &[&Facts], model: &OnnxModel, opset: i64) -> Vec<Facts> {
    let Some(rule) = rule_for(node) else { return vec![] };
    let mut args = Args { node, ins, model, opset, x: &NO_FACTS };
    match args.input(0) {
        Some(x) => args.x = x,
        None if !rule.needs_input => {}
        None => return vec![],
    }
    (rule.infer)(&args)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn node(domain: &str, op: &str) -> NodeProto {
        let mut n = NodeProto::new();
        n.set_domain(domain.to_string());
        n.set_op_type(op.to_string());
        n
    }

    #[test]
    fn every_op_dispatched_is_understood() {
        for rule in RULES {
            for op in rule.ops {
                assert!(understands(&node(rule.domain, op)), "{}::{op} is dispatched but not understood", rule.domain);
                if rule.domain == ONNX {
                    assert!(understands(&node("ai.onnx", op)), "ai.onnx::{op} is not understood");
                }
            }
        }
    }

    #[test]
    fn attention_and_dynamic_quantize_linear_are_understood() {
        assert!(understands(&node("", "Attention")));
        assert!(understands(&node("", "DynamicQuantizeLinear")));
        assert!(understands(&node(MICROSOFT, "MultiHeadAttention")));
        // Ops of another domain than their rule's are not.
        assert!(!understands(&node(MICROSOFT, "Attention")));
        assert!(!understands(&node("", "MultiHeadAttention")));
        assert!(!understands(&node("", "NoSuchOp")));
    }

    #[test]
    fn each_op_has_one_rule() {
        let mut seen = HashSet::new();
        for rule in RULES {
            for op in rule.ops {
                assert!(seen.insert((rule.domain, *op)), "{}::{op} has more than one rule", rule.domain);
            }
        }
    }
}
