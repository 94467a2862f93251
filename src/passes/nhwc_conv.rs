//! A channels-last UNet: 2-D convolutions become ONNX Runtime's CUDA-only `com.microsoft::NhwcConv`, and the
//! layout change is carried through the ops that do not care about layout, so that transposes remain only
//! where something needs NCHW.
//!
//! ```text
//!   x [N,C,H,W] ─Conv(W [M,C,kh,kw], B)─> y ─Add(temb [N,M,1,1])─> z ─Transpose(0,2,3,1)─Reshape [N,HW,M]─> tokens
//!
//!  becomes
//!
//!   x ─Transpose(0,2,3,1)─NhwcConv(W' [M,kh,kw,C], B)─> y' ─Add(Reshape(temb, [0,1,1,-1]))─> z' ─Reshape─> tokens
//! ```
//!
//! How: every value v [N, C, H, W] may get a twin v' = Transpose(v, [0, 2, 3, 1]). Walking the nodes in
//! order,
//! - a `Transpose(perm 0,3,1,2)` makes its output's twin its input (free: nothing is computed), and a
//!   `Transpose(perm 0,2,3,1)` of a value that has a twin is that twin (the node goes): this is what cancels
//!   the pairs the group-norm pass writes around its channels-last `GroupNorm` / `SkipGroupNorm`, and what
//!   turns a transformer's `Transpose(0,2,3,1) -> Reshape [N, HW, C]` into a Reshape of the NHWC value;
//! - an accepted `Conv` becomes `NhwcConv` on its input's twin (a Transpose is inserted when the input has
//!   none), its output's twin;
//! - an op that does not care about layout runs on twins when one of its activation inputs already has a
//!   free twin: unary elementwise ops, the broadcasting binary ops (Add, Sub, Mul, Div, Pow, Max, Min) with
//!   constants permuted to match and rank-4 operands given twins (a [N, C, 1, 1] operand, the time
//!   embedding, by a Reshape to [N, 1, 1, C], which moves no data), `Concat` with its axis remapped, and
//!   `Resize` in nearest mode with constant scales or sizes permuted;
//! - `Shape(v)` of a value with a twin becomes `Gather(Shape(v'), [0, 3, 1, 2])`, so that the NCHW value is
//!   not kept alive for its shape alone;
//! - a value whose producer went NHWC but that is still read in NCHW (by an op left alone, or as a graph
//!   output) gets one `Transpose(v', [0, 3, 1, 2])`.
//!
//! So transposes remain at the entry (the sample), the exit (the noise prediction), and where an op that
//! needs NCHW reads an NHWC value. All in one patch: the pass reaches its fixed point in one round.
//!
//! What the CUDA kernel accepts (ONNX Runtime `contrib_ops/cuda/conv.cc` registers `NhwcConv` for float and
//! float16 as `Conv<T, NHWC = true>` of `core/providers/cuda/nn/conv.cc`): X [N, H, W, C]; W in
//! [M, kH, kW, C/group] *when it is a constant initializer* (the kernel's PrePack then marks it channels-last;
//! a weight computed at run time would be read as [M, C/group, kH, kW]), so the pass writes W transposed
//! as a new initializer; B 1-D [M]; the Conv attributes (`auto_pad`, `dilations`, `group`, `kernel_shape`,
//! `pads`, `strides`) as for Conv, run through cuDNN's frontend graph. So here a Conv is rewritten only
//! when: its weight is a constant of rank 4 (2-D convolution) in float or float16; the bias, if any, is 1-D;
//! `group` is 1 (the frontend graph is built without a group count: grouped convs are not claimed);
//! `auto_pad` is absent or NOTSET. Anything else stays a Conv (cuDNN transposes around it as before).
//! Resize stays in nearest mode only: ONNX Runtime's CUDA `Resize` runs nearest on any rank and any scales
//! (`core/providers/cuda/tensor/upsample.cc`), while linear has layout restrictions.
//! Session option `session.disable_prepacking` would break the weight layout; dfast never sets it.
//!
//! There is no CPU kernel for `NhwcConv`: the pass only rewrites when the target is cuda and the profile
//! allows CUDA-only fusions ([`BuildContext::allows_cuda_only_ops`]), and not at all with option
//! `enabled = false` (for comparing with the CUDA EP's own `prefer_nhwc`). Its tests lower every
//! `NhwcConv` (and the channels-last `GroupNorm`) back to standard ops and compare with the unrewritten graph
//! on ONNX Runtime's CPU EP: that checks the transposes, constants and axes the pass moved.
//!
//! Run after group-norm (whose transposes it cancels) and before the precision pass. Idempotent: once
//! rewritten, no Conv is left to claim, no Transpose pair is left to cancel, and the ops that could go NHWC
//! have.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use ndarray::Array1;

use crate::Result;
use crate::onnx::infer::Inference;
use crate::onnx::{
    GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, attr_int, attr_ints, attr_string, dtype, is_op,
    make_attr_int, make_tensor_value_info, tensor,
};
use crate::passes::layout::{TO_NCHW, TO_NHWC, permute_bytes, transpose};
use crate::passes::{BuildContext, Pass, PassContext, PassSpec};

/// The nhwc-conv pass (see the module docs). Built enabled only when CUDA-only fusions are allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct NhwcConv {
    enabled: bool,
}

impl NhwcConv {
    /// A pass that rewrites (on a cuda target) when `enabled`.
    pub fn new(enabled: bool) -> Self {
        NhwcConv { enabled }
    }
}

/// Options of the nhwc-conv pass.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// `false` turns the pass off in a profile that extends one that runs it (to compare with the CUDA EP's
    /// `prefer_nhwc`). Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl PassSpec for NhwcConv {
    const NAME: &'static str = "nhwc-conv";
    const SUMMARY: &'static str = "channels-last UNet: Conv becomes NhwcConv, transposes cancelled across \
                                   layout-agnostic ops (cuda with `cuda_only_fusions` only)";
    type Options = Options;
    const CUDA_ONLY: bool = true;
    fn build(options: Options, ctx: &BuildContext) -> Result<Self> {
        Ok(NhwcConv { enabled: options.enabled && ctx.allows_cuda_only_ops() })
    }
}

impl Pass for NhwcConv {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        if !self.enabled {
            return Ok(None);
        }
        let index = GraphIndex::new(model);
        let inference = Inference::run(&index);
        let mut walk = Walk::new(&index, &inference);
        walk.run()?;
        let patch = walk.patch;
        Ok((!patch.is_empty()).then_some(patch))
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!({ "enabled": self.enabled })
    }
}

/// Why a Conv is left alone, or `None` when the kernel accepts it (see the module docs).
pub fn refusal(index: &GraphIndex, node: &NodeProto) -> Option<&'static str> {
    if !is_op(node, "Conv") || !(2..=3).contains(&node.input.len()) || node.output.len() != 1 {
        return Some("not a Conv with a weight and an optional bias");
    }
    let Some(w) = index.initializer(&node.input[1]) else { return Some("weight not a constant initializer") };
    if w.dims.len() != 4 {
        return Some("not a 2-D convolution");
    }
    if !matches!(w.data_type(), dtype::FLOAT | dtype::FLOAT16) {
        return Some("weight neither float nor float16");
    }
    if let Some(b) = node.input.get(2).filter(|b| !b.is_empty())
        && index.const_tensor(b).is_some_and(|t| t.dims.len() != 1)
    {
        return Some("bias not 1-D");
    }
    if attr_int(node, "group").unwrap_or(1) != 1 {
        return Some("grouped convolution");
    }
    if attr_string(node, "auto_pad").is_some_and(|p| p != "NOTSET") {
        return Some("auto_pad");
    }
    None
}

/// What an op does with layout.
enum Kind {
    /// One input, elementwise.
    Unary,
    /// Two inputs, broadcasting.
    Binary,
    /// Concat along an axis.
    Concat(i64),
    /// Resize in nearest mode.
    Resize,
}

const UNARY: &[&str] = &[
    "Sigmoid",
    "Tanh",
    "Relu",
    "Erf",
    "Neg",
    "Exp",
    "Sqrt",
    "Identity",
    "Cast",
    "Softplus",
    "Gelu",
    "Mish",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Elu",
    "Reciprocal",
    "Abs",
];
const BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"];
/// The `com.microsoft` ops dfast's passes emit whose outputs have their first input's rank.
const SAME_RANK_CONTRIB: &[&str] = &[
    "NhwcConv",
    "GroupNorm",
    "SkipGroupNorm",
    "BiasSplitGelu",
    "BiasGelu",
    "FastGelu",
    "BiasAdd",
    "SkipLayerNormalization",
];

fn kind(node: &NodeProto) -> Option<Kind> {
    if !matches!(node.domain(), "" | "ai.onnx") || node.output.len() != 1 {
        return None;
    }
    let op = node.op_type();
    if UNARY.contains(&op) && node.input.len() == 1 {
        Some(Kind::Unary)
    } else if BINARY.contains(&op) && node.input.len() == 2 {
        Some(Kind::Binary)
    } else if op == "Concat" {
        Some(Kind::Concat(attr_int(node, "axis")?))
    } else if op == "Resize"
        && attr_string(node, "mode").is_none_or(|m| m == "nearest")
        && attr_ints(node, "axes").is_none()
        && attr_int(node, "antialias").unwrap_or(0) == 0
        && attr_string(node, "coordinate_transformation_mode").is_none_or(|m| m != "tf_crop_and_resize")
    {
        Some(Kind::Resize)
    } else {
        None
    }
}

/// Where NCHW axis `a` sits in NHWC.
fn nhwc_axis(a: i64) -> Option<i64> {
    let a = if a < 0 { a + 4 } else { a };
    [0, 3, 1, 2].get(usize::try_from(a).ok()?).copied()
}

/// The walk over the graph that assigns layouts (see the module docs).
struct Walk<'a, 'm> {
    index: &'a GraphIndex<'m>,
    inference: &'a Inference,
    /// Ranks the inference does not know (outputs of contrib ops and what follows them).
    ranks: HashMap<String, usize>,
    /// NCHW value -> (its NHWC twin, whether the twin comes for free).
    twins: HashMap<String, (String, bool)>,
    /// Nodes removed (replaced by NHWC ones, or cancelled).
    gone: HashSet<usize>,
    /// NCHW outputs of replaced nodes, in order.
    replaced: Vec<String>,
    patch: Patch,
}

impl<'a, 'm> Walk<'a, 'm> {
    fn new(index: &'a GraphIndex<'m>, inference: &'a Inference) -> Self {
        let mut walk = Walk {
            index,
            inference,
            ranks: HashMap::new(),
            twins: HashMap::new(),
            gone: HashSet::new(),
            replaced: Vec::new(),
            patch: Patch::new(),
        };
        walk.infer_ranks();
        walk
    }

    /// Ranks of values whose shapes inference does not know, from the ops that keep their input's rank.
    fn infer_ranks(&mut self) {
        for node in self.index.nodes() {
            let first = node.input.first().and_then(|x| self.rank(x));
            let rank = match node.op_type() {
                "Transpose" => attr_ints(node, "perm").map(<[i64]>::len),
                "Reshape" => {
                    node.input.get(1).and_then(|s| self.inference.facts(s)).and_then(|f| f.elems()).map(|e| e.len())
                }
                op if BINARY.contains(&op) => {
                    let r: Option<Vec<usize>> = node.input.iter().map(|i| self.rank(i)).collect();
                    r.and_then(|r| r.into_iter().max())
                }
                op if node.domain() == "com.microsoft" && SAME_RANK_CONTRIB.contains(&op) => first,
                _ if kind(node).is_some() || is_op(node, "Conv") => first,
                "LayerNormalization" | "Softmax" => first,
                _ => None,
            };
            if let Some(r) = rank {
                for o in node.output.iter().filter(|o| !o.is_empty()) {
                    if self.inference.shape(o).is_none() {
                        self.ranks.insert(o.clone(), r);
                    }
                }
            }
        }
    }

    fn rank(&self, v: &str) -> Option<usize> {
        self.inference.shape(v).map(Vec::len).or_else(|| self.ranks.get(v).copied())
    }

    fn is_const(&self, v: &str) -> bool {
        self.index.const_tensor(v).is_some()
    }

    fn run(&mut self) -> Result<()> {
        let index = self.index;
        for (i, node) in index.nodes().iter().enumerate() {
            if is_op(node, "Transpose") && node.input.len() == 1 && node.output.len() == 1 {
                let (x, y) = (&node.input[0], &node.output[0]);
                match attr_ints(node, "perm") {
                    Some(p) if p == TO_NCHW => {
                        self.twins.entry(y.clone()).or_insert((x.clone(), true));
                    }
                    Some(p) if p == TO_NHWC => match self.twins.get(x) {
                        Some((t, _)) if self.index.can_shunt(y, t) => {
                            self.patch.shunt(y.clone(), t.clone());
                            self.patch.remove_node(i);
                            self.gone.insert(i);
                            self.patch.count_rewrite();
                        }
                        Some(_) => {}
                        None if self.broadcast_shaped(x) => {
                            // [N, C, 1, 1] -> [N, 1, 1, C] moves no data: a Reshape.
                            let target = self.reshape_target(x);
                            self.patch.add_node(
                                NodeBuilder::new("Reshape")
                                    .inputs([x.as_str(), target.as_str()])
                                    .outputs([y.as_str()])
                                    .build(),
                            );
                            self.patch.remove_node(i);
                            self.gone.insert(i);
                            self.patch.count_rewrite();
                            self.twins.insert(x.clone(), (y.clone(), true));
                        }
                        None => {
                            self.twins.insert(x.clone(), (y.clone(), true));
                        }
                    },
                    _ => {}
                }
            } else if is_op(node, "Conv") && refusal(self.index, node).is_none() {
                self.conv(i, node)?;
            } else if is_op(node, "Shape") && node.attribute.is_empty() && node.input.len() == 1 {
                if let Some((t, _)) = self.twins.get(&node.input[0]).cloned() {
                    self.shape(i, node, &t);
                }
            } else if let Some(kind) = kind(node) {
                self.agnostic(i, node, kind)?;
            }
        }
        self.restore_nchw();
        if !self.patch.is_empty() {
            self.patch.require_opset("com.microsoft", 1);
        }
        Ok(())
    }

    /// The twin of `x`, inserting a Transpose (or a Reshape for [N, C, 1, 1]) when it has none.
    fn twin(&mut self, x: &str) -> String {
        if let Some((t, _)) = self.twins.get(x) {
            return t.clone();
        }
        let t = self.patch.fresh_name(self.index, &format!("{x}_nhwc"));
        if self.broadcast_shaped(x) {
            let target = self.reshape_target(x);
            self.patch.add_node(NodeBuilder::new("Reshape").inputs([x, target.as_str()]).outputs([t.as_str()]).build());
        } else {
            self.patch.add_node(transpose(x, &t, &TO_NHWC));
        }
        self.describe(x, &t);
        self.twins.insert(x.to_string(), (t.clone(), false));
        t
    }

    /// True when `v` is known to be [N, C, 1, 1], whose NHWC twin [N, 1, 1, C] has the same bytes.
    fn broadcast_shaped(&self, v: &str) -> bool {
        self.inference.shape(v).is_some_and(|s| s.len() == 4 && s[2] == Some(1) && s[3] == Some(1))
    }

    /// The shape [0, 1, 1, -1] (batch copied) as a new initializer, for the Reshape of a [N, C, 1, 1] value.
    fn reshape_target(&mut self, v: &str) -> String {
        let target = self.patch.fresh_name(self.index, &format!("{v}_nhwc_shape"));
        self.patch.add_initializer(tensor::tensor_from_i64(&target, &Array1::from(vec![0i64, 1, 1, -1]).into_dyn()));
        target
    }

    /// Gives NHWC value `t` the permuted shape and the type of NCHW value `v`, when inference knows them.
    fn describe(&mut self, v: &str, t: &str) {
        if let (Some(s), Some(ty)) = (self.inference.shape(v), self.inference.dtype(v))
            && s.len() == 4
        {
            let dims: Vec<Option<i64>> = TO_NHWC.iter().map(|&p| s[p as usize]).collect();
            self.patch.set_value_info(make_tensor_value_info(t, ty, Some(&dims)));
        }
    }

    /// Replaces node `i` by `new`, whose output is the twin of the node's output.
    fn replace(&mut self, i: usize, node: &NodeProto, new: NodeProto) {
        let y = &node.output[0];
        let t = new.output[0].clone();
        self.describe(y, &t);
        self.twins.insert(y.clone(), (t, true));
        self.replaced.push(y.clone());
        self.patch.add_node(new);
        self.patch.remove_node(i);
        self.gone.insert(i);
        self.patch.count_rewrite();
    }

    fn conv(&mut self, i: usize, node: &NodeProto) -> Result<()> {
        if self.rank(&node.input[0]).is_some_and(|r| r != 4) {
            return Ok(());
        }
        let w = self.index.initializer(&node.input[1]).expect("checked by refusal");
        let dims = tensor::dims(w)?;
        let elem = tensor::elem_size(w.data_type()).expect("float or float16");
        let bytes = self.index.model().tensor_bytes(w)?;
        let (permuted, out_dims) = permute_bytes(&bytes, &dims, &[0, 2, 3, 1], elem);
        let w_name = self.patch.fresh_name(self.index, &format!("{}_nhwc", node.input[1]));
        self.patch.add_initializer(tensor::tensor_from_raw(&w_name, w.data_type(), &out_dims, Bytes::from(permuted)));
        let x = self.twin(&node.input[0]);
        let mut inputs = vec![x, w_name];
        inputs.extend(node.input.get(2).filter(|b| !b.is_empty()).cloned());
        let y = self.patch.fresh_name(self.index, &format!("{}_nhwc", node.output[0]));
        let mut new = NodeBuilder::new("NhwcConv").domain("com.microsoft").inputs(inputs).outputs([y]);
        if !node.name().is_empty() {
            new = new.name(format!("{}_nhwc", node.name()));
        }
        let mut new = new.build();
        new.attribute.extend(node.attribute.iter().cloned());
        self.replace(i, node, new);
        Ok(())
    }

    /// `Shape(v)` -> `Gather(Shape(v'), [0, 3, 1, 2])`.
    fn shape(&mut self, i: usize, node: &NodeProto, twin: &str) {
        let s = self.patch.fresh_name(self.index, &format!("{}_nhwc", node.output[0]));
        let perm = self.patch.fresh_name(self.index, &format!("{}_to_nchw", node.output[0]));
        self.patch.add_initializer(tensor::tensor_from_i64(&perm, &Array1::from(TO_NCHW.to_vec()).into_dyn()));
        self.patch.add_node(NodeBuilder::new("Shape").inputs([twin]).outputs([s.as_str()]).build());
        self.patch.add_node(
            NodeBuilder::new("Gather")
                .inputs([s.as_str(), perm.as_str()])
                .outputs([node.output[0].as_str()])
                .attr_int("axis", 0)
                .build(),
        );
        self.patch.remove_node(i);
        self.gone.insert(i);
    }

    /// A layout-agnostic op on twins, when one of its activation inputs has a free twin.
    fn agnostic(&mut self, i: usize, node: &NodeProto, kind: Kind) -> Result<()> {
        if self.rank(&node.output[0]).is_some_and(|r| r != 4) {
            return Ok(());
        }
        // Which inputs carry the layout; the rest (Resize's roi) are passed through.
        let layout_inputs: Vec<usize> = match kind {
            Kind::Unary | Kind::Resize => vec![0],
            Kind::Binary | Kind::Concat(_) => (0..node.input.len()).collect(),
        };
        let mut any_free = false;
        for &k in &layout_inputs {
            let v = &node.input[k];
            if v.is_empty() {
                return Ok(());
            }
            if self.is_const(v) {
                if matches!(kind, Kind::Unary | Kind::Resize) {
                    return Ok(());
                }
                continue;
            }
            if self.rank(v) != Some(4) {
                return Ok(());
            }
            any_free |= self.twins.get(v).is_some_and(|(_, free)| *free);
        }
        if !any_free {
            return Ok(());
        }
        // Constant operands, permuted; checked before anything is added to the patch.
        let mut consts: HashMap<usize, String> = HashMap::new();
        for &k in &layout_inputs {
            let v = &node.input[k];
            if self.is_const(v) {
                match self.permuted_const(v, matches!(kind, Kind::Concat(_)))? {
                    Some(name) => {
                        consts.insert(k, name);
                    }
                    None => return Ok(()),
                }
            }
        }
        let mut extra: Vec<(usize, String)> = Vec::new();
        let mut axis = None;
        match kind {
            Kind::Concat(a) => axis = Some(nhwc_axis(a).ok_or_else(|| crate::Error::internal("axis"))?),
            Kind::Resize => {
                let scales = node.input.get(2).filter(|s| !s.is_empty());
                let sizes = node.input.get(3).filter(|s| !s.is_empty());
                let permuted = match (scales, sizes) {
                    (Some(s), None) => self.permuted_vector(s).map(|p| (2, p)),
                    (None, Some(s)) => self.permuted_vector(s).map(|p| (3, p)),
                    _ => None,
                };
                let Some(p) = permuted else { return Ok(()) };
                extra.push(p);
            }
            _ => {}
        }
        let mut inputs = node.input.to_vec();
        for &k in &layout_inputs {
            inputs[k] = match consts.remove(&k) {
                Some(c) => c,
                None => self.twin(&node.input[k]),
            };
        }
        for (k, name) in extra {
            inputs[k] = name;
        }
        let y = self.patch.fresh_name(self.index, &format!("{}_nhwc", node.output[0]));
        let mut new = node.clone();
        new.input = inputs;
        new.output = vec![y];
        if !node.name().is_empty() {
            new.name = Some(format!("{}_nhwc", node.name()));
        }
        if let Some(a) = axis {
            new.attribute.retain(|at| at.name() != "axis");
            new.attribute.push(make_attr_int("axis", a));
        }
        self.replace(i, node, new);
        Ok(())
    }

    /// Constant `v` broadcast against a rank-4 NCHW value, laid out for the NHWC twin: padded to rank 4 and
    /// permuted (kept as is when it holds one value). `None` when its rank exceeds 4, or, for Concat
    /// (`exact`), is not 4.
    fn permuted_const(&mut self, v: &str, exact: bool) -> Result<Option<String>> {
        let t = self.index.const_tensor(v).expect("a constant");
        let dims = tensor::dims(&t)?;
        if dims.len() > 4 || (exact && dims.len() != 4) {
            return Ok(None);
        }
        if dims.iter().product::<usize>() == 1 {
            return Ok(Some(v.to_string()));
        }
        let Some(elem) = tensor::elem_size(t.data_type()) else { return Ok(None) };
        let mut padded = vec![1usize; 4 - dims.len()];
        padded.extend(&dims);
        let bytes = self.index.model().tensor_bytes(&t)?;
        let (permuted, out_dims) = permute_bytes(&bytes, &padded, &[0, 2, 3, 1], elem);
        let name = self.patch.fresh_name(self.index, &format!("{v}_nhwc"));
        self.patch.add_initializer(tensor::tensor_from_raw(&name, t.data_type(), &out_dims, Bytes::from(permuted)));
        Ok(Some(name))
    }

    /// A constant 4-element vector (Resize's scales or sizes) in NHWC order.
    fn permuted_vector(&mut self, v: &str) -> Option<String> {
        let t = self.index.const_tensor(v)?;
        let dims = tensor::dims(&t).ok()?;
        if dims != [4] {
            return None;
        }
        let elem = tensor::elem_size(t.data_type())?;
        let bytes = self.index.model().tensor_bytes(&t).ok()?;
        let permuted: Vec<u8> =
            TO_NHWC.iter().flat_map(|&k| bytes[k as usize * elem..(k as usize + 1) * elem].iter().copied()).collect();
        let name = self.patch.fresh_name(self.index, &format!("{v}_nhwc"));
        self.patch.add_initializer(tensor::tensor_from_raw(&name, t.data_type(), &[4], Bytes::from(permuted)));
        Some(name)
    }

    /// One Transpose back to NCHW for each replaced output still read in NCHW (or a graph output).
    fn restore_nchw(&mut self) {
        for y in std::mem::take(&mut self.replaced) {
            let read =
                self.index.is_graph_output(&y) || self.index.consumers(&y).iter().any(|c| !self.gone.contains(c));
            if read {
                let t = self.twins[&y].0.clone();
                self.patch.add_node(transpose(&t, &y, &TO_NCHW));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
