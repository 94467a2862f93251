//! A scheduler of a kind, built from a pipeline's scheduler config.

use super::config::SchedulerConfig;
use super::ddim::DdimScheduler;
use super::dpm_solver::DpmSolverMultistepScheduler;
use super::euler::EulerDiscreteScheduler;
use super::euler_ancestral::EulerAncestralDiscreteScheduler;
use super::lcm::LcmScheduler;
use super::options::SchedulerOptions;
use super::pndm::PndmScheduler;
use super::{Scheduler, SchedulerKind};

/// Builds a scheduler of `kind` from a config; `kind` None means the config's own `_class_name`.
pub fn from_config(config: &SchedulerConfig, kind: Option<SchedulerKind>) -> Result<Box<dyn Scheduler>, crate::Error> {
    with_options(config, kind, &SchedulerOptions::default())
}

/// As [`from_config`], with a run's overrides of the config and DDIM's eta; an option that the class lacks
/// is an error.
pub fn with_options(
    config: &SchedulerConfig,
    kind: Option<SchedulerKind>,
    options: &SchedulerOptions,
) -> Result<Box<dyn Scheduler>, crate::Error> {
    let kind = match kind {
        Some(k) => k,
        None => config.class_kind()?,
    };
    let config = &options.apply(config, kind)?;
    Ok(match kind {
        SchedulerKind::Euler => Box::new(EulerDiscreteScheduler::new(config)?),
        SchedulerKind::Ddim => Box::new(DdimScheduler::new(config)?.with_eta(options.eta.unwrap_or(0.0))),
        SchedulerKind::Pndm => Box::new(PndmScheduler::new(config)?),
        SchedulerKind::DpmSolverPP => Box::new(DpmSolverMultistepScheduler::new(config)?),
        SchedulerKind::EulerAncestral => Box::new(EulerAncestralDiscreteScheduler::new(config)?),
        SchedulerKind::Lcm => Box::new(LcmScheduler::new(config)?),
    })
}
