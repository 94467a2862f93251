//! img2img and inpainting (diffusers' `StableDiffusion(XL)Img2ImgPipeline` and
//! `StableDiffusion(XL)InpaintPipeline`): the image (and mask) a run starts from, read and checked before any
//! work, and the latents the denoising loop starts from, drawn from the seed's one generator in the order
//! diffusers draws them.
//!
//! img2img: `latents = add_noise(encode(image), noise, begin)`, the encoder's sample drawn first, then the
//! noise. Inpainting (`white` is repainted):
//! - the image's latents (drawn first) when the UNet has 4 channels or the strength is below 1;
//! - the noise; `latents = noise * init_noise_sigma` at strength 1, else `add_noise(image latents, noise)`;
//! - a 9-channel UNet: the masked image (`image * (mask < 0.5)`) encoded (drawn last) and, with the mask at
//!   the latents' size (nearest), appended to every UNet input;
//! - a 4-channel UNet: after each step the latents outside the mask are the image's, noised to the next
//!   timestep (the loop's blend).

use std::path::{Path, PathBuf};

use ::image::RgbImage;
use ndarray::{ArrayD, Axis, IxDyn, concatenate};

use super::denoise::{Blend, Inpainting, stack2};
use super::generate::GenerateOptions;
use super::image_processor::{self, Mask};
use super::latents;
use super::model_dir::PipelineKind;
use super::torch_rng::TorchGenerator;
use super::vae::Vae;
use crate::scheduler::Scheduler;
use crate::{Error, Result};

/// The image a run starts from, with the mask for inpainting, and the strength.
pub struct ImageTask {
    image: RgbImage,
    image_path: PathBuf,
    mask: Option<Mask>,
    /// In (0, 1]: the given one, or the pipeline class's default for the task.
    pub strength: f64,
}

/// What the loop starts from: the latents, and inpainting's part in the loop.
pub(crate) struct Start {
    pub latents: ArrayD<f32>,
    pub inpainting: Option<Inpainting>,
}

impl ImageTask {
    /// Reads and checks `--image` and `--mask` (None without `--image`) and the strength, before any model is
    /// loaded: `--mask` without `--image`, a strength outside (0, 1], `--latents` beside `--image`, a class
    /// without img2img, an unreadable image, a mask that is not one channel or not the image's size.
    pub fn read(opts: &GenerateOptions, kind: PipelineKind) -> Result<Option<Self>> {
        if let Some(strength) = opts.strength
            && !(strength > 0.0 && strength <= 1.0)
        {
            return Err(Error::bad_input(format!("--strength {strength} is not in (0, 1]")));
        }
        let Some(image_path) = &opts.image else {
            if opts.mask.is_some() {
                return Err(Error::bad_input("--mask needs --image: the mask says where to repaint that image"));
            }
            if opts.strength.is_some() {
                return Err(Error::bad_input("--strength needs --image: it says how far to move from that image"));
            }
            return Ok(None);
        };
        let defaults = kind.defaults();
        let default_strength = if opts.mask.is_some() { defaults.inpaint_strength } else { defaults.img2img_strength };
        let Some(default_strength) = default_strength else {
            return Err(Error::bad_input(
                "--image: PixArt-α pipelines run text-to-image only (diffusers has no img2img or inpainting \
                 pipeline for them)",
            ));
        };
        if opts.latents.is_some() {
            return Err(Error::bad_input(
                "--latents cannot go with --image: img2img and inpainting draw their noise from --seed",
            ));
        }
        let image = image_processor::read_image(image_path)?;
        let mask = match &opts.mask {
            Some(path) => {
                let mask = image_processor::read_mask(path)?;
                let image_size = (image.width() as usize, image.height() as usize);
                if mask.dimensions() != image_size {
                    let ((mw, mh), (iw, ih)) = (mask.dimensions(), image_size);
                    return Err(Error::bad_file(
                        path,
                        format!(
                            "--mask is {mw}x{mh}, but --image {} is {iw}x{ih}; give a mask of the image's size",
                            image_path.display()
                        ),
                    ));
                }
                Some(mask)
            }
            None => None,
        };
        Ok(Some(ImageTask {
            image,
            image_path: image_path.clone(),
            mask,
            strength: opts.strength.unwrap_or(default_strength),
        }))
    }

    pub fn is_inpainting(&self) -> bool {
        self.mask.is_some()
    }

    pub fn image_path(&self) -> &Path {
        &self.image_path
    }

    /// The size generated, (height, width): the image's rounded down to a multiple of `factor` (the VAE's
    /// scale factor), as diffusers' image processor does. img2img takes no other (diffusers' img2img
    /// pipelines have no height or width); inpainting resizes the image and the mask to a `--width` and
    /// `--height` given, as diffusers' inpainting pipelines do.
    pub fn size(&self, opts: &GenerateOptions, factor: usize) -> Result<(usize, usize)> {
        let (iw, ih) = (self.image.width() as usize, self.image.height() as usize);
        let (height, width) = image_processor::default_size((iw, ih), factor);
        if height == 0 || width == 0 {
            return Err(Error::bad_file(
                &self.image_path,
                format!("--image is {iw}x{ih}, smaller than {factor} pixels (the VAE's scale factor) on a side"),
            ));
        }
        if self.is_inpainting() {
            return Ok((opts.height.unwrap_or(height), opts.width.unwrap_or(width)));
        }
        for (flag, asked, own) in [("width", opts.width, width), ("height", opts.height, height)] {
            if let Some(asked) = asked
                && asked != own
            {
                return Err(Error::bad_input(format!(
                    "--{flag} {asked} differs from the {flag} of --image {} ({own}: {iw}x{ih} rounded down to a \
                     multiple of {factor}); img2img generates at the image's size, as diffusers does: leave out \
                     --{flag}, or resize the image",
                    self.image_path.display()
                )));
            }
        }
        Ok((height, width))
    }

    /// Where the loop begins: `begin_index(strength)`, or one sentence when that leaves no step.
    pub(crate) fn begin(&self, scheduler: &dyn Scheduler, steps: usize) -> Result<usize> {
        match scheduler.begin_index(self.strength) {
            Some(begin) if begin < scheduler.timesteps().len() => Ok(begin),
            _ => Err(Error::bad_input(format!(
                "--strength {} with --steps {steps} leaves no denoising step (int({steps} x {}) = {}); raise \
                 --strength or --steps",
                self.strength,
                self.strength,
                (steps as f64 * self.strength) as usize
            ))),
        }
    }

    /// The latents the loop starts from, drawn from the seed's `generator` in diffusers' order (see the module
    /// docs; the loop's scheduler draws from it next), for `batch` images of `size` (height, width) and a UNet
    /// of `unet_channels` input channels, `rows` model inputs per step (twice the batch under guidance).
    /// Returns the seconds spent in the VAE encoder too.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare(
        &self,
        generator: &mut TorchGenerator,
        vae: &mut Vae,
        scheduler: &dyn Scheduler,
        begin: usize,
        size: (usize, usize),
        batch: usize,
        unet_channels: usize,
        guidance: bool,
    ) -> Result<(Start, f64)> {
        let (height, width) = size;
        let f = vae.scale_factor;
        let shape = [batch, vae.latent_channels, height / f, width / f];
        let image = image_processor::preprocess(&self.image, size);
        let t0 = std::time::Instant::now();
        let encode = |vae: &mut Vae, image: ArrayD<f32>, generator: &mut TorchGenerator| -> Result<ArrayD<f32>> {
            // Encoded once, at batch 1, then repeated: one draw of one image's size, as diffusers does.
            let one = vae.encode(image, generator)?;
            repeat_rows(&one, batch)
        };
        let Some(mask) = &self.mask else {
            let image_latents = encode(vae, image, generator)?;
            let noise = latents::randn(generator, &shape);
            let latents = scheduler.add_noise(&image_latents, &noise, begin);
            return Ok((Start { latents, inpainting: None }, t0.elapsed().as_secs_f64()));
        };
        let nine_channels = unet_channels != vae.latent_channels;
        let strength_max = self.strength == 1.0;
        let mask = image_processor::preprocess_mask(mask, size);
        let image_latents =
            if !nine_channels || !strength_max { Some(encode(vae, image.clone(), generator)?) } else { None };
        let noise = latents::randn(generator, &shape);
        let latents = match (&image_latents, strength_max) {
            (Some(image_latents), false) => scheduler.add_noise(image_latents, &noise, begin),
            _ => noise.mapv(|n| n * scheduler.init_noise_sigma() as f32),
        };
        let mask_latents = repeat_rows(&nearest_downsample(&mask, f), batch)?;
        let inpainting = if nine_channels {
            let masked_image = &image * &mask.mapv(|m| if m < 0.5 { 1.0 } else { 0.0 });
            let masked_latents = encode(vae, masked_image, generator)?;
            let extra = concatenate(Axis(1), &[mask_latents.view(), masked_latents.view()])
                .map_err(|e| Error::internal(format!("inpainting channels: {e}")))?;
            Inpainting::Channels(if guidance { stack2(&extra)? } else { extra })
        } else {
            let image_latents = image_latents.ok_or_else(|| Error::internal("a 4-channel UNet's image latents"))?;
            let mask = mask_latents
                .broadcast(IxDyn(&shape))
                .ok_or_else(|| Error::internal("the mask broadcasts over the latent channels"))?
                .to_owned();
            Inpainting::Blend(Box::new(Blend { image_latents, noise, mask }))
        };
        Ok((Start { latents, inpainting: Some(inpainting) }, t0.elapsed().as_secs_f64()))
    }
}

/// `x` (one row) repeated to `rows` rows along the batch.
fn repeat_rows(x: &ArrayD<f32>, rows: usize) -> Result<ArrayD<f32>> {
    let views = vec![x.view(); rows];
    concatenate(Axis(0), &views).map_err(|e| Error::internal(format!("repeating along the batch: {e}")))
}

/// torch's `F.interpolate(mask, size=(H / f, W / f))` (mode `nearest`): source index `floor(i * f)`.
fn nearest_downsample(mask: &ArrayD<f32>, f: usize) -> ArrayD<f32> {
    let s = mask.shape();
    ArrayD::from_shape_fn(IxDyn(&[s[0], s[1], s[2] / f, s[3] / f]), |i| mask[[i[0], i[1], i[2] * f, i[3] * f]])
}
