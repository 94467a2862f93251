//! BiasAdd: a projection's bias Add followed by a residual Add becomes one `com.microsoft::BiasAdd`
//! (CUDA only).
//!
//! ```text
//!    x ─MatMul(W)─> m [N, S, C] ─Add(bias [C])─> t ─Add(skip [N, S, C])─> y
//!
//!  becomes
//!
//!    m, bias, skip ─ com.microsoft::BiasAdd ─> y          (y = m + bias + skip)
//! ```
//!
//! In a diffusers transformer block this is the feed-forward's last Linear plus the residual,
//! `ff(norm3(h)) + h` (ONNX Runtime's own diffusion optimizer fuses the same Add pair).
//!
//! Kernel constraints (ONNX Runtime `contrib_ops/cuda/diffusion/bias_add.cc` and `bias_add_impl.cu`;
//! the ROCm and WebGPU kernels check the same): the input is 3-D `[N, S, C]` with `C` = 320, 640 or 1280
//! (the kernel has specialisations for these three and refuses any other count), the bias is 1-D `[C]`,
//! the skip has exactly the input's shape (no broadcasting), one type T (float or float16). So here:
//! - the bias Add reads a computed value `m` and a constant 1-D `[C]` of m's type, and only the
//!   residual Add reads its result;
//! - the residual Add's other operand is computed, of the same type (float32 / float16) and shape as
//!   `m`: rank 3, `C` known and supported, every other axis known and equal on both sides or unknown
//!   on both;
//! - a residual sum that a `LayerNormalization` reads is left alone: `skip-layer-norm` folds the bias,
//!   the residual and the norm into one SkipLayerNormalization, which saves more (and so the order of
//!   the two passes in a profile does not matter).
//!
//! Targets: ONNX Runtime has no CPU kernel for BiasAdd, only CUDA (and ROCm, WebGPU). The pass emits it
//! only when the profile allows CUDA-only fusions on the cuda target
//! ([`BuildContext::allows_cuda_only_ops`]) and the conversion's target is cuda; otherwise it does
//! nothing. There is no numerical test here for the same reason (no CPU kernel); the tests check the
//! structure on graphs of real sizes. Not yet run on a GPU.
//!
//! The output `y` gets a value info (the shape and type of `m`), a declared shape for later passes (src/onnx/
//! infer/contrib.rs also infers it).
//!
//! Options: none. Idempotent: a BiasAdd is not matched again, and the Adds it replaced are gone.

use crate::Result;
use crate::onnx::infer::Inference;
use crate::onnx::{GraphIndex, NodeBuilder, OnnxModel, Patch, is_op, make_tensor_value_info};
use crate::passes::pattern::{BIAS_ADD_CHANNELS, bias_add, residual_shape};
use crate::passes::{BuildContext, NoOptions, Pass, PassContext, PassSpec};

/// The bias-add pass (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct BiasAdd {
    /// Whether CUDA-only fusions may be emitted (the profile's `cuda_only_fusions` on the cuda target).
    enabled: bool,
}

impl BiasAdd {
    /// The pass, emitting only when `enabled` (and the target is cuda).
    pub fn new(enabled: bool) -> Self {
        BiasAdd { enabled }
    }
}

impl PassSpec for BiasAdd {
    const NAME: &'static str = "bias-add";
    const SUMMARY: &'static str =
        "bias Add + residual Add with 320/640/1280 channels become BiasAdd (cuda, with cuda_only_fusions)";
    type Options = NoOptions;
    const CUDA_ONLY: bool = true;
    fn build(_: NoOptions, ctx: &BuildContext) -> Result<Self> {
        Ok(BiasAdd::new(ctx.allows_cuda_only_ops()))
    }
}

impl Pass for BiasAdd {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        if !self.enabled {
            return Ok(None);
        }
        let index = GraphIndex::new(model);
        let facts = Inference::run(&index);
        let mut patch = Patch::new();
        for (i, node) in index.nodes().iter().enumerate() {
            if !is_op(node, "Add") || node.input.len() != 2 || node.output.len() != 1 || patch.is_removed(i) {
                continue;
            }
            let y = &node.output[0];
            let norm_reads = index.consumers(y).iter().any(|&c| is_op(index.node(c), "LayerNormalization"));
            if norm_reads {
                continue;
            }
            let found = (0..2).find_map(|k| {
                let (t, skip) = (&node.input[k], &node.input[1 - k]);
                if t == skip || skip.is_empty() || index.const_tensor(skip).is_some() {
                    return None;
                }
                if index.single_consumer(t) != Some(i) {
                    return None;
                }
                let (dt, shape) = residual_shape(&facts, t, skip)?;
                let c = *shape.last()?;
                let c = c.filter(|c| shape.len() == 3 && BIAS_ADD_CHANNELS.contains(c))?;
                let bias = bias_add(&index, t).filter(|b| b.width == c && b.dtype == dt)?;
                (facts.shape(&bias.x) == Some(&shape) && facts.dtype(&bias.x) == Some(dt))
                    .then(|| (bias, skip.clone(), dt, shape))
            });
            let Some((bias, skip, dt, shape)) = found else { continue };
            if patch.is_removed(bias.add) {
                continue;
            }
            if index.value_info(y).is_none() {
                patch.set_value_info(make_tensor_value_info(y, dt, Some(&shape)));
            }
            patch.add_node(
                NodeBuilder::new("BiasAdd")
                    .domain("com.microsoft")
                    .inputs([bias.x, bias.bias, skip])
                    .outputs([y.clone()])
                    .build(),
            );
            patch.require_opset("com.microsoft", 1);
            patch.remove_node(i);
            patch.remove_node(bias.add);
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
    use crate::onnx::{ModelProto, NodeProto, dtype, tensor};
    use crate::passes::PassManager;
    use crate::passes::testing::count;
    use crate::passes::testing::noise;
    use crate::settings::{ExecutionProvider, Precision};

    fn run(model: &mut OnnxModel, pass: BiasAdd, target: ExecutionProvider) -> PassRecord {
        PassManager::new().with(pass).run(model, &PassContext::new(target)).unwrap().remove(0)
    }

    fn built(target: ExecutionProvider, cuda_only_fusions: bool) -> BiasAdd {
        let mut ctx = BuildContext::new(target, Precision::Fp16);
        ctx.cuda_only_fusions = cuda_only_fusions;
        crate::passes::options::build_from_str::<BiasAdd>("", &ctx).unwrap()
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs(outputs.iter().copied()).build()
    }

    /// The feed-forward end of a transformer block at real sizes: h [batch, 64, c], the FF hidden
    /// state u [batch, 64, 4c] ─MatMul(w [4c, c])─Add(b [c])─Add(h)─> y (dtype float32 or float16;
    /// only shapes matter, the weights are small noise).
    fn ff_graph(c: usize, elem: i32, norm_after: bool) -> OnnxModel {
        let mut m = ModelProto::new();
        m.set_ir_version(8);
        m.opset_import.push(crate::onnx::make_opset("", 17));
        let g = m.graph.mut_or_insert_default();
        let ci = c as i64;
        g.input.push(make_tensor_value_info("h", elem, Some(&[None, Some(64), Some(ci)])));
        g.input.push(make_tensor_value_info("u", elem, Some(&[None, Some(64), Some(4 * ci)])));
        g.output.push(make_tensor_value_info("y", elem, None));
        let init = |name: &str, dims: &[usize], seed: u64| {
            let a = ArrayD::from_shape_vec(IxDyn(dims), noise(dims.iter().product(), seed)).unwrap();
            if elem == dtype::FLOAT16 { tensor::tensor_from_f16(name, &a) } else { tensor::tensor_from_f32(name, &a) }
        };
        g.initializer.push(init("w", &[4 * c, c], 1));
        g.initializer.push(init("b", &[c], 2));
        g.node.push(node("MatMul", &["u", "w"], &["m"]));
        g.node.push(node("Add", &["m", "b"], &["t"]));
        g.node.push(node("Add", &["h", "t"], &["r"]));
        if norm_after {
            g.initializer.push(init("gamma", &[c], 3));
            g.node.push(node("LayerNormalization", &["r", "gamma"], &["y"]));
        } else {
            g.node.push(node("Identity", &["r"], &["y"]));
        }
        OnnxModel::from_proto(m, None)
    }

    #[test]
    fn fires_for_every_supported_channel_count() {
        for c in BIAS_ADD_CHANNELS {
            for elem in [dtype::FLOAT, dtype::FLOAT16] {
                let mut m = ff_graph(c as usize, elem, false);
                let r = run(&mut m, built(ExecutionProvider::Cuda, true), ExecutionProvider::Cuda);
                assert_eq!(r.rewrites, 1, "C = {c}");
                assert_eq!((count(&m, "BiasAdd"), count(&m, "Add")), (1, 0), "C = {c}");
                let n = m.graph().node.iter().find(|n| n.op_type() == "BiasAdd").unwrap();
                assert_eq!(n.domain(), "com.microsoft");
                assert_eq!(
                    (&n.input[..], &n.output[..]),
                    (&["m", "b", "h"].map(String::from)[..], &["r".to_string()][..])
                );
                assert!(m.opset("com.microsoft").is_some());
                assert!(
                    run(&mut m, built(ExecutionProvider::Cuda, true), ExecutionProvider::Cuda).unchanged(),
                    "C = {c}: not idempotent"
                );
            }
        }
    }

    #[test]
    fn leaves_unsupported_sizes_targets_and_norms_alone() {
        for c in [16, 768, 2560] {
            let mut m = ff_graph(c, dtype::FLOAT, false);
            assert!(run(&mut m, built(ExecutionProvider::Cuda, true), ExecutionProvider::Cuda).unchanged(), "C = {c}");
        }
        for (target, on) in [
            (ExecutionProvider::Cuda, false),
            (ExecutionProvider::Cpu, true),
            (ExecutionProvider::OpenVino, true),
            (ExecutionProvider::TensorRt, true),
        ] {
            let pass = built(target, on);
            let mut m = ff_graph(320, dtype::FLOAT, false);
            assert!(run(&mut m, pass, target).unchanged(), "{target:?}, cuda_only_fusions {on}");
        }
        // Built for cuda with the fusions on, but run for another target.
        let mut m = ff_graph(320, dtype::FLOAT, false);
        assert!(run(&mut m, built(ExecutionProvider::Cuda, true), ExecutionProvider::Cpu).unchanged());
        // A residual sum a LayerNormalization reads is skip-layer-norm's.
        let mut m = ff_graph(640, dtype::FLOAT, true);
        assert!(run(&mut m, built(ExecutionProvider::Cuda, true), ExecutionProvider::Cuda).unchanged());
        // A broadcasting skip ([1, 64, c] against [?, 64, c]) is not a residual of the input's shape.
        let mut m = ff_graph(1280, dtype::FLOAT, false);
        m.graph_mut().input[0] = make_tensor_value_info("h", dtype::FLOAT, Some(&[Some(1), Some(64), Some(1280)]));
        assert!(run(&mut m, built(ExecutionProvider::Cuda, true), ExecutionProvider::Cuda).unchanged());
        // A bias Add read by something else too.
        let mut m = ff_graph(320, dtype::FLOAT, false);
        m.graph_mut().output.push(make_tensor_value_info("t", dtype::FLOAT, None));
        assert!(run(&mut m, built(ExecutionProvider::Cuda, true), ExecutionProvider::Cuda).unchanged());
    }

    /// After skip-layer-norm, the residual that reads a SkipLayerNormalization's sum output still fuses
    /// (the sum's value info gives its shape): a transformer block's end at C = 320.
    #[test]
    fn fuses_a_residual_of_a_skip_layer_norm_sum() {
        let c = 320usize;
        let mut m = ff_graph(c, dtype::FLOAT, false);
        let g = m.graph_mut();
        let ci = c as i64;
        g.input.push(make_tensor_value_info("a", dtype::FLOAT, Some(&[None, Some(64), Some(ci)])));
        let ones = ArrayD::from_elem(IxDyn(&[c]), 1.0f32);
        g.initializer.push(tensor::tensor_from_f32("gamma", &ones));
        g.initializer.push(tensor::tensor_from_f32("w1", &ArrayD::from_elem(IxDyn(&[c, 4 * c]), 0.01f32)));
        // h = a + a2 is a residual sum that a norm reads (-> SkipLayerNormalization with the sum exposed),
        // and the FF output residual reads h.
        g.input.retain(|v| v.name() != "h" && v.name() != "u");
        g.input.push(make_tensor_value_info("a2", dtype::FLOAT, Some(&[None, Some(64), Some(ci)])));
        g.node.insert(0, node("Add", &["a", "a2"], &["h"]));
        g.node.insert(1, node("LayerNormalization", &["h", "gamma"], &["n"]));
        g.node.insert(2, node("MatMul", &["n", "w1"], &["u"]));
        let ctx = PassContext::new(ExecutionProvider::Cuda);
        let records = PassManager::new()
            .with(crate::passes::SkipLayerNorm)
            .with(built(ExecutionProvider::Cuda, true))
            .run(&mut m, &ctx)
            .unwrap();
        assert_eq!((records[0].rewrites, records[1].rewrites), (1, 1), "{records:?}");
        let sln = m.graph().node.iter().find(|n| n.op_type() == "SkipLayerNormalization").unwrap();
        assert_eq!(sln.output, ["n", "", "", "h"]);
        let bias_add = m.graph().node.iter().find(|n| n.op_type() == "BiasAdd").unwrap();
        assert_eq!(bias_add.input, ["m", "b", "h"]);
    }

    #[test]
    fn options() {
        let ctx = BuildContext::new(ExecutionProvider::Cuda, Precision::Fp16);
        assert!(crate::passes::options::build_from_str::<BiasAdd>("channels = [320]", &ctx).is_err());
        assert!(!built(ExecutionProvider::Cuda, false).enabled && built(ExecutionProvider::Cuda, true).enabled);
        assert!(!built(ExecutionProvider::Cpu, true).enabled);
    }
}
