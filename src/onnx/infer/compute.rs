//! Shape/type rules for the ops that compute: matrix products, convolution, resizing, reductions,
//! attention and quantization (the `com.microsoft` ops dfast's passes emit among them).

use super::facts::Args;
use super::facts::axes_of;
use super::shapes::{conv_shape, matmul_shape, normalize_axis, reduce_shape};
use super::{Const, Facts, Shape};
use crate::onnx::tensor::dtype;
use crate::onnx::{attr_int, attr_string};

/// ONNX `Attention` (opset 23), whose output has the query's leading dims and the value's width
/// (`com.microsoft::MultiHeadAttention` is in `contrib`).
pub(super) fn attention(a: &Args) -> Vec<Facts> {
    let (q, v) = (a.x, a.input(2));
    let shape = match (&q.shape, v.and_then(|v| v.shape.as_ref())) {
        (Some(q), Some(v)) if q.len() == v.len() && q.len() >= 3 => {
            let mut out = q.clone();
            *out.last_mut().expect("rank >= 3") = *v.last().expect("rank >= 3");
            Some(out)
        }
        _ => None,
    };
    vec![Facts::typed(q.dtype, shape)]
}

/// `DynamicQuantizeLinear`: the uint8 tensor, its scale and its zero point.
pub(super) fn dynamic_quantize_linear(a: &Args) -> Vec<Facts> {
    vec![
        Facts::typed(Some(dtype::UINT8), a.x.shape.clone()),
        Facts::typed(Some(dtype::FLOAT), Some(vec![])),
        Facts::typed(Some(dtype::UINT8), Some(vec![])),
    ]
}

/// `MatMul` (the inputs' type) and `MatMulInteger` (int32).
pub(super) fn matmul(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let Some(b) = a.input(1) else { return vec![] };
    let dt = if a.op() == "MatMul" { x.dtype } else { Some(dtype::INT32) };
    vec![Facts::typed(dt, matmul_shape(x.shape.as_ref(), b.shape.as_ref()))]
}

/// `com.microsoft::MatMulIntegerToFloat` and `DynamicQuantizeMatMul`: a float `MatMul`.
pub(super) fn quantized_matmul(a: &Args) -> Vec<Facts> {
    let Some(b) = a.input(1) else { return vec![] };
    vec![Facts::typed(Some(dtype::FLOAT), matmul_shape(a.x.shape.as_ref(), b.shape.as_ref()))]
}

/// `Einsum` with one letter per axis (no `...`): each output letter takes its size from an input axis of the
/// same letter; without `->`, the output is the letters that appear once, in alphabetical order (the ONNX
/// spec). PixArt's sin-cos position embedding is an outer product exported as `Einsum`.
pub(super) fn einsum(a: &Args) -> Vec<Facts> {
    let Some(equation) = attr_string(a.node, "equation") else { return vec![] };
    let equation: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    if equation.contains('.') {
        return vec![];
    }
    let (lhs, rhs) = match equation.split_once("->") {
        Some((l, r)) => (l.to_string(), r.to_string()),
        None => {
            let mut once: Vec<char> =
                equation.chars().filter(|c| c.is_ascii_alphabetic() && equation.matches(*c).count() == 1).collect();
            once.sort_unstable();
            (equation.clone(), once.into_iter().collect())
        }
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    let inputs = a.present();
    if terms.len() != inputs.len() {
        return vec![];
    }
    let mut sizes: std::collections::HashMap<char, Option<i64>> = std::collections::HashMap::new();
    for (term, facts) in terms.iter().zip(&inputs) {
        let Some(shape) = &facts.shape else { continue };
        if shape.len() != term.chars().count() {
            return vec![];
        }
        for (letter, &dim) in term.chars().zip(shape) {
            // A known size wins over an unknown one (broadcast 1s aside, every axis of a letter agrees).
            let entry = sizes.entry(letter).or_insert(dim);
            if entry.is_none_or(|d| d == 1) && dim.is_some() {
                *entry = dim;
            }
        }
    }
    let shape: Option<Shape> = rhs.chars().map(|letter| sizes.get(&letter).copied()).collect();
    vec![Facts::typed(inputs.first().and_then(|f| f.dtype), shape)]
}

pub(super) fn gemm(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let Some(b) = a.input(1) else { return vec![] };
    let (Some(xs), Some(bs)) = (&x.shape, &b.shape) else {
        return vec![Facts::typed(x.dtype, Some(vec![None, None]))];
    };
    if xs.len() != 2 || bs.len() != 2 {
        return vec![];
    }
    let m = if attr_int(a.node, "transA").unwrap_or(0) != 0 { xs[1] } else { xs[0] };
    let n = if attr_int(a.node, "transB").unwrap_or(0) != 0 { bs[0] } else { bs[1] };
    vec![Facts::typed(x.dtype, Some(vec![m, n]))]
}

pub(super) fn conv(a: &Args) -> Vec<Facts> {
    let x = a.x;
    vec![Facts::typed(x.dtype, conv_shape(a.node, x.shape.as_ref(), a.input(1).and_then(|w| w.shape.as_ref())))]
}

/// `Resize` and its predecessor `Upsample`: sizes from the `sizes` input or the scales.
pub(super) fn resize(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let op = a.op();
    let Some(xs) = &x.shape else { return vec![Facts::typed(x.dtype, None)] };
    let sizes = if op == "Resize" { a.input(3).and_then(Facts::ints) } else { None };
    let scales_input = if op == "Resize" { a.input(2) } else { a.input(1) };
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
    vec![Facts::typed(x.dtype, Some(out))]
}

/// `ArgMax` / `ArgMin`: int64 indices over one axis.
pub(super) fn arg_reduce(a: &Args) -> Vec<Facts> {
    let shape = a.x.shape.as_ref().and_then(|s| {
        let axis = normalize_axis(attr_int(a.node, "axis").unwrap_or(0), s.len())?;
        Some(reduce_shape(s, &[axis], attr_int(a.node, "keepdims").unwrap_or(1) != 0))
    });
    vec![Facts::typed(Some(dtype::INT64), shape)]
}

/// `Reduce*`: axes from input 1 (opset 18, and 13 for `ReduceSum`) or the attribute.
pub(super) fn reduce(a: &Args) -> Vec<Facts> {
    let (x, op, node) = (a.x, a.op(), a.node);
    let axes_from_input = a.opset >= 18 || (op == "ReduceSum" && a.opset >= 13);
    let Some(axes) = axes_of(node, a.input(1), axes_from_input) else {
        return vec![Facts::typed(x.dtype, None)];
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
    vec![Facts::typed(x.dtype, shape)]
}
