//! Execution providers from the one dfast binary: the tiny pipelines through OpenVINO (fp32 and its bf16
//! precision hint) against diffusers' references, and a clear sentence naming what is missing when the
//! CUDA or TensorRT EP cannot be used here. Needs `.ort/openvino` and `.ort/gpu`
//! (`experiment-scripts/setup_ort.sh openvino` and `... gpu`, which `.ci/run` runs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::assert_clear_error;
use dfast::settings::PrecisionHint;

fn flavour_lib(flavour: &str, version: &str) -> PathBuf {
    let lib = common::root().join(".ort").join(flavour).join(format!("libonnxruntime.so.{version}"));
    assert!(lib.is_file(), "{} is missing: run experiment-scripts/setup_ort.sh {flavour}", lib.display());
    lib
}

/// `dfast generate` of one reference case with `args` added; returns the relative L2 error of the final
/// latents against diffusers'.
fn generate_error(pipeline: &str, scheduler: &str, lib: &Path, args: &[&str]) -> f64 {
    generate_error_with(&common::model(pipeline), pipeline, scheduler, lib, args)
}

/// The same with the pipeline folder `model` (a conversion of `pipeline`) in its place.
fn generate_error_with(model: &Path, pipeline: &str, scheduler: &str, lib: &Path, args: &[&str]) -> f64 {
    generate_error_and_stderr(model, pipeline, scheduler, lib, args).0
}

/// The same, with what the run wrote on stderr.
fn generate_error_and_stderr(
    model: &Path,
    pipeline: &str,
    scheduler: &str,
    lib: &Path,
    args: &[&str],
) -> (f64, String) {
    let dir = common::references().join(pipeline).join(scheduler);
    let tmp = tempfile::tempdir().unwrap();
    let (out, latents) = (tmp.path().join("x.png"), tmp.path().join("x.npy"));
    let run = common::generate_case(&dir, model, lib, args, &out, &latents);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{pipeline}/{scheduler} {args:?}: {stderr}");
    (common::relative_l2(&common::read_npy(&latents), &common::read_npy(&dir.join("latents.npy"))), stderr)
}

#[test]
fn openvino_fp32_matches_diffusers() {
    let lib = flavour_lib("openvino", "1.24.1");
    for (pipeline, scheduler) in [("tiny-sd", "pndm"), ("tiny-sd", "dpm++"), ("tiny-sdxl", "euler")] {
        let err = generate_error(pipeline, scheduler, &lib, &["--ep", "openvino"]);
        eprintln!("openvino f32 {pipeline}/{scheduler}: latents relative L2 {err:.2e}");
        assert!(err <= 1e-3, "openvino f32 {pipeline}/{scheduler}: relative L2 {err:.2e} > 1e-3");
    }
}

/// The whole pipeline with the UNet's guidance batch split over two sessions compiled for their static
/// shapes (the text encoder and VAE decoder static too): diffusers' latents, as with one session.
#[test]
fn openvino_static_shapes_and_streams_match_diffusers() {
    let lib = flavour_lib("openvino", "1.24.1");
    let lanes = ["--ep", "openvino", "--ep-option", "static_shapes=true", "--ep-option", "streams=2"];
    for (pipeline, scheduler) in [("tiny-sd", "pndm"), ("tiny-sdxl", "euler")] {
        let err = generate_error(pipeline, scheduler, &lib, &lanes);
        eprintln!("openvino f32, static shapes, 2 streams, {pipeline}/{scheduler}: latents relative L2 {err:.2e}");
        assert!(err <= 1e-3, "openvino lanes {pipeline}/{scheduler}: relative L2 {err:.2e} > 1e-3");
    }
}

/// A UNet that declares `timestep` as `[1]` through OpenVINO, and a calibrated int8-static conversion of it
/// (calibration runs the source pipeline on the CPU EP). The TorchScript variant: OpenVINO 2025.4's ONNX
/// frontend does not read the dynamo exports' opset-23 `Attention` nodes (tiny-sd-dynamo's text encoder).
#[test]
fn openvino_runs_a_unet_with_a_one_value_timestep() {
    let lib = flavour_lib("openvino", "1.24.1");
    let tmp = tempfile::tempdir().unwrap();
    let (variant, pipeline) = common::UNET_VARIANTS[0];
    let source = common::variant_pipeline(variant, pipeline, tmp.path());
    let err = generate_error_with(&source, "tiny-sd", "dpm++", &lib, &["--ep", "openvino"]);
    eprintln!("openvino f32 {variant}: latents relative L2 {err:.2e}");
    assert!(err <= 1e-3, "openvino f32 {variant}: relative L2 {err:.2e} > 1e-3");
    let out = tmp.path().join("int8");
    let run = common::dfast(
        &[
            &["convert", "--model", source.to_str().unwrap(), "--profile", "int8-static", "--ep", "openvino"][..],
            &["--calibrate", "1", "--calibrate-steps", "2", "--out", out.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let err = generate_error_with(&out, "tiny-sd", "pndm", &lib, &["--ep", "openvino"]);
    eprintln!("int8-static on openvino, {variant}: latents relative L2 {err:.2e}");
    assert!(err <= 6e-2 && err > 1e-5, "int8-static: relative L2 {err:.2e}");
}

/// `precision=bf16` through OpenVINO, by what this CPU can do (`openvino_cpu_precision`, unit-tested on
/// cpuinfo samples of every kind): where OpenVINO's CPU plugin computes in bf16 (AVX-512, or AVX2 with
/// AVX-VNNI-INT8 and AVX-NE-CONVERT), the bf16 error class and no warning; elsewhere OpenVINO runs f32, and
/// dfast says so.
#[test]
fn openvino_bf16_runs_bf16_where_the_cpu_can_and_says_so_where_not() {
    let lib = flavour_lib("openvino", "1.24.1");
    let cpu = dfast::host::CpuFeatures::host();
    let runs_bf16 = dfast::runtime::openvino_cpu_precision(PrecisionHint::Bf16, &cpu) == PrecisionHint::Bf16;
    eprintln!("this CPU: {:?}; OpenVINO computes bf16 here: {runs_bf16}", cpu.names());
    for (pipeline, scheduler) in [("tiny-sd", "euler"), ("tiny-sdxl", "ddim")] {
        let args = ["--ep", "openvino", "--ep-option", "precision=bf16"];
        let (err, stderr) = generate_error_and_stderr(&common::model(pipeline), pipeline, scheduler, &lib, &args);
        eprintln!("openvino bf16 {pipeline}/{scheduler}: latents relative L2 {err:.2e}");
        let said = stderr.contains("warning: OpenVINO runs `precision=bf16` in f32 on this CPU");
        if runs_bf16 {
            assert!(err <= 6e-2, "openvino bf16 {pipeline}/{scheduler}: relative L2 {err:.2e} > 6e-2");
            // bf16 really ran: fp32 would be within 1e-6 or so.
            assert!(err > 1e-5, "openvino bf16 {pipeline}/{scheduler}: error {err:.2e} looks like fp32");
            assert!(!said, "a warning where bf16 runs: {stderr}");
        } else {
            // OpenVINO ran f32 (within the bound the other branch's bf16 must exceed), and the run said so.
            assert!(err <= 1e-5, "openvino bf16 on this CPU {pipeline}/{scheduler}: error {err:.2e} is not fp32's");
            assert!(said, "no warning that bf16 ran as f32: {stderr}");
        }
    }
}

#[test]
fn cpu_ep_with_device_buffers_matches_diffusers() {
    // The IoBinding path the CUDA EP uses (bound conditioning, per-step copies), on host memory.
    let lib = flavour_lib("cpu", "1.31.1");
    let err = generate_error("tiny-sdxl", "dpm++", &lib, &["--ep", "cpu", "--ep-option", "io_binding=true"]);
    assert!(err <= 1e-3, "io_binding on cpu: relative L2 {err:.2e}");
}

fn generate_with(lib: &Path, ep: &str, extra: &[&str]) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    Command::new(env!("CARGO_BIN_EXE_dfast"))
        .args(["generate", "--ort-lib"])
        .arg(lib)
        .args(extra)
        .args(["--prompt", "a castle", "--steps", "2", "--ep", ep, "--out"])
        .arg(&out)
        .output()
        .unwrap()
}

#[test]
fn cuda_and_tensorrt_in_a_library_without_them_name_the_build_to_get() {
    let cpu = flavour_lib("cpu", "1.31.1");
    for ep in ["cuda", "tensorrt", "openvino"] {
        let run = generate_with(&cpu, ep, &[]);
        assert_clear_error(&run, &format!("execution provider `{ep}` is not in the ONNX Runtime library"));
        let flavour = if ep == "openvino" { "openvino" } else { "gpu" };
        assert_clear_error(&run, &format!("setup_ort.sh {flavour}"));
    }
}

#[test]
fn cuda_and_tensorrt_without_their_libraries_name_what_is_missing() {
    // The GPU build of ONNX Runtime on a machine without the CUDA libraries (or without a GPU).
    let gpu = flavour_lib("gpu", "1.31.1");
    let run = generate_with(&gpu, "cuda", &[]);
    assert_clear_error(&run, "the cuda execution provider cannot be used: ");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains(".so") || stderr.contains("CUDA"), "names no library or device: {stderr}");
    let run = generate_with(&gpu, "tensorrt", &[]);
    assert_clear_error(&run, "the tensorrt execution provider cannot be used: ");
}

#[test]
fn bad_ep_options_are_clear_errors() {
    let cpu = flavour_lib("cpu", "1.31.1");
    assert_clear_error(&generate_with(&cpu, "cpu", &["--ep-option", "fast"]), "is not of the form key=value");
    assert_clear_error(
        &generate_with(&cpu, "cpu", &["--ep-option", "prefer_nhwc=1"]),
        "are not known for the cpu execution provider",
    );
    assert_clear_error(&generate_with(&cpu, "cpu", &["--ep-option", "io_binding=maybe"]), "expected true or false");
    let cores = std::thread::available_parallelism().unwrap().get();
    let too_many = format!("threads={}", cores + 1);
    assert_clear_error(&generate_with(&cpu, "cpu", &["--ep-option", &too_many]), "logical CPUs this machine has");
    let ov = flavour_lib("openvino", "1.24.1");
    assert_clear_error(
        &generate_with(&ov, "openvino", &["--ep-option", "precision=int4"]),
        "expected f32, bf16 or f16",
    );
    // A device this machine lacks: ONNX Runtime's own cause (which it only logs) and the option, not a
    // word about libraries.
    let run = generate_with(&ov, "openvino", &["--ep-option", "device=GPU"]);
    assert_clear_error(&run, "Device GPU is not available (EP option `device=GPU`)");
    assert!(!String::from_utf8_lossy(&run.stderr).contains("libraries"), "{}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn calibrated_int8_through_openvino_stays_close_to_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny-sd-int8");
    let model = common::model("tiny-sd");
    let run_convert = |out: &Path, extra: &[&str]| {
        let base = ["convert", "--model", model.to_str().unwrap(), "--profile", "int8-static", "--ep", "openvino"];
        common::dfast(&[&base[..], &["--out", out.to_str().unwrap()], extra].concat())
    };
    let convert = |out: &Path, extra: &[&str]| {
        let run = run_convert(out, &[&["--calibrate", "2", "--calibrate-steps", "3"][..], extra].concat());
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    };
    let samples = tmp.path().join("samples");
    convert(&out, &["--save-calibration-inputs", samples.to_str().unwrap()]);
    let ranges = std::fs::read_to_string(out.join("unet/int8-calibration.json")).unwrap();
    // The recorded UNet inputs: 2 prompts x 4 UNet calls (PNDM's 3 steps run 4), each named after the UNet's
    // inputs; prompt 0 runs seed 0, so its first call's latents (both guidance rows) are torch's noise of seed 0.
    let mut files: Vec<_> = std::fs::read_dir(&samples).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 8, "{files:?}");
    let mut first = ndarray_npy::NpzReader::new(std::fs::File::open(&files[0]).unwrap()).unwrap();
    let mut names = first.names().unwrap();
    names.sort();
    assert_eq!(names, ["encoder_hidden_states", "sample", "timestep"]);
    let sample: ndarray::ArrayD<f32> = first.by_name("sample").unwrap();
    let noise = common::read_npy(&common::references().join("noise_seed0_1x4x8x8.npy"));
    assert_eq!(sample.shape(), [2, 4, 8, 8]);
    for row in sample.outer_iter() {
        let worst = row.iter().zip(noise.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "the first recorded sample is not seed 0's noise (max abs difference {worst})");
    }
    let manifest = common::read_json(&out.join("dfast-manifest.json"));
    assert_eq!(manifest["calibration"]["prompts"], 2, "{manifest}");
    let unet = manifest["components"].as_array().unwrap().iter().find(|c| c["component"] == "unet").unwrap();
    let int8 = unet["passes"].as_array().unwrap().iter().find(|p| p["pass"] == "int8-static").unwrap();
    assert_eq!(int8["rewrites"], 20, "{int8}");

    // The reference case run through the int8 UNet on OpenVINO: int8 error, within the bf16 class.
    let lib = flavour_lib("openvino", "1.24.1");
    let err = generate_error_with(&out, "tiny-sd", "pndm", &lib, &["--ep", "openvino"]);
    eprintln!("int8-static on openvino, tiny-sd/pndm: latents relative L2 {err:.2e}");
    assert!(err <= 6e-2 && err > 1e-5, "int8-static tiny-sd/pndm: relative L2 {err:.2e}");

    // Reusing the ranges gives the same calibration without running the pipeline again.
    let again = tmp.path().join("again");
    convert(&again, &["--calibration-from", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(again.join("unet/int8-calibration.json")).unwrap(), ranges);
    // Nothing is recorded then, so asking for the inputs is refused before anything is written.
    let never = tmp.path().join("never-saved");
    let run = run_convert(
        &tmp.path().join("never"),
        &["--calibration-from", out.to_str().unwrap(), "--save-calibration-inputs", never.to_str().unwrap()],
    );
    assert_clear_error(&run, "nothing is recorded");
    assert!(!never.exists() && !tmp.path().join("never").exists());
    // Ranges of another graph are refused with what is missing.
    let wrong = tmp.path().join("wrong.json");
    std::fs::write(&wrong, "{\"x\": [0, 1]}").unwrap();
    let run = run_convert(&tmp.path().join("never"), &["--calibration-from", wrong.to_str().unwrap()]);
    assert_clear_error(&run, "lacks the ranges of 20 of the 20 activations");
}
