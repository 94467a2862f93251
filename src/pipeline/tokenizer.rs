//! CLIP tokenizers built from a checkpoint's `vocab.json` + `merges.txt` and `tokenizer_config.json`,
//! the way transformers' `CLIPTokenizer` builds them (it runs on the `tokenizers` library).

use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::model_dir::read_json;
use crate::{Error, Result};

/// CLIP's pre-tokenisation pattern: special tokens, English contractions, letter runs, single digits,
/// and runs of other non-space characters.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Token ids for one prompt, padded to `model_max_length`.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    /// The prompt had more tokens than fit; the tail was dropped.
    pub truncated: bool,
}

pub struct ClipTokenizer {
    inner: Tokenizer,
    max_length: usize,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
}

impl ClipTokenizer {
    /// Loads `dir/tokenizer.json` if present, else builds the tokenizer from `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() { read_json(&config_path)? } else { Value::Null };
        let special_map_path = dir.join("special_tokens_map.json");
        let special_map = if special_map_path.is_file() { read_json(&special_map_path)? } else { Value::Null };
        let token = |key: &str, default: &str| -> String {
            token_content(config.get(key))
                .or_else(|| token_content(special_map.get(key)))
                .unwrap_or_else(|| default.to_string())
        };
        let bos = token("bos_token", "<|startoftext|>");
        let eos = token("eos_token", "<|endoftext|>");
        let unk = token("unk_token", "<|endoftext|>");
        let pad = token("pad_token", &eos);
        let max_length = config
            .get("model_max_length")
            .and_then(Value::as_f64)
            .filter(|m| (2.0..=1e6).contains(m))
            .map(|m| m as usize)
            .unwrap_or(77);

        let mut inner = if dir.join("tokenizer.json").is_file() {
            Tokenizer::from_file(dir.join("tokenizer.json"))
                .map_err(|e| Error::bad_file(dir.join("tokenizer.json"), format!("not a valid tokenizer: {e}")))?
        } else {
            build_from_vocab(dir, &unk)?
        };
        // Special tokens are matched in the raw text, before normalisation, as transformers adds them.
        let specials: Vec<AddedToken> =
            [&pad, &bos, &eos, &unk].iter().map(|t| AddedToken::from(t.to_string(), true)).collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| Error::bad_file(dir, format!("cannot add the special tokens: {e}")))?;
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| Error::bad_file(dir, format!("special token `{t}` is not in the vocabulary")))
        };
        Ok(ClipTokenizer { bos_id: id(&bos)?, eos_id: id(&eos)?, pad_id: id(&pad)?, max_length, inner })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `<bos> tokens <eos>`, truncated and padded to `model_max_length`, as diffusers asks for
    /// (`padding="max_length", truncation=True`).
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let encoding =
            self.inner.encode(text, false).map_err(|e| Error::bad_input(format!("cannot tokenize the prompt: {e}")))?;
        let tokens = encoding.get_ids();
        let room = self.max_length - 2;
        let truncated = tokens.len() > room;
        let mut ids: Vec<i64> = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id as i64);
        ids.extend(tokens.iter().take(room).map(|&t| t as i64));
        ids.push(self.eos_id as i64);
        ids.resize(self.max_length, self.pad_id as i64);
        Ok(Encoded { ids, truncated })
    }
}

/// A special token in a config: a plain string or an `AddedToken` object with `content`.
fn token_content(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn build_from_vocab(dir: &Path, unk: &str) -> Result<Tokenizer> {
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .unk_token(unk.to_string())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".to_string())
        .build()
        .map_err(|e| {
            Error::bad_file(dir, format!("cannot build a BPE tokenizer from vocab.json and merges.txt: {e}"))
        })?;
    let pattern_err = |e| Error::internal(format!("CLIP tokenizer pattern: {e}"));
    let normalizer = NormalizerSequence::new(vec![
        NFC.into(),
        Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ")
            .map_err(pattern_err)?
            .into(),
        Lowercase.into(),
    ]);
    let split = Split::new(SplitPattern::Regex(CLIP_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
        .map_err(pattern_err)?;
    let pre_tokenizer = PreTokenizerSequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]);
    let mut tokenizer = Tokenizer::new(bpe);
    let setup_err = |e| Error::internal(format!("CLIP tokenizer set-up: {e}"));
    tokenizer.with_normalizer(Some(NormalizerWrapper::Sequence(normalizer))).map_err(setup_err)?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre_tokenizer)));
    Ok(tokenizer)
}
