//! Heads: q, k and v traced back to their 3-D projections, the merge of the heads, the shapes and the
//! scale.

use std::collections::{HashMap, HashSet};

use super::fused::{Axis, Elem, Heads, Sizes};
use super::matcher::Matcher;
use crate::onnx::{NodeProto, attr_int, attr_ints, dtype, is_op};

impl Matcher<'_, '_> {
    /// Walks back from a 4-D q, k or v through Transposes and scalar Mul/Div to the Reshape that splits
    /// the heads of a 3-D projection.
    pub(super) fn heads(&self, value: &str) -> Option<Heads> {
        // `c[i]`: the axis of the current value that axis i of `value` is.
        let mut c = [0usize, 1, 2, 3];
        let mut cur = value.to_string();
        let mut walk: Vec<(String, [usize; 4])> = Vec::new();
        let mut factors = Vec::new();
        let reshape = loop {
            if walk.len() > 8 {
                return None;
            }
            walk.push((cur.clone(), c));
            let node = self.index.producer_node(&cur)?;
            if !matches!(node.domain(), "" | "ai.onnx") || node.input.is_empty() {
                return None;
            }
            match node.op_type() {
                "Reshape" => break node,
                "Transpose" => {
                    let p = attr_ints(node, "perm")?;
                    if p.len() != 4 {
                        return None;
                    }
                    let p: Vec<usize> =
                        p.iter().map(|&a| usize::try_from(a).ok().filter(|&a| a < 4)).collect::<Option<_>>()?;
                    c = c.map(|a| p[a]);
                    cur = node.input[0].clone();
                }
                "Mul" if node.input.len() == 2 => {
                    let (a, b) = (&node.input[0], &node.input[1]);
                    let (f, rest) = match (self.is_one_element(a), self.is_one_element(b)) {
                        (false, true) => (b, a),
                        (true, false) => (a, b),
                        _ => return None,
                    };
                    factors.push((f.clone(), false));
                    cur = rest.clone();
                }
                "Div" if node.input.len() == 2 && self.is_one_element(&node.input[1]) => {
                    factors.push((node.input[1].clone(), true));
                    cur = node.input[0].clone();
                }
                _ => return None,
            }
        };
        let x = reshape.input.first()?;
        let shape = reshape.input.get(1)?;
        let hidden = self.hidden(x)?;
        let target = self.elems(shape, 0)?;
        let [_, _, h, d] = target.as_slice() else { return None };
        let head_dim = match d {
            Elem::Known(d) if *d > 0 => *d,
            _ => return None,
        };
        let heads = match h {
            Elem::Known(-1) if hidden % head_dim == 0 => hidden / head_dim,
            Elem::Known(h) if *h > 0 => *h,
            _ => return None,
        };
        if heads * head_dim != hidden {
            return None;
        }
        // Axis i of `value` is axis `perm[i]` of the split [b, s, h, d]; a value met on the way with
        // `cw` (value axis i = its axis cw[i]) has, on its axis cw[i], the split's axis perm[i].
        let perm = c;
        let mut seq_axes = HashMap::new();
        let mut head_last = Vec::new();
        seq_axes.insert(x.clone(), 1);
        seq_axes.insert(reshape.output.first()?.clone(), 1);
        head_last.push(reshape.output.first()?.clone());
        for (name, cw) in &walk {
            let mut split_axis_of = [0usize; 4];
            for i in 0..4 {
                split_axis_of[cw[i]] = perm[i];
            }
            if let Some(pos) = split_axis_of.iter().position(|&a| a == 1) {
                seq_axes.insert(name.clone(), pos);
            }
            if split_axis_of[3] == 3 {
                head_last.push(name.clone());
            }
        }
        let sizes = Sizes {
            heads,
            head_dim,
            batch: self.facts.shape(x).and_then(|s| s[0]),
            seq: self.facts.shape(x).and_then(|s| s[1]),
        };
        let inputs = [Axis::Batch, Axis::Seq, Axis::Hidden];
        let outputs = [Axis::Batch, Axis::Seq, Axis::Heads, Axis::HeadDim];
        if !self.reshape_is(reshape, &target, &inputs, &outputs, sizes, &seq_axes) {
            return None;
        }
        Some(Heads { x: x.clone(), heads, head_dim, perm, factors, head_last, seq_axes })
    }

    /// `h·d` of a 3-D float projection `[b, s, h·d]` with a static last axis.
    pub(super) fn hidden(&self, x: &str) -> Option<i64> {
        let shape = self.facts.shape(x)?;
        if shape.len() != 3 || !self.is_float(x) {
            return None;
        }
        shape[2].filter(|&c| c > 0)
    }

    /// Follows the attention output `[b, h, s, d]` forward through Transposes and no-op Reshapes to the
    /// Reshape that merges the heads into `[b, s, h·d]`; returns that node and its output.
    pub(super) fn merge_heads(
        &self,
        out: &str,
        sizes: Sizes,
        mut seq_axes: HashMap<String, usize>,
    ) -> Option<(usize, String)> {
        let mut axes = [Axis::Batch, Axis::Heads, Axis::Seq, Axis::HeadDim];
        let mut cur = out.to_string();
        seq_axes.insert(cur.clone(), 2);
        for _ in 0..6 {
            let next: Vec<usize> = self
                .index
                .consumers(&cur)
                .iter()
                .copied()
                .filter(|&i| {
                    let n = self.index.node(i);
                    (is_op(n, "Transpose") || is_op(n, "Reshape")) && n.input.first() == Some(&cur)
                })
                .collect();
            let [i] = next.as_slice() else { return None };
            let node = self.index.node(*i);
            let y = node.output.first()?.clone();
            if is_op(node, "Transpose") {
                let p = attr_ints(node, "perm")?;
                if p.len() != 4 {
                    return None;
                }
                let p: Vec<usize> =
                    p.iter().map(|&a| usize::try_from(a).ok().filter(|&a| a < 4)).collect::<Option<_>>()?;
                axes = [axes[p[0]], axes[p[1]], axes[p[2]], axes[p[3]]];
            } else {
                let target = self.elems(node.input.get(1)?, 0)?;
                match target.len() {
                    3 => {
                        let merged = [Axis::Batch, Axis::Seq, Axis::Hidden];
                        let ordered = axes == [Axis::Batch, Axis::Seq, Axis::Heads, Axis::HeadDim];
                        return (ordered && self.reshape_is(node, &target, &axes, &merged, sizes, &seq_axes))
                            .then_some((*i, y));
                    }
                    4 if self.reshape_is(node, &target, &axes, &axes, sizes, &seq_axes) => {}
                    _ => return None,
                }
            }
            if let Some(pos) = axes.iter().position(|&a| a == Axis::Seq) {
                seq_axes.insert(y.clone(), pos);
            }
            cur = y;
        }
        None
    }

    /// True when Reshape `node`, whose shape input holds `target`, turns a tensor with axes `inputs`
    /// into one with axes `outputs`: every entry is that axis's size (known, copied with 0, or read at
    /// run time from a matching axis), except at most one -1.
    pub(super) fn reshape_is(
        &self,
        node: &NodeProto,
        target: &[Elem],
        inputs: &[Axis],
        outputs: &[Axis],
        sizes: Sizes,
        seq_axes: &HashMap<String, usize>,
    ) -> bool {
        if target.len() != outputs.len() {
            return false;
        }
        let in_size: Option<i64> = inputs.iter().map(|&a| sizes.of(a)).product();
        let out_size: Option<i64> = outputs.iter().map(|&a| sizes.of(a)).product();
        let sizes_match = match (in_size, out_size) {
            (Some(a), Some(b)) => a == b,
            _ => {
                // Batch and sequence cancel out; compare the rest.
                let rest = |axes: &[Axis]| -> i64 {
                    axes.iter()
                        .filter(|a| !matches!(a, Axis::Batch | Axis::Seq))
                        .map(|&a| sizes.of(a).unwrap_or(1))
                        .product()
                };
                let count = |axes: &[Axis], which: Axis| axes.iter().filter(|&&a| a == which).count();
                rest(inputs) == rest(outputs)
                    && count(inputs, Axis::Batch) == count(outputs, Axis::Batch)
                    && count(inputs, Axis::Seq) == count(outputs, Axis::Seq)
            }
        };
        if !sizes_match {
            return false;
        }
        let allowzero = attr_int(node, "allowzero").unwrap_or(0) != 0;
        let mut free = 0;
        for (pos, (e, &axis)) in target.iter().zip(outputs).enumerate() {
            let fits = match e {
                Elem::Known(-1) => {
                    free += 1;
                    true
                }
                Elem::Known(0) if !allowzero => inputs.get(pos) == Some(&axis),
                Elem::Known(n) => sizes.of(axis) == Some(*n),
                Elem::Dim(t, k) => match axis {
                    Axis::Batch => *k == 0,
                    Axis::Seq => match seq_axes.get(t) {
                        Some(s) => s == k,
                        None => matches!(self.rank(t), Some(2 | 3)) && *k == 1,
                    },
                    _ => self.facts.shape(t).and_then(|s| s.get(*k).copied().flatten()) == sizes.of(axis),
                },
                Elem::Unknown => false,
            };
            if !fits {
                return false;
            }
        }
        free <= 1
    }

    /// The entries of a 1-D shape tensor, from constants and `Shape` reads.
    pub(super) fn elems(&self, value: &str, depth: usize) -> Option<Vec<Elem>> {
        if depth > 8 {
            return None;
        }
        let facts = self.facts.facts(value);
        if let Some(v) = facts.and_then(|f| f.ints()) {
            return Some(v.into_iter().map(Elem::Known).collect());
        }
        let known = facts.and_then(|f| f.elems());
        let traced = self.elems_traced(value, depth);
        match (traced, known) {
            (Some(t), Some(k)) if t.len() == k.len() => {
                Some(t.into_iter().zip(k).map(|(t, k)| k.map(Elem::Known).unwrap_or(t)).collect())
            }
            (Some(t), _) => Some(t),
            (None, Some(k)) => Some(k.into_iter().map(|k| k.map(Elem::Known).unwrap_or(Elem::Unknown)).collect()),
            (None, None) => None,
        }
    }

    pub(super) fn elems_traced(&self, value: &str, depth: usize) -> Option<Vec<Elem>> {
        let node = self.index.producer_node(value)?;
        if !matches!(node.domain(), "" | "ai.onnx") {
            return None;
        }
        let first = node.input.first()?;
        match node.op_type() {
            "Concat" => {
                let mut all = Vec::new();
                for i in &node.input {
                    all.extend(self.elems(i, depth + 1)?);
                }
                Some(all)
            }
            "Unsqueeze" | "Squeeze" | "Cast" | "Identity" | "Reshape" => {
                let e = self.elems(first, depth + 1)?;
                (e.len() == 1).then_some(e)
            }
            "Shape" => {
                let rank = self.rank(first)? as i64;
                let clamp = |v: i64| if v < 0 { (v + rank).max(0) } else { v.min(rank) };
                let start = clamp(attr_int(node, "start").unwrap_or(0));
                let end = clamp(attr_int(node, "end").unwrap_or(rank));
                Some((start..end).map(|k| Elem::Dim(first.clone(), k as usize)).collect())
            }
            "Gather" => {
                if attr_int(node, "axis").unwrap_or(0) != 0 {
                    return None;
                }
                let data = self.elems(first, depth + 1)?;
                let n = data.len() as i64;
                let idx = self.ints(node.input.get(1)?)?;
                idx.iter()
                    .map(|&i| {
                        let i = if i < 0 { i + n } else { i };
                        usize::try_from(i).ok().and_then(|i| data.get(i).cloned())
                    })
                    .collect()
            }
            "Slice" => {
                let data = self.elems(first, depth + 1)?;
                let n = data.len() as i64;
                let one = |k: usize| node.input.get(k).filter(|s| !s.is_empty()).map(|s| self.ints(s));
                let (starts, ends) = (one(1)??, one(2)??);
                let ([start], [end]) = (starts.as_slice(), ends.as_slice()) else { return None };
                if let Some(axes) = one(3)
                    && !matches!(axes?.as_slice(), [0] | [-1])
                {
                    return None;
                }
                if let Some(steps) = one(4)
                    && steps? != [1]
                {
                    return None;
                }
                let clamp = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
                let (s, e) = (clamp(*start) as usize, clamp(*end) as usize);
                Some(if s < e { data[s..e].to_vec() } else { Vec::new() })
            }
            _ => None,
        }
    }

    /// Evaluates a scalar scale: a constant, or arithmetic on the head size read with `Shape` from a
    /// value whose last axis is the head size (the TorchScript chain, when cleanup could not fold it).
    pub(super) fn eval_scale(
        &self,
        value: &str,
        head_dim: i64,
        head_last: &HashSet<&str>,
        depth: usize,
    ) -> Option<f64> {
        if let Some(c) = self.scalar(value) {
            return Some(c);
        }
        if depth > 12 {
            return None;
        }
        let node = self.index.producer_node(value)?;
        if !matches!(node.domain(), "" | "ai.onnx") {
            return None;
        }
        let arg = |k: usize| self.eval_scale(node.input.get(k)?, head_dim, head_last, depth + 1);
        match node.op_type() {
            "Sqrt" => Some(arg(0)?.sqrt()),
            "Reciprocal" => Some(1.0 / arg(0)?),
            "Mul" => Some(arg(0)? * arg(1)?),
            "Div" => Some(arg(0)? / arg(1)?),
            "Cast" => {
                let to = attr_int(node, "to")? as i32;
                let x = arg(0)?;
                match to {
                    dtype::FLOAT | dtype::DOUBLE | dtype::FLOAT16 => Some(x),
                    dtype::INT64 | dtype::INT32 => Some(x.trunc()),
                    _ => None,
                }
            }
            "Slice" | "Gather" => {
                let e = self.elems(value, 0)?;
                match e.as_slice() {
                    [Elem::Dim(t, k)] if head_last.contains(t.as_str()) && *k == 3 => Some(head_dim as f64),
                    [Elem::Known(v)] => Some(*v as f64),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}
