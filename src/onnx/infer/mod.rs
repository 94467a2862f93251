//! A small shape, element-type and constant inference, enough for the rewrites of exported diffusion
//! graphs.
//!
//! Each value gets [`Facts`]: its element type, its shape (each dimension known or not), its value when
//! it is a small constant, and — for the 0-d/1-d integer tensors that shape arithmetic produces — each
//! element that is known even when others are not (`Shape` of a `[batch, heads, seq, 64]` tensor is
//! `[?, 8, ?, 64]`). That partial knowledge is what lets the TorchScript attention-scale chain
//! `Shape -> Slice[-1:] -> Cast -> Sqrt -> Div -> Cast -> Sqrt` be folded to a number while the batch and
//! sequence sizes stay dynamic.
//!
//! Only the ops in one table (`rules::RULES`, which [`understands`] reads too) are understood; anything
//! else gets no facts (beyond its declared value info), so a rewrite that needs facts simply does not
//! fire. Constants are evaluated exactly as ONNX Runtime would: float arithmetic is done in f64 and
//! rounded to the value's type after every op, which for +, -, *, / and sqrt gives the correctly rounded
//! float32 result.
//!
//! The phases live in submodules, each using only those listed before it: this file the vocabulary they
//! share (`Dim`, `Shape`, the size limit, the broadcasting comparisons), `shapes` the shape arithmetic,
//! `constant` evaluates constants ([`Const`]), `facts` what is known of a value ([`Facts`]) and what a rule
//! sees of a node (`Args`), `elementwise`, `structural`, `compute` and `contrib` (ONNX Runtime's contrib ops
//! the passes emit, and quantization) the per-op shape/type rules, `rules` the table of ops with dispatch,
//! `inference` the walk over a graph ([`Inference`]).

mod compute;
mod constant;
mod contrib;
mod elementwise;
mod facts;
mod inference;
mod rules;
mod shapes;
mod structural;

pub use constant::{Const, Values};
pub use facts::Facts;
pub use inference::Inference;
pub use rules::understands;
pub use shapes::broadcast_shapes;

/// Constants with more elements than this are not evaluated (folding must not blow up the model).
pub const MAX_CONST_ELEMENTS: usize = 1 << 16;

/// One dimension: its size when known.
pub type Dim = Option<i64>;
/// A shape: one [`Dim`] per axis.
pub type Shape = Vec<Dim>;

/// Elementwise ops with broadcasting whose output is bool (constant folding and the shape rules both
/// read it).
pub(super) const BROADCAST_BOOL: &[&str] =
    &["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"];
