//! Helpers shared by the integration tests: paths, reference files, comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::ReadNpyExt;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn model(name: &str) -> PathBuf {
    root().join("models").join(name)
}

pub fn references() -> PathBuf {
    root().join("tests").join("references")
}

pub fn read_npy(path: &Path) -> ArrayD<f32> {
    ArrayD::<f32>::read_npy(std::fs::File::open(path).expect("reference file")).expect("float32 npy")
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference json")).expect("valid json")
}

/// ||a - b|| / ||b||.
pub fn relative_l2(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let num: f64 = a.iter().zip(b.iter()).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Fraction of RGB channel values that differ by at most one level.
pub fn fraction_within_one_level(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions(), "image sizes differ");
    let close = a.as_raw().iter().zip(b.as_raw().iter()).filter(|(x, y)| x.abs_diff(**y) <= 1).count();
    close as f64 / a.as_raw().len() as f64
}

/// Copies a pipeline folder so that a test can break it.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
}

/// `dfast generate --ort-lib lib ARGS` from `model` with the settings of the reference case folder `case` (its
/// params.json and scheduler_config.json), writing the image to `out` and the final latents to `latents`.
pub fn generate_case(
    case: &Path,
    model: &Path,
    lib: &Path,
    args: &[&str],
    out: &Path,
    latents: &Path,
) -> std::process::Output {
    let params = read_json(&case.join("params.json"));
    let n = |key: &str| params[key].as_u64().unwrap().to_string();
    std::process::Command::new(env!("CARGO_BIN_EXE_dfast"))
        .arg("generate")
        .arg("--ort-lib")
        .arg(lib)
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
        .arg(out)
        .arg("--save-latents")
        .arg(latents)
        .output()
        .unwrap()
}

/// Runs the dfast binary.
pub fn dfast(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dfast")).args(args).output().expect("dfast runs")
}

/// Asserts a failed run with one sentence on stderr, starting `error: `, that contains `needle`.
pub fn assert_clear_error(output: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic instead of an error: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "expected one line, got: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

/// The generation settings of a reference run (`tests/references/<pipeline>/<scheduler>/params.json`);
/// the scheduler is the pipeline's own unless the caller sets one.
pub fn reference_options(params: &serde_json::Value) -> dfast::pipeline::GenerateOptions {
    dfast::pipeline::GenerateOptions {
        prompt: params["prompt"].as_str().unwrap().into(),
        negative_prompt: Some(params["negative_prompt"].as_str().unwrap().into()),
        steps: Some(params["steps"].as_u64().unwrap() as usize),
        guidance: Some(params["guidance"].as_f64().unwrap() as f32),
        seed: params["seed"].as_u64().unwrap(),
        width: Some(params["width"].as_u64().unwrap() as usize),
        height: Some(params["height"].as_u64().unwrap() as usize),
        batch_size: 1,
        ..Default::default()
    }
}

/// UNet variants (`models/variants/`) that tests swap into a copy of a committed pipeline of the same weights:
/// `(variant, pipeline it belongs to)`. Both declare `timestep` as `[1]`; the dynamo one has static shapes for
/// the tiny-sd references' size (batch 2 with guidance, 64x64).
pub const UNET_VARIANTS: [(&str, &str); 2] =
    [("tiny-sd-unet-timestep1", "tiny-sd"), ("tiny-sd-dynamo-unet-static", "tiny-sd-dynamo")];

/// A copy of `models/<pipeline>` under `into` with its UNet replaced by `models/variants/<variant>`.
pub fn variant_pipeline(variant: &str, pipeline: &str, into: &Path) -> PathBuf {
    let dir = into.join(variant);
    copy_dir(&model(pipeline), &dir);
    std::fs::remove_dir_all(dir.join("unet")).unwrap();
    copy_dir(&model("variants").join(variant), &dir.join("unet"));
    dir
}

/// Generates one reference case (`tests/references/<reference>/<scheduler>`) from the pipeline folder `dir`
/// through the library on the CPU EP, and returns the relative L2 error of the final latents against
/// diffusers' and the fraction of image values within one level of diffusers' image.
pub fn reference_error(dir: &Path, reference: &str, scheduler: &str) -> (f64, f64) {
    use dfast::pipeline::{GenerateOptions, Pipeline, PipelineDir};
    use dfast::runtime::Runtime;
    use dfast::settings::ExecutionProvider;
    let refs = references().join(reference).join(scheduler);
    let params = read_json(&refs.join("params.json"));
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    let mut pipe = Pipeline::load(&runtime, PipelineDir::open(dir).unwrap()).unwrap();
    let opts = GenerateOptions {
        // The scheduler exactly as diffusers configured it (class, overrides such as v_prediction).
        scheduler_config: Some(refs.join("scheduler_config.json")),
        ..reference_options(&params)
    };
    let out = pipe.generate(&opts, &mut |_, _| {}).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let err = relative_l2(&out.latents, &read_npy(&refs.join("latents.npy")));
    let want_image = image::open(refs.join("image.png")).unwrap().to_rgb8();
    (err, fraction_within_one_level(out.image(), &want_image))
}

/// The generation settings of an img2img or inpainting reference case (`params.json` beside diffusers'
/// latents and images, made by `make_tiny_pipelines.py --img2img`): the image and mask as files, the strength
/// only where diffusers was given one (else the pipeline's default is under test), the size only where
/// diffusers was given one.
pub fn image_case_options(params: &serde_json::Value) -> dfast::pipeline::GenerateOptions {
    let path = |key: &str| params[key].as_str().map(|p| root().join(p));
    let size = |key: &str| params["size_given"].as_bool().unwrap().then(|| params[key].as_u64().unwrap() as usize);
    dfast::pipeline::GenerateOptions {
        prompt: params["prompt"].as_str().unwrap().into(),
        negative_prompt: Some(params["negative_prompt"].as_str().unwrap().into()),
        steps: Some(params["steps"].as_u64().unwrap() as usize),
        guidance: Some(params["guidance"].as_f64().unwrap() as f32),
        seed: params["seed"].as_u64().unwrap(),
        width: size("width"),
        height: size("height"),
        batch_size: params["num_images"].as_u64().unwrap() as usize,
        image: path("image"),
        mask: path("mask"),
        strength: params["strength"].as_f64(),
        ..Default::default()
    }
}

/// Runs the img2img or inpainting reference case `tests/references/<case>` from the pipeline folder `dir`
/// (CPU EP, the case's scheduler config) and returns the relative L2 error of the final latents against
/// diffusers' and, of the worst image, the fraction of values within one level of diffusers'.
pub fn image_case_error(dir: &Path, case: &str) -> (f64, f64) {
    use dfast::pipeline::{GenerateOptions, Pipeline, PipelineDir};
    use dfast::runtime::Runtime;
    use dfast::settings::ExecutionProvider;
    let refs = references().join(case);
    let params = read_json(&refs.join("params.json"));
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    let mut pipe = Pipeline::load(&runtime, PipelineDir::open(dir).unwrap()).unwrap();
    let opts =
        GenerateOptions { scheduler_config: Some(refs.join("scheduler_config.json")), ..image_case_options(&params) };
    let out = pipe.generate(&opts, &mut |_, _| {}).unwrap_or_else(|e| panic!("{} {case}: {e}", dir.display()));
    assert_eq!(out.strength, params["strength_used"].as_f64(), "{case}: the strength used");
    assert_eq!(
        (out.width as u64, out.height as u64),
        (params["width"].as_u64().unwrap(), params["height"].as_u64().unwrap())
    );
    let err = relative_l2(&out.latents, &read_npy(&refs.join("latents.npy")));
    let close = out
        .images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let file = if i == 0 { "image.png".to_string() } else { format!("image-{i}.png") };
            fraction_within_one_level(image, &image::open(refs.join(file)).unwrap().to_rgb8())
        })
        .fold(1.0, f64::min);
    assert_eq!(out.images.len() as u64, params["num_images"].as_u64().unwrap());
    (err, close)
}

/// Inputs for every input the model declares: batch 2, 8x8 latents, 16 tokens; deterministic values, the
/// timestep 500, attention masks all ones.
pub fn inputs_for(runtime: &dfast::runtime::Runtime, model: &Path) -> Vec<(String, dfast::runtime::HostTensor)> {
    use dfast::runtime::HostTensor;
    use ndarray::IxDyn;
    use ort::value::TensorElementType;
    let session = runtime.load(model).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(12345);
    let mut next = move || rand::Rng::random_range(&mut rng, -1.0f32..1.0);
    session
        .inputs()
        .iter()
        .map(|spec| {
            let rank = spec.dims.len();
            let shape: Vec<usize> = spec
                .dims
                .iter()
                .enumerate()
                .map(|(axis, &d)| match d {
                    d if d > 0 => d as usize,
                    _ if axis == 0 => 2,
                    _ if rank == 4 => 8,
                    _ => 16,
                })
                .collect();
            let n: usize = shape.iter().product();
            let tensor = match (spec.name.as_str(), spec.ty) {
                ("timestep", _) => HostTensor::F32(ArrayD::from_elem(IxDyn(&shape), 500.0)),
                (_, TensorElementType::Int64 | TensorElementType::Int32) => {
                    HostTensor::I64(ArrayD::from_elem(IxDyn(&shape), 1))
                }
                _ => HostTensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|_| next()).collect()).unwrap()),
            };
            (spec.name.clone(), tensor)
        })
        .collect()
}
