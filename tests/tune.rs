//! CPU mixed precision and `dfast tune` on the tiny pipeline through OpenVINO: the `int8-mixed` profile
//! (int8 convs and linears, the rest in the precision the CPU supports) against diffusers' references, and
//! the profile `dfast tune` writes from its own measurements. Needs `.ort/openvino`
//! (`experiment-scripts/setup_ort.sh openvino`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use dfast::host::CpuFeatures;

fn openvino_lib() -> PathBuf {
    let lib = common::root().join(".ort/openvino/libonnxruntime.so.1.24.1");
    assert!(lib.is_file(), "{} is missing: run experiment-scripts/setup_ort.sh openvino", lib.display());
    lib
}

/// `dfast generate` of the tiny-sd/pndm reference case from `model` on OpenVINO with `args` added; the
/// final latents.
fn generate_latents(model: &Path, args: &[&str], dir: &Path, name: &str) -> ndarray::ArrayD<f32> {
    let case = common::references().join("tiny-sd").join("pndm");
    let latents = dir.join(format!("{name}.npy"));
    let args = [&["--ep", "openvino"][..], args].concat();
    let run = common::generate_case(&case, model, &openvino_lib(), &args, &dir.join(format!("{name}.png")), &latents);
    assert!(run.status.success(), "generate {name}: {}", String::from_utf8_lossy(&run.stderr));
    common::read_npy(&latents)
}

fn reference_latents() -> ndarray::ArrayD<f32> {
    common::read_npy(&common::references().join("tiny-sd/pndm/latents.npy"))
}

/// One UNet call's inputs for tiny-sd (batch 2, 8x8 latents, 77 tokens of 8), as `dfast unet-step` reads them.
fn write_step_inputs(path: &Path) {
    use ndarray::{Array, ArrayD, IxDyn};
    let f = |shape: &[usize], scale: f32| -> ArrayD<f32> {
        let n: usize = shape.iter().product();
        Array::from_shape_vec(IxDyn(shape), (0..n).map(|i| ((i * 7919 % 997) as f32 / 498.5 - 1.0) * scale).collect())
            .unwrap()
    };
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(path).unwrap());
    npz.add_array("sample", &f(&[2, 4, 8, 8], 1.0)).unwrap();
    npz.add_array("timestep", &ArrayD::<f32>::from_elem(IxDyn(&[]), 500.0)).unwrap();
    npz.add_array("encoder_hidden_states", &f(&[2, 77, 8], 0.5)).unwrap();
    npz.finish().unwrap();
}

fn convert(profile: &str, out: &Path, extra: &[&str]) {
    let model = common::model("tiny-sd");
    let run = common::dfast(
        &[
            &["convert", "--model", model.to_str().unwrap(), "--profile", profile, "--ep", "openvino"][..],
            &["--calibrate", "1", "--calibrate-steps", "2", "--out", out.to_str().unwrap()],
            extra,
        ]
        .concat(),
    );
    assert!(run.status.success(), "convert {profile}: {}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn mixed_profile_follows_the_cpu_and_stays_close_to_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mixed");
    convert("int8-mixed", &out, &[]);
    let manifest = common::read_json(&out.join("dfast-manifest.json"));
    let session = &manifest["session_options"];
    assert_eq!(session["precision"], "auto", "{manifest}");
    assert_eq!((&session["static_shapes"], &session["streams"]), (&"true".into(), &"2".into()), "{manifest}");

    // Within the int8 error class of diffusers' fp32 latents.
    let mixed = generate_latents(&out, &[], tmp.path(), "mixed");
    let err = common::relative_l2(&mixed, &reference_latents());
    eprintln!("int8-mixed on openvino, tiny-sd/pndm: latents relative L2 {err:.2e}");
    assert!(err <= 6e-2 && err > 1e-5, "int8-mixed: relative L2 {err:.2e}");

    // `auto` reaches the session: on a CPU with native bf16 the same files with f32 forced give other
    // latents; without, the very same ones.
    let f32 = generate_latents(&out, &["--ep-option", "precision=f32"], tmp.path(), "f32");
    let apart = common::relative_l2(&mixed, &f32);
    let bf16 = CpuFeatures::host().native_bf16();
    eprintln!("int8-mixed auto vs f32 forced: relative L2 {apart:.2e} (native bf16: {bf16})");
    if bf16 {
        assert!(apart > 1e-5, "precision=auto ran as f32 on a CPU with bf16 ({apart:.2e})");
    } else {
        assert!(apart < 1e-6, "precision=auto did not run as f32 on a CPU without bf16 ({apart:.2e})");
    }

    // unet-step says what auto became.
    let inputs = tmp.path().join("inputs.npz");
    write_step_inputs(&inputs);
    let run = Command::new(env!("CARGO_BIN_EXE_dfast"))
        .args(["unet-step", out.to_str().unwrap(), "--ep", "openvino", "--ort-lib"])
        .arg(openvino_lib())
        .args(["--inputs", inputs.to_str().unwrap(), "--runs", "1", "--warmup", "0", "--json"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let expected = if bf16 { "auto:bf16" } else { "auto:f32" };
    assert_eq!(report["ep_options"]["precision"], expected, "{report}");
}

/// `int8-conv`: int8 on the convolutions only, with 7-bit weights (no MatMul reads a dequantized weight,
/// every int8 weight within [-64, 64]), and still within the int8 error class of diffusers' latents.
#[test]
fn conv_profile_quantizes_only_convs_with_7_bit_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("conv");
    convert("int8-conv", &out, &[]);
    let manifest = common::read_json(&out.join("dfast-manifest.json"));
    let unet = manifest["components"].as_array().unwrap().iter().find(|c| c["component"] == "unet").unwrap();
    let int8 = unet["passes"].as_array().unwrap().iter().find(|p| p["pass"] == "int8-static").unwrap();
    assert_eq!(int8["settings"]["ops"], serde_json::json!(["Conv"]), "{int8}");
    assert_eq!(int8["settings"]["reduce_range"], true, "{int8}");

    let model = dfast::onnx::OnnxModel::load(out.join("unet").join("model.onnx")).unwrap();
    let graph = model.graph();
    let dequantized: std::collections::HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "DequantizeLinear")
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    let reads_int8 = |op: &str| {
        graph
            .node
            .iter()
            .filter(|n| n.op_type() == op && n.input.iter().any(|i| dequantized.contains(i.as_str())))
            .count()
    };
    assert!(reads_int8("Conv") > 0, "no int8 Conv");
    assert_eq!(reads_int8("MatMul") + reads_int8("Gemm"), 0, "a linear layer was quantized");
    let int8 = graph.initializer.iter().filter(|t| t.data_type() == 3); // INT8
    let bytes = |t| model.tensor_bytes(t).unwrap().iter().map(|&b| (b as i8).unsigned_abs()).collect::<Vec<_>>();
    let largest = int8.flat_map(bytes).max().unwrap();
    assert_eq!(largest, 64, "7-bit weights span [-64, 64]");

    let latents = generate_latents(&out, &[], tmp.path(), "conv");
    let err = common::relative_l2(&latents, &reference_latents());
    eprintln!("int8-conv on openvino, tiny-sd/pndm: latents relative L2 {err:.2e}");
    assert!(err <= 6e-2 && err > 1e-5, "int8-conv: relative L2 {err:.2e}");
}

/// A profile that quantizes the VAE decoder too (`int8-conv-upsample` with `components = ["unet",
/// "vae_decoder"]`): the decoder calibrated on what it decodes (each calibration prompt's final latents
/// divided by `scaling_factor`, as the pipeline feeds it) and run with int8 convolutions. With the UNet left
/// float (a second profile), the same seed gives the float pipeline's latents, so the images differ by the
/// int8 decoder alone: within the int8 class (2.8e-2 measured on an AMD EPYC Zen 2), where ranges
/// calibrated on latents left unscaled gave 6.7e-1, and on unfinished latents (2-step images) 4.8e-1.
#[test]
fn a_profile_can_calibrate_the_decoder_on_its_own_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let both = tmp.path().join("both.toml");
    let text =
        "name = \"both\"\nextends = \"int8-conv-upsample\"\n[int8-static]\ncomponents = [\"unet\", \"vae_decoder\"]\n";
    std::fs::write(&both, text).unwrap();
    let out = tmp.path().join("both");
    convert(both.to_str().unwrap(), &out, &[]);
    let manifest = common::read_json(&out.join("dfast-manifest.json"));
    for component in ["unet", "vae_decoder"] {
        let c = manifest["components"].as_array().unwrap().iter().find(|c| c["component"] == component).unwrap();
        let int8 = c["passes"].as_array().unwrap().iter().find(|p| p["pass"] == "int8-static");
        assert!(int8.is_some_and(|p| p["settings"]["ops"] == serde_json::json!(["Conv"])), "{component}: {c}");
    }
    let ranges = common::read_json(&out.join("vae_decoder/int8-calibration.json"));
    assert!(ranges.as_object().is_some_and(|r| r.len() > 10), "{ranges}");

    let profile = tmp.path().join("decoder-only.toml");
    std::fs::write(
        &profile,
        "name = \"decoder-only\"\nextends = \"int8-conv-upsample\"\n[int8-static]\ncomponents = [\"vae_decoder\"]\n",
    )
    .unwrap();
    // Calibrated on images made as the reference case makes its own (10 steps): the decoder's ranges are
    // those of finished latents.
    let decoder_only = tmp.path().join("decoder-only");
    let model = common::model("tiny-sd");
    let run = common::dfast(&[
        "convert",
        "--model",
        model.to_str().unwrap(),
        "--profile",
        profile.to_str().unwrap(),
        "--ep",
        "openvino",
        "--calibrate",
        "2",
        "--calibrate-steps",
        "10",
        "--out",
        decoder_only.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "convert: {}", String::from_utf8_lossy(&run.stderr));
    let int8 = generate_latents(&decoder_only, &[], tmp.path(), "int8");
    let float = generate_latents(&common::model("tiny-sd"), &[], tmp.path(), "float");
    let apart = common::relative_l2(&int8, &float);
    assert!(apart < 1e-5, "the UNet was meant to stay float: latents {apart:.2e} apart");
    let centred = |name: &str| -> Vec<f64> {
        let image = image::open(tmp.path().join(format!("{name}.png"))).unwrap().to_rgb8();
        image.as_raw().iter().map(|&v| (v as f64 - 127.5) / 127.5).collect()
    };
    let (a, b) = (centred("int8"), centred("float"));
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let err = diff / b.iter().map(|y| y * y).sum::<f64>().sqrt();
    eprintln!("int8 VAE decoder on openvino, tiny-sd/pndm: decoded image relative L2 {err:.2e}");
    assert!(err <= 6e-2 && err > 1e-4, "int8 decoder: decoded image relative L2 {err:.2e}");
}

/// `dfast tune` on tiny-sd through OpenVINO: the profile it writes loads, converts (calibrated) and generates
/// within the int8 tolerance of diffusers' latents, and its exclude list is exactly the pairs where int8 was
/// slower according to its own timings file.
#[test]
fn tune_writes_a_profile_that_follows_its_measurements_and_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("local-test.toml");
    let run = Command::new(env!("CARGO_BIN_EXE_dfast"))
        .args(["tune", "--model", common::model("tiny-sd").to_str().unwrap(), "--ep", "openvino", "--ort-lib"])
        .arg(openvino_lib())
        .args(["--runs", "3", "--warmup", "1", "--step-runs", "2", "--out", profile.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "tune: {}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("predicted") && stdout.contains("measured"), "{stdout}");

    // The exclude list follows the recorded timings: a pair is in it iff int8 took longer over its nodes.
    let timings = common::read_json(&tmp.path().join("local-test.timings.json"));
    let text = std::fs::read_to_string(&profile).unwrap();
    let table: toml::Table = text.parse().unwrap();
    let written: Vec<(u64, u64)> = table["int8-static"]["exclude"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_integer().unwrap() as u64, p[1].as_integer().unwrap() as u64))
        .collect();
    let mut per_pair: std::collections::BTreeMap<(u64, u64), (f64, f64, u64)> = Default::default();
    let shapes = timings["shapes"].as_array().unwrap();
    assert!(shapes.len() >= 5, "{timings}");
    for s in shapes {
        let pair = (s["pair"][0].as_u64().unwrap(), s["pair"][1].as_u64().unwrap());
        let n = s["nodes"].as_u64().unwrap();
        let e = per_pair.entry(pair).or_default();
        e.0 += n as f64 * s["int8_ms"].as_f64().unwrap();
        e.1 += n as f64 * s["alt_ms"].as_f64().unwrap();
        e.2 += n;
        assert!(s["int8_ms"].as_f64().unwrap() > 0.0 && s["alt_ms"].as_f64().unwrap() > 0.0, "{s}");
    }
    let expected: Vec<(u64, u64)> = per_pair.iter().filter(|(_, (i, a, _))| i > a).map(|(p, _)| *p).collect();
    assert_eq!(written, expected, "exclude list vs the timings file");
    // Every timed node is a tiny-sd conv or linear with more than 16 channels in and out (int8-static's rule).
    let nodes: u64 = per_pair.values().map(|v| v.2).sum();
    assert_eq!(nodes, 20, "tiny-sd has 20 nodes int8-static quantizes");
    assert!(per_pair.keys().all(|&(i, o)| i > 16 && o > 16), "{per_pair:?}");
    let step = &timings["step"];
    assert!(step["alt_ms"].as_f64().unwrap() > 0.0 && step["tuned_ms"].as_f64().unwrap() > 0.0, "{step}");
    assert!(text.contains("extends = \"int8-mixed\"") && text.contains("# Written by"), "{text}");

    // The profile loads, converts and generates within tolerance.
    let out = tmp.path().join("tuned");
    convert(profile.to_str().unwrap(), &out, &[]);
    let manifest = common::read_json(&out.join("dfast-manifest.json"));
    let unet = manifest["components"].as_array().unwrap().iter().find(|c| c["component"] == "unet").unwrap();
    let int8 = unet["passes"].as_array().unwrap().iter().find(|p| p["pass"] == "int8-static").unwrap();
    let excluded_nodes: u64 = written.iter().map(|p| per_pair[p].2).sum();
    assert_eq!(int8["rewrites"].as_u64().unwrap(), 20 - excluded_nodes, "{int8}");
    let latents = generate_latents(&out, &[], tmp.path(), "tuned");
    let err = common::relative_l2(&latents, &reference_latents());
    eprintln!("tuned profile on openvino, tiny-sd/pndm: latents relative L2 {err:.2e}, exclude {written:?}");
    assert!(err <= 6e-2, "tuned: relative L2 {err:.2e}");
}

#[test]
fn tune_refuses_what_it_cannot_do_in_one_sentence() {
    let tiny = common::model("tiny-sd");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.toml");
    let run = |extra: &[&str]| {
        common::dfast(
            &[&["tune", "--model", tiny.to_str().unwrap(), "--out", out.to_str().unwrap()][..], extra].concat(),
        )
    };
    common::assert_clear_error(&run(&["--ep", "tensorrt"]), "openvino, cpu or cuda");
    common::assert_clear_error(&run(&["--ep", "openvino", "--precision", "int4"]), "--precision `int4`");
    common::assert_clear_error(&run(&["--ep", "cpu", "--precision", "fp16"]), "expected fp32");
    let bad = tmp.path().join("x.txt");
    common::assert_clear_error(
        &common::dfast(&["tune", "--model", tiny.to_str().unwrap(), "--ep", "cpu", "--out", bad.to_str().unwrap()]),
        "--out must name a .toml profile file",
    );
}

/// The default profile path is the checkout's profiles/ folder wherever tune runs (it was `profiles/` of the
/// working folder, missing outside the checkout): run from elsewhere, the first path refused is the
/// timings', not the profile's.
#[test]
fn tune_writes_its_default_profile_into_the_checkout_from_any_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = common::model("tiny-sd");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_dfast"))
        .current_dir(tmp.path())
        .args(["tune", "--model", tiny.to_str().unwrap(), "--ep", "cpu", "--timings", "/nonexistent/t.json"])
        .output()
        .unwrap();
    common::assert_clear_error(&run, "/nonexistent/t.json: cannot write here: folder /nonexistent does not exist");
}
