//! The rewrite against the unrewritten graph on ONNX Runtime's CPU EP, through a test-only lowering of the
//! CUDA-only ops (`NhwcConv`, channels-last `GroupNorm` / `SkipGroupNorm`) back to standard ops; and its
//! structure on the tiny UNets.

use ndarray::{ArrayD, IxDyn};

use super::*;
use crate::manifest::PassRecord;
use crate::onnx::{ModelProto, TensorProto};
use crate::passes::testing::count;
use crate::passes::testing::{Sizes, compare, lower, noise, tiny};
use crate::passes::{Cleanup, GroupNorm, PassManager};
use crate::settings::{ExecutionProvider, Precision};

const SIZES: Sizes = Sizes { batch: 2, spatial: 8, other: 7 };

fn f32_init(name: &str, dims: &[usize], values: Vec<f32>) -> TensorProto {
    tensor::tensor_from_f32(name, &ArrayD::from_shape_vec(IxDyn(dims), values).unwrap())
}

fn i64_init(name: &str, values: &[i64]) -> TensorProto {
    tensor::tensor_from_i64(name, &Array1::from(values.to_vec()).into_dyn())
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeBuilder {
    NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs(outputs.iter().copied())
}

/// Transposes between NCHW and NHWC next to the channels-last ops or at the graph's edge (the attention's
/// K transposes, perm (0, 2, 3, 1) on [B, S, H, d], are not counted).
fn layout_transposes(model: &OnnxModel) -> usize {
    let index = GraphIndex::new(model);
    let contrib = |n: &NodeProto| n.domain() == "com.microsoft";
    let layout = |n: &&NodeProto| {
        attr_ints(n, "perm").is_some_and(|p| p == TO_NHWC || p == TO_NCHW)
            && (index.producer_node(&n.input[0]).is_none_or(contrib)
                || index.is_graph_output(&n.output[0])
                || index.consumers(&n.output[0]).iter().any(|&c| contrib(index.node(c))))
    };
    model.graph().node.iter().filter(|n| n.op_type() == "Transpose").filter(layout).count()
}

fn cuda() -> PassContext {
    PassContext::new(ExecutionProvider::Cuda)
}

fn run_pass(model: &mut OnnxModel, pass: NhwcConv) -> PassRecord {
    PassManager::new().with(pass).run(model, &cuda()).unwrap().remove(0)
}

/// A small NCHW network of C channels: Conv -> bias Add ([C,1,1] constant) -> SiLU -> Conv, a residual Add,
/// Concat along channels with the input's conv, a nearest Resize (scale 2), a time-embedding-like
/// [N, C, 1, 1] input added, then an output Conv; `extra` Conv nodes are appended as given.
pub(crate) fn net(c: usize, extra: &[NodeProto], extra_inits: Vec<TensorProto>) -> OnnxModel {
    let mut m = ModelProto::new();
    m.set_ir_version(8);
    m.opset_import.push(crate::onnx::make_opset("", 17));
    let g = m.graph.mut_or_insert_default();
    g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[None, Some(4), None, None])));
    g.input.push(make_tensor_value_info("temb", dtype::FLOAT, Some(&[None, Some(c as i64 * 2), Some(1), Some(1)])));
    g.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
    let w = |name: &str, m: usize, cin: usize, k: usize, seed: u64| {
        f32_init(name, &[m, cin, k, k], noise(m * cin * k * k, seed).iter().map(|v| v * 0.3).collect())
    };
    g.initializer.extend([
        w("w_in", c, 4, 3, 1),
        f32_init("b_in", &[c], noise(c, 2)),
        f32_init("bias", &[c, 1, 1], noise(c, 3)),
        w("w_mid", c, c, 3, 4),
        w("w_out", 4, 2 * c, 3, 5),
        f32_init("b_out", &[4], noise(4, 6)),
        f32_init("scales", &[4], vec![1.0, 1.0, 2.0, 2.0]),
    ]);
    g.initializer.extend(extra_inits);
    let conv = |i: &[&str], o: &str| node("Conv", i, &[o]).attr_ints("pads", &[1, 1, 1, 1]).build();
    g.node.extend([
        conv(&["x", "w_in", "b_in"], "h0"),
        node("Add", &["h0", "bias"], &["h1"]).build(),
        node("Sigmoid", &["h1"], &["s1"]).build(),
        node("Mul", &["h1", "s1"], &["h2"]).build(),
        conv(&["h2", "w_mid"], "h3"),
        node("Add", &["h3", "h0"], &["h4"]).build(),
        node("Concat", &["h4", "h0"], &["h5"]).attr_int("axis", 1).build(),
        node("Resize", &["h5", "", "scales"], &["h6"]).attr_string("mode", "nearest").build(),
        node("Add", &["temb", "h6"], &["h7"]).build(),
        conv(&["h7", "w_out", "b_out"], "y"),
    ]);
    g.node.extend(extra.iter().cloned());
    OnnxModel::from_proto(m, None)
}

#[test]
fn permute_bytes_matches_ndarray() {
    let dims = [2usize, 3, 4, 5];
    let a = ArrayD::from_shape_vec(IxDyn(&dims), noise(120, 1)).unwrap();
    let bytes: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
    for perm in [[0usize, 2, 3, 1], [0, 3, 1, 2], [3, 2, 1, 0]] {
        let (out, out_dims) = permute_bytes(&bytes, &dims, &perm, 4);
        let want = a.clone().permuted_axes(IxDyn(&perm));
        assert_eq!(out_dims, want.shape());
        let got: Vec<f32> = out.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(got, want.iter().copied().collect::<Vec<_>>(), "{perm:?}");
    }
}

/// The small network: every conv NhwcConv, one Transpose in and one out (and the time embedding by a
/// Reshape), the same outputs as the unrewritten graph once lowered.
#[test]
fn a_small_network_stays_channels_last_with_the_same_outputs() {
    let before = net(8, &[], vec![]);
    let mut after = before.clone();
    let r = run_pass(&mut after, NhwcConv::new(true));
    assert_eq!(r.rounds, 1, "one patch");
    eprintln!("{:?}", after.op_histogram());
    assert_eq!((count(&after, "NhwcConv"), count(&after, "Conv")), (3, 0));
    assert_eq!(count(&after, "Transpose"), 2, "{:?}", after.graph().node);
    assert_eq!(count(&after, "Reshape"), 1, "the time embedding's [N, C, 1, 1]");
    let concat = after.graph().node.iter().find(|n| n.op_type() == "Concat").unwrap();
    assert_eq!(attr_int(concat, "axis"), Some(3));
    assert!(run_pass(&mut after, NhwcConv::new(true)).unchanged(), "idempotent");
    let err = compare(&before, &lower(&after), 3, SIZES);
    eprintln!("small network: relative L2 {err:.1e}");
    assert!(err <= 1e-5, "relative L2 {err:.2e}");
}

/// The lowering is not the identity: a wrong weight layout in NhwcConv shows in the comparison.
#[test]
fn the_comparison_sees_a_wrong_weight_layout() {
    let before = net(8, &[], vec![]);
    let mut after = before.clone();
    run_pass(&mut after, NhwcConv::new(true));
    // Swap the weight's kh and kw axes of the middle conv (3x3: same shape, other values).
    let conv = after.graph().node.iter().filter(|n| n.op_type() == "NhwcConv").nth(1).unwrap().clone();
    let w = after.initializer(&conv.input[1]).unwrap().clone();
    let dims = tensor::dims(&w).unwrap();
    let bytes = after.tensor_bytes(&w).unwrap();
    let (swapped, _) = permute_bytes(&bytes, &dims, &[0, 2, 1, 3], 4);
    let bad = tensor::tensor_from_raw(w.name(), w.data_type(), &dims, Bytes::from(swapped));
    *after.graph_mut().initializer.iter_mut().find(|t| t.name() == w.name()).unwrap() = bad;
    let err = compare(&before, &lower(&after), 3, SIZES);
    assert!(err > 1e-2, "relative L2 {err:.2e}");
}

/// What the kernel refuses stays a Conv: a grouped conv, a computed weight, auto_pad, a 1-D conv.
#[test]
fn refused_convs_stay() {
    let c = 8;
    let grouped = node("Conv", &["y", "w_g"], &["g_out"]).attr_int("group", 2).attr_ints("pads", &[1, 1, 1, 1]).build();
    let computed = node("Conv", &["y", "w_c"], &["c_out"]).build();
    let neg = node("Neg", &["w_s"], &["w_c"]).build();
    let same = node("Conv", &["y", "w_s"], &["s_out"]).attr_string("auto_pad", "SAME_UPPER").build();
    let flat = node("Reshape", &["y", "flat_shape"], &["y1d"]).build();
    let conv1d = node("Conv", &["y1d", "w_1d"], &["d_out"]).build();
    let inits = vec![
        f32_init("w_g", &[4, 2, 3, 3], noise(72, 11)),
        f32_init("w_s", &[4, 4, 3, 3], noise(144, 12)),
        i64_init("flat_shape", &[0, 4, -1]),
        f32_init("w_1d", &[4, 4, 3], noise(48, 13)),
    ];
    let mut before = net(c, &[grouped, neg, computed, same, flat, conv1d], inits);
    for out in ["g_out", "c_out", "s_out", "d_out"] {
        before.graph_mut().output.push(make_tensor_value_info(out, dtype::FLOAT, None));
    }
    let index = GraphIndex::new(&before);
    let why: Vec<Option<&str>> =
        before.graph().node.iter().filter(|n| n.op_type() == "Conv").map(|n| refusal(&index, n)).collect();
    assert_eq!(
        why,
        [
            None,
            None,
            None,
            Some("grouped convolution"),
            Some("weight not a constant initializer"),
            Some("auto_pad"),
            Some("not a 2-D convolution")
        ]
    );
    let mut after = before.clone();
    run_pass(&mut after, NhwcConv::new(true));
    assert_eq!((count(&after, "NhwcConv"), count(&after, "Conv")), (3, 4));
    // y is read in NCHW by the refused convs and the graph output: one Transpose back, shared.
    assert_eq!(count(&after, "Transpose"), 2, "{:?}", after.graph().node);
    let err = compare(&before, &lower(&after), 4, SIZES);
    assert!(err <= 1e-5, "relative L2 {err:.2e}");
}

/// Off unless the target is cuda, CUDA-only fusions are allowed and the option leaves it on.
#[test]
fn only_on_cuda_with_cuda_only_fusions() {
    let model = net(8, &[], vec![]);
    for (target, allowed, options, fires) in [
        (ExecutionProvider::Cuda, true, "", true),
        (ExecutionProvider::Cuda, true, "enabled = false", false),
        (ExecutionProvider::Cuda, false, "", false),
        (ExecutionProvider::Cpu, true, "", false),
        (ExecutionProvider::TensorRt, true, "", false),
        (ExecutionProvider::OpenVino, true, "", false),
    ] {
        let mut ctx = BuildContext::new(target, Precision::Fp16);
        ctx.cuda_only_fusions = allowed;
        let pass = crate::passes::options::build_from_str::<NhwcConv>(options, &ctx).unwrap();
        let r = PassManager::new().with(pass).run(&mut model.clone(), &PassContext::new(target)).unwrap().remove(0);
        assert_eq!(r.rewrites > 0, fires, "{target:?} allowed={allowed} {options}");
    }
    let ctx = BuildContext::new(ExecutionProvider::Cuda, Precision::Fp16);
    assert!(crate::passes::options::build_from_str::<NhwcConv>("enabled = 1", &ctx).is_err());
}

/// The tiny UNets and VAE decoders after cleanup, group-norm and nhwc-conv, lowered, against cleanup alone
/// on the CPU EP; and after nhwc-conv without group-norm. (The VAE decoder's attention reshapes NCHW to
/// tokens as [B, C, HW], so a Transpose back to NCHW stays in front of it.)
#[test]
fn tiny_unets_match_the_unrewritten_graph() {
    for name in [
        "tiny-sdxl/unet",
        "tiny-sdxl-dynamo/unet",
        "tiny-sd/unet",
        "tiny-sdxl/vae_decoder",
        "tiny-sdxl-dynamo/vae_decoder",
    ] {
        let unet = name.ends_with("unet");
        let mut before = OnnxModel::load(tiny(name)).unwrap();
        PassManager::new().with(Cleanup).run(&mut before, &cuda()).unwrap();
        for with_group_norm in [true, false] {
            let mut after = before.clone();
            let mut manager = PassManager::new();
            if with_group_norm {
                manager = manager.with(GroupNorm::new(true));
            }
            let records = manager.with(NhwcConv::new(true)).run(&mut after, &cuda()).unwrap();
            let transposes = layout_transposes(&after);
            eprintln!(
                "{name} group-norm {with_group_norm}: {:?}; NhwcConv {}, Conv {}, Transpose {transposes}",
                records.iter().map(|r| (r.pass.as_str(), r.rewrites, r.rounds)).collect::<Vec<_>>(),
                count(&after, "NhwcConv"),
                count(&after, "Conv")
            );
            assert_eq!(count(&after, "Conv"), 0, "{name}");
            assert_eq!(count(&after, "NhwcConv"), count(&before, "Conv"), "{name}");
            if with_group_norm && unet {
                assert_eq!(layout_transposes(&after), 2, "{name}: only the entry and the exit");
            }
            assert!(run_pass(&mut after, NhwcConv::new(true)).unchanged(), "{name}: idempotent");
            let err = compare(&before, &lower(&after), 21, SIZES);
            eprintln!("{name} group-norm {with_group_norm}: relative L2 {err:.1e}");
            assert!(err <= 1e-5, "{name} group-norm {with_group_norm}: relative L2 {err:.2e}");
        }
    }
}

/// At SD's channel counts (no channel limit in the kernel): every conv of the small network becomes
/// NhwcConv with its weight laid out [M, kH, kW, C], two transposes left.
#[test]
fn real_channel_counts() {
    for c in [320, 640, 1280] {
        let mut model = net(c, &[], vec![]);
        assert_eq!(run_pass(&mut model, NhwcConv::new(true)).rounds, 1);
        assert_eq!((count(&model, "NhwcConv"), count(&model, "Conv"), count(&model, "Transpose")), (3, 0, 2));
        let dims: Vec<Vec<i64>> = model
            .graph()
            .node
            .iter()
            .filter(|n| n.op_type() == "NhwcConv")
            .map(|n| model.initializer(&n.input[1]).unwrap().dims.clone())
            .collect();
        let c = c as i64;
        assert_eq!(dims, [vec![c, 3, 3, 4], vec![c, 3, 3, c], vec![4, 3, 3, 2 * c]]);
    }
}
