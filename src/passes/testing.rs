//! Helpers shared by the passes' tests: the committed tiny models, deterministic random inputs, the
//! comparison with the unrewritten graph, and a lowering of the CUDA-only ops to standard ones.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use ort::value::TensorElementType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use bytes::Bytes;

use crate::manifest::PassRecord;
use crate::onnx::{ModelProto, NodeBuilder, OnnxModel, TensorProto, attr_float, attr_int, tensor};
use crate::passes::layout::{TO_NCHW, TO_NHWC, permute_bytes, transpose};
use crate::passes::{PassContext, PassManager};
use crate::runtime::{HostTensor, Model, Runtime};
use crate::settings::ExecutionProvider;

/// `models/<name>/model.onnx` of the checkout, e.g. `tiny("tiny-sd/unet")`.
pub(crate) fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name).join("model.onnx")
}

/// Deterministic values in [-1, 1) from `seed`.
pub(crate) fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
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

/// [`compare`] at batch 1, image-like axes of 16, other dynamic axes of 7.
pub(crate) fn compare_small(before: &OnnxModel, after: &OnnxModel, seed: u64) -> f64 {
    compare(before, after, seed, Sizes { batch: 1, spatial: 16, other: 7 })
}

/// Runs `manager` on `model` for the CPU EP.
pub(crate) fn run_passes(model: &mut OnnxModel, manager: PassManager) -> Vec<PassRecord> {
    manager.run(model, &PassContext::new(ExecutionProvider::Cpu)).unwrap()
}

/// The nodes of op `op` in `model`.
pub(crate) fn count(model: &OnnxModel, op: &str) -> usize {
    model.graph().node.iter().filter(|n| n.op_type() == op).count()
}

fn f32_init(name: &str, dims: &[usize], values: Vec<f32>) -> TensorProto {
    tensor::tensor_from_f32(name, &ArrayD::from_shape_vec(IxDyn(dims), values).unwrap())
}

fn i64_init(name: &str, values: &[i64]) -> TensorProto {
    tensor::tensor_from_i64(name, &ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap())
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeBuilder {
    NodeBuilder::new(op).inputs(inputs.iter().copied()).outputs(outputs.iter().copied())
}

/// Rewrites every `NhwcConv` into Transpose -> Conv -> Transpose and every channels-last `GroupNorm` /
/// `SkipGroupNorm` into standard ops (Transpose, Reshape, InstanceNormalization, Mul, Add, Sigmoid), so that
/// ONNX Runtime's CPU EP runs the graph; `BiasAdd` into two Adds. Written from the ops' definitions,
/// independently of the passes.
pub(crate) fn lower(model: &OnnxModel) -> OnnxModel {
    let mut proto: ModelProto = model.proto().clone();
    let g = proto.graph.mut_or_insert_default();
    let old = std::mem::take(&mut g.node);
    let mut inits: Vec<TensorProto> = Vec::new();
    let mut nodes = Vec::new();
    for (k, n) in old.into_iter().enumerate() {
        let p = format!("lower{k}_");
        let v = |s: &str| format!("{p}{s}");
        match (n.domain(), n.op_type()) {
            ("com.microsoft", "NhwcConv") => {
                let w = model.initializer(&n.input[1]).expect("NhwcConv weight is an initializer");
                let dims = tensor::dims(w).unwrap();
                let bytes = model.tensor_bytes(w).unwrap();
                let elem = tensor::elem_size(w.data_type()).unwrap();
                let (back, back_dims) = permute_bytes(&bytes, &dims, &[0, 3, 1, 2], elem);
                inits.push(tensor::tensor_from_raw(&v("w"), w.data_type(), &back_dims, Bytes::from(back)));
                nodes.push(transpose(&n.input[0], &v("x"), &TO_NCHW));
                let mut inputs = vec![v("x"), v("w")];
                inputs.extend(n.input.get(2).cloned());
                let mut conv = NodeBuilder::new("Conv").inputs(inputs).outputs([v("y")]).build();
                conv.attribute = n.attribute.clone();
                nodes.push(conv);
                nodes.push(transpose(&v("y"), &n.output[0], &TO_NHWC));
            }
            ("com.microsoft", op @ ("GroupNorm" | "SkipGroupNorm")) => {
                assert_eq!(attr_int(&n, "channels_last"), Some(1));
                let groups = attr_int(&n, "groups").unwrap();
                let eps = attr_float(&n, "epsilon").unwrap();
                let gamma = model.initializer_f32(&n.input[1]).unwrap();
                let beta = model.initializer_f32(&n.input[2]).unwrap();
                let c = gamma.len();
                inits.push(f32_init(&v("gamma"), &[c, 1, 1], gamma.iter().copied().collect()));
                inits.push(f32_init(&v("beta"), &[c, 1, 1], beta.iter().copied().collect()));
                inits.push(f32_init(&v("ones"), &[groups as usize], vec![1.0; groups as usize]));
                inits.push(f32_init(&v("zeros"), &[groups as usize], vec![0.0; groups as usize]));
                inits.push(i64_init(&v("grouped"), &[0, groups, -1]));
                let x = if op == "SkipGroupNorm" {
                    let sum = n.output.get(1).filter(|s| !s.is_empty()).cloned().unwrap_or(v("sum"));
                    match n.input.get(4).filter(|b| !b.is_empty()) {
                        None => nodes.push(node("Add", &[&n.input[0], &n.input[3]], &[&sum]).build()),
                        Some(b) => {
                            nodes.push(node("Add", &[&n.input[0], &n.input[3]], &[&v("sum0")]).build());
                            nodes.push(node("Add", &[&v("sum0"), b], &[&sum]).build());
                        }
                    }
                    sum
                } else {
                    n.input[0].clone()
                };
                nodes.extend([
                    transpose(&x, &v("xn"), &TO_NCHW),
                    node("Reshape", &[&v("xn"), &v("grouped")], &[&v("r")]).build(),
                    node("InstanceNormalization", &[&v("r"), &v("ones"), &v("zeros")], &[&v("in")])
                        .attr_float("epsilon", eps)
                        .build(),
                    node("Shape", &[&v("xn")], &[&v("shape")]).build(),
                    node("Reshape", &[&v("in"), &v("shape")], &[&v("yb")]).build(),
                    node("Mul", &[&v("yb"), &v("gamma")], &[&v("ym")]).build(),
                    node("Add", &[&v("ym"), &v("beta")], &[&v("ya")]).build(),
                ]);
                let y = if attr_int(&n, "activation") == Some(1) {
                    nodes.push(node("Sigmoid", &[&v("ya")], &[&v("sg")]).build());
                    nodes.push(node("Mul", &[&v("ya"), &v("sg")], &[&v("silu")]).build());
                    v("silu")
                } else {
                    v("ya")
                };
                nodes.push(transpose(&y, &n.output[0], &TO_NHWC));
            }
            ("com.microsoft", "BiasAdd") => {
                nodes.push(node("Add", &[&n.input[0], &n.input[1]], &[&v("xb")]).build());
                nodes.push(node("Add", &[&v("xb"), &n.input[2]], &[&n.output[0]]).build());
            }
            _ => nodes.push(n),
        }
    }
    g.node = nodes;
    g.initializer.extend(inits);
    OnnxModel::from_proto(proto, model.path().and_then(|p| p.parent()))
}

/// Deterministic standard-normal values from `seed` (Box-Muller on uniform ones).
pub(crate) fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (a, b): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
        })
        .collect()
}

pub(crate) fn array(shape: &[usize], seed: u64) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), normal(shape.iter().product(), seed)).unwrap()
}

/// Saves `model` and runs it on ONNX Runtime's CPU EP.
pub(crate) fn run(
    model: &OnnxModel,
    dir: &Path,
    name: &str,
    feeds: &[(String, ArrayD<f32>)],
) -> HashMap<String, ArrayD<f32>> {
    let path = dir.join(format!("{name}.onnx"));
    model.save(&path).unwrap();
    let runtime = Runtime::new(ExecutionProvider::Cpu, None).expect("ONNX Runtime loads");
    let mut session = runtime.load(&path).unwrap();
    let feeds = feeds.iter().map(|(n, a)| (n.as_str(), HostTensor::F32(a.clone()))).collect();
    session.run(feeds).unwrap()
}
