//! A small shape, element-type and constant inference, enough for the rewrites of exported diffusion
//! graphs.
//!
//! Each value gets [`Facts`]: its element type, its shape (each dimension known or not), its value when
//! it is a small constant, and — for the 0-d/1-d integer tensors that shape arithmetic produces — each
//! element that is known even when others are not (`Shape` of a `[batch, heads, seq, 64]` tensor is
//! `[?, 8, ?, 64]`). That partial knowledge is what lets the TorchScript attention-scale chain
//! `Shape -> Slice[-1:] -> Cast -> Sqrt -> Div -> Cast -> Sqrt` be folded to a number while the batch and
//! sequence sizes stay dynamic.
//!
//! Only ops listed here are understood; anything else gets no facts (beyond its declared value info), so
//! a rewrite that needs facts simply does not fire. Constants are evaluated exactly as ONNX Runtime
//! would: float arithmetic is done in f64 and rounded to the value's type after every op, which for
//! +, -, *, / and sqrt gives the correctly rounded float32 result.

use std::collections::HashMap;

use half::{bf16, f16};
use ndarray::{ArrayD, Axis, IxDyn, Zip};

use super::OnnxModel;
use super::graph::{GraphIndex, attr, attr_int, attr_ints, constant_node_tensor, is_op};
use super::proto::onnx::{NodeProto, TensorProto};
use super::tensor::{self, dtype};

/// Constants with more elements than this are not evaluated (folding must not blow up the model).
pub const MAX_CONST_ELEMENTS: usize = 1 << 16;

/// One dimension: its size when known.
pub type Dim = Option<i64>;
/// A shape: one [`Dim`] per axis.
pub type Shape = Vec<Dim>;

/// The elements of a constant: floats (any float type, held exactly in f64) or integers (any integer
/// type or bool, in i64).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Float(ArrayD<f64>),
    Int(ArrayD<i64>),
}

/// A constant value with its ONNX element type.
#[derive(Debug, Clone, PartialEq)]
pub struct Const {
    pub dtype: i32,
    pub values: Values,
}

impl Const {
    /// Reads a tensor as a constant (None for unsupported types or more than [`MAX_CONST_ELEMENTS`]).
    pub fn from_tensor(model: &OnnxModel, t: &TensorProto) -> Option<Const> {
        let dt = t.data_type();
        if tensor::numel(t).ok()? > MAX_CONST_ELEMENTS {
            return None;
        }
        let shape = tensor::dims(t).ok()?;
        let bytes = model.tensor_bytes(t).ok()?;
        let values = if dt == dtype::DOUBLE {
            let v = bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8"))).collect();
            Values::Float(ArrayD::from_shape_vec(IxDyn(&shape), v).ok()?)
        } else if tensor::is_float(dt) {
            let v = tensor::bytes_to_f32(t.name(), dt, &bytes).ok()?.into_iter().map(f64::from).collect();
            Values::Float(ArrayD::from_shape_vec(IxDyn(&shape), v).ok()?)
        } else if tensor::is_int(dt) {
            Values::Int(ArrayD::from_shape_vec(IxDyn(&shape), tensor::bytes_to_i64(t.name(), dt, &bytes).ok()?).ok()?)
        } else {
            return None;
        };
        Some(Const { dtype: dt, values })
    }

    /// An int64 constant.
    pub fn int64(values: ArrayD<i64>) -> Const {
        Const { dtype: dtype::INT64, values: Values::Int(values) }
    }

    pub fn shape(&self) -> &[usize] {
        match &self.values {
            Values::Float(a) => a.shape(),
            Values::Int(a) => a.shape(),
        }
    }

    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements in row-major order, when the constant is an integer tensor.
    pub fn ints(&self) -> Option<Vec<i64>> {
        match &self.values {
            Values::Int(a) => Some(a.iter().copied().collect()),
            Values::Float(_) => None,
        }
    }

    /// The elements in row-major order, as f64.
    pub fn floats(&self) -> Vec<f64> {
        match &self.values {
            Values::Float(a) => a.iter().copied().collect(),
            Values::Int(a) => a.iter().map(|&v| v as f64).collect(),
        }
    }

    /// True when every element equals `x` (and there is at least one).
    pub fn is_all(&self, x: f64) -> bool {
        !self.is_empty() && self.floats().iter().all(|&v| v == x)
    }

    /// The constant as an initializer called `name` (None for types it cannot encode).
    pub fn to_tensor(&self, name: &str) -> Option<TensorProto> {
        let mut raw = Vec::new();
        match (&self.values, self.dtype) {
            (Values::Float(a), dtype::FLOAT) => a.iter().for_each(|&v| raw.extend((v as f32).to_le_bytes())),
            (Values::Float(a), dtype::FLOAT16) => a.iter().for_each(|&v| raw.extend(f16::from_f64(v).to_le_bytes())),
            (Values::Float(a), dtype::BFLOAT16) => a.iter().for_each(|&v| raw.extend(bf16::from_f64(v).to_le_bytes())),
            (Values::Float(a), dtype::DOUBLE) => a.iter().for_each(|&v| raw.extend(v.to_le_bytes())),
            (Values::Int(a), dtype::INT64) => a.iter().for_each(|&v| raw.extend(v.to_le_bytes())),
            (Values::Int(a), dtype::UINT64) => a.iter().for_each(|&v| raw.extend((v as u64).to_le_bytes())),
            (Values::Int(a), dtype::INT32) => a.iter().for_each(|&v| raw.extend((v as i32).to_le_bytes())),
            (Values::Int(a), dtype::UINT32) => a.iter().for_each(|&v| raw.extend((v as u32).to_le_bytes())),
            (Values::Int(a), dtype::INT16) => a.iter().for_each(|&v| raw.extend((v as i16).to_le_bytes())),
            (Values::Int(a), dtype::UINT16) => a.iter().for_each(|&v| raw.extend((v as u16).to_le_bytes())),
            (Values::Int(a), dtype::INT8) => a.iter().for_each(|&v| raw.push(v as i8 as u8)),
            (Values::Int(a), dtype::UINT8) => a.iter().for_each(|&v| raw.push(v as u8)),
            (Values::Int(a), dtype::BOOL) => a.iter().for_each(|&v| raw.push((v != 0) as u8)),
            _ => return None,
        }
        Some(tensor::tensor_from_raw(name, self.dtype, self.shape(), bytes::Bytes::from(raw)))
    }

    /// The constant converted as ONNX `Cast` converts (None where the result would be undefined, e.g.
    /// a float out of an integer type's range).
    pub fn cast(&self, to: i32) -> Option<Const> {
        let values = match (&self.values, tensor::is_float(to), tensor::is_int(to)) {
            (Values::Float(a), true, _) => Values::Float(a.mapv(|v| round_float(to, v))),
            (Values::Int(a), true, _) => Values::Float(a.mapv(|v| round_float(to, v as f64))),
            (Values::Int(a), _, true) => Values::Int(a.mapv(|v| wrap_int(to, v))),
            (Values::Float(a), _, true) => {
                if to == dtype::BOOL {
                    Values::Int(a.mapv(|v| (v != 0.0) as i64))
                } else {
                    let (lo, hi) = int_range(to)?;
                    if a.iter().any(|v| !v.is_finite() || v.trunc() < lo || v.trunc() > hi) {
                        return None;
                    }
                    Values::Int(a.mapv(|v| v.trunc() as i64))
                }
            }
            _ => return None,
        };
        Some(Const { dtype: to, values })
    }
}

/// Rounds an exact value to what an element of float type `dt` holds.
fn round_float(dt: i32, v: f64) -> f64 {
    match dt {
        dtype::FLOAT => v as f32 as f64,
        dtype::FLOAT16 => f16::from_f64(v).to_f64(),
        dtype::BFLOAT16 => bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// Wraps an integer to what an element of integer type `dt` holds (ONNX Runtime's C++ casts wrap).
fn wrap_int(dt: i32, v: i64) -> i64 {
    match dt {
        dtype::INT32 => v as i32 as i64,
        dtype::UINT32 => v as u32 as i64,
        dtype::INT16 => v as i16 as i64,
        dtype::UINT16 => v as u16 as i64,
        dtype::INT8 => v as i8 as i64,
        dtype::UINT8 => v as u8 as i64,
        dtype::BOOL => (v != 0) as i64,
        _ => v,
    }
}

fn int_range(dt: i32) -> Option<(f64, f64)> {
    Some(match dt {
        dtype::INT64 => (-9.223372036854775e18, 9.223372036854775e18),
        dtype::UINT64 => (0.0, 9.223372036854775e18),
        dtype::INT32 => (i32::MIN as f64, i32::MAX as f64),
        dtype::UINT32 => (0.0, u32::MAX as f64),
        dtype::INT16 => (i16::MIN as f64, i16::MAX as f64),
        dtype::UINT16 => (0.0, u16::MAX as f64),
        dtype::INT8 => (i8::MIN as f64, i8::MAX as f64),
        dtype::UINT8 => (0.0, u8::MAX as f64),
        _ => return None,
    })
}

/// What is known about one value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// ONNX element type.
    pub dtype: Option<i32>,
    /// Shape; None when even the rank is unknown.
    pub shape: Option<Shape>,
    /// The value, when it is a constant of at most [`MAX_CONST_ELEMENTS`] elements.
    pub value: Option<Const>,
    /// For 0-d or 1-d integer values: each element, where known (the value itself is then unknown).
    pub partial: Option<Vec<Option<i64>>>,
}

impl Facts {
    /// Facts of a known constant.
    pub fn of_const(c: Const) -> Facts {
        Facts {
            dtype: Some(c.dtype),
            shape: Some(c.shape().iter().map(|&d| Some(d as i64)).collect()),
            value: (c.len() <= MAX_CONST_ELEMENTS).then_some(c),
            partial: None,
        }
    }

    /// Facts of a 0-d (`scalar`) or 1-d integer value with some elements known; a full value when all are.
    fn of_partial(elems: Vec<Option<i64>>, scalar: bool, dt: i32) -> Facts {
        let shape = if scalar { vec![] } else { vec![Some(elems.len() as i64)] };
        if elems.iter().all(Option::is_some) && (!scalar || elems.len() == 1) {
            let dims = if scalar { vec![] } else { vec![elems.len()] };
            let values = ArrayD::from_shape_vec(IxDyn(&dims), elems.into_iter().flatten().collect())
                .expect("element count matches the shape");
            return Facts::of_const(Const { dtype: dt, values: Values::Int(values) });
        }
        Facts { dtype: Some(dt), shape: Some(shape), value: None, partial: Some(elems) }
    }

    fn typed(dtype: Option<i32>, shape: Option<Shape>) -> Facts {
        Facts { dtype, shape, value: None, partial: None }
    }

    /// Rank, when known.
    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }

    /// The shape when every dimension is known.
    pub fn static_shape(&self) -> Option<Vec<usize>> {
        self.shape.as_ref()?.iter().map(|d| d.and_then(|v| usize::try_from(v).ok())).collect()
    }

    /// Elements of a 0-d / 1-d integer value, each where known.
    pub fn elems(&self) -> Option<Vec<Option<i64>>> {
        if let Some(p) = &self.partial {
            return Some(p.clone());
        }
        let c = self.value.as_ref()?;
        if c.shape().len() > 1 {
            return None;
        }
        c.ints().map(|v| v.into_iter().map(Some).collect())
    }

    /// Elements of a 0-d / 1-d integer value, when all are known.
    pub fn ints(&self) -> Option<Vec<i64>> {
        self.elems()?.into_iter().collect()
    }

    fn is_scalar(&self) -> bool {
        self.rank() == Some(0)
    }
}

/// Facts for every value of a graph, computed in one walk in node order.
pub struct Inference {
    facts: HashMap<String, Facts>,
}

impl Inference {
    /// Infers facts for the main graph behind `index`. Declared value infos (graph inputs, outputs,
    /// `value_info`) fill in what the ops do not tell.
    pub fn run(index: &GraphIndex) -> Inference {
        let model = index.model();
        let graph = index.graph();
        let opset = model.opset("").unwrap_or(17);
        let mut facts: HashMap<String, Facts> = HashMap::new();
        for v in &graph.input {
            facts.insert(v.name().to_string(), declared(index, v.name()));
        }
        for t in &graph.initializer {
            let f = if index.is_graph_input(t.name()) {
                declared(index, t.name())
            } else {
                match Const::from_tensor(model, t) {
                    Some(c) => Facts::of_const(c),
                    None => Facts::typed(Some(t.data_type()), Some(t.dims.iter().map(|&d| Some(d)).collect())),
                }
            };
            facts.insert(t.name().to_string(), f);
        }
        let empty = Facts::default();
        for node in &graph.node {
            let ins: Vec<&Facts> = node.input.iter().map(|i| facts.get(i).unwrap_or(&empty)).collect();
            let ctx = Ctx { model, opset };
            let mut outs = match node.domain() {
                "" | "ai.onnx" => infer_node(node, &ins, &ctx),
                "com.microsoft" => infer_contrib(node, &ins),
                _ => vec![],
            };
            outs.resize(node.output.len(), Facts::default());
            for (name, mut f) in node.output.iter().zip(outs) {
                if name.is_empty() {
                    continue;
                }
                if let Some(v) = &f.value
                    && v.len() > MAX_CONST_ELEMENTS
                {
                    f.value = None;
                }
                facts.insert(name.clone(), merge(f, declared(index, name)));
            }
        }
        Inference { facts }
    }

    /// Everything known about `value`.
    pub fn facts(&self, value: &str) -> Option<&Facts> {
        self.facts.get(value)
    }

    /// Element type of `value`.
    pub fn dtype(&self, value: &str) -> Option<i32> {
        self.facts(value)?.dtype
    }

    /// Shape of `value`.
    pub fn shape(&self, value: &str) -> Option<&Shape> {
        self.facts(value)?.shape.as_ref()
    }

    /// Constant value of `value`.
    pub fn value(&self, value: &str) -> Option<&Const> {
        self.facts(value)?.value.as_ref()
    }
}

fn declared(index: &GraphIndex, name: &str) -> Facts {
    Facts::typed(index.declared_elem_type(name), index.declared_shape(name))
}

/// Inferred facts, with unknown parts taken from the declared ones.
fn merge(mut inferred: Facts, declared: Facts) -> Facts {
    if inferred.dtype.is_none() {
        inferred.dtype = declared.dtype;
    }
    match (&mut inferred.shape, declared.shape) {
        (None, d) => inferred.shape = d,
        (Some(s), Some(d)) if s.len() == d.len() => {
            for (a, b) in s.iter_mut().zip(d) {
                if a.is_none() {
                    *a = b;
                }
            }
        }
        _ => {}
    }
    inferred
}

struct Ctx<'a> {
    model: &'a OnnxModel,
    opset: i64,
}

/// Ops whose output has the shape and type of their first input.
const SAME_AS_INPUT: &[&str] = &[
    "Identity",
    "Sqrt",
    "Neg",
    "Abs",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Erf",
    "Sin",
    "Cos",
    "Softplus",
    "Gelu",
    "Round",
    "Sign",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "BatchNormalization",
    "Clip",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "HardSigmoid",
    "HardSwish",
    "Mish",
    "Trilu",
    "CumSum",
    "Dropout",
    "Hardmax",
    "Shrink",
    "ThresholdedRelu",
    "LpNormalization",
    "MeanVarianceNormalization",
];

/// Elementwise ops with broadcasting whose output has the inputs' type.
const BROADCAST_ARITH: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Sum", "Mean", "PRelu"];

/// Elementwise ops with broadcasting whose output is bool.
const BROADCAST_BOOL: &[&str] = &["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"];

const REDUCE: &[&str] = &[
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
];

/// Output shapes of the attention ops the passes emit: ONNX `Attention` (opset 23) and
/// `com.microsoft::MultiHeadAttention`, whose output has the query's leading dims and the value's width.
fn attention_output(q: &Facts, v: Option<&Facts>) -> Facts {
    let shape = match (&q.shape, v.and_then(|v| v.shape.as_ref())) {
        (Some(q), Some(v)) if q.len() == v.len() && q.len() >= 3 => {
            let mut out = q.clone();
            *out.last_mut().expect("rank >= 3") = *v.last().expect("rank >= 3");
            Some(out)
        }
        // Packed QKV ([b, s, heads, 3, head_dim]) into MultiHeadAttention: [b, s, heads * head_dim].
        (Some(q), None) if q.len() == 5 => Some(vec![q[0], q[1], q[2].zip(q[4]).map(|(h, d)| h * d)]),
        _ => None,
    };
    Facts::typed(q.dtype, shape)
}

/// Facts for the `com.microsoft` ops dfast's passes emit.
fn infer_contrib(node: &NodeProto, ins: &[&Facts]) -> Vec<Facts> {
    let input = |k: usize| ins.get(k).copied().filter(|_| node.input.get(k).is_some_and(|n| !n.is_empty()));
    let Some(x) = input(0) else { return vec![] };
    match node.op_type() {
        "MultiHeadAttention" => vec![attention_output(x, input(2))],
        "MatMulIntegerToFloat" | "DynamicQuantizeMatMul" => {
            let Some(b) = input(1) else { return vec![] };
            vec![Facts::typed(Some(dtype::FLOAT), matmul_shape(x.shape.as_ref(), b.shape.as_ref()))]
        }
        _ => vec![],
    }
}

/// The `axes` of Squeeze / Reduce*: from input 1 (newer opsets) or the attribute. `Some(None)`: no axes
/// given; `None`: given as an input whose value is unknown.
fn axes_of(node: &NodeProto, axes_input: Option<&Facts>, from_input: bool) -> Option<Option<Vec<i64>>> {
    if !from_input {
        return Some(attr_ints(node, "axes").map(<[i64]>::to_vec));
    }
    match axes_input {
        Some(f) => f.ints().map(Some),
        None => Some(None),
    }
}

fn infer_node(node: &NodeProto, ins: &[&Facts], ctx: &Ctx) -> Vec<Facts> {
    let op = node.op_type();
    let input = |k: usize| ins.get(k).copied().filter(|_| node.input.get(k).is_some_and(|n| !n.is_empty()));
    let Some(x) = input(0).cloned().or_else(|| (op == "Constant").then(Facts::default)) else {
        return vec![];
    };
    let one = |f: Facts| vec![f];
    match op {
        "Constant" => match constant_node_tensor(node).and_then(|t| {
            Const::from_tensor(ctx.model, &t)
                .map(Facts::of_const)
                .or_else(|| Some(Facts::typed(Some(t.data_type()), Some(t.dims.iter().map(|&d| Some(d)).collect()))))
        }) {
            Some(f) => one(f),
            None => vec![],
        },
        "Identity" => one(x),
        "Dropout" => {
            let mask = Facts::typed(Some(dtype::BOOL), x.shape.clone());
            vec![Facts::typed(x.dtype, x.shape.clone()), mask]
        }
        "Cast" => {
            let Some(to) = attr_int(node, "to").and_then(|t| i32::try_from(t).ok()) else { return vec![] };
            let value = x.value.as_ref().and_then(|c| c.cast(to));
            let partial = if tensor::is_int(to) && to != dtype::BOOL { x.partial.clone() } else { None };
            match value {
                Some(c) => one(Facts::of_const(c)),
                None => one(Facts { dtype: Some(to), shape: x.shape.clone(), value: None, partial }),
            }
        }
        "Shape" => {
            let Some(shape) = &x.shape else { return one(Facts::typed(Some(dtype::INT64), Some(vec![None]))) };
            let r = shape.len() as i64;
            let clamp = |v: i64| if v < 0 { (v + r).clamp(0, r) } else { v.clamp(0, r) } as usize;
            let start = clamp(attr_int(node, "start").unwrap_or(0));
            let end = clamp(attr_int(node, "end").unwrap_or(r));
            let elems = if start < end { shape[start..end].to_vec() } else { vec![] };
            one(Facts::of_partial(elems, false, dtype::INT64))
        }
        "Size" => match x.static_shape() {
            Some(s) => match s.iter().try_fold(1i64, |a, &d| a.checked_mul(d as i64)) {
                Some(n) => one(Facts::of_const(Const::int64(ArrayD::from_elem(IxDyn(&[]), n)))),
                None => vec![],
            },
            None => one(Facts::typed(Some(dtype::INT64), Some(vec![]))),
        },
        "Gather" => gather(node, &x, input(1)),
        "Unsqueeze" => {
            let axes = if ctx.opset >= 13 {
                input(1).and_then(Facts::ints)
            } else {
                attr_ints(node, "axes").map(<[i64]>::to_vec)
            };
            unsqueeze(&x, axes)
        }
        "Squeeze" => {
            let Some(axes) = axes_of(node, input(1), ctx.opset >= 13) else {
                return one(Facts::typed(x.dtype, None));
            };
            squeeze(&x, axes)
        }
        "Concat" => concat(node, ins),
        "Slice" => slice(node, ins, ctx),
        "Reshape" => reshape(node, &x, input(1)),
        "Flatten" => {
            let Some(shape) = &x.shape else { return one(Facts::typed(x.dtype, Some(vec![None, None]))) };
            let r = shape.len() as i64;
            let axis = attr_int(node, "axis").unwrap_or(1);
            let axis = if axis < 0 { axis + r } else { axis };
            if !(0..=r).contains(&axis) {
                return vec![];
            }
            let prod = |d: &[Dim]| d.iter().try_fold(1i64, |a, v| v.and_then(|v| a.checked_mul(v)));
            let out = vec![prod(&shape[..axis as usize]), prod(&shape[axis as usize..])];
            one(with_value(x.dtype, out, x.value.as_ref(), |c, s| restructure(c, &Plan::Reshape(s.to_vec()))))
        }
        "Transpose" => {
            let Some(shape) = &x.shape else { return one(Facts::typed(x.dtype, None)) };
            let perm: Vec<usize> = match attr_ints(node, "perm") {
                Some(p) => match p.iter().map(|&v| usize::try_from(v).ok()).collect::<Option<Vec<_>>>() {
                    Some(p) => p,
                    None => return vec![],
                },
                None => (0..shape.len()).rev().collect(),
            };
            if !is_permutation(&perm, shape.len()) {
                return vec![];
            }
            let out: Shape = perm.iter().map(|&p| shape[p]).collect();
            one(with_value(x.dtype, out, x.value.as_ref(), |c, _| restructure(c, &Plan::Transpose(perm.clone()))))
        }
        "Expand" => {
            let Some(target) = input(1).and_then(Facts::elems) else { return one(Facts::typed(x.dtype, None)) };
            let target: Shape = target.into_iter().map(|d| d.filter(|&v| v >= 0)).collect();
            let Some(xs) = &x.shape else { return one(Facts::typed(x.dtype, None)) };
            let Some(out) = broadcast_shapes(&[xs, &target]) else { return vec![] };
            one(with_value(x.dtype, out, x.value.as_ref(), |c, s| restructure(c, &Plan::Expand(s.to_vec()))))
        }
        "ConstantOfShape" => {
            let fill = attr(node, "value").and_then(|a| a.t.as_ref()).and_then(|t| Const::from_tensor(ctx.model, t));
            let dt = fill.as_ref().map(|c| c.dtype).unwrap_or(dtype::FLOAT);
            let Some(dims) = x.elems() else { return one(Facts::typed(Some(dt), None)) };
            let shape: Shape = dims.iter().map(|d| d.filter(|&v| v >= 0)).collect();
            let static_dims: Option<Vec<usize>> = shape.iter().map(|d| d.map(|v| v as usize)).collect();
            match static_dims {
                Some(s)
                    if s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_some_and(|n| n <= MAX_CONST_ELEMENTS) =>
                {
                    let values = match fill.map(|c| c.values) {
                        Some(Values::Int(a)) => {
                            Values::Int(ArrayD::from_elem(IxDyn(&s), a.iter().next().copied().unwrap_or(0)))
                        }
                        Some(Values::Float(a)) => {
                            Values::Float(ArrayD::from_elem(IxDyn(&s), a.iter().next().copied().unwrap_or(0.0)))
                        }
                        None => Values::Float(ArrayD::from_elem(IxDyn(&s), 0.0)),
                    };
                    one(Facts::of_const(Const { dtype: dt, values }))
                }
                _ => one(Facts::typed(Some(dt), Some(shape))),
            }
        }
        "Range" => {
            let (Some(start), Some(limit), Some(delta)) =
                (x.value.as_ref(), input(1).and_then(|f| f.value.as_ref()), input(2).and_then(|f| f.value.as_ref()))
            else {
                return one(Facts::typed(x.dtype, Some(vec![None])));
            };
            one(range(start, limit, delta)
                .map(Facts::of_const)
                .unwrap_or_else(|| Facts::typed(x.dtype, Some(vec![None]))))
        }
        "Not" => {
            let value = x.value.as_ref().and_then(|c| match &c.values {
                Values::Int(a) => Some(Const { dtype: dtype::BOOL, values: Values::Int(a.mapv(|v| (v == 0) as i64)) }),
                Values::Float(_) => None,
            });
            one(value.map(Facts::of_const).unwrap_or_else(|| Facts::typed(Some(dtype::BOOL), x.shape.clone())))
        }
        "Where" => {
            let (Some(a), Some(b)) = (input(1), input(2)) else { return vec![] };
            let shape = match (&x.shape, &a.shape, &b.shape) {
                (Some(c), Some(p), Some(q)) => broadcast_shapes(&[c, p, q]),
                _ => None,
            };
            let dt = a.dtype.or(b.dtype);
            let value = match (&x.value, &a.value, &b.value, &shape) {
                (Some(c), Some(p), Some(q), Some(_)) => where_const(c, p, q),
                _ => None,
            };
            one(value.map(Facts::of_const).unwrap_or_else(|| Facts::typed(dt, shape)))
        }
        "Attention" => one(attention_output(&x, input(2))),
        "DynamicQuantizeLinear" => vec![
            Facts::typed(Some(dtype::UINT8), x.shape.clone()),
            Facts::typed(Some(dtype::FLOAT), Some(vec![])),
            Facts::typed(Some(dtype::UINT8), Some(vec![])),
        ],
        "MatMul" | "MatMulInteger" => {
            let Some(b) = input(1) else { return vec![] };
            let dt = if op == "MatMul" { x.dtype } else { Some(dtype::INT32) };
            one(Facts::typed(dt, matmul_shape(x.shape.as_ref(), b.shape.as_ref())))
        }
        "Gemm" => {
            let Some(b) = input(1) else { return vec![] };
            let (Some(xs), Some(bs)) = (&x.shape, &b.shape) else {
                return one(Facts::typed(x.dtype, Some(vec![None, None])));
            };
            if xs.len() != 2 || bs.len() != 2 {
                return vec![];
            }
            let m = if attr_int(node, "transA").unwrap_or(0) != 0 { xs[1] } else { xs[0] };
            let n = if attr_int(node, "transB").unwrap_or(0) != 0 { bs[0] } else { bs[1] };
            one(Facts::typed(x.dtype, Some(vec![m, n])))
        }
        "Conv" => {
            one(Facts::typed(x.dtype, conv_shape(node, x.shape.as_ref(), input(1).and_then(|w| w.shape.as_ref()))))
        }
        "Resize" | "Upsample" => {
            let Some(xs) = &x.shape else { return one(Facts::typed(x.dtype, None)) };
            let sizes = if op == "Resize" { input(3).and_then(Facts::ints) } else { None };
            let scales_input = if op == "Resize" { input(2) } else { input(1) };
            let scales = scales_input.and_then(|f| f.value.as_ref()).map(Const::floats).filter(|s| !s.is_empty());
            let out: Shape = match (sizes, scales) {
                (Some(s), _) if s.len() == xs.len() => s.into_iter().map(Some).collect(),
                (_, Some(sc)) if sc.len() == xs.len() => xs
                    .iter()
                    .zip(sc)
                    .map(|(d, s)| {
                        if s == 1.0 {
                            *d
                        } else {
                            d.map(|d| (d as f64 * s).floor())
                                .filter(|v| v.is_finite() && *v >= 0.0 && *v < 9e18)
                                .map(|v| v as i64)
                        }
                    })
                    .collect(),
                _ => vec![None; xs.len()],
            };
            one(Facts::typed(x.dtype, Some(out)))
        }
        "ArgMax" | "ArgMin" => {
            let shape = x.shape.as_ref().and_then(|s| {
                let axis = normalize_axis(attr_int(node, "axis").unwrap_or(0), s.len())?;
                Some(reduce_shape(s, &[axis], attr_int(node, "keepdims").unwrap_or(1) != 0))
            });
            one(Facts::typed(Some(dtype::INT64), shape))
        }
        _ if REDUCE.contains(&op) => {
            let axes_from_input = ctx.opset >= 18 || (op == "ReduceSum" && ctx.opset >= 13);
            let Some(axes) = axes_of(node, input(1), axes_from_input) else {
                return one(Facts::typed(x.dtype, None));
            };
            let keep = attr_int(node, "keepdims").unwrap_or(1) != 0;
            let noop = attr_int(node, "noop_with_empty_axes").unwrap_or(0) != 0;
            let shape = x.shape.as_ref().and_then(|s| {
                let axes: Vec<usize> = match axes {
                    Some(a) if !a.is_empty() => a.iter().map(|&v| normalize_axis(v, s.len())).collect::<Option<_>>()?,
                    _ if noop => return Some(s.clone()),
                    _ => (0..s.len()).collect(),
                };
                Some(reduce_shape(s, &axes, keep))
            });
            one(Facts::typed(x.dtype, shape))
        }
        _ if SAME_AS_INPUT.contains(&op) => {
            let value = x.value.as_ref().and_then(|c| unary(op, c));
            one(value.map(Facts::of_const).unwrap_or_else(|| Facts::typed(x.dtype, x.shape.clone())))
        }
        _ if BROADCAST_ARITH.contains(&op) || BROADCAST_BOOL.contains(&op) => {
            let present: Vec<&Facts> = (0..node.input.len()).filter_map(input).collect();
            let shapes: Option<Vec<&Shape>> = present.iter().map(|f| f.shape.as_ref()).collect();
            let shape = shapes.and_then(|s| broadcast_shapes(&s));
            let is_bool = BROADCAST_BOOL.contains(&op);
            let dt = if is_bool { Some(dtype::BOOL) } else { present.iter().find_map(|f| f.dtype) };
            let consts: Option<Vec<&Const>> = present.iter().map(|f| f.value.as_ref()).collect();
            if let (Some(consts), Some(_)) = (consts, &shape) {
                let folded = consts[1..].iter().try_fold(consts[0].clone(), |acc, c| binary(op, &acc, c));
                if let Some(c) = folded.filter(|_| present.len() == 2 || matches!(op, "Max" | "Min" | "Sum")) {
                    return one(Facts::of_const(c));
                }
            }
            // Integer shape arithmetic on partially known 1-d values (e.g. Shape(x) * [1, 1, 2, 2]).
            if present.len() == 2
                && matches!(op, "Add" | "Sub" | "Mul" | "Div")
                && dt.is_some_and(tensor::is_int)
                && let (Some(a), Some(b)) = (present[0].elems(), present[1].elems())
            {
                let n = a.len().max(b.len());
                if (a.len() == n || a.len() == 1) && (b.len() == n || b.len() == 1) {
                    let scalar = present[0].is_scalar() && present[1].is_scalar();
                    let pick = |v: &[Option<i64>], i: usize| if v.len() == 1 { v[0] } else { v[i] };
                    let elems: Vec<Option<i64>> = (0..n)
                        .map(|i| match (pick(&a, i), pick(&b, i)) {
                            (Some(p), Some(q)) => int_binary(op, p, q).map(|v| wrap_int(dt.unwrap_or(dtype::INT64), v)),
                            _ => None,
                        })
                        .collect();
                    return one(Facts::of_partial(elems, scalar, dt.unwrap_or(dtype::INT64)));
                }
            }
            one(Facts::typed(dt, shape))
        }
        "Pad" => {
            let Some(xs) = &x.shape else { return one(Facts::typed(x.dtype, None)) };
            let pads = if ctx.opset >= 11 {
                input(1).and_then(Facts::ints)
            } else {
                attr_ints(node, "pads").map(<[i64]>::to_vec)
            };
            let axes_given = ctx.opset >= 18 && input(3).is_some();
            let out: Shape = match pads {
                Some(p) if p.len() == 2 * xs.len() && !axes_given => xs
                    .iter()
                    .enumerate()
                    .map(|(i, d)| d.and_then(|d| d.checked_add(p[i])?.checked_add(p[i + xs.len()])))
                    .collect(),
                _ => vec![None; xs.len()],
            };
            one(Facts::typed(x.dtype, Some(out)))
        }
        "Tile" => {
            let Some(xs) = &x.shape else { return one(Facts::typed(x.dtype, None)) };
            let out: Shape = match input(1).and_then(Facts::ints) {
                Some(r) if r.len() == xs.len() => {
                    xs.iter().zip(r).map(|(d, r)| d.and_then(|d| d.checked_mul(r))).collect()
                }
                _ => vec![None; xs.len()],
            };
            one(Facts::typed(x.dtype, Some(out)))
        }
        _ => vec![],
    }
}

/// Facts for a structural op: the computed shape and, when the input is constant, the value.
fn with_value(
    dt: Option<i32>,
    shape: Shape,
    value: Option<&Const>,
    f: impl Fn(&Const, &[usize]) -> Option<Const>,
) -> Facts {
    let static_shape: Option<Vec<usize>> = shape.iter().map(|d| d.and_then(|v| usize::try_from(v).ok())).collect();
    if let (Some(c), Some(s)) = (value, &static_shape)
        && let Some(out) = f(c, s)
    {
        return Facts::of_const(out);
    }
    Facts::typed(dt, Some(shape))
}

/// Applies one structural operation to either kind of constant.
fn restructure(c: &Const, plan: &Plan) -> Option<Const> {
    let values = match &c.values {
        Values::Float(a) => Values::Float(plan.run(a)?),
        Values::Int(a) => Values::Int(plan.run(a)?),
    };
    Some(Const { dtype: c.dtype, values })
}

/// A planned structural operation.
enum Plan {
    Reshape(Vec<usize>),
    Transpose(Vec<usize>),
    /// Select these indices along each axis in turn.
    Select(Vec<Vec<usize>>),
    /// Select along one axis, then reshape.
    Gather {
        axis: usize,
        indices: Vec<usize>,
        shape: Vec<usize>,
    },
    Expand(Vec<usize>),
}

impl Plan {
    fn run<T: Clone>(&self, a: &ArrayD<T>) -> Option<ArrayD<T>> {
        match self {
            Plan::Reshape(s) => a.as_standard_layout().into_owned().into_shape_with_order(IxDyn(s)).ok(),
            Plan::Transpose(p) => Some(a.clone().permuted_axes(IxDyn(p)).as_standard_layout().into_owned()),
            Plan::Select(per_axis) => {
                let mut out = a.clone();
                for (axis, idx) in per_axis.iter().enumerate() {
                    out = out.select(Axis(axis), idx);
                }
                Some(out)
            }
            Plan::Gather { axis, indices, shape } => a
                .select(Axis(*axis), indices)
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(shape))
                .ok(),
            Plan::Expand(s) => {
                let target = broadcast_static(a.shape(), s)?;
                a.broadcast(IxDyn(&target)).map(|v| v.to_owned())
            }
        }
    }
}

fn is_permutation(perm: &[usize], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank && perm.iter().all(|&p| p < rank && !std::mem::replace(&mut seen[p], true))
}

fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

fn reduce_shape(s: &[Dim], axes: &[usize], keep: bool) -> Shape {
    s.iter()
        .enumerate()
        .filter_map(|(i, d)| if axes.contains(&i) { keep.then_some(Some(1)) } else { Some(*d) })
        .collect()
}

/// Numpy-style broadcast of several shapes; None when they cannot broadcast.
pub fn broadcast_shapes(shapes: &[&Shape]) -> Option<Shape> {
    let rank = shapes.iter().map(|s| s.len()).max()?;
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let mut result: Dim = Some(1);
        let mut any_unknown = false;
        for s in shapes {
            let off = rank - s.len();
            if i < off {
                continue;
            }
            match s[i - off] {
                Some(1) => {}
                Some(d) => match result {
                    Some(r) if r != 1 && r != d => return None,
                    _ => result = Some(d),
                },
                None => any_unknown = true,
            }
        }
        out.push(if result == Some(1) && any_unknown { None } else { result });
    }
    Some(out)
}

fn broadcast_static(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let sa: Shape = a.iter().map(|&d| Some(d as i64)).collect();
    let sb: Shape = b.iter().map(|&d| Some(d as i64)).collect();
    broadcast_shapes(&[&sa, &sb])?.into_iter().map(|d| d.map(|v| v as usize)).collect()
}

fn gather(node: &NodeProto, data: &Facts, indices: Option<&Facts>) -> Vec<Facts> {
    let Some(indices) = indices else { return vec![] };
    let Some(ds) = &data.shape else { return vec![Facts::typed(data.dtype, None)] };
    let Some(axis) = normalize_axis(attr_int(node, "axis").unwrap_or(0), ds.len()) else { return vec![] };
    let Some(is) = &indices.shape else { return vec![Facts::typed(data.dtype, None)] };
    let shape: Shape = ds[..axis].iter().chain(is.iter()).chain(ds[axis + 1..].iter()).copied().collect();
    let Some(idx) = indices.value.as_ref().and_then(Const::ints) else {
        return vec![Facts::typed(data.dtype, Some(shape))];
    };
    let norm = |i: i64, n: i64| {
        let j = if i < 0 { i + n } else { i };
        (0..n).contains(&j).then_some(j as usize)
    };
    // Picking known elements out of a partially known shape vector.
    if let (Some(elems), true) = (data.partial.as_ref(), ds.len() == 1) {
        let n = elems.len() as i64;
        let Some(picked) = idx.iter().map(|&i| norm(i, n).map(|j| elems[j])).collect::<Option<Vec<_>>>() else {
            return vec![];
        };
        if is.len() <= 1 {
            return vec![Facts::of_partial(picked, is.is_empty(), data.dtype.unwrap_or(dtype::INT64))];
        }
    }
    let (Some(c), Some(static_shape)) =
        (&data.value, shape.iter().map(|d| d.map(|v| v as usize)).collect::<Option<Vec<_>>>())
    else {
        return vec![Facts::typed(data.dtype, Some(shape))];
    };
    let n = c.shape()[axis] as i64;
    let Some(indices) = idx.iter().map(|&i| norm(i, n)).collect::<Option<Vec<_>>>() else { return vec![] };
    match restructure(c, &Plan::Gather { axis, indices, shape: static_shape }) {
        Some(v) => vec![Facts::of_const(v)],
        None => vec![Facts::typed(data.dtype, Some(shape))],
    }
}

fn unsqueeze(x: &Facts, axes: Option<Vec<i64>>) -> Vec<Facts> {
    let (Some(shape), Some(axes)) = (&x.shape, axes) else { return vec![Facts::typed(x.dtype, None)] };
    let out_rank = shape.len() + axes.len();
    let Some(mut axes) = axes.iter().map(|&a| normalize_axis(a, out_rank)).collect::<Option<Vec<_>>>() else {
        return vec![];
    };
    axes.sort_unstable();
    axes.dedup();
    if axes.len() + shape.len() != out_rank {
        return vec![];
    }
    let mut rest = shape.iter();
    let out: Shape =
        (0..out_rank).map(|i| if axes.contains(&i) { Some(1) } else { *rest.next().expect("ranks add up") }).collect();
    if let (Some(p), true) = (&x.partial, out.len() == 1) {
        return vec![Facts::of_partial(p.clone(), false, x.dtype.unwrap_or(dtype::INT64))];
    }
    vec![with_value(x.dtype, out, x.value.as_ref(), |c, s| restructure(c, &Plan::Reshape(s.to_vec())))]
}

fn squeeze(x: &Facts, axes: Option<Vec<i64>>) -> Vec<Facts> {
    let Some(shape) = &x.shape else { return vec![Facts::typed(x.dtype, None)] };
    let axes: Vec<usize> = match axes {
        Some(a) => match a.iter().map(|&v| normalize_axis(v, shape.len())).collect::<Option<Vec<_>>>() {
            Some(a) => a,
            None => return vec![],
        },
        None => {
            if shape.iter().any(Option::is_none) {
                return vec![Facts::typed(x.dtype, None)];
            }
            (0..shape.len()).filter(|&i| shape[i] == Some(1)).collect()
        }
    };
    let out: Shape = shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| *d).collect();
    if let (Some(p), true) = (&x.partial, out.is_empty()) {
        return vec![Facts::of_partial(p.clone(), true, x.dtype.unwrap_or(dtype::INT64))];
    }
    vec![with_value(x.dtype, out, x.value.as_ref(), |c, s| restructure(c, &Plan::Reshape(s.to_vec())))]
}

fn concat(node: &NodeProto, ins: &[&Facts]) -> Vec<Facts> {
    let ins: Vec<&Facts> = node.input.iter().zip(ins).filter(|(n, _)| !n.is_empty()).map(|(_, f)| *f).collect();
    let dt = ins.iter().find_map(|f| f.dtype);
    let Some(shapes) = ins.iter().map(|f| f.shape.as_ref()).collect::<Option<Vec<_>>>() else {
        return vec![Facts::typed(dt, None)];
    };
    let Some(rank) = shapes.first().map(|s| s.len()) else { return vec![] };
    if shapes.iter().any(|s| s.len() != rank) {
        return vec![];
    }
    let Some(axis) = attr_int(node, "axis").and_then(|a| normalize_axis(a, rank)) else { return vec![] };
    let out: Shape = (0..rank)
        .map(|i| {
            if i == axis {
                shapes.iter().try_fold(0i64, |acc, s| s[i].and_then(|d| acc.checked_add(d)))
            } else {
                shapes.iter().find_map(|s| s[i])
            }
        })
        .collect();
    if rank == 1
        && let Some(parts) = ins.iter().map(|f| f.elems()).collect::<Option<Vec<_>>>()
    {
        return vec![Facts::of_partial(parts.concat(), false, dt.unwrap_or(dtype::INT64))];
    }
    if let Some(consts) = ins.iter().map(|f| f.value.as_ref()).collect::<Option<Vec<_>>>() {
        let values = match &consts[0].values {
            Values::Float(_) => {
                let arrays: Option<Vec<_>> = consts
                    .iter()
                    .map(|c| if let Values::Float(a) = &c.values { Some(a.view()) } else { None })
                    .collect();
                arrays.and_then(|a| ndarray::concatenate(Axis(axis), &a).ok()).map(Values::Float)
            }
            Values::Int(_) => {
                let arrays: Option<Vec<_>> =
                    consts.iter().map(|c| if let Values::Int(a) = &c.values { Some(a.view()) } else { None }).collect();
                arrays.and_then(|a| ndarray::concatenate(Axis(axis), &a).ok()).map(Values::Int)
            }
        };
        if let Some(values) = values {
            return vec![Facts::of_const(Const { dtype: consts[0].dtype, values })];
        }
    }
    vec![Facts::typed(dt, Some(out))]
}

/// Indices an ONNX `Slice` takes along an axis of size `d`.
fn slice_indices(d: i64, start: i64, end: i64, step: i64) -> Vec<usize> {
    let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (mut s, e) = (norm(start), norm(end));
    let mut out = Vec::new();
    if step > 0 {
        s = s.clamp(0, d);
        let e = e.clamp(0, d);
        while s < e {
            out.push(s as usize);
            s += step;
        }
    } else if step < 0 {
        s = s.clamp(0, (d - 1).max(0));
        let e = e.clamp(-1, d - 1);
        while s > e && d > 0 {
            out.push(s as usize);
            s += step;
        }
    }
    out
}

fn slice(node: &NodeProto, ins: &[&Facts], ctx: &Ctx) -> Vec<Facts> {
    let x = ins[0];
    let Some(shape) = &x.shape else { return vec![Facts::typed(x.dtype, None)] };
    let rank = shape.len();
    let get = |k: usize| ins.get(k).filter(|_| node.input.get(k).is_some_and(|n| !n.is_empty()));
    let params = if ctx.opset >= 10 {
        let starts = get(1).and_then(|f| f.ints());
        let ends = get(2).and_then(|f| f.ints());
        let axes = match get(3) {
            Some(f) => f.ints(),
            None => starts.as_ref().map(|s| (0..s.len() as i64).collect()),
        };
        let steps = match get(4) {
            Some(f) => f.ints(),
            None => starts.as_ref().map(|s| vec![1; s.len()]),
        };
        starts.zip(ends).zip(axes).zip(steps).map(|(((a, b), c), d)| (a, b, c, d))
    } else {
        let starts = attr_ints(node, "starts").map(<[i64]>::to_vec);
        let ends = attr_ints(node, "ends").map(<[i64]>::to_vec);
        let axes = attr_ints(node, "axes")
            .map(<[i64]>::to_vec)
            .or_else(|| starts.as_ref().map(|s| (0..s.len() as i64).collect()));
        starts.zip(ends).zip(axes).map(|((a, b), c)| {
            let n = a.len();
            (a, b, c, vec![1; n])
        })
    };
    let Some((starts, ends, axes, steps)) = params else { return vec![Facts::typed(x.dtype, Some(vec![None; rank]))] };
    if starts.len() != ends.len() || starts.len() != axes.len() || starts.len() != steps.len() || steps.contains(&0) {
        return vec![];
    }
    // Per axis: the indices taken, or None when the axis size is unknown.
    let mut per_axis: Vec<Option<Vec<usize>>> = shape.iter().map(|d| d.map(|d| (0..d as usize).collect())).collect();
    for k in 0..starts.len() {
        let Some(axis) = normalize_axis(axes[k], rank) else { return vec![] };
        per_axis[axis] = shape[axis].map(|d| slice_indices(d, starts[k], ends[k], steps[k]));
    }
    let out: Shape = per_axis.iter().map(|p| p.as_ref().map(|v| v.len() as i64)).collect();
    if let (Some(p), 1) = (&x.partial, rank)
        && let Some(idx) = &per_axis[0]
    {
        return vec![Facts::of_partial(idx.iter().map(|&i| p[i]).collect(), false, x.dtype.unwrap_or(dtype::INT64))];
    }
    if let (Some(c), Some(sel)) = (&x.value, per_axis.iter().cloned().collect::<Option<Vec<_>>>())
        && let Some(v) = restructure(c, &Plan::Select(sel))
    {
        return vec![Facts::of_const(v)];
    }
    vec![Facts::typed(x.dtype, Some(out))]
}

fn reshape(node: &NodeProto, x: &Facts, target: Option<&Facts>) -> Vec<Facts> {
    let Some(target) = target.and_then(Facts::elems) else { return vec![Facts::typed(x.dtype, None)] };
    let allowzero = attr_int(node, "allowzero").unwrap_or(0) != 0;
    let mut out: Shape = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, t) in target.iter().enumerate() {
        out.push(match t {
            Some(0) if !allowzero => x.shape.as_ref().and_then(|s| s.get(i).copied().flatten()),
            Some(-1) => {
                if infer_at.replace(i).is_some() {
                    return vec![];
                }
                None
            }
            Some(d) if *d >= 0 => Some(*d),
            Some(_) => return vec![],
            None => None,
        });
    }
    if let Some(i) = infer_at {
        let total = x.static_shape().and_then(|s| s.iter().try_fold(1i64, |a, &d| a.checked_mul(d as i64)));
        let rest: Option<i64> = out
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .try_fold(1i64, |a, (_, d)| d.and_then(|d| a.checked_mul(d)));
        if let (Some(t), Some(r)) = (total, rest)
            && r > 0
            && t % r == 0
        {
            out[i] = Some(t / r);
        }
    }
    if let (Some(p), 1) = (&x.partial, out.len())
        && matches!(x.rank(), Some(0 | 1))
    {
        return vec![Facts::of_partial(p.clone(), false, x.dtype.unwrap_or(dtype::INT64))];
    }
    vec![with_value(x.dtype, out, x.value.as_ref(), |c, s| restructure(c, &Plan::Reshape(s.to_vec())))]
}

fn matmul_shape(a: Option<&Shape>, b: Option<&Shape>) -> Option<Shape> {
    let (a, b) = (a?, b?);
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let a2: Shape = if a.len() == 1 { vec![Some(1), a[0]] } else { a.clone() };
    let b2: Shape = if b.len() == 1 { vec![b[0], Some(1)] } else { b.clone() };
    let batch = broadcast_shapes(&[&a2[..a2.len() - 2].to_vec(), &b2[..b2.len() - 2].to_vec()])?;
    let mut out = batch;
    if a.len() > 1 {
        out.push(a2[a2.len() - 2]);
    }
    if b.len() > 1 {
        out.push(b2[b2.len() - 1]);
    }
    Some(out)
}

fn conv_shape(node: &NodeProto, x: Option<&Shape>, w: Option<&Shape>) -> Option<Shape> {
    let rank = w.map(Vec::len).or(x.map(Vec::len))?;
    if rank < 3 {
        return None;
    }
    let spatial = rank - 2;
    let mut out: Shape = vec![None; rank];
    out[0] = x.and_then(|s| s.first().copied().flatten());
    out[1] = w.and_then(|s| s[0]);
    let kernel: Vec<Dim> = match attr_ints(node, "kernel_shape") {
        Some(k) if k.len() == spatial => k.iter().map(|&v| Some(v)).collect(),
        _ => w.map(|s| s[2..].to_vec()).unwrap_or_else(|| vec![None; spatial]),
    };
    let strides = attr_ints(node, "strides").map(<[i64]>::to_vec).unwrap_or_else(|| vec![1; spatial]);
    let dilations = attr_ints(node, "dilations").map(<[i64]>::to_vec).unwrap_or_else(|| vec![1; spatial]);
    let pads = attr_ints(node, "pads").map(<[i64]>::to_vec).unwrap_or_else(|| vec![0; 2 * spatial]);
    let auto_pad = super::attr_string(node, "auto_pad").unwrap_or("NOTSET");
    let positive = |v: &[i64]| v.iter().all(|&x| (1..=1 << 20).contains(&x));
    if strides.len() != spatial
        || dilations.len() != spatial
        || pads.len() != 2 * spatial
        || !positive(&strides)
        || !positive(&dilations)
        || pads.iter().any(|p| !(0..=1 << 20).contains(p))
    {
        return Some(out);
    }
    for i in 0..spatial {
        let input = x.and_then(|s| s.get(i + 2).copied().flatten());
        out[i + 2] = match (auto_pad, input, kernel[i]) {
            ("SAME_UPPER" | "SAME_LOWER", Some(d), _) => d.checked_add(strides[i] - 1).map(|v| v / strides[i]),
            ("NOTSET" | "VALID", Some(d), Some(k)) => {
                let (pb, pe) = if auto_pad == "VALID" { (0, 0) } else { (pads[i], pads[i + spatial]) };
                // Sizes come from the file: checked arithmetic, a broken model must not overflow.
                let reach = dilations[i].checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
                let span = d.checked_add(pb + pe)?.checked_sub(reach)?;
                (span >= 0).then(|| span / strides[i] + 1)
            }
            _ => None,
        };
    }
    Some(out)
}

fn range(start: &Const, limit: &Const, delta: &Const) -> Option<Const> {
    if start.len() != 1 || limit.len() != 1 || delta.len() != 1 {
        return None;
    }
    match (&start.values, &limit.values, &delta.values) {
        (Values::Int(s), Values::Int(l), Values::Int(d)) => {
            let (s, l, d) = (s.iter().next()?, l.iter().next()?, d.iter().next()?);
            if *d == 0 {
                return None;
            }
            let n = ((l - s) as f64 / *d as f64).ceil().max(0.0) as usize;
            if n > MAX_CONST_ELEMENTS {
                return None;
            }
            let v: Vec<i64> = (0..n as i64).map(|i| s + i * d).collect();
            Some(Const { dtype: start.dtype, values: Values::Int(ArrayD::from_shape_vec(IxDyn(&[n]), v).ok()?) })
        }
        (Values::Float(s), Values::Float(l), Values::Float(d)) => {
            let (s, l, d) = (*s.iter().next()?, *l.iter().next()?, *d.iter().next()?);
            if d == 0.0 || !((l - s) / d).is_finite() {
                return None;
            }
            let n = ((l - s) / d).ceil().max(0.0) as usize;
            if n > MAX_CONST_ELEMENTS {
                return None;
            }
            let v: Vec<f64> = (0..n).map(|i| round_float(start.dtype, s + i as f64 * d)).collect();
            Some(Const { dtype: start.dtype, values: Values::Float(ArrayD::from_shape_vec(IxDyn(&[n]), v).ok()?) })
        }
        _ => None,
    }
}

fn unary(op: &str, c: &Const) -> Option<Const> {
    let dt = c.dtype;
    let values = match &c.values {
        Values::Float(a) => {
            let f: fn(f64) -> f64 = match op {
                "Identity" => |v| v,
                "Sqrt" => f64::sqrt,
                "Neg" => |v| -v,
                "Abs" => f64::abs,
                "Reciprocal" => |v| 1.0 / v,
                "Floor" => f64::floor,
                "Ceil" => f64::ceil,
                "Relu" => |v| v.max(0.0),
                _ => return None,
            };
            Values::Float(a.mapv(|v| round_float(dt, f(v))))
        }
        Values::Int(a) => {
            let f: fn(i64) -> i64 = match op {
                "Identity" => |v| v,
                "Neg" => i64::wrapping_neg,
                "Abs" => i64::wrapping_abs,
                "Relu" => |v| v.max(0),
                _ => return None,
            };
            Values::Int(a.mapv(|v| wrap_int(dt, f(v))))
        }
    };
    Some(Const { dtype: dt, values })
}

fn int_binary(op: &str, a: i64, b: i64) -> Option<i64> {
    Some(match op {
        "Add" | "Sum" => a.wrapping_add(b),
        "Sub" => a.wrapping_sub(b),
        "Mul" => a.wrapping_mul(b),
        // ONNX Runtime divides integers as C++ does: truncating toward zero.
        "Div" if b != 0 => a.wrapping_div(b),
        "Max" => a.max(b),
        "Min" => a.min(b),
        _ => return None,
    })
}

fn binary(op: &str, a: &Const, b: &Const) -> Option<Const> {
    let target = broadcast_static(a.shape(), b.shape())?;
    let bool_out = BROADCAST_BOOL.contains(&op);
    let dt = if bool_out { dtype::BOOL } else { a.dtype };
    let values = match (&a.values, &b.values) {
        (Values::Float(x), Values::Float(y)) => {
            let (x, y) = (x.broadcast(IxDyn(&target))?, y.broadcast(IxDyn(&target))?);
            if bool_out {
                let f: fn(f64, f64) -> bool = match op {
                    "Equal" => |p, q| p == q,
                    "Less" => |p, q| p < q,
                    "Greater" => |p, q| p > q,
                    "LessOrEqual" => |p, q| p <= q,
                    "GreaterOrEqual" => |p, q| p >= q,
                    _ => return None,
                };
                Values::Int(Zip::from(&x).and(&y).map_collect(|&p, &q| f(p, q) as i64))
            } else {
                let f: fn(f64, f64) -> f64 = match op {
                    "Add" | "Sum" => |p, q| p + q,
                    "Sub" => |p, q| p - q,
                    "Mul" => |p, q| p * q,
                    "Div" => |p, q| p / q,
                    "Pow" => f64::powf,
                    "Max" => f64::max,
                    "Min" => f64::min,
                    _ => return None,
                };
                Values::Float(Zip::from(&x).and(&y).map_collect(|&p, &q| round_float(dt, f(p, q))))
            }
        }
        (Values::Int(x), Values::Int(y)) => {
            let (x, y) = (x.broadcast(IxDyn(&target))?, y.broadcast(IxDyn(&target))?);
            if bool_out {
                let f: fn(i64, i64) -> bool = match op {
                    "Equal" => |p, q| p == q,
                    "Less" => |p, q| p < q,
                    "Greater" => |p, q| p > q,
                    "LessOrEqual" => |p, q| p <= q,
                    "GreaterOrEqual" => |p, q| p >= q,
                    "And" => |p, q| p != 0 && q != 0,
                    "Or" => |p, q| p != 0 || q != 0,
                    "Xor" => |p, q| (p != 0) != (q != 0),
                    _ => return None,
                };
                Values::Int(Zip::from(&x).and(&y).map_collect(|&p, &q| f(p, q) as i64))
            } else {
                let r: Option<ArrayD<i64>> = {
                    let mut failed = false;
                    let arr = Zip::from(&x).and(&y).map_collect(|&p, &q| match int_binary(op, p, q) {
                        Some(v) => wrap_int(dt, v),
                        None => {
                            failed = true;
                            0
                        }
                    });
                    (!failed).then_some(arr)
                };
                Values::Int(r?)
            }
        }
        _ => return None,
    };
    Some(Const { dtype: dt, values })
}

fn where_const(c: &Const, a: &Const, b: &Const) -> Option<Const> {
    let t1 = broadcast_static(c.shape(), a.shape())?;
    let target = broadcast_static(&t1, b.shape())?;
    let Values::Int(cond) = &c.values else { return None };
    let cond = cond.broadcast(IxDyn(&target))?;
    let values = match (&a.values, &b.values) {
        (Values::Float(x), Values::Float(y)) => {
            let (x, y) = (x.broadcast(IxDyn(&target))?, y.broadcast(IxDyn(&target))?);
            Values::Float(Zip::from(&cond).and(&x).and(&y).map_collect(|&k, &p, &q| if k != 0 { p } else { q }))
        }
        (Values::Int(x), Values::Int(y)) => {
            let (x, y) = (x.broadcast(IxDyn(&target))?, y.broadcast(IxDyn(&target))?);
            Values::Int(Zip::from(&cond).and(&x).and(&y).map_collect(|&k, &p, &q| if k != 0 { p } else { q }))
        }
        _ => return None,
    };
    Some(Const { dtype: a.dtype, values })
}

/// True when `node` is one of the ops this module evaluates (used by tests and passes that want to know
/// why a value has no facts).
pub fn understands(node: &NodeProto) -> bool {
    const OTHER: &[&str] = &[
        "Constant",
        "Cast",
        "Shape",
        "Size",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Slice",
        "Reshape",
        "Flatten",
        "Transpose",
        "Expand",
        "ConstantOfShape",
        "Range",
        "Not",
        "Where",
        "MatMul",
        "MatMulInteger",
        "Gemm",
        "Conv",
        "Resize",
        "Upsample",
        "ArgMax",
        "ArgMin",
        "Pad",
        "Tile",
    ];
    let op = node.op_type();
    is_op(node, op)
        && (OTHER.contains(&op)
            || SAME_AS_INPUT.contains(&op)
            || BROADCAST_ARITH.contains(&op)
            || BROADCAST_BOOL.contains(&op)
            || REDUCE.contains(&op))
}
