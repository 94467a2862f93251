//! The VAE (diffusers' `AutoencoderKL`) as Optimum exports it: `vae_decoder/` (latents to an image) and
//! `vae_encoder/` (an image to its latent distribution, for img2img and inpainting), with the decoder's
//! config read once (`scaling_factor`, the scale factor, `latent_channels`).
//!
//! `vae_encoder/model.onnx`: `sample` `[B, 3, H, W]` in [-1, 1] -> `latent_parameters` `[B, 2C, H/f, W/f]`, the
//! mean and the log-variance of the latent distribution (diffusers' `latent_dist.parameters`, what current
//! Optimum exports). Older Optimum exports sample inside the graph (`latent_sample`); a seed cannot reproduce
//! diffusers' draw from those, so dfast refuses them.

use std::path::PathBuf;

use ndarray::{ArrayD, Axis, Zip};

use super::generate::take_output;
use super::latents;
use super::model_dir::{PipelineDir, VaeConfig};
use super::torch_rng::TorchGenerator;
use crate::runtime::{HostTensor, Model, Runtime, SessionRole};
use crate::settings::EpOptions;
use crate::{Error, Result};

/// diffusers' `scaling_factor` default (SD 1.x).
pub(crate) const DEFAULT_SCALING_FACTOR: f32 = 0.18215;

/// The VAE's two halves; the encoder's session is created when a run first needs it.
pub(crate) struct Vae {
    decoder: Model,
    encoder: Option<Model>,
    encoder_path: PathBuf,
    runtime: Runtime,
    defaults: EpOptions,
    /// `vae.config.scaling_factor`: latents are multiplied by it after encoding, divided before decoding.
    pub scaling_factor: f32,
    /// 2^(blocks - 1): image pixels per latent pixel.
    pub scale_factor: usize,
    /// `latent_channels` (4 for every checkpoint dfast runs).
    pub latent_channels: usize,
}

impl Vae {
    /// The decoder's session (and the config), with the session options a conversion chose (`defaults`).
    pub(crate) fn load(runtime: &Runtime, dir: &PipelineDir, defaults: &EpOptions) -> Result<Self> {
        let decoder = runtime.load_with(&dir.component_model("vae_decoder"), defaults, SessionRole::Other)?;
        let config: VaeConfig = dir.config("vae_decoder")?;
        Ok(Vae {
            decoder,
            encoder: None,
            encoder_path: dir.component_model("vae_encoder"),
            runtime: runtime.clone(),
            defaults: defaults.clone(),
            scaling_factor: config.scaling_factor.unwrap_or(DEFAULT_SCALING_FACTOR),
            scale_factor: dir.vae_scale_factor()?,
            latent_channels: config.latent_channels.unwrap_or(4),
        })
    }

    pub(crate) fn decoder(&self) -> &Model {
        &self.decoder
    }

    /// The encoder's session if created.
    pub(crate) fn loaded_encoder(&self) -> Option<&Model> {
        self.encoder.as_ref()
    }

    /// The encoder's session, created on first use; a folder without one is said so, naming the flag.
    pub(crate) fn encoder(&mut self) -> Result<&mut Model> {
        if self.encoder.is_none() {
            if !self.encoder_path.is_file() {
                return Err(Error::bad_file(
                    &self.encoder_path,
                    "missing: --image needs the VAE encoder (Optimum's vae_encoder/; export_onnx.py exports it)",
                ));
            }
            let model = self.runtime.load_with(&self.encoder_path, &self.defaults, SessionRole::Other)?;
            if model.output_names().iter().all(|n| n != "latent_parameters") {
                return Err(Error::bad_file(
                    &self.encoder_path,
                    format!(
                        "the encoder's outputs are {:?}, not `latent_parameters` (the latent distribution's mean \
                         and log-variance): an export that samples inside the graph cannot draw diffusers' latent \
                         from --seed; export it again with a current Optimum or export_onnx.py",
                        model.output_names()
                    ),
                ));
            }
            self.encoder = Some(model);
        }
        self.encoder.as_mut().ok_or_else(|| Error::internal("the VAE encoder was just created"))
    }

    /// Latents (before scaling) to the decoder's image `[B, 3, H, W]` in [-1, 1]: `decode(latents /
    /// scaling_factor)`.
    pub(crate) fn decode(&mut self, latents: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let scaled = latents / self.scaling_factor;
        let mut out = self.decoder.run(vec![("latent_sample", HostTensor::F32(scaled))])?;
        take_output(&mut out, &self.decoder, "sample")
    }

    /// diffusers' `scaling_factor * retrieve_latents(vae.encode(image), generator)`: the encoder's mean and
    /// log-variance (clamped to [-30, 20]), and a sample `mean + exp(0.5 * logvar) * randn` drawn from
    /// `generator`, scaled. `image` is `[B, 3, H, W]` in [-1, 1].
    pub(crate) fn encode(&mut self, image: ArrayD<f32>, generator: &mut TorchGenerator) -> Result<ArrayD<f32>> {
        let scaling_factor = self.scaling_factor;
        let encoder = self.encoder()?;
        let mut out = encoder.run(vec![("sample", HostTensor::F32(image))])?;
        let parameters = out.remove("latent_parameters").ok_or_else(|| {
            Error::bad_file(encoder.path(), "the encoder returned no float output `latent_parameters`")
        })?;
        let shape = parameters.shape().to_vec();
        if shape.len() != 4 || shape[1] % 2 != 0 {
            return Err(Error::bad_file(
                encoder.path(),
                format!("`latent_parameters` has shape {shape:?}, expected [batch, 2 x latent channels, h, w]"),
            ));
        }
        let channels = shape[1] / 2;
        let mean = parameters.slice_axis(Axis(1), (0..channels).into());
        let logvar = parameters.slice_axis(Axis(1), (channels..2 * channels).into());
        let noise = latents::randn(generator, mean.shape());
        // DiagonalGaussianDistribution in float32: std = exp(0.5 * clamp(logvar)), x = mean + std * sample.
        let sample = Zip::from(&mean).and(&logvar).and(&noise).map_collect(|&m, &lv, &n| {
            let std = (0.5 * lv.clamp(-30.0, 20.0)).exp();
            m + std * n
        });
        Ok(sample.mapv_into(|x| scaling_factor * x))
    }
}
