//! diffusers' `DDIMScheduler`: deterministic at `eta = 0`, with fresh noise of `eta` times DDPM's standard
//! deviation at each step otherwise (`eta = 1` is DDPM's variance).

use ndarray::ArrayD;

use super::common::{
    alphas_cumprod, alphas_cumprod_add_noise, check_steps, check_timesteps_in_range, integer_timesteps,
    predict_original, zip_map,
};
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::{NoiseSource, Scheduler};
use crate::{Error, Result};

const CLASS: &str = "DDIMScheduler";

/// Denoising Diffusion Implicit Models (Song et al. 2020).
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    num_train_timesteps: usize,
    prediction_type: PredictionType,
    timestep_spacing: TimestepSpacing,
    steps_offset: i64,
    clip_sample: bool,
    clip_sample_range: f32,
    alphas_cumprod: Vec<f32>,
    /// alpha_cumprod used past the last timestep: 1 with `set_alpha_to_one`, else `alphas_cumprod[0]`.
    final_alpha_cumprod: f32,
    /// The step's `eta`, which diffusers' pipelines pass to `step` (default 0).
    eta: f32,
    num_inference_steps: usize,
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
}

impl DdimScheduler {
    /// The same scheduler stepping with `eta` (diffusers' pipelines' `eta=` argument).
    pub fn with_eta(self, eta: f64) -> Self {
        Self { eta: eta as f32, ..self }
    }

    /// Builds the scheduler, applying DDIMScheduler's defaults to missing config keys.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        config.reject_unsupported(CLASS)?;
        let num_train_timesteps = config.train_timesteps()?;
        let rescale = config.rescale_betas_zero_snr.unwrap_or(false);
        // DDIM keeps the exact zero terminal alpha that the rescaling produces.
        let alphas_cumprod = alphas_cumprod(config, rescale, false)?;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) { 1.0 } else { alphas_cumprod[0] };
        let timesteps: Vec<i64> = (0..num_train_timesteps as i64).rev().collect();
        Ok(Self {
            num_train_timesteps,
            prediction_type: config.parsed_prediction_type()?,
            timestep_spacing: config.parsed_timestep_spacing(TimestepSpacing::Leading)?,
            steps_offset: config.steps_offset.unwrap_or(0),
            clip_sample: config.clip_sample.unwrap_or(true),
            clip_sample_range: config.clip_sample_range.unwrap_or(1.0) as f32,
            alphas_cumprod,
            final_alpha_cumprod,
            eta: 0.0,
            num_inference_steps: 0,
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
        })
    }
}

impl Scheduler for DdimScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        check_steps(CLASS, num_inference_steps)?;
        if num_inference_steps > self.num_train_timesteps {
            return Err(Error::bad_input(format!(
                "{CLASS}: {num_inference_steps} inference steps exceed the {} training timesteps.",
                self.num_train_timesteps
            )));
        }
        let timesteps =
            integer_timesteps(self.timestep_spacing, self.num_train_timesteps, num_inference_steps, self.steps_offset);
        check_timesteps_in_range(CLASS, &timesteps, self.num_train_timesteps)?;
        self.num_inference_steps = num_inference_steps;
        self.timesteps_f64 = timesteps.iter().map(|&t| t as f64).collect();
        self.timesteps = timesteps;
        Ok(())
    }

    fn num_inference_steps(&self) -> usize {
        self.num_inference_steps
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps_f64
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: ArrayD<f32>, _step_index: usize) -> ArrayD<f32> {
        sample
    }

    fn add_noise(&self, original: &ArrayD<f32>, noise: &ArrayD<f32>, step_index: usize) -> ArrayD<f32> {
        alphas_cumprod_add_noise(&self.alphas_cumprod, self.timesteps[step_index], original, noise)
    }

    fn step(
        &mut self,
        model_output: &ArrayD<f32>,
        step_index: usize,
        sample: &ArrayD<f32>,
        noise: &mut dyn NoiseSource,
    ) -> ArrayD<f32> {
        let timestep = self.timesteps[step_index];
        // diffusers steps back by the nominal ratio even when the spacing is not uniform (trailing/linspace).
        let prev_timestep = timestep - (self.num_train_timesteps / self.num_inference_steps.max(1)) as i64;
        let alpha_prod_t = self.alphas_cumprod[timestep as usize];
        let alpha_prod_t_prev =
            if prev_timestep >= 0 { self.alphas_cumprod[prev_timestep as usize] } else { self.final_alpha_cumprod };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;

        // At eta = 0 diffusers still folds the (zero) noise level into the direction coefficient; keep it so
        // degenerate schedules produce the same NaNs.
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta * variance.sqrt();
        let direction_coeff = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let sqrt_alpha_prev = alpha_prod_t_prev.sqrt();

        let predict = self.predict(timestep);
        let prev_sample = zip_map(sample, model_output, |s, m| {
            let (pred_original_sample, pred_epsilon) = predict(s, m);
            sqrt_alpha_prev * pred_original_sample + direction_coeff * pred_epsilon
        });
        if self.eta <= 0.0 {
            return prev_sample;
        }
        // Drawn only when eta > 0, as diffusers draws it.
        let variance_noise = noise.randn(model_output.shape());
        zip_map(&prev_sample, &variance_noise, |p, n| p + std_dev_t * n)
    }

    fn pred_original_sample(
        &self,
        model_output: &ArrayD<f32>,
        step_index: usize,
        sample: &ArrayD<f32>,
    ) -> Option<ArrayD<f32>> {
        let predict = self.predict(self.timesteps[step_index]);
        Some(zip_map(sample, model_output, |s, m| predict(s, m).0))
    }
}

impl DdimScheduler {
    /// (pred_original_sample, clipped as configured; pred_epsilon) from one sample value and model output at
    /// `timestep`.
    fn predict(&self, timestep: i64) -> impl Fn(f32, f32) -> (f32, f32) + use<> {
        let clip = self.clip_sample.then_some(self.clip_sample_range);
        predict_original(self.alphas_cumprod[timestep as usize], self.prediction_type, clip)
    }
}
