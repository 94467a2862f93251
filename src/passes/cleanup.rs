//! Cleanup: the small, always-safe rewrites an exported graph needs before the fusions look at it.
//!
//! ```text
//! 1. Constant folding, shapes included (TorchScript attention scale, q: [batch, heads, seq, 64]):
//!
//!      q ────────────────────────────────────────────────────────── Mul ─> q·s
//!      q ─Shape─Slice[-1:]─Cast─Sqrt─Div(1, ·)─Cast─Sqrt─> s ─────────┘
//!        [?,8,?,64]   [64]   64.0   8.0    0.125    0.125  0.354
//!    becomes
//!      q ─────────── Mul ─> q·s          s = 0.35355338 (an initializer of shape [1])
//!
//!    Any node whose outputs are all known constants goes; what non-folded nodes read from it becomes
//!    an initializer. `Constant` nodes become initializers too. Sizes come from the graph inputs,
//!    initializers and value_info through `onnx::infer`; dynamic sizes stay dynamic.
//!
//! 2. No-ops, each replaced by its input:
//!
//!      x ─Identity─> y          x ─Cast(to = type of x)─> y        x ─Dropout (inference)─> y
//!      x ─Mul(1)─> y            x ─Div(1)─> y                      x ─Transpose(0,1,..,n-1)─> y
//!      x ─Reshape(static shape of x)─> y
//!    become
//!      x ─> (every reader of y)
//!
//!    (`Mul`/`Div` only when the constant 1 does not broadcast x to a larger shape.)
//!
//! 3. Redundant pairs:
//!
//!      x ─Transpose(p)─Transpose(q)─> y   becomes   x ─Transpose(p∘q)─> y   (or x itself if p∘q = id)
//!      x ─Reshape─Reshape(s)─> y          becomes   x ─Reshape(s)─> y       (s constant, no 0 entries)
//!
//! 4. Dead nodes and unused initializers: dropped by `apply_patch` after every round.
//! ```
//!
//! Idempotent: on a graph it already cleaned, `run` returns `None`.

use std::collections::HashSet;

use crate::onnx::infer::Inference;
use crate::onnx::{
    GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, attr_int, attr_ints, constant_node_tensor, is_op,
};
use crate::passes::{BuildContext, NoOptions, Pass, PassContext, PassSpec};
use crate::{Error, Result};

/// The cleanup pass (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cleanup;

impl PassSpec for Cleanup {
    const NAME: &'static str = "cleanup";
    const SUMMARY: &'static str = "constant folding, no-op and duplicate node removal, Reshape pairs merged";
    type Options = NoOptions;
    fn build(_: NoOptions, _: &BuildContext) -> Result<Self> {
        Ok(Cleanup)
    }
}

impl Pass for Cleanup {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        let index = GraphIndex::new(model);
        let facts = Inference::run(&index);
        let mut patch = Patch::new();
        let folded = fold_constants(&index, &facts, &mut patch)?;
        remove_no_ops(&index, &facts, &folded, &mut patch);
        merge_transposes(&index, &facts, &folded, &mut patch);
        merge_reshapes(&index, &facts, &folded, &mut patch);
        Ok((!patch.is_empty()).then_some(patch))
    }
}

/// Removes every node whose outputs are all constant and turns what the rest of the graph reads from
/// them into initializers. Returns the folded node indices (the other rewrites leave them alone).
fn fold_constants(index: &GraphIndex, facts: &Inference, patch: &mut Patch) -> Result<HashSet<usize>> {
    let nodes = index.nodes();
    let mut folded = HashSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let outputs: Vec<&String> = node.output.iter().filter(|o| !o.is_empty()).collect();
        // A graph output keeps its producer: an initializer as graph output trips some runtimes.
        if outputs.is_empty() || outputs.iter().any(|o| index.is_graph_output(o)) {
            continue;
        }
        let foldable = if is_op(node, "Constant") {
            constant_node_tensor(node).is_some()
        } else {
            let has_subgraph = node.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty());
            !has_subgraph && outputs.iter().all(|o| facts.value(o).is_some())
        };
        if foldable {
            folded.insert(i);
        }
    }
    for &i in sorted(&folded).iter() {
        let node = &nodes[i];
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            let read_outside = index.consumers(out).iter().any(|c| !folded.contains(c));
            if !read_outside {
                continue;
            }
            let tensor = if is_op(node, "Constant") {
                constant_node_tensor(node).map(|t| {
                    let mut t = t.into_owned();
                    t.set_name(out.clone());
                    t
                })
            } else {
                facts.value(out).and_then(|c| c.to_tensor(out))
            };
            let tensor = tensor.ok_or_else(|| {
                Error::internal(format!("cannot encode the folded value `{out}` of node `{}`", node.name()))
            })?;
            patch.add_initializer(tensor);
        }
        patch.remove_node(i);
        patch.count_rewrite();
    }
    Ok(folded)
}

fn sorted(set: &HashSet<usize>) -> Vec<usize> {
    let mut v: Vec<usize> = set.iter().copied().collect();
    v.sort_unstable();
    v
}

/// Replaces no-op nodes by their input.
fn remove_no_ops(index: &GraphIndex, facts: &Inference, folded: &HashSet<usize>, patch: &mut Patch) {
    for (i, node) in index.nodes().iter().enumerate() {
        if folded.contains(&i) || patch.is_removed(i) || node.output.is_empty() || node.input.is_empty() {
            continue;
        }
        let Some(x) = no_op_input(index, facts, node) else { continue };
        let y = &node.output[0];
        if index.can_shunt(y, x) {
            patch.shunt(y.clone(), x.clone());
            patch.remove_node(i);
            patch.count_rewrite();
        }
    }
}

/// The input a node passes through unchanged, if it is a no-op.
fn no_op_input<'a>(index: &GraphIndex, facts: &Inference, node: &'a NodeProto) -> Option<&'a String> {
    let x = node.input.first().filter(|x| !x.is_empty())?;
    let one_output = node.output.len() == 1;
    if is_op(node, "Identity") && one_output {
        return Some(x);
    }
    if is_op(node, "Dropout") {
        let mask_unused = node.output.get(1).is_none_or(|m| m.is_empty() || index.consumers(m).is_empty())
            && node.output.get(1).is_none_or(|m| !index.is_graph_output(m));
        let training = node.input.get(2).filter(|t| !t.is_empty()).map(|t| facts.value(t).map(|c| c.is_all(0.0)));
        let inference = match training {
            None => true,
            Some(Some(is_false)) => is_false,
            Some(None) => false,
        };
        return (mask_unused && inference).then_some(x);
    }
    if !one_output {
        return None;
    }
    if is_op(node, "Cast") {
        let to = attr_int(node, "to")?;
        return (facts.dtype(x)? as i64 == to).then_some(x);
    }
    if is_op(node, "Mul") && node.input.len() == 2 {
        let (a, b) = (&node.input[0], &node.input[1]);
        if is_neutral_one(facts, b, a) {
            return Some(a);
        }
        if is_neutral_one(facts, a, b) {
            return Some(b);
        }
        return None;
    }
    if is_op(node, "Div") && node.input.len() == 2 {
        return is_neutral_one(facts, &node.input[1], x).then_some(x);
    }
    if is_op(node, "Transpose") {
        let perm = attr_ints(node, "perm")?;
        return perm.iter().enumerate().all(|(i, &p)| p == i as i64).then_some(x);
    }
    if is_op(node, "Reshape") {
        let xs = facts.facts(x)?.static_shape()?;
        let ys = facts.facts(&node.output[0])?.static_shape()?;
        return (xs == ys).then_some(x);
    }
    None
}

/// True when `one` is a constant of ones whose broadcast leaves `x`'s shape and type unchanged.
fn is_neutral_one(facts: &Inference, one: &str, x: &str) -> bool {
    let Some(c) = facts.value(one) else { return false };
    if !c.is_all(1.0) || facts.dtype(x) != Some(c.dtype) {
        return false;
    }
    let c_rank = c.shape().len();
    match facts.shape(x) {
        Some(xs) => c_rank <= xs.len() && c.shape().iter().all(|&d| d == 1),
        None => c_rank == 0,
    }
}

/// A Transpose's permutation (the default reverses the axes, which needs the rank).
fn perm_of(facts: &Inference, node: &NodeProto) -> Option<Vec<usize>> {
    match attr_ints(node, "perm") {
        Some(p) => p.iter().map(|&v| usize::try_from(v).ok()).collect(),
        None => Some((0..facts.shape(node.input.first()?)?.len()).rev().collect()),
    }
}

/// `Transpose(Transpose(x, p), q)` -> `Transpose(x, p∘q)`, or `x` when that is the identity.
fn merge_transposes(index: &GraphIndex, facts: &Inference, folded: &HashSet<usize>, patch: &mut Patch) {
    for (i, second) in index.nodes().iter().enumerate() {
        if !is_op(second, "Transpose") || second.input.is_empty() || folded.contains(&i) || patch.is_removed(i) {
            continue;
        }
        let Some(j) = index.producer_op(&second.input[0], "Transpose") else { continue };
        if folded.contains(&j) || patch.is_removed(j) {
            continue;
        }
        let first = index.node(j);
        let (Some(x), Some(p), Some(q)) = (first.input.first(), perm_of(facts, first), perm_of(facts, second)) else {
            continue;
        };
        if p.len() != q.len() || q.iter().any(|&k| k >= p.len()) {
            continue;
        }
        let composed: Vec<usize> = q.iter().map(|&k| p[k]).collect();
        let Some(y) = second.output.first() else { continue };
        if composed.iter().enumerate().all(|(k, &v)| k == v) {
            if !index.can_shunt(y, x) {
                continue;
            }
            patch.shunt(y.clone(), x.clone());
        } else {
            let perm: Vec<i64> = composed.iter().map(|&v| v as i64).collect();
            patch.add_node(
                NodeBuilder::new("Transpose")
                    .name(second.name())
                    .inputs([x.clone()])
                    .outputs([y.clone()])
                    .attr_ints("perm", &perm)
                    .build(),
            );
        }
        patch.remove_node(i);
        patch.count_rewrite();
    }
}

/// `Reshape(Reshape(x, s1), s2)` -> `Reshape(x, s2)` when `s2` is constant and has no 0 (copy) entry.
fn merge_reshapes(index: &GraphIndex, facts: &Inference, folded: &HashSet<usize>, patch: &mut Patch) {
    for (i, second) in index.nodes().iter().enumerate() {
        if !is_op(second, "Reshape") || second.input.len() < 2 || folded.contains(&i) || patch.is_removed(i) {
            continue;
        }
        let Some(j) = index.producer_op(&second.input[0], "Reshape") else { continue };
        if folded.contains(&j) || patch.is_removed(j) {
            continue;
        }
        let Some(target) = facts.facts(&second.input[1]).and_then(|f| f.ints()) else { continue };
        let allowzero = attr_int(second, "allowzero").unwrap_or(0) != 0;
        // A 0 copies the dimension of the *intermediate* tensor, which x may not share.
        if target.contains(&0) && !allowzero {
            continue;
        }
        let Some(x) = index.node(j).input.first() else { continue };
        let mut node = second.clone();
        node.input[0] = x.clone();
        patch.add_node(node);
        patch.remove_node(i);
        patch.count_rewrite();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::tensor::dtype;
    use crate::onnx::{ModelProto, make_tensor_value_info, tensor};
    use crate::passes::PassManager;
    use crate::settings::ExecutionProvider;
    use ndarray::{ArrayD, IxDyn};

    fn model(nodes: Vec<NodeProto>, inputs: &[(&str, Vec<Option<i64>>)], outputs: &[&str]) -> OnnxModel {
        let mut m = ModelProto::new();
        m.set_ir_version(8);
        m.opset_import.push(crate::onnx::make_opset("", 17));
        let g = m.graph.mut_or_insert_default();
        g.node = nodes;
        for (name, shape) in inputs {
            g.input.push(make_tensor_value_info(name, dtype::FLOAT, Some(shape)));
        }
        for name in outputs {
            g.output.push(make_tensor_value_info(name, dtype::FLOAT, None));
        }
        OnnxModel::from_proto(m, None)
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeBuilder {
        NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs(outputs.iter().copied())
    }

    fn constant_i64(out: &str, values: &[i64]) -> NodeProto {
        let t = tensor::tensor_from_i64("", &ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap());
        node("Constant", &[], &[out]).attr_tensor("value", t).build()
    }

    fn constant_f32(out: &str, v: f32) -> NodeProto {
        node("Constant", &[], &[out])
            .attr_tensor("value", tensor::tensor_from_f32("", &ArrayD::from_elem(IxDyn(&[]), v)))
            .build()
    }

    fn run(m: &mut OnnxModel) -> Vec<crate::manifest::PassRecord> {
        PassManager::new().with(Cleanup).run(m, &PassContext::new(ExecutionProvider::Cpu)).unwrap()
    }

    fn ops(m: &OnnxModel) -> Vec<String> {
        m.graph().node.iter().map(|n| n.op_type().to_string()).collect()
    }

    /// The TorchScript attention-scale chain folds to one number when the head size is static.
    #[test]
    fn folds_the_attention_scale_chain() {
        let nodes = vec![
            node("Shape", &["q"], &["shape"]).build(),
            constant_i64("start", &[-1]),
            constant_i64("end", &[i64::MAX]),
            node("Slice", &["shape", "start", "end"], &["last"]).build(),
            node("Cast", &["last"], &["lastf"]).attr_int("to", dtype::FLOAT as i64).build(),
            node("Sqrt", &["lastf"], &["sq"]).build(),
            constant_f32("one", 1.0),
            node("Div", &["one", "sq"], &["inv"]).build(),
            node("Cast", &["inv"], &["invf"]).attr_int("to", dtype::FLOAT as i64).build(),
            node("Sqrt", &["invf"], &["scale"]).build(),
            node("Mul", &["q", "scale"], &["y"]).build(),
        ];
        let mut m = model(nodes, &[("q", vec![None, Some(8), None, Some(64)])], &["y"]);
        let records = run(&mut m);
        assert_eq!(ops(&m), vec!["Mul"]);
        assert!(records[0].rewrites > 0);
        let scale = m.initializer_f32(&m.graph().node[0].input[1]).unwrap();
        let expected = (1.0f32 / 64f32.sqrt()).sqrt();
        assert_eq!(scale.shape(), &[1]);
        assert_eq!(scale[[0]], expected);
        // Idempotent.
        let again = run(&mut m);
        assert!(again[0].unchanged());
    }

    /// With a dynamic last dimension nothing is folded but the Constants.
    #[test]
    fn keeps_dynamic_shape_arithmetic() {
        let nodes = vec![
            node("Shape", &["q"], &["shape"]).build(),
            constant_i64("start", &[-1]),
            constant_i64("end", &[i64::MAX]),
            node("Slice", &["shape", "start", "end"], &["last"]).build(),
            node("Cast", &["last"], &["y"]).attr_int("to", dtype::FLOAT as i64).build(),
        ];
        let mut m = model(nodes, &[("q", vec![None, Some(8), None, None])], &["y"]);
        run(&mut m);
        assert_eq!(ops(&m), vec!["Shape", "Slice", "Cast"]);
        assert_eq!(m.graph().initializer.len(), 2);
    }

    #[test]
    fn removes_no_ops() {
        let nodes = vec![
            node("Identity", &["x"], &["a"]).build(),
            node("Cast", &["a"], &["b"]).attr_int("to", dtype::FLOAT as i64).build(),
            constant_f32("one", 1.0),
            node("Mul", &["one", "b"], &["c"]).build(),
            node("Div", &["c", "one"], &["d"]).build(),
            node("Transpose", &["d"], &["e"]).attr_ints("perm", &[0, 1]).build(),
            node("Relu", &["e"], &["y"]).build(),
        ];
        let mut m = model(nodes, &[("x", vec![Some(2), None])], &["y"]);
        run(&mut m);
        assert_eq!(ops(&m), vec!["Relu"]);
        assert_eq!(m.graph().node[0].input[0], "x");
        assert!(m.graph().initializer.is_empty(), "the unused constant 1 is dropped");
    }

    /// `Mul(x, ones[2,3])` broadcasts a `[3]` x to `[2, 3]`: not a no-op.
    #[test]
    fn keeps_a_broadcasting_multiply() {
        let ones = tensor::tensor_from_f32("ones", &ArrayD::from_elem(IxDyn(&[2, 3]), 1.0));
        let mut m = model(vec![node("Mul", &["x", "ones"], &["y"]).build()], &[("x", vec![Some(3)])], &["y"]);
        m.graph_mut().initializer.push(ones);
        run(&mut m);
        assert_eq!(ops(&m), vec!["Mul"]);
    }

    /// An Identity between a graph input and a graph output must stay (the output keeps its name).
    #[test]
    fn keeps_an_identity_from_input_to_output() {
        let mut m = model(vec![node("Identity", &["x"], &["y"]).build()], &[("x", vec![Some(2)])], &["y"]);
        let records = run(&mut m);
        assert_eq!(ops(&m), vec!["Identity"]);
        assert!(records[0].unchanged());
    }

    /// An Identity producing a graph output: its input's producer takes over the output name.
    #[test]
    fn renames_into_a_graph_output() {
        let nodes = vec![node("Relu", &["x"], &["r"]).build(), node("Identity", &["r"], &["y"]).build()];
        let mut m = model(nodes, &[("x", vec![Some(2)])], &["y"]);
        run(&mut m);
        assert_eq!(ops(&m), vec!["Relu"]);
        assert_eq!(m.graph().node[0].output[0], "y");
    }

    #[test]
    fn merges_transpose_pairs() {
        let nodes = vec![
            node("Transpose", &["x"], &["t1"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
            node("Transpose", &["t1"], &["t2"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
            node("Relu", &["t2"], &["a"]).build(),
            node("Transpose", &["a"], &["t3"]).attr_ints("perm", &[0, 2, 3, 1]).build(),
            node("Transpose", &["t3"], &["y"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
        ];
        let mut m = model(nodes, &[("x", vec![None, Some(2), Some(3), Some(4)])], &["y"]);
        run(&mut m);
        assert_eq!(ops(&m), vec!["Relu", "Transpose"]);
        let t = &m.graph().node[1];
        assert_eq!(t.output[0], "y");
        // perm q∘p: y[i] = a[p[q[i]]] with p = [0,2,3,1], q = [0,2,1,3] -> [0,3,2,1].
        assert_eq!(attr_ints(t, "perm").unwrap(), &[0, 3, 2, 1]);
    }

    #[test]
    fn merges_reshape_pairs() {
        let nodes = vec![
            constant_i64("s1", &[6, 4]),
            constant_i64("s2", &[2, 12]),
            node("Reshape", &["x", "s1"], &["r1"]).build(),
            node("Reshape", &["r1", "s2"], &["y"]).build(),
        ];
        let mut m = model(nodes, &[("x", vec![None, Some(3), Some(4)])], &["y"]);
        run(&mut m);
        assert_eq!(ops(&m), vec!["Reshape"]);
        assert_eq!(m.graph().node[0].input, vec!["x".to_string(), "s2".to_string()]);
    }
}
