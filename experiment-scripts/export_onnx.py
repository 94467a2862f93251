#!/usr/bin/env python3
"""Exports a diffusers pipeline to the ONNX layout dfast runs (Optimum's layout, FIELD.md section 2).

  # a pipeline folder, or a Hub id when online
  python experiment-scripts/export_onnx.py --model runwayml/stable-diffusion-v1-5 --out exports/sd15
  # the real architecture from the public configs with random weights (no download): for benchmarks
  python experiment-scripts/export_onnx.py --random-weights --arch sd15 --out exports/sd15-random

Options: --exporter torchscript|dynamo (default torchscript, opset 17, what Optimum exports; dynamo uses
opset 23 with native Attention / GroupNormalization nodes), --opset N, --components (default: every one).
Models over 2 GB keep their weights in one `model.onnx_data` next to `model.onnx`, as Optimum does.

Random weights: latency depends on shapes, not on weight values, so benchmarks of these exports time the
real architectures; their images are noise. Weights are drawn from a fixed seed, scaled so that the UNet's
activations stay finite in fp16.

Pinned versions: experiment-scripts/requirements-fixtures.txt (torch 2.11.0, diffusers 0.42.1, the versions
the GPU host runs). An SDXL export needs about 11 GB of memory in fp32.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

import common  # the model cards (a sibling module: this script's folder is on sys.path)
import make_tiny_pipelines as tiny  # CLIP vocabulary, wrappers, export helpers (a sibling: this script's folder)

# Public configs of the real checkpoints (diffusers' config.json of each component).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
# SSD-1B keeps SDXL's blocks with fewer transformer layers; this is an approximation of its published
# config (transformer depth per down block 1/2/4 instead of 1/2/10), labelled as such in results.
SSD1B_UNET = dict(SDXL_UNET, transformer_layers_per_block=(1, 2, 4))

VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
)
CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)
CLIP_BIGG = dict(CLIP_L, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 hidden_act="gelu", projection_dim=1280)

# Keyed by model card (models/<arch>.toml); the card's `pipeline` says which pipeline class is built.
ARCHS = {
    "sd15": dict(unet=SD15_UNET, vae=dict(VAE, sample_size=512, scaling_factor=0.18215),
                 scheduler=tiny.SD15_SCHEDULER),
    "sdxl": dict(unet=SDXL_UNET, vae=dict(VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
                 scheduler=tiny.SDXL_SCHEDULER),
    "ssd-1b": dict(unet=SSD1B_UNET, vae=dict(VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
                   scheduler=tiny.SDXL_SCHEDULER),
}


def is_sdxl(arch: str) -> bool:
    """The model card's pipeline class is StableDiffusionXLPipeline (else StableDiffusionPipeline)."""
    pipeline = common.card_defaults(arch)["pipeline"]
    if pipeline not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        raise ValueError(f"models/{arch}.toml: pipeline {pipeline} is not one random_pipeline builds")
    return pipeline == "StableDiffusionXLPipeline"


def random_pipeline(arch: str, vocab_dir: Path):
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = ARCHS[arch]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**spec["unet"])
    vae = AutoencoderKL(**spec["vae"])
    for module in (unet, vae):
        # Default init makes deep random nets blow up; small weights keep activations finite (fp16 too).
        with torch.no_grad():
            for p in module.parameters():
                if p.dim() > 1:
                    p.mul_(0.5)
    te = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    if is_sdxl(arch):
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG))
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tiny.make_tokenizer(vocab_dir, "<|endoftext|>"),
            tokenizer_2=tiny.make_tokenizer(vocab_dir, "!"), unet=unet,
            scheduler=EulerDiscreteScheduler.from_config(spec["scheduler"]), force_zeros_for_empty_prompt=True)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tiny.make_tokenizer(vocab_dir, "<|endoftext|>"), unet=unet,
        scheduler=PNDMScheduler.from_config(spec["scheduler"]), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def consolidate_external_data(path: Path):
    """One `model.onnx_data` per model (Optimum's layout) when the export is over 2 GB or scattered."""
    import onnx

    folder = path.parent
    extra = [p for p in folder.iterdir() if p.name not in ("model.onnx", "config.json")]
    size = sum(p.stat().st_size for p in folder.iterdir())
    if not extra and size < 2**31:
        return
    model = onnx.load(str(path), load_external_data=True)
    for p in extra:
        p.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=1024)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="pipeline folder or Hub id (needs network for a Hub id)")
    ap.add_argument("--random-weights", action="store_true", help="build --arch from public configs, random weights")
    ap.add_argument("--arch", choices=sorted(ARCHS), help="architecture for --random-weights")
    ap.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    ap.add_argument("--opset", type=int, help="default 17 (torchscript) or 23 (dynamo)")
    ap.add_argument("--components", default="text_encoder,text_encoder_2,unet,transformer,vae_decoder",
                    help="comma list of components to export (others are skipped)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.random_weights == bool(args.model):
        ap.error("give exactly one of --model or --random-weights")
    if args.random_weights and not args.arch:
        ap.error("--random-weights needs --arch")
    if args.out.exists() and any(args.out.iterdir()):
        ap.error(f"{args.out} exists and is not empty")

    wanted = set(args.components.split(","))
    dynamo = args.exporter == "dynamo"
    tiny.EXPORT.update({"dynamo": dynamo, "opset": args.opset or (23 if dynamo else 17)})
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_dir = Path(tmp)
        tiny.write_clip_vocab(vocab_dir)
        if args.random_weights:
            pipe = random_pipeline(args.arch, vocab_dir)
            sdxl = is_sdxl(args.arch)
        else:
            from diffusers import DiffusionPipeline

            pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
            sdxl = hasattr(pipe, "text_encoder_2")
        pipe = pipe.to(torch.float32)
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        if type(pipe).__name__ == "PixArtAlphaPipeline":
            export_pixart(pipe, out, wanted)
            print(f"{out}: done in {time.time() - t0:.0f} s ({args.exporter}, opset {tiny.EXPORT['opset']})")
            return
        # Layout files: model_index.json, scheduler config, tokenizers (vocab.json + merges.txt).
        with tempfile.TemporaryDirectory() as saved:
            pipe.save_config(saved)
            shutil.copy(Path(saved) / "model_index.json", out / "model_index.json")
        (out / "scheduler").mkdir(exist_ok=True)
        pipe.scheduler.save_config(out / "scheduler")
        for tok in ["tokenizer", "tokenizer_2"] if sdxl else ["tokenizer"]:
            getattr(pipe, tok).save_pretrained(out / tok)
            for f in ["vocab.json", "merges.txt"]:
                if not (out / tok / f).exists():
                    shutil.copy(vocab_dir / f, out / tok / f)
        exports = []
        if "text_encoder" in wanted:
            exports.append(("text_encoder", lambda: tiny.export_text_encoder(
                pipe.text_encoder, out / "text_encoder", False, sdxl, torch.int64)))
        if sdxl and "text_encoder_2" in wanted:
            exports.append(("text_encoder_2", lambda: tiny.export_text_encoder(
                pipe.text_encoder_2, out / "text_encoder_2", True, True, torch.int64)))
        if "unet" in wanted:
            exports.append(("unet", lambda: tiny.export_unet(pipe.unet, out / "unet", sdxl, torch.int64, "batch")))
        if "vae_decoder" in wanted:
            exports.append(("vae_decoder", lambda: export_vae_decoder(pipe.vae, out)))
        for name, fn in exports:
            t = time.time()
            fn()
            consolidate_external_data(out / name / "model.onnx")
            print(f"{name}: exported in {time.time() - t:.0f} s", flush=True)
    print(f"{out}: done in {time.time() - t0:.0f} s ({args.exporter}, opset {tiny.EXPORT['opset']})")


def export_pixart(pipe, out: Path, wanted: set):
    """A PixArtAlphaPipeline in the layout of models/tiny-pixart: model_index.json, scheduler/, tokenizer/
    (tokenizer.json, which transformers' fast T5 tokenizer writes), text_encoder/ (T5 encoder), transformer/
    (the interface described in make_tiny_pipelines.py above PIXART_SCHEDULER), vae_decoder/."""
    with tempfile.TemporaryDirectory() as saved:
        pipe.save_config(saved)
        shutil.copy(Path(saved) / "model_index.json", out / "model_index.json")
    (out / "scheduler").mkdir(exist_ok=True)
    pipe.scheduler.save_config(out / "scheduler")
    pipe.tokenizer.save_pretrained(out / "tokenizer")
    if not (out / "tokenizer" / "tokenizer.json").exists():
        raise SystemExit(f"{out / 'tokenizer'}: the pipeline's tokenizer ({type(pipe.tokenizer).__name__}) wrote no "
                         "tokenizer.json; dfast needs the fast T5 tokenizer's file")
    exports = []
    if "text_encoder" in wanted:
        exports.append(("text_encoder", lambda: tiny.export_t5(pipe.text_encoder, out / "text_encoder")))
    if "transformer" in wanted:
        exports.append(("transformer", lambda: tiny.export_pixart_transformer(pipe.transformer, out / "transformer")))
    if "vae_decoder" in wanted:
        exports.append(("vae_decoder", lambda: export_vae_decoder(pipe.vae, out)))
    for name, fn in exports:
        t = time.time()
        fn()
        consolidate_external_data(out / name / "model.onnx")
        print(f"{name}: exported in {time.time() - t:.0f} s", flush=True)


def export_vae_decoder(vae, out: Path):
    lat = torch.randn(1, 4, 8, 8)
    tiny.export(tiny.VaeDecoderWrapper(vae), [lat], out / "vae_decoder" / "model.onnx", ["latent_sample"], ["sample"],
                {"latent_sample": {0: "batch_size", 2: "height", 3: "width"},
                 "sample": {0: "batch_size", 2: "height", 3: "width"}})
    vae.save_config(out / "vae_decoder")


if __name__ == "__main__":
    main()
