//! Shape/type rules for elementwise ops: `Identity`, `Dropout`, `Cast`, `Not`, `Where`, the unary ops
//! that keep their input's shape and type, and the broadcasting arithmetic and comparisons.

use super::BROADCAST_BOOL;
use super::constant::{self, Const, Values};
use super::facts::Args;
use super::shapes::broadcast_shapes;
use super::{Facts, Shape};
use crate::onnx::attr_int;
use crate::onnx::tensor::{self, dtype};

pub(super) fn identity(a: &Args) -> Vec<Facts> {
    vec![a.x.clone()]
}

pub(super) fn dropout(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let mask = Facts::typed(Some(dtype::BOOL), x.shape.clone());
    vec![Facts::typed(x.dtype, x.shape.clone()), mask]
}

pub(super) fn cast(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let Some(to) = attr_int(a.node, "to").and_then(|t| i32::try_from(t).ok()) else { return vec![] };
    let value = x.value.as_ref().and_then(|c| c.cast(to));
    let partial = if tensor::is_int(to) && to != dtype::BOOL { x.partial.clone() } else { None };
    match value {
        Some(c) => vec![Facts::of_const(c)],
        None => vec![Facts { dtype: Some(to), shape: x.shape.clone(), value: None, partial }],
    }
}

pub(super) fn not(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let value = x.value.as_ref().and_then(|c| match &c.values {
        Values::Int(a) => Some(Const { dtype: dtype::BOOL, values: Values::Int(a.mapv(|v| (v == 0) as i64)) }),
        Values::Float(_) => None,
    });
    vec![value.map(Facts::of_const).unwrap_or_else(|| Facts::typed(Some(dtype::BOOL), x.shape.clone()))]
}

pub(super) fn where_op(args: &Args) -> Vec<Facts> {
    let x = args.x;
    let (Some(a), Some(b)) = (args.input(1), args.input(2)) else { return vec![] };
    let shape = match (&x.shape, &a.shape, &b.shape) {
        (Some(c), Some(p), Some(q)) => broadcast_shapes(&[c, p, q]),
        _ => None,
    };
    let dt = a.dtype.or(b.dtype);
    let value = match (&x.value, &a.value, &b.value, &shape) {
        (Some(c), Some(p), Some(q), Some(_)) => constant::where_const(c, p, q),
        _ => None,
    };
    vec![value.map(Facts::of_const).unwrap_or_else(|| Facts::typed(dt, shape))]
}

/// Ops whose output has the shape and type of their first input (a few evaluated on constants).
pub(super) fn same_as_input(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let value = x.value.as_ref().and_then(|c| constant::unary(a.op(), c));
    vec![value.map(Facts::of_const).unwrap_or_else(|| Facts::typed(x.dtype, x.shape.clone()))]
}

/// Broadcasting elementwise ops: arithmetic (the inputs' type) and comparisons (bool).
pub(super) fn broadcast(a: &Args) -> Vec<Facts> {
    let op = a.op();
    let present = a.present();
    let shapes: Option<Vec<&Shape>> = present.iter().map(|f| f.shape.as_ref()).collect();
    let shape = shapes.and_then(|s| broadcast_shapes(&s));
    let is_bool = BROADCAST_BOOL.contains(&op);
    let dt = if is_bool { Some(dtype::BOOL) } else { present.iter().find_map(|f| f.dtype) };
    let consts: Option<Vec<&Const>> = present.iter().map(|f| f.value.as_ref()).collect();
    if let (Some(consts), Some(_)) = (consts, &shape) {
        let folded = consts[1..].iter().try_fold(consts[0].clone(), |acc, c| constant::binary(op, &acc, c));
        if let Some(c) = folded.filter(|_| present.len() == 2 || matches!(op, "Max" | "Min" | "Sum")) {
            return vec![Facts::of_const(c)];
        }
    }
    if let Some(f) = partial_arith(op, &present, dt) {
        return vec![f];
    }
    vec![Facts::typed(dt, shape)]
}

/// Integer shape arithmetic on partially known 1-d values (e.g. Shape(x) * [1, 1, 2, 2]).
fn partial_arith(op: &str, present: &[&Facts], dt: Option<i32>) -> Option<Facts> {
    if present.len() != 2 || !matches!(op, "Add" | "Sub" | "Mul" | "Div") || !dt.is_some_and(tensor::is_int) {
        return None;
    }
    let (a, b) = (present[0].elems()?, present[1].elems()?);
    let n = a.len().max(b.len());
    if !((a.len() == n || a.len() == 1) && (b.len() == n || b.len() == 1)) {
        return None;
    }
    let scalar = present[0].is_scalar() && present[1].is_scalar();
    let pick = |v: &[Option<i64>], i: usize| if v.len() == 1 { v[0] } else { v[i] };
    let elems: Vec<Option<i64>> = (0..n)
        .map(|i| match (pick(&a, i), pick(&b, i)) {
            (Some(p), Some(q)) => {
                constant::int_binary(op, p, q).map(|v| constant::wrap_int(dt.unwrap_or(dtype::INT64), v))
            }
            _ => None,
        })
        .collect();
    Some(Facts::of_partial(elems, scalar, dt.unwrap_or(dtype::INT64)))
}
