//! The pass: every block the matcher finds becomes one fused op.

use std::collections::HashSet;

use super::Attention;
use super::FusedOp;
use super::fused::Mask;
use super::matcher::Matcher;
use crate::Result;
use crate::onnx::infer::Inference;
use crate::onnx::{GraphIndex, NodeBuilder, OnnxModel, Patch, dtype, is_op, make_tensor_value_info};
use crate::passes::{Pass, PassContext};

impl Pass for Attention {
    fn run(&self, model: &OnnxModel, ctx: &PassContext) -> Result<Option<Patch>> {
        let opset = model.opset("").unwrap_or(0);
        let emit = match self.op {
            FusedOp::MultiHeadAttention => FusedOp::MultiHeadAttention,
            FusedOp::Attention if opset >= 23 => FusedOp::Attention,
            FusedOp::Attention if ctx.target.runs_contrib_ops() => FusedOp::MultiHeadAttention,
            FusedOp::Attention => return Ok(None),
        };
        let index = GraphIndex::new(model);
        let facts = Inference::run(&index);
        let m = Matcher { index: &index, facts: &facts, opset };
        let mut names: HashSet<String> = index.nodes().iter().map(|n| n.name().to_string()).collect();
        let mut patch = Patch::new();
        let mut cast_added: HashSet<String> = HashSet::new();
        for (i, node) in index.nodes().iter().enumerate() {
            let found = if is_op(node, "Softmax") {
                m.decomposed(i)
            } else if is_op(node, "Attention") {
                m.native(i, emit)
            } else {
                None
            };
            let Some(f) = found else { continue };
            if patch.is_removed(f.replaced) {
                continue;
            }
            // ONNX `Attention` would need the padding mask as a bias broadcast to [b, h, s, t]: left as it is.
            if emit == FusedOp::Attention && matches!(f.mask, Mask::KeyPadding { .. }) {
                continue;
            }
            // The output is shaped like the query; saying so lets later passes (whose inference does not
            // know contrib ops) see its shape.
            if index.value_info(&f.output).is_none()
                && let (Some(dt), Some(shape)) = (facts.dtype(&f.query), facts.shape(&f.query))
            {
                patch.set_value_info(make_tensor_value_info(&f.output, dt, Some(shape)));
            }
            // Named after the block (`/unet/.../attn1/Softmax` -> `/unet/.../attn1/MultiHeadAttention`).
            let name = match node.name().rsplit_once('/') {
                Some((block, _)) => format!("{block}/{}", emit.name()),
                None => format!("{}_{}", node.name(), emit.name()),
            };
            let name = if node.name().is_empty() || !names.insert(name.clone()) { String::new() } else { name };
            let fused = match emit {
                FusedOp::MultiHeadAttention => {
                    let mut inputs = vec![f.query, f.key, f.value];
                    if let Mask::KeyPadding { mask, .. } = &f.mask {
                        // key_padding_mask is int32; one Cast per mask, shared by the blocks that read it.
                        let int32 = if facts.dtype(mask) == Some(dtype::INT32) {
                            mask.clone()
                        } else {
                            let cast = format!("{mask}_int32");
                            if cast_added.insert(cast.clone()) {
                                patch.add_node(
                                    NodeBuilder::new("Cast")
                                        .name(format!("{mask}/CastToInt32"))
                                        .inputs([mask.clone()])
                                        .outputs([cast.clone()])
                                        .attr_int("to", i64::from(dtype::INT32))
                                        .build(),
                                );
                            }
                            cast
                        };
                        inputs.extend([String::new(), int32]);
                    }
                    let b = NodeBuilder::new("MultiHeadAttention")
                        .domain("com.microsoft")
                        .name(name)
                        .inputs(inputs)
                        .outputs([f.output])
                        .attr_int("num_heads", f.heads)
                        .attr_float("scale", f.scale as f32);
                    patch.require_opset("com.microsoft", 1);
                    match f.mask {
                        Mask::Causal => b.attr_int("unidirectional", 1),
                        Mask::KeyPadding { filter, .. } => b.attr_float("mask_filter_value", filter as f32),
                        Mask::None => b,
                    }
                }
                FusedOp::Attention => {
                    patch.require_opset("", 23);
                    NodeBuilder::new("Attention")
                        .name(name)
                        .inputs([f.query, f.key, f.value])
                        .outputs([f.output])
                        .attr_int("q_num_heads", f.heads)
                        .attr_int("kv_num_heads", f.heads)
                        .attr_float("scale", f.scale as f32)
                        .attr_int("is_causal", i64::from(f.mask == Mask::Causal))
                }
            };
            patch.remove_node(f.replaced);
            patch.add_node(fused.build());
            patch.count_rewrite();
        }
        Ok((!patch.is_empty()).then_some(patch))
    }
}
