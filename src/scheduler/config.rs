//! `scheduler_config.json` as written by diffusers, and the parsed forms of its string-valued options.
//!
//! Every field is optional because diffusers applies class-specific defaults to missing keys (for example
//! `timestep_spacing` is "leading" for DDIM/PNDM but "linspace" for Euler and DPM-Solver++), so each scheduler
//! resolves its own defaults when it is built. Keys dfast does not know are ignored, as diffusers' `from_config`
//! ignores keys another scheduler class saved.

use std::path::Path;

use serde::Deserialize;

use super::SchedulerKind;
use crate::settings::named_enum;
use crate::{Error, Result};

/// The subset of a diffusers scheduler config that dfast's schedulers read.
///
/// Field names and meanings are diffusers' own; `None` means "use the scheduler class default".
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SchedulerConfig {
    /// The diffusers class that saved the config, e.g. "EulerDiscreteScheduler".
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    /// "linear", "scaled_linear" or "squaredcos_cap_v2".
    pub beta_schedule: Option<String>,
    /// Explicit betas; when present they replace `beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    /// "epsilon", "v_prediction" or "sample" (which ones a class accepts varies).
    pub prediction_type: Option<String>,
    /// "leading", "trailing" or "linspace".
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<i64>,
    pub set_alpha_to_one: Option<bool>,
    pub skip_prk_steps: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    /// Dynamic thresholding is not implemented: only `false` is accepted.
    pub thresholding: Option<bool>,
    pub sample_max_value: Option<f64>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    /// Not implemented (needs the Beta distribution's quantile function): only `false` is accepted.
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    /// Flow-matching sigmas are not implemented: only `false` is accepted.
    pub use_flow_sigmas: Option<bool>,
    /// Dynamic shifting belongs to flow-matching models: only `false` is accepted.
    pub use_dynamic_shifting: Option<bool>,
    /// Overrides the smallest sigma of the Karras/exponential schedules.
    pub sigma_min: Option<f64>,
    /// Overrides the largest sigma of the Karras/exponential schedules.
    pub sigma_max: Option<f64>,
    /// Euler: "linear" or "log_linear".
    pub interpolation_type: Option<String>,
    /// "zero" or "sigma_min".
    pub final_sigmas_type: Option<String>,
    /// DPM-Solver: only "dpmsolver++" (and its alias "deis") is implemented.
    pub algorithm_type: Option<String>,
    pub solver_order: Option<usize>,
    /// DPM-Solver: "midpoint" or "heun".
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub lambda_min_clipped: Option<f64>,
    /// Learned-variance UNets ("learned", "learned_range") are not supported.
    pub variance_type: Option<String>,
    pub rescale_betas_zero_snr: Option<bool>,
    /// Euler: "discrete" or "continuous".
    pub timestep_type: Option<String>,
    /// LCM: the distillation schedule's step count, whose timesteps the inference ones are taken from.
    pub original_inference_steps: Option<usize>,
    /// LCM: the timestep's scale in the consistency boundary condition (`c_skip`, `c_out`).
    pub timestep_scaling: Option<f64>,
}

/// How the training betas are laid out over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    /// The denoised sample itself (diffusers' "sample", also spelled "original_sample" by Euler).
    Sample,
}

named_enum! {
    /// How inference timesteps are picked among the training timesteps.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum TimestepSpacing {
        Leading = "leading",
        Trailing = "trailing",
        Linspace = "linspace",
    }
}

impl SchedulerConfig {
    /// Reads a diffusers `scheduler_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read the scheduler config", e))?;
        Self::from_json_str(&text).map_err(|e| Error::bad_file(path, e.to_string()))
    }

    /// Parses the text of a diffusers scheduler config.
    ///
    /// Python's `json` writes non-finite floats as the non-standard tokens `Infinity`, `-Infinity` and `NaN`
    /// (DPM-Solver configs usually contain `"lambda_min_clipped": -Infinity`); they are read as `null`, i.e. the
    /// class default, which is what those values are in practice.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cleaned = replace_non_finite_tokens(text);
        serde_json::from_str(&cleaned)
            .map_err(|e| Error::bad_input(format!("the scheduler config is not valid JSON of the expected form: {e}")))
    }

    /// The scheduler kind named by `_class_name`.
    pub fn class_kind(&self) -> Result<SchedulerKind> {
        match self.class_name.as_deref() {
            Some(class) if let Some(kind) = SchedulerKind::ALL.iter().find(|k| k.class_name() == class) => Ok(*kind),
            Some(other) => Err(Error::bad_input(format!(
                "The scheduler class `{other}` is not supported; dfast implements EulerDiscreteScheduler, \
                 DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler and \
                 LCMScheduler (or pick one of euler, ddim, pndm, dpm++, euler-a, lcm)."
            ))),
            None => Err(Error::bad_input(
                "The scheduler config has no `_class_name`, so the scheduler class is unknown; choose one of \
                 euler, ddim, pndm, dpm++, euler-a or lcm explicitly.",
            )),
        }
    }

    /// The beta schedule; diffusers' default is "linear" for every implemented class.
    pub fn parsed_beta_schedule(&self) -> Result<BetaSchedule> {
        match self.beta_schedule.as_deref().unwrap_or("linear") {
            "linear" => Ok(BetaSchedule::Linear),
            "scaled_linear" => Ok(BetaSchedule::ScaledLinear),
            "squaredcos_cap_v2" => Ok(BetaSchedule::SquaredcosCapV2),
            other => Err(Error::bad_input(format!(
                "The scheduler config's beta_schedule `{other}` is not supported; use linear, scaled_linear or \
                 squaredcos_cap_v2."
            ))),
        }
    }

    /// The prediction type; diffusers' default is "epsilon" for every implemented class.
    pub fn parsed_prediction_type(&self) -> Result<PredictionType> {
        match self.prediction_type.as_deref().unwrap_or("epsilon") {
            "epsilon" => Ok(PredictionType::Epsilon),
            "v_prediction" => Ok(PredictionType::VPrediction),
            "sample" | "original_sample" => Ok(PredictionType::Sample),
            other => Err(Error::bad_input(format!(
                "The scheduler config's prediction_type `{other}` is not supported; use epsilon, v_prediction or \
                 sample."
            ))),
        }
    }

    /// The timestep spacing, or the class default `default` when the config has none.
    pub fn parsed_timestep_spacing(&self, default: TimestepSpacing) -> Result<TimestepSpacing> {
        match self.timestep_spacing.as_deref() {
            None => Ok(default),
            Some("leading") => Ok(TimestepSpacing::Leading),
            Some("trailing") => Ok(TimestepSpacing::Trailing),
            Some("linspace") => Ok(TimestepSpacing::Linspace),
            Some(other) => Err(Error::bad_input(format!(
                "The scheduler config's timestep_spacing `{other}` is not supported; use leading, trailing or \
                 linspace."
            ))),
        }
    }

    /// `num_train_timesteps`, default 1000, which must be positive (and not absurdly large, since every
    /// scheduler allocates per-timestep tables).
    pub fn train_timesteps(&self) -> Result<usize> {
        const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;
        match self.num_train_timesteps.unwrap_or(1000) {
            n @ 1..=MAX_TRAIN_TIMESTEPS => Ok(n),
            n => Err(Error::bad_input(format!(
                "The scheduler config's num_train_timesteps is {n}; it must be between 1 and {MAX_TRAIN_TIMESTEPS}."
            ))),
        }
    }

    /// Rejects the options no implemented class supports, so that they fail loudly instead of being ignored.
    pub(crate) fn reject_unsupported(&self, class: &str) -> Result<()> {
        if self.thresholding == Some(true) {
            return Err(Error::bad_input(format!(
                "{class}: dynamic thresholding (thresholding = true) is not supported by dfast; set it to false."
            )));
        }
        Ok(())
    }
}

/// Replaces the bare tokens `Infinity`, `-Infinity` and `NaN` outside JSON strings with `null`.
fn replace_non_finite_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t)) {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}
