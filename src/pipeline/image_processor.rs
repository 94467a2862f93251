//! Images on the way in, as diffusers takes them: a file read as `diffusers.utils.load_image` reads it (its
//! EXIF orientation applied, converted to RGB), and `VaeImageProcessor.preprocess` for the image and for the
//! mask (the inpainting pipelines' `mask_processor`: `do_normalize=False, do_binarize=True,
//! do_convert_grayscale=True`).
//!
//! - The size: the image's, rounded down to a multiple of the VAE's scale factor
//!   (`get_default_height_width`), unless one is asked for.
//! - An image not at that size is resized with Pillow's Lanczos ([`super::resample`]), before the mask is
//!   converted to gray, as diffusers orders it.
//! - The image goes to `[1, 3, H, W]` as `2 * (v / 255) - 1` in float32; the mask to `[1, 1, H, W]` as 1 where
//!   `v / 255 >= 0.5` (white: repainted), else 0.

use std::path::Path;

use ::image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use ndarray::{ArrayD, IxDyn};

use super::resample::resize_lanczos;
use crate::{Error, Result};

/// Channel values (0-255) a mask pixel's R, G and B may differ by and still read as gray (JPEG's chroma
/// rounding); a coloured mask says nothing diffusers' gray conversion would keep.
const GRAY_TOLERANCE: u8 = 24;

/// A mask as read: one channel, or three nearly equal ones (kept as they are until after the resize, as
/// diffusers converts to gray after resizing).
#[derive(Debug, Clone)]
pub struct Mask {
    pixels: Vec<u8>,
    channels: usize,
    width: usize,
    height: usize,
}

impl Mask {
    /// (width, height).
    pub fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }
}

/// Decodes `path` with its EXIF orientation applied; `flag` names it in messages.
fn decode(path: &Path, flag: &str) -> Result<DynamicImage> {
    let unreadable =
        |e: &dyn std::fmt::Display| Error::bad_file(path, format!("{flag} cannot be read as a PNG or JPEG image: {e}"));
    let reader = ImageReader::open(path).map_err(|e| Error::io(path, &format!("{flag} cannot be opened"), e))?;
    let reader = reader.with_guessed_format().map_err(|e| unreadable(&e))?;
    let mut decoder = reader.into_decoder().map_err(|e| unreadable(&e))?;
    let orientation = decoder.orientation().map_err(|e| unreadable(&e))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| unreadable(&e))?;
    image.apply_orientation(orientation);
    if image.color().bytes_per_pixel() / image.color().channel_count() != 1 {
        return Err(Error::bad_file(
            path,
            format!(
                "{flag} has {:?} pixels; dfast reads 8-bit images (save it with 8 bits per channel)",
                image.color()
            ),
        ));
    }
    if image.width() == 0 || image.height() == 0 {
        return Err(Error::bad_file(path, format!("{flag} is empty ({}x{})", image.width(), image.height())));
    }
    Ok(image)
}

/// An image as `load_image` gives it to diffusers: RGB (gray replicated, alpha dropped, as PIL's
/// `convert("RGB")`).
pub fn read_image(path: &Path) -> Result<RgbImage> {
    Ok(decode(path, "--image")?.to_rgb8())
}

/// A mask: gray (alpha, if any, fully opaque), or RGB whose channels agree within a few levels; anything
/// else is one sentence, since diffusers would turn a colour or a transparency into gray silently.
pub fn read_mask(path: &Path) -> Result<Mask> {
    let image = decode(path, "--mask")?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    let has_alpha = image.color().has_alpha();
    let gray = image.color().channel_count() <= 2;
    let raw: Vec<u8> = match (gray, has_alpha) {
        (true, false) => image.to_luma8().into_raw(),
        (true, true) => image.to_luma_alpha8().into_raw(),
        (false, false) => image.to_rgb8().into_raw(),
        (false, true) => image.to_rgba8().into_raw(),
    };
    let stride = raw.len() / (width * height);
    let not_one_channel = |i: usize, why: String| {
        let (x, y) = (i % width, i / width);
        Error::bad_file(
            path,
            format!(
                "--mask must be one channel after conversion to gray (white is repainted, black kept), but pixel \
                 ({x}, {y}) {why}; save the mask as a grayscale image"
            ),
        )
    };
    let channels = if gray { 1 } else { 3 };
    let mut pixels = Vec::with_capacity(width * height * channels);
    for (i, px) in raw.chunks_exact(stride).enumerate() {
        if has_alpha && px[stride - 1] != 255 {
            return Err(not_one_channel(i, format!("is transparent (alpha {})", px[stride - 1])));
        }
        let color = &px[..channels];
        let (lo, hi) = (color.iter().min().copied().unwrap_or(0), color.iter().max().copied().unwrap_or(0));
        if hi - lo > GRAY_TOLERANCE {
            return Err(not_one_channel(i, format!("is coloured (RGB {color:?})")));
        }
        pixels.extend_from_slice(color);
    }
    Ok(Mask { pixels, channels, width, height })
}

/// `get_default_height_width`: (height, width) of an image of `width` x `height` rounded down to multiples
/// of `factor`.
pub fn default_size((width, height): (usize, usize), factor: usize) -> (usize, usize) {
    (height - height % factor, width - width % factor)
}

/// `VaeImageProcessor.preprocess` of an RGB image at `(height, width)`: `[1, 3, H, W]` in [-1, 1].
pub fn preprocess(image: &RgbImage, (height, width): (usize, usize)) -> ArrayD<f32> {
    let size = (image.width() as usize, image.height() as usize);
    let pixels = resize_lanczos(image.as_raw(), 3, size, (width, height));
    // pil_to_numpy: float32 v / 255; normalize: 2 * x - 1 (float32 throughout).
    ArrayD::from_shape_fn(IxDyn(&[1, 3, height, width]), |i| {
        let v = f32::from(pixels[(i[2] * width + i[3]) * 3 + i[1]]) / 255.0;
        2.0 * v - 1.0
    })
}

/// The mask processor's `preprocess` at `(height, width)`: resized, to gray as PIL's `convert("L")`
/// (`(19595 R + 38470 G + 7471 B + 32768) >> 16`), binarized at 0.5: `[1, 1, H, W]` of 0 and 1.
pub fn preprocess_mask(mask: &Mask, (height, width): (usize, usize)) -> ArrayD<f32> {
    let pixels = resize_lanczos(&mask.pixels, mask.channels, (mask.width, mask.height), (width, height));
    let gray = |i: usize| -> u8 {
        if mask.channels == 1 {
            return pixels[i];
        }
        let px = &pixels[i * 3..i * 3 + 3];
        ((u32::from(px[0]) * 19595 + u32::from(px[1]) * 38470 + u32::from(px[2]) * 7471 + 0x8000) >> 16) as u8
    };
    ArrayD::from_shape_fn(IxDyn(&[1, 1, height, width]), |i| {
        let v = f32::from(gray(i[2] * width + i[3])) / 255.0;
        if v < 0.5 { 0.0 } else { 1.0 }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(dir: &Path, name: &str, image: DynamicImage) -> std::path::PathBuf {
        let path = dir.join(name);
        image.save(&path).unwrap();
        path
    }

    /// Gray, opaque gray+alpha and gray RGB masks read as one channel; colour and transparency are one
    /// sentence naming the flag and the pixel.
    #[test]
    fn masks_must_be_one_channel() {
        let tmp = tempfile::tempdir().unwrap();
        let gray = ::image::GrayImage::from_fn(4, 3, |x, _| ::image::Luma([if x < 2 { 0 } else { 255 }]));
        let mask = read_mask(&save(tmp.path(), "gray.png", DynamicImage::ImageLuma8(gray.clone()))).unwrap();
        assert_eq!((mask.channels, mask.dimensions()), (1, (4, 3)));
        let rgb = DynamicImage::ImageLuma8(gray).to_rgb8();
        let mask = read_mask(&save(tmp.path(), "rgb.png", DynamicImage::ImageRgb8(rgb.clone()))).unwrap();
        assert_eq!(mask.channels, 3);
        let binary = preprocess_mask(&mask, (3, 4));
        assert_eq!(binary.iter().copied().collect::<Vec<f32>>(), [0., 0., 1., 1.].repeat(3));

        let mut red = rgb.clone();
        red.put_pixel(1, 2, ::image::Rgb([255, 0, 0]));
        let err = read_mask(&save(tmp.path(), "red.png", DynamicImage::ImageRgb8(red))).unwrap_err().to_string();
        assert!(
            err.contains("red.png") && err.contains("--mask must be one channel") && err.contains("(1, 2)"),
            "{err}"
        );
        let mut clear = DynamicImage::ImageRgb8(rgb).to_rgba8();
        clear.put_pixel(3, 0, ::image::Rgba([255, 255, 255, 0]));
        let err = read_mask(&save(tmp.path(), "clear.png", DynamicImage::ImageRgba8(clear))).unwrap_err().to_string();
        assert!(err.contains("transparent") && err.contains("(3, 0)"), "{err}");
    }

    /// Binarized at 0.5 of v / 255: 127 is kept, 128 repainted; PIL's gray weights for RGB.
    #[test]
    fn mask_threshold_and_gray_weights() {
        let mask = Mask { pixels: vec![127, 128], channels: 1, width: 2, height: 1 };
        assert_eq!(preprocess_mask(&mask, (1, 2)).iter().copied().collect::<Vec<f32>>(), [0.0, 1.0]);
        // (19595 * 140 + 38470 * 120 + 7471 * 130 + 32768) >> 16 = 127
        let mask = Mask { pixels: vec![140, 120, 130], channels: 3, width: 1, height: 1 };
        assert_eq!(preprocess_mask(&mask, (1, 1))[[0, 0, 0, 0]], 0.0);
    }

    #[test]
    fn unreadable_images_name_the_flag_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let text = tmp.path().join("notes.png");
        std::fs::write(&text, "not an image").unwrap();
        let err = read_image(&text).unwrap_err().to_string();
        assert!(err.contains("notes.png") && err.contains("--image cannot be read"), "{err}");
        let err = read_mask(&tmp.path().join("missing.png")).unwrap_err().to_string();
        assert!(err.contains("missing.png") && err.contains("--mask cannot be opened"), "{err}");
        let deep = ::image::ImageBuffer::<::image::Rgb<u16>, Vec<u16>>::new(2, 2);
        let path = save(tmp.path(), "deep.png", DynamicImage::ImageRgb16(deep));
        let err = read_image(&path).unwrap_err().to_string();
        assert!(err.contains("8-bit"), "{err}");
    }
}
