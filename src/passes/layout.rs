//! NCHW and NHWC, shared by the passes that change layouts (conv1x1, group-norm, nhwc-conv) and by the
//! int8 passes' weight layouts: the two permutations, the Transpose that applies one, and a tensor's bytes
//! permuted.

use ndarray::{ArrayViewD, IxDyn};

use crate::onnx::{NodeBuilder, NodeProto};

/// NCHW -> NHWC.
pub const TO_NHWC: [i64; 4] = [0, 2, 3, 1];
/// NHWC -> NCHW.
pub const TO_NCHW: [i64; 4] = [0, 3, 1, 2];

/// A `Transpose` of `input` by `perm`.
pub fn transpose(input: &str, output: &str, perm: &[i64]) -> NodeProto {
    NodeBuilder::new("Transpose").inputs([input]).outputs([output]).attr_ints("perm", perm).build()
}

/// Permutes a row-major tensor of `elem`-byte elements with shape `dims` by `perm` (output axis k is input
/// axis `perm[k]`); returns the bytes and the permuted shape. `bytes` holds `dims` (a caller's invariant).
pub fn permute_bytes(bytes: &[u8], dims: &[usize], perm: &[usize], elem: usize) -> (Vec<u8>, Vec<usize>) {
    // Each element's bytes are one more, innermost axis, which stays in place.
    let shape: Vec<usize> = dims.iter().copied().chain([elem]).collect();
    let axes: Vec<usize> = perm.iter().copied().chain([dims.len()]).collect();
    let view = ArrayViewD::from_shape(IxDyn(&shape), bytes).expect("the bytes of a tensor of these dims");
    let permuted = view.permuted_axes(IxDyn(&axes));
    (permuted.iter().copied().collect(), perm.iter().map(|&p| dims[p]).collect())
}
