//! Nearest 2x upsampling followed by a 3x3 convolution, computed at the low resolution: every output pixel
//! of the convolution reads a 3x3 window of an image made of 2x2 blocks of equal pixels, so it reads only
//! a 2x2 window of the image before upsampling, with summed weights. Four 2x2 convolutions (one per output
//! phase) do the work of the one 3x3 convolution at the upsampled size with 16 instead of 36 multiply-adds
//! per input channel and low-resolution pixel (2.25x fewer). Exact in real arithmetic; in float only the
//! order of the additions changes.
//!
//! ```text
//!   x [N, C, H, W] ─Resize(nearest, 2x)─> u [N, C, 2H, 2W] ─Conv(W [O, C, 3, 3], b; pads 1)─> y [N, O, 2H, 2W]
//!
//! becomes
//!
//!   x ─Conv(W00 [O, C, 2, 2], b; pads top 1, left 1)─┐
//!   x ─Conv(W01; pads top 1, right 1)────────────────┤
//!   x ─Conv(W10; pads bottom 1, left 1)──────────────┼─Concat(axis 1)─DepthToSpace(2, DCR)─> y
//!   x ─Conv(W11; pads bottom 1, right 1)─────────────┘   [N, 4O, H, W]
//!
//! y[2a+p, 2b+q] reads u rows 2a+p-1 .. 2a+p+1, i.e. x rows a-1, a (p = 0) or a, a+1 (p = 1):
//!   p = 0: kernel rows (W[0], W[1] + W[2]) over x rows (a-1, a)
//!   p = 1: kernel rows (W[0] + W[1], W[2]) over x rows (a, a+1)
//! and the same over columns with q; the zero padding of u is the zero padding of x.
//! ```
//!
//! Which pairs: a Resize with `mode = "nearest"`, `coordinate_transformation_mode = "asymmetric"` and
//! `nearest_mode` `floor` or `round_prefer_floor` (u[i] = x[floor(i / 2)]; what PyTorch's
//! `F.interpolate(scale_factor=2, mode="nearest")` exports), read only by a Conv with a constant float
//! weight [O, C, 3, 3], an optional constant bias, stride 1, dilation 1, group 1 and pads 1 on every side.
//! The size: constant `scales` [1, 1, 2, 2] (the VAE decoder's upsamplers), or, with the option
//! `dynamic_sizes = true`, a `sizes` input computed in the graph (an exported UNet's upsamplers take their
//! size from the skip connection, diffusers' `upsample_size`): the rewrite then assumes that size is twice
//! the input's, which holds wherever the skip connections meet the doubled size, i.e. at every size dfast
//! generates (`PipelineDir::size_step`: SD's sides are multiples of 8 x 2^downsamplings); at another size the
//! UNet would fail at the Concat after the upsampler, not run wrong.
//!
//! Idempotent: the rewritten convolutions read no Resize.

use ndarray::{Array4, ArrayD, Axis};

use crate::Result;
use crate::onnx::{
    GraphIndex, NodeBuilder, NodeProto, OnnxModel, Patch, attr_int, attr_ints, attr_string, dtype, is_op, tensor,
};
use crate::passes::{BuildContext, Pass, PassContext, PassSpec};

/// The upsample-conv pass (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpsampleConv {
    /// Rewrite Resizes whose size is computed in the graph too, assuming it is twice the input's.
    pub dynamic_sizes: bool,
}

/// Options of the upsample-conv pass (a profile's `[upsample-conv]`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsampleConvOptions {
    /// Also rewrite Resizes with a `sizes` input computed in the graph (default false).
    #[serde(default)]
    pub dynamic_sizes: bool,
}

impl PassSpec for UpsampleConv {
    const NAME: &'static str = "upsample-conv";
    const SUMMARY: &'static str =
        "nearest 2x upsampling + 3x3 conv as four 2x2 convs at the low resolution (2.25x fewer FLOPs; `dynamic_sizes`)";
    type Options = UpsampleConvOptions;
    fn build(options: UpsampleConvOptions, _: &BuildContext) -> Result<Self> {
        Ok(UpsampleConv { dynamic_sizes: options.dynamic_sizes })
    }
}

impl Pass for UpsampleConv {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        let index = GraphIndex::new(model);
        let mut patch = Patch::new();
        for (i, node) in index.nodes().iter().enumerate() {
            let Some(m) = self.matched(&index, i, node) else { continue };
            if patch.is_removed(i) || patch.is_removed(m.resize) {
                continue;
            }
            rewrite(&index, &mut patch, node, &m);
        }
        Ok((!patch.is_empty()).then_some(patch))
    }
}

/// A matched Resize -> Conv pair.
struct Matched {
    resize: usize,
    /// The Resize's input (the low-resolution image).
    x: String,
    weight: Array4<f32>,
    w_dtype: i32,
}

impl UpsampleConv {
    /// Node `i` as the Conv of a rewritable pair, if it is one.
    fn matched(&self, index: &GraphIndex, i: usize, conv: &NodeProto) -> Option<Matched> {
        if !is_op(conv, "Conv") || !(2..=3).contains(&conv.input.len()) || conv.output.len() != 1 {
            return None;
        }
        let all = |name: &str, v: i64| attr_ints(conv, name).is_none_or(|a| a.iter().all(|&x| x == v));
        if attr_int(conv, "group").unwrap_or(1) != 1 || !all("strides", 1) || !all("dilations", 1) {
            return None;
        }
        if attr_ints(conv, "pads") != Some(&[1, 1, 1, 1][..])
            || !matches!(attr_string(conv, "auto_pad"), None | Some("NOTSET"))
        {
            return None;
        }
        if attr_ints(conv, "kernel_shape").is_some_and(|k| k != [3, 3]) {
            return None;
        }
        if conv.input.get(2).is_some_and(|b| !b.is_empty() && index.const_tensor(b).is_none()) {
            return None;
        }
        let w = index.const_tensor(&conv.input[1])?;
        let w_dtype = w.data_type();
        let [o, c, 3, 3] = w.dims[..] else { return None };
        if !matches!(w_dtype, dtype::FLOAT | dtype::FLOAT16) || o <= 0 || c <= 0 {
            return None;
        }
        let u = &conv.input[0];
        let resize = index.producer_op(u, "Resize")?;
        if index.single_consumer(u) != Some(i) || index.is_graph_output(u) {
            return None;
        }
        let r = index.node(resize);
        if !self.doubles(index, r) {
            return None;
        }
        let weight = index.model().tensor_f32(&w).ok()?.into_dimensionality().ok()?;
        Some(Matched { resize, x: r.input.first()?.clone(), weight, w_dtype })
    }

    /// Whether Resize `r` is a nearest 2x upsampling with u[i] = x[floor(i / 2)] over the last two axes.
    fn doubles(&self, index: &GraphIndex, r: &NodeProto) -> bool {
        let nearest = attr_string(r, "mode") == Some("nearest")
            && attr_string(r, "coordinate_transformation_mode") == Some("asymmetric")
            && matches!(attr_string(r, "nearest_mode"), None | Some("floor" | "round_prefer_floor"))
            && attr_int(r, "antialias").unwrap_or(0) == 0
            && attr_ints(r, "axes").is_none()
            && attr_string(r, "keep_aspect_ratio_policy").is_none_or(|p| p == "stretch");
        if !nearest || r.input.first().is_none_or(String::is_empty) {
            return false;
        }
        let scales = r.input.get(2).filter(|s| !s.is_empty());
        let sizes = r.input.get(3).filter(|s| !s.is_empty());
        match (scales, sizes) {
            (Some(s), None) => {
                index.const_f32(s).ok().flatten().is_some_and(|v| v.iter().copied().eq([1.0, 1.0, 2.0, 2.0]))
            }
            (None, Some(s)) => self.dynamic_sizes && index.const_tensor(s).is_none(),
            _ => false,
        }
    }
}

/// The 2x3 matrix that folds a 3-tap kernel axis into the 2 taps of output phase `p`.
fn fold(p: usize) -> [[f32; 3]; 2] {
    if p == 0 { [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]] } else { [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]] }
}

/// The 2x2 kernel of output phase (p, q): fold(p) . W . fold(q)^T over the kernel's two axes.
fn phase_kernel(w: &Array4<f32>, p: usize, q: usize) -> ArrayD<f32> {
    let (o, c) = (w.shape()[0], w.shape()[1]);
    let (rows, cols) = (fold(p), fold(q));
    let mut k = Array4::<f32>::zeros((o, c, 2, 2));
    for (mut ko, wo) in k.axis_iter_mut(Axis(0)).zip(w.axis_iter(Axis(0))) {
        for (mut kc, wc) in ko.axis_iter_mut(Axis(0)).zip(wo.axis_iter(Axis(0))) {
            for r in 0..2 {
                for s in 0..2 {
                    let mut sum = 0.0f32;
                    for i in 0..3 {
                        for j in 0..3 {
                            sum += rows[r][i] * cols[s][j] * wc[[i, j]];
                        }
                    }
                    kc[[r, s]] = sum;
                }
            }
        }
    }
    debug_assert_eq!(k.shape(), [o, c, 2, 2]);
    k.into_dyn()
}

fn rewrite(index: &GraphIndex, patch: &mut Patch, conv: &NodeProto, m: &Matched) {
    let y = &conv.output[0];
    let bias = conv.input.get(2).filter(|b| !b.is_empty());
    let mut phases = Vec::new();
    for (p, q) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let name = patch.fresh_name(index, &format!("{}_phase{p}{q}", conv.input[1]));
        let k = phase_kernel(&m.weight, p, q);
        patch.add_initializer(if m.w_dtype == dtype::FLOAT16 {
            tensor::tensor_from_f16(&name, &k)
        } else {
            tensor::tensor_from_f32(&name, &k)
        });
        let out = patch.fresh_name(index, &format!("{y}_phase{p}{q}"));
        let mut inputs = vec![m.x.clone(), name];
        inputs.extend(bias.cloned());
        // pads: [top, left, bottom, right]
        let pads = [1 - p as i64, 1 - q as i64, p as i64, q as i64];
        patch.add_node(
            NodeBuilder::new("Conv")
                .inputs(inputs)
                .outputs([out.clone()])
                .attr_ints("kernel_shape", &[2, 2])
                .attr_ints("pads", &pads)
                .build(),
        );
        phases.push(out);
    }
    let joined = patch.fresh_name(index, &format!("{y}_phases"));
    patch.add_node(NodeBuilder::new("Concat").inputs(phases).outputs([joined.clone()]).attr_int("axis", 1).build());
    patch.add_node(
        NodeBuilder::new("DepthToSpace")
            .inputs([joined])
            .outputs([y.clone()])
            .attr_int("blocksize", 2)
            .attr_string("mode", "DCR")
            .build(),
    );
    let conv_index = index.producer(y).expect("the conv produces its output");
    patch.remove_node(conv_index);
    patch.remove_node(m.resize);
    patch.count_rewrite();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::ModelProto;
    use crate::passes::PassManager;
    use crate::passes::cleanup::Cleanup;
    use crate::passes::testing::{Sizes, compare, count, run_passes, tiny};

    /// x [N, C, H, W] -> Resize(nearest 2x, `resize_attrs`) -> Conv(3x3, `pads`) -> y, with or without bias.
    fn net(c: usize, o: usize, resize_attrs: &[(&str, &str)], pads: [i64; 4], bias: bool) -> OnnxModel {
        use crate::onnx::make_tensor_value_info;
        let f32s = |name: &str, dims: &[usize], values: Vec<f32>| {
            tensor::tensor_from_f32(name, &ArrayD::from_shape_vec(dims.to_vec(), values).unwrap())
        };
        let mut m = ModelProto::new();
        m.set_ir_version(8);
        m.opset_import.push(crate::onnx::make_opset("", 17));
        let g = m.graph.mut_or_insert_default();
        g.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[None, Some(c as i64), None, None])));
        g.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
        g.initializer = vec![
            f32s("w", &[o, c, 3, 3], crate::passes::testing::noise(o * c * 9, 7)),
            f32s("b", &[o], crate::passes::testing::noise(o, 8)),
            f32s("scales", &[4], vec![1.0, 1.0, 2.0, 2.0]),
        ];
        let mut resize = NodeBuilder::new("Resize").inputs(["x", "", "scales"]).outputs(["u"]);
        for (k, v) in resize_attrs {
            resize = resize.attr_string(k, v);
        }
        let conv_inputs: &[&str] = if bias { &["u", "w", "b"] } else { &["u", "w"] };
        g.node = vec![
            resize.build(),
            NodeBuilder::new("Conv")
                .inputs(conv_inputs.iter().copied())
                .outputs(["y"])
                .attr_ints("pads", &pads)
                .build(),
        ];
        OnnxModel::from_proto(m, None)
    }

    const TORCH: [(&str, &str); 3] =
        [("mode", "nearest"), ("coordinate_transformation_mode", "asymmetric"), ("nearest_mode", "floor")];

    #[test]
    fn rewrites_a_nearest_upsampling_and_its_conv_exactly() {
        for bias in [true, false] {
            let before = net(5, 6, &TORCH, [1, 1, 1, 1], bias);
            let mut after = before.clone();
            let r = run_passes(&mut after, PassManager::new().with(UpsampleConv::default()));
            assert_eq!(r[0].rewrites, 1, "{r:?}");
            assert_eq!((count(&after, "Resize"), count(&after, "Conv"), count(&after, "DepthToSpace")), (0, 4, 1));
            for spatial in [1, 5, 8] {
                let err = compare(&before, &after, 3, Sizes { batch: 2, spatial, other: 1 });
                assert!(err <= 1e-6, "{spatial}x{spatial}, bias {bias}: relative L2 {err:.2e}");
            }
            assert!(run_passes(&mut after, PassManager::new().with(UpsampleConv::default()))[0].unchanged());
        }
    }

    /// A Resize whose `sizes` the graph computes (Shape -> Slice -> Mul 2 -> Concat, as an export with dynamic
    /// axes writes it): rewritten only with `dynamic_sizes`, then exactly.
    #[test]
    fn rewrites_computed_sizes_only_when_told() {
        let before = with_computed_sizes(net(4, 3, &TORCH, [1, 1, 1, 1], true));
        let mut same = before.clone();
        assert!(run_passes(&mut same, PassManager::new().with(UpsampleConv::default()))[0].unchanged());
        let mut after = before.clone();
        let r = run_passes(&mut after, PassManager::new().with(UpsampleConv { dynamic_sizes: true }));
        assert_eq!(r[0].rewrites, 1, "{r:?}");
        let err = compare(&before, &after, 5, Sizes { batch: 1, spatial: 6, other: 1 });
        assert!(err <= 1e-6, "relative L2 {err:.2e}");
    }

    /// `m` with its Resize sized by `sizes` = shape(x)[:2] ++ 2 * shape(x)[2:], computed in the graph.
    fn with_computed_sizes(m: OnnxModel) -> OnnxModel {
        let mut proto = m.proto().clone();
        let g = proto.graph.mut_or_insert_default();
        let i64s = |name: &str, v: &[i64]| {
            tensor::tensor_from_i64(name, &ArrayD::from_shape_vec(vec![v.len()], v.to_vec()).unwrap())
        };
        g.initializer.extend([i64s("zero", &[0]), i64s("two", &[2]), i64s("four", &[4]), i64s("twice", &[2, 2])]);
        let node = |op: &str, inputs: &[&str], out: &str| {
            NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs([out]).build()
        };
        let mut nodes = vec![
            node("Shape", &["x"], "shape"),
            node("Slice", &["shape", "zero", "two"], "nc"),
            node("Slice", &["shape", "two", "four"], "hw"),
            node("Mul", &["hw", "twice"], "hw2"),
            NodeBuilder::new("Concat").inputs(["nc", "hw2"]).outputs(["sizes"]).attr_int("axis", 0).build(),
        ];
        for n in &mut g.node {
            if n.op_type() == "Resize" {
                n.input = vec!["x".into(), String::new(), String::new(), "sizes".into()];
            }
        }
        nodes.append(&mut g.node);
        g.node = nodes;
        OnnxModel::from_proto(proto, None)
    }

    #[test]
    fn skips_what_does_not_match() {
        type Case<'a> = (&'a [(&'a str, &'a str)], [i64; 4]);
        let cases: [Case; 4] = [
            (&[("mode", "nearest"), ("coordinate_transformation_mode", "half_pixel")], [1, 1, 1, 1]),
            (&[("mode", "linear"), ("coordinate_transformation_mode", "asymmetric")], [1, 1, 1, 1]),
            (
                &[("mode", "nearest"), ("coordinate_transformation_mode", "asymmetric"), ("nearest_mode", "ceil")],
                [1, 1, 1, 1],
            ),
            (&TORCH, [0, 0, 0, 0]),
        ];
        for (attrs, pads) in cases {
            let mut m = net(3, 4, attrs, pads, true);
            assert!(run_passes(&mut m, PassManager::new().with(UpsampleConv::default()))[0].unchanged(), "{attrs:?}");
        }
    }

    #[test]
    fn options() {
        let ctx = BuildContext::new(crate::settings::ExecutionProvider::Cpu, crate::settings::Precision::Fp32);
        let build = |text: &str| crate::passes::options::build_from_str::<UpsampleConv>(text, &ctx);
        assert!(!build("").unwrap().dynamic_sizes);
        assert!(build("dynamic_sizes = true").unwrap().dynamic_sizes);
        for bad in ["dynamic_sizes = 1", "dynamic = true"] {
            let err = build(bad).unwrap_err().to_string();
            assert!(err.starts_with("[upsample-conv] key `"), "{bad}: {err}");
        }
    }

    /// The tiny pipelines' upsamplers: the same outputs as the unrewritten graph.
    #[test]
    fn rewrites_the_tiny_models() {
        // (model, rewrites, rewrites with dynamic_sizes): the tiny UNets' upsamplers have constant scales.
        let cases = [
            ("tiny-sd/vae_decoder", 3, 3),
            ("tiny-sd-dynamo/vae_decoder", 3, 3),
            ("tiny-sd/unet", 1, 1),
            ("tiny-sd-dynamo/unet", 1, 1),
            ("tiny-sdxl/unet", 1, 1),
        ];
        for (k, (name, fixed, dynamic)) in cases.iter().enumerate() {
            let mut before = OnnxModel::load(tiny(name)).unwrap();
            run_passes(&mut before, PassManager::new().with(Cleanup));
            for (option, want) in [(false, fixed), (true, dynamic)] {
                let mut after = before.clone();
                let pass = UpsampleConv { dynamic_sizes: option };
                let r = run_passes(&mut after, PassManager::new().with(pass));
                assert_eq!(r[0].rewrites, *want, "{name} dynamic_sizes {option}: {r:?}");
                let err = compare(&before, &after, 40 + k as u64, Sizes { batch: 2, spatial: 16, other: 7 });
                eprintln!("{name} (dynamic_sizes {option}): {want} rewritten, relative L2 {err:.1e}");
                assert!(err <= 1e-5, "{name}: relative L2 {err:.2e}");
            }
        }
    }
}
