//! The rewrite behind `--clip-skip` on SD text encoders, whose exports have no `hidden_states.N` outputs
//! (only SDXL's do): a copy of the final layer norm over the residual stream `k` layers before the last,
//! as a new graph output. diffusers computes the same: `final_layer_norm(hidden_states[-(k + 1)])`.
//!
//! ```text
//!   x_{L-k} ─┬─ LayerNorm ─ attention ─ Add ─┬─ LayerNorm ─ MLP ─ Add ─ ... ─ x_L ─ LayerNorm ─ last_hidden_state
//!            └─────────────────────────────┘ └───────────────────┘                 (γ, β, ε: final_layer_norm)
//!   emitted:
//!   x_{L-k} ─ LayerNorm (the final one's γ, β, axis, ε) ─ clip_skip.k     (a graph output)
//! ```
//!
//! Each CLIP layer adds two branches to the residual stream, so `x_{L-k}` is `2k` Adds up from the final
//! norm's input; at each Add the stream is the input that a LayerNormalization also reads (the branch's
//! pre-norm). Matched on dataflow only, so both exporter styles (TorchScript and dynamo, opset 17 and up,
//! where layer norms are `LayerNormalization` nodes) match.

use std::path::Path;

use super::conditioning::clip_skip_output;
use crate::onnx::{GraphIndex, NodeBuilder, OnnxModel, Patch, apply_patch, is_op};
use crate::{Error, Result};

/// Adds the output [`clip_skip_output`]`(k)` to a CLIP text encoder (see the module docs).
pub fn expose(model: &mut OnnxModel, k: usize) -> Result<()> {
    let output = clip_skip_output(k);
    let (node, info) = {
        let index = GraphIndex::new(model);
        let final_norm = index
            .producer_node("last_hidden_state")
            .filter(|n| is_op(n, "LayerNormalization"))
            .ok_or_else(|| Error::bad_input("`last_hidden_state` does not come from a LayerNormalization node"))?;
        let missing = || {
            Error::bad_input(format!(
                "the text encoder has no residual stream {k} layers before its last (it has fewer layers, or a \
                 structure dfast does not recognise)"
            ))
        };
        let read_by_norm =
            |value: &String| index.consumers(value).iter().any(|&c| is_op(index.node(c), "LayerNormalization"));
        let mut stream = final_norm.input[0].clone();
        for _ in 0..2 * k {
            let add = index.producer_node(&stream).filter(|n| is_op(n, "Add")).ok_or_else(missing)?;
            stream = add.input.iter().find(|v| read_by_norm(v)).cloned().ok_or_else(missing)?;
        }
        let mut node = NodeBuilder::new("LayerNormalization")
            .inputs(std::iter::once(stream).chain(final_norm.input[1..].iter().cloned()))
            .outputs([output.clone()])
            .build();
        node.attribute = final_norm.attribute.clone();
        let mut info = index.value_info("last_hidden_state").cloned().unwrap_or_default();
        info.set_name(output.clone());
        (node, info)
    };
    // The output first, so that the patch keeps the node that computes it.
    model.graph_mut().output.push(info);
    let mut patch = Patch::new();
    patch.add_node(node);
    apply_patch(model, patch)?;
    Ok(())
}

/// A copy of the text encoder at `path` with [`clip_skip_output`]`(k)`, written into `dir`; an error says
/// why the export cannot be rewritten.
pub fn rewrite_copy(path: &Path, k: usize, dir: &Path) -> Result<std::path::PathBuf> {
    let mut model = OnnxModel::load(path)?;
    expose(&mut model, k).map_err(|e| Error::bad_file(path, format!("--clip-skip {k} cannot be applied: {e}")))?;
    let out = dir.join("model.onnx");
    model.save(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On both exporter styles the new output is the final layer norm of `hidden_states[-(k + 1)]`, and
    /// nothing else changes: at k = 0 it equals `last_hidden_state`; at k = 1 it differs.
    #[test]
    fn the_exposed_output_is_the_final_norm_of_an_earlier_layer() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        for folder in ["tiny-sd", "tiny-sd-dynamo"] {
            let path = root.join(folder).join("text_encoder/model.onnx");
            for k in [0, 1] {
                let mut model = OnnxModel::load(&path).unwrap();
                expose(&mut model, k).unwrap();
                let outputs: Vec<&str> = model.graph().output.iter().map(|o| o.name()).collect();
                assert!(outputs.contains(&"last_hidden_state") && outputs.contains(&clip_skip_output(k).as_str()));
            }
            let mut model = OnnxModel::load(&path).unwrap();
            let err = expose(&mut model, 3).unwrap_err().to_string();
            assert!(err.contains("no residual stream 3 layers before its last"), "{err}");
        }
    }
}
