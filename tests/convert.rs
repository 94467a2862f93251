//! `dfast convert` on the tiny pipelines: every profile, both export styles, fp32 on the CPU EP. Every
//! converted component must run in ONNX Runtime and match the unrewritten graph on random inputs, and a
//! converted pipeline must still reproduce diffusers' references. Plus the clear errors of bad input.

mod common;

use common::{assert_clear_error, dfast};

use std::path::Path;

use dfast::convert::{self, ConvertOptions, Profile};
use dfast::manifest::Manifest;
use dfast::pipeline::{Pipeline, PipelineDir};
use dfast::runtime::{HostTensor, Model, Runtime};
use dfast::settings::{ExecutionProvider, Precision};
use ndarray::{ArrayD, IxDyn};
use ort::value::TensorElementType;

const PIPELINES: [&str; 4] = ["tiny-sd", "tiny-sdxl", "tiny-sd-dynamo", "tiny-sdxl-dynamo"];
const PROFILES: [&str; 6] = ["baseline", "sdpa", "fuse-qkv", "conv1x1", "int8-dynamic", "fused"];

/// Deterministic pseudo-random values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Random inputs for a component: batch 2, 77 tokens, 8x8 latents (64x64 images), timestep 500.
fn random_inputs(model: &Model) -> Vec<(String, HostTensor)> {
    model
        .inputs()
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let rank = spec.dims.len();
            let shape: Vec<usize> = spec
                .dims
                .iter()
                .enumerate()
                .map(|(axis, &d)| match (d, rank, axis) {
                    (d, _, _) if d > 0 => d as usize,
                    (_, _, 0) => 2,
                    (_, 2 | 3, 1) => 77,
                    _ => 8,
                })
                .collect();
            let n = shape.iter().product();
            let tensor = match spec.ty {
                TensorElementType::Int32 | TensorElementType::Int64 => {
                    let ids = noise(n, i as u64).iter().map(|v| ((v + 1.0) * 24000.0) as i64).collect();
                    HostTensor::I64(ArrayD::from_shape_vec(IxDyn(&shape), ids).unwrap())
                }
                _ if spec.name == "timestep" => HostTensor::F32(ArrayD::from_elem(IxDyn(&shape), 500.0)),
                _ => HostTensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), noise(n, i as u64 + 7)).unwrap()),
            };
            (spec.name.clone(), tensor)
        })
        .collect()
}

fn run(runtime: &Runtime, path: &Path) -> std::collections::HashMap<String, ArrayD<f32>> {
    let mut model = runtime.load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let inputs = random_inputs(&model);
    let feeds = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    model.run(feeds).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn convert_to(pipeline: &str, profile: &str, out: &Path) -> convert::Manifest {
    convert_dir(&common::model(pipeline), profile, out)
}

fn convert_dir(source: &Path, profile: &str, out: &Path) -> convert::Manifest {
    let opts = ConvertOptions {
        source: source.to_path_buf(),
        out: out.to_path_buf(),
        profile: Profile::load(profile).unwrap(),
        precision: Precision::Fp32,
        target: ExecutionProvider::Cpu,
        card: None,
        vae_half: false,
        calibration: Default::default(),
        force: false,
        loras: Vec::new(),
    };
    convert::convert(&opts, &mut |_| {}).unwrap_or_else(|e| panic!("{} with {profile}: {e}", source.display()))
}

/// Converts one pipeline with every profile and compares each component with the source graph; a converted
/// pipeline still makes diffusers' text-to-image and img2img images.
fn check_pipeline(pipeline: &str) {
    check_source(&common::model(pipeline), pipeline, pipeline.trim_end_matches("-dynamo"), true);
}

/// The same for the pipeline folder `source`, whose images are those of `reference`; `pipeline` labels it.
/// `img2img`: check diffusers' img2img reference too (not for UNets with static shapes of another size).
fn check_source(source: &Path, pipeline: &str, reference: &str, img2img: bool) {
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for profile in PROFILES {
        let out = tmp.path().join(profile);
        let manifest = convert_dir(source, profile, &out);
        let tolerance = if profile == "int8-dynamic" { 5e-2 } else { 1e-5 };
        for component in &manifest.components {
            let name = &component.component;
            let want = run(&runtime, &source.join(name).join("model.onnx"));
            let got = run(&runtime, &out.join(name).join("model.onnx"));
            for (output, w) in &want {
                let g =
                    got.get(output).unwrap_or_else(|| panic!("{pipeline}/{profile}/{name}: output {output} missing"));
                let err = common::relative_l2(g, w);
                assert!(
                    err <= tolerance,
                    "{pipeline}/{profile}/{name}/{output}: relative L2 {err:.2e} > {tolerance:e}"
                );
            }
            if matches!(profile, "sdpa" | "fuse-qkv" | "fused") {
                assert!(
                    component.nodes_after < component.nodes_before,
                    "{pipeline}/{profile}/{name}: node count did not drop ({} -> {})",
                    component.nodes_before,
                    component.nodes_after
                );
            }
        }
        // A converted fp32 pipeline still makes diffusers' image (default scheduler; int8 changes numbers).
        if profile != "int8-dynamic" {
            check_generate(&runtime, &out, reference);
            if img2img {
                check_img2img(&out, reference);
            }
        }
    }
}

fn check_generate(runtime: &Runtime, dir: &Path, reference: &str) {
    let scheduler = if reference == "tiny-sd" { "pndm" } else { "euler" };
    let refs = common::references().join(reference).join(scheduler);
    let params = common::read_json(&refs.join("params.json"));
    let mut pipe = Pipeline::load(runtime, PipelineDir::open(dir).unwrap()).unwrap();
    let opts = common::reference_options(&params);
    let out = pipe.generate(&opts, &mut |_, _| {}).unwrap();
    let err = common::relative_l2(&out.latents, &common::read_npy(&refs.join("latents.npy")));
    assert!(err <= 1e-3, "{}: latents relative L2 {err:.2e} against diffusers", dir.display());
}

/// img2img from the converted folder `dir` (the VAE encoder converted too) against diffusers' reference of the
/// pipeline's default scheduler and strength.
fn check_img2img(dir: &Path, reference: &str) {
    let case = if reference == "tiny-sd" { "tiny-sd/img2img-pndm" } else { "tiny-sdxl/img2img-euler" };
    let (err, close) = common::image_case_error(dir, case);
    assert!(err <= 1e-3, "{}: img2img latents relative L2 {err:.2e} against diffusers", dir.display());
    assert!(close >= 0.999, "{}: img2img, {:.4}% of values within one level", dir.display(), close * 100.0);
}

#[test]
fn tiny_sd_every_profile_matches_the_source_graph() {
    check_pipeline(PIPELINES[0]);
}

#[test]
fn tiny_sdxl_every_profile_matches_the_source_graph() {
    check_pipeline(PIPELINES[1]);
}

#[test]
fn tiny_sd_dynamo_every_profile_matches_the_source_graph() {
    check_pipeline(PIPELINES[2]);
}

#[test]
fn tiny_sdxl_dynamo_every_profile_matches_the_source_graph() {
    check_pipeline(PIPELINES[3]);
}

/// UNets that declare `timestep` as `[1]` (TorchScript; dynamo with static shapes) in copies of the pipelines
/// of the same weights: every profile still matches the source graph and diffusers' images.
#[test]
fn unet_with_a_one_value_timestep_every_profile_matches_the_source_graph() {
    let tmp = tempfile::tempdir().unwrap();
    for (variant, pipeline) in common::UNET_VARIANTS {
        let source = common::variant_pipeline(variant, pipeline, tmp.path());
        check_source(&source, variant, "tiny-sd", false);
    }
}

#[test]
fn output_is_a_complete_pipeline_with_a_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let manifest = convert_to("tiny-sdxl", "sdpa", &out);
    for file in ["model_index.json", "scheduler/scheduler_config.json", "tokenizer_2/vocab.json", "unet/config.json"] {
        assert!(out.join(file).is_file(), "{file} not copied");
    }
    let written = common::read_json(&out.join(convert::MANIFEST));
    assert_eq!(written["profile"], "sdpa");
    assert_eq!(written["passes"], serde_json::json!(["cleanup", "attention"]));
    assert_eq!(written["onnxruntime_version"], dfast::runtime::ORT_VERSION);
    assert_eq!(manifest.components.len(), 5);
    // Converting again over an earlier conversion replaces it.
    convert_to("tiny-sdxl", "baseline", &out);
    assert_eq!(common::read_json(&out.join(convert::MANIFEST))["profile"], "baseline");
}

/// The manifest reads back through its type and records what the passes applied: under an
/// `[ep.cpu.int8-dynamic]` override, the exclude list the pass used, not the profile's base list.
#[test]
fn manifest_reads_back_and_records_the_applied_exclude_list() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("p.toml");
    let text = "extends = \"int8-dynamic\"\n[int8-dynamic]\nexclude = [[16, 32]]\n[ep.cpu.int8-dynamic]\nexclude = [[32, 64], [64, 32]]\n";
    std::fs::write(&profile, text).unwrap();
    let out = tmp.path().join("out");
    let opts = ConvertOptions {
        source: common::model("tiny-sd"),
        out: out.clone(),
        profile: Profile::load(profile.to_str().unwrap()).unwrap(),
        precision: Precision::Fp32,
        target: ExecutionProvider::Cpu,
        card: None,
        vae_half: false,
        calibration: Default::default(),
        force: false,
        loras: Vec::new(),
    };
    let written = convert::convert(&opts, &mut |_| {}).unwrap();
    let read = Manifest::read(&out).unwrap().expect("a conversion has a manifest");
    assert_eq!(read.int8_exclude, Some(vec![(32, 64), (64, 32)]));
    assert_eq!(read.int8_exclude, written.int8_exclude);
    assert_eq!(read.execution_provider, ExecutionProvider::Cpu);
    assert_eq!(read.precision, Precision::Fp32);
    assert_eq!(read.components.len(), written.components.len());
    let applied = read.pass_settings("unet", "int8-dynamic");
    assert_eq!(applied["exclude"], serde_json::json!([[32, 64], [64, 32]]), "{applied}");
    assert_eq!(applied["format"], "dynamic");
    // 7-bit weights by default for the cpu EP: accurate on x86-64 CPUs without VNNI too.
    assert_eq!(applied["reduce_range"], true, "{applied}");
    // The op histogram after the conversion: the int8 pattern is there, and the counts add up.
    let unet = read.components.iter().find(|c| c.component == "unet").unwrap();
    assert!(unet.ops.get("MatMulInteger").is_some_and(|&n| n > 0), "{:?}", unet.ops);
    assert_eq!(unet.ops.values().sum::<usize>(), unet.nodes_after);
    // Without an override, the model card's (here: the seed's, no card matches tiny-sd) list.
    let out = tmp.path().join("seed");
    let opts = ConvertOptions { out: out.clone(), profile: Profile::load("int8-dynamic").unwrap(), ..opts };
    convert::convert(&opts, &mut |_| {}).unwrap();
    let exclude = Manifest::read(&out).unwrap().unwrap().int8_exclude.unwrap();
    assert_eq!(exclude, dfast::passes::SEED_INT8_EXCLUDE.to_vec());
}

/// A profile made for other EPs is refused, and converts with a warning under --force; a folder converted
/// for one EP and run on another warns.
#[test]
fn profiles_and_folders_used_with_another_ep_are_refused_or_warn() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = common::model("tiny-sd");
    let args = ["convert", "--model", model.to_str().unwrap(), "--profile", "cuda-graph", "--ep", "cpu"];
    let run = dfast(&[&args[..], &["--out", out.to_str().unwrap()]].concat());
    assert_clear_error(&run, "profile cuda-graph is made for cuda, not for the cpu EP");
    assert!(!out.exists());
    let run = dfast(&[&args[..], &["--force", "--out", out.to_str().unwrap()]].concat());
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stderr).contains("warning: profile cuda-graph is made for cuda"));

    let cuda = tmp.path().join("cuda");
    let run = dfast(&[
        "convert",
        "--model",
        model.to_str().unwrap(),
        "--profile",
        "sdpa",
        "--ep",
        "cuda",
        "--precision",
        "fp32",
        "--out",
        cuda.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let png = tmp.path().join("x.png");
    let run = dfast(&[
        "generate",
        "--model",
        cuda.to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "1",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("was converted for the cuda EP (profile sdpa); running it on cpu"), "{stderr}");
}

/// `dfast convert --help` lists every pass of the registry.
#[test]
fn convert_help_lists_the_registry() {
    let run = dfast(&["convert", "--help"]);
    let help = String::from_utf8_lossy(&run.stdout);
    for pass in dfast::passes::registry::PASSES {
        assert!(help.contains(pass.name) && help.contains(pass.summary), "{} missing from:\n{help}", pass.name);
    }
    assert!(help.contains("cuda-graph") && help.contains("[cuda]"), "{help}");
}

// ---------------------------------------------------------------------------------------------------------
// Bad input: one sentence, non-zero exit.

#[test]
fn not_a_model_or_pipeline_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("model.onnx");
    std::fs::write(&text, "this is not protobuf").unwrap();
    assert_clear_error(&dfast(&["inspect", text.to_str().unwrap()]), "not an ONNX model");
    let out = tmp.path().join("out");
    let run = dfast(&[
        "convert",
        "--model",
        tmp.path().to_str().unwrap(),
        "--profile",
        "sdpa",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clear_error(&run, "model_index.json is missing");
    assert_clear_error(&dfast(&["inspect", tmp.path().join("nothing").to_str().unwrap()]), "no such file or folder");
}

#[test]
fn unknown_pass_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("p.toml");
    std::fs::write(&profile, "name = \"p\"\nextends = \"sdpa\"\npasses = [\"warp-speed\"]\n").unwrap();
    let out = tmp.path().join("out");
    let model = common::model("tiny-sd");
    let run = dfast(&[
        "convert",
        "--model",
        model.to_str().unwrap(),
        "--profile",
        profile.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clear_error(&run, "names an unknown pass `warp-speed`");
    assert!(!out.exists(), "nothing is written when the profile is bad");
    let run =
        dfast(&["convert", "--model", model.to_str().unwrap(), "--profile", "turbo", "--out", out.to_str().unwrap()]);
    assert_clear_error(&run, "unknown profile `turbo`");
}

/// A key the EP does not take in a profile's `[session.<ep>]` is refused by `dfast convert`, naming the
/// profile file, before anything is written (it used to surface only when `generate` created a session).
#[test]
fn unknown_session_option_is_refused_at_convert() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("p.toml");
    std::fs::write(&profile, "extends = \"sdpa\"\n[session.cpu]\nthreds = 2\n").unwrap();
    let out = tmp.path().join("out");
    let model = common::model("tiny-sd");
    let run = dfast(&[
        "convert",
        "--model",
        model.to_str().unwrap(),
        "--profile",
        profile.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clear_error(
        &run,
        &format!(
            "profile {}: [session.cpu] key `threds`: EP option(s) `threds` are not known for the cpu execution provider",
            profile.display()
        ),
    );
    assert!(!out.exists(), "nothing is written when the profile is bad");
}

#[test]
fn malformed_exclude_list_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("p.toml");
    std::fs::write(&profile, "extends = \"int8-dynamic\"\n[int8-dynamic]\nexclude = [[1280, 640], [320]]\n").unwrap();
    let out = tmp.path().join("out");
    let model = common::model("tiny-sd");
    let run = dfast(&[
        "convert",
        "--model",
        model.to_str().unwrap(),
        "--profile",
        profile.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clear_error(&run, "p.toml: [int8-dynamic] key `exclude[1]`: invalid length 1");
    let card = tmp.path().join("card.toml");
    std::fs::write(&card, "name = \"c\"\n[int8-dynamic]\nexclude = \"1280x640\"\n").unwrap();
    let run = dfast(&[
        "convert",
        "--model",
        model.to_str().unwrap(),
        "--profile",
        "int8-dynamic",
        "--card",
        card.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clear_error(&run, "key `int8-dynamic.exclude`: invalid type: string \"1280x640\", expected a sequence");
}

#[test]
fn output_equal_to_source_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    common::copy_dir(&common::model("tiny-sd"), &model);
    let run =
        dfast(&["convert", "--model", model.to_str().unwrap(), "--profile", "sdpa", "--out", model.to_str().unwrap()]);
    assert_clear_error(&run, "the output folder is the source folder");
    let inside = model.join("converted");
    let run =
        dfast(&["convert", "--model", model.to_str().unwrap(), "--profile", "sdpa", "--out", inside.to_str().unwrap()]);
    assert_clear_error(&run, "inside the source folder");
    let run = dfast(&[
        "convert",
        "--model",
        model.to_str().unwrap(),
        "--profile",
        "sdpa",
        "--ep",
        "tpu",
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert_clear_error(&run, "unknown execution provider `tpu`");
}

#[test]
fn inspect_reports_shapes_attention_and_flops() {
    let run =
        dfast(&["inspect", common::model("tiny-sd").to_str().unwrap(), "--json", "--width", "64", "--height", "64"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let reports: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let unet = reports.as_array().unwrap().iter().find(|r| r["component"] == "unet").unwrap();
    // tiny-sd's UNet: 4 transformer blocks (down 1, mid 1, up 2) x (self + cross attention).
    assert_eq!(unet["attention_decomposed"], 8);
    assert_eq!(unet["attention_fused"], 0);
    assert!(unet["gflops"].as_f64().unwrap() > 0.0);
    assert_eq!(unet["nodes_without_shapes"], 0);
    let shapes = unet["weight_shapes"].as_array().unwrap();
    assert!(shapes.iter().any(|w| w["op"] == "Conv1x1"), "the 1x1 proj_in/proj_out convs are listed");
}

/// `fused` on tiny-sdxl: SkipLayerNormalization everywhere ONNX Runtime runs com.microsoft ops; the
/// CUDA-only GroupNorm only for cuda with `cuda_only_fusions = true` (off in the built-in profile until a
/// GPU check has passed). Conversion needs no GPU; these graphs are checked for what they hold.
#[test]
fn fused_emits_cuda_only_ops_only_when_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let forced = tmp.path().join("forced.toml");
    std::fs::write(&forced, "name = \"fused-forced\"\nextends = \"fused\"\ncuda_only_fusions = true\n").unwrap();
    let ops = |profile: &str, target: ExecutionProvider, precision: Precision| {
        let out = tmp.path().join(format!("{}-{}", profile.replace('/', "_"), target.name()));
        let opts = ConvertOptions {
            source: common::model("tiny-sdxl"),
            out: out.clone(),
            profile: Profile::load(profile).unwrap(),
            precision,
            target,
            card: None,
            vae_half: false,
            calibration: Default::default(),
            force: true,
            loras: Vec::new(),
        };
        let manifest = convert::convert(&opts, &mut |_| {}).unwrap();
        manifest.components.into_iter().find(|c| c.component == "unet").unwrap().ops
    };
    let count = |ops: &std::collections::BTreeMap<String, usize>, op: &str| ops.get(op).copied().unwrap_or(0);
    let cpu = ops("fused", ExecutionProvider::Cpu, Precision::Fp32);
    assert_eq!(count(&cpu, "com.microsoft::SkipLayerNormalization"), 20, "{cpu:?}");
    assert_eq!(count(&cpu, "com.microsoft::GroupNorm") + count(&cpu, "com.microsoft::SkipGroupNorm"), 0);
    let cuda = ops("fused", ExecutionProvider::Cuda, Precision::Fp16);
    assert_eq!(count(&cuda, "com.microsoft::GroupNorm") + count(&cuda, "com.microsoft::SkipGroupNorm"), 0);
    let forced = ops(forced.to_str().unwrap(), ExecutionProvider::Cuda, Precision::Fp16);
    let group_norms = count(&forced, "com.microsoft::GroupNorm") + count(&forced, "com.microsoft::SkipGroupNorm");
    assert_eq!(group_norms, 21, "{forced:?}");
    assert_eq!(count(&forced, "com.microsoft::SkipLayerNormalization"), 20);
    let openvino = ops("fused", ExecutionProvider::OpenVino, Precision::Fp32);
    assert!(openvino.keys().all(|op| !op.starts_with("com.microsoft::SkipLayer")), "{openvino:?}");
}

/// `fused` with `cuda_only_fusions = true` for cuda (fp16) on both export styles of tiny-sdxl: the same contrib
/// ops on both, every conv channels-last with only the entry and exit transposes, and no BiasAdd or
/// BiasSplitGelu (tiny-sdxl's 32 and 64 channels are below what those kernels take; the tests of bias-add,
/// geglu and bias-epilogue cover SDXL's widths). Every MatMul, Gemm and attention node of the result has a known
/// shape at a fixed input size, through the com.microsoft ops and fuse-qkv's Split (before inference had rules
/// for those, 72 such nodes of the TorchScript export and 64 of the dynamo one had none).
#[test]
fn fused_with_cuda_only_fusions_op_counts_on_both_export_styles() {
    let tmp = tempfile::tempdir().unwrap();
    let forced = tmp.path().join("forced.toml");
    std::fs::write(&forced, "name = \"fused-forced\"\nextends = \"fused\"\ncuda_only_fusions = true\n").unwrap();
    let mut contrib = Vec::new();
    for pipeline in ["tiny-sdxl", "tiny-sdxl-dynamo"] {
        let out = tmp.path().join(pipeline);
        let opts = ConvertOptions {
            source: common::model(pipeline),
            out: out.clone(),
            profile: Profile::load(forced.to_str().unwrap()).unwrap(),
            precision: Precision::Fp16,
            target: ExecutionProvider::Cuda,
            card: None,
            vae_half: false,
            calibration: Default::default(),
            force: false,
            loras: Vec::new(),
        };
        let manifest = convert::convert(&opts, &mut |_| {}).unwrap();
        let ops = manifest.components.into_iter().find(|c| c.component == "unet").unwrap().ops;
        let count = |op: &str| ops.get(op).copied().unwrap_or(0);
        let want = [
            ("com.microsoft::NhwcConv", 25),
            ("Conv", 0),
            ("Transpose", 2),
            ("com.microsoft::GroupNorm", 6),
            ("com.microsoft::SkipGroupNorm", 15),
            ("com.microsoft::SkipLayerNormalization", 20),
            ("com.microsoft::MultiHeadAttention", 16),
            ("com.microsoft::BiasAdd", 0),
            ("com.microsoft::BiasSplitGelu", 0),
        ];
        for (op, n) in want {
            assert_eq!(count(op), n, "{pipeline} {op}: {ops:?}");
        }
        contrib.push(ops.into_iter().filter(|(op, _)| op.starts_with("com.microsoft::")).collect::<Vec<_>>());
        let size = dfast::inspect::Size { width: 64, height: 64 };
        let report = dfast::inspect::inspect(&out.join("unet/model.onnx"), size).unwrap().remove(0);
        assert_eq!(report.nodes_without_shapes, 0, "{pipeline}");
        // The rewrites move work between ops but not the arithmetic: NhwcConv counts as the Conv it replaced.
        let source = dfast::inspect::inspect(&common::model(pipeline).join("unet/model.onnx"), size).unwrap().remove(0);
        let ratio = report.gflops / source.gflops;
        assert!(
            (ratio - 1.0).abs() < 1e-3,
            "{pipeline}: {} GFLOPs converted vs {} source",
            report.gflops,
            source.gflops
        );
    }
    assert_eq!(contrib[0], contrib[1], "the same contrib ops on both export styles");
}
