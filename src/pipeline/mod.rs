//! Image generation: tokenizers, text encoders, the denoising loop over a scheduler, the VAE; text-to-image,
//! img2img and inpainting.

pub mod binning;
mod clip_skip;
pub mod conditioning;
pub mod defaults;
mod denoise;
pub mod from_hub;
mod generate;
pub mod image;
pub mod image_processor;
pub mod img2img;
pub mod latents;
pub mod memory;
pub mod model_dir;
pub mod output;
pub mod pixart;
pub mod prompt_file;
pub mod resample;
pub mod tokenizer;
pub mod torch_rng;
mod vae;

use std::path::Path;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};

use crate::runtime::{HostTensor, Model, Runtime, SessionRole};
use crate::scheduler::SchedulerConfig;
use crate::settings::EpOptions;
use crate::{Error, Result};
use conditioning::{Conditioning, TextEncoder};
pub use defaults::CallDefaults;
use denoise::{Denoiser, LoopOptions, Run, ShapeCheck, check_static_shapes};
use generate::ChosenScheduler;
pub(crate) use generate::take_output;
pub use generate::{GenerateOptions, Generated, HostShare, Timings, UnetRecorder};
use img2img::{ImageTask, Start};
pub use model_dir::{DenoiserConfig, HubLocation, PipelineDir, PipelineKind, VaeConfig};
use tokenizer::ClipTokenizer;
use torch_rng::TorchGenerator;
pub(crate) use vae::DEFAULT_SCALING_FACTOR;
use vae::Vae;

/// A loaded pipeline, reusable for many images: a UNet pipeline (SD, SDXL) or PixArt-α.
pub enum Pipeline {
    Unet(Box<UnetPipeline>),
    PixArt(Box<pixart::PixArtPipeline>),
}

/// A loaded UNet pipeline: every session created once (the VAE encoder's at the first image it encodes),
/// reusable for many images.
pub struct UnetPipeline {
    dir: PipelineDir,
    text_encoders: Vec<TextEncoder>,
    unet: Model,
    vae: Vae,
    /// The UNet's input channels: the latents' (4), or 9 for an inpainting UNet (latents, mask, masked image).
    unet_channels: usize,
    default_size: usize,
    /// The UNet's inputs and output in device memory, bound once (IoBinding).
    io_binding: bool,
    /// An LCM UNet's guidance embedding width: the UNet takes the scale as `timestep_cond`, not by
    /// classifier-free guidance.
    guidance_embedding: Option<usize>,
    /// For sessions created after loading (the `--clip-skip` text encoder).
    runtime: Runtime,
    session_defaults: EpOptions,
    /// Sees every UNet call's inputs (calibration).
    unet_recorder: Option<UnetRecorder>,
    /// Warnings from loading (a folder converted for another EP), handed out with the first image.
    warnings: Vec<String>,
    /// The memory there was before loading (`memory::available`), for a size to suggest after running out.
    memory_budget: Option<f64>,
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

    /// The image size (height, width) the options ask for, checked against this pipeline before any work
    /// (with `--image`, the image and mask read and checked too).
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
        steps_warning(self.dir(), opts)
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
        let memory_budget = memory::available(runtime.ep()).map(|(bytes, _)| bytes);
        // A converted folder carries the session options its profile chose for its EP.
        let (defaults, warnings) = dir.session_setup(runtime)?;
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
        let vae = Vae::load(runtime, &dir, &defaults)?;
        let io_binding = io_binding(runtime, &defaults)?;
        let unet_config: DenoiserConfig = dir.config("unet").unwrap_or_default();
        let unet_channels = unet_config.in_channels.unwrap_or(vae.latent_channels);
        let default_size = unet_config.sample_size.map_or(dir.kind.defaults().size, |s| s * vae.scale_factor);
        let guidance_embedding = match unet.input("timestep_cond") {
            None => None,
            Some(input) => {
                let declared = input.dims.last().copied().filter(|&d| d > 0).map(|d| d as usize);
                Some(unet_config.time_cond_proj_dim.or(declared).ok_or_else(|| {
                    Error::bad_file(
                        unet.path(),
                        "the UNet takes `timestep_cond` (the guidance scale's embedding) but neither its \
                         config.json's time_cond_proj_dim nor the input's shape says its width",
                    )
                })?)
            }
        };
        Ok(UnetPipeline {
            runtime: runtime.clone(),
            session_defaults: defaults.clone(),
            dir,
            guidance_embedding,
            text_encoders,
            unet,
            vae,
            unet_channels,
            default_size,
            io_binding,
            unet_recorder: None,
            warnings,
            memory_budget,
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
        self.vae.scale_factor
    }

    /// Shape of the initial latents for `batch` images of `height` x `width`.
    pub fn latents_shape(&self, batch: usize, height: usize, width: usize) -> [usize; 4] {
        let f = self.vae.scale_factor;
        [batch, self.vae.latent_channels, height / f, width / f]
    }

    /// Checks the options against this pipeline before any work is done: the size, and with `--image` the
    /// image, the mask and the strength.
    pub fn resolve_size(&self, opts: &GenerateOptions) -> Result<(usize, usize)> {
        let task = ImageTask::read(opts, self.dir.kind)?;
        self.check_task(task.as_ref())?;
        self.size_for(opts, task.as_ref())
    }

    /// (height, width): the image's for img2img and inpainting (see [`ImageTask::size`]), else the options'
    /// or the UNet's default; a multiple of the pipeline's size step ([`PipelineDir::size_step`]).
    fn size_for(&self, opts: &GenerateOptions, task: Option<&ImageTask>) -> Result<(usize, usize)> {
        let (height, width) = match task {
            Some(task) => task.size(opts, self.vae.scale_factor)?,
            None => (opts.height.unwrap_or(self.default_size), opts.width.unwrap_or(self.default_size)),
        };
        // A size taken from --image is named as such, not as a flag the user did not give.
        let name = |flag: &'static str, given: Option<usize>| match (task, given) {
            (Some(_), None) => {
                if flag == "--width" {
                    "the width of --image"
                } else {
                    "the height of --image"
                }
            }
            _ => flag,
        };
        let sides = [(name("--width", opts.width), Some(width)), (name("--height", opts.height), Some(height))];
        self.dir.size_step(true)?.check(sides)?;
        Ok((height, width))
    }

    /// The UNet fits the task: an inpainting UNet (latents + mask + masked image) needs `--image` and
    /// `--mask`, any other takes the latents' channels.
    fn check_task(&self, task: Option<&ImageTask>) -> Result<()> {
        let latent = self.vae.latent_channels;
        let inpainting_unet = 2 * latent + 1;
        let inpainting = task.is_some_and(ImageTask::is_inpainting);
        if self.unet_channels == latent || (inpainting && self.unet_channels == inpainting_unet) {
            return Ok(());
        }
        let config = self.dir.root.join("unet").join("config.json");
        Err(if self.unet_channels == inpainting_unet {
            Error::bad_file(
                config,
                format!(
                    "the UNet takes {inpainting_unet} input channels (an inpainting UNet: latents, mask and masked \
                     image); give --image and --mask"
                ),
            )
        } else {
            Error::bad_file(
                config,
                format!(
                    "the UNet takes {} input channels; dfast runs UNets of {latent} (the latents) and inpainting \
                     UNets of {inpainting_unet}",
                    self.unet_channels
                ),
            )
        })
    }

    /// A warning for more steps than the scheduler's training timesteps (diffusers runs them, so dfast does
    /// too; only DDIM refuses), with the number of UNet calls that will run; for the caller to show first.
    pub fn steps_warning(&self, opts: &GenerateOptions) -> Result<Option<String>> {
        steps_warning(&self.dir, opts)
    }

    /// Generates one image; `on_step(i, n)` is called after each denoising step.
    /// Running out of memory is said with the size and batch that ran out and a smaller size to try: the
    /// largest of the same shape that the memory estimate fits in the memory there was before loading, and
    /// below half of this size's estimate (it was too low here).
    pub fn generate(&mut self, opts: &GenerateOptions, on_step: &mut dyn FnMut(usize, usize)) -> Result<Generated> {
        self.generate_once(opts, on_step).map_err(|e| {
            let Ok((height, width)) = self.resolve_size(opts) else { return e };
            if !crate::runtime::is_out_of_memory(&e) {
                return e;
            }
            let images = opts.batch_size.max(1);
            let suggestion = self.smaller_size(opts, height, width).unwrap_or_else(|| {
                // No estimate: half of each side, still a size the model takes.
                let f = self.dir.size_step(true).map_or(self.vae.scale_factor, |s| s.multiple());
                ((height / 2 / f).max(1) * f, (width / 2 / f).max(1) * f)
            });
            let message = format!(
                "{e} at {width}x{height} with {images} image(s) per prompt; try a smaller size, e.g. --width {} \
                 --height {}",
                suggestion.1, suggestion.0
            );
            Error::Runtime { message, source: Some(Box::new(e)) }
        })
    }

    /// After running out of memory at `height` x `width`: see [`Self::generate`].
    fn smaller_size(&self, opts: &GenerateOptions, height: usize, width: usize) -> Option<(usize, usize)> {
        let images = opts.batch_size.max(1);
        let guidance = opts.guidance.unwrap_or(self.dir.kind.defaults().guidance) > 1.0;
        let rows = if guidance { 2 * images } else { images };
        let run = memory::Run { height, width, rows, images, vae_encoder: opts.image.is_some() };
        let estimator = memory::Estimator::of(&self.dir).ok()?;
        let budget = self.memory_budget?.min(estimator.need(run).total() / 2.0);
        let step = self.dir.size_step(true).ok()?.multiple();
        memory::largest_fitting(&estimator, run, step, budget)
    }

    fn generate_once(&mut self, opts: &GenerateOptions, on_step: &mut dyn FnMut(usize, usize)) -> Result<Generated> {
        let mut run = Run::new(&self.dir, opts, self.guidance_embedding.is_some())?;
        let task = ImageTask::read(opts, self.dir.kind)?;
        self.check_task(task.as_ref())?;
        let size = self.size_for(opts, task.as_ref())?;
        let begin = match &task {
            Some(task) => task.begin(run.scheduler.as_ref(), run.steps)?,
            None => 0,
        };
        self.check_static_shapes(&run, size, task.is_some())?;
        let shape = self.latents_shape(run.batch, size.0, size.1);
        let given = match (&task, &opts.latents) {
            (None, Some(path)) => Some(latents::read(path, &shape)?),
            _ => None,
        };

        let t0 = Instant::now();
        let guidance = run.guidance();
        let mut cond = self.encode_prompt(opts, guidance, size)?.repeat_per_prompt(run.batch, guidance)?;
        if let Some(dim) = self.guidance_embedding {
            cond.timestep_cond = Some(conditioning::guidance_scale_embedding(run.guidance_scale, dim, run.rows()));
        }
        run.timings.text_encoding = t0.elapsed().as_secs_f64();
        let mut warnings: Vec<String> = std::mem::take(&mut self.warnings);
        warnings.extend(self.text_encoders.iter_mut().flat_map(|e| e.warnings.drain(..)));
        warnings.dedup();

        // The seed's one generator: the initial noise (unless given) or img2img's draws, then the scheduler's.
        let mut generator = TorchGenerator::manual_seed(opts.seed);
        let start = match &task {
            None => {
                let noise = given.unwrap_or_else(|| latents::randn(&mut generator, &shape));
                Start { latents: noise * run.scheduler.init_noise_sigma() as f32, inpainting: None }
            }
            Some(task) => {
                let (start, seconds) = task.prepare(
                    &mut generator,
                    &mut self.vae,
                    run.scheduler.as_ref(),
                    begin,
                    size,
                    run.batch,
                    self.unet_channels,
                    guidance,
                )?;
                run.timings.vae_encode = seconds;
                start
            }
        };
        if self.io_binding {
            // Bound once per image: the conditioning does not change between steps.
            self.unet.bind_inputs(unet_conditioning(&cond))?;
        }
        let mut unet = UnetDenoiser {
            unet: &mut self.unet,
            cond: &cond,
            io_binding: self.io_binding,
            recorder: self.unet_recorder.as_mut(),
            out_channels: self.vae.latent_channels,
        };
        let options = LoopOptions { begin, inpainting: start.inpainting, ..Default::default() };
        let latents = run.denoise(&mut unet, start.latents, options, &mut generator, on_step)?;

        let t_vae = Instant::now();
        let images = image::to_rgb(&self.vae.decode(&latents)?)?;
        run.timings.vae_decode = t_vae.elapsed().as_secs_f64();
        let mut out = run.finish(images, latents, warnings, size, task.map(|t| t.strength));
        out.seed_used = generator != TorchGenerator::manual_seed(opts.seed);
        Ok(out)
    }

    /// Refuses, before any work, an image size or batch that an export with static input shapes cannot
    /// take (the UNet's inputs, the VAE decoder's, and the encoder's with an image).
    fn check_static_shapes(&mut self, run: &Run, (height, width): (usize, usize), encodes: bool) -> Result<()> {
        if encodes {
            self.vae.encoder()?;
        }
        let rows = run.rows();
        let [batch, channels, h, w] = self.latents_shape(run.batch, height, width);
        let tokens = self.text_encoders[0].tokenizer.max_length();
        let mut checks: Vec<ShapeCheck> = vec![
            (&self.unet, "sample", vec![Some(rows), Some(self.unet_channels), Some(h), Some(w)]),
            (&self.unet, "encoder_hidden_states", vec![Some(rows), Some(tokens), None]),
            (&self.unet, "text_embeds", vec![Some(rows), None]),
            (self.vae.decoder(), "latent_sample", vec![Some(batch), Some(channels), Some(h), Some(w)]),
        ];
        if let Some(encoder) = self.vae.loaded_encoder() {
            checks.push((encoder, "sample", vec![Some(1), Some(3), Some(height), Some(width)]));
        }
        let what = format!("a {width}x{height} image (--width {width} --height {height})");
        check_static_shapes(&checks, &what, run.batch, run.guidance())
    }

    /// SD's text encoder with the output `--clip-skip k` reads: the folder's own, else a rewritten copy
    /// ([`clip_skip`]) loaded in its place (it keeps every output of the original).
    fn expose_clip_skip(&mut self, k: usize) -> Result<()> {
        let output = conditioning::clip_skip_output(k);
        if self.text_encoders[0].model.output_names().contains(&output) {
            return Ok(());
        }
        let path = self.dir.component_model("text_encoder");
        let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), "cannot create a folder in", e))?;
        let rewritten = clip_skip::rewrite_copy(&path, k, tmp.path())?;
        self.text_encoders[0].model = self.runtime.load_with(&rewritten, &self.session_defaults, SessionRole::Other)?;
        Ok(())
    }

    fn encode_prompt(&mut self, opts: &GenerateOptions, guidance: bool, size: (usize, usize)) -> Result<Conditioning> {
        let negative = opts.negative_prompt.as_deref();
        // diffusers' clip_skip 0 is its default embedding.
        let clip_skip = opts.clip_skip.filter(|&k| k > 0);
        match self.dir.kind {
            PipelineKind::StableDiffusion => {
                if let Some(k) = clip_skip {
                    self.expose_clip_skip(k)?;
                }
                let encoder = &mut self.text_encoders[0];
                conditioning::encode_sd(encoder, &opts.prompt, negative, guidance, clip_skip)
            }
            PipelineKind::StableDiffusionXl => {
                let force_zeros = self.dir.force_zeros_for_empty_prompt();
                let encoders: &mut [TextEncoder; 2] = (&mut self.text_encoders[..])
                    .try_into()
                    .map_err(|_| Error::internal("an SDXL pipeline needs two text encoders"))?;
                conditioning::encode_sdxl(encoders, &opts.prompt, negative, guidance, force_zeros, size, clip_skip)
            }
            PipelineKind::PixArtAlpha => Err(Error::internal("a PixArt pipeline is not a UNet pipeline")),
        }
    }
}

/// The UNet with one image's conditioning: what the denoising loop calls each step.
struct UnetDenoiser<'a> {
    unet: &'a mut Model,
    cond: &'a Conditioning,
    /// The conditioning is bound to the session already; each step binds the sample and timestep.
    io_binding: bool,
    recorder: Option<&'a mut UnetRecorder>,
    /// Of the noise prediction: the latents' (an inpainting UNet takes 5 more).
    out_channels: usize,
}

impl Denoiser for UnetDenoiser<'_> {
    fn predict(&mut self, sample: ArrayD<f32>, t: f64) -> Result<ArrayD<f32>> {
        let batch = sample.shape()[0];
        let shape: Vec<usize> =
            [batch, self.out_channels].into_iter().chain(sample.shape()[2..].iter().copied()).collect();
        let timestep = ArrayD::from_elem(IxDyn(&[batch]), t as f32);
        let step = vec![("sample", HostTensor::F32(sample)), ("timestep", HostTensor::F32(timestep))];
        if let Some(record) = self.recorder.as_mut() {
            let mut all = step.clone();
            all.extend(unet_conditioning(self.cond));
            record(&all);
        }
        let mut out = if self.io_binding {
            self.unet.bind_inputs(step)?;
            let name = denoiser_output(self.unet)?;
            self.unet.bind_output(&name, &shape)?;
            self.unet.run_bound()?
        } else {
            let mut feeds = step;
            feeds.extend(unet_conditioning(self.cond));
            self.unet.run(feeds)?
        };
        take_output(&mut out, self.unet, "out_sample")
    }

    fn take_transfer_seconds(&mut self) -> f64 {
        self.unet.take_transfer_seconds()
    }

    fn path(&self) -> &Path {
        self.unet.path()
    }
}

/// A warning for more steps than the scheduler's training timesteps (diffusers runs them, so dfast does too;
/// only DDIM refuses), with the number of denoiser calls that will run; for the caller to show first.
fn steps_warning(dir: &PipelineDir, opts: &GenerateOptions) -> Result<Option<String>> {
    let steps = opts.steps.unwrap_or(dir.defaults().steps);
    let config_path = opts.scheduler_config.clone().unwrap_or_else(|| dir.scheduler_config());
    let config = SchedulerConfig::from_file(&config_path)?;
    let trained = config.train_timesteps().map_err(|e| e.in_file(&config_path))?;
    if steps <= trained {
        return Ok(None);
    }
    let mut scheduler = ChosenScheduler::unset(dir, opts)?.scheduler;
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
    if let Some(timestep_cond) = &cond.timestep_cond {
        feeds.push(("timestep_cond", HostTensor::F32(timestep_cond.clone())));
    }
    feeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loaded pipeline moves to another thread (the Python package runs it with the interpreter's lock
    /// released); this fails to compile when a field stops being `Send`.
    #[test]
    fn a_loaded_pipeline_is_send() {
        fn send<T: Send>() {}
        send::<Pipeline>();
    }
}
