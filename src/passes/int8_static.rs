//! Calibrated static int8 in QDQ form for Conv and MatMul with constant weights: what OpenVINO (and
//! TensorRT) run as int8 kernels, convolutions included. Activation scales come from calibration: the graph
//! as it stands when this pass runs is executed on recorded UNet inputs with each activation to quantize as
//! an output (`dfast convert --calibrate N`: a step of convert's plan, which hands the ranges to the pass
//! with [`Int8Static::with_ranges`]; the pass itself runs nothing).
//!
//! ```text
//! Which nodes: Conv with a constant float32 weight [out, in/groups, kh, kw], MatMul with a constant float32
//! weight [in, out]; in > min_in_features and out > min_in_features (16: the UNet's first and last convs,
//! 4 channels, stay float), (in, out) not in `exclude`, and a calibrated range for the activation. MatMuls
//! on 2-D activations (the time embedding's linears: a few thousand values per call, nothing to gain, only
//! error) stay float.
//!
//!   x ──Conv(W)──> y      becomes
//!
//!   x ──QuantizeLinear(sx, zx)──DequantizeLinear(sx, zx)──> x'
//!   Wq (int8), Ws (float [out]), Wz (int8 zeros [out]) ──DequantizeLinear(axis 0; MatMul: axis 1)──> W'
//!   x', W' (, bias) ──Conv──> y
//!
//! activation "u8" (default): asymmetric uint8, sx = (hi - lo) / 255, zx = round(-lo / sx), lo <= 0 <= hi;
//! activation "s8": symmetric int8, sx = max(|lo|, |hi|) / 127, zx = 0 (what TensorRT accepts).
//! Weights: symmetric int8 per output channel, Ws = max|W[c]| / 127 (/ 64 with reduce_range).
//! ```
//!
//! `reduce_range` (default: true for the cpu EP, false for openvino and tensorrt): 7-bit weights in
//! [-64, 64]. ONNX Runtime's CPU EP turns the Q/DQ pairs around a MatMul into an integer MatMul of uint8
//! activations and int8 weights, which saturates an int16 on x86-64 CPUs without VNNI with full-range weights
//! (see `int8_dynamic`'s docs). Calibrated on the test's own inputs, relative L2 of `out_sample` against
//! fp32 on the CPU EP (AMD EPYC Zen 2; "exact" as in `int8_dynamic`): tiny-sd 2.25e-2 with 8-bit weights,
//! 1.13e-2 exact, 1.43e-2 with 7-bit; tiny-sdxl 1.59e-1, 1.50e-2 and 1.90e-2. OpenVINO and TensorRT run
//! their own int8 kernels; their default stays 8-bit.
//!
//! One Q/DQ pair serves every quantized node reading the same activation; a weight read twice is quantized
//! once. Nodes whose inputs already come from a DequantizeLinear are left alone, so the pass reaches its
//! fixed point after one round.

use std::collections::HashMap;

use bytes::Bytes;

use super::layout::permute_bytes;
use super::quantize::quantize_per_column;
use super::{BuildContext, Pass, PassContext, PassSpec};
use crate::onnx::tensor::tensor_from_raw;
use crate::onnx::{GraphIndex, NodeBuilder, OnnxModel, Patch, dtype, is_op};
use crate::settings::ExecutionProvider;
use crate::{Error, Result};

/// Activation ranges (min, max) by tensor name.
pub type Ranges = HashMap<String, (f32, f32)>;

/// How activations are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationType {
    /// Asymmetric uint8.
    U8,
    /// Symmetric int8 (zero point 0).
    S8,
}

/// The ops the pass quantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum QuantOp {
    Conv,
    MatMul,
}

impl QuantOp {
    fn op_type(self) -> &'static str {
        match self {
            QuantOp::Conv => "Conv",
            QuantOp::MatMul => "MatMul",
        }
    }
}

/// Options of the int8-static pass (a profile's `[int8-static]`): `min_in_features` (default 16), `exclude`
/// (`[in, out]` pairs, default none), `ops` (`["Conv", "MatMul"]`), `activation` (`u8` default, `s8`),
/// `reduce_range` (7-bit weights; default true for the cpu EP, false for the others).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int8StaticOptions {
    pub min_in_features: Option<usize>,
    pub exclude: Option<Vec<(usize, usize)>>,
    pub ops: Option<Vec<QuantOp>>,
    pub activation: Option<ActivationType>,
    pub reduce_range: Option<bool>,
}

/// The int8-static pass (see the module docs).
#[derive(Debug, Clone)]
pub struct Int8Static {
    pub min_in_features: usize,
    pub exclude: Vec<(usize, usize)>,
    pub ops: Vec<QuantOp>,
    pub activation: ActivationType,
    /// 7-bit weights ([-64, 64]): what ONNX Runtime's CPU EP needs to stay accurate on x86-64 without VNNI
    /// (see the module docs).
    pub reduce_range: bool,
    /// Calibrated ranges of the activations ([`Int8Static::targets`]); the pass refuses to run without.
    ranges: Option<Ranges>,
}

impl PassSpec for Int8Static {
    const NAME: &'static str = "int8-static";
    const SUMMARY: &'static str = "calibrated static int8 (QDQ) of convs and linears (`--calibrate`; `ops`, `activation`, `exclude`, `reduce_range`)";
    type Options = Int8StaticOptions;
    fn build(options: Int8StaticOptions, ctx: &BuildContext) -> Result<Self> {
        Ok(Int8Static {
            min_in_features: options.min_in_features.unwrap_or(16),
            exclude: options.exclude.unwrap_or_default(),
            ops: options.ops.unwrap_or(vec![QuantOp::Conv, QuantOp::MatMul]),
            activation: options.activation.unwrap_or(ActivationType::U8),
            reduce_range: options.reduce_range.unwrap_or(ctx.target == ExecutionProvider::Cpu),
            ranges: None,
        })
    }
}

/// One candidate: node index, activation input, weight, weight shape as (out, rest) and its axis.
struct Candidate {
    node: usize,
    x: String,
    w: String,
}

impl Int8Static {
    /// The pass with the calibrated ranges of its activations.
    pub fn with_ranges(mut self, ranges: Ranges) -> Self {
        self.ranges = Some(ranges);
        self
    }

    fn eligible(&self, in_features: usize, out_features: usize) -> bool {
        in_features > self.min_in_features
            && out_features > self.min_in_features
            && !self.exclude.contains(&(in_features, out_features))
    }

    /// The nodes this pass would quantize, given ranges for their activations.
    fn candidates(&self, index: &GraphIndex) -> Vec<Candidate> {
        let facts = crate::onnx::infer::Inference::run(index);
        let mut out = Vec::new();
        for (i, node) in index.nodes().iter().enumerate() {
            let op = node.op_type();
            if !self.ops.iter().any(|o| o.op_type() == op) || node.input.len() < 2 || node.output.len() != 1 {
                continue;
            }
            let (x, w) = (&node.input[0], &node.input[1]);
            if x.is_empty() || index.producer_node(x).is_some_and(|p| is_op(p, "DequantizeLinear")) {
                continue;
            }
            let Some(tensor) = index.const_tensor(w) else { continue };
            let dims: Vec<usize> = tensor.dims.iter().filter_map(|&d| usize::try_from(d).ok()).collect();
            let shape_ok = match op {
                "Conv" => dims.len() == 4,
                _ => dims.len() == 2 && node.input.len() == 2,
            };
            if tensor.data_type() != dtype::FLOAT || !shape_ok || dims.len() != tensor.dims.len() {
                continue;
            }
            let (k, n) = if op == "Conv" { (dims[1] * dims[2] * dims[3], dims[0]) } else { (dims[0], dims[1]) };
            let in_channels = if op == "Conv" { dims[1] } else { k };
            if !self.eligible(in_channels, n) {
                continue;
            }
            if op == "MatMul" && facts.facts(x).and_then(|f| f.rank()) == Some(2) {
                continue;
            }
            out.push(Candidate { node: i, x: x.clone(), w: w.clone() });
        }
        out
    }

    /// The activation tensors to calibrate in `model`.
    pub fn targets(&self, model: &OnnxModel) -> Vec<String> {
        let index = GraphIndex::new(model);
        let mut names: Vec<String> = self.candidates(&index).into_iter().map(|c| c.x).collect();
        names.sort();
        names.dedup();
        names
    }

    /// (scale, zero point bytes, zero point type) of an activation range.
    fn activation_params(&self, (lo, hi): (f32, f32)) -> (f32, u8, i32) {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        match self.activation {
            ActivationType::U8 => {
                let s = (hi - lo) / 255.0;
                let s = if s.is_normal() { s } else { 1.0 };
                let z = (-lo / s).round().clamp(0.0, 255.0) as u8;
                (s, z, dtype::UINT8)
            }
            ActivationType::S8 => {
                let s = lo.abs().max(hi.abs()) / 127.0;
                (if s.is_normal() { s } else { 1.0 }, 0, dtype::INT8)
            }
        }
    }
}

impl Pass for Int8Static {
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "min_in_features": self.min_in_features,
            "exclude": self.exclude,
            "ops": self.ops,
            "activation": self.activation,
            "reduce_range": self.reduce_range,
        })
    }

    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        let index = GraphIndex::new(model);
        let candidates = self.candidates(&index);
        if candidates.is_empty() {
            return Ok(None);
        }
        let ranges = self.ranges.as_ref().ok_or_else(|| {
            Error::bad_input("int8-static needs calibrated ranges: run `dfast convert` with `--calibrate N`")
        })?;

        let mut patch = Patch::new();
        let mut activations: HashMap<String, String> = HashMap::new();
        let mut weights: HashMap<String, Option<String>> = HashMap::new();
        for c in candidates {
            let Some(&range) = ranges.get(&c.x) else { continue };
            if !(range.0.is_finite() && range.1.is_finite()) {
                continue;
            }
            let node = &index.nodes()[c.node];
            let conv = is_op(node, "Conv");
            let w_dq = match weights.get(&c.w) {
                Some(d) => d.clone(),
                None => {
                    let d = self.add_weight(model, &index, &mut patch, &c.w, conv)?;
                    weights.insert(c.w.clone(), d.clone());
                    d
                }
            };
            let Some(w_dq) = w_dq else { continue };
            let x_dq = activations
                .entry(c.x.clone())
                .or_insert_with(|| {
                    let (s, z, zt) = self.activation_params(range);
                    let scale = patch.fresh_name(&index, &format!("{}_scale", c.x));
                    let zero = patch.fresh_name(&index, &format!("{}_zero_point", c.x));
                    let q = patch.fresh_name(&index, &format!("{}_quantized", c.x));
                    let dq = patch.fresh_name(&index, &format!("{}_dequantized", c.x));
                    patch.add_initializer(tensor_from_raw(
                        &scale,
                        dtype::FLOAT,
                        &[],
                        Bytes::from(s.to_le_bytes().to_vec()),
                    ));
                    patch.add_initializer(tensor_from_raw(&zero, zt, &[], Bytes::from(vec![z])));
                    patch.add_node(
                        NodeBuilder::new("QuantizeLinear").inputs([&c.x, &scale, &zero]).outputs([&q]).build(),
                    );
                    patch.add_node(
                        NodeBuilder::new("DequantizeLinear").inputs([&q, &scale, &zero]).outputs([&dq]).build(),
                    );
                    dq
                })
                .clone();
            let mut rewritten = node.clone();
            rewritten.input[0] = x_dq;
            rewritten.input[1] = w_dq;
            patch.add_node(rewritten);
            patch.remove_node(c.node);
            patch.count_rewrite();
        }
        patch.require_opset("", 13);
        Ok((patch.rewrites() > 0).then_some(patch))
    }
}

impl Int8Static {
    /// Adds the int8 weight with its DequantizeLinear; None when the weight cannot be quantized.
    fn add_weight(
        &self,
        model: &OnnxModel,
        index: &GraphIndex,
        patch: &mut Patch,
        w: &str,
        conv: bool,
    ) -> Result<Option<String>> {
        let tensor = index.const_tensor(w).expect("a candidate's weight is constant");
        let dims: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
        let bytes = model.tensor_bytes(&tensor)?;
        // Per output channel: rows of [out, rest] for Conv, columns of [in, out] for MatMul.
        let (quantized, channels, axis) = if conv {
            let rest = dims[1..].iter().product::<usize>();
            let transposed = permute_bytes(&bytes, &[dims[0], rest], &[1, 0], 4).0;
            (quantize_per_column(&transposed, rest, dims[0], self.reduce_range), dims[0], 0)
        } else {
            (quantize_per_column(&bytes, dims[0], dims[1], self.reduce_range), dims[1], 1)
        };
        let Some((values, scales)) = quantized else { return Ok(None) };
        let values =
            if conv { permute_bytes(&values, &[dims[1..].iter().product(), dims[0]], &[1, 0], 1).0 } else { values };
        let names = [
            patch.fresh_name(index, &format!("{w}_quantized")),
            patch.fresh_name(index, &format!("{w}_scale")),
            patch.fresh_name(index, &format!("{w}_zero_point")),
            patch.fresh_name(index, &format!("{w}_dequantized")),
        ];
        patch.add_initializer(tensor_from_raw(&names[0], dtype::INT8, &dims, Bytes::from(values)));
        let scale_bytes: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        patch.add_initializer(tensor_from_raw(&names[1], dtype::FLOAT, &[channels], Bytes::from(scale_bytes)));
        patch.add_initializer(tensor_from_raw(&names[2], dtype::INT8, &[channels], Bytes::from(vec![0u8; channels])));
        patch.add_node(
            NodeBuilder::new("DequantizeLinear")
                .inputs([&names[0], &names[1], &names[2]])
                .outputs([&names[3]])
                .attr_int("axis", axis)
                .build(),
        );
        Ok(Some(names[3].clone()))
    }
}

#[cfg(test)]
mod tests {
    use ndarray::ArrayD;

    use super::*;
    use crate::passes::PassManager;
    use crate::passes::int8_dynamic::tests::{tiny_unet, unet_feeds};
    use crate::passes::testing::relative_l2;
    use crate::passes::testing::{count, run};
    use crate::runtime::calibration;
    use crate::runtime::{HostTensor, Runtime};
    use crate::settings::ExecutionProvider;

    /// The pass as a conversion for the CPU EP builds it, calibrated on `feeds`.
    fn calibrated(model: &OnnxModel, feeds: &[(String, ArrayD<f32>)]) -> Int8Static {
        let pass = from_options_for("", ExecutionProvider::Cpu).unwrap();
        assert!(pass.reduce_range, "a conversion for the cpu EP has 7-bit weights by default");
        let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
        let samples = vec![feeds.iter().map(|(n, a)| (n.clone(), HostTensor::F32(a.clone()))).collect()];
        let ranges = calibration::activation_ranges(&runtime, model, &pass.targets(model), &samples, 100.0).unwrap();
        pass.with_ranges(ranges)
    }

    /// Checked on ONNX Runtime's CPU EP, so converted as for it (7-bit weights); OpenVINO runs int8-static's
    /// default conversion in `tests/execution_providers.rs`.
    #[test]
    fn tiny_unets_become_calibrated_qdq_int8_close_to_fp32() {
        let dir = tempfile::tempdir().unwrap();
        // Convs with more than 16 channels in and out, and linears on 3-D activations with more than 16
        // features in and out: tiny-sd 14 + 8, tiny-sdxl 12 + 72.
        for (name, expected) in [("tiny-sd", 22), ("tiny-sdxl", 84)] {
            let path = tiny_unet(name);
            let original = OnnxModel::load(&path).unwrap();
            let feeds = unet_feeds(&path);
            let want = run(&original, dir.path(), &format!("{name}-fp32"), &feeds);
            let pass = calibrated(&original, &feeds);
            let activations = pass.targets(&original).len();
            let mut model = original.clone();
            let manager = PassManager::new().with(pass);
            let record = &manager.run(&mut model, &PassContext::new(ExecutionProvider::Cpu)).unwrap()[0];
            eprintln!("{name}: {} rewrites, {activations} activations", record.rewrites);
            assert_eq!((record.rewrites, record.rounds), (expected, 1), "{name}");
            assert_eq!(count(&model, "QuantizeLinear"), activations, "{name}: one Q/DQ pair per activation");
            assert!(count(&model, "DequantizeLinear") >= activations + expected - 4, "{name}: weights dequantized");
            // The first and last convs (4 channels) stay float, everything else reads int8 weights.
            let index = GraphIndex::new(&model);
            for n in model.graph().node.iter().filter(|n| is_op(n, "Conv")) {
                let from_dq = index.producer_node(&n.input[1]).is_some_and(|p| is_op(p, "DequantizeLinear"));
                let w = index.const_tensor(&n.input[1]);
                let small = w.is_some_and(|t| t.dims[0] <= 16 || t.dims[1] <= 16);
                assert!(from_dq || small, "{name}: conv {} left in float", n.name());
            }
            let got = run(&model, dir.path(), &format!("{name}-int8"), &feeds);
            for (out, w) in &want {
                let err = relative_l2(&got[out], w);
                eprintln!("{name} int8-static: {out} relative L2 {err:.2e}");
                assert!(err <= 5e-2 && err > 1e-5, "{name}: {out} relative L2 {err:.2e}");
            }
            // Idempotent: a second run finds nothing left to quantize.
            let again = manager.run(&mut model, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
            assert_eq!(again[0].rounds, 0, "{name}: not idempotent");
        }
    }

    fn from_options(text: &str) -> Result<Int8Static> {
        from_options_for(text, ExecutionProvider::OpenVino)
    }

    fn from_options_for(text: &str, target: ExecutionProvider) -> Result<Int8Static> {
        let ctx = BuildContext::new(target, crate::settings::Precision::Fp32);
        crate::passes::options::build_from_str::<Int8Static>(text, &ctx)
    }

    #[test]
    fn weights_are_7_bit_for_the_cpu_ep_and_8_bit_elsewhere() {
        let default = |target| from_options_for("", target).unwrap().reduce_range;
        assert!(default(ExecutionProvider::Cpu));
        assert!(!default(ExecutionProvider::OpenVino) && !default(ExecutionProvider::TensorRt));
        assert!(from_options("reduce_range = true").unwrap().reduce_range);
        assert!(!from_options_for("reduce_range = false", ExecutionProvider::Cpu).unwrap().reduce_range);
        let err = from_options("reduce_range = 7").unwrap_err().to_string();
        assert!(err.contains("key `reduce_range`: invalid type"), "{err}");
        // The range the quantized weights span, and the setting the manifest records.
        let model = OnnxModel::load(tiny_unet("tiny-sd")).unwrap();
        let feeds = unet_feeds(&tiny_unet("tiny-sd"));
        for reduce_range in [false, true] {
            let mut pass = calibrated(&model, &feeds);
            pass.reduce_range = reduce_range;
            assert_eq!(pass.settings()["reduce_range"], reduce_range);
            let mut quantized = model.clone();
            PassManager::new().with(pass).run(&mut quantized, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
            let want = if reduce_range { 64 } else { 127 };
            assert_eq!(crate::passes::int8_dynamic::tests::largest_int8(&quantized), want, "{reduce_range}");
        }
    }

    #[test]
    fn without_calibration_or_with_bad_options_it_says_so() {
        let model = OnnxModel::load(tiny_unet("tiny-sd")).unwrap();
        let pass = from_options("").unwrap();
        let err = pass.run(&model, &PassContext::new(ExecutionProvider::OpenVino)).unwrap_err().to_string();
        assert!(err.contains("--calibrate"), "{err}");
        for (text, expected) in [
            ("activation = \"u4\"", "unknown variant `u4`, expected `u8` or `s8`"),
            ("ops = [\"Gemm\"]", "unknown variant `Gemm`, expected `Conv` or `MatMul`"),
            ("min_in_features = -1", "key `min_in_features`"),
            ("percentile = 99", "key `percentile`: unknown field"),
        ] {
            let err = from_options(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn symmetric_and_asymmetric_activation_scales() {
        let mut pass = from_options("").unwrap();
        let (s, z, t) = pass.activation_params((-1.0, 3.0));
        assert!((s - 4.0 / 255.0).abs() < 1e-7 && z == 64 && t == dtype::UINT8, "{s} {z}");
        // A range that excludes zero is widened to include it.
        let (s, z, _) = pass.activation_params((0.5, 2.0));
        assert!((s - 2.0 / 255.0).abs() < 1e-7 && z == 0);
        pass.activation = ActivationType::S8;
        let (s, z, t) = pass.activation_params((-1.0, 3.0));
        assert!((s - 3.0 / 127.0).abs() < 1e-7 && z == 0 && t == dtype::INT8);
    }
}
