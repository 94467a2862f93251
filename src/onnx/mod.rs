//! ONNX models: reading and writing them (external data and > 2 GB models included), an index over a
//! graph for passes, and the patch mechanism every graph rewrite goes through.
//!
//! - [`OnnxModel`] (`model.rs`): load / save, tensor bytes wherever they live (inline, typed fields,
//!   memory-mapped external data), tensors as `ndarray`s.
//! - [`GraphIndex`] (`graph.rs`): producers, consumers, constants, attributes of a graph, read-only.
//! - [`Patch`] / [`apply_patch`] (`patch.rs`): what a pass wants changed, applied in one place.
//! - [`infer`]: a small shape / type / constant inference over the ops of exported diffusion graphs.
//! - `proto`: the protobuf types, generated at build time from the vendored `onnx.proto`.
//!
//! Passes themselves live in [`crate::passes`].
//!
//! # A pass, worked through
//!
//! A pass looks at the model through a [`GraphIndex`] and returns a [`Patch`]; it never edits the
//! graph itself. This one removes `Neg(Neg(x))`:
//!
//! ```text
//!   x ──Neg──Neg──> y        becomes        x ──> (every reader of y)
//! ```
//!
//! ```
//! use dfast::onnx::{GraphIndex, ModelProto, NodeBuilder, OnnxModel, Patch, dtype, is_op, make_tensor_value_info};
//! use dfast::passes::{BuildContext, NoOptions, Pass, PassContext, PassManager, PassSpec};
//! use dfast::settings::ExecutionProvider;
//!
//! struct DoubleNegation;
//!
//! // Its name, one-line summary and options (none); a real pass is also listed in passes::registry::PASSES.
//! impl PassSpec for DoubleNegation {
//!     const NAME: &'static str = "double-negation";
//!     const SUMMARY: &'static str = "Neg(Neg(x)) becomes x";
//!     type Options = NoOptions;
//!     fn build(_: NoOptions, _: &BuildContext) -> dfast::Result<Self> {
//!         Ok(DoubleNegation)
//!     }
//! }
//!
//! impl Pass for DoubleNegation {
//!     fn run(&self, model: &OnnxModel, _ctx: &PassContext) -> dfast::Result<Option<Patch>> {
//!         let index = GraphIndex::new(model);
//!         let mut patch = Patch::new();
//!         for (i, outer) in index.nodes().iter().enumerate() {
//!             // Match on dataflow, not names: a Neg fed by a Neg.
//!             if !is_op(outer, "Neg") || patch.is_removed(i) {
//!                 continue;
//!             }
//!             let Some(inner) = index.producer_op(&outer.input[0], "Neg") else { continue };
//!             let x = &index.node(inner).input[0];
//!             // Never claim a node twice in one patch; a graph output must stay nameable.
//!             if patch.is_removed(inner) || !index.can_shunt(&outer.output[0], x) {
//!                 continue;
//!             }
//!             // Every reader of the outer Neg now reads x; the inner Neg dies if nobody else reads it.
//!             patch.shunt(outer.output[0].clone(), x.clone());
//!             patch.remove_node(i);
//!             patch.count_rewrite();
//!         }
//!         Ok((!patch.is_empty()).then_some(patch))
//!     }
//! }
//!
//! // x -> Neg -> Neg -> Relu -> y, built in memory (a real conversion starts from OnnxModel::load).
//! let mut proto = ModelProto::new();
//! proto.set_ir_version(8);
//! let graph = proto.graph.mut_or_insert_default();
//! graph.input.push(make_tensor_value_info("x", dtype::FLOAT, Some(&[None, Some(4)])));
//! graph.output.push(make_tensor_value_info("y", dtype::FLOAT, None));
//! graph.node.push(NodeBuilder::new("Neg").inputs(["x"]).outputs(["a"]).build());
//! graph.node.push(NodeBuilder::new("Neg").inputs(["a"]).outputs(["b"]).build());
//! graph.node.push(NodeBuilder::new("Relu").inputs(["b"]).outputs(["y"]).build());
//! let mut model = OnnxModel::from_proto(proto, None);
//!
//! // The manager runs the pass until it returns nothing, and says what changed (for the manifest).
//! let records = PassManager::new().with(DoubleNegation).run(&mut model, &PassContext::new(ExecutionProvider::Cuda))?;
//! assert_eq!((records[0].nodes_before, records[0].nodes_after, records[0].rewrites), (3, 1, 1));
//! assert_eq!(model.graph().node[0].input[0], "x");
//! // model.save("out/unet/model.onnx")? would write it (with model.onnx_data if it had external data).
//! # Ok::<(), dfast::Error>(())
//! ```
//!
//! What else a pass has at hand:
//! - shapes, element types and small constant values: [`infer::Inference::run`]`(&index)`;
//! - weights: [`OnnxModel::initializer_f32`] / [`OnnxModel::tensor_bytes`] (memory-mapped, never copied
//!   whole), new ones from arrays with [`tensor::tensor_from_f32`] / `_f16` / `_i64` / `_i8`, given to
//!   [`Patch::add_initializer`] (same name = replace);
//! - fresh value names: [`Patch::fresh_name`]; contrib ops: `NodeBuilder::domain("com.microsoft")` plus
//!   [`Patch::require_opset`]; changed input/output types: [`Patch::set_value_info`].

#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications, unreachable_pub)]
pub mod proto {
    //! Types generated from `src/onnx/onnx.proto` (ONNX IR 10+) by `protobuf-codegen` in `build.rs`.
    //! Unknown fields are kept (`special_fields`), so a round trip loses nothing.
    include!(concat!(env!("OUT_DIR"), "/onnx_proto/mod.rs"));
}

mod graph;
pub mod infer;
mod model;
mod patch;
pub mod tensor;

#[cfg(test)]
mod tests;

pub use graph::{
    GraphIndex, NodeBuilder, attr, attr_float, attr_floats, attr_graph, attr_int, attr_ints, attr_string, attr_tensor,
    constant_node_tensor, is_op, make_attr_float, make_attr_floats, make_attr_int, make_attr_ints, make_attr_string,
    make_attr_tensor, make_opset, make_tensor_value_info, outer_references,
};
pub use model::{DEFAULT_SIZE_THRESHOLD, EXTERNAL_DATA_THRESHOLD, ExternalData, OnnxModel, SaveOptions, SaveReport};
pub use patch::{Patch, PatchStats, apply_patch};
pub use proto::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    ValueInfoProto,
};
pub use tensor::{DataType, dtype};
