//! Planning: the element type of every value before and after the conversion, how each node is treated
//! ([`Mode`]), and which reads need a Cast or a converted constant. Pure analysis: `emit` builds the
//! patch from the [`Plan`].

use std::collections::{BTreeMap, HashMap};

use super::{PrecisionPass, is_agnostic, is_constant, is_contrib};
use crate::onnx::infer::Inference;
use crate::onnx::{GraphIndex, NodeProto, attr, attr_int, dtype};
use crate::onnx::{OnnxModel, is_op};

/// Ops that move or pick data without computing: between fp32 nodes they stay fp32.
const FOLLOWERS: &[&str] = &[
    "Concat",
    "DepthToSpace",
    "Expand",
    "Flatten",
    "Gather",
    "GatherElements",
    "GatherND",
    "Identity",
    "Pad",
    "Reshape",
    "Slice",
    "SpaceToDepth",
    "Split",
    "Squeeze",
    "Tile",
    "Transpose",
    "Unsqueeze",
];

/// How a node is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Computes in h: float inputs are read as h, float32 outputs become h.
    Half,
    /// Stays as it is: float inputs are read as float32.
    Keep,
    /// Reads no values (Shape, Size) or converts types itself (Cast): reads whatever it gets.
    Agnostic,
    /// A Constant node: its value is converted where it is read.
    Constant,
}

/// What becomes of a float32 constant (initializer or Constant node) that is read in a half type (h, or
/// bfloat16 in bf16 range islands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConstPlan {
    /// Every reader wants this type (and it is no graph output): converted in place.
    InPlace(i32),
    /// A copy per type is added next to the float32 original, read by these (node, input, type) slots.
    Copy(Vec<(usize, usize, i32)>),
}

/// What the conversion does, decided before anything is built: the hand-off from planning to `emit`.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// Element types as the graph stands ([`current_types`]).
    pub(super) before: HashMap<String, i32>,
    /// Element types after the conversion (converted-in-place constants included).
    pub(super) after: HashMap<String, i32>,
    /// How each node is treated, by node index.
    pub(super) modes: Vec<Mode>,
    /// Casts to float32 that become Casts to h: node index -> new `to`.
    pub(super) new_cast_to: HashMap<usize, i32>,
    /// (node, input, type) slots reading a value in another half type than it has (float32 as h, or h as
    /// bfloat16 in a bf16 island, ...): a Cast to that type goes in between.
    pub(super) half_reads: Vec<(usize, usize, i32)>,
    /// (node, input) slots reading an h value as float32: a Cast to float32 goes in between.
    pub(super) float_reads: Vec<(usize, usize)>,
    /// Float32 constants read as h, by name.
    pub(super) constants: BTreeMap<String, ConstPlan>,
    /// The half type each converted node computes in (h; bfloat16 in bf16 range islands), by node index;
    /// 0 for the others.
    pub(super) node_types: Vec<i32>,
}

impl Plan {
    /// Plans the conversion of the graph of `index` by `pass`, given the current types and the nodes that
    /// stay fp32 ([`PrecisionPass::blocked`]).
    pub(super) fn new(
        pass: &PrecisionPass,
        index: &GraphIndex,
        before: HashMap<String, i32>,
        blocked: &[bool],
    ) -> Plan {
        let nodes = index.nodes();
        let plan = Plan {
            after: before.clone(),
            before,
            modes: Vec::with_capacity(nodes.len()),
            new_cast_to: HashMap::new(),
            half_reads: Vec::new(),
            float_reads: Vec::new(),
            constants: BTreeMap::new(),
            node_types: vec![0; nodes.len()],
        };
        let bf16 = pass.bf16_islands(index);
        let mut planner = Planner {
            pass,
            index,
            blocked,
            bf16,
            h: crate::onnx::dtype::of(pass.precision),
            plan,
            const_reads: BTreeMap::new(),
        };
        planner.retype_graph_inputs();
        for (i, n) in nodes.iter().enumerate() {
            let mode = planner.mode_of(i, n);
            planner.plan.modes.push(mode);
            match mode {
                Mode::Half => planner.plan_half(i, n),
                Mode::Keep => planner.plan_keep(i, n),
                Mode::Agnostic => planner.plan_agnostic(i, n),
                Mode::Constant => {}
            }
        }
        planner.plan_constants();
        planner.plan
    }
}

/// The state of planning: the plan so far, and the reads of constants as h (decided at the end, once all
/// their readers are known).
struct Planner<'a, 'm> {
    pass: &'a PrecisionPass,
    index: &'a GraphIndex<'m>,
    blocked: &'a [bool],
    /// Nodes of bf16 range islands (computing in bfloat16 unless blocked).
    bf16: Vec<bool>,
    /// The half type.
    h: i32,
    plan: Plan,
    const_reads: BTreeMap<String, Vec<(usize, usize, i32)>>,
}

impl Planner<'_, '_> {
    fn is_float(&self, v: &str) -> bool {
        self.plan.before.get(v) == Some(&dtype::FLOAT)
    }

    /// True when `v` is of a half type (h, or bfloat16 from a bf16 island) after the conversion, as
    /// planned so far.
    fn is_half(&self, v: &str) -> bool {
        self.plan.after.get(v).is_some_and(|&t| t == self.h || t == dtype::BFLOAT16)
    }

    /// The half type node `i` computes in: bfloat16 in a bf16 island; a follower keeps the type of its
    /// first half input (moving data does not convert it); else h.
    fn type_of(&self, i: usize, n: &NodeProto) -> i32 {
        if self.bf16[i] {
            return dtype::BFLOAT16;
        }
        if is_follower(n)
            && let Some(&t) = n
                .input
                .iter()
                .filter(|v| !v.is_empty() && self.is_float(v) && !self.is_const(v) && self.is_half(v))
                .find_map(|v| self.plan.after.get(v.as_str()))
        {
            return t;
        }
        self.h
    }

    fn is_const(&self, v: &str) -> bool {
        let index = self.index;
        (index.is_initializer(v) && !index.is_graph_input(v)) || index.producer_node(v).is_some_and(is_constant)
    }

    /// Which reads want h: a converted (or converting) node's non-fixed float input.
    fn wants_half(&self, c: usize, k: usize) -> bool {
        let n = &self.index.nodes()[c];
        !self.blocked[c] && !is_constant(n) && !is_agnostic(n) && !is_op(n, "Cast") && !fixed_input(n, k)
    }

    fn read_as_half(&self, v: &str) -> bool {
        let nodes = self.index.nodes();
        self.index
            .consumers(v)
            .iter()
            .any(|&c| nodes[c].input.iter().enumerate().any(|(k, x)| x == v && self.wants_half(c, k)))
    }

    /// Without `keep_io_types`, float graph inputs read as h become h.
    fn retype_graph_inputs(&mut self) {
        for v in &self.index.graph().input {
            let v = v.name();
            if !self.pass.keep_io_types && self.is_float(v) && !self.is_const(v) && self.read_as_half(v) {
                self.plan.after.insert(v.to_string(), self.h);
            }
        }
    }

    /// How node `i` is treated (nodes are visited in graph order: a follower looks at its inputs' new types).
    fn mode_of(&self, i: usize, n: &NodeProto) -> Mode {
        if is_constant(n) {
            Mode::Constant
        } else if self.blocked[i] {
            Mode::Keep
        } else if is_agnostic(n) || is_op(n, "Cast") {
            Mode::Agnostic
        } else if self.bf16[i] {
            // A bf16 island's node computes in bfloat16 even where it only moves fp32 data.
            Mode::Half
        } else if is_follower(n) && {
            // Follows its non-constant float inputs: stays fp32 when none is h. On constants alone (an
            // Identity of a weight) it follows its readers.
            let live: Vec<&String> =
                n.input.iter().filter(|v| !v.is_empty() && self.is_float(v) && !self.is_const(v)).collect();
            if live.is_empty() {
                !n.output
                    .iter()
                    .any(|o| self.read_as_half(o) || (!self.pass.keep_io_types && self.index.is_graph_output(o)))
            } else {
                !live.iter().any(|v| self.is_half(v))
            }
        } {
            Mode::Keep
        } else {
            Mode::Half
        }
    }

    /// A converted node: its float inputs are read as h (fixed ones as float32), its outputs become h.
    fn plan_half(&mut self, i: usize, n: &NodeProto) {
        let ty = self.type_of(i, n);
        self.plan.node_types[i] = ty;
        for (k, v) in n.input.iter().enumerate() {
            if v.is_empty() || !self.is_float(v) {
                continue;
            }
            let now_h = self.is_half(v);
            if !fixed_input(n, k) && self.plan.after.get(v.as_str()) != Some(&ty) {
                if self.is_const(v) {
                    self.const_reads.entry(v.clone()).or_default().push((i, k, ty));
                } else {
                    self.plan.half_reads.push((i, k, ty));
                }
            } else if fixed_input(n, k) && now_h && !self.is_const(v) {
                // e.g. Resize scales computed by a converted node: read as float32 again.
                self.plan.float_reads.push((i, k));
            }
        }
        for (k, o) in n.output.iter().enumerate() {
            if !o.is_empty() && self.is_float(o) && !fixed_output(n, k) {
                self.plan.after.insert(o.clone(), ty);
            }
        }
    }

    /// A node that stays fp32: its inputs that became h are read as float32.
    fn plan_keep(&mut self, i: usize, n: &NodeProto) {
        for (k, v) in n.input.iter().enumerate() {
            if !v.is_empty() && self.is_float(v) && !self.is_const(v) && self.is_half(v) {
                self.plan.float_reads.push((i, k));
            }
        }
    }

    /// A Cast to float32 whose value is read as h becomes a Cast to h.
    fn plan_agnostic(&mut self, i: usize, n: &NodeProto) {
        if is_op(n, "Cast")
            && attr_int(n, "to") == Some(dtype::FLOAT as i64)
            && let Some(out) = n.output.first().filter(|o| !o.is_empty())
        {
            let as_output = !self.pass.keep_io_types && self.index.is_graph_output(out);
            if self.read_as_half(out) || as_output {
                self.plan.new_cast_to.insert(i, self.h);
                self.plan.after.insert(out.clone(), self.h);
            }
        }
    }

    /// A constant read as h is converted in place when every read of it wants h, else copied.
    fn plan_constants(&mut self) {
        let nodes = self.index.nodes();
        for (v, reads) in std::mem::take(&mut self.const_reads) {
            let ty = reads[0].2;
            let all_half = !self.index.is_graph_output(&v)
                && reads.iter().all(|r| r.2 == ty)
                && self.index.consumers(&v).iter().all(|&c| {
                    let slots: Vec<usize> =
                        nodes[c].input.iter().enumerate().filter(|(_, x)| **x == v).map(|(k, _)| k).collect();
                    !slots.is_empty() && slots.iter().all(|k| reads.iter().any(|r| (r.0, r.1) == (c, *k)))
                });
            if all_half {
                self.plan.after.insert(v.clone(), ty);
                self.plan.constants.insert(v, ConstPlan::InPlace(ty));
            } else {
                self.plan.constants.insert(v, ConstPlan::Copy(reads));
            }
        }
    }
}

/// Element types of every value, as the graph stands: declared or initializer types, ONNX ops through
/// [`Inference`], the rest (contrib ops, ops `infer` does not know) by the rules of [`output_type`].
pub(super) fn current_types(index: &GraphIndex) -> HashMap<String, i32> {
    let facts = Inference::run(index);
    let graph = index.graph();
    let mut types: HashMap<String, i32> = HashMap::new();
    for v in &graph.input {
        if let Some(t) = index.declared_elem_type(v.name()) {
            types.insert(v.name().to_string(), t);
        }
    }
    for t in &graph.initializer {
        types.insert(t.name().to_string(), t.data_type());
    }
    for n in index.nodes() {
        for (k, o) in n.output.iter().enumerate() {
            if o.is_empty() {
                continue;
            }
            let t = facts.dtype(o).filter(|&t| t != 0).or_else(|| output_type(n, k, &types));
            if let Some(t) = t {
                types.insert(o.clone(), t);
            }
        }
    }
    types
}

/// The element type of output `k` of `n`, for the ops `infer` does not type.
fn output_type(n: &NodeProto, k: usize, types: &HashMap<String, i32>) -> Option<i32> {
    let input = |i: usize| n.input.get(i).filter(|v| !v.is_empty()).and_then(|v| types.get(v.as_str()).copied());
    let attr_dtype = |name: &str| attr_int(n, name).and_then(|v| i32::try_from(v).ok());
    let first_float = || {
        n.input
            .iter()
            .filter_map(|v| types.get(v.as_str()).copied())
            .find(|&t| crate::onnx::tensor::is_float(t))
            .or_else(|| input(0))
    };
    if !matches!(n.domain(), "" | "ai.onnx" | "com.microsoft") {
        return None; // an op of an unknown domain: no guess
    }
    let op = n.op_type();
    match op {
        "Cast" => attr_dtype("to"),
        "Constant" => crate::onnx::constant_node_tensor(n).map(|t| t.data_type()),
        "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => Some(dtype::INT64),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or" | "Xor" | "IsNaN"
        | "IsInf" => Some(dtype::BOOL),
        "DynamicQuantizeLinear" => {
            Some([dtype::UINT8, dtype::FLOAT, dtype::UINT8].get(k).copied().unwrap_or(dtype::UINT8))
        }
        "MatMulInteger" | "ConvInteger" => Some(dtype::INT32),
        "MatMulIntegerToFloat" => input(2),
        "DynamicQuantizeMatMul" => input(0),
        "QuantizeLinear" => input(2).or(Some(dtype::UINT8)),
        "DequantizeLinear" => input(1),
        "TopK" if k == 1 => Some(dtype::INT64),
        "LayerNormalization" | "SkipLayerNormalization" | "SkipSimplifiedLayerNormalization" if k == 1 || k == 2 => {
            Some(dtype::FLOAT)
        }
        "ConstantOfShape" => {
            Some(attr(n, "value").and_then(|a| a.t.as_ref()).map(|t| t.data_type()).unwrap_or(dtype::FLOAT))
        }
        "RandomNormal" | "RandomUniform" => Some(attr_dtype("dtype").unwrap_or(dtype::FLOAT)),
        "RandomNormalLike" | "RandomUniformLike" | "EyeLike" | "Bernoulli" => attr_dtype("dtype").or_else(|| input(0)),
        _ => first_float(),
    }
}

pub(super) fn is_follower(node: &NodeProto) -> bool {
    matches!(node.domain(), "" | "ai.onnx") && FOLLOWERS.contains(&node.op_type())
}

/// Inputs of a converted node that keep their type.
pub(super) fn fixed_input(node: &NodeProto, k: usize) -> bool {
    (is_op(node, "Resize") && (k == 1 || k == 2))
        || (is_op(node, "Upsample") && k == 1)
        || ((is_contrib(node, "GroupNorm") || is_contrib(node, "SkipGroupNorm")) && (k == 1 || k == 2))
}

/// Outputs of a converted node that keep their type (float32 statistics).
pub(super) fn fixed_output(node: &NodeProto, k: usize) -> bool {
    (is_op(node, "LayerNormalization") && (k == 1 || k == 2))
        || (is_op(node, "SimplifiedLayerNormalization") && k == 1)
        || ((is_contrib(node, "SkipLayerNormalization") || is_contrib(node, "SkipSimplifiedLayerNormalization"))
            && (k == 1 || k == 2))
}

impl PrecisionPass {
    /// The values whose ranges decide the islands: the float outputs of every node but constants.
    pub fn range_targets(&self, model: &OnnxModel) -> Vec<String> {
        let index = GraphIndex::new(model);
        let types = current_types(&index);
        let mut out = Vec::new();
        for n in index.nodes().iter().filter(|n| !is_constant(n)) {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                if types.get(o.as_str()) == Some(&crate::onnx::dtype::FLOAT) {
                    out.push(o.clone());
                }
            }
        }
        out
    }
}
