//! Where a pipeline's files are: a folder in the ONNX layout Optimum exports (`PipelineDir::resolve`, in
//! `from_hub.rs`, also finds one by Hugging Face repo id).

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use crate::hub::HubLocation;
use crate::manifest::Manifest;
use crate::runtime::Runtime;
use crate::settings::{EpOptions, ExecutionProvider};
use crate::{Error, Result};

/// The pipeline families dfast runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineKind {
    /// `StableDiffusionPipeline`: one CLIP text encoder (SD 1.x, 2.x).
    StableDiffusion,
    /// `StableDiffusionXLPipeline`: two text encoders and `text_time` added conditioning (SDXL, SSD-1B).
    StableDiffusionXl,
    /// `PixArtAlphaPipeline`: a T5 encoder and a DiT (`transformer/`) in place of the UNet.
    PixArtAlpha,
}

impl PipelineKind {
    /// The family a repo's folders point to, before its model_index.json is read (a listing): `transformer/`
    /// is PixArt's, `text_encoder_2/` SDXL's, anything else Stable Diffusion. An opened folder's family comes
    /// from its `_class_name` (`pipeline_kind`).
    pub fn from_folders(has_dir: impl Fn(&str) -> bool) -> Self {
        if has_dir("transformer") {
            PipelineKind::PixArtAlpha
        } else if has_dir("text_encoder_2") {
            PipelineKind::StableDiffusionXl
        } else {
            PipelineKind::StableDiffusion
        }
    }

    /// The files (`/`-separated, relative to the pipeline folder) a pipeline of this family needs, given which
    /// files there are (a CLIP tokenizer is its tokenizer.json, else vocab.json and merges.txt).
    pub fn required_files(self, has_file: impl Fn(&str) -> bool) -> Vec<String> {
        let files = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        if self == PipelineKind::PixArtAlpha {
            return files(&[
                "scheduler/scheduler_config.json",
                "text_encoder/model.onnx",
                "transformer/model.onnx",
                "transformer/config.json",
                "vae_decoder/model.onnx",
                "vae_decoder/config.json",
                "tokenizer/tokenizer.json",
            ]);
        }
        let mut out = files(&[
            "scheduler/scheduler_config.json",
            "text_encoder/model.onnx",
            "unet/model.onnx",
            "vae_decoder/model.onnx",
            "vae_decoder/config.json",
        ]);
        let mut tokenizers = vec!["tokenizer"];
        if self == PipelineKind::StableDiffusionXl {
            out.push("text_encoder_2/model.onnx".into());
            tokenizers.push("tokenizer_2");
        }
        for tok in tokenizers {
            if !has_file(&format!("{tok}/tokenizer.json")) {
                out.push(format!("{tok}/vocab.json"));
                out.push(format!("{tok}/merges.txt"));
            }
        }
        out
    }
}

/// The `_class_name`s of `model_index.json` that dfast runs, and their family. A family's text-to-image,
/// img2img and inpainting pipelines hold the same components (an inpainting UNet aside), so any of them runs
/// any task; the ONNX names are diffusers' legacy ONNX pipelines and Optimum's.
const CLASSES: [(&str, PipelineKind); 19] = [
    ("StableDiffusionPipeline", PipelineKind::StableDiffusion),
    // An SD pipeline whose UNet takes the guidance scale's embedding (LCM-distilled), with LCMScheduler.
    ("LatentConsistencyModelPipeline", PipelineKind::StableDiffusion),
    ("StableDiffusionImg2ImgPipeline", PipelineKind::StableDiffusion),
    ("StableDiffusionInpaintPipeline", PipelineKind::StableDiffusion),
    ("OnnxStableDiffusionPipeline", PipelineKind::StableDiffusion),
    ("OnnxStableDiffusionImg2ImgPipeline", PipelineKind::StableDiffusion),
    ("OnnxStableDiffusionInpaintPipeline", PipelineKind::StableDiffusion),
    ("ORTStableDiffusionPipeline", PipelineKind::StableDiffusion),
    ("ORTStableDiffusionImg2ImgPipeline", PipelineKind::StableDiffusion),
    ("ORTStableDiffusionInpaintPipeline", PipelineKind::StableDiffusion),
    ("StableDiffusionXLPipeline", PipelineKind::StableDiffusionXl),
    ("StableDiffusionXLImg2ImgPipeline", PipelineKind::StableDiffusionXl),
    ("StableDiffusionXLInpaintPipeline", PipelineKind::StableDiffusionXl),
    ("ORTStableDiffusionXLPipeline", PipelineKind::StableDiffusionXl),
    ("ORTStableDiffusionXLImg2ImgPipeline", PipelineKind::StableDiffusionXl),
    ("ORTStableDiffusionXLInpaintPipeline", PipelineKind::StableDiffusionXl),
    ("PixArtAlphaPipeline", PipelineKind::PixArtAlpha),
    ("ORTPixArtAlphaPipeline", PipelineKind::PixArtAlpha),
    // The name of diffusers' ONNX pipeline before 0.7.
    ("StableDiffusionOnnxPipeline", PipelineKind::StableDiffusion),
];

/// The family of a `model_index.json`'s `_class_name`, or one sentence naming the class when dfast does not
/// run it.
fn pipeline_kind(index_path: &Path, model_index: &Value) -> Result<PipelineKind> {
    let known = "dfast runs StableDiffusion(Img2Img|Inpaint)Pipeline, StableDiffusionXL(Img2Img|Inpaint)Pipeline \
                 and PixArtAlphaPipeline (and their ONNX and ORT variants)";
    let Some(class) = model_index.get("_class_name").and_then(Value::as_str) else {
        return Err(Error::bad_file(index_path, format!("no `_class_name` string saying the pipeline class; {known}")));
    };
    let Some(&(_, kind)) = CLASSES.iter().find(|(name, _)| *name == class) else {
        return Err(Error::bad_file(index_path, format!("pipeline class `{class}` is not one dfast runs; {known}")));
    };
    if model_index.get("requires_aesthetics_score").and_then(Value::as_bool) == Some(true) {
        return Err(Error::bad_file(
            index_path,
            format!(
                "`{class}` with requires_aesthetics_score (the SDXL refiner's aesthetic-score conditioning) is not \
                 one dfast runs"
            ),
        ));
    }
    Ok(kind)
}

/// The embedded tiny pipeline used when no `--model` is given.
pub fn embedded_tiny_sd() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join("tiny-sd")
}

/// A checked pipeline folder.
#[derive(Debug, Clone)]
pub struct PipelineDir {
    pub root: PathBuf,
    pub kind: PipelineKind,
    pub model_index: Value,
}

impl PipelineDir {
    /// Opens and checks a pipeline folder: model_index.json and every component dfast needs.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::bad_file(
                root,
                "not a folder; expected a diffusers pipeline folder with model_index.json",
            ));
        }
        let index_path = root.join("model_index.json");
        if !index_path.is_file() {
            return Err(Error::bad_file(
                root,
                "not a diffusers pipeline folder: model_index.json is missing (expected the ONNX layout of an \
                 Optimum export: model_index.json, tokenizer/, text_encoder/, unet/, vae_decoder/, scheduler/)",
            ));
        }
        let model_index = read_json(&index_path)?;
        let kind = pipeline_kind(&index_path, &model_index)?;
        let dir = PipelineDir { root: root.to_path_buf(), kind, model_index };
        for path in dir.required_files() {
            if !path.is_file() {
                return Err(Error::bad_file(&path, "missing pipeline file"));
            }
        }
        Ok(dir)
    }

    fn required_files(&self) -> Vec<PathBuf> {
        self.kind.required_files(|f| self.root.join(f).is_file()).iter().map(|f| self.root.join(f)).collect()
    }

    /// The component that denoises: `unet`, or `transformer` (PixArt's DiT).
    pub fn denoiser(&self) -> &'static str {
        match self.kind {
            PipelineKind::PixArtAlpha => "transformer",
            PipelineKind::StableDiffusion | PipelineKind::StableDiffusionXl => "unet",
        }
    }

    pub fn component_model(&self, component: &str) -> PathBuf {
        self.root.join(component).join("model.onnx")
    }

    /// A component's `config.json` as it is (the model cards match any of its fields).
    pub fn component_config(&self, component: &str) -> Result<Value> {
        read_json(&self.root.join(component).join("config.json"))
    }

    /// A component's `config.json`, the fields dfast reads ([`DenoiserConfig`], [`VaeConfig`]).
    pub fn config<T: serde::de::DeserializeOwned>(&self, component: &str) -> Result<T> {
        let path = self.root.join(component).join("config.json");
        serde_json::from_value(read_json(&path)?)
            .map_err(|e| Error::parse_file(&path, "a field dfast reads has an unexpected type", e))
    }

    pub fn scheduler_config(&self) -> PathBuf {
        self.root.join("scheduler").join("scheduler_config.json")
    }

    /// The manifest `dfast convert` wrote, when this folder is a conversion.
    pub fn manifest(&self) -> Result<Option<Manifest>> {
        Manifest::read(&self.root)
    }

    /// The session options the manifest records for execution provider `ep`, and a warning when the folder
    /// was converted for another EP (its graphs and session options were chosen for that one).
    pub fn session_options(&self, ep: ExecutionProvider) -> Result<(EpOptions, Option<String>)> {
        Ok(self.options_from(self.manifest()?.as_ref(), ep))
    }

    fn options_from(&self, manifest: Option<&Manifest>, ep: ExecutionProvider) -> (EpOptions, Option<String>) {
        let Some(manifest) = manifest else { return Default::default() };
        if manifest.execution_provider == ep {
            return (manifest.ep_options(), None);
        }
        let warning = format!(
            "{} was converted for the {} EP (profile {}); running it on {} without its session options",
            self.root.display(),
            manifest.execution_provider,
            manifest.profile,
            ep
        );
        (EpOptions::default(), Some(warning))
    }

    /// The session options this folder runs with on `runtime` ([`Self::session_options`]) and what to tell the
    /// user before it runs: a folder converted for another EP, a precision the CPU cannot compute in, int8
    /// weights this CPU's int8 kernels saturate.
    pub fn session_setup(&self, runtime: &Runtime) -> Result<(EpOptions, Vec<String>)> {
        let manifest = self.manifest()?;
        let (defaults, ep_warning) = self.options_from(manifest.as_ref(), runtime.ep());
        let options = defaults.merged(runtime.options());
        let cpu = crate::host::CpuFeatures::host();
        let int8 = manifest.and_then(|m| m.int8_saturation_warning(runtime.ep(), &options, &cpu));
        let warnings = ep_warning.into_iter().chain(runtime.precision_warning(&defaults)).chain(int8).collect();
        Ok((defaults, warnings))
    }

    /// Image pixels per latent pixel: 2^(VAE blocks - 1), from the VAE decoder's config (8 for every real
    /// checkpoint).
    pub fn vae_scale_factor(&self) -> Result<usize> {
        let config: VaeConfig = self.config("vae_decoder")?;
        let blocks = config.block_out_channels.map_or(4, |b| b.len());
        Ok(1usize << blocks.saturating_sub(1))
    }

    /// The multiple every image side must be, with why in words: the VAE's scale factor x 2^(the UNet's
    /// downsamplings) (an exported UNet's upsamplers double the size, so its skip connections must meet), or
    /// the VAE's factor x the transformer's patch size (PixArt without resolution binning; with it, any size
    /// is generated at its bin and resized back).
    pub fn size_step(&self, resolution_binning: bool) -> Result<SizeStep> {
        let f = self.vae_scale_factor()?;
        let step = |latent: usize, why: String| SizeStep { vae_factor: f, latent, why };
        Ok(match self.kind {
            PipelineKind::PixArtAlpha if resolution_binning => {
                SizeStep { vae_factor: 1, latent: 1, why: String::new() }
            }
            PipelineKind::PixArtAlpha => {
                let config: DenoiserConfig = self.config("transformer").unwrap_or_default();
                // diffusers' PixArtTransformer2DModel default.
                let patch = config.patch_size.unwrap_or(2);
                step(
                    patch,
                    "the VAE's scale factor x the transformer's patch_size, which PixArt needs without resolution \
                     binning"
                        .into(),
                )
            }
            PipelineKind::StableDiffusion | PipelineKind::StableDiffusionXl => {
                let config: DenoiserConfig = self.config("unet").unwrap_or_default();
                // diffusers' UNet2DConditionModel: every down block but the last halves the size.
                let blocks = config.down_block_types.map(|b| b.len()).or(config.block_out_channels.map(|b| b.len()));
                let downsamplings = blocks.unwrap_or(1).saturating_sub(1) as u32;
                let s = if downsamplings == 1 { "" } else { "s" };
                step(
                    1 << downsamplings,
                    format!(
                        "the VAE's scale factor x 2^{downsamplings} for the UNet's {downsamplings} downsampling{s}"
                    ),
                )
            }
        })
    }

    /// Checks `--width` / `--height` against [`Self::size_step`] (PixArt: with resolution binning) before any
    /// work.
    pub fn check_size(&self, width: Option<usize>, height: Option<usize>) -> Result<()> {
        self.size_step(true)?.check([("--width", width), ("--height", height)])
    }

    /// SDXL's `force_zeros_for_empty_prompt` (true unless the pipeline says otherwise).
    pub fn force_zeros_for_empty_prompt(&self) -> bool {
        self.model_index.get("force_zeros_for_empty_prompt").and_then(Value::as_bool).unwrap_or(true)
    }
}

/// The multiple an image side must be for one pipeline ([`PipelineDir::size_step`]): the VAE's scale factor
/// times the latent pixels the denoiser needs a side to be a multiple of.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeStep {
    pub vae_factor: usize,
    pub latent: usize,
    /// Where the multiple comes from, in words.
    pub why: String,
}

impl SizeStep {
    pub fn multiple(&self) -> usize {
        self.vae_factor * self.latent
    }

    /// Each side given, named as the user gave it (`--width`, or a prompt file's `width`), is a positive
    /// multiple of the step: one sentence naming the first that is not.
    pub fn check(&self, sides: [(&str, Option<usize>); 2]) -> Result<()> {
        let (f, latent) = (self.vae_factor, self.latent);
        for (name, v) in sides {
            let Some(v) = v else { continue };
            if v == 0 {
                return Err(Error::bad_input(format!("{name} {v} is not positive")));
            }
            if v % self.multiple() != 0 {
                let multiple = if latent == 1 {
                    format!("{f} (the VAE's scale factor)")
                } else {
                    format!("{f} x {latent} = {} ({})", self.multiple(), self.why)
                };
                return Err(Error::bad_input(format!("{name} {v} is not a positive multiple of {multiple}")));
            }
        }
        Ok(())
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read", e))?;
    serde_json::from_str(&text).map_err(|e| Error::parse_file(path, "not valid JSON", e))
}

/// What dfast reads of a denoiser's `config.json` (a UNet's or PixArt's transformer); other fields are
/// ignored.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct DenoiserConfig {
    pub in_channels: Option<usize>,
    pub out_channels: Option<usize>,
    pub sample_size: Option<usize>,
    /// PixArt's transformer: latent pixels per patch side (diffusers' default 2).
    pub patch_size: Option<usize>,
    /// A UNet's down blocks; each but the last halves the latents' size.
    pub down_block_types: Option<Vec<String>>,
    pub block_out_channels: Option<Vec<usize>>,
    /// An LCM UNet's guidance embedding width (its input `timestep_cond`).
    pub time_cond_proj_dim: Option<usize>,
}

/// What dfast reads of the VAE decoder's `config.json`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct VaeConfig {
    /// Latents are divided by it before decoding (`vae.config.scaling_factor`).
    pub scaling_factor: Option<f32>,
    /// One entry per block: 2^(blocks - 1) image pixels per latent pixel.
    pub block_out_channels: Option<Vec<usize>>,
    /// Channels of the latents (4 for SD, SDXL and PixArt-α).
    pub latent_channels: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder with the configs `size_step` reads: a VAE of 4 blocks (factor 8) and the denoiser's config.
    fn dir_with(kind: PipelineKind, component: &str, config: Value) -> (tempfile::TempDir, PipelineDir) {
        let tmp = tempfile::tempdir().unwrap();
        for (name, json) in
            [("vae_decoder", serde_json::json!({"block_out_channels": [128, 256, 512, 512]})), (component, config)]
        {
            std::fs::create_dir_all(tmp.path().join(name)).unwrap();
            std::fs::write(tmp.path().join(name).join("config.json"), json.to_string()).unwrap();
        }
        let dir = PipelineDir { root: tmp.path().to_path_buf(), kind, model_index: Value::Null };
        (tmp, dir)
    }

    /// diffusers' UNet2DConditionModel: `default_overall_up_factor = 2**num_upsamplers`, one upsampler per up
    /// block but the last; SD 1.5 (4 blocks) takes multiples of 64, SDXL (3 blocks) of 32.
    #[test]
    fn size_step_follows_the_unet_and_the_transformer() {
        let blocks = |n: usize| serde_json::json!({"down_block_types": vec!["DownBlock2D"; n]});
        let (_t, sd15) = dir_with(PipelineKind::StableDiffusion, "unet", blocks(4));
        assert_eq!(sd15.size_step(true).unwrap().multiple(), 64);
        let (_t, sdxl) = dir_with(PipelineKind::StableDiffusionXl, "unet", blocks(3));
        let step = sdxl.size_step(true).unwrap();
        assert_eq!(step.multiple(), 32);
        let err = step.check([("--width", Some(1024)), ("--height", Some(1000))]).unwrap_err().to_string();
        assert_eq!(
            err,
            "--height 1000 is not a positive multiple of 8 x 4 = 32 (the VAE's scale factor x 2^2 for the UNet's 2 \
             downsamplings)"
        );
        let (_t, pixart) = dir_with(PipelineKind::PixArtAlpha, "transformer", serde_json::json!({"patch_size": 2}));
        assert_eq!(pixart.size_step(false).unwrap().multiple(), 16);
        assert_eq!(pixart.size_step(true).unwrap().multiple(), 1);
    }
}
