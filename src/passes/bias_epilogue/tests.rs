//! The rewrite against the unrewritten graph on the CPU EP (SkipGroupNorm and BiasAdd lowered back to
//! standard ops by the nhwc-conv tests' lowering).

use ndarray::{ArrayD, IxDyn};

use super::*;
use crate::manifest::PassRecord;
use crate::onnx::{ModelProto, TensorProto, dtype, make_tensor_value_info};
use crate::passes::testing::count;
use crate::passes::testing::lower;
use crate::passes::testing::{Sizes, compare, noise, tiny};
use crate::passes::{Cleanup, GroupNorm, NhwcConv, PassManager};
use crate::settings::{ExecutionProvider, Precision};

const SIZES: Sizes = Sizes { batch: 2, spatial: 8, other: 7 };

fn cuda() -> PassContext {
    PassContext::new(ExecutionProvider::Cuda)
}

fn run_pass(model: &mut OnnxModel) -> PassRecord {
    PassManager::new().with(BiasEpilogue::new(true)).run(model, &cuda()).unwrap().remove(0)
}

fn f32_init(name: &str, dims: &[usize], values: Vec<f32>) -> TensorProto {
    tensor::tensor_from_f32(name, &ArrayD::from_shape_vec(IxDyn(dims), values).unwrap())
}

/// proj_out-like: x [1, 16, C] -MatMul-> +bias -Reshape [1, 4, 4, C]-> + s (`skip` dims) -> y.
fn proj_out(c: usize, skip: [i64; 4]) -> OnnxModel {
    let mut m = ModelProto::new();
    m.set_ir_version(8);
    m.opset_import.push(crate::onnx::make_opset("", 17));
    let g = m.graph.mut_or_insert_default();
    g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[Some(1), Some(16), Some(c as i64)])));
    g.input.push(make_tensor_value_info("s", dtype::FLOAT, Some(&skip.map(Some))));
    g.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
    g.initializer.extend([
        f32_init("w", &[c, c], noise(c * c, 1).iter().map(|v| v * 0.1).collect()),
        f32_init("b", &[c], noise(c, 2)),
        tensor::tensor_from_i64("shape", &Array1::from(vec![1i64, 4, 4, c as i64]).into_dyn()),
    ]);
    g.node.extend([
        NodeBuilder::new("MatMul").inputs(["x", "w"]).outputs(["m"]).build(),
        NodeBuilder::new("Add").inputs(["b", "m"]).outputs(["t"]).build(),
        NodeBuilder::new("Reshape").inputs(["t", "shape"]).outputs(["r"]).build(),
        NodeBuilder::new("Add").inputs(["s", "r"]).outputs(["y"]).build(),
    ]);
    OnnxModel::from_proto(m, None)
}

/// (b) fires at the BiasAdd kernel's widths with a full-shaped residual, with the graph's outputs.
#[test]
fn a_reshaped_projection_and_residual_become_bias_add() {
    for c in BIAS_ADD_CHANNELS {
        let c = c as usize;
        let before = proj_out(c, [1, 4, 4, c as i64]);
        let mut after = before.clone();
        let r = run_pass(&mut after);
        assert_eq!((r.rewrites, r.rounds), (1, 1), "C={c}");
        assert_eq!((count(&after, "BiasAdd"), count(&after, "Add")), (1, 0), "C={c}");
        assert!(run_pass(&mut after).unchanged(), "idempotent");
        let err = compare(&before, &lower(&after), 5, SIZES);
        eprintln!("bias-epilogue BiasAdd C={c}: relative L2 {err:.1e}");
        assert!(err <= 1e-5, "C={c}: relative L2 {err:.2e}");
    }
    // Other widths, a broadcast residual: left alone.
    assert!(run_pass(&mut proj_out(96, [1, 4, 4, 96])).unchanged());
    assert!(run_pass(&mut proj_out(320, [1, 1, 1, 320])).unchanged());
}

/// Off unless the target is cuda and CUDA-only fusions are allowed.
#[test]
fn only_on_cuda_with_cuda_only_fusions() {
    let model = proj_out(320, [1, 4, 4, 320]);
    for (target, allowed, fires) in [
        (ExecutionProvider::Cuda, true, true),
        (ExecutionProvider::Cuda, false, false),
        (ExecutionProvider::Cpu, true, false),
        (ExecutionProvider::TensorRt, true, false),
    ] {
        let mut ctx = BuildContext::new(target, Precision::Fp16);
        ctx.cuda_only_fusions = allowed;
        let pass = crate::passes::options::build_from_str::<BiasEpilogue>("", &ctx).unwrap();
        let r = PassManager::new().with(pass).run(&mut model.clone(), &PassContext::new(target)).unwrap().remove(0);
        assert_eq!(r.rewrites > 0, fires, "{target:?} allowed={allowed}");
    }
}

/// (a) on the tiny UNets: the proj_out bias of the transformers whose residual a SkipGroupNorm took goes
/// into its bias, with the unrewritten graph's outputs once lowered.
#[test]
fn tiny_unets_fold_proj_out_bias_into_skip_group_norm() {
    for name in ["tiny-sdxl/unet", "tiny-sdxl-dynamo/unet", "tiny-sd/unet"] {
        let mut before = OnnxModel::load(tiny(name)).unwrap();
        PassManager::new().with(Cleanup).run(&mut before, &cuda()).unwrap();
        let mut after = before.clone();
        let manager =
            PassManager::new().with(GroupNorm::new(true)).with(NhwcConv::new(true)).with(BiasEpilogue::new(true));
        let records = manager.run(&mut after, &cuda()).unwrap();
        let with_bias = after
            .graph()
            .node
            .iter()
            .filter(|n| n.op_type() == "SkipGroupNorm" && n.input.get(4).is_some_and(|b| !b.is_empty()))
            .count();
        eprintln!("{name}: {:?}; SkipGroupNorm with bias {with_bias}", records.last().unwrap());
        // tiny-sdxl: 4 transformers, 2 of them followed by a resnet (the other 2 by a Concat or the upsampler);
        // tiny-sd's proj_out is a 1x1 conv, whose bias NhwcConv takes.
        let want = if name.starts_with("tiny-sd/") { 0 } else { 2 };
        assert_eq!((records[2].rewrites, with_bias), (want, want), "{name}");
        assert!(run_pass(&mut after).unchanged(), "{name}: idempotent");
        let err = compare(&before, &lower(&after), 8, SIZES);
        eprintln!("{name}: relative L2 {err:.1e}");
        assert!(err <= 1e-5, "{name}: relative L2 {err:.2e}");
    }
}

/// proj_out + residual as a TorchScript export has it after group-norm and nhwc-conv: the residual is the
/// NHWC output of a SkipGroupNorm (from inputs a, b [N, H, W, C], N, H and W dynamic), and the Reshape's
/// target [N, H, W, C] is computed at run time from its shape, `Gather(Shape(r), [0, 3, 1, 2])` as
/// nhwc-conv writes the NCHW `Shape`, then axes 0, 2, 3 and the constant C. The other operand of the
/// residual Add is `r` itself, or with `broadcast` an input [N, 1, 1, C].
fn torchscript_proj_out(c: usize, broadcast: bool) -> OnnxModel {
    let ci = c as i64;
    let mut m = ModelProto::new();
    m.set_ir_version(8);
    m.opset_import.push(crate::onnx::make_opset("", 17));
    m.opset_import.push(crate::onnx::make_opset("com.microsoft", 1));
    let g = m.graph.mut_or_insert_default();
    let nhwc = [None, None, None, Some(ci)];
    g.input.push(make_tensor_value_info("a", dtype::FLOAT, Some(&nhwc)));
    g.input.push(make_tensor_value_info("b", dtype::FLOAT, Some(&nhwc)));
    if broadcast {
        g.input.push(make_tensor_value_info("t", dtype::FLOAT, Some(&[None, Some(1), Some(1), Some(ci)])));
    }
    g.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
    let i64s = |name: &str, v: &[i64]| tensor::tensor_from_i64(name, &Array1::from(v.to_vec()).into_dyn());
    let scalar = |name: &str, v: i64| tensor::tensor_from_i64(name, &ArrayD::from_elem(IxDyn(&[]), v));
    g.initializer.extend([
        f32_init("gamma", &[c], noise(c, 3).iter().map(|v| 1.0 + 0.1 * v).collect()),
        f32_init("beta", &[c], noise(c, 4)),
        f32_init("w", &[c, c], noise(c * c, 1).iter().map(|v| v * 0.1).collect()),
        f32_init("bias", &[c], noise(c, 2)),
        i64s("to_nchw", &[0, 3, 1, 2]),
        scalar("i0", 0),
        scalar("i2", 2),
        scalar("i3", 3),
        i64s("axes", &[0]),
        i64s("inner_dim", &[ci]),
        i64s("tokens", &[0, -1, ci]),
    ]);
    let n = |op: &str, i: &[&str], o: &str| NodeBuilder::new(op).inputs(i.iter().copied()).outputs([o]).build();
    g.node.push(
        NodeBuilder::new("SkipGroupNorm")
            .domain("com.microsoft")
            .inputs(["a", "gamma", "beta", "b"])
            .outputs(["r"])
            .attr_float("epsilon", 1e-5)
            .attr_int("groups", 32)
            .attr_int("activation", 0)
            .attr_int("channels_last", 1)
            .build(),
    );
    g.node.extend([
        n("Shape", &["r"], "shape_nhwc"),
        NodeBuilder::new("Gather").inputs(["shape_nhwc", "to_nchw"]).outputs(["shape"]).attr_int("axis", 0).build(),
        n("Gather", &["shape", "i0"], "batch"),
        n("Gather", &["shape", "i2"], "height"),
        n("Gather", &["shape", "i3"], "width"),
        n("Unsqueeze", &["batch", "axes"], "batch1"),
        n("Unsqueeze", &["height", "axes"], "height1"),
        n("Unsqueeze", &["width", "axes"], "width1"),
        NodeBuilder::new("Concat")
            .inputs(["batch1", "height1", "width1", "inner_dim"])
            .outputs(["target"])
            .attr_int("axis", 0)
            .build(),
        n("Reshape", &["r", "tokens"], "x"),
        n("MatMul", &["x", "w"], "m"),
        n("Add", &["m", "bias"], "p"),
        n("Reshape", &["p", "target"], "q"),
        n("Add", &["q", if broadcast { "t" } else { "r" }], "y"),
    ]);
    OnnxModel::from_proto(m, None)
}

/// (b) on the TorchScript layout at SD's widths: the run-time Reshape target is known to end in C once
/// inference knows SkipGroupNorm's output shape, so BiasAdd goes in where its kernel takes the channels (320,
/// 640, 1280), with the unrewritten graph's outputs (both lowered); not at other widths, nor with a
/// broadcast residual.
#[test]
fn torchscript_reshape_targets_computed_at_run_time_become_bias_add() {
    for c in BIAS_ADD_CHANNELS {
        let c = c as usize;
        let before = torchscript_proj_out(c, false);
        let index = GraphIndex::new(&before);
        let target = Inference::run(&index).facts("target").and_then(|f| f.elems());
        assert_eq!(target, Some(vec![None, None, None, Some(c as i64)]), "C={c}");
        let mut after = before.clone();
        let r = run_pass(&mut after);
        assert_eq!((r.rewrites, r.rounds), (1, 1), "C={c}");
        assert_eq!((count(&after, "BiasAdd"), count(&after, "Add")), (1, 0), "C={c}");
        assert!(run_pass(&mut after).unchanged(), "idempotent");
        let err = compare(&lower(&before), &lower(&after), 6, SIZES);
        eprintln!("bias-epilogue BiasAdd, TorchScript layout, C={c}: relative L2 {err:.1e}");
        assert!(err <= 1e-5, "C={c}: relative L2 {err:.2e}");
    }
    for (c, broadcast) in [(96, false), (384, false), (960, false), (320, true), (1280, true)] {
        let r = run_pass(&mut torchscript_proj_out(c, broadcast));
        assert!(r.unchanged(), "C={c} broadcast={broadcast}: {r:?}");
    }
}
