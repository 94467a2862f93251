//! What `generate` takes for what it is not told, per pipeline class: diffusers' own `__call__` defaults
//! (steps, guidance, size, strength), so that a run without flags is the run diffusers makes.
//!
//! These are not the model cards' benchmark settings (`models/*.toml`: the seed's 30 steps, its sizes), which
//! `bench` and the experiment scripts read.

use super::model_dir::{PipelineDir, PipelineKind};

/// One pipeline class's `__call__` defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallDefaults {
    /// `num_inference_steps`.
    pub steps: usize,
    /// `guidance_scale`.
    pub guidance: f32,
    /// Image side in pixels when the denoiser's config has no `sample_size` (diffusers' default size is
    /// `sample_size` times the VAE's scale factor).
    pub size: usize,
    /// `strength` of the class's img2img pipeline (`StableDiffusionImg2ImgPipeline`,
    /// `StableDiffusionXLImg2ImgPipeline`); None where diffusers has none.
    pub img2img_strength: Option<f64>,
    /// `strength` of the class's inpainting pipeline (`StableDiffusionInpaintPipeline`,
    /// `StableDiffusionXLInpaintPipeline`); None where diffusers has none.
    pub inpaint_strength: Option<f64>,
}

impl PipelineKind {
    /// diffusers' defaults for this class (and for its img2img and inpainting pipelines).
    pub fn defaults(self) -> CallDefaults {
        match self {
            PipelineKind::StableDiffusion => CallDefaults {
                steps: 50,
                guidance: 7.5,
                size: 512,
                img2img_strength: Some(0.8),
                inpaint_strength: Some(1.0),
            },
            PipelineKind::StableDiffusionXl => CallDefaults {
                steps: 50,
                guidance: 5.0,
                size: 1024,
                img2img_strength: Some(0.3),
                inpaint_strength: Some(0.9999),
            },
            PipelineKind::PixArtAlpha => {
                CallDefaults { steps: 20, guidance: 4.5, size: 1024, img2img_strength: None, inpaint_strength: None }
            }
        }
    }
}

impl PipelineDir {
    /// diffusers' `__call__` defaults for this folder's class: its family's ([`PipelineKind::defaults`]), but
    /// `LatentConsistencyModelPipeline`'s own 4 steps and guidance 8.5.
    pub fn defaults(&self) -> CallDefaults {
        let family = self.kind.defaults();
        match self.model_index.get("_class_name").and_then(serde_json::Value::as_str) {
            Some("LatentConsistencyModelPipeline") => CallDefaults { steps: 4, guidance: 8.5, ..family },
            _ => family,
        }
    }
}
