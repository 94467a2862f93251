//! Model cards (`models/*.toml`): per-model defaults such as the int8 exclude list, the default size and
//! scheduler, and whether the VAE decoder must stay fp32; recognised from a pipeline's UNet config.

use std::path::Path;

use toml::{Table, Value};

use super::profile::shape_pairs;
use crate::{Error, Result};

/// The cards that ship with dfast.
pub const BUILTIN: [(&str, &str); 3] = [
    ("sd15", include_str!("../../models/sd15.toml")),
    ("sdxl", include_str!("../../models/sdxl.toml")),
    ("ssd-1b", include_str!("../../models/ssd-1b.toml")),
];

/// The seed's single exclude list, found by timing each linear shape on SDXL; the default everywhere.
pub const SEED_INT8_EXCLUDE: [(usize, usize); 19] = [
    (1280, 640),
    (1920, 1280),
    (1920, 640),
    (2048, 1280),
    (2048, 2560),
    (2560, 1280),
    (256, 128),
    (2816, 1280),
    (320, 640),
    (512, 1536),
    (512, 256),
    (512, 512),
    (640, 1280),
    (640, 1920),
    (640, 320),
    (640, 5120),
    (640, 640),
    (960, 320),
    (960, 640),
];

#[derive(Debug, Clone)]
pub struct ModelCard {
    pub name: String,
    pub hub_id: Option<String>,
    pub scheduler: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    /// Keep the VAE decoder in fp32 when the rest goes to fp16/bf16 (SDXL's VAE overflows in fp16).
    pub vae_decoder_fp32: bool,
    pub int8_exclude: Option<Vec<(usize, usize)>>,
    match_unet: Table,
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
        let text = std::fs::read_to_string(path).map_err(|e| Error::bad_file(path, format!("cannot read: {e}")))?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, source: &str) -> Result<Self> {
        let bad = |msg: String| Error::bad_input(format!("model card {source}: {msg}"));
        let table: Table =
            text.parse().map_err(|e: toml::de::Error| bad(format!("not valid TOML: {}", e.message())))?;
        let string = |k: &str| table.get(k).and_then(Value::as_str).map(str::to_string);
        let uint = |k: &str| table.get(k).and_then(Value::as_integer).filter(|v| *v > 0).map(|v| v as usize);
        let int8_exclude = match table.get("int8-dynamic").and_then(|t| t.get("exclude")) {
            Some(v) => Some(shape_pairs(v, &format!("model card {source}: [int8-dynamic] exclude"))?),
            None => None,
        };
        Ok(ModelCard {
            name: string("name").ok_or_else(|| bad("`name` is missing".into()))?,
            hub_id: string("hub_id"),
            scheduler: string("scheduler"),
            width: uint("width"),
            height: uint("height"),
            steps: uint("steps"),
            guidance: table.get("guidance").and_then(Value::as_float).map(|v| v as f32),
            vae_decoder_fp32: table
                .get("precision")
                .and_then(|p| p.get("vae_decoder_fp32"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            int8_exclude,
            match_unet: table
                .get("match")
                .and_then(|m| m.get("unet"))
                .and_then(Value::as_table)
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// The built-in card whose `[match.unet]` fields all equal the UNet's config.json (the most specific
    /// match wins), if any.
    pub fn detect(unet_config: &serde_json::Value) -> Option<Self> {
        let mut best: Option<(usize, ModelCard)> = None;
        for (name, _) in BUILTIN {
            let card = Self::load(name).ok()?;
            if card.match_unet.is_empty() {
                continue;
            }
            let all = card.match_unet.iter().all(|(k, v)| unet_config.get(k).is_some_and(|c| same(c, v)));
            if all && best.as_ref().is_none_or(|(n, _)| card.match_unet.len() > *n) {
                best = Some((card.match_unet.len(), card));
            }
        }
        best.map(|(_, c)| c)
    }

    /// The exclude list to use: the card's, else the seed's.
    pub fn exclude_or_seed(card: Option<&ModelCard>) -> Vec<(usize, usize)> {
        card.and_then(|c| c.int8_exclude.clone()).unwrap_or_else(|| SEED_INT8_EXCLUDE.to_vec())
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
            assert_eq!(card.int8_exclude.as_deref(), Some(&SEED_INT8_EXCLUDE[..]), "{name}");
        }
        let sdxl: serde_json::Value = serde_json::json!({
            "cross_attention_dim": 2048, "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 10]
        });
        assert_eq!(ModelCard::detect(&sdxl).unwrap().name, "sdxl");
        let ssd: serde_json::Value = serde_json::json!({
            "cross_attention_dim": 2048, "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 4]
        });
        assert_eq!(ModelCard::detect(&ssd).unwrap().name, "ssd-1b");
        let sd15 = serde_json::json!({"cross_attention_dim": 768, "block_out_channels": [320, 640, 1280, 1280]});
        let card = ModelCard::detect(&sd15).unwrap();
        assert_eq!(card.name, "sd15");
        assert!(!card.vae_decoder_fp32);
        assert!(ModelCard::detect(&serde_json::json!({"cross_attention_dim": 8})).is_none());
    }

    #[test]
    fn malformed_exclude_list_is_a_clear_error() {
        let err = ModelCard::parse("name = \"x\"\n[int8-dynamic]\nexclude = [[1, 2], \"3x4\"]\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("entry 2 is not"), "{err}");
    }
}
