//! Whole conversions of the tiny pipelines: what `convert` writes and records.

use std::path::Path;

use super::calibrate::ACTIVATION_RANGES_FILE;
use super::{ConvertOptions, ModelCard, Profile, convert};
use crate::onnx::OnnxModel;
use crate::passes::testing::{Sizes, compare};
use crate::settings::{ExecutionProvider, Precision};

/// `dfast convert --ep cuda --precision fp16` of tiny-sd with `[precision.ranges]`: the ranges are
/// measured for the VAE decoder only, saved beside it and recorded in the manifest; with a margin
/// that puts the limit under the tiny decoder's largest activations, some values become islands, and
/// the converted decoder still matches the source. With the SDXL card, whose decoder otherwise stays
/// fp32, the profile's islands opt the decoder in (as `--vae-half` does).
#[test]
fn convert_measures_ranges_for_the_decoder_only() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("islands.toml");
    // The tiny decoder's activations reach about 16 on random latents: a limit of 8.
    std::fs::write(&profile, "name = \"islands\"\nextends = \"baseline\"\n[precision.ranges]\nmargin = 8188.0\n")
        .unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-sd");
    let out = dir.path().join("out");
    let opts = ConvertOptions {
        source: source.clone(),
        out: out.clone(),
        profile: Profile::load(profile.to_str().unwrap()).unwrap(),
        precision: Precision::Fp16,
        target: ExecutionProvider::Cuda,
        card: Some(ModelCard::load("sdxl").unwrap()),
        vae_half: false,
        calibration: Default::default(),
        force: true,
        loras: Vec::new(),
    };
    let manifest = convert(&opts, &mut |_| {}).unwrap();
    let record = |component: &str| {
        let c = manifest.components.iter().find(|c| c.component == component).unwrap();
        c.passes.iter().find(|p| p.pass == "precision").unwrap().settings.clone()
    };
    let report = manifest.components.iter().find(|c| c.component == "vae_decoder").unwrap();
    assert_eq!(report.precision, Precision::Fp16);
    let decoder = record("vae_decoder");
    let islands = decoder["out_of_range"].as_array().unwrap().len();
    assert!(islands > 0, "{decoder}");
    assert_eq!(decoder["limit"], serde_json::json!(8.0));
    assert!(record("unet").is_null());
    assert!(out.join("vae_decoder").join(ACTIVATION_RANGES_FILE).is_file());
    assert!(!out.join("unet").join(ACTIVATION_RANGES_FILE).exists());
    let before = OnnxModel::load(source.join("vae_decoder/model.onnx")).unwrap();
    let after = OnnxModel::load(out.join("vae_decoder/model.onnx")).unwrap();
    let err = compare(&before, &after, 3, Sizes { batch: 1, spatial: 16, other: 1 });
    eprintln!("tiny-sd vae_decoder, fp16 with {islands} values in fp32 islands: relative L2 {err:.2e}");
    assert!(err <= 1e-2, "relative L2 {err:.2e}");
}
