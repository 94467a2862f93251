//! Bias + GELU: a projection's constant bias Add and the exact GELU after it become one
//! `com.microsoft::BiasGelu` after the MatMul.
//!
//! ```text
//!   x ─MatMul─> m ─Add(b [n])─> y ─GELU─> out
//!
//!   the GELU: Gelu(approximate "none")                  (dynamo, opset >= 20)
//!          or y * 0.5 * (1 + Erf(y / sqrt 2))           (TorchScript; products in any order)
//!
//!   becomes
//!
//!   x ─MatMul─> m ─com.microsoft::BiasGelu(m, b)─> out
//! ```
//!
//! BiasGelu computes `gelu(m + b)` with the Erf form (ONNX Runtime's ContribOperators: input A, 1-D bias B
//! of A's last dimension); it has kernels in the CPU EP (float) and the CUDA EP (float, float16, bfloat16),
//! so the pass emits it for the cpu and cuda targets (for cpu only on float32 values), never for openvino
//! or tensorrt. `m`'s last dimension must be known and equal the bias length (no broadcasting hides
//! behind the Add), and `y` must be read by the GELU alone.
//!
//! Inside a GEGLU the GELU reads a half of the split, not a bias Add, so this pass never takes the GELU the
//! `geglu` pass fuses (run geglu first where both run).
//!
//! Options: none. Idempotent: BiasGelu is not a GELU this pass matches.

use crate::Result;
use crate::onnx::infer::Inference;
use crate::onnx::{GraphIndex, NodeBuilder, OnnxModel, Patch, dtype, make_tensor_value_info};
use crate::passes::pattern::{gelu_ending_in, matmul_bias_add};
use crate::passes::{BuildContext, NoOptions, Pass, PassContext, PassSpec};
use crate::settings::ExecutionProvider;

/// The bias-gelu pass (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct BiasGelu;

impl PassSpec for BiasGelu {
    const NAME: &'static str = "bias-gelu";
    const SUMMARY: &'static str = "MatMul + constant bias Add + exact GELU become MatMul + com.microsoft BiasGelu \
                                   (cpu, cuda)";
    type Options = NoOptions;
    fn build(_: NoOptions, _: &BuildContext) -> Result<Self> {
        Ok(BiasGelu)
    }
}

impl Pass for BiasGelu {
    fn run(&self, model: &OnnxModel, ctx: &PassContext) -> Result<Option<Patch>> {
        if !ctx.target.runs_contrib_ops() {
            return Ok(None);
        }
        // ONNX Runtime's CPU BiasGelu kernel is float32 only; CUDA's takes the half types too.
        let types: &[i32] = match ctx.target {
            ExecutionProvider::Cuda => &[dtype::FLOAT, dtype::FLOAT16, dtype::BFLOAT16],
            _ => &[dtype::FLOAT],
        };
        let index = GraphIndex::new(model);
        let facts = Inference::run(&index);
        let mut patch = Patch::new();
        for (i, node) in index.nodes().iter().enumerate() {
            if node.output.len() != 1 || node.output[0].is_empty() {
                continue;
            }
            let Some(gelu) = gelu_ending_in(&index, &facts, i) else { continue };
            let y = &gelu.input;
            let Some(bias) = matmul_bias_add(&index, &facts, y) else { continue };
            if !facts.dtype(y).is_some_and(|t| types.contains(&t))
                || index.is_graph_output(y)
                || index.consumers(y).iter().any(|c| !gelu.nodes.contains(c))
            {
                continue;
            }
            let mut nodes = gelu.nodes;
            nodes.push(bias.add);
            if nodes.iter().any(|&n| patch.is_removed(n)) {
                continue;
            }
            let out = &node.output[0];
            if index.value_info(out).is_none()
                && let (Some(dt), Some(shape)) = (facts.dtype(y), facts.shape(y))
            {
                patch.set_value_info(make_tensor_value_info(out, dt, Some(shape)));
            }
            for n in nodes {
                patch.remove_node(n);
            }
            patch.add_node(
                NodeBuilder::new("BiasGelu")
                    .domain("com.microsoft")
                    .inputs([bias.x, bias.bias])
                    .outputs([out.clone()])
                    .build(),
            );
            patch.require_opset("com.microsoft", 1);
            patch.count_rewrite();
        }
        Ok((!patch.is_empty()).then_some(patch))
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::*;
    use crate::manifest::PassRecord;
    use crate::onnx::tensor;
    use crate::passes::geglu::tests::{FORMS, gelu_nodes, model};
    use crate::passes::testing::count;
    use crate::passes::testing::{Sizes, compare, noise, tiny};
    use crate::passes::{Cleanup, Geglu, PassManager};

    fn f32_init(name: &str, dims: &[usize], seed: u64, scale: f32) -> crate::onnx::TensorProto {
        let values = noise(dims.iter().product(), seed).into_iter().map(|v| v * scale).collect();
        tensor::tensor_from_f32(name, &ArrayD::from_shape_vec(IxDyn(dims), values).unwrap())
    }

    /// x [b, 6, 64] -> MatMul [64, 256] -> Add bias (either operand order) -> GELU -> MatMul [256, 64] -> out.
    fn mlp(native_gelu: bool, bias_first: bool) -> OnnxModel {
        let mut m = model(if native_gelu { 20 } else { 17 }, 64, 6);
        let g = m.graph.mut_or_insert_default();
        g.initializer.push(f32_init("w1", &[64, 256], 1, 0.25));
        g.initializer.push(f32_init("b1", &[256], 2, 1.0));
        g.initializer.push(f32_init("w2", &[256, 64], 3, 0.1));
        let add = if bias_first { ["b1", "mm"] } else { ["mm", "b1"] };
        g.node.push(NodeBuilder::new("MatMul").inputs(["x", "w1"]).outputs(["mm"]).build());
        g.node.push(NodeBuilder::new("Add").inputs(add).outputs(["y"]).build());
        gelu_nodes(g, crate::passes::geglu::tests::Form { native_gelu, slices: false }, "y", "act", "gelu_");
        g.node.push(NodeBuilder::new("MatMul").inputs(["act", "w2"]).outputs(["out"]).build());
        OnnxModel::from_proto(m, None)
    }

    fn run(model: &mut OnnxModel, target: ExecutionProvider) -> PassRecord {
        PassManager::new().with(BiasGelu).run(model, &PassContext::new(target)).unwrap().remove(0)
    }

    const SIZES: Sizes = Sizes { batch: 2, spatial: 8, other: 6 };

    #[test]
    fn fuses_both_gelu_forms_with_the_same_outputs_on_cpu() {
        for native in [false, true] {
            for bias_first in [false, true] {
                let before = mlp(native, bias_first);
                let mut after = before.clone();
                let r = run(&mut after, ExecutionProvider::Cpu);
                assert_eq!((r.rewrites, r.nodes_after), (1, 3), "native {native}: {r:?}");
                let fused = after.graph().node.iter().find(|n| n.op_type() == "BiasGelu").unwrap();
                assert_eq!(
                    (fused.domain(), fused.input[0].as_str(), fused.input[1].as_str()),
                    ("com.microsoft", "mm", "b1")
                );
                let again = after.proto().clone();
                assert!(run(&mut after, ExecutionProvider::Cpu).unchanged(), "not idempotent");
                assert_eq!(after.proto(), &again);
                let err = compare(&before, &after, 5, SIZES);
                eprintln!("bias-gelu native {native} bias first {bias_first}: relative L2 {err:.2e}");
                assert!(err <= 1e-5, "relative L2 {err:.2e}");
            }
        }
    }

    /// erf by its Taylor series (f64; the arguments here stay well inside |x| < 6).
    fn erf(x: f64) -> f64 {
        if x.abs() > 6.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut k) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs().max(1e-300) {
            k += 1.0;
            term *= -x * x / k;
            sum += term / (2.0 * k + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// ONNX Runtime's CPU fuses the unrewritten graph into BiasGelu itself, so the comparison above is
    /// between equal kernels: check the fused model against gelu(x W1 + b1) W2 computed here in f64.
    #[test]
    fn bias_gelu_on_cpu_matches_an_f64_reference() {
        let mut m = mlp(false, false);
        assert_eq!(run(&mut m, ExecutionProvider::Cpu).rewrites, 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bias_gelu.onnx");
        m.save(&path).unwrap();
        let runtime = crate::runtime::Runtime::new(ExecutionProvider::Cpu, None).unwrap();
        let mut session = runtime.load(&path).unwrap();
        let feeds = crate::passes::testing::feeds(&session, 9, SIZES);
        let crate::runtime::HostTensor::F32(x) = &feeds[0].1 else { panic!("float input") };
        let x = x.clone();
        let got =
            session.run(feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()).unwrap().remove("out").unwrap();
        let f64s = |name: &str| m.initializer_f32(name).unwrap().mapv(f64::from);
        let (w1, b1, w2) = (f64s("w1"), f64s("b1"), f64s("w2"));
        let w1 = w1.into_dimensionality::<ndarray::Ix2>().unwrap();
        let w2 = w2.into_dimensionality::<ndarray::Ix2>().unwrap();
        let b1 = b1.into_dimensionality::<ndarray::Ix1>().unwrap();
        let rows = x.len() / 64;
        let x = x.mapv(f64::from).into_shape_with_order((rows, 64)).unwrap();
        let h = (x.dot(&w1) + &b1).mapv(|v| v * 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2)));
        let want = h.dot(&w2).mapv(|v| v as f32).into_shape_with_order(got.shape()).unwrap().into_dyn();
        let err = crate::passes::testing::relative_l2(&got, &want);
        eprintln!("BiasGelu on the CPU EP against an f64 reference: relative L2 {err:.2e}");
        assert!(err <= 1e-5, "relative L2 {err:.2e}");
    }

    #[test]
    fn targets() {
        for native in [false, true] {
            let mut m = mlp(native, false);
            assert_eq!(run(&mut m, ExecutionProvider::Cuda).rewrites, 1);
            for target in [ExecutionProvider::OpenVino, ExecutionProvider::TensorRt] {
                let mut m = mlp(native, false);
                assert!(run(&mut m, target).unchanged(), "{target}");
            }
        }
    }

    /// y read outside the GELU, a bias that broadcasts, a GELU not after a bias Add: left alone.
    #[test]
    fn skips_what_does_not_match() {
        let mut m = mlp(false, false);
        m.graph_mut().output.push(make_tensor_value_info("y", dtype::FLOAT, None));
        assert!(run(&mut m, ExecutionProvider::Cpu).unchanged());
        let mut m = mlp(true, false);
        let b = m.graph_mut().initializer.iter_mut().find(|t| t.name() == "b1").unwrap();
        *b = f32_init("b1", &[1], 2, 1.0);
        assert!(run(&mut m, ExecutionProvider::Cpu).unchanged());
    }

    /// In a GEGLU the GELU reads a half of the split: bias-gelu leaves it to geglu, before and after it.
    #[test]
    fn leaves_geglu_alone() {
        for form in FORMS {
            let mut m = model(if form.native_gelu { 20 } else { 17 }, 320, 4);
            let g = m.graph.mut_or_insert_default();
            g.initializer.push(f32_init("w", &[320, 2560], 1, 0.1));
            g.initializer.push(f32_init("b", &[2560], 2, 1.0));
            g.initializer.push(tensor::tensor_from_i64("sizes", &ndarray::arr1(&[1280i64, 1280]).into_dyn()));
            g.node.push(NodeBuilder::new("MatMul").inputs(["x", "w"]).outputs(["mm"]).build());
            g.node.push(NodeBuilder::new("Add").inputs(["mm", "b"]).outputs(["y"]).build());
            g.node.push(
                NodeBuilder::new("Split").inputs(["y", "sizes"]).outputs(["h", "gate"]).attr_int("axis", -1).build(),
            );
            gelu_nodes(g, form, "gate", "gl", "gelu_");
            g.node.push(NodeBuilder::new("Mul").inputs(["h", "gl"]).outputs(["out"]).build());
            let mut m = OnnxModel::from_proto(m, None);
            assert!(run(&mut m.clone(), ExecutionProvider::Cuda).unchanged(), "{form:?}");
            let records = PassManager::new()
                .with(Geglu::new(true))
                .with(BiasGelu)
                .run(&mut m, &PassContext::new(ExecutionProvider::Cuda))
                .unwrap();
            assert_eq!((records[0].rewrites, records[1].rewrites), (1, 0), "{form:?}");
        }
    }

    /// The tiny UNets' only GELUs are their GEGLUs: nothing to fuse there.
    #[test]
    fn tiny_unets_have_no_bias_gelu() {
        for name in ["tiny-sdxl/unet", "tiny-sdxl-dynamo/unet"] {
            let mut model = OnnxModel::load(tiny(name)).unwrap();
            PassManager::new().with(Cleanup).run(&mut model, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
            assert!(run(&mut model, ExecutionProvider::Cpu).unchanged(), "{name}");
            assert!(count(&model, "BiasGelu") == 0);
        }
    }
}
