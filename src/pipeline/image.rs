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

/// `[batch, 3, H, W]` in [-1, 1] to one 8-bit RGB image per batch row, as diffusers' image processor does:
/// `round(clamp(x / 2 + 0.5, 0, 1) * 255)`, rounding half to even like numpy.
pub fn to_rgb(sample: &ArrayD<f32>) -> Result<Vec<RgbImage>> {
    let shape = sample.shape();
    if shape.len() != 4 || shape[1] != 3 {
        return Err(Error::runtime(format!("the VAE decoder returned shape {shape:?}, expected [batch, 3, H, W]")));
    }
    let (h, w) = (shape[2], shape[3]);
    let one = |b: usize| {
        let mut img = RgbImage::new(w as u32, h as u32);
        for y in 0..h {
            for x in 0..w {
                let px = std::array::from_fn(|c| {
                    let v = (sample[[b, c, y, x]] / 2.0 + 0.5).clamp(0.0, 1.0);
                    (v * 255.0).round_ties_even() as u8
                });
                img.put_pixel(x as u32, y as u32, image::Rgb(px));
            }
        }
        img
    };
    Ok((0..shape[0]).map(one).collect())
}

pub fn save(img: &RgbImage, path: &Path) -> Result<()> {
    save_with_text(img, path, &[])
}

/// Saves `img`; a PNG also gets `text` as text chunks (how it was made). JPEG has no such place that image
/// viewers agree on, so JPEGs get none.
pub fn save_with_text(img: &RgbImage, path: &Path, text: &[(String, String)]) -> Result<()> {
    let format = format_for(path)?;
    if format != ImageFormat::Png || text.is_empty() {
        return img.save_with_format(path, format).map_err(|e| Error::io(path, "cannot write the image", e));
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, "cannot write the image", e))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), img.width(), img.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    for (key, value) in text {
        encoder.add_itxt_chunk(key.clone(), value.clone()).map_err(|e| Error::io(path, "cannot write the image", e))?;
    }
    let mut writer = encoder.write_header().map_err(|e| Error::io(path, "cannot write the image", e))?;
    writer.write_image_data(img.as_raw()).map_err(|e| Error::io(path, "cannot write the image", e))?;
    writer.finish().map_err(|e| Error::io(path, "cannot write the image", e))
}

/// The text chunks of a PNG (what `save_with_text` wrote), in file order.
pub fn read_text(path: &Path) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "cannot read", e))?;
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let reader = decoder.read_info().map_err(|e| Error::parse_file(path, "not a PNG image", e))?;
    let info = reader.info();
    let mut out: Vec<(String, String)> =
        info.uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect();
    for t in &info.utf8_text {
        out.push((t.keyword.clone(), t.get_text().map_err(|e| Error::parse_file(path, "bad text chunk", e))?));
    }
    Ok(out)
}
