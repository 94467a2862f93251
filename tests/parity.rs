//! Final latents and images equal diffusers' for both tiny pipelines and all four schedulers (fp32, CPU EP).

mod common;

use std::path::Path;

/// Runs one reference case through the library and checks it against diffusers' outputs. `model` is the
/// pipeline folder: the reference's own, or the dynamo export of the same weights.
fn check_model(model: &str, pipeline: &str, scheduler: &str) {
    check_dir(&common::model(model), pipeline, scheduler);
}

fn check_dir(dir: &Path, pipeline: &str, scheduler: &str) {
    let (err, close) = common::reference_error(dir, pipeline, scheduler);
    let model = dir.display();
    assert!(err <= 1e-3, "{model}/{scheduler}: latents relative L2 {err:.2e} > 1e-3");
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

/// UNets that declare `timestep` as `[1]` (a one-value timestep expanded over the batch inside the graph), in
/// both exporter styles, the dynamo one with static shapes: swapped into a copy of the pipeline of the same
/// weights, they make diffusers' images with every scheduler.
#[test]
fn unet_with_a_one_value_timestep_all_schedulers() {
    let tmp = tempfile::tempdir().unwrap();
    for (variant, pipeline) in common::UNET_VARIANTS {
        let dir = common::variant_pipeline(variant, pipeline, tmp.path());
        for scheduler in ["pndm", "euler", "ddim", "dpm++"] {
            check_dir(&dir, "tiny-sd", scheduler);
        }
    }
}

/// The stochastic few-step schedulers (`make_tiny_pipelines.py --few-step`), whose every step adds noise from
/// the seed's generator after the initial latents: the same seed gives diffusers' latents and image only when
/// that noise is drawn in diffusers' order.
#[test]
fn tiny_sdxl_euler_ancestral_turbo_1_and_4_steps_guidance_0() {
    check("tiny-sdxl", "euler-a-turbo-1step");
    check("tiny-sdxl", "euler-a-turbo-4step");
}
#[test]
fn tiny_sd_euler_ancestral_guidance_1_trailing_and_7_5_leading() {
    check("tiny-sd", "euler-a-trailing-guidance1");
    check("tiny-sd", "euler-a-leading-guidance7.5");
}
#[test]
fn tiny_sd_lcm_4_steps_guidance_1_and_1_5() {
    check("tiny-sd", "lcm-guidance1");
    check("tiny-sd", "lcm-guidance1.5");
}
#[test]
fn tiny_sdxl_lcm_4_steps_guidance_0() {
    check("tiny-sdxl", "lcm-guidance0");
}

#[test]
fn references_cover_every_scheduler() {
    for pipeline in ["tiny-sd", "tiny-sdxl"] {
        for scheduler in ["euler", "ddim", "pndm", "dpm++"] {
            assert!(Path::new(&common::references().join(pipeline).join(scheduler).join("latents.npy")).is_file());
        }
    }
}
