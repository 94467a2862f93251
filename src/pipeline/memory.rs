//! What a size needs in memory, estimated from the pipeline's configs before anything loads, against the
//! memory there is: a size that cannot fit is refused up front, in one sentence with a size that does.
//!
//! The estimate: the components' weights (their files' sizes), plus the larger of the denoiser's and the VAE
//! decoder's largest activation, plus the runtime's own share. The denoiser's largest activation is its widest
//! attention's score matrix (rows x heads x tokens^2 in f32, with the softmax's input and output both alive);
//! the VAE decoder's is its mid-block attention over every latent pixel or its full-resolution activations.
//! On the high side: fused attention and half precision need less.

use std::path::Path;

use serde_json::Value;

use super::model_dir::{PipelineDir, PipelineKind};
use crate::settings::ExecutionProvider;
use crate::{Error, Result};

/// ONNX Runtime's own share (library, thread pools, arenas' first blocks), measured on the tiny pipelines.
const RUNTIME_BYTES: f64 = 256.0 * (1u64 << 20) as f64;

/// What a run of one size asks of memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub height: usize,
    pub width: usize,
    /// Rows through the denoiser at once: images per prompt, doubled by classifier-free guidance.
    pub rows: usize,
    /// Images decoded at once.
    pub images: usize,
    /// img2img and inpainting load the VAE encoder too.
    pub vae_encoder: bool,
}

/// The estimate for one run, in bytes, with what its largest activation is.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    pub weights: f64,
    pub activations: f64,
    /// The largest activation, in words ("the UNet's attention over 4096 positions").
    pub largest: String,
}

impl Need {
    pub fn total(&self) -> f64 {
        self.weights + self.activations + RUNTIME_BYTES
    }
}

/// One config field that is a number or a list with one number per block (`attention_head_dim`).
fn per_block(value: Option<&Value>, block: usize) -> Option<f64> {
    match value? {
        Value::Array(items) => items.get(block).or(items.last())?.as_f64(),
        v => v.as_f64(),
    }
}

/// Bytes of an attention's scores: rows x heads x tokens^2 in f32, the softmax's input and output.
fn scores(rows: f64, heads: f64, tokens: f64) -> f64 {
    rows * heads * tokens * tokens * 4.0 * 2.0
}

/// The files' sizes under `dir`, recursively.
fn folder_bytes(dir: &Path) -> f64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0.0 };
    entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let path = e.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => folder_bytes(&path),
                Ok(m) => m.len() as f64,
                Err(_) => 0.0,
            }
        })
        .sum()
}

/// What the estimate reads of a pipeline folder once (configs, file sizes); [`Estimator::need`] is then
/// arithmetic only, for the many sizes [`largest_fitting`] tries.
#[derive(Debug, Clone)]
pub struct Estimator {
    /// The VAE's scale factor: image pixels per latent pixel on a side.
    vae_factor: f64,
    /// `UNet` or `transformer`, for the sentence.
    denoiser: &'static str,
    /// Per attention of the denoiser: latent pixels per token on a side (2^level, or PixArt's patch) and heads.
    attentions: Vec<(f64, f64)>,
    /// The VAE decoder's mid-block attention (diffusers' default: present).
    vae_attention: bool,
    /// The VAE decoder's channels at full size (`block_out_channels[0]`).
    vae_channels: f64,
    /// Bytes of the components every run loads, and of the VAE encoder img2img adds.
    weights: f64,
    vae_encoder_weights: f64,
}

impl Estimator {
    /// Reads the denoiser's and the VAE decoder's configs and the components' file sizes.
    pub fn of(dir: &PipelineDir) -> Result<Self> {
        let vae_factor = dir.vae_scale_factor()? as f64;
        let denoiser = dir.denoiser();
        let config = dir.component_config(denoiser)?;
        let field = |name: &str| config.get(name).filter(|v| !v.is_null());
        let attentions = if dir.kind == PipelineKind::PixArtAlpha {
            let patch = per_block(field("patch_size"), 0).unwrap_or(2.0);
            vec![(patch, per_block(field("num_attention_heads"), 0).unwrap_or(16.0))]
        } else {
            let blocks: Vec<String> = field("down_block_types")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_else(|| vec!["CrossAttnDownBlock2D".into()]);
            let heads_field = field("num_attention_heads").or(field("attention_head_dim"));
            let mid_attention = field("mid_block_type").and_then(Value::as_str).is_none_or(|t| t.contains("Attn"));
            let deepest = blocks.len().saturating_sub(1);
            (blocks.iter().enumerate())
                .filter(|&(i, block)| block.contains("Attn") || i == deepest && mid_attention)
                .map(|(i, _)| ((1u64 << i.min(62)) as f64, per_block(heads_field, i).unwrap_or(8.0)))
                .collect()
        };
        let vae = dir.component_config("vae_decoder")?;
        let mut components = vec![denoiser, "vae_decoder", "text_encoder"];
        if dir.kind == PipelineKind::StableDiffusionXl {
            components.push("text_encoder_2");
        }
        Ok(Estimator {
            vae_factor,
            denoiser: if denoiser == "unet" { "UNet" } else { "transformer" },
            attentions,
            vae_attention: vae.get("mid_block_add_attention").and_then(Value::as_bool) != Some(false),
            vae_channels: per_block(vae.get("block_out_channels"), 0).unwrap_or(128.0),
            weights: components.iter().map(|c| folder_bytes(&dir.root.join(c))).sum(),
            vae_encoder_weights: folder_bytes(&dir.root.join("vae_encoder")),
        })
    }

    /// The estimate of what `run` needs.
    pub fn need(&self, run: Run) -> Need {
        let (lh, lw) = (run.height as f64 / self.vae_factor, run.width as f64 / self.vae_factor);
        let rows = run.rows.max(1) as f64;
        // The denoiser's widest attention (the first of equals).
        let (mut attention, mut tokens_at) = (0.0f64, 0.0f64);
        for &(per_token, heads) in &self.attentions {
            let tokens = (lh / per_token).ceil() * (lw / per_token).ceil();
            let bytes = scores(rows, heads, tokens);
            if bytes > attention {
                (attention, tokens_at) = (bytes, tokens);
            }
        }
        // The VAE decoder: its mid-block attention (one head) or its full-resolution activations.
        let images = run.images.max(1) as f64;
        let latent_pixels = lh.ceil() * lw.ceil();
        let vae_attention = if self.vae_attention { scores(images, 1.0, latent_pixels) } else { 0.0 };
        let vae_pixels = images * self.vae_channels * run.height as f64 * run.width as f64 * 4.0 * 3.0;
        let weights = self.weights + if run.vae_encoder { self.vae_encoder_weights } else { 0.0 };
        let candidates = [
            (attention, format!("the {}'s attention over {tokens_at:.0} positions", self.denoiser)),
            (vae_attention, format!("the VAE decoder's attention over {latent_pixels:.0} positions")),
            (vae_pixels, format!("the VAE decoder's {:.0}-channel activations at full size", self.vae_channels)),
        ];
        let (activations, largest) =
            candidates.into_iter().max_by(|a, b| a.0.total_cmp(&b.0)).expect("three candidates");
        Need { weights, activations, largest }
    }
}

/// The memory runs on `ep` can take (bytes) and what bounds it: host memory on the CPU and OpenVINO, the
/// GPU's memory (from nvidia-smi) on CUDA and TensorRT; `None` where it cannot be read.
pub fn available(ep: ExecutionProvider) -> Option<(f64, &'static str)> {
    match ep {
        ExecutionProvider::Cpu | ExecutionProvider::OpenVino => {
            crate::host::memory_available().map(|(bytes, what)| (bytes as f64, what))
        }
        ExecutionProvider::Cuda | ExecutionProvider::TensorRt => {
            crate::host::gpu_memory_total().map(|bytes| (bytes as f64, "the GPU's memory"))
        }
    }
}

fn gib(bytes: f64) -> String {
    let g = bytes / (1u64 << 30) as f64;
    match g {
        g if g >= 10.0 => format!("{g:.0} GiB"),
        g if g >= 1.0 => format!("{g:.1} GiB"),
        _ => format!("{:.0} MiB", bytes / (1u64 << 20) as f64),
    }
}

/// The largest size of `run`'s shape, in multiples of `step`, whose estimate is at most `budget` bytes; `None`
/// when not even `step` x `step` is.
pub fn largest_fitting(estimator: &Estimator, run: Run, step: usize, budget: f64) -> Option<(usize, usize)> {
    let step = step.max(1);
    let (w, h) = (run.width.max(step), run.height.max(step));
    // Sizes by the multiple of `step` of the longer side, the other side in proportion.
    let (long, short) = if w >= h { (w, h) } else { (h, w) };
    let size = |m: usize| -> (usize, usize) {
        let l = m * step;
        let s = ((short as f64 * l as f64 / long as f64) / step as f64).floor().max(1.0) as usize * step;
        if w >= h { (s, l) } else { (l, s) }
    };
    let fits = |m: usize| {
        let (height, width) = size(m);
        estimator.need(Run { height, width, ..run }).total() <= budget
    };
    let (mut lo, mut hi) = (1usize, long / step);
    if !fits(lo) {
        return None;
    }
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    Some(size(lo))
}

/// Refuses, before anything loads, a run whose estimate exceeds the memory `ep` has, in one sentence with the
/// largest size of the same shape that fits (a multiple of `step`). Passes where the memory cannot be read.
pub fn check(dir: &PipelineDir, ep: ExecutionProvider, run: Run, step: usize) -> Result<()> {
    let Some((budget, bound)) = available(ep) else { return Ok(()) };
    let estimator = Estimator::of(dir)?;
    let need = estimator.need(run);
    if need.total() <= budget {
        return Ok(());
    }
    let images = if run.images > 1 { format!(" with {} images per prompt", run.images) } else { String::new() };
    let head = format!(
        "{}x{}{images} needs about {} of memory ({} for the weights, {} for {}), more than the {} there is \
         ({bound})",
        run.width,
        run.height,
        gib(need.total()),
        gib(need.weights),
        gib(need.activations),
        need.largest,
        gib(budget)
    );
    let advice = match largest_fitting(&estimator, run, step, budget) {
        Some((height, width)) => {
            format!("; the largest size of this shape that fits is --width {width} --height {height}")
        }
        None => "; no size of this pipeline fits".into(),
    };
    Err(Error::bad_input(head + &advice))
}

/// [`check`] for one call's options, before anything loads: the size they ask for (the image's with
/// `--image`, else the model's own), their images per prompt, doubled under guidance.
pub fn check_options(dir: &PipelineDir, ep: ExecutionProvider, opts: &super::GenerateOptions) -> Result<()> {
    let f = dir.vae_scale_factor()?;
    let (height, width) = match super::img2img::ImageTask::read(opts, dir.kind)? {
        Some(task) => task.size(opts, f)?,
        None => {
            let config: super::model_dir::DenoiserConfig = dir.config(dir.denoiser())?;
            let own = config.sample_size.map_or(dir.kind.defaults().size, |s| s * f);
            (opts.height.unwrap_or(own), opts.width.unwrap_or(own))
        }
    };
    let images = opts.batch_size.max(1);
    let guidance = opts.guidance.unwrap_or(dir.kind.defaults().guidance) > 1.0;
    let rows = if guidance { 2 * images } else { images };
    let step = dir.size_step(!opts.no_resolution_binning)?.multiple();
    check(dir, ep, Run { height, width, rows, images, vae_encoder: opts.image.is_some() }, step)
}
