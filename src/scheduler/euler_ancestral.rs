//! diffusers' `EulerAncestralDiscreteScheduler`: Euler's step down to `sigma_down`, then fresh noise of
//! standard deviation `sigma_up` (k-diffusion's `sample_euler_ancestral`, eta 1). SDXL-Turbo's scheduler,
//! with `timestep_spacing = "trailing"`.

use ndarray::ArrayD;

use super::common::zip_map;
use super::config::{PredictionType, SchedulerConfig};
use super::euler::EulerDiscreteScheduler;
use super::{NoiseSource, Scheduler};
use crate::{Error, Result};

const CLASS: &str = "EulerAncestralDiscreteScheduler";

/// The schedule (timesteps, sigmas, `init_noise_sigma`, `scale_model_input`, `add_noise`) is
/// `EulerDiscreteScheduler`'s with its default options, which is what diffusers' class computes; only the
/// step differs.
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    schedule: EulerDiscreteScheduler,
    prediction_type: PredictionType,
}

impl EulerAncestralDiscreteScheduler {
    /// Builds the scheduler from the keys diffusers' class reads (others, such as Euler's
    /// `use_karras_sigmas`, are ignored as `from_config` ignores them).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let prediction_type = config.parsed_prediction_type()?;
        if prediction_type == PredictionType::Sample {
            return Err(Error::bad_input(format!(
                "{CLASS}: prediction_type `sample` is not implemented by diffusers either; use epsilon or \
                 v_prediction."
            )));
        }
        let own = SchedulerConfig {
            num_train_timesteps: config.num_train_timesteps,
            beta_start: config.beta_start,
            beta_end: config.beta_end,
            beta_schedule: config.beta_schedule.clone(),
            trained_betas: config.trained_betas.clone(),
            prediction_type: config.prediction_type.clone(),
            timestep_spacing: config.timestep_spacing.clone(),
            steps_offset: config.steps_offset,
            rescale_betas_zero_snr: config.rescale_betas_zero_snr,
            ..SchedulerConfig::default()
        };
        Ok(Self { schedule: EulerDiscreteScheduler::new(&own)?, prediction_type })
    }

    /// The sigmas of the current schedule: one per timestep, then 0.
    pub fn sigmas(&self) -> &[f32] {
        self.schedule.sigmas()
    }

    /// `pred_original_sample` at `sigma`, per element as diffusers computes it.
    fn predict(&self, sigma: f32) -> impl Fn(f32, f32) -> f32 + use<> {
        let prediction_type = self.prediction_type;
        let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
        let c_skip_denom = sigma * sigma + 1.0;
        move |s, m| match prediction_type {
            PredictionType::VPrediction => m * c_out + s / c_skip_denom,
            _ => s - sigma * m,
        }
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.schedule.set_timesteps(num_inference_steps)
    }

    fn num_inference_steps(&self) -> usize {
        self.schedule.num_inference_steps()
    }

    fn timesteps(&self) -> &[f64] {
        self.schedule.timesteps()
    }

    fn init_noise_sigma(&self) -> f64 {
        self.schedule.init_noise_sigma()
    }

    fn add_noise(&self, original: &ArrayD<f32>, noise: &ArrayD<f32>, step_index: usize) -> ArrayD<f32> {
        self.schedule.add_noise(original, noise, step_index)
    }

    fn scale_model_input(&self, sample: ArrayD<f32>, step_index: usize) -> ArrayD<f32> {
        self.schedule.scale_model_input(sample, step_index)
    }

    fn step(
        &mut self,
        model_output: &ArrayD<f32>,
        step_index: usize,
        sample: &ArrayD<f32>,
        noise: &mut dyn NoiseSource,
    ) -> ArrayD<f32> {
        let sigmas = self.schedule.sigmas();
        let (sigma_from, sigma_to) = (sigmas[step_index], sigmas[step_index + 1]);
        let sigma = sigma_from;
        // float32 scalars, in diffusers' order.
        let sigma_up =
            (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma;
        let predict = self.predict(sigma);
        let prev_sample = zip_map(sample, model_output, |s, m| {
            let pred_original_sample = predict(s, m);
            let derivative = (s - pred_original_sample) / sigma;
            s + derivative * dt
        });
        // Drawn at every step, the last one included (where sigma_up is 0), as diffusers draws it.
        let noise = noise.randn(model_output.shape());
        zip_map(&prev_sample, &noise, |p, n| p + n * sigma_up)
    }

    fn pred_original_sample(
        &self,
        model_output: &ArrayD<f32>,
        step_index: usize,
        sample: &ArrayD<f32>,
    ) -> Option<ArrayD<f32>> {
        let predict = self.predict(self.schedule.sigmas()[step_index]);
        Some(zip_map(sample, model_output, predict))
    }
}
