//! Helpers shared by the passes' tests: the committed tiny models, deterministic random inputs, and the
//! comparison with the unrewritten graph.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use ort::value::TensorElementType;

use crate::onnx::OnnxModel;
use crate::runtime::{ExecutionProvider, HostTensor, Model, Runtime};

/// `models/<name>/model.onnx` of the checkout, e.g. `tiny("tiny-sd/unet")`.
pub(crate) fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name).join("model.onnx")
}

/// Deterministic values in [-1, 1) (xorshift64*).
pub(crate) fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// The sizes random inputs give dynamic dimensions: the batch (axis 0), image-like (rank-4) axes, the rest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub batch: usize,
    pub spatial: usize,
    pub other: usize,
}

/// Random inputs for every input of `model`: token ids < 1000, timesteps in [0, 999], other floats in [-1, 1).
pub(crate) fn feeds(model: &Model, seed: u64, sizes: Sizes) -> Vec<(String, HostTensor)> {
    let mut feeds = Vec::new();
    for (k, spec) in model.inputs().iter().enumerate() {
        let rank = spec.dims.len();
        let dims: Vec<usize> = spec
            .dims
            .iter()
            .enumerate()
            .map(|(i, &d)| match d {
                d if d >= 0 => d as usize,
                _ if i == 0 => sizes.batch,
                _ if rank == 4 => sizes.spatial,
                _ => sizes.other,
            })
            .collect();
        let values = noise(dims.iter().product(), seed + k as u64);
        let tensor = match spec.ty {
            TensorElementType::Int64 | TensorElementType::Int32 => HostTensor::I64(
                ArrayD::from_shape_vec(IxDyn(&dims), values.iter().map(|v| (v.abs() * 999.0) as i64).collect())
                    .unwrap(),
            ),
            _ if spec.name.contains("timestep") => HostTensor::F32(
                ArrayD::from_shape_vec(IxDyn(&dims), values.iter().map(|v| (v.abs() * 999.0).floor()).collect())
                    .unwrap(),
            ),
            _ => HostTensor::F32(ArrayD::from_shape_vec(IxDyn(&dims), values).unwrap()),
        };
        feeds.push((spec.name.clone(), tensor));
    }
    feeds
}

/// ||a - b|| / ||b||.
pub(crate) fn relative_l2(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Runs `before` and `after` on the same random inputs in ONNX Runtime (CPU); the worst relative L2 over the
/// outputs.
pub(crate) fn compare(before: &OnnxModel, after: &OnnxModel, seed: u64, sizes: Sizes) -> f64 {
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    let mut inputs = None;
    for (k, m) in [before, after].into_iter().enumerate() {
        let path = dir.path().join(format!("{k}.onnx"));
        m.save(&path).unwrap();
        let mut session = runtime.load(&path).unwrap();
        let f = inputs.get_or_insert_with(|| feeds(&session, seed, sizes)).clone();
        outputs.push(session.run(f.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()).unwrap());
    }
    assert!(!outputs[0].is_empty() && outputs[0].len() == outputs[1].len());
    outputs[0].iter().map(|(name, want)| relative_l2(&outputs[1][name], want)).fold(0.0, f64::max)
}
