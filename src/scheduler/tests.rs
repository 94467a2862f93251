//! Replays diffusers 0.42.1 scheduler runs recorded by `experiment-scripts/make_scheduler_references.py`.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};
use serde::Deserialize;
use serde_json::Value;

use super::{NoiseSource, Scheduler, SchedulerConfig, SchedulerKind, from_config};
use crate::Error;

const REFERENCE: &str = include_str!("../../tests/data/scheduler_reference.json");

/// Tolerance on every compared latent (relative L2) and per-step norm.
const SAMPLE_RTOL: f64 = 1e-5;

#[derive(Deserialize)]
struct Reference {
    base_configs: BTreeMap<String, Value>,
    cases: Vec<RolloutCase>,
    schedule_cases: Vec<ScheduleCase>,
}

/// A full denoising loop with the synthetic model output.
#[derive(Deserialize)]
struct RolloutCase {
    name: String,
    /// diffusers' effective config, `dict(scheduler.config)`.
    config: Value,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
    shape: Vec<usize>,
    noise_index: usize,
    model_input_norms: Vec<f64>,
    sample_norms: Vec<f64>,
    sample_projections: Vec<f64>,
    /// Full latents after the step with this index.
    samples: BTreeMap<usize, Vec<f32>>,
}

/// Timesteps and sigmas only, from a base config plus overrides.
#[derive(Deserialize)]
struct ScheduleCase {
    class: String,
    base: String,
    overrides: serde_json::Map<String, Value>,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
    sigmas: Option<Vec<f64>>,
}

fn reference() -> Reference {
    serde_json::from_str(REFERENCE).expect("tests/data/scheduler_reference.json parses")
}

fn l2(values: impl Iterator<Item = f64>) -> f64 {
    values.map(|v| v * v).sum::<f64>().sqrt()
}

fn relative_l2(actual: &ArrayD<f32>, expected: &[f32]) -> f64 {
    let diff = l2(actual.iter().zip(expected).map(|(&a, &e)| f64::from(a) - f64::from(e)));
    diff / l2(expected.iter().map(|&e| f64::from(e))).max(1e-30)
}

/// Whether `actual` is within relative `rtol` of `expected` (never for NaN).
fn close(actual: f64, expected: f64, rtol: f64) -> bool {
    relative(actual, expected) <= rtol
}

/// Whether an error is above the tolerance; NaN counts as above.
fn exceeds(err: f64) -> bool {
    err.is_nan() || err > SAMPLE_RTOL
}

fn relative(actual: f64, expected: f64) -> f64 {
    (actual - expected).abs() / expected.abs().max(1e-30)
}

/// The noise source of the deterministic schedulers these references cover: they draw none.
struct Deterministic;

impl NoiseSource for Deterministic {
    fn randn(&mut self, shape: &[usize]) -> ArrayD<f32> {
        panic!("a deterministic scheduler drew noise of shape {shape:?}")
    }
}

/// Must match `initial_noise` in the Python generator.
fn initial_noise(index: usize, shape: &[usize]) -> ArrayD<f32> {
    let numel: usize = shape.iter().product();
    let values = (0..numel)
        .map(|k| {
            let k = k as f64;
            let i = (index + 1) as f64;
            (1.5 * (2.3 * k + 0.7 * i).sin() + 0.5 * (0.9 * k * i).cos()) as f32
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), values).expect("noise shape")
}

/// Must match `projection_weights` in the Python generator.
fn projection_weights(numel: usize) -> Vec<f64> {
    (0..numel).map(|k| f64::from((0.37 * k as f64 + 0.5).cos() as f32)).collect()
}

/// The synthetic UNet of the reference: `0.5 * x + 0.1 * sin(3 * x + i)` in float32.
fn synthetic_model_output(x: &ArrayD<f32>, step_index: usize) -> ArrayD<f32> {
    let i = step_index as f32;
    x.mapv(|v| 0.5 * v + 0.1 * (v * 3.0 + i).sin())
}

fn class_of(name: &str) -> &'static str {
    match name.split('_').nth(1) {
        Some("pndm") => "PNDM",
        Some("ddim") => "DDIM",
        Some("euler") => "Euler",
        Some("dpmpp") => "DPM++",
        _ => "other",
    }
}

/// Replays one rollout; returns the failures and the worst relative latent error.
fn replay(case: &RolloutCase) -> (Vec<String>, f64) {
    let mut failures = Vec::new();
    let config: SchedulerConfig = match serde_json::from_value(case.config.clone()) {
        Ok(config) => config,
        Err(e) => return (vec![format!("{}: config does not parse: {e}", case.name)], f64::INFINITY),
    };
    let mut scheduler = match from_config(&config, None).and_then(|mut s| {
        s.set_timesteps(case.num_inference_steps)?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => return (vec![format!("{}: cannot build the scheduler: {e}", case.name)], f64::INFINITY),
    };

    let timesteps = scheduler.timesteps().to_vec();
    if timesteps.len() != case.timesteps.len()
        || timesteps.iter().zip(&case.timesteps).any(|(a, e)| (a - e).abs() > 1e-4)
    {
        failures.push(format!("{}: timesteps {timesteps:?} != diffusers {:?}", case.name, case.timesteps));
        return (failures, f64::INFINITY);
    }
    if !close(scheduler.init_noise_sigma(), case.init_noise_sigma, 1e-6) {
        failures.push(format!(
            "{}: init_noise_sigma {} != diffusers {}",
            case.name,
            scheduler.init_noise_sigma(),
            case.init_noise_sigma
        ));
    }

    let noise = initial_noise(case.noise_index, &case.shape);
    let weights = projection_weights(noise.len());
    let sigma = scheduler.init_noise_sigma() as f32;
    let mut latents = noise.mapv(|x| x * sigma);
    let mut worst = 0.0f64;
    for i in 0..timesteps.len() {
        let x = scheduler.scale_model_input(latents.clone(), i);
        let model_output = synthetic_model_output(&x, i);
        latents = scheduler.step(&model_output, i, &latents, &mut Deterministic);

        let input_norm = l2(x.iter().map(|&v| f64::from(v)));
        let err = relative(input_norm, case.model_input_norms[i]);
        if exceeds(err) {
            failures.push(format!("{} step {i}: model input norm off by {err:.2e}", case.name));
        }
        let norm = l2(latents.iter().map(|&v| f64::from(v)));
        let err = relative(norm, case.sample_norms[i]);
        worst = worst.max(err);
        if exceeds(err) {
            failures.push(format!("{} step {i}: sample norm off by {err:.2e}", case.name));
        }
        // |projection| <= |sample| |weights|, so that product is the natural scale of the projection's error.
        let projection: f64 = latents.iter().zip(&weights).map(|(&v, w)| f64::from(v) * w).sum();
        let scale = case.sample_norms[i] * l2(weights.iter().copied());
        let err = (projection - case.sample_projections[i]).abs() / scale.max(1e-30);
        worst = worst.max(err);
        if exceeds(err) {
            failures.push(format!("{} step {i}: sample projection off by {err:.2e}", case.name));
        }
        if let Some(expected) = case.samples.get(&i) {
            let err = relative_l2(&latents, expected);
            worst = worst.max(err);
            if exceeds(err) {
                failures.push(format!("{} step {i}: latents relative L2 error {err:.2e}", case.name));
            }
        }
    }
    (failures, worst)
}

#[test]
fn rollouts_match_diffusers() {
    let reference = reference();
    assert!(!reference.cases.is_empty());
    let mut failures = Vec::new();
    let mut worst_by_class: BTreeMap<&str, (f64, &str)> = BTreeMap::new();
    for case in &reference.cases {
        let (case_failures, worst) = replay(case);
        failures.extend(case_failures);
        let entry = worst_by_class.entry(class_of(&case.name)).or_insert((0.0, ""));
        if worst >= entry.0 {
            *entry = (worst, &case.name);
        }
    }
    for (class, (worst, name)) in &worst_by_class {
        println!("{class:>6}: worst relative error {worst:.2e} ({name})");
    }
    println!("{} rollouts compared", reference.cases.len());
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

const STRENGTH_REFERENCE: &str = include_str!("../../tests/data/scheduler_strength_reference.json");

/// A run from a strength, as diffusers' img2img and inpainting pipelines make it (see the generator's docs).
#[derive(Deserialize)]
struct StrengthCase {
    name: String,
    config: Value,
    num_inference_steps: usize,
    strength: f64,
    begin_index: usize,
    /// From the begin index on.
    timesteps: Vec<f64>,
    original_index: usize,
    noise_index: usize,
    /// `add_noise(original, noise)` at the first timestep.
    start: Vec<f32>,
    sample_norms: Vec<f64>,
    #[serde(rename = "final")]
    final_latents: Vec<f32>,
}

/// Every scheduler begins where diffusers' `get_timesteps` does for a strength, and its `add_noise` matches
/// diffusers' at the first timestep and, blended in outside a mask after each step, at every later one.
#[test]
fn runs_from_a_strength_match_diffusers() {
    #[derive(Deserialize)]
    struct File {
        cases: Vec<StrengthCase>,
    }
    let file: File = serde_json::from_str(STRENGTH_REFERENCE).expect("scheduler_strength_reference.json parses");
    let shape = [1, 4, 4, 4];
    let mask = ArrayD::from_shape_fn(IxDyn(&shape), |i| if (i[1] * 16 + i[2] * 4 + i[3]) % 3 == 0 { 0.0 } else { 1.0 });
    let mut failures = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for case in &file.cases {
        let config: SchedulerConfig = serde_json::from_value(case.config.clone()).expect("config parses");
        kinds.insert(config.class_name.clone().unwrap_or_default());
        let mut scheduler = from_config(&config, None).expect("scheduler builds");
        scheduler.set_timesteps(case.num_inference_steps).expect("timesteps");
        let begin = scheduler.begin_index(case.strength).expect("a step is left");
        if begin != case.begin_index {
            failures.push(format!("{}: begin index {begin} != diffusers {}", case.name, case.begin_index));
            continue;
        }
        let timesteps = &scheduler.timesteps()[begin..];
        if timesteps.len() != case.timesteps.len()
            || timesteps.iter().zip(&case.timesteps).any(|(a, e)| (a - e).abs() > 1e-4)
        {
            failures.push(format!("{}: timesteps {timesteps:?} != diffusers {:?}", case.name, case.timesteps));
            continue;
        }
        let original = initial_noise(case.original_index, &shape);
        let noise = initial_noise(case.noise_index, &shape);
        let mut latents = scheduler.add_noise(&original, &noise, begin);
        let err = relative_l2(&latents, &case.start);
        if exceeds(err) {
            failures.push(format!("{}: add_noise at the begin index off by {err:.2e}", case.name));
        }
        let end = scheduler.timesteps().len();
        for (i, step_index) in (begin..end).enumerate() {
            let x = scheduler.scale_model_input(latents.clone(), step_index);
            let model_output = synthetic_model_output(&x, i);
            latents = scheduler.step(&model_output, step_index, &latents, &mut Deterministic);
            let proper = if step_index + 1 < end {
                scheduler.add_noise(&original, &noise, step_index + 1)
            } else {
                original.clone()
            };
            latents =
                ndarray::Zip::from(&mask).and(&proper).and(&latents).map_collect(|&m, &p, &l| (1.0 - m) * p + m * l);
            let err = relative(l2(latents.iter().map(|&v| f64::from(v))), case.sample_norms[i]);
            if exceeds(err) {
                failures.push(format!("{} step {step_index}: sample norm off by {err:.2e}", case.name));
            }
        }
        let err = relative_l2(&latents, &case.final_latents);
        if exceeds(err) {
            failures.push(format!("{}: final latents off by {err:.2e}", case.name));
        }
    }
    assert_eq!(kinds.len(), 4, "every scheduler class is covered: {kinds:?}");
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// `int(n * strength)` as Python computes it in float64 (0.7 * 10 is 7.000000000000001, 0.3 * 10 is 3.0000000000000004,
/// 0.29 * 100 is 28.999999999999996), and no step left below 1.
#[test]
fn begin_index_follows_python_float_arithmetic() {
    let mut ddim = from_config(&SchedulerConfig::default(), Some(SchedulerKind::Ddim)).expect("ddim");
    for (steps, strength, begin) in
        [(10, 0.7, Some(3)), (10, 0.3, Some(7)), (100, 0.29, Some(72)), (50, 0.9999, Some(1))]
    {
        ddim.set_timesteps(steps).unwrap();
        assert_eq!(ddim.begin_index(strength), begin, "{steps} steps at strength {strength}");
    }
    ddim.set_timesteps(10).unwrap();
    assert_eq!(ddim.begin_index(1.0), Some(0));
    assert_eq!(ddim.begin_index(0.09), None);
}

#[test]
fn schedules_match_diffusers() {
    let reference = reference();
    let mut failures = Vec::new();
    for case in &reference.schedule_cases {
        let label = format!("{} {:?} steps={}", case.class, case.overrides, case.num_inference_steps);
        let mut config = reference.base_configs[&case.base].clone();
        if let Value::Object(map) = &mut config {
            map.extend(case.overrides.clone());
        }
        let config: SchedulerConfig = serde_json::from_value(config).expect("schedule case config parses");
        let kind = match case.class.as_str() {
            "EulerDiscreteScheduler" => SchedulerKind::Euler,
            "DDIMScheduler" => SchedulerKind::Ddim,
            "PNDMScheduler" => SchedulerKind::Pndm,
            "DPMSolverMultistepScheduler" => SchedulerKind::DpmSolverPP,
            other => panic!("unexpected class {other}"),
        };
        let mut scheduler = match from_config(&config, Some(kind)) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{label}: {e}"));
                continue;
            }
        };
        if let Err(e) = scheduler.set_timesteps(case.num_inference_steps) {
            failures.push(format!("{label}: {e}"));
            continue;
        }
        let timesteps = scheduler.timesteps();
        if timesteps.len() != case.timesteps.len()
            || timesteps.iter().zip(&case.timesteps).any(|(a, e)| (a - e).abs() > 1e-4)
        {
            failures.push(format!("{label}: timesteps {timesteps:?} != diffusers {:?}", case.timesteps));
        }
        if !close(scheduler.init_noise_sigma(), case.init_noise_sigma, 1e-6) {
            failures.push(format!(
                "{label}: init_noise_sigma {} != {}",
                scheduler.init_noise_sigma(),
                case.init_noise_sigma
            ));
        }
        if let Some(expected) = &case.sigmas {
            let sigmas = schedule_sigmas(&config, kind, case.num_inference_steps);
            let ok = sigmas.len() == expected.len()
                && sigmas.iter().zip(expected).all(|(&a, &e)| (f64::from(a) - e).abs() <= 1e-6 * e.abs().max(1e-3));
            if !ok {
                failures.push(format!("{label}: sigmas {sigmas:?} != diffusers {expected:?}"));
            }
        }
    }
    println!("{} schedules compared", reference.schedule_cases.len());
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// The sigma schedule of the sigma-based classes (the trait does not expose sigmas).
fn schedule_sigmas(config: &SchedulerConfig, kind: SchedulerKind, steps: usize) -> Vec<f32> {
    match kind {
        SchedulerKind::Euler => {
            let mut s = super::EulerDiscreteScheduler::new(config).expect("euler");
            s.set_timesteps(steps).expect("euler timesteps");
            s.sigmas().to_vec()
        }
        SchedulerKind::DpmSolverPP => {
            let mut s = super::DpmSolverMultistepScheduler::new(config).expect("dpm");
            s.set_timesteps(steps).expect("dpm timesteps");
            s.sigmas().to_vec()
        }
        _ => Vec::new(),
    }
}

fn bad_input_message(result: Result<impl Sized, Error>) -> String {
    match result {
        Err(Error::BadInput { message, .. }) => message,
        Err(other) => panic!("expected a BadInput error, got {other:?}"),
        Ok(_) => panic!("expected a BadInput error, got Ok"),
    }
}

fn config_from(json: &str) -> SchedulerConfig {
    SchedulerConfig::from_json_str(json).expect("test config parses")
}

#[test]
fn unknown_class_names_the_class_and_the_supported_ones() {
    let config = config_from(r#"{"_class_name": "LMSDiscreteScheduler"}"#);
    let message = bad_input_message(config.class_kind());
    assert!(message.contains("LMSDiscreteScheduler"), "{message}");
    for supported in [
        "EulerDiscreteScheduler",
        "DDIMScheduler",
        "PNDMScheduler",
        "DPMSolverMultistepScheduler",
        "EulerAncestralDiscreteScheduler",
        "LCMScheduler",
    ] {
        assert!(message.contains(supported), "{message}");
    }
    let message = bad_input_message(from_config(&config, None));
    assert!(message.contains("LMSDiscreteScheduler"), "{message}");
}

#[test]
fn scheduler_names_parse_and_unknown_names_list_the_valid_ones() {
    assert_eq!(SchedulerKind::from_name("euler").ok(), Some(SchedulerKind::Euler));
    assert_eq!(SchedulerKind::from_name("ddim").ok(), Some(SchedulerKind::Ddim));
    assert_eq!(SchedulerKind::from_name("pndm").ok(), Some(SchedulerKind::Pndm));
    assert_eq!(SchedulerKind::from_name("dpm++").ok(), Some(SchedulerKind::DpmSolverPP));
    assert_eq!(SchedulerKind::from_name("dpmsolver++").ok(), Some(SchedulerKind::DpmSolverPP));
    assert_eq!(SchedulerKind::from_name("euler-a").ok(), Some(SchedulerKind::EulerAncestral));
    assert_eq!(SchedulerKind::from_name("euler_a").ok(), Some(SchedulerKind::EulerAncestral));
    assert_eq!(SchedulerKind::from_name("lcm").ok(), Some(SchedulerKind::Lcm));
    let message = bad_input_message(SchedulerKind::from_name("heun"));
    assert!(message.contains("heun") && message.contains("euler, ddim, pndm, dpm++, euler-a and lcm"), "{message}");
}

#[test]
fn unsupported_config_values_are_sentences() {
    let cases = [
        (r#"{"beta_schedule": "cosine"}"#, SchedulerKind::Euler, "cosine"),
        (r#"{"beta_schedule": "cosine"}"#, SchedulerKind::Ddim, "beta_schedule"),
        (r#"{"thresholding": true}"#, SchedulerKind::Ddim, "thresholding"),
        (r#"{"algorithm_type": "sde-dpmsolver++"}"#, SchedulerKind::DpmSolverPP, "sde-dpmsolver++"),
        (r#"{"solver_order": 4}"#, SchedulerKind::DpmSolverPP, "solver_order"),
        (r#"{"prediction_type": "flow_prediction"}"#, SchedulerKind::DpmSolverPP, "flow_prediction"),
        (r#"{"timestep_spacing": "uniform"}"#, SchedulerKind::Pndm, "uniform"),
        (r#"{"final_sigmas_type": "one"}"#, SchedulerKind::Euler, "final_sigmas_type"),
        (r#"{"use_beta_sigmas": true}"#, SchedulerKind::Euler, "use_beta_sigmas"),
        (r#"{"num_train_timesteps": 0}"#, SchedulerKind::Ddim, "num_train_timesteps"),
        (r#"{"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}"#, SchedulerKind::Pndm, "trained_betas"),
    ];
    for (json, kind, needle) in cases {
        let message = bad_input_message(from_config(&config_from(json), Some(kind)));
        assert!(message.contains(needle), "{json} with {kind:?}: {message}");
        assert!(message.ends_with('.'), "not a sentence: {message}");
    }
}

#[test]
fn bad_step_counts_are_errors() {
    let mut ddim = from_config(&SchedulerConfig::default(), Some(SchedulerKind::Ddim)).expect("ddim");
    bad_input_message(ddim.set_timesteps(0));
    bad_input_message(ddim.set_timesteps(1001));
    let prk = config_from(r#"{"skip_prk_steps": false}"#);
    let mut pndm = from_config(&prk, Some(SchedulerKind::Pndm)).expect("pndm");
    let message = bad_input_message(pndm.set_timesteps(3));
    assert!(message.contains("skip_prk_steps"), "{message}");
    let offset = config_from(r#"{"steps_offset": 5000}"#);
    let mut ddim = from_config(&offset, Some(SchedulerKind::Ddim)).expect("ddim");
    bad_input_message(ddim.set_timesteps(10));
}

#[test]
fn python_non_finite_tokens_read_as_defaults() {
    let config = config_from(
        r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity,
            "sigma_max": NaN, "timestep_spacing": "Infinity \" -Infinity"}"#,
    );
    assert_eq!(config.lambda_min_clipped, None);
    assert_eq!(config.sigma_max, None);
    assert_eq!(config.timestep_spacing.as_deref(), Some("Infinity \" -Infinity"));
}

#[test]
fn from_file_reports_missing_and_malformed_files() {
    let dir = std::env::temp_dir().join(format!("dfast-scheduler-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let missing = dir.join("missing.json");
    assert!(matches!(SchedulerConfig::from_file(&missing), Err(Error::BadFile { .. })));
    let malformed = dir.join("malformed.json");
    std::fs::write(&malformed, "{\"_class_name\": ").expect("write");
    let err = SchedulerConfig::from_file(&malformed).expect_err("malformed JSON is an error");
    assert!(matches!(err, Error::BadFile { .. }), "{err:?}");
    assert!(err.to_string().contains("malformed.json"), "{err}");
    let good = dir.join("scheduler_config.json");
    std::fs::write(&good, r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "skip_prk_steps": true}"#)
        .expect("write");
    let config = SchedulerConfig::from_file(&good).expect("valid config");
    assert_eq!(config.class_kind().ok(), Some(SchedulerKind::Pndm));
    let _ = std::fs::remove_dir_all(&dir);
}

/// LCM's timesteps, taken from the `original_inference_steps`-step distillation schedule, as diffusers 0.42.1's
/// `LCMScheduler(original_inference_steps=o).set_timesteps(n)` gives them; more steps than that schedule has
/// are refused, as diffusers refuses them.
#[test]
fn lcm_timesteps_match_diffusers() {
    let cases: [(usize, usize, &[f64]); 5] = [
        (1, 50, &[999.0]),
        (4, 50, &[999.0, 759.0, 499.0, 259.0]),
        (6, 50, &[999.0, 839.0, 679.0, 499.0, 339.0, 179.0]),
        (8, 25, &[999.0, 879.0, 759.0, 639.0, 519.0, 399.0, 279.0, 159.0]),
        (3, 7, &[993.0, 709.0, 425.0]),
    ];
    for (steps, original, expected) in cases {
        let config = config_from(&format!(r#"{{"original_inference_steps": {original}}}"#));
        let mut lcm = from_config(&config, Some(SchedulerKind::Lcm)).expect("lcm");
        lcm.set_timesteps(steps).expect("timesteps");
        assert_eq!(lcm.timesteps(), expected, "{steps} steps of {original}");
    }
    let mut lcm = from_config(&SchedulerConfig::default(), Some(SchedulerKind::Lcm)).expect("lcm");
    let message = bad_input_message(lcm.set_timesteps(51));
    assert!(message.contains("original_inference_steps"), "{message}");
}

/// Euler ancestral with trailing spacing (SDXL-Turbo's): diffusers 0.42.1's timesteps, sigmas and
/// `init_noise_sigma` at 4 steps on the SD/SDXL beta schedule.
#[test]
fn euler_ancestral_trailing_schedule_matches_diffusers() {
    let config = config_from(
        r#"{"timestep_spacing": "trailing", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "beta_end": 0.012, "use_karras_sigmas": true}"#,
    );
    // use_karras_sigmas is Euler's key: the ancestral class ignores it, as diffusers' from_config does.
    let mut s = super::EulerAncestralDiscreteScheduler::new(&config).expect("euler-a");
    s.set_timesteps(4).expect("timesteps");
    assert_eq!(s.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
    let expected = [14.614646911621094, 4.081730842590332, 1.6128870248794556, 0.6932054162025452, 0.0];
    for (a, e) in s.sigmas().iter().zip(expected) {
        assert!((f64::from(*a) - e).abs() <= 1e-6 * e.max(1e-3), "sigmas {:?} != {expected:?}", s.sigmas());
    }
    assert!(close(s.init_noise_sigma(), 14.614646911621094, 1e-6));
}
