//! Shape/type rules for structural ops, which move or reshape elements without computing new ones
//! (`Shape`, `Gather`, `Slice`, `Reshape`, `Concat`, ...), and those that make tensors (`Constant`,
//! `ConstantOfShape`, `Range`). Where the input is a constant, so is the output.

use ndarray::{ArrayD, Axis, IxDyn};

use super::constant::{self, Const, Plan, Values, restructure};
use super::facts::Args;
use super::facts::axes_of;
use super::shapes::{broadcast_shapes, is_permutation, normalize_axis, slice_indices};
use super::{Dim, Facts, MAX_CONST_ELEMENTS, Shape};
use crate::onnx::tensor::dtype;
use crate::onnx::{attr, attr_int, attr_ints, constant_node_tensor};

pub(super) fn constant(a: &Args) -> Vec<Facts> {
    let facts = constant_node_tensor(a.node).map(|t| {
        Const::from_tensor(a.model, &t)
            .map(Facts::of_const)
            .unwrap_or_else(|| Facts::typed(Some(t.data_type()), Some(t.dims.iter().map(|&d| Some(d)).collect())))
    });
    facts.into_iter().collect()
}

pub(super) fn shape(a: &Args) -> Vec<Facts> {
    let Some(shape) = &a.x.shape else { return vec![Facts::typed(Some(dtype::INT64), Some(vec![None]))] };
    let r = shape.len() as i64;
    let clamp = |v: i64| if v < 0 { (v + r).clamp(0, r) } else { v.clamp(0, r) } as usize;
    let start = clamp(attr_int(a.node, "start").unwrap_or(0));
    let end = clamp(attr_int(a.node, "end").unwrap_or(r));
    let elems = if start < end { shape[start..end].to_vec() } else { vec![] };
    vec![Facts::of_partial(elems, false, dtype::INT64)]
}

pub(super) fn size(a: &Args) -> Vec<Facts> {
    match a.x.static_shape() {
        Some(s) => match s.iter().try_fold(1i64, |a, &d| a.checked_mul(d as i64)) {
            Some(n) => vec![Facts::of_const(Const::int64(ArrayD::from_elem(IxDyn(&[]), n)))],
            None => vec![],
        },
        None => vec![Facts::typed(Some(dtype::INT64), Some(vec![]))],
    }
}

pub(super) fn gather(a: &Args) -> Vec<Facts> {
    let (node, data) = (a.node, a.x);
    let Some(indices) = a.input(1) else { return vec![] };
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

pub(super) fn unsqueeze(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let axes =
        if a.opset >= 13 { a.input(1).and_then(Facts::ints) } else { attr_ints(a.node, "axes").map(<[i64]>::to_vec) };
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

pub(super) fn squeeze(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let Some(axes) = axes_of(a.node, a.input(1), a.opset >= 13) else { return vec![Facts::typed(x.dtype, None)] };
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

pub(super) fn concat(a: &Args) -> Vec<Facts> {
    let (node, ins) = (a.node, a.present());
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

pub(super) fn slice(a: &Args) -> Vec<Facts> {
    let (node, x) = (a.node, a.x);
    let Some(shape) = &x.shape else { return vec![Facts::typed(x.dtype, None)] };
    let rank = shape.len();
    let params = if a.opset >= 10 {
        let starts = a.input(1).and_then(|f| f.ints());
        let ends = a.input(2).and_then(|f| f.ints());
        let axes = match a.input(3) {
            Some(f) => f.ints(),
            None => starts.as_ref().map(|s| (0..s.len() as i64).collect()),
        };
        let steps = match a.input(4) {
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

pub(super) fn reshape(a: &Args) -> Vec<Facts> {
    let (node, x) = (a.node, a.x);
    let Some(target) = a.input(1).and_then(Facts::elems) else { return vec![Facts::typed(x.dtype, None)] };
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

pub(super) fn flatten(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let Some(shape) = &x.shape else { return vec![Facts::typed(x.dtype, Some(vec![None, None]))] };
    let r = shape.len() as i64;
    let axis = attr_int(a.node, "axis").unwrap_or(1);
    let axis = if axis < 0 { axis + r } else { axis };
    if !(0..=r).contains(&axis) {
        return vec![];
    }
    let prod = |d: &[Dim]| d.iter().try_fold(1i64, |a, v| v.and_then(|v| a.checked_mul(v)));
    let out = vec![prod(&shape[..axis as usize]), prod(&shape[axis as usize..])];
    vec![with_value(x.dtype, out, x.value.as_ref(), |c, s| restructure(c, &Plan::Reshape(s.to_vec())))]
}

pub(super) fn transpose(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let Some(shape) = &x.shape else { return vec![Facts::typed(x.dtype, None)] };
    let perm: Vec<usize> = match attr_ints(a.node, "perm") {
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
    vec![with_value(x.dtype, out, x.value.as_ref(), |c, _| restructure(c, &Plan::Transpose(perm.clone())))]
}

pub(super) fn expand(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let Some(target) = a.input(1).and_then(Facts::elems) else { return vec![Facts::typed(x.dtype, None)] };
    let target: Shape = target.into_iter().map(|d| d.filter(|&v| v >= 0)).collect();
    let Some(xs) = &x.shape else { return vec![Facts::typed(x.dtype, None)] };
    let Some(out) = broadcast_shapes(&[xs, &target]) else { return vec![] };
    vec![with_value(x.dtype, out, x.value.as_ref(), |c, s| restructure(c, &Plan::Expand(s.to_vec())))]
}

pub(super) fn constant_of_shape(a: &Args) -> Vec<Facts> {
    let fill = attr(a.node, "value").and_then(|v| v.t.as_ref()).and_then(|t| Const::from_tensor(a.model, t));
    let dt = fill.as_ref().map(|c| c.dtype).unwrap_or(dtype::FLOAT);
    let Some(dims) = a.x.elems() else { return vec![Facts::typed(Some(dt), None)] };
    let shape: Shape = dims.iter().map(|d| d.filter(|&v| v >= 0)).collect();
    let static_dims: Option<Vec<usize>> = shape.iter().map(|d| d.map(|v| v as usize)).collect();
    match static_dims {
        Some(s) if s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_some_and(|n| n <= MAX_CONST_ELEMENTS) => {
            let values = match fill.map(|c| c.values) {
                Some(Values::Int(a)) => {
                    Values::Int(ArrayD::from_elem(IxDyn(&s), a.iter().next().copied().unwrap_or(0)))
                }
                Some(Values::Float(a)) => {
                    Values::Float(ArrayD::from_elem(IxDyn(&s), a.iter().next().copied().unwrap_or(0.0)))
                }
                None => Values::Float(ArrayD::from_elem(IxDyn(&s), 0.0)),
            };
            vec![Facts::of_const(Const { dtype: dt, values })]
        }
        _ => vec![Facts::typed(Some(dt), Some(shape))],
    }
}

pub(super) fn range(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let (Some(start), Some(limit), Some(delta)) =
        (x.value.as_ref(), a.input(1).and_then(|f| f.value.as_ref()), a.input(2).and_then(|f| f.value.as_ref()))
    else {
        return vec![Facts::typed(x.dtype, Some(vec![None]))];
    };
    vec![
        constant::range(start, limit, delta)
            .map(Facts::of_const)
            .unwrap_or_else(|| Facts::typed(x.dtype, Some(vec![None]))),
    ]
}

pub(super) fn pad(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let Some(xs) = &x.shape else { return vec![Facts::typed(x.dtype, None)] };
    let pads =
        if a.opset >= 11 { a.input(1).and_then(Facts::ints) } else { attr_ints(a.node, "pads").map(<[i64]>::to_vec) };
    let axes_given = a.opset >= 18 && a.input(3).is_some();
    let out: Shape = match pads {
        Some(p) if p.len() == 2 * xs.len() && !axes_given => xs
            .iter()
            .enumerate()
            .map(|(i, d)| d.and_then(|d| d.checked_add(p[i])?.checked_add(p[i + xs.len()])))
            .collect(),
        _ => vec![None; xs.len()],
    };
    vec![Facts::typed(x.dtype, Some(out))]
}

pub(super) fn tile(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let Some(xs) = &x.shape else { return vec![Facts::typed(x.dtype, None)] };
    let out: Shape = match a.input(1).and_then(Facts::ints) {
        Some(r) if r.len() == xs.len() => xs.iter().zip(r).map(|(d, r)| d.and_then(|d| d.checked_mul(r))).collect(),
        _ => vec![None; xs.len()],
    };
    vec![Facts::typed(x.dtype, Some(out))]
}

/// Facts for a structural op: the computed shape and, when the input is constant, the value.
pub(super) fn with_value(
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

/// `Split` (which fuse-qkv emits): the sizes from input 1 (opset 13+) or the `split` attribute, else equal
/// parts (the last one smaller, opset 18+, when the axis does not divide); an output's size along the axis is
/// unknown where the sizes are.
pub(super) fn split(a: &Args) -> Vec<Facts> {
    let (x, node) = (a.x, a.node);
    let n = node.output.len();
    let Some(shape) = &x.shape else { return vec![Facts::typed(x.dtype, None); n] };
    let Some(axis) = normalize_axis(attr_int(node, "axis").unwrap_or(0), shape.len()) else { return vec![] };
    let given =
        if a.opset >= 13 { a.input(1).map(Facts::ints) } else { attr_ints(node, "split").map(|s| Some(s.to_vec())) };
    let sizes: Vec<Dim> = match given {
        Some(Some(s)) if s.len() == n => s.into_iter().map(Some).collect(),
        Some(_) => vec![None; n],
        None => match shape[axis].zip(i64::try_from(n).ok().filter(|&k| k > 0)) {
            Some((d, k)) if d % k == 0 => vec![Some(d / k); n],
            Some((d, k)) if a.opset >= 18 => {
                let chunk = (d + k - 1) / k;
                (0..k).map(|i| Some((d - i * chunk).clamp(0, chunk))).collect()
            }
            _ => vec![None; n],
        },
    };
    sizes
        .into_iter()
        .map(|d| {
            let mut s = shape.clone();
            s[axis] = d;
            Facts::typed(x.dtype, Some(s))
        })
        .collect()
}
