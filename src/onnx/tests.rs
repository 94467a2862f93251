//! Unit tests of model I/O, the graph index, patches and inference (no ONNX Runtime needed).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ndarray::{ArrayD, IxDyn};
use protobuf::Message;
use protobuf::UnknownValueRef;

use super::infer::Inference;
use super::proto::onnx::tensor_proto::DataLocation;
use super::*;
use crate::Error;

fn tiny_models() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut found = Vec::new();
    // The TorchScript (opset 17) and dynamo (opset 23) exports of the tiny pipelines.
    for pipeline in ["tiny-sd", "tiny-sdxl", "tiny-sd-dynamo", "tiny-sdxl-dynamo"] {
        let Ok(entries) = std::fs::read_dir(root.join(pipeline)) else { continue };
        for entry in entries {
            let p = entry.unwrap().path().join("model.onnx");
            if p.is_file() {
                found.push(p);
            }
        }
    }
    found.sort();
    assert!(found.len() >= 9, "expected the tiny pipelines' models, found {found:?}");
    found
}

fn tiny_unet() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-sd/unet/model.onnx")
}

/// Every initializer of `a` has the same bytes in `b`.
fn assert_same_tensors(a: &OnnxModel, b: &OnnxModel) {
    assert_eq!(a.graph().initializer.len(), b.graph().initializer.len());
    for t in &a.graph().initializer {
        let u = b.initializer(t.name()).unwrap_or_else(|| panic!("`{}` missing", t.name()));
        assert_eq!(t.dims, u.dims);
        assert_eq!(t.data_type(), u.data_type());
        assert_eq!(a.tensor_bytes(t).unwrap(), b.tensor_bytes(u).unwrap(), "bytes of `{}`", t.name());
    }
}

fn opsets(m: &OnnxModel) -> Vec<(String, i64)> {
    m.proto().opset_import.iter().map(|o| (o.domain().to_string(), o.version())).collect()
}

#[test]
fn every_tiny_model_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    for (k, path) in tiny_models().iter().enumerate() {
        let original = OnnxModel::load(path).unwrap();
        assert!(!original.uses_external_data());
        let out = dir.path().join(format!("m{k}.onnx"));
        let report = original.save(&out).unwrap();
        assert!(report.data_path.is_none(), "small models stay embedded by default");
        let back = OnnxModel::load(&out).unwrap();
        assert_eq!(back.proto(), original.proto(), "{} changed in a round trip", path.display());
        assert_same_tensors(&original, &back);
        assert_eq!(opsets(&back), opsets(&original));
        assert_eq!(back.proto().producer_name(), original.proto().producer_name());
        // Field order may differ from the exporter's writer (both are valid); the size may not.
        assert_eq!(std::fs::metadata(&out).unwrap().len(), std::fs::metadata(path).unwrap().len());
    }
}

#[test]
fn unknown_fields_and_metadata_survive() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // A field number no ONNX version uses, appended to the top-level message as raw bytes: field 1000,
    // varint, value 42 (tag = 1000 << 3 | 0 = 8000 = 0xC0 0x3E).
    let mut bytes = std::fs::read(tiny_unet()).unwrap();
    bytes.extend_from_slice(&[0xC0, 0x3E, 42]);
    std::fs::write(src.join("model.onnx"), &bytes).unwrap();

    let mut model = OnnxModel::load(src.join("model.onnx")).unwrap();
    assert!(matches!(model.proto().special_fields.unknown_fields().get(1000), Some(UnknownValueRef::Varint(42))));
    // Unknown fields deeper down, metadata, doc strings.
    let proto = model.proto_mut();
    let mut meta = StringStringEntryProto::new();
    meta.set_key("dfast.test".into());
    meta.set_value("kept".into());
    proto.metadata_props.push(meta);
    proto.set_doc_string("a doc string".into());
    let graph = proto.graph.mut_or_insert_default();
    graph.node[3].special_fields.mut_unknown_fields().add_length_delimited(777, b"node extra".to_vec());
    graph.initializer[0].special_fields.mut_unknown_fields().add_fixed32(778, 5);

    for options in [SaveOptions::embedded(), SaveOptions::external()] {
        let out = tempfile::tempdir().unwrap();
        model.save_with(out.path().join("model.onnx"), &options).unwrap();
        let back = OnnxModel::load(out.path().join("model.onnx")).unwrap();
        let p = back.proto();
        assert!(matches!(p.special_fields.unknown_fields().get(1000), Some(UnknownValueRef::Varint(42))));
        let g = back.graph();
        assert!(matches!(
            g.node[3].special_fields.unknown_fields().get(777),
            Some(UnknownValueRef::LengthDelimited(b"node extra"))
        ));
        assert!(matches!(g.initializer[0].special_fields.unknown_fields().get(778), Some(UnknownValueRef::Fixed32(5))));
        assert_eq!(p.metadata_props, model.proto().metadata_props);
        assert_eq!(p.doc_string(), "a doc string");
        assert_eq!(opsets(&back), opsets(&model));
        assert_same_tensors(&model, &back);
    }
}

#[test]
fn external_data_round_trip() {
    let original = OnnxModel::load(tiny_unet()).unwrap();
    let a = tempfile::tempdir().unwrap();
    let report = original.save_with(a.path().join("model.onnx"), &SaveOptions::external()).unwrap();
    let data_path = report.data_path.clone().unwrap();
    assert_eq!(data_path.file_name().unwrap(), "model.onnx_data");
    assert!(report.external_tensors > 0);

    let ext = OnnxModel::load(a.path().join("model.onnx")).unwrap();
    assert!(ext.uses_external_data());
    assert_same_tensors(&original, &ext);
    // The protobuf holds only the small tensors; every large one points into the one data file.
    let model_size = std::fs::metadata(a.path().join("model.onnx")).unwrap().len();
    let data_size = std::fs::metadata(&data_path).unwrap().len();
    assert!(model_size < data_size);
    let mut external = 0;
    for t in &ext.graph().initializer {
        if tensor::is_external(t) {
            external += 1;
            assert!(t.raw_data.is_none() && t.float_data.is_empty());
            let keys: Vec<&str> = t.external_data.iter().map(|e| e.key()).collect();
            assert_eq!(keys, ["location", "offset", "length"]);
            assert_eq!(t.external_data[0].value(), "model.onnx_data");
            let offset: u64 = t.external_data[1].value().parse().unwrap();
            assert_eq!(offset % 16, 0);
        } else {
            assert!(original.tensor_bytes(t).unwrap().len() < DEFAULT_SIZE_THRESHOLD);
        }
    }
    assert_eq!(external, report.external_tensors);

    // A model that came with external data keeps it by default.
    let b = tempfile::tempdir().unwrap();
    let report_b = ext.save(b.path().join("model.onnx")).unwrap();
    assert!(report_b.data_path.is_some());
    assert_eq!(std::fs::read(report_b.data_path.unwrap()).unwrap(), std::fs::read(&data_path).unwrap());
    // And can be brought back inline: identical to the original protobuf.
    let c = tempfile::tempdir().unwrap();
    ext.save_with(c.path().join("model.onnx"), &SaveOptions::embedded()).unwrap();
    let inline = OnnxModel::load(c.path().join("model.onnx")).unwrap();
    assert_eq!(inline.proto(), original.proto());
    assert!(!c.path().join("model.onnx_data").exists());
}

#[test]
fn refuses_to_overwrite_the_source() {
    let original = OnnxModel::load(tiny_unet()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    original.save_with(&path, &SaveOptions::external()).unwrap();
    let ext = OnnxModel::load(&path).unwrap();
    let before = std::fs::read(dir.path().join("model.onnx_data")).unwrap();

    let refused = |r: crate::Result<SaveReport>| match r {
        Err(Error::BadFile { message, .. }) => assert!(message.contains("refusing to overwrite"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    };
    refused(ext.save(&path));
    // Another model name in the same folder, but the source's data file as its data file.
    let opts = SaveOptions { data_file_name: Some("model.onnx_data".into()), ..SaveOptions::external() };
    refused(ext.save_with(dir.path().join("other.onnx"), &opts));
    // Through a symlink.
    #[cfg(unix)]
    {
        let link = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&path, link.path().join("model.onnx")).unwrap();
        refused(ext.save(link.path().join("model.onnx")));
    }
    // Saving over the model file as the data file of another model.
    let opts = SaveOptions { data_file_name: Some("model.onnx".into()), ..SaveOptions::external() };
    refused(ext.save_with(dir.path().join("third.onnx"), &opts));
    assert_eq!(std::fs::read(dir.path().join("model.onnx_data")).unwrap(), before);
    assert!(OnnxModel::load(&path).is_ok());
    // A data file name with a path in it is not a file name.
    let opts = SaveOptions { data_file_name: Some("../x".into()), ..SaveOptions::external() };
    assert!(matches!(ext.save_with(dir.path().join("fourth.onnx"), &opts), Err(Error::BadInput { .. })));
}

#[test]
fn a_file_that_is_not_onnx_is_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("text.onnx", b"hello, this is not a model".to_vec()),
        ("empty.onnx", vec![]),
        ("noise.onnx", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()),
        ("json.onnx", br#"{"graph": []}"#.to_vec()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        match OnnxModel::load(&path) {
            Err(Error::BadFile { path: p, message, .. }) => {
                assert_eq!(p, path);
                assert!(message.starts_with("not an ONNX model"), "{name}: {message}");
            }
            other => panic!("{name}: expected BadFile, got {other:?}"),
        }
    }
    assert!(matches!(OnnxModel::load(dir.path().join("missing.onnx")), Err(Error::BadFile { .. })));
    assert!(matches!(OnnxModel::load(dir.path()), Err(Error::BadFile { .. })));
}

/// A model with one external initializer, written by hand.
fn external_model(dir: &Path, location: &str, offset: u64, length: u64) -> PathBuf {
    let mut t = TensorProto::new();
    t.set_name("w".into());
    t.set_data_type(dtype::FLOAT);
    t.dims = vec![4];
    t.data_location = Some(protobuf::EnumOrUnknown::new(DataLocation::EXTERNAL));
    for (k, v) in [("location", location.to_string()), ("offset", offset.to_string()), ("length", length.to_string())] {
        let mut e = StringStringEntryProto::new();
        e.set_key(k.into());
        e.set_value(v);
        t.external_data.push(e);
    }
    let mut m = ModelProto::new();
    m.set_ir_version(8);
    let g = m.graph.mut_or_insert_default();
    g.initializer.push(t);
    g.node.push(NodeBuilder::new("Identity").inputs(["w"]).outputs(["y"]).build());
    g.output.push(make_tensor_value_info("y", dtype::FLOAT, Some(&[Some(4)])));
    m.opset_import.push(crate::onnx::make_opset("", 17));
    let path = dir.join("model.onnx");
    std::fs::write(&path, m.write_to_bytes().unwrap()).unwrap();
    path
}

#[test]
fn external_references_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut data = vec![0u8; 8];
    data.extend_from_slice(&values);
    std::fs::write(dir.path().join("w.bin"), &data).unwrap();

    let ok = OnnxModel::load(external_model(dir.path(), "w.bin", 8, 16)).unwrap();
    assert_eq!(ok.initializer_f32("w").unwrap().as_slice().unwrap(), &[1.0, 2.0, 3.0, 4.0]);

    for (location, offset, length, expect) in [
        ("../w.bin", 0, 16, "not a path inside"),
        ("/etc/passwd", 0, 16, "not a path inside"),
        ("missing.bin", 0, 16, "cannot read"),
        ("w.bin", 16, 16, "beyond the end"),
    ] {
        let sub = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join("w.bin"), sub.path().join("w.bin")).unwrap();
        match OnnxModel::load(external_model(sub.path(), location, offset, length)) {
            Err(Error::BadFile { message, .. }) => assert!(message.contains(expect), "{location}: {message}"),
            other => panic!("{location}: expected BadFile, got {other:?}"),
        }
    }
    // A length that does not match the tensor's shape is caught when the bytes are read.
    let bad = OnnxModel::load(external_model(dir.path(), "w.bin", 8, 12)).unwrap();
    assert!(bad.initializer_bytes("w").is_err());
}

#[test]
fn typed_fields_read_and_save_like_raw_data() {
    let mut m = ModelProto::new();
    m.set_ir_version(8);
    let g = m.graph.mut_or_insert_default();
    let mut f = TensorProto::new();
    f.set_name("f".into());
    f.set_data_type(dtype::FLOAT);
    f.dims = vec![2, 2];
    f.float_data = vec![1.0, -2.0, 3.5, 4.0];
    let mut h = TensorProto::new();
    h.set_name("h".into());
    h.set_data_type(dtype::FLOAT16);
    h.dims = vec![2];
    h.int32_data = vec![half::f16::from_f32(0.5).to_bits() as i32, half::f16::from_f32(-1.0).to_bits() as i32];
    let mut i = TensorProto::new();
    i.set_name("i".into());
    i.set_data_type(dtype::INT64);
    i.dims = vec![3];
    i.int64_data = vec![-1, 0, 7];
    let mut big = TensorProto::new();
    big.set_name("big".into());
    big.set_data_type(dtype::FLOAT);
    big.dims = vec![1000];
    big.float_data = (0..1000).map(|v| v as f32).collect();
    g.initializer.extend([f, h, i, big]);
    g.output.push(make_tensor_value_info("f", dtype::FLOAT, Some(&[Some(2), Some(2)])));
    m.opset_import.push(crate::onnx::make_opset("", 17));
    let model = OnnxModel::from_proto(m, None);

    assert_eq!(
        model.initializer_f32("f").unwrap(),
        ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0, -2.0, 3.5, 4.0]).unwrap()
    );
    assert_eq!(model.initializer_f32("h").unwrap().as_slice().unwrap(), &[0.5, -1.0]);
    assert_eq!(model.initializer_i64("i").unwrap().as_slice().unwrap(), &[-1, 0, 7]);
    assert!(model.initializer_i64("f").is_err(), "a float tensor is not read as integers");
    assert!(model.initializer_f32("nope").is_err());

    let dir = tempfile::tempdir().unwrap();
    let report = model.save_with(dir.path().join("model.onnx"), &SaveOptions::external()).unwrap();
    assert_eq!(report.external_tensors, 1, "only `big` reaches the 1 KiB threshold");
    let back = OnnxModel::load(dir.path().join("model.onnx")).unwrap();
    assert!(tensor::is_external(back.initializer("big").unwrap()));
    assert_eq!(back.initializer_f32("big").unwrap(), model.initializer_f32("big").unwrap());
    assert_eq!(back.initializer_f32("h").unwrap(), model.initializer_f32("h").unwrap());
    assert_eq!(back.initializer_i64("i").unwrap(), model.initializer_i64("i").unwrap());
}

#[test]
fn tensors_from_arrays_read_back() {
    let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.5f32, 1.0, -1.5, 2.0, 0.0, 3.25]).unwrap();
    let model = OnnxModel::from_proto(ModelProto::new(), None);
    assert_eq!(model.tensor_f32(&tensor::tensor_from_f32("a", &a)).unwrap(), a);
    assert_eq!(model.tensor_f32(&tensor::tensor_from_f16("a", &a)).unwrap(), a);
    let i = ArrayD::from_shape_vec(IxDyn(&[3]), vec![-5i64, 0, 9]).unwrap();
    assert_eq!(model.tensor_i64(&tensor::tensor_from_i64("i", &i)).unwrap(), i);
    assert_eq!(model.tensor_i64(&tensor::tensor_from_i32("i", &i)).unwrap(), i);
    let mut short = tensor::tensor_from_f32("s", &a);
    short.raw_data = Some(Bytes::from_static(&[0, 0, 0]));
    assert!(model.tensor_bytes(&short).is_err(), "raw_data shorter than the shape says");
}

/// x -> Relu -> a -> Neg -> y, plus a dead branch and an unused initializer.
fn small_graph() -> OnnxModel {
    let mut m = ModelProto::new();
    m.set_ir_version(8);
    let g = m.graph.mut_or_insert_default();
    g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[Some(2)])));
    g.output.push(make_tensor_value_info("y", dtype::FLOAT, Some(&[Some(2)])));
    g.node.push(NodeBuilder::new("Relu").name("relu").inputs(["x"]).outputs(["a"]).build());
    g.node.push(NodeBuilder::new("Neg").name("neg").inputs(["a"]).outputs(["y"]).build());
    g.node.push(NodeBuilder::new("Abs").name("dead").inputs(["x"]).outputs(["unused"]).build());
    g.initializer.push(tensor::tensor_from_f32("w", &ArrayD::from_elem(IxDyn(&[2]), 1.0)));
    OnnxModel::from_proto(m, None)
}

#[test]
fn graph_index_answers() {
    let m = small_graph();
    let index = GraphIndex::new(&m);
    assert_eq!(index.producer("a"), Some(0));
    assert_eq!(index.consumers("x"), &[0, 2]);
    assert_eq!(index.single_consumer("a"), Some(1));
    assert_eq!(index.single_consumer("y"), None);
    assert!(index.is_graph_input("x") && index.is_graph_output("y") && index.is_initializer("w"));
    assert_eq!(index.const_f32("w").unwrap().unwrap().as_slice().unwrap(), &[1.0, 1.0]);
    assert!(index.const_f32("x").unwrap().is_none());
    assert_eq!(index.declared_shape("x"), Some(vec![Some(2)]));
    assert!(index.can_shunt("a", "x"));
    assert!(!index.can_shunt("y", "x"), "a graph output cannot become a graph input");
    assert!(index.can_shunt("y", "a"));
}

#[test]
fn apply_patch_sorts_renames_and_drops_the_dead() {
    let mut m = small_graph();
    let index = GraphIndex::new(&m);
    let mut patch = Patch::new();
    // Replace Neg by Sigmoid, added at the end of the list: the sort puts it where it belongs.
    let s = patch.fresh_name(&index, "a");
    assert_eq!(s, "a_1");
    patch.add_node(NodeBuilder::new("Sigmoid").inputs(["a"]).outputs([s.clone()]).build());
    patch.add_node(NodeBuilder::new("Neg").name("neg2").inputs([s.clone()]).outputs(["n"]).build());
    patch.shunt("y", "n");
    patch.remove_node(1);
    let stats = apply_patch(&mut m, patch).unwrap();
    let ops: Vec<&str> = m.graph().node.iter().map(|n| n.op_type()).collect();
    assert_eq!(ops, ["Relu", "Sigmoid", "Neg"]);
    // `n` was renamed to the graph output `y`.
    assert_eq!(m.graph().node[2].output[0], "y");
    assert!(m.graph().node[1].name().starts_with("Sigmoid_dfast"));
    assert_eq!(stats.dead_nodes, 1, "the Abs feeding nothing");
    assert_eq!(stats.dead_initializers, 1);
    assert!(m.graph().initializer.is_empty());
}

#[test]
fn apply_patch_refuses_broken_graphs_and_leaves_the_model_alone() {
    let mut m = small_graph();
    let before = m.proto().clone();
    let mut patch = Patch::new();
    patch.remove_node(0); // `a` is still read by Neg
    assert!(apply_patch(&mut m, patch).is_err());
    let mut patch = Patch::new();
    patch.add_node(NodeBuilder::new("Relu").inputs(["x"]).outputs(["a"]).build()); // `a` twice
    assert!(apply_patch(&mut m, patch).is_err());
    let mut patch = Patch::new();
    patch.shunt("a", "b");
    patch.shunt("b", "a");
    assert!(apply_patch(&mut m, patch).is_err());
    let mut patch = Patch::new();
    patch.remove_node(99);
    assert!(apply_patch(&mut m, patch).is_err());
    assert_eq!(m.proto(), &before);
}

#[test]
fn shunting_a_graph_output_to_an_input_keeps_an_identity() {
    let mut m = small_graph();
    let mut patch = Patch::new();
    patch.shunt("y", "x");
    patch.remove_node(1);
    apply_patch(&mut m, patch).unwrap();
    let g = m.graph();
    assert_eq!(g.node.len(), 1);
    assert_eq!(g.node[0].op_type(), "Identity");
    assert_eq!((g.node[0].input[0].as_str(), g.node[0].output[0].as_str()), ("x", "y"));
}

#[test]
fn inference_follows_the_tiny_unet_attention_scale() {
    let model = OnnxModel::load(tiny_unet()).unwrap();
    let index = GraphIndex::new(&model);
    let facts = Inference::run(&index);
    // Every Sqrt of the attention-scale chains has a known value: the head sizes are static. The chain
    // is sqrt(d) then sqrt(1 / sqrt(d)), so the second Sqrt reads the first through a Div.
    let sqrts: Vec<&NodeProto> = index.nodes().iter().filter(|n| is_op(n, "Sqrt")).collect();
    assert!(!sqrts.is_empty());
    for n in sqrts {
        let c = facts.value(&n.output[0]).unwrap_or_else(|| panic!("no value for {}", n.name()));
        assert_eq!(c.shape(), &[1]);
        let v = c.floats()[0];
        let head_dim = (v * v).round();
        let is_sqrt_d = head_dim >= 1.0 && (v - head_dim.sqrt()).abs() < 1e-6;
        let d = v.powi(-4).round();
        let is_scale = d >= 1.0 && (v - d.powf(-0.25)).abs() < 1e-6;
        assert!(is_sqrt_d || is_scale, "{}: {v}", n.name());
    }
    // The sample keeps its dynamic batch and size; the channel count is known.
    assert_eq!(facts.shape("sample").unwrap(), &vec![None, Some(4), None, None]);
}

#[test]
fn require_opset_adds_contrib_domains_and_guards_the_default() {
    let mut m = small_graph();
    m.proto_mut().opset_import.push(crate::onnx::make_opset("", 17));
    let mut patch = Patch::new();
    patch.require_opset("com.microsoft", 1);
    patch.require_opset("", 13);
    patch.add_node(NodeBuilder::new("BiasAdd").domain("com.microsoft").inputs(["a", "a", "a"]).outputs(["b"]).build());
    apply_patch(&mut m, patch).unwrap();
    assert_eq!(m.opset("com.microsoft"), Some(1));
    assert_eq!(m.opset(""), Some(17));
    let mut patch = Patch::new();
    patch.require_opset("ai.onnx", 23);
    assert!(matches!(apply_patch(&mut m, patch), Err(Error::BadInput { .. })));
}

/// A subgraph (an If branch) reading an outer value is a consumer, and follows a shunt.
#[test]
fn shunts_reach_into_subgraphs() {
    let mut m = small_graph();
    let mut branch = GraphProto::new();
    branch.node.push(NodeBuilder::new("Neg").inputs(["a"]).outputs(["inner"]).build());
    branch.output.push(make_tensor_value_info("inner", dtype::FLOAT, None));
    let mut cond = NodeBuilder::new("Constant")
        .outputs(["c"])
        .attr_tensor("value", tensor::tensor_from_raw("", dtype::BOOL, &[], Bytes::from_static(&[1])))
        .build();
    cond.set_name("cond".into());
    let mut attr_then = AttributeProto::new();
    attr_then.set_name("then_branch".into());
    attr_then.set_type(proto::onnx::attribute_proto::AttributeType::GRAPH);
    attr_then.g = Some(branch.clone()).into();
    let mut attr_else = attr_then.clone();
    attr_else.set_name("else_branch".into());
    let g = m.graph_mut();
    g.node.push(cond);
    g.node.push(NodeBuilder::new("If").inputs(["c"]).outputs(["z"]).attr(attr_then).attr(attr_else).build());
    g.output.push(make_tensor_value_info("z", dtype::FLOAT, None));

    let index = GraphIndex::new(&m);
    assert_eq!(index.consumers("a"), &[1, 4]);
    let mut patch = Patch::new();
    patch.shunt("a", "x");
    patch.remove_node(0);
    drop(index);
    apply_patch(&mut m, patch).unwrap();
    let if_node = m.graph().node.iter().find(|n| n.op_type() == "If").unwrap();
    assert_eq!(attr_graph(if_node, "then_branch").unwrap().node[0].input[0], "x");
    assert_eq!(outer_references(if_node), ["x"]);
}

#[test]
fn inference_of_shape_arithmetic() {
    // x: [batch, 16, 8] -> Reshape(x, Concat(Shape(x)[0], -1, 2, Shape(x)[2] / 2)) -> Transpose -> Shape
    let mut m = ModelProto::new();
    m.set_ir_version(8);
    m.opset_import.push(crate::onnx::make_opset("", 17));
    let g = m.graph.mut_or_insert_default();
    g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[None, Some(16), Some(8)])));
    let i64s = |name: &str, v: &[i64]| {
        tensor::tensor_from_i64(name, &ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap())
    };
    let scalar = |name: &str, v: i64| tensor::tensor_from_i64(name, &ArrayD::from_elem(IxDyn(&[]), v));
    g.initializer.extend([scalar("zero", 0), scalar("two", 2), scalar("two_idx", 2), i64s("axes", &[0])]);
    g.initializer.push(i64s("minus_one_two", &[-1, 2]));
    let n = |op: &str, i: &[&str], o: &str| NodeBuilder::new(op).inputs(i.iter().copied()).outputs([o]).build();
    g.node.extend([
        n("Shape", &["x"], "s"),
        n("Gather", &["s", "zero"], "b"),
        n("Gather", &["s", "two_idx"], "c"),
        n("Div", &["c", "two"], "h"),
        n("Unsqueeze", &["b", "axes"], "b1"),
        n("Unsqueeze", &["h", "axes"], "h1"),
        NodeBuilder::new("Concat").inputs(["b1", "minus_one_two", "h1"]).outputs(["shape"]).attr_int("axis", 0).build(),
        n("Reshape", &["x", "shape"], "r"),
        NodeBuilder::new("Transpose").inputs(["r"]).outputs(["t"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
        n("Shape", &["t"], "ts"),
    ]);
    let model = OnnxModel::from_proto(m, None);
    let index = GraphIndex::new(&model);
    let facts = Inference::run(&index);
    assert_eq!(facts.facts("shape").unwrap().elems().unwrap(), vec![None, Some(-1), Some(2), Some(4)]);
    assert_eq!(facts.shape("r").unwrap(), &vec![None, None, Some(2), Some(4)]);
    assert_eq!(facts.shape("t").unwrap(), &vec![None, Some(2), None, Some(4)]);
    assert_eq!(facts.facts("ts").unwrap().elems().unwrap(), vec![None, Some(2), None, Some(4)]);
    assert_eq!(facts.value("h").unwrap().ints().unwrap(), vec![4]);
    assert_eq!(facts.dtype("ts"), Some(dtype::INT64));
}

/// I/O and parse errors keep the error they came from as `source()`, under one sentence naming the file.
#[test]
fn load_errors_keep_their_source() {
    use std::error::Error as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.onnx");
    std::fs::write(&path, [0x0a, 0xff, 0xff]).unwrap();
    let Err(err) = OnnxModel::load(&path) else { panic!("a truncated protobuf is refused") };
    assert!(err.to_string().contains("not an ONNX model"), "{err}");
    assert!(err.source().is_some_and(|s| s.downcast_ref::<protobuf::Error>().is_some()), "{err:?}");
}
