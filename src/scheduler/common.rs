//! Numerics shared by the schedulers.
//!
//! diffusers builds its schedules from float32 torch tensors and float64 numpy arrays; to land on the same
//! timesteps and sigmas (and hence the same images), the helpers here reproduce those libraries' exact rounding
//! rather than computing the textbook formulas in whatever precision is convenient.

use ndarray::{ArrayD, Zip};

use super::config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use crate::{Error, Result};

/// diffusers' defaults for the beta schedule, identical across the implemented classes.
const DEFAULT_BETA_START: f64 = 0.0001;
const DEFAULT_BETA_END: f64 = 0.02;

/// `alphas_cumprod` (float32, one per training timestep) as diffusers computes it from the config.
///
/// `rescale_betas_zero_snr` applies diffusers' `rescale_zero_terminal_snr`; `pin_last` additionally sets the last
/// value to 2^-24 as Euler and DPM-Solver do (DDIM keeps the exact zero).
pub(crate) fn alphas_cumprod(
    config: &SchedulerConfig,
    rescale_betas_zero_snr: bool,
    pin_last: bool,
) -> Result<Vec<f32>> {
    let num_train_timesteps = config.train_timesteps()?;
    let mut betas = match &config.trained_betas {
        Some(trained) => {
            if trained.len() != num_train_timesteps {
                return Err(Error::bad_input(format!(
                    "The scheduler config has {} trained_betas but num_train_timesteps is {num_train_timesteps}; \
                     they must match.",
                    trained.len()
                )));
            }
            trained.iter().map(|&b| b as f32).collect()
        }
        None => {
            let beta_start = config.beta_start.unwrap_or(DEFAULT_BETA_START);
            let beta_end = config.beta_end.unwrap_or(DEFAULT_BETA_END);
            match config.parsed_beta_schedule()? {
                BetaSchedule::Linear => torch_linspace_f32(beta_start, beta_end, num_train_timesteps),
                BetaSchedule::ScaledLinear => {
                    // Python's `beta_start**0.5` is pow(), not sqrt(); they can differ in the last bit.
                    torch_linspace_f32(beta_start.powf(0.5), beta_end.powf(0.5), num_train_timesteps)
                        .into_iter()
                        .map(|b| b * b)
                        .collect()
                }
                BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(num_train_timesteps),
            }
        }
    };
    // A beta outside [0, 1) makes alphas_cumprod negative, above 1 or NaN: noise levels that end in NaN latents.
    if let Some(bad) = betas.iter().find(|b| !(0.0..1.0).contains(*b)) {
        return Err(Error::bad_input(format!(
            "the scheduler config gives a beta of {bad} (from beta_start, beta_end or trained_betas); betas must lie \
             in [0, 1)"
        )));
    }
    if rescale_betas_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut alphas_cumprod = cumprod_f32(&alphas);
    if rescale_betas_zero_snr
        && pin_last
        && let Some(last) = alphas_cumprod.last_mut()
    {
        *last = 2f32.powi(-24);
    }
    Ok(alphas_cumprod)
}

/// Training-time sigmas `sqrt((1 - alphas_cumprod) / alphas_cumprod)`, float32 like diffusers.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// The cosine ("squaredcos_cap_v2") betas, computed in float64 and stored as float32.
fn betas_for_alpha_bar(num_diffusion_timesteps: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
        c * c
    };
    (0..num_diffusion_timesteps)
        .map(|i| {
            let t1 = i as f64 / num_diffusion_timesteps as f64;
            let t2 = (i + 1) as f64 / num_diffusion_timesteps as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023), in float32 like the torch original.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut alphas_bar_sqrt: Vec<f32> = cumprod_f32(&alphas).iter().map(|a| a.sqrt()).collect();
    let (Some(&first), Some(&last)) = (alphas_bar_sqrt.first(), alphas_bar_sqrt.last()) else {
        return Vec::new();
    };
    let scale = first / (first - last);
    for a in &mut alphas_bar_sqrt {
        *a = (*a - last) * scale;
    }
    let alphas_bar: Vec<f32> = alphas_bar_sqrt.iter().map(|a| a * a).collect();
    let mut rescaled = Vec::with_capacity(alphas_bar.len());
    rescaled.push(1.0 - alphas_bar[0]);
    rescaled.extend(alphas_bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    rescaled
}

/// torch's CPU `cumprod` on float32: the running product is kept in float64 and each output rounded to float32.
fn cumprod_f32(values: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .iter()
        .map(|&v| {
            acc *= f64::from(v);
            acc as f32
        })
        .collect()
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on CPU, bit for bit.
///
/// torch fills the first half forwards from `start` and the second half backwards from `end`, and its AVX2/AVX-512
/// builds contract `start + step * i` into a fused multiply-add, hence `mul_add`.
pub(crate) fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps <= 1 {
        return vec![start; steps];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) })
        .collect()
}

/// `np.linspace(start, stop, num)` in float64, bit for bit (including the exact `stop` at the end).
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num <= 1 {
        return vec![start; num];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut values: Vec<f64> =
        (0..num).map(|i| if step == 0.0 { i as f64 / div * delta + start } else { i as f64 * step + start }).collect();
    values[num - 1] = stop;
    values
}

/// `np.arange(start, stop, step)` for float64: numpy derives the increment from the first two values.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if !len.is_finite() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| if i == 1 { start + step } else { start + i as f64 * delta }).collect()
}

/// `np.interp(x, np.arange(len(fp)), fp)` for one point, with numpy's exact formula and edge handling.
pub(crate) fn np_interp_unit_grid(x: f64, fp: &[f64]) -> f64 {
    let n = fp.len();
    if x.is_nan() || n == 0 {
        return f64::NAN;
    }
    if x < 0.0 {
        return fp[0];
    }
    let last = (n - 1) as f64;
    if x >= last {
        return fp[n - 1];
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / 1.0;
    slope * (x - j as f64) + fp[j]
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma matches `sigma`.
///
/// `log_sigmas` are float32 (numpy's log of the float32 sigmas); the interpolation itself runs in float64.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    let log_sigma = sigma.max(1e-10).ln();
    // numpy: cumsum(dists >= 0).argmax(), i.e. the first position where the running count peaks.
    let (mut count, mut best, mut low_idx) = (0usize, 0usize, 0usize);
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - f64::from(ls) >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            low_idx = i;
        }
    }
    let low_idx = low_idx.min(n - 2);
    let high_idx = low_idx + 1;
    let low = f64::from(log_sigmas[low_idx]);
    let high = f64::from(log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Karras et al. (2022) sigmas with rho = 7, float64 like diffusers' numpy code.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, num_inference_steps: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, num_inference_steps)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// Sigmas evenly spaced in log space from `sigma_max` down to `sigma_min` (diffusers' exponential sigmas).
pub(crate) fn exponential_sigmas(sigma_min: f64, sigma_max: f64, num_inference_steps: usize) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), num_inference_steps).into_iter().map(f64::exp).collect()
}

/// numpy's `round` (half to even) as an integer timestep.
pub(crate) fn round_to_i64(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// Integer inference timesteps (descending) for DDIM-style spacing, as DDIM/PNDM/DPM-Solver compute them.
///
/// `count` values; `Leading` multiplies by `num_train_timesteps / count` and adds `steps_offset`, `Trailing`
/// counts down from `num_train_timesteps` in float steps, `Linspace` spans `[0, num_train_timesteps - 1]`.
pub(crate) fn integer_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    count: usize,
    steps_offset: i64,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => {
            np_linspace(0.0, (num_train_timesteps - 1) as f64, count).into_iter().rev().map(round_to_i64).collect()
        }
        TimestepSpacing::Leading => {
            let step_ratio = (num_train_timesteps / count) as i64;
            (0..count as i64).rev().map(|i| (i * step_ratio).saturating_add(steps_offset)).collect()
        }
        TimestepSpacing::Trailing => {
            let step_ratio = num_train_timesteps as f64 / count as f64;
            np_arange(num_train_timesteps as f64, 0.0, -step_ratio).into_iter().map(|t| round_to_i64(t) - 1).collect()
        }
    }
}

/// Error unless every timestep indexes the training schedule.
pub(crate) fn check_timesteps_in_range(class: &str, timesteps: &[i64], num_train_timesteps: usize) -> Result<()> {
    match timesteps.iter().find(|&&t| t < 0 || t as usize >= num_train_timesteps) {
        Some(t) => Err(Error::bad_input(format!(
            "{class}: this config and step count give timestep {t}, outside the {num_train_timesteps} training \
             timesteps; check steps_offset and timestep_spacing or use fewer steps."
        ))),
        None => Ok(()),
    }
}

/// Error unless `num_inference_steps` is positive and small enough to allocate a schedule for.
pub(crate) fn check_steps(class: &str, num_inference_steps: usize) -> Result<()> {
    const MAX_INFERENCE_STEPS: usize = 1_000_000;
    if num_inference_steps == 0 || num_inference_steps > MAX_INFERENCE_STEPS {
        return Err(Error::bad_input(format!(
            "{class}: the number of inference steps is {num_inference_steps}; it must be between 1 and \
             {MAX_INFERENCE_STEPS}."
        )));
    }
    Ok(())
}

/// `add_noise` of the schedulers that index `alphas_cumprod` by timestep (DDIM, PNDM), in float32 as torch:
/// `sqrt(alphas_cumprod[t]) * original + sqrt(1 - alphas_cumprod[t]) * noise`.
pub(crate) fn alphas_cumprod_add_noise(
    alphas_cumprod: &[f32],
    timestep: i64,
    original: &ArrayD<f32>,
    noise: &ArrayD<f32>,
) -> ArrayD<f32> {
    let alpha_prod = alphas_cumprod[timestep as usize];
    let (sqrt_alpha_prod, sqrt_one_minus_alpha_prod) = (alpha_prod.sqrt(), (1.0 - alpha_prod).sqrt());
    zip_map(original, noise, |x, n| sqrt_alpha_prod * x + sqrt_one_minus_alpha_prod * n)
}

/// diffusers' DDIM and LCM estimates from one sample value `s` and model output `m` at a timestep whose
/// alpha_cumprod is `alpha_prod_t`: (pred_original_sample, clamped to [-clip, clip] where `clip` is set and it
/// is not NaN; pred_epsilon), for each prediction type.
pub(crate) fn predict_original(
    alpha_prod_t: f32,
    prediction_type: PredictionType,
    clip: Option<f32>,
) -> impl Fn(f32, f32) -> (f32, f32) {
    let sqrt_alpha_t = alpha_prod_t.sqrt();
    let sqrt_beta_t = (1.0 - alpha_prod_t).sqrt();
    let clamp = move |x: f32| match clip {
        Some(range) if !x.is_nan() => x.max(-range).min(range),
        _ => x,
    };
    move |s, m| {
        let (pred_original_sample, pred_epsilon) = match prediction_type {
            PredictionType::Epsilon => ((s - sqrt_beta_t * m) / sqrt_alpha_t, m),
            PredictionType::Sample => (m, (s - sqrt_alpha_t * m) / sqrt_beta_t),
            PredictionType::VPrediction => (sqrt_alpha_t * s - sqrt_beta_t * m, sqrt_alpha_t * m + sqrt_beta_t * s),
        };
        (clamp(pred_original_sample), pred_epsilon)
    }
}

/// Element-wise `f(a, b)` of two same-shaped tensors.
///
/// # Panics
/// If the shapes differ; the denoising loop always passes a model output shaped like its sample.
pub(crate) fn zip_map(a: &ArrayD<f32>, b: &ArrayD<f32>, f: impl Fn(f32, f32) -> f32) -> ArrayD<f32> {
    Zip::from(a).and(b).map_collect(|&x, &y| f(x, y))
}

/// Element-wise `f(a, b, c)` of three same-shaped tensors.
///
/// # Panics
/// If the shapes differ.
pub(crate) fn zip_map3(
    a: &ArrayD<f32>,
    b: &ArrayD<f32>,
    c: &ArrayD<f32>,
    f: impl Fn(f32, f32, f32) -> f32,
) -> ArrayD<f32> {
    Zip::from(a).and(b).and(c).map_collect(|&x, &y, &z| f(x, y, z))
}
