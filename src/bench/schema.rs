//! The benchmark CSV: one row per (model, profile, precision, execution provider) combination, with
//! everything needed to reproduce it. Column names are snake_case with their unit.
//!
//! | column | meaning |
//! |---|---|
//! | `timestamp` | when the row was measured (RFC 3339, UTC) |
//! | `tag` | free text from `--tag` |
//! | `model` | the pipeline folder's name |
//! | `model_card` | the model card used (sd15, sdxl, ssd-1b) or empty |
//! | `pipeline` | StableDiffusionPipeline or StableDiffusionXLPipeline (or the PyTorch reference's class) |
//! | `runtime` | `dfast` or `pytorch` |
//! | `profile` | optimization profile (baseline, sdpa, ...; the PyTorch reference uses the seed's step names) |
//! | `passes` | passes applied, `+`-separated |
//! | `precision` | fp32, fp16 or bf16 |
//! | `ep` | execution provider (cpu, cuda, tensorrt, openvino; `torch-cpu` / `torch-cuda` for PyTorch) |
//! | `onnxruntime_version` | ONNX Runtime library version (or the torch version for PyTorch rows) |
//! | `dfast_version` | dfast's version |
//! | `device` | CPU or GPU model name |
//! | `scheduler` | scheduler class |
//! | `steps` | denoising steps |
//! | `batch_size` | images per prompt (the UNet sees twice that with guidance) |
//! | `width`, `height` | image size in pixels |
//! | `warmup_runs`, `timed_runs` | runs before timing, runs timed |
//! | `session_create_s` | creating every session (model load), seconds |
//! | `first_run_s` | the first whole-pipeline run, seconds |
//! | `text_encode_ms` | text encoding, median over timed runs |
//! | `unet_step_ms` | one UNet step (guidance batch included), median over every step of the timed runs |
//! | `unet_alone_ms` | PyTorch rows: the UNet called alone on one step's captured inputs, median; empty in dfast's rows (`dfast unet-step` measures dfast's) and in older CSVs |
//! | `vae_decode_ms` | VAE decode, median |
//! | `total_s` | whole pipeline, median over timed runs |
//! | `total_min_s`, `total_max_s` | fastest and slowest timed run |
//! | `peak_host_mb` | peak resident memory of the process that ran the combination |
//! | `peak_device_mb` | peak GPU memory, empty on the CPU |
//! | `image` | the image file written for this row, relative to the CSV |
//! | `command` | the command line that reproduces the row |
//! | `host_scheduler_ms` | dfast rows: per UNet step, the host's arithmetic around the UNet call (guidance batch, `scale_model_input`, guidance combination, `scheduler.step`), median over every step; empty in PyTorch rows and older CSVs |
//! | `host_copy_ms` | dfast rows: per UNet step, moving the step's tensors in and out of the UNet session (building the inputs, copying them to bound device tensors, reading the output back), median; empty in PyTorch rows and older CSVs |

use serde::{Deserialize, Serialize};

/// One benchmark row; field order is the CSV column order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub timestamp: String,
    pub tag: String,
    pub model: String,
    pub model_card: String,
    pub pipeline: String,
    pub runtime: String,
    pub profile: String,
    pub passes: String,
    pub precision: String,
    pub ep: String,
    /// `--ep-option` pairs the row ran with, `key=value` joined by `;` (empty: none).
    pub ep_options: String,
    pub onnxruntime_version: String,
    pub dfast_version: String,
    pub device: String,
    pub scheduler: String,
    pub steps: usize,
    pub batch_size: usize,
    pub width: usize,
    pub height: usize,
    pub warmup_runs: usize,
    pub timed_runs: usize,
    pub session_create_s: f64,
    pub first_run_s: f64,
    pub text_encode_ms: f64,
    pub unet_step_ms: f64,
    /// The UNet called alone, outside the pipeline, on one step's inputs (median ms); written by the PyTorch
    /// reference only (dfast's figure comes from `dfast unet-step`), empty in dfast's rows and older CSVs.
    pub unet_alone_ms: Option<f64>,
    pub vae_decode_ms: f64,
    pub total_s: f64,
    pub total_min_s: f64,
    pub total_max_s: f64,
    pub peak_host_mb: f64,
    pub peak_device_mb: Option<f64>,
    pub image: String,
    pub command: String,
    /// dfast rows: the host's arithmetic per UNet step (median ms), part of `unet_step_ms`.
    pub host_scheduler_ms: Option<f64>,
    /// dfast rows: the latent copies in and out of the UNet session per step (median ms), part of
    /// `unet_step_ms`.
    pub host_copy_ms: Option<f64>,
}

/// The column names, in order.
pub const COLUMNS: [&str; 36] = [
    "timestamp",
    "tag",
    "model",
    "model_card",
    "pipeline",
    "runtime",
    "profile",
    "passes",
    "precision",
    "ep",
    "ep_options",
    "onnxruntime_version",
    "dfast_version",
    "device",
    "scheduler",
    "steps",
    "batch_size",
    "width",
    "height",
    "warmup_runs",
    "timed_runs",
    "session_create_s",
    "first_run_s",
    "text_encode_ms",
    "unet_step_ms",
    "unet_alone_ms",
    "vae_decode_ms",
    "total_s",
    "total_min_s",
    "total_max_s",
    "peak_host_mb",
    "peak_device_mb",
    "image",
    "command",
    "host_scheduler_ms",
    "host_copy_ms",
];

/// Columns that CSVs written before them lack; read as empty there.
pub const OPTIONAL_COLUMNS: [&str; 4] = ["ep_options", "unet_alone_ms", "host_scheduler_ms", "host_copy_ms"];

/// The name of the CSV `dfast bench` writes in its output folder.
pub const RESULTS_CSV: &str = "results.csv";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_match_the_row_fields() {
        let mut w = csv::Writer::from_writer(vec![]);
        w.serialize(Row::default()).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert_eq!(text.lines().next().unwrap(), COLUMNS.join(","));
    }
}
