//! `dfast convert --lora`: a LoRA merged at conversion gives diffusers' `load_lora_weights` + `fuse_lora` latents
//! and image, in both LoRA formats and on both exporter styles (`make_lora_references.py`); the pipeline without
//! the LoRA is far from them, so the comparison can fail.

mod common;

use std::path::Path;

/// The tolerance of every parity test (latents relative L2).
const TOLERANCE: f64 = 1e-3;

fn dfast_convert(model: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    dfast_convert_with(model, out, "baseline", extra)
}

fn dfast_convert_with(model: &Path, out: &Path, profile: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["convert", "--model", model.to_str().unwrap(), "--profile", profile, "--precision", "fp32"];
    args.extend_from_slice(&["--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    common::dfast(&args)
}

/// Converts `pipeline` with `profile` and the reference case's LoRA at its scale into `dir/<profile>`.
fn convert_with_lora(pipeline: &str, case: &str, profile: &str, dir: &Path) -> std::path::PathBuf {
    let params = common::read_json(&common::references().join("tiny-sd").join(case).join("params.json"));
    let lora = common::root().join(params["lora"].as_str().unwrap());
    let scale = params["lora_scale"].as_f64().unwrap().to_string();
    let out = dir.join(profile);
    let run = dfast_convert_with(
        &common::model(pipeline),
        &out,
        profile,
        &["--lora", lora.to_str().unwrap(), "--lora-scale", &scale],
    );
    assert!(run.status.success(), "convert {profile} failed: {}", String::from_utf8_lossy(&run.stderr));
    out
}

/// Converts `pipeline` with the reference case's LoRA at its scale, and checks the result against diffusers.
fn check(pipeline: &str, case: &str) {
    let refs = common::references().join("tiny-sd").join(case);
    let params = common::read_json(&refs.join("params.json"));
    let lora = common::root().join(params["lora"].as_str().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let out = convert_with_lora(pipeline, case, "baseline", tmp.path());

    let (err, close) = common::reference_error(&out, "tiny-sd", case);
    eprintln!("{pipeline} + {case}: latents relative L2 {err:.2e}, {:.3}% of values within one level", close * 100.0);
    assert!(err <= TOLERANCE, "{pipeline}/{case}: latents relative L2 {err:.2e} > {TOLERANCE}");
    assert!(close >= 0.999, "{pipeline}/{case}: only {:.4}% of pixel values within one level", close * 100.0);

    // Without the LoRA the same settings are far from the reference: the test above can fail.
    let (unmerged, _) = common::reference_error(&common::model(pipeline), "tiny-sd", case);
    eprintln!("{pipeline} without the LoRA: latents relative L2 {unmerged:.2e}");
    assert!(unmerged >= 10.0 * TOLERANCE, "{pipeline}/{case}: the LoRA changes too little ({unmerged:.2e})");

    // The manifest records the file, its sha256 and the scale; the merge ran on the UNet and the text encoder.
    let manifest = dfast::manifest::Manifest::read(&out).unwrap().unwrap();
    assert_eq!(manifest.loras.len(), 1);
    let record = &manifest.loras[0];
    assert_eq!(record.file, lora.file_name().unwrap().to_str().unwrap());
    assert_eq!(record.scale, params["lora_scale"].as_f64().unwrap() as f32);
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(std::fs::read(&lora).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(record.sha256, sha);
    for component in ["unet", "text_encoder"] {
        let merged = manifest.pass_settings(component, "lora");
        assert!(merged.as_array().is_some_and(|a| a.len() == 1), "{component}: {merged}");
    }
}

/// diffusers' PEFT format (lora_A/lora_B, alpha in the header's PEFT config) with the LCM scheduler at guidance
/// 1.5: the LCM-LoRA configuration.
#[test]
fn peft_lora_with_lcm_torchscript_export() {
    check("tiny-sd", "lora-peft-lcm");
}
#[test]
fn peft_lora_with_lcm_dynamo_export() {
    check("tiny-sd-dynamo", "lora-peft-lcm");
}

/// kohya's format (lora_unet_/lora_te_, lora_down/lora_up, .alpha), with LoRAs on 3x3 convolutions.
#[test]
fn kohya_lora_torchscript_export() {
    check("tiny-sd", "lora-kohya-euler");
}
#[test]
fn kohya_lora_dynamo_export() {
    check("tiny-sd-dynamo", "lora-kohya-euler");
}

/// Repeated --lora flags, each with its own --lora-scale, add up: the PEFT LoRA twice at half the scale gives
/// the reference of once at the whole scale, and the manifest lists both.
#[test]
fn repeated_loras_add_up() {
    let refs = common::references().join("tiny-sd").join("lora-peft-lcm");
    let params = common::read_json(&refs.join("params.json"));
    let lora = common::root().join(params["lora"].as_str().unwrap());
    let half = (params["lora_scale"].as_f64().unwrap() / 2.0).to_string();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("twice");
    let lora = lora.to_str().unwrap();
    let run = dfast_convert(
        &common::model("tiny-sd"),
        &out,
        &["--lora", lora, "--lora-scale", &half, "--lora", lora, "--lora-scale", &half],
    );
    assert!(run.status.success(), "convert failed: {}", String::from_utf8_lossy(&run.stderr));
    let (err, _) = common::reference_error(&out, "tiny-sd", "lora-peft-lcm");
    eprintln!("twice at half the scale: latents relative L2 {err:.2e}");
    assert!(err <= TOLERANCE, "twice at half the scale: latents relative L2 {err:.2e} > {TOLERANCE}");
    let manifest = dfast::manifest::Manifest::read(&out).unwrap().unwrap();
    let scales: Vec<f32> = manifest.loras.iter().map(|l| l.scale).collect();
    assert_eq!(scales, [half.parse::<f32>().unwrap(); 2]);
}

/// The LoRA is merged before the seed progression's passes (fuse-qkv concatenates the merged q, k, v): the fp32
/// profiles still give diffusers' latents and image, and int8-dynamic's components stay within tests/convert.rs's
/// int8 tolerance (5e-2 relative L2) of the merged fp32 components.
#[test]
fn lora_survives_the_seed_progression_profiles() {
    use dfast::runtime::Runtime;
    use dfast::settings::ExecutionProvider;
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).unwrap();
    let outputs = |dir: &Path, component: &str| {
        let path = dir.join(component).join("model.onnx");
        let inputs = common::inputs_for(&runtime, &path);
        let mut model = runtime.load(&path).unwrap();
        let feeds = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        model.run(feeds).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    for case in ["lora-peft-lcm", "lora-kohya-euler"] {
        let tmp = tempfile::tempdir().unwrap();
        let baseline = convert_with_lora("tiny-sd", case, "baseline", tmp.path());
        for profile in ["sdpa", "fuse-qkv", "conv1x1", "fused", "int8-dynamic"] {
            let out = convert_with_lora("tiny-sd", case, profile, tmp.path());
            if profile == "int8-dynamic" {
                for component in ["unet", "text_encoder"] {
                    let want = outputs(&baseline, component);
                    let got = outputs(&out, component);
                    for (name, w) in &want {
                        let err = common::relative_l2(&got[name], w);
                        eprintln!("{case} {profile} {component}/{name}: relative L2 {err:.2e} to the merged fp32");
                        assert!(err <= 5e-2, "{case} {profile} {component}/{name}: relative L2 {err:.2e} > 5e-2");
                    }
                }
                continue;
            }
            let (err, close) = common::reference_error(&out, "tiny-sd", case);
            eprintln!("{case} {profile}: latents relative L2 {err:.2e}, {:.3}% within one level", close * 100.0);
            assert!(err <= TOLERANCE, "{case} {profile}: latents relative L2 {err:.2e} > {TOLERANCE}");
            assert!(close >= 0.999, "{case} {profile}: only {:.4}% of values within one level", close * 100.0);
        }
    }
}

/// Writes a safetensors file of f32 tensors.
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let begin = data.len();
        values.iter().for_each(|v| data.extend_from_slice(&v.to_le_bytes()));
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

/// A key that matches no module, a shape that does not fit, and a LoRA for another architecture: one sentence
/// each, naming the key (or saying what the file is for).
#[test]
fn bad_loras_are_refused_in_one_sentence() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::model("tiny-sd");
    let out = tmp.path().join("out");
    let lora = tmp.path().join("bad.safetensors");
    let pair = |module: &str, out_dim: usize, in_dim: usize| {
        vec![
            (format!("{module}.lora_A.weight"), vec![2, in_dim], vec![0.1; 2 * in_dim]),
            (format!("{module}.lora_B.weight"), vec![out_dim, 2], vec![0.1; 2 * out_dim]),
        ]
    };
    let write = |tensors: Vec<(String, Vec<usize>, Vec<f32>)>| {
        let t: Vec<(&str, Vec<usize>, Vec<f32>)> =
            tensors.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.clone())).collect();
        write_safetensors(&lora, &t);
    };
    let q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";

    // One module that exists, one that does not.
    let mut tensors = pair(q, 16, 16);
    tensors.extend(pair("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn9.to_q", 16, 16));
    write(tensors);
    let run = dfast_convert(&model, &out, &["--lora", lora.to_str().unwrap()]);
    common::assert_clear_error(
        &run,
        "key `unet.down_blocks.0.attentions.0.transformer_blocks.0.attn9.to_q.lora_A.weight`",
    );
    assert!(!out.exists(), "nothing is written on error");

    // A shape that does not fit (to_k reads the 8-wide text embedding).
    let mut tensors = pair(q, 16, 16);
    tensors.extend(pair("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 16, 16));
    write(tensors);
    let run = dfast_convert(&model, &out, &["--lora", lora.to_str().unwrap()]);
    common::assert_clear_error(&run, "attn2.to_k.lora_A.weight`: the LoRA is for a weight of shape [16, 16]");

    // An SDXL-sized LoRA: nothing fits.
    write(pair(q, 640, 640));
    let run = dfast_convert(&model, &out, &["--lora", lora.to_str().unwrap()]);
    common::assert_clear_error(&run, "is a LoRA for another architecture");

    // A Flux LoRA: no UNet or text encoder keys at all.
    write(pair("transformer.single_transformer_blocks.0.attn.to_q", 16, 16));
    let run = dfast_convert(&model, &out, &["--lora", lora.to_str().unwrap()]);
    common::assert_clear_error(&run, "a LoRA for another architecture");

    // An SDXL LoRA's second text encoder on a pipeline with one.
    write(pair("text_encoder_2.encoder.layers.0.self_attn.q_proj", 8, 8));
    let run = dfast_convert(&model, &out, &["--lora", lora.to_str().unwrap()]);
    common::assert_clear_error(&run, "changes the text_encoder_2, which this pipeline does not have");

    // Not a safetensors file; more scales than files.
    std::fs::write(&lora, b"not a safetensors file").unwrap();
    let run = dfast_convert(&model, &out, &["--lora", lora.to_str().unwrap()]);
    common::assert_clear_error(&run, "bad.safetensors");
    let run = dfast_convert(&model, &out, &["--lora-scale", "0.5"]);
    common::assert_clear_error(&run, "1 --lora-scale values for 0 --lora files");
}
