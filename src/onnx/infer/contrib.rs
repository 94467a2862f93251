//! Shape/type rules for the `com.microsoft` contrib ops dfast's passes emit, and the ONNX quantization ops
//! of the int8 passes, following ONNX Runtime 1.31's schemas (`contrib_defs.cc`, `bert_defs.cc`,
//! `diffusion_defs.cc`, `nhwc_schema_defs.cc`) and, where the CPU EP has the kernel, the output shapes it
//! returns (checked in this module's tests):
//!
//! ```text
//!   GroupNorm(X, γ, β)                       Y = X                  (channels_last picks the channel axis)
//!   SkipGroupNorm(X, γ, β, skip, bias?)      Y = X, S = X           (S: the sum, optional)
//!   NhwcConv(X [N,H,W,C], W [M,kH,kW,C], B?) Y [N,H',W',M]          (Conv's arithmetic on the NCHW view)
//!   BiasAdd(X [N,S,C], bias [C], skip)       Y = X
//!   BiasSplitGelu(X [N,S,D], bias [D])       Y [N,S,D/2]
//!   BiasGelu(A, B), FastGelu(X, bias?),      Y = X
//!   QuickGelu(X)
//!   SkipLayerNormalization(x, skip, γ, ...)  output = x, mean = inv_std_var = x with last axis 1 (float),
//!                                            input_skip_bias_sum = x
//!   MultiHeadAttention(q, k?, v?, ...)       output [B,S,v_hidden]; present_key / present_value
//!                                            [B, heads, past + L, head size]
//!   QuantizeLinear / DequantizeLinear        y = x's shape; the zero point's (or output_dtype's) type /
//!                                            the scale's type
//!   ConvInteger                              Conv's shape, int32
//! ```
//!
//! Where the schema ties a dimension to a constant input (the channel count to γ's length, the hidden size
//! to a bias), an unknown dimension of the output is filled in from it: the kernels refuse anything else.

use super::facts::Args;
use super::shapes::{conv_shape, normalize_axis};
use super::{Dim, Facts, Shape};
use crate::onnx::attr_int;
use crate::onnx::tensor::dtype;

/// `s` with axis `axis` set to `d` where it is unknown (a known size is kept: the schema does not change it).
fn fill(mut s: Shape, axis: usize, d: Dim) -> Shape {
    if let Some(slot) = s.get_mut(axis)
        && slot.is_none()
    {
        *slot = d;
    }
    s
}

/// The length of a 1-D input (γ, β, a bias), when known.
fn length(f: Option<&Facts>) -> Dim {
    match f?.shape.as_deref()? {
        [d] => *d,
        _ => None,
    }
}

/// The shape of `x` with its last axis filled from the 1-D input `by`.
fn last_from(x: &Facts, by: Option<&Facts>) -> Option<Shape> {
    let s = x.shape.clone()?;
    let last = s.len().checked_sub(1)?;
    Some(fill(s, last, length(by)))
}

/// `GroupNorm` and `SkipGroupNorm`: every output has X's shape and type, with the channel axis (last with
/// `channels_last = 1`, the default of `SkipGroupNorm` and what dfast writes; axis 1 otherwise) taken
/// from γ where X does not tell.
pub(super) fn group_norm(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let channels_last = attr_int(a.node, "channels_last").unwrap_or(1) != 0;
    let shape = x.shape.clone().map(|s| {
        let axis = if channels_last { s.len().saturating_sub(1) } else { 1 };
        fill(s, axis, length(a.input(1)))
    });
    let y = Facts::typed(x.dtype, shape);
    vec![y.clone(); a.node.output.len().clamp(1, 2)]
}

/// `NhwcConv`: Conv's output size on the NCHW view of X [N, H, W, C] and of the weight, which ONNX Runtime's
/// CUDA kernel reads as [M, kH, kW, C/group]; the output is [N, H', W', M].
pub(super) fn nhwc_conv(a: &Args) -> Vec<Facts> {
    // [N, D1.., C] -> [N, C, D1..] and back.
    let to_first = |s: &Shape| -> Option<Shape> {
        let (last, rest) = s.split_last()?;
        let (first, mid) = rest.split_first()?;
        Some([*first, *last].into_iter().chain(mid.iter().copied()).collect())
    };
    let x = a.x.shape.as_ref().and_then(to_first);
    let w = a.input(1).and_then(|w| w.shape.as_ref()).and_then(to_first);
    let y = conv_shape(a.node, x.as_ref(), w.as_ref()).map(|s| {
        let mut out = vec![s[0]];
        out.extend_from_slice(&s[2..]);
        out.push(s[1]);
        out
    });
    vec![Facts::typed(a.x.dtype, y)]
}

/// `BiasAdd`: X's shape (the skip's where X's is unknown; the kernel wants them equal), last axis C from the
/// bias.
pub(super) fn bias_add(a: &Args) -> Vec<Facts> {
    let skip = a.input(2).filter(|_| a.x.shape.is_none()).unwrap_or(a.x);
    vec![Facts::typed(a.x.dtype, last_from(skip, a.input(1)))]
}

/// `BiasGelu`, `FastGelu`, `QuickGelu`: X's shape and type, the last axis from the bias where there is one.
pub(super) fn gelu(a: &Args) -> Vec<Facts> {
    vec![Facts::typed(a.x.dtype, last_from(a.x, a.input(1)))]
}

/// `BiasSplitGelu`: X [N, S, D] (D from the bias where unknown) -> [N, S, D / 2].
pub(super) fn bias_split_gelu(a: &Args) -> Vec<Facts> {
    let shape = last_from(a.x, a.input(1)).filter(|s| s.len() == 3).map(|mut s| {
        s[2] = s[2].filter(|d| d % 2 == 0).map(|d| d / 2);
        s
    });
    vec![Facts::typed(a.x.dtype, shape)]
}

/// `SkipLayerNormalization`: output and input_skip_bias_sum have the input's shape (hidden size from γ) and
/// type; mean and inv_std_var are float32 with the last axis 1.
pub(super) fn skip_layer_norm(a: &Args) -> Vec<Facts> {
    let x = a.x;
    let shape = last_from(x, a.input(2));
    let stats = shape.clone().map(|mut s| {
        if let Some(last) = s.last_mut() {
            *last = Some(1);
        }
        s
    });
    let y = Facts::typed(x.dtype, shape);
    let stat = Facts::typed(Some(dtype::FLOAT), stats);
    vec![y.clone(), stat.clone(), stat, y]
}

/// `MultiHeadAttention` in the forms of its schema: query [B, S, D] with key/value [B, L, D] / [B, L, Dv], or
/// already split into heads [B, heads, L, head size], or key packed with value [B, L, heads, 2, head size];
/// query packed with key and value [B, L, heads, 3, head size]. Output [B, S, Dv]; present_key and
/// present_value [B, heads, past + L, head size] (past from past_key, input 6).
pub(super) fn multi_head_attention(a: &Args) -> Vec<Facts> {
    let heads = attr_int(a.node, "num_heads").filter(|&h| h > 0);
    let shape = |k: usize| a.input(k).and_then(|f| f.shape.as_deref());
    let (k, v) = (shape(1), shape(2));
    let product = |x: Dim, y: Dim| x.zip(y).and_then(|(x, y)| x.checked_mul(y));
    let per_head = |x: Dim| x.zip(heads).and_then(|(x, n)| (x % n == 0).then_some(x / n));
    // (batch, query length, kv length, key head size, value head size, value hidden size)
    let layout: Option<[Dim; 6]> = match (a.x.shape.as_deref(), k, v) {
        (Some(&[b, s, n, _, h]), None, None) => Some([b, s, s, h, h, product(n, h)]),
        (Some(&[b, s, _]), Some(&[_, l, n, _, h]), None) => Some([b, s, l, h, h, product(n, h)]),
        (Some(&[b, s, _]), Some(&[_, l, dk]), Some(&[_, _, dv])) => Some([b, s, l, per_head(dk), per_head(dv), dv]),
        (Some(&[b, s, _]), Some(&[_, _, l, hk]), Some(&[_, n, _, hv])) => Some([b, s, l, hk, hv, product(n, hv)]),
        (Some(&[b, s, _]), ..) => Some([b, s, None, None, None, None]),
        _ => None,
    };
    let dt = a.x.dtype;
    let Some([b, s, l, hk, hv, dv]) = layout else { return vec![Facts::typed(dt, None)] };
    let mut outs = vec![Facts::typed(dt, Some(vec![b, s, dv]))];
    // Present key/value (not for the packed forms): head-split key/value are the present state already;
    // 3-D ones are appended to past_key / past_value (inputs 6 and 7) when given.
    match (k.map(<[Dim]>::len), v.is_some()) {
        (Some(4), true) => {
            outs.push(Facts::typed(dt, Some(vec![b, heads, l, hk])));
            outs.push(Facts::typed(dt, Some(vec![b, heads, l, hv])));
        }
        (Some(3), true) => {
            let total = |past: usize| match a.input(past) {
                None => l,
                Some(p) => match p.shape.as_deref() {
                    Some(&[_, _, p, _]) => p.zip(l).map(|(p, l)| p + l),
                    _ => None,
                },
            };
            outs.push(Facts::typed(dt, Some(vec![b, heads, total(6), hk])));
            outs.push(Facts::typed(dt, Some(vec![b, heads, total(7), hv])));
        }
        _ => {}
    }
    outs
}

/// `QuantizeLinear`: x's shape; the type of `output_dtype` (opset 21), else of the zero point, else uint8.
pub(super) fn quantize_linear(a: &Args) -> Vec<Facts> {
    let dt = attr_int(a.node, "output_dtype")
        .filter(|&t| t != 0)
        .and_then(|t| i32::try_from(t).ok())
        .or_else(|| a.input(2).and_then(|z| z.dtype))
        .or(Some(dtype::UINT8));
    vec![Facts::typed(dt, a.x.shape.clone())]
}

/// `DequantizeLinear`: x's shape (per-axis or blocked scales do not change it) in the scale's type.
pub(super) fn dequantize_linear(a: &Args) -> Vec<Facts> {
    let axis_ok = match (&a.x.shape, attr_int(a.node, "axis")) {
        (Some(s), Some(axis)) if !s.is_empty() => normalize_axis(axis, s.len()).is_some(),
        _ => true,
    };
    let shape = a.x.shape.clone().filter(|_| axis_ok);
    let dt = a.input(1).and_then(|s| s.dtype).or(Some(dtype::FLOAT));
    vec![Facts::typed(dt, shape)]
}

/// `ConvInteger`: `Conv`'s output shape, int32.
pub(super) fn conv_integer(a: &Args) -> Vec<Facts> {
    let w = a.input(1).and_then(|w| w.shape.as_ref());
    vec![Facts::typed(Some(dtype::INT32), conv_shape(a.node, a.x.shape.as_ref(), w))]
}
