//! diffusers' `LCMScheduler` (Latent Consistency Models, Luo et al. 2023): each step maps the sample to the
//! consistency function's estimate `denoised` and, before the last step, noises it again to the next
//! timestep with fresh noise. For LCM UNets and for ordinary UNets with an LCM-LoRA.

use ndarray::ArrayD;

use super::common::{alphas_cumprod, alphas_cumprod_add_noise, check_steps, predict_original, zip_map};
use super::config::{PredictionType, SchedulerConfig};
use super::{NoiseSource, Scheduler};
use crate::{Error, Result};

const CLASS: &str = "LCMScheduler";

/// LCMScheduler's own defaults for the beta schedule (the other classes default to `linear`, 1e-4 to 0.02).
const BETA_START: f64 = 0.00085;
const BETA_END: f64 = 0.012;
const BETA_SCHEDULE: &str = "scaled_linear";
/// The boundary condition's `sigma_data`.
const SIGMA_DATA: f32 = 0.5;

/// Multistep consistency sampling on the timesteps of an `original_inference_steps`-step distillation schedule.
#[derive(Debug, Clone)]
pub struct LcmScheduler {
    num_train_timesteps: usize,
    original_inference_steps: usize,
    prediction_type: PredictionType,
    clip_sample: bool,
    clip_sample_range: f32,
    timestep_scaling: f32,
    alphas_cumprod: Vec<f32>,
    /// alpha_cumprod past timestep 0: 1 with `set_alpha_to_one`, else `alphas_cumprod[0]`.
    final_alpha_cumprod: f32,
    num_inference_steps: usize,
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
}

impl LcmScheduler {
    /// Builds the scheduler, applying LCMScheduler's defaults to missing config keys.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        config.reject_unsupported(CLASS)?;
        let num_train_timesteps = config.train_timesteps()?;
        let mut own = config.clone();
        own.beta_start.get_or_insert(BETA_START);
        own.beta_end.get_or_insert(BETA_END);
        own.beta_schedule.get_or_insert_with(|| BETA_SCHEDULE.to_string());
        let alphas_cumprod = alphas_cumprod(&own, config.rescale_betas_zero_snr.unwrap_or(false), false)?;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) { 1.0 } else { alphas_cumprod[0] };
        let original_inference_steps = config.original_inference_steps.unwrap_or(50);
        if original_inference_steps == 0 || original_inference_steps > num_train_timesteps {
            return Err(Error::bad_input(format!(
                "{CLASS}: original_inference_steps is {original_inference_steps}; it must be between 1 and the \
                 {num_train_timesteps} training timesteps."
            )));
        }
        let timesteps: Vec<i64> = (0..num_train_timesteps as i64).rev().collect();
        Ok(Self {
            num_train_timesteps,
            original_inference_steps,
            prediction_type: config.parsed_prediction_type()?,
            clip_sample: config.clip_sample.unwrap_or(false),
            clip_sample_range: config.clip_sample_range.unwrap_or(1.0) as f32,
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0) as f32,
            alphas_cumprod,
            final_alpha_cumprod,
            num_inference_steps: 0,
            timesteps_f64: timesteps.iter().map(|&t| t as f64).collect(),
            timesteps,
        })
    }

    /// `(c_skip, c_out)` of the consistency boundary condition at `timestep`, in float32 as torch computes
    /// them from the integer timestep tensor.
    fn scalings(&self, timestep: i64) -> (f32, f32) {
        let scaled = timestep as f32 * self.timestep_scaling;
        let sd2 = SIGMA_DATA * SIGMA_DATA;
        let c_skip = sd2 / (scaled * scaled + sd2);
        let c_out = scaled / (scaled * scaled + sd2).sqrt();
        (c_skip, c_out)
    }

    /// `denoised = c_out * predicted_original_sample + c_skip * sample` at step `step_index`.
    fn denoised(&self, model_output: &ArrayD<f32>, step_index: usize, sample: &ArrayD<f32>) -> ArrayD<f32> {
        let timestep = self.timesteps[step_index];
        let (c_skip, c_out) = self.scalings(timestep);
        let clip = self.clip_sample.then_some(self.clip_sample_range);
        let predict = predict_original(self.alphas_cumprod[timestep as usize], self.prediction_type, clip);
        zip_map(sample, model_output, |s, m| c_out * predict(s, m).0 + c_skip * s)
    }
}

impl Scheduler for LcmScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        check_steps(CLASS, num_inference_steps)?;
        let original_steps = self.original_inference_steps;
        if num_inference_steps > original_steps {
            return Err(Error::bad_input(format!(
                "{CLASS}: {num_inference_steps} inference steps exceed the {original_steps} steps of the \
                 distillation schedule (original_inference_steps) they are taken from."
            )));
        }
        let k = (self.num_train_timesteps / original_steps) as i64;
        // The distillation schedule, latest first.
        let origin: Vec<i64> = (1..=original_steps as i64).rev().map(|i| i * k - 1).collect();
        // numpy's `floor(linspace(0, len, n, endpoint=False))`.
        let step = origin.len() as f64 / num_inference_steps as f64;
        let timesteps: Vec<i64> =
            (0..num_inference_steps).map(|i| origin[(i as f64 * step).floor() as usize]).collect();
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
        let denoised = self.denoised(model_output, step_index, sample);
        // No noise after the last step (nor, so, in one-step sampling); none is drawn there.
        let Some(&prev_timestep) = self.timesteps.get(step_index + 1) else { return denoised };
        let alpha_prod_t_prev =
            if prev_timestep >= 0 { self.alphas_cumprod[prev_timestep as usize] } else { self.final_alpha_cumprod };
        let (sqrt_alpha_prev, sqrt_beta_prev) = (alpha_prod_t_prev.sqrt(), (1.0 - alpha_prod_t_prev).sqrt());
        let noise = noise.randn(model_output.shape());
        zip_map(&denoised, &noise, |d, n| sqrt_alpha_prev * d + sqrt_beta_prev * n)
    }

    /// diffusers' LCM step returns `denoised` where the others return `pred_original_sample`.
    fn pred_original_sample(
        &self,
        model_output: &ArrayD<f32>,
        step_index: usize,
        sample: &ArrayD<f32>,
    ) -> Option<ArrayD<f32>> {
        Some(self.denoised(model_output, step_index, sample))
    }
}
