#!/usr/bin/env python3
"""Builds dfast's embedded tiny pipelines and diffusers' reference outputs for them.

Writes, relative to the repository root:
  models/tiny-sd/    StableDiffusionPipeline  (CLIPTextModel, UNet2DConditionModel, AutoencoderKL)
  models/tiny-sdxl/  StableDiffusionXLPipeline (two text encoders, `text_time` added conditioning)
each in the ONNX layout that Optimum exports (model_index.json, scheduler/, tokenizer*/, text_encoder*/,
unet/, vae_decoder/, vae_encoder/), exported with the TorchScript exporter at opset 17;
  models/tiny-sd-dynamo/, models/tiny-sdxl-dynamo/: the same weights through the dynamo exporter at opset 23;
  models/variants/   UNet components that tests swap into a copy of a pipeline above (same weights, so the
                     same references apply): tiny-sd-unet-timestep1 (TorchScript, `timestep` declared [1]),
                     tiny-sd-dynamo-unet-static (dynamo, every input static: batch 2, 64x64, `timestep` [1]);
  tests/references/  diffusers' own outputs: token ids, torch CPU noise per seed, and per pipeline and
                     scheduler the final latents and decoded uint8 image.
With --pixart, only the PixArt-α fixtures (nothing of the above is written):
  models/tiny-pixart/, models/tiny-pixart-dynamo/  PixArtAlphaPipeline (T5EncoderModel with a SentencePiece
                     tokenizer trained here, PixArtTransformer2DModel with sample_size 32, tiny-sd's VAE decoder,
                     the checkpoint's DPM-Solver++ scheduler); the ONNX interfaces are in the comment above
                     PIXART_MAX_SEQUENCE;
  models/variants/tiny-pixart-1024/transformer  a transformer with sample_size 128 (the `resolution` and
                     `aspect_ratio` conditions) for a copy of tiny-pixart;
  tests/references/tiny-pixart*/  diffusers' PixArtAlphaPipeline outputs for them.
With --few-step, only tests/references/<pipeline>/<FEW_STEP_CASES> (nothing else is written): diffusers'
                     text-to-image pipelines with the stochastic few-step schedulers (Euler ancestral, LCM), on
                     tiny-sd's and tiny-sdxl's weights rebuilt here and checked against their committed ONNX
                     components, the noise of every step from the seed's one generator.
With --flags, only tests/references/<pipeline>/<FLAG_CASES>: diffusers given the options that dfast generate's
                     --eta, --karras, --timestep-spacing, --guidance-rescale and --clip-skip set, on the same
                     rebuilt weights.
With --lcm, only models/tiny-lcm (LatentConsistencyModelPipeline: an LCM UNet with `time_cond_proj_dim`, whose
                     ONNX export takes the guidance embedding as `timestep_cond`; tiny-sd's other components
                     linked) and tests/references/tiny-lcm/.
With --img2img, only the img2img and inpainting fixtures (nothing of the above is written):
  models/tiny-sd-inpaint/  StableDiffusionInpaintPipeline: a 9-channel inpainting UNet (build_sd_inpaint_unet),
                     tiny-sd's other components linked;
  tests/references/inputs/  the input picture and mask (83x53) and Pillow's Lanczos on test patterns;
  tests/references/<pipeline>/img2img-*, inpaint-*  diffusers' img2img and inpainting pipelines' outputs
                     (IMAGE_CASES), on tiny-sd's and tiny-sdxl's weights rebuilt here and checked against their
                     committed ONNX components (check_committed).

The weights are random (a fixed torch seed): the point is numerical parity with diffusers, not pictures.
Tokenizers use the real 49408-token CLIP BPE vocabulary, taken from open_clip_torch's
bpe_simple_vocab_16e6.txt.gz and written as vocab.json + merges.txt, as the real checkpoints hold them.

Run with the pinned versions of requirements-fixtures.txt (torch 2.11.0, diffusers 0.42.1):
  python experiment-scripts/make_tiny_pipelines.py              # everything
  python experiment-scripts/make_tiny_pipelines.py --variants   # models/variants/ only
  python experiment-scripts/make_tiny_pipelines.py --pixart     # the PixArt-α fixtures only (needs sentencepiece)
  python experiment-scripts/make_tiny_pipelines.py --img2img    # the img2img and inpainting fixtures only
  python experiment-scripts/make_tiny_pipelines.py --few-step   # the few-step schedulers' references only
  python experiment-scripts/make_tiny_pipelines.py --flags      # the scheduler and prompt flags' references only
  python experiment-scripts/make_tiny_pipelines.py --lcm        # models/tiny-lcm and its references only
  python experiment-scripts/make_tiny_pipelines.py --pixart-other /tmp/pixart-other   # an untested config, see
                                                                # save_pixart_other (not committed)
"""

import argparse
import dataclasses
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

import common  # a sibling module (this script's folder is on sys.path)

ROOT = common.ROOT


@dataclasses.dataclass(frozen=True)
class ExportStyle:
    """Which torch.onnx exporter writes a component, at which opset."""

    dynamo: bool
    opset: int


# The two exporter styles users have (FIELD.md): TorchScript at opset 17, as Optimum exports, and dynamo at
# opset 23 with native Attention / GroupNormalization / LayerNormalization nodes.
TORCHSCRIPT = ExportStyle(dynamo=False, opset=17)
DYNAMO = ExportStyle(dynamo=True, opset=23)

# Per pipeline: the default scheduler plus the three others; DDIM with v_prediction and trailing spacing,
# DPM-Solver++ with Karras sigmas. Keys are dfast's --scheduler names.
SCHEDULER_OVERRIDES = {
    "euler": {},
    "ddim": {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "pndm": {},
    "dpm++": {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++"},
}
SCHEDULERS = {key: (common.scheduler_class(key), overrides) for key, overrides in SCHEDULER_OVERRIDES.items()}

PROMPT = "a photo of an astronaut riding a horse on mars, highly detailed"
NEGATIVE_PROMPT = "blurry, low quality"
STEPS = 10

TOKEN_PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "",
    (
        "A majestic lion standing on a rocky cliff at sunset, golden light, dramatic clouds, ultra detailed fur, "
        "cinematic composition, 35mm photograph, shallow depth of field, award winning wildlife photography"
    ),
    "Ein Café in Zürich, 東京の夜景, naïve résumé, emoji 🚀✨ and ﬁ ligature",
    "hello!!! what's up?? (masterpiece:1.2), [best quality] -- 3.14 #tag @user it's we'll they're I'd",
    "  multiple   spaces\tand\nnewlines  ",
    "UPPER lower MiXeD CamelCaseWord",
    "1234567890 and 3.5mm, 1,000,000 $100 50%",
    " ".join(["a very long prompt that keeps going"] * 16),
    "<|startoftext|> literal special tokens <|endoftext|>",
]


def bytes_to_unicode():
    """GPT-2/CLIP's reversible byte -> printable unicode map (the order defines the first 256 ids)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_vocab(dest: Path):
    """vocab.json + merges.txt from open_clip's BPE file, as Hugging Face's CLIP checkpoints hold them.

    Without open_clip (a GPU host that cannot install it), the same two files are copied from the committed
    models/tiny-sd/tokenizer, which this function wrote."""
    try:
        import open_clip
    except ImportError:
        committed = common.MODELS / "tiny-sd" / "tokenizer"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(committed / name, dest / name)
        return

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as f:
        merges = f.read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(merges) == 48894
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    with open(dest / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(" ".join(m) + "\n" for m in merges)


# CLIP's ids for the start of TOKEN_PROMPTS[0], as the real vocabulary gives them.
REAL_CLIP_IDS = {"a photo of an astronaut": [49406, 320, 1125, 539, 550, 18376, 49407]}


def make_tokenizer(vocab_dir: Path, pad_token: str) -> CLIPTokenizer:
    """The tokenizer built the way diffusers loads one, `from_pretrained` on a folder with vocab.json and
    merges.txt. (The `CLIPTokenizer(vocab_file=..., merges_file=...)` constructor was seen to build a 2-token
    vocabulary under transformers 5.24: "a red fox" -> [0, 2, 2, ...].) Checked against the real ids."""
    tok = CLIPTokenizer.from_pretrained(str(vocab_dir), pad_token=pad_token, model_max_length=77)
    for text, ids in REAL_CLIP_IDS.items():
        got = tok(text).input_ids
        assert got == ids, f"tokenizer from {vocab_dir}: {text!r} -> {got}, expected CLIP's {ids}"
    return tok


def text_config(projection: bool) -> CLIPTextConfig:
    # Real CLIP ids: bos 49406, eos 49407 (the pooled output reads the first eos position), pad 1.
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=8 if projection else 512,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def tiny_vae(scaling_factor: float, force_upcast: bool) -> AutoencoderKL:
    # Four blocks, so that the scale factor is 2^(4-1) = 8 as in every real checkpoint.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def build_sd(vocab_dir: Path) -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=8,
        use_linear_projection=False,
    )
    vae = tiny_vae(0.18215, False)
    text_encoder = CLIPTextModel(text_config(projection=False))
    tokenizer = make_tokenizer(vocab_dir, "<|endoftext|>")
    scheduler = PNDMScheduler.from_config(common.SD15_SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe.to(torch.float32)


def build_sdxl(vocab_dir: Path) -> StableDiffusionXLPipeline:
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(text_config(projection=False))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(projection=True))
    addition_time_embed_dim = 4
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=16,  # 8 + 8: both encoders' hidden states, concatenated
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + 8,
    )
    vae = tiny_vae(0.13025, True)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=make_tokenizer(vocab_dir, "<|endoftext|>"),
        tokenizer_2=make_tokenizer(vocab_dir, "!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(common.SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )
    return pipe.to(torch.float32)


# ---------------------------------------------------------------------------------------------------------
# ONNX export (TorchScript exporter, opset 17, dynamic batch/height/width), in Optimum's layout.


class TextEncoderWrapper(torch.nn.Module):
    def __init__(self, model, projection: bool, hidden_states: bool):
        super().__init__()
        self.model, self.projection, self.hidden_states = model, projection, hidden_states

    def forward(self, input_ids):
        out = self.model(input_ids, output_hidden_states=self.hidden_states)
        first = out.text_embeds if self.projection else out.pooler_output
        result = [first, out.last_hidden_state]
        if self.hidden_states:
            result += list(out.hidden_states)
        return tuple(result)


class UNetWrapper(torch.nn.Module):
    def __init__(self, unet, sdxl: bool):
        super().__init__()
        self.unet, self.sdxl = unet, sdxl

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.sdxl else None
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]


class GuidanceEmbeddingUNetWrapper(UNetWrapper):
    """An LCM UNet (`time_cond_proj_dim` set): the guidance scale's embedding (diffusers'
    `get_guidance_scale_embedding`) is the input `timestep_cond`, after `encoder_hidden_states`, as Optimum
    names it."""

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond, text_embeds=None, time_ids=None):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.sdxl else None
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond,
                         added_cond_kwargs=added, return_dict=False)[0]


class OneTimestepUNetWrapper(UNetWrapper):
    """Takes `timestep` as one value of shape [1] and expands it over the batch inside the graph, as legacy
    exports and static-shape exports declare it."""

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        timestep = timestep.expand(sample.shape[0])
        return super().forward(sample, timestep, encoder_hidden_states, text_embeds, time_ids)


class VaeDecoderWrapper(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VaeEncoderWrapper(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        h = self.vae.encoder(sample)
        return self.vae.quant_conv(h) if self.vae.quant_conv is not None else h


def export(module, args, path: Path, input_names, output_names, dynamic_axes, *, style: ExportStyle,
           max_sequence: int = 77):
    path.parent.mkdir(parents=True, exist_ok=True)
    if style.dynamo:
        # torch.export wants bounded, shared dimension objects: the UNet's upsampler branches on batch >= 64,
        # and the downsampling makes height and width multiples that Dim.AUTO works out.
        dims = {
            "batch_size": torch.export.Dim.AUTO,
            "sequence_length": torch.export.Dim("sequence", min=1, max=max_sequence),
            "height": torch.export.Dim.AUTO,
            "width": torch.export.Dim.AUTO,
        }
        shapes = {n: {a: dims[d] for a, d in dynamic_axes.get(n, {}).items()} or None for n in input_names}
        exporter = {"dynamo": True, "external_data": False, "dynamic_shapes": shapes}
    else:
        exporter = {"dynamo": False, "do_constant_folding": True, "dynamic_axes": dynamic_axes}
    with torch.no_grad():
        torch.onnx.export(
            module,
            tuple(args),
            str(path),
            input_names=input_names,
            output_names=output_names,
            opset_version=style.opset,
            **exporter,
        )
    # The export must reproduce torch on its own example inputs (skipped above 2 GB, where a second copy of
    # the weights in ONNX Runtime would double the memory of a full-size export).
    if folder_bytes(path.parent) > 2**31:
        return
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(input_names, args)}
    got = sess.run(None, feeds)
    with torch.no_grad():
        want = module(*args)
    want = want if isinstance(want, (tuple, list)) else (want,)
    # fp32 accumulation order differs between torch's and ONNX Runtime's kernels, and more so the deeper the
    # model: the SD1.5 VAE decoder at 512x512 measured 1.05e-5 on an AVX2-only CPU (AMD EPYC Zen 2). A wrong
    # export is off by far more than either bound.
    tol = 1e-5 if folder_bytes(path.parent) < 2**26 else 1e-4
    for name, g, w in zip(output_names, got, want):
        err = relative_l2(g, w.numpy())
        assert err < tol, f"{path}: output {name} differs from torch (relative L2 {err:.2e})"


def relative_l2(got, want) -> float:
    """|got - want| / |want| (L2 norms), how every export is checked against torch."""
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def export_text_encoder(model, folder: Path, projection: bool, hidden_states: bool, ids_dtype, *,
                        style: ExportStyle = TORCHSCRIPT):
    layers = model.config.num_hidden_layers
    outputs = ["text_embeds" if projection else "pooler_output", "last_hidden_state"]
    if hidden_states:
        outputs += [f"hidden_states.{i}" for i in range(layers + 1)]
    ids = torch.randint(0, 49406, (2, 77), dtype=ids_dtype)
    ids[:, 0] = 49406
    ids[:, 10] = 49407
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"}}
    axes.update({o: {0: "batch_size"} for o in outputs})
    wrapper = TextEncoderWrapper(model, projection, hidden_states)
    export(wrapper, [ids], folder / "model.onnx", ["input_ids"], outputs, axes, style=style)
    model.config.to_json_file(folder / "config.json")


def export_unet(unet, folder: Path, sdxl: bool, timestep_dtype, timestep_shape: str, static_hw=None, *,
                style: ExportStyle = TORCHSCRIPT):
    """timestep_shape: "scalar" ([]), "batch" ([batch_size]) or "one" ([1], expanded inside the graph).
    static_hw: (latent height, latent width) to export every input with static shapes at batch 2."""
    b, (h, w) = 2, static_hw or (8, 12)
    sample = torch.randn(b, unet.config.in_channels, h, w)  # 9 for an inpainting UNet
    timestep = {
        "scalar": torch.tensor(500, dtype=timestep_dtype),
        "batch": torch.full((b,), 500, dtype=timestep_dtype),
        "one": torch.full((1,), 500, dtype=timestep_dtype),
    }[timestep_shape]
    ehs = torch.randn(b, 77, unet.config.cross_attention_dim)
    args = [sample, timestep, ehs]
    names = ["sample", "timestep", "encoder_hidden_states"]
    axes = {
        "sample": {0: "batch_size", 2: "height", 3: "width"},
        "encoder_hidden_states": {0: "batch_size", 1: "sequence_length"},
        "out_sample": {0: "batch_size", 2: "height", 3: "width"},
    }
    if timestep_shape == "batch":
        axes["timestep"] = {0: "batch_size"}
    guidance_embedding = unet.config.time_cond_proj_dim is not None
    if guidance_embedding:
        args.append(torch.randn(b, unet.config.time_cond_proj_dim))
        names.append("timestep_cond")
        axes["timestep_cond"] = {0: "batch_size"}
    if sdxl:
        text_embeds_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        args += [torch.randn(b, text_embeds_dim), torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]] * b)]
        names += ["text_embeds", "time_ids"]
        axes.update({"text_embeds": {0: "batch_size"}, "time_ids": {0: "batch_size"}})
    if static_hw:
        axes = {}
    if guidance_embedding and timestep_shape == "one":
        raise ValueError("a UNet with time_cond_proj_dim is exported with a scalar or per-row timestep")
    wrapper = GuidanceEmbeddingUNetWrapper if guidance_embedding else UNetWrapper
    wrapper = OneTimestepUNetWrapper if timestep_shape == "one" else wrapper
    export(wrapper(unet, sdxl), args, folder / "model.onnx", names, ["out_sample"], axes, style=style)
    unet.save_config(folder)


def export_vae_decoder(vae, root: Path, example_hw: tuple = (8, 12), *, style: ExportStyle = TORCHSCRIPT):
    """root/vae_decoder, traced on a latent of example_hw (height, width)."""
    lat = torch.randn(1, 4, *example_hw)
    export(
        VaeDecoderWrapper(vae),
        [lat],
        root / "vae_decoder" / "model.onnx",
        ["latent_sample"],
        ["sample"],
        {"latent_sample": {0: "batch_size", 2: "height", 3: "width"}, "sample": {0: "batch_size", 2: "height", 3: "width"}},
        style=style,
    )
    vae.save_config(root / "vae_decoder")


def export_vae_encoder(vae, root: Path, example_hw: tuple = (64, 96), *, style: ExportStyle = TORCHSCRIPT):
    """root/vae_encoder as Optimum exports it: sample [B, 3, H, W] -> latent_parameters [B, 8, H/8, W/8] (the mean
    and log-variance of the latent distribution, `latent_dist.parameters`), traced on an image of example_hw."""
    img = torch.randn(1, 3, *example_hw)
    export(
        VaeEncoderWrapper(vae),
        [img],
        root / "vae_encoder" / "model.onnx",
        ["sample"],
        ["latent_parameters"],
        {"sample": {0: "batch_size", 2: "height", 3: "width"}, "latent_parameters": {0: "batch_size", 2: "height", 3: "width"}},
        style=style,
    )
    vae.save_config(root / "vae_encoder")


def export_vae(vae, root: Path, *, style: ExportStyle = TORCHSCRIPT):
    export_vae_decoder(vae, root, style=style)
    export_vae_encoder(vae, root, style=style)


def legacy_tokenizer_config(pad_token: str) -> dict:
    """tokenizer_config.json as the SD1.5 checkpoint holds it (special tokens as AddedToken dicts)."""

    def added(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    return {
        "add_prefix_space": False,
        "bos_token": added("<|startoftext|>"),
        "do_lower_case": True,
        "eos_token": added("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": pad_token,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added("<|endoftext|>"),
    }


def save_pipeline_layout(pipe, dest: Path, sdxl: bool, vocab_dir: Path, style: ExportStyle = TORCHSCRIPT):
    """model_index.json, scheduler and tokenizers as the checkpoints hold them; then the ONNX components."""
    if dest.exists():
        shutil.rmtree(dest)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        dest.mkdir(parents=True)
        shutil.copy(Path(tmp) / "model_index.json", dest / "model_index.json")
        # The real checkpoint's file verbatim: diffusers' own save would write the class defaults too (e.g.
        # PNDM's timestep_spacing "leading"), which another class then inherits on `from_config`.
        common.write_scheduler_config(dest, common.SDXL_SCHEDULER if sdxl else common.SD15_SCHEDULER)
        for tok in ["tokenizer", "tokenizer_2"] if sdxl else ["tokenizer"]:
            # The real checkpoints ship vocab.json + merges.txt, no tokenizer.json: dfast builds the tokenizer
            # from them. tiny-sd keeps the SD1.5 checkpoint's config files, tiny-sdxl what transformers 5 writes.
            shutil.copytree(Path(tmp) / tok, dest / tok)
            (dest / tok / "tokenizer.json").unlink(missing_ok=True)
            for f in ["vocab.json", "merges.txt"]:
                shutil.copy(vocab_dir / f, dest / tok / f)
            if not sdxl:
                pad = getattr(pipe, tok).pad_token
                (dest / tok / "tokenizer_config.json").write_text(json.dumps(legacy_tokenizer_config(pad), indent=2))
                special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad, "unk_token": "<|endoftext|>"}
                (dest / tok / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    if sdxl:
        export_text_encoder(pipe.text_encoder, dest / "text_encoder", False, True, torch.int64, style=style)
        export_text_encoder(pipe.text_encoder_2, dest / "text_encoder_2", True, True, torch.int64, style=style)
        export_unet(pipe.unet, dest / "unet", True, torch.int64, "batch", style=style)
    else:
        # Real exports differ in input dtypes and ranks: tiny-sd takes int32 ids and a float scalar timestep.
        export_text_encoder(pipe.text_encoder, dest / "text_encoder", False, False, torch.int32, style=style)
        export_unet(pipe.unet, dest / "unet", False, torch.float32, "scalar", style=style)
    export_vae(pipe.vae, dest, style=style)


def save_unet_variants(sd, variants: Path):
    """UNets that declare `timestep` as [1], in both exporter styles, for tests that swap them into a copy of
    tiny-sd / tiny-sd-dynamo. The dynamo one is static-shape too (batch 2, 8x8 latents: the tiny-sd references'
    64x64 with guidance), as static-shape dynamo exports are."""
    for name, style, static_hw in [
        ("tiny-sd-unet-timestep1", TORCHSCRIPT, None),
        ("tiny-sd-dynamo-unet-static", DYNAMO, (8, 8)),
    ]:
        dest = variants / name
        if dest.exists():
            shutil.rmtree(dest)
        export_unet(sd.unet, dest, False, torch.float32, "one", static_hw, style=style)


# ---------------------------------------------------------------------------------------------------------
# References


def randn(seed: int, shape):
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def save_token_references(dest: Path, tokenizers: dict):
    out = {}
    for name, tok in tokenizers.items():
        rows = []
        for prompt in TOKEN_PROMPTS:
            # Exactly the call diffusers' encode_prompt makes.
            ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
            untruncated = tok(prompt, padding="longest").input_ids
            rows.append({"prompt": prompt, "input_ids": ids, "truncated": len(untruncated) > tok.model_max_length})
        out[name] = rows
    (dest / "tokens.json").write_text(json.dumps(out, ensure_ascii=False, indent=1))


def save_noise_references(dest: Path):
    cases = []
    for seed, shape in [(0, [1, 4, 8, 8]), (42, [1, 4, 8, 12]), (1234, [1, 4, 64, 64]), (7, [2, 4, 5, 3]), (3, [1, 4, 1, 3])]:
        name = f"noise_seed{seed}_{'x'.join(map(str, shape))}.npy"
        np.save(dest / name, randn(seed, shape).numpy())
        cases.append({"seed": seed, "shape": shape, "file": name})
    (dest / "noise.json").write_text(json.dumps(cases, indent=1))


def run_reference(pipe, name: str, dest: Path, sdxl: bool, height: int, width: int, seed: int):
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shape = [1, 4, height // vae_scale, width // vae_scale]
    base = dict(pipe.scheduler.config)
    default_cls = type(pipe.scheduler)
    guidance = common.card_defaults("sdxl" if sdxl else "sd15")["guidance"]  # the model card's: 5.0 / 7.5
    for key, (cls, overrides) in SCHEDULERS.items():
        overrides = {} if cls is default_cls else overrides
        pipe.scheduler = cls.from_config(base, **overrides)
        out = dest / name / key
        out.mkdir(parents=True, exist_ok=True)
        pipe.scheduler.save_config(out)
        latents = randn(seed, shape)
        with torch.no_grad():
            final = pipe(
                prompt=PROMPT,
                negative_prompt=NEGATIVE_PROMPT,
                num_inference_steps=STEPS,
                guidance_scale=guidance,
                height=height,
                width=width,
                latents=latents.clone(),
                output_type="latent",
            ).images
            image = pipe.vae.decode(final / pipe.vae.config.scaling_factor, return_dict=False)[0]
        pil = pipe.image_processor.postprocess(image, output_type="pil")[0]
        np.save(out / "latents.npy", final.numpy().astype(np.float32))
        pil.save(out / "image.png")
        params = {
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE_PROMPT,
            "steps": STEPS,
            "guidance": guidance,
            "height": height,
            "width": width,
            "seed": seed,
            "scheduler": key,
            "scheduler_class": cls.__name__,
            "scheduler_overrides": overrides,
        }
        (out / "params.json").write_text(json.dumps(params, indent=1))
        print(f"  {name}/{key}: {cls.__name__} {overrides} |latents| = {final.norm():.4f}")
    pipe.scheduler = default_cls.from_config(base)


# ---------------------------------------------------------------------------------------------------------
# PixArt-α (PixArtAlphaPipeline): a tiny T5 encoder with a SentencePiece tokenizer trained here, a tiny DiT
# (PixArtTransformer2DModel), the VAE decoder and the checkpoint's DPM-Solver++ scheduler.
#
# ONNX interface of transformer/model.onnx (both exporter styles; batch, height, width and S dynamic):
#   hidden_states          float32 [B, 4, h, w]      latents (h, w: the binned size / 8), scaled by the scheduler
#   encoder_hidden_states  float32 [B, S, C]         T5's last_hidden_state (S = 120 = max_sequence_length,
#                                                    C = the T5 width, config.json's caption_channels)
#   encoder_attention_mask int64   [B, S]            the tokenizer's attention mask (1 keep, 0 pad), as diffusers
#                                                    passes it; the graph turns it into a -10000 bias
#   timestep               float32 [B]               the scheduler's timestep expanded to the batch (diffusers
#                                                    passes int64 for DPM-Solver++, float32 for Euler: both are
#                                                    cast to float inside the model, so float32 is exact)
#   resolution             float32 [B, 2]            only when sample_size is 128: (height, width) in pixels of
#   aspect_ratio           float32 [B, 1]              the binned size, and height / width
#   -> out_sample          float32 [B, 8, h, w]      learned sigma: the first 4 channels are the noise prediction
# text_encoder/model.onnx: input_ids int64 [B, S], attention_mask int64 [B, S] -> last_hidden_state [B, S, C].
# vae_decoder/model.onnx: latent_sample [B, 4, h, w] -> sample [B, 3, 8h, 8w], as in the SD fixtures.
# The tokenizer lowercases nothing itself: diffusers' pipeline (clean_caption=False) calls prompt.lower().strip()
# before tokenizing.

PIXART_MAX_SEQUENCE = 120  # the pipeline's max_sequence_length


def PIXART_FOLDERS(models: Path) -> tuple:
    """What --pixart writes under models/."""
    return (models / "tiny-pixart", models / "tiny-pixart-dynamo", models / "variants" / "tiny-pixart-1024")


# Word lists for the tokenizer's training text: caption-like lines, drawn with a fixed seed.
_SUBJECTS = [
    "astronaut", "horse", "cat", "dog", "fox", "lion", "tiger", "robot", "castle", "lighthouse", "mountain", "river",
    "forest", "city", "street", "garden", "bridge", "ship", "train", "car", "bicycle", "owl", "eagle", "dragon",
    "wizard", "knight", "girl", "boy", "woman", "man", "child", "teapot", "cup", "apple", "orange", "flower", "rose",
    "tree", "house", "village", "temple", "tower", "cloud", "moon", "sun", "star", "planet", "ocean", "wave", "beach",
    "desert", "island", "volcano", "waterfall", "squirrel", "penguin", "octopus", "jellyfish", "butterfly",
    "hummingbird", "elephant", "giraffe", "zebra", "kangaroo", "koala", "panda", "wolf", "bear", "rabbit", "deer",
    "turtle", "whale", "dolphin", "shark", "parrot", "peacock", "swan", "flamingo", "hedgehog", "raccoon", "otter",
    "camel", "llama", "spaceship", "airplane", "balloon", "submarine", "motorcycle", "tractor", "bus", "skyscraper",
    "cathedral", "pyramid", "windmill", "cabin", "cottage", "library", "museum", "market", "cafe", "bakery",
    "restaurant", "station", "harbor", "canyon", "glacier", "meadow", "jungle", "swamp", "cave", "lake", "pond",
    "field", "vineyard", "orchard", "samurai", "pirate", "astronomer", "scientist", "chef", "painter", "musician",
    "dancer", "farmer", "sailor", "soldier", "queen", "king", "princess", "monk", "grandmother", "sculpture", "lantern",
    "clock", "violin", "guitar", "piano", "umbrella", "crown", "sword", "shield", "book", "candle", "mirror",
    "chandelier", "bottle", "basket", "pumpkin", "strawberry", "cherry", "lemon", "mushroom", "cactus", "sunflower",
    "tulip", "lotus", "bamboo",
]
_ADJECTIVES = [
    "red", "blue", "green", "yellow", "purple", "golden", "silver", "tiny", "huge", "old", "young", "ancient",
    "futuristic", "cozy", "misty", "snowy", "sunny", "dark", "bright", "colorful", "quiet", "busy", "wooden", "glass",
    "stone", "neon", "vintage", "majestic", "cute", "small", "large", "shiny", "dusty", "frozen", "gigantic",
    "miniature", "glowing", "translucent", "crystal", "velvet", "rusty", "polished", "weathered", "abandoned",
    "enchanted", "mysterious", "whimsical", "elegant", "minimalist", "surreal", "baroque", "gothic", "victorian",
    "medieval", "cyberpunk", "steampunk", "pastel", "vibrant", "muted", "foggy", "stormy", "autumn", "tropical",
    "arctic", "rustic", "ornate", "sleek", "fluffy", "furry", "feathered", "metallic", "marble", "porcelain", "paper",
    "origami", "pixelated", "low-poly", "isometric",
]
_PLACES = [
    "on mars", "in the forest", "at sunset", "under the stars", "by the sea", "in a city", "on a hill", "in the rain",
    "at night", "in winter", "in spring", "on the moon", "in a garden", "near a river", "in the desert", "on a beach",
    "in space", "in a kitchen", "on a table", "in the mountains",
]
_STYLES = [
    "highly detailed", "trending on artstation", "unreal engine", "octane render", "volumetric fog", "golden hour",
    "bokeh", "wide angle", "macro shot", "portrait", "aerial view", "symmetrical", "ukiyo-e woodblock print",
    "impressionist", "art nouveau", "by a famous artist", "hyperrealistic", "matte painting", "lens flare",
    "film grain", "long exposure", "digital art", "oil painting", "watercolor", "photograph", "cinematic lighting",
    "35mm film", "studio photo", "concept art", "pencil sketch", "8k", "sharp focus", "soft light", "dramatic clouds",
    "award winning",
]
_VERBS = [
    "riding", "holding", "watching", "standing next to", "sitting on", "flying over", "walking through", "looking at",
    "playing with", "jumping over",
]


def caption_lines(seed: int, n: int) -> list:
    import random

    r = random.Random(seed)
    lines = []
    for _ in range(n):
        line = f"a {r.choice(_ADJECTIVES)} {r.choice(_SUBJECTS)}"
        if r.random() < 0.6:
            line += f" {r.choice(_VERBS)} a {r.choice(_ADJECTIVES)} {r.choice(_SUBJECTS)}"
        line += f" {r.choice(_PLACES)}"
        for _ in range(r.randint(0, 3)):
            line += f", {r.choice(_STYLES)}"
        if r.random() < 0.3:
            line = line.capitalize()
        if r.random() < 0.1:
            line += f" {r.randint(1, 2000)}"
        lines.append(line)
    return lines


# Prompts whose ids the fast tokenizer must give exactly as SentencePiece does (T5 appends </s> = 1).
T5_CHECK_PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "",
    "a red fox in the forest, digital art 2024",
    "blurry, low quality",
    "ein café in zürich qqq",
    "a glowing crystal dragon flying over a misty village at night, cinematic lighting, 8k",
]


def make_t5_tokenizer(dest: Path) -> T5TokenizerFast:
    """A SentencePiece Unigram model trained on caption_lines(0, 1500) with T5's special ids (<pad> 0, </s> 1,
    <unk> 2, no <s>) and T5's NFKC normalisation, saved as T5's tokenizer folder (spiece.model plus
    tokenizer_config.json, 100 <extra_id_*> sentinels as T5 has); transformers' fast tokenizer is built from that
    folder with `from_pretrained` (not the `vocab_file=` constructor, see make_tokenizer) and saved, which adds
    tokenizer.json. Its ids, loaded back from tokenizer.json alone, are checked against SentencePiece's own."""
    import io

    import sentencepiece as spm

    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(caption_lines(0, 1500)),
        model_writer=model,
        model_type="unigram",
        vocab_size=600,
        hard_vocab_limit=False,  # the text has fewer pieces than that: take what it gives (about 515)
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "spiece.model").write_bytes(model.getvalue())
    config = {
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "extra_ids": 100,
        "model_max_length": 512,
        "legacy": True,
        "tokenizer_class": "T5Tokenizer",
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok = T5TokenizerFast.from_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    assert (dest / "tokenizer.json").exists(), f"{dest}: the fast tokenizer wrote no tokenizer.json"
    # tokenizer.json holds the whole model (pieces, scores, the NFKC charsmap): spiece.model (240 kB) is not
    # committed, and transformers loads the folder without it.
    (dest / "spiece.model").unlink()
    tok = T5TokenizerFast.from_pretrained(str(dest))
    slow = spm.SentencePieceProcessor(model_proto=model.getvalue())
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    for text in T5_CHECK_PROMPTS:
        got, want = tok(text).input_ids, slow.encode(text) + [1]
        assert got == want, f"{dest}: fast tokenizer gives {got} for {text!r}, SentencePiece {want}"
    return tok


def tiny_t5(vocab_size: int) -> T5EncoderModel:
    """T5 v1.1's layout (gated-gelu feed-forward, untied relative position buckets 32 / distance 128), tiny:
    d_model 32 is not the DiT's width (16), so a mixed-up caption projection shows."""
    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=True,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )
    return T5EncoderModel(config)


def tiny_pixart_transformer(sample_size: int, patch_size: int, heads: int, layers: int, caption_channels: int):
    # The added conditions (sample_size 128) split the width in three: heads * 8 must be a multiple of 3 then.
    return PixArtTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=layers,
        cross_attention_dim=heads * 8,  # the DiT's width, as in every PixArt checkpoint
        sample_size=sample_size,
        patch_size=patch_size,
        caption_channels=caption_channels,
        norm_num_groups=32,
    )


def build_pixart(tokenizer_dir: Path, vae: AutoencoderKL):
    """tiny-pixart (sample_size 32: ASPECT_RATIO_256_BIN, no added conditions) and the transformer of the
    1024 variant (sample_size 128: ASPECT_RATIO_1024_BIN, `resolution` and `aspect_ratio` conditions; patch 8,
    so a 1024x1024 image is 16x16 tokens (every bin of that table is a multiple of 64 pixels); 3 heads, width
    24). The variant shares everything else with tiny-pixart.
    `vae` is tiny-sd's (scaling factor 0.18215, as PixArt's sd-vae-ft-ema): its vae_decoder export is the same
    bytes, which link_duplicates stores once."""
    tokenizer = make_t5_tokenizer(tokenizer_dir)
    torch.manual_seed(2)
    text_encoder = tiny_t5(vocab_size=640)  # > len(tokenizer) = 615, padded as T5's 32128 > 32100
    transformer = tiny_pixart_transformer(32, 2, 2, 2, text_encoder.config.d_model)
    scheduler = DPMSolverMultistepScheduler.from_config(common.PIXART_SCHEDULER)
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    ).to(torch.float32)
    torch.manual_seed(3)
    transformer_1024 = tiny_pixart_transformer(128, 8, 3, 1, text_encoder.config.d_model).to(torch.float32)
    return pipe, transformer_1024


class T5EncoderWrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask=attention_mask).last_hidden_state


class PixArtTransformerWrapper(torch.nn.Module):
    """expand_mask (the dynamo style): ONNX Runtime 1.31's CPU kernel for the opset-23 Attention op does not
    broadcast attn_mask over the query length, which the ONNX spec allows ("inconsistent q_sequence_length
    (between attn_mask and Q)" for diffusers' [B, heads, 1, S] cross-attention mask). The wrapper then turns the
    mask into diffusers' bias, (1 - mask) * -10000, itself and expands it to [B, tokens, S] before the model sees
    it: the same numbers, the same graph inputs."""

    def __init__(self, transformer, expand_mask: bool = False):
        super().__init__()
        self.transformer, self.expand_mask = transformer, expand_mask

    def forward(
        self, hidden_states, encoder_hidden_states, encoder_attention_mask, timestep, resolution=None, aspect_ratio=None
    ):
        added = {"resolution": resolution, "aspect_ratio": aspect_ratio}
        if self.expand_mask:
            p = self.transformer.config.patch_size
            tokens = (hidden_states.shape[-2] // p) * (hidden_states.shape[-1] // p)
            bias = (1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0
            encoder_attention_mask = bias.unsqueeze(1).expand(-1, tokens, -1)
        return self.transformer(
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            timestep=timestep,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]


def pixart_transformer_inputs(transformer, batch: int, h: int, w: int, seed: int = 0):
    """Example inputs of the interface above; the mask keeps the first few tokens of each row."""
    g = torch.Generator().manual_seed(seed)
    c = transformer.config.caption_channels
    mask = torch.zeros(batch, PIXART_MAX_SEQUENCE, dtype=torch.int64)
    for b in range(batch):
        mask[b, : 3 + 5 * b] = 1
    args = [
        torch.randn(batch, 4, h, w, generator=g),
        torch.randn(batch, PIXART_MAX_SEQUENCE, c, generator=g),
        mask,
        torch.tensor([999.0, 457.0, 1.0, 250.5][:batch]),
    ]
    if transformer.config.sample_size == 128:
        args += [torch.tensor([[8.0 * h, 8.0 * w]] * batch), torch.tensor([[h / w]] * batch)]
    return args


def export_pixart_transformer(transformer, folder: Path, *, style: ExportStyle = TORCHSCRIPT):
    """The example size (12x20 latents, batch 2) differs from sample_size on purpose: PatchEmbed keeps the
    position embedding of the sample_size grid and recomputes it (with shape-dependent ops) for any other; the
    traced graph must hold the recomputation. Checked at other sizes, the sample_size grid included."""
    use_added = transformer.config.sample_size == 128
    p = transformer.config.patch_size
    args = pixart_transformer_inputs(transformer, 2, 6 * p, 10 * p)
    names = ["hidden_states", "encoder_hidden_states", "encoder_attention_mask", "timestep"]
    axes = {
        "hidden_states": {0: "batch_size", 2: "height", 3: "width"},
        "encoder_hidden_states": {0: "batch_size", 1: "sequence_length"},
        "encoder_attention_mask": {0: "batch_size", 1: "sequence_length"},
        "timestep": {0: "batch_size"},
        "out_sample": {0: "batch_size", 2: "height", 3: "width"},
    }
    if use_added:
        names += ["resolution", "aspect_ratio"]
        axes.update({"resolution": {0: "batch_size"}, "aspect_ratio": {0: "batch_size"}})
    wrapper = PixArtTransformerWrapper(transformer, expand_mask=style.dynamo)
    path = folder / "model.onnx"
    hook = None
    if style.dynamo:
        # diffusers' `hidden_states.squeeze(1)` after proj_out, a no-op for more than one token, becomes an ONNX
        # Squeeze that fails for any token count but 1 (onnxscript 0.7.2's aten_squeeze_dim emits Squeeze
        # whatever the dimension). A hook gives proj_out's output the unit axis that the Squeeze then removes.
        hook = transformer.proj_out.register_forward_hook(lambda module, inputs, output: output.unsqueeze(1))
    try:
        export(wrapper, args, path, names, ["out_sample"], axes, style=style, max_sequence=512)
    finally:
        if hook is not None:
            hook.remove()
    transformer.save_config(folder)
    if folder_bytes(folder) > 2**31:  # as in export(): no second copy of a full-size model in memory
        return
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    s = transformer.config.sample_size
    sizes = [(1, 4 * p, 7 * p), (2, 10 * p, 6 * p)]
    if (s // p) ** 2 <= 1024:  # the sample_size grid and around it, where the attention stays small
        sizes += [(1, s, s), (2, s, s), (2, s + 2 * p, s - 4 * p)]
    for batch, h, w in sizes:
        check = pixart_transformer_inputs(transformer, batch, h, w, seed=1)
        got = sess.run(None, {n: a.numpy() for n, a in zip(names, check)})[0]
        with torch.no_grad():
            want = wrapper(*check).numpy()
        err = relative_l2(got, want)
        assert err < 1e-5, f"{path}: batch {batch} {h}x{w} differs from torch (relative L2 {err:.2e})"


def export_t5(model, folder: Path, *, style: ExportStyle = TORCHSCRIPT):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, PIXART_MAX_SEQUENCE), generator=generator)
    mask = torch.zeros_like(ids)
    mask[0, :9], mask[1, :31] = 1, 1
    ids[0, 8], ids[1, 30] = 1, 1
    ids = ids * mask
    axes = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "sequence_length"},
        "last_hidden_state": {0: "batch_size", 1: "sequence_length"},
    }
    wrapper = T5EncoderWrapper(model)
    path = folder / "model.onnx"
    export(wrapper, [ids, mask], path, ["input_ids", "attention_mask"], ["last_hidden_state"], axes, style=style,
           max_sequence=512)
    model.config.to_json_file(folder / "config.json")
    if folder_bytes(folder) > 2**31:
        return
    # Another sequence length than the traced one (the relative position buckets depend on it).
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    short_ids, short_mask = ids[:, :40].contiguous(), mask[:, :40].contiguous()
    got = sess.run(None, {"input_ids": short_ids.numpy(), "attention_mask": short_mask.numpy()})[0]
    with torch.no_grad():
        want = wrapper(short_ids, short_mask).numpy()
    err = relative_l2(got, want)
    assert err < 1e-5, f"{path}: sequence length 40 differs from torch (relative L2 {err:.2e})"


def save_pixart_layout(pipe, dest: Path, tokenizer_dir: Path, style: ExportStyle):
    if dest.exists():
        shutil.rmtree(dest)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        dest.mkdir(parents=True)
        shutil.copy(Path(tmp) / "model_index.json", dest / "model_index.json")
    common.write_scheduler_config(dest, common.PIXART_SCHEDULER)
    shutil.copytree(tokenizer_dir, dest / "tokenizer")
    export_t5(pipe.text_encoder, dest / "text_encoder", style=style)
    export_pixart_transformer(pipe.transformer, dest / "transformer", style=style)
    export_vae_decoder(pipe.vae, dest, style=style)
    # tiny-sd's VAE: keep tiny-sd's committed decoder file where it is the same model, so that link_duplicates
    # stores it once (a dynamo export differs in bytes by the source paths in its metadata).
    sd_decoder = dest.parent / ("tiny-sd-dynamo" if style.dynamo else "tiny-sd") / "vae_decoder" / "model.onnx"
    if sd_decoder.exists() and same_onnx_model(sd_decoder, dest / "vae_decoder" / "model.onnx"):
        shutil.copy(sd_decoder, dest / "vae_decoder" / "model.onnx")


def same_onnx_model(a: Path, b: Path) -> bool:
    """The same graph (nodes, attributes, inputs, outputs) and initializers, metadata and doc strings aside."""
    import onnx

    def bare(path):
        model = onnx.load(str(path))
        for node in model.graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
        for info in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
            del info.metadata_props[:]
        for init in model.graph.initializer:
            del init.metadata_props[:]
        del model.metadata_props[:]
        del model.graph.metadata_props[:]
        model.doc_string = model.graph.doc_string = ""
        return model.SerializeToString(deterministic=True)

    return bare(a) == bare(b)


def save_pixart(models: Path, refs: Path):
    """models/tiny-pixart, models/tiny-pixart-dynamo, models/variants/tiny-pixart-1024/transformer,
    then the references. Writes nothing of the SD pipelines (it rebuilds tiny-sd in memory for its VAE)."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_dir, tokenizer_dir = Path(tmp) / "clip", Path(tmp) / "tokenizer"
        write_clip_vocab(vocab_dir)
        vae = build_sd(vocab_dir).vae
        pipe, transformer_1024 = build_pixart(tokenizer_dir, vae)
        for name, style in [("tiny-pixart", TORCHSCRIPT), ("tiny-pixart-dynamo", DYNAMO)]:
            print(f"exporting {name} ...")
            save_pixart_layout(pipe, models / name, tokenizer_dir, style)
        # TorchScript only (the dynamo style is covered by tiny-pixart-dynamo): a copy of tiny-pixart with this
        # transformer/ in place of its own is the 1024 pipeline.
        print("exporting variants/tiny-pixart-1024 ...")
        variant = models / "variants" / "tiny-pixart-1024"
        if variant.exists():
            shutil.rmtree(variant)
        export_pixart_transformer(transformer_1024, variant / "transformer", style=TORCHSCRIPT)
        print("PixArt reference runs ...")
        save_pixart_references(pipe, transformer_1024, models, refs)


# The PixArt references: (folder, transformer ("tiny-pixart" or "tiny-pixart-1024"), scheduler, requested
# height, width, steps, negative prompt, resolution binning, image kept: "full" or a center crop's side).
# Binning maps 200x300 to its ASPECT_RATIO_256_BIN bin and resizes back; 1 step takes diffusers' one-step
# branch (the scheduler's pred_original_sample); DPM-Solver++ has no 1-step case: its step() returns only
# prev_sample, so diffusers' pipeline fails with IndexError there.
PIXART_CASES = [
    ("dpm++", "tiny-pixart", "dpm++", 256, 256, 20, NEGATIVE_PROMPT, True, "full"),
    ("euler", "tiny-pixart", "euler", 256, 256, 20, NEGATIVE_PROMPT, True, 64),
    ("ddim", "tiny-pixart", "ddim", 256, 256, 20, NEGATIVE_PROMPT, True, 64),
    ("dpm++-binned-200x300", "tiny-pixart", "dpm++", 200, 300, 20, None, True, "full"),
    ("euler-binned-300x200", "tiny-pixart", "euler", 300, 200, 20, NEGATIVE_PROMPT, True, 64),
    ("dpm++-no-binning-64x96", "tiny-pixart", "dpm++", 64, 96, 20, NEGATIVE_PROMPT, False, "full"),
    ("euler-1step", "tiny-pixart", "euler", 256, 256, 1, NEGATIVE_PROMPT, True, 64),
    ("ddim-1step", "tiny-pixart", "ddim", 256, 256, 1, NEGATIVE_PROMPT, True, 64),
    ("dpm++-binned-1000x600", "tiny-pixart-1024", "dpm++", 1000, 600, 20, NEGATIVE_PROMPT, True, 64),
]
# The checkpoint's scheduler (DPM-Solver++) and two others, each without overrides.
PIXART_SCHEDULERS = {key: (common.scheduler_class(key), {}) for key in ("dpm++", "euler", "ddim")}
PIXART_GUIDANCE = 4.5  # diffusers' default for PixArtAlphaPipeline


def save_pixart_references(pipe, transformer_1024, models: Path, refs: Path):
    """diffusers' PixArtAlphaPipeline on the same weights, with the tokenizer and scheduler loaded from the
    committed folders; clean_caption=False (dfast does not clean captions), max_sequence_length 120, a torch CPU
    generator seeded per case. Latents are the final latents before decoding (at the binned size)."""
    pipe.tokenizer = T5TokenizerFast.from_pretrained(models / "tiny-pixart" / "tokenizer")
    base = DPMSolverMultistepScheduler.from_pretrained(models / "tiny-pixart" / "scheduler").config
    transformers = {"tiny-pixart": pipe.transformer, "tiny-pixart-1024": transformer_1024}
    out_root = refs / "tiny-pixart"
    if out_root.exists():
        shutil.rmtree(out_root)
    out_root.mkdir(parents=True)

    # Token ids as encode_prompt makes them: _text_preprocessing (lower().strip()), then padding to 120.
    rows = []
    for prompt in [PROMPT, NEGATIVE_PROMPT] + TOKEN_PROMPTS:
        text = pipe._text_preprocessing(prompt, clean_caption=False)[0]
        enc = pipe.tokenizer(
            text, padding="max_length", max_length=PIXART_MAX_SEQUENCE, truncation=True, add_special_tokens=True
        )
        untruncated = pipe.tokenizer(text, padding="longest").input_ids
        rows.append({
            "prompt": prompt,
            "preprocessed": text,
            "input_ids": enc.input_ids,
            "attention_mask": enc.attention_mask,
            "truncated": len(untruncated) > PIXART_MAX_SEQUENCE,
        })
    (out_root / "tokens.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1))

    # The text encoder's output for the prompt and the negative prompt (the transformer's encoder_hidden_states).
    with torch.no_grad():
        embeds, mask, neg_embeds, neg_mask = pipe.encode_prompt(
            PROMPT, True, negative_prompt=NEGATIVE_PROMPT, clean_caption=False, max_sequence_length=PIXART_MAX_SEQUENCE
        )
    text_dir = out_root / "text"
    text_dir.mkdir()
    np.save(text_dir / "prompt_embeds.npy", embeds.numpy().astype(np.float32))
    np.save(text_dir / "negative_prompt_embeds.npy", neg_embeds.numpy().astype(np.float32))
    text_params = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE_PROMPT,
        "max_sequence_length": PIXART_MAX_SEQUENCE,
        "prompt_tokens": int(mask.sum()),
        "negative_prompt_tokens": int(neg_mask.sum()),
        "shape": list(embeds.shape),
    }
    (text_dir / "params.json").write_text(json.dumps(text_params, indent=1))

    for name, transformer, key, height, width, steps, negative, binning, keep in PIXART_CASES:
        cls, overrides = PIXART_SCHEDULERS[key]
        pipe.transformer = transformers[transformer]
        pipe.scheduler = cls.from_config(base, **overrides)
        out = out_root / name
        out.mkdir()
        pipe.scheduler.save_config(out)
        call = {
            "prompt": PROMPT,
            "negative_prompt": negative if negative is not None else "",
            "num_inference_steps": steps,
            "guidance_scale": PIXART_GUIDANCE,
            "height": height,
            "width": width,
            "clean_caption": False,
            "max_sequence_length": PIXART_MAX_SEQUENCE,
            "use_resolution_binning": binning,
        }
        seed = 0
        with torch.no_grad():
            latents = pipe(**call, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images
            image = pipe(**call, generator=torch.Generator("cpu").manual_seed(seed), output_type="pil").images[0]
        np.save(out / "latents.npy", latents.numpy().astype(np.float32))
        assert image.size == (width, height), f"{name}: image {image.size}, requested {width}x{height}"
        params = {
            "pipeline": "PixArtAlphaPipeline",
            "model": f"models/{transformer}" if transformer == "tiny-pixart" else
            "models/tiny-pixart with transformer/ from models/variants/tiny-pixart-1024/transformer",
            "prompt": PROMPT,
            "negative_prompt": call["negative_prompt"],
            "negative_prompt_given": negative is not None,
            "steps": steps,
            "guidance": PIXART_GUIDANCE,
            "height": height,
            "width": width,
            "resolution_binning": binning,
            "binned_height": int(latents.shape[2]) * 8,
            "binned_width": int(latents.shape[3]) * 8,
            "seed": seed,
            "generator": "torch CPU (torch.Generator('cpu').manual_seed(seed)), as diffusers draws the initial latents",
            "clean_caption": False,
            "max_sequence_length": PIXART_MAX_SEQUENCE,
            "scheduler": key,
            "scheduler_class": cls.__name__,
            "scheduler_overrides": overrides,
        }
        if keep == "full":
            image.save(out / "image.png")
            params["image"] = "the whole image, height x width"
        else:
            top, left = (height - keep) // 2, (width - keep) // 2
            image.crop((left, top, left + keep, top + keep)).save(out / "image.png")
            params["image"] = f"the center {keep}x{keep} crop of the {height}x{width} image"
            params["image_crop"] = {"top": top, "left": left, "height": keep, "width": keep}
        (out / "params.json").write_text(json.dumps(params, indent=1))
        binned = f"{params['binned_height']}x{params['binned_width']}"
        print(f"  tiny-pixart/{name}: binned {binned} |latents| = {latents.norm():.4f}")
    pipe.transformer = transformers["tiny-pixart"]
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(base)


def save_pixart_other(dest: Path):
    """A second tiny PixArt pipeline in diffusers' own format (safetensors), with a config that no committed
    fixture or test uses (T5 width 48 with 4 heads and 3 layers; a DiT with sample_size 64, so
    ASPECT_RATIO_512_BIN, 4 heads of 6, 3 layers; another VAE), and diffusers' references for it in
    dest/references/<case>/ (latents.npy, image.png, params.json as in tests/references/tiny-pixart). For checking
    `export_onnx.py --model dest` followed by `dfast generate` against diffusers."""
    if dest.exists():
        shutil.rmtree(dest)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_t5_tokenizer(Path(tmp) / "tokenizer")
    torch.manual_seed(5)
    config = tiny_t5(640).config
    config.update({"d_model": 48, "d_kv": 12, "num_heads": 4, "num_layers": 3, "d_ff": 64})
    text_encoder = T5EncoderModel(config)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=6,
        in_channels=4,
        out_channels=8,
        num_layers=3,
        cross_attention_dim=24,
        sample_size=64,
        patch_size=2,
        caption_channels=48,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 24),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.18215,
    )
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler.from_config(common.PIXART_SCHEDULER),
    ).to(torch.float32)
    pipe.save_pretrained(dest, safe_serialization=True)
    common.write_scheduler_config(dest, common.PIXART_SCHEDULER)  # in place of diffusers' own save
    pipe = PixArtAlphaPipeline.from_pretrained(dest)  # as a user loads it (float32)
    base = pipe.scheduler.config
    for name, key, height, width in [("dpm++-512", "dpm++", 512, 512), ("euler-binned-400x600", "euler", 400, 600)]:
        cls, overrides = PIXART_SCHEDULERS[key]
        pipe.scheduler = cls.from_config(base, **overrides)
        call = {
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE_PROMPT,
            "num_inference_steps": 20,
            "guidance_scale": PIXART_GUIDANCE,
            "height": height,
            "width": width,
            "clean_caption": False,
            "max_sequence_length": PIXART_MAX_SEQUENCE,
        }
        with torch.no_grad():
            latents = pipe(**call, generator=torch.Generator("cpu").manual_seed(0), output_type="latent").images
            image = pipe(**call, generator=torch.Generator("cpu").manual_seed(0), output_type="pil").images[0]
        out = dest / "references" / name
        out.mkdir(parents=True)
        np.save(out / "latents.npy", latents.numpy().astype(np.float32))
        image.save(out / "image.png")
        pipe.scheduler.save_config(out)
        params = {
            "pipeline": "PixArtAlphaPipeline",
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE_PROMPT,
            "steps": 20,
            "guidance": PIXART_GUIDANCE,
            "height": height,
            "width": width,
            "resolution_binning": True,
            "binned_height": int(latents.shape[2]) * 8,
            "binned_width": int(latents.shape[3]) * 8,
            "seed": 0,
            "clean_caption": False,
            "max_sequence_length": PIXART_MAX_SEQUENCE,
            "scheduler": key,
            "scheduler_class": cls.__name__,
            "image": "the whole image, height x width",
        }
        (out / "params.json").write_text(json.dumps(params, indent=1))
        print(f"  {dest.name}/references/{name}: binned {params['binned_height']}x{params['binned_width']}")


# ---------------------------------------------------------------------------------------------------------
# img2img and inpainting (--img2img): diffusers' StableDiffusion(XL)Img2ImgPipeline and
# StableDiffusion(XL)InpaintPipeline on the weights of tiny-sd and tiny-sdxl (built again from their seeds, and
# checked against the committed ONNX components), and one new component: the 9-channel inpainting UNet of
# models/tiny-sd-inpaint, whose other components link to tiny-sd's.
#
# The input image and mask are synthetic, 83x53: not multiples of 8, so that diffusers' image processor resizes
# them (Pillow's Lanczos) to 80x48; the mask is white (repainted) in a soft-edged ellipse and a rectangle, gray
# levels at the edges, so that the resize and the binarization at 0.5 both matter.

IMAGE2IMAGE_INPUTS = "inputs"  # tests/references/inputs/
INPUT_SIZE = (83, 53)  # width, height
IMAGE_STEPS = 10

# (reference folder, pipeline, diffusers class, scheduler key, strength (None: the class's default), mask, batch,
#  explicit (height, width) or None)
IMAGE_CASES = [
    ("tiny-sd/img2img-pndm", "tiny-sd", "StableDiffusionImg2ImgPipeline", "pndm", None, False, 1, None),
    ("tiny-sd/img2img-euler", "tiny-sd", "StableDiffusionImg2ImgPipeline", "euler", 0.5, False, 1, None),
    ("tiny-sd/img2img-ddim", "tiny-sd", "StableDiffusionImg2ImgPipeline", "ddim", 0.75, False, 1, None),
    ("tiny-sd/img2img-dpm++", "tiny-sd", "StableDiffusionImg2ImgPipeline", "dpm++", 0.6, False, 2, None),
    ("tiny-sdxl/img2img-euler", "tiny-sdxl", "StableDiffusionXLImg2ImgPipeline", "euler", None, False, 1, None),
    ("tiny-sdxl/img2img-pndm", "tiny-sdxl", "StableDiffusionXLImg2ImgPipeline", "pndm", 0.7, False, 1, None),
    ("tiny-sdxl/img2img-ddim", "tiny-sdxl", "StableDiffusionXLImg2ImgPipeline", "ddim", 0.5, False, 1, None),
    ("tiny-sdxl/img2img-dpm++", "tiny-sdxl", "StableDiffusionXLImg2ImgPipeline", "dpm++", 0.9, False, 1, None),
    # 4-channel UNets: the latents blended with the noised image after every step.
    ("tiny-sd/inpaint-pndm", "tiny-sd", "StableDiffusionInpaintPipeline", "pndm", None, True, 1, None),
    ("tiny-sd/inpaint-euler-64x48", "tiny-sd", "StableDiffusionInpaintPipeline", "euler", 0.75, True, 1, (48, 64)),
    ("tiny-sdxl/inpaint-euler", "tiny-sdxl", "StableDiffusionXLInpaintPipeline", "euler", None, True, 1, None),
    # The 9-channel inpainting UNet: mask and masked-image latents concatenated to every UNet input.
    ("tiny-sd-inpaint/inpaint-pndm", "tiny-sd-inpaint", "StableDiffusionInpaintPipeline", "pndm", None, True, 1,
     None),
    ("tiny-sd-inpaint/inpaint-dpm++", "tiny-sd-inpaint", "StableDiffusionInpaintPipeline", "dpm++", 0.8, True, 2,
     None),
]


def input_picture() -> Image.Image:
    """An 83x53 RGB picture: smooth gradients, a disc and thin stripes (edges that Lanczos rings on)."""
    w, h = INPUT_SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / 13.0) * np.cos(y / 9.0)
    g = 255 * x / (w - 1)
    b = 255 * y / (h - 1)
    disc = (x - 55) ** 2 + (y - 22) ** 2 < 14**2
    r[disc], g[disc], b[disc] = 240, 200, 40
    stripes = (x > 8) & (x < 30) & (y > 32) & (y < 48) & ((x.astype(int) // 2) % 2 == 0)
    r[stripes], g[stripes], b[stripes] = 10, 10, 10
    rgb = np.stack([r, g, b], axis=-1).clip(0, 255).round().astype(np.uint8)
    return Image.fromarray(rgb)


def input_mask() -> Image.Image:
    """An 83x53 gray mask: white (repainted) in a soft-edged ellipse and a rectangle, black elsewhere."""
    w, h = INPUT_SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    d = np.sqrt(((x - 28) / 18) ** 2 + ((y - 24) / 13) ** 2)
    ellipse = np.clip((1.15 - d) / 0.3, 0, 1)
    rect = ((x >= 60) & (x < 77) & (y >= 30) & (y < 47)).astype(np.float64)
    return Image.fromarray((255 * np.maximum(ellipse, rect)).round().astype(np.uint8))


def lanczos_pattern(width: int, height: int, channels: int) -> np.ndarray:
    """An 8-bit pattern with hard edges (so that Lanczos' negative lobes clamp), rebuilt in Rust from this
    formula."""
    y, x, c = np.mgrid[0:height, 0:width, 0:channels]
    return ((x * 37 + y * 91 + c * 53 + (x * y) % 17 * 11) % 256).astype(np.uint8)


# (width, height, channels, new width, new height): shrink both ways, grow, one axis only, gray.
LANCZOS_CASES = [(13, 11, 3, 8, 8), (13, 11, 3, 24, 16), (13, 11, 3, 13, 7), (29, 7, 1, 16, 5), (83, 53, 1, 80, 48)]


def save_lanczos_references(dest: Path):
    """Pillow's Image.resize(..., LANCZOS), which diffusers' image processor makes, on formula patterns."""
    cases = []
    for w, h, c, nw, nh in LANCZOS_CASES:
        pattern = lanczos_pattern(w, h, c)
        image = Image.fromarray(pattern[..., 0] if c == 1 else pattern)
        assert image.mode == ("L" if c == 1 else "RGB")
        out = np.asarray(image.resize((nw, nh), resample=Image.Resampling.LANCZOS))
        cases.append({"width": w, "height": h, "channels": c, "new_width": nw, "new_height": nh,
                      "pixels": out.ravel().tolist()})
    import PIL  # the version only

    doc = {"generator": "experiment-scripts/make_tiny_pipelines.py --img2img", "pillow_version": PIL.__version__,
           "pattern": "(x * 37 + y * 91 + c * 53 + (x * y) % 17 * 11) % 256, row-major, channels interleaved",
           "cases": cases}
    (dest / "lanczos.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")


def build_sd_inpaint_unet() -> UNet2DConditionModel:
    """The smallest UNet that still exercises the inpainting path: 9 input channels (latents, mask, masked-image
    latents) and the text through the mid block's cross-attention (tiny-sd's 8-wide encoder); one block of 8
    channels each way, no downsampling (146 KB; tiny-sd's two-block layout at these widths was 377 KB)."""
    return smallest_unet(3, in_channels=9)


def smallest_unet(seed: int, **extra) -> UNet2DConditionModel:
    """One block of 8 channels each way, no downsampling, the text (tiny-sd's 8-wide encoder) through the mid
    block's cross-attention; `extra` sets or adds config fields. Weights drawn after manual_seed(seed)."""
    torch.manual_seed(seed)
    config = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": (8,),
        "layers_per_block": 1,
        "cross_attention_dim": 8,
        "attention_head_dim": 2,
        "norm_num_groups": 4,
        "use_linear_projection": False,
    }
    return UNet2DConditionModel(**{**config, **extra})


def rebuilt_committed(models: Path):
    """tiny-sd and tiny-sdxl rebuilt from their seeds, each checked against its committed ONNX components."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_dir = Path(tmp)
        write_clip_vocab(vocab_dir)
        sd = build_sd(vocab_dir)
        sdxl = build_sdxl(vocab_dir)
    check_committed(sd, models / "tiny-sd", sdxl=False)
    check_committed(sdxl, models / "tiny-sdxl", sdxl=True)
    return sd, sdxl


def with_committed_parts(sd, sdxl, models: Path):
    """As every reference run: the rebuilt tiny-sd and tiny-sdxl take the committed folders' tokenizers and
    schedulers."""
    sd.tokenizer = CLIPTokenizer.from_pretrained(models / "tiny-sd" / "tokenizer")
    sdxl.tokenizer = CLIPTokenizer.from_pretrained(models / "tiny-sdxl" / "tokenizer")
    sdxl.tokenizer_2 = CLIPTokenizer.from_pretrained(models / "tiny-sdxl" / "tokenizer_2")
    sd.scheduler = PNDMScheduler.from_pretrained(models / "tiny-sd" / "scheduler")
    sdxl.scheduler = EulerDiscreteScheduler.from_pretrained(models / "tiny-sdxl" / "scheduler")


def check_committed(pipe, folder: Path, sdxl: bool):
    """The rebuilt pipeline's VAE encoder and UNet compute what the committed ONNX components of `folder` do, so
    that diffusers' references made here apply to them."""
    checks = [("vae_encoder", VaeEncoderWrapper(pipe.vae), {"sample": torch.randn(1, 3, 48, 80)})]
    feeds = {"sample": torch.randn(2, pipe.unet.config.in_channels, 6, 10),
             "timestep": torch.tensor(500.0 if not sdxl else 500),
             "encoder_hidden_states": torch.randn(2, 77, pipe.unet.config.cross_attention_dim)}
    if sdxl:
        feeds["timestep"] = torch.full((2,), 500, dtype=torch.int64)
        feeds["text_embeds"] = torch.randn(2, 8)
        feeds["time_ids"] = torch.tensor([[48.0, 80.0, 0.0, 0.0, 48.0, 80.0]] * 2)
    checks.append(("unet", UNetWrapper(pipe.unet, sdxl), feeds))
    for component, module, inputs in checks:
        sess = ort.InferenceSession(str(folder / component / "model.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        with torch.no_grad():
            want = module(*inputs.values())
        err = relative_l2(got, want.numpy())
        assert err < 1e-5, f"{folder / component}: differs from the rebuilt torch weights ({err:.2e})"


def save_sd_inpaint(sd, unet, dest: Path):
    """models/tiny-sd-inpaint: StableDiffusionInpaintPipeline with the 9-channel UNet; its scheduler, tokenizer,
    text encoder and VAE are tiny-sd's (linked: link_duplicates stores them once)."""
    from diffusers import StableDiffusionInpaintPipeline

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    pipe = StableDiffusionInpaintPipeline(**{**sd.components, "unet": unet}, requires_safety_checker=False)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_config(tmp)
        shutil.copy(Path(tmp) / "model_index.json", dest / "model_index.json")
    source = common.MODELS / "tiny-sd"
    for folder in ["scheduler", "tokenizer", "text_encoder", "vae_decoder", "vae_encoder"]:
        shutil.copytree(source / folder, dest / folder, symlinks=True)
    export_unet(unet, dest / "unet", False, torch.float32, "scalar")
    return pipe


def save_image_references(pipes: dict, refs: Path):
    """diffusers' img2img and inpainting pipelines on the input picture and mask, as load_image gives them (EXIF
    orientation, RGB), a CPU generator seeded per case; latents are the final latents before decoding."""
    import diffusers
    from diffusers.utils import load_image

    inputs = refs / IMAGE2IMAGE_INPUTS
    inputs.mkdir(parents=True, exist_ok=True)
    input_picture().save(inputs / "picture-83x53.png", optimize=True)
    input_mask().save(inputs / "mask-83x53.png", optimize=True)
    save_lanczos_references(inputs)
    image = load_image(str(inputs / "picture-83x53.png"))
    mask = load_image(str(inputs / "mask-83x53.png"))
    seed = 7
    for name, model, cls_name, key, strength, inpaint, batch, size in IMAGE_CASES:
        base = pipes[model]
        cls = getattr(diffusers, cls_name)
        pipe = cls(**base.components, **({"requires_safety_checker": False} if "XL" not in cls_name else {}))
        sdxl = "XL" in cls_name
        default_cls = type(base.scheduler)
        scheduler_cls, overrides = SCHEDULERS[key]
        overrides = {} if scheduler_cls is default_cls else overrides
        pipe.scheduler = scheduler_cls.from_config(base.scheduler.config, **overrides)
        guidance = common.card_defaults("sdxl" if sdxl else "sd15")["guidance"]
        call = {
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE_PROMPT,
            "image": image,
            "num_inference_steps": IMAGE_STEPS,
            "guidance_scale": guidance,
            "num_images_per_prompt": batch,
            "output_type": "latent",
        }
        if strength is not None:
            call["strength"] = strength
        if inpaint:
            call["mask_image"] = mask
            # diffusers' inpainting pipelines default to the UNet's sample size; dfast to the image's (rounded
            # down to a multiple of 8). Passing the size makes them the same run.
            vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
            height, width = size or (image.height - image.height % vae_scale, image.width - image.width % vae_scale)
            call.update({"height": height, "width": width})
        with torch.no_grad():
            latents = pipe(**call, generator=torch.Generator("cpu").manual_seed(seed)).images
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        pils = pipe.image_processor.postprocess(decoded, output_type="pil")
        out = refs / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        pipe.scheduler.save_config(out)
        np.save(out / "latents.npy", latents.numpy().astype(np.float32))
        for i, pil in enumerate(pils):
            pil.save(out / ("image.png" if i == 0 else f"image-{i}.png"))
        params = {
            "pipeline": cls_name,
            "model": f"models/{model}",
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE_PROMPT,
            "steps": IMAGE_STEPS,
            "guidance": guidance,
            "seed": seed,
            "image": f"tests/references/{IMAGE2IMAGE_INPUTS}/picture-83x53.png",
            "mask": f"tests/references/{IMAGE2IMAGE_INPUTS}/mask-83x53.png" if inpaint else None,
            "strength": strength,
            "strength_used": strength if strength is not None else {
                "StableDiffusionImg2ImgPipeline": 0.8, "StableDiffusionXLImg2ImgPipeline": 0.3,
                "StableDiffusionInpaintPipeline": 1.0, "StableDiffusionXLInpaintPipeline": 0.9999}[cls_name],
            "num_images": batch,
            "height": int(latents.shape[2]) * 8,
            "width": int(latents.shape[3]) * 8,
            "size_given": size is not None,
            "scheduler": key,
            "scheduler_class": scheduler_cls.__name__,
            "scheduler_overrides": overrides,
        }
        (out / "params.json").write_text(json.dumps(params, indent=1))
        print(f"  {name}: {cls_name} {scheduler_cls.__name__} strength {params['strength_used']} "
              f"{params['width']}x{params['height']} |latents| = {latents.norm():.4f}")


def save_image_fixtures(models: Path, refs: Path):
    """--img2img: models/tiny-sd-inpaint and the img2img and inpainting references; nothing else is written."""
    sd, sdxl = rebuilt_committed(models)
    print("exporting tiny-sd-inpaint (9-channel UNet) ...")
    sd_inpaint = save_sd_inpaint(sd, build_sd_inpaint_unet().to(torch.float32), models / "tiny-sd-inpaint")
    # As the other references: tokenizers and schedulers loaded from the committed folders.
    with_committed_parts(sd, sdxl, models)
    sd_inpaint.tokenizer, sd_inpaint.scheduler = sd.tokenizer, sd.scheduler
    print("img2img and inpainting reference runs ...")
    save_image_references({"tiny-sd": sd, "tiny-sdxl": sdxl, "tiny-sd-inpaint": sd_inpaint}, refs)


# The few-step schedulers, as SDXL-Turbo, LCM and LCM-LoRA use them: (reference folder, pipeline, scheduler key,
# overrides of the pipeline's scheduler config, steps, guidance). Guidance <= 1 runs without the unconditional
# batch; 1.5 (LCM-LoRA's range) with it. The step noise comes from the generator after the initial latents.
FEW_STEP_CASES = [
    ("tiny-sdxl/euler-a-turbo-1step", "tiny-sdxl", "euler-a", {"timestep_spacing": "trailing"}, 1, 0.0),
    ("tiny-sdxl/euler-a-turbo-4step", "tiny-sdxl", "euler-a", {"timestep_spacing": "trailing"}, 4, 0.0),
    ("tiny-sd/euler-a-trailing-guidance1", "tiny-sd", "euler-a", {"timestep_spacing": "trailing"}, 4, 1.0),
    ("tiny-sd/euler-a-leading-guidance7.5", "tiny-sd", "euler-a", {}, 6, 7.5),
    ("tiny-sd/lcm-guidance1", "tiny-sd", "lcm", {}, 4, 1.0),
    ("tiny-sd/lcm-guidance1.5", "tiny-sd", "lcm", {}, 4, 1.5),
    ("tiny-sdxl/lcm-guidance0", "tiny-sdxl", "lcm", {}, 4, 0.0),
]


def save_few_step_references(pipes: dict, refs: Path):
    """diffusers' text-to-image pipelines with the few-step schedulers, one CPU generator seeded per case and
    passed to the pipeline (initial latents, then every scheduler step's noise); latents are the final latents
    before decoding."""
    for name, model, key, overrides, steps, guidance in FEW_STEP_CASES:
        pipe = pipes[model]
        base = pipe.scheduler
        sdxl = model == "tiny-sdxl"
        height, width, seed = (64, 96, 42) if sdxl else (64, 64, 0)
        pipe.scheduler = common.scheduler_class(key).from_config(base.config, **overrides)
        try:
            with torch.no_grad():
                latents = pipe(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=steps,
                               guidance_scale=guidance, height=height, width=width, output_type="latent",
                               generator=torch.Generator("cpu").manual_seed(seed)).images
                decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
            out = refs / name
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            pipe.scheduler.save_config(out)
            np.save(out / "latents.npy", latents.numpy().astype(np.float32))
            pipe.image_processor.postprocess(decoded, output_type="pil")[0].save(out / "image.png")
            params = {"prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "steps": steps, "guidance": guidance,
                      "height": height, "width": width, "seed": seed, "scheduler": key,
                      "scheduler_class": type(pipe.scheduler).__name__, "scheduler_overrides": overrides}
            (out / "params.json").write_text(json.dumps(params, indent=1))
            print(f"  {name}: {type(pipe.scheduler).__name__} {overrides} {steps} steps, guidance {guidance} "
                  f"|latents| = {latents.norm():.4f}")
        finally:
            pipe.scheduler = base


def save_few_step_fixtures(models: Path, refs: Path):
    """--few-step: the few-step schedulers' references on tiny-sd and tiny-sdxl; nothing else is written."""
    sd, sdxl = rebuilt_committed(models)
    # As the other references: tokenizers and schedulers loaded from the committed folders.
    with_committed_parts(sd, sdxl, models)
    print("few-step reference runs ...")
    save_few_step_references({"tiny-sd": sd, "tiny-sdxl": sdxl}, refs)


def build_lcm_unet():
    """A UNet as LCM distils one (`time_cond_proj_dim`: the guidance scale's embedding joins the timestep's),
    on tiny-sd's text encoder (cross_attention_dim 8), in build_sd_inpaint_unet's smallest layout: one block
    of 8 channels each way and the text through the mid block's cross-attention."""
    return smallest_unet(23, time_cond_proj_dim=8).eval()


def save_lcm(sd, unet, dest: Path):
    """models/tiny-lcm: LatentConsistencyModelPipeline with the LCM UNet and LCMScheduler's defaults; the
    tokenizer, text encoder and VAE decoder are tiny-sd's (linked: link_duplicates stores them once)."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    components = {k: v for k, v in sd.components.items() if k in ("vae", "text_encoder", "tokenizer")}
    pipe = LatentConsistencyModelPipeline(**components, unet=unet, scheduler=LCMScheduler(),
                                          safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_config(tmp)
        shutil.copy(Path(tmp) / "model_index.json", dest / "model_index.json")
        pipe.scheduler.save_config(dest / "scheduler")
    source = common.MODELS / "tiny-sd"
    for folder in ["tokenizer", "text_encoder", "vae_decoder"]:
        shutil.copytree(source / folder, dest / folder, symlinks=True)
    export_unet(unet, dest / "unet", False, torch.float32, "scalar")
    return pipe


# LatentConsistencyModelPipeline's own run (4 steps, guidance 8.5, its defaults) and one at guidance 2:
# (reference folder, steps, guidance). No classifier-free guidance: the scale reaches the UNet as its embedding.
LCM_CASES = [("tiny-lcm/lcm-4step-guidance8.5", 4, 8.5), ("tiny-lcm/lcm-2step-guidance2", 2, 2.0)]


def save_lcm_fixtures(models: Path, refs: Path):
    """--lcm: models/tiny-lcm and its references; nothing else is written."""
    sd, _ = rebuilt_committed(models)
    sd.tokenizer = CLIPTokenizer.from_pretrained(models / "tiny-sd" / "tokenizer")
    pipe = save_lcm(sd, build_lcm_unet(), models / "tiny-lcm")
    link_duplicates(models, later=(models / "tiny-lcm",))
    print("LCM reference runs ...")
    for name, steps, guidance in LCM_CASES:
        seed = 0
        with torch.no_grad():
            latents = pipe(prompt=PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
                           output_type="latent", generator=torch.Generator("cpu").manual_seed(seed)).images
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        out = refs / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        pipe.scheduler.save_config(out)
        np.save(out / "latents.npy", latents.numpy().astype(np.float32))
        pipe.image_processor.postprocess(decoded, output_type="pil")[0].save(out / "image.png")
        params = {"prompt": PROMPT, "negative_prompt": "", "steps": steps, "guidance": guidance, "height": 64,
                  "width": 64, "seed": seed, "pipeline": type(pipe).__name__}
        (out / "params.json").write_text(json.dumps(params, indent=1))
        print(f"  {name}: {steps} steps, guidance {guidance} |latents| = {latents.norm():.4f}")


# The scheduler and prompt flags (dfast generate's --eta, --karras, --timestep-spacing, --guidance-rescale,
# --clip-skip), each against diffusers given the same option: (reference folder, pipeline, the options as dfast
# takes them, steps, guidance). `scheduler` is dfast's --scheduler, configured from the pipeline's own scheduler
# config as diffusers' `Class.from_config(pipe.scheduler.config, **overrides)`; `karras` and `timestep_spacing`
# are such overrides, `eta`, `guidance_rescale` and `clip_skip` arguments of the pipeline call. tiny-sdxl's rescale
# runs at guidance 12: at 5 the rescale moved its latents by only 4e-3, too little to show that the test can fail.
FLAG_CASES = [
    ("tiny-sd/ddim-eta0.7", "tiny-sd", {"scheduler": "ddim", "eta": 0.7}, 6, 7.5),
    ("tiny-sd/euler-karras", "tiny-sd", {"scheduler": "euler", "karras": True}, 6, 7.5),
    ("tiny-sdxl/dpm++-karras", "tiny-sdxl", {"scheduler": "dpm++", "karras": True}, 5, 5.0),
    ("tiny-sd/euler-leading", "tiny-sd", {"scheduler": "euler", "timestep_spacing": "leading"}, 6, 7.5),
    ("tiny-sd/ddim-trailing", "tiny-sd", {"scheduler": "ddim", "timestep_spacing": "trailing"}, 6, 7.5),
    ("tiny-sdxl/euler-linspace", "tiny-sdxl", {"scheduler": "euler", "timestep_spacing": "linspace"}, 5, 5.0),
    ("tiny-sd/pndm-guidance-rescale0.7", "tiny-sd", {"scheduler": "pndm", "guidance_rescale": 0.7}, 6, 7.5),
    ("tiny-sdxl/euler-guidance-rescale0.7", "tiny-sdxl", {"scheduler": "euler", "guidance_rescale": 0.7}, 5, 12.0),
    ("tiny-sd/pndm-clip-skip1", "tiny-sd", {"scheduler": "pndm", "clip_skip": 1}, 6, 7.5),
    ("tiny-sdxl/euler-clip-skip1", "tiny-sdxl", {"scheduler": "euler", "clip_skip": 1}, 5, 5.0),
]


def save_flag_references(pipes: dict, refs: Path):
    """diffusers' text-to-image pipelines given each of FLAG_CASES' options, one CPU generator seeded per case;
    latents are the final latents before decoding."""
    for name, model, options, steps, guidance in FLAG_CASES:
        pipe = pipes[model]
        base = pipe.scheduler
        height, width, seed = (64, 96, 42) if model == "tiny-sdxl" else (64, 64, 0)
        overrides = {}
        if options.get("karras"):
            overrides["use_karras_sigmas"] = True
        if "timestep_spacing" in options:
            overrides["timestep_spacing"] = options["timestep_spacing"]
        call = {k: options[k] for k in ("eta", "guidance_rescale", "clip_skip") if k in options}
        pipe.scheduler = common.scheduler_class(options["scheduler"]).from_config(base.config, **overrides)
        try:
            with torch.no_grad():
                latents = pipe(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=steps,
                               guidance_scale=guidance, height=height, width=width, output_type="latent",
                               generator=torch.Generator("cpu").manual_seed(seed), **call).images
                decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
            out = refs / name
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            pipe.scheduler.save_config(out)
            np.save(out / "latents.npy", latents.numpy().astype(np.float32))
            pipe.image_processor.postprocess(decoded, output_type="pil")[0].save(out / "image.png")
            params = {"prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "steps": steps, "guidance": guidance,
                      "height": height, "width": width, "seed": seed, "options": options,
                      "scheduler_class": type(pipe.scheduler).__name__, "scheduler_overrides": overrides,
                      "call": call}
            (out / "params.json").write_text(json.dumps(params, indent=1))
            print(f"  {name}: {type(pipe.scheduler).__name__} {overrides} {call} |latents| = {latents.norm():.4f}")
        finally:
            pipe.scheduler = base


def save_flag_fixtures(models: Path, refs: Path):
    """--flags: the scheduler and prompt flags' references on tiny-sd and tiny-sdxl; nothing else is written."""
    sd, sdxl = rebuilt_committed(models)
    with_committed_parts(sd, sdxl, models)
    # diffusers 0.42.1's clip_skip reads `text_encoder.text_model.final_layer_norm`, which transformers 5 moved
    # to `text_encoder.final_layer_norm`: the same module, reached where diffusers looks for it.
    if not hasattr(sd.text_encoder, "text_model"):
        final_layer_norm = SimpleNamespace(final_layer_norm=sd.text_encoder.final_layer_norm)
        object.__setattr__(sd.text_encoder, "text_model", final_layer_norm)
    print("flag reference runs ...")
    save_flag_references({"tiny-sd": sd, "tiny-sdxl": sdxl}, refs)


def link_duplicates(models: Path, min_size: int = 4096, later: tuple = ()):
    """Replaces each file under `models` whose bytes equal an earlier one's (in path order) by a relative
    symlink to it: the six CLIP vocabularies and the shared VAEs are stored once, which keeps the tracked tree
    within its budget. dfast reads through the links; `convert` resolves them before linking its output.
    Files under the folders `later` come after all others (they link to the others, never the reverse)."""
    import hashlib

    first = {}
    files = (p for p in models.rglob("*") if p.is_file() and not p.is_symlink())
    files = sorted(files, key=lambda p: (any(p.is_relative_to(d) for d in later), p.parts))
    for path in files:
        if path.stat().st_size < min_size:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in first:
            first[digest] = path
            continue
        target = os.path.relpath(first[digest], path.parent)
        path.unlink()
        path.symlink_to(target)
        print(f"  {path.relative_to(models)} -> {target}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root to write into")
    ap.add_argument("--variants", action="store_true", help="write models/variants/ only (same weights)")
    ap.add_argument("--pixart", action="store_true", help="write the PixArt-α fixtures and references only")
    ap.add_argument("--img2img", action="store_true",
                    help="write models/tiny-sd-inpaint and the img2img and inpainting references only")
    ap.add_argument("--few-step", action="store_true",
                    help="write the few-step schedulers' (Euler ancestral, LCM) references only")
    ap.add_argument("--flags", action="store_true",
                    help="write the scheduler and prompt flags' (--eta, --karras, --timestep-spacing, "
                         "--guidance-rescale, --clip-skip) references only")
    ap.add_argument("--lcm", action="store_true", help="write models/tiny-lcm and its references only")
    ap.add_argument("--pixart-other", type=Path, metavar="DIR",
                    help="write only a second tiny PixArt pipeline (diffusers format) and its references to DIR")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.pixart_other:
        save_pixart_other(args.pixart_other)
        return
    models, refs = args.root / "models", args.root / "tests" / "references"
    refs.mkdir(parents=True, exist_ok=True)
    if args.few_step:
        save_few_step_fixtures(models, refs)
        print("done")
        return
    if args.flags:
        save_flag_fixtures(models, refs)
        print("done")
        return
    if args.lcm:
        save_lcm_fixtures(models, refs)
        print("done")
        return
    if args.img2img:
        save_image_fixtures(models, refs)
        link_duplicates(models)
        print("done")
        return
    if args.pixart:
        save_pixart(models, refs)
        link_duplicates(models, later=PIXART_FOLDERS(models))
        print("done")
        return

    with tempfile.TemporaryDirectory() as tmp:
        vocab_dir = Path(tmp)
        write_clip_vocab(vocab_dir)
        sd = build_sd(vocab_dir)
        sdxl = build_sdxl(vocab_dir)
        print("exporting models/variants (UNets with a [1] timestep) ...")
        save_unet_variants(sd, models / "variants")
        if args.variants:
            return
        print("exporting tiny-sd ...")
        save_pipeline_layout(sd, models / "tiny-sd", sdxl=False, vocab_dir=vocab_dir)
        print("exporting tiny-sdxl ...")
        save_pipeline_layout(sdxl, models / "tiny-sdxl", sdxl=True, vocab_dir=vocab_dir)
        # The same weights through the dynamo exporter: the same references apply.
        print("exporting tiny-sd-dynamo, tiny-sdxl-dynamo (dynamo exporter, opset 23) ...")
        save_pipeline_layout(sd, models / "tiny-sd-dynamo", sdxl=False, vocab_dir=vocab_dir, style=DYNAMO)
        save_pipeline_layout(sdxl, models / "tiny-sdxl-dynamo", sdxl=True, vocab_dir=vocab_dir, style=DYNAMO)
        link_duplicates(models)

    # References come from the saved folders' own tokenizers, loaded as diffusers loads them.
    toks = {
        "tiny-sd/tokenizer": CLIPTokenizer.from_pretrained(models / "tiny-sd" / "tokenizer"),
        "tiny-sdxl/tokenizer": CLIPTokenizer.from_pretrained(models / "tiny-sdxl" / "tokenizer"),
        "tiny-sdxl/tokenizer_2": CLIPTokenizer.from_pretrained(models / "tiny-sdxl" / "tokenizer_2"),
    }
    save_token_references(refs, toks)
    save_noise_references(refs)
    sd.tokenizer = toks["tiny-sd/tokenizer"]
    sdxl.tokenizer, sdxl.tokenizer_2 = toks["tiny-sdxl/tokenizer"], toks["tiny-sdxl/tokenizer_2"]
    # Schedulers as diffusers loads them from the committed folders.
    sd.scheduler = PNDMScheduler.from_pretrained(models / "tiny-sd" / "scheduler")
    sdxl.scheduler = EulerDiscreteScheduler.from_pretrained(models / "tiny-sdxl" / "scheduler")
    print("reference runs ...")
    run_reference(sd, "tiny-sd", refs, sdxl=False, height=64, width=64, seed=0)
    run_reference(sdxl, "tiny-sdxl", refs, sdxl=True, height=64, width=96, seed=42)
    print("done")


if __name__ == "__main__":
    main()
