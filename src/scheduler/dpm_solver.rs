//! diffusers' `DPMSolverMultistepScheduler` with `algorithm_type = "dpmsolver++"` (DPM-Solver++ (2M), Lu et al. 2022).

use ndarray::ArrayD;

use super::common::{
    alphas_cumprod, check_steps, exponential_sigmas, karras_sigmas, np_arange, np_interp_unit_grid, np_linspace,
    round_to_i64, sigma_to_t, train_sigmas, zip_map, zip_map3,
};
use super::config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
use super::{NoiseSource, Scheduler};
use crate::{Error, Result};

const CLASS: &str = "DPMSolverMultistepScheduler";

/// How the inference sigmas are derived from the training sigmas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SigmaSchedule {
    Interpolated,
    Karras,
    LuLambdas,
    Exponential,
}

/// Second-order update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

/// DPM-Solver++ multistep in data-prediction form, orders 1 to 3.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    num_train_timesteps: usize,
    prediction_type: PredictionType,
    timestep_spacing: TimestepSpacing,
    steps_offset: i64,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigmas_zero: bool,
    sigma_schedule: SigmaSchedule,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    lambda_min_clipped: f64,
    /// Cosine schedules keep fractional Karras/Lu timesteps (truncated to integers) instead of rounding them.
    cosine_schedule: bool,
    alphas_cumprod: Vec<f32>,
    /// One per timestep plus the final sigma.
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// The last `solver_order` data predictions (x0), oldest first; `None` until filled.
    model_outputs: Vec<Option<ArrayD<f32>>>,
    lower_order_nums: usize,
    /// As asked of `set_timesteps` (a clipped schedule may have fewer timesteps).
    num_inference_steps: usize,
}

/// `(alpha_t, sigma_t, lambda_t)` of a sigma in float32, as `_sigma_to_alpha_sigma_t` plus the log-SNR.
fn alpha_sigma_lambda(sigma: f32) -> (f32, f32, f32) {
    let alpha_t = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha_t;
    (alpha_t, sigma_t, alpha_t.ln() - sigma_t.ln())
}

impl DpmSolverMultistepScheduler {
    /// Builds the scheduler, applying DPMSolverMultistepScheduler's defaults to missing config keys.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        config.reject_unsupported(CLASS)?;
        match config.algorithm_type.as_deref().unwrap_or("dpmsolver++") {
            // diffusers maps the removed "deis" option to dpmsolver++.
            "dpmsolver++" | "deis" => {}
            other => {
                return Err(Error::bad_input(format!(
                    "{CLASS}: algorithm_type `{other}` is not supported; dfast implements dpmsolver++ only."
                )));
            }
        }
        let solver_type = match config.solver_type.as_deref().unwrap_or("midpoint") {
            // diffusers maps the UniPC/DEIS solver names to midpoint.
            "midpoint" | "logrho" | "bh1" | "bh2" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            other => {
                return Err(Error::bad_input(format!(
                    "{CLASS}: solver_type `{other}` is not supported; use midpoint or heun."
                )));
            }
        };
        let solver_order = config.solver_order.unwrap_or(2);
        if !(1..=3).contains(&solver_order) {
            return Err(Error::bad_input(format!("{CLASS}: solver_order must be 1, 2 or 3, not {solver_order}.")));
        }
        let final_sigmas_zero = match config.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => true,
            "sigma_min" => false,
            other => {
                return Err(Error::bad_input(format!(
                    "{CLASS}: final_sigmas_type `{other}` is not supported; use zero or sigma_min."
                )));
            }
        };
        if let Some(variance_type @ ("learned" | "learned_range")) = config.variance_type.as_deref() {
            return Err(Error::bad_input(format!(
                "{CLASS}: variance_type `{variance_type}` (UNets that also predict the variance) is not supported."
            )));
        }
        for (flag, name) in [
            (config.use_beta_sigmas, "use_beta_sigmas"),
            (config.use_flow_sigmas, "use_flow_sigmas"),
            (config.use_dynamic_shifting, "use_dynamic_shifting"),
        ] {
            if flag == Some(true) {
                return Err(Error::bad_input(format!("{CLASS}: {name} = true is not supported by dfast.")));
            }
        }
        let karras = config.use_karras_sigmas.unwrap_or(false);
        let exponential = config.use_exponential_sigmas.unwrap_or(false);
        if karras && exponential {
            return Err(Error::bad_input(format!(
                "{CLASS}: only one of use_karras_sigmas and use_exponential_sigmas can be true."
            )));
        }
        // Same precedence as diffusers' if/elif chain.
        let sigma_schedule = if karras {
            SigmaSchedule::Karras
        } else if config.use_lu_lambdas.unwrap_or(false) {
            SigmaSchedule::LuLambdas
        } else if exponential {
            SigmaSchedule::Exponential
        } else {
            SigmaSchedule::Interpolated
        };
        let num_train_timesteps = config.train_timesteps()?;
        let rescale = config.rescale_betas_zero_snr.unwrap_or(false);
        let alphas_cumprod = alphas_cumprod(config, rescale, true)?;
        // diffusers tests the config string, whether or not trained_betas override it.
        let cosine_schedule = config.parsed_beta_schedule()? == BetaSchedule::SquaredcosCapV2;
        let sigmas = train_sigmas(&alphas_cumprod);
        let solver_order_slots = vec![None; solver_order];
        Ok(Self {
            num_train_timesteps,
            prediction_type: config.parsed_prediction_type()?,
            timestep_spacing: config.parsed_timestep_spacing(TimestepSpacing::Linspace)?,
            steps_offset: config.steps_offset.unwrap_or(0),
            solver_order,
            solver_type,
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final.unwrap_or(false),
            final_sigmas_zero,
            sigma_schedule,
            sigma_min: config.sigma_min,
            sigma_max: config.sigma_max,
            // A null (or the non-standard -Infinity, read as null) means no clipping.
            lambda_min_clipped: config.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            cosine_schedule,
            alphas_cumprod,
            sigmas,
            timesteps: (0..num_train_timesteps).rev().map(|t| t as f64).collect(),
            model_outputs: solver_order_slots,
            lower_order_nums: 0,
            num_inference_steps: num_train_timesteps,
        })
    }

    /// The sigmas of the current schedule: one per timestep, then the final sigma.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// Integer timesteps from `timestep_spacing`, stopping short of the clipped low-SNR end.
    fn spaced_timesteps(&self, num_inference_steps: usize) -> Vec<i64> {
        // Training timesteps whose log-SNR lambda is below lambda_min_clipped are cut from the top of the range.
        let lambda_min_clipped = self.lambda_min_clipped as f32;
        let clipped_idx = self
            .alphas_cumprod
            .iter()
            .rev()
            .map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
            .position(|lambda| lambda >= lambda_min_clipped)
            .unwrap_or(self.alphas_cumprod.len());
        let last_timestep = self.num_train_timesteps - clipped_idx;
        match self.timestep_spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, last_timestep as f64 - 1.0, num_inference_steps + 1)
                .into_iter()
                .rev()
                .take(num_inference_steps)
                .map(round_to_i64)
                .collect(),
            TimestepSpacing::Leading => {
                let step_ratio = (last_timestep / (num_inference_steps + 1)) as i64;
                (1..=num_inference_steps as i64)
                    .rev()
                    .map(|i| (i * step_ratio).saturating_add(self.steps_offset))
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let step_ratio = self.num_train_timesteps as f64 / num_inference_steps as f64;
                np_arange(last_timestep as f64, 0.0, -step_ratio).into_iter().map(|t| round_to_i64(t) - 1).collect()
            }
        }
    }

    /// Fractional timesteps of remapped sigmas, rounded unless the schedule is cosine, then cast like torch's
    /// `.to(int64)` (truncation).
    fn timesteps_for_sigmas(&self, sigmas: &[f64], log_sigmas: &[f32], round: bool) -> Vec<i64> {
        sigmas
            .iter()
            .map(|&s| {
                let t = sigma_to_t(s, log_sigmas);
                if round && !self.cosine_schedule { round_to_i64(t) } else { t as i64 }
            })
            .collect()
    }

    /// The data prediction x0 from the raw model output at `step_index`.
    fn convert_model_output(&self, model_output: &ArrayD<f32>, step_index: usize, sample: &ArrayD<f32>) -> ArrayD<f32> {
        let (alpha_t, sigma_t, _) = alpha_sigma_lambda(self.sigmas[step_index]);
        match self.prediction_type {
            PredictionType::Epsilon => zip_map(sample, model_output, |s, m| (s - sigma_t * m) / alpha_t),
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => zip_map(sample, model_output, |s, m| alpha_t * s - sigma_t * m),
        }
    }

    fn first_order_update(&self, step_index: usize, sample: &ArrayD<f32>, m0: &ArrayD<f32>) -> ArrayD<f32> {
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[step_index + 1]);
        let (_, sigma_s, lambda_s) = alpha_sigma_lambda(self.sigmas[step_index]);
        let h = lambda_t - lambda_s;
        let sample_coeff = sigma_t / sigma_s;
        let x0_coeff = alpha_t * ((-h).exp() - 1.0);
        zip_map(sample, m0, |s, d0| sample_coeff * s - x0_coeff * d0)
    }

    fn second_order_update(
        &self,
        step_index: usize,
        sample: &ArrayD<f32>,
        m0: &ArrayD<f32>,
        m1: &ArrayD<f32>,
    ) -> ArrayD<f32> {
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[step_index + 1]);
        let (_, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.sigmas[step_index]);
        let (_, _, lambda_s1) = alpha_sigma_lambda(self.sigmas[step_index - 1]);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let r0 = h_0 / h;
        let inv_r0 = 1.0 / r0;
        let d1 = zip_map(m0, m1, |a, b| inv_r0 * (a - b));
        let sample_coeff = sigma_t / sigma_s0;
        let d0_coeff = alpha_t * ((-h).exp() - 1.0);
        let d1_coeff = match self.solver_type {
            // Written as `- coeff * D1` in diffusers; the sign is folded into the coefficient here (exact).
            SolverType::Midpoint => -(0.5 * (alpha_t * ((-h).exp() - 1.0))),
            SolverType::Heun => alpha_t * (((-h).exp() - 1.0) / h + 1.0),
        };
        zip_map3(sample, m0, &d1, |s, d0, d1| sample_coeff * s - d0_coeff * d0 + d1_coeff * d1)
    }

    fn third_order_update(
        &self,
        step_index: usize,
        sample: &ArrayD<f32>,
        [m2, m1, m0]: [&ArrayD<f32>; 3],
    ) -> ArrayD<f32> {
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[step_index + 1]);
        let (_, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.sigmas[step_index]);
        let (_, _, lambda_s1) = alpha_sigma_lambda(self.sigmas[step_index - 1]);
        let (_, _, lambda_s2) = alpha_sigma_lambda(self.sigmas[step_index - 2]);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let h_1 = lambda_s1 - lambda_s2;
        let r0 = h_0 / h;
        let r1 = h_1 / h;
        let (inv_r0, inv_r1) = (1.0 / r0, 1.0 / r1);
        let d1_0 = zip_map(m0, m1, |a, b| inv_r0 * (a - b));
        let d1_1 = zip_map(m1, m2, |a, b| inv_r1 * (a - b));
        let d1_weight = r0 / (r0 + r1);
        let d2_weight = 1.0 / (r0 + r1);
        let d1 = zip_map(&d1_0, &d1_1, |a, b| a + d1_weight * (a - b));
        let d2 = zip_map(&d1_0, &d1_1, |a, b| d2_weight * (a - b));
        let exp_m1 = (-h).exp() - 1.0;
        let sample_coeff = sigma_t / sigma_s0;
        let d0_coeff = alpha_t * exp_m1;
        let d1_coeff = alpha_t * (exp_m1 / h + 1.0);
        let d2_coeff = alpha_t * ((exp_m1 + h) / (h * h) - 0.5);
        let partial = zip_map3(sample, m0, &d1, |s, d0, d1| sample_coeff * s - d0_coeff * d0 + d1_coeff * d1);
        zip_map(&partial, &d2, |p, d2| p - d2_coeff * d2)
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        check_steps(CLASS, num_inference_steps)?;
        let mut timesteps = self.spaced_timesteps(num_inference_steps);
        if timesteps.is_empty() {
            return Err(Error::bad_input(format!(
                "{CLASS}: this config gives no timesteps for {num_inference_steps} steps; check lambda_min_clipped."
            )));
        }
        let train_sigmas = train_sigmas(&self.alphas_cumprod);
        let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
        // Karras, Lu and exponential schedules run from the largest training sigma down to the smallest.
        let descending: Vec<f64> = train_sigmas.iter().rev().map(|&s| f64::from(s)).collect();
        let (Some(&smallest), Some(&largest)) = (descending.last(), descending.first()) else {
            return Err(Error::bad_input(format!("{CLASS}: the training schedule is empty.")));
        };
        let sigma_min = self.sigma_min.unwrap_or(smallest);
        let sigma_max = self.sigma_max.unwrap_or(largest);

        let sigmas: Vec<f64> = match self.sigma_schedule {
            SigmaSchedule::Karras => {
                let sigmas = karras_sigmas(sigma_min, sigma_max, num_inference_steps);
                timesteps = self.timesteps_for_sigmas(&sigmas, &log_sigmas, true);
                sigmas
            }
            SigmaSchedule::LuLambdas => {
                let lambda_min = f64::from(log_sigmas[0]);
                let lambda_max = f64::from(log_sigmas[log_sigmas.len() - 1]);
                let sigmas: Vec<f64> = np_linspace(0.0, 1.0, num_inference_steps)
                    .into_iter()
                    .map(|ramp| (lambda_max + ramp * (lambda_min - lambda_max)).exp())
                    .collect();
                timesteps = self.timesteps_for_sigmas(&sigmas, &log_sigmas, true);
                sigmas
            }
            SigmaSchedule::Exponential => {
                let sigmas = exponential_sigmas(sigma_min, sigma_max, num_inference_steps);
                timesteps = self.timesteps_for_sigmas(&sigmas, &log_sigmas, false);
                sigmas
            }
            SigmaSchedule::Interpolated => {
                let fp: Vec<f64> = train_sigmas.iter().map(|&s| f64::from(s)).collect();
                timesteps.iter().map(|&t| np_interp_unit_grid(t as f64, &fp)).collect()
            }
        };
        let sigma_last = if self.final_sigmas_zero {
            0.0
        } else {
            let a = self.alphas_cumprod[0];
            ((1.0 - a) / a).sqrt()
        };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(sigma_last);

        self.sigmas = sigmas;
        self.timesteps = timesteps.into_iter().map(|t| t as f64).collect();
        self.model_outputs = vec![None; self.solver_order];
        self.lower_order_nums = 0;
        self.num_inference_steps = num_inference_steps;
        Ok(())
    }

    fn num_inference_steps(&self) -> usize {
        self.num_inference_steps
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn add_noise(&self, original: &ArrayD<f32>, noise: &ArrayD<f32>, step_index: usize) -> ArrayD<f32> {
        let (alpha_t, sigma_t, _) = alpha_sigma_lambda(self.sigmas[step_index]);
        zip_map(original, noise, |x, n| alpha_t * x + sigma_t * n)
    }

    fn scale_model_input(&self, sample: ArrayD<f32>, _step_index: usize) -> ArrayD<f32> {
        sample
    }

    fn step(
        &mut self,
        model_output: &ArrayD<f32>,
        step_index: usize,
        sample: &ArrayD<f32>,
        _noise: &mut dyn NoiseSource,
    ) -> ArrayD<f32> {
        let num_timesteps = self.timesteps.len();
        let short_schedule = self.lower_order_final && num_timesteps < 15;
        // Low-order final steps stabilise short schedules, and a zero final sigma needs a first-order last step.
        let lower_order_final =
            step_index + 1 == num_timesteps && (self.euler_at_final || short_schedule || self.final_sigmas_zero);
        let lower_order_second = step_index + 2 == num_timesteps && short_schedule;

        let x0 = self.convert_model_output(model_output, step_index, sample);
        self.model_outputs.rotate_left(1);
        if let Some(last) = self.model_outputs.last_mut() {
            *last = Some(x0);
        }

        let order = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };
        // Oldest first; the slots fill from the end, so the filled ones are the most recent.
        let history: Vec<&ArrayD<f32>> = self.model_outputs.iter().flatten().collect();
        // Only an out-of-order caller could ask for more history than exists; degrade instead of panicking.
        let order = order.min(history.len()).min(step_index + 1);
        let prev_sample = match (order, history.as_slice()) {
            (3, [.., m2, m1, m0]) => self.third_order_update(step_index, sample, [m2, m1, m0]),
            (2, [.., m1, m0]) => self.second_order_update(step_index, sample, m0, m1),
            (_, [.., m0]) => self.first_order_update(step_index, sample, m0),
            (_, []) => sample.clone(),
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        prev_sample
    }
}
