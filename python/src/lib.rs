//! `dfast._dfast`: the Python package's extension module, a thin layer over the `dfast` library as `cli.rs`
//! is for the command line. It converts arguments and results and nothing else; the pure-Python package
//! (`dfast/__init__.py`) finds ONNX Runtime, turns arrays and images into files and back, and holds the
//! diffusers-style names.
//!
//! Every library error becomes `dfast.DfastError` (a `ValueError`) with the sentence the CLI prints.
//! Pipeline runs release the interpreter's lock: two pipelines run in two Python threads at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use dfast::bench::run::{self as bench_run, BenchOptions, Outcome, WorkerCommand};
use dfast::convert::{self as converting, ConvertOptions, ModelCard, Profile, calibrate::CalibrationOptions};
use dfast::hub::HubLocation;
use dfast::pipeline::from_hub::Components;
use dfast::pipeline::{GenerateOptions, PipelineDir};
use dfast::runtime::Runtime;
use dfast::scheduler::SchedulerKind;
use dfast::settings::{EpOptions, ExecutionProvider, Precision};

pyo3::create_exception!(dfast, DfastError, PyValueError, "An error from dfast, with the sentence the CLI prints.");

/// The library's error as `DfastError`.
fn err(e: dfast::Error) -> PyErr {
    DfastError::new_err(e.to_string())
}

fn ep_options(options: Option<BTreeMap<String, String>>) -> EpOptions {
    EpOptions(options.unwrap_or_default())
}

fn to_json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| err(dfast::Error::internal(format!("json: {e}"))))
}

fn resolve(
    model: &str,
    revision: Option<String>,
    subfolder: Option<String>,
    components: Components,
) -> PyResult<PipelineDir> {
    let location = HubLocation { revision, subfolder };
    PipelineDir::resolve(Some(model), &location, components, &mut |_| {}).map_err(err)
}

/// A loaded pipeline (`dfast.Pipeline` wraps it).
#[pyclass(module = "dfast._dfast")]
struct Pipeline {
    /// Locked by the run, not by the interpreter: a second call on the same pipeline waits here with the
    /// interpreter's lock released.
    inner: Mutex<dfast::pipeline::Pipeline>,
    ep: ExecutionProvider,
    library: PathBuf,
}

#[pymethods]
impl Pipeline {
    #[new]
    #[pyo3(signature = (model, ep, ep_options=None, ort_lib=None, revision=None, subfolder=None))]
    fn new(
        py: Python<'_>,
        model: &str,
        ep: &str,
        ep_options: Option<BTreeMap<String, String>>,
        ort_lib: Option<PathBuf>,
        revision: Option<String>,
        subfolder: Option<String>,
    ) -> PyResult<Self> {
        let ep = ExecutionProvider::from_name(ep).map_err(err)?;
        let options = self::ep_options(ep_options);
        let model = model.to_string();
        py.detach(|| {
            // img2img and inpainting read the VAE encoder too.
            let dir = resolve(&model, revision, subfolder, Components::WithVaeEncoder)?;
            let runtime = Runtime::with_options(ep, options, ort_lib.as_deref()).map_err(err)?;
            let pipe = dfast::pipeline::Pipeline::load(&runtime, dir).map_err(err)?;
            Ok(Pipeline { inner: Mutex::new(pipe), ep, library: runtime.library().to_path_buf() })
        })
    }

    /// The pipeline folder (a repo id's snapshot in the Hugging Face cache).
    #[getter]
    fn model_dir(&self) -> PathBuf {
        self.lock().dir().root.clone()
    }

    #[getter]
    fn ep(&self) -> &'static str {
        self.ep.name()
    }

    /// The ONNX Runtime library this process loaded.
    #[getter]
    fn ort_library(&self) -> PathBuf {
        self.library.clone()
    }

    /// Generates; returns a dict: `images` (a list of (RGB bytes, width, height)), `latents` (float32
    /// bytes, little-endian) and `latents_shape`, `timings`, `warnings` and what was used (`width`,
    /// `height`, `steps`, `guidance`, `scheduler`, `strength`).
    #[pyo3(signature = (prompt, negative_prompt=None, steps=None, guidance=None, seed=0, width=None, height=None,
        batch_size=1, latents=None, image=None, mask=None, strength=None, scheduler=None,
        no_resolution_binning=false))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        negative_prompt: Option<String>,
        steps: Option<usize>,
        guidance: Option<f32>,
        seed: u64,
        width: Option<usize>,
        height: Option<usize>,
        batch_size: usize,
        latents: Option<PathBuf>,
        image: Option<PathBuf>,
        mask: Option<PathBuf>,
        strength: Option<f64>,
        scheduler: Option<&str>,
        no_resolution_binning: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let scheduler = scheduler.map(SchedulerKind::from_name).transpose().map_err(err)?;
        let opts = GenerateOptions {
            prompt,
            negative_prompt,
            steps,
            guidance,
            seed,
            width,
            height,
            scheduler,
            latents,
            batch_size,
            image,
            mask,
            strength,
            no_resolution_binning,
            ..Default::default()
        };
        let (out, warning, started_at, finished_at) = py
            .detach(|| {
                let started_at = unix_seconds();
                let mut pipe = self.lock();
                // As `dfast generate`: the options are checked against the pipeline before any work.
                pipe.resolve_size(&opts)?;
                let warning = pipe.steps_warning(&opts)?;
                let out = pipe.generate(&opts, &mut |_, _| {})?;
                Ok::<_, dfast::Error>((out, warning, started_at, unix_seconds()))
            })
            .map_err(err)?;
        let result = PyDict::new(py);
        let images: Vec<(Bound<'py, PyBytes>, u32, u32)> =
            out.images.iter().map(|img| (PyBytes::new(py, img.as_raw()), img.width(), img.height())).collect();
        result.set_item("images", images)?;
        let latents: Vec<u8> = out.latents.iter().flat_map(|v| v.to_le_bytes()).collect();
        result.set_item("latents", PyBytes::new(py, &latents))?;
        result.set_item("latents_shape", out.latents.shape().to_vec())?;
        let timings = PyDict::new(py);
        let t = &out.timings;
        timings.set_item("text_encoding", t.text_encoding)?;
        timings.set_item("unet_steps", t.unet_steps.clone())?;
        timings.set_item("host_scheduler", t.host_steps.iter().map(|h| h.scheduler).collect::<Vec<_>>())?;
        timings.set_item("host_copies", t.host_steps.iter().map(|h| h.copies).collect::<Vec<_>>())?;
        timings.set_item("vae_encode", t.vae_encode)?;
        timings.set_item("vae_decode", t.vae_decode)?;
        timings.set_item("total", t.total)?;
        // Wall-clock time (Unix seconds, as Python's time.time()) at which the run began and ended with the
        // interpreter's lock released: runs in two threads whose spans overlap ran at the same time.
        timings.set_item("started_at", started_at)?;
        timings.set_item("finished_at", finished_at)?;
        result.set_item("timings", timings)?;
        let warnings: Vec<String> = warning.into_iter().chain(out.warnings.iter().cloned()).collect();
        result.set_item("warnings", warnings)?;
        result.set_item("width", out.width)?;
        result.set_item("height", out.height)?;
        result.set_item("steps", out.steps)?;
        result.set_item("guidance", out.guidance)?;
        result.set_item("scheduler", &out.scheduler)?;
        result.set_item("strength", out.strength)?;
        Ok(result)
    }
}

impl Pipeline {
    fn lock(&self) -> std::sync::MutexGuard<'_, dfast::pipeline::Pipeline> {
        // A run that panicked leaves the pipeline as usable as any failed run does.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Saves an RGB image (`width` x `height`, row-major bytes) as PNG or JPEG, by the file's extension.
#[pyfunction]
fn save_rgb(path: PathBuf, data: &[u8], width: u32, height: u32) -> PyResult<()> {
    let img = image_from(data, width, height)?;
    dfast::pipeline::image::save(&img, &path).map_err(err)
}

fn image_from(data: &[u8], width: u32, height: u32) -> PyResult<image::RgbImage> {
    image::RgbImage::from_raw(width, height, data.to_vec()).ok_or_else(|| {
        DfastError::new_err(format!("expected {width} x {height} x 3 bytes of RGB, got {} bytes", data.len()))
    })
}

/// Converts a pipeline (`dfast convert`); returns the manifest as JSON.
#[pyfunction]
#[pyo3(signature = (model, out, profile, precision=None, ep="cpu", force=false, card=None, vae_half=false,
    ort_lib=None, revision=None, subfolder=None, loras=Vec::new()))]
#[allow(clippy::too_many_arguments)]
fn convert(
    py: Python<'_>,
    model: &str,
    out: PathBuf,
    profile: &str,
    precision: Option<&str>,
    ep: &str,
    force: bool,
    card: Option<&str>,
    vae_half: bool,
    ort_lib: Option<PathBuf>,
    revision: Option<String>,
    subfolder: Option<String>,
    loras: Vec<(PathBuf, f32)>,
) -> PyResult<(String, Vec<String>)> {
    let target = ExecutionProvider::from_name(ep).map_err(err)?;
    let precision = match precision {
        Some(p) => Precision::from_name(p).map_err(err)?,
        None => Precision::default_for(target),
    };
    // The profile and the card are checked before a repo is downloaded.
    let profile = Profile::load(profile).map_err(err)?;
    let card = card.map(ModelCard::load).transpose().map_err(err)?;
    let model = model.to_string();
    py.detach(|| {
        let source = resolve(&model, revision, subfolder, Components::WithVaeEncoder)?.root;
        let opts = ConvertOptions {
            source,
            out,
            profile,
            precision,
            target,
            card,
            vae_half,
            calibration: CalibrationOptions { settings: Default::default(), ort_lib, save_inputs: None },
            force,
            loras: loras.into_iter().map(|(path, scale)| dfast::convert::LoraSource { path, scale }).collect(),
        };
        let mut warnings = Vec::new();
        let manifest = converting::convert(&opts, &mut |event| {
            if let converting::Event::Warning(w) = event {
                warnings.push(w.to_string());
            }
        })
        .map_err(err)?;
        Ok((to_json(&manifest)?, warnings))
    })
}

/// Collates benchmark folders (`dfast report`); returns a dict: rows, models, files, warnings.
#[pyfunction]
#[pyo3(signature = (folders, out, title="dfast benchmark: total seconds per setting"))]
fn report<'py>(py: Python<'py>, folders: Vec<PathBuf>, out: PathBuf, title: &str) -> PyResult<Bound<'py, PyDict>> {
    let title = title.to_string();
    let summary = py.detach(|| dfast::bench::report::report(&folders, &title, &out)).map_err(err)?;
    let result = PyDict::new(py);
    result.set_item("rows", summary.rows)?;
    result.set_item("models", summary.models)?;
    result.set_item("files", summary.files)?;
    result.set_item("warnings", summary.warnings)?;
    Ok(result)
}

/// Benchmarks (`dfast bench`); each combination is measured by `worker` (program, args), which is given
/// `bench-worker --job JOB --answer ANSWER`. Returns the rows as JSON; skipped combinations are warnings.
#[pyfunction]
#[pyo3(signature = (model, out, worker, profiles, precisions, eps, steps=None, batch_size=1, width=None,
    height=None, scheduler=None, warmup=3, runs=5, prompt=None, tag=String::new(), append=false, ep_options=None,
    ort_lib=None, revision=None, subfolder=None))]
#[pyo3(name = "bench")]
#[allow(clippy::too_many_arguments)]
fn run_bench(
    py: Python<'_>,
    model: &str,
    out: PathBuf,
    worker: (PathBuf, Vec<String>),
    profiles: Vec<String>,
    precisions: Vec<String>,
    eps: Vec<String>,
    steps: Option<usize>,
    batch_size: usize,
    width: Option<usize>,
    height: Option<usize>,
    scheduler: Option<&str>,
    warmup: usize,
    runs: usize,
    prompt: Option<String>,
    tag: String,
    append: bool,
    ep_options: Option<BTreeMap<String, String>>,
    ort_lib: Option<PathBuf>,
    revision: Option<String>,
    subfolder: Option<String>,
) -> PyResult<Vec<String>> {
    let eps: Vec<ExecutionProvider> =
        eps.iter().map(|e| ExecutionProvider::from_name(e)).collect::<dfast::Result<_>>().map_err(err)?;
    let eps = if eps.is_empty() { vec![ExecutionProvider::Cpu] } else { eps };
    let precisions: Vec<Option<Precision>> =
        precisions.iter().map(|p| Precision::from_name(p).map(Some)).collect::<dfast::Result<_>>().map_err(err)?;
    let precisions = if precisions.is_empty() { vec![None] } else { precisions };
    let scheduler = scheduler.map(SchedulerKind::from_name).transpose().map_err(err)?;
    let worker = WorkerCommand { program: worker.0, args: worker.1.into_iter().map(Into::into).collect() };
    // A repo id's rows are named by the repo's name (`stabilityai/sdxl-turbo` -> `sdxl-turbo`), as the CLI's.
    let model_name = (!std::path::Path::new(model).exists() && dfast::hub::is_repo_id(model))
        .then(|| model.rsplit('/').next().map(str::to_string))
        .flatten();
    let model = model.to_string();
    let (outcomes, skipped) = py.detach(|| {
        let dir = match PipelineDir::resolve(
            Some(&model),
            &HubLocation { revision, subfolder },
            Components::Pipeline,
            &mut |_| {},
        ) {
            Ok(dir) => dir,
            Err(e) => return (Err(e), Vec::new()),
        };
        let opts = BenchOptions {
            model: dir.root,
            model_name,
            profiles,
            precisions,
            eps,
            scheduler,
            steps,
            batch_size,
            width,
            height,
            warmup,
            runs,
            prompt: prompt.unwrap_or_else(|| bench_run::DEFAULT_PROMPT.to_string()),
            tag,
            out,
            ort_lib,
            ep_options: EpOptions(ep_options.unwrap_or_default()),
            append,
            log_verbosity: 0,
        };
        let mut skipped = Vec::new();
        let outcomes = bench_run::run_bench(&opts, &worker, &mut |event| {
            if let bench_run::Event::Done(Outcome::Skipped { combination, reason }) = event {
                skipped.push(format!("skipped {}: {reason}", combination.label()));
            }
        });
        (outcomes, skipped)
    });
    // Each skipped combination is a warning (the CLI's line), also when the bench then fails.
    let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
    for line in skipped {
        let line = std::ffi::CString::new(line.replace('\0', " ")).expect("no NUL left");
        PyErr::warn(py, &category, &line, 2)?;
    }
    let mut rows = Vec::new();
    for outcome in outcomes.map_err(err)? {
        if let Outcome::Measured(row) = outcome {
            rows.push(to_json(&*row)?);
        }
    }
    Ok(rows)
}

/// The bench worker's whole work: reads the job, measures, writes the answer (`python -m dfast._worker`).
#[pyfunction]
fn answer_job(py: Python<'_>, job: PathBuf, answer: PathBuf) -> PyResult<()> {
    py.detach(|| bench_run::answer_job(&job, &answer, &mut |_, _| {})).map_err(err)
}

/// How much of ONNX Runtime's log is shown: 0 nothing, 1 warnings and errors, 2 everything.
#[pyfunction]
fn set_log_verbosity(verbosity: u8) {
    dfast::runtime::library::set_log_verbosity(verbosity);
}

#[pymodule]
fn _dfast(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("DfastError", m.py().get_type::<DfastError>())?;
    m.add("ORT_VERSION", dfast::runtime::ORT_VERSION)?;
    m.add("ORT_OPENVINO_VERSION", dfast::runtime::ORT_OPENVINO_VERSION)?;
    m.add("DEFAULT_BENCH_PROMPT", bench_run::DEFAULT_PROMPT)?;
    m.add_class::<Pipeline>()?;
    m.add_function(wrap_pyfunction!(save_rgb, m)?)?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(report, m)?)?;
    m.add_function(wrap_pyfunction!(run_bench, m)?)?;
    m.add_function(wrap_pyfunction!(answer_job, m)?)?;
    m.add_function(wrap_pyfunction!(set_log_verbosity, m)?)?;
    Ok(())
}
