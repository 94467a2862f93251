//! SkipLayerNormalization: a residual sum normalized over its last axis becomes one
//! `com.microsoft::SkipLayerNormalization`, with the bias of a projection folded in when there is one.
//!
//! ```text
//!    a ──────────────────────────────┐
//!                                    Add ─> s ─ LayerNormalization(axis -1, γ, β, ε) ─> y
//!    x ─MatMul(W)─> m ─(Add bias)────┘     └──> (other readers of s: the next residual, ...)
//!
//!  becomes
//!
//!    m, a, γ, β, bias ─ com.microsoft::SkipLayerNormalization(ε) ─> y, _, _, s
//!    (without a foldable bias: add.input[0], add.input[1], γ, β ─ SkipLayerNormalization ─> y[, _, _, s])
//! ```
//!
//! In a diffusers transformer block this is `norm2(attn1(..) + h)`, `norm3(attn2(..) + h)` and, from the
//! second layer of a transformer on, `norm1(ff(..) + h)`; the attention's `to_out` and the feed-forward's
//! last Linear carry the bias that is folded. The block's first `norm1` reads `proj_in`, not a residual,
//! and stays a LayerNormalization.
//!
//! What is checked (dataflow, constants and inferred shapes, never names):
//! - `LayerNormalization` (default domain) normalizes the last axis (`axis` = -1 or rank - 1), only its
//!   first output is read, its scale (and bias, if any) is a constant 1-D `[C]` of the input's type;
//! - its input is an `Add` of two computed (non-constant) values of one float type (float32 / float16)
//!   and one shape: rank 2 or 3, as the kernels require, the last axis `C`, every other axis known and
//!   equal on both sides or unknown on both (a broadcasting Add is not a residual);
//! - the bias fold: one side of that Add is `Add(MatMul(..), bias)` with `bias` a constant 1-D `[C]` of
//!   the same type, read by the residual Add alone; the MatMul result becomes `input`, the other side
//!   `skip`, the constant `bias` (ONNX Runtime adds it to input + skip before normalizing);
//! - the residual sum `s`: when anything besides the norm reads it (the next residual Add) or it is a
//!   graph output, it is the op's fourth output, `input_skip_bias_sum` (index 3; 1 and 2 are the
//!   training-only mean and inverse standard deviation, left empty), instead of keeping the Add.
//!
//! Kernel constraints (ONNX Runtime `contrib_ops/cpu/skip_layer_norm_helper.h`, shared by the CPU and
//! CUDA kernels, and `contrib_ops/cuda/bert/skip_layer_norm.cc`): input and skip 2-D or 3-D with equal
//! last two axes (skip may drop or have a batch of 1; not emitted here), gamma, beta and bias 1-D of the
//! hidden size, one type T (float or float16 on CUDA); any hidden size (`skip_layer_norm_impl.cu` falls back
//! to a generic kernel past its specialised sizes). The CUDA kernel requires the `epsilon` attribute,
//! so it is always written (the norm's own, default 1e-5).
//!
//! Targets: the op is a `com.microsoft` contrib op that ONNX Runtime's CPU and CUDA EPs run; for tensorrt
//! and openvino the graph is left alone (a contrib op they cannot run would split their graph, and both
//! fuse LayerNormalization themselves).
//!
//! The output `y` and the exposed sum get value infos (shape and type of the input), which later rounds and
//! passes read as declared shapes (src/onnx/infer/contrib.rs also infers them).
//!
//! Options: none. Idempotent: the rewritten norms are gone, and a SkipLayerNormalization is not matched.

use std::collections::HashSet;

use crate::Result;
use crate::onnx::infer::{Inference, Shape};
use crate::onnx::{
    GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, attr_float, attr_int, is_op, make_tensor_value_info,
};
use crate::passes::pattern::{BiasAdd, bias_add, const_vector, residual_shape};
use crate::passes::{BuildContext, NoOptions, Pass, PassContext, PassSpec};

/// The skip-layer-norm pass (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct SkipLayerNorm;

impl PassSpec for SkipLayerNorm {
    const NAME: &'static str = "skip-layer-norm";
    const SUMMARY: &'static str =
        "residual Add (+ projection bias) + LayerNormalization become SkipLayerNormalization (cpu, cuda)";
    type Options = NoOptions;
    fn build(_: NoOptions, _: &BuildContext) -> Result<Self> {
        Ok(SkipLayerNorm)
    }
}

/// LayerNormalization's default epsilon.
const DEFAULT_EPSILON: f32 = 1e-5;

impl Pass for SkipLayerNorm {
    fn run(&self, model: &OnnxModel, ctx: &PassContext) -> Result<Option<Patch>> {
        if !ctx.target.runs_contrib_ops() {
            return Ok(None);
        }
        let index = GraphIndex::new(model);
        let facts = Inference::run(&index);
        let mut names: HashSet<String> = index.nodes().iter().map(|n| n.name().to_string()).collect();
        let mut patch = Patch::new();
        for (i, node) in index.nodes().iter().enumerate() {
            if !is_op(node, "LayerNormalization") || patch.is_removed(i) {
                continue;
            }
            let Some(m) = matched(&index, &facts, node) else { continue };
            if patch.is_removed(m.add) || m.bias.as_ref().is_some_and(|b| patch.is_removed(b.add)) {
                continue;
            }
            let y = node.output[0].clone();
            let s = index.node(m.add).output[0].clone();
            let mut inputs = vec![m.input.clone(), m.skip.clone(), m.gamma.clone(), m.beta.clone().unwrap_or_default()];
            if let Some(b) = &m.bias {
                inputs.push(b.bias.clone());
                patch.remove_node(b.add);
            } else if m.beta.is_none() {
                inputs.pop();
            }
            let sum_read = index.is_graph_output(&s) || index.consumers(&s).iter().any(|&c| c != i);
            let outputs =
                if sum_read { vec![y.clone(), String::new(), String::new(), s.clone()] } else { vec![y.clone()] };
            for v in [&y, &s].into_iter().take(if sum_read { 2 } else { 1 }) {
                if index.value_info(v).is_none() {
                    patch.set_value_info(make_tensor_value_info(v, m.dtype, Some(&m.shape)));
                }
            }
            let name = match node.name().rsplit_once('/') {
                Some((block, _)) => format!("{block}/SkipLayerNormalization"),
                None => format!("{}_skip", node.name()),
            };
            let name = if node.name().is_empty() || !names.insert(name.clone()) { String::new() } else { name };
            patch.add_node(
                NodeBuilder::new("SkipLayerNormalization")
                    .domain("com.microsoft")
                    .name(name)
                    .inputs(inputs)
                    .outputs(outputs)
                    .attr_float("epsilon", attr_float(node, "epsilon").unwrap_or(DEFAULT_EPSILON))
                    .build(),
            );
            patch.require_opset("com.microsoft", 1);
            patch.remove_node(i);
            patch.remove_node(m.add);
            patch.count_rewrite();
        }
        Ok((!patch.is_empty()).then_some(patch))
    }
}

/// One residual + norm to rewrite.
struct Match {
    /// The residual Add.
    add: usize,
    input: String,
    skip: String,
    gamma: String,
    beta: Option<String>,
    bias: Option<BiasAdd>,
    dtype: i32,
    shape: Shape,
}

/// The residual + norm that LayerNormalization `ln` closes, if it can be rewritten.
fn matched(index: &GraphIndex, facts: &Inference, ln: &NodeProto) -> Option<Match> {
    if !(2..=3).contains(&ln.input.len()) || ln.input[0].is_empty() || ln.output.is_empty() {
        return None;
    }
    // Mean and inverse standard deviation (training outputs) must be unused.
    let extra_read =
        ln.output[1..].iter().any(|o| !o.is_empty() && (index.is_graph_output(o) || !index.consumers(o).is_empty()));
    if extra_read {
        return None;
    }
    let add = index.producer_op(&ln.input[0], "Add")?;
    let add_node = index.node(add);
    if add_node.input.len() != 2 || add_node.output.len() != 1 {
        return None;
    }
    let (a, b) = (&add_node.input[0], &add_node.input[1]);
    if [a, b].iter().any(|v| v.is_empty() || index.const_tensor(v).is_some()) {
        return None;
    }
    let (dt, shape) = residual_shape(facts, a, b)?;
    let rank = shape.len();
    let c = shape[rank - 1]?;
    let axis = attr_int(ln, "axis").unwrap_or(-1);
    if axis != -1 && axis != rank as i64 - 1 {
        return None;
    }
    let gamma = const_vector(index, &ln.input[1], c, dt)?;
    let beta = match ln.input.get(2).filter(|v| !v.is_empty()) {
        Some(v) => Some(const_vector(index, v, c, dt)?),
        None => None,
    };
    // Fold the bias of one side when that side is a MatMul + bias read by the residual alone.
    let folded = [(a, b), (b, a)].into_iter().find_map(|(side, other)| {
        let bias = bias_add(index, side).filter(|b| b.width == c && b.dtype == dt)?;
        let from_matmul = index.producer_op(&bias.x, "MatMul").is_some();
        let same = facts.shape(&bias.x) == Some(&shape) && facts.dtype(&bias.x) == Some(dt);
        (from_matmul && same && index.single_consumer(side) == Some(add) && !index.is_graph_output(side))
            .then(|| (bias, other.clone()))
    });
    let (input, skip, bias) = match folded {
        Some((bias, other)) => (bias.x.clone(), other, Some(bias)),
        None => (a.clone(), b.clone(), None),
    };
    Some(Match { add, input, skip, gamma, beta, bias, dtype: dt, shape })
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::*;
    use crate::manifest::PassRecord;
    use crate::onnx::dtype;
    use crate::onnx::{ModelProto, tensor};
    use crate::passes::Cleanup;
    use crate::passes::PassManager;
    use crate::passes::testing::{compare_small, count};
    use crate::passes::testing::{noise, tiny};
    use crate::settings::ExecutionProvider;

    fn run(model: &mut OnnxModel, target: ExecutionProvider) -> PassRecord {
        PassManager::new().with(SkipLayerNorm).run(model, &PassContext::new(target)).unwrap().remove(0)
    }

    fn f32_init(name: &str, dims: &[usize], seed: u64) -> crate::onnx::TensorProto {
        let values = noise(dims.iter().product(), seed);
        tensor::tensor_from_f32(name, &ArrayD::from_shape_vec(IxDyn(dims), values).unwrap())
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs(outputs.iter().copied()).build()
    }

    /// x [2, 5, 8] ─MatMul(w)─Add(b)─┐ (or a plain second input h)
    ///                 x ────────────Add ─> s ─LayerNormalization─> y   (s also read by Add(s, x) ─> z)
    fn residual_graph(bias: bool, sum_read: bool) -> OnnxModel {
        let mut m = ModelProto::new();
        m.set_ir_version(8);
        m.opset_import.push(crate::onnx::make_opset("", 17));
        let g = m.graph.mut_or_insert_default();
        let shape = [Some(2), Some(5), Some(8)];
        g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&shape)));
        g.input.push(make_tensor_value_info("h", dtype::FLOAT, Some(&shape)));
        g.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
        g.initializer.push(f32_init("w", &[8, 8], 1));
        g.initializer.push(f32_init("b", &[8], 2));
        g.initializer.push(f32_init("gamma", &[8], 3));
        g.initializer.push(f32_init("beta", &[8], 4));
        g.node.push(node("MatMul", &["x", "w"], &["m"]));
        if bias {
            g.node.push(node("Add", &["b", "m"], &["mb"]));
            g.node.push(node("Add", &["mb", "x"], &["s"]));
        } else {
            g.node.push(node("Add", &["h", "m"], &["s"]));
        }
        g.node.push(
            NodeBuilder::new("LayerNormalization")
                .inputs(["s", "gamma", "beta"])
                .outputs(["y"])
                .attr_int("axis", -1)
                .attr_float("epsilon", 1e-5)
                .build(),
        );
        if sum_read {
            g.output.push(make_tensor_value_info("z", dtype::FLOAT, None));
            g.node.push(node("Add", &["s", "x"], &["z"]));
        }
        OnnxModel::from_proto(m, None)
    }

    fn sln(m: &OnnxModel) -> &NodeProto {
        m.graph().node.iter().find(|n| n.op_type() == "SkipLayerNormalization").unwrap()
    }

    #[test]
    fn synthetic_with_and_without_bias_and_sum() {
        for bias in [false, true] {
            for sum_read in [false, true] {
                let before = residual_graph(bias, sum_read);
                let mut after = before.clone();
                let r = run(&mut after, ExecutionProvider::Cpu);
                assert_eq!(r.rewrites, 1, "bias {bias}, sum {sum_read}");
                assert_eq!(count(&after, "LayerNormalization"), 0);
                let n = sln(&after);
                assert_eq!(n.domain(), "com.microsoft");
                if bias {
                    assert_eq!(n.input, ["m", "x", "gamma", "beta", "b"]);
                    assert_eq!(count(&after, "Add"), usize::from(sum_read));
                } else {
                    assert_eq!(n.input, ["h", "m", "gamma", "beta"]);
                }
                if sum_read {
                    assert_eq!(n.output, ["y", "", "", "s"]);
                } else {
                    assert_eq!(n.output, ["y"]);
                }
                assert_eq!(attr_float(n, "epsilon"), Some(1e-5));
                assert!(after.opset("com.microsoft").is_some());
                assert!(run(&mut after, ExecutionProvider::Cpu).unchanged(), "not idempotent");
                let err = compare_small(&before, &after, 5);
                assert!(err <= 1e-5, "bias {bias}, sum {sum_read}: relative L2 {err:.2e}");
            }
        }
    }

    /// A bias Add that something else reads too stays; the residual still fuses without the fold.
    #[test]
    fn shared_bias_add_is_not_folded() {
        let mut m = residual_graph(true, false);
        m.graph_mut().output.push(make_tensor_value_info("mb", dtype::FLOAT, None));
        let before = m.clone();
        run(&mut m, ExecutionProvider::Cpu);
        assert_eq!(sln(&m).input, ["mb", "x", "gamma", "beta"]);
        assert!(compare_small(&before, &m, 6) <= 1e-5);
    }

    #[test]
    fn leaves_what_does_not_match() {
        for target in [ExecutionProvider::OpenVino, ExecutionProvider::TensorRt] {
            let mut m = residual_graph(true, true);
            assert!(run(&mut m, target).unchanged(), "{target:?}");
        }
        // A norm over another axis.
        let mut m = residual_graph(true, true);
        let ln = m.graph_mut().node.iter_mut().find(|n| n.op_type() == "LayerNormalization").unwrap();
        ln.attribute.retain(|a| a.name() != "axis");
        ln.attribute.push(crate::onnx::make_attr_int("axis", 1));
        assert!(run(&mut m, ExecutionProvider::Cpu).unchanged());
        // A broadcasting Add (h [1, 5, 8]) is not a residual.
        let mut m = residual_graph(false, false);
        m.graph_mut().input[1] = make_tensor_value_info("h", dtype::FLOAT, Some(&[Some(1), Some(5), Some(8)]));
        assert!(run(&mut m, ExecutionProvider::Cpu).unchanged());
        // A bias Add alone (constant operand) is not a residual.
        let mut m = residual_graph(true, false);
        let ln = m.graph_mut().node.iter_mut().find(|n| n.op_type() == "LayerNormalization").unwrap();
        ln.input[0] = "mb".into();
        assert!(run(&mut m, ExecutionProvider::Cpu).unchanged());
    }

    /// (model, SkipLayerNormalization nodes): per transformer of two layers, norm2 and norm3 of both layers
    /// and norm1 of the second (the first reads proj_in); tiny-sdxl has four such transformers.
    const TINY: [(&str, usize); 2] = [("tiny-sdxl/unet", 20), ("tiny-sdxl-dynamo/unet", 20)];

    #[test]
    fn tiny_sdxl_unets_after_cleanup() {
        for (k, (name, expected)) in TINY.iter().enumerate() {
            let mut before = OnnxModel::load(tiny(name)).unwrap();
            PassManager::new().with(Cleanup).run(&mut before, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
            let lns = count(&before, "LayerNormalization");
            let mut after = before.clone();
            let r = run(&mut after, ExecutionProvider::Cpu);
            let fused = count(&after, "SkipLayerNormalization");
            let with_bias = after
                .graph()
                .node
                .iter()
                .filter(|n| n.op_type() == "SkipLayerNormalization" && n.input.len() == 5)
                .count();
            let with_sum = after
                .graph()
                .node
                .iter()
                .filter(|n| n.op_type() == "SkipLayerNormalization" && n.output.len() == 4)
                .count();
            let err = compare_small(&before, &after, 90 + k as u64);
            eprintln!(
                "{name}: {lns} LayerNormalization -> {fused} SkipLayerNormalization ({with_bias} with bias, {with_sum} \
                 with the sum read), {} -> {} nodes, {} rounds, relative L2 {err:.2e}",
                r.nodes_before, r.nodes_after, r.rounds
            );
            assert_eq!(fused, *expected, "{name}");
            assert_eq!(count(&after, "LayerNormalization"), lns - expected, "{name}");
            assert!(err <= 1e-5, "{name}: relative L2 {err:.2e}");
            let fused_proto = after.proto().clone();
            assert!(run(&mut after, ExecutionProvider::Cpu).unchanged(), "{name}: not idempotent");
            assert_eq!(after.proto(), &fused_proto);
            let mut ov = before.clone();
            assert!(run(&mut ov, ExecutionProvider::OpenVino).unchanged(), "{name}: openvino");
        }
    }

    /// The fused graphs convert to float16 (the precision pass knows SkipLayerNormalization and its empty
    /// optional outputs) and still match the unrewritten float32 graph.
    #[test]
    fn tiny_sdxl_unet_in_fp16_after_fusion() {
        use std::collections::BTreeSet;

        use crate::passes::{OpPolicy, PrecisionPass};
        use crate::settings::Precision;
        let full = PrecisionPass {
            ops: OpPolicy::Block(BTreeSet::new()),
            ..PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cpu)
        };
        for (k, (name, _)) in TINY.iter().enumerate() {
            let mut before = OnnxModel::load(tiny(name)).unwrap();
            PassManager::new().with(Cleanup).run(&mut before, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
            for pass in [full.clone(), PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cpu)] {
                let mut after = before.clone();
                PassManager::new()
                    .with(SkipLayerNorm)
                    .with(pass)
                    .run(&mut after, &PassContext::new(ExecutionProvider::Cpu))
                    .unwrap();
                let err = compare_small(&before, &after, 120 + k as u64);
                eprintln!("{name}: skip-layer-norm + fp16: relative L2 {err:.2e}");
                assert!(err <= 1e-2, "{name}: fp16 relative L2 {err:.2e}");
            }
        }
    }

    #[test]
    fn options() {
        let ctx = BuildContext::new(ExecutionProvider::Cpu, crate::settings::Precision::Fp32);
        assert!(crate::passes::options::build_from_str::<SkipLayerNorm>("", &ctx).is_ok());
        assert!(crate::passes::options::build_from_str::<SkipLayerNorm>("bias = true", &ctx).is_err());
    }
}
