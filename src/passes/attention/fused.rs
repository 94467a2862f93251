//! What the matcher finds: one attention block (`Fused`) and the pieces it is read from.

use std::collections::HashMap;

/// One attention block, ready to be emitted.
#[derive(Debug)]
pub(super) struct Fused {
    /// The 3-D `[b, s, h·d]` projections.
    pub(super) query: String,
    pub(super) key: String,
    pub(super) value: String,
    pub(super) heads: i64,
    pub(super) scale: f64,
    pub(super) mask: Mask,
    /// The node whose first output (`output`, `[b, s, h·d]`) the fused op produces instead.
    pub(super) replaced: usize,
    pub(super) output: String,
}

/// The mask a block applies to its scores.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Mask {
    None,
    /// Key position <= query position (self-attention).
    Causal,
    /// A key padding mask: `mask` is `[b, t]`, 1 for keys to attend to and 0 for padding, and the scores of
    /// padded keys get `filter` added (after scaling).
    KeyPadding {
        mask: String,
        filter: f64,
    },
}

/// What an axis of a head-split tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Axis {
    Batch,
    Seq,
    Heads,
    HeadDim,
    /// The merged `h·d` of a 3-D projection.
    Hidden,
}

/// One entry of a shape tensor.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Elem {
    Known(i64),
    /// `Shape(tensor)[axis]`, read at run time.
    Dim(String, usize),
    Unknown,
}

/// A q, k or v head split traced back to its 3-D projection.
#[derive(Debug)]
pub(super) struct Heads {
    /// The 3-D `[b, s, h·d]` projection.
    pub(super) x: String,
    pub(super) heads: i64,
    pub(super) head_dim: i64,
    /// Axes of the matched value, as axes of the split `[b, s, h, d]`.
    pub(super) perm: [usize; 4],
    /// Scalar factors met on the way: (value, true when it divides).
    pub(super) factors: Vec<(String, bool)>,
    /// Values of the walk whose last axis is the head size (what a run-time scale chain reads).
    pub(super) head_last: Vec<String>,
    /// The sequence axis of each value of the walk (and of `x`).
    pub(super) seq_axes: HashMap<String, usize>,
}

/// Sizes the roles of a shape check stand for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sizes {
    pub(super) heads: i64,
    pub(super) head_dim: i64,
    pub(super) batch: Option<i64>,
    pub(super) seq: Option<i64>,
}

impl Sizes {
    pub(super) fn of(&self, axis: Axis) -> Option<i64> {
        match axis {
            Axis::Batch => self.batch,
            Axis::Seq => self.seq,
            Axis::Heads => Some(self.heads),
            Axis::HeadDim => Some(self.head_dim),
            Axis::Hidden => Some(self.heads * self.head_dim),
        }
    }
}
