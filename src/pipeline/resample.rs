//! Pillow's `Image.resize(size, Image.LANCZOS)` on 8-bit images, bit for bit: the resize diffusers'
//! `VaeImageProcessor` makes (its `resample` is `"lanczos"`) when an image or a mask is not at the size
//! generated.
//!
//! As `libImaging/Resample.c` does it: per output pixel, Lanczos-3 weights (stretched by the scale when
//! shrinking) computed in double precision, normalized to sum 1, then rounded to fixed point with 22
//! fractional bits; a horizontal pass over every row, then a vertical pass, each rounding to 8 bits and
//! clamping in between.

use std::f64::consts::PI;

/// Fractional bits of the fixed-point weights (`32 - 8 - 2` in Pillow).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// The Lanczos filter's support: 3 input pixels either side at scale 1.
const SUPPORT: f64 = 3.0;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * PI;
    x.sin() / x
}

/// Pillow's `lanczos_filter`: the sinc truncated at 3, windowed by sinc(x / 3).
fn lanczos(x: f64) -> f64 {
    if (-SUPPORT..SUPPORT).contains(&x) { sinc(x) * sinc(x / 3.0) } else { 0.0 }
}

/// One output pixel's source: the first input pixel and the fixed-point weights of it and the ones after.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// `precompute_coeffs` then `normalize_coeffs_8bpc`, for the whole input range (`box` = 0..in_size).
fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    // Pillow takes the box as floats: (in1 - in0) is a float difference, widened to double.
    let scale = f64::from(in_size as f32 - 0.0f32) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let mut k: Vec<f64> = (0..xmax).map(|x| lanczos(((x + xmin) as f64 - center + 0.5) * ss)).collect();
            let ww: f64 = k.iter().fold(0.0, |acc, w| acc + w);
            if ww != 0.0 {
                k.iter_mut().for_each(|w| *w /= ww);
            }
            let one = f64::from(1u32 << PRECISION_BITS);
            let weights =
                k.iter().map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 }).collect();
            Taps { first: xmin as usize, weights }
        })
        .collect()
}

/// Pillow's `clip8`: the fixed-point sum back to 8 bits, clamped.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The weighted sum of `taps` over the values `value(i)` of input pixels `first, first + 1, ...`, rounded.
fn filter(taps: &Taps, value: impl Fn(usize) -> u8) -> u8 {
    let start = 1i64 << (PRECISION_BITS - 1);
    let sum = taps
        .weights
        .iter()
        .enumerate()
        .fold(start, |acc, (i, &w)| acc + i64::from(value(taps.first + i)) * i64::from(w));
    clip8(sum)
}

/// `pixels` (row-major, `channels` interleaved 8-bit values per pixel, `width` x `height`) resized to
/// `new_width` x `new_height` with Lanczos, as Pillow's `Image.resize` does for mode `L` or `RGB`. The
/// same size gives the pixels back unchanged, as Pillow does.
pub fn resize_lanczos(
    pixels: &[u8],
    channels: usize,
    (width, height): (usize, usize),
    (new_width, new_height): (usize, usize),
) -> Vec<u8> {
    assert_eq!(pixels.len(), width * height * channels, "pixels are width x height x channels");
    let mut image = pixels.to_vec();
    let mut w = width;
    if new_width != width {
        let taps = taps(width, new_width);
        let mut out = vec![0u8; new_width * height * channels];
        for y in 0..height {
            let row = &image[y * w * channels..(y + 1) * w * channels];
            for (x, t) in taps.iter().enumerate() {
                for c in 0..channels {
                    out[(y * new_width + x) * channels + c] = filter(t, |i| row[i * channels + c]);
                }
            }
        }
        image = out;
        w = new_width;
    }
    if new_height != height {
        let taps = taps(height, new_height);
        let mut out = vec![0u8; w * new_height * channels];
        for (y, t) in taps.iter().enumerate() {
            for x in 0..w {
                for c in 0..channels {
                    out[(y * w + x) * channels + c] = filter(t, |i| image[(i * w + x) * channels + c]);
                }
            }
        }
        image = out;
    }
    image
}
