//! What passes share: the subgraphs several of them match, matched once here.
//!
//! - [`bias_add`]: `Add(x, b)` with `b` a constant vector (fuse-qkv, skip-layer-norm, bias-add,
//!   bias-epilogue), and [`matmul_bias_add`] when `x` is a MatMul's (geglu, bias-gelu);
//! - [`residual_shape`]: the two sides of a residual Add (skip-layer-norm, bias-add);
//! - [`gelu_ending_in`]: the exact GELU in its exported forms (geglu, bias-gelu);
//! - [`const_vector`] and [`through_identities`]: constants behind the `Identity` nodes by which the
//!   TorchScript exporter shares equal constants.

use crate::onnx::infer::{Inference, Shape};
use crate::onnx::{GraphIndex, attr_string, dtype, is_op};

/// The channel counts ONNX Runtime's CUDA `BiasAdd` kernel takes (bias-add, bias-epilogue).
pub(crate) const BIAS_ADD_CHANNELS: [i64; 3] = [320, 640, 1280];

/// Identity nodes followed at most, behind a constant.
const MAX_IDENTITIES: usize = 8;

/// The value behind a chain of `Identity` nodes (the TorchScript exporter shares equal constants
/// through them).
pub(crate) fn through_identities<'a>(index: &GraphIndex<'a>, value: &'a str) -> &'a str {
    let mut value = value;
    for _ in 0..MAX_IDENTITIES {
        match index.producer_op(value, "Identity").and_then(|p| index.node(p).input.first()) {
            Some(input) if !input.is_empty() => value = input,
            _ => break,
        }
    }
    value
}

/// The name of the constant 1-D `[c]` tensor of type `dt` behind `value` (through Identity nodes).
pub(crate) fn const_vector(index: &GraphIndex, value: &str, c: i64, dt: i32) -> Option<String> {
    let value = through_identities(index, value);
    let t = index.const_tensor(value)?;
    (t.data_type() == dt && t.dims == [c]).then(|| value.to_string())
}

/// `y = Add(x, bias)` or `Add(bias, x)`: a constant 1-D bias and a computed operand.
pub(crate) struct BiasAdd {
    /// The Add node.
    pub add: usize,
    /// The computed operand.
    pub x: String,
    /// The constant bias (behind any Identity).
    pub bias: String,
    /// The bias's element type and length.
    pub dtype: i32,
    pub width: i64,
}

/// The bias Add producing `y`: `Add(x, b)` or `Add(b, x)` with `b` a constant 1-D tensor (through Identity
/// nodes) and `x` computed (not a constant).
pub(crate) fn bias_add(index: &GraphIndex, y: &str) -> Option<BiasAdd> {
    let add = index.producer_op(y, "Add")?;
    let node = index.node(add);
    if node.input.len() != 2 || node.output.len() != 1 {
        return None;
    }
    (0..2).find_map(|k| {
        let bias = through_identities(index, &node.input[k]);
        let t = index.const_tensor(bias)?;
        let x = &node.input[1 - k];
        if t.dims.len() != 1 || x.is_empty() || index.const_tensor(x).is_some() {
            return None;
        }
        Some(BiasAdd { add, x: x.clone(), bias: bias.to_string(), dtype: t.data_type(), width: t.dims[0] })
    })
}

/// A `MatMul -> Add(constant bias)` producing `y`: [`bias_add`] whose `x` is a MatMul output read by the Add
/// alone, the bias float or float16 of `x`'s type, its length the last dimension of `x` (and of `y`).
pub(crate) fn matmul_bias_add(index: &GraphIndex, facts: &Inference, y: &str) -> Option<BiasAdd> {
    let b = bias_add(index, y)?;
    let last = facts.shape(&b.x).and_then(|s| s.last().copied().flatten());
    let fits = index.producer_op(&b.x, "MatMul").is_some()
        && index.single_consumer(&b.x) == Some(b.add)
        && matches!(b.dtype, dtype::FLOAT | dtype::FLOAT16)
        && facts.dtype(&b.x) == Some(b.dtype)
        && b.width > 0
        && last == Some(b.width);
    fits.then_some(b)
}

/// The common type and shape of the two sides of a residual Add: float32 or float16, rank 2 or 3, the last
/// axis known, every other axis known and equal on both sides or unknown on both (no broadcasting).
pub(crate) fn residual_shape(facts: &Inference, a: &str, b: &str) -> Option<(i32, Shape)> {
    let dt = facts.dtype(a)?;
    if facts.dtype(b) != Some(dt) || !matches!(dt, dtype::FLOAT | dtype::FLOAT16) {
        return None;
    }
    let (sa, sb) = (facts.shape(a)?, facts.shape(b)?);
    if sa.len() != sb.len() || !(2..=3).contains(&sa.len()) || sa.last()?.is_none() || sa != sb {
        return None;
    }
    Some((dt, sa.clone()))
}

/// A GELU: its input and its nodes.
pub(crate) struct Gelu {
    pub input: String,
    pub nodes: Vec<usize>,
}

/// The exact GELU whose last node is `end`: a `Gelu` op (default or com.microsoft domain, `approximate`
/// "none"), or `x * 0.5 * (1 + Erf(x / sqrt 2))` with its products in any order (`x / sqrt 2` may be
/// `x * (1 / sqrt 2)`). Every node but the ones reading x must be read only inside the formula.
pub(crate) fn gelu_ending_in(index: &GraphIndex, facts: &Inference, end: usize) -> Option<Gelu> {
    let node = index.node(end);
    if node.op_type() == "Gelu" && matches!(node.domain(), "" | "ai.onnx" | "com.microsoft") {
        let exact = attr_string(node, "approximate").is_none_or(|a| a == "none");
        return (exact && node.input.len() == 1 && !node.input[0].is_empty())
            .then(|| Gelu { input: node.input[0].clone(), nodes: vec![end] });
    }
    if !is_op(node, "Mul") || node.input.len() != 2 {
        return None;
    }
    // The product's factors, one level of inner Muls expanded: three leaves.
    let mut nodes = vec![end];
    let mut leaves: Vec<&String> = Vec::new();
    for input in &node.input {
        match index.producer_op(input, "Mul") {
            Some(p) if index.single_consumer(input) == Some(end) && index.node(p).input.len() == 2 => {
                nodes.push(p);
                leaves.extend(index.node(p).input.iter());
            }
            _ => leaves.push(input),
        }
    }
    if leaves.len() != 3 {
        return None;
    }
    let half = leaves.iter().position(|v| scalar(facts, v).is_some_and(|c| (c - 0.5).abs() < 1e-6))?;
    leaves.remove(half);
    for (x, t) in [(0, 1), (1, 0)] {
        let (x, t) = (leaves[x], leaves[t]);
        if let Some(erf_nodes) = one_plus_erf(index, facts, t, x, &nodes) {
            nodes.extend(erf_nodes);
            return Some(Gelu { input: x.clone(), nodes });
        }
    }
    None
}

/// The nodes of `t = 1 + Erf(x / sqrt 2)` (or `x * (1 / sqrt 2)`), each read by the next alone; `t` is
/// read by one of `readers`.
fn one_plus_erf(index: &GraphIndex, facts: &Inference, t: &str, x: &str, readers: &[usize]) -> Option<Vec<usize>> {
    let add = index.producer_op(t, "Add")?;
    if !index.single_consumer(t).is_some_and(|c| readers.contains(&c)) {
        return None;
    }
    let a = index.node(add);
    let erf_out = a.input.iter().find(|v| index.producer_op(v, "Erf").is_some())?;
    let one = a.input.iter().find(|v| *v != erf_out)?;
    if a.input.len() != 2 || !scalar(facts, one).is_some_and(|c| (c - 1.0).abs() < 1e-6) {
        return None;
    }
    let erf = index.producer_op(erf_out, "Erf")?;
    if index.single_consumer(erf_out) != Some(add) {
        return None;
    }
    let scaled = index.node(erf).input.first()?;
    let s = index.producer(scaled)?;
    let sn = index.node(s);
    if index.single_consumer(scaled) != Some(erf) || sn.input.len() != 2 || sn.input[0] != x {
        return None;
    }
    let c = scalar(facts, &sn.input[1])?;
    let ok = match sn.op_type() {
        "Div" if sn.domain().is_empty() => (c - std::f64::consts::SQRT_2).abs() < 1e-4,
        "Mul" if sn.domain().is_empty() => (c - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-4,
        _ => false,
    };
    ok.then(|| vec![add, erf, s])
}

/// The value of a one-element float constant.
fn scalar(facts: &Inference, value: &str) -> Option<f64> {
    let c = facts.value(value)?;
    let f = c.floats();
    (f.len() == 1 && facts.dtype(value).is_some_and(crate::onnx::tensor::is_float)).then(|| f[0])
}
