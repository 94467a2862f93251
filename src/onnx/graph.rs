//! A read-only index over a model's main graph for passes, plus attribute and node helpers.
//!
//! [`GraphIndex`] answers the questions a matcher asks while it walks the graph: who produces this value,
//! who consumes it, is it a graph input or output, is it a constant and what is it. It borrows the model,
//! so a pass cannot change the graph while it looks at it; changes go into a [`crate::onnx::Patch`].
//!
//! Nodes are named by their index in `graph.node` at the time the index was built; a patch refers to
//! nodes by the same indices.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use ndarray::ArrayD;

use super::OnnxModel;
use super::proto::onnx::attribute_proto::AttributeType;
use super::proto::onnx::tensor_shape_proto::dimension;
use super::proto::onnx::type_proto;
use super::proto::onnx::{
    AttributeProto, GraphProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use super::tensor::{self, dtype};
use crate::Result;

/// Read-only index over the main graph of a model.
pub struct GraphIndex<'m> {
    model: &'m OnnxModel,
    graph: &'m GraphProto,
    producer: HashMap<&'m str, usize>,
    consumers: HashMap<&'m str, Vec<usize>>,
    initializers: HashMap<&'m str, &'m TensorProto>,
    inputs: HashSet<&'m str>,
    outputs: HashSet<&'m str>,
    value_infos: HashMap<&'m str, &'m ValueInfoProto>,
}

impl<'m> GraphIndex<'m> {
    /// Indexes the main graph of `model`.
    pub fn new(model: &'m OnnxModel) -> Self {
        let graph = model.graph();
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(out.as_str(), i);
            }
            let mut seen = HashSet::new();
            for inp in node.input.iter().filter(|x| !x.is_empty()) {
                if seen.insert(inp.as_str()) {
                    consumers.entry(inp.as_str()).or_default().push(i);
                }
            }
            // Values a subgraph (If/Loop/Scan body) reads from the outer scope are uses by this node.
            for inp in outer_references(node) {
                if seen.insert(inp) {
                    consumers.entry(inp).or_default().push(i);
                }
            }
        }
        let initializers = graph.initializer.iter().map(|t| (t.name(), t)).collect();
        let inputs = graph.input.iter().map(|v| v.name()).collect();
        let outputs = graph.output.iter().map(|v| v.name()).collect();
        let value_infos = graph
            .input
            .iter()
            .chain(graph.output.iter())
            .chain(graph.value_info.iter())
            .map(|v| (v.name(), v))
            .collect();
        GraphIndex { model, graph, producer, consumers, initializers, inputs, outputs, value_infos }
    }

    /// The model the index was built over.
    pub fn model(&self) -> &'m OnnxModel {
        self.model
    }

    /// The indexed graph.
    pub fn graph(&self) -> &'m GraphProto {
        self.graph
    }

    /// All nodes, in graph order.
    pub fn nodes(&self) -> &'m [NodeProto] {
        &self.graph.node
    }

    /// Node `i` (an index into [`GraphIndex::nodes`]).
    pub fn node(&self, i: usize) -> &'m NodeProto {
        &self.graph.node[i]
    }

    /// Index of the node that produces `value` (None for graph inputs, initializers, unknown names).
    pub fn producer(&self, value: &str) -> Option<usize> {
        self.producer.get(value).copied()
    }

    /// The node that produces `value`.
    pub fn producer_node(&self, value: &str) -> Option<&'m NodeProto> {
        self.producer(value).map(|i| self.node(i))
    }

    /// The producer of `value` if it is the default-domain op `op_type`.
    pub fn producer_op(&self, value: &str, op_type: &str) -> Option<usize> {
        self.producer(value).filter(|&i| is_op(self.node(i), op_type))
    }

    /// Indices of the nodes that read `value` (each node once, in graph order), including nodes whose
    /// subgraphs read it.
    pub fn consumers(&self, value: &str) -> &[usize] {
        self.consumers.get(value).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The single node reading `value`, when it has exactly one reader and is not a graph output.
    pub fn single_consumer(&self, value: &str) -> Option<usize> {
        match self.consumers(value) {
            [only] if !self.is_graph_output(value) => Some(*only),
            _ => None,
        }
    }

    /// True for the graph's declared inputs (including initializers listed as inputs).
    pub fn is_graph_input(&self, value: &str) -> bool {
        self.inputs.contains(value)
    }

    /// True for the graph's declared outputs.
    pub fn is_graph_output(&self, value: &str) -> bool {
        self.outputs.contains(value)
    }

    /// True when `value` names an initializer.
    pub fn is_initializer(&self, value: &str) -> bool {
        self.initializers.contains_key(value)
    }

    /// True when `value` is defined at all: a graph input, an initializer or a node output.
    pub fn exists(&self, value: &str) -> bool {
        self.producer.contains_key(value) || self.is_initializer(value) || self.is_graph_input(value)
    }

    /// The initializer called `value`.
    pub fn initializer(&self, value: &str) -> Option<&'m TensorProto> {
        self.initializers.get(value).copied()
    }

    /// The constant tensor behind `value`: an initializer that is not also a graph input (those can be
    /// overridden at run time), or the output of a `Constant` node.
    pub fn const_tensor(&self, value: &str) -> Option<Cow<'m, TensorProto>> {
        if let Some(t) = self.initializer(value) {
            return (!self.is_graph_input(value)).then_some(Cow::Borrowed(t));
        }
        let node = self.producer_node(value)?;
        if !is_op(node, "Constant") {
            return None;
        }
        constant_node_tensor(node)
    }

    /// A floating-point constant (float32/16, bfloat16, float64) as f32; None when `value` is not a
    /// constant or not floating-point.
    pub fn const_f32(&self, value: &str) -> Result<Option<ArrayD<f32>>> {
        match self.const_tensor(value) {
            Some(t) if tensor::is_float(t.data_type()) => self.model.tensor_f32(&t).map(Some),
            _ => Ok(None),
        }
    }

    /// An integer or bool constant as i64; None when `value` is not a constant or not an integer.
    pub fn const_i64(&self, value: &str) -> Result<Option<ArrayD<i64>>> {
        match self.const_tensor(value) {
            Some(t) if tensor::is_int(t.data_type()) => self.model.tensor_i64(&t).map(Some),
            _ => Ok(None),
        }
    }

    /// The declared value info (graph input, output or `value_info` entry) of `value`.
    pub fn value_info(&self, value: &str) -> Option<&'m ValueInfoProto> {
        self.value_infos.get(value).copied()
    }

    /// Declared element type of `value` (from value info or its initializer).
    pub fn declared_elem_type(&self, value: &str) -> Option<i32> {
        if let Some(t) = self.initializer(value) {
            return Some(t.data_type());
        }
        tensor_type(self.value_info(value)?).and_then(|t| t.elem_type).filter(|&t| t != 0)
    }

    /// Declared shape of `value`: one entry per axis, `None` where the size is symbolic or unknown.
    pub fn declared_shape(&self, value: &str) -> Option<Vec<Option<i64>>> {
        if let Some(t) = self.initializer(value) {
            return Some(t.dims.iter().map(|&d| Some(d)).collect());
        }
        let shape = tensor_type(self.value_info(value)?)?.shape.as_ref()?;
        Some(
            shape
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(dimension::Value::DimValue(v)) if v >= 0 => Some(v),
                    _ => None,
                })
                .collect(),
        )
    }

    /// Whether "replace every use of `from` by `to`" can be done without keeping an `Identity`.
    ///
    /// A graph output keeps its name, so shunting a graph output works only by renaming `to` to it,
    /// which needs `to` to be an ordinary node output. Passes that remove a no-op node should skip it
    /// when this is false (otherwise `apply_patch` re-inserts an `Identity` and the pass never settles).
    pub fn can_shunt(&self, from: &str, to: &str) -> bool {
        if from == to {
            return false;
        }
        if !self.is_graph_output(from) {
            return true;
        }
        self.producer(to).is_some() && !self.is_graph_output(to) && !self.is_graph_input(to)
    }
}

/// The tensor type of a value info, if it is a tensor.
fn tensor_type(v: &ValueInfoProto) -> Option<&type_proto::Tensor> {
    match v.type_.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(t),
        _ => None,
    }
}

/// The value of a `Constant` node as a tensor (`value`, `value_float(s)`, `value_int(s)`); None for
/// string and sparse constants.
pub fn constant_node_tensor(node: &NodeProto) -> Option<Cow<'_, TensorProto>> {
    let a = node.attribute.first()?;
    let name = node.output.first().map(String::as_str).unwrap_or("");
    let build = |dt: i32, dims: Vec<i64>, raw: Vec<u8>| {
        let mut t = tensor::tensor_from_raw(name, dt, &[], bytes::Bytes::from(raw));
        t.dims = dims;
        Cow::Owned(t)
    };
    match a.name() {
        "value" => a.t.as_ref().map(Cow::Borrowed),
        "value_float" => Some(build(dtype::FLOAT, vec![], a.f().to_le_bytes().to_vec())),
        "value_int" => Some(build(dtype::INT64, vec![], a.i().to_le_bytes().to_vec())),
        "value_floats" => Some(build(
            dtype::FLOAT,
            vec![a.floats.len() as i64],
            a.floats.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )),
        "value_ints" => {
            Some(build(dtype::INT64, vec![a.ints.len() as i64], a.ints.iter().flat_map(|v| v.to_le_bytes()).collect()))
        }
        _ => None,
    }
}

/// True when `node` is the op `op_type` of the default ONNX domain.
pub fn is_op(node: &NodeProto, op_type: &str) -> bool {
    node.op_type() == op_type && matches!(node.domain(), "" | "ai.onnx")
}

/// Names a node's subgraphs read from the enclosing scope (not defined inside the subgraph).
pub fn outer_references(node: &NodeProto) -> Vec<&str> {
    fn walk<'a>(g: &'a GraphProto, defined: &mut Vec<HashSet<&'a str>>, out: &mut Vec<&'a str>) {
        let mut local: HashSet<&str> = HashSet::new();
        local.extend(g.input.iter().map(|v| v.name()));
        local.extend(g.initializer.iter().map(|t| t.name()));
        local.extend(g.node.iter().flat_map(|n| n.output.iter().map(String::as_str)));
        defined.push(local);
        for n in &g.node {
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                if !defined.iter().any(|d| d.contains(i.as_str())) {
                    out.push(i);
                }
            }
            for a in &n.attribute {
                for sub in a.g.as_ref().into_iter().chain(a.graphs.iter()) {
                    walk(sub, defined, out);
                }
            }
        }
        for o in &g.output {
            if !defined.iter().any(|d| d.contains(o.name())) {
                out.push(o.name());
            }
        }
        defined.pop();
    }
    let mut out = Vec::new();
    for a in &node.attribute {
        for g in a.g.as_ref().into_iter().chain(a.graphs.iter()) {
            walk(g, &mut Vec::new(), &mut out);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The attribute `name` of `node`.
pub fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

/// An `int` attribute.
pub fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).and_then(|a| a.i)
}

/// A `float` attribute.
pub fn attr_float(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).and_then(|a| a.f)
}

/// An `ints` attribute (an empty list when the attribute holds none).
pub fn attr_ints<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    attr(node, name).map(|a| a.ints.as_slice())
}

/// A `floats` attribute.
pub fn attr_floats<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [f32]> {
    attr(node, name).map(|a| a.floats.as_slice())
}

/// A `string` attribute, when it is UTF-8.
pub fn attr_string<'a>(node: &'a NodeProto, name: &str) -> Option<&'a str> {
    attr(node, name).and_then(|a| a.s.as_ref()).and_then(|s| std::str::from_utf8(s).ok())
}

/// A `tensor` attribute.
pub fn attr_tensor<'a>(node: &'a NodeProto, name: &str) -> Option<&'a TensorProto> {
    attr(node, name).and_then(|a| a.t.as_ref())
}

/// A graph attribute (If branches, Loop/Scan bodies).
pub fn attr_graph<'a>(node: &'a NodeProto, name: &str) -> Option<&'a GraphProto> {
    attr(node, name).and_then(|a| a.g.as_ref())
}

fn new_attr(name: &str, ty: AttributeType) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.set_name(name.to_string());
    a.set_type(ty);
    a
}

/// An `int` attribute proto.
pub fn make_attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = new_attr(name, AttributeType::INT);
    a.set_i(v);
    a
}

/// A `float` attribute proto.
pub fn make_attr_float(name: &str, v: f32) -> AttributeProto {
    let mut a = new_attr(name, AttributeType::FLOAT);
    a.set_f(v);
    a
}

/// An `ints` attribute proto.
pub fn make_attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = new_attr(name, AttributeType::INTS);
    a.ints = v.to_vec();
    a
}

/// A `floats` attribute proto.
pub fn make_attr_floats(name: &str, v: &[f32]) -> AttributeProto {
    let mut a = new_attr(name, AttributeType::FLOATS);
    a.floats = v.to_vec();
    a
}

/// A `string` attribute proto.
pub fn make_attr_string(name: &str, v: &str) -> AttributeProto {
    let mut a = new_attr(name, AttributeType::STRING);
    a.s = Some(bytes::Bytes::copy_from_slice(v.as_bytes()));
    a
}

/// A `tensor` attribute proto.
pub fn make_attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    let mut a = new_attr(name, AttributeType::TENSOR);
    a.t = Some(t).into();
    a
}

/// Builds a `NodeProto`:
///
/// ```
/// use dfast::onnx::NodeBuilder;
/// let node = NodeBuilder::new("Softmax").inputs(["scores"]).outputs(["probs"]).attr_int("axis", -1).build();
/// assert_eq!(node.op_type(), "Softmax");
/// ```
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    node: NodeProto,
}

impl NodeBuilder {
    /// A node of the default-domain op `op_type`.
    pub fn new(op_type: &str) -> Self {
        let mut node = NodeProto::new();
        node.set_op_type(op_type.to_string());
        NodeBuilder { node }
    }

    /// The node's name (left empty, `apply_patch` gives added nodes a unique one).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.node.set_name(name.into());
        self
    }

    /// The op's domain, e.g. `com.microsoft` for ONNX Runtime's contrib ops.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.node.set_domain(domain.into());
        self
    }

    /// Appends inputs (use `""` for a skipped optional input).
    pub fn inputs<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.node.input.extend(names.into_iter().map(Into::into));
        self
    }

    /// Appends outputs.
    pub fn outputs<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.node.output.extend(names.into_iter().map(Into::into));
        self
    }

    /// Adds an attribute proto (see the `make_attr_*` functions).
    pub fn attr(mut self, a: AttributeProto) -> Self {
        self.node.attribute.push(a);
        self
    }

    pub fn attr_int(self, name: &str, v: i64) -> Self {
        self.attr(make_attr_int(name, v))
    }

    pub fn attr_float(self, name: &str, v: f32) -> Self {
        self.attr(make_attr_float(name, v))
    }

    pub fn attr_ints(self, name: &str, v: &[i64]) -> Self {
        self.attr(make_attr_ints(name, v))
    }

    pub fn attr_floats(self, name: &str, v: &[f32]) -> Self {
        self.attr(make_attr_floats(name, v))
    }

    pub fn attr_string(self, name: &str, v: &str) -> Self {
        self.attr(make_attr_string(name, v))
    }

    pub fn attr_tensor(self, name: &str, t: TensorProto) -> Self {
        self.attr(make_attr_tensor(name, t))
    }

    pub fn build(self) -> NodeProto {
        self.node
    }
}

/// An opset import: `domain` (`""` for ONNX's own ops, `com.microsoft`, ...) at `version`.
pub fn make_opset(domain: &str, version: i64) -> OperatorSetIdProto {
    let mut opset = OperatorSetIdProto::new();
    opset.set_domain(domain.to_string());
    opset.set_version(version);
    opset
}

/// A tensor value info: element type and shape (`None` entries become unnamed dynamic dimensions,
/// `shape: None` leaves the rank unknown).
pub fn make_tensor_value_info(name: &str, elem_type: i32, shape: Option<&[Option<i64>]>) -> ValueInfoProto {
    let mut tt = type_proto::Tensor::new();
    tt.set_elem_type(elem_type);
    if let Some(dims) = shape {
        let mut s = TensorShapeProto::new();
        for d in dims {
            let mut dim = super::proto::onnx::tensor_shape_proto::Dimension::new();
            if let Some(v) = d {
                dim.value = Some(dimension::Value::DimValue(*v));
            }
            s.dim.push(dim);
        }
        tt.shape = Some(s).into();
    }
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.set_name(name.to_string());
    v.type_ = Some(ty).into();
    v
}
