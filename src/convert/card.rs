//! Model cards (`models/*.toml`): per-model defaults such as the int8 exclude list, the default size and
//! scheduler, and whether the VAE decoder or the text encoder must stay fp32; recognised from a pipeline's
//! denoiser config (the UNet's, or PixArt's transformer's).

use std::path::Path;

use serde::Deserialize;
use toml::{Table, Value};

use crate::passes::SEED_INT8_EXCLUDE;
use crate::scheduler::SchedulerKind;
use crate::{Error, Result};

/// The cards that ship with dfast.
pub const BUILTIN: [(&str, &str); 5] = [
    ("sd15", include_str!("../../models/sd15.toml")),
    ("sdxl", include_str!("../../models/sdxl.toml")),
    ("ssd-1b", include_str!("../../models/ssd-1b.toml")),
    ("pixart-alpha", include_str!("../../models/pixart-alpha.toml")),
    ("pixart-alpha-512", include_str!("../../models/pixart-alpha-512.toml")),
];

/// A model card. The generation defaults (`hub_id` ... `guidance`) are the one place the experiment
/// scripts take them from (experiment-scripts/common.py); dfast itself reads `name`, `[match.*]`,
/// `[precision]` and `[int8-dynamic]`, and checks every field's type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub name: String,
    pub hub_id: Option<String>,
    /// The diffusers pipeline class.
    pub pipeline: Option<String>,
    pub scheduler: Option<SchedulerKind>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    #[serde(rename = "match", default)]
    matches: CardMatch,
    #[serde(default)]
    precision: CardPrecision,
    #[serde(rename = "int8-dynamic", default)]
    int8_dynamic: CardInt8,
}

/// `[match.unet]` or `[match.transformer]`: fields of the denoiser's config.json that recognise the model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CardMatch {
    #[serde(default)]
    unet: Table,
    #[serde(default)]
    transformer: Table,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CardPrecision {
    /// Keep the VAE decoder in fp32 when the rest goes to fp16/bf16 (SDXL's VAE overflows in fp16).
    #[serde(default)]
    vae_decoder_fp32: bool,
    /// Keep the text encoder in fp32 (T5 overflows in fp16).
    #[serde(default)]
    text_encoder_fp32: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CardInt8 {
    exclude: Option<Vec<(usize, usize)>>,
}

impl ModelCard {
    /// A built-in card by name, or a card file by path.
    pub fn load(spec: &str) -> Result<Self> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == spec) {
            return Self::parse(text, &format!("builtin:{spec}"));
        }
        let path = Path::new(spec);
        if !path.is_file() {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            return Err(Error::bad_input(format!(
                "unknown model card `{spec}`: not a file and not one of {}",
                names.join(", ")
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read", e))?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, source: &str) -> Result<Self> {
        super::profile::from_toml(text, &format!("model card {source}"))
    }

    /// Keep the VAE decoder in fp32 when the rest goes to fp16/bf16.
    pub fn vae_decoder_fp32(&self) -> bool {
        self.precision.vae_decoder_fp32
    }

    /// Keep the text encoder in fp32 when the rest goes to fp16/bf16.
    pub fn text_encoder_fp32(&self) -> bool {
        self.precision.text_encoder_fp32
    }

    /// The card's int8 exclude list, if it has one.
    pub fn int8_exclude(&self) -> Option<&[(usize, usize)]> {
        self.int8_dynamic.exclude.as_deref()
    }

    /// The built-in card that recognises the pipeline in `dir` by its denoiser's config.json, if any.
    pub fn detect_dir(dir: &crate::pipeline::PipelineDir) -> Option<Self> {
        let component = dir.denoiser();
        Self::detect(component, &dir.component_config(component).ok()?)
    }

    /// The built-in card whose `[match.<component>]` fields (`unet` or `transformer`) all equal the
    /// component's config.json (the most specific match wins), if any.
    pub fn detect(component: &str, config: &serde_json::Value) -> Option<Self> {
        let mut best: Option<(usize, ModelCard)> = None;
        for (name, _) in BUILTIN {
            let card = Self::load(name).ok()?;
            let fields = match component {
                "transformer" => &card.matches.transformer,
                _ => &card.matches.unet,
            };
            if fields.is_empty() {
                continue;
            }
            let all = fields.iter().all(|(k, v)| config.get(k).is_some_and(|c| same(c, v)));
            if all && best.as_ref().is_none_or(|(n, _)| fields.len() > *n) {
                best = Some((fields.len(), card));
            }
        }
        best.map(|(_, c)| c)
    }

    /// The exclude list to use: the card's, else the seed's.
    pub fn exclude_or_seed(card: Option<&ModelCard>) -> Vec<(usize, usize)> {
        card.and_then(ModelCard::int8_exclude).map_or_else(|| SEED_INT8_EXCLUDE.to_vec(), <[_]>::to_vec)
    }
}

/// A JSON config value equals a TOML card value (numbers, strings, booleans, lists of them).
fn same(json: &serde_json::Value, toml: &Value) -> bool {
    match (json, toml) {
        (serde_json::Value::Number(a), Value::Integer(b)) => a.as_i64() == Some(*b),
        (serde_json::Value::Number(a), Value::Float(b)) => a.as_f64() == Some(*b),
        (serde_json::Value::String(a), Value::String(b)) => a == b,
        (serde_json::Value::Bool(a), Value::Boolean(b)) => a == b,
        (serde_json::Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_cards_parse_and_are_detected() {
        for (name, _) in BUILTIN {
            let card = ModelCard::load(name).unwrap();
            if !name.starts_with("pixart") {
                assert_eq!(card.int8_exclude(), Some(&SEED_INT8_EXCLUDE[..]), "{name}");
            }
        }
        let sdxl: serde_json::Value = serde_json::json!({
            "cross_attention_dim": 2048, "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 10]
        });
        assert_eq!(ModelCard::detect("unet", &sdxl).unwrap().name, "sdxl");
        // SSD-1B's UNet (export_onnx.py's SSD1B_UNET); the old approximation (SDXL's cross-attention mid block,
        // the same depths both ways) is neither card.
        let ssd: serde_json::Value = serde_json::json!({
            "cross_attention_dim": 2048, "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 4],
            "reverse_transformer_layers_per_block": [[4, 4, 10], [2, 1, 1], [1, 1, 1]], "mid_block_type": "UNetMidBlock2D"
        });
        assert_eq!(ModelCard::detect("unet", &ssd).unwrap().name, "ssd-1b");
        let approximation: serde_json::Value = serde_json::json!({
            "cross_attention_dim": 2048, "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 4],
            "mid_block_type": "UNetMidBlock2DCrossAttn"
        });
        assert!(ModelCard::detect("unet", &approximation).is_none());
        let sd15 = serde_json::json!({"cross_attention_dim": 768, "block_out_channels": [320, 640, 1280, 1280]});
        let card = ModelCard::detect("unet", &sd15).unwrap();
        assert_eq!(card.name, "sd15");
        assert!(!card.vae_decoder_fp32());
        assert!(ModelCard::load("sdxl").unwrap().vae_decoder_fp32());
        assert!(ModelCard::detect("unet", &serde_json::json!({"cross_attention_dim": 8})).is_none());
    }

    /// PixArt's cards match the transformer's config (the hub's PixArt-XL-2 configs), never a UNet's.
    #[test]
    fn pixart_cards_match_the_transformer_config() {
        let dit = |sample_size| {
            serde_json::json!({
                "_class_name": "PixArtTransformer2DModel", "num_layers": 28, "num_attention_heads": 16,
                "attention_head_dim": 72, "patch_size": 2, "caption_channels": 4096, "in_channels": 4,
                "out_channels": 8, "sample_size": sample_size, "norm_type": "ada_norm_single"
            })
        };
        let card = ModelCard::detect("transformer", &dit(128)).unwrap();
        assert_eq!(card.name, "pixart-alpha");
        assert!(card.text_encoder_fp32());
        assert!(!card.vae_decoder_fp32());
        assert_eq!(card.int8_exclude(), None);
        assert_eq!(ModelCard::detect("transformer", &dit(64)).unwrap().name, "pixart-alpha-512");
        assert!(ModelCard::detect("transformer", &dit(32)).is_none());
        assert!(ModelCard::detect("unet", &dit(128)).is_none());
        // A UNet card never matches a transformer config, even one that happens to share a field.
        let sd15_like = serde_json::json!({"cross_attention_dim": 768, "block_out_channels": [320, 640, 1280, 1280]});
        assert!(ModelCard::detect("transformer", &sd15_like).is_none());
        assert!(!ModelCard::load("sd15").unwrap().text_encoder_fp32());
    }

    #[test]
    fn malformed_exclude_list_is_a_clear_error() {
        let err = ModelCard::parse("name = \"x\"\n[int8-dynamic]\nexclude = [[1, 2], \"3x4\"]\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("model card x.toml: key `int8-dynamic.exclude[1]`: invalid type"), "{err}");
        let err = ModelCard::parse("name = \"x\"\nstep = 30\n", "x.toml").unwrap_err().to_string();
        assert!(err.contains("key `step`: unknown field"), "{err}");
    }
}
