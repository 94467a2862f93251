//! `onnx::infer`'s contrib and quantization rules, and `Split` (which fuse-qkv emits): the ops the passes
//! emit. Here, beside the passes, because the check needs ONNX Runtime and the passes' lowering. Each rule
//! against its schema (small graphs, the shapes and types of the
//! outputs), and against ONNX Runtime's CPU EP: where it has the kernel, the graph is run as it is; the
//! CUDA-only GroupNorm, SkipGroupNorm, NhwcConv and BiasAdd are run lowered to standard ops (the nhwc-conv
//! tests' lowering, written from the ops' definitions). Either way the outputs are declared with the types
//! inferred here, which ONNX Runtime checks against its own schemas when it loads the graph, and the shapes
//! it returns are compared with the inferred ones.

use ndarray::{ArrayD, IxDyn};

use crate::onnx::infer::{Inference, Shape};
use crate::onnx::{
    GraphIndex, ModelProto, NodeBuilder, NodeProto, OnnxModel, TensorProto, ValueInfoProto, dtype, make_opset,
    make_tensor_value_info, tensor,
};
use crate::passes::testing::lower;
use crate::passes::testing::{Sizes, feeds, noise};
use crate::runtime::Runtime;
use crate::settings::ExecutionProvider;

const MS: &str = "com.microsoft";

/// A shape from sizes, -1 for an unknown one.
fn s(dims: &[i64]) -> Shape {
    dims.iter().map(|&d| (d >= 0).then_some(d)).collect()
}

/// A graph input of type `ty`; `None` dims: rank unknown.
fn input(name: &str, ty: i32, dims: Option<&[i64]>) -> ValueInfoProto {
    let shape = dims.map(s);
    make_tensor_value_info(name, ty, shape.as_deref())
}

fn f32_init(name: &str, dims: &[usize]) -> TensorProto {
    let n = dims.iter().product();
    let values = noise(n, 3).iter().map(|v| v.abs() + 0.01).collect();
    tensor::tensor_from_f32(name, &ArrayD::from_shape_vec(IxDyn(dims), values).unwrap())
}

fn i8_init(name: &str, ty: i32, dims: &[usize]) -> TensorProto {
    let n: usize = dims.iter().product();
    let bytes: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8 / 2).collect();
    tensor::tensor_from_raw(name, ty, dims, bytes::Bytes::from(bytes))
}

fn i64_init(name: &str, values: &[i64]) -> TensorProto {
    tensor::tensor_from_i64(name, &ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap())
}

fn ms(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeBuilder {
    NodeBuilder::new(op).domain(MS).inputs(inputs.iter().copied()).outputs(outputs.iter().copied())
}

fn onnx(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeBuilder {
    NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs(outputs.iter().copied())
}

/// A model of `nodes` whose outputs (every non-empty node output) are graph outputs, undeclared.
fn model(opset: i64, inputs: Vec<ValueInfoProto>, inits: Vec<TensorProto>, nodes: Vec<NodeProto>) -> OnnxModel {
    let mut m = ModelProto::new();
    m.set_ir_version(8);
    m.opset_import.push(make_opset("", opset));
    m.opset_import.push(make_opset(MS, 1));
    let g = m.graph.mut_or_insert_default();
    g.input.extend(inputs);
    g.initializer.extend(inits);
    for n in &nodes {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            let mut v = ValueInfoProto::new();
            v.set_name(o.clone());
            g.output.push(v);
        }
    }
    g.node.extend(nodes);
    OnnxModel::from_proto(m, None)
}

fn infer(model: &OnnxModel) -> Inference {
    Inference::run(&GraphIndex::new(model))
}

/// Shape and type of `value`, each where known.
fn facts(inf: &Inference, value: &str) -> (Option<Shape>, Option<i32>) {
    (inf.shape(value).cloned(), inf.dtype(value))
}

#[test]
fn group_norms_keep_the_input_shape_with_channels_from_gamma() {
    let inits = vec![f32_init("g", &[320]), f32_init("b", &[320])];
    let m = model(
        17,
        vec![
            input("x", dtype::FLOAT, Some(&[2, -1, -1, -1])),
            input("xc", dtype::FLOAT, Some(&[2, -1, 8, 8])),
            input("h", dtype::FLOAT16, Some(&[2, 8, 8, 320])),
            input("skip", dtype::FLOAT16, Some(&[2, 1, 1, 320])),
            input("u", dtype::FLOAT, None),
        ],
        inits,
        vec![
            ms("GroupNorm", &["x", "g", "b"], &["y"]).attr_int("groups", 32).attr_int("channels_last", 1).build(),
            ms("GroupNorm", &["xc", "g", "b"], &["yc"]).attr_int("groups", 32).attr_int("channels_last", 0).build(),
            ms("SkipGroupNorm", &["h", "g", "b", "skip"], &["z", "sum"]).attr_int("groups", 32).build(),
            ms("SkipGroupNorm", &["h", "g", "b", "skip", "g"], &["z1"]).attr_int("groups", 32).build(),
            ms("GroupNorm", &["u", "g", "b"], &["yu"]).attr_int("groups", 32).build(),
        ],
    );
    let f = infer(&m);
    assert_eq!(facts(&f, "y"), (Some(s(&[2, -1, -1, 320])), Some(dtype::FLOAT)));
    assert_eq!(facts(&f, "yc"), (Some(s(&[2, 320, 8, 8])), Some(dtype::FLOAT)));
    // Type T from X (fp16), not M from γ (fp32); the optional sum output like Y.
    for v in ["z", "sum", "z1"] {
        assert_eq!(facts(&f, v), (Some(s(&[2, 8, 8, 320])), Some(dtype::FLOAT16)), "{v}");
    }
    assert_eq!(facts(&f, "yu"), (None, Some(dtype::FLOAT)));
}

#[test]
fn nhwc_conv_is_conv_on_the_nchw_view() {
    let m = model(
        17,
        vec![
            input("x", dtype::FLOAT, Some(&[2, 16, 16, 4])),
            input("d", dtype::FLOAT, Some(&[-1, -1, -1, 4])),
            input("o", dtype::FLOAT16, Some(&[1, 9, 7, 8])),
        ],
        vec![f32_init("w", &[320, 3, 3, 4]), f32_init("b", &[320]), f32_init("w1", &[16, 1, 1, 8])],
        vec![
            ms("NhwcConv", &["x", "w", "b"], &["down"])
                .attr_ints("kernel_shape", &[3, 3])
                .attr_ints("pads", &[1, 1, 1, 1])
                .attr_ints("strides", &[2, 2])
                .build(),
            ms("NhwcConv", &["x", "w"], &["same"])
                .attr_ints("kernel_shape", &[3, 3])
                .attr_ints("pads", &[1, 1, 1, 1])
                .build(),
            ms("NhwcConv", &["x", "w"], &["valid"]).attr_ints("kernel_shape", &[3, 3]).build(),
            ms("NhwcConv", &["d", "w", "b"], &["dynamic"]).attr_ints("pads", &[1, 1, 1, 1]).build(),
            // No kernel_shape attribute: the kernel size is read off the [M, kH, kW, C] weight.
            ms("NhwcConv", &["o", "w1"], &["one"]).build(),
        ],
    );
    let f = infer(&m);
    assert_eq!(facts(&f, "down"), (Some(s(&[2, 8, 8, 320])), Some(dtype::FLOAT)));
    assert_eq!(f.shape("same"), Some(&s(&[2, 16, 16, 320])));
    assert_eq!(f.shape("valid"), Some(&s(&[2, 14, 14, 320])));
    assert_eq!(f.shape("dynamic"), Some(&s(&[-1, -1, -1, 320])));
    assert_eq!(facts(&f, "one"), (Some(s(&[1, 9, 7, 16])), Some(dtype::FLOAT16)));
}

#[test]
fn bias_ops_keep_the_input_shape_and_bias_split_gelu_halves_it() {
    let m = model(
        17,
        vec![
            input("x", dtype::FLOAT, Some(&[2, 64, 320])),
            input("skip", dtype::FLOAT, Some(&[2, -1, -1])),
            input("u", dtype::FLOAT, None),
            input("h", dtype::FLOAT16, Some(&[2, 4096, 2560])),
            input("hd", dtype::FLOAT, Some(&[2, -1, -1])),
            input("flat", dtype::FLOAT, Some(&[128, 2560])),
        ],
        vec![
            f32_init("b320", &[320]),
            f32_init("b640", &[640]),
            f32_init("b2560", &[2560]),
            f32_init("b10240", &[10240]),
        ],
        vec![
            ms("BiasAdd", &["x", "b320", "x"], &["add"]).build(),
            ms("BiasAdd", &["u", "b640", "skip"], &["add_from_skip"]).build(),
            ms("BiasSplitGelu", &["h", "b2560"], &["geglu"]).build(),
            ms("BiasSplitGelu", &["hd", "b10240"], &["geglu_dynamic"]).build(),
            ms("BiasSplitGelu", &["flat", "b2560"], &["geglu_2d"]).build(),
            ms("BiasGelu", &["x", "b320"], &["bias_gelu"]).build(),
            ms("BiasGelu", &["skip", "b640"], &["bias_gelu_dynamic"]).build(),
            ms("FastGelu", &["x"], &["fast"]).build(),
            ms("FastGelu", &["h", "b2560"], &["fast_bias"]).build(),
            ms("QuickGelu", &["hd"], &["quick"]).attr_float("alpha", 1.702).build(),
        ],
    );
    let f = infer(&m);
    assert_eq!(facts(&f, "add"), (Some(s(&[2, 64, 320])), Some(dtype::FLOAT)));
    assert_eq!(f.shape("add_from_skip"), Some(&s(&[2, -1, 640])));
    assert_eq!(facts(&f, "geglu"), (Some(s(&[2, 4096, 1280])), Some(dtype::FLOAT16)));
    assert_eq!(f.shape("geglu_dynamic"), Some(&s(&[2, -1, 5120])));
    // The schema wants (N, S, D).
    assert_eq!(facts(&f, "geglu_2d"), (None, Some(dtype::FLOAT)));
    assert_eq!(f.shape("bias_gelu"), Some(&s(&[2, 64, 320])));
    assert_eq!(f.shape("bias_gelu_dynamic"), Some(&s(&[2, -1, 640])));
    assert_eq!(f.shape("fast"), Some(&s(&[2, 64, 320])));
    assert_eq!(facts(&f, "fast_bias"), (Some(s(&[2, 4096, 2560])), Some(dtype::FLOAT16)));
    assert_eq!(f.shape("quick"), Some(&s(&[2, -1, -1])));
}

#[test]
fn skip_layer_norm_has_four_outputs() {
    let m = model(
        17,
        vec![input("x", dtype::FLOAT16, Some(&[2, 77, -1])), input("skip", dtype::FLOAT16, Some(&[2, 77, 640]))],
        vec![f32_init("g", &[640]), f32_init("b", &[640])],
        vec![
            ms("SkipLayerNormalization", &["x", "skip", "g", "b", "b"], &["y", "mean", "inv_std", "sum"]).build(),
            ms("SkipLayerNormalization", &["x", "skip", "g"], &["y1", "", "", "sum1"]).build(),
        ],
    );
    let f = infer(&m);
    for v in ["y", "sum", "y1", "sum1"] {
        assert_eq!(facts(&f, v), (Some(s(&[2, 77, 640])), Some(dtype::FLOAT16)), "{v}");
    }
    // mean and inv_std_var: type U (float32), one value per row.
    for v in ["mean", "inv_std"] {
        assert_eq!(facts(&f, v), (Some(s(&[2, 77, 1])), Some(dtype::FLOAT)), "{v}");
    }
}

#[test]
fn multi_head_attention_in_each_input_form() {
    let m = model(
        17,
        vec![
            input("q", dtype::FLOAT, Some(&[2, 4096, 320])),
            input("k", dtype::FLOAT, Some(&[2, 77, 320])),
            input("v", dtype::FLOAT, Some(&[2, 77, 640])),
            input("kh", dtype::FLOAT, Some(&[2, 8, 77, 40])),
            input("vh", dtype::FLOAT, Some(&[2, 8, 77, 40])),
            input("kv", dtype::FLOAT, Some(&[2, 77, 8, 2, 40])),
            input("qkv", dtype::FLOAT16, Some(&[2, 4096, 8, 3, 40])),
            input("past", dtype::FLOAT, Some(&[2, 8, 3, 40])),
            input("qd", dtype::FLOAT, Some(&[-1, -1, 320])),
            input("kd", dtype::FLOAT, Some(&[-1, -1, 320])),
        ],
        vec![],
        vec![
            ms("MultiHeadAttention", &["q", "k", "v"], &["y", "present_k", "present_v"])
                .attr_int("num_heads", 8)
                .build(),
            ms("MultiHeadAttention", &["q", "kh", "vh"], &["y_split", "pk_split"]).attr_int("num_heads", 8).build(),
            ms("MultiHeadAttention", &["q", "kv"], &["y_kv"]).attr_int("num_heads", 8).build(),
            ms("MultiHeadAttention", &["qkv"], &["y_qkv"]).attr_int("num_heads", 8).build(),
            ms("MultiHeadAttention", &["q", "k", "k", "", "", "", "past", "past"], &["y_past", "pk_past", "pv_past"])
                .attr_int("num_heads", 8)
                .build(),
            ms("MultiHeadAttention", &["qd", "kd", "kd"], &["y_dynamic"]).attr_int("num_heads", 8).build(),
        ],
    );
    let f = infer(&m);
    assert_eq!(facts(&f, "y"), (Some(s(&[2, 4096, 640])), Some(dtype::FLOAT)));
    assert_eq!(f.shape("present_k"), Some(&s(&[2, 8, 77, 40])));
    assert_eq!(f.shape("present_v"), Some(&s(&[2, 8, 77, 80])));
    assert_eq!(f.shape("y_split"), Some(&s(&[2, 4096, 320])));
    assert_eq!(f.shape("pk_split"), Some(&s(&[2, 8, 77, 40])));
    assert_eq!(f.shape("y_kv"), Some(&s(&[2, 4096, 320])));
    assert_eq!(facts(&f, "y_qkv"), (Some(s(&[2, 4096, 320])), Some(dtype::FLOAT16)));
    assert_eq!(f.shape("y_past"), Some(&s(&[2, 4096, 320])));
    assert_eq!(f.shape("pk_past"), Some(&s(&[2, 8, 80, 40])));
    assert_eq!(f.shape("pv_past"), Some(&s(&[2, 8, 80, 40])));
    assert_eq!(f.shape("y_dynamic"), Some(&s(&[-1, -1, 320])));
}

#[test]
fn quantization_ops() {
    let m = model(
        21,
        vec![input("x", dtype::FLOAT, Some(&[4, 8])), input("xq", dtype::UINT8, Some(&[1, 3, 8, 8]))],
        vec![
            f32_init("scale", &[]),
            i8_init("zp_i8", dtype::INT8, &[]),
            i8_init("w", dtype::INT8, &[8, 16]),
            f32_init("w_scale", &[16]),
            i8_init("wc", dtype::UINT8, &[4, 3, 3, 3]),
        ],
        vec![
            onnx("QuantizeLinear", &["x", "scale", "zp_i8"], &["q_i8"]).build(),
            onnx("QuantizeLinear", &["x", "scale"], &["q_u8"]).build(),
            onnx("QuantizeLinear", &["x", "scale"], &["q_out"]).attr_int("output_dtype", dtype::INT8 as i64).build(),
            onnx("DequantizeLinear", &["w", "w_scale"], &["w_float"]).attr_int("axis", 1).build(),
            onnx("ConvInteger", &["xq", "wc"], &["conv"])
                .attr_ints("pads", &[1, 1, 1, 1])
                .attr_ints("strides", &[2, 2])
                .build(),
        ],
    );
    let f = infer(&m);
    assert_eq!(facts(&f, "q_i8"), (Some(s(&[4, 8])), Some(dtype::INT8)));
    assert_eq!(facts(&f, "q_u8"), (Some(s(&[4, 8])), Some(dtype::UINT8)));
    assert_eq!(facts(&f, "q_out"), (Some(s(&[4, 8])), Some(dtype::INT8)));
    assert_eq!(facts(&f, "w_float"), (Some(s(&[8, 16])), Some(dtype::FLOAT)));
    assert_eq!(facts(&f, "conv"), (Some(s(&[1, 4, 4, 4])), Some(dtype::INT32)));
}

#[test]
fn split_by_sizes_attribute_or_equal_parts() {
    let x = || input("x", dtype::FLOAT, Some(&[2, -1, 96]));
    let sizes = || vec![i64_init("sizes", &[32, 64])];
    let m = model(
        17,
        vec![x(), input("n", dtype::INT64, Some(&[2]))],
        sizes(),
        vec![
            onnx("Split", &["x", "sizes"], &["a", "b"]).attr_int("axis", -1).build(),
            onnx("Split", &["x"], &["c", "d", "e"]).attr_int("axis", 2).build(),
            onnx("Split", &["x", "n"], &["f", "g"]).attr_int("axis", 2).build(),
            onnx("Split", &["x"], &["h", "i"]).attr_int("axis", 1).build(),
        ],
    );
    let f = infer(&m);
    assert_eq!(facts(&f, "a"), (Some(s(&[2, -1, 32])), Some(dtype::FLOAT)));
    assert_eq!(f.shape("b"), Some(&s(&[2, -1, 64])));
    for v in ["c", "d", "e"] {
        assert_eq!(f.shape(v), Some(&s(&[2, -1, 32])), "{v}");
    }
    // Sizes known only at run time, or an axis of unknown size: that axis unknown.
    for v in ["f", "g"] {
        assert_eq!(f.shape(v), Some(&s(&[2, -1, -1])), "{v}");
    }
    for v in ["h", "i"] {
        assert_eq!(f.shape(v), Some(&s(&[2, -1, 96])), "{v}");
    }
    // Opset 11: the sizes as an attribute.
    let m = model(
        11,
        vec![x()],
        vec![],
        vec![onnx("Split", &["x"], &["a", "b"]).attr_int("axis", 2).attr_ints("split", &[80, 16]).build()],
    );
    assert_eq!(infer(&m).shape("b"), Some(&s(&[2, -1, 16])));
}

/// Infers `model` (static input shapes), declares every graph output with the inferred type and shape (an
/// output of an integer type also as a float Cast, which the session returns), runs it on ONNX Runtime's CPU
/// EP (after `prepare`) and compares the shapes it returns with the inferred ones. Returns how many outputs
/// were compared.
fn check_with_ort(model: &OnnxModel, prepare: fn(&OnnxModel) -> OnnxModel) -> usize {
    let f = infer(model);
    let mut proto = model.proto().clone();
    let g = proto.graph.mut_or_insert_default();
    let mut want: Vec<(String, Vec<usize>)> = Vec::new();
    let mut casts = Vec::new();
    for out in g.output.iter_mut() {
        let name = out.name().to_string();
        let (Some(shape), Some(ty)) = (f.facts(&name).and_then(|x| x.static_shape()), f.dtype(&name)) else {
            panic!("`{name}`: inferred {:?}", f.facts(&name));
        };
        let dims: Vec<Option<i64>> = shape.iter().map(|&d| Some(d as i64)).collect();
        *out = make_tensor_value_info(&name, ty, Some(&dims));
        if matches!(ty, dtype::FLOAT | dtype::FLOAT16) {
            want.push((name, shape));
        } else {
            let cast = format!("{name}_as_float");
            casts.push(onnx("Cast", &[&name], &[&cast]).attr_int("to", dtype::FLOAT as i64).build());
            want.push((cast, shape));
        }
    }
    for c in casts {
        g.output.push(make_tensor_value_info(&c.output[0], dtype::FLOAT, None));
        g.node.push(c);
    }
    let prepared = prepare(&OnnxModel::from_proto(proto, None));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    prepared.save(&path).unwrap();
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    let mut session = runtime.load(&path).unwrap_or_else(|e| panic!("ONNX Runtime refuses the inferred types: {e}"));
    let inputs = feeds(&session, 5, Sizes { batch: 1, spatial: 1, other: 1 });
    let got = session.run(inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()).unwrap();
    for (name, shape) in &want {
        assert_eq!(got[name].shape(), &shape[..], "`{name}`");
    }
    want.len()
}

fn unchanged(m: &OnnxModel) -> OnnxModel {
    m.clone()
}

/// The contrib ops ONNX Runtime runs on the CPU EP, and the quantization ops, as they are.
#[test]
fn inferred_shapes_match_onnx_runtime_cpu() {
    let m = model(
        17,
        vec![
            input("x", dtype::FLOAT, Some(&[2, 5, 8])),
            input("skip", dtype::FLOAT, Some(&[2, 5, 8])),
            input("x2", dtype::FLOAT, Some(&[10, 8])),
            input("q", dtype::FLOAT, Some(&[2, 5, 16])),
            input("k", dtype::FLOAT, Some(&[2, 7, 16])),
            input("v", dtype::FLOAT, Some(&[2, 7, 24])),
            input("kh", dtype::FLOAT, Some(&[2, 2, 7, 8])),
            input("past", dtype::FLOAT, Some(&[2, 2, 3, 8])),
        ],
        vec![f32_init("g", &[8]), f32_init("b", &[8])],
        vec![
            ms("SkipLayerNormalization", &["x", "skip", "g", "b", "b"], &["y", "mean", "inv_std", "sum"]).build(),
            ms("SkipLayerNormalization", &["x2", "x2", "g"], &["y2", "mean2", "inv_std2", "sum2"]).build(),
            ms("BiasGelu", &["x", "b"], &["bias_gelu"]).build(),
            ms("FastGelu", &["x", "b"], &["fast_bias"]).build(),
            ms("FastGelu", &["x2"], &["fast"]).build(),
            ms("QuickGelu", &["x"], &["quick"]).build(),
            ms("MultiHeadAttention", &["q", "k", "v"], &["att", "present_k", "present_v"])
                .attr_int("num_heads", 2)
                .build(),
            ms("MultiHeadAttention", &["q", "kh", "kh"], &["att_split", "pk_split", "pv_split"])
                .attr_int("num_heads", 2)
                .build(),
            ms("MultiHeadAttention", &["q", "k", "k", "", "", "", "past", "past"], &["att_past", "pk_past", "pv_past"])
                .attr_int("num_heads", 2)
                .build(),
        ],
    );
    assert_eq!(check_with_ort(&m, unchanged), 21);
    let q = model(
        13,
        vec![input("x", dtype::FLOAT, Some(&[4, 8])), input("img", dtype::FLOAT, Some(&[1, 3, 8, 8]))],
        vec![
            i8_init("w", dtype::UINT8, &[8, 6]),
            i8_init("w_zp", dtype::UINT8, &[6]),
            f32_init("w_scale", &[6]),
            i8_init("w8", dtype::INT8, &[8, 6]),
            i8_init("w8_zp", dtype::INT8, &[6]),
            f32_init("scale", &[]),
            i8_init("zp_i8", dtype::INT8, &[]),
            i8_init("wc", dtype::UINT8, &[4, 3, 3, 3]),
        ],
        vec![
            onnx("DynamicQuantizeLinear", &["x"], &["xq", "x_scale", "x_zp"]).build(),
            onnx("MatMulInteger", &["xq", "w", "x_zp", "w_zp"], &["mm"]).build(),
            ms("MatMulIntegerToFloat", &["xq", "w", "x_scale", "w_scale", "x_zp", "w_zp"], &["mm_float"]).build(),
            ms("DynamicQuantizeMatMul", &["x", "w8", "w_scale", "w8_zp"], &["dq_mm"]).build(),
            onnx("DequantizeLinear", &["w8", "w_scale", "w8_zp"], &["w_float"]).attr_int("axis", 1).build(),
            onnx("QuantizeLinear", &["x", "scale", "zp_i8"], &["q_i8"]).build(),
            onnx("QuantizeLinear", &["x", "scale"], &["q_u8"]).build(),
            onnx("DynamicQuantizeLinear", &["img"], &["img_q", "img_scale", "img_zp"]).build(),
            onnx("ConvInteger", &["img_q", "wc", "img_zp"], &["conv"])
                .attr_ints("pads", &[1, 1, 1, 1])
                .attr_ints("strides", &[2, 2])
                .build(),
        ],
    );
    assert_eq!(check_with_ort(&q, unchanged), 13);
    let split = model(
        18,
        vec![input("x", dtype::FLOAT, Some(&[2, 10, 8]))],
        vec![i64_init("sizes", &[3, 7])],
        vec![
            onnx("Split", &["x", "sizes"], &["a", "b"]).attr_int("axis", 1).build(),
            onnx("Split", &["x"], &["c", "d", "e", "f"]).attr_int("axis", 1).attr_int("num_outputs", 4).build(),
            onnx("Split", &["x"], &["g", "h"]).attr_int("axis", -1).attr_int("num_outputs", 2).build(),
        ],
    );
    assert_eq!(infer(&split).shape("f"), Some(&s(&[2, 1, 8])));
    assert_eq!(check_with_ort(&split, unchanged), 8);
}

/// The CUDA-only ops, run lowered to standard ops.
#[test]
fn inferred_shapes_of_cuda_only_ops_match_their_lowering_on_onnx_runtime() {
    let m = model(
        17,
        vec![
            input("x", dtype::FLOAT, Some(&[2, 9, 7, 8])),
            input("h", dtype::FLOAT, Some(&[2, 4, 4, 64])),
            input("skip", dtype::FLOAT, Some(&[2, 1, 1, 64])),
            input("t", dtype::FLOAT, Some(&[2, 16, 320])),
        ],
        vec![
            f32_init("w", &[16, 3, 3, 8]),
            f32_init("bw", &[16]),
            f32_init("g", &[64]),
            f32_init("b", &[64]),
            f32_init("b320", &[320]),
        ],
        vec![
            ms("NhwcConv", &["x", "w", "bw"], &["conv"])
                .attr_ints("kernel_shape", &[3, 3])
                .attr_ints("pads", &[1, 0, 1, 0])
                .attr_ints("strides", &[2, 2])
                .build(),
            ms("GroupNorm", &["h", "g", "b"], &["gn"])
                .attr_int("groups", 32)
                .attr_float("epsilon", 1e-5)
                .attr_int("activation", 1)
                .attr_int("channels_last", 1)
                .build(),
            ms("SkipGroupNorm", &["h", "g", "b", "skip"], &["sgn", "sum"])
                .attr_int("groups", 32)
                .attr_float("epsilon", 1e-5)
                .attr_int("activation", 0)
                .attr_int("channels_last", 1)
                .build(),
            ms("BiasAdd", &["t", "b320", "t"], &["bias_add"]).build(),
        ],
    );
    assert_eq!(infer(&m).shape("conv"), Some(&s(&[2, 5, 3, 16])));
    assert_eq!(check_with_ort(&m, lower), 5);
}
