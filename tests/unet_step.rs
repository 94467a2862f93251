//! `dfast unet-step` with IoBinding: the inputs bound once in (host-memory) device buffers and the output bound
//! to a buffer sized before the first call, the path a CUDA graph replays, gives the output of the model's
//! plain run on the CPU EP. The tiny SDXL UNet, and the tiny PixArt transformer, whose output has twice the
//! latent's channels (learned sigma) and declares every dimension open, so that the bound output must be
//! sized from its config.

mod common;

use std::path::Path;
use std::process::Command;

use dfast::runtime::{HostTensor, Runtime};
use dfast::settings::ExecutionProvider;

fn runtime_cpu() -> Runtime {
    Runtime::new(ExecutionProvider::Cpu, None).unwrap()
}

fn write_npz(path: &Path, inputs: &[(String, HostTensor)]) {
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(path).unwrap());
    for (name, tensor) in inputs {
        match tensor {
            HostTensor::F32(a) => npz.add_array(name.as_str(), a).unwrap(),
            HostTensor::I64(a) => npz.add_array(name.as_str(), a).unwrap(),
        }
    }
    npz.finish().unwrap();
}

/// `dfast unet-step MODEL --inputs NPZ --output OUT --json [ARGS]`: its JSON report.
fn unet_step(model: &Path, npz: &Path, out: &Path, args: &[&str]) -> serde_json::Value {
    let run = Command::new(env!("CARGO_BIN_EXE_dfast"))
        .arg("unet-step")
        .arg(model)
        .arg("--inputs")
        .arg(npz)
        .arg("--output")
        .arg(out)
        .args(["--warmup", "1", "--runs", "2", "--json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}{stdout}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn check_bound_matches_plain(pipeline: &str, component: &str, out_channels: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::model(pipeline);
    let model = dir.join(component).join("model.onnx");
    let inputs = common::inputs_for(&runtime_cpu(), &model);
    let npz = tmp.path().join("inputs.npz");
    write_npz(&npz, &inputs);

    // The reference: the model's plain run (host tensors through Model::run), in this process.
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).unwrap();
    let mut session = runtime.load(&model).unwrap();
    let feeds: Vec<(&str, HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let mut out = session.run(feeds).unwrap();
    let reference = out.remove("out_sample").unwrap();
    let latent = inputs.iter().find(|(n, _)| n == "sample" || n == "hidden_states").unwrap();
    let HostTensor::F32(latent) = &latent.1 else { panic!("float latents") };
    let mut expected_shape = latent.shape().to_vec();
    expected_shape[1] = out_channels;
    assert_eq!(reference.shape(), expected_shape.as_slice());

    let plain = unet_step(&dir, &npz, &tmp.path().join("plain.npy"), &[]);
    let bound = unet_step(&dir, &npz, &tmp.path().join("bound.npy"), &["--ep-option", "io_binding=true"]);
    assert_eq!(plain["io_binding"], false, "{plain}");
    assert_eq!(bound["io_binding"], true, "{bound}");
    for report in [&plain, &bound] {
        for key in ["median_s", "min_s", "first_run_s", "session_create_s"] {
            assert!(report[key].as_f64().unwrap() > 0.0, "{key} in {report}");
        }
        let transfer = report["transfer_median_s"].as_f64().unwrap();
        assert!(transfer >= 0.0 && transfer <= report["median_s"].as_f64().unwrap(), "{report}");
        assert_eq!(report["runs_s"].as_array().unwrap().len(), 2);
    }
    let plain_out = common::read_npy(&tmp.path().join("plain.npy"));
    let bound_out = common::read_npy(&tmp.path().join("bound.npy"));
    assert_eq!(bound_out.shape(), reference.shape());
    assert!(bound_out.iter().all(|v| v.is_finite()));
    let bound_err = common::relative_l2(&bound_out, &reference);
    let plain_err = common::relative_l2(&plain_out, &reference);
    assert!(bound_err < 1e-6, "{pipeline}: IoBinding output vs the plain run: relative L2 {bound_err:e}");
    assert!(plain_err < 1e-6, "{pipeline}: unet-step's plain output vs the plain run: relative L2 {plain_err:e}");
    // Not a copy of an input: the prediction is a function of it, not the latents themselves.
    if out_channels == latent.shape()[1] {
        assert!(common::relative_l2(&bound_out, latent) > 1e-2);
    }
}

#[test]
fn io_binding_gives_the_plain_runs_output_for_a_unet() {
    check_bound_matches_plain("tiny-sdxl", "unet", 4);
}

#[test]
fn io_binding_sizes_a_transformers_output_from_its_config() {
    // PixArt-α's transformer predicts noise and variance: 8 channels from 4.
    check_bound_matches_plain("tiny-pixart", "transformer", 8);
}

/// `dfast unet-step` of `pipeline`'s UNet on inputs that lack `dropped`, with `args` added.
fn unet_step_without(pipeline: &str, dropped: &str, args: &[&str]) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::model(pipeline);
    let inputs: Vec<(String, HostTensor)> = common::inputs_for(&runtime_cpu(), &dir.join("unet").join("model.onnx"))
        .into_iter()
        .filter(|(n, _)| n != dropped)
        .collect();
    let npz = tmp.path().join("inputs.npz");
    write_npz(&npz, &inputs);
    Command::new(env!("CARGO_BIN_EXE_dfast"))
        .arg("unet-step")
        .arg(&dir)
        .arg("--inputs")
        .arg(&npz)
        .args(args)
        .output()
        .unwrap()
}

/// An input the .npz lacks: one sentence naming the .npz and the array, not an error about the model, with
/// or without device buffers.
#[test]
fn an_input_the_npz_lacks_is_named() {
    for (pipeline, dropped, args) in [
        ("tiny-sd", "encoder_hidden_states", &[][..]),
        ("tiny-sdxl", "sample", &["--ep-option", "io_binding=true"][..]),
    ] {
        let run = unet_step_without(pipeline, dropped, args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("inputs.npz: has no array `{dropped}`, an input of")), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
