//! What is known about one value ([`Facts`]) and what an op's rule sees of one node (`Args`).

use ndarray::{ArrayD, IxDyn};

use super::constant::{Const, Values};
use super::{MAX_CONST_ELEMENTS, Shape};
use crate::onnx::OnnxModel;
use crate::onnx::attr_ints;
use crate::onnx::proto::onnx::NodeProto;

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
    pub(super) fn of_partial(elems: Vec<Option<i64>>, scalar: bool, dt: i32) -> Facts {
        let shape = if scalar { vec![] } else { vec![Some(elems.len() as i64)] };
        if elems.iter().all(Option::is_some) && (!scalar || elems.len() == 1) {
            let dims = if scalar { vec![] } else { vec![elems.len()] };
            let values = ArrayD::from_shape_vec(IxDyn(&dims), elems.into_iter().flatten().collect())
                .expect("element count matches the shape");
            return Facts::of_const(Const { dtype: dt, values: Values::Int(values) });
        }
        Facts { dtype: Some(dt), shape: Some(shape), value: None, partial: Some(elems) }
    }

    pub(super) fn typed(dtype: Option<i32>, shape: Option<Shape>) -> Facts {
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

    pub(super) fn is_scalar(&self) -> bool {
        self.rank() == Some(0)
    }
}

/// Facts of nothing: the first input of an op without inputs.
pub(super) static NO_FACTS: Facts = Facts { dtype: None, shape: None, value: None, partial: None };

/// What a rule sees of one node.
pub(super) struct Args<'a> {
    pub node: &'a NodeProto,
    pub ins: &'a [&'a Facts],
    pub model: &'a OnnxModel,
    /// The model's default-domain opset.
    pub opset: i64,
    /// Facts of the first input (empty for an op without inputs).
    pub x: &'a Facts,
}

impl<'a> Args<'a> {
    pub fn op(&self) -> &'a str {
        self.node.op_type()
    }

    /// Facts of input `k`; None when the node does not have it (an empty name omits an optional input).
    pub fn input(&self, k: usize) -> Option<&'a Facts> {
        self.ins.get(k).copied().filter(|_| self.node.input.get(k).is_some_and(|n| !n.is_empty()))
    }

    /// Facts of the inputs the node has, in order (omitted optional inputs left out).
    pub fn present(&self) -> Vec<&'a Facts> {
        (0..self.node.input.len()).filter_map(|k| self.input(k)).collect()
    }
}

/// The `axes` of Squeeze / Reduce*: from input 1 (newer opsets) or the attribute. `Some(None)`: no axes
/// given; `None`: given as an input whose value is unknown.
pub(super) fn axes_of(node: &NodeProto, axes_input: Option<&Facts>, from_input: bool) -> Option<Option<Vec<i64>>> {
    if !from_input {
        return Some(attr_ints(node, "axes").map(<[i64]>::to_vec));
    }
    match axes_input {
        Some(f) => f.ints().map(Some),
        None => Some(None),
    }
}
