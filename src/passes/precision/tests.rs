//! Tests of the precision pass: the tiny pipelines converted and run against float32, int8 parts,
//! kept slots, sinusoidal embeddings, options and block-list matching.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;

use super::op_matches;
use super::plan::current_types;
use super::plan::{fixed_input, is_follower};
use super::*;
use crate::onnx::tensor::{dtype_name, tensor_from_f32, tensor_from_i64};
use crate::onnx::{GraphIndex, OnnxModel};
use crate::onnx::{ModelProto, NodeBuilder, attr_int, attr_tensor, dtype, is_op, make_tensor_value_info};
use crate::passes::int8_dynamic::tests::unet_feeds;
use crate::passes::testing::{array, count, relative_l2, run};
use crate::passes::{Int8Dynamic, PassManager};
use crate::passes::{Pass, PassContext};

fn model_path(pipeline: &str, component: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(pipeline).join(component).join("model.onnx")
}

/// Inputs for any tiny model: `unet_feeds`' shapes, token ids for text encoders.
fn feeds(path: &Path) -> Vec<(String, ArrayD<f32>)> {
    unet_feeds(path)
        .into_iter()
        .map(|(name, a)| {
            if name == "input_ids" {
                let mut k = 0.0;
                let ids = a.mapv(|_| {
                    k += 1.0;
                    (k * 7.0) % 40.0
                });
                (name, ids)
            } else {
                (name, a)
            }
        })
        .collect()
}

fn convert(pass: &PrecisionPass, model: &mut OnnxModel) -> crate::manifest::PassRecord {
    let records = PassManager::new().with(pass.clone()).run(model, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
    records.into_iter().next().unwrap()
}

fn io_types(model: &OnnxModel) -> Vec<(String, Option<i32>)> {
    let index = GraphIndex::new(model);
    let g = model.graph();
    g.input.iter().chain(g.output.iter()).map(|v| (v.name().to_string(), index.declared_elem_type(v.name()))).collect()
}

/// A structural check of element types: every value's type is worked out from the ops (independently of
/// the pass), the float inputs of each node agree with each other, and every declared type (graph
/// outputs, value_info) agrees with the worked-out one. Returns the problems found.
fn type_problems(model: &OnnxModel) -> Vec<String> {
    let g = model.graph();
    let index = GraphIndex::new(model);
    let mut types: HashMap<String, i32> = HashMap::new();
    for v in &g.input {
        if let Some(t) = index.declared_elem_type(v.name()) {
            types.insert(v.name().to_string(), t);
        }
    }
    for t in &g.initializer {
        types.insert(t.name().to_string(), t.data_type());
    }
    let float = |t: i32| crate::onnx::tensor::is_float(t);
    let mut problems = Vec::new();
    for n in &g.node {
        let op = n.op_type();
        let ty = |v: &String| types.get(v.as_str()).copied();
        // Inputs that follow their own type rules.
        let free = |k: usize| match op {
            "Cast"
            | "Shape"
            | "Size"
            | "DynamicQuantizeLinear"
            | "MatMulInteger"
            | "DequantizeLinear"
            | "QuantizeLinear"
            | "Constant" => true,
            "Resize" => k >= 1,
            "GroupNorm" | "SkipGroupNorm" => k == 1 || k == 2,
            _ => false,
        };
        let data: Vec<i32> = n
            .input
            .iter()
            .enumerate()
            .filter(|(k, v)| !v.is_empty() && !free(*k))
            .filter_map(|(_, v)| ty(v))
            .filter(|&t| float(t))
            .collect();
        if data.windows(2).any(|w| w[0] != w[1]) {
            problems.push(format!("{} ({op}) reads mixed float types {data:?}", n.name()));
        }
        let t = data.first().copied();
        let mut outs = Vec::new();
        for (k, o) in n.output.iter().enumerate() {
            if o.is_empty() {
                continue;
            }
            let out = match op {
                "Cast" => attr_int(n, "to").map(|v| v as i32),
                "Constant" => crate::onnx::constant_node_tensor(n).map(|t| t.data_type()),
                "Shape" | "Size" | "ArgMax" | "NonZero" => Some(dtype::INT64),
                "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or" | "Xor"
                | "IsNaN" | "IsInf" => Some(dtype::BOOL),
                "DynamicQuantizeLinear" => Some([dtype::UINT8, dtype::FLOAT, dtype::UINT8][k.min(2)]),
                "MatMulInteger" => Some(dtype::INT32),
                "DequantizeLinear" => ty(&n.input[1]),
                "LayerNormalization" if k > 0 => Some(dtype::FLOAT),
                "ConstantOfShape" => Some(attr_tensor(n, "value").map(|t| t.data_type()).unwrap_or(dtype::FLOAT)),
                _ => t.or_else(|| n.input.first().and_then(ty)),
            };
            if let Some(out) = out {
                outs.push((o.clone(), out));
            }
        }
        types.extend(outs);
    }
    for v in g.output.iter().chain(g.value_info.iter()) {
        if let (Some(declared), Some(&t)) = (index.declared_elem_type(v.name()), types.get(v.name()))
            && declared != t
        {
            problems.push(format!("`{}` is declared {} but is {}", v.name(), dtype_name(declared), dtype_name(t)));
        }
    }
    problems
}

/// Float32 initializers that a converted node reads (outside the slots that keep float32).
fn fp32_weights_in_converted_nodes(pass: &PrecisionPass, model: &OnnxModel) -> Vec<String> {
    let blocked = pass.blocked_nodes(model);
    let mut found = Vec::new();
    for (i, n) in model.graph().node.iter().enumerate() {
        if blocked.contains(&i) || is_agnostic(n) || crate::onnx::is_op(n, "Cast") {
            continue;
        }
        for (k, v) in n.input.iter().enumerate() {
            let fp32 = model.initializer(v).is_some_and(|t| t.data_type() == dtype::FLOAT);
            if fp32 && !fixed_input(n, k) && !is_follower(n) {
                found.push(format!("{v} read by {} ({})", n.name(), n.op_type()));
            }
        }
    }
    found
}

fn half_initializers(model: &OnnxModel, h: i32) -> usize {
    model.graph().initializer.iter().filter(|t| t.data_type() == h).count()
}

/// Converts `path` with `pass`, checks types, I/O, weights and idempotence; runs it when `run_it`
/// and returns the worst relative L2 error against the float32 model.
fn check(pass: &PrecisionPass, pipeline: &str, component: &str, dir: &Path, run_it: bool) -> Option<f64> {
    let path = model_path(pipeline, component);
    let original = OnnxModel::load(&path).unwrap();
    let mut model = original.clone();
    let record = convert(pass, &mut model);
    let what = format!("{pipeline}/{component} {}", pass.precision.name());
    assert_eq!(record.rounds, 1, "{what}: {record:?}");
    if pass.keep_io_types {
        assert_eq!(io_types(&model), io_types(&original), "{what}: graph I/O types changed");
    }
    assert_eq!(type_problems(&model), Vec::<String>::new(), "{what}");
    assert_eq!(fp32_weights_in_converted_nodes(pass, &model), Vec::<String>::new(), "{what}");
    let int_before = original.graph().initializer.iter().filter(|t| crate::onnx::tensor::is_int(t.data_type())).count();
    let int_after = model.graph().initializer.iter().filter(|t| crate::onnx::tensor::is_int(t.data_type())).count();
    assert_eq!(int_before, int_after, "{what}: integer initializers changed");
    assert!(pass.run(&model, &PassContext::new(ExecutionProvider::Cpu)).unwrap().is_none(), "{what}: not idempotent");
    eprintln!(
        "{what}: {} nodes converted, {} blocked, {} Casts, {} of {} initializers in {}",
        record.rewrites,
        pass.blocked_nodes(&model).len(),
        count(&model, "Cast"),
        half_initializers(&model, crate::onnx::dtype::of(pass.precision)),
        model.graph().initializer.len(),
        pass.precision.name()
    );
    if !run_it {
        return None;
    }
    let feeds = feeds(&path);
    let want = run(&original, dir, &format!("{pipeline}-{component}-fp32"), &feeds);
    let got = run(&model, dir, &format!("{pipeline}-{component}-{}", pass.precision.name()), &feeds);
    let mut worst = 0f64;
    for (name, w) in &want {
        let err = relative_l2(&got[name], w);
        worst = worst.max(err);
    }
    eprintln!("{what}: worst output relative L2 {worst:.2e}");
    Some(worst)
}

const TINY: [&str; 4] = ["tiny-sd", "tiny-sd-dynamo", "tiny-sdxl", "tiny-sdxl-dynamo"];

#[test]
fn tiny_unets_in_fp16_match_fp32() {
    let dir = tempfile::tempdir().unwrap();
    // Everything in float16 that may be (no op block list): ONNX Runtime's CPU EP runs such graphs by
    // casting around the ops it has no float16 kernel for.
    let full = PrecisionPass {
        ops: OpPolicy::Block(BTreeSet::new()),
        ..PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cpu)
    };
    // The CPU default: only ops with a float16 CPU kernel are converted.
    let cpu = PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cpu);
    for pipeline in TINY {
        for pass in [&full, &cpu] {
            let err = check(pass, pipeline, "unet", dir.path(), true).unwrap();
            assert!(err <= 1e-2, "{pipeline}: fp16 relative L2 {err:.2e} > 1e-2");
        }
    }
}

#[test]
fn after_cleanup_and_with_half_io() {
    let dir = tempfile::tempdir().unwrap();
    for pipeline in ["tiny-sdxl", "tiny-sd-dynamo"] {
        let path = model_path(pipeline, "unet");
        let original = OnnxModel::load(&path).unwrap();
        let feeds = feeds(&path);
        let want = run(&original, dir.path(), &format!("{pipeline}-fp32"), &feeds);
        for keep_io_types in [true, false] {
            let pass = PrecisionPass {
                keep_io_types,
                ops: OpPolicy::Block(BTreeSet::new()),
                ..PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cuda)
            };
            let mut model = original.clone();
            PassManager::new()
                .with(crate::passes::Cleanup)
                .with(pass.clone())
                .run(&mut model, &PassContext::new(ExecutionProvider::Cuda))
                .unwrap();
            assert_eq!(type_problems(&model), Vec::<String>::new(), "{pipeline}");
            assert!(pass.run(&model, &PassContext::new(ExecutionProvider::Cuda)).unwrap().is_none(), "{pipeline}");
            let io = io_types(&model);
            let sample = io.iter().find(|(n, _)| n == "sample").unwrap().1;
            assert_eq!(sample, Some(if keep_io_types { dtype::FLOAT } else { dtype::FLOAT16 }), "{pipeline}");
            let got = run(&model, dir.path(), &format!("{pipeline}-clean-{keep_io_types}"), &feeds);
            for (name, w) in &want {
                let err = relative_l2(&got[name], w);
                eprintln!("{pipeline} cleanup + fp16 (keep_io_types {keep_io_types}): relative L2 {err:.2e}");
                assert!(err <= 1e-2, "{pipeline}: relative L2 {err:.2e}");
            }
        }
    }
}

#[test]
fn other_tiny_components_in_fp16_match_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let full = PrecisionPass {
        ops: OpPolicy::Block(BTreeSet::new()),
        ..PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cuda)
    };
    for (pipeline, component) in [
        ("tiny-sd", "text_encoder"),
        ("tiny-sd", "vae_decoder"),
        ("tiny-sd", "vae_encoder"),
        ("tiny-sdxl-dynamo", "text_encoder_2"),
        ("tiny-sdxl-dynamo", "vae_decoder"),
    ] {
        let err = check(&full, pipeline, component, dir.path(), true).unwrap();
        assert!(err <= 1e-2, "{pipeline}/{component}: fp16 relative L2 {err:.2e} > 1e-2");
    }
}

#[test]
fn tiny_unets_in_bf16() {
    let dir = tempfile::tempdir().unwrap();
    // CPU default: only LayerNormalization and data movement run in bfloat16; the graph loads and runs.
    let cpu = PrecisionPass::new(Precision::Bf16, ExecutionProvider::Cpu);
    // CUDA default and no block list at all: checked by types (ONNX Runtime's CPU EP cannot run them).
    let cuda = PrecisionPass::new(Precision::Bf16, ExecutionProvider::Cuda);
    let full = PrecisionPass {
        ops: OpPolicy::Block(BTreeSet::new()),
        ..PrecisionPass::new(Precision::Bf16, ExecutionProvider::Cuda)
    };
    for pipeline in TINY {
        let err = check(&cpu, pipeline, "unet", dir.path(), true).unwrap();
        assert!(err <= 2e-2, "{pipeline}: bf16 relative L2 {err:.2e} > 2e-2");
        for pass in [&cuda, &full] {
            check(pass, pipeline, "unet", dir.path(), false);
            let mut model = OnnxModel::load(model_path(pipeline, "unet")).unwrap();
            convert(pass, &mut model);
            let opset = model.opset("").unwrap();
            let blocked = pass.blocked_nodes(&model);
            for (i, n) in model.graph().node.iter().enumerate() {
                // The schema forbids bfloat16 Conv / InstanceNormalization / Sin / Cos before opset 22.
                if opset < 22 && ["Conv", "InstanceNormalization", "Sin", "Cos"].contains(&n.op_type()) {
                    assert!(blocked.contains(&i), "{pipeline}: {} ({}) converted", n.name(), n.op_type());
                }
                if matches!(n.op_type(), "MatMul" | "Softmax" | "LayerNormalization") && pass == &full {
                    assert!(!blocked.contains(&i), "{pipeline}: {} stayed fp32", n.op_type());
                }
            }
        }
    }
}

#[test]
fn int8_parts_stay_fp32() {
    let dir = tempfile::tempdir().unwrap();
    for pipeline in ["tiny-sd", "tiny-sdxl-dynamo"] {
        let path = model_path(pipeline, "unet");
        let mut int8 = OnnxModel::load(&path).unwrap();
        let quantize = Int8Dynamic { exclude: vec![], ..Int8Dynamic::seed(ExecutionProvider::Cpu) };
        PassManager::new().with(quantize).run(&mut int8, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
        let mut model = int8.clone();
        let pass = PrecisionPass {
            ops: OpPolicy::Block(BTreeSet::new()),
            ..PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cpu)
        };
        convert(&pass, &mut model);
        assert_eq!(type_problems(&model), Vec::<String>::new(), "{pipeline}");
        assert!(
            pass.run(&model, &PassContext::new(ExecutionProvider::Cpu)).unwrap().is_none(),
            "{pipeline}: not idempotent"
        );
        let index = GraphIndex::new(&model);
        let types = current_types(&index);
        let mut chains = 0;
        for n in &model.graph().node {
            if n.op_type() == "DynamicQuantizeLinear" {
                assert_eq!(types[&n.input[0]], dtype::FLOAT, "{pipeline}: quantized input");
            }
            if n.op_type() == "MatMulInteger" {
                let cast = index.node(index.consumers(&n.output[0])[0]);
                assert_eq!(attr_int(cast, "to"), Some(dtype::FLOAT as i64));
                let mul = index.node(index.consumers(&cast.output[0])[0]);
                assert_eq!((mul.op_type(), types[&mul.output[0]]), ("Mul", dtype::FLOAT));
                chains += 1;
            }
            if n.op_type() == "MatMul" && is_op(n, "MatMul") {
                assert_eq!(types[&n.output[0]], dtype::FLOAT16, "{pipeline}: float MatMul left in fp32");
            }
        }
        assert_eq!(chains, count(&int8, "MatMulInteger"));
        // Half-precision activations move DynamicQuantizeLinear's rounding: compare with float32 at the
        // int8 tolerance, and report the distance to the int8 model.
        let feeds = feeds(&path);
        let fp32 = run(&OnnxModel::load(&path).unwrap(), dir.path(), &format!("{pipeline}-fp32"), &feeds);
        let want = run(&int8, dir.path(), &format!("{pipeline}-int8"), &feeds);
        let got = run(&model, dir.path(), &format!("{pipeline}-int8-fp16"), &feeds);
        for (name, w) in &want {
            let err = relative_l2(&got[name], &fp32[name]);
            eprintln!(
                "{pipeline} int8 + fp16: relative L2 {err:.2e} to fp32, {:.2e} to int8",
                relative_l2(&got[name], w)
            );
            assert!(err <= 5e-2, "{pipeline}: int8 + fp16 relative L2 {err:.2e}");
        }
    }
}

/// x [1, 4, 8, 8] -> Resize(scales) -> GroupNorm (contrib) -> Mul(Constant) -> LayerNormalization
///   -> Add(ConstantOfShape) -> y; plus an int64 Reshape shape and a Shape output.
fn synthetic(opset: i64) -> OnnxModel {
    let mut proto = ModelProto::new();
    proto.set_ir_version(10);
    for (domain, version) in [("", opset), ("com.microsoft", 1)] {
        proto.opset_import.push(crate::onnx::make_opset(domain, version));
    }
    let g = proto.graph.mut_or_insert_default();
    g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[Some(1), Some(4), Some(8), Some(8)])));
    g.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
    g.output.push(make_tensor_value_info("shape", dtype::INT64, None));
    let scales = ndarray::arr1(&[1.0f32, 1.0, 2.0, 2.0]).into_dyn();
    g.initializer.push(tensor_from_f32("scales", &scales));
    g.initializer.push(tensor_from_f32("gamma", &ndarray::Array1::ones(4).into_dyn()));
    g.initializer.push(tensor_from_f32("beta", &ndarray::Array1::zeros(4).into_dyn()));
    g.initializer.push(tensor_from_f32("ln_scale", &(array(&[16], 1) * 0.1 + 1.0)));
    g.initializer.push(tensor_from_f32("ln_bias", &array(&[16], 2)));
    g.initializer.push(tensor_from_i64("target", &ndarray::arr1(&[1i64, 64, 16]).into_dyn()));
    g.initializer.push(tensor_from_i64("fill_shape", &ndarray::arr1(&[1i64, 64, 16]).into_dyn()));
    let b = |op: &str| NodeBuilder::new(op);
    g.node.push(
        b("Resize").name("resize").inputs(["x", "", "scales"]).outputs(["r"]).attr_string("mode", "nearest").build(),
    );
    g.node.push(
        b("GroupNorm")
            .name("gn")
            .domain("com.microsoft")
            .inputs(["r_nhwc", "gamma", "beta"])
            .outputs(["gn_out"])
            .attr_float("epsilon", 1e-5)
            .attr_int("groups", 2)
            .attr_int("activation", 0)
            .build(),
    );
    g.node.push(
        b("Transpose").name("to_nhwc").inputs(["r"]).outputs(["r_nhwc"]).attr_ints("perm", &[0, 2, 3, 1]).build(),
    );
    g.node.push(
        b("Constant")
            .name("two")
            .outputs(["two"])
            .attr_tensor("value", tensor_from_f32("", &ndarray::arr0(2.0f32).into_dyn()))
            .build(),
    );
    g.node.push(b("Mul").name("mul").inputs(["gn_out", "two"]).outputs(["m"]).build());
    g.node.push(b("Reshape").name("reshape").inputs(["m", "target"]).outputs(["m3"]).build());
    g.node.push(
        b("LayerNormalization")
            .name("ln")
            .inputs(["m3", "ln_scale", "ln_bias"])
            .outputs(["ln_out"])
            .attr_int("axis", -1)
            .build(),
    );
    g.node.push(
        b("ConstantOfShape")
            .name("fill")
            .inputs(["fill_shape"])
            .outputs(["ones"])
            .attr_tensor("value", tensor_from_f32("", &ndarray::arr1(&[1.0f32]).into_dyn()))
            .build(),
    );
    g.node.push(b("Add").name("add").inputs(["ln_out", "ones"]).outputs(["y"]).build());
    g.node.push(b("Shape").name("shape").inputs(["y"]).outputs(["shape"]).build());
    // Sort: Transpose before GroupNorm.
    g.node.swap(1, 2);
    OnnxModel::from_proto(proto, None)
}

#[test]
fn kept_slots_constants_and_io() {
    let types = |m: &OnnxModel| current_types(&GraphIndex::new(m));
    let mut model = synthetic(17);
    let pass = PrecisionPass {
        ops: OpPolicy::Block(BTreeSet::new()),
        ..PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cuda)
    };
    convert(&pass, &mut model);
    let t = types(&model);
    let init = |name: &str| model.initializer(name).map(|t| t.data_type());
    // Resize scales and the contrib GroupNorm's gamma / beta stay float32; the rest is float16.
    assert_eq!(
        (init("scales"), init("gamma"), init("beta")),
        (Some(dtype::FLOAT), Some(dtype::FLOAT), Some(dtype::FLOAT))
    );
    assert_eq!((init("ln_scale"), init("ln_bias")), (Some(dtype::FLOAT16), Some(dtype::FLOAT16)));
    assert_eq!((init("target"), init("fill_shape")), (Some(dtype::INT64), Some(dtype::INT64)));
    for v in ["r", "r_nhwc", "gn_out", "two", "m", "m3", "ln_out", "ones"] {
        assert_eq!(t[v], dtype::FLOAT16, "{v}");
    }
    let node = |op: &str| model.graph().node.iter().find(|n| n.op_type() == op).unwrap().clone();
    assert_eq!(attr_tensor(&node("Constant"), "value").unwrap().data_type(), dtype::FLOAT16);
    assert_eq!(attr_tensor(&node("ConstantOfShape"), "value").unwrap().data_type(), dtype::FLOAT16);
    // x is cast once after the input, y once before the output; Shape reads y's float16 value.
    assert_eq!(
        io_types(&model),
        [("x".into(), Some(dtype::FLOAT)), ("y".into(), Some(dtype::FLOAT)), ("shape".into(), Some(dtype::INT64))]
    );
    assert_eq!(count(&model, "Cast"), 2);
    assert_eq!(type_problems(&model), Vec::<String>::new());
    assert!(pass.run(&model, &PassContext::new(ExecutionProvider::Cuda)).unwrap().is_none());

    // keep_io_types = false: the graph's float input and output are float16, no Cast at all.
    let mut open = synthetic(17);
    let pass = PrecisionPass { keep_io_types: false, ..pass };
    convert(&pass, &mut open);
    assert_eq!(io_types(&open)[..2], [("x".into(), Some(dtype::FLOAT16)), ("y".into(), Some(dtype::FLOAT16))]);
    assert_eq!(count(&open, "Cast"), 0);
    assert_eq!(type_problems(&open), Vec::<String>::new());
    assert!(pass.run(&open, &PassContext::new(ExecutionProvider::Cuda)).unwrap().is_none());

    // A blocked node and a blocked op: Casts around them, their weights stay float32.
    let mut blocked = synthetic(17);
    let pass = PrecisionPass {
        ops: OpPolicy::Block(["LayerNormalization".to_string()].into()),
        node_block_list: ["mul".to_string()].into(),
        ..PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cuda)
    };
    convert(&pass, &mut blocked);
    let t = types(&blocked);
    assert_eq!((t["m"], t["ln_out"], t["y"]), (dtype::FLOAT, dtype::FLOAT, dtype::FLOAT));
    assert_eq!(blocked.initializer("ln_scale").unwrap().data_type(), dtype::FLOAT);
    assert_eq!(t["gn_out"], dtype::FLOAT16);
    assert_eq!(type_problems(&blocked), Vec::<String>::new());
    assert!(pass.run(&blocked, &PassContext::new(ExecutionProvider::Cuda)).unwrap().is_none());

    // bfloat16 at opset 17: GroupNorm (contrib) has no bfloat16 type and ConstantOfShape needs opset 20.
    let mut bf = synthetic(17);
    let pass = PrecisionPass {
        ops: OpPolicy::Block(BTreeSet::new()),
        ..PrecisionPass::new(Precision::Bf16, ExecutionProvider::Cuda)
    };
    convert(&pass, &mut bf);
    let t = types(&bf);
    assert_eq!(
        (t["gn_out"], t["ones"], t["r"], t["ln_out"]),
        (dtype::FLOAT, dtype::FLOAT, dtype::BFLOAT16, dtype::BFLOAT16)
    );
    assert_eq!(type_problems(&bf), Vec::<String>::new());
}

#[test]
fn sinusoidal_embeddings_stay_fp32() {
    for pipeline in ["tiny-sd", "tiny-sdxl-dynamo"] {
        for sinusoid_fp32 in [true, false] {
            let mut model = OnnxModel::load(model_path(pipeline, "unet")).unwrap();
            let pass = PrecisionPass {
                sinusoid_fp32,
                ops: OpPolicy::Block(BTreeSet::new()),
                ..PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cuda)
            };
            convert(&pass, &mut model);
            let index = GraphIndex::new(&model);
            let types = current_types(&index);
            let want = if sinusoid_fp32 { dtype::FLOAT } else { dtype::FLOAT16 };
            let trig: Vec<&NodeProto> =
                model.graph().node.iter().filter(|n| matches!(n.op_type(), "Sin" | "Cos")).collect();
            assert!(!trig.is_empty());
            for n in trig {
                assert_eq!(types[&n.input[0]], want, "{pipeline}: {}", n.name());
            }
            // The Linears that read the embedding run in float16 either way.
            for n in model.graph().node.iter().filter(|n| n.op_type() == "Gemm") {
                assert_eq!(types[&n.output[0]], dtype::FLOAT16, "{pipeline}: {}", n.name());
            }
        }
    }
}

#[test]
fn computed_resize_scales_are_read_as_fp32() {
    let mut model = synthetic(17);
    let g = model.graph_mut();
    g.input.push(make_tensor_value_info("factor", dtype::FLOAT, Some(&[Some(4)])));
    g.node.insert(0, NodeBuilder::new("Mul").name("scale_mul").inputs(["scales", "factor"]).outputs(["s2"]).build());
    g.node[1].input[2] = "s2".into();
    let pass = PrecisionPass {
        keep_io_types: false,
        ops: OpPolicy::Block(BTreeSet::new()),
        ..PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cuda)
    };
    convert(&pass, &mut model);
    assert_eq!(type_problems(&model), Vec::<String>::new());
    let index = GraphIndex::new(&model);
    let types = current_types(&index);
    let resize = model.graph().node.iter().find(|n| n.op_type() == "Resize").unwrap();
    assert_eq!((types[&resize.input[0]], types[&resize.input[2]]), (dtype::FLOAT16, dtype::FLOAT));
    assert_eq!(types["s2"], dtype::FLOAT16, "the Mul itself runs in float16");
    assert!(pass.run(&model, &PassContext::new(ExecutionProvider::Cuda)).unwrap().is_none());
}

#[test]
fn odd_nodes_do_not_panic() {
    let mut model = synthetic(17);
    let g = model.graph_mut();
    g.node.push(NodeBuilder::new("Cast").name("no_output").inputs(["y"]).attr_int("to", 1).build());
    g.node.push(NodeBuilder::new("Cast").name("no_to").inputs(["y"]).outputs(["c"]).build());
    g.node.push(NodeBuilder::new("Mystery").domain("org.example").inputs(["y"]).outputs(["z"]).build());
    g.node.push(NodeBuilder::new("Relu").inputs(["z"]).outputs(["zr"]).build());
    g.output.push(make_tensor_value_info("zr", dtype::FLOAT, None));
    let pass = PrecisionPass {
        ops: OpPolicy::Block(BTreeSet::new()),
        ..PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cuda)
    };
    let blocked = pass.blocked_nodes(&model);
    let names: Vec<&str> = blocked.iter().map(|&i| model.graph().node[i].op_type()).collect();
    // The unknown op and its reader (whose input type is unknown) stay as they are.
    assert!(names.contains(&"Mystery") && names.contains(&"Relu"), "{names:?}");
    let _ = PassManager::new().with(pass).run(&mut model, &PassContext::new(ExecutionProvider::Cuda));
}

#[test]
fn options_are_checked() {
    let build = |text: &str, precision, target| {
        crate::passes::options::build_from_str::<PrecisionPass>(text, &BuildContext::new(target, precision))
    };
    let p = build("", Precision::Fp16, ExecutionProvider::Cuda).unwrap();
    assert_eq!(
        (p.precision, p.keep_io_types, p.sinusoid_fp32, &p.ops),
        (Precision::Fp16, true, true, &OpPolicy::Block(BTreeSet::new()))
    );
    let text = "keep_io_types = false\nop_block_list = [\"Resize\"]\nnode_block_list = [\"n1\"]";
    let p = build(text, Precision::Bf16, ExecutionProvider::Cpu).unwrap();
    assert_eq!((p.precision, p.keep_io_types), (Precision::Bf16, false));
    assert_eq!(p.ops, OpPolicy::Block(["Resize".to_string()].into()));
    assert!(p.node_block_list.contains("n1"));
    assert!(matches!(build("", Precision::Fp16, ExecutionProvider::Cpu).unwrap().ops, OpPolicy::AllowOnly(_)));
    assert!(build("", Precision::Fp32, ExecutionProvider::Cpu).unwrap_err().to_string().contains("fp16 or bf16"));
    for (text, expected) in [
        ("precision = \"bf16\"", "key `precision`: unknown field"),
        ("keep_io_types = \"yes\"", "key `keep_io_types`: invalid type"),
        ("op_block_list = \"Resize\"", "key `op_block_list`: invalid type"),
        ("node_block_list = [1]", "key `node_block_list[0]`: invalid type"),
        ("keep_io = true", "key `keep_io`: unknown field"),
    ] {
        let err = build(text, Precision::Fp16, ExecutionProvider::Cpu).unwrap_err().to_string();
        assert!(err.contains(expected), "{text}: {err}");
        assert!(err.starts_with("[precision]"), "{err}");
    }
}

#[test]
fn op_names_match_with_and_without_domain() {
    let mha = NodeBuilder::new("MultiHeadAttention").domain("com.microsoft").build();
    let att = NodeBuilder::new("Attention").build();
    assert!(op_matches("MultiHeadAttention", &mha) && op_matches("com.microsoft.MultiHeadAttention", &mha));
    assert!(op_matches("ai.onnx.Attention", &att) && !op_matches("com.microsoft.Attention", &att));
    assert!(!op_matches("ai.onnx.MultiHeadAttention", &mha));
    let cpu = OpPolicy::default_for(ExecutionProvider::Cpu, Precision::Fp16);
    assert!(!cpu.blocks(&att) && cpu.blocks(&NodeBuilder::new("Attention").domain("com.microsoft").build()));
    assert!(cpu.blocks(&NodeBuilder::new("MatMul").build()));
}
