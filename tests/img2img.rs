//! img2img and inpainting against diffusers' `StableDiffusion(XL)Img2ImgPipeline` and
//! `StableDiffusion(XL)InpaintPipeline` on the tiny pipelines (tests/references/<pipeline>/img2img-* and
//! inpaint-*, made by experiment-scripts/make_tiny_pipelines.py --img2img): final latents within 1e-3 relative
//! L2, images within one level, for both exporter styles, every scheduler, 4-channel and 9-channel UNets; the
//! image processor's Lanczos resize against Pillow's; and the command line's sentences for bad input.

mod common;

use std::path::Path;

use common::{assert_clear_error, dfast};

fn check(dir: &Path, case: &str) {
    let (err, close) = common::image_case_error(dir, case);
    let model = dir.display();
    assert!(err <= 1e-3, "{model} {case}: latents relative L2 {err:.2e} > 1e-3");
    assert!(close >= 0.999, "{model} {case}: only {:.4}% of pixel values within one level", close * 100.0);
    eprintln!("{model} {case}: latents relative L2 {err:.2e}, {:.3}% of values within one level", close * 100.0);
}

const SCHEDULERS: [&str; 4] = ["pndm", "euler", "ddim", "dpm++"];

/// SD img2img, the four schedulers (PNDM at diffusers' default strength 0.8, the others at given strengths,
/// DPM-Solver++ with two images from one seed), in both exporter styles (the same weights).
#[test]
fn tiny_sd_img2img_matches_diffusers() {
    for model in ["tiny-sd", "tiny-sd-dynamo"] {
        for scheduler in SCHEDULERS {
            check(&common::model(model), &format!("tiny-sd/img2img-{scheduler}"));
        }
    }
}

/// SDXL img2img (Euler at diffusers' default strength 0.3), both exporter styles.
#[test]
fn tiny_sdxl_img2img_matches_diffusers() {
    for model in ["tiny-sdxl", "tiny-sdxl-dynamo"] {
        for scheduler in SCHEDULERS {
            check(&common::model(model), &format!("tiny-sdxl/img2img-{scheduler}"));
        }
    }
}

/// Inpainting with ordinary 4-channel UNets: the latents blended with the noised image each step. SD at
/// strength 1.0 (its default) and at 0.75 with an explicit size the image and mask are resized to; SDXL at
/// its default 0.9999.
#[test]
fn inpainting_with_a_4_channel_unet_matches_diffusers() {
    check(&common::model("tiny-sd"), "tiny-sd/inpaint-pndm");
    check(&common::model("tiny-sd"), "tiny-sd/inpaint-euler-64x48");
    check(&common::model("tiny-sdxl"), "tiny-sdxl/inpaint-euler");
    check(&common::model("tiny-sdxl-dynamo"), "tiny-sdxl/inpaint-euler");
}

/// Inpainting with a 9-channel inpainting UNet (mask and masked-image latents concatenated to its input): at
/// strength 1.0, and at 0.8 with two images (the image encoded, then the noise, then the masked image, all
/// from one generator).
#[test]
fn inpainting_with_a_9_channel_unet_matches_diffusers() {
    check(&common::model("tiny-sd-inpaint"), "tiny-sd-inpaint/inpaint-pndm");
    check(&common::model("tiny-sd-inpaint"), "tiny-sd-inpaint/inpaint-dpm++");
}

/// The resize diffusers' image processor makes (Pillow's Lanczos), equal to Pillow's value for value: shrinking,
/// growing, one axis, RGB and gray.
#[test]
fn lanczos_resize_equals_pillow() {
    let reference = common::read_json(&common::references().join("inputs").join("lanczos.json"));
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let n = |k: &str| case[k].as_u64().unwrap() as usize;
        let (w, h, c) = (n("width"), n("height"), n("channels"));
        // The generator's pattern: (x * 37 + y * 91 + c * 53 + (x * y) % 17 * 11) % 256.
        let pattern: Vec<u8> = (0..h)
            .flat_map(|y| {
                (0..w).flat_map(move |x| {
                    (0..c).map(move |ch| ((x * 37 + y * 91 + ch * 53 + (x * y) % 17 * 11) % 256) as u8)
                })
            })
            .collect();
        let got = dfast::pipeline::resample::resize_lanczos(&pattern, c, (w, h), (n("new_width"), n("new_height")));
        let want: Vec<u8> = case["pixels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            off,
            0,
            "{w}x{h}x{c} -> {}x{}: {off} of {} values differ from Pillow",
            n("new_width"),
            n("new_height"),
            want.len()
        );
    }
}

fn input(name: &str) -> String {
    common::references().join("inputs").join(name).to_str().unwrap().to_string()
}

/// `dfast generate` with `--image` and `--mask` on the embedded tiny-sd: the image at the input's size rounded
/// down, with the image, mask and strength in its settings.
#[test]
fn cli_inpainting_writes_the_image_with_its_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.png");
    let (image, mask) = (input("picture-83x53.png"), input("mask-83x53.png"));
    let run = dfast(&[
        "generate",
        "--prompt",
        "a red fox",
        "--steps",
        "3",
        "--seed",
        "1",
        "--image",
        &image,
        "--mask",
        &mask,
        "--strength",
        "0.7",
        "--scheduler",
        "euler",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    // int(3 x 0.7) = 2 steps of the 3.
    assert_eq!(
        (report["width"].as_u64(), report["height"].as_u64(), report["unet_calls"].as_u64()),
        (Some(80), Some(48), Some(2))
    );
    assert_eq!(::image::open(&out).unwrap().to_rgb8().dimensions(), (80, 48));
    let run = dfast(&["inspect", out.to_str().unwrap(), "--json"]);
    let text: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!((text["image"].as_str(), text["mask"].as_str()), (Some(image.as_str()), Some(mask.as_str())));
    assert_eq!(text["strength"], "0.7");
}

/// Bad input is one sentence naming the flag or file, and nothing is written.
#[test]
fn cli_bad_image_input_is_one_sentence_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.png");
    let out_arg = out.to_str().unwrap().to_string();
    let (image, mask) = (input("picture-83x53.png"), input("mask-83x53.png"));
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--prompt", "a red fox", "--steps", "4", "--seed", "1", "--out", &out_arg];
        args.extend_from_slice(extra);
        let output = dfast(&args);
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
        output
    };
    assert_clear_error(&run(&["--mask", &mask]), "--mask needs --image");
    for strength in ["0", "1.5", "-0.2", "nan"] {
        let output = run(&["--image", &image, "--strength", strength]);
        assert_clear_error(&output, &format!("invalid value `{strength}` for --strength"));
        assert_eq!(output.status.code(), Some(2), "--strength {strength}");
    }
    assert_clear_error(
        &run(&["--image", &image, "--strength", "0.2"]),
        "--strength 0.2 with --steps 4 leaves no denoising step",
    );

    let unreadable = tmp.path().join("notes.png");
    std::fs::write(&unreadable, "not an image").unwrap();
    let output = run(&["--image", unreadable.to_str().unwrap()]);
    assert_clear_error(&output, "--image cannot be read");
    assert_clear_error(&output, "notes.png");
    assert_clear_error(
        &run(&["--image", &tmp.path().join("missing.jpg").to_string_lossy()]),
        "missing.jpg: --image cannot be opened",
    );

    let colour = tmp.path().join("colour.png");
    let mut rgb = ::image::open(&mask).unwrap().to_rgb8();
    rgb.put_pixel(5, 6, ::image::Rgb([250, 10, 10]));
    rgb.save(&colour).unwrap();
    let output = run(&["--image", &image, "--mask", colour.to_str().unwrap()]);
    assert_clear_error(&output, "colour.png: --mask must be one channel");
    let small = tmp.path().join("small.png");
    ::image::GrayImage::new(40, 20).save(&small).unwrap();
    assert_clear_error(&run(&["--image", &image, "--mask", small.to_str().unwrap()]), "--mask is 40x20, but --image");

    assert_clear_error(&run(&["--image", &image, "--width", "64"]), "--width 64 differs from the width of --image");
    let latents = tmp.path().join("noise.npy");
    assert_clear_error(
        &run(&["--image", &image, "--latents", latents.to_str().unwrap()]),
        "--latents cannot go with --image",
    );
    let pixart = common::model("tiny-pixart");
    assert_clear_error(
        &run(&["--model", pixart.to_str().unwrap(), "--image", &image]),
        "PixArt-α pipelines run text-to-image only",
    );
    let inpaint = common::model("tiny-sd-inpaint");
    assert_clear_error(&run(&["--model", inpaint.to_str().unwrap(), "--image", &image]), "an inpainting UNet");
    assert_clear_error(&run(&["--model", inpaint.to_str().unwrap()]), "give --image and --mask");
}

/// The img2img and inpainting classes of model_index.json run; classes dfast does not run, and a
/// model_index.json without a class, are refused by name.
#[test]
fn pipeline_classes_are_recognised_or_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pipe");
    common::copy_dir(&common::model("tiny-sd"), &dir);
    let index = dir.join("model_index.json");
    let original = std::fs::read_to_string(&index).unwrap();
    let with_class = |class: &str| original.replace("\"StableDiffusionPipeline\"", &format!("\"{class}\""));
    for class in ["StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline", "OnnxStableDiffusionPipeline"] {
        std::fs::write(&index, with_class(class)).unwrap();
        let opened = dfast::pipeline::PipelineDir::open(&dir).unwrap_or_else(|e| panic!("{class}: {e}"));
        assert_eq!(opened.kind, dfast::pipeline::PipelineKind::StableDiffusion, "{class}");
    }
    let out = tmp.path().join("out.png");
    for (text, needle) in [
        (
            with_class("StableDiffusionUpscalePipeline"),
            "pipeline class `StableDiffusionUpscalePipeline` is not one dfast runs",
        ),
        (with_class("StableDiffusion3Pipeline"), "pipeline class `StableDiffusion3Pipeline` is not one dfast runs"),
        ("[]".to_string(), "no `_class_name`"),
        (original.replace("\"_class_name\": \"StableDiffusionPipeline\",", ""), "no `_class_name`"),
    ] {
        std::fs::write(&index, text).unwrap();
        let run =
            dfast(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "x", "--out", out.to_str().unwrap()]);
        assert_clear_error(&run, needle);
        assert_clear_error(&run, "model_index.json");
        assert!(!out.exists());
    }
    for class in ["StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"] {
        let sdxl = common::model("tiny-sdxl");
        let copy = tmp.path().join(class);
        common::copy_dir(&sdxl, &copy);
        let text = std::fs::read_to_string(copy.join("model_index.json")).unwrap();
        std::fs::write(
            copy.join("model_index.json"),
            text.replace("\"StableDiffusionXLPipeline\"", &format!("\"{class}\"")),
        )
        .unwrap();
        assert_eq!(
            dfast::pipeline::PipelineDir::open(&copy).unwrap().kind,
            dfast::pipeline::PipelineKind::StableDiffusionXl
        );
        let refiner = text.replace(
            "\"StableDiffusionXLPipeline\",",
            &format!("\"{class}\",\n  \"requires_aesthetics_score\": true,"),
        );
        std::fs::write(copy.join("model_index.json"), refiner).unwrap();
        let err = dfast::pipeline::PipelineDir::open(&copy).unwrap_err().to_string();
        assert!(err.contains("requires_aesthetics_score"), "{err}");
    }
}

/// PixArt without resolution binning at a size its transformer's patches do not tile (200 / 8 = 25 latent
/// pixels, patch size 2): one sentence, not a panic in the scheduler's step.
#[test]
fn pixart_size_the_patches_do_not_tile_is_one_sentence() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.png");
    for model in ["tiny-pixart", "tiny-pixart-dynamo"] {
        let dir = common::model(model);
        let run = dfast(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "a red fox",
            "--seed",
            "1",
            "--steps",
            "3",
            "--width",
            "200",
            "--height",
            "200",
            "--no-resolution-binning",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_clear_error(&run, "--width 200 is not a positive multiple of 8 x 2 = 16");
        assert!(!out.exists());
    }
}
