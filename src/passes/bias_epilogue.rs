//! Bias epilogues: a projection's constant bias Add that reaches the channels-last UNet through a Reshape is
//! folded into the CUDA op that consumes it (CUDA only).
//!
//! ```text
//! (a) into SkipGroupNorm's bias input:
//!
//!   x ─MatMul(W)─> m [N, HW, C] ─Add(b [C])─Reshape [N, H, W, C]─┐
//!                                                 skip [N, H, W, C]─SkipGroupNorm(γ, β) ─> y, sum
//!  becomes
//!   m ─Reshape [N, H, W, C]─┐
//!                  skip ────SkipGroupNorm(γ, β, bias b) ─> y, sum      (sum = m + skip + b, as before)
//!
//! (b) a residual Add in NHWC into BiasAdd, C = 320, 640 or 1280:
//!
//!   m [N, HW, C] ─Add(b [C])─Reshape(shape) [N, H, W, C]─Add(s [N, H, W, C])─> y
//!  becomes
//!   m, b, Reshape(s, [0, -1, C]) ─BiasAdd─Reshape(shape)─> y                 (the Reshapes move no data)
//! ```
//!
//! In a diffusers UNet this is the transformer's `proj_out` (a Linear in SDXL) with the residual: once
//! nhwc-conv has cancelled the transformer's transposes, its output is only reshaped to [N, H, W, C] before
//! the residual Add, which group-norm has folded into the next resnet's SkipGroupNorm (a), or which stays an
//! Add in the up blocks, before a Concat or the upsampler (b). Run after group-norm and nhwc-conv.
//!
//! Where ONNX Runtime has a CUDA kernel that takes a bias after a MatMul, and what the fused profile leaves
//! (counted on tiny-sdxl and tiny-sdxl-dynamo in this file's tests; at SDXL's sizes the channel limits of
//! geglu and bias-add are met):
//! - the feed-forward's first Linear + GELU: `BiasGelu` (bias-gelu) or, for GEGLU, `BiasSplitGelu` (geglu);
//! - attention's `to_out` and the feed-forward's last Linear + residual: `SkipLayerNormalization`'s bias
//!   (skip-layer-norm) when a LayerNormalization follows, `BiasAdd` (bias-add) when not;
//! - `proj_out` + residual: this pass;
//! - `proj_in`'s bias (read by the block's first LayerNormalization and by the first residual): **no kernel
//!   takes it** (`LayerNormalization` has no input bias; `SkipLayerNormalization` needs a skip of the full
//!   shape). Left as an Add;
//! - q/k/v projections: SD's have no bias; the VAE's attention has (MultiHeadAttention's `bias` input could
//!   take it: a matter for the attention pass, not done here);
//! - the time embedding's linears are already `Gemm` with a bias (the exports write them so); a 2-D MatMul +
//!   bias as `Gemm` would gain nothing on CUDA (its kernel copies the bias into the output, then runs the GEMM
//!   with beta = 1: the same memory traffic as the Add), so no pass does it.
//!
//! Kernel constraints (`contrib_ops/cuda/diffusion/group_norm.cc`, `bias_add.cc`): SkipGroupNorm's bias is
//! 1-D [C] of the input's type, and the op adds it to input + skip for both outputs; BiasAdd takes 3-D
//! [N, S, C] with C in 320, 640, 1280, a 1-D [C] bias and a skip of the input's shape, all of one type. So
//! here: the bias Add reads the output of a MatMul by a constant [K, C] and a constant 1-D [C] of its type,
//! and only the Reshape reads its result; only the consuming op reads the Reshape's output; for (a) the
//! SkipGroupNorm has no bias yet and its γ has C values (its input and skip end in C, which the kernel
//! enforces, so the bias stays on the last axis through the Reshape; the Reshape's target, often computed at
//! run time, need not be known); for (b) the Reshape's target is known to end in C, the MatMul's output is
//! rank 3 with C supported, and the other operand of the residual Add is computed, rank 4, with the Reshape's
//! output shape (every axis known and equal on both sides, or unknown on both). When a shape is not known,
//! (b) is left alone. The TorchScript exports compute the Reshape's target at run time from `Shape` of the
//! transformer's input, which after nhwc-conv reads the output of a channels-last SkipGroupNorm or NhwcConv:
//! inference's rules for those ops (`onnx::infer`) tell that it ends in C.
//!
//! Targets: both ops are CUDA-only: the pass rewrites only when the target is cuda and the profile allows
//! CUDA-only fusions. Its tests lower SkipGroupNorm and BiasAdd back to standard ops and compare with the
//! unrewritten graph on the CPU EP. Unverified on a GPU.
//!
//! Options: none. Idempotent: the matched bias Adds are gone.

use ndarray::Array1;

use crate::Result;
use crate::onnx::infer::Inference;
use crate::onnx::{GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, is_op, tensor};
use crate::passes::pattern::{BIAS_ADD_CHANNELS, bias_add};
use crate::passes::{BuildContext, NoOptions, Pass, PassContext, PassSpec};

/// The bias-epilogue pass (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct BiasEpilogue {
    enabled: bool,
}

impl BiasEpilogue {
    /// A pass that rewrites (on a cuda target) when `enabled`.
    pub fn new(enabled: bool) -> Self {
        BiasEpilogue { enabled }
    }
}

impl PassSpec for BiasEpilogue {
    const NAME: &'static str = "bias-epilogue";
    const SUMMARY: &'static str = "a projection's bias Add reshaped into the NHWC UNet goes into SkipGroupNorm's bias \
                                   or a BiasAdd (cuda with `cuda_only_fusions` only)";
    type Options = NoOptions;
    const CUDA_ONLY: bool = true;
    fn build(_: NoOptions, ctx: &BuildContext) -> Result<Self> {
        Ok(BiasEpilogue { enabled: ctx.allows_cuda_only_ops() })
    }
}

/// A bias Add reshaped: `value = Reshape(Add(m, bias), shape)`.
struct Reshaped {
    reshape: usize,
    add: usize,
    m: String,
    bias: String,
    shape: String,
    channels: i64,
    /// Whether the Reshape's target is known to end in `channels`.
    last_known: bool,
}

/// `value` as `Reshape(Add(MatMul(x, W [K, C]), bias [C]), shape)`, every intermediate read once, `value`
/// read only by node `reader`, the target's last entry C or not known.
fn reshaped_bias(index: &GraphIndex, facts: &Inference, value: &str, reader: usize) -> Option<Reshaped> {
    if index.is_graph_output(value) || index.single_consumer(value) != Some(reader) {
        return None;
    }
    let reshape = index.producer_op(value, "Reshape")?;
    let r = index.node(reshape);
    let (t, shape) = (r.input.first()?, r.input.get(1)?);
    if index.is_graph_output(t) || index.single_consumer(t) != Some(reshape) {
        return None;
    }
    let add = index.producer_op(t, "Add")?;
    let sum = index.node(add);
    let (dt, c) = sum.input.iter().find_map(|i| {
        let b = index.const_tensor(i)?;
        (b.dims.len() == 1).then(|| (b.data_type(), b.dims[0]))
    })?;
    let term = bias_add(index, t).filter(|b| b.width == c && b.dtype == dt)?;
    let matmul = index.node(index.producer_op(&term.x, "MatMul")?);
    let w = index.const_tensor(matmul.input.get(1)?)?;
    if w.dims.len() != 2 || w.dims[1] != c || w.data_type() != dt {
        return None;
    }
    let last = facts.facts(shape).and_then(|f| f.elems()).and_then(|e| e.last().copied().flatten());
    if last.is_some_and(|l| l != c) {
        return None;
    }
    Some(Reshaped {
        reshape,
        add,
        m: term.x,
        bias: term.bias,
        shape: shape.clone(),
        channels: c,
        last_known: last == Some(c),
    })
}

impl Pass for BiasEpilogue {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        if !self.enabled {
            return Ok(None);
        }
        let index = GraphIndex::new(model);
        let facts = Inference::run(&index);
        let mut patch = Patch::new();
        for (i, node) in index.nodes().iter().enumerate() {
            if patch.is_removed(i) {
                continue;
            }
            let rewritten = if node.op_type() == "SkipGroupNorm" && node.domain() == "com.microsoft" {
                skip_group_norm(&index, &facts, &mut patch, i, node)
            } else if is_op(node, "Add") && node.domain().is_empty() {
                residual(&index, &facts, &mut patch, i, node)
            } else {
                false
            };
            if rewritten {
                patch.require_opset("com.microsoft", 1);
                patch.count_rewrite();
            }
        }
        Ok((!patch.is_empty()).then_some(patch))
    }
}

/// Removes node `i` and the matched Reshape and bias Add, unless a rewrite in this patch claimed one of them.
fn claim(patch: &mut Patch, i: usize, r: &Reshaped) -> bool {
    if [i, r.reshape, r.add].iter().any(|&k| patch.is_removed(k)) {
        return false;
    }
    for k in [i, r.reshape, r.add] {
        patch.remove_node(k);
    }
    true
}

/// (a): the SkipGroupNorm at `i` with its input or skip a reshaped bias Add.
fn skip_group_norm(index: &GraphIndex, facts: &Inference, patch: &mut Patch, i: usize, node: &NodeProto) -> bool {
    if node.input.len() < 4 || node.input.get(4).is_some_and(|b| !b.is_empty()) {
        return false;
    }
    let Some(channels) = index.const_tensor(&node.input[1]).map(|g| g.dims.clone()) else { return false };
    for k in [0, 3] {
        let Some(r) = reshaped_bias(index, facts, &node.input[k], i) else { continue };
        if channels != [r.channels] || !claim(patch, i, &r) {
            continue;
        }
        let x = patch.fresh_name(index, &format!("{}_nobias", node.input[k]));
        patch.add_node(NodeBuilder::new("Reshape").inputs([r.m.clone(), r.shape.clone()]).outputs([x.clone()]).build());
        let mut sgn = node.clone();
        sgn.input.truncate(4);
        sgn.input[k] = x;
        sgn.input.push(r.bias.clone());
        patch.add_node(sgn);
        return true;
    }
    false
}

/// (b): the residual Add at `i` with one side a reshaped bias Add of a supported width.
fn residual(index: &GraphIndex, facts: &Inference, patch: &mut Patch, i: usize, node: &NodeProto) -> bool {
    if node.input.len() != 2 || node.output.len() != 1 {
        return false;
    }
    for k in 0..2 {
        let (v, s) = (&node.input[k], &node.input[1 - k]);
        if v == s || s.is_empty() || index.const_tensor(s).is_some() {
            continue;
        }
        let Some(r) = reshaped_bias(index, facts, v, i) else { continue };
        if !r.last_known || !BIAS_ADD_CHANNELS.contains(&r.channels) || facts.shape(&r.m).is_none_or(|m| m.len() != 3) {
            continue;
        }
        let (Some(sv), Some(ss)) = (facts.shape(v), facts.shape(s)) else { continue };
        let same = sv.len() == 4 && ss.len() == 4 && sv.iter().zip(ss).all(|(a, b)| a == b);
        if !same || facts.dtype(s) != facts.dtype(&r.m) || !claim(patch, i, &r) {
            continue;
        }
        let y = &node.output[0];
        let target = patch.fresh_name(index, &format!("{y}_tokens_shape"));
        patch.add_initializer(tensor::tensor_from_i64(&target, &Array1::from(vec![0, -1, r.channels]).into_dyn()));
        let s3 = patch.fresh_name(index, &format!("{y}_skip_tokens"));
        let y3 = patch.fresh_name(index, &format!("{y}_tokens"));
        patch.add_node(NodeBuilder::new("Reshape").inputs([s.clone(), target]).outputs([s3.clone()]).build());
        patch.add_node(
            NodeBuilder::new("BiasAdd")
                .domain("com.microsoft")
                .inputs([r.m.clone(), r.bias.clone(), s3])
                .outputs([y3.clone()])
                .build(),
        );
        patch.add_node(NodeBuilder::new("Reshape").inputs([y3, r.shape.clone()]).outputs([y.clone()]).build());
        return true;
    }
    false
}

#[cfg(test)]
mod tests;
