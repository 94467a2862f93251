//! The matcher: the graph and its facts, small readers, and the two forms of a block (decomposed from
//! Softmax, or an existing attention op).

use std::collections::HashSet;

use super::FusedOp;
use super::fused::{Fused, Heads, Mask, Sizes};
use crate::onnx::infer::Inference;
use crate::onnx::{GraphIndex, NodeProto, attr_float, attr_int, dtype, is_op};

pub(super) struct Matcher<'a, 'm> {
    pub(super) index: &'a GraphIndex<'m>,
    pub(super) facts: &'a Inference,
    pub(super) opset: i64,
}

impl Matcher<'_, '_> {
    pub(super) fn producer(&self, value: &str, op: &str) -> Option<&NodeProto> {
        self.index.producer_op(value, op).map(|i| self.index.node(i))
    }

    pub(super) fn rank(&self, value: &str) -> Option<usize> {
        self.facts.shape(value).map(Vec::len)
    }

    /// The value of a one-element constant.
    pub(super) fn scalar(&self, value: &str) -> Option<f64> {
        let c = self.facts.value(value)?;
        (c.len() == 1 && c.shape().len() <= 4).then(|| c.floats()[0])
    }

    /// Integer constant elements (a 0-d or 1-d constant).
    pub(super) fn ints(&self, value: &str) -> Option<Vec<i64>> {
        self.facts.facts(value)?.ints()
    }

    /// True when `value` has exactly one element, so that multiplying by it changes no shape (rank <= 4).
    pub(super) fn is_one_element(&self, value: &str) -> bool {
        self.facts.shape(value).is_some_and(|s| s.len() <= 4 && s.iter().all(|&d| d == Some(1)))
    }

    pub(super) fn is_float(&self, value: &str) -> bool {
        matches!(self.facts.dtype(value), Some(dtype::FLOAT | dtype::FLOAT16))
    }

    /// Decomposed attention around the Softmax `softmax` (drawing 1).
    pub(super) fn decomposed(&self, softmax: usize) -> Option<Fused> {
        let sm = self.index.node(softmax);
        let scores_out = sm.output.first()?;
        let default_axis = if self.opset >= 13 { -1 } else { 1 };
        let axis = attr_int(sm, "axis").unwrap_or(default_axis);
        if axis != -1 && axis != 3 {
            return None;
        }
        // Scores: MatMul(q, kᵀ), then scalar scales and at most one causal mask, in any order.
        let mut scores = sm.input.first()?.clone();
        let mut factor = 1.0f64;
        let mut mask = Mask::None;
        let matmul = loop {
            let node = self.index.producer_node(&scores)?;
            if !matches!(node.domain(), "" | "ai.onnx") || node.input.len() < 2 {
                return None;
            }
            let (a, b) = (&node.input[0], &node.input[1]);
            match node.op_type() {
                "MatMul" => break node,
                "Mul" => {
                    let (c, rest) = match (self.scalar(a), self.scalar(b)) {
                        (_, Some(c)) => (c, a),
                        (Some(c), None) => (c, b),
                        _ => return None,
                    };
                    factor *= c;
                    scores = rest.clone();
                }
                "Div" => {
                    factor /= self.scalar(b)?;
                    scores = a.clone();
                }
                "Add" if mask == Mask::None => {
                    // The scale factors met so far come after the mask: they scale it too.
                    let padding =
                        |m: &str| self.key_padding(m).map(|(mask, c)| Mask::KeyPadding { mask, filter: c * factor });
                    (mask, scores) = if self.is_causal_additive(b) {
                        (Mask::Causal, a.clone())
                    } else if self.is_causal_additive(a) {
                        (Mask::Causal, b.clone())
                    } else if let Some(m) = padding(b) {
                        (m, a.clone())
                    } else if let Some(m) = padding(a) {
                        (m, b.clone())
                    } else {
                        return None;
                    };
                }
                _ => return None,
            }
        };
        if !(factor.is_finite() && factor > 0.0) {
            return None;
        }
        let q = self.heads(&matmul.input[0])?;
        let k = self.heads(&matmul.input[1])?;
        if q.perm != [0, 2, 1, 3] || k.perm != [0, 2, 3, 1] {
            return None;
        }
        // Probabilities times v.
        let pv: Vec<usize> = self
            .index
            .consumers(scores_out)
            .iter()
            .copied()
            .filter(|&c| {
                let n = self.index.node(c);
                is_op(n, "MatMul") && n.input.len() == 2 && n.input[0] == *scores_out
            })
            .collect();
        let [pv] = pv.as_slice() else { return None };
        let pv = self.index.node(*pv);
        let v = self.heads(&pv.input[1])?;
        if v.perm != [0, 2, 1, 3] || !v.factors.is_empty() {
            return None;
        }
        self.assemble(q, k, v, Some(factor), mask, pv.output.first()?)
    }

    /// A native `Attention` node (drawing 2).
    pub(super) fn native(&self, node_index: usize, emit: FusedOp) -> Option<Fused> {
        let node = self.index.node(node_index);
        if node.input.len() < 3 || node.input.iter().skip(4).any(|i| !i.is_empty()) {
            return None;
        }
        let out = node.output.first().filter(|o| !o.is_empty())?;
        let extra_read = node
            .output
            .iter()
            .skip(1)
            .any(|o| !o.is_empty() && (!self.index.consumers(o).is_empty() || self.index.is_graph_output(o)));
        if extra_read || attr_float(node, "softcap").unwrap_or(0.0) != 0.0 {
            return None;
        }
        let is_causal = attr_int(node, "is_causal").unwrap_or(0) != 0;
        let mask = match node.input.get(3).filter(|m| !m.is_empty()) {
            None if is_causal => Mask::Causal,
            None => Mask::None,
            Some(_) if is_causal => return None,
            Some(mask) if self.facts.dtype(mask) == Some(dtype::BOOL) => {
                if !self.is_causal_bool(mask, 0) {
                    return None;
                }
                Mask::Causal
            }
            Some(mask) if self.is_causal_additive(mask) => Mask::Causal,
            // A padding mask stays on a native Attention where Attention is the target (it is fused already).
            Some(mask) if emit == FusedOp::MultiHeadAttention => {
                let (mask, filter) = self.key_padding(mask)?;
                Mask::KeyPadding { mask, filter }
            }
            Some(_) => return None,
        };
        let causal = mask == Mask::Causal;
        let scale = attr_float(node, "scale").map(f64::from);
        let (q, k, v) = (&node.input[0], &node.input[1], &node.input[2]);
        if let Some(heads) = attr_int(node, "q_num_heads") {
            // The 3-D form: already what `Attention` emits.
            if emit == FusedOp::Attention || attr_int(node, "kv_num_heads") != Some(heads) || heads <= 0 {
                return None;
            }
            let hidden = self.hidden(q)?;
            if self.hidden(k)? != hidden || self.hidden(v)? != hidden || hidden % heads != 0 {
                return None;
            }
            if causal && !self.same_source(q, k) {
                return None;
            }
            let head_dim = hidden / heads;
            return Some(Fused {
                query: q.clone(),
                key: k.clone(),
                value: v.clone(),
                heads,
                scale: scale.unwrap_or(1.0 / (head_dim as f64).sqrt()),
                mask,
                replaced: node_index,
                output: out.clone(),
            });
        }
        let (q, k, v) = (self.heads(q)?, self.heads(k)?, self.heads(v)?);
        if q.perm != [0, 2, 1, 3] || k.perm != [0, 2, 1, 3] || v.perm != [0, 2, 1, 3] || !v.factors.is_empty() {
            return None;
        }
        self.assemble(q, k, v, scale, mask, out)
    }

    /// Checks that q, k and v agree and traces the output back to `[b, s, h·d]`. `scale` multiplies
    /// the scalar factors met on q and k; None stands for ONNX `Attention`'s default, 1/sqrt(d).
    pub(super) fn assemble(
        &self,
        q: Heads,
        k: Heads,
        v: Heads,
        scale: Option<f64>,
        mask: Mask,
        attention_out: &str,
    ) -> Option<Fused> {
        if q.heads != k.heads || q.heads != v.heads || q.head_dim != k.head_dim || q.head_dim != v.head_dim {
            return None;
        }
        if mask == Mask::Causal && !self.same_source(&q.x, &k.x) {
            return None;
        }
        let head_last: HashSet<&str> =
            q.head_last.iter().chain(&k.head_last).chain(&v.head_last).map(String::as_str).collect();
        let mut total = scale.unwrap_or(1.0 / (q.head_dim as f64).sqrt());
        for (value, divides) in q.factors.iter().chain(&k.factors) {
            let c = self.eval_scale(value, q.head_dim, &head_last, 0)?;
            total = if *divides { total / c } else { total * c };
        }
        if !(total.is_finite() && total > 0.0) {
            return None;
        }
        let sizes = Sizes {
            heads: q.heads,
            head_dim: q.head_dim,
            batch: self.facts.shape(&q.x).and_then(|s| s[0]),
            seq: self.facts.shape(&q.x).and_then(|s| s[1]),
        };
        let (replaced, output) = self.merge_heads(attention_out, sizes, q.seq_axes)?;
        Some(Fused { query: q.x, key: k.x, value: v.x, heads: q.heads, scale: total, mask, replaced, output })
    }
}
