//! Group normalization (+ SiLU, + a residual Add before it) becomes ONNX Runtime's CUDA-only
//! `com.microsoft::GroupNorm` / `SkipGroupNorm`, which run channels-last.
//!
//! ```text
//! (a) TorchScript (opset 17, after cleanup):
//!
//!   x [N, C, H, W] ─Reshape [N|0, G, -1]─InstanceNormalization(scale 1, bias 0, ε)─Reshape [N, C, H, W]─┐
//!        ┌───────────────────────────────────────────────────────────────────────────────────────────┘
//!        └─(Mul γ [C,1,1])─(Add β [C,1,1])─> y
//!
//! (b) decomposed, on the same grouped reshape r = Reshape(x, [N, G, -1]):
//!
//!   d = Sub(r, ReduceMean(r, last axis))
//!   Div(d, Sqrt(Add(ReduceMean(Pow(Sub(r, ReduceMean(r)), 2)), ε)))─Reshape [N, C, H, W]─(Mul γ)─(Add β)─> y
//!
//! (c) dynamo (opset 21+; 18 with per-group scale/bias):
//!
//!   x ─GroupNormalization(γ, β; num_groups = G, ε)─> y
//!
//! each optionally followed by SiLU (y ─┬─Sigmoid─┐
//!                                      └────────Mul─> z)
//! and optionally fed by a residual Add (x = Add(a, s), s [N, C, H, W] or [N, C, 1, 1]), become
//!
//!   x ─Transpose(0,2,3,1)─GroupNorm(γ, β; groups G, epsilon ε, activation 1 with SiLU, channels_last 1)
//!     ─Transpose(0,3,1,2)─> y (or z)
//!
//!   a ─Transpose(0,2,3,1)─┐
//!   s ─Transpose(0,2,3,1)─┴─SkipGroupNorm(γ, β, s) ─Transpose(0,3,1,2)─> y (or z)
//!                                  └─ sum output ─Transpose(0,3,1,2)─> x   (only when x has other readers)
//! ```
//!
//! The Transposes are always emitted here; cancelling them across neighbouring ops is left to others.
//!
//! What the CUDA kernel accepts (onnxruntime/contrib_ops/cuda/diffusion/group_norm.cc, group_norm_impl.cu
//! and group_norm_common_base.cc in microsoft/onnxruntime, the 1.18+ form ONNX Runtime 1.31 ships):
//! - channels-last 4-D input of float or float16; `channels_last = 0` is refused;
//! - gamma and beta float32 of shape [C] (the pass writes them as fp32 initializers, so they must be constant);
//! - C divisible by `groups`, and C / groups even (two channels per thread);
//! - the channels per block (a multiple of C / groups chosen among 128, 256, 320, 384, 512 by a cost rule,
//!   or C / groups itself when that is 256 or more) at most 512, i.e. C / groups <= 512;
//! - skip (SkipGroupNorm) of shape [N, H, W, C], [N, 1, 1, C] or [N, C]; bias optional (not emitted here).
//!
//! What else is checked: the grouped Reshape's target is [0 | N | run-time batch, G, -1 | C/G·H·W] on a 4-D x
//! with a static C; the Reshape back is `Shape(x)` or a shape equal to x's on all axes but one; the
//! intermediate values of the chain have no other readers; InstanceNormalization's scale and bias are
//! ones and zeros; γ and β are constants with one value per channel; a residual Add has two non-constant
//! operands, one [N, C, H, W] and the other the same or [N, C, 1, 1] with the same batch entry (when both
//! batches are dynamic, a batch-1 skip against a larger batch at run time is not excluded).
//! Not matched: the decomposed form on a 5-D reshape [N, G, C/G, H, W], Reciprocal/Mul instead of Div, a
//! native SiLU op (the exports in `models/` write Sigmoid + Mul), a residual bias (SkipGroupNorm's `bias`).
//!
//! There is no CPU kernel for these ops: the pass only rewrites when the target is cuda and the profile
//! allows CUDA-only fusions ([`BuildContext::allows_cuda_only_ops`]). Its matcher ([`find`]) is tested
//! against ONNX Runtime's CPU run of the unrewritten graph with a reference GroupNorm computed from the
//! parameters it extracted.
//!
//! Idempotent: the matched chains are gone after the rewrite and the contrib ops are not matched again.

use std::collections::HashSet;

use ndarray::{Array1, ArrayD};

use crate::Result;
use crate::onnx::infer::Inference;
use crate::onnx::{
    GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, attr_float, attr_int, attr_ints, dtype, is_op, tensor,
};
use crate::passes::layout::{TO_NCHW, TO_NHWC, transpose};
use crate::passes::{BuildContext, NoOptions, Pass, PassContext, PassSpec};

/// The group-norm pass (see the module docs). Built enabled only when CUDA-only fusions are allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupNorm {
    enabled: bool,
}

impl GroupNorm {
    /// A pass that rewrites (on a cuda target) when `enabled`.
    pub fn new(enabled: bool) -> Self {
        GroupNorm { enabled }
    }
}

impl PassSpec for GroupNorm {
    const NAME: &'static str = "group-norm";
    const SUMMARY: &'static str = "GroupNorm (+SiLU, +residual Add) becomes com.microsoft GroupNorm / SkipGroupNorm, \
                                   channels-last (cuda with `cuda_only_fusions` only)";
    type Options = NoOptions;
    const CUDA_ONLY: bool = true;
    fn build(_: NoOptions, ctx: &BuildContext) -> Result<Self> {
        Ok(GroupNorm { enabled: ctx.allows_cuda_only_ops() })
    }
}

/// The source form a group normalization was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// Reshape - InstanceNormalization - Reshape - Mul - Add.
    InstanceNorm,
    /// Reshape - ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div - Reshape - Mul - Add.
    Decomposed,
    /// ONNX GroupNormalization.
    Native,
}

/// A residual Add feeding the normalization: `x = input + skip`.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    /// The Add node.
    pub node: usize,
    /// Its full-shaped operand [N, C, H, W].
    pub input: String,
    /// The other operand: [N, C, H, W], or [N, C, 1, 1] (`broadcast`).
    pub skip: String,
    pub broadcast: bool,
}

/// One group normalization as found, with what the fused op needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub form: Form,
    /// The normalized NCHW value (the residual Add's output when there is one).
    pub x: String,
    /// The value the fused op replaces (after the affine, or after the SiLU).
    pub output: String,
    pub channels: usize,
    pub groups: usize,
    pub epsilon: f32,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub silu: bool,
    pub skip: Option<Skip>,
    /// The nodes the rewrite removes (the rest of the chain dies with them).
    pub nodes: Vec<usize>,
}

impl Match {
    /// True when ONNX Runtime's CUDA kernel accepts these channel and group counts.
    pub fn kernel_accepts(&self) -> bool {
        kernel_accepts(self.channels, self.groups)
    }
}

/// The channels per CUDA block the kernel picks (group_norm_common_base.cc, GetChannelsPerBlock).
fn channels_per_block(channels: usize, groups: usize) -> Option<usize> {
    const SIZES: [usize; 5] = [128, 256, 320, 384, 512];
    let per_group = channels / groups;
    if per_group >= SIZES[SIZES.len() - 1] / 2 {
        return Some(per_group);
    }
    let mut best: Option<(usize, usize)> = None;
    for &size in SIZES.iter().rev() {
        if size < per_group {
            break;
        }
        let per_block = size / per_group * per_group;
        let blocks = channels.div_ceil(per_block);
        let cost = blocks * size - channels;
        if cost == 0 {
            return Some(per_block);
        }
        if best.is_none_or(|(c, _)| cost < c) {
            best = Some((cost, per_block));
        }
    }
    best.map(|(_, b)| b)
}

/// The kernel's checks on C and groups (group_norm.cc ComputeInternal, group_norm_impl.cu LaunchGroupNormKernel).
pub fn kernel_accepts(channels: usize, groups: usize) -> bool {
    if groups == 0 || channels == 0 || !channels.is_multiple_of(groups) {
        return false;
    }
    let per_group = channels / groups;
    if !per_group.is_multiple_of(2) {
        return false;
    }
    channels_per_block(channels, groups).is_some_and(|b| b % per_group == 0 && b <= 512)
}

impl Pass for GroupNorm {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        if !self.enabled {
            return Ok(None);
        }
        let index = GraphIndex::new(model);
        let inference = Inference::run(&index);
        let mut patch = Patch::new();
        for m in find_in(&index, &inference) {
            if !m.kernel_accepts() || m.nodes.iter().any(|&n| patch.is_removed(n)) {
                continue;
            }
            if !matches!(inference.dtype(&m.x), Some(dtype::FLOAT | dtype::FLOAT16)) {
                continue;
            }
            emit(&index, &mut patch, &m);
        }
        Ok((!patch.is_empty()).then_some(patch))
    }
}

fn emit(index: &GraphIndex, patch: &mut Patch, m: &Match) {
    let f32s = |name: &str, v: &[f32]| tensor::tensor_from_f32(name, &Array1::from(v.to_vec()).into_dyn());
    let gamma = patch.fresh_name(index, &format!("{}_gn_gamma", m.output));
    patch.add_initializer(f32s(&gamma, &m.gamma));
    let beta = patch.fresh_name(index, &format!("{}_gn_beta", m.output));
    patch.add_initializer(f32s(&beta, &m.beta));
    let to_nhwc = |patch: &mut Patch, v: &str| {
        let t = patch.fresh_name(index, &format!("{v}_nhwc"));
        patch.add_node(transpose(v, &t, &TO_NHWC));
        t
    };
    let y_nhwc = patch.fresh_name(index, &format!("{}_nhwc", m.output));
    let mut builder = NodeBuilder::new(if m.skip.is_some() { "SkipGroupNorm" } else { "GroupNorm" })
        .domain("com.microsoft")
        .attr_float("epsilon", m.epsilon)
        .attr_int("groups", m.groups as i64)
        .attr_int("activation", i64::from(m.silu))
        .attr_int("channels_last", 1);
    match &m.skip {
        None => {
            let x = to_nhwc(patch, &m.x);
            builder = builder.inputs([x, gamma, beta]).outputs([y_nhwc.clone()]);
        }
        Some(skip) => {
            let a = to_nhwc(patch, &skip.input);
            let s = to_nhwc(patch, &skip.skip);
            // The sum is needed when the Add's output has readers outside the matched chain.
            let matched: HashSet<usize> = m.nodes.iter().copied().collect();
            let others = index.is_graph_output(&m.x) || index.consumers(&m.x).iter().any(|c| !matched.contains(c));
            let mut outputs = vec![y_nhwc.clone()];
            if others {
                let sum = patch.fresh_name(index, &format!("{}_nhwc", m.x));
                patch.add_node(transpose(&sum, &m.x, &TO_NCHW));
                outputs.push(sum);
            }
            builder = builder.inputs([a, gamma, beta, s]).outputs(outputs);
        }
    }
    patch.add_node(builder.build());
    patch.add_node(transpose(&y_nhwc, &m.output, &TO_NCHW));
    for &n in &m.nodes {
        patch.remove_node(n);
    }
    patch.require_opset("com.microsoft", 1);
    patch.count_rewrite();
}

/// Every group normalization of `model` the pass recognizes, whether the kernel accepts it or not.
pub fn find(model: &OnnxModel) -> Vec<Match> {
    let index = GraphIndex::new(model);
    let inference = Inference::run(&index);
    find_in(&index, &inference)
}

fn find_in(index: &GraphIndex, inference: &Inference) -> Vec<Match> {
    let mut found = Vec::new();
    let mut claimed: HashSet<usize> = HashSet::new();
    for (i, node) in index.nodes().iter().enumerate() {
        let Some(mut m) = core(index, inference, i, node) else { continue };
        affine_and_activation(index, &mut m);
        residual(index, inference, &mut m, &claimed);
        if m.nodes.iter().any(|n| claimed.contains(n)) {
            continue;
        }
        claimed.extend(m.nodes.iter().copied());
        found.push(m);
    }
    found
}

/// A value read by exactly one node and not a graph output: that node.
fn only_reader(index: &GraphIndex, value: &str) -> Option<usize> {
    if index.is_graph_output(value) {
        return None;
    }
    index.single_consumer(value)
}

/// The other input of a two-input node, given one.
fn other_input<'a>(node: &'a NodeProto, one: &str) -> Option<&'a str> {
    match &node.input[..] {
        [a, b] if a == one => Some(b),
        [a, b] if b == one => Some(a),
        _ => None,
    }
}

/// A float constant as f32 values.
fn const_values(index: &GraphIndex, value: &str) -> Option<ArrayD<f32>> {
    index.const_f32(value).ok().flatten()
}

/// A constant with exactly C values laid out along the channel axis of NCHW ([C], [C,1,1], [1,C,1,1]).
fn per_channel(index: &GraphIndex, value: &str, channels: usize) -> Option<Vec<f32>> {
    let v = const_values(index, value)?;
    let shape = v.shape();
    let ok = v.len() == channels
        && shape.len() <= 4
        && shape.len() >= 3
        && shape[shape.len() - 3] == channels
        && shape[..shape.len() - 3].iter().all(|&d| d == 1);
    ok.then(|| v.iter().copied().collect())
}

/// The NCHW input of a Reshape to [N, G, -1] and G, with C known and divisible by G.
fn grouped(index: &GraphIndex, inference: &Inference, r: &str) -> Option<(String, usize, usize)> {
    let reshape = index.node(index.producer_op(r, "Reshape")?);
    let x = reshape.input.first()?;
    let x_shape = inference.shape(x)?;
    if x_shape.len() != 4 {
        return None;
    }
    let channels = usize::try_from(x_shape[1]?).ok()?;
    let target = inference.facts(reshape.input.get(1)?)?.elems()?;
    let [_, Some(g), last] = target[..] else { return None };
    let groups = usize::try_from(g).ok().filter(|&g| g > 0 && channels % g == 0)?;
    let last_ok = match (last, x_shape[2], x_shape[3]) {
        (Some(-1), ..) => true,
        (Some(v), Some(h), Some(w)) => v == (channels / groups) as i64 * h * w,
        _ => false,
    };
    // The batch entry: 0 (copy), the batch size, or read at run time.
    let batch_ok = match (target[0], x_shape[0]) {
        (Some(0) | None, _) => true,
        (Some(n), Some(xn)) => n == xn,
        (Some(n), None) => n > 0 && last == Some(-1),
    };
    (last_ok && batch_ok).then(|| (x.clone(), channels, groups))
}

/// ReduceMean over the last axis of a rank-3 value, keepdims; its input.
fn mean_over_last(index: &GraphIndex, inference: &Inference, value: &str, seen: &mut Vec<usize>) -> Option<String> {
    let k = index.producer_op(value, "ReduceMean")?;
    seen.push(k);
    let node = index.node(k);
    if attr_int(node, "keepdims").unwrap_or(1) != 1 {
        return None;
    }
    let axes: Vec<i64> = match attr_ints(node, "axes") {
        Some(a) => a.to_vec(),
        None => inference.facts(node.input.get(1).filter(|a| !a.is_empty())?)?.ints()?,
    };
    (axes == [-1] || axes == [2]).then(|| node.input[0].clone())
}

/// `Sub(r, ReduceMean(r))`: r.
fn centered(index: &GraphIndex, inference: &Inference, value: &str, seen: &mut Vec<usize>) -> Option<String> {
    let k = index.producer_op(value, "Sub")?;
    seen.push(k);
    let sub = index.node(k);
    let [r, m] = &sub.input[..] else { return None };
    (mean_over_last(index, inference, m, seen)? == *r).then(|| r.clone())
}

/// The normalization at node `i`, up to its output before the affine.
fn core(index: &GraphIndex, inference: &Inference, i: usize, node: &NodeProto) -> Option<Match> {
    if node.output.len() != 1 || node.output[0].is_empty() {
        return None;
    }
    let out = node.output[0].clone();
    // Nodes of the chain that die with it when nothing else reads them.
    let mut inner = Vec::new();
    let (form, r, epsilon) = if is_op(node, "InstanceNormalization") && node.input.len() == 3 {
        let scale = const_values(index, &node.input[1])?;
        let bias = const_values(index, &node.input[2])?;
        if !scale.iter().all(|&v| v == 1.0) || !bias.iter().all(|&v| v == 0.0) {
            return None;
        }
        (Form::InstanceNorm, node.input[0].clone(), attr_float(node, "epsilon").unwrap_or(1e-5))
    } else if is_op(node, "Div") && node.input.len() == 2 {
        let r = centered(index, inference, &node.input[0], &mut inner)?;
        let sqrt_k = index.producer_op(&node.input[1], "Sqrt")?;
        let sqrt = index.node(sqrt_k);
        let add_k = index.producer_op(&sqrt.input[0], "Add")?;
        let add = index.node(add_k);
        inner.extend([sqrt_k, add_k]);
        let (var, eps) = match &add.input[..] {
            [a, b] => match (const_values(index, a), const_values(index, b)) {
                (None, Some(e)) => (a, e),
                (Some(e), None) => (b, e),
                _ => return None,
            },
            _ => return None,
        };
        if eps.len() != 1 {
            return None;
        }
        let squared = mean_over_last(index, inference, var, &mut inner)?;
        inner.extend(index.producer(&squared));
        let sq = index.producer_node(&squared)?;
        let d = if is_op(sq, "Pow") {
            let e = const_values(index, sq.input.get(1)?)?;
            (e.len() == 1 && e.iter().all(|&v| v == 2.0)).then(|| sq.input[0].clone())?
        } else if is_op(sq, "Mul") && sq.input.len() == 2 && sq.input[0] == sq.input[1] {
            sq.input[0].clone()
        } else {
            return None;
        };
        if centered(index, inference, &d, &mut inner)? != r {
            return None;
        }
        (Form::Decomposed, r, eps.iter().copied().next()?)
    } else if is_op(node, "GroupNormalization") && node.input.len() == 3 {
        let x = node.input[0].clone();
        let shape = inference.shape(&x)?;
        if shape.len() != 4 {
            return None;
        }
        let channels = usize::try_from(shape[1]?).ok()?;
        let groups = usize::try_from(attr_int(node, "num_groups")?).ok().filter(|&g| g > 0 && channels % g == 0)?;
        let expand = |v: ArrayD<f32>| -> Option<Vec<f32>> {
            match v.len() {
                n if n == channels && v.ndim() == 1 => Some(v.iter().copied().collect()),
                // GroupNormalization-18: per-group scale and bias.
                n if n == groups && v.ndim() == 1 && index.model().opset("").unwrap_or(18) < 21 => {
                    Some(v.iter().flat_map(|&g| std::iter::repeat_n(g, channels / groups)).collect())
                }
                _ => None,
            }
        };
        let gamma = expand(const_values(index, &node.input[1])?)?;
        let beta = expand(const_values(index, &node.input[2])?)?;
        return Some(Match {
            form: Form::Native,
            x,
            output: out,
            channels,
            groups,
            epsilon: attr_float(node, "epsilon").unwrap_or(1e-5),
            gamma,
            beta,
            silu: false,
            skip: None,
            nodes: vec![i],
        });
    } else {
        return None;
    };
    let (x, channels, groups) = grouped(index, inference, &r)?;
    // Back to [N, C, H, W]: the sole reader of the normalized value.
    let back = only_reader(index, &out)?;
    let back_node = index.node(back);
    if !is_op(back_node, "Reshape") || back_node.input.first() != Some(&out) || back_node.output.len() != 1 {
        return None;
    }
    if !restores(index, inference, &back_node.input[1], &back_node.output[0], &x) {
        return None;
    }
    let mut nodes = vec![i, back];
    inner.extend(index.producer(&r));
    inner.extend(index.producer_op(&back_node.input[1], "Shape"));
    absorb(index, &mut nodes, &inner);
    Some(Match {
        form,
        x,
        output: back_node.output[0].clone(),
        channels,
        groups,
        epsilon,
        gamma: vec![1.0; channels],
        beta: vec![0.0; channels],
        silu: false,
        skip: None,
        nodes,
    })
}

/// Adds to `nodes` each of `candidates` whose outputs only `nodes` read (repeatedly).
fn absorb(index: &GraphIndex, nodes: &mut Vec<usize>, candidates: &[usize]) {
    loop {
        let before = nodes.len();
        for &c in candidates {
            if nodes.contains(&c) {
                continue;
            }
            let dead = index.node(c).output.iter().all(|o| {
                o.is_empty() || (!index.is_graph_output(o) && index.consumers(o).iter().all(|r| nodes.contains(r)))
            });
            if dead {
                nodes.push(c);
            }
        }
        if nodes.len() == before {
            return;
        }
    }
}

/// True when `Reshape(_, shape) -> y` gives x's shape back.
fn restores(index: &GraphIndex, inference: &Inference, shape: &str, y: &str, x: &str) -> bool {
    if let Some(s) = index.producer_node(shape)
        && is_op(s, "Shape")
        && s.input.first().map(String::as_str) == Some(x)
        && s.attribute.is_empty()
    {
        return true;
    }
    let (Some(xs), Some(elems)) = (inference.shape(x), inference.facts(shape).and_then(|f| f.elems())) else {
        return false;
    };
    if elems.len() != 4 {
        return false;
    }
    // Every entry the size of x along its axis, except at most one -1 / one batch read at run time.
    let mut free = 0;
    for (e, d) in elems.iter().zip(xs) {
        match (e, d) {
            (Some(a), Some(b)) if a == b => {}
            (Some(-1), _) | (None, _) => free += 1,
            _ => return false,
        }
    }
    let ys = inference.shape(y);
    free <= 1 && ys.is_none_or(|s| s.len() == 4)
}

/// Extends `m` over Mul(γ) / Add(β) and a following SiLU.
fn affine_and_activation(index: &GraphIndex, m: &mut Match) {
    if m.form != Form::Native
        && let Some(mul) = only_reader(index, &m.output)
        && let node = index.node(mul)
        && is_op(node, "Mul")
        && node.output.len() == 1
        && let Some(g) = other_input(node, &m.output).and_then(|g| per_channel(index, g, m.channels))
    {
        m.gamma = g;
        m.output = node.output[0].clone();
        m.nodes.push(mul);
        if let Some(add) = only_reader(index, &m.output)
            && let node = index.node(add)
            && is_op(node, "Add")
            && node.output.len() == 1
            && let Some(b) = other_input(node, &m.output).and_then(|b| per_channel(index, b, m.channels))
        {
            m.beta = b;
            m.output = node.output[0].clone();
            m.nodes.push(add);
        }
    }
    // SiLU: y read by exactly Sigmoid(y) and Mul(y, sigmoid).
    let y = m.output.clone();
    if index.is_graph_output(&y) {
        return;
    }
    let readers = index.consumers(&y);
    let [a, b] = readers[..] else { return };
    let (sig, mul) = if is_op(index.node(a), "Sigmoid") { (a, b) } else { (b, a) };
    let (sig_node, mul_node) = (index.node(sig), index.node(mul));
    if !is_op(sig_node, "Sigmoid") || !is_op(mul_node, "Mul") || mul_node.output.len() != 1 {
        return;
    }
    let s = &sig_node.output[0];
    if only_reader(index, s) != Some(mul) || other_input(mul_node, s) != Some(y.as_str()) {
        return;
    }
    m.silu = true;
    m.output = mul_node.output[0].clone();
    m.nodes.extend([sig, mul]);
}

/// Extends `m` over a residual Add that produces its input.
fn residual(index: &GraphIndex, inference: &Inference, m: &mut Match, claimed: &HashSet<usize>) {
    let Some(add) = index.producer_op(&m.x, "Add") else { return };
    if claimed.contains(&add) {
        return;
    }
    let node = index.node(add);
    let [a, b] = &node.input[..] else { return };
    if index.const_tensor(a).is_some() || index.const_tensor(b).is_some() {
        return;
    }
    let (Some(x), Some(sa), Some(sb)) = (inference.shape(&m.x), inference.shape(a), inference.shape(b)) else {
        return;
    };
    let c = Some(m.channels as i64);
    let full = |s: &Vec<Option<i64>>| {
        s.len() == 4 && s[1] == c && s.iter().zip(x).all(|(p, q)| p.is_none() || q.is_none() || p == q)
    };
    let is_bcast = |s: &Vec<Option<i64>>| s.len() == 4 && s[1] == c && s[2] == Some(1) && s[3] == Some(1);
    let (input, skip, broadcast) = if is_bcast(sb) && full(sa) && !is_bcast(sa) {
        (a, b, true)
    } else if is_bcast(sa) && full(sb) && !is_bcast(sb) {
        (b, a, true)
    } else if full(sa) && full(sb) && !is_bcast(sa) && !is_bcast(sb) {
        (a, b, false)
    } else {
        return;
    };
    // The batch of a broadcast skip must be the input's (the kernel takes [N, 1, 1, C], not [1, 1, 1, C]).
    let (si, ss) = if input == a { (sa, sb) } else { (sb, sa) };
    if broadcast && si[0] != ss[0] {
        return;
    }
    m.skip = Some(Skip { node: add, input: input.clone(), skip: skip.clone(), broadcast });
    m.nodes.push(add);
}

#[cfg(test)]
mod tests;
