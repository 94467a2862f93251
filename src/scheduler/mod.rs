//! Noise schedulers, one per file, configured from a pipeline's `scheduler/scheduler_config.json`.
//!
//! Names follow diffusers (`sigmas`, `timesteps`, `init_noise_sigma`, `prediction_type`,
//! `timestep_spacing`) so that each file can be read next to its Python counterpart.

mod common;
mod config;
mod ddim;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod lcm;
mod options;
mod pndm;
mod select;
#[cfg(test)]
mod tests;

pub use config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
pub use ddim::DdimScheduler;
pub use dpm_solver::DpmSolverMultistepScheduler;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralDiscreteScheduler;
pub use lcm::LcmScheduler;
pub use options::SchedulerOptions;
pub use pndm::PndmScheduler;
pub use select::{from_config, with_options};

use ndarray::ArrayD;

use crate::settings::{list, named_enum};
use crate::{Error, Result};

named_enum! {
    /// The scheduler classes dfast implements.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SchedulerKind {
        Euler = "euler",
        Ddim = "ddim",
        Pndm = "pndm",
        DpmSolverPP = "dpm++" | "dpmsolver++",
        EulerAncestral = "euler-a" | "euler_a",
        Lcm = "lcm",
    }
}

impl SchedulerKind {
    /// Parses a user-facing scheduler name: "euler", "ddim", "pndm", "dpm++" (also "dpmsolver++"), "euler-a"
    /// (also "euler_a") or "lcm".
    pub fn from_name(name: &str) -> Result<Self> {
        Self::parse(name).ok_or_else(|| {
            let aliases: Vec<&str> = Self::ALL.iter().flat_map(|k| k.aliases()).copied().collect();
            Error::bad_input(format!(
                "Unknown scheduler `{name}`; valid names are {} (or {}).",
                list(Self::NAMES, "and"),
                list(&aliases, "or")
            ))
        })
    }

    /// The diffusers class implementing this kind.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Pndm => "PNDMScheduler",
            SchedulerKind::DpmSolverPP => "DPMSolverMultistepScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::Lcm => "LCMScheduler",
        }
    }
}

/// Where a stochastic step (Euler ancestral, LCM, DDIM with eta) draws its noise: `torch.randn(shape, generator=...)` from
/// the run's one generator, which diffusers' pipelines pass to `scheduler.step` after drawing the initial
/// latents (and img2img's draws) from it, so that a seed gives diffusers' image.
pub trait NoiseSource {
    /// The next `shape`-sized standard normal draw.
    fn randn(&mut self, shape: &[usize]) -> ArrayD<f32>;
}

/// What every scheduler offers the denoising loop.
///
/// The loop is: `set_timesteps(n)`; latents *= `init_noise_sigma()`; for each `t` in `timesteps()`:
/// `x = scale_model_input(latents, i)`, run the UNet at `t` on `x`, `latents = step(out, i, latents, noise)`.
///
/// img2img and inpainting begin part-way, at `begin_index(strength)` (diffusers' `get_timesteps` and
/// `set_begin_index`), from `add_noise(image latents, noise, begin)`. Every method takes the index into
/// `timesteps()` itself, not a count from the run's first step, so that any run may begin anywhere.
pub trait Scheduler {
    /// Prepares the timesteps (and sigmas) for `num_inference_steps` steps.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;
    /// The `num_inference_steps` of the last `set_timesteps` (PNDM's warm-up makes one more timestep).
    fn num_inference_steps(&self) -> usize;
    /// Where a run of `strength` (in (0, 1]) begins in `timesteps()`, as diffusers' img2img and inpainting
    /// pipelines compute it (`get_timesteps`): `n - min(int(n * strength), n)` for `n` inference steps (every
    /// scheduler here has order 1). None when that leaves no step (`int(n * strength)` is 0).
    fn begin_index(&self, strength: f64) -> Option<usize> {
        let n = self.num_inference_steps();
        // Python's `int(num_inference_steps * strength)`: a float64 product, truncated.
        let init_timestep = ((n as f64 * strength) as usize).min(n);
        (init_timestep >= 1).then(|| n - init_timestep)
    }
    /// diffusers' `add_noise`: `original` (clean latents) with `noise` at the noise level of the timestep at
    /// `step_index`. img2img starts from it; inpainting with a 4-channel UNet blends it in after each step.
    fn add_noise(&self, original: &ArrayD<f32>, noise: &ArrayD<f32>, step_index: usize) -> ArrayD<f32>;
    /// The timesteps the UNet sees, in order. They may be fractional (Euler with `linspace` spacing).
    fn timesteps(&self) -> &[f64];
    /// Standard deviation of the initial noise.
    fn init_noise_sigma(&self) -> f64;
    /// Scales the UNet input at step `step_index` (Euler divides by sqrt(sigma^2 + 1)).
    fn scale_model_input(&self, sample: ArrayD<f32>, step_index: usize) -> ArrayD<f32>;
    /// One denoising step: the previous sample from the model output at step `step_index`. A stochastic
    /// step draws its noise from `noise` where diffusers' draws it from the step's `generator`.
    fn step(
        &mut self,
        model_output: &ArrayD<f32>,
        step_index: usize,
        sample: &ArrayD<f32>,
        noise: &mut dyn NoiseSource,
    ) -> ArrayD<f32>;
    /// The denoised estimate (x0) that `step` at `step_index` computes on the way, which diffusers' step
    /// returns second (`pred_original_sample`: Euler, Euler ancestral, DDIM; `denoised`: LCM); None where
    /// diffusers' step does not return it.
    /// PixArt's pipeline takes it as the result of a one-step generation.
    fn pred_original_sample(
        &self,
        _model_output: &ArrayD<f32>,
        _step_index: usize,
        _sample: &ArrayD<f32>,
    ) -> Option<ArrayD<f32>> {
        None
    }
}
