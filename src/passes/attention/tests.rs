//! The pass against the unrewritten graph on the tiny models and on small graphs of each form.

use super::*;
use crate::manifest::PassRecord;
use crate::onnx::ModelProto;
use crate::onnx::infer::Inference;
use crate::onnx::{GraphIndex, NodeBuilder, NodeProto, OnnxModel, attr_float, attr_int, dtype, make_tensor_value_info};
use crate::passes::testing::count;
use crate::passes::testing::{Sizes, tiny};
use crate::passes::{BuildContext, PassContext};
use crate::passes::{Cleanup, PassManager};
use ndarray::{ArrayD, IxDyn};

/// Runs both models on the same random inputs in ONNX Runtime (CPU); the worst relative L2.
fn compare(before: &OnnxModel, after: &OnnxModel, seed: u64) -> f64 {
    crate::passes::testing::compare(before, after, seed, Sizes { batch: 2, spatial: 8, other: 77 })
}

fn run(model: &mut OnnxModel, pass: Attention, target: ExecutionProvider) -> PassRecord {
    PassManager::new().with(pass).run(model, &PassContext::new(target)).unwrap().remove(0)
}

fn cleaned(name: &str) -> OnnxModel {
    let mut m = OnnxModel::load(tiny(name)).unwrap();
    PassManager::new().with(Cleanup).run(&mut m, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
    m
}

/// Fuses `name` (after cleanup unless `raw`) with `op`, checks counts, idempotence and numbers.
fn check(name: &str, raw: bool, op: FusedOp, target: ExecutionProvider, blocks: usize, seed: u64) -> f64 {
    let before = if raw { OnnxModel::load(tiny(name)).unwrap() } else { cleaned(name) };
    let anchors = count(&before, "Softmax") + count(&before, "Attention");
    assert_eq!(anchors, blocks, "{name}: attention blocks in the export");
    let mut after = before.clone();
    let r = run(&mut after, Attention::new(op), target);
    let emitted = if before.opset("").unwrap_or(0) >= 23 { op } else { FusedOp::MultiHeadAttention };
    assert_eq!(r.rewrites, blocks, "{name}: {r:?}");
    assert_eq!(count(&after, emitted.name()), blocks, "{name}");
    assert_eq!(count(&after, "Softmax"), 0, "{name}");
    if emitted == FusedOp::MultiHeadAttention {
        assert_eq!(count(&after, "Attention"), 0, "{name}");
    }
    assert!(r.nodes_after < r.nodes_before, "{name}: {r:?}");
    // Later passes see the fused outputs' shapes.
    let index = GraphIndex::new(&after);
    let facts = Inference::run(&index);
    for n in after.graph().node.iter().filter(|n| n.op_type() == emitted.name()) {
        let shape = facts.shape(&n.output[0]).unwrap_or_else(|| panic!("{name}: no shape for {}", n.output[0]));
        assert_eq!(shape.len(), 3, "{name}");
        assert!(shape[2].is_some(), "{name}");
    }
    let again = run(&mut after, Attention::new(op), target);
    assert!(again.unchanged(), "{name}: second run changed {again:?}");
    let err = compare(&before, &after, seed);
    eprintln!(
        "{name} (raw: {raw}, op {}): {blocks} blocks -> {} {}, {} -> {} nodes, relative L2 {err:.1e}",
        op.name(),
        count(&after, emitted.name()),
        emitted.name(),
        r.nodes_before,
        r.nodes_after
    );
    assert!(err <= 1e-5, "{name}: relative L2 {err:.2e}");
    err
}

/// Attention blocks per model: UNet self + cross per transformer block, one in the VAE mid-block,
/// one per CLIP layer.
const TINY: [(&str, usize); 14] = [
    ("tiny-sd/unet", 8),
    ("tiny-sd/vae_decoder", 1),
    ("tiny-sd/text_encoder", 2),
    ("tiny-sdxl/unet", 16),
    ("tiny-sdxl/vae_decoder", 1),
    ("tiny-sdxl/text_encoder", 2),
    ("tiny-sdxl/text_encoder_2", 2),
    ("tiny-sd-dynamo/unet", 8),
    ("tiny-sd-dynamo/vae_decoder", 1),
    ("tiny-sd-dynamo/text_encoder", 2),
    ("tiny-sdxl-dynamo/unet", 16),
    ("tiny-sdxl-dynamo/vae_decoder", 1),
    ("tiny-sdxl-dynamo/text_encoder", 2),
    ("tiny-sdxl-dynamo/text_encoder_2", 2),
];

#[test]
fn fuses_every_tiny_model_into_multi_head_attention() {
    for (k, (name, blocks)) in TINY.iter().enumerate() {
        check(name, false, FusedOp::MultiHeadAttention, ExecutionProvider::Cpu, *blocks, 100 + k as u64);
    }
}

#[test]
fn fuses_the_dynamo_models_into_onnx_attention() {
    for (k, (name, blocks)) in TINY.iter().enumerate().filter(|(_, (n, _))| n.contains("dynamo")) {
        check(name, false, FusedOp::Attention, ExecutionProvider::Cpu, *blocks, 200 + k as u64);
        // Every emitted Attention is the 3-D form with the heads given.
        let mut m = cleaned(name);
        run(&mut m, Attention::new(FusedOp::Attention), ExecutionProvider::TensorRt);
        assert!(m.graph().node.iter().filter(|n| n.op_type() == "Attention").all(|n| {
            attr_int(n, "q_num_heads").is_some() && attr_int(n, "kv_num_heads") == attr_int(n, "q_num_heads")
        }));
    }
}

/// On an opset-17 export, `op = "Attention"` falls back to MultiHeadAttention for cpu and cuda and
/// leaves the graph alone for tensorrt and openvino.
#[test]
fn opset_17_with_onnx_attention_falls_back() {
    check("tiny-sd/text_encoder", false, FusedOp::Attention, ExecutionProvider::Cpu, 2, 300);
    let mut m = cleaned("tiny-sd/unet");
    let r = run(&mut m, Attention::new(FusedOp::Attention), ExecutionProvider::TensorRt);
    assert!(r.unchanged());
    assert_eq!(m.opset(""), Some(17));
}

/// Without cleanup the TorchScript scale is the run-time chain `Shape─Slice─Cast─Sqrt─Div─Cast─Sqrt`
/// and the graph still holds Constant nodes, no-op Casts and Div-by-1s: everything still fuses.
#[test]
fn fuses_the_raw_torchscript_export() {
    check("tiny-sd/unet", true, FusedOp::MultiHeadAttention, ExecutionProvider::Cpu, 8, 400);
    check("tiny-sd/vae_decoder", true, FusedOp::MultiHeadAttention, ExecutionProvider::Cpu, 1, 401);
    check("tiny-sd/text_encoder", true, FusedOp::MultiHeadAttention, ExecutionProvider::Cpu, 2, 402);
}

#[test]
fn the_causal_text_encoder_becomes_unidirectional() {
    for name in ["tiny-sd/text_encoder", "tiny-sd-dynamo/text_encoder"] {
        let mut m = cleaned(name);
        run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
        let fused: Vec<&NodeProto> = m.graph().node.iter().filter(|n| n.op_type() == "MultiHeadAttention").collect();
        assert_eq!(fused.len(), 2);
        assert!(fused.iter().all(|n| attr_int(n, "unidirectional") == Some(1) && n.domain() == "com.microsoft"));
        assert!(m.opset("com.microsoft").is_some());
        // Causal masks are gone with the blocks.
        assert_eq!(count(&m, "Trilu") + count(&m, "LessOrEqual"), 0, "{name}");
    }
    let mut unet = cleaned("tiny-sd/unet");
    run(&mut unet, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
    assert!(unet.graph().node.iter().all(|n| attr_int(n, "unidirectional").is_none()));
}

#[test]
fn reads_the_op_from_the_profile_options() {
    let from_options = |s: &str, t| {
        let ctx = BuildContext::new(t, crate::settings::Precision::Fp32);
        crate::passes::options::build_from_str::<Attention>(s, &ctx)
    };
    assert_eq!(from_options("", ExecutionProvider::Cpu).unwrap().op(), FusedOp::MultiHeadAttention);
    assert_eq!(from_options("", ExecutionProvider::Cuda).unwrap().op(), FusedOp::MultiHeadAttention);
    assert_eq!(from_options("", ExecutionProvider::TensorRt).unwrap().op(), FusedOp::Attention);
    assert_eq!(from_options("", ExecutionProvider::OpenVino).unwrap().op(), FusedOp::Attention);
    let op = |s: &str, t| from_options(s, t).map(|a| a.op());
    assert_eq!(op("op = \"Attention\"", ExecutionProvider::Cpu).unwrap(), FusedOp::Attention);
    assert_eq!(op("op = \"MultiHeadAttention\"", ExecutionProvider::OpenVino).unwrap(), FusedOp::MultiHeadAttention);
    let err = op("op = \"FlashAttention\"", ExecutionProvider::Cpu).unwrap_err().to_string();
    assert!(err.contains("FlashAttention") && err.contains("MultiHeadAttention"), "{err}");
    assert!(op("op = 3", ExecutionProvider::Cpu).is_err());
    let err = op("opp = \"Attention\"", ExecutionProvider::Cpu).unwrap_err().to_string();
    assert!(err.contains("opp"), "{err}");
}

fn model(nodes: Vec<NodeProto>, inputs: &[(&str, Vec<Option<i64>>)], opset: i64) -> OnnxModel {
    let mut m = ModelProto::new();
    m.set_ir_version(8);
    m.opset_import.push(crate::onnx::make_opset("", opset));
    let g = m.graph.mut_or_insert_default();
    g.node = nodes;
    for (name, shape) in inputs {
        g.input.push(make_tensor_value_info(name, dtype::FLOAT, Some(shape)));
    }
    g.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
    OnnxModel::from_proto(m, None)
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeBuilder {
    NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs(outputs.iter().copied())
}

fn constant(out: &str, values: &[i64]) -> NodeProto {
    let t = crate::onnx::tensor::tensor_from_i64(
        "",
        &ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap(),
    );
    node("Constant", &[], &[out]).attr_tensor("value", t).build()
}

fn constant_f32(out: &str, v: f32) -> NodeProto {
    let t = crate::onnx::tensor::tensor_from_f32("", &ArrayD::from_elem(IxDyn(&[]), v));
    node("Constant", &[], &[out]).attr_tensor("value", t).build()
}

/// A hand-built decomposed attention over q, k, v of [2, 5, 8] (2 heads of 4), with `mask` added to
/// the scores when given; with `self_attention`, q, k and v are one input `x`.
fn decomposed(mask: Option<Vec<NodeProto>>, self_attention: bool) -> OnnxModel {
    let [q, k, v] = if self_attention { ["x"; 3] } else { ["q", "k", "v"] };
    let mut nodes = vec![
        constant("split", &[2, 5, 2, 4]),
        constant("merge", &[2, 5, 8]),
        constant_f32("s", 0.5),
        node("Reshape", &[q, "split"], &["q4"]).build(),
        node("Transpose", &["q4"], &["qt"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
        node("Reshape", &[k, "split"], &["k4"]).build(),
        node("Transpose", &["k4"], &["kt"]).attr_ints("perm", &[0, 2, 3, 1]).build(),
        node("Reshape", &[v, "split"], &["v4"]).build(),
        node("Transpose", &["v4"], &["vt"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
        node("MatMul", &["qt", "kt"], &["raw"]).build(),
        node("Mul", &["raw", "s"], &["scores"]).build(),
    ];
    let probs_in = match mask {
        Some(m) => {
            nodes.extend(m);
            nodes.push(node("Add", &["scores", "mask"], &["masked"]).build());
            "masked"
        }
        None => "scores",
    };
    nodes.extend([
        node("Softmax", &[probs_in], &["p"]).attr_int("axis", -1).build(),
        node("MatMul", &["p", "vt"], &["o"]).build(),
        node("Transpose", &["o"], &["ot"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
        node("Reshape", &["ot", "merge"], &["y"]).build(),
    ]);
    let shape = vec![Some(2), Some(5), Some(8)];
    if self_attention {
        model(nodes, &[("x", shape)], 17)
    } else {
        model(nodes, &[("q", shape.clone()), ("k", shape.clone()), ("v", shape)], 17)
    }
}

#[test]
fn fuses_a_hand_built_block_with_static_shapes() {
    let before = decomposed(None, false);
    let mut after = before.clone();
    let r = run(&mut after, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
    assert_eq!(r.rewrites, 1);
    let ops: Vec<&str> = after.graph().node.iter().map(|n| n.op_type()).collect();
    assert_eq!(ops, ["MultiHeadAttention"]);
    let n = &after.graph().node[0];
    assert_eq!(n.input, ["q", "k", "v"]);
    assert_eq!(attr_int(n, "num_heads"), Some(2));
    assert_eq!(attr_float(n, "scale"), Some(0.5));
    assert!(compare(&before, &after, 7) <= 1e-6);
}

/// A mask that is not causal (here: an arbitrary input) is not fused.
#[test]
fn leaves_other_masks_alone() {
    let mut m = decomposed(Some(vec![node("Identity", &["bias"], &["mask"]).build()]), true);
    m.graph_mut().input.push(make_tensor_value_info("bias", dtype::FLOAT, Some(&[Some(5), Some(5)])));
    let r = run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
    assert!(r.unchanged());
}

/// diffusers' key padding bias, `(1 - m) * -10000` over `[b, t]` unsqueezed to `[b, 1, 1, t]` (and
/// scaled by 2 after it is added), over cross-attention; `tile` repeats the unsqueezed mask first.
fn padded(m_rows: i64, tile: Option<&[i64]>) -> OnnxModel {
    let mut mask = vec![
        constant_f32("one", 1.0),
        constant_f32("neg", -10000.0),
        constant("axes", &[1, 2]),
        node("Sub", &["one", "m"], &["inv"]).build(),
        node("Mul", &["inv", "neg"], &["bias2"]).build(),
        node("Unsqueeze", &["bias2", "axes"], &["bias4"]).build(),
    ];
    let last = match tile {
        Some(reps) => {
            mask.push(constant("reps", reps));
            mask.push(node("Tile", &["bias4", "reps"], &["tiled"]).build());
            "tiled"
        }
        None => "bias4",
    };
    mask.push(node("Identity", &[last], &["mask"]).build());
    let mut m = decomposed(Some(mask), false);
    // Scaled after the mask: the filter value scales too.
    let g = m.graph_mut();
    let add = g.node.iter().position(|n| n.op_type() == "Add").unwrap();
    g.node[add].output[0] = "masked0".into();
    g.node.insert(add + 1, constant_f32("two", 2.0));
    g.node.insert(add + 2, node("Mul", &["masked0", "two"], &["masked"]).build());
    g.input.push(make_tensor_value_info("m", dtype::FLOAT, Some(&[Some(m_rows), Some(5)])));
    m
}

#[test]
fn a_key_padding_mask_becomes_key_padding_mask() {
    let mut m = padded(2, None);
    let r = run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
    assert_eq!(r.rewrites, 1, "{r:?}");
    let mha = m.graph().node.iter().find(|n| n.op_type() == "MultiHeadAttention").unwrap();
    assert_eq!(mha.input[..4], ["q", "k", "v", ""]);
    let cast = m.graph().node.iter().find(|n| n.output.first() == Some(&mha.input[4])).unwrap();
    assert_eq!((cast.op_type(), cast.input[0].as_str()), ("Cast", "m"));
    assert_eq!(attr_int(cast, "to"), Some(i64::from(dtype::INT32)));
    assert_eq!(attr_float(mha, "mask_filter_value"), Some(-20000.0));
    assert_eq!(attr_float(mha, "scale"), Some(1.0));
    // With ONNX Attention as the target the block stays (the mask would need a [b, h, s, t] bias).
    let mut m = padded(2, None);
    m.proto_mut().opset_import[0].set_version(23);
    assert!(run(&mut m, Attention::new(FusedOp::Attention), ExecutionProvider::Cpu).unchanged());
}

/// A mask repeated over the batch axis is not a per-row key padding mask: left alone.
#[test]
fn a_mask_repeated_over_the_batch_is_left_alone() {
    let mut m = padded(1, Some(&[2, 1, 1, 1]));
    assert!(run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu).unchanged());
    let mut m = padded(2, Some(&[1, 2, 1, 1]));
    assert_eq!(run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu).rewrites, 1);
}

/// An upper-triangular (anti-causal) mask is not taken for a causal one.
#[test]
fn leaves_an_upper_triangular_mask_alone() {
    let mask = vec![
        constant("mshape", &[5, 5]),
        constant_f32("one", 1.0),
        constant_f32("zero", 0.0),
        constant_f32("neg", f32::NEG_INFINITY),
        node("Expand", &["one", "mshape"], &["ones"]).build(),
        node("Trilu", &["ones"], &["tri"]).attr_int("upper", 1).build(),
        node("Equal", &["tri", "zero"], &["eq"]).build(),
        node("Where", &["eq", "neg", "zero"], &["mask"]).build(),
    ];
    let mut m = decomposed(Some(mask.clone()), true);
    assert!(run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu).unchanged());
    // The same with upper = 0 is causal: fused, and the numbers agree.
    let causal: Vec<NodeProto> =
        mask.into_iter()
            .map(|n| {
                if n.op_type() == "Trilu" { node("Trilu", &["ones"], &["tri"]).attr_int("upper", 0).build() } else { n }
            })
            .collect();
    let before = decomposed(Some(causal.clone()), true);
    let mut after = before.clone();
    let r = run(&mut after, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
    assert_eq!(r.rewrites, 1);
    assert!(compare(&before, &after, 8) <= 1e-6);
    // A causal mask between different q and k sources (cross-attention) is not fused.
    let mut cross = decomposed(Some(causal), false);
    assert!(run(&mut cross, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu).unchanged());
}

/// Native ONNX `Attention` built by hand, self-attention over x [2, 5, 8] with `is_causal = 1`: the
/// 3-D form (2 heads) and the 4-D form behind Reshape/Transpose head splits.
fn native(four_d: bool) -> OnnxModel {
    let nodes = if four_d {
        vec![
            constant("split", &[0, -1, 2, 4]),
            constant("merge", &[0, 0, 8]),
            node("Reshape", &["x", "split"], &["x4"]).build(),
            node("Transpose", &["x4"], &["xt"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
            node("Attention", &["xt", "xt", "xt"], &["o"]).attr_int("is_causal", 1).attr_float("scale", 0.3).build(),
            node("Transpose", &["o"], &["ot"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
            node("Reshape", &["ot", "merge"], &["y"]).build(),
        ]
    } else {
        vec![
            node("Attention", &["x", "x", "x"], &["y"])
                .attr_int("is_causal", 1)
                .attr_int("q_num_heads", 2)
                .attr_int("kv_num_heads", 2)
                .build(),
        ]
    };
    model(nodes, &[("x", vec![None, None, Some(8)])], 23)
}

#[test]
fn fuses_hand_built_native_attention() {
    for four_d in [false, true] {
        for op in [FusedOp::MultiHeadAttention, FusedOp::Attention] {
            let before = native(four_d);
            let mut after = before.clone();
            let r = run(&mut after, Attention::new(op), ExecutionProvider::Cpu);
            if !four_d && op == FusedOp::Attention {
                assert!(r.unchanged(), "a 3-D Attention is already the fused form");
                continue;
            }
            assert_eq!(r.rewrites, 1);
            let ops: Vec<&str> = after.graph().node.iter().map(|n| n.op_type()).collect();
            assert_eq!(ops, [op.name()]);
            let n = &after.graph().node[0];
            let causal = if op == FusedOp::Attention { "is_causal" } else { "unidirectional" };
            assert_eq!(attr_int(n, causal), Some(1));
            let scale = if four_d { 0.3 } else { 0.5 };
            assert_eq!(attr_float(n, "scale"), Some(scale));
            let err = compare(&before, &after, 9);
            assert!(err <= 1e-6, "4-D: {four_d}, {}: {err:.2e}", op.name());
        }
    }
}

/// Broken or partial graphs are skipped, never a panic.
#[test]
fn skips_malformed_graphs() {
    let cases = vec![
        vec![node("Softmax", &["x"], &["y"]).build()],
        vec![node("Softmax", &[], &["y"]).build()],
        vec![node("MatMul", &["x", "x"], &["s"]).build(), node("Softmax", &["s"], &["y"]).build()],
        vec![node("Attention", &["x"], &["y"]).build()],
        vec![
            node("Attention", &["x", "x", "x"], &["y"]).attr_int("q_num_heads", 0).attr_int("kv_num_heads", 0).build(),
        ],
        vec![
            node("Transpose", &["x"], &["t"]).attr_ints("perm", &[9, 9, 9, 9]).build(),
            node("Attention", &["t", "t", "t"], &["y"]).build(),
        ],
        vec![
            node("Reshape", &["x", "x"], &["r"]).build(),
            node("Transpose", &["r"], &["t"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
            node("Attention", &["t", "t", "t"], &["y"]).build(),
        ],
    ];
    for nodes in cases {
        for op in [FusedOp::MultiHeadAttention, FusedOp::Attention] {
            let mut m = model(nodes.clone(), &[("x", vec![None, None, Some(8)])], 23);
            assert!(run(&mut m, Attention::new(op), ExecutionProvider::Cpu).unchanged());
        }
    }
}
