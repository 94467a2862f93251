//! `dfast unet-step`: one UNet call on given inputs, timed, its output saved. This is how peers (PyTorch,
//! OpenVINO, ONNX Runtime from Python) and dfast's conversions are compared on the same inputs, one step at
//! a time (`experiment-scripts/cpu_peers.py`, `experiment-scripts/gpu_sdxl.sh check`).
//!
//! With `io_binding` (on by default on cuda and tensorrt, `--ep-option io_binding=true|false` anywhere) the
//! inputs are copied once into device buffers bound to the session and the output is bound to a device
//! buffer, as the pipeline binds them; every call then runs on the same addresses, which is what lets
//! ONNX Runtime capture the call as a CUDA graph and replay it (`cuda_graph`). A timed call is then the
//! session's run plus reading the output back; without it, building the input tensors from the host
//! arrays, the run and reading the output. `transfer_median_s` is the copying part of either.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::ArrayD;
use serde::Serialize;

use crate::host::median;
use crate::pipeline::{PipelineDir, denoiser_output, io_binding, take_output};
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
    /// Inputs and output in bound device buffers (see the module docs).
    pub io_binding: bool,
    pub session_create_s: f64,
    pub first_run_s: f64,
    pub median_s: f64,
    pub min_s: f64,
    pub runs_s: Vec<f64>,
    /// Median over the timed calls of the time spent moving tensors between the host and the session
    /// (part of each call's time).
    pub transfer_median_s: f64,
}

/// The denoiser's latent input, whose shape sizes the bound output: a UNet's `sample`, a transformer's
/// `hidden_states`.
const LATENT_INPUTS: [&str; 2] = ["sample", "hidden_states"];

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
    // The denoiser's config (beside its model.onnx), for the output's channels where the model leaves them open.
    let out_channels = std::fs::read_to_string(path.with_file_name("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|config| config.get("out_channels").and_then(serde_json::Value::as_u64))
        .map(|c| c as usize);
    let feeds = read_inputs(&opts.inputs)?;
    let ep_options = crate::runtime::resolved(runtime.ep(), &defaults.merged(runtime.options()))?.0;
    let io_binding = io_binding(runtime, &defaults)?;
    let latent_shape = feeds.iter().find(|(n, _)| LATENT_INPUTS.contains(&n.as_str())).map(|(_, t)| match t {
        HostTensor::F32(a) => a.shape().to_vec(),
        HostTensor::I64(a) => a.shape().to_vec(),
    });
    let t0 = Instant::now();
    let mut model = runtime.load_with(&path, &defaults, SessionRole::Unet)?;
    let session_create_s = t0.elapsed().as_secs_f64();
    // An input the .npz lacks is the .npz's fault, said before ONNX Runtime blames the model.
    if let Some(missing) = model.inputs().iter().find(|i| !feeds.iter().any(|(n, _)| *n == i.name)) {
        let have: Vec<&str> = feeds.iter().map(|(n, _)| n.as_str()).collect();
        return Err(Error::bad_file(
            &opts.inputs,
            format!(
                "has no array `{}`, an input of {}; it has {}",
                missing.name,
                path.display(),
                if have.is_empty() { "none".to_string() } else { have.join(", ") }
            ),
        ));
    }
    let host_feeds = || feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect::<Vec<(&str, HostTensor)>>();
    if io_binding {
        // Bound once: every call reads the same device buffers (a CUDA graph replays on these addresses).
        let shape = latent_shape.ok_or_else(|| {
            Error::bad_file(
                &opts.inputs,
                format!(
                    "with io_binding the inputs need the latent input ({}) to size the output",
                    LATENT_INPUTS.join(" or ")
                ),
            )
        })?;
        model.bind_inputs(host_feeds())?;
        let name = denoiser_output(&model)?;
        let shape = output_shape(&model.output_dims(&name).unwrap_or_default(), &shape, out_channels);
        model.bind_output(&name, &shape)?;
    }
    // (seconds, of which moving tensors, output)
    let mut call = || -> Result<(f64, f64, ArrayD<f32>)> {
        let feeds = if io_binding { Vec::new() } else { host_feeds() };
        model.take_transfer_seconds();
        let t = Instant::now();
        let mut out = if io_binding { model.run_bound()? } else { model.run(feeds)? };
        let secs = t.elapsed().as_secs_f64();
        let transfer = model.take_transfer_seconds();
        Ok((secs, transfer, take_output(&mut out, &model, "out_sample")?))
    };
    let (first_run_s, _, mut y) = call()?;
    for _ in 0..opts.warmup {
        call()?;
    }
    let mut runs_s = Vec::new();
    let mut transfers_s = Vec::new();
    for _ in 0..opts.runs {
        let (s, transfer, out) = call()?;
        runs_s.push(s);
        transfers_s.push(transfer);
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
        io_binding,
        session_create_s,
        first_run_s,
        median_s: median(&runs_s),
        min_s: runs_s.iter().copied().fold(f64::INFINITY, f64::min),
        runs_s,
        transfer_median_s: median(&transfers_s),
    })
}

/// The shape of the denoiser's output for a latent input of `latent` shape: the dimensions the model declares,
/// and where it leaves one open, the latent's (batch, height, width) or, for the channels, the config's
/// `out_channels` (PixArt-α's transformer predicts noise and variance: twice the latent's channels).
fn output_shape(declared: &[i64], latent: &[usize], out_channels: Option<usize>) -> Vec<usize> {
    if declared.len() != latent.len() {
        return latent.to_vec();
    }
    let open = |axis: usize| match (axis, out_channels) {
        (1, Some(c)) => c,
        _ => latent[axis],
    };
    declared.iter().enumerate().map(|(axis, &d)| if d > 0 { d as usize } else { open(axis) }).collect()
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

#[cfg(test)]
mod tests {
    use super::output_shape;

    #[test]
    fn the_output_takes_declared_dims_then_the_configs_channels_then_the_latents() {
        assert_eq!(output_shape(&[-1, 4, -1, -1], &[2, 4, 128, 128], Some(4)), [2, 4, 128, 128]);
        assert_eq!(output_shape(&[-1, -1, -1, -1], &[2, 4, 32, 32], Some(8)), [2, 8, 32, 32]);
        assert_eq!(output_shape(&[-1, -1, -1, -1], &[2, 4, 32, 32], None), [2, 4, 32, 32]);
        assert_eq!(output_shape(&[2, 8, 16, 16], &[2, 4, 16, 16], Some(4)), [2, 8, 16, 16]);
        assert_eq!(output_shape(&[], &[2, 4, 8, 8], Some(8)), [2, 4, 8, 8]);
    }
}
