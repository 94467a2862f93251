//! The `dfast generate` command end to end: outputs against diffusers' references, and one clear
//! sentence with a non-zero exit for each kind of bad input.

mod common;

use common::{assert_clear_error, dfast};

use std::path::Path;
use std::process::Command;

use ndarray::ArrayD;
use ndarray_npy::WriteNpyExt;

const PROMPT: &str = "a photo of an astronaut riding a horse on mars, highly detailed";
const NEGATIVE: &str = "blurry, low quality";

fn generate_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["generate", "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--steps", "10", "--out", out];
    args.extend_from_slice(extra);
    args
}

fn assert_matches_reference(latents: &Path, image: &Path, reference: &str) {
    let dir = common::references().join(reference);
    let err = common::relative_l2(&common::read_npy(latents), &common::read_npy(&dir.join("latents.npy")));
    assert!(err <= 1e-3, "{reference}: latents relative L2 {err:.2e}");
    let got = image::open(image).unwrap().to_rgb8();
    let want = image::open(dir.join("image.png")).unwrap().to_rgb8();
    assert!(common::fraction_within_one_level(&got, &want) >= 0.999, "{reference}: image differs");
}

#[test]
fn default_model_and_seed_reproduce_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let lat = tmp.path().join("x.npy");
    let (out_s, lat_s) = (out.to_str().unwrap(), lat.to_str().unwrap());
    // No --model: the embedded tiny-sd with its default scheduler (PNDM); seed 0 is the reference's noise.
    let run = dfast(&generate_args(out_s, &["--seed", "0", "--save-latents", lat_s]));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("ms/step") && stdout.contains("total"), "summary line: {stdout}");
    assert_matches_reference(&lat, &out, "tiny-sd/pndm");
}

#[test]
fn given_latents_and_scheduler_override_reproduce_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.jpg");
    let png = tmp.path().join("x.png");
    let lat = tmp.path().join("x.npy");
    let noise = common::references().join("noise_seed42_1x4x8x12.npy");
    let model = common::model("tiny-sdxl");
    let common_args = ["--model", model.to_str().unwrap(), "--latents", noise.to_str().unwrap(), "--width", "96"];
    let mut extra = common_args.to_vec();
    extra.extend(["--height", "64", "--scheduler", "euler", "--save-latents", lat.to_str().unwrap()]);
    let run = dfast(&generate_args(png.to_str().unwrap(), &extra));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_matches_reference(&lat, &png, "tiny-sdxl/euler");

    // JPEG output decodes to an image of the requested size.
    let mut extra = common_args.to_vec();
    extra.extend(["--height", "64"]);
    let run = dfast(&generate_args(out.to_str().unwrap(), &extra));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (96, 64));

    // --scheduler swaps the class and keeps the config's values (tiny-sd's PNDM config -> Euler).
    let run = dfast(&generate_args(
        png.to_str().unwrap(),
        &["--seed", "0", "--scheduler", "euler", "--save-latents", lat.to_str().unwrap()],
    ));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_matches_reference(&lat, &png, "tiny-sd/euler");
}

#[test]
fn missing_component_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    common::copy_dir(&common::model("tiny-sd"), &model);
    std::fs::remove_file(model.join("unet").join("model.onnx")).unwrap();
    let out = tmp.path().join("x.png");
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--model", model.to_str().unwrap()]));
    assert_clear_error(&run, "unet/model.onnx: missing pipeline file");
}

#[test]
fn missing_tokenizer_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    common::copy_dir(&common::model("tiny-sdxl"), &model);
    std::fs::remove_file(model.join("tokenizer_2").join("merges.txt")).unwrap();
    let out = tmp.path().join("x.png");
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--model", model.to_str().unwrap()]));
    assert_clear_error(&run, "tokenizer_2/merges.txt: missing pipeline file");
}

#[test]
fn folder_that_is_not_a_pipeline_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--model", tmp.path().to_str().unwrap()]));
    assert_clear_error(&run, "model_index.json is missing");
    let run = Command::new(env!("CARGO_BIN_EXE_dfast"))
        .args(generate_args(out.to_str().unwrap(), &["--model", "no-such-org/no-such-model"]))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_clear_error(&run, "not in the Hugging Face cache");
}

#[test]
fn size_not_divisible_by_eight_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--width", "60"]));
    assert_clear_error(&run, "--width 60 is not a positive multiple of 8");
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--height", "100"]));
    assert_clear_error(&run, "--height 100 is not a positive multiple of 8");
}

#[test]
fn unknown_scheduler_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--scheduler", "lms"]));
    assert_clear_error(&run, "lms");
}

/// What a scheduler config says wrong is one sentence naming that file, not only what is wrong.
#[test]
fn a_bad_scheduler_config_names_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    for (name, text, says) in [
        ("class.json", r#"{"_class_name": "LMSDiscreteScheduler"}"#, "LMSDiscreteScheduler` is not supported"),
        ("beta.json", r#"{"_class_name": "EulerDiscreteScheduler", "beta_schedule": "sigmoid"}"#, "sigmoid"),
    ] {
        let config = tmp.path().join(name);
        std::fs::write(&config, text).unwrap();
        let run = dfast(&generate_args(out.to_str().unwrap(), &["--scheduler-config", config.to_str().unwrap()]));
        assert_clear_error(&run, says);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(&config.display().to_string()), "{name}: {stderr}");
        assert!(!out.exists());
    }
}

/// A scheduler or prompt flag that the scheduler, the guidance or the pipeline has no use for is refused in
/// one sentence naming the flag (diffusers would drop it silently), and no image is written.
#[test]
fn flags_a_scheduler_or_pipeline_lacks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let pixart = common::model("tiny-pixart");
    for (flags, says) in [
        (vec!["--scheduler", "ddim", "--karras"], "--karras needs a scheduler with Karras sigmas"),
        (vec!["--scheduler", "euler-a", "--karras"], "EulerAncestralDiscreteScheduler has none"),
        (vec!["--eta", "0.5"], "--eta is DDIM's (--scheduler ddim); PNDMScheduler takes no eta"),
        (vec!["--scheduler", "lcm", "--timestep-spacing", "trailing"], "does not apply to LCMScheduler"),
        (vec!["--guidance", "1", "--guidance-rescale", "0.5"], "which is off at --guidance 1"),
        (vec!["--clip-skip", "5"], "--clip-skip 5 cannot be applied: the text encoder has no residual stream 5"),
        (vec!["--model", pixart.to_str().unwrap(), "--clip-skip", "1"], "--clip-skip is for SD and SDXL"),
    ] {
        let run = dfast(&generate_args(out.to_str().unwrap(), &flags));
        assert_clear_error(&run, says);
        assert!(!out.exists(), "{flags:?}");
    }
}

#[test]
fn latents_of_wrong_shape_or_dtype_are_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let wrong_shape = tmp.path().join("shape.npy");
    ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 4, 4, 4]))
        .write_npy(std::fs::File::create(&wrong_shape).unwrap())
        .unwrap();
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--latents", wrong_shape.to_str().unwrap()]));
    assert_clear_error(&run, "latents have shape [1, 4, 4, 4], expected [1, 4, 8, 8]");
    let wrong_dtype = tmp.path().join("dtype.npy");
    ArrayD::<f64>::zeros(ndarray::IxDyn(&[1, 4, 8, 8]))
        .write_npy(std::fs::File::create(&wrong_dtype).unwrap())
        .unwrap();
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--latents", wrong_dtype.to_str().unwrap()]));
    assert_clear_error(&run, "expected a float32 .npy array");
}

#[test]
fn missing_onnx_runtime_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let missing = tmp.path().join("libonnxruntime.so.1.31.1");
    let args = generate_args(out.to_str().unwrap(), &["--ort-lib", missing.to_str().unwrap()]);
    assert_clear_error(&dfast(&args), "ONNX Runtime library not found");
    let run = Command::new(env!("CARGO_BIN_EXE_dfast"))
        .args(generate_args(out.to_str().unwrap(), &[]))
        .env("ORT_DYLIB_PATH", &missing)
        .output()
        .unwrap();
    assert_clear_error(&run, "(from ORT_DYLIB_PATH)");
}

#[test]
fn unwritable_output_is_a_clear_error() {
    let run = dfast(&generate_args("/no/such/folder/x.png", &[]));
    assert_clear_error(&run, "folder /no/such/folder does not exist");
    let run = dfast(&generate_args("x.gif", &[]));
    assert_clear_error(&run, "must end in .png, .jpg or .jpeg");
}

#[test]
fn unknown_execution_provider_is_a_clear_error() {
    let run = dfast(&generate_args("x.png", &["--ep", "tpu"]));
    assert_clear_error(&run, "unknown execution provider `tpu`");
}

/// A Hugging Face hub cache under `cache` holding tiny-sd as the repo `dfast/tiny-sd`.
fn fake_hub_cache(cache: &Path) {
    let repo = cache.join("models--dfast--tiny-sd");
    common::copy_dir(&common::model("tiny-sd"), &repo.join("snapshots").join("0123abcd"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
}

#[test]
fn repo_id_resolves_offline_from_the_hugging_face_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let lat = tmp.path().join("x.npy");
    let args = generate_args(
        out.to_str().unwrap(),
        &["--model", "dfast/tiny-sd", "--seed", "0", "--save-latents", lat.to_str().unwrap()],
    );

    let hub_cache = tmp.path().join("hub-cache");
    fake_hub_cache(&hub_cache);
    let run = Command::new(env!("CARGO_BIN_EXE_dfast")).args(&args).env("HF_HUB_CACHE", &hub_cache).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_matches_reference(&lat, &out, "tiny-sd/pndm");

    // Without HF_HUB_CACHE, HF_HOME/hub is the cache.
    let hf_home = tmp.path().join("hf-home");
    fake_hub_cache(&hf_home.join("hub"));
    std::fs::remove_file(&out).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_dfast"))
        .args(&args)
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", &hf_home)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(out.is_file());
}

#[test]
fn truncated_prompt_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let long = "a very long prompt that keeps going ".repeat(16);
    let run = dfast(&["generate", "--prompt", &long, "--steps", "1", "--out", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("warning: the prompt is longer than 75 tokens"), "stderr: {stderr}");
}

/// A UNet exported with static shapes (batch 2 with guidance, 64x64) asked for another size or batch: one
/// sentence naming the input, its declared shape and the requested size, not ONNX Runtime's message.
#[test]
fn static_shape_unet_at_another_size_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (variant, pipeline) = common::UNET_VARIANTS[1];
    let model = common::variant_pipeline(variant, pipeline, tmp.path());
    let (model, out) = (model.to_str().unwrap(), tmp.path().join("x.png"));
    let out = out.to_str().unwrap();
    let run = dfast(&generate_args(out, &["--model", model, "--width", "96", "--height", "64"]));
    assert_clear_error(&run, "input `sample` is declared [2, 4, 8, 8], which cannot take a 96x64 image");
    let run = dfast(&generate_args(out, &["--model", model, "--guidance", "1"]));
    assert_clear_error(&run, "at batch 1 (that needs [1, 4, 8, 8])");
    // At the size it was exported for, it runs (tests/parity.rs checks its numbers).
    let run = dfast(&generate_args(out, &["--model", model]));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

/// `dfast inspect ... --json | head -c 10`: the reader closes the pipe early; dfast ends quietly (no panic,
/// nothing on stderr), as command-line tools do.
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dfast"))
        .args(["inspect", common::model("tiny-sdxl").to_str().unwrap(), "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // A one-page pipe: the ~9 KB of JSON cannot all be written before the reader closes it.
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a pipe descriptor this process owns.
    assert!(unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } >= 4096);
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout); // close the pipe, as `head -c 10` does
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "expected a quiet exit, got: {stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert!(out.status.success() || out.status.signal() == Some(13), "{:?}", out.status);
}

/// A model file cut short is one sentence naming it, from inspect and from convert (not a pass's complaint).
#[test]
fn a_truncated_model_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-sd");
    common::copy_dir(&common::model("tiny-sd"), &model);
    let unet = model.join("unet/model.onnx");
    let bytes = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &bytes[..bytes.len() * 6 / 10]).unwrap();
    assert_clear_error(&dfast(&["inspect", model.to_str().unwrap()]), "unet/model.onnx: not a");
    let out = tmp.path().join("out");
    let run =
        dfast(&["convert", "--model", model.to_str().unwrap(), "--profile", "sdpa", "--out", out.to_str().unwrap()]);
    assert_clear_error(&run, "unet/model.onnx: not a");
}

/// One UNet, one FLOP count: inspecting its file counts at its pipeline's size, as inspecting the folder does.
#[test]
fn inspect_counts_a_model_file_at_its_pipelines_size() {
    let json = |path: &Path| -> serde_json::Value {
        let run = dfast(&["inspect", path.to_str().unwrap(), "--json"]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        serde_json::from_slice(&run.stdout).unwrap()
    };
    let folder = common::model("tiny-sd");
    let all = json(&folder);
    let unet = all.as_array().unwrap().iter().find(|r| r["component"] == "unet").unwrap();
    let file = json(&folder.join("unet").join("model.onnx"));
    assert_eq!(file[0]["gflops"], unet["gflops"], "file {} vs folder {}", file[0]["gflops"], unet["gflops"]);
}

/// Negative numbers: accepted where they mean something (`--guidance`), a range error naming the flag where
/// they do not; argument errors exit with 2, errors found while running with 1.
#[test]
fn negative_numbers_and_exit_statuses() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let out = out.to_str().unwrap();
    let run = dfast(&generate_args(out, &["--guidance", "-3"]));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for (flag, value, needle) in [
        ("--width", "-8", "invalid value `-8` for --width: expected a positive whole number"),
        ("--seed", "-1", "invalid value `-1` for --seed: expected a whole number from 0 to 18446744073709551615"),
        ("--height", "0", "invalid value `0` for --height: expected a positive whole number"),
    ] {
        let run = dfast(&generate_args(out, &[flag, value]));
        assert_clear_error(&run, needle);
        assert_eq!(run.status.code(), Some(2), "{flag} {value}");
    }
    let run = dfast(&generate_args(out, &["--width", "60"]));
    assert_clear_error(&run, "not a positive multiple of 8");
    assert_eq!(run.status.code(), Some(1));
    // A zero count is an argument error (exit 2) on every command, as `--num-images 0` is.
    let model = common::model("tiny-sd");
    let model = model.to_str().unwrap();
    for args in [
        &["generate", "--prompt", "x", "--out", out, "--num-images", "0"][..],
        &["bench", "--model", model, "--out", tmp.path().to_str().unwrap(), "--runs", "0"],
        &["unet-step", model, "--inputs", "none.npz", "--runs", "0"],
        &["tune", "--model", model, "--runs", "0"],
    ] {
        let run = dfast(args);
        assert_clear_error(&run, "invalid value `0` for --");
        assert_eq!(run.status.code(), Some(2), "{args:?}");
    }
}

/// More steps than the scheduler's training timesteps: a warning up front with the number of UNet calls
/// (diffusers runs them, so dfast does too; DDIM refuses, as diffusers does).
#[test]
fn steps_above_the_training_timesteps_warn_first() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let run = dfast(&[
        "generate",
        "--prompt",
        "x",
        "--steps",
        "1001",
        "--scheduler",
        "euler",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.starts_with("warning: --steps 1001 is more than the scheduler's 1000 training timesteps"),
        "{stderr}"
    );
    assert!(stderr.contains("1001 UNet calls"), "{stderr}");
    let run =
        dfast(&["generate", "--prompt", "x", "--steps", "1001", "--scheduler", "ddim", "--out", out.to_str().unwrap()]);
    assert_clear_error(&run, "exceed the 1000 training timesteps");
}

/// Output folders: a missing parent outside the current folder is refused (it used to be created up from
/// the filesystem root); under the current folder it is created.
#[test]
fn missing_output_parents_outside_the_current_folder_are_refused() {
    let model = common::model("tiny-sd");
    let run = dfast(&[
        "convert",
        "--model",
        model.to_str().unwrap(),
        "--profile",
        "sdpa",
        "--out",
        "/nonexistent-dfast/a/out",
    ]);
    assert_clear_error(&run, "folder /nonexistent-dfast/a does not exist");
    assert!(!Path::new("/nonexistent-dfast").exists());
    let csvs = common::root().join("benchmarks");
    let run = dfast(&["report", csvs.to_str().unwrap(), "--out", "/nonexistent-dfast/report"]);
    assert_clear_error(&run, "folder /nonexistent-dfast does not exist");
    let tmp = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_dfast"))
        .current_dir(tmp.path())
        .args(["convert", "--model", model.to_str().unwrap(), "--profile", "baseline", "--out", "new/deeper/out"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(tmp.path().join("new/deeper/out/dfast-manifest.json").is_file());
}

/// Help: what generate's flags mean, the EP's values, and no runtime flags on commands that run no model.
#[test]
fn help_describes_the_flags_and_offers_only_what_works() {
    let help = String::from_utf8_lossy(&dfast(&["generate", "--help"]).stdout).to_string();
    for needle in ["What to draw", "What to steer away from", "Image width in pixels", "Image height in pixels"] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    assert!(help.contains("[possible values: cpu, cuda, tensorrt, openvino]"), "{help}");
    for command in ["report", "inspect"] {
        let help = String::from_utf8_lossy(&dfast(&[command, "--help"]).stdout).to_string();
        assert!(!help.contains("--ort-lib") && !help.contains("--ep-option"), "{command}: {help}");
    }
}

/// `--revision` and `--subfolder` for repos in the Hugging Face cache (the `onnx` revision convention, ONNX
/// files in `onnx/`), and what is missing said exactly.
#[test]
fn hub_revision_and_subfolder() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let repo = cache.join("models--dfast--tiny-sd");
    common::copy_dir(&common::model("tiny-sd"), &repo.join("snapshots").join("feedbeef").join("onnx"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("onnx"), "feedbeef").unwrap();
    let out = tmp.path().join("x.png");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dfast"))
            .args(generate_args(out.to_str().unwrap(), &[&["--model", "dfast/tiny-sd"][..], extra].concat()))
            .env("HF_HUB_CACHE", &cache)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    assert_clear_error(&run(&[]), "is in the Hugging Face cache at");
    assert_clear_error(&run(&[]), "but not at revision `main` (it has: onnx); pass --revision");
    assert_clear_error(&run(&["--revision", "onnx"]), "that snapshot has no model_index.json");
    for revision in ["onnx", "feedbeef"] {
        let ok = run(&["--revision", revision, "--subfolder", "onnx"]);
        assert!(ok.status.success(), "{revision}: {}", String::from_utf8_lossy(&ok.stderr));
    }
    assert_clear_error(&run_missing(&out), "is not a folder and is not in the Hugging Face cache");
}

fn run_missing(out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dfast"))
        .args(generate_args(out.to_str().unwrap(), &["--model", "nobody/nothing"]))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// `--version` names the commit and the ONNX Runtime libraries found; `completions` prints a script (without
/// the hidden `bench-worker`);
/// `generate --json` prints one JSON object that matches what was written.
#[test]
fn version_completions_and_json() {
    let version = String::from_utf8_lossy(&dfast(&["--version"]).stdout).to_string();
    assert!(version.starts_with(&format!("dfast {} (commit ", env!("CARGO_PKG_VERSION"))), "{version}");
    assert!(version.contains(&format!("ONNX Runtime {} (cpu): ", dfast::runtime::ORT_VERSION)), "{version}");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let run = dfast(&["completions", shell]);
        let script = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success() && script.contains("generate") && script.contains("ep-option"), "{shell}");
        // The hidden worker subcommand is not offered.
        assert!(!script.contains("bench-worker"), "{shell}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--seed", "7", "--json"]));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("one JSON object on stdout");
    assert_eq!(report["seed"], 7);
    assert_eq!(report["images"], serde_json::json!([out.to_str().unwrap()]));
    assert_eq!((report["width"].as_u64(), report["steps"].as_u64()), (Some(64), Some(10)));
    assert_eq!(
        report["timings_s"]["unet_steps"].as_array().unwrap().len(),
        report["unet_calls"].as_u64().unwrap() as usize
    );
    assert!(out.is_file());
}

/// `--num-images 2`: one batch through the UNet, files OUT-0/OUT-1, each PNG saying how it was made
/// (`dfast inspect IMAGE` reads it back); the first image's latents are the single image's of the same
/// seed (torch draws the batch's noise as one sequence), the second differs.
#[test]
fn several_images_per_prompt_with_their_settings_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("one.png");
    let one_latents = tmp.path().join("one.npy");
    let run = dfast(&generate_args(
        single.to_str().unwrap(),
        &["--seed", "5", "--save-latents", one_latents.to_str().unwrap()],
    ));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let batch = tmp.path().join("many.png");
    let batch_latents = tmp.path().join("many.npy");
    let run = dfast(&generate_args(
        batch.to_str().unwrap(),
        &["--seed", "5", "--num-images", "2", "--save-latents", batch_latents.to_str().unwrap()],
    ));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(!batch.exists() && tmp.path().join("many-0.png").is_file() && tmp.path().join("many-1.png").is_file());
    let one = common::read_npy(&one_latents);
    let many = common::read_npy(&batch_latents);
    assert_eq!(many.shape(), &[2, 4, 8, 8]);
    let first = many.slice(ndarray::s![0..1, .., .., ..]).to_owned().into_dyn();
    let second = many.slice(ndarray::s![1..2, .., .., ..]).to_owned().into_dyn();
    assert!(common::relative_l2(&first, &one) < 1e-4, "{}", common::relative_l2(&first, &one));
    assert!(common::relative_l2(&second, &one) > 1e-2);

    let run = dfast(&["inspect", tmp.path().join("many-1.png").to_str().unwrap(), "--json"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(text["prompt"], PROMPT);
    assert_eq!(text["negative_prompt"], NEGATIVE);
    assert_eq!((text["seed"].as_str(), text["image_index"].as_str()), (Some("5"), Some("1")));
    assert_eq!((text["steps"].as_str(), text["scheduler"].as_str()), (Some("10"), Some("PNDMScheduler")));
    assert_eq!(
        (text["guidance"].as_str(), text["size"].as_str(), text["ep"].as_str()),
        (Some("7.5"), Some("64x64"), Some("cpu"))
    );
    assert!(text["software"].as_str().unwrap().starts_with("dfast "));
}

/// A JPEG keeps the same settings as a PNG, in EXIF, and `dfast inspect IMAGE.jpg` reads them back; a JPEG
/// without them is said so (exit 0), a file that is not a JPEG is one error naming it.
#[test]
fn jpeg_keeps_its_settings_in_exif() {
    let tmp = tempfile::tempdir().unwrap();
    let jpg = tmp.path().join("fox.jpg");
    let png = tmp.path().join("fox.png");
    for out in [&jpg, &png] {
        let run = dfast(&generate_args(out.to_str().unwrap(), &["--seed", "5"]));
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let read = |path: &Path| {
        let run = dfast(&["inspect", path.to_str().unwrap(), "--json"]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        serde_json::from_slice::<serde_json::Value>(&run.stdout).unwrap()
    };
    let (from_jpg, from_png) = (read(&jpg), read(&png));
    assert_eq!(from_jpg["prompt"], PROMPT);
    assert_eq!((from_jpg["seed"].as_str(), from_jpg["size"].as_str()), (Some("5"), Some("64x64")));
    assert_eq!(from_jpg, from_png);
    let text = dfast(&["inspect", jpg.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("prompt: {PROMPT}\n")));

    let plain = tmp.path().join("plain.jpg");
    image::open(&png).unwrap().save(&plain).unwrap();
    let run = dfast(&["inspect", plain.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("plain.jpg: no EXIF metadata (not made by dfast generate?)"), "{stdout}");

    let not_jpeg = tmp.path().join("not.jpg");
    std::fs::copy(&png, &not_jpeg).unwrap();
    assert_clear_error(&dfast(&["inspect", not_jpeg.to_str().unwrap()]), "not.jpg: not a JPEG image");
}

/// Running out of memory (in a child process limited to 4 GB of address space, never the test machine's
/// memory): one sentence with the size that ran out and a smaller one to try, and none of ONNX Runtime's
/// own coloured log lines, which `-v` shows as plain text.
#[test]
fn out_of_memory_names_the_size_and_onnx_runtime_logs_only_with_v() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let run = |verbose: bool| {
        // Past the memory estimate, which would refuse this size up front.
        let args = ["generate", "--prompt", "x", "--steps", "1", "--width", "2048", "--height", "2048"];
        let tail = ["--no-memory-check", "--out", out.to_str().unwrap(), "-v"];
        let tail = if verbose { &tail[..] } else { &tail[..3] };
        dfast_limited(&[&args[..], tail].concat(), libc::RLIMIT_AS, 4 << 30)
    };
    let quiet = run(false);
    assert_clear_error(&quiet, "ran out of memory in");
    assert_clear_error(&quiet, "at 2048x2048 with 1 image(s) per prompt; try a smaller size, e.g. --width ");
    // The size suggested fits the memory estimate (half of each side, 1024x1024, did not fit either).
    let stderr = String::from_utf8_lossy(&quiet.stderr).to_string();
    let side: usize = stderr.split("--width ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(side < 1024 && side.is_multiple_of(16) && stderr.trim().ends_with(&format!("--height {side}")), "{stderr}");
    let verbose = run(true);
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert!(stderr.contains("onnxruntime Error"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes on a non-terminal: {stderr}");
}

/// `--prompt-file`: one run per line (plain or JSON with its own settings), one pipeline load, files
/// OUT-0, OUT-1, ...; the JSON line set to the reference's prompt, seed and steps reproduces diffusers.
#[test]
fn prompt_file_runs_each_line_with_its_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("prompts.txt");
    let json = serde_json::json!({"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": 0, "steps": 10});
    std::fs::write(&file, format!("# two prompts\na red fox\n{json}\n")).unwrap();
    let (out, lat) = (tmp.path().join("x.png"), tmp.path().join("x.npy"));
    let run = dfast(&[
        "generate",
        "--prompt-file",
        file.to_str().unwrap(),
        "--steps",
        "2",
        "--seed",
        "9",
        "--out",
        out.to_str().unwrap(),
        "--save-latents",
        lat.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("x-0.png: 64x64, 2 steps") && stdout.contains("seed 9"), "{stdout}");
    assert_matches_reference(&tmp.path().join("x-1.npy"), &tmp.path().join("x-1.png"), "tiny-sd/pndm");
    std::fs::write(&file, "{\"prompt\": \"x\", \"sed\": 1}\n").unwrap();
    let run = dfast(&["generate", "--prompt-file", file.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_clear_error(&run, "line 1: not a prompt object: unknown field `sed`");
}

/// What `command` draws on a terminal: its stderr on a pseudo-terminal (progress bars are drawn only there),
/// split into frames at each carriage return.
fn terminal_frames(args: &[&str]) -> Vec<String> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let (mut leader, mut follower) = (0, 0);
    let winsize = libc::winsize { ws_row: 24, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty writes two new descriptors into the two integers, which are then owned by Files.
    let opened = unsafe { libc::openpty(&mut leader, &mut follower, std::ptr::null_mut(), std::ptr::null(), &winsize) };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    let (mut leader, follower) = unsafe { (std::fs::File::from_raw_fd(leader), std::fs::File::from_raw_fd(follower)) };
    let mut child = Command::new(env!("CARGO_BIN_EXE_dfast"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(follower)
        .spawn()
        .expect("dfast runs");
    let mut seen = Vec::new();
    // Reads until the child has closed the terminal (EIO on Linux once no process holds the follower).
    let _ = leader.read_to_end(&mut seen);
    assert!(child.wait().unwrap().success(), "{}", String::from_utf8_lossy(&seen));
    String::from_utf8_lossy(&seen).split('\r').map(|f| f.replace("\x1b[2K", "").trim().to_string()).collect()
}

/// The first progress frame already counts the steps (`[   ] 0/10 steps`), never a full bar at `0/0`; so
/// does convert's, in components.
#[test]
fn first_progress_frame_counts_what_is_to_come() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let frames = terminal_frames(&generate_args(out.to_str().unwrap(), &["--scheduler", "euler"]));
    let first = frames.iter().find(|f| f.contains(" steps")).unwrap_or_else(|| panic!("no progress frame: {frames:?}"));
    assert!(first.contains("] 0/10 steps") && !first.contains('='), "first frame: {first:?}");

    let converted = tmp.path().join("converted");
    let model = common::model("tiny-sd");
    let args = ["convert", "--model", model.to_str().unwrap(), "--profile", "baseline", "--out"];
    let frames = terminal_frames(&[&args[..], &[converted.to_str().unwrap()]].concat());
    let first =
        frames.iter().find(|f| f.contains(" components")).unwrap_or_else(|| panic!("no progress frame: {frames:?}"));
    assert!(!first.contains("/0 components"), "first frame: {first:?}");
}

/// Prompt i of a file (counting prompts, not lines) starts from seed + i unless its line sets a seed, and
/// each image records the seed it was drawn from; a BOM before the first JSON line changes nothing.
#[test]
fn prompt_file_seeds_each_prompt_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("prompts.txt");
    std::fs::write(&file, "\u{feff}{\"prompt\": \"a cat\", \"width\": 80}\n# a comment\n\na fox\n{\"prompt\": \"a dog\", \"seed\": 100}\na hen\n")
        .unwrap();
    let out = tmp.path().join("x.png");
    let run = dfast(&[
        "generate",
        "--prompt-file",
        file.to_str().unwrap(),
        "--steps",
        "1",
        "--seed",
        "9",
        "--num-images",
        "2",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let runs: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seeds: Vec<u64> = runs.iter().map(|r| r["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [9, 10, 100, 12], "{stdout}");
    assert_eq!(runs[0]["width"], 80, "{stdout}");
    for (j, seed) in seeds.iter().enumerate() {
        for i in 0..2 {
            let image = tmp.path().join(format!("x-{j}-{i}.png"));
            let inspect = dfast(&["inspect", image.to_str().unwrap(), "--json"]);
            let meta: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
            assert_eq!(meta["seed"].to_string().trim_matches('"'), seed.to_string(), "{}: {meta}", image.display());
        }
    }
}

/// A size the UNet cannot take (tiny-sd: the VAE's factor 8 x 2 for its one downsampling) is one sentence
/// before any work, on the command line and on a prompt file's line, where it names the file and line;
/// ONNX Runtime used to fail in a Concat of 9 and 10 latent rows.
#[test]
fn sizes_the_unet_cannot_take_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--width", "72", "--height", "72"]));
    assert_clear_error(&run, "--width 72 is not a positive multiple of 8 x 2 = 16 (the VAE's scale factor x 2^1");
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--height", "88"]));
    assert_clear_error(&run, "--height 88 is not a positive multiple of 8 x 2 = 16");
    let file = tmp.path().join("prompts.txt");
    std::fs::write(&file, "a fox\n# then a cat\n{\"prompt\": \"a cat\", \"width\": 72}\n").unwrap();
    let run =
        dfast(&["generate", "--prompt-file", file.to_str().unwrap(), "--steps", "1", "--out", out.to_str().unwrap()]);
    assert_clear_error(&run, "prompts.txt: line 3: width 72 is not a positive multiple of 8 x 2 = 16");
    assert!(!String::from_utf8_lossy(&run.stderr).contains("--width"));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "only the prompt file");
    // img2img takes the image's size: named as the image's, not as a flag.
    let input = tmp.path().join("in.png");
    image::RgbImage::new(72, 72).save(&input).unwrap();
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--image", input.to_str().unwrap()]));
    assert_clear_error(&run, "the width of --image 72 is not a positive multiple of 8 x 2 = 16");
    assert!(!out.exists());
}

/// Non-finite numbers: refused as flags (`--guidance inf` wrote a black image, `nan` turned guidance off) and
/// in `--latents`; NaN latents from the loop (zero-SNR betas with epsilon prediction under DDIM, as in
/// diffusers) are one sentence and no image; negative betas are refused in the scheduler config.
#[test]
fn non_finite_numbers_are_refused_and_nan_latents_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let out_str = out.to_str().unwrap();
    for value in ["inf", "nan", "1e39"] {
        let run = dfast(&generate_args(out_str, &["--guidance", value]));
        assert_clear_error(&run, &format!("invalid value `{value}` for --guidance: expected a finite number"));
        assert_eq!(run.status.code(), Some(2));
    }
    let run = dfast(&generate_args(out_str, &["--guidance=-inf"]));
    assert_clear_error(&run, "invalid value `-inf` for --guidance: expected a finite number");
    let convert = ["convert", "--model", "tiny-sd", "--profile", "cpu-default", "--out", out_str];
    let run = dfast(&[&convert[..], &["--calibration-percentile", "nan"]].concat());
    assert_clear_error(&run, "invalid value `nan` for --calibration-percentile: expected a number in (0, 100]");

    let latents = tmp.path().join("nan.npy");
    let mut noise = ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 4, 8, 8]));
    noise[[0, 1, 2, 3]] = f32::NAN;
    noise.write_npy(std::fs::File::create(&latents).unwrap()).unwrap();
    let run = dfast(&generate_args(out_str, &["--latents", latents.to_str().unwrap()]));
    assert_clear_error(&run, "nan.npy: the latents hold NaN or Inf; expected finite noise");

    let config: serde_json::Value =
        common::read_json(&common::model("tiny-sd").join("scheduler").join("scheduler_config.json"));
    let with = |changes: serde_json::Value| {
        let mut c = config.clone();
        c.as_object_mut().unwrap().extend(changes.as_object().unwrap().clone());
        let path = tmp.path().join("scheduler_config.json");
        std::fs::write(&path, c.to_string()).unwrap();
        path
    };
    let zero_snr = with(serde_json::json!({"rescale_betas_zero_snr": true, "timestep_spacing": "trailing"}));
    let run =
        dfast(&generate_args(out_str, &["--scheduler", "ddim", "--scheduler-config", zero_snr.to_str().unwrap()]));
    assert_clear_error(&run, "the latents hold NaN or Inf after step 1 of 10 (DDIMScheduler, timestep 999)");
    assert!(!out.exists());
    let negative = with(serde_json::json!({"beta_schedule": "linear", "beta_start": -0.01}));
    let run = dfast(&generate_args(out_str, &["--scheduler-config", negative.to_str().unwrap()]));
    assert_clear_error(&run, "the scheduler config gives a beta of -0.01");
    assert!(!out.exists());
}

/// `dfast generate` with `args` under a resource limit (`resource`, `bytes`) set in the child.
fn dfast_limited(args: &[&str], resource: libc::__rlimit_resource_t, bytes: u64) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(env!("CARGO_BIN_EXE_dfast"));
    command.args(args);
    // SAFETY: setrlimit(2) only, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(resource, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().expect("dfast runs")
}

/// Sizes that cannot fit in memory are refused before anything loads, in one sentence with a size that fits;
/// under an address-space limit, the suggested size runs (it used to grow until the kernel killed it, or
/// failed inside ONNX Runtime after loading).
#[test]
fn sizes_that_cannot_fit_in_memory_are_refused_with_one_that_does() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let out_str = out.to_str().unwrap();
    for (w, h) in [("65536", "65536"), ("4294967296", "16")] {
        let started = std::time::Instant::now();
        let run =
            dfast(&["generate", "--prompt", "a fox", "--steps", "1", "--width", w, "--height", h, "--out", out_str]);
        assert_clear_error(&run, &format!("{w}x{h} needs about"));
        assert_clear_error(&run, "the largest size of this shape that fits is --width");
        assert!(started.elapsed().as_secs() < 20, "refused late: {:?}", started.elapsed());
    }
    // An ONNX Runtime library that does not exist: the refusal comes before anything loads.
    let limit = 1536u64 << 20;
    let args = |w: &'static str, h: &'static str| -> Vec<String> {
        ["generate", "--prompt", "a fox", "--seed", "1", "--steps", "1", "--width", w, "--height", h, "--out", out_str]
            .map(String::from)
            .to_vec()
    };
    let big: Vec<String> =
        [args("1024", "1024"), vec!["--ort-lib".into(), "/nonexistent/libonnxruntime.so".into()]].concat();
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    let run = dfast_limited(&big, libc::RLIMIT_AS, limit);
    assert_clear_error(&run, "1024x1024 needs about 8.");
    assert_clear_error(&run, "RLIMIT_AS");
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    let tail = stderr.split("--width ").nth(1).unwrap();
    let (w, h) = (tail.split(' ').next().unwrap(), tail.split("--height ").nth(1).unwrap().trim());
    assert!(w == h && w.parse::<usize>().unwrap() < 1024 && w.parse::<usize>().unwrap().is_multiple_of(16), "{stderr}");
    // The suggested size itself runs under the same limit.
    let fits: Vec<String> =
        args("1024", "1024").into_iter().map(|a| if a == "1024" { w.to_string() } else { a }).collect();
    let fits: Vec<&str> = fits.iter().map(String::as_str).collect();
    let run = dfast_limited(&fits, libc::RLIMIT_AS, limit);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (w.parse().unwrap(), h.parse().unwrap()));
}

/// Every output is checked before the work (a read-only mount, a name too long, EXIF too large for a JPEG),
/// shown with an ONNX Runtime library that does not exist, which loading would name first; a write that
/// fails (a full disk: a file-size limit) leaves no file at the name asked for and no temporary file.
#[test]
fn outputs_are_checked_before_the_work_and_never_left_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let no_ort = ["--ort-lib", "/nonexistent/libonnxruntime.so"];
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let ro_out = ro.join("x.png");
    let script = format!(
        "mount --bind -o ro {0} {0} && exec {1} generate --prompt 'a fox' --steps 1 --out {2} --ort-lib /nonexistent/x.so",
        ro.display(),
        env!("CARGO_BIN_EXE_dfast"),
        ro_out.display()
    );
    let run = Command::new("unshare").args(["-rm", "sh", "-c", &script]).output().expect("unshare runs");
    assert_clear_error(&run, "cannot write in folder");
    assert_clear_error(&run, "Read-only file system");
    let long = tmp.path().join(format!("{}.png", "a".repeat(300)));
    let run = dfast(
        &[&["generate", "--prompt", "a fox", "--steps", "1", "--out", long.to_str().unwrap()], &no_ort[..]].concat(),
    );
    assert_clear_error(&run, "File name too long");
    let jpg = tmp.path().join("x.jpg");
    let prompt = "long ".repeat(10_000);
    let run = dfast(
        &[&["generate", "--prompt", &prompt, "--steps", "1", "--out", jpg.to_str().unwrap()], &no_ort[..]].concat(),
    );
    assert_clear_error(&run, "more than a JPEG holds");
    // The eleventh prompt's image name (OUT-10.png) is one character too long: found before the first runs.
    let file = tmp.path().join("p.txt");
    std::fs::write(&file, "a fox\n".repeat(11)).unwrap();
    let stem = tmp.path().join("b".repeat(249));
    let out = format!("{}.png", stem.display());
    let run = dfast(&["generate", "--prompt-file", file.to_str().unwrap(), "--steps", "1", "--out", &out]);
    assert_clear_error(&run, "-10.png: cannot write here: File name too long");
    assert!(std::fs::read_dir(tmp.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('b')));
    let seed = ["--seed", "18446744073709551615", "--steps", "1", "--out", &out];
    let run = dfast(&[&["generate", "--prompt-file", file.to_str().unwrap()], &seed[..]].concat());
    assert_clear_error(&run, "passes the largest seed");

    // A full disk: the image does not fit under a 4 KiB file-size limit; the old file stays whole.
    let out = tmp.path().join("full.png");
    std::fs::write(&out, "old").unwrap();
    let latents = tmp.path().join("full.npy");
    let args = [
        "generate",
        "--prompt",
        "a fox",
        "--seed",
        "1",
        "--steps",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--save-latents",
        latents.to_str().unwrap(),
    ];
    let run = dfast_limited(&args, libc::RLIMIT_FSIZE, 4096);
    assert_clear_error(&run, "cannot write the image: File too large");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old");
    assert!(!latents.exists());
    assert_eq!(dfast::files::leftovers(tmp.path()), Vec::<std::path::PathBuf>::new());
}

/// What played no part is not recorded, and is said: a negative prompt without guidance (it was dropped
/// silently but recorded), a seed with given latents under a deterministic scheduler (recorded though unused;
/// an ancestral scheduler still draws from it, so there it is kept); a long negative prompt is named as such.
#[test]
fn settings_that_played_no_part_are_neither_recorded_nor_silent() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = |image: &Path| -> serde_json::Value {
        let run = dfast(&["inspect", image.to_str().unwrap(), "--json"]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        serde_json::from_slice(&run.stdout).unwrap()
    };
    let out = tmp.path().join("g1.png");
    let run = dfast(&generate_args(out.to_str().unwrap(), &["--guidance", "1", "--seed", "3"]));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("warning: the negative prompt has no effect at guidance 1"), "{stderr}");
    assert_eq!(settings(&out)["negative_prompt"], "");
    assert_eq!(settings(&out)["seed"], "3");

    let latents = tmp.path().join("start.npy");
    ArrayD::<f32>::from_elem(ndarray::IxDyn(&[1, 4, 8, 8]), 0.5)
        .write_npy(std::fs::File::create(&latents).unwrap())
        .unwrap();
    let given = ["--seed", "3", "--latents", latents.to_str().unwrap()];
    let run = dfast(&generate_args(out.to_str().unwrap(), &given));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("latents from") && !stdout.contains("seed 3"), "{stdout}");
    assert_eq!(settings(&out).get("seed"), None);
    let run = dfast(&generate_args(out.to_str().unwrap(), &[&given[..], &["--scheduler", "euler-a"]].concat()));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(settings(&out)["seed"], "3");

    let long = "blurry ".repeat(100);
    let run = dfast(&[
        "generate",
        "--prompt",
        "a fox",
        "--negative-prompt",
        &long,
        "--steps",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("warning: the negative prompt is longer than"), "{stderr}");
    assert!(!stderr.contains("warning: the prompt is longer"), "{stderr}");
}
