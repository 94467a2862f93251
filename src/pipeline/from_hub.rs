//! `--model` as a pipeline folder (`PipelineDir::resolve`): a folder as it is, or a Hugging Face repo by id,
//! its snapshot in the cache when that holds the pipeline, else the files the command reads, downloaded into
//! the cache.
//!
//! ```text
//! repo id ─ cache: refs/<revision> ─ snapshot/<subfolder> opens as a pipeline? ─ yes ─> that folder
//!                                                  │ no (HF_HUB_OFFLINE: say what is missing)
//!           Hub: api/models/<repo>/revision/<revision> ─ commit, files
//!                ─ model_index.json and the required files there? (else one sentence, nothing written)
//!                ─ each file the command reads: resolve/<commit>/<file> ─ blobs/, snapshots/<commit>/
//!                ─ refs/<revision> = commit ─> snapshots/<commit>/<subfolder>
//! ```
//!
//! What a command reads: model_index.json, and in the component folders it uses, the ONNX model with its
//! external data, the configs and the tokenizer files; never PyTorch (or other) weights, other ONNX variants
//! (`model_fp16.onnx`), or components it does not run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::model_dir::embedded_tiny_sd;
use super::{PipelineDir, PipelineKind};
use crate::hub::{Event, Hub, HubLocation};
use crate::{Error, Result};

impl PipelineDir {
    /// Resolves `--model`: None is the embedded tiny-sd, an existing path is a folder, anything else is a
    /// repo id: found in the Hugging Face cache, or downloaded into it (the files `components` says the command
    /// reads; `on_event` sees each file's progress), at `hub.revision` (default `main`) and in `hub.subfolder`.
    pub fn resolve(
        model: Option<&str>,
        hub: &HubLocation,
        components: Components,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Self> {
        let root = match model {
            None => embedded_tiny_sd(),
            Some(spec) if Path::new(spec).exists() => {
                if hub.revision.is_some() || hub.subfolder.is_some() {
                    return Err(Error::bad_input(format!(
                        "--revision and --subfolder go with a Hugging Face repo id, and `{spec}` is a folder"
                    )));
                }
                PathBuf::from(spec)
            }
            Some(spec) => locate(spec, hub, components, on_event)?,
        };
        Self::open(&root)
    }
}

/// Which components of a pipeline a command reads, and so downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Components {
    /// Text to image: tokenizers, text encoders, the denoiser, the VAE decoder, the scheduler (`generate`,
    /// `bench`, `tune`).
    Pipeline,
    /// The pipeline and the VAE encoder (`convert` rewrites every component a folder has).
    WithVaeEncoder,
    /// Every ONNX component the repo has (`inspect`).
    All,
}

impl Components {
    /// The components beyond the text-to-image pipeline that this reads where a repo has them (a repo without
    /// them is still a pipeline).
    pub fn optional(self) -> &'static [&'static str] {
        match self {
            Components::Pipeline => &[],
            Components::WithVaeEncoder | Components::All => &["vae_encoder"],
        }
    }
}

/// The folders of a text-to-image pipeline.
const PIPELINE: [&str; 8] =
    ["scheduler", "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "unet", "transformer", "vae_decoder"];

/// Weights of other frameworks, and what is not read at all.
const NOT_READ: [&str; 12] =
    ["safetensors", "bin", "ckpt", "pt", "pth", "msgpack", "h5", "ot", "gguf", "xml", "md", "png"];

/// Whether `name`, a file directly in a component folder, is one dfast reads: configs and tokenizer files
/// (`.json`, `.txt`, `.model`) anywhere; in a folder with a `model.onnx`, the model and its external data
/// (`model.onnx_data`, `weights.pb`, per-tensor files), not other ONNX models or other frameworks' weights.
fn reads(name: &str, onnx_component: bool) -> bool {
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map_or("", |(_, e)| e);
    if matches!(ext, "json" | "txt" | "model") {
        return true;
    }
    if !onnx_component {
        return false;
    }
    if lower.contains(".onnx") {
        return name.starts_with("model.onnx");
    }
    !NOT_READ.contains(&ext)
}

/// The files of a pipeline folder's listing (paths relative to it) that `components` reads, sorted.
pub fn select(files: &[String], components: Components) -> Vec<String> {
    let set: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for file in files {
        let Some((folder, name)) = file.split_once('/') else {
            if file == "model_index.json" {
                out.push(file.clone());
            }
            continue;
        };
        if name.contains('/') {
            continue;
        }
        let onnx_component = set.contains(format!("{folder}/model.onnx").as_str());
        let used = PIPELINE.contains(&folder)
            || match components {
                Components::Pipeline => false,
                Components::WithVaeEncoder => folder == "vae_encoder",
                Components::All => onnx_component,
            };
        if used && reads(name, onnx_component) {
            out.push(file.clone());
        }
    }
    out.sort();
    out
}

/// `dir/subfolder`.
fn under(dir: PathBuf, subfolder: &str) -> PathBuf {
    if subfolder.is_empty() { dir } else { dir.join(subfolder) }
}

/// The pipeline folder of `repo` at `loc`: its snapshot in the cache, downloaded first where needed.
fn locate(repo: &str, loc: &HubLocation, components: Components, on_event: &mut dyn FnMut(Event)) -> Result<PathBuf> {
    if !crate::hub::is_repo_id(repo) {
        return Err(Error::bad_file(repo, "no such folder (expected a pipeline folder or a Hugging Face repo id)"));
    }
    let (revision, sub) = (loc.revision(), loc.subfolder());
    if !crate::hub::is_plain_path(revision) {
        return Err(Error::bad_input(format!("--revision `{revision}` is not a branch, tag or commit name")));
    }
    if !sub.is_empty() && !crate::hub::is_plain_path(sub) {
        return Err(Error::bad_input(format!(
            "--subfolder `{sub}` is not a folder of a repo (names separated by /, without . or ..)"
        )));
    }
    let hub = Hub::from_env();
    let prefix = if sub.is_empty() { String::new() } else { format!("{sub}/") };
    if let Some(commit) = hub.cached_commit(repo, revision) {
        let root = under(hub.snapshot_dir(repo, &commit), sub);
        // Offline, a snapshot that opens is all there is; online, the optional components must be there, or
        // known to be missing from the repo.
        let complete = |optional: &&str| {
            let model = format!("{optional}/model.onnx");
            root.join(&model).is_file() || hub.known_missing(repo, &commit, &format!("{prefix}{model}"))
        };
        match PipelineDir::open(&root) {
            Ok(_) if hub.offline || components.optional().iter().all(complete) => return Ok(root),
            Ok(_) => {}
            Err(e) if hub.offline => return Err(offline_error(&hub, repo, revision, sub, &root, e)),
            Err(_) => {}
        }
    }
    if hub.offline {
        return Err(not_cached(&hub, repo, revision));
    }

    let listing = hub.list(repo, revision)?;
    let files: Vec<String> = listing.files.iter().filter_map(|f| f.strip_prefix(&prefix)).map(String::from).collect();
    check_listing(repo, revision, sub, &listing.files, &files)?;
    for file in select(&files, components) {
        hub.download(repo, &listing.commit, &format!("{prefix}{file}"), on_event)?;
    }
    for optional in components.optional() {
        let model = format!("{optional}/model.onnx");
        if !files.contains(&model) {
            hub.mark_missing(repo, &listing.commit, &format!("{prefix}{model}"))?;
        }
    }
    hub.set_ref(repo, revision, &listing.commit)?;
    Ok(under(hub.snapshot_dir(repo, &listing.commit), sub))
}

/// Before anything is downloaded: the repo holds a pipeline at `sub`, with every file it needs.
fn check_listing(repo: &str, revision: &str, sub: &str, all: &[String], files: &[String]) -> Result<()> {
    let at = format!("model repo `{repo}` at revision `{revision}`");
    let shown = |f: &str| if sub.is_empty() { f.to_string() } else { format!("{sub}/{f}") };
    if !files.iter().any(|f| f == "model_index.json") {
        let elsewhere: Vec<&str> = all
            .iter()
            .filter_map(|f| if f == "model_index.json" { Some("") } else { f.strip_suffix("/model_index.json") })
            .filter(|d| *d != sub)
            .collect();
        let hint = match elsewhere.first() {
            Some(&"") => "it has one at its root: leave out --subfolder".to_string(),
            Some(dir) => format!("it has one in `{dir}/`: pass --subfolder {dir}"),
            None => "not a diffusers pipeline here (ONNX exports often live at --revision onnx)".to_string(),
        };
        return Err(Error::hub(format!("{at} has no {}; {hint}", shown("model_index.json"))));
    }
    let set: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    let has_dir = |d: &str| files.iter().any(|f| f.strip_prefix(d).is_some_and(|rest| rest.starts_with('/')));
    let kind = PipelineKind::from_folders(has_dir);
    if let Some(missing) = kind.required_files(|f| set.contains(f)).into_iter().find(|f| !set.contains(f.as_str())) {
        let pytorch = files.iter().any(|f| f.ends_with(".safetensors") || f.ends_with(".bin"));
        let why = if missing.ends_with("model.onnx") && pytorch {
            " (it holds PyTorch weights; dfast runs ONNX exports, which some repos keep at --revision onnx or in \
             --subfolder onnx)"
        } else {
            ""
        };
        return Err(Error::hub(format!("{at} has no {}, which the pipeline needs{why}", shown(&missing))));
    }
    Ok(())
}

/// Why the cached snapshot of `repo` at `revision` is no pipeline, when no request may be made.
fn offline_error(hub: &Hub, repo: &str, revision: &str, sub: &str, root: &Path, e: Error) -> Error {
    let at = format!("the Hugging Face cache at {}", hub.cache.display());
    if !root.join("model_index.json").is_file() {
        let index = if sub.is_empty() { "model_index.json".to_string() } else { format!("{sub}/model_index.json") };
        return Error::bad_input(format!(
            "model `{repo}` is in {at} at revision `{revision}`, but that snapshot has no {index} (a repo that \
             keeps its ONNX files in a subfolder needs --subfolder, e.g. --subfolder onnx; {OFFLINE})"
        ));
    }
    e.in_context(format!("model `{repo}` at revision `{revision}` ({OFFLINE})"))
}

const OFFLINE: &str = "HF_HUB_OFFLINE is set, so nothing is downloaded";

/// Why the cache has no snapshot of `repo` at `revision`, when no request may be made.
fn not_cached(hub: &Hub, repo: &str, revision: &str) -> Error {
    let at = format!("the Hugging Face cache at {}", hub.cache.display());
    if !hub.repo_dir(repo).is_dir() {
        return Error::bad_input(format!("model `{repo}` is not a folder and is not in {at} ({OFFLINE})"));
    }
    let refs = hub.cached_revisions(repo);
    let has = if refs.is_empty() { "no revisions".to_string() } else { refs.join(", ") };
    Error::bad_input(format!(
        "model `{repo}` is in {at}, but not at revision `{revision}` (it has: {has}); pass --revision ({OFFLINE})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_what_the_command_reads_is_selected() {
        let repo = strings(&[
            ".gitattributes",
            "README.md",
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.onnx",
            "text_encoder/model.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/model.onnx",
            "unet/model.onnx_data",
            "unet/model_fp16.onnx",
            "unet/model_fp16.onnx_data",
            "unet/onnx__MatMul_1234",
            "unet/trt-cache/engine.json",
            "vae/config.json",
            "vae/diffusion_pytorch_model.bin",
            "vae_decoder/config.json",
            "vae_decoder/model.onnx",
            "vae_decoder/weights.pb",
            "vae_encoder/config.json",
            "vae_encoder/model.onnx",
            "safety_checker/model.onnx",
            "safety_checker/config.json",
        ]);
        let pipeline = strings(&[
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.onnx",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/model.onnx",
            "unet/model.onnx_data",
            "unet/onnx__MatMul_1234",
            "vae_decoder/config.json",
            "vae_decoder/model.onnx",
            "vae_decoder/weights.pb",
        ]);
        assert_eq!(select(&repo, Components::Pipeline), pipeline);
        let with_encoder = select(&repo, Components::WithVaeEncoder);
        let added: Vec<&String> = with_encoder.iter().filter(|f| !pipeline.contains(f)).collect();
        assert_eq!(added, ["vae_encoder/config.json", "vae_encoder/model.onnx"]);
        let all = select(&repo, Components::All);
        let added: Vec<&String> = all.iter().filter(|f| !with_encoder.contains(f)).collect();
        assert_eq!(added, ["safety_checker/config.json", "safety_checker/model.onnx"]);
    }

    #[test]
    fn a_listing_without_the_pipeline_is_one_sentence() {
        let all = strings(&["onnx/model_index.json", "onnx/unet/model.onnx", "unet/config.json"]);
        let root: Vec<String> = all.clone();
        let e = check_listing("a/b", "main", "", &all, &root).unwrap_err().to_string();
        assert!(
            e.contains("model repo `a/b` at revision `main` has no model_index.json; it has one in `onnx/`"),
            "{e}"
        );
        assert!(e.contains("pass --subfolder onnx"), "{e}");

        let files = strings(&["model_index.json", "unet/diffusion_pytorch_model.safetensors"]);
        let e = check_listing("a/b", "main", "", &files, &files).unwrap_err().to_string();
        assert!(e.contains("has no scheduler/scheduler_config.json, which the pipeline needs"), "{e}");

        let mut files = strings(&[
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/model.onnx",
            "unet/diffusion_pytorch_model.safetensors",
        ]);
        let e = check_listing("a/b", "main", "", &files, &files).unwrap_err().to_string();
        assert!(e.contains("has no unet/model.onnx, which the pipeline needs (it holds PyTorch weights"), "{e}");
        files.extend(strings(&[
            "unet/model.onnx",
            "vae_decoder/model.onnx",
            "vae_decoder/config.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "text_encoder_2/model.onnx",
        ]));
        let e = check_listing("a/b", "onnx", "x", &files, &files).unwrap_err().to_string();
        assert!(e.contains("at revision `onnx` has no x/tokenizer_2/vocab.json"), "{e}");
        files.push("tokenizer_2/tokenizer.json".into());
        check_listing("a/b", "main", "", &files, &files).unwrap();
    }
}
