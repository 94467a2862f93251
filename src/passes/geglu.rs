//! GEGLU feed-forward: the projection of diffusers' `GEGLU` (bias, split in two halves, GELU of the second
//! half, product) becomes one `com.microsoft::BiasSplitGelu` after the MatMul.
//!
//! ```text
//!   x ─MatMul(W [k, n])─> m ─Add(b [n])─> y ─┬─ first half  y[..., :n/2] ──────────────────┐
//!                                             └─ second half y[..., n/2:] ─GELU─> g ─ Mul(h, g) ─> out
//!
//!   the halves: Split(y, axis -1, [n/2, n/2])            (dynamo exports)
//!            or Slice(y, 0:n/2, axis -1), Slice(y, n/2:, axis -1)   (TorchScript exports)
//!   the GELU:   Gelu(approximate "none")                 (dynamo, opset >= 20)
//!            or x * 0.5 * (1 + Erf(x / sqrt 2)), the products in any order (TorchScript)
//!
//!   becomes
//!
//!   x ─MatMul(W)─> m ─com.microsoft::BiasSplitGelu(m, b)─> out
//! ```
//!
//! BiasSplitGelu has a CUDA kernel only (ONNX Runtime `contrib_ops/cuda/diffusion/bias_split_gelu.cc`; the
//! CPU EP has none), so the pass emits it only when [`BuildContext::allows_cuda_only_ops`] holds and the
//! target is cuda. The kernel accepts a 3-D input whose last dimension — the projection's width `n`,
//! *before* the split — is 2560, 5120 or 10240 (half widths 1280, 2560, 5120: the SD 1.5 / SDXL
//! feed-forwards of channel widths 320, 640, 1280), float or float16, with a 1-D bias of `n`; other shapes
//! are left alone because the kernel would refuse them at run time.
//!
//! Every node of the pattern except the MatMul must be read only inside the pattern; the bias Add's output
//! may also be read by `Shape`s (the TorchScript exporter computes the slice bounds from it, which
//! `cleanup` folds), and then the Add stays for them. The output's shape is declared (and inferred by
//! src/onnx/infer/contrib.rs).
//!
//! Options: none. Idempotent: the fused form has no GELU left to match.

use crate::Result;
use crate::onnx::infer::Inference;
use crate::onnx::{GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, attr_int, attr_ints};
use crate::onnx::{is_op, make_tensor_value_info};
use crate::passes::pattern::{gelu_ending_in, matmul_bias_add};
use crate::passes::{BuildContext, NoOptions, Pass, PassContext, PassSpec};

/// Projection widths (before the split) the CUDA kernel of BiasSplitGelu accepts.
pub const SUPPORTED_WIDTHS: [i64; 3] = [2560, 5120, 10240];

/// The geglu pass (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Geglu {
    /// From [`BuildContext::allows_cuda_only_ops`]: off, the pass does nothing.
    enabled: bool,
    /// Tests only: fuse whatever width the projection has (the tiny models' widths are not supported).
    any_width: bool,
}

impl Geglu {
    /// The pass, emitting when `enabled` (and the target is cuda).
    pub fn new(enabled: bool) -> Self {
        Geglu { enabled, any_width: false }
    }
}

impl PassSpec for Geglu {
    const NAME: &'static str = "geglu";
    const SUMMARY: &'static str = "GEGLU feed-forward (bias Add, split, GELU, Mul) becomes com.microsoft \
                                   BiasSplitGelu (cuda, with cuda_only_fusions; widths 2560/5120/10240)";
    type Options = NoOptions;
    const CUDA_ONLY: bool = true;
    fn build(_: NoOptions, ctx: &BuildContext) -> Result<Self> {
        Ok(Geglu::new(ctx.allows_cuda_only_ops()))
    }
}

impl Pass for Geglu {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        if !self.enabled {
            return Ok(None);
        }
        Ok(find(model, self.any_width))
    }
}

/// One GEGLU found: the MatMul output, the bias value, the output and every node replaced.
struct Found {
    matmul_out: String,
    bias: String,
    output: String,
    nodes: Vec<usize>,
}

/// The patch fusing every GEGLU of `model` (None when there is none).
fn find(model: &OnnxModel, any_width: bool) -> Option<Patch> {
    let index = GraphIndex::new(model);
    let facts = Inference::run(&index);
    let mut patch = Patch::new();
    for (i, node) in index.nodes().iter().enumerate() {
        let Some(f) = geglu_at(&index, &facts, i, node, any_width) else { continue };
        if f.nodes.iter().any(|&n| patch.is_removed(n)) {
            continue;
        }
        if index.value_info(&f.output).is_none()
            && let (Some(dt), Some(shape)) = (facts.dtype(&f.output), facts.shape(&f.output))
        {
            patch.set_value_info(make_tensor_value_info(&f.output, dt, Some(shape)));
        }
        for &n in &f.nodes {
            patch.remove_node(n);
        }
        patch.add_node(
            NodeBuilder::new("BiasSplitGelu")
                .domain("com.microsoft")
                .inputs([f.matmul_out, f.bias])
                .outputs([f.output])
                .build(),
        );
        patch.require_opset("com.microsoft", 1);
        patch.count_rewrite();
    }
    (!patch.is_empty()).then_some(patch)
}

/// The GEGLU ending in Mul `i`, if it is one.
fn geglu_at(index: &GraphIndex, facts: &Inference, i: usize, node: &NodeProto, any_width: bool) -> Option<Found> {
    if !is_op(node, "Mul") || node.input.len() != 2 || node.output.len() != 1 {
        return None;
    }
    for (h, g) in [(0, 1), (1, 0)] {
        let (h, g) = (&node.input[h], &node.input[g]);
        if h == g || index.single_consumer(h) != Some(i) || index.single_consumer(g) != Some(i) {
            continue;
        }
        let Some(gelu) = gelu_ending_in(index, facts, index.producer(g)?) else { continue };
        let Some((y, split_nodes)) = halves(index, facts, h, &gelu.input) else { continue };
        // The gate is read by the GELU alone.
        if index.is_graph_output(&gelu.input) || index.consumers(&gelu.input).iter().any(|c| !gelu.nodes.contains(c)) {
            continue;
        }
        // y is read by the split alone, or also by `Shape`s (the TorchScript exporter computes the slice
        // bounds from it; cleanup folds them): then the Add stays for them.
        let others: Vec<usize> = index.consumers(&y).iter().copied().filter(|c| !split_nodes.contains(c)).collect();
        if index.is_graph_output(&y) || others.iter().any(|&c| !is_op(index.node(c), "Shape")) {
            continue;
        }
        let Some(bias) = matmul_bias_add(index, facts, &y) else { continue };
        let n = bias.width;
        if facts.shape(&y).map(Vec::len) != Some(3) || (!any_width && !SUPPORTED_WIDTHS.contains(&n)) {
            continue;
        }
        let mut nodes = vec![i];
        if others.is_empty() {
            nodes.push(bias.add);
        }
        nodes.extend(split_nodes);
        nodes.extend(gelu.nodes);
        return Some(Found { matmul_out: bias.x, bias: bias.bias, output: node.output[0].clone(), nodes });
    }
    None
}

/// `h` and `gate` as the first and second half of one value `y` along its last axis: the two outputs of a
/// `Split`, or two `Slice`s of `y`. Returns `y` and the splitting nodes.
fn halves(index: &GraphIndex, facts: &Inference, h: &str, gate: &str) -> Option<(String, Vec<usize>)> {
    let ph = index.producer(h)?;
    let pg = index.producer(gate)?;
    let (nh, ng) = (index.node(ph), index.node(pg));
    let y = nh.input.first()?;
    let shape = facts.shape(y)?;
    let rank = shape.len() as i64;
    let n = (*shape.last()?)?;
    if n <= 0 || n % 2 != 0 {
        return None;
    }
    let last_axis = |a: i64| a == -1 || a == rank - 1;
    if ph == pg && is_op(nh, "Split") {
        if nh.output.len() != 2 || nh.output[0] != h || nh.output[1] != gate {
            return None;
        }
        if !last_axis(attr_int(nh, "axis").unwrap_or(0)) {
            return None;
        }
        let sizes = match nh.input.get(1).filter(|s| !s.is_empty()) {
            Some(s) => Some(facts.value(s)?.ints()?),
            None => attr_ints(nh, "split").map(<[i64]>::to_vec),
        };
        return sizes.is_none_or(|s| s == [n / 2, n / 2]).then(|| (y.clone(), vec![ph]));
    }
    if !is_op(nh, "Slice") || !is_op(ng, "Slice") || ng.input.first() != Some(y) {
        return None;
    }
    let range = |node: &NodeProto| -> Option<(i64, i64)> {
        let get = |k: usize| node.input.get(k).filter(|s| !s.is_empty()).map(|s| facts.value(s).and_then(|c| c.ints()));
        let [start] = get(1)??[..] else { return None };
        let [end] = get(2)??[..] else { return None };
        let [axis] = get(3)??[..] else { return None };
        if !last_axis(axis) || get(4).is_some_and(|s| s != Some(vec![1])) {
            return None;
        }
        let clamp = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
        Some((clamp(start), clamp(end)))
    };
    (range(nh)? == (0, n / 2) && range(ng)? == (n / 2, n)).then(|| (y.clone(), vec![ph, pg]))
}

#[cfg(test)]
pub(crate) mod tests {
    use ndarray::{Array1, ArrayD, IxDyn};

    use super::*;
    use crate::manifest::PassRecord;
    use crate::onnx::dtype;
    use crate::onnx::{ModelProto, tensor};
    use crate::passes::testing::count;
    use crate::passes::testing::{noise, tiny};
    use crate::passes::{Cleanup, PassManager};
    use crate::settings::{ExecutionProvider, Precision};

    /// How the synthetic GEGLU is written.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Form {
        /// Native `Gelu` (opset 20) instead of the Erf formula.
        pub native_gelu: bool,
        /// Two Slices instead of a Split.
        pub slices: bool,
    }

    pub(crate) const FORMS: [Form; 4] = [
        Form { native_gelu: false, slices: false },
        Form { native_gelu: false, slices: true },
        Form { native_gelu: true, slices: false },
        Form { native_gelu: true, slices: true },
    ];

    fn f32_init(name: &str, dims: &[usize], seed: u64, scale: f32) -> crate::onnx::TensorProto {
        let values = noise(dims.iter().product(), seed).into_iter().map(|v| v * scale).collect();
        tensor::tensor_from_f32(name, &ArrayD::from_shape_vec(IxDyn(dims), values).unwrap())
    }

    fn i64_init(name: &str, values: &[i64]) -> crate::onnx::TensorProto {
        tensor::tensor_from_i64(name, &Array1::from(values.to_vec()).into_dyn())
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeBuilder {
        NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs(outputs.iter().copied())
    }

    /// A model with opset `opset`, input x [b, seq, k] and output `out`.
    pub(crate) fn model(opset: i64, k: usize, seq: i64) -> ModelProto {
        let mut m = ModelProto::new();
        m.set_ir_version(9);
        m.opset_import.push(crate::onnx::make_opset("", opset));
        let g = m.graph.mut_or_insert_default();
        g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[None, Some(seq), Some(k as i64)])));
        g.output.push(make_tensor_value_info("out", dtype::FLOAT, None));
        m
    }

    /// Nodes computing the exact GELU of `x` into `out` (names prefixed by `p`), in `form`.
    pub(crate) fn gelu_nodes(g: &mut crate::onnx::GraphProto, form: Form, x: &str, out: &str, p: &str) {
        if form.native_gelu {
            g.node.push(node("Gelu", &[x], &[out]).build());
            return;
        }
        let n = |s: &str| format!("{p}{s}");
        g.initializer
            .push(tensor::tensor_from_f32(&n("sqrt2"), &ArrayD::from_elem(IxDyn(&[]), std::f32::consts::SQRT_2)));
        g.initializer.push(tensor::tensor_from_f32(&n("one"), &ArrayD::from_elem(IxDyn(&[]), 1.0)));
        g.initializer.push(tensor::tensor_from_f32(&n("half"), &ArrayD::from_elem(IxDyn(&[]), 0.5)));
        g.node.extend([
            node("Div", &[x, &n("sqrt2")], &[&n("d")]).build(),
            node("Erf", &[&n("d")], &[&n("e")]).build(),
            node("Add", &[&n("e"), &n("one")], &[&n("t")]).build(),
            node("Mul", &[x, &n("t")], &[&n("xt")]).build(),
            node("Mul", &[&n("xt"), &n("half")], &[out]).build(),
        ]);
    }

    /// x [b, 4, k] -> MatMul [k, n] -> Add bias -> halves -> GELU of the second -> Mul -> out [b, 4, n/2].
    fn geglu_graph(k: usize, n: usize, form: Form) -> OnnxModel {
        let mut m = model(if form.native_gelu { 20 } else { 17 }, k, 4);
        let g = m.graph.mut_or_insert_default();
        g.initializer.push(f32_init("w", &[k, n], 1, 0.1));
        g.initializer.push(f32_init("b", &[n], 2, 1.0));
        g.node.push(node("MatMul", &["x", "w"], &["mm"]).build());
        g.node.push(node("Add", &["mm", "b"], &["y"]).build());
        let half = n as i64 / 2;
        if form.slices {
            g.initializer.push(i64_init("s0", &[0]));
            g.initializer.push(i64_init("e0", &[half]));
            g.initializer.push(i64_init("s1", &[half]));
            g.initializer.push(i64_init("e1", &[i64::MAX]));
            g.initializer.push(i64_init("ax", &[-1]));
            g.node.push(node("Slice", &["y", "s0", "e0", "ax"], &["h"]).build());
            g.node.push(node("Slice", &["y", "s1", "e1", "ax"], &["gate"]).build());
        } else {
            g.initializer.push(i64_init("sizes", &[half, half]));
            g.node.push(node("Split", &["y", "sizes"], &["h", "gate"]).attr_int("axis", -1).build());
        }
        gelu_nodes(g, form, "gate", "g", "gelu_");
        g.node.push(node("Mul", &["h", "g"], &["out"]).build());
        OnnxModel::from_proto(m, None)
    }

    fn run(model: &mut OnnxModel, pass: Geglu, target: ExecutionProvider) -> PassRecord {
        PassManager::new().with(pass).run(model, &PassContext::new(target)).unwrap().remove(0)
    }

    fn forced() -> Geglu {
        Geglu { enabled: true, any_width: true }
    }

    #[test]
    fn fuses_the_supported_widths_in_every_form() {
        for form in FORMS {
            for n in SUPPORTED_WIDTHS {
                let k = n as usize / 8;
                let mut m = geglu_graph(k, n as usize, form);
                let r = run(&mut m, Geglu::new(true), ExecutionProvider::Cuda);
                assert_eq!((r.rewrites, r.nodes_after), (1, 2), "{form:?} {n}: {r:?}");
                let fused = m.graph().node.iter().find(|n| n.op_type() == "BiasSplitGelu").unwrap();
                assert_eq!(
                    (fused.domain(), &fused.input[..], &fused.output[..]),
                    ("com.microsoft", &["mm".to_string(), "b".to_string()][..], &["out".to_string()][..])
                );
                assert_eq!(m.opset("com.microsoft"), Some(1));
                let again = m.proto().clone();
                assert!(run(&mut m, Geglu::new(true), ExecutionProvider::Cuda).unchanged(), "{form:?}: not idempotent");
                assert_eq!(m.proto(), &again);
            }
        }
    }

    #[test]
    fn leaves_other_widths_targets_and_settings_alone() {
        for form in FORMS {
            // A width the kernel does not take (1280 would be the half width of 2560: the check is on n).
            for n in [1280, 2048, 20480] {
                let mut m = geglu_graph(64, n, form);
                assert!(run(&mut m, Geglu::new(true), ExecutionProvider::Cuda).unchanged(), "{form:?} {n}");
            }
            for target in [ExecutionProvider::Cpu, ExecutionProvider::OpenVino, ExecutionProvider::TensorRt] {
                let mut m = geglu_graph(320, 2560, form);
                assert!(run(&mut m, Geglu::new(true), target).unchanged(), "{form:?} {target}");
            }
            let mut m = geglu_graph(320, 2560, form);
            assert!(run(&mut m, Geglu::new(false), ExecutionProvider::Cuda).unchanged());
        }
        // Built from a profile: only cuda with cuda_only_fusions enables it.
        for (target, on, enabled) in [
            (ExecutionProvider::Cuda, true, true),
            (ExecutionProvider::Cuda, false, false),
            (ExecutionProvider::Cpu, true, false),
        ] {
            let mut ctx = BuildContext::new(target, Precision::Fp16);
            ctx.cuda_only_fusions = on;
            let pass = crate::passes::options::build_from_str::<Geglu>("", &ctx).unwrap();
            assert_eq!(pass.enabled, enabled);
        }
        let ctx = BuildContext::new(ExecutionProvider::Cuda, Precision::Fp16);
        assert!(crate::passes::options::build_from_str::<Geglu>("widths = [1]", &ctx).is_err());
    }

    /// Why the op is CUDA-only: ONNX Runtime's CPU EP has no BiasSplitGelu kernel, a session does not load.
    #[test]
    fn the_cpu_ep_has_no_bias_split_gelu() {
        let mut m = geglu_graph(320, 2560, FORMS[0]);
        assert_eq!(run(&mut m, Geglu::new(true), ExecutionProvider::Cuda).rewrites, 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geglu.onnx");
        m.save(&path).unwrap();
        let runtime = crate::runtime::Runtime::new(ExecutionProvider::Cpu, None).unwrap();
        let err = runtime.load(&path).err().expect("no CPU kernel for BiasSplitGelu").to_string();
        eprintln!("BiasSplitGelu on the CPU EP: {err}");
    }

    /// A half read outside the pattern, a split that is not in halves, an approximate GELU: not fused.
    #[test]
    fn skips_what_does_not_match() {
        let form = Form { native_gelu: false, slices: true };
        let mut m = geglu_graph(320, 2560, form);
        m.graph_mut().output.push(make_tensor_value_info("gate", dtype::FLOAT, None));
        assert!(run(&mut m, Geglu::new(true), ExecutionProvider::Cuda).unchanged());
        let mut m = geglu_graph(320, 2560, form);
        let e0 = m.graph_mut().initializer.iter_mut().find(|t| t.name() == "e0").unwrap();
        *e0 = i64_init("e0", &[1000]);
        assert!(run(&mut m, Geglu::new(true), ExecutionProvider::Cuda).unchanged());
        let mut m = geglu_graph(320, 2560, Form { native_gelu: true, slices: false });
        let gelu = m.graph_mut().node.iter_mut().find(|n| n.op_type() == "Gelu").unwrap();
        gelu.attribute.push(crate::onnx::make_attr_string("approximate", "tanh"));
        assert!(run(&mut m, Geglu::new(true), ExecutionProvider::Cuda).unchanged());
        // The halves swapped (GELU of the first half): not what BiasSplitGelu computes.
        let mut m = geglu_graph(320, 2560, Form { native_gelu: true, slices: false });
        let split = m.graph_mut().node.iter_mut().find(|n| n.op_type() == "Split").unwrap();
        split.output.swap(0, 1);
        assert!(run(&mut m, Geglu::new(true), ExecutionProvider::Cuda).unchanged());
    }

    /// The matcher finds the GEGLU of every transformer block of the tiny SDXL UNets (both exporters), as
    /// exported and after cleanup, when the width limit is lifted.
    #[test]
    fn finds_the_geglus_of_the_tiny_unets() {
        for name in ["tiny-sdxl/unet", "tiny-sdxl-dynamo/unet", "tiny-sd/unet", "tiny-sd-dynamo/unet"] {
            let blocks = if name.starts_with("tiny-sdxl") { 8 } else { 4 };
            let exported = OnnxModel::load(tiny(name)).unwrap();
            let r = run(&mut exported.clone(), forced(), ExecutionProvider::Cuda);
            eprintln!("{name} as exported: {} GEGLUs", r.rewrites);
            assert_eq!(r.rewrites, blocks, "{name} as exported: {r:?}");
            let mut model = exported;
            PassManager::new().with(Cleanup).run(&mut model, &PassContext::new(ExecutionProvider::Cuda)).unwrap();
            // The tiny widths are not ones the kernel takes.
            assert!(run(&mut model.clone(), Geglu::new(true), ExecutionProvider::Cuda).unchanged(), "{name}");
            let r = run(&mut model, forced(), ExecutionProvider::Cuda);
            eprintln!("{name}: {} GEGLUs, {} -> {} nodes", r.rewrites, r.nodes_before, r.nodes_after);
            assert_eq!(r.rewrites, blocks, "{name}: {r:?}");
            assert_eq!(count(&model, "BiasSplitGelu"), blocks);
            assert_eq!(count(&model, "Erf") + count(&model, "Gelu"), 0, "{name}");
            assert!(run(&mut model, forced(), ExecutionProvider::Cuda).unchanged(), "{name}: not idempotent");
        }
    }
}
