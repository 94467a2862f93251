//! Which nodes stay fp32: [`super::OpPolicy`] (the op block or allow list) applied, the node block list, and the rules
//! for schemas, int8 parts, subgraphs, sinusoidal embeddings and values of unknown type.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::kernels::schema_accepts;
use super::plan::current_types;
use super::{PrecisionPass, is_agnostic, is_constant};
use crate::onnx::{GraphIndex, NodeProto, OnnxModel, dtype, outer_references};
use crate::settings::Precision;

impl PrecisionPass {
    /// Indices of the nodes of `model` that stay fp32 (for reports and tests).
    pub fn blocked_nodes(&self, model: &OnnxModel) -> BTreeSet<usize> {
        let index = GraphIndex::new(model);
        let types = current_types(&index);
        self.blocked(&index, &types).iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i).collect()
    }

    /// Which nodes stay fp32.
    pub(super) fn blocked(&self, index: &GraphIndex, cur: &HashMap<String, i32>) -> Vec<bool> {
        let nodes = index.nodes();
        let opset = index.model().opset("").unwrap_or(1);
        let h = self.precision;
        let mut blocked: Vec<bool> = nodes
            .iter()
            .map(|n| {
                !is_constant(n)
                    && !crate::onnx::is_op(n, "Cast")
                    && (self.node_block_list.contains(n.name())
                        || self.ops.blocks(n)
                        || is_int8_op(n)
                        || !schema_accepts(n, opset, h)
                        || has_subgraph(n))
            })
            .collect();
        block_int8_chains(index, &mut blocked);
        // Values read inside subgraphs keep their type: their producers stay fp32.
        for n in nodes.iter().filter(|n| has_subgraph(n)) {
            for v in outer_references(n) {
                if let Some(p) = index.producer(v) {
                    blocked[p] = true;
                }
            }
        }
        if self.sinusoid_fp32 {
            block_sinusoid_arguments(index, cur, &mut blocked);
        }
        // Range islands: a value float16 cannot hold is neither written nor read in float16 (fp32, or bf16
        // where allowed: see `bf16_islands`).
        let bf16 = self.bf16_islands(index);
        for (i, touches) in self.island_nodes(index).into_iter().enumerate() {
            if touches && !bf16[i] {
                blocked[i] = true;
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

impl PrecisionPass {
    /// The nodes that write or read a value out of float16's range (Constants and Casts excepted).
    fn island_nodes(&self, index: &GraphIndex) -> Vec<bool> {
        let touches = |v: &String| self.out_of_range.contains(v);
        index
            .nodes()
            .iter()
            .map(|n| {
                !self.out_of_range.is_empty()
                    && !is_constant(n)
                    && !crate::onnx::is_op(n, "Cast")
                    && (n.input.iter().any(touches) || n.output.iter().any(touches))
            })
            .collect()
    }

    /// With `island = "bf16"`: the island nodes that compute in bfloat16 (their op has a bfloat16 schema at
    /// the model's opset and a kernel on the target, and nothing else keeps them fp32).
    pub(super) fn bf16_islands(&self, index: &GraphIndex) -> Vec<bool> {
        let nodes = index.nodes();
        let on = self.precision == Precision::Fp16
            && self.ranges.as_ref().is_some_and(|r| r.island == super::IslandType::Bf16);
        if !on {
            return vec![false; nodes.len()];
        }
        let opset = index.model().opset("").unwrap_or(1);
        self.island_nodes(index)
            .into_iter()
            .zip(nodes)
            .map(|(island, n)| {
                island
                    && !self.node_block_list.contains(n.name())
                    && !self.bf16_ops.blocks(n)
                    && !is_int8_op(n)
                    && !has_subgraph(n)
                    && schema_accepts(n, opset, Precision::Bf16)
            })
            .collect()
    }
}

/// Blocks the int8 chains: MatMulInteger -> Cast -> Mul(·, x_scale · w_scale), and the scale product.
fn block_int8_chains(index: &GraphIndex, blocked: &mut [bool]) {
    let nodes = index.nodes();
    for (i, n) in nodes.iter().enumerate() {
        if !(crate::onnx::is_op(n, "MatMulInteger") || crate::onnx::is_op(n, "ConvInteger")) {
            continue;
        }
        blocked[i] = true;
        for out in n.output.iter().filter(|o| !o.is_empty()) {
            for &c in index.consumers(out) {
                if !crate::onnx::is_op(&nodes[c], "Cast") {
                    continue;
                }
                blocked[c] = true;
                let cast_out = nodes[c].output.first().map(String::as_str).unwrap_or("");
                for &m in index.consumers(cast_out) {
                    if !crate::onnx::is_op(&nodes[m], "Mul") {
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
}

/// Blocks Sin / Cos and the float nodes that feed them, up to the first layer (`sinusoid_fp32`).
fn block_sinusoid_arguments(index: &GraphIndex, cur: &HashMap<String, i32>, blocked: &mut [bool]) {
    let nodes = index.nodes();
    let mut stack: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| crate::onnx::is_op(n, "Sin") || crate::onnx::is_op(n, "Cos"))
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
