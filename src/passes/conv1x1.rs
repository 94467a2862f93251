//! Pointwise convolutions as MatMuls on channels-last data (the seed's "conv 1x1 as linear" swap), so
//! that the int8 pass sees a MatMul with a constant 2-D weight, as it would for a Linear.
//!
//! ```text
//!   x [N, C, H, W] ─Conv(W [O, C, 1, 1], b [O]; stride 1, no padding, group 1, dilation 1)─> y [N, O, H, W]
//!
//! becomes
//!
//!   x ─Transpose(0,2,3,1)─MatMul(Wᵀ [C, O])─(Add b)─Transpose(0,3,1,2)─> y
//!        [N, H, W, C]       [N, H, W, O]
//!
//! and where the graph already changes layout around the conv (the UNet's proj_in / proj_out when the
//! transformer runs on [N, H·W, C]), the Transposes cancel instead of being added:
//!
//!   t ─Transpose(0,3,1,2)─Conv─Transpose(0,2,3,1)─> u      becomes      t ─MatMul(Wᵀ)─(Add b)─> u
//!
//! - input side: an x produced by Transpose(0,3,1,2) is read before that Transpose; an x produced by a
//!   conv converted in the same round is read in its channels-last form;
//! - output side: a single reader Transpose(0,2,3,1) is replaced by the MatMul (or Add) itself; the
//!   Transpose back to NCHW is emitted only when something else reads y. A `Shape(y)` reader alone does
//!   not keep it: it becomes `Shape(channels-last y) ─Gather([0,3,1,2])`.
//! ```
//!
//! Which convs: kernel 1x1, strides 1, pads 0, dilations 1, group 1, a constant float32/float16 weight
//! [O, C, 1, 1], a bias or none; and, as in the seed, only where C or O is one of the option `channels`
//! (profiles/conv1x1.toml: `channels = [128]`). An empty list or no option converts every pointwise conv.
//!
//! Idempotent: the converted convs are gone, so `run` returns `None` on a graph it already rewrote.

use std::collections::HashMap;

use ndarray::{Array1, ArrayD};

use crate::Result;
use crate::onnx::{
    GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, attr_int, attr_ints, attr_string, dtype, is_op, tensor,
};
use crate::passes::layout::{TO_NCHW, TO_NHWC};
use crate::passes::{BuildContext, Pass, PassContext, PassSpec};

/// The conv1x1 pass (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conv1x1 {
    /// Convert a conv only when its input or output channel count is in this list; empty = every one.
    pub channels: Vec<usize>,
}

/// Options of the conv1x1 pass (a profile's `[conv1x1]`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1x1Options {
    /// Channel counts; absent or empty: convert every pointwise conv.
    #[serde(default)]
    pub channels: Vec<std::num::NonZeroUsize>,
}

impl PassSpec for Conv1x1 {
    const NAME: &'static str = "conv1x1";
    const SUMMARY: &'static str = "pointwise convolutions with a listed channel count become MatMuls (`channels`)";
    type Options = Conv1x1Options;
    fn build(options: Conv1x1Options, _: &BuildContext) -> Result<Self> {
        Ok(Conv1x1 { channels: options.channels.into_iter().map(usize::from).collect() })
    }
}

impl Conv1x1 {
    /// True when a conv with `c_in` input and `c_out` output channels is to be converted.
    fn selects(&self, c_in: usize, c_out: usize) -> bool {
        self.channels.is_empty() || self.channels.contains(&c_in) || self.channels.contains(&c_out)
    }
}

impl Pass for Conv1x1 {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        let index = GraphIndex::new(model);
        let mut rewrite = Rewrite { index: &index, patch: Patch::new(), nhwc: HashMap::new(), gather_perm: None };
        for (i, node) in index.nodes().iter().enumerate() {
            let Some(conv) = pointwise_conv(&index, i, node) else { continue };
            if self.selects(conv.c_in, conv.c_out) && !rewrite.patch.is_removed(i) {
                rewrite.convert(node, &conv);
            }
        }
        let patch = rewrite.patch;
        Ok((!patch.is_empty()).then_some(patch))
    }
}

/// A matched pointwise conv: its weight as [C, O] and its channel counts.
struct PointwiseConv {
    index: usize,
    weight: ArrayD<f32>,
    w_dtype: i32,
    c_in: usize,
    c_out: usize,
}

/// Node `i` as a convertible 1x1 conv, if it is one.
fn pointwise_conv(index: &GraphIndex, i: usize, node: &NodeProto) -> Option<PointwiseConv> {
    if !is_op(node, "Conv") || !(2..=3).contains(&node.input.len()) || node.output.len() != 1 {
        return None;
    }
    if node.input[0].is_empty() || node.output[0].is_empty() {
        return None;
    }
    let all = |name: &str, v: i64| attr_ints(node, name).is_none_or(|a| a.iter().all(|&x| x == v));
    let no_padding =
        matches!(attr_string(node, "auto_pad"), None | Some("NOTSET" | "VALID" | "SAME_UPPER" | "SAME_LOWER"));
    let kernel_ok = attr_ints(node, "kernel_shape").is_none_or(|k| k == [1, 1]);
    if attr_int(node, "group").unwrap_or(1) != 1 || !all("strides", 1) || !all("pads", 0) || !all("dilations", 1) {
        return None;
    }
    if !no_padding || !kernel_ok {
        return None;
    }
    let w = index.const_tensor(&node.input[1])?;
    let w_dtype = w.data_type();
    let [c_out, c_in, 1, 1] = w.dims[..] else { return None };
    if !matches!(w_dtype, dtype::FLOAT | dtype::FLOAT16) || c_out <= 0 || c_in <= 0 {
        return None;
    }
    let weight = index.model().tensor_f32(&w).ok()?;
    let weight = weight.to_shape((c_out as usize, c_in as usize)).ok()?.t().to_owned().into_dyn();
    Some(PointwiseConv { index: i, weight, w_dtype, c_in: c_in as usize, c_out: c_out as usize })
}

/// One round of conversions: the patch, and the channels-last form of values it already has.
struct Rewrite<'a, 'm> {
    index: &'a GraphIndex<'m>,
    patch: Patch,
    /// NCHW value -> a value holding it as NHWC (outputs of convs converted in this round, Transposes
    /// added for their inputs).
    nhwc: HashMap<String, String>,
    /// The `[0, 3, 1, 2]` initializer the rewritten `Shape` readers gather with.
    gather_perm: Option<String>,
}

impl Rewrite<'_, '_> {
    fn convert(&mut self, node: &NodeProto, conv: &PointwiseConv) {
        let index = self.index;
        let x = &node.input[0];
        let y = &node.output[0];
        let x_nhwc = self.channels_last(x);

        let w_name = self.patch.fresh_name(index, &format!("{}_matmul", node.input[1]));
        let w = if conv.w_dtype == dtype::FLOAT16 {
            tensor::tensor_from_f16(&w_name, &conv.weight)
        } else {
            tensor::tensor_from_f32(&w_name, &conv.weight)
        };
        self.patch.add_initializer(w);

        // Readers of y: a single Transpose to NHWC is absorbed, Shape readers can follow the NHWC value,
        // anything else needs y itself.
        let mut to_nhwc = Vec::new();
        let mut shapes = Vec::new();
        let mut needs_nchw = index.is_graph_output(y);
        for &c in index.consumers(y) {
            let reader = index.node(c);
            if is_op(reader, "Transpose") && attr_ints(reader, "perm") == Some(&TO_NHWC[..]) && reader.output.len() == 1
            {
                to_nhwc.push(c);
            } else if is_op(reader, "Shape") && reader.attribute.is_empty() && reader.output.len() == 1 {
                shapes.push(c);
            } else {
                needs_nchw = true;
            }
        }
        let absorbed = match to_nhwc[..] {
            [t] if !self.patch.is_removed(t) => Some(t),
            _ => {
                needs_nchw |= !to_nhwc.is_empty();
                None
            }
        };
        let y_nhwc = match absorbed {
            Some(t) => index.node(t).output[0].clone(),
            None => self.patch.fresh_name(index, &format!("{y}_nhwc")),
        };

        let bias = node.input.get(2).filter(|b| !b.is_empty());
        let product =
            if bias.is_some() { self.patch.fresh_name(index, &format!("{y}_matmul")) } else { y_nhwc.clone() };
        self.patch.add_node(NodeBuilder::new("MatMul").inputs([x_nhwc, w_name]).outputs([product.clone()]).build());
        if let Some(b) = bias {
            self.patch.add_node(NodeBuilder::new("Add").inputs([product, b.clone()]).outputs([y_nhwc.clone()]).build());
        }
        if let Some(t) = absorbed {
            self.patch.remove_node(t);
        }
        if needs_nchw {
            self.patch.add_node(
                NodeBuilder::new("Transpose")
                    .inputs([y_nhwc.clone()])
                    .outputs([y.clone()])
                    .attr_ints("perm", &TO_NCHW)
                    .build(),
            );
        } else {
            for s in shapes {
                self.shape_from_nhwc(s, &y_nhwc);
            }
        }
        self.nhwc.insert(y.clone(), y_nhwc);
        self.patch.remove_node(conv.index);
        self.patch.count_rewrite();
    }

    /// A value holding `x` (NCHW) as NHWC: the input of a Transpose(0,3,1,2) that made x, a value this
    /// round already has, or a new Transpose.
    fn channels_last(&mut self, x: &str) -> String {
        if let Some(v) = self.nhwc.get(x) {
            return v.clone();
        }
        if let Some(t) = self.index.producer_op(x, "Transpose") {
            let node = self.index.node(t);
            if let Some(t) = node.input.first().filter(|t| !t.is_empty())
                && attr_ints(node, "perm") == Some(&TO_NCHW[..])
            {
                return t.clone();
            }
        }
        let v = self.patch.fresh_name(self.index, &format!("{x}_nhwc"));
        self.patch.add_node(
            NodeBuilder::new("Transpose")
                .inputs([x.to_string()])
                .outputs([v.clone()])
                .attr_ints("perm", &TO_NHWC)
                .build(),
        );
        self.nhwc.insert(x.to_string(), v.clone());
        v
    }

    /// Rewrites `Shape(y)` (node `s`) as `Gather(Shape(y_nhwc), [0, 3, 1, 2])`.
    fn shape_from_nhwc(&mut self, s: usize, y_nhwc: &str) {
        let out = self.index.node(s).output[0].clone();
        let perm = match &self.gather_perm {
            Some(p) => p.clone(),
            None => {
                let name = self.patch.fresh_name(self.index, "nhwc_to_nchw_axes");
                self.patch.add_initializer(tensor::tensor_from_i64(&name, &Array1::from(TO_NCHW.to_vec()).into_dyn()));
                self.gather_perm = Some(name.clone());
                name
            }
        };
        let shape = self.patch.fresh_name(self.index, &format!("{out}_nhwc"));
        self.patch.add_node(NodeBuilder::new("Shape").inputs([y_nhwc.to_string()]).outputs([shape.clone()]).build());
        self.patch
            .add_node(NodeBuilder::new("Gather").inputs([shape, perm]).outputs([out]).attr_int("axis", 0).build());
        self.patch.remove_node(s);
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::*;
    use crate::onnx::{ModelProto, TensorProto, make_tensor_value_info};
    use crate::passes::layout::transpose;
    use crate::passes::testing::{compare_small, count, noise, run_passes, tiny};
    use crate::passes::{Cleanup, PassManager};

    fn weight(name: &str, dims: &[usize], seed: u64) -> TensorProto {
        let values = noise(dims.iter().product(), seed);
        tensor::tensor_from_f32(name, &ArrayD::from_shape_vec(IxDyn(dims), values).unwrap())
    }

    fn conv(inputs: &[&str], output: &str) -> NodeBuilder {
        NodeBuilder::new("Conv").inputs(inputs.iter().copied()).outputs([output])
    }

    /// x [b, 128, 4, 4]:
    ///   a = Conv1x1(x; 128 -> 16, bias) -> Relu -> b = Conv1x1(16 -> 16) -> g = Conv1x1(16 -> 16, bias)
    ///     -> c = Conv3x3(pad 1) -> d = Conv1x1(16 -> 128, stride 2) -> y
    ///   t [b, 4, 4, 128] -> Transpose(0,3,1,2) -> e = Conv1x1(128 -> 128, bias) -> Transpose(0,2,3,1) -> u,
    ///     and Shape(e) -> s
    fn graph() -> OnnxModel {
        let mut m = ModelProto::new();
        m.set_ir_version(8);
        m.opset_import.push(crate::onnx::make_opset("", 17));
        let g = m.graph.mut_or_insert_default();
        g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[None, Some(128), Some(4), Some(4)])));
        g.input.push(make_tensor_value_info("t", dtype::FLOAT, Some(&[None, Some(4), Some(4), Some(128)])));
        for out in ["y", "u", "s"] {
            g.output.push(make_tensor_value_info(out, if out == "s" { dtype::INT64 } else { dtype::FLOAT }, None));
        }
        g.initializer = vec![
            weight("wa", &[16, 128, 1, 1], 1),
            weight("ba", &[16], 2),
            weight("wb", &[16, 16, 1, 1], 3),
            weight("wg", &[16, 16, 1, 1], 4),
            weight("bg", &[16], 5),
            weight("wc", &[16, 16, 3, 3], 6),
            weight("wd", &[128, 16, 1, 1], 7),
            weight("we", &[128, 128, 1, 1], 8),
            weight("be", &[128], 9),
        ];
        g.node = vec![
            conv(&["x", "wa", "ba"], "a").attr_ints("kernel_shape", &[1, 1]).build(),
            NodeBuilder::new("Relu").inputs(["a"]).outputs(["r"]).build(),
            conv(&["r", "wb"], "b").attr_ints("pads", &[0, 0, 0, 0]).attr_ints("strides", &[1, 1]).build(),
            conv(&["b", "wg", "bg"], "g").attr_int("group", 1).build(),
            conv(&["g", "wc"], "c").attr_ints("pads", &[1, 1, 1, 1]).build(),
            conv(&["c", "wd"], "y").attr_ints("strides", &[2, 2]).build(),
            transpose("t", "tn", &TO_NCHW),
            conv(&["tn", "we", "be"], "e").attr_ints("dilations", &[1, 1]).build(),
            transpose("e", "u", &TO_NHWC),
            NodeBuilder::new("Shape").inputs(["e"]).outputs(["s"]).build(),
        ];
        OnnxModel::from_proto(m, None)
    }

    fn channels(list: &[i64]) -> Conv1x1 {
        Conv1x1 { channels: list.iter().map(|&c| c as usize).collect() }
    }

    fn ops(m: &OnnxModel) -> Vec<&str> {
        m.graph().node.iter().map(|n| n.op_type()).collect()
    }

    /// With `channels = [128]`, a (128 in) and e (128 both) become MatMuls; d has 128 channels too but
    /// stride 2, b and g have 16; e's Transposes cancel; the 3x3 conv stays.
    #[test]
    fn converts_the_pointwise_convs_with_a_listed_channel_count() {
        let before = graph();
        let mut after = before.clone();
        let r = run_passes(&mut after, PassManager::new().with(channels(&[128])));
        assert_eq!(r[0].rewrites, 2);
        assert_eq!(count(&after, "Conv"), 4, "{:?}", ops(&after));
        assert_eq!(count(&after, "MatMul"), 2);
        // a: Transpose in + back; e: none (the graph's own pair is gone, Shape reads the NHWC value).
        assert_eq!(count(&after, "Transpose"), 2, "{:?}", ops(&after));
        assert_eq!(count(&after, "Gather"), 1);
        for mm in after.graph().node.iter().filter(|n| n.op_type() == "MatMul") {
            assert_eq!(after.initializer(&mm.input[1]).unwrap().dims.len(), 2, "int8 sees a 2-D weight");
        }
        let e = after.graph().node.iter().find(|n| n.op_type() == "MatMul" && n.input[0] == "t").unwrap();
        assert_eq!(after.initializer(&e.input[1]).unwrap().dims, [128, 128]);
        assert!(run_passes(&mut after, PassManager::new().with(channels(&[128])))[0].unchanged());
        let err = compare_small(&before, &after, 3);
        assert!(err <= 1e-5, "relative L2 {err:.2e}");
    }

    /// `channels = []` converts every pointwise conv but the strided one; b feeds g channels-last.
    #[test]
    fn converts_every_pointwise_conv_without_a_channel_list() {
        let before = graph();
        let mut after = before.clone();
        let r = run_passes(&mut after, PassManager::new().with(Conv1x1::default()));
        assert_eq!(r[0].rewrites, 4);
        assert_eq!(count(&after, "Conv"), 2, "{:?}", ops(&after));
        // a: in + back (Relu), b: in (g reads its NHWC output), g: back (the 3x3 conv).
        assert_eq!(count(&after, "Transpose"), 4, "{:?}", ops(&after));
        assert!(run_passes(&mut after, PassManager::new().with(Conv1x1::default()))[0].unchanged());
        let err = compare_small(&before, &after, 4);
        assert!(err <= 1e-5, "relative L2 {err:.2e}");
        let none = run_passes(&mut graph(), PassManager::new().with(channels(&[64])));
        assert!(none[0].unchanged());
    }

    /// Malformed or unsupported convs are skipped, never a panic.
    #[test]
    fn skips_what_does_not_match() {
        let mut m = graph();
        let g = m.graph_mut();
        g.node[0].attribute.push(crate::onnx::make_attr_int("group", 2)); // a: group 2
        g.node[2].input.truncate(1); // b: no weight
        g.input.push(make_tensor_value_info("wg", dtype::FLOAT, None)); // g: weight overridable at run time
        *g.initializer.iter_mut().find(|t| t.name() == "we").unwrap() = weight("we", &[128, 128, 1], 8);
        let r = run_passes(&mut m, PassManager::new().with(Conv1x1::default()));
        assert_eq!(r[0].rewrites, 0);
    }

    #[test]
    fn options() {
        let ctx = BuildContext::new(crate::settings::ExecutionProvider::Cpu, crate::settings::Precision::Fp32);
        let build = |text: &str| crate::passes::options::build_from_str::<Conv1x1>(text, &ctx);
        assert_eq!(build("").unwrap().channels, Vec::<usize>::new());
        assert_eq!(build("channels = [128, 64]").unwrap().channels, [128, 64]);
        for bad in ["channels = 128", "channels = [0]", "channels = [-128]", "channels = [\"128\"]", "width = [1]"] {
            let err = build(bad).unwrap_err().to_string();
            assert!(err.starts_with("[conv1x1] key `"), "{bad}: {err}");
        }
    }

    /// (model, pointwise convs, those with 32 channels in or out, Transposes added). The profile's 128
    /// appears in none of the tiny models: nothing converts there. Transposes: two per conv, except the
    /// UNet's proj_in / proj_out, where the graph's own layout changes cancel them.
    const TINY: [(&str, usize, usize, usize); 8] = [
        ("tiny-sd/unet", 13, 6, 10),
        ("tiny-sd-dynamo/unet", 13, 6, 10),
        ("tiny-sdxl/unet", 5, 4, 10),
        ("tiny-sdxl-dynamo/unet", 5, 4, 10),
        ("tiny-sd/vae_decoder", 2, 0, 4),
        ("tiny-sd-dynamo/vae_decoder", 2, 0, 4),
        ("tiny-sd/vae_encoder", 2, 0, 4),
        ("tiny-sdxl-dynamo/vae_encoder", 2, 0, 4),
    ];

    #[test]
    fn converts_the_tiny_models() {
        for (k, (name, all, with_32, transposes)) in TINY.iter().enumerate() {
            for cleanup in [false, true] {
                let mut before = OnnxModel::load(tiny(name)).unwrap();
                if cleanup {
                    run_passes(&mut before, PassManager::new().with(Cleanup));
                }
                assert!(run_passes(&mut before.clone(), PassManager::new().with(channels(&[128])))[0].unchanged());
                let mut some = before.clone();
                assert_eq!(run_passes(&mut some, PassManager::new().with(channels(&[32])))[0].rewrites, *with_32);
                let mut after = before.clone();
                let r = run_passes(&mut after, PassManager::new().with(Conv1x1::default()))[0].clone();
                assert_eq!(r.rewrites, *all, "{name}: {r:?}");
                assert_eq!(count(&before, "Conv") - count(&after, "Conv"), *all, "{name}");
                assert_eq!(count(&after, "Transpose") - count(&before, "Transpose"), *transposes, "{name}");
                let converted = after.proto().clone();
                assert!(run_passes(&mut after, PassManager::new().with(Conv1x1::default()))[0].unchanged());
                assert_eq!(after.proto(), &converted);
                let err =
                    compare_small(&before, &after, 60 + k as u64).max(compare_small(&before, &some, 90 + k as u64));
                eprintln!(
                    "{name} (cleanup first: {cleanup}): {all} convs converted, {} -> {} nodes ({} -> {} Transposes), \
                     relative L2 {err:.1e}",
                    r.nodes_before,
                    r.nodes_after,
                    count(&before, "Transpose"),
                    count(&after, "Transpose")
                );
                assert!(err <= 1e-5, "{name}: relative L2 {err:.2e}");
            }
        }
    }
}
