//! Int8 weights, shared by int8-dynamic and int8-static.
//!
//! Full range: symmetric int8 in [-127, 127]. Reduced range (`reduce_range`): [-64, 64], the 7-bit weights of
//! ONNX Runtime's own quantizer (`quantize_dynamic(reduce_range=True)`, `get_qmin_qmax_for_qType`). On x86-64
//! CPUs without VNNI (AVX2, AVX-512 before VNNI) ONNX Runtime multiplies uint8 activations by int8 weights
//! with `vpmaddubsw` (MLAS `QgemmU8X8KernelAvx2.S`), which adds two u8 x s8 products into a *saturating*
//! int16: 2 x 255 x 127 = 64770 does not fit, 2 x 255 x 64 = 32640 does, so weights of magnitude 64 or less
//! are never clamped there. VNNI (`vpdpbusd`) sums four products into int32 and never saturates.

/// The largest int8 magnitude a symmetric scale maps to.
const QMAX: f32 = 127.0;

/// The largest magnitude of reduced-range weights: 2 x 255 x 64 fits int16 (32767), 2 x 255 x 65 does not.
const QMAX_REDUCED: f32 = 64.0;

/// Symmetric per-column int8 of a row-major float32 [k, n] matrix given as little-endian bytes: scale_j =
/// max_i |w_ij| / q, q_ij = round_half_even(w_ij / scale_j), with q = 127, or 64 with `reduce_range`.
/// Returns the int8 values (as bytes) and the scales, or None when a value is not finite.
pub(crate) fn quantize_per_column(bytes: &[u8], k: usize, n: usize, reduce_range: bool) -> Option<(Vec<u8>, Vec<f32>)> {
    let qmax = if reduce_range { QMAX_REDUCED } else { QMAX };
    let row_bytes = n.checked_mul(4)?;
    if n == 0 || bytes.len() != k.checked_mul(row_bytes)? {
        return None;
    }
    let value = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    let mut absmax = vec![0f32; n];
    for row in bytes.chunks_exact(row_bytes) {
        for (m, c) in absmax.iter_mut().zip(row.chunks_exact(4)) {
            let v = value(c);
            if !v.is_finite() {
                return None;
            }
            *m = m.max(v.abs());
        }
    }
    // A column of zeros (or of values so small that the scale would not be a normal float) quantizes to 0
    // with scale 1: dividing by a zero or subnormal scale would give infinities.
    let scales: Vec<f32> = absmax.iter().map(|&m| if (m / qmax).is_normal() { m / qmax } else { 1.0 }).collect();
    let live: Vec<bool> = absmax.iter().map(|&m| (m / qmax).is_normal()).collect();
    let mut values = Vec::with_capacity(k * n);
    for row in bytes.chunks_exact(row_bytes) {
        for ((c, &s), &l) in row.chunks_exact(4).zip(&scales).zip(&live) {
            let q = if l { (value(c) / s).round_ties_even().clamp(-qmax, qmax) } else { 0.0 };
            values.push(q as i8 as u8);
        }
    }
    Some((values, scales))
}
