//! Attention fusion (the seed's SDPA step): every attention block becomes one fused op.
//!
//! ```text
//! 1. Decomposed attention (TorchScript export, after cleanup; UNet self/cross, VAE mid-block, CLIP):
//!
//!    xq [b,s,h·d] ─Reshape [b,s,h,d]─Transpose(0,2,1,3)─(Mul sq)─┐
//!    xk [b,t,h·d] ─Reshape [b,t,h,d]─Transpose(0,2,3,1)─(Mul sk)─ MatMul ─(Mul/Div c)─(Add mask)─ Softmax(-1) ─┐
//!    xv [b,t,h·d] ─Reshape [b,t,h,d]─Transpose(0,2,1,3)──────────────────────────────────────────────── MatMul ─┘
//!      ─(no-op Reshape)─Transpose(0,2,1,3)─Reshape [b,s,h·d]─> y
//!
//!    Transposes may come split or merged, the scalar Muls/Divs may sit before or after them, and the
//!    scale may still be the run-time chain `Shape(q)[-1:] ─Cast─Sqrt─Div(1,·)─Cast─Sqrt` (evaluated here
//!    with the head size read off the head-splitting Reshape). The CLIP causal mask, as transformers 5
//!    exports it (CLIP also has the no-op Reshape [b, -1, s, d] on the output), is
//!      Where(Equal(Trilu(Expand(1, [s, s]), upper = 0), 0), -inf, 0)      (added to the scores)
//!    The VAE's mid-block attention is the same with h = 1 over [b, h·w, c]; its NCHW Reshape/Transposes
//!    lie outside the block and stay.
//!
//! 2. Native attention (dynamo export, opset 23), 4-D form:
//!
//!    xq ─Reshape [b,s,h,d]─Transpose(0,2,1,3)─┐
//!    xk ─Reshape [b,t,h,d]─Transpose(0,2,1,3)─┼─ Attention(scale?, is_causal?) ─Transpose(0,2,1,3)─Reshape─> y
//!    xv ─Reshape [b,t,h,d]─Transpose(0,2,1,3)─┤                                          [b,s,h·d]
//!    causal bool mask (optional) ─────────────┘
//!       Expand(LessOrEqual(Unsqueeze(r) [..,1,s], Unsqueeze(r) [..,s,1]))     r = Range(0, s, 1)
//!
//!    and its 3-D form, Attention(xq, xk, xv, q_num_heads = kv_num_heads = h) ─> y.
//!
//! Both become
//!
//!    xq, xk, xv ─ com.microsoft::MultiHeadAttention(num_heads = h, scale, unidirectional if causal) ─> y
//!    or           Attention(q_num_heads = kv_num_heads = h, scale, is_causal)       (ONNX opset 23, 3-D)
//! ```
//!
//! Only the node that produced `y` is replaced; everything upstream that nothing else reads any more
//! (head splits, transposes, the scale chain, the mask) is dropped as dead by `apply_patch`. Anything
//! that does not match exactly is left as it is.
//!
//! What is checked (dataflow and constant values, never names):
//! - the head-splitting Reshapes read a 3-D float tensor `[b, s, c]` with a static `c = h·d`, `d` a
//!   constant of the shape, and the other entries are the batch and sequence sizes or one `-1`. A size
//!   read at run time counts as the batch when it is `Shape(t)[0]`, and as the sequence when it is axis 1
//!   of a 2-D/3-D tensor (`input_ids`, hidden states) or the sequence axis of a tensor of the matched
//!   block: exporters write views that way (`x.view(batch, -1, heads, head_dim)`);
//! - the heads and head sizes of q, k and v agree; v carries no scale; the output path merges the heads
//!   back to `[b, s, h·d]`;
//! - the Softmax runs over the last axis; the scale is a positive scalar constant (or the chain above);
//! - a mask is fused when it is causal (the two forms drawn above, or `is_causal = 1`) and q and k
//!   are projections of the same tensor (self-attention, so the causal square is `s × s`), or when it is a
//!   key padding mask, which PixArt's cross-attention adds to its scores (both exporter styles):
//!
//!      m [b, t] (0/1) ─(Cast)─ Sub(1, ·) ─ Mul(c ≤ -1e4) ─ Unsqueeze/Expand/Tile/Reshape ─> [b, h, 1, t]
//!
//!   spread over heads and queries by ops that keep the batch first and the keys last (see
//!   `key_padding`); it becomes MultiHeadAttention's `key_padding_mask` (m as int32) with
//!   `mask_filter_value` c (times any scale applied after the mask), which adds c to the scores of the
//!   keys where m is 0, as the bias did (exact for a 0/1 mask). For the ONNX `Attention` target such
//!   blocks are left as they are (its mask would have to be a bias of [b, h, s, t]). Other masks
//!   (arbitrary additive biases, T5's relative-position bias) are left alone;
//! - a native `Attention` has no past key/value, no softcap, and only its first output is read.
//!
//! Which op: option `op` ("MultiHeadAttention" or "Attention") from the profile, per execution provider;
//! default MultiHeadAttention for cpu and cuda, Attention for tensorrt and openvino. ONNX `Attention`
//! needs the model's ONNX opset to be 23 or later. Raising an older model's opset is not done: between 17
//! and 23 several ops changed meaning (`ReduceMean` axes moved to an input at 18, `GroupNormalization`
//! at 21, `Split`/`Pad`/`Resize` gained inputs), so every node would need checking. On an older model the
//! pass instead emits MultiHeadAttention for the cpu and cuda targets, and leaves the attention
//! decomposed for tensorrt and openvino (both fuse MatMul-Softmax-MatMul themselves, and a contrib op
//! they cannot run would split their graph).
//!
//! ONNX Runtime 1.31 (CPU EP, checked with small graphs): MultiHeadAttention runs fp32 with 3-D query /
//! key / value, `scale`, `unidirectional = 1` (causal), a 2-D int32 `key_padding_mask` [b, t] with
//! `mask_filter_value`, and `attention_bias` of shape [1|b, 1|h, s, t] (s itself: a [b, h, 1, t] bias is
//! refused, hence the key padding mask); the CUDA kernel with a 2-D key padding mask is not checked here;
//! ONNX `Attention` (opset 23) runs in both its 3-D and 4-D forms, with `is_causal`. The CUDA kernel of
//! MultiHeadAttention supports `unidirectional` since ONNX Runtime 1.20 (microsoft/onnxruntime#21852;
//! earlier releases refused it); not checked on a GPU here. Causal is only fused for self-attention
//! (square s × s), where upper-left and lower-right alignment agree.
//!
//! Idempotent: the fused ops are not matched again (a 3-D ONNX `Attention` is already the target form).

use std::collections::{HashMap, HashSet};

use crate::Result;
use crate::onnx::infer::Inference;
use crate::onnx::{
    GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, attr_float, attr_int, attr_ints, dtype, is_op,
    make_tensor_value_info,
};
use crate::passes::{BuildContext, Pass, PassContext, PassSpec};
use crate::settings::ExecutionProvider;

/// Added scores at or below this count as masked out (`exp` of them underflows to 0 in f32).
const MASKED: f64 = -1.0e4;

crate::settings::named_enum! {
    /// The op the fused attention becomes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FusedOp {
        /// ONNX Runtime's contrib `com.microsoft::MultiHeadAttention`.
        MultiHeadAttention = "MultiHeadAttention",
        /// ONNX's own `Attention` (opset 23), in its 3-D form.
        Attention = "Attention",
    }
}

impl FusedOp {
    /// What each execution provider gets when the profile does not say.
    pub fn default_for(target: ExecutionProvider) -> Self {
        if target.runs_contrib_ops() { FusedOp::MultiHeadAttention } else { FusedOp::Attention }
    }
}

/// The attention pass (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Attention {
    op: FusedOp,
}

impl Attention {
    pub fn new(op: FusedOp) -> Self {
        Attention { op }
    }

    /// The pass with the op `target` gets by default.
    pub fn for_target(target: ExecutionProvider) -> Self {
        Attention::new(FusedOp::default_for(target))
    }

    /// The op it emits (on models whose opset allows it).
    pub fn op(&self) -> FusedOp {
        self.op
    }
}

/// Options of the attention pass (a profile's `[attention]`): `op = "MultiHeadAttention" | "Attention"`;
/// absent, the target's default.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionOptions {
    pub op: Option<FusedOp>,
}

impl PassSpec for Attention {
    const NAME: &'static str = "attention";
    const SUMMARY: &'static str =
        "decomposed and native attention become MultiHeadAttention or ONNX Attention (`op`, per EP)";
    type Options = AttentionOptions;
    fn build(options: AttentionOptions, ctx: &BuildContext) -> Result<Self> {
        Ok(Attention::new(options.op.unwrap_or(FusedOp::default_for(ctx.target))))
    }
}

impl Pass for Attention {
    fn run(&self, model: &OnnxModel, ctx: &PassContext) -> Result<Option<Patch>> {
        let opset = model.opset("").unwrap_or(0);
        let emit = match self.op {
            FusedOp::MultiHeadAttention => FusedOp::MultiHeadAttention,
            FusedOp::Attention if opset >= 23 => FusedOp::Attention,
            FusedOp::Attention if ctx.target.runs_contrib_ops() => FusedOp::MultiHeadAttention,
            FusedOp::Attention => return Ok(None),
        };
        let index = GraphIndex::new(model);
        let facts = Inference::run(&index);
        let m = Matcher { index: &index, facts: &facts, opset };
        let mut names: HashSet<String> = index.nodes().iter().map(|n| n.name().to_string()).collect();
        let mut patch = Patch::new();
        let mut cast_added: HashSet<String> = HashSet::new();
        for (i, node) in index.nodes().iter().enumerate() {
            let found = if is_op(node, "Softmax") {
                m.decomposed(i)
            } else if is_op(node, "Attention") {
                m.native(i, emit)
            } else {
                None
            };
            let Some(f) = found else { continue };
            if patch.is_removed(f.replaced) {
                continue;
            }
            // ONNX `Attention` would need the padding mask as a bias broadcast to [b, h, s, t]: left as it is.
            if emit == FusedOp::Attention && matches!(f.mask, Mask::KeyPadding { .. }) {
                continue;
            }
            // The output is shaped like the query; saying so lets later passes (whose inference does not
            // know contrib ops) see its shape.
            if index.value_info(&f.output).is_none()
                && let (Some(dt), Some(shape)) = (facts.dtype(&f.query), facts.shape(&f.query))
            {
                patch.set_value_info(make_tensor_value_info(&f.output, dt, Some(shape)));
            }
            // Named after the block (`/unet/.../attn1/Softmax` -> `/unet/.../attn1/MultiHeadAttention`).
            let name = match node.name().rsplit_once('/') {
                Some((block, _)) => format!("{block}/{}", emit.name()),
                None => format!("{}_{}", node.name(), emit.name()),
            };
            let name = if node.name().is_empty() || !names.insert(name.clone()) { String::new() } else { name };
            let fused = match emit {
                FusedOp::MultiHeadAttention => {
                    let mut inputs = vec![f.query, f.key, f.value];
                    if let Mask::KeyPadding { mask, .. } = &f.mask {
                        // key_padding_mask is int32; one Cast per mask, shared by the blocks that read it.
                        let int32 = if facts.dtype(mask) == Some(dtype::INT32) {
                            mask.clone()
                        } else {
                            let cast = format!("{mask}_int32");
                            if cast_added.insert(cast.clone()) {
                                patch.add_node(
                                    NodeBuilder::new("Cast")
                                        .name(format!("{mask}/CastToInt32"))
                                        .inputs([mask.clone()])
                                        .outputs([cast.clone()])
                                        .attr_int("to", i64::from(dtype::INT32))
                                        .build(),
                                );
                            }
                            cast
                        };
                        inputs.extend([String::new(), int32]);
                    }
                    let b = NodeBuilder::new("MultiHeadAttention")
                        .domain("com.microsoft")
                        .name(name)
                        .inputs(inputs)
                        .outputs([f.output])
                        .attr_int("num_heads", f.heads)
                        .attr_float("scale", f.scale as f32);
                    patch.require_opset("com.microsoft", 1);
                    match f.mask {
                        Mask::Causal => b.attr_int("unidirectional", 1),
                        Mask::KeyPadding { filter, .. } => b.attr_float("mask_filter_value", filter as f32),
                        Mask::None => b,
                    }
                }
                FusedOp::Attention => {
                    patch.require_opset("", 23);
                    NodeBuilder::new("Attention")
                        .name(name)
                        .inputs([f.query, f.key, f.value])
                        .outputs([f.output])
                        .attr_int("q_num_heads", f.heads)
                        .attr_int("kv_num_heads", f.heads)
                        .attr_float("scale", f.scale as f32)
                        .attr_int("is_causal", i64::from(f.mask == Mask::Causal))
                }
            };
            patch.remove_node(f.replaced);
            patch.add_node(fused.build());
            patch.count_rewrite();
        }
        Ok((!patch.is_empty()).then_some(patch))
    }
}

/// One attention block, ready to be emitted.
#[derive(Debug)]
struct Fused {
    /// The 3-D `[b, s, h·d]` projections.
    query: String,
    key: String,
    value: String,
    heads: i64,
    scale: f64,
    mask: Mask,
    /// The node whose first output (`output`, `[b, s, h·d]`) the fused op produces instead.
    replaced: usize,
    output: String,
}

/// The mask a block applies to its scores.
#[derive(Debug, Clone, PartialEq)]
enum Mask {
    None,
    /// Key position <= query position (self-attention).
    Causal,
    /// A key padding mask: `mask` is `[b, t]`, 1 for keys to attend to and 0 for padding, and the scores of
    /// padded keys get `filter` added (after scaling).
    KeyPadding {
        mask: String,
        filter: f64,
    },
}

/// What an axis of a head-split tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Axis {
    Batch,
    Seq,
    Heads,
    HeadDim,
    /// The merged `h·d` of a 3-D projection.
    Hidden,
}

/// One entry of a shape tensor.
#[derive(Debug, Clone, PartialEq)]
enum Elem {
    Known(i64),
    /// `Shape(tensor)[axis]`, read at run time.
    Dim(String, usize),
    Unknown,
}

/// A q, k or v head split traced back to its 3-D projection.
#[derive(Debug)]
struct Heads {
    /// The 3-D `[b, s, h·d]` projection.
    x: String,
    heads: i64,
    head_dim: i64,
    /// Axes of the matched value, as axes of the split `[b, s, h, d]`.
    perm: [usize; 4],
    /// Scalar factors met on the way: (value, true when it divides).
    factors: Vec<(String, bool)>,
    /// Values of the walk whose last axis is the head size (what a run-time scale chain reads).
    head_last: Vec<String>,
    /// The sequence axis of each value of the walk (and of `x`).
    seq_axes: HashMap<String, usize>,
}

/// Sizes the roles of a shape check stand for.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    heads: i64,
    head_dim: i64,
    batch: Option<i64>,
    seq: Option<i64>,
}

impl Sizes {
    fn of(&self, axis: Axis) -> Option<i64> {
        match axis {
            Axis::Batch => self.batch,
            Axis::Seq => self.seq,
            Axis::Heads => Some(self.heads),
            Axis::HeadDim => Some(self.head_dim),
            Axis::Hidden => Some(self.heads * self.head_dim),
        }
    }
}

struct Matcher<'a, 'm> {
    index: &'a GraphIndex<'m>,
    facts: &'a Inference,
    opset: i64,
}

impl Matcher<'_, '_> {
    fn producer(&self, value: &str, op: &str) -> Option<&NodeProto> {
        self.index.producer_op(value, op).map(|i| self.index.node(i))
    }

    fn rank(&self, value: &str) -> Option<usize> {
        self.facts.shape(value).map(Vec::len)
    }

    /// The value of a one-element constant.
    fn scalar(&self, value: &str) -> Option<f64> {
        let c = self.facts.value(value)?;
        (c.len() == 1 && c.shape().len() <= 4).then(|| c.floats()[0])
    }

    /// Integer constant elements (a 0-d or 1-d constant).
    fn ints(&self, value: &str) -> Option<Vec<i64>> {
        self.facts.facts(value)?.ints()
    }

    /// True when `value` has exactly one element, so that multiplying by it changes no shape (rank <= 4).
    fn is_one_element(&self, value: &str) -> bool {
        self.facts.shape(value).is_some_and(|s| s.len() <= 4 && s.iter().all(|&d| d == Some(1)))
    }

    fn is_float(&self, value: &str) -> bool {
        matches!(self.facts.dtype(value), Some(dtype::FLOAT | dtype::FLOAT16))
    }

    /// Decomposed attention around the Softmax `softmax` (drawing 1).
    fn decomposed(&self, softmax: usize) -> Option<Fused> {
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
    fn native(&self, node_index: usize, emit: FusedOp) -> Option<Fused> {
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
    fn assemble(
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

    /// Walks back from a 4-D q, k or v through Transposes and scalar Mul/Div to the Reshape that splits
    /// the heads of a 3-D projection.
    fn heads(&self, value: &str) -> Option<Heads> {
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
    fn hidden(&self, x: &str) -> Option<i64> {
        let shape = self.facts.shape(x)?;
        if shape.len() != 3 || !self.is_float(x) {
            return None;
        }
        shape[2].filter(|&c| c > 0)
    }

    /// Follows the attention output `[b, h, s, d]` forward through Transposes and no-op Reshapes to the
    /// Reshape that merges the heads into `[b, s, h·d]`; returns that node and its output.
    fn merge_heads(&self, out: &str, sizes: Sizes, mut seq_axes: HashMap<String, usize>) -> Option<(usize, String)> {
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
    fn reshape_is(
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
    fn elems(&self, value: &str, depth: usize) -> Option<Vec<Elem>> {
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

    fn elems_traced(&self, value: &str, depth: usize) -> Option<Vec<Elem>> {
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
    fn eval_scale(&self, value: &str, head_dim: i64, head_last: &HashSet<&str>, depth: usize) -> Option<f64> {
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

    /// The tensor a projection reads: `x` of `MatMul(x, W) (+ b)` (also through a fused-QKV Split).
    fn source(&self, value: &str) -> String {
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
    fn same_source(&self, q: &str, k: &str) -> bool {
        self.source(q) == self.source(k)
    }

    /// An additive float mask that is 0 where key position <= query position and masked elsewhere.
    fn is_causal_additive(&self, value: &str) -> bool {
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
    fn key_padding(&self, value: &str) -> Option<(String, f64)> {
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
    fn strip_broadcast(&self, value: &str) -> String {
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
    fn is_causal_bool(&self, value: &str, depth: usize) -> bool {
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
    fn is_strict_upper(&self, value: &str, depth: usize) -> bool {
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
    fn is_lower_ones(&self, value: &str) -> bool {
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
    fn positions(&self, key: &str, query: &str) -> bool {
        match (self.range_axis(key), self.range_axis(query)) {
            (Some((r1, 0)), Some((r2, 1))) => r1 == r2,
            _ => false,
        }
    }

    /// The increasing `Range` a value unsqueezes, and the axis (counted from the end) its entries run along.
    fn range_axis(&self, value: &str) -> Option<(String, usize)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::PassRecord;
    use crate::onnx::ModelProto;
    use crate::passes::testing::{Sizes, tiny};
    use crate::passes::{Cleanup, PassManager};
    use ndarray::{ArrayD, IxDyn};

    /// Runs both models on the same random inputs in ONNX Runtime (CPU); the worst relative L2.
    fn compare(before: &OnnxModel, after: &OnnxModel, seed: u64) -> f64 {
        crate::passes::testing::compare(before, after, seed, Sizes { batch: 2, spatial: 8, other: 77 })
    }

    fn run(model: &mut OnnxModel, pass: Attention, target: ExecutionProvider) -> PassRecord {
        PassManager::new().with(pass).run(model, &PassContext::new(target)).unwrap().remove(0)
    }

    fn count(model: &OnnxModel, op: &str) -> usize {
        model.graph().node.iter().filter(|n| n.op_type() == op).count()
    }

    fn cleaned(name: &str) -> OnnxModel {
        let mut m = OnnxModel::load(tiny(name)).unwrap();
        PassManager::new().with(Cleanup).run(&mut m, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
        m
    }

    /// Fuses `name` (after cleanup unless `raw`) with `op`, checks counts, idempotence and numbers.
    fn check(name: &str, raw: bool, op: FusedOp, target: ExecutionProvider, blocks: usize, seed: u64) -> f64 {
        let before = if raw { OnnxModel::load(tiny(name)).unwrap() } else { cleaned(name) };
        let anchors = count(&before, "Softmax") + count(&before, "Attention");
        assert_eq!(anchors, blocks, "{name}: attention blocks in the export");
        let mut after = before.clone();
        let r = run(&mut after, Attention::new(op), target);
        let emitted = if before.opset("").unwrap_or(0) >= 23 { op } else { FusedOp::MultiHeadAttention };
        assert_eq!(r.rewrites, blocks, "{name}: {r:?}");
        assert_eq!(count(&after, emitted.name()), blocks, "{name}");
        assert_eq!(count(&after, "Softmax"), 0, "{name}");
        if emitted == FusedOp::MultiHeadAttention {
            assert_eq!(count(&after, "Attention"), 0, "{name}");
        }
        assert!(r.nodes_after < r.nodes_before, "{name}: {r:?}");
        // Later passes see the fused outputs' shapes.
        let index = GraphIndex::new(&after);
        let facts = Inference::run(&index);
        for n in after.graph().node.iter().filter(|n| n.op_type() == emitted.name()) {
            let shape = facts.shape(&n.output[0]).unwrap_or_else(|| panic!("{name}: no shape for {}", n.output[0]));
            assert_eq!(shape.len(), 3, "{name}");
            assert!(shape[2].is_some(), "{name}");
        }
        let again = run(&mut after, Attention::new(op), target);
        assert!(again.unchanged(), "{name}: second run changed {again:?}");
        let err = compare(&before, &after, seed);
        eprintln!(
            "{name} (raw: {raw}, op {}): {blocks} blocks -> {} {}, {} -> {} nodes, relative L2 {err:.1e}",
            op.name(),
            count(&after, emitted.name()),
            emitted.name(),
            r.nodes_before,
            r.nodes_after
        );
        assert!(err <= 1e-5, "{name}: relative L2 {err:.2e}");
        err
    }

    /// Attention blocks per model: UNet self + cross per transformer block, one in the VAE mid-block,
    /// one per CLIP layer.
    const TINY: [(&str, usize); 14] = [
        ("tiny-sd/unet", 8),
        ("tiny-sd/vae_decoder", 1),
        ("tiny-sd/text_encoder", 2),
        ("tiny-sdxl/unet", 16),
        ("tiny-sdxl/vae_decoder", 1),
        ("tiny-sdxl/text_encoder", 2),
        ("tiny-sdxl/text_encoder_2", 2),
        ("tiny-sd-dynamo/unet", 8),
        ("tiny-sd-dynamo/vae_decoder", 1),
        ("tiny-sd-dynamo/text_encoder", 2),
        ("tiny-sdxl-dynamo/unet", 16),
        ("tiny-sdxl-dynamo/vae_decoder", 1),
        ("tiny-sdxl-dynamo/text_encoder", 2),
        ("tiny-sdxl-dynamo/text_encoder_2", 2),
    ];

    #[test]
    fn fuses_every_tiny_model_into_multi_head_attention() {
        for (k, (name, blocks)) in TINY.iter().enumerate() {
            check(name, false, FusedOp::MultiHeadAttention, ExecutionProvider::Cpu, *blocks, 100 + k as u64);
        }
    }

    #[test]
    fn fuses_the_dynamo_models_into_onnx_attention() {
        for (k, (name, blocks)) in TINY.iter().enumerate().filter(|(_, (n, _))| n.contains("dynamo")) {
            check(name, false, FusedOp::Attention, ExecutionProvider::Cpu, *blocks, 200 + k as u64);
            // Every emitted Attention is the 3-D form with the heads given.
            let mut m = cleaned(name);
            run(&mut m, Attention::new(FusedOp::Attention), ExecutionProvider::TensorRt);
            assert!(m.graph().node.iter().filter(|n| n.op_type() == "Attention").all(|n| {
                attr_int(n, "q_num_heads").is_some() && attr_int(n, "kv_num_heads") == attr_int(n, "q_num_heads")
            }));
        }
    }

    /// On an opset-17 export, `op = "Attention"` falls back to MultiHeadAttention for cpu and cuda and
    /// leaves the graph alone for tensorrt and openvino.
    #[test]
    fn opset_17_with_onnx_attention_falls_back() {
        check("tiny-sd/text_encoder", false, FusedOp::Attention, ExecutionProvider::Cpu, 2, 300);
        let mut m = cleaned("tiny-sd/unet");
        let r = run(&mut m, Attention::new(FusedOp::Attention), ExecutionProvider::TensorRt);
        assert!(r.unchanged());
        assert_eq!(m.opset(""), Some(17));
    }

    /// Without cleanup the TorchScript scale is the run-time chain `Shape─Slice─Cast─Sqrt─Div─Cast─Sqrt`
    /// and the graph still holds Constant nodes, no-op Casts and Div-by-1s: everything still fuses.
    #[test]
    fn fuses_the_raw_torchscript_export() {
        check("tiny-sd/unet", true, FusedOp::MultiHeadAttention, ExecutionProvider::Cpu, 8, 400);
        check("tiny-sd/vae_decoder", true, FusedOp::MultiHeadAttention, ExecutionProvider::Cpu, 1, 401);
        check("tiny-sd/text_encoder", true, FusedOp::MultiHeadAttention, ExecutionProvider::Cpu, 2, 402);
    }

    #[test]
    fn the_causal_text_encoder_becomes_unidirectional() {
        for name in ["tiny-sd/text_encoder", "tiny-sd-dynamo/text_encoder"] {
            let mut m = cleaned(name);
            run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
            let fused: Vec<&NodeProto> =
                m.graph().node.iter().filter(|n| n.op_type() == "MultiHeadAttention").collect();
            assert_eq!(fused.len(), 2);
            assert!(fused.iter().all(|n| attr_int(n, "unidirectional") == Some(1) && n.domain() == "com.microsoft"));
            assert!(m.opset("com.microsoft").is_some());
            // Causal masks are gone with the blocks.
            assert_eq!(count(&m, "Trilu") + count(&m, "LessOrEqual"), 0, "{name}");
        }
        let mut unet = cleaned("tiny-sd/unet");
        run(&mut unet, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
        assert!(unet.graph().node.iter().all(|n| attr_int(n, "unidirectional").is_none()));
    }

    #[test]
    fn reads_the_op_from_the_profile_options() {
        let from_options = |s: &str, t| {
            let ctx = BuildContext::new(t, crate::settings::Precision::Fp32);
            crate::passes::options::build_from_str::<Attention>(s, &ctx)
        };
        assert_eq!(from_options("", ExecutionProvider::Cpu).unwrap().op(), FusedOp::MultiHeadAttention);
        assert_eq!(from_options("", ExecutionProvider::Cuda).unwrap().op(), FusedOp::MultiHeadAttention);
        assert_eq!(from_options("", ExecutionProvider::TensorRt).unwrap().op(), FusedOp::Attention);
        assert_eq!(from_options("", ExecutionProvider::OpenVino).unwrap().op(), FusedOp::Attention);
        let op = |s: &str, t| from_options(s, t).map(|a| a.op());
        assert_eq!(op("op = \"Attention\"", ExecutionProvider::Cpu).unwrap(), FusedOp::Attention);
        assert_eq!(
            op("op = \"MultiHeadAttention\"", ExecutionProvider::OpenVino).unwrap(),
            FusedOp::MultiHeadAttention
        );
        let err = op("op = \"FlashAttention\"", ExecutionProvider::Cpu).unwrap_err().to_string();
        assert!(err.contains("FlashAttention") && err.contains("MultiHeadAttention"), "{err}");
        assert!(op("op = 3", ExecutionProvider::Cpu).is_err());
        let err = op("opp = \"Attention\"", ExecutionProvider::Cpu).unwrap_err().to_string();
        assert!(err.contains("opp"), "{err}");
    }

    fn model(nodes: Vec<NodeProto>, inputs: &[(&str, Vec<Option<i64>>)], opset: i64) -> OnnxModel {
        let mut m = ModelProto::new();
        m.set_ir_version(8);
        m.opset_import.push(crate::onnx::make_opset("", opset));
        let g = m.graph.mut_or_insert_default();
        g.node = nodes;
        for (name, shape) in inputs {
            g.input.push(make_tensor_value_info(name, dtype::FLOAT, Some(shape)));
        }
        g.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
        OnnxModel::from_proto(m, None)
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeBuilder {
        NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs(outputs.iter().copied())
    }

    fn constant(out: &str, values: &[i64]) -> NodeProto {
        let t = crate::onnx::tensor::tensor_from_i64(
            "",
            &ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap(),
        );
        node("Constant", &[], &[out]).attr_tensor("value", t).build()
    }

    fn constant_f32(out: &str, v: f32) -> NodeProto {
        let t = crate::onnx::tensor::tensor_from_f32("", &ArrayD::from_elem(IxDyn(&[]), v));
        node("Constant", &[], &[out]).attr_tensor("value", t).build()
    }

    /// A hand-built decomposed attention over q, k, v of [2, 5, 8] (2 heads of 4), with `mask` added to
    /// the scores when given; with `self_attention`, q, k and v are one input `x`.
    fn decomposed(mask: Option<Vec<NodeProto>>, self_attention: bool) -> OnnxModel {
        let [q, k, v] = if self_attention { ["x"; 3] } else { ["q", "k", "v"] };
        let mut nodes = vec![
            constant("split", &[2, 5, 2, 4]),
            constant("merge", &[2, 5, 8]),
            constant_f32("s", 0.5),
            node("Reshape", &[q, "split"], &["q4"]).build(),
            node("Transpose", &["q4"], &["qt"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
            node("Reshape", &[k, "split"], &["k4"]).build(),
            node("Transpose", &["k4"], &["kt"]).attr_ints("perm", &[0, 2, 3, 1]).build(),
            node("Reshape", &[v, "split"], &["v4"]).build(),
            node("Transpose", &["v4"], &["vt"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
            node("MatMul", &["qt", "kt"], &["raw"]).build(),
            node("Mul", &["raw", "s"], &["scores"]).build(),
        ];
        let probs_in = match mask {
            Some(m) => {
                nodes.extend(m);
                nodes.push(node("Add", &["scores", "mask"], &["masked"]).build());
                "masked"
            }
            None => "scores",
        };
        nodes.extend([
            node("Softmax", &[probs_in], &["p"]).attr_int("axis", -1).build(),
            node("MatMul", &["p", "vt"], &["o"]).build(),
            node("Transpose", &["o"], &["ot"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
            node("Reshape", &["ot", "merge"], &["y"]).build(),
        ]);
        let shape = vec![Some(2), Some(5), Some(8)];
        if self_attention {
            model(nodes, &[("x", shape)], 17)
        } else {
            model(nodes, &[("q", shape.clone()), ("k", shape.clone()), ("v", shape)], 17)
        }
    }

    #[test]
    fn fuses_a_hand_built_block_with_static_shapes() {
        let before = decomposed(None, false);
        let mut after = before.clone();
        let r = run(&mut after, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
        assert_eq!(r.rewrites, 1);
        let ops: Vec<&str> = after.graph().node.iter().map(|n| n.op_type()).collect();
        assert_eq!(ops, ["MultiHeadAttention"]);
        let n = &after.graph().node[0];
        assert_eq!(n.input, ["q", "k", "v"]);
        assert_eq!(attr_int(n, "num_heads"), Some(2));
        assert_eq!(attr_float(n, "scale"), Some(0.5));
        assert!(compare(&before, &after, 7) <= 1e-6);
    }

    /// A mask that is not causal (here: an arbitrary input) is not fused.
    #[test]
    fn leaves_other_masks_alone() {
        let mut m = decomposed(Some(vec![node("Identity", &["bias"], &["mask"]).build()]), true);
        m.graph_mut().input.push(make_tensor_value_info("bias", dtype::FLOAT, Some(&[Some(5), Some(5)])));
        let r = run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
        assert!(r.unchanged());
    }

    /// diffusers' key padding bias, `(1 - m) * -10000` over `[b, t]` unsqueezed to `[b, 1, 1, t]` (and
    /// scaled by 2 after it is added), over cross-attention; `tile` repeats the unsqueezed mask first.
    fn padded(m_rows: i64, tile: Option<&[i64]>) -> OnnxModel {
        let mut mask = vec![
            constant_f32("one", 1.0),
            constant_f32("neg", -10000.0),
            constant("axes", &[1, 2]),
            node("Sub", &["one", "m"], &["inv"]).build(),
            node("Mul", &["inv", "neg"], &["bias2"]).build(),
            node("Unsqueeze", &["bias2", "axes"], &["bias4"]).build(),
        ];
        let last = match tile {
            Some(reps) => {
                mask.push(constant("reps", reps));
                mask.push(node("Tile", &["bias4", "reps"], &["tiled"]).build());
                "tiled"
            }
            None => "bias4",
        };
        mask.push(node("Identity", &[last], &["mask"]).build());
        let mut m = decomposed(Some(mask), false);
        // Scaled after the mask: the filter value scales too.
        let g = m.graph_mut();
        let add = g.node.iter().position(|n| n.op_type() == "Add").unwrap();
        g.node[add].output[0] = "masked0".into();
        g.node.insert(add + 1, constant_f32("two", 2.0));
        g.node.insert(add + 2, node("Mul", &["masked0", "two"], &["masked"]).build());
        g.input.push(make_tensor_value_info("m", dtype::FLOAT, Some(&[Some(m_rows), Some(5)])));
        m
    }

    #[test]
    fn a_key_padding_mask_becomes_key_padding_mask() {
        let mut m = padded(2, None);
        let r = run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
        assert_eq!(r.rewrites, 1, "{r:?}");
        let mha = m.graph().node.iter().find(|n| n.op_type() == "MultiHeadAttention").unwrap();
        assert_eq!(mha.input[..4], ["q", "k", "v", ""]);
        let cast = m.graph().node.iter().find(|n| n.output.first() == Some(&mha.input[4])).unwrap();
        assert_eq!((cast.op_type(), cast.input[0].as_str()), ("Cast", "m"));
        assert_eq!(attr_int(cast, "to"), Some(i64::from(dtype::INT32)));
        assert_eq!(attr_float(mha, "mask_filter_value"), Some(-20000.0));
        assert_eq!(attr_float(mha, "scale"), Some(1.0));
        // With ONNX Attention as the target the block stays (the mask would need a [b, h, s, t] bias).
        let mut m = padded(2, None);
        m.proto_mut().opset_import[0].set_version(23);
        assert!(run(&mut m, Attention::new(FusedOp::Attention), ExecutionProvider::Cpu).unchanged());
    }

    /// A mask repeated over the batch axis is not a per-row key padding mask: left alone.
    #[test]
    fn a_mask_repeated_over_the_batch_is_left_alone() {
        let mut m = padded(1, Some(&[2, 1, 1, 1]));
        assert!(run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu).unchanged());
        let mut m = padded(2, Some(&[1, 2, 1, 1]));
        assert_eq!(run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu).rewrites, 1);
    }

    /// An upper-triangular (anti-causal) mask is not taken for a causal one.
    #[test]
    fn leaves_an_upper_triangular_mask_alone() {
        let mask = vec![
            constant("mshape", &[5, 5]),
            constant_f32("one", 1.0),
            constant_f32("zero", 0.0),
            constant_f32("neg", f32::NEG_INFINITY),
            node("Expand", &["one", "mshape"], &["ones"]).build(),
            node("Trilu", &["ones"], &["tri"]).attr_int("upper", 1).build(),
            node("Equal", &["tri", "zero"], &["eq"]).build(),
            node("Where", &["eq", "neg", "zero"], &["mask"]).build(),
        ];
        let mut m = decomposed(Some(mask.clone()), true);
        assert!(run(&mut m, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu).unchanged());
        // The same with upper = 0 is causal: fused, and the numbers agree.
        let causal: Vec<NodeProto> = mask
            .into_iter()
            .map(|n| {
                if n.op_type() == "Trilu" { node("Trilu", &["ones"], &["tri"]).attr_int("upper", 0).build() } else { n }
            })
            .collect();
        let before = decomposed(Some(causal.clone()), true);
        let mut after = before.clone();
        let r = run(&mut after, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu);
        assert_eq!(r.rewrites, 1);
        assert!(compare(&before, &after, 8) <= 1e-6);
        // A causal mask between different q and k sources (cross-attention) is not fused.
        let mut cross = decomposed(Some(causal), false);
        assert!(run(&mut cross, Attention::new(FusedOp::MultiHeadAttention), ExecutionProvider::Cpu).unchanged());
    }

    /// Native ONNX `Attention` built by hand, self-attention over x [2, 5, 8] with `is_causal = 1`: the
    /// 3-D form (2 heads) and the 4-D form behind Reshape/Transpose head splits.
    fn native(four_d: bool) -> OnnxModel {
        let nodes = if four_d {
            vec![
                constant("split", &[0, -1, 2, 4]),
                constant("merge", &[0, 0, 8]),
                node("Reshape", &["x", "split"], &["x4"]).build(),
                node("Transpose", &["x4"], &["xt"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
                node("Attention", &["xt", "xt", "xt"], &["o"])
                    .attr_int("is_causal", 1)
                    .attr_float("scale", 0.3)
                    .build(),
                node("Transpose", &["o"], &["ot"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
                node("Reshape", &["ot", "merge"], &["y"]).build(),
            ]
        } else {
            vec![
                node("Attention", &["x", "x", "x"], &["y"])
                    .attr_int("is_causal", 1)
                    .attr_int("q_num_heads", 2)
                    .attr_int("kv_num_heads", 2)
                    .build(),
            ]
        };
        model(nodes, &[("x", vec![None, None, Some(8)])], 23)
    }

    #[test]
    fn fuses_hand_built_native_attention() {
        for four_d in [false, true] {
            for op in [FusedOp::MultiHeadAttention, FusedOp::Attention] {
                let before = native(four_d);
                let mut after = before.clone();
                let r = run(&mut after, Attention::new(op), ExecutionProvider::Cpu);
                if !four_d && op == FusedOp::Attention {
                    assert!(r.unchanged(), "a 3-D Attention is already the fused form");
                    continue;
                }
                assert_eq!(r.rewrites, 1);
                let ops: Vec<&str> = after.graph().node.iter().map(|n| n.op_type()).collect();
                assert_eq!(ops, [op.name()]);
                let n = &after.graph().node[0];
                let causal = if op == FusedOp::Attention { "is_causal" } else { "unidirectional" };
                assert_eq!(attr_int(n, causal), Some(1));
                let scale = if four_d { 0.3 } else { 0.5 };
                assert_eq!(attr_float(n, "scale"), Some(scale));
                let err = compare(&before, &after, 9);
                assert!(err <= 1e-6, "4-D: {four_d}, {}: {err:.2e}", op.name());
            }
        }
    }

    /// Broken or partial graphs are skipped, never a panic.
    #[test]
    fn skips_malformed_graphs() {
        let cases = vec![
            vec![node("Softmax", &["x"], &["y"]).build()],
            vec![node("Softmax", &[], &["y"]).build()],
            vec![node("MatMul", &["x", "x"], &["s"]).build(), node("Softmax", &["s"], &["y"]).build()],
            vec![node("Attention", &["x"], &["y"]).build()],
            vec![
                node("Attention", &["x", "x", "x"], &["y"])
                    .attr_int("q_num_heads", 0)
                    .attr_int("kv_num_heads", 0)
                    .build(),
            ],
            vec![
                node("Transpose", &["x"], &["t"]).attr_ints("perm", &[9, 9, 9, 9]).build(),
                node("Attention", &["t", "t", "t"], &["y"]).build(),
            ],
            vec![
                node("Reshape", &["x", "x"], &["r"]).build(),
                node("Transpose", &["r"], &["t"]).attr_ints("perm", &[0, 2, 1, 3]).build(),
                node("Attention", &["t", "t", "t"], &["y"]).build(),
            ],
        ];
        for nodes in cases {
            for op in [FusedOp::MultiHeadAttention, FusedOp::Attention] {
                let mut m = model(nodes.clone(), &[("x", vec![None, None, Some(8)])], 23);
                assert!(run(&mut m, Attention::new(op), ExecutionProvider::Cpu).unchanged());
            }
        }
    }
}
