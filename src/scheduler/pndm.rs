//! diffusers' `PNDMScheduler`: pseudo numerical methods (Liu et al. 2022), PLMS with optional Runge-Kutta warm-up.

use ndarray::ArrayD;

use super::common::{alphas_cumprod_add_noise, check_steps, check_timesteps_in_range, integer_timesteps, zip_map};
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::{NoiseSource, Scheduler};
use crate::{Error, Result};

const CLASS: &str = "PNDMScheduler";

/// Number of past model outputs the linear multistep method uses.
const PNDM_ORDER: usize = 4;

// diffusers multiplies by Python floats, which torch rounds to float32 from the float64 quotient.
const ONE_SIXTH: f32 = (1.0f64 / 6.0) as f32;
const ONE_THIRD: f32 = (1.0f64 / 3.0) as f32;
const ONE_TWENTY_FOURTH: f32 = (1.0f64 / 24.0) as f32;

/// PNDM. With `skip_prk_steps` (what Stable Diffusion ships) the first step is a second-order PLMS warm-up that
/// evaluates the model twice at the same timestep, so there are `num_inference_steps + 1` timesteps; without it,
/// three Runge-Kutta steps (12 model evaluations) start the schedule.
#[derive(Debug, Clone)]
pub struct PndmScheduler {
    num_train_timesteps: usize,
    prediction_type: PredictionType,
    timestep_spacing: TimestepSpacing,
    steps_offset: i64,
    skip_prk_steps: bool,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_inference_steps: usize,
    /// Number of leading Runge-Kutta timesteps in `timesteps`.
    num_prk_timesteps: usize,
    timesteps: Vec<i64>,
    timesteps_f64: Vec<f64>,
    /// History of model outputs (one per PLMS step, one per full Runge-Kutta step).
    ets: Vec<ArrayD<f32>>,
    counter: usize,
    cur_model_output: Option<ArrayD<f32>>,
    cur_sample: Option<ArrayD<f32>>,
}

impl PndmScheduler {
    /// Builds the scheduler, applying PNDMScheduler's defaults to missing config keys.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let num_train_timesteps = config.train_timesteps()?;
        let prediction_type = config.parsed_prediction_type()?;
        if prediction_type == PredictionType::Sample {
            return Err(Error::bad_input(format!(
                "{CLASS}: prediction_type `sample` is not supported by this scheduler; use epsilon or v_prediction."
            )));
        }
        // PNDMScheduler has no rescale_betas_zero_snr parameter, so diffusers ignores that key here.
        let alphas_cumprod = super::common::alphas_cumprod(config, false, false)?;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(false) { 1.0 } else { alphas_cumprod[0] };
        Ok(Self {
            num_train_timesteps,
            prediction_type,
            timestep_spacing: config.parsed_timestep_spacing(TimestepSpacing::Leading)?,
            steps_offset: config.steps_offset.unwrap_or(0),
            skip_prk_steps: config.skip_prk_steps.unwrap_or(false),
            alphas_cumprod,
            final_alpha_cumprod,
            num_inference_steps: 0,
            num_prk_timesteps: 0,
            timesteps: Vec::new(),
            timesteps_f64: Vec::new(),
            ets: Vec::new(),
            counter: 0,
            cur_model_output: None,
            cur_sample: None,
        })
    }

    /// The nominal distance between two inference timesteps, which diffusers uses whatever the spacing.
    fn step_ratio(&self) -> i64 {
        (self.num_train_timesteps / self.num_inference_steps.max(1)) as i64
    }

    fn alpha_cumprod_at(&self, timestep: i64) -> f32 {
        if timestep >= 0 { self.alphas_cumprod[timestep as usize] } else { self.final_alpha_cumprod }
    }

    /// Formula (9) of the PNDM paper: x_{t-delta} from x_t and the (combined) model output at t.
    fn prev_sample(
        &self,
        sample: &ArrayD<f32>,
        timestep: i64,
        prev_timestep: i64,
        model_output: &ArrayD<f32>,
    ) -> ArrayD<f32> {
        let alpha_prod_t = self.alpha_cumprod_at(timestep);
        let alpha_prod_t_prev = self.alpha_cumprod_at(prev_timestep);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let sample_coeff = (alpha_prod_t_prev / alpha_prod_t).sqrt();
        let model_output_denom_coeff =
            alpha_prod_t * beta_prod_t_prev.sqrt() + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt();
        let alpha_diff = alpha_prod_t_prev - alpha_prod_t;
        let (sqrt_alpha_t, sqrt_beta_t) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
        let v_prediction = self.prediction_type == PredictionType::VPrediction;
        zip_map(sample, model_output, |s, m| {
            let eps = if v_prediction { sqrt_alpha_t * m + sqrt_beta_t * s } else { m };
            sample_coeff * s - alpha_diff * eps / model_output_denom_coeff
        })
    }

    fn step_prk(&mut self, model_output: &ArrayD<f32>, step_index: usize, sample: &ArrayD<f32>) -> ArrayD<f32> {
        let counter = self.counter;
        let diff_to_prev = if counter % 2 == 1 { 0 } else { self.step_ratio() / 2 };
        let prev_timestep = self.timesteps[step_index] - diff_to_prev;
        let timestep = self.timesteps[counter / 4 * 4];
        let combined;
        let model_output = match counter % 4 {
            0 => {
                self.cur_model_output = Some(model_output.mapv(|m| ONE_SIXTH * m));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output
            }
            1 | 2 => {
                if let Some(cur) = self.cur_model_output.as_mut() {
                    cur.zip_mut_with(model_output, |c, &m| *c += ONE_THIRD * m);
                }
                model_output
            }
            _ => {
                combined = match self.cur_model_output.take() {
                    Some(cur) => zip_map(&cur, model_output, |c, m| c + ONE_SIXTH * m),
                    None => model_output.mapv(|m| ONE_SIXTH * m),
                };
                &combined
            }
        };
        let cur_sample = self.cur_sample.as_ref().unwrap_or(sample);
        let prev = self.prev_sample(cur_sample, timestep, prev_timestep, model_output);
        self.counter += 1;
        prev
    }

    fn step_plms(&mut self, model_output: &ArrayD<f32>, step_index: usize, sample: &ArrayD<f32>) -> ArrayD<f32> {
        let mut timestep = self.timesteps[step_index];
        let mut prev_timestep = timestep - self.step_ratio();
        if self.counter != 1 {
            let keep_from = self.ets.len().saturating_sub(PNDM_ORDER - 1);
            self.ets.drain(..keep_from);
            self.ets.push(model_output.clone());
        } else {
            // The second warm-up evaluation revisits the first step from the same starting sample.
            prev_timestep = timestep;
            timestep += self.step_ratio();
        }

        let n = self.ets.len();
        let mut sample = sample;
        let held_sample;
        let combined = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output.clone()
        } else if n == 1 && self.counter == 1 {
            if let Some(cur) = self.cur_sample.take() {
                held_sample = cur;
                sample = &held_sample;
            }
            zip_map(model_output, &self.ets[0], |m, e| (m + e) / 2.0)
        } else if n == 2 {
            zip_map(&self.ets[1], &self.ets[0], |e1, e2| (3.0 * e1 - e2) / 2.0)
        } else if n == 3 {
            let partial = zip_map(&self.ets[2], &self.ets[1], |e1, e2| 23.0 * e1 - 16.0 * e2);
            zip_map(&partial, &self.ets[0], |p, e3| (p + 5.0 * e3) / 12.0)
        } else {
            let partial = zip_map(&self.ets[n - 1], &self.ets[n - 2], |e1, e2| 55.0 * e1 - 59.0 * e2);
            let partial = zip_map(&partial, &self.ets[n - 3], |p, e3| p + 37.0 * e3);
            zip_map(&partial, &self.ets[n - 4], |p, e4| ONE_TWENTY_FOURTH * (p - 9.0 * e4))
        };
        let prev = self.prev_sample(sample, timestep, prev_timestep, &combined);
        self.counter += 1;
        prev
    }
}

impl Scheduler for PndmScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        check_steps(CLASS, num_inference_steps)?;
        let n_train = self.num_train_timesteps;
        // Ascending, as diffusers' `_timesteps`.
        let mut base: Vec<i64> =
            integer_timesteps(self.timestep_spacing, n_train, num_inference_steps, self.steps_offset);
        base.reverse();
        if base.is_empty() {
            return Err(Error::bad_input(format!(
                "{CLASS}: this config gives no timesteps for {num_inference_steps} steps."
            )));
        }

        let (prk, plms): (Vec<i64>, Vec<i64>) = if self.skip_prk_steps {
            // The second-to-last entry is repeated: the warm-up evaluates the model twice there.
            let len = base.len();
            let mut plms: Vec<i64> = base[..len - 1].to_vec();
            if len >= 2 {
                plms.push(base[len - 2]);
            }
            plms.push(base[len - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            if base.len() < PNDM_ORDER {
                return Err(Error::bad_input(format!(
                    "{CLASS}: with skip_prk_steps = false at least {PNDM_ORDER} inference steps are needed."
                )));
            }
            let half = (n_train / num_inference_steps / 2) as i64;
            let pairs: Vec<i64> =
                base[base.len() - PNDM_ORDER..].iter().flat_map(|&t| [t, t.saturating_add(half)]).collect();
            let doubled: Vec<i64> = pairs[..pairs.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let mut plms = base[..base.len() - 3].to_vec();
            plms.reverse();
            (prk, plms)
        };
        let timesteps: Vec<i64> = prk.iter().chain(&plms).copied().collect();
        check_timesteps_in_range(CLASS, &timesteps, n_train)?;
        if self.skip_prk_steps && timesteps.len() > 1 {
            // The warm-up's second evaluation steps from timesteps[1] + step_ratio.
            let ratio = (n_train / num_inference_steps) as i64;
            check_timesteps_in_range(CLASS, &[timesteps[1] + ratio], n_train)?;
        }

        self.num_inference_steps = num_inference_steps;
        self.num_prk_timesteps = prk.len();
        self.timesteps_f64 = timesteps.iter().map(|&t| t as f64).collect();
        self.timesteps = timesteps;
        self.ets.clear();
        self.counter = 0;
        self.cur_model_output = None;
        self.cur_sample = None;
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
        _noise: &mut dyn NoiseSource,
    ) -> ArrayD<f32> {
        if self.counter < self.num_prk_timesteps && !self.skip_prk_steps {
            self.step_prk(model_output, step_index, sample)
        } else {
            self.step_plms(model_output, step_index, sample)
        }
    }
}
