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

The weights are random (a fixed torch seed): the point is numerical parity with diffusers, not pictures.
Tokenizers use the real 49408-token CLIP BPE vocabulary, taken from open_clip_torch's
bpe_simple_vocab_16e6.txt.gz and written as vocab.json + merges.txt, as the real checkpoints hold them.

Run with the pinned versions of requirements-fixtures.txt (torch 2.11.0, diffusers 0.42.1):
  python experiment-scripts/make_tiny_pipelines.py              # everything
  python experiment-scripts/make_tiny_pipelines.py --variants   # models/variants/ only
"""

import argparse
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

import common  # a sibling module (this script's folder is on sys.path)

ROOT = common.ROOT
# The two exporter styles users have (FIELD.md): TorchScript at opset 17, as Optimum exports, and dynamo at
# opset 23 with native Attention / GroupNormalization / LayerNormalization nodes. `export` reads this.
EXPORT = {"dynamo": False, "opset": 17}

# The real checkpoints' scheduler configs (stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

# Per pipeline: the default scheduler plus the three others; DDIM with v_prediction and trailing spacing,
# DPM-Solver++ with Karras sigmas. Keys are dfast's --scheduler names.
SCHEDULERS = {
    "euler": (EulerDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}),
    "pndm": (PNDMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++"}),
}

PROMPT = "a photo of an astronaut riding a horse on mars, highly detailed"
NEGATIVE_PROMPT = "blurry, low quality"
STEPS = 10

TOKEN_PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "",
    "A majestic lion standing on a rocky cliff at sunset, golden light, dramatic clouds, ultra detailed fur, "
    "cinematic composition, 35mm photograph, shallow depth of field, award winning wildlife photography",
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
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")
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
        for m in merges:
            f.write(" ".join(m) + "\n")


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
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)
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
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
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


def export(module, args, path: Path, input_names, output_names, dynamic_axes):
    path.parent.mkdir(parents=True, exist_ok=True)
    if EXPORT["dynamo"]:
        # torch.export wants bounded, shared dimension objects: the UNet's upsampler branches on batch >= 64,
        # and the downsampling makes height and width multiples that Dim.AUTO works out.
        dims = {
            "batch_size": torch.export.Dim.AUTO,
            "sequence_length": torch.export.Dim("sequence", min=1, max=77),
            "height": torch.export.Dim.AUTO,
            "width": torch.export.Dim.AUTO,
        }
        shapes = {n: {a: dims[d] for a, d in dynamic_axes.get(n, {}).items()} or None for n in input_names}
        style = {"dynamo": True, "external_data": False, "dynamic_shapes": shapes}
    else:
        style = {"dynamo": False, "do_constant_folding": True, "dynamic_axes": dynamic_axes}
    with torch.no_grad():
        torch.onnx.export(
            module,
            tuple(args),
            str(path),
            input_names=input_names,
            output_names=output_names,
            opset_version=EXPORT["opset"],
            **style,
        )
    # The export must reproduce torch on its own example inputs (skipped above 2 GB, where a second copy of
    # the weights in ONNX Runtime would double the memory of a full-size export).
    if sum(p.stat().st_size for p in path.parent.iterdir()) > 2**31:
        return
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(input_names, args)}
    got = sess.run(None, feeds)
    with torch.no_grad():
        want = module(*args)
    want = want if isinstance(want, (tuple, list)) else (want,)
    for name, g, w in zip(output_names, got, want):
        err = np.linalg.norm(g - w.numpy()) / max(np.linalg.norm(w.numpy()), 1e-12)
        assert err < 1e-5, f"{path}: output {name} differs from torch (relative L2 {err:.2e})"


def export_text_encoder(model, folder: Path, projection: bool, hidden_states: bool, ids_dtype):
    layers = model.config.num_hidden_layers
    outputs = ["text_embeds" if projection else "pooler_output", "last_hidden_state"]
    if hidden_states:
        outputs += [f"hidden_states.{i}" for i in range(layers + 1)]
    ids = torch.randint(0, 49406, (2, 77), dtype=ids_dtype)
    ids[:, 0] = 49406
    ids[:, 10] = 49407
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"}}
    axes.update({o: {0: "batch_size"} for o in outputs})
    export(TextEncoderWrapper(model, projection, hidden_states), [ids], folder / "model.onnx", ["input_ids"], outputs, axes)
    model.config.to_json_file(folder / "config.json")


def export_unet(unet, folder: Path, sdxl: bool, timestep_dtype, timestep_shape: str, static_hw=None):
    """timestep_shape: "scalar" ([]), "batch" ([batch_size]) or "one" ([1], expanded inside the graph).
    static_hw: (latent height, latent width) to export every input with static shapes at batch 2."""
    b, (h, w) = 2, static_hw or (8, 12)
    sample = torch.randn(b, 4, h, w)
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
    if sdxl:
        text_embeds_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        args += [torch.randn(b, text_embeds_dim), torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]] * b)]
        names += ["text_embeds", "time_ids"]
        axes.update({"text_embeds": {0: "batch_size"}, "time_ids": {0: "batch_size"}})
    if static_hw:
        axes = {}
    wrapper = OneTimestepUNetWrapper if timestep_shape == "one" else UNetWrapper
    export(wrapper(unet, sdxl), args, folder / "model.onnx", names, ["out_sample"], axes)
    unet.save_config(folder)


def export_vae(vae, root: Path):
    lat = torch.randn(1, 4, 8, 12)
    export(
        VaeDecoderWrapper(vae),
        [lat],
        root / "vae_decoder" / "model.onnx",
        ["latent_sample"],
        ["sample"],
        {"latent_sample": {0: "batch_size", 2: "height", 3: "width"}, "sample": {0: "batch_size", 2: "height", 3: "width"}},
    )
    vae.save_config(root / "vae_decoder")
    img = torch.randn(1, 3, 64, 96)
    export(
        VaeEncoderWrapper(vae),
        [img],
        root / "vae_encoder" / "model.onnx",
        ["sample"],
        ["latent_parameters"],
        {"sample": {0: "batch_size", 2: "height", 3: "width"}, "latent_parameters": {0: "batch_size", 2: "height", 3: "width"}},
    )
    vae.save_config(root / "vae_encoder")


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


def save_pipeline_layout(pipe, dest: Path, sdxl: bool, vocab_dir: Path, dynamo: bool = False):
    """model_index.json, scheduler and tokenizers as the checkpoints hold them; then the ONNX components."""
    EXPORT.update({"dynamo": dynamo, "opset": 23 if dynamo else 17})
    if dest.exists():
        shutil.rmtree(dest)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        dest.mkdir(parents=True)
        shutil.copy(Path(tmp) / "model_index.json", dest / "model_index.json")
        # The real checkpoint's file verbatim: diffusers' own save would write the class defaults too (e.g.
        # PNDM's timestep_spacing "leading"), which another class then inherits on `from_config`.
        (dest / "scheduler").mkdir()
        real = SDXL_SCHEDULER if sdxl else SD15_SCHEDULER
        (dest / "scheduler" / "scheduler_config.json").write_text(json.dumps(real, indent=2) + "\n")
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
        export_text_encoder(pipe.text_encoder, dest / "text_encoder", False, True, torch.int64)
        export_text_encoder(pipe.text_encoder_2, dest / "text_encoder_2", True, True, torch.int64)
        export_unet(pipe.unet, dest / "unet", True, torch.int64, "batch")
    else:
        # Real exports differ in input dtypes and ranks: tiny-sd takes int32 ids and a float scalar timestep.
        export_text_encoder(pipe.text_encoder, dest / "text_encoder", False, False, torch.int32)
        export_unet(pipe.unet, dest / "unet", False, torch.float32, "scalar")
    export_vae(pipe.vae, dest)


def save_unet_variants(sd, variants: Path):
    """UNets that declare `timestep` as [1], in both exporter styles, for tests that swap them into a copy of
    tiny-sd / tiny-sd-dynamo. The dynamo one is static-shape too (batch 2, 8x8 latents: the tiny-sd references'
    64x64 with guidance), as static-shape dynamo exports are."""
    for name, dynamo, static_hw in [
        ("tiny-sd-unet-timestep1", False, None),
        ("tiny-sd-dynamo-unet-static", True, (8, 8)),
    ]:
        EXPORT.update({"dynamo": dynamo, "opset": 23 if dynamo else 17})
        dest = variants / name
        if dest.exists():
            shutil.rmtree(dest)
        export_unet(sd.unet, dest, False, torch.float32, "one", static_hw)


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


def link_duplicates(models: Path, min_size: int = 4096):
    """Replaces each file under `models` whose bytes equal an earlier one's (in path order) by a relative
    symlink to it: the six CLIP vocabularies and the shared VAEs are stored once, which keeps the tracked tree
    within its budget. dfast reads through the links; `convert` resolves them before linking its output."""
    import hashlib

    first = {}
    files = sorted((p for p in models.rglob("*") if p.is_file() and not p.is_symlink()), key=lambda p: p.parts)
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
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    models, refs = args.root / "models", args.root / "tests" / "references"
    refs.mkdir(parents=True, exist_ok=True)

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
        save_pipeline_layout(sd, models / "tiny-sd-dynamo", sdxl=False, vocab_dir=vocab_dir, dynamo=True)
        save_pipeline_layout(sdxl, models / "tiny-sdxl-dynamo", sdxl=True, vocab_dir=vocab_dir, dynamo=True)
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
