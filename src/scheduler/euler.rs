//! diffusers' `EulerDiscreteScheduler` (the deterministic sampler: `s_churn = 0`, so no noise is injected).

use ndarray::ArrayD;

use super::common::{
    alphas_cumprod, check_steps, exponential_sigmas, karras_sigmas, np_arange, np_interp_unit_grid, np_linspace,
    sigma_to_t, torch_linspace_f32, train_sigmas, zip_map,
};
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::{NoiseSource, Scheduler};
use crate::{Error, Result};

const CLASS: &str = "EulerDiscreteScheduler";

/// How the inference sigmas are derived from the training sigmas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SigmaSchedule {
    /// Training sigmas interpolated at the inference timesteps.
    Interpolated,
    Karras,
    Exponential,
}

/// Euler's method on the probability-flow ODE in sigma space (k-diffusion's `sample_euler`).
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    num_train_timesteps: usize,
    prediction_type: PredictionType,
    timestep_spacing: TimestepSpacing,
    steps_offset: i64,
    log_linear: bool,
    sigma_schedule: SigmaSchedule,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    final_sigma_min: bool,
    /// `timestep_type = "continuous"` with v-prediction: timesteps are `0.25 * ln(sigma)`.
    continuous_timesteps: bool,
    alphas_cumprod: Vec<f32>,
    /// One per timestep plus the final sigma (0, or the smallest training sigma).
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
}

impl EulerDiscreteScheduler {
    /// Builds the scheduler, applying EulerDiscreteScheduler's defaults to missing config keys.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let num_train_timesteps = config.train_timesteps()?;
        let prediction_type = config.parsed_prediction_type()?;
        let timestep_spacing = config.parsed_timestep_spacing(TimestepSpacing::Linspace)?;
        let log_linear = match config.interpolation_type.as_deref().unwrap_or("linear") {
            "linear" => false,
            "log_linear" => true,
            other => {
                return Err(Error::bad_input(format!(
                    "{CLASS}: interpolation_type `{other}` is not supported; use linear or log_linear."
                )));
            }
        };
        let final_sigma_min = match config.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => false,
            "sigma_min" => true,
            other => {
                return Err(Error::bad_input(format!(
                    "{CLASS}: final_sigmas_type `{other}` is not supported; use zero or sigma_min."
                )));
            }
        };
        let continuous_timesteps = match config.timestep_type.as_deref().unwrap_or("discrete") {
            "discrete" => false,
            "continuous" => prediction_type == PredictionType::VPrediction,
            other => {
                return Err(Error::bad_input(format!(
                    "{CLASS}: timestep_type `{other}` is not supported; use discrete or continuous."
                )));
            }
        };
        let karras = config.use_karras_sigmas.unwrap_or(false);
        let exponential = config.use_exponential_sigmas.unwrap_or(false);
        let beta = config.use_beta_sigmas.unwrap_or(false);
        if usize::from(karras) + usize::from(exponential) + usize::from(beta) > 1 {
            return Err(Error::bad_input(format!(
                "{CLASS}: only one of use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas can be true."
            )));
        }
        if beta {
            return Err(Error::bad_input(format!("{CLASS}: use_beta_sigmas = true is not supported by dfast.")));
        }
        let sigma_schedule = match (karras, exponential) {
            (true, _) => SigmaSchedule::Karras,
            (_, true) => SigmaSchedule::Exponential,
            _ => SigmaSchedule::Interpolated,
        };
        let rescale = config.rescale_betas_zero_snr.unwrap_or(false);
        let alphas_cumprod = alphas_cumprod(config, rescale, true)?;

        // Before set_timesteps diffusers exposes the full training schedule; so do we.
        let mut sigmas: Vec<f32> = train_sigmas(&alphas_cumprod).into_iter().rev().collect();
        let timesteps: Vec<f64> = if continuous_timesteps {
            sigmas.iter().map(|s| f64::from(0.25 * s.ln())).collect()
        } else {
            (0..num_train_timesteps).rev().map(|t| t as f64).collect()
        };
        sigmas.push(0.0);
        let mut scheduler = Self {
            num_train_timesteps,
            prediction_type,
            timestep_spacing,
            steps_offset: config.steps_offset.unwrap_or(0),
            log_linear,
            sigma_schedule,
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            final_sigma_min,
            continuous_timesteps,
            alphas_cumprod,
            sigmas,
            timesteps,
            init_noise_sigma: 1.0,
        };
        scheduler.init_noise_sigma = scheduler.compute_init_noise_sigma();
        Ok(scheduler)
    }

    /// The sigmas of the current schedule: one per timestep, then the final sigma.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn compute_init_noise_sigma(&self) -> f64 {
        let max_sigma = self.sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        match self.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => f64::from(max_sigma),
            TimestepSpacing::Leading => f64::from((max_sigma * max_sigma + 1.0).sqrt()),
        }
    }

    /// The float32 timesteps diffusers derives from `timestep_spacing` (before any Karras/exponential remapping).
    fn spaced_timesteps(&self, num_inference_steps: usize) -> Vec<f32> {
        let n_train = self.num_train_timesteps;
        match self.timestep_spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (n_train - 1) as f64, num_inference_steps)
                .into_iter()
                .rev()
                .map(|t| t as f32)
                .collect(),
            TimestepSpacing::Leading => {
                let step_ratio = n_train / num_inference_steps;
                // numpy adds the integer offset to the float32 array in float32.
                let offset = self.steps_offset as f32;
                (0..num_inference_steps).rev().map(|i| (i * step_ratio) as f32 + offset).collect()
            }
            TimestepSpacing::Trailing => {
                let step_ratio = n_train as f64 / num_inference_steps as f64;
                np_arange(n_train as f64, 0.0, -step_ratio)
                    .into_iter()
                    .map(|t| t.round_ties_even() as f32 - 1.0)
                    .collect()
            }
        }
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        check_steps(CLASS, num_inference_steps)?;
        let mut timesteps = self.spaced_timesteps(num_inference_steps);
        let train_sigmas = train_sigmas(&self.alphas_cumprod);
        let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();

        let mut sigmas: Vec<f64> = if self.log_linear {
            // diffusers' log_linear ignores the timesteps and spans the whole training range in n + 1 points.
            let (Some(&smallest), Some(&largest)) = (train_sigmas.first(), train_sigmas.last()) else {
                return Err(Error::bad_input(format!("{CLASS}: the training schedule is empty.")));
            };
            torch_linspace_f32(f64::from(largest.ln()), f64::from(smallest.ln()), num_inference_steps + 1)
                .into_iter()
                .map(|l| f64::from(l.exp()))
                .collect()
        } else {
            let fp: Vec<f64> = train_sigmas.iter().map(|&s| f64::from(s)).collect();
            timesteps.iter().map(|&t| np_interp_unit_grid(f64::from(t), &fp)).collect()
        };

        if self.sigma_schedule != SigmaSchedule::Interpolated {
            let (Some(&last), Some(&first)) = (sigmas.last(), sigmas.first()) else {
                return Err(Error::bad_input(format!("{CLASS}: the sigma schedule is empty.")));
            };
            let sigma_min = self.sigma_min.unwrap_or(last);
            let sigma_max = self.sigma_max.unwrap_or(first);
            sigmas = match self.sigma_schedule {
                SigmaSchedule::Karras => karras_sigmas(sigma_min, sigma_max, num_inference_steps),
                _ => exponential_sigmas(sigma_min, sigma_max, num_inference_steps),
            };
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas) as f32).collect();
        }

        let sigma_last = if self.final_sigma_min {
            let a = self.alphas_cumprod[0];
            ((1.0 - a) / a).sqrt()
        } else {
            0.0
        };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(sigma_last);

        self.timesteps = if self.continuous_timesteps {
            sigmas[..sigmas.len() - 1].iter().map(|s| f64::from(0.25 * s.ln())).collect()
        } else {
            timesteps.into_iter().map(f64::from).collect()
        };
        self.sigmas = sigmas;
        self.init_noise_sigma = self.compute_init_noise_sigma();
        Ok(())
    }

    fn num_inference_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn add_noise(&self, original: &ArrayD<f32>, noise: &ArrayD<f32>, step_index: usize) -> ArrayD<f32> {
        let sigma = self.sigmas[step_index];
        zip_map(original, noise, |x, n| x + n * sigma)
    }

    fn scale_model_input(&self, sample: ArrayD<f32>, step_index: usize) -> ArrayD<f32> {
        let sigma = self.sigmas[step_index];
        let denom = (sigma * sigma + 1.0).sqrt();
        sample.mapv_into(|x| x / denom)
    }

    fn step(
        &mut self,
        model_output: &ArrayD<f32>,
        step_index: usize,
        sample: &ArrayD<f32>,
        _noise: &mut dyn NoiseSource,
    ) -> ArrayD<f32> {
        let sigma = self.sigmas[step_index];
        // s_churn = 0 makes gamma 0, so sigma_hat is sigma.
        let sigma_hat = sigma;
        let dt = self.sigmas[step_index + 1] - sigma_hat;
        // The per-element operation order follows diffusers so float32 rounding matches.
        match self.prediction_type {
            PredictionType::Epsilon => zip_map(sample, model_output, |s, m| {
                let pred_original_sample = s - sigma_hat * m;
                let derivative = (s - pred_original_sample) / sigma_hat;
                s + derivative * dt
            }),
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                let c_skip_denom = sigma * sigma + 1.0;
                zip_map(sample, model_output, |s, m| {
                    let pred_original_sample = m * c_out + s / c_skip_denom;
                    let derivative = (s - pred_original_sample) / sigma_hat;
                    s + derivative * dt
                })
            }
            PredictionType::Sample => zip_map(sample, model_output, |s, m| {
                let derivative = (s - m) / sigma_hat;
                s + derivative * dt
            }),
        }
    }

    fn pred_original_sample(
        &self,
        model_output: &ArrayD<f32>,
        step_index: usize,
        sample: &ArrayD<f32>,
    ) -> Option<ArrayD<f32>> {
        let sigma = self.sigmas[step_index];
        Some(match self.prediction_type {
            PredictionType::Epsilon => zip_map(sample, model_output, |s, m| s - sigma * m),
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                let c_skip_denom = sigma * sigma + 1.0;
                zip_map(sample, model_output, |s, m| m * c_out + s / c_skip_denom)
            }
            PredictionType::Sample => model_output.clone(),
        })
    }
}
