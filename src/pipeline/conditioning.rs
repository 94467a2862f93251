//! Prompt conditioning: text encoders, SDXL's concatenated hidden states, pooled embeddings and
//! `time_ids`, stacked `[negative, positive]` for classifier-free guidance as diffusers does.

use ndarray::{Array2, ArrayD, Axis, IxDyn, concatenate};

use super::tokenizer::ClipTokenizer;
use crate::runtime::{HostTensor, Model};
use crate::{Error, Result};

/// What the UNet is conditioned on, batch-stacked (uncond first when guidance is on).
pub struct Conditioning {
    /// `[batch, 77, dim]`.
    pub encoder_hidden_states: ArrayD<f32>,
    /// SDXL: pooled `text_embeds` `[batch, dim]` and `time_ids` `[batch, 6]`.
    pub added: Option<(ArrayD<f32>, ArrayD<f32>)>,
    /// An LCM UNet's `timestep_cond` `[batch, dim]`: the guidance scale's embedding.
    pub timestep_cond: Option<ArrayD<f32>>,
}

impl Conditioning {
    /// `batch` images per prompt: each half of a `[negative, positive]` stack (or the single positive)
    /// repeated `batch` times, as diffusers' `num_images_per_prompt` does.
    pub fn repeat_per_prompt(self, batch: usize, guidance: bool) -> Result<Self> {
        if batch <= 1 {
            return Ok(self);
        }
        let repeat = |a: ArrayD<f32>| -> Result<ArrayD<f32>> {
            let halves = if guidance { 2 } else { 1 };
            let mut parts = Vec::new();
            for h in 0..halves {
                let one = a.slice_axis(Axis(0), (h..h + 1).into());
                parts.extend(std::iter::repeat_n(one, batch));
            }
            concatenate(Axis(0), &parts).map_err(|e| Error::bad_input(format!("cannot batch embeddings: {e}")))
        };
        Ok(Conditioning {
            encoder_hidden_states: repeat(self.encoder_hidden_states)?,
            added: match self.added {
                Some((embeds, time_ids)) => Some((repeat(embeds)?, repeat(time_ids)?)),
                None => None,
            },
            timestep_cond: self.timestep_cond,
        })
    }
}

/// One text encoder with its tokenizer.
pub struct TextEncoder {
    pub tokenizer: ClipTokenizer,
    pub model: Model,
    /// Warnings for the user (truncated prompts), collected for the caller to show.
    pub warnings: Vec<String>,
}

impl TextEncoder {
    /// Runs the encoder on one prompt; notes a warning naming `what` ("the prompt", "the negative prompt")
    /// when it is truncated.
    fn run(&mut self, prompt: &str, what: &str) -> Result<std::collections::HashMap<String, ArrayD<f32>>> {
        let encoded = self.tokenizer.encode(prompt)?;
        if encoded.truncated {
            self.warnings.push(format!(
                "{what} is longer than {} tokens; the text encoder only sees the first {}",
                self.tokenizer.max_length() - 2,
                self.tokenizer.max_length() - 2
            ));
        }
        let n = encoded.ids.len();
        let ids = ArrayD::from_shape_vec(IxDyn(&[1, n]), encoded.ids).expect("ids are 1 x n");
        self.model.run(vec![("input_ids", HostTensor::I64(ids))])
    }

    fn output(&self, outputs: &mut std::collections::HashMap<String, ArrayD<f32>>, name: &str) -> Result<ArrayD<f32>> {
        outputs
            .remove(name)
            .ok_or_else(|| Error::bad_file(self.model.path(), format!("the text encoder has no output `{name}`")))
    }

    /// `hidden_states[-(1 + back)]`: `back` 1 is the penultimate hidden state, which SDXL conditions on.
    fn hidden_state(
        &self,
        outputs: &mut std::collections::HashMap<String, ArrayD<f32>>,
        back: usize,
    ) -> Result<ArrayD<f32>> {
        let last = outputs
            .keys()
            .filter_map(|k| k.strip_prefix("hidden_states.").and_then(|i| i.parse::<usize>().ok()))
            .max()
            .ok_or_else(|| {
                Error::bad_file(
                    self.model.path(),
                    "the text encoder has no `hidden_states.N` outputs; SDXL needs the penultimate hidden state",
                )
            })?;
        if back > last {
            return Err(Error::bad_input(format!(
                "--clip-skip {} skips more layers than {} has ({last})",
                back - 1,
                self.model.path().display()
            )));
        }
        self.output(outputs, &format!("hidden_states.{}", last - back))
    }
}

/// The graph output that holds SD's clip-skipped prompt embedding: the text encoder's final layer norm
/// applied to the hidden state `clip_skip` layers before the last (`hidden_states[-(clip_skip + 1)]`).
pub fn clip_skip_output(clip_skip: usize) -> String {
    format!("clip_skip.{clip_skip}")
}

/// SD 1.x/2.x: `last_hidden_state` of the one encoder; with `clip_skip`, the prompt's (not the negative
/// prompt's, as in diffusers) from the encoder's [`clip_skip_output`].
pub fn encode_sd(
    encoder: &mut TextEncoder,
    prompt: &str,
    negative_prompt: Option<&str>,
    guidance: bool,
    clip_skip: Option<usize>,
) -> Result<Conditioning> {
    let mut pos = encoder.run(prompt, "the prompt")?;
    let pos = match clip_skip {
        None => encoder.output(&mut pos, "last_hidden_state")?,
        Some(k) => encoder.output(&mut pos, &clip_skip_output(k))?,
    };
    let hidden = if guidance {
        let mut neg = encoder.run(negative_prompt.unwrap_or(""), "the negative prompt")?;
        let neg = encoder.output(&mut neg, "last_hidden_state")?;
        stack(&neg, &pos)?
    } else {
        pos
    };
    Ok(Conditioning { encoder_hidden_states: hidden, added: None, timestep_cond: None })
}

/// SDXL: both encoders' penultimate hidden states concatenated on the last axis, the second encoder's
/// pooled `text_embeds`, and `time_ids` = original size + crop top-left + target size. With `clip_skip`, the
/// prompt's hidden states are `hidden_states[-(clip_skip + 2)]` (the negative prompt's stay the penultimate,
/// as in diffusers).
pub fn encode_sdxl(
    encoders: &mut [TextEncoder; 2],
    prompt: &str,
    negative_prompt: Option<&str>,
    guidance: bool,
    force_zeros_for_empty_prompt: bool,
    (height, width): (usize, usize),
    clip_skip: Option<usize>,
) -> Result<Conditioning> {
    let encode =
        |encoders: &mut [TextEncoder; 2], text: &str, back: usize, what: &str| -> Result<(ArrayD<f32>, ArrayD<f32>)> {
            let mut hidden = Vec::new();
            let mut pooled = None;
            for encoder in encoders.iter_mut() {
                let mut out = encoder.run(text, what)?;
                hidden.push(encoder.hidden_state(&mut out, back)?);
                // diffusers keeps the pooled output of the last encoder only.
                let name = if out.contains_key("text_embeds") { "text_embeds" } else { "pooler_output" };
                pooled = Some(encoder.output(&mut out, name)?);
            }
            let views: Vec<_> = hidden.iter().map(|h| h.view()).collect();
            let hidden = concatenate(Axis(hidden[0].ndim() - 1), &views)
                .map_err(|e| Error::bad_input(format!("text encoder outputs do not concatenate: {e}")))?;
            Ok((hidden, pooled.expect("two encoders")))
        };
    let (pos_hidden, pos_pooled) = encode(encoders, prompt, 1 + clip_skip.unwrap_or(0), "the prompt")?;
    let time_ids = [height as f32, width as f32, 0.0, 0.0, height as f32, width as f32];
    let batch = if guidance { 2 } else { 1 };
    let time_ids = Array2::from_shape_fn((batch, 6), |(_, j)| time_ids[j]).into_dyn();
    if !guidance {
        return Ok(Conditioning {
            encoder_hidden_states: pos_hidden,
            added: Some((pos_pooled, time_ids)),
            timestep_cond: None,
        });
    }
    let (neg_hidden, neg_pooled) = if negative_prompt.is_none() && force_zeros_for_empty_prompt {
        (ArrayD::zeros(pos_hidden.raw_dim()), ArrayD::zeros(pos_pooled.raw_dim()))
    } else {
        encode(encoders, negative_prompt.unwrap_or(""), 1, "the negative prompt")?
    };
    Ok(Conditioning {
        encoder_hidden_states: stack(&neg_hidden, &pos_hidden)?,
        added: Some((stack(&neg_pooled, &pos_pooled)?, time_ids)),
        timestep_cond: None,
    })
}

/// diffusers' `get_guidance_scale_embedding(w, embedding_dim)` for `rows` rows of `w = guidance_scale - 1`,
/// in float32 as torch computes it: `w * 1000` times `exp(-ln(10000) / (half - 1) * k)` for `k < half`, its
/// sines then its cosines (zero-padded to an odd width).
pub fn guidance_scale_embedding(guidance_scale: f32, embedding_dim: usize, rows: usize) -> ArrayD<f32> {
    let w = (guidance_scale - 1.0) * 1000.0;
    let half = embedding_dim / 2;
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let args: Vec<f32> = (0..half).map(|k| w * (k as f32 * -step).exp()).collect();
    let row: Vec<f32> = args
        .iter()
        .map(|a| a.sin())
        .chain(args.iter().map(|a| a.cos()))
        .chain(std::iter::repeat_n(0.0, embedding_dim % 2))
        .collect();
    Array2::from_shape_fn((rows, embedding_dim), |(_, j)| row[j]).into_dyn()
}

fn stack(a: &ArrayD<f32>, b: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    concatenate(Axis(0), &[a.view(), b.view()]).map_err(|e| Error::bad_input(format!("cannot batch embeddings: {e}")))
}
