//! Final latents and images equal diffusers' for both tiny pipelines and all four schedulers (fp32, CPU EP).

mod common;

use std::path::Path;

use dfast::pipeline::{GenerateOptions, Pipeline, PipelineDir};
use dfast::runtime::{ExecutionProvider, Runtime};

/// Runs one reference case through the library and checks it against diffusers' outputs. `model` is the
/// pipeline folder: the reference's own, or the dynamo export of the same weights.
fn check_model(model: &str, pipeline: &str, scheduler: &str) {
    let dir = common::references().join(pipeline).join(scheduler);
    let params = common::read_json(&dir.join("params.json"));
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    let mut pipe = Pipeline::load(&runtime, PipelineDir::open(&common::model(model)).unwrap()).unwrap();
    let opts = GenerateOptions {
        // The scheduler exactly as diffusers configured it (class, overrides such as v_prediction).
        scheduler_config: Some(dir.join("scheduler_config.json")),
        ..common::reference_options(&params)
    };
    let out = pipe.generate(&opts, &mut |_, _| {}).unwrap();
    let want = common::read_npy(&dir.join("latents.npy"));
    let err = common::relative_l2(&out.latents, &want);
    assert!(err <= 1e-3, "{model}/{scheduler}: latents relative L2 {err:.2e} > 1e-3");
    let want_image = image::open(dir.join("image.png")).unwrap().to_rgb8();
    let close = common::fraction_within_one_level(&out.image, &want_image);
    assert!(close >= 0.999, "{model}/{scheduler}: only {:.4}% of pixel values within one level", close * 100.0);
    eprintln!("{model}/{scheduler}: latents relative L2 {err:.2e}, {:.3}% of values within one level", close * 100.0);
}

fn check(pipeline: &str, scheduler: &str) {
    check_model(pipeline, pipeline, scheduler);
}

#[test]
fn tiny_sd_pndm() {
    check("tiny-sd", "pndm");
}
#[test]
fn tiny_sd_euler() {
    check("tiny-sd", "euler");
}
#[test]
fn tiny_sd_ddim_v_prediction_trailing() {
    check("tiny-sd", "ddim");
}
#[test]
fn tiny_sd_dpm_karras() {
    check("tiny-sd", "dpm++");
}
#[test]
fn tiny_sdxl_euler() {
    check("tiny-sdxl", "euler");
}
#[test]
fn tiny_sdxl_pndm() {
    check("tiny-sdxl", "pndm");
}
#[test]
fn tiny_sdxl_ddim_v_prediction_trailing() {
    check("tiny-sdxl", "ddim");
}
#[test]
fn tiny_sdxl_dpm_karras() {
    check("tiny-sdxl", "dpm++");
}

/// The dynamo (opset 23) exports hold the same weights: the same references apply.
#[test]
fn tiny_sd_dynamo_export_all_schedulers() {
    for scheduler in ["pndm", "euler", "ddim", "dpm++"] {
        check_model("tiny-sd-dynamo", "tiny-sd", scheduler);
    }
}
#[test]
fn tiny_sdxl_dynamo_export_all_schedulers() {
    for scheduler in ["euler", "pndm", "ddim", "dpm++"] {
        check_model("tiny-sdxl-dynamo", "tiny-sdxl", scheduler);
    }
}

#[test]
fn references_cover_every_scheduler() {
    for pipeline in ["tiny-sd", "tiny-sdxl"] {
        for scheduler in ["euler", "ddim", "pndm", "dpm++"] {
            assert!(Path::new(&common::references().join(pipeline).join(scheduler).join("latents.npy")).is_file());
        }
    }
}
