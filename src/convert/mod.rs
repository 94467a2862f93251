//! `dfast convert`: rewrite an exported pipeline once, for one execution provider and precision, and save
//! it as a complete pipeline folder with a manifest of what was done.
//!
//! Every component folder holding a `model.onnx` goes through the profile's passes (each pass may be
//! limited to some components with `components = [...]` in its options), then the precision pass when
//! the precision is not fp32; everything else (model_index.json, scheduler, tokenizers, configs) is
//! copied. The source folder is only read.

pub mod calibrate;
pub mod card;
pub mod profile;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use toml::{Table, Value};

pub use card::ModelCard;
pub use profile::Profile;

use crate::onnx::OnnxModel;
use crate::passes::{self, Pass, PassContext, PassManager, PassRecord, Target};
use crate::pipeline::PipelineDir;
use crate::{Error, Result};

/// The name of the manifest written into every converted folder.
pub const MANIFEST: &str = "dfast-manifest.json";

/// Every pass a profile may name.
pub const KNOWN_PASSES: [&str; 7] =
    ["cleanup", "attention", "fuse-qkv", "conv1x1", "int8-dynamic", "int8-static", "precision"];

/// Weights and compute precision of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Ok(Precision::Fp32),
            "fp16" | "float16" => Ok(Precision::Fp16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(Error::bad_input(format!("unknown precision `{name}`; expected fp32, fp16 or bf16"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    /// The default per execution provider: fp32 on cpu and openvino, fp16 on cuda and tensorrt.
    pub fn default_for(target: Target) -> Self {
        match target {
            Target::Cpu | Target::OpenVino => Precision::Fp32,
            Target::Cuda | Target::TensorRt => Precision::Fp16,
        }
    }
}

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub source: PathBuf,
    pub out: PathBuf,
    pub profile: Profile,
    pub precision: Precision,
    pub target: Target,
    /// The model card (per-model defaults); detected from the UNet config when None.
    pub card: Option<ModelCard>,
    /// Convert the VAE decoder to fp16/bf16 even where the model card keeps it fp32 (SDXL).
    pub vae_half: bool,
    /// How `int8-static` calibrates (used only by profiles with that pass).
    pub calibration: calibrate::CalibrationOptions,
}

/// What happened to one component.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentReport {
    pub component: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub passes: Vec<PassRecord>,
    /// Precision the component was written in (fp32 where it was kept so).
    pub precision: Precision,
    pub seconds: f64,
}

/// The manifest written next to the converted pipeline: enough to know how it was made.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub dfast_version: String,
    /// The ONNX Runtime version dfast targets (the graphs use its contrib ops).
    pub onnxruntime_version: String,
    pub source: String,
    pub profile: String,
    pub profile_source: String,
    pub passes: Vec<String>,
    pub precision: Precision,
    pub execution_provider: Target,
    /// Options for the execution provider's sessions when this folder runs (the profile's `[session.<ep>]`).
    pub session_options: std::collections::BTreeMap<String, String>,
    pub model_card: Option<String>,
    pub int8_exclude: Option<Vec<(usize, usize)>>,
    /// How int8-static was calibrated, when the profile has it.
    pub calibration: Option<calibrate::CalibrationOptions>,
    pub components: Vec<ComponentReport>,
    pub seconds: f64,
    /// Everything that decides the converted files (not the session options): equal keys, equal files.
    pub conversion_key: serde_json::Value,
}

/// Progress of a conversion, for a progress bar.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// Starting component `index` of `total`.
    Component { name: &'a str, index: usize, total: usize },
    /// A component is done.
    ComponentDone { name: &'a str },
}

/// Converts a pipeline folder; see the module docs.
pub fn convert(opts: &ConvertOptions, on_event: &mut dyn FnMut(Event)) -> Result<Manifest> {
    let start = Instant::now();
    opts.profile.validate(&KNOWN_PASSES)?;
    let dir = PipelineDir::open(&opts.source)?;
    check_output(&opts.source, &opts.out)?;
    let card = match &opts.card {
        Some(c) => Some(c.clone()),
        None => dir.component_config("unet").ok().and_then(|c| ModelCard::detect(&c)),
    };
    let components = onnx_components(&opts.source)?;
    let exclude = card_exclude(&opts.profile, card.as_ref());
    // Every pass is built (and its options checked) before anything is written.
    let mut plans = Vec::new();
    for component in &components {
        let keep_fp32 =
            component == "vae_decoder" && !opts.vae_half && card.as_ref().is_some_and(|c| c.vae_decoder_fp32);
        // OpenVINO takes fp32 graphs and runs them in bf16/f16 by its inference precision hint (a session
        // option, recorded in the manifest), so its graphs stay fp32.
        let precision = if keep_fp32 || opts.target == Target::OpenVino { Precision::Fp32 } else { opts.precision };
        plans.push((component, precision, pass_manager(opts, component, precision, &exclude)?));
    }

    // Written under a temporary name next to `out` and renamed at the end: a folder named `out` is complete.
    let staging = staging_dir(&opts.out);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .map_err(|e| Error::bad_file(&opts.out, format!("cannot create the output folder: {e}")))?;
    let result = (|| -> Result<Vec<ComponentReport>> {
        copy_non_onnx(&opts.source, &staging)?;
        let mut reports = Vec::new();
        for (i, (component, precision, manager)) in plans.iter().enumerate() {
            on_event(Event::Component { name: component, index: i, total: components.len() });
            let t0 = Instant::now();
            let mut model = OnnxModel::load(opts.source.join(component).join("model.onnx"))?;
            let nodes_before = model.node_count();
            let records =
                manager.run(&mut model, &PassContext::new(opts.target)).map_err(|e| in_component(component, e))?;
            model.save(staging.join(component).join("model.onnx"))?;
            reports.push(ComponentReport {
                component: component.to_string(),
                nodes_before,
                nodes_after: model.node_count(),
                passes: records,
                precision: *precision,
                seconds: t0.elapsed().as_secs_f64(),
            });
            on_event(Event::ComponentDone { name: component });
        }
        Ok(reports)
    })();
    let reports = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };

    let uses_int8 = opts.profile.passes.iter().any(|p| p == "int8-dynamic");
    let uses_static = opts.profile.passes.iter().any(|p| p == "int8-static");
    let manifest = Manifest {
        dfast_version: env!("CARGO_PKG_VERSION").to_string(),
        onnxruntime_version: crate::runtime::ORT_VERSION.to_string(),
        source: opts.source.canonicalize().unwrap_or_else(|_| opts.source.clone()).display().to_string(),
        profile: opts.profile.name.clone(),
        profile_source: opts.profile.source.clone(),
        passes: opts.profile.passes.clone(),
        precision: opts.precision,
        execution_provider: opts.target,
        session_options: session_options(opts),
        model_card: card.as_ref().map(|c| c.name.clone()),
        int8_exclude: uses_int8.then_some(exclude),
        calibration: uses_static.then(|| opts.calibration.clone()),
        components: reports,
        seconds: start.elapsed().as_secs_f64(),
        conversion_key: conversion_key(opts, card.as_ref()),
    };
    publish(&staging, &opts.out, &manifest)?;
    Ok(manifest)
}

/// Writes the manifest into `staging` and moves `staging` into place as `out`, replacing an earlier
/// conversion there (`check_output` made sure `out` is empty or one).
fn publish(staging: &Path, out: &Path, manifest: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest).map_err(|e| Error::runtime(format!("manifest: {e}")))?;
    let path = staging.join(MANIFEST);
    // A relabelled conversion's manifest is a hard link to the original's: unlink it before writing.
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, text + "\n").map_err(|e| Error::bad_file(&path, format!("cannot write: {e}")))?;
    if out.exists() {
        std::fs::remove_dir_all(out)
            .map_err(|e| Error::bad_file(out, format!("cannot replace the earlier conversion: {e}")))?;
    }
    std::fs::rename(staging, out)
        .map_err(|e| Error::bad_file(out, format!("cannot move the conversion into place: {e}")))
}

/// The profile's `[session.<ep>]` options, plus OpenVINO's precision hint for a bf16/fp16 conversion.
pub fn session_options(opts: &ConvertOptions) -> std::collections::BTreeMap<String, String> {
    let mut options = opts.profile.session_options(opts.target.name()).0;
    if opts.target == Target::OpenVino && opts.precision != Precision::Fp32 {
        let hint = if opts.precision == Precision::Bf16 { "bf16" } else { "f16" };
        options.entry("precision".into()).or_insert_with(|| hint.into());
    }
    options
}

/// What decides the files a conversion writes: source, passes with their options for the target,
/// precision, target, model card, VAE rule and dfast's version. Two profiles that differ only in session
/// options have the same key (`dfast bench` links one conversion's files instead of converting again).
pub fn conversion_key(opts: &ConvertOptions, card: Option<&ModelCard>) -> serde_json::Value {
    let target = opts.target.name();
    let options: serde_json::Map<String, serde_json::Value> = opts
        .profile
        .passes
        .iter()
        .chain(std::iter::once(&"precision".to_string()))
        .map(|p| (p.clone(), serde_json::Value::String(opts.profile.pass_options(p, target).to_string())))
        .collect();
    serde_json::json!({
        "source": opts.source.canonicalize().unwrap_or_else(|_| opts.source.clone()).display().to_string(),
        "passes": opts.profile.passes,
        "options": options,
        "precision": opts.precision.name(),
        "target": target,
        "card": card.map(|c| c.name.clone()),
        "vae_half": opts.vae_half,
        "calibration": opts.profile.passes.iter().any(|p| p == "int8-static").then(|| serde_json::json!(opts.calibration)),
        "dfast_version": env!("CARGO_PKG_VERSION"),
    })
}

/// A copy of an earlier conversion with another profile's name and session options: the ONNX files are
/// hard links (copies where links cannot be made), written under `<out>.partial` and renamed like `convert`.
pub fn relabel(from: &Path, opts: &ConvertOptions) -> Result<()> {
    check_output(&opts.source, &opts.out)?;
    let manifest_path = from.join(MANIFEST);
    let mut manifest = crate::pipeline::model_dir::read_json(&manifest_path)?;
    let staging = staging_dir(&opts.out);
    let _ = std::fs::remove_dir_all(&staging);
    link_tree(from, &staging)
        .map_err(|e| Error::bad_file(&opts.out, format!("cannot link {}: {e}", from.display())))?;
    manifest["profile"] = opts.profile.name.clone().into();
    manifest["profile_source"] = opts.profile.source.clone().into();
    manifest["session_options"] = serde_json::json!(session_options(opts));
    manifest["relabelled_from"] = from.display().to_string().into();
    publish(&staging, &opts.out, &manifest)
}

fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// `<out>.partial` next to `out`.
fn staging_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    out.with_file_name(format!("{name}.partial"))
}

/// The exclude list for int8: the profile's own, else the model card's, else the seed's.
fn card_exclude(profile: &Profile, card: Option<&ModelCard>) -> Vec<(usize, usize)> {
    match profile.pass_options("int8-dynamic", "").get("exclude") {
        // Validated when the pass is built; an invalid list errors there.
        Some(v) => profile::shape_pairs(v, "exclude").unwrap_or_default(),
        None => ModelCard::exclude_or_seed(card),
    }
}

/// The passes of `profile` that apply to `component`, then the precision pass.
fn pass_manager(
    opts: &ConvertOptions,
    component: &str,
    precision: Precision,
    exclude: &[(usize, usize)],
) -> Result<PassManager> {
    let (profile, target) = (&opts.profile, opts.target);
    let mut manager = PassManager::new();
    for name in &profile.passes {
        let mut options = profile.pass_options(name, target.name());
        if let Some(scope) = options.remove("components") {
            let scope = scope.as_array().ok_or_else(|| {
                Error::bad_input(format!(
                    "profile {}: [{name}] components must be a list of component names",
                    profile.source
                ))
            })?;
            if !scope.iter().any(|c| c.as_str() == Some(component)) {
                continue;
            }
        }
        if name == "int8-dynamic" && !options.contains_key("exclude") {
            let pairs =
                exclude.iter().map(|&(a, b)| Value::Array(vec![Value::Integer(a as i64), Value::Integer(b as i64)]));
            options.insert("exclude".into(), Value::Array(pairs.collect()));
        }
        if name == "int8-static" {
            // Calibration records UNet inputs: the pass applies to the UNet alone.
            if component != "unet" {
                return Err(Error::bad_input(format!(
                    "profile {}: int8-static calibrates the UNet only; give it `components = [\"unet\"]`",
                    profile.source
                )));
            }
            let save_to = staging_dir(&opts.out).join(component).join(calibrate::RANGES_FILE);
            let calibrator = calibrate::unet_calibrator(opts.source.clone(), opts.calibration.clone(), save_to);
            manager.push(Box::new(passes::Int8Static::from_options(&options)?.with_calibrator(calibrator)));
            continue;
        }
        manager.push(build_pass(name, &options, target)?);
    }
    if precision != Precision::Fp32 {
        let mut options = profile.pass_options("precision", target.name());
        options.insert("precision".into(), Value::String(precision.name().into()));
        manager.push(build_pass("precision", &options, target)?);
    }
    Ok(manager)
}

/// A pass by name with its options.
pub fn build_pass(name: &str, options: &Table, target: Target) -> Result<Box<dyn Pass>> {
    Ok(match name {
        "cleanup" => Box::new(passes::Cleanup),
        "attention" => Box::new(passes::Attention::from_options(options, target)?),
        "fuse-qkv" => Box::new(passes::FuseQkv::from_options(options)?),
        "conv1x1" => Box::new(passes::Conv1x1::from_options(options)?),
        "int8-dynamic" => Box::new(passes::Int8Dynamic::from_options(options, target)?),
        "int8-static" => Box::new(passes::Int8Static::from_options(options)?),
        "precision" => Box::new(passes::Precision::from_options(options, target)?),
        _ => {
            return Err(Error::bad_input(format!("unknown pass `{name}`; known passes: {}", KNOWN_PASSES.join(", "))));
        }
    })
}

fn in_component(component: &str, e: Error) -> Error {
    match e {
        Error::Runtime(m) => Error::runtime(format!("{component}: {m}")),
        Error::BadInput(m) => Error::bad_input(format!("{component}: {m}")),
        other => other,
    }
}

/// The output folder must not be the source (or inside it, or contain it), and must be empty or an earlier
/// dfast conversion.
fn check_output(source: &Path, out: &Path) -> Result<()> {
    let src = source.canonicalize().map_err(|e| Error::bad_file(source, format!("cannot read: {e}")))?;
    let dst = absolute(out);
    if dst == src {
        return Err(Error::bad_file(
            out,
            "the output folder is the source folder; choose another --out (the source is never modified)",
        ));
    }
    if dst.starts_with(&src) {
        return Err(Error::bad_file(out, "the output folder is inside the source folder; choose a folder outside it"));
    }
    if src.starts_with(&dst) {
        return Err(Error::bad_file(out, "the output folder contains the source folder; choose another --out"));
    }
    if out.is_file() {
        return Err(Error::bad_file(out, "exists and is a file; expected a folder for the converted pipeline"));
    }
    if out.is_dir() {
        let empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty && !out.join(MANIFEST).is_file() {
            return Err(Error::bad_file(
                out,
                "exists and is not empty (and is not an earlier dfast conversion); choose an empty or new folder",
            ));
        }
    }
    Ok(())
}

/// `out` made absolute, resolving the parts that exist (the folder itself may not exist yet).
fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => absolute(parent).join(name),
        (_, Some(name)) => std::env::current_dir().unwrap_or_default().join(name),
        _ => path.to_path_buf(),
    }
}

/// Component folders (one level down) that hold a `model.onnx`, sorted.
fn onnx_components(source: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(source).map_err(|e| Error::bad_file(source, format!("cannot read: {e}")))?;
    for entry in entries.flatten() {
        if entry.path().join("model.onnx").is_file() {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Copies every file except ONNX models and their external data, keeping the folder structure.
fn copy_non_onnx(source: &Path, out: &Path) -> Result<()> {
    let entries = std::fs::read_dir(source).map_err(|e| Error::bad_file(source, format!("cannot read: {e}")))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let target = out.join(&name);
        if path.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| Error::bad_file(&target, format!("cannot create: {e}")))?;
            copy_non_onnx(&path, &target)?;
        } else if is_model_data(&path, &name_str) || name_str == MANIFEST {
            continue;
        } else {
            std::fs::copy(&path, &target).map_err(|e| Error::bad_file(&target, format!("cannot copy: {e}")))?;
        }
    }
    Ok(())
}

/// ONNX models and the external data files next to them (written anew by the save).
fn is_model_data(path: &Path, name: &str) -> bool {
    if name.ends_with(".onnx") || name.ends_with(".onnx_data") || name.ends_with(".onnx.data") {
        return true;
    }
    // Older exports keep weights in extension-less files or `weights.pb` next to model.onnx.
    let parent_has_model = path.parent().is_some_and(|p| p.join("model.onnx").is_file());
    parent_has_model && (name == "weights.pb" || !name.contains('.'))
}
