//! Decoded VAE output to an image file.

use std::path::Path;

use image::{ImageFormat, RgbImage};
use ndarray::ArrayD;

use crate::{Error, Result};

/// The output format chosen by the file's extension.
pub fn format_for(path: &Path) -> Result<ImageFormat> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => Ok(ImageFormat::Png),
        Some("jpg" | "jpeg") => Ok(ImageFormat::Jpeg),
        _ => Err(Error::bad_file(path, "unsupported image type; the output must end in .png, .jpg or .jpeg")),
    }
}

/// `[1, 3, H, W]` in [-1, 1] to 8-bit RGB, as diffusers' image processor does:
/// `round(clamp(x / 2 + 0.5, 0, 1) * 255)`, rounding half to even like numpy.
pub fn to_rgb(sample: &ArrayD<f32>) -> Result<RgbImage> {
    let shape = sample.shape();
    if shape.len() != 4 || shape[1] != 3 {
        return Err(Error::runtime(format!("the VAE decoder returned shape {shape:?}, expected [batch, 3, H, W]")));
    }
    let (h, w) = (shape[2], shape[3]);
    let mut img = RgbImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let px = std::array::from_fn(|c| {
                let v = (sample[[0, c, y, x]] / 2.0 + 0.5).clamp(0.0, 1.0);
                (v * 255.0).round_ties_even() as u8
            });
            img.put_pixel(x as u32, y as u32, image::Rgb(px));
        }
    }
    Ok(img)
}

pub fn save(img: &RgbImage, path: &Path) -> Result<()> {
    let format = format_for(path)?;
    img.save_with_format(path, format).map_err(|e| Error::io(path, "cannot write the image", e))
}
