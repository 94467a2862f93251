//! Where a pipeline's files are: a folder in the ONNX layout Optimum exports, found on disk or offline
//! in the Hugging Face cache by repo id.

use std::path::{Path, PathBuf};

use serde_json::Value;

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

/// The `_class_name`s of `model_index.json` that dfast runs, and their family. A family's text-to-image,
/// img2img and inpainting pipelines hold the same components (an inpainting UNet aside), so any of them runs
/// any task; the ONNX names are diffusers' legacy ONNX pipelines and Optimum's.
const CLASSES: [(&str, PipelineKind); 18] = [
    ("StableDiffusionPipeline", PipelineKind::StableDiffusion),
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
    /// Resolves `--model`: None is the embedded tiny-sd, an existing path is a folder, anything else is
    /// looked up as a repo id in the Hugging Face cache (offline), at `hub.revision` (default `main`) and in
    /// `hub.subfolder` of the snapshot.
    pub fn resolve(model: Option<&str>, hub: &HubLocation) -> Result<Self> {
        let root = match model {
            None => embedded_tiny_sd(),
            Some(spec) if Path::new(spec).exists() => PathBuf::from(spec),
            Some(spec) => from_hf_cache(spec, hub)?,
        };
        Self::open(&root)
    }

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
        if self.kind == PipelineKind::PixArtAlpha {
            return vec![
                self.scheduler_config(),
                self.component_model("text_encoder"),
                self.component_model("transformer"),
                self.root.join("transformer").join("config.json"),
                self.component_model("vae_decoder"),
                self.root.join("vae_decoder").join("config.json"),
                self.root.join("tokenizer").join("tokenizer.json"),
            ];
        }
        let mut files = vec![
            self.scheduler_config(),
            self.component_model("text_encoder"),
            self.component_model("unet"),
            self.component_model("vae_decoder"),
            self.root.join("vae_decoder").join("config.json"),
        ];
        let mut tokenizers = vec!["tokenizer"];
        if self.kind == PipelineKind::StableDiffusionXl {
            files.push(self.component_model("text_encoder_2"));
            tokenizers.push("tokenizer_2");
        }
        for tok in tokenizers {
            let dir = self.root.join(tok);
            if !dir.join("tokenizer.json").is_file() {
                files.push(dir.join("vocab.json"));
                files.push(dir.join("merges.txt"));
            }
        }
        files
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
        let Some(manifest) = self.manifest()? else { return Ok(Default::default()) };
        if manifest.execution_provider == ep {
            return Ok((manifest.ep_options(), None));
        }
        let warning = format!(
            "{} was converted for the {} EP (profile {}); running it on {} without its session options",
            self.root.display(),
            manifest.execution_provider,
            manifest.profile,
            ep
        );
        Ok((EpOptions::default(), Some(warning)))
    }

    /// What to tell the user when this folder runs on `runtime` with `defaults` (its manifest's session
    /// options) besides `ep_warning` (from [`Self::session_options`]): a precision the CPU cannot compute in,
    /// int8 weights this CPU's int8 kernels saturate.
    pub fn load_warnings(
        &self,
        runtime: &Runtime,
        defaults: &EpOptions,
        ep_warning: Option<String>,
    ) -> Result<Vec<String>> {
        let options = defaults.merged(runtime.options());
        let int8 = self
            .manifest()?
            .and_then(|m| m.int8_saturation_warning(runtime.ep(), &options, &crate::host::CpuFeatures::host()));
        Ok(ep_warning.into_iter().chain(runtime.precision_warning(defaults)).chain(int8).collect())
    }

    /// Image pixels per latent pixel: 2^(VAE blocks - 1), from the VAE decoder's config (8 for every real
    /// checkpoint).
    pub fn vae_scale_factor(&self) -> Result<usize> {
        let config: VaeConfig = self.config("vae_decoder")?;
        let blocks = config.block_out_channels.map_or(4, |b| b.len());
        Ok(1usize << blocks.saturating_sub(1))
    }

    /// Checks `--width` / `--height` against the VAE's scale factor before any work.
    pub fn check_size(&self, width: Option<usize>, height: Option<usize>) -> Result<()> {
        let f = self.vae_scale_factor()?;
        for (name, v) in [("width", width), ("height", height)] {
            if let Some(v) = v
                && (v == 0 || v % f != 0)
            {
                return Err(Error::bad_input(format!(
                    "--{name} {v} is not a positive multiple of {f} (the VAE's scale factor)"
                )));
            }
        }
        Ok(())
    }

    /// SDXL's `force_zeros_for_empty_prompt` (true unless the pipeline says otherwise).
    pub fn force_zeros_for_empty_prompt(&self) -> bool {
        self.model_index.get("force_zeros_for_empty_prompt").and_then(Value::as_bool).unwrap_or(true)
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read", e))?;
    serde_json::from_str(&text).map_err(|e| Error::parse_file(path, "not valid JSON", e))
}

/// The Hugging Face hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
fn hf_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

/// Where in a Hugging Face cache repo the pipeline is: a revision (branch, tag or commit; the old ONNX
/// convention is `onnx`) and a subfolder of the snapshot (repos that keep the ONNX files in `onnx/`).
#[derive(Debug, Clone, Default)]
pub struct HubLocation {
    pub revision: Option<String>,
    pub subfolder: Option<String>,
}

fn from_hf_cache(repo_id: &str, hub: &HubLocation) -> Result<PathBuf> {
    let cache_dir = hf_cache_dir();
    let looks_like_repo = repo_id.split('/').count() == 2 && !repo_id.starts_with('.') && !repo_id.ends_with('/');
    if !looks_like_repo {
        return Err(Error::bad_file(repo_id, "no such folder (expected a pipeline folder or a Hugging Face repo id)"));
    }
    let revision = hub.revision.as_deref().unwrap_or("main");
    let file = match &hub.subfolder {
        Some(sub) => format!("{}/model_index.json", sub.trim_matches('/')),
        None => "model_index.json".to_string(),
    };
    let repo = hf_hub::Repo::with_revision(repo_id.to_string(), hf_hub::RepoType::Model, revision.to_string());
    if let Some(index) = hf_hub::Cache::new(cache_dir.clone()).repo(repo).get(&file) {
        return Ok(index.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    // A commit hash has a snapshot but no ref.
    let repo_dir = cache_dir.join(format!("models--{}", repo_id.replace('/', "--")));
    let by_commit = repo_dir.join("snapshots").join(revision).join(&file);
    if by_commit.is_file() {
        return Ok(by_commit.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    // Say exactly what is missing.
    let at = format!("the Hugging Face cache at {}", cache_dir.display());
    let message = if !repo_dir.is_dir() {
        format!(
            "model `{repo_id}` is not a folder and is not in {at} (dfast works offline: download the repo first, \
             or pass the folder)"
        )
    } else if !repo_dir.join("refs").join(revision).is_file() {
        let mut refs: Vec<String> = std::fs::read_dir(repo_dir.join("refs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        refs.sort();
        let has = if refs.is_empty() { "no revisions".to_string() } else { refs.join(", ") };
        format!("model `{repo_id}` is in {at}, but not at revision `{revision}` (it has: {has}); pass --revision")
    } else {
        format!(
            "model `{repo_id}` is in {at} at revision `{revision}`, but that snapshot has no {file} (a repo that \
             keeps its ONNX files in a subfolder needs --subfolder, e.g. --subfolder onnx)"
        )
    };
    Err(Error::bad_input(message))
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
