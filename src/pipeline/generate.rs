//! What a generation is asked and what it returns, the scheduler a run uses and the denoiser's output.

use std::path::PathBuf;

use ::image::RgbImage;
use ndarray::ArrayD;

use super::model_dir::PipelineDir;
use crate::runtime::{HostTensor, Model};
use crate::scheduler::{self, SchedulerConfig, SchedulerKind};
use crate::{Error, Result};

/// What to generate. `None` fields take diffusers' pipeline defaults (`PipelineKind::defaults`).
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// Default 50 (SD, SDXL) or 20 (PixArt).
    pub steps: Option<usize>,
    /// Default 7.5 (SD), 5.0 (SDXL) or 4.5 (PixArt); guidance is off at 1 or below.
    pub guidance: Option<f32>,
    pub seed: u64,
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Another scheduler class, configured from the pipeline's scheduler config.
    pub scheduler: Option<SchedulerKind>,
    /// A scheduler_config.json to use instead of the pipeline's own.
    pub scheduler_config: Option<PathBuf>,
    /// Initial noise as diffusers' `latents=` takes it; else drawn from `seed` as torch does.
    pub latents: Option<PathBuf>,
    /// Images per prompt (diffusers' `num_images_per_prompt`); 0 means 1. The UNet sees twice as many
    /// with guidance.
    pub batch_size: usize,
    /// PixArt: generate at the requested size instead of the nearest bin of the aspect-ratio table
    /// (diffusers' `use_resolution_binning=False`).
    pub no_resolution_binning: bool,
    /// img2img (alone) or inpainting (with `mask`): the PNG or JPEG image to start from.
    pub image: Option<PathBuf>,
    /// Inpainting: the mask, white where the image is repainted.
    pub mask: Option<PathBuf>,
    /// img2img and inpainting: how much of the schedule runs, in (0, 1]; default diffusers' per class and
    /// task (0.8 SD and 0.3 SDXL img2img, 1.0 SD and 0.9999 SDXL inpainting).
    pub strength: Option<f64>,
}

/// Where the time went, in seconds.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub text_encoding: f64,
    pub unet_steps: Vec<f64>,
    /// Per step, the host's part of `unet_steps`: scheduler arithmetic (guidance batch, input scaling,
    /// guidance combination, the scheduler's step) and the latent copies in and out of the UNet session.
    pub host_steps: Vec<HostShare>,
    pub vae_decode: f64,
    /// img2img and inpainting: encoding the image (and the masked image) with the VAE encoder.
    pub vae_encode: f64,
    pub total: f64,
}

/// The host's work in one denoising step, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostShare {
    /// Everything in the step outside the UNet call: stacking the guidance batch, `scale_model_input`,
    /// the guidance combination and `scheduler.step`.
    pub scheduler: f64,
    /// Moving the step's tensors in and out of the UNet session (`Model::take_transfer_seconds`).
    pub copies: f64,
}

/// Generated images (one per image per prompt, `batch_size` of them) with their final latents (before VAE
/// scaling).
pub struct Generated {
    pub images: Vec<RgbImage>,
    pub latents: ArrayD<f32>,
    pub timings: Timings,
    pub warnings: Vec<String>,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// The guidance scale used (the pipeline's default when none was given).
    pub guidance: f32,
    /// The scheduler class that ran (diffusers' name).
    pub scheduler: String,
    /// img2img and inpainting: the strength used (the pipeline's default when none was given).
    pub strength: Option<f64>,
}

/// Called with the inputs of every UNet call. `Send`, so that a loaded pipeline can move to another thread
/// (the Python package runs it with the interpreter's lock released).
pub type UnetRecorder = Box<dyn FnMut(&[(&str, HostTensor)]) + Send>;

impl Generated {
    /// The first image.
    pub fn image(&self) -> &RgbImage {
        &self.images[0]
    }
}

/// The scheduler a run uses: the pipeline's scheduler config (or `--scheduler-config`), as its own class or
/// the one `--scheduler` names, set to `steps`; with that class's name and the config it was read from.
pub(crate) struct ChosenScheduler {
    pub scheduler: Box<dyn scheduler::Scheduler>,
    pub name: String,
    pub config: SchedulerConfig,
}

impl ChosenScheduler {
    pub(crate) fn new(dir: &PipelineDir, opts: &GenerateOptions, steps: usize) -> Result<Self> {
        let config_path = opts.scheduler_config.clone().unwrap_or_else(|| dir.scheduler_config());
        let config = SchedulerConfig::from_file(&config_path)?;
        let name = match opts.scheduler {
            Some(kind) => kind.class_name().to_string(),
            None => config.class_name.clone().unwrap_or_default(),
        };
        let mut scheduler = scheduler::from_config(&config, opts.scheduler).map_err(|e| e.in_file(&config_path))?;
        scheduler.set_timesteps(steps)?;
        Ok(ChosenScheduler { scheduler, name, config })
    }
}

/// The named output, or the model's first output when it is named otherwise.
pub(crate) fn take_output(
    out: &mut std::collections::HashMap<String, ArrayD<f32>>,
    model: &Model,
    name: &str,
) -> Result<ArrayD<f32>> {
    if let Some(v) = out.remove(name) {
        return Ok(v);
    }
    model
        .output_names()
        .first()
        .and_then(|first| out.remove(first))
        .ok_or_else(|| Error::bad_file(model.path(), format!("the model returned no float output `{name}`")))
}
