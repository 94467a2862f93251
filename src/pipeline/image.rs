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
    if let Some(bad) = sample.iter().find(|v| !v.is_finite()) {
        return Err(Error::runtime(format!(
            "the VAE decoder's image holds {bad} values, which would be written as a black image; \
             an fp16 VAE overflows this way (decode in fp32)"
        )));
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

/// Saves `img` with `text` (how it was made): a PNG as text chunks, a JPEG as EXIF (see [`exif_block`]).
/// Written to a temporary file and renamed into place (`files::write_atomically`).
pub fn save_with_text(img: &RgbImage, path: &Path, text: &[(String, String)]) -> Result<()> {
    let format = format_for(path)?;
    if format == ImageFormat::Jpeg {
        return save_jpeg(img, path, text);
    }
    let fail = |e: &dyn std::fmt::Display| Error::bad_file(path, format!("cannot write the image: {e}"));
    crate::files::write_atomically(path, "the image", |out| {
        let mut encoder = png::Encoder::new(out, img.width(), img.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            encoder.add_itxt_chunk(key.clone(), value.clone()).map_err(|e| fail(&e))?;
        }
        let mut writer = encoder.write_header().map_err(|e| fail(&e))?;
        writer.write_image_data(img.as_raw()).map_err(|e| fail(&e))?;
        writer.finish().map_err(|e| fail(&e))
    })
}

/// A JPEG (quality 75, as `save_with_format` writes one) with `text`, if any, in an EXIF APP1 segment.
fn save_jpeg(img: &RgbImage, path: &Path, text: &[(String, String)]) -> Result<()> {
    use image::ImageEncoder;
    let exif = if text.is_empty() {
        None
    } else {
        Some(exif_block(text).map_err(|e| e.in_context(format!("writing {}", path.display())))?)
    };
    crate::files::write_atomically(path, "the image", |out| {
        let mut encoder = image::codecs::jpeg::JpegEncoder::new(out);
        if let Some(exif) = exif {
            encoder.set_exif_metadata(exif).map_err(|e| Error::io(path, "cannot write the image", e))?;
        }
        encoder
            .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
            .map_err(|e| Error::io(path, "cannot write the image", e))
    })
}

/// The most bytes of TIFF data one APP1 segment holds: 65535, less its length field and `Exif\0\0`.
const EXIF_MAX: usize = 65535 - 2 - 6;

/// The EXIF (TIFF, big-endian) block of a JPEG for `text`: `ImageDescription` holds the pairs as one JSON
/// object in their order, ASCII only as the tag's type wants (other characters as `\u` escapes); `UserComment`
/// the same object as UTF-16 (`UNICODE` character code), where Stable Diffusion tools look for generation
/// settings; `Software` the `software` value.
pub fn exif_block(text: &[(String, String)]) -> Result<Vec<u8>> {
    use exif::{Field, In, Tag, Value};
    let json = pairs_to_json(text);
    let ascii: String = json
        .chars()
        .flat_map(|c| {
            let mut units = [0u16; 2];
            let escaped: Vec<String> = if c.is_ascii() {
                vec![c.to_string()]
            } else {
                c.encode_utf16(&mut units).iter().map(|u| format!("\\u{u:04x}")).collect()
            };
            escaped
        })
        .collect();
    let mut comment = b"UNICODE\0".to_vec();
    comment.extend(json.encode_utf16().flat_map(u16::to_be_bytes));
    let field = |tag, value| Field { tag, ifd_num: In::PRIMARY, value };
    let mut fields = vec![
        field(Tag::ImageDescription, Value::Ascii(vec![ascii.into_bytes()])),
        field(Tag::UserComment, Value::Undefined(comment, 0)),
    ];
    if let Some((_, software)) = text.iter().find(|(k, _)| k == "software") {
        fields.push(field(
            Tag::Software,
            Value::Ascii(vec![software.chars().filter(char::is_ascii).collect::<String>().into_bytes()]),
        ));
    }
    let mut writer = exif::experimental::Writer::new();
    for f in &fields {
        writer.push_field(f);
    }
    let mut block = std::io::Cursor::new(Vec::new());
    writer.write(&mut block, false).map_err(|e| Error::internal(format!("EXIF encoding: {e}")))?;
    let block = block.into_inner();
    if block.len() > EXIF_MAX {
        return Err(Error::bad_input(format!(
            "the image's settings take {} bytes of EXIF, more than a JPEG holds ({EXIF_MAX}); write a .png instead",
            block.len()
        )));
    }
    Ok(block)
}

/// `{"key": "value", ...}` in the pairs' order.
fn pairs_to_json(text: &[(String, String)]) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let body: Vec<String> = text.iter().map(|(k, v)| format!("{}:{}", quote(k), quote(v))).collect();
    format!("{{{}}}", body.join(","))
}

/// A JSON object of strings as pairs, in the object's order; `None` for anything else.
fn json_to_pairs(json: &str) -> Option<Vec<(String, String)>> {
    struct Pairs(Vec<(String, String)>);
    impl<'de> serde::Deserialize<'de> for Pairs {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Pairs;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object of strings")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Pairs, A::Error> {
                    let mut out = Vec::new();
                    while let Some(pair) = map.next_entry::<String, String>()? {
                        out.push(pair);
                    }
                    Ok(Pairs(out))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_str::<Pairs>(json).ok().map(|p| p.0)
}

/// How an image was made, as `save_with_text` wrote it: a PNG's text chunks in file order, a JPEG's EXIF
/// pairs in their order. Empty when the image holds none (a JPEG with EXIF that dfast did not write gives its
/// `ImageDescription` and `Software`, if any, as `description` and `software`).
pub fn read_text(path: &Path) -> Result<Vec<(String, String)>> {
    match format_for(path)? {
        ImageFormat::Jpeg => read_exif(path),
        _ => read_png_text(path),
    }
}

fn read_exif(path: &Path) -> Result<Vec<(String, String)>> {
    use exif::{In, Tag, Value};
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read", e))?;
    if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Err(Error::bad_file(path, "not a JPEG image (it does not start with a JPEG's SOI marker)"));
    }
    let exif = match exif::Reader::new().read_from_container(&mut std::io::Cursor::new(bytes)) {
        Ok(exif) => exif,
        Err(exif::Error::NotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(Error::parse_file(path, "a JPEG whose EXIF does not read", e)),
    };
    let ascii = |tag| match exif.get_field(tag, In::PRIMARY).map(|f| &f.value) {
        Some(Value::Ascii(parts)) => {
            Some(parts.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(" "))
        }
        _ => None,
    };
    let description = ascii(Tag::ImageDescription);
    if let Some(pairs) = description.as_deref().and_then(json_to_pairs) {
        return Ok(pairs);
    }
    if let Some(Value::Undefined(bytes, _)) = exif.get_field(Tag::UserComment, In::PRIMARY).map(|f| &f.value)
        && let Some(utf16) = bytes.strip_prefix(b"UNICODE\0")
    {
        let units = utf16.chunks_exact(2).map(|b| {
            if exif.little_endian() { u16::from_le_bytes([b[0], b[1]]) } else { u16::from_be_bytes([b[0], b[1]]) }
        });
        let comment: String = char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
        if let Some(pairs) = json_to_pairs(&comment) {
            return Ok(pairs);
        }
    }
    let plain = [("description", description), ("software", ascii(Tag::Software))];
    Ok(plain.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v))).collect())
}

/// The text chunks of a PNG, in file order.
fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoded image holding NaN or Inf (the fp16 VAE's overflow) is an error, not a black image.
    #[test]
    fn a_non_finite_decoded_image_is_an_error() {
        let mut sample = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 3, 2, 2]));
        assert_eq!(to_rgb(&sample).unwrap()[0].get_pixel(1, 1).0, [128, 128, 128]);
        for bad in [f32::NAN, f32::INFINITY] {
            sample[[0, 2, 1, 0]] = bad;
            let err = to_rgb(&sample).unwrap_err().to_string();
            assert!(err.starts_with(&format!("the VAE decoder's image holds {bad} values")), "{err}");
        }
    }

    fn settings() -> Vec<(String, String)> {
        [
            ("prompt", "a \"fox\" in Zürich,\nat night 🚀"),
            ("negative_prompt", ""),
            ("seed", "18446744073709551615"),
            ("scheduler", "PNDMScheduler"),
            ("software", "dfast 0.1.0 (commit abc)"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into()
    }

    fn picture() -> RgbImage {
        RgbImage::from_fn(16, 8, |x, y| image::Rgb([(x * 16) as u8, (y * 32) as u8, 128]))
    }

    /// What a JPEG's EXIF holds is what was written, in order, through non-ASCII text, quotes and newlines;
    /// the JPEG still decodes to the picture's size.
    #[test]
    fn jpeg_exif_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["x.jpg", "x.JPEG"] {
            let path = tmp.path().join(name);
            save_with_text(&picture(), &path, &settings()).unwrap();
            assert_eq!(read_text(&path).unwrap(), settings());
            assert_eq!(image::open(&path).unwrap().to_rgb8().dimensions(), (16, 8));
        }
    }

    /// The EXIF fields themselves, as any EXIF reader sees them: ASCII JSON in ImageDescription, UTF-16 JSON
    /// after the `UNICODE` code in UserComment, the version in Software.
    #[test]
    fn exif_fields_as_other_readers_see_them() {
        use exif::{In, Tag, Value};
        let block = exif_block(&settings()).unwrap();
        let exif = exif::Reader::new().read_raw(block).unwrap();
        let Value::Ascii(description) = &exif.get_field(Tag::ImageDescription, In::PRIMARY).unwrap().value else {
            panic!("ImageDescription is not ASCII")
        };
        let description = std::str::from_utf8(&description[0]).unwrap();
        assert!(
            description.is_ascii() && description.contains(r"Z\u00fcrich") && description.contains(r"\ud83d\ude80")
        );
        let parsed: serde_json::Value = serde_json::from_str(description).unwrap();
        assert_eq!(parsed["prompt"], "a \"fox\" in Zürich,\nat night 🚀");
        let Value::Undefined(comment, _) = &exif.get_field(Tag::UserComment, In::PRIMARY).unwrap().value else {
            panic!("UserComment is not UNDEFINED")
        };
        assert!(comment.starts_with(b"UNICODE\0"));
        let units: Vec<u16> = comment[8..].chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]])).collect();
        assert_eq!(String::from_utf16(&units).unwrap(), pairs_to_json(&settings()));
        let software = exif.get_field(Tag::Software, In::PRIMARY).unwrap().display_value().to_string();
        assert_eq!(software, "\"dfast 0.1.0 (commit abc)\"");
    }

    /// A JPEG without EXIF has no settings; one whose EXIF dfast did not write gives its description; a file
    /// that is not a JPEG, or one cut short, is an error naming it; settings too big for a JPEG are refused.
    #[test]
    fn jpegs_without_dfast_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = tmp.path().join("plain.jpg");
        picture().save(&plain).unwrap();
        assert_eq!(read_text(&plain).unwrap(), vec![]);

        let camera = tmp.path().join("camera.jpg");
        let field = exif::Field {
            tag: exif::Tag::ImageDescription,
            ifd_num: exif::In::PRIMARY,
            value: exif::Value::Ascii(vec![b"holiday".to_vec()]),
        };
        let mut writer = exif::experimental::Writer::new();
        writer.push_field(&field);
        let mut block = std::io::Cursor::new(Vec::new());
        writer.write(&mut block, true).unwrap();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new(std::fs::File::create(&camera).unwrap());
        image::ImageEncoder::set_exif_metadata(&mut encoder, block.into_inner()).unwrap();
        image::ImageEncoder::write_image(encoder, picture().as_raw(), 16, 8, image::ExtendedColorType::Rgb8).unwrap();
        assert_eq!(read_text(&camera).unwrap(), vec![("description".to_string(), "holiday".to_string())]);

        let not_jpeg = tmp.path().join("png-inside.jpg");
        picture().save_with_format(&not_jpeg, ImageFormat::Png).unwrap();
        let err = read_text(&not_jpeg).unwrap_err().to_string();
        assert!(err.contains("png-inside.jpg") && err.contains("not a JPEG"), "{err}");

        let cut = tmp.path().join("cut.jpg");
        save_with_text(&picture(), &cut, &settings()).unwrap();
        let bytes = std::fs::read(&cut).unwrap();
        std::fs::write(&cut, &bytes[..20]).unwrap();
        let err = read_text(&cut).unwrap_err().to_string();
        assert!(err.contains("cut.jpg") && err.contains("Broken JPEG"), "{err}");

        let huge = vec![("prompt".to_string(), "x".repeat(70_000))];
        let err = save_with_text(&picture(), &tmp.path().join("huge.jpg"), &huge).unwrap_err().to_string();
        assert!(err.contains("more than a JPEG holds") && err.contains(".png"), "{err}");
    }
}
