//! A LoRA file (`.safetensors`) read into low-rank factors per module, in either format people share:
//!
//! - diffusers / PEFT: `unet.<module>.lora_A.weight` (down, `[rank, in(, kh, kw)]`) and `.lora_B.weight`
//!   (up, `[out, rank(, 1, 1)]`), also the older `.lora.down.weight` / `.lora.up.weight`; the components are
//!   `unet.`, `text_encoder.`, `text_encoder_2.`. Alpha comes from a `<module>.alpha` tensor, else from the
//!   PEFT config diffusers saves in the header (`lora_adapter_metadata`: `<component>.lora_alpha` and
//!   `alpha_pattern`), else it is the rank (a scale of 1), as diffusers' `load_lora_weights` reads them;
//! - kohya (sd-scripts): `lora_unet_<module_with_underscores>.lora_down.weight` / `.lora_up.weight` /
//!   `.alpha`, with `lora_te_` (or `lora_te1_`) and `lora_te2_` for the text encoders.
//!
//! The merged weight is `W + scale * alpha / rank * up @ down` (up and down flattened to matrices).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::onnx::tensor::{bytes_to_f32, dtype};
use crate::{Error, Result};

/// The components a LoRA can change, by their pipeline folder name.
pub const COMPONENTS: [&str; 3] = ["unet", "text_encoder", "text_encoder_2"];

/// How a module is named in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// Module path with dots (`down_blocks.0.attentions.0.proj_in`).
    Dotted,
    /// Module path with underscores for dots (`down_blocks_0_attentions_0_proj_in`).
    Underscored,
}

/// One low-rank update of one module.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// The pipeline folder it changes (`unet`, `text_encoder`, `text_encoder_2`).
    pub component: &'static str,
    /// The module path as the file names it, without the component prefix.
    pub path: String,
    pub style: KeyStyle,
    /// A key of the file for this module (error messages name it).
    pub key: String,
    /// `[rank, in, (kh, kw)]` and `[out, rank, (1, 1)]`.
    pub down: Tensor,
    pub up: Tensor,
    /// `alpha / rank`.
    pub alpha_scale: f32,
}

impl LoraModule {
    pub fn rank(&self) -> usize {
        self.down.0[0]
    }
}

/// A LoRA file read and checked, with the scale it is merged at.
#[derive(Debug, Clone)]
pub struct LoraFile {
    pub path: PathBuf,
    pub sha256: String,
    pub scale: f32,
    pub modules: Vec<LoraModule>,
}

impl LoraFile {
    /// The file's name as the manifest and messages give it.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// Reads `path`; every key must belong to a LoRA module of the UNet or a text encoder.
    pub fn read(path: &Path, scale: f32) -> Result<LoraFile> {
        if !scale.is_finite() {
            return Err(Error::bad_input(format!(
                "--lora-scale {scale} for {}: expected a finite number",
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read the LoRA file", e))?;
        let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        let (tensors, metadata) = parse_safetensors(path, &bytes)?;
        let modules = group(path, tensors, &metadata)?;
        if modules.is_empty() {
            return Err(Error::bad_file(path, "holds no LoRA weights (no lora_A/lora_B or lora_down/lora_up tensors)"));
        }
        Ok(LoraFile { path: path.to_path_buf(), sha256, scale, modules })
    }

    /// The components this LoRA changes.
    pub fn components(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = self.modules.iter().map(|m| m.component).collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A tensor's shape and values.
type Tensor = (Vec<usize>, Vec<f32>);
type Tensors = BTreeMap<String, Tensor>;
/// One module's key style, first key, and down, up and alpha tensors as found.
type Found = (KeyStyle, String, [Option<Tensor>; 3]);

/// The tensors of a safetensors file as f32, and its `__metadata__`.
fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<(Tensors, BTreeMap<String, String>)> {
    let bad = |what: String| Error::bad_file(path, format!("not a safetensors file: {what}"));
    if bytes.len() < 8 {
        return Err(bad("shorter than its 8-byte header length".into()));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header =
        bytes.get(8..8usize.saturating_add(n)).ok_or_else(|| bad(format!("header of {n} bytes past the end")))?;
    let data = &bytes[8 + n..];
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| Error::parse_file(path, "not a safetensors file (header)", e))?;
    let mut tensors = Tensors::new();
    let mut metadata = BTreeMap::new();
    for (key, info) in header {
        if key == "__metadata__" {
            metadata = serde_json::from_value(info)
                .map_err(|e| Error::parse_file(path, "not a safetensors file (__metadata__)", e))?;
            continue;
        }
        let info: TensorInfo = serde_json::from_value(info)
            .map_err(|e| Error::parse_file(path, &format!("not a safetensors file (tensor `{key}`)"), e))?;
        let onnx_type = match info.dtype.as_str() {
            "F32" => dtype::FLOAT,
            "F16" => dtype::FLOAT16,
            "BF16" => dtype::BFLOAT16,
            "F64" => dtype::DOUBLE,
            other => {
                return Err(Error::bad_file(
                    path,
                    format!("tensor `{key}` is {other}; expected F32, F16, BF16 or F64"),
                ));
            }
        };
        let shape = info.shape;
        let [begin, end] = info.data_offsets;
        let raw =
            data.get(begin..end).filter(|_| begin <= end).ok_or_else(|| bad(format!("tensor `{key}` past the end")))?;
        let values = bytes_to_f32(&key, onnx_type, raw)?;
        if values.len() != shape.iter().product::<usize>() {
            return Err(bad(format!("tensor `{key}` holds {} values for shape {shape:?}", values.len())));
        }
        tensors.insert(key, (shape, values));
    }
    Ok((tensors, metadata))
}

/// A tensor's entry in a safetensors header.
#[derive(serde::Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// What one key of the file is.
#[derive(Debug)]
struct Parsed {
    component: &'static str,
    module: String,
    style: KeyStyle,
    part: Part,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    Alpha,
}

/// Splits a key into component, module and part; `Err` with the reason when it is no LoRA key dfast merges.
fn parse_key(key: &str) -> std::result::Result<Parsed, String> {
    const KOHYA: [(&str, &str); 4] = [
        ("lora_unet_", "unet"),
        ("lora_te1_", "text_encoder"),
        ("lora_te2_", "text_encoder_2"),
        ("lora_te_", "text_encoder"),
    ];
    const DOTTED: [(&str, &str); 3] =
        [("unet.", "unet"), ("text_encoder.", "text_encoder"), ("text_encoder_2.", "text_encoder_2")];
    const PARTS: [(&str, Part); 7] = [
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
        (".lora_down.weight", Part::Down),
        (".lora_up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ];
    for unsupported in ["lora_magnitude_vector", "dora_scale"] {
        if key.contains(unsupported) {
            return Err("DoRA (a magnitude vector) is not supported; merge a plain LoRA".into());
        }
    }
    for unsupported in ["hada_", "lokr_", "lora_mid", ".diff", "oft_"] {
        if key.contains(unsupported) {
            return Err("LyCORIS (LoHa, LoKr, Tucker, full diffs, OFT) is not supported; merge a plain LoRA".into());
        }
    }
    let (stem, part) = PARTS
        .iter()
        .find_map(|(suffix, part)| key.strip_suffix(suffix).map(|s| (s, *part)))
        .ok_or("not a LoRA factor (expected lora_A/lora_B, lora.down/lora.up, lora_down/lora_up or alpha)")?;
    // `text_encoder_2.` before `text_encoder.` (the longer prefix first).
    for (prefix, component) in DOTTED.iter().rev() {
        if let Some(module) = stem.strip_prefix(prefix) {
            return Ok(Parsed { component, module: module.to_string(), style: KeyStyle::Dotted, part });
        }
    }
    for (prefix, component) in KOHYA {
        if let Some(module) = stem.strip_prefix(prefix) {
            return Ok(Parsed { component, module: module.to_string(), style: KeyStyle::Underscored, part });
        }
    }
    Err("names no UNet or text encoder module (expected a `unet.`, `text_encoder.`, `lora_unet_` or `lora_te_` \
         prefix)"
        .into())
}

/// Groups the tensors into modules, with their alpha.
fn group(path: &Path, tensors: Tensors, metadata: &BTreeMap<String, String>) -> Result<Vec<LoraModule>> {
    let peft: serde_json::Value = metadata
        .get("lora_adapter_metadata")
        .map(|m| serde_json::from_str(m).map_err(|e| Error::parse_file(path, "its lora_adapter_metadata", e)))
        .transpose()?
        .unwrap_or(serde_json::Value::Null);
    let mut parts: BTreeMap<(&'static str, String), Found> = BTreeMap::new();
    let mut rejected: Vec<(String, String)> = Vec::new();
    for (key, tensor) in tensors {
        match parse_key(&key) {
            Ok(p) => {
                let entry =
                    parts.entry((p.component, p.module)).or_insert_with(|| (p.style, key.clone(), [None, None, None]));
                let slot = match p.part {
                    Part::Down => 0,
                    Part::Up => 1,
                    Part::Alpha => 2,
                };
                entry.2[slot] = Some(tensor);
            }
            Err(why) => rejected.push((key, why)),
        }
    }
    if let Some((key, why)) = rejected.first() {
        if parts.is_empty() {
            return Err(Error::bad_file(
                path,
                format!(
                    "is not a LoRA for a UNet pipeline's UNet or text encoders (a LoRA for another architecture?): \
                     key `{key}` {why}"
                ),
            ));
        }
        return Err(Error::bad_file(path, format!("key `{key}`: {why}")));
    }
    let mut modules = Vec::new();
    for ((component, module), (style, key, [down, up, alpha])) in parts {
        let (Some(down), Some(up)) = (down, up) else {
            return Err(Error::bad_file(path, format!("key `{key}`: the module has only one of its two LoRA factors")));
        };
        let rank = down.0.first().copied().unwrap_or(0);
        let fits = rank > 0
            && (down.0.len() == 2 || down.0.len() == 4)
            && up.0.len() == down.0.len()
            && up.0[1] == rank
            && up.0[2..].iter().all(|&d| d == 1);
        if !fits {
            return Err(Error::bad_file(
                path,
                format!("key `{key}`: factors of shapes {:?} (down) and {:?} (up) are no rank-r pair", down.0, up.0),
            ));
        }
        let alpha = match alpha {
            Some((_, v)) if v.len() == 1 => v[0],
            Some(_) => return Err(Error::bad_file(path, format!("key `{key}`: its alpha is not one number"))),
            None => peft_alpha(&peft, component, &module).unwrap_or(rank as f32),
        };
        modules.push(LoraModule { component, path: module, style, key, down, up, alpha_scale: alpha / rank as f32 });
    }
    Ok(modules)
}

/// A module's alpha from the PEFT config diffusers saves in the header: `alpha_pattern` (a key that is the
/// module path or ends it), else `lora_alpha`.
fn peft_alpha(peft: &serde_json::Value, component: &str, module: &str) -> Option<f32> {
    let patterns = peft.get(format!("{component}.alpha_pattern")).and_then(|p| p.as_object());
    if let Some(patterns) = patterns {
        for (pattern, alpha) in patterns {
            if (module == pattern || module.ends_with(&format!(".{pattern}")))
                && let Some(a) = alpha.as_f64()
            {
                return Some(a as f32);
            }
        }
    }
    peft.get(format!("{component}.lora_alpha")).and_then(|a| a.as_f64()).map(|a| a as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_both_formats_split_into_component_module_and_part() {
        let p = parse_key("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight").unwrap();
        assert_eq!(
            (p.component, p.module.as_str(), p.style),
            ("unet", "down_blocks.0.attentions.0.proj_in", KeyStyle::Dotted)
        );
        let p = parse_key("text_encoder_2.encoder.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
        assert_eq!(p.component, "text_encoder_2");
        let p = parse_key("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha").unwrap();
        assert_eq!((p.component, p.module.as_str()), ("text_encoder_2", "text_model_encoder_layers_0_mlp_fc1"));
        let p = parse_key("lora_unet_mid_block_resnets_0_conv1.lora_up.weight").unwrap();
        assert!(p.part == Part::Up && p.style == KeyStyle::Underscored);
        assert!(parse_key("transformer.single_blocks.0.attn.to_q.lora_A.weight").unwrap_err().contains("prefix"));
        assert!(parse_key("lora_unet_x.hada_w1_a").unwrap_err().contains("LyCORIS"));
        assert!(parse_key("unet.x.lora_magnitude_vector").unwrap_err().contains("DoRA"));
    }

    #[test]
    fn peft_alpha_prefers_the_pattern() {
        let peft = serde_json::json!({"unet.lora_alpha": 8, "unet.alpha_pattern": {"attn1.to_q": 2}});
        assert_eq!(peft_alpha(&peft, "unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"), Some(2.0));
        assert_eq!(peft_alpha(&peft, "unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"), Some(8.0));
        assert_eq!(peft_alpha(&peft, "text_encoder", "x"), None);
    }
}
