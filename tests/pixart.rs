//! PixArt-α against diffusers' `PixArtAlphaPipeline`: final latents and images of the tiny PixArt pipelines
//! (tests/references/tiny-pixart/, made by experiment-scripts/make_tiny_pipelines.py --pixart) in both exporter
//! styles, T5 token ids and prompt embeddings, resolution binning and resize/crop
//! (tests/references/pixart_binning.json, made by experiment-scripts/make_pixart_binning_references.py), and
//! the DiT's FLOPs.

mod common;

use std::path::{Path, PathBuf};

use dfast::pipeline::binning::{classify_height_width_bin, resize_and_crop, table_for};
use dfast::pipeline::pixart::{MAX_SEQUENCE_LENGTH, T5Tokenizer, preprocess};
use dfast::pipeline::{GenerateOptions, Pipeline, PipelineDir};
use dfast::runtime::{HostTensor, Runtime};
use dfast::settings::ExecutionProvider;
use ndarray::{ArrayD, IxDyn};

fn reference_dir(case: &str) -> PathBuf {
    common::references().join("tiny-pixart").join(case)
}

/// Generates reference case `case` from the pipeline folder `dir` through the library (CPU EP) and checks it:
/// final latents within 1e-3 relative L2 of diffusers', and 99.9% of the image's values within one level
/// (of the crop the reference keeps, for the large images).
fn check(dir: &Path, case: &str) {
    let refs = reference_dir(case);
    let params = common::read_json(&refs.join("params.json"));
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    let mut pipe = Pipeline::load(&runtime, PipelineDir::open(dir).unwrap()).unwrap();
    let size = |k: &str| Some(params[k].as_u64().unwrap() as usize);
    let opts = GenerateOptions {
        prompt: params["prompt"].as_str().unwrap().into(),
        negative_prompt: params["negative_prompt_given"]
            .as_bool()
            .unwrap()
            .then(|| params["negative_prompt"].as_str().unwrap().into()),
        steps: size("steps"),
        guidance: Some(params["guidance"].as_f64().unwrap() as f32),
        seed: params["seed"].as_u64().unwrap(),
        width: size("width"),
        height: size("height"),
        scheduler_config: Some(refs.join("scheduler_config.json")),
        batch_size: 1,
        no_resolution_binning: !params["resolution_binning"].as_bool().unwrap(),
        ..Default::default()
    };
    assert_eq!(pipe.generation_size(&opts).unwrap(), (size("binned_height").unwrap(), size("binned_width").unwrap()));
    let out = pipe.generate(&opts, &mut |_, _| {}).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let err = common::relative_l2(&out.latents, &common::read_npy(&refs.join("latents.npy")));
    let mut image = out.image().clone();
    assert_eq!((image.height() as usize, image.width() as usize), (size("height").unwrap(), size("width").unwrap()));
    if let Some(crop) = params.get("image_crop") {
        let at = |k: &str| crop[k].as_u64().unwrap() as u32;
        image = ::image::imageops::crop_imm(&image, at("left"), at("top"), at("width"), at("height")).to_image();
    }
    let want = ::image::open(refs.join("image.png")).unwrap().to_rgb8();
    let close = common::fraction_within_one_level(&image, &want);
    let model = dir.display();
    assert!(err <= 1e-3, "{model}/{case}: latents relative L2 {err:.2e} > 1e-3");
    assert!(close >= 0.999, "{model}/{case}: only {:.4}% of pixel values within one level", close * 100.0);
    eprintln!("{model}/{case}: latents relative L2 {err:.2e}, {:.3}% of values within one level", close * 100.0);
}

/// The square and binned cases of models/tiny-pixart (the dynamo export holds the same weights).
const CASES: [&str; 8] = [
    "dpm++",
    "euler",
    "ddim",
    "dpm++-binned-200x300",
    "euler-binned-300x200",
    "dpm++-no-binning-64x96",
    "euler-1step",
    "ddim-1step",
];

#[test]
fn tiny_pixart_dpm_solver() {
    check(&common::model("tiny-pixart"), "dpm++");
}

#[test]
fn tiny_pixart_euler_and_ddim() {
    for case in ["euler", "ddim"] {
        check(&common::model("tiny-pixart"), case);
    }
}

/// Non-square sizes that binning moves (200x300 -> 176x256 ... as diffusers' 256 table says), back to the
/// requested size by resize and crop; and a size generated as it is with binning off.
#[test]
fn tiny_pixart_binned_non_square_sizes_and_no_binning() {
    for case in ["dpm++-binned-200x300", "euler-binned-300x200", "dpm++-no-binning-64x96"] {
        check(&common::model("tiny-pixart"), case);
    }
}

/// With one step diffusers' pipeline keeps the scheduler's `pred_original_sample`.
#[test]
fn tiny_pixart_one_step() {
    for case in ["euler-1step", "ddim-1step"] {
        check(&common::model("tiny-pixart"), case);
    }
}

#[test]
fn tiny_pixart_dynamo_export_all_cases() {
    for case in CASES {
        check(&common::model("tiny-pixart-dynamo"), case);
    }
}

/// `resolution` and `aspect_ratio`: the sample_size-128 transformer swapped into a copy of tiny-pixart, at a
/// size the 1024 table bins (1000x600 -> 1280x768).
#[test]
fn tiny_pixart_added_conditions_at_sample_size_128() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-pixart-1024");
    common::copy_dir(&common::model("tiny-pixart"), &dir);
    std::fs::remove_dir_all(dir.join("transformer")).unwrap();
    common::copy_dir(&common::model("variants").join("tiny-pixart-1024").join("transformer"), &dir.join("transformer"));
    check(&dir, "dpm++-binned-1000x600");
}

/// DPM-Solver++ and PNDM give no `pred_original_sample`; diffusers fails on one step with them, dfast says so.
#[test]
fn one_step_with_a_scheduler_without_pred_original_sample_is_refused() {
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).unwrap();
    let mut pipe = Pipeline::load(&runtime, PipelineDir::open(&common::model("tiny-pixart")).unwrap()).unwrap();
    let opts = GenerateOptions { prompt: "a cat".into(), steps: Some(1), ..Default::default() };
    let err = pipe.generate(&opts, &mut |_, _| {}).err().unwrap().to_string();
    assert!(err.contains("pred_original_sample") && err.contains("--scheduler euler"), "{err}");
}

#[test]
fn t5_token_ids_and_masks_equal_diffusers() {
    let rows = common::read_json(&reference_dir("tokens.json"));
    let tok = T5Tokenizer::from_dir(&common::model("tiny-pixart").join("tokenizer"), MAX_SEQUENCE_LENGTH).unwrap();
    let rows = rows.as_array().unwrap();
    for row in rows {
        let prompt = row["prompt"].as_str().unwrap();
        let ints = |k: &str| -> Vec<i64> { row[k].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect() };
        assert_eq!(preprocess(prompt), row["preprocessed"].as_str().unwrap(), "{prompt:?}");
        let got = tok.encode(&preprocess(prompt)).unwrap();
        assert_eq!(got.ids, ints("input_ids"), "{prompt:?}");
        assert_eq!(got.attention_mask, ints("attention_mask"), "{prompt:?}");
        assert_eq!(got.truncated, row["truncated"].as_bool().unwrap(), "{prompt:?}");
    }
    assert!(rows.len() >= 10 && rows.iter().any(|r| r["truncated"].as_bool().unwrap()));
}

/// T5's `last_hidden_state` for the prompt and the negative prompt equals diffusers' prompt embeddings, in both
/// exporter styles.
#[test]
fn t5_prompt_embeddings_equal_diffusers() {
    let refs = reference_dir("text");
    let params = common::read_json(&refs.join("params.json"));
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).unwrap();
    for model in ["tiny-pixart", "tiny-pixart-dynamo"] {
        let dir = common::model(model);
        let tok = T5Tokenizer::from_dir(&dir.join("tokenizer"), MAX_SEQUENCE_LENGTH).unwrap();
        let mut encoder = runtime.load(&dir.join("text_encoder").join("model.onnx")).unwrap();
        for (key, file) in [("prompt", "prompt_embeds.npy"), ("negative_prompt", "negative_prompt_embeds.npy")] {
            let encoded = tok.encode(&preprocess(params[key].as_str().unwrap())).unwrap();
            let row = |v: Vec<i64>| HostTensor::I64(ArrayD::from_shape_vec(IxDyn(&[1, v.len()]), v).unwrap());
            let mut out = encoder
                .run(vec![("input_ids", row(encoded.ids)), ("attention_mask", row(encoded.attention_mask))])
                .unwrap();
            let hidden = out.remove("last_hidden_state").unwrap();
            let err = common::relative_l2(&hidden, &common::read_npy(&refs.join(file)));
            assert!(err <= 1e-5, "{model} {key}: relative L2 {err:.2e}");
        }
    }
}

fn binning_reference() -> serde_json::Value {
    common::read_json(&common::references().join("pixart_binning.json"))
}

fn usize_of(v: &serde_json::Value) -> usize {
    v.as_u64().unwrap() as usize
}

#[test]
fn aspect_ratio_tables_equal_diffusers() {
    let refs = binning_reference();
    for (sample_size, want) in refs["tables"].as_object().unwrap() {
        let table = table_for(sample_size.parse().unwrap()).unwrap();
        let want: Vec<(String, usize, usize)> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_str().unwrap().to_string(), usize_of(&r[1]), usize_of(&r[2])))
            .collect();
        let got: Vec<(String, usize, usize)> = table.iter().map(|&(k, h, w)| (k.to_string(), h, w)).collect();
        assert_eq!(got, want, "table for sample_size {sample_size}");
    }
    assert_eq!(refs["tables"].as_object().unwrap().len(), 3);
    assert!(table_for(48).is_err());
}

#[test]
fn bins_equal_diffusers() {
    let refs = binning_reference();
    let rows = refs["bins"].as_array().unwrap();
    let mut moved = 0;
    for row in rows {
        let [h, w, sample_size, bh, bw] = std::array::from_fn(|i| usize_of(&row[i]));
        let got = classify_height_width_bin(h, w, table_for(sample_size).unwrap());
        assert_eq!(got, (bh, bw), "{h}x{w} (height x width) at sample_size {sample_size}");
        moved += usize::from(got != (h, w));
    }
    assert!(rows.len() > 500 && moved > 400, "{} cases, {moved} moved", rows.len());
}

#[test]
fn resize_and_crop_equals_diffusers() {
    let refs = binning_reference();
    let cases = refs["resize_and_crop"].as_array().unwrap();
    for case in cases {
        let shape = |key: &str| -> Vec<usize> { case[key].as_array().unwrap().iter().map(usize_of).collect() };
        let values = |key: &str| -> Vec<f32> {
            case[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
        };
        let input = ArrayD::from_shape_vec(IxDyn(&shape("input_shape")), values("input")).unwrap();
        let want = ArrayD::from_shape_vec(IxDyn(&shape("output_shape")), values("output")).unwrap();
        let (nh, nw) = (usize_of(&case["new_height"]), usize_of(&case["new_width"]));
        let got = resize_and_crop(&input, nh, nw).unwrap();
        assert_eq!(got.shape(), want.shape(), "{:?} -> {nh}x{nw}", input.shape());
        let worst = got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "{:?} -> {nh}x{nw}: largest difference {worst:e}", input.shape());
    }
    assert_eq!(cases.len(), 5);
}

/// The DiT's FLOPs per step (batch 2: guidance) from `inspect` equal the count worked out from its
/// config.json (PixArtTransformer2DModel's layers), in both exporter styles.
#[test]
fn inspect_counts_the_dit_flops_per_step() {
    use dfast::inspect::{Size, inspect};
    for model in ["tiny-pixart", "tiny-pixart-dynamo"] {
        let dir = common::model(model);
        let size = Size::default_for(&dir);
        let config = common::read_json(&dir.join("transformer").join("config.json"));
        let get = |k: &str| config[k].as_u64().unwrap() as f64;
        let (p, c, c_out, dc) = (get("patch_size"), get("in_channels"), get("out_channels"), get("caption_channels"));
        let d = get("num_attention_heads") * get("attention_head_dim");
        let (b, l) = (2.0, 120.0);
        let n = (size.height as f64 / 8.0 / p) * (size.width as f64 / 8.0 / p);
        let per_layer = 2.0 * b * n * d * d * 4.0 // self-attention: Q, K, V, out
            + 4.0 * b * n * n * d // Q·K^T and P·V
            + 2.0 * b * n * d * d * 2.0 + 2.0 * 2.0 * b * l * d * d // cross-attention: Q, out; K, V of the caption
            + 4.0 * b * n * l * d
            + 2.0 * b * n * d * 4.0 * d * 2.0; // feed-forward, 4x wide
        let want = 2.0 * b * n * d * c * p * p // patch embedding
            + 2.0 * b * l * (dc * d + d * d) // caption projection
            + 2.0 * b * (256.0 * d + d * d + 6.0 * d * d) // timestep embedding and adaLN-single
            + get("num_layers") * per_layer
            + 2.0 * b * n * d * p * p * c_out; // final projection
        let reports = inspect(&dir, size).unwrap();
        let dit = reports.iter().find(|r| r.component == "transformer").unwrap();
        assert_eq!(dit.nodes_without_shapes, 0, "{model}");
        assert!((dit.gflops * 1e9 - want).abs() <= 1.0, "{model}: {} GFLOP, want {}", dit.gflops, want / 1e9);
    }
}

/// Inputs like the pipeline's for one PixArt component: T5 on a tokenized prompt; the transformer on a guidance
/// batch of two whose key padding masks differ (24 and 15 tokens); latents of 32x32. Values are seeded noise.
fn pixart_inputs(model: &dfast::runtime::Model, tokenizer: &T5Tokenizer) -> Vec<(String, HostTensor)> {
    let noise = |n: usize, seed: u64| -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    };
    let encoded = tokenizer.encode("a photo of an astronaut riding a horse on mars, highly detailed").unwrap();
    let row = |v: Vec<i64>| ArrayD::from_shape_vec(IxDyn(&[1, v.len()]), v).unwrap();
    let f32s = |shape: &[usize], seed: u64| {
        HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), noise(shape.iter().product(), seed)).unwrap())
    };
    let n = MAX_SEQUENCE_LENGTH;
    model
        .inputs()
        .iter()
        .map(|spec| {
            let tensor = match spec.name.as_str() {
                "input_ids" => HostTensor::I64(row(encoded.ids.clone())),
                "attention_mask" => HostTensor::I64(row(encoded.attention_mask.clone())),
                "encoder_attention_mask" => HostTensor::I64(ArrayD::from_shape_fn(IxDyn(&[2, n]), |i| {
                    i64::from(i[1] < if i[0] == 0 { 24 } else { 15 })
                })),
                "hidden_states" => f32s(&[2, 4, 32, 32], 1),
                "encoder_hidden_states" => f32s(&[2, n, 32], 2),
                "timestep" => HostTensor::F32(ArrayD::from_elem(IxDyn(&[2]), 500.0)),
                "resolution" => HostTensor::F32(ArrayD::from_shape_fn(IxDyn(&[2, 2]), |_| 256.0)),
                "aspect_ratio" => HostTensor::F32(ArrayD::from_elem(IxDyn(&[2, 1]), 1.0)),
                "latent_sample" => f32s(&[1, 4, 32, 32], 3),
                other => panic!("unexpected input {other}"),
            };
            (spec.name.clone(), tensor)
        })
        .collect()
}

/// `dfast convert` on both tiny PixArt exports: every component of every fp32 profile matches the unconverted
/// one on the pipeline's kind of inputs (relative L2 <= 1e-5; int8-dynamic 5e-2), the attention profiles fuse
/// all four of the DiT's attention blocks (self-attention, and cross-attention with the key padding mask),
/// and a converted pipeline still makes diffusers' image.
#[test]
fn converted_tiny_pixart_matches_the_source_graphs() {
    use dfast::convert::{self, ConvertOptions, Profile};
    use dfast::settings::ExecutionProvider;
    use dfast::settings::Precision;
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for pipeline in ["tiny-pixart", "tiny-pixart-dynamo"] {
        let source = common::model(pipeline);
        let tokenizer = T5Tokenizer::from_dir(&source.join("tokenizer"), MAX_SEQUENCE_LENGTH).unwrap();
        for profile in ["baseline", "sdpa", "fuse-qkv", "fused", "int8-dynamic"] {
            let out = tmp.path().join(format!("{pipeline}-{profile}"));
            let opts = ConvertOptions {
                source: source.clone(),
                out: out.clone(),
                profile: Profile::load(profile).unwrap(),
                precision: Precision::Fp32,
                target: ExecutionProvider::Cpu,
                card: None,
                vae_half: false,
                calibration: Default::default(),
                force: false,
                loras: Vec::new(),
            };
            let manifest = convert::convert(&opts, &mut |_| {}).unwrap_or_else(|e| panic!("{pipeline}/{profile}: {e}"));
            let tolerance = if profile == "int8-dynamic" { 5e-2 } else { 1e-5 };
            for component in &manifest.components {
                let name = &component.component;
                let outputs = |dir: &Path| {
                    let mut model = runtime.load(&dir.join(name).join("model.onnx")).unwrap();
                    let inputs = pixart_inputs(&model, &tokenizer);
                    model.run(inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()).unwrap()
                };
                let (want, got) = (outputs(&source), outputs(&out));
                for (output, w) in &want {
                    let err = common::relative_l2(&got[output], w);
                    assert!(err <= tolerance, "{pipeline}/{profile}/{name}/{output}: relative L2 {err:.2e}");
                }
            }
            if profile == "fuse-qkv" {
                // One MatMul for q, k, v of each self-attention and one for k, v of each cross-attention.
                let dit = manifest.components.iter().find(|c| c.component == "transformer").unwrap();
                let fused = dit.passes.iter().find(|p| p.pass == "fuse-qkv").unwrap();
                assert_eq!(fused.rewrites, 4, "{pipeline}: {fused:?}");
            }
            if profile == "int8-dynamic" {
                // The DiT is quantized (the profile's components name the transformer, as they name the UNet).
                let dit = manifest.components.iter().find(|c| c.component == "transformer").unwrap();
                let int8 = dit.passes.iter().find(|p| p.pass == "int8-dynamic").unwrap();
                assert!(int8.rewrites > 0, "{pipeline}: {int8:?}");
            }
            if matches!(profile, "sdpa" | "fuse-qkv" | "fused") {
                // Self- and cross-attention of both blocks: MultiHeadAttention, the cross-attention with the
                // mask as key_padding_mask (input 4); no Softmax or native Attention left.
                let dit = dfast::onnx::OnnxModel::load(out.join("transformer").join("model.onnx")).unwrap();
                let ops = dit.op_histogram();
                let mha: Vec<_> = dit.graph().node.iter().filter(|n| n.op_type() == "MultiHeadAttention").collect();
                let padded = mha.iter().filter(|n| n.input.get(4).is_some_and(|m| !m.is_empty())).count();
                assert_eq!((mha.len(), padded), (4, 2), "{pipeline}/{profile}: {ops:?}");
                assert!(
                    !ops.contains_key("Softmax") && !ops.contains_key("Attention"),
                    "{pipeline}/{profile}: {ops:?}"
                );
            }
            if profile != "int8-dynamic" {
                check(&out, "dpm++");
            }
        }
    }
}

/// With a PixArt model card, an fp16 conversion keeps T5 in fp32 (it overflows in fp16) and halves the rest.
#[test]
fn fp16_conversion_keeps_t5_fp32_by_the_model_card() {
    use dfast::convert::{self, ConvertOptions, ModelCard, Profile};
    use dfast::settings::ExecutionProvider;
    use dfast::settings::Precision;
    let tmp = tempfile::tempdir().unwrap();
    let opts = ConvertOptions {
        source: common::model("tiny-pixart"),
        out: tmp.path().join("fp16"),
        profile: Profile::load("baseline").unwrap(),
        precision: Precision::Fp16,
        target: ExecutionProvider::Cuda,
        card: Some(ModelCard::load("pixart-alpha-512").unwrap()),
        vae_half: false,
        calibration: Default::default(),
        force: true,
        loras: Vec::new(),
    };
    let manifest = convert::convert(&opts, &mut |_| {}).unwrap();
    let precision = |name: &str| manifest.components.iter().find(|c| c.component == name).unwrap().precision;
    assert_eq!(precision("text_encoder"), Precision::Fp32);
    assert_eq!(precision("transformer"), Precision::Fp16);
    assert_eq!(precision("vae_decoder"), Precision::Fp16);
    assert_eq!(manifest.model_card.as_deref(), Some("pixart-alpha-512"));
}

/// `dfast bench` runs a PixArt pipeline like the others: a row with its class, the text encoding timed apart.
#[test]
fn bench_runs_a_pixart_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("results");
    let model = common::model("tiny-pixart");
    let args = ["bench", "--model", model.to_str().unwrap(), "--profile", "baseline,sdpa", "--ep", "cpu"];
    let run = common::dfast(
        &[&args[..], &["--steps", "2", "--warmup", "0", "--runs", "1", "--json", "--out", out.to_str().unwrap()]]
            .concat(),
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["pipeline"], "PixArtAlphaPipeline");
        assert_eq!(row["scheduler"], "DPMSolverMultistepScheduler");
        assert_eq!((row["width"].as_u64(), row["height"].as_u64()), (Some(256), Some(256)));
        assert!(row["text_encode_ms"].as_f64().unwrap() > 0.0 && row["unet_step_ms"].as_f64().unwrap() > 0.0);
        assert!(out.join(row["image"].as_str().unwrap()).is_file());
    }
}

/// The command line: `--no-resolution-binning` reaches the pipeline (diffusers' latents at 64x96 itself), and
/// bad input is one sentence.
#[test]
fn cli_no_resolution_binning_and_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let refs = reference_dir("dpm++-no-binning-64x96");
    let params = common::read_json(&refs.join("params.json"));
    let model = common::model("tiny-pixart");
    let (image, latents) = (tmp.path().join("out.png"), tmp.path().join("out.npy"));
    let s = |k: &str| params[k].to_string();
    let run = common::dfast(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        params["prompt"].as_str().unwrap(),
        "--negative-prompt",
        params["negative_prompt"].as_str().unwrap(),
        "--steps",
        &s("steps"),
        "--seed",
        &s("seed"),
        "--width",
        &s("width"),
        "--height",
        &s("height"),
        "--scheduler-config",
        refs.join("scheduler_config.json").to_str().unwrap(),
        "--no-resolution-binning",
        "--out",
        image.to_str().unwrap(),
        "--save-latents",
        latents.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let err = common::relative_l2(&common::read_npy(&latents), &common::read_npy(&refs.join("latents.npy")));
    assert!(err <= 1e-3, "relative L2 {err:.2e}");
    let base = ["generate", "--model", model.to_str().unwrap(), "--prompt", "a cat", "--out", image.to_str().unwrap()];
    let with = |extra: &[&str]| common::dfast(&[&base[..], extra].concat());
    common::assert_clear_error(
        &with(&["--no-resolution-binning", "--width", "100"]),
        "--width 100 is not a positive multiple of 8",
    );
    common::assert_clear_error(&with(&["--steps", "1"]), "pred_original_sample");
}
