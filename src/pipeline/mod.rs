//! Text-to-image: tokenizers, text encoders, the denoising loop over a scheduler, the VAE decoder.

pub mod binning;
pub mod conditioning;
mod generate;
pub mod image;
pub mod latents;
pub mod model_dir;
pub mod output;
pub mod pixart;
pub mod prompt_file;
pub mod tokenizer;
pub mod torch_rng;

use std::time::Instant;

use ::image::RgbImage;
use ndarray::{ArrayD, Axis, IxDyn, concatenate};

use crate::runtime::{HostTensor, Model, Runtime, SessionRole, format_dims};
use crate::scheduler::{self, SchedulerConfig};
use crate::settings::EpOptions;
use crate::{Error, Result};
use conditioning::{Conditioning, TextEncoder};
pub(crate) use generate::{ChosenScheduler, apply_guidance, take_output};
pub use generate::{GenerateOptions, Generated, HostShare, Timings, UnetRecorder};
pub use model_dir::{DenoiserConfig, HubLocation, PipelineDir, PipelineKind, VaeConfig};
use tokenizer::ClipTokenizer;

/// A loaded pipeline, reusable for many images: a UNet pipeline (SD, SDXL) or PixArt-α.
pub enum Pipeline {
    Unet(Box<UnetPipeline>),
    PixArt(Box<pixart::PixArtPipeline>),
}

/// A loaded UNet pipeline: every session created once, reusable for many images.
pub struct UnetPipeline {
    dir: PipelineDir,
    text_encoders: Vec<TextEncoder>,
    unet: Model,
    vae_decoder: Model,
    /// `vae.config.scaling_factor`.
    vae_scaling_factor: f32,
    /// 2^(VAE blocks - 1): image pixels per latent pixel.
    vae_scale_factor: usize,
    latent_channels: usize,
    default_size: usize,
    /// The UNet's inputs and output in device memory, bound once (IoBinding).
    io_binding: bool,
    /// Sees every UNet call's inputs (calibration).
    unet_recorder: Option<UnetRecorder>,
    /// Warnings from loading (a folder converted for another EP), handed out with the first image.
    warnings: Vec<String>,
}

impl Pipeline {
    pub fn load(runtime: &Runtime, dir: PipelineDir) -> Result<Self> {
        Ok(match dir.kind {
            PipelineKind::PixArtAlpha => Pipeline::PixArt(Box::new(pixart::PixArtPipeline::load(runtime, dir)?)),
            PipelineKind::StableDiffusion | PipelineKind::StableDiffusionXl => {
                Pipeline::Unet(Box::new(UnetPipeline::load(runtime, dir)?))
            }
        })
    }

    /// Sets (or clears) the function that sees every denoiser call's inputs (the UNet's or the transformer's).
    pub fn set_unet_recorder(&mut self, recorder: Option<UnetRecorder>) {
        match self {
            Pipeline::Unet(p) => p.set_unet_recorder(recorder),
            Pipeline::PixArt(p) => p.set_recorder(recorder),
        }
    }

    pub fn dir(&self) -> &PipelineDir {
        match self {
            Pipeline::Unet(p) => p.dir(),
            Pipeline::PixArt(p) => p.dir(),
        }
    }

    pub fn vae_scale_factor(&self) -> usize {
        match self {
            Pipeline::Unet(p) => p.vae_scale_factor(),
            Pipeline::PixArt(p) => p.vae_scale_factor(),
        }
    }

    /// Shape of the initial latents for `batch` images of `height` x `width` (PixArt: the size generated at,
    /// after resolution binning).
    pub fn latents_shape(&self, batch: usize, height: usize, width: usize) -> [usize; 4] {
        match self {
            Pipeline::Unet(p) => p.latents_shape(batch, height, width),
            Pipeline::PixArt(p) => p.latents_shape(batch, height, width),
        }
    }

    /// The image size (height, width) the options ask for, checked against this pipeline before any work.
    pub fn resolve_size(&self, opts: &GenerateOptions) -> Result<(usize, usize)> {
        match self {
            Pipeline::Unet(p) => p.resolve_size(opts),
            Pipeline::PixArt(p) => p.resolve_size(opts),
        }
    }

    /// The size the denoiser runs at: the requested one, or PixArt's resolution bin.
    pub fn generation_size(&self, opts: &GenerateOptions) -> Result<(usize, usize)> {
        match self {
            Pipeline::Unet(p) => p.resolve_size(opts),
            Pipeline::PixArt(p) => p.generation_size(opts),
        }
    }

    /// A warning for more steps than the scheduler's training timesteps, for the caller to show first.
    pub fn steps_warning(&self, opts: &GenerateOptions) -> Result<Option<String>> {
        match self {
            Pipeline::Unet(p) => p.steps_warning(opts),
            Pipeline::PixArt(p) => steps_warning(p.dir(), opts, pixart::DEFAULT_STEPS),
        }
    }

    /// Generates `batch_size` images; `on_step(i, n)` is called after each denoising step.
    pub fn generate(&mut self, opts: &GenerateOptions, on_step: &mut dyn FnMut(usize, usize)) -> Result<Generated> {
        match self {
            Pipeline::Unet(p) => p.generate(opts, on_step),
            Pipeline::PixArt(p) => p.generate(opts, on_step),
        }
    }
}

impl UnetPipeline {
    pub fn load(runtime: &Runtime, dir: PipelineDir) -> Result<Self> {
        // A converted folder carries the session options its profile chose for its EP.
        let (defaults, ep_warning) = dir.session_options(runtime.ep())?;
        let warnings = dir.load_warnings(runtime, &defaults, ep_warning)?;
        let load = |component: &str, role| runtime.load_with(&dir.component_model(component), &defaults, role);
        let mut text_encoders = vec![TextEncoder {
            tokenizer: ClipTokenizer::from_dir(&dir.root.join("tokenizer"))?,
            model: load("text_encoder", SessionRole::Other)?,
            warnings: Vec::new(),
        }];
        if dir.kind == PipelineKind::StableDiffusionXl {
            text_encoders.push(TextEncoder {
                tokenizer: ClipTokenizer::from_dir(&dir.root.join("tokenizer_2"))?,
                model: load("text_encoder_2", SessionRole::Other)?,
                warnings: Vec::new(),
            });
        }
        let unet = load("unet", SessionRole::Unet)?;
        let vae_decoder = load("vae_decoder", SessionRole::Other)?;
        let io_binding = io_binding(runtime, &defaults)?;
        let vae_config: VaeConfig = dir.config("vae_decoder")?;
        let vae_scaling_factor = vae_config.scaling_factor.unwrap_or(0.18215);
        let vae_scale_factor = dir.vae_scale_factor()?;
        let unet_config: DenoiserConfig = dir.config("unet").unwrap_or_default();
        let latent_channels = unet_config.in_channels.unwrap_or(4);
        let sample_size = unet_config.sample_size;
        let default_size = sample_size.map_or(
            match dir.kind {
                PipelineKind::StableDiffusion => 512,
                PipelineKind::StableDiffusionXl | PipelineKind::PixArtAlpha => 1024,
            },
            |s| s * vae_scale_factor,
        );
        Ok(UnetPipeline {
            dir,
            text_encoders,
            unet,
            vae_decoder,
            vae_scaling_factor,
            vae_scale_factor,
            latent_channels,
            default_size,
            io_binding,
            unet_recorder: None,
            warnings,
        })
    }

    /// Sets (or clears) the function that sees every UNet call's inputs.
    pub fn set_unet_recorder(&mut self, recorder: Option<UnetRecorder>) {
        self.unet_recorder = recorder;
    }

    pub fn dir(&self) -> &PipelineDir {
        &self.dir
    }

    pub fn vae_scale_factor(&self) -> usize {
        self.vae_scale_factor
    }

    /// Shape of the initial latents for `batch` images of `height` x `width`.
    pub fn latents_shape(&self, batch: usize, height: usize, width: usize) -> [usize; 4] {
        [batch, self.latent_channels, height / self.vae_scale_factor, width / self.vae_scale_factor]
    }

    /// Checks the options against this pipeline before any work is done.
    pub fn resolve_size(&self, opts: &GenerateOptions) -> Result<(usize, usize)> {
        let width = opts.width.unwrap_or(self.default_size);
        let height = opts.height.unwrap_or(self.default_size);
        self.dir.check_size(Some(width), Some(height))?;
        Ok((height, width))
    }

    /// A warning for more steps than the scheduler's training timesteps (diffusers runs them, so dfast does
    /// too; only DDIM refuses), with the number of UNet calls that will run; for the caller to show first.
    pub fn steps_warning(&self, opts: &GenerateOptions) -> Result<Option<String>> {
        steps_warning(&self.dir, opts, 50)
    }

    /// Generates one image; `on_step(i, n)` is called after each denoising step.
    /// Running out of memory is said with the size and batch that ran out and a smaller size to try.
    pub fn generate(&mut self, opts: &GenerateOptions, on_step: &mut dyn FnMut(usize, usize)) -> Result<Generated> {
        self.generate_once(opts, on_step).map_err(|e| {
            let Ok((height, width)) = self.resolve_size(opts) else { return e };
            if !crate::runtime::is_out_of_memory(&e) {
                return e;
            }
            let f = self.vae_scale_factor;
            let half = |v: usize| (v / 2 / f).max(1) * f;
            let message = format!(
                "{e} at {width}x{height} with {} image(s) per prompt; try a smaller size, e.g. --width {} --height {}",
                opts.batch_size.max(1),
                half(width),
                half(height)
            );
            Error::Runtime { message, source: Some(Box::new(e)) }
        })
    }

    fn generate_once(&mut self, opts: &GenerateOptions, on_step: &mut dyn FnMut(usize, usize)) -> Result<Generated> {
        let start = Instant::now();
        let (height, width) = self.resolve_size(opts)?;
        let steps = opts.steps.unwrap_or(50);
        if steps == 0 {
            return Err(Error::bad_input("--steps must be at least 1"));
        }
        let guidance_scale = opts.guidance.unwrap_or(match self.dir.kind {
            PipelineKind::StableDiffusion => 7.5,
            PipelineKind::StableDiffusionXl | PipelineKind::PixArtAlpha => 5.0,
        });
        let guidance = guidance_scale > 1.0;

        let ChosenScheduler { mut scheduler, name: scheduler_name, .. } = ChosenScheduler::new(&self.dir, opts, steps)?;

        let batch = opts.batch_size.max(1);
        self.check_static_shapes(batch, guidance, (height, width))?;
        let shape = self.latents_shape(batch, height, width);
        let initial = match &opts.latents {
            Some(path) => latents::read(path, &shape)?,
            None => latents::seeded(opts.seed, &shape),
        };

        let t0 = Instant::now();
        let cond = self.encode_prompt(opts, guidance, (height, width))?.repeat_per_prompt(batch, guidance)?;
        let text_encoding = t0.elapsed().as_secs_f64();
        let mut warnings: Vec<String> = std::mem::take(&mut self.warnings);
        warnings.extend(self.text_encoders.iter_mut().flat_map(|e| e.warnings.drain(..)));
        warnings.dedup();

        let mut latents = initial * scheduler.init_noise_sigma() as f32;
        let timesteps = scheduler.timesteps().to_vec();
        if self.io_binding {
            // Bound once per image: the conditioning does not change between steps.
            self.unet.bind_inputs(unet_conditioning(&cond))?;
        }
        let mut unet_steps = Vec::with_capacity(timesteps.len());
        let mut host_steps = Vec::with_capacity(timesteps.len());
        self.unet.take_transfer_seconds();
        for (i, &t) in timesteps.iter().enumerate() {
            let t_step = Instant::now();
            let model_input = if guidance { stack2(&latents)? } else { latents.clone() };
            let model_input = scheduler.scale_model_input(model_input, i);
            let t_unet = Instant::now();
            let noise_pred = self.run_unet(model_input, t, &cond)?;
            let in_unet = t_unet.elapsed().as_secs_f64();
            let noise_pred = if guidance { apply_guidance(&noise_pred, batch, guidance_scale) } else { noise_pred };
            latents = scheduler.step(&noise_pred, i, &latents);
            let step = t_step.elapsed().as_secs_f64();
            unet_steps.push(step);
            host_steps.push(HostShare { scheduler: step - in_unet, copies: self.unet.take_transfer_seconds() });
            on_step(i + 1, timesteps.len());
        }

        let t_vae = Instant::now();
        let images = self.decode(&latents)?;
        let vae_decode = t_vae.elapsed().as_secs_f64();
        let timings =
            Timings { text_encoding, unet_steps, host_steps, vae_decode, total: start.elapsed().as_secs_f64() };
        Ok(Generated {
            images,
            latents,
            timings,
            warnings,
            width,
            height,
            steps,
            guidance: guidance_scale,
            scheduler: scheduler_name,
        })
    }

    /// Refuses, before any work, an image size or batch that an export with static input shapes cannot
    /// take, naming the input, its declared shape and the requested size. (Inputs that only repeat one value
    /// per row, such as a timestep declared `[1]`, are fitted when fed: see `runtime::fit_shape`.)
    fn check_static_shapes(&self, batch: usize, guidance: bool, (height, width): (usize, usize)) -> Result<()> {
        let rows = if guidance { 2 * batch } else { batch };
        let [_, channels, h, w] = self.latents_shape(batch, height, width);
        let tokens = self.text_encoders[0].tokenizer.max_length();
        let unet: [(&str, Vec<Option<usize>>); 3] = [
            ("sample", vec![Some(rows), Some(channels), Some(h), Some(w)]),
            ("encoder_hidden_states", vec![Some(rows), Some(tokens), None]),
            ("text_embeds", vec![Some(rows), None]),
        ];
        let vae = [("latent_sample", vec![Some(batch), Some(channels), Some(h), Some(w)])];
        let checks = unet.iter().map(|c| (&self.unet, c)).chain(vae.iter().map(|c| (&self.vae_decoder, c)));
        for (model, (name, shape)) in checks {
            if let Some(declared) = model.shape_conflict(name, shape) {
                let wanted: Vec<i64> = shape.iter().map(|d| d.map_or(-1, |d| d as i64)).collect();
                let guided = if guidance { " with guidance" } else { "" };
                return Err(Error::bad_file(
                    model.path(),
                    format!(
                        "input `{name}` is declared {}, which cannot take a {width}x{height} image (--width {width} \
                         --height {height}) at batch {batch}{guided} (that needs {}); this export has static shapes, \
                         so generate at the size and batch it was exported for",
                        format_dims(&declared),
                        format_dims(&wanted),
                    ),
                ));
            }
        }
        Ok(())
    }

    fn encode_prompt(&mut self, opts: &GenerateOptions, guidance: bool, size: (usize, usize)) -> Result<Conditioning> {
        let negative = opts.negative_prompt.as_deref();
        match self.dir.kind {
            PipelineKind::StableDiffusion => {
                conditioning::encode_sd(&mut self.text_encoders[0], &opts.prompt, negative, guidance)
            }
            PipelineKind::StableDiffusionXl => {
                let force_zeros = self.dir.force_zeros_for_empty_prompt();
                let encoders: &mut [TextEncoder; 2] = (&mut self.text_encoders[..])
                    .try_into()
                    .map_err(|_| Error::internal("an SDXL pipeline needs two text encoders"))?;
                conditioning::encode_sdxl(encoders, &opts.prompt, negative, guidance, force_zeros, size)
            }
            PipelineKind::PixArtAlpha => Err(Error::internal("a PixArt pipeline is not a UNet pipeline")),
        }
    }

    fn run_unet(&mut self, sample: ArrayD<f32>, t: f64, cond: &Conditioning) -> Result<ArrayD<f32>> {
        let batch = sample.shape()[0];
        let shape = sample.shape().to_vec();
        let timestep = ArrayD::from_elem(IxDyn(&[batch]), t as f32);
        let step = vec![("sample", HostTensor::F32(sample)), ("timestep", HostTensor::F32(timestep))];
        if let Some(record) = self.unet_recorder.as_mut() {
            let mut all = step.clone();
            all.extend(unet_conditioning(cond));
            record(&all);
        }
        let mut out = if self.io_binding {
            self.unet.bind_inputs(step)?;
            let name = denoiser_output(&self.unet)?;
            self.unet.bind_output(&name, &shape)?;
            self.unet.run_bound()?
        } else {
            let mut feeds = step;
            feeds.extend(unet_conditioning(cond));
            self.unet.run(feeds)?
        };
        take_output(&mut out, &self.unet, "out_sample")
    }

    fn decode(&mut self, latents: &ArrayD<f32>) -> Result<Vec<RgbImage>> {
        let scaled = latents / self.vae_scaling_factor;
        let mut out = self.vae_decoder.run(vec![("latent_sample", HostTensor::F32(scaled))])?;
        let sample = take_output(&mut out, &self.vae_decoder, "sample")?;
        image::to_rgb(&sample)
    }
}

/// A warning for more steps than the scheduler's training timesteps (diffusers runs them, so dfast does too;
/// only DDIM refuses), with the number of denoiser calls that will run; for the caller to show first.
fn steps_warning(dir: &PipelineDir, opts: &GenerateOptions, default_steps: usize) -> Result<Option<String>> {
    let steps = opts.steps.unwrap_or(default_steps);
    let config_path = opts.scheduler_config.clone().unwrap_or_else(|| dir.scheduler_config());
    let config = SchedulerConfig::from_file(&config_path)?;
    let trained = config.train_timesteps()?;
    if steps <= trained {
        return Ok(None);
    }
    let mut scheduler = scheduler::from_config(&config, opts.scheduler)?;
    scheduler.set_timesteps(steps)?;
    let calls = scheduler.timesteps().len();
    let denoiser = if dir.kind == PipelineKind::PixArtAlpha { "transformer" } else { "UNet" };
    Ok(Some(format!(
        "--steps {steps} is more than the scheduler's {trained} training timesteps; diffusers runs them all, \
         and so does dfast: {calls} {denoiser} calls"
    )))
}

/// Whether a session keeps the denoiser's inputs and output in device buffers bound to it (IoBinding): the EP
/// option `io_binding` (a converted folder's, then the command line's), on by default where the EP has device
/// memory (cuda, tensorrt). A CUDA graph replays a step on these fixed addresses, so it needs them.
pub(crate) fn io_binding(runtime: &Runtime, defaults: &EpOptions) -> Result<bool> {
    let ep = runtime.ep();
    let session = defaults
        .merged(runtime.options())
        .typed(ep)
        .map_err(|e| Error::bad_config(format!("session options of the {ep} execution provider: {e}"), e))?;
    Ok(session.common().io_binding.unwrap_or(ep.device_memory()))
}

/// The denoiser's noise-prediction output: `out_sample`, else its first output (the one bound with IoBinding).
pub(crate) fn denoiser_output(model: &Model) -> Result<String> {
    let names = model.output_names();
    names
        .iter()
        .find(|n| *n == "out_sample")
        .or(names.first())
        .cloned()
        .ok_or_else(|| Error::bad_file(model.path(), "the model has no outputs"))
}

/// The UNet inputs that stay the same for every step of one image.
fn unet_conditioning(cond: &Conditioning) -> Vec<(&'static str, HostTensor)> {
    let mut feeds = vec![("encoder_hidden_states", HostTensor::F32(cond.encoder_hidden_states.clone()))];
    if let Some((text_embeds, time_ids)) = &cond.added {
        feeds.push(("text_embeds", HostTensor::F32(text_embeds.clone())));
        feeds.push(("time_ids", HostTensor::F32(time_ids.clone())));
    }
    feeds
}

fn stack2(latents: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    concatenate(Axis(0), &[latents.view(), latents.view()])
        .map_err(|e| Error::internal(format!("batching latents: {e}")))
}
