//! The UNet's convs and linears grouped by distinct shape, and one small ONNX graph per shape to time.
//!
//! ```text
//! candidate: Conv with a constant float32 weight [out, in/groups, kh, kw] or MatMul with a constant float32
//!            weight [in, out], whose activation input is not already dequantized; the int8 pass decides on
//!            the small graph whether it really quantizes it (its own rules: min_in_features, 2-D inputs)
//! shape:     op, activation shape (as traced: batch, tokens or spatial size), weight shape, bias, and the
//!            Conv's attributes (strides, pads, dilations, group)
//! graph:     x (the traced shape) ──op(w random, b)──> y ──Slice(first element)──> out
//! ```
//! The output is sliced to one value so that copying it back from the session does not count in the time.

use std::collections::BTreeMap;

use crate::onnx::{
    GraphIndex, ModelProto, NodeBuilder, NodeProto, OnnxModel, attr_ints, dtype, is_op, make_opset,
    make_tensor_value_info,
};

/// A Conv or MatMul of the UNet that int8 may take.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: usize,
    /// Its activation input.
    pub x: String,
}

/// A distinct shape: what decides the time of one call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShapeKey {
    pub op: String,
    pub input: Vec<usize>,
    pub weight: Vec<usize>,
    pub bias: bool,
    /// Conv: strides, pads, dilations, group (as written in the node; absent ones empty).
    pub attrs: Vec<(String, Vec<i64>)>,
}

impl ShapeKey {
    /// (in, out) as an exclude list names it: Conv (in channels per group, out channels), MatMul (K, N).
    pub fn pair(&self) -> (usize, usize) {
        if self.op == "Conv" { (self.weight[1], self.weight[0]) } else { (self.weight[0], self.weight[1]) }
    }

    /// For people: `k3x3 s2 on [2,320,64,64]` or `8192 tokens ([2,4096,320])`.
    pub fn detail(&self) -> String {
        let shape = format!("[{}]", self.input.iter().map(usize::to_string).collect::<Vec<_>>().join(","));
        if self.op == "Conv" {
            let stride = self.attrs.iter().find(|(k, _)| k == "strides").map(|(_, v)| v.clone()).unwrap_or_default();
            let s = if stride.iter().any(|&s| s != 1) { format!(" s{}", stride[0]) } else { String::new() };
            let group = self.attrs.iter().find(|(k, _)| k == "group").and_then(|(_, v)| v.first().copied());
            let g = match group {
                Some(g) if g != 1 => format!(" g{g}"),
                _ => String::new(),
            };
            format!("k{}x{}{s}{g} on {shape}", self.weight[2], self.weight[3])
        } else {
            let tokens: usize = self.input[..self.input.len() - 1].iter().product();
            format!("{tokens} tokens ({shape})")
        }
    }
}

/// Conv and MatMul nodes with constant float weights of the right rank whose input is not dequantized.
pub fn candidates(index: &GraphIndex) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (i, node) in index.nodes().iter().enumerate() {
        let op = node.op_type();
        if !(op == "Conv" || op == "MatMul") || node.input.len() < 2 || node.output.len() != 1 {
            continue;
        }
        let (x, w) = (&node.input[0], &node.input[1]);
        if x.is_empty() || index.producer_node(x).is_some_and(|p| is_op(p, "DequantizeLinear")) {
            continue;
        }
        let Some(tensor) = index.const_tensor(w) else { continue };
        let rank_ok =
            if op == "Conv" { tensor.dims.len() == 4 } else { tensor.dims.len() == 2 && node.input.len() == 2 };
        if tensor.data_type() != dtype::FLOAT || !rank_ok || tensor.dims.iter().any(|&d| d <= 0) {
            continue;
        }
        out.push(Candidate { node: i, x: x.clone() });
    }
    out
}

/// The shape of each candidate given its traced activation shape; candidates without one are left out.
pub fn group(
    index: &GraphIndex,
    candidates: &[Candidate],
    shapes: &std::collections::HashMap<String, Vec<usize>>,
) -> BTreeMap<ShapeKey, Vec<usize>> {
    let mut groups: BTreeMap<ShapeKey, Vec<usize>> = BTreeMap::new();
    for c in candidates {
        let node = index.node(c.node);
        let Some(input) = shapes.get(&c.x) else { continue };
        let Some(w) = index.const_tensor(&node.input[1]) else { continue };
        let weight: Vec<usize> = w.dims.iter().map(|&d| d as usize).collect();
        let attrs = if is_op(node, "Conv") {
            ["strides", "pads", "dilations", "group"]
                .iter()
                .map(|k| {
                    let v = match *k {
                        "group" => crate::onnx::attr_int(node, k).map(|g| vec![g]).unwrap_or_default(),
                        _ => attr_ints(node, k).map(<[i64]>::to_vec).unwrap_or_default(),
                    };
                    (k.to_string(), v)
                })
                .collect()
        } else {
            Vec::new()
        };
        let key = ShapeKey {
            op: node.op_type().to_string(),
            input: input.clone(),
            weight,
            bias: node.input.len() > 2 && !node.input[2].is_empty(),
            attrs,
        };
        groups.entry(key).or_default().push(c.node);
    }
    groups
}

/// Values in [-scale, scale) from a fixed seed (latency does not depend on them).
fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A random input of `shape` for the graph's `x`.
pub fn random_input(shape: &[usize]) -> ndarray::ArrayD<f32> {
    let n = shape.iter().product();
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), pseudo_random(n, 7, 1.0)).expect("sized to the shape")
}

/// The graph of one shape: `template`'s op and attributes on input `x`, random weights, the output sliced.
pub fn single_op_model(key: &ShapeKey, template: &NodeProto, opset: i64) -> OnnxModel {
    use crate::onnx::tensor::{tensor_from_f32, tensor_from_i64};
    let mut proto = ModelProto::new();
    proto.set_ir_version(8);
    proto.opset_import.push(make_opset("", opset.max(13)));
    let graph = proto.graph.mut_or_insert_default();
    let dims = |s: &[usize]| s.iter().map(|&d| Some(d as i64)).collect::<Vec<_>>();
    graph.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&dims(&key.input))));
    let w_n: usize = key.weight.iter().product();
    let fan_in: usize = key.weight.iter().product::<usize>() / key.pair().1.max(1);
    let scale = 1.0 / (fan_in.max(1) as f32).sqrt();
    let w = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&key.weight), pseudo_random(w_n, 1, scale))
        .expect("sized to the shape");
    graph.initializer.push(tensor_from_f32("w", &w));
    let mut inputs = vec!["x".to_string(), "w".to_string()];
    if key.bias {
        let out = key.pair().1;
        let b = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[out]), pseudo_random(out, 2, 0.1)).expect("sized");
        graph.initializer.push(tensor_from_f32("b", &b));
        inputs.push("b".into());
    }
    let mut node = template.clone();
    node.input = inputs;
    node.output = vec!["y".into()];
    node.set_name("op".into());
    graph.node.push(node);
    let rank = key.input.len();
    let ones = ndarray::ArrayD::from_elem(ndarray::IxDyn(&[rank]), 1i64);
    let zeros = ndarray::ArrayD::from_elem(ndarray::IxDyn(&[rank]), 0i64);
    graph.initializer.push(tensor_from_i64("starts", &zeros));
    graph.initializer.push(tensor_from_i64("ends", &ones));
    graph.node.push(NodeBuilder::new("Slice").inputs(["y", "starts", "ends"]).outputs(["out"]).build());
    graph.output.push(make_tensor_value_info("out", dtype::FLOAT, Some(&vec![Some(1); rank])));
    OnnxModel::from_proto(proto, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_details_name_the_shape() {
        let conv = ShapeKey {
            op: "Conv".into(),
            input: vec![2, 320, 64, 64],
            weight: vec![640, 320, 3, 3],
            bias: true,
            attrs: vec![("strides".into(), vec![2, 2]), ("group".into(), vec![1])],
        };
        assert_eq!(conv.pair(), (320, 640));
        assert_eq!(conv.detail(), "k3x3 s2 on [2,320,64,64]");
        let mm = ShapeKey {
            op: "MatMul".into(),
            input: vec![2, 4096, 320],
            weight: vec![320, 960],
            bias: false,
            attrs: vec![],
        };
        assert_eq!(mm.pair(), (320, 960));
        assert_eq!(mm.detail(), "8192 tokens ([2,4096,320])");
    }

    #[test]
    fn the_single_op_graph_has_the_shape_and_a_one_value_output() {
        let key =
            ShapeKey { op: "MatMul".into(), input: vec![2, 77, 32], weight: vec![32, 48], bias: false, attrs: vec![] };
        let model = single_op_model(&key, &NodeBuilder::new("MatMul").build(), 17);
        let g = model.graph();
        assert_eq!(g.node.iter().map(|n| n.op_type()).collect::<Vec<_>>(), ["MatMul", "Slice"]);
        assert_eq!(model.initializer("w").unwrap().dims, [32, 48]);
        let w = model.initializer_f32("w").unwrap();
        assert!(w.iter().all(|v| v.abs() <= 1.0 / 32f32.sqrt()) && w.iter().any(|&v| v != 0.0));
    }
}
