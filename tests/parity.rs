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

/// Generates reference case `tests/references/<pipeline>/<case>` from `models/<pipeline>` (its own scheduler
/// config) with the run options `options` as dfast's flags set them (`make_tiny_pipelines.py --flags`):
/// `scheduler`, `karras`, `timestep_spacing`, `eta`, `guidance_rescale`, `clip_skip`. Returns the latents'
/// relative L2 error against diffusers' and the fraction of image values within one level.
fn flagged_error(pipeline: &str, case: &str, options: &serde_json::Value) -> (f64, f64) {
    flagged_error_from(pipeline, pipeline, case, options)
}

/// As [`flagged_error`], generating from `models/<model>` (another export of the reference's weights).
fn flagged_error_from(model: &str, pipeline: &str, case: &str, options: &serde_json::Value) -> (f64, f64) {
    use dfast::scheduler::{SchedulerKind, SchedulerOptions, TimestepSpacing};
    let params = common::read_json(&common::references().join(pipeline).join(case).join("params.json"));
    let opts = dfast::pipeline::GenerateOptions {
        scheduler: options["scheduler"].as_str().map(|s| SchedulerKind::from_name(s).unwrap()),
        scheduler_options: SchedulerOptions {
            karras: options["karras"].as_bool().unwrap_or(false),
            timestep_spacing: options["timestep_spacing"].as_str().map(|s| TimestepSpacing::parse(s).unwrap()),
            eta: options["eta"].as_f64(),
        },
        guidance_rescale: options["guidance_rescale"].as_f64().map(|r| r as f32),
        clip_skip: options["clip_skip"].as_u64().map(|k| k as usize),
        ..common::reference_options(&params)
    };
    case_error_from(model, pipeline, case, &opts)
}

/// Generates with `opts` from `models/<pipeline>` and compares with reference case
/// `tests/references/<pipeline>/<case>`: the latents' relative L2 error and the fraction of image values
/// within one level.
fn case_error(pipeline: &str, case: &str, opts: &dfast::pipeline::GenerateOptions) -> (f64, f64) {
    case_error_from(pipeline, pipeline, case, opts)
}

/// As [`case_error`], generating from `models/<model>`.
fn case_error_from(model: &str, pipeline: &str, case: &str, opts: &dfast::pipeline::GenerateOptions) -> (f64, f64) {
    use dfast::pipeline::{Pipeline, PipelineDir};
    use dfast::runtime::Runtime;
    use dfast::settings::ExecutionProvider;
    let refs = common::references().join(pipeline).join(case);
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    let mut pipe = Pipeline::load(&runtime, PipelineDir::open(&common::model(model)).unwrap()).unwrap();
    let out = pipe.generate(opts, &mut |_, _| {}).unwrap_or_else(|e| panic!("{pipeline}/{case}: {e}"));
    let err = common::relative_l2(&out.latents, &common::read_npy(&refs.join("latents.npy")));
    let want_image = image::open(refs.join("image.png")).unwrap().to_rgb8();
    (err, common::fraction_within_one_level(out.image(), &want_image))
}

/// A flag's case matches diffusers given the same option, and the same run without the flag misses
/// diffusers' latents by more than ten times the tolerance (so that the test can fail).
fn check_flag(pipeline: &str, case: &str) {
    let params = common::read_json(&common::references().join(pipeline).join(case).join("params.json"));
    let options = &params["options"];
    let (err, close) = flagged_error(pipeline, case, options);
    assert!(err <= 1e-3, "{pipeline}/{case}: latents relative L2 {err:.2e} > 1e-3");
    assert!(close >= 0.999, "{pipeline}/{case}: only {:.4}% of pixel values within one level", close * 100.0);
    let without = serde_json::json!({ "scheduler": options["scheduler"] });
    let (unflagged, _) = flagged_error(pipeline, case, &without);
    assert!(unflagged > 1e-2, "{pipeline}/{case}: without the flag, still within {unflagged:.2e} of diffusers");
    eprintln!(
        "{pipeline}/{case}: latents relative L2 {err:.2e} ({unflagged:.2e} without the flag), {:.3}% of values within one level",
        close * 100.0
    );
}

#[test]
fn ddim_eta_draws_its_noise_from_the_seed() {
    check_flag("tiny-sd", "ddim-eta0.7");
}
#[test]
fn karras_sigmas_on_euler_and_dpm() {
    check_flag("tiny-sd", "euler-karras");
    check_flag("tiny-sdxl", "dpm++-karras");
}
#[test]
fn timestep_spacing_leading_trailing_linspace() {
    check_flag("tiny-sd", "euler-leading");
    check_flag("tiny-sd", "ddim-trailing");
    check_flag("tiny-sdxl", "euler-linspace");
}
#[test]
fn guidance_rescale_on_sd_and_sdxl() {
    check_flag("tiny-sd", "pndm-guidance-rescale0.7");
    check_flag("tiny-sdxl", "euler-guidance-rescale0.7");
}
#[test]
fn clip_skip_on_sd_and_sdxl() {
    check_flag("tiny-sd", "pndm-clip-skip1");
    check_flag("tiny-sdxl", "euler-clip-skip1");
}

/// The dynamo exports of the same weights: SD's text encoder rewritten from that exporter's graph, SDXL's
/// `hidden_states.N` outputs.
#[test]
fn clip_skip_on_the_dynamo_exports() {
    for (model, pipeline, case) in
        [("tiny-sd-dynamo", "tiny-sd", "pndm-clip-skip1"), ("tiny-sdxl-dynamo", "tiny-sdxl", "euler-clip-skip1")]
    {
        let params = common::read_json(&common::references().join(pipeline).join(case).join("params.json"));
        let (err, close) = flagged_error_from(model, pipeline, case, &params["options"]);
        assert!(err <= 1e-3 && close >= 0.999, "{model}/{case}: {err:.2e}, {close}");
        eprintln!("{model}/{case}: latents relative L2 {err:.2e}");
    }
}

/// SDXL-Turbo's configuration from the command line's flags alone (`--scheduler euler-a --timestep-spacing
/// trailing`, 1 and 4 steps, guidance 0) over the pipeline's own Euler config: diffusers' Turbo images, which
/// the config's leading spacing misses.
#[test]
fn sdxl_turbo_from_flags() {
    let turbo = serde_json::json!({ "scheduler": "euler-a", "timestep_spacing": "trailing" });
    let leading = serde_json::json!({ "scheduler": "euler-a" });
    for case in ["euler-a-turbo-1step", "euler-a-turbo-4step"] {
        let (err, close) = flagged_error("tiny-sdxl", case, &turbo);
        assert!(err <= 1e-3 && close >= 0.999, "tiny-sdxl/{case}: {err:.2e}, {close}");
        let (unflagged, _) = flagged_error("tiny-sdxl", case, &leading);
        assert!(unflagged > 1e-2, "tiny-sdxl/{case}: leading spacing within {unflagged:.2e}");
        eprintln!("tiny-sdxl/{case} from flags: latents relative L2 {err:.2e} ({unflagged:.2e} leading)");
    }
}

/// An LCM UNet (`time_cond_proj_dim`; models/tiny-lcm, `make_tiny_pipelines.py --lcm`) takes the guidance
/// scale as its input `timestep_cond` (diffusers' `get_guidance_scale_embedding`), without classifier-free
/// guidance: diffusers' LatentConsistencyModelPipeline at its own defaults (4 steps, guidance 8.5, which dfast
/// takes for that class) and at 2 steps, guidance 2. The embedding matters: guidance 1 (w = 0) misses the
/// 8.5 reference by far more than the tolerance.
#[test]
fn tiny_lcm_unet_takes_the_guidance_embedding() {
    let params = common::read_json(&common::references().join("tiny-lcm/lcm-4step-guidance8.5/params.json"));
    let defaults =
        dfast::pipeline::GenerateOptions { steps: None, guidance: None, ..common::reference_options(&params) };
    let (err, close) = case_error("tiny-lcm", "lcm-4step-guidance8.5", &defaults);
    assert!(err <= 1e-3 && close >= 0.999, "tiny-lcm at its defaults: {err:.2e}, {close}");
    eprintln!("tiny-lcm/lcm-4step-guidance8.5 (the class's defaults): latents relative L2 {err:.2e}");
    check("tiny-lcm", "lcm-2step-guidance2");
    let unguided = dfast::pipeline::GenerateOptions { guidance: Some(1.0), ..defaults };
    let (off, _) = case_error("tiny-lcm", "lcm-4step-guidance8.5", &unguided);
    assert!(off > 1e-2, "guidance 1 is within {off:.2e} of the guidance 8.5 reference");
    eprintln!("tiny-lcm at guidance 1 against the 8.5 reference: {off:.2e}");
}

#[test]
fn references_cover_every_scheduler() {
    for pipeline in ["tiny-sd", "tiny-sdxl"] {
        for scheduler in ["euler", "ddim", "pndm", "dpm++"] {
            assert!(Path::new(&common::references().join(pipeline).join(scheduler).join("latents.npy")).is_file());
        }
    }
}
