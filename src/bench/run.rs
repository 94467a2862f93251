//! `dfast bench`: for every (profile, precision, execution provider) combination, convert the pipeline once
//! (cached next to the results), then time it in a process of its own: session creation, the first run,
//! warm-up runs, and timed runs with medians. One CSV row and one image per combination.
//!
//! The parent process converts and collects; a worker process (`dfast bench-worker`, hidden) loads one
//! combination and measures it, so that each row's peak memory is its own and each process holds one
//! ONNX Runtime library. The parent hands the worker its job as one JSON document ([`WorkerJob`]) and the
//! worker answers with one ([`WorkerAnswer`]): a measurement or the error that stopped it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::lock::{self, BenchLock};
use super::schema::{RESULTS_CSV, Row};
use crate::convert::{self, ConvertOptions, ModelCard, Profile};
use crate::host::{cpu_name, gpu_memory_of_this_process_mb, gpu_name, median, peak_rss_mb};
use crate::manifest::Manifest;
use crate::pipeline::{GenerateOptions, Pipeline, PipelineDir, PipelineKind};
use crate::runtime::Runtime;
use crate::scheduler::{SchedulerConfig, SchedulerKind};
use crate::settings::{EpOptions, ExecutionProvider, Precision};
use crate::{Error, Result};

/// The seed's benchmark prompt.
pub const DEFAULT_PROMPT: &str = "ghibli style, a fantasy landscape with castles";

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: PathBuf,
    /// The model's name in the rows and image names (a repo's name); default: the folder's name.
    pub model_name: Option<String>,
    /// Profile names or files; empty: per EP, the built-in profiles whose metadata puts them in the
    /// default progression for that EP ([`Profile::bench_defaults`]).
    pub profiles: Vec<String>,
    pub precisions: Vec<Option<Precision>>,
    pub eps: Vec<ExecutionProvider>,
    pub scheduler: Option<SchedulerKind>,
    pub steps: Option<usize>,
    pub batch_size: usize,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub warmup: usize,
    pub runs: usize,
    pub prompt: String,
    pub tag: String,
    pub out: PathBuf,
    pub ort_lib: Option<PathBuf>,
    /// `--ep-option key=value` for every combination's sessions.
    pub ep_options: EpOptions,
    /// Keep earlier rows of the same setting in results.csv (default: a new measurement replaces them).
    pub append: bool,
    /// How much of ONNX Runtime's log the workers show (`-v`).
    pub log_verbosity: u8,
}

/// One combination to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Combination {
    pub profile: String,
    pub precision: Precision,
    pub ep: ExecutionProvider,
}

impl Combination {
    /// `<profile>-<precision>-<ep>`, a folder name: a profile given as a file (`dir/mine.toml`) is named by
    /// its stem (`mine`), so the label never holds a path.
    pub fn label(&self) -> String {
        let path = std::path::Path::new(&self.profile);
        let profile = match path.file_stem() {
            Some(stem) if path.extension().is_some_and(|e| e == "toml") => stem.to_string_lossy(),
            _ => self.profile.as_str().into(),
        };
        format!("{}-{}-{}", profile, self.precision.name(), self.ep.name())
    }
}

/// What became of a combination.
#[derive(Debug, Clone)]
pub enum Outcome {
    Measured(Box<Row>),
    Skipped { combination: Combination, reason: String },
}

/// Progress, for the terminal.
#[derive(Debug)]
pub enum Event<'a> {
    Converting(&'a Combination),
    Measuring(&'a Combination),
    Done(&'a Outcome),
}

/// The profiles to run on `ep`: the ones asked for, else the EP's default progression.
pub fn profiles_for(opts: &BenchOptions, ep: ExecutionProvider) -> Result<Vec<String>> {
    if !opts.profiles.is_empty() {
        return Ok(opts.profiles.clone());
    }
    Ok(Profile::bench_defaults(ep)?.into_iter().map(|p| p.name).collect())
}

/// Every combination in order: EP, then profile, then precision (the EP's default when none is given).
pub fn combinations(opts: &BenchOptions) -> Result<Vec<Combination>> {
    let mut out = Vec::new();
    for &ep in &opts.eps {
        for profile in &profiles_for(opts, ep)? {
            for precision in &opts.precisions {
                let precision = precision.unwrap_or_else(|| Precision::default_for(ep));
                let c = Combination { profile: profile.clone(), precision, ep };
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    Ok(out)
}

/// How the measuring process is started: `program` with `args`, then `bench-worker --job JOB --answer ANSWER`.
/// The `dfast` binary is its own worker (`current_exe()`, no args); a host without it (the Python package,
/// where `current_exe()` is the interpreter) starts a program that hands the job to [`answer_job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<std::ffi::OsString>,
}

impl WorkerCommand {
    /// The `dfast` binary at `exe` as the worker.
    pub fn binary(exe: impl Into<PathBuf>) -> Self {
        WorkerCommand { program: exe.into(), args: Vec::new() }
    }

    /// The command that answers the job at `job_path` into `answer_path`.
    fn command(&self, job_path: &Path, answer_path: &Path) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args).arg("bench-worker").arg("--job").arg(job_path).arg("--answer").arg(answer_path);
        command
    }
}

/// Runs the benchmark; `worker_cmd` starts the process that measures each combination.
pub fn run_bench(
    opts: &BenchOptions,
    worker_cmd: &WorkerCommand,
    on_event: &mut dyn FnMut(Event),
) -> Result<Vec<Outcome>> {
    if opts.runs == 0 {
        return Err(Error::bad_input("--runs must be at least 1"));
    }
    if opts.batch_size == 0 || opts.steps == Some(0) {
        return Err(Error::bad_input("--batch-size and --steps must be at least 1"));
    }
    // Everything that can be checked is checked before the first conversion.
    let dir = PipelineDir::open(&opts.model)?;
    dir.check_size(opts.width, opts.height)?;
    let combinations = combinations(opts)?;
    let mut profiles: Vec<(String, Profile)> = Vec::new();
    for c in &combinations {
        if !profiles.iter().any(|(spec, _)| *spec == c.profile) {
            profiles.push((c.profile.clone(), Profile::load(&c.profile)?));
        }
    }
    let card = ModelCard::detect_dir(&dir);
    let scheduler_name = match opts.scheduler {
        Some(s) => s.class_name().to_string(),
        None => SchedulerConfig::from_file(dir.scheduler_config())?.class_name.unwrap_or_default(),
    };
    let steps = opts.steps.or(card.as_ref().and_then(|c| c.steps)).unwrap_or(30);
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, "cannot create the results folder", e))?;
    // Two benches into one folder would write over each other's files and rows.
    let _lock = BenchLock::acquire(&opts.out)?;
    let source = opts.model.canonicalize().map_err(|e| Error::io(&opts.model, "cannot read", e))?;
    let model_name = model_name(opts, &source);

    // ONNX Runtime and each EP are checked once, in a worker process, before anything is converted.
    let mut unusable: BTreeMap<ExecutionProvider, String> = BTreeMap::new();
    for &ep in &opts.eps {
        let job = WorkerJob {
            model: source.clone(),
            ep,
            prompt: String::new(),
            steps: 0,
            batch_size: 1,
            width: None,
            height: None,
            scheduler: None,
            warmup: 0,
            runs: 0,
            image: PathBuf::new(),
            ort_lib: opts.ort_lib.clone(),
            ep_options: opts.ep_options.0.clone(),
            probe: true,
            log_verbosity: opts.log_verbosity,
        };
        match run_worker(worker_cmd, &job, &opts.out, &format!("probe-{}", ep.name())) {
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => {
                unusable.insert(ep, reason);
            }
            Err(e) => return Err(e),
        }
    }

    let mut outcomes = Vec::new();
    for combination in combinations {
        if let Some(reason) = unusable.get(&combination.ep) {
            let outcome = Outcome::Skipped { combination: combination.clone(), reason: reason.clone() };
            on_event(Event::Done(&outcome));
            outcomes.push(outcome);
            continue;
        }
        let profile =
            &profiles.iter().find(|(spec, _)| *spec == combination.profile).expect("every profile was loaded").1;
        let outcome =
            match measure(opts, &combination, profile, &source, &dir, card.as_ref(), steps, worker_cmd, on_event)? {
                Ok(mut row) => {
                    row.model = model_name.clone();
                    row.model_card = card.as_ref().map(|c| c.name.clone()).unwrap_or_default();
                    row.scheduler = scheduler_name.clone();
                    // The image comes into place with its row, never one without the other.
                    let partial = partial_image(&opts.out, &row.image);
                    lock::uninterrupted(|| {
                        let image = opts.out.join(&row.image);
                        std::fs::rename(&partial, &image)
                            .map_err(|e| Error::io(&image, "cannot write the image", e))?;
                        record_row(&opts.out.join(RESULTS_CSV), &row, opts.append)
                    })?;
                    lock::untrack(&partial);
                    Outcome::Measured(Box::new(row))
                }
                Err(reason) => Outcome::Skipped { combination: combination.clone(), reason },
            };
        on_event(Event::Done(&outcome));
        outcomes.push(outcome);
    }
    if !outcomes.iter().any(|o| matches!(o, Outcome::Measured(_))) {
        return Err(Error::runtime("no combination could be measured (each was skipped, see above)"));
    }
    Ok(outcomes)
}

/// The model's name in rows and image names: `--model`'s repo name, else the pipeline folder's name.
fn model_name(opts: &BenchOptions, source: &Path) -> String {
    opts.model_name
        .clone()
        .unwrap_or_else(|| source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
}

/// The hidden file a worker writes the image of row image `image` to, renamed into place with the row.
fn partial_image(out: &Path, image: &str) -> PathBuf {
    out.join(format!(".{image}.{}.partial.jpg", std::process::id()))
}

/// The row's image name: model, setting and, where there is one, the tag, so that rows of one setting with
/// different tags keep their own images.
fn image_name(model: &str, label: &str, tag: &str) -> String {
    let tag = tag.trim();
    if tag.is_empty() {
        return format!("{model}-{label}.jpg");
    }
    let safe: String =
        tag.chars().take(48).map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if safe == tag {
        format!("{model}-{label}-{safe}.jpg")
    } else {
        // Tags that differ only in the characters replaced still get names of their own.
        let hash = tag.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("{model}-{label}-{safe}-{:08x}.jpg", hash as u32)
    }
}

/// Converts (or reuses) and measures one combination: `Ok(Err(reason))` is the reason it is skipped, `Err`
/// what stops the whole bench (an interrupt).
#[allow(clippy::too_many_arguments)]
fn measure(
    opts: &BenchOptions,
    combination: &Combination,
    profile: &Profile,
    source: &Path,
    dir: &PipelineDir,
    card: Option<&ModelCard>,
    steps: usize,
    worker_cmd: &WorkerCommand,
    on_event: &mut dyn FnMut(Event),
) -> Result<std::result::Result<Row, String>> {
    let ep = combination.ep;
    if let Err(e) = convert::check_profile_ep(profile, ep, false) {
        return Ok(Err(e.to_string()));
    }
    let folder = if profile.passes.is_empty() && combination.precision == Precision::Fp32 {
        // The export as is: nothing to convert.
        source.to_path_buf()
    } else {
        on_event(Event::Converting(combination));
        match converted(opts, combination, profile, source, card) {
            Ok(folder) => folder,
            Err(e) => return Ok(Err(e.to_string())),
        }
    };
    on_event(Event::Measuring(combination));
    let label = combination.label();
    let image = image_name(&model_name(opts, source), &label, &opts.tag);
    let partial = partial_image(&opts.out, &image);
    let job = WorkerJob {
        model: folder,
        ep,
        prompt: opts.prompt.clone(),
        steps,
        batch_size: opts.batch_size,
        width: opts.width.or(card.and_then(|c| c.width)),
        height: opts.height.or(card.and_then(|c| c.height)),
        scheduler: opts.scheduler,
        warmup: opts.warmup,
        runs: opts.runs,
        image: partial.clone(),
        ort_lib: opts.ort_lib.clone(),
        ep_options: opts.ep_options.0.clone(),
        probe: false,
        log_verbosity: opts.log_verbosity,
    };
    lock::track(&partial)?;
    let m = match run_worker(worker_cmd, &job, &opts.out, &label)? {
        Ok(Some(m)) => m,
        failed => {
            let _ = std::fs::remove_file(&partial);
            lock::untrack(&partial);
            return Ok(Err(failed.err().unwrap_or_else(|| "the measuring process measured nothing".to_string())));
        }
    };
    let pipeline = match dir.kind {
        PipelineKind::StableDiffusion => "StableDiffusionPipeline",
        PipelineKind::StableDiffusionXl => "StableDiffusionXLPipeline",
        PipelineKind::PixArtAlpha => "PixArtAlphaPipeline",
    };
    Ok(Ok(Row {
        timestamp: rfc3339_now(),
        tag: opts.tag.clone(),
        pipeline: pipeline.into(),
        runtime: "dfast".into(),
        profile: profile.name.clone(),
        passes: profile.passes.join("+"),
        precision: combination.precision.name().into(),
        ep: combination.ep.name().into(),
        ep_options: row_ep_options(opts, profile, ep),
        onnxruntime_version: m.onnxruntime_version,
        dfast_version: env!("CARGO_PKG_VERSION").into(),
        device: if ep.device_memory() {
            gpu_name().unwrap_or_else(|| "NVIDIA GPU (name unknown)".into())
        } else {
            cpu_name()
        },
        steps,
        batch_size: opts.batch_size,
        width: m.width,
        height: m.height,
        warmup_runs: opts.warmup,
        timed_runs: opts.runs,
        session_create_s: m.session_create_s,
        first_run_s: m.first_run_s,
        text_encode_ms: m.text_encode_ms,
        unet_step_ms: m.unet_step_ms,
        // dfast's UNet-alone figure is `dfast unet-step`'s, not a bench column.
        unet_alone_ms: None,
        host_scheduler_ms: m.host_scheduler_ms,
        host_copy_ms: m.host_copy_ms,
        vae_decode_ms: m.vae_decode_ms,
        total_s: median(&m.totals_s),
        total_min_s: m.totals_s.iter().copied().fold(f64::INFINITY, f64::min),
        total_max_s: m.totals_s.iter().copied().fold(0.0, f64::max),
        peak_host_mb: m.peak_host_mb,
        peak_device_mb: m.peak_device_mb,
        image,
        command: reproduce_command(opts, combination),
        ..Default::default()
    }))
}

/// The row's `ep_options`: the `--ep-option` pairs, and what `precision = "auto"` became on this CPU when
/// the profile's session options or those pairs ask for it (`precision=auto:bf16`), or what a precision this
/// CPU cannot compute in ran as (`precision=bf16:f32`).
fn row_ep_options(opts: &BenchOptions, profile: &Profile, ep: ExecutionProvider) -> String {
    let mut shown = opts.ep_options.clone();
    let effective = profile.session_options(ep).merged(&opts.ep_options);
    if let Ok(resolved) = crate::runtime::resolved(ep, &effective)
        && let Some(p) = resolved.get("precision").filter(|p| p.contains(':'))
    {
        shown.0.insert("precision".into(), p.to_string());
    }
    shown.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
}

/// The converted folder for a combination, reused when an earlier conversion of the same source, profile,
/// precision and EP by this dfast version is there.
fn converted(
    opts: &BenchOptions,
    combination: &Combination,
    profile: &Profile,
    source: &Path,
    card: Option<&ModelCard>,
) -> Result<PathBuf> {
    let folder = opts.out.join("converted").join(combination.label());
    let convert_opts = ConvertOptions {
        source: source.to_path_buf(),
        out: folder.clone(),
        profile: profile.clone(),
        precision: combination.precision,
        target: combination.ep,
        card: card.cloned(),
        vae_half: false,
        calibration: Default::default(),
        force: false,
    };
    let key = convert::conversion_key(&convert_opts, card);
    let manifest = |dir: &Path| Manifest::read(dir).ok().flatten();
    let session = convert::session_options(&convert_opts);
    if let Some(m) = manifest(&folder)
        && m.conversion_key == key
        && m.session_options == session
        && m.profile_source == profile.source
    {
        return Ok(folder);
    }
    // Another profile with the same passes and options (say, one that only adds session options): link
    // its files instead of converting again.
    let siblings = std::fs::read_dir(opts.out.join("converted")).into_iter().flatten().flatten();
    if let Some(twin) = siblings
        .map(|e| e.path())
        .filter(|p| p != &folder && !p.to_string_lossy().ends_with(".partial"))
        .find(|p| manifest(p).is_some_and(|m| m.conversion_key == key))
    {
        convert::relabel(&twin, &convert_opts)?;
        return Ok(folder);
    }
    convert::convert(&convert_opts, &mut |_| {})?;
    Ok(folder)
}

fn reproduce_command(opts: &BenchOptions, c: &Combination) -> String {
    let mut parts = vec![
        "dfast bench".to_string(),
        format!("--model {}", shell_quote(&opts.model.display().to_string())),
        format!("--profile {}", c.profile),
        format!("--precision {}", c.precision.name()),
        format!("--ep {}", c.ep.name()),
    ];
    for (key, value) in &opts.ep_options.0 {
        parts.push(format!("--ep-option {}", shell_quote(&format!("{key}={value}"))));
    }
    if let Some(s) = opts.scheduler {
        parts.push(format!("--scheduler {}", s.name()));
    }
    if let Some(s) = opts.steps {
        parts.push(format!("--steps {s}"));
    }
    parts.push(format!("--batch-size {}", opts.batch_size));
    if let Some(w) = opts.width {
        parts.push(format!("--width {w}"));
    }
    if let Some(h) = opts.height {
        parts.push(format!("--height {h}"));
    }
    parts.push(format!("--warmup {} --runs {}", opts.warmup, opts.runs));
    parts.push(format!("--prompt {}", shell_quote(&opts.prompt)));
    if !opts.tag.is_empty() {
        parts.push(format!("--tag {}", shell_quote(&opts.tag)));
    }
    parts.push(format!("--out {}", shell_quote(&opts.out.display().to_string())));
    parts.join(" ")
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Adds a row to the results CSV. Unless `append`, it replaces the rows of the same setting (model, runtime,
/// profile, precision, EP, EP options, tag): running the same benchmark again updates its rows instead of
/// doubling them. The file is rewritten through a temporary file renamed over it.
fn record_row(path: &Path, row: &Row, append: bool) -> Result<()> {
    let exists = path.is_file() && std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false);
    let mut rows = if exists { super::report::read_csv(path)? } else { Vec::new() };
    if !append {
        let key = |r: &Row| {
            (
                r.model.clone(),
                r.runtime.clone(),
                r.profile.clone(),
                r.precision.clone(),
                r.ep.clone(),
                r.ep_options.clone(),
                r.tag.clone(),
            )
        };
        rows.retain(|r| key(r) != key(row));
    }
    rows.push(row.clone());
    let partial = path.with_extension("csv.partial");
    super::report::write_csv(&rows, &partial)?;
    std::fs::rename(&partial, path).map_err(|e| Error::io(path, "cannot write the results", e))
}

// ---------------------------------------------------------------------------------------------------------
// The worker: one combination in this process.

/// What the worker measures and hands back as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub onnxruntime_version: String,
    pub width: usize,
    pub height: usize,
    pub session_create_s: f64,
    pub first_run_s: f64,
    pub text_encode_ms: f64,
    pub unet_step_ms: f64,
    /// Per step, the host's arithmetic and the latent copies (medians, ms; see `schema`).
    #[serde(default)]
    pub host_scheduler_ms: Option<f64>,
    #[serde(default)]
    pub host_copy_ms: Option<f64>,
    pub vae_decode_ms: f64,
    pub totals_s: Vec<f64>,
    pub peak_host_mb: f64,
    /// GPU memory this process held after the runs (nvidia-smi), for the CUDA and TensorRT EPs.
    #[serde(default)]
    pub peak_device_mb: Option<f64>,
}

/// One combination for the worker process, handed over as one JSON document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerJob {
    pub model: PathBuf,
    pub ep: ExecutionProvider,
    pub prompt: String,
    pub steps: usize,
    pub batch_size: usize,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub scheduler: Option<SchedulerKind>,
    pub warmup: usize,
    pub runs: usize,
    /// Where the last timed run's image goes.
    pub image: PathBuf,
    pub ort_lib: Option<PathBuf>,
    pub ep_options: BTreeMap<String, String>,
    /// Only check that ONNX Runtime and the EP can run a session here (no model is measured).
    #[serde(default)]
    pub probe: bool,
    /// How much of ONNX Runtime's log the worker shows (`-v`).
    #[serde(default)]
    pub log_verbosity: u8,
}

/// The worker's answer: its measurement, the probe's success, or the error that stopped it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerAnswer {
    Measured(Measurement),
    Usable,
    Failed { error: String },
}

/// Runs one job in a worker process (`OUT/.<name>.<pid>.job.json` in, `.answer.json` out, named by this
/// process so that benches never read each other's): `Ok(Ok(None))` for a probe that succeeded,
/// `Ok(Err(reason))` where no measurement came back, `Err` on an interrupt.
fn run_worker(
    worker_cmd: &WorkerCommand,
    job: &WorkerJob,
    out: &Path,
    name: &str,
) -> Result<std::result::Result<Option<Measurement>, String>> {
    let stem = format!(".{name}.{}", std::process::id());
    let (job_path, answer_path) = (out.join(format!("{stem}.job.json")), out.join(format!("{stem}.answer.json")));
    let text = serde_json::to_string_pretty(job).map_err(|e| Error::internal(format!("cannot write the job: {e}")))?;
    lock::track(&job_path)?;
    lock::track(&answer_path)?;
    let done = |result| {
        let _ = std::fs::remove_file(&job_path);
        let _ = std::fs::remove_file(&answer_path);
        lock::untrack(&job_path);
        lock::untrack(&answer_path);
        result
    };
    if let Err(e) = std::fs::write(&job_path, text) {
        return done(Ok(Err(format!("{}: cannot write the job: {e}", job_path.display()))));
    }
    let _ = std::fs::remove_file(&answer_path);
    let child = worker_cmd
        .command(&job_path, &answer_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => return done(Ok(Err(format!("cannot start the measuring process: {e}")))),
    };
    lock::set_worker(Some(child.id()));
    let output = child.wait_with_output();
    lock::set_worker(None);
    let answer = std::fs::read_to_string(&answer_path);
    let result = match answer.ok().and_then(|t| serde_json::from_str::<WorkerAnswer>(&t).ok()) {
        Some(WorkerAnswer::Measured(m)) => Ok(Some(m)),
        Some(WorkerAnswer::Usable) => Ok(None),
        Some(WorkerAnswer::Failed { error }) => Err(error),
        None => Err(match output {
            Ok(output) => format!(
                "the measuring process ended ({}) without an answer: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
            ),
            Err(e) => format!("the measuring process could not be waited for: {e}"),
        }),
    };
    done(Ok(result))
}

/// Reads a job, measures it and writes the answer (success or the error); the worker process's whole work.
pub fn answer_job(job_path: &Path, answer_path: &Path, on_run: &mut dyn FnMut(usize, usize)) -> Result<()> {
    let job = read_job(job_path);
    if let Ok(job) = &job {
        crate::runtime::library::set_log_verbosity(job.log_verbosity);
    }
    let answer =
        match job.and_then(|job| if job.probe { probe(&job).map(|()| None) } else { worker(&job, on_run).map(Some) }) {
            Ok(Some(m)) => WorkerAnswer::Measured(m),
            Ok(None) => WorkerAnswer::Usable,
            Err(e) => WorkerAnswer::Failed { error: e.to_string() },
        };
    let text = serde_json::to_string(&answer).map_err(|e| Error::internal(format!("worker answer: {e}")))?;
    std::fs::write(answer_path, text).map_err(|e| Error::io(answer_path, "cannot write", e))
}

/// Loads ONNX Runtime for the job's EP and runs a one-node model with it: what every combination of that
/// EP needs, found out before anything is converted.
fn probe(job: &WorkerJob) -> Result<()> {
    use crate::onnx::{ModelProto, NodeBuilder, OnnxModel, dtype, make_tensor_value_info};
    let runtime = Runtime::with_options(job.ep, EpOptions(job.ep_options.clone()), job.ort_lib.as_deref())?;
    let mut proto = ModelProto::new();
    proto.set_ir_version(8);
    proto.opset_import.push(crate::onnx::make_opset("", 17));
    let graph = proto.graph.mut_or_insert_default();
    graph.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[Some(1)])));
    graph.output.push(make_tensor_value_info("y", dtype::FLOAT, Some(&[Some(1)])));
    graph.node.push(NodeBuilder::new("Relu").inputs(["x"]).outputs(["y"]).build());
    let dir = std::env::temp_dir().join(format!("dfast-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "cannot create", e))?;
    let path = dir.join("probe.onnx");
    let result = OnnxModel::from_proto(proto, None).save(&path).and_then(|_| runtime.load(&path).map(drop));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn read_job(path: &Path) -> Result<WorkerJob> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read the job", e))?;
    serde_json::from_str(&text).map_err(|e| Error::parse_file(path, "not a bench job", e))
}

/// Loads one combination and measures it; `on_run(i, n)` after each of the warm-up + timed runs.
pub fn worker(opts: &WorkerJob, on_run: &mut dyn FnMut(usize, usize)) -> Result<Measurement> {
    let dir = PipelineDir::open(&opts.model)?;
    let options = EpOptions(opts.ep_options.clone());
    let runtime = Runtime::with_options(opts.ep, options, opts.ort_lib.as_deref())?;
    let generate = GenerateOptions {
        prompt: opts.prompt.clone(),
        steps: Some(opts.steps),
        width: opts.width,
        height: opts.height,
        scheduler: opts.scheduler,
        batch_size: opts.batch_size,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut pipe = Pipeline::load(&runtime, dir)?;
    let session_create_s = t0.elapsed().as_secs_f64();
    let total_runs = 1 + opts.warmup + opts.runs;
    let t1 = Instant::now();
    let first = pipe.generate(&generate, &mut |_, _| {})?;
    let first_run_s = t1.elapsed().as_secs_f64();
    on_run(1, total_runs);
    for i in 0..opts.warmup {
        pipe.generate(&generate, &mut |_, _| {})?;
        on_run(2 + i, total_runs);
    }
    let mut totals = Vec::new();
    let mut text = Vec::new();
    let mut steps = Vec::new();
    let mut vae = Vec::new();
    let mut host: Vec<(f64, f64)> = Vec::new();
    let mut last = first;
    for i in 0..opts.runs {
        let out = pipe.generate(&generate, &mut |_, _| {})?;
        totals.push(out.timings.total);
        text.push(out.timings.text_encoding * 1e3);
        steps.extend(out.timings.unet_steps.iter().map(|s| s * 1e3));
        host.extend(out.timings.host_steps.iter().map(|h| (h.scheduler * 1e3, h.copies * 1e3)));
        vae.push(out.timings.vae_decode * 1e3);
        last = out;
        on_run(2 + opts.warmup + i, total_runs);
    }
    crate::pipeline::image::save(last.image(), &opts.image)?;
    Ok(Measurement {
        onnxruntime_version: runtime.version(),
        width: last.width,
        height: last.height,
        session_create_s,
        first_run_s,
        text_encode_ms: median(&text),
        unet_step_ms: median(&steps),
        host_scheduler_ms: (!host.is_empty()).then(|| median(&host.iter().map(|h| h.0).collect::<Vec<_>>())),
        host_copy_ms: (!host.is_empty()).then(|| median(&host.iter().map(|h| h.1).collect::<Vec<_>>())),
        vae_decode_ms: median(&vae),
        totals_s: totals,
        peak_host_mb: peak_rss_mb(),
        peak_device_mb: if opts.ep.device_memory() { gpu_memory_of_this_process_mb() } else { None },
    })
}

// ---------------------------------------------------------------------------------------------------------
// Small helpers.

/// Now, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_date() {
        let now = rfc3339_now();
        assert_eq!(now.len(), 20);
        assert!(now.starts_with("20") && now.ends_with('Z'));
    }

    #[test]
    fn the_worker_command_puts_its_args_before_the_job() {
        let worker =
            WorkerCommand { program: "/usr/bin/python3".into(), args: vec!["-m".into(), "dfast._worker".into()] };
        let command = worker.command(Path::new("j.json"), Path::new("a.json"));
        assert_eq!(command.get_program(), "/usr/bin/python3");
        let args: Vec<_> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["-m", "dfast._worker", "bench-worker", "--job", "j.json", "--answer", "a.json"]);
        let dfast = WorkerCommand::binary("/bin/dfast").command(Path::new("j"), Path::new("a"));
        assert_eq!(dfast.get_args().count(), 5);
    }

    #[test]
    fn a_profile_file_is_labelled_by_its_stem() {
        let c = |profile: &str| Combination {
            profile: profile.into(),
            precision: Precision::Fp16,
            ep: ExecutionProvider::Cpu,
        };
        assert_eq!(c("fused").label(), "fused-fp16-cpu");
        assert_eq!(c("profiles/vae-islands.toml").label(), "vae-islands-fp16-cpu");
        assert_eq!(c("/abs/dir/mine.toml").label(), "mine-fp16-cpu");
    }

    #[test]
    fn the_reproduce_command_keeps_a_lone_size_flag() {
        let opts = |width, height| BenchOptions { width, height, ..options() };
        let c = Combination { profile: "sdpa".into(), precision: Precision::Fp32, ep: ExecutionProvider::Cpu };
        let command = reproduce_command(&opts(Some(256), None), &c);
        assert!(command.contains(" --width 256 ") && !command.contains("--height"), "{command}");
        let command = reproduce_command(&opts(None, Some(128)), &c);
        assert!(command.contains(" --height 128 ") && !command.contains("--width"), "{command}");
        let command = reproduce_command(&opts(Some(256), Some(128)), &c);
        assert!(command.contains(" --width 256 --height 128 "), "{command}");
    }

    #[test]
    fn image_names_hold_the_tag() {
        assert_eq!(image_name("tiny-sd", "sdpa-fp32-cpu", ""), "tiny-sd-sdpa-fp32-cpu.jpg");
        assert_eq!(image_name("tiny-sd", "sdpa-fp32-cpu", "run-2"), "tiny-sd-sdpa-fp32-cpu-run-2.jpg");
        let (a, b) = (image_name("m", "l", "a b"), image_name("m", "l", "a/b"));
        assert!(a.starts_with("m-l-a_b-") && b.starts_with("m-l-a_b-") && a != b, "{a} {b}");
    }

    fn options() -> BenchOptions {
        BenchOptions {
            model: PathBuf::new(),
            model_name: None,
            profiles: vec!["baseline".into(), "sdpa".into()],
            precisions: vec![None],
            eps: vec![ExecutionProvider::Cpu, ExecutionProvider::Cuda],
            scheduler: None,
            steps: None,
            batch_size: 1,
            width: None,
            height: None,
            warmup: 0,
            runs: 1,
            prompt: String::new(),
            tag: String::new(),
            out: PathBuf::new(),
            ort_lib: None,
            ep_options: EpOptions::default(),
            append: false,
            log_verbosity: 0,
        }
    }

    #[test]
    fn combinations_use_each_eps_default_precision() {
        let opts = options();
        let labels: Vec<String> = combinations(&opts).unwrap().iter().map(Combination::label).collect();
        assert_eq!(labels, ["baseline-fp32-cpu", "sdpa-fp32-cpu", "baseline-fp16-cuda", "sdpa-fp16-cuda"]);
        // Without --profile: each EP's default progression, from the profiles' own metadata.
        let defaults = BenchOptions { profiles: Vec::new(), ..opts };
        let labels: Vec<String> = combinations(&defaults).unwrap().iter().map(Combination::label).collect();
        assert!(labels.contains(&"fused-graph-fp16-cuda".to_string()), "{labels:?}");
        assert!(!labels.contains(&"fused-graph-fp32-cpu".to_string()), "{labels:?}");
        assert_eq!(labels.iter().filter(|l| l.ends_with("-cpu")).count(), 5, "{labels:?}");
    }
}
