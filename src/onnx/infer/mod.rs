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
//! Only the ops in one table (`rules::RULES`, which [`understands`] reads too) are understood; anything
//! else gets no facts (beyond its declared value info), so a rewrite that needs facts simply does not
//! fire. Constants are evaluated exactly as ONNX Runtime would: float arithmetic is done in f64 and
//! rounded to the value's type after every op, which for +, -, *, / and sqrt gives the correctly rounded
//! float32 result.
//!
//! The phases live in submodules: `constant` evaluates constants ([`Const`]), `shapes` holds the shape
//! arithmetic, `rules` the table of ops with dispatch, and `elementwise`, `structural`, `compute` and
//! `contrib` (ONNX Runtime's contrib ops the passes emit, and quantization) the per-op shape/type rules.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};

use super::graph::GraphIndex;

mod compute;
mod constant;
mod contrib;
mod elementwise;
mod rules;
mod shapes;
mod structural;

pub use constant::{Const, Values};
pub use rules::understands;
pub use shapes::broadcast_shapes;

/// Constants with more elements than this are not evaluated (folding must not blow up the model).
pub const MAX_CONST_ELEMENTS: usize = 1 << 16;

/// One dimension: its size when known.
pub type Dim = Option<i64>;
/// A shape: one [`Dim`] per axis.
pub type Shape = Vec<Dim>;

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
            let mut outs = rules::infer_node(node, &ins, model, opset);
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
