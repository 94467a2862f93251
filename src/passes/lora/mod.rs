//! LoRA merge (`dfast convert --lora FILE [--lora-scale S]`): each module's low-rank update added into the weight
//! it changes, in the UNet and the text encoders, before any other pass (fuse-qkv concatenates and int8
//! quantizes the merged weights).
//!
//! ```text
//!   TorchScript and dynamo linears (the exporter stores W transposed, [in, out]):
//!     x ─► MatMul(x, W)                 ─►  x ─► MatMul(x, W + s · (up · down)ᵀ)
//!   linears exported as Gemm (time embeddings), W as torch holds it, [out, in]:
//!     x ─► Gemm(x, W, b, transB=1)      ─►  x ─► Gemm(x, W + s · up · down, b, transB=1)
//!   convolutions, W [out, in, kh, kw], down [rank, in, kh, kw], up [out, rank, 1, 1]:
//!     x ─► Conv(x, W, b)                ─►  x ─► Conv(x, W + s · reshape(up · down), b)
//!
//!   s = --lora-scale · alpha / rank            (the nodes stay; only the weight initializers change)
//! ```
//!
//! Which node a LoRA module is: the module path of the node that reads the weight, from (in this order) the
//! dynamo exporter's `pkg.torch.onnx.name_scopes` metadata, the TorchScript exporter's scope in the node name
//! (`/unet/down_blocks.0/attentions.0/transformer_blocks.0/attn1/to_q/MatMul`, whose weight is the anonymous
//! `onnx::MatMul_NNNN`), or the weight's own name (`unet.conv_in.weight`). A LoRA's module path matches the
//! node whose path ends with it (the export wrapper adds a prefix such as `unet.`; `text_model.`, which
//! transformers 5 no longer has, is ignored on both sides). The weight's layout comes from the op that reads
//! it, never from its shape, so square weights are not mistaken.
//!
//! Not a fixed-point rewrite: merging adds, so the pass runs once ([`super::run_once`]).

pub mod file;

use std::collections::{BTreeMap, HashMap};

use ndarray::{Array2, ArrayD, IxDyn};

use file::KeyStyle;
pub use file::{LoraFile, LoraModule};

use super::{Pass, PassContext};
use crate::manifest::LoraRecord;
use crate::onnx::attr_int;
use crate::onnx::tensor::{dtype, tensor_from_f16, tensor_from_f32};
use crate::onnx::{GraphIndex, OnnxModel, Patch};
use crate::{Error, Result};

/// Merges the modules of some LoRA files that belong to one component.
pub struct LoraMerge {
    component: String,
    files: Vec<LoraFile>,
}

impl LoraMerge {
    pub const NAME: &'static str = "lora";

    /// The manifest's record of a LoRA file.
    pub fn record(file: &LoraFile) -> LoraRecord {
        LoraRecord { file: file.name(), sha256: file.sha256.clone(), scale: file.scale }
    }

    /// The merge of `files` into `component` (only the modules of that component are kept); `None` when no file
    /// changes it.
    pub fn new(component: &str, files: &[LoraFile]) -> Option<Self> {
        let files: Vec<LoraFile> = files
            .iter()
            .map(|f| LoraFile {
                modules: f.modules.iter().filter(|m| m.component == component).cloned().collect(),
                ..f.clone()
            })
            .filter(|f| !f.modules.is_empty())
            .collect();
        (!files.is_empty()).then(|| LoraMerge { component: component.to_string(), files })
    }
}

/// How a weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// As torch holds it: `[out, in, (kh, kw)]` (Conv, Gemm with transB=1).
    OutIn,
    /// Transposed, `[in, out]` (MatMul's right input, Gemm without transB).
    InOut,
}

/// A node that reads a weight a LoRA can change.
#[derive(Debug, Clone)]
struct Target {
    node: usize,
    weight: String,
    layout: Layout,
    dims: Vec<usize>,
    path: String,
}

/// Every MatMul, Gemm and Conv whose weight is an initializer, with its module path.
fn targets(index: &GraphIndex) -> Vec<Target> {
    let mut out = Vec::new();
    for (i, node) in index.nodes().iter().enumerate() {
        let layout = match node.op_type() {
            "MatMul" => Layout::InOut,
            "Gemm" if attr_int(node, "transB") == Some(1) => Layout::OutIn,
            "Gemm" => Layout::InOut,
            "Conv" => Layout::OutIn,
            _ => continue,
        };
        let Some(weight) = node.input.get(1) else { continue };
        let Some(tensor) = index.initializer(weight) else { continue };
        let dims: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
        if dims.len() < 2 || (layout == Layout::InOut && dims.len() != 2) {
            continue;
        }
        if let Some(path) = module_path(node, weight) {
            out.push(Target { node: i, weight: weight.clone(), layout, dims, path: canonical(&path) });
        }
    }
    out
}

/// The module path of the node reading `weight` (see the module docs).
fn module_path(node: &crate::onnx::proto::onnx::NodeProto, weight: &str) -> Option<String> {
    if let Some(scopes) = node.metadata_props.iter().find(|p| p.key() == "pkg.torch.onnx.name_scopes") {
        // A Python list of strings: ['', 'unet', 'unet.conv_in', 'conv2d']; the last is the op's own name.
        let names: Vec<&str> = scopes.value().split('\'').skip(1).step_by(2).collect();
        if names.len() >= 2 && !names[names.len() - 2].is_empty() {
            return Some(names[names.len() - 2].to_string());
        }
    }
    let name = node.name();
    if let Some(scope) = name.strip_prefix('/') {
        let parts: Vec<&str> = scope.split('/').collect();
        if parts.len() >= 2 {
            return Some(parts[..parts.len() - 1].join("."));
        }
    }
    weight.strip_suffix(".weight").map(str::to_string)
}

/// A module path without `text_model` (transformers 4's CLIP text models have it, transformers 5's do not).
fn canonical(path: &str) -> String {
    path.split('.').filter(|s| *s != "text_model").collect::<Vec<_>>().join(".")
}

/// Targets by every dotted and underscored suffix of their module paths.
struct Lookup {
    dotted: HashMap<String, Vec<usize>>,
    underscored: HashMap<String, Vec<usize>>,
}

impl Lookup {
    fn new(targets: &[Target]) -> Self {
        let mut lookup = Lookup { dotted: HashMap::new(), underscored: HashMap::new() };
        for (t, target) in targets.iter().enumerate() {
            let parts: Vec<&str> = target.path.split('.').collect();
            for start in 0..parts.len() {
                lookup.dotted.entry(parts[start..].join(".")).or_default().push(t);
                lookup.underscored.entry(parts[start..].join("_")).or_default().push(t);
            }
        }
        lookup
    }

    /// The targets a LoRA module names (several nodes may read one weight).
    fn find(&self, module: &LoraModule) -> &[usize] {
        let found = match module.style {
            KeyStyle::Dotted => self.dotted.get(&canonical(&module.path)),
            KeyStyle::Underscored => {
                let path = module.path.strip_prefix("text_model_").unwrap_or(&module.path);
                self.underscored.get(path)
            }
        };
        found.map_or(&[], Vec::as_slice)
    }
}

/// `up · down` as `[out, in · kh · kw]`, times `scale`.
fn delta(module: &LoraModule, scale: f32) -> Array2<f32> {
    let rank = module.rank();
    let out = module.up.0[0];
    let cols = module.down.1.len() / rank;
    let up = Array2::from_shape_vec((out, rank), module.up.1.clone()).expect("checked shape");
    let down = Array2::from_shape_vec((rank, cols), module.down.1.clone()).expect("checked shape");
    up.dot(&down) * scale
}

/// Why `module` does not fit `target`'s weight, if it does not.
fn misfit(module: &LoraModule, target: &Target) -> Option<String> {
    let out = module.up.0[0];
    let down_in = &module.down.0[1..];
    let (w_out, w_in) = match target.layout {
        Layout::OutIn => (target.dims[0], &target.dims[1..]),
        Layout::InOut => (target.dims[1], &target.dims[..1]),
    };
    // A linear LoRA on a 1x1 convolution, or a 1x1 convolution's LoRA on a linear, fits.
    let squeeze = |d: &[usize]| -> Vec<usize> {
        let mut d = d.to_vec();
        while d.len() > 1 && d.last() == Some(&1) {
            d.pop();
        }
        d
    };
    if out == w_out && squeeze(down_in) == squeeze(w_in) {
        return None;
    }
    let mut lora = vec![out];
    lora.extend_from_slice(down_in);
    let mut weight = vec![w_out];
    weight.extend_from_slice(w_in);
    Some(format!("the LoRA is for a weight of shape {lora:?} (out, in, ...), the model's is {weight:?}"))
}

impl Pass for LoraMerge {
    fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> Result<Option<Patch>> {
        let index = GraphIndex::new(model);
        let targets = targets(&index);
        let lookup = Lookup::new(&targets);
        // Sum of the updates per weight, in the weight's own layout.
        let mut updates: BTreeMap<String, (ArrayD<f32>, Vec<usize>)> = BTreeMap::new();
        let mut patch = Patch::new();
        for file in &self.files {
            let mut problems: Vec<String> = Vec::new();
            let mut merged = 0usize;
            for module in &file.modules {
                let found = lookup.find(module);
                let weights: std::collections::BTreeSet<&str> =
                    found.iter().map(|&t| targets[t].weight.as_str()).collect();
                let problem = match weights.len() {
                    0 => Some(format!("the {} has no module `{}`", self.component, module.path)),
                    1 => misfit(module, &targets[found[0]]),
                    _ => Some(format!(
                        "module `{}` is ambiguous in the {}: {} weights match it",
                        module.path,
                        self.component,
                        weights.len()
                    )),
                };
                if let Some(problem) = problem {
                    problems.push(format!("key `{}`: {problem}", module.key));
                    continue;
                }
                let target = &targets[found[0]];
                let d = delta(module, file.scale * module.alpha_scale);
                let d = match target.layout {
                    Layout::OutIn => d.into_shape_with_order(IxDyn(&target.dims)).expect("checked shape"),
                    Layout::InOut => d.t().to_owned().into_dyn(),
                };
                let nodes: Vec<usize> = found.iter().map(|&t| targets[t].node).collect();
                match updates.get_mut(&target.weight) {
                    Some((sum, _)) => *sum += &d,
                    None => {
                        updates.insert(target.weight.clone(), (d, nodes));
                    }
                }
                merged += 1;
            }
            if let Some(first) = problems.first() {
                if merged == 0 {
                    return Err(Error::bad_file(
                        &file.path,
                        format!(
                            "is a LoRA for another architecture: none of its {} {} modules fits this pipeline's {} \
                             ({first})",
                            file.modules.len(),
                            self.component,
                            self.component
                        ),
                    ));
                }
                let more = match problems.len() {
                    1 => String::new(),
                    n => format!(" (and {} more keys that do not fit)", n - 1),
                };
                return Err(Error::bad_file(&file.path, format!("{first}{more}")));
            }
        }
        for (weight, (update, nodes)) in updates {
            let tensor = index.initializer(&weight).expect("a target's weight is an initializer");
            let merged = model.tensor_f32(tensor)? + &update;
            let shared = index.consumers(&weight).iter().any(|c| !nodes.contains(c));
            let name = if shared { patch.fresh_name(&index, &format!("{weight}.lora")) } else { weight.clone() };
            let merged = match tensor.data_type() {
                dtype::FLOAT => tensor_from_f32(&name, &merged),
                dtype::FLOAT16 => tensor_from_f16(&name, &merged),
                other => {
                    return Err(Error::bad_input(format!(
                        "the {}'s weight `{weight}` is {}: LoRAs merge into float32 or float16 weights",
                        self.component,
                        crate::onnx::tensor::dtype_name(other)
                    )));
                }
            };
            patch.add_initializer(merged);
            if shared {
                // Another node reads the same weight: only the LoRA's nodes read the merged copy.
                for &n in &nodes {
                    let mut node = index.node(n).clone();
                    node.input[1] = name.clone();
                    patch.remove_node(n);
                    patch.add_node(node);
                }
            }
            patch.count_rewrite();
        }
        Ok(Some(patch))
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!(
            self.files
                .iter()
                .map(|f| serde_json::json!({"file": f.name(), "sha256": f.sha256, "scale": f.scale, "modules": f.modules.len()}))
                .collect::<Vec<_>>()
        )
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array2, ArrayD};

    use super::file::{KeyStyle, LoraFile, LoraModule};
    use super::*;
    use crate::onnx::proto::onnx::ModelProto;
    use crate::onnx::{NodeBuilder, make_tensor_value_info, tensor};
    use crate::passes::testing::noise;
    use crate::settings::ExecutionProvider;

    fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        Array2::from_shape_vec((rows, cols), noise(rows * cols, seed)).unwrap()
    }

    /// x [2, 3] read by `/m/lin/MatMul` and `/m/other/MatMul` through one weight `w` [3, 4] (as the TorchScript
    /// exporter shares equal weights), and by `/m/gemm/Gemm` with `g` [3, 4] and no transB.
    fn graph(w: &Array2<f32>, g: &Array2<f32>) -> OnnxModel {
        let mut m = ModelProto::new();
        m.set_ir_version(8);
        m.opset_import.push(crate::onnx::make_opset("", 17));
        let graph = m.graph.mut_or_insert_default();
        graph.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[Some(2), Some(3)])));
        for out in ["y", "z", "v"] {
            graph.output.push(make_tensor_value_info(out, dtype::FLOAT, None));
        }
        graph.initializer.push(tensor::tensor_from_f32("w", &w.clone().into_dyn()));
        graph.initializer.push(tensor::tensor_from_f32("g", &g.clone().into_dyn()));
        for (name, op, weight, out) in [
            ("/m/lin/MatMul", "MatMul", "w", "y"),
            ("/m/other/MatMul", "MatMul", "w", "z"),
            ("/m/gemm/Gemm", "Gemm", "g", "v"),
        ] {
            graph.node.push(NodeBuilder::new(op).name(name).inputs(["x", weight]).outputs([out]).build());
        }
        OnnxModel::from_proto(m, None)
    }

    fn module(path: &str, down: &Array2<f32>, up: &Array2<f32>) -> LoraModule {
        LoraModule {
            component: "unet",
            path: path.into(),
            style: KeyStyle::Dotted,
            key: format!("unet.{path}.lora_A.weight"),
            down: (down.shape().to_vec(), down.iter().copied().collect()),
            up: (up.shape().to_vec(), up.iter().copied().collect()),
            alpha_scale: 0.5,
        }
    }

    /// A MatMul's weight is stored [in, out], so the update is added transposed; a weight another node also reads
    /// is copied for the LoRA's node only; a Gemm without transB is transposed too.
    #[test]
    fn updates_land_transposed_and_shared_weights_are_copied() {
        let (w, g) = (matrix(3, 4, 1), matrix(3, 4, 2));
        let (down, up) = (matrix(2, 3, 3), matrix(4, 2, 4));
        let mut model = graph(&w, &g);
        let file = LoraFile {
            path: "t.safetensors".into(),
            sha256: String::new(),
            scale: 3.0,
            modules: vec![module("lin", &down, &up), module("gemm", &down, &up)],
        };
        let merge = LoraMerge::new("unet", &[file]).unwrap();
        let ctx = PassContext::new(ExecutionProvider::Cpu);
        let record = crate::passes::run_once(LoraMerge::NAME, &merge, &mut model, &ctx).unwrap();
        assert_eq!(record.rewrites, 2);
        let update = (up.dot(&down) * 1.5).t().to_owned();
        let weight_of = |node: &str| {
            let n = model.graph().node.iter().find(|n| n.name() == node).unwrap();
            (n.input[1].clone(), model.initializer_f32(&n.input[1]).unwrap())
        };
        let close = |a: &ArrayD<f32>, b: &Array2<f32>| a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() < 1e-6);
        let (lin, merged) = weight_of("/m/lin/MatMul");
        assert_ne!(lin, "w", "the shared weight is copied");
        assert!(close(&merged, &(&w + &update)));
        let (other, kept) = weight_of("/m/other/MatMul");
        assert_eq!(other, "w");
        assert!(close(&kept, &w), "the other reader keeps the unmerged weight");
        let (_, gemm) = weight_of("/m/gemm/Gemm");
        assert!(close(&gemm, &(&g + &update)));
        assert_eq!(gemm.shape(), &[3, 4]);
    }
}
