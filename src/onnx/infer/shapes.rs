//! Shape arithmetic the per-op rules and constant folding share: broadcasting, axes, and the output
//! shapes of `MatMul`, `Conv` and `Slice`.

use super::{Dim, Shape};
use crate::onnx::proto::onnx::NodeProto;
use crate::onnx::{attr_ints, attr_string};

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

/// Numpy-style broadcast of two static shapes.
pub(super) fn broadcast_static(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let sa: Shape = a.iter().map(|&d| Some(d as i64)).collect();
    let sb: Shape = b.iter().map(|&d| Some(d as i64)).collect();
    broadcast_shapes(&[&sa, &sb])?.into_iter().map(|d| d.map(|v| v as usize)).collect()
}

/// An axis of a rank-`rank` tensor, negative ones counted from the end; None when out of range.
pub(super) fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// True when `perm` is a permutation of `0..rank`.
pub(super) fn is_permutation(perm: &[usize], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank && perm.iter().all(|&p| p < rank && !std::mem::replace(&mut seen[p], true))
}

/// The shape left after reducing `axes` of `s` (kept as 1s with `keep`).
pub(super) fn reduce_shape(s: &[Dim], axes: &[usize], keep: bool) -> Shape {
    s.iter()
        .enumerate()
        .filter_map(|(i, d)| if axes.contains(&i) { keep.then_some(Some(1)) } else { Some(*d) })
        .collect()
}

/// Indices an ONNX `Slice` takes along an axis of size `d`.
pub(super) fn slice_indices(d: i64, start: i64, end: i64, step: i64) -> Vec<usize> {
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

/// Output shape of `MatMul` (numpy `matmul` semantics, 1-d operands included).
pub(super) fn matmul_shape(a: Option<&Shape>, b: Option<&Shape>) -> Option<Shape> {
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

/// Output shape of `Conv` from the input and weight shapes and the attributes (unknown dims where
/// the sizes or attributes do not tell).
pub(super) fn conv_shape(node: &NodeProto, x: Option<&Shape>, w: Option<&Shape>) -> Option<Shape> {
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
    let auto_pad = attr_string(node, "auto_pad").unwrap_or("NOTSET");
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
