//! What a run asks of its scheduler beyond the pipeline's config: diffusers' `use_karras_sigmas` and
//! `timestep_spacing` set over the config (as `Class.from_config(config, use_karras_sigmas=True)` does), and
//! DDIM's `eta`, which diffusers' pipelines pass to `scheduler.step`.
//!
//! A choice the scheduler class does not have is refused rather than ignored, where diffusers would drop it
//! without a word (`from_config` ignores keys a class does not know, a pipeline passes `eta` only to a step
//! that takes it).

use super::SchedulerKind;
use super::config::{SchedulerConfig, TimestepSpacing};
use crate::{Error, Result};

/// Overrides of a scheduler config, and the step's `eta`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SchedulerOptions {
    /// Karras et al.'s sigmas (`use_karras_sigmas = true`): Euler and DPM-Solver++.
    pub karras: bool,
    /// The config's `timestep_spacing` replaced: every class but LCM, whose timesteps come from its
    /// distillation schedule.
    pub timestep_spacing: Option<TimestepSpacing>,
    /// DDIM's eta (0: deterministic, 1: DDPM's variance), its noise from the seed's generator.
    pub eta: Option<f64>,
}

impl SchedulerOptions {
    /// Refuses, in one sentence naming the flag, an option that the class `kind` lacks.
    pub fn check(&self, kind: SchedulerKind) -> Result<()> {
        let class = kind.class_name();
        if self.karras && !matches!(kind, SchedulerKind::Euler | SchedulerKind::DpmSolverPP) {
            return Err(Error::bad_input(format!(
                "--karras needs a scheduler with Karras sigmas (euler or dpm++), and {class} has none."
            )));
        }
        if let Some(spacing) = self.timestep_spacing
            && kind == SchedulerKind::Lcm
        {
            return Err(Error::bad_input(format!(
                "--timestep-spacing {spacing} does not apply to {class}, whose timesteps come from its \
                 original_inference_steps schedule."
            )));
        }
        if let Some(eta) = self.eta {
            if kind != SchedulerKind::Ddim {
                return Err(Error::bad_input(format!("--eta is DDIM's (--scheduler ddim); {class} takes no eta.")));
            }
            if !(eta.is_finite() && eta >= 0.0) {
                return Err(Error::bad_input(format!("--eta {eta} must be a finite number of at least 0.")));
            }
        }
        Ok(())
    }

    /// `config` with the overrides set, after checking that `kind` has them.
    pub fn apply(&self, config: &SchedulerConfig, kind: SchedulerKind) -> Result<SchedulerConfig> {
        self.check(kind)?;
        let mut config = config.clone();
        if self.karras {
            if config.use_exponential_sigmas == Some(true) || config.use_lu_lambdas == Some(true) {
                return Err(Error::bad_input(
                    "--karras cannot be combined with the scheduler config's use_exponential_sigmas or \
                     use_lu_lambdas; set those to false or drop --karras.",
                ));
            }
            config.use_karras_sigmas = Some(true);
        }
        if let Some(spacing) = self.timestep_spacing {
            config.timestep_spacing = Some(spacing.name().to_string());
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_a_class_lacks_are_refused_in_one_sentence() {
        let config = SchedulerConfig::default();
        let karras = SchedulerOptions { karras: true, ..Default::default() };
        for kind in [SchedulerKind::Ddim, SchedulerKind::Pndm, SchedulerKind::EulerAncestral, SchedulerKind::Lcm] {
            let err = karras.apply(&config, kind).unwrap_err().to_string();
            assert!(err.starts_with("--karras needs a scheduler with Karras sigmas"), "{err}");
        }
        assert_eq!(karras.apply(&config, SchedulerKind::Euler).unwrap().use_karras_sigmas, Some(true));
        let eta = SchedulerOptions { eta: Some(0.5), ..Default::default() };
        let err = eta.apply(&config, SchedulerKind::Euler).unwrap_err().to_string();
        assert_eq!(err, "--eta is DDIM's (--scheduler ddim); EulerDiscreteScheduler takes no eta.");
        assert!(eta.apply(&config, SchedulerKind::Ddim).is_ok());
        let negative = SchedulerOptions { eta: Some(-0.1), ..Default::default() };
        assert!(negative.apply(&config, SchedulerKind::Ddim).is_err());
        let spacing = SchedulerOptions { timestep_spacing: Some(TimestepSpacing::Trailing), ..Default::default() };
        assert!(spacing.apply(&config, SchedulerKind::Lcm).is_err());
        let applied = spacing.apply(&config, SchedulerKind::Pndm).unwrap();
        assert_eq!(applied.timestep_spacing.as_deref(), Some("trailing"));
    }
}
