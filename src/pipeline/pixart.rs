//! PixArt-α (diffusers' `PixArtAlphaPipeline`): a T5 encoder, a DiT (`PixArtTransformer2DModel`) and the VAE
//! decoder, point for point as diffusers runs them:
//! - the prompt and the negative prompt (empty by default) tokenized to `max_sequence_length` 120 (padded,
//!   truncated, `</s>` appended) and encoded by T5 with their attention masks, which go on to the transformer
//!   as `encoder_attention_mask`; captions are not cleaned (diffusers' `clean_caption` needs bs4 and ftfy),
//!   only lowercased and stripped, as diffusers does with `clean_caption=False`;
//! - classifier-free guidance (default 4.5) over 20 steps by default (`PipelineKind::defaults`), with the
//!   checkpoint's DPM-Solver++ or any of dfast's schedulers;
//! - `resolution` and `aspect_ratio` fed only when the transformer's `sample_size` is 128;
//! - learned sigma: of the 8 output channels the first 4 are the noise prediction;
//! - with one step, the latents are the scheduler's `pred_original_sample` (diffusers' quirk);
//! - resolution binning (`binning`): generated at the nearest bin, then resized and cropped back.
//!
//! Memory: T5-XXL is 19 GB in fp32, so only one of T5 and the transformer holds a session at a time: the
//! prompt is encoded, T5's session is dropped, then the transformer's is created (and it is dropped before
//! T5 is loaded for the next image).

use std::path::Path;
use std::time::Instant;

use ndarray::{ArrayD, Axis, IxDyn, concatenate};
use serde_json::Value;
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::binning;
use super::denoise::{Denoiser, LoopOptions, Run, ShapeCheck, check_static_shapes};
use super::generate::{GenerateOptions, Generated, UnetRecorder, take_output};
use super::img2img::ImageTask;
use super::model_dir::read_json;
use super::model_dir::{DenoiserConfig, PipelineDir};
use super::torch_rng::TorchGenerator;
use super::vae::Vae;
use super::{image, latents};
use crate::runtime::{HostTensor, Model, Runtime, SessionRole};
use crate::scheduler::SchedulerKind;
use crate::settings::EpOptions;
use crate::{Error, Result};

/// diffusers' `max_sequence_length` default (section 3.1 of the PixArt-α paper).
pub const MAX_SEQUENCE_LENGTH: usize = 120;

/// Token ids and attention mask for one prompt, `max_length` long.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Encoded {
    pub ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    /// The prompt had more tokens than fit; the tail was dropped.
    pub truncated: bool,
}

/// T5's SentencePiece tokenizer from `tokenizer.json` (as transformers' fast T5 tokenizer writes it), called
/// as diffusers calls it: `padding="max_length", truncation=True, add_special_tokens=True`.
pub struct T5Tokenizer {
    /// Truncates and pads to `max_length`.
    fixed: Tokenizer,
    /// Neither truncates nor pads: tells whether the prompt was truncated.
    whole: Tokenizer,
    max_length: usize,
}

impl T5Tokenizer {
    pub fn from_dir(dir: &Path, max_length: usize) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        let mut whole =
            Tokenizer::from_file(&file).map_err(|e| Error::bad_file(&file, format!("not a valid tokenizer: {e}")))?;
        whole.with_truncation(None).map_err(|e| Error::bad_file(&file, format!("cannot set up the tokenizer: {e}")))?;
        whole.with_padding(None);
        let pad_token = special_token(dir, "pad_token").unwrap_or_else(|| "<pad>".to_string());
        let pad_id = whole.token_to_id(&pad_token).ok_or_else(|| {
            Error::bad_file(&file, format!("the padding token `{pad_token}` is not in the vocabulary"))
        })?;
        let mut fixed = whole.clone();
        fixed
            .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| Error::bad_file(&file, format!("cannot truncate to {max_length} tokens: {e}")))?;
        fixed.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(T5Tokenizer { fixed, whole, max_length })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn encode(&self, text: &str) -> Result<T5Encoded> {
        let fail = |e| Error::bad_input(format!("cannot tokenize the prompt: {e}"));
        let encoding = self.fixed.encode(text, true).map_err(fail)?;
        let whole = self.whole.encode(text, true).map_err(fail)?;
        Ok(T5Encoded {
            ids: encoding.get_ids().iter().map(|&i| i as i64).collect(),
            attention_mask: encoding.get_attention_mask().iter().map(|&m| m as i64).collect(),
            truncated: whole.get_ids().len() > self.max_length,
        })
    }
}

/// What diffusers' `_text_preprocessing` does to a prompt with `clean_caption=False`: lowercase, then strip
/// the surrounding whitespace.
pub fn preprocess(text: &str) -> String {
    text.to_lowercase().trim().to_string()
}

/// A special token named in `tokenizer_config.json` or `special_tokens_map.json` (a string or an
/// `AddedToken` object).
fn special_token(dir: &Path, key: &str) -> Option<String> {
    ["tokenizer_config.json", "special_tokens_map.json"].iter().find_map(|file| {
        let path = dir.join(file);
        let config = read_json(&path).ok()?;
        match config.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    })
}

/// What the transformer is conditioned on, batch-stacked (`[negative, positive]` with guidance).
struct PixArtConditioning {
    /// `[rows, 120, caption_channels]`.
    encoder_hidden_states: ArrayD<f32>,
    /// `[rows, 120]`, 1 for tokens and 0 for padding.
    encoder_attention_mask: ArrayD<i64>,
    /// `resolution` `[rows, 2]` and `aspect_ratio` `[rows, 1]`, for `sample_size` 128 only.
    added: Option<(ArrayD<f32>, ArrayD<f32>)>,
}

impl PixArtConditioning {
    fn feeds(&self) -> Vec<(&'static str, HostTensor)> {
        let mut feeds = vec![
            ("encoder_hidden_states", HostTensor::F32(self.encoder_hidden_states.clone())),
            ("encoder_attention_mask", HostTensor::I64(self.encoder_attention_mask.clone())),
        ];
        if let Some((resolution, aspect_ratio)) = &self.added {
            feeds.push(("resolution", HostTensor::F32(resolution.clone())));
            feeds.push(("aspect_ratio", HostTensor::F32(aspect_ratio.clone())));
        }
        feeds
    }
}

/// A loaded PixArt pipeline. The VAE decoder's session lives as long as the pipeline; T5's and the
/// transformer's are created when needed, one at a time (see the module docs).
pub struct PixArtPipeline {
    dir: PipelineDir,
    runtime: Runtime,
    /// Session options from a conversion's manifest.
    defaults: EpOptions,
    tokenizer: T5Tokenizer,
    text_encoder: Option<Model>,
    transformer: Option<Model>,
    vae: Vae,
    /// The transformer's `sample_size` (latent pixels): 128 for PixArt-α 1024, 64 for 512.
    sample_size: usize,
    in_channels: usize,
    out_channels: usize,
    recorder: Option<UnetRecorder>,
    warnings: Vec<String>,
}

impl PixArtPipeline {
    pub fn load(runtime: &Runtime, dir: PipelineDir) -> Result<Self> {
        let (defaults, warnings) = dir.session_setup(runtime)?;
        let tokenizer = T5Tokenizer::from_dir(&dir.root.join("tokenizer"), MAX_SEQUENCE_LENGTH)?;
        let vae = Vae::load(runtime, &dir, &defaults)?;
        let config_path = dir.root.join("transformer").join("config.json");
        let config: DenoiserConfig = dir.config("transformer")?;
        let missing =
            |key: &str| Error::bad_file(&config_path, format!("`{key}` is missing or not a positive integer"));
        let sample_size = config.sample_size.ok_or_else(|| missing("sample_size"))?;
        let in_channels = config.in_channels.ok_or_else(|| missing("in_channels"))?;
        // diffusers' PixArtTransformer2DModel: out_channels defaults to in_channels (2x with learned sigma).
        let out_channels = config.out_channels.unwrap_or(in_channels);
        Ok(PixArtPipeline {
            dir,
            runtime: runtime.clone(),
            defaults,
            tokenizer,
            text_encoder: None,
            transformer: None,
            vae,
            sample_size,
            in_channels,
            out_channels,
            recorder: None,
            warnings,
        })
    }

    pub fn dir(&self) -> &PipelineDir {
        &self.dir
    }

    pub fn vae_scale_factor(&self) -> usize {
        self.vae.scale_factor
    }

    pub fn set_recorder(&mut self, recorder: Option<UnetRecorder>) {
        self.recorder = recorder;
    }

    /// Shape of the initial latents for `batch` images generated at `height` x `width` (after binning).
    pub fn latents_shape(&self, batch: usize, height: usize, width: usize) -> [usize; 4] {
        [batch, self.in_channels, height / self.vae.scale_factor, width / self.vae.scale_factor]
    }

    /// The image size asked for (default `sample_size` x the VAE's scale factor), checked. As in diffusers,
    /// with binning any size will do (the bin is generated, then resized to it); without, it must be a
    /// multiple of the VAE's scale factor times the transformer's patch size.
    pub fn resolve_size(&self, opts: &GenerateOptions) -> Result<(usize, usize)> {
        self.sizes(opts).map(|(requested, _)| requested)
    }

    /// The size the transformer generates at: the requested one, or its bin.
    pub fn generation_size(&self, opts: &GenerateOptions) -> Result<(usize, usize)> {
        self.sizes(opts).map(|(_, generated)| generated)
    }

    /// (requested, generated) sizes, each (height, width).
    fn sizes(&self, opts: &GenerateOptions) -> Result<((usize, usize), (usize, usize))> {
        ImageTask::read(opts, self.dir.kind)?;
        let f = self.vae.scale_factor;
        let default = self.sample_size * f;
        let (width, height) = (opts.width.unwrap_or(default), opts.height.unwrap_or(default));
        if opts.no_resolution_binning {
            self.dir.size_step(false)?.check([("--width", Some(width)), ("--height", Some(height))])?;
            return Ok(((height, width), (height, width)));
        }
        for (name, v) in [("width", width), ("height", height)] {
            if v == 0 {
                return Err(Error::bad_input(format!("--{name} must be positive")));
            }
        }
        let (bh, bw) = binning::classify_height_width_bin(height, width, binning::table_for(self.sample_size)?);
        Ok(((height, width), (bh, bw)))
    }

    pub fn generate(&mut self, opts: &GenerateOptions, on_step: &mut dyn FnMut(usize, usize)) -> Result<Generated> {
        let ((orig_height, orig_width), (height, width)) = self.sizes(opts)?;
        // PixArtAlphaPipeline has neither: T5 is not CLIP, and its call takes no guidance_rescale.
        if opts.clip_skip.is_some() || opts.guidance_rescale.is_some() {
            let flag = if opts.clip_skip.is_some() { "--clip-skip" } else { "--guidance-rescale" };
            return Err(Error::bad_input(format!(
                "{flag} is for SD and SDXL pipelines; PixArt-α's has no such option"
            )));
        }
        let mut run = Run::new(&self.dir, opts, false)?;
        if run.steps == 1
            && !matches!(
                run.scheduler_kind,
                SchedulerKind::Euler | SchedulerKind::Ddim | SchedulerKind::EulerAncestral | SchedulerKind::Lcm
            )
        {
            return Err(Error::bad_input(format!(
                "--steps 1: PixArt's pipeline then takes the scheduler's pred_original_sample, which {} does not \
                 give (diffusers fails there too); use --scheduler euler, ddim, euler-a or lcm, or more steps",
                run.scheduler_name
            )));
        }
        let guidance = run.guidance();
        let shape = self.latents_shape(run.batch, height, width);
        // One generator for the initial noise (unless given) and then the scheduler's, as diffusers.
        let mut generator = TorchGenerator::manual_seed(opts.seed);
        let initial = match &opts.latents {
            Some(path) => latents::read(path, &shape)?,
            None => latents::randn(&mut generator, &shape),
        };

        // T5 first, alone: the transformer's session is dropped before T5's is created, and T5's after encoding.
        self.transformer = None;
        let encoder =
            self.runtime.load_with(&self.dir.component_model("text_encoder"), &self.defaults, SessionRole::Other)?;
        self.check_static_shapes(&encoder, None, &run, (height, width))?;
        self.text_encoder = Some(encoder);
        let t0 = Instant::now();
        let cond = self.encode_prompt(opts, guidance, run.batch, (height, width));
        run.timings.text_encoding = t0.elapsed().as_secs_f64();
        self.text_encoder = None;
        let cond = cond?;

        let transformer = self.runtime.load_with(
            &self.dir.component_model("transformer"),
            &self.defaults,
            // Not bound to device memory (no IoBinding), so no CUDA graph.
            SessionRole::Other,
        )?;
        self.check_static_shapes(&transformer, Some(&cond), &run, (height, width))?;
        let transformer = self.transformer.insert(transformer);

        let latents = initial * run.scheduler.init_noise_sigma() as f32;
        let mut denoiser = PixArtDenoiser {
            transformer,
            cond: &cond,
            recorder: self.recorder.as_mut(),
            // Learned sigma: the variance channels are dropped.
            keep_channels: (self.out_channels / 2 == self.in_channels).then_some(self.in_channels),
        };
        let options = LoopOptions { one_step_takes_pred_original: true, ..Default::default() };
        let latents = run.denoise(&mut denoiser, latents, options, &mut generator, on_step)?;

        let t_vae = Instant::now();
        let mut sample = self.vae.decode(&latents)?;
        if !opts.no_resolution_binning {
            sample = binning::resize_and_crop(&sample, orig_height, orig_width)?;
        }
        let images = image::to_rgb(&sample)?;
        run.timings.vae_decode = t_vae.elapsed().as_secs_f64();
        let warnings = std::mem::take(&mut self.warnings);
        let mut out = run.finish(images, latents, warnings, (orig_height, orig_width), None);
        out.seed_used = generator != TorchGenerator::manual_seed(opts.seed);
        Ok(out)
    }

    /// `encode_prompt`: T5 on the prompt and on the negative prompt (empty by default), each with its
    /// attention mask; repeated per image and stacked `[negative, positive]` with guidance.
    fn encode_prompt(
        &mut self,
        opts: &GenerateOptions,
        guidance: bool,
        batch: usize,
        (height, width): (usize, usize),
    ) -> Result<PixArtConditioning> {
        let (pos, pos_mask) = self.encode_one(&opts.prompt, "the prompt")?;
        let mut halves = vec![(pos, pos_mask)];
        if guidance {
            let negative = opts.negative_prompt.as_deref().unwrap_or("");
            halves.insert(0, self.encode_one(negative, "the negative prompt")?);
        }
        let repeat_f32 = |parts: Vec<ArrayD<f32>>| -> Result<ArrayD<f32>> {
            let views: Vec<_> = parts.iter().flat_map(|p| std::iter::repeat_n(p.view(), batch)).collect();
            concatenate(Axis(0), &views).map_err(|e| Error::bad_input(format!("cannot batch embeddings: {e}")))
        };
        let (hidden, masks): (Vec<_>, Vec<_>) = halves.into_iter().unzip();
        let mask_views: Vec<_> = masks.iter().flat_map(|m| std::iter::repeat_n(m.view(), batch)).collect();
        let encoder_attention_mask = concatenate(Axis(0), &mask_views)
            .map_err(|e| Error::internal(format!("cannot batch attention masks: {e}")))?;
        let rows = encoder_attention_mask.shape()[0];
        let added = (self.sample_size == 128).then(|| {
            let resolution = ArrayD::from_shape_fn(IxDyn(&[rows, 2]), |i| [height, width][i[1]] as f32);
            let aspect_ratio = ArrayD::from_elem(IxDyn(&[rows, 1]), (height as f64 / width as f64) as f32);
            (resolution, aspect_ratio)
        });
        Ok(PixArtConditioning { encoder_hidden_states: repeat_f32(hidden)?, encoder_attention_mask, added })
    }

    /// T5's `last_hidden_state` `[1, 120, dim]` and the attention mask `[1, 120]` of one prompt.
    fn encode_one(&mut self, text: &str, what: &str) -> Result<(ArrayD<f32>, ArrayD<i64>)> {
        let encoded = self.tokenizer.encode(&preprocess(text))?;
        if encoded.truncated {
            let n = self.tokenizer.max_length();
            self.warnings.push(format!("{what} is longer than {n} tokens; T5 only sees the first {}", n - 1));
        }
        let n = encoded.ids.len();
        let ids = ArrayD::from_shape_vec(IxDyn(&[1, n]), encoded.ids).expect("ids are 1 x n");
        let mask = ArrayD::from_shape_vec(IxDyn(&[1, n]), encoded.attention_mask).expect("mask is 1 x n");
        let model = self.text_encoder.as_mut().ok_or_else(|| Error::internal("T5 encodes before it is loaded"))?;
        let mut feeds = vec![("input_ids", HostTensor::I64(ids))];
        if model.input("attention_mask").is_some() {
            feeds.push(("attention_mask", HostTensor::I64(mask.clone())));
        }
        let mut out = model.run(feeds)?;
        let hidden = take_output(&mut out, model, "last_hidden_state")?;
        Ok((hidden, mask))
    }

    /// Refuses, before any work, a size or batch that an export with static input shapes cannot take.
    fn check_static_shapes(
        &self,
        model: &Model,
        cond: Option<&PixArtConditioning>,
        run: &Run,
        (height, width): (usize, usize),
    ) -> Result<()> {
        let rows = run.rows();
        let [batch, channels, h, w] = self.latents_shape(run.batch, height, width);
        let tokens = self.tokenizer.max_length();
        let dim = cond.map(|c| c.encoder_hidden_states.shape()[2]);
        let checks: Vec<ShapeCheck> = vec![
            (model, "input_ids", vec![Some(1), Some(tokens)]),
            (model, "hidden_states", vec![Some(rows), Some(channels), Some(h), Some(w)]),
            (model, "encoder_hidden_states", vec![Some(rows), Some(tokens), dim]),
            (model, "encoder_attention_mask", vec![Some(rows), Some(tokens)]),
            (self.vae.decoder(), "latent_sample", vec![Some(batch), Some(channels), Some(h), Some(w)]),
        ];
        let what = format!("a {width}x{height} generation (after resolution binning)");
        check_static_shapes(&checks, &what, run.batch, run.guidance())
    }
}

/// PixArt's transformer with one image's conditioning: what the denoising loop calls each step.
struct PixArtDenoiser<'a> {
    transformer: &'a mut Model,
    cond: &'a PixArtConditioning,
    recorder: Option<&'a mut UnetRecorder>,
    /// With learned sigma, the first channels (the noise prediction) of the output.
    keep_channels: Option<usize>,
}

impl Denoiser for PixArtDenoiser<'_> {
    fn predict(&mut self, model_input: ArrayD<f32>, t: f64) -> Result<ArrayD<f32>> {
        let rows = model_input.shape()[0];
        let mut feeds = vec![
            ("hidden_states", HostTensor::F32(model_input)),
            ("timestep", HostTensor::F32(ArrayD::from_elem(IxDyn(&[rows]), t as f32))),
        ];
        feeds.extend(self.cond.feeds());
        if let Some(record) = self.recorder.as_mut() {
            record(&feeds);
        }
        let mut out = self.transformer.run(feeds)?;
        let out = take_output(&mut out, self.transformer, "out_sample")?;
        // diffusers drops the variance channels after guidance; guidance is per element, so before is the same.
        Ok(match self.keep_channels {
            Some(n) if out.ndim() == 4 && out.shape()[1] >= n => out.slice_axis(Axis(1), (0..n).into()).to_owned(),
            _ => out,
        })
    }

    fn take_transfer_seconds(&mut self) -> f64 {
        self.transformer.take_transfer_seconds()
    }

    fn path(&self) -> &Path {
        self.transformer.path()
    }
}
