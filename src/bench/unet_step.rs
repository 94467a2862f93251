//! `dfast unet-step`: one UNet call on given inputs, timed, its output saved. This is how peers (PyTorch,
//! OpenVINO, ONNX Runtime from Python) and dfast's conversions are compared on the same inputs, one step at
//! a time (`experiment-scripts/cpu_peers.py`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::ArrayD;
use serde::Serialize;

use crate::host::median;
use crate::pipeline::{PipelineDir, take_output};
use crate::runtime::{HostTensor, Runtime, SessionRole};
use crate::{Error, Result};

/// What to run.
#[derive(Debug, Clone)]
pub struct StepOptions {
    /// A pipeline folder (its `unet/model.onnx`, or PixArt's `transformer/model.onnx`, runs with a conversion's
    /// session options) or a model file.
    pub model: PathBuf,
    /// An .npz whose arrays are named after the UNet's inputs (float32, or int64 for integer inputs).
    pub inputs: PathBuf,
    pub output: Option<PathBuf>,
    pub warmup: usize,
    pub runs: usize,
}

/// Timings of the timed calls.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub model: String,
    pub ep: String,
    /// The session's EP options (the conversion's, then `--ep-option`), `precision=auto` resolved
    /// (`auto:bf16` or `auto:f32`, see `runtime::resolved`).
    pub ep_options: std::collections::BTreeMap<String, String>,
    pub onnxruntime_version: String,
    pub session_create_s: f64,
    pub first_run_s: f64,
    pub median_s: f64,
    pub min_s: f64,
    pub runs_s: Vec<f64>,
}

pub fn unet_step(runtime: &Runtime, opts: &StepOptions) -> Result<StepReport> {
    if opts.runs == 0 {
        return Err(Error::bad_input("--runs must be at least 1"));
    }
    let (path, defaults) = if opts.model.is_dir() {
        let dir = PipelineDir::open(&opts.model)?;
        (dir.component_model(dir.denoiser()), dir.session_options(runtime.ep())?.0)
    } else {
        (opts.model.clone(), Default::default())
    };
    let feeds = read_inputs(&opts.inputs)?;
    let ep_options = crate::runtime::resolved(runtime.ep(), &defaults.merged(runtime.options()))?.0;
    let t0 = Instant::now();
    let mut model = runtime.load_with(&path, &defaults, SessionRole::Unet)?;
    let session_create_s = t0.elapsed().as_secs_f64();
    let mut call = || -> Result<(f64, ArrayD<f32>)> {
        let feeds: Vec<(&str, HostTensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let t = Instant::now();
        let mut out = model.run(feeds)?;
        let secs = t.elapsed().as_secs_f64();
        Ok((secs, take_output(&mut out, &model, "out_sample")?))
    };
    let (first_run_s, mut y) = call()?;
    for _ in 0..opts.warmup {
        call()?;
    }
    let mut runs_s = Vec::new();
    for _ in 0..opts.runs {
        let (s, out) = call()?;
        runs_s.push(s);
        y = out;
    }
    if let Some(out) = &opts.output {
        crate::pipeline::latents::write(out, &y)?;
    }
    Ok(StepReport {
        model: path.display().to_string(),
        ep: runtime.ep().name().to_string(),
        ep_options,
        onnxruntime_version: runtime.version(),
        session_create_s,
        first_run_s,
        median_s: median(&runs_s),
        min_s: runs_s.iter().copied().fold(f64::INFINITY, f64::min),
        runs_s,
    })
}

/// Every array of an .npz as a host tensor (float arrays as f32, integer arrays as i64).
fn read_inputs(path: &Path) -> Result<Vec<(String, HostTensor)>> {
    let bad = |e: &dyn std::fmt::Display| Error::bad_file(path, format!("cannot read the inputs (.npz): {e}"));
    let file = std::fs::File::open(path).map_err(|e| bad(&e))?;
    let mut npz = ndarray_npy::NpzReader::new(file).map_err(|e| bad(&e))?;
    let names = npz.names().map_err(|e| bad(&e))?;
    let mut feeds = Vec::new();
    for name in names {
        let key = name.trim_end_matches(".npy").to_string();
        let tensor = if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<f32>, ndarray::IxDyn>(&name) {
            HostTensor::F32(a)
        } else if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<i64>, ndarray::IxDyn>(&name) {
            HostTensor::I64(a)
        } else if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<f64>, ndarray::IxDyn>(&name) {
            HostTensor::F32(a.mapv(|v| v as f32))
        } else {
            return Err(bad(&format!("array `{key}` is not float32, float64 or int64")));
        };
        feeds.push((key, tensor));
    }
    if feeds.is_empty() {
        return Err(bad(&"it holds no arrays"));
    }
    Ok(feeds)
}
