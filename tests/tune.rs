//! CPU mixed precision and `dfast tune` on the tiny pipeline through OpenVINO: the `int8-mixed` profile
//! (int8 convs and linears, the rest in the precision the CPU supports) against diffusers' references, and
//! the profile `dfast tune` writes from its own measurements. Needs `.ort/openvino`
//! (`experiment-scripts/setup_ort.sh openvino`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use dfast::runtime::CpuFeatures;

fn openvino_lib() -> PathBuf {
    let lib = common::root().join(".ort/openvino/libonnxruntime.so.1.24.1");
    assert!(lib.is_file(), "{} is missing: run experiment-scripts/setup_ort.sh openvino", lib.display());
    lib
}

/// `dfast generate` of the tiny-sd/pndm reference case from `model` on OpenVINO with `args` added; the
/// final latents.
fn generate_latents(model: &Path, args: &[&str], dir: &Path, name: &str) -> ndarray::ArrayD<f32> {
    let case = common::references().join("tiny-sd").join("pndm");
    let params = common::read_json(&case.join("params.json"));
    let latents = dir.join(format!("{name}.npy"));
    let n = |key: &str| params[key].as_u64().unwrap().to_string();
    let run = Command::new(env!("CARGO_BIN_EXE_dfast"))
        .arg("generate")
        .arg("--ort-lib")
        .arg(openvino_lib())
        .args(["--ep", "openvino"])
        .args(args)
        .arg("--model")
        .arg(model)
        .args(["--prompt", params["prompt"].as_str().unwrap()])
        .args(["--negative-prompt", params["negative_prompt"].as_str().unwrap()])
        .args(["--steps", &n("steps"), "--seed", &n("seed"), "--width", &n("width"), "--height", &n("height")])
        .args(["--guidance", &params["guidance"].as_f64().unwrap().to_string()])
        .arg("--scheduler-config")
        .arg(case.join("scheduler_config.json"))
        .arg("--out")
        .arg(dir.join(format!("{name}.png")))
        .arg("--save-latents")
        .arg(&latents)
        .output()
        .unwrap();
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
    assert_eq!(manifest["session_options"]["precision"], "auto", "{manifest}");

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
