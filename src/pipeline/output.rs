//! What `generate` leaves behind: the images (a PNG keeps how it was made in text chunks, a JPEG in EXIF), the
//! final latents, and the run's summary as JSON.

use std::path::{Path, PathBuf};

use super::generate::{GenerateOptions, Generated};
use super::{image, latents};
use crate::Result;

/// What a run was, besides its options: for the images' text chunks or EXIF.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The pipeline folder.
    pub model: String,
    /// The conversion's profile (`export` for an unconverted pipeline).
    pub profile: String,
    /// The execution provider.
    pub ep: String,
}

/// `out.png` -> `out-3.png`: the name of the `i`-th of several outputs.
pub fn indexed(path: &Path, i: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!("{stem}-{i}{ext}"))
}

/// The settings image `index` keeps (PNG text chunks, JPEG EXIF): prompt, negative prompt, seed, index, steps,
/// scheduler, guidance, size, model, profile, EP and dfast's version and commit; with `--image`, the image, the
/// mask and the strength too.
pub fn provenance(run: &Generated, opts: &GenerateOptions, info: &RunInfo, index: usize) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = [
        ("prompt", opts.prompt.clone()),
        // What played no part is not recorded: the negative prompt without guidance, the seed with given latents
        // that nothing else drew noise for.
        (
            "negative_prompt",
            if run.guidance > 1.0 { opts.negative_prompt.clone().unwrap_or_default() } else { String::new() },
        ),
        ("seed", if run.seed_used { opts.seed.to_string() } else { String::new() }),
        ("image_index", index.to_string()),
        ("steps", run.steps.to_string()),
        ("scheduler", run.scheduler.clone()),
        ("guidance", run.guidance.to_string()),
        ("size", format!("{}x{}", run.width, run.height)),
        ("model", info.model.clone()),
        ("profile", info.profile.clone()),
        ("ep", info.ep.clone()),
        ("software", format!("dfast {} (commit {})", env!("CARGO_PKG_VERSION"), env!("DFAST_COMMIT"))),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into();
    pairs.retain(|(k, v)| k != "seed" || !v.is_empty());
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let image =
        [("image", path(&opts.image)), ("mask", path(&opts.mask)), ("strength", run.strength.map(|s| s.to_string()))];
    // Before `software`, which stays last.
    let at = pairs.len() - 1;
    pairs.splice(at..at, image.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v))));
    pairs
}

/// Fails before the work when a JPEG at `out` could not keep how it was made: its EXIF holds at most 64 KB,
/// which a long prompt can pass. What the run decides (steps, scheduler, size) is stood in for by values at
/// least as long as the real ones. A PNG keeps any length.
pub fn check_provenance(opts: &GenerateOptions, info: &RunInfo, out: &Path) -> Result<()> {
    if image::format_for(out)? != ::image::ImageFormat::Jpeg {
        return Ok(());
    }
    let stand_in = Generated {
        images: Vec::new(),
        latents: ndarray::ArrayD::zeros(ndarray::IxDyn(&[0])),
        timings: Default::default(),
        warnings: Vec::new(),
        seed_used: true,
        width: usize::MAX,
        height: usize::MAX,
        steps: usize::MAX,
        guidance: -1.2345679e-9,
        scheduler: "X".repeat(64),
        strength: Some(-1.2345678901234567e-9),
    };
    let text = provenance(&stand_in, opts, info, usize::MAX);
    image::exif_block(&text).map(drop).map_err(|e| e.in_file(out))
}

/// Writes the images (one: `out`; several: `out-0`, `out-1`, ...) and, when asked, the final latents;
/// returns the image files written.
pub fn save(
    run: &Generated,
    opts: &GenerateOptions,
    info: &RunInfo,
    out: &Path,
    latents_to: Option<&Path>,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (i, img) in run.images.iter().enumerate() {
        let path = if run.images.len() == 1 { out.to_path_buf() } else { indexed(out, i) };
        image::save_with_text(img, &path, &provenance(run, opts, info, i))?;
        written.push(path);
    }
    if let Some(path) = latents_to {
        latents::write(path, &run.latents)?;
    }
    Ok(written)
}

/// The run as one JSON object: files written, size, steps, UNet calls, seed, timings, warnings.
pub fn summary_json(
    run: &Generated,
    opts: &GenerateOptions,
    images: &[PathBuf],
    latents_to: Option<&Path>,
) -> serde_json::Value {
    let t = &run.timings;
    serde_json::json!({
        "images": images,
        "latents": latents_to,
        "prompt": opts.prompt,
        "width": run.width,
        "height": run.height,
        "steps": run.steps,
        "unet_calls": t.unet_steps.len(),
        "seed": run.seed_used.then_some(opts.seed),
        "image": opts.image,
        "mask": opts.mask,
        "strength": run.strength,
        "timings_s": {
            "total": t.total,
            "text_encoding": t.text_encoding,
            "unet_steps": t.unet_steps,
            "vae_encode": t.vae_encode,
            "vae_decode": t.vae_decode,
        },
        "warnings": run.warnings,
    })
}

/// The one-line summary: files, size, steps (and UNet calls), seed, time per step, total.
pub fn summary_line(run: &Generated, opts: &GenerateOptions, images: &[PathBuf]) -> String {
    let t = &run.timings;
    let calls = t.unet_steps.len();
    let per_step = if calls == 0 { 0.0 } else { t.unet_steps.iter().sum::<f64>() / calls as f64 };
    let steps =
        if calls == run.steps { format!("{calls} steps") } else { format!("{} steps ({calls} UNet calls)", run.steps) };
    let files: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let seed = match (&opts.latents, run.seed_used) {
        (Some(path), false) => format!("latents from {}", path.display()),
        _ => format!("seed {}", opts.seed),
    };
    format!(
        "{}: {}x{}, {steps}, {seed}, {:.1} ms/step, total {:.2} s (text {:.0} ms, vae {:.0} ms)",
        files.join(", "),
        run.width,
        run.height,
        per_step * 1e3,
        t.total,
        t.text_encoding * 1e3,
        t.vae_decode * 1e3
    )
}
