//! `dfast inspect`: what is in a model or pipeline folder: op counts, parameters, the `(in, out)` shapes of
//! every MatMul / Gemm / Conv weight (the raw material of int8 exclude lists), attention blocks found and
//! fused, and FLOPs at a given image size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::onnx::infer::Inference;
use crate::onnx::{GraphIndex, OnnxModel, attr_int, tensor};
use crate::{Error, Result};

/// One weight shape and how often it occurs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct WeightShape {
    /// `MatMul`, `Gemm`, `Conv1x1`, `Conv3x3`, ...
    pub op: String,
    pub in_features: usize,
    pub out_features: usize,
    pub count: usize,
}

/// What `inspect` reports for one ONNX model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub component: String,
    pub path: String,
    pub opset: i64,
    pub nodes: usize,
    pub ops: BTreeMap<String, usize>,
    pub parameters: u64,
    pub weight_shapes: Vec<WeightShape>,
    /// Attention blocks still decomposed (a Softmax between two MatMuls).
    pub attention_decomposed: usize,
    /// Fused attention ops (`MultiHeadAttention`, `Attention`).
    pub attention_fused: usize,
    /// Floating-point (and integer) multiply-adds x2 of MatMul, Gemm, Conv and attention at the given size.
    pub gflops: f64,
    /// Compute nodes whose shapes could not be worked out (their FLOPs are missing from `gflops`).
    pub nodes_without_shapes: usize,
}

/// The image size FLOPs are counted at; the denoiser (UNet, or PixArt's transformer) sees a batch of 2
/// (classifier-free guidance), so its FLOPs are those of one denoising step.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub width: usize,
    pub height: usize,
}

impl Size {
    /// The size FLOPs are counted at when none is given: a pipeline folder's own (the UNet's or transformer's
    /// `sample_size` times the VAE's scale factor), also for a model file inside one, else 512x512.
    pub fn default_for(path: &Path) -> Size {
        let folder = if path.is_file() { path.parent().and_then(Path::parent).unwrap_or(path) } else { path };
        let own = crate::pipeline::PipelineDir::open(folder).ok().and_then(|dir| {
            let config: crate::pipeline::DenoiserConfig = dir.config(dir.denoiser()).ok()?;
            let sample = config.sample_size?;
            Some(sample * dir.vae_scale_factor().ok()?)
        });
        let side = own.unwrap_or(512);
        Size { width: side, height: side }
    }
}

/// Inspects a model file, or every `*/model.onnx` of a pipeline folder.
pub fn inspect(path: &Path, size: Size) -> Result<Vec<ModelReport>> {
    if path.is_file() {
        let component =
            path.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tokens = path.parent().and_then(Path::parent).map_or(CLIP_TOKENS, text_tokens);
        return Ok(vec![inspect_model(path, &component, size, tokens)?]);
    }
    if !path.is_dir() {
        return Err(Error::bad_file(path, "no such file or folder; expected an ONNX model or a pipeline folder"));
    }
    let mut models: Vec<(String, PathBuf)> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, "cannot read", e))?
        .flatten()
        .filter(|e| e.path().join("model.onnx").is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path().join("model.onnx")))
        .collect();
    if models.is_empty() {
        return Err(Error::bad_file(path, "not an ONNX model or pipeline: no */model.onnx inside"));
    }
    models.sort();
    let tokens = text_tokens(path);
    models.iter().map(|(c, p)| inspect_model(p, c, size, tokens)).collect()
}

/// CLIP's prompt length.
const CLIP_TOKENS: usize = 77;

/// The prompt length text inputs have in the pipeline folder `dir`: PixArt's T5 takes 120 tokens, CLIP 77.
fn text_tokens(dir: &Path) -> usize {
    match crate::pipeline::PipelineDir::open(dir) {
        Ok(d) if d.kind == crate::pipeline::PipelineKind::PixArtAlpha => crate::pipeline::pixart::MAX_SEQUENCE_LENGTH,
        _ => CLIP_TOKENS,
    }
}

fn inspect_model(path: &Path, component: &str, size: Size, tokens: usize) -> Result<ModelReport> {
    let mut model = OnnxModel::load(path)?;
    let ops = model.op_histogram();
    let mut parameters = 0u64;
    for t in &model.graph().initializer {
        parameters += tensor::numel(t).unwrap_or(0) as u64;
    }
    let weight_shapes = weight_shapes(&model);
    let (attention_decomposed, attention_fused) = attention_counts(&model);
    concretize_inputs(&mut model, component, size, tokens);
    let (gflops, nodes_without_shapes) = flops(&model);
    Ok(ModelReport {
        component: component.to_string(),
        path: path.display().to_string(),
        opset: model.opset("").unwrap_or(0),
        nodes: model.node_count(),
        ops,
        parameters,
        weight_shapes,
        attention_decomposed,
        attention_fused,
        gflops,
        nodes_without_shapes,
    })
}

/// `(in, out)` of every constant weight of MatMul / MatMulInteger / Gemm / Conv, counted.
fn weight_shapes(model: &OnnxModel) -> Vec<WeightShape> {
    let index = GraphIndex::new(model);
    let mut counts: BTreeMap<(String, usize, usize), usize> = BTreeMap::new();
    for node in index.nodes() {
        let op = node.op_type();
        let Some(w) = node.input.get(1).and_then(|w| index.const_tensor(w)) else { continue };
        let dims: Vec<usize> = w.dims.iter().map(|&d| d.max(0) as usize).collect();
        let key = match (op, dims.as_slice()) {
            ("MatMul" | "MatMulInteger", [i, o]) => ("MatMul".to_string(), *i, *o),
            ("Gemm", [a, b]) => {
                let (i, o) = if attr_int(node, "transB").unwrap_or(0) != 0 { (*b, *a) } else { (*a, *b) };
                ("Gemm".to_string(), i, o)
            }
            ("Conv", [o, i_per_group, kh, kw]) => {
                let group = attr_int(node, "group").unwrap_or(1).max(1) as usize;
                (format!("Conv{kh}x{kw}"), i_per_group * group, *o)
            }
            _ => continue,
        };
        *counts.entry(key).or_default() += 1;
    }
    counts.into_iter().map(|((op, i, o), count)| WeightShape { op, in_features: i, out_features: o, count }).collect()
}

/// Decomposed attention: a Softmax whose probabilities a MatMul reads (P·V); scores may pass through a mask
/// (Add / Where) on the way in. Fused: MultiHeadAttention / Attention.
fn attention_counts(model: &OnnxModel) -> (usize, usize) {
    let index = GraphIndex::new(model);
    let mut decomposed = 0;
    let mut fused = 0;
    for node in index.nodes() {
        match node.op_type() {
            "MultiHeadAttention" | "Attention" | "PackedMultiHeadAttention" => fused += 1,
            "Softmax" => {
                let read_by_matmul = node
                    .output
                    .first()
                    .is_some_and(|o| index.consumers(o).iter().any(|&c| index.node(c).op_type() == "MatMul"));
                if read_by_matmul {
                    decomposed += 1;
                }
            }
            _ => {}
        }
    }
    (decomposed, fused)
}

/// Gives every dynamic input dimension a size: batch (2 for the UNet or transformer: guidance), `tokens`
/// tokens, and the image or latent size (latents are 1/8 of the image).
fn concretize_inputs(model: &mut OnnxModel, component: &str, size: Size, tokens: usize) {
    let batch = if component == "unet" || component == "transformer" { 2 } else { 1 };
    let initializers: std::collections::HashSet<String> =
        model.graph().initializer.iter().map(|t| t.name().to_string()).collect();
    for input in model.graph_mut().input.iter_mut() {
        if initializers.contains(input.name()) {
            continue;
        }
        let Some(ty) = input.type_.as_mut() else { continue };
        if !ty.has_tensor_type() {
            continue;
        }
        let Some(shape) = ty.mut_tensor_type().shape.as_mut() else { continue };
        let rank = shape.dim.len();
        let channels = shape.dim.get(1).and_then(|d| d.has_dim_value().then(|| d.dim_value()));
        for (axis, dim) in shape.dim.iter_mut().enumerate() {
            if dim.has_dim_value() {
                continue;
            }
            let value = match (rank, axis) {
                (_, 0) => batch,
                (4, 2) if channels == Some(3) => size.height,
                (4, 3) if channels == Some(3) => size.width,
                (4, 2) => size.height / 8,
                (4, 3) => size.width / 8,
                (2 | 3, 1) => tokens,
                _ => 1,
            };
            dim.set_dim_value(value as i64);
        }
    }
}

/// FLOPs (2 x multiply-adds) of MatMul, Gemm, Conv and fused attention, in GFLOP; plus how many such nodes
/// had no known shapes.
fn flops(model: &OnnxModel) -> (f64, usize) {
    let index = GraphIndex::new(model);
    let facts = Inference::run(&index);
    let shape = |v: &str| facts.facts(v).and_then(|f| f.static_shape());
    let mut total = 0f64;
    let mut unknown = 0;
    for node in index.nodes() {
        let out = node.output.first().and_then(|o| shape(o));
        let flops = match node.op_type() {
            "MatMul" | "MatMulInteger" | "MatMulIntegerToFloat" => {
                match (node.input.first().and_then(|a| shape(a)), out) {
                    (Some(a), Some(o)) if !a.is_empty() => {
                        Some(2.0 * o.iter().product::<usize>() as f64 * a[a.len() - 1] as f64)
                    }
                    _ => None,
                }
            }
            "Gemm" => match (node.input.first().and_then(|a| shape(a)), out) {
                (Some(a), Some(o)) if a.len() == 2 => {
                    let k = if attr_int(node, "transA").unwrap_or(0) != 0 { a[0] } else { a[1] };
                    Some(2.0 * o.iter().product::<usize>() as f64 * k as f64)
                }
                _ => None,
            },
            // NhwcConv's weight is [M, kH, kW, C/group], Conv's [M, C/group, kH, kW]: the same product.
            "Conv" | "NhwcConv" => match (node.input.get(1).and_then(|w| shape(w)), out) {
                (Some(w), Some(o)) if w.len() >= 3 => {
                    let per_output: usize = w[1..].iter().product();
                    Some(2.0 * o.iter().product::<usize>() as f64 * per_output as f64)
                }
                _ => None,
            },
            "MultiHeadAttention" | "Attention" => {
                // Q·K^T and P·V: 4 * batch * heads * s_q * s_kv * head_dim = 4 * s_kv * (elements of the output).
                let q = node.input.first().and_then(|q| shape(q));
                let k = node.input.get(1).and_then(|k| shape(k));
                match (q, k, out) {
                    (Some(q), Some(k), Some(o)) if q.len() == k.len() && q.len() >= 3 => {
                        let s_kv = if k.len() == 4 { k[2] } else { k[1] };
                        Some(4.0 * s_kv as f64 * o.iter().product::<usize>() as f64)
                    }
                    _ => None,
                }
            }
            _ => continue,
        };
        match flops {
            Some(f) => total += f,
            None => unknown += 1,
        }
    }
    (total / 1e9, unknown)
}

/// The report as text, one block per component.
pub fn render_text(reports: &[ModelReport], size: Size) -> String {
    let mut s = String::new();
    for r in reports {
        s += &format!(
            "{} ({}): opset {}, {} nodes, {:.2} M parameters, {:.2} GFLOP at {}x{}{}{}\n",
            r.component,
            r.path,
            r.opset,
            r.nodes,
            r.parameters as f64 / 1e6,
            r.gflops,
            size.width,
            size.height,
            if r.component == "unet" || r.component == "transformer" { " per step (batch 2)" } else { "" },
            if r.nodes_without_shapes > 0 {
                format!(" ({} compute nodes without known shapes)", r.nodes_without_shapes)
            } else {
                String::new()
            }
        );
        s += &format!("  attention: {} decomposed, {} fused\n", r.attention_decomposed, r.attention_fused);
        let mut ops: Vec<_> = r.ops.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let ops: Vec<String> = ops.iter().map(|(o, c)| format!("{o} {c}")).collect();
        s += &format!("  ops: {}\n", ops.join(", "));
        if !r.weight_shapes.is_empty() {
            s += "  weights (op in->out x count):";
            for w in &r.weight_shapes {
                s += &format!(" {} {}->{} x{};", w.op, w.in_features, w.out_features, w.count);
            }
            s += "\n";
        }
    }
    s
}
