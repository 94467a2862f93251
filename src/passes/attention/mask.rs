//! Masks: causal (additive or boolean) and key padding, and where a value comes from.

use super::MASKED;
use super::fused::Elem;
use super::matcher::Matcher;
use crate::onnx::{NodeProto, attr_int, attr_ints, is_op};

impl Matcher<'_, '_> {
    /// The tensor a projection reads: `x` of `MatMul(x, W) (+ b)` (also through a fused-QKV Split).
    pub(super) fn source(&self, value: &str) -> String {
        let mut cur = value.to_string();
        for _ in 0..4 {
            let Some(node) = self.index.producer_node(&cur) else { break };
            let constant = |v: &str| self.index.const_tensor(v).is_some() || self.facts.value(v).is_some();
            let two = node.input.len() == 2;
            let reads_first = (is_op(node, "MatMul") && two && constant(&node.input[1]))
                || (is_op(node, "Add") && two && constant(&node.input[1]))
                || (is_op(node, "Split") && !node.input.is_empty());
            cur = if reads_first {
                node.input[0].clone()
            } else if is_op(node, "Add") && two && constant(&node.input[0]) {
                node.input[1].clone()
            } else {
                break;
            };
        }
        cur
    }

    /// True when q and k project the same tensor (self-attention: the causal square is s × s).
    pub(super) fn same_source(&self, q: &str, k: &str) -> bool {
        self.source(q) == self.source(k)
    }

    /// An additive float mask that is 0 where key position <= query position and masked elsewhere.
    pub(super) fn is_causal_additive(&self, value: &str) -> bool {
        let value = self.strip_broadcast(value);
        if !self.is_float(&value) {
            return false;
        }
        let Some(node) = self.producer(&value, "Where") else { return false };
        if node.input.len() != 3 {
            return false;
        }
        let (cond, a, b) = (&node.input[0], &node.input[1], &node.input[2]);
        let masked = |v: &str| self.scalar(v).is_some_and(|x| x <= MASKED);
        let zero = |v: &str| self.facts.value(v).is_some_and(|c| c.is_all(0.0));
        (masked(a) && zero(b) && self.is_strict_upper(cond, 0))
            || (zero(a) && masked(b) && self.is_causal_bool(cond, 0))
    }

    /// A key padding mask added to 4-D scores `[b, h, s, t]`: `(1 - m) * c` (`c` <= -1e4, `m` a 2-D `[b, t]`
    /// 0/1 tensor, possibly Cast to float) spread over heads and queries by ops that keep the batch as the
    /// first axis and the keys as the last, so that element `[b, h, s, t]` is `(1 - m[b, t]) * c`:
    /// - Identity, and Unsqueeze of axes between the first and the last;
    /// - Expand or Tile that leaves the first and the last axis as they are (1 in the shape or repeats);
    /// - Reshape (of a chain of Reshapes, which only regroup the same row-major data) to a shape whose first
    ///   entry is a batch read at run time (`Shape(x)[0]`) and whose last is not 1: the batch rows stay
    ///   whole blocks and the position along the keys stays the position modulo `t`.
    ///
    /// diffusers' PixArt builds exactly this from `encoder_attention_mask` (`repeat_interleave` over heads,
    /// then a `[b, h, -1, t]` view). Returns `m` and `c`.
    pub(super) fn key_padding(&self, value: &str) -> Option<(String, f64)> {
        if !self.is_float(value) || self.rank(value) != Some(4) {
            return None;
        }
        let mut cur = value.to_string();
        for _ in 0..12 {
            let node = self.index.producer_node(&cur)?;
            if !matches!(node.domain(), "" | "ai.onnx") {
                return None;
            }
            let x = node.input.first()?.clone();
            match node.op_type() {
                "Identity" => cur = x,
                "Reshape" => {
                    let target = self.elems(node.input.get(1)?, 0)?;
                    let batch_first = matches!(target.first(), Some(Elem::Dim(_, 0)));
                    let keys_last = match target.last() {
                        Some(Elem::Dim(..)) => true,
                        Some(Elem::Known(n)) => *n >= 2,
                        _ => false,
                    };
                    if target.len() < 2 || !batch_first || !keys_last {
                        return None;
                    }
                    let mut inner = x;
                    while let Some(r) = self.producer(&inner, "Reshape") {
                        inner = r.input.first()?.clone();
                    }
                    cur = inner;
                }
                "Unsqueeze" => {
                    let out_rank = self.rank(&cur)? as i64;
                    let axes: Vec<i64> = match node.input.get(1).filter(|a| !a.is_empty()) {
                        Some(a) => self.ints(a)?,
                        None => attr_ints(node, "axes")?.to_vec(),
                    };
                    let inner = |a: i64| {
                        let a = if a < 0 { a + out_rank } else { a };
                        a >= 1 && a < out_rank - 1
                    };
                    if axes.is_empty() || !axes.iter().all(|&a| inner(a)) {
                        return None;
                    }
                    cur = x;
                }
                "Expand" | "Tile" => {
                    let rank = self.rank(&x)?;
                    let shape = self.elems(node.input.get(1)?, 0)?;
                    let keeps = |e: Option<&Elem>| matches!(e, Some(Elem::Known(1)));
                    if rank < 2 || shape.len() != rank || !keeps(shape.first()) || !keeps(shape.last()) {
                        return None;
                    }
                    cur = x;
                }
                "Mul" => {
                    let (a, b) = (&node.input[0], node.input.get(1)?);
                    let (c, other) = match (self.scalar(a), self.scalar(b)) {
                        (_, Some(c)) => (c, a),
                        (Some(c), None) => (c, b),
                        _ => return None,
                    };
                    if c > MASKED {
                        return None;
                    }
                    let sub = self.producer(other, "Sub")?;
                    if sub.input.len() != 2 || self.scalar(&sub.input[0]) != Some(1.0) {
                        return None;
                    }
                    let mut m = sub.input[1].clone();
                    if let Some(cast) = self.producer(&m, "Cast") {
                        m = cast.input.first()?.clone();
                    }
                    return (self.rank(&m) == Some(2)).then_some((m, c));
                }
                _ => return None,
            }
        }
        None
    }

    /// Strips the ops that only broadcast a mask (Expand, Unsqueeze) or keep it (Identity, Cast to itself).
    pub(super) fn strip_broadcast(&self, value: &str) -> String {
        let mut cur = value.to_string();
        for _ in 0..6 {
            let Some(node) = self.index.producer_node(&cur) else { break };
            let same_type = is_op(node, "Cast")
                && node.input.first().and_then(|i| self.facts.dtype(i)).map(i64::from) == attr_int(node, "to");
            if is_op(node, "Expand") || is_op(node, "Unsqueeze") || is_op(node, "Identity") || same_type {
                cur = node.input[0].clone();
            } else {
                break;
            }
        }
        cur
    }

    /// A boolean (or 0/1) tensor that is true where key position <= query position.
    pub(super) fn is_causal_bool(&self, value: &str, depth: usize) -> bool {
        if depth > 4 {
            return false;
        }
        let value = self.strip_broadcast(value);
        let Some(node) = self.index.producer_node(&value) else { return false };
        let two = node.input.len() == 2;
        if is_op(node, "LessOrEqual") && two {
            return self.positions(&node.input[0], &node.input[1]);
        }
        if is_op(node, "GreaterOrEqual") && two {
            return self.positions(&node.input[1], &node.input[0]);
        }
        if is_op(node, "Not") {
            return self.is_strict_upper(&node.input[0], depth + 1);
        }
        false
    }

    /// A boolean tensor that is true where key position > query position.
    pub(super) fn is_strict_upper(&self, value: &str, depth: usize) -> bool {
        if depth > 4 {
            return false;
        }
        let value = self.strip_broadcast(value);
        let Some(node) = self.index.producer_node(&value) else { return false };
        let two = node.input.len() == 2;
        if is_op(node, "Greater") && two {
            return self.positions(&node.input[0], &node.input[1]);
        }
        if is_op(node, "Less") && two {
            return self.positions(&node.input[1], &node.input[0]);
        }
        if is_op(node, "Equal") && two {
            let zero = |v: &str| self.facts.value(v).is_some_and(|c| c.is_all(0.0));
            let other = if zero(&node.input[1]) {
                &node.input[0]
            } else if zero(&node.input[0]) {
                &node.input[1]
            } else {
                return false;
            };
            return self.is_lower_ones(other);
        }
        if is_op(node, "Not") {
            return self.is_causal_bool(&node.input[0], depth + 1);
        }
        false
    }

    /// `Trilu(ones, upper = 0)`, k = 0: 1 where key position <= query position, 0 elsewhere.
    pub(super) fn is_lower_ones(&self, value: &str) -> bool {
        let Some(node) = self.producer(value, "Trilu") else { return false };
        if attr_int(node, "upper") != Some(0) {
            return false;
        }
        if let Some(k) = node.input.get(1).filter(|k| !k.is_empty())
            && self.scalar(k) != Some(0.0)
        {
            return false;
        }
        let ones = self.strip_broadcast(&node.input[0]);
        self.facts.value(&ones).is_some_and(|c| c.is_all(1.0))
    }

    /// True when `key` holds positions along the last axis and `query` along the one before it, both
    /// unsqueezed from the same increasing `Range`.
    pub(super) fn positions(&self, key: &str, query: &str) -> bool {
        match (self.range_axis(key), self.range_axis(query)) {
            (Some((r1, 0)), Some((r2, 1))) => r1 == r2,
            _ => false,
        }
    }

    /// The increasing `Range` a value unsqueezes, and the axis (counted from the end) its entries run along.
    pub(super) fn range_axis(&self, value: &str) -> Option<(String, usize)> {
        let mut unsqueezes: Vec<&NodeProto> = Vec::new();
        let mut cur = value.to_string();
        let range = loop {
            let node = self.index.producer_node(&cur)?;
            if is_op(node, "Range") {
                break node;
            }
            if !is_op(node, "Unsqueeze") || unsqueezes.len() > 4 {
                return None;
            }
            unsqueezes.push(node);
            cur = node.input.first()?.clone();
        };
        if range.input.len() != 3 || !self.scalar(&range.input[2]).is_some_and(|d| d > 0.0) {
            return None;
        }
        let (mut rank, mut pos) = (1usize, 0usize);
        for node in unsqueezes.iter().rev() {
            let axes: Vec<i64> = match node.input.get(1).filter(|a| !a.is_empty()) {
                Some(a) => self.ints(a)?,
                None => attr_ints(node, "axes")?.to_vec(),
            };
            let out_rank = rank + axes.len();
            let mut inserted: Vec<usize> = axes
                .iter()
                .map(|&a| usize::try_from(if a < 0 { a + out_rank as i64 } else { a }).ok().filter(|&a| a < out_rank))
                .collect::<Option<_>>()?;
            inserted.sort_unstable();
            inserted.dedup();
            if inserted.len() != axes.len() {
                return None;
            }
            // The kept axes fill the positions not inserted, in order.
            let kept: Vec<usize> = (0..out_rank).filter(|p| !inserted.contains(p)).collect();
            pos = kept[pos];
            rank = out_rank;
        }
        Some((range.output.first()?.clone(), rank - 1 - pos))
    }
}
