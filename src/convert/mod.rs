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

#[cfg(test)]
mod fused_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use card::ModelCard;
pub use profile::Profile;

use crate::manifest::PassRecord;
pub use crate::manifest::{ComponentReport, MANIFEST, Manifest};
use crate::onnx::OnnxModel;
use crate::passes::int8_static::Int8Static;
use crate::passes::lora::{LoraFile, LoraMerge};
use crate::passes::{BuildContext, PassContext, PassManager, PassSpec, PrecisionPass, registry};
use crate::pipeline::PipelineDir;
use crate::settings::{ExecutionProvider, Precision, PrecisionHint};
use crate::{Error, Result};

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub source: PathBuf,
    pub out: PathBuf,
    pub profile: Profile,
    pub precision: Precision,
    pub target: ExecutionProvider,
    /// The model card (per-model defaults); detected from the UNet's or transformer's config when None.
    pub card: Option<ModelCard>,
    /// Convert the VAE decoder to fp16/bf16 even where the model card keeps it fp32 (SDXL).
    pub vae_half: bool,
    /// How `int8-static` calibrates (used only by profiles with that pass).
    pub calibration: calibrate::CalibrationOptions,
    /// Convert with a profile made for other execution providers (a warning instead of an error).
    pub force: bool,
    /// LoRA files merged into the UNet's and text encoders' weights before the profile's passes, in order.
    pub loras: Vec<LoraSource>,
}

/// A LoRA file to merge and its scale (`--lora FILE --lora-scale S`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSource {
    pub path: PathBuf,
    pub scale: f32,
}

/// Progress of a conversion, for a progress bar.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// Starting component `index` of `total`.
    Component { name: &'a str, index: usize, total: usize },
    /// A component is done.
    ComponentDone { name: &'a str },
    /// Something the user should know (a profile used for an EP it was not made for, with `--force`).
    Warning(String),
}

/// One step of a component's plan: passes to their fixed points, calibration followed by int8-static
/// with the calibrated ranges, or activation ranges measured followed by the precision pass with them
/// (range islands).
enum Step {
    /// LoRA files merged into the weights, once.
    Merge(LoraMerge),
    Passes(PassManager),
    Calibrated(Int8Static),
    Ranged(PrecisionPass),
}

/// What happens to one component.
struct Plan {
    component: String,
    precision: Precision,
    steps: Vec<Step>,
}

/// Refuses a profile made for other execution providers than `target`, unless forced (then a warning).
pub fn check_profile_ep(profile: &Profile, target: ExecutionProvider, force: bool) -> Result<Option<String>> {
    if profile.made_for(target) {
        return Ok(None);
    }
    let what = format!(
        "profile {} is made for {}, not for the {} EP ({})",
        profile.name,
        profile.eps_label(),
        target.name(),
        profile.source
    );
    if force {
        Ok(Some(format!("{what}; converting anyway (--force)")))
    } else {
        Err(Error::bad_input(format!("{what}; choose another profile or --ep, or pass --force")))
    }
}

/// Converts a pipeline folder; see the module docs.
pub fn convert(opts: &ConvertOptions, on_event: &mut dyn FnMut(Event)) -> Result<Manifest> {
    let start = Instant::now();
    if let Some(warning) = check_profile_ep(&opts.profile, opts.target, opts.force)? {
        on_event(Event::Warning(warning));
    }
    let dir = PipelineDir::open(&opts.source)?;
    check_output(&opts.source, &opts.out)?;
    if let Some(save) = &opts.calibration.save_inputs {
        let why = if !opts.profile.passes.iter().any(|p| p == Int8Static::NAME) {
            Some(format!("profile {} does not calibrate (it has no int8-static pass)", opts.profile.name))
        } else if opts.calibration.settings.from.is_some() {
            Some("the ranges come from an earlier conversion (--calibration-from), so nothing is recorded".into())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::bad_input(format!("--save-calibration-inputs {}: {why}", save.display())));
        }
    }
    let card = match &opts.card {
        Some(c) => Some(c.clone()),
        None => ModelCard::detect_dir(&dir),
    };
    let components = onnx_components(&opts.source)?;
    let loras = read_loras(&opts.loras, &components)?;
    let exclude = ModelCard::exclude_or_seed(card.as_ref());
    // Every pass is built (and its options checked) before anything is written.
    let mut plans = Vec::new();
    // A profile that asks for range islands on the VAE decoder opts in to a half decoder, as `--vae-half`.
    let islands_on_decoder = registry::parse_options::<crate::passes::precision::PrecisionOptions>(
        &opts.profile.pass_options(PrecisionPass::NAME, opts.target),
    )
    .ok()
    .and_then(|o| o.ranges)
    .is_some_and(|r| r.components.iter().any(|c| c == "vae_decoder"));
    for component in &components {
        let keep_fp32 = (component == "vae_decoder"
            && !opts.vae_half
            && !islands_on_decoder
            && card.as_ref().is_some_and(ModelCard::vae_decoder_fp32))
            || (component == "text_encoder" && card.as_ref().is_some_and(ModelCard::text_encoder_fp32));
        // OpenVINO takes fp32 graphs and runs them in bf16/f16 by its inference precision hint (a session
        // option, recorded in the manifest), so its graphs stay fp32.
        let precision =
            if keep_fp32 || opts.target == ExecutionProvider::OpenVino { Precision::Fp32 } else { opts.precision };
        let ctx = BuildContext {
            target: opts.target,
            precision,
            int8_exclude: exclude.clone(),
            cuda_only_fusions: opts.profile.cuda_only_fusions,
        };
        let mut steps = plan(&opts.profile, component, &ctx)
            .map_err(|e| e.in_context(format!("profile {}", opts.profile.source)))?;
        if let Some(merge) = LoraMerge::new(component, &loras) {
            steps.insert(0, Step::Merge(merge));
        }
        plans.push(Plan { component: component.clone(), precision, steps });
    }

    // Written under a temporary name next to `out` and renamed at the end: a folder named `out` is complete.
    let staging = staging_dir(&opts.out);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&opts.out, "cannot create the output folder", e))?;
    let result = (|| -> Result<Vec<ComponentReport>> {
        copy_non_onnx(&opts.source, &staging)?;
        let mut reports = Vec::new();
        let mut recording = calibrate::Recording::default();
        for (i, plan) in plans.into_iter().enumerate() {
            let component = plan.component.as_str();
            on_event(Event::Component { name: component, index: i, total: components.len() });
            let t0 = Instant::now();
            let mut model = OnnxModel::load(opts.source.join(component).join("model.onnx"))?;
            let nodes_before = model.node_count();
            let records = run_plan(opts, component, plan.steps, &mut model, &staging, &mut recording)
                .map_err(|e| in_component(component, e))?;
            model.save(staging.join(component).join("model.onnx"))?;
            reports.push(ComponentReport {
                component: component.to_string(),
                nodes_before,
                nodes_after: model.node_count(),
                ops: model.op_histogram(),
                passes: records,
                precision: plan.precision,
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

    // What the int8-dynamic pass really applied (its recorded settings), not what the profile asked for.
    let int8_exclude = reports
        .iter()
        .flat_map(|c| &c.passes)
        .find(|p| p.pass == crate::passes::Int8Dynamic::NAME)
        .and_then(|p| serde_json::from_value(p.settings["exclude"].clone()).ok());
    let uses_static = opts.profile.passes.iter().any(|p| p == Int8Static::NAME);
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
        int8_exclude,
        calibration: uses_static.then(|| opts.calibration.settings.clone()),
        components: reports,
        seconds: start.elapsed().as_secs_f64(),
        conversion_key: conversion_key(opts, card.as_ref()),
        loras: loras.iter().map(LoraMerge::record).collect(),
        relabelled_from: None,
    };
    publish(&staging, &opts.out, &manifest)?;
    Ok(manifest)
}

/// Runs a component's plan on `model`; returns one record per pass.
fn run_plan(
    opts: &ConvertOptions,
    component: &str,
    steps: Vec<Step>,
    model: &mut OnnxModel,
    staging: &Path,
    recording: &mut calibrate::Recording,
) -> Result<Vec<PassRecord>> {
    let ctx = PassContext::new(opts.target);
    let mut records = Vec::new();
    for step in steps {
        let manager = match step {
            Step::Merge(merge) => {
                records.push(crate::passes::run_once(LoraMerge::NAME, &merge, model, &ctx)?);
                continue;
            }
            Step::Passes(manager) => manager,
            Step::Calibrated(pass) => {
                let targets = pass.targets(model);
                let save_to = staging.join(component).join(calibrate::RANGES_FILE);
                std::fs::create_dir_all(staging.join(component))
                    .map_err(|e| Error::io(staging.join(component), "cannot create", e))?;
                let ranges = calibrate::calibrate(
                    component,
                    &opts.source,
                    model,
                    &targets,
                    &opts.calibration,
                    recording,
                    &save_to,
                )?;
                PassManager::new().with(pass.with_ranges(ranges))
            }
            Step::Ranged(pass) => {
                let targets = pass.range_targets(model);
                let r = pass.ranges.clone().unwrap_or_default();
                let save_to = staging.join(component).join(calibrate::ACTIVATION_RANGES_FILE);
                std::fs::create_dir_all(staging.join(component))
                    .map_err(|e| Error::io(staging.join(component), "cannot create", e))?;
                let ranges = calibrate::measure_ranges(
                    component,
                    &opts.source,
                    model,
                    &targets,
                    &r,
                    opts.calibration.ort_lib.as_deref(),
                    &save_to,
                )?;
                PassManager::new().with(pass.with_ranges(&ranges))
            }
        };
        records.extend(manager.run(model, &ctx)?);
    }
    Ok(records)
}

/// Writes the manifest into `staging` and moves `staging` into place as `out`, replacing an earlier
/// conversion there (`check_output` made sure `out` is empty or one).
fn publish(staging: &Path, out: &Path, manifest: &Manifest) -> Result<()> {
    manifest.write(staging)?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, "cannot replace the earlier conversion", e))?;
    }
    std::fs::rename(staging, out).map_err(|e| Error::io(out, "cannot move the conversion into place", e))
}

/// The profile's `[session.<ep>]` options, plus OpenVINO's precision hint for a bf16/fp16 conversion.
pub fn session_options(opts: &ConvertOptions) -> std::collections::BTreeMap<String, String> {
    let mut options = opts.profile.session_options(opts.target).0;
    if opts.target == ExecutionProvider::OpenVino && opts.precision != Precision::Fp32 {
        let hint = PrecisionHint::of(opts.precision);
        options.entry("precision".into()).or_insert_with(|| hint.name().into());
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
        .map(|p| {
            let mut table = opts.profile.pass_options(p, opts.target);
            if let Some(scope) = opts.profile.components(p) {
                table.insert("components".into(), toml::Value::from(scope.to_vec()));
            }
            (p.clone(), serde_json::Value::String(table.to_string()))
        })
        .collect();
    serde_json::json!({
        "source": opts.source.canonicalize().unwrap_or_else(|_| opts.source.clone()).display().to_string(),
        "passes": opts.profile.passes,
        "options": options,
        "precision": opts.precision.name(),
        "target": target,
        "card": card.map(|c| c.name.clone()),
        "vae_half": opts.vae_half,
        "cuda_only_fusions": opts.profile.cuda_only_fusions,
        "calibration": opts.profile.passes.iter().any(|p| p == Int8Static::NAME).then(|| serde_json::json!(opts.calibration.settings)),
        "dfast_version": env!("CARGO_PKG_VERSION"),
        "loras": lora_key(&opts.loras),
    })
}

/// The LoRAs of a conversion as its key holds them: each file's sha256 and scale (a file that cannot be read
/// fails the conversion itself).
fn lora_key(loras: &[LoraSource]) -> serde_json::Value {
    use sha2::{Digest, Sha256};
    loras
        .iter()
        .map(|l| {
            let sha = std::fs::read(&l.path)
                .map(|b| Sha256::digest(&b).iter().map(|b| format!("{b:02x}")).collect::<String>())
                .unwrap_or_else(|_| l.path.display().to_string());
            serde_json::json!({"sha256": sha, "scale": l.scale})
        })
        .collect()
}

/// Reads the LoRA files; each must change only components the pipeline has.
fn read_loras(sources: &[LoraSource], components: &[String]) -> Result<Vec<LoraFile>> {
    let mut files = Vec::new();
    for source in sources {
        let file = LoraFile::read(&source.path, source.scale)?;
        if let Some(missing) = file.components().into_iter().find(|c| !components.iter().any(|have| have == c)) {
            let key = file.modules.iter().find(|m| m.component == missing).map(|m| m.key.clone()).unwrap_or_default();
            return Err(Error::bad_file(
                &source.path,
                format!(
                    "key `{key}` changes the {missing}, which this pipeline does not have (a LoRA for another architecture?)"
                ),
            ));
        }
        files.push(file);
    }
    Ok(files)
}

/// A copy of an earlier conversion with another profile's name and session options: the ONNX files are
/// hard links (copies where links cannot be made), written under `<out>.partial` and renamed like `convert`.
pub fn relabel(from: &Path, opts: &ConvertOptions) -> Result<()> {
    check_output(&opts.source, &opts.out)?;
    let mut manifest = Manifest::read(from)?
        .ok_or_else(|| Error::bad_file(from, format!("has no {MANIFEST}: not a dfast conversion to relabel")))?;
    let staging = staging_dir(&opts.out);
    let _ = std::fs::remove_dir_all(&staging);
    link_tree(from, &staging).map_err(|e| Error::io(&opts.out, &format!("cannot link {}", from.display()), e))?;
    manifest.profile = opts.profile.name.clone();
    manifest.profile_source = opts.profile.source.clone();
    manifest.session_options = session_options(opts);
    manifest.relabelled_from = Some(from.display().to_string());
    publish(&staging, &opts.out, &manifest)
}

fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else {
            // Resolve symlinks first: a hard link to a relative symlink would dangle in the new folder.
            let source = std::fs::canonicalize(entry.path())?;
            if std::fs::hard_link(&source, &target).is_err() {
                std::fs::copy(&source, &target)?;
            }
        }
    }
    Ok(())
}

/// `<out>.partial` next to `out`.
fn staging_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    out.with_file_name(format!("{name}.partial"))
}

/// The steps for `component`: the profile's passes that apply to it (`components`), then the precision
/// pass when the component is converted to fp16/bf16. int8-static splits the plan: the graph as the passes
/// before it leave it is calibrated, then int8-static runs with the ranges.
fn plan(profile: &Profile, component: &str, ctx: &BuildContext) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut manager = PassManager::new();
    let passes = profile.passes.iter().map(String::as_str);
    let precision = (ctx.precision != Precision::Fp32).then_some(PrecisionPass::NAME);
    for name in passes.chain(precision) {
        if profile.components(name).is_some_and(|scope| !scope.iter().any(|c| c == component)) {
            continue;
        }
        let info = registry::lookup(name)
            .ok_or_else(|| Error::bad_input(format!("unknown pass `{name}`; known passes: {}", registry::names())))?;
        let options = profile.pass_options(name, ctx.target);
        if name == Int8Static::NAME {
            let parsed =
                registry::parse_options(&options).map_err(|e| Error::bad_config(format!("[{name}] {e}"), e))?;
            steps.push(Step::Passes(std::mem::take(&mut manager)));
            steps.push(Step::Calibrated(Int8Static::build(parsed, ctx)?));
            continue;
        }
        if name == PrecisionPass::NAME {
            let parsed =
                registry::parse_options(&options).map_err(|e| Error::bad_config(format!("[{name}] {e}"), e))?;
            let pass = PrecisionPass::build(parsed, ctx)?;
            if pass.measures(component) {
                steps.push(Step::Passes(std::mem::take(&mut manager)));
                steps.push(Step::Ranged(pass));
                continue;
            }
        }
        manager.push(info.name, info.build(&options, ctx)?);
    }
    if !manager.is_empty() {
        steps.push(Step::Passes(manager));
    }
    Ok(steps)
}

fn in_component(component: &str, e: Error) -> Error {
    match e {
        Error::BadFile { .. } => e,
        other => other.in_context(component),
    }
}

/// The output folder must not be the source (or inside it, or contain it), and must be empty or an earlier
/// dfast conversion.
fn check_output(source: &Path, out: &Path) -> Result<()> {
    let src = source.canonicalize().map_err(|e| Error::io(source, "cannot read", e))?;
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
    let entries = std::fs::read_dir(source).map_err(|e| Error::io(source, "cannot read", e))?;
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
    let entries = std::fs::read_dir(source).map_err(|e| Error::io(source, "cannot read", e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let target = out.join(&name);
        if path.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| Error::io(&target, "cannot create", e))?;
            copy_non_onnx(&path, &target)?;
        } else if is_model_data(&path, &name_str) || name_str == MANIFEST {
            continue;
        } else {
            std::fs::copy(&path, &target).map_err(|e| Error::io(&target, "cannot copy", e))?;
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
