//! Dynamic int8 for MatMuls with a constant weight: the last step of the seed (per-channel symmetric int8
//! weights, int8 activations quantized at run time), on the Linears that are worth it.
//!
//! ```text
//! Which MatMuls: a constant float32 2-D weight W [in, out] (Linear layers, fused QKV projections, the
//! MatMuls conv1x1 makes from pointwise convs), in > min_in_features (16), (in, out) not in `exclude`.
//!
//!   x ──MatMul(W [in, out])──> y
//!
//! format "dynamic" (cpu, cuda): ONNX Runtime's dynamic pattern, what `quantize_dynamic(per_channel=True,
//! weight_type=QInt8)` writes; the CPU EP fuses it at session creation into MatMulIntegerToFloat (one
//! DynamicQuantizeLinear shared by every MatMul reading x) or DynamicQuantizeMatMul:
//!
//!   x ──DynamicQuantizeLinear──> xq (uint8), xs (float, per tensor), xz (uint8)
//!   xq, Wq (int8 [in, out]), xz, Wz (int8 zeros [out]) ──MatMulInteger──> int32 ──Cast(float)──┐
//!   xs, Ws (float [out] = max|W[:, j]| / 127, or / 64) ──Mul──> xs·Ws ────────────────────────Mul──> y
//!
//! format "qdq" (openvino, tensorrt): WEIGHT-ONLY int8. Activations stay float: dynamic activation
//! quantization has no QDQ form (QuantizeLinear needs a static scale, i.e. calibration data). Each
//! DequantizeLinear carries the label in its doc_string.
//!
//!   Wq (int8 [in, out]), Ws (float [out]), Wz (int8 zeros [out]) ──DequantizeLinear(axis=1)──> W'
//!   x ──MatMul(W')──> y
//! ```
//!
//! Weight range, `reduce_range` (default: true in the dynamic format, false in qdq): ONNX Runtime's CPU
//! kernels multiply the uint8 activations by the int8 weights (MatMulInteger, MatMulIntegerToFloat; on the
//! CUDA EP too, which leaves these nodes to the CPU). With VNNI the products are summed in int32; on x86-64
//! without it (AVX2-only CPUs such as AMD Zen 2 and 3, AVX-512 without VNNI) MLAS adds pairs of products
//! into a saturating int16 (`vpmaddubsw`, `QgemmU8X8KernelAvx2.S`), and full-range weights overflow it:
//! 2 x 255 x 127 = 64770 > 32767. ONNX Runtime's quantization guide answers it with 7-bit weights
//! (`reduce_range`): with `reduce_range` the weights are [-64, 64] (2 x 255 x 64 = 32640), never saturate,
//! and a converted folder computes the same on every x86-64 CPU, as it must, since a folder converted on one
//! machine runs on others. Relative L2 of `out_sample` against fp32 (CPU EP, AMD EPYC Zen 2; "exact" is the
//! 8-bit graph with ONNX Runtime's `session.x64quantprecision`, its exact u8 x u8 kernels, i.e. what a VNNI
//! CPU computes):
//!
//! | | 8-bit, AVX2 | 8-bit, exact (VNNI) | 7-bit, any CPU |
//! |---|---|---|---|
//! | tiny-sd UNet | 3.07e-2 | 3.74e-3 | 3.92e-3 |
//! | tiny-sdxl UNet | 1.56e-1 | 9.69e-3 | 1.19e-2 |
//!
//! Dropping the eighth bit costs 5 to 25 % more error where the arithmetic is exact; keeping it costs 8 to
//! 16 times the error where it saturates. `reduce_range = false` is for folders that only run on VNNI CPUs.
//! `session.x64quantprecision` is no substitute: every session would need it, and ONNX Runtime 1.31 fails to
//! create a session with it on a graph where two MatMuls read one DequantizeLinear'd weight ("Attempt to
//! replace the existing tensor"). The qdq format keeps activations float, so its weights keep 8 bits.
//!
//! Weights are read one at a time from wherever they live (memory-mapped, external data included) and
//! quantized straight from their bytes; only the int8 result (a quarter of the float32 size) is kept, in
//! the patch. A weight read by several MatMuls is quantized once, and one DynamicQuantizeLinear serves every
//! quantized MatMul reading the same activation.
//!
//! Notes:
//! - Gemm nodes (the TorchScript export's time-embedding Linears) are not quantized, as ONNX Runtime's
//!   `quantize_dynamic` does not; neither are MatMuls with a float16 weight (run this pass before
//!   `precision`).
//! - On the CUDA EP, ONNX Runtime 1.31 has no DynamicQuantizeLinear kernel and MatMulInteger only for int8
//!   activations, so the "dynamic" nodes fall back to the CPU there.
//! - A weight column of zeros gets scale 1 (all its int8 values are 0); a weight with a NaN or an infinity
//!   is left in float.
//!
//! Idempotent: the quantized MatMuls are gone (MatMulInteger), or read a DequantizeLinear output, which is
//! not a constant; `run` returns `None` on a graph it already rewrote.

use std::collections::HashMap;

use bytes::Bytes;

use crate::Result;
use crate::onnx::tensor::tensor_from_raw;
use crate::onnx::{GraphIndex, NodeBuilder, OnnxModel, Patch, dtype, is_op};
use crate::passes::quantize::quantize_per_column;
use crate::passes::{BuildContext, Pass, PassContext, PassSpec};
use crate::settings::ExecutionProvider;

/// The label a QDQ DequantizeLinear carries in its doc_string.
pub const QDQ_LABEL: &str = "dfast int8-dynamic, format qdq: weight-only int8 (per-channel symmetric weights); \
                             activations stay float, since dynamic activation quantization has no QDQ form \
                             without calibration";

crate::settings::named_enum! {
    /// What the pass emits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Int8Format {
        /// `DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul` (ONNX Runtime CPU / CUDA).
        Dynamic = "dynamic",
        /// Weight-only `DequantizeLinear -> MatMul` (OpenVINO, TensorRT).
        Qdq = "qdq",
    }
}

impl Int8Format {
    /// The format an execution provider runs best: the dynamic pattern on ONNX Runtime's own EPs, QDQ on
    /// the EPs that only take QDQ models.
    pub fn default_for(target: ExecutionProvider) -> Self {
        if target.runs_contrib_ops() { Int8Format::Dynamic } else { Int8Format::Qdq }
    }

    /// Whether weights default to the reduced range: yes for the dynamic pattern, whose MatMulInteger
    /// (uint8 activations x int8 weights) runs on ONNX Runtime's CPU kernels, which saturate on x86-64
    /// without VNNI; no for QDQ, whose activations stay float.
    pub fn default_reduce_range(self) -> bool {
        self == Int8Format::Dynamic
    }
}

/// The int8-dynamic pass (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Int8Dynamic {
    /// Quantize only MatMuls with more input features than this (the seed's 16).
    pub min_in_features: usize,
    /// `(in_features, out_features)` pairs left in float.
    pub exclude: Vec<(usize, usize)>,
    pub format: Int8Format,
    /// 7-bit weights ([-64, 64]) instead of [-127, 127], so that ONNX Runtime's u8 x s8 kernels on x86-64
    /// CPUs without VNNI never saturate (see the module docs).
    pub reduce_range: bool,
}

impl Int8Dynamic {
    /// The seed's settings (in > 16, the seed's exclude list) in the format `target` runs best, with the
    /// weight range that format is accurate with on every x86-64 CPU.
    pub fn seed(target: ExecutionProvider) -> Self {
        let format = Int8Format::default_for(target);
        Int8Dynamic {
            min_in_features: 16,
            exclude: crate::passes::SEED_INT8_EXCLUDE.to_vec(),
            format,
            reduce_range: format.default_reduce_range(),
        }
    }

    /// True when a MatMul with a weight of this shape is quantized.
    pub fn eligible(&self, in_features: usize, out_features: usize) -> bool {
        in_features > self.min_in_features && out_features > 0 && !self.exclude.contains(&(in_features, out_features))
    }
}

/// Options of the int8-dynamic pass (a profile's `[int8-dynamic]`): `min_in_features` (default 16),
/// `exclude` (`[in, out]` pairs; absent: the model card's list, else the seed's), `format` (`dynamic` /
/// `qdq`; absent: the one the target runs best), `reduce_range` (7-bit weights; absent: true for the
/// dynamic format, false for qdq).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int8DynamicOptions {
    pub min_in_features: Option<usize>,
    pub exclude: Option<Vec<(usize, usize)>>,
    pub format: Option<Int8Format>,
    pub reduce_range: Option<bool>,
}

impl PassSpec for Int8Dynamic {
    const NAME: &'static str = "int8-dynamic";
    const SUMMARY: &'static str = "dynamic int8 MatMuls with a shape exclude list (`min_in_features`, `exclude`, `format` dynamic|qdq, `reduce_range`)";
    type Options = Int8DynamicOptions;
    fn build(options: Int8DynamicOptions, ctx: &BuildContext) -> Result<Self> {
        let format = options.format.unwrap_or(Int8Format::default_for(ctx.target));
        Ok(Int8Dynamic {
            min_in_features: options.min_in_features.unwrap_or(16),
            exclude: options.exclude.unwrap_or_else(|| ctx.int8_exclude.clone()),
            format,
            reduce_range: options.reduce_range.unwrap_or(format.default_reduce_range()),
        })
    }
}

/// A quantized weight: the names of its int8 values, scales and zero points.
#[derive(Debug, Clone)]
struct QuantizedWeight {
    values: String,
    scales: String,
    zero_points: String,
    /// The DequantizeLinear output (qdq format), once made.
    dequantized: Option<String>,
}

/// The outputs of one DynamicQuantizeLinear.
#[derive(Debug, Clone)]
struct QuantizedActivation {
    values: String,
    scale: String,
    zero_point: String,
}

impl Pass for Int8Dynamic {
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "min_in_features": self.min_in_features,
            "exclude": self.exclude,
            "format": self.format,
            "reduce_range": self.reduce_range,
        })
    }

    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        let index = GraphIndex::new(model);
        let mut patch = Patch::new();
        let mut weights: HashMap<String, Option<QuantizedWeight>> = HashMap::new();
        let mut activations: HashMap<String, QuantizedActivation> = HashMap::new();
        for (i, node) in index.nodes().iter().enumerate() {
            if !is_op(node, "MatMul") || node.input.len() != 2 || node.output.len() != 1 || patch.is_removed(i) {
                continue;
            }
            let (x, w, y) = (&node.input[0], &node.input[1], &node.output[0]);
            if x.is_empty() || w.is_empty() || y.is_empty() {
                continue;
            }
            let Some(tensor) = index.const_tensor(w) else { continue };
            if tensor.data_type() != dtype::FLOAT || tensor.dims.len() != 2 {
                continue;
            }
            let (Ok(k), Ok(n)) = (usize::try_from(tensor.dims[0]), usize::try_from(tensor.dims[1])) else {
                continue;
            };
            if !self.eligible(k, n) {
                continue;
            }
            let quantized = match weights.get(w) {
                Some(q) => q.clone(),
                None => {
                    let bytes = model.tensor_bytes(&tensor)?;
                    let q = quantize_per_column(&bytes, k, n, self.reduce_range)
                        .map(|(values, scales)| add_weight(&index, &mut patch, w, k, n, values, scales));
                    weights.insert(w.clone(), q.clone());
                    q
                }
            };
            let Some(mut q) = quantized else { continue };
            match self.format {
                Int8Format::Dynamic => {
                    let a = activations
                        .entry(x.clone())
                        .or_insert_with(|| add_dynamic_quantize(&index, &mut patch, x))
                        .clone();
                    let scale = patch.fresh_name(&index, &format!("{y}_scale"));
                    let int32 = patch.fresh_name(&index, &format!("{y}_int32"));
                    let float = patch.fresh_name(&index, &format!("{y}_int32_float"));
                    patch.add_node(NodeBuilder::new("Mul").inputs([&a.scale, &q.scales]).outputs([&scale]).build());
                    patch.add_node(
                        NodeBuilder::new("MatMulInteger")
                            .inputs([&a.values, &q.values, &a.zero_point, &q.zero_points])
                            .outputs([&int32])
                            .build(),
                    );
                    patch.add_node(
                        NodeBuilder::new("Cast")
                            .inputs([&int32])
                            .outputs([&float])
                            .attr_int("to", dtype::FLOAT as i64)
                            .build(),
                    );
                    patch.add_node(
                        NodeBuilder::new("Mul").name(node.name()).inputs([&float, &scale]).outputs([y]).build(),
                    );
                    patch.require_opset("", 11);
                }
                Int8Format::Qdq => {
                    let deq = match &q.dequantized {
                        Some(d) => d.clone(),
                        None => {
                            let d = patch.fresh_name(&index, &format!("{w}_dequantized"));
                            let mut dq = NodeBuilder::new("DequantizeLinear")
                                .inputs([&q.values, &q.scales, &q.zero_points])
                                .outputs([&d])
                                .attr_int("axis", 1)
                                .build();
                            dq.set_doc_string(QDQ_LABEL.to_string());
                            patch.add_node(dq);
                            q.dequantized = Some(d.clone());
                            weights.insert(w.clone(), Some(q.clone()));
                            d
                        }
                    };
                    let mut matmul = node.clone();
                    matmul.input[1] = deq;
                    patch.add_node(matmul);
                    patch.require_opset("", 13);
                }
            }
            patch.remove_node(i);
            patch.count_rewrite();
        }
        Ok((!patch.is_empty()).then_some(patch))
    }
}

/// Adds the int8 values, scales and zero points of weight `w` to the patch.
fn add_weight(
    index: &GraphIndex,
    patch: &mut Patch,
    w: &str,
    k: usize,
    n: usize,
    values: Vec<u8>,
    scales: Vec<f32>,
) -> QuantizedWeight {
    let q = QuantizedWeight {
        values: patch.fresh_name(index, &format!("{w}_quantized")),
        scales: patch.fresh_name(index, &format!("{w}_scale")),
        zero_points: patch.fresh_name(index, &format!("{w}_zero_point")),
        dequantized: None,
    };
    patch.add_initializer(tensor_from_raw(&q.values, dtype::INT8, &[k, n], Bytes::from(values)));
    let scale_bytes: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    patch.add_initializer(tensor_from_raw(&q.scales, dtype::FLOAT, &[n], Bytes::from(scale_bytes)));
    patch.add_initializer(tensor_from_raw(&q.zero_points, dtype::INT8, &[n], Bytes::from(vec![0u8; n])));
    q
}

/// Adds `DynamicQuantizeLinear(x)` to the patch.
fn add_dynamic_quantize(index: &GraphIndex, patch: &mut Patch, x: &str) -> QuantizedActivation {
    let a = QuantizedActivation {
        values: patch.fresh_name(index, &format!("{x}_quantized")),
        scale: patch.fresh_name(index, &format!("{x}_scale")),
        zero_point: patch.fresh_name(index, &format!("{x}_zero_point")),
    };
    patch.add_node(
        NodeBuilder::new("DynamicQuantizeLinear").inputs([x]).outputs([&a.values, &a.scale, &a.zero_point]).build(),
    );
    a
}

#[cfg(test)]
pub(crate) mod tests {

    use std::path::{Path, PathBuf};

    use ndarray::{ArrayD, IxDyn};

    use super::*;
    use crate::onnx::tensor::tensor_from_f32;
    use crate::onnx::{ModelProto, NodeProto, make_tensor_value_info};
    use crate::passes::PassManager;
    use crate::passes::testing::{array, count, normal, relative_l2, run};
    use crate::runtime::Runtime;
    use crate::settings::ExecutionProvider;

    fn matmul(x: &str, w: &str, y: &str) -> NodeProto {
        NodeBuilder::new("MatMul").inputs([x, w]).outputs([y]).build()
    }

    /// Four MatMuls: an excluded shape (320x640), an eligible one (64x48), one with in_features = 16, one
    /// whose weight is a graph input; plus a second reader of the eligible weight and activation.
    fn synthetic() -> OnnxModel {
        let mut proto = ModelProto::new();
        proto.set_ir_version(8);
        proto.opset_import.push(crate::onnx::make_opset("", 17));
        let g = proto.graph.mut_or_insert_default();
        for (name, last) in [("a", 320), ("b", 64), ("c", 16)] {
            g.input.push(make_tensor_value_info(name, dtype::FLOAT, Some(&[Some(2), Some(7), Some(last)])));
        }
        g.input.push(make_tensor_value_info("w_in", dtype::FLOAT, Some(&[Some(64), Some(48)])));
        for out in ["ya", "yb", "yb2", "yc", "yd"] {
            g.output.push(make_tensor_value_info(out, dtype::FLOAT, None));
        }
        for (name, shape, seed) in [("wa", [320, 640], 1), ("wb", [64, 48], 2), ("wc", [16, 32], 3)] {
            g.initializer.push(tensor_from_f32(name, &(array(&shape, seed) * 0.1)));
        }
        g.node.push(matmul("a", "wa", "ya"));
        g.node.push(matmul("b", "wb", "yb"));
        g.node.push(matmul("b", "wb", "yb2"));
        g.node.push(matmul("c", "wc", "yc"));
        g.node.push(matmul("b", "w_in", "yd"));
        OnnxModel::from_proto(proto, None)
    }

    fn synthetic_feeds() -> Vec<(String, ArrayD<f32>)> {
        vec![
            ("a".into(), array(&[2, 7, 320], 10)),
            ("b".into(), array(&[2, 7, 64], 11)),
            ("c".into(), array(&[2, 7, 16], 12)),
            ("w_in".into(), array(&[64, 48], 13)),
        ]
    }

    fn rewrite(pass: Int8Dynamic, model: &mut OnnxModel) -> crate::manifest::PassRecord {
        let records = PassManager::new().with(pass).run(model, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
        records.into_iter().next().unwrap()
    }

    #[test]
    fn quantizes_exactly_the_eligible_matmuls() {
        let dir = tempfile::tempdir().unwrap();
        let original = synthetic();
        let want = run(&original, dir.path(), "original", &synthetic_feeds());

        // The seed's list excludes 320x640: only the two readers of wb are quantized, sharing one
        // DynamicQuantizeLinear and one int8 weight.
        let mut seed = original.clone();
        let record = rewrite(Int8Dynamic::seed(ExecutionProvider::Cpu), &mut seed);
        assert_eq!((record.rewrites, record.rounds), (2, 1));
        assert_eq!(count(&seed, "MatMulInteger"), 2);
        assert_eq!(count(&seed, "DynamicQuantizeLinear"), 1);
        assert_eq!(count(&seed, "MatMul"), 3);
        assert_eq!(seed.graph().initializer.iter().filter(|t| t.data_type() == dtype::INT8).count(), 2);
        let wq = seed.graph().initializer.iter().find(|t| t.name() == "wb_quantized").unwrap();
        assert_eq!(wq.dims, [64, 48]);
        let ws = seed.graph().initializer.iter().find(|t| t.name() == "wb_scale").unwrap();
        assert_eq!((ws.data_type(), ws.dims.as_slice()), (dtype::FLOAT, &[48i64][..]));

        // With no exclude list, 320x640 goes too; in = 16 and the non-constant weight never do.
        let mut all = original.clone();
        let pass = Int8Dynamic { exclude: vec![], ..Int8Dynamic::seed(ExecutionProvider::Cpu) };
        assert_eq!(rewrite(pass.clone(), &mut all).rewrites, 3);
        assert_eq!(
            (count(&all, "MatMulInteger"), count(&all, "MatMul"), count(&all, "DynamicQuantizeLinear")),
            (3, 2, 2)
        );
        let got = run(&all, dir.path(), "all", &synthetic_feeds());
        for (name, w) in &want {
            let err = relative_l2(&got[name], w);
            let limit = if name == "yc" || name == "yd" { 0.0 } else { 2e-2 };
            assert!(err <= limit, "{name}: relative L2 {err:.2e}");
        }
        // Idempotent: a second run finds nothing (the MatMulIntegers are not MatMuls).
        assert!(pass.run(&all, &PassContext::new(ExecutionProvider::Cpu)).unwrap().is_none());

        // min_in_features is a strict bound: 16 is excluded by default, included with 15.
        let mut low = original.clone();
        let pass = Int8Dynamic { min_in_features: 15, exclude: vec![], ..Int8Dynamic::seed(ExecutionProvider::Cpu) };
        assert_eq!(rewrite(pass, &mut low).rewrites, 4);
    }

    #[test]
    fn qdq_is_weight_only_and_labelled() {
        let dir = tempfile::tempdir().unwrap();
        let original = synthetic();
        let want = run(&original, dir.path(), "original", &synthetic_feeds());
        let mut model = original.clone();
        let pass = from_options("", ExecutionProvider::OpenVino).unwrap();
        assert_eq!(pass.format, Int8Format::Qdq);
        assert_eq!(rewrite(pass.clone(), &mut model).rewrites, 2);
        assert_eq!((count(&model, "DequantizeLinear"), count(&model, "MatMul")), (1, 5));
        assert_eq!(count(&model, "QuantizeLinear") + count(&model, "DynamicQuantizeLinear"), 0);
        let dq = model.graph().node.iter().find(|n| n.op_type() == "DequantizeLinear").unwrap();
        assert_eq!(dq.doc_string(), QDQ_LABEL);
        assert_eq!(crate::onnx::attr_int(dq, "axis"), Some(1));
        let got = run(&model, dir.path(), "qdq", &synthetic_feeds());
        for (name, w) in &want {
            let err = relative_l2(&got[name], w);
            assert!(err <= 1e-2, "{name}: relative L2 {err:.2e}");
        }
        assert!(pass.run(&model, &PassContext::new(ExecutionProvider::OpenVino)).unwrap().is_none());
    }

    #[test]
    fn odd_matmuls_are_left_alone() {
        let mut model = synthetic();
        let g = model.graph_mut();
        g.initializer.push(tensor_from_f32("w3d", &array(&[2, 64, 48], 4)));
        let mut nan = array(&[64, 48], 5);
        nan[[3, 4]] = f32::NAN;
        g.initializer.push(tensor_from_f32("wnan", &nan));
        g.node.push(NodeBuilder::new("MatMul").inputs(["b"]).outputs(["one_input"]).build());
        g.node.push(matmul("b", "w3d", "batched"));
        g.node.push(matmul("b", "wnan", "with_nan"));
        g.node.push(matmul("", "wb", "no_activation"));
        for out in ["one_input", "batched", "with_nan", "no_activation"] {
            g.output.push(make_tensor_value_info(out, dtype::FLOAT, None));
        }
        let pass = Int8Dynamic { exclude: vec![], ..Int8Dynamic::seed(ExecutionProvider::Cpu) };
        // Only the three well-formed eligible MatMuls of `synthetic` are quantized.
        assert_eq!(rewrite(pass, &mut model).rewrites, 3);
    }

    #[test]
    fn per_column_scales_follow_the_definition() {
        // [3, 2]: column 0 = 1, -2, 0.5 (max 2), column 1 all zeros.
        let w = [1.0f32, 0.0, -2.0, 0.0, 0.5, 0.0];
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (q, s) = quantize_per_column(&bytes, 3, 2, false).unwrap();
        assert_eq!(s, [2.0 / 127.0, 1.0]);
        let q: Vec<i8> = q.into_iter().map(|b| b as i8).collect();
        // 63.5 rounds to the even 64, as numpy (and ONNX Runtime's quantizer) do.
        assert_eq!(q, [64, 0, -127, 0, 32, 0]);
        // Reduced range: [-64, 64], ONNX Runtime's reduce_range for symmetric int8.
        let (q, s) = quantize_per_column(&bytes, 3, 2, true).unwrap();
        assert_eq!(s, [2.0 / 64.0, 1.0]);
        assert_eq!(q.into_iter().map(|b| b as i8).collect::<Vec<_>>(), [32, 0, -64, 0, 16, 0]);
        let nan: Vec<u8> = [1.0f32, f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(quantize_per_column(&nan, 1, 2, false).is_none());
        assert!(quantize_per_column(&bytes, 2, 2, false).is_none(), "byte count must match the shape");
    }

    fn from_options(text: &str, target: ExecutionProvider) -> Result<Int8Dynamic> {
        let ctx = BuildContext::new(target, crate::settings::Precision::Fp32);
        crate::passes::options::build_from_str::<Int8Dynamic>(text, &ctx)
    }

    #[test]
    fn options_are_checked() {
        let p = from_options("min_in_features = 32\nexclude = [[320, 640]]\nformat = \"qdq\"", ExecutionProvider::Cpu)
            .unwrap();
        assert_eq!((p.min_in_features, p.exclude.as_slice(), p.format), (32, &[(320, 640)][..], Int8Format::Qdq));
        let p = from_options("", ExecutionProvider::Cuda).unwrap();
        assert_eq!((p.exclude.len(), p.format, p.min_in_features, p.reduce_range), (19, Int8Format::Dynamic, 16, true));
        let p = from_options("", ExecutionProvider::TensorRt).unwrap();
        assert_eq!((p.format, p.reduce_range), (Int8Format::Qdq, false));
        // reduce_range follows the format unless set; the manifest records it.
        assert!(from_options("", ExecutionProvider::Cpu).unwrap().reduce_range);
        assert!(!from_options("format = \"qdq\"", ExecutionProvider::Cpu).unwrap().reduce_range);
        let p = from_options("reduce_range = false", ExecutionProvider::Cpu).unwrap();
        assert_eq!((p.reduce_range, &p.settings()["reduce_range"]), (false, &serde_json::json!(false)));
        assert!(from_options("reduce_range = true", ExecutionProvider::OpenVino).unwrap().reduce_range);
        assert!(from_options("exclude = []", ExecutionProvider::Cpu).unwrap().exclude.is_empty());
        for (text, expected) in [
            ("exclude = [[1280, 640], [3]]", "key `exclude[1]`"),
            ("exclude = 5", "key `exclude`: invalid type"),
            ("format = \"int4\"", "unknown variant `int4`"),
            ("format = 8", "key `format`: invalid type"),
            ("min_in_features = -1", "key `min_in_features`"),
            ("min_features = 16", "key `min_features`: unknown field"),
            ("reduce_range = \"yes\"", "key `reduce_range`: invalid type"),
        ] {
            let err = from_options(text, ExecutionProvider::Cpu).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.starts_with("[int8-dynamic]"), "{err}");
        }
    }

    /// The largest magnitude of the int8 initializers of `model` (its quantized weights).
    pub(crate) fn largest_int8(model: &OnnxModel) -> i32 {
        let g = model.graph();
        let int8 = g.initializer.iter().filter(|t| t.data_type() == dtype::INT8);
        int8.flat_map(|t| model.tensor_bytes(t).unwrap().iter().map(|&b| (b as i8 as i32).abs()).collect::<Vec<_>>())
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn tiny_unet(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name).join("unet/model.onnx")
    }

    /// Inputs for a tiny UNet: batch 2, 16x16 latents, 7 tokens, timestep 999, SDXL's time ids.
    pub(crate) fn unet_feeds(path: &Path) -> Vec<(String, ArrayD<f32>)> {
        let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
        let model = runtime.load(path).unwrap();
        model
            .inputs()
            .iter()
            .enumerate()
            .map(|(k, spec)| {
                let rank = spec.dims.len();
                let shape: Vec<usize> = spec
                    .dims
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match (d, i, rank) {
                        (d, _, _) if d > 0 => d as usize,
                        (_, 0, _) => 2,
                        (_, _, 4) => 16,
                        _ => 7,
                    })
                    .collect();
                let n: usize = shape.iter().product();
                let values = match spec.name.as_str() {
                    "timestep" => vec![999.0; n],
                    "time_ids" => [64.0, 64.0, 0.0, 0.0, 64.0, 64.0].iter().copied().cycle().take(n).collect(),
                    _ => normal(n, 100 + k as u64),
                };
                (spec.name.clone(), ArrayD::from_shape_vec(IxDyn(&shape), values).unwrap())
            })
            .collect()
    }

    #[test]
    fn tiny_unets_quantize_every_eligible_matmul() {
        let dir = tempfile::tempdir().unwrap();
        for (name, expected) in [("tiny-sd", 11), ("tiny-sd-dynamo", 11), ("tiny-sdxl", 72), ("tiny-sdxl-dynamo", 72)] {
            let path = tiny_unet(name);
            let original = OnnxModel::load(&path).unwrap();
            let feeds = unet_feeds(&path);
            let want = run(&original, dir.path(), &format!("{name}-fp32"), &feeds);
            let matmuls = count(&original, "MatMul");
            for format in [Int8Format::Dynamic, Int8Format::Qdq] {
                let mut model = original.clone();
                let pass = Int8Dynamic {
                    min_in_features: 16,
                    exclude: vec![],
                    format,
                    reduce_range: format.default_reduce_range(),
                };
                let record = rewrite(pass.clone(), &mut model);
                assert_eq!((record.rewrites, record.rounds), (expected, 1), "{name} {format:?}");
                // 7-bit weights in the dynamic format (what ONNX Runtime's u8 x s8 kernels take without
                // saturating on any x86-64 CPU), 8-bit in qdq.
                let widest = if format == Int8Format::Dynamic { 64 } else { 127 };
                assert_eq!(largest_int8(&model), widest, "{name} {format:?}");
                match format {
                    Int8Format::Dynamic => {
                        assert_eq!(count(&model, "MatMulInteger"), expected, "{name}");
                        assert_eq!(count(&model, "MatMul"), matmuls - expected, "{name}");
                    }
                    Int8Format::Qdq => {
                        assert_eq!(count(&model, "DequantizeLinear"), expected, "{name}");
                        assert_eq!(count(&model, "MatMul"), matmuls, "{name}");
                    }
                }
                // Every MatMul left in float has a non-constant, small or float16 weight.
                let index = GraphIndex::new(&model);
                for n in model.graph().node.iter().filter(|n| is_op(n, "MatMul")) {
                    if let Some(t) = index.const_tensor(&n.input[1]) {
                        assert!(t.dims.len() != 2 || t.dims[0] <= 16, "{name}: {} was left in float", n.name());
                    }
                }
                let got = run(&model, dir.path(), &format!("{name}-{}", format.name()), &feeds);
                for (out, w) in &want {
                    let err = relative_l2(&got[out], w);
                    eprintln!("{name} int8 {}: {out} relative L2 {err:.2e}", format.name());
                    assert!(err <= 5e-2, "{name} {format:?}: {out} relative L2 {err:.2e} > 5e-2");
                }
                assert!(
                    pass.run(&model, &PassContext::new(ExecutionProvider::Cpu)).unwrap().is_none(),
                    "{name}: not idempotent"
                );
            }
            // The seed's list names no tiny shape: the same MatMuls are quantized.
            let mut seed = original.clone();
            assert_eq!(rewrite(Int8Dynamic::seed(ExecutionProvider::Cpu), &mut seed).rewrites, expected);
        }
    }
}
