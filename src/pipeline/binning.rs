//! PixArt's resolution binning, as diffusers' `PixArtAlphaPipeline` does it: the requested size maps to the
//! bin of `ASPECT_RATIO_1024_BIN` / `_512_` / `_256_` (by the transformer's `sample_size` 128 / 64 / 32) whose
//! aspect ratio is nearest (`PixArtImageProcessor.classify_height_width_bin`), the image is generated there, and
//! the decoded image is resized and center-cropped back (`resize_and_crop_tensor`: torch's bilinear
//! `F.interpolate`, `align_corners=False`).

use ndarray::{Array4, ArrayD, Ix4};

use crate::{Error, Result};

/// One bin: diffusers' key (the aspect ratio height / width as written), height, width.
pub type Bin = (&'static str, usize, usize);

pub const ASPECT_RATIO_1024_BIN: [Bin; 33] = [
    ("0.25", 512, 2048),
    ("0.28", 512, 1856),
    ("0.32", 576, 1792),
    ("0.33", 576, 1728),
    ("0.35", 576, 1664),
    ("0.4", 640, 1600),
    ("0.42", 640, 1536),
    ("0.48", 704, 1472),
    ("0.5", 704, 1408),
    ("0.52", 704, 1344),
    ("0.57", 768, 1344),
    ("0.6", 768, 1280),
    ("0.68", 832, 1216),
    ("0.72", 832, 1152),
    ("0.78", 896, 1152),
    ("0.82", 896, 1088),
    ("0.88", 960, 1088),
    ("0.94", 960, 1024),
    ("1.0", 1024, 1024),
    ("1.07", 1024, 960),
    ("1.13", 1088, 960),
    ("1.21", 1088, 896),
    ("1.29", 1152, 896),
    ("1.38", 1152, 832),
    ("1.46", 1216, 832),
    ("1.67", 1280, 768),
    ("1.75", 1344, 768),
    ("2.0", 1408, 704),
    ("2.09", 1472, 704),
    ("2.4", 1536, 640),
    ("2.5", 1600, 640),
    ("3.0", 1728, 576),
    ("4.0", 2048, 512),
];
pub const ASPECT_RATIO_512_BIN: [Bin; 33] = [
    ("0.25", 256, 1024),
    ("0.28", 256, 928),
    ("0.32", 288, 896),
    ("0.33", 288, 864),
    ("0.35", 288, 832),
    ("0.4", 320, 800),
    ("0.42", 320, 768),
    ("0.48", 352, 736),
    ("0.5", 352, 704),
    ("0.52", 352, 672),
    ("0.57", 384, 672),
    ("0.6", 384, 640),
    ("0.68", 416, 608),
    ("0.72", 416, 576),
    ("0.78", 448, 576),
    ("0.82", 448, 544),
    ("0.88", 480, 544),
    ("0.94", 480, 512),
    ("1.0", 512, 512),
    ("1.07", 512, 480),
    ("1.13", 544, 480),
    ("1.21", 544, 448),
    ("1.29", 576, 448),
    ("1.38", 576, 416),
    ("1.46", 608, 416),
    ("1.67", 640, 384),
    ("1.75", 672, 384),
    ("2.0", 704, 352),
    ("2.09", 736, 352),
    ("2.4", 768, 320),
    ("2.5", 800, 320),
    ("3.0", 864, 288),
    ("4.0", 1024, 256),
];
pub const ASPECT_RATIO_256_BIN: [Bin; 33] = [
    ("0.25", 128, 512),
    ("0.28", 128, 464),
    ("0.32", 144, 448),
    ("0.33", 144, 432),
    ("0.35", 144, 416),
    ("0.4", 160, 400),
    ("0.42", 160, 384),
    ("0.48", 176, 368),
    ("0.5", 176, 352),
    ("0.52", 176, 336),
    ("0.57", 192, 336),
    ("0.6", 192, 320),
    ("0.68", 208, 304),
    ("0.72", 208, 288),
    ("0.78", 224, 288),
    ("0.82", 224, 272),
    ("0.88", 240, 272),
    ("0.94", 240, 256),
    ("1.0", 256, 256),
    ("1.07", 256, 240),
    ("1.13", 272, 240),
    ("1.21", 272, 224),
    ("1.29", 288, 224),
    ("1.38", 288, 208),
    ("1.46", 304, 208),
    ("1.67", 320, 192),
    ("1.75", 336, 192),
    ("2.0", 352, 176),
    ("2.09", 368, 176),
    ("2.4", 384, 160),
    ("2.5", 400, 160),
    ("3.0", 432, 144),
    ("4.0", 512, 128),
];

/// The table diffusers bins with for a transformer's `sample_size`; an error for sizes it has none for
/// (diffusers raises "Invalid sample size").
pub fn table_for(sample_size: usize) -> Result<&'static [Bin]> {
    match sample_size {
        128 => Ok(&ASPECT_RATIO_1024_BIN),
        64 => Ok(&ASPECT_RATIO_512_BIN),
        32 => Ok(&ASPECT_RATIO_256_BIN),
        other => Err(Error::bad_input(format!(
            "resolution binning needs a transformer sample_size of 128, 64 or 32 (diffusers' 1024, 512 and 256 \
             tables), but this one has {other}; pass --no-resolution-binning"
        ))),
    }
}

/// `classify_height_width_bin`: the (height, width) of the bin whose key is nearest to height / width; on a
/// tie the first in table order (Python's `min`).
pub fn classify_height_width_bin(height: usize, width: usize, table: &[Bin]) -> (usize, usize) {
    let ar = height as f64 / width as f64;
    let mut best: Option<(f64, usize, usize)> = None;
    for &(key, h, w) in table {
        let distance = (key.parse::<f64>().expect("bin keys are numbers") - ar).abs();
        if best.is_none_or(|(d, _, _)| distance < d) {
            best = Some((distance, h, w));
        }
    }
    best.map_or((height, width), |(_, h, w)| (h, w))
}

/// `resize_and_crop_tensor(samples, new_width, new_height)` on `[batch, channels, H, W]`: scaled by the larger
/// of the two ratios (sizes truncated to integers, as Python's `int()` does), resized bilinearly, then cropped
/// around the center. Written out rather than taken from an image crate: the result must match torch's
/// `F.interpolate` (its source-index arithmetic and edge clamping) to diffusers' numbers, which a general
/// resizer does not promise.
pub fn resize_and_crop(samples: &ArrayD<f32>, new_height: usize, new_width: usize) -> Result<ArrayD<f32>> {
    let samples = samples
        .view()
        .into_dimensionality::<Ix4>()
        .map_err(|_| Error::internal(format!("resize_and_crop takes [N, C, H, W], got {:?}", samples.shape())))?;
    let (n, c, orig_height, orig_width) = samples.dim();
    if orig_height == new_height && orig_width == new_width {
        return Ok(samples.to_owned().into_dyn());
    }
    let ratio = (new_height as f64 / orig_height as f64).max(new_width as f64 / orig_width as f64);
    let resized_width = (orig_width as f64 * ratio) as usize;
    let resized_height = (orig_height as f64 * ratio) as usize;
    let rows = linear_taps(orig_height, resized_height);
    let cols = linear_taps(orig_width, resized_width);
    let start_x = (resized_width - new_width) / 2;
    let start_y = (resized_height - new_height) / 2;
    let out = Array4::from_shape_fn((n, c, new_height, new_width), |(b, ch, y, x)| {
        let (y0, y1, wy0, wy1) = rows[start_y + y];
        let (x0, x1, wx0, wx1) = cols[start_x + x];
        let at = |yy: usize, xx: usize| samples[[b, ch, yy, xx]];
        // torch's separable kernel: each row is interpolated along the width, then the rows are blended.
        let top = at(y0, x0) * wx0 + at(y0, x1) * wx1;
        let bottom = at(y1, x0) * wx0 + at(y1, x1) * wx1;
        top * wy0 + bottom * wy1
    });
    Ok(out.into_dyn())
}

/// For each output index, the two input indices and their weights, as torch computes them in float32 for
/// `align_corners=False` with an output size (not a scale factor) given: source = scale * (i + 0.5) - 0.5 with
/// scale = input / output, clamped at 0; an axis whose size does not change is copied.
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    if input == output {
        return (0..output).map(|i| (i, i, 1.0, 0.0)).collect();
    }
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(input - 1);
            let lambda1 = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - lambda1, lambda1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_sizes_stay_and_odd_ratios_move() {
        assert_eq!(classify_height_width_bin(1024, 1024, &ASPECT_RATIO_1024_BIN), (1024, 1024));
        assert_eq!(classify_height_width_bin(512, 512, &ASPECT_RATIO_1024_BIN), (1024, 1024));
        // 0.75 lies between the keys 0.72 and 0.78; in floating point 0.72 is the nearer (diffusers agrees).
        assert_eq!(classify_height_width_bin(600, 800, &ASPECT_RATIO_512_BIN), (416, 576));
        assert!(table_for(16).is_err());
    }

    #[test]
    fn identity_resize_is_a_copy() {
        let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 3, 4, 5]), |i| i[2] as f32 * 0.1 + i[3] as f32);
        assert_eq!(resize_and_crop(&x, 4, 5).unwrap(), x);
    }
}
