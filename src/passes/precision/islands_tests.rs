//! Tests of the range islands: a small decoder whose weights make one activation overflow float16, and the
//! tiny pipelines' real VAE decoders, each against the float32 graph.

use std::collections::{BTreeSet, HashMap};

use ndarray::ArrayD;

use super::plan::current_types;
use super::*;
use crate::onnx::tensor::tensor_from_f32;
use crate::onnx::{GraphIndex, OnnxModel};
use crate::onnx::{ModelProto, NodeBuilder, dtype, make_tensor_value_info};
use crate::passes::PassManager;
use crate::passes::testing::{array, relative_l2, run};
use crate::passes::{Pass, PassContext};
use crate::runtime::calibration::{Ranges, activation_ranges};
use crate::runtime::{HostTensor, Runtime};
use crate::settings::ExecutionProvider;

/// A decoder in miniature whose normalization after the overflow is a LayerNormalization over channels
/// (as in transformer-style decoders; ONNX Runtime's CPU EP has a float16 kernel for it, so the overflow
/// happens there too, where Conv and GroupNorm would fall back to float32 as a whole):
///
/// ```text
///   latent [1,4,8,8] ─Conv(4→16)─SiLU─Conv(16→16, weights · 2000)─> h (|h| ≈ 6e5)
///     ─Transpose(NHWC)─LayerNorm(16)─Transpose(NCHW)─SiLU─Resize ×2─Conv(16→3)─> sample
/// ```
///
/// The weights of the second Conv stay below 2e4 (they fit float16); its output does not. The
/// normalization brings it back: `sample` is of order 1.
fn overflowing_decoder() -> OnnxModel {
    let mut proto = ModelProto::new();
    proto.set_ir_version(9);
    proto.opset_import.push(crate::onnx::make_opset("", 17));
    let g = proto.graph.mut_or_insert_default();
    g.input.push(make_tensor_value_info("latent_sample", dtype::FLOAT, Some(&[Some(1), Some(4), Some(8), Some(8)])));
    g.output.push(make_tensor_value_info("sample", dtype::FLOAT, None));
    let f = |name: &str, a: ArrayD<f32>| tensor_from_f32(name, &a);
    g.initializer.push(f("w_in", array(&[16, 4, 3, 3], 1) * 0.3));
    g.initializer.push(f("b_in", array(&[16], 2) * 0.1));
    g.initializer.push(f("w_up", array(&[16, 16, 3, 3], 3) * 2000.0));
    g.initializer.push(f("b_up", array(&[16], 4)));
    g.initializer.push(f("gamma", array(&[16], 5) * 0.2 + 1.0));
    g.initializer.push(f("beta", array(&[16], 6) * 0.1));
    g.initializer.push(f("w_out", array(&[3, 16, 3, 3], 7) * 0.1));
    g.initializer.push(f("scales", ndarray::arr1(&[1.0f32, 1.0, 2.0, 2.0]).into_dyn()));
    let b = |op: &str, name: &str| NodeBuilder::new(op).name(name);
    let conv = |name: &str, ins: [&str; 3], out: &str| {
        let ins: Vec<&str> = ins.into_iter().filter(|s| !s.is_empty()).collect();
        b("Conv", name).inputs(ins).outputs([out]).attr_ints("pads", &[1, 1, 1, 1]).build()
    };
    g.node.push(conv("conv_in", ["latent_sample", "w_in", "b_in"], "c0"));
    g.node.push(b("Sigmoid", "sig0").inputs(["c0"]).outputs(["s0"]).build());
    g.node.push(b("Mul", "silu0").inputs(["c0", "s0"]).outputs(["a0"]).build());
    g.node.push(conv("conv_up", ["a0", "w_up", "b_up"], "h"));
    g.node.push(b("Transpose", "to_nhwc").inputs(["h"]).outputs(["ht"]).attr_ints("perm", &[0, 2, 3, 1]).build());
    g.node.push(
        b("LayerNormalization", "norm")
            .inputs(["ht", "gamma", "beta"])
            .outputs(["nt"])
            .attr_int("axis", -1)
            .attr_float("epsilon", 1e-6)
            .build(),
    );
    g.node.push(b("Transpose", "to_nchw").inputs(["nt"]).outputs(["n"]).attr_ints("perm", &[0, 3, 1, 2]).build());
    g.node.push(b("Sigmoid", "sig1").inputs(["n"]).outputs(["s1"]).build());
    g.node.push(b("Mul", "silu1").inputs(["n", "s1"]).outputs(["a1"]).build());
    g.node.push(b("Resize", "up").inputs(["a1", "", "scales"]).outputs(["u"]).attr_string("mode", "nearest").build());
    g.node.push(conv("conv_out", ["u", "w_out", ""], "sample"));
    OnnxModel::from_proto(proto, None)
}

/// `n` latents as a VAE decoder gets them: standard normal / `scaling_factor`.
fn latents(n: usize, shape: &[usize], scaling_factor: f32) -> Vec<Vec<(String, ArrayD<f32>)>> {
    (0..n).map(|k| vec![("latent_sample".to_string(), array(shape, 100 + k as u64) / scaling_factor)]).collect()
}

/// Ranges of every value the pass judges, measured (fp32, CPU EP) on `samples`.
fn measure(pass: &PrecisionPass, model: &OnnxModel, samples: &[Vec<(String, ArrayD<f32>)>]) -> Ranges {
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    let samples: Vec<_> =
        samples.iter().map(|s| s.iter().map(|(n, a)| (n.clone(), HostTensor::F32(a.clone()))).collect()).collect();
    activation_ranges(&runtime, model, &pass.range_targets(model), &samples, 100.0).unwrap()
}

fn convert(pass: &PrecisionPass, model: &OnnxModel) -> OnnxModel {
    let mut out = model.clone();
    PassManager::new().with(pass.clone()).run(&mut out, &PassContext::new(ExecutionProvider::Cpu)).unwrap();
    assert!(pass.run(&out, &PassContext::new(ExecutionProvider::Cpu)).unwrap().is_none(), "not idempotent");
    out
}

fn node_names(model: &OnnxModel, nodes: &BTreeSet<usize>) -> BTreeSet<String> {
    nodes.iter().map(|&i| model.graph().node[i].name().to_string()).collect()
}

fn with_ranges(pass: PrecisionPass, ranges: &Ranges, margin: f32) -> PrecisionPass {
    PrecisionPass { ranges: Some(RangeOptions { margin, ..RangeOptions::default() }), ..pass }.with_ranges(ranges)
}

#[test]
fn an_overflowing_activation_gets_an_fp32_island() {
    let dir = tempfile::tempdir().unwrap();
    let model = overflowing_decoder();
    let feeds = latents(1, &[1, 4, 8, 8], 0.18215).remove(0);
    let want = run(&model, dir.path(), "fp32", &feeds);
    let want = &want["sample"];
    let h = &run(
        &{
            let mut m = model.clone();
            m.graph_mut().output.push(make_tensor_value_info("h", dtype::FLOAT, None));
            m
        },
        dir.path(),
        "fp32-h",
        &feeds,
    )["h"];
    let h_max = h.iter().fold(0f32, |m, v| m.max(v.abs()));
    let out_max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("overflowing decoder: max |h| {h_max:.0}, max |sample| {out_max:.2}");
    assert!(h_max > 65504.0 && out_max < 100.0, "the fixture must overflow inside and not at the output");

    // Ranges from other latents than the ones the outputs are compared on.
    let calibration = latents(3, &[1, 4, 8, 8], 0.18215);
    for target in [ExecutionProvider::Cpu, ExecutionProvider::Cuda] {
        let plain = PrecisionPass::new(Precision::Fp16, target);
        let ranges = measure(&plain, &model, &calibration);
        let islands = with_ranges(plain.clone(), &ranges, 4.0);
        let expected: BTreeSet<String> = ["h", "ht"].map(String::from).into();
        assert_eq!(islands.out_of_range, expected);
        let added: BTreeSet<String> = node_names(&model, &islands.blocked_nodes(&model))
            .difference(&node_names(&model, &plain.blocked_nodes(&model)))
            .cloned()
            .collect();
        let fp16 = convert(&plain, &model);
        let fixed = convert(&islands, &model);
        let got_plain = &run(&fp16, dir.path(), &format!("{}-plain", target.name()), &feeds)["sample"];
        let got_fixed = &run(&fixed, dir.path(), &format!("{}-islands", target.name()), &feeds)["sample"];
        let bad = got_plain.iter().filter(|v| !v.is_finite()).count();
        let err = relative_l2(got_fixed, want);
        eprintln!(
            "{} policy: islands add {added:?}; plain fp16: {bad} of {} outputs inf/NaN; with islands relative L2 {err:.2e}",
            target.name(),
            want.len()
        );
        assert!(err <= 1e-2, "{}: relative L2 {err:.2e} with islands", target.name());
        match target {
            // The CPU conversion keeps Conv fp32 (no float16 CPU kernel) and converts the LayerNormalization,
            // which reads h through a Cast to float16: |h| > 65504 becomes inf, the normalization NaN.
            ExecutionProvider::Cpu => {
                assert_eq!(added, ["to_nhwc", "norm"].map(String::from).into());
                assert!(bad > 0, "plain fp16 on the CPU EP should overflow (inf/NaN)");
            }
            // Everything converts on CUDA: the island is the producer of h and its readers, no more.
            _ => {
                assert_eq!(added, ["conv_up", "to_nhwc", "norm"].map(String::from).into());
                assert!(bad > 0, "plain fp16 should overflow (inf/NaN)");
            }
        }
    }
}

/// `island = "bf16"` on the CUDA policy: the island's nodes with a bfloat16 kernel and schema compute in
/// bfloat16 (the Transpose and the LayerNormalization; the Conv stays fp32, Conv has no bfloat16 schema before
/// opset 22), the rest of the graph in float16. ONNX Runtime's CPU EP has bfloat16 kernels for Transpose and
/// LayerNormalization, so the graph runs here.
#[test]
fn a_bf16_island_computes_the_overflowing_part_in_bfloat16() {
    let dir = tempfile::tempdir().unwrap();
    let model = overflowing_decoder();
    let feeds = latents(1, &[1, 4, 8, 8], 0.18215).remove(0);
    let want = &run(&model, dir.path(), "fp32", &feeds)["sample"];
    let plain = PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cuda);
    let ranges = measure(&plain, &model, &latents(3, &[1, 4, 8, 8], 0.18215));
    let bf16 = PrecisionPass {
        ranges: Some(RangeOptions { island: IslandType::Bf16, ..RangeOptions::default() }),
        ..plain.clone()
    }
    .with_ranges(&ranges);
    let index = GraphIndex::new(&model);
    let in_bf16: BTreeSet<usize> =
        bf16.bf16_islands(&index).iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i).collect();
    assert_eq!(node_names(&model, &in_bf16), ["to_nhwc", "norm"].map(String::from).into());
    assert_eq!(node_names(&model, &bf16.blocked_nodes(&model)), ["conv_up".to_string()].into());
    let converted = convert(&bf16, &model);
    // The values of the island are bfloat16 after the conversion, the rest float16 (graph I/O float32).
    let types = current_types(&GraphIndex::new(&converted));
    assert_eq!(types["h"], dtype::FLOAT);
    assert_eq!(types["ht"], dtype::BFLOAT16);
    assert_eq!(types["nt"], dtype::BFLOAT16);
    assert_eq!(types["n"], dtype::BFLOAT16, "a Transpose follows its input's type");
    assert_eq!(types["a1"], dtype::FLOAT16);
    assert_eq!(types["sample"], dtype::FLOAT);
    let got = &run(&converted, dir.path(), "bf16-islands", &feeds)["sample"];
    let err = relative_l2(got, want);
    eprintln!("bf16 island (Transpose, LayerNorm) in an fp16 graph: relative L2 {err:.2e}");
    assert!(got.iter().all(|v| v.is_finite()) && err <= 1e-2, "relative L2 {err:.2e}");
}

#[test]
fn the_margin_decides_what_is_out_of_range() {
    let ranges: Ranges = HashMap::from([
        ("over".to_string(), (-7e4, 5.0)),
        ("near".to_string(), (0.0, 2e4)),
        ("small".to_string(), (-1.0, 1.0)),
        ("nan".to_string(), (f32::NAN, 1.0)),
        ("unseen".to_string(), (f32::INFINITY, f32::NEG_INFINITY)),
    ]);
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let pass = PrecisionPass::new(Precision::Fp16, ExecutionProvider::Cuda);
    assert_eq!(with_ranges(pass.clone(), &ranges, 4.0).out_of_range, set(&["over", "near", "nan", "unseen"]));
    assert_eq!(with_ranges(pass.clone(), &ranges, 1.0).out_of_range, set(&["over", "nan", "unseen"]));
    // Without a `[precision.ranges]` table, the default margin (4).
    assert_eq!(pass.clone().with_ranges(&ranges).out_of_range, set(&["over", "near", "nan", "unseen"]));
    let settings = pass.with_ranges(&ranges).settings();
    assert_eq!(settings["limit"], serde_json::json!(16376.0));
}

#[test]
fn range_options_are_checked() {
    let ctx = crate::passes::BuildContext::new(ExecutionProvider::Cuda, Precision::Fp16);
    let build = |text: &str| crate::passes::options::build_from_str::<PrecisionPass>(text, &ctx);
    let p = build("[ranges]\n").unwrap();
    assert_eq!(p.ranges, Some(RangeOptions::default()));
    assert!(p.measures("vae_decoder") && !p.measures("unet"));
    let p = build("[ranges]\ncomponents = [\"unet\"]\nmargin = 2.0\n").unwrap();
    assert!(p.measures("unet") && !p.measures("vae_decoder"));
    assert!(!build("").unwrap().measures("vae_decoder"));
    let err = build("[ranges]\nmargin = 0.5\n").err().unwrap().to_string();
    assert!(err.contains("margin"), "{err}");
    let err = build("[ranges]\nmragin = 2.0\n").err().unwrap().to_string();
    assert!(err.contains("mragin"), "{err}");
    assert_eq!(build("[ranges]\nisland = \"bf16\"\n").unwrap().ranges.unwrap().island, IslandType::Bf16);
    let err = build("[ranges]\nisland = \"fp8\"\n").err().unwrap().to_string();
    assert!(err.contains("ranges.island") && err.contains("fp8"), "{err}");
    // bfloat16 holds float32's range: nothing to measure.
    let bf16 = crate::passes::BuildContext::new(ExecutionProvider::Cuda, Precision::Bf16);
    let p = crate::passes::options::build_from_str::<PrecisionPass>("[ranges]\n", &bf16).unwrap();
    assert!(!p.measures("vae_decoder"));
}

/// The tiny pipelines' VAE decoders (random weights, nothing near float16's limit): error against float32
/// with and without islands, and with islands forced by a margin that puts the limit at half the largest
/// measured magnitude.
#[test]
fn tiny_vae_decoders_with_and_without_islands() {
    let dir = tempfile::tempdir().unwrap();
    for (pipeline, scaling_factor) in [("tiny-sd", 0.18215), ("tiny-sdxl", 0.13025)] {
        let path = crate::passes::testing::tiny(&format!("{pipeline}/vae_decoder"));
        let model = OnnxModel::load(&path).unwrap();
        let feeds = latents(1, &[1, 4, 16, 16], scaling_factor).remove(0);
        let want = run(&model, dir.path(), &format!("{pipeline}-fp32"), &feeds);
        let want = &want["sample"];
        let calibration = latents(4, &[1, 4, 16, 16], scaling_factor);
        for target in [ExecutionProvider::Cpu, ExecutionProvider::Cuda] {
            let plain = PrecisionPass::new(Precision::Fp16, target);
            let ranges = measure(&plain, &model, &calibration);
            let max = ranges.values().fold(0f32, |m, (lo, hi)| m.max(lo.abs()).max(hi.abs()));
            let islands = with_ranges(plain.clone(), &ranges, 4.0);
            let forced = with_ranges(plain.clone(), &ranges, 2.0 * 65504.0 / max);
            let blocked = |p: &PrecisionPass| p.blocked_nodes(&model).len();
            let mut errs = Vec::new();
            for (what, pass) in [("plain", &plain), ("islands", &islands), ("forced", &forced)] {
                let got = &run(
                    &convert(pass, &model),
                    dir.path(),
                    &format!("{pipeline}-{}-{what}", target.name()),
                    &feeds,
                )["sample"];
                let err = relative_l2(got, want);
                errs.push(err);
                eprintln!(
                    "{pipeline}/vae_decoder {} policy, fp16 {what}: {} values out of range, {} nodes fp32, relative L2 \
                     {err:.2e} (max |x| measured {max:.1})",
                    target.name(),
                    pass.out_of_range.len(),
                    blocked(pass)
                );
                assert!(err <= 1e-2, "{pipeline} {} {what}: relative L2 {err:.2e}", target.name());
            }
            // Random tiny weights stay far below the limit: the islands change nothing ...
            assert!(islands.out_of_range.is_empty() && blocked(&islands) == blocked(&plain));
            assert_eq!(errs[0], errs[1]);
            // ... and a limit below the largest value puts some nodes in fp32 islands.
            assert!(!forced.out_of_range.is_empty() && blocked(&forced) > blocked(&plain), "{pipeline}");
        }
    }
}
