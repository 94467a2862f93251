//! A pipeline exported by Hugging Face Optimum's own exporter (`models/tiny-sd-optimum`, made by
//! experiment-scripts/make_optimum_fixture.py: optimum-onnx 0.1.0, opset 18, int64 ids, scalar float timestep)
//! makes diffusers' final latents and images with all four schedulers (fp32, CPU EP): latents within a relative
//! L2 of 1e-4 (about 1e-6 is measured) and every pixel value within one level.

mod common;

const PIPELINE: &str = "tiny-sd-optimum";

fn check(scheduler: &str) {
    let (err, close) = common::reference_error(&common::model(PIPELINE), PIPELINE, scheduler);
    eprintln!(
        "{PIPELINE}/{scheduler}: latents relative L2 {err:.2e}, {:.3}% of values within one level",
        close * 100.0
    );
    assert!(err <= 1e-4, "{PIPELINE}/{scheduler}: latents relative L2 {err:.2e} > 1e-4");
    assert!(close == 1.0, "{PIPELINE}/{scheduler}: only {:.4}% of pixel values within one level", close * 100.0);
}

/// The references can tell pipelines apart: the export's weights (made with diffusers 0.35) are not tiny-sd's,
/// and tiny-sd's references do not fit it.
#[test]
fn optimum_export_differs_from_tiny_sd_references() {
    let (err, _) = common::reference_error(&common::model(PIPELINE), "tiny-sd", "euler");
    assert!(err > 0.1, "{PIPELINE} matches tiny-sd's references (relative L2 {err:.2e}): not an export of its own");
}

#[test]
fn optimum_export_pndm() {
    check("pndm");
}
#[test]
fn optimum_export_euler() {
    check("euler");
}
#[test]
fn optimum_export_ddim_v_prediction_trailing() {
    check("ddim");
}
#[test]
fn optimum_export_dpm_karras() {
    check("dpm++");
}
