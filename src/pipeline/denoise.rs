//! The denoising loop, once for every pipeline (SD, SDXL, PixArt-α; text-to-image, img2img, inpainting),
//! and what surrounds it: the run's settings (the pipeline class's defaults for what is not given, the
//! scheduler), the check of static input shapes, and the result with its timings.
//!
//! What differs between pipelines is the model call and its conditioning, a [`Denoiser`]: the UNet with its
//! text embeddings (and SDXL's added conditions), or PixArt's transformer with T5's embeddings and mask.
//!
//! The loop, as diffusers' pipelines write it, from the scheduler's `begin` index (0, or img2img's and
//! inpainting's `begin_index(strength)`):
//!
//! ```text
//! for each timestep t from begin:
//!     x = [latents; latents] under guidance, else latents
//!     x = scheduler.scale_model_input(x)            (+ mask and masked-image latents: 9-channel inpainting)
//!     e = denoiser(x, t);  e = e_uncond + scale * (e_text - e_uncond) under guidance
//!     e = rescale * e * std(e_text) / std(e) + (1 - rescale) * e      (guidance_rescale, under guidance)
//!     latents = scheduler.step(e, latents, generator)   (PixArt, one step: its pred_original_sample)
//!     latents = (1 - mask) * add_noise(image, noise, next t) + mask * latents   (4-channel inpainting;
//!                                                           the clean image after the last step)
//! ```

use std::path::Path;
use std::time::Instant;

use ::image::RgbImage;
use ndarray::{ArrayD, Axis, Zip, concatenate};

use super::generate::{ChosenScheduler, GenerateOptions, Generated, HostShare, Timings};
use super::model_dir::PipelineDir;
use crate::runtime::{Model, format_dims};
use crate::scheduler::{NoiseSource, Scheduler, SchedulerKind};
use crate::{Error, Result};

/// The model a pipeline denoises with, called once per step with everything but the latents bound to it.
pub(crate) trait Denoiser {
    /// The noise prediction for `model_input` at timestep `t`: `model_input` is the latents (stacked
    /// `[unconditional; text]` under guidance, scaled by the scheduler, with inpainting's extra channels);
    /// the prediction has its rows and the latents' channels.
    fn predict(&mut self, model_input: ArrayD<f32>, t: f64) -> Result<ArrayD<f32>>;
    /// Seconds spent moving tensors in and out of the model since the last call.
    fn take_transfer_seconds(&mut self) -> f64;
    /// The model file, for messages.
    fn path(&self) -> &Path;
}

/// How inpainting takes part in the loop.
pub(crate) enum Inpainting {
    /// A 9-channel inpainting UNet: these channels (the mask, then the masked image's latents; one row per
    /// model-input row) are appended to every model input.
    Channels(ArrayD<f32>),
    /// A 4-channel UNet: the image's latents blended in after every step.
    Blend(Box<Blend>),
}

/// After every step, where `mask` is 0 the latents are the image's latents with `noise` at the next timestep's
/// level (after the last step, without noise); `mask` has the latents' shape.
pub(crate) struct Blend {
    pub image_latents: ArrayD<f32>,
    pub noise: ArrayD<f32>,
    pub mask: ArrayD<f32>,
}

/// Where the loop begins and what else it does.
#[derive(Default)]
pub(crate) struct LoopOptions {
    /// The index into the scheduler's timesteps of the first step (img2img, inpainting).
    pub begin: usize,
    pub inpainting: Option<Inpainting>,
    /// With a single timestep, the result is the scheduler's `pred_original_sample` (PixArt's pipeline).
    pub one_step_takes_pred_original: bool,
}

/// One run: its settings resolved against the pipeline class's defaults, its scheduler, and its timings.
pub(crate) struct Run {
    start: Instant,
    pub steps: usize,
    pub guidance_scale: f32,
    /// diffusers' `guidance_rescale`: 0 leaves the guided prediction as it is.
    pub guidance_rescale: f32,
    /// The UNet takes the guidance scale as an embedding (an LCM UNet's `timestep_cond`): no classifier-free
    /// guidance, whatever the scale, as diffusers' `do_classifier_free_guidance`.
    pub embedded_guidance: bool,
    /// Images per prompt.
    pub batch: usize,
    pub scheduler: Box<dyn Scheduler>,
    /// The scheduler class (diffusers' name) and kind.
    pub scheduler_name: String,
    pub scheduler_kind: SchedulerKind,
    pub timings: Timings,
    /// Warnings about the options themselves, added to the result's.
    notes: Vec<String>,
}

impl Run {
    /// The options' steps and guidance, or the pipeline class's defaults ([`super::defaults`]), and the
    /// scheduler set to those steps.
    pub fn new(dir: &PipelineDir, opts: &GenerateOptions, embedded_guidance: bool) -> Result<Self> {
        let start = Instant::now();
        let defaults = dir.defaults();
        let steps = opts.steps.unwrap_or(defaults.steps);
        if steps == 0 {
            return Err(Error::bad_input("--steps must be at least 1"));
        }
        let ChosenScheduler { scheduler, name, config } = ChosenScheduler::new(dir, opts, steps)?;
        if let Some(g) = opts.guidance
            && !g.is_finite()
        {
            return Err(Error::bad_input(format!("--guidance {g} is not a finite number")));
        }
        let scheduler_kind = match opts.scheduler {
            Some(kind) => kind,
            None => config.class_kind()?,
        };
        let guidance_scale = opts.guidance.unwrap_or(defaults.guidance);
        let guidance_rescale = match opts.guidance_rescale {
            None => 0.0,
            Some(r) if !(0.0..=1.0).contains(&r) => {
                return Err(Error::bad_input(format!("--guidance-rescale {r} must lie between 0 and 1")));
            }
            Some(r) if r > 0.0 && embedded_guidance => {
                return Err(Error::bad_input(
                    "--guidance-rescale rescales classifier-free guidance, which this UNet does not run (it takes \
                     the guidance scale as an embedding, as LCM UNets do); drop --guidance-rescale",
                ));
            }
            Some(r) if r > 0.0 && guidance_scale <= 1.0 => {
                return Err(Error::bad_input(format!(
                    "--guidance-rescale rescales classifier-free guidance, which is off at --guidance \
                     {guidance_scale}; give a guidance above 1 or drop --guidance-rescale"
                )));
            }
            Some(r) => r,
        };
        let mut notes = Vec::new();
        if (guidance_scale <= 1.0 || embedded_guidance)
            && opts.negative_prompt.as_deref().is_some_and(|n| !n.is_empty())
        {
            notes.push(format!(
                "the negative prompt has no effect at guidance {guidance_scale} (classifier-free guidance is off at \
                 1 or less, and for UNets that take the guidance scale as an embedding), so it is not used"
            ));
        }
        Ok(Run {
            start,
            steps,
            guidance_scale,
            guidance_rescale,
            embedded_guidance,
            batch: opts.batch_size.max(1),
            scheduler,
            scheduler_name: name,
            scheduler_kind,
            timings: Timings::default(),
            notes,
        })
    }

    /// Classifier-free guidance is on above a scale of 1 unless the UNet embeds the scale, as in diffusers.
    pub fn guidance(&self) -> bool {
        self.guidance_scale > 1.0 && !self.embedded_guidance
    }

    /// Rows the denoiser sees: the batch, twice under guidance.
    pub fn rows(&self) -> usize {
        if self.guidance() { 2 * self.batch } else { self.batch }
    }

    /// Runs the loop (see the module docs) from `latents`; `on_step(i, n)` after each step. Records each
    /// step's time and the host's share of it. A stochastic scheduler draws its noise from `generator`: the
    /// seed's generator after the draws that made `latents`, as diffusers passes it to `scheduler.step`.
    pub fn denoise(
        &mut self,
        denoiser: &mut dyn Denoiser,
        mut latents: ArrayD<f32>,
        options: LoopOptions,
        generator: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<ArrayD<f32>> {
        let timesteps = self.scheduler.timesteps().to_vec();
        let end = timesteps.len();
        let begin = options.begin.min(end);
        let (guidance, scale, batch) = (self.guidance(), self.guidance_scale, self.batch);
        let rescale = self.guidance_rescale;
        denoiser.take_transfer_seconds();
        for (i, step_index) in (begin..end).enumerate() {
            let t_step = Instant::now();
            let stacked = if guidance { stack2(&latents)? } else { latents.clone() };
            let mut model_input = self.scheduler.scale_model_input(stacked, step_index);
            if let Some(Inpainting::Channels(extra)) = &options.inpainting {
                model_input = concatenate(Axis(1), &[model_input.view(), extra.view()])
                    .map_err(|e| Error::internal(format!("appending the inpainting channels: {e}")))?;
            }
            let t_model = Instant::now();
            let out = denoiser.predict(model_input, timesteps[step_index])?;
            let in_model = t_model.elapsed().as_secs_f64();
            let rows = if guidance { 2 * batch } else { batch };
            let expected: Vec<usize> = std::iter::once(rows).chain(latents.shape()[1..].iter().copied()).collect();
            if out.shape() != expected {
                return Err(Error::bad_file(
                    denoiser.path(),
                    format!(
                        "the model returned a noise prediction of shape {:?} where the loop needs {expected:?} \
                         (latents {:?}{}); it does not take this size or batch",
                        out.shape(),
                        latents.shape(),
                        if guidance { ", twice under guidance" } else { "" },
                    ),
                ));
            }
            let noise_pred = match guidance {
                true if rescale > 0.0 => rescale_noise_cfg(&apply_guidance(&out, batch, scale), &out, batch, rescale),
                true => apply_guidance(&out, batch, scale),
                false => out,
            };
            latents = if options.one_step_takes_pred_original && end == 1 {
                self.scheduler
                    .pred_original_sample(&noise_pred, step_index, &latents)
                    .ok_or_else(|| Error::internal(format!("{} gives no pred_original_sample", self.scheduler_name)))?
            } else {
                self.scheduler.step(&noise_pred, step_index, &latents, generator)
            };
            if let Some(Inpainting::Blend(blend)) = &options.inpainting {
                let Blend { image_latents, noise, mask } = blend.as_ref();
                // The image's latents at the next timestep's noise level; after the last step, clean.
                let noised;
                let proper = if step_index + 1 < end {
                    noised = self.scheduler.add_noise(image_latents, noise, step_index + 1);
                    &noised
                } else {
                    image_latents
                };
                latents = Zip::from(mask).and(proper).and(&latents).map_collect(|&m, &p, &l| (1.0 - m) * p + m * l);
            }
            let step = t_step.elapsed().as_secs_f64();
            self.timings.unet_steps.push(step);
            self.timings
                .host_steps
                .push(HostShare { scheduler: step - in_model, copies: denoiser.take_transfer_seconds() });
            on_step(i + 1, end - begin);
            // NaN or Inf never leaves the latents again: stop here rather than decode a black image.
            if latents.iter().any(|v| !v.is_finite()) {
                return Err(Error::runtime(format!(
                    "the latents hold NaN or Inf after step {} of {} ({}, timestep {}); the image would be black \
                     (check --guidance, the scheduler config, and the denoiser's precision)",
                    i + 1,
                    end - begin,
                    self.scheduler_name,
                    timesteps[step_index]
                )));
            }
        }
        Ok(latents)
    }

    /// The result: the images (one per image per prompt), the final latents, and what the run was.
    pub fn finish(
        mut self,
        images: Vec<RgbImage>,
        latents: ArrayD<f32>,
        mut warnings: Vec<String>,
        (height, width): (usize, usize),
        strength: Option<f64>,
    ) -> Generated {
        self.timings.total = self.start.elapsed().as_secs_f64();
        warnings.splice(0..0, self.notes);
        Generated {
            images,
            latents,
            timings: self.timings,
            warnings,
            seed_used: true,
            width,
            height,
            steps: self.steps,
            guidance: self.guidance_scale,
            scheduler: self.scheduler_name,
            strength,
        }
    }
}

/// One input a static-shape export must take: the model, the input's name, and the shape the run feeds
/// (None: any size).
pub(crate) type ShapeCheck<'a> = (&'a Model, &'static str, Vec<Option<usize>>);

/// Refuses, before any work, a size or batch that an export with static input shapes cannot take, in one
/// sentence naming the input, its declared shape, `what` was asked (`a 96x64 image (--width 96 --height
/// 64)`) and the shape that needs. (Inputs that only repeat one value per row, such as a timestep declared
/// `[1]`, are fitted when fed: see `runtime::fit_shape`.)
pub(crate) fn check_static_shapes(checks: &[ShapeCheck], what: &str, batch: usize, guidance: bool) -> Result<()> {
    for (model, name, shape) in checks {
        if let Some(declared) = model.shape_conflict(name, shape) {
            let wanted: Vec<i64> = shape.iter().map(|d| d.map_or(-1, |d| d as i64)).collect();
            let guided = if guidance { " with guidance" } else { "" };
            return Err(Error::bad_file(
                model.path(),
                format!(
                    "input `{name}` is declared {}, which cannot take {what} at batch {batch}{guided} (that needs \
                     {}); this export has static shapes, so generate at the size and batch it was exported for",
                    format_dims(&declared),
                    format_dims(&wanted),
                ),
            ));
        }
    }
    Ok(())
}

/// Classifier-free guidance on a model output stacked [unconditional; text] along the batch:
/// `uncond + scale * (text - uncond)`.
fn apply_guidance(out: &ArrayD<f32>, batch: usize, scale: f32) -> ArrayD<f32> {
    let uncond = out.slice_axis(Axis(0), (0..batch).into());
    let text = out.slice_axis(Axis(0), (batch..2 * batch).into());
    &uncond + &((&text - &uncond) * scale)
}

/// diffusers' `rescale_noise_cfg` (Lin et al. 2023, section 3.4): each image's guided prediction `noise_cfg`
/// scaled to the standard deviation of its text prediction (the second half of `out`), blended with the
/// unscaled one by `guidance_rescale`. torch's `std` is the unbiased one, accumulated in float64.
fn rescale_noise_cfg(noise_cfg: &ArrayD<f32>, out: &ArrayD<f32>, batch: usize, guidance_rescale: f32) -> ArrayD<f32> {
    let text = out.slice_axis(Axis(0), (batch..2 * batch).into());
    let std = |x: ndarray::ArrayViewD<f32>| -> f32 {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (n - 1.0);
        var.sqrt() as f32
    };
    let mut rescaled = noise_cfg.clone();
    for (i, mut row) in rescaled.axis_iter_mut(Axis(0)).enumerate() {
        let ratio = std(text.index_axis(Axis(0), i)) / std(noise_cfg.index_axis(Axis(0), i));
        row.mapv_inplace(|v| guidance_rescale * (v * ratio) + (1.0 - guidance_rescale) * v);
    }
    rescaled
}

/// `[x; x]` along the batch.
pub(crate) fn stack2(x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    concatenate(Axis(0), &[x.view(), x.view()]).map_err(|e| Error::internal(format!("batching latents: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{SchedulerConfig, from_config};

    /// Returns a prediction of a fixed shape, whatever it is given.
    struct Fixed(Vec<usize>);

    impl Denoiser for Fixed {
        fn predict(&mut self, _: ArrayD<f32>, _: f64) -> Result<ArrayD<f32>> {
            Ok(ArrayD::zeros(ndarray::IxDyn(&self.0)))
        }
        fn take_transfer_seconds(&mut self) -> f64 {
            0.0
        }
        fn path(&self) -> &Path {
            Path::new("model.onnx")
        }
    }

    fn generator() -> crate::pipeline::torch_rng::TorchGenerator {
        crate::pipeline::torch_rng::TorchGenerator::manual_seed(0)
    }

    fn run(guidance_scale: f32) -> Run {
        let mut scheduler = from_config(&SchedulerConfig::default(), Some(SchedulerKind::Euler)).unwrap();
        scheduler.set_timesteps(3).unwrap();
        Run {
            start: Instant::now(),
            steps: 3,
            guidance_scale,
            guidance_rescale: 0.0,
            embedded_guidance: false,
            batch: 1,
            scheduler,
            scheduler_name: "EulerDiscreteScheduler".into(),
            scheduler_kind: SchedulerKind::Euler,
            timings: Timings::default(),
            notes: Vec::new(),
        }
    }

    /// A prediction of the wrong shape (too few rows for guidance, another size) is an error naming the model,
    /// not a panic in the guidance split or the scheduler's step.
    #[test]
    fn a_prediction_of_another_shape_is_an_error() {
        let latents = ArrayD::zeros(ndarray::IxDyn(&[1, 4, 3, 3]));
        for (scale, shape) in [(7.5, vec![1, 4, 3, 3]), (1.0, vec![1, 4, 2, 2]), (1.0, vec![1, 8, 3, 3])] {
            let err = run(scale)
                .denoise(
                    &mut Fixed(shape.clone()),
                    latents.clone(),
                    LoopOptions::default(),
                    &mut generator(),
                    &mut |_, _| {},
                )
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("model.onnx: the model returned a noise prediction of shape"), "{shape:?}: {err}");
        }
        let ok = run(7.5).denoise(
            &mut Fixed(vec![2, 4, 3, 3]),
            latents,
            LoopOptions::default(),
            &mut generator(),
            &mut |_, _| {},
        );
        assert_eq!(ok.unwrap().shape(), &[1, 4, 3, 3]);
    }

    /// Predicts `value` everywhere, at the latents' shape.
    struct Filled(f32);

    impl Denoiser for Filled {
        fn predict(&mut self, x: ArrayD<f32>, _: f64) -> Result<ArrayD<f32>> {
            Ok(ArrayD::from_elem(x.raw_dim(), self.0))
        }
        fn take_transfer_seconds(&mut self) -> f64 {
            0.0
        }
        fn path(&self) -> &Path {
            Path::new("model.onnx")
        }
    }

    /// A step that leaves NaN or Inf in the latents ends the loop there, with the step named.
    #[test]
    fn non_finite_latents_end_the_loop() {
        let latents = ArrayD::zeros(ndarray::IxDyn(&[1, 4, 2, 2]));
        for value in [f32::NAN, f32::INFINITY] {
            let mut steps = 0;
            let err = run(1.0)
                .denoise(&mut Filled(value), latents.clone(), LoopOptions::default(), &mut generator(), &mut |i, _| {
                    steps = i
                })
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("the latents hold NaN or Inf after step 1 of 3"), "{err}");
            assert_eq!(steps, 1);
        }
        let ok = run(1.0).denoise(&mut Filled(0.5), latents, LoopOptions::default(), &mut generator(), &mut |_, _| {});
        assert!(ok.is_ok());
    }

    /// From a begin index the loop runs the rest of the schedule, counting its own steps.
    #[test]
    fn the_loop_begins_at_the_begin_index() {
        let mut steps = Vec::new();
        let latents = ArrayD::zeros(ndarray::IxDyn(&[1, 4, 2, 2]));
        let options = LoopOptions { begin: 1, ..Default::default() };
        let mut r = run(1.0);
        r.denoise(&mut Fixed(vec![1, 4, 2, 2]), latents, options, &mut generator(), &mut |i, n| steps.push((i, n)))
            .unwrap();
        assert_eq!(steps, [(1, 2), (2, 2)]);
        assert_eq!(r.timings.unet_steps.len(), 2);
    }
}
