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

/// The estimate of what `run` needs with the pipeline in `dir`.
pub fn need(dir: &PipelineDir, run: Run) -> Result<Need> {
    let f = dir.vae_scale_factor()? as f64;
    let (lh, lw) = (run.height as f64 / f, run.width as f64 / f);
    let rows = run.rows.max(1) as f64;
    let denoiser = dir.denoiser();
    let config = dir.component_config(denoiser)?;
    let field = |name: &str| config.get(name).filter(|v| !v.is_null());

    // The denoiser's widest attention.
    let (mut attention, mut tokens_at) = (0.0f64, 0.0f64);
    if dir.kind == PipelineKind::PixArtAlpha {
        let patch = per_block(field("patch_size"), 0).unwrap_or(2.0);
        let heads = per_block(field("num_attention_heads"), 0).unwrap_or(16.0);
        let tokens = (lh / patch).ceil() * (lw / patch).ceil();
        (attention, tokens_at) = (scores(rows, heads, tokens), tokens);
    } else {
        let blocks: Vec<String> = field("down_block_types")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_else(|| vec!["CrossAttnDownBlock2D".into()]);
        let heads_field = field("num_attention_heads").or(field("attention_head_dim"));
        let mid_attention = field("mid_block_type").and_then(Value::as_str).is_none_or(|t| t.contains("Attn"));
        for (i, block) in blocks.iter().enumerate() {
            let deepest = i + 1 == blocks.len();
            if !(block.contains("Attn") || deepest && mid_attention) {
                continue;
            }
            let scale = (1u64 << i.min(62)) as f64;
            let tokens = (lh / scale).ceil() * (lw / scale).ceil();
            let heads = per_block(heads_field, i).unwrap_or(8.0);
            let bytes = scores(rows, heads, tokens);
            if bytes > attention {
                (attention, tokens_at) = (bytes, tokens);
            }
        }
    }

    // The VAE decoder: its mid-block attention (one head) or its full-resolution activations.
    let vae = dir.component_config("vae_decoder")?;
    let images = run.images.max(1) as f64;
    let vae_attention = if vae.get("mid_block_add_attention").and_then(Value::as_bool) == Some(false) {
        0.0
    } else {
        scores(images, 1.0, lh.ceil() * lw.ceil())
    };
    let channels = per_block(vae.get("block_out_channels"), 0).unwrap_or(128.0);
    let vae_pixels = images * channels * run.height as f64 * run.width as f64 * 4.0 * 3.0;

    let mut components = vec![denoiser, "vae_decoder", "text_encoder"];
    if dir.kind == PipelineKind::StableDiffusionXl {
        components.push("text_encoder_2");
    }
    if run.vae_encoder {
        components.push("vae_encoder");
    }
    let weights = components.iter().map(|c| folder_bytes(&dir.root.join(c))).sum();

    let name = if denoiser == "unet" { "UNet" } else { "transformer" };
    let candidates = [
        (attention, format!("the {name}'s attention over {tokens_at:.0} positions")),
        (vae_attention, format!("the VAE decoder's attention over {:.0} positions", lh.ceil() * lw.ceil())),
        (vae_pixels, format!("the VAE decoder's {:.0}-channel activations at full size", channels)),
    ];
    let (activations, largest) = candidates.into_iter().max_by(|a, b| a.0.total_cmp(&b.0)).expect("three candidates");
    Ok(Need { weights, activations, largest })
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
pub fn largest_fitting(dir: &PipelineDir, run: Run, step: usize, budget: f64) -> Result<Option<(usize, usize)>> {
    let step = step.max(1);
    let (w, h) = (run.width.max(step), run.height.max(step));
    // Sizes by the multiple of `step` of the longer side, the other side in proportion.
    let (long, short) = if w >= h { (w, h) } else { (h, w) };
    let size = |m: usize| -> (usize, usize) {
        let l = m * step;
        let s = ((short as f64 * l as f64 / long as f64) / step as f64).floor().max(1.0) as usize * step;
        if w >= h { (s, l) } else { (l, s) }
    };
    let fits = |m: usize| -> Result<bool> {
        let (height, width) = size(m);
        Ok(need(dir, Run { height, width, ..run })?.total() <= budget)
    };
    let (mut lo, mut hi) = (1usize, long / step);
    if !fits(lo)? {
        return Ok(None);
    }
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid)? { lo = mid } else { hi = mid - 1 }
    }
    Ok(Some(size(lo)))
}

/// Refuses, before anything loads, a run whose estimate exceeds the memory `ep` has, in one sentence with the
/// largest size of the same shape that fits (a multiple of `step`). Passes where the memory cannot be read.
pub fn check(dir: &PipelineDir, ep: ExecutionProvider, run: Run, step: usize) -> Result<()> {
    let Some((budget, bound)) = available(ep) else { return Ok(()) };
    let need = need(dir, run)?;
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
    let advice = match largest_fitting(dir, run, step, budget)? {
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
