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

use crate::Result;
use crate::passes::{BuildContext, PassSpec};
use crate::settings::ExecutionProvider;

/// Added scores at or below this count as masked out (`exp` of them underflows to 0 in f32).
pub(super) const MASKED: f64 = -1.0e4;

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

mod fused;
mod heads;
mod mask;
mod matcher;
mod run;
#[cfg(test)]
mod tests;
