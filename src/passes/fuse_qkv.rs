//! Fused QKV (and KV) projections: the projections of one attention that read the same input become
//! one MatMul over concatenated weights, split back into the per-projection outputs.
//!
//! ```text
//! Self-attention (weights W [in, out], optional constant biases b [out]):
//!
//!          ┌─MatMul(Wq)─(Add bq)─> q ─Reshape─Transpose─(Mul s)────────┐
//!      x ──┼─MatMul(Wk)─(Add bk)─> k ─Reshape─Transpose─(Mul s)─ MatMul(q, kᵀ) ─ ... ─ Softmax ─┐
//!          └─MatMul(Wv)─(Add bv)─> v ─Reshape─Transpose───────────────────────── MatMul(probs, v)
//!    or, after the attention pass / from the dynamo exporter:
//!      q, k, v ─(Reshape─Transpose)─> Attention / com.microsoft::MultiHeadAttention (query, key, value)
//!
//!    becomes
//!
//!      x ─MatMul([Wq | Wk | Wv])─(Add [bq | bk | bv])─Split(axis -1, [oq, ok, ov])─> q, k, v
//!
//! Cross-attention: k and v read encoder_hidden_states, q reads the hidden states:
//!
//!      e ─MatMul([Wk | Wv])─(Add [bk | bv])─Split(axis -1, [ok, ov])─> k, v        (q stays)
//! ```
//!
//! Which MatMuls are grouped: a MatMul with a constant 2-D float weight is a projection of the
//! attention its output flows into, followed through a few head-splitting ops (Reshape, Transpose,
//! Mul/Div by the scale, Add of a bias, Cast, (Un)Squeeze, Identity; `Shape` readers are ignored):
//! - into input 0, 1 or 2 of an `Attention` / `com.microsoft::MultiHeadAttention`: q, k or v of that node;
//! - into input 0 of a MatMul whose result reaches a Softmax: q of that (scores) MatMul;
//! - into input 1 of such a scores MatMul: k;
//! - into input 1 of a MatMul whose input 0 comes from a Softmax: v of the scores MatMul behind it.
//!
//! Projections of one attention that read one value are fused (two or three of them, each role once);
//! other MatMuls that share an input (the cross-attention k/v of *different* attentions all read
//! encoder_hidden_states, a feed-forward's GEGLU projection, ...) are left alone: fusing them would merge
//! unrelated blocks into one wide MatMul, which is not the seed's rewrite.
//!
//! Biases are folded into one Add only when every projection of the group has a constant 1-D bias
//! that its MatMul alone feeds; otherwise the Adds stay, reading the Split outputs. The rewrite is exact
//! (each output column is the same dot product). Split takes its sizes as an input from opset 13 on, as
//! an attribute at opsets 11 and 12; older models are left alone.
//!
//! The packed forms of `MultiHeadAttention` (query [b, s, h, 3, d] with key and value omitted) are not
//! emitted: the plain MatMul + Split works with every consumer and every execution provider.
//!
//! Options: none. Unknown keys are rejected (a typo should not silently do nothing).
//! Idempotent: a fused MatMul feeds a Split, which is not a projection of anything, so `run` returns
//! `None` on a graph it already rewrote.

use std::collections::{BTreeMap, HashMap};

use ndarray::{Array1, ArrayD, Axis};

use crate::Result;
use crate::onnx::{GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, dtype, is_op, tensor};
use crate::passes::pattern::{bias_add, through_identities};
use crate::passes::{BuildContext, NoOptions, Pass, PassContext, PassSpec};

/// The fuse-qkv pass (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct FuseQkv;

impl PassSpec for FuseQkv {
    const NAME: &'static str = "fuse-qkv";
    const SUMMARY: &'static str = "q/k/v (and cross-attention k/v) projections reading one input become one MatMul";
    type Options = NoOptions;
    fn build(_: NoOptions, _: &BuildContext) -> Result<Self> {
        Ok(FuseQkv)
    }
}

impl Pass for FuseQkv {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        let opset = model.opset("").unwrap_or(0);
        if opset < 11 {
            return Ok(None);
        }
        let index = GraphIndex::new(model);
        let mut groups: BTreeMap<(usize, String), Vec<Projection>> = BTreeMap::new();
        for (i, node) in index.nodes().iter().enumerate() {
            if let Some(p) = projection(&index, i, node) {
                groups.entry((p.attention, node.input[0].clone())).or_default().push(p);
            }
        }
        let mut patch = Patch::new();
        let mut split_sizes: HashMap<Vec<i64>, String> = HashMap::new();
        for ((_, x), mut members) in groups {
            members.sort_by_key(|p| p.role);
            let distinct_roles = members.windows(2).all(|w| w[0].role != w[1].role);
            let same_weights =
                members.iter().all(|p| p.w_dtype == members[0].w_dtype && p.in_features == members[0].in_features);
            if members.len() < 2
                || !distinct_roles
                || !same_weights
                || members.iter().any(|p| patch.is_removed(p.matmul))
            {
                continue;
            }
            fuse(&index, &x, &members, opset, &mut split_sizes, &mut patch);
        }
        Ok((!patch.is_empty()).then_some(patch))
    }
}

/// One projection MatMul, where its output goes, and its optional bias.
struct Projection {
    matmul: usize,
    /// The node standing for the attention it feeds (the Attention/MHA node, or the scores MatMul).
    attention: usize,
    /// 0 = q, 1 = k, 2 = v.
    role: usize,
    /// The weight's element type and [in, out]; its values are read only when the group is fused.
    w_dtype: i32,
    in_features: i64,
    out_features: i64,
    /// The bias Add when the MatMul's output is read by it alone and the other operand is a constant
    /// [out] of the weight's type: (node index, bias value name).
    bias: Option<(usize, String)>,
}

/// Node `i` as a projection of an attention, if it is one.
fn projection(index: &GraphIndex, i: usize, node: &NodeProto) -> Option<Projection> {
    if !is_op(node, "MatMul") || node.input.len() != 2 || node.output.len() != 1 || node.input[0].is_empty() {
        return None;
    }
    let w = index.const_tensor(through_identities(index, &node.input[1]))?;
    let w_dtype = w.data_type();
    let [in_features, out_features] = w.dims[..] else { return None };
    if !matches!(w_dtype, dtype::FLOAT | dtype::FLOAT16) || in_features <= 0 || out_features <= 0 {
        return None;
    }
    // The input must be computed (a constant x would be folded, not fused).
    if index.const_tensor(&node.input[0]).is_some() {
        return None;
    }
    let (attention, role) = attention_role(index, &node.output[0])?;
    let bias = index.single_consumer(&node.output[0]).and_then(|add| {
        let b = bias_add(index, index.node(add).output.first()?)?;
        (b.add == add && b.x == node.output[0] && b.dtype == w_dtype && b.width == out_features)
            .then_some((add, b.bias))
    });
    Some(Projection { matmul: i, attention, role, w_dtype, in_features, out_features, bias })
}

/// Ops a projection's output passes through on its way into attention: head split, scale, bias, casts.
const HEAD_OPS: [&str; 9] = ["Reshape", "Transpose", "Mul", "Div", "Add", "Cast", "Squeeze", "Unsqueeze", "Identity"];

/// Ops between the scores MatMul and its Softmax: scale, mask, casts, reshapes.
const SCORE_OPS: [&str; 7] = ["Mul", "Div", "Add", "Where", "Cast", "Reshape", "Identity"];

/// Ops between a Softmax and the MatMul that applies it to v.
const PROBS_OPS: [&str; 5] = ["Cast", "Reshape", "Transpose", "Identity", "Dropout"];

/// How far the walks go (the longest chain seen is Reshape -> Transpose -> Mul -> Transpose).
const MAX_STEPS: usize = 8;

/// The one reader of `value` that carries its data on (None when there are several, or `value` is a
/// graph output). Readers that only feed `Shape`s (the TorchScript exporter's dynamic reshapes) do not
/// count.
fn sole_data_reader(index: &GraphIndex, value: &str) -> Option<usize> {
    if index.is_graph_output(value) {
        return None;
    }
    let mut readers = index.consumers(value).iter().copied().filter(|&c| !feeds_only_shapes(index, c, 3));
    let only = readers.next()?;
    readers.next().is_none().then_some(only)
}

/// True when node `i` is a `Shape`, or everything it computes ends in `Shape`s within `depth` steps.
fn feeds_only_shapes(index: &GraphIndex, i: usize, depth: usize) -> bool {
    let node = index.node(i);
    if is_op(node, "Shape") {
        return true;
    }
    depth > 0
        && !node.output.is_empty()
        && node.output.iter().all(|o| {
            !index.is_graph_output(o)
                && !index.consumers(o).is_empty()
                && index.consumers(o).iter().all(|&c| feeds_only_shapes(index, c, depth - 1))
        })
}

fn is_attention_op(node: &NodeProto) -> bool {
    is_op(node, "Attention") || (node.op_type() == "MultiHeadAttention" && node.domain() == "com.microsoft")
}

fn is_one_of(node: &NodeProto, ops: &[&str]) -> bool {
    ops.iter().any(|op| is_op(node, op))
}

/// The attention a projection output flows into and its role there (0 = q, 1 = k, 2 = v).
fn attention_role(index: &GraphIndex, value: &str) -> Option<(usize, usize)> {
    let mut value = value;
    for _ in 0..MAX_STEPS {
        let c = sole_data_reader(index, value)?;
        let node = index.node(c);
        let slot = node.input.iter().position(|i| i == value)?;
        if is_attention_op(node) {
            return (slot <= 2).then_some((c, slot));
        }
        if is_op(node, "MatMul") {
            if node.input.len() != 2 || index.const_tensor(&node.input[1 - slot.min(1)]).is_some() {
                return None;
            }
            if slot == 1
                && let Some(scores) = softmax_source(index, &node.input[0])
            {
                return Some((scores, 2));
            }
            return reaches_softmax(index, &node.output[0]).then_some((c, slot));
        }
        // Only the data input of a Reshape, the dividend of a Div, passes the projection through.
        if !is_one_of(node, &HEAD_OPS) || ((is_op(node, "Reshape") || is_op(node, "Div")) && slot != 0) {
            return None;
        }
        value = node.output.first()?;
    }
    None
}

/// True when `value` (a MatMul result) flows into a Softmax through scale / mask ops.
fn reaches_softmax(index: &GraphIndex, value: &str) -> bool {
    let mut value = value;
    for _ in 0..MAX_STEPS {
        let Some(c) = sole_data_reader(index, value) else { return false };
        let node = index.node(c);
        if is_op(node, "Softmax") {
            return true;
        }
        let Some(out) = node.output.first() else { return false };
        if !is_one_of(node, &SCORE_OPS) {
            return false;
        }
        value = out;
    }
    false
}

/// The scores MatMul behind attention probabilities `value`: back through casts and reshapes to a
/// Softmax, then through the scale and mask to a MatMul of two computed values.
fn softmax_source(index: &GraphIndex, value: &str) -> Option<usize> {
    let mut value = value;
    let mut softmax = None;
    for _ in 0..MAX_STEPS {
        let p = index.producer(value)?;
        let node = index.node(p);
        if is_op(node, "Softmax") {
            softmax = Some(node);
            break;
        }
        if !is_one_of(node, &PROBS_OPS) {
            return None;
        }
        value = node.input.first()?;
    }
    scores_matmul(index, softmax?.input.first()?, MAX_STEPS)
}

/// A MatMul of two computed values behind `value`, through scale / mask ops (depth-first, bounded).
fn scores_matmul(index: &GraphIndex, value: &str, steps: usize) -> Option<usize> {
    let p = index.producer(value)?;
    let node = index.node(p);
    if is_op(node, "MatMul") {
        let computed = node.input.len() == 2 && node.input.iter().all(|i| index.const_tensor(i).is_none());
        return computed.then_some(p);
    }
    if steps == 0 || !is_one_of(node, &SCORE_OPS) {
        return None;
    }
    let data_inputs: &[String] =
        if is_op(node, "Reshape") || is_op(node, "Div") { &node.input[..node.input.len().min(1)] } else { &node.input };
    data_inputs
        .iter()
        .filter(|i| !i.is_empty() && index.const_tensor(i).is_none())
        .find_map(|i| scores_matmul(index, i, steps - 1))
}

/// Emits the fused MatMul (+ Add) + Split for one group (sorted by role) and removes the originals.
/// Leaves the patch untouched when a weight or bias cannot be read.
fn fuse(
    index: &GraphIndex,
    x: &str,
    members: &[Projection],
    opset: i64,
    split_sizes: &mut HashMap<Vec<i64>, String>,
    patch: &mut Patch,
) {
    let read = |value: &str| index.const_f32(value).ok().flatten();
    let first = index.node(members[0].matmul);
    let weights: Option<Vec<ArrayD<f32>>> =
        members.iter().map(|p| read(through_identities(index, &index.node(p.matmul).input[1]))).collect();
    let Some(weight) = weights.and_then(|w| concat(&w, 1)) else { return };
    let biases: Option<Vec<(usize, String)>> = members.iter().map(|p| p.bias.clone()).collect();
    let bias = match &biases {
        Some(biases) => {
            let values: Option<Vec<ArrayD<f32>>> = biases.iter().map(|(_, b)| read(b)).collect();
            let Some(bias) = values.and_then(|b| concat(&b, 0)) else { return };
            Some(bias)
        }
        None => None,
    };

    let w_dtype = members[0].w_dtype;
    let to_tensor = |name: &str, a: &ArrayD<f32>| {
        if w_dtype == dtype::FLOAT16 { tensor::tensor_from_f16(name, a) } else { tensor::tensor_from_f32(name, a) }
    };
    let kind = if members.len() == 3 { "qkv" } else { "kv" };
    let w_name = patch.fresh_name(index, &format!("{}_{kind}", first.input[1]));
    patch.add_initializer(to_tensor(&w_name, &weight));
    let mut fused = patch.fresh_name(index, &format!("{}_{kind}", first.output[0]));
    patch.add_node(NodeBuilder::new("MatMul").inputs([x.to_string(), w_name]).outputs([fused.clone()]).build());

    let mut outputs = Vec::with_capacity(members.len());
    match (bias, biases) {
        (Some(bias), Some(biases)) => {
            let b_name = patch.fresh_name(index, &format!("{}_{kind}_bias", first.input[1]));
            patch.add_initializer(to_tensor(&b_name, &bias));
            let biased = patch.fresh_name(index, &format!("{fused}_bias"));
            patch.add_node(NodeBuilder::new("Add").inputs([fused, b_name]).outputs([biased.clone()]).build());
            fused = biased;
            for (p, (add, _)) in members.iter().zip(biases) {
                outputs.push(index.node(add).output[0].clone());
                patch.remove_node(add);
                patch.remove_node(p.matmul);
            }
        }
        _ => {
            for p in members {
                outputs.push(index.node(p.matmul).output[0].clone());
                patch.remove_node(p.matmul);
            }
        }
    }

    let sizes: Vec<i64> = members.iter().map(|p| p.out_features).collect();
    let split = NodeBuilder::new("Split").attr_int("axis", -1).outputs(outputs);
    let split = if opset >= 13 {
        let sizes_name = match split_sizes.get(&sizes) {
            Some(name) => name.clone(),
            None => {
                let name = patch.fresh_name(index, &format!("{kind}_split_sizes"));
                patch.add_initializer(tensor::tensor_from_i64(&name, &Array1::from(sizes.clone()).into_dyn()));
                split_sizes.insert(sizes, name.clone());
                name
            }
        };
        split.inputs([fused, sizes_name])
    } else {
        split.inputs([fused]).attr_ints("split", &sizes)
    };
    patch.add_node(split.build());
    patch.count_rewrite();
}

/// `arrays` joined along `axis` (None when their shapes do not fit together).
fn concat(arrays: &[ArrayD<f32>], axis: usize) -> Option<ArrayD<f32>> {
    let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(axis), &views).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    //! Also the helpers of the conv1x1 tests (`tiny`, `noise`, `compare`).

    use ndarray::{ArrayD, IxDyn};

    use super::*;
    use crate::manifest::PassRecord;
    use crate::onnx::{ModelProto, make_tensor_value_info};
    use crate::passes::testing::{compare_small, count, noise, run_passes, tiny};
    use crate::passes::{Cleanup, PassManager};

    fn f32_init(name: &str, dims: &[usize], seed: u64) -> crate::onnx::TensorProto {
        let values = noise(dims.iter().product(), seed);
        tensor::tensor_from_f32(name, &ArrayD::from_shape_vec(IxDyn(dims), values).unwrap())
    }

    fn i64_init(name: &str, values: &[i64]) -> crate::onnx::TensorProto {
        tensor::tensor_from_i64(name, &Array1::from(values.to_vec()).into_dyn())
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeBuilder {
        NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs(outputs.iter().copied())
    }

    /// x [b, 5, 8] -> decomposed two-head self-attention with biased q/k/v -> y, and two unrelated
    /// MatMuls of x -> z.
    fn attention_graph(opset: i64) -> OnnxModel {
        let mut m = ModelProto::new();
        m.set_ir_version(8);
        m.opset_import.push(crate::onnx::make_opset("", opset));
        let g = m.graph.mut_or_insert_default();
        g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[None, Some(5), Some(8)])));
        g.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
        g.output.push(make_tensor_value_info("z", dtype::FLOAT, None));
        for (k, name) in ["wq", "wk", "wv"].iter().enumerate() {
            g.initializer.push(f32_init(name, &[8, 8], k as u64));
            g.initializer.push(f32_init(&format!("b{}", &name[1..]), &[8], 10 + k as u64));
        }
        g.initializer.push(f32_init("w1", &[8, 4], 20));
        g.initializer.push(f32_init("w2", &[8, 4], 21));
        g.initializer.push(f32_init("scale", &[], 22));
        g.initializer.push(i64_init("heads", &[0, 0, 2, 4]));
        g.initializer.push(i64_init("merged", &[0, 0, 8]));
        g.node = vec![
            node("MatMul", &["x", "wq"], &["qm"]).build(),
            node("Add", &["qm", "bq"], &["q"]).build(),
            node("Reshape", &["q", "heads"], &["q4"]).build(),
            node("Transpose", &["q4"], &["qh"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
            node("MatMul", &["x", "wk"], &["km"]).build(),
            node("Add", &["bk", "km"], &["k"]).build(),
            node("Reshape", &["k", "heads"], &["k4"]).build(),
            node("Transpose", &["k4"], &["kt"]).attr_ints("perm", &[0, 2, 3, 1]).build(),
            node("MatMul", &["x", "wv"], &["vm"]).build(),
            node("Add", &["vm", "bv"], &["v"]).build(),
            node("Reshape", &["v", "heads"], &["v4"]).build(),
            node("Transpose", &["v4"], &["vh"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
            node("MatMul", &["qh", "kt"], &["s"]).build(),
            node("Mul", &["s", "scale"], &["ss"]).build(),
            node("Softmax", &["ss"], &["p"]).attr_int("axis", -1).build(),
            node("MatMul", &["p", "vh"], &["o"]).build(),
            node("Transpose", &["o"], &["o4"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
            node("Reshape", &["o4", "merged"], &["y"]).build(),
            node("MatMul", &["x", "w1"], &["z1"]).build(),
            node("MatMul", &["x", "w2"], &["z2"]).build(),
            node("Add", &["z1", "z2"], &["z"]).build(),
        ];
        OnnxModel::from_proto(m, None)
    }

    fn ops(m: &OnnxModel) -> Vec<&str> {
        m.graph().node.iter().map(|n| n.op_type()).collect()
    }

    /// q, k, v and their biases fuse; the MatMuls of x that feed no attention stay as they are.
    #[test]
    fn fuses_only_the_projections_of_one_attention() {
        for opset in [12, 17] {
            let before = attention_graph(opset);
            let mut after = before.clone();
            let records = run_passes(&mut after, PassManager::new().with(FuseQkv));
            assert_eq!((records[0].rewrites, records[0].nodes_before, records[0].nodes_after), (1, 21, 18));
            assert_eq!(count(&after, "MatMul"), 5, "{:?}", ops(&after));
            let split = after.graph().node.iter().find(|n| n.op_type() == "Split").unwrap();
            assert_eq!(split.output, ["q", "k", "v"]);
            let add = index_of_producer(&after, &split.input[0]);
            let fused = index_of_producer(&after, &after.graph().node[add].input[0]);
            let fused = &after.graph().node[fused];
            assert_eq!((fused.op_type(), fused.input[0].as_str()), ("MatMul", "x"));
            assert_eq!(after.initializer(&fused.input[1]).unwrap().dims, [8, 24]);
            if opset < 13 {
                assert_eq!((split.input.len(), crate::onnx::attr_ints(split, "split")), (1, Some(&[8i64, 8, 8][..])));
            } else {
                assert_eq!(after.initializer_i64(&split.input[1]).unwrap().as_slice().unwrap(), &[8, 8, 8]);
            }
            assert!(run_passes(&mut after, PassManager::new().with(FuseQkv))[0].unchanged());
            let err = compare_small(&before, &after, 7);
            assert!(err <= 1e-6, "opset {opset}: relative L2 {err:.2e}");
        }
    }

    fn index_of_producer(m: &OnnxModel, value: &str) -> usize {
        m.graph().node.iter().position(|n| n.output.iter().any(|o| o == value)).unwrap()
    }

    /// A projection with a run-time weight, or a weight of the wrong rank, is not fused, and a missing
    /// bias keeps the other biases as separate Adds; nothing panics.
    #[test]
    fn skips_what_does_not_match() {
        let mut m = attention_graph(17);
        let g = m.graph_mut();
        g.input.push(make_tensor_value_info("wq", dtype::FLOAT, Some(&[Some(8), Some(8)])));
        let mut after = m.clone();
        let records = run_passes(&mut after, PassManager::new().with(FuseQkv));
        // k and v still fuse (a kv group); their biases fold.
        assert_eq!(records[0].rewrites, 1);
        let split = after.graph().node.iter().find(|n| n.op_type() == "Split").unwrap();
        assert_eq!(split.output, ["k", "v"]);

        // A bias that is not a constant [out]: the biases stay, reading the split outputs.
        let mut m = attention_graph(17);
        let bias = m.graph_mut().initializer.iter_mut().find(|t| t.name() == "bv").unwrap();
        *bias = f32_init("bv", &[1, 8], 12);
        let before = m.clone();
        run_passes(&mut m, PassManager::new().with(FuseQkv));
        let split = m.graph().node.iter().find(|n| n.op_type() == "Split").unwrap();
        assert_eq!(split.output, ["qm", "km", "vm"]);
        assert_eq!(count(&m, "Add"), 4);
        assert!(compare_small(&before, &m, 8) <= 1e-6);

        // A 3-D weight, an empty input, an opset-10 model: nothing happens.
        let mut m = attention_graph(17);
        let w = m.graph_mut().initializer.iter_mut().find(|t| t.name() == "wk").unwrap();
        *w = f32_init("wk", &[1, 8, 8], 1);
        m.graph_mut().node[8].input[0].clear();
        let records = run_passes(&mut m, PassManager::new().with(FuseQkv));
        assert_eq!(records[0].rewrites, 0);
        let mut m = attention_graph(10);
        assert!(run_passes(&mut m, PassManager::new().with(FuseQkv))[0].unchanged());
    }

    #[test]
    fn options() {
        let ctx =
            crate::passes::BuildContext::new(crate::settings::ExecutionProvider::Cpu, crate::settings::Precision::Fp32);
        assert!(crate::passes::options::build_from_str::<FuseQkv>("", &ctx).is_ok());
        let err = crate::passes::options::build_from_str::<FuseQkv>("groups = 3", &ctx).err().unwrap().to_string();
        assert!(err.contains("`groups`"), "{err}");
    }

    /// Splits added by the pass, by number of outputs: (qkv groups, kv groups).
    fn splits(before: &OnnxModel, after: &OnnxModel) -> (usize, usize) {
        let by_outputs = |m: &OnnxModel, n: usize| {
            m.graph().node.iter().filter(|x| x.op_type() == "Split" && x.output.len() == n).count()
        };
        (by_outputs(after, 3) - by_outputs(before, 3), by_outputs(after, 2) - by_outputs(before, 2))
    }

    /// Every eligible group of a tiny model is fused, the outputs stay, a second run changes nothing.
    fn check_model(name: &str, before: &OnnxModel, groups: (usize, usize), seed: u64) -> PassRecord {
        let mut after = before.clone();
        let records = run_passes(&mut after, PassManager::new().with(FuseQkv));
        let r = records[0].clone();
        assert_eq!((r.rewrites, splits(before, &after)), (groups.0 + groups.1, groups), "{name}: {r:?}");
        assert!(r.nodes_after < r.nodes_before, "{name}: {r:?}");
        let fused = after.proto().clone();
        let again = run_passes(&mut after, PassManager::new().with(FuseQkv));
        assert!(again[0].unchanged(), "{name}: second run changed {:?}", again[0]);
        assert_eq!(after.proto(), &fused);
        let err = compare_small(before, &after, seed);
        eprintln!(
            "{name}: {} qkv + {} kv groups fused, {} -> {} nodes, relative L2 {err:.1e}",
            groups.0, groups.1, r.nodes_before, r.nodes_after
        );
        assert!(err <= 1e-5, "{name}: relative L2 {err:.2e}");
        r
    }

    /// (model, self-attention qkv groups, cross-attention kv groups): one per attention of each
    /// transformer block; the VAE's mid-block attention and the CLIP layers carry biases.
    const TINY: [(&str, usize, usize); 14] = [
        ("tiny-sd/unet", 4, 4),
        ("tiny-sd-dynamo/unet", 4, 4),
        ("tiny-sdxl/unet", 8, 8),
        ("tiny-sdxl-dynamo/unet", 8, 8),
        ("tiny-sd/vae_decoder", 1, 0),
        ("tiny-sd-dynamo/vae_decoder", 1, 0),
        ("tiny-sd/vae_encoder", 1, 0),
        ("tiny-sdxl-dynamo/vae_encoder", 1, 0),
        ("tiny-sd/text_encoder", 2, 0),
        ("tiny-sd-dynamo/text_encoder", 2, 0),
        ("tiny-sdxl/text_encoder", 2, 0),
        ("tiny-sdxl-dynamo/text_encoder", 2, 0),
        ("tiny-sdxl/text_encoder_2", 2, 0),
        ("tiny-sdxl-dynamo/text_encoder_2", 2, 0),
    ];

    #[test]
    fn fuses_every_tiny_model_as_exported() {
        for (k, (name, qkv, kv)) in TINY.iter().enumerate() {
            let model = OnnxModel::load(tiny(name)).unwrap();
            let r = check_model(name, &model, (*qkv, *kv), 10 + k as u64);
            // Biases fold into one Add: 3 MatMuls + 3 Adds become MatMul + Add + Split (and the
            // TorchScript exporter's Identity nodes in front of shared biases die with them).
            let per_qkv = if name.contains("unet") { 1 } else { 3 };
            assert!(r.nodes_before - r.nodes_after >= per_qkv * qkv, "{name}: {r:?}");
        }
    }

    #[test]
    fn fuses_every_tiny_model_after_cleanup() {
        for (k, (name, qkv, kv)) in TINY.iter().enumerate() {
            let mut model = OnnxModel::load(tiny(name)).unwrap();
            run_passes(&mut model, PassManager::new().with(Cleanup));
            check_model(name, &model, (*qkv, *kv), 40 + k as u64);
        }
    }

    /// After the attention pass the projections feed MultiHeadAttention (or ONNX Attention on the opset-23
    /// exports) directly: the same groups fuse.
    #[test]
    fn fuses_every_tiny_model_after_the_attention_pass() {
        use crate::passes::attention::{Attention, FusedOp};
        for (k, (name, qkv, kv)) in TINY.iter().enumerate() {
            let original = OnnxModel::load(tiny(name)).unwrap();
            let ops: &[FusedOp] = if original.opset("").unwrap_or(0) >= 23 {
                &[FusedOp::MultiHeadAttention, FusedOp::Attention]
            } else {
                &[FusedOp::MultiHeadAttention]
            };
            for &op in ops {
                let mut model = original.clone();
                run_passes(&mut model, PassManager::new().with(Cleanup).with(Attention::new(op)));
                let fused = model
                    .graph()
                    .node
                    .iter()
                    .filter(|n| n.op_type() == "MultiHeadAttention" || n.op_type() == "Attention")
                    .count();
                eprintln!("{name}: {fused} attention ops after the attention pass ({})", op.name());
                check_model(name, &model, (*qkv, *kv), 70 + k as u64);
            }
        }
    }
}
